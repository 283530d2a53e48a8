"""Read queries of the operators' console and of the /metrics scrape (asyncpg, read-only).

Every statement is a constant here or is assembled here from fixed fragments (filters add only ``$n``
parameters). A shipment's transmissions, their attempts and its receipts are read with gateway.outbox's
own queries (the API's shipment view uses the same).

Indexes the queries rely on: gateway/sql/001_core.sql, 010_queue.sql, 020_forwarding.sql and 030_console.sql.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import cbec_queue

from gateway import csvexport, db, outbox, tax, taxbills
from gateway.messages import BY_CODE, LEGS, Kind
from gateway.receipts import RANK_DECLARING
from gateway.store import (
    UNMATCHED_RECEIPT_COLUMNS,
    decode_cursor,
    deliveries,
    encode_cursor,
    own_parcels,
    parcel_findings,
    unmatched_receipt_dict,
)

#: Reconciliation states in the order the console shows them (gateway.reconcile.ShipmentState).
STATES: tuple[str, ...] = ("mismatched", "incomplete", "matched")

# --- counts -------------------------------------------------------------------------------------

#: Shipments by reconciliation state and customs status, as the triggers of gateway/sql/080_kept_counts.sql keep
#: them (a few rows, whatever the number of shipments).
COUNT_SHIPMENTS = """
SELECT k1 AS state, k2 AS customs_status, sum(n)::bigint AS n
  FROM kept_counts WHERE counter = 'shipments' GROUP BY 1, 2 HAVING sum(n) <> 0
"""


async def shipment_counts(conn: asyncpg.Connection) -> dict[str, Any]:
    by_state = {s: 0 for s in STATES}
    by_customs: dict[str, int] = {}
    for r in await conn.fetch(COUNT_SHIPMENTS):
        by_state[r["state"]] += int(r["n"])
        by_customs[r["customs_status"]] = by_customs.get(r["customs_status"], 0) + int(r["n"])
    return {"total": sum(by_state.values()), "by_state": by_state, "by_customs_status": by_customs}


#: The live feed's change marker: cheap index look-ups, each moves when something new is committed.
MARKER = f"""
SELECT (SELECT max(updated_at) FROM shipments) AS shipments_at,
       (SELECT max(customs_updated_at) FROM shipments) AS customs_at,
       (SELECT max(received_at) FROM receipts
         WHERE message_type IN ('CEB816', 'CEB818') AND document_id IS NOT NULL) AS tax_bill_at,
       (SELECT max(id) FROM messages) AS last_message,
       (SELECT max(id) FROM rejected_messages) AS last_rejection,
       (SELECT max(id) FROM job_attempts) AS last_attempt,
       (SELECT max(received_at) FROM warehouse_events WHERE doc_guid IS NOT NULL) AS warehouse_at,
       (SELECT max(id) FROM warehouse_events WHERE doc_guid IS NULL) AS last_unlinked_callback,
       (SELECT max(id) FROM warehouse_events WHERE status IN ('rejected', 'cancelled')) AS last_refused_callback,
       -- the warehouse cancels (sql/550): any change of one (asked, answered, confirmed, flagged, closed), and those
       -- that need a look, counted through their partial index
       (SELECT max(updated_at) FROM warehouse_cancels) AS warehouse_cancels_at,
       (SELECT count(*) FROM warehouse_cancels AS c WHERE {outbox.CANCEL_OPEN}) AS open_warehouse_cancels,
       (SELECT max(received_at) FROM messages WHERE message_type = 'CEB701') AS summary_at,
       greatest((SELECT max(received_at) FROM receipts WHERE message_type = 'CEB702'),
                (SELECT max(received_at) FROM receipts WHERE message_type = 'CEB792')) AS summary_answer_at,
       (SELECT max(id) FROM realtime_requests) AS last_question,
       (SELECT max(answered_at) FROM realtime_requests) AS last_question_answer,
       -- a question closed leaves them: the few open, counted through their partial index (sql/470)
       (SELECT count(*) FROM realtime_requests WHERE state <> 'uploaded' AND closed_at IS NULL) AS open_questions,
       -- the receipts kept unmatched and open (sql/470): a new one moves the newest, one linked or closed the count
       (SELECT max(id) FROM receipts WHERE outcome = 'unmatched' AND closed_at IS NULL) AS last_unmatched_receipt,
       (SELECT count(*) FROM receipts WHERE outcome = 'unmatched' AND closed_at IS NULL) AS open_unmatched_receipts
"""

#: Shipments whose reconciliation or customs status changed after $1, or whose inventory got a tax bill or a bill's
#: status change (CEB816/818: they move nothing of the shipment row) after $1, or one of whose documents a warehouse
#: reported on (POST /v1/warehouse/callbacks: nor do they) or had the cancel of its order asked, answered, confirmed,
#: flagged or closed (warehouse_cancels) after $1, or one of whose export inventories a summary application stored, a
#: receipt of one (CEB702) or a summary result (CEB792) named by invtNo after $1 (nor do they; a result by its items,
#: matched to an application or not, as the shipment view finds it) (at most $2 of each, oldest first): what the feed
#: says changed, each with the time of its latest change. A bill's document is the inventory, of the shipment's
#: ebpCode and orderNo; one that matched nothing has none; a callback's is the document its reference names. (Through
#: sql/140's, 230's, 300's, 350's and 550's indexes.)
CHANGED = """
WITH bills AS (
    SELECT d.ebp_code, d.order_no, max(b.received_at) AS at
      FROM (SELECT r.document_id, r.received_at FROM receipts AS r
             WHERE r.message_type IN ('CEB816', 'CEB818') AND r.document_id IS NOT NULL AND r.received_at > $1
             ORDER BY r.received_at LIMIT $2) AS b
      JOIN documents AS d ON d.id = b.document_id
     GROUP BY 1, 2
), warehouse AS (
    SELECT d.ebp_code, d.order_no, max(w.received_at) AS at
      FROM ((SELECT e.doc_guid, e.message_type, e.received_at FROM warehouse_events AS e
              WHERE e.doc_guid IS NOT NULL AND e.received_at > $1
              ORDER BY e.received_at LIMIT $2)
            UNION ALL
            (SELECT c.doc_guid, c.message_type, c.updated_at FROM warehouse_cancels AS c
              WHERE c.updated_at > $1 ORDER BY c.updated_at LIMIT $2)) AS w,
           LATERAL (SELECT d.ebp_code, d.order_no FROM documents AS d
                     WHERE d.doc_guid = w.doc_guid AND d.message_type = w.message_type OFFSET 0) AS d
     WHERE d.ebp_code IS NOT NULL
     GROUP BY 1, 2
), summaries AS (
    SELECT v.ebp_code, v.order_no, max(n.at) AS at
      FROM (SELECT l.line ->> 'invtNo' AS no, a.at
              FROM (SELECT m.id, m.received_at AS at FROM messages AS m
                     WHERE m.message_type = 'CEB701' AND m.received_at > $1
                     ORDER BY m.received_at LIMIT $2) AS a
              JOIN documents AS d ON d.message_id = a.id,
                   jsonb_array_elements(d.lines) AS l(line)
            UNION ALL
            SELECT l.line ->> 'invtNo', r.received_at
              FROM (SELECT r.message_type, r.document_id, r.keys, r.received_at FROM receipts AS r
                     WHERE r.message_type IN ('CEB702', 'CEB792') AND r.received_at > $1
                     ORDER BY r.received_at LIMIT $2) AS r
              LEFT JOIN documents AS d ON r.message_type = 'CEB702' AND d.id = r.document_id,
                   -- a result's items, an answered application's lines (each names an invtNo)
                   jsonb_array_elements(
                       CASE WHEN r.message_type = 'CEB792' AND jsonb_typeof(r.keys -> 'items') = 'array'
                            THEN r.keys -> 'items' ELSE coalesce(d.lines, '[]') END) AS l(line)
           ) AS n,
           LATERAL (SELECT v.ebp_code, v.order_no FROM documents AS v
                     WHERE v.invt_no = n.no AND v.message_type = 'CEB603' OFFSET 0) AS v
     WHERE n.no IS NOT NULL
     GROUP BY 1, 2
)
SELECT s.ebp_code, s.order_no, s.state, greatest(s.updated_at, s.customs_updated_at, b.at, w.at, m.at) AS at
  FROM shipments AS s LEFT JOIN bills AS b ON b.ebp_code = s.ebp_code AND b.order_no = s.order_no
                      LEFT JOIN warehouse AS w ON w.ebp_code = s.ebp_code AND w.order_no = s.order_no
                      LEFT JOIN summaries AS m ON m.ebp_code = s.ebp_code AND m.order_no = s.order_no
 WHERE s.id IN ((SELECT u.id FROM shipments AS u WHERE u.updated_at > $1 ORDER BY u.updated_at LIMIT $2)
                UNION ALL
                (SELECT c.id FROM shipments AS c WHERE c.customs_updated_at > $1 ORDER BY c.customs_updated_at
                 LIMIT $2)
                UNION ALL
                (SELECT t.id FROM bills JOIN shipments AS t ON t.ebp_code = bills.ebp_code
                                                            AND t.order_no = bills.order_no)
                UNION ALL
                (SELECT t.id FROM warehouse JOIN shipments AS t ON t.ebp_code = warehouse.ebp_code
                                                               AND t.order_no = warehouse.order_no)
                UNION ALL
                (SELECT t.id FROM summaries JOIN shipments AS t ON t.ebp_code = summaries.ebp_code
                                                               AND t.order_no = summaries.order_no))
 ORDER BY at
"""

#: When the newest dead letter died: with their count, what tells the page its list is stale (one replayed
#: and another dead in the same moment leave the count as it was).
DEAD_NEWEST = "SELECT max(finished_at) FROM jobs WHERE state = 'dead'"


# --- the shipment list (mismatches) ---------------------------------------------------------------

_LIST_SELECT = """
SELECT s.id, s.ebp_code, s.order_no, s.ebc_code, s.state, s.missing, s.findings, s.mode, s.buyer_id_number,
       s.flow, s.customs_status, s.created_at, s.updated_at,
       (SELECT d.head->>'buyerName' FROM documents AS d
         WHERE d.ebp_code = s.ebp_code AND d.order_no = s.order_no AND d.kind IN ('order', 'inventory')
           AND d.is_current AND NOT d.withdrawn
         ORDER BY d.kind DESC LIMIT 1) AS buyer_name
  FROM shipments AS s
"""

#: filter name -> condition (``{}`` is the parameter number).
LIST_FILTERS: dict[str, str] = {
    "state": "s.state = ${}",
    "customs_status": "s.customs_status = ${}",
    "flow": "s.flow = ${}",
    "order_no": "s.order_no = ${}",
    # the shipments listing a document with that logisticsNo (SHIPMENT_DOCUMENTS): an inventory's own; a waybill's
    # orderNo's, unless another platform uses that orderNo too (then only an inventory naming the waybill says whose)
    "logistics_no": (
        "((s.ebp_code, s.order_no) IN (SELECT d.ebp_code, d.order_no FROM documents AS d"
        " WHERE d.logistics_no = ${0} AND d.kind = 'inventory')"
        " OR (s.flow = 'import'"
        " AND s.order_no IN (SELECT d.order_no FROM documents AS d WHERE d.logistics_no = ${0} AND d.kind = 'waybill')"
        f" AND (s.ebp_code = '' OR NOT {outbox.other_platform('s.ebp_code', 's.order_no')})))"
    ),
    # the check character X is written either way
    "buyer_id_number": "s.buyer_id_number IN (${0}, lower(${0}))",
    # any enterprise of the shipment: platform, e-commerce enterprise, payment, logistics, agent ...
    "enterprise": "s.parties @> ARRAY[${}]::text[]",
    "since": "s.updated_at >= ${}",
    "until": "s.updated_at < ${}",
}


@dataclass
class ListQuery:
    state: str | None = "mismatched"  # None: every state
    customs_status: str | None = None  # gateway.forward.SHIPMENT_CUSTOMS_STATUSES; None: any
    flow: str | None = None  # "import" | "export"; None: both
    order_no: str | None = None
    logistics_no: str | None = None
    buyer_id_number: str | None = None
    enterprise: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: str | None = None
    filters: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.buyer_id_number:
            self.buyer_id_number = self.buyer_id_number.upper()
        for name in LIST_FILTERS:
            value = getattr(self, name)
            if value is not None and value != "":
                self.filters[name] = value


def list_sql(q: ListQuery) -> tuple[str, list[Any]]:
    """The list statement and its arguments: newest first, keyset-paginated on (updated_at, id)."""
    clauses: list[str] = []
    args: list[Any] = []
    for name, value in q.filters.items():
        args.append(value)
        template = LIST_FILTERS[name]
        n = len(args)
        clauses.append(template.format(n) if "{}" in template else template.replace("{0}", str(n)))
    if q.cursor:
        ts, row_id = decode_cursor(q.cursor)
        args.extend((ts, row_id))
        clauses.append(f"(s.updated_at, s.id) < (${len(args) - 1}, ${len(args)})")
    args.append(q.limit + 1)
    sql = (
        _LIST_SELECT
        + (" WHERE " + " AND ".join(clauses) if clauses else "")
        + f" ORDER BY s.updated_at DESC, s.id DESC LIMIT ${len(args)}"
    )
    return sql, args


def mask_id_number(value: str | None) -> str | None:
    """An ID number for lists (the shipment page shows it whole): of an 18-character ID card number the region and
    the last four, of anything shorter (passports, Hong Kong IDs, mistakes) a quarter at the end — never whole."""
    if not value:
        return value
    if len(value) >= 14:
        return value[:6] + "*" * (len(value) - 10) + value[-4:]
    kept = len(value) // 4
    return "*" * (len(value) - kept) + value[len(value) - kept :]


def mask_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings as a list shows them: the ID numbers they compare (buyerIdNumber, payerIdNumber ...) masked in both
    values and in the message that quotes them."""
    out = []
    for f in findings:
        f = dict(f)
        message = f.get("message") or ""
        for side in ("left", "right"):
            value = (f.get(side) or {}).get("value")
            where = f"{f.get('field') or ''} {(f.get(side) or {}).get('path') or ''}"
            if isinstance(value, str) and value and "IdNumber" in where:
                masked = mask_id_number(value)
                f[side] = {**f[side], "value": masked}
                message = message.replace(value, masked or "")
        f["message"] = message
        out.append(f)
    return out


def shipment_row(r: asyncpg.Record) -> dict[str, Any]:
    out = {
        "ebpCode": r["ebp_code"],
        "orderNo": r["order_no"],
        "ebcCode": r["ebc_code"],
        "state": r["state"],
        "missing": list(r["missing"]),
        "findings": db.json_value(r["findings"]),
        "mode": r["mode"],
        "flow": r["flow"],
        "customsStatus": r["customs_status"],
        "buyerIdNumber": r["buyer_id_number"],
        "created_at": r["created_at"],
        "updated_at": r["updated_at"],
    }
    if "buyer_name" in r:
        out["buyerName"] = r["buyer_name"]
    return out


async def list_shipments(conn: asyncpg.Connection, q: ListQuery) -> dict[str, Any]:
    sql, args = list_sql(q)
    rows = await conn.fetch(sql, *args)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    items = []
    for r in rows:
        item = shipment_row(r)
        item["buyerIdNumber"] = mask_id_number(item["buyerIdNumber"])
        item["findings"] = mask_findings(item["findings"] or [])
        items.append(item)
    return {
        "items": items,
        "next_cursor": encode_cursor(rows[-1]["updated_at"], rows[-1]["id"]) if more else None,
    }



#: The list as a CSV download (the console's "CSV" link): what the list shows of each shipment, ID numbers masked as
#: there, the findings as "code: message", one after the other.
CSV_COLUMNS = ("updated_at", "ebpCode", "orderNo", "ebcCode", "flow", "mode", "state", "missing", "customsStatus",
               "buyerName", "buyerIdNumber", "findings")  # fmt: skip


def csv_row(item: dict[str, Any]) -> list[str]:
    """A listed shipment (list_shipments' item) as the cells of CSV_COLUMNS (gateway.csvexport)."""
    return csvexport.shipment_row(item, CSV_COLUMNS)

# --- one shipment ------------------------------------------------------------------------------------

SHIPMENT = "SELECT * FROM shipments WHERE ebp_code = $1 AND order_no = $2"

#: Every version of the shipment's documents with the message that brought each ($1 ebpCode, $2 orderNo):
#: order, payment, inventory by the order's key; waybills by any inventory's waybill key, and by that orderNo unless
#: another platform uses it too (as gateway.store.SELECT_SHIPMENT_DOCUMENTS); receipts stored as documents (kind
#: 'receipt') that name the order's key (CEB312) or a waybill's (CEB512/514); and the supervision site's deliveries
#: (入库明细单 CEB711) whose list names one of its import waybills (the parcel arrived at the site), as the API's view.
SHIPMENT_DOCUMENTS = f"""
WITH own AS MATERIALIZED (
    SELECT d.id, d.kind, d.message_type, d.logistics_code, d.logistics_no FROM documents AS d
     WHERE d.ebp_code = $1 AND d.order_no = $2 AND d.kind IN ('order', 'payment', 'inventory', 'receipt')
), waybills AS MATERIALIZED (
    SELECT d.id, d.message_type, d.logistics_code, d.logistics_no FROM documents AS d
     WHERE d.kind = 'waybill' AND d.order_no = $2 AND ($1 = '' OR NOT {outbox.other_platform("$1", "$2")})
       AND NOT EXISTS (SELECT 1 FROM shipments AS x WHERE x.ebp_code = $1 AND x.order_no = $2 AND x.flow <> 'import')
    UNION
    SELECT d.id, d.message_type, d.logistics_code, d.logistics_no
      FROM (SELECT DISTINCT logistics_code, logistics_no, message_type FROM own WHERE kind = 'inventory') AS w
      JOIN documents AS d ON d.logistics_code = w.logistics_code AND d.logistics_no = w.logistics_no
     WHERE d.kind = 'waybill' AND d.message_type = {outbox.waybill_type_of("w.message_type")}
), ids AS (
    SELECT id FROM own
    UNION
    SELECT id FROM waybills
    UNION
    SELECT d.id
      FROM (SELECT DISTINCT logistics_code, logistics_no FROM waybills) AS w
      JOIN documents AS d ON d.logistics_code = w.logistics_code AND d.logistics_no = w.logistics_no
     WHERE d.kind = 'receipt'
    UNION
    SELECT t.id
      FROM (SELECT logistics_code, logistics_no FROM waybills WHERE message_type = '{LEGS["import"][Kind.WAYBILL]}'
            UNION
            SELECT logistics_code, logistics_no FROM own
             WHERE kind = 'inventory' AND message_type = '{LEGS["import"][Kind.INVENTORY]}') AS w,
           LATERAL (SELECT d.id, d.logistics_code FROM documents AS d
                     WHERE d.kind = '{Kind.DELIVERY.value}'
                       AND d.lines @> jsonb_build_array(jsonb_build_object('logisticsNo', w.logistics_no))
                    OFFSET 0) AS t
     WHERE t.logistics_code = w.logistics_code
)
SELECT d.id, d.message_id, d.doc_index, d.doc_guid, d.kind, d.message_type, d.key1, d.key2, d.app_type,
       d.app_time, d.app_status, d.path, d.head, d.lines, d.is_current, d.withdrawn, d.superseded_by,
       d.forward_state, d.sent_at, d.customs_status, d.customs_info, d.customs_return_time, d.receipt_overdue,
       d.pre_no, d.invt_no, m.guid AS message_guid, m.received_at, m.submitter, m.source,
       {outbox.key_withdrawn("d")} AS key_withdrawn,
       CASE WHEN d.message_type = 'CEB621' THEN {outbox.concluded_returns("d")} END AS concluded_returns
  FROM ids JOIN documents AS d ON d.id = ids.id JOIN messages AS m ON m.id = d.message_id
 ORDER BY m.received_at, d.id
"""


def _short(value: Any, limit: int = 240) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return f"<{len(value)} characters>"
    return value


def small_payload(payload: Any) -> dict[str, Any]:
    """A job payload for the page: short values kept, the message XML and other bulk summarised."""
    payload = db.json_value(payload)
    if not isinstance(payload, dict):
        return {"payload": _short(json.dumps(payload, ensure_ascii=False))}
    return {k: _short(v) if not isinstance(v, dict | list) else _short(json.dumps(v, ensure_ascii=False))
            for k, v in payload.items()}  # fmt: skip


async def job_history(conn: asyncpg.Connection, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Attempt history of jobs, in the order things happened (gateway.outbox.ATTEMPTS)."""
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        for h in await conn.fetch(outbox.ATTEMPTS, list(ids)):
            entry = dict(h)
            out[entry.pop("job_id")].append(entry)
    return out


async def shipment_detail(
    conn: asyncpg.Connection, ebp_code: str, order_no: str, rates: tax.TaxRates = tax.DEFAULT_RATES
) -> dict[str, Any] | None:
    """The shipment with every version of its documents (each with its forward state and customs status),
    the jobs that transmitted its messages (with their attempts), the receipts of its documents, the warehouse orders
    made from them with the warehouses' callbacks (gateway.outbox.warehouse_orders), and customs' tax
    bills beside the gateway's estimate at ``rates`` (gateway.taxbills.shipment_bills, as the API's shipment shows
    them: a bill's ``tax.bill_differs`` findings join the shipment's)."""
    s = await conn.fetchrow(SHIPMENT, ebp_code, order_no)
    if s is None:
        return None
    out = shipment_row(s)
    out["customsInfo"] = s["customs_info"]
    docs = [dict(r) for r in await conn.fetch(SHIPMENT_DOCUMENTS, ebp_code, order_no)]
    for d in docs:
        d["head"], d["lines"] = db.json_value(d["head"]), db.json_value(d["lines"])
    found = parcel_findings([{**d, "keys": {"key1": d["key1"], "key2": d["key2"]}} for d in docs])
    out["documents"] = docs = own_parcels(docs)
    held = sorted({d["message_id"] for d in docs if d["forward_state"] == "held"})
    waits = await conn.fetch(outbox.HOLD_REASONS, held, RANK_DECLARING) if held else []
    for d in docs:
        if d["forward_state"] == "held":
            d["held_until"] = outbox.held_until(d, [w for w in waits if w["message_id"] == d["message_id"]])
        if d["forward_state"] == "unsent":
            d["unsent"] = outbox.unsent(d["withdrawn"], d["key_withdrawn"])
        del d["key_withdrawn"]
    jobs = [dict(r) for r in await conn.fetch(outbox.TRANSMISSIONS, sorted({d["message_guid"] for d in docs}))]
    history = await job_history(conn, [j["id"] for j in jobs])
    for j in jobs:
        j["history"] = history[j["id"]]
    out["transmissions"] = jobs
    receipts = await conn.fetch(outbox.RECEIPTS_OF, [d["id"] for d in docs], sorted({d["message_id"] for d in docs}))
    out["receipts"] = [{**r, "keys": db.json_value(r["keys"])} for r in receipts]
    guids = sorted({d["doc_guid"] for d in docs})
    orders = outbox.warehouse_orders(await conn.fetch(outbox.WAREHOUSE_EVENTS_OF, guids),
                                     await conn.fetch(outbox.WAREHOUSE_CANCELS_OF, guids))  # fmt: skip
    out["warehouse_orders"] = [o for made in orders.values() for o in made]
    for d in docs:  # an inventory's returns customs concluded: for its bills' estimate, not shown with the document
        d["concluded_returns"] = db.json_value(d["concluded_returns"])
    out["tax_bills"], differs = taxbills.shipment_bills(docs, out["receipts"], rates)
    for d in docs:
        del d["concluded_returns"]
    out["findings"] = [*(out["findings"] or []), *(f.as_dict() for f in (*found, *differs))]
    if out.get("flow") == "export":
        out["summary"] = await outbox.inventory_summary(conn, docs, out.get("customsStatus") == "released")
    return out


RAW_MESSAGE = "SELECT guid, message_type, received_at, submitter, raw_xml FROM messages WHERE guid = $1"


# --- queue ----------------------------------------------------------------------------------------------


async def queue_health(
    conn: asyncpg.Connection, *, endpoints: Iterable[str] = (), webhook_endpoints: Sequence[str] = ()
) -> dict[str, Any]:
    """Per endpoint depth, oldest age and circuit (cbec_queue.stats; ``endpoints``, the configured ones, are
    listed even when idle) and for the ``webhook_endpoints`` the sellers paused, how many dead letters there are and
    the newest's time (the letters themselves page by page: dead_page), and the documents sent to customs awaiting a
    receipt."""
    per_endpoint = await queue_stats(conn, endpoints, webhook_endpoints)
    return {
        "endpoints": per_endpoint,
        "dead_total": sum(int(e.get("dead") or 0) for e in per_endpoint),
        "dead_newest": await conn.fetchval(DEAD_NEWEST),
        "receipts_awaited": await receipts_awaited(conn),
    }


#: How many dead letters there are ($1 one endpoint's, NULL every one's): the pages' whole, of GET /v1/queue/dead and
#: the console's (few: jobs_dead_idx).
DEAD_TOTAL = "SELECT count(*) FROM jobs WHERE state = 'dead' AND ($1::text IS NULL OR endpoint = $1)"

#: The shipments of jobs ($1 their ids): those of the documents of the message a transmission carries (its payload's
#: guid, as gateway.outbox.TRANSMISSIONS finds a shipment's), and the one a 179 upload names (ebpCode, orderNo); only
#: shipments that exist (a waybill names its orderNo, not always a shipment of it).
JOB_SHIPMENTS = """
SELECT DISTINCT k.job_id, s.ebp_code, s.order_no
  FROM (SELECT j.id AS job_id, coalesce(d.ebp_code, '') AS ebp_code, d.order_no
          FROM jobs AS j JOIN messages AS m ON m.guid = j.payload ->> 'guid'
          JOIN documents AS d ON d.message_id = m.id
         WHERE j.id = ANY ($1::bigint[]) AND j.payload ? 'guid' AND d.order_no IS NOT NULL
        UNION ALL
        SELECT j.id, j.payload ->> 'ebpCode', j.payload ->> 'orderNo'
          FROM jobs AS j WHERE j.id = ANY ($1::bigint[]) AND j.payload ? 'ebpCode' AND j.payload ? 'orderNo') AS k
  JOIN shipments AS s ON s.ebp_code = k.ebp_code AND s.order_no = k.order_no
 ORDER BY 1, 2, 3
"""


async def dead_page(
    conn: asyncpg.Connection, *, endpoint: str | None = None, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """A page of the dead letters (of one ``endpoint``, or every one's), newest first, as GET /v1/queue/dead pages
    them (``offset``): ``items`` (each with its history, its payload's bulk summarised and ``shipments``, the
    shipments it concerns: JOB_SHIPMENTS), ``total``, ``next_offset`` (None on the last page)."""
    dead = await cbec_queue.dead_letters(conn, endpoint=endpoint, limit=limit + 1, offset=offset)
    more = len(dead) > limit
    dead = dead[:limit]
    shipments: dict[int, list[dict[str, str]]] = {job["id"]: [] for job in dead}
    for r in await conn.fetch(JOB_SHIPMENTS, list(shipments)):
        shipments[r["job_id"]].append({"ebpCode": r["ebp_code"], "orderNo": r["order_no"]})
    for job in dead:
        job["payload"] = small_payload(job["payload"])
        job["shipments"] = shipments[job["id"]]
    return {"items": dead, "total": await conn.fetchval(DEAD_TOTAL, endpoint),
            "next_offset": offset + limit if more else None}  # fmt: skip


async def queue_stats(
    conn: asyncpg.Connection, endpoints: Iterable[str], webhook_endpoints: Sequence[str]
) -> list[dict[str, Any]]:
    """cbec_queue.stats, a webhook endpoint's with ``paused_sellers`` (webhook_sellers_paused): GET /v1/queue's and
    the console's."""
    per_endpoint = await cbec_queue.stats(conn, endpoints=endpoints)
    paused = await webhook_sellers_paused(conn, webhook_endpoints)
    for e in per_endpoint:  # the sellers whose URL's own breaker holds their events back
        if e["endpoint"] in webhook_endpoints:
            e["paused_sellers"] = paused.get(e["endpoint"], [])
    return per_endpoint


#: The sellers whose webhooks are paused ($1 the webhook endpoints): their events put back untried because the
#: seller's URL failed again and again (adapters/webhook.py: its breaker open; the queue's Deferred, whose jobs' last
#: error begins with cbec_queue.DEFERRED_PREFIX), with how many wait. Read off the queue, so a dedicated cbec worker's
#: pauses show as this process's do.
WEBHOOK_SELLERS_PAUSED = f"""
SELECT endpoint, payload ->> 'seller' AS seller, count(*)::bigint AS waiting
  FROM jobs
 WHERE endpoint = ANY ($1::text[]) AND state = 'queued' AND kind = 'webhook'
   AND starts_with(last_error, '{cbec_queue.DEFERRED_PREFIX}')
 GROUP BY endpoint, seller
 ORDER BY endpoint, seller
"""


async def webhook_sellers_paused(conn: asyncpg.Connection, endpoints: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Per webhook endpoint, the sellers paused and how many of their events wait (WEBHOOK_SELLERS_PAUSED)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in await conn.fetch(WEBHOOK_SELLERS_PAUSED, list(endpoints)) if endpoints else []:
        out.setdefault(r["endpoint"], []).append({"seller": r["seller"], "waiting": r["waiting"]})
    return out


async def receipts_awaited(conn: asyncpg.Connection) -> dict[str, Any]:
    """``count``, ``oldest_sent_at`` and ``oldest_wait_s`` of the documents awaiting a customs receipt
    (RECEIPTS_AWAITED): the console, ``GET /v1/queue`` and ``/metrics`` show these."""
    r = await conn.fetchrow(RECEIPTS_AWAITED)
    return {"count": r["n"], "oldest_sent_at": r["oldest_sent_at"], "oldest_wait_s": r["oldest_s"]}


#: A page of the documents awaiting a customs receipt, the longest waiting first (since their first send no receipt
#: answered): $1 of them after ($2 awaited_since, $3 document id; NULL: from the first), with what finds them — their
#: message, key and shipment — and whether the watchdog found the receipt overdue (and re-sent them, repushes).
AWAITED_DOCUMENTS = """
SELECT a.document_id, a.awaited_since, a.sent_at, EXTRACT(EPOCH FROM now() - a.awaited_since)::float8 AS wait_s,
       d.message_type, d.kind, d.key1, d.key2, d.ebp_code, d.order_no, d.logistics_no, d.receipt_overdue, d.repushes,
       m.guid AS message_guid
  FROM (SELECT document_id, awaited_since, sent_at FROM receipts_awaited
         WHERE $2::timestamptz IS NULL OR (awaited_since, document_id) > ($2::timestamptz, $3::bigint)
         ORDER BY awaited_since, document_id LIMIT $1) AS a
  JOIN documents AS d ON d.id = a.document_id
  JOIN messages AS m ON m.id = d.message_id
 ORDER BY a.awaited_since, a.document_id
"""


async def awaited_documents(conn: asyncpg.Connection, *, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
    """A page of the documents sent to customs still awaiting any receipt (AWAITED_DOCUMENTS), the longest waiting
    first, for the operators to look into (GET /v1/queue/awaited and the console's queue panel): ``items`` (each with
    its message guid, type, key fields, shipment — ebpCode and orderNo, when it has one —, first_sent_at (the first
    send no receipt answered), sent_at (the latest), wait_s (since the first), receipt_overdue, repushes) and
    ``next_cursor`` (None on the last page). A cursor not of this list: ValueError."""
    after = decode_cursor(cursor) if cursor else (None, None)
    rows = await conn.fetch(AWAITED_DOCUMENTS, limit + 1, *after)
    items = []
    for r in rows[:limit]:
        mtype = BY_CODE.get(r["message_type"])
        keys = dict(zip(mtype.keys, mtype.key_values((r["key1"], r["key2"])), strict=False)) if mtype else {}
        items.append({"document_id": r["document_id"], "message_guid": r["message_guid"],
                      "message_type": r["message_type"], "kind": r["kind"], "keys": keys, "ebpCode": r["ebp_code"],
                      "orderNo": r["order_no"], "logisticsNo": r["logistics_no"],
                      "first_sent_at": r["awaited_since"], "sent_at": r["sent_at"], "wait_s": r["wait_s"],
                      "receipt_overdue": r["receipt_overdue"], "repushes": r["repushes"]})
    last = rows[limit - 1] if len(rows) > limit else None
    return {"items": items, "next_cursor": encode_cursor(last["awaited_since"], last["document_id"]) if last else None}


# --- receipts kept unmatched ----------------------------------------------------------------------------

#: The receipts kept unmatched and not closed (sql/470's index of the open ones), by message type: /metrics'
#: cbec_receipts_unmatched. A closed one (gateway.store.close_unmatched_receipt) needs no look, and counts no more.
UNMATCHED_RECEIPTS_BY_TYPE = """
SELECT message_type, count(*)::bigint AS n FROM receipts
 WHERE outcome = 'unmatched' AND closed_at IS NULL GROUP BY message_type
"""

#: A page of them, newest first: $2 of them with an id below $1, of the message type $3 (NULL: every type), through
#: the index of the open ones or of the closed ones (``{which}``).
_UNMATCHED_RECEIPTS = f"""
SELECT {UNMATCHED_RECEIPT_COLUMNS}
  FROM receipts
 WHERE outcome = 'unmatched' AND {{which}} AND id < $1 AND ($3::text IS NULL OR message_type = $3)
 ORDER BY id DESC LIMIT $2
"""
#: The states GET /v1/receipts/unmatched lists (``state=``): the statement of each.
UNMATCHED_RECEIPTS = {
    "open": _UNMATCHED_RECEIPTS.format(which="closed_at IS NULL"),
    "closed": _UNMATCHED_RECEIPTS.format(which="closed_at IS NOT NULL"),
    # both, each through its own index (one predicate of both would read the whole table)
    "any": f"""
SELECT * FROM (({_UNMATCHED_RECEIPTS.format(which="closed_at IS NULL")})
               UNION ALL
               ({_UNMATCHED_RECEIPTS.format(which="closed_at IS NOT NULL")})) AS r
 ORDER BY id DESC LIMIT $2
""",
}


async def unmatched_receipts(
    conn: asyncpg.Connection,
    *,
    state: str = "open",
    message_type: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """A page of the receipts kept unmatched, newest first (GET /v1/receipts/unmatched, the console's panel): customs'
    word on a document the gateway could not find, each as stored (its keys, status, time and returnInfo, the
    CopMsgId and source it came by) with who closed it, when and why; ``state`` ``open`` (not closed: those that need
    a look), ``closed`` or ``any``; ``next_cursor`` None on the last page. A state or cursor not of this list:
    ValueError."""
    if state not in UNMATCHED_RECEIPTS:
        raise ValueError(f"state must be one of {', '.join(UNMATCHED_RECEIPTS)}, found {state!r}")
    before = db.row_id(cursor) if cursor else db.MAX_BIGINT
    if before is None:
        raise ValueError("not a cursor of GET /v1/receipts/unmatched")
    rows = await conn.fetch(UNMATCHED_RECEIPTS[state], before, limit + 1, message_type)
    items = [unmatched_receipt_dict(r) for r in rows[:limit]]
    return {"items": items, "next_cursor": str(rows[limit - 1]["id"]) if len(rows) > limit else None}


# --- warehouse cancels that need a look -----------------------------------------------------------------

#: The warehouse cancels that need a look (sql/550's index of the open ones), by the gravest reason: /metrics'
#: cbec_warehouse_cancels_open. One confirmed by the warehouse, or closed by an operator, counts no more.
OPEN_WAREHOUSE_CANCELS = f"""
SELECT CASE WHEN c.progress_at IS NOT NULL THEN 'progress_after_cancel'
            WHEN c.refused_at IS NOT NULL THEN 'refused' ELSE 'unconfirmed' END AS why, count(*)::bigint AS n
  FROM warehouse_cancels AS c WHERE {outbox.CANCEL_OPEN} GROUP BY 1
"""


async def read_warehouse_cancels(
    conn: asyncpg.Connection, *, state: str = "open", limit: int = 50, cursor: str | None = None
) -> dict[str, Any]:
    """A page of the cancels the gateway asked of warehouses, newest first (GET /v1/warehouse/cancels, the console's
    warehouse panel), each as gateway.outbox.warehouse_cancel_item gives it, and one of an inbound order made from a
    site's delivery with that ``delivery`` (gateway.store.deliveries); ``state`` ``open`` (those that need a look:
    the warehouse went on with the order after it, refused it, or did not confirm it in time — neither confirmed nor
    closed), ``closed`` or ``any``; ``next_cursor`` None on the last page. A state or cursor not of this list:
    ValueError."""
    if state not in outbox.WAREHOUSE_CANCELS:
        raise ValueError(f"state must be one of {', '.join(outbox.WAREHOUSE_CANCELS)}, found {state!r}")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    before = db.row_id(cursor) if cursor else db.MAX_BIGINT
    if before is None:
        raise ValueError("not a cursor of GET /v1/warehouse/cancels")
    rows = await conn.fetch(outbox.WAREHOUSE_CANCELS[state], before, limit + 1)
    items = [outbox.warehouse_cancel_item(r) for r in rows[:limit]]
    await with_deliveries(conn, items, lambda i: i["doc_guid"] if i["message_type"] == "CEB711" else None)
    return {"items": items, "next_cursor": str(rows[limit - 1]["id"]) if len(rows) > limit else None}


async def with_deliveries(
    conn: asyncpg.Connection, items: list[dict[str, Any]], doc_guid: Callable[[dict[str, Any]], str | None]
) -> None:
    """Add to each of a list's ``items`` made of a site's delivery (CEB711) — ``doc_guid`` of an item: the delivery's
    document, else None — that ``delivery`` (gateway.store.deliveries: its message, B/L, parcels' shipments), which
    the console links to; None to the others. A warehouse's word on an inbound order names no shipment of its own."""
    guids = {g for i in items if (g := doc_guid(i)) is not None}
    found = await deliveries(conn, guids) if guids else {}
    for i in items:
        g = doc_guid(i)
        i["delivery"] = found.get(g) if g is not None else None


def callback_delivery(item: dict[str, Any]) -> str | None:
    """The doc guid of the site's delivery (CEB711) a warehouse callback (as read_warehouse_callbacks lists it) was
    placed on: its order an inbound one made from that delivery; None for any other."""
    ref = item.get("reference") or {}
    if item.get("linked") and ref.get("messageType") == "CEB711" and isinstance(ref.get("guid"), str):
        return str(ref["guid"])
    return None


# --- series for the charts --------------------------------------------------------------------------------

#: Per minute since $1: accepted messages, rejected messages, successful transmissions to the endpoints
#: matching the LIKE pattern $2.
SERIES = """
SELECT 'accepted' AS series, date_trunc('minute', received_at) AS t, count(*)::bigint AS n
  FROM messages WHERE received_at >= $1 GROUP BY 2
UNION ALL
SELECT 'rejected', date_trunc('minute', received_at), count(*)
  FROM rejected_messages WHERE received_at >= $1 GROUP BY 2
UNION ALL
SELECT 'forwarded', date_trunc('minute', a.finished_at), count(*)
  FROM job_attempts AS a JOIN jobs AS j ON j.id = a.job_id
 WHERE a.outcome = 'ok' AND a.finished_at >= $1 AND j.endpoint LIKE $2 GROUP BY 2
"""


#: Per minute since $1: median and 95th percentile of receipt received − declared message accepted (seconds).
RECEIPT_LATENCY_SERIES = """
SELECT date_trunc('minute', r.received_at) AS t,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM r.received_at - m.received_at)) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM r.received_at - m.received_at)) AS p95
  FROM receipts AS r JOIN messages AS m ON m.id = r.message_id
 WHERE r.received_at >= $1 GROUP BY 1
"""

#: Over the last $1 seconds: count and quantiles (0.5, 0.9, 0.99) of that receipt latency in seconds.
RECEIPT_LATENCY_WINDOW = """
SELECT count(*)::bigint AS n,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM r.received_at - m.received_at))
           AS q
  FROM receipts AS r JOIN messages AS m ON m.id = r.message_id
 WHERE r.received_at >= now() - make_interval(secs => $1)
"""


#: Documents sent to customs and still without any receipt, when the oldest of them was sent and how long it has
#: waited (seconds; 0 when none): the receipt watchdog's list (sql/100_receipts_awaited.sql), its min through the
#: sent_at index.
RECEIPTS_AWAITED = """
SELECT n, oldest_sent_at, coalesce(EXTRACT(EPOCH FROM now() - oldest_sent_at), 0)::float8 AS oldest_s
  FROM (SELECT (SELECT count(*) FROM receipts_awaited)::bigint AS n,
               (SELECT min(awaited_since) FROM receipts_awaited) AS oldest_sent_at) AS x
"""


#: Over the last $1 seconds, per endpoint: successful attempts, quantiles (0.5, 0.9, 0.99) of the forward
#: latency (job created → attempt finished ok, seconds) and of the attempt's own duration (ms).
FORWARD_LATENCY = """
SELECT j.endpoint, count(*)::bigint AS n,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM a.finished_at - j.created_at))
           AS latency,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY a.duration_ms) AS attempt_ms
  FROM job_attempts AS a JOIN jobs AS j ON j.id = a.job_id
 WHERE a.outcome = 'ok' AND a.finished_at >= now() - make_interval(secs => $1)
 GROUP BY j.endpoint
"""
