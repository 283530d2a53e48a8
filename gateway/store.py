"""Persistence: messages, business documents with their key state, shipments and the tax ledger.

:meth:`Store.ingest` takes a validated :class:`~gateway.documents.ParsedMessage` and, in one
transaction that commits before it returns, applies the key rules of spec §6.2 / §5.3:

* the message guid is its identity: the same guid with the same bytes replays the stored answer,
  with other bytes it is a conflict (``state.guid_conflict``);
* per document key (MessageType.keys): appType 1 needs the key free (else ``state.duplicate``, like
  customs −301010); appType 2 replaces and appType 3 withdraws the current document when its appTime
  is strictly newer, otherwise the document is ignored (``state.ignored_older``, like −301014); a
  change or withdrawal of an unknown key is ``state.not_found`` (like −301009). Any conflict rolls the
  whole message back and raises :class:`Conflict`.

Then every shipment the message touches is reconciled again (gateway.reconcile) from its current
legs, the inventory is assessed for tax (gateway.tax) against the buyer's ledger, and the shipment
row, the ledger and the answer are written. Concurrency: transaction-scoped advisory locks on the
document keys, on the order numbers of the shipments and on the buyers serialise the messages that
touch the same things (the unique index on current keys stays the last guard); a deadlock between
two messages that discovered extra locks late is retried.

Round trips of a typical message: BEGIN with the locks, one read (stored guid, current rows,
shipment legs, ledger), one write, COMMIT; a change adds one (supersede), an order, payment or
waybill whose shipment already has an inventory adds two (the buyer's lock, the ledger).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from gateway import reconcile as recon
from gateway import tax
from gateway.auth import document_parties
from gateway.documents import Document, ParsedMessage
from gateway.errors import Issue, Layer
from gateway.messages import BY_CODE, SHIPMENT_KINDS, Direction, Kind

CODES: dict[str, str] = {
    "state.guid_conflict": "a message with this guid was already accepted with different content",
    "state.duplicate": "a current document with the same business key exists (appType 1); customs: -301010 and kin",
    "state.not_found": "appType 2 (change) or 3 (delete) names a business key with no current document",
    "state.ignored_older": (
        "document not applied: its appTime is not newer than the stored document's (customs: -301014 and kin); "
        "an outcome of an accepted message, not an error"
    ),
}

# errors.Layer has no "state" member yet; the codes carry the layer in their prefix either way.
_STATE_LAYER: Layer = getattr(Layer, "STATE", Layer.RULE)

_SEP = "\x1f"  # cannot occur in XML text, so it safely joins key parts
_ATTEMPTS = 3
_SHIPMENT_KINDS = frozenset(k.value for k in SHIPMENT_KINDS)
# Advisory lock namespaces: a message's guid; a document key; the shipments of an orderNo (orders,
# payments, inventories and waybills name it); a waybill's (logisticsCode, logisticsNo), taken by the
# waybill and by the inventories naming it, which may carry another orderNo; a buyer's tax ledger.
_LOCK_GUID, _LOCK_KEY, _LOCK_ORDER, _LOCK_WAYBILL, _LOCK_BUYER = "guid", "key", "order", "waybill", "buyer"

# --- SQL (every runtime query of the store) ---------------------------------------------------

_DOC_COLUMNS = (
    "d.id, d.message_id, d.doc_index, d.doc_guid, d.kind, d.message_type, d.key1, d.key2, d.order_no, d.ebp_code,"
    " d.ebc_code, d.logistics_code, d.logistics_no, d.app_type, d.app_time, d.app_status, d.path, d.head, d.lines,"
    " d.parties, d.is_current, d.withdrawn, d.superseded_by"
)

#: Opens every transaction of the store (one round trip, simple-query protocol). The statements are
#: prepared once per connection and should be planned once too: left to itself the planner re-plans the
#: array-driven ones at every call (0.4 ms of CPU for READ_STATE, more than running it), and a generic
#: plan made from the statistics of the moment would keep sequential scans and hash joins chosen while
#: the tables were small, whose cost then grows with the tables. So every lookup below is written as a
#: parameterised probe (``LATERAL (... OFFSET 0)`` per key, ``= ANY``, scalar subqueries), plans are
#: generic, and the full-scan alternatives are off: the plans stay index-driven whatever the
#: statistics say, and the cost per message stays flat as the tables grow. Local to the transaction.
BEGIN_TRANSACTION = (
    "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;"
    " SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
)

#: More locks, found after the first read: $1 lock ids (see _lock_id).
LOCK_MORE = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k"

#: Everything one message needs, read after the locks, as one row of three JSON values:
#: ``stored`` — the message already stored under the guid ($11), if any;
#: ``documents`` — the current rows of its keys ($1-$3: type, key1, key2; role "key"), and the live legs
#: of the shipments involved (role "leg") — named by the message ($4, $5: ebpCode, orderNo), holding an
#: inventory that points at one of its waybills ($6, $7: logisticsCode, logisticsNo) or sharing the
#: orderNo of one of its waybills ($8) — plus the live waybills (role "waybill") those shipments, those
#: order numbers and the message's inventories ($9, $10) point at;
#: ``ledger`` — the ledger rows of its inventories' buyers ($12 buyerIdNumber, $13 year).
READ_STATE = f"""
WITH keyed AS (
    SELECT t.ebp, t.ono FROM unnest($4::text[], $5::text[]) AS t(ebp, ono)
    UNION
    SELECT i.ebp_code, i.order_no
      FROM unnest($6::text[], $7::text[]) AS w(lc, ln),
           LATERAL (SELECT d.ebp_code, d.order_no FROM documents AS d
                     WHERE d.logistics_code = w.lc AND d.logistics_no = w.ln
                       AND d.kind = 'inventory' AND d.is_current AND NOT d.withdrawn OFFSET 0) AS i
    UNION
    SELECT s.ebp_code, s.order_no
      FROM unnest($8::text[]) AS o(ono),
           LATERAL (SELECT s.ebp_code, s.order_no FROM shipments AS s
                     WHERE s.order_no = o.ono AND s.ebp_code <> '' OFFSET 0) AS s
), legs AS MATERIALIZED (
    SELECT d.*
      FROM keyed AS k,
           LATERAL (SELECT * FROM documents AS d
                     WHERE d.ebp_code = k.ebp AND d.order_no = k.ono
                       AND d.kind IN ('order', 'payment', 'inventory') AND d.is_current AND NOT d.withdrawn
                    OFFSET 0) AS d
)
SELECT
    (SELECT json_build_object('id', m.id, 'sha256', encode(m.sha256, 'hex'), 'response', m.response,
                              'http_status', m.http_status, 'message_type', m.message_type)
       FROM messages AS m WHERE m.guid = $11) AS stored,
    (SELECT coalesce(json_agg(x), '[]')
       FROM (SELECT 'key' AS role, (SELECT m.guid FROM messages AS m WHERE m.id = d.message_id) AS message_guid,
                    {_DOC_COLUMNS}
               FROM unnest($1::text[], $2::text[], $3::text[]) AS k(mt, k1, k2),
                    LATERAL (SELECT * FROM documents AS d
                              WHERE d.message_type = k.mt AND d.key1 = k.k1 AND d.key2 = k.k2 AND d.is_current
                             OFFSET 0) AS d
             UNION ALL
             SELECT 'leg', NULL, {_DOC_COLUMNS} FROM legs AS d
             UNION ALL
             SELECT 'waybill', NULL, {_DOC_COLUMNS}
               FROM (SELECT ono FROM keyed UNION SELECT unnest($8::text[])) AS o,
                    LATERAL (SELECT * FROM documents AS d
                              WHERE d.kind = 'waybill' AND d.order_no = o.ono AND d.is_current AND NOT d.withdrawn
                             OFFSET 0) AS d
             UNION ALL
             SELECT 'waybill', NULL, {_DOC_COLUMNS}
               FROM (SELECT logistics_code, logistics_no FROM legs WHERE kind = 'inventory'
                     UNION SELECT * FROM unnest($9::text[], $10::text[])) AS w(lc, ln),
                    LATERAL (SELECT * FROM documents AS d
                              WHERE d.logistics_code = w.lc AND d.logistics_no = w.ln
                                AND d.is_current AND NOT d.withdrawn OFFSET 0) AS d
              -- kind outside the probe: inside, the partial waybill index (by orderNo) matches the predicate
              -- and a generic plan made on small tables scans all of it, a cost that grows with the table
              WHERE d.kind = 'waybill'
            ) AS x) AS documents,
    (SELECT coalesce(json_agg(l), '[]')
       FROM unnest($12::text[], $13::int[]) AS b(buyer, year),
            LATERAL (SELECT l.buyer_id_number, l.year, l.ebc_code, l.order_no, l.amount::text AS amount
                       FROM tax_ledger AS l WHERE l.buyer_id_number = b.buyer AND l.year = b.year OFFSET 0) AS l
    ) AS ledger
"""

#: The ledger rows of buyers found after the first read ($1 buyerIdNumber, $2 year), under their locks.
READ_LEDGER = """
SELECT coalesce(json_agg(l), '[]')
  FROM unnest($1::text[], $2::int[]) AS b(buyer, year),
       LATERAL (SELECT l.buyer_id_number, l.year, l.ebc_code, l.order_no, l.amount::text AS amount
                  FROM tax_ledger AS l WHERE l.buyer_id_number = b.buyer AND l.year = b.year OFFSET 0) AS l
"""

#: $1 ids of the rows that a change or a withdrawal replaces. Runs before the new rows are inserted,
#: since the unique index on current keys is checked row by row; WRITE_INGEST then links them.
SUPERSEDE = "UPDATE documents SET is_current = false WHERE id = ANY ($1::bigint[])"

#: The message, its documents, the links from replaced rows, the shipments, the '' shipments to drop and
#: the ledger, in one statement. $1-$8 the message row (the response gets the new id); $9 documents
#: (JSON array of objects); $10, $11 replaced row ids and the doc_index of the row replacing each;
#: $12 shipments (JSON); $13 orderNos of '' shipments to delete; $14 ledger rows to upsert (JSON);
#: $15-$18 the inventories (ebcCode, orderNo) whose other ledger rows go, except the kept buyer and
#: year (NULL: keep none). Returns the message id.
WRITE_INGEST = """
WITH m AS (
    INSERT INTO messages (id, guid, message_type, sha256, raw_xml, source, submitter, response, http_status)
    SELECT n.id, $1, $2, $3, $4, $5, $6, jsonb_set($7::jsonb, '{id}', to_jsonb(n.id)), $8
      FROM (SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id) AS n
    RETURNING id
), d AS (
    INSERT INTO documents (message_id, doc_index, doc_guid, kind, message_type, key1, key2, order_no, ebp_code,
                           ebc_code, logistics_code, logistics_no, pay_code, pay_transaction_id, app_type, app_time,
                           app_status, path, head, lines, parties, is_current, withdrawn)
    SELECT m.id, x.doc_index, x.doc_guid, x.kind, $2, x.key1, x.key2, x.order_no, x.ebp_code,
           x.ebc_code, x.logistics_code, x.logistics_no, x.pay_code, x.pay_transaction_id, x.app_type, x.app_time,
           x.app_status, x.path, x.head, x.lines, x.parties, x.is_current, x.withdrawn
      FROM m, jsonb_to_recordset($9::jsonb) AS x(
           doc_index int, doc_guid text, kind text, key1 text, key2 text, order_no text, ebp_code text,
           ebc_code text, logistics_code text, logistics_no text, pay_code text, pay_transaction_id text,
           app_type text, app_time text, app_status text, path text, head jsonb, lines jsonb, parties text[],
           is_current boolean, withdrawn boolean)
    RETURNING id, doc_index
), linked AS (
    UPDATE documents AS o SET superseded_by = d.id
      FROM unnest($10::bigint[], $11::int[]) AS r(old_id, doc_index), d
     WHERE o.id = r.old_id AND d.doc_index = r.doc_index
    RETURNING 1
), s AS (
    INSERT INTO shipments AS s (ebp_code, order_no, ebc_code, state, missing, findings, parties, mode,
                                buyer_id_number)
    SELECT x.ebp_code, x.order_no, x.ebc_code, x.state, x.missing, x.findings, x.parties, x.mode, x.buyer_id_number
      FROM jsonb_to_recordset($12::jsonb) AS x(
           ebp_code text, order_no text, ebc_code text, state text, missing text[], findings jsonb,
           parties text[], mode text, buyer_id_number text)
    ON CONFLICT (ebp_code, order_no) DO UPDATE
       SET ebc_code = EXCLUDED.ebc_code, state = EXCLUDED.state, missing = EXCLUDED.missing,
           findings = EXCLUDED.findings, mode = EXCLUDED.mode, buyer_id_number = EXCLUDED.buyer_id_number,
           parties = ARRAY(SELECT DISTINCT p FROM unnest(s.parties || EXCLUDED.parties) AS p ORDER BY p),
           updated_at = now()
    RETURNING 1
), blank AS (
    DELETE FROM shipments AS s WHERE s.ebp_code = '' AND s.order_no = ANY ($13::text[])
    RETURNING 1
), ledger_put AS (
    INSERT INTO tax_ledger AS l (buyer_id_number, year, ebc_code, order_no, amount)
    SELECT x.buyer_id_number, x.year, x.ebc_code, x.order_no, x.amount
      FROM jsonb_to_recordset($14::jsonb) AS x(buyer_id_number text, year int, ebc_code text, order_no text,
                                                amount numeric)
    ON CONFLICT (buyer_id_number, year, ebc_code, order_no) DO UPDATE
       SET amount = EXCLUDED.amount, updated_at = now()
    RETURNING 1
), ledger_drop AS (
    DELETE FROM tax_ledger AS l
     WHERE l.ebc_code = ANY ($15::text[]) AND l.order_no = ANY ($16::text[])
       AND EXISTS (SELECT FROM unnest($15::text[], $16::text[], $17::text[], $18::int[]) AS x(ebc, ono, buyer, year)
                    WHERE x.ebc = l.ebc_code AND x.ono = l.order_no
                      AND (x.buyer IS NULL OR x.buyer <> l.buyer_id_number OR x.year <> l.year))
    RETURNING 1
)
SELECT (SELECT id FROM m) AS message_id,
       (SELECT count(*) FROM d) + (SELECT count(*) FROM linked) + (SELECT count(*) FROM s)
       + (SELECT count(*) FROM blank) + (SELECT count(*) FROM ledger_put) + (SELECT count(*) FROM ledger_drop) AS rows
"""

INSERT_REJECTION = """
INSERT INTO rejected_messages (submitter, guid, message_type, raw, raw_size, issues, http_status)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

SELECT_MESSAGE = """
SELECT id, guid, message_type, sha256, raw_xml, source, submitter, received_at, response, http_status
  FROM messages WHERE guid = $1
"""

SELECT_MESSAGE_DOCUMENTS = f"SELECT {_DOC_COLUMNS} FROM documents AS d WHERE d.message_id = $1 ORDER BY d.doc_index"

SELECT_SHIPMENT = """
SELECT id, ebp_code, order_no, ebc_code, state, missing, findings, parties, mode, buyer_id_number,
       created_at, updated_at
  FROM shipments WHERE ebp_code = $1 AND order_no = $2
"""

#: Every version of the shipment's legs: order, payment, inventory by ($1 ebpCode, $2 orderNo); waybills
#: by that orderNo or by the key any version of its inventory named.
SELECT_SHIPMENT_DOCUMENTS = f"""
WITH own AS MATERIALIZED (
    SELECT d.* FROM documents AS d
     WHERE d.ebp_code = $1 AND d.order_no = $2 AND d.kind IN ('order', 'payment', 'inventory')
), docs AS (
    SELECT * FROM own
    UNION
    SELECT d.* FROM documents AS d WHERE d.kind = 'waybill' AND d.order_no = $2
    UNION
    SELECT d.*
      FROM (SELECT DISTINCT logistics_code, logistics_no FROM own WHERE kind = 'inventory') AS w,
           LATERAL (SELECT * FROM documents AS d
                     WHERE d.logistics_code = w.logistics_code AND d.logistics_no = w.logistics_no
                       AND d.kind = 'waybill' OFFSET 0) AS d
)
SELECT m.guid AS message_guid, m.received_at, {_DOC_COLUMNS}
  FROM docs AS d, LATERAL (SELECT guid, received_at FROM messages AS m WHERE m.id = d.message_id OFFSET 0) AS m
 ORDER BY d.kind, d.id
"""

_LIST_COLUMNS = (
    "SELECT id, ebp_code, order_no, ebc_code, state, missing, findings, parties, mode, created_at, updated_at"
    " FROM shipments"
)
#: list_shipments filters (each adds one parameter) and the keyset page condition (two).
_LIST_FILTERS = {
    "state": "state = ${}",
    "ebp_code": "ebp_code = ${}",
    "ebc_code": "ebc_code = ${}",
    "since": "updated_at >= ${}",
    "until": "updated_at < ${}",
    "parties": "parties && ${}::text[]",
}
_LIST_AFTER = {True: "(updated_at, id) < (${}, ${})", False: "(updated_at, id) > (${}, ${})"}
_LIST_ORDER = {True: " ORDER BY updated_at DESC, id DESC", False: " ORDER BY updated_at, id"}


# --- public types ----------------------------------------------------------------------------


@dataclass
class DocumentOutcome:
    index: int
    doc_guid: str
    kind: str
    keys: dict[str, str]
    outcome: str  # 'accepted' | 'replaced' | 'withdrawn' | 'ignored_older'
    shipment: dict[str, Any] | None = None  # {ebpCode, orderNo, state, missing} of the shipment it belongs to
    code: str | None = None  # set when the outcome is not plain success: "state.ignored_older"
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "doc_guid": self.doc_guid,
            "kind": self.kind,
            "keys": dict(self.keys),
            "outcome": self.outcome,
            "shipment": dict(self.shipment) if self.shipment is not None else None,
            "code": self.code,
            "message": self.message,
        }


@dataclass(eq=False)
class _Job:
    """A message waiting for (or in) an ingest transaction, and the future its caller awaits."""

    msg: ParsedMessage
    raw: bytes
    sha: bytes
    submitter: str
    source: str
    locks: list[int]
    future: asyncio.Future[IngestResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    attempts: int = 1


@dataclass
class IngestResult:
    message_id: int
    guid: str
    message_type: str
    http_status: int
    body: dict[str, Any]
    replay: bool


class Conflict(Exception):
    """The message contradicts what is stored (HTTP 409); nothing of it was stored."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(f"{i.code} at {i.path}: {i.message}" for i in issues[:3]))
        self.issues = issues


# --- internal rows ---------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Row:
    """A stored document row, or a new one (from the message) as it will be stored."""

    id: int
    kind: str
    message_type: str
    key1: str
    key2: str
    order_no: str | None
    ebp_code: str | None
    ebc_code: str | None
    logistics_code: str | None
    logistics_no: str | None
    app_time: str
    doc_index: int
    path: str
    head: dict[str, str]
    lines: list[dict[str, str]]
    parties: list[str]
    withdrawn: bool
    message_guid: str | None = None
    doc: Document | None = None
    is_new: bool = False  # a document of the message being ingested (no id yet)

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> _Row:
        return cls(
            id=r["id"], kind=r["kind"], message_type=r["message_type"], key1=r["key1"], key2=r["key2"],
            order_no=r["order_no"], ebp_code=r["ebp_code"], ebc_code=r["ebc_code"],
            logistics_code=r["logistics_code"], logistics_no=r["logistics_no"], app_time=r["app_time"] or "",
            doc_index=r["doc_index"], path=r["path"], head=r["head"], lines=r["lines"], parties=r["parties"],
            withdrawn=r["withdrawn"], message_guid=r["message_guid"],
        )  # fmt: skip

    @property
    def document(self) -> Document:
        if self.doc is None:
            self.doc = Document(BY_CODE[self.message_type], self.doc_index, self.path, self.head, self.lines)
        return self.doc

    @property
    def shipment_key(self) -> tuple[str, str]:
        return (self.ebp_code or "", self.order_no or "")

    @property
    def logistics_key(self) -> tuple[str, str]:
        return (self.logistics_code or "", self.logistics_no or "")

    @property
    def order(self) -> tuple[str, bool, int]:
        """Sort key of 'latest': appTime, then arrival."""
        return (self.app_time, self.is_new, self.id)


def _text(head: dict[str, str], name: str) -> str | None:
    value = head.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


@dataclass
class _New:
    """One document of the message being ingested."""

    doc: Document
    row: _Row
    key2: str
    app_type: str
    tracked: bool  # declarations carry key state; receipts are only recorded
    outcome: str = "accepted"
    replaces: _Row | None = None
    code: str | None = None
    message: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.row.message_type, self.row.key1, self.key2)

    @property
    def stored(self) -> bool:
        return self.outcome != "ignored_older"

    @property
    def live(self) -> bool:
        return self.tracked and self.outcome in ("accepted", "replaced")


@dataclass
class _Refs:
    """What the first read must cover: the shipments and waybills the message is about."""

    keyed: set[tuple[str, str]] = field(default_factory=set)  # (ebpCode, orderNo)
    waybill_keys: set[tuple[str, str]] = field(default_factory=set)  # waybills' own (logisticsCode, logisticsNo)
    waybill_orders: set[str] = field(default_factory=set)  # waybills' orderNo
    inventory_waybills: set[tuple[str, str]] = field(default_factory=set)  # inventories' (logisticsCode, No)

    def add(self, row: _Row) -> None:
        if row.kind == Kind.WAYBILL:
            self.waybill_keys.add(row.logistics_key)
            self.waybill_orders.add(row.order_no or "")
        elif row.kind in _SHIPMENT_KINDS:
            self.keyed.add(row.shipment_key)
            if row.kind == Kind.INVENTORY:
                self.inventory_waybills.add(row.logistics_key)

    def covers(self, other: _Refs) -> bool:
        return (
            other.keyed <= self.keyed
            and other.waybill_keys <= self.waybill_keys
            and other.waybill_orders <= self.waybill_orders
        )

    def merge(self, other: _Refs) -> None:
        self.keyed |= other.keyed
        self.waybill_keys |= other.waybill_keys
        self.waybill_orders |= other.waybill_orders
        self.inventory_waybills |= other.inventory_waybills

    def params(self) -> tuple[list[str], ...]:
        keyed, wkeys, ikeys = sorted(self.keyed), sorted(self.waybill_keys), sorted(self.inventory_waybills)
        return (
            [k[0] for k in keyed], [k[1] for k in keyed],
            [k[0] for k in wkeys], [k[1] for k in wkeys],
            sorted(self.waybill_orders),
            [k[0] for k in ikeys], [k[1] for k in ikeys],
        )  # fmt: skip

    def orders(self) -> set[str]:
        return {k[1] for k in self.keyed} | self.waybill_orders


def _new_documents(msg: ParsedMessage) -> list[_New]:
    mtype = msg.type
    tracked = mtype.direction is Direction.DECLARATION
    out = []
    for doc in msg.documents:
        head = doc.head
        keys = [v.strip() for v in doc.keys]
        row = _Row(
            id=-doc.index, kind=mtype.kind.value, message_type=mtype.code, key1=keys[0],
            key2=keys[1] if len(keys) > 1 else "", order_no=_text(head, "orderNo"), ebp_code=_text(head, "ebpCode"),
            ebc_code=_text(head, "ebcCode"), logistics_code=_text(head, "logisticsCode"),
            logistics_no=_text(head, "logisticsNo"), app_time=(head.get("appTime") or "").strip(),
            doc_index=doc.index, path=doc.path, head=head, lines=doc.lines,
            parties=sorted(document_parties(doc)), withdrawn=False, doc=doc, is_new=True,
        )  # fmt: skip
        app_type = (head.get("appType") or "1").strip()
        out.append(_New(doc=doc, row=row, key2=row.key2, app_type=app_type, tracked=tracked))
    return out


def _key_names(new: _New) -> dict[str, str]:
    return dict(zip(new.doc.type.keys, (new.row.key1, new.row.key2), strict=False))


def _describe_key(new: _New) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in _key_names(new).items())


def _issue(code: str, path: str, message: str) -> Issue:
    return Issue(_STATE_LAYER, code, path, message)


def _decide(news: list[_New], current: dict[tuple[str, str, str], _Row]) -> list[Issue]:
    """Apply the appType rules to each document against the current row of its key."""
    issues: list[Issue] = []
    seen: dict[tuple[str, str, str], _New] = {}
    for new in news:
        new.outcome, new.replaces, new.code, new.message = "accepted", None, None, None
        new.row.withdrawn = False
        if not new.tracked:
            continue
        first = seen.setdefault(new.key, new)
        if first is not new:
            issues.append(
                _issue(
                    "state.duplicate",
                    new.doc.path,
                    f"{new.doc.type.document}[{first.doc.index}] of this message already has the key "
                    f"{_describe_key(new)}",
                )
            )
            continue
        cur = current.get(new.key)
        t = new.app_type
        at = new.row.app_time
        if cur is not None and not cur.withdrawn and t not in ("2", "3"):
            issues.append(
                _issue(
                    "state.duplicate",
                    new.doc.path,
                    f"a document with {_describe_key(new)} exists (message {cur.message_guid}, appTime "
                    f"{cur.app_time}); send a change (appType 2) with a newer appTime instead",
                )
            )
        elif cur is not None and at <= cur.app_time:
            # covers appType 1 after a withdrawal too: an old message must not revive a deleted key
            new.outcome = "ignored_older"
            new.code = "state.ignored_older"
            new.message = (
                f"ignored: appTime {at} is not newer than {cur.app_time} of the stored document with "
                f"{_describe_key(new)} (message {cur.message_guid}); nothing was changed"
            )
        elif t in ("2", "3") and (cur is None or cur.withdrawn):
            what = "has been withdrawn" if cur is not None else "does not exist"
            action = "change" if t == "2" else "delete"
            issues.append(
                _issue(
                    "state.not_found",
                    new.doc.field_path("appType"),
                    f"appType {t} ({action}) but the document with {_describe_key(new)} {what}",
                )
            )
        else:
            new.replaces = cur  # None for a first declaration
            if t == "3":
                new.outcome = "withdrawn"
                new.row.withdrawn = True
            elif cur is not None and not cur.withdrawn:
                new.outcome = "replaced"
    return issues


def _replay(stored: dict[str, Any], msg: ParsedMessage, sha: bytes) -> IngestResult:
    """The stored answer for a resent message, or a conflict when the guid came with other content."""
    if stored["sha256"] != sha.hex():
        raise Conflict(
            [
                _issue(
                    "state.guid_conflict",
                    f"{msg.path}/@guid",
                    f"a different message with guid {msg.guid} ({stored['message_type']}) was already accepted; "
                    "a new message needs a new guid",
                )
            ]
        )
    return IngestResult(
        message_id=stored["id"],
        guid=msg.guid,
        message_type=stored["message_type"],
        http_status=stored["http_status"],
        body=stored["response"],
        replay=True,
    )


def _lock_id(namespace: str, key: str) -> int:
    """A 64-bit advisory lock id for (namespace, key); computed here so locks can go with BEGIN."""
    digest = hashlib.blake2b(f"{namespace}{_SEP}{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _begin_and_lock(lock_ids: Iterable[int]) -> str:
    """BEGIN_TRANSACTION plus the locks, in one round trip (the ids are integers made by _lock_id)."""
    ids = sorted(set(lock_ids))  # one order for every message: no deadlock among them
    if not ids:
        return BEGIN_TRANSACTION
    array = ",".join(str(int(i)) for i in ids)
    return f"{BEGIN_TRANSACTION}; SELECT count(pg_advisory_xact_lock(k)) FROM unnest('{{{array}}}'::bigint[]) AS k"


def _up_front_locks(msg: ParsedMessage) -> list[int]:
    """Locks known from the message alone: its guid, its keys, its orders' shipments, its buyers."""
    locks = [_lock_id(_LOCK_GUID, msg.guid)]
    mtype = msg.type
    if mtype.direction is Direction.DECLARATION:
        for doc in msg.documents:
            locks.append(_lock_id(_LOCK_KEY, _SEP.join((mtype.code, *(v.strip() for v in doc.keys)))))
            head = doc.head
            if mtype.kind.value in _SHIPMENT_KINDS:
                locks.append(_lock_id(_LOCK_ORDER, (head.get("orderNo") or "").strip()))
            if mtype.kind in (Kind.WAYBILL, Kind.INVENTORY):
                waybill = ((head.get("logisticsCode") or "").strip(), (head.get("logisticsNo") or "").strip())
                locks.append(_lock_id(_LOCK_WAYBILL, _SEP.join(waybill)))
            if mtype.kind is Kind.INVENTORY:
                locks.append(_lock_id(_LOCK_BUYER, (head.get("buyerIdNumber") or "").strip()))
    return locks


def _buyer(head: dict[str, str]) -> tuple[str, int]:
    return ((head.get("buyerIdNumber") or "").strip(), _ledger_year(head))


def _ledger_book(
    pairs: Iterable[tuple[str, int]], rows: Iterable[dict[str, Any]]
) -> dict[tuple[str, int], dict[tuple[str, str], Decimal]]:
    """(buyer, year) -> (ebcCode, orderNo) -> amount, with an empty book for buyers without rows."""
    book: dict[tuple[str, int], dict[tuple[str, str], Decimal]] = {p: {} for p in pairs}
    for r in rows:
        book[(r["buyer_id_number"], r["year"])][(r["ebc_code"], r["order_no"])] = Decimal(r["amount"])
    return book


def _ledger_year(head: dict[str, str]) -> int:
    """The quota year of an inventory: its declaration date, else its appTime, else this year."""
    for name in ("declTime", "appTime"):
        value = (head.get(name) or "").strip()
        if len(value) >= 4 and value[:4].isdigit():
            return int(value[:4])
    return datetime.now(UTC).year


def _latest(rows: Iterable[_Row] | None) -> _Row | None:
    return max(rows, key=lambda r: r.order) if rows else None


@dataclass(frozen=True)
class _Assessed:
    """The tax assessment of a shipment's inventory and the ledger row it makes."""

    buyer_id_number: str
    year: int
    ebc_code: str
    order_no: str
    assessment: tax.TaxAssessment

    @property
    def pk(self) -> tuple[str, int, str, str]:
        return (self.buyer_id_number, self.year, self.ebc_code, self.order_no)

    def row(self) -> dict[str, Any]:
        return {
            "buyer_id_number": self.buyer_id_number,
            "year": self.year,
            "ebc_code": self.ebc_code,
            "order_no": self.order_no,
            "amount": str(self.assessment.counts_toward_annual),
        }


@dataclass
class _ShipmentResult:
    ebp_code: str
    order_no: str
    state: str
    missing: list[str]
    findings: list[dict[str, Any]]
    parties: list[str]
    ebc_code: str | None = None
    mode: str | None = None
    buyer_id_number: str | None = None

    def summary(self, *, findings: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ebpCode": self.ebp_code,
            "orderNo": self.order_no,
            "state": self.state,
            "missing": self.missing,
        }
        if findings:
            out["findings"] = self.findings
        return out

    def row(self) -> dict[str, Any]:
        return {
            "ebp_code": self.ebp_code,
            "order_no": self.order_no,
            "ebc_code": self.ebc_code,
            "state": self.state,
            "missing": self.missing,
            "findings": self.findings,
            "parties": self.parties,
            "mode": self.mode,
            "buyer_id_number": self.buyer_id_number,
        }


class _Live:
    """The live (current, not withdrawn) documents as they will be after this message."""

    def __init__(self, rows: Iterable[_Row]) -> None:
        self.legs: dict[tuple[str, str], dict[str, list[_Row]]] = {}
        self.waybills_by_key: dict[tuple[str, str], list[_Row]] = {}
        self.waybills_by_order: dict[str, list[_Row]] = {}
        self.inventories_by_waybill: dict[tuple[str, str], list[_Row]] = {}
        for row in rows:
            if row.kind == Kind.WAYBILL:
                self.waybills_by_key.setdefault(row.logistics_key, []).append(row)
                self.waybills_by_order.setdefault(row.order_no or "", []).append(row)
            elif row.kind in _SHIPMENT_KINDS:
                self.legs.setdefault(row.shipment_key, {}).setdefault(row.kind, []).append(row)
                if row.kind == Kind.INVENTORY:
                    self.inventories_by_waybill.setdefault(row.logistics_key, []).append(row)

    def shipments_of_waybill(self, row: _Row) -> set[tuple[str, str]]:
        """Keyed shipments a waybill belongs to: via an inventory naming it, or sharing its orderNo."""
        found = {inv.shipment_key for inv in self.inventories_by_waybill.get(row.logistics_key, ())}
        found |= {k for k in self.legs if k[1] == row.order_no and k[0]}
        return found

    def shipment(self, key: tuple[str, str]) -> recon.Shipment:
        legs = self.legs.get(key, {})
        order = _latest(legs.get(Kind.ORDER))
        payment = _latest(legs.get(Kind.PAYMENT))
        inventory = _latest(legs.get(Kind.INVENTORY))
        waybill = None
        if inventory is not None:
            waybill = _latest(self.waybills_by_key.get(inventory.logistics_key))
        if waybill is None and key[0]:
            # no inventory yet, or its waybill has not arrived: the order's waybill (reconciliation then
            # reports a key mismatch rather than a missing leg)
            waybill = _latest(self.waybills_by_order.get(key[1]))
        return recon.Shipment(
            order=order.document if order else None,
            payment=payment.document if payment else None,
            waybill=waybill.document if waybill else None,
            inventory=inventory.document if inventory else None,
        )

    def blank_shipment(self, order_no: str) -> recon.Shipment | None:
        waybill = _latest(self.waybills_by_order.get(order_no))
        return recon.Shipment(waybill=waybill.document) if waybill else None


def _touched(news: list[_New], live: _Live) -> tuple[list[tuple[str, str]], list[str]]:
    """Keyed shipments to reconcile again (in order of first mention) and orderNos of waybill-only ones."""
    changed: list[_Row] = []
    for new in news:
        if new.tracked and new.stored and new.row.kind in _SHIPMENT_KINDS:
            changed.append(new.row)
            if new.replaces is not None and not new.replaces.withdrawn:
                changed.append(new.replaces)
    keyed: list[tuple[str, str]] = []
    blanks: list[str] = []
    for row in changed:
        if row.kind == Kind.WAYBILL:
            targets = sorted(live.shipments_of_waybill(row))
            if not targets:
                blanks.append(row.order_no or "")
            keyed.extend(targets)
        else:
            keyed.append(row.shipment_key)
    return list(dict.fromkeys(keyed)), list(dict.fromkeys(blanks))


def _legs(s: recon.Shipment) -> list[Document]:
    return [d for d in (s.order, s.payment, s.waybill, s.inventory) if d is not None]


def _encode_cursor(updated_at: datetime, row_id: int) -> str:
    raw = json.dumps([updated_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, row_id = json.loads(raw)
        return datetime.fromisoformat(ts), int(row_id)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _document_dict(r: asyncpg.Record) -> dict[str, Any]:
    mtype = BY_CODE.get(r["message_type"])
    names = mtype.keys if mtype else ("key1", "key2")
    out: dict[str, Any] = {
        "id": r["id"],
        "index": r["doc_index"],
        "doc_guid": r["doc_guid"],
        "kind": r["kind"],
        "message_type": r["message_type"],
        "keys": dict(zip(names, (r["key1"], r["key2"]), strict=False)),
        "app_type": r["app_type"],
        "app_time": r["app_time"],
        "app_status": r["app_status"],
        "path": r["path"],
        "is_current": r["is_current"],
        "withdrawn": r["withdrawn"],
        "superseded_by": r["superseded_by"],
        "parties": list(r["parties"]),
        "head": r["head"],
        "lines": r["lines"],
    }
    if "message_guid" in r:
        out["message_guid"] = r["message_guid"]
        out["received_at"] = _iso(r["received_at"])
    return out


# --- the store -------------------------------------------------------------------------------


class Store:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        tax_rates: tax.TaxRates = tax.DEFAULT_RATES,
        tolerance: Decimal = Decimal("0"),
        max_batch: int = 32,
        max_parallel: int = 4,
    ) -> None:
        self.pool = pool
        self.tax_rates = tax_rates
        self.tolerance = tolerance
        self.max_batch = max_batch  # messages per transaction, at most
        self.max_parallel = max_parallel  # transactions (pool connections) ingesting at once, at most
        self._queue: collections.deque[_Job] = collections.deque()
        self._workers = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str = BEGIN_TRANSACTION) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            await conn.execute(begin)
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):  # the connection may be gone; the error that matters is raised
                    await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    async def ingest(self, msg: ParsedMessage, raw: bytes, *, submitter: str, source: str = "xml") -> IngestResult:
        """Store a validated message and reconcile what it touches; commits before returning.

        Raises :class:`Conflict` (nothing stored; the caller records the rejection). Messages that
        arrive together share one transaction (see :meth:`_drain`); each is still judged on its own,
        in arrival order, seeing the ones before it, and none is answered before the commit.
        """
        if source not in ("xml", "json"):
            raise ValueError(f"source must be 'xml' or 'json', got {source!r}")
        job = _Job(msg, raw, hashlib.sha256(raw).digest(), submitter, source, _up_front_locks(msg))
        self._queue.append(job)
        if self._workers < self.max_parallel:
            self._workers += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await job.future

    async def aclose(self) -> None:
        """Wait for the messages already handed over (call before closing the pool)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self) -> None:
        """Take what is waiting, up to max_batch messages, as one transaction; repeat until nothing waits.

        At most max_parallel of these run at once. Under load the messages pile up while a batch runs,
        so the next batch is bigger: BEGIN, the locks, COMMIT (its WAL flush) and the pool's reset are
        paid once per batch instead of once per message. An idle gateway answers each message alone.
        """
        try:
            while self._queue:
                batch: list[_Job] = []
                while self._queue and len(batch) < self.max_batch:
                    job = self._queue.popleft()
                    if not job.future.done():  # the caller went away before it started: nothing to do
                        batch.append(job)
                if batch:
                    await self._run_batch(batch)
        finally:
            self._workers -= 1

    async def _run_batch(self, jobs: list[_Job]) -> None:
        try:
            outcomes = await self._batch(jobs)
        except Exception as exc:
            if len(jobs) > 1:
                # One message broke the transaction (or the connection went): run them one by one, so
                # that only the guilty one fails.
                for job in jobs:
                    await self._run_batch([job])
                return
            job = jobs[0]
            retry = job.attempts < _ATTEMPTS and (
                isinstance(exc, asyncpg.DeadlockDetectedError)
                # a twin with other content committed first: the next attempt reports the conflict
                or (isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == "messages_guid_key")
            )
            if retry:
                job.attempts += 1
                await self._run_batch([job])
                return
            if isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == "documents_current_key_idx":
                exc = Conflict(
                    [_issue("state.duplicate", job.msg.path, f"a concurrent message took the same key ({exc.detail})")]
                )
            outcomes = [exc]
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    async def _batch(self, jobs: list[_Job]) -> list[IngestResult | Exception]:
        """The jobs in one transaction, in order; a Conflict answers its job and the others go on."""
        locks = sorted({lock for job in jobs for lock in job.locks})
        outcomes: list[IngestResult | Exception] = []
        async with self._transaction(_begin_and_lock(locks)) as conn:
            locked = set(locks)
            for job in jobs:
                try:
                    outcomes.append(await self._ingest(conn, job, locked))
                except Conflict as exc:  # raised before the job wrote anything
                    outcomes.append(exc)
        return outcomes

    async def _ingest(self, conn: asyncpg.Connection, job: _Job, locked: set[int]) -> IngestResult:
        msg, raw, sha = job.msg, job.raw, job.sha
        mtype = msg.type
        news = _new_documents(msg)
        refs = _Refs()
        keys: list[tuple[str, str, str]] = []
        buyers: set[tuple[str, int]] = set()
        for new in news:
            if new.tracked:
                keys.append(new.key)
                refs.add(new.row)
                if new.row.kind == Kind.INVENTORY:
                    buyers.add(_buyer(new.row.head))
        # Read, decide, find the shipments touched. When that reaches beyond the locks taken up front (a
        # replaced payment or waybill named another order; a waybill belongs to an inventory of another
        # orderNo), take those locks too and read again: only what is read under the locks counts.
        while True:
            stored, current, rows, ledger = await self._read_state(conn, msg.guid, keys, refs, buyers)
            if stored is not None:
                return _replay(stored, msg, sha)
            issues = _decide(news, current)
            if issues:
                raise Conflict(issues)
            more = _Refs()
            for new in news:
                if new.replaces is not None and not new.replaces.withdrawn:
                    more.add(new.replaces)
            gone = {new.replaces.id for new in news if new.replaces is not None}
            live = _Live([row for row in rows.values() if row.id not in gone] + [n.row for n in news if n.live])
            keyed, blanks = _touched(news, live)
            shipments = {key: live.shipment(key) for key in keyed}
            orders = more.orders() | {k[1] for k in keyed} | set(blanks)
            orders |= {(s.waybill.head.get("orderNo") or "").strip() for s in shipments.values() if s.waybill}
            wanted = {_lock_id(_LOCK_ORDER, o) for o in orders}
            if refs.covers(more) and wanted <= locked:
                break
            refs.merge(more)
            await self._lock(conn, locked, wanted)

        ledger_rows, ledger_drops = await self._assess_ledger(conn, locked, shipments, news, ledger)
        results: dict[tuple[str, str], _ShipmentResult] = {}
        drop_blanks: set[str] = set()
        for key, shipment in shipments.items():
            results[key] = self._reconcile(key, shipment, ledger_rows.get(key))
            if shipment.waybill is not None:
                drop_blanks.add((shipment.waybill.head.get("orderNo") or "").strip())
        for order_no in blanks:
            if order_no in drop_blanks:
                continue
            blank = live.blank_shipment(order_no)
            if blank is None:
                drop_blanks.add(order_no)
            else:
                results[("", order_no)] = self._reconcile(("", order_no), blank, None)

        body = self._response(msg, news, results, live)
        replaced = [(new.replaces.id, new.doc.index) for new in news if new.replaces is not None and new.stored]
        if replaced:
            await conn.execute(SUPERSEDE, [r[0] for r in replaced])
        message_id = await conn.fetchval(
            WRITE_INGEST,
            msg.guid,
            mtype.code,
            sha,
            raw.decode("utf-8", errors="replace"),
            job.source,
            job.submitter,
            body,
            202,
            [self._document_row(new) for new in news if new.stored],
            [r[0] for r in replaced],
            [r[1] for r in replaced],
            [r.row() for r in results.values()],
            sorted(drop_blanks - {o for (e, o) in results if not e}),
            list({a.pk: a.row() for a in ledger_rows.values()}.values()),
            *ledger_drops,
        )
        body["id"] = message_id  # the statement stored it in the response the same way
        return IngestResult(message_id, msg.guid, mtype.code, 202, body, replay=False)

    @staticmethod
    async def _read_state(
        conn: asyncpg.Connection,
        guid: str,
        keys: list[tuple[str, str, str]],
        refs: _Refs,
        buyers: set[tuple[str, int]],
    ) -> tuple[
        dict[str, Any] | None,
        dict[tuple[str, str, str], _Row],
        dict[int, _Row],
        dict[tuple[str, int], dict[tuple[str, str], Decimal]],
    ]:
        """The message stored under the guid, the current rows of the message's keys, the live rows of the
        shipments it involves, and the ledger of its buyers."""
        pairs = sorted(buyers)
        row = await conn.fetchrow(
            READ_STATE,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            *refs.params(),
            guid,
            [p[0] for p in pairs],
            [p[1] for p in pairs],
        )
        assert row is not None
        current: dict[tuple[str, str, str], _Row] = {}
        stored: dict[int, _Row] = {}
        for r in row["documents"]:
            doc = _Row.from_json(r)
            if r["role"] == "key":
                current[(doc.message_type, doc.key1, doc.key2)] = doc
            else:
                stored[doc.id] = doc
        return row["stored"], current, stored, _ledger_book(pairs, row["ledger"])

    async def _lock(self, conn: asyncpg.Connection, locked: set[int], wanted: Iterable[int]) -> None:
        todo = sorted(set(wanted) - locked)
        if todo:
            await conn.fetchval(LOCK_MORE, todo)
            locked.update(todo)

    async def _assess_ledger(
        self,
        conn: asyncpg.Connection,
        locked: set[int],
        shipments: dict[tuple[str, str], recon.Shipment],
        news: list[_New],
        ledger: dict[tuple[str, int], dict[tuple[str, str], Decimal]],
    ) -> tuple[dict[tuple[str, str], _Assessed], tuple[list[str], list[str], list[str | None], list[int | None]]]:
        """Tax-assess every shipment's inventory against its buyer's ledger (under the buyer's lock)."""
        inventories = {key: s.inventory for key, s in shipments.items() if s.inventory is not None}
        assessed: dict[tuple[str, str], _Assessed] = {}
        keep: dict[tuple[str, str], tuple[str, int]] = {}
        if inventories:
            buyers = {key: _buyer(inv.head) for key, inv in inventories.items()}
            missing = sorted(set(buyers.values()) - set(ledger))
            if missing:
                # inventories already stored, reassessed because another leg changed: lock, then read
                await self._lock(conn, locked, [_lock_id(_LOCK_BUYER, b) for b, _ in missing])
                found = await conn.fetchval(READ_LEDGER, [p[0] for p in missing], [p[1] for p in missing])
                ledger.update(_ledger_book(missing, found))
            for key, inv in inventories.items():
                buyer, year = buyers[key]
                own = ((inv.head.get("ebcCode") or "").strip(), (inv.head.get("orderNo") or "").strip())
                rows = ledger[(buyer, year)]
                used = sum((amount for k, amount in rows.items() if k != own), Decimal(0))
                order = shipments[key].order
                assessment = tax.assess(inv, annual_used=used, rates=self.tax_rates, order=order)
                rows[own] = assessment.counts_toward_annual  # later inventories of this message see it
                assessed[key] = _Assessed(buyer, year, own[0], own[1], assessment)
                keep[own] = (buyer, year)
        # Inventories this message touched or re-assessed: one ledger row each, none once withdrawn.
        touched = set(keep)
        for new in news:
            if new.stored and new.row.kind == Kind.INVENTORY:
                touched.add((new.row.ebc_code or "", new.row.order_no or ""))
                if new.replaces is not None:
                    touched.add((new.replaces.ebc_code or "", new.replaces.order_no or ""))
        inventories_touched = sorted(touched)
        kept = [keep.get(k) for k in inventories_touched]
        drops = (
            [k[0] for k in inventories_touched],
            [k[1] for k in inventories_touched],
            [k[0] if k else None for k in kept],
            [k[1] if k else None for k in kept],
        )
        return assessed, drops

    def _reconcile(
        self,
        key: tuple[str, str],
        shipment: recon.Shipment,
        assessed: _Assessed | None,
    ) -> _ShipmentResult:
        outcome = recon.reconcile(shipment, tolerance=self.tolerance)
        findings = list(outcome.findings)
        state = recon.ShipmentState(outcome.state)
        if assessed is not None:
            findings.extend(assessed.assessment.findings)
            if assessed.assessment.blocking:
                state = recon.ShipmentState.MISMATCHED  # same precedence as reconcile's own findings
        parties = sorted({p for d in _legs(shipment) for p in document_parties(d)})
        inv, order = shipment.inventory, shipment.order
        source = inv or order
        return _ShipmentResult(
            ebp_code=key[0],
            order_no=key[1],
            state=state.value,
            missing=[str(k) for k in outcome.missing],
            findings=[f.as_dict() for f in findings],
            parties=parties,
            ebc_code=_text(source.head, "ebcCode") if source else None,
            mode=_text(inv.head, "tradeMode") if inv else None,
            buyer_id_number=_text(source.head, "buyerIdNumber") if source else None,
        )

    @staticmethod
    def _document_row(new: _New) -> dict[str, Any]:
        row, head = new.row, new.doc.head
        return {
            "doc_index": row.doc_index,
            "doc_guid": head.get("guid", ""),
            "kind": row.kind,
            "key1": row.key1,
            "key2": row.key2,
            "order_no": row.order_no,
            "ebp_code": row.ebp_code,
            "ebc_code": row.ebc_code,
            "logistics_code": row.logistics_code,
            "logistics_no": row.logistics_no,
            "pay_code": _text(head, "payCode"),
            "pay_transaction_id": _text(head, "payTransactionId"),
            "app_type": _text(head, "appType"),
            "app_time": row.app_time or None,
            "app_status": _text(head, "appStatus"),
            "path": row.path,
            "head": head,
            "lines": row.lines,
            "parties": row.parties,
            "is_current": new.tracked,
            "withdrawn": row.withdrawn,
        }

    @staticmethod
    def _response(
        msg: ParsedMessage,
        news: list[_New],
        results: dict[tuple[str, str], _ShipmentResult],
        live: _Live,
    ) -> dict[str, Any]:
        documents = []
        for new in news:
            shipment = None
            if new.stored and new.row.kind in _SHIPMENT_KINDS:
                row = new.row
                if row.kind == Kind.WAYBILL:
                    targets = sorted(live.shipments_of_waybill(row)) or [("", row.order_no or "")]
                else:
                    targets = [row.shipment_key]
                found = results.get(targets[0])
                shipment = found.summary() if found else None
            documents.append(
                DocumentOutcome(
                    index=new.doc.index,
                    doc_guid=new.doc.head.get("guid", ""),
                    kind=new.row.kind,
                    keys=_key_names(new),
                    outcome=new.outcome,
                    shipment=shipment,
                    code=new.code,
                    message=new.message,
                ).as_dict()
            )
        return {
            "id": None,  # set by WRITE_INGEST when it allocates it
            "guid": msg.guid,
            "message_type": msg.type.code,
            "documents": documents,
            "shipments": [r.summary(findings=True) for r in results.values()],
        }

    # --- rejections and reads ------------------------------------------------------------------

    async def record_rejection(
        self,
        *,
        raw: bytes,
        submitter: str,
        guid: str | None,
        message_type: str | None,
        issues: list[Issue],
        http_status: int,
    ) -> None:
        """Keep a refused message for audit (its first 64 KiB) with the issues that refused it."""
        text = raw[: 64 * 1024].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        async with self._transaction() as conn:
            await conn.execute(
                INSERT_REJECTION,
                submitter,
                guid,
                message_type,
                text,
                len(raw),
                [i.as_dict() for i in issues],
                http_status,
            )

    async def get_message(self, guid: str) -> dict[str, Any] | None:
        """The message row, its stored documents (head, lines, key state) and its XML."""
        async with self._transaction() as conn:
            m = await conn.fetchrow(SELECT_MESSAGE, guid)
            if m is None:
                return None
            docs = await conn.fetch(SELECT_MESSAGE_DOCUMENTS, m["id"])
        return {
            "id": m["id"],
            "guid": m["guid"],
            "message_type": m["message_type"],
            "sha256": bytes(m["sha256"]).hex(),
            "source": m["source"],
            "submitter": m["submitter"],
            "received_at": _iso(m["received_at"]),
            "http_status": m["http_status"],
            "response": m["response"],
            "documents": [_document_dict(d) for d in docs],
            "raw_xml": m["raw_xml"],
        }

    async def get_shipment(self, ebp_code: str, order_no: str) -> dict[str, Any] | None:
        """The shipment's state and findings with every version of its documents (current and history)."""
        async with self._transaction() as conn:
            s = await conn.fetchrow(SELECT_SHIPMENT, ebp_code, order_no)
            if s is None:
                return None
            docs = await conn.fetch(SELECT_SHIPMENT_DOCUMENTS, ebp_code, order_no)
        out = self._shipment_dict(s)
        out["buyer_id_number"] = s["buyer_id_number"]
        out["documents"] = [_document_dict(d) for d in docs]
        return out

    async def list_shipments(
        self,
        *,
        state: str | None = None,
        ebp_code: str | None = None,
        ebc_code: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        parties: list[str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = True,
    ) -> dict[str, Any]:
        """A page of shipments by updated_at (newest first by default), keyset-paginated.

        ``parties`` restricts to shipments carrying one of those enterprise codes (tenant view);
        ``since`` is inclusive, ``until`` exclusive. ``next_cursor`` is None on the last page. A
        malformed cursor raises ValueError.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        filters = {
            "state": state,
            "ebp_code": ebp_code,
            "ebc_code": ebc_code,
            "since": since,
            "until": until,
            "parties": parties,
        }
        clauses: list[str] = []
        args: list[Any] = []
        for name, value in filters.items():
            if value is not None:
                args.append(list(value) if isinstance(value, list) else value)
                clauses.append(_LIST_FILTERS[name].format(len(args)))
        if cursor:
            ts, row_id = _decode_cursor(cursor)
            args.extend((ts, row_id))
            clauses.append(_LIST_AFTER[newest_first].format(len(args) - 1, len(args)))
        args.append(limit + 1)
        sql = (
            _LIST_COLUMNS
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + _LIST_ORDER[newest_first]
            + f" LIMIT ${len(args)}"
        )
        async with self._transaction() as conn:
            rows = await conn.fetch(sql, *args)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": [self._shipment_dict(r) for r in rows],
            "next_cursor": _encode_cursor(rows[-1]["updated_at"], rows[-1]["id"]) if more else None,
        }

    @staticmethod
    def _shipment_dict(r: asyncpg.Record) -> dict[str, Any]:
        return {
            "ebpCode": r["ebp_code"],
            "orderNo": r["order_no"],
            "ebcCode": r["ebc_code"],
            "state": r["state"],
            "missing": list(r["missing"]),
            "findings": r["findings"],
            "parties": list(r["parties"]),
            "mode": r["mode"],
            "created_at": _iso(r["created_at"]),
            "updated_at": _iso(r["updated_at"]),
        }
