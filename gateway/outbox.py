"""The forwarding side of the store: the transactional outbox, receipts applied, held inventories released.

* :meth:`Outbox.plan_wave`, :meth:`Outbox.wave_jobs` and :meth:`Outbox.after_write` run inside the ingest
  transaction (gateway.store calls them around the write of each wave of messages, batched or not): the
  documents are written ``queued`` (or ``held``) with their CopMsgId, and their jobs are enqueued by the same
  statement — a job exists iff the message committed. When a shipment the wave matched holds an inventory, it
  is evaluated again.
* :meth:`Outbox.apply_receipts` stores every receipt (deduplicated, spec §8.4) and applies them in one
  transaction: the document's customs state (monotonic, gateway.receipts), the shipment's
  customs_status, webhooks and the warehouse order on a change, the release of held inventories whose
  legs are now receipted, and re-sends for transient codes.
* :meth:`Outbox.record_sent` is the customs handler's commit: the message is ``sent`` and the job done
  in one transaction (fenced by the claim), shared by the deliveries that finish together.
* :meth:`Outbox.watchdog` flags messages sent without a receipt for too long and re-sends them.
* :meth:`Outbox.deliveries_dead` and :meth:`Outbox.deliveries_replayed` are the queue's hooks, in the transaction
  that moves a customs delivery to the dead letters or back: its message is ``failed``, or ``queued`` again, and
  its shipments' customs_status follows.

Every declaration job (at ingest, released from a hold, re-sent) carries the business keys of its message's
documents as queue ordering keys (gateway.forward.ordering_key), so per endpoint a later version of a document
is not delivered while an earlier one is still queued or running.

Concurrency: a receipt and an ingest touching the same shipment serialise on the ingest's advisory lock
of the shipment's orderNo (:func:`order_lock`), so a held inventory cannot be missed by both (the
ingest not yet seeing the receipt, the receipt not yet seeing the inventory).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import asyncpg
import cbec_queue
import structlog

from adapters import warehouse
from gateway import db, summary, taxbills
from gateway import receipts as rc
from gateway.auth import finding_sides
from gateway.batching import Batcher, Follow
from gateway.documents import Document, ParsedMessage
from gateway.forward import (
    CHANGE_REFUSED_EVENT,
    WAREHOUSE_CANCEL,
    HeldVersion,
    JobSpec,
    LegState,
    OrderSource,
    Replacement,
    Router,
    inventory_in_force,
    ordering_key,
    settle_held,
    shipment_customs_word,
    unsent_because,
    unsent_info,
)
from gateway.keystate import buyer_of
from gateway.messages import BY_CODE, LEGS, Kind
from gateway.reconcile import EXPORT_MODES_WITHOUT_RECEIPT
from gateway.tax import returned_value

log = structlog.get_logger("gateway.outbox")

_ATTEMPTS = 3  # a deadlock between a receipt and an ingest that found more locks late is retried
_XML_READ_MAX = 256  # message ids per read of the stored XML

# --- SQL ---------------------------------------------------------------------------------------------------

def waybill_type_of(inventory_type: str) -> str:
    """SQL: the waybill message type of the flow of an inventory whose type is ``inventory_type`` (an expression): a
    waybill joins an inventory of its own flow only (a carrier's logisticsNo may come back in the other)."""
    whens = " ".join(f"WHEN '{legs[Kind.INVENTORY]}' THEN '{legs[Kind.WAYBILL]}'" for _, legs in sorted(LEGS.items()))
    return f"(CASE {inventory_type} {whens} END)"


def other_platform(ebp: str, ono: str) -> str:
    """SQL: a platform other than ``ebp`` has a shipment of the orderNo ``ono`` with a live order, payment or
    inventory (as gateway.keystate.Live.platforms counts them). A waybill names its orderNo but no ebpCode and an
    orderNo is unique within a platform only (spec §6.2): then a waybill of that orderNo is a shipment's only through
    an inventory naming it. Import shipments only: an import waybill never joins an export one (keystate.Live)."""
    return (
        f"EXISTS (SELECT 1 FROM shipments AS t WHERE t.order_no = {ono} AND t.ebp_code <> '' AND t.ebp_code <> {ebp}"
        " AND t.flow = 'import'"
        " AND EXISTS (SELECT 1 FROM documents AS l WHERE l.ebp_code = t.ebp_code AND l.order_no = t.order_no"
        " AND l.kind IN ('order', 'payment', 'inventory') AND l.is_current AND NOT l.withdrawn))"
    )


def enqueue_insert(rows: str) -> str:
    """The insert of many jobs, given as the JSON array ``rows`` (a parameter such as ``$1``; see job_rows): the
    same insert as ``cbec_queue.enqueue`` (a live job with the same endpoint and dedupe key wins; ids follow the
    order of the rows). Returns each new job's endpoint; see wake_endpoints. Shared by ENQUEUE_MANY and the
    ingest's write statement (gateway.store.WRITE_INGEST), which enqueues its wave's jobs itself."""
    return f"""
    INSERT INTO jobs (endpoint, kind, payload, dedupe_key, run_after, priority, ordering_keys)
    SELECT x.endpoint, x.kind, x.payload, x.dedupe_key, now() + make_interval(secs => x.delay), x.priority,
           CASE WHEN cardinality(x.ordering_keys) > 0 THEN x.ordering_keys END
      FROM ROWS FROM (jsonb_to_recordset({rows}::jsonb) AS (endpoint text, kind text, payload jsonb, dedupe_key text,
                                                        delay float8, priority int, ordering_keys text[]))
           WITH ORDINALITY AS x(endpoint, kind, payload, dedupe_key, delay, priority, ordering_keys, n)
     ORDER BY x.n
    ON CONFLICT DO NOTHING
    RETURNING endpoint"""


def wake_endpoints(inserted: str, channel: str) -> str:
    """An expression that wakes, at commit, the workers of each endpoint among the rows of the CTE ``inserted``
    (an enqueue_insert) on the NOTIFY channel ``channel`` (a parameter)."""
    return (
        f"(SELECT count(pg_notify({channel}::text, e.endpoint)) FROM (SELECT DISTINCT endpoint FROM {inserted}) AS e)"
    )


#: cbec_queue.enqueue for many jobs ($1 JSON array of {endpoint, kind, payload, dedupe_key, delay, priority,
#: ordering_keys}, see job_rows; $2 the queue's NOTIFY channel): ON CONFLICT DO NOTHING skips a job whose
#: endpoint already has a live one with the same dedupe key; one notification per endpoint, delivered at commit.
#: Returns how many were new. Rows get their ids in the array's order (WITH ORDINALITY), so that of two jobs of
#: one wave sharing an ordering key the one listed first goes first.
ENQUEUE_MANY = f"""
WITH ins AS ({enqueue_insert("$1")}
)
SELECT (SELECT count(*) FROM ins) AS new, {wake_endpoints("ins", "$2")} AS woken
"""

#: SQL: the held inventory x (its current version's tradeMode, x.trade_mode) is of a mode that needs no 收款单
#: (gateway.reconcile.EXPORT_MODES_WITHOUT_RECEIPT: B2B export).
_WITHOUT_RECEIPT = f"x.trade_mode IN ({', '.join(repr(m) for m in sorted(EXPORT_MODES_WITHOUT_RECEIPT))})"


def _hold(rank: str) -> dict[str, str]:
    """What releases a held inventory (x: its documents row, mt its message type, trade_mode its tradeMode; ``rank``:
    the parameter of the least rank of a receipt taken): its shipment matched, and the latest current order and
    payment of the shipment and the waybill the inventory names receipted at that rank or above — a B2B export with
    no payment waits for none (gateway.reconcile.needed_legs: matched without one). One text for RELEASE_HELD and
    HOLD_REASONS, which says why one waits."""
    latest = """coalesce((SELECT {a}.forward_state = 'receipted' AND {a}.customs_rank >= {rank}
                           FROM (SELECT * FROM documents AS {a} WHERE {where} OFFSET 0) AS {a}
                          WHERE {a}.kind = '{kind}'{extra} AND {a}.is_current AND NOT {a}.withdrawn
                          ORDER BY {a}.app_time DESC, {a}.id DESC LIMIT 1), {absent})"""
    return {
        "matched": "EXISTS (SELECT FROM shipments AS s"
                   " WHERE s.ebp_code = x.ebp_code AND s.order_no = x.order_no AND s.state = 'matched')",
        **{kind: latest.format(a=a, rank=rank, kind=kind, extra="", absent=absent,
                               where=f"{a}.ebp_code = x.ebp_code AND {a}.order_no = x.order_no")
           for kind, a, absent in (("order", "o", "false"), ("payment", "p", _WITHOUT_RECEIPT))},
        "waybill": latest.format(a="w", rank=rank, kind="waybill", absent="false",
                                 extra=f" AND w.message_type = {waybill_type_of('x.mt')}",
                                 where="w.logistics_code = x.logistics_code AND w.logistics_no = x.logistics_no"),
    }  # fmt: skip


_HOLD = _hold("$5")


def current_of(d: str, c: str) -> str:
    """SQL: the row ``c`` is the current version of the key of the document ``d`` (one probe of
    documents_current_key_idx)."""
    return (f"{c}.message_type = {d}.message_type AND {c}.key1 = {d}.key1 AND {c}.key2 = {d}.key2"
            f" AND {c}.is_current")  # fmt: skip


def withdrawn_since(d: str) -> str:
    """SQL: a version of the key of the document ``d`` after it (walked forward through superseded_by, one probe of
    the primary key a version) is a withdrawal — whatever came after that, a declaration anew say: ``d`` was withdrawn
    and, held, is needed by nothing of its key any more."""
    return f"""coalesce((WITH RECURSIVE later AS (
                  SELECT n.superseded_by, n.withdrawn, 1 AS depth FROM documents AS n WHERE n.id = {d}.superseded_by
                  UNION ALL
                  SELECT n.superseded_by, n.withdrawn, l.depth + 1
                    FROM later AS l,
                         LATERAL (SELECT * FROM documents AS n WHERE n.id = l.superseded_by OFFSET 0) AS n
                   WHERE NOT l.withdrawn AND l.depth < 1000)
                SELECT bool_or(l.withdrawn) FROM later AS l), false)"""


def _as_current(d: str) -> str:
    """SQL (a LATERAL subquery): what the held document ``d`` is released by — itself when it is its key's current
    version, else the current one (a held first declaration a held change replaced goes when the change may: before
    it, as customs takes a change only of a document it has; not when the first declaration's own shipment or
    waybill, which the change may have left, is ready); ``withdrawn``: it waits for nothing of its own, being a
    withdrawal or withdrawn since (withdrawn_since: then declared anew too, it goes only with its message, which
    needs nothing of the new declaration's shipment)."""
    return f"""LATERAL (SELECT * FROM (
                  SELECT 0 AS pri, g.ebp_code, g.order_no, g.logistics_code, g.logistics_no, g.message_type,
                         g.head ->> 'tradeMode' AS trade_mode, {d}.withdrawn OR {withdrawn_since(d)} AS withdrawn
                    FROM documents AS g
                   WHERE NOT {d}.is_current AND {current_of(d, "g")}
                  UNION ALL
                  SELECT 1, {d}.ebp_code, {d}.order_no, {d}.logistics_code, {d}.logistics_no, {d}.message_type,
                         {d}.head ->> 'tradeMode', {d}.withdrawn) AS g
                ORDER BY g.pri LIMIT 1) AS g"""


#: Held inventories of shipments ($1 ebpCode, $2 orderNo) or naming waybills ($3 logisticsCode, $4 No), with the held
#: versions they replaced, whose every document is ready — its shipment matched with its order, payment and waybill
#: receipted at rank >= $5 (spec §6.7 step 2; a rejection is forward_state 'rejected'), a superseded version's those
#: of its key's current version (_as_current); a withdrawal, or a version withdrawn since (a parcel of a message of
#: several, which goes for the others), waits for nothing of its own — and whose held earlier versions go too, in
#: this release (a change or withdrawal never goes before the version it replaces): flipped to 'queued' and returned
#: with their modes, their documents' business keys (key1s[i], key2s[i]: the ordering keys of the jobs), and the
#: shipments of the current versions of their superseded documents (next_ebps[i], next_onos[i]: what may go after
#: them, a withdrawal held behind them say, looked at again).
RELEASE_HELD = f"""
WITH RECURSIVE found AS MATERIALIZED (
    SELECT d.message_id
      FROM unnest($1::text[], $2::text[]) AS k(ebp, ono),
           LATERAL (SELECT d.message_id FROM documents AS d
                     WHERE d.ebp_code = k.ebp AND d.order_no = k.ono AND d.kind = 'inventory'
                       AND d.forward_state = 'held' OFFSET 0) AS d
    UNION
    SELECT d.message_id
      FROM unnest($3::text[], $4::text[]) AS w(lc, ln),
           LATERAL (SELECT d.message_id FROM documents AS d
                     WHERE d.logistics_code = w.lc AND d.logistics_no = w.ln AND d.kind = 'inventory'
                       AND d.forward_state = 'held' OFFSET 0) AS d
), cand AS MATERIALIZED (
    SELECT message_id FROM found
    UNION
    -- the held versions these replaced: they go first
    SELECT p.message_id
      FROM found AS c,
           LATERAL (SELECT d.id FROM documents AS d WHERE d.message_id = c.message_id AND d.forward_state = 'held'
                    OFFSET 0) AS d,
           LATERAL (SELECT p.message_id FROM documents AS p WHERE p.superseded_by = d.id AND p.forward_state = 'held'
                    OFFSET 0) AS p
), docs AS MATERIALIZED (
    SELECT d.id, d.message_id, d.is_current, d.key1, d.key2, d.head ->> 'tradeMode' AS mode,
           d.message_type, g.ebp_code, g.order_no, g.logistics_code, g.logistics_no, g.message_type AS mt,
           g.trade_mode,
           -- waits for nothing of its own: a withdrawal, or a version withdrawn since (it goes only with its message)
           g.withdrawn AS free,
           (SELECT p.message_id FROM documents AS p WHERE p.superseded_by = d.id AND p.forward_state = 'held'
             LIMIT 1) AS before
      FROM cand AS c,
           LATERAL (SELECT * FROM documents AS d WHERE d.message_id = c.message_id AND d.forward_state = 'held'
                    OFFSET 0) AS d,
           {_as_current("d")}
), blocked (message_id) AS (
    -- the latest current order / payment of the shipment and the waybill the inventory names (as reconciled)
    SELECT x.message_id FROM docs AS x
     WHERE NOT x.free AND (
           NOT {_HOLD["matched"]}
        OR NOT {_HOLD["order"]}
        OR NOT {_HOLD["payment"]}
        OR NOT {_HOLD["waybill"]})
    UNION
    -- a held version before it that is none of these
    SELECT x.message_id FROM docs AS x WHERE x.before IS NOT NULL AND x.before NOT IN (SELECT message_id FROM cand)
    UNION
    -- nor goes now
    SELECT x.message_id FROM blocked AS b JOIN docs AS x ON x.before = b.message_id
), released AS (
    -- by id = ANY: one index probe per candidate whatever the plan
    UPDATE documents AS d SET forward_state = 'queued'
     WHERE d.id = ANY (ARRAY(SELECT x.id FROM docs AS x WHERE x.message_id NOT IN (SELECT message_id FROM blocked)))
       AND d.forward_state = 'held'
    RETURNING d.message_id
)
SELECT x.message_id, m.guid, m.message_type,
       coalesce(array_agg(DISTINCT x.mode) FILTER (WHERE x.mode IS NOT NULL), '{{}}') AS modes,
       array_agg(x.key1 ORDER BY x.id) AS key1s, array_agg(x.key2 ORDER BY x.id) AS key2s,
       coalesce(array_agg(x.ebp_code) FILTER (WHERE NOT x.is_current), '{{}}') AS next_ebps,
       coalesce(array_agg(x.order_no) FILTER (WHERE NOT x.is_current), '{{}}') AS next_onos
  FROM docs AS x JOIN messages AS m ON m.id = x.message_id
 WHERE x.message_id IN (SELECT message_id FROM released)
 GROUP BY x.message_id, m.guid, m.message_type
 ORDER BY x.message_id
"""

_WAITS = _hold("$2")
#: Why held inventories wait: every held document of their messages ($1 message ids: a message goes whole, signed as
#: one) with its shipment and which of RELEASE_HELD's conditions it meets ($2 the least rank of a receipt taken), a
#: superseded version's as its key's current version, none of a version withdrawn since; a held withdrawal's message
#: waits for the held message of the version it withdraws: what that one waits for.
HOLD_REASONS = f"""
WITH shown AS (
    SELECT m.id AS shown, m.id AS message_id FROM unnest($1::bigint[]) AS m(id)
    UNION
    SELECT d.message_id, p.message_id
      FROM (SELECT * FROM documents AS d
             WHERE d.message_id = ANY ($1::bigint[]) AND d.forward_state = 'held' AND d.withdrawn) AS d,
           LATERAL (SELECT p.message_id FROM documents AS p WHERE p.superseded_by = d.id AND p.forward_state = 'held'
                    OFFSET 0) AS p
)
SELECT x.message_id, x.ebp_code, x.order_no, {_WAITS["matched"]} AS matched, {_WAITS["order"]} AS "order",
       {_WAITS["payment"]} AS payment, {_WAITS["waybill"]} AS waybill
  FROM (SELECT s.shown AS message_id, d.id, g.ebp_code, g.order_no, g.logistics_code, g.logistics_no,
               g.message_type AS mt, g.trade_mode
          FROM shown AS s,
               LATERAL (SELECT * FROM documents AS d
                         WHERE d.message_id = s.message_id AND d.forward_state = 'held' AND NOT d.withdrawn
                        OFFSET 0) AS d,
               {_as_current("d")}
         WHERE NOT g.withdrawn) AS x
 ORDER BY x.message_id, x.id
"""

#: The versions before documents just stored ($1 message ids, $2 doc_index: changes and withdrawals of a version the
#: gateway holds), each document's walked back through the versions it replaced (superseded_by) while they are held or
#: unsent, to the first declaration (appType 1) or the first version sent, which ends the walk: one row per (start,
#: version), the latest version first (gateway.forward.Replacement).
SETTLE_VERSIONS = """
WITH RECURSIVE back AS (
    SELECT n.id AS start, n.message_id AS start_message, n.doc_index AS start_index, n.app_type AS start_type,
           n.ebp_code, n.order_no, p.id, p.message_id, p.app_type, p.forward_state, 1 AS depth
      FROM unnest($1::bigint[], $2::int[]) AS k(message_id, doc_index),
           LATERAL (SELECT * FROM documents AS n WHERE n.message_id = k.message_id AND n.doc_index = k.doc_index
                    OFFSET 0) AS n
      LEFT JOIN LATERAL (SELECT * FROM documents AS p WHERE p.superseded_by = n.id OFFSET 0) AS p ON true
    UNION ALL
    SELECT b.start, b.start_message, b.start_index, b.start_type, b.ebp_code, b.order_no, p.id, p.message_id,
           p.app_type, p.forward_state, b.depth + 1
      FROM back AS b JOIN documents AS p ON p.superseded_by = b.id
     WHERE b.app_type <> '1' AND b.forward_state IN ('held', 'unsent') AND b.depth < 1000
)
SELECT * FROM back ORDER BY start, depth
"""

#: Every document of held messages ($1 ids), row-locked (a release of the message waits, or it is seen released):
#: what gateway.forward.settle_held reads of each (HeldVersion). (Locked in a subquery: the walk of withdrawn_since
#: made the planner read the whole primary key for the order, its cost being paid per row.)
SETTLE_MESSAGES = f"""
SELECT d.id, d.message_id, d.app_type, d.forward_state, d.is_current, d.withdrawn,
       {withdrawn_since("d")} AS key_withdrawn,
       (SELECT p.forward_state FROM documents AS p WHERE p.superseded_by = d.id LIMIT 1) AS replaced_state
  FROM (SELECT d.id, d.message_id, d.app_type, d.forward_state, d.is_current, d.withdrawn, d.superseded_by
          FROM documents AS d
         WHERE d.message_id = ANY ($1::bigint[])
         ORDER BY d.id
           FOR UPDATE OF d) AS d
 ORDER BY d.id
"""

#: Documents ($1 ids) and every version of their keys after them (walked forward through superseded_by, one probe of
#: the primary key a version): what may wait for those versions to go first (RELEASE_HELD), which settle looks at again
#: when they never go — a held withdrawal (its message and doc_index) is settled in turn, and each is released by its
#: shipment when it may.
LATER_VERSIONS = """
WITH RECURSIVE later AS (
    SELECT y.id, y.superseded_by, 0 AS depth FROM documents AS y WHERE y.id = ANY ($1::bigint[])
    UNION ALL
    SELECT n.id, n.superseded_by, l.depth + 1
      FROM later AS l, LATERAL (SELECT * FROM documents AS n WHERE n.id = l.superseded_by OFFSET 0) AS n
     WHERE l.depth < 1000
)
SELECT DISTINCT c.message_id, c.doc_index, c.forward_state = 'held' AND c.withdrawn AS held_withdrawal, c.ebp_code,
       c.order_no
  FROM (SELECT DISTINCT l.id FROM later AS l) AS l,
       LATERAL (SELECT * FROM documents AS c WHERE c.id = l.id OFFSET 0) AS c
"""

#: The shipments of messages' documents ($1 message ids).
SHIPMENTS_OF_MESSAGES = """
SELECT DISTINCT d.ebp_code, d.order_no FROM documents AS d WHERE d.message_id = ANY ($1::bigint[])
"""

#: Held versions never to be sent and withdrawals concluded here ($1 ids): unsent. A message none of whose documents
#: goes any more carries no CopMsgId: it never goes ($2 the messages of $1).
SET_UNSENT = """
UPDATE documents AS d
   SET forward_state = CASE WHEN d.id = ANY ($1::bigint[]) AND d.forward_state = 'held' THEN 'unsent'
                            ELSE d.forward_state END,
       cop_msg_id = CASE WHEN NOT EXISTS (SELECT 1 FROM documents AS o
                                           WHERE o.message_id = d.message_id AND o.forward_state <> 'unsent'
                                             AND NOT (o.id = ANY ($1::bigint[]) AND o.forward_state = 'held'))
                         THEN NULL ELSE d.cop_msg_id END
 WHERE d.message_id = ANY ($2::bigint[])
"""

_DOC_STATE = (
    "d.id, d.message_id, d.doc_index, d.kind, d.message_type, d.ebp_code, d.order_no, d.logistics_code,"
    " d.logistics_no, d.is_current, d.withdrawn, d.forward_state, d.customs_status, d.customs_rank,"
    " d.customs_return_time, d.customs_info, d.pre_no, d.invt_no, d.repushes, d.head ->> 'tradeMode' AS mode,"
    " d.key1, d.key2, d.app_type"
)

_RECEIPTED_KINDS = "('inventory', 'cancel', 'refund', 'delivery')"  # the kinds answered by guid / copNo
_LEG_KINDS = frozenset({"order", "payment", "waybill", "inventory"})

def _agrees(doc: str) -> str:
    """SQL: the document ``doc`` carries every party of the probe ``x`` (x.parties: {field: value}) in its head."""
    return (
        "NOT EXISTS (SELECT 1 FROM jsonb_each_text(x.parties) AS party(field, value)"
        f" WHERE coalesce({doc}.head ->> party.field, '') <> party.value)"
    )


#: Correlation of every new return of a receipt message in one statement ($1: JSON array of {i, declared, ori, k1,
#: k2, ebc, guid, info_guid, cop_no, parties, pre_no, invt_no}, absent values null, parties an object {field: value}),
#: with the documents found, read (not locked): one row per (i, document), in the order of the
#: probes of gateway.receipts.Correlation, most reliable first — a CEB900's oriCopMsgId gives every document sent
#: with that CopMsgId (and nothing else); else the first probe that finds one: the declaration's key (the version
#: of it whose guid the receipt echoes, else the current document; with the receipt's ebcCode when it carries
#: one); then, each only with every party of the receipt in agreement: the echoed guid (the very version), copNo
#: (the current version first, so a change gets its receipts; with no party named, only when one document has
#: it), preNo, invtNo. COALESCE evaluates its probes lazily, left to right. A receipt echoing the guid of a document
#: the gateway sent but did not keep (unkept_documents) finds nothing: not the key's current version. The guid is
#: the receipt's own, or when that names no document of the declared type (E-Port's own, spec §5.1) the one its
#: returnInfo names in brackets (info_guid): which version of a key it answers, before the key's current one.
CORRELATE = f"""
SELECT x.i, {_DOC_STATE}
  FROM (SELECT r.i, r.declared, r.ori, r.k1, r.k2, r.ebc, r.cop_no, r.parties, r.pre_no, r.invt_no,
               CASE WHEN r.info_guid IS NOT NULL
                         AND (r.guid IS NULL
                              OR (NOT EXISTS (SELECT 1 FROM documents AS v
                                               WHERE v.doc_guid = r.guid AND v.message_type = r.declared)
                                  AND NOT EXISTS (SELECT 1 FROM unkept_documents AS u
                                                   WHERE u.doc_guid = r.guid AND u.message_type = r.declared)))
                    THEN r.info_guid ELSE r.guid END AS guid
          FROM jsonb_to_recordset($1::jsonb) AS r(i int, declared text, ori text, k1 text, k2 text, ebc text,
                                                  guid text, info_guid text, cop_no text, parties jsonb, pre_no text,
                                                  invt_no text)) AS x,
       LATERAL unnest(CASE
           WHEN x.ori IS NOT NULL THEN
               ARRAY(SELECT o.id FROM documents AS o WHERE o.cop_msg_id = x.ori ORDER BY o.doc_index)
           WHEN x.declared IS NULL THEN '{{}}'::bigint[]
           WHEN x.guid IS NOT NULL
                AND EXISTS (SELECT 1 FROM unkept_documents AS u
                             WHERE u.doc_guid = x.guid AND u.message_type = x.declared)
                AND NOT EXISTS (SELECT 1 FROM documents AS v WHERE v.doc_guid = x.guid AND v.message_type = x.declared)
               THEN '{{}}'::bigint[]
           ELSE ARRAY[coalesce(
               (SELECT v.id FROM documents AS v
                 WHERE v.doc_guid = x.guid AND v.message_type = x.declared AND v.key1 = x.k1 AND v.key2 = x.k2
                   AND (x.ebc IS NULL OR v.ebc_code IS NULL OR v.ebc_code = x.ebc)
                 ORDER BY v.id DESC LIMIT 1),
               (SELECT k.id FROM documents AS k
                 WHERE k.message_type = x.declared AND k.key1 = x.k1 AND k.key2 = x.k2 AND k.is_current
                   AND (x.ebc IS NULL OR k.ebc_code IS NULL OR k.ebc_code = x.ebc)
                 LIMIT 1),
               (SELECT g.id FROM documents AS g
                 WHERE g.doc_guid = x.guid AND g.kind IN {_RECEIPTED_KINDS} AND g.message_type = x.declared
                   AND {_agrees("g")}
                 ORDER BY g.id DESC LIMIT 1),
               (SELECT CASE WHEN x.parties <> '{{}}'::jsonb OR count(DISTINCT c.key) = 1
                            THEN (array_agg(c.id ORDER BY c.is_current DESC, c.id DESC))[1] END
                  FROM (SELECT c.id, c.is_current, (c.key1, c.key2) AS key
                          FROM documents AS c
                         WHERE (c.head ->> 'copNo') = x.cop_no AND c.kind IN {_RECEIPTED_KINDS}
                           AND c.message_type = x.declared AND {_agrees("c")}
                         ORDER BY c.is_current DESC, c.id DESC LIMIT 20) AS c),
               (SELECT p.id FROM documents AS p
                 WHERE p.pre_no = x.pre_no AND p.message_type = x.declared AND {_agrees("p")}
                 ORDER BY p.id DESC LIMIT 1),
               (SELECT v.id FROM documents AS v
                 WHERE v.invt_no = x.invt_no AND v.message_type = x.declared AND {_agrees("v")}
                 ORDER BY v.id DESC LIMIT 1))]
       END) WITH ORDINALITY AS f(id, n)
  JOIN documents AS d ON d.id = f.id
 ORDER BY x.i, f.n
"""

#: The tax bills (CEB816/818, gateway.taxbills) matched before to any version of the inventories ($1 message types,
#: $2 key1s, $3 key2s, $4 ebpCodes, $5 orderNos): what a new one is folded into (in any order: the fold's result does
#: not depend on it). A bill is the inventory's, whichever version its records matched (a refused change echoes the
#: invtNo too).
TAX_BILLS_OF = """
SELECT v.message_type AS inv_type, v.key1 AS inv_key1, v.key2 AS inv_key2, r.message_type, r.element_index,
       r.doc_guid, r.keys, r.return_status, r.return_time, r.return_info, r.document_id
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS k(mt, k1, k2, ebp, ono),
       LATERAL (SELECT v.id, v.message_type, v.key1, v.key2 FROM documents AS v
                 WHERE v.ebp_code = k.ebp AND v.order_no = k.ono AND v.message_type = k.mt AND v.key1 = k.k1
                   AND v.key2 = k.k2 OFFSET 0) AS v,
       -- the type filtered outside the fence: inside, the generic plan took sql/230's partial index of every tax
       -- bill (by received_at) over the document's few receipts
       LATERAL (SELECT * FROM receipts AS r WHERE r.document_id = v.id OFFSET 0) AS r
 WHERE r.message_type IN ('CEB816', 'CEB818')
"""

def _link_early(kind: str, number: str, types: str, parties: Iterable[str], picked: str) -> str:
    """SQL linking the customs records kept unmatched that came before the receipt teaching the number they name
    (customs sends in no order, and such a record once) to the documents ($1 ids) of ``kind`` a receipt just taught
    it (documents.invt_no): the unmatched receipts of ``types`` (an SQL list) whose ``number`` key is it, each of the
    ``parties`` fields a record names in agreement with the document; of documents taught one number at once, the
    newest. ``picked``: a key of the record to return as ``picked`` beside its id and the number."""
    agree = ", ".join(f"'{f}'" for f in parties)
    return f"""
WITH d AS MATERIALIZED (
    SELECT d.id, d.message_id, d.invt_no, d.head FROM unnest($1::bigint[]) AS x(id),
           LATERAL (SELECT * FROM documents AS d WHERE d.id = x.id OFFSET 0) AS d
     WHERE d.kind = '{kind}' AND d.invt_no IS NOT NULL
), records AS MATERIALIZED (
    SELECT DISTINCT ON (r.id) r.id, d.id AS document_id, d.message_id, d.invt_no, r.keys ->> '{picked}' AS picked
      FROM d, LATERAL (SELECT r.id, r.keys FROM receipts AS r
                        WHERE (r.keys ->> '{number}') = d.invt_no AND r.outcome = 'unmatched'
                          AND r.message_type IN ({types}) OFFSET 0) AS r
     WHERE NOT EXISTS (SELECT 1 FROM jsonb_each_text(r.keys) AS party(field, value)
                        WHERE party.field IN ({agree}) AND coalesce(d.head ->> party.field, '') <> party.value)
     ORDER BY r.id, d.id DESC
)
UPDATE receipts AS r SET document_id = x.document_id, message_id = x.message_id, outcome = 'applied'
  FROM records AS x
 WHERE r.id = ANY (ARRAY(SELECT id FROM records)) AND r.id = x.id  -- by id = ANY: index probes whatever the plan
RETURNING r.id, x.invt_no AS number, x.picked
"""


#: Tax bills (CEB816/818) that came before the receipt naming their inventory's invtNo, linked to it (sql/420); the
#: shipment shows them from now on. Returns each with its taxNo (picked).
LINK_EARLY_TAX_BILLS = _link_early("inventory", "invtNo", "'CEB816', 'CEB818'", taxbills.PARTY_FIELDS, "taxNo")
#: Summary results (CEB792) that came before the CEB702 giving their application its sumNo (kept as its invt_no),
#: linked to it (sql/440); the application's view shows them from now on. Returns each with its declSeqNo (picked).
LINK_EARLY_SUMMARY_RESULTS = _link_early("summary", "sumNo", "'CEB792'", summary.PARTY_FIELDS, "declSeqNo")

#: The documents ($1 ids), fresh and row-locked, after the shipment locks are held.
LOCK_DOCUMENTS = f"SELECT {_DOC_STATE} FROM documents AS d WHERE d.id = ANY ($1::bigint[]) ORDER BY d.id FOR UPDATE"

#: The shipments waybills ($1 logisticsCode, $2 logisticsNo; $3 their orderNos) belong to: via an inventory naming
#: one, or sharing its orderNo — a keyed shipment, or the waybill's own while no order, payment or inventory of its
#: orderNo has come (ebpCode '': the store drops it once one has). All the waybills of a batch in one round trip.
SHIPMENTS_OF_WAYBILLS = f"""
SELECT d.ebp_code, d.order_no
  FROM unnest($1::text[], $2::text[], $4::text[]) AS w(lc, ln, wt),
       LATERAL (SELECT * FROM documents AS d
                 WHERE d.logistics_code = w.lc AND d.logistics_no = w.ln AND d.kind = 'inventory'
                   AND d.is_current AND NOT d.withdrawn OFFSET 0) AS d
 WHERE w.wt = {waybill_type_of("d.message_type")}
UNION
SELECT s.ebp_code, s.order_no
  FROM unnest($3::text[]) AS o(ono),
       LATERAL (SELECT * FROM shipments AS s WHERE s.order_no = o.ono OFFSET 0) AS s
 WHERE s.flow = 'import'
"""

#: The documents of forwarded messages the store did not keep (ignored_older), with their messages ($1 message guids,
#: $2 types, $3 document guids, $4 key1s, $5 key2s): customs' receipts for them move nothing (sql/390).
RECORD_UNKEPT = """
INSERT INTO unkept_documents (doc_guid, message_type, key1, key2, message_id)
SELECT u.doc_guid, u.message_type, u.key1, u.key2, m.id
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(guid, message_type, doc_guid, key1, key2)
  JOIN messages AS m ON m.guid = u.guid
"""

#: The messages that carried documents the gateway did not keep, by those documents' guids ($1) and types ($2).
UNKEPT = """
SELECT u.doc_guid, u.message_type, u.message_id
  FROM unnest($1::text[], $2::text[]) AS x(doc_guid, message_type)
  JOIN unkept_documents AS u ON u.doc_guid = x.doc_guid AND u.message_type = x.message_type
"""

#: Take the advisory locks $1 (sorted ids) for the rest of the transaction.
LOCK_IDS = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k"

#: Insert the receipts; the ones already stored (same dedupe) are skipped, unless they matched no document then:
#: those are returned with the new ones, to be tried again (their document may have been stored since). Returns
#: their dedupe keys. The message's raw XML ($4) goes on its first return element only: one copy per message.
INSERT_RECEIPTS = """
INSERT INTO receipts (message_type, root_guid, element_index, doc_guid, keys, return_status, return_time,
                      return_info, cop_msg_id, raw_xml, source, submitter, dedupe, outcome)
SELECT $1, $2, x.idx, x.guid, x.keys, x.status, x.rtime, x.info, $3,
       CASE WHEN x.idx = min(x.idx) OVER () THEN $4 END, $5, $6, x.dedupe, 'unmatched'
  FROM unnest($7::int[], $8::text[], $9::jsonb[], $10::text[], $11::text[], $12::text[], $13::text[])
       AS x(idx, guid, keys, status, rtime, info, dedupe)
ON CONFLICT (dedupe) DO UPDATE SET received_at = receipts.received_at  -- kept as it was, returned to be tried again
 WHERE receipts.outcome = 'unmatched'
RETURNING id, dedupe, raw_xml IS NOT NULL AS has_raw, xmax = 0 AS inserted
"""
#: The raw XML ($2) on a receipt ($1): when the message's first return element was already stored.
SET_RECEIPT_RAW = "UPDATE receipts SET raw_xml = $2 WHERE id = $1"

#: Documents' customs state after the receipts ($1-$8: ids, then the new values; NULL keeps pre_no / invt_no; $14
#: whether a receipt said something: one whose code is in no table moves nothing and leaves the document awaited,
#: so that the watchdog brings it to an operator) and the receipts' outcomes ($9-$13), in one round trip (empty
#: arrays change nothing; the tables are distinct).
SET_CUSTOMS_STATE_AND_OUTCOMES = """
WITH docs AS (
    UPDATE documents AS d
       SET forward_state = x.forward_state, customs_status = x.status, customs_rank = x.rank,
           customs_return_time = x.rtime, customs_info = x.info, pre_no = coalesce(x.pre_no, d.pre_no),
           invt_no = coalesce(x.invt_no, d.invt_no),
           last_receipt_at = CASE WHEN x.answered THEN now() ELSE d.last_receipt_at END,
           receipt_overdue = d.receipt_overdue AND NOT x.answered
      FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[],
                  $14::boolean[])
           AS x(id, forward_state, status, rank, rtime, info, pre_no, invt_no, answered)
     WHERE d.id = x.id AND d.id = ANY ($1::bigint[])  -- index probes whatever the plan
    RETURNING d.id
), answered AS (  -- a receipt came: no longer awaited (sql/100_receipts_awaited.sql); not for a code in no table
    DELETE FROM receipts_awaited AS a
     WHERE a.document_id = ANY (ARRAY(SELECT y.id FROM unnest($1::bigint[], $14::boolean[]) AS y(id, answered)
                                       WHERE y.answered))
), recs AS (
    UPDATE receipts AS r SET message_id = x.message_id, document_id = x.document_id, applied = x.applied,
                             outcome = x.outcome
      FROM unnest($9::bigint[], $10::bigint[], $11::bigint[], $12::boolean[], $13::text[])
           AS x(id, message_id, document_id, applied, outcome)
     WHERE r.id = x.id AND r.id = ANY ($9::bigint[])
    RETURNING r.id
)
SELECT (SELECT count(*) FROM docs) AS documents, (SELECT count(*) FROM recs) AS receipts
"""

#: Inventories ($1 ebcCode, $2 orderNo) that count no more toward their buyer's annual quota (a first declaration
#: customs rejected, an inventory whose cancellation customs concluded): their tax_ledger rows go to zero, and one
#: the annual limit blocked is blocked no more (nothing of it at customs to reopen). Without the buyer's lock: a
#: lower amount is never an overrun, and an ingest that read the higher one was only stricter.
RELEASE_QUOTA = """
UPDATE tax_ledger AS l SET amount = 0, returned = 0, blocked_at = NULL, updated_at = now()
  FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(ebc, ono, doc)
 WHERE l.ebc_code = x.ebc AND l.order_no = x.ono AND (l.amount <> 0 OR l.returned <> 0 OR l.blocked_at IS NOT NULL)
   AND l.ebc_code = ANY ($1::text[]) AND l.order_no = ANY ($2::text[])  -- index probes whatever the plan
   -- not when the inventory was declared again since (its amount is the new declaration's)
   AND NOT EXISTS (SELECT 1 FROM documents AS n
                    WHERE n.message_type = 'CEB621' AND n.key1 = x.ebc AND n.key2 = x.ono AND n.id > x.doc
                      AND n.app_type = '1')
RETURNING l.buyer_id_number, l.year, l.ebc_code, l.order_no
"""

def latest_return(d: str) -> str:
    """SQL: the lines of the return (CEB625) customs concluded for the inventory row ``d`` (an alias with its id,
    ebp_code, order_no, key1 and key2), NULL when none: of the versions of the return of its key (a withdrawal is
    none) receipted 399 or above since the inventory's latest first declaration (appType 1) up to ``d``, the latest
    — a change of a return replaces what the return gives back, a return of a declaration before does not count for
    one declared anew (gateway.keystate.carry_return). The versions are probed by the inventory's shipment
    (ebpCode, orderNo), as its legs are."""
    return f"(SELECT r.lines {_concluded_return_versions(d, ' AND NOT r.withdrawn')} ORDER BY r.id DESC LIMIT 1)"


def concluded_returns(d: str) -> str:
    """SQL: the versions of the return (CEB625) of the inventory row ``d`` customs concluded, as :func:`latest_return`
    reads them but withdrawals (appType 3) too, in the order they were declared: a JSON array of {guid, lines,
    withdrawn, concluded_at (the returnTime of the receipt that concluded it)}, NULL when none — what the estimate
    beside the inventory's tax bill takes back (gateway.taxbills.return_for). For the shipment's view: a subquery."""
    return (
        "(SELECT jsonb_agg(jsonb_build_object('guid', r.doc_guid, 'lines', r.lines, 'withdrawn', r.withdrawn,"
        f" 'concluded_at', r.customs_return_time) ORDER BY r.id) {_concluded_return_versions(d)})"
    )


def _concluded_return_versions(d: str, also: str = "") -> str:
    """SQL: FROM and WHERE of the versions of the return of the inventory row ``d`` customs concluded since the
    inventory's latest first declaration up to ``d`` (see latest_return), with the condition ``also``."""
    return (
        f"FROM documents AS r WHERE r.ebp_code = {d}.ebp_code AND r.order_no = {d}.order_no"
        f" AND r.message_type = 'CEB625' AND r.key1 = {d}.key1 AND r.key2 = {d}.key2{also}"
        f" AND r.forward_state = 'receipted' AND r.customs_rank >= {rc.RANK_CONCLUDED}"
        " AND NOT EXISTS (SELECT 1 FROM documents AS n"
        f" WHERE n.ebp_code = {d}.ebp_code AND n.order_no = {d}.order_no AND n.message_type = 'CEB621'"
        f" AND n.key1 = {d}.key1 AND n.key2 = {d}.key2 AND n.app_type = '1' AND n.id > r.id AND n.id <= {d}.id)"
    )


#: Returns ($1 document ids, any of their versions) with the current version of the inventory each returns (its head
#: and lines) and the lines of the return customs concluded for it (latest_return: not necessarily these).
RETURNED_INVENTORIES = f"""
SELECT i.key1, i.key2, i.doc_index, i.path, i.head, i.lines, {latest_return("i")} AS returned
  FROM documents AS r,
       LATERAL (SELECT i.id, i.ebp_code, i.order_no, i.key1, i.key2, i.doc_index, i.path, i.head, i.lines,
                       i.withdrawn
                  FROM documents AS i
                 WHERE i.message_type = 'CEB621' AND i.key1 = r.key1 AND i.key2 = r.key2 AND i.is_current
                OFFSET 0) AS i
 WHERE r.id = ANY ($1::bigint[]) AND NOT i.withdrawn
"""

#: Returns customs concluded: their inventories ($1 ebcCode, $2 orderNo) count toward their buyer's annual quota what
#: they count in full (a row's amount + returned, see gateway.keystate.assess_into) less the value of the goods
#: returned ($3; gateway.tax.returned_value, of the latest version concluded), which replaces what an earlier version
#: gave back. Under the buyers' locks: a changed return may give back less, and the amount rise. ``freed``: it fell.
RETURN_QUOTA = """
WITH o AS (
    SELECT l.buyer_id_number, l.year, l.ebc_code, l.order_no, l.amount + l.returned AS whole, l.returned AS was,
           least(x.value, l.amount + l.returned) AS returned
      FROM unnest($1::text[], $2::text[], $3::numeric[]) AS x(ebc, ono, value),
           LATERAL (SELECT * FROM tax_ledger AS l WHERE l.ebc_code = x.ebc AND l.order_no = x.ono OFFSET 0) AS l
)
UPDATE tax_ledger AS l SET amount = o.whole - o.returned, returned = o.returned, updated_at = now()
  FROM o
 WHERE l.buyer_id_number = o.buyer_id_number AND l.year = o.year AND l.ebc_code = o.ebc_code
   AND l.order_no = o.order_no AND o.returned <> o.was
RETURNING l.buyer_id_number, l.year, l.ebc_code, l.order_no, l.amount, l.returned, l.returned > o.was AS freed
"""


#: The versions an inventory (the row ``d``) replaced, the latest first, back to its first declaration (appType 1),
#: each as a leg (gateway.forward.inventory_in_force reads them): walked through superseded_by (its partial index), only
#: for a change or withdrawal — a first declaration replaced none customs still holds.
_VERSIONS_BEFORE = """CASE WHEN d.kind = 'inventory' AND d.app_type <> '1' THEN (
                  SELECT json_agg(json_build_object(
                             'id', v.id, 'app_time', v.app_time, 'message_id', v.message_id, 'doc_index', v.doc_index,
                             'kind', v.kind, 'forward_state', v.forward_state, 'customs_status', v.customs_status,
                             'customs_rank', v.customs_rank, 'customs_info', v.customs_info,
                             'customs_time', v.customs_return_time, 'message_type', v.message_type,
                             'doc_guid', v.doc_guid, 'app_type', v.app_type, 'withdrawn', v.withdrawn)
                         ORDER BY v.depth)
                    FROM (WITH RECURSIVE back AS (
                              SELECT p.*, 1 AS depth FROM documents AS p WHERE p.superseded_by = d.id
                              UNION ALL
                              SELECT p.*, b.depth + 1
                                FROM back AS b,
                                     LATERAL (SELECT * FROM documents AS p WHERE p.superseded_by = b.id OFFSET 0) AS p
                               WHERE b.app_type <> '1' AND b.depth < 1000)
                          SELECT * FROM back) AS v) END"""


def _shipment_legs(released: str) -> str:
    """The current legs of shipments ($1 ebpCode, $2 orderNo) with their customs state, and the shipments', of those
    ``released`` (a condition on s) says. An inventory's current version comes withdrawn too, with the versions it
    replaced (``before``): which of them the status follows is gateway.forward.inventory_in_force's to say; and a
    current cancellation customs concluded (kind cancel), read by the same probe of the shipment's documents."""
    return f"""
WITH inv AS MATERIALIZED (
    SELECT d.ebp_code, d.order_no, d.logistics_code AS lc, d.logistics_no AS ln, d.message_type AS mt
      FROM unnest($1::text[], $2::text[]) AS k(ebp, ono),
           LATERAL (SELECT * FROM documents AS d
                     WHERE d.ebp_code = k.ebp AND d.order_no = k.ono AND d.kind = 'inventory'
                       AND d.is_current AND NOT d.withdrawn OFFSET 0) AS d
)
SELECT s.ebp_code, s.order_no, s.customs_status, s.customs_info, s.parties, s.flow, s.mode,
       now() AS now,  -- the customs_updated_at a change written in this transaction gets (SET_SHIPMENT_CUSTOMS)
       (SELECT coalesce(json_agg(json_build_object(
                 'id', l.id, 'app_time', l.app_time, 'message_id', l.message_id, 'doc_index', l.doc_index,
                 'kind', l.kind, 'message_type', l.message_type, 'doc_guid', l.doc_guid,
                 'forward_state', l.forward_state, 'customs_status', l.customs_status,
                 'customs_rank', l.customs_rank, 'customs_info', l.customs_info,
                 'customs_time', l.customs_return_time, 'app_type', l.app_type, 'withdrawn', l.withdrawn,
                 'before', l.before) ORDER BY l.id), '[]')
          FROM (SELECT d.id, d.app_time, d.message_id, d.doc_index, d.kind, d.message_type, d.doc_guid,
                       d.forward_state, d.customs_status, d.customs_rank, d.customs_info, d.customs_return_time,
                       d.app_type, d.withdrawn, {_VERSIONS_BEFORE} AS before
                  FROM (SELECT * FROM documents AS d
                         WHERE d.ebp_code = s.ebp_code AND d.order_no = s.order_no OFFSET 0) AS d
                 WHERE d.is_current
                   AND (d.kind IN ('order', 'payment') AND NOT d.withdrawn OR d.kind = 'inventory'
                        -- a cancellation customs concluded (gateway.forward.shipment_customs_status)
                        OR d.kind = 'cancel' AND NOT d.withdrawn AND d.forward_state = 'receipted'
                           AND d.customs_rank >= {rc.RANK_CONCLUDED})
                UNION ALL
                -- the waybill the inventory names (pri 0), else the latest one of the orderNo (as reconciliation),
                -- unless another platform uses that orderNo too: whose waybill it is, nothing says (a waybill
                -- carries no ebpCode), and one platform's rejection must not move the other's status; by the orderNo
                -- for an import shipment only, and by the inventory a waybill of its flow
                (SELECT w.id, w.app_time, w.message_id, w.doc_index, w.kind, w.message_type, w.doc_guid,
                        w.forward_state, w.customs_status, w.customs_rank, w.customs_info, w.customs_return_time,
                        w.app_type, w.withdrawn, NULL::json
                   FROM (SELECT n.*, 0 AS pri
                           FROM inv AS i,
                                LATERAL (SELECT * FROM documents AS n
                                          WHERE n.logistics_code = i.lc AND n.logistics_no = i.ln OFFSET 0) AS n
                          WHERE i.ebp_code = s.ebp_code AND i.order_no = s.order_no
                            AND n.message_type = {waybill_type_of("i.mt")}
                         UNION ALL
                         SELECT o.*, 1 AS pri
                           FROM (SELECT * FROM documents AS o
                                  WHERE o.order_no = s.order_no AND o.kind = 'waybill' OFFSET 0) AS o
                          WHERE s.flow = 'import' AND NOT {other_platform("s.ebp_code", "s.order_no")}) AS w
                  WHERE w.kind = 'waybill' AND w.is_current AND NOT w.withdrawn
                  ORDER BY w.pri, w.id DESC
                  LIMIT 1)) AS l) AS legs
  FROM unnest($1::text[], $2::text[]) AS k(ebp, ono),
       LATERAL (SELECT * FROM shipments AS s WHERE s.ebp_code = k.ebp AND s.order_no = k.ono OFFSET 0) AS s
 WHERE {released}
"""


#: The current legs of shipments ($1 ebpCode, $2 orderNo) with their customs state, and the shipments'.
SHIPMENT_LEGS = _shipment_legs(
    "($3::text[] IS NULL OR s.customs_status = ANY ($3::text[]))"
    " AND s.customs_status <> 'released'"  # final: customs released the goods (gateway.forward.shipment_customs_status)
)
#: The same of released shipments ($1 ebpCode, $2 orderNo): a release after a concluded cancellation (REDECLARED).
RELEASED_SHIPMENT_LEGS = _shipment_legs("s.customs_status = 'released'")

#: Cancellations customs concluded ($1 their ids) of released shipments' inventories: the inventory (its message and
#: position: its warehouse order's) of each, the latest current one of the shipment released before it.
CANCELLED_RELEASES = f"""
SELECT c.id, c.message_type, c.head ->> 'reason' AS reason, s.ebp_code, s.order_no, s.flow, s.mode,
       i.message_id, i.doc_index, i.invt_no, i.pre_no,
       (SELECT m.guid FROM messages AS m WHERE m.id = i.message_id) AS guid
  FROM documents AS c,
       LATERAL (SELECT * FROM shipments AS s WHERE s.ebp_code = c.ebp_code AND s.order_no = c.order_no OFFSET 0) AS s,
       LATERAL (SELECT i.message_id, i.doc_index, i.invt_no, i.pre_no
                  FROM (SELECT * FROM documents AS i
                         WHERE i.ebp_code = c.ebp_code AND i.order_no = c.order_no OFFSET 0) AS i
                 WHERE i.kind = 'inventory' AND i.is_current AND NOT i.withdrawn AND i.id < c.id
                   AND i.customs_rank >= {rc.RANK_RELEASED}
                 ORDER BY i.id DESC LIMIT 1) AS i
 WHERE c.id = ANY ($1::bigint[]) AND s.customs_status = 'released'
"""

#: Of inventories customs released just now ($1 ids), those declared after a cancellation of their shipment customs
#: concluded: their shipment was released before, by the inventory cancelled, and is not recomputed (final).
REDECLARED = f"""
SELECT d.id, d.ebp_code, d.order_no
  FROM documents AS d
 WHERE d.id = ANY ($1::bigint[])
   AND EXISTS (SELECT 1 FROM (SELECT * FROM documents AS c
                               WHERE c.ebp_code = d.ebp_code AND c.order_no = d.order_no OFFSET 0) AS c
                WHERE c.kind = 'cancel' AND c.id < d.id AND c.forward_state = 'receipted'
                  AND c.customs_rank >= {rc.RANK_CONCLUDED})
"""

#: The documents ($1 ids) whose customs outcome the sellers hear of (Outbox._tell_sellers_of_inventories), each with
#: its guid, reason, the invtNo it names (a cancellation's or return's: its inventory's) and shipment (its parties:
#: whom to tell).
SELLER_DOCUMENTS = """
SELECT d.id, d.doc_guid, d.head ->> 'reason' AS reason, d.head ->> 'invtNo' AS named_invt_no, s.ebp_code, s.order_no,
       s.parties, s.customs_status
  FROM documents AS d,
       LATERAL (SELECT * FROM shipments AS s WHERE s.ebp_code = d.ebp_code AND s.order_no = d.order_no OFFSET 0) AS s
 WHERE d.id = ANY ($1::bigint[])
"""

#: Refused changes and withdrawals ($1 ids): their guid, and whether they are current still (no version before was
#: restored: gateway.store.restore_refused).
REFUSED_LEGS = "SELECT d.id, d.doc_guid, d.is_current FROM documents AS d WHERE d.id = ANY ($1::bigint[])"

#: The documents carrying these ($1) guids, whoever sent them: whose parties a finding's sides name
#: (gateway.auth.readable_sides; documents_doc_guid_every_kind_idx): the API's, and a seller's webhook's
#: (Outbox.tell_states).
DOCUMENTS_BY_GUID = "SELECT message_type, doc_guid, parties FROM documents WHERE doc_guid = ANY ($1::text[])"


async def documents_by_guid(conn: asyncpg.Connection | asyncpg.Pool, guids: Iterable[str]) -> list[dict[str, Any]]:
    """The message type, guid and parties of every document carrying one of ``guids``."""
    wanted = sorted(set(guids))
    if not wanted:
        return []
    return [dict(r) for r in await conn.fetch(DOCUMENTS_BY_GUID, wanted)]


SET_SHIPMENT_CUSTOMS = """
UPDATE shipments AS s SET customs_status = x.status, customs_info = x.info, customs_updated_at = now()
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x(ebp, ono, status, info)
 WHERE s.ebp_code = x.ebp AND s.order_no = x.ono
   AND s.ebp_code = ANY ($1::text[]) AND s.order_no = ANY ($2::text[])  -- index probes whatever the plan
"""

#: Customs deliveries succeeded ($1 message ids): sent (a receipt may have come first: then it stays); a sent
#: document without a receipt since this send is awaited from now (sql/100_receipts_awaited.sql): a re-send asked
#: by a receipt (4) is watched again — also one of a document E-Port alone had answered (receipted below the rank of
#: 3: a 2, then a 4 — taken, then not delivered), which the re-send leaves receipted. ('failed': a delivery replayed
#: while its hook could not run still ends sent.)
MARK_SENT = f"""
WITH sent AS (
    UPDATE documents SET forward_state = CASE WHEN forward_state IN ('none', 'held', 'queued', 'failed') THEN 'sent'
                                              ELSE forward_state END,
                         sent_at = now()
     WHERE message_id = ANY ($1::bigint[])
    RETURNING id, forward_state, sent_at, last_receipt_at, repushes, customs_rank
)
INSERT INTO receipts_awaited (document_id, sent_at, awaited_since)
SELECT id, sent_at, sent_at FROM sent
 WHERE (forward_state = 'sent' OR (forward_state = 'receipted' AND repushes > 0 AND customs_rank < {rc.RANKS["3"]}))
   AND (last_receipt_at IS NULL OR last_receipt_at < sent_at)
    ON CONFLICT (document_id) DO UPDATE SET sent_at = EXCLUDED.sent_at  -- sent again: the wait goes on
"""
#: The documents of messages ($1 ids).
MESSAGE_DOCUMENTS = (
    f"SELECT {_DOC_STATE} FROM documents AS d WHERE d.message_id = ANY ($1::bigint[])"
    " ORDER BY d.message_id, d.doc_index"
)

#: Re-send bookkeeping for messages ($1 ids) still under the limit ($2): count it; a 'sent' message goes
#: back to 'queued' (so that the watchdog leaves it alone until it is sent again), and so does a 'failed' one (a
#: live delivery again). Per document: what the re-send job needs (its mode for the routes, its business key for
#: the ordering keys).
COUNT_RESEND = """
UPDATE documents AS d SET repushes = d.repushes + 1,
       forward_state = CASE WHEN d.forward_state IN ('sent', 'failed') THEN 'queued' ELSE d.forward_state END
 WHERE d.message_id = ANY ($1::bigint[]) AND d.repushes < $2
RETURNING d.message_id, d.repushes, d.head ->> 'tradeMode' AS mode, d.message_type, d.key1, d.key2
"""

#: The endpoints holding dead letters (few: by jobs_dead_idx).
DEAD_ENDPOINTS = "SELECT DISTINCT endpoint FROM jobs WHERE state = 'dead'"

#: Watchdog: messages sent more than $1 s ago without any receipt since. Flags them; with $2 (repush) and under
#: $3 re-sends, counts a re-send and puts them back to 'queued'. Oldest first, at most $4 documents. A receipted
#: document awaited is one sent again after E-Port's 2 and a 4 (MARK_SENT): watched as a sent one.
WATCHDOG = """
WITH flagged AS (
    UPDATE documents AS d
       SET receipt_overdue = true,
           repushes = d.repushes + CASE WHEN $2 AND d.repushes < $3 THEN 1 ELSE 0 END,
           forward_state = CASE WHEN $2 AND d.repushes < $3 THEN 'queued' ELSE d.forward_state END
      FROM (SELECT o.id FROM receipts_awaited AS a JOIN documents AS o ON o.id = a.document_id
             WHERE a.sent_at < now() - make_interval(secs => $1)
               AND o.forward_state IN ('sent', 'receipted')
               AND (o.last_receipt_at IS NULL OR o.last_receipt_at < o.sent_at)
               AND (NOT o.receipt_overdue OR ($2 AND o.repushes < $3))
             ORDER BY a.sent_at LIMIT $4 FOR UPDATE OF o SKIP LOCKED) AS due
     WHERE d.id = due.id
    RETURNING d.id, d.message_id, d.repushes, d.forward_state, d.head ->> 'tradeMode' AS mode, d.message_type,
              d.key1, d.key2
)  -- a re-pushed document stays awaited (sql/400_awaited_since.sql): its next send renews sent_at, not its wait
SELECT message_id, repushes, forward_state, mode, message_type, key1, key2 FROM flagged
"""

#: Customs deliveries gone to the dead letters ($1 message ids, $2 their guids): the documents waiting for them
#: are 'failed', unless the message has another live delivery to customs (a re-send queued or running).
DELIVERY_FAILED = """
UPDATE documents AS d SET forward_state = 'failed'
  FROM unnest($1::bigint[], $2::text[]) AS x(message_id, guid)
 WHERE d.message_id = x.message_id AND d.message_id = ANY ($1::bigint[]) AND d.forward_state = 'queued'
   AND NOT EXISTS (SELECT 1 FROM jobs AS j
                    WHERE j.payload ? 'guid' AND j.payload ->> 'guid' = x.guid AND j.payload ? 'cop_msg_id'
                      AND j.state IN ('queued', 'running'))
RETURNING d.id
"""
#: Dead customs deliveries replayed ($1 message ids): their documents wait for them again.
DELIVERY_REPLAYED = """
UPDATE documents SET forward_state = 'queued' WHERE message_id = ANY ($1::bigint[]) AND forward_state = 'failed'
RETURNING id
"""

#: The documents ($1 ids) whose delivery to customs died or, replayed, succeeded, as their sellers hear of them
#: (Outbox._tell_deliveries): what names them, and what finds their shipments (gateway.outbox.shipments_of).
DELIVERY_DOCUMENTS = f"""
SELECT {_DOC_STATE}, d.doc_guid, d.parties, (SELECT m.guid FROM messages AS m WHERE m.id = d.message_id) AS message_guid
  FROM documents AS d
 WHERE d.id = ANY ($1::bigint[])
 ORDER BY d.id
"""
#: Shipments ($1 ebpCode, $2 orderNo) with their parties (whose sellers hear of them) and customs status.
SHIPMENT_PARTIES = """
SELECT s.ebp_code, s.order_no, s.parties, s.customs_status
  FROM unnest($1::text[], $2::text[]) AS k(ebp, ono),
       LATERAL (SELECT * FROM shipments AS s WHERE s.ebp_code = k.ebp AND s.order_no = k.ono OFFSET 0) AS s
"""

MESSAGE_HEADS = "SELECT id, guid, message_type FROM messages WHERE id = ANY ($1::bigint[])"
#: What a released shipment's warehouse order is made of beside its inventory's XML ($1 ids of its inventory, waybill
#: and order legs): the inventory's message guid and the numbers customs gave it, the legs' 收货人 (consignee).
RELEASED_LEGS = """
SELECT d.id, d.message_type, d.pre_no, d.invt_no, d.head ->> 'consignee' AS consignee,
       d.head ->> 'consigneeTelephone' AS consignee_telephone, d.head ->> 'consigneeAddress' AS consignee_address,
       (SELECT m.guid FROM messages AS m WHERE m.id = d.message_id) AS guid
  FROM documents AS d
 WHERE d.id = ANY ($1::bigint[])
"""
#: The stored XML of messages ($1 ids): what the handlers of a claimed batch send, in one read.
MESSAGES_XML = "SELECT id, raw_xml FROM messages WHERE id = ANY ($1::bigint[])"

def key_withdrawn(d: str) -> str:
    """SQL: of an unsent document (its row ``d``), whether its key's current version is a withdrawal
    (gateway.forward.unsent_because); NULL for any other."""
    return (f"CASE WHEN {d}.forward_state = 'unsent' THEN coalesce((SELECT c.withdrawn FROM documents AS c"
            f" WHERE {current_of(d, 'c')}),"
            " false) END")  # fmt: skip


#: Forwarding columns of documents ($1 ids) for the shipment view.
FORWARDING_OF_DOCUMENTS = f"""
SELECT d.id, d.message_id, d.forward_state, d.cop_msg_id, d.sent_at, d.customs_status, d.customs_rank,
       d.customs_return_time, d.customs_info, d.pre_no, d.invt_no, d.last_receipt_at, d.receipt_overdue,
       d.repushes, (SELECT m.guid FROM messages AS m WHERE m.id = d.message_id) AS message_guid, d.withdrawn,
       {key_withdrawn("d")} AS key_withdrawn
  FROM documents AS d
 WHERE d.id = ANY ($1::bigint[])
"""
#: The jobs of messages ($1 guids): every job carries its message's guid in the payload (index 040).
TRANSMISSIONS = """
SELECT id, endpoint, kind, dedupe_key, payload ->> 'guid' AS message_guid, state, attempts, max_attempts, replays,
       last_error, dead_reason, run_after, created_at, updated_at, finished_at
  FROM jobs WHERE payload ? 'guid' AND payload ->> 'guid' = ANY ($1::text[])
 ORDER BY created_at, id
"""
ATTEMPTS = """
SELECT job_id, replay, attempt, worker_id, started_at, finished_at, outcome, error, duration_ms
  FROM job_attempts WHERE job_id = ANY ($1::bigint[])
 ORDER BY job_id, replay, attempt, id
"""
#: The messages (guid) and positions of the documents a warehouse callback's reference names ($1 doc guid, $2 message
#: type): the orders the gateway made from them have orderIds of these (adapters.warehouse.order_id).
WAREHOUSE_ORDER_SOURCES = """
SELECT m.guid, d.doc_index
  FROM (SELECT d.message_id, d.doc_index FROM documents AS d
         WHERE d.doc_guid = $1 AND d.message_type = $2 OFFSET 0) AS d
  JOIN messages AS m ON m.id = d.message_id
"""
#: A warehouse's callback ($1-$10; $9 the doc guid of the document its order was made from, when it is one the gateway
#: made), once: a repeat of the same order, status and time changes nothing. Answers whether it was stored, and the
#: statuses of the order's earlier callbacks in the order they came (the snapshot does not hold this one) for its
#: furthest status.
INSERT_WAREHOUSE_EVENT = """
WITH ins AS (
    INSERT INTO warehouse_events (submitter, order_id, warehouse_order_no, direction, status, reason, occurred_at,
                                  message_type, doc_guid, reference)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (order_id, status, occurred_at) DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM ins) AS stored,
       -- through the order's unique index (OFFSET 0: sorting by id would read the primary key's instead)
       ARRAY(SELECT e.status FROM (SELECT id, status FROM warehouse_events WHERE order_id = $2 OFFSET 0) AS e
              ORDER BY e.id) AS statuses
"""
#: The shipment (and its parties: whose sellers hear of it) of the document a warehouse callback names ($1 doc guid,
#: $2 message type).
WAREHOUSE_SHIPMENT = """
SELECT s.ebp_code, s.order_no, s.parties
  FROM (SELECT d.ebp_code, d.order_no FROM documents AS d
         WHERE d.doc_guid = $1 AND d.message_type = $2 AND d.ebp_code IS NOT NULL OFFSET 0) AS d
  JOIN shipments AS s ON s.ebp_code = d.ebp_code AND s.order_no = d.order_no
 LIMIT 1
"""
#: The warehouses' callbacks on the orders made from documents ($1 doc guids), oldest first.
WAREHOUSE_EVENTS_OF = """
SELECT e.doc_guid, e.message_type, e.order_id, e.warehouse_order_no, e.direction, e.status, e.reason, e.occurred_at,
       e.received_at
  FROM unnest($1::text[]) AS g(guid),
       LATERAL (SELECT * FROM warehouse_events AS e WHERE e.doc_guid = g.guid OFFSET 0) AS e
 ORDER BY e.doc_guid, e.order_id, e.id
"""
#: A page of the warehouses' callbacks as they came, newest first: $2 of those with an id below $1; $3 a warehouse key's
#: name, $4 orderId, $5 statuses, $6 since (inclusive) and $7 until (exclusive) received_at, each NULL for none. With
#: it, the shipment of a linked one's document, and whether an unlinked one's reference names a document the gateway
#: holds (then its orderId is not the one the gateway gave the order made from it). The unlinked alone
#: (LIST_WAREHOUSE_CALLBACKS_UNLINKED) by their own index.
_WAREHOUSE_CALLBACK_PAGE = """
SELECT e.id, e.received_at, e.submitter, e.order_id, e.warehouse_order_no, e.direction, e.status, e.reason,
       e.occurred_at, e.message_type, e.doc_guid, e.reference, s.ebp_code, s.order_no,
       e.doc_guid IS NULL AND EXISTS (SELECT 1 FROM documents AS d WHERE d.doc_guid = e.reference ->> 'guid'
                                          AND d.message_type = e.message_type) AS reference_held,
       e.status IN ({progress}) AND EXISTS (SELECT 1 FROM warehouse_cancels AS c
                                             WHERE c.order_id = e.order_id AND c.requested_at < e.received_at)
           AS after_cancel
  FROM warehouse_events AS e
  LEFT JOIN LATERAL (SELECT d.ebp_code, d.order_no FROM documents AS d
                      WHERE d.doc_guid = e.doc_guid AND d.message_type = e.message_type LIMIT 1) AS s ON true
 WHERE e.id < $1 {linked}
   AND ($3::text IS NULL OR e.submitter = $3)
   AND ($4::text IS NULL OR e.order_id = $4)
   AND ($5::text[] IS NULL OR e.status = ANY ($5::text[]))
   AND ($6::timestamptz IS NULL OR e.received_at >= $6)
   AND ($7::timestamptz IS NULL OR e.received_at < $7)
 ORDER BY e.id DESC LIMIT $2
"""
_PROGRESS_SQL = ", ".join(f"'{s}'" for s in sorted(warehouse.GOING_ON))
LIST_WAREHOUSE_CALLBACKS = _WAREHOUSE_CALLBACK_PAGE.format(linked="", progress=_PROGRESS_SQL)
LIST_WAREHOUSE_CALLBACKS_LINKED = _WAREHOUSE_CALLBACK_PAGE.format(linked="AND e.doc_guid IS NOT NULL",
                                                                  progress=_PROGRESS_SQL)  # fmt: skip
LIST_WAREHOUSE_CALLBACKS_UNLINKED = _WAREHOUSE_CALLBACK_PAGE.format(linked="AND e.doc_guid IS NULL",
                                                                    progress=_PROGRESS_SQL)  # fmt: skip

#: What a warehouse cancel (sql/550) is read with (warehouse_cancel_dict), of the row ``c``.
WAREHOUSE_CANCEL_COLUMNS = """c.id, c.endpoint, c.order_id, c.direction, c.message_type, c.doc_guid, c.reason,
       c.requested_at, c.delivered_at, c.refused_at, c.answer, c.confirmed_at, c.progress_at, c.progress_status,
       c.overdue_at, c.closed_at, c.closed_by, c.close_reason"""
#: SQL: the cancel ``c`` needs a look (the predicate of sql/550's warehouse_cancels_open_idx): the warehouse reported
#: progress on the order after it was asked, refused it, or did not confirm it in time; and it is neither confirmed
#: (the order ended: cancelled, or rejected — never taken, nothing goes —, called back) nor closed by an operator.
CANCEL_OPEN = """c.confirmed_at IS NULL AND c.closed_at IS NULL
   AND (c.progress_at IS NOT NULL OR c.refused_at IS NOT NULL OR c.overdue_at IS NOT NULL)"""
#: Why a cancel needs a look, the gravest first: the goods may be leaving (the warehouse went on with the order after
#: the cancel was asked), the warehouse said it will not cancel, or it has said nothing in time.
CANCEL_FLAGS = ("progress_after_cancel", "refused", "unconfirmed")
#: The statuses that end an order (adapters.warehouse: rejected, cancelled), as SQL: the goods do not go.
_ENDED_SQL = ", ".join(f"'{s}'" for s in sorted(set(warehouse.CALLBACK_STATUSES) - warehouse.PROGRESS))
#: The cancels asked now ($1 endpoints, $2 orderIds, $3 message ids and $4 positions of the documents the orders were
#: made from, $5 the orders' directions, $6 why), with the jobs that carry them: once per order and endpoint (the
#: first ask's time stays). An order the warehouse ended already (it cancelled or rejected it) has it confirmed.
RECORD_CANCELS = f"""
INSERT INTO warehouse_cancels AS c (endpoint, order_id, direction, message_type, doc_guid, reason, confirmed_at)
SELECT x.endpoint, x.order_id, x.direction, d.message_type, d.doc_guid, x.reason,
       (SELECT min(e.received_at) FROM warehouse_events AS e
         WHERE e.order_id = x.order_id AND e.status IN ({_ENDED_SQL}))
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::text[], $6::text[])
       AS x(endpoint, order_id, message_id, doc_index, direction, reason)
  JOIN documents AS d ON d.message_id = x.message_id AND d.doc_index = x.doc_index
ON CONFLICT (endpoint, order_id) DO NOTHING
"""
#: The warehouse's answer ($7) to the cancel of order $2 at endpoint $1 — $8 true: a refusal, else it took it —, the
#: cancel recorded now if its job was enqueued before it was recorded with it ($3, $4 the document, $5 direction, $6
#: why). A cancel taken after a refusal (a replay) is refused no more.
CANCEL_ANSWERED = f"""
INSERT INTO warehouse_cancels AS c (endpoint, order_id, direction, message_type, doc_guid, reason, delivered_at,
                                    refused_at, answer)
SELECT $1, $2, $5, d.message_type, d.doc_guid, $6, CASE WHEN $8 THEN NULL ELSE now() END,
       CASE WHEN $8 THEN now() END, $7::jsonb
  FROM documents AS d WHERE d.message_id = $3 AND d.doc_index = $4
ON CONFLICT (endpoint, order_id) DO UPDATE
   SET delivered_at = CASE WHEN $8 THEN c.delivered_at ELSE coalesce(c.delivered_at, now()) END,
       refused_at = CASE WHEN $8 THEN now() END, answer = $7::jsonb, updated_at = now()
RETURNING {WAREHOUSE_CANCEL_COLUMNS}
"""
#: A warehouse's callback ($2 its status) on order $1, on the order's cancels: one ending the order (cancelled, or
#: rejected: never taken) confirms them; one of the goods moving ($3: GOING_ON) flags those not confirmed nor closed —
#: they may be leaving all the same (the first such callback's time kept, the latest status). Returns the cancels it
#: touched.
CANCEL_CALLBACK = f"""
UPDATE warehouse_cancels AS c
   SET confirmed_at = CASE WHEN $2 IN ({_ENDED_SQL}) THEN coalesce(c.confirmed_at, now()) ELSE c.confirmed_at END,
       progress_at = CASE WHEN $2 IN ({_ENDED_SQL}) THEN c.progress_at ELSE coalesce(c.progress_at, now()) END,
       progress_status = CASE WHEN $2 IN ({_ENDED_SQL}) THEN c.progress_status ELSE $2 END,
       updated_at = now()
 WHERE c.order_id = $1
   AND ($2 IN ({_ENDED_SQL}) OR ($2 = ANY ($3::text[]) AND c.confirmed_at IS NULL AND c.closed_at IS NULL))
RETURNING c.id, c.endpoint, c.message_type, c.doc_guid, c.requested_at, c.confirmed_at
"""
#: Watchdog: the cancels asked more than $1 s ago that the warehouse has not confirmed (nor an operator closed), at most
#: $2, oldest first: flagged overdue once.
OVERDUE_CANCELS = f"""
UPDATE warehouse_cancels AS c SET overdue_at = now(), updated_at = now()
  FROM (SELECT o.id FROM warehouse_cancels AS o
         WHERE o.confirmed_at IS NULL AND o.closed_at IS NULL AND o.overdue_at IS NULL
           AND o.requested_at < now() - make_interval(secs => $1)
         ORDER BY o.requested_at LIMIT $2 FOR UPDATE SKIP LOCKED) AS due
 WHERE c.id = due.id
RETURNING {WAREHOUSE_CANCEL_COLUMNS}
"""
#: A page of the warehouse cancels, newest first: $2 of those with an id below $1, of one state (WAREHOUSE_CANCELS),
#: each with the shipment of the document its order was made from (none for a site's delivery), and the statuses the
#: warehouse reported of the order and its latest order number.
_WAREHOUSE_CANCEL_PAGE = f"""
SELECT {WAREHOUSE_CANCEL_COLUMNS}, s.ebp_code, s.order_no,
       (SELECT array_agg(e.status ORDER BY e.id) FROM warehouse_events AS e WHERE e.order_id = c.order_id) AS statuses,
       (SELECT e.warehouse_order_no FROM warehouse_events AS e WHERE e.order_id = c.order_id
         ORDER BY e.id DESC LIMIT 1) AS warehouse_order_no
  FROM warehouse_cancels AS c
  LEFT JOIN LATERAL (SELECT d.ebp_code, d.order_no FROM documents AS d
                      WHERE d.doc_guid = c.doc_guid AND d.message_type = c.message_type LIMIT 1) AS s ON true
 WHERE c.id < $1 AND {{which}}
 ORDER BY c.id DESC LIMIT $2
"""
#: The states GET /v1/warehouse/cancels lists (``state=``): open (those that need a look: CANCEL_OPEN), closed (by an
#: operator), any (every cancel asked: those still awaited, confirmed); the statement of each.
WAREHOUSE_CANCELS = {
    "open": _WAREHOUSE_CANCEL_PAGE.format(which=f"({CANCEL_OPEN})"),
    "closed": _WAREHOUSE_CANCEL_PAGE.format(which="c.closed_at IS NOT NULL"),
    "any": _WAREHOUSE_CANCEL_PAGE.format(which="true"),
}
#: The cancels of the orders made from documents ($1 doc guids), in the order they were asked.
WAREHOUSE_CANCELS_OF = f"""
SELECT {WAREHOUSE_CANCEL_COLUMNS} FROM warehouse_cancels AS c WHERE c.doc_guid = ANY ($1::text[]) ORDER BY c.id
"""
RECEIPTS_OF = """
SELECT id, received_at, message_type, root_guid, element_index, doc_guid, keys, return_status, return_time,
       return_info, cop_msg_id, source, message_id, document_id, applied, outcome
  FROM receipts
 WHERE document_id = ANY ($1::bigint[]) OR (document_id IS NULL AND message_id = ANY ($2::bigint[]))
 ORDER BY return_time, id
"""


def order_lock(order_no: str) -> int:
    """The ingest's advisory lock id of the shipments of an orderNo (gateway.store: ("order", orderNo))."""
    digest = hashlib.blake2b(f"order\x1f{order_no}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def buyer_lock(buyer: str) -> int:
    """The ingest's advisory lock id of a buyer's tax ledger (gateway.store: ("buyer", buyerIdNumber))."""
    digest = hashlib.blake2b(f"buyer\x1f{buyer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class ReceiptResult:
    """What happened to one return element (the answer of POST /v1/receipts)."""

    index: int
    message_type: str
    return_status: str
    outcome: str  # gateway.receipts.Outcome
    status_name: str | None
    document_ids: list[int] = field(default_factory=list)
    message_id: int | None = None
    resend: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "message_type": self.message_type,
            "return_status": self.return_status,
            "status_name": self.status_name,
            "outcome": self.outcome,
            "document_ids": self.document_ids,
            "message_id": self.message_id,
            "resend": self.resend,
        }


def _may_release(legs: Mapping[str, bool] | None) -> bool:
    """False when the shipment's live legs were read (``legs``: kind → whether customs took it) and its order, or
    the payment it has, has no receipt yet (RELEASE_HELD checks the waybill too). A matched shipment without a payment
    needs none (a B2B export, gateway.reconcile.needed_legs)."""
    return legs is None or (legs.get("order", False) and legs.get("payment", True))


@dataclass(frozen=True)
class Plan:
    """What an accepted message forwards: decided before it is written (see Outbox.plan_wave)."""

    guid: str
    message_type: str
    state: str  # none | held | queued
    endpoints: tuple[str, ...]
    matched: list[tuple[str, str]]  # shipments it left matched: held inventories there are looked at again
    ordering_keys: tuple[str, ...] = ()  # of every document of the message (gateway.forward.ordering_key)
    unkept: tuple[tuple[str, str, str], ...] = ()  # (guid, key1, key2) of the documents it carries but not stored
    #: doc_index of its changes and withdrawals of a version the gateway holds: what still goes is settled after the
    #: write (Outbox.settle); the message is held meanwhile
    settle: tuple[int, ...] = ()
    #: routed to a warehouse: its stored documents, of which the warehouse gets orders and cancels (Router.order_jobs)
    orders: tuple[OrderSource, ...] = ()
    #: it withdraws a payment: a shipment it left matched needs none (a B2B export, gateway.reconcile.needed_legs),
    #: and its held inventory may wait for nothing more
    withdraws_payment: bool = False


@dataclass
class _Doc:
    """A document's forwarding state, as read (and changed in memory by the receipts being applied)."""

    id: int
    message_id: int
    doc_index: int
    kind: str
    message_type: str
    ebp_code: str | None
    order_no: str | None
    logistics_code: str | None
    logistics_no: str | None
    forward_state: str
    state: rc.CustomsState
    pre_no: str | None
    invt_no: str | None
    repushes: int
    mode: str | None
    key: tuple[str, str] = ("", "")  # (key1, key2): an inventory's and its cancellation's (ebcCode, orderNo)
    app_type: str = "1"
    changed: bool = False
    answered: bool = False  # a receipt in a known table came (one in no table leaves it awaited)
    gave_back: bool = False  # a receipt applied now gave its inventory's quota back (see gives_back)
    learned: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, r: asyncpg.Record) -> _Doc:
        return cls(
            id=r["id"], message_id=r["message_id"], doc_index=r["doc_index"], kind=r["kind"],
            message_type=r["message_type"], ebp_code=r["ebp_code"], order_no=r["order_no"],
            logistics_code=r["logistics_code"], logistics_no=r["logistics_no"], forward_state=r["forward_state"],
            state=rc.CustomsState(r["customs_status"], r["customs_rank"], r["customs_return_time"], r["customs_info"]),
            pre_no=r["pre_no"], invt_no=r["invt_no"], repushes=r["repushes"], mode=r["mode"],
            key=(r["key1"], r["key2"]), app_type=(r["app_type"] or "1").strip()
        )  # fmt: skip

    @property
    def void(self) -> bool:
        """Nothing at customs counts for its inventory any more: a first declaration customs rejected (a rejected
        change leaves customs the version before), or a cancellation customs concluded (399 and above)."""
        if self.kind == "inventory":
            return self.forward_state == "rejected" and self.app_type == "1"
        return self.kind == "cancel" and self.concluded

    @property
    def concluded(self) -> bool:
        """Customs concluded it (399 and above, not a rejection)."""
        return self.forward_state == "receipted" and (self.state.rank or 0) >= rc.RANK_CONCLUDED

    @property
    def gives_back(self) -> bool:
        """Its inventory counts less toward the buyer's annual quota: it is void, or it is a return customs concluded
        (海关总署公告2018年第194号: the annual total is adjusted for the goods returned). Export documents draw on no
        quota."""
        if BY_CODE[self.message_type].flow != "import":
            return False
        return self.void or (self.kind == "refund" and self.concluded)


@dataclass(eq=False)
class _Sent:
    """A customs delivery waiting for (or in) a record_sent transaction, and the future its handler awaits."""

    job: cbec_queue.Job
    message_id: int
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _sent_retryable(exc: Exception) -> bool:
    """A delivery whose record_sent failed alone runs again on these (see gateway.batching)."""
    return isinstance(exc, asyncpg.DeadlockDetectedError | asyncpg.SerializationError)


def _lease_lost(j: cbec_queue.Job) -> cbec_queue.LeaseLost:
    return cbec_queue.LeaseLost(f"job {j.id} attempt {j.attempts} is no longer held by {j.locked_by}")


# --- the outbox --------------------------------------------------------------------------------------------


#: Assess again, in the receipt's transaction, the shipments the annual limit blocked for these (buyer, year)s, their
#: sellers told through the outbox (Outbox.tell_states); returns those now matched (gateway.store.quota_reassessor).
Reassess = Callable[[asyncpg.Connection, Sequence[tuple[str, int]], "Outbox"], Awaitable[list[tuple[str, str]]]]
#: Make current again, in the receipt's transaction, the versions before these changes and withdrawals customs refused,
#: and reconcile their shipments again, their sellers told through the outbox (Outbox.tell_states); returns the
#: shipments written (gateway.store.refusals_restorer).
Restore = Callable[[asyncpg.Connection, Sequence[int], "Outbox"], Awaitable[list[tuple[str, str]]]]


#: What a held inventory waits for, by the condition of RELEASE_HELD it does not meet yet: its shipment to be matched,
#: a customs receipt of its order, of its payment, of its waybill.
HOLD_WAITS = ("matched", "order", "payment", "waybill")


def unsent(withdrawn: bool, key_withdrawn: bool | None) -> dict[str, str]:
    """What the views say of an unsent document (``withdrawn``: it is a withdrawal; ``key_withdrawn``: its key's
    current version is one): why (``because``: withdrawn, replaced) and in plain words."""
    because = unsent_because(withdrawn, bool(key_withdrawn))
    return {"because": because, "info": unsent_info(withdrawn, because)}


def held_until(doc: Mapping[str, Any], waits: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Why a held inventory is not sent yet (spec §6.7): of each document of its message (a message goes whole,
    signed as one) that is not ready — its own first —, the shipment and what it waits for (HOLD_WAITS).
    Empty: it is sent at the next change of any of them."""
    head = doc.get("head") or {}
    own = (head.get("ebpCode"), head.get("orderNo"))
    out = [{"ebpCode": w["ebp_code"], "orderNo": w["order_no"], "waiting_for": [k for k in HOLD_WAITS if not w[k]]}
           for w in waits]  # fmt: skip
    out = [o for o in out if o["waiting_for"]]
    return sorted(out, key=lambda o: (o["ebpCode"], o["orderNo"]) != own)


class Outbox:
    """Forwarding persistence. ``router`` None: receipts are still applied, but nothing is ever enqueued.

    ``max_sent_batch`` / ``max_sent_parallel``: deliveries per record_sent transaction and such transactions
    at once, at most (see :meth:`record_sent`).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        router: Router | None,
        *,
        max_sent_batch: int = 32,
        max_sent_parallel: int = 2,
        reassess: Reassess | None = None,
        restore: Restore | None = None,
    ) -> None:
        if max_sent_batch < 1 or max_sent_parallel < 1:
            raise ValueError("max_sent_batch and max_sent_parallel must be at least 1")
        self.pool = pool
        self.router = router
        # Quota a receipt gives back reopens the buyers' shipments the annual limit blocked
        # (gateway.store.quota_reassessor); None: it is given back, and they stay blocked until their next change.
        self.reassess = reassess
        # A change or withdrawal customs refused leaves it the version before: that version is current again and its
        # shipment reconciled again (gateway.store.refusals_restorer); None: the refused version stays current here.
        self.restore = restore
        self.max_sent_batch = max_sent_batch
        self.max_sent_parallel = max_sent_parallel
        self._xml_wanted: dict[int, list[asyncio.Future[str | None]]] = {}
        self._xml_reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent: Batcher[_Sent, None] = Batcher(
            self._sent_batch, max_batch=max_sent_batch, max_parallel=max_sent_parallel, attempts=_ATTEMPTS,
            # A second record_sent transaction only for a full batch: two at once for a few deliveries each paid
            # BEGIN, the locks and the commit twice and waited on each other's locks (the legs of one shipment are
            # delivered together). In a drain of 6,000 legs, PostgreSQL -7 to -13 % per delivered message, +10 %.
            retryable=_sent_retryable, spawn=self._spawn, another_when_full=True,
        )  # fmt: skip

    async def aclose(self) -> None:
        """Wait for the deliveries and reads already handed over (call before closing the pool)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- ingest (inside the store's transaction) ------------------------------------------------------------

    def plan_wave(self, writes: Iterable[tuple[ParsedMessage, dict[str, Any], list[dict[str, Any]]]]) -> list[Plan]:
        """Before the store writes a wave: decide each message's forwarding and stamp its document rows
        (``forward_state``, ``cop_msg_id``) so that they are written once, with it. No I/O."""
        router = self.router
        if router is None:
            return []
        plans = []
        for msg, body, rows in writes:
            outcomes = {d["index"]: d for d in body.get("documents", ())}
            stored = [d for d in msg.documents if outcomes.get(d.index, {}).get("outcome") != "ignored_older"]
            matched = [
                (s["ebpCode"], s["orderNo"])
                for s in body.get("shipments", ())
                if s.get("state") == "matched" and s["ebpCode"]
            ]
            endpoints: tuple[str, ...] = ()
            state = "none"
            settle: tuple[int, ...] = ()
            if stored:
                modes = {m for d in stored if (m := (d.head.get("tradeMode") or "").strip())}
                endpoints = router.endpoints_for(msg.type.code, modes)
                if endpoints:
                    app_types = {(d.head.get("appType") or "1").strip() for d in stored}
                    state = "held" if router.holds(msg.type.code, app_types) else "queued"
                    # a version replacing what the gateway still holds: customs may never have had it, and what it
                    # replaces need not go (settle decides)
                    settle = tuple(row["doc_index"] for row in rows if row.get("replaces_held"))
                    if settle:
                        state = "held"
            cop = router.cop_msg_id(msg.guid, endpoints) if state != "none" else None
            for row in rows:
                row["forward_state"], row["cop_msg_id"] = state, cop
            # Every document of the message, an ignored_older one too: the whole message goes to customs, and its
            # older version of that document must not overtake the newer one still on its way.
            keys = tuple(ordering_key(msg.type.code, d.keys) for d in msg.documents)
            # and of what a document names by invtNo (an export cancellation's inventory, gateway.keystate._numbered):
            # it waits behind that inventory's versions as a CEB623 does behind its CEB621's
            keys += tuple(ordering_key(after[0], after[1:]) for row in rows if (after := row.get("after")))
            # customs answers those too: their receipts must find them, not the key's current version (CORRELATE)
            unkept = tuple((d.head.get("guid", ""), *msg.type.stored_key([v.strip() for v in d.keys]))
                           for d in msg.documents
                           if state != "none" and outcomes.get(d.index, {}).get("outcome") == "ignored_older")
            orders: tuple[OrderSource, ...] = ()
            if any(router.endpoint_kinds.get(e) == "warehouse" for e in endpoints):  # not the common case
                by_index = {row["doc_index"]: row for row in rows}
                orders = tuple(
                    OrderSource(d.index, (d.head.get("appType") or "1").strip(), ordering_key(msg.type.code, d.keys),
                                tuple(r) if (r := by_index.get(d.index, {}).get("replaces_version")) else None)
                    for d in stored)  # fmt: skip
            withdraws_payment = msg.type.kind is Kind.PAYMENT and any(
                (d.head.get("appType") or "").strip() == "3" for d in stored)
            plans.append(Plan(msg.guid, msg.type.code, state, endpoints, matched, keys, unkept, settle, orders,
                              withdraws_payment))  # fmt: skip
        return plans

    def wave_jobs(self, plans: Sequence[Plan], ids: Mapping[str, int]) -> list[JobSpec]:
        """The jobs of the wave's messages that go now (their message ids by guid): the store's write statement
        enqueues them with the messages, so a job exists iff its message committed."""
        router = self.router
        if router is None:
            return []
        jobs: list[JobSpec] = []
        for p in plans:
            if p.state == "queued":
                # a warehouse takes orders of the documents, and the cancels of the orders of what they replace
                stores = [e for e in p.endpoints if router.endpoint_kinds.get(e) == "warehouse"]
                jobs += router.message_jobs(
                    message_id=ids[p.guid], guid=p.guid, message_type=p.message_type,
                    endpoints=[e for e in p.endpoints if e not in stores], ordering_keys=p.ordering_keys,
                )  # fmt: skip
                if stores:
                    jobs += router.order_jobs(endpoints=stores, message_id=ids[p.guid], guid=p.guid,
                                              message_type=p.message_type, documents=p.orders)  # fmt: skip
        return jobs

    def reconciliation_told(self) -> str | None:
        """The state whose changes a write of shipments returns, for :meth:`tell_states` (Router.reconciliation_told);
        None — nothing looked for — without forwarding or without a seller's webhook."""
        return self.router.reconciliation_told() if self.router is not None else None

    async def tell_states(
        self, conn: asyncpg.Connection, changes: Sequence[Mapping[str, Any]] | None,
        shipments: Iterable[Mapping[str, Any]],
    ) -> None:
        """The sellers of the shipments a write just moved to or from mismatched, or left mismatched with other blocking
        findings, hear of it, in the write's transaction
        and after what it enqueued (``changes``: its ``state_changes``, gateway.store._state_changes, None for none;
        ``shipments``: the rows it wrote, ShipmentResult.row, which hold the findings). Called by every write of
        shipments — an ingest, a restore after customs refused a change, quota given back — and costing a statement
        only when a state changed: one to read who may see what the findings name, one to enqueue."""
        if not changes or self.router is None:
            return
        router = self.router
        written = {(s["ebp_code"], s["order_no"]): s for s in shipments}
        rows = [(c, written[(c["ebp_code"], c["order_no"])]) for c in changes if router.sellers_of(c["parties"])]
        if not rows:  # no seller of these shipments has a webhook
            return
        blocking = [f for c, s in rows for f in (*s["findings"], *(c.get("previous_findings") or ()))
                    if f.get("blocking", True)]  # fmt: skip
        documents = await documents_by_guid(conn, finding_sides(blocking))
        jobs: list[JobSpec] = []
        for c, s in rows:
            told = router.reconciliation_webhook_jobs(
                ebp_code=c["ebp_code"], order_no=c["order_no"], parties=c["parties"], state=c["state"],
                previous=c["previous"], missing=s["missing"], findings=s["findings"], documents=documents,
                event_id=uuid.uuid4().hex, previous_findings=c.get("previous_findings"),
            )  # fmt: skip
            if told:
                log.info("sellers_told", webhook_event=told[0].payload["event"], ebp_code=c["ebp_code"],
                         order_no=c["order_no"], state=c["state"], previous=c["previous"],
                         sellers=[j.payload["seller"] for j in told])  # fmt: skip
            jobs += told
        await enqueue_all(conn, jobs)

    async def after_write(
        self,
        conn: asyncpg.Connection,
        plans: Sequence[Plan],
        receipted: Mapping[tuple[str, str], Mapping[str, bool]] | None = None,
        superseded: Iterable[Leg] = (),
        reopened: Iterable[tuple[str, str]] = (),
        taken_over: Iterable[tuple[str, str]] = (),
        ids: Mapping[str, int] | None = None,
    ) -> dict[int, list[int]]:
        """After the store wrote the wave (and its jobs, see wave_jobs), same transaction: settle what still goes of
        the held versions the wave changed or withdrew (:meth:`settle`; ``ids``: the wave's message ids by guid),
        release the held inventories of shipments the wave matched, and of those it matched by giving quota back
        (``reopened``: shipments the annual limit blocked, assessed again); refresh the customs status of shipments
        whose failed or rejected leg, or inventory customs cancelled, the wave changed, withdrew or declared anew
        (``superseded``: those versions as stored; rare), and
        of the keyed shipments that took over a waybill customs had heard of (``taken_over``: it came first, and
        went; rare).
        Returns, by message id, the doc_index of its withdrawals concluded here (sent nowhere): of the wave's
        messages, and of messages stored before whose withdrawals were held behind a message that never goes now.

        ``receipted``: for shipments whose live legs the store read under their locks, the kinds of those legs
        and whether customs took them. A shipment whose order, or the payment it has, is not taken releases nothing
        (RELEASE_HELD would find it blocked), so it costs no statement: the usual case, an inventory declared before
        the receipts of its order and payment. A shipment not in it is looked at in SQL as before."""
        if replaced := list(superseded):
            # The new version is on its way (or withdrawn): the shipment no longer waits for a replay, nor says
            # what customs said of a version no longer in force (a seller who mended and resent it, an inventory
            # declared anew after its cancellation).
            await self._refresh_shipments(conn, await shipments_of(conn, replaced))
        if taken := list(taken_over):
            await self._refresh_shipments(conn, taken)
        if self.router is None:
            return {}
        if any(p.orders for p in plans):  # a declaration routed to a warehouse: not the common case
            assert ids is not None, "the wave's message ids make its warehouse jobs"
            await record_cancels(conn, self.wave_jobs([p for p in plans if p.orders], ids))
        if unkept := [(p.guid, p.message_type, *u) for p in plans for u in p.unkept]:
            await conn.execute(RECORD_UNKEPT, *(list(column) for column in zip(*unkept, strict=True)))
        concluded: dict[int, list[int]] = {}
        if settling := [(p.guid, i) for p in plans for i in p.settle]:
            assert ids is not None, "the wave's message ids settle its withdrawals"
            for message_id, index in await self.settle(conn, [(ids[g], i) for g, i in settling]):
                concluded.setdefault(message_id, []).append(index)
        matched: set[tuple[str, str]] = set(reopened)  # their legs may all be receipted: looked at in SQL
        for p in plans:
            if p.state == "held":
                # Only a held message can be released by an ingest: any other message adds a leg version
                # without a receipt yet, which releases nothing (receipts do, in apply_receipts).
                matched.update(s for s in p.matched if receipted is None or _may_release(receipted.get(s)))
            elif p.withdraws_payment:
                # ... or takes away the one a matched shipment no longer needs (a B2B export's 收款单): its legs were
                # read with that payment, so they are looked at in SQL (rare: a payment withdrawn)
                matched.update(p.matched)
        if matched:
            await self._release(conn, matched, [])
        return concluded

    async def settle(self, conn: asyncpg.Connection, targets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """In the ingest's transaction, after its write: the changes and withdrawals just stored (``targets``: message
        id, doc_index) of versions the gateway holds (spec §6.7: never sent). The held versions nothing needs any more
        — a withdrawn one, a change replaced by a newer one: not the first declaration a change still to go changes —
        are unsent, never to be sent whatever their shipment does later, and a withdrawal of what customs never had
        is concluded here, unsent too: nothing goes (gateway.forward.settle_held). Returns those withdrawals (message
        id, doc_index), with those held behind a message dropped and concluded with it (of messages stored before,
        whose stored answers say so too). A withdrawal that must go (customs has a version before, or one goes with
        another document of its message) is released as any held message, and a change goes when its shipment may,
        after the first declaration it changes."""
        rows = await conn.fetch(SETTLE_VERSIONS, [t[0] for t in targets], [t[1] for t in targets])
        held = sorted({r["message_id"] for r in rows if r["forward_state"] == "held"})
        # under lock: a release of such a message (a receipt of another parcel of it) either waits for this
        # transaction or went before it, and then it is no longer held
        locked = [HeldVersion(
            r["id"], r["message_id"], (r["app_type"] or "1").strip(), r["forward_state"], r["is_current"],
            r["withdrawn"], r["key_withdrawn"], r["replaced_state"],
        ) for r in await conn.fetch(SETTLE_MESSAGES, held)] if held else []  # fmt: skip
        fresh = {v.id: v for v in locked}
        messages: dict[int, list[HeldVersion]] = {}
        for v in locked:
            messages.setdefault(v.message_id, []).append(v)
        chains: dict[int, list[asyncpg.Record]] = {}
        for r in rows:
            chain = chains.setdefault(r["start"], [])
            if r["id"] is not None:
                chain.append(r)
        replacements = [
            Replacement(start, (chain[0]["start_type"] or "1").strip(), tuple(
                fresh.get(r["id"]) or HeldVersion(r["id"], r["message_id"], (r["app_type"] or "1").strip(),
                                                  r["forward_state"])
                for r in chain))
            for start, chain in chains.items()
        ]  # fmt: skip
        settled = settle_held(replacements, messages)
        dropped = sorted(v.id for m in settled.dropped for v in messages[m])
        unsent = sorted({*dropped, *settled.concluded})
        if unsent:
            starts = {r["start"]: r for r in rows}
            touched = sorted(set(settled.dropped) | {starts[i]["start_message"] for i in settled.concluded})
            await conn.execute(SET_UNSENT, unsent, touched)
            log.info("held_versions_unsent", messages=sorted(settled.dropped),
                     withdrawals=sorted(settled.concluded))  # fmt: skip
        after: set[tuple[str, str]] = set()
        concluded_behind: list[tuple[int, int]] = []
        if dropped:
            later = await conn.fetch(LATER_VERSIONS, dropped)
            # withdrawals held behind a message that never goes now (it went for another parcel, withdrawn since; one
            # declared anew since too): nothing of what they withdraw goes either
            behind = {(r["message_id"], r["doc_index"]) for r in later if r["held_withdrawal"]}
            if more := sorted(behind - set(targets)):
                concluded_behind = await self.settle(conn, more)
            # a newer version held behind the message (a change of a parcel of it, a declaration anew) waits for it no
            # more: released by its shipment when that may be, once those withdrawals are settled (nothing else looks
            # at it again)
            after = {(r["ebp_code"] or "", r["order_no"] or "") for r in later}
        # what still goes: the withdrawals of versions customs has, now or after the message of a held one, and the
        # other documents of their messages
        shipments = await conn.fetch(SHIPMENTS_OF_MESSAGES, sorted({t[0] for t in targets}))
        await self._release(conn, after | {(r["ebp_code"] or "", r["order_no"] or "") for r in shipments}, [])
        return sorted([*concluded_behind, *((r["start_message"], r["start_index"]) for r in rows
                                            if r["start"] in settled.concluded and r["depth"] == 1)])  # fmt: skip

    async def _release(
        self, conn: asyncpg.Connection, shipments: Iterable[tuple[str, str]], waybills: Iterable[tuple[str, str]]
    ) -> list[int]:
        """Release the held inventories that became eligible; enqueue their jobs. Returns their message ids."""
        router = self.router
        if router is None:
            return []
        ships, wbs = sorted(set(shipments)), sorted(set(waybills))
        if not ships and not wbs:
            return []
        rows = await conn.fetch(
            RELEASE_HELD,
            [s[0] for s in ships], [s[1] for s in ships], [w[0] for w in wbs], [w[1] for w in wbs],
            rc.RANK_DECLARING,
        )  # fmt: skip
        jobs: list[JobSpec] = []
        for r in rows:
            endpoints = router.endpoints_for(r["message_type"], set(r["modes"]))
            keys = [ordering_key(r["message_type"], k) for k in zip(r["key1s"], r["key2s"], strict=True)]
            jobs += router.message_jobs(
                message_id=r["message_id"], guid=r["guid"], message_type=r["message_type"], endpoints=endpoints,
                ordering_keys=keys,
            )  # fmt: skip
            log.info("inventory_released", message_guid=r["guid"], endpoints=list(endpoints))
        await enqueue_all(conn, jobs)
        released = [r["message_id"] for r in rows]
        # a version released before a held one that replaced it: that one may go now, after it (its own shipment
        # may be none of these); a new statement sees this release
        after = {(e, o) for r in rows for e, o in zip(r["next_ebps"], r["next_onos"], strict=True)}
        if after:
            released += await self._release(conn, after, [])
        return released

    # -- a delivery succeeded -----------------------------------------------------------------------------

    async def record_sent(self, job: cbec_queue.Job, message_id: int) -> None:
        """The customs handler's commit: the message is sent, its shipments' customs status follows, the job is
        done — committed together, fenced by the claim: when the claim is gone this raises cbec_queue.LeaseLost
        and nothing of it is written.

        Deliveries that finish together share one transaction (at most ``max_sent_batch``, at most
        ``max_sent_parallel`` such transactions at once; :mod:`gateway.batching`): under load they pile up while
        one commits, so BEGIN, the locks, the statements and COMMIT's WAL flush are paid per batch. An idle
        gateway commits each alone.
        """
        await self._sent.put(_Sent(job, message_id))
        cbec_queue.note_done(job)  # in the handler's task: the worker must not write the outcome again

    async def _sent_batch(self, items: list[_Sent], follow: Follow[_Sent] | None) -> dict[_Sent, Exception | None]:
        """One transaction for the deliveries; a delivery whose claim was gone gets cbec_queue.LeaseLost.
        (Nothing is taken early: ``follow`` is not used.)"""
        message_ids = sorted({i.message_id for i in items})
        async with db.transaction(self.pool) as conn:
            docs = [_Doc.of(r) for r in await conn.fetch(MESSAGE_DOCUMENTS, message_ids)]
            # The fenced done first (job rows), then the shipments' locks: the order of every transaction that
            # moves jobs and shipments together (the queue's dead-letter hooks: deliveries_dead and _replayed).
            done = await cbec_queue.mark_done_many(conn, [i.job for i in items])
            sent = {i.message_id for i in items if i.job.id in done}
            # a dead letter replayed, delivered now: of its documents, those that waited for it (not receipted since)
            replayed = {i.message_id: f"{i.job.id}:{i.job.replays}" for i in items
                        if i.job.replays and i.job.id in done}  # fmt: skip
            recovered = [d.id for d in docs if d.message_id in replayed and d.forward_state in ("queued", "failed")]
            if sent:
                # A lost claim writes nothing, as when its own transaction rolled back: its message is not
                # marked sent and its shipments are not refreshed.
                shipments = await self._lock_shipments_of(conn, [d for d in docs if d.message_id in sent])
                await conn.execute(MARK_SENT, sorted(sent))
                # A send can change only a pending shipment's status (to declared: see
                # gateway.forward.shipment_customs_status; it moves no leg out of rejected and no rank), a failed
                # one's (a delivery replayed while its hook could not run), or a rejected or cancelled one's whose
                # refused leg or cancelled inventory is no longer the one in force (declared anew — under another key
                # too, which replaces nothing the ingest would look at —, or its inventory now names another waybill).
                await self._refresh_shipments(conn, shipments, statuses=("pending", "failed", "rejected", "cancelled"))
                if recovered:  # rare: nothing more for a first delivery
                    await self._tell_deliveries(conn, "recovered", recovered, replayed)
        return {i: None if i.job.id in done else _lease_lost(i.job) for i in items}

    async def _lock_shipments_of(self, conn: asyncpg.Connection, docs: Iterable[_Doc]) -> set[tuple[str, str]]:
        """The keyed shipments the documents belong to, under the ingest's orderNo locks."""
        docs = list(docs)
        shipments = await shipments_of(conn, docs)
        orders = {d.order_no or "" for d in docs} | {s[1] for s in shipments}
        await conn.fetchval(LOCK_IDS, sorted({order_lock(o) for o in orders}))
        return shipments

    async def _refresh_shipments(
        self, conn: asyncpg.Connection, shipments: Iterable[tuple[str, str]], *, statuses: Sequence[str] | None = None
    ) -> set[tuple[str, str]]:
        """Recompute customs_status of the shipments (of those in ``statuses`` only, when given) from their current
        legs; on a change tell the sellers and, once released, the warehouse. Returns the shipments whose status
        changed (the sellers heard of it)."""
        ships = sorted(set(shipments))
        if not ships:
            return set()
        rows = await conn.fetch(
            SHIPMENT_LEGS, [s[0] for s in ships], [s[1] for s in ships], None if statuses is None else list(statuses)
        )
        changed: list[tuple[str, str, str, str | None]] = []
        jobs: list[JobSpec] = []
        released: list[tuple[asyncpg.Record, list[dict[str, Any]]]] = []  # (shipment, its current legs)
        for r in rows:
            legs = _legs_in_force(r["legs"])
            status, info, said = shipment_customs_word(_leg_state(leg) for leg in legs)
            if status == r["customs_status"] and info == r["customs_info"]:
                continue
            changed.append((r["ebp_code"], r["order_no"], status, info))
            if status == r["customs_status"] or self.router is None:
                continue
            log.info("shipment_customs_status", ebp_code=r["ebp_code"], order_no=r["order_no"], status=status,
                     previous=r["customs_status"])  # fmt: skip
            jobs += self.router.webhook_jobs(
                ebp_code=r["ebp_code"], order_no=r["order_no"], parties=r["parties"], previous=r["customs_status"],
                status=status, info=info, event_id=uuid.uuid4().hex, leg=said, changed_at=r["now"].isoformat(),
            )  # fmt: skip
            inventory = next((leg for leg in legs if leg["kind"] == "inventory"), None)
            if status == "released" and inventory is not None and ships_from_a_warehouse(r["flow"], r["mode"]):
                released.append((r, legs))
        jobs += await self._release_orders(conn, released)
        if changed:
            await conn.execute(
                SET_SHIPMENT_CUSTOMS,
                [c[0] for c in changed], [c[1] for c in changed], [c[2] for c in changed], [c[3] for c in changed],
            )  # fmt: skip
        await enqueue_all(conn, jobs)
        return {(c[0], c[1]) for c in changed}

    # -- a delivery went to the dead letters, or back ------------------------------------------------------

    async def deliveries_dead(self, conn: asyncpg.Connection, moved: Sequence[cbec_queue.JobMoved]) -> None:
        """cbec_queue's ``on_dead`` hook, in the transaction that dead-letters the jobs: a message whose delivery to
        customs failed for good is ``failed``, and so are its shipments that customs has not accepted yet
        (gateway.forward.shipment_customs_status): operators find them by that status, sellers hear of it."""
        await self._follow_deliveries(conn, moved, failed=True)

    async def deliveries_replayed(self, conn: asyncpg.Connection, moved: Sequence[cbec_queue.JobMoved]) -> None:
        """cbec_queue's ``on_replayed`` hook, in the replay's transaction: the failed message waits for its
        delivery again (``queued``) and its shipments' customs_status follows."""
        await self._follow_deliveries(conn, moved, failed=False)

    async def unknown_endpoint(self, conn: asyncpg.Connection, endpoint: str) -> str | None:
        """Why ``endpoint`` names nothing — neither configured nor holding a dead letter —, or None when it names one:
        a mistyped name would otherwise read as "nothing to replay", "no dead letters"."""
        known = set(self.router.endpoint_kinds) if self.router is not None else set()
        if endpoint in known:
            return None
        known |= {r["endpoint"] for r in await conn.fetch(DEAD_ENDPOINTS)}
        if endpoint in known:
            return None
        return f"no endpoint {endpoint!r} is configured or holds dead letters; the endpoints: " \
               f"{', '.join(sorted(known)) or 'none'}"  # fmt: skip

    async def replay(
        self, conn: asyncpg.Connection, *, job_ids: Sequence[int] | None = None, endpoint: str | None = None,
        everything: bool = False, note: str,
    ) -> list[int]:
        """Dead letters back to the queue (cbec_queue.replay, with :meth:`deliveries_replayed` in its transaction):
        the ids of the jobs replayed — of ``job_ids``, those that were dead letters (of ``endpoint``, when named).
        ValueError for an ``endpoint`` neither configured nor holding a dead letter (:meth:`unknown_endpoint`)."""
        if endpoint is not None and (unknown := await self.unknown_endpoint(conn, endpoint)) is not None:
            raise ValueError(unknown)
        replayed: list[int] = []

        async def followed(conn: asyncpg.Connection, moved: Sequence[cbec_queue.JobMoved]) -> None:
            replayed.extend(m.id for m in moved)
            await self.deliveries_replayed(conn, moved)

        await cbec_queue.replay(conn, job_ids=job_ids, endpoint=endpoint, all=everything, note=note,
                                on_replayed=followed)  # fmt: skip
        return sorted(replayed)

    async def _follow_deliveries(
        self, conn: asyncpg.Connection, moved: Sequence[cbec_queue.JobMoved], *, failed: bool
    ) -> None:
        declared: dict[int, str] = {}  # message id -> guid, of customs deliveries (their payload has a CopMsgId)
        for m in moved:
            message_id, guid = m.payload.get("message_id"), m.payload.get("guid")
            if isinstance(message_id, int) and isinstance(guid, str) and m.payload.get("cop_msg_id"):
                declared[message_id] = guid
        if not declared:
            return
        ids = sorted(declared)
        docs = [_Doc.of(r) for r in await conn.fetch(MESSAGE_DOCUMENTS, ids)]
        shipments = await self._lock_shipments_of(conn, docs)
        if failed:
            rows = await conn.fetch(DELIVERY_FAILED, ids, [declared[i] for i in ids])
        else:
            rows = await conn.fetch(DELIVERY_REPLAYED, ids)
        if rows:
            (log.warning if failed else log.info)(
                "delivery_failed" if failed else "delivery_replayed", message_guids=[declared[i] for i in ids],
                documents=len(rows),
            )  # fmt: skip
            # Customs' word stands: a shipment customs accepted or released keeps its status when a later delivery
            # (a change) fails or is replayed; one on its way moves, and a rejected or cancelled one whose refused leg
            # or cancelled inventory is no longer in force (declared anew: that new version failed).
            await self._refresh_shipments(conn, shipments,
                                          statuses=("pending", "declared", "failed", "rejected", "cancelled"))
            if failed:  # each document's sellers, whatever its shipment's status says (a cancellation: nothing)
                errors = {m.payload["message_id"]: m.last_error for m in moved
                          if m.payload.get("message_id") in declared}  # fmt: skip
                await self._tell_deliveries(conn, "failed", [r["id"] for r in rows],
                                            {i: uuid.uuid4().hex for i in declared}, errors)  # fmt: skip

    async def _tell_deliveries(
        self, conn: asyncpg.Connection, outcome: str, ids: Sequence[int], event_ids: Mapping[int, str],
        errors: Mapping[int, str | None] | None = None,
    ) -> None:
        """The sellers of the shipments of documents (``ids``) whose delivery to customs died (``outcome`` failed, with
        the dead job's error by message id) or, replayed, reached customs (recovered) hear of each document, in this
        transaction, after its shipment's status change (if any). ``event_ids``: by message id, what makes the event
        one of its own (gateway.forward.Router.delivery_webhook_jobs)."""
        router = self.router
        if router is None or router.webhook_endpoint is None or not router.webhooks or not ids:
            return
        rows = await conn.fetch(DELIVERY_DOCUMENTS, sorted(set(ids)))
        of_doc: dict[int, set[tuple[str, str]]] = {}
        for r in rows:
            # its own (a cancellation's, a return's: its inventory's); a waybill's by the inventory naming it or its
            # orderNo (few: a dead letter's)
            if r["kind"] == "waybill":
                of_doc[r["id"]] = await shipments_of(conn, [_Doc.of(r)])
            else:
                of_doc[r["id"]] = {(r["ebp_code"], r["order_no"] or "")} if r["ebp_code"] else set()
        ships = sorted(set().union(*of_doc.values()))
        if not ships:
            return
        found = {(s["ebp_code"], s["order_no"]): s for s in await conn.fetch(
            SHIPMENT_PARTIES, [k[0] for k in ships], [k[1] for k in ships])}  # fmt: skip
        jobs: list[JobSpec] = []
        for r in rows:
            for key in sorted(of_doc[r["id"]]):
                if (s := found.get(key)) is None:
                    continue
                document: dict[str, Any] = {
                    "messageType": r["message_type"], "guid": r["doc_guid"], "messageGuid": r["message_guid"],
                    "kind": r["kind"], "appType": (r["app_type"] or "1").strip(), "customsStatus": s["customs_status"],
                }  # fmt: skip
                told = router.delivery_webhook_jobs(
                    outcome=outcome, ebp_code=s["ebp_code"], order_no=s["order_no"], parties=s["parties"],
                    document=document, event_id=event_ids[r["message_id"]],
                    error=None if errors is None else (errors.get(r["message_id"]), r["parties"] or ()),
                )  # fmt: skip
                if told:
                    log.info("sellers_told", webhook_event=told[0].payload["event"], ebp_code=s["ebp_code"],
                             order_no=s["order_no"], guid=r["doc_guid"],
                             sellers=[j.payload["seller"] for j in told])  # fmt: skip
                jobs += told
        await enqueue_all(conn, jobs)

    # -- receipts -------------------------------------------------------------------------------------------

    async def apply_receipts(self, intake: rc.Intake, *, source: str, submitter: str | None) -> list[ReceiptResult]:
        """Store every receipt of the message (once) and apply the new ones, in one transaction."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with db.transaction(self.pool) as conn:
                    return await self._apply(conn, intake, source, submitter)
            except asyncpg.DeadlockDetectedError:
                if attempt == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _apply(
        self, conn: asyncpg.Connection, intake: rc.Intake, source: str, submitter: str | None
    ) -> list[ReceiptResult]:
        recs = intake.records
        # One row per receipt: a message may carry the same return twice (the later copies answer "duplicate").
        first: dict[str, rc.ReceiptRecord] = {}
        for r in recs:
            first.setdefault(r.dedupe_key(), r)
        once = list(first.values())
        inserted = await conn.fetch(
            INSERT_RECEIPTS,
            intake.message_type, intake.root_guid, intake.cop_msg_id, intake.raw_xml, source, submitter,
            [r.index for r in once], [r.guid for r in once], [dict(r.keys) for r in once],
            [r.return_status for r in once], [r.return_time for r in once], [r.return_info for r in once],
            list(first),
        )  # fmt: skip
        new = {first[row["dedupe"]].index: row["id"] for row in inserted}
        fresh = [row for row in inserted if row["inserted"]]  # not the unmatched ones returned to be tried again
        if fresh and not any(row["has_raw"] for row in fresh):
            await conn.execute(SET_RECEIPT_RAW, min(row["id"] for row in fresh), intake.raw_xml)
        tax_bills = intake.message_type in taxbills.TAX_TYPES
        summary_results = intake.message_type in summary.RESULT_TYPES
        name = taxbills.status_name if tax_bills else summary.status_name if summary_results else rc.status_name
        results = {
            r.index: ReceiptResult(
                r.index, r.message_type, r.return_status, rc.Outcome.DUPLICATE.value, name(r.return_status)
            )
            for r in recs
        }
        todo = [r for r in recs if r.index in new]
        if not todo:
            return [results[r.index] for r in recs]
        if tax_bills:
            await self._apply_tax_bills(conn, todo, new, results)
            return [results[r.index] for r in recs]
        if summary_results:
            await self._apply_summary_results(conn, todo, new, results)
            return [results[r.index] for r in recs]
        targets: dict[int, list[int]] = {r.index: [] for r in todo}
        found_docs: dict[int, _Doc] = {}
        for row in await conn.fetch(CORRELATE, [_probe(r.index, r.correlation()) for r in todo]):
            targets[row["i"]].append(row["id"])
            found_docs.setdefault(row["id"], _Doc.of(row))
        ids = sorted(found_docs)
        # Lock the shipments first (the ingest's order), then read the documents fresh and row-locked.
        shipments = await self._lock_shipments_of(conn, found_docs.values())
        docs = {d.id: d for d in (_Doc.of(x) for x in await conn.fetch(LOCK_DOCUMENTS, ids))}
        resend: dict[int, set[int]] = {}  # return element -> the messages it asks to send again
        unkept = await self._unkept(conn, [r for r in todo if not targets[r.index]])
        # what the warehouse and the sellers heard of
        before = {d.id: (d.concluded, d.state.rank or 0, d.forward_state) for d in docs.values()}
        for r in todo:
            res = results[r.index]
            found = [docs[i] for i in targets[r.index] if i in docs]
            if not found and (message_id := unkept.get(r.index)) is not None:
                res.outcome, res.message_id = rc.Outcome.IGNORED_OLDER.value, message_id
                log.info("receipt_of_unkept_document", message_type=r.message_type, status=r.return_status,
                         guid=r.guid)  # fmt: skip
                continue
            if not found:
                res.outcome = rc.Outcome.UNMATCHED.value
                log.warning("receipt_unmatched", message_type=r.message_type, status=r.return_status, guid=r.guid)
                continue
            res.document_ids = [d.id for d in found]
            res.message_id = found[0].message_id
            # A held document was never sent (it waits for its shipment's legs, spec §6.7), nor an unsent one (withdrawn
            # before it was sent; or a withdrawal concluded here, sent only with another document of its message):
            # whatever customs says of it answers something else, and moving it would release goods customs never
            # declared.
            unsent = [d for d in found if d.forward_state in ("held", "unsent")]
            if unsent:
                log.warning("receipt_for_unsent_document", message_type=r.message_type, status=r.return_status,
                            guid=r.guid, document_ids=[d.id for d in unsent])  # fmt: skip
                found = [d for d in found if d.forward_state not in ("held", "unsent")]
                if not found:
                    res.outcome = rc.Outcome.NOT_SENT.value
                    continue
            decisions = [rc.apply(d.state, r, resent=d.repushes > 0) for d in found]
            for d, decision in zip(found, decisions, strict=True):
                if decision.moved:
                    gave_back = d.gives_back
                    d.state = decision.state
                    d.forward_state = decision.state.forward_state or d.forward_state
                    d.gave_back = d.gave_back or (d.gives_back and not gave_back)
                d.changed = True  # last_receipt_at and what it taught, at least
                d.answered = d.answered or decision.outcome is not rc.Outcome.UNKNOWN
                d.learned.update(decision.learned)
                if decision.resend:
                    resend.setdefault(r.index, set()).add(d.message_id)
            if any(x.moved for x in decisions):
                res.outcome = rc.Outcome.APPLIED.value
            else:
                res.outcome = decisions[0].outcome.value
        changed = [d for d in docs.values() if d.changed]
        rows = [(new[r.index], results[r.index]) for r in todo]
        await conn.execute(
            SET_CUSTOMS_STATE_AND_OUTCOMES,
            [d.id for d in changed], [d.forward_state for d in changed], [d.state.status for d in changed],
            [d.state.rank for d in changed], [d.state.return_time for d in changed],
            [d.state.info for d in changed], [d.learned.get("preNo") for d in changed],
            [d.learned.get("invtNo") for d in changed],
            [i for i, _ in rows],
            [res.message_id for _, res in rows],
            [res.document_ids[0] if len(res.document_ids) == 1 else None for _, res in rows],
            [res.outcome == rc.Outcome.APPLIED.value for _, res in rows],
            [res.outcome for _, res in rows],
            [d.answered for d in changed],
        )  # fmt: skip
        numbered = [d.id for d in changed if d.kind == "inventory" and d.learned.get("invtNo")]
        if numbered:
            for r in await conn.fetch(LINK_EARLY_TAX_BILLS, numbered):
                log.info("tax_bill_linked", invt_no=r["number"], tax_no=r["picked"], receipt_id=r["id"])
        sum_numbered = [d.id for d in changed if d.kind == "summary" and d.learned.get("invtNo")]
        if sum_numbered:  # a CEB702's sumNo (kept as invtNo, gateway.receipts.apply)
            for r in await conn.fetch(LINK_EARLY_SUMMARY_RESULTS, sum_numbered):
                log.info("summary_result_linked", sum_no=r["number"], decl_seq_no=r["picked"], receipt_id=r["id"])
        restored: list[tuple[str, str]] = []
        refused = [d.id for d in changed if d.app_type in ("2", "3") and d.forward_state == "rejected"]
        if refused and self.restore is not None:  # a refused change or withdrawal: customs holds the version before
            restored = await self.restore(conn, refused, self)
            # the sellers hear of a leg's change or withdrawal refused now: no status says it (the version before is
            # the leg again)
            await self._tell_sellers_of_refusals(conn, [d for d in changed if d.id in refused and d.kind in _LEG_KINDS
                                                        and before[d.id][2] != "rejected"])  # fmt: skip
        await self._release_quota(conn, [d for d in changed if d.gave_back])
        legs = [d for d in changed if d.kind in ("order", "payment", "waybill")]
        if legs or restored:  # only a receipt on an order, payment or waybill, or a leg live again, can make a held
            # inventory eligible (RELEASE_HELD)
            await self._release(
                conn,
                [(d.ebp_code or "", d.order_no or "") for d in legs if d.kind != "waybill"] + sorted(shipments)
                + restored,
                [(d.logistics_code or "", d.logistics_no or "") for d in legs if d.kind == "waybill"],
            )
        if resend:
            wanted = sorted(set().union(*resend.values()))
            resent = set(await self._resend(conn, wanted, delay_s=self.router.resend_delay_s if self.router else 0.0))
            for index, message_ids in resend.items():  # "resend" says that it happened (not past max_repushes)
                results[index].resend = not message_ids.isdisjoint(resent)
        # Last: a re-send puts a failed message back on its way (COUNT_RESEND), and the status must say so.
        announced = await self._refresh_shipments(conn, shipments | set(restored))
        # what customs concluded or refused of cancellations and returns (not of a return's withdrawal), and released
        # of inventories declared anew
        asked = [d for d in changed if d.kind in ("cancel", "refund") and d.app_type != "3"]
        outcomes = [(d, "concluded") for d in asked if d.concluded and not before[d.id][0]]
        outcomes += [(d, "refused") for d in asked if d.forward_state == "rejected" and before[d.id][2] != "rejected"]
        released = [d.id for d in changed if d.kind == "inventory" and d.app_type == "1" and d.forward_state !=
                    "rejected" and (d.state.rank or 0) >= rc.RANK_RELEASED > before[d.id][1]]
        told = self.router is not None and bool(self.router.on_release or self.router.webhooks)
        anew = list(await conn.fetch(REDECLARED, released)) if released and told else []
        # a shipment released just now told its sellers so (customs_status_changed); one released before, not
        outcomes += [(docs[r["id"]], "released") for r in anew if (r["ebp_code"], r["order_no"]) not in announced]
        orders = await self._warehouse_after_cancellations(
            conn, cancelled=[d.id for d, outcome in outcomes if d.kind == "cancel" and outcome == "concluded"],
            anew=anew,
        )  # fmt: skip
        await self._tell_sellers_of_inventories(conn, outcomes, orders)
        return [results[r.index] for r in recs]

    async def _warehouse_after_cancellations(
        self, conn: asyncpg.Connection, *, cancelled: Sequence[int], anew: Sequence[asyncpg.Record]
    ) -> dict[int, list[str]]:
        """A released shipment is final (never recomputed), yet customs may conclude the cancellation of its inventory
        (CEB623 / CEB605, 399) and release one declared anew: the warehouse gets the cancel of the order made from the
        cancelled inventory (``cancelled``: cancellations concluded now) and an order of the new one (``anew``:
        REDECLARED's rows, inventories released now that were declared after a concluded cancellation of their
        shipment). Returns the orderIds of the orders cancelled, by cancellation, and made, by inventory."""
        orders: dict[int, list[str]] = {}
        if self.router is None or not self.router.on_release or not (cancelled or anew):
            return orders
        jobs: list[JobSpec] = []
        for c in await conn.fetch(CANCELLED_RELEASES, list(cancelled)) if cancelled else []:
            if ships_from_a_warehouse(c["flow"], c["mode"]):
                reason = f"{c['message_type']} concluded by customs: {c['reason'] or ''}".rstrip(": ")
                jobs += self.router.cancel_jobs(
                    message_id=c["message_id"], guid=c["guid"], doc_index=c["doc_index"], ebp_code=c["ebp_code"],
                    order_no=c["order_no"], reason=reason,
                    numbers={"invtNo": c["invt_no"] or "", "preNo": c["pre_no"] or ""},
                )  # fmt: skip
                orders[c["id"]] = [warehouse.order_id(c["guid"], c["doc_index"])]
                log.info("warehouse_order_cancelled", ebp_code=c["ebp_code"], order_no=c["order_no"], guid=c["guid"],
                         doc_index=c["doc_index"])  # fmt: skip
        if anew:
            ids = {r["id"] for r in anew}
            ships = sorted({(r["ebp_code"], r["order_no"]) for r in anew})
            rows = await conn.fetch(RELEASED_SHIPMENT_LEGS, [s[0] for s in ships], [s[1] for s in ships])
            again = [(r, legs) for r in rows if ships_from_a_warehouse(r["flow"], r["mode"])
                     for legs in [_legs_in_force(r["legs"])]
                     if any(leg["kind"] == "inventory" and leg["id"] in ids for leg in legs)]  # fmt: skip
            made = await self._release_orders(conn, again)
            jobs += made
            position = {(leg["message_id"], leg["doc_index"]): leg["id"]
                        for _, legs in again for leg in legs if leg["kind"] == "inventory"}  # fmt: skip
            for j in made:
                made_of = position[(j.payload["message_id"], j.payload["doc_index"])]
                orders[made_of] = [warehouse.order_id(j.payload["guid"], j.payload["doc_index"])]
        await enqueue_all(conn, jobs)
        await record_cancels(conn, jobs)
        return orders

    async def _tell_sellers_of_inventories(
        self, conn: asyncpg.Connection, outcomes: Sequence[tuple[_Doc, str]], orders: Mapping[int, list[str]]
    ) -> None:
        """The sellers of each shipment hear what customs concluded or refused of a cancellation or return of its
        inventory, and that it released an inventory declared anew after a cancellation (``outcomes``: the documents
        with ``concluded``, ``refused`` or ``released``; ``orders``: the warehouse orders cancelled or made by them),
        in this transaction: the shipment's customs status says none of it."""
        if self.router is None or self.router.webhook_endpoint is None or not outcomes:
            return
        found = {r["id"]: r for r in await conn.fetch(SELLER_DOCUMENTS, sorted({d.id for d, _ in outcomes}))}
        jobs: list[JobSpec] = []
        for d, outcome in outcomes:
            r = found.get(d.id)
            if r is None or (outcome == "released" and r["customs_status"] != "released"):
                continue  # no shipment of its own; or one released now, whose sellers heard so
            document: dict[str, Any] = {
                # the inventory's number: customs' receipt teaches it, but a retail export return's (CEB214) is no
                # number of the return's own (receipts.SHARED_INVT_NO): as the document names it then
                "messageType": d.message_type, "guid": r["doc_guid"],
                "invtNo": d.learned.get("invtNo") or d.invt_no or r["named_invt_no"],
                "customs": {"code": d.state.status, "name": rc.status_name(d.state.status), "info": d.state.info,
                            "time": d.state.return_time},
                "warehouseOrders": orders.get(d.id, []),
            }  # fmt: skip
            if d.kind != "inventory":
                document["reason"] = r["reason"]
            told = self.router.inventory_webhook_jobs(
                kind=d.kind, outcome=outcome, ebp_code=r["ebp_code"], order_no=r["order_no"], parties=r["parties"],
                document=document,
            )  # fmt: skip
            if told:
                log.info("sellers_told", webhook_event=told[0].payload["event"], ebp_code=r["ebp_code"],
                         order_no=r["order_no"], sellers=[j.payload["seller"] for j in told])  # fmt: skip
            jobs += told
        await enqueue_all(conn, jobs)

    async def _tell_sellers_of_refusals(self, conn: asyncpg.Connection, docs: Sequence[_Doc]) -> None:
        """The sellers of each shipment hear that customs refused a change or withdrawal of one of its legs (``docs``:
        refused now) whose version before is current again (gateway.store.restore_refused; one customs refused every
        version of stays the leg, and the shipment's status says it: rejected), in this transaction."""
        if self.router is None or self.router.webhook_endpoint is None or not docs:
            return
        found = {r["id"]: r for r in await conn.fetch(REFUSED_LEGS, sorted({d.id for d in docs}))}
        told = [(d, ship) for d in docs if d.id in found and not found[d.id]["is_current"]
                for ship in sorted(await shipments_of(conn, [d]))]  # fmt: skip
        if not told:
            return
        ships = sorted({ship for _, ship in told})
        parties = {(r["ebp_code"], r["order_no"]): r["parties"]
                   for r in await conn.fetch(SHIPMENT_PARTIES, [s[0] for s in ships], [s[1] for s in ships])}
        jobs: list[JobSpec] = []
        for d, (ebp, ono) in told:
            document = {"kind": d.kind, "messageType": d.message_type, "guid": found[d.id]["doc_guid"],
                        "appType": d.app_type,
                        "customs": {"code": d.state.status, "name": rc.status_name(d.state.status or ""),
                                    "info": d.state.info, "time": d.state.return_time}}  # fmt: skip
            made = self.router.change_refused_webhook_jobs(ebp_code=ebp, order_no=ono,
                                                           parties=parties.get((ebp, ono)) or (), document=document)
            if made:
                log.info("sellers_told", webhook_event=CHANGE_REFUSED_EVENT, ebp_code=ebp, order_no=ono,
                         guid=document["guid"], sellers=[j.payload["seller"] for j in made])  # fmt: skip
            jobs += made
        await enqueue_all(conn, jobs)

    async def _release_orders(
        self, conn: asyncpg.Connection, released: Sequence[tuple[asyncpg.Record, list[dict[str, Any]]]]
    ) -> list[JobSpec]:
        """The outbound orders of released shipments (each with its current legs)."""
        if not released or self.router is None:
            return []
        # one read for every shipment released here (a receipt message may release many)
        ids = [leg["id"] for _, legs in released for leg in legs if leg["kind"] != "payment"]
        found = {d["id"]: d for d in await conn.fetch(RELEASED_LEGS, ids)}
        jobs: list[JobSpec] = []
        for r, legs in released:
            jobs += self.router.release_jobs(**release_order(r, legs, found))
        return jobs

    @staticmethod
    async def _unkept(conn: asyncpg.Connection, unmatched: Sequence[rc.ReceiptRecord]) -> dict[int, int]:
        """Of the receipts that found no document, those answering a document the gateway sent but did not keep
        (ignored_older), with the message that carried it: by return element."""
        # the receipt's guid, else the one its returnInfo names (as CORRELATE): the first that names one
        asked = [(r.index, g, r.declared_type)
                 for r in unmatched if r.declared_type for g in (r.guid, r.info_guid) if g]  # fmt: skip
        if not asked:
            return {}
        found = {(row["doc_guid"], row["message_type"]): row["message_id"]
                 for row in await conn.fetch(UNKEPT, [a[1] for a in asked], [a[2] for a in asked])}  # fmt: skip
        out: dict[int, int] = {}
        for i, guid, declared in asked:
            if (guid, declared) in found:
                out.setdefault(i, found[(guid, declared)])
        return out

    async def _apply_tax_bills(
        self, conn: asyncpg.Connection, todo: list[rc.ReceiptRecord], new: Mapping[int, int],
        results: Mapping[int, ReceiptResult],
    ) -> None:  # fmt: skip
        """Customs' tax bills (CEB816/818, gateway.taxbills): each matched to its inventory (invtNo and parties), its
        outcome whether it moved the bill as stored so far. No lock: the bill shown is the fold of every record
        stored, whatever order they committed in. They move nothing of the inventory (its status is its receipts')."""
        found = {row["i"]: row for row in await conn.fetch(CORRELATE, [_probe(r.index, taxbills.correlation(r))
                                                                        for r in todo])}  # fmt: skip
        inventories = sorted({(row["message_type"], row["key1"], row["key2"], row["ebp_code"] or "",
                               row["order_no"] or "") for row in found.values()})  # fmt: skip
        earlier = await conn.fetch(TAX_BILLS_OF, *([k[n] for k in inventories] for n in range(5)))
        bills: dict[tuple[str, str, str, str], taxbills.TaxBill] = {}
        for row in earlier:
            rec = taxbills.from_row(row)
            key = (row["inv_type"], row["inv_key1"], row["inv_key2"], rec.keys.get("taxNo", ""))
            bills[key] = taxbills.apply(bills.get(key), rec)
        for r in todo:
            res, doc = results[r.index], found.get(r.index)
            if doc is None:
                res.outcome = rc.Outcome.UNMATCHED.value
                log.warning("tax_bill_unmatched", message_type=r.message_type, invt_no=r.keys.get("invtNo"),
                            tax_no=r.keys.get("taxNo"))  # fmt: skip
                continue
            key = (doc["message_type"], doc["key1"], doc["key2"], r.keys.get("taxNo", ""))
            before = bills.get(key)
            bills[key] = taxbills.apply(before, r)
            res.document_ids, res.message_id = [doc["id"]], doc["message_id"]
            res.outcome = (rc.Outcome.APPLIED if bills[key] != before else rc.Outcome.STALE).value
        await _record_outcomes(conn, todo, new, results)

    async def _apply_summary_results(
        self, conn: asyncpg.Connection, todo: list[rc.ReceiptRecord], new: Mapping[int, int],
        results: Mapping[int, ReceiptResult],
    ) -> None:  # fmt: skip
        """Customs' summary results (CEB792, gateway.summary): each matched to its summary application (the sumNo its
        CEB702 gave it, and the parties) and kept as a record of it; a result moves nothing of the application's
        customs state (that is its CEB702 receipts'). One that matches nothing is kept unmatched: the CEB702 teaching
        its sumNo links it (LINK_EARLY_SUMMARY_RESULTS), and it is tried again when it comes again, as a receipt is."""
        found = {row["i"]: row for row in await conn.fetch(CORRELATE, [_probe(r.index, summary.correlation(r))
                                                                        for r in todo])}  # fmt: skip
        for r in todo:
            res, doc = results[r.index], found.get(r.index)
            if doc is None:
                res.outcome = rc.Outcome.UNMATCHED.value
                log.warning("summary_result_unmatched", sum_no=r.keys.get("sumNo"), decl_seq_no=r.keys.get("declSeqNo"))
                continue
            res.document_ids, res.message_id = [doc["id"]], doc["message_id"]
            res.outcome = rc.Outcome.APPLIED.value
        await _record_outcomes(conn, todo, new, results)

    async def _release_quota(self, conn: asyncpg.Connection, docs: Sequence[_Doc]) -> None:
        """The documents these receipts made give quota back (:attr:`_Doc.gives_back`): a voided inventory counts no
        more toward its buyer's annual quota (spec §7.1), unless it was declared again since (appType 1 over the
        rejected one; a change made while the first declaration awaited its receipt is no such thing: customs had
        nothing to change); a concluded return's inventory counts less by the value of the goods returned, the latest
        version concluded of the return replacing what an earlier one gave back. Then the buyers' shipments the
        annual limit blocked are assessed again (``reassess``) and those now matched go on."""
        freed: set[tuple[str, int]] = set()
        void = sorted({(d.key, d.id) for d in docs if d.kind != "refund"})
        if void:
            args = [k[0] for k, _ in void], [k[1] for k, _ in void], [i for _, i in void]
            for r in await conn.fetch(RELEASE_QUOTA, *args):
                log.info("quota_released", ebc_code=r["ebc_code"], order_no=r["order_no"], year=r["year"])
                freed.add((r["buyer_id_number"], r["year"]))
        refunds = sorted(d.id for d in docs if d.kind == "refund")
        if refunds:
            values: dict[tuple[str, str], Decimal] = {}
            buyers: set[str] = set()
            for r in await conn.fetch(RETURNED_INVENTORIES, refunds):
                inventory = Document(BY_CODE["CEB621"], r["doc_index"], r["path"], r["head"], r["lines"])
                values[(r["key1"], r["key2"])] = returned_value(inventory, r["returned"] or [])
                buyers.add(buyer_of(r["head"])[0])
            keys = sorted(values)
            if keys:  # under the buyers' locks, as an ingest writes a ledger row (see reopen_quota on deadlocks)
                await conn.fetchval(LOCK_IDS, sorted({buyer_lock(b) for b in buyers}))
                rows = await conn.fetch(RETURN_QUOTA, [k[0] for k in keys], [k[1] for k in keys],
                                        [values[k] for k in keys])  # fmt: skip
                for r in rows:
                    log.info("quota_returned", ebc_code=r["ebc_code"], order_no=r["order_no"], year=r["year"],
                             value=str(r["returned"]), amount=str(r["amount"]))  # fmt: skip
                    if r["freed"]:
                        freed.add((r["buyer_id_number"], r["year"]))
        if freed and self.reassess is not None:
            reopened = await self.reassess(conn, sorted(freed), self)
            if reopened:
                log.info("blocked_shipments_reopened", shipments=[list(k) for k in reopened])
                await self._release(conn, reopened, [])

    async def _resend(self, conn: asyncpg.Connection, message_ids: Sequence[int], *, delay_s: float) -> list[int]:
        """Send messages again (same guid and CopMsgId), each at most max_repushes times; the ids of those sent."""
        router = self.router
        if router is None or not message_ids:
            return []
        rows = await conn.fetch(COUNT_RESEND, list(message_ids), router.max_repushes)
        return await self._enqueue_resends(conn, rows, delay_s=delay_s)

    async def _enqueue_resends(
        self, conn: asyncpg.Connection, rows: Sequence[asyncpg.Record], *, delay_s: float
    ) -> list[int]:
        router = self.router
        assert router is not None
        per_message: dict[int, tuple[int, set[str]]] = {}
        keys: dict[int, set[str]] = collections.defaultdict(set)
        for r in rows:
            count, modes = per_message.get(r["message_id"], (0, set()))
            per_message[r["message_id"]] = (max(count, r["repushes"]), modes | ({r["mode"]} if r["mode"] else set()))
            keys[r["message_id"]].add(ordering_key(r["message_type"], (r["key1"], r["key2"])))
        if not per_message:
            return []
        heads = {h["id"]: h for h in await conn.fetch(MESSAGE_HEADS, list(per_message))}
        jobs: list[JobSpec] = []
        sent: list[int] = []
        for message_id, (count, modes) in sorted(per_message.items()):
            head = heads[message_id]
            customs = router.customs_endpoint(router.endpoints_for(head["message_type"], modes))
            if customs is None:
                continue
            sent.append(message_id)
            jobs += router.resend_jobs(
                message_id=message_id, guid=head["guid"], message_type=head["message_type"], customs_endpoint=customs,
                resend=count, delay_s=delay_s, ordering_keys=keys[message_id],
            )  # fmt: skip
            log.warning("message_resent", message_guid=head["guid"], resend=count)
        await enqueue_all(conn, jobs)
        return sent

    # -- the watchdog ---------------------------------------------------------------------------------------

    async def watchdog(self, *, timeout_s: float, repush: bool, max_repushes: int, limit: int = 1000) -> dict[str, Any]:
        """One pass: flag overdue messages (sent, no receipt for ``timeout_s``) and, with ``repush``, re-send them."""
        repush = repush and self.router is not None
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(WATCHDOG, float(timeout_s), repush, max_repushes, limit)
            overdue = sorted({r["message_id"] for r in rows})
            resent = (
                await self._enqueue_resends(conn, [r for r in rows if r["forward_state"] == "queued"], delay_s=0.0)
                if repush
                else []
            )
        if overdue:
            log.warning("receipts_overdue", messages=len(overdue), resent=len(resent))
        return {"overdue": overdue, "resent": resent}

    async def purge_done_jobs(self, *, older_than_s: float, batch: int = 5000, max_batches: int = 20) -> int:
        """Delete delivered jobs (and their attempts) finished more than ``older_than_s`` ago: a short transaction
        per ``batch`` jobs, at most ``max_batches`` per call (a backlog of history goes over several passes);
        returns how many. The documents keep their forward state, CopMsgId and sent time."""
        purged = 0
        for _ in range(max_batches):
            async with self.pool.acquire() as conn:
                n = await cbec_queue.purge_done(conn, older_than_s=older_than_s, limit=batch)
            purged += n
            if n < batch:
                break
        return purged

    # -- reads ----------------------------------------------------------------------------------------------

    async def message_xml(self, message_id: int) -> str | None:
        """The stored XML of a message (None: not stored).

        The handlers of a claimed batch start together and all ask at once: the asks of one moment share one
        read (one connection, one statement). Nothing is cached, so a job run again reads afresh.
        """
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._xml_wanted.setdefault(message_id, []).append(future)
        if self._xml_reader is None:
            self._xml_reader = self._spawn(self._read_xml())
        return await future

    async def _read_xml(self) -> None:
        wanted: dict[int, list[asyncio.Future[str | None]]] = {}
        try:
            await asyncio.sleep(0)  # the handlers started in the same turn ask before the read goes out
            while self._xml_wanted:
                ids = list(self._xml_wanted)[:_XML_READ_MAX]
                wanted = {i: self._xml_wanted.pop(i) for i in ids}
                try:
                    async with self.pool.acquire() as conn:
                        found = {r["id"]: r["raw_xml"] for r in await conn.fetch(MESSAGES_XML, ids)}
                except Exception as exc:  # each handler fails (and its job is retried) as with its own read
                    for futures in wanted.values():
                        for f in futures:
                            if not f.done():
                                f.set_exception(exc)
                    continue
                for message_id, futures in wanted.items():
                    for f in futures:
                        if not f.done():
                            f.set_result(found.get(message_id))
                wanted = {}
        finally:
            self._xml_reader = None
            for futures in (*wanted.values(), *self._xml_wanted.values()):  # cancelled: nobody waits forever
                for f in futures:
                    f.cancel()
            self._xml_wanted = {}

    async def shipment_forwarding(self, shipment: dict[str, Any]) -> dict[str, Any]:
        """Add forwarding to a shipment as gateway.store.Store.get_shipment returns it (with the shipment's own
        customs_status, customs_info and customs_updated_at), or to a message as Store.get_message does: per document
        its forward state, customs status, transmissions (jobs and attempts), receipts and warehouse orders."""
        docs = shipment.get("documents", [])
        ids = [d["id"] for d in docs]
        # planned like the writes (db.BEGIN_PLANNED): index probes whatever the tables' statistics say
        async with db.transaction(self.pool) as conn:
            fwd = {r["id"]: r for r in await conn.fetch(FORWARDING_OF_DOCUMENTS, ids)}
            guids = sorted({r["message_guid"] for r in fwd.values()})
            jobs = [dict(j) for j in await conn.fetch(TRANSMISSIONS, guids)]
            history: dict[int, list[dict[str, Any]]] = {j["id"]: [] for j in jobs}
            if jobs:
                for h in await conn.fetch(ATTEMPTS, list(history)):
                    entry = dict(h)
                    history[entry.pop("job_id")].append(entry)
            message_ids = sorted({r["message_id"] for r in fwd.values()})
            receipts = [dict(r) for r in await conn.fetch(RECEIPTS_OF, ids, message_ids)]
            held = sorted({r["message_id"] for r in fwd.values() if r["forward_state"] == "held"})
            waits = await conn.fetch(HOLD_REASONS, held, rc.RANK_DECLARING) if held else []
            await with_warehouse_orders(conn, docs)
            if shipment.get("flow") == "export":
                numbered = [{**d, "invt_no": fwd[d["id"]]["invt_no"] if d["id"] in fwd else None} for d in docs]
                shipment["summary"] = await inventory_summary(conn, numbered,
                                                              shipment.get("customs_status") == "released")  # fmt: skip
        for j in jobs:
            j["history"] = history[j["id"]]
        for d in docs:
            r = fwd.get(d["id"])
            if r is None:
                continue
            guid = r["message_guid"]
            d["forward_state"] = r["forward_state"]
            d["cop_msg_id"] = r["cop_msg_id"]
            d["sent_at"] = _iso(r["sent_at"])
            d["last_receipt_at"] = _iso(r["last_receipt_at"])
            d["receipt_overdue"] = r["receipt_overdue"]
            d["resends"] = r["repushes"]
            d["pre_no"], d["invt_no"] = r["pre_no"], r["invt_no"]
            if d.get("kind") == Kind.SUMMARY:  # the column keeps a summary application's sumNo: named so here
                d["sum_no"], d["invt_no"] = d["invt_no"], None
            elif d.get("kind") == Kind.DELIVERY:  # and a site delivery's warehouse-entry number (入库单编号)
                d["rkd_no"], d["invt_no"] = d["invt_no"], None
            d["customs"] = (
                None
                if r["customs_status"] is None
                else {
                    "code": r["customs_status"],
                    "rank": r["customs_rank"],
                    "name": rc.status_name(r["customs_status"]),
                    "info": r["customs_info"],
                    "time": r["customs_return_time"],
                }
            )
            if r["forward_state"] == "held":
                d["held_until"] = held_until(d, [w for w in waits if w["message_id"] == r["message_id"]])
            if r["forward_state"] == "unsent":
                d["unsent"] = unsent(r["withdrawn"], r["key_withdrawn"])
            d["transmissions"] = [j for j in jobs if j["message_guid"] == guid]
            d["receipts"] = [
                x
                for x in receipts
                if x["document_id"] == d["id"] or (x["document_id"] is None and x["message_id"] == r["message_id"])
            ]
        return shipment

    async def record_warehouse_callback(
        self, callback: warehouse.WarehouseCallback, submitter: str
    ) -> tuple[bool, bool, str]:
        """Store a warehouse's callback once: whether it was new, whether it is linked to the document its order was
        made from (its reference names a document the gateway holds, and its orderId is the one the gateway gave the
        order made from it: the shipment view shows it there), and the order's furthest status now."""
        ref = callback.reference
        mtype = ref.get("messageType") if isinstance(ref.get("messageType"), str) else None
        doc_guid = ref.get("guid") if isinstance(ref.get("guid"), str) else None
        async with self.pool.acquire() as conn, conn.transaction():
            made = await conn.fetch(WAREHOUSE_ORDER_SOURCES, doc_guid, mtype) if mtype and doc_guid else []
            linked = any(warehouse.order_id(r["guid"], r["doc_index"]) == callback.order_id for r in made)
            ship = await conn.fetchrow(WAREHOUSE_SHIPMENT, doc_guid, mtype) if linked else None
            if ship is not None:
                # The shipment's lock, which every transaction telling its sellers holds: callbacks of its orders are
                # judged one after the other (each sees the one before it: the order's furthest status, what the
                # sellers were told), and its events are enqueued in the order their transactions commit — the order
                # they are delivered in.
                await conn.fetchval(LOCK_IDS, [order_lock(ship["order_no"])])
            row = await conn.fetchrow(
                INSERT_WAREHOUSE_EVENT, submitter, callback.order_id, callback.warehouse_order_no, callback.direction,
                callback.status, callback.reason, callback.occurred_at, mtype, doc_guid if linked else None,
                dict(ref),
            )  # fmt: skip
            assert row is not None
            # the statement reads the order's earlier callbacks as they were before its own insert
            before = warehouse.furthest({"status": s} for s in row["statuses"])
            best = warehouse.furthest({"status": s} for s in [*row["statuses"], callback.status])
            assert best is not None
            went_further = before is None or best["status"] != before["status"]
            # a document of no shipment (a delivery's, CEB711): no seller to tell
            if row["stored"] and ship is not None and went_further and self.router is not None:
                await self._tell_sellers(conn, callback, ship, before["status"] if before else None)
            if row["stored"]:  # every status bears on the order's cancels: it goes on, or it ended (confirmed)
                for c in await conn.fetch(CANCEL_CALLBACK, callback.order_id, callback.status,
                                          sorted(warehouse.GOING_ON)):  # fmt: skip
                    if callback.status not in warehouse.PROGRESS:
                        log.info("warehouse_cancel_confirmed", order_id=callback.order_id, endpoint=c["endpoint"],
                                 status=callback.status)  # fmt: skip
                    else:  # the goods may be leaving although the gateway asked to cancel the order: look at once
                        log.warning("warehouse_progress_after_cancel", order_id=callback.order_id,
                                    endpoint=c["endpoint"], status=callback.status, message_type=c["message_type"],
                                    doc_guid=c["doc_guid"], requested_at=c["requested_at"].isoformat())  # fmt: skip
        return row["stored"], linked, best["status"]

    async def record_cancel_answer(
        self, endpoint: str, job_payload: Mapping[str, Any], answer: Mapping[str, Any], *, refused: bool
    ) -> dict[str, Any] | None:
        """The warehouse's ``answer`` to the cancel a job of kind warehouse.cancel carried to ``endpoint`` (its
        ``job_payload``): taken (2xx) or, ``refused``, a refusal — then the cancel needs a look. Returns the cancel as
        recorded (None: the document its order was made from is not stored)."""
        p = job_payload
        order = warehouse.order_id(str(p["guid"]), int(p["doc_index"]))
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(CANCEL_ANSWERED, endpoint, order, int(p["message_id"]), int(p["doc_index"]),
                                      cancel_direction(p), str(p.get("reason") or ""), dict(answer),
                                      refused)  # fmt: skip
        if row is None:
            return None
        if refused:
            log.warning("warehouse_cancel_refused", order_id=order, endpoint=endpoint, answer=dict(answer),
                        message_type=row["message_type"], doc_guid=row["doc_guid"])  # fmt: skip
        return warehouse_cancel_dict(row)

    async def flag_overdue_cancels(self, timeout_s: float, limit: int = 500) -> list[dict[str, Any]]:
        """The watchdog's: the cancels a warehouse has not confirmed ``timeout_s`` after the gateway asked them are
        flagged (once, each logged): the goods may not have stopped. Returns them."""
        async with db.transaction(self.pool) as conn:
            rows = await conn.fetch(OVERDUE_CANCELS, float(timeout_s), limit)
        for r in rows:
            log.warning("warehouse_cancel_unconfirmed", order_id=r["order_id"], endpoint=r["endpoint"],
                        message_type=r["message_type"], doc_guid=r["doc_guid"],
                        requested_at=r["requested_at"].isoformat(),
                        delivered=r["delivered_at"] is not None)  # fmt: skip
        return [warehouse_cancel_dict(r) for r in rows]

    async def _tell_sellers(
        self, conn: asyncpg.Connection, callback: warehouse.WarehouseCallback, ship: asyncpg.Record,
        previous: str | None,
    ) -> None:
        """The sellers of the shipment ``ship`` (WAREHOUSE_SHIPMENT) whose document a warehouse order went further on
        hear of it (webhooks), in the callback's transaction."""
        assert self.router is not None
        order = {"orderId": callback.order_id, "warehouseOrderNo": callback.warehouse_order_no,
                 "direction": callback.direction, "status": callback.status, "previous": previous,
                 "reason": callback.reason, "occurredAt": callback.occurred_at}  # fmt: skip
        await enqueue_all(conn, self.router.warehouse_webhook_jobs(
            ebp_code=ship["ebp_code"], order_no=ship["order_no"], parties=ship["parties"] or (), order=order,
            event_id=uuid.uuid4().hex,
        ))  # fmt: skip


async def with_warehouse_orders(conn: asyncpg.Connection | asyncpg.Pool, documents: list[dict[str, Any]]) -> None:
    """Add to each document (with its message_type and doc_guid) the warehouse orders made from it, as their
    warehouses reported them (``warehouse_orders``, see warehouse_orders)."""
    guids = sorted({d["doc_guid"] for d in documents})
    orders = warehouse_orders(await conn.fetch(WAREHOUSE_EVENTS_OF, guids),
                              await conn.fetch(WAREHOUSE_CANCELS_OF, guids))  # fmt: skip
    for d in documents:
        d["warehouse_orders"] = orders.get((d["message_type"], d["doc_guid"]), [])


async def read_warehouse_callbacks(
    conn: asyncpg.Connection,
    *,
    linked: bool | None = None,
    submitter: str | None = None,
    order_id: str | None = None,
    statuses: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """A page of the warehouses' callbacks, newest first (the API's GET /v1/warehouse/callbacks and the console's):
    ``linked`` False for those placed on no document — an order the gateway did not make, or a reference it does not
    hold — which no shipment shows; ``statuses`` those reporting one of them (``rejected``, ``cancelled``: orders the
    warehouse will not ship). ``next_cursor`` is None on the last page; a malformed cursor raises ValueError."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    before = db.row_id(cursor) if cursor else 2**63 - 1
    if before is None:
        raise ValueError("not a cursor of GET /v1/warehouse/callbacks")
    sql = {None: LIST_WAREHOUSE_CALLBACKS, True: LIST_WAREHOUSE_CALLBACKS_LINKED,
           False: LIST_WAREHOUSE_CALLBACKS_UNLINKED}[linked]  # fmt: skip
    rows = await conn.fetch(sql, before, limit + 1, submitter, order_id, list(statuses) if statuses else None, since,
                            until)  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [_warehouse_callback_dict(r) for r in rows], "next_cursor": str(rows[-1]["id"]) if more else None}


def _warehouse_callback_dict(r: asyncpg.Record) -> dict[str, Any]:
    linked = r["doc_guid"] is not None
    return {
        "id": r["id"],
        "received_at": r["received_at"].isoformat(),
        "submitter": r["submitter"],
        "order_id": r["order_id"],
        "warehouse_order_no": r["warehouse_order_no"],
        "direction": r["direction"],
        "status": r["status"],
        "reason": r["reason"],
        "occurred_at": r["occurred_at"],
        "reference": r["reference"],
        "linked": linked,
        # the shipment of the document its order was made from (a linked one's; a delivery's document has none)
        "ebpCode": r["ebp_code"],
        "orderNo": r["order_no"],
        # why no shipment shows it: its reference names no document the gateway holds, or one the gateway made
        # another order from (a mistyped or foreign orderId)
        "unlinked_because": None if linked else ("order_id_not_ours" if r["reference_held"] else "unknown_reference"),
        # a status of progress that came after the gateway asked the warehouse to cancel the order
        "after_cancel": r["after_cancel"],
    }


async def inventory_summary(
    conn: asyncpg.Connection, documents: Iterable[Mapping[str, Any]], released: bool
) -> dict[str, Any] | None:
    """The summary declaration (汇总申报) of a shipment's current B-type export inventory (statisticsFlag B), as
    gateway.summary.inventory_summary tells it from the live applications naming the invtNo customs gave it and
    customs' results listing its items; None for any other shipment. ``documents``: the shipment's, each with its
    ``invt_no`` (from its CEB604 receipts); ``released``: whether customs released the shipment. Whether it was
    cancelled (its CEB605 concluded) is read as a summary application naming it is judged (HELD_INVENTORIES)."""
    inventory = next((d for d in documents if d["message_type"] == "CEB603" and d["is_current"]
                      and not d["withdrawn"]), None)  # fmt: skip
    head = (db.json_value(inventory["head"]) or {}) if inventory is not None else {}
    if inventory is None or head.get("statisticsFlag") != "B":
        return None
    invt_no = inventory.get("invt_no")
    live = await conn.fetch(summary.LIVE_SUMMARIES, [invt_no]) if invt_no else []
    results = await conn.fetch(summary.RESULTS_OF_INVENTORY, invt_no) if invt_no else []
    held = await conn.fetch(summary.HELD_INVENTORIES, [invt_no], rc.RANK_CONCLUDED) if invt_no else []
    key = tuple(str(head.get(f) or "").strip() for f in ("agentCode", "copNo"))
    cancelled = any(r["cancelled"] for r in held if r["message_type"] == "CEB603" and (r["key1"], r["key2"]) == key)
    return summary.inventory_summary(invt_no, released, live, [{**r, "keys": db.json_value(r["keys"])}
                                                               for r in results], cancelled=cancelled)  # fmt: skip


def ships_from_a_warehouse(flow: str, mode: str | None) -> bool:
    """Whether a released shipment's goods leave from a warehouse that takes an outbound order (on_release): an
    import's (bonded stock, or the parcel at the site, goes to the buyer) and a special-zone export's (1210: the zone
    warehouse ships the goods out of the zone to the carrier). A 9610, 9710 or 9810 export's parcel is with its
    seller or carrier already."""
    return flow == "import" or mode == "1210"


def release_order(
    shipment: Mapping[str, Any], legs: Sequence[Mapping[str, Any]], found: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any]:
    """Router.release_jobs' arguments for a released shipment (``legs``: its current legs, one per kind, ``found``:
    RELEASED_LEGS' rows by id): its inventory, the invtNo and preNo customs gave it, and for an import the consignee of
    its waybill, else of its order (spec §3.1 #26-28, §3.3 #16-18: the 收货人 is theirs, R3 makes them equal; an
    inventory names only the buyer). Neither held, none: the order falls back to the inventory's buyer."""
    by_kind = {leg["kind"]: leg for leg in legs}
    inventory = by_kind["inventory"]
    inv = found[inventory["id"]]
    args: dict[str, Any] = {
        "message_id": inventory["message_id"], "guid": inv["guid"], "doc_index": inventory["doc_index"],
        "ebp_code": shipment["ebp_code"], "order_no": shipment["order_no"],
        "numbers": {"invtNo": inv["invt_no"] or "", "preNo": inv["pre_no"] or ""},
    }  # fmt: skip
    if shipment["flow"] != "import":  # an export's buyer is abroad: the zone warehouse hands the goods to the carrier
        return args
    for kind in ("waybill", "order"):
        leg = found.get(by_kind[kind]["id"]) if kind in by_kind else None
        if leg is not None and leg["consignee"]:
            args["consignee"] = {"name": leg["consignee"], "telephone": leg["consignee_telephone"] or "",
                                 "address": leg["consignee_address"] or ""}  # fmt: skip
            args["consignee_from"] = leg["message_type"]
            break
    return args


def warehouse_orders(
    callbacks: Iterable[Mapping[str, Any]], cancels: Iterable[Mapping[str, Any]] = ()
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The warehouse orders of each document (message type, doc guid) from their callbacks (WAREHOUSE_EVENTS_OF's
    rows, oldest first) and the cancels the gateway asked of them (WAREHOUSE_CANCELS_OF's): per order its furthest
    status (None: no callback yet) and every callback as it came — ``after_cancel`` a status of progress that came
    after the cancel was asked —, and ``cancel`` (warehouse_cancel_dict; None: none asked)."""
    asked: dict[str, Mapping[str, Any]] = {}
    for c in cancels:
        asked.setdefault(c["order_id"], c)  # the first asked (two warehouse endpoints may each have the order)
    by_order: dict[str, dict[str, Any]] = {}
    for c in callbacks:
        order = by_order.setdefault(c["order_id"], {
            "key": (c["message_type"], c["doc_guid"]), "order_id": c["order_id"],
            "warehouse_order_no": c["warehouse_order_no"], "direction": c["direction"], "events": [],
        })  # fmt: skip
        cancel = asked.get(c["order_id"])
        after = cancel is not None and c["status"] in warehouse.GOING_ON and c["received_at"] > cancel["requested_at"]
        order["events"].append({"status": c["status"], "reason": c["reason"], "occurred_at": c["occurred_at"],
                                "received_at": _iso(c["received_at"]), "after_cancel": after})  # fmt: skip
    for order_id, c in asked.items():  # an order the warehouse said nothing of: its cancel alone
        number = (c["answer"] or {}).get("warehouseOrderNo") if isinstance(c["answer"], Mapping) else None
        by_order.setdefault(order_id, {"key": (c["message_type"], c["doc_guid"]), "order_id": order_id,
                                       "warehouse_order_no": number, "direction": c["direction"], "events": []})
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for order in by_order.values():
        best = warehouse.furthest(order["events"])
        order.update(status=best["status"] if best else None, reason=best["reason"] if best else None)
        order["cancel"] = warehouse_cancel_dict(asked[order["order_id"]]) if order["order_id"] in asked else None
        out.setdefault(order.pop("key"), []).append(order)
    return out


def cancel_flags(c: Mapping[str, Any]) -> list[str]:
    """What was flagged of a cancel (CANCEL_FLAGS, the gravest first), kept once it is confirmed or closed."""
    at = {"progress_after_cancel": c["progress_at"], "refused": c["refused_at"], "unconfirmed": c["overdue_at"]}
    return [f for f in CANCEL_FLAGS if at[f] is not None]


def warehouse_cancel_dict(c: Mapping[str, Any]) -> dict[str, Any]:
    """A cancel the gateway asked of a warehouse (WAREHOUSE_CANCEL_COLUMNS' row): when and why, when it reached the
    warehouse or the warehouse refused it (``answer``: its status and what it said), when it confirmed it, the first
    progress it reported after (``progress_at``, the latest such ``progress_status``), when it was found overdue,
    ``flags`` (cancel_flags) and ``needs_look`` — flagged, neither confirmed nor closed —, and who closed it."""
    flags = cancel_flags(c)
    return {
        "id": c["id"], "endpoint": c["endpoint"], "reason": c["reason"], "requested_at": _iso(c["requested_at"]),
        "delivered_at": _iso(c["delivered_at"]), "refused_at": _iso(c["refused_at"]), "answer": c["answer"],
        "confirmed_at": _iso(c["confirmed_at"]), "progress_at": _iso(c["progress_at"]),
        "progress_status": c["progress_status"], "overdue_at": _iso(c["overdue_at"]), "flags": flags,
        "needs_look": bool(flags) and c["confirmed_at"] is None and c["closed_at"] is None,
        "closed_at": _iso(c["closed_at"]), "closed_by": c["closed_by"], "close_reason": c["close_reason"],
    }  # fmt: skip


def warehouse_cancel_item(r: Mapping[str, Any]) -> dict[str, Any]:
    """A cancel as GET /v1/warehouse/cancels lists it (WAREHOUSE_CANCELS' row): warehouse_cancel_dict's, with the order
    (its orderId, direction, the warehouse's number and furthest status: None, nothing reported), the document it was
    made from and that document's shipment (ebpCode, orderNo; none for a site's delivery)."""
    best = warehouse.furthest({"status": s} for s in r["statuses"] or ())
    return {**warehouse_cancel_dict(r), "order_id": r["order_id"], "direction": r["direction"],
            "warehouse_order_no": r["warehouse_order_no"], "status": best["status"] if best else None,
            "message_type": r["message_type"], "doc_guid": r["doc_guid"], "ebpCode": r["ebp_code"],
            "orderNo": r["order_no"]}  # fmt: skip


def cancel_direction(payload: Mapping[str, Any]) -> str:
    """The direction of the order a cancel job's ``payload`` cancels: as its order's (adapters.warehouse.build_orders:
    inbound for a site's delivery, CEB711)."""
    direction = payload.get("direction")
    if direction in warehouse.DIRECTIONS:
        return str(direction)
    return "inbound" if payload.get("message_type") == "CEB711" else "outbound"


async def record_cancels(conn: asyncpg.Connection, jobs: Iterable[JobSpec]) -> None:
    """Record with the order it cancels each warehouse cancel among ``jobs``, in the transaction that enqueues them
    (the job is deleted some time after it went: the record stays). None among them: no statement."""
    cancels = [j for j in jobs if j.kind == WAREHOUSE_CANCEL]
    if not cancels:
        return
    await conn.execute(RECORD_CANCELS, [j.endpoint for j in cancels],
                       [warehouse.order_id(str(j.payload["guid"]), int(j.payload["doc_index"])) for j in cancels],
                       [int(j.payload["message_id"]) for j in cancels], [int(j.payload["doc_index"]) for j in cancels],
                       [cancel_direction(j.payload) for j in cancels],
                       [str(j.payload.get("reason") or "") for j in cancels])  # fmt: skip


class Leg(Protocol):
    """What :func:`shipments_of` reads of a document (gateway.keystate.Row and the outbox's _Doc alike)."""

    kind: str
    message_type: str
    ebp_code: str | None
    order_no: str | None
    logistics_code: str | None
    logistics_no: str | None


async def shipments_of(conn: asyncpg.Connection, docs: Iterable[Leg]) -> set[tuple[str, str]]:
    """The shipments documents belong to: an order's, payment's, inventory's or cancellation's own; a waybill's via an
    inventory naming it or sharing its orderNo, its own while it is alone (SHIPMENTS_OF_WAYBILLS, one round trip for
    all)."""
    shipments: set[tuple[str, str]] = set()
    waybills: set[tuple[str | None, str | None, str | None, str]] = set()
    for d in docs:
        if d.kind == "waybill":
            waybills.add((d.logistics_code, d.logistics_no, d.order_no, d.message_type))
        elif d.kind in ("order", "payment", "inventory", "cancel") and d.ebp_code:  # a concluded cancellation moves it
            shipments.add((d.ebp_code, d.order_no or ""))
    if waybills:
        w = sorted(waybills, key=lambda x: tuple(v or "" for v in x))
        rows = await conn.fetch(SHIPMENTS_OF_WAYBILLS, *([x[n] for x in w] for n in range(4)))
        shipments |= {(r["ebp_code"], r["order_no"]) for r in rows}
    return shipments


def _probe(index: int, c: rc.Correlation) -> dict[str, Any]:
    """One row of CORRELATE's input: absent or empty values as null (a probe without its value finds nothing)."""
    declared = c.declared_type
    return {
        "i": index,
        "declared": declared,
        "ori": c.ori_cop_msg_id,
        "k1": c.keys[0] if c.keys is not None else None,
        "k2": c.keys[1] if c.keys is not None else None,
        "ebc": c.ebc_code,
        "guid": c.guid or None,
        "info_guid": c.info_guid or None,
        "cop_no": c.cop_no or None,
        "parties": dict(c.parties),
        "pre_no": c.pre_no or None,
        "invt_no": c.invt_no or None,
    }


def _leg_state(leg: Mapping[str, Any]) -> LegState:
    return LegState(leg["kind"], leg["forward_state"], leg["customs_status"], leg["customs_rank"], leg["customs_info"],
                    leg.get("customs_time"), leg.get("message_type"), leg.get("doc_guid"),
                    (leg.get("app_type") or "1").strip(), bool(leg.get("withdrawn")))  # fmt: skip


def _legs_in_force(legs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A shipment's legs as SHIPMENT_LEGS reads them, each inventory replaced by the version of it whose customs word
    the status follows (gateway.forward.inventory_in_force: the version customs holds while a change or withdrawal is
    on its way, the one it released), or dropped when that is a withdrawal customs took; one leg per kind. A concluded
    cancellation is kept only when it came after the inventory's current version (one declared anew since is not
    cancelled)."""
    current = max((leg["id"] for leg in legs if leg["kind"] == "inventory"), default=None)
    kept = []
    for leg in legs:
        if leg["kind"] == "cancel" and (current is None or leg["id"] < current):
            continue
        if leg["kind"] == "inventory":
            versions = [leg, *(leg.get("before") or ())]
            chosen = inventory_in_force([_leg_state(v) for v in versions])
            if chosen is None:
                continue
            leg = versions[chosen]
        kept.append(leg)
    return _latest_legs(kept)


def _latest_legs(legs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One leg per kind: the latest by appTime, then arrival (two current payments of one order are possible;
    the store reconciles the latest)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for leg in legs:
        best = by_kind.get(leg["kind"])
        if best is None or (leg["app_time"] or "", leg["id"]) > (best["app_time"] or "", best["id"]):
            by_kind[leg["kind"]] = leg
    return list(by_kind.values())


def job_rows(jobs: Iterable[JobSpec]) -> list[dict[str, Any]]:
    """The jobs as the rows enqueue_insert reads."""
    return [
        {"endpoint": j.endpoint, "kind": j.kind, "payload": j.payload, "dedupe_key": j.dedupe_key,
         "delay": float(j.delay_s), "priority": j.priority, "ordering_keys": list(j.ordering_keys)}
        for j in jobs
    ]  # fmt: skip


async def enqueue_all(conn: asyncpg.Connection, jobs: Iterable[JobSpec]) -> int:
    """Enqueue the jobs on ``conn`` (the caller's transaction) in one statement; returns how many were new.

    The same insert as ``cbec_queue.enqueue`` (a live job with the same endpoint and dedupe key wins; the
    endpoint's workers are woken at commit; ordering keys hold a job back behind the earlier live jobs of its
    keys), for many jobs at once. Ids follow the order of ``jobs``.
    """
    rows = job_rows(jobs)
    if not rows:
        return 0
    row = await conn.fetchrow(ENQUEUE_MANY, rows, cbec_queue.CHANNEL)
    assert row is not None
    return int(row["new"])


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def _record_outcomes(
    conn: asyncpg.Connection, todo: list[rc.ReceiptRecord], new: Mapping[int, int], results: Mapping[int, ReceiptResult]
) -> None:
    """The outcome of each of these customs documents (a tax bill, a summary result), with the document it matched:
    kept as their receipt rows; no document's customs state moves."""
    rows = [(new[r.index], results[r.index]) for r in todo]
    await conn.execute(
        SET_CUSTOMS_STATE_AND_OUTCOMES, [], [], [], [], [], [], [], [],
        [i for i, _ in rows], [res.message_id for _, res in rows],
        [res.document_ids[0] if res.document_ids else None for _, res in rows],
        [res.outcome == rc.Outcome.APPLIED.value for _, res in rows], [res.outcome for _, res in rows], [],
    )  # fmt: skip
