"""The store against a real PostgreSQL: key rules (§6.2, §5.3), idempotency, shipments, ledger, reads."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import types
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import cbec_queue
import pytest

from gateway import db, tax
from gateway import store as store_module
from gateway.db import migrate
from gateway.documents import Document, ParsedMessage
from gateway.messages import BY_CODE
from gateway.receipts import RANK_CONCLUDED, RANK_RELEASED
from gateway.store import CODES, Conflict, IngestResult, Store, list_query
from tests.planutil import full_scans

# pg_dsn, db_dsn, empty_db_dsn and db_pool: tests/dbutil.py, through conftest.py

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

EBP, EBC, PAY, LOG, AGENT = "EBP0000001", "EBC0000001", "PAY0000001", "LOG0000001", "AGT0000001"
T0 = "20250301100000"


def _later(app_time: str, seconds: int) -> str:
    t = datetime.strptime(app_time, "%Y%m%d%H%M%S") + timedelta(seconds=seconds)
    return t.strftime("%Y%m%d%H%M%S")


# --- consistent documents of one shipment (keyword overrides change any head field) -----------


def order_head(order_no: str, **kw: str) -> dict[str, str]:
    h = {
        "guid": f"ORD-{order_no}", "appType": "1", "appTime": T0, "appStatus": "2", "orderType": "I",
        "orderNo": order_no, "ebpCode": EBP, "ebpName": "Platform", "ebcCode": EBC, "ebcName": "Seller",
        "goodsValue": "100", "freight": "10", "discount": "0", "taxTotal": "0", "acturalPaid": "110",
        "currency": "142", "buyerRegNo": "u1", "buyerName": "张三", "buyerTelephone": "13800000000",
        "buyerIdType": "1", "buyerIdNumber": "110101199001011237", "payCode": PAY, "payName": "Pay",
        "payTransactionId": f"TX-{order_no}", "consignee": "张三", "consigneeTelephone": "13800000000",
        "consigneeAddress": "北京市东城区1号",
    }  # fmt: skip
    h.update(kw)
    return h


ORDER_LINES = [
    {"gnum": "1", "itemNo": "SKU1", "itemName": "面霜", "gmodel": "50g", "unit": "011", "qty": "1",
     "price": "100", "totalPrice": "100", "currency": "142", "country": "116"},
]  # fmt: skip


def payment_head(order_no: str, **kw: str) -> dict[str, str]:
    h = {
        "guid": f"PAY-{order_no}", "appType": "1", "appTime": T0, "appStatus": "2", "payCode": PAY,
        "payName": "Pay", "payTransactionId": f"TX-{order_no}", "orderNo": order_no, "ebpCode": EBP,
        "ebpName": "Platform", "payerIdType": "1", "payerIdNumber": "110101199001011237", "payerName": "张三",
        "amountPaid": "110", "currency": "142", "payTime": T0,
    }  # fmt: skip
    h.update(kw)
    return h


def waybill_head(order_no: str, **kw: str) -> dict[str, str]:
    h = {
        "guid": f"WB-{order_no}", "appType": "1", "appTime": T0, "appStatus": "2", "logisticsCode": LOG,
        "logisticsName": "Carrier", "logisticsNo": f"LN-{order_no}", "orderNo": order_no, "freight": "10",
        "insuredFee": "0", "currency": "142", "weight": "0.5", "packNo": "1", "consignee": "张三",
        "consigneeAddress": "北京市东城区1号", "consigneeTelephone": "13800000000",
    }  # fmt: skip
    h.update(kw)
    return h


def inventory_head(order_no: str, **kw: str) -> dict[str, str]:
    h = {
        "guid": f"INV-{order_no}", "appType": "1", "appTime": T0, "appStatus": "2", "orderNo": order_no,
        "ebpCode": EBP, "ebpName": "Platform", "ebcCode": EBC, "ebcName": "Seller", "logisticsNo": f"LN-{order_no}",
        "logisticsCode": LOG, "logisticsName": "Carrier", "copNo": "C1", "assureCode": EBC, "ieFlag": "I",
        "declTime": "20250301", "customsCode": "2244", "portCode": "2244", "buyerIdType": "1",
        "buyerIdNumber": "110101199001011237", "buyerName": "张三", "buyerTelephone": "13800000000",
        "consigneeAddress": "北京市东城区1号", "agentCode": AGENT, "agentName": "Agent", "tradeMode": "1210",
        "trafMode": "Y", "country": "142", "freight": "10", "insuredFee": "0", "currency": "142", "packNo": "1",
        "grossWeight": "0.5", "netWeight": "0.4",
    }  # fmt: skip
    h.update(kw)
    return h


def inventory_lines(total: str = "100") -> list[dict[str, str]]:
    return [
        {"gnum": "1", "itemNo": "SKU1", "itemName": "面霜", "gcode": "3304990099", "gname": "面霜", "gmodel": "50g",
         "country": "116", "currency": "142", "qty": "1", "unit": "011", "qty1": "1", "unit1": "011",
         "price": total, "totalPrice": total},
    ]  # fmt: skip


_LINES = {"CEB311": ORDER_LINES, "CEB621": inventory_lines()}
_counter = iter(range(1, 1_000_000))


def message(code: str, *heads: dict[str, str], guid: str | None = None, lines: Any = None) -> ParsedMessage:
    mtype = BY_CODE[code]
    docs = [
        Document(
            mtype,
            i,
            f"/{mtype.root}/{mtype.document}[{i}]",
            dict(head),
            [dict(x) for x in (lines if lines is not None else _LINES.get(code, []))],
        )
        for i, head in enumerate(heads, start=1)
    ]
    guid = guid or f"{next(_counter):036d}"
    return ParsedMessage(mtype, guid, "1.0", docs, {"copCode": EBP}, False)


def raw_of(msg: ParsedMessage) -> bytes:
    """Stand-in for the XML bytes: deterministic per content, so a resend is byte-identical."""
    body = [{"head": d.head, "lines": d.lines} for d in msg.documents]
    return json.dumps({"root": msg.type.root, "guid": msg.guid, "docs": body}, sort_keys=True).encode()


async def ingest(store: Store, msg: ParsedMessage, submitter: str = "tester") -> IngestResult:
    return await store.ingest(msg, raw_of(msg), submitter=submitter)


async def full_shipment(store: Store, order_no: str) -> None:
    await ingest(store, message("CEB311", order_head(order_no)))
    await ingest(store, message("CEB411", payment_head(order_no)))
    await ingest(store, message("CEB511", waybill_head(order_no)))
    await ingest(store, message("CEB621", inventory_head(order_no)))


async def count(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(sql, *args))


@pytest.fixture
def store(db_pool: asyncpg.Pool) -> Store:
    return Store(db_pool)


def codes(exc: pytest.ExceptionInfo[Conflict]) -> list[str]:
    return [i.code for i in exc.value.issues]


# --- migrations ------------------------------------------------------------------------------


async def test_migrations_apply_once_and_are_idempotent(empty_db_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_db_dsn) for _ in range(3)]
    try:
        # concurrent runs: the advisory lock lets exactly one of them apply each file
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [name for r in results for name in r]
        assert applied == sorted(applied) and len(applied) == len(set(applied))
        assert "001_core.sql" in applied
        assert await migrate(conns[0]) == []
        recorded = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert recorded == len(applied)
    finally:
        for c in conns:
            await c.close()


async def test_the_kept_counts_start_from_what_an_existing_database_holds(empty_db_dsn: str) -> None:
    """An installation upgraded to 080_kept_counts already has shipments and delivered jobs: the migration counts
    them, and the triggers carry on from there."""
    conn = await asyncpg.connect(empty_db_dsn)
    try:
        await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz)")
        for name, sql in db.migration_files():
            if name >= "080":
                break
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
        await conn.execute(
            "INSERT INTO shipments (ebp_code, order_no, state, customs_status) SELECT 'E', 'O' || g,"
            " (ARRAY['matched', 'incomplete'])[1 + g % 2], (ARRAY['released', 'pending', 'declared'])[1 + g % 3]"
            " FROM generate_series(1, 30) g"
        )
        await conn.execute("INSERT INTO jobs (endpoint, kind, state, finished_at) SELECT 'customs', 'k', 'done', now()"
                           " FROM generate_series(1, 7)")  # fmt: skip
        assert "080_kept_counts.sql" in await migrate(conn)
        await conn.execute("UPDATE shipments SET customs_status = 'released' WHERE order_no = 'O2'")
        from gateway.console.queries import COUNT_SHIPMENTS

        kept = {(r["state"], r["customs_status"]): r["n"] for r in await conn.fetch(COUNT_SHIPMENTS)}
        real = {(r["state"], r["customs_status"]): r["n"] for r in await conn.fetch(
            "SELECT state, customs_status, count(*) AS n FROM shipments GROUP BY 1, 2")}  # fmt: skip
        assert kept == real and sum(kept.values()) == 30
        [row] = await cbec_queue.stats(conn)
        assert row["endpoint"] == "customs" and row["done"] == 7
        # 090 made the counters' writer PL/pgSQL (its INSERT planned once a session, not at every statement).
        lang = await conn.fetchval("SELECT l.lanname FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang"
                                   " WHERE p.proname = 'kept_counts_add'")  # fmt: skip
        assert lang == "plpgsql"
    finally:
        await conn.close()


async def test_migrated_template_is_current(db_pool: asyncpg.Pool) -> None:
    assert await migrate(db_pool) == []


# --- idempotency and key rules ---------------------------------------------------------------


async def test_same_guid_same_bytes_replays_stored_answer(store: Store, db_pool: asyncpg.Pool) -> None:
    msg = message("CEB311", order_head("R1"))
    first = await ingest(store, msg)
    second = await ingest(store, msg)
    assert not first.replay and second.replay
    assert (second.http_status, second.body, second.message_id) == (first.http_status, first.body, first.message_id)
    assert first.http_status == 202 and first.body["documents"][0]["outcome"] == "accepted"
    assert await count(db_pool, "SELECT count(*) FROM messages") == 1
    assert await count(db_pool, "SELECT count(*) FROM documents") == 1


async def test_same_guid_other_bytes_is_guid_conflict(store: Store, db_pool: asyncpg.Pool) -> None:
    msg = message("CEB311", order_head("G1"))
    await ingest(store, msg)
    other = message("CEB311", order_head("G2"), guid=msg.guid)
    with pytest.raises(Conflict) as exc:
        await ingest(store, other)
    assert codes(exc) == ["state.guid_conflict"]
    assert await count(db_pool, "SELECT count(*) FROM documents") == 1


async def test_duplicate_key_is_conflict_naming_the_stored_message(store: Store, db_pool: asyncpg.Pool) -> None:
    first = message("CEB311", order_head("D1"))
    await ingest(store, first)
    with pytest.raises(Conflict) as exc:
        await ingest(store, message("CEB311", order_head("D1", appTime=_later(T0, 5))))
    assert codes(exc) == ["state.duplicate"]
    issue = exc.value.issues[0]
    assert first.guid in issue.message and "D1" in issue.message
    assert issue.path == "/CEB311Message/Order[1]"
    assert await count(db_pool, "SELECT count(*) FROM messages") == 1


async def test_same_key_twice_in_one_message_is_conflict(store: Store, db_pool: asyncpg.Pool) -> None:
    with pytest.raises(Conflict) as exc:
        await ingest(store, message("CEB311", order_head("D2"), order_head("D3"), order_head("D2")))
    assert codes(exc) == ["state.duplicate"]
    assert exc.value.issues[0].path == "/CEB311Message/Order[3]"
    assert await count(db_pool, "SELECT count(*) FROM messages") == 0


async def test_one_conflicting_document_rolls_back_the_whole_message(store: Store, db_pool: asyncpg.Pool) -> None:
    await ingest(store, message("CEB311", order_head("A1")))
    with pytest.raises(Conflict):
        await ingest(store, message("CEB311", order_head("A2"), order_head("A1")))
    assert await count(db_pool, "SELECT count(*) FROM documents WHERE order_no = 'A2'") == 0
    assert await count(db_pool, "SELECT count(*) FROM shipments WHERE order_no = 'A2'") == 0


async def test_change_with_newer_app_time_replaces_and_keeps_history(store: Store, db_pool: asyncpg.Pool) -> None:
    first = message("CEB311", order_head("C1"))
    await ingest(store, first)
    change = message("CEB311", order_head("C1", appType="2", appTime=_later(T0, 60), consignee="李四"))
    result = await ingest(store, change)
    assert result.body["documents"][0]["outcome"] == "replaced"
    async with db_pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, is_current, superseded_by, head->>'consignee' AS consignee FROM documents ORDER BY id"
        )
    assert [(r["is_current"], r["consignee"]) for r in rows] == [(False, "张三"), (True, "李四")]
    assert rows[0]["superseded_by"] == rows[1]["id"]
    shipment = await store.get_shipment(EBP, "C1")
    assert shipment is not None
    assert [d["is_current"] for d in shipment["documents"]] == [False, True]


@pytest.mark.parametrize("app_type", ["2", "3"])
@pytest.mark.parametrize("delta", [0, -60])
async def test_older_or_equal_change_is_ignored(store: Store, db_pool: asyncpg.Pool, app_type: str, delta: int) -> None:
    await ingest(store, message("CEB311", order_head("O1")))
    result = await ingest(store, message("CEB311", order_head("O1", appType=app_type, appTime=_later(T0, delta))))
    doc = result.body["documents"][0]
    assert doc["outcome"] == "ignored_older"
    assert doc["code"] == "state.ignored_older" and "state.ignored_older" in CODES
    assert T0 in doc["message"]
    assert result.http_status == 202
    # nothing recorded for the document, but the message is kept (so that a resend replays)
    assert await count(db_pool, "SELECT count(*) FROM documents") == 1
    assert await count(db_pool, "SELECT count(*) FROM messages") == 2
    assert await count(db_pool, "SELECT count(*) FROM documents WHERE is_current AND NOT withdrawn") == 1


@pytest.mark.parametrize("app_type", ["2", "3"])
async def test_change_or_delete_of_unknown_key_is_not_found(store: Store, app_type: str) -> None:
    with pytest.raises(Conflict) as exc:
        await ingest(store, message("CEB311", order_head("N1", appType=app_type)))
    assert codes(exc) == ["state.not_found"]
    assert exc.value.issues[0].path.endswith("/OrderHead/appType")


async def test_withdrawal_then_redeclaration(store: Store, db_pool: asyncpg.Pool) -> None:
    await ingest(store, message("CEB311", order_head("W1")))
    await ingest(store, message("CEB411", payment_head("W1")))
    result = await ingest(store, message("CEB311", order_head("W1", appType="3", appTime=_later(T0, 10))))
    doc = result.body["documents"][0]
    assert doc["outcome"] == "withdrawn"
    assert doc["shipment"]["missing"][0] == "order"
    live_orders = "SELECT count(*) FROM documents WHERE is_current AND NOT withdrawn AND kind = 'order'"
    assert await count(db_pool, live_orders) == 0
    # a withdrawn key can be neither changed nor withdrawn again ...
    with pytest.raises(Conflict) as exc:
        await ingest(store, message("CEB311", order_head("W1", appType="2", appTime=_later(T0, 20))))
    assert codes(exc) == ["state.not_found"]
    # ... an old message cannot revive it, a newer declaration can
    stale = await ingest(store, message("CEB311", order_head("W1", appTime=_later(T0, 5))))
    assert stale.body["documents"][0]["outcome"] == "ignored_older"
    again = await ingest(store, message("CEB311", order_head("W1", appTime=_later(T0, 30))))
    assert again.body["documents"][0]["outcome"] == "accepted"
    assert "order" not in again.body["documents"][0]["shipment"]["missing"]
    async with db_pool.acquire() as conn:
        rows = await conn.fetch("SELECT is_current, withdrawn FROM documents WHERE kind = 'order' ORDER BY id")
    assert [(r["is_current"], r["withdrawn"]) for r in rows] == [(False, False), (False, True), (True, False)]


async def test_concurrent_duplicates_accept_exactly_one(store: Store, db_pool: asyncpg.Pool) -> None:
    msgs = [message("CEB311", order_head("X1", appTime=_later(T0, i))) for i in range(4)]
    stores = [store, Store(db_pool), Store(db_pool), Store(db_pool)]  # separate transactions too
    results = await asyncio.gather(*(ingest(s, m) for s, m in zip(stores, msgs, strict=True)), return_exceptions=True)
    accepted = [r for r in results if isinstance(r, IngestResult)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(accepted) == 1 and len(conflicts) == 3, results
    assert all(c.issues[0].code == "state.duplicate" for c in conflicts)
    assert await count(db_pool, "SELECT count(*) FROM documents") == 1


async def test_concurrent_same_guid_is_stored_once(store: Store, db_pool: asyncpg.Pool) -> None:
    msg = message("CEB311", order_head("X2"))
    results = await asyncio.gather(*(ingest(store, msg) for _ in range(3)))
    assert sorted(r.replay for r in results) == [False, True, True]
    assert len({json.dumps(r.body, sort_keys=True) for r in results}) == 1
    assert await count(db_pool, "SELECT count(*) FROM messages") == 1


async def test_concurrent_legs_of_one_shipment_end_consistent(store: Store, db_pool: asyncpg.Pool) -> None:
    # four legs at once: whatever the interleaving, the stored state sees all four
    legs = [
        message("CEB311", order_head("P1")),
        message("CEB411", payment_head("P1")),
        message("CEB511", waybill_head("P1")),
        message("CEB621", inventory_head("P1")),
    ]
    await asyncio.gather(*(ingest(store, m) for m in legs))
    shipment = await store.get_shipment(EBP, "P1")
    assert shipment is not None and shipment["missing"] == []
    assert await count(db_pool, "SELECT count(*) FROM shipments") == 1


async def test_concurrent_waybill_and_inventory_naming_it_meet(store: Store, db_pool: asyncpg.Pool) -> None:
    # the waybill names another orderNo than the inventory; only the waybill key links them, and
    # whichever commits second must see the first (two stores: two transactions, not one batch)
    other = Store(db_pool)
    for i in range(10):
        inv = message("CEB621", inventory_head(f"J{i}", logisticsNo=f"LN-J{i}"))
        wb = message("CEB511", waybill_head(f"J-OTHER{i}", logisticsNo=f"LN-J{i}"))
        await asyncio.gather(ingest(store, wb), ingest(other, inv))
        shipment = await store.get_shipment(EBP, f"J{i}")
        assert shipment is not None and "waybill" not in shipment["missing"]
    assert await count(db_pool, "SELECT count(*) FROM shipments WHERE ebp_code = ''") == 0


async def test_one_batch_with_an_order_and_the_waybill_its_inventory_names(store: Store, db_pool: asyncpg.Pool) -> None:
    # The two messages share no lock up front (orderNos X and Y), but the waybill belongs to shipment X
    # through the stored inventory: the one judged second must see the first.
    for i in range(3):
        await ingest(store, message("CEB621", inventory_head(f"U{i}", logisticsNo=f"LN-U{i}")))
        order = message("CEB311", order_head(f"U{i}"))
        waybill = message("CEB511", waybill_head(f"U-OTHER{i}", logisticsNo=f"LN-U{i}"))
        first, second = (order, waybill) if i % 2 else (waybill, order)
        await asyncio.gather(ingest(store, first), ingest(store, second))
        shipment = await store.get_shipment(EBP, f"U{i}")
        assert shipment is not None
        assert "order" not in shipment["missing"] and "waybill" not in shipment["missing"]
    assert await count(db_pool, "SELECT count(*) FROM shipments WHERE ebp_code = ''") == 0


async def test_a_batch_survives_one_message_the_database_refuses(store: Store, db_pool: asyncpg.Pool) -> None:
    good = [message("CEB311", order_head(f"I{i}")) for i in range(6)]
    bad = message("CEB311", order_head("I-BAD"))
    calls = [store.ingest(m, raw_of(m), submitter="t") for m in good[:3]]
    calls.append(store.ingest(bad, b"\x00 is not text", submitter="t"))  # PostgreSQL text cannot hold NUL
    calls += [store.ingest(m, raw_of(m), submitter="t") for m in good[3:]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], asyncpg.PostgresError)
    assert all(isinstance(r, IngestResult) and not r.replay for i, r in enumerate(results) if i != 3)
    assert await count(db_pool, "SELECT count(*) FROM messages") == 6
    assert await store.get_message(bad.guid) is None


async def test_many_concurrent_messages_match_sequential_outcomes(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool, max_batch=8, max_parallel=3)
    msgs = []
    for i in range(12):
        msgs += [
            message("CEB311", order_head(f"H{i}")),
            message("CEB411", payment_head(f"H{i}")),
            message("CEB511", waybill_head(f"H{i}")),
            message("CEB621", inventory_head(f"H{i}")),
        ]
    dup = message("CEB311", order_head("H0", appTime=_later(T0, 9)))
    results = await asyncio.gather(*(ingest(store, m) for m in [*msgs, dup]), return_exceptions=True)
    assert all(isinstance(r, IngestResult) for r in results[:-1])
    assert isinstance(results[-1], Conflict)
    await store.aclose()
    page = await store.list_shipments(limit=100)
    assert len(page["items"]) == 12
    assert all(s["missing"] == [] for s in page["items"])
    assert await count(db_pool, "SELECT count(*) FROM tax_ledger") == 12


async def _counts_kept_and_counted(pool: asyncpg.Pool) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    from gateway.console.queries import COUNT_SHIPMENTS

    kept = {(r["state"], r["customs_status"]): r["n"] for r in await pool.fetch(COUNT_SHIPMENTS)}
    counted = {
        (r["state"], r["customs_status"]): r["n"]
        for r in await pool.fetch("SELECT state, customs_status, count(*) AS n FROM shipments GROUP BY 1, 2")
    }
    return kept, counted


async def test_shipment_counts_are_kept_through_every_change(db_dsn: str) -> None:
    """The counts the console and /metrics read (sql/080_kept_counts.sql) equal a count of the table after
    concurrent batches (new, changed, mismatched, blank shipments made and removed), customs status changes,
    and after folding the rows of a session that ended."""
    db_pool = await db.create_pool(db_dsn, min_size=1, max_size=8)
    try:
        await _counts_through_every_change(db_pool, db_dsn)
    finally:
        await db_pool.close()


async def _counts_through_every_change(db_pool: asyncpg.Pool, dsn: str) -> None:
    store = Store(db_pool, max_batch=4, max_parallel=3)  # several sessions count at once
    msgs = [message("CEB511", waybill_head("C-B"))]  # a blank shipment, taken over by its order below
    for i in range(10):
        paid = {"amountPaid": "1"} if i == 0 else {}  # C0's payment does not cover its order: mismatched
        msgs += [message("CEB311", order_head(f"C{i}")), message("CEB411", payment_head(f"C{i}", **paid))]
        if i % 2:
            msgs += [message("CEB511", waybill_head(f"C{i}")), message("CEB621", inventory_head(f"C{i}"))]
    msgs.append(message("CEB311", order_head("C-B")))
    results = await asyncio.gather(*(ingest(store, m) for m in msgs), return_exceptions=True)
    assert all(isinstance(r, IngestResult) for r in results), [r for r in results if not isinstance(r, IngestResult)]
    await store.aclose()
    kept, counted = await _counts_kept_and_counted(db_pool)
    assert kept == counted and counted[("matched", "pending")] == 5 and counted[("mismatched", "pending")] == 1
    assert await count(db_pool, "SELECT count(*) FROM shipments WHERE ebp_code = ''") == 0

    # customs status changes from a session of its own, which then ends; its counts outlive it
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE shipments SET customs_status = 'released' WHERE order_no IN ('C1', 'C3')")
        await conn.execute("UPDATE shipments SET customs_status = 'rejected' WHERE order_no = 'C5'")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    finally:
        await conn.close()
    kept, counted = await _counts_kept_and_counted(db_pool)
    assert kept == counted and counted[("matched", "released")] == 2 and counted[("matched", "rejected")] == 1
    for _ in range(50):  # the ended session leaves pg_stat_activity a moment after the close
        if await count(db_pool, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid) == 0:
            break
        await asyncio.sleep(0.05)
    assert await db.fold_kept_counts(db_pool) >= 2  # its rows: matched/pending (-3), released, rejected
    assert await count(db_pool, "SELECT count(*) FROM kept_counts WHERE slot = $1", pid) == 0
    kept, counted = await _counts_kept_and_counted(db_pool)
    assert kept == counted
    assert await db.fold_kept_counts(db_pool) == 0  # nothing left to fold


async def test_receipts_are_recorded_without_key_state(store: Store, db_pool: asyncpg.Pool) -> None:
    head = {"guid": "RCPT", "ebpCode": EBP, "ebcCode": EBC, "orderNo": "R9", "returnStatus": "2",
            "returnTime": "20250301100000000", "returnInfo": "ok"}  # fmt: skip
    for status in ("2", "120"):
        r = await ingest(store, message("CEB312", {**head, "returnStatus": status}))
        # the answer says it: kept as a record, applied to nothing (receipts are applied at POST /v1/receipts)
        [doc] = r.body["documents"]
        assert doc["outcome"] == "recorded" and doc["code"] == "state.recorded_only", doc
        assert "/v1/receipts" in doc["message"]
    assert await count(db_pool, "SELECT count(*) FROM documents WHERE kind = 'receipt' AND NOT is_current") == 2
    assert await count(db_pool, "SELECT count(*) FROM shipments") == 0


# --- shipments -------------------------------------------------------------------------------


async def test_shipment_state_follows_the_legs(store: Store) -> None:
    r = await ingest(store, message("CEB311", order_head("S1")))
    assert r.body["shipments"] == [
        {"ebpCode": EBP, "orderNo": "S1", "flow": "import", "state": "incomplete",
         "missing": ["payment", "waybill", "inventory"], "findings": []},
    ]  # fmt: skip
    await ingest(store, message("CEB411", payment_head("S1")))
    await ingest(store, message("CEB511", waybill_head("S1")))
    r = await ingest(store, message("CEB621", inventory_head("S1")))
    summary = r.body["documents"][0]["shipment"]
    assert summary["missing"] == []
    assert summary["state"] in ("matched", "mismatched")  # tax findings may apply to the fixture data
    shipment = await store.get_shipment(EBP, "S1")
    assert shipment is not None
    assert shipment["state"] == summary["state"] and shipment["missing"] == []
    assert {d["kind"] for d in shipment["documents"]} == {"order", "payment", "waybill", "inventory"}
    assert {EBP, EBC, PAY, LOG, AGENT} <= set(shipment["parties"])
    assert shipment["mode"] == "1210"
    blocking = [f for f in shipment["findings"] if f["blocking"]]
    assert (shipment["state"] == "mismatched") == bool(blocking)


async def test_amount_mismatch_makes_the_shipment_mismatched(store: Store) -> None:
    await ingest(store, message("CEB311", order_head("M1")))
    r = await ingest(store, message("CEB411", payment_head("M1", amountPaid="99")))
    shipment = r.body["shipments"][0]
    assert shipment["state"] == "mismatched"
    assert any(f["blocking"] for f in shipment["findings"])
    # correcting the payment reconciles again
    fixed = message("CEB411", payment_head("M1", appType="2", appTime=_later(T0, 1)))
    r = await ingest(store, fixed)
    assert r.body["shipments"][0]["state"] == "incomplete"


async def test_waybill_before_order_lives_in_a_blank_shipment(store: Store, db_pool: asyncpg.Pool) -> None:
    r = await ingest(store, message("CEB511", waybill_head("B1")))
    assert r.body["documents"][0]["shipment"]["ebpCode"] == ""
    assert await store.get_shipment("", "B1") is not None
    r = await ingest(store, message("CEB311", order_head("B1")))
    assert "waybill" not in r.body["shipments"][0]["missing"]
    assert await store.get_shipment("", "B1") is None
    assert await count(db_pool, "SELECT count(*) FROM shipments") == 1
    # a change of the waybill updates the keyed shipment, no blank one comes back
    await ingest(store, message("CEB511", waybill_head("B1", appType="2", appTime=_later(T0, 1), weight="0.6")))
    assert await count(db_pool, "SELECT count(*) FROM shipments") == 1
    # withdrawing it leaves the keyed shipment without a waybill
    r = await ingest(store, message("CEB511", waybill_head("B1", appType="3", appTime=_later(T0, 2))))
    assert "waybill" in r.body["documents"][0]["shipment"]["missing"]
    assert await count(db_pool, "SELECT count(*) FROM shipments") == 1


async def test_withdrawn_blank_waybill_removes_its_shipment(store: Store, db_pool: asyncpg.Pool) -> None:
    await ingest(store, message("CEB511", waybill_head("B2")))
    await ingest(store, message("CEB511", waybill_head("B2", appType="3", appTime=_later(T0, 1))))
    assert await count(db_pool, "SELECT count(*) FROM shipments") == 0


@pytest.mark.parametrize("waybill_first", [True, False])
async def test_a_waybill_of_an_order_number_two_platforms_use_is_neither_ones_until_an_inventory_names_it(
    store: Store, waybill_first: bool
) -> None:
    """orderNo is unique within a platform only and a waybill names no ebpCode (spec §6.2): it was reconciled with,
    and listed on, both platforms' shipments. Until an inventory of the orderNo names it, it is neither one's leg;
    both report it ambiguous, and it shows in the orderNo's waybill-only shipment."""
    other = "46012609ZZ"
    first = [message("CEB311", order_head("PP1")), message("CEB311", order_head("PP1", ebpCode=other, guid="ORD-2"))]
    waybill = message("CEB511", waybill_head("PP1"))
    for msg in [waybill, *first] if waybill_first else [first[0], waybill, first[1]]:
        await ingest(store, msg)

    def waybills(shipment: dict[str, Any] | None) -> list[str]:
        assert shipment is not None
        return [d["head"]["logisticsNo"] for d in shipment["documents"] if d["kind"] == "waybill"]

    for ebp in (EBP, other):
        shipment = await store.get_shipment(ebp, "PP1")
        assert shipment is not None and "waybill" in shipment["missing"] and shipment["state"] == "incomplete"
        assert [f["code"] for f in shipment["findings"]] == ["recon.waybill_ambiguous"]
        assert waybills(shipment) == []
    blank = await store.get_shipment("", "PP1")
    assert waybills(blank) == ["LN-PP1"]
    assert blank is not None and [f["code"] for f in blank["findings"]] == ["recon.waybill_ambiguous"]

    # the inventory names it: the platform's shipment it belongs to, the other's not at all
    r = await ingest(store, message("CEB621", inventory_head("PP1")))
    mine, theirs = await store.get_shipment(EBP, "PP1"), await store.get_shipment(other, "PP1")
    assert mine is not None and "waybill" not in mine["missing"] and waybills(mine) == ["LN-PP1"]
    assert not [f for f in mine["findings"] if f["code"] == "recon.waybill_ambiguous"]
    assert theirs is not None and theirs["findings"] == [] and waybills(theirs) == []
    assert await store.get_shipment("", "PP1") is None
    assert {(s["ebpCode"], s["orderNo"]) for s in r.body["shipments"]} == {(EBP, "PP1"), (other, "PP1")}
    listed = await store.list_shipments()
    assert sorted((i["ebpCode"], i["orderNo"]) for i in listed["items"] if i["orderNo"] == "PP1") == [
        (other, "PP1"), (EBP, "PP1")
    ]


async def test_waybill_is_found_through_the_inventory_logistics_key(store: Store) -> None:
    # the waybill names another orderNo; the inventory's (logisticsCode, logisticsNo) still pairs them
    await ingest(store, message("CEB621", inventory_head("K1", logisticsNo="LN-K")))
    await ingest(store, message("CEB511", waybill_head("K-OTHER", logisticsNo="LN-K")))
    shipment = await store.get_shipment(EBP, "K1")
    assert shipment is not None and "waybill" not in shipment["missing"]
    assert await store.get_shipment("", "K-OTHER") is None


async def test_payment_moved_to_another_order_reconciles_both(store: Store) -> None:
    await ingest(store, message("CEB311", order_head("Q1")))
    await ingest(store, message("CEB311", order_head("Q2")))
    await ingest(store, message("CEB411", payment_head("Q1", payTransactionId="TX-MOVE")))
    r = await ingest(
        store, message("CEB411", payment_head("Q2", payTransactionId="TX-MOVE", appType="2", appTime=_later(T0, 1)))
    )
    states = {s["orderNo"]: s["missing"] for s in r.body["shipments"]}
    assert "payment" in states["Q1"] and "payment" not in states["Q2"]


async def _shipment_rows(pool: asyncpg.Pool) -> list[tuple[str, str, str, list[str]]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT ebp_code, order_no, state, missing FROM shipments ORDER BY 1, 2")
    return [(r["ebp_code"], r["order_no"], r["state"], list(r["missing"])) for r in rows]


@pytest.mark.parametrize("waybill_first", [True, False])
async def test_a_waybill_a_shipment_lets_go_of_goes_where_it_would_have_gone_had_it_come_last(
    db_pool: asyncpg.Pool, waybill_first: bool
) -> None:
    """An inventory moved to another waybill, an order withdrawn: the waybill their shipment held goes back to a
    shipment of its own, so the rows do not depend on whether the waybill came before or after."""
    store = Store(db_pool)
    waybill = message("CEB511", waybill_head("X9", logisticsNo="LN-W1"))
    changed = inventory_head("O1", logisticsNo="LN-W2", appType="2", appTime=_later(T0, 5))
    moved = [message("CEB621", inventory_head("O1", logisticsNo="LN-W1")), message("CEB621", changed)]
    own = message("CEB511", waybill_head("X7"))
    withdrawn = [message("CEB311", order_head("X7")),
                 message("CEB311", order_head("X7", appType="3", appTime=_later(T0, 5)))]  # fmt: skip
    for msg in [waybill, *moved, own, *withdrawn] if waybill_first else [*moved, waybill, *withdrawn, own]:
        await ingest(store, msg)
    assert await _shipment_rows(db_pool) == [
        ("", "X7", "incomplete", ["order", "payment", "inventory"]),
        ("", "X9", "incomplete", ["order", "payment", "inventory"]),
        (EBP, "O1", "incomplete", ["order", "payment", "waybill"]),
        (EBP, "X7", "incomplete", ["order", "payment", "waybill", "inventory"]),
    ]


async def test_a_shipment_is_read_as_of_one_moment(
    store: Store, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_shipment reads the shipment, then its documents: a payment committed in between is in neither."""
    await ingest(store, message("CEB311", order_head("SNAP1")))
    real_fetch = asyncpg.Connection.fetch
    between: list[IngestResult] = []

    async def fetch(self: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
        if query == store_module.SELECT_SHIPMENT_DOCUMENTS and not between:
            between.append(await ingest(store, message("CEB411", payment_head("SNAP1"))))  # commits meanwhile
        return await real_fetch(self, query, *args, **kw)

    monkeypatch.setattr(asyncpg.Connection, "fetch", fetch)
    seen = await store.get_shipment(EBP, "SNAP1")
    assert between and between[0].http_status == 202
    assert seen is not None and "payment" in seen["missing"]
    assert [d["kind"] for d in seen["documents"]] == ["order"]
    monkeypatch.undo()
    after = await store.get_shipment(EBP, "SNAP1")
    assert after is not None and "payment" not in after["missing"]
    assert sorted(d["kind"] for d in after["documents"]) == ["order", "payment"]


# --- cancellations and returns (spec R12) ---------------------------------------------------------------


def _refund_head(order_no: str, **kw: str) -> dict[str, str]:
    inv = inventory_head(order_no)
    h = {k: inv[k] for k in ("appTime", "customsCode", "orderNo", "ebpCode", "ebpName", "ebcCode", "ebcName",
                             "logisticsNo", "logisticsCode", "logisticsName", "buyerIdType", "buyerIdNumber",
                             "buyerName", "buyerTelephone", "agentCode", "agentName")}  # fmt: skip
    h.update(guid=f"REF-{order_no}", appType="1", appStatus="2", invtNo="22442025I000000001", reason="不想要了")
    h.update(kw)
    return h


def _refund_line(gnum: str, qty: str) -> dict[str, str]:
    return {"gnum": gnum, "gcode": "3304990099", "gname": "面霜", "qty": qty, "unit": "011"}


async def _release(db_pool: asyncpg.Pool, order_no: str) -> None:
    """Customs' CEB622 800 for the current inventory of ``order_no``, as the outbox applies it: a return may follow."""
    await db_pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '800', customs_rank = $2"
                          " WHERE message_type = 'CEB621' AND order_no = $1 AND is_current", order_no, RANK_RELEASED)


async def _refused(store: Store, msg: ParsedMessage) -> list[tuple[str, str]]:
    with pytest.raises(Conflict) as refused:
        await ingest(store, msg)
    return [(i.code, i.path) for i in refused.value.issues]


async def test_a_cancellation_or_return_names_a_stored_inventory_and_returns_no_more_than_it_holds(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    for code in ("CEB623", "CEB625"):
        lines = [_refund_line("1", "1")] if code == "CEB625" else []
        orphan = message(code, _refund_head("R0"), lines=lines)
        assert await _refused(store, orphan) == [("state.no_inventory", f"/{code}Message/{orphan.type.document}[1]")]
    await ingest(store, message("CEB621", inventory_head("R1"), lines=[
        {**inventory_lines()[0], "qty": "2", "qty1": "2", "totalPrice": "200"}]))  # fmt: skip
    await _release(db_pool, "R1")
    path = "/CEB625Message/InvtRefund[1]/InvtRefundList"
    too_many = message("CEB625", _refund_head("R1"), lines=[_refund_line("1", "3"), _refund_line("2", "1")])
    assert await _refused(store, too_many) == [("state.refund_exceeds_inventory", f"{path}[1]/qty"),
                                               ("state.refund_not_in_inventory", f"{path}[2]/gnum")]  # fmt: skip
    returned = await ingest(store, message("CEB625", _refund_head("R1"), lines=[_refund_line("01", "2")]))
    assert returned.http_status == 202
    assert (await ingest(store, message("CEB623", _refund_head("R1")))).http_status == 202
    # a withdrawn inventory can be cancelled no more
    await ingest(store, message("CEB621", inventory_head("R2")))
    await ingest(store, message("CEB621", inventory_head("R2", appType="3", appTime=_later(T0, 1))))
    assert [c for c, _ in await _refused(store, message("CEB623", _refund_head("R2")))] == ["state.no_inventory"]


async def test_a_cancellation_or_return_of_an_inventory_void_at_customs_is_refused(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """R12: an import return or cancellation names an inventory customs holds. One whose first declaration customs
    rejected is none (state.no_inventory); one whose cancellation customs concluded is void there
    (state.inventory_cancelled) — both were taken, and customs would have refused them."""
    await ingest(store, message("CEB621", inventory_head("VD1")))
    await db_pool.execute("UPDATE documents SET forward_state = 'rejected', customs_status = '100', customs_rank = 100"
                          " WHERE message_type = 'CEB621' AND key2 = 'VD1'")  # fmt: skip
    returned = message("CEB625", _refund_head("VD1"), lines=[_refund_line("1", "1")])
    assert await _refused(store, returned) == [("state.no_inventory", "/CEB625Message/InvtRefund[1]")]
    assert [c for c, _ in await _refused(store, message("CEB623", _refund_head("VD1")))] == ["state.no_inventory"]
    await ingest(store, message("CEB621", inventory_head("VD2")))
    assert (await ingest(store, message("CEB623", _refund_head("VD2")))).http_status == 202
    await db_pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '399', customs_rank = $1"
                          " WHERE message_type = 'CEB623' AND key2 = 'VD2'", RANK_CONCLUDED)  # fmt: skip
    again = message("CEB625", _refund_head("VD2"), lines=[_refund_line("1", "1")])
    assert await _refused(store, again) == [("state.inventory_cancelled", "/CEB625Message/InvtRefund[1]")]


async def test_an_import_return_follows_its_inventorys_release(store: Store, db_pool: asyncpg.Pool) -> None:
    """§6.5: a return (CEB625) follows the release; customs refuses one before it. Refused at the return's invtNo,
    nothing stored; taken once the CEB622 800 came. A cancellation (CEB623) needs no release."""
    await ingest(store, message("CEB621", inventory_head("RL1")))
    early = message("CEB625", _refund_head("RL1"), lines=[_refund_line("1", "1")])
    assert await _refused(store, early) == [("state.inventory_not_released", early.documents[0].field_path("invtNo"))]
    assert await db_pool.fetchval("SELECT count(*) FROM documents WHERE message_type = 'CEB625'") == 0
    # accepted (120) and examined (500) is not released
    await db_pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '500', customs_rank = $1"
                          " WHERE message_type = 'CEB621' AND order_no = 'RL1'", RANK_RELEASED - 1)  # fmt: skip
    assert [c for c, _ in await _refused(store, early)] == ["state.inventory_not_released"]
    await _release(db_pool, "RL1")
    assert (await ingest(store, early)).http_status == 202
    await ingest(store, message("CEB621", inventory_head("RL2")))
    assert (await ingest(store, message("CEB623", _refund_head("RL2")))).http_status == 202


async def test_an_import_cancellation_or_return_describes_the_inventory_its_key_names(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """R12, A.7, A.9: found by its inventory's key (ebcCode, orderNo), a cancellation or return names the invtNo
    customs gave the inventory — once a CEB622 named one —, its waybill and its buyer; a return's line the item's gcode
    and unit, each item once. Any other is another parcel's, or another person's (whose quota a concluded return
    would give back): refused, nothing stored."""
    # not numbered yet (no receipt named its invtNo): none to compare
    await ingest(store, message("CEB621", inventory_head("DS0")))
    assert (await ingest(store, message("CEB623", _refund_head("DS0", invtNo="22442025I000000777")))).http_status == 202
    await ingest(store, message("CEB621", inventory_head("DS1")))
    await _release(db_pool, "DS1")
    await db_pool.execute("UPDATE documents SET invt_no = '22442025I000000001' WHERE message_type = 'CEB621'"
                          " AND order_no = 'DS1'")  # fmt: skip
    for code in ("CEB623", "CEB625"):
        lines = [_refund_line("1", "1")] if code == "CEB625" else []
        other = message(code, _refund_head("DS1", invtNo="22442025I000000999", logisticsNo="LN-OTHER",
                                           buyerIdNumber="11010119900101123X"), lines=lines)  # fmt: skip
        doc = other.documents[0]
        expected = [("state.not_the_inventory", doc.field_path(f)) for f in ("invtNo", "logisticsNo", "buyerIdNumber")]
        assert await _refused(store, other) == expected
    item = {**_refund_line("1", "1"), "gcode": "0101210010", "unit": "035"}
    wrong_item = message("CEB625", _refund_head("DS1"), lines=[item])
    doc = wrong_item.documents[0]
    assert await _refused(store, wrong_item) == [("state.refund_item_mismatch", doc.line_path(0, "gcode")),
                                                 ("state.refund_item_mismatch", doc.line_path(0, "unit"))]  # fmt: skip
    assert await db_pool.fetchval("SELECT count(*) FROM documents WHERE message_type IN ('CEB623', 'CEB625')"
                                  " AND key2 = 'DS1'") == 0  # fmt: skip
    # the inventory's own: taken (an ID number's check character in either case is the same number)
    mine = message("CEB625", _refund_head("DS1", buyerIdNumber="110101199001011237"), lines=[_refund_line("1", "1")])
    assert (await ingest(store, mine)).http_status == 202
    assert (await ingest(store, message("CEB623", _refund_head("DS1")))).http_status == 202


async def test_an_order_takes_no_change_once_its_inventory_is_declared(store: Store, db_pool: asyncpg.Pool) -> None:
    """Customs takes no change or withdrawal of an order whose inventory it holds (-301011): refused at the order's
    appType, nothing stored. Until the inventory is declared — held by the gateway (spec §6.7), temp-saved (§3.6) —
    and once it is none at customs — withdrawn, its first declaration refused, its cancellation concluded — the order
    may change."""
    current = "SELECT app_time FROM documents WHERE message_type = 'CEB311' AND key2 = $1 AND is_current"

    async def refused(order_no: str, app_type: str, seconds: int) -> list[tuple[str, str]]:
        msg = message("CEB311", order_head(order_no, appType=app_type, appTime=_later(T0, seconds)))
        before = await db_pool.fetchval(current, order_no)
        found = await _refused(store, msg)
        assert await db_pool.fetchval(current, order_no) == before  # nothing stored
        return found

    async def changed(order_no: str, seconds: int) -> str:
        msg = message("CEB311", order_head(order_no, appType="2", appTime=_later(T0, seconds)))
        outcome: str = (await ingest(store, msg)).body["documents"][0]["outcome"]
        return outcome

    await ingest(store, message("CEB311", order_head("OD1")))
    await ingest(store, message("CEB621", inventory_head("OD1")))
    path = "/CEB311Message/Order[1]/OrderHead/appType"
    assert await refused("OD1", "2", 10) == [("state.inventory_declared", path)]
    with pytest.raises(Conflict) as said:  # naming the inventory that was declared by its guid
        await ingest(store, message("CEB311", order_head("OD1", appType="2", appTime=_later(T0, 10))))
    assert "(ebcCode " + EBC + ", guid INV-OD1) was declared" in said.value.issues[0].message
    assert await refused("OD1", "3", 10) == [("state.inventory_declared", path)]
    # an older one is still only ignored (it changes nothing either way)
    stale = message("CEB311", order_head("OD1", guid="ORD-OD1-OLD", appType="2", appTime=T0))
    assert (await ingest(store, stale)).body["documents"][0]["outcome"] == "ignored_older"
    # a change of the inventory the gateway holds: customs holds the version before it
    await ingest(store, message("CEB621", inventory_head("OD1", appType="2", appTime=_later(T0, 5))))
    await db_pool.execute("UPDATE documents SET forward_state = 'held' WHERE message_type = 'CEB621'"
                          " AND order_no = 'OD1' AND is_current")  # fmt: skip
    assert [c for c, _ in await refused("OD1", "2", 10)] == ["state.inventory_declared"]

    await ingest(store, message("CEB311", order_head("OD2")))
    await ingest(store, message("CEB621", inventory_head("OD2", appStatus="1")))  # temp-saved
    assert await changed("OD2", 10) == "replaced"
    await ingest(store, message("CEB621", inventory_head("OD2", appTime=_later(T0, 20))))  # declared
    assert [c for c, _ in await refused("OD2", "2", 30)] == ["state.inventory_declared"]
    await ingest(store, message("CEB621", inventory_head("OD2", appType="3", appTime=_later(T0, 40))))  # withdrawn
    assert await changed("OD2", 50) == "replaced"

    await ingest(store, message("CEB311", order_head("OD3")))
    await ingest(store, message("CEB621", inventory_head("OD3")))
    await db_pool.execute("UPDATE documents SET forward_state = 'held' WHERE message_type = 'CEB621'"
                          " AND order_no = 'OD3'")  # fmt: skip
    assert await changed("OD3", 10) == "replaced"  # held: never sent
    await db_pool.execute("UPDATE documents SET forward_state = 'rejected' WHERE message_type = 'CEB621'"
                          " AND order_no = 'OD3'")  # fmt: skip
    assert await changed("OD3", 20) == "replaced"  # refused by customs: none there

    await ingest(store, message("CEB311", order_head("OD4")))
    await ingest(store, message("CEB621", inventory_head("OD4")))
    await _release(db_pool, "OD4")
    await ingest(store, message("CEB623", _refund_head("OD4")))
    assert [c for c, _ in await refused("OD4", "3", 10)] == ["state.inventory_declared"]
    await _conclude_cancellation(db_pool, "OD4")
    assert await changed("OD4", 20) == "replaced"


async def test_an_export_order_takes_no_change_once_its_inventory_is_declared(store: Store) -> None:
    from tests import exportutil as ex

    await ingest(store, ex.export_message("CEB303", ex.order_head("EOD1")))
    await ingest(store, ex.export_message("CEB603", ex.inventory_head("EOD1")))
    change = ex.export_message("CEB303", ex.order_head("EOD1", appType="2", appTime=_later(T0, 10)))
    assert await _refused(store, change) == [("state.inventory_declared", change.documents[0].field_path("appType"))]


@pytest.mark.parametrize("code", ["CEB625", "CEB623"])
async def test_a_cancellation_or_return_names_its_inventorys_platform(
    store: Store, db_pool: asyncpg.Pool, code: str
) -> None:
    """An inventory declares one platform's order (ebpCode + orderNo, spec §6.2): a return naming another ebpCode was
    taken, stored on another shipment than its inventory's, and once customs concluded it gave no quota back (its
    versions are read by its inventory's shipment). Before its inventory it names none; after, it is refused."""
    lines = [_refund_line("1", "1")] if code == "CEB625" else []
    other = message(code, _refund_head("PL1", ebpCode="46012609ZZ"), lines=lines)
    assert [c for c, _ in await _refused(store, other)] == ["state.no_inventory"]
    await ingest(store, message("CEB621", inventory_head("PL1")))
    await _release(db_pool, "PL1")
    with pytest.raises(Conflict) as refused:
        await ingest(store, other)
    (found,) = refused.value.issues
    assert (found.code, found.path) == ("state.inventory_platform_mismatch", other.documents[0].field_path("ebpCode"))
    assert f"ebpCode '46012609ZZ' is not '{EBP}'" in found.message
    assert (await ingest(store, message(code, _refund_head("PL1"), lines=lines))).http_status == 202


async def test_a_temp_saved_inventory_takes_no_quota_and_is_declared_with_app_type_1(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """appStatus 1 is a temp-save at E-Port (spec §3.6): never declared, so it counts nothing toward the buyer's
    annual quota, and its declaration is appType 1 again (appStatus 2, a newer appTime), not a duplicate."""
    await ingest(store, message("CEB621", inventory_head("TS1", appStatus="1")))
    amounts = "SELECT array_agg(amount::text) FROM tax_ledger WHERE order_no = 'TS1'"
    assert await db_pool.fetchval(amounts) == ["0.00000"]
    declared = await ingest(store, message("CEB621", inventory_head("TS1", appTime=_later(T0, 1))))
    assert declared.http_status == 202 and declared.body["documents"][0]["outcome"] == "replaced"
    [amount] = await db_pool.fetchval(amounts)
    assert Decimal(amount) > 0
    # declared: appType 1 again is the usual duplicate
    assert [c for c, _ in await _refused(store, message("CEB621", inventory_head("TS1", appTime=_later(T0, 2))))] == [
        "state.duplicate"
    ]
    # a temp-saved change of the declared one is no temp-save of a first declaration: customs holds the declared
    # version, so the quota stays and appType 1 is still a duplicate
    temp_change = inventory_head("TS1", appType="2", appStatus="1", appTime=_later(T0, 3))
    assert (await ingest(store, message("CEB621", temp_change))).body["documents"][0]["outcome"] == "replaced"
    assert Decimal((await db_pool.fetchval(amounts))[0]) > 0
    assert [c for c, _ in await _refused(store, message("CEB621", inventory_head("TS1", appTime=_later(T0, 4))))] == [
        "state.duplicate"
    ]


async def test_an_order_has_one_inventory(store: Store, db_pool: asyncpg.Pool) -> None:
    """A second live inventory of a shipment under another ebcCode was stored beside the first: reconciliation and
    the tax ledger saw the latest only, and the hold released both to customs."""
    await ingest(store, message("CEB621", inventory_head("OI1")))
    other = inventory_head("OI1", guid="INV-OI1-B", ebcCode="4601260E99", assureCode="4601260E99",
                           appTime=_later(T0, 1))  # fmt: skip
    refused = await _refused(store, message("CEB621", other))
    assert refused == [("state.second_inventory", "/CEB621Message/Inventory[1]")]
    await ingest(store, message("CEB621", inventory_head("OI1", appType="3", appTime=_later(T0, 2))))
    assert (await ingest(store, message("CEB621", {**other, "appTime": _later(T0, 3)}))).http_status == 202
    # a change of the live inventory is no second one
    change = {**other, "appType": "2", "appTime": _later(T0, 4), "note": "changed"}
    assert (await ingest(store, message("CEB621", change))).body["documents"][0]["outcome"] == "replaced"
    # one customs refused (its first declaration) is no inventory at customs: another may be declared
    await ingest(store, message("CEB621", inventory_head("OI2")))
    async with db_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET forward_state = 'rejected' WHERE order_no = 'OI2'")
    again = inventory_head("OI2", guid="INV-OI2-B", ebcCode="4601260E99", assureCode="4601260E99",
                           appTime=_later(T0, 1))  # fmt: skip
    assert (await ingest(store, message("CEB621", again))).http_status == 202


async def _conclude_cancellation(db_pool: asyncpg.Pool, order_no: str) -> None:
    """The CEB624 399 as the outbox applies it to the order's cancellation, and the quota it gives back."""
    async with db_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '399', customs_rank = $2"
                           " WHERE message_type = 'CEB623' AND order_no = $1", order_no, RANK_CONCLUDED)
        await conn.execute("UPDATE tax_ledger SET amount = 0 WHERE order_no = $1", order_no)  # fmt: skip


async def test_a_later_leg_counts_the_inventory_less_what_its_concluded_return_gave_back(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """With an inventory the store reads the return customs concluded for it (CEB626 399): a leg arriving after the
    receipt reassesses the inventory less the value of the goods returned, at the prices of the version customs
    released (a change sent before the release: none is taken after it). The ledger row keeps what the return took off
    (returned)."""
    two = [{**inventory_lines("1000")[0], "qty": "2", "qty1": "2"}]  # ¥1,010 with freight
    await ingest(store, message("CEB621", inventory_head("RQ1"), lines=two))
    row = "SELECT amount::text, returned::text FROM tax_ledger WHERE order_no = 'RQ1'"
    assert tuple(await db_pool.fetchrow(row)) == ("1010.00000", "0.00000")
    changed = [{**two[0], "price": "1000", "totalPrice": "2000"}]  # ¥2,010: the item to be returned is ¥1,005
    await ingest(store, message("CEB621", inventory_head("RQ1", appType="2", appTime=_later(T0, 1)), lines=changed))
    await _release(db_pool, "RQ1")
    await ingest(store, message("CEB625", _refund_head("RQ1"), lines=[_refund_line("1", "1")]))
    await ingest(store, message("CEB311", order_head("RQ1")))
    assert tuple(await db_pool.fetchrow(row)) == ("2010.00000", "0.00000")  # submitted, not concluded
    await db_pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '399', customs_rank = $1"
                          " WHERE message_type = 'CEB625' AND order_no = 'RQ1'", RANK_CONCLUDED)  # fmt: skip
    await ingest(store, message("CEB411", payment_head("RQ1")))
    assert tuple(await db_pool.fetchrow(row)) == ("1005.00000", "1005.00000")
    async with db_pool.acquire() as conn:  # migration 200 finds what a return gave back before the column
        await conn.execute("UPDATE tax_ledger SET returned = 0")
        await db.apply_migration(conn, "200_ledger_returned.sql")
    assert tuple(await db_pool.fetchrow(row)) == ("1005.00000", "1005.00000")


@pytest.mark.parametrize(
    ("left", "why"),
    [(("0", "0"), "a changed return concluded again, deducted on top of the first version"),
     (("1010", "0"), "a later leg counting it again in full, or a return concluded before returns gave any")],
)  # fmt: skip
async def test_migration_200_recounts_the_rows_of_inventories_customs_concluded_a_return_for(
    store: Store, db_pool: asyncpg.Pool, left: tuple[str, str], why: str
) -> None:
    """Whatever an earlier build left in the row (``why``), the migration sets what the gateway counts now: the
    inventory in full (¥1,010) less the value of the item returned (¥505), kept in ``returned``."""
    two = [{**inventory_lines("1000")[0], "qty": "2", "qty1": "2"}]  # ¥1,010 with freight
    await ingest(store, message("CEB621", inventory_head("MG1"), lines=two))
    await _release(db_pool, "MG1")
    await ingest(store, message("CEB625", _refund_head("MG1"), lines=[_refund_line("1", "1")]))
    await ingest(store, message("CEB625", _refund_head("MG1", guid="REF-MG1-2", appType="2", appTime=_later(T0, 30)),
                                lines=[_refund_line("1", "1")]))  # fmt: skip
    await db_pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '399', customs_rank = $1"
                          " WHERE message_type = 'CEB625' AND order_no = 'MG1'", RANK_CONCLUDED)  # fmt: skip
    await db_pool.execute("UPDATE tax_ledger SET amount = $1, returned = $2 WHERE order_no = 'MG1'",
                          Decimal(left[0]), Decimal(left[1]))  # fmt: skip
    async with db_pool.acquire() as conn:
        await db.apply_migration(conn, "200_ledger_returned.sql")
    row = "SELECT amount::text, returned::text FROM tax_ledger WHERE order_no = 'MG1'"
    migrated = tuple(await db_pool.fetchrow(row))
    await ingest(store, message("CEB311", order_head("MG1")))  # a later leg: the gateway's own count
    assert migrated == tuple(await db_pool.fetchrow(row)) == ("505.00000", "505.00000")


async def test_an_inventory_whose_cancellation_customs_concluded_leaves_room_for_a_new_one(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """Nothing of a cancelled inventory is left at customs (CEB624 399): it is no order's one inventory any more,
    its key may be declared anew, and the quota the outbox gave back with the receipt is not counted again."""
    await ingest(store, message("CEB621", inventory_head("CX1")))
    await ingest(store, message("CEB623", _refund_head("CX1", appTime=_later(T0, 1))))
    other = inventory_head("CX1", guid="INV-CX1-B", ebcCode="4601260E99", assureCode="4601260E99",
                           appTime=_later(T0, 2))  # fmt: skip
    assert [c for c, _ in await _refused(store, message("CEB621", other))] == ["state.second_inventory"]
    await _conclude_cancellation(db_pool, "CX1")
    quota = "SELECT ebc_code, amount::text FROM tax_ledger WHERE order_no = 'CX1' ORDER BY ebc_code"
    # a leg reassessing the cancelled inventory does not count it again
    await ingest(store, message("CEB311", order_head("CX1")))
    assert [tuple(r) for r in await db_pool.fetch(quota)] == [(EBC, "0.00000")]
    declared = await ingest(store, message("CEB621", other))
    assert declared.http_status == 202 and declared.body["documents"][0]["outcome"] == "accepted"
    amounts = {r["ebc_code"]: Decimal(r["amount"]) for r in await db_pool.fetch(quota)}
    assert amounts[EBC] == 0 and amounts["4601260E99"] > 0
    shipment = await store.get_shipment(EBP, "CX1")
    assert shipment is not None and shipment["ebcCode"] == "4601260E99"  # the new inventory is the shipment's leg
    # the same key declared anew after its cancellation concluded
    await ingest(store, message("CEB621", inventory_head("CX2")))
    await ingest(store, message("CEB623", _refund_head("CX2", appTime=_later(T0, 1))))
    await _conclude_cancellation(db_pool, "CX2")
    anew = await ingest(store, message("CEB621", inventory_head("CX2", appTime=_later(T0, 2))))
    assert anew.http_status == 202 and anew.body["documents"][0]["outcome"] == "replaced"
    # declared anew, it is the order's one inventory again
    again = inventory_head("CX2", guid="INV-CX2-B", ebcCode="4601260E99", assureCode="4601260E99",
                           appTime=_later(T0, 3))  # fmt: skip
    assert [c for c, _ in await _refused(store, message("CEB621", again))] == ["state.second_inventory"]
    # and it is cancelled again by a new cancellation (appType 1: a cancellation takes no change), which, before the
    # key was declared anew, was the same cancellation twice
    twice = _refund_head("CX2", guid="REF-CX2-2", appTime=_later(T0, 3))
    cancel_again = await ingest(store, message("CEB623", twice))
    assert cancel_again.http_status == 202 and cancel_again.body["documents"][0]["outcome"] == "replaced"
    await ingest(store, message("CEB621", inventory_head("CX3")))
    await ingest(store, message("CEB623", _refund_head("CX3", appTime=_later(T0, 1))))
    await _conclude_cancellation(db_pool, "CX3")
    again3 = _refund_head("CX3", guid="REF-CX3-2", appTime=_later(T0, 2))
    assert [c for c, _ in await _refused(store, message("CEB623", again3))] == ["state.duplicate"]


async def test_an_inventory_the_gateway_holds_is_withdrawn_not_cancelled(store: Store, db_pool: asyncpg.Pool) -> None:
    """A held inventory has not reached customs: a cancellation (or return) of it would (spec R12, §6.7)."""
    await ingest(store, message("CEB621", inventory_head("RH1")))
    async with db_pool.acquire() as conn:  # as the outbox writes an inventory whose shipment is not matched yet
        await conn.execute("UPDATE documents SET forward_state = 'held' WHERE message_type = 'CEB621'")
    for code in ("CEB623", "CEB625"):
        lines = [_refund_line("1", "1")] if code == "CEB625" else []
        assert [c for c, _ in await _refused(store, message(code, _refund_head("RH1"), lines=lines))] == [
            "state.inventory_held"
        ]
    withdrawal = await ingest(store, message("CEB621", inventory_head("RH1", appType="3", appTime=_later(T0, 1))))
    assert withdrawal.body["documents"][0]["outcome"] == "withdrawn"
    # a held change of a declared inventory: customs holds the version before it, which may be cancelled
    await ingest(store, message("CEB621", inventory_head("RH2")))
    await ingest(store, message("CEB621", inventory_head("RH2", appType="2", appTime=_later(T0, 1))))
    async with db_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET forward_state = 'held' WHERE order_no = 'RH2' AND is_current")
    assert (await ingest(store, message("CEB623", _refund_head("RH2", appTime=_later(T0, 2))))).http_status == 202


async def test_a_cancellation_customs_rejected_may_be_declared_anew(store: Store, db_pool: asyncpg.Pool) -> None:
    """CEB623 takes appType 1 only: once customs rejected a cancellation (a receipt made it 'rejected'), a new one
    with a newer appTime replaces it; before that, or with the same appTime, the usual answers."""
    await ingest(store, message("CEB621", inventory_head("RC1")))
    await ingest(store, message("CEB623", _refund_head("RC1")))
    with pytest.raises(Conflict) as exc:
        await ingest(store, message("CEB623", _refund_head("RC1", appTime=_later(T0, 5))))
    assert codes(exc) == ["state.duplicate"]
    async with db_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET forward_state = 'rejected' WHERE message_type = 'CEB623'")
    same = await ingest(store, message("CEB623", _refund_head("RC1")))
    assert same.body["documents"][0]["outcome"] == "ignored_older"
    again = await ingest(store, message("CEB623", _refund_head("RC1", appTime=_later(T0, 5))))
    assert again.http_status == 202 and again.body["documents"][0]["outcome"] == "replaced"


# --- tax ledger ------------------------------------------------------------------------------


async def ledger(pool: asyncpg.Pool) -> dict[str, Decimal]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT order_no, amount FROM tax_ledger ORDER BY order_no")
    return {r["order_no"]: r["amount"] for r in rows}


async def test_ledger_adds_changes_and_withdraws(store: Store, db_pool: asyncpg.Pool) -> None:
    inv = message("CEB621", inventory_head("L1"))
    await ingest(store, inv)
    expected = tax.assess(inv.documents[0], annual_used=Decimal(0)).counts_toward_annual
    assert expected > 0
    assert await ledger(db_pool) == {"L1": expected}
    # a change with another price rewrites the row
    changed = message("CEB621", inventory_head("L1", appType="2", appTime=_later(T0, 1)), lines=inventory_lines("200"))
    await ingest(store, changed)
    assert await ledger(db_pool) == {
        "L1": tax.assess(changed.documents[0], annual_used=Decimal(0)).counts_toward_annual
    }
    await ingest(store, message("CEB621", inventory_head("L1", appType="3", appTime=_later(T0, 2))))
    assert await ledger(db_pool) == {}


async def test_ledger_counts_the_buyers_other_orders(store: Store, db_pool: asyncpg.Pool) -> None:
    # several large inventories of one buyer; each is assessed against the sum of the earlier ones
    used = Decimal(0)
    for i in range(7):
        inv = message("CEB621", inventory_head(f"Y{i}"), lines=inventory_lines("4900"))
        r = await ingest(store, inv)
        expected = tax.assess(inv.documents[0], annual_used=used)
        assert (await ledger(db_pool))[f"Y{i}"] == expected.counts_toward_annual
        codes_found = {f["code"] for f in r.body["shipments"][0]["findings"]}
        assert {f.code for f in expected.findings} <= codes_found
        used += expected.counts_toward_annual
    assert used < Decimal(7) * 4910  # the annual limit stopped counting at some point
    # another buyer is not affected
    other = message("CEB621", inventory_head("Z1", buyerIdNumber="220101199001015678"))
    await ingest(store, other)
    assert (await ledger(db_pool))["Z1"] == tax.assess(other.documents[0], annual_used=Decimal(0)).counts_toward_annual


async def test_one_buyer_one_quota_whichever_case_the_check_character_x_is_written_in(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    used = Decimal(0)
    for i in range(5):  # ¥24,550 with a lower-case x
        inv = message("CEB621", inventory_head(f"X{i}", buyerIdNumber="11010119900101123x"),
                      lines=inventory_lines("4900"))  # fmt: skip
        await ingest(store, inv)
        used += tax.assess(inv.documents[0], annual_used=used).counts_toward_annual
    upper = message("CEB621", inventory_head("X9", buyerIdNumber="11010119900101123X"), lines=inventory_lines("4900"))
    r = await ingest(store, upper)
    assert "tax.annual_limit_exceeded" in {f["code"] for f in r.body["shipments"][0]["findings"]}
    async with db_pool.acquire() as conn:
        buyers = await conn.fetch("SELECT DISTINCT buyer_id_number FROM tax_ledger")
    assert [r["buyer_id_number"] for r in buyers] == ["11010119900101123X"]
    # migration 120 writes the ledger's older rows the same way
    async with db_pool.acquire() as conn:
        await conn.execute("UPDATE tax_ledger SET buyer_id_number = lower(buyer_id_number) WHERE order_no = 'X0'")
        await conn.execute(dict(db.migration_files())["120_ledger_buyer_upper.sql"])
        assert await conn.fetchval("SELECT count(DISTINCT buyer_id_number) FROM tax_ledger") == 1


async def test_a_waybill_after_its_inventory_reads_once_where_the_inventory_was_seen(
    store: Store, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The waybill names no buyer, but reassesses its inventory's tax: the store that accepted the inventory
    # guesses the buyer up front (one read); another store (another API process) reads a second time. Both
    # end with the same ledger and shipment.
    reads = 0
    real_read = Store._read

    async def counting_read(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_read(*args)

    monkeypatch.setattr(Store, "_read", staticmethod(counting_read))
    other = Store(db_pool)
    found = {}
    for order_no, by in (("WBH1", store), ("WBH2", other)):
        await ingest(store, message("CEB621", inventory_head(order_no), lines=inventory_lines("4900")))
        reads = 0
        await ingest(by, message("CEB511", waybill_head(order_no)))
        found[order_no] = reads
        shipment = await store.get_shipment(EBP, order_no)
        assert shipment is not None and "waybill" not in shipment["missing"]
    assert found == {"WBH1": 1, "WBH2": 2}
    book = await ledger(db_pool)
    assert book["WBH1"] == book["WBH2"] > 0


async def test_a_withdrawal_that_frees_quota_reopens_the_buyers_shipment_the_annual_limit_blocked(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    for i, total in enumerate(("4900", "4900", "4900", "4900", "4900", "1340")):  # ¥25,900 with freight
        await ingest(store, message("CEB621", inventory_head(f"Q{i}"), lines=inventory_lines(total)))
    await full_shipment(store, "QB")  # ¥110 more: over the annual limit
    blocked = await store.get_shipment(EBP, "QB")
    assert blocked is not None and blocked["state"] == "mismatched"
    assert "tax.annual_limit_exceeded" in {f["code"] for f in blocked["findings"]}
    since = "SELECT blocked_at FROM tax_ledger WHERE order_no = 'QB'"
    assert await count(db_pool, f"SELECT count(*) FROM ({since}) AS b WHERE blocked_at IS NOT NULL") == 1
    assert (await ledger(db_pool))["QB"] == 0
    async with db_pool.acquire() as conn:  # migration 150 finds the rows blocked before it
        await conn.execute("UPDATE tax_ledger SET blocked_at = NULL")
        await conn.execute(dict(db.migration_files())["150_ledger_blocked.sql"])
        assert await conn.fetchval("SELECT array_agg(order_no) FROM tax_ledger WHERE blocked_at IS NOT NULL") == ["QB"]

    r = await ingest(store, message("CEB621", inventory_head("Q5", appType="3", appTime=_later(T0, 1))))
    assert [s["orderNo"] for s in r.body["shipments"]] == ["Q5"]  # the other shipment is not answered
    reopened = await store.get_shipment(EBP, "QB")
    assert reopened is not None and reopened["state"] == "matched"
    assert [f["code"] for f in reopened["findings"]] == ["tax.tax_total_differs"]  # a warning only
    assert (await ledger(db_pool))["QB"] == Decimal("110")
    assert await count(db_pool, f"SELECT count(*) FROM ({since}) AS b WHERE blocked_at IS NULL") == 1


async def test_a_shipment_reopened_by_quota_given_back_is_reconciled_with_the_other_platforms_of_its_order_no(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """Reopened with no message of its own, the shipment must be reconciled as any: a waybill of its orderNo that
    another platform uses too, and no inventory names, is nobody's (recon.waybill_ambiguous), not its leg."""
    other = "EBP0000002"
    await ingest(store, message("CEB311", order_head("SH1", ebpCode=other, guid="ORD-SH1-2")))
    await ingest(store, message("CEB511", waybill_head("SH1", logisticsNo="LN-OTHER", guid="WB-OTHER")))
    await ingest(store, message("CEB311", order_head("SH1")))
    await ingest(store, message("CEB411", payment_head("SH1")))
    big = inventory_head("BIG1", guid="INV-BIG1", ebpCode="EBP0000009", logisticsNo="LN-BIG1")
    await ingest(store, message("CEB621", big, lines=inventory_lines("25900")))  # nearly all the year's quota
    await ingest(store, message("CEB621", inventory_head("SH1")))  # names a waybill that has not come

    async def sh1() -> tuple[str, list[str], set[str]]:
        found = await store.get_shipment(EBP, "SH1")
        assert found is not None
        return found["state"], sorted(found["missing"]), {f["code"] for f in found["findings"]}

    _, missing, codes = await sh1()
    assert {"tax.annual_limit_exceeded", "recon.waybill_ambiguous"} <= codes and "waybill" in missing
    withdrawal = {**big, "appType": "3", "appTime": _later(T0, 1)}
    await ingest(store, message("CEB621", withdrawal, lines=inventory_lines("25900")))  # reopens SH1
    reopened = await sh1()
    assert reopened[0] == "incomplete" and "tax.annual_limit_exceeded" not in reopened[2]
    # what reconciling SH1 for a message of its own gives
    await ingest(store, message("CEB411", payment_head("SH1", appType="2", appTime=_later(T0, 2))))
    assert reopened == await sh1()
    assert "recon.waybill_ambiguous" in reopened[2] and "waybill" in reopened[1]


async def test_several_inventories_of_one_buyer_in_one_message(store: Store, db_pool: asyncpg.Pool) -> None:
    heads = [inventory_head(f"V{i}", guid=f"INV-V{i}") for i in range(6)]
    msg = message("CEB621", *heads, lines=inventory_lines("4900"))
    await ingest(store, msg)
    used = Decimal(0)
    book = await ledger(db_pool)
    for i, doc in enumerate(msg.documents):
        expected = tax.assess(doc, annual_used=used).counts_toward_annual
        assert book[f"V{i}"] == expected
        used += expected


# --- reads -----------------------------------------------------------------------------------


async def test_get_message_returns_documents_and_xml(store: Store) -> None:
    msg = message("CEB311", order_head("G7"), order_head("G8"))
    await ingest(store, msg, submitter="alice")
    found = await store.get_message(msg.guid)
    assert found is not None
    assert found["raw_xml"] == raw_of(msg).decode()
    assert found["submitter"] == "alice" and found["message_type"] == "CEB311"
    assert [d["keys"] for d in found["documents"]] == [
        {"ebpCode": EBP, "orderNo": "G7"},
        {"ebpCode": EBP, "orderNo": "G8"},
    ]
    assert found["documents"][0]["lines"] == ORDER_LINES
    assert found["documents"][1]["head"]["orderNo"] == "G8"
    assert {EBP, EBC, PAY} <= set(found["documents"][0]["parties"])
    assert found["response"]["guid"] == msg.guid
    json.dumps(found)  # the API serialises it as it is
    assert await store.get_message("no-such-guid") is None


async def test_record_rejection_keeps_a_truncated_copy(store: Store, db_pool: asyncpg.Pool) -> None:
    from gateway.errors import Issue, Layer

    raw = b"<x>" + b"a" * 100_000 + b"\x00\xff"
    issue = Issue(Layer.PARSE, "parse.not_well_formed", "/", "broken")
    for _ in range(2):  # a rejected guid may come again
        await store.record_rejection(
            raw=raw, submitter="bob", guid="G-REJ", message_type="CEB311", issues=[issue], http_status=400
        )
    async with db_pool.acquire() as conn:
        rows = await conn.fetch("SELECT raw, raw_size, issues, http_status FROM rejected_messages")
    assert len(rows) == 2
    assert len(rows[0]["raw"]) == 64 * 1024 and rows[0]["raw_size"] == len(raw)
    assert rows[0]["issues"] == [issue.as_dict()] and rows[0]["http_status"] == 400



async def test_refused_messages_older_than_their_retention_go_oldest_first_a_batch_at_a_time(
    store: Store, db_pool: asyncpg.Pool
) -> None:
    """rejection_retention_days: the refused messages received longer ago go, in batches (a short transaction each,
    a bounded number a pass), the newer stay; the retention's loop does it at once and then every interval, and
    with 0 days keeps everything."""
    from gateway.errors import Issue, Layer
    from gateway.store import prune_rejections
    from gateway.workers import run_retention
    from tests.apiutil import test_settings

    issue = Issue(Layer.PARSE, "parse.not_well_formed", "/", "broken")
    for i in range(7):
        await store.record_rejection(raw=b"<x", submitter="bob", guid=f"G-OLD-{i}", message_type="CEB311",
                                     issues=[issue], http_status=400)  # fmt: skip
    await db_pool.execute("UPDATE rejected_messages SET received_at = now() - make_interval(days => 200 + id::int % 3)")
    for i in range(2):
        await store.record_rejection(raw=b"<x", submitter="bob", guid=f"G-NEW-{i}", message_type="CEB311",
                                     issues=[issue], http_status=400)  # fmt: skip
    assert await prune_rejections(db_pool, older_than_s=180 * 86400, batch=2, max_batches=2) == 4  # a pass's bound
    left = await db_pool.fetchval("SELECT count(*) FROM rejected_messages WHERE guid LIKE 'G-OLD-%'")
    assert left == 3
    stop = asyncio.Event()
    kept = test_settings(rejection_retention_days=0.0)
    kept = dataclasses.replace(kept, realtime=dataclasses.replace(kept.realtime, payment_data_retention_days=0.0))
    await run_retention(db_pool, kept, stop)  # 0: kept for ever, returns at once
    assert await db_pool.fetchval("SELECT count(*) FROM rejected_messages") == 5
    loop = asyncio.create_task(run_retention(db_pool, test_settings(rejection_retention_days=180.0), stop,
                                             interval_s=0.05))  # fmt: skip
    for _ in range(100):
        if await db_pool.fetchval("SELECT count(*) FROM rejected_messages") == 2:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(loop, 5)
    rows = await db_pool.fetch("SELECT guid FROM rejected_messages ORDER BY guid")
    assert [r["guid"] for r in rows] == ["G-NEW-0", "G-NEW-1"]

async def test_list_shipments_filters_and_pages(store: Store) -> None:
    for i in range(7):
        await ingest(store, message("CEB311", order_head(f"L{i:02d}")))
    other = order_head("OTHER", ebpCode="EBP0000002", ebcCode="EBC0000002", payCode="PAY0000002")
    await ingest(store, message("CEB311", other))
    await ingest(store, message("CEB411", payment_head("L00", amountPaid="1")))  # mismatched, updated last

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_shipments(limit=3, cursor=cursor)
        seen += [s["orderNo"] for s in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 8 and len(set(seen)) == 8
    assert seen[0] == "L00"  # newest first

    oldest_first = await store.list_shipments(limit=100, newest_first=False)
    assert [s["orderNo"] for s in oldest_first["items"]] == list(reversed(seen))

    mismatched = await store.list_shipments(state="mismatched")
    assert [s["orderNo"] for s in mismatched["items"]] == ["L00"]
    by_platform = await store.list_shipments(ebp_code="EBP0000002")
    assert [s["orderNo"] for s in by_platform["items"]] == ["OTHER"]
    by_seller = await store.list_shipments(ebc_code="EBC0000002")
    assert [s["orderNo"] for s in by_seller["items"]] == ["OTHER"]
    tenant = await store.list_shipments(parties=["EBC0000002", "UNRELATED"])
    assert [s["orderNo"] for s in tenant["items"]] == ["OTHER"]
    assert (await store.list_shipments(parties=[]))["items"] == []
    assert len((await store.list_shipments(parties=[PAY]))["items"]) == 7

    now = datetime.now(UTC)
    assert len((await store.list_shipments(since=now - timedelta(hours=1)))["items"]) == 8
    assert (await store.list_shipments(since=now + timedelta(hours=1)))["items"] == []
    assert (await store.list_shipments(until=now - timedelta(hours=1)))["items"] == []
    with pytest.raises(ValueError):
        await store.list_shipments(cursor="not-a-cursor")

    # by customs status: every item carries it (nothing forwarded here: pending), and the filter finds the one
    assert {s["customs_status"] for s in oldest_first["items"]} == {"pending"}
    await store.pool.execute(
        "UPDATE shipments SET customs_status = 'rejected', customs_updated_at = now() WHERE order_no = 'L03'"
    )
    rejected = (await store.list_shipments(customs_status="rejected"))["items"]
    assert [(s["orderNo"], s["customs_status"]) for s in rejected] == [("L03", "rejected")]
    assert rejected[0]["customs_updated_at"] is not None
    assert (await store.list_shipments(customs_status="released"))["items"] == []
    assert len((await store.list_shipments(customs_status="pending", parties=[PAY]))["items"]) == 6


# --- plans -----------------------------------------------------------------------------------

# Each statement with parameters good enough for PREPARE/EXECUTE (the plan, not the result, is checked).
_PLAN_CASES = {
    "EXPORT_FLAGS": "ARRAY[1::bigint], ARRAY[1::bigint]",
    "RETURNS_OF": "ARRAY['E'], ARRAY['O']",
    "READ_STATE": "ARRAY['CEB311'], ARRAY['E'], ARRAY['O'], ARRAY['E'], ARRAY['O'], ARRAY['L'], ARRAY['N'], "
    "ARRAY['O'], ARRAY['L'], ARRAY['N'], ARRAY['g'], ARRAY['b'], ARRAY[2025], 1, ARRAY['CEB603'], ARRAY['I'], "
    "ARRAY['E'], ARRAY['O']",
    "SUPERSEDE": "ARRAY[1::bigint]",
    "REFUSED_VERSIONS": "ARRAY[1::bigint]",
    "RESTORE": "ARRAY[1::bigint]",
    "WRITE_RESTORED": "'[]'::jsonb, ARRAY['O'], '[]'::jsonb, ARRAY['E'], ARRAY['O'], ARRAY['b'], ARRAY[2025], "
    "'mismatched'",
    "WRITE_REOPENED": "'[]'::jsonb, '[]'::jsonb, 'mismatched'",
    "WRITE_INGEST": "ARRAY['g'], ARRAY['CEB311'], ARRAY['\\x00'::bytea], ARRAY['<x/>'], ARRAY['xml'], ARRAY['s'], "
    "ARRAY['{}'::jsonb], ARRAY[202], '[]'::jsonb, ARRAY[1::bigint], ARRAY['g'], ARRAY[1], '[]'::jsonb, ARRAY['O'], "
    "'[]'::jsonb, ARRAY['E'], ARRAY['O'], ARRAY['b'], ARRAY[2025], ARRAY[1::bigint], '[]'::jsonb, 'cbec_jobs', "
    "'mismatched'",
    "LIST_REJECTIONS": "9223372036854775807, 51, NULL, NULL, NULL, NULL",
    "LIST_REJECTIONS_OF": "9223372036854775807, 51, NULL, NULL, NULL, NULL, 's'",
    "SELECT_REJECTION": "1",
    "PRUNE_REJECTIONS": "86400, 5000",
    "SELECT_MESSAGE": "'g'",
    "STORED_RESPONSES": "ARRAY[1::bigint]",
    "SELECT_MESSAGE_DOCUMENTS": "1",
    "SELECT_SHIPMENT": "'E', 'O'",
    "SELECT_SHIPMENT_DOCUMENTS": "'E', 'O'",
}
async def _full_scans(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """Scans of each statement's generic plan that probe no index condition (they grow with the table)."""
    return await full_scans(conn, begin=db.BEGIN_PLANNED, module=store_module, cases=_PLAN_CASES)


async def test_every_generic_plan_probes_indexes(store: Store, db_pool: asyncpg.Pool) -> None:
    # Empty tables, then small analysed ones: the statistics under which a long-lived connection may
    # plan a statement once and keep the plan while the tables grow.
    async with db_pool.acquire() as conn:
        assert await _full_scans(conn) == {}
    for i in range(5):
        await full_shipment(store, f"PL{i}")
    async with db_pool.acquire() as conn:
        await conn.execute("ANALYZE")
        assert await _full_scans(conn) == {}


async def test_a_list_by_customs_status_reads_its_index(store: Store, db_pool: asyncpg.Pool) -> None:
    """A rare customs status (rejected) among many shipments: the page is one range of the status's index, in
    both orders, not a walk through every shipment by time."""
    for i in range(5):
        await full_shipment(store, f"CS{i}")
    async with db_pool.acquire() as conn:
        await conn.execute("ANALYZE")
        for newest_first in (True, False):
            sql, _ = list_query({"customs_status": "rejected"}, (datetime.now(UTC), 0), 51, newest_first)
            await conn.execute(db.BEGIN_PLANNED)
            try:
                await conn.execute(f"PREPARE list_check AS {sql}")
                plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE list_check('rejected', now(), 0, 51)"))
                await conn.execute("DEALLOCATE list_check")
            finally:
                await conn.execute("ROLLBACK")
            assert "shipments_customs_updated_idx" in plan and "Index Cond" in plan, plan


async def test_a_batch_skips_messages_locked_by_a_running_batch_and_keeps_their_order() -> None:
    """Scheduling (Store._take): a message sharing a lock with a running batch, or with a message taken into this
    one, stays queued, and so does any later message sharing a lock with it — no message overtakes one it shares
    a lock with; the others go now."""
    store = Store(None, max_batch=10)  # type: ignore[arg-type]  # _take touches no database

    def job(n: int, *locks: tuple[str, str]) -> Any:
        return store_module._Job(None, b"", b"", "t", "xml", n, [], set(locks), None)  # type: ignore[arg-type]

    a, b, c = ("order", "A"), ("order", "B"), ("order", "C")
    jobs = [job(1, a), job(2, b), job(3, b, c), job(4, c), job(5, ("order", "D"))]
    store._queue.extend(jobs)
    with store._holding([job(0, a), job(0, a, b)]):  # batches with A, and A and B, run
        assert [j.arrival for j in store._take()] == [5]  # 3 shares B, 4 shares C with 3: they wait too
        assert [j.arrival for j in store._queue] == [1, 2, 3, 4]
    assert not store._running_locks  # each lock counted as often as it was taken, and let go as often
    # the batches ended: 1 and 2 go; 3 shares B with 2 and waits for a later batch (not a second wave of this
    # one), and 4 shares C with 3
    assert [j.arrival for j in store._take()] == [1, 2]
    assert [j.arrival for j in store._take()] == [3]
    assert [j.arrival for j in store._take()] == [4]
    gone = job(6, a)
    gone.future.cancel()  # the caller went away before it started
    store._queue.append(gone)
    assert store._take() == [] and not store._queue


async def test_another_transaction_starts_only_for_a_full_batch() -> None:
    """Scheduling (the store's Batcher with another_when_full, Store._locks_free): beside a running transaction,
    another one starts only once a full batch waits (the newest of it free to start); fewer wait for the running
    one and go together in its next batch."""
    store = Store(None, max_batch=3)  # type: ignore[arg-type]  # nothing here touches the database
    started: list[int] = []

    def spawn(drain: Any) -> None:
        started.append(len(store._queue))
        drain.close()  # not run: only the decision is looked at

    store._batcher._spawn = spawn

    def job(n: int, *locks: tuple[str, str]) -> Any:
        return store_module._Job(None, b"", b"", "t", "xml", n, [], set(locks), None)  # type: ignore[arg-type]

    running = ("order", "R")
    store._running_locks[running] = 1
    store._batcher._workers = 1  # a transaction runs
    store._queue.extend([job(1, ("order", "A")), job(2, ("order", "B"))])
    store._batcher._start()
    assert started == []  # two of three: they wait for the running transaction
    store._queue.append(job(3, ("order", "C")))
    store._batcher._start()
    assert started == [3]  # a full batch
    store._batcher._workers = 1
    store._queue.append(job(4, running))
    store._batcher._start()
    assert started == [3]  # full, but the newest waits for the running batch's lock


class _CountingPool:
    """The pool as the ingest path uses it (acquire, release), counting the connections taken."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.acquired = 0

    async def acquire(self) -> asyncpg.Connection:
        self.acquired += 1
        return await self.pool.acquire()

    async def release(self, conn: asyncpg.Connection) -> None:
        await self.pool.release(conn)


async def test_a_batch_waiting_begins_in_the_commit_of_the_one_before(db_pool: asyncpg.Pool) -> None:
    """Store._commit: with messages waiting, the next batch's BEGIN and locks go with the COMMIT, on the same
    connection, which goes back to the pool when the last batch commits."""
    pool = _CountingPool(db_pool)
    store = Store(pool, max_batch=4, max_parallel=1)  # type: ignore[arg-type]
    batches: list[int] = []
    real_batch = store._batch

    async def batch(jobs: list[Any], follow: Any) -> Any:
        batches.append(len(jobs))
        return await real_batch(jobs, follow)

    store._batcher._work = batch
    msgs = [message("CEB311", order_head(f"C{i}", buyerIdNumber=f"11010119900101{i:04d}")) for i in range(12)]
    results = await asyncio.gather(*(ingest(store, m) for m in msgs))
    assert [r.http_status for r in results] == [202] * 12 and not any(r.replay for r in results)
    assert pool.acquired == 1  # three batches of four: the second and third began in the commit before them
    assert batches == [4, 4, 4]
    assert not store._begun
    assert db_pool.get_idle_size() == db_pool.get_size()  # every connection is back
    assert await count(db_pool, "SELECT count(*) FROM messages") == 12
    async with db_pool.acquire() as conn:  # no session left in a transaction
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in%'"
        ) == 0


async def test_a_failure_after_the_commit_answers_the_batch_and_the_next_begins_alone(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next batch's BEGIN and locks fail in the round trip of the commit: the committed batch is answered as
    committed (not run again), and the next one begins on its own."""
    real = store_module._begin_and_lock
    calls: list[str] = []

    def failing_once(lock_ids: Any) -> str:
        calls.append("begin")
        sql = real(lock_ids)
        return f"{sql}; SELECT 1/0" if len(calls) == 2 else sql  # the second: the first commit's chained BEGIN

    monkeypatch.setattr(store_module, "_begin_and_lock", failing_once)
    store = Store(db_pool, max_batch=1, max_parallel=1)
    msgs = [message("CEB311", order_head(f"F{i}")) for i in range(3)]
    results = await asyncio.gather(*(ingest(store, m) for m in msgs))
    assert [(r.http_status, r.replay) for r in results] == [(202, False)] * 3
    assert len(calls) == 4  # a; chained for b (failed); b on its own; chained for c
    assert await count(db_pool, "SELECT count(*) FROM messages") == 3
    await store.aclose()
    assert db_pool.get_idle_size() == db_pool.get_size()


async def test_a_failed_commit_with_the_next_batch_chained_fails_only_its_own_message(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COMMIT that fails (here a deferred constraint of this test) leaves nothing begun: its batch runs again one
    message at a time, so only the refused message fails, and the batch taken meanwhile runs on its own."""
    refused = message("CEB311", order_head("R-BAD", buyerIdNumber="110101199001019999"))
    async with db_pool.acquire() as conn:
        await conn.execute(f"""
            CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.guid = '{refused.guid}' THEN RAISE EXCEPTION 'refused at commit'; END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON messages
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();
        """)  # fmt: skip
    store = Store(db_pool, max_batch=3, max_parallel=1)
    commits: list[tuple[int, str]] = []  # (messages of the batch taken next, how the commit ended)
    real_commit = store._commit

    async def commit(conn: asyncpg.Connection, following: list[Any]) -> None:
        try:
            await real_commit(conn, following)
        except asyncpg.PostgresError:
            commits.append((len(following), "failed"))
            raise
        commits.append((len(following), "done"))

    monkeypatch.setattr(store, "_commit", commit)
    msgs = [message("CEB311", order_head(f"R{i}", buyerIdNumber=f"11010119900101{i:04d}")) for i in range(7)]
    msgs[4] = refused  # in the second batch, whose commit carries the third batch's BEGIN
    results = await asyncio.gather(*(ingest(store, m) for m in msgs), return_exceptions=True)
    assert commits[:2] == [(3, "done"), (1, "failed")]
    assert isinstance(results[4], asyncpg.RaiseError)
    assert all(isinstance(r, IngestResult) and r.http_status == 202 for i, r in enumerate(results) if i != 4)
    assert await count(db_pool, "SELECT count(*) FROM messages") == 6
    assert await store.get_message(refused.guid) is None
    await store.aclose()
    assert db_pool.get_idle_size() == db_pool.get_size()


async def test_a_session_ended_at_a_chained_commit_raises_its_own_error(db_pool: asyncpg.Pool) -> None:
    """The server ending the session in the COMMIT that carries the next BEGIN: the caller gets that error, not
    the pool proxy's complaint that the connection was already released (what is_in_transaction raised)."""
    store = Store(db_pool)

    class EndedSession:
        async def execute(self, query: str) -> None:
            raise asyncpg.AdminShutdownError("terminating connection due to administrator command")

        def is_in_transaction(self) -> bool:
            raise asyncpg.InterfaceError("connection has been released back to the pool")

    with pytest.raises(asyncpg.AdminShutdownError):
        await store._commit(EndedSession(), [types.SimpleNamespace(locks={("order", "X")})])  # type: ignore[arg-type, list-item]
    await store.aclose()


async def test_beside_a_second_transaction_no_batch_is_taken_early(db_pool: asyncpg.Pool) -> None:
    """With two drains running, each commits alone and the next batch begins on its own (see Store._batch)."""
    store = Store(db_pool, max_batch=2, max_parallel=2)
    taken_early: list[int] = []
    real_commit = store._commit

    async def commit(conn: asyncpg.Connection, following: list[Any]) -> None:
        taken_early.append(len(following))
        await real_commit(conn, following)

    store._commit = commit  # type: ignore[method-assign]
    # eight messages at once: the first drain takes two, six wait (a full batch), so a second drain starts
    msgs = [message("CEB311", order_head(f"P{i}", buyerIdNumber=f"11010119900102{i:04d}")) for i in range(8)]
    results = await asyncio.gather(*(ingest(store, m) for m in msgs))
    assert [r.http_status for r in results] == [202] * 8
    assert len(taken_early) == 4 and taken_early[:2] == [0, 0]  # both drains ran: neither took early
    await store.aclose()
