"""Process lifecycle for ``cbec serve``: database (given or embedded), migrations, the API.

With no DSN configured an embedded PostgreSQL is started in ``<data_dir>/pgdata`` so that a new
user needs nothing installed. With no API keys configured a development admin key is generated
once and kept in ``<data_dir>/dev-api-key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog
from aiohttp import web
from lxml import etree

from gateway import db, logs
from gateway.api import create_app
from gateway.config import ApiKey, Role, Settings

log = structlog.get_logger("gateway.server")


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """Yield a DSN: the configured one, or that of an embedded server started for this process."""
    dsn = db.resolve_dsn(settings.database_url)
    if dsn is not None:
        yield dsn
        return
    data_dir = Path(settings.data_dir) / "pgdata"
    log.info("embedded_postgres_starting", data_dir=str(data_dir))
    async with db.EmbeddedPostgres(data_dir) as pg:
        log.info("embedded_postgres_ready", dsn=pg.dsn)
        yield pg.dsn


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


def agent_signer(settings: Settings) -> Callable[[etree._Element], None]:
    """The signer for JSON-submitted CEB621s: the configured key, else a local TEST key."""
    from gateway import signing

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
    backend: signing.SignatureBackend
    if settings.signing_algorithm == "sm2-sm3":
        backend = signing.Sm2Sm3Key.from_files(key_file, cert_file)
    else:
        backend = signing.RsaSha1Key.from_files(key_file, cert_file)

    def sign(root: etree._Element) -> None:
        signing.sign(root, backend)

    return sign


async def migrate_only(settings: Settings) -> list[str]:
    logs.configure(settings.log_format, settings.log_level)
    async with database(settings) as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            return await db.migrate(pool)
        finally:
            await pool.close()


async def serve(settings: Settings, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    logs.configure(settings.log_format, settings.log_level)
    settings = dev_keys(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # A normal return on SIGTERM lets the embedded server shut down cleanly.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with database(settings) as dsn:
        pool = await db.create_pool(dsn, max_size=settings.pool_max_size)
        try:
            applied = await db.migrate(pool)
            if applied:
                log.info("migrations_applied", names=applied)
            app = create_app(settings, pool, signer=agent_signer(settings))
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
            log.info("listening", url=f"http://{settings.host}:{settings.port}", openapi="/openapi.json")
            if ready is not None:
                ready.set()
            try:
                await stop.wait()
            finally:
                log.info("stopping")
                await runner.cleanup()
        finally:
            await pool.close()
