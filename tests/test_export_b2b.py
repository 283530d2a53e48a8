"""The B2B export modes (公告2020年第75号): a 9710 exporter (B2B direct export, its B2B order orderType B) and a 9810
one (export to an overseas warehouse, the warehouse's booking orderType W) walked through their day against a running
gateway and the customs sandbox over HTTP: order or booking, waybill, inventory, release, transport — with no 收款单,
which neither mode needs before the goods leave (docs/reconciliation.md "Export shipments")."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway import samples
from gateway.render import render
from gateway.sandbox.receipts import RECEIPT_FOR, build_receipt
from tests.apiutil import sign_as_agent
from tests.forwardutil import Stack, running_stack, version_of, wait_for
from tests.test_forwarding import Flow, flow, return_values  # noqa: F401  (flow: the fixture)

pytestmark = pytest.mark.db


def _path(s: samples.ExportShipmentSample) -> str:
    return f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}"


async def _declare(stack: Stack, s: samples.ExportShipmentSample, *codes: str) -> None:
    """The legs ``codes`` of ``s`` as XML (the inventory signed by its agent, as declared)."""
    xml = samples.render_export_shipment(s, signer=sign_as_agent)
    for code in codes:
        reply = await stack.client.post_xml(xml[code])
        assert reply.status == 202, (code, reply.body)


async def _released(stack: Stack, s: samples.ExportShipmentSample) -> dict[str, Any]:
    async def released() -> bool:
        return (await stack.client.get(_path(s))).body["customs_status"] == "released"

    await wait_for(released, timeout=20, what=f"{s.order_doc['orderNo']} released")
    body: dict[str, Any] = (await stack.client.get(_path(s))).body
    return body


@pytest.mark.parametrize(("seed", "mode", "order_type"), [(71, "9710", "B"), (72, "9810", "W")])
async def test_a_b2b_exporter_is_released_without_a_receipt_of_payment(
    db_dsn: str, seed: int, mode: str, order_type: str
) -> None:
    """Order (or booking), waybill and inventory, no 收款单: the shipment is matched with nothing missing, the
    inventory goes to customs once the order and the waybill have their receipts, and the sandbox releases it."""
    async with running_stack(db_dsn) as stack:
        s = samples.export_shipment(random.Random(seed), mode=mode)
        assert s.order_doc["orderType"] == order_type
        await _declare(stack, s, "CEB303", "CEB505", "CEB603")
        body = await _released(stack, s)
        assert (body["flow"], body["mode"], body["state"], body["missing"]) == ("export", mode, "matched", [])
        docs = {d["kind"]: d for d in body["documents"] if d["is_current"]}
        assert set(docs) == {"order", "waybill", "inventory"}
        assert [r["return_status"] for r in docs["inventory"]["receipts"]] == ["2", "120", "399", "800"]
        assert stack.sandbox.stats()["by_type"] == {"CEB303Message": 1, "CEB505Message": 1, "CEB603Message": 1}
        listed = (await stack.client.get(f"/v1/shipments?flow=export&mode={mode}")).body["items"]
        assert [(i["orderNo"], i["state"], i["customs_status"]) for i in listed] == [
            (s.order_doc["orderNo"], "matched", "released")]
        assert body["summary"] is None  # an A-type inventory (清单核放): no summary declaration

        # the parcel's 清单总分单, arrival and departure go and are concluded, as for any export
        s.inventory_doc["invtNo"] = docs["inventory"]["invt_no"]
        for code, payload in samples.export_transport([s], random.Random(seed)).items():
            reply = await stack.client.post_xml(render(payload, signer=sign_as_agent))
            assert reply.status == 202, (code, reply.body)
        await stack.wait_sql("SELECT count(*) = 3 FROM documents WHERE kind IN ('arrival', 'departure', 'manifest')"
                             " AND customs_status = '399'", timeout=20)  # fmt: skip

        # paid later (the B2B buyer's transfer; the warehouse's goods sold): a 收款单 is taken, compared as a leg
        await _declare(stack, s, "CEB403")
        body = (await stack.client.get(_path(s))).body
        assert (body["state"], body["missing"], body["customs_status"]) == ("matched", [], "released")
        assert {d["kind"] for d in body["documents"]} == {"order", "payment", "waybill", "inventory", "arrival",
                                                          "departure", "manifest"}  # fmt: skip


async def test_a_b2b_inventory_declared_after_its_order_and_waybill_were_taken_goes_at_once(db_dsn: str) -> None:
    """The booking and its waybill first, answered 399 by customs (their receipts' last status); the inventory then is
    matched on arrival and goes in its own ingest (no receipt is left to release it later)."""
    async with running_stack(db_dsn) as stack:
        s = samples.export_shipment(random.Random(73), mode="9810")
        await _declare(stack, s, "CEB303", "CEB505")
        await stack.wait_sql("SELECT count(*) = 2 FROM documents WHERE forward_state = 'receipted'"
                             " AND customs_status = '399'")  # fmt: skip
        await _declare(stack, s, "CEB603")
        body = await _released(stack, s)
        assert (body["state"], body["missing"]) == ("matched", [])


async def test_a_held_b2b_inventory_waits_for_its_order_and_waybill_only(db_dsn: str) -> None:
    """Nothing sent yet (no worker): the held inventory of a matched 9710 shipment says it waits for the receipts of
    its order and waybill — no 收款单 among them."""
    async with running_stack(db_dsn, worker=False) as stack:
        s = samples.export_shipment(random.Random(74), mode="9710")
        await _declare(stack, s, "CEB303", "CEB505", "CEB603")
        body = (await stack.client.get(_path(s))).body
        assert (body["state"], body["missing"]) == ("matched", [])
        [inventory] = [d for d in body["documents"] if d["kind"] == "inventory"]
        assert inventory["forward_state"] == "held"
        assert [w["waiting_for"] for w in inventory["held_until"]] == [["order", "waybill"]]


# --- the hold, in the store's transactions (no HTTP: receipts as customs would write them) ---------------------


@pytest.fixture
def f(flow: Flow) -> Flow:  # noqa: F811
    return flow


async def _submit(f: Flow, payload: dict[str, Any]) -> dict[str, Any]:
    checked = f.pipeline.check(render(payload, signer=sign_as_agent if payload["type"] == "CEB603" else None))
    return (await f.store.ingest(checked.message, checked.raw, submitter="test")).body


async def _receipt(f: Flow, payload: dict[str, Any], status: str, t: int) -> None:
    await f.post(build_receipt(RECEIPT_FOR[payload["type"]], return_values(payload, status, t)))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_b2b_inventory_held_for_the_receipt_of_payment_it_has_goes_once_that_is_withdrawn(f: Flow) -> None:
    """A 收款单 given is a leg like any: the inventory waits for its receipt. Customs refuses it; the exporter, who
    needs none for a 9710 export, withdraws it — and the inventory goes with the withdrawal, the shipment complete
    without it."""
    s = samples.export_shipment(random.Random(75), mode="9710")
    for p in (s.order, s.receipt, s.waybill, s.inventory):
        await _submit(f, p)
    for p in (s.order, s.waybill):
        await _receipt(f, p, "2", 1)
    await _receipt(f, s.receipt, "100", 1)
    assert (await f.doc(s.inventory))["forward_state"] == "held"
    body = await _submit(f, version_of(s.receipt, "3", 60))
    assert body["documents"][0]["shipment"]["state"] == "matched"
    assert (await f.doc(s.inventory))["forward_state"] == "queued"
    assert f"customs:{s.inventory['guid']}" in await f.jobs()
