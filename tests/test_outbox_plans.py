"""The receipt and sent transactions run with generic plans (gateway.db.BEGIN_PLANNED): each statement's generic
plan must probe indexes only, on empty tables and on small analysed ones (a long-lived connection plans once)."""

from __future__ import annotations

import json

import asyncpg
from cbec_queue import queries

from gateway import db, outbox
from gateway.store import Store
from tests.planutil import full_scans
from tests.test_store import full_shipment

_T = "ARRAY['x']::text[]"
#: A CORRELATE input row with every probe's value (the plan of each probe is checked).
_PROBE = {"i": 1, "declared": "CEB621", "ori": None, "k1": "A", "k2": "C", "ebc": "E", "guid": "g", "cop_no": "c",
          "parties": {"ebcCode": "E"}, "pre_no": "p", "invt_no": "i"}  # fmt: skip
# Each statement with parameters good enough for PREPARE/EXECUTE (the plan, not the result, is checked).
_PLAN_CASES = {
    "CORRELATE": "'" + json.dumps([_PROBE, {"i": 2, "ori": "m", "parties": {}}, {**_PROBE, "i": 3, "parties": {}}])
    + "'",
    "INSERT_RECEIPTS": f"'CEB312', 'R', NULL, 'x', 'http', NULL, ARRAY[1], {_T}, ARRAY['{{}}'::jsonb], {_T}, {_T}, "
    f"{_T}, {_T}",
    "LOCK_DOCUMENTS": "ARRAY[1::bigint]",
    "TAX_BILLS_OF": f"{_T}, {_T}, {_T}, {_T}, {_T}",
    "SHIPMENTS_OF_WAYBILLS": f"{_T}, {_T}, {_T}, {_T}",
    "SET_RECEIPT_RAW": "1, 'x'",
    "SET_CUSTOMS_STATE_AND_OUTCOMES": f"ARRAY[1::bigint], {_T}, {_T}, ARRAY[1], {_T}, {_T}, {_T}, {_T}, "
    f"ARRAY[1::bigint], ARRAY[1::bigint], ARRAY[1::bigint], ARRAY[true], {_T}, ARRAY[true]",
    "SHIPMENT_LEGS": f"{_T}, {_T}, {_T}",
    "RELEASED_SHIPMENT_LEGS": f"{_T}, {_T}",
    "CANCELLED_RELEASES": "ARRAY[1::bigint]",
    "REDECLARED": "ARRAY[1::bigint]",
    "SELLER_DOCUMENTS": "ARRAY[1::bigint]",
    "REFUSED_LEGS": "ARRAY[1::bigint]",
    "SHIPMENT_PARTIES": f"{_T}, {_T}",
    "DOCUMENTS_BY_GUID": "ARRAY['g']",
    "RELEASE_QUOTA": f"{_T}, {_T}, ARRAY[1::bigint]",
    "RETURNED_INVENTORIES": "ARRAY[1::bigint]",
    "RETURN_QUOTA": f"{_T}, {_T}, ARRAY[1::numeric]",
    # the queue's dead-letter hooks (Outbox.deliveries_dead / deliveries_replayed)
    "DELIVERY_FAILED": f"ARRAY[1::bigint], {_T}",
    "DELIVERY_REPLAYED": "ARRAY[1::bigint]",
    "DELIVERY_DOCUMENTS": "ARRAY[1::bigint]",
    "SET_SHIPMENT_CUSTOMS": f"{_T}, {_T}, {_T}, {_T}",
    "RELEASE_HELD": f"{_T}, {_T}, {_T}, {_T}, 1",
    # a withdrawal of a version the gateway holds (Outbox.settle, in the ingest's transaction)
    "SETTLE_VERSIONS": "ARRAY[1::bigint], ARRAY[1]",
    "SETTLE_MESSAGES": "ARRAY[1::bigint]",
    "SET_UNSENT": "ARRAY[1::bigint], ARRAY[1::bigint]",
    "LATER_VERSIONS": "ARRAY[1::bigint]",
    "SHIPMENTS_OF_MESSAGES": "ARRAY[1::bigint]",
    "MARK_SENT": "ARRAY[1::bigint]",
    "MESSAGE_DOCUMENTS": "ARRAY[1::bigint]",
    "MESSAGES_XML": "ARRAY[1::bigint]",
    "MESSAGE_HEADS": "ARRAY[1::bigint]",
    "RELEASED_LEGS": "ARRAY[1::bigint]",
    "COUNT_RESEND": "ARRAY[1::bigint], 3",
    # the shipment view (GET /v1/shipments/{ebpCode}/{orderNo}, polled by sellers)
    "FORWARDING_OF_DOCUMENTS": "ARRAY[1::bigint]",
    "TRANSMISSIONS": _T,
    "ATTEMPTS": "ARRAY[1::bigint]",
    "RECEIPTS_OF": "ARRAY[1::bigint], ARRAY[1::bigint]",
    "WAREHOUSE_EVENTS_OF": _T,
    "HOLD_REASONS": "ARRAY[1::bigint], 1",
    "LINK_EARLY_TAX_BILLS": "ARRAY[1::bigint]",
    "LINK_EARLY_SUMMARY_RESULTS": "ARRAY[1::bigint]",
    # a warehouse's callback (POST /v1/warehouse/callbacks)
    "INSERT_WAREHOUSE_EVENT": "'w', 'o', 'WH1', 'outbound', 'shipped', NULL, 't', 'CEB621', 'g', '{}'::jsonb",
    "WAREHOUSE_SHIPMENT": "'g', 'CEB621'",
    "WAREHOUSE_ORDER_SOURCES": "'g', 'CEB621'",
    # the operators' list of callbacks (GET /v1/warehouse/callbacks, the console's panel of the unlinked)
    **{name: "9223372036854775807, 51, NULL, NULL, NULL, NULL, NULL" for name in (
        "LIST_WAREHOUSE_CALLBACKS", "LIST_WAREHOUSE_CALLBACKS_LINKED", "LIST_WAREHOUSE_CALLBACKS_UNLINKED")},
}
#: cbec_queue's statements that run inside the planned record_sent transaction.
_QUEUE_PLAN_CASES = {"FINISH_DONE_MANY": "ARRAY[1::bigint], ARRAY[1], ARRAY['w']"}


async def _full_scans(conn: asyncpg.Connection) -> dict[str, list[str]]:
    found = await full_scans(conn, begin=db.BEGIN_PLANNED, module=outbox, cases=_PLAN_CASES)
    return found | await full_scans(conn, begin=db.BEGIN_PLANNED, module=queries, cases=_QUEUE_PLAN_CASES)


async def test_every_generic_plan_of_the_receipt_path_probes_indexes(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    async with db_pool.acquire() as conn:
        assert await _full_scans(conn) == {}
        # END_PLANNED gives a planned transaction back to the server's planning
        await conn.execute(db.BEGIN_PLANNED)
        try:
            await conn.execute(db.END_PLANNED)
            assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
            assert await conn.fetchval("SHOW enable_seqscan") == "on"
        finally:
            await conn.execute("ROLLBACK")
    for i in range(5):
        await full_shipment(store, f"OP{i}")
    async with db_pool.acquire() as conn:
        await conn.execute("ANALYZE")
        assert await _full_scans(conn) == {}
