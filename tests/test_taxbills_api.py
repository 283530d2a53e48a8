"""Customs' tax bills (CEB816) and their status (CEB818) over HTTP: POST /v1/receipts with a customs key, matched to
the inventory by the invtNo its receipts taught, stored once, shown on the shipment beside the gateway's estimate."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters import dxp
from gateway import samples, tax, taxbills
from gateway.api import OUTBOX, PIPELINE
from gateway.documents import Document
from gateway.messages import BY_CODE
from gateway.sandbox.receipts import (
    CHINA_TZ,
    RECEIPT_FOR,
    build_receipt,
    build_tax_bills,
    corrected_tax_bill,
    new_guid,
    return_time,
    tax_bill,
    tax_bill_of,
)
from gateway.workers import inbox_handler
from tests.apiutil import ADMIN, OPERATOR, PLATFORM_A, Reply, openapi_check
from tests.consoleutil import ConsoleClient, key_of
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


# --- a return customs concluded: the estimate of the goods kept ----------------------------------------------------


def _return(s: Any, invt_no: str, items: list[int] | None, app_type: str = "1", seconds: int = 0) -> dict[str, Any]:
    """A return (CEB625, JSON) of the items ``items`` (all: None) of ``s``'s inventory in full: a new one, or (appType
    2 / 3, ``seconds`` later) a change or withdrawal of the one before."""
    rng = random.Random(f"{invt_no}-{seconds}")
    payload = samples.import_return(rng, s.inventory_doc, invt_no, now=NOW, items=items)
    at_ = datetime.strptime(payload["documents"][0]["appTime"], "%Y%m%d%H%M%S") + timedelta(seconds=seconds)
    payload["documents"][0].update(appType=app_type, appTime=at_.strftime("%Y%m%d%H%M%S"))
    return json.loads(json.dumps(payload, default=str))


def _taxes(b: dict[str, Any]) -> dict[str, str]:
    return {k: b[k] for k in (*taxbills.TAXES, "total")}


async def test_a_bill_corrected_for_a_return_within_the_window_is_set_beside_the_goods_kept(db_dsn: str) -> None:
    """Through the sandbox (real HTTP): a return of part of the goods concluded within the return window (CEB626 399)
    is followed by customs' corrected bill (a CEB816 of the same taxNo, the taxes of the goods kept); the estimate
    beside it is of the goods kept too (gateway.tax.after_return), so no tax.bill_differs — on the API's shipment
    and the console's alike. A change of the return corrects both again, its withdrawal gives the whole inventory's
    bill and estimate again, and a return of everything voids the bill: a void bill is compared with nothing."""
    s = shipment(803, n_items=2)
    async with running_stack(db_dsn) as stack:
        stack.sandbox.sandbox.config.tax_bill_status_delay = 60.0  # the return window stays open in this test
        for p in legs(s):
            await stack.submit(json.loads(json.dumps(p, default=str)))
        await stack.wait_status(s, "released", timeout=20)
        doc, inv = inventory_of(await stack.shipment(s))
        bills = ("SELECT count(*) >= $3 FROM receipts WHERE message_type IN ('CEB816', 'CEB818') AND document_id = $1"
                 " AND outcome = 'applied' AND return_status = ANY ($2::text[])")
        await stack.wait_sql(bills, doc["id"], ["1"], 1, timeout=20)
        (whole,) = (await stack.shipment(s))["tax_bills"]
        assert whole["findings"] == [] and whole["estimate"].get("return") is None

        async def concluded(payload: dict[str, Any], n: int) -> dict[str, Any]:
            """Submit the return version, wait for its 399 and the bill records it brings; the shipment's bill."""
            guid = payload["documents"][0]["guid"]
            await stack.submit(payload)
            await stack.wait_sql("SELECT customs_status = '399' FROM documents WHERE doc_guid = $1", guid, timeout=20)
            await stack.wait_sql(bills, doc["id"], ["1", "3"], n, timeout=20)
            view = await stack.shipment(s)
            (b,) = view["tax_bills"]
            assert not [f for f in view["findings"] if f["code"] == "tax.bill_differs"], view["findings"]
            return b

        part = _return(s, doc["invt_no"], [1])
        b = await concluded(part, 2)
        kept = tax.after_return(inv, [{"gnum": "1", "qty": inv.lines[0]["qty"]}])
        assert b["valueAddedTax"] == str(sum((t.value_added_tax for t in kept), Decimal("0.00")))
        assert Decimal(b["total"]) < Decimal(whole["total"]) and b["status"] == "1"  # customs corrected it
        assert _taxes(b) == _taxes(b["estimate"]) and b["findings"] == []
        assert b["estimate"]["return"] == {"guid": part["documents"][0]["guid"], "items": [
            {"gnum": "1", "qty": str(inv.lines[0]["qty"])}], "concluded_at": b["estimate"]["return"]["concluded_at"]}
        assert b["estimate"]["uncounted_return"] is None
        openapi_check(await stack.shipment(s), "Shipment")  # as /openapi.json describes it

        changed = _return(s, doc["invt_no"], [2], app_type="2", seconds=60)  # the other item instead
        b = await concluded(changed, 3)
        assert _taxes(b) == _taxes(b["estimate"]) and b["findings"] == []
        assert b["estimate"]["return"]["guid"] == changed["documents"][0]["guid"]

        withdrawn = _return(s, doc["invt_no"], [2], app_type="3", seconds=120)  # no return: the whole bill again
        b = await concluded(withdrawn, 4)
        assert _taxes(b) == _taxes(whole) == _taxes(b["estimate"]) and b["estimate"]["return"] is None

        everything = _return(s, doc["invt_no"], None, seconds=180)
        b = await concluded(everything, 5)
        assert (b["status_name"], b["findings"], _taxes(b)) == ("void", [], _taxes(whole))
        assert b["estimate"]["total"] == "0.00"  # the buyer keeps nothing: nothing is levied, as the bill says

        console = ConsoleClient(stack.base)
        try:
            assert (await console.sign_in(OPERATOR)).status == 303
            shown = await console.get_json("/ops/api/shipment", **key_of(s))
        finally:
            await console.close()
        assert shown["tax_bills"] == (await stack.shipment(s))["tax_bills"]
        assert all("concluded_returns" not in d for d in shown["documents"])


async def test_a_bill_voided_after_it_was_corrected_is_compared_with_nothing(db_dsn: str) -> None:
    """Through the sandbox: a return of part of the goods corrects the bill, then the inventory is cancelled (CEB623,
    CEB624 399) and customs voids the bill (CEB818 3). Its amounts stay the corrected ones; nothing is levied on a
    void bill, so it is set beside no estimate as a difference — before, the whole inventory's estimate differed."""
    s = shipment(807, n_items=2)
    async with running_stack(db_dsn) as stack:
        stack.sandbox.sandbox.config.tax_bill_status_delay = 60.0  # the return window stays open in this test
        for p in legs(s):
            await stack.submit(json.loads(json.dumps(p, default=str)))
        await stack.wait_status(s, "released", timeout=20)
        doc, _ = inventory_of(await stack.shipment(s))
        bills = ("SELECT count(*) >= $3 FROM receipts WHERE message_type IN ('CEB816', 'CEB818') AND document_id = $1"
                 " AND outcome = 'applied' AND return_status = $2")  # fmt: skip
        await stack.wait_sql(bills, doc["id"], "1", 1, timeout=20)
        await stack.submit(_return(s, doc["invt_no"], [1]))
        await stack.wait_sql(bills, doc["id"], "1", 2, timeout=20)  # corrected
        (corrected,) = (await stack.shipment(s))["tax_bills"]
        cancel = samples.import_cancellation(random.Random(807), s.inventory_doc, doc["invt_no"], now=NOW)
        await stack.submit(json.loads(json.dumps(cancel, default=str)))
        await stack.wait_sql(bills, doc["id"], "3", 1, timeout=20)
        view = await stack.shipment(s)
        (b,) = view["tax_bills"]
        assert b["status_name"] == "void" and _taxes(b) == _taxes(corrected)
        assert b["findings"] == [] and not [f for f in view["findings"] if f["code"] == "tax.bill_differs"]


async def test_a_return_concluded_after_the_window_leaves_the_bill_and_its_estimate_whole(db_dsn: str) -> None:
    """Through the sandbox: a return concluded once the window closed (the bill consolidated, CEB818 2) brings no
    correction — customs settled the bill as it was — and the estimate does not pretend it did: it stays the whole
    inventory's and names the return it does not count (``uncounted_return``)."""
    s = shipment(806, n_items=2)
    async with running_stack(db_dsn, sandbox_config={"tax_bill_status_delay": 0.05}) as stack:
        for p in legs(s):
            await stack.submit(json.loads(json.dumps(p, default=str)))
        await stack.wait_status(s, "released", timeout=20)
        doc, _ = inventory_of(await stack.shipment(s))
        await stack.wait_sql("SELECT count(*) = 1 FROM receipts WHERE message_type = 'CEB818' AND document_id = $1"
                             " AND return_status = '2' AND outcome = 'applied'", doc["id"], timeout=20)  # fmt: skip
        back = _return(s, doc["invt_no"], [1])
        await stack.submit(back)
        guid = back["documents"][0]["guid"]
        await stack.wait_sql("SELECT customs_status = '399' FROM documents WHERE doc_guid = $1", guid, timeout=20)
        await stack.sandbox.wait_idle(timeout=20)
        view = await stack.shipment(s)
        (b,) = view["tax_bills"]
        assert await stack.fetchval("SELECT count(*) FROM receipts WHERE message_type = 'CEB816'") == 1  # no correction
        assert (b["status_name"], b["findings"]) == ("consolidated", []) and _taxes(b) == _taxes(b["estimate"])
        assert not [f for f in view["findings"] if f["code"] == "tax.bill_differs"]
        assert b["estimate"]["return"] is None and b["estimate"]["uncounted_return"]["guid"] == guid
        openapi_check(view, "Shipment")


async def _released_by_hand(stack: Stack, s: Any, n: int) -> tuple[Document, str]:
    """``s`` declared to a gateway with no customs: its legs answered and its inventory released (CEB622 800) by the
    test; its inventory and the invtNo customs gave it."""
    for p in legs(s):
        await stack.submit(p)
    doc, inv = inventory_of(await stack.shipment(s))
    h = inv.head
    invt_no = f"{h['customsCode']}{NOW:%Y}I{n:09d}"
    for leg in (s.order, s.payment, s.waybill):
        values = {k: str(v) for k, v in leg["documents"][0].items() if isinstance(v, str)}
        await post(stack, build_receipt(RECEIPT_FOR[leg["type"]], {**values, "returnStatus": "2",
                                                                   "returnTime": at(60), "returnInfo": "ok"}))
    released = build_receipt("CEB622", {
        "guid": h["guid"], "customsCode": h["customsCode"], "ebpCode": h["ebpCode"], "ebcCode": h["ebcCode"],
        "agentCode": h["agentCode"], "copNo": h["copNo"], "preNo": f"B{NOW:%Y%m%d}{n:09d}", "invtNo": invt_no,
        "returnStatus": "800", "returnTime": at(55), "returnInfo": "放行"})  # fmt: skip
    reply = await post(stack, released)
    assert reply.body["receipts"][0]["document_ids"] == [doc["id"]], reply.body
    return inv, invt_no


async def _conclude(stack: Stack, payload: dict[str, Any], minutes_ago: int) -> None:
    """Customs' CEB626 399 of the return version ``payload`` (submitted), dated ``minutes_ago``."""
    guid = payload["documents"][0]["guid"]
    head = await stack.fetchval("SELECT head FROM documents WHERE doc_guid = $1", guid)
    head = json.loads(head) if isinstance(head, str) else head
    values = {k: head.get(k) for k in ("customsCode", "ebpCode", "ebcCode", "agentCode", "invtNo", "guid")}
    values["copNo"] = (head.get("copNo") or head["orderNo"])[:20]  # the return declares none: as the sandbox echoes
    reply = await post(stack, build_receipt("CEB626", {**values, "preNo": f"B{NOW:%Y%m%d}{minutes_ago:09d}",
                                                       "returnStatus": "399", "returnTime": at(minutes_ago),
                                                       "returnInfo": "审结"}))  # fmt: skip
    assert reply.status == 200 and reply.body["receipts"][0]["outcome"] == "applied", (reply.status, reply.body)


async def test_a_return_counts_for_the_bill_whichever_comes_first_until_the_bill_is_consolidated(db_dsn: str) -> None:
    """Customs played by the test, its records in the order a network may bring them. The estimate beside a bill is
    worked out when the shipment is read, from what is stored: a corrected bill that comes before the return's 399
    differs until that 399 comes, and not after. A return concluded before the bill's consolidation counts; a change
    of it concluded after — customs corrects no consolidated bill — does not: the estimate stays the one the bill was
    settled at, and names the later version (``uncounted_return``) instead of pretending the bill took it. A bill
    consolidated before any return concluded stays the whole inventory's, beside the whole estimate."""
    async with running_stack(db_dsn, worker=False) as stack:  # no customs: this test plays it
        s, late = shipment(804, n_items=2), shipment(805, n_items=2)
        inv, invt_no = await _released_by_hand(stack, s, 804)
        head, _ = tax_bill(inv, invt_no, "T-804", moment=NOW - timedelta(minutes=50))
        await post(stack, tax_bill_of(inv, invt_no, "T-804", moment=NOW - timedelta(minutes=50)))
        part = _return(s, invt_no, [1])
        await stack.submit(part)
        returned = [{"gnum": "1", "qty": str(inv.lines[0]["qty"])}]
        corrected = corrected_tax_bill(head, inv, returned, moment=NOW - timedelta(minutes=39))
        assert (await post(stack, build_tax_bills("CEB816", [corrected]))).body["receipts"][0]["outcome"] == "applied"

        async def bill() -> dict[str, Any]:
            view = await stack.shipment(s)
            (b,) = view["tax_bills"]
            assert [f for f in view["findings"] if f["code"] == "tax.bill_differs"] == b["findings"]
            return b

        early = await bill()  # the corrected bill before the 399: the gateway knows of no concluded return yet
        assert early["estimate"].get("return") is None and "valueAddedTax" in {f["field"] for f in early["findings"]}
        await _conclude(stack, part, 40)
        b = await bill()
        assert b["findings"] == [] and _taxes(b) == _taxes(b["estimate"])
        assert b["estimate"]["return"]["guid"] == part["documents"][0]["guid"]
        assert b["estimate"]["return"]["concluded_at"] == at(40)

        # the window closes: customs consolidates the corrected bill; then a change of the return concluded
        await post(stack, status(invt_no, "T-804", "2", 30, entDutyNo="D-804"))
        changed = _return(s, invt_no, [2], app_type="2", seconds=60)
        await stack.submit(changed)
        await _conclude(stack, changed, 20)
        b = await bill()
        assert (b["status_name"], b["findings"]) == ("consolidated", []) and _taxes(b) == _taxes(b["estimate"])
        assert b["estimate"]["return"]["guid"] == part["documents"][0]["guid"]  # the version the bill was settled at
        assert b["estimate"]["uncounted_return"] == {"guid": changed["documents"][0]["guid"], "concluded_at": at(20),
                                                     "withdrawn": False}  # fmt: skip

        # a return concluded after the consolidation of a bill never corrected: the whole inventory's, both
        linv, linvt_no = await _released_by_hand(stack, late, 805)
        await post(stack, tax_bill_of(linv, linvt_no, "T-805", moment=NOW - timedelta(minutes=50)))
        await post(stack, status(linvt_no, "T-805", "2", 30, entDutyNo="D-805"))
        after = _return(late, linvt_no, [1])
        await stack.submit(after)
        await _conclude(stack, after, 25)
        view = await stack.shipment(late)
        (b,) = view["tax_bills"]
        assert b["findings"] == [] and not [f for f in view["findings"] if f["code"] == "tax.bill_differs"]
        assert _taxes(b) == _taxes(b["estimate"]) and b["estimate"]["return"] is None
        assert b["estimate"]["uncounted_return"]["guid"] == after["documents"][0]["guid"]
