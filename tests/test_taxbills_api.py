"""Customs' tax bills (CEB816) and their status (CEB818) over HTTP: POST /v1/receipts with a customs key, matched to
the inventory by the invtNo its receipts taught, stored once, shown on the shipment beside the gateway's estimate."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters import dxp
from gateway.api import OUTBOX, PIPELINE
from gateway.documents import Document
from gateway.messages import BY_CODE
from gateway.sandbox.receipts import (
    CHINA_TZ,
    RECEIPT_FOR,
    build_receipt,
    build_tax_bills,
    new_guid,
    return_time,
    tax_bill_of,
)
from gateway.workers import inbox_handler
from tests.apiutil import ADMIN, PLATFORM_A, Reply
from tests.forwardutil import CUSTOMS_KEY, Stack, key_path, legs, running_stack, shipment

pytestmark = pytest.mark.db

NOW = datetime.now(CHINA_TZ)


def at(minutes: int) -> str:
    """A returnTime ``minutes`` before now."""
    return return_time(NOW - timedelta(minutes=minutes))


async def post(stack: Stack, xml: bytes, key: str = CUSTOMS_KEY) -> Reply:
    return await stack.client.request("POST", "/v1/receipts", key=key, data=xml, content_type="application/xml")


def status(invt_no: str, tax_no: str, code: str, minutes_ago: int, **head: str) -> bytes:
    values = {"guid": new_guid(), "returnTime": at(minutes_ago), "invtNo": invt_no, "taxNo": tax_no, "status": code}
    return build_tax_bills("CEB818", [({**values, **head}, [])])


def inventory_of(view: dict[str, Any]) -> tuple[dict[str, Any], Document]:
    (d,) = [d for d in view["documents"] if d["kind"] == "inventory" and d["is_current"]]
    return d, Document(BY_CODE["CEB621"], d["index"], d["path"], d["head"], d["lines"])


async def test_a_released_inventorys_bill_and_its_status_changes(db_dsn: str) -> None:
    async with running_stack(db_dsn, sandbox_config={"tax_bills": False}) as stack:  # this test sends the bills
        s = shipment(801)
        for p in legs(s):
            await stack.submit(p)
        await stack.wait_status(s, "released")
        await stack.sandbox.wait_idle()
        doc, inv = inventory_of(await stack.shipment(s))
        invt_no, tax_no = doc["invt_no"], f"{doc['invt_no'][:8]}T{doc['id']:09d}"
        assert invt_no

        bill = tax_bill_of(inv, invt_no, tax_no, moment=NOW - timedelta(minutes=30))
        first = await post(stack, bill)
        assert first.status == 200 and first.body["message_type"] == "CEB816" and first.body["stored"] == 1
        (r,) = first.body["receipts"]
        assert r["outcome"] == "applied" and r["status_name"] == "generated" and r["document_ids"] == [doc["id"]]
        # a re-delivery, bare or in a DxpMsg, is a duplicate; only customs and admin keys post bills
        again = await post(stack, bill)
        assert again.body["already_stored"] == 1 and again.body["receipts"][0]["outcome"] == "duplicate"
        env = dxp.wrap(bill, msg_type="CEB816Message", sender_id=dxp.IMPORT_RECEIVER,
                       receiver_ids=["DXPENT0000000001"], cop_msg_id="C-816", created=NOW)  # fmt: skip
        wrapped = await post(stack, env, ADMIN)
        assert wrapped.status == 200 and wrapped.body["receipts"][0]["outcome"] == "duplicate"
        assert (await post(stack, bill, PLATFORM_A)).status == 403

        # statuses move forward by returnTime: consolidated, then a late older "generated" changes nothing
        consolidated = await post(stack, status(invt_no, tax_no, "2", 20, entDutyNo="D-1"))
        assert consolidated.body["receipts"][0]["outcome"] == "applied"
        late = await post(stack, status(invt_no, tax_no, "1", 25))
        assert late.body["receipts"][0]["outcome"] == "stale"
        view = await stack.shipment(s)
        (b,) = view["tax_bills"]
        assert (b["taxNo"], b["invtNo"], b["status"], b["status_name"], b["entDutyNo"]) == (
            tax_no, invt_no, "2", "consolidated", "D-1")  # fmt: skip
        # customs' figures are the gateway's estimate here (the sandbox computes them so): no finding
        assert {k: b[k] for k in ("customsTax", "valueAddedTax", "consumptionTax", "total")} == {
            k: b["estimate"][k] for k in ("customsTax", "valueAddedTax", "consumptionTax", "total")}  # fmt: skip
        assert b["findings"] == [] and not any(f["code"] == "tax.bill_differs" for f in view["findings"])
        inv_doc = next(d for d in view["documents"] if d["id"] == doc["id"])
        assert {x["message_type"] for x in inv_doc["receipts"]} == {"CEB622"}  # the bill's records are its own

        # void is final
        assert (await post(stack, status(invt_no, tax_no, "3", 10))).body["receipts"][0]["outcome"] == "applied"
        assert (await post(stack, status(invt_no, tax_no, "2", 5))).body["receipts"][0]["outcome"] == "stale"
        assert (await stack.shipment(s))["tax_bills"][0]["status"] == "3"

        # another bill whose VAT is not the estimate: a finding with both values
        head = {"guid": new_guid(), "returnTime": at(4), "invtNo": invt_no, "taxNo": tax_no + "B", "customsTax": "0",
                "valueAddedTax": "999.00", "consumptionTax": b["estimate"]["consumptionTax"], "status": "1",
                "ebcCode": inv.head["ebcCode"]}  # fmt: skip
        line = {"gnum": "1", "gcode": inv.lines[0]["gcode"], "taxPrice": "1", "customsTax": "0",
                "valueAddedTax": "999.00", "consumptionTax": "0"}  # fmt: skip
        assert (await post(stack, build_tax_bills("CEB816", [(head, [line])]))).body["receipts"][0]["outcome"] == \
            "applied"  # fmt: skip
        view = await stack.shipment(s)
        other = next(x for x in view["tax_bills"] if x["taxNo"] == tax_no + "B")
        (f,) = other["findings"]
        assert f["code"] == "tax.bill_differs" and f["field"] == "valueAddedTax" and not f["blocking"]
        assert f["left"]["value"] == "999.00" and f["right"]["value"] == b["estimate"]["valueAddedTax"]
        assert f in view["findings"]
        spec = (await stack.client.get("/openapi.json")).body
        assert "CEB816" in spec["paths"]["/v1/receipts"]["post"]["summary"]
        assert "tax_bills" in spec["paths"]["/v1/shipments/{ebpCode}/{orderNo}"]["get"]["summary"]


async def test_a_bill_waits_for_its_invt_no_and_names_the_right_enterprises(db_dsn: str) -> None:
    async with running_stack(db_dsn, worker=False) as stack:  # no customs: this test plays it
        s = shipment(802)
        for p in legs(s):
            await stack.submit(p)
        doc, inv = inventory_of(await stack.shipment(s))
        h = inv.head
        invt_no = f"{h['customsCode']}{NOW:%Y}I000000802"
        bill = tax_bill_of(inv, invt_no, "T-802", moment=NOW - timedelta(minutes=30))
        # before customs' receipt tells the inventory's invtNo, the bill matches nothing: kept
        early = await post(stack, bill)
        assert early.body["stored"] == 1 and early.body["receipts"][0]["outcome"] == "unmatched"
        assert await stack.fetchval("SELECT outcome FROM receipts WHERE message_type = 'CEB816'") == "unmatched"
        for leg in (s.order, s.payment, s.waybill):  # taken by E-Port: the inventory is released, then answered
            values = {k: str(v) for k, v in leg["documents"][0].items() if isinstance(v, str)}
            await post(stack, build_receipt(RECEIPT_FOR[leg["type"]], {**values, "returnStatus": "2",
                                                                       "returnTime": at(45), "returnInfo": "ok"}))
        released = build_receipt("CEB622", {
            "guid": h["guid"], "customsCode": h["customsCode"], "ebpCode": h["ebpCode"], "ebcCode": h["ebcCode"],
            "agentCode": h["agentCode"], "copNo": h["copNo"], "preNo": f"B{NOW:%Y%m%d}000000802", "invtNo": invt_no,
            "returnStatus": "800", "returnTime": at(40), "returnInfo": "放行"})  # fmt: skip
        assert (await post(stack, released)).body["receipts"][0]["document_ids"] == [doc["id"]]
        # the receipt naming the invtNo links the bill kept before it (customs sends a bill once, in no order)
        assert await stack.fetchval("SELECT (outcome, document_id) = ('applied', $1) FROM receipts"
                                    " WHERE message_type = 'CEB816'", doc["id"])  # fmt: skip
        (linked,) = (await stack.client.get(key_path(s))).body["tax_bills"]
        assert (linked["taxNo"], linked["status"]) == ("T-802", "1")
        # delivered again, it is the same bill: stored once
        again = await post(stack, bill)
        assert again.body["receipts"][0]["outcome"] == "duplicate", again.body
        assert await stack.fetchval("SELECT count(*) FROM receipts WHERE message_type = 'CEB816'") == 1

        # the right invtNo with another enterprise's code matches nothing: not this inventory's bill
        for field in ("ebcCode", "agentCode", "logisticsCode", "assureCode"):
            head = {"guid": new_guid(), "returnTime": at(20), "invtNo": invt_no, "taxNo": f"T-{field}",
                    "customsTax": "0", "valueAddedTax": "1", "consumptionTax": "0", "status": "1", field: "9999999999"}
            line = {"gnum": "1", "gcode": inv.lines[0]["gcode"], "taxPrice": "1", "customsTax": "0",
                    "valueAddedTax": "1", "consumptionTax": "0"}  # fmt: skip
            foreign = await post(stack, build_tax_bills("CEB816", [(head, [line])]))
            assert foreign.body["receipts"][0]["outcome"] == "unmatched", field
        wrong_guarantor = await post(stack, status(invt_no, "T-802", "2", 10, assureCode="9999999999"))
        assert wrong_guarantor.body["receipts"][0]["outcome"] == "unmatched"
        right = await post(stack, status(invt_no, "T-802", "2", 10, assureCode=h["assureCode"]))
        assert right.body["receipts"][0]["outcome"] == "applied"
        (b,) = (await stack.client.get(key_path(s))).body["tax_bills"]
        assert b["taxNo"] == "T-802" and b["status"] == "2"
        # the folder transport's inbox takes them through the same intake
        handle = inbox_handler(stack.app[OUTBOX], stack.app[PIPELINE].schemas, "customs")
        await handle(status(invt_no, "T-802", "3", 5), Path("void.xml"))
        assert await stack.fetchval("SELECT outcome FROM receipts WHERE source = 'inbox'") == "applied"
        assert (await stack.shipment(s))["tax_bills"][0]["status"] == "3"
        # the bill moved nothing of the inventory: its customs status is its receipts'
        assert (await stack.shipment(s))["customs_status"] == "released"
