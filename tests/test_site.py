"""A supervision site's day (监管场所, spec §11, A.11/A.12) against a running gateway and the sandbox over HTTP: a B/L's
parcels unloaded and declared in one 入库明细单 (CEB711), customs' CEB712, the parcels' shipments released, the
site's warehouse's inbound and outbound orders and their callbacks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.console.queries import shipment_detail
from tests.apiutil import PLATFORM_A, openapi_check
from tests.forwardutil import Stack, key_path, legs, running_stack, shipment, wait_for
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
        reply = await stack.client.post_xml(delivery_xml(carrier, [*waybill_nos(ships), "UNSEEN0000001"]))
        assert reply.status == 202, reply.body
        [doc] = reply.body["documents"]
        await customs_says(stack, doc["doc_guid"], "120")
        for s, no in zip(ships, waybill_nos(ships), strict=True):
            body = (await stack.client.get(key_path(s))).body
            openapi_check(body, "Shipment")
            [shown] = [d for d in body["documents"] if d["kind"] == "delivery"]
            assert shown["keys"] == {"operatorCode": OPERATOR_CODE, "billNo": "781-20240229001"}
            assert shown["customs"]["code"] == "120" and shown["forward_state"] == "receipted"
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
            assert on_page["customs_status"] == "120" and on_page["lines"] == shown["lines"]
