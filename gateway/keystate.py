"""What a message does to the stored state — pure, no I/O (gateway.store reads and writes).

Given the rows the store read for a message (the current document of each of its keys, the live legs
of the shipments it involves, its buyers' tax ledger), :func:`judge` applies the key rules of spec
§6.2 / §5.3 to every document, works out which shipments must be reconciled again, reconciles them
(gateway.reconcile), assesses their inventories (gateway.tax) and returns everything to write, with
the answer to give. It raises :class:`Conflict` when the message must be refused, and returns a
:class:`Defer` when the rows read do not cover everything the message turned out to touch.

Key rules, per document key (MessageType.keys, trimmed):

* appType 1 needs the key free — a current, not withdrawn document is ``state.duplicate`` (customs
  −301010 and kin); after a withdrawal the key may be declared again, by a newer message, and so may a document the
  gateway holds of which customs has nothing (Row.unseen: it replaces it, and only the new one goes);
* appType 2 replaces and appType 3 withdraws the current document when its appTime is strictly newer
  (appTime compares as 14-digit text); an older or equal one changes nothing and is answered
  ``state.ignored_older`` (like −301014); a change or withdrawal of an unknown or withdrawn key is
  ``state.not_found`` (like −301009); a change or withdrawal customs refused changed nothing there: the store makes
  the version before it current again when the receipt comes (gateway.store.restore_refused, :func:`restore`);
  a change or withdrawal of an inventory (CEB621, CEB603) whose current version customs released (800 and above)
  is ``state.inventory_released`` (like −621043): the way back is a cancellation (CEB623, CEB605); a change of a
  document the gateway holds of which customs has nothing is ``state.unsent_change`` (like −621042): declare it anew;
  a withdrawal of it is taken, and the outbox concludes it without sending anything (``state.withdrawn_unsent``);
* the same key twice in one message is ``state.duplicate``; receipts carry no key state.

Shipments (spec §6.2 joins): orders, payments and inventories belong to the shipment (ebpCode,
orderNo). A waybill names an orderNo but no ebpCode, and an orderNo is unique within a platform only: a
waybill is held by the shipments whose inventory names its (logisticsCode, logisticsNo); unless an inventory
of its own orderNo does, also by its orderNo's shipment when one platform alone uses that orderNo. When
several do, it is none of theirs (they report ``recon.waybill_ambiguous``) until an inventory names it. A
waybill held by no keyed shipment sits in a waybill-only shipment ('', orderNo) that goes away once a keyed
shipment takes it. A shipment's legs are its latest live order and payment, its latest live inventory that
still counts at customs (see :func:`void`), else its latest; its waybill is the one its inventory names, else
the latest of the waybills of its orderNo it holds.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from gateway import reconcile as recon
from gateway import tax
from gateway.auth import declarant_codes, document_parties
from gateway.documents import Document, ParsedMessage
from gateway.errors import Issue, Layer
from gateway.messages import BY_CODE, KEY_SEP, MESSAGE_TYPES, SHIPMENT_KINDS, Direction, Kind, MessageType

CODES: dict[str, str] = {
    "state.guid_conflict": "a message with this guid was already accepted with different content",
    "state.duplicate": "a current document with the same business key exists (appType 1); customs: -301010 and kin",
    "state.not_found": "appType 2 (change) or 3 (delete) names a business key with no current document",
    "state.ignored_older": (
        "document not applied: its appTime is not newer than the stored document's (customs: -301014 and kin); "
        "an outcome of an accepted message, not an error"
    ),
    "state.no_inventory": (
        "a cancellation (CEB623) or return (CEB625) names an inventory (ebcCode, orderNo) that is not stored, "
        "was withdrawn, or whose first declaration customs rejected (spec R12); an export cancellation (CEB605) or "
        "retail export return (CEB213) names an invtNo that no stored export inventory of its agentCode and ebcCode "
        "was given by customs (CEB604), or whose inventory was withdrawn, or (a return) whose first declaration "
        "customs rejected"
    ),
    "state.second_inventory": (
        "an inventory for a shipment (ebpCode, orderNo) that has a live inventory under another key (another "
        "ebcCode) that counts at customs (not refused, not cancelled): an order has one inventory; withdraw or "
        "cancel the other first"
    ),
    "state.inventory_held": (
        "a cancellation (CEB623, CEB605) or return (CEB625, CEB213) names an inventory whose first declaration the "
        "gateway still holds (not yet sent to customs, spec §6.7): withdraw the inventory (appType 3) instead"
    ),
    "state.inventory_platform_mismatch": (
        "a cancellation (CEB623) or return (CEB625, or the retail export return CEB213) names an ebpCode other than "
        "that of the inventory (ebcCode + orderNo; invtNo) it names: an inventory declares one platform's order "
        "(ebpCode + orderNo, spec §6.2), and what refers to it names that order (R12)"
    ),
    "state.refund_not_in_inventory": "a return line's gnum is no item of the inventory it returns (spec R12)",
    "state.refund_item_mismatch": "a return line's gcode or unit is not that of the inventory's item its gnum names "
    "(spec A.9, A.32: the item of the original inventory; customs -625209)",
    "state.not_the_inventory": "an import cancellation (CEB623) or return (CEB625) names its inventory by its key "
    "(ebcCode, orderNo) but another invtNo than customs gave it (its CEB622), or another logisticsNo or buyer ID "
    "number than the inventory's (spec R12, A.7, A.9): it describes another parcel",
    "state.return_trade_mode": "a retail export return's tradeMode does not fit the export inventory it returns "
    "(spec A.32): 1261 returns a special-zone (1210) inventory, 9661 any other",
    "state.inventory_cancelled": "a return (CEB625, or a retail export return, CEB213) or a cancellation (CEB623) "
    "names an inventory whose cancellation (CEB623, CEB605) customs concluded: it is void at customs, there is "
    "nothing to return or cancel again",
    "state.inventory_released": "a change (appType 2) or withdrawal (appType 3) of an inventory (CEB621, CEB603) "
    "customs released (a receipt of 800 or above, 放行): customs allows no change or deletion after release (like "
    "-621043); send a cancellation (撤销申请单: CEB623 for an import inventory, CEB605 for an export one) instead",
    "state.inventory_not_released": "a return (CEB625, or a retail export return, CEB213) names an inventory customs "
    "has not released yet (no CEB622 / CEB604 800 for it: still being declared, examined or inspected): there is "
    "nothing to return yet (spec R12, §6.5: a return follows the release); send the return after the release",
    "state.inventory_declared": "a change (appType 2) or withdrawal (appType 3) of an order (CEB311, CEB303) whose "
    "shipment's inventory was declared to customs (sent, or on its way; not held by the gateway, not temp-saved, not "
    "refused nor cancelled by customs): customs no longer takes a change of the order (-301011); withdraw the "
    "inventory (appType 3) or, once released, cancel it (CEB623, CEB605) first",
    "state.refund_exceeds_inventory": "a return line's qty exceeds the inventory item's qty (spec R12, A.9); for a "
    "retail export return, with what the inventory's other live returns take back of that item (A.32)",
    "state.flow_conflict": (
        "an import document for a shipment (ebpCode, orderNo) that has live export legs, or an export document for one "
        "with live import legs: an orderNo is unique within a platform (spec §6.2), and an import and an export "
        "shipment are never reconciled together; withdraw the other flow's legs first"
    ),
    "state.unsent_change": (
        "a change (appType 2) of a document no version of which was sent to customs — the gateway holds it until its "
        "shipment may be declared (spec §6.7), each version alone in its message —: customs takes no change of what it "
        "does not have (-621042); declare it anew instead (appType 1 with a newer appTime, which replaces the held "
        "version here: only the new one goes), or withdraw it (appType 3, concluded here)"
    ),
    "state.withdrawn_unsent": (
        "a withdrawal (appType 3) of a document no version of which was sent to customs — the gateway held it until "
        "its shipment could be declared (spec §6.7) —: concluded by the gateway, nothing is sent to customs (which "
        "never had it: it would refuse the withdrawal, -621042) and the held version is never sent. An outcome of an "
        "accepted message (outcome withdrawn), not an error"
    ),
    "state.recorded_only": (
        "a customs message (a receipt, a tax bill) posted to POST /v1/messages: kept as a record, applied to "
        "nothing; customs receipts are applied at POST /v1/receipts. An outcome of an accepted message, not an error"
    ),
}

# errors.Layer has no "state" member yet; the codes carry the layer in their prefix either way.
STATE_LAYER: Layer = getattr(Layer, "STATE", Layer.RULE)

SEP = KEY_SEP  # cannot occur in XML text, so it safely joins key parts (a stored key2 of three fields too)
SHIPMENT_KIND_VALUES = frozenset(k.value for k in SHIPMENT_KINDS)
#: The kinds that belong to their inventory's shipment without being legs of it (a cancellation, a return): a message
#: of them reconciles nothing, and its answer shows the shipment as it stands (State.seen).
NAMING_KINDS = frozenset({Kind.CANCEL.value, Kind.REFUND.value})

#: Advisory lock namespaces. The store takes, for a message, the locks of its guid, of its document
#: keys, of the orderNo of each order, payment, inventory and waybill (the shipments of that orderNo),
#: of each waybill key that a waybill has or an inventory names (they may carry different orderNos),
#: and of each inventory's buyer (the tax ledger).
LOCK_GUID, LOCK_KEY, LOCK_ORDER, LOCK_WAYBILL, LOCK_BUYER = "guid", "key", "order", "waybill", "buyer"
#: Of each invtNo a summary application (CEB701) names, taken for CEB701 messages only (gateway.store.Store.ingest):
#: two applications naming one inventory are judged one after the other (gateway.summary.LIVE_SUMMARIES).
LOCK_SUMMARISED = "summarised"

Lock = tuple[str, str]  # (namespace, key)
LedgerBook = dict[tuple[str, int], dict[tuple[str, str], Decimal]]  # (buyer, year) -> (ebcCode, orderNo) -> amount
#: (buyer, year) -> the inventories the annual limit blocks, in the order they were blocked: (ebcCode, orderNo,
#: ebpCode), the last naming the shipment (ebpCode, orderNo) to assess again when quota is given back.
BlockedBook = dict[tuple[str, int], list[tuple[str, str, str]]]


class Conflict(Exception):
    """The message contradicts what is stored (HTTP 409); nothing of it was stored."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(f"{i.code} at {i.path}: {i.message}" for i in issues[:3]))
        self.issues = issues


def issue(code: str, path: str, message: str) -> Issue:
    return Issue(STATE_LAYER, code, path, message)


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


# --- rows ------------------------------------------------------------------------------------


def text(head: dict[str, str], name: str) -> str | None:
    """A head field trimmed, None when absent or empty."""
    value = head.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


@dataclass(slots=True, eq=False)
class Row:
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
    is_new: bool = False  # a document of the message being judged (no id yet)
    rejected: bool = False  # customs rejected it (a receipt): it may be declared anew
    failed: bool = False  # its delivery to customs is a dead letter (gateway.outbox.deliveries_dead)
    held: bool = False  # an inventory the gateway holds until its shipment may be declared (spec §6.7)
    #: held, and so is every version before it back to its first declaration, each alone in its message: customs has
    #: nothing of the declaration (gateway.store._UNSEEN; read for the current rows of a message's keys only)
    unseen: bool = False
    cancelled: bool = False  # an inventory whose cancellation (CEB623, 605) customs concluded, not declared anew since
    spent: bool = False  # a cancellation customs concluded whose inventory was declared anew since (see _declared_anew)
    #: an inventory (CEB621, CEB603): customs released it (CEB622 / CEB604 800 or above) — this version (gateway.store
    #: READ_STATE); for an export inventory named by invtNo, a version of this declaration (gateway.store.EXPORT_FLAGS).
    #: False for any other row
    released: bool = False
    #: an inventory's: the lines (gnum, qty) of the return (CEB625) customs concluded for it, whose value its buyer's
    #: annual quota counts no more (see carry_return)
    returned: Sequence[Mapping[str, str]] = ()
    #: an import inventory's: the invtNo customs gave it (CEB622), None before its receipts name one
    invt_no: str | None = None
    message_id: int | None = None  # a stored row's message (None for a new one)

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> Row:
        return cls(
            id=r["id"], kind=r["kind"], message_type=r["message_type"], key1=r["key1"], key2=r["key2"],
            order_no=r["order_no"], ebp_code=r["ebp_code"], ebc_code=r["ebc_code"],
            logistics_code=r["logistics_code"], logistics_no=r["logistics_no"], app_time=r["app_time"] or "",
            doc_index=r["doc_index"], path=r["path"], head=r["head"], lines=r["lines"], parties=r["parties"],
            withdrawn=r["withdrawn"], message_guid=r.get("message_guid"), rejected=bool(r.get("rejected")),
            failed=bool(r.get("failed")), held=bool(r.get("held")), unseen=bool(r.get("unseen")),
            cancelled=bool(r.get("cancelled")),
            spent=bool(r.get("spent")), returned=r.get("returned") or (), released=bool(r.get("released")),
            invt_no=r.get("invt_no"), message_id=r.get("message_id"),
        )  # fmt: skip

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.message_type, self.key1, self.key2)

    @property
    def document(self) -> Document:
        if self.doc is None:
            self.doc = Document(BY_CODE[self.message_type], self.doc_index, self.path, self.head, self.lines)
        return self.doc

    @property
    def flow(self) -> str:
        """"import" or "export" (MessageType.flow): the two are never legs of one shipment."""
        return BY_CODE[self.message_type].flow

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


@dataclass
class New:
    """One document of the message being judged, and what becomes of it."""

    doc: Document
    row: Row
    app_type: str
    tracked: bool  # declarations carry key state; receipts are only recorded
    outcome: str = "accepted"
    replaces: Row | None = None
    code: str | None = None
    message: str | None = None
    #: the stored document it names by invtNo (referenced_invt_no): it is forwarded after it
    after: Row | None = None

    @property
    def stored(self) -> bool:
        return self.outcome != "ignored_older"

    @property
    def live(self) -> bool:
        return self.tracked and self.outcome in ("accepted", "replaced")

    def key_names(self) -> dict[str, str]:
        mtype = self.doc.type
        return dict(zip(mtype.keys, mtype.key_values((self.row.key1, self.row.key2)), strict=False))

    def describe_key(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.key_names().items())


RECORDED_ONLY = (
    "a customs message is kept here as a record only; receipts are applied to their declarations at POST /v1/receipts"
)
WITHDRAWN_UNSENT = (
    "withdrawn before it was sent: the gateway held it until its shipment could be declared (spec §6.7), so customs "
    "never had it; nothing is sent to customs, and the held version will never be sent"
)


def new_documents(msg: ParsedMessage) -> list[New]:
    mtype = msg.type
    tracked = mtype.direction is Direction.DECLARATION
    out = []
    for doc in msg.documents:
        head = doc.head
        key1, key2 = mtype.stored_key([v.strip() for v in doc.keys])
        row = Row(
            id=-doc.index, kind=mtype.kind.value, message_type=mtype.code, key1=key1,
            key2=key2, order_no=text(head, "orderNo"), ebp_code=text(head, "ebpCode"),
            ebc_code=text(head, "ebcCode"), logistics_code=text(head, "logisticsCode"),
            logistics_no=text(head, "logisticsNo"), app_time=(head.get("appTime") or "").strip(),
            doc_index=doc.index, path=doc.path, head=head, lines=doc.lines,
            parties=sorted(document_parties(doc)), withdrawn=False, doc=doc, is_new=True,
        )  # fmt: skip
        out.append(New(doc=doc, row=row, app_type=(head.get("appType") or "1").strip(), tracked=tracked))
    return out


def referenced_key(row: Row) -> tuple[str, str, str] | None:
    """The stored document a new one must refer to: a cancellation's or return's inventory (spec R12), the
    document its type is forwarded in order with, under the same key."""
    ref = BY_CODE[row.message_type].orders_with
    return (ref, row.key1, row.key2) if ref else None


#: The types that name the document they are forwarded after by the number customs gave it, not by its key: an export
#: cancellation (CEB605) names its inventory (CEB603) by invtNo (spec A.25), which the store keeps from the CEB604
#: receipts (documents.invt_no). Type -> the type it names.
BY_INVT_NO: dict[str, str] = {
    t.code: ref for t in MESSAGE_TYPES for ref, fields in t.refers_to if fields == ("invtNo",)
}


def referenced_invt_no(row: Row) -> tuple[str, str] | None:
    """(type, invtNo) of the stored document a new one names by invtNo (see BY_INVT_NO), None for the others."""
    ref = BY_INVT_NO.get(row.message_type)
    return (ref, text(row.head, "invtNo") or "") if ref else None


def up_front_locks(msg: ParsedMessage) -> set[Lock]:
    """The locks known from the message alone (see LOCK_GUID ...)."""
    locks = {(LOCK_GUID, msg.guid)}
    mtype = msg.type
    if mtype.direction is not Direction.DECLARATION:
        return locks
    for doc in msg.documents:
        head = doc.head
        keys = [v.strip() for v in doc.keys]
        if mtype.integer_keys:  # the lock of the key as stored: a part written "01" is part 1 (MessageType.stored_key)
            keys = list(mtype.key_values(mtype.stored_key(keys)))
        locks.add((LOCK_KEY, SEP.join((mtype.code, *keys))))
        if mtype.orders_with:  # the inventory it refers to must not change meanwhile
            locks.add((LOCK_KEY, SEP.join((mtype.orders_with, *keys))))
        if mtype.kind.value in SHIPMENT_KIND_VALUES and (mtype.flow == "import" or mtype.kind is not Kind.WAYBILL):
            # an export waybill (CEB505) names no orderNo: it joins its shipment through the inventory alone
            locks.add((LOCK_ORDER, (head.get("orderNo") or "").strip()))
        if mtype.kind in (Kind.WAYBILL, Kind.INVENTORY):
            waybill = ((head.get("logisticsCode") or "").strip(), (head.get("logisticsNo") or "").strip())
            locks.add((LOCK_WAYBILL, SEP.join(waybill)))
        buyer = likely_buyer(mtype, head)
        if buyer is not None:
            locks.add((LOCK_BUYER, buyer[0]))
    return locks


#: Where each leg names the person whose annual quota its shipment's inventory draws on (spec §6.4: the order's
#: buyer, the payment's payer, the inventory's buyer are one person). The waybill names only a consignee; an export
#: shipment names no buyer at all and draws on no quota (the retail-import tax of spec §7 is the import flow's).
_BUYER_FIELDS = {Kind.INVENTORY: "buyerIdNumber", Kind.ORDER: "buyerIdNumber", Kind.PAYMENT: "payerIdNumber"}


def likely_buyer(mtype: MessageType, head: dict[str, str]) -> tuple[str, int] | None:
    """The (buyerIdNumber, quota year) a leg's arrival will most likely reassess, or None.

    For an inventory it is its own. An order or payment that arrives after its inventory reassesses the
    inventory's tax against the buyer's ledger, which needs the buyer's lock and ledger rows; named up front from
    the leg itself, they are locked and read with everything else in the batch's first round instead of sending
    the message to a second one (judge's Defer). A guess that misses (a payer who is not the buyer, another
    year) costs only that second round."""
    kind = mtype.kind
    name = _BUYER_FIELDS.get(kind)
    if name is None or mtype.flow != "import":
        return None
    buyer = buyer_of(head, name)
    if not buyer[0] and kind is not Kind.INVENTORY:
        return None  # no guess rather than one lock shared by every leg without a number
    return buyer


class WaybillBuyers:
    """The buyer of the inventories seen recently, by the waybill each names — a guess for a waybill's arrival.

    A waybill names no buyer, yet when it arrives after its inventory the shipment's tax is assessed again
    against the buyer's ledger: without a guess that takes a second round of its batch (judge's Defer: lock,
    read, write and enqueue again), which about half of all waybills needed. The inventories this process
    accepted name their waybill (logisticsCode, logisticsNo) and their buyer, so the store remembers the last
    ``size`` of them. Only a guess: judge still checks that every lock and row it needs is held, and a waybill
    this process has not seen the inventory of (another API process took it, a restart, an older one) goes to
    the second round as before.
    """

    def __init__(self, size: int = 32_768) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._buyers: collections.OrderedDict[tuple[str, str], tuple[str, int]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buyers)

    def learn(self, news: Iterable[New]) -> None:
        """Remember the buyer of each inventory among an accepted message's documents (the newest wins)."""
        for new in news:
            if new.row.kind == Kind.INVENTORY and new.live and new.row.flow == "import":
                key = new.row.logistics_key
                self._buyers[key] = buyer_of(new.row.head)
                self._buyers.move_to_end(key)
                if len(self._buyers) > self.size:
                    self._buyers.popitem(last=False)

    def guess(self, news: Iterable[New]) -> set[tuple[str, int]]:
        """The (buyerIdNumber, year) of the inventories remembered for the waybills among ``news``."""
        found = set()
        for new in news:
            if new.row.kind == Kind.WAYBILL and new.tracked:
                buyer = self._buyers.get(new.row.logistics_key)
                if buyer is not None and buyer[0]:
                    found.add(buyer)
        return found


@dataclass
class Refs:
    """What the store must read for a message: its keys, and the shipments and waybills it is about."""

    keys: set[tuple[str, str, str]] = field(default_factory=set)  # (message type, key1, key2)
    keyed: set[tuple[str, str]] = field(default_factory=set)  # (ebpCode, orderNo)
    waybill_keys: set[tuple[str, str]] = field(default_factory=set)  # waybills' own (logisticsCode, logisticsNo)
    waybill_orders: set[str] = field(default_factory=set)  # waybills' orderNo
    inventory_waybills: set[tuple[str, str]] = field(default_factory=set)  # inventories' (logisticsCode, No)
    buyers: set[tuple[str, int]] = field(default_factory=set)  # (buyerIdNumber, year): see likely_buyer
    invt_nos: set[tuple[str, str]] = field(default_factory=set)  # (type, invtNo) named: see referenced_invt_no
    #: (ebpCode, orderNo) of the shipments a cancellation or return names by its own keys (NAMING_KINDS): read as
    #: stored, for the answer (State.seen); one named by invtNo is read with its inventory (gateway.store.RETURNS_OF)
    seen: set[tuple[str, str]] = field(default_factory=set)

    def add(self, row: Row) -> None:
        if row.kind == Kind.WAYBILL:
            self.waybill_keys.add(row.logistics_key)
            if row.flow == "import":  # an export waybill names no orderNo
                self.waybill_orders.add(row.order_no or "")
        elif row.kind in SHIPMENT_KIND_VALUES:
            self.keyed.add(row.shipment_key)
            # the other platforms' shipments of its orderNo: whether a waybill of it is this one's depends on them
            self.waybill_orders.add(row.order_no or "")
            if row.kind == Kind.INVENTORY:
                self.inventory_waybills.add(row.logistics_key)

    @classmethod
    def of(cls, news: list[New]) -> Refs:
        refs = cls()
        for new in news:
            if new.tracked:
                refs.keys.add(new.row.key)
                if (ref := referenced_key(new.row)) is not None:
                    refs.keys.add(ref)
                if (named := referenced_invt_no(new.row)) is not None:
                    refs.invt_nos.add(named)
                elif new.row.kind in NAMING_KINDS:
                    refs.seen.add(new.row.shipment_key)
                refs.add(new.row)
                buyer = likely_buyer(new.doc.type, new.row.head)
                if buyer is not None:
                    refs.buyers.add(buyer)
        return refs

    def covers(self, other: Refs) -> bool:
        return (
            other.keyed <= self.keyed
            and other.waybill_keys <= self.waybill_keys
            and other.waybill_orders <= self.waybill_orders
            and other.buyers <= self.buyers
        )

    def merge(self, other: Refs) -> None:
        self.keys |= other.keys
        self.keyed |= other.keyed
        self.waybill_keys |= other.waybill_keys
        self.waybill_orders |= other.waybill_orders
        self.inventory_waybills |= other.inventory_waybills
        self.buyers |= other.buyers
        self.invt_nos |= other.invt_nos
        self.seen |= other.seen


def decide(
    news: list[New],
    current: dict[tuple[str, str, str], Row],
    scope: frozenset[str] | None = None,
    numbered: Mapping[tuple[str, str], Sequence[Row]] | None = None,
    returns: Mapping[tuple[str, str], Sequence[Row]] | None = None,
) -> list[Issue]:
    """Apply the appType rules to each document against the current row of its key.

    ``numbered``: per (type, invtNo) the current rows of the keys customs gave that invtNo (State.numbered), where
    a new document names the one it refers to by invtNo (referenced_invt_no). ``returns``: per shipment (ebpCode,
    orderNo) of such an export inventory, its live retail export returns (State.returns): what a new return adds to.

    ``scope``: the enterprise codes of the submitting API key (None: an operator's or admin's, which may touch
    every key). A stored document's key belongs to its parties: a key holding none of them may not change,
    withdraw or declare it again, and learns nothing of it beyond that it is taken (issue ``auth.not_your_document``).
    """
    issues: list[Issue] = []
    seen: dict[tuple[str, str, str], New] = {}
    taken: dict[tuple[str, str], list[Row]] = {k: list(v) for k, v in (returns or {}).items()}
    for new in news:
        new.outcome, new.replaces, new.code, new.message, new.after = "accepted", None, None, None, None
        new.row.withdrawn = False
        if not new.tracked:  # a customs message posted as a declaration: kept for the record, applied to nothing
            new.outcome, new.code, new.message = "recorded", "state.recorded_only", RECORDED_ONLY
            continue
        first = seen.setdefault(new.row.key, new)
        if first is not new:
            issues.append(
                issue(
                    "state.duplicate",
                    new.doc.path,
                    f"{new.doc.type.document}[{first.doc.index}] of this message already has the key "
                    f"{new.describe_key()}",
                )
            )
            continue
        cur = current.get(new.row.key)
        t = new.app_type
        at = new.row.app_time
        if cur is not None and scope is not None and scope.isdisjoint(_declarants(cur)):
            # checked first: every answer below would show the stored document (its message, its appTime)
            issues.append(
                Issue(
                    Layer.RULE,
                    "auth.not_your_document",
                    new.doc.path,
                    f"a document with {new.describe_key()} is stored and names none of this API key's enterprise "
                    "codes as its declarant: only its declarants may change, withdraw or declare it again",
                )
            )
        elif cur is not None and not cur.withdrawn and not _declared_anew(cur) and t not in ("2", "3"):
            issues.append(
                issue(
                    "state.duplicate",
                    new.doc.path,
                    f"a document with {new.describe_key()} exists (message {cur.message_guid}, appTime "
                    f"{cur.app_time}); send a change (appType 2) with a newer appTime instead",
                )
            )
        elif cur is not None and at <= cur.app_time:
            # covers appType 1 after a withdrawal too: an old message must not revive a deleted key
            new.outcome = "ignored_older"
            new.code = "state.ignored_older"
            new.message = (
                f"ignored: appTime {at} is not newer than {cur.app_time} of the stored document with "
                f"{new.describe_key()} (message {cur.message_guid}); nothing was changed"
            )
        elif t in ("2", "3") and (cur is None or cur.withdrawn):
            what = "has been withdrawn" if cur is not None else "does not exist"
            action = "change" if t == "2" else "delete"
            issues.append(
                issue(
                    "state.not_found",
                    new.doc.field_path("appType"),
                    f"appType {t} ({action}) but the document with {new.describe_key()} {what}",
                )
            )
        elif t == "2" and cur is not None and not cur.withdrawn and cur.unseen:
            # customs takes a change only of a document it has (-621042), carrying the numbers it gave it (-621053):
            # refused here rather than sent behind a first declaration the change was made to correct
            issues.append(
                issue(
                    "state.unsent_change",
                    new.doc.field_path("appType"),
                    f"appType 2 (change) but no version of the document with {new.describe_key()} was sent to "
                    "customs: the gateway holds it until its shipment may be declared (spec §6.7), and customs takes "
                    "no change of what it does not have; declare it anew instead (appType 1 with a newer appTime: it "
                    "replaces the held version here, which is never sent), or withdraw it (appType 3)",
                )
            )
        elif t in ("2", "3") and cur is not None and cur.message_type in _CANCELLATION and released_at_customs(cur):
            # customs allows no change or deletion of a released inventory (-621043): refused here rather than
            # forwarded to be refused there, while the shipment would show the change
            action = "change" if t == "2" else "delete"
            cancel = _CANCELLATION[cur.message_type]
            issues.append(
                issue(
                    "state.inventory_released",
                    new.doc.field_path("appType"),
                    f"appType {t} ({action}) but customs released the inventory with {new.describe_key()} (message "
                    f"{cur.message_guid}, receipt 800 or above): it may no longer be changed or deleted; send a "
                    f"cancellation ({cancel}) instead",
                )
            )
        else:
            new.replaces = cur  # None for a first declaration; a withdrawn row when declaring again
            if t == "3":
                new.outcome = "withdrawn"
                new.row.withdrawn = True
                if cur is not None and referenced_invt_no(new.row) is not None:
                    # a return or export cancellation carries no orderNo: its withdrawal stays on the shipment the
                    # version it withdraws belongs to (_numbered), and the shipment shows it withdrawn
                    new.row.ebp_code, new.row.order_no = cur.ebp_code, cur.order_no
            else:
                if cur is not None and not cur.withdrawn:
                    new.outcome = "replaced"
                if (ref := referenced_key(new.row)) is not None:
                    issues += (_referenced(new, current.get(ref), scope) or _same_order(new, current[ref])
                               or _standing(new, current[ref]))  # fmt: skip
                elif (named := referenced_invt_no(new.row)) is not None:
                    issues += _numbered(new, named[1], (numbered or {}).get(named, ()), scope, taken)
    return issues


#: The cancellation (撤销申请单) of each inventory type: the way back once customs released it.
_CANCELLATION = {"CEB621": "CEB623", "CEB603": "CEB605"}


def released_at_customs(row: Row) -> bool:
    """An inventory customs released (800 and above) and still holds (no cancellation concluded): it may no longer
    be changed or deleted, only cancelled (CEB623 / CEB605)."""
    return row.released and not row.cancelled


def _declared_anew(cur: Row) -> bool:
    """Whether appType 1 may follow ``cur`` (with a newer appTime): what is void at customs (:func:`void`: a first
    declaration customs rejected, an inventory whose cancellation it concluded) may be declared anew — the only way for
    a type that takes no change (a cancellation, CEB623); a rejected change may not, customs still holds the version
    before it. A temp-saved first declaration (appStatus 1, spec §3.6), never declared, is declared by an appType 1
    with appStatus 2; and so is one the gateway holds of which customs has nothing (Row.unseen): the new declaration
    replaces it here, and only the new one goes. A concluded cancellation whose inventory was declared anew since
    (``spent``) cancelled the declaration before: the new one is cancelled by an appType 1 again."""
    return temp_saved(cur.head) or void(cur) or cur.spent or cur.unseen


def first_declaration(row: Row) -> bool:
    """appType 1: the first declaration of its key (or one declared anew), not a change or a withdrawal."""
    return (row.head.get("appType") or "1").strip() == "1"


def refused_first(row: Row) -> bool:
    """A first declaration customs rejected: there is nothing of it at customs."""
    return row.rejected and first_declaration(row)


def void(row: Row) -> bool:
    """Nothing of the document counts at customs: a first declaration customs rejected, or an inventory whose
    cancellation customs concluded (CEB624 399 and above, spec §5.2). It is no order's one inventory, it draws on
    no annual quota (the outbox gave that back when the receipt came), and its key may be declared anew."""
    return refused_first(row) or row.cancelled


def temp_saved(head: Mapping[str, str]) -> bool:
    """A first declaration temp-saved (appType 1, appStatus 1): stored at E-Port, never declared (spec §3.6), so
    nothing for customs and nothing for the quota. A temp-saved change is not: customs holds the version before."""
    return (head.get("appStatus") or "").strip() == "1" and (head.get("appType") or "1").strip() == "1"


def _declarants(row: Row) -> set[str]:
    """Who may change, withdraw or declare again the stored ``row``'s key, or cancel or return it (gateway.auth)."""
    return declarant_codes(BY_CODE[row.message_type], row.head)


def _referenced(new: New, stored: Row | None, scope: frozenset[str] | None, named: str | None = None) -> list[Issue]:
    """R12: a cancellation or return names a stored inventory, of the submitter's declarants (its agent or seller:
    not the carrier it names); a return's lines are items of that inventory, each no more than its qty. ``named``: how
    the document names it (its own key)."""
    named = named or f"the inventory with ebcCode={new.row.key1!r}, orderNo={new.row.key2!r}"
    if stored is not None and scope is not None and scope.isdisjoint(_declarants(stored)):
        # first, withdrawn or not: an outsider learns nothing of another tenant's inventory beyond that it is taken
        return [Issue(Layer.RULE, "auth.not_your_document", new.doc.path,
                      f"{named} names none of this API key's enterprise codes as its declarant")]  # fmt: skip
    if stored is None or stored.withdrawn:
        what = "was withdrawn" if stored is not None else "is not stored"
        return [issue("state.no_inventory", new.doc.path, f"{named} it names {what}")]
    # a held first declaration: customs has not seen it, a cancellation would reach customs before the inventory
    # itself (a held change is not: customs holds the version before it, which may well be cancelled)
    if stored.held and first_declaration(stored):
        return [issue("state.inventory_held", new.doc.path,
                      f"{named} is held, not yet declared to customs; withdraw it (appType 3) instead")]  # fmt: skip
    items = {recon.gnum_key(line.get("gnum")): line for line in stored.lines}
    found: list[Issue] = []
    for i, line in enumerate(new.doc.lines):
        gnum = (line.get("gnum") or "").strip()
        item = items.get(recon.gnum_key(gnum))
        if item is None:
            message = f"gnum {gnum!r} is no item of the inventory (items {', '.join(sorted(items))})"
            found.append(issue("state.refund_not_in_inventory", new.doc.line_path(i, "gnum"), message))
            continue
        for name in ("gcode", "unit"):  # the original inventory's item (-625209 item not found)
            mine, theirs = (line.get(name) or "").strip(), (item.get(name) or "").strip()
            if mine and theirs and mine != theirs:
                found.append(issue("state.refund_item_mismatch", new.doc.line_path(i, name),
                                   f"{name} {mine!r} is not {theirs!r}, the {name} of the inventory's item "
                                   f"{gnum}"))  # fmt: skip
        qty, limit = _decimal(line.get("qty")), _decimal(item.get("qty"))
        if qty is not None and limit is not None and qty > limit:
            found.append(issue("state.refund_exceeds_inventory", new.doc.line_path(i, "qty"),
                               f"qty {qty} exceeds the {limit} of the inventory's item {gnum}"))  # fmt: skip
    return found


def _standing(new: New, stored: Row) -> list[Issue]:
    """R12: an import cancellation or return names an inventory customs holds — not one void there (its first
    declaration rejected, its cancellation concluded), as the export ones do (_returned); a return, one customs
    released (§6.5: a return follows the release; customs refuses one before it) — the current version's own 800, as
    for state.inventory_released. Refused rather than held until the 800, as an export return is (_returned)."""
    named = f"the inventory with ebcCode={new.row.key1!r}, orderNo={new.row.key2!r}"
    if stored.cancelled:
        return [issue("state.inventory_cancelled", new.doc.path, f"customs concluded the cancellation of {named}: "
                      "there is nothing to return or cancel")]  # fmt: skip
    if refused_first(stored):
        return [issue("state.no_inventory", new.doc.path,
                      f"customs rejected the declaration of {named}: there is no inventory at customs")]  # fmt: skip
    if new.row.kind == Kind.REFUND and not stored.released:
        return [issue("state.inventory_not_released", new.doc.field_path("invtNo"),
                      f"customs has not released {named} (no CEB622 800 yet): there is nothing to return; send the "
                      "return after its release")]  # fmt: skip
    return _describes(new, stored, named)


def _describes(new: New, stored: Row, named: str) -> list[Issue]:
    """An import cancellation or return found by its inventory's key describes that inventory (R12; A.7, A.9): the
    invtNo customs gave it (once a CEB622 named one), its waybill and its buyer. One that does not names another
    parcel, or another person's — whose quota a concluded return would give back (gateway.outbox.carry_return gives
    the inventory's buyer's)."""
    found: list[Issue] = []
    given = text(new.doc.head, "invtNo")
    if given and stored.invt_no and given != stored.invt_no:
        found.append(issue("state.not_the_inventory", new.doc.field_path("invtNo"),
                           f"invtNo {given!r} is not {stored.invt_no!r}, the number customs gave {named}"))  # fmt: skip
    for name, what in (("logisticsNo", "waybill"), ("buyerIdNumber", "buyer's ID number")):
        mine, theirs = text(new.doc.head, name), text(stored.head, name)
        if mine and theirs and mine.upper() != theirs.upper():  # an ID number's check character x or X
            found.append(issue("state.not_the_inventory", new.doc.field_path(name),
                               f"{name} {mine!r} is not {theirs!r}, the {what} of {named}"))  # fmt: skip
    return found


def _same_order(new: New, stored: Row) -> list[Issue]:
    """An import cancellation or return names its inventory by its key (ebcCode, orderNo) and the order the inventory
    declares by ebpCode + orderNo (spec §6.2: an orderNo is unique within a platform only): one naming another ebpCode
    names no inventory stored (R12). Taken, it would belong to another shipment than its inventory, and a concluded
    return would give no quota back (gateway.outbox.latest_return reads a return's versions by its inventory's
    shipment)."""
    mine, theirs = new.row.ebp_code or "", stored.ebp_code or ""
    if mine == theirs:
        return []
    named = f"the inventory with ebcCode={new.row.key1!r}, orderNo={new.row.key2!r}"
    return [issue("state.inventory_platform_mismatch", new.doc.field_path("ebpCode"),
                  f"ebpCode {mine!r} is not {theirs!r}, the ebpCode of {named} it names")]  # fmt: skip


def _numbered(
    new: New,
    invt_no: str,
    found: Sequence[Row],
    scope: frozenset[str] | None,
    returns: dict[tuple[str, str], list[Row]] | None = None,
) -> list[Issue]:
    """An export cancellation names its inventory by the invtNo customs gave it (``found``: the current rows of the
    keys customs gave that number), and the enterprises it names (agentCode, ebcCode) are that inventory's; then as
    for an import one (_referenced). Found, the cancellation is forwarded after it (New.after) and belongs to its
    shipment (its ebpCode and orderNo, which the cancellation does not carry). ``returns``: as for decide, with the
    returns taken before in the message; a return taken is added."""
    agent, ebc = new.row.key1, new.row.ebc_code or ""
    theirs = [r for r in found if r.key1 == agent and (r.ebc_code or "") == ebc]
    named = f"the export inventory with invtNo={invt_no!r}, agentCode={agent!r}, ebcCode={ebc!r}"
    # another enterprise's inventory of that number: an outsider learns only that it is taken (auth first)
    stored = max(theirs or found, key=lambda r: (not r.withdrawn, r.order), default=None)
    if stored is not None and not theirs and (scope is None or not scope.isdisjoint(stored.parties)):
        stored = None
    issues = _referenced(new, stored, scope, named)
    if not issues and stored is not None and new.row.kind == Kind.REFUND:
        others = returns.setdefault(stored.shipment_key, []) if returns is not None else []
        issues = _returned(new, stored, named, invt_no, others)
        if not issues:
            others.append(new.row)
    if not issues and stored is not None:
        new.after = stored
        new.row.ebp_code, new.row.order_no = stored.ebp_code, stored.order_no
    return issues


#: The return's supervision mode by the export inventory's (spec A.32): a special-zone export comes back as 1261.
_RETURN_MODE = {"1210": "1261"}


def _returned(new: New, stored: Row, named: str, invt_no: str = "", others: Sequence[Row] = ()) -> list[Issue]:
    """A retail export return (CEB213) of a stored export inventory: of goods that left (not one void at customs: its
    cancellation concluded, or its first declaration rejected; and one customs released, CEB604 800), declared on the
    inventory's platform (ebpCode: an invtNo names one platform's order) and under the return mode of the inventory's
    trade mode; and with the inventory's ``others`` returns (live, of that invtNo, another key, not rejected by
    customs) no more of an item than it declared (A.32: an inventory may come back in parts, never more than it was)."""
    if void(stored):
        # a rejected first declaration is no inventory at customs (its number named one only until the rejection)
        if stored.cancelled:
            return [issue("state.inventory_cancelled", new.doc.field_path("invtNo"),
                          f"{named} was cancelled (CEB605 concluded by customs): its goods never left")]  # fmt: skip
        return [issue("state.no_inventory", new.doc.field_path("invtNo"),
                      f"customs rejected the declaration of {named}: there is no inventory to return")]  # fmt: skip
    if not stored.released:
        # numbered by a CEB604 (2, 120, 399, 500 ...) but not released: the goods are still here. Refused rather than
        # held until the 800: customs refuses it the same (R12), and one never released would be held for good
        return [issue("state.inventory_not_released", new.doc.field_path("invtNo"),
                      f"customs has not released {named} (no CEB604 800 yet): its goods have not left; send the "
                      "return after its release")]  # fmt: skip
    found: list[Issue] = []
    mine, theirs = new.row.ebp_code or "", stored.ebp_code or ""
    if mine != theirs:
        found.append(issue("state.inventory_platform_mismatch", new.doc.field_path("ebpCode"),
                           f"ebpCode {mine!r} is not {theirs!r}, the ebpCode of {named} it returns"))  # fmt: skip
    mode, exported = text(new.doc.head, "tradeMode"), text(stored.head, "tradeMode") or ""
    expected = _RETURN_MODE.get(exported, "9661")
    if mode and mode != expected:
        found.append(issue("state.return_trade_mode", new.doc.field_path("tradeMode"),
                           f"tradeMode {mode} does not return a {exported} export: {named} comes back as "
                           f"{expected}"))  # fmt: skip
    return found or _returned_before(new, stored, invt_no, others)


def _returned_before(new: New, stored: Row, invt_no: str, others: Sequence[Row]) -> list[Issue]:
    """A.32 across returns: each line's qty with what the inventory's other returns take back of that item."""
    before: dict[str, Decimal] = {}
    for r in others:
        if r.key == new.row.key or r.withdrawn or refused_first(r) or (text(r.head, "invtNo") or "") != invt_no:
            continue
        for line in r.lines:
            if (qty := _decimal(line.get("qty"))) is not None:
                gnum = recon.gnum_key(line.get("gnum"))
                before[gnum] = before.get(gnum, Decimal(0)) + qty
    if not before:
        return []
    items = {recon.gnum_key(line.get("gnum")): line for line in stored.lines}
    found: list[Issue] = []
    for i, line in enumerate(new.doc.lines):
        gnum = recon.gnum_key(line.get("gnum"))
        qty, limit, taken = _decimal(line.get("qty")), _decimal((items.get(gnum) or {}).get("qty")), before.get(gnum)
        if qty is not None and limit is not None and taken is not None and qty + taken > limit:
            found.append(issue("state.refund_exceeds_inventory", new.doc.line_path(i, "qty"),
                               f"qty {qty} with the {taken} the inventory's other returns take back exceeds the "
                               f"{limit} of its item {(line.get('gnum') or '').strip()}"))  # fmt: skip
    return found


def _decimal(raw: str | None) -> Decimal | None:
    try:
        return Decimal((raw or "").strip())
    except ArithmeticError:  # decimal.InvalidOperation; the XSD let nothing else through
        return None


# --- shipments -------------------------------------------------------------------------------


def ledger_year(head: dict[str, str]) -> int:
    """The quota year of an inventory: its declaration date, else its appTime, else this year."""
    for name in ("declTime", "appTime"):
        value = (head.get(name) or "").strip()
        if len(value) >= 4 and value[:4].isascii() and value[:4].isdigit():
            return int(value[:4])
    return datetime.now(UTC).year


def buyer_of(head: dict[str, str], id_field: str = "buyerIdNumber") -> tuple[str, int]:
    """(the ID number in ``id_field``, the quota year) of a document's head: the ledger's and the lock's key.

    In upper case: an ID card number's check character X is written either way, and one person has one annual
    quota (reconciliation compares the numbers the same way)."""
    return ((head.get(id_field) or "").strip().upper(), ledger_year(head))


def _latest(rows: Iterable[Row] | None) -> Row | None:
    return max(rows, key=lambda r: r.order) if rows else None


def _names(order: Row, payment: Row) -> bool:
    """Whether the order names this payment: it carries payCode or payTransactionId, and each it carries is the
    payment's (as recon.payment_reference_mismatch compares them)."""
    named = [(n, v) for n in ("payCode", "payTransactionId") if (v := (order.head.get(n) or "").strip())]
    return bool(named) and all((payment.head.get(n) or "").strip() == v for n, v in named)


class Live:
    """The live (current, not withdrawn) documents as they will be after the message.

    Built once for a wave's rows (:meth:`State.live`); each message of the wave sees them through
    :meth:`changed`, with the rows it replaces taken out and its own live documents put in, undone after.
    """

    def __init__(self, rows: Iterable[Row] = ()) -> None:
        self.legs: dict[tuple[str, str], dict[str, list[Row]]] = {}
        self.waybills_by_key: dict[tuple[str, str], list[Row]] = {}
        self.waybills_by_order: dict[str, list[Row]] = {}
        self.inventories_by_waybill: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            self.add(row)

    def _places(self, row: Row) -> list[tuple[dict[Any, list[Row]], Any]]:
        """The (index, key) pairs whose lists hold ``row``."""
        if row.kind == Kind.WAYBILL:
            if row.flow != "import":  # an export waybill names no orderNo: an inventory naming it is its only join
                return [(self.waybills_by_key, row.logistics_key)]
            return [(self.waybills_by_key, row.logistics_key), (self.waybills_by_order, row.order_no or "")]
        if row.kind not in SHIPMENT_KIND_VALUES:
            return []
        places: list[tuple[dict[Any, list[Row]], Any]] = [(self.legs.setdefault(row.shipment_key, {}), row.kind)]
        if row.kind == Kind.INVENTORY:
            places.append((self.inventories_by_waybill, row.logistics_key))
        return places

    def add(self, row: Row) -> None:
        for index, key in self._places(row):
            index.setdefault(key, []).append(row)

    def remove(self, row: Row) -> None:
        """Take ``row`` (this very object) out; an index entry left empty goes, as if never added."""
        for index, key in self._places(row):
            rows = index[key]
            rows.remove(row)  # this very object: rows compare by identity (eq=False)
            if not rows:
                del index[key]
        if row.kind in SHIPMENT_KIND_VALUES and row.kind != Kind.WAYBILL and not self.legs[row.shipment_key]:
            del self.legs[row.shipment_key]

    @contextlib.contextmanager
    def changed(self, gone: Iterable[Row], new: Iterable[Row]) -> Iterator[Live]:
        """These documents as they will be with ``gone`` out and ``new`` in, for the block; then as before."""
        gone, new = list(gone), list(new)
        for row in gone:
            self.remove(row)
        added: list[Row] = []
        try:
            for row in new:
                self.add(row)
                added.append(row)
            yield self
        finally:
            for row in reversed(added):
                self.remove(row)
            for row in gone:
                self.add(row)

    def flow_of(self, key: tuple[str, str]) -> str:
        """The flow of a shipment's live legs ("import" when it has none): one flow per shipment (judge refuses a
        leg of the other, state.flow_conflict)."""
        for rows in self.legs.get(key, {}).values():
            return rows[0].flow
        return "import"

    def platforms(self, order_no: str) -> list[tuple[str, str]]:
        """The keyed import shipments of ``order_no`` with a live leg, one per platform (orderNo is unique within
        one): those an import waybill of that orderNo may belong to (an export waybill names no orderNo)."""
        return sorted(k for k in self.legs if k[1] == order_no and k[0] and self.flow_of(k) == "import")

    def _naming(self, row: Row) -> list[Row]:
        """The live inventories of the waybill's flow naming it (logisticsCode, logisticsNo)."""
        return [inv for inv in self.inventories_by_waybill.get(row.logistics_key, ()) if inv.flow == row.flow]

    def _decided(self, row: Row) -> bool:
        """Whether an inventory of the waybill's own orderNo names it: that inventory's shipment is its platform's."""
        return any(inv.order_no == row.order_no for inv in self._naming(row))

    def ambiguous(self, row: Row) -> bool:
        """A waybill no inventory of its orderNo names while several platforms use that orderNo: whose it is,
        nothing says (a waybill carries no ebpCode)."""
        return not self._decided(row) and len(self.platforms(row.order_no or "")) > 1

    def shipments_of_waybill(self, row: Row) -> list[tuple[str, str]]:
        """Keyed shipments whose reconciliation a waybill may change: via an inventory naming it, or sharing its
        orderNo (each holds it, or reports it ambiguous, or holds another). See holders for those it is a leg of."""
        found = {inv.shipment_key for inv in self.inventories_by_waybill.get(row.logistics_key, ())}
        found |= set(self.platforms(row.order_no or ""))
        return sorted(found)

    def holders(self, row: Row) -> list[tuple[str, str]]:
        """Keyed shipments holding a waybill: those whose inventory names it; unless an inventory of its own orderNo
        does, also its orderNo's shipment when one platform alone uses that orderNo. None: a waybill-only one."""
        found = {inv.shipment_key for inv in self._naming(row)}
        if row.flow == "import" and not self._decided(row):
            owners = self.platforms(row.order_no or "")
            if len(owners) == 1:
                found |= set(owners)
        return sorted(found)

    def inventory_of(self, key: tuple[str, str]) -> Row | None:
        """A shipment's inventory leg: its latest live inventory that counts at customs, else its latest (one
        cancelled or refused may stand beside the one declared after it, under another ebcCode)."""
        rows = self.legs.get(key, {}).get(Kind.INVENTORY)
        return max(rows, key=lambda r: (not void(r), r.order)) if rows else None

    def _waybill_leg(self, key: tuple[str, str]) -> tuple[Row | None, list[Row]]:
        """The waybill a keyed shipment holds (its inventory's, else the latest of those of its orderNo it holds)
        and, when its inventory gives it none, the waybills of its orderNo that are ambiguous. A shipment with no
        live leg holds none (as holders counts only shipments with one)."""
        if not self.legs.get(key):
            return None, []
        inventory = self.inventory_of(key)
        waybill = None
        if inventory is not None:
            named = self.waybills_by_key.get(inventory.logistics_key, ())
            waybill = _latest([w for w in named if w.flow == inventory.flow])
        if waybill is not None or not key[0] or self.flow_of(key) != "import":
            return waybill, []
        # no inventory yet, or its waybill has not arrived: a waybill of its orderNo (reconciliation then reports a
        # key mismatch rather than a missing leg) — if it is this platform's
        of_order = self.waybills_by_order.get(key[1], ())
        waybill = _latest([w for w in of_order if key in self.holders(w)])
        return waybill, sorted((w for w in of_order if self.ambiguous(w)), key=lambda w: w.logistics_key)

    def waybill_of(self, key: tuple[str, str]) -> Row | None:
        """The waybill a keyed shipment holds (see _waybill_leg)."""
        return self._waybill_leg(key)[0]

    def waybill_view(self, key: tuple[str, str]) -> tuple[object, ...]:
        """What a shipment's reconciliation takes of the waybills (its leg and those ambiguous, as row identities;
        the platforms sharing its orderNo when any is ambiguous): when another platform's leg changes it, that
        shipment is reconciled again."""
        waybill, ambiguous = self._waybill_leg(key)
        sharing = self.platforms(key[1]) if ambiguous else []
        return (id(waybill), *(id(w) for w in ambiguous), *sharing)

    def _shipment(self, key: tuple[str, str], waybill: Row | None, ambiguous: list[Row]) -> recon.Shipment:
        legs = self.legs.get(key, {})
        order = _latest(legs.get(Kind.ORDER))
        payments = legs.get(Kind.PAYMENT, ())
        # of several, the one the order names (payCode, payTransactionId) is its payment; else the latest
        payment = _latest([p for p in payments if order is not None and _names(order, p)]) or _latest(payments)
        inventory = self.inventory_of(key)
        order_no = key[1] or (waybill.order_no or "" if waybill is not None else "")
        # a second live payment or inventory (one that counts at customs: a refused or cancelled one stands beside
        # the one declared after it) is a finding of its own (recon.*_duplicate)
        others = [r for r in (*payments, *legs.get(Kind.INVENTORY, ())) if r is not payment and r is not inventory
                  and not void(r)]  # fmt: skip
        return recon.Shipment(
            order=order.document if order else None,
            payment=payment.document if payment else None,
            waybill=waybill.document if waybill else None,
            inventory=inventory.document if inventory else None,
            ambiguous=tuple(w.document for w in ambiguous),
            platforms=tuple(k[0] for k in self.platforms(order_no)) if ambiguous else (),
            others=tuple(r.document for r in sorted(others, key=lambda r: r.order)),
        )

    def shipment(self, key: tuple[str, str]) -> recon.Shipment:
        return self._shipment(key, *self._waybill_leg(key))

    def lone_waybill(self, order_no: str) -> Row | None:
        """The latest waybill of ``order_no`` that no keyed shipment holds: what its waybill-only shipment shows."""
        return _latest([w for w in self.waybills_by_order.get(order_no, ()) if not self.holders(w)])

    def lone_shipment(self, order_no: str) -> recon.Shipment | None:
        """The waybill-only shipment ('', orderNo), or None when every waybill of ``order_no`` is held."""
        lone = self.lone_waybill(order_no)
        if lone is None:
            return None
        return self._shipment(("", order_no), lone, [lone] if self.ambiguous(lone) else [])


def touched(
    news: list[New], live: Live, released: Iterable[Row] = (), neighbours: Iterable[tuple[str, str]] = ()
) -> tuple[list[tuple[str, str]], list[str]]:
    """Keyed shipments to reconcile again (in order of first mention) and orderNos of waybill-only ones.

    ``released``: the waybills the shipments of the replaced or withdrawn legs held before the change; each goes
    where it belongs now (another shipment, or one of its own), as it would had it arrived after the change.
    ``neighbours``: other platforms' shipments of the changed legs' orderNos whose waybill the change moved."""
    changed: list[Row] = []
    for new in news:
        if new.tracked and new.stored and new.row.kind in SHIPMENT_KIND_VALUES:
            changed.append(new.row)
            if new.replaces is not None and not new.replaces.withdrawn:
                changed.append(new.replaces)
    changed.extend(released)
    keyed: list[tuple[str, str]] = []
    blanks: list[str] = []
    for row in changed:
        if row.kind == Kind.WAYBILL:
            if not live.holders(row) and row.flow == "import":  # an export waybill has no waybill-only shipment
                blanks.append(row.order_no or "")
            keyed.extend(live.shipments_of_waybill(row))
        else:
            keyed.append(row.shipment_key)
    keyed.extend(neighbours)
    return list(dict.fromkeys(keyed)), list(dict.fromkeys(blanks))


@dataclass
class ShipmentResult:
    ebp_code: str
    order_no: str
    state: str
    missing: list[str]
    findings: list[dict[str, Any]]
    parties: list[str]
    ebc_code: str | None = None
    mode: str | None = None
    buyer_id_number: str | None = None
    flow: str = "import"
    #: each leg's message type, guid and parties: whom the answer's findings may show a value to (gateway.auth), known
    #: here without reading them again; not written anywhere
    sides: tuple[dict[str, Any], ...] = ()

    def summary(self, *, findings: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"ebpCode": self.ebp_code, "orderNo": self.order_no, "flow": self.flow,
                               "state": self.state}  # fmt: skip
        out["missing"] = self.missing
        if findings:
            out["findings"] = self.findings
        return out

    @classmethod
    def stored(cls, r: Mapping[str, Any]) -> ShipmentResult:
        """A shipment as its row stands (gateway.store._seen_shipments: its state, missing legs, findings, flow,
        and ``sides``: the documents the findings name, with their parties), for the answer of a message that names it
        and changes nothing of it; never written back."""
        sides = tuple({"message_type": d["message_type"], "doc_guid": d["doc_guid"],
                       "parties": list(d["parties"] or ())} for d in r.get("sides") or ())  # fmt: skip
        return cls(ebp_code=r["ebp_code"], order_no=r["order_no"], state=r["state"], missing=list(r["missing"] or ()),
                   findings=list(r["findings"] or ()), parties=sorted({p for d in sides for p in d["parties"]}),
                   flow=r["flow"] or "import", sides=sides)  # fmt: skip

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
            "flow": self.flow,
        }


def _legs(s: recon.Shipment) -> list[Document]:
    return [d for d in (s.order, s.payment, s.waybill, s.inventory) if d is not None]


def shipment_result(
    key: tuple[str, str], shipment: recon.Shipment, assessment: tax.TaxAssessment | None, tolerance: Decimal,
    *, flow: str | None = None,
) -> ShipmentResult:
    """The shipment reconciled (and its inventory assessed). ``flow``: the flow of the legs it had, for a shipment left
    with none (all withdrawn): it stays an export shipment if it was one."""
    outcome = recon.reconcile(shipment, tolerance=tolerance)
    findings = list(outcome.findings)
    state = recon.ShipmentState(outcome.state)
    if assessment is not None:
        findings.extend(assessment.findings)
        if assessment.blocking:
            state = recon.ShipmentState.MISMATCHED  # same precedence as reconciliation's own findings
    inv, order = shipment.inventory, shipment.order
    source = inv or order
    legs = _legs(shipment)
    first = next(iter(legs), None)
    sides = tuple({"message_type": d.type.code, "doc_guid": d.head.get("guid", ""), "parties": document_parties(d)}
                  for d in legs)  # fmt: skip
    return ShipmentResult(
        ebp_code=key[0],
        order_no=key[1],
        state=state.value,
        missing=[str(k) for k in outcome.missing],
        findings=[f.as_dict() for f in findings],
        parties=sorted({p for side in sides for p in side["parties"]}),
        sides=sides,
        ebc_code=text(source.head, "ebcCode") if source else None,
        mode=text(inv.head, "tradeMode") if inv else None,
        buyer_id_number=text(source.head, "buyerIdNumber") if source else None,
        flow=first.type.flow if first is not None else flow or "import",
    )


# --- judging a message -----------------------------------------------------------------------


@dataclass
class Defer:
    """The rows read do not cover what the message touches: take these locks, read these too, again."""

    locks: set[Lock]
    refs: Refs


@dataclass
class Write:
    """Everything one accepted message writes, and its answer (whose "id" the store fills in)."""

    body: dict[str, Any]
    documents: list[dict[str, Any]]
    replaced: list[tuple[int, int]]  # (old row id, doc_index of the row replacing it)
    shipments: list[dict[str, Any]]
    blanks: list[str]  # orderNos of waybill-only shipments to delete
    ledger_put: list[dict[str, Any]]
    ledger_drop: list[tuple[str, str, str | None, int | None]]  # (ebcCode, orderNo, kept buyer, kept year)
    #: other shipments of a buyer whose quota the message gave back, no longer blocked by the annual limit and now
    #: matched (their rows are among ``shipments``, not in the answer: they may be another party's)
    reopened: list[tuple[str, str]] = field(default_factory=list)
    #: the legs of the answer's shipments (ShipmentResult.sides): what its findings name, with their parties
    sides: tuple[dict[str, Any], ...] = ()


@dataclass
class State:
    """The rows read for a message (or for several independent ones at once)."""

    current: dict[tuple[str, str, str], Row]  # current row per key, withdrawn or not
    rows: dict[int, Row]  # live legs and waybills of the shipments involved
    ledger: LedgerBook
    blocked: BlockedBook = field(default_factory=dict)  # of the buyers in ``ledger``
    #: (type, invtNo) -> the current rows of the keys customs gave that invtNo (Refs.invt_nos)
    numbered: dict[tuple[str, str], list[Row]] = field(default_factory=dict)
    #: (ebpCode, orderNo) of an export inventory in ``numbered`` -> its live retail export returns (CEB213)
    returns: dict[tuple[str, str], list[Row]] = field(default_factory=dict)
    #: the shipments of the inventories cancellations and returns name (Refs.seen, and those of ``numbered``), as
    #: stored: what their answer shows (ShipmentResult.stored)
    seen: dict[tuple[str, str], ShipmentResult] = field(default_factory=dict)
    _live: Live | None = field(default=None, repr=False)

    def live(self) -> Live:
        """The live documents of ``rows``, indexed once for all the messages judged against this state (a
        wave of a batch: each message used to index every row of the wave again)."""
        if self._live is None:
            self._live = Live(self.rows.values())
        return self._live


def judge(
    msg: ParsedMessage,
    news: list[New],
    refs: Refs,
    held: set[Lock],
    state: State,
    *,
    rates: tax.TaxRates,
    tolerance: Decimal,
    scope: frozenset[str] | None = None,
) -> Write | Defer:
    """What ``msg`` (its documents ``news``, see new_documents) writes, given the rows read for ``refs``
    under the locks ``held``; ``scope`` as for decide.

    Raises Conflict. Returns Defer when the message reaches beyond ``refs`` or ``held``: a replaced
    payment or waybill named another order, a waybill belongs to an inventory of another orderNo, a
    stored inventory must be reassessed against a buyer's ledger not read.
    """
    issues = decide(news, state.current, scope, state.numbered, state.returns)
    if issues:
        raise Conflict(issues)
    # what a document names by invtNo must not change meanwhile, as a CEB623's inventory (locked up front by its key)
    named = {(LOCK_KEY, SEP.join(new.after.key)) for new in news if new.after is not None}
    if not named <= held:
        return Defer(named - held, Refs())
    carry_return(news)
    replaced = dict.fromkeys(new.replaces.id for new in news if new.replaces is not None)
    gone = [state.rows[i] for i in replaced if i in state.rows]
    before = state.live()
    issues = _orders_declared(news, before, scope)
    if issues:
        raise Conflict(issues)
    # the waybills held by the shipments whose legs change: a shipment may let go of one (see touched)
    keys = dict.fromkeys(r.shipment_key for r in gone if r.kind in SHIPMENT_KIND_VALUES and r.kind != Kind.WAYBILL)
    released = [w for w in map(before.waybill_of, keys) if w is not None]
    # A leg of one platform can move a waybill of its orderNo for another platform's shipment (make it ambiguous,
    # or the other's alone again): those shipments are compared before and after.
    new_rows = [n.row for n in news if n.live]
    orders = {r.order_no or "" for r in (*gone, *new_rows) if r.kind in SHIPMENT_KIND_VALUES and r.kind != Kind.WAYBILL}
    views = {k: before.waybill_view(k) for o in orders for k in before.platforms(o)}
    with before.changed(gone, new_rows) as live:
        issues = _flow_conflicts(news, live, scope) or _second_inventories(news, live, scope)
        if issues:
            raise Conflict(issues)
        after = {k: live.waybill_view(k) for o in orders for k in live.platforms(o)}
        neighbours = [k for k in sorted(views.keys() | after.keys()) if views.get(k) != after.get(k)]
        return _judge(
            msg, news, refs, held, state, live, rates=rates, tolerance=tolerance, released=released,
            neighbours=neighbours,
        )  # fmt: skip


def restore(
    rows: Sequence[Row], refs: Refs, held: set[Lock], state: State, *, rates: tax.TaxRates, tolerance: Decimal,
    gone: Sequence[Row] = (),
) -> Write | Defer:
    """The versions ``rows`` are current again: customs refused the change or withdrawal that followed each (spec
    §6.2: it still holds the version before; gateway.store.restore_refused). ``gone``: the refused changes, legs
    until now (a withdrawal is none) — what they held, a waybill another logisticsNo named say, is let go of. Their
    shipments are reconciled and their inventories assessed again from their current documents, as when a leg
    arrives (``state`` read for ``refs``, the rows among its live legs; Defer as judge). Nothing is refused: customs
    holds them. The Write's ``body`` is empty and its ``documents`` are not written (the rows are stored)."""
    live = state.live()
    legs = [state.rows[r.id] for r in rows if r.id in state.rows]
    orders = {r.order_no or "" for r in (*legs, *gone) if r.kind in SHIPMENT_KIND_VALUES and r.kind != Kind.WAYBILL}
    with live.changed(legs, gone) as before:
        # as judge: the waybills their shipments held without them go where they belong now, and the other
        # platforms' shipments of their orderNos whose waybill they move are reconciled again
        keys = dict.fromkeys(r.shipment_key for r in (*legs, *gone)
                             if r.kind in SHIPMENT_KIND_VALUES and r.kind != Kind.WAYBILL)
        released = [w for w in map(before.waybill_of, keys) if w is not None]
        views = {k: before.waybill_view(k) for o in orders for k in before.platforms(o)}
    after = {k: live.waybill_view(k) for o in orders for k in live.platforms(o)}
    neighbours = [k for k in sorted(views.keys() | after.keys()) if views.get(k) != after.get(k)]
    news = [New(doc=r.document, row=r, app_type=(r.head.get("appType") or "1").strip(), tracked=True) for r in legs]
    return _judge(None, news, refs, held, state, live, rates=rates, tolerance=tolerance, released=released,
                  neighbours=neighbours)  # fmt: skip


def _theirs(scope: frozenset[str] | None, row: Row) -> bool:
    """``row`` is another enterprise's to the key of ``scope`` (decide's): a refusal it causes names what it is, not
    which message or enterprise — the key may not read it (gateway.auth)."""
    return scope is not None and scope.isdisjoint(row.parties)


def _flow_conflicts(news: list[New], live: Live, scope: frozenset[str] | None = None) -> list[Issue]:
    """A shipment is of one flow: an export leg beside live import legs of its (ebpCode, orderNo), or the reverse,
    is refused rather than reconciled with them (an orderNo is unique within a platform, spec §6.2, so the two
    sharing one is the platform's mistake; the shipment's key, its URL and its customs status stay one flow's)."""
    out: list[Issue] = []
    for new in news:
        row = new.row
        if not new.live or row.kind == Kind.WAYBILL or row.kind not in SHIPMENT_KIND_VALUES:
            continue
        other = next((r for rows in live.legs.get(row.shipment_key, {}).values() for r in rows if r.flow != row.flow),
                     None)  # fmt: skip
        if other is not None:
            which = ("another enterprise's" if _theirs(scope, other)
                     else f"{other.message_type}, message {other.message_guid or 'of this message'}")  # fmt: skip
            out.append(issue("state.flow_conflict", new.doc.path,
                             f"the shipment {row.ebp_code}/{row.order_no} has a live {other.flow} {other.kind} "
                             f"({which}): a "
                             f"{row.flow} {row.kind} cannot join it; an orderNo is one shipment of one flow per "
                             "platform"))  # fmt: skip
    return out


def declared_at_customs(row: Row) -> bool:
    """An inventory customs holds or is about to: sent or on its way (not a first declaration the gateway still
    holds, spec §6.7), not a temp-saved first declaration (never declared, §3.6), not void there (:func:`void`)."""
    return not (temp_saved(row.head) or void(row) or (row.held and first_declaration(row)))


def _orders_declared(news: list[New], live: Live, scope: frozenset[str] | None = None) -> list[Issue]:
    """Customs takes no change or withdrawal of an order once its inventory is declared (-301011): refused here
    rather than forwarded to be refused there, while the shipment would be reconciled against the change. Before
    that (the inventory held, temp-saved, refused, cancelled, withdrawn) the order may change: customs has no
    inventory comparing against it."""
    out: list[Issue] = []
    for new in news:
        cur = new.replaces
        if cur is None or new.row.kind != Kind.ORDER or new.app_type not in ("2", "3"):
            continue
        inventories = live.legs.get(cur.shipment_key, {}).get(Kind.INVENTORY.value, ())
        declared = next((r for r in inventories if declared_at_customs(r)), None)
        if declared is not None:
            action = "change" if new.app_type == "2" else "delete"
            cancel = _CANCELLATION.get(declared.message_type, "a cancellation")
            which = ("another enterprise's" if _theirs(scope, declared)
                     else f"ebcCode {declared.ebc_code}, guid {text(declared.head, 'guid')}")  # fmt: skip
            out.append(issue("state.inventory_declared", new.doc.field_path("appType"),
                             f"appType {new.app_type} ({action}) but the inventory of the shipment "
                             f"{cur.ebp_code}/{cur.order_no} ({which}) was declared to customs, which takes no "
                             f"change of its order (-301011); withdraw that inventory (appType 3) or, once released, "
                             f"cancel it ({cancel}) first"))  # fmt: skip
    return out


def _second_inventories(news: list[New], live: Live, scope: frozenset[str] | None = None) -> list[Issue]:
    """An order has one inventory: a new one beside a live inventory of its shipment under another key (another
    ebcCode) would be reconciled and released with the shipment unseen, and both sent to customs."""
    out: list[Issue] = []
    for new in news:
        row = new.row
        if not new.live or row.kind != Kind.INVENTORY:
            continue
        for other in live.legs.get(row.shipment_key, {}).get(Kind.INVENTORY.value, ()):
            # one customs refused or cancelled is nothing at customs. (A temp-saved one still counts, unlike in
            # _declared_anew: it is at E-Port, one step from being declared.)
            if other is not row and other.key != row.key and not void(other):
                which = ("of another enterprise" if _theirs(scope, other) else
                         f"with ebcCode {other.ebc_code} (message {other.message_guid or 'of this message'})")
                out.append(issue("state.second_inventory", new.doc.path,
                                 f"the shipment {row.ebp_code}/{row.order_no} has a live inventory {which}: an order "
                                 "has one inventory; withdraw or cancel that one first"))  # fmt: skip
                break
    return out


def _judge(
    msg: ParsedMessage | None,
    news: list[New],
    refs: Refs,
    held: set[Lock],
    state: State,
    live: Live,
    *,
    rates: tax.TaxRates,
    tolerance: Decimal,
    released: list[Row],
    neighbours: list[tuple[str, str]],
) -> Write | Defer:
    more = Refs()
    for new in news:
        if new.replaces is not None and not new.replaces.withdrawn:
            more.add(new.replaces)
    for waybill in released:  # where it goes now: the shipments of its orderNo and its key must have been read
        if waybill.flow == "import":
            more.waybill_orders.add(waybill.order_no or "")
        more.waybill_keys.add(waybill.logistics_key)
    keyed, blanks = touched(news, live, released, neighbours)
    shipments = {key: live.shipment(key) for key in keyed}
    holding = [(s.waybill.head.get("orderNo") or "").strip() for s in shipments.values()
               if s.waybill and s.waybill.type.flow == "import"]  # fmt: skip
    # Waybill-only shipments ('', orderNo) to decide again: the orderNos of waybills that changed or were let go
    # of, of those the shipments here hold (one may have been the orderNo's only lone waybill), and of the shipments
    # here (a second platform makes a waybill of the orderNo ambiguous). One exists iff some waybill of its orderNo
    # is held by no keyed shipment; deciding that needs every platform of the orderNo read (so do the shipments of
    # it), and, unless one platform alone holds them all, every waybill of the orderNo and the inventories naming
    # them.
    imports = [k[1] for k in keyed if k[0] and live.flow_of(k) == "import"]  # an export shipment has no lone waybill
    lone_orders = list(dict.fromkeys([*blanks, *holding, *imports]))
    for order_no in lone_orders:
        more.waybill_orders.add(order_no)
        if len(live.platforms(order_no)) != 1:
            more.waybill_keys |= {w.logistics_key for w in live.waybills_by_order.get(order_no, ())}
    orders = {k[1] for k in more.keyed} | more.waybill_orders | {k[1] for k in keyed} | set(lone_orders)
    wanted = {(LOCK_ORDER, o) for o in orders}
    # an inventory naming a released waybill, arriving meanwhile, would take it: serialised on the waybill's lock
    wanted |= {(LOCK_WAYBILL, SEP.join(w.logistics_key)) for w in released}
    # the tax pre-check and the annual quota are the import flow's (spec §7): an export inventory names no buyer
    inventories = {key: s.inventory for key, s in shipments.items()
                   if s.inventory is not None and s.inventory.type.flow == "import"}  # fmt: skip
    inventory_rows = {key: row for key in inventories if (row := live.inventory_of(key)) is not None}
    # void at customs (refused, cancelled): its quota was given back when the receipt came, and stays so
    voided = {key for key, row in inventory_rows.items() if void(row)}
    buyers = {key: buyer_of(inv.head) for key, inv in inventories.items()}
    # A replaced or withdrawn inventory may give its buyer quota back, which may reopen that buyer's blocked shipments:
    # the buyer's ledger is read and locked too (most often the same buyer, named up front).
    given_back = {
        buyer_of(new.replaces.head)
        for new in news
        if new.stored and new.row.kind == Kind.INVENTORY and new.replaces is not None and not new.replaces.withdrawn
        and new.row.flow == "import"
    }
    involved = set(buyers.values()) | given_back
    more.buyers |= involved
    wanted |= {(LOCK_BUYER, b) for b, _ in involved}
    if not (refs.covers(more) and wanted <= held):
        return Defer(wanted - held, more)

    # Tax: each inventory against the rest of its buyer's year (later inventories of the message see it).
    before = {bk: sum(state.ledger.get(bk, {}).values(), Decimal(0)) for bk in involved}
    assessed: dict[tuple[str, str], tax.TaxAssessment] = {}
    ledger_put: dict[tuple[str, int, str, str], dict[str, Any]] = {}
    keep: dict[tuple[str, str], tuple[str, int]] = {}
    for key, inv in inventories.items():
        buyer, year = buyers[key]
        row = inventory_rows.get(key)
        assessed[key], put = assess_into(state.ledger.setdefault((buyer, year), {}), (buyer, year), inv,
                                         shipments[key].order, rates, is_void=key in voided,
                                         returned=row.returned if row is not None else ())  # fmt: skip
        keep[(put["ebc_code"], put["order_no"])] = (buyer, year)
        ledger_put[(buyer, year, put["ebc_code"], put["order_no"])] = put
    # Every inventory touched or reassessed keeps one ledger row (its buyer's), none once withdrawn.
    inventories_touched = set(keep)
    for new in news:
        if new.stored and new.row.kind == Kind.INVENTORY and new.row.flow == "import":
            inventories_touched.add((new.row.ebc_code or "", new.row.order_no or ""))
            if new.replaces is not None:
                inventories_touched.add((new.replaces.ebc_code or "", new.replaces.order_no or ""))
    ledger_drop: list[tuple[str, str, str | None, int | None]] = []
    for ebc, order_no in sorted(inventories_touched):
        kept = keep.get((ebc, order_no))
        ledger_drop.append((ebc, order_no, kept[0] if kept else None, kept[1] if kept else None))
        for bk in involved - {kept}:  # the books as they will be
            state.ledger.get(bk, {}).pop((ebc, order_no), None)

    # Quota given back: the buyer's shipments the annual limit blocked are assessed again (see reopen).
    freed = [bk for bk in sorted(involved) if sum(state.ledger.get(bk, {}).values(), Decimal(0)) < before[bk]]
    waiting = blocked_shipments(freed, state, skip=set(shipments))
    reopened: dict[tuple[str, str], ShipmentResult] = {}
    if waiting:
        more.merge(reopen_refs(waiting, live))
        wanted |= {(LOCK_ORDER, order_no) for _, order_no in waiting}
        if not (refs.covers(more) and wanted <= held):
            return Defer(wanted - held, more)
        reopened, puts = reopen(freed, state, live, skip=set(shipments), rates=rates, tolerance=tolerance)
        ledger_put.update({(p["buyer_id_number"], p["year"], p["ebc_code"], p["order_no"]): p for p in puts})

    results: dict[tuple[str, str], ShipmentResult] = {}
    flows = {r.shipment_key: r.flow for r in (*(n.row for n in news), *(n.replaces for n in news if n.replaces))
             if r.kind in SHIPMENT_KIND_VALUES}  # fmt: skip
    for key, shipment in shipments.items():
        results[key] = shipment_result(key, shipment, assessed.get(key), tolerance, flow=flows.get(key))
    drop_blanks: set[str] = set()
    for order_no in lone_orders:
        blank = live.lone_shipment(order_no)
        if blank is None:
            drop_blanks.add(order_no)
        else:
            results[("", order_no)] = shipment_result(("", order_no), blank, None, tolerance)

    # what a cancellation or return names: its inventory's shipment as it stands (reconciled by none of this)
    seen = {key: state.seen[key] for new in news
            if new.tracked and new.stored and new.row.kind in NAMING_KINDS
            and (key := new.row.shipment_key) not in results and key in state.seen}  # fmt: skip
    return Write(
        body=_response(msg, news, results | seen, live) if msg is not None else {},
        documents=[_document_row(new) for new in news if new.stored],
        replaced=[(new.replaces.id, new.doc.index) for new in news if new.replaces is not None and new.stored],
        shipments=[r.row() for r in (*results.values(), *reopened.values())],
        blanks=sorted(drop_blanks - {o for (e, o) in results if not e}),
        ledger_put=list(ledger_put.values()),
        ledger_drop=ledger_drop,
        reopened=[key for key, r in reopened.items() if r.state == recon.ShipmentState.MATCHED],
        sides=tuple(side for r in (*results.values(), *seen.values()) for side in r.sides),
    )


# --- the annual quota --------------------------------------------------------------------------


def annual_blocked(assessment: tax.TaxAssessment) -> bool:
    """Whether the annual limit blocks the inventory: quota given back may let it pass."""
    return any(f.code == "tax.annual_limit_exceeded" for f in assessment.findings)


def assess_into(
    book: dict[tuple[str, str], Decimal],
    buyer: tuple[str, int],
    inventory: Document,
    order: Document | None,
    rates: tax.TaxRates,
    *,
    is_void: bool = False,
    returned: Sequence[Mapping[str, str]] = (),
) -> tuple[tax.TaxAssessment, dict[str, Any]]:
    """Assess ``inventory`` against the rest of its buyer's year (``book``), enter what it counts in the book, and
    return the assessment with the inventory's ledger row (``blocked``: see annual_blocked). An inventory void at
    customs (``is_void``, see :func:`void`) counts nothing and is blocked by nothing: its quota was given back.

    ``returned``: the lines of the return customs concluded for it (Row.returned); their value, at the inventory's
    own allocation of its dutiable value, is counted neither in the book nor against the limit. The row keeps it
    (``returned``, at most what the inventory would count without it) so that a return concluded later replaces it
    (gateway.outbox.RETURN_QUOTA): the row's amount plus its returned is always what the inventory counts in full."""
    own = ((inventory.head.get("ebcCode") or "").strip(), (inventory.head.get("orderNo") or "").strip())
    used = sum((amount for k, amount in book.items() if k != own), Decimal(0))
    assessment = tax.assess(inventory, annual_used=used, rates=rates, order=order, returned=returned)
    nothing = temp_saved(inventory.head) or is_void
    counts = Decimal(0) if nothing else assessment.counts_toward_annual
    book[own] = counts
    put = {
        "buyer_id_number": buyer[0],
        "year": buyer[1],
        "ebc_code": own[0],
        "order_no": own[1],
        "amount": str(counts),
        "returned": str(Decimal(0) if nothing else assessment.returned),
        "blocked": annual_blocked(assessment) and not is_void,
    }
    return assessment, put


def carry_return(news: Iterable[New]) -> None:
    """A change (appType 2) of an inventory keeps the return customs concluded for the version it replaces: the
    goods went back whatever the change says (their value is taken anew at the changed inventory's allocation, and
    an item the change no longer has gives nothing back). A declaration anew (appType 1, after a withdrawal, a
    refusal or a cancellation) is other goods: no return of the declaration before counts for it — as the store
    reads it, the latest return concluded since the inventory's latest appType 1 (gateway.outbox.latest_return)."""
    for new in news:
        if new.row.kind == Kind.INVENTORY and new.row.is_new:
            old = new.replaces
            new.row.returned = ()
            if old is not None and not old.withdrawn and new.live and new.app_type == "2":
                new.row.returned = old.returned


def blocked_shipments(
    freed: Iterable[tuple[str, int]], state: State, *, skip: Collection[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """The shipments (ebpCode, orderNo) the annual limit blocks for the buyer-years ``freed``, in the order they were
    blocked, except ``skip`` (those assessed already): what must be read and locked to reopen them."""
    found: dict[tuple[str, str], None] = {}
    for bk in freed:
        for _, order_no, ebp_code in state.blocked.get(bk, ()):
            if ebp_code and (ebp_code, order_no) not in skip:
                found[(ebp_code, order_no)] = None
    return list(found)


def reopen_refs(waiting: Iterable[tuple[str, str]], live: Live) -> Refs:
    """What assessing the blocked shipments ``waiting`` again must read besides their legs, as for any shipment
    reconciled: the other platforms' shipments of their orderNos, and where several platforms use one, its waybills
    (with the inventories naming them) — whose waybill it is depends on them (Live.holders). Read, then asked again
    until covered: ``live`` knows the platforms only once their orderNos were read."""
    refs = Refs(keyed=set(waiting))
    for _, order_no in waiting:
        refs.waybill_orders.add(order_no)
        if len(live.platforms(order_no)) != 1:
            refs.waybill_keys |= {w.logistics_key for w in live.waybills_by_order.get(order_no, ())}
    return refs


def reopen(
    freed: Iterable[tuple[str, int]],
    state: State,
    live: Live,
    *,
    skip: Collection[tuple[str, str]] = (),
    rates: tax.TaxRates,
    tolerance: Decimal,
) -> tuple[dict[tuple[str, str], ShipmentResult], list[dict[str, Any]]]:
    """Quota was given back to the buyer-years ``freed``: assess their blocked shipments again (blocked_shipments,
    their legs read into ``live``), in the order they were blocked, each against the book as the ones before it
    left it — first come, first served, and a later one that fits passes when an earlier one still does not.

    Returns the shipments no longer blocked by the annual limit, reconciled and assessed, with their inventories'
    ledger rows; the ones still blocked are left as they are. An inventory that is no longer the one blocked (changed
    to another buyer, withdrawn) or that is void at customs (refused, cancelled) is passed over: there is nothing of it
    at customs to count.
    """
    results: dict[tuple[str, str], ShipmentResult] = {}
    puts: list[dict[str, Any]] = []
    for bk in freed:
        book = state.ledger.setdefault(bk, {})
        for ebc_code, order_no, ebp_code in state.blocked.get(bk, ()):
            key = (ebp_code, order_no)
            if key in skip or key in results:
                continue
            row = live.inventory_of(key)
            if (
                row is None
                or (row.ebc_code or "", row.order_no or "") != (ebc_code, order_no)
                or buyer_of(row.head) != bk
                or void(row)
            ):
                continue
            shipment = live.shipment(key)
            assert shipment.inventory is not None
            was = book.get((ebc_code, order_no), Decimal(0))
            assessment, put = assess_into(book, bk, shipment.inventory, shipment.order, rates, returned=row.returned)
            if put["blocked"]:
                book[(ebc_code, order_no)] = was  # still blocked: stays as it is
                continue
            results[key] = shipment_result(key, shipment, assessment, tolerance)
            puts.append(put)
    return results, puts


def _document_row(new: New) -> dict[str, Any]:
    row, head = new.row, new.doc.head
    out = {
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
        "pay_code": text(head, "payCode"),
        "pay_transaction_id": text(head, "payTransactionId"),
        "app_type": text(head, "appType"),
        "app_time": row.app_time or None,
        "app_status": text(head, "appStatus"),
        "path": row.path,
        "head": head,
        "lines": row.lines,
        "parties": row.parties,
        "is_current": new.tracked,
        "withdrawn": row.withdrawn,
        # not a column: the outbox gives the job the ordering key of the document it is forwarded after
        "after": list(new.after.key) if new.after is not None else None,
        # not a column: it replaces a version the gateway holds, never sent (the outbox settles what still goes); not a
        # withdrawal: what declares a key anew after one goes after it
        "replaces_held": new.replaces is not None and new.replaces.held and not new.replaces.withdrawn,
    }
    if (old := new.replaces) is not None and not old.withdrawn and old.message_id is not None and old.message_guid:
        # not a column, and only on a change or withdrawal: the version it replaces (message id and guid, position),
        # whose warehouse order a route to a warehouse cancels (gateway.forward.Router.order_jobs)
        out["replaces_version"] = [old.message_id, old.message_guid, old.doc_index]
    return out


def _response(
    msg: ParsedMessage, news: list[New], results: dict[tuple[str, str], ShipmentResult], live: Live
) -> dict[str, Any]:
    documents = []
    for new in news:
        shipment = None
        row = new.row
        if new.stored and (row.kind in SHIPMENT_KIND_VALUES or (new.tracked and row.kind in NAMING_KINDS)):
            if row.kind == Kind.WAYBILL:
                targets = live.holders(row) or [("", row.order_no or "")]
            else:
                targets = [row.shipment_key]
            found = results.get(targets[0])
            shipment = found.summary() if found else None
        documents.append(
            DocumentOutcome(
                index=new.doc.index,
                doc_guid=new.doc.head.get("guid", ""),
                kind=row.kind,
                keys=new.key_names(),
                outcome=new.outcome,
                shipment=shipment,
                code=new.code,
                message=new.message,
            ).as_dict()
        )
    return {
        "id": None,  # the store fills it in when it allocates it
        "guid": msg.guid,
        "message_type": msg.type.code,
        "documents": documents,
        "shipments": [r.summary(findings=True) for r in results.values()],
    }
