"""End to end over HTTP on 127.0.0.1: documents in → held inventory → customs (the sandbox) → receipts back
through POST /v1/receipts → released; and `cbec serve` with its built-in sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters import dxp
from adapters.webhook import verify_signature
from gateway import samples
from gateway.api import OUTBOX
from gateway.config import RetrySettings, WebhookSettings
from gateway.sandbox import start_sandbox
from gateway.sandbox.receipts import build_receipt
from gateway.sandbox.recorder import start_recorder
from gateway.signing import RsaSha1Key, generate_test_key
from gateway.workers import submit_and_wait_released
from tests.apiutil import ADMIN, EBP_CODE, OPERATOR, PLATFORM_A, openapi_check
from tests.forwardutil import (
    CUSTOMS_KEY,
    SANDBOX_FAST,
    WAREHOUSE_KEY,
    Stack,
    key_path,
    legs,
    running_stack,
    shipment,
    version_of,
    wait_for,
)

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parent.parent


def logged(log: str, event: str) -> bool:
    """Whether a JSON log line of ``event`` is in the output."""
    for line in log.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                if json.loads(line).get("event") == event:
                    return True
    return False


def logged_records(log: str, event: str) -> list[dict[str, Any]]:
    """Every JSON log line of ``event``, as its object."""
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
    return found


def logged_fields(log: str, event: str, name: str) -> list[Any]:
    """The values of one field of every JSON log line of ``event``."""
    return [record.get(name) for record in logged_records(log, event)]


async def first_usable_receipt(stack: Stack, guid: str) -> Any:
    """When the gateway received the first receipt of status 2 or better for a message's document."""
    return await stack.fetchval(
        "SELECT min(r.received_at) FROM receipts AS r JOIN messages AS m ON m.id = r.message_id"
        " WHERE m.guid = $1 AND r.applied",
        guid,
    )


async def test_four_documents_in_any_order_end_released(db_dsn: str) -> None:
    async with running_stack(db_dsn) as stack:
        ships = [shipment(101, "9610"), shipment(102, "1210")]
        payloads = [p for s in ships for p in legs(s)]
        random.Random(7).shuffle(payloads)
        for p in payloads:
            await stack.submit(p)
        for s in ships:
            await stack.wait_status(s, "released")
        await stack.sandbox.wait_idle()

        for s in ships:
            # the inventory left only after the order, payment and waybill had a receipt
            inv_sent = await stack.fetchval(
                "SELECT min(a.started_at) FROM job_attempts AS a JOIN jobs AS j ON j.id = a.job_id"
                " WHERE j.dedupe_key = $1",
                f"customs:{s.inventory['guid']}",
            )
            legs_receipted = [await first_usable_receipt(stack, p["guid"]) for p in (s.order, s.payment, s.waybill)]
            assert None not in legs_receipted and inv_sent is not None
            assert inv_sent > max(legs_receipted)

            body = await stack.shipment(s)
            assert body["state"] == "matched" and body["customs_status"] == "released"
            docs = {d["kind"]: d for d in body["documents"] if d["is_current"]}
            assert docs["inventory"]["customs"]["code"] == "800"
            assert docs["inventory"]["customs"]["name"] == "released"
            assert docs["inventory"]["invt_no"] and docs["inventory"]["pre_no"]
            for kind in ("order", "payment", "waybill"):
                assert docs[kind]["forward_state"] == "receipted" and docs[kind]["customs"]["code"] == "120"
            customs_jobs = [t for t in docs["inventory"]["transmissions"] if t["endpoint"] == "customs"]
            assert len(customs_jobs) == 1 and customs_jobs[0]["state"] == "done"
            assert customs_jobs[0]["history"][0]["outcome"] == "ok"
            statuses = [r["return_status"] for r in docs["inventory"]["receipts"]]
            assert statuses == ["2", "120", "399", "800"]
            # customs' tax bill, sent after the release, is the gateway's estimate: beside it, no finding; its status
            # change (CEB818) consolidated it into a payment slip
            (bill,) = body["tax_bills"]
            assert (bill["invtNo"], bill["status_name"], bill["findings"]) == (docs["inventory"]["invt_no"],
                                                                               "consolidated", [])  # fmt: skip
            assert bill["entDutyNo"]
            taxes = ("customsTax", "valueAddedTax", "consumptionTax", "total")
            assert [bill[t] for t in taxes] == [bill["estimate"][t] for t in taxes]
            assert not any(f["code"] == "tax.bill_differs" for f in body["findings"])

        # everything stored: 2 + 2 + 2 + 4 receipts, a tax bill and its status change per shipment, each once
        assert await stack.fetchval("SELECT count(*) FROM receipts") == 12 * len(ships)
        assert await stack.fetchval("SELECT count(*) FROM receipts WHERE outcome <> 'applied'") == 0
        stats = stack.sandbox.stats()
        assert stats["duplicates"] == {}
        assert stats["by_type"] == {"CEB311Message": 2, "CEB411Message": 2, "CEB511Message": 2, "CEB621Message": 2}
        # bonded (1210) went to inspection too; both released shipments got their outbound warehouse order
        assert [r["messageGuid"] for r in stack.sandbox.sandbox.inspection] == [ships[1].inventory["guid"]]
        await stack.wait_sql("SELECT count(*) = 2 FROM jobs WHERE endpoint = 'warehouse' AND state = 'done'")
        assert stats["warehouse"]["orders"] == 2 or stack.sandbox.stats()["warehouse"]["orders"] == 2
        for s in ships:  # each to its order's and waybill's 收货人, naming its inventory by customs' numbers
            o = s.order_doc
            [sent] = [w for w in stack.sandbox.sandbox.warehouse if w["reference"]["orderNo"] == o["orderNo"]]
            assert sent["consignee"] == {"name": o["consignee"], "telephone": o["consigneeTelephone"],
                                         "address": o["consigneeAddress"]}  # fmt: skip
            inventory = next(d for d in (await stack.shipment(s))["documents"] if d["kind"] == "inventory")
            assert (sent["reference"]["invtNo"], sent["reference"]["preNo"]) == (inventory["invt_no"],
                                                                                 inventory["pre_no"])  # fmt: skip


async def test_api_roles_receipts_and_queue(db_dsn: str) -> None:
    async with running_stack(db_dsn, worker=False) as stack:
        c = stack.client
        # a customs key posts receipts only; submitters may not post receipts
        assert (await c.get("/v1/shipments", key=CUSTOMS_KEY)).status == 403
        assert (await c.request("POST", "/v1/receipts", key=PLATFORM_A, data=b"<x/>")).status == 403
        bad = await c.request("POST", "/v1/receipts", key=CUSTOMS_KEY, data=b"<not xml",
                              content_type="application/xml")  # fmt: skip
        assert bad.status == 400 and bad.body["error"]["issues"][0]["code"].startswith("parse.")
        s = shipment(103)
        order_xml = (await c.get(f"/v1/messages/{(await stack.submit(s.order)).body['guid']}")).body["raw_xml"]
        declared = await c.request("POST", "/v1/receipts", key=CUSTOMS_KEY, data=order_xml.encode(),
                                   content_type="application/xml")  # fmt: skip
        assert declared.status == 422 and declared.body["error"]["issues"][0]["code"] == "rule.not_a_receipt"
        # queue pages: operators and admins
        assert (await c.get("/v1/queue", key=PLATFORM_A)).status == 403
        queue = await c.get("/v1/queue", key=OPERATOR)
        by = {e["endpoint"]: e for e in queue.body["endpoints"]}
        assert by["customs"]["queued"] == 1  # no worker runs here: the order waits
        assert (await c.get("/v1/queue/dead?limit=x", key=OPERATOR)).status == 400
        assert (await c.get("/v1/queue/dead", key=ADMIN)).body["items"] == []
        assert (await c.request("POST", "/v1/queue/replay", key=ADMIN, json_body={})).status == 400
        assert (await c.request("POST", "/v1/queue/replay", key=ADMIN, json_body={"job_ids": ["1"]})).status == 400
        # numbers beyond what the database holds are the client's error, not the server's
        assert (await c.get(f"/v1/queue/dead?offset={2**64}", key=ADMIN)).status == 400
        for ids in ([2**63], [True], [0]):
            assert (await c.request("POST", "/v1/queue/replay", key=ADMIN, json_body={"job_ids": ids})).status == 400
        replayed = await c.request("POST", "/v1/queue/replay", key=OPERATOR, json_body={"all": True})
        assert replayed.status == 200 and replayed.body == {"replayed": 0, "job_ids": []}
        spec = (await c.get("/openapi.json")).body
        assert {"/v1/receipts", "/v1/queue", "/v1/queue/dead", "/v1/queue/replay"} <= set(spec["paths"])


async def test_a_receipt_twice_answers_already_stored(db_dsn: str) -> None:
    async with running_stack(db_dsn) as stack:
        stack.sandbox.config.receipt_url = None  # receipts only recorded: this test posts them itself
        s = shipment(104)
        await stack.submit(s.order)
        await stack.wait_sql("SELECT count(*) = 1 FROM jobs WHERE state = 'done'")
        await stack.sandbox.wait_idle()
        receipts = stack.sandbox.sandbox.receipts
        assert [r["status"] for r in receipts] == ["2", "120"]
        xml = receipts[1]["xml"].encode()
        env = dxp.wrap(xml, msg_type="CEB312Message", sender_id=dxp.IMPORT_RECEIVER, receiver_ids=["DXPENT0000000001"],
                       cop_msg_id="C-1", created=datetime.now(dxp.CHINA_TZ))  # fmt: skip
        first = await stack.client.request("POST", "/v1/receipts", key=CUSTOMS_KEY, data=env,
                                           content_type="application/xml")  # fmt: skip
        assert first.status == 200 and first.body["stored"] == 1 and first.body["cop_msg_id"] == "C-1"
        assert first.body["receipts"][0]["outcome"] == "applied"
        again = await stack.client.request("POST", "/v1/receipts", key=ADMIN, data=xml, content_type="application/xml")
        assert again.status == 200 and again.body["already_stored"] == 1
        assert again.body["receipts"][0]["outcome"] == "duplicate"
        assert await stack.fetchval("SELECT count(*) FROM receipts") == 1


async def test_webhooks_tell_the_seller(db_dsn: str) -> None:
    recorder = await start_recorder()
    try:
        seller_code = shipment(105).order_doc["ebcCode"]
        hook = WebhookSettings("seller-a", frozenset({seller_code}), recorder.url + "/hook", "k1")
        async with running_stack(db_dsn, forwarding={"webhooks": (hook,)}) as stack:
            assert stack.forwarding is not None and "webhook" in {e.name for e in stack.forwarding.endpoints}
            s = shipment(105)
            for p in legs(s):
                await stack.submit(p)
            await stack.wait_status(s, "released")
            got = await recorder.wait_for(1, timeout=10, where=lambda r: b'"released"' in r.body)
            req = got[0]
            assert verify_signature("k1", req.body, req.headers["X-CBEC-Signature"],
                                    timestamp=req.headers["X-CBEC-Timestamp"])  # fmt: skip
            event = json.loads(req.body)
            assert event["event"] == "shipment.customs_status_changed"
            assert event["data"]["orderNo"] == s.order_doc["orderNo"] and event["data"]["customsStatus"] == "released"

            # then the warehouse's progress on the released inventory's outbound order, in the order it went
            def warehouse(r: Any) -> bool:
                return b"shipment.warehouse_status_changed" in r.body

            got = await recorder.wait_for(2, timeout=10, where=warehouse)
            steps = [json.loads(r.body)["data"] for r in got]
            assert [(d["previous"], d["status"]) for d in steps] == [(None, "accepted"), ("accepted", "shipped")]
            assert {(d["ebpCode"], d["orderNo"], d["direction"]) for d in steps} == {
                (s.order_doc["ebpCode"], s.order_doc["orderNo"], "outbound")}
            assert steps[0]["warehouseOrderNo"] and steps[0]["orderId"] == steps[1]["orderId"]
            assert all(verify_signature("k1", r.body, r.headers["X-CBEC-Signature"],
                                        timestamp=r.headers["X-CBEC-Timestamp"]) for r in got)  # fmt: skip
            # told again of nothing: the same callback once more, and one behind the order's furthest status
            inventory = s.inventory_doc
            for status in ("shipped", "picked"):
                body = {"schema": "cbec.warehouse-callback.v1", "orderId": steps[1]["orderId"],
                        "warehouseOrderNo": steps[1]["warehouseOrderNo"], "direction": "outbound", "status": status,
                        "occurredAt": steps[1]["occurredAt"] if status == "shipped" else "2026-01-01T00:00:00+08:00",
                        "reference": {"messageType": "CEB621", "guid": inventory["guid"]}}  # fmt: skip
                reply = await stack.client.request("POST", "/v1/warehouse/callbacks", key=WAREHOUSE_KEY,
                                                   json_body=body)  # fmt: skip
                assert reply.status == 200 and reply.body["status"] == "shipped", reply.body
            await stack.wait_sql("SELECT count(*) = 0 FROM jobs WHERE state NOT IN ('done', 'dead')")
            assert len([r for r in recorder.requests if warehouse(r)]) == 2
    finally:
        await recorder.stop()



async def test_a_seller_hears_its_shipment_mismatched_and_matched_again_before_its_release(db_dsn: str) -> None:
    """三单对碰 fails — the payment's amount is not the order's —: the inventory is held and no customs status moves,
    but the sellers hear the shipment mismatched, each with the blocking findings as its API key sees them (a seller
    holding the order's and the inventory's codes, not the payment's, gets the payment's value withheld; the platform,
    a party of every leg, what GET /v1/shipments answers its key); nothing more while the waybill and the inventory
    come and it stays so; then matched when the payment is put right, and released at last — each signed, in the
    order it happened."""
    import jsonschema

    from gateway.openapi import OPENAPI

    recorder = await start_recorder()
    try:
        s = shipment(141)
        bad = samples.broken(s, "amount_mismatch")
        seller = WebhookSettings("seller-a", frozenset({s.order_doc["ebcCode"]}), recorder.url + "/seller", "k1")
        platform = WebhookSettings("platform-a", frozenset({EBP_CODE, s.order_doc["ebcCode"]}),
                                   recorder.url + "/platform", "k2")  # fmt: skip
        secrets = {"/seller": "k1", "/platform": "k2"}

        def reconciliation(r: Any) -> bool:
            return b"shipment.reconciliation_changed" in r.body

        async with running_stack(db_dsn, forwarding={"webhooks": (seller, platform)}) as stack:
            for p in (s.order, bad.payment, s.waybill, s.inventory):
                reply = await stack.submit(p)
                assert reply.body["shipments"][0]["state"] == "mismatched" or p is s.order, reply.body
            got = await recorder.wait_for(2, timeout=10, where=reconciliation)
            by_path = {r.path: json.loads(r.body)["data"] for r in got}
            assert set(by_path) == {"/seller", "/platform"}
            view = (await stack.client.get(key_path(s), key=PLATFORM_A)).body
            blocking = [f for f in view["findings"] if f["blocking"]]
            assert blocking and all(f["code"] == "recon.amount_paid_mismatch" for f in blocking), blocking
            assert by_path["/platform"] == {"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"],
                                            "state": "mismatched", "previous": "incomplete",
                                            "missing": ["waybill", "inventory"],
                                            "findings": blocking}  # fmt: skip
            paid = bad.payment_doc["amountPaid"]
            assert paid in json.dumps(blocking) and paid not in json.dumps(by_path["/seller"])
            for f in by_path["/seller"]["findings"]:
                withheld = [side for side in (f["left"], f["right"]) if side and side.get("withheld")]
                assert [side["doc"] for side in withheld] == ["CEB411"], f
            held = next(d for d in (await stack.shipment(s))["documents"] if d["kind"] == "inventory")
            assert held["forward_state"] == "held"

            await stack.submit(version_of(s.payment, "2", 30))  # the amount put right: matched
            await stack.wait_status(s, "released")
            await stack.wait_sql("SELECT count(*) = 0 FROM jobs WHERE endpoint = 'webhook' AND state <> 'done'")
            for path, secret in secrets.items():
                events = [json.loads(r.body) for r in recorder.requests if r.path == path]
                for event in events:  # as /openapi.json describes them
                    post = OPENAPI["webhooks"][event["event"]]["post"]
                    jsonschema.validate(event, post["requestBody"]["content"]["application/json"]["schema"])
                assert all(verify_signature(secret, r.body, r.headers["X-CBEC-Signature"],
                                            timestamp=r.headers["X-CBEC-Timestamp"])
                           for r in recorder.requests if r.path == path)  # fmt: skip
                told = [(e["event"].removeprefix("shipment."), e["data"].get("state") or e["data"].get("customsStatus"))
                        for e in events]  # fmt: skip
                # the warehouse's word comes after the release; the order's "declared" whenever it went
                told = [t for t in told if t[0] != "warehouse_status_changed" and t != ("customs_status_changed",
                                                                                     "declared")]  # fmt: skip
                assert told == [("reconciliation_changed", "mismatched"), ("reconciliation_changed", "matched"),
                                ("customs_status_changed", "accepted"), ("customs_status_changed", "released")], told
                again = next(e["data"] for e in events if e["data"].get("state") == "matched")
                assert (again["previous"], again["missing"], again["findings"]) == ("mismatched", [], [])
    finally:
        await recorder.stop()


async def test_a_seller_who_declares_a_refused_inventory_anew_sees_it_declared_once_sent(db_dsn: str) -> None:
    """Customs (the sandbox, its annual limit spent once) refuses the inventory (-621018): the shipment is rejected.
    The seller declares it anew (appType 1, a newer appTime), and once the new inventory is sent — before customs
    says a word of it: its receipts held back at the relay — the shipment is declared on the API, on the console's
    counts and on the seller's webhook; then, customs' receipts delivered, accepted and released."""
    from tests.consoleutil import ConsoleClient

    recorder = await start_recorder()
    try:
        s = shipment(150)
        hook = WebhookSettings("seller-a", frozenset({s.order_doc["ebcCode"]}), recorder.url + "/hook", "k1")

        def status_changes(r: Any) -> bool:
            return b"shipment.customs_status_changed" in r.body

        async with running_stack(db_dsn, forwarding={"webhooks": (hook,)},
                                 sandbox_config={"annual_limit": Decimal(0)}) as stack:  # fmt: skip
            sandbox = stack.sandbox.sandbox
            for p in legs(s):
                await stack.submit(p)
            await stack.wait_status(s, "rejected")
            [refused] = [d for d in (await stack.shipment(s))["documents"] if d["kind"] == "inventory"]
            assert refused["customs"]["code"] == "-621018", refused
            await recorder.wait_for(2, timeout=10, where=status_changes)  # declared (its legs), rejected
            sandbox.config.annual_limit = Decimal(26000)
            relay, sandbox.config.receipt_url = sandbox.config.receipt_url, None  # customs' word held back for now
            again = version_of(s.inventory, "1", 60)
            await stack.submit(again)
            guid = again["documents"][0]["guid"]
            await stack.wait_sql("SELECT forward_state = 'sent' FROM documents WHERE doc_guid = $1", guid)
            view = await stack.shipment(s)
            assert view["customs_status"] == "declared" and view["customs_info"] is None, view
            assert not [d for d in view["documents"] if d["doc_guid"] == guid and d["receipts"]]
            console = ConsoleClient(stack.base)
            try:
                assert (await console.sign_in(OPERATOR)).status == 303
                counts = (await console.get_json("/ops/api/summary"))["shipments"]["by_customs_status"]
            finally:
                await console.close()
            assert counts == {"declared": 1}, counts
            got = await recorder.wait_for(3, timeout=10, where=status_changes)
            assert [(json.loads(r.body)["data"]["previous"], json.loads(r.body)["data"]["customsStatus"])
                    for r in got] == [("pending", "declared"), ("declared", "rejected"), ("rejected", "declared")]
            # the relay delivers customs' receipts of the new inventory now
            await stack.sandbox.wait_idle()
            held = [r for r in sandbox.receipts if r["delivered"] is False and r["code"] == "CEB622"]
            assert [r["status"] for r in held] == ["2", "120", "399", "800"], held
            for r in held:
                reply = await stack.client.request("POST", "/v1/receipts", key=CUSTOMS_KEY, data=r["xml"].encode(),
                                                   content_type="application/xml")  # fmt: skip
                assert reply.status == 200 and reply.body["receipts"][0]["outcome"] == "applied", reply.body
            sandbox.config.receipt_url = relay
            await stack.wait_status(s, "released")
            got = await recorder.wait_for(5, timeout=10, where=status_changes)
            assert [json.loads(r.body)["data"]["customsStatus"] for r in got] == [
                "declared", "rejected", "declared", "accepted", "released"]
    finally:
        await recorder.stop()


async def test_webhooks_renewed_while_running_tell_the_sellers_configured_now(db_dsn: str) -> None:
    """The sellers' webhooks put in force while the gateway runs (what a reload does: Forwarding.renew_webhooks): a
    rotated secret signs the next event, a seller added hears of its shipments, one removed hears nothing more; a
    gateway that had no webhooks at start tells the first seller put in force (no restart needed)."""

    def released(r: Any) -> bool:
        return b'"released"' in r.body

    recorder = await start_recorder()
    try:
        code = shipment(106).order_doc["ebcCode"]
        first = WebhookSettings("seller-a", frozenset({code}), recorder.url + "/hook-a", "k1")
        async with running_stack(db_dsn, forwarding={"webhooks": (first,)}) as stack:
            assert stack.forwarding is not None
            s = shipment(106)
            for p in legs(s):
                await stack.submit(p)
            await stack.wait_status(s, "released")
            [before] = await recorder.wait_for(1, timeout=10, where=released)
            assert verify_signature("k1", before.body, before.headers["X-CBEC-Signature"],
                                    timestamp=before.headers["X-CBEC-Timestamp"])  # fmt: skip

            rotated = WebhookSettings("seller-a", frozenset({code}), recorder.url + "/hook-a", "k2")
            added = WebhookSettings("seller-b", frozenset({code}), recorder.url + "/hook-b", "kb")
            assert stack.forwarding.renew_webhooks((rotated, added))
            s2 = shipment(107)
            for p in legs(s2):
                await stack.submit(p)
            await stack.wait_status(s2, "released")
            got = await recorder.wait_for(3, timeout=10, where=released)
            by_path = {r.path: r for r in got[1:]}
            assert set(by_path) == {"/hook-a", "/hook-b"}
            for path, secret in (("/hook-a", "k2"), ("/hook-b", "kb")):
                r = by_path[path]
                assert verify_signature(secret, r.body, r.headers["X-CBEC-Signature"],
                                        timestamp=r.headers["X-CBEC-Timestamp"]), path  # fmt: skip
                assert json.loads(r.body)["data"]["orderNo"] == s2.order_doc["orderNo"]
            assert not verify_signature("k1", by_path["/hook-a"].body, by_path["/hook-a"].headers["X-CBEC-Signature"],
                                        timestamp=by_path["/hook-a"].headers["X-CBEC-Timestamp"])  # fmt: skip

            async def settled() -> bool:  # s2's warehouse order shipped and every event of it delivered
                docs = (await stack.shipment(s2))["documents"]
                shipped = any(o["status"] == "shipped" for d in docs for o in d.get("warehouse_orders", []))
                return shipped and await stack.fetchval(
                    "SELECT count(*) = 0 FROM jobs WHERE endpoint = 'webhook' AND state NOT IN ('done', 'dead')")

            await wait_for(settled, timeout=10, what="the second shipment's events delivered")
            assert stack.forwarding.renew_webhooks(())  # every seller removed
            s3 = shipment(108)
            for p in legs(s3):
                await stack.submit(p)
            await stack.wait_status(s3, "released")
            await stack.wait_sql("SELECT count(*) = 0 FROM jobs WHERE state NOT IN ('done', 'dead')")
            assert len([r for r in recorder.requests if released(r)]) == 3
            assert await stack.fetchval("SELECT count(*) FROM jobs WHERE endpoint = 'webhook' AND state = 'dead'") == 0
        async with running_stack(db_dsn) as bare:  # no seller had a webhook at its start
            assert bare.app[OUTBOX].router is not None and bare.app[OUTBOX].router.webhooks == ()
            assert bare.forwarding is not None and bare.forwarding.renew_webhooks((first,))
            s4 = shipment(109)
            for p in legs(s4):
                await bare.submit(p)
            await bare.wait_status(s4, "released")
            late = (await recorder.wait_for(4, timeout=10, where=released))[3]
            assert late.path == "/hook-a"
            assert verify_signature("k1", late.body, late.headers["X-CBEC-Signature"],
                                    timestamp=late.headers["X-CBEC-Timestamp"])  # fmt: skip
            assert json.loads(late.body)["data"]["orderNo"] == s4.order_doc["orderNo"]
    finally:
        await recorder.stop()

SERVE_TOML = """
log_format = "json"
log_level = "info"
port = {port}

[[api_keys]]
name = "admin"
key = "{key}"
role = "admin"

[forwarding]
sandbox_port = {sandbox_port}
sandbox_receipt_delay_s = 0.005
worker_poll_s = 0.05
watchdog_interval_s = 0.2
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_cbec_serve_runs_its_own_sandbox(db_dsn: str, tmp_path: Path) -> None:
    """`cbec serve` without a customs endpoint: the sandbox in-process, receipts back with an internal key; for a
    179 platform configured, the sandbox asks about its order at the platform's URL and takes the signed upload.

    A real `cbec serve` process (it configures logging for its whole process, which tests must not)."""
    port, sandbox_port = free_port(), free_port()
    cfg = tmp_path / "cbec.toml"
    key_pem, cert_pem = generate_test_key("rsa", "platform 179")
    (tmp_path / "platform-key.pem").write_bytes(key_pem)
    (tmp_path / "platform-cert.pem").write_bytes(cert_pem)
    platform = (f'\n[realtime.platforms.{EBP_CODE}]\ntoken = "serve-test-token-0123456789"\n'
                f'key_file = "{tmp_path / "platform-key.pem"}"\ncert_file = "{tmp_path / "platform-cert.pem"}"\n')
    cfg.write_text(SERVE_TOML.format(port=port, key=ADMIN, sandbox_port=sandbox_port) + platform, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEC_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--database-url", db_dsn,
        "--data-dir", str(tmp_path / "var"), cwd=str(ROOT), env={**env, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url, sandbox_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/healthz") as resp:
                        return resp.status == 200
                return False

            await wait_for(up, timeout=30, what="cbec serve")
            ships = [shipment(106), shipment(107, "1210")]
            async with session.post(url + "/v1/payment-data", json=samples.payment_data(ships[0]),
                                    headers={"X-API-Key": ADMIN}) as resp:  # fmt: skip
                assert resp.status == 201, await resp.text()
            run = await submit_and_wait_released(url, ADMIN, ships, concurrency=2, timeout_s=30, poll_s=0.05,
                                                 session=session)  # fmt: skip
            assert run.released == 2 and run.not_released == [] and len(run.latencies_s) == 2
            assert run.as_dict()["latency_p50_s"] is not None
            async with session.get(url + key_path(ships[0]), headers={"X-API-Key": ADMIN}) as resp:
                body = await resp.json()
            assert body["customs_status"] == "released"
            for _ in range(200):  # released: the tax bills and their status changes still follow
                async with session.get(sandbox_url + "/sandbox/stats") as resp:
                    stats = await resp.json()
                if not stats["receipts"]["pending"]:
                    break
                await asyncio.sleep(0.05)
            assert stats["receipts"]["delivered"] == stats["receipts"]["generated"] > 0
            assert stats["duplicates"] == {}

            async def warehouse_shipped() -> bool:  # the sandbox's warehouse reports back with a key of its own
                async with session.get(url + key_path(ships[1]), headers={"X-API-Key": ADMIN}) as resp:
                    docs = (await resp.json())["documents"]
                return any(o["status"] == "shipped" for d in docs for o in d["warehouse_orders"])

            await wait_for(warehouse_shipped, timeout=20, what="the warehouse's callbacks")

            async def payment_uploaded() -> bool:  # customs (the sandbox) asked about the order, took the upload
                order = ships[0].order_doc
                async with session.get(f"{url}/v1/payment-data/{order['ebpCode']}/{order['orderNo']}",
                                       headers={"X-API-Key": ADMIN}) as resp:  # fmt: skip
                    questions = (await resp.json()).get("questions", [])
                return [q["state"] for q in questions] == ["uploaded"]

            await wait_for(payment_uploaded, timeout=20, what="the 179 upload")
            async with session.get(sandbox_url + "/sandbox/realtime") as resp:
                [upload] = (await resp.json())["uploads"]
            assert upload["code"] == "10000" and upload["verified"], upload
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    log = err.decode()
    assert proc.returncode == 0, log[-2000:]
    assert logged(log, "customs_sandbox")
    # the sandbox kept what it released in the data folder (<data_dir>/sandbox), to go on from it when started again
    state = json.loads((tmp_path / "var" / "sandbox" / "state.json").read_bytes())
    assert sorted(key for key, _ in state["tables"]["inventories"]) == sorted(
        [s.inventory_doc["ebcCode"], s.inventory_doc["orderNo"]] for s in ships)
    # no error, and no callback refused or unlinked
    assert not [e for e in log.splitlines()
                if '"level":"error"' in e or ('"level":"warning"' in e and "warehouse_callback" in e)]  # fmt: skip
    # every request line carries its request id; a submission also its message guid and shipment key
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    posts = [e for e in events if e.get("event") == "request" and e.get("path") == "/v1/messages"]
    assert len(posts) == 8, posts[:2]
    keys = {key_path(s).removeprefix("/v1/shipments/") for s in ships}
    assert all(e["request_id"] and e["guid"] and e["shipment"] in keys for e in posts), posts[:2]
    # the platform's token is no part of the log (whoever reads it could make the gateway upload); nor is
    # the internal customs key (secrets.token_urlsafe(32): 43 characters)
    assert "serve-test-token-0123456789" not in log and '"path":"/ceb/platDataOpen/***"' in log
    assert not re.search(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", log)


async def _serve_two_processes(
    db_dsn: str, tmp_path: Path, port: int, log_file: Path, *, extra_keys: str = ""
) -> tuple[asyncio.subprocess.Process, Any]:
    """`cbec serve --processes 2` on ``port`` (its sandbox on a free one), logging to ``log_file`` — a file, not a
    pipe read at the end: three processes log every request, and a full pipe would block them. ``extra_keys``: more
    ``[[api_keys]]`` tables for the configuration."""
    cfg = tmp_path / "cbec.toml"
    config = SERVE_TOML.format(port=port, key=ADMIN, sandbox_port=free_port())
    cfg.write_text(config.replace("[forwarding]", extra_keys + "\n[forwarding]"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEC_")}
    log_out = log_file.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--database-url", db_dsn,
        "--data-dir", str(tmp_path / "var"), "--processes", "2", cwd=str(ROOT), env={**env, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.DEVNULL, stderr=log_out,
    )  # fmt: skip
    return proc, log_out


async def answering_processes(session: aiohttp.ClientSession, url: str, n: int = 20) -> set[int]:
    """The pids of the processes answering ``n`` GET /healthz (a session whose connections are not kept: the kernel
    picks a process for each)."""
    seen = set()
    for _ in range(n):
        with contextlib.suppress(aiohttp.ClientError):  # e.g. reset by a process being stopped
            async with session.get(url + "/healthz") as resp:
                seen.add((await resp.json())["process"])
    return seen


async def _stop_two_processes(proc: asyncio.subprocess.Process, log_out: Any, log_file: Path) -> str:
    """SIGTERM (a normal stop) to what _serve_two_processes started; its log, the tail printed (shown on a failure)."""
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 40)
    log_out.close()
    log = log_file.read_text()
    print(log[-20000:])
    return log


async def test_a_normal_stop_of_two_processes_answers_what_either_had_in_flight(db_dsn: str, tmp_path: Path) -> None:
    """SIGTERM while messages are on their way into the store (held there by a lock on the messages table): both
    processes answer each of them 202 once it is stored — the other API process's link to the first's store closed
    only after its requests in flight were answered (they were 503 "the database is unavailable", though stored)."""
    import asyncpg

    port = free_port()
    log_file = tmp_path / "serve.log"
    proc, log_out = await _serve_two_processes(db_dsn, tmp_path, port, log_file)
    url = f"http://127.0.0.1:{port}"
    orders = [samples.render_shipment(shipment(120 + i))["CEB311"] for i in range(12)]
    try:
        fresh = aiohttp.TCPConnector(force_close=True)  # a new connection per request: the kernel picks a process
        async with aiohttp.ClientSession(connector=fresh, timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def both_up() -> bool:
                return len(await answering_processes(session, url, 10)) == 2

            await wait_for(both_up, timeout=40, what="two API processes")

            async def post(xml: bytes) -> tuple[int, str]:
                async with session.post(url + "/v1/messages", data=xml, headers={
                        "X-API-Key": ADMIN, "Content-Type": "application/xml"}) as resp:  # fmt: skip
                    return resp.status, await resp.text()

            holder = await asyncpg.connect(db_dsn)
            try:
                held = holder.transaction()
                await held.start()
                await holder.execute("LOCK TABLE messages IN SHARE MODE")  # the ingest's inserts wait
                posts = [asyncio.create_task(post(xml)) for xml in orders]
                await asyncio.sleep(1.0)  # every one of them checked and waiting on the store
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(1.5)
                await held.rollback()
            finally:
                await holder.close()
            answers = await asyncio.gather(*posts)
    finally:
        log = await _stop_two_processes(proc, log_out, log_file) if proc.returncode is None else log_file.read_text()
    assert [status for status, _ in answers] == [202] * len(orders), answers
    assert "ingest link closed" not in log
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE message_type = 'CEB311'") == len(orders)
    finally:
        await conn.close()


async def test_a_second_gateway_does_not_share_a_port_another_listens_on(db_dsn: str, tmp_path: Path) -> None:
    """SO_REUSEPORT let a second gateway (`--processes 2`, another database) bind the port of a running one, the
    two taking turns answering; a taken port now stops `cbec serve` with one line."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a gateway's own processes bind it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log_file = tmp_path / "serve.log"
        proc, log_out = await _serve_two_processes(db_dsn, tmp_path, port, log_file)
        try:
            assert await asyncio.wait_for(proc.wait(), 60) == 1
        finally:
            if proc.returncode is None:
                proc.kill()
            log_out.close()
    assert f"cbec: cannot listen on 127.0.0.1:{port}" in log_file.read_text()


async def test_cbec_serve_processes_share_port_sessions_and_flow(db_dsn: str, tmp_path: Path) -> None:
    """`cbec serve --processes 2`: two API processes on one port (SO_REUSEPORT). Connections land on either;
    legs submitted to either reconcile and are released (receipts reach either), every one stored by the first
    process's store (the other reaches it over the ingest link, and so does its replacement); a console session
    made on one works on the other; /metrics, whichever process answers, counts the requests of both, and its
    counters do not go down when a killed API process is replaced; SIGTERM stops them all."""
    port = free_port()
    log_file = tmp_path / "serve.log"
    proc, log_out = await _serve_two_processes(db_dsn, tmp_path, port, log_file)
    url = f"http://127.0.0.1:{port}"
    fresh = aiohttp.TCPConnector(force_close=True)  # a new connection per request: the kernel picks a process
    try:
        async with aiohttp.ClientSession(connector=fresh, timeout=aiohttp.ClientTimeout(total=10)) as session:

            healthz_ok = 0  # /healthz answers 200 received, from either process

            async def pids(n: int) -> set[int]:
                nonlocal healthz_ok
                seen = set()
                for _ in range(n):
                    with contextlib.suppress(aiohttp.ClientError):  # e.g. reset by the process being killed
                        async with session.get(url + "/healthz") as resp:
                            if resp.status == 200:
                                seen.add((await resp.json())["process"])
                                healthz_ok += 1
                return seen

            async def healthz_counted() -> list[float]:
                """cbec_http_requests_total of /healthz 200 as 12 scrapes (fresh connections) see it."""
                seen = []
                for _ in range(12):
                    async with session.get(url + "/metrics") as resp:
                        assert resp.status == 200
                        text = await resp.text()
                    seen.append(sum(
                        s.value for f in text_string_to_metric_families(text) for s in f.samples
                        if s.name == "cbec_http_requests_total" and s.labels.get("route") == "/healthz"
                        and s.labels.get("status") == "200"
                    ))  # fmt: skip
                return seen

            async def both_up() -> bool:
                return len(await pids(20)) == 2

            await wait_for(both_up, timeout=40, what="two API processes")
            ships = [shipment(110), shipment(111, "1210"), shipment(112)]
            run = await submit_and_wait_released(url, ADMIN, ships, concurrency=3, timeout_s=40, poll_s=0.05,
                                                 session=session)  # fmt: skip
            assert run.released == 3 and run.not_released == []

            async with session.post(url + "/ops/login", data={"key": ADMIN}, allow_redirects=False) as resp:
                assert resp.status == 303
                cookie = resp.cookies["cbec_ops"].value
            answers = []
            for _ in range(12):
                async with session.get(url + "/ops/api/session", cookies={"cbec_ops": cookie}) as resp:
                    answers.append(resp.status)
            assert answers == [200] * 12  # both processes know the session

            (victim,) = await pids(20) - {proc.pid}  # the API process the first one started
            # every scrape shows both processes' requests, not the ~half the answering process served itself
            assert await healthz_counted() == [healthz_ok] * 12
            os.kill(victim, signal.SIGKILL)

            async def replaced() -> bool:
                now = await pids(20)
                return len(now) == 2 and victim not in now

            await wait_for(replaced, timeout=40, what="a new API process")
            survivors = await pids(20)
            # the dead process's counts stay in the sums (+1: one it counted as it was killed, never received)
            after = await healthz_counted()
            assert len(set(after)) == 1 and healthz_ok <= after[0] <= healthz_ok + 1, (after, healthz_ok)
    finally:
        log = await _stop_two_processes(proc, log_out, log_file)
    assert proc.returncode == 0, log[-2000:]
    assert logged(log, "api_process_exited")
    assert {victim, *survivors} - {proc.pid} <= set(logged_fields(log, "ingest_link_connected", "pid"))
    [link] = logged_fields(log, "ingest_link_listening", "path")
    assert not Path(link).parent.exists()  # the link's private folder goes with a normal stop
    for pid in survivors:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped with the first process


async def test_sighup_puts_the_configured_api_keys_in_force_in_every_process(db_dsn: str, tmp_path: Path) -> None:
    """A seller's key added, a leaked one removed, without stopping the gateway: SIGHUP to `cbec serve --processes
    2` reads the configuration again. The keys are in force at once in the first process and, started again, in the
    other (whichever process a connection reaches answers alike); a removed key's console session ends; a changed
    port is named as waiting for a restart (the gateway stays where it listens); a configuration that cannot be
    used changes nothing."""
    port = free_port()
    log_file = tmp_path / "serve.log"
    proc, log_out = await _serve_two_processes(db_dsn, tmp_path, port, log_file)
    cfg = tmp_path / "cbec.toml"
    url, added = f"http://127.0.0.1:{port}", "k-added-" + "x" * 24
    fresh = aiohttp.TCPConnector(force_close=True)  # a new connection per request: the kernel picks a process
    try:
        async with aiohttp.ClientSession(connector=fresh, timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def answers(key: str, n: int = 16) -> tuple[set[int], set[int]]:
                """The statuses of GET /v1/queue with ``key`` and the processes /healthz came from, n times each."""
                statuses, pids = set(), set()
                for _ in range(n):
                    async with session.get(url + "/v1/queue", headers={"X-API-Key": key}) as resp:
                        statuses.add(resp.status)
                    async with session.get(url + "/healthz") as resp:
                        pids.add((await resp.json())["process"])
                return statuses, pids

            async def both_up() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    return len((await answers(ADMIN, 10))[1]) == 2
                return False

            await wait_for(both_up, timeout=40, what="two API processes")
            assert (await answers(added))[0] == {401}
            async with session.post(url + "/ops/login", data={"key": ADMIN}, allow_redirects=False) as resp:
                assert resp.status == 303
                cookie = resp.cookies["cbec_ops"].value
            _, before = await answers(ADMIN)

            text = cfg.read_text(encoding="utf-8")
            hashed = hashlib.sha256(added.encode()).hexdigest()  # the file holds the new key's hash alone
            cfg.write_text(text.replace(f'key = "{ADMIN}"', f'key_sha256 = "{hashed}"')
                               .replace(f"port = {port}", f"port = {free_port()}"), encoding="utf-8")  # fmt: skip
            proc.send_signal(signal.SIGHUP)

            async def renewed() -> bool:
                if not logged(log_file.read_text(), "api_processes_renewed"):
                    return False
                statuses, pids = await answers(added)  # and the new process listens
                return statuses == {200} and len(pids) == 2

            await wait_for(renewed, timeout=40, what="the other API process started again with the new key")
            statuses, after = await answers(added, 24)
            assert statuses == {200} and len(after) == 2 and proc.pid in after and after != before
            assert (await answers(ADMIN, 24))[0] == {401}  # removed, in both processes
            for _ in range(8):
                async with session.get(url + "/ops/api/session", cookies={"cbec_ops": cookie}) as resp:
                    assert resp.status == 401  # the session made with the removed key ended

            proc.send_signal(signal.SIGHUP)  # the same keys again: the other process is not started again

            async def reloaded_twice() -> bool:
                return len(logged_records(log_file.read_text(), "api_keys_reloaded")) == 2

            await wait_for(reloaded_twice, timeout=20, what="the second reload")
            assert (await answers(added))[1] == after  # the same two processes

            cfg.write_text("this is not = = toml", encoding="utf-8")
            proc.send_signal(signal.SIGHUP)

            async def refused() -> bool:
                return logged(log_file.read_text(), "configuration_not_reloaded")

            await wait_for(refused, timeout=20, what="the unusable configuration refused")
            assert (await answers(added))[0] == {200}
    finally:
        log = await _stop_two_processes(proc, log_out, log_file)
    assert proc.returncode == 0, log[-2000:]
    changes, again = logged_records(log, "api_keys_reloaded")
    assert (changes["added"], changes["removed"], changes["changed"]) == ([], [], ["admin"]), changes
    assert (again["added"], again["removed"], again["changed"]) == ([], [], []), again
    assert len(logged_records(log, "api_processes_renewed")) == 1
    assert logged_fields(log, "settings_need_restart", "settings") == [["port"], ["port"]]
    assert added not in log and ADMIN not in log  # names only, never a key



async def test_an_api_process_started_again_signs_with_the_key_in_force_not_the_files_as_they_are(
    db_dsn: str, tmp_path: Path
) -> None:
    """`cbec serve --processes 2`: the signing key's files are written over (a renewal not yet reloaded, or half done)
    and then the other API process dies and is started again. It signs with the key the first process has in force —
    handed over, not read from the files — so every JSON declaration is signed alike, whichever process takes it,
    until SIGHUP puts the renewed key in force everywhere."""
    port = free_port()
    log_file = tmp_path / "serve.log"
    proc, log_out = await _serve_two_processes(db_dsn, tmp_path, port, log_file)
    url = f"http://127.0.0.1:{port}"
    fresh = aiohttp.TCPConnector(force_close=True)  # a new connection per request: the kernel picks a process
    try:
        async with aiohttp.ClientSession(connector=fresh, timeout=aiohttp.ClientTimeout(total=10),
                                         headers={"X-API-Key": ADMIN}) as session:  # fmt: skip

            async def both_up() -> bool:
                return len(await answering_processes(session, url, 10)) == 2

            await wait_for(both_up, timeout=40, what="two API processes")
            folder = tmp_path / "var" / "signing"
            key_file, cert_file = folder / "test-agent-key.pem", folder / "test-agent-cert.pem"
            in_force = RsaSha1Key.from_pem(key_file.read_bytes(), cert_file.read_bytes()).key_name
            renewed_key, renewed_cert = generate_test_key("rsa", "renewed, not reloaded")
            key_file.write_bytes(renewed_key)
            cert_file.write_bytes(renewed_cert)
            [other] = await answering_processes(session, url) - {proc.pid}
            os.kill(other, signal.SIGKILL)

            async def restarted() -> bool:
                return len(await answering_processes(session, url, 10) - {proc.pid, other}) == 1

            await wait_for(restarted, timeout=40, what="the other API process started again")
            key_names = set()
            for seed in range(24):
                payload = json.loads(json.dumps(samples.shipment(random.Random(900 + seed)).inventory, default=str))
                async with session.post(url + "/v1/messages", json=payload) as resp:
                    body = await resp.json()
                    assert resp.status == 202, body
                async with session.get(url + f"/v1/messages/{body['guid']}") as resp:
                    stored = (await resp.json())["raw_xml"]
                key_names.update(re.findall(r"<ds:KeyName>([^<]+)</ds:KeyName>", stored))
            assert key_names == {in_force}
    finally:
        log = await _stop_two_processes(proc, log_out, log_file)
    assert proc.returncode == 0, log[-2000:]
    assert len(logged_records(log, "api_process_started")) == 2  # the first start and the one after the kill

async def test_a_keys_rate_holds_across_the_api_processes(db_dsn: str, tmp_path: Path) -> None:
    """`cbec serve --processes 2` and a key with rate_per_s: its burst goes through once in all, whichever process
    each connection reaches — not once per process — and the rest are 429s from both; other keys are not held back."""
    port = free_port()
    log_file = tmp_path / "serve.log"
    limited = "k-limited-" + "q" * 22
    proc, log_out = await _serve_two_processes(
        db_dsn, tmp_path, port, log_file,
        extra_keys=f'[[api_keys]]\nname = "limited"\nkey = "{limited}"\nrole = "operator"\nrate_per_s = 0.001\n'
                   "rate_burst = 6\n",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    fresh = aiohttp.TCPConnector(force_close=True)  # a new connection per request: the kernel picks a process
    try:
        async with aiohttp.ClientSession(connector=fresh, timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def both_up() -> bool:
                return len(await answering_processes(session, url)) == 2

            await wait_for(both_up, timeout=40, what="two API processes")
            statuses = []
            for _ in range(40):
                async with session.get(url + "/v1/queue", headers={"X-API-Key": limited}) as resp:
                    statuses.append(resp.status)
            assert statuses.count(200) == 6 and statuses.count(429) == 34, statuses
            for _ in range(8):
                async with session.get(url + "/v1/queue", headers={"X-API-Key": ADMIN}) as resp:
                    assert resp.status == 200
    finally:
        log = await _stop_two_processes(proc, log_out, log_file)
    assert proc.returncode == 0, log[-2000:]


async def test_api_processes_stop_when_the_first_is_killed(db_dsn: str, tmp_path: Path) -> None:
    """`cbec serve --processes 2` killed with SIGKILL (no chance to stop the others): the other API process sees
    it is orphaned and stops by itself, instead of answering on the port with nobody supervising it."""
    port = free_port()
    proc, log_out = await _serve_two_processes(db_dsn, tmp_path, port, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    others: set[int] = set()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

            async def both_up() -> bool:
                seen = await answering_processes(session, url)
                others.update(seen - {proc.pid})
                return len(seen) == 2

            await wait_for(both_up, timeout=40, what="two API processes")
        proc.kill()
        await proc.wait()
        (other,) = others

        async def gone() -> bool:
            try:
                os.kill(other, 0)
            except ProcessLookupError:
                return True
            return False

        await wait_for(gone, timeout=15, what="the orphaned API process to stop")
    finally:
        if proc.returncode is None:
            proc.kill()
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log_out.close()
    log = (tmp_path / "serve.log").read_text()
    for link in logged_fields(log, "ingest_link_listening", "path"):  # killed outright, nothing removed its folder
        shutil.rmtree(Path(link).parent, ignore_errors=True)
    assert logged(log, "api_process_orphaned"), log[-3000:]
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as resp:
            await resp.read()


async def test_transmissions_and_attempts_after_retries(db_dsn: str) -> None:
    """FLAKY-: two 503s then accepted; the shipment detail shows the three attempts of one transmission."""
    async with running_stack(db_dsn) as stack:
        s = shipment(108, prefix="FLAKY-")
        await stack.submit(s.order)
        await wait_for(lambda: _done(stack, s.order["guid"]), what="flaky order sent")
        body = await stack.shipment(s)
        (order,) = [d for d in body["documents"] if d["kind"] == "order"]
        (job,) = order["transmissions"]
        assert [h["outcome"] for h in job["history"]] == ["transient", "transient", "ok"]
        assert stack.sandbox.stats()["by_cop_msg_id"] == {order["cop_msg_id"]: 1}


async def _done(stack: Stack, guid: str) -> bool:
    return bool(await stack.fetchval("SELECT state = 'done' FROM jobs WHERE dedupe_key = $1", f"customs:{guid}"))


async def test_standalone_sandbox_command_options() -> None:
    """`cbec sandbox` builds on start_sandbox: the options it passes exist."""
    sb = await start_sandbox("127.0.0.1", 0, receipt_url=None, receipt_headers={}, receipt_delay=0.001,
                             failure_rate=0.0, warehouse_callback_url="http://127.0.0.1:9/v1/warehouse/callbacks",
                             warehouse_callback_headers={"X-API-Key": "w"})  # fmt: skip
    try:
        assert sb.config.failure_rate == 0.0 and sb.config.receipt_delay == 0.001
        assert sb.config.warehouse_callback_headers == {"X-API-Key": "w"}
    finally:
        await sb.stop()


async def test_folder_transport_outbox_and_inbox(db_dsn: str, tmp_path: Any) -> None:
    """Customs through a transfer client's folders: DxpMsg files out, receipt files in (polled, same intake)."""
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    folder = {"transport": "folder", "outbox": outbox, "inbox": inbox}
    async with running_stack(db_dsn, customs=folder, forwarding={"inbox_poll_s": 0.05}) as stack:
        s = shipment(109)
        await stack.submit(s.order)
        await stack.wait_sql("SELECT count(*) = 1 FROM jobs WHERE endpoint = 'customs' AND state = 'done'")
        (sent,) = [p for p in outbox.iterdir() if p.is_file()]
        env = dxp.unwrap(sent.read_bytes())
        assert env.msg_type == "CEB311Message" and sent.name == f"CEB311Message_{env.cop_msg_id}.xml"
        doc = s.order_doc
        values = {"guid": str(doc["guid"]) if doc.get("guid") else s.order["guid"], "ebpCode": doc["ebpCode"],
                  "ebcCode": doc["ebcCode"], "orderNo": doc["orderNo"], "returnStatus": "120",
                  "returnTime": "20260101120000001", "returnInfo": "ok"}  # fmt: skip
        receipt = dxp.wrap(
            build_receipt("CEB312", values), msg_type="CEB312Message", sender_id=dxp.IMPORT_RECEIVER,
            receiver_ids=["DXPENT0000000001"], cop_msg_id="R-1", created=datetime.now(dxp.CHINA_TZ),
        )  # fmt: skip
        inbox.mkdir(exist_ok=True)
        (inbox / "r1.xml").write_bytes(receipt)
        (inbox / "garbage.xml").write_bytes(b"<not a receipt")
        await stack.wait_sql(
            "SELECT d.forward_state = 'receipted' FROM documents AS d JOIN messages AS m ON m.id = d.message_id"
            " WHERE m.guid = $1",
            s.order["guid"],
        )
        await wait_for(lambda: _exists(inbox / "error" / "garbage.xml"), what="garbage moved to error/")
        assert (inbox / "done" / "r1.xml").exists()
        (row,) = await stack.fetch("SELECT source, cop_msg_id, submitter FROM receipts")
        assert dict(row) == {"source": "inbox", "cop_msg_id": "R-1", "submitter": "inbox:customs"}


async def _exists(path: Any) -> bool:
    return bool(path.exists())


async def test_an_export_shipment_of_each_mode_ends_released(db_dsn: str) -> None:
    """General (9610) and special-zone (1210) export parcels (spec §4.4): the four legs as XML in any order, the
    inventory held until its legs are receipted, the export receipts (CEB304/404/506/604) back from the sandbox."""
    from tests.apiutil import sign_as_agent

    async with running_stack(db_dsn) as stack:
        ships = [samples.export_shipment(random.Random(seed), mode=mode) for seed, mode in ((41, "9610"), (42, "1210"))]
        files = [(s, code, xml) for s in ships
                 for code, xml in samples.render_export_shipment(s, signer=sign_as_agent).items()]  # fmt: skip
        random.Random(9).shuffle(files)
        for _, code, xml in files:
            reply = await stack.client.post_xml(xml)
            assert reply.status == 202, (code, reply.body)
        for s in ships:
            path = f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}"

            async def released(path: str = path) -> bool:
                return (await stack.client.get(path)).body["customs_status"] == "released"

            await wait_for(released, timeout=20, what=f"{s.order_doc['orderNo']} released")
            body = (await stack.client.get(path)).body
            assert (body["flow"], body["state"], body["mode"]) == ("export", "matched", s.mode)
            docs = {d["kind"]: d for d in body["documents"] if d["is_current"]}
            assert {d["message_type"] for d in docs.values()} == {"CEB303", "CEB403", "CEB505", "CEB603"}
            assert [r["return_status"] for r in docs["inventory"]["receipts"]] == ["2", "120", "399", "800"]
            assert docs["inventory"]["invt_no"][8] == "E"  # an export inventory number
            for kind in ("order", "payment", "waybill"):  # CEB304/404/506: 2 → 399 (spec §5.2)
                assert docs[kind]["forward_state"] == "receipted" and docs[kind]["customs"]["code"] == "399"
            inv_sent = await stack.fetchval(
                "SELECT min(a.started_at) FROM job_attempts AS a JOIN jobs AS j ON j.id = a.job_id"
                " WHERE j.dedupe_key = $1", f"customs:{s.inventory['guid']}")  # fmt: skip
            legs_receipted = [await first_usable_receipt(stack, p["guid"]) for p in (s.order, s.receipt, s.waybill)]
            assert None not in legs_receipted and inv_sent > max(legs_receipted)
        stats = stack.sandbox.stats()
        assert stats["by_type"] == {"CEB303Message": 2, "CEB403Message": 2, "CEB505Message": 2, "CEB603Message": 2}
        assert await stack.fetchval("SELECT count(*) FROM receipts WHERE outcome <> 'applied'") == 0
        assert await stack.fetchval("SELECT count(*) FROM receipts") == 10 * len(ships)  # no tax bill: not taxed
        listed = (await stack.client.get("/v1/shipments?flow=export")).body["items"]
        assert sorted(i["orderNo"] for i in listed) == sorted(s.order_doc["orderNo"] for s in ships)
        assert (await stack.client.get("/v1/shipments?flow=import")).body["items"] == []



async def test_an_export_parcels_transport_is_forwarded_and_concluded_after_its_release(db_dsn: str) -> None:
    """After the release (CEB604 800), the parcel's 清单总分单 naming its invtNo, its arrival and its departure
    (CEB607/507/509, signed by their senders) go to customs' export system, which answers each 2 → 399
    (CEB608/508/510) from DXPEDCCEB0000003; the receipts are applied by their keys, the documents learn their preNo,
    and the export shipment lists the three, its own customs status still released."""
    from gateway.render import render
    from tests.apiutil import sign_as_agent

    async with running_stack(db_dsn) as stack:
        s, path, inventory = await released_export(stack, 44, "1210")
        s.inventory_doc["invtNo"] = inventory["invt_no"]  # what customs gave it: the 清单总分单 names it
        transport = samples.export_transport([s], random.Random(44))
        assert transport["CEB607"]["documents"][0]["items"][0]["invtNo"] == inventory["invt_no"]
        for code, payload in transport.items():
            reply = await stack.client.post_xml(render(payload, signer=sign_as_agent))
            assert reply.status == 202, (code, reply.body)

        async def concluded() -> bool:
            return await stack.fetchval("SELECT count(*) FROM documents WHERE kind IN ('arrival', 'departure',"
                                        " 'manifest') AND customs_status = '399'") == 3  # fmt: skip

        await wait_for(concluded, timeout=20, what="the transport messages concluded")
        assert await applied_receipts(stack, ("CEB508", "CEB510", "CEB608")) == {
            code: ["2", "399"] for code in ("CEB508", "CEB510", "CEB608")}
        body = (await stack.client.get(path)).body
        assert body["customs_status"] == "released"
        shown = {d["message_type"]: d for d in body["documents"] if d["kind"] in ("arrival", "departure", "manifest")}
        assert set(shown) == {"CEB507", "CEB509", "CEB607"}
        for doc in shown.values():
            assert doc["forward_state"] == "receipted" and doc["customs"]["code"] == "399", doc
            assert len(doc["pre_no"]) == 18
        assert stack.sandbox.stats()["by_type"] == {
            f"{code}Message": 1 for code in ("CEB303", "CEB403", "CEB505", "CEB603", "CEB607", "CEB507", "CEB509")}


async def test_an_export_parcels_return_and_its_tally_are_forwarded_and_answered(db_dsn: str) -> None:
    """After the release, the parcel's retail export return (CEB213, naming the invtNo customs gave the inventory) goes
    to customs' export system behind it, and the site's tally (CEB215) of the returned parcel too; the sandbox answers
    2 → 120 → 800 (CEB214) and 2 → 399 (CEB216), applied by their keys, and the export shipment lists both."""
    from gateway.render import render

    async with running_stack(db_dsn) as stack:
        s, path, inventory = await released_export(stack, 45, "9610")
        rng = random.Random(45)
        refund = samples.export_return(rng, s.inventory_doc, inventory["invt_no"])
        tally = samples.return_tally(rng, refund)
        for payload in (refund, tally):
            reply = await stack.client.post_xml(render(payload))
            assert reply.status == 202, reply.body

        async def answered() -> bool:
            return await stack.fetchval("SELECT count(*) FROM documents WHERE (message_type = 'CEB213' AND"
                                        " customs_status = '800') OR (message_type = 'CEB215' AND"
                                        " customs_status = '399')") == 2  # fmt: skip

        await wait_for(answered, timeout=20, what="the return released and its tally concluded")
        assert await applied_receipts(stack, ("CEB214", "CEB216")) == {
            "CEB214": ["2", "120", "800"], "CEB216": ["2", "399"]}
        shown = {d["message_type"]: d for d in (await stack.client.get(path)).body["documents"]
                 if d["kind"] in ("refund", "refund_tally")}  # fmt: skip
        assert set(shown) == {"CEB213", "CEB215"}
        # its own preNo; the CEB214's invtNo is the inventory's, shared by all its returns: not the return's number
        assert shown["CEB213"]["invt_no"] is None and len(shown["CEB213"]["pre_no"]) == 18


async def applied_receipts(stack: Stack, codes: tuple[str, ...]) -> dict[str, list[str]]:
    """The return statuses of the receipts of these types, in arrival order, by type; only if every one applied."""
    rows = await stack.fetch("SELECT message_type, array_agg(return_status ORDER BY id) AS statuses,"
                             " bool_and(outcome = 'applied') AS applied FROM receipts"
                             " WHERE message_type = ANY ($1::text[]) GROUP BY 1", list(codes))  # fmt: skip
    assert all(r["applied"] for r in rows), [dict(r) for r in rows]
    return {r["message_type"]: r["statuses"] for r in rows}


def _orders_settled(stack: Stack, path: str, message_type: str) -> Callable[[dict[str, list[str]]], Awaitable[bool]]:
    """A check for wait_for: whether the warehouse orders of the shipment at ``path``, by the guid of the
    ``message_type`` document made into them, have the statuses wanted."""

    async def settled(want: dict[str, list[str]]) -> bool:
        docs = (await stack.client.get(path)).body["documents"]
        return want == {d["doc_guid"]: [o["status"] for o in d["warehouse_orders"]] for d in docs
                        if d["message_type"] == message_type}  # fmt: skip

    return settled


async def released_export(stack: Stack, seed: int, mode: str) -> tuple[Any, str, dict[str, Any]]:
    """A sample export shipment submitted as XML and released by the sandbox: the sample, its API path and its
    current inventory as the API shows it (with the invt_no customs gave it)."""
    from tests.apiutil import sign_as_agent

    s = samples.export_shipment(random.Random(seed), mode=mode)
    for xml in samples.render_export_shipment(s, signer=sign_as_agent).values():
        assert (await stack.client.post_xml(xml)).status == 202
    path = f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}"

    async def released() -> bool:
        return (await stack.client.get(path)).body["customs_status"] == "released"

    await wait_for(released, timeout=20, what=f"{s.order_doc['orderNo']} released")
    inventory = next(d for d in (await stack.client.get(path)).body["documents"]
                     if d["kind"] == "inventory" and d["is_current"])  # fmt: skip
    return s, path, inventory


async def test_an_export_cancellation_concludes_at_the_sandbox_and_the_order_takes_a_new_inventory(
    db_dsn: str,
) -> None:
    """A released export parcel cancelled (CEB605, through the gateway as JSON): the sandbox answers 2 → 399 (the
    CEB606's statuses, spec §5.2), the inventory is void, and a new inventory of the order is accepted and released
    (customs' export system no longer holds the cancelled one: no duplicate)."""
    import copy

    from gateway.render import new_guid

    async with running_stack(db_dsn) as stack:
        s, _, inventory = await released_export(stack, 43, "9610")
        inv, invt_no = s.inventory_doc, inventory["invt_no"]
        cancel = {"type": "CEB605", "baseTransfer": s.inventory["baseTransfer"],
                  "documents": [{"customsCode": inv["customsCode"], "copNo": f"CANCEL-{inv['copNo']}"[:30],
                                 "invtNo": invt_no, "reason": "买家取消订单", "agentCode": inv["agentCode"],
                                 "agentName": inv["agentName"], "ebcCode": inv["ebcCode"],
                                 "ebcName": inv["ebcName"]}]}  # fmt: skip
        reply = await stack.client.request("POST", "/v1/messages", json_body=json.loads(json.dumps(cancel)))
        assert reply.status == 202, reply.body

        async def concluded() -> bool:
            return await stack.fetchval("SELECT customs_status FROM documents WHERE message_type = 'CEB605'") == "399"

        await wait_for(concluded, timeout=20, what="cancellation concluded")
        statuses = await stack.fetchval("SELECT array_agg(return_status ORDER BY id) FROM receipts"
                                        " WHERE message_type = 'CEB606'")  # fmt: skip
        assert statuses == ["2", "399"]
        # the operators see it on the shipment and in its message, with its forwarding, as any document
        view = (await stack.client.get(f"/v1/shipments/{inv['ebpCode']}/{inv['orderNo']}")).body
        [shown] = [d for d in view["documents"] if d["message_type"] == "CEB605"]
        assert (shown["forward_state"], shown["customs"]["code"]) == ("receipted", "399"), shown
        message = (await stack.client.get(f"/v1/messages/{reply.body['guid']}")).body
        [doc] = message["documents"]
        assert doc["forward_state"] == "receipted" and [r["return_status"] for r in doc["receipts"]] == ["2", "399"]
        again = copy.deepcopy(s.inventory)
        again["guid"] = new_guid()
        again["documents"][0].update(guid=new_guid(), copNo=f"R-{inv['copNo']}"[:30])
        assert (await stack.client.request("POST", "/v1/messages", json_body=json.loads(json.dumps(again, default=str)))
                ).status == 202  # fmt: skip

        async def redeclared() -> bool:
            return await stack.fetchval(
                "SELECT count(*) FROM receipts WHERE message_type = 'CEB604' AND keys ->> 'copNo' = $1"
                " AND return_status = '800'", again["documents"][0]["copNo"]) == 1  # fmt: skip

        await wait_for(redeclared, timeout=20, what="the new inventory released")


async def test_a_special_zone_export_cancelled_and_declared_anew_cancels_its_warehouse_order_and_ships_the_new(
    db_dsn: str,
) -> None:
    """A released 1210 export parcel: the zone warehouse shipped its order. Its cancellation concluded (CEB606 399),
    the warehouse gets the cancel of that order (and calls back cancelled); the inventory declared anew and released,
    an order of its own, shipped."""
    import copy

    from gateway.render import new_guid

    async with running_stack(db_dsn) as stack:
        s, path, inventory = await released_export(stack, 44, "1210")
        inv = s.inventory_doc

        settled = _orders_settled(stack, path, "CEB603")

        first = inventory["doc_guid"]
        await wait_for(lambda: settled({first: ["shipped"]}), timeout=20, what="the first order shipped")
        cancel = {"type": "CEB605", "baseTransfer": s.inventory["baseTransfer"],
                  "documents": [{"customsCode": inv["customsCode"], "copNo": f"CANCEL-{inv['copNo']}"[:30],
                                 "invtNo": inventory["invt_no"], "reason": "买家取消订单",
                                 "agentCode": inv["agentCode"], "agentName": inv["agentName"],
                                 "ebcCode": inv["ebcCode"], "ebcName": inv["ebcName"]}]}  # fmt: skip
        reply = await stack.client.request("POST", "/v1/messages", json_body=json.loads(json.dumps(cancel)))
        assert reply.status == 202, reply.body
        await wait_for(lambda: settled({first: ["cancelled"]}), timeout=20, what="the first order cancelled")
        [sent] = stack.sandbox.sandbox.warehouse_cancels
        assert sent["reason"] == "CEB605 concluded by customs: 买家取消订单"
        assert sent["reference"]["invtNo"] == inventory["invt_no"]
        again = copy.deepcopy(s.inventory)
        again["guid"] = new_guid()
        again["documents"][0].update(guid=new_guid(), copNo=f"R-{inv['copNo']}"[:30])
        assert (await stack.client.request("POST", "/v1/messages", json_body=json.loads(json.dumps(again, default=str)))
                ).status == 202  # fmt: skip
        second = again["documents"][0]["guid"]
        await wait_for(lambda: settled({first: ["cancelled"], second: ["shipped"]}), timeout=20,
                       what="the new inventory's order shipped")  # fmt: skip
        assert await stack.fetchval("SELECT count(*) FROM jobs WHERE endpoint = 'warehouse' AND state <> 'done'") == 0


async def released_import(stack: Stack, s: samples.ShipmentSample) -> tuple[str, dict[str, Any]]:
    """The sample import shipment ``s`` submitted as JSON and released by the sandbox: its API path and its current
    inventory as the shipment view shows it (with the invt_no the sandbox gave it in its CEB622)."""
    for payload in legs(s):
        await stack.submit(json.loads(json.dumps(payload, default=str)))
    await stack.wait_status(s, "released", timeout=20)
    inventory = next(d for d in (await stack.shipment(s))["documents"] if d["kind"] == "inventory" and d["is_current"])
    assert inventory["invt_no"]
    return key_path(s), inventory


async def quota(stack: Stack, s: samples.ShipmentSample) -> list[Any]:
    """What the inventory of ``s`` counts toward its buyer's annual quota, as the gateway's ledger holds it."""
    rows = await stack.fetch("SELECT amount FROM tax_ledger WHERE ebc_code = $1 AND order_no = $2",
                             s.inventory_doc["ebcCode"], s.inventory_doc["orderNo"])  # fmt: skip
    return [r["amount"] for r in rows]


async def test_an_import_cancellation_concludes_at_the_sandbox_and_the_parcel_is_declared_anew(db_dsn: str) -> None:
    """A released import parcel cancelled (CEB623, JSON, naming the invtNo of the sandbox's CEB622): the sandbox
    answers CEB624 2 → 120 → 399; the gateway gives the buyer's quota back and the warehouse the cancel of the
    parcel's order; the sandbox holds the inventory no more, so the parcel declared anew (appType 1, a new guid) is no
    duplicate there (-621004) and, the quota given back there too, within the annual limit (-621018) even where it
    has room for one parcel only: released, with a number of its own and an order of its own, shipped."""
    s = shipment(131)
    inv = s.inventory_doc
    async with running_stack(db_dsn) as stack:
        sandbox = stack.sandbox.sandbox
        path, inventory = await released_import(stack, s)
        buyer, value = inv["buyerIdNumber"].upper(), sandbox.quota_used[inv["buyerIdNumber"].upper()]
        sandbox.config.annual_limit = value * 2 - 1  # room for this parcel, not for it twice
        [counted] = await quota(stack, s)
        assert counted > 0

        settled = _orders_settled(stack, path, "CEB621")

        first = inventory["doc_guid"]
        await wait_for(lambda: settled({first: ["shipped"]}), timeout=20, what="the first order shipped")
        cancel = samples.import_cancellation(random.Random(131), inv, inventory["invt_no"])
        await stack.submit(json.loads(json.dumps(cancel, default=str)))

        async def concluded() -> bool:
            return await stack.fetchval("SELECT customs_status FROM documents WHERE message_type = 'CEB623'") == "399"

        await wait_for(concluded, timeout=20, what="cancellation concluded")
        assert await applied_receipts(stack, ("CEB624",)) == {"CEB624": ["2", "120", "399"]}
        assert await quota(stack, s) == [0]
        assert sandbox.quota_used[buyer] == 0 and sandbox.inventories == {}
        await wait_for(lambda: settled({first: ["cancelled"]}), timeout=20, what="the first order cancelled")
        [sent] = sandbox.warehouse_cancels
        assert sent["reference"]["invtNo"] == inventory["invt_no"]

        again = version_of(s.inventory, "1", 60)  # newer than the version the gateway holds (else ignored as older)
        second = again["documents"][0]["guid"]
        await stack.submit(json.loads(json.dumps(again, default=str)))
        await wait_for(lambda: settled({first: ["cancelled"], second: ["shipped"]}), timeout=20,
                       what="the new inventory released and its order shipped")  # fmt: skip
        assert await applied_receipts(stack, ("CEB622",)) == {"CEB622": ["2", "120", "399", "800"] * 2}
        anew = next(d for d in (await stack.client.get(path)).body["documents"] if d["doc_guid"] == second)
        assert anew["customs"]["code"] == "800" and anew["invt_no"] not in (None, inventory["invt_no"])
        assert await quota(stack, s) == [counted] and sandbox.quota_used[buyer] == value


async def test_a_parcel_released_before_the_sandbox_restarted_is_cancelled_after(db_dsn: str, tmp_path: Path) -> None:
    """The gateway and its sandbox stopped and started again on the same data (./ops/run twice on one ./var): the
    sandbox goes on from the state it kept (cbec serve: <data_dir>/sandbox), so the cancellation (CEB623) of a parcel it
    released in the first run concludes in the second — CEB624 2 → 120 → 399, the quota given back on both sides —
    rather than being refused as naming an inventory customs does not hold (2 → 100)."""
    s = shipment(134)
    state = tmp_path / "sandbox"
    first = await start_sandbox(state_dir=state, **SANDBOX_FAST)
    try:
        async with running_stack(db_dsn, sandbox=first) as stack:
            _, inventory = await released_import(stack, s)
    finally:
        await first.stop()
    second = await start_sandbox(state_dir=state, **SANDBOX_FAST)
    try:
        async with running_stack(db_dsn, sandbox=second) as stack:
            buyer = s.inventory_doc["buyerIdNumber"].upper()
            assert second.sandbox.quota_used[buyer] > 0
            cancel = samples.import_cancellation(random.Random(134), s.inventory_doc, inventory["invt_no"])
            await stack.submit(json.loads(json.dumps(cancel, default=str)))

            async def concluded() -> bool:
                status = "SELECT customs_status FROM documents WHERE message_type = 'CEB623'"
                return await stack.fetchval(status) in ("399", "100")

            await wait_for(concluded, timeout=20, what="the cancellation answered")
            assert await applied_receipts(stack, ("CEB624",)) == {"CEB624": ["2", "120", "399"]}
            assert await quota(stack, s) == [0] and second.sandbox.quota_used[buyer] == 0
    finally:
        await second.stop()


async def cancelled_after_shipping(stack: Stack, seed: int) -> tuple[str, dict[str, Any]]:
    """An import parcel released, its warehouse order shipped, then its cancellation concluded by customs (CEB624 399):
    the warehouse is asked to cancel the order. Its API path and its inventory as the shipment view showed it."""
    s = shipment(seed)
    path, inventory = await released_import(stack, s)
    settled = _orders_settled(stack, path, "CEB621")
    await wait_for(lambda: settled({inventory["doc_guid"]: ["shipped"]}), timeout=20, what="the order shipped")
    cancel = samples.import_cancellation(random.Random(seed), s.inventory_doc, inventory["invt_no"])
    await stack.submit(json.loads(json.dumps(cancel, default=str)))

    async def concluded() -> bool:
        return await stack.fetchval("SELECT customs_status FROM documents WHERE message_type = 'CEB623'") == "399"

    await wait_for(concluded, timeout=20, what="cancellation concluded")
    return path, inventory


async def warehouse_order(stack: Stack, path: str, doc_guid: str) -> dict[str, Any]:
    """The one warehouse order made from the document ``doc_guid`` of the shipment at ``path``, as the API shows it."""
    body = (await stack.client.get(path)).body
    openapi_check(body, "Shipment")
    [order] = next(d["warehouse_orders"] for d in body["documents"] if d["doc_guid"] == doc_guid)
    return dict(order)


async def open_cancels(stack: Stack) -> dict[str, float]:
    """/metrics' warehouse cancels that need a look, by why."""
    async with stack.client.session.get(stack.base + "/metrics") as resp:
        text = await resp.text()
    return {s.labels["why"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "cbec_warehouse_cancels_open" for s in f.samples}  # fmt: skip


async def cancels_listed(stack: Stack, state: str = "open") -> list[dict[str, Any]]:
    reply = await stack.client.get(f"/v1/warehouse/cancels?state={state}", key=OPERATOR)
    assert reply.status == 200, reply.body
    openapi_check(reply.body, "WarehouseCancelPage")
    return list(reply.body["items"])


async def test_a_parcel_the_warehouse_sends_after_its_cancel_was_asked_needs_a_look_at_once(db_dsn: str) -> None:
    """Customs concluded the cancellation of a released parcel; the sandbox's warehouse takes the cancel of its order
    (200) but goes on all the same (warehouse_cancel ship: the parcel is delivered). The order records the cancel —
    when, why, delivered, the warehouse's answer — and the callback after it is flagged: on the shipment (the order's
    cancel needs a look, the callback after_cancel), in GET /v1/warehouse/cancels and GET /v1/warehouse/callbacks, and
    in /metrics (cbec_warehouse_cancels_open, the alert's figure), until an operator closes it."""
    async with running_stack(db_dsn, sandbox_config={"warehouse_cancel": "ship"}) as stack:
        assert await open_cancels(stack) == {"progress_after_cancel": 0, "refused": 0, "unconfirmed": 0}
        path, inventory = await cancelled_after_shipping(stack, 141)

        async def flagged() -> bool:
            cancel = (await warehouse_order(stack, path, inventory["doc_guid"]))["cancel"]
            return bool(cancel and cancel["needs_look"])

        await wait_for(flagged, timeout=20, what="the callback after the cancel flagged")
        order = await warehouse_order(stack, path, inventory["doc_guid"])
        cancel = order["cancel"]
        assert order["status"] == "delivered"
        assert [(e["status"], e["after_cancel"]) for e in order["events"]] == [
            ("accepted", False), ("shipped", False), ("delivered", True)]  # fmt: skip
        assert cancel["reason"] == "CEB623 concluded by customs: 买家取消订单"
        assert cancel["delivered_at"] and cancel["answer"] == {"status": 200,
                                                              "warehouseOrderNo": order["warehouse_order_no"]}
        assert (cancel["flags"], cancel["progress_status"], cancel["confirmed_at"]) == (
            ["progress_after_cancel"], "delivered", None)  # fmt: skip
        assert cancel["requested_at"] <= cancel["delivered_at"] <= cancel["progress_at"]
        [listed] = await cancels_listed(stack)
        assert (listed["id"], listed["order_id"], listed["status"], listed["ebpCode"], listed["orderNo"]) == (
            cancel["id"], order["order_id"], "delivered", *path.split("/")[-2:])  # fmt: skip
        callbacks = (await stack.client.get(f"/v1/warehouse/callbacks?order_id={order['order_id']}",
                                            key=OPERATOR)).body["items"]  # fmt: skip
        assert [(c["status"], c["after_cancel"]) for c in callbacks] == [
            ("delivered", True), ("shipped", False), ("accepted", False)]  # fmt: skip
        assert await open_cancels(stack) == {"progress_after_cancel": 1, "refused": 0, "unconfirmed": 0}

        # settled with the warehouse: an operator closes it, and it counts no more
        reply = await stack.client.request("POST", f"/v1/warehouse/cancels/{cancel['id']}/close", key=OPERATOR,
                                           json_body={"reason": "parcel called back by the carrier"})  # fmt: skip
        assert reply.status == 200, reply.body
        openapi_check(reply.body, "WarehouseCancel")
        assert (reply.body["closed_by"], reply.body["needs_look"]) == ("operator", False)
        assert await cancels_listed(stack) == [] and len(await cancels_listed(stack, "closed")) == 1
        assert await open_cancels(stack) == {"progress_after_cancel": 0, "refused": 0, "unconfirmed": 0}
        again = await stack.client.request("POST", f"/v1/warehouse/cancels/{cancel['id']}/close", key=OPERATOR,
                                           json_body={"reason": "twice"})  # fmt: skip
        assert again.status == 409


async def test_a_cancel_the_warehouse_refuses_needs_a_look_until_it_is_taken_and_confirmed(db_dsn: str) -> None:
    """The sandbox's warehouse refuses the cancel of a shipped parcel's order (409 cannot_cancel): a dead letter, and
    the order's cancel is refused with the warehouse's answer — it needs a look (shipment, list, /metrics). Once the
    warehouse takes it (the dead letter replayed) and confirms it (cancelled), it needs none."""
    async with running_stack(db_dsn, sandbox_config={"warehouse_cancel": "refuse"}) as stack:
        path, inventory = await cancelled_after_shipping(stack, 142)
        await stack.wait_sql("SELECT count(*) = 1 FROM jobs WHERE kind = 'warehouse.cancel' AND state = 'dead'",
                             timeout=20)  # fmt: skip
        cancel = (await warehouse_order(stack, path, inventory["doc_guid"]))["cancel"]
        assert (cancel["flags"], cancel["needs_look"], cancel["delivered_at"]) == (["refused"], True, None)
        assert cancel["answer"] == {"status": 409, "code": "cannot_cancel",
                                    "reason": "sandbox: the parcel has left the warehouse (warehouse_cancel refuse)"}
        assert [c["id"] for c in await cancels_listed(stack)] == [cancel["id"]]
        assert await open_cancels(stack) == {"progress_after_cancel": 0, "refused": 1, "unconfirmed": 0}

        stack.sandbox.sandbox.config.warehouse_cancel = "confirm"  # the operators settled it with the warehouse
        dead = await stack.fetchval("SELECT id FROM jobs WHERE kind = 'warehouse.cancel' AND state = 'dead'")
        reply = await stack.client.request("POST", "/v1/queue/replay", key=OPERATOR, json_body={"job_ids": [dead]})
        assert reply.status == 200, reply.body
        settled = _orders_settled(stack, path, "CEB621")
        await wait_for(lambda: settled({inventory["doc_guid"]: ["cancelled"]}), timeout=20, what="cancel confirmed")
        cancel = (await warehouse_order(stack, path, inventory["doc_guid"]))["cancel"]
        assert cancel["needs_look"] is False and cancel["confirmed_at"] and cancel["delivered_at"]
        assert cancel["refused_at"] is None and cancel["answer"]["status"] == 200 and cancel["flags"] == []
        assert await cancels_listed(stack) == []
        assert await open_cancels(stack) == {"progress_after_cancel": 0, "refused": 0, "unconfirmed": 0}


async def test_an_acceptance_after_a_cancel_needs_no_look_the_goods_moving_do(db_dsn: str) -> None:
    """The warehouse took the cancel and said nothing more (warehouse_cancel ignore). An acceptance of the order coming
    after it moves no goods — an order's own acceptance may well come after a cancel queued right behind the order — and
    flagged the gravest look ("shipped after cancel"); one of the goods moving (delivered) still does."""
    async with running_stack(db_dsn, sandbox_config={"warehouse_cancel": "ignore"}) as stack:
        path, inventory = await cancelled_after_shipping(stack, 144)
        await stack.wait_sql("SELECT count(*) = 1 FROM warehouse_cancels WHERE delivered_at IS NOT NULL", timeout=20)
        order = await warehouse_order(stack, path, inventory["doc_guid"])

        async def callback(status: str) -> dict[str, Any]:
            body = {"schema": "cbec.warehouse-callback.v1", "orderId": order["order_id"],
                    "warehouseOrderNo": order["warehouse_order_no"], "direction": "outbound", "status": status,
                    "occurredAt": "2026-12-07T10:00:00+08:00",
                    "reference": {"messageType": "CEB621", "guid": inventory["doc_guid"]}}  # fmt: skip
            reply = await stack.client.request("POST", "/v1/warehouse/callbacks", key=WAREHOUSE_KEY, json_body=body)
            assert reply.status == 200, reply.body
            return (await warehouse_order(stack, path, inventory["doc_guid"]))["cancel"]

        cancel = await callback("accepted")
        assert (cancel["needs_look"], cancel["flags"], cancel["progress_at"]) == (False, [], None), cancel
        assert await open_cancels(stack) == {"progress_after_cancel": 0, "refused": 0, "unconfirmed": 0}
        cancel = await callback("delivered")
        assert (cancel["needs_look"], cancel["flags"], cancel["progress_status"]) == (
            True, ["progress_after_cancel"], "delivered")  # fmt: skip
        events = (await warehouse_order(stack, path, inventory["doc_guid"]))["events"]
        assert [(e["status"], e["after_cancel"]) for e in events][-2:] == [("accepted", False), ("delivered", True)]


async def test_a_cancel_the_warehouse_never_confirms_needs_a_look_once_overdue(db_dsn: str) -> None:
    """The sandbox's warehouse takes the cancel (200) and says nothing more (warehouse_cancel ignore): once
    forwarding.warehouse_cancel_timeout_s has passed, the watchdog flags it unconfirmed — on the shipment, in the list
    and in /metrics — while the order shows shipped."""
    async with running_stack(db_dsn, sandbox_config={"warehouse_cancel": "ignore"},
                             forwarding={"warehouse_cancel_timeout_s": 1.0}) as stack:  # fmt: skip
        path, inventory = await cancelled_after_shipping(stack, 143)
        await stack.wait_sql("SELECT count(*) = 1 FROM warehouse_cancels WHERE delivered_at IS NOT NULL", timeout=20)
        cancel = (await warehouse_order(stack, path, inventory["doc_guid"]))["cancel"]
        assert (cancel["needs_look"], cancel["flags"]) == (False, [])  # within its time: nothing to look at yet

        async def overdue() -> bool:
            return bool((await warehouse_order(stack, path, inventory["doc_guid"]))["cancel"]["needs_look"])

        await wait_for(overdue, timeout=20, what="the cancel overdue")
        order = await warehouse_order(stack, path, inventory["doc_guid"])
        assert (order["status"], order["cancel"]["flags"], order["cancel"]["confirmed_at"]) == (
            "shipped", ["unconfirmed"], None)  # fmt: skip
        assert order["cancel"]["overdue_at"] >= order["cancel"]["delivered_at"]
        assert [c["id"] for c in await cancels_listed(stack)] == [order["cancel"]["id"]]
        assert await open_cancels(stack) == {"progress_after_cancel": 0, "refused": 0, "unconfirmed": 1}


async def test_a_seller_hears_of_its_bonded_parcel_cancelled_and_declared_anew(db_dsn: str) -> None:
    """A seller with a webhook, its released 1210 parcel cancelled at the sandbox (CEB624 399) and declared anew:
    besides the warehouse's word on its two orders, it hears that customs concluded the cancellation (naming the
    order whose cancel went) and released the new inventory — which no customs status change says, the shipment
    released all along — each signed, in the order it happened."""
    import jsonschema

    from gateway.openapi import OPENAPI

    recorder = await start_recorder()
    try:
        s = shipment(133, mode="1210")
        inv = s.inventory_doc
        hook = WebhookSettings("seller-a", frozenset({inv["ebcCode"]}), recorder.url + "/hook", "k1")
        async with running_stack(db_dsn, forwarding={"webhooks": (hook,)}) as stack:
            path, inventory = await released_import(stack, s)
            settled = _orders_settled(stack, path, "CEB621")
            first = inventory["doc_guid"]
            await wait_for(lambda: settled({first: ["shipped"]}), timeout=20, what="the first order shipped")
            cancel = samples.import_cancellation(random.Random(133), inv, inventory["invt_no"])
            await stack.submit(json.loads(json.dumps(cancel, default=str)))
            await wait_for(lambda: settled({first: ["cancelled"]}), timeout=20, what="the first order cancelled")
            again = version_of(s.inventory, "1", 60)
            second = again["documents"][0]["guid"]
            await stack.submit(json.loads(json.dumps(again, default=str)))
            await wait_for(lambda: settled({first: ["cancelled"], second: ["shipped"]}), timeout=20,
                           what="the new inventory released and its order shipped")  # fmt: skip
            await stack.wait_sql("SELECT count(*) = 0 FROM jobs WHERE state NOT IN ('done', 'dead')")
            got = await recorder.wait_for(10, timeout=10)
            assert all(verify_signature("k1", r.body, r.headers["X-CBEC-Signature"],
                                        timestamp=r.headers["X-CBEC-Timestamp"]) for r in got)  # fmt: skip
            events = [json.loads(r.body) for r in got]
            for event in events:  # as /openapi.json describes them
                post = OPENAPI["webhooks"][event["event"]]["post"]
                jsonschema.validate(event, post["requestBody"]["content"]["application/json"]["schema"])
            told = [(e["event"].removeprefix("shipment."), e["data"].get("customsStatus") or e["data"].get("status"))
                    for e in events]  # fmt: skip
            assert told == [("customs_status_changed", "declared"), ("customs_status_changed", "accepted"),
                            ("customs_status_changed", "released"), ("warehouse_status_changed", "accepted"),
                            ("warehouse_status_changed", "shipped"), ("inventory_cancelled", None),
                            ("warehouse_status_changed", "cancelled"), ("inventory_released", None),
                            ("warehouse_status_changed", "accepted"), ("warehouse_status_changed", "shipped")], told
            cancelled, released = events[5]["data"], events[7]["data"]
            assert (cancelled["messageType"], cancelled["invtNo"], cancelled["customs"]["code"]) == (
                "CEB623", inventory["invt_no"], "399")
            assert cancelled["warehouseOrders"] == [events[3]["data"]["orderId"]] == [events[6]["data"]["orderId"]]
            assert (released["messageType"], released["guid"], released["customs"]["code"]) == ("CEB621", second, "800")
            assert released["invtNo"] not in (None, inventory["invt_no"])
            assert released["warehouseOrders"] == [events[8]["data"]["orderId"]] != cancelled["warehouseOrders"]
    finally:
        await recorder.stop()


async def test_a_seller_hears_its_cancellation_died_on_the_way_and_reached_customs_once_replayed(db_dsn: str) -> None:
    """A released parcel's cancellation (CEB623) meets customs answering nothing but 503 until its retries are spent:
    a dead letter, and the shipment stays released (a cancellation is no leg). The seller hears it died, naming the
    document and the error; an operator replays it once customs answers again, and the seller hears it reached
    customs, then that customs concluded it — each once, signed, as /openapi.json describes them."""
    import jsonschema

    from gateway.openapi import OPENAPI

    recorder = await start_recorder()
    try:
        s = shipment(151)
        hook = WebhookSettings("seller-a", frozenset({s.inventory_doc["ebcCode"]}), recorder.url + "/hook", "k1")
        customs = {"retry": RetrySettings(base_s=0.01, cap_s=0.02, max_attempts=3)}
        async with running_stack(db_dsn, forwarding={"webhooks": (hook,)}, customs=customs) as stack:
            path, inventory = await released_import(stack, s)
            await stack.wait_sql("SELECT count(*) = 0 FROM jobs WHERE state NOT IN ('done', 'dead')")
            stack.sandbox.sandbox.config.failure_rate = 1.0  # customs answers 503, whatever comes
            cancel = samples.import_cancellation(random.Random(151), s.inventory_doc, inventory["invt_no"])
            taken = await stack.submit(json.loads(json.dumps(cancel, default=str)))
            doc_guid = taken.body["documents"][0]["doc_guid"]

            def told(event: str) -> Callable[[Any], bool]:
                return lambda r: json.loads(r.body)["event"] == event

            [dead] = await recorder.wait_for(1, timeout=10, where=told("shipment.delivery_failed"))
            data = json.loads(dead.body)["data"]
            assert (data["messageType"], data["guid"], data["kind"], data["customsStatus"]) == (
                "CEB623", doc_guid, "cancel", "released"), data
            assert "503" in data["error"], data
            assert (await stack.client.get(path)).body["customs_status"] == "released"
            [job] = (await stack.client.get("/v1/queue/dead?endpoint=customs", key=OPERATOR)).body["items"]
            stack.sandbox.sandbox.config.failure_rate = 0.0
            reply = await stack.client.request("POST", "/v1/queue/replay", key=OPERATOR,
                                               json_body={"job_ids": [job["id"]]})  # fmt: skip
            assert reply.body["replayed"] == 1, reply.body
            await recorder.wait_for(1, timeout=10, where=told("shipment.inventory_cancelled"))
            await stack.wait_sql("SELECT count(*) = 0 FROM jobs WHERE endpoint = 'webhook' AND state <> 'done'")
            events = [json.loads(r.body) for r in recorder.requests]
            for event, r in zip(events, recorder.requests, strict=True):
                post = OPENAPI["webhooks"][event["event"]]["post"]
                jsonschema.validate(event, post["requestBody"]["content"]["application/json"]["schema"])
                assert verify_signature("k1", r.body, r.headers["X-CBEC-Signature"],
                                        timestamp=r.headers["X-CBEC-Timestamp"])  # fmt: skip
            after = [e["event"].removeprefix("shipment.") for e in events
                     if e["event"] not in ("shipment.customs_status_changed", "shipment.warehouse_status_changed")]
            assert after == ["delivery_failed", "delivery_recovered", "inventory_cancelled"], after
            back = next(e["data"] for e in events if e["event"] == "shipment.delivery_recovered")
            assert (back["guid"], back["messageGuid"]) == (doc_guid, taken.body["guid"]) and "error" not in back
    finally:
        await recorder.stop()


async def test_an_import_return_concludes_at_the_sandbox_and_gives_the_goods_back_to_the_quota(db_dsn: str) -> None:
    """A released import parcel of two items, the first returned (CEB625, JSON): the sandbox answers CEB626
    2 → 120 → 399, and both the gateway's ledger and the sandbox's count the inventory less by that item's value."""
    from gateway import tax
    from gateway.documents import extract
    from gateway.xmlsafe import parse_message

    s = shipment(132, n_items=2)
    inv = s.inventory_doc
    async with running_stack(db_dsn) as stack:
        sandbox = stack.sandbox.sandbox
        _, inventory = await released_import(stack, s)
        buyer = inv["buyerIdNumber"].upper()
        [counted], before = await quota(stack, s), sandbox.quota_used[buyer]
        refund = samples.import_return(random.Random(132), inv, inventory["invt_no"], items=[1])
        reply = await stack.submit(json.loads(json.dumps(refund, default=str)))

        async def concluded() -> bool:
            return await stack.fetchval("SELECT customs_status FROM documents WHERE message_type = 'CEB625'") == "399"

        await wait_for(concluded, timeout=20, what="return concluded")
        assert await applied_receipts(stack, ("CEB626",)) == {"CEB626": ["2", "120", "399"]}
        raw = (await stack.client.get(f"/v1/messages/{reply.body['guid']}")).body["raw_xml"]
        root, mtype = parse_message(raw.encode("utf-8"))
        [record] = sandbox.inventories.values()
        given = tax.returned_value(record.doc, extract(root, mtype).documents[0].lines)
        assert 0 < given < before and sandbox.quota_used[buyer] == before - given
        await wait_for(lambda: _quota_is(stack, s, counted - given), timeout=20, what="the return's value given back")


async def test_a_parcel_returned_in_full_within_the_window_has_its_tax_bill_voided(db_dsn: str) -> None:
    """A released import parcel returned in full (CEB625 of every item, JSON) before customs consolidated its tax
    bill: the sandbox voids the bill (CEB818 3) after the return's 399, and the shipment's view shows it void, with
    no consolidation after it."""
    s = shipment(133, n_items=2)
    async with running_stack(db_dsn) as stack:
        stack.sandbox.sandbox.config.tax_bill_status_delay = 60.0  # the return window stays open in this test
        _, inventory = await released_import(stack, s)

        async def bill_status() -> str | None:
            bills = (await stack.shipment(s))["tax_bills"]
            return bills[0]["status_name"] if bills else None

        await wait_for(lambda: _equals(bill_status(), "generated"), timeout=20, what="the tax bill")
        refund = samples.import_return(random.Random(133), s.inventory_doc, inventory["invt_no"])
        await stack.submit(json.loads(json.dumps(refund, default=str)))
        await wait_for(lambda: _equals(bill_status(), "void"), timeout=20, what="the tax bill voided")
        assert await applied_receipts(stack, ("CEB626",)) == {"CEB626": ["2", "120", "399"]}
        [bill] = (await stack.shipment(s))["tax_bills"]
        assert bill["invtNo"] == inventory["invt_no"] and not bill["entDutyNo"]


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def _quota_is(stack: Stack, s: samples.ShipmentSample, amount: Any) -> bool:
    return await quota(stack, s) == [amount]


# --- the answers' shapes, as /openapi.json describes them ----------------------------------------------------------


async def test_the_answers_of_whole_flows_are_as_the_openapi_document_describes(db_dsn: str) -> None:
    """A client generated from /openapi.json reads what the seller-facing routes answer: the 202s of an import
    shipment (its inventory first, held until its legs are answered), a change and a withdrawal; each stored message;
    the shipment as it goes, held and released (transmissions, receipts, customs' state, the tax bill, the
    warehouse's order); the list; an export shipment released; a refusal and its page."""
    s = shipment(141, n_items=2)
    async with running_stack(db_dsn) as stack:
        answers = []
        for payload in [legs(s)[3], *legs(s)[:3]]:  # the inventory first: held (held_until) until the legs are
            answers.append((await stack.submit(json.loads(json.dumps(payload, default=str)))).body)
            if payload["type"] == "CEB621":
                openapi_check(await stack.shipment(s), "Shipment")
        await stack.wait_status(s, "released", timeout=20)
        await wait_for(lambda: _equals(_bill_and_order(stack, s), True), timeout=20, what="the tax bill and order")
        view = await stack.shipment(s)
        openapi_check(view, "Shipment")
        inventory = next(d for d in view["documents"] if d["kind"] == "inventory")
        assert inventory["transmissions"][0]["history"] and inventory["receipts"] and inventory["customs"]
        assert inventory["warehouse_orders"] and view["tax_bills"] and "held_until" not in inventory

        order = s.order_doc
        other = shipment(144)  # no inventory: its legs may still change
        for payload in (other.order, other.payment, version_of(other.order, "2", 30), version_of(other.payment, "3",
                                                                                                   30)):  # fmt: skip
            answers.append((await stack.submit(json.loads(json.dumps(payload, default=str)))).body)
        assert {d["outcome"] for a in answers for d in a["documents"]} == {"accepted", "replaced", "withdrawn"}
        for answer in answers:
            openapi_check(answer, "Accepted")
            openapi_check((await stack.client.get(f"/v1/messages/{answer['guid']}")).body, "Message")
        page = (await stack.client.get(f"/v1/shipments?ebpCode={order['ebpCode']}&limit=1")).body
        openapi_check(page, "ShipmentPage")
        assert len(page["items"]) == 1 and page["next_cursor"] is not None

        _, path, _ = await released_export(stack, 142, "9610")
        openapi_check((await stack.client.get(path)).body, "Shipment")

        bad = json.loads(json.dumps(shipment(143).order, default=str))
        bad["documents"][0]["acturalPaid"] = "1.00"
        refused = await stack.client.request("POST", "/v1/messages", json_body=bad)
        assert refused.status == 422, refused.body
        rejections = (await stack.client.get("/v1/rejections")).body
        openapi_check(rejections, "RejectionPage")
        openapi_check((await stack.client.get(f"/v1/rejections/{rejections['items'][0]['id']}")).body, "Rejection")
        # and a wrong one is told: the check is not one that passes anything
        with pytest.raises(Exception, match="is not one of"):
            openapi_check({**view, "customs_status": "lost"}, "Shipment")


async def _bill_and_order(stack: Stack, s: samples.ShipmentSample) -> bool:
    view = await stack.shipment(s)
    inventory = next(d for d in view["documents"] if d["kind"] == "inventory")
    return bool(view["tax_bills"]) and any(o["status"] == "shipped" for o in inventory["warehouse_orders"])
