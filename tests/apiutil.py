"""The gateway API on a real aiohttp server bound to 127.0.0.1, and a small client for tests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from lxml import etree

from gateway.api import STORE, create_app
from gateway.config import ApiKey, ForwardingSettings, Role, Settings
from gateway.ingestlink import IngestClient, IngestServer
from gateway.signing import RsaSha1Key, generate_test_key, sign
from gateway.store import Store
from gateway.workers import routing_router

ADMIN = "admin-key-000000000000"
OPERATOR = "operator-key-11111111111"
PLATFORM_A = "platform-a-key-2222222222"  # holds the sample platform's and enterprise's codes
STRANGER = "stranger-key-3333333333"  # a submitter for an unrelated enterprise

from gateway.samples import EBC_CODE, EBP_CODE  # noqa: E402  (the sample enterprises)

_BACKEND = RsaSha1Key.from_pem(*generate_test_key("rsa", "cbec-gateway test agent"))


def sign_as_agent(root: etree._Element) -> None:
    sign(root, _BACKEND)


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = ADMIN,
        data: bytes | None = None,
        json_body: Any = None,
        content_type: str | None = None,
    ) -> Reply:
        headers = {}
        if key is not None:
            headers["X-API-Key"] = key
        if json_body is not None:
            data = json.dumps(json_body, ensure_ascii=False).encode()
            content_type = content_type or "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        async with self.session.request(method, self.base + path, data=data, headers=headers) as resp:
            raw = await resp.read()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
            return Reply(resp.status, body, resp.headers)

    async def post_xml(self, xml: bytes, key: str | None = ADMIN) -> Reply:
        return await self.request("POST", "/v1/messages", key=key, data=xml, content_type="application/xml")

    async def get(self, path: str, key: str | None = ADMIN) -> Reply:
        return await self.request("GET", path, key=key)


def test_settings(**overrides: Any) -> Settings:
    keys = (
        ApiKey("admin", ADMIN, Role.ADMIN),
        ApiKey("operator", OPERATOR, Role.OPERATOR),
        ApiKey("platform-a", PLATFORM_A, Role.SUBMITTER, frozenset({EBP_CODE, EBC_CODE})),
        ApiKey("stranger", STRANGER, Role.SUBMITTER, frozenset({"9999999999"})),
    )
    return Settings(api_keys=keys, max_body_bytes=256 * 1024, **overrides)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[Client]:
    """The app on a free port of 127.0.0.1 for the block, and a client of it."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            yield Client(session, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


@pytest.fixture
async def api(db_pool: asyncpg.Pool) -> AsyncIterator[Client]:
    async with serving(create_app(test_settings(), db_pool, signer=sign_as_agent)) as client:
        yield client


@pytest.fixture
async def routed(db_pool: asyncpg.Pool) -> AsyncIterator[Client]:
    """The API with forwarding routed (jobs enqueued, no worker): inventories are held until their shipment may go."""
    fwd = ForwardingSettings()
    app = create_app(test_settings(forwarding=fwd), db_pool, signer=sign_as_agent, router=routing_router(fwd))
    async with serving(app) as client:
        yield client


@dataclass
class Linked:
    first: Store  # the first process's store: every message is stored by it
    other: Store  # the other process's own store: it reads, stores nothing
    server: IngestServer
    link: IngestClient


@contextlib.asynccontextmanager
async def linked_apps(db_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[tuple[Client, Client, Linked]]:
    """Two API apps on one database: the first stores with its own store, the other through the first's, over the
    link (each on a port of its own)."""
    first_app = create_app(test_settings(), db_pool, signer=sign_as_agent)
    server = IngestServer(first_app[STORE], tmp_path / "ingest.sock")
    await server.start()
    link = IngestClient(server.path)
    other_app = create_app(test_settings(), db_pool, signer=sign_as_agent, ingest=link.ingest)
    try:
        async with serving(first_app) as first, serving(other_app) as other:
            yield first, other, Linked(first_app[STORE], other_app[STORE], server, link)
    finally:
        await link.aclose()
        await server.stop()


def openapi_check(body: Any, component: str) -> None:
    """``body`` against the component schema of /openapi.json named ``component`` (its references resolved in the
    document), as a client generated from it would read it."""
    import jsonschema

    from gateway.openapi import OPENAPI

    schema = {"$ref": f"#/components/schemas/{component}", "components": OPENAPI["components"]}
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(body)
