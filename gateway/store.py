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

Round trips of a typical message: BEGIN, guid check + id allocation + locks, one read of every
current row involved, (ledger read for inventories), (supersede for changes), one write, COMMIT.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
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
_LOCK_KEY, _LOCK_ORDER, _LOCK_BUYER = 1, 2, 3  # advisory lock classes (pg_advisory_xact_lock(int, int))

# --- SQL (every runtime query of the store) ---------------------------------------------------

_DOC_COLUMNS = (
    "d.id, d.message_id, d.doc_index, d.doc_guid, d.kind, d.message_type, d.key1, d.key2, d.order_no, d.ebp_code,"
    " d.ebc_code, d.logistics_code, d.logistics_no, d.app_type, d.app_time, d.app_status, d.path, d.head, d.lines,"
    " d.parties, d.is_current, d.withdrawn, d.superseded_by"
)

#: $1 lock classes, $2 lock keys, $3 number of documents, $4 message guid. Takes the locks in a fixed
#: order (no deadlock between messages that know their locks up front), allocates the ids and finds a
#: message already stored under the guid.
BEGIN_INGEST = """
SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS message_id,
       ARRAY(SELECT nextval(pg_get_serial_sequence('documents', 'id')) FROM generate_series(1, $3::int)) AS doc_ids,
       (SELECT count(pg_advisory_xact_lock(l.c, l.h))
          FROM (SELECT DISTINCT t.c, hashtext(t.k) AS h FROM unnest($1::int4[], $2::text[]) AS t(c, k)
                ORDER BY 1, 2) AS l) AS locks,
       m.id AS stored_id, m.sha256 AS stored_sha256, m.response AS stored_response,
       m.http_status AS stored_status, m.message_type AS stored_type
  FROM (SELECT 1) AS one LEFT JOIN messages AS m ON m.guid = $4
"""

#: The message stored under a guid ($1), with the columns BEGIN_INGEST gives.
SELECT_STORED = """
SELECT m.id AS stored_id, m.sha256 AS stored_sha256, m.response AS stored_response,
       m.http_status AS stored_status, m.message_type AS stored_type
  FROM messages AS m WHERE m.guid = $1
"""

#: More locks found after the first read (same classes as BEGIN_INGEST).
LOCK_MORE = """
SELECT count(pg_advisory_xact_lock(l.c, l.h))
  FROM (SELECT DISTINCT t.c, hashtext(t.k) AS h FROM unnest($1::int4[], $2::text[]) AS t(c, k) ORDER BY 1, 2) AS l
"""

#: Everything one message needs, read after the locks: the current rows of its keys ($1-$3: type, key1,
#: key2), and the live legs of the shipments involved — named by the message ($4, $5: ebpCode,
#: orderNo), holding an inventory that points at one of its waybills ($6, $7: logisticsCode,
#: logisticsNo) or sharing the orderNo of one of its waybills ($8) — plus the live waybills those
#: shipments, those order numbers and the message's inventories ($9, $10) point at.
READ_STATE = f"""
WITH keyed AS (
    SELECT t.ebp, t.ono FROM unnest($4::text[], $5::text[]) AS t(ebp, ono)
    UNION
    SELECT d.ebp_code, d.order_no
      FROM unnest($6::text[], $7::text[]) AS w(lc, ln)
      JOIN documents AS d ON d.logistics_code = w.lc AND d.logistics_no = w.ln
     WHERE d.kind = 'inventory' AND d.is_current AND NOT d.withdrawn
    UNION
    SELECT s.ebp_code, s.order_no FROM shipments AS s WHERE s.order_no = ANY ($8::text[]) AND s.ebp_code <> ''
), legs AS MATERIALIZED (
    SELECT d.* FROM keyed AS k JOIN documents AS d ON d.ebp_code = k.ebp AND d.order_no = k.ono
     WHERE d.kind IN ('order', 'payment', 'inventory') AND d.is_current AND NOT d.withdrawn
)
SELECT 'key' AS role, m.guid AS message_guid, {_DOC_COLUMNS}
  FROM unnest($1::text[], $2::text[], $3::text[]) AS k(mt, k1, k2)
  JOIN documents AS d ON d.message_type = k.mt AND d.key1 = k.k1 AND d.key2 = k.k2 AND d.is_current
  JOIN messages AS m ON m.id = d.message_id
UNION ALL
SELECT 'leg', NULL, {_DOC_COLUMNS} FROM legs AS d
UNION ALL
SELECT 'waybill', NULL, {_DOC_COLUMNS} FROM documents AS d
 WHERE d.kind = 'waybill' AND d.is_current AND NOT d.withdrawn
   AND d.order_no IN (SELECT ono FROM keyed UNION SELECT unnest($8::text[]))
UNION ALL
SELECT 'waybill', NULL, {_DOC_COLUMNS}
  FROM (SELECT logistics_code, logistics_no FROM legs WHERE kind = 'inventory'
        UNION SELECT * FROM unnest($9::text[], $10::text[])) AS w(lc, ln)
  JOIN documents AS d ON d.logistics_code = w.lc AND d.logistics_no = w.ln
 WHERE d.kind = 'waybill' AND d.is_current AND NOT d.withdrawn
"""

#: The ledger rows of the buyers involved ($1 buyerIdNumber, $2 year), read under their locks.
READ_LEDGER = """
SELECT l.buyer_id_number, l.year, l.ebc_code, l.order_no, l.amount
  FROM unnest($1::text[], $2::int[]) AS b(buyer, year)
  JOIN tax_ledger AS l ON l.buyer_id_number = b.buyer AND l.year = b.year
"""

#: $1 old ids, $2 the ids of the rows that replace them. Runs before the new rows are inserted, since
#: the unique index on current keys is checked row by row.
SUPERSEDE = """
UPDATE documents AS d SET is_current = false, superseded_by = u.new_id
  FROM unnest($1::bigint[], $2::bigint[]) AS u(old_id, new_id)
 WHERE d.id = u.old_id
"""

#: The message, its documents, the shipments, the '' shipments to drop and the ledger, in one
#: statement. $1-$9 the message row; $10 documents, $11 shipments, $12 orderNos of '' shipments to
#: delete, $13 ledger rows to upsert, $14 ledger rows to delete (per ebcCode + orderNo, except the
#: kept buyer and year) — all JSON arrays of objects.
WRITE_INGEST = """
WITH m AS (
    INSERT INTO messages (id, guid, message_type, sha256, raw_xml, source, submitter, response, http_status)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    RETURNING id
), d AS (
    INSERT INTO documents (id, message_id, doc_index, doc_guid, kind, message_type, key1, key2, order_no, ebp_code,
                           ebc_code, logistics_code, logistics_no, pay_code, pay_transaction_id, app_type, app_time,
                           app_status, path, head, lines, parties, is_current, withdrawn)
    SELECT x.id, $1, x.doc_index, x.doc_guid, x.kind, $3, x.key1, x.key2, x.order_no, x.ebp_code,
           x.ebc_code, x.logistics_code, x.logistics_no, x.pay_code, x.pay_transaction_id, x.app_type, x.app_time,
           x.app_status, x.path, x.head, x.lines, x.parties, x.is_current, x.withdrawn
      FROM jsonb_to_recordset($10::jsonb) AS x(
           id bigint, doc_index int, doc_guid text, kind text, key1 text, key2 text, order_no text, ebp_code text,
           ebc_code text, logistics_code text, logistics_no text, pay_code text, pay_transaction_id text,
           app_type text, app_time text, app_status text, path text, head jsonb, lines jsonb, parties text[],
           is_current boolean, withdrawn boolean)
    RETURNING 1
), s AS (
    INSERT INTO shipments AS s (ebp_code, order_no, ebc_code, state, missing, findings, parties, mode,
                                buyer_id_number)
    SELECT x.ebp_code, x.order_no, x.ebc_code, x.state, x.missing, x.findings, x.parties, x.mode, x.buyer_id_number
      FROM jsonb_to_recordset($11::jsonb) AS x(
           ebp_code text, order_no text, ebc_code text, state text, missing text[], findings jsonb,
           parties text[], mode text, buyer_id_number text)
    ON CONFLICT (ebp_code, order_no) DO UPDATE
       SET ebc_code = EXCLUDED.ebc_code, state = EXCLUDED.state, missing = EXCLUDED.missing,
           findings = EXCLUDED.findings, mode = EXCLUDED.mode, buyer_id_number = EXCLUDED.buyer_id_number,
           parties = ARRAY(SELECT DISTINCT p FROM unnest(s.parties || EXCLUDED.parties) AS p ORDER BY p),
           updated_at = now()
    RETURNING 1
), blank AS (
    DELETE FROM shipments AS s USING jsonb_array_elements_text($12::jsonb) AS x(order_no)
     WHERE s.ebp_code = '' AND s.order_no = x.order_no
    RETURNING 1
), ledger_put AS (
    INSERT INTO tax_ledger AS l (buyer_id_number, year, ebc_code, order_no, amount)
    SELECT x.buyer_id_number, x.year, x.ebc_code, x.order_no, x.amount
      FROM jsonb_to_recordset($13::jsonb) AS x(buyer_id_number text, year int, ebc_code text, order_no text,
                                                amount numeric)
    ON CONFLICT (buyer_id_number, year, ebc_code, order_no) DO UPDATE
       SET amount = EXCLUDED.amount, updated_at = now()
    RETURNING 1
), ledger_drop AS (
    DELETE FROM tax_ledger AS l
     USING jsonb_to_recordset($14::jsonb) AS x(ebc_code text, order_no text, keep_buyer text, keep_year int)
     WHERE l.ebc_code = x.ebc_code AND l.order_no = x.order_no
       AND (x.keep_buyer IS NULL OR l.buyer_id_number <> x.keep_buyer OR l.year <> x.keep_year)
    RETURNING 1
)
SELECT (SELECT count(*) FROM d) AS documents, (SELECT count(*) FROM s) AS shipments
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
WITH own AS (
    SELECT d.* FROM documents AS d
     WHERE d.ebp_code = $1 AND d.order_no = $2 AND d.kind IN ('order', 'payment', 'inventory')
), docs AS (
    SELECT * FROM own
    UNION
    SELECT d.* FROM documents AS d WHERE d.kind = 'waybill' AND d.order_no = $2
    UNION
    SELECT d.* FROM (SELECT DISTINCT logistics_code, logistics_no FROM own WHERE kind = 'inventory') AS w
      JOIN documents AS d ON d.logistics_code = w.logistics_code AND d.logistics_no = w.logistics_no
     WHERE d.kind = 'waybill'
)
SELECT m.guid AS message_guid, m.received_at, {_DOC_COLUMNS}
  FROM docs AS d JOIN messages AS m ON m.id = d.message_id
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
        return asdict(self)


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

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> _Row:
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
    def order(self) -> tuple[str, int]:
        """Sort key of 'latest': appTime, then arrival."""
        return (self.app_time, self.id)


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


def _new_documents(msg: ParsedMessage, doc_ids: Sequence[int]) -> list[_New]:
    mtype = msg.type
    tracked = mtype.direction is Direction.DECLARATION
    out = []
    for doc, doc_id in zip(msg.documents, doc_ids, strict=True):
        head = doc.head
        keys = [v.strip() for v in doc.keys]
        row = _Row(
            id=doc_id, kind=mtype.kind.value, message_type=mtype.code, key1=keys[0],
            key2=keys[1] if len(keys) > 1 else "", order_no=_text(head, "orderNo"), ebp_code=_text(head, "ebpCode"),
            ebc_code=_text(head, "ebcCode"), logistics_code=_text(head, "logisticsCode"),
            logistics_no=_text(head, "logisticsNo"), app_time=(head.get("appTime") or "").strip(),
            doc_index=doc.index, path=doc.path, head=head, lines=doc.lines,
            parties=sorted(document_parties(doc)), withdrawn=False, doc=doc,
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


def _replay(stored: asyncpg.Record, msg: ParsedMessage, sha: bytes) -> IngestResult:
    """The stored answer for a resent message, or a conflict when the guid came with other content."""
    if bytes(stored["stored_sha256"]) != sha:
        raise Conflict(
            [
                _issue(
                    "state.guid_conflict",
                    f"{msg.path}/@guid",
                    f"a different message with guid {msg.guid} ({stored['stored_type']}) was already accepted; "
                    "a new message needs a new guid",
                )
            ]
        )
    return IngestResult(
        message_id=stored["stored_id"],
        guid=msg.guid,
        message_type=stored["stored_type"],
        http_status=stored["stored_status"],
        body=stored["stored_response"],
        replay=True,
    )


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
    ) -> None:
        self.pool = pool
        self.tax_rates = tax_rates
        self.tolerance = tolerance

    async def ingest(self, msg: ParsedMessage, raw: bytes, *, submitter: str, source: str = "xml") -> IngestResult:
        """Store a validated message and reconcile what it touches; commits before returning.

        Raises :class:`Conflict` (nothing stored; the caller records the rejection).
        """
        if source not in ("xml", "json"):
            raise ValueError(f"source must be 'xml' or 'json', got {source!r}")
        sha = hashlib.sha256(raw).digest()
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await self._ingest(conn, msg, raw, sha, submitter, source)
            except asyncpg.DeadlockDetectedError:
                if attempt == _ATTEMPTS:
                    raise
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "messages_guid_key" and attempt < _ATTEMPTS:
                    continue  # a twin committed first; the next attempt replays it or reports the conflict
                if exc.constraint_name == "documents_current_key_idx":
                    raise Conflict(
                        [_issue("state.duplicate", msg.path, f"a concurrent message took the same key ({exc.detail})")]
                    ) from None
                raise
        raise AssertionError("unreachable")

    async def _ingest(
        self, conn: asyncpg.Connection, msg: ParsedMessage, raw: bytes, sha: bytes, submitter: str, source: str
    ) -> IngestResult:
        mtype = msg.type
        tracked = mtype.direction is Direction.DECLARATION
        lock_classes: list[int] = []
        lock_keys: list[str] = []
        if tracked:
            for doc in msg.documents:
                lock_classes.append(_LOCK_KEY)
                lock_keys.append(_SEP.join((mtype.code, *(v.strip() for v in doc.keys))))
                if mtype.kind.value in _SHIPMENT_KINDS:
                    lock_classes.append(_LOCK_ORDER)
                    lock_keys.append((doc.head.get("orderNo") or "").strip())
                if mtype.kind is Kind.INVENTORY:
                    lock_classes.append(_LOCK_BUYER)
                    lock_keys.append((doc.head.get("buyerIdNumber") or "").strip())
        head = await conn.fetchrow(BEGIN_INGEST, lock_classes, lock_keys, len(msg.documents), msg.guid)
        assert head is not None
        if head["stored_id"] is not None:
            return _replay(head, msg, sha)
        locked: set[tuple[int, str]] = set(zip(lock_classes, lock_keys, strict=True))
        message_id: int = head["message_id"]
        news = _new_documents(msg, head["doc_ids"])

        refs = _Refs()
        keys: list[tuple[str, str, str]] = []
        for new in news:
            if new.tracked:
                keys.append(new.key)
                refs.add(new.row)
        # Read, decide, find the shipments touched. When that reaches beyond the locks taken up front (a
        # replaced payment or waybill named another order; a waybill belongs to an inventory of another
        # orderNo), take those locks too and read again: only what is read under the locks counts.
        while True:
            current, stored = await self._read_state(conn, keys, refs)
            issues = _decide(news, current)
            if issues:
                # The guid check ran before the locks were granted: a twin of this very message may have
                # committed meanwhile, and it is its replay that must be answered, not a duplicate.
                twin = await conn.fetchrow(SELECT_STORED, msg.guid)
                if twin is not None:
                    return _replay(twin, msg, sha)
                raise Conflict(issues)
            more = _Refs()
            for new in news:
                if new.replaces is not None and not new.replaces.withdrawn:
                    more.add(new.replaces)
            gone = {new.replaces.id for new in news if new.replaces is not None}
            live = _Live([row for row in stored.values() if row.id not in gone] + [n.row for n in news if n.live])
            keyed, blanks = _touched(news, live)
            shipments = {key: live.shipment(key) for key in keyed}
            orders = more.orders() | {k[1] for k in keyed} | set(blanks)
            orders |= {(s.waybill.head.get("orderNo") or "").strip() for s in shipments.values() if s.waybill}
            wanted = {(_LOCK_ORDER, o) for o in orders}
            if refs.covers(more) and wanted <= locked:
                break
            refs.merge(more)
            await self._lock(conn, locked, wanted)

        ledger_rows, ledger_drops = await self._assess_ledger(conn, locked, shipments, news)
        results: dict[tuple[str, str], _ShipmentResult] = {}
        drop_blanks: set[str] = set()
        for key, shipment in shipments.items():
            results[key] = self._reconcile(key, shipment, ledger_rows.get(key))
            if shipment.waybill is not None:
                drop_blanks.add((shipment.waybill.head.get("orderNo") or "").strip())
        for order_no in dict.fromkeys(blanks):
            if order_no in drop_blanks:
                continue
            blank = live.blank_shipment(order_no)
            if blank is None:
                drop_blanks.add(order_no)
            else:
                results[("", order_no)] = self._reconcile(("", order_no), blank, None)

        body = self._response(message_id, msg, news, results, live)
        superseded = [(new.replaces.id, new.row.id) for new in news if new.replaces is not None and new.stored]
        if superseded:
            await conn.execute(SUPERSEDE, [s[0] for s in superseded], [s[1] for s in superseded])
        await conn.fetchrow(
            WRITE_INGEST,
            message_id,
            msg.guid,
            mtype.code,
            sha,
            raw.decode("utf-8", errors="replace"),
            source,
            submitter,
            body,
            202,
            [self._document_row(new) for new in news if new.stored],
            [r.row() for r in results.values()],
            sorted(drop_blanks - {o for (e, o) in results if not e}),
            list({a.pk: a.row() for a in ledger_rows.values()}.values()),
            ledger_drops,
        )
        return IngestResult(message_id, msg.guid, mtype.code, 202, body, replay=False)

    @staticmethod
    async def _read_state(
        conn: asyncpg.Connection, keys: list[tuple[str, str, str]], refs: _Refs
    ) -> tuple[dict[tuple[str, str, str], _Row], dict[int, _Row]]:
        """Current rows of the message's keys, and the live rows of the shipments it involves."""
        current: dict[tuple[str, str, str], _Row] = {}
        stored: dict[int, _Row] = {}
        if keys:
            rows = await conn.fetch(
                READ_STATE, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], *refs.params()
            )
            for r in rows:
                row = _Row.from_record(r)
                if r["role"] == "key":
                    current[(row.message_type, row.key1, row.key2)] = row
                else:
                    stored[row.id] = row
        return current, stored

    async def _lock(
        self, conn: asyncpg.Connection, locked: set[tuple[int, str]], wanted: Iterable[tuple[int, str]]
    ) -> None:
        todo = sorted(set(wanted) - locked)
        if todo:
            await conn.fetchval(LOCK_MORE, [c for c, _ in todo], [k for _, k in todo])
            locked.update(todo)

    async def _assess_ledger(
        self,
        conn: asyncpg.Connection,
        locked: set[tuple[int, str]],
        shipments: dict[tuple[str, str], recon.Shipment],
        news: list[_New],
    ) -> tuple[dict[tuple[str, str], _Assessed], list[dict[str, Any]]]:
        """Tax-assess every shipment's inventory against its buyer's ledger (under the buyer's lock)."""
        inventories = {key: s.inventory for key, s in shipments.items() if s.inventory is not None}
        assessed: dict[tuple[str, str], _Assessed] = {}
        keep: dict[tuple[str, str], tuple[str, int]] = {}
        if inventories:
            buyers = {
                key: ((inv.head.get("buyerIdNumber") or "").strip(), _ledger_year(inv.head))
                for key, inv in inventories.items()
            }
            await self._lock(conn, locked, [(_LOCK_BUYER, b) for b, _ in buyers.values()])
            pairs = sorted(set(buyers.values()))
            ledger: dict[tuple[str, int], dict[tuple[str, str], Decimal]] = {p: {} for p in pairs}
            for r in await conn.fetch(READ_LEDGER, [p[0] for p in pairs], [p[1] for p in pairs]):
                ledger[(r["buyer_id_number"], r["year"])][(r["ebc_code"], r["order_no"])] = r["amount"]
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
        drops = [
            {
                "ebc_code": ebc,
                "order_no": order_no,
                "keep_buyer": keep[(ebc, order_no)][0] if (ebc, order_no) in keep else None,
                "keep_year": keep[(ebc, order_no)][1] if (ebc, order_no) in keep else None,
            }
            for ebc, order_no in sorted(touched)
        ]
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
            "id": row.id,
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
        message_id: int,
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
            "id": message_id,
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
        async with self.pool.acquire() as conn:
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
        async with self.pool.acquire() as conn:
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
        async with self.pool.acquire() as conn:
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
        async with self.pool.acquire() as conn:
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
