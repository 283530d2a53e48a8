"""The export flow in the store against a real PostgreSQL (spec §4.4, §6.2): each leg, the shipment they make in any
arrival order, kept apart from an import shipment of the same key, and no quota drawn."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta

import asyncpg
import cbec_queue
import pytest

from gateway import receipts as rc
from gateway.config import ForwardingSettings, RouteSettings
from gateway.documents import ParsedMessage
from gateway.forward import Router
from gateway.outbox import Outbox
from gateway.receipts import RANK_CONCLUDED, RANK_DECLARING
from gateway.sandbox.receipts import build_receipt
from gateway.schema import SchemaSet
from gateway.store import Conflict, Store
from tests import exportutil as ex
from tests.test_store import _later, full_shipment, ingest, inventory_head, message

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def store(db_pool: asyncpg.Pool) -> Store:
    return Store(db_pool)


async def shipment(pool: asyncpg.Pool, order_no: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM shipments WHERE order_no = $1 AND ebp_code <> ''", order_no)


async def test_each_export_leg_is_stored_and_joins_its_shipment(store: Store, db_pool: asyncpg.Pool) -> None:
    order, receipt, waybill, inventory = ex.legs("EX1")
    r = await ingest(store, order)
    assert r.http_status == 202
    doc = r.body["documents"][0]
    assert (doc["kind"], doc["outcome"], doc["keys"]) == ("order", "accepted", {"ebpCode": ex.EBP, "orderNo": "EX1"})
    assert doc["shipment"] == {"ebpCode": ex.EBP, "orderNo": "EX1", "flow": "export", "state": "incomplete",
                               "missing": ["payment", "waybill", "inventory"]}  # fmt: skip
    r = await ingest(store, receipt)
    assert r.body["documents"][0]["keys"] == {"ebcCode": ex.EBC, "orderNo": "EX1"}
    assert r.body["documents"][0]["shipment"]["missing"] == ["waybill", "inventory"]
    # the waybill names no orderNo: it is no shipment's until the inventory names it
    r = await ingest(store, waybill)
    assert r.body["documents"][0]["shipment"] is None
    assert await db_pool.fetchval("SELECT count(*) FROM shipments WHERE ebp_code = ''") == 0
    r = await ingest(store, inventory)
    assert r.body["documents"][0]["keys"] == {"agentCode": ex.AGENT, "copNo": "COP-EX1"}
    assert r.body["documents"][0]["shipment"]["state"] == "matched"
    s = await shipment(db_pool, "EX1")
    assert s is not None
    assert (s["flow"], s["state"], list(s["missing"]), s["mode"], s["buyer_id_number"]) == (
        "export", "matched", [], "9610", None)
    kinds = await db_pool.fetch("SELECT kind, message_type FROM documents WHERE is_current ORDER BY id")
    assert [(k["kind"], k["message_type"]) for k in kinds] == [
        ("order", "CEB303"), ("payment", "CEB403"), ("waybill", "CEB505"), ("inventory", "CEB603")]
    # no buyer, no quota: nothing in the ledger
    assert await db_pool.fetchval("SELECT count(*) FROM tax_ledger") == 0


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
async def test_the_export_shipment_is_the_same_whatever_the_arrival_order(
    store: Store, db_pool: asyncpg.Pool, order: tuple[int, ...]
) -> None:
    name = "EXO" + "".join(map(str, order))
    legs = ex.legs(name)
    for i in order:
        await ingest(store, legs[i])
    s = await shipment(db_pool, name)
    assert s is not None and (s["flow"], s["state"], list(s["missing"]), s["findings"]) == ("export", "matched", [], [])


async def test_a_disagreeing_export_inventory_mismatches_with_both_values(store: Store, db_pool: asyncpg.Pool) -> None:
    order, receipt, waybill, _ = ex.legs("EX2")
    for m in (order, receipt, waybill):
        await ingest(store, m)
    bad = ex.export_message("CEB603", ex.inventory_head("EX2", ebcCode="EBC0000009"), lines=ex.inventory_lines(qty="3"))
    r = await ingest(store, bad)
    assert r.body["documents"][0]["shipment"]["state"] == "mismatched"
    s = await shipment(db_pool, "EX2")
    assert s is not None
    found = {(f["code"], f["field"], f["left"]["value"], f["right"]["value"]) for f in s["findings"]}
    assert ("recon.inventory_order_key_mismatch", "ebcCode", ex.EBC, "EBC0000009") in found
    assert ("recon.line_qty_mismatch", "qty", "2", "3") in found
    # a change with a newer appTime puts it right
    fixed = ex.export_message("CEB603", ex.inventory_head("EX2", appType="2", appTime="20250301100001"))
    r = await ingest(store, fixed)
    assert (r.body["documents"][0]["outcome"], r.body["documents"][0]["shipment"]["state"]) == ("replaced", "matched")


async def test_export_keys_follow_the_app_type_rules(store: Store) -> None:
    order = ex.export_message("CEB303", ex.order_head("EX3"))
    await ingest(store, order)
    with pytest.raises(Conflict) as exc:
        await ingest(store, ex.export_message("CEB303", ex.order_head("EX3", guid="EORD-EX3-again")))
    assert [i.code for i in exc.value.issues] == ["state.duplicate"]
    older = await ingest(store, ex.export_message("CEB303", ex.order_head("EX3", appType="2")))
    assert older.body["documents"][0]["outcome"] == "ignored_older"
    gone = await ingest(store, ex.export_message("CEB303", ex.order_head("EX3", appType="3", appTime="20250301100005")))
    assert gone.body["documents"][0]["outcome"] == "withdrawn"


async def test_an_export_and_an_import_shipment_of_one_key_are_never_mixed(store: Store, db_pool: asyncpg.Pool) -> None:
    await full_shipment(store, "MIX1")
    with pytest.raises(Conflict) as exc:
        await ingest(store, ex.export_message("CEB303", ex.order_head("MIX1")))
    assert [i.code for i in exc.value.issues] == ["state.flow_conflict"]
    # the other way round: an import inventory for an export shipment's key
    await ingest(store, ex.export_message("CEB303", ex.order_head("MIX2")))
    with pytest.raises(Conflict) as exc:
        await ingest(store, message("CEB621", inventory_head("MIX2")))
    assert [i.code for i in exc.value.issues] == ["state.flow_conflict"]
    # once the other flow's legs are withdrawn, the key is free for the other flow
    await ingest(store, ex.export_message("CEB303", ex.order_head("MIX2", appType="3", appTime="20250301100009")))
    await ingest(store, message("CEB621", inventory_head("MIX2")))
    s = await shipment(db_pool, "MIX2")
    assert s is not None and (s["flow"], s["state"]) == ("import", "incomplete")
    s = await shipment(db_pool, "MIX1")
    assert s is not None and (s["flow"], s["state"]) == ("import", "matched")


# --- the export cancellation (CEB605) and its inventory ---------------------------------------------------------


async def _declared(pool: asyncpg.Pool, order_no: str, invt_no: str) -> None:
    """A CEB604 2 as the outbox applies it to the order's export inventory: customs gave it ``invt_no`` (every CEB604
    carries one), and has not released it."""
    await pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '2', customs_rank = $3,"
                       " invt_no = $2 WHERE message_type = 'CEB603' AND order_no = $1", order_no, invt_no,
                       RANK_DECLARING)  # fmt: skip


_CLOCK = itertools.count()  # seconds after noon: each receipt's returnTime later than the one before


async def _answered(pool: asyncpg.Pool, order_no: str, invt_no: str, *statuses: str) -> list[str]:
    """Customs' CEB604 receipts of the order's export inventory (its key as ex.inventory_head declares it: agentCode +
    copNo; the receipt's guid E-Port's own), one message each, through the receipt path (Outbox.apply_receipts),
    each numbering it ``invt_no``, later than the one before. Their outcomes."""
    outbox, schemas, outcomes = Outbox(pool, None), SchemaSet(), []
    for status in statuses:
        xml = build_receipt("CEB604", {
            "guid": str(uuid.uuid4()).upper(), "agentCode": ex.AGENT, "copNo": f"COP-{order_no}",
            "preNo": "B20250301000000001", "invtNo": invt_no, "ebcCode": ex.EBC, "ebpCode": ex.EBP,
            "orderNo": order_no, "statisticsFlag": "A", "returnStatus": status,
            "returnTime": f"{datetime(2025, 3, 1, 12) + timedelta(seconds=next(_CLOCK)):%Y%m%d%H%M%S}000",
            "returnInfo": status})  # fmt: skip
        outcomes += [r.outcome for r in await outbox.apply_receipts(rc.read(xml, schemas), source="http",
                                                                          submitter="t")]  # fmt: skip
    return outcomes


async def _released(pool: asyncpg.Pool, order_no: str, invt_no: str) -> None:
    """Customs released the order's export inventory (CEB604 2 → 120 → 399 → 800, numbering it ``invt_no``), as the
    receipts come: what a retail export return of it waits for."""
    assert await _answered(pool, order_no, invt_no, "2", "120", "399", "800") == ["applied"] * 4


async def _refused_codes(store: Store, msg: ParsedMessage, scope: frozenset[str] | None = None) -> list[str]:
    with pytest.raises(Conflict) as exc:
        await store.ingest(msg, b"<x/>", submitter="tester", scope=scope)
    return [i.code for i in exc.value.issues]


def _cancel(invt_no: str, **kw: str) -> ParsedMessage:
    return ex.export_message("CEB605", ex.cancel_head(invt_no, **kw))


async def test_an_export_cancellation_names_a_stored_export_inventory_by_its_invt_no(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """A CEB605 names its inventory by the invtNo customs gave the CEB603 (spec A.25): one no stored export inventory
    has — of the enterprises it names, agentCode and ebcCode — is refused, as an import cancellation naming no stored
    inventory is."""
    assert await _refused_codes(store, _cancel("64012025E000000001")) == ["state.no_inventory"]
    for leg in ex.legs("XC1"):
        await ingest(store, leg)
    # declared, but customs has given it no invtNo yet
    assert await _refused_codes(store, _cancel("64012025E000000001")) == ["state.no_inventory"]
    await _declared(db_pool, "XC1", "64012025E000000001")
    # the inventory's invtNo, another enterprise's codes
    assert await _refused_codes(store, _cancel("64012025E000000001", ebcCode="EBC0000009")) == ["state.no_inventory"]
    assert await _refused_codes(store, _cancel("64012025E000000001", agentCode="AGT0000009")) == [
        "state.no_inventory"
    ]
    taken = await ingest(store, _cancel("64012025E000000001"))
    assert taken.http_status == 202 and taken.body["documents"][0]["outcome"] == "accepted"
    # a withdrawn one can be cancelled no more (a change of it keeps its invtNo: customs' number for the key)
    for leg in ex.legs("XC2"):
        await ingest(store, leg)
    await _declared(db_pool, "XC2", "64012025E000000002")
    changed = ex.export_message("CEB603", ex.inventory_head("XC2", appType="2", appTime=_later(ex.T0, 1)))
    await ingest(store, changed)
    assert (await ingest(store, _cancel("64012025E000000002", appTime=_later(ex.T0, 2)))).http_status == 202
    gone = ex.export_message("CEB603", ex.inventory_head("XC2", appType="3", appTime=_later(ex.T0, 3)))
    await ingest(store, gone)
    again = _cancel("64012025E000000002", copNo="CAN-XC2-2", guid="ECAN-XC2-2", appTime=_later(ex.T0, 4))
    assert await _refused_codes(store, again) == ["state.no_inventory"]


async def test_an_export_inventory_the_gateway_holds_is_withdrawn_not_cancelled(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    for leg in ex.legs("XH1"):
        await ingest(store, leg)
    await _declared(db_pool, "XH1", "64012025E000000011")
    # the first declaration held (as the outbox writes one whose shipment is not matched yet), and yet numbered
    await db_pool.execute("UPDATE documents SET forward_state = 'held' WHERE message_type = 'CEB603'")
    assert await _refused_codes(store, _cancel("64012025E000000011")) == ["state.inventory_held"]


async def test_another_tenant_may_not_cancel_an_export_inventory(store: Store, db_pool: asyncpg.Pool) -> None:
    """The inventory an invtNo names belongs to its parties: a key holding none of its codes learns only that it is
    taken (auth.not_your_document), whatever codes its cancellation names."""
    for leg in ex.legs("XT1"):
        await ingest(store, leg)
    await _declared(db_pool, "XT1", "64012025E000000021")
    other = _cancel("64012025E000000021", agentCode="AGT0000009", ebcCode="EBC0000009")
    assert await _refused_codes(store, other, frozenset({"AGT0000009", "EBC0000009"})) == ["auth.not_your_document"]
    mine = await store.ingest(_cancel("64012025E000000021"), b"<x/>", submitter="t",
                              scope=frozenset({ex.AGENT}))  # fmt: skip
    assert mine.http_status == 202


async def _conclude_export_cancellation(pool: asyncpg.Pool, invt_no: str) -> None:
    """The CEB606 399 as the outbox applies it to the cancellation naming ``invt_no``."""
    await pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '399', customs_rank = $2"
                       " WHERE message_type = 'CEB605' AND head ->> 'invtNo' = $1",
                       invt_no, RANK_CONCLUDED)  # fmt: skip


async def test_an_export_inventory_whose_cancellation_customs_concluded_leaves_room_for_a_new_one(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """Nothing of a cancelled export inventory is left at customs (CEB606 399, spec §5.2): it is no order's one
    inventory any more, and its key may be declared anew, as for import."""
    for leg in ex.legs("XV1"):
        await ingest(store, leg)
    await _declared(db_pool, "XV1", "64012025E000000031")
    await ingest(store, _cancel("64012025E000000031", appTime=_later(ex.T0, 1)))
    other = ex.inventory_head("XV1", guid="EINV-XV1-B", copNo="COP-XV1-B", appTime=_later(ex.T0, 2))
    assert await _refused_codes(store, ex.export_message("CEB603", other)) == ["state.second_inventory"]
    await db_pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '120', customs_rank ="
                          " $1 WHERE message_type = 'CEB605'", RANK_DECLARING)  # fmt: skip
    assert await _refused_codes(store, ex.export_message("CEB603", other)) == ["state.second_inventory"]
    await _conclude_export_cancellation(db_pool, "64012025E000000031")
    declared = await ingest(store, ex.export_message("CEB603", other))
    assert declared.http_status == 202 and declared.body["documents"][0]["outcome"] == "accepted"
    s = await shipment(db_pool, "XV1")
    assert s is not None and s["state"] == "matched"
    # the same key declared anew after its cancellation concluded
    for leg in ex.legs("XV2"):
        await ingest(store, leg)
    await _declared(db_pool, "XV2", "64012025E000000032")
    await ingest(store, _cancel("64012025E000000032", appTime=_later(ex.T0, 1)))
    await _conclude_export_cancellation(db_pool, "64012025E000000032")
    anew = await ingest(store, ex.export_message("CEB603", ex.inventory_head("XV2", appTime=_later(ex.T0, 2))))
    assert anew.http_status == 202 and anew.body["documents"][0]["outcome"] == "replaced"
    # declared anew, it is the order's one inventory again
    again = ex.inventory_head("XV2", guid="EINV-XV2-B", copNo="COP-XV2-B", appTime=_later(ex.T0, 3))
    assert await _refused_codes(store, ex.export_message("CEB603", again)) == ["state.second_inventory"]
    # customs numbers the new declaration anew: the cancelled one's number names nothing live any more (a cancellation
    # naming it was tied to the new declaration, and once concluded made it void)
    await db_pool.execute("UPDATE documents SET invt_no = '64012025E000000033' WHERE message_type = 'CEB603'"
                          " AND order_no = 'XV2' AND is_current")  # fmt: skip
    stale = _cancel("64012025E000000032", guid="ECAN-STALE", copNo="CAN-STALE", appTime=_later(ex.T0, 4))
    assert await _refused_codes(store, stale) == ["state.no_inventory"]
    assert (await ingest(store, _cancel("64012025E000000033", guid="ECAN-NEW", copNo="CAN-NEW",
                                        appTime=_later(ex.T0, 4)))).http_status == 202  # fmt: skip


# --- retail export returns (CEB213) and the site's tallies of them (CEB215), spec §4.4 step 5 ---------------------


def _return(invt_no: str, order_no: str, lines: list[dict[str, str]] | None = None, **kw: str) -> ParsedMessage:
    return ex.export_message("CEB213", ex.refund_head(invt_no, order_no, **kw), lines=lines)


async def test_an_export_return_names_a_stored_export_inventory_by_its_invt_no(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """A CEB213 names the inventory it returns by the invtNo customs gave it (A.32), as a CEB605 does: one that no
    stored export inventory of its agentCode and ebcCode has is refused; taken, it is its shipment's, listed on it."""
    assert await _refused_codes(store, _return("64012025E000000051", "RT1")) == ["state.no_inventory"]
    for leg in ex.legs("RT1"):
        await ingest(store, leg)
    assert await _refused_codes(store, _return("64012025E000000051", "RT1")) == ["state.no_inventory"]  # unnumbered
    await _released(db_pool, "RT1", "64012025E000000051")
    other_seller = _return("64012025E000000051", "RT1", ebcCode="EBC0000009")
    assert await _refused_codes(store, other_seller) == ["state.no_inventory"]
    taken = await ingest(store, _return("64012025E000000051", "RT1"))
    assert taken.http_status == 202, taken.body
    doc = taken.body["documents"][0]
    assert (doc["kind"], doc["outcome"], doc["keys"]) == ("refund", "accepted", {"agentCode": ex.AGENT,
                                                                                "coElNo": "RET-64012025E000000051"})
    row = await db_pool.fetchrow("SELECT ebp_code, order_no FROM documents WHERE message_type = 'CEB213'")
    assert tuple(row) == (ex.EBP, "RT1")
    view = await store.get_shipment(ex.EBP, "RT1")
    assert view is not None
    assert [d["message_type"] for d in view["documents"] if d["kind"] == "refund"] == ["CEB213"]
    # a change of it (appType 2) is judged against the inventory again
    changed = _return("64012025E000000051", "RT1", lines=ex.refund_lines("1"), appType="2", appTime=_later(ex.T0, 1))
    assert (await ingest(store, changed)).body["documents"][0]["outcome"] == "replaced"


async def test_an_export_return_waits_for_its_inventorys_release(store: Store, db_pool: asyncpg.Pool) -> None:
    """Goods leave with the release (CEB604 800): a return naming an inventory customs numbered but has not released
    (2, 120, 399) is refused at its invtNo — nothing stored, nothing forwarded — and taken once the 800 came, as the
    receipts come. Released, the inventory takes no change (customs -621043): the way back is a cancellation."""
    no = "64012025E000000059"
    for leg in ex.legs("RT9"):
        await ingest(store, leg)
    early = _return(no, "RT9")
    for status in ("2", "120", "399"):
        assert await _answered(db_pool, "RT9", no, status) == ["applied"]
        with pytest.raises(Conflict) as exc:
            await store.ingest(early, b"<x/>", submitter="tester")
        [refused] = exc.value.issues
        assert (refused.code, refused.path) == ("state.inventory_not_released",
                                                "/CEB213Message/InvtRefund[1]/InvtRefundHead/invtNo"), status
        assert "after its release" in refused.message
    assert await db_pool.fetchval("SELECT count(*) FROM documents WHERE message_type = 'CEB213'") == 0
    assert await _answered(db_pool, "RT9", no, "800") == ["applied"]
    assert (await ingest(store, early)).http_status == 202
    change = ex.export_message("CEB603", ex.inventory_head("RT9", guid="EINV-RT9-2", appType="2",
                                                           appTime=_later(ex.T0, 1)))  # fmt: skip
    assert await _refused_codes(store, change) == ["state.inventory_released"]
    second = _return(no, "RT9", lines=ex.refund_lines("1"), appType="2", guid="ERET-RT9-2", appTime=_later(ex.T0, 2))
    assert (await ingest(store, second)).body["documents"][0]["outcome"] == "replaced"


async def test_what_an_export_return_cannot_return(store: Store, db_pool: asyncpg.Pool) -> None:
    """Its lines are items of the inventory (by the inventory's gnum), each no more than declared; its platform is the
    inventory's; its tradeMode the return mode of the inventory's (1261 only for a 1210 one); and goods whose
    cancellation customs concluded never left. An invtNo an import inventory holds names no export inventory."""
    for leg in ex.legs("RT2"):
        await ingest(store, leg)
    await _released(db_pool, "RT2", "64012025E000000052")
    no = "64012025E000000052"
    assert await _refused_codes(store, _return(no, "RT2", lines=ex.refund_lines(gnum="2"))) == [
        "state.refund_not_in_inventory"]
    assert await _refused_codes(store, _return(no, "RT2", lines=ex.refund_lines("3"))) == [
        "state.refund_exceeds_inventory"]
    assert await _refused_codes(store, _return(no, "RT2", ebpCode="EBP0000009")) == [
        "state.inventory_platform_mismatch"]
    assert await _refused_codes(store, _return(no, "RT2", tradeMode="1261")) == ["state.return_trade_mode"]
    modeless = ex.refund_head(no, "RT2")
    del modeless["tradeMode"]  # optional (A.32)
    assert (await ingest(store, ex.export_message("CEB213", modeless))).http_status == 202
    for leg in ex.legs("RT3", tradeMode="1210"):
        await ingest(store, leg)
    await _released(db_pool, "RT3", "64012025E000000053")
    assert await _refused_codes(store, _return("64012025E000000053", "RT3")) == ["state.return_trade_mode"]
    assert (await ingest(store, _return("64012025E000000053", "RT3", tradeMode="1261"))).http_status == 202
    # cancelled: nothing left the country
    for leg in ex.legs("RT4"):
        await ingest(store, leg)
    await _declared(db_pool, "RT4", "64012025E000000054")
    await ingest(store, _cancel("64012025E000000054", appTime=_later(ex.T0, 1)))
    await _conclude_export_cancellation(db_pool, "64012025E000000054")
    assert await _refused_codes(store, _return("64012025E000000054", "RT4", appTime=_later(ex.T0, 2))) == [
        "state.inventory_cancelled"]
    # an import inventory of that number (as its CEB622 gave it): no export inventory
    await full_shipment(store, "RT5")
    await db_pool.execute("UPDATE documents SET invt_no = '64012025I000000055' WHERE message_type = 'CEB621'"
                          " AND order_no = 'RT5'")  # fmt: skip
    assert await _refused_codes(store, _return("64012025I000000055", "RT5")) == ["state.no_inventory"]


async def test_an_export_return_is_held_to_its_inventorys_owners_and_declaration(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    for leg in ex.legs("RT6"):
        await ingest(store, leg)
    await _declared(db_pool, "RT6", "64012025E000000056")
    other = _return("64012025E000000056", "RT6", agentCode="AGT0000009", ebcCode="EBC0000009", ebpCode="EBP0000009")
    scope = frozenset({"AGT0000009", "EBC0000009", "EBP0000009"})
    assert await _refused_codes(store, other, scope) == ["auth.not_your_document"]
    await db_pool.execute("UPDATE documents SET forward_state = 'held' WHERE message_type = 'CEB603'"
                          " AND order_no = 'RT6'")  # fmt: skip
    assert await _refused_codes(store, _return("64012025E000000056", "RT6")) == ["state.inventory_held"]


@pytest.mark.parametrize("code", ["CEB605", "CEB213"])
async def test_a_cancellation_or_return_is_forwarded_after_its_inventory(db_pool: asyncpg.Pool, code: str) -> None:
    """Its job carries its inventory's ordering key (the inventory's agentCode and copNo, not its own): a change of
    the inventory still queued goes to customs first, as a CEB621 does before its CEB623. (The change went in before
    the release, the 800 came for it: a released inventory takes no change.)"""
    routes = (RouteSettings(message_types=("CEB603", code), endpoints=("customs",)),)
    router = Router.from_settings(ForwardingSettings(routes=routes, hold_types=()), {"customs": "customs"})
    store = Store(db_pool, outbox=Outbox(db_pool, router))
    order_no, invt_no = f"FW{code[-3:]}", f"64012025E000000{code[-3:]}"
    for leg in ex.legs(order_no):
        await ingest(store, leg)
    assert await _answered(db_pool, order_no, invt_no, "2", "120", "399") == ["applied"] * 3
    await db_pool.execute("UPDATE jobs SET state = 'done'")
    change = ex.export_message("CEB603", ex.inventory_head(order_no, guid=f"EINV-{order_no}-2", appType="2",
                                                           appTime=_later(ex.T0, 1)))  # fmt: skip
    await ingest(store, change)
    assert await _answered(db_pool, order_no, invt_no, "800") == ["applied"]
    follows = _cancel(invt_no, appTime=_later(ex.T0, 2)) if code == "CEB605" else \
        _return(invt_no, order_no, appTime=_later(ex.T0, 2))  # fmt: skip
    after = await ingest(store, follows)
    assert after.http_status == 202, after.body
    jobs = {r["dedupe_key"]: r for r in await db_pool.fetch("SELECT * FROM jobs WHERE state = 'queued'")}
    inventory_key = f"CEB603:{ex.AGENT}:COP-{order_no}"
    assert jobs[f"customs:{change.guid}"]["ordering_keys"] == [inventory_key]
    assert inventory_key in jobs[f"customs:{after.guid}"]["ordering_keys"]
    async with db_pool.acquire() as conn:
        claimed = await cbec_queue.claim(conn, worker_id="w", lease_s=30, limit=10)
    assert [j.id for j in claimed] == [jobs[f"customs:{change.guid}"]["id"]]  # the cancellation or return waits


async def test_a_return_of_an_inventory_customs_rejected_is_refused(store: Store, db_pool: asyncpg.Pool) -> None:
    """The inventory's first declaration got its invtNo (CEB604 120) and was then rejected (100): nothing of it is at
    customs (keystate.void), no goods left; a return of it names no inventory."""
    no = "64012025E000000074"
    for leg in ex.legs("RR4"):
        await ingest(store, leg)
    await _declared(db_pool, "RR4", no)
    await db_pool.execute("UPDATE documents SET forward_state = 'rejected', customs_status = '100'"
                          " WHERE message_type = 'CEB603' AND order_no = 'RR4'")  # fmt: skip
    assert await _refused_codes(store, _return(no, "RR4")) == ["state.no_inventory"]


async def test_a_ceb214_for_an_unknown_return_is_not_applied_to_another_return_of_the_same_inventory(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """CEB214's invtNo is the *inventory's* number (A.33), shared by every return of that inventory: a receipt whose
    key (agentCode + coElNo, spec §5.1) names no stored return stays unmatched, and moves no other return."""
    no = "64012025E000000071"
    for leg in ex.legs("RR1"):
        await ingest(store, leg)
    await _released(db_pool, "RR1", no)
    assert (await ingest(store, _return(no, "RR1", lines=ex.refund_lines("1")))).http_status == 202
    outbox = Outbox(db_pool, None)
    schemas = SchemaSet()

    async def post(cop: str, status: str, t: str) -> list[dict[str, object]]:
        xml = build_receipt("CEB214", {"guid": str(uuid.uuid4()).upper(), "agentCode": ex.AGENT, "coElNo": cop,
                                       "invtNo": no, "returnStatus": status, "returnTime": t, "returnInfo": "x"})
        return [r.as_dict() for r in await outbox.apply_receipts(rc.read(xml, schemas), source="http",
                                                                 submitter="t")]  # fmt: skip

    await post(f"RET-{no}", "120", "20250310120000000")  # the gateway's own return: the inventory's number not its
    row = await db_pool.fetchrow("SELECT customs_status, invt_no FROM documents WHERE message_type = 'CEB213'")
    assert tuple(row) == ("120", None)
    res = await post("RET-OTHER", "100", "20250310130000000")  # another return of that inventory, not stored here
    assert res[0]["outcome"] == "unmatched", res
    row = await db_pool.fetchrow("SELECT customs_status FROM documents WHERE message_type = 'CEB213'")
    assert row["customs_status"] == "120"


async def test_a_return_naming_the_number_of_a_withdrawn_inventory_whose_key_was_declared_anew_for_another_order(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """Inventory COP-RR3 numbered by customs, withdrawn (appType 3), its key declared anew (appType 1) for another
    order RR3B, not numbered yet: the number names nothing live, and a return or cancellation naming it is refused,
    not tied to the new declaration (and so to shipment RR3B)."""
    no = "64012025E000000073"
    for leg in ex.legs("RR3"):
        await ingest(store, leg)
    await _declared(db_pool, "RR3", no)
    gone = ex.export_message("CEB603", ex.inventory_head("RR3", guid="EINV-RR3-3", appType="3",
                                                         appTime=_later(ex.T0, 1)))  # fmt: skip
    assert (await ingest(store, gone)).http_status == 202
    for leg in ex.legs("RR3B")[:3]:
        await ingest(store, leg)
    anew = ex.export_message("CEB603", ex.inventory_head("RR3B", guid="EINV-RR3-4", copNo="COP-RR3",
                                                         appTime=_later(ex.T0, 2)))  # fmt: skip
    assert (await ingest(store, anew)).http_status == 202
    assert await _refused_codes(store, _return(no, "RR3", appTime=_later(ex.T0, 3))) == ["state.no_inventory"]
    assert await _refused_codes(store, _cancel(no, appTime=_later(ex.T0, 3))) == ["state.no_inventory"]
    assert await db_pool.fetchval("SELECT count(*) FROM documents WHERE message_type IN ('CEB213', 'CEB605')") == 0


async def test_a_withdrawn_return_stays_listed_on_its_shipment(store: Store, db_pool: asyncpg.Pool) -> None:
    """A withdrawal (appType 3) of a return is the return's current version: it keeps the inventory's ebpCode and
    orderNo, so the shipment lists it and shows that the return was withdrawn; so does an export cancellation's."""
    no = "64012025E000000075"
    for leg in ex.legs("RR5"):
        await ingest(store, leg)
    await _released(db_pool, "RR5", no)
    await ingest(store, _return(no, "RR5"))
    gone = await ingest(store, _return(no, "RR5", appType="3", guid="ERET-RR5-W", appTime=_later(ex.T0, 1)))
    assert gone.body["documents"][0]["outcome"] == "withdrawn"
    rows = await db_pool.fetch("SELECT ebp_code, order_no FROM documents WHERE message_type = 'CEB213'")
    assert {tuple(r) for r in rows} == {(ex.EBP, "RR5")}
    view = await store.get_shipment(ex.EBP, "RR5")
    assert view is not None
    refunds = [(d.get("is_current"), d.get("withdrawn")) for d in view["documents"] if d["kind"] == "refund"]
    assert (True, True) in refunds, refunds
    # so does an export cancellation's
    await ingest(store, _cancel(no, appTime=_later(ex.T0, 2)))
    gone = await ingest(store, _cancel(no, appType="3", guid="ECAN-RR5-W", appTime=_later(ex.T0, 3)))
    assert gone.body["documents"][0]["outcome"] == "withdrawn", gone.body
    rows = await db_pool.fetch("SELECT ebp_code, order_no FROM documents WHERE message_type = 'CEB605'")
    assert {tuple(r) for r in rows} == {(ex.EBP, "RR5")}


async def test_returns_of_one_inventory_together_return_no_more_than_it_declared(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """A.32 qty: no more than the declared quantity, across the inventory's returns (it may come back in parts).
    Item 1 declares 2: one return takes 1 back, a second (another coElNo) may take 1 more, not 2; a return withdrawn
    takes nothing back."""
    no = "64012025E000000072"
    for leg in ex.legs("RR2"):
        await ingest(store, leg)
    await _released(db_pool, "RR2", no)
    assert (await ingest(store, _return(no, "RR2", lines=ex.refund_lines("1")))).http_status == 202
    second = _return(no, "RR2", lines=ex.refund_lines("2"), coElNo="RET-2", guid="ERET-2", appTime=_later(ex.T0, 1))
    assert await _refused_codes(store, second) == ["state.refund_exceeds_inventory"]
    # a change of the first is judged without its own earlier version
    change = _return(no, "RR2", lines=ex.refund_lines("2"), appType="2", guid="ERET-1B", appTime=_later(ex.T0, 1))
    assert (await ingest(store, change)).body["documents"][0]["outcome"] == "replaced"
    gone = _return(no, "RR2", appType="3", guid="ERET-1C", appTime=_later(ex.T0, 2))
    assert (await ingest(store, gone)).body["documents"][0]["outcome"] == "withdrawn"
    assert (await ingest(store, second)).http_status == 202
    # two returns of one message add up too
    gone = _return(no, "RR2", appType="3", coElNo="RET-2", guid="ERET-2B", appTime=_later(ex.T0, 2))
    assert (await ingest(store, gone)).body["documents"][0]["outcome"] == "withdrawn"
    both = ex.export_message("CEB213", *(ex.refund_head(no, "RR2", coElNo=c, guid=f"ERET-{c}") for c in ("R3", "R4")),
                             lines=ex.refund_lines("2"))  # fmt: skip
    assert await _refused_codes(store, both) == ["state.refund_exceeds_inventory"]


async def test_a_return_tally_is_the_sites_own_and_listed_on_the_shipment_whose_parcel_it_tallies(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """The site operator tallies what arrives, whoever declared the return and whether or not the gateway holds it
    (the agent may declare it after the parcel is unloaded): a CEB215 is stored under operatorCode + coElNo, joins
    no shipment and waits for no return; the export shipment lists the tallies of its inventory's waybill or of a
    return's (a parcel may come back under a new one)."""
    early = await ingest(store, ex.export_message("CEB215", ex.tally_head("LH-1", "RT8")))
    assert early.http_status == 202
    assert early.body["documents"][0]["keys"] == {"operatorCode": ex.SITE, "coElNo": "LH-1"}
    assert early.body["documents"][0]["shipment"] is None
    for leg in ex.legs("RT8"):
        await ingest(store, leg)
    await _released(db_pool, "RT8", "64012025E000000058")
    await ingest(store, _return("64012025E000000058", "RT8", logisticsNo="INBOUND-RT8"))
    await ingest(store, ex.export_message("CEB215", ex.tally_head("LH-2", "RT8", logisticsNo="INBOUND-RT8",
                                                                  invtNo="64012025E000000058")))  # fmt: skip
    await ingest(store, ex.export_message("CEB215", ex.tally_head("LH-3", "OTHER")))
    view = await store.get_shipment(ex.EBP, "RT8")
    assert view is not None
    assert sorted(d["keys"]["coElNo"] for d in view["documents"] if d["kind"] == "refund_tally") == ["LH-1", "LH-2"]
    # its site's: another key may not change it
    change = ex.export_message("CEB215", ex.tally_head("LH-1", "RT8", appType="2", appTime=_later(ex.T0, 1),
                                                       operatorCode=ex.SITE))  # fmt: skip
    assert await _refused_codes(store, change, frozenset({"SITE000009"})) == ["auth.not_your_document"]


# --- transport messages (spec §4.4 step 3, A.20–A.28): no legs, listed on the shipments whose waybills they name ----


async def test_transport_messages_are_stored_by_their_own_keys_and_join_no_shipment(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    for leg in ex.legs("TR1"):
        await ingest(store, leg)
    before = await shipment(db_pool, "TR1")
    cases = [("CEB507", ex.arrival_head("YD-TR1"), "arrival",
              {"operatorCode": ex.SITE, "copNo": "YD-TR1", "msgSeqNo": "1"}),
             ("CEB509", ex.departure_head("LJ-TR1"), "departure",
              {"logisticsCode": ex.LOG, "copNo": "LJ-TR1", "msgSeqNo": "1"}),
             ("CEB607", ex.manifest_head("ZF-TR1"), "manifest",
              {"agentCode": ex.AGENT, "copNo": "ZF-TR1", "msgSeqNo": "1"})]  # fmt: skip
    for code, head, kind, keys in cases:
        r = await ingest(store, ex.export_message(code, head, lines=ex.transport_lines("TR1")))
        assert r.http_status == 202, r.body
        doc = r.body["documents"][0]
        assert (doc["kind"], doc["outcome"], doc["keys"], doc["shipment"]) == (kind, "accepted", keys, None), code
    after = await shipment(db_pool, "TR1")
    assert after is not None and before is not None
    assert (after["state"], after["missing"], after["updated_at"]) == (before["state"], before["missing"],
                                                                       before["updated_at"])  # fmt: skip
    rows = await db_pool.fetch("SELECT kind, ebp_code, order_no, logistics_code FROM documents"
                               " WHERE kind IN ('arrival', 'departure', 'manifest') ORDER BY id")  # fmt: skip
    assert [tuple(r) for r in rows] == [(k, None, None, ex.LOG) for k in ("arrival", "departure", "manifest")]


async def test_transport_keys_follow_the_app_type_rules(store: Store) -> None:
    """A change (appType 2, newer appTime) replaces an arrival, an older one is ignored, a second new one with the
    same operatorCode and copNo is a duplicate, a delete withdraws it — as every keyed document."""
    lines = ex.transport_lines("TR2")
    first = await ingest(store, ex.export_message("CEB507", ex.arrival_head("YD-TR2"), lines=lines))
    assert first.body["documents"][0]["outcome"] == "accepted"
    with pytest.raises(Conflict) as exc:
        await ingest(store, ex.export_message("CEB507", ex.arrival_head("YD-TR2", guid="EARR-again"), lines=lines))
    assert [i.code for i in exc.value.issues] == ["state.duplicate"]
    changed = await ingest(store, ex.export_message(
        "CEB507", ex.arrival_head("YD-TR2", guid="EARR-2", appType="2", appTime=_later(ex.T0, 60)),
        lines=ex.transport_lines("TR2", "TR3")))
    assert changed.body["documents"][0]["outcome"] == "replaced"
    older = await ingest(store, ex.export_message("CEB507", ex.arrival_head("YD-TR2", guid="EARR-3", appType="2"),
                                                  lines=lines))  # fmt: skip
    assert older.body["documents"][0]["outcome"] == "ignored_older"
    gone = await ingest(store, ex.export_message(
        "CEB507", ex.arrival_head("YD-TR2", guid="EARR-4", appType="3", appTime=_later(ex.T0, 120)), lines=lines))
    assert gone.body["documents"][0]["outcome"] == "withdrawn"
    # another operator's arrival of the same copNo is another document
    other = await ingest(store, ex.export_message("CEB507", ex.arrival_head("YD-TR2", operatorCode="SITE000002",
                                                                            guid="EARR-5"), lines=lines))  # fmt: skip
    assert other.body["documents"][0]["outcome"] == "accepted"


async def test_the_parts_of_a_split_transport_message_are_documents_of_their_own(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """A long list goes in parts of one copNo (msgCount, msgSeqNo 1..msgCount, spec A.20): each part is a document
    of its own key (sender code, copNo, msgSeqNo), changed and answered apart; the same part twice is a duplicate."""
    part1 = ex.export_message("CEB509", ex.departure_head("LJ-SPLIT", msgCount="2", msgSeqNo="1"),
                              lines=ex.transport_lines("SP1"))  # fmt: skip
    part2 = ex.export_message("CEB509", ex.departure_head("LJ-SPLIT", guid="EDEP-SPLIT-2", msgCount="2",
                                                          msgSeqNo="2"), lines=ex.transport_lines("SP2"))  # fmt: skip
    for part, seq in ((part1, "1"), (part2, "2")):
        r = await ingest(store, part)
        doc = r.body["documents"][0]
        assert (doc["outcome"], doc["keys"]) == ("accepted", {"logisticsCode": ex.LOG, "copNo": "LJ-SPLIT",
                                                              "msgSeqNo": seq})  # fmt: skip
    rows = await db_pool.fetch("SELECT key1, key2 FROM documents WHERE message_type = 'CEB509' ORDER BY id")
    assert [tuple(r) for r in rows] == [(ex.LOG, "LJ-SPLIT\x1f1"), (ex.LOG, "LJ-SPLIT\x1f2")]
    with pytest.raises(Conflict) as exc:
        await ingest(store, ex.export_message("CEB509", ex.departure_head(
            "LJ-SPLIT", guid="EDEP-SPLIT-3", msgCount="2", msgSeqNo="2"), lines=ex.transport_lines("SP2")))
    assert [i.code for i in exc.value.issues] == ["state.duplicate"]
    changed = await ingest(store, ex.export_message("CEB509", ex.departure_head(
        "LJ-SPLIT", guid="EDEP-SPLIT-4", appType="2", appTime=_later(ex.T0, 60), msgCount="2", msgSeqNo="2"),
        lines=ex.transport_lines("SP2", "SP3")))
    assert changed.body["documents"][0]["outcome"] == "replaced"
    current = await db_pool.fetch("SELECT key2, doc_guid FROM documents WHERE message_type = 'CEB509' AND is_current"
                                  " ORDER BY key2")  # fmt: skip
    assert [tuple(r) for r in current] == [("LJ-SPLIT\x1f1", "EDEP-LJ-SPLIT"), ("LJ-SPLIT\x1f2", "EDEP-SPLIT-4")]


async def test_the_export_shipment_lists_the_transport_messages_naming_its_waybill(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """GET /v1/shipments/{ebpCode}/{orderNo} shows the arrival, departure and 清单总分单 whose list names the waybill
    of its inventory (by the head's logisticsCode and a line's logisticsNo), every version of them; one naming
    another carrier's waybill of the same number, or only other parcels, is not the shipment's."""
    for name in ("TR5", "TR6"):
        for leg in ex.legs(name):
            await ingest(store, leg)
    both = ex.transport_lines("TR6", "TR5")
    await ingest(store, ex.export_message("CEB607", ex.manifest_head("ZF-TR5"), lines=both))
    await ingest(store, ex.export_message("CEB507", ex.arrival_head("YD-TR5"), lines=both))
    await ingest(store, ex.export_message("CEB507", ex.arrival_head(
        "YD-TR5", guid="EARR-TR5-2", appType="2", appTime=_later(ex.T0, 60)), lines=both))
    await ingest(store, ex.export_message("CEB509", ex.departure_head("LJ-TR6"), lines=ex.transport_lines("TR6")))
    await ingest(store, ex.export_message("CEB509", ex.departure_head("LJ-X", logisticsCode="LOG0000009"),
                                          lines=ex.transport_lines("TR5")))  # fmt: skip
    view = await store.get_shipment(ex.EBP, "TR5")
    assert view is not None
    transport = [(d["kind"], d["keys"]["copNo"], d["is_current"]) for d in view["documents"]
                 if d["kind"] in ("arrival", "departure", "manifest")]  # fmt: skip
    assert transport == [("arrival", "YD-TR5", False), ("arrival", "YD-TR5", True), ("manifest", "ZF-TR5", True)]
    assert [d["kind"] for d in view["documents"]].count("inventory") == 1
    view = await store.get_shipment(ex.EBP, "TR6")
    assert view is not None
    assert {(d["kind"], d["keys"]["copNo"]) for d in view["documents"] if d["kind"] == "departure"} == {
        ("departure", "LJ-TR6")}
