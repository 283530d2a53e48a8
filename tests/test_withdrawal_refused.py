"""A withdrawal (appType 3) or a change (appType 2) customs refuses leaves customs the version before it (spec §6.2):
through the API and the receipt path, that version is the key's current row again — a change of it is judged against
it, its shipment is reconciled against it — while a withdrawal customs accepts still withdraws."""

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


async def _receipt(
    api: Client, inv: dict[str, Any], guid: str, status: str, time: str, outcome: str = "applied"
) -> None:
    r = await post_receipt(api, "CEB622", {
        "guid": guid, "customsCode": inv["customsCode"], "ebpCode": inv["ebpCode"], "ebcCode": inv["ebcCode"],
        "agentCode": inv["agentCode"], "copNo": inv["copNo"], "preNo": "B20261120000000091",
        "invtNo": "460120261000000091", "returnStatus": status, "returnTime": time, "returnInfo": "x"})
    assert r.status == 200, r.body
    assert r.body["receipts"][0]["outcome"] == outcome, r.body


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
    rows = await _inventory_rows(db_pool, inv)
    # the withdrawal stays in the history with its refusal; the version customs holds is current again, superseded
    # by nothing
    assert [r[1:] for r in rows] == [("1", True, False, "receipted", None), ("3", False, True, "rejected", None)]
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
    """An order takes a change or withdrawal until its inventory is declared (then customs answers -301011, and so does
    the gateway: state.inventory_declared): the withdrawal goes before the inventory."""
    s = import_ship(93)
    for p in (s.order, s.payment, s.waybill):
        assert (await post_json(api, p)).status == 202
    order, inv = s.order_doc, s.inventory_doc
    withdrawal = version(s.order, "3", "20261120170000")
    assert (await post_json(api, withdrawal)).status == 202
    assert (await _shipment(api, inv))["missing"] == ["order", "inventory"]
    r = await post_receipt(api, "CEB312", {
        "guid": withdrawal["documents"][0]["guid"], "ebpCode": order["ebpCode"], "ebcCode": order["ebcCode"],
        "orderNo": order["orderNo"], "returnStatus": "-301009", "returnTime": "20261120171000000",
        "returnInfo": "x"})
    assert r.status == 200 and r.body["receipts"][0]["outcome"] == "applied", r.body
    assert (await _shipment(api, inv))["missing"] == ["inventory"]
    assert (await post_json(api, s.inventory)).status == 202
    assert (await _shipment(api, inv))["state"] == "matched"
    # the order is live again, and its inventory declared now: customs takes no change of it (-301011)
    r = await post_json(api, version(s.order, "2", "20261120180000"))
    assert r.status == 409, r.body
    [issue] = r.body["error"]["issues"]
    assert (issue["code"], issue["path"]) == ("state.inventory_declared", "/CEB311Message/Order[1]/OrderHead/appType")


async def test_a_withdrawal_of_a_held_inventory_is_not_sent_and_revives_nothing(
    routed: Client, db_pool: asyncpg.Pool
) -> None:
    """An inventory the gateway still holds (its order, payment and waybill not yet taken by customs) was never sent:
    its withdrawal is concluded here (customs would refuse it for want of the inventory, -621042), nothing is sent,
    and a receipt that comes all the same (not_sent) brings neither the withdrawn inventory nor its held version
    back."""
    s, inv = await _declared(routed, 94)
    assert await db_pool.fetchval("SELECT forward_state FROM documents WHERE doc_guid = $1", inv["guid"]) == "held"
    withdrawal = version(s.inventory, "3", "20261120170000")
    r = await post_json(routed, withdrawal)
    assert r.status == 202 and r.body["documents"][0]["code"] == "state.withdrawn_unsent", r.body
    assert await db_pool.fetchval("SELECT count(*) FROM jobs WHERE payload ->> 'guid' = $1", withdrawal["guid"]) == 0
    await _receipt(routed, inv, withdrawal["documents"][0]["guid"], "-621042", "20261120171000000", "not_sent")
    r = await post_json(routed, version(s.inventory, "2", "20261120180000"))
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "state.not_found", r.body
    shipment = await _shipment(routed, inv)
    assert shipment["missing"] == ["inventory"]
    inventories = [(d["app_type"], d["forward_state"]) for d in shipment["documents"] if d["kind"] == "inventory"]
    assert inventories == [("1", "unsent"), ("3", "unsent")], shipment["documents"]


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


async def _inventory_rows(db_pool: asyncpg.Pool, inv: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = await db_pool.fetch(
        "SELECT id, app_type, is_current, withdrawn, forward_state, superseded_by FROM documents"
        " WHERE message_type = 'CEB621' AND key1 = $1 AND key2 = $2 ORDER BY id", inv["ebcCode"], inv["orderNo"])
    return [tuple(r) for r in rows]


async def test_a_change_customs_refuses_leaves_the_version_before_current(api: Client, db_pool: asyncpg.Pool) -> None:
    """Customs refuses a change of a declared inventory (CEB622 100, before any release): it holds the first
    declaration, which is the key's current row again; the shipment is reconciled against it and a further change is
    judged against it."""
    s, inv = await _declared(api, 97)
    await _receipt(api, inv, inv["guid"], "120", "20261120151000000")
    change = version(s.inventory, "2", "20261120170000", buyerName="王拒绝")
    r = await post_json(api, change)
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "replaced"), r.body
    assert (await _shipment(api, inv))["state"] == "mismatched"  # the change's buyerName is not the order's
    ledger = await db_pool.fetchval("SELECT amount FROM tax_ledger WHERE ebc_code = $1 AND order_no = $2",
                                    inv["ebcCode"], inv["orderNo"])  # fmt: skip
    await _receipt(api, inv, change["documents"][0]["guid"], "100", "20261120171000000")
    shipment = await _shipment(api, inv)
    assert (shipment["state"], shipment["findings"]) == ("matched", []), shipment
    # the refused change stays in the history with its refusal; the version customs holds is current again
    first, refused = await _inventory_rows(db_pool, inv)
    assert (first[1:5], refused[1:5]) == (("1", True, False, "receipted"), ("2", False, False, "rejected"))
    assert first[5] is None  # current again: superseded by nothing (it named the refused change)
    current = [d for d in shipment["documents"] if d["kind"] == "inventory" and d["is_current"]]
    assert [d["id"] for d in current] == [first[0]], shipment["documents"]
    assert await db_pool.fetchval("SELECT amount FROM tax_ledger WHERE ebc_code = $1 AND order_no = $2",
                                  inv["ebcCode"], inv["orderNo"]) == ledger  # fmt: skip
    # a further change replaces the version customs holds
    r = await post_json(api, version(s.inventory, "2", "20261120180000", buyerTelephone="13900000098"))
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "replaced"), r.body
    first, refused, further = await _inventory_rows(db_pool, inv)
    assert (first[2], first[5], refused[5], further[2]) == (False, further[0], None, True)


async def test_two_changes_customs_refuses_leave_the_version_before_both(api: Client, db_pool: asyncpg.Pool) -> None:
    """Two changes sent one after the other, both refused (the first while the second was current): customs holds the
    first declaration, which is current again — found back through each version the next one replaced, past the
    refused one."""
    s, inv = await _declared(api, 89)
    await _receipt(api, inv, inv["guid"], "120", "20261120151000000")
    second = version(s.inventory, "2", "20261120170000", buyerTelephone="13900000081")
    third = version(s.inventory, "2", "20261120171000", buyerTelephone="13900000082")
    for change in (second, third):
        r = await post_json(api, change)
        assert (r.status, r.body["documents"][0]["outcome"]) == (202, "replaced"), r.body
    await _receipt(api, inv, second["documents"][0]["guid"], "100", "20261120172000000")
    assert [r[1:5] for r in await _inventory_rows(db_pool, inv)] == [
        ("1", False, False, "receipted"), ("2", False, False, "rejected"), ("2", True, False, "none")]
    await _receipt(api, inv, third["documents"][0]["guid"], "100", "20261120173000000")
    first, refused, refused_too = await _inventory_rows(db_pool, inv)
    assert (first[1:6], refused[1:5], refused_too[1:5]) == (
        ("1", True, False, "receipted", None), ("2", False, False, "rejected"), ("2", False, False, "rejected"))
    assert (await _shipment(api, inv))["state"] == "matched"


async def test_a_refused_order_change_leaves_the_order_before_current(api: Client, db_pool: asyncpg.Pool) -> None:
    s = import_ship(98)
    for p in (s.order, s.payment, s.waybill):
        assert (await post_json(api, p)).status == 202
    order, inv = s.order_doc, s.inventory_doc
    change = version(s.order, "2", "20261120170000", consignee="Zhang Refused")
    r = await post_json(api, change)
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "replaced"), r.body
    shipment = await _shipment(api, inv)
    assert "recon.consignee_mismatch" in {f["code"] for f in shipment["findings"]}, shipment
    r = await post_receipt(api, "CEB312", {
        "guid": change["documents"][0]["guid"], "ebpCode": order["ebpCode"], "ebcCode": order["ebcCode"],
        "orderNo": order["orderNo"], "returnStatus": "100", "returnTime": "20261120171000000", "returnInfo": "x"})
    assert r.status == 200 and r.body["receipts"][0]["outcome"] == "applied", r.body
    shipment = await _shipment(api, inv)
    assert (shipment["missing"], shipment["findings"]) == (["inventory"], []), shipment
    assert (await post_json(api, s.inventory)).status == 202
    shipment = await _shipment(api, inv)
    assert (shipment["state"], shipment["findings"]) == ("matched", []), shipment
    rows = await db_pool.fetch(
        "SELECT app_type, is_current, forward_state FROM documents WHERE message_type = 'CEB311' AND key1 = $1"
        " AND key2 = $2 ORDER BY id", order["ebpCode"], order["orderNo"])  # fmt: skip
    assert [tuple(r) for r in rows] == [("1", True, "none"), ("2", False, "rejected")]


async def test_a_refused_change_that_moved_the_payment_to_another_order_moves_it_back(
    api: Client, db_pool: asyncpg.Pool
) -> None:
    """A payment's key is its payCode and payTransactionId: a change may name another orderNo, which takes the payment
    to another shipment. Customs refusing that change holds the payment where it was: it is current there again (found
    by the version the change replaced, not by the shipment), the first shipment whole again, the other without it."""
    s, inv = await _declared(api, 90)
    pay = s.payment_doc
    elsewhere = pay["orderNo"] + "X"
    change = version(s.payment, "2", "20261120170000", orderNo=elsewhere)
    r = await post_json(api, change)
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "replaced"), r.body
    assert (await _shipment(api, inv))["missing"] == ["payment"]
    moved = await api.get(f"/v1/shipments/{pay['ebpCode']}/{elsewhere}")
    assert moved.status == 200 and moved.body["missing"] == ["order", "waybill", "inventory"], moved.body
    r = await post_receipt(api, "CEB412", {
        "guid": change["documents"][0]["guid"], "payCode": pay["payCode"], "payTransactionId": pay["payTransactionId"],
        "returnStatus": "100", "returnTime": "20261120171000000", "returnInfo": "x"})
    assert r.status == 200 and r.body["receipts"][0]["outcome"] == "applied", r.body
    shipment = await _shipment(api, inv)
    assert (shipment["state"], shipment["missing"], shipment["findings"]) == ("matched", [], []), shipment
    payments = [d for d in shipment["documents"] if d["kind"] == "payment" and d["is_current"]]
    assert [d["app_type"] for d in payments] == ["1"], shipment["documents"]
    rows = await db_pool.fetch(
        "SELECT app_type, is_current, forward_state, order_no FROM documents WHERE message_type = 'CEB411'"
        " AND key1 = $1 AND key2 = $2 ORDER BY id", pay["payCode"], pay["payTransactionId"])  # fmt: skip
    assert [tuple(r) for r in rows] == [("1", True, "none", pay["orderNo"]), ("2", False, "rejected", elsewhere)]
    moved = await api.get(f"/v1/shipments/{pay['ebpCode']}/{elsewhere}")
    # the other shipment keeps its row (its history shows the refused change), every leg missing
    assert (moved.status, moved.body["missing"]) == (200, ["order", "payment", "waybill", "inventory"]), moved.body


@pytest.mark.parametrize(("app_type", "outcome"), [("3", "withdrawn"), ("2", "replaced")])
async def test_a_change_or_withdrawal_refused_after_the_release_leaves_the_inventory_released(
    api: Client, app_type: str, outcome: str
) -> None:
    """A withdrawal or change sent before the release receipt came, refused after it (-621043): customs holds the
    first declaration, released — current again (restore_refused), it takes no further change or withdrawal
    (state.inventory_released), which the refused version, current, let through to be refused by customs again."""
    s, inv = await _declared(api, 96 if app_type == "3" else 99)
    await _receipt(api, inv, inv["guid"], "399", "20261120151000000")
    sent = version(s.inventory, app_type, "20261120170000")
    r = await post_json(api, sent)
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, outcome), r.body
    await _receipt(api, inv, inv["guid"], "800", "20261120171000000")
    await _receipt(api, inv, sent["documents"][0]["guid"], "-621043", "20261120172000000")
    for again, time in (("2", "20261120180000"), ("3", "20261120190000")):
        r = await post_json(api, version(s.inventory, again, time))
        assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "state.inventory_released", r.body
    assert (await _shipment(api, inv))["customs_status"] == "released"




async def test_a_refused_change_naming_another_waybill_gives_that_waybill_back(api: Client) -> None:
    """The refused change named another waybill (of another orderNo, no shipment's until then): restored, the first
    declaration names the first waybill again, and the other is a waybill-only shipment again."""
    s, inv = await _declared(api, 100)
    other = version(s.waybill, "1", s.waybill["documents"][0]["appTime"], logisticsNo="YT9900000000100",
                    orderNo="ZG9900000000100")  # fmt: skip
    assert (await post_json(api, other)).status == 202
    assert (await api.get("/v1/shipments/-/ZG9900000000100")).status == 200
    change = version(s.inventory, "2", "20261120170000", logisticsNo="YT9900000000100")
    assert (await post_json(api, change)).status == 202
    assert (await api.get("/v1/shipments/-/ZG9900000000100")).status == 404  # the shipment took it
    await _receipt(api, inv, change["documents"][0]["guid"], "100", "20261120171000000")
    blank = await api.get("/v1/shipments/-/ZG9900000000100")
    assert blank.status == 200, blank.body
    assert [d["keys"]["logisticsNo"] for d in blank.body["documents"]] == ["YT9900000000100"], blank.body
    shipment = await _shipment(api, inv)
    assert (shipment["state"], shipment["findings"]) == ("matched", []), shipment



async def test_a_refused_waybill_change_leaves_the_waybill_before(api: Client) -> None:
    """A waybill's refused change (CEB512 100) named another orderNo: the version before is current again, and its
    shipment is reconciled against it."""
    s, inv = await _declared(api, 101)
    way = s.waybill["documents"][0]
    change = version(s.waybill, "2", "20261120170000", orderNo="ZG9900000000101")
    assert (await post_json(api, change)).status == 202
    codes = {f["code"] for f in (await _shipment(api, inv))["findings"]}
    assert "recon.waybill_order_key_mismatch" in codes, codes
    r = await post_receipt(api, "CEB512", {
        "guid": change["documents"][0]["guid"], "logisticsCode": way["logisticsCode"],
        "logisticsNo": way["logisticsNo"], "returnStatus": "100", "returnTime": "20261120171000000", "returnInfo": "x"})
    assert r.status == 200 and r.body["receipts"][0]["outcome"] == "applied", r.body
    shipment = await _shipment(api, inv)
    assert shipment["state"] == "matched" and all(not f["blocking"] for f in shipment["findings"]), shipment
    current = [d["doc_guid"] for d in shipment["documents"] if d["kind"] == "waybill" and d["is_current"]]
    assert current == [way["guid"]], shipment["documents"]


async def test_a_second_payment_of_an_order_is_flagged_until_withdrawn(api: Client) -> None:
    """An order has one payment (§6.2): a second live one for the same order — another transaction — makes the
    shipment mismatched with a finding naming both, instead of being passed over; the one the order names
    (payTransactionId) is still the one compared, whichever came last; withdrawing the other clears it."""
    s, inv = await _declared(api, 91)
    pay = s.payment_doc
    second = version(s.payment, "1", "20261120170000", payTransactionId=pay["payTransactionId"] + "2")
    r = await post_json(api, second)
    assert r.status == 202, r.body
    shipment = await _shipment(api, inv)
    assert shipment["state"] == "mismatched", shipment
    [finding] = shipment["findings"]
    assert (finding["code"], finding["field"]) == ("recon.payment_duplicate", "payTransactionId"), finding
    assert (finding["left"]["value"], finding["right"]["value"]) == (pay["payTransactionId"],
                                                                     pay["payTransactionId"] + "2")  # fmt: skip
    r = await post_json(api, version(second, "3", "20261120171000"))
    assert (r.status, r.body["documents"][0]["outcome"]) == (202, "withdrawn"), r.body
    shipment = await _shipment(api, inv)
    assert (shipment["state"], shipment["findings"]) == ("matched", []), shipment


async def test_a_payment_brought_back_by_a_refused_change_beside_another_is_flagged(api: Client) -> None:
    """A payment changed to another orderNo leaves its order free for another payment; customs refusing the change
    brings the first back beside it: the order then has two live payments, which the shipment says (it was silently
    compared with the latest before), and the one compared is again the one the order names."""
    s, inv = await _declared(api, 92)
    pay = s.payment_doc
    change = version(s.payment, "2", "20261120170000", orderNo=pay["orderNo"] + "X")
    assert (await post_json(api, change)).status == 202
    other = version(s.payment, "1", "20261120170500", payTransactionId=pay["payTransactionId"] + "9")
    r = await post_json(api, other)
    assert r.status == 202, r.body
    shipment = await _shipment(api, inv)  # the only payment there now, but not the one the order names
    assert [f["code"] for f in shipment["findings"]] == ["recon.payment_reference_mismatch"], shipment["findings"]
    r = await post_receipt(api, "CEB412", {
        "guid": change["documents"][0]["guid"], "payCode": pay["payCode"], "payTransactionId": pay["payTransactionId"],
        "returnStatus": "100", "returnTime": "20261120171000000", "returnInfo": "x"})
    assert r.status == 200 and r.body["receipts"][0]["outcome"] == "applied", r.body
    shipment = await _shipment(api, inv)
    assert shipment["state"] == "mismatched", shipment
    [finding] = shipment["findings"]
    assert (finding["code"], finding["left"]["value"], finding["right"]["value"]) == (
        "recon.payment_duplicate", pay["payTransactionId"], pay["payTransactionId"] + "9"), finding
