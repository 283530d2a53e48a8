"""An inventory the gateway holds (spec §6.7: not sent until its order, payment and waybill were taken by customs)
withdrawn or changed before it was sent: customs never had it, so a withdrawal of it is concluded here (nothing is
sent, the held version never goes), and what still goes is what customs needs."""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import cbec_queue
import pytest

from gateway import samples
from gateway.console.queries import shipment_detail
from gateway.keystate import Conflict
from gateway.render import new_guid
from tests.apiutil import Client, openapi_check
from tests.exportapi import export_ship, import_ship, post_json, version
from tests.exportapi import xml as export_xml
from tests.forwardutil import version_of
from tests.test_forwarding import Flow, flow, shipment, xml_of  # noqa: F401  (flow: the fixture)

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]


async def _legs_taken(f: Flow, s: samples.ShipmentSample) -> None:
    for payload in (s.order, s.payment, s.waybill):
        await f.receipt(payload, "2", 1)


async def _states(f: Flow, *payloads: dict[str, Any]) -> list[str]:
    return [(await f.doc(p))["forward_state"] for p in payloads]


async def _message_states(f: Flow, message: dict[str, Any]) -> list[str]:
    """The forward state of each document of ``message``, in its order."""
    rows = await f.rows("SELECT forward_state FROM documents AS d JOIN messages AS m ON m.id = d.message_id"
                        " WHERE m.guid = $1 ORDER BY d.doc_index", message["guid"])  # fmt: skip
    return [r["forward_state"] for r in rows]


async def _customs_jobs(f: Flow) -> set[str]:
    return {k.removeprefix("customs:") for k in await f.jobs() if k.startswith("customs:")}


async def test_a_withdrawal_of_a_held_inventory_is_concluded_here_and_the_held_version_never_goes(f: Flow) -> None:
    """Customs never had the inventory: its withdrawal would be refused (-621042, nothing to delete) and the seller's
    withdrawal end rejected. It is concluded here instead — answered withdrawn (state.withdrawn_unsent), nothing sent —
    and the held version is never sent either: not when its legs come and are taken, nor beside the inventory
    declared anew, which alone goes."""
    s = shipment(301)
    await f.submit(s.inventory)  # alone: held (its shipment is not matched)
    assert await _states(f, s.inventory) == ["held"]
    withdrawal = version_of(s.inventory, "3", 60)
    body = await f.submit(withdrawal)
    [doc] = body["documents"]
    assert (doc["outcome"], doc["code"]) == ("withdrawn", "state.withdrawn_unsent"), doc
    assert "never had it" in doc["message"], doc
    assert await _states(f, s.inventory, withdrawal) == ["unsent", "unsent"]
    assert await _customs_jobs(f) == set()
    # nothing changed at customs: no webhook (the seller's answer says it)
    assert not [k for k in await f.jobs() if not k.startswith("customs:")], list(await f.jobs())
    # the answer is kept as given: a replay answers the same
    stored = await f.rows("SELECT response FROM messages WHERE guid = $1", withdrawal["guid"])
    assert stored[0]["response"]["documents"][0]["code"] == "state.withdrawn_unsent"
    assert (await f.doc(withdrawal))["cop_msg_id"] is None  # never goes: no envelope
    # the legs come and customs takes them: the withdrawn inventory stays unsent
    for payload in (s.order, s.payment, s.waybill):
        await f.submit(payload)
        await f.receipt(payload, "2", 1)
    assert await _states(f, s.inventory) == ["unsent"]
    assert s.inventory["guid"] not in await _customs_jobs(f)
    # declared anew: the new declaration alone goes
    anew = version_of(s.inventory, "1", 120)
    await f.submit(anew)
    assert await _states(f, s.inventory, withdrawal, anew) == ["unsent", "unsent", "queued"]
    assert await _customs_jobs(f) == {s.order["guid"], s.payment["guid"], s.waybill["guid"], anew["guid"]}


async def test_a_receipt_for_a_withdrawal_concluded_here_moves_nothing(f: Flow) -> None:
    """Whatever customs says of a document it never had (a relay that echoed it all the same) is kept, not_sent, and
    brings the withdrawn inventory back for nothing: the key stays withdrawn."""
    s = shipment(302)
    await f.submit(s.inventory)
    withdrawal = version_of(s.inventory, "3", 60)
    await f.submit(withdrawal)
    for t, payload in enumerate((s.inventory, withdrawal)):
        (res,) = await f.receipt(payload, "-621042", t)
        assert res["outcome"] == "not_sent", res
    rows = await f.rows("SELECT app_type, is_current, withdrawn, forward_state FROM documents WHERE kind = 'inventory'"
                        " ORDER BY id")  # fmt: skip
    assert [tuple(r) for r in rows] == [("1", False, False, "unsent"), ("3", True, True, "unsent")]


async def test_a_held_change_withdrawn_is_never_sent_and_the_withdrawal_goes_for_the_version_customs_has(
    f: Flow,
) -> None:
    """Customs has the first declaration (sent); a change of it, held (it leaves the shipment mismatched), then a
    withdrawal: the change is never sent, the withdrawal goes (of the version customs has)."""
    s = shipment(303)
    for payload in (s.order, s.payment, s.waybill, s.inventory):
        await f.submit(payload)
    await _legs_taken(f, s)
    change = version_of(s.inventory, "2", 60, buyerName="王不符")
    await f.submit(change)
    assert await _states(f, s.inventory, change) == ["queued", "held"]
    withdrawal = version_of(s.inventory, "3", 120)
    [doc] = (await f.submit(withdrawal))["documents"]
    assert (doc["outcome"], doc["code"]) == ("withdrawn", None), doc
    assert await _states(f, s.inventory, change, withdrawal) == ["queued", "unsent", "queued"]
    jobs = await _customs_jobs(f)
    assert {s.inventory["guid"], withdrawal["guid"]} <= jobs and change["guid"] not in jobs


async def _sent_once_its_legs_are_taken(f: Flow, s: samples.ShipmentSample) -> None:
    """The four legs of ``s``, the inventory first held, then released by its legs' receipts: queued for customs."""
    for payload in (s.order, s.payment, s.waybill, s.inventory):
        await f.submit(payload)
    for payload in (s.order, s.payment, s.waybill):
        await f.receipt(payload, "2", 1)
    assert await _states(f, s.inventory) == ["queued"]


async def test_a_withdrawal_while_the_held_version_is_on_its_way_goes_after_it(f: Flow) -> None:
    """Released (its legs taken) and claimed by a worker: the inventory is on its way to customs, which will have it.
    Its withdrawal is no local matter then: it goes, behind the inventory (the same ordering key)."""
    s = shipment(304)
    await _sent_once_its_legs_are_taken(f, s)
    async with f.pool.acquire() as conn:
        claimed = await cbec_queue.claim(conn, worker_id="w", lease_s=30, limit=10, endpoint="customs")
    assert s.inventory["guid"] in {j.payload["guid"] for j in claimed}
    withdrawal = version_of(s.inventory, "3", 60)
    [doc] = (await f.submit(withdrawal))["documents"]
    assert (doc["outcome"], doc["code"]) == ("withdrawn", None), doc
    assert await _states(f, s.inventory, withdrawal) == ["queued", "queued"]
    jobs = await f.jobs()
    first, then = jobs[f"customs:{s.inventory['guid']}"], jobs[f"customs:{withdrawal['guid']}"]
    assert first["state"] == "running" and then["state"] == "queued"
    assert set(first["ordering_keys"]) == set(then["ordering_keys"]) and first["id"] < then["id"]


async def test_a_withdrawal_of_a_held_export_inventory_is_concluded_here(f: Flow) -> None:
    """The export inventory (CEB603) is held the same way (until its order, 收款单 and waybill were taken)."""
    s = export_ship(305)
    inventory = s.payloads()["CEB603"]
    checked = f.pipeline.check(export_xml(inventory))
    await f.store.ingest(checked.message, checked.raw, submitter="test")
    assert await _states(f, inventory) == ["held"]
    withdrawal = version_of(inventory, "3", 60)
    checked = f.pipeline.check(export_xml(withdrawal))
    body = (await f.store.ingest(checked.message, checked.raw, submitter="test")).body
    assert body["documents"][0]["code"] == "state.withdrawn_unsent", body
    assert await _states(f, inventory, withdrawal) == ["unsent", "unsent"]
    assert await _customs_jobs(f) == set()


@pytest.fixture
def f(flow: Flow) -> Flow:  # noqa: F811
    return flow


# --- a change of a held inventory -------------------------------------------------------------------------


async def test_a_first_declaration_held_with_another_parcel_goes_when_its_change_may(f: Flow) -> None:
    """A bonded warehouse's message of two parcels, held; one parcel changed to another waybill: the message goes when
    the other parcel and the change are ready — by the change's waybill, not the first declaration's own, which never
    comes — and the change right after it. The message waited for that waybill for good, and the change went alone,
    to be refused for want of the inventory (-621042)."""
    a, b = shipment(311, mode="1210"), shipment(312, mode="1210")
    both = _together(a, b)
    await f.submit(both)
    other = a.waybill_doc["logisticsNo"][:-1] + ("1" if a.waybill_doc["logisticsNo"][-1] != "1" else "2")
    change = version_of(a.inventory, "2", 60, logisticsNo=other)
    [doc] = (await f.submit(change))["documents"]
    assert doc["outcome"] == "replaced", doc
    await _ready(f, b)
    a.waybill = version_of(a.waybill, "1", 0, logisticsNo=other)
    await _ready(f, a)
    assert await _states(f, change) == ["queued"]
    jobs = await f.jobs()
    first, then = jobs[f"customs:{both['guid']}"], jobs[f"customs:{change['guid']}"]
    assert first["id"] < then["id"] and set(then["ordering_keys"]) <= set(first["ordering_keys"])


async def test_a_held_change_replaced_by_a_newer_one_is_never_sent(f: Flow) -> None:
    """Customs has the first declaration; a change of it, held (it leaves the shipment mismatched), replaced by a newer
    change before it was sent: customs needs only the newer one, the change between is unsent."""
    s = shipment(313)
    await _sent_once_its_legs_are_taken(f, s)
    second = version_of(s.inventory, "2", 60, buyerName="王不符")
    await f.submit(second)
    assert await _states(f, second) == ["held"]  # mismatched: held
    third = version_of(s.inventory, "2", 120, buyerTelephone="13900000313")
    await f.submit(third)
    assert await _states(f, s.inventory, second, third) == ["queued", "unsent", "queued"]
    assert {s.inventory["guid"], third["guid"]} <= await _customs_jobs(f)
    assert second["guid"] not in await _customs_jobs(f)


def _together(*parcels: samples.ShipmentSample) -> dict[str, Any]:
    """A bonded warehouse's message of several inventories (one signature over them all)."""
    return {**parcels[0].inventory, "guid": new_guid(), "documents": [copy.deepcopy(p.inventory_doc) for p in parcels]}


async def _ready(f: Flow, s: samples.ShipmentSample) -> None:
    for payload in (s.order, s.payment, s.waybill):
        await f.submit(payload)
        await f.receipt(payload, "2", 1)


async def test_a_change_of_a_held_inventory_never_goes_before_its_first_declaration(f: Flow) -> None:
    """The first declaration is held in a message of two parcels, the other not ready: the change of the ready one
    waits for that message, and goes once it went. (It went alone, to be refused for want of the inventory.)"""
    a, b = shipment(314, mode="1210"), shipment(315, mode="1210")
    both = _together(a, b)
    await f.submit(both)
    change = version_of(a.inventory, "2", 60, buyerTelephone="13900000314")
    await f.submit(change)
    await _ready(f, a)
    assert set(await _message_states(f, both)) == {"held"}
    assert await _states(f, change) == ["held"]
    assert change["guid"] not in await _customs_jobs(f)
    await _ready(f, b)  # the message goes, then the change
    assert await _states(f, change) == ["queued"]
    jobs = await f.jobs()
    assert jobs[f"customs:{both['guid']}"]["id"] < jobs[f"customs:{change['guid']}"]["id"]


# --- a parcel of a held message of several --------------------------------------------------------------


async def _held_until(f: Flow, s: samples.ShipmentSample, payload: dict[str, Any]) -> Any:
    found = await f.store.get_shipment(s.order_doc["ebpCode"], s.order_doc["orderNo"])
    docs = (await f.outbox.shipment_forwarding(found))["documents"]
    [doc] = [d for d in docs if d["doc_guid"] == payload["documents"][0]["guid"]]
    return doc.get("held_until")


async def test_a_parcel_withdrawn_from_a_held_message_of_several_holds_it_no_more_and_its_withdrawal_follows(
    f: Flow,
) -> None:
    """The message goes whole (one signature): the withdrawn parcel goes with the others, so customs will have it and
    its withdrawal must follow — held behind the message, saying what that waits for. The message no longer waits for
    the withdrawn parcel's legs (which may never come: the reason it was withdrawn); it waited for them for good."""
    a, b = shipment(321, mode="1210"), shipment(322, mode="1210")
    both = _together(a, b)
    await f.submit(both)
    withdrawal = version_of(a.inventory, "3", 60)
    [doc] = (await f.submit(withdrawal))["documents"]
    assert (doc["outcome"], doc["code"]) == ("withdrawn", None), doc  # it goes: customs will have the parcel
    assert await _states(f, withdrawal) == ["held"]
    waits = await _held_until(f, a, withdrawal)
    assert [(w["orderNo"], w["waiting_for"]) for w in waits] == [
        (b.order_doc["orderNo"], ["matched", "order", "payment", "waybill"])], waits
    await _ready(f, b)
    assert await _states(f, withdrawal) == ["queued"]
    jobs = await f.jobs()
    assert jobs[f"customs:{both['guid']}"]["id"] < jobs[f"customs:{withdrawal['guid']}"]["id"]


async def test_the_last_parcel_withdrawn_from_a_held_message_sends_nothing_of_it(f: Flow) -> None:
    """Every parcel of the held message withdrawn: nothing of it goes, and the withdrawal held behind it is concluded
    here too."""
    a, b = shipment(323, mode="1210"), shipment(324, mode="1210")
    both = _together(a, b)
    await f.submit(both)
    first, last = version_of(a.inventory, "3", 60), version_of(b.inventory, "3", 60)
    await f.submit(first)
    [doc] = (await f.submit(last))["documents"]
    assert doc["code"] == "state.withdrawn_unsent", doc
    assert await _message_states(f, both) == ["unsent", "unsent"]
    assert await _states(f, first, last) == ["unsent", "unsent"]
    for s in (a, b):
        await _ready(f, s)
    assert await _customs_jobs(f) == {p["guid"] for s in (a, b) for p in (s.order, s.payment, s.waybill)}


async def test_a_withdrawal_of_a_held_parcel_and_a_sent_one_goes_for_the_sent_one(f: Flow) -> None:
    """One message withdraws two inventories, one the gateway holds (never sent), one sent: it goes (customs has the
    second), the first concluded here (unsent, state.withdrawn_unsent); what customs answers of the first moves
    nothing, of the second withdraws it. The message waited, held, for good."""
    held_one, sent_one = shipment(325), shipment(326)
    await f.submit(held_one.inventory)
    for payload in sent_one.payloads().values():
        await f.submit(payload)
    await _ready(f, sent_one)
    assert await _states(f, held_one.inventory, sent_one.inventory) == ["held", "queued"]
    w_held, w_sent = (version_of(s.inventory, "3", 60)["documents"][0] for s in (held_one, sent_one))
    both = {**held_one.inventory, "guid": new_guid(), "documents": [w_held, w_sent]}
    body = await f.submit(both)
    assert [(d["outcome"], d["code"]) for d in body["documents"]] == [
        ("withdrawn", "state.withdrawn_unsent"), ("withdrawn", None)], body["documents"]
    rows = await f.rows("SELECT doc_guid, forward_state FROM documents WHERE doc_guid = ANY ($1::text[])",
                        [w_held["guid"], w_sent["guid"]])  # fmt: skip
    assert {r["doc_guid"]: r["forward_state"] for r in rows} == {w_held["guid"]: "unsent", w_sent["guid"]: "queued"}
    assert both["guid"] in await _customs_jobs(f)
    for status, doc, t in (("-621042", w_held, 1), ("120", w_sent, 2)):
        (res,) = await f.receipt({**both, "documents": [doc]}, status, t)
        assert res["outcome"] == ("not_sent" if doc is w_held else "applied"), res


# --- a change of what customs never had ------------------------------------------------------------------


async def test_a_change_of_an_inventory_customs_never_had_is_refused_and_a_declaration_anew_replaces_it(
    f: Flow,
) -> None:
    """No version was sent: customs would refuse a change (-621042) and the first declaration sent before it would be
    checked as it was — the very content the change corrects. The change is refused (409 state.unsent_change,
    nothing stored); the inventory declared anew (appType 1, a newer appTime) replaces the held one here, and only
    the new declaration goes."""
    s = shipment(331)
    await f.submit(s.inventory)
    change = version_of(s.inventory, "2", 60, buyerTelephone="13900000331")
    checked = f.pipeline.check(xml_of(change))
    with pytest.raises(Conflict) as refused:
        await f.store.ingest(checked.message, checked.raw, submitter="test")
    [issue] = refused.value.issues
    assert (issue.code, issue.path) == ("state.unsent_change", "/CEB621Message/Inventory[1]/InventoryHead/appType")
    assert not await f.rows("SELECT 1 FROM messages WHERE guid = $1", change["guid"])
    anew = version_of(s.inventory, "1", 60, buyerTelephone="13900000331")
    [doc] = (await f.submit(anew))["documents"]
    assert doc["outcome"] == "replaced", doc
    assert await _states(f, s.inventory, anew) == ["unsent", "held"]
    for payload in (s.order, s.payment, s.waybill):
        await f.submit(payload)
    await _legs_taken(f, s)
    assert await _states(f, s.inventory, anew) == ["unsent", "queued"]
    jobs = await _customs_jobs(f)
    assert anew["guid"] in jobs and s.inventory["guid"] not in jobs


async def test_an_inventory_declared_anew_before_it_was_sent_then_withdrawn_sends_nothing(f: Flow) -> None:
    s = shipment(332)
    await f.submit(s.inventory)
    anew = version_of(s.inventory, "1", 60, buyerTelephone="13900000332")
    await f.submit(anew)
    withdrawal = version_of(s.inventory, "3", 120)
    [doc] = (await f.submit(withdrawal))["documents"]
    assert doc["code"] == "state.withdrawn_unsent", doc
    assert await _states(f, s.inventory, anew, withdrawal) == ["unsent"] * 3
    await _ready(f, s)
    assert await _customs_jobs(f) == {p["guid"] for p in (s.order, s.payment, s.waybill)}


async def test_a_change_of_an_export_inventory_customs_never_had_is_refused(f: Flow) -> None:
    s = export_ship(333)
    inventory = s.payloads()["CEB603"]
    checked = f.pipeline.check(export_xml(inventory))
    await f.store.ingest(checked.message, checked.raw, submitter="test")
    checked = f.pipeline.check(export_xml(version_of(inventory, "2", 60)))
    with pytest.raises(Conflict) as refused:
        await f.store.ingest(checked.message, checked.raw, submitter="test")
    assert [i.code for i in refused.value.issues] == ["state.unsent_change"]


# --- what the views say ----------------------------------------------------------------------------------


async def test_the_views_say_plainly_a_document_was_withdrawn_or_replaced_before_it_was_sent(
    routed: Client, db_pool: asyncpg.Pool
) -> None:
    """The shipment, the message and the console's shipment page show unsent documents as such: forward_state unsent
    and, in words, that customs never had them; the 202 answer says the withdrawal was concluded here."""
    s = import_ship(341)
    inv = s.inventory_doc
    assert (await post_json(routed, s.inventory)).status == 202
    anew = version(s.inventory, "1", "20261120160000", buyerTelephone="13900000341")
    withdrawal = version(s.inventory, "3", "20261120170000")
    for payload in (anew, withdrawal):
        r = await post_json(routed, payload)
        assert r.status == 202, r.body
    openapi_check(r.body, "Accepted")
    assert r.body["documents"][0]["code"] == "state.withdrawn_unsent"
    shipment = (await routed.get(f"/v1/shipments/{inv['ebpCode']}/{inv['orderNo']}")).body
    openapi_check(shipment, "Shipment")
    assert (shipment["customs_status"], shipment["state"]) == ("pending", "incomplete"), shipment
    said = [(d["app_type"], d["forward_state"], d["unsent"]["because"]) for d in shipment["documents"]]
    assert said == [("1", "unsent", "withdrawn"), ("1", "unsent", "withdrawn"), ("3", "unsent", "withdrawn")], said
    assert all("never" in d["unsent"]["info"] for d in shipment["documents"]), shipment["documents"]
    message = (await routed.get(f"/v1/messages/{withdrawal['guid']}")).body
    openapi_check(message, "Message")
    [doc] = message["documents"]
    assert doc["forward_state"] == "unsent" and "concluded here" in doc["unsent"]["info"], doc
    assert message["response"]["documents"][0]["code"] == "state.withdrawn_unsent"
    async with db_pool.acquire() as conn:
        page = await shipment_detail(conn, inv["ebpCode"], inv["orderNo"])
    assert page is not None
    assert [d["unsent"]["because"] for d in page["documents"]] == ["withdrawn"] * 3


async def test_a_change_replaced_before_it_was_sent_says_so(f: Flow) -> None:
    s = shipment(342)
    for payload in (s.order, s.payment, s.waybill, s.inventory):
        await f.submit(payload)
    await _legs_taken(f, s)
    second = version_of(s.inventory, "2", 60, buyerName="王不符")
    third = version_of(s.inventory, "2", 120)
    for payload in (second, third):
        await f.submit(payload)
    found = await f.store.get_shipment(s.order_doc["ebpCode"], s.order_doc["orderNo"])
    docs = (await f.outbox.shipment_forwarding(found))["documents"]
    [doc] = [d for d in docs if d["doc_guid"] == second["documents"][0]["guid"]]
    assert doc["unsent"]["because"] == "replaced" and "newer version" in doc["unsent"]["info"], doc


# --- what a held message dropped leaves behind ------------------------------------------------------------


async def test_a_change_waiting_behind_a_held_message_dropped_goes_when_its_shipment_may(f: Flow) -> None:
    """Customs has the first declaration; a bonded warehouse's message holds a change of it and another parcel not
    ready; a newer change waits behind that message. The other parcel withdrawn, the message goes no more (its change
    replaced, the parcel withdrawn): the newer change waits for nothing then and goes. It stayed held for good,
    waiting for nothing (held_until empty), with no job."""
    c, u = shipment(351, mode="1210"), shipment(352, mode="1210")
    for payload in (c.order, c.payment, c.waybill, c.inventory):
        await f.submit(payload)
    await _legs_taken(f, c)
    assert await _states(f, c.inventory) == ["queued"]
    c1 = version_of(c.inventory, "2", 60, buyerTelephone="13900000351")["documents"][0]
    held = {**c.inventory, "guid": new_guid(), "documents": [c1, copy.deepcopy(u.inventory_doc)]}
    await f.submit(held)
    c2 = version_of(c.inventory, "2", 120, buyerTelephone="13900000352")
    await f.submit(c2)
    assert await _states(f, c2) == ["held"]  # behind the held message
    withdrawal = version_of(u.inventory, "3", 60)
    [doc] = (await f.submit(withdrawal))["documents"]
    assert doc["code"] == "state.withdrawn_unsent", doc
    assert await _message_states(f, held) == ["unsent", "unsent"]
    assert await _states(f, c2) == ["queued"]
    assert c2["guid"] in await _customs_jobs(f) and held["guid"] not in await _customs_jobs(f)


async def _one_withdrawn_and_declared_anew(
    f: Flow, a: samples.ShipmentSample, b: samples.ShipmentSample
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The inventories of ``a`` and ``b`` held in one message, ``a``'s withdrawn, then declared anew (another
    telephone: new content): the message, the withdrawal and the new declaration."""
    both = _together(a, b)
    await f.submit(both)
    withdrawal = version_of(a.inventory, "3", 60)
    await f.submit(withdrawal)
    anew = version_of(a.inventory, "1", 120, buyerTelephone="13900000" + a.order_doc["orderNo"][-3:])
    await f.submit(anew)
    return both, withdrawal, anew


async def test_a_parcel_withdrawn_then_declared_anew_holds_its_old_message_no_more(f: Flow) -> None:
    """A parcel of a held message of two withdrawn (its withdrawal follows the message), then declared anew: the
    message still waits for nothing of that parcel — not the new declaration's shipment, which it never needed — and
    goes when the other parcel is ready. It waited for the new declaration's legs too."""
    a, b = shipment(353, mode="1210"), shipment(354, mode="1210")
    both, withdrawal, anew = await _one_withdrawn_and_declared_anew(f, a, b)
    waits = await _held_until(f, b, {"documents": both["documents"][1:]})
    assert [w["orderNo"] for w in waits] == [b.order_doc["orderNo"]], waits
    await _ready(f, b)
    jobs = await _customs_jobs(f)
    assert both["guid"] in jobs and withdrawal["guid"] in jobs, jobs
    assert await _states(f, anew) == ["held"]  # its own legs are not here


async def test_every_parcel_withdrawn_from_a_held_message_one_declared_anew_sends_nothing_of_it(f: Flow) -> None:
    """The parcel withdrawn and declared anew, then the other withdrawn: nothing of the message goes (nothing needs
    the first declaration the parcel was withdrawn from), both withdrawals are concluded here, and the new declaration
    goes alone when its legs are taken. The message went, to be withdrawn parcel by parcel."""
    a, b = shipment(357, mode="1210"), shipment(358, mode="1210")
    both, first, anew = await _one_withdrawn_and_declared_anew(f, a, b)
    last = version_of(b.inventory, "3", 60)
    [doc] = (await f.submit(last))["documents"]
    assert doc["code"] == "state.withdrawn_unsent", doc
    assert await _message_states(f, both) == ["unsent", "unsent"]
    assert await _states(f, first, last, anew) == ["unsent", "unsent", "held"]
    assert await _customs_jobs(f) == set()
    a.inventory = anew
    await _ready(f, a)
    assert await _states(f, anew) == ["queued"]
    assert await _customs_jobs(f) == {p["guid"] for p in (a.order, a.payment, a.waybill, anew)}

async def test_a_withdrawal_concluded_behind_a_dropped_message_says_so_in_its_stored_answer(f: Flow) -> None:
    """Every parcel of a held message withdrawn: the withdrawal held behind the message is concluded here by the last
    one, and its stored answer (GET /v1/messages/{guid}, a replay) says so as the document does:
    state.withdrawn_unsent. It said plain withdrawn while the document was unsent."""
    a, b = shipment(355, mode="1210"), shipment(356, mode="1210")
    await f.submit(_together(a, b))
    first, last = version_of(a.inventory, "3", 60), version_of(b.inventory, "3", 60)
    [doc] = (await f.submit(first))["documents"]
    assert doc["code"] is None, doc  # it would go, behind the message
    await f.submit(last)
    assert await _states(f, first, last) == ["unsent", "unsent"]
    for payload in (first, last):
        [stored] = await f.rows("SELECT response FROM messages WHERE guid = $1", payload["guid"])
        [doc] = stored["response"]["documents"]
        assert (doc["outcome"], doc["code"]) == ("withdrawn", "state.withdrawn_unsent"), doc
        assert "never had it" in doc["message"], doc
