"""The summary declaration (汇总申报, spec §4.4 step 4, A.29–A.31): what the gateway checks of the inventories a
summary application (CEB701) names, and customs' summary results (CEB792) — pure, no I/O.

A B-type export inventory (CEB603 statisticsFlag B) is declared again, consolidated with others of its consignor,
as a customs declaration: the exporter's way to an export declaration and the VAT refund. The application names the
inventories by the invtNo customs gave them (CEB604). Customs is the authority on what it takes; the gateway tells
the declarant early what it already knows is wrong:

* an inventory of the applicant's the gateway holds under that invtNo that **cannot** be summarised refuses the
  application (HTTP 409, nothing stored): an import inventory (``summary.inventory_not_export``), an A-type one
  (simplified declaration, ``summary.inventory_not_b_type``), one withdrawn or cancelled
  (``summary.inventory_withdrawn``) — customs would refuse each, and a refused summary costs the exporter a day;
* what may still come right is a **warning** in the 202 answer, and the application is stored and forwarded: an
  invtNo the gateway holds no export inventory of (declared through another platform, or before the gateway —
  ``summary.inventory_unknown``), an inventory customs has not released yet (its 800 may be on its way,
  ``summary.inventory_not_released``).

An inventory that is not the applicant's — another consignor's export inventory (its ebcCode is not the
application's), an import one neither the application's agentCode nor its ebcCode is a party of, or one whose
enterprise codes the submitting key holds none of (a submitter writes the application's ebcCode itself) — answers
exactly as an invtNo the gateway does not hold (``summary.inventory_unknown``): whether another enterprise's number
exists, and what it is, is not the applicant's to learn (README "Access"). Customs refuses it.

These are not rules of the message (gateway.rules): only the stored inventories know them, so they are read when a
CEB701 is submitted (:data:`HELD_INVENTORIES`, :data:`LIVE_SUMMARIES`), before it is stored; and the store judges
it again in its ingest transaction, under a lock per invtNo named (keystate.LOCK_SUMMARISED), against the live
applications read there (:class:`Named`): of two applications naming one inventory submitted at once, the second
sees the first and is refused, as it would be one after the other. A summary of a period (startTime, endTime)
is not checked here: customs ignores its list (a list beside the period is a warning, ``summary.list_ignored``); nor
is a withdrawal (appType 3).

CEB792 (汇总结果单) comes from customs like a tax bill (gateway.taxbills): taken at ``POST /v1/receipts`` (or the
inbox), each SummaryResult stored as a receipt record of its message and matched to the summary application whose
CEB702 receipts gave it its sumNo (documents.invt_no holds a CEB701's sumNo, as it holds an inventory's invtNo).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree

from gateway.documents import Document, ParsedMessage, extract
from gateway.errors import Issue
from gateway.keystate import STATE_LAYER, Conflict
from gateway.messages import KEY_SEP, MessageType
from gateway.receipts import RANK_RELEASED, Correlation, ReceiptRecord

CODES: dict[str, str] = {
    "summary.inventory_not_export": "a summary application (CEB701) names the invtNo of an import inventory (CEB621) "
    "the gateway holds: only export inventories are summarised (HTTP 409)",
    "summary.inventory_not_b_type": "a summary application (CEB701) names an export inventory whose statisticsFlag is "
    "A (simplified declaration, 清单核放): only B-type inventories are summarised (HTTP 409)",
    "summary.inventory_withdrawn": "a summary application (CEB701) names an export inventory that was withdrawn "
    "(appType 3) or cancelled (CEB605 concluded by customs) (HTTP 409)",
    "summary.inventory_summarised": "a summary application (CEB701) names an export inventory a live summary "
    "application of the consignor (another key, declared — a temporary save is not —, not withdrawn nor refused) "
    "names already: it would be declared twice "
    "and its VAT refund claimed twice; change or withdraw that application first (HTTP 409)",
    "summary.inventory_named_twice": "two applications of one summary message (CEB701) of one consignor name the "
    "same invtNo (the earlier declared, not a temporary save): it would be declared twice and customs refuses the "
    "later; name it in one of them (HTTP 409, nothing of the message stored)",
    "summary.inventory_unknown": "warning: the gateway holds no export inventory of the application's consignor with "
    "an invtNo the summary application names (declared elsewhere, a typo, or another enterprise's: that is not "
    "disclosed); it is stored and forwarded, customs decides",
    "summary.list_ignored": "warning: a summary application (CEB701) of a period (startTime and endTime) lists "
    "inventories too: customs summarises the period and ignores the list (A.29), and the gateway does not check it",
    "summary.inventory_not_released": "warning: an export inventory the summary application names has not been "
    "released by customs yet (no CEB604 800); it is stored and forwarded, customs decides",
}

#: The codes that refuse the application; the others are warnings in the 202 answer.
REFUSING: frozenset[str] = frozenset({
    "summary.inventory_not_export", "summary.inventory_not_b_type", "summary.inventory_withdrawn",
    "summary.inventory_summarised", "summary.inventory_named_twice",
})  # fmt: skip

#: The inventories (import and export) customs gave one of the invtNos ($1) a summary application names, as their keys
#: stand now (the current version: a withdrawal's tombstone carries no invtNo of its own; a number given before the
#: key was declared anew names nothing), with whether an export one
#: was cancelled (its CEB605 concluded: $2 the concluded rank). Read only for a CEB701: no other path runs it.
HELD_INVENTORIES = """
SELECT v.invt_no, c.message_type, c.ebc_code, c.parties, c.head ->> 'statisticsFlag' AS statistics_flag, c.withdrawn,
       coalesce(c.customs_rank, 0) AS customs_rank, c.key1, c.key2,
       EXISTS (SELECT 1 FROM documents AS x
                WHERE x.message_type = 'CEB605' AND x.is_current AND x.key1 = c.key1
                  AND x.head ->> 'invtNo' = v.invt_no AND x.forward_state = 'receipted'
                  AND x.customs_rank >= $2) AS cancelled
  FROM (SELECT DISTINCT v.invt_no, v.message_type, v.key1, v.key2
          FROM unnest($1::text[]) AS n(no),
               LATERAL (SELECT v.id, v.invt_no, v.ebp_code, v.order_no, v.message_type, v.key1, v.key2
                          FROM documents AS v WHERE v.invt_no = n.no OFFSET 0) AS v
         WHERE v.message_type IN ('CEB603', 'CEB621')
           -- not a number of a declaration before the key was declared anew (appType 1): that one is gone from
           -- customs, the number names nothing live (as gateway.store.READ_STATE's numbered rows); OFFSET 0: a
           -- probe per number, never a join over the table
           AND NOT EXISTS (SELECT 1 FROM documents AS a
                            WHERE a.ebp_code = v.ebp_code AND a.order_no = v.order_no
                              AND a.message_type = v.message_type AND a.key1 = v.key1 AND a.key2 = v.key2
                              AND a.app_type = '1' AND a.id > v.id OFFSET 0)) AS v,
       LATERAL (SELECT c.message_type, c.ebc_code, c.parties, c.head, c.withdrawn, c.customs_rank, c.key1, c.key2
                  FROM documents AS c
                 WHERE c.message_type = v.message_type AND c.key1 = v.key1 AND c.key2 = v.key2 AND c.is_current
                OFFSET 0) AS c
 ORDER BY v.invt_no, c.message_type
"""


#: The live summary applications (CEB701) naming one of the invtNos ($1) in their list (documents_summary_lines_idx,
#: migration 250): of each key the version customs holds — the newest one declared (appStatus 2) customs did not refuse
#: (a refused change or withdrawal leaves it the version before, the last it did not refuse), unless that is
#: a withdrawal. A temporary save (appStatus 1, 暂存) is stored at E-Port and never declared (spec §3.6, A.29):
#: customs does not know it, so it blocks no other application; under a temp-saved change or withdrawal customs still
#: holds the version declared before it (as keystate.temp_saved). Read only for a CEB701: by the pipeline before the
#: store's transaction, and again in it under the invtNos' locks (keystate.LOCK_SUMMARISED).
LIVE_SUMMARIES = """
SELECT n.no AS invt_no, s.key1, s.key2, s.ebc_code, s.parties, s.head ->> 'startTime' AS start_time,
       s.head ->> 'endTime' AS end_time, s.pre_no, s.invt_no AS sum_no, s.forward_state, s.customs_status
  FROM unnest($1::text[]) AS n(no),
       LATERAL (SELECT s.id, s.key1, s.key2, s.ebc_code, s.parties, s.head, s.is_current, s.withdrawn, s.forward_state,
                       s.app_status, s.pre_no, s.invt_no, s.customs_status
                  FROM documents AS s
                 WHERE s.message_type = 'CEB701' AND s.lines @> jsonb_build_array(jsonb_build_object('invtNo', n.no))
                OFFSET 0) AS s
 WHERE s.app_status IS DISTINCT FROM '1' AND NOT s.withdrawn AND s.forward_state <> 'rejected'
   -- no later version declared that customs did not refuse: under a refused change or withdrawal customs holds
   -- the version before (as gateway.taxbills.held_version)
   AND (s.is_current
        OR NOT EXISTS (SELECT 1 FROM documents AS v
                        WHERE v.message_type = 'CEB701' AND v.key1 = s.key1 AND v.key2 = s.key2 AND v.id > s.id
                          AND v.app_status IS DISTINCT FROM '1' AND v.forward_state <> 'rejected' OFFSET 0))
 ORDER BY n.no, s.key1, s.key2
"""


@dataclass(frozen=True, slots=True)
class LiveSummary:
    """A live summary application naming an invtNo (a row of :data:`LIVE_SUMMARIES`)."""

    invt_no: str
    key: tuple[str, str]  # its stored key (agentCode, copNo and msgSeqNo)
    ebc_code: str
    parties: frozenset[str]
    period: bool  # of a period: customs ignores its list, it summarises nothing by it

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> LiveSummary:
        return cls(invt_no=r["invt_no"], key=(r["key1"], r["key2"]), ebc_code=r["ebc_code"] or "",
                   parties=frozenset(r["parties"] or ()),
                   period=bool((r["start_time"] or "").strip() and (r["end_time"] or "").strip()))  # fmt: skip


@dataclass(frozen=True, slots=True)
class HeldInventory:
    """What the gateway holds of an inventory a summary application names (a row of :data:`HELD_INVENTORIES`)."""

    invt_no: str
    message_type: str  # CEB603 (export) or CEB621 (import)
    ebc_code: str
    parties: frozenset[str]  # every enterprise code of its head
    statistics_flag: str
    withdrawn: bool
    cancelled: bool
    customs_rank: int
    key: tuple[str, str]  # its agentCode and copNo (export) or ebcCode and orderNo (import)

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> HeldInventory:
        return cls(invt_no=r["invt_no"], message_type=r["message_type"], ebc_code=r["ebc_code"] or "",
                   parties=frozenset(r["parties"] or ()),
                   statistics_flag=(r["statistics_flag"] or "").strip(), withdrawn=r["withdrawn"],
                   cancelled=r["cancelled"], customs_rank=r["customs_rank"], key=(r["key1"], r["key2"]))  # fmt: skip


def period(doc: Document) -> bool:
    """Whether an application summarises a period (startTime and endTime given): customs ignores its list (A.29)."""
    return bool((doc.head.get("startTime") or "").strip() and (doc.head.get("endTime") or "").strip())


def judged(doc: Document) -> bool:
    """Whether an application is judged by the inventories it names: not a withdrawal (appType 3), which summarises
    nothing — an exporter withdraws an application whatever became of its inventories (one cancelled, most often) —
    nor an application of a period, whose list customs does not read."""
    return (doc.head.get("appType") or "").strip() != "3" and not period(doc)


def named_inventories(docs: Iterable[Document]) -> list[str]:
    """The invtNos the applications judged name, once each, in order."""
    return list(dict.fromkeys(no for doc in docs if judged(doc) for line in doc.lines
                              if (no := (line.get("invtNo") or "").strip())))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Held:
    """What the gateway holds of the invtNos summary applications name: the inventories, and the live applications
    naming them, by invtNo."""

    inventories: Mapping[str, list[HeldInventory]]
    summaries: Mapping[str, list[LiveSummary]]


@dataclass(frozen=True, slots=True)
class Named:
    """What a summary message names (its judged applications' invtNos) and the inventories read of them before the
    store's transaction: it judges the message again in that transaction, under the invtNos' locks
    (keystate.LOCK_SUMMARISED), against the live applications read there (:func:`judge_message`)."""

    invt_nos: tuple[str, ...]
    inventories: Mapping[str, list[HeldInventory]]


def judge_message(msg: ParsedMessage, held: Held, scope: frozenset[str] | None = None) -> list[Issue]:
    """The warnings of a summary message's applications (:func:`judge`); raises Conflict (HTTP 409) with every
    refusing issue of them."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    earlier: dict[tuple[str, str], Document] = {}  # (ebcCode, invtNo) -> the message's first application naming it
    for doc in msg.documents:
        refusing, warned = judge(doc, held, scope)
        errors += refusing
        warnings += warned
        errors += _named_before(doc, earlier, {i.path for i in refusing})
    if errors:
        raise Conflict(errors)
    return warnings


def _named_before(doc: Document, earlier: dict[tuple[str, str], Document], refused: set[str]) -> list[Issue]:
    """The invtNos an application names that an earlier application of its message (of the same consignor) names:
    each is judged only against the applications stored, so without this both would be stored and customs would
    refuse the later. As against a stored one, the earlier counts when declared (a temporary save, appStatus 1, is
    not: customs never sees it); the same invtNo twice in one application is a rule (rule.summary_duplicate_inventory).
    ``earlier`` is updated with what this application names; a line refused already (``refused``) is not again, nor
    does it take the invtNo from a later application."""
    if not judged(doc):
        return []
    ebc = (doc.head.get("ebcCode") or "").strip()
    errors: list[Issue] = []
    mine: dict[tuple[str, str], Document] = {}
    for i, line in enumerate(doc.lines):
        no = (line.get("invtNo") or "").strip()
        if not no:
            continue
        first = earlier.get((ebc, no))
        path = doc.line_path(i, "invtNo")
        if path in refused:  # refused already (by a stored application, say): it takes the inventory from none
            continue
        if first is not None:
            shown = ", ".join(f"{n} {v.strip()}" for n, v in zip(first.type.keys, first.keys, strict=True))
            errors.append(Issue(STATE_LAYER, "summary.inventory_named_twice", path,
                                f"invtNo {no} is named by {first.path} ({shown}) of this message already: "
                                "summarised twice it would be declared twice; name it in one application"))
        elif (doc.head.get("appStatus") or "").strip() != "1":  # a temporary save blocks nothing: customs never sees it
            mine.setdefault((ebc, no), doc)
    for k, d in mine.items():
        earlier.setdefault(k, d)
    return errors


def judge(doc: Document, held: Held, scope: frozenset[str] | None = None) -> tuple[list[Issue], list[Issue]]:
    """(refusing issues, warnings) of one summary application against the inventories the gateway holds by invtNo.

    Only the applicant's inventories are judged: of the application's consignor (an import one, of its agentCode or
    ebcCode) and, for a submitter's key, carrying one of ``scope``, the key's codes (the application's ebcCode is
    the submitter's to write); another enterprise's answers as one the gateway does not hold."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    if not judged(doc):
        if period(doc) and any((line.get("invtNo") or "").strip() for line in doc.lines):
            warnings.append(Issue(STATE_LAYER, "summary.list_ignored", doc.field_path("startTime"),
                                  "startTime and endTime are given: customs summarises the period and ignores the "
                                  "inventories listed (A.29); they are not checked"))
        return errors, warnings
    ebc = (doc.head.get("ebcCode") or "").strip()
    own = doc.type.stored_key([v.strip() for v in doc.keys])  # a change of the application names its own again
    applicant = {c for f in ("agentCode", "ebcCode") if (c := (doc.head.get(f) or "").strip())}
    for i, line in enumerate(doc.lines):
        no = (line.get("invtNo") or "").strip()
        if not no:
            continue
        path = doc.line_path(i, "invtNo")
        other = next((s for s in held.summaries.get(no, []) if s.key != own and not s.period and s.ebc_code == ebc
                      and (scope is None or not scope.isdisjoint(s.parties))), None)  # fmt: skip
        twice = None if other is None else Issue(
            STATE_LAYER, "summary.inventory_summarised", path,
            f"invtNo {no} is named by the live summary application {'/'.join(doc.type.key_values(other.key))} "
            "already: summarised twice it would be declared twice; change or withdraw that one")  # fmt: skip
        found = held.inventories.get(no, [])
        found = [h for h in found if scope is None or not scope.isdisjoint(h.parties)]
        exports = [h for h in found if h.message_type == "CEB603" and h.ebc_code == ebc]
        imports = [h for h in found if h.message_type == "CEB621" and not applicant.isdisjoint(h.parties)]
        if not exports:
            if imports:
                errors.append(Issue(STATE_LAYER, "summary.inventory_not_export", path,
                                    f"invtNo {no} is an import inventory's (CEB621 ebcCode {imports[0].ebc_code}, "
                                    f"orderNo {imports[0].key[1]}); only export inventories are summarised"))
            elif twice is not None:  # the consignor's own application, though the gateway holds no such inventory
                errors.append(twice)
            else:
                warnings.append(Issue(STATE_LAYER, "summary.inventory_unknown", path,
                                      f"the gateway holds no export inventory of consignor {ebc} with invtNo {no}; "
                                      "customs will judge it"))
            continue
        inv = exports[0]
        named = f"the export inventory {inv.key[0]}/{inv.key[1]} (invtNo {no})"
        if inv.withdrawn or inv.cancelled:
            errors.append(Issue(STATE_LAYER, "summary.inventory_withdrawn", path,
                                f"{named} was {'withdrawn' if inv.withdrawn else 'cancelled (CEB605 concluded)'}"))
        elif twice is not None:
            errors.append(twice)
        elif inv.statistics_flag != "B":
            errors.append(Issue(STATE_LAYER, "summary.inventory_not_b_type", path,
                                f"{named} has statisticsFlag {inv.statistics_flag or '(none)'}: a simplified "
                                "declaration (A) is not summarised, only B"))
        elif inv.customs_rank < RANK_RELEASED:
            warnings.append(Issue(STATE_LAYER, "summary.inventory_not_released", path,
                                  f"{named} is not released by customs yet"))
    return errors, warnings


def pending(inventory: HeldInventory, live: Iterable[LiveSummary]) -> bool:
    """Whether a consignor's export inventory awaits its summary declaration: B-type, released, neither withdrawn nor
    cancelled, and named by no live application of its consignor (one of a period names nothing by its list) — an
    application naming it would be taken with neither a refusal nor a warning (:func:`judge`)."""
    return (inventory.message_type == "CEB603" and inventory.statistics_flag == "B" and not inventory.withdrawn
            and not inventory.cancelled and inventory.customs_rank >= RANK_RELEASED
            and not any(s.ebc_code == inventory.ebc_code and not s.period for s in live))  # fmt: skip


#: The candidates of a consignor's inventories awaiting their summary ($3 its ebcCode), newest first: $2 of those with
#: an id below $1 — its current B-type export inventories customs gave an invtNo and released, not withdrawn
#: (documents_b_type_inventories_idx, migration 340). Whether one is cancelled or named by a live application is
#: :func:`pending`'s to say, from HELD_INVENTORIES and LIVE_SUMMARIES, as a summary application is judged.
_CANDIDATES = f"""
SELECT d.id, d.invt_no, d.key1, d.key2, d.ebc_code, d.ebp_code, d.order_no, d.logistics_no,
       d.head ->> 'ieDate' AS ie_date, d.customs_return_time, d.head ->> 'customsCode' AS customs_code,
       d.head ->> 'portCode' AS port_code, d.head ->> 'tradeMode' AS trade_mode, d.head ->> 'country' AS country
  FROM documents AS d
 WHERE d.message_type = 'CEB603' AND d.invt_no IS NOT NULL AND (d.head ->> 'statisticsFlag') = 'B'
   AND {{consignor}}d.id < $1
   AND d.is_current AND NOT d.withdrawn AND d.customs_rank >= {RANK_RELEASED}
 ORDER BY d.id DESC LIMIT $2
"""
PENDING_CANDIDATES = _CANDIDATES.format(consignor="d.ebc_code = $3 AND ")
#: The same across every consignor (no $3), for the bonded zone's operators (documents_b_type_inventories_all_idx,
#: migration 360). Two statements rather than one with an optional ebcCode: each keeps its own index in its plan.
PENDING_CANDIDATES_ALL = _CANDIDATES.format(consignor="")


# --- customs' summary results (CEB792) --------------------------------------------------------------------

RESULT_TYPES = frozenset({"CEB792"})
_APPLICATION = "CEB701"
#: The enterprise codes a result names that its application's head carries by the same names: a result is matched
#: only to an application that agrees with every one (the receipts' rule, gateway.receipts.PARTY_FIELDS).
PARTY_FIELDS = ("agentCode", "ebcCode", "declAgentCode")
_OWN_FIELDS = frozenset({"guid", "opDate", "decState", "note"})  # the record's own columns, not keys
ITEMS = "items"  # the key holding a result's SummaryResultList lines


def status_name(status: str | None) -> str | None:
    """decState is customs' declaration status (its values are customs', A.31): shown as given."""
    return None if status is None else f"declaration status {status.strip()}"


def records(root: etree._Element, mtype: MessageType) -> list[ReceiptRecord]:
    """Every SummaryResult of a parsed CEB792 as a receipt record: decState as its returnStatus, opDate as its
    returnTime, the note as its returnInfo, every other head field a key, and the inventory items that went into
    the declaration under ``items`` (invtNo, logisticsNo, gseqno, gnum, gcode each)."""
    out = []
    for doc in extract(root, mtype).documents:
        head = {name: value.strip() for name, value in doc.head.items()}
        keys: dict[str, Any] = {n: v for n, v in head.items() if n not in _OWN_FIELDS and v}
        keys[ITEMS] = [{n: v.strip() for n, v in line.items()} for line in doc.lines]
        out.append(ReceiptRecord(
            message_type=mtype.code, root_guid=root.get("guid", ""), index=doc.index, guid=head.get("guid", ""),
            keys=keys, return_status=head.get("decState", ""), return_time=head.get("opDate", ""),
            return_info=doc.head.get("note", ""), path=doc.path,
        ))  # fmt: skip
    return out


def correlation(record: ReceiptRecord) -> Correlation:
    """How to find the application of a result: the sumNo its CEB702 receipts gave it (documents.invt_no), with every
    party the result names in agreement (customs made the result; it echoes nothing else of the application)."""
    parties = tuple((f, v) for f in PARTY_FIELDS if (v := record.keys.get(f)))
    return Correlation(_APPLICATION, "", parties=parties, invt_no=record.keys.get("sumNo") or None)


def result_view(r: Mapping[str, Any]) -> dict[str, Any]:
    """A stored CEB792 record (a ``receipts`` row as the views give it) as the result an operator reads."""
    keys = dict(r.get("keys") or {})
    return {
        "sumNo": keys.get("sumNo"), "declSeqNo": keys.get("declSeqNo"), "entryId": keys.get("entryId"),
        "decTmpNo": keys.get("decTmpNo"), "decPreNo": keys.get("decPreNo"), "decState": r.get("return_status"),
        "opDate": r.get("return_time"), "customsCode": keys.get("customsCode"),
        "grossWeight": keys.get("grossWeight"), "netWeight": keys.get("netWeight"),
        "msgCount": keys.get("msgCount"), "msgSeqNo": keys.get("msgSeqNo"), "note": r.get("return_info") or None,
        "items": keys.get(ITEMS, []), "received_at": r.get("received_at"), "guid": r.get("doc_guid"),
    }  # fmt: skip


#: Customs' summary results (CEB792 records) listing items of the inventory $1 (an invtNo), oldest first
#: (receipts_summary_items_idx, migration 320). Matched to an application or not: customs says what it declared.
RESULTS_OF_INVENTORY = """
SELECT r.id, r.keys, r.return_status, r.return_time, r.return_info, r.received_at, r.doc_guid
  FROM receipts AS r
 WHERE r.message_type = 'CEB792' AND (r.keys -> 'items') @> jsonb_build_array(jsonb_build_object('invtNo', $1::text))
 ORDER BY r.id
"""


def inventory_summary(
    invt_no: str | None, released: bool, live: Iterable[Mapping[str, Any]], results: Iterable[Mapping[str, Any]],
    *, cancelled: bool = False,
) -> dict[str, Any]:
    """What became of a B-type export inventory in the summary declaration (汇总申报), for its shipment's view:
    ``applications``, the live summary applications naming its invtNo (:data:`LIVE_SUMMARIES` rows: key, preNo, sumNo,
    forward state, customs status); ``declarations``, each customs declaration its items went into (by declSeqNo:
    entryId, decState, opDate, sumNo as the newest of its :data:`RESULTS_OF_INVENTORY` records says) with those items
    only (gnum → gseqno, as its records listed them) — a declaration consolidates many consignors' parcels; and
    ``state``: ``declared``
    (a declaration holds its items), ``cancelled`` (``cancelled``: its CEB605 concluded, it is void and not to be
    summarised — an application naming it is to be withdrawn or changed), ``applied`` (an application names it, no
    result yet), ``awaiting`` (released, named by no application: the consignor's to summarise) or
    ``not_released``."""
    applications = []
    for r in live:
        cop_no, _, seq = str(r["key2"]).partition(KEY_SEP)
        applications.append({"agentCode": r["key1"], "copNo": cop_no, "msgSeqNo": seq or None, "preNo": r["pre_no"],
                             "sumNo": r["sum_no"], "forward_state": r["forward_state"],
                             "customs_status": r["customs_status"]})  # fmt: skip
    # by declaration (declSeqNo): its status as the newest record says (decState moves), its items as every record
    # listed them (a result may come in several messages, msgCount / msgSeqNo, and again)
    by_declaration: dict[str, dict[str, Any]] = {}
    items: dict[str, dict[str, dict[str, Any]]] = {}  # by declaration, by gnum: an item listed again is the same one
    for r in results:
        view = result_view(r)
        key = view["declSeqNo"] or view["entryId"] or str(r["id"])
        for i in view["items"]:
            if i.get("invtNo") == invt_no:
                items.setdefault(key, {})[str(i.get("gnum"))] = {n: i.get(n) for n in ("gnum", "gseqno", "logisticsNo")}
        by_declaration[key] = view
    declarations = [{**{k: v for k, v in d.items() if k in _DECLARATION_FIELDS},
                     "items": sorted(items.get(key, {}).values(), key=lambda i: _number(i["gnum"]))}
                    for key, d in by_declaration.items()]  # fmt: skip
    state = ("declared" if declarations else "cancelled" if cancelled else "applied" if applications
             else "awaiting" if released else "not_released")  # fmt: skip
    return {"invtNo": invt_no, "state": state, "applications": applications, "declarations": declarations}


#: What a shipment's view shows of a declaration its inventory's items went into.
_DECLARATION_FIELDS = ("sumNo", "declSeqNo", "entryId", "decState", "opDate", "customsCode", "received_at")


def _number(text: Any) -> tuple[int, str]:
    """A number as written (msgSeqNo, gnum) as a sort key: in numeric order, anything else after."""
    value = str(text or "")
    return (int(value), value) if value.isascii() and value.isdigit() else (1 << 31, value)


def _part_number(d: Mapping[str, Any]) -> tuple[int, str]:
    return _number((d.get("keys") or {}).get("msgSeqNo"))


def add_results(view: dict[str, Any]) -> dict[str, Any]:
    """A summary application's view (the versions of its parts with their forwarding,
    gateway.outbox.Outbox.shipment_forwarding) with ``results``: the CEB792 records move out of their version's
    ``receipts``, newest declaration last; each part's numbers and status (its current version's) are listed in
    ``parts`` by msgSeqNo, and the first part's are lifted beside them (an application not split has one part).

    Each part lists the results of the sumNo any of its versions' CEB702 gave it (``results``, without the items,
    which ``results`` beside the parts holds): a result names its application by sumNo alone (A.31; its msgCount
    and msgSeqNo number the result's own messages, not the application's parts) and customs declares the application
    as a whole, so parts sharing one sumNo share its results, whichever version the record matched."""
    results: list[dict[str, Any]] = []
    sum_nos: dict[str, set[str]] = {}  # msgSeqNo -> the sumNos of the part's versions
    for d in view.get("documents", []):
        if d.get("sum_no"):
            sum_nos.setdefault(_part_number(d)[1], set()).add(d["sum_no"])
        mine = [r for r in d.get("receipts", []) if r.get("message_type") in RESULT_TYPES]
        if mine:
            results += [result_view(r) for r in mine]
            d["receipts"] = [r for r in d["receipts"] if r.get("message_type") not in RESULT_TYPES]
    current = sorted((d for d in view.get("documents", []) if d.get("is_current")), key=_part_number)
    view["parts"] = [
        {"msgSeqNo": (d.get("keys") or {}).get("msgSeqNo"), "msgCount": (d.get("head") or {}).get("msgCount"),
         "preNo": d.get("pre_no"), "sumNo": d.get("sum_no"), "customs": d.get("customs"),
         "forward_state": d.get("forward_state"), "withdrawn": d.get("withdrawn"),
         "results": [{k: v for k, v in r.items() if k != ITEMS} for r in results
                     if r["sumNo"] in sum_nos.get(_part_number(d)[1], ())]}
        for d in current
    ]  # fmt: skip
    if current:
        first = current[0]
        view.update(preNo=first.get("pre_no"), sumNo=first.get("sum_no"), customs=first.get("customs"),
                    forward_state=first.get("forward_state"), withdrawn=first.get("withdrawn"))  # fmt: skip
    view["results"] = results
    view["declarations"] = sorted({r["entryId"] or r["declSeqNo"] for r in results if r["entryId"] or r["declSeqNo"]})
    return view


__all__ = [
    "CODES", "HELD_INVENTORIES", "LIVE_SUMMARIES", "PENDING_CANDIDATES", "PENDING_CANDIDATES_ALL", "REFUSING",
    "RESULTS_OF_INVENTORY", "RESULT_TYPES", "Held", "HeldInventory", "LiveSummary", "Named", "add_results",
    "correlation", "inventory_summary", "judge", "judge_message", "judged", "named_inventories", "pending", "period",
    "records", "result_view", "status_name",
]  # fmt: skip
