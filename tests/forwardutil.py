"""A whole forwarding gateway on 127.0.0.1 for tests: API + queue worker + watchdog, the customs sandbox
playing customs / inspection / warehouse and posting receipts back, on one test database."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from gateway import db, samples
from gateway.api import OUTBOX, PIPELINE, create_app
from gateway.config import (
    ApiKey,
    EndpointSettings,
    ForwardingSettings,
    RealtimeSettings,
    RetrySettings,
    Role,
    Settings,
)
from gateway.render import new_guid
from gateway.sandbox import RunningSandbox, start_sandbox
from gateway.server import sandbox_realtime
from gateway.workers import Forwarding, build_router
from tests.apiutil import Client, Reply, sign_as_agent, test_settings
from tests.siteutil import OPERATOR_CODE

CUSTOMS_KEY = "customs-key-4444444444444"
WAREHOUSE_KEY = "warehouse-key-55555555555"
SITE_KEY = "site-key-66666666666666666"  # the supervision site operator's (tests.siteutil.OPERATOR_CODE)

#: Millisecond retries, a breaker that recovers at once, a worker that polls often.
FAST_RETRY = RetrySettings(base_s=0.02, factor=2.0, cap_s=0.2, max_attempts=60)
SANDBOX_FAST: dict[str, Any] = {
    "receipt_delay": 0.005,
    "slow_delay": 0.05,
    "timeout_delay": 5.0,
    "warehouse_callback_delay": 0.005,
    "flaky_failures": 2,
}


def fast_endpoints(sandbox_url: str, customs_url: str | None = None, **customs: Any) -> tuple[EndpointSettings, ...]:
    base = sandbox_url.rstrip("/")
    common: dict[str, Any] = {"retry": FAST_RETRY, "breaker_cooldown_s": 0.05, "timeout_s": 5.0}
    return (
        EndpointSettings("customs", "customs", url=customs_url or f"{base}/dxp", **{**common, **customs}),
        EndpointSettings("inspection", "inspection", url=f"{base}/inspection", **common),
        EndpointSettings("warehouse", "warehouse", url=f"{base}/warehouse/orders", **common),
    )


def fast_forwarding(endpoints: tuple[EndpointSettings, ...], **changes: Any) -> ForwardingSettings:
    base = ForwardingSettings(
        endpoints=endpoints,
        sandbox="off",
        worker_lease_s=2.0,
        worker_poll_s=0.05,
        watchdog_interval_s=0.05,
        receipt_timeout_s=30.0,
        resend_delay_s=0.05,
        webhook_allowed_networks=("127.0.0.0/8",),  # the tests' webhook receivers listen on 127.0.0.1
    )
    return replace(base, **changes)


def settings_for(fwd: ForwardingSettings) -> Settings:
    s = test_settings(forwarding=fwd)
    site = ApiKey("site", SITE_KEY, Role.SUBMITTER, frozenset({OPERATOR_CODE}))
    return s.with_overrides(api_keys=(*s.api_keys, ApiKey("customs", CUSTOMS_KEY, Role.CUSTOMS),
                                      ApiKey("warehouse", WAREHOUSE_KEY, Role.WAREHOUSE), site))  # fmt: skip


def shipment(seed: int, mode: str = "9610", prefix: str = "", **kw: Any) -> samples.ShipmentSample:
    rng = random.Random(seed)
    order_no = f"{prefix}{seed:06d}{rng.randrange(10**8):08d}" if prefix else None
    return samples.shipment(rng, mode=mode, order_no=order_no, **kw)


def legs(s: samples.ShipmentSample) -> list[dict[str, Any]]:
    return [s.order, s.payment, s.waybill, s.inventory]


def version_of(payload: dict[str, Any], app_type: str, seconds_later: int, **fields: Any) -> dict[str, Any]:
    """Another version of a one-document message: a new message (new guids) with ``appType`` 2 (change) or 3
    (withdrawal), an ``appTime`` that many seconds later, and any head fields changed."""
    p = copy.deepcopy(payload)
    p["guid"] = new_guid()
    doc = p["documents"][0]
    at = datetime.strptime(doc["appTime"], "%Y%m%d%H%M%S") + timedelta(seconds=seconds_later)
    doc.update(guid=new_guid(), appType=app_type, appTime=at.strftime("%Y%m%d%H%M%S"), **fields)
    return p


def key_path(s: samples.ShipmentSample) -> str:
    return f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}"


async def wait_for(check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Stack:
    base: str
    client: Client
    pool: asyncpg.Pool
    sandbox: RunningSandbox
    forwarding: Forwarding | None
    app: web.Application

    async def submit(self, payload: dict[str, Any]) -> Reply:
        reply = await self.client.request("POST", "/v1/messages", json_body=payload)
        assert reply.status == 202, (payload["type"], reply.status, reply.body)
        return reply

    async def shipment(self, s: samples.ShipmentSample) -> dict[str, Any]:
        reply = await self.client.get(key_path(s))
        assert reply.status == 200, reply.body
        body: dict[str, Any] = reply.body
        return body

    async def customs_status(self, s: samples.ShipmentSample) -> str | None:
        async with self.pool.acquire() as conn:
            value: str | None = await conn.fetchval(
                "SELECT customs_status FROM shipments WHERE ebp_code = $1 AND order_no = $2",
                s.order_doc["ebpCode"], s.order_doc["orderNo"],
            )  # fmt: skip
            return value

    async def wait_status(self, s: samples.ShipmentSample, status: str, timeout: float = 15.0) -> None:
        async def reached() -> bool:
            return await self.customs_status(s) == status

        await wait_for(reached, timeout=timeout, what=f"{s.order_doc['orderNo']} customs_status {status}")

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchval(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    async def wait_sql(self, sql: str, *args: Any, timeout: float = 15.0) -> None:
        async def holds() -> bool:
            return bool(await self.fetchval(sql, *args))

        await wait_for(holds, timeout=timeout, what=sql)


@contextlib.asynccontextmanager
async def running_stack(
    dsn: str,
    *,
    worker: bool = True,
    customs_url: str | None = None,
    sandbox_port: int = 0,
    sandbox_config: dict[str, Any] | None = None,
    forwarding: dict[str, Any] | None = None,
    customs: dict[str, Any] | None = None,
    sandbox: RunningSandbox | None = None,
    realtime: RealtimeSettings | None = None,
    platform_keys: dict[str, Any] | None = None,
) -> AsyncIterator[Stack]:
    """The gateway with forwarding on ``dsn``; the sandbox is started here unless one is given. ``realtime``: the 179
    platforms (their keys as ``platform_keys``, by ebpCode), whose CEB311 orders the sandbox asks about at their
    URLs, verifying their uploads with the keys' certificates."""
    own_sandbox = sandbox is None
    sb = sandbox or await start_sandbox("127.0.0.1", sandbox_port, **{**SANDBOX_FAST, **(sandbox_config or {})})
    pool = await db.create_pool(dsn, min_size=2, max_size=20)
    runner: web.AppRunner | None = None
    fwd_runtime: Forwarding | None = None
    try:
        # the sellers' endpoint, as cbec serve has it (workers.effective_endpoints): also with no webhook yet
        endpoints = fast_endpoints(sb.url, customs_url, **(customs or {}))
        endpoints += (EndpointSettings("webhook", "webhook", retry=FAST_RETRY, timeout_s=5.0),)
        if realtime is not None:
            endpoints += (EndpointSettings(realtime.endpoint, "realtime", retry=FAST_RETRY, timeout_s=5.0,
                                           url=f"{sb.url}/ceb2grab/grab/realTimeDataUpload"),)  # fmt: skip
        fwd = fast_forwarding(endpoints, **(forwarding or {}))
        router = build_router(fwd, endpoints)
        settings = replace(settings_for(fwd), realtime=realtime) if realtime is not None else settings_for(fwd)
        app = create_app(settings, pool, signer=sign_as_agent, router=router)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        sb.config.receipt_url = f"{base}/v1/receipts"
        sb.config.receipt_headers = {"X-API-Key": CUSTOMS_KEY}
        sb.config.warehouse_callback_url = f"{base}/v1/warehouse/callbacks"
        sb.config.warehouse_callback_headers = {"X-API-Key": WAREHOUSE_KEY}
        if realtime is not None:
            asks, certs = await sandbox_realtime(base, realtime, platform_keys or {})
            sb.config.realtime_ask_urls, sb.config.realtime_certs = asks, certs
        fwd_runtime = Forwarding(pool, app[OUTBOX], fwd, endpoints, schemas=app[PIPELINE].schemas, worker=worker,
                                 realtime=realtime or RealtimeSettings(),
                                 platform_keys=platform_keys or {})  # fmt: skip
        await fwd_runtime.start()
        async with aiohttp.ClientSession() as session:
            yield Stack(base, Client(session, base), pool, sb, fwd_runtime, app)
    finally:
        if fwd_runtime is not None:
            await fwd_runtime.stop()
        if runner is not None:
            await runner.cleanup()
        if own_sandbox:
            await sb.stop()
        await pool.close()
