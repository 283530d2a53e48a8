"""The serving processes: supervision of ``cbec serve --processes N``'s extra API processes
(gateway.server.ApiProcesses), and what one process does while it serves."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import json
import multiprocessing
import os
import pickle
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import structlog
from aiohttp import web
from cbec_queue.policy import RetryPolicy
from structlog.testing import capture_logs

from gateway import config, samples, server, signing, workers
from gateway.auth import KeyRing, SharedRates
from gateway.config import ApiKey, EndpointSettings, ForwardingSettings, Role, Settings, WebhookSettings, netloc
from gateway.db import _stop_leftover
from gateway.sandbox import start_sandbox
from gateway.server import ApiProcesses, RestartBackoff, run_worker, serve
from gateway.signing import RsaSha1Key, generate_test_key
from gateway.workers import SANDBOX_CUSTOMS_CONCURRENCY_DEDICATED, Forwarding, submit_and_wait_released
from tests import apiutil
from tests.forwardutil import shipment, wait_for
from tests.test_db import _postmaster_pid
from tests.test_e2e import ROOT, free_port, logged


def _die_at_once(settings: Settings, rates: object, signatures: object) -> None:
    """Stands in for an API process that fails at start-up every time."""
    os._exit(3)


def test_quick_deaths_in_a_row_double_the_wait_up_to_the_cap() -> None:
    b = RestartBackoff(RetryPolicy(base_s=1.0, factor=2.0, cap_s=60.0, jitter="none"), stable_s=30.0)
    assert [b.delay_after_death(lived_s=0.5) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_process_that_lived_long_enough_is_restarted_after_the_first_wait() -> None:
    b = RestartBackoff(RetryPolicy(base_s=1.0, factor=2.0, cap_s=60.0, jitter="none"), stable_s=30.0)
    for _ in range(5):
        b.delay_after_death(lived_s=1.0)
    assert b.delay_after_death(lived_s=45.0) == 1  # it ran: the count starts again
    assert b.delay_after_death(lived_s=2.0) == 2


class _Recorded(ApiProcesses):
    POLL_S = 0.05

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.started_at: list[float] = []

    def _spawn(self):  # type: ignore[no-untyped-def]
        self.started_at.append(time.monotonic())
        return super()._spawn()


def _take(rates: SharedRates, key: ApiKey, n: int, taken: Any) -> None:
    """In a spawned process: try ``n`` requests of ``key`` against the shared rates; how many went through."""
    bucket = rates.bucket(key)
    assert bucket is not None
    taken.value = sum(bucket.try_take() for _ in range(n))


def test_the_api_processes_draw_on_one_bucket_per_key() -> None:
    """A key's rate holds for the gateway, not for each API process (cbec serve --processes N): the buckets live in
    memory the processes share, made by the first for its keys and handed to the others when they start."""
    limited = ApiKey("limited", "k-limited-" + "r" * 20, Role.SUBMITTER, rate_per_s=0.001, rate_burst=5)
    free = ApiKey("free", "k-free-" + "f" * 24, Role.SUBMITTER)
    rates = SharedRates([free, limited])
    assert rates.bucket(free) is None
    context = multiprocessing.get_context("spawn")
    taken = context.Value("i", -1)
    other = context.Process(target=_take, args=(rates, limited, 3, taken))
    other.start()
    other.join(60)
    assert (other.exitcode, taken.value) == (0, 3)
    here = rates.bucket(limited)
    assert here is not None
    assert [here.try_take() for _ in range(4)] == [True, True, False, False]  # 5 in all, whichever process took them
    assert here.wait_time() > 100  # a token every 1,000 s
    # a ring made with these rates shares them; one without counts in this process alone
    assert KeyRing([limited], rates).authenticate(limited.key).throttled() is not None  # type: ignore[union-attr]
    assert KeyRing([limited]).authenticate(limited.key).throttled() is None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="other keys"):
        SharedRates([free]).bucket(limited)


async def test_a_process_that_keeps_dying_at_start_up_is_restarted_ever_more_slowly() -> None:
    """Real spawned processes that exit at once: each is seen dead, and the next start waits the growing
    delay (0.2, 0.4, 0.8 s, then the cap) after its death — the gaps between starts grow accordingly."""
    delays: list[float] = []

    class Recording(RestartBackoff):
        def delay_after_death(self, lived_s: float) -> float:
            d = super().delay_after_death(lived_s)
            delays.append(d)
            return d

    policy = RetryPolicy(base_s=0.2, factor=2.0, cap_s=0.8, jitter="none")
    procs = _Recorded(Settings(), target=_die_at_once, backoff=lambda: Recording(policy, stable_s=30.0))
    procs.start(1)
    try:
        # A spawned process takes a while to die (a fresh interpreter imports the gateway first; up to 2 s seen on
        # a slow machine, where a fixed 4 s wait saw only two starts): wait for the fourth start instead.
        deadline = time.monotonic() + 30.0
        while len(procs.started_at) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await procs.stop(timeout=5)
    starts = procs.started_at
    assert len(starts) >= 4, starts  # it is started again, and again
    assert delays[:3] == [0.2, 0.4, 0.8][: len(delays[:3])] and set(delays[3:]) <= {0.8}
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # a gap is the process's short life plus the wait after its death: never shorter than the wait
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=False)), (gaps, delays)


def _signal_handlers_left() -> list[int]:
    """The stop signals the running loop still handles (removing a handler says whether there was one)."""
    loop = asyncio.get_running_loop()
    return [sig for sig in (signal.SIGINT, signal.SIGTERM) if loop.remove_signal_handler(sig)]


async def test_serve_freezes_its_start_up_heap_tunes_the_collector_and_takes_the_stop_signals_while_serving(
    db_dsn: str, tmp_path: Path
) -> None:
    settings = apiutil.test_settings(
        database_url=db_dsn, port=0, data_dir=tmp_path, log_format="json",
        forwarding=ForwardingSettings(enabled=False),
    )  # fmt: skip
    ready, stop, info = asyncio.Event(), asyncio.Event(), dict[str, Any]()
    before = gc.get_threshold()
    serving = asyncio.create_task(serve(settings, ready=ready, stop=stop, info=info))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        frozen_while_serving = gc.get_freeze_count()
        threshold_while_serving = gc.get_threshold()[0]
        async with aiohttp.ClientSession() as session, session.get(info["url"] + "/healthz") as resp:
            assert resp.status == 200
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)
    # the modules, schemas and app that start-up built: tens of thousands of objects
    assert frozen_while_serving > 10_000
    assert gc.get_freeze_count() == 0
    assert threshold_while_serving == server.SERVING_GC_THRESHOLD
    assert gc.get_threshold()[0] == before[0]  # the test process's own, back
    assert _signal_handlers_left() == []  # Ctrl-C interrupts the process again


async def test_a_worker_freezes_its_start_up_heap_tunes_the_collector_and_takes_the_stop_signals_while_it_works(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = apiutil.test_settings(database_url=db_dsn, data_dir=tmp_path, log_format="json")
    built: list[tuple[EndpointSettings, ...]] = []

    class Recorded(Forwarding):
        def __init__(self, pool: Any, outbox: Any, fwd: Any, endpoints: tuple[EndpointSettings, ...], **kw: Any):
            built.append(endpoints)
            super().__init__(pool, outbox, fwd, endpoints, **kw)

    monkeypatch.setattr(server, "Forwarding", Recorded)
    # its logging set-up would cache the loggers it uses (the queue's among them): a later test would capture none
    monkeypatch.setattr(server.logs, "configure", lambda *_args, **_kw: None)
    ready, stop = asyncio.Event(), asyncio.Event()
    working = asyncio.create_task(
        run_worker(settings, sandbox_url="http://127.0.0.1:9", watchdog=False, ready=ready, stop=stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), 60)
        frozen_while_working = gc.get_freeze_count()
        threshold_while_working = gc.get_threshold()[0]
    finally:
        stop.set()
        await asyncio.wait_for(working, 60)
    assert frozen_while_working > 10_000
    assert threshold_while_working == server.SERVING_GC_THRESHOLD != gc.get_threshold()[0]
    assert gc.get_freeze_count() == 0
    assert _signal_handlers_left() == []
    # Its event loop serves no API: the sandbox's customs endpoint gets the dedicated worker's deliveries in flight.
    (endpoints,) = built
    assert {e.name: e.concurrency for e in endpoints}["customs"] == SANDBOX_CUSTOMS_CONCURRENCY_DEDICATED



def _said(logged: list[dict[str, Any]], event: str) -> Callable[[], Awaitable[bool]]:
    """Whether a line with this event was logged (for wait_for)."""

    async def check() -> bool:
        return any(r["event"] == event for r in logged)

    return check


async def test_sighup_puts_the_sellers_webhooks_in_force_in_a_worker(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cbec worker` delivers the sellers' webhooks with the URLs and secrets of its configuration: SIGHUP reads it
    again, and the next delivery goes with the rotated secret — no restart; a configuration that cannot be used
    changes nothing."""
    from adapters.webhook import verify_signature
    from gateway import db
    from gateway.forward import JobSpec
    from gateway.outbox import enqueue_all
    from gateway.sandbox.recorder import start_recorder

    monkeypatch.setattr(server.logs, "configure", lambda *_args, **_kw: None)  # capture_logs sees the worker's lines
    monkeypatch.setattr(server, "log", structlog.get_logger("gateway.server"))
    recorder = await start_recorder()
    hook = WebhookSettings("seller-a", frozenset({"E1"}), recorder.url + "/hook", "secret-one")
    fwd = ForwardingSettings(webhooks=(hook,), worker_poll_s=0.2, webhook_allowed_networks=("127.0.0.1",))
    settings = apiutil.test_settings(database_url=db_dsn, data_dir=tmp_path, log_format="json",
                                     forwarding=fwd)  # fmt: skip
    configured: list[Any] = [settings]

    def reload() -> Settings:
        if isinstance(configured[-1], Exception):
            raise configured[-1]
        return cast(Settings, configured[-1])

    pool = await db.create_pool(db_dsn, min_size=1, max_size=2)
    ready, stop = asyncio.Event(), asyncio.Event()
    with capture_logs() as logged:
        working = asyncio.create_task(run_worker(settings, sandbox_url="http://127.0.0.1:9", watchdog=False,
                                                 ready=ready, stop=stop, reload=reload))  # fmt: skip
        try:
            await asyncio.wait_for(ready.wait(), 60)

            async def deliver(n: int) -> Any:
                job = JobSpec("webhook", "webhook", {"seller": "seller-a", "event": "test.event", "data": {"n": n},
                                                     "id": f"delivery-{n}"}, f"test:{n}")  # fmt: skip
                async with pool.acquire() as conn:
                    await enqueue_all(conn, [job])
                [got] = await recorder.wait_for(1, timeout=20, where=lambda r: f'"n":{n}'.encode() in r.body)
                return got

            def signed_with(secret: str, r: Any) -> bool:
                return verify_signature(secret, r.body, r.headers["X-CBEC-Signature"],
                                        timestamp=r.headers["X-CBEC-Timestamp"])  # fmt: skip

            assert signed_with("secret-one", await deliver(1))
            configured.append(ValueError("not a configuration"))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(_said(logged, "configuration_not_reloaded"), what="the unusable configuration refused")
            assert signed_with("secret-one", await deliver(2))
            configured.append(dataclasses.replace(settings, forwarding=dataclasses.replace(
                settings.forwarding, webhooks=(dataclasses.replace(hook, secret="secret-two"),))))  # fmt: skip
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(_said(logged, "webhooks_reloaded"), what="the rotated secret in force")
            third = await deliver(3)
            assert signed_with("secret-two", third) and not signed_with("secret-one", third)
        finally:
            stop.set()
            await asyncio.wait_for(working, 60)
            await pool.close()
            await recorder.stop()
    [reloaded] = [r for r in logged if r["event"] == "webhooks_reloaded"]
    assert reloaded["changed"] == ["seller-a"] and "secret-two" not in repr(logged)
    assert _signal_handlers_left() == []


EMBEDDED_TOML = """
log_format = "json"
port = {port}
[forwarding]
sandbox_port = 0
"""


@pytest.mark.db
async def test_serve_and_a_worker_stop_when_their_embedded_postgres_dies_and_the_next_start_brings_it_back(
    tmp_path: Path,
) -> None:
    """The embedded PostgreSQL killed under `cbec serve` and a `cbec worker` sharing it: both see it within seconds
    and exit with status 1 and an error line, instead of answering 503 for ever; `cbec serve` started again (as a
    supervisor would) starts the server again over the dead one's pid file."""
    port = free_port()
    cfg = tmp_path / "cbec.toml"
    cfg.write_text(EMBEDDED_TOML.format(port=port), encoding="utf-8")
    data_dir, url = tmp_path / "var", f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEC_")} | {"PYTHONPATH": str(ROOT)}
    procs: list[asyncio.subprocess.Process] = []

    async def cbec(command: str, *args: str, log_file: Path) -> asyncio.subprocess.Process:
        with log_file.open("wb") as log_out:  # a file, not a pipe: nobody reads it while the process runs
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", command, "--config", str(cfg), "--data-dir", str(data_dir), *args,
                cwd=str(ROOT), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log_out,
            )  # fmt: skip
        procs.append(proc)
        return proc

    async def healthy() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as resp:
                return resp.status == 200
        return False

    try:
        serving = await cbec("serve", log_file=tmp_path / "serve.log")
        await wait_for(healthy, timeout=90, what="cbec serve on an embedded PostgreSQL")
        working = await cbec("worker", "--sandbox-url", "http://127.0.0.1:9", log_file=tmp_path / "worker.log")

        async def worker_ready() -> bool:
            return logged((tmp_path / "worker.log").read_text(), "worker_ready")

        await wait_for(worker_ready, timeout=60, what="cbec worker on the same embedded PostgreSQL")
        postmaster = _postmaster_pid(data_dir / "pgdata")
        assert postmaster is not None
        os.kill(postmaster, signal.SIGKILL)
        killed_at = time.monotonic()
        codes = [await asyncio.wait_for(p.wait(), 60) for p in (serving, working)]
        took = time.monotonic() - killed_at
        assert codes == [server.EXIT_DATABASE_GONE] * 2 != [0, 0]
        assert took < 20, took
        for name in ("serve.log", "worker.log"):
            log = (tmp_path / name).read_text()
            uncaught = [line for line in log.splitlines() if line.startswith("Traceback")]  # not a JSON log line
            assert logged(log, "embedded_postgres_gone") and not uncaught, log[-3000:]

        again = await cbec("serve", log_file=tmp_path / "again.log")
        await wait_for(healthy, timeout=90, what="cbec serve started again")
        assert _postmaster_pid(data_dir / "pgdata") not in (None, postmaster)
        again.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(again.wait(), 60) == 0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        _stop_leftover(data_dir / "pgdata")  # a server a failed run left behind


def test_an_ipv6_host_is_written_in_brackets_with_its_port() -> None:
    assert netloc("::1", 8080) == "[::1]:8080" and netloc("fe80::1%eth0", 80) == "[fe80::1%eth0]:80"
    assert netloc("127.0.0.1", 8080) == "127.0.0.1:8080" and netloc("gw.internal", 80) == "gw.internal:80"
    assert netloc("[::1]", 8080) == "[::1]:8080"
    # asyncio listens on :: for IPv6 only (IPV6_V6ONLY): the gateway reaches itself on ::1 then, not 127.0.0.1
    assert [server._local(h) for h in ("", "0.0.0.0", "::", "::1", "10.0.0.5")] == [
        "127.0.0.1", "127.0.0.1", "::1", "::1", "10.0.0.5",
    ]  # fmt: skip


def test_a_taken_ipv6_port_is_named_in_brackets() -> None:
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as refused:
            server._ensure_port_free("::1", port)
    assert str(refused.value.code).startswith(f"cbec: cannot listen on [::1]:{port}: ")


@pytest.mark.db
async def test_serve_on_ipv6_takes_the_receipts_of_its_own_sandbox(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listening on :: (IPv6 only), the gateway gave its sandbox http://127.0.0.1:<port>/v1/receipts, which nothing
    answers, and with ::1 it would have been no URL at all (http://::1:<port>): the shipment was never released."""
    # serve configures structlog for its whole process, caching the loggers its queue worker uses on first use: later
    # tests' capture_logs would then see nothing of them. This test is about addresses, not logs.
    monkeypatch.setattr(server.logs, "configure", lambda *_args, **_kw: None)
    fwd = ForwardingSettings(sandbox_port=0, sandbox_receipt_delay_s=0.005, worker_poll_s=0.05)
    settings = apiutil.test_settings(database_url=db_dsn, host="::", port=0, data_dir=tmp_path, log_format="json",
                                     forwarding=fwd)  # fmt: skip
    ready, stop, info = asyncio.Event(), asyncio.Event(), dict[str, Any]()
    serving = asyncio.create_task(serve(settings, ready=ready, stop=stop, info=info))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        assert info["url"].startswith("http://[::1]:")
        run = await submit_and_wait_released(info["url"], apiutil.ADMIN, [shipment(301)], concurrency=1,
                                             timeout_s=30, poll_s=0.05)  # fmt: skip
        assert run.released == 1 and run.not_released == []
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)


async def test_the_sandbox_on_ipv6_gives_a_url_that_reaches_it() -> None:
    sandbox = await start_sandbox("::1", 0)
    try:
        assert sandbox.url.startswith("http://[::1]:")
        async with aiohttp.ClientSession() as session, session.get(sandbox.url + "/sandbox/stats") as resp:
            assert resp.status == 200
    finally:
        await sandbox.stop()


def _agent_files(folder: Path, name: str, days: int) -> tuple[Path, Path, bytes, bytes]:
    """A TEST agent key and certificate written to ``folder`` (over what is there), and their PEMs."""
    key_pem, cert_pem = generate_test_key("rsa", name, days=days)
    key_file, cert_file = folder / "agent-key.pem", folder / "agent-cert.pem"
    key_file.write_bytes(key_pem)
    cert_file.write_bytes(cert_pem)
    return key_file, cert_file, key_pem, cert_pem



@contextlib.asynccontextmanager
async def serving_reloaded(
    settings: Settings, configured: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[dict[str, Any], list[dict[str, Any]], aiohttp.ClientSession]]:
    """`cbec serve` (in this process) whose configuration read again on SIGHUP is ``configured[-1]``: its url and
    sandbox_url, its log lines so far (structlog's capture, kept after the block), and a client with the admin key."""
    monkeypatch.setattr(server.logs, "configure", lambda *_args, **_kw: None)  # capture_logs sees serve's lines
    monkeypatch.setattr(server, "log", structlog.get_logger("gateway.server"))
    ready, stop, info = asyncio.Event(), asyncio.Event(), dict[str, Any]()
    with capture_logs() as logged:
        serving = asyncio.create_task(serve(settings, ready=ready, stop=stop, info=info,
                                            reload=lambda: configured[-1]))  # fmt: skip
        try:
            await asyncio.wait_for(ready.wait(), 60)
            async with aiohttp.ClientSession(headers={"X-API-Key": apiutil.ADMIN}) as session:
                yield info, logged, session
        finally:
            stop.set()
            await asyncio.wait_for(serving, 60)


@pytest.mark.db
async def test_sighup_puts_a_rotated_webhook_secret_in_force_in_cbec_serve(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cbec serve` with its sandbox and a seller's webhook: a shipment released is told to the seller signed with its
    secret; the secret rotated in the configuration, then SIGHUP: the next shipment's release is signed with the new
    one — no restart, and the log names the seller, not the secret."""
    from adapters.webhook import verify_signature
    from gateway.sandbox.recorder import start_recorder
    from tests.forwardutil import legs, shipment

    recorder = await start_recorder()
    ships = [shipment(71), shipment(72)]
    hook = WebhookSettings("seller-a", frozenset(s.order_doc["ebcCode"] for s in ships), recorder.url + "/hook", "one")
    fwd = ForwardingSettings(webhooks=(hook,), sandbox_port=0, sandbox_receipt_delay_s=0.005, worker_poll_s=0.05,
                             webhook_allowed_networks=("127.0.0.1",))  # its receiver listens on 127.0.0.1
    settings = apiutil.test_settings(database_url=db_dsn, port=0, data_dir=tmp_path, log_format="json", forwarding=fwd)
    configured = [settings]
    try:
        async with serving_reloaded(settings, configured, monkeypatch) as (info, logged, session):

            async def released(s: Any) -> Any:
                for payload in legs(s):
                    body = json.loads(json.dumps(payload, default=str))
                    async with session.post(info["url"] + "/v1/messages", json=body) as resp:
                        assert resp.status == 202, await resp.text()
                order_no = s.order_doc["orderNo"].encode()
                [told] = await recorder.wait_for(1, timeout=30, where=lambda r: order_no in r.body
                                                 and b'"released"' in r.body)  # fmt: skip
                return told

            def signed_with(secret: str, r: Any) -> bool:
                return verify_signature(secret, r.body, r.headers["X-CBEC-Signature"],
                                        timestamp=r.headers["X-CBEC-Timestamp"])  # fmt: skip

            assert signed_with("one", await released(ships[0]))
            rotated = dataclasses.replace(fwd, webhooks=(dataclasses.replace(hook, secret="two"),))
            configured.append(dataclasses.replace(settings, forwarding=rotated))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(_said(logged, "webhooks_reloaded"), what="the rotated secret in force")
            second = await released(ships[1])
            assert signed_with("two", second) and not signed_with("one", second)
    finally:
        await recorder.stop()
    [reloaded] = [r for r in logged if r["event"] == "webhooks_reloaded"]
    assert reloaded["changed"] == ["seller-a"] and "settings_need_restart" not in {r["event"] for r in logged}

@pytest.mark.db
async def test_sighup_puts_a_rotated_179_token_in_force_in_cbec_serve(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cbec serve` with its sandbox and a 179 platform: customs asks at the platform's URL; the token rotated in the
    configuration (it leaked), then SIGHUP: the old URL answers 404 at once, customs (the sandbox) asks at the new
    one and the upload goes — no restart, and the log names the platform, not the token."""
    from gateway.config import RealtimePlatform, RealtimeSettings

    key_pem, cert_pem = generate_test_key("rsa", "platform 179")
    (tmp_path / "p-key.pem").write_bytes(key_pem)
    (tmp_path / "p-cert.pem").write_bytes(cert_pem)
    platform = RealtimePlatform(samples.EBP_CODE, "leaked-token-" + "1" * 16, tmp_path / "p-key.pem",
                                tmp_path / "p-cert.pem")  # fmt: skip
    fwd = ForwardingSettings(sandbox_port=0, sandbox_receipt_delay_s=0.005, worker_poll_s=0.05)
    settings = apiutil.test_settings(database_url=db_dsn, port=0, data_dir=tmp_path, log_format="json", forwarding=fwd,
                                     realtime=RealtimeSettings((platform,)))  # fmt: skip
    rotated = dataclasses.replace(platform, token="fresh-token-" + "2" * 16)
    configured = [settings]
    async with serving_reloaded(settings, configured, monkeypatch) as (info, logged, session):

        async def asked_at(token: str, session_id: str) -> int:
            form = {"openReq": json.dumps({"orderNo": "ZG-ROTATED-1", "sessionID": session_id,
                                           "serviceTime": 1763600000000})}  # fmt: skip
            async with session.post(f"{info['url']}/ceb/platDataOpen/{token}", data=form) as resp:
                return resp.status

        async def sandbox_asks(order_no: str) -> Any:
            async with session.post(info["sandbox_url"] + "/sandbox/realtime/ask",
                                    json={"ebpCode": samples.EBP_CODE, "orderNo": order_no}) as resp:
                return await resp.json()

        assert await asked_at(platform.token, "S-1") == 200
        configured.append(dataclasses.replace(settings, realtime=RealtimeSettings((rotated,))))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(_said(logged, "realtime_platforms_reloaded"), what="the rotated token in force")
        assert await asked_at(platform.token, "S-2") == 404
        assert await asked_at(rotated.token, "S-3") == 200
        assert (await sandbox_asks("ZG-ROTATED-2"))["answer"]["code"] == "10000"  # at the new URL
    [reloaded] = [r for r in logged if r["event"] == "realtime_platforms_reloaded"]
    assert reloaded["changed"] == [samples.EBP_CODE] and "settings_need_restart" not in {r["event"] for r in logged}
    assert "fresh-token" not in repr(logged)


@pytest.mark.db
async def test_sighup_puts_a_renewed_signing_key_in_force_without_a_restart(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The declaring agent's certificate expired: the JSON inventories the gateway would sign are 503s. The renewed key
    and certificate written over the same files, then SIGHUP: the next one is signed with the renewed key and stored,
    and /metrics shows the new date — no restart. A renewal half done (the new key beside the old certificate) changes
    nothing, and the log says why."""
    key_file, cert_file, _, _ = _agent_files(tmp_path, "agent", days=0)
    settings = apiutil.test_settings(database_url=db_dsn, port=0, data_dir=tmp_path, log_format="json",
                                     forwarding=ForwardingSettings(enabled=False), signing_key_file=key_file,
                                     signing_cert_file=cert_file)  # fmt: skip
    async with serving_reloaded(settings, [settings], monkeypatch) as (info, logged, session):

        async def inventory(seed: int) -> tuple[int, Any]:
            payload = json.loads(json.dumps(samples.shipment(random.Random(seed)).inventory, default=str))
            async with session.post(info["url"] + "/v1/messages", json=payload) as resp:
                return resp.status, await resp.json()

        async def expiry() -> float:
            async with session.get(info["url"] + "/metrics") as resp:
                text = await resp.text()
            [line] = [x for x in text.splitlines() if x.startswith("cbec_signing_certificate_expiry_seconds ")]
            return float(line.split()[1])

        status, body = await inventory(1)
        assert status == 503 and body["error"]["issues"][0]["code"] == "signing.certificate_expired", body
        assert await expiry() < 0

        renewed_key, renewed_cert = generate_test_key("rsa", "agent renewed", days=400)
        key_file.write_bytes(renewed_key)  # its certificate not yet replaced
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(_said(logged, "signatures_not_reloaded"), what="the half-done renewal refused")
        assert (await inventory(2))[0] == 503

        cert_file.write_bytes(renewed_cert)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(_said(logged, "signatures_reloaded"), what="the renewed key in force")
        status, body = await inventory(3)
        assert status == 202, body
        async with session.get(info["url"] + f"/v1/messages/{body['guid']}") as resp:
            stored = (await resp.json())["raw_xml"].encode()
        assert await expiry() > 398 * 86400  # the test key is valid from a day before it was made
    renewed = RsaSha1Key.from_pem(renewed_key, renewed_cert)
    assert signing.verify(stored).ok
    assert f"<ds:KeyName>{renewed.key_name}</ds:KeyName>" in stored.decode()
    [refusal] = [r for r in logged if r["event"] == "signatures_not_reloaded"]
    assert "does not belong to the certificate" in refusal["error"]
    [reloaded] = [r for r in logged if r["event"] == "signatures_reloaded"]
    assert reloaded["signing_key"] == renewed.key_name


class _OtherProcesses:
    """Stands in for ApiProcesses in a reload: what it would start the other API processes again with."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key_rates: Any = "the rates shared at start"
        self.renewals: list[tuple[Settings, Any]] = []
        self.signatures: Any = "the signatures handed at start"
        self.handed: list[Any] = []  # the signatures each renewal handed over

    async def renew(self, settings: Settings, key_rates: Any, signatures: Any) -> None:
        self.renewals.append((settings, key_rates))
        self.handed.append(signatures)




def _reloading(
    running: Settings, configured: list[Settings], others: _OtherProcesses
) -> tuple[web.Application, server.Signatures, server.KeyReload]:
    """The first process's reload, its pipeline holding the signatures read from ``running``'s files, the other API
    processes stood in for by ``others``; the configuration read again is ``configured[-1]``."""
    from gateway.api import PIPELINE
    from gateway.pipeline import Pipeline
    from gateway.schema import SchemaSet

    app = web.Application()
    app[PIPELINE] = Pipeline(cast(SchemaSet, None))  # nothing is checked here: the reload only puts its signer in it
    signatures = server.Signatures.from_settings(running)
    signatures.put_in(app)
    reload = server.KeyReload(lambda: configured[-1], running, KeyRing(running.api_keys), running.api_keys, (),
                              cast(ApiProcesses, others), app, signatures)  # fmt: skip
    return app, signatures, reload

class _RenewedForwarding:
    """Stands in for the first process's Forwarding in a reload: the webhooks put in it (none when ``endpoint`` is
    False: there is no webhook endpoint, as with forwarding off)."""

    def __init__(self, endpoint: bool = True) -> None:
        self.endpoint = endpoint
        self.renewed: list[tuple[WebhookSettings, ...]] = []

    def renew_webhooks(self, webhooks: tuple[WebhookSettings, ...]) -> bool:
        if self.endpoint:
            self.renewed.append(webhooks)
        return self.endpoint


async def test_a_reload_puts_the_sellers_webhooks_in_force_here_and_in_the_other_api_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A seller's webhook added or its secret rotated in the configuration, then SIGHUP: in force in the first
    process's router and worker, and the other API processes (which tell sellers of the receipts they take) started
    again with them — the log names the sellers, never a secret. Two reloads before the first renewal ran: the second
    carries both changes. Without a webhook endpoint (forwarding off), nothing is renewed and the log says a restart is
    needed; another change of the forwarding is named too."""
    monkeypatch.setattr(server, "log", structlog.get_logger("gateway.server"))
    hook = WebhookSettings("seller-a", frozenset({"E1"}), "http://127.0.0.1:9/a", "secret-one")
    running = apiutil.test_settings(forwarding=ForwardingSettings(webhooks=(hook,)))
    configured = [running]
    others = _OtherProcesses(running.with_overrides(port=8123))
    forwarding = _RenewedForwarding()
    reload = server.KeyReload(lambda: configured[-1], running, KeyRing(running.api_keys), running.api_keys, (),
                              cast(ApiProcesses, others), None, None, cast(Forwarding, forwarding))  # fmt: skip

    rotated = dataclasses.replace(hook, secret="secret-two")
    added = WebhookSettings("seller-b", frozenset({"E2"}), "http://127.0.0.1:9/b", "secret-b")
    with capture_logs() as logged:
        configured.append(dataclasses.replace(running, forwarding=ForwardingSettings(webhooks=(rotated,))))
        reload()
        configured.append(dataclasses.replace(running, forwarding=ForwardingSettings(webhooks=(rotated, added))))
        reload()  # before the first renewal ran
        await asyncio.gather(*reload.renewals)
        reload()  # the same again: nothing renewed
        await asyncio.gather(*reload.renewals)
    assert forwarding.renewed == [(rotated,), (rotated, added)]
    assert [r.forwarding.webhooks for r, _ in others.renewals] == [(rotated,), (rotated, added)]
    assert all(r.port == 8123 and r.api_keys == running.api_keys for r, _ in others.renewals)
    changes = [(r["added"], r["removed"], r["changed"]) for r in logged if r["event"] == "webhooks_reloaded"]
    assert changes == [([], [], ["seller-a"]), (["seller-b"], [], [])]
    assert "secret-two" not in repr(logged) and "secret-b" not in repr(logged)
    assert not [r for r in logged if r["event"] == "settings_need_restart"]

    # no webhook endpoint (forwarding off): the webhooks wait for a start with forwarding
    bare = apiutil.test_settings()
    late = [bare]
    reload = server.KeyReload(lambda: late[-1], bare, KeyRing(bare.api_keys), bare.api_keys, (), None, None, None,
                              cast(Forwarding, _RenewedForwarding(endpoint=False)))  # fmt: skip
    late.append(dataclasses.replace(bare, forwarding=ForwardingSettings(webhooks=(hook,), max_repushes=5)))
    with capture_logs() as logged:
        reload()
    [stale] = [r for r in logged if r["event"] == "settings_need_restart"]
    assert stale["settings"] == ["forwarding.max_repushes", "forwarding.webhooks"]  # named down to what changed
    assert not [r for r in logged if r["event"] == "webhooks_reloaded"]



async def test_a_reload_puts_the_179_platforms_in_force_here_and_in_the_other_api_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A platform's URL token rotated, its key renewed in place, a platform removed, then SIGHUP: each put in force in
    the first process (the door, the worker's keys, the sandbox) and the other API processes started again with the
    platforms (their doors) — the log names the platforms, never a token. A key file that cannot be read changes
    nothing; the first platform of a gateway that had none, or the uploads' endpoint moved, wait for a restart."""
    from gateway.config import RealtimePlatform, RealtimeSettings
    from gateway.workers import platform_keys

    monkeypatch.setattr(server, "log", structlog.get_logger("gateway.server"))
    key_file, cert_file = tmp_path / "platform-key.pem", tmp_path / "platform-cert.pem"

    def write_key(name: str) -> bytes:
        key_pem, cert_pem = generate_test_key("rsa", name)
        key_file.write_bytes(key_pem)
        cert_file.write_bytes(cert_pem)
        return RsaSha1Key.from_pem(key_pem, cert_pem).certificate_der

    first_cert = write_key("platform")
    platform = RealtimePlatform("46012609BQ", "token-one-" + "1" * 16, key_file, cert_file)
    running = apiutil.test_settings(realtime=RealtimeSettings((platform,)))
    configured = [running]
    others = _OtherProcesses(running)
    put: list[tuple[RealtimeSettings, dict[str, bytes]]] = []
    uploads = server.RealtimeReload(running.realtime, platform_keys(running.realtime),
                                    lambda r, keys: put.append((r, {e: k.certificate_der for e, k in keys.items()})))
    reload = server.KeyReload(lambda: configured[-1], running, KeyRing(running.api_keys), running.api_keys, (),
                              cast(ApiProcesses, others), None, None, None, uploads)  # fmt: skip

    def realtime(*platforms: RealtimePlatform, endpoint: str = "realtime") -> Settings:
        return dataclasses.replace(running, realtime=RealtimeSettings(platforms, endpoint=endpoint))

    rotated = dataclasses.replace(platform, token="token-two-" + "2" * 16)
    with capture_logs() as logged:
        configured.append(realtime(rotated))
        reload()
        reload()  # the same again: nothing renewed
        renewed_cert = write_key("platform renewed")  # over the same files
        reload()
        configured.append(realtime(rotated, RealtimePlatform("46012609ZZ", "z" * 20, tmp_path / "none.pem",
                                                             tmp_path / "none-cert.pem")))  # fmt: skip
        reload()  # unreadable: nothing changes
        configured.append(realtime(rotated, endpoint="realtime-2"))
        reload()
        configured.append(realtime())
        reload()
        await asyncio.gather(*reload.renewals)
    assert [(r.platforms, certs) for r, certs in put] == [
        ((rotated,), {"46012609BQ": first_cert}), ((rotated,), {"46012609BQ": renewed_cert}), ((), {})]
    assert [r.realtime.platforms for r, _ in others.renewals] == [(rotated,), (rotated,), ()]
    changes = [(r["added"], r["removed"], r["changed"]) for r in logged if r["event"] == "realtime_platforms_reloaded"]
    assert changes == [([], [], ["46012609BQ"]), ([], [], ["46012609BQ"]), ([], ["46012609BQ"], [])]
    [refused] = [r for r in logged if r["event"] == "realtime_platforms_not_reloaded"]
    assert "none" in refused["error"]
    assert [r["settings"] for r in logged if r["event"] == "settings_need_restart"] == [["realtime"]]
    assert "token-two" not in repr(logged) and "token-one" not in repr(logged)

    # a gateway with no 179 platform has no route for the uploads: the first one waits for a restart
    bare = apiutil.test_settings()
    late = [bare, dataclasses.replace(bare, realtime=RealtimeSettings((platform,)))]
    none = server.RealtimeReload(bare.realtime, {}, lambda r, keys: put.append((r, {})))
    reload = server.KeyReload(lambda: late[-1], bare, KeyRing(bare.api_keys), bare.api_keys, (), None, None, None,
                              None, none)  # fmt: skip
    with capture_logs() as logged:
        reload()
    assert [r["settings"] for r in logged if r["event"] == "settings_need_restart"] == [["realtime"]]
    assert len(put) == 3


async def test_a_key_reload_during_a_half_done_renewal_hands_the_other_processes_the_key_in_force(
    tmp_path: Path,
) -> None:
    """An API key added while the signing key's files are half renewed (the new key beside the old certificate): the
    other API processes are started again for the key, and handed the signing key in force — they do not read the
    half-renewed files, so they start and sign as the first process does."""
    from gateway.api import PIPELINE

    key_file, cert_file, key_pem, cert_pem = _agent_files(tmp_path, "agent", days=30)
    running = apiutil.test_settings(data_dir=tmp_path, signing_key_file=key_file, signing_cert_file=cert_file)
    added = ApiKey("seller-new", "k-seller-new-" + "n" * 20, Role.SUBMITTER, frozenset({"E9"}))
    configured = [dataclasses.replace(running, api_keys=(*running.api_keys, added))]
    others = _OtherProcesses(running)
    app, signatures, reload = _reloading(running, configured, others)
    key_file.write_bytes(generate_test_key("rsa", "agent renewed", days=400)[0])  # its certificate not yet
    reload()
    await asyncio.gather(*reload.renewals)
    [(renewed, _)] = others.renewals
    assert added in renewed.api_keys
    [handed] = others.handed
    assert handed is signatures and handed.pem == ("rsa-sha1", key_pem, cert_pem)
    assert app[PIPELINE].signer is signatures.signer
    again = pickle.loads(pickle.dumps(handed))  # as the spawn pipe carries it
    assert again.signer.backend.certificate_der == signatures.signer.backend.certificate_der
    assert (again.agent_code, again.verify, again.trusted) == (handed.agent_code, handed.verify, handed.trusted)


async def test_a_reload_that_removes_the_trusted_certificates_renews_the_other_processes_without_them(
    tmp_path: Path,
) -> None:
    """Signatures verified against any certificate again (trusted_certs removed from the configuration): the other
    API processes are started again without the pin, not with the one they had."""
    from gateway.api import PIPELINE

    key_file, cert_file, _, cert_pem = _agent_files(tmp_path, "agent", days=30)
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(cert_pem)
    running = apiutil.test_settings(data_dir=tmp_path, signing_key_file=key_file, signing_cert_file=cert_file,
                                    verify_signatures=True, trusted_certs=bundle)  # fmt: skip
    configured = [running, dataclasses.replace(running, trusted_certs=None)]
    others = _OtherProcesses(running)
    app, _, reload = _reloading(running, configured, others)
    reload()
    await asyncio.gather(*reload.renewals)
    [(renewed, _)] = others.renewals
    assert renewed.trusted_certs is None and renewed.verify_signatures
    assert others.handed[0].trusted is None
    assert app[PIPELINE].trusted_certs is None

async def test_a_reload_gives_the_other_api_processes_the_renewed_signatures(tmp_path: Path) -> None:
    """The other API processes of `cbec serve --processes N` sign and verify with what the first process reads: a
    reload that finds the signing key or the trusted certificates changed starts them again with those settings (the
    API keys and their shared rates as they were); one that finds the same files with the same contents does not."""
    from gateway.api import PIPELINE

    key_file, cert_file, _, _ = _agent_files(tmp_path, "agent", days=30)
    running = apiutil.test_settings(data_dir=tmp_path, signing_key_file=key_file, signing_cert_file=cert_file)
    configured = [running]
    others = _OtherProcesses(running.with_overrides(port=8123, database_url="postgresql://first/db"))
    app, _, reload = _reloading(running, configured, others)

    async def reloaded() -> list[tuple[Settings, Any]]:
        reload()
        await asyncio.gather(*reload.renewals)
        return others.renewals

    assert await reloaded() == []  # the same key read again: nothing to renew
    _, _, key_pem, cert_pem = _agent_files(tmp_path, "agent renewed", days=400)  # over the same files
    [(renewed, rates)] = await reloaded()
    assert rates == "the rates shared at start" and renewed.api_keys == running.api_keys
    assert (renewed.port, renewed.database_url) == (8123, "postgresql://first/db")  # as the first process resolved
    assert (renewed.signing_key_file, renewed.signing_cert_file) == (key_file, cert_file)
    assert app[PIPELINE].signer.backend.certificate_der == RsaSha1Key.from_pem(key_pem, cert_pem).certificate_der
    # and handed the signatures in force, which they sign with rather than read the files again at their start
    assert others.handed[-1].signer.backend.certificate_der == app[PIPELINE].signer.backend.certificate_der

    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(cert_pem)
    configured.append(running.with_overrides(verify_signatures=True, trusted_certs=bundle))
    [_, (verifying, _)] = await reloaded()
    assert (verifying.verify_signatures, verifying.trusted_certs) == (True, bundle)
    pipeline = app[PIPELINE]
    assert pipeline.verify_signatures and list(pipeline.trusted_certs or ()) == signing.read_certificates(bundle)
    assert len(await reloaded()) == 2  # read again, unchanged


def test_a_worker_reload_says_which_forwarding_settings_wait_for_its_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """cbec worker on SIGHUP: a changed endpoint (its URL) or route waits for the restart, and the log says so — it
    said nothing (needing_restart names forwarding.endpoints, the check looked for forwarding), and the worker went on
    delivering to the old URL unannounced."""
    running = apiutil.test_settings(forwarding=ForwardingSettings(endpoints=(EndpointSettings(
        "customs", "customs", url="http://127.0.0.1:1/dxp"),)))  # fmt: skip
    moved = dataclasses.replace(running, forwarding=dataclasses.replace(running.forwarding, endpoints=(
        EndpointSettings("customs", "customs", url="http://127.0.0.1:2/dxp"),)))  # fmt: skip
    configured = [running]
    monkeypatch.setattr(server, "log", structlog.get_logger("gateway.server"))  # not one cached before the capture
    reload = server.WorkerReload(lambda: configured[-1], running, cast(Forwarding, None))
    with capture_logs() as logged:
        reload()
        configured.append(moved)
        reload()
    assert [r["settings"] for r in logged if r["event"] == "settings_need_restart"] == [["forwarding.endpoints"]]


async def test_processes_of_an_older_build_stop_once_a_newer_one_migrated_their_database(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade done host by host: a newer build migrates the database while a `cbec serve` and a `cbec worker` of the
    older one still run elsewhere. Only a start refused a newer database: the running ones went on, writing rows the
    new migrations do not expect. Now each sees the newer migrations (within SCHEMA_WATCH_S), stops — what runs
    finishes, with no drain: it would take writes meanwhile — and ends with NewerDatabase, which cbec answers with exit
    1 and a line; a restart refuses the database."""
    from gateway import db
    from gateway.cli import _database_unusable

    monkeypatch.setattr(server, "SCHEMA_WATCH_S", 0.05)
    # their logging set-up would cache the loggers they use (the queue's among them): a later test captures none
    monkeypatch.setattr(server.logs, "configure", lambda *_args, **_kw: None)
    settings = apiutil.test_settings(database_url=db_dsn, port=0, data_dir=tmp_path, log_format="json",
                                     forwarding=ForwardingSettings(enabled=False), shutdown_drain_s=60.0)  # fmt: skip
    ready, stop = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(serve(settings, ready=ready, stop=stop))
    worker_ready, worker_stop = asyncio.Event(), asyncio.Event()
    working = asyncio.create_task(run_worker(dataclasses.replace(settings, forwarding=ForwardingSettings()),
                                             sandbox_url="http://127.0.0.1:9", watchdog=False, ready=worker_ready,
                                             stop=worker_stop))  # fmt: skip
    pool = await db.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        await asyncio.wait_for(asyncio.gather(ready.wait(), worker_ready.wait()), 60)
        await asyncio.sleep(0.2)  # they look, and find nothing newer
        assert not serving.done() and not working.done()
        await pool.execute("INSERT INTO schema_migrations (name) VALUES ('999_from_a_later_release.sql')")
        for task in (serving, working):
            with pytest.raises(db.NewerDatabase, match=r"999_from_a_later_release\.sql are not this build's") as ended:
                await asyncio.wait_for(task, 20)  # not the 60 s of shutdown_drain_s
            assert _database_unusable(ended.value)
        assert stop.is_set() and worker_stop.is_set()
    finally:
        stop.set()
        worker_stop.set()
        for task in (serving, working):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 60)
        await pool.close()
    assert _signal_handlers_left() == []


async def test_a_worker_not_reloaded_yet_keeps_the_webhooks_of_a_seller_another_host_added(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several hosts, a seller's webhook added and SIGHUP sent to one host only (or to the others a little later):
    the reloaded `cbec serve` tells the new seller of its shipments, and a `cbec worker` not reloaded yet — which had
    no webhook of that seller — made each event a dead letter at once. Now an event made after the worker read its
    configuration waits for it (deferred, saying why) and goes once the worker is reloaded too; one made before (a
    seller removed since) is a dead letter, as before."""
    from gateway import db
    from gateway.forward import JobSpec
    from gateway.outbox import enqueue_all
    from gateway.sandbox.recorder import start_recorder

    monkeypatch.setattr(server.logs, "configure", lambda *_args, **_kw: None)
    monkeypatch.setattr(server, "log", structlog.get_logger("gateway.server"))
    monkeypatch.setattr(workers, "LATER_CONFIGURATION_RETRY_S", 0.1)
    recorder = await start_recorder()
    hook_a = WebhookSettings("seller-a", frozenset({"E1"}), recorder.url + "/a", "secret-a")
    hook_b = WebhookSettings("seller-b", frozenset({"E2"}), recorder.url + "/b", "secret-b")
    fwd = ForwardingSettings(webhooks=(hook_a,), worker_poll_s=0.05, webhook_allowed_networks=("127.0.0.1",))
    settings = apiutil.test_settings(database_url=db_dsn, data_dir=tmp_path, log_format="json", forwarding=fwd)
    configured = [settings]
    pool = await db.create_pool(db_dsn, min_size=1, max_size=2)

    async def event(n: int, seller: str) -> None:
        job = JobSpec("webhook", "webhook", {"seller": seller, "event": "test.event", "data": {"n": n},
                                             "id": f"delivery-{n}"}, f"test:{n}")  # fmt: skip
        async with pool.acquire() as conn:
            await enqueue_all(conn, [job])

    async def state(n: int) -> tuple[str, str]:
        row = await pool.fetchrow("SELECT state, coalesce(last_error, '') AS error FROM jobs WHERE dedupe_key = $1",
                                  f"test:{n}")  # fmt: skip
        return (row["state"], row["error"]) if row is not None else ("", "")

    async def is_(n: int, *states: str) -> bool:
        return (await state(n))[0] in states

    async def tried(n: int) -> bool:
        return (await state(n))[1] != ""

    await event(1, "seller-b")  # before the worker read its configuration: a seller removed since
    ready, stop = asyncio.Event(), asyncio.Event()
    with capture_logs() as logged:
        working = asyncio.create_task(run_worker(settings, sandbox_url="http://127.0.0.1:9", watchdog=False,
                                                 ready=ready, stop=stop, reload=lambda: configured[-1]))  # fmt: skip
        try:
            await asyncio.wait_for(ready.wait(), 60)
            await wait_for(lambda: is_(1, "dead"), what="the event of a seller removed a dead letter")
            await event(2, "seller-b")  # routed by a host reloaded with seller b, which this worker is not yet
            await wait_for(lambda: tried(2), what="the event tried")
            assert (await state(2))[0] == "queued" and "not in this process's configuration" in (await state(2))[1]
            configured.append(dataclasses.replace(settings, forwarding=dataclasses.replace(fwd,
                                                                                           webhooks=(hook_a, hook_b))))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(_said(logged, "webhooks_reloaded"), what="seller b in force")
            [got] = await recorder.wait_for(1, timeout=20, where=lambda r: b'"n":2' in r.body)
            assert got.path == "/b"
            await wait_for(lambda: is_(2, "done"), what="the event delivered")
            assert await is_(1, "dead")
        finally:
            stop.set()
            await asyncio.wait_for(working, 60)
            await pool.close()
            await recorder.stop()


async def test_a_stopping_gateway_says_so_to_the_load_balancer_and_answers_on_while_it_drains(
    db_dsn: str, tmp_path: Path
) -> None:
    """Behind a load balancer: on SIGTERM `cbec serve` closed its port at once (or answered /healthz 200 until it
    did), and the balancer's next requests found the host gone. Now /healthz answers 503 "stopping" from the start of
    the stop, and for shutdown_drain_s the process goes on answering every other request, so that the balancer's
    health checks take the host out first. An API process replaced by a reload (the others answering) neither says
    so nor waits."""
    from gateway.api import STOPPING

    settings = apiutil.test_settings(database_url=db_dsn, port=0, data_dir=tmp_path, log_format="json",
                                     forwarding=ForwardingSettings(enabled=False), shutdown_drain_s=1.0)  # fmt: skip
    ready, stop, info = asyncio.Event(), asyncio.Event(), dict[str, Any]()
    serving = asyncio.create_task(serve(settings, ready=ready, stop=stop, info=info))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        async with aiohttp.ClientSession() as session:
            async with session.get(info["url"] + "/healthz") as resp:
                assert resp.status == 200
            stop.set()
            await asyncio.sleep(0)  # the stop seen
            async with session.get(info["url"] + "/healthz") as resp:
                assert resp.status == 503 and (await resp.json())["status"] == "stopping"
            async with session.get(info["url"] + "/openapi.json") as resp:
                assert resp.status == 200  # still answered while the balancer takes the host out
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)
    app = web.Application()
    app[STOPPING] = asyncio.Event()
    replaced, done = asyncio.Event(), asyncio.Event()
    replaced.set()
    done.set()
    await asyncio.wait_for(server.drained(app, done, 60.0, replaced=replaced), 1)
    assert not app[STOPPING].is_set()
    assert config.load(None, env={"CBEC_SHUTDOWN_DRAIN_S": "15"}).shutdown_drain_s == 15
    with pytest.raises(ValueError, match="shutdown_drain_s"):
        config.load(None, env={"CBEC_SHUTDOWN_DRAIN_S": "-1"})
