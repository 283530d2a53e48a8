"""gateway.db: DSN resolution, the pool's json codecs, and the embedded server's life cycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil
import pytest

from gateway.db import EmbeddedPostgres, create_pool, migration_files, resolve_dsn

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
async def test_pool_round_trips_jsonb_as_python_objects(db_dsn: str) -> None:
    pool = await create_pool(db_dsn, min_size=1, max_size=2)
    try:
        value = {"orderNo": "订单1", "lines": [{"qty": "1"}], "flag": True, "none": None}
        assert await pool.fetchval("SELECT $1::jsonb", value) == value
        assert await pool.fetchval("SELECT $1::jsonb -> 'lines' -> 0 ->> 'qty'", value) == "1"
    finally:
        await pool.close()


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


def test_embedded_rejects_an_unknown_cleanup_mode() -> None:
    with pytest.raises(ValueError):
        EmbeddedPostgres("x", cleanup_mode="later")
