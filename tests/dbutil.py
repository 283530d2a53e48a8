"""PostgreSQL for tests: one server per session, one migrated template, a fresh clone per test.

Load them from conftest.py with ``pytest_plugins = ["tests.dbutil"]`` (or import the fixtures: pg_dsn,
db_dsn, empty_db_dsn, db_pool; each needs only ``pg_dsn`` besides itself).
The server is, in order: ``CBEC_TEST_DATABASE_URL``; the local server at 127.0.0.1:5432 (database
``test``) if it answers; else an embedded PostgreSQL in a temporary directory, deleted afterwards.
Each test gets ``CREATE DATABASE ... TEMPLATE <template>`` (much faster than running the migrations
again) and the database is dropped after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from gateway.db import EmbeddedPostgres, answers, create_pool, migrate, with_database

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def find_server() -> tuple[str, EmbeddedPostgres | None]:
    """The DSN of a server to test against, and the embedded server if one had to be started."""
    explicit = os.environ.get("CBEC_TEST_DATABASE_URL")
    if explicit:
        return explicit, None
    if await answers(LOCAL_DSN):
        return LOCAL_DSN, None
    pg = EmbeddedPostgres(tempfile.mkdtemp(prefix="cbec-pg-"), cleanup_mode="delete")
    return await pg.start(), pg


async def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        await conn.execute(sql)
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        # FORCE (PostgreSQL 13+) ends sessions a failed test may have left behind
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


_templates: dict[str, str] = {}  # server DSN -> name of its migrated template database
_template_lock = asyncio.Lock()


async def template_for(pg_dsn: str) -> str:
    """The session's migrated template database on that server (created on first use)."""
    async with _template_lock:
        name = _templates.get(pg_dsn)
        if name is None:
            name = f"cbec_tpl_{uuid.uuid4().hex[:12]}"
            conn = await asyncpg.connect(await create_database(pg_dsn, name))
            try:
                await migrate(conn)
            finally:
                await conn.close()  # a template must have no sessions when it is copied
            _templates[pg_dsn] = name
        return name


@contextlib.asynccontextmanager
async def fresh_database(pg_dsn: str, *, migrated: bool = True) -> AsyncIterator[str]:
    """A new database (a clone of the migrated template, or empty) for the block; dropped afterwards."""
    name = f"cbec_t_{uuid.uuid4().hex[:12]}"
    template = await template_for(pg_dsn) if migrated else None
    dsn = await create_database(pg_dsn, name, template=template)
    try:
        yield dsn
    finally:
        await drop_database(pg_dsn, name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_dsn() -> AsyncIterator[str]:
    """DSN of the test server's maintenance database (create and drop databases through it)."""
    dsn, embedded = await find_server()
    try:
        yield dsn
    finally:
        name = _templates.pop(dsn, None)
        if name is not None:
            await drop_database(dsn, name)
        if embedded is not None:
            await embedded.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def db_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    async with fresh_database(pg_dsn) as dsn:
        yield dsn


@pytest_asyncio.fixture(loop_scope="session")
async def empty_db_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh database without any migration (for migration tests)."""
    async with fresh_database(pg_dsn, migrated=False) as dsn:
        yield dsn


@pytest_asyncio.fixture(loop_scope="session")
async def db_pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool (gateway.db.create_pool, jsonb codecs) on a fresh, migrated database for one test."""
    async with fresh_database(pg_dsn) as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=8)
        try:
            yield pool
        finally:
            await pool.close()
