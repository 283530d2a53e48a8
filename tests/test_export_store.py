"""The export flow in the store against a real PostgreSQL (spec §4.4, §6.2): each leg, the shipment they make in any
arrival order, kept apart from an import shipment of the same key, and no quota drawn."""

from __future__ import annotations

import itertools

import asyncpg
import pytest

from gateway.store import Conflict, Store
from tests import exportutil as ex
from tests.test_store import full_shipment, ingest, inventory_head, message

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
