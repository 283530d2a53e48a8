"""A withdrawal (appType 3) customs refuses leaves customs the version before it (spec §6.2): through the API and the
receipt path, the key is live again — a change of it is taken, its shipment shows it — while a withdrawal customs
accepts still withdraws."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.apiutil import Client
from tests.exportapi import import_ship, post_json, post_receipt, version

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]


async def _declared(api: Client, seed: int) -> tuple[Any, dict[str, Any]]:
    s = import_ship(seed)
    for p in (s.order, s.payment, s.waybill, s.inventory):
        r = await post_json(api, p)
        assert r.status == 202, r.body
    return s, s.inventory_doc


async def _receipt(api: Client, inv: dict[str, Any], guid: str, status: str, time: str) -> None:
    r = await post_receipt(api, "CEB622", {
        "guid": guid, "customsCode": inv["customsCode"], "ebpCode": inv["ebpCode"], "ebcCode": inv["ebcCode"],
        "agentCode": inv["agentCode"], "copNo": inv["copNo"], "preNo": "B20261120000000091",
        "invtNo": "460120261000000091", "returnStatus": status, "returnTime": time, "returnInfo": "x"})
    assert r.status == 200, r.body
    assert r.body["receipts"][0]["outcome"] == "applied", r.body


async def _shipment(api: Client, inv: dict[str, Any]) -> dict[str, Any]:
    r = await api.get(f"/v1/shipments/{inv['ebpCode']}/{inv['orderNo']}")
    assert r.status == 200, r.body
    body: dict[str, Any] = r.body
    return body


async def test_a_withdrawal_customs_refuses_leaves_the_inventory_live(api: Client, db_pool: asyncpg.Pool) -> None:
    s, inv = await _declared(api, 91)
    await _receipt(api, inv, inv["guid"], "120", "20261120151000000")
    withdrawal = version(s.inventory, "3", "20261120170000")
    r = await post_json(api, withdrawal)
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "withdrawn"), r.body
    assert (await _shipment(api, inv))["state"] == "incomplete"
    # customs refuses the withdrawal (e.g. the inventory is being examined): it still holds the first declaration
    await _receipt(api, inv, withdrawal["documents"][0]["guid"], "100", "20261120171000000")
    shipment = await _shipment(api, inv)
    assert (shipment["state"], shipment["missing"]) == ("matched", []), shipment
    rows = await db_pool.fetch(
        "SELECT app_type, is_current, withdrawn, forward_state FROM documents"
        " WHERE message_type = 'CEB621' AND key1 = $1 AND key2 = $2 ORDER BY id", inv["ebcCode"], inv["orderNo"])
    # the withdrawal stays in the history with its refusal; the version customs holds is current again
    assert [tuple(r) for r in rows] == [("1", True, False, "receipted"), ("3", False, True, "rejected")]
    # the quota it takes counts again
    assert await db_pool.fetchval("SELECT amount FROM tax_ledger WHERE ebc_code = $1 AND order_no = $2",
                                  inv["ebcCode"], inv["orderNo"]) > 0  # fmt: skip
    # a change of it is judged as of a live document
    r = await post_json(api, version(s.inventory, "2", "20261120180000"))
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "replaced"), r.body
    # and so is a withdrawal sent again
    r = await post_json(api, version(s.inventory, "3", "20261120190000"))
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "withdrawn"), r.body


async def test_a_withdrawal_customs_accepts_still_withdraws(api: Client, db_pool: asyncpg.Pool) -> None:
    s, inv = await _declared(api, 92)
    withdrawal = version(s.inventory, "3", "20261120170000")
    assert (await post_json(api, withdrawal)).status == 202
    await _receipt(api, inv, withdrawal["documents"][0]["guid"], "120", "20261120171000000")
    assert (await _shipment(api, inv))["state"] == "incomplete"
    r = await post_json(api, version(s.inventory, "2", "20261120180000"))
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "state.not_found", r.body
    assert await db_pool.fetchval("SELECT count(*) FROM tax_ledger WHERE ebc_code = $1 AND order_no = $2",
                                  inv["ebcCode"], inv["orderNo"]) == 0  # fmt: skip


async def test_a_refused_order_withdrawal_leaves_the_order_live(api: Client) -> None:
    s, inv = await _declared(api, 93)
    order = s.order_doc
    withdrawal = version(s.order, "3", "20261120170000")
    assert (await post_json(api, withdrawal)).status == 202
    assert (await _shipment(api, inv))["missing"] == ["order"]
    r = await post_receipt(api, "CEB312", {
        "guid": withdrawal["documents"][0]["guid"], "ebpCode": order["ebpCode"], "ebcCode": order["ebcCode"],
        "orderNo": order["orderNo"], "returnStatus": "-301009", "returnTime": "20261120171000000",
        "returnInfo": "x"})
    assert r.status == 200 and r.body["receipts"][0]["outcome"] == "applied", r.body
    assert (await _shipment(api, inv))["state"] == "matched"
    r = await post_json(api, version(s.order, "2", "20261120180000"))
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "replaced"), r.body


async def test_a_refused_withdrawal_of_a_held_inventory_revives_nothing(routed: Client, db_pool: asyncpg.Pool) -> None:
    """An inventory the gateway still holds (its order, payment and waybill not yet taken by customs) was never sent:
    customs refuses its withdrawal for want of it, and the withdrawn inventory must not come back to be sent."""
    s, inv = await _declared(routed, 94)
    assert await db_pool.fetchval("SELECT forward_state FROM documents WHERE doc_guid = $1", inv["guid"]) == "held"
    withdrawal = version(s.inventory, "3", "20261120170000")
    assert (await post_json(routed, withdrawal)).status == 202
    await _receipt(routed, inv, withdrawal["documents"][0]["guid"], "-621009", "20261120171000000")
    r = await post_json(routed, version(s.inventory, "2", "20261120180000"))
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "state.not_found", r.body
    assert (await _shipment(routed, inv))["missing"] == ["inventory"]


async def test_a_released_inventory_takes_no_change_or_withdrawal(api: Client, db_pool: asyncpg.Pool) -> None:
    """Customs released it (CEB622 800): a change (appType 2) or withdrawal (appType 3) is refused at its appType —
    customs would answer -621043 — nothing stored, nothing forwarded; the way back is a cancellation (CEB623)."""
    s, inv = await _declared(api, 95)
    await _receipt(api, inv, inv["guid"], "399", "20261120151000000")
    await _receipt(api, inv, inv["guid"], "800", "20261120152000000")
    for app_type, time in (("2", "20261120170000"), ("3", "20261120180000")):
        r = await post_json(api, version(s.inventory, app_type, time))
        assert r.status == 409, r.body
        [issue] = r.body["error"]["issues"]
        assert (issue["code"], issue["path"]) == ("state.inventory_released",
                                                  "/CEB621Message/Inventory[1]/InventoryHead/appType")  # fmt: skip
        assert "customs released" in issue["message"] and "cancellation (CEB623)" in issue["message"], issue
    assert await db_pool.fetchval("SELECT count(*) FROM documents WHERE message_type = 'CEB621' AND key1 = $1"
                                  " AND key2 = $2", inv["ebcCode"], inv["orderNo"]) == 1  # fmt: skip
    assert (await _shipment(api, inv))["customs_status"] == "released"


async def test_a_withdrawal_refused_for_the_release_leaves_the_inventory_released(api: Client) -> None:
    """A withdrawal sent before the release and refused after it (-621043): customs holds the first declaration,
    released — current again (restore_withdrawn), it takes no change either."""
    s, inv = await _declared(api, 96)
    await _receipt(api, inv, inv["guid"], "399", "20261120151000000")
    withdrawal = version(s.inventory, "3", "20261120170000")
    r = await post_json(api, withdrawal)
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "withdrawn"), r.body
    await _receipt(api, inv, inv["guid"], "800", "20261120171000000")
    await _receipt(api, inv, withdrawal["documents"][0]["guid"], "-621043", "20261120172000000")
    r = await post_json(api, version(s.inventory, "2", "20261120180000"))
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "state.inventory_released", r.body
