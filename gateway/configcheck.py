"""``cbec config check``: what a configuration would do, said before ``cbec serve`` starts with it or takes it on
SIGHUP.

A reload that cannot use its configuration changes nothing and logs why (gateway.server.KeyReload); an operator would
rather know before sending the signal, or before a start fails at night. The check reads what the gateway would read
— the file and the environment, the signing key and its certificate, the trusted certificates — and looks at what a
running gateway only shows later: a certificate near its end, routes to endpoints that do not exist, keys written in
clear text, the database not answering. It never writes (a TEST signing key is not made here) and prints no secret.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from gateway import db, signing
from gateway.config import Settings
from gateway.forward import Router
from gateway.server import pem_signer
from gateway.ukey import SIGN, SIGN_NO_HASH, UKeyBridge, UKeyRefused, UKeyUnreachable
from gateway.workers import effective_endpoints, platform_keys, uses_sandbox


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"  # the gateway runs, but not as it should in production: exit 1
    ERROR = "error"  # cbec serve would not start with it, or a reload would change nothing: exit 2


@dataclass(frozen=True)
class Line:
    level: Level
    text: str


def exit_status(lines: list[Line]) -> int:
    """0 when all is well, 1 with a warning, 2 with an error (the configuration is not usable)."""
    levels = {line.level for line in lines}
    return 2 if Level.ERROR in levels else 1 if Level.WARN in levels else 0


def shown_dsn(dsn: str) -> str:
    """A DSN with its password hidden."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check(settings: Settings, *, now: datetime | None = None) -> list[Line]:
    """What ``settings`` would do, line by line (no I/O but reading the signing files; the database is the caller's
    to try: :func:`database_line`)."""
    now = now or datetime.now(UTC)
    return [*_keys(settings), *_signing(settings, now), *_forwarding(settings), *_realtime(settings, now)]


def _certificate_line(text: str, certificate_der: bytes, now: datetime) -> Line:
    """A 179 platform's certificate: its serial and end, a warning near or past it (customs refuses its uploads)."""
    until = signing.certificate_validity(certificate_der)[1]
    left = until - now
    text = f"{text} {signing.key_name_for(signing.certificate_serial(certificate_der))}, valid until {until:%Y-%m-%d}"
    if left <= timedelta(0):
        return Line(Level.WARN, f"{text}: expired, customs refuses its uploads")
    if left < signing.EXPIRY_WARNING:
        return Line(Level.WARN, f"{text}, in {left.days} days: renew it")
    return Line(Level.OK, text)


async def ukey_lines(settings: Settings, *, now: datetime | None = None, timeout_s: float = 5.0) -> list[Line]:
    """The UKeys — the gateway's own signing key's and the 179 platforms' — each asked for its certificate through its
    client control (no PIN is sent): the certificate's end, or why the control did not give it (a warning: the gateway
    runs, and what it would sign waits, or is answered 503, until it does)."""
    now = now or datetime.now(UTC)
    out = []
    for bridge, what, waits in _ukeys(settings, timeout_s):
        try:
            certificate = await bridge.certificate()
        except (UKeyUnreachable, UKeyRefused) as exc:
            out.append(Line(Level.WARN, f"{what}: {exc} ({waits})"))
            continue
        finally:
            await bridge.close()
        out.append(_certificate_line(f"{what}: its UKey holds certificate", certificate, now))
        if bridge.method == SIGN_NO_HASH and signing.certificate_algorithm(certificate) != signing.RSA_SHA1:
            out.append(Line(Level.ERROR, f"{what}: its UKey holds an SM2 key, and {SIGN_NO_HASH} signs a SHA-1 digest "
                                         f"for RSA cards only: sign through {SIGN}"))  # fmt: skip
    return out


def _ukeys(settings: Settings, timeout_s: float) -> Iterator[tuple[UKeyBridge, str, str]]:
    """Each UKey configured (its client control's bridge, no call made), what it signs, and what waits while it does
    not answer."""
    if settings.signing_ukey_url:
        yield (UKeyBridge(settings.signing_ukey_url, settings.signing_ukey_password,
                          method=settings.signing_ukey_method, timeout_s=timeout_s),
               "signing key", "JSON declarations the gateway signs are answered 503 until it answers")  # fmt: skip
    for p in settings.realtime.platforms:
        if p.ukey_url is not None:
            yield (UKeyBridge(p.ukey_url, p.ukey_password, method=p.ukey_method, timeout_s=timeout_s),
                   f"179 payment data of {p.ebp_code}", "its uploads wait until it answers")  # fmt: skip


async def database_line(settings: Settings) -> Line:
    """The database: the configured server asked for a connection (gateway.db.connect_problem), or the embedded one."""
    if settings.database_url is None:
        return Line(Level.OK, f"database: the embedded PostgreSQL in {settings.data_dir}/pgdata (for trying the "
                              "gateway out; name a server of your own in production)")  # fmt: skip
    shown = shown_dsn(settings.database_url)
    try:
        problem = await db.connect_problem(settings.database_url)
    except ValueError as exc:
        return Line(Level.ERROR, f"database: {shown} is no PostgreSQL DSN: {exc}")
    if problem is None:
        return Line(Level.OK, f"database: {shown} answers")
    # the server may only be down now: a warning, but one that says what cbec serve would do
    return Line(Level.WARN, f"database: {shown} does not answer ({problem}); cbec serve and cbec worker do not start "
                            "until it does")  # fmt: skip


#: The shortest API key given in clear text that `cbec config check` passes without a warning.
MIN_KEY_CHARS = 20


def _keys(settings: Settings) -> list[Line]:
    keys = settings.api_keys
    if not keys:
        return [Line(Level.WARN, "API keys: none; cbec serve makes a local admin key (for trying it out only)")]
    roles = Counter(k.role.value for k in keys)
    out = [Line(Level.OK, f"API keys: {len(keys)} ({', '.join(f'{n} {r}' for r, n in sorted(roles.items()))})")]
    if clear := sorted(k.name for k in keys if k.key is not None):
        out.append(Line(Level.WARN, f"API keys in clear text (key): {', '.join(clear)}; give their key_sha256 "
                                    "instead, so that the file opens nothing"))  # fmt: skip
    if short := sorted(k.name for k in keys if k.key is not None and len(k.key) < MIN_KEY_CHARS):
        # a key is tried for as often as one likes (an unknown key's 401 costs nothing), and its unsalted SHA-256
        # in a copied file is reversed by trying every short one
        out.append(Line(Level.WARN, f"API keys shorter than {MIN_KEY_CHARS} characters: {', '.join(short)}; a key "
                                    "that short is found by trying: give each one made at random, e.g. python -c "
                                    "'import secrets; print(secrets.token_urlsafe(24))'"))  # fmt: skip
    return out


def _signing(settings: Settings, now: datetime) -> list[Line]:
    out: list[Line] = []
    customs = settings.forwarding.enabled and not uses_sandbox(settings.forwarding)
    if settings.signing_ukey_url:  # its certificate is on the card: ukey_lines asks for it
        out.append(Line(Level.OK, "signing key: on a UKey, through the E-Port client control at "
                                  f"{settings.signing_ukey_url}"))  # fmt: skip
    elif settings.signing_key_file is None or settings.signing_cert_file is None:
        level = Level.WARN if customs else Level.OK
        out.append(Line(level, "signing key: none configured; JSON declarations get a TEST signature "
                               f"({settings.data_dir}/signing), which customs refuses"))  # fmt: skip
    else:
        try:
            pem = (settings.signing_algorithm, settings.signing_key_file.read_bytes(),
                   settings.signing_cert_file.read_bytes())  # fmt: skip
            signer = pem_signer(pem)
        except (OSError, ValueError) as exc:
            return [Line(Level.ERROR, f"signing key: {exc}")]
        left = signer.valid_until - now
        name = f"signing key: {settings.signing_algorithm} {signer.backend.key_name}"
        if left <= timedelta(0):
            out.append(Line(Level.WARN, f"{name} expired on {signer.valid_until:%Y-%m-%d}: JSON declarations it would "
                                        "sign are answered 503"))  # fmt: skip
        elif left < signing.EXPIRY_WARNING:
            out.append(Line(Level.WARN, f"{name} expires on {signer.valid_until:%Y-%m-%d}, in {left.days} days: renew "
                                        "it (the files written over, then SIGHUP)"))  # fmt: skip
        else:
            out.append(Line(Level.OK, f"{name}, valid until {signer.valid_until:%Y-%m-%d} ({left.days} days)"))
    real_key = settings.signing_ukey_url or (settings.signing_key_file and settings.signing_cert_file)
    if real_key and settings.signing_agent_code is None:
        out.append(Line(Level.WARN, "signing_agent_code: unset, so the gateway signs a JSON declaration naming any "
                                    "agentCode with its agent's key (customs refuses one whose signer is not its "
                                    "agent, -621029): set it to the agent's code"))  # fmt: skip
    if settings.trusted_certs is not None:
        try:
            trusted = signing.read_certificates(settings.trusted_certs)
        except (OSError, ValueError) as exc:
            return [*out, Line(Level.ERROR, f"trusted certificates: {exc}")]
        out.append(Line(Level.OK, f"trusted certificates: {len(trusted)} from {settings.trusted_certs}"))
    if settings.verify_signatures and settings.trusted_certs is None:
        out.append(Line(Level.OK, "signatures verified against the certificate each message carries (no "
                                  "trusted_certs: any certificate)"))  # fmt: skip
    return out


def _forwarding(settings: Settings) -> list[Line]:
    fwd = settings.forwarding
    if not fwd.enabled:
        return [Line(Level.OK, "forwarding: off (messages are stored and reconciled, nothing is sent)")]
    endpoints = effective_endpoints(fwd, sandbox_url="http://sandbox", realtime=settings.realtime)
    kinds = {e.name: e.kind for e in endpoints}
    out = [Line(Level.OK, "forwarding: " + ", ".join(f"{name} ({kind})" for name, kind in kinds.items()))]
    if uses_sandbox(fwd):
        out.append(Line(Level.WARN, "customs: no customs endpoint configured; declarations go to the built-in sandbox"))
    router = Router.from_settings(fwd, kinds)
    if router.dropped:
        out.append(Line(Level.WARN, f"routes name endpoints that are not configured: {', '.join(router.dropped)} "
                                    "(ignored)"))  # fmt: skip
    if fwd.webhooks:
        sellers = ", ".join(sorted(w.seller for w in fwd.webhooks))
        out.append(Line(Level.OK, f"webhooks: {len(fwd.webhooks)} sellers ({sellers}) through {fwd.webhook_endpoint}"))
    return out


def _realtime(settings: Settings, now: datetime) -> list[Line]:
    """The 179 platforms: each key usable and its certificate's end; where their uploads go."""
    rt = settings.realtime
    if not rt.platforms:
        return []
    try:
        keys = platform_keys(rt)
    except (OSError, ValueError) as exc:
        return [Line(Level.ERROR, f"179 payment data: {exc}")]
    out = []
    for ebp, key in keys.items():
        if isinstance(key, UKeyBridge):  # its certificate is on the card: ukey_lines asks for it
            out.append(Line(Level.OK, f"179 payment data of {ebp}: signed by its UKey through the E-Port client "
                                      f"control at {key.url}"))  # fmt: skip
            continue
        out.append(_certificate_line(f"179 payment data of {ebp}: signed with certificate", key.certificate_der, now))
    endpoints = {e.name: e for e in effective_endpoints(settings.forwarding, sandbox_url="http://sandbox",
                                                       realtime=rt)}  # fmt: skip
    if rt.endpoint in endpoints and endpoints[rt.endpoint].url != "http://sandbox/ceb2grab/grab/realTimeDataUpload":
        out.append(Line(Level.OK, f"179 uploads go to {shown_dsn(endpoints[rt.endpoint].url or '')} "
                                  f"({rt.signing_variant} signing)"))  # fmt: skip
    else:
        out.append(Line(Level.WARN, "179 uploads go to the built-in sandbox, not to customs"))
    for p in rt.platforms:
        if p.previous_token is not None:  # a leaked token answers as long as it stays: only for the changeover
            out.append(Line(Level.WARN, f"179 questions of {p.ebp_code} are still taken at its previous URL "
                                        "(previous_token): remove it once customs asks at the new one"))  # fmt: skip
    return out
