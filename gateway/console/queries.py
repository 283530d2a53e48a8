"""Read queries of the operators' console and of the /metrics scrape (asyncpg, read-only).

Every statement is a constant here or is assembled here from fixed fragments (filters add only ``$n``
parameters). Tables the forwarding work adds — ``receipts`` and ``shipments.customs_status`` — are
looked up once at start-up (:func:`detect_features`); the queries that use them exist only when they do.

Indexes the queries rely on: gateway/sql/001_core.sql, 010_queue.sql and 030_console.sql.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import cbec_queue

from gateway import outbox

#: Reconciliation states in the order the console shows them (gateway.reconcile.ShipmentState).
STATES: tuple[str, ...] = ("mismatched", "incomplete", "matched")

#: Columns of a receipts row that are never sent to the browser whole (XML, payloads).
_BULKY = frozenset({"raw", "raw_xml", "xml", "payload", "body", "message", "response"})


# --- what the database has ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptsShape:
    """How a ``receipts`` table (added by the forwarding work) can be read: its columns and links."""

    columns: frozenset[str]

    @property
    def time_column(self) -> str | None:
        return next((c for c in ("received_at", "created_at", "stored_at") if c in self.columns), None)

    @property
    def message_link(self) -> str | None:
        """SQL joining ``receipts AS r`` to the declared ``messages AS m``, when a link column exists."""
        if "message_id" in self.columns:
            return "m.id = r.message_id"
        if "message_guid" in self.columns:
            return "m.guid = r.message_guid"
        if "document_id" in self.columns:
            return "m.id = (SELECT d.message_id FROM documents AS d WHERE d.id = r.document_id)"
        return None

    def shipment_condition(
        self,
        *,
        message_ids: list[int],
        message_guids: list[str],
        document_ids: list[int],
        document_guids: list[str],
        ebp_code: str,
        order_no: str,
    ) -> tuple[str, list[Any]] | None:
        """WHERE clause (and its arguments) finding a shipment's receipts by whatever links the table has."""
        parts: list[str] = []
        args: list[Any] = []

        def add(sql: str, *values: Any) -> None:
            args.extend(values)
            numbers = range(len(args) - len(values) + 1, len(args) + 1)
            parts.append(sql.format(*(f"${n}" for n in numbers)))

        if "message_id" in self.columns:
            add("r.message_id = ANY ({}::bigint[])", message_ids)
        if "message_guid" in self.columns:
            add("r.message_guid = ANY ({}::text[])", message_guids)
        if "document_id" in self.columns:
            add("r.document_id = ANY ({}::bigint[])", document_ids)
        for name in ("doc_guid", "guid"):
            if name in self.columns:
                add(f"r.{name} = ANY ({{}}::text[])", document_guids)
                break
        if {"ebp_code", "order_no"} <= self.columns:
            add("(r.ebp_code = {} AND r.order_no = {})", ebp_code, order_no)
        elif "order_no" in self.columns:
            add("r.order_no = {}", order_no)
        return (" OR ".join(parts), args) if parts else None


@dataclass(frozen=True)
class Features:
    """Optional schema parts, detected once at start-up (information_schema)."""

    customs_status: bool = False
    receipts: ReceiptsShape | None = None

    def as_dict(self) -> dict[str, bool]:
        return {"customs_status": self.customs_status, "receipts": self.receipts is not None}


DETECT = """
SELECT table_name, column_name FROM information_schema.columns
 WHERE table_schema = current_schema() AND table_name IN ('shipments', 'receipts')
"""


async def detect_features(conn: asyncpg.Connection | asyncpg.Pool) -> Features:
    columns: dict[str, set[str]] = {}
    for r in await conn.fetch(DETECT):
        columns.setdefault(r["table_name"], set()).add(r["column_name"])
    receipts = columns.get("receipts")
    return Features(
        customs_status="customs_status" in columns.get("shipments", set()),
        receipts=ReceiptsShape(frozenset(receipts)) if receipts else None,
    )


# --- counts -------------------------------------------------------------------------------------

#: Shipments by reconciliation state (index-only scan of shipments_state_updated_idx).
COUNT_BY_STATE = "SELECT state, count(*)::bigint AS n FROM shipments GROUP BY state"
#: Shipments by customs status; '' while a shipment has none yet.
COUNT_BY_CUSTOMS_STATUS = (
    "SELECT COALESCE(customs_status::text, '') AS status, count(*)::bigint AS n FROM shipments GROUP BY 1"
)


async def shipment_counts(conn: asyncpg.Connection, features: Features) -> dict[str, Any]:
    by_state = {s: 0 for s in STATES}
    for r in await conn.fetch(COUNT_BY_STATE):
        by_state[r["state"]] = int(r["n"])
    out: dict[str, Any] = {"total": sum(by_state.values()), "by_state": by_state, "by_customs_status": None}
    if features.customs_status:
        out["by_customs_status"] = {r["status"]: int(r["n"]) for r in await conn.fetch(COUNT_BY_CUSTOMS_STATUS)}
    return out


#: The live feed's change marker: cheap index look-ups, each moves when something new is committed.
MARKER = """
SELECT (SELECT max(updated_at) FROM shipments) AS shipments_at,
       (SELECT max(id) FROM messages) AS last_message,
       (SELECT max(id) FROM rejected_messages) AS last_rejection,
       (SELECT max(id) FROM job_attempts) AS last_attempt
"""

#: Shipments updated after $1 (oldest first, at most $2): what the feed says changed.
CHANGED = """
SELECT ebp_code, order_no, state, updated_at FROM shipments
 WHERE updated_at > $1 ORDER BY updated_at, id LIMIT $2
"""


# --- the shipment list (mismatches) ---------------------------------------------------------------

_LIST_SELECT = """
SELECT s.id, s.ebp_code, s.order_no, s.ebc_code, s.state, s.missing, s.findings, s.mode, s.buyer_id_number,
       s.created_at, s.updated_at{extra},
       (SELECT d.head->>'buyerName' FROM documents AS d
         WHERE d.ebp_code = s.ebp_code AND d.order_no = s.order_no AND d.kind IN ('order', 'inventory')
           AND d.is_current AND NOT d.withdrawn
         ORDER BY d.kind DESC LIMIT 1) AS buyer_name
  FROM shipments AS s
"""

#: filter name -> condition (``{}`` is the parameter number).
LIST_FILTERS: dict[str, str] = {
    "state": "s.state = ${}",
    "order_no": "s.order_no = ${}",
    # waybills and inventories both carry the orderNo of the shipment they belong to
    "logistics_no": "s.order_no IN (SELECT d.order_no FROM documents AS d WHERE d.logistics_no = ${})",
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


def encode_cursor(updated_at: datetime, row_id: int) -> str:
    raw = json.dumps([updated_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, row_id = json.loads(raw)
        return datetime.fromisoformat(ts), int(row_id)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc


def list_sql(q: ListQuery, features: Features) -> tuple[str, list[Any]]:
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
    extra = ", s.customs_status::text AS customs_status" if features.customs_status else ""
    sql = (
        _LIST_SELECT.format(extra=extra)
        + (" WHERE " + " AND ".join(clauses) if clauses else "")
        + f" ORDER BY s.updated_at DESC, s.id DESC LIMIT ${len(args)}"
    )
    return sql, args


def mask_id_number(value: str | None) -> str | None:
    """A buyer ID number for lists: region and last four kept (the shipment page shows it whole)."""
    if not value or len(value) < 10:
        return value
    return value[:6] + "*" * (len(value) - 10) + value[-4:]


def shipment_row(r: asyncpg.Record) -> dict[str, Any]:
    out = {
        "ebpCode": r["ebp_code"],
        "orderNo": r["order_no"],
        "ebcCode": r["ebc_code"],
        "state": r["state"],
        "missing": list(r["missing"]),
        "findings": _json(r["findings"]),
        "mode": r["mode"],
        "buyerIdNumber": r["buyer_id_number"],
        "created_at": r["created_at"],
        "updated_at": r["updated_at"],
    }
    if "buyer_name" in r:
        out["buyerName"] = r["buyer_name"]
    if "customs_status" in r:
        out["customsStatus"] = r["customs_status"]
    return out


async def list_shipments(conn: asyncpg.Connection, q: ListQuery, features: Features) -> dict[str, Any]:
    sql, args = list_sql(q, features)
    rows = await conn.fetch(sql, *args)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    items = []
    for r in rows:
        item = shipment_row(r)
        item["buyerIdNumber"] = mask_id_number(item["buyerIdNumber"])
        items.append(item)
    return {
        "items": items,
        "next_cursor": encode_cursor(rows[-1]["updated_at"], rows[-1]["id"]) if more else None,
    }


# --- one shipment ------------------------------------------------------------------------------------

SHIPMENT = "SELECT * FROM shipments WHERE ebp_code = $1 AND order_no = $2"

#: Every version of the shipment's documents with the message that brought each ($1 ebpCode, $2 orderNo):
#: order, payment, inventory by the order's key; waybills by that orderNo or by any inventory's waybill key;
#: receipts stored as documents (kind 'receipt') that name the order's key (CEB312) or a waybill's (CEB512/514).
SHIPMENT_DOCUMENTS = """
WITH own AS MATERIALIZED (
    SELECT d.id, d.kind, d.logistics_code, d.logistics_no FROM documents AS d
     WHERE d.ebp_code = $1 AND d.order_no = $2 AND d.kind IN ('order', 'payment', 'inventory', 'receipt')
), waybills AS MATERIALIZED (
    SELECT d.id, d.logistics_code, d.logistics_no FROM documents AS d WHERE d.kind = 'waybill' AND d.order_no = $2
    UNION
    SELECT d.id, d.logistics_code, d.logistics_no
      FROM (SELECT DISTINCT logistics_code, logistics_no FROM own WHERE kind = 'inventory') AS w
      JOIN documents AS d ON d.logistics_code = w.logistics_code AND d.logistics_no = w.logistics_no
     WHERE d.kind = 'waybill'
), ids AS (
    SELECT id FROM own
    UNION
    SELECT id FROM waybills
    UNION
    SELECT d.id
      FROM (SELECT DISTINCT logistics_code, logistics_no FROM waybills) AS w
      JOIN documents AS d ON d.logistics_code = w.logistics_code AND d.logistics_no = w.logistics_no
     WHERE d.kind = 'receipt'
)
SELECT d.id, d.message_id, d.doc_index, d.doc_guid, d.kind, d.message_type, d.key1, d.key2, d.app_type,
       d.app_time, d.app_status, d.path, d.head, d.lines, d.is_current, d.withdrawn, d.superseded_by,
       m.guid AS message_guid, m.received_at, m.submitter, m.source
  FROM ids JOIN documents AS d ON d.id = ids.id JOIN messages AS m ON m.id = d.message_id
 ORDER BY m.received_at, d.id
"""

#: Jobs that transmitted these messages ($1 message guids): the same query as the API's shipment detail.
TRANSMISSIONS = outbox.TRANSMISSIONS

#: Attempt history of jobs ($1 ids), in the order things happened.
HISTORY = """
SELECT job_id, replay, attempt, worker_id, started_at, finished_at, outcome, error, duration_ms
  FROM job_attempts WHERE job_id = ANY ($1::bigint[])
 ORDER BY job_id, replay, attempt, id
"""


def _json(value: Any) -> Any:
    # pools made by gateway.db decode jsonb; a plain asyncpg connection gives text
    return json.loads(value) if isinstance(value, str) else value


def _short(value: Any, limit: int = 240) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return f"<{len(value)} characters>"
    return value


def small_payload(payload: Any) -> dict[str, Any]:
    """A job payload for the page: short values kept, the message XML and other bulk summarised."""
    payload = _json(payload)
    if not isinstance(payload, dict):
        return {"payload": _short(json.dumps(payload, ensure_ascii=False))}
    return {k: _short(v) if not isinstance(v, dict | list) else _short(json.dumps(v, ensure_ascii=False))
            for k, v in payload.items()}  # fmt: skip


async def job_history(conn: asyncpg.Connection, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        for h in await conn.fetch(HISTORY, list(ids)):
            entry = dict(h)
            out[entry.pop("job_id")].append(entry)
    return out


async def shipment_detail(
    conn: asyncpg.Connection, ebp_code: str, order_no: str, features: Features
) -> dict[str, Any] | None:
    s = await conn.fetchrow(SHIPMENT, ebp_code, order_no)
    if s is None:
        return None
    out = shipment_row(s)
    if features.customs_status:
        out["customsStatus"] = s["customs_status"]
    docs = [dict(r) for r in await conn.fetch(SHIPMENT_DOCUMENTS, ebp_code, order_no)]
    for d in docs:
        d["head"], d["lines"] = _json(d["head"]), _json(d["lines"])
    out["documents"] = docs
    jobs = [dict(r) for r in await conn.fetch(TRANSMISSIONS, sorted({d["message_guid"] for d in docs}))]
    history = await job_history(conn, [j["id"] for j in jobs])
    for j in jobs:
        j["history"] = history[j["id"]]
    out["transmissions"] = jobs
    out["receipts"] = None
    shape = features.receipts
    if shape is not None:
        out["receipts"] = []
        found = shape.shipment_condition(
            message_ids=sorted({d["message_id"] for d in docs}),
            message_guids=sorted({d["message_guid"] for d in docs}),
            document_ids=sorted({d["id"] for d in docs}),
            document_guids=sorted({d["doc_guid"] for d in docs}),
            ebp_code=ebp_code,
            order_no=order_no,
        )
        if found:
            condition, args = found
            order = f" ORDER BY r.{shape.time_column}" if shape.time_column else ""
            rows = await conn.fetch(f"SELECT r.* FROM receipts AS r WHERE {condition}{order} LIMIT 500", *args)
            out["receipts"] = [
                {k: (f"<{len(v)} characters>" if k in _BULKY and isinstance(v, str) else v)
                 for k, v in dict(r).items()}
                for r in rows
            ]  # fmt: skip
    return out


RAW_MESSAGE = "SELECT guid, message_type, received_at, submitter, raw_xml FROM messages WHERE guid = $1"


# --- queue ----------------------------------------------------------------------------------------------


async def queue_health(conn: asyncpg.Connection, *, dead_limit: int = 50) -> dict[str, Any]:
    """Per endpoint depth, oldest age and circuit (cbec_queue.stats), and the newest dead letters."""
    endpoints = await cbec_queue.stats(conn)
    dead = await cbec_queue.dead_letters(conn, limit=dead_limit)
    for job in dead:
        job["payload"] = small_payload(job["payload"])
    return {
        "endpoints": endpoints,
        "dead_letters": dead,
        "dead_total": sum(int(e.get("dead") or 0) for e in endpoints),
    }


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


def receipt_latency_series_sql(shape: ReceiptsShape) -> str | None:
    """Per minute since $1: median and 95th percentile of receipt time − message acceptance (seconds)."""
    link, at = shape.message_link, shape.time_column
    if link is None or at is None:
        return None
    return f"""
SELECT date_trunc('minute', r.{at}) AS t,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM r.{at} - m.received_at)) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM r.{at} - m.received_at)) AS p95
  FROM receipts AS r JOIN messages AS m ON {link}
 WHERE r.{at} >= $1 GROUP BY 1
"""


def receipt_latency_window_sql(shape: ReceiptsShape) -> str | None:
    """Over the last $1 seconds: count and quantiles (0.5, 0.9, 0.99) of receipt latency in seconds."""
    link, at = shape.message_link, shape.time_column
    if link is None or at is None:
        return None
    return f"""
SELECT count(*)::bigint AS n,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM r.{at} - m.received_at))
           AS q
  FROM receipts AS r JOIN messages AS m ON {link}
 WHERE r.{at} >= now() - make_interval(secs => $1)
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
