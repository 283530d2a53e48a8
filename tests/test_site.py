"""A supervision site's day (监管场所, spec §11, A.11/A.12) against a running gateway and the sandbox over HTTP: a B/L's
parcels unloaded and declared in one 入库明细单 (CEB711), customs' CEB712, the parcels' shipments released, the
site's warehouse's inbound and outbound orders and their callbacks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import DEFAULT_ROUTES, RouteSettings
from gateway.console.queries import shipment_detail
from gateway.render import new_guid
from gateway.sandbox.receipts import build_receipt
from tests.apiutil import ADMIN, OPERATOR, PLATFORM_A, openapi_check
from tests.forwardutil import CUSTOMS_KEY, SITE_KEY, Stack, key_path, legs, running_stack, shipment, wait_for
from tests.siteutil import OPERATOR_CODE, delivery_xml, on_one_bill, waybill_nos

pytestmark = pytest.mark.db


async def submit_legs(stack: Stack, ships: list[Any]) -> None:
    for s in ships:
        for payload in legs(s):
            await stack.submit(json.loads(json.dumps(payload, default=str)))


async def customs_says(stack: Stack, doc_guid: str, status: str) -> None:
    """Wait until the delivery document ``doc_guid`` has customs' ``status`` (its CEB712s applied)."""

    async def reached() -> bool:
        return await stack.fetchval("SELECT customs_status FROM documents WHERE doc_guid = $1", doc_guid) == status

    await wait_for(reached, timeout=20, what=f"delivery {doc_guid} customs {status}")


async def test_a_parcel_unloaded_at_the_site_shows_on_its_shipment(db_dsn: str) -> None:
    """The site declares the B/L's parcels (two of the gateway's shipments and one it never saw): each shipment lists
    the delivery with customs' word on it (CEB712), cut to its own parcel's line; a seller sees its line alone; the
    console's shipment page shows it too."""
    async with running_stack(db_dsn) as stack:
        ships = [shipment(701 + i) for i in range(2)]
        carrier = on_one_bill(ships)
        await submit_legs(stack, ships)
        reply = await stack.client.post_xml(delivery_xml(carrier, [*waybill_nos(ships), "UNSEEN0000001"]), key=SITE_KEY)
        assert reply.status == 202, reply.body
        [doc] = reply.body["documents"]
        await customs_says(stack, doc["doc_guid"], "399")
        for s in ships:
            await stack.wait_status(s, "released", timeout=20)
        # the delivery as the site reads it: which parcels customs released (they may leave), which the gateway never
        # saw; whose shipment each is, to a key that may read that shipment
        for key, named in ((SITE_KEY, False), (ADMIN, True)):
            message = (await stack.client.get(f"/v1/messages/{reply.body['guid']}", key=key)).body
            openapi_check(message, "Message")
            [parcels] = [d["parcels"] for d in message["documents"]]
            assert [(p["logisticsNo"], p["waybill"], p["customs_status"]) for p in parcels] == [
                *((no, True, "released") for no in waybill_nos(ships)), ("UNSEEN0000001", False, None)]
            assert [p["shipment"] for p in parcels] == [
                *(({"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"]} if named else None)
                  for s in ships), None]  # fmt: skip
        for s, no in zip(ships, waybill_nos(ships), strict=True):
            body = (await stack.client.get(key_path(s))).body
            openapi_check(body, "Shipment")
            [shown] = [d for d in body["documents"] if d["kind"] == "delivery"]
            assert shown["keys"] == {"operatorCode": OPERATOR_CODE, "billNo": "781-20240229001"}
            assert shown["customs"]["code"] == "399" and shown["forward_state"] == "receipted"
            # customs' warehouse-entry number (入库单编号) from its CEB712, and E-Port's R-numbered preNo
            assert len(shown["rkd_no"]) == 18 and shown["pre_no"].startswith("R") and shown["invt_no"] is None
            assert shown["lines"] == [{"gnum": str(waybill_nos(ships).index(no) + 1), "logisticsNo": no}]
            assert shown["listed"] == 3 and shown["head"]["unloadLocation"] == "A区3号库位"
            seller = (await stack.client.get(key_path(s), key=PLATFORM_A)).body
            openapi_check(seller, "Shipment")
            [limited] = [d for d in seller["documents"] if d["kind"] == "delivery"]
            assert limited["limited"] and "head" not in limited and limited["lines"] == shown["lines"]
            async with stack.pool.acquire() as conn:
                page = await shipment_detail(conn, s.order_doc["ebpCode"], s.order_doc["orderNo"])
            assert page is not None
            [on_page] = [d for d in page["documents"] if d["kind"] == "delivery"]
            assert on_page["customs_status"] == "399" and on_page["lines"] == shown["lines"]


#: The site's warehouse takes an inbound order of each delivery (a route of CEB711 to the warehouse endpoint).
TO_THE_WAREHOUSE = {"routes": (*DEFAULT_ROUTES, RouteSettings(("CEB711",), ("warehouse",)))}


async def delivery_orders(stack: Stack, s: Any) -> dict[str, list[str]]:
    """The warehouse orders of each version of the deliveries on the shipment ``s`` (by its appType): their
    statuses."""
    docs = (await stack.client.get(key_path(s))).body["documents"]
    return {d["app_type"]: [o["status"] for o in d["warehouse_orders"]] for d in docs if d["kind"] == "delivery"}


async def test_a_delivery_changed_or_withdrawn_cancels_the_inbound_order_of_the_version_it_replaces(
    db_dsn: str,
) -> None:
    """The warehouse gets an inbound order of the delivery's parcels; a change of the delivery (a parcel added) cancels
    that order and makes one of the new list; its withdrawal cancels that one and makes none (the site did not enter
    those parcels after all)."""
    async with running_stack(db_dsn, forwarding=TO_THE_WAREHOUSE) as stack:
        ships = [shipment(711 + i) for i in range(2)]
        carrier = on_one_bill(ships)
        await submit_legs(stack, ships)
        nos = waybill_nos(ships)
        assert (await stack.client.post_xml(delivery_xml(carrier, nos[:1]))).status == 202

        async def orders_are(want: dict[str, list[str]]) -> bool:
            return await delivery_orders(stack, ships[0]) == want

        await wait_for(lambda: orders_are({"1": ["received"]}), timeout=20, what="the inbound order received")
        changed = delivery_xml(carrier, nos, app_type="2", app_time="20240229230000")
        assert (await stack.client.post_xml(changed)).status == 202
        await wait_for(lambda: orders_are({"1": ["cancelled"], "2": ["received"]}), timeout=20,
                       what="the first order cancelled, the change's received")  # fmt: skip
        [*_, latest] = [o for o in stack.sandbox.sandbox.warehouse if o["direction"] == "inbound"]
        assert [p["logisticsNo"] for p in latest["parcels"]] == nos
        withdrawn = delivery_xml(carrier, nos, app_type="3", app_time="20240229233000")
        assert (await stack.client.post_xml(withdrawn)).status == 202
        await wait_for(lambda: orders_are({"1": ["cancelled"], "2": ["cancelled"], "3": []}), timeout=20,
                       what="the change's order cancelled, none made of the withdrawal")  # fmt: skip
        inbound = {o["orderId"] for o in stack.sandbox.sandbox.warehouse if o["direction"] == "inbound"}
        assert len(inbound) == 2
        reasons = [c["reason"] for c in stack.sandbox.sandbox.warehouse_cancels]
        assert [r.split(" (")[0] for r in reasons] == ["CEB711 changed", "CEB711 withdrawn"], reasons
        assert await stack.fetchval("SELECT count(*) FROM jobs WHERE endpoint = 'warehouse' AND state <> 'done'") == 0
        # each order records the cancel asked of it with the ingest of the change or withdrawal: why, taken,
        # confirmed, nothing to look at
        docs = (await stack.client.get(key_path(ships[0]))).body["documents"]
        cancels = {d["app_type"]: o["cancel"] for d in docs if d["kind"] == "delivery" for o in d["warehouse_orders"]}
        assert sorted(cancels) == ["1", "2"]
        assert [cancels[t]["reason"] for t in ("1", "2")] == reasons
        assert all(c["delivered_at"] and c["confirmed_at"] and c["flags"] == [] and not c["needs_look"]
                   for c in cancels.values()), cancels
        assert (await stack.client.get("/v1/warehouse/cancels", key=OPERATOR)).body["items"] == []
        listed = (await stack.client.get("/v1/warehouse/cancels?state=any", key=OPERATOR)).body["items"]
        assert [(c["direction"], c["message_type"], c["status"]) for c in listed] == [("inbound", "CEB711",
                                                                                       "cancelled")] * 2
        # a delivery's order names no shipment: its delivery does, with the parcels' shipments
        assert all(c["ebpCode"] is None and c["delivery"]["billNo"] == "781-20240229001" for c in listed), listed


async def test_an_inbound_order_the_warehouse_rejects_names_its_delivery_to_the_operators(db_dsn: str) -> None:
    """The site's warehouse refuses the inbound order of a delivery (a parcel it will not take: REJECT-): the
    operators' list of callbacks names the delivery the order was made from — its message, B/L, how many parcels it
    lists and the shipments of those the gateway holds, whose pages show it —, where an outbound order's names its
    shipment. The delivery changed, the cancel of that order is confirmed by the refusal: nothing of it goes."""
    async with running_stack(db_dsn, forwarding=TO_THE_WAREHOUSE) as stack:
        s = shipment(721)
        carrier = on_one_bill([s])
        await submit_legs(stack, [s])
        reply = await stack.client.post_xml(delivery_xml(carrier, [*waybill_nos([s]), "REJECT-000000001"]))
        assert reply.status == 202, reply.body

        async def rejected() -> list[dict[str, Any]]:
            page = await stack.client.get("/v1/warehouse/callbacks?status=rejected", key=OPERATOR)
            assert page.status == 200, page.body
            return list(page.body["items"])

        await wait_for(lambda: _nonempty(rejected()), timeout=20, what="the inbound order rejected")
        [callback] = await rejected()
        assert (callback["direction"], callback["linked"], callback["ebpCode"]) == ("inbound", True, None)
        assert callback["delivery"] == {"message_guid": reply.body["guid"], "billNo": "781-20240229001", "listed": 2,
                                        "shipments": [{"ebpCode": s.order_doc["ebpCode"],
                                                       "orderNo": s.order_doc["orderNo"]}]}  # fmt: skip
        # the delivery changed (the parcel it will not take left out): the refused order's cancel needs no look, the
        # warehouse ended that order before — though it says nothing of the cancel
        stack.sandbox.sandbox.config.warehouse_cancel = "ignore"
        changed = delivery_xml(carrier, waybill_nos([s]), app_type="2", app_time="20240229230000")
        assert (await stack.client.post_xml(changed)).status == 202
        await stack.wait_sql("SELECT count(*) = 1 FROM warehouse_cancels WHERE delivered_at IS NOT NULL", timeout=20)
        [cancel] = (await stack.client.get("/v1/warehouse/cancels?state=any", key=OPERATOR)).body["items"]
        assert (cancel["order_id"], cancel["status"]) == (callback["order_id"], "rejected")
        assert cancel["confirmed_at"] and not cancel["needs_look"] and cancel["delivery"] == callback["delivery"]


async def _nonempty(items: Any) -> bool:
    return bool(await items)


async def test_a_delivery_receipt_naming_only_customs_warehouse_entry_number_finds_its_delivery(db_dsn: str) -> None:
    """A CEB712 carrying E-Port's own guid and, of the delivery's numbers, only the rkdNo an earlier receipt gave it
    (A.12: copNo and preNo are optional) is applied to that delivery, as an inventory's receipt is by its invtNo."""
    async with running_stack(db_dsn) as stack:
        [s] = [shipment(721)]
        carrier = on_one_bill([s])
        reply = await stack.client.post_xml(delivery_xml(carrier, waybill_nos([s])))
        [doc] = reply.body["documents"]
        await customs_says(stack, doc["doc_guid"], "399")
        rkd_no = await stack.fetchval("SELECT invt_no FROM documents WHERE doc_guid = $1", doc["doc_guid"])
        late = build_receipt("CEB712", {"guid": new_guid(), "operatorCode": OPERATOR_CODE, "rkdNo": rkd_no,
                                        "returnStatus": "-800003", "returnTime": "20991231235959000",
                                        "returnInfo": "入库明细单数据异常"})  # fmt: skip
        answer = await stack.client.request("POST", "/v1/receipts", key=CUSTOMS_KEY, data=late,
                                            content_type="application/xml")  # fmt: skip
        assert answer.status == 200, answer.body
        assert await stack.fetchval("SELECT d.doc_guid FROM receipts AS r JOIN documents AS d ON d.id = r.document_id"
                                    " WHERE r.return_status = '-800003'") == doc["doc_guid"]  # fmt: skip
        assert await stack.fetchval("SELECT customs_status FROM documents WHERE doc_guid = $1", doc["doc_guid"]) \
            == "-800003"  # fmt: skip


async def test_a_waybill_listed_by_two_deliveries_is_a_warning_on_its_shipment(db_dsn: str) -> None:
    """The same parcel on a second delivery under another B/L: its shipment lists both and warns (not blocking: the
    shipment's state and customs status stand); the second withdrawn, the warning goes."""
    async with running_stack(db_dsn) as stack:
        ships = [shipment(731 + i) for i in range(2)]
        carrier = on_one_bill(ships)
        await submit_legs(stack, ships)
        nos = waybill_nos(ships)
        assert (await stack.client.post_xml(delivery_xml(carrier, nos))).status == 202
        again = delivery_xml(carrier, nos[1:], bill_no="781-20240301002", cop_no="RKD202403010002")
        assert (await stack.client.post_xml(again)).status == 202
        await stack.wait_status(ships[1], "released", timeout=20)
        body = (await stack.client.get(key_path(ships[1]))).body
        openapi_check(body, "Shipment")
        [warning] = [f for f in body["findings"] if f["code"] == "site.waybill_on_two_deliveries"]
        assert not warning["blocking"] and body["state"] == "matched" and body["customs_status"] == "released"
        assert {warning["left"]["value"], warning["right"]["value"]} == {nos[1]}
        assert warning["left"]["path"].endswith("/DeliveryList[2]/logisticsNo")
        assert warning["right"]["path"].endswith("/DeliveryList[1]/logisticsNo")
        async with stack.pool.acquire() as conn:
            page = await shipment_detail(conn, ships[1].order_doc["ebpCode"], ships[1].order_doc["orderNo"])
        assert page is not None and [f["code"] for f in page["findings"]] == ["site.waybill_on_two_deliveries"]
        other = (await stack.client.get(key_path(ships[0]))).body  # the first parcel is on one delivery only
        assert not [f for f in other["findings"] if f["code"] == "site.waybill_on_two_deliveries"]
        withdrawn = delivery_xml(carrier, nos[1:], bill_no="781-20240301002", app_type="3", app_time="20240301090000")
        assert (await stack.client.post_xml(withdrawn)).status == 202
        body = (await stack.client.get(key_path(ships[1]))).body
        assert not [f for f in body["findings"] if f["code"] == "site.waybill_on_two_deliveries"]
