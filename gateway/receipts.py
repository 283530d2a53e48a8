"""Customs receipts (spec §5, §8.4): read them, rank their statuses, correlate them, apply them monotonically.

Pure: no I/O. The store (:meth:`gateway.store.Store.apply_receipts`) persists every receipt and applies
the :class:`Decision` this module makes; the HTTP endpoint and the folder transport's inbox poller both
go through :func:`read`.

Statuses are ranked (:data:`RANKS`) so that a document's customs state only moves forward::

    1 stored < 2 declaring < 3 delivered < 120 accepted < 400 waiting for the goods < 300 manual review
      < 600 suspended < 500 inspection < 399 concluded < 501..599 detention < 100 rejected (and data errors)
      < 700 returned < 800 released < 899 closed

A receipt applies when its (rank, returnTime, status) is greater than the state in force; a lower one, or
an equal one arriving again, is kept but changes nothing (outcome ``stale``). The state is therefore the
maximum over the receipts received, whatever order or how many times they arrive.

Codes that are not a position on that ladder are classified instead (spec §5.3/§5.4):

* ``4`` (delivery to customs failed) and the system-exception codes: **transient** — the message is sent
  again (same guid, same CopMsgId), the state does not move;
* duplicates ("already there", e.g. −301010): **duplicate** — counted as accepted (rank of 120), not resent;
* "older message ignored" (e.g. −301014): **older_ignored** — a data error; a newer appTime is needed;
  except in answer to a re-send (the same guid and appTime again): then customs holds that version already, and
  the code counts as accepted, as a duplicate does (spec §5.4: reconcile rather than resend);
* every other negative code: **data_error** — the document is rejected with returnInfo;
* unknown positive codes (the placeholders 18, 23 of the official samples …): **unknown** — kept raw, never
  move the state.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lxml import etree

from gateway import rules
from gateway.documents import extract
from gateway.errors import Issue, Layer, MessageRejected
from gateway.messages import BY_CODE, Kind, MessageType
from gateway.xmlsafe import DEFAULT_MAX_BYTES, parse_message, parse_xml

CODES: dict[str, str] = {
    "rule.not_a_receipt": "POST /v1/receipts takes customs receipts (import CEB312/412/512/514/622/624/626/712/900, "
    "export CEB304/404/506/508/510/604/606/608/702/214/216), tax bills (CEB816/818) and summary results (CEB792) only",
    "rule.receipt_envelope_type": "the DxpMsg MsgType names another message than the receipt it carries",
}

# --- statuses ------------------------------------------------------------------------------------------


class Verdict(StrEnum):
    """What a returnStatus means for the document it answers."""

    PROGRESS = "progress"  # a step on the ladder (1, 2, 3, 120, 400, 300, 600, 500, 399, 501-599, 700, 800, 899)
    REJECTED = "rejected"  # 100: customs rejected it (returnInfo says why)
    DATA_ERROR = "data_error"  # a negative business / format code: rejected
    OLDER_IGNORED = "older_ignored"  # "message older than the stored one" codes: rejected, needs a newer appTime
    DUPLICATE = "duplicate"  # "already there": counts as accepted, is not resent
    TRANSIENT = "transient"  # 4 and system exceptions: resend, state unchanged
    UNKNOWN = "unknown"  # a code in no table: kept raw, state unchanged


#: Rank of each status on the ladder (higher = further). 500 (inspection) comes before 399 (concluded), as in the
#: spec's inventory sequence 120 → (300 / 500) → 399 → 800; 501..599 (detained) share one rank above it. 400
#: (accepted, waiting for the goods, [C]) and 600 (suspended, CEB214) are steps of customs' processing after the
#: acceptance (120) that a conclusion, release or rejection follows: ranked between, so that those still move on.
RANKS: dict[str, int] = {
    "1": 10,
    "2": 20,
    "3": 30,
    "120": 40,
    "400": 45,
    "300": 50,
    "600": 52,
    "500": 55,
    "399": 60,
    "5xx": 70,
    "100": 80,
    "700": 90,
    "800": 100,
    "899": 110,
}
RANK_DECLARING = RANKS["2"]  # the lowest rank that counts as "taken by E-Port" (spec §6.7 step 2)
RANK_ACCEPTED = RANKS["120"]
RANK_REJECTED = RANKS["100"]
RANK_CONCLUDED = RANKS["399"]  # 海关审结: for a cancellation (CEB624), the inventory is cancelled
RANK_RELEASED = RANKS["800"]

#: Duplicates: the document is already on file at customs (spec §5.3, [V] and [C] codes). Not one of a site delivery's
#: −800000…−800006 (CEB712): the spec gives that range's meanings (duplicate / older message / over limit) without
#: saying which code is which, but for −800005 (older, §6.5); taken as "already there", an over-limit refusal would
#: show the delivery accepted. They reject it with customs' returnInfo, as any negative code in no table does.
DUPLICATE_CODES = frozenset({"-301010", "-401007", "-504012", "-504015", "-505012", "-621004"})
#: Codes seen with two meanings and in no official table: -621041 is "cannot add again within a short time" or
#: "inventory already declared" ([C] only, spec §5.3). Neither accepted nor rejected on such a word: kept raw, the
#: state unchanged (UNKNOWN), so the document stays awaited and the watchdog brings it to an operator.
AMBIGUOUS_CODES = frozenset({"-621041"})
#: "Older than the stored one, ignored" (spec §5.3, §6.5).
OLDER_IGNORED_CODES = frozenset({"-301014", "-401012", "-505016", "-800005", "-621055"})
#: System exceptions worth a resend (spec §5.4 retry guidance).
TRANSIENT_CODES = frozenset({"4", "-301013", "-401011", "-505015", "-621017"})

STATUS_NAMES: dict[str, str] = {
    "1": "stored at E-Port (temporary save)",
    "2": "declaring (taken by E-Port)",
    "3": "delivered to customs",
    "4": "delivery to customs failed",
    "100": "rejected by customs",
    "120": "accepted into the customs database",
    "300": "manual review",
    "399": "examination concluded",
    "400": "accepted, waiting for the goods to arrive",  # [C] only (spec §5.2)
    "500": "inspection",
    "501": "detained: transferred to clearance",
    "502": "detained: transferred to anti-smuggling",
    "503": "detained: transferred to the legal department",
    "505": "handed over",  # 移交: a retail export return's receipt (CEB214), not a detention
    "599": "detained (other)",
    "600": "suspended",  # 挂起 (CEB214)
    "700": "returned abroad",
    "800": "released",
    "899": "closed",
}


def _int(status: str) -> int | None:
    text = status.strip()
    if text.startswith("-"):
        return -int(text[1:]) if text[1:].isascii() and text[1:].isdigit() else None
    return int(text) if text.isascii() and text.isdigit() else None


def normalise(status: str) -> str:
    """The status as customs' numeric text without padding (``"0800"`` → ``"800"``); unparseable text stays."""
    n = _int(status or "")
    return str(n) if n is not None else (status or "").strip()


def classify(status: str) -> Verdict:
    s = normalise(status)
    n = _int(s)
    if s in TRANSIENT_CODES:
        return Verdict.TRANSIENT
    if s in DUPLICATE_CODES:
        return Verdict.DUPLICATE
    if s in OLDER_IGNORED_CODES:
        return Verdict.OLDER_IGNORED
    if s in AMBIGUOUS_CODES:
        return Verdict.UNKNOWN
    if n is not None and n < 0:
        if 3000 <= -n <= 3999:  # a DXP system code sent with a minus sign: transient like §5.4's 3xxx
            return Verdict.TRANSIENT
        return Verdict.DATA_ERROR
    if s == "100":
        return Verdict.REJECTED
    if rank(s) is not None:
        return Verdict.PROGRESS
    return Verdict.UNKNOWN


def rank(status: str) -> int | None:
    """Position on the ladder; None for statuses that never move the state (transient, unknown)."""
    s = normalise(status)
    n = _int(s)
    if s in RANKS:
        return RANKS[s]
    if n is not None and 500 <= n <= 599:
        return RANKS["5xx"]
    if s in DUPLICATE_CODES:
        return RANK_ACCEPTED
    if s in TRANSIENT_CODES or s in AMBIGUOUS_CODES:
        return None
    if n is not None and n < 0:
        return None if 3000 <= -n <= 3999 else RANK_REJECTED
    return None


def is_rejection(status: str) -> bool:
    return classify(status) in (Verdict.REJECTED, Verdict.DATA_ERROR, Verdict.OLDER_IGNORED)


def status_name(status: str | None) -> str | None:
    """A readable name: the ladder's name, or the classification of a negative code."""
    if status is None:
        return None
    s = normalise(status)
    if s in STATUS_NAMES:
        return STATUS_NAMES[s]
    n = _int(s)
    if n is not None and 500 <= n <= 599:
        return "detained"
    verdict = classify(s)
    return {
        Verdict.DUPLICATE: "already on file at customs (duplicate)",
        Verdict.OLDER_IGNORED: "ignored by customs: older than the stored message (send a newer appTime)",
        Verdict.TRANSIENT: "customs system exception (will be resent)",
        Verdict.DATA_ERROR: "data error (rejected)",
        Verdict.UNKNOWN: "unknown status",
    }.get(verdict, verdict.value)


# --- records -------------------------------------------------------------------------------------------

_TEXT_FIELDS = ("guid", "returnStatus", "returnTime", "returnInfo")
_BULKY_FIELDS = frozenset({"oriBizMessage"})  # the whole original message of a CEB900: not a key


@dataclass(frozen=True)
class ReceiptRecord:
    """One return element of a receipt message."""

    message_type: str  # CEB312 ...
    root_guid: str
    index: int  # 1-based position of the return element
    guid: str  # the element's guid (usually the declared document's, echoed)
    keys: Mapping[str, str]  # business keys it carries (every field but guid/status/time/info)
    return_status: str
    return_time: str
    return_info: str
    path: str

    @property
    def declared_type(self) -> str | None:
        """Code of the declaration this receipt answers (None for CEB900, which answers a whole message)."""
        mtype = BY_CODE.get(self.message_type)
        return mtype.receipt_for if mtype is not None else None

    @property
    def verdict(self) -> Verdict:
        return classify(self.return_status)

    @property
    def rank(self) -> int | None:
        return rank(self.return_status)

    def dedupe_key(self) -> str:
        """Identity of a receipt (spec §8.4): type, business keys, returnStatus, returnTime — as a digest."""
        body = json.dumps(
            [self.message_type, sorted(self.keys.items()), normalise(self.return_status), self.return_time.strip()],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    @property
    def info_guid(self) -> str | None:
        """The declared document's guid as returnInfo names it in brackets ("新增申报成功[<guid>]", spec §5.1), when
        it names one other than the receipt's own guid."""
        m = _BRACKETED_GUID.search(self.return_info or "")
        return m.group(1) if m is not None and m.group(1) != self.guid else None

    def correlation(self) -> Correlation:
        k = self.keys
        declared = self.declared_type
        code = self.message_type
        if code == "CEB900":
            return Correlation(declared, self.guid, ori_cop_msg_id=k.get("oriCopMsgId") or None)
        mtype = BY_CODE.get(declared) if declared else None
        keys: tuple[str, str] | None = None
        if mtype is not None and all(k.get(name) for name in mtype.keys):
            keys = mtype.stored_key([k[name] for name in mtype.keys])
        parties = tuple((f, v) for f in PARTY_FIELDS if (v := k.get(f)))
        return Correlation(
            declared,
            self.guid,
            keys=keys,
            cop_no=k.get("copNo") or None,
            parties=parties,
            ebc_code=k.get("ebcCode") or None,
            pre_no=k.get("preNo") or None,
            invt_no=None if declared in SHARED_INVT_NO else k.get(NUMBER_FIELDS.get(declared or "", "invtNo")) or None,
            info_guid=self.info_guid,
        )


#: A guid (36 characters, spec §2.1) in brackets, as E-Port writes the declared document's into returnInfo.
_BRACKETED_GUID = re.compile(r"\[([^\[\]\s]{36})\]")


#: The declared types whose receipts' invtNo is the number of the inventory the document names, shared by every
#: document of that type naming it: a retail export return (CEB213; CEB214's invtNo, A.33) is one of several of its
#: inventory, told apart by its key alone (agentCode + coElNo, §5.1). That number finds no return and is not
#: learned as one's own. (An import return, CEB625, is keyed by its inventory's key: one per inventory.)
SHARED_INVT_NO = frozenset({"CEB213"})

#: The number customs gives a declaration of these types in its receipts, kept where an inventory's invtNo is
#: (documents.invt_no: learned, and a later receipt naming it alone finds the document) and named so in the views
#: (gateway.outbox.shipment_forwarding): a summary application's sumNo (CEB702), a site delivery's warehouse-entry
#: number rkdNo (入库单编号, CEB712, spec A.12).
NUMBER_FIELDS: dict[str, str] = {"CEB701": "sumNo", "CEB711": "rkdNo"}

#: The enterprise fields a receipt may carry that its declared document carries too (in its head, by the same
#: name): a document found by anything but its business key must agree with every one the receipt names.
PARTY_FIELDS = ("ebpCode", "ebcCode", "agentCode", "operatorCode")


@dataclass(frozen=True)
class Correlation:
    """How to find the declared document a receipt answers, most reliable first (spec §5.1).

    1. the declaration's business ``keys`` (312: ebpCode+orderNo [+ebcCode], 412: payCode+payTransactionId,
       512/514: logisticsCode+logisticsNo), when the receipt carries them all: the current document;
    2. else (622/624/626/712) the echoed ``guid`` = a document's head guid (of the declared type): that version;
    3. ``copNo``, the enterprise's own number (unique per enterprise only, spec §2.3): the current version of its
       document first (a change's receipts carry the first version's numbers); with no party to tell two
       documents apart, only when one document has it;
    4. ``preNo`` / ``invtNo``, the numbers E-Port and customs gave, once an earlier receipt taught them (no
       ``invtNo`` for the types of :data:`SHARED_INVT_NO`).
    Steps 2–4 take a document only when it agrees with every party the receipt names (:data:`PARTY_FIELDS`): two
    enterprises may share a copNo, a customs broker, even a guid.
    5. CEB900: ``oriCopMsgId`` → every document of the message sent with that CopMsgId.

    The receipt's guid is E-Port's own by the spec (the official samples echo the declared one): when it names no
    document, the guid returnInfo names in brackets (``info_guid``) stands in for it, in 1 (which version of the
    key) and 2.
    """

    declared_type: str | None
    guid: str
    keys: tuple[str, str] | None = None
    cop_no: str | None = None
    parties: tuple[tuple[str, str], ...] = ()  # (field, value) of PARTY_FIELDS the receipt carries
    ebc_code: str | None = None
    pre_no: str | None = None
    invt_no: str | None = None
    ori_cop_msg_id: str | None = None
    info_guid: str | None = None


def records(root: etree._Element, mtype: MessageType) -> list[ReceiptRecord]:
    """Every return element of a parsed receipt message."""
    parsed = extract(root, mtype)
    out = []
    for doc in parsed.documents:
        head = {name: value.strip() for name, value in doc.head.items()}
        keys = {n: v for n, v in head.items() if n not in _TEXT_FIELDS and n not in _BULKY_FIELDS and v}
        out.append(
            ReceiptRecord(
                message_type=mtype.code,
                root_guid=parsed.guid,
                index=doc.index,
                guid=head.get("guid", ""),
                keys=keys,
                return_status=normalise(head.get("returnStatus", "")),
                return_time=head.get("returnTime", ""),
                return_info=doc.head.get("returnInfo", ""),
                path=doc.path,
            )
        )
    return out


# --- intake --------------------------------------------------------------------------------------------

RECEIPT_KINDS = frozenset({Kind.RECEIPT, Kind.FORMAT_RECEIPT})
#: Customs' tax bills and their status changes come in the same way (gateway.taxbills).
TAX_KINDS = frozenset({Kind.TAX, Kind.TAX_STATUS})
#: And customs' summary results (CEB792, gateway.summary).
RESULT_KINDS = frozenset({Kind.SUMMARY_RESULT})


@dataclass(frozen=True)
class Intake:
    """A receipt message read from the wire: its records, the exact CEB bytes and the envelope's CopMsgId."""

    message_type: str
    root_guid: str
    records: list[ReceiptRecord]
    raw_xml: str
    cop_msg_id: str | None = None  # TransInfo/CopMsgId when it came in a DxpMsg


def read(body: bytes, schemas: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Intake:
    """Parse safely (bare or in a DxpMsg), check it is a receipt or a tax bill, validate it; raises MessageRejected.

    ``schemas`` is a :class:`gateway.schema.SchemaSet` (or anything with ``validate(root, mtype)`` and
    ``validate_dxp(root)``); None skips the XSD checks.
    """
    from adapters import dxp  # local: adapters imports gateway modules
    from gateway import summary, taxbills  # local: they import this module

    cop_msg_id = None
    envelope_type = None
    ceb = body
    if dxp.is_dxp(body):
        envelope = parse_xml(body, max_bytes * 2)  # base64 inflates the receipt by a third
        if schemas is not None:
            issues = schemas.validate_dxp(envelope)
            if issues:
                raise MessageRejected(issues)
        env = dxp.read_envelope(envelope)
        ceb, cop_msg_id, envelope_type = env.data, env.cop_msg_id, env.msg_type
    root, mtype = parse_message(ceb, max_bytes)
    if mtype.kind not in RECEIPT_KINDS | TAX_KINDS | RESULT_KINDS:
        raise MessageRejected(
            [Issue(Layer.RULE, "rule.not_a_receipt", f"/{mtype.root}",
                   f"{mtype.code} is not a receipt; declarations go to POST /v1/messages")],
            mtype.code,
        )  # fmt: skip
    if envelope_type and dxp.msg_type_name(envelope_type) != mtype.root:
        raise MessageRejected(
            [Issue(Layer.RULE, "rule.receipt_envelope_type", "/DxpMsg/TransInfo/MsgType",
                   f"MsgType {envelope_type} but the Data carries a {mtype.root}")],
            mtype.code,
        )  # fmt: skip
    if schemas is not None:
        issues = schemas.validate(root, mtype)
        if issues:
            raise MessageRejected(issues, mtype.code)
    if mtype.kind in TAX_KINDS | RESULT_KINDS:
        # a bill is folded by its status and amounts, a result shown by its numbers: one in no table must not come in
        issues = rules.check(extract(root, mtype))
    else:
        # a receipt's status and time order its document's customs state: a time that is none would outrank every
        # genuine receipt after it (stale), a status that is no number be kept as an unknown one
        issues = rules.check_receipt_form(extract(root, mtype))
    if issues:
        raise MessageRejected(issues, mtype.code)
    if mtype.kind in TAX_KINDS:
        recs = taxbills.records(root, mtype)
    elif mtype.kind in RESULT_KINDS:
        recs = summary.records(root, mtype)
    else:
        recs = records(root, mtype)
    return Intake(
        message_type=mtype.code,
        root_guid=root.get("guid", ""),
        records=recs,
        raw_xml=ceb.decode("utf-8", errors="replace"),
        cop_msg_id=cop_msg_id,
    )


# --- applying ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomsState:
    """The receipt in force for a document: raw status, its rank, returnTime and returnInfo."""

    status: str | None = None
    rank: int | None = None
    return_time: str | None = None
    info: str | None = None

    @property
    def order_key(self) -> tuple[int, str, str]:
        return (self.rank if self.rank is not None else -1, self.return_time or "", self.status or "")

    @property
    def rejected(self) -> bool:
        # a refusal code ranked as accepted answered a re-send: customs has it on file (see apply)
        return self.status is not None and is_rejection(self.status) and self.rank != RANK_ACCEPTED

    @property
    def usable(self) -> bool:
        """Taken by E-Port and not rejected (spec §6.7 step 2): what a held inventory waits for."""
        return self.rank is not None and self.rank >= RANK_DECLARING and not self.rejected

    @property
    def forward_state(self) -> str | None:
        """documents.forward_state this state implies: None while no receipt moved it."""
        if self.rank is None:
            return None
        return "rejected" if self.rejected else "receipted"


class Outcome(StrEnum):
    APPLIED = "applied"  # the document's customs state moved to this receipt
    STALE = "stale"  # lower or older than the state in force: stored, nothing moved
    TRANSIENT = "transient"  # a resend is due; state unchanged
    UNKNOWN = "unknown_status"  # stored raw, state unchanged
    DUPLICATE = "duplicate"  # the same receipt was already stored (decided by the store)
    UNMATCHED = "unmatched"  # no declared document found (decided by the store)
    # it answers a document sent in a message beside others but not kept (state.ignored_older): nothing moved
    IGNORED_OLDER = "ignored_older"
    # it found a document the gateway has not sent (held, spec §6.7): customs cannot have it, nothing moved
    NOT_SENT = "not_sent"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    state: CustomsState  # the state after the receipt (the current one when nothing moved)
    verdict: Verdict
    resend: bool = False  # send the declaration again (same guid and CopMsgId)
    learned: dict[str, str] = field(default_factory=dict)  # preNo / invtNo the receipt taught

    @property
    def moved(self) -> bool:
        return self.outcome is Outcome.APPLIED


def apply(current: CustomsState | None, receipt: ReceiptRecord, *, resent: bool = False) -> Decision:
    """The monotonic transition of one document's customs state for one receipt. ``resent``: the document was sent
    again (the watchdog, a 4) with its guid and appTime unchanged."""
    current = current or CustomsState()
    verdict = receipt.verdict
    learned = {k: receipt.keys[k] for k in ("preNo", "invtNo") if receipt.keys.get(k)}
    if receipt.declared_type in SHARED_INVT_NO:
        learned.pop("invtNo", None)
    if (number := NUMBER_FIELDS.get(receipt.declared_type or "")) and receipt.keys.get(number):
        learned["invtNo"] = receipt.keys[number]  # customs' own number of the document, kept where an invtNo is
    r = receipt.rank
    if resent and verdict is Verdict.OLDER_IGNORED:
        # The very version sent again is "older than the stored one" only because customs stored it the first
        # time (its receipts lost): already on file, like a duplicate (spec §5.4), not a refusal.
        verdict, r = Verdict.DUPLICATE, RANK_ACCEPTED
    if verdict is Verdict.TRANSIENT:
        # "Delivery failed" matters only while customs has not confirmed anything beyond E-Port's intake.
        resend = current.rank is None or current.rank < RANKS["3"]
        return Decision(Outcome.TRANSIENT, current, verdict, resend=resend, learned=learned)
    if r is None:
        return Decision(Outcome.UNKNOWN, current, verdict, learned=learned)
    candidate = CustomsState(receipt.return_status, r, receipt.return_time.strip(), receipt.return_info)
    if candidate.order_key > current.order_key:
        return Decision(Outcome.APPLIED, candidate, verdict, learned=learned)
    return Decision(Outcome.STALE, current, verdict, learned=learned)


def fold(receipts: list[ReceiptRecord], start: CustomsState | None = None) -> CustomsState:
    """The state after applying ``receipts`` in the given order (what the store does one by one)."""
    state = start or CustomsState()
    for r in receipts:
        state = apply(state, r).state
    return state
