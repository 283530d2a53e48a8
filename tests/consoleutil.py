"""The API with the operators' console and /metrics on 127.0.0.1, a signed-in console client, and data makers.

gateway.api.create_app wires the console and /metrics; tests only shorten the live feed's poll interval.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import cbec_queue
import pytest_asyncio
from aiohttp import web

from gateway import outbox, samples
from gateway.api import create_app
from gateway.console import CONSOLE
from gateway.console.feed import Feed
from gateway.render import render
from tests.apiutil import Client, sign_as_agent, test_settings


def xml_of(payload: dict[str, Any]) -> bytes:
    return render(payload, signer=sign_as_agent if payload["type"] == "CEB621" else None)


def new_shipment(seed: int, mode: str = "9610", **kw: Any) -> samples.ShipmentSample:
    return samples.shipment(random.Random(seed), mode=mode, **kw)


def legs(s: samples.ShipmentSample) -> dict[str, bytes]:
    return {p["type"]: xml_of(p) for p in (s.order, s.payment, s.waybill, s.inventory)}


async def submit(api: Client, s: samples.ShipmentSample, *codes: str) -> None:
    """Send the shipment's legs (all four, or the named ones) through the API; each must be accepted."""
    for code, xml in legs(s).items():
        if codes and code not in codes:
            continue
        reply = await api.post_xml(xml)
        assert reply.status == 202, (code, reply.body)


def key_of(s: samples.ShipmentSample) -> dict[str, str]:
    return {"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"]}


async def make_dead_letter(
    pool: asyncpg.Pool,
    *,
    endpoint: str = "customs",
    kind: str = "CEB311",
    guid: str | None = None,
    error: str = "sandbox scenario POISON: rejected permanently",
) -> int:
    """A job that was claimed once and failed permanently, through cbec_queue's own functions.

    With ``guid`` it is a transmission of that message, shaped as the forwarding makes them."""
    payload: dict[str, str] = {"message": "<CEB311Message/>" * 50}
    if guid:
        payload |= {"guid": guid, "message_type": kind}
    async with pool.acquire() as conn:
        job_id = await cbec_queue.enqueue(
            conn, endpoint=endpoint, kind=kind, payload=payload, dedupe_key=f"{endpoint}:{guid}" if guid else None
        )
        assert job_id is not None
        claimed = await cbec_queue.claim(conn, worker_id="test-worker", lease_s=30, endpoint=endpoint, limit=100)
        job = next(j for j in claimed if j.id == job_id)
        assert await cbec_queue.record_dead(
            conn, job, reason="permanent", error=cbec_queue.PermanentError(error), outcome="permanent", duration_ms=15
        )
    return job_id


async def make_forwarded(
    pool: asyncpg.Pool, *, endpoint: str = "customs", kind: str = "CEB311", guid: str | None = None
) -> int:
    """A job sent successfully on its first attempt (a transmission of message ``guid`` when given)."""
    payload = {"guid": guid, "message_type": kind} if guid else {}
    async with pool.acquire() as conn:
        job_id = await cbec_queue.enqueue(
            conn, endpoint=endpoint, kind=kind, payload=payload, dedupe_key=f"{endpoint}:{guid}" if guid else None
        )
        assert job_id is not None
        claimed = await cbec_queue.claim(conn, worker_id="test-worker", lease_s=30, endpoint=endpoint, limit=100)
        job = next(j for j in claimed if j.id == job_id)
        assert await cbec_queue.record_done(conn, job, duration_ms=40)
    return job_id


class ConsoleClient:
    """A browser-like client of /ops: its own cookie jar (127.0.0.1 needs unsafe=True), the CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.session.close()

    async def sign_in(self, key: str) -> aiohttp.ClientResponse:
        async with self.session.post(
            self.base + "/ops/login", data={"key": key}, headers={"Origin": self.base}, allow_redirects=False
        ) as resp:
            await resp.read()
        if resp.status == 303:
            info = await self.get_json("/ops/api/session")
            self.csrf = info["csrf"]
        return resp

    async def get_json(self, path: str, **params: Any) -> Any:
        async with self.session.get(self.base + path, params=params) as resp:
            assert resp.status == 200, (path, resp.status, await resp.text())
            return await resp.json()

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        async with self.session.get(self.base + path, params=params, allow_redirects=False) as resp:
            raw = await resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw.decode()

    async def post(
        self, path: str, *, csrf: str | None = None, origin: str | None = "own", json: Any = None
    ) -> tuple[int, Any]:
        headers = {}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        if origin == "own":
            headers["Origin"] = self.base
        elif origin is not None:
            headers["Origin"] = origin
        async with self.session.post(self.base + path, headers=headers, json=json, allow_redirects=False) as resp:
            return resp.status, await resp.json()


class FeedWatch:
    """The console's live feed polled by hand: each :meth:`changed` is one poll, answering the orderNos of the
    shipments its ``summary`` event names as changed (none when it sent none); :attr:`last` is the latest such event."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.feed = Feed(pool, recount_every=1)
        self.sub = self.feed.subscribe()
        self.last: dict[str, Any] = {}

    async def changed(self) -> set[str]:
        await self.feed.tick()
        data = dict(self.sub.pending.get("summary") or {})
        self.last = data or self.last
        self.sub.pending.clear()
        assert not data.get("changed_overflow")
        return {c["orderNo"] for c in data.get("changed", [])}

    def close(self) -> None:
        self.feed.unsubscribe(self.sub)


@dataclass
class Ops:
    base: str
    api: Client
    app: web.Application
    pool: asyncpg.Pool
    runner: web.AppRunner
    clients: list[ConsoleClient]

    async def console(self, key: str | None = None) -> ConsoleClient:
        client = ConsoleClient(self.base)
        self.clients.append(client)
        if key is not None:
            resp = await client.sign_in(key)
            assert resp.status == 303, resp.status
        return client


def build_app(pool: asyncpg.Pool, *, poll_interval: float = 0.2, **settings: Any) -> web.Application:
    app = create_app(test_settings(**settings), pool, signer=sign_as_agent)
    app[CONSOLE].poll_interval = poll_interval
    return app


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture(loop_scope="session", name="ops")
async def ops_fixture(db_pool: asyncpg.Pool) -> AsyncIterator[Ops]:
    """The API with console and metrics on 127.0.0.1 (import ``ops_fixture`` to use the ``ops`` fixture)."""
    app = build_app(db_pool)
    runner, base = await start(app)
    clients: list[ConsoleClient] = []
    async with aiohttp.ClientSession() as session:
        yield Ops(base, Client(session, base), app, db_pool, runner, clients)
        for c in clients:
            await c.close()
    await asyncio.wait_for(runner.cleanup(), 10)


#: Defects that reconciliation reports as mismatches between two documents (both values on screen).
MISMATCH_DEFECTS = ("amount_mismatch", "consignee_mismatch", "item_mismatch", "payer_not_buyer", "address_mismatch")


async def seed_realistic(api: Client, pool: asyncpg.Pool, *, spread_minutes: int = 0) -> dict[str, list[str]]:
    """Shipments in every state (Chinese names from gateway.samples), rejections, queue jobs and dead letters.

    ``spread_minutes`` > 0 moves the arrival times back over that many minutes so that the charts have a
    shape (demo data for screenshots; the tests that check figures leave it at 0).
    """
    made: dict[str, list[str]] = {"matched": [], "mismatched": [], "incomplete": [], "dead": []}
    for i in range(9):
        s = new_shipment(300 + i, "1210" if i % 3 == 0 else "9610")
        await submit(api, s)
        made["matched"].append(s.order_doc["orderNo"])
    for i, defect in enumerate(MISMATCH_DEFECTS):
        s = samples.broken(new_shipment(320 + i), defect)
        await submit(api, s)
        made["mismatched"].append(s.order_doc["orderNo"])
    for i, codes in enumerate((("CEB311",), ("CEB311", "CEB411"), ("CEB311", "CEB411", "CEB511"))):
        s = new_shipment(340 + i)
        await submit(api, s, *codes)
        made["incomplete"].append(s.order_doc["orderNo"])
    for i in range(3):
        bad = xml_of(new_shipment(360 + i).order).replace(b"<ceb:currency>142<", b"<ceb:currency>14<", 1)
        assert (await api.post_xml(bad)).status == 422
    async with pool.acquire() as conn:
            sent = await conn.fetch("SELECT guid, message_type FROM messages ORDER BY id")
    for r in sent[:40]:
        await make_forwarded(pool, endpoint="customs", kind=r["message_type"], guid=r["guid"])
    made["dead"].append(str(await make_dead_letter(pool, endpoint="customs", guid="POISON-0001")))
    made["dead"].append(
        str(
            await make_dead_letter(
                pool, endpoint="warehouse", kind="inbound", error="HTTP 400: 仓库拒收: 商品备案号不存在"
            )
        )
    )
    async with pool.acquire() as conn:
        for i in range(3):
            await cbec_queue.enqueue(conn, endpoint="customs", kind="CEB621", payload={"n": i})
        await cbec_queue.enqueue(conn, endpoint="inspection", kind="CEB621", payload={})
        if spread_minutes:
            # demo only: spread what happened over the last minutes, newest last
            await conn.execute(
                """
                UPDATE messages SET received_at = now() - make_interval(secs => (
                    SELECT count(*) FROM messages AS n WHERE n.id > messages.id) * $1::float8);
                UPDATE rejected_messages SET received_at = now() - make_interval(secs => id * 600);
                UPDATE jobs AS j SET created_at = m.received_at + interval '1 second'
                  FROM messages AS m WHERE j.payload ->> 'guid' = m.guid;
                UPDATE job_attempts AS a SET started_at = j.created_at + interval '1 second',
                                             finished_at = j.created_at + interval '2 seconds'
                  FROM jobs AS j WHERE a.job_id = j.id AND a.outcome = 'ok';
                UPDATE jobs SET created_at = now() - make_interval(secs => 100 + id) WHERE state = 'queued';
                """.replace("$1::float8", str(spread_minutes * 60 / max(len(sent), 1))),
            )
            # the newest forwarded messages sent 12 minutes ago, their receipts still awaited (the page warns past 10)
            ids = await conn.fetch("SELECT id FROM messages WHERE guid = ANY ($1::text[]) ORDER BY id DESC LIMIT 4",
                                   [r["guid"] for r in sent[:40]])  # fmt: skip
            await conn.execute(outbox.MARK_SENT, [r["id"] for r in ids])
            await conn.execute(
                """
                UPDATE receipts_awaited SET sent_at = sent_at - interval '12 minutes',
                                            awaited_since = awaited_since - interval '12 minutes';
                UPDATE documents AS d SET sent_at = a.sent_at FROM receipts_awaited AS a WHERE a.document_id = d.id;
                """
            )
    return made
