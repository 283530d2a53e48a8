"""Persistence: messages, business documents with their key state, shipments and the tax ledger.

:meth:`Store.ingest` takes a validated :class:`~gateway.documents.ParsedMessage` and, in one
transaction that commits before it returns, stores it and brings every shipment it touches up to
date. What the message does — the key rules of spec §6.2 / §5.3, which shipments it touches, their
reconciliation and tax assessment, the answer — is decided by the pure :mod:`gateway.keystate`;
this module reads the rows it needs and writes what it decided:

* the same guid with the same bytes replays the stored answer; with other bytes it is a conflict
  (``state.guid_conflict``); a refused message raises :class:`Conflict` and stores nothing;
* concurrency: transaction-scoped advisory locks (guid, document keys, the orderNos of the shipments,
  waybill keys, buyers; see keystate.LOCK_*) serialise messages touching the same things, and the
  unique index on current keys stays the last guard; a deadlock between transactions that found
  extra locks late is retried;
* throughput: messages arriving together share a transaction (at most ``max_batch``, at most
  ``max_parallel`` transactions at once, another one only for a full batch; :mod:`gateway.batching`). A
  batch takes messages whose locks are disjoint (the others wait for a later batch) and runs them as a
  wave: one read, the pure judgement per message, one write — so a busy gateway pays about two round
  trips per batch, plus COMMIT, instead of five round trips per message (the next batch, waiting, begins
  with its locks in the round trip of the COMMIT before it: see Store._commit); a message that found it
  needs more locks goes to a later wave of the same transaction. Each message is still judged as if
  alone, in arrival order, seeing the ones before it; none is answered before the commit.

Every statement reaches a handful of rows through an index, with plans that stay index-driven as the
tables grow (see db.BEGIN_PLANNED).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg
import cbec_queue
import structlog

from gateway import db, realtime, summary, tax
from gateway.batching import Batcher, Follow
from gateway.documents import Document, ParsedMessage
from gateway.errors import Issue
from gateway.keystate import (
    BY_INVT_NO,
    CODES,
    LOCK_BUYER,
    LOCK_KEY,
    LOCK_ORDER,
    LOCK_SUMMARISED,
    SEP,
    WITHDRAWN_UNSENT,
    BlockedBook,
    Conflict,
    Defer,
    DocumentOutcome,
    LedgerBook,
    Lock,
    New,
    Refs,
    Row,
    ShipmentResult,
    State,
    WaybillBuyers,
    Write,
    blocked_shipments,
    issue,
    judge,
    likely_buyer,
    new_documents,
    reopen,
    reopen_refs,
    restore,
    temp_saved,
    text,
    up_front_locks,
)
from gateway.messages import BY_CODE, LEGS, TRANSPORT_KINDS, Kind
from gateway.outbox import (
    CANCEL_OPEN,
    LOCK_IDS,
    WAREHOUSE_CANCELS,
    concluded_returns,
    enqueue_insert,
    job_rows,
    latest_return,
    other_platform,
    wake_endpoints,
    warehouse_cancel_item,
    waybill_type_of,
)
from gateway.receipts import CODES as _RECEIPT_CODES
from gateway.receipts import RANK_CONCLUDED, RANK_DECLARING, RANK_RELEASED
from gateway.reconcile import Finding, Side
from gateway.render import with_pointers

if TYPE_CHECKING:
    from gateway.forward import JobSpec
    from gateway.outbox import Outbox, Reassess, Restore

__all__ = ["CODES", "Conflict", "DocumentOutcome", "IngestResult", "Store"]

# gateway.receipts is not among gateway.codes.MODULES: its codes are documented through this module.
CODES = {
    **CODES, **_RECEIPT_CODES,
    "site.waybill_on_two_deliveries": "warning: the shipment's waybill is listed by two live deliveries (入库明细单 "
    "CEB711) of different keys — two B/Ls, or two sites: a parcel is unloaded into a supervision site once; one of "
    "them wants a change or a withdrawal. Worked out when the shipment is read, not stored; it holds nothing back",
}  # fmt: skip

_ATTEMPTS = 3

log = structlog.get_logger("gateway.store")

# --- SQL (every runtime query of the store) ---------------------------------------------------

_DOC_COLUMNS = (
    "d.id, d.message_id, d.doc_index, d.doc_guid, d.kind, d.message_type, d.key1, d.key2, d.order_no, d.ebp_code,"
    " d.ebc_code, d.logistics_code, d.logistics_no, d.app_type, d.app_time, d.app_status, d.path, d.head, d.lines,"
    " d.parties, d.is_current, d.withdrawn, d.superseded_by"
)

#: The columns of a document row as READ_STATE reads it: plus whether customs took it (a receipt of rank "2
#: declaring" or higher), which tells the outbox when releasing a held inventory is worth a statement; and of an
#: import inventory whether customs concluded its cancellation (the current CEB623 of its key receipted 399 or above)
#: with no first declaration (appType 1) since (keystate.Row.cancelled; an export one's: EXPORT_FLAGS); and of an
#: import cancellation whether it is spent: concluded, and its inventory declared anew since (keystate.Row.spent);
#: and of an import inventory the lines of the return customs concluded for it (keystate.Row.returned,
#: gateway.outbox.latest_return); and of an inventory (CEB621, CEB603) whether customs released the row itself (a
#: receipt of 800 or above; receipts are monotonic, a later 100 does not lower it): a change or withdrawal of it is
#: refused (keystate.Row.released, state.inventory_released); and of an import inventory the invtNo customs gave it
#: (its receipts), which its cancellation and return must name (keystate.Row.invt_no). Columns of the row, no
#: subquery: ingest pays nothing.
_READ_COLUMNS = (
    f"{_DOC_COLUMNS}, (d.forward_state = 'receipted' AND d.customs_rank >= {RANK_DECLARING}) AS receipted,"
    " d.forward_state = 'rejected' AS rejected, d.forward_state = 'failed' AS failed, d.forward_state = 'held' AS held,"
    " CASE WHEN d.message_type = 'CEB621' THEN EXISTS ("
    "SELECT 1 FROM documents AS c WHERE c.message_type = 'CEB623' AND c.key1 = d.key1 AND c.key2 = d.key2"
    f" AND c.is_current AND c.forward_state = 'receipted' AND c.customs_rank >= {RANK_CONCLUDED}"
    " AND NOT EXISTS (SELECT 1 FROM documents AS n WHERE n.ebp_code = d.ebp_code AND n.order_no = d.order_no"
    " AND n.message_type = d.message_type AND n.key1 = d.key1 AND n.key2 = d.key2 AND n.app_type = '1'"
    " AND n.id > c.id AND n.id <= d.id))"
    " ELSE false END AS cancelled,"
    " CASE WHEN d.message_type = 'CEB623' THEN d.forward_state = 'receipted'"
    f" AND d.customs_rank >= {RANK_CONCLUDED} AND EXISTS (SELECT 1 FROM documents AS n WHERE n.ebp_code = d.ebp_code"
    " AND n.order_no = d.order_no AND n.message_type = 'CEB621' AND n.key1 = d.key1 AND n.key2 = d.key2"
    " AND n.app_type = '1' AND n.id > d.id)"
    " ELSE false END AS spent,"
    f" CASE WHEN d.message_type = 'CEB621' THEN {latest_return('d')} END AS returned,"
    " CASE WHEN d.message_type IN ('CEB621', 'CEB603') THEN"
    f" d.forward_state = 'receipted' AND d.customs_rank >= {RANK_RELEASED} ELSE false END AS released,"
    " CASE WHEN d.message_type = 'CEB621' THEN d.invt_no END AS invt_no"
)

#: Of a key's current row the gateway holds (spec §6.7), whether customs has nothing of its declaration nor will have
#: unless it is released (keystate.Row.unseen): it and every version before it back to its first declaration (appType
#: 1) held or unsent, each held one alone in its message (a held message of several goes for the others: what it
#: carries reaches customs). The versions walked back through superseded_by (migration 290's partial index). Only for
#: the rows of the keys a message names, and only a held one: a change or withdrawal of what the gateway holds.
_UNSEEN = """CASE WHEN d.forward_state = 'held' THEN (
    WITH RECURSIVE back AS (
        SELECT d.id, d.message_id, d.app_type, d.forward_state
        UNION ALL
        SELECT p.id, p.message_id, p.app_type, p.forward_state
          FROM back AS b,
               LATERAL (SELECT * FROM documents AS p WHERE p.superseded_by = b.id OFFSET 0) AS p
         WHERE b.app_type <> '1' AND b.forward_state IN ('held', 'unsent')
    )
    SELECT bool_or(b.app_type = '1') AND bool_and(b.forward_state = 'unsent' OR (b.forward_state = 'held'
           AND NOT EXISTS (SELECT 1 FROM documents AS o
                            WHERE o.message_id = b.message_id AND o.id <> b.id AND o.forward_state = 'held')))
      FROM back AS b) ELSE false END"""

#: The export inventories' and cancellations' flags (keystate.Row.cancelled / spent; $1 document ids), read only when
#: a read holds one: an export cancellation has its own key and is stored with its inventory's ebpCode and orderNo
#: (keystate._numbered), matched by the inventory's agentCode (its key1) and ebcCode (an order has one inventory).
#: Kept out of READ_STATE's columns: there, these two subqueries doubled PostgreSQL's CPU per imported message.
#: And of the inventories named by invtNo ($2 document ids, a subset of $1) whether customs released them
#: (keystate.Row.released): a version of the declaration — since its key was last declared (appType 1) — receipted
#: 800 or above (CEB604; a change sent after the release is the current version, the release still stands).
EXPORT_FLAGS = f"""
SELECT d.id,
       CASE WHEN d.message_type = 'CEB603' AND d.id = ANY ($2::bigint[]) THEN EXISTS (
            SELECT 1 FROM documents AS v
             WHERE v.ebp_code = d.ebp_code AND v.order_no = d.order_no AND v.message_type = d.message_type
               AND v.key1 = d.key1 AND v.key2 = d.key2 AND v.id <= d.id AND v.forward_state = 'receipted'
               AND v.customs_rank >= {RANK_RELEASED}
               AND NOT EXISTS (SELECT 1 FROM documents AS n
                                WHERE n.ebp_code = d.ebp_code AND n.order_no = d.order_no
                                  AND n.message_type = d.message_type AND n.key1 = d.key1 AND n.key2 = d.key2
                                  AND n.app_type = '1' AND n.id > v.id AND n.id <= d.id)) ELSE false END AS released,
       CASE WHEN d.message_type = 'CEB603' THEN EXISTS (
            SELECT 1 FROM documents AS c
             WHERE c.ebp_code = d.ebp_code AND c.order_no = d.order_no AND c.message_type = 'CEB605'
               AND c.key1 = d.key1 AND c.ebc_code = d.ebc_code AND c.is_current AND c.forward_state = 'receipted'
               AND c.customs_rank >= {RANK_CONCLUDED}
               AND NOT EXISTS (SELECT 1 FROM documents AS n
                                WHERE n.ebp_code = d.ebp_code AND n.order_no = d.order_no
                                  AND n.message_type = d.message_type AND n.app_type = '1'
                                  AND n.id > c.id AND n.id <= d.id)) ELSE false END AS cancelled,
       CASE WHEN d.message_type = 'CEB605' THEN d.forward_state = 'receipted' AND d.customs_rank >= {RANK_CONCLUDED}
            AND EXISTS (SELECT 1 FROM documents AS n
                         WHERE n.ebp_code = d.ebp_code AND n.order_no = d.order_no AND n.message_type = 'CEB603'
                           AND n.app_type = '1' AND n.id > d.id) ELSE false END AS spent
  FROM documents AS d
 WHERE d.id = ANY ($1::bigint[])
"""


def _seen_shipments(ebp: str, ono: str) -> str:
    """SQL: the shipments (the arrays ``ebp``, ``ono``) as stored — state, missing legs, findings, flow — each with the
    documents its findings name (``sides``: message type, guid, parties; by documents_doc_guid_every_kind_idx, as
    gateway.outbox.DOCUMENTS_BY_GUID), as a JSON array (keystate.ShipmentResult.stored): what the answer of a
    cancellation or return shows of its inventory's shipment, cut for the submitter's key without reading more."""
    return f"""(SELECT coalesce(json_agg(json_build_object(
            'ebp_code', s.ebp_code, 'order_no', s.order_no, 'state', s.state, 'missing', s.missing,
            'findings', s.findings, 'flow', s.flow,
            'sides', (SELECT coalesce(json_agg(json_build_object('message_type', d.message_type, 'doc_guid', d.doc_guid,
                                                                 'parties', d.parties)), '[]')
                        FROM (SELECT DISTINCT g.guid
                                FROM jsonb_array_elements(s.findings) AS f,
                                     LATERAL (VALUES (f -> 'left' ->> 'guid'), (f -> 'right' ->> 'guid')) AS g(guid)
                               WHERE g.guid IS NOT NULL) AS g,
                             LATERAL (SELECT * FROM documents AS d WHERE d.doc_guid = g.guid OFFSET 0) AS d))), '[]')
       FROM unnest({ebp}::text[], {ono}::text[]) AS k(ebp, ono),
            LATERAL (SELECT * FROM shipments AS s WHERE s.ebp_code = k.ebp AND s.order_no = k.ono OFFSET 0) AS s)"""


#: The live retail export returns (CEB213, stored with their inventory's ebpCode and orderNo) of the shipments ($1
#: ebpCode, $2 orderNo) of the export inventories a wave names by invtNo (keystate.State.returns): what a new return
#: adds to (A.32); and those shipments as stored (_seen_shipments: what an export cancellation's or return's answer
#: shows). Read only when a read holds such an inventory: no import message pays for it.
RETURNS_OF = f"""
SELECT (SELECT coalesce(json_agg(x), '[]')
          FROM (SELECT {_READ_COLUMNS}
                  FROM unnest($1::text[], $2::text[]) AS s(ebp, ono),
                       LATERAL (SELECT * FROM documents AS d
                                 WHERE d.ebp_code = s.ebp AND d.order_no = s.ono OFFSET 0) AS d
                 WHERE d.message_type = 'CEB213' AND d.is_current AND NOT d.withdrawn) AS x) AS returns,
       {_seen_shipments("$1", "$2")} AS seen
"""

#: The export types whose flags EXPORT_FLAGS reads.
_EXPORT_FLAGGED = frozenset({"CEB603", "CEB605"})

#: More locks, found after a read: $1 lock ids (see _lock_id). Only tried: waiting for them while holding
#: others could deadlock with a transaction that took them in order at BEGIN; when one is busy the batch
#: starts again with them among its BEGIN locks.
LOCK_MORE = "SELECT bool_and(pg_try_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k"

#: Everything a wave of messages needs, read under their locks, as one row of three JSON values:
#: ``stored`` — the messages already stored under their guids ($11);
#: ``documents`` — the current rows of their keys ($1-$3: type, key1, key2; role "key") and the live
#: legs of the shipments involved (role "leg") — named by the messages ($4, $5: ebpCode, orderNo),
#: holding an inventory that points at one of their waybills ($6, $7: logisticsCode, logisticsNo) or
#: sharing the orderNo of one of their waybills ($8) — plus the live waybills (role "waybill") those
#: shipments, those order numbers and their inventories ($9, $10) point at;
#: ``ledger`` — the ledger rows of the buyers involved ($12 buyerIdNumber, $13 year), amounts as text, in the order
#: they were blocked by the annual limit (the blocked ones with their inventory's ebpCode);
#: ``ids`` — $14 new message ids, for the messages the wave will write (the write statement takes them, so that
#: their jobs are known before it and go in it; an id not used is a gap in the sequence, nothing more).
#: The documents named by invtNo ($15 type, $16 invtNo; role "numbered", with the invtNo): the current row of each
#: key one of whose versions customs gave that number (documents.invt_no, from its receipts), unless the key was
#: declared anew since (for whatever order: an export inventory's key is the agent's copNo, which it may use again
#: for another order once the first is withdrawn). That later appType 1 is found through sql/270's partial index of
#: the numbered types' declarations: the literal type list lets the generic plan use it, and OFFSET 0 keeps the
#: NOT EXISTS a probe per number (as an anti join, the empty tables' plan read the whole index for each).
#: ``seen`` — the shipments ($17 ebpCode, $18 orderNo) import cancellations and returns name, as stored
#: (_seen_shipments): empty arrays for every other message, which pay a subquery over nothing.
_NUMBERED_TYPES = ", ".join(f"'{t}'" for t in sorted(set(BY_INVT_NO.values())))
READ_STATE = f"""
WITH keyed AS (
    SELECT t.ebp, t.ono FROM unnest($4::text[], $5::text[]) AS t(ebp, ono)
    UNION
    SELECT i.ebp_code, i.order_no
      FROM unnest($6::text[], $7::text[]) AS w(lc, ln),
           LATERAL (SELECT d.ebp_code, d.order_no, d.kind, d.is_current, d.withdrawn FROM documents AS d
                     WHERE d.logistics_code = w.lc AND d.logistics_no = w.ln OFFSET 0) AS i
     WHERE i.kind = 'inventory' AND i.is_current AND NOT i.withdrawn
    UNION
    SELECT s.ebp_code, s.order_no
      FROM unnest($8::text[]) AS o(ono),
           LATERAL (SELECT s.ebp_code, s.order_no FROM shipments AS s WHERE s.order_no = o.ono OFFSET 0) AS s
     WHERE s.ebp_code <> ''
), legs AS MATERIALIZED (
    SELECT d.*
      FROM keyed AS k,
           LATERAL (SELECT * FROM documents AS d WHERE d.ebp_code = k.ebp AND d.order_no = k.ono OFFSET 0) AS d
     WHERE d.kind IN ('order', 'payment', 'inventory') AND d.is_current AND NOT d.withdrawn
)
SELECT
    (SELECT coalesce(json_agg(m), '[]')
       FROM unnest($11::text[]) AS g(guid),
            LATERAL (SELECT m.guid, m.id, encode(m.sha256, 'hex') AS sha256, m.response, m.http_status,
                            m.message_type, m.submitter
                       FROM messages AS m WHERE m.guid = g.guid OFFSET 0) AS m) AS stored,
    (SELECT coalesce(json_agg(x), '[]')
       FROM (SELECT 'key' AS role, (SELECT m.guid FROM messages AS m WHERE m.id = d.message_id) AS message_guid,
                    NULL AS numbered, {_READ_COLUMNS}, {_UNSEEN} AS unseen
               FROM unnest($1::text[], $2::text[], $3::text[]) AS k(mt, k1, k2),
                    LATERAL (SELECT * FROM documents AS d
                              WHERE d.message_type = k.mt AND d.key1 = k.k1 AND d.key2 = k.k2 AND d.is_current
                             OFFSET 0) AS d
             UNION ALL
             SELECT 'numbered', (SELECT m.guid FROM messages AS m WHERE m.id = d.message_id), v.no, {_READ_COLUMNS},
                    false
               FROM (SELECT DISTINCT n.no, v.message_type, v.key1, v.key2
                       FROM unnest($15::text[], $16::text[]) AS n(mt, no),
                            LATERAL (SELECT v.id, v.ebp_code, v.order_no, v.message_type, v.key1, v.key2
                                       FROM documents AS v WHERE v.invt_no = n.no OFFSET 0) AS v
                      WHERE v.message_type = n.mt
                        -- not a number of a declaration before the key was declared anew (appType 1): that one is
                        -- gone from customs (cancelled, refused), and the number names nothing live
                        AND NOT EXISTS (SELECT 1 FROM documents AS a
                                         WHERE a.message_type IN ({_NUMBERED_TYPES}) AND a.app_type = '1'
                                           AND a.message_type = v.message_type AND a.key1 = v.key1 AND a.key2 = v.key2
                                           AND a.id > v.id OFFSET 0)) AS v,
                    LATERAL (SELECT * FROM documents AS d
                              WHERE d.message_type = v.message_type AND d.key1 = v.key1 AND d.key2 = v.key2
                                AND d.is_current OFFSET 0) AS d
             UNION ALL
             SELECT 'leg', NULL, NULL, {_READ_COLUMNS}, false FROM legs AS d
             UNION ALL
             SELECT 'waybill', NULL, NULL, {_READ_COLUMNS}, false
               FROM (SELECT ono FROM keyed UNION SELECT unnest($8::text[])) AS o,
                    LATERAL (SELECT * FROM documents AS d WHERE d.kind = 'waybill' AND d.order_no = o.ono OFFSET 0) AS d
              WHERE d.is_current AND NOT d.withdrawn
             UNION ALL
             SELECT 'waybill', NULL, NULL, {_READ_COLUMNS}, false
               FROM (SELECT logistics_code, logistics_no FROM legs WHERE kind = 'inventory'
                     UNION SELECT * FROM unnest($9::text[], $10::text[])) AS w(lc, ln),
                    LATERAL (SELECT * FROM documents AS d
                              WHERE d.logistics_code = w.lc AND d.logistics_no = w.ln OFFSET 0) AS d
              WHERE d.kind = 'waybill' AND d.is_current AND NOT d.withdrawn
            ) AS x) AS documents,
    (SELECT coalesce(json_agg(l ORDER BY l.blocked_at, l.ebc_code, l.order_no), '[]')
       FROM unnest($12::text[], $13::int[]) AS b(buyer, year),
            LATERAL (SELECT l.buyer_id_number, l.year, l.ebc_code, l.order_no, l.amount::text AS amount, l.blocked_at,
                            -- a blocked inventory's shipment: reassessed when the buyer gets quota back
                            (SELECT d.ebp_code FROM documents AS d
                              WHERE d.message_type = 'CEB621' AND d.key1 = l.ebc_code AND d.key2 = l.order_no
                                AND d.is_current AND NOT d.withdrawn AND l.blocked_at IS NOT NULL) AS ebp_code
                       FROM tax_ledger AS l WHERE l.buyer_id_number = b.buyer AND l.year = b.year OFFSET 0) AS l
    ) AS ledger,
    ARRAY(SELECT nextval(pg_get_serial_sequence('messages', 'id')) FROM generate_series(1, $14::int)) AS ids,
    {_seen_shipments("$17", "$18")} AS seen
"""

#: $1 ids of the rows that changes and withdrawals replace. Runs before the new rows are inserted, since
#: the unique index on current keys is checked row by row; WRITE_INGEST then links them to their successors.
SUPERSEDE = "UPDATE documents SET is_current = false WHERE id = ANY ($1::bigint[])"

def _blocking(findings: str) -> str:
    """SQL: the blocking findings of the jsonb array ``findings`` (a finding without ``blocking`` blocks), in order."""
    return f"""(SELECT coalesce(jsonb_agg(f ORDER BY n), '[]')
                 FROM jsonb_array_elements({findings}) WITH ORDINALITY AS x(f, n)
                WHERE (f ->> 'blocking') IS DISTINCT FROM 'false')"""


def _put_shipments(rows: str, told: str) -> str:
    """The upsert of the shipments in the JSON array ``rows`` (ShipmentResult.row); shared by the writes. Each row
    written comes back with the state it had before (``previous_state``, NULL for a new one: migration 460), which
    :func:`_state_changes` reads; and, when it stays in the state ``told`` (as _state_changes'; NULL: no seller has a
    webhook, nothing is looked at), the blocking findings it had (``previous_blocking``, migration 490) and whether
    the write changed them (``blocking_changed``)."""
    return f"""
    INSERT INTO shipments AS s (ebp_code, order_no, ebc_code, state, missing, findings, parties, mode,
                                buyer_id_number, flow)
    SELECT x.ebp_code, x.order_no, x.ebc_code, x.state, x.missing, x.findings, x.parties, x.mode, x.buyer_id_number,
           x.flow
      FROM jsonb_to_recordset({rows}::jsonb) AS x(
           ebp_code text, order_no text, ebc_code text, state text, missing text[], findings jsonb,
           parties text[], mode text, buyer_id_number text, flow text)
    ON CONFLICT (ebp_code, order_no) DO UPDATE
       SET ebc_code = EXCLUDED.ebc_code, state = EXCLUDED.state, previous_state = s.state,
           missing = EXCLUDED.missing,
           findings = EXCLUDED.findings, mode = EXCLUDED.mode, buyer_id_number = EXCLUDED.buyer_id_number,
           flow = EXCLUDED.flow,
           parties = ARRAY(SELECT DISTINCT p FROM unnest(s.parties || EXCLUDED.parties) AS p ORDER BY p),
           updated_at = now(),
           previous_blocking = CASE WHEN {told}::text IS NOT NULL AND s.state = {told}::text
                                         AND EXCLUDED.state = {told}::text
                                    THEN {_blocking("s.findings")} END
    RETURNING s.ebp_code, s.order_no, s.state, s.previous_state, s.parties, s.previous_blocking,
              s.previous_blocking IS NOT NULL AND s.previous_blocking IS DISTINCT FROM {_blocking("s.findings")}
              AS blocking_changed"""


def _state_changes(put: str, told: str) -> str:
    """SQL: the shipments the upsert ``put`` (a _put_shipments CTE) moved to or from the state ``told`` (a text
    parameter, gateway.forward.Router.reconciliation_told; NULL when no seller has a webhook: then nothing is looked
    at), or left in it with other blocking findings, as a JSON array of {ebp_code, order_no, state, previous (NULL: a
    new shipment), parties, previous_findings (the blocking findings before, of one left in the state; else NULL)},
    or NULL for none. A write that leaves every state and what holds a mismatched shipment as it was returns NULL:
    only a change costs the ingest more (Outbox.tell_states)."""
    return f"""(SELECT json_agg(json_build_object('ebp_code', c.ebp_code, 'order_no', c.order_no, 'state', c.state,
                                       'previous', c.previous_state, 'parties', c.parties,
                                       'previous_findings', CASE WHEN c.blocking_changed THEN c.previous_blocking END))
       FROM {put} AS c
      WHERE {told}::text IS NOT NULL
        AND ((c.state IS DISTINCT FROM c.previous_state AND {told}::text IN (c.state, c.previous_state))
             OR c.blocking_changed))"""


def _put_ledger(rows: str) -> str:
    """The upsert of the ledger rows in the JSON array ``rows`` (keystate.assess_into); shared by the writes. A row
    the annual limit blocks keeps the time it was first blocked (the order in which quota given back reopens them)."""
    return f"""
    INSERT INTO tax_ledger AS l (buyer_id_number, year, ebc_code, order_no, amount, returned, blocked_at)
    SELECT x.buyer_id_number, x.year, x.ebc_code, x.order_no, x.amount, x.returned, CASE WHEN x.blocked THEN now() END
      FROM jsonb_to_recordset({rows}::jsonb) AS x(buyer_id_number text, year int, ebc_code text, order_no text,
                                                amount numeric, returned numeric, blocked boolean)
    ON CONFLICT (buyer_id_number, year, ebc_code, order_no) DO UPDATE
       SET amount = EXCLUDED.amount, returned = EXCLUDED.returned, updated_at = now(),
           blocked_at = CASE WHEN EXCLUDED.blocked_at IS NOT NULL THEN coalesce(l.blocked_at, EXCLUDED.blocked_at) END
    RETURNING 1"""


def _drop_ledger(ebc: str, ono: str, buyer: str, year: str) -> str:
    """The delete of the ledger rows of the inventories (ebcCode, orderNo) of the arrays ``ebc``, ``ono``, except the
    kept buyer and year (NULL: keep none); shared by the writes."""
    return f"""
    -- by ctid: the candidates come from one index probe per inventory, whatever the plan
    DELETE FROM tax_ledger AS l
     WHERE l.ctid = ANY (ARRAY(
           SELECT t.ctid
             FROM unnest({ebc}::text[], {ono}::text[], {buyer}::text[], {year}::int[]) AS x(ebc, ono, buyer, year),
                  LATERAL (SELECT t.ctid, t.buyer_id_number, t.year FROM tax_ledger AS t
                            WHERE t.ebc_code = x.ebc AND t.order_no = x.ono OFFSET 0) AS t
            WHERE x.buyer IS NULL OR x.buyer <> t.buyer_id_number OR x.year <> t.year))
    RETURNING 1"""


#: The messages of a wave, their documents, the links from replaced rows, the shipments, the waybill-only
#: shipments to drop, the ledger and the jobs of the messages that go now, in one statement. $1-$8 and $20
#: the message rows (arrays; $20 their ids, from READ_STATE); $9 documents (JSON array of objects, each with
#: its message's guid); $10-$12 the replaced row ids with the guid and doc_index of their successors; $13
#: shipments (JSON); $14 orderNos of waybill-only shipments to delete; $15 ledger rows to upsert (JSON);
#: $16-$19 inventories (ebcCode, orderNo) whose other ledger rows go, except the kept buyer and year (NULL:
#: keep none); $21 the jobs (gateway.outbox.job_rows), $22 the queue's NOTIFY channel; $23 the state whose changes
#: come back as ``state_changes`` (_state_changes; NULL: none).
WRITE_INGEST = f"""
WITH m AS (
    INSERT INTO messages (id, guid, message_type, sha256, raw_xml, source, submitter, response, http_status)
    SELECT u.id, u.guid, u.message_type, u.sha256, u.raw_xml, u.source, u.submitter, u.response, u.http_status
      FROM unnest($20::bigint[], $1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[],
                  $7::jsonb[], $8::int[])
           AS u(id, guid, message_type, sha256, raw_xml, source, submitter, response, http_status)
    RETURNING id, guid, message_type
), d AS (
    INSERT INTO documents (message_id, doc_index, doc_guid, kind, message_type, key1, key2, order_no, ebp_code,
                           ebc_code, logistics_code, logistics_no, pay_code, pay_transaction_id, app_type, app_time,
                           app_status, path, head, lines, parties, is_current, withdrawn, forward_state, cop_msg_id)
    SELECT m.id, x.doc_index, x.doc_guid, x.kind, m.message_type, x.key1, x.key2, x.order_no, x.ebp_code,
           x.ebc_code, x.logistics_code, x.logistics_no, x.pay_code, x.pay_transaction_id, x.app_type, x.app_time,
           x.app_status, x.path, x.head, x.lines, x.parties, x.is_current, x.withdrawn,
           coalesce(x.forward_state, 'none'), x.cop_msg_id
      FROM jsonb_to_recordset($9::jsonb) AS x(
           guid text, doc_index int, doc_guid text, kind text, key1 text, key2 text, order_no text, ebp_code text,
           ebc_code text, logistics_code text, logistics_no text, pay_code text, pay_transaction_id text,
           app_type text, app_time text, app_status text, path text, head jsonb, lines jsonb, parties text[],
           is_current boolean, withdrawn boolean, forward_state text, cop_msg_id text)
      JOIN m ON m.guid = x.guid
    RETURNING id, message_id, doc_index
), linked AS (
    UPDATE documents AS o SET superseded_by = d.id
      FROM unnest($10::bigint[], $11::text[], $12::int[]) AS r(old_id, guid, doc_index), m, d
     WHERE o.id = r.old_id AND m.guid = r.guid AND d.message_id = m.id AND d.doc_index = r.doc_index
    RETURNING 1
), s AS ({_put_shipments("$13", "$23")}
), blank AS (
    DELETE FROM shipments AS s WHERE s.ebp_code = '' AND s.order_no = ANY ($14::text[])
    RETURNING s.order_no, s.customs_status
), ledger_put AS ({_put_ledger("$15")}
), ledger_drop AS ({_drop_ledger("$16", "$17", "$18", "$19")}
), jobs_in AS ({enqueue_insert("$21")}
)
SELECT (SELECT count(*) FROM m) AS messages, {wake_endpoints("jobs_in", "$22")} AS woken,
       ARRAY(SELECT b.order_no FROM blank AS b WHERE b.customs_status <> 'pending') AS taken_over,
       {_state_changes("s", "$23")} AS state_changes
"""

#: The shipments a buyer's quota given back reopened outside an ingest (see reopen_quota) and their inventories' ledger
#: rows: $1 shipments, $2 ledger rows (JSON, as WRITE_INGEST's $13 and $15); $3 as WRITE_INGEST's $23.
WRITE_REOPENED = f"""
WITH s AS ({_put_shipments("$1", "$3")}
), ledger_put AS ({_put_ledger("$2")}
)
SELECT (SELECT count(*) FROM s) AS shipments, (SELECT count(*) FROM ledger_put) AS ledger,
       {_state_changes("s", "$3")} AS state_changes
"""

#: The stored answers of messages ($1 ids), row-locked: to be completed (Store._concluded_unsent).
STORED_RESPONSES = "SELECT id, response FROM messages WHERE id = ANY ($1::bigint[]) ORDER BY id FOR UPDATE"

#: The answers of messages ($1 ids, $2 answers) as completed after their write (Store._concluded_unsent).
SET_RESPONSE = """
UPDATE messages AS m SET response = x.response
  FROM unnest($1::bigint[], $2::jsonb[]) AS x(id, response)
 WHERE m.id = x.id AND m.id = ANY ($1::bigint[])
"""

INSERT_REJECTION = """
INSERT INTO rejected_messages (submitter, guid, message_type, raw, raw_size, issues, http_status)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

#: How much of a refused message's body is kept (record_rejection): enough to see what was sent, not a 4 MiB copy.
REJECTION_RAW_LIMIT = 64 * 1024

_REJECTION_COLUMNS = "id, received_at, submitter, guid, message_type, http_status, raw_size, issues"
#: The filters of a page of refused messages, each NULL for none: $3 message type, $4 an issue's code, $5 since
#: (inclusive) and $6 until (exclusive) received_at.
_REJECTION_FILTERS = """
   AND ($3::text IS NULL OR message_type = $3)
   AND ($4::text IS NULL OR issues @> jsonb_build_array(jsonb_build_object('code', $4::text)))
   AND ($5::timestamptz IS NULL OR received_at >= $5)
   AND ($6::timestamptz IS NULL OR received_at < $6)"""
#: A page of refused messages, newest first: $2 of those with an id below $1, as _REJECTION_FILTERS says; the raw body
#: is left for SELECT_REJECTION. LIST_REJECTIONS_OF: those of one submitter ($7), by its index (migration 280).
LIST_REJECTIONS = f"""
SELECT {_REJECTION_COLUMNS} FROM rejected_messages
 WHERE id < $1 {_REJECTION_FILTERS}
 ORDER BY id DESC LIMIT $2
"""
LIST_REJECTIONS_OF = f"""
SELECT {_REJECTION_COLUMNS} FROM rejected_messages
 WHERE submitter = $7 AND id < $1 {_REJECTION_FILTERS}
 ORDER BY id DESC LIMIT $2
"""
SELECT_REJECTION = f"SELECT {_REJECTION_COLUMNS}, raw FROM rejected_messages WHERE id = $1"
#: The oldest refused messages received more than $1 seconds ago, at most $2 of them (rejection_retention_days).
PRUNE_REJECTIONS = """
DELETE FROM rejected_messages
 WHERE id = ANY (ARRAY(SELECT id FROM rejected_messages WHERE received_at < now() - make_interval(secs => $1)
                        ORDER BY received_at LIMIT $2))
"""

#: The payments last handed over more than $1 seconds ago, oldest first, at most $2 of them
#: (realtime.payment_data_retention_days); their orders go with them (ON DELETE CASCADE). A payment customs asked about
#: since then stays while the question is open: its upload still needs it.
PRUNE_PAYMENT_DATA = """
DELETE FROM payment_data
 WHERE id = ANY (ARRAY(
       SELECT p.id FROM payment_data p
        WHERE p.updated_at < now() - make_interval(secs => $1)
          AND NOT EXISTS (SELECT 1 FROM payment_orders o
                            JOIN realtime_requests q ON q.ebp_code = o.ebp_code AND q.order_no = o.order_no
                           WHERE o.payment_id = p.id AND q.state = 'asked' AND q.closed_at IS NULL
                             AND q.received_at >= now() - make_interval(secs => $1))
        ORDER BY p.updated_at LIMIT $2))
"""
#: Customs' questions asked more than $1 seconds ago, at most $2 of them (the same retention).
PRUNE_PAYMENT_QUESTIONS = """
DELETE FROM realtime_requests
 WHERE id = ANY (ARRAY(SELECT id FROM realtime_requests WHERE received_at < now() - make_interval(secs => $1)
                        ORDER BY received_at LIMIT $2))
"""

SELECT_MESSAGE = """
SELECT id, guid, message_type, sha256, raw_xml, source, submitter, received_at, response, http_status
  FROM messages WHERE guid = $1
"""

MESSAGE_STORED = "SELECT EXISTS (SELECT 1 FROM messages WHERE guid = $1)"

SELECT_MESSAGE_DOCUMENTS = f"SELECT {_DOC_COLUMNS} FROM documents AS d WHERE d.message_id = $1 ORDER BY d.doc_index"

#: The parcels of a site's delivery (CEB711: $1 its head's logisticsCode, $2 its lines' logisticsNo in order), each as
#: the gateway holds it: whether it holds the import waybill (CEB511, current and live), and the shipment of the live
#: import inventory naming the waybill — else of the waybill's orderNo, when one import shipment has it — with its
#: customs status and parties (whom it may be named to: gateway.auth.message_view).
DELIVERY_PARCELS = f"""
SELECT l.n, w.order_no IS NOT NULL AS waybill, s.ebp_code, s.order_no, s.customs_status, s.parties
  FROM unnest($2::text[]) WITH ORDINALITY AS l(no, n)
  LEFT JOIN LATERAL (SELECT d.order_no FROM documents AS d
                      WHERE d.logistics_code = $1 AND d.logistics_no = l.no AND d.kind = 'waybill'
                        AND d.message_type = '{LEGS["import"][Kind.WAYBILL]}' AND d.is_current AND NOT d.withdrawn
                      LIMIT 1) AS w ON true
  LEFT JOIN LATERAL (SELECT d.ebp_code, d.order_no FROM documents AS d
                      WHERE d.logistics_code = $1 AND d.logistics_no = l.no AND d.kind = 'inventory'
                        AND d.message_type = '{LEGS["import"][Kind.INVENTORY]}' AND d.is_current AND NOT d.withdrawn
                      LIMIT 1) AS i ON true
  LEFT JOIN LATERAL (SELECT min(s.ebp_code) AS ebp_code, min(s.order_no) AS order_no,
                            min(s.customs_status) AS customs_status, min(s.parties) AS parties
                       FROM shipments AS s
                      WHERE s.order_no = coalesce(i.order_no, w.order_no) AND s.flow = 'import'
                        AND (i.ebp_code IS NULL OR s.ebp_code = i.ebp_code)
                     HAVING count(*) = 1) AS s ON true
 ORDER BY l.n
"""

#: Every version of every part of a summary application (CEB701) by ($1 agentCode, $2 copNo), newest first: key2 is
#: copNo and msgSeqNo joined by KEY_SEP (documents_summary_cop_no_idx, migration 250).
SELECT_SUMMARY_DOCUMENTS = f"""
SELECT d.* FROM (SELECT {_DOC_COLUMNS} FROM documents AS d
                  WHERE d.kind = 'summary' AND d.key1 = $1 AND split_part(d.key2, E'\\x1f', 1) = $2
                    AND d.message_type = 'CEB701'
                 OFFSET 0) AS d
 ORDER BY d.id DESC
"""

SELECT_SHIPMENT = """
SELECT id, ebp_code, order_no, ebc_code, state, missing, findings, parties, mode, buyer_id_number, flow,
       customs_status, customs_info, customs_updated_at, created_at, updated_at
  FROM shipments WHERE ebp_code = $1 AND order_no = $2
"""

#: The retail export return (CEB213): of the export inventory it names by invtNo, listed on its shipment.
EXPORT_RETURN = next(t.code for t in BY_CODE.values() if t.flow == "export" and t.kind == Kind.REFUND)

#: The transport kinds as an SQL list, as migration 210's partial index names them (the planner matches the two).
TRANSPORT_KINDS_SQL = "(" + ", ".join(f"'{k.value}'" for k in TRANSPORT_KINDS) + ")"

#: Every version of the shipment's legs: order, payment, inventory by ($1 ebpCode, $2 orderNo); waybills by the key
#: any version of its inventory named, and by that orderNo unless another platform uses it too (then a waybill
#: is a shipment's only through its inventory: gateway.keystate.Live.holders). The waybill-only shipment ($1 '')
#: lists every waybill of its orderNo. An export shipment also lists the transport messages (arrival, departure,
#: 清单总分单: CEB507/509/607) whose list names the waybill of any version of its inventory — the head's
#: logisticsCode and a line's logisticsNo (migration 210's index) — every version of them, as they are no leg — and
#: its retail export returns (CEB213: stored with the inventory's ebpCode and orderNo, keystate._numbered) with the
#: site's tallies (CEB215) of the waybill of its inventory or of a return (a parcel may come back under a new one).
#: An import shipment lists the supervision site's deliveries (入库明细单 CEB711, every version) whose list names the
#: waybill of any version of its inventory or one of its waybills (the head's logisticsCode and a line's logisticsNo,
#: migration 500's index): the parcel arrived at the site.
SELECT_SHIPMENT_DOCUMENTS = f"""
WITH own AS MATERIALIZED (
    SELECT d.id, d.kind, d.message_type, d.logistics_code, d.logistics_no FROM documents AS d
     WHERE d.ebp_code = $1 AND d.order_no = $2
       -- its legs, and what cancels or returns its inventory (CEB623, CEB625, CEB605, CEB213): no legs, but the
       -- operators look for them on the shipment
       AND (d.kind IN ('order', 'payment', 'inventory', 'cancel', 'refund') OR d.message_type = '{EXPORT_RETURN}')
), waybills AS MATERIALIZED (
    SELECT d.id, d.message_type, d.logistics_code, d.logistics_no FROM documents AS d
     WHERE d.kind = 'waybill' AND d.order_no = $2 AND ($1 = '' OR NOT {other_platform("$1", "$2")})
       AND NOT EXISTS (SELECT 1 FROM shipments AS x WHERE x.ebp_code = $1 AND x.order_no = $2 AND x.flow <> 'import')
    UNION
    SELECT w.id, w.message_type, w.logistics_code, w.logistics_no
      FROM (SELECT DISTINCT logistics_code, logistics_no, message_type FROM own WHERE kind = 'inventory') AS k,
           LATERAL (SELECT d.id, d.kind, d.message_type, d.logistics_code, d.logistics_no FROM documents AS d
                     WHERE d.logistics_code = k.logistics_code AND d.logistics_no = k.logistics_no OFFSET 0) AS w
     WHERE w.kind = 'waybill' AND w.message_type = {waybill_type_of("k.message_type")}
), ids AS (
    SELECT id FROM own
    UNION
    SELECT id FROM waybills
    UNION
    SELECT t.id
      FROM (SELECT logistics_code, logistics_no FROM own
             WHERE kind = 'inventory' AND message_type = '{LEGS["import"][Kind.INVENTORY]}'
            UNION
            SELECT logistics_code, logistics_no FROM waybills
             WHERE message_type = '{LEGS["import"][Kind.WAYBILL]}') AS k,
           LATERAL (SELECT d.id, d.logistics_code FROM documents AS d
                     WHERE d.kind = '{Kind.DELIVERY.value}'
                       AND d.lines @> jsonb_build_array(jsonb_build_object('logisticsNo', k.logistics_no))
                    OFFSET 0) AS t
     WHERE t.logistics_code = k.logistics_code
    UNION
    SELECT t.id
      FROM (SELECT DISTINCT logistics_code, logistics_no FROM own
             WHERE kind = 'inventory' AND message_type = '{LEGS["export"][Kind.INVENTORY]}') AS k,
           LATERAL (SELECT d.id, d.logistics_code FROM documents AS d
                     WHERE d.kind IN {TRANSPORT_KINDS_SQL}
                       AND d.lines @> jsonb_build_array(jsonb_build_object('logisticsNo', k.logistics_no))
                    OFFSET 0) AS t
     WHERE t.logistics_code = k.logistics_code
    UNION
    SELECT t.id
      FROM (SELECT DISTINCT logistics_code, logistics_no FROM own
             WHERE message_type IN ('{LEGS["export"][Kind.INVENTORY]}', '{EXPORT_RETURN}')) AS k,
           LATERAL (SELECT d.id, d.kind FROM documents AS d
                     WHERE d.logistics_code = k.logistics_code AND d.logistics_no = k.logistics_no OFFSET 0) AS t
     WHERE t.kind = '{Kind.REFUND_TALLY.value}'
)
SELECT m.guid AS message_guid, m.received_at, {_DOC_COLUMNS},
       CASE WHEN d.message_type = 'CEB621' THEN {concluded_returns("d")} END AS concluded_returns
  FROM ids,
       LATERAL (SELECT * FROM documents AS d WHERE d.id = ids.id OFFSET 0) AS d,
       LATERAL (SELECT guid, received_at FROM messages AS m WHERE m.id = d.message_id OFFSET 0) AS m
 ORDER BY d.kind, d.id
"""

_LIST_COLUMNS = (
    "SELECT id, ebp_code, order_no, ebc_code, state, missing, findings, parties, mode, flow, customs_status,"
    " customs_updated_at, created_at, updated_at FROM shipments"
)
#: list_shipments filters (each adds one parameter) and the keyset page condition (two).
_LIST_FILTERS = {
    "state": "state = ${}",
    "customs_status": "customs_status = ${}",
    "ebp_code": "ebp_code = ${}",
    "ebc_code": "ebc_code = ${}",
    "flow": "flow = ${}",
    "mode": "mode = ${}",
    "since": "updated_at >= ${}",
    "until": "updated_at < ${}",
    "customs_since": "customs_updated_at >= ${}",
    "customs_until": "customs_updated_at < ${}",
    "parties": "parties && ${}::text[]",
}
_LIST_AFTER = {True: "(updated_at, id) < (${}, ${})", False: "(updated_at, id) > (${}, ${})"}
_LIST_ORDER = {True: " ORDER BY updated_at DESC, id DESC", False: " ORDER BY updated_at, id"}


# --- public types ----------------------------------------------------------------------------


@dataclass
class IngestResult:
    message_id: int
    guid: str
    message_type: str
    http_status: int
    body: dict[str, Any]
    replay: bool
    #: of a fresh answer, the documents its findings may name (message type, guid, parties): whom they may show a value
    #: to is known without reading them again (gateway.api); empty for a replay
    sides: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Submission:
    """A checked message handed to the store (:meth:`Store.ingest`), as the API process that accepted it knows it.

    ``identity``: what makes a message with a stored guid the same one again (its sha256 is kept); ``raw`` when
    None. A JSON submission passes its content (gateway.pipeline.json_identity).

    ``scope``: the submitting key's enterprise codes, None for a key that may touch everything (see keystate.decide:
    a stored document's key belongs to its parties).

    ``named``: of a summary message (CEB701), the invtNos it names and their inventories as the caller read them
    (gateway.pipeline): the message takes a lock per invtNo and is judged again in the transaction against the live
    applications read under them (gateway.summary.judge_message), so that of two applications naming one inventory
    at once the second sees the first; what may still come right there (an inventory not yet released …) is the
    answer's ``warnings``, stored with it, so a replay answers them too. None for every other message: they pay
    nothing for it.

    ``warnings``: the rules' warnings of the message (gateway.rules.findings, as it was checked): they come first in
    the answer's ``warnings``, stored with it.
    """

    msg: ParsedMessage
    raw: bytes
    submitter: str
    source: str = "xml"
    scope: frozenset[str] | None = None
    identity: bytes | None = None
    named: summary.Named | None = None
    warnings: tuple[Issue, ...] = ()


@dataclass(eq=False)
class _Job:
    """A message waiting for (or in) an ingest transaction, and the future its caller awaits."""

    msg: ParsedMessage
    raw: bytes
    sha: bytes
    submitter: str
    source: str
    arrival: int
    news: list[New]  # its documents, judged (again) in each wave that reads for it
    locks: set[Lock]
    refs: Refs
    scope: frozenset[str] | None = None  # the submitting key's enterprise codes (None: it may touch every document)
    named: summary.Named | None = None  # a summary message's: judged again under its invtNos' locks (see _wave)
    warnings: tuple[Issue, ...] = ()  # the rules' (Submission.warnings)
    future: asyncio.Future[IngestResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _LocksBusy(Exception):
    """A lock found late is held by another transaction: run the batch again, its jobs now listing the locks they
    found late, so that it takes them all at BEGIN (see LOCK_MORE)."""


def _retryable(exc: Exception) -> bool:
    """A message that failed alone runs again on these (see gateway.batching)."""
    return isinstance(exc, asyncpg.DeadlockDetectedError) or (
        # a twin with other content committed first: the next attempt reports the conflict
        isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == "messages_guid_key"
    )


def _failure(job: _Job, exc: Exception) -> Exception:
    """What a message that failed alone answers: a concurrent message that took its key is a conflict."""
    if isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == "documents_current_key_idx":
        return Conflict(
            [issue("state.duplicate", job.msg.path, f"a concurrent message took the same key ({exc.detail})")]
        )
    return exc


@functools.lru_cache(maxsize=1 << 16)  # a shipment's legs, its receipts and its buyer's messages take the same locks
def _lock_id(lock: Lock) -> int:
    """A 64-bit advisory lock id; computed here so that the locks go with BEGIN."""
    digest = hashlib.blake2b(f"{lock[0]}{SEP}{lock[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_ids(jobs: Iterable[_Job]) -> set[int]:
    return {_lock_id(lock) for job in jobs for lock in job.locks}


def _begin_and_lock(lock_ids: Iterable[int]) -> str:
    """db.BEGIN_PLANNED plus the locks, in one round trip (the ids are integers made by _lock_id)."""
    ids = sorted(set(lock_ids))  # one order for every transaction: no deadlock among them
    if not ids:
        return db.BEGIN_PLANNED
    array = ",".join(str(int(i)) for i in ids)
    return f"{db.BEGIN_PLANNED}; SELECT count(pg_advisory_xact_lock(k)) FROM unnest('{{{array}}}'::bigint[]) AS k"


def _replay(stored: dict[str, Any], msg: ParsedMessage, sha: bytes, submitter: str | None = None) -> IngestResult:
    """The stored answer for a resent message, or a conflict when the guid came with other content (naming the stored
    message's type to the key that sent it only: to another, another tenant's message is no more than a guid taken)."""
    if stored["sha256"] != sha.hex():
        which = f" ({stored['message_type']})" if submitter is not None and stored.get("submitter") == submitter else ""
        raise Conflict(
            [
                issue(
                    "state.guid_conflict",
                    f"{msg.path}/@guid",
                    f"a different message with guid {msg.guid}{which} was already accepted; "
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


def _ledger_book(pairs: Iterable[tuple[str, int]], rows: Iterable[dict[str, Any]]) -> tuple[LedgerBook, BlockedBook]:
    """(buyer, year) -> (ebcCode, orderNo) -> amount, with an empty book for buyers without rows; and per (buyer,
    year) the inventories the annual limit blocks, in the order read (the order they were blocked)."""
    book: LedgerBook = {p: {} for p in pairs}
    blocked: BlockedBook = {}
    for r in rows:
        bk = (r["buyer_id_number"], r["year"])
        book[bk][(r["ebc_code"], r["order_no"])] = Decimal(r["amount"])
        if r["blocked_at"] is not None and r["ebp_code"] is not None:
            blocked.setdefault(bk, []).append((r["ebc_code"], r["order_no"], r["ebp_code"]))
    return book, blocked


def _waves(jobs: list[_Job]) -> tuple[list[_Job], list[_Job]]:
    """The next wave (jobs whose locks are disjoint) and the rest; no job overtakes one it shares a lock with."""
    wave: list[_Job] = []
    rest: list[_Job] = []
    seen: set[Lock] = set()
    for job in jobs:
        (rest if job.locks & seen else wave).append(job)
        seen |= job.locks
    return wave, rest


def list_query(
    filters: dict[str, Any], after: tuple[datetime, int] | None, limit: int, newest_first: bool
) -> tuple[str, list[Any]]:
    """The statement of a shipment list page and its arguments: the filters given (not None) of
    ``_LIST_FILTERS``, the keyset condition after ``after`` (updated_at, id) and at most ``limit`` rows."""
    clauses: list[str] = []
    args: list[Any] = []
    for name, value in filters.items():
        if value is not None:
            args.append(list(value) if isinstance(value, list) else value)
            clauses.append(_LIST_FILTERS[name].format(len(args)))
    if after is not None:
        args.extend(after)
        clauses.append(_LIST_AFTER[newest_first].format(len(args) - 1, len(args)))
    args.append(limit)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    return f"{_LIST_COLUMNS}{where}{_LIST_ORDER[newest_first]} LIMIT ${len(args)}", args


def encode_cursor(updated_at: datetime, row_id: int) -> str:
    """An opaque keyset-pagination cursor (the API's and the console's lists)."""
    raw = json.dumps([updated_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, row_id = json.loads(raw)
        if not isinstance(row_id, int) or isinstance(row_id, bool):  # ours carry an integer id (not 1e400)
            raise TypeError("the cursor's id is no integer")
        at = db.utc_time(ts, "the cursor's time")
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
    if not 0 < row_id <= db.MAX_BIGINT:  # a cursor is ours, but a client can write one
        raise ValueError(f"invalid cursor {cursor!r}")
    return at, row_id


def _no_nul(value: Any) -> Any:
    """``value`` with every NUL character in its strings (keys included) replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    return value


async def read_rejections(
    conn: asyncpg.Connection,
    *,
    submitter: str | None = None,
    message_type: str | None = None,
    code: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """A page of refused messages, newest first, without their bodies (the API's and the operators' console's):
    ``submitter`` restricts to one key's (a tenant's view), the other filters as _REJECTION_FILTERS. ``next_cursor`` is
    None on the last page; a malformed cursor raises ValueError."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    before = _rejection_cursor(cursor) if cursor else 2**63 - 1
    args: list[Any] = [before, limit + 1, message_type, code, since, until]
    sql = LIST_REJECTIONS if submitter is None else LIST_REJECTIONS_OF
    if submitter is not None:
        args.append(submitter)
    rows = await conn.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [_rejection_dict(r) for r in rows], "next_cursor": str(rows[-1]["id"]) if more else None}


async def read_rejection(conn: asyncpg.Connection, rejection_id: int) -> dict[str, Any] | None:
    """One refused message with the first 64 KiB of its body as received (``raw_truncated`` when it was longer)."""
    r = await conn.fetchrow(SELECT_REJECTION, rejection_id)
    if r is None:
        return None
    out = _rejection_dict(r)
    out["raw"] = r["raw"]
    out["raw_truncated"] = r["raw_size"] > REJECTION_RAW_LIMIT
    return out


async def prune_rejections(pool: asyncpg.Pool, *, older_than_s: float, batch: int = 5000, max_batches: int = 20) -> int:
    """Delete the refused messages received more than ``older_than_s`` ago, oldest first: a short transaction per
    ``batch``, at most ``max_batches`` a call (a backlog goes over several passes); returns how many."""
    return await _prune(pool, PRUNE_REJECTIONS, older_than_s, batch, max_batches)


async def prune_payment_data(pool: asyncpg.Pool, *, older_than_s: float, batch: int = 5000,
                             max_batches: int = 20) -> tuple[int, int]:  # fmt: skip
    """Delete the payments' raw data last handed over, and customs' questions asked, more than ``older_than_s`` ago
    (as prune_rejections does); returns how many of each."""
    return (await _prune(pool, PRUNE_PAYMENT_DATA, older_than_s, batch, max_batches),
            await _prune(pool, PRUNE_PAYMENT_QUESTIONS, older_than_s, batch, max_batches))  # fmt: skip


async def _prune(pool: asyncpg.Pool, sql: str, older_than_s: float, batch: int, max_batches: int) -> int:
    pruned = 0
    for _ in range(max_batches):
        async with pool.acquire() as conn:
            n = int((await conn.execute(sql, older_than_s, batch)).split()[-1])
        pruned += n
        if n < batch:
            break
    return pruned


def _rejection_cursor(cursor: str) -> int:
    """The id a page of refused messages ends before (the last page's last id, as next_cursor gave it)."""
    before = db.row_id(cursor)
    if before is None:
        raise ValueError("not a cursor of GET /v1/rejections")
    return before


#: Candidate pages one request of GET /v1/summaries/pending reads at most before answering with what it found.
_PENDING_ROUNDS = 10


async def _live_summaries(conn: asyncpg.Connection, invt_nos: list[str]) -> dict[str, list[summary.LiveSummary]]:
    """The live summary applications naming these invtNos, by invtNo (gateway.summary.LIVE_SUMMARIES)."""
    found: dict[str, list[summary.LiveSummary]] = {}
    for r in await conn.fetch(summary.LIVE_SUMMARIES, invt_nos) if invt_nos else []:
        found.setdefault(r["invt_no"], []).append(summary.LiveSummary.from_row(r))
    return found


async def read_pending_summaries(
    pool: asyncpg.Pool, ebc_code: str | None, *, limit: int = 50, cursor: str | None = None
) -> dict[str, Any]:
    """A page of the consignor's export inventories awaiting their summary declaration (gateway.summary.pending), of
    every consignor with ``ebc_code`` None, newest first: ``items`` and ``next_cursor`` (None once every candidate was
    read; a page may hold fewer than ``limit`` when many candidates were not pending). A cursor that is not one raises
    ValueError. GET /v1/summaries/pending and the console's list."""
    before = db.row_id(cursor) if cursor else 2**63 - 1
    if before is None:
        raise ValueError("not a cursor of GET /v1/summaries/pending")
    items: list[dict[str, Any]] = []
    read_all = False
    async with db.transaction(pool, db.BEGIN_SNAPSHOT_PLANNED) as conn:
        for _ in range(_PENDING_ROUNDS):
            rows = await (conn.fetch(summary.PENDING_CANDIDATES, before, limit, ebc_code) if ebc_code is not None
                          else conn.fetch(summary.PENDING_CANDIDATES_ALL, before, limit))
            nos = [r["invt_no"] for r in rows]
            held = {(r["invt_no"], r["key1"], r["key2"]): summary.HeldInventory.from_row(r)
                    for r in await conn.fetch(summary.HELD_INVENTORIES, nos, RANK_CONCLUDED)} if nos else {}
            live = await _live_summaries(conn, nos)
            for r in rows:
                before = r["id"]
                inventory = held.get((r["invt_no"], r["key1"], r["key2"]))
                if inventory is not None and summary.pending(inventory, live.get(r["invt_no"], [])):
                    items.append(_pending_dict(r))
                    if len(items) == limit:
                        break
            if len(rows) < limit and (not rows or before == rows[-1]["id"]):
                read_all = True  # every candidate read
                break
            if len(items) == limit:
                break
    return {"items": items, "next_cursor": None if read_all else str(before)}


# --- the 179 real-time payment data (gateway/realtime.py) -----------------------------------------------------


class PaymentConflict(Exception):
    """Orders of a payment handed over are paid by another stored payment of the platform (nothing was stored)."""

    def __init__(self, order_nos: list[str]) -> None:
        super().__init__(f"orders {', '.join(order_nos)} are paid by another payment of the platform")
        self.order_nos = order_nos


async def store_payment_data(pool: asyncpg.Pool, data: realtime.PaymentData, submitter: str) -> dict[str, Any]:
    """A payment's raw data as its platform hands it over, committed (handed over again, it replaces the stored one,
    and the orders it no longer lists are free again): what POST /v1/payment-data answers. Raises PaymentConflict."""
    async with db.transaction(pool) as conn:
        row = await conn.fetchrow(realtime.UPSERT_PAYMENT, data.ebp_code, data.pay_transaction_id, data.head,
                                  data.lists, submitter)  # fmt: skip
        assert row is not None
        orders = data.order_nos
        await conn.execute(realtime.DROP_ORDERS, row["id"], orders)
        taken = {r["order_no"] for r in await conn.fetch(realtime.TAKE_ORDERS, data.ebp_code, orders, row["id"])}
        if len(taken) < len(orders):
            raise PaymentConflict([o for o in orders if o not in taken])  # rolled back: nothing of it stays
        # customs asked about these orders before the data came: their uploads go now, not at their next retry (customs
        # expects them within minutes), and those that gave up waiting go again
        waiting = await conn.fetch(realtime.WAITING_UPLOADS, data.ebp_code, orders)
        hastened = await cbec_queue.hasten(conn, [w["job_id"] for w in waiting if w["state"] == "queued"])
        given_up = [w["job_id"] for w in waiting if w["state"] == "dead"]
        if given_up:
            await cbec_queue.replay(conn, job_ids=given_up, note=f"the payment data came from {submitter}")
        if hastened or given_up:
            log.info("payment_uploads_resumed", ebp_code=data.ebp_code, hastened=len(hastened), replayed=len(given_up))
    return {"ebpCode": data.ebp_code, "payTransactionId": data.pay_transaction_id, "orderNos": orders,
            "outcome": "created" if row["created"] else "replaced"}  # fmt: skip


class SessionTaken(Exception):
    """Customs' session was asked already, about another order of the platform (nothing was stored)."""

    def __init__(self, session_id: str, order_no: str) -> None:
        super().__init__(f"session {session_id} was asked already, about another order")
        self.order_no = order_no


async def withdraw_payment_data(pool: asyncpg.Pool, ebp_code: str, order_no: str) -> dict[str, Any] | None:
    """The payment that paid an order, withdrawn whole — every order it listed is free again, for the payment handed
    over next to take: what DELETE /v1/payment-data/{ebpCode}/{orderNo} answers; None when no payment paid the
    order. Customs' questions stay; those still waiting wait for the next payment of their order."""
    async with db.transaction(pool) as conn:
        row = await conn.fetchrow(realtime.WITHDRAW_PAYMENT, ebp_code, order_no)
    if row is None:
        return None
    return {"ebpCode": ebp_code, "payTransactionId": row["pay_transaction_id"],
            "orderNos": [item["orderNo"] for item in db.json_value(row["lists"])], "outcome": "withdrawn"}  # fmt: skip


async def take_payment_question(pool: asyncpg.Pool, ebp_code: str, question: realtime.OpenRequest, *,
                                endpoint: str) -> tuple[int, bool]:  # fmt: skip
    """Customs' question for an order's payment data, committed with its upload's job (endpoint ``endpoint``) before
    it is answered: (its id, whether it is new). A session asked again is the same question: no second upload; asked
    again about another order, SessionTaken (one session is one upload, of one question)."""
    async with db.transaction(pool) as conn:
        row = await conn.fetchrow(realtime.ASK, ebp_code, question.order_no, question.session_id,
                                  question.service_time)  # fmt: skip
        if row is None:
            found = await conn.fetchrow(realtime.ASKED, ebp_code, question.session_id)
            assert found is not None  # the conflict's row: questions are never deleted
            if found["order_no"] != question.order_no:
                raise SessionTaken(question.session_id, found["order_no"])
            return int(found["id"]), False
        job_id = await cbec_queue.enqueue(
            conn, endpoint=endpoint, kind="realtime_upload",
            payload={"request_id": row["id"], "ebpCode": ebp_code, "orderNo": question.order_no},
            dedupe_key=f"realtime:{ebp_code}:{question.session_id}")  # fmt: skip
        await conn.execute(realtime.QUESTION_JOB, row["id"], job_id)
    return int(row["id"]), True


async def read_payment_upload(pool: asyncpg.Pool, request_id: int) -> asyncpg.Record | None:
    """A question and the payment its order was paid by (head and lists NULL while none was handed over)."""
    async with pool.acquire() as conn:
        return await conn.fetchrow(realtime.UPLOAD_INPUT, request_id)


async def record_payment_upload(pool: asyncpg.Pool, request_id: int, *, state: str, guid: str,
                                answer: dict[str, Any]) -> None:  # fmt: skip
    """Customs' answer to a question's upload: ``uploaded`` (10000) or ``refused``."""
    async with pool.acquire() as conn:
        await conn.execute(realtime.ANSWERED, request_id, state, guid, answer)


async def read_payment_data(pool: asyncpg.Pool, ebp_code: str, order_no: str) -> dict[str, Any]:
    """An order's stored payment data (None until its platform hands it over) and customs' questions about it, newest
    first: GET /v1/payment-data/{ebpCode}/{orderNo}."""
    async with db.transaction(pool, db.BEGIN_SNAPSHOT_PLANNED) as conn:
        payment, questions = await _payment_of_order(conn, ebp_code, order_no)
    return {
        "ebpCode": ebp_code,
        "orderNo": order_no,
        "payment": None if payment is None else {
            realtime.HEAD: db.json_value(payment["head"]), realtime.LISTS: db.json_value(payment["lists"]),
            "submitter": payment["submitter"], "received_at": _iso(payment["received_at"]),
            "updated_at": _iso(payment["updated_at"]),
        },
        "questions": questions,
    }  # fmt: skip


async def read_payment_questions(
    conn: asyncpg.Connection,
    *,
    state: str = "open",
    ebp_codes: Sequence[str] | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """A page of customs' 179 questions, newest first (GET /v1/payment-data/questions and the console's panel):
    ``state`` one of realtime.QUESTION_STATES (``open``: asked or refused and not closed, those that may need a look;
    ``closed``: those an operator closed); ``ebp_codes`` the platforms (None: every one). Each says whether its order's
    payment was handed over, what became of its upload's job and, closed, who closed it, when and why. ``next_cursor``
    is None on the last page; a malformed cursor raises ValueError."""
    if state not in realtime.QUESTION_STATES:
        raise ValueError(f"state must be one of {', '.join(realtime.QUESTION_STATES)}, found {state!r}")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    before = db.row_id(cursor) if cursor else 2**63 - 1
    if before is None:
        raise ValueError("not a cursor of GET /v1/payment-data/questions")
    sql = {"open": realtime.OPEN_QUESTIONS, "closed": realtime.CLOSED_QUESTIONS}.get(state, realtime.QUESTIONS)
    rows = await conn.fetch(sql, before, limit + 1, None if state in ("open", "closed", "any") else state,
                            None if ebp_codes is None else list(ebp_codes))  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [_question_dict(r) for r in rows], "next_cursor": str(rows[-1]["id"]) if more else None}


def _question_dict(r: asyncpg.Record) -> dict[str, Any]:
    job = None if r["job_id"] is None else {
        "id": r["job_id"], "state": r["job_state"], "attempts": r["job_attempts"], "last_error": r["job_last_error"],
        "run_after": _iso(r["job_run_after"])}  # fmt: skip
    return {"id": r["id"], "ebpCode": r["ebp_code"], "orderNo": r["order_no"], "sessionID": r["session_id"],
            "serviceTime": r["service_time"], "received_at": _iso(r["received_at"]), "state": r["state"],
            "handed_over": r["handed_over"], "upload_guid": r["upload_guid"], "uploaded_at": _iso(r["uploaded_at"]),
            "answered_at": _iso(r["answered_at"]), "answer": db.json_value(r["answer"]), "job": job,
            "closed_at": _iso(r["closed_at"]), "closed_by": r["closed_by"],
            "close_reason": r["close_reason"]}  # fmt: skip


# --- closing what can never be settled (gateway/sql/470_closed_by_operators.sql) ----------------------------------

#: The longest reason a close takes: a sentence for the next operator, not a report.
MAX_CLOSE_REASON = 200


class CloseRefused(Exception):
    """Nothing was closed: ``status`` 404 (no such receipt or question) or 409 (it is not open: matched or uploaded
    since, closed already, its upload being sent), and why, in words."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def close_reason(payload: Any) -> str:
    """The reason of a close request's body ``{"reason": "..."}``: a non-empty text of at most MAX_CLOSE_REASON
    characters (surrounding white space dropped). Anything else: ValueError saying what is wrong."""
    if not isinstance(payload, dict) or set(payload) != {"reason"}:
        raise ValueError('expected {"reason": "why it can never be settled"}')
    reason = payload["reason"]
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("reason must be a non-empty string: why it can never be settled, for the next operator")
    reason = reason.strip()
    if len(reason) > MAX_CLOSE_REASON:
        raise ValueError(f"reason is {len(reason)} characters long; at most {MAX_CLOSE_REASON}")
    if any(ord(c) < 0x20 or c == "\x7f" for c in reason):  # one line: read_json let tabs and line breaks in
        raise ValueError("reason must be one line, without control characters")
    return reason


#: The columns an unmatched receipt is listed with (GET /v1/receipts/unmatched, unmatched_receipt_dict).
UNMATCHED_RECEIPT_COLUMNS = """id, received_at, message_type, root_guid, element_index, doc_guid, keys, return_status,
       return_time, return_info, cop_msg_id, source, closed_at, closed_by, close_reason"""

#: Receipt $1, kept unmatched and open, closed by $2 (a key's name) for the reason $3: as listed then; none when it is
#: no such receipt (RECEIPT_NOT_CLOSED says why). A receipt linked meanwhile (its outcome moved) is not closed.
CLOSE_RECEIPT = f"""
UPDATE receipts SET closed_at = now(), closed_by = $2, close_reason = $3
 WHERE id = $1 AND outcome = 'unmatched' AND closed_at IS NULL
RETURNING {UNMATCHED_RECEIPT_COLUMNS}
"""
#: Why receipt $1 was not closed: its outcome, and who closed it when it was.
RECEIPT_NOT_CLOSED = "SELECT outcome, closed_at, closed_by, close_reason FROM receipts WHERE id = $1"


def unmatched_receipt_dict(r: asyncpg.Record) -> dict[str, Any]:
    """A receipt kept unmatched as the operators' list shows it: as stored, with who closed it, when and why (null
    while open)."""
    return {**dict(r), "received_at": _iso(r["received_at"]), "keys": db.json_value(r["keys"]),
            "closed_at": _iso(r["closed_at"])}  # fmt: skip


def _closed_already(what: str, r: asyncpg.Record) -> CloseRefused:
    return CloseRefused(409, f"{what} was closed already, by {r['closed_by']} at {_iso(r['closed_at'])}: "
                             f"{r['close_reason']}")  # fmt: skip


async def close_unmatched_receipt(pool: asyncpg.Pool, receipt_id: int, *, by: str, reason: str) -> dict[str, Any]:
    """Close a receipt kept unmatched that no document will ever answer (POST /v1/receipts/unmatched/{id}/close, the
    console's Close): committed with who closed it (``by``, a key's name), when and why, it leaves the open list and
    cbec_receipts_unmatched. It stays unmatched: should its document come after all, a delivery again (or, a tax bill
    or summary result, the receipt teaching its number) links it as any. Answers it as listed; CloseRefused: 404 no
    such receipt, 409 one that matched its document, or closed already."""
    async with db.transaction(pool) as conn:
        row = await conn.fetchrow(CLOSE_RECEIPT, receipt_id, by, reason)
        if row is None:
            why = await conn.fetchrow(RECEIPT_NOT_CLOSED, receipt_id)
            if why is None:
                raise CloseRefused(404, f"no receipt {receipt_id}")
            if why["outcome"] != "unmatched":
                raise CloseRefused(409, f"receipt {receipt_id} is no unmatched receipt (its outcome is "
                                        f"{why['outcome']}): nothing to close")  # fmt: skip
            raise _closed_already(f"receipt {receipt_id}", why)
    log.info("unmatched_receipt_closed", receipt_id=receipt_id, message_type=row["message_type"], closed_by=by,
             reason=reason)  # fmt: skip
    return unmatched_receipt_dict(row)


async def close_payment_question(pool: asyncpg.Pool, question_id: int, *, by: str, reason: str) -> dict[str, Any]:
    """Close a 179 question that can never be answered (POST /v1/payment-data/questions/{id}/close, the console's
    Close): committed with who closed it (``by``), when and why, it leaves the open list and
    cbec_payment_data_questions (and so their alerts). Its upload's job is settled in the same transaction through
    the queue's own moves: queued (waiting for the data, or retrying) it is made due, a dead letter (refused by
    customs, given up) it is replayed — either way it runs once more, finds the question closed and ends done,
    uploading nothing (gateway.workers), so no dead letter stays behind and no upload goes later, should the data be
    handed over after all. Customs asking again is a new question. Answers the question as listed; CloseRefused: 404 no
    such question, 409 one uploaded, closed already, or whose upload a worker is sending now (ask again once it is
    answered)."""
    async with db.transaction(pool) as conn:
        q = await conn.fetchrow(realtime.QUESTION_TO_CLOSE, question_id)
        if q is None:
            raise CloseRefused(404, f"no question {question_id}")
        if q["closed_at"] is not None:
            raise _closed_already(f"question {question_id}", q)
        if q["state"] == "uploaded":
            raise CloseRefused(409, f"question {question_id} was answered: its upload went to customs")
        job_state = await conn.fetchval(realtime.JOB_TO_CLOSE, q["job_id"]) if q["job_id"] is not None else None
        if job_state == "running":
            raise CloseRefused(409, f"question {question_id}'s upload is being sent now: close it once customs "
                                    "answered, if it still needs closing")  # fmt: skip
        await conn.execute(realtime.CLOSE_QUESTION, question_id, by, reason)
        if job_state == "queued":
            await cbec_queue.hasten(conn, [q["job_id"]])
        elif job_state == "dead":
            await cbec_queue.replay(conn, job_ids=[q["job_id"]], note=f"question closed by {by}: {reason}")
        # the question as listed: the page of one below the next id
        [row] = await conn.fetch(realtime.QUESTIONS, question_id + 1, 1, None, None)
    log.info("payment_question_closed", question_id=question_id, ebp_code=q["ebp_code"], order_no=q["order_no"],
             closed_by=by, reason=reason, job_id=q["job_id"], job_state=job_state)  # fmt: skip
    return _question_dict(row)


#: Warehouse cancel $1, needing a look, closed by $2 (a key's name) for the reason $3; none when it needs none
#: (CANCEL_NOT_CLOSED says why).
CLOSE_WAREHOUSE_CANCEL = f"""
UPDATE warehouse_cancels AS c SET closed_at = now(), closed_by = $2, close_reason = $3, updated_at = now()
 WHERE c.id = $1 AND {CANCEL_OPEN}
RETURNING c.id
"""
#: Why warehouse cancel $1 was not closed.
CANCEL_NOT_CLOSED = "SELECT confirmed_at, closed_at, closed_by, close_reason FROM warehouse_cancels WHERE id = $1"


async def close_warehouse_cancel(pool: asyncpg.Pool, cancel_id: int, *, by: str, reason: str) -> dict[str, Any]:
    """Close a warehouse cancel that needs a look once the operators have settled it with the warehouse (POST
    /v1/warehouse/cancels/{id}/close, the console's Close) — the parcel came back by other means, or was let go —:
    committed with who closed it (``by``), when and why, it leaves the open list and cbec_warehouse_cancels_open (and
    so its alert). A callback of progress after it flags it no more. Answers it as listed; CloseRefused: 404 no such
    cancel, 409 one the warehouse confirmed, one that needs no look (yet), or closed already."""
    async with db.transaction(pool) as conn:
        if await conn.fetchval(CLOSE_WAREHOUSE_CANCEL, cancel_id, by, reason) is None:
            why = await conn.fetchrow(CANCEL_NOT_CLOSED, cancel_id)
            if why is None:
                raise CloseRefused(404, f"no warehouse cancel {cancel_id}")
            if why["closed_at"] is not None:
                raise _closed_already(f"warehouse cancel {cancel_id}", why)
            if why["confirmed_at"] is not None:
                raise CloseRefused(409, f"warehouse cancel {cancel_id} was confirmed by the warehouse (the order "
                                        f"ended at {_iso(why['confirmed_at'])}): nothing to close")  # fmt: skip
            raise CloseRefused(409, f"warehouse cancel {cancel_id} needs no look: the warehouse neither refused it "
                                    "nor reported progress after it, and it is not overdue")  # fmt: skip
        [row] = await conn.fetch(WAREHOUSE_CANCELS["closed"], cancel_id + 1, 1)
    item = warehouse_cancel_item(row)
    log.info("warehouse_cancel_closed", cancel_id=cancel_id, order_id=item["order_id"], closed_by=by, reason=reason)
    return item


#: Site deliveries (CEB711) by doc guid ($1): their message's guid, head and lines.
DELIVERIES = """
SELECT d.doc_guid, m.guid AS message_guid, d.head, d.lines
  FROM documents AS d JOIN messages AS m ON m.id = d.message_id
 WHERE d.doc_guid = ANY ($1::text[]) AND d.message_type = 'CEB711'
"""


async def deliveries(conn: asyncpg.Connection, doc_guids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The site deliveries (CEB711) among documents (``doc_guids``), each by its doc guid as the operators' lists name
    it (a warehouse's callback or cancel of an inbound order made from it): its message's guid (GET
    /v1/messages/{guid} shows it whole), its B/L, how many parcels it lists and the shipments of those the gateway holds
    (delivery_parcels; each once, in line order) — their pages show the delivery."""
    out: dict[str, dict[str, Any]] = {}
    guids = sorted(set(doc_guids))
    for r in await conn.fetch(DELIVERIES, guids) if guids else ():
        head, lines = db.json_value(r["head"]) or {}, db.json_value(r["lines"]) or []
        parcels = delivery_parcels({"lines": lines}, await conn.fetch(
            DELIVERY_PARCELS, text(head, "logisticsCode") or "", [text(x, "logisticsNo") or "" for x in lines]))
        shipments: dict[tuple[str, str], None] = {}
        for p in parcels:
            if (ship := p["shipment"]) is not None:
                shipments[(ship["ebpCode"], ship["orderNo"])] = None
        out.setdefault(r["doc_guid"], {
            "message_guid": r["message_guid"], "billNo": text(head, "billNo"), "listed": len(lines),
            "shipments": [{"ebpCode": e, "orderNo": o} for e, o in shipments]})  # fmt: skip
    return out


async def _payment_of_order(
    conn: asyncpg.Connection, ebp_code: str, order_no: str
) -> tuple[asyncpg.Record | None, list[dict[str, Any]]]:
    """The payment that paid an order (its row) and customs' questions about the order, newest first."""
    payment = await conn.fetchrow(realtime.PAYMENT_OF_ORDER, ebp_code, order_no)
    questions = [{"sessionID": q["session_id"], "serviceTime": q["service_time"], "received_at":
                  _iso(q["received_at"]), "state": q["state"], "upload_guid": q["upload_guid"],
                  "uploaded_at": _iso(q["uploaded_at"]), "answer": db.json_value(q["answer"])}
                 for q in await conn.fetch(realtime.QUESTIONS_OF_ORDER, ebp_code, order_no)]  # fmt: skip
    return payment, questions


async def payment_data_of_shipment(conn: asyncpg.Connection, ebp_code: str, order_no: str) -> dict[str, Any] | None:
    """What an import shipment's view says of its order's 179 payment data: the payment handed over (its
    payTransactionId and when; none yet: null) and customs' questions with their uploads; None when the order was
    neither handed over nor asked about (the platform is no 179 one, or customs did not ask)."""
    payment, questions = await _payment_of_order(conn, ebp_code, order_no)
    if payment is None and not questions:
        return None
    return {"payTransactionId": payment["pay_transaction_id"] if payment is not None else None,
            "handed_over_at": _iso(payment["updated_at"]) if payment is not None else None,
            "questions": questions}  # fmt: skip


def _pending_dict(r: asyncpg.Record) -> dict[str, Any]:
    """An export inventory awaiting its summary, as GET /v1/summaries/pending lists it: what a CEB701 names it by
    (invtNo) and what finds it (its key: agentCode and copNo; its shipment; the export date and customs' release), and
    what an exporter groups its applications by (the customs district an application names, the exit port, the trade
    mode, the destination)."""
    return {"invtNo": r["invt_no"], "ebcCode": r["ebc_code"], "agentCode": r["key1"], "copNo": r["key2"],
            "ebpCode": r["ebp_code"], "orderNo": r["order_no"], "logisticsNo": r["logistics_no"],
            "ieDate": r["ie_date"], "released_at": r["customs_return_time"], "customsCode": r["customs_code"],
            "portCode": r["port_code"], "tradeMode": r["trade_mode"], "country": r["country"]}  # fmt: skip


def _rejection_dict(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": r["id"],
        "received_at": _iso(r["received_at"]),
        "submitter": r["submitter"],
        "guid": r["guid"],
        "message_type": r["message_type"],
        "http_status": r["http_status"],
        "raw_size": r["raw_size"],
        "issues": r["issues"],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def parcel_findings(documents: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Of a shipment's documents (as read, the deliveries' lines whole): a warning per waybill of the shipment that two
    live deliveries (current, not withdrawn) of different keys list — the parcel unloaded under two B/Ls, or at two
    sites —, naming the first two."""
    waybills = {(text(d["head"], "logisticsCode"), text(d["head"], "logisticsNo"))
                for d in documents if d["kind"] in (Kind.INVENTORY, Kind.WAYBILL)}  # fmt: skip
    listed: dict[tuple[str | None, str | None], dict[tuple[str, ...], Side]] = {}
    for d in documents:
        if d["kind"] != Kind.DELIVERY or not d["is_current"] or d["withdrawn"]:
            continue
        carrier = text(d["head"], "logisticsCode")
        for i, line in enumerate(d["lines"] or (), 1):
            if (waybill := (carrier, text(line, "logisticsNo"))) in waybills:
                side = Side(d["message_type"], d["doc_guid"], f"{d['path']}/DeliveryList[{i}]/logisticsNo", waybill[1])
                listed.setdefault(waybill, {}).setdefault(tuple(d["keys"].values()), side)
    findings = []
    for (_, no), by_key in sorted(listed.items(), key=lambda x: str(x[0])):
        if len(by_key) > 1:
            (first, left), (second, right) = list(by_key.items())[:2]
            findings.append(Finding(
                "site.waybill_on_two_deliveries", "logisticsNo",
                f"waybill {no} is listed by the delivery {' / '.join(first)} and by the delivery {' / '.join(second)}"
                " (operatorCode / billNo): a parcel is unloaded into a supervision site once",
                left, right, blocking=False,
            ))  # fmt: skip
    return findings


def delivery_parcels(delivery: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each line of a site's delivery with what the gateway holds of its parcel (DELIVERY_PARCELS' ``rows``, in line
    order): ``waybill`` (its import waybill is held), ``customs_status`` of its shipment (``released``: it may leave
    the site) and the ``shipment`` (ebpCode, orderNo, parties: gateway.auth.message_view names it to whom it may) —
    both None for a parcel whose waybill and inventory the gateway never saw."""
    out = []
    for line, r in zip(delivery["lines"] or (), rows, strict=True):
        held = r["order_no"] is not None
        out.append({"gnum": line.get("gnum"), "logisticsNo": line.get("logisticsNo"), "waybill": r["waybill"],
                    "customs_status": r["customs_status"] if held else None,
                    "shipment": {"ebpCode": r["ebp_code"], "orderNo": r["order_no"], "parties": list(r["parties"])}
                    if held else None})  # fmt: skip
    return out


def own_parcels(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A shipment's documents with each site delivery (CEB711) cut to the lines naming the shipment's waybills (of its
    inventories and waybills: the head's logisticsCode, a line's logisticsNo), the parcel that arrived, and
    ``listed``, how many waybills the whole delivery lists: a B/L unloads thousands of other parcels, which the
    message (GET /v1/messages/{guid}) shows."""
    waybills = {(text(d["head"], "logisticsCode"), text(d["head"], "logisticsNo"))
                for d in documents if d["kind"] in (Kind.INVENTORY, Kind.WAYBILL)}  # fmt: skip
    for d in documents:
        if d["kind"] == Kind.DELIVERY:
            carrier, lines = text(d["head"], "logisticsCode"), d["lines"] or []
            d["lines"] = [x for x in lines if (carrier, text(x, "logisticsNo")) in waybills]
            d["listed"] = len(lines)
    return documents


def _document_dict(r: asyncpg.Record) -> dict[str, Any]:
    mtype = BY_CODE.get(r["message_type"])
    names = mtype.keys if mtype else ("key1", "key2")
    values = mtype.key_values((r["key1"], r["key2"])) if mtype else (r["key1"], r["key2"])
    out: dict[str, Any] = {
        "id": r["id"],
        "index": r["doc_index"],
        "doc_guid": r["doc_guid"],
        "kind": r["kind"],
        "message_type": r["message_type"],
        "keys": dict(zip(names, values, strict=False)),
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
    if "concluded_returns" in r and r["concluded_returns"] is not None:  # for its tax bills (gateway.taxbills)
        out["concluded_returns"] = db.json_value(r["concluded_returns"])
    return out


# --- a change or withdrawal customs refused ------------------------------------------------

#: The changes and withdrawals (appType 2, 3; $1 document ids) customs refused that are still their keys' current rows,
#: each with the version customs holds instead (spec §6.2: a refused message changes nothing there): the latest
#: earlier version of its key customs did not refuse (a change it refused before left it the one before), unless that
#: is a withdrawal customs took (nothing of the key is there) or one the gateway still holds or never sent (held,
#: unsent: customs refused the change or withdrawal of what it never had, and a held version made current again would
#: go out). The versions are walked back through the key's own history, each version to the one it replaced
#: (superseded_by, its partial index, migration 290), past those customs refused: wherever each version was (another
#: shipment, another waybill), and never to an older version the key ignored (state.ignored_older: it replaced
#: nothing). Read only for a refused change or withdrawal, in the receipt's transaction.
REFUSED_VERSIONS = """
WITH RECURSIVE back AS (
    SELECT w.id AS refused, w.message_type, w.key1, w.key2, w.app_type,
           v.id, v.withdrawn, v.forward_state, 1 AS depth
      FROM (SELECT w.* FROM documents AS w WHERE w.id = ANY ($1::bigint[]) OFFSET 0) AS w  -- by its primary key
      JOIN documents AS v ON v.superseded_by = w.id
     WHERE w.is_current AND w.app_type IN ('2', '3') AND w.forward_state = 'rejected'
    UNION ALL
    SELECT b.refused, b.message_type, b.key1, b.key2, b.app_type,
           v.id, v.withdrawn, v.forward_state, b.depth + 1
      FROM back AS b JOIN documents AS v ON v.superseded_by = b.id
     WHERE b.forward_state = 'rejected' AND b.depth < 1000  -- past the versions customs refused
)
SELECT refused AS id, message_type, key1, key2, app_type, id AS version_id
  FROM back
 WHERE forward_state NOT IN ('rejected', 'held', 'unsent') AND NOT withdrawn
 ORDER BY refused
"""

#: A refused change's or withdrawal's row leaves its key's current row (SUPERSEDE) first, then the version customs
#: holds is current again ($1 ids): the unique index on current keys is checked row by row. Nothing supersedes it
#: any more (its superseded_by named the refused row; its next change links it anew).
RESTORE = "UPDATE documents SET is_current = true, superseded_by = NULL WHERE id = ANY ($1::bigint[])"

#: The shipments reconciled again after such a restore, the waybill-only shipments to drop and the ledger: $1
#: shipments (JSON), $2 orderNos of waybill-only shipments to delete, $3 ledger rows to upsert (JSON), $4-$7 the
#: inventories whose other ledger rows go (as WRITE_INGEST's $13-$19); $8 as WRITE_INGEST's $23.
WRITE_RESTORED = f"""
WITH s AS ({_put_shipments("$1", "$8")}
), blank AS (
    DELETE FROM shipments AS s WHERE s.ebp_code = '' AND s.order_no = ANY ($2::text[])
    RETURNING 1
), ledger_put AS ({_put_ledger("$3")}
), ledger_drop AS ({_drop_ledger("$4", "$5", "$6", "$7")}
)
SELECT (SELECT count(*) FROM s) AS shipments, (SELECT count(*) FROM ledger_put) AS ledger,
       {_state_changes("s", "$8")} AS state_changes
"""


async def restore_refused(
    conn: asyncpg.Connection, ids: Sequence[int], *, rates: tax.TaxRates, tolerance: Decimal,
    outbox: Outbox | None = None,
) -> list[tuple[str, str]]:
    """Customs refused the changes or withdrawals ``ids`` (their receipts applied in this transaction, gateway.outbox):
    it still holds the version before each, so that version is its key's current row again — a change or a
    withdrawal of it is judged as of the document customs holds (a release of it refuses them again,
    state.inventory_released) — and the refused version stays in the history with its refusal. Their shipments are
    reconciled and their inventories assessed again (keystate.restore: the version restored counts toward the quota
    instead of the refused change, or again after the withdrawal gave it back); the sellers of one that became
    mismatched or no longer is hear of it through ``outbox`` (Outbox.tell_states). Returns the shipments written,
    whose held inventories the caller looks at again.

    Under the keys' locks (an ingest of a change or a declaration anew of the key waits, and then sees the version
    restored) and, as reconciliation asks for them, the ingest's other locks, waited for as reopen_quota does."""
    if not ids:
        return []
    found = await conn.fetch(REFUSED_VERSIONS, sorted(set(ids)))
    if not found:
        return []
    keys = {(r["message_type"], r["key1"], r["key2"]) for r in found}
    await conn.fetchval(LOCK_IDS, sorted({_lock_id((LOCK_KEY, SEP.join((mt, *BY_CODE[mt].key_values((k1, k2))))))
                                         for mt, k1, k2 in keys}))  # fmt: skip
    refs = Refs(keys=keys)
    refused = {r["id"] for r in found}
    if any(r["app_type"] == "2" for r in found):  # a refused change was a leg: what it held is let go of (restore)
        _, state, _, _ = await Store._read(conn, [], refs)
        gone = [row for row in state.current.values() if row.id in refused and not row.withdrawn]
    else:
        gone = []
    await conn.execute(SUPERSEDE, sorted(refused))
    await conn.execute(RESTORE, [r["version_id"] for r in found])
    for r in found:
        log.info("refused_version_restored", message_type=r["message_type"], key1=r["key1"], key2=r["key2"],
                 refused_id=r["id"], app_type=r["app_type"], document_id=r["version_id"])  # fmt: skip
    _, state, _, _ = await Store._read(conn, [], refs)
    for row in (*state.current.values(), *gone):
        refs.add(row)
        buyer = likely_buyer(BY_CODE[row.message_type], row.head)
        if buyer is not None:
            refs.buyers.add(buyer)
    held: set[Lock] = set()
    while True:
        _, state, _, _ = await Store._read(conn, [], refs)
        verdict = restore(list(state.current.values()), refs, held, state, rates=rates, tolerance=tolerance, gone=gone)
        if isinstance(verdict, Write):
            break
        await conn.fetchval(LOCK_IDS, sorted({_lock_id(lock) for lock in verdict.locks - held}))
        held |= verdict.locks
        refs.merge(verdict.refs)
    drops = verdict.ledger_drop
    row = await conn.fetchrow(
        WRITE_RESTORED, verdict.shipments, verdict.blanks, verdict.ledger_put,
        [d[0] for d in drops], [d[1] for d in drops], [d[2] for d in drops], [d[3] for d in drops],
        outbox.reconciliation_told() if outbox is not None else None,
    )  # fmt: skip
    if outbox is not None and row is not None:
        await outbox.tell_states(conn, db.json_value(row["state_changes"]), verdict.shipments)
    return [(s["ebp_code"], s["order_no"]) for s in verdict.shipments if s["ebp_code"]]


def refusals_restorer(*, rates: tax.TaxRates = tax.DEFAULT_RATES, tolerance: Decimal = Decimal("0")) -> Restore:
    """restore_refused with these rates and tolerance (the Store's): the outbox's ``restore``."""

    async def restore_(conn: asyncpg.Connection, ids: Sequence[int], outbox: Outbox) -> list[tuple[str, str]]:
        return await restore_refused(conn, ids, rates=rates, tolerance=tolerance, outbox=outbox)

    return restore_


# --- quota given back outside an ingest ------------------------------------------------------


async def reopen_quota(
    conn: asyncpg.Connection, freed: Iterable[tuple[str, int]], *, rates: tax.TaxRates, tolerance: Decimal,
    outbox: Outbox | None = None,
) -> list[tuple[str, str]]:
    """Quota was given back to the buyer-years ``freed`` by customs' word (a refused first declaration, a concluded
    cancellation or return; gateway.outbox, in the receipt's transaction): assess their shipments the annual limit
    blocked again (keystate.reopen) and write those no longer blocked — their sellers hear they are mismatched no more
    through ``outbox`` (Outbox.tell_states). Returns the ones now matched, whose held inventories the caller
    releases.

    The ingest's locks, here waited for: the buyers' (the ledger must not move meanwhile), then the orderNos of
    their blocked shipments. A receipt transaction already holds the locks of its own shipments, so waiting may
    deadlock with an ingest that holds one of these and wants one of those; PostgreSQL breaks it and the receipts
    are applied again (gateway.outbox.Outbox.apply_receipts)."""
    pairs = sorted(set(freed))
    if not pairs:
        return []
    await conn.fetchval(LOCK_IDS, sorted({_lock_id((LOCK_BUYER, buyer)) for buyer, _ in pairs}))
    refs = Refs(buyers=set(pairs))
    _, state, _, _ = await Store._read(conn, [], refs)
    waiting = blocked_shipments(pairs, state)
    if not waiting:
        return []
    # no shipment is blocked meanwhile: a ledger row is written only under its buyer's lock
    await conn.fetchval(LOCK_IDS, sorted({_lock_id((LOCK_ORDER, order_no)) for _, order_no in waiting}))
    while True:  # their legs, and the other platforms and waybills of their orderNos (reopen_refs)
        wanted = reopen_refs(waiting, state.live())
        if refs.covers(wanted):
            break
        refs.merge(wanted)
        _, state, _, _ = await Store._read(conn, [], refs)
    results, puts = reopen(pairs, state, state.live(), rates=rates, tolerance=tolerance)
    if not results:
        return []
    rows = [r.row() for r in results.values()]
    row = await conn.fetchrow(WRITE_REOPENED, rows, puts, outbox.reconciliation_told() if outbox is not None else None)
    if outbox is not None and row is not None:
        await outbox.tell_states(conn, db.json_value(row["state_changes"]), rows)
    return [key for key, r in results.items() if r.state == "matched"]


#: The ledger rows (not blocked) of current inventories, not void at customs, that customs concluded a return for
#: (outbox.latest_return), with the inventory and the return's lines: what recount_returns recounts.
LEDGER_WITH_RETURNS = f"""
SELECT l.buyer_id_number, l.year, l.ebc_code, l.order_no, i.doc_index, i.path, i.head, i.lines, r.lines AS returned
  FROM tax_ledger AS l
  JOIN documents AS i ON i.message_type = 'CEB621' AND i.key1 = l.ebc_code AND i.key2 = l.order_no AND i.is_current,
       LATERAL (SELECT {latest_return("i")} AS lines) AS r
 WHERE NOT i.withdrawn AND l.blocked_at IS NULL AND r.lines IS NOT NULL
   AND NOT (i.forward_state = 'rejected' AND i.app_type = '1')
   AND NOT EXISTS (SELECT 1 FROM documents AS c
                    WHERE c.message_type = 'CEB623' AND c.key1 = i.key1 AND c.key2 = i.key2 AND c.is_current
                      AND c.forward_state = 'receipted' AND c.customs_rank >= {RANK_CONCLUDED})
"""


async def recount_returns(conn: asyncpg.Connection) -> int:
    """Migration 200's data step: the ledger rows of the inventories customs concluded a return for are counted as the
    gateway counts them now (keystate.assess_into: in full less the return's value, which ``returned`` keeps).
    Before, a concluded return gave back nothing, or — for a moment — was given back twice when changed, or counted
    again by a later leg: recounted, not inferred from what the row lacks. Returns how many rows it set."""
    updates = []
    for r in await conn.fetch(LEDGER_WITH_RETURNS):
        head = db.json_value(r["head"])
        if temp_saved(head):
            continue
        inventory = Document(BY_CODE["CEB621"], r["doc_index"], r["path"], head, db.json_value(r["lines"]))
        assessment = tax.assess(inventory, annual_used=Decimal(0), returned=db.json_value(r["returned"]))
        updates.append((r["buyer_id_number"], r["year"], r["ebc_code"], r["order_no"],
                        assessment.counts_toward_annual, assessment.returned))  # fmt: skip
    await conn.executemany(
        "UPDATE tax_ledger SET amount = $5, returned = $6, updated_at = now()"
        " WHERE buyer_id_number = $1 AND year = $2 AND ebc_code = $3 AND order_no = $4",
        updates,
    )
    return len(updates)


def quota_reassessor(*, rates: tax.TaxRates = tax.DEFAULT_RATES, tolerance: Decimal = Decimal("0")) -> Reassess:
    """reopen_quota with these rates and tolerance (the Store's): the outbox's ``reassess``."""

    async def reassess(
        conn: asyncpg.Connection, freed: Sequence[tuple[str, int]], outbox: Outbox
    ) -> list[tuple[str, str]]:
        return await reopen_quota(conn, freed, rates=rates, tolerance=tolerance, outbox=outbox)

    return reassess


# --- the store -------------------------------------------------------------------------------


class Store:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        tax_rates: tax.TaxRates = tax.DEFAULT_RATES,
        tolerance: Decimal = Decimal("0"),
        max_batch: int = 32,
        # Two, the second only for a full batch (another_when_full): fewer, bigger batches cost less per message
        # (measured 2 against 4 at concurrency 32: ~10 % more messages/s, ~30 % less PostgreSQL CPU per message).
        max_parallel: int = 2,
        outbox: Outbox | None = None,
    ) -> None:
        if max_batch < 1 or max_parallel < 1:
            raise ValueError("max_batch and max_parallel must be at least 1")
        self.pool = pool
        self.tax_rates = tax_rates
        self.tolerance = tolerance
        self.max_batch = max_batch  # messages per transaction, at most
        self.max_parallel = max_parallel  # transactions (pool connections) ingesting at once, at most
        # Forwarding (gateway.outbox): what an accepted message sends to customs is enqueued in its
        # transaction (the transactional outbox). None: nothing is forwarded.
        self.outbox = outbox
        self._running_locks: dict[Lock, int] = {}  # locks of the batches running now, each with how many hold it
        self.waybill_buyers = WaybillBuyers()  # the inventories' buyers by waybill, for a waybill's locks up front
        self._arrivals = 0
        # Transactions begun for the batch a drain runs next, by its first job (see _commit).
        self._begun: dict[_Job, tuple[list[_Job], asyncpg.Connection]] = {}
        # Told of each ingest transaction committed: its messages and its seconds, from its first statement to its
        # COMMIT answered (gateway.metrics: how the messages batch, how long PostgreSQL holds them). No I/O.
        self.on_committed: Callable[[int, float], None] | None = None
        self._batcher: Batcher[_Job, IngestResult] = Batcher(
            self._batch, max_batch=max_batch, max_parallel=max_parallel, attempts=_ATTEMPTS,
            retryable=_retryable, failure=_failure, again=(_LocksBusy,),
            take=self._take, ready=self._locks_free, hold=self._holding,
            # A second transaction only for a full batch: in interleaved runs against one for any waiting message,
            # +2 to +11 % at 8 and 32 clients, PostgreSQL -15 to -25 % CPU per message; the same at 128 clients,
            # where batches fill either way.
            another_when_full=True,
        )  # fmt: skip
        self._queue = self._batcher.queue

    # --- ingest ------------------------------------------------------------------------------

    async def ingest(
        self,
        msg: ParsedMessage,
        raw: bytes,
        *,
        submitter: str,
        source: str = "xml",
        scope: frozenset[str] | None = None,
        identity: bytes | None = None,
        named: summary.Named | None = None,
        warnings: tuple[Issue, ...] = (),
    ) -> IngestResult:
        """Store a validated message and reconcile what it touches; commits before returning. The arguments are a
        :class:`Submission`'s; raises :class:`Conflict` (nothing stored; the caller records the rejection)."""
        return await self.enqueue(Submission(msg, raw, submitter, source, scope, identity, named, warnings))

    def enqueue(self, sub: Submission) -> asyncio.Future[IngestResult]:
        """:meth:`ingest` without the await: the future its outcome settles (gateway.ingestlink answers from it,
        without a task per message)."""
        if sub.source not in ("xml", "json"):
            raise ValueError(f"source must be 'xml' or 'json', got {sub.source!r}")
        self._arrivals += 1
        msg = sub.msg
        news = new_documents(msg)
        locks, refs = up_front_locks(msg), Refs.of(news)
        for buyer in self.waybill_buyers.guess(news):
            locks.add((LOCK_BUYER, buyer[0]))
            refs.buyers.add(buyer)
        if sub.named is not None:
            locks.update((LOCK_SUMMARISED, no) for no in sub.named.invt_nos)
        sha = hashlib.sha256(sub.raw if sub.identity is None else sub.identity).digest()
        job = _Job(msg, sub.raw, sha, sub.submitter, sub.source, self._arrivals, news, locks, refs, sub.scope,
                   sub.named, sub.warnings)  # fmt: skip
        return self._batcher.put(job)

    async def aclose(self) -> None:
        """Wait for the messages already handed over (call before closing the pool)."""
        await self._batcher.aclose()
        while self._begun:  # begun for a batch whose drain was cancelled before it ran
            _, (_, conn) = self._begun.popitem()
            await self._discard(conn)

    # Scheduling (gateway.batching runs the batches): a message that shares a lock with a batch running in this
    # process waits in the queue for that batch to end instead of joining a new batch, which would make the
    # whole new batch wait at BEGIN.

    def _locks_free(self, job: _Job) -> bool:
        """Whether the newest waiting message could start now beside the running batch(es): none holds its locks
        (otherwise another transaction would only wait for them at BEGIN)."""
        return not job.locks & self._running_locks.keys()

    @contextlib.contextmanager
    def _holding(self, batch: list[_Job]) -> Iterator[None]:
        """The batch's locks count as running while it runs, retries and all (see _take)."""
        locks = [lock for job in batch for lock in job.locks]  # as taken: a job adds the locks it finds late
        running = self._running_locks  # counted by hand: collections.Counter's update and -= cost ~1 % of the API
        for lock in locks:
            running[lock] = running.get(lock, 0) + 1
        try:
            yield
        finally:
            for lock in locks:
                left = running[lock] - 1
                if left:
                    running[lock] = left
                else:
                    del running[lock]  # no batch holds it any more

    def _take(self) -> list[_Job]:
        """The next batch: waiting messages in arrival order, skipping those that share a lock with a running
        batch, with a message taken before them or with one skipped before them (no message overtakes one it
        shares a lock with).

        A message sharing a lock with one already in the batch (another leg of its shipment, most often) waits
        for a later batch rather than joining this one: inside the batch it would need a wave of its own — a
        read, a write and an enqueue more for one or two messages, while the batch's other messages wait for
        them before the commit (at 128 clients, 2.2 waves per batch of 32).
        """
        batch: list[_Job] = []
        blocked = set(self._running_locks)
        kept: list[_Job] = []
        while self._queue and len(batch) < self.max_batch:
            job = self._queue.popleft()
            if job.future.done():  # the caller went away before it started: nothing to do
                continue
            if job.locks & blocked:
                kept.append(job)
            else:
                batch.append(job)
            blocked |= job.locks
        self._queue.extendleft(reversed(kept))
        return batch

    async def _batch(self, jobs: list[_Job], follow: Follow[_Job] | None) -> dict[_Job, IngestResult | Exception]:
        """The jobs in one transaction, wave after wave; a Conflict answers its job and the others go on.

        The transaction may have begun already, with the jobs' locks, in the round trip that committed the batch
        before (see _commit)."""
        started = time.perf_counter()
        outcomes: dict[_Job, IngestResult | Exception] = {}
        conn = self._begun_for(jobs)
        if conn is None:
            conn = await self.pool.acquire()
            try:
                await conn.execute(_begin_and_lock(_lock_ids(jobs)))
            except BaseException:
                await self._discard(conn)
                raise
        try:
            held = {lock for job in jobs for lock in job.locks}
            pending = jobs
            while pending:
                wave, rest = _waves(pending)
                deferred = await self._wave(conn, wave, held, outcomes)
                pending = sorted(rest + deferred, key=lambda j: j.arrival)
        except BaseException:
            await self._discard(conn)
            raise
        # Only a lone drain takes its next batch early: beside a second transaction the batches, taken a round
        # trip sooner, came out smaller (13.5 against 22 messages at 128 clients) and PostgreSQL's CPU per message
        # rose by 10-15 % for the same rate.
        await self._commit(conn, follow() if follow is not None and self._batcher.running == 1 else [])
        if self.on_committed is not None:
            self.on_committed(len(jobs), time.perf_counter() - started)
        return outcomes

    async def _commit(self, conn: asyncpg.Connection, following: list[_Job]) -> None:
        """COMMIT; with the next batch taken (it waited meanwhile), its BEGIN and locks go in the same round trip.

        Why: BEGIN alone costs the next batch a round trip while the API answers this batch's messages, and
        PostgreSQL has nothing to do; begun here, the next batch's first round trip is its read, which
        PostgreSQL does while the answers go out. The connection stays out of the pool, in the transaction,
        until that batch runs: at once, on the same drain (an open transaction that has read nothing holds no
        snapshot). Only a lone drain takes a batch early (see _batch), so no batch of this process holds the
        next batch's locks; another process holding one delays this commit's answers as it would have delayed
        that BEGIN.

        A statement after COMMIT failing leaves the commit done (PostgreSQL ends a transaction at COMMIT
        whatever follows in the query string): this batch is answered and the next begins on its own. A
        failed COMMIT leaves no transaction open, and raises."""
        if not following:
            try:
                await conn.execute("COMMIT")
            finally:
                await self.pool.release(conn)
            return
        try:
            await conn.execute(f"COMMIT; {_begin_and_lock(_lock_ids(following))}")
        except asyncpg.PostgresError:
            # A connection that died with the error (the server ended the session) is back in the pool already and
            # answers nothing more: the error that matters is this one, not the proxy's.
            with contextlib.suppress(asyncpg.InterfaceError):
                if conn.is_in_transaction():
                    await self._discard(conn)  # committed; the next batch's BEGIN or locks failed
                    return
                await self.pool.release(conn)  # the COMMIT failed: nothing of the next batch began either
            raise
        except BaseException:
            await self.pool.release(conn)
            raise
        self._begun[following[0]] = (following, conn)

    def _begun_for(self, jobs: list[_Job]) -> asyncpg.Connection | None:
        """The connection whose transaction began for these jobs in the previous batch's commit, if any."""
        begun = self._begun.pop(jobs[0], None)
        if begun is None:
            return None
        if begun[0] is not jobs:  # never happens: a drain runs the batch it took early next, as taken
            raise AssertionError("a transaction begun for another batch")
        return begun[1]

    async def _discard(self, conn: asyncpg.Connection) -> None:
        """Roll back whatever the connection's transaction did and give it back."""
        try:
            with contextlib.suppress(Exception):  # the connection may be gone; the error that matters is raised
                await conn.execute("ROLLBACK")
        finally:
            await self.pool.release(conn)

    async def _wave(
        self,
        conn: asyncpg.Connection,
        jobs: list[_Job],
        held: set[Lock],
        outcomes: dict[_Job, IngestResult | Exception],
    ) -> list[_Job]:
        """Read for the wave, judge each job, write the wave; returns the jobs to run again in a later wave."""
        refs = Refs()
        for job in jobs:
            refs.merge(job.refs)
        stored, state, receipted, new_ids = await self._read(conn, [job.msg.guid for job in jobs], refs)
        writes: list[tuple[_Job, Write]] = []
        deferred: list[_Job] = []
        more_locks: set[Lock] = set()
        live: dict[str, list[summary.LiveSummary]] | None = None  # read once a summary message of the wave needs it
        for job in jobs:
            warnings = job.warnings  # the rules', then a summary message's own
            try:
                if job.msg.guid in stored:
                    outcomes[job] = _replay(stored[job.msg.guid], job.msg, job.sha, job.submitter)
                    continue
                if job.named is not None:
                    # Under the invtNos' locks (taken at BEGIN): an application naming one of them committed before
                    # is read now; the inventories are as the pipeline read them (one withdrawn since is customs'
                    # to refuse). The wave's jobs share no lock: none of them names these invtNos too.
                    if live is None:
                        live = await _live_summaries(conn, sorted({
                            no for j in jobs if j.named is not None and j.msg.guid not in stored
                            for no in j.named.invt_nos}))  # fmt: skip
                    warnings += tuple(summary.judge_message(job.msg, summary.Held(job.named.inventories, live),
                                                            job.scope))  # fmt: skip
                # the job's own locks, not the batch's: what another job of the wave locks, that job may
                # be writing right now, unseen by this read
                verdict = judge(
                    job.msg, job.news, job.refs, job.locks, state, rates=self.tax_rates, tolerance=self.tolerance,
                    scope=job.scope,
                )  # fmt: skip
            except Conflict as exc:  # raised before the job wrote anything
                outcomes[job] = exc
                continue
            if isinstance(verdict, Defer):
                job.refs.merge(verdict.refs)
                job.locks |= verdict.locks
                more_locks |= verdict.locks
                deferred.append(job)
            else:
                if warnings:  # part of the answer, kept with it: a replay answers them too
                    if job.source == "json":
                        warnings = tuple(with_pointers(job.msg.type.code, warnings))
                    verdict.body["warnings"] = [i.as_dict() for i in warnings]
                writes.append((job, verdict))
        if more_locks - held:
            if not await conn.fetchval(LOCK_MORE, sorted(_lock_id(lock) for lock in more_locks - held)):
                raise _LocksBusy()
            held |= more_locks
        if writes:
            ids = dict(zip((job.msg.guid for job, _ in writes), new_ids, strict=False))  # in arrival order
            for job, w in writes:
                w.body["id"] = ids[job.msg.guid]
            # Forwarding (gateway.outbox): the documents are written with their forward state and the wave's
            # jobs with them, by the same statement: a job exists iff its message committed.
            plans, jobs_now = [], []
            if self.outbox is not None:
                plans = self.outbox.plan_wave([(job.msg, w.body, w.documents) for job, w in writes])
                jobs_now = self.outbox.wave_jobs(plans, ids)
            told = self.outbox.reconciliation_told() if self.outbox is not None else None
            taken_over, changes = await self._write(conn, writes, ids, jobs_now, told)
            for job, w in writes:
                self.waybill_buyers.learn(job.news)
                outcomes[job] = IngestResult(ids[job.msg.guid], job.msg.guid, job.msg.type.code, 202, w.body, False,
                                             w.sides)  # fmt: skip
            if self.outbox is not None:
                if changes:  # a shipment went to or from mismatched: its sellers hear of it, before what follows
                    await self.outbox.tell_states(conn, changes, [s for _, w in writes for s in w.shipments])
                # a stored version whose delivery failed, that customs rejected or whose cancellation it concluded,
                # changed, withdrawn or declared anew now: its shipment's status no longer says what customs said of
                # that version, or its failure (rare)
                superseded = [old for job, _ in writes for d in job.news
                              if (old := d.replaces) is not None and (old.failed or old.rejected or old.cancelled)]
                reopened = [key for _, w in writes for key in w.reopened]
                concluded = await self.outbox.after_write(conn, plans, receipted, superseded, reopened, taken_over,
                                                          ids)  # fmt: skip
                if concluded:
                    await self._concluded_unsent(conn, concluded, {ids[job.msg.guid]: w.body for job, w in writes})
        return deferred

    @staticmethod
    async def _concluded_unsent(
        conn: asyncpg.Connection, concluded: Mapping[int, list[int]], bodies: Mapping[int, dict[str, Any]]
    ) -> None:
        """The withdrawals the outbox concluded here (``concluded``: doc_index of each by message id; nothing of them is
        sent, customs never had what they withdraw) say so in the answer and in the stored one (state.withdrawn_unsent):
        the outbox decided it after the write, under the locks of the versions it held. ``bodies``: the answers of the
        wave's messages; a message stored before (its withdrawal held behind a message that never goes now) has its
        stored answer rewritten, which GET /v1/messages/{guid} and a replay give."""
        answers = {i: bodies[i] for i in concluded if i in bodies}
        if earlier := sorted(set(concluded) - set(answers)):
            answers |= {r["id"]: r["response"] for r in await conn.fetch(STORED_RESPONSES, earlier)}
        for message_id, body in answers.items():
            for d in body.get("documents", ()):
                if d.get("index") in concluded[message_id] and d.get("outcome") == "withdrawn":
                    d["code"], d["message"] = "state.withdrawn_unsent", WITHDRAWN_UNSENT
        ordered = sorted(answers)
        await conn.execute(SET_RESPONSE, ordered, [answers[i] for i in ordered])

    @staticmethod
    async def _read(
        conn: asyncpg.Connection, guids: list[str], refs: Refs
    ) -> tuple[dict[str, Any], State, dict[tuple[str, str], dict[str, bool]], list[int]]:
        """The messages stored under the guids, the rows ``refs`` names (see READ_STATE), for each shipment
        whose legs were read the kinds of its live legs and whether customs took them (receipted), and a new message
        id for each guid."""
        keys = sorted(refs.keys)
        keyed, wkeys, ikeys = sorted(refs.keyed), sorted(refs.waybill_keys), sorted(refs.inventory_waybills)
        buyers, numbered, seen = sorted(refs.buyers), sorted(refs.invt_nos), sorted(refs.seen)
        row = await conn.fetchrow(
            READ_STATE,
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
            [k[0] for k in keyed], [k[1] for k in keyed],
            [k[0] for k in wkeys], [k[1] for k in wkeys],
            sorted(refs.waybill_orders),
            [k[0] for k in ikeys], [k[1] for k in ikeys],
            guids,
            [b[0] for b in buyers], [b[1] for b in buyers],
            len(guids),
            [n[0] for n in numbered], [n[1] for n in numbered],
            [k[0] for k in seen], [k[1] for k in seen],
        )  # fmt: skip
        assert row is not None
        current: dict[tuple[str, str, str], Row] = {}
        rows: dict[int, Row] = {}
        receipted: dict[tuple[str, str], dict[str, bool]] = {}
        by_number: dict[tuple[str, str], list[Row]] = {}
        for r in row["documents"]:
            doc = Row.from_json(r)
            if r["role"] == "numbered":
                by_number.setdefault((doc.message_type, r["numbered"]), []).append(doc)
                continue
            if r["role"] == "leg":
                kinds = receipted.setdefault(doc.shipment_key, {})
                kinds[doc.kind] = kinds.get(doc.kind, False) or r["receipted"]
            if r["role"] == "key":
                current[doc.key] = doc
            else:
                rows[doc.id] = doc
        read = [*current.values(), *rows.values(), *(r for found in by_number.values() for r in found)]
        export = [r for r in read if r.message_type in _EXPORT_FLAGGED]
        if export:  # no import message pays for this statement
            by_invt_no = sorted({r.id for found in by_number.values() for r in found if r.message_type == "CEB603"})
            flags = {f["id"]: f for f in await conn.fetch(EXPORT_FLAGS, sorted({r.id for r in export}), by_invt_no)}
            for r in export:
                r.cancelled, r.spent = flags[r.id]["cancelled"], flags[r.id]["spent"]
                r.released = r.released or flags[r.id]["released"]  # of a version before it too, if named by invtNo
        returns: dict[tuple[str, str], list[Row]] = {}
        shown = {(s.ebp_code, s.order_no): s for s in map(ShipmentResult.stored, db.json_value(row["seen"]))}
        shipments = sorted({r.shipment_key for found in by_number.values() for r in found if r.kind == Kind.INVENTORY})
        if shipments:  # an export cancellation or return: no import message pays for this statement either
            more = await conn.fetchrow(RETURNS_OF, [k[0] for k in shipments], [k[1] for k in shipments])
            assert more is not None
            for r in db.json_value(more["returns"]):
                doc = Row.from_json(r)
                returns.setdefault(doc.shipment_key, []).append(doc)
            shown |= {(s.ebp_code, s.order_no): s for s in map(ShipmentResult.stored, db.json_value(more["seen"]))}
        stored = {m["guid"]: m for m in row["stored"]}
        book, blocked = _ledger_book(buyers, row["ledger"])
        state = State(current, rows, book, blocked, by_number, returns, seen=shown)
        return stored, state, receipted, list(row["ids"])

    @staticmethod
    async def _write(
        conn: asyncpg.Connection, writes: list[tuple[_Job, Write]], ids: dict[str, int], jobs: list[JobSpec],
        told: str | None = None,
    ) -> tuple[list[tuple[str, str]], list[dict[str, Any]] | None]:
        """Writes the wave. Returns the keyed shipments that took over a waybill-only shipment customs had already
        heard of (its status not pending): their customs status is to be worked out from their legs; and the
        shipments the wave moved to or from the state ``told`` (_state_changes; None for none, and always without
        ``told``)."""
        replaced = [(old, job.msg.guid, index) for job, w in writes for old, index in w.replaced]
        if replaced:
            await conn.execute(SUPERSEDE, [r[0] for r in replaced])
        documents = [{**d, "guid": job.msg.guid} for job, w in writes for d in w.documents]
        drops = [d for _, w in writes for d in w.ledger_drop]
        row = await conn.fetchrow(
            WRITE_INGEST,
            [job.msg.guid for job, _ in writes],
            [job.msg.type.code for job, _ in writes],
            [job.sha for job, _ in writes],
            [job.raw.decode("utf-8", errors="replace") for job, _ in writes],
            [job.source for job, _ in writes],
            [job.submitter for job, _ in writes],
            [w.body for _, w in writes],
            [202] * len(writes),
            documents,
            [r[0] for r in replaced], [r[1] for r in replaced], [r[2] for r in replaced],
            [s for _, w in writes for s in w.shipments],
            [b for _, w in writes for b in w.blanks],
            [p for _, w in writes for p in w.ledger_put],
            [d[0] for d in drops], [d[1] for d in drops], [d[2] for d in drops], [d[3] for d in drops],
            [ids[job.msg.guid] for job, _ in writes],
            job_rows(jobs),
            cbec_queue.CHANNEL,
            told,
        )  # fmt: skip
        assert row is not None
        changes = db.json_value(row["state_changes"])
        if not (taken := set(row["taken_over"])):  # the usual case: no waybill-only shipment customs heard of went
            return [], changes
        return sorted({(x["ebp_code"], x["order_no"]) for _, w in writes for x in w.shipments
                       if x["ebp_code"] and x["order_no"] in taken}), changes  # fmt: skip

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
        """Keep a refused message for audit (its first 64 KiB) with the issues that refused it. PostgreSQL's text
        and jsonb hold no NUL character, which a refused message may well carry (an issue quotes what it found):
        each is stored as U+FFFD."""
        text = _no_nul(raw[:REJECTION_RAW_LIMIT].decode("utf-8", errors="replace"))
        async with db.transaction(self.pool) as conn:
            await conn.execute(
                INSERT_REJECTION,
                submitter,
                _no_nul(guid),
                _no_nul(message_type),
                text,
                len(raw),
                _no_nul([i.as_dict() for i in issues]),
                http_status,
            )

    async def list_rejections(self, **filters: Any) -> dict[str, Any]:
        """A page of refused messages (record_rejection), newest first, without their bodies: :func:`read_rejections`
        (its keyword arguments) on a connection of the store's."""
        async with db.transaction(self.pool) as conn:
            return await read_rejections(conn, **filters)

    async def get_rejection(self, rejection_id: int) -> dict[str, Any] | None:
        """:func:`read_rejection` on a connection of the store's."""
        async with db.transaction(self.pool) as conn:
            return await read_rejection(conn, rejection_id)

    async def held_inventories(self, guid: str, invt_nos: list[str]) -> summary.Held | None:
        """The current inventories carrying these invtNos and the live summary applications naming them, by invtNo
        (what a summary application names: CEB701); None when a message with this root guid is stored already:
        ingest answers it (a replay, or a guid conflict), whatever became of the inventories since."""
        async with db.transaction(self.pool, db.BEGIN_SNAPSHOT_PLANNED) as conn:
            if await conn.fetchval(MESSAGE_STORED, guid):
                return None
            rows = await conn.fetch(summary.HELD_INVENTORIES, invt_nos, RANK_CONCLUDED) if invt_nos else []
            live = await _live_summaries(conn, invt_nos)
        held: dict[str, list[summary.HeldInventory]] = {}
        for r in rows:
            held.setdefault(r["invt_no"], []).append(summary.HeldInventory.from_row(r))
        return summary.Held(held, live)

    async def get_summary(self, agent_code: str, cop_no: str) -> dict[str, Any] | None:
        """A summary application (CEB701): every version of each of its parts (msgSeqNo), newest first; None when
        none was stored."""
        async with db.transaction(self.pool, db.BEGIN_SNAPSHOT_PLANNED) as conn:
            docs = await conn.fetch(SELECT_SUMMARY_DOCUMENTS, agent_code, cop_no)
        if not docs:
            return None
        return {"agentCode": agent_code, "copNo": cop_no, "documents": [_document_dict(d) for d in docs]}

    async def get_message(self, guid: str) -> dict[str, Any] | None:
        """The message row, its stored documents (head, lines, key state) and its XML."""
        async with db.transaction(self.pool, db.BEGIN_SNAPSHOT_PLANNED) as conn:
            m = await conn.fetchrow(SELECT_MESSAGE, guid)
            if m is None:
                return None
            docs = [_document_dict(d) for d in await conn.fetch(SELECT_MESSAGE_DOCUMENTS, m["id"])]
            for d in docs:
                if d["kind"] == Kind.DELIVERY:
                    d["parcels"] = delivery_parcels(d, await conn.fetch(
                        DELIVERY_PARCELS, text(d["head"], "logisticsCode") or "",
                        [text(x, "logisticsNo") or "" for x in d["lines"]]))  # fmt: skip
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
            "documents": docs,
            "raw_xml": m["raw_xml"],
        }

    async def get_shipment(self, ebp_code: str, order_no: str) -> dict[str, Any] | None:
        """The shipment's state and findings with every version of its documents (current and history), as of one
        moment: an ingest committing between the two reads would otherwise show the old state beside the new
        documents."""
        async with db.transaction(self.pool, db.BEGIN_SNAPSHOT_PLANNED) as conn:
            s = await conn.fetchrow(SELECT_SHIPMENT, ebp_code, order_no)
            if s is None:
                return None
            docs = await conn.fetch(SELECT_SHIPMENT_DOCUMENTS, ebp_code, order_no)
        out = self._shipment_dict(s)
        out["buyer_id_number"] = s["buyer_id_number"]
        out["customs_info"] = s["customs_info"]
        documents = [_document_dict(d) for d in docs]
        out["findings"] = [*(out["findings"] or []), *(f.as_dict() for f in parcel_findings(documents))]
        out["documents"] = own_parcels(documents)
        return out

    async def list_shipments(
        self,
        *,
        state: str | None = None,
        customs_status: str | None = None,
        ebp_code: str | None = None,
        ebc_code: str | None = None,
        flow: str | None = None,
        mode: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        customs_since: datetime | None = None,
        customs_until: datetime | None = None,
        parties: list[str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = True,
    ) -> dict[str, Any]:
        """A page of shipments by updated_at (newest first by default), keyset-paginated.

        ``parties`` restricts to shipments carrying one of those enterprise codes (tenant view);
        ``since`` is inclusive, ``until`` exclusive (updated_at, the last reconciliation change), and so are
        ``customs_since`` and ``customs_until`` (customs_updated_at, the last customs status change: what a seller
        polls for, or catches up on after webhooks it missed). ``next_cursor`` is None on the last page. A
        malformed cursor raises ValueError.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        filters = {
            "state": state,
            "customs_status": customs_status,
            "ebp_code": ebp_code,
            "ebc_code": ebc_code,
            "flow": flow,
            "mode": mode,
            "since": since,
            "until": until,
            "customs_since": customs_since,
            "customs_until": customs_until,
            "parties": parties,
        }
        sql, args = list_query(filters, decode_cursor(cursor) if cursor else None, limit + 1, newest_first)
        async with db.transaction(self.pool) as conn:
            rows = await conn.fetch(sql, *args)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": [self._shipment_dict(r) for r in rows],
            "next_cursor": encode_cursor(rows[-1]["updated_at"], rows[-1]["id"]) if more else None,
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
            "flow": r["flow"],
            "customs_status": r["customs_status"],
            "customs_updated_at": _iso(r["customs_updated_at"]),
            "created_at": _iso(r["created_at"]),
            "updated_at": _iso(r["updated_at"]),
        }
