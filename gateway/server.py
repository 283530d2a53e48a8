"""Process lifecycle for ``cbec serve`` and ``cbec worker``: database (given or embedded), migrations, the
API, forwarding (queue worker, receipt watchdog, inbox pollers) and, when no customs endpoint is
configured, the built-in customs sandbox.

With no DSN configured an embedded PostgreSQL is started in ``<data_dir>/pgdata`` so that a new
user needs nothing installed. With no API keys configured a development admin key is generated
once and kept in ``<data_dir>/dev-api-key``. The sandbox posts its receipts back to the gateway's own
``/v1/receipts`` with a customs key generated at start (never logged or written anywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import multiprocessing
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from cbec_queue.policy import RetryPolicy

from gateway import db, logs, signing
from gateway.api import KEYS, OUTBOX, PIPELINE, POOL, REALTIME, STOPPING, STORE, WAREHOUSE_CALLBACKS, create_app
from gateway.auth import KeyRing, SharedRates
from gateway.config import (
    METRICS_SHARED_DIR_ENV,
    ApiKey,
    RealtimeSettings,
    Role,
    Settings,
    WebhookSettings,
    netloc,
)
from gateway.ingestlink import IngestClient, IngestServer, IngestUnavailable, link_folder
from gateway.metrics import shared_across_processes
from gateway.signing import SigningUnavailable
from gateway.ukey import UKeyBridge, UKeyRefused, UKeySigner, UKeyUnreachable
from gateway.workers import (
    Forwarding,
    PlatformKey,
    build_router,
    default_sandbox_url,
    effective_endpoints,
    platform_keys,
    routing_router,
    run_retention,
    uses_sandbox,
)

log = structlog.get_logger("gateway.server")


#: The exit status of a command whose embedded PostgreSQL stopped under it (as for a database it cannot use).
EXIT_DATABASE_GONE = 1


@contextlib.asynccontextmanager
async def database(settings: Settings, *, stop: asyncio.Event | None = None) -> AsyncIterator[str]:
    """Yield a DSN: the configured one, or that of an embedded server started for this process.

    ``stop``: the command runs until it is set (serve, worker). An embedded server that stops under it (killed, a
    PANIC it did not recover from) would leave it answering 503 for ever: that sets ``stop``, and once the block has
    wound down the command exits with :data:`EXIT_DATABASE_GONE` for its supervisor to start it again, whose start
    brings the server back (a stale pid file is handled there: :class:`gateway.db.EmbeddedPostgres`). Nothing is
    lost by leaving: a message is answered only once committed. The server is not restarted here: the cause of its
    end (a full disk, a signal from an operator) is better seen by whoever restarts the whole, and a second path of
    starting it, beside the one at start-up, would have to share it with the other processes joined to it."""
    dsn = db.resolve_dsn(settings.database_url)
    if dsn is not None:
        yield dsn
        return
    data_dir = Path(settings.data_dir) / "pgdata"
    log.info("embedded_postgres_starting", data_dir=str(data_dir))
    async with db.EmbeddedPostgres(data_dir) as pg:
        log.info("embedded_postgres_ready", dsn=pg.dsn, pid=pg.pid)
        if stop is None:  # a short command (migrate, replay): a server gone fails its next statement
            yield pg.dsn
            return
        watch = asyncio.create_task(_stop_when_gone(pg, stop))
        try:
            yield pg.dsn
        finally:
            gone = watch.done() and not watch.cancelled()
            watch.cancel()
            if gone:
                raise SystemExit(EXIT_DATABASE_GONE)


#: How often ``cbec serve`` and ``cbec worker`` look whether a newer build has migrated their database meanwhile.
SCHEMA_WATCH_S = 10.0


async def watch_migrations(pool: Any, stop: asyncio.Event) -> list[str]:
    """Until ``stop``, every SCHEMA_WATCH_S: the database's migrations compared with this build's. A newer build's
    found (another host upgraded, and migrated, while this process runs: README, Upgrading) sets ``stop`` and returns
    their names — this process would otherwise go on writing rows those migrations do not expect; its caller ends with
    NewerDatabase (exit 1), and a supervisor's restart refuses to start the old build on that database."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SCHEMA_WATCH_S)
        if stop.is_set():
            break
        try:
            unknown = await db.unknown_migrations(pool)
        except Exception as exc:  # the database away: the requests and the worker say so; look again later
            log.debug("migrations_not_read", error=f"{type(exc).__name__}: {exc}")
            continue
        if unknown:
            log.error("database_migrated_past_this_build", migrations=unknown, pid=os.getpid(),
                      note="a newer build migrated the database: this process stops (what runs finishes) and exits "
                           "1; upgrade it before starting it again")  # fmt: skip
            stop.set()
            return unknown
    return []


async def _watch_ended(watch: asyncio.Task[list[str]] | None) -> list[str]:
    """What the watch found (a newer build's migrations), once it ended: it has, when ``stop`` is set."""
    if watch is None:
        return []
    if not watch.done():
        watch.cancel()
    try:
        return await watch
    except asyncio.CancelledError:
        return []


async def _stop_when_gone(pg: db.EmbeddedPostgres, stop: asyncio.Event) -> None:
    await pg.stopped()
    log.error(
        "embedded_postgres_gone", data_dir=str(pg.data_dir), pid=pg.pid, server_log=str(pg.data_dir / "log"),
        exit_status=EXIT_DATABASE_GONE,
        note="the embedded PostgreSQL stopped; stopping too, to be started again (a supervisor's restart), which "
        "starts the server again",
    )  # fmt: skip
    stop.set()


def dev_keys(settings: Settings) -> Settings:
    """Without configured keys, create (once) an admin key for local use and say where it is."""
    if settings.api_keys:
        return settings
    path = Path(settings.data_dir) / "dev-api-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    key = path.read_text().strip()
    log.warning("dev_api_key", note="no API keys configured; using a local admin key", file=str(path))
    return settings.with_overrides(api_keys=(ApiKey("dev-admin", key, Role.ADMIN),))


#: The gateway's signing key as read: its algorithm ("rsa-sha1" or "sm2-sm3"), the key's PEM and its certificate's.
SigningPem = tuple[str, bytes, bytes]


def signing_pem(settings: Settings) -> tuple[SigningPem, Path]:
    """The key the gateway signs JSON declarations with, read from its files: the configured ones, else a local TEST
    key made once in data_dir/signing (logged); and the certificate's file, for the log (OSError)."""
    key_file, cert_file = settings.signing_key_file, settings.signing_cert_file
    if key_file is None or cert_file is None:
        folder = Path(settings.data_dir) / "signing"
        key_file, cert_file = folder / "test-agent-key.pem", folder / "test-agent-cert.pem"
        if not key_file.exists():
            folder.mkdir(parents=True, exist_ok=True)
            key_pem, cert_pem = signing.generate_test_key(
                "sm2" if settings.signing_algorithm == "sm2-sm3" else "rsa", "cbec-gateway local agent"
            )
            key_file.write_bytes(key_pem)
            key_file.chmod(0o600)
            cert_file.write_bytes(cert_pem)
        log.warning(
            "test_signing_key", note="no signing key configured; JSON CEB621s get a TEST signature", file=str(key_file)
        )
    return (settings.signing_algorithm, Path(key_file).read_bytes(), Path(cert_file).read_bytes()), Path(cert_file)


def pem_signer(pem: SigningPem) -> signing.Signer:
    """A signer of that key (ValueError: not a key, or not its certificate's)."""
    algorithm, key_pem, cert_pem = pem
    backend: signing.SignatureBackend
    if algorithm == "sm2-sm3":
        backend = signing.Sm2Sm3Key.from_pem(key_pem, cert_pem)
    else:
        backend = signing.RsaSha1Key.from_pem(key_pem, cert_pem)
    return signing.Signer(backend)


def _log_expiry(signer: signing.Signer, **where: str) -> None:
    """A certificate expired, or expiring within signing.EXPIRY_WARNING, is logged with ``where`` it is (its
    ``file``, or the ``ukey`` holding it); /metrics shows its expiry at every scrape: customs refuses what an expired
    one signs."""
    until = signer.valid_until
    left = until - datetime.now(UTC)
    if left <= timedelta(0):
        log.error("signing_certificate_expired", valid_until=until.isoformat(), **where,
                  note="it signs nothing (customs would refuse it, DXP 1002): JSON declarations it would sign are "
                       "answered 503 until the renewed one is in (SIGHUP)")  # fmt: skip
    elif left < signing.EXPIRY_WARNING:
        log.warning("signing_certificate_expires_soon", valid_until=until.isoformat(), **where,
                    days_left=round(left / timedelta(days=1), 1))  # fmt: skip


async def migrate_only(settings: Settings) -> list[str]:
    logs.configure(settings.log_format, settings.log_level)
    async with database(settings) as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            return await db.migrate(pool)
        finally:
            await pool.close()


def _local(host: str) -> str:
    """An address of this host to reach a server listening on ``host``. Listening on ``::`` is IPv6 only (asyncio
    sets IPV6_V6ONLY): that is ``::1``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


#: What SIGHUP reads again: the configuration as ``cbec serve`` read it at start, its command-line options applied
#: (gateway.cli.reload_settings bound to them).
Reload = Callable[[], Settings]


#: The settings of the signatures a reload applies besides the API keys: the gateway's own signing key (a renewed
#: certificate, the files replaced in place or named anew) and the enterprises' certificates it verifies against.
SIGNATURE_SETTINGS = ("signing_key_file", "signing_cert_file", "signing_algorithm", "signing_ukey_url",
                      "signing_ukey_password", "signing_ukey_method", "signing_agent_code", "verify_signatures",
                      "trusted_certs")  # fmt: skip
RELOADED_SETTINGS = ("api_keys", *SIGNATURE_SETTINGS, "realtime")


def needing_restart(running: Settings, fresh: Settings) -> list[str]:
    """The settings besides those a reload applies (RELOADED_SETTINGS, and the sellers' webhooks of the forwarding)
    that differ between the two (a reload that cannot apply one of those says so itself)."""
    stale = []
    for f in dataclasses.fields(Settings):
        before, after = getattr(running, f.name), getattr(fresh, f.name)
        if f.name == "forwarding":  # its webhooks are the reload's (KeyReload); the rest of it waits for a restart
            before = dataclasses.replace(before, webhooks=after.webhooks)
        if f.name in RELOADED_SETTINGS or before == after:
            continue
        if dataclasses.is_dataclass(before) and dataclasses.is_dataclass(after):  # named down to what changed
            stale += [f"{f.name}.{g.name}" for g in dataclasses.fields(before)
                      if getattr(before, g.name) != getattr(after, g.name)]  # fmt: skip
        else:
            stale.append(f.name)
    return stale


#: Where the gateway's key is when it is on a UKey: its client control's URL, the card's PIN and the control's method
#: it signs through, and its certificate once read from the card (handed to the other API processes with the rest, so
#: that they need not ask for it).
UKeyPlace = tuple[str, str | None, str, bytes | None]


@dataclass(frozen=True)
class Signatures:
    """What a process signs and verifies with: the signer of JSON declarations (with the agent whose key it is) and
    the certificates signatures are pinned to (None: any). The first process of ``cbec serve`` reads them from the
    files the settings name; the other API processes are handed the same (pickled as the key's and certificates'
    bytes, through the spawn pipe), so that every process signs with the key in force in the first — not with files
    that may be half renewed, or renewed and not yet reloaded, when one is started again. A key on a UKey is reached
    by each process through the card's client control (gateway.ukey.UKeySigner)."""

    signer: signing.Signer | UKeySigner
    agent_code: str | None
    verify: bool
    trusted: tuple[bytes, ...] | None
    pem: SigningPem | None  # the signer's key as read; None: on a UKey

    @classmethod
    def from_settings(cls, settings: Settings) -> Signatures:
        """Reads the key, its certificate and the trusted certificates from their files (OSError, ValueError): the
        configured key, else a local TEST key (signing_pem); its certificate's end logged when near or past. A key on
        a UKey is asked for its certificate by :meth:`start`."""
        trusted = tuple(signing.read_certificates(settings.trusted_certs)) if settings.trusted_certs else None
        if settings.signing_ukey_url:
            place = (settings.signing_ukey_url, settings.signing_ukey_password, settings.signing_ukey_method, None)
            return cls.on_ukey(place, settings.signing_agent_code, settings.verify_signatures, trusted)
        pem, cert_file = signing_pem(settings)
        signer = pem_signer(pem)
        _log_expiry(signer, file=str(cert_file))
        return cls(signer, settings.signing_agent_code, settings.verify_signatures, trusted, pem)

    @classmethod
    def from_pem(cls, pem: SigningPem, agent_code: str | None, verify: bool,
                 trusted: tuple[bytes, ...] | None) -> Signatures:  # fmt: skip
        return cls(pem_signer(pem), agent_code, verify, trusted, pem)

    @classmethod
    def on_ukey(cls, place: UKeyPlace, agent_code: str | None, verify: bool, trusted: tuple[bytes, ...] | None,
                configuration: str | None = None) -> Signatures:  # fmt: skip
        """``configuration``: the first process's, handed to another API process (UKeySigner.configuration: the card's
        refusal shared, and a reload of the first process asking the card again for it too); None: this process's."""
        url, password, method, certificate = place
        signer = UKeySigner(url, password, method=method, certificate=certificate, configuration=configuration)
        return cls(signer, agent_code, verify, trusted, None)

    def __reduce__(self) -> tuple[Any, ...]:
        if isinstance(self.signer, UKeySigner):
            known = self.signer.signer.backend.certificate_der if self.signer.signer is not None else None
            place = (self.signer.url, self.signer.bridge.password, self.signer.bridge.method, known)
            return Signatures.on_ukey, (place, self.agent_code, self.verify, self.trusted, self.signer.configuration)
        return Signatures.from_pem, (self.pem, self.agent_code, self.verify, self.trusted)

    def same_as(self, in_force: Signatures) -> bool:
        """These (read anew) the same as those ``in_force``: the same key and certificate (files read anew compare by
        their contents) or the same UKey, PIN and method, agent and trusted list. A UKey in force that refused to sign
        is asked again all the same (:meth:`ask_again`): a reload is how the operators say the card is put right."""
        mine, theirs = self.signer, in_force.signer
        if isinstance(mine, UKeySigner) or isinstance(theirs, UKeySigner):
            same_key = (isinstance(mine, UKeySigner) and isinstance(theirs, UKeySigner)
                        and (mine.url, mine.bridge.password, mine.bridge.method)
                        == (theirs.url, theirs.bridge.password, theirs.bridge.method))  # fmt: skip
        else:
            same_key = type(mine.backend) is type(theirs.backend) and \
                mine.backend.certificate_der == theirs.backend.certificate_der  # fmt: skip
        return same_key and (self.agent_code, self.verify, self.trusted) == \
            (in_force.agent_code, in_force.verify, in_force.trusted)  # fmt: skip

    def ask_again(self) -> None:
        """A reload (its settings unchanged, or new ones put in): a UKey that refused is asked again by this process
        and the API processes it handed its configuration to (gateway.ukey.CardRefusal)."""
        if isinstance(self.signer, UKeySigner):
            self.signer.ask_again()

    async def start(self) -> None:
        """A key on a UKey: where this process stands with the card's refusal written (once :meth:`put_in` gave the
        database), and its certificate read from the card (its end logged as a key file's), unless known. A card out
        of reach is logged and the start goes on: XML is taken as before, and JSON declarations the gateway signs are
        answered 503 until the card answers (asked again at each)."""
        ukey = self.signer
        if not isinstance(ukey, UKeySigner):
            return
        await ukey.settle()
        if ukey.signer is not None:
            return
        try:
            signer = await asyncio.wait_for(ukey.read_certificate(), UKEY_START_TIMEOUT_S)
        except (SigningUnavailable, TimeoutError) as exc:
            ukey.unreachable = ukey.unreachable or f"no answer within {UKEY_START_TIMEOUT_S:g} s"
            log.error("signing_ukey_unavailable", ukey=ukey.url,
                      reason=exc.message if isinstance(exc, SigningUnavailable) else ukey.unreachable,
                      note="JSON declarations the gateway signs are answered 503 until the card answers")  # fmt: skip
            return
        log.info("signing_ukey_ready", ukey=ukey.url, signing_key=signer.backend.key_name,
                 valid_until=signer.valid_until.isoformat())  # fmt: skip
        _log_expiry(signer, ukey=ukey.url)

    async def close(self) -> None:
        """The connection to a UKey's control closed (a reload replaced it, or the process stops)."""
        if isinstance(self.signer, UKeySigner):
            await self.signer.close()

    def put_in(self, app: web.Application) -> None:
        """In force in ``app``'s pipeline: the next message uses them (and /metrics and the console read its signer);
        a UKey's refusal shared through its database."""
        pipeline = app[PIPELINE]
        if isinstance(self.signer, UKeySigner):
            self.signer.share(app[POOL])
        pipeline.signer, pipeline.signing_agent_code = self.signer, self.agent_code
        pipeline.verify_signatures, pipeline.trusted_certs = self.verify, self.trusted


#: How long ``cbec serve`` waits at start for the UKey holding its key to give its certificate (a PC that drops the
#: connection rather than refusing it would otherwise hold the start for the bridge's whole timeout).
UKEY_START_TIMEOUT_S = 10.0


def _changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """The names added, removed and changed between two sets of named settings (the API keys by name, the webhooks by
    seller: their secret, role, codes, URL): what the log says of a reload, never the secrets."""
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(n for n in old.keys() & new.keys() if old[n] != new[n]),
    }


@contextlib.contextmanager
def on_hangup(callback: Callable[[], None]) -> Iterator[None]:
    """While the block runs, SIGHUP calls ``callback`` (by default it would end the process). Removed with the block,
    as stopped_by_signals' handlers are."""
    with on_signal(signal.SIGHUP, callback):
        yield


@contextlib.contextmanager
def on_signal(sig: signal.Signals, callback: Callable[[], None]) -> Iterator[None]:
    """While the block runs, ``sig`` calls ``callback``; the handler removed with the block."""
    loop = asyncio.get_running_loop()
    installed = False
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform, or not the main thread
        loop.add_signal_handler(sig, callback)
        installed = True
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(sig)


#: What the first process of ``cbec serve`` sends an API process it starts again with new keys (a reload): stop as
#: SIGTERM would, without draining — the gateway is not stopping, the other processes answer on the port meanwhile.
REPLACED = signal.SIGUSR1


def renew_webhooks(
    forwarding: Forwarding | None, in_force: tuple[WebhookSettings, ...], webhooks: tuple[WebhookSettings, ...]
) -> bool:
    """The sellers' webhooks read again (a reload) put in force in ``forwarding`` — its router and its worker,
    :meth:`Forwarding.renew_webhooks` — when they differ from those ``in_force``; whether they were. The log names the
    sellers added, removed and changed, never their secrets."""
    if webhooks == in_force or forwarding is None or not forwarding.renew_webhooks(webhooks):
        return False
    log.info("webhooks_reloaded", sellers=len(webhooks),
             **_changes({w.seller: w for w in in_force}, {w.seller: w for w in webhooks}))  # fmt: skip
    return True


PlatformKeys = dict[str, PlatformKey]


def _key_identity(key: PlatformKey) -> bytes | str:
    """What tells a platform's key from another: a key file's certificate; a UKey's client control (the card it
    holds answers for itself at each signature)."""
    return key.url if isinstance(key, UKeyBridge) else key.certificate_der


@dataclass
class RealtimeReload:
    """The 179 platforms in force in a process (their settings and signing keys) and ``put``, which puts platforms
    read again in force there (the door customs' questions come in by, the worker's keys, the sandbox's customs
    side)."""

    settings: RealtimeSettings
    keys: PlatformKeys
    put: Callable[[RealtimeSettings, PlatformKeys], None]

    def again(self, fresh: RealtimeSettings) -> bool | None:
        """The platforms read again, their key files too (replaced in place: read anew), put in force when they
        differ: True. False when they do not, or cannot be used (logged: the platforms stay as they were). None when
        the change needs a restart: 179 turned on (no platform before) or its endpoint moved — the forwarding's
        routes are made at start."""
        if fresh.endpoint != self.settings.endpoint or (fresh.platforms and not self.settings.platforms):
            return None
        try:
            keys = platform_keys(fresh)
        except (OSError, ValueError) as exc:  # a key file missing or unreadable, a key not its certificate's
            log.error("realtime_platforms_not_reloaded", error=str(exc),
                      note="customs' questions are taken and answered as before")  # fmt: skip
            return False
        identities = {ebp: _key_identity(k) for ebp, k in keys.items()}
        if fresh == self.settings and identities == {ebp: _key_identity(k) for ebp, k in self.keys.items()}:
            for key in self.keys.values():  # a card that refused is asked again (put back, its PIN reset on it)
                if isinstance(key, UKeyBridge):
                    key.ask_again()
            return False
        for key in keys.values():  # read by a reload: a card that refused is asked again by this process
            if isinstance(key, UKeyBridge):
                key.ask_again()
        self.put(fresh, keys)
        before = {p.ebp_code: (p, _key_identity(self.keys[p.ebp_code])) for p in self.settings.platforms}
        log.info("realtime_platforms_reloaded", platforms=len(fresh.platforms), signing_variant=fresh.signing_variant,
                 **_changes(before, {p.ebp_code: (p, identities[p.ebp_code]) for p in fresh.platforms}))  # fmt: skip
        for key in self.keys.values():  # the UKeys' connections in force until now (their next use opens anew)
            if isinstance(key, UKeyBridge):
                _closing(key)
        self.settings, self.keys = fresh, keys
        return True


_CLOSING: set[asyncio.Task[None]] = set()


def _closing(bridge: UKeyBridge) -> None:
    """Close a UKey's connection no longer used (a reload replaced it), in the background."""
    task = asyncio.get_running_loop().create_task(bridge.close())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


@dataclass
class WorkerReload:
    """SIGHUP in ``cbec worker``: the configuration read again and the sellers' webhooks in it in force in the worker
    (whom the receipts it applies tell, the URLs and secrets it delivers with), as ``cbec serve``'s reload does in its
    processes. The rest of the forwarding waits for the next start, and the log says so."""

    reload: Reload
    running: Settings
    forwarding: Forwarding
    realtime: RealtimeReload | None = None  # the 179 platforms whose uploads this worker signs
    webhooks: tuple[WebhookSettings, ...] = field(init=False)  # in force now

    def __post_init__(self) -> None:
        self.webhooks = self.running.forwarding.webhooks

    def __call__(self) -> None:
        try:
            fresh = self.reload()
        except (OSError, ValueError, TypeError, ArithmeticError) as exc:  # as at cbec worker's start
            log.error("configuration_not_reloaded", error=str(exc), note="the webhooks stay as they were")
            return
        if renew_webhooks(self.forwarding, self.webhooks, fresh.forwarding.webhooks):
            self.webhooks = fresh.forwarding.webhooks
        # of those, a worker uses these (needing_restart names a table's setting: forwarding.endpoints)
        stale = [name for name in needing_restart(self.running, fresh)
                 if name.partition(".")[0] in ("database_url", "data_dir", "forwarding")]  # fmt: skip
        if fresh.forwarding.webhooks != self.webhooks:
            stale.append("forwarding.webhooks")
        if self.realtime is not None and self.realtime.again(fresh.realtime) is None:
            stale.append("realtime")
        if stale:
            log.warning("settings_need_restart", settings=stale,
                        note="only the sellers' webhooks and the 179 platforms take effect in a worker without a "
                             "restart")  # fmt: skip


@dataclass
class KeyReload:
    """SIGHUP in ``cbec serve``'s first process: the configuration read again, and the keys in it in force — the API
    keys (``ring``), the gateway's signing key and the trusted certificates (``signatures``, put in ``app``), the
    sellers' webhooks (their codes, URLs and secrets: ``forwarding``'s router and worker) — at once in this process
    and, started again one after the other, in the other API processes (``others``). The keys of the gateway's own
    making (``own_keys``: the sandbox's) stay; the other settings wait for the next start, and the log names those that
    changed (webhooks among them when forwarding is off: nothing delivers them). A
    configuration that cannot be used changes nothing; a signing key or certificate that cannot be read leaves the
    signatures as they were (the API keys still change); both are logged."""

    reload: Reload
    running: Settings  # as read at start: what the configuration read again is compared with
    ring: KeyRing
    keys: tuple[ApiKey, ...]  # in force now
    own_keys: tuple[ApiKey, ...]
    others: ApiProcesses | None = None
    app: web.Application | None = None  # this process's, whose pipeline the signatures are put in
    signatures: Signatures | None = None  # in force now
    forwarding: Forwarding | None = None  # this process's, whose router and worker the webhooks are put in
    realtime: RealtimeReload | None = None  # the 179 platforms in force in this process
    renewals: set[asyncio.Task[None]] = field(default_factory=set)
    webhooks: tuple[WebhookSettings, ...] = field(init=False)  # in force now
    # what the other API processes were last started with (a renewal started before this one may not have run yet)
    others_settings: Settings | None = field(init=False)

    def __post_init__(self) -> None:
        self.webhooks = self.running.forwarding.webhooks
        self.others_settings = self.others.settings if self.others is not None else None

    def __call__(self) -> None:
        try:
            fresh = self.reload()
        except (OSError, ValueError, TypeError, ArithmeticError) as exc:  # as at cbec serve's start
            log.error("configuration_not_reloaded", error=str(exc), note="the API keys stay as they were")
            return
        keys = (*dev_keys(fresh).api_keys, *self.own_keys)
        unchanged = keys == self.keys
        # the keys' rates shared with the other processes, made anew for the new keys
        key_rates = SharedRates(keys) if self.others is not None and not unchanged else None
        if not unchanged:  # a ring made anew starts the keys' rates afresh: not for nothing
            self.ring.replace(keys, key_rates)
        log.info("api_keys_reloaded", keys=len(keys), **_changes({k.name: k for k in self.keys},
                                                                 {k.name: k for k in keys}))
        self.keys = keys
        signed_anew = self._signatures_again(fresh)
        webhooks_anew = self._webhooks_again(fresh.forwarding.webhooks)
        realtime_anew = self.realtime.again(fresh.realtime) if self.realtime is not None else False
        stale = needing_restart(self.running, fresh)
        if fresh.forwarding.webhooks != self.webhooks:  # not put in force: forwarding off, no webhook endpoint
            stale.append("forwarding.webhooks")
        if realtime_anew is None:
            stale.append("realtime")
        if stale:
            log.warning("settings_need_restart", settings=stale,
                        note="only the API keys, the signing key, the trusted certificates, the sellers' webhooks and "
                             "the 179 platforms take effect without a restart")  # fmt: skip
        if self.others is not None and self.others_settings is not None and (
                not unchanged or signed_anew or webhooks_anew or realtime_anew):
            overrides: dict[str, Any] = {"api_keys": keys}
            if signed_anew:
                overrides.update({name: getattr(fresh, name) for name in SIGNATURE_SETTINGS})
            if webhooks_anew:
                overrides["forwarding"] = dataclasses.replace(self.others_settings.forwarding, webhooks=self.webhooks)
            if realtime_anew:  # their doors: the tokens customs' questions come in by (they sign nothing)
                overrides["realtime"] = fresh.realtime
            # replace, not with_overrides: a setting removed (None: no trusted certificates) is renewed as well
            settings = self.others_settings = dataclasses.replace(self.others_settings, **overrides)
            rates = key_rates if key_rates is not None else self.others.key_rates  # the keys unchanged: theirs stay
            # the signatures in force here, read anew or not: never the files as they are now (half renewed?)
            signatures = self.signatures if self.signatures is not None else self.others.signatures
            renewal = asyncio.create_task(self._renew(self.others, settings, rates, signatures))
            self.renewals.add(renewal)
            renewal.add_done_callback(self.renewals.discard)

    def _signatures_again(self, fresh: Settings) -> bool:
        """The signing key and trusted certificates read again (files replaced in place read anew) and, when they
        differ from those in force, put in force here; whether they did."""
        if self.app is None or self.signatures is None:
            return False
        try:
            signatures = Signatures.from_settings(fresh)
        except (OSError, ValueError, TypeError) as exc:  # a file missing or unreadable, a key not its certificate's
            log.error("signatures_not_reloaded", error=str(exc),
                      note="JSON declarations are signed, and signatures verified, as before")  # fmt: skip
            return False
        if signatures.same_as(self.signatures):
            self.signatures.ask_again()  # a card that refused, put right: asked again here and in the API processes
            return False
        signatures.ask_again()
        signatures.put_in(self.app)
        replaced, self.signatures = self.signatures, signatures
        signer = signatures.signer
        where = {"ukey": signer.url} if isinstance(signer, UKeySigner) else {
            "signing_key": signer.backend.key_name, "valid_until": signer.valid_until.isoformat()}  # fmt: skip
        log.info("signatures_reloaded", **where, agent_code=signatures.agent_code, verify_signatures=signatures.verify,
                 trusted_certificates=None if signatures.trusted is None else len(signatures.trusted))  # fmt: skip
        # in the background: a UKey put in asked for its certificate, the one replaced disconnected
        task = asyncio.create_task(self._signatures_changed(signatures, replaced))
        self.renewals.add(task)
        task.add_done_callback(self.renewals.discard)
        return True

    @staticmethod
    async def _signatures_changed(put_in: Signatures, replaced: Signatures) -> None:
        await put_in.start()
        await replaced.close()

    def _webhooks_again(self, webhooks: tuple[WebhookSettings, ...]) -> bool:
        """The sellers' webhooks read again put in force here when they changed; whether they were."""
        if not renew_webhooks(self.forwarding, self.webhooks, webhooks):
            return False
        self.webhooks = webhooks
        return True

    @staticmethod
    async def _renew(others: ApiProcesses, settings: Settings, key_rates: SharedRates | None,
                     signatures: Signatures | None) -> None:  # fmt: skip
        try:
            await others.renew(settings, key_rates, signatures)
        except Exception:  # the processes go on with the keys they had; the supervisor still restarts a dead one
            log.exception("api_processes_not_renewed")

    async def aclose(self) -> None:
        """Stop a renewal in progress (cbec serve is stopping: its processes are stopped next)."""
        for renewal in list(self.renewals):
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal


async def sandbox_realtime(url: str, realtime: RealtimeSettings,
                           keys: PlatformKeys) -> tuple[dict[str, str], list[bytes]]:  # fmt: skip
    """Customs' 179 side as the built-in sandbox plays it: where it asks about each configured platform's orders (the
    gateway at ``url``) and the certificates it verifies their uploads with — a UKey's read from its card through its
    control; a card that does not give it leaves the sandbox taking any certificate (logged, docs/sandbox.md)."""
    asks = {p.ebp_code: f"{url}/ceb/platDataOpen/{p.token}" for p in realtime.platforms}
    certificates = []
    for ebp, key in keys.items():
        if not isinstance(key, UKeyBridge):
            certificates.append(key.certificate_der)
            continue
        try:
            certificates.append(await asyncio.wait_for(key.certificate(), UKEY_START_TIMEOUT_S))
        except (UKeyUnreachable, UKeyRefused, TimeoutError) as exc:
            log.warning("sandbox_takes_any_179_certificate", ebp_code=ebp, reason=str(exc) or type(exc).__name__,
                        note="the UKey did not give its certificate: the sandbox verifies no upload's signature")
            return asks, []
    return asks, certificates


def _platform_keys(settings: Settings) -> PlatformKeys:
    """workers.platform_keys, a key file that cannot be read or used a usage error (no traceback)."""
    try:
        return platform_keys(settings.realtime)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cbec: a 179 platform's signing key cannot be used: {exc}") from None


async def serve(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    info: dict[str, Any] | None = None,
    api_only: bool = False,
    ingest_path: Path | None = None,
    reload: Reload | None = None,
    key_rates: SharedRates | None = None,
    signatures: Signatures | None = None,
) -> None:
    """Run until ``stop`` (or SIGINT/SIGTERM). ``info`` (if given) receives ``url`` and ``sandbox_url`` once
    listening, before ``ready`` is set.

    With ``settings.processes`` > 1 this process also starts that many minus one API processes on the same port
    (SO_REUSEPORT: the kernel spreads the connections) and restarts any that dies; they share the database and
    the console's sessions, and ``api_only`` runs them without the sandbox, the queue worker and the watchdog,
    which stay in this first process. They store what they accept through this process's store, over the ingest
    link at ``ingest_path`` (gateway.ingestlink): one batcher for all; and they count the keys' rates together
    (``key_rates``, made by the first process: gateway.auth.SharedRates), and sign and verify with its ``signatures``
    (read from their files by the first process alone).

    ``reload``: on SIGHUP the configuration is read again and its API keys take effect at once, here and, started
    again one after the other, in the other API processes; the other settings wait for the next start (logged)."""
    if settings.processes < 1:
        raise SystemExit(f"processes must be at least 1, got {settings.processes}")
    logs.configure(settings.log_format, settings.log_level)
    running = settings  # what a reload compares the configuration read again with
    settings = dev_keys(settings)
    fwd = settings.forwarding
    sandboxed = fwd.enabled and uses_sandbox(fwd)
    # API processes get their settings from the first one, the sandbox's keys included
    customs_key = secrets.token_urlsafe(32) if sandboxed and not api_only else None
    warehouse_key = secrets.token_urlsafe(32) if sandboxed and not api_only else None
    # keys of the gateway's own making, kept through a reload: the sandbox's, to post its receipts and its warehouse's
    # callbacks back
    own_keys: tuple[ApiKey, ...] = ()
    if customs_key is not None and warehouse_key is not None:
        own_keys = (ApiKey("customs-sandbox", customs_key, Role.CUSTOMS),
                    ApiKey("warehouse-sandbox", warehouse_key, Role.WAREHOUSE))  # fmt: skip
    settings = settings.with_overrides(api_keys=(*settings.api_keys, *own_keys))
    # the platforms' 179 signing keys, read before anything listens: a key that cannot sign stops the start
    platform_keys = _platform_keys(settings) if not api_only else {}
    stop = stop or asyncio.Event()
    async with stopped_by_signals(stop), database(settings, stop=stop) as dsn, contextlib.AsyncExitStack() as stack:
        pool = await db.create_pool(dsn, max_size=settings.pool_max_size)
        sandbox: Any = None
        forwarding: Forwarding | None = None
        schema_watch: asyncio.Task[list[str]] | None = None  # the first process's (the others stop with it)
        try:
            applied = await db.migrate(pool)
            if applied:
                log.info("migrations_applied", names=applied)
            if not api_only:
                await db.fold_kept_counts(pool)
                schema_watch = asyncio.create_task(watch_migrations(pool, stop))
            link = IngestClient(ingest_path) if ingest_path is not None else None
            if settings.processes > 1 and not api_only:
                key_rates = SharedRates(settings.api_keys)
            # read here once (the first process), or handed over by it; put in the pipeline below, so create_app
            # does not read the trusted certificates' files
            signatures = signatures or Signatures.from_settings(settings)
            app = create_app(dataclasses.replace(settings, trusted_certs=None), pool, signer=signatures.signer,
                             router=routing_router(fwd, settings.realtime),
                             ingest=link.ingest if link is not None else None, key_rates=key_rates)  # fmt: skip
            signatures.put_in(app)
            await signatures.start()
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            shared = settings.processes > 1 or api_only
            if not api_only and settings.port != 0:
                _ensure_port_free(settings.host, settings.port)
            site = web.TCPSite(runner, settings.host, settings.port, reuse_port=shared or None)
            try:
                await site.start()
            except OSError as exc:
                where = netloc(settings.host, settings.port)
                raise SystemExit(f"cbec: cannot listen on {where}: {exc.strerror or exc}") from None
            port = runner.addresses[0][1] if settings.port == 0 else settings.port
            url = f"http://{netloc(_local(settings.host), port)}"
            others: ApiProcesses | None = None
            link_server: IngestServer | None = None
            reloader: KeyReload | None = None
            sandbox_renewals: set[asyncio.Task[None]] = set()  # a reload's 179 platforms put in the sandbox
            retention: asyncio.Task[None] | None = None  # what is kept a while only (run_retention): first process
            try:
                if api_only:
                    if link is not None:
                        try:
                            await link.connect()  # the first process listens before it starts this one
                        except IngestUnavailable as exc:  # it is gone: exit, and its supervisor (if any) decides
                            reason = f"cbec: this API process cannot reach the first one's store: {exc}"
                            raise SystemExit(reason) from None
                    # the first process starts this one again with new keys (reload): a hangup sent to the whole
                    # group must not end it meanwhile; and it is replaced without a drain
                    stack.enter_context(on_hangup(lambda: None))
                    replaced = asyncio.Event()

                    def replace_me() -> None:
                        replaced.set()
                        stop.set()

                    stack.enter_context(on_signal(REPLACED, replace_me))
                    log.info("api_process_listening", url=f"http://{netloc(settings.host, port)}", pid=os.getpid())
                    orphan_watch = asyncio.create_task(stop_when_orphaned(stop))
                    with settled_heap():
                        if ready is not None:
                            ready.set()
                        await drained(app, stop, settings.shutdown_drain_s, replaced=replaced)
                        await orphan_watch
                    return  # the link closes below, once runner.cleanup has answered the requests in flight
                if settings.processes > 1:
                    if not shared_across_processes():  # serve() called without cbec serve's set-up
                        log.warning(
                            "metrics_per_process",
                            note="each API process answers /metrics with its own request counters; set "
                            f"{METRICS_SHARED_DIR_ENV} to a fresh folder to share them",
                        )
                    link_server = IngestServer(app[STORE], stack.enter_context(link_folder()))
                    await link_server.start()
                    log.info("ingest_link_listening", path=str(link_server.path))
                    # the settings (keys included) reach them through the spawn pipe, never argv or environment
                    others = ApiProcesses(settings.with_overrides(port=port, database_url=dsn), key_rates=key_rates,
                                          signatures=signatures,
                                          target=functools.partial(_api_process, ingest_path=link_server.path))
                    others.start(settings.processes - 1)
                if sandboxed:
                    from gateway.sandbox import start_sandbox
                    from gateway.sandbox.app import sandbox_state_dir

                    ask_urls, certs = await sandbox_realtime(url, settings.realtime, platform_keys)
                    sandbox = await start_sandbox(
                        "127.0.0.1",
                        fwd.sandbox_port,
                        receipt_url=f"{url}/v1/receipts",
                        receipt_headers={"X-API-Key": customs_key},
                        receipt_delay=fwd.sandbox_receipt_delay_s,
                        warehouse_callback_url=f"{url}{WAREHOUSE_CALLBACKS}",
                        warehouse_callback_headers={"X-API-Key": warehouse_key},
                        schemas=app[PIPELINE].schemas,  # the XSDs compiled once per process
                        # customs' 179 side: it asks about the configured platforms' orders at their URLs, and
                        # verifies their uploads with their certificates
                        realtime_ask_urls=ask_urls,
                        realtime_certs=certs,
                        # customs remembers what it released: a restart on the same data goes on from its ledgers
                        state_dir=sandbox_state_dir(settings.data_dir),
                    )
                    log.info("customs_sandbox", url=sandbox.url, note="no customs endpoint configured")
                if fwd.enabled:
                    endpoints = effective_endpoints(fwd, sandbox_url=sandbox.url if sandbox else None,
                                                    realtime=settings.realtime)  # fmt: skip
                    forwarding = Forwarding(pool, app[OUTBOX], fwd, endpoints, schemas=app[PIPELINE].schemas,
                                            worker=fwd.worker, realtime=settings.realtime,
                                            platform_keys=platform_keys)  # fmt: skip
                    await forwarding.start()
                retention = asyncio.create_task(run_retention(pool, settings, stop))
                if reload is not None:

                    def put_realtime(realtime: RealtimeSettings, keys: PlatformKeys) -> None:
                        app[REALTIME].renew(realtime)
                        if forwarding is not None:
                            forwarding.renew_realtime(realtime, keys)
                        if sandbox is not None:  # the cards asked for their certificates in the background
                            task = asyncio.create_task(renew_sandbox(realtime, keys))
                            sandbox_renewals.add(task)
                            task.add_done_callback(sandbox_renewals.discard)

                    async def renew_sandbox(realtime: RealtimeSettings, keys: PlatformKeys) -> None:
                        assert sandbox is not None
                        asks, certificates = await sandbox_realtime(url, realtime, keys)
                        sandbox.config.realtime_ask_urls, sandbox.config.realtime_certs = asks, certificates

                    reloader = KeyReload(reload, running, app[KEYS], settings.api_keys, own_keys, others, app,
                                         signatures, forwarding,
                                         RealtimeReload(settings.realtime, platform_keys, put_realtime))  # fmt: skip
                    stack.enter_context(on_hangup(reloader))
                log.info("listening", url=f"http://{netloc(settings.host, port)}", openapi="/openapi.json",
                         **({"public_url": settings.public_url} if settings.public_url else {}))
                if info is not None:
                    info.update(url=url, sandbox_url=sandbox.url if sandbox else None)
                with settled_heap():
                    if ready is not None:
                        ready.set()
                    await drained(app, stop, settings.shutdown_drain_s, others, schema_watch=schema_watch)
            finally:
                # which process: an API process stopping (a reload starts them again one by one) is not the gateway
                log.info("stopping", process=os.getpid(), api_only=api_only)
                if retention is not None:
                    retention.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await retention
                if reloader is not None:
                    await reloader.aclose()
                for task in list(sandbox_renewals):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                if others is not None:
                    await others.stop()
                if link_server is not None:
                    await link_server.stop()
                if forwarding is not None:
                    await forwarding.stop()
                await runner.cleanup()  # stops taking requests, and waits for those in flight to be answered
                if link is not None:  # an API process's: what it handed the first one has been answered
                    await link.aclose()
                # the key in force at the end (a reload may have put another in): a UKey's connection closed
                await (reloader.signatures if reloader is not None and reloader.signatures else signatures).close()
                if sandbox is not None:
                    await sandbox.stop()
        finally:
            newer = await _watch_ended(schema_watch)
            await pool.close()
        if newer:
            raise db.NewerDatabase.of(newer)


async def drained(app: web.Application, stop: asyncio.Event, drain_s: float, others: ApiProcesses | None = None, *,
                  replaced: asyncio.Event | None = None,
                  schema_watch: asyncio.Task[list[str]] | None = None) -> None:  # fmt: skip
    """Until ``stop``; then /healthz answers 503 "stopping" (api.STOPPING) and the process goes on answering for
    ``drain_s`` (shutdown_drain_s) before its caller closes the port and winds down: a load balancer's health checks
    take the host out meanwhile, instead of finding its port closed under the requests they send. The other API
    processes (``others``) are told to stop at once, to drain alongside, and are restarted no more. An API process
    ``replaced`` by a reload stops at once, healthy: the gateway is not stopping. One stopping because a newer build
    migrated its database (``schema_watch`` found it) does not drain either: it would go on writing meanwhile."""
    await stop.wait()
    if replaced is not None and replaced.is_set():
        return
    app[STOPPING].set()
    if others is not None:
        others.stopping()
    newer = schema_watch is not None and schema_watch.done() and not schema_watch.cancelled() and schema_watch.result()
    if drain_s > 0 and not newer:
        log.info("draining", seconds=drain_s, process=os.getpid(),
                 note="/healthz answers 503 stopping; requests are still answered meanwhile")  # fmt: skip
        await asyncio.sleep(drain_s)


@contextlib.asynccontextmanager
async def stopped_by_signals(stop: asyncio.Event) -> AsyncIterator[None]:
    """While the block runs, SIGINT and SIGTERM set ``stop``: a normal return lets the embedded server shut down
    cleanly. The handlers go with the block, since serve() may run inside a longer process (tests): Ctrl-C
    there must interrupt again."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform, or not the main thread
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


#: The collector's first-generation threshold while serving (CPython's default is 700). A request allocates and
#: frees far more than 700 containers, almost all freed by reference counting, yet each time the net count passes
#: the threshold a young collection runs: ~500 of them, ~0.3 ms each, in 8,000 ingested messages (~3 % of the
#: gateway's CPU). At 20,000 none ran in that run; garbage in cycles still gets collected, 20,000 objects apart.
SERVING_GC_THRESHOLD = 20_000


@contextlib.contextmanager
def settled_heap() -> Iterator[None]:
    """While the block runs, what start-up built (modules, compiled schemas, the app) is out of the garbage
    collector's view, and young collections run only every :data:`SERVING_GC_THRESHOLD` net allocations.

    What start-up built lives as long as the process, yet every full collection would walk it again; frozen,
    collections walk only what requests create (measured under ingest: the collector's share of the gateway's CPU
    2.3-2.8 % -> 1.5 %). Both undone afterwards: serve() may run inside a longer process (tests)."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(SERVING_GC_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def stop_when_orphaned(stop: asyncio.Event, poll_s: float = 0.5) -> None:
    """Set ``stop`` once the process that started this one is gone (until ``stop`` is set otherwise).

    The first process of ``cbec serve --processes N`` supervises the others; killed without the chance to stop
    them (SIGKILL, the OOM killer), it would leave them answering on the shared port with nobody to supervise
    them, and alongside a ``cbec serve`` started again. A process whose parent died is adopted by another, so a
    changed parent pid says so (portable, unlike Linux's parent-death signal)."""
    parent = os.getppid()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)
        if not stop.is_set() and os.getppid() != parent:
            log.error("api_process_orphaned", parent_pid=parent, pid=os.getpid())
            stop.set()


def _api_process(settings: Settings, key_rates: SharedRates | None, signatures: Signatures | None,
                 ingest_path: Path | None = None) -> None:  # fmt: skip
    """The entry point of the other API processes (multiprocessing, spawn)."""
    asyncio.run(serve(settings, api_only=True, ingest_path=ingest_path, key_rates=key_rates, signatures=signatures))


@dataclass
class RestartBackoff:
    """When to start an API process again after it died. Pure: the caller passes the clock's readings.

    A process that lived at least ``stable_s`` died of something passing: it is started again after the
    policy's first delay. One that died sooner most likely fails at start-up (a bad setting, a port or a
    database it cannot reach): each such death in a row doubles the wait, up to the policy's cap, so that it
    is not restarted, and logged, every second forever.
    """

    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy(base_s=1.0, factor=2.0, cap_s=60.0, jitter="none"))
    stable_s: float = 30.0
    quick_deaths: int = 0  # deaths in a row, each sooner than stable_s after its start

    def delay_after_death(self, lived_s: float) -> float:
        self.quick_deaths = self.quick_deaths + 1 if lived_s < self.stable_s else 1
        return self.policy.upper_bound(self.quick_deaths)


@dataclass
class _Slot:
    proc: multiprocessing.process.BaseProcess
    started: float  # time.monotonic() at its start
    backoff: RestartBackoff
    restart_at: float | None = None  # set once its death was seen
    renewing: bool = False  # stopped on purpose and started again by renew(): no death to supervise


class ApiProcesses:
    """The API processes besides the first one: started fresh (spawn), restarted when one dies (with a
    growing wait when it keeps dying at start-up, see :class:`RestartBackoff`), stopped with it."""

    POLL_S = 0.5

    def __init__(
        self,
        settings: Settings,
        *,
        key_rates: SharedRates | None = None,
        signatures: Signatures | None = None,
        target: Callable[..., None] = _api_process,
        backoff: Callable[[], RestartBackoff] = RestartBackoff,
    ) -> None:
        self.settings = settings  # with the port and the DSN the first process resolved
        self.key_rates = key_rates  # the keys' rates, counted with the first process (target's second argument)
        self.signatures = signatures  # those in force in the first process (target's third argument)
        self._context = multiprocessing.get_context("spawn")  # no forked event loop, pool or embedded server
        self._target = target
        self._backoff = backoff
        self._slots: list[_Slot] = []
        self._watch: asyncio.Task[None] | None = None
        self._renewal = asyncio.Lock()  # one renewal at a time: a second reload waits for the first

    def _spawn(self) -> multiprocessing.process.BaseProcess:
        proc = self._context.Process(target=self._target, args=(self.settings, self.key_rates, self.signatures),
                                     name="cbec-api", daemon=True)  # fmt: skip
        proc.start()
        log.info("api_process_started", pid=proc.pid)
        return proc

    def start(self, count: int) -> None:
        self._slots = [_Slot(self._spawn(), time.monotonic(), self._backoff()) for _ in range(count)]
        self._watch = asyncio.create_task(self._supervise())

    @property
    def pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots if s.proc.pid is not None]

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_S)
            now = time.monotonic()
            for slot in self._slots:
                if slot.renewing:
                    continue
                if slot.restart_at is None and not slot.proc.is_alive():
                    delay = slot.backoff.delay_after_death(now - slot.started)
                    slot.restart_at = now + delay
                    log.error(
                        "api_process_exited", pid=slot.proc.pid, exit_code=slot.proc.exitcode,
                        lived_s=round(now - slot.started, 1), restart_in_s=delay,
                    )  # fmt: skip
                if slot.restart_at is not None and now >= slot.restart_at:
                    slot.proc, slot.started, slot.restart_at = self._spawn(), now, None

    async def renew(self, settings: Settings, key_rates: SharedRates | None, signatures: Signatures | None,
                    timeout: float = 15.0) -> None:  # fmt: skip
        """Start each process again with ``settings`` (the API keys read again, their ``key_rates``) and the first
        process's ``signatures``, one after the other: each stops as at a normal stop (its requests in flight
        answered), then its successor starts; the first process and the others answer meanwhile, so no connection
        finds the port closed."""
        async with self._renewal:
            self.settings, self.key_rates, self.signatures = settings, key_rates, signatures
            for slot in self._slots:
                slot.renewing = True
                try:
                    await self._end([slot.proc], timeout, REPLACED)
                    slot.proc, slot.started, slot.restart_at = self._spawn(), time.monotonic(), None
                finally:
                    slot.renewing = False
            log.info("api_processes_renewed", pids=self.pids)

    def stopping(self) -> None:
        """The gateway stops: none of them is restarted any more, and each is told to stop (SIGTERM: it drains, as the
        first process does, while the first one does)."""
        if self._watch is not None:
            self._watch.cancel()
        for slot in self._slots:
            if slot.proc.is_alive() and slot.proc.pid is not None:
                os.kill(slot.proc.pid, signal.SIGTERM)

    async def stop(self, timeout: float = 15.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._end([s.proc for s in self._slots], timeout)

    @staticmethod
    async def _end(procs: list[multiprocessing.process.BaseProcess], timeout: float,
                   sig: signal.Signals = signal.SIGTERM) -> None:  # fmt: skip
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, sig)  # a normal stop: in-flight requests and batches finish
        for proc in procs:
            await asyncio.to_thread(proc.join, timeout)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 5)


def _ensure_port_free(host: str, port: int) -> None:
    """Refuse a port another program listens on. The API processes share theirs with SO_REUSEPORT, which would also
    let a second gateway (another database) bind it and take turns answering: one shipment split between two
    databases. The first process binds once without it, to see."""
    import socket

    for family, kind, proto, _, addr in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE):  # fmt: skip
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a connection in TIME_WAIT is no owner
            try:
                probe.bind(addr)
            except OSError as exc:
                raise SystemExit(f"cbec: cannot listen on {netloc(host, port)}: {exc.strerror or exc} (another "
                                 "program, another gateway perhaps, holds it)") from None  # fmt: skip


async def run_worker(
    settings: Settings,
    *,
    sandbox_url: str | None = None,
    worker_id: str | None = None,
    watchdog: bool = True,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    reload: Reload | None = None,
) -> None:
    """``cbec worker``: delivery only (no API). Several may run against one database. ``reload``: on SIGHUP the
    configuration is read again and its sellers' webhooks take effect (WorkerReload)."""
    logs.configure(settings.log_format, settings.log_level)
    fwd = settings.forwarding
    if not fwd.enabled:  # README: with forwarding off, nothing is enqueued and no worker runs
        raise SystemExit("cbec: forwarding is disabled (forwarding.enabled = false): a worker has nothing to do")
    stop = stop or asyncio.Event()
    url = sandbox_url or default_sandbox_url(fwd)
    if uses_sandbox(fwd) and url is None:
        raise SystemExit("no customs endpoint is configured and the sandbox port is 0: pass --sandbox-url")
    endpoints = effective_endpoints(fwd, sandbox_url=url, dedicated=True, realtime=settings.realtime)
    keys = _platform_keys(settings)
    async with stopped_by_signals(stop), database(settings, stop=stop) as dsn:
        pool = await db.create_pool(dsn, min_size=2, max_size=max(4, settings.pool_max_size // 2))
        schema_watch: asyncio.Task[list[str]] | None = None
        try:
            await db.migrate(pool)
            await db.fold_kept_counts(pool)
            schema_watch = asyncio.create_task(watch_migrations(pool, stop))
            from gateway.outbox import Outbox
            from gateway.schema import SchemaSet
            from gateway.store import quota_reassessor, refusals_restorer
            from gateway.tax import TaxRates

            # the inbox poller applies receipts here: quota they give back reopens blocked shipments as in the API
            rates = TaxRates.from_mapping(settings.tax_rates)
            reassess = quota_reassessor(rates=rates, tolerance=settings.amount_tolerance)
            restore = refusals_restorer(rates=rates, tolerance=settings.amount_tolerance)
            outbox = Outbox(pool, build_router(fwd, endpoints), reassess=reassess, restore=restore)
            options = {"worker_id": worker_id} if worker_id else {}
            forwarding = Forwarding(pool, outbox, fwd, endpoints, schemas=SchemaSet(), watchdog=watchdog,
                                    worker_options=options, realtime=settings.realtime, platform_keys=keys)  # fmt: skip
            await forwarding.start()
            log.info("worker_ready", endpoints={e.name: e.concurrency for e in endpoints})  # name: deliveries in flight
            try:
                uploads = RealtimeReload(settings.realtime, keys, forwarding.renew_realtime)
                with on_hangup(WorkerReload(reload, settings, forwarding, uploads) if reload else lambda: None), \
                        settled_heap():  # fmt: skip
                    if ready is not None:
                        ready.set()
                    await stop.wait()
            finally:
                await forwarding.stop()
        finally:
            newer = await _watch_ended(schema_watch)
            await pool.close()
        if newer:
            raise db.NewerDatabase.of(newer)


async def replay(
    settings: Settings, *, job_ids: list[int] | None, endpoint: str | None, everything: bool
) -> list[int]:
    """``cbec replay``: dead letters back to the queue; returns the ids of those replayed. Their messages wait for them
    again and their shipments' customs status follows (gateway.outbox.Outbox.replay)."""
    from gateway.outbox import Outbox

    logs.configure(settings.log_format, settings.log_level)
    async with database(settings) as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            outbox = Outbox(pool, routing_router(settings.forwarding, settings.realtime))
            async with pool.acquire() as conn:
                return await outbox.replay(conn, job_ids=job_ids, endpoint=endpoint, everything=everything,
                                           note="replayed from the command line")  # fmt: skip
        finally:
            await pool.close()
