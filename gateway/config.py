"""Configuration: one frozen Settings object, from a TOML file and CBEC_* environment variables.

Precedence (highest first): command-line flags, environment, the TOML file, defaults. Every
setting is listed in the README's configuration reference.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.rules import BONDED_IMPORT_MODES

#: prometheus_client's multiprocess switch (a folder), read when prometheus_client is first imported: set by
#: ``cbec serve --processes N`` so that its API processes share their /metrics figures (gateway.metrics).
METRICS_SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def netloc(host: str, port: int) -> str:
    """``host:port`` as messages and URLs write it: an IPv6 address in brackets (``[::1]:8080``; ``::1:8080`` reads
    as an address, and is no URL's host)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class Role(StrEnum):
    SUBMITTER = "submitter"  # reads documents carrying one of its enterprise codes, sends those it declares
    OPERATOR = "operator"  # reads everything and replays dead letters (bonded-zone operators)
    ADMIN = "admin"  # everything
    CUSTOMS = "customs"  # customs / E-Port (or the sandbox): may post receipts (POST /v1/receipts) only
    WAREHOUSE = "warehouse"  # a warehouse (or the sandbox's): may post its orders' callbacks only


def key_digest(key: str) -> bytes:
    """The SHA-256 of an API key as presented. surrogateescape: aiohttp hands header bytes that are not UTF-8 over as
    lone surrogates (an unknown key, never a 500)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str | None  # the secret itself; None where the configuration holds only its SHA-256
    role: Role
    codes: frozenset[str] = frozenset()  # enterprise codes (ebp/ebc/pay/logistics/agent) a submitter holds
    # The key's SHA-256 in hex, instead of the key: a configuration file (in a repository, a deployment tool) then
    # holds nothing that opens the API.
    key_sha256: str | None = None
    # Requests a second this key may make on average (None: no limit), in bursts of up to rate_burst, counted together
    # by the API processes of one `cbec serve` (gateway.auth.SharedRates); beyond it the API answers 429 with
    # Retry-After.
    rate_per_s: float | None = None
    rate_burst: float | None = None  # None: one second's worth of rate_per_s (at least 1)

    def __post_init__(self) -> None:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"API key {self.name!r} needs a key or a key_sha256, not both")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"API key {self.name!r}: rate_per_s must be a number above 0; found {self.rate_per_s!r}")
        if self.rate_burst is not None and not self.rate_burst >= 1:
            raise ValueError(f"API key {self.name!r}: rate_burst must be at least 1; found {self.rate_burst!r}")
        if self.rate_burst is not None and self.rate_per_s is None:
            raise ValueError(f"API key {self.name!r}: rate_burst without a rate_per_s")

    @property
    def burst(self) -> float:
        """The burst the key's rate allows (rate_burst, else a second's worth of rate_per_s, at least 1)."""
        return self.rate_burst if self.rate_burst is not None else max(1.0, self.rate_per_s or 1.0)

    @property
    def digest(self) -> bytes:
        """What a presented key's :func:`key_digest` must equal."""
        return bytes.fromhex(self.key_sha256) if self.key_sha256 is not None else key_digest(self.key or "")


# --- forwarding (gateway/forward.py routes, gateway/workers.py delivers) -------------------------------

ENDPOINT_KINDS = ("customs", "inspection", "warehouse", "webhook", "realtime")
TRANSPORTS = ("http", "folder")


@dataclass(frozen=True)
class RetrySettings:
    """cbec_queue.RetryPolicy of an endpoint: base_s * factor**(n-1), capped, full jitter."""

    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 300.0
    max_attempts: int = 10


@dataclass(frozen=True)
class EndpointSettings:
    """One place messages are delivered to. ``kind`` picks the adapter, ``transport`` how customs gets it."""

    name: str
    kind: str  # customs | inspection | warehouse | webhook | realtime (customs' 179 payment data upload)
    transport: str = "http"  # customs only: http | folder
    url: str | None = None  # http: where to POST (customs: the DxpMsg; others: their JSON)
    sender_id: str | None = None  # customs: our DXP id (SenderId); default forwarding.sender_id
    # customs: the ReceiverId of import messages (default DXPEDCCEB0000002) and of export ones (DXPEDCCEB0000003)
    import_receiver_id: str | None = None
    export_receiver_id: str | None = None
    outbox: Path | None = None  # customs folder transport: where the transfer client picks files up
    inbox: Path | None = None  # customs folder transport: where it drops receipts (polled)
    # customs folder transport: a receipt file modified less than this long ago is left for a later pass (a client
    # that writes in place, not by renaming, would have it read half-written and moved to error/)
    inbox_min_age_s: float = 0.0
    folder_format: str = "dxp"  # customs folder transport: "dxp" envelopes or bare "ceb" messages
    timeout_s: float = 30.0  # whole request
    concurrency: int = 4  # deliveries in flight per worker process
    rate_per_s: float | None = None  # per worker process; None = unlimited
    rate_burst: float = 1.0
    retry: RetrySettings = field(default_factory=RetrySettings)
    breaker_failures: int = 5  # consecutive transient failures that open the circuit
    breaker_cooldown_s: float = 30.0
    warehouse_code: str = "WH01"  # warehouse: our code at the warehouse
    callback_url: str | None = None  # warehouse: where it reports status changes
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. a relay's token


@dataclass(frozen=True)
class RouteSettings:
    """Messages of these types (and, when given, these tradeModes) go to these endpoints."""

    message_types: tuple[str, ...]
    endpoints: tuple[str, ...]
    modes: tuple[str, ...] | None = None  # None: every mode


@dataclass(frozen=True)
class WebhookSettings:
    """A seller told of its shipments' customs status changes: its enterprise codes, URL and shared secret."""

    seller: str
    codes: frozenset[str]
    url: str
    secret: str


DEFAULT_ROUTES: tuple[RouteSettings, ...] = (
    RouteSettings(("CEB311", "CEB411", "CEB511", "CEB513", "CEB621", "CEB623", "CEB625", "CEB711",
                   "CEB303", "CEB403", "CEB505", "CEB603", "CEB605", "CEB507", "CEB509", "CEB607", "CEB701",
                   "CEB213", "CEB215"),
                  ("customs",)),
    RouteSettings(("CEB621",), ("inspection",), modes=BONDED_IMPORT_MODES),  # 1210, and 1239 held to its rules
)


@dataclass(frozen=True)
class ForwardingSettings:
    enabled: bool = True  # False: nothing is enqueued and `cbec serve` runs no worker
    sender_id: str = "DXPENT0000000001"  # our DXP id (assigned by the exchange platform)
    endpoints: tuple[EndpointSettings, ...] = ()  # none of kind customs: the built-in sandbox (see sandbox)
    routes: tuple[RouteSettings, ...] = DEFAULT_ROUTES
    # held until the shipment is matched and its legs receipted (spec §6.7; the export inventory as the import one)
    hold_types: tuple[str, ...] = ("CEB621", "CEB603")
    on_release: tuple[str, ...] = ("warehouse",)  # endpoints told when a shipment is released (800)
    webhooks: tuple[WebhookSettings, ...] = ()
    webhook_endpoint: str = "webhook"
    # The networks besides the public addresses the sellers' webhook URLs may reach (adapters/webhook.py: a seller's
    # name pointed at 127.0.0.1 or the cloud's metadata service is refused): "10.20.0.0/16", an address alone.
    webhook_allowed_networks: tuple[str, ...] = ()
    receipt_timeout_s: float = 600.0  # a message sent this long ago without a receipt is overdue
    # a warehouse cancel asked this long ago that the warehouse has not confirmed (its callback cancelled) needs a look:
    # a parcel customs cancelled may be leaving all the same (a shipped one coming back may take a day: its return)
    warehouse_cancel_timeout_s: float = 86400.0
    watchdog_interval_s: float = 30.0
    # Delivered jobs and their attempts are deleted this long after (0: kept for ever); the documents keep their
    # forward state, CopMsgId and sent time, and messages and receipts are never deleted.
    done_job_retention_days: float = 30.0
    watchdog_repush: bool = False  # re-send overdue messages (same guid and CopMsgId)
    max_repushes: int = 3  # per message, for the watchdog and for transient receipts together
    resend_delay_s: float = 30.0  # wait before re-sending after a transient receipt (4, system codes)
    sandbox: str = "auto"  # auto: `cbec serve` runs the customs sandbox when no customs endpoint is set; off
    sandbox_port: int = 8790  # 0: any free port
    sandbox_receipt_delay_s: float = 0.5
    worker: bool = True  # run a queue worker inside `cbec serve` (besides any `cbec worker` processes)
    worker_lease_s: float = 30.0
    worker_poll_s: float = 1.0
    inbox_poll_s: float = 2.0


# --- the 179 real-time payment data (gateway/realtime.py) ---------------------------------------------------

REALTIME_ALGORITHMS = ("rsa-sha1", "sm2-sm3")
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class RealtimePlatform:
    """An import platform whose payment data the gateway uploads when customs asks (spec §10): customs asks at the
    URL the platform registered, ``<public address>/ceb/platDataOpen/<token>``; the upload is signed with the
    platform's key (its UKey's certificate, exported, or a key of its own the CA issued)."""

    ebp_code: str
    token: str  # the URL's secret last part: whoever knows it can make the gateway upload, so it is kept like a key
    key_file: Path | None
    cert_file: Path | None
    algorithm: str = "rsa-sha1"  # or "sm2-sm3"
    # or the platform's UKey, through the E-Port client control on the PC it is plugged into (gateway.ukey): its
    # WebSocket (ws://<that PC>:61232), the card's PIN and the control's method it signs through
    ukey_url: str | None = None
    ukey_password: str | None = field(default=None, repr=False)
    ukey_method: str = "cus-sec_SpcSignDataAsPEM"
    # the token before a rotation, whose URL still answers until customs asks at the new one: customs approves a
    # platform's new URL some time after it is registered, and its questions at the old one would be lost meanwhile
    previous_token: str | None = None

    @property
    def tokens(self) -> tuple[str, ...]:
        """The tokens of the URLs customs may ask at: the platform's own, and the previous one while it answers."""
        return (self.token,) if self.previous_token is None else (self.token, self.previous_token)


@dataclass(frozen=True)
class RealtimeSettings:
    platforms: tuple[RealtimePlatform, ...] = ()
    endpoint: str = "realtime"  # the forwarding endpoint (kind realtime) the uploads go to
    # The signed string's form (gateway.realtime.signed_string): "quoted", as working implementations sign it, or
    # "spec", as the official attachment writes it.
    signing_variant: str = "quoted"
    # A payment's raw data (the payer's request to its payment company and the answer) is deleted this long after it
    # was last handed over, with customs' questions asked as long ago (0: kept for ever). Three years by default: what
    # the e-commerce law (电子商务法 第三十一条) has a platform keep of its transactions; the platform keeps its own.
    payment_data_retention_days: float = 1095.0


def _parse_realtime(data: Any) -> RealtimeSettings:
    if not isinstance(data, Mapping):
        raise ValueError("realtime must be a table")
    unknown = set(data) - {"platforms", "endpoint", "signing_variant", "payment_data_retention_days"}
    if unknown:
        raise ValueError(f"realtime: unknown setting(s) {', '.join(sorted(unknown))}")
    variant = str(data.get("signing_variant", "quoted"))
    if variant not in ("quoted", "spec"):
        raise ValueError(f"realtime.signing_variant must be quoted or spec; found {variant!r}")
    platforms = data.get("platforms", {})
    if not isinstance(platforms, Mapping):
        raise ValueError("realtime.platforms must be a table of tables, one per ebpCode")
    out: list[RealtimePlatform] = []
    for ebp, item in platforms.items():
        where = f"realtime.platforms.{ebp}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a table")
        unknown = set(item) - {"token", "previous_token", "key_file", "cert_file", "algorithm", "ukey_url",
                               "ukey_password", "ukey_method"}  # fmt: skip
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
        if not 1 <= len(str(ebp)) <= 18:
            raise ValueError(f"{where}: an ebpCode has 1 to 18 characters")
        token = str(item.get("token", ""))
        previous = None if item.get("previous_token") is None else str(item["previous_token"])
        for name, value in (("token", token), ("previous_token", previous)):
            if value is not None and (len(value) < 16 or not set(value) <= _TOKEN_CHARS):
                raise ValueError(f"{where}.{name} must be at least 16 letters, digits, '-' or '_' (a secret: e.g. "
                                 "the output of python -c 'import secrets; print(secrets.token_urlsafe(24))')")
        if previous == token:
            raise ValueError(f"{where}.previous_token is the token: it is the one before a rotation")
        if item.get("ukey_url"):
            url = str(item["ukey_url"])
            if not url.startswith(("ws://", "wss://")) or set(item) & {"key_file", "cert_file", "algorithm"}:
                raise ValueError(f"{where}: ukey_url is the WebSocket of the E-Port client control its UKey is in "
                                 "(ws://<host>:61232), and then neither key_file, cert_file nor algorithm: the card "
                                 "holds the key")  # fmt: skip
            password = item.get("ukey_password")
            try:
                method = _ukey_method(item.get("ukey_method", UKEY_SIGN_METHODS[0]))
            except ValueError as exc:
                raise ValueError(f"{where}.ukey_method: {exc}") from None
            out.append(RealtimePlatform(str(ebp), token, None, None, ukey_url=url, ukey_method=method,
                                        ukey_password=None if password is None else str(password),
                                        previous_token=previous))  # fmt: skip
            continue
        if not item.get("key_file") or not item.get("cert_file") or {"ukey_password", "ukey_method"} & set(item):
            raise ValueError(f"{where} needs key_file and cert_file (the platform's signing key and certificate), or "
                             "ukey_url (its UKey)")  # fmt: skip
        algorithm = str(item.get("algorithm", "rsa-sha1"))
        if algorithm not in REALTIME_ALGORITHMS:
            raise ValueError(f"{where}.algorithm must be one of {', '.join(REALTIME_ALGORITHMS)}")
        out.append(RealtimePlatform(str(ebp), token, Path(item["key_file"]), Path(item["cert_file"]), algorithm,
                                    previous_token=previous))  # fmt: skip
    tokens = [t for p in out for t in p.tokens]
    if len(set(tokens)) != len(tokens):
        raise ValueError("realtime.platforms: two platforms share a token (or a previous_token); each needs its own")
    try:
        retention = _days("")(data.get("payment_data_retention_days", RealtimeSettings.payment_data_retention_days))
    except ValueError as exc:
        raise ValueError(f"realtime.payment_data_retention_days: {exc}") from None
    return RealtimeSettings(tuple(out), str(data.get("endpoint", "realtime")), variant, retention)


def uses_sandbox(fwd: ForwardingSettings) -> bool:
    """Whether the built-in customs sandbox plays customs (and its other endpoints): no customs endpoint configured,
    and forwarding.sandbox not off."""
    return fwd.sandbox != "off" and not any(e.kind == "customs" for e in fwd.endpoints)


def _realtime_reachable(rt: RealtimeSettings, fwd: ForwardingSettings) -> None:
    """Refuse platforms whose uploads could go nowhere: customs' question would be answered and nothing sent."""
    if not rt.platforms:
        return
    if not fwd.enabled:
        raise ValueError("realtime.platforms need forwarding: the uploads go through the retry queue")
    named = next((e for e in fwd.endpoints if e.name == rt.endpoint), None)
    if named is not None and named.kind != "realtime":
        raise ValueError(f"realtime.endpoint {rt.endpoint!r} is a {named.kind} endpoint, not one of kind realtime")
    if named is None and not uses_sandbox(fwd):
        raise ValueError(f"realtime.platforms need an endpoint of kind realtime named {rt.endpoint!r} "
                         "([forwarding.endpoints.realtime] with customs' realTimeDataUpload url)")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None  # None: start the embedded PostgreSQL in data_dir/pgdata
    data_dir: Path = Path("var")
    api_keys: tuple[ApiKey, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    log_format: str = "auto"  # auto: readable on a terminal, JSON otherwise; or "json" / "console"
    log_level: str = "info"
    amount_tolerance: Decimal = Decimal("0")  # reconciliation tolerance for compared amounts, in CNY
    tax_rates: Mapping[str, Any] = field(default_factory=dict)  # overrides of gateway.tax defaults
    pool_max_size: int = 16  # per process
    # API processes sharing the port (SO_REUSEPORT); forwarding, the sandbox and the watchdog run in the first.
    processes: int = 1
    # After SIGTERM, how long cbec serve goes on answering — /healthz answering 503 "stopping" — before it closes its
    # port: behind a load balancer, long enough for its health checks to take the host out. 0: at once.
    shutdown_drain_s: float = 0.0
    # The declaring agent's key, used to sign JSON-submitted declarations whose schema requires a
    # signature (CEB621). None: a TEST key is generated in data_dir/signing (never for customs).
    signing_key_file: Path | None = None
    signing_cert_file: Path | None = None
    signing_algorithm: str = "rsa-sha1"  # or "sm2-sm3"
    # Or the key stays on the agent's UKey (instead of the two files): the E-Port client control's WebSocket on the PC
    # the card is in (ws://<host>:61232, gateway.ukey) and the card's PIN. The algorithm is the card's certificate's.
    signing_ukey_url: str | None = None
    signing_ukey_password: str | None = field(default=None, repr=False)
    # How the card is asked to sign (UKEY_SIGN_METHODS): cus-sec_SpcSignDataNoHashAsPEM for an RSA card that signs a
    # SHA-1 digest made here (cards issued before 2022-07, as the public signers use them).
    signing_ukey_method: str = "cus-sec_SpcSignDataAsPEM"
    # The agentCode of the enterprise whose key that is: a JSON CEB621 naming another agent is refused (customs
    # checks the signer against the declared agent). None: not checked.
    signing_agent_code: str | None = None
    # Verify the ds:Signature of every signed XML message at ingest (spec §2.7; customs answers a bad one with
    # -621028/-621029), pinned to the certificates in trusted_certs (a PEM file or a folder of them) when given.
    verify_signatures: bool = False
    trusted_certs: Path | None = None
    forwarding: ForwardingSettings = field(default_factory=ForwardingSettings)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    # Refused messages (rejected_messages: what was sent, up to 64 KiB, and the issues answered) are deleted this long
    # after they came (0: kept for ever). They are no declaration: a seller reads its own afterwards, an operator
    # helps with them, and a flood of bad messages would otherwise grow the table without end.
    rejection_retention_days: float = 180.0
    # Where browsers and clients reach the gateway when that is not where it listens: behind a TLS-terminating proxy,
    # e.g. "https://cbec.zone.example" (scheme and host[:port] only; see public_origin). None: where it listens.
    public_url: str | None = None

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _flag(value: Any) -> bool:
    """A boolean setting from TOML (a boolean) or the environment (1/true/yes/on or 0/false/no/off). Anything else is
    refused: a misspelt 'ture' must not turn a safety check off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is no boolean (true/false, 1/0, yes/no, on/off)")


_SHA256_HEX = frozenset("0123456789abcdef")


def _key_sha256(value: Any, where: str) -> str:
    text = str(value).strip().lower()
    if len(text) != 64 or not set(text) <= _SHA256_HEX:
        raise ValueError(f"{where}.key_sha256 must be 64 hexadecimal digits (printf '%s' \"$KEY\" | sha256sum); "
                         f"found {len(text)} characters")  # fmt: skip
    return text


def _parse_keys(items: Any) -> tuple[ApiKey, ...]:
    if not isinstance(items, list):
        raise ValueError("api_keys must be a list of {name, key or key_sha256, role, codes}")
    keys = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not (item.get("key") or item.get("key_sha256")):
            raise ValueError(f"api_keys[{i}] needs at least a key (or its key_sha256)")
        if item.get("key") and item.get("key_sha256"):
            raise ValueError(f"api_keys[{i}] gives both a key and a key_sha256: one of them")
        unknown = set(item) - {"name", "key", "key_sha256", "role", "codes", "rate_per_s", "rate_burst"}
        if unknown:
            raise ValueError(f"api_keys[{i}]: unknown setting(s) {', '.join(sorted(unknown))}")
        role = Role(item.get("role", "submitter"))
        codes = frozenset(_strings(item.get("codes", ()), f"api_keys[{i}].codes"))
        if role is Role.SUBMITTER and not codes:
            raise ValueError(f"api_keys[{i}] is a submitter key without enterprise codes")
        hashed = _key_sha256(item["key_sha256"], f"api_keys[{i}]") if item.get("key_sha256") else None
        rates = {name: _setting(item, name, None, _number(0, above=True), f"api_keys[{i}].")
                 for name in ("rate_per_s", "rate_burst") if item.get(name) is not None}  # fmt: skip
        keys.append(ApiKey(name=str(item.get("name", f"key{i}")), key=None if hashed else str(item["key"]), role=role,
                           codes=codes, key_sha256=hashed, **rates))  # fmt: skip
    seen: set[bytes] = set()
    named: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k.digest in seen:  # the later one would win silently, its role and codes with it
            raise ValueError(f"api_keys[{i}] ({k.name}) repeats the key of an earlier entry")
        if k.name in named:  # the log, the refused messages and a reload's changes name keys by their names
            raise ValueError(f"api_keys[{i}] is named {k.name!r}, as api_keys[{named[k.name]}] is: give each key a "
                             "name of its own")  # fmt: skip
        seen.add(k.digest)
        named[k.name] = i
    return tuple(keys)


#: The top-level settings a configuration file may hold (besides its tables): an unknown name is a typo, and a
#: typo silently falling back to a default (the embedded database, a generated key, no signature check) is worse
#: than a refusal.
_TABLES = ("api_keys", "tax_rates", "forwarding", "realtime")


def _scalars(
    data: Mapping[str, Any], env: Mapping[str, str], convs: Iterable[tuple[str, Any]], *, env_prefix: str, where: str
) -> dict[str, Any]:
    """Each named setting from the file, then from the environment (``<env_prefix><NAME>`` wins), converted; a value
    that does not convert names its setting."""
    out: dict[str, Any] = {}
    for name, conv in convs:
        try:
            if name in data:
                out[name] = conv(data[name])
            env_value = env.get(f"{env_prefix}{name.upper()}")
            if env_value:
                out[name] = conv(env_value)
        except ValueError as exc:
            raise ValueError(f"{where}{name}: {exc}") from None
    return out


#: The E-Port client control's methods a UKey signs through (gateway.ukey speaks them): the text, which the card
#: hashes by its key (the default), or the text's SHA-1 digest made here, for RSA cards issued before 2022-07.
UKEY_SIGN_METHODS = ("cus-sec_SpcSignDataAsPEM", "cus-sec_SpcSignDataNoHashAsPEM")


def _ukey_method(value: Any) -> str:
    method = str(value).strip()
    if method not in UKEY_SIGN_METHODS:
        raise ValueError(f"one of {', '.join(UKEY_SIGN_METHODS)}; found {method!r}")
    return method


def _ukey_url(value: Any) -> str:
    url = str(value).strip()
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"the WebSocket of the E-Port client control the UKey is in (ws://<host>:61232); found "
                         f"{url!r}")
    return url


def _signing_key_in_one_place(changes: Mapping[str, Any]) -> None:
    """The gateway's signing key is in files or on a UKey, not both; a PIN needs the UKey it opens."""
    if changes.get("signing_ukey_url") and (changes.get("signing_key_file") or changes.get("signing_cert_file")):
        raise ValueError("signing_ukey_url: the signing key is on a UKey or in signing_key_file and signing_cert_file, "
                         "not both")  # fmt: skip
    for name in ("signing_ukey_password", "signing_ukey_method"):
        if changes.get(name) and not changes.get("signing_ukey_url"):
            raise ValueError(f"{name} is for the UKey signing_ukey_url names, and that is not set")


def _choice(name: str, allowed: tuple[str, ...]) -> Any:
    def conv(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; found {value!r}")
        return text

    return conv


def _number(low: float, high: float | None = None, *, above: bool = False, integer: bool = False) -> Any:
    """A conv for a number not below ``low`` (or above it: ``above``) and not above ``high``, an integer when
    ``integer``: what a queue, a worker or a timer cannot run with is refused with the configuration, not met when
    the process starts."""

    def conv(value: Any) -> float | int:
        number: float | int
        try:
            if isinstance(value, bool):
                raise ValueError
            number = int(str(value).strip()) if integer else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be {'an integer' if integer else 'a number'}; found {value!r}") from None
        too_high = high is not None and number > high
        if not math.isfinite(number) or number < low or (above and number == low) or too_high:
            lowest = f"{'above' if above else 'at least'} {low:g}"
            raise ValueError(f"must be {f'between {low:g} and {high:g}' if high is not None else lowest}; found "
                             f"{value!r}")  # fmt: skip
        return number

    return conv


def _days(name: str) -> Any:
    def conv(value: Any) -> float:
        try:
            days = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number of days; found {value!r}") from None
        if not 0 <= days < 36_500:  # NaN too
            raise ValueError(f"must be 0 (for ever) or a number of days up to a century; found {value!r}")
        return days

    return conv


def _decimal(name: str) -> Any:
    def conv(value: Any) -> Decimal:
        try:
            return Decimal(str(value))
        except ArithmeticError:
            raise ValueError(f"must be a decimal number; found {value!r}") from None

    return conv


def public_origin(url: str) -> str:
    """The origin (``scheme://host[:port]``, lower-case) of a ``public_url``; ValueError for anything else. The
    gateway is served at the root of that address (the console's pages ask for /ops/...), so a path is refused."""
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # a port that is no number, or beyond 65535, raises here
    except ValueError:
        raise ValueError(f"must be a URL such as https://cbec.zone.example; found {url!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http or https URL with a host, such as https://cbec.zone.example; found {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"must be the scheme and host only (the gateway is served at its root); found {url!r}")
    scheme = parts.scheme.lower()
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    default = {"http": 80, "https": 443}[scheme]  # a browser's Origin leaves the scheme's own port out
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | int) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(str(v) for v in value)


def _parse_retry(name: str, retry: Mapping[str, Any]) -> RetrySettings:
    unknown = set(retry) - {"base_s", "factor", "cap_s", "max_attempts"}
    if unknown:
        raise ValueError(f"forwarding.endpoints.{name}.retry: unknown setting(s) {', '.join(sorted(unknown))}")
    d = RetrySettings()
    where = f"forwarding.endpoints.{name}.retry."
    return RetrySettings(
        base_s=_setting(retry, "base_s", d.base_s, _number(0), where),
        factor=_setting(retry, "factor", d.factor, _number(1), where),
        cap_s=_setting(retry, "cap_s", d.cap_s, _number(0), where),
        max_attempts=_setting(retry, "max_attempts", d.max_attempts, _number(1, integer=True), where),
    )


def _setting(table: Mapping[str, Any], name: str, default: Any, conv: Any, where: str) -> Any:
    """``table[name]`` through ``conv`` (``default`` when absent); a ValueError names where it is."""
    if name not in table:
        return default
    try:
        return conv(table[name])
    except ValueError as exc:
        raise ValueError(f"{where}{name}: {exc}") from None


def _http_url(value: Any) -> str:
    """An http(s) URL that can be sent to: a host, a port that is one (1–65535), nothing blank or invisible in it —
    a typo here made every delivery a dead letter, each saying only "invalid url"."""
    url = str(value).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// address; found {url!r}")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError(f"must not hold blanks or control characters; found {url!r}")
    try:
        port = parts.port  # ValueError: "18391:", "183910"
    except ValueError as exc:
        raise ValueError(f"has no valid port ({exc}); found {url!r}") from None
    if port == 0:
        raise ValueError(f"has no valid port (0); found {url!r}")
    return url


def _parse_endpoint(name: str, item: Any) -> EndpointSettings:
    if not isinstance(item, Mapping):
        raise ValueError(f"forwarding.endpoints.{name} must be a table")
    kind = str(item.get("kind", name))
    if kind not in ENDPOINT_KINDS:
        raise ValueError(f"forwarding.endpoints.{name}: kind must be one of {', '.join(ENDPOINT_KINDS)}")
    transport = str(item.get("transport", "http"))
    if transport not in TRANSPORTS:
        raise ValueError(f"forwarding.endpoints.{name}: transport must be http or folder")
    retry = item.get("retry", {})
    if not isinstance(retry, Mapping):
        raise ValueError(f"forwarding.endpoints.{name}.retry must be a table")
    if "receiver_id" in item:  # one id for both customs systems would send one flow's messages to the other system
        raise ValueError(f"forwarding.endpoints.{name}: receiver_id is no longer read, as one id named the receiver of "
                         "import and export messages alike; set import_receiver_id and/or export_receiver_id")
    known = {f for f in EndpointSettings.__dataclass_fields__} - {"name"}
    unknown = set(item) - known
    if unknown:
        raise ValueError(f"forwarding.endpoints.{name}: unknown setting(s) {', '.join(sorted(unknown))}")
    where = f"forwarding.endpoints.{name}."
    ep = EndpointSettings(
        name=name,
        kind=kind,
        transport=transport,
        url=_setting(item, "url", None, _http_url, where) if item.get("url") else None,
        sender_id=str(item["sender_id"]) if item.get("sender_id") else None,
        import_receiver_id=str(item["import_receiver_id"]) if item.get("import_receiver_id") else None,
        export_receiver_id=str(item["export_receiver_id"]) if item.get("export_receiver_id") else None,
        outbox=Path(item["outbox"]) if item.get("outbox") else None,
        inbox=Path(item["inbox"]) if item.get("inbox") else None,
        inbox_min_age_s=_setting(item, "inbox_min_age_s", 0.0, _number(0), where),
        folder_format=str(item.get("folder_format", "dxp")),
        timeout_s=_setting(item, "timeout_s", 30.0, _number(0, above=True), where),
        concurrency=_setting(item, "concurrency", 4, _number(1, integer=True), where),
        rate_per_s=_setting(item, "rate_per_s", None, _number(0, above=True), where),
        rate_burst=_setting(item, "rate_burst", 1.0, _number(1), where),
        retry=_parse_retry(name, retry),
        breaker_failures=_setting(item, "breaker_failures", 5, _number(1, integer=True), where),
        breaker_cooldown_s=_setting(item, "breaker_cooldown_s", 30.0, _number(0), where),
        warehouse_code=str(item.get("warehouse_code", "WH01")),
        callback_url=_setting(item, "callback_url", None, _http_url, where) if item.get("callback_url") else None,
        headers={str(k): str(v) for k, v in dict(item.get("headers", {})).items()},
    )
    if ep.kind in ("inspection", "warehouse", "realtime") and not ep.url:
        raise ValueError(f"forwarding.endpoints.{name}: a {ep.kind} endpoint needs a url")
    if ep.kind == "customs" and ep.transport == "http" and not ep.url:
        raise ValueError(f"forwarding.endpoints.{name}: the http transport needs a url")
    dxp_ids = {"sender_id": ep.sender_id, "import_receiver_id": ep.import_receiver_id,
               "export_receiver_id": ep.export_receiver_id}  # fmt: skip
    for setting, value in dxp_ids.items():
        if value is None:
            continue
        if ep.kind != "customs":  # read by nothing else: a setting in the wrong table is a mistake, not a no-op
            raise ValueError(f"forwarding.endpoints.{name}: {setting} is a customs endpoint's (a DXP id); this "
                             f"endpoint is a {ep.kind} one")
        if not 1 <= len(value) <= 16:  # the DxpMsg schema's: every message of the flow would be a dead letter
            raise ValueError(f"forwarding.endpoints.{name}: {setting} {value!r} is {len(value)} characters; a DXP id "
                             "has 1 to 16")
    if ep.kind == "customs" and ep.transport == "folder" and ep.outbox is None:
        raise ValueError(f"forwarding.endpoints.{name}: the folder transport needs an outbox")
    return ep


_FORWARDING_SCALARS: dict[str, Any] = {
    "enabled": _flag,
    "sender_id": str,
    "webhook_endpoint": str,
    "receipt_timeout_s": _number(0, above=True),
    "warehouse_cancel_timeout_s": _number(0, above=True),
    "watchdog_interval_s": _number(0, above=True),
    "done_job_retention_days": _days("done_job_retention_days"),
    "watchdog_repush": _flag,
    "max_repushes": _number(0, integer=True),
    "resend_delay_s": _number(0),
    "sandbox": str,
    "sandbox_port": _number(0, 65535, integer=True),
    "sandbox_receipt_delay_s": _number(0),
    "worker": _flag,
    "worker_lease_s": _number(0, above=True),
    "worker_poll_s": _number(0, above=True),
    "inbox_poll_s": _number(0, above=True),
}


def _one_customs_endpoint_per_type(routes: Iterable[RouteSettings], endpoints: Iterable[EndpointSettings]) -> None:
    """Refuse routes that send one message type to two customs endpoints.

    Customs takes each declaration once, and its receipts name the CopMsgId of that sending, which the gateway
    keeps one of per document: sent twice, the declaration would be a duplicate at customs, and the receipts of
    the second sending would match no document. The routes' tradeModes do not keep two apart: a message without a
    tradeMode, or with documents of both modes, matches every route of its type."""
    customs = {e.name for e in endpoints if e.kind == "customs"}
    by_type: dict[str, set[str]] = {}
    for route in routes:
        for message_type in route.message_types:
            by_type.setdefault(message_type, set()).update(e for e in route.endpoints if e in customs)
    for message_type, names in sorted(by_type.items()):
        if len(names) > 1:
            raise ValueError(
                f"forwarding.routes send {message_type} to {len(names)} customs endpoints ({', '.join(sorted(names))}):"
                " customs takes each declaration once; route it to one of them"
            )


def _declarations_reach_customs(fwd: ForwardingSettings) -> None:
    """Refuse routes naming message types that do not exist, and routes that leave declarations with nowhere to go:
    sent to an endpoint that is not configured while no customs endpoint takes them and the built-in sandbox does not
    play customs — each would be accepted, answered 202, and never forwarded (an inventory held for ever). An
    inspection or warehouse endpoint left out is a site's choice (logged at start, ignored)."""
    from gateway.messages import BY_CODE  # data only; imported here to keep this module's imports the stdlib's

    for i, route in enumerate(fwd.routes):
        if unknown := [t for t in route.message_types if t not in BY_CODE]:
            raise ValueError(f"forwarding.routes[{i}] names message types that do not exist: {', '.join(unknown)}")
    if not fwd.enabled or uses_sandbox(fwd):
        return
    names = {e.name for e in fwd.endpoints}
    customs = {e.name for e in fwd.endpoints if e.kind == "customs"}
    reaching = {t for r in fwd.routes if set(r.endpoints) & customs for t in r.message_types}
    stranded: dict[str, set[str]] = {}
    for route in fwd.routes:
        for missing in set(route.endpoints) - names:
            stranded.setdefault(missing, set()).update(t for t in route.message_types if t not in reaching)
    for missing, types in sorted(stranded.items()):
        if types:
            held = (f"the customs endpoint configured is {', '.join(sorted(customs))}: name it {missing}, or route "
                    "them to it") if customs else "no customs endpoint is configured and forwarding.sandbox is off"
            raise ValueError(f"forwarding.routes send {', '.join(sorted(types))} to {missing!r}, which is not "
                             f"configured, and nothing else takes them to customs ({held}): they would be stored "
                             "and never sent")  # fmt: skip


def parse_forwarding(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ForwardingSettings:
    """The ``[forwarding]`` table of the TOML file, then ``CBEC_FORWARDING_<NAME>`` for its scalar settings."""
    env = env or {}
    changes: dict[str, Any] = {}
    unknown = set(data) - set(_FORWARDING_SCALARS) - {"endpoints", "routes", "hold_types", "on_release", "webhooks",
                                                      "webhook_allowed_networks"}  # fmt: skip
    if unknown:
        raise ValueError(f"forwarding: unknown setting(s) {', '.join(sorted(unknown))}")
    changes.update(_scalars(data, env, _FORWARDING_SCALARS.items(), env_prefix="CBEC_FORWARDING_", where="forwarding."))
    if changes.get("sandbox", "auto") not in ("auto", "off"):
        raise ValueError("forwarding.sandbox must be 'auto' or 'off'")
    if "sender_id" in changes and not 1 <= len(changes["sender_id"]) <= 16:  # the DxpMsg schema's SenderId
        raise ValueError(f"forwarding.sender_id {changes['sender_id']!r} is {len(changes['sender_id'])} characters; "
                         "a DXP id has 1 to 16")
    endpoints = data.get("endpoints", {})
    if not isinstance(endpoints, Mapping):
        raise ValueError("forwarding.endpoints must be a table of tables")
    changes["endpoints"] = tuple(_parse_endpoint(str(n), item) for n, item in endpoints.items())
    if "routes" in data:
        routes = []
        for i, r in enumerate(data["routes"]):
            if not isinstance(r, Mapping) or "message_types" not in r or "endpoints" not in r:
                raise ValueError(f"forwarding.routes[{i}] needs message_types and endpoints")
            modes = _strings(r["modes"], f"forwarding.routes[{i}].modes") if r.get("modes") else None
            routes.append(
                RouteSettings(
                    _strings(r["message_types"], f"forwarding.routes[{i}].message_types"),
                    _strings(r["endpoints"], f"forwarding.routes[{i}].endpoints"),
                    None if modes is None or "*" in modes else modes,
                )
            )
        changes["routes"] = tuple(routes)
    _one_customs_endpoint_per_type(changes.get("routes", DEFAULT_ROUTES), changes["endpoints"])
    _declarations_reach_customs(replace(ForwardingSettings(), **changes))
    for name in ("hold_types", "on_release"):
        if name in data:
            changes[name] = _strings(data[name], f"forwarding.{name}")
    from adapters.webhook import allowed_networks, refused_address  # the delivery's own rule (aiohttp: loaded late)

    if "webhook_allowed_networks" in data:
        changes["webhook_allowed_networks"] = _strings(data["webhook_allowed_networks"],
                                                       "forwarding.webhook_allowed_networks")  # fmt: skip
        try:
            allowed_networks(changes["webhook_allowed_networks"])
        except ValueError as exc:
            raise ValueError(f"forwarding.webhook_allowed_networks: {exc}") from None
    allowed = allowed_networks(changes.get("webhook_allowed_networks", ()))
    webhooks = data.get("webhooks", {})
    if not isinstance(webhooks, Mapping):
        raise ValueError("forwarding.webhooks must be a table of tables")
    hooks = []
    for seller, item in webhooks.items():
        if not isinstance(item, Mapping) or not item.get("url") or not item.get("secret") or not item.get("codes"):
            raise ValueError(f"forwarding.webhooks.{seller} needs codes, url and secret")
        url = _setting(item, "url", None, _http_url, f"forwarding.webhooks.{seller}.")
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
        local = host == "localhost" or host.endswith(".localhost")  # this machine's name, whatever DNS says
        if (why := refused_address("127.0.0.1" if local else host, allowed)) is not None:
            raise ValueError(f"forwarding.webhooks.{seller}.url: {why}; a seller's webhook goes to public addresses "
                             "only, or to one of forwarding.webhook_allowed_networks")  # fmt: skip
        hooks.append(WebhookSettings(str(seller), frozenset(_strings(item["codes"], "codes")), url,
                                     str(item["secret"])))  # fmt: skip
    changes["webhooks"] = tuple(hooks)
    return replace(ForwardingSettings(), **changes)


#: The top-level scalar settings, each also ``CBEC_<NAME>`` in the environment.
_SETTINGS: tuple[tuple[str, Any], ...] = (
    ("host", str),
    ("port", _number(0, 65535, integer=True)),
    ("database_url", str),
    ("data_dir", Path),
    ("max_body_bytes", _number(1024, integer=True)),
    ("log_format", _choice("log_format", ("auto", "json", "console"))),
    ("log_level", _choice("log_level", ("debug", "info", "warning", "error", "critical"))),
    ("amount_tolerance", _decimal("amount_tolerance")),
    ("pool_max_size", _number(2, integer=True)),
    ("processes", int),
    ("shutdown_drain_s", _number(0)),
    ("signing_key_file", Path),
    ("signing_cert_file", Path),
    ("signing_algorithm", _choice("signing_algorithm", ("rsa-sha1", "sm2-sm3"))),
    ("signing_ukey_url", _ukey_url),
    ("signing_ukey_password", str),
    ("signing_ukey_method", _ukey_method),
    ("signing_agent_code", str),
    ("verify_signatures", _flag),
    ("trusted_certs", Path),
    ("public_url", public_origin),
    ("rejection_retention_days", _days("rejection_retention_days")),
)

#: Every ``CBEC_*`` environment variable anything of the project reads. Any other is a misspelt one, refused as a
#: misspelt name in the file is: a misspelt database URL variable silently meant the embedded database.
ENV_NAMES: frozenset[str] = frozenset(
    {f"CBEC_{name.upper()}" for name, _ in _SETTINGS}
    | {f"CBEC_FORWARDING_{name.upper()}" for name in _FORWARDING_SCALARS}
    | {
        "CBEC_CONFIG",  # the configuration file
        "CBEC_API_KEYS",  # api_keys, as JSON
        "CBEC_SCHEMA_DIR",  # another folder of customs XSDs (gateway.messages)
        "CBEC_CUSTOMS_SANDBOX_URL",  # the sandbox the pytest fixture yields (gateway.sandbox.pytest_plugin)
        "CBEC_TEST_DATABASE_URL",  # the PostgreSQL server of the test suite (tests/dbutil.py)
    }
)


def _check_env_names(env: Mapping[str, str]) -> None:
    """Refuse a ``CBEC_*`` variable no one reads, naming the closest known one."""
    unknown = sorted(n for n in env if n.startswith("CBEC_") and n not in ENV_NAMES)
    if not unknown:
        return
    named = []
    for name in unknown:
        forwarding = "CBEC_FORWARDING_" + name.removeprefix("CBEC_")  # a forwarding setting without its prefix
        close = [forwarding] if forwarding in ENV_NAMES else difflib.get_close_matches(name, ENV_NAMES, n=1)
        named.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise ValueError(f"unknown environment variable{'s' if len(unknown) > 1 else ''} {', '.join(named)}; see the "
                     "README's configuration reference")  # fmt: skip


def load(config_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from an optional TOML file and the environment (CBEC_*)."""
    env = os.environ if env is None else env
    _check_env_names(env)
    data: dict[str, Any] = {}
    path = config_file or env.get("CBEC_CONFIG")
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    s = Settings()
    changes: dict[str, Any] = {}
    unknown = sorted(set(data) - {name for name, _ in _SETTINGS} - set(_TABLES))
    if unknown:
        raise ValueError(f"{path}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                         "(see the README's configuration reference)")  # fmt: skip
    changes.update(_scalars(data, env, _SETTINGS, env_prefix="CBEC_", where=""))
    _signing_key_in_one_place(changes)
    if "api_keys" in data:
        changes["api_keys"] = _parse_keys(data["api_keys"])
    if env.get("CBEC_API_KEYS"):
        changes["api_keys"] = _parse_keys(json.loads(env["CBEC_API_KEYS"]))
    if "tax_rates" in data:
        from gateway.tax import TaxRates  # here, not at the top: the tax module is not needed to read settings

        if not isinstance(data["tax_rates"], Mapping):
            raise ValueError("tax_rates must be a table")
        changes["tax_rates"] = dict(data["tax_rates"])
        TaxRates.from_mapping(changes["tax_rates"])  # refused at load, with the others, rather than at start
    if changes.get("trusted_certs") is not None:
        from gateway.signing import read_certificates  # here: reading settings needs no crypto otherwise

        read_certificates(changes["trusted_certs"])  # refused at load (OSError, ValueError), not at start
    forwarding = data.get("forwarding", {})
    if not isinstance(forwarding, Mapping):
        raise ValueError("forwarding must be a table")
    changes["forwarding"] = parse_forwarding(forwarding, env)
    if "realtime" in data:
        changes["realtime"] = _parse_realtime(data["realtime"])
        _realtime_reachable(changes["realtime"], changes["forwarding"])
    return replace(s, **changes)
