"""The message-type registry: what each CEB message is, as data.

Every part of the pipeline (schema validation, business rules, persistence, reconciliation,
receipts) looks a message up here by its root element instead of having a class per type.
Field names are the spec's own (orderNo, ebpCode, logisticsNo ...); see the CEB spec §1–§5.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

CEB_NS = "http://www.chinaport.gov.cn/ceb"
DXP_NS = "http://www.chinaport.gov.cn/dxp"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"

#: Schemas live in the repository's top-level ``schemas/`` folder; CBEC_SCHEMA_DIR overrides it
#: for installs that keep them elsewhere.
SCHEMA_DIR = Path(os.environ.get("CBEC_SCHEMA_DIR") or Path(__file__).resolve().parent.parent / "schemas")

IMPORT_SCHEMA = "ceb-import-202205.xsd"
EXPORT_SCHEMA = "ceb-export-202205.xsd"
DXP_SCHEMA = "dxp-terminal-202205.xsd"


class Direction(StrEnum):
    DECLARATION = "declaration"  # enterprise -> customs
    RECEIPT = "receipt"  # customs / E-Port -> enterprise


class Kind(StrEnum):
    """The business role of a document; reconciliation works on kinds, not message codes."""

    ORDER = "order"
    PAYMENT = "payment"
    WAYBILL = "waybill"
    WAYBILL_STATUS = "waybill_status"
    INVENTORY = "inventory"
    CANCEL = "cancel"
    REFUND = "refund"
    DELIVERY = "delivery"
    TAX = "tax"
    TAX_STATUS = "tax_status"
    # export transport (spec §4.4 step 3, Appendix A.20–A.28): not legs of a shipment; their lists name waybills
    ARRIVAL = "arrival"  # CEB507 运抵单
    DEPARTURE = "departure"  # CEB509 离境单
    MANIFEST = "manifest"  # CEB607 清单总分单: B/L, voyage and bags of the parcels' waybills / inventories
    SUMMARY = "summary"  # CEB701 汇总申请单: B-type export inventories consolidated into a customs declaration
    SUMMARY_RESULT = "summary_result"  # CEB792 汇总结果单: customs' declaration made of a summary application
    REFUND_TALLY = "refund_tally"  # CEB215 出口退运理货明细单: the site operator's tally of a returned export parcel
    RECEIPT = "receipt"
    FORMAT_RECEIPT = "format_receipt"


class Signature(StrEnum):
    REQUIRED = "required"  # the XSD itself requires ds:Signature
    ON_DECLARE = "on_declare"  # XSD optional, but required when appStatus = 2
    OPTIONAL = "optional"
    NONE = "none"


@dataclass(frozen=True)
class MessageType:
    code: str  # "CEB311"
    document: str  # business element under the root: "Order"
    head: str | None  # head element inside the document, or None when fields sit in the document
    lines: str | None  # repeated item element inside the document
    kind: Kind
    direction: Direction
    keys: tuple[str, ...]  # business key fields of one document (spec §6.2); stored as two (stored_key)
    signature: Signature
    receipt_for: str | None = None  # receipts: the code of the declaration they answer
    flow: str = "import"
    schema: str = IMPORT_SCHEMA
    max_documents: int | None = 100  # None: unbounded (CEB816/818)
    # Forwarded in one order with the documents of this type that have the same key (gateway.forward.ordering_key):
    # a cancel or refund of an inventory never reaches customs before the inventory itself.
    orders_with: str | None = None
    # The documents of other types this one names, and the fields (the same names on both sides) that name them:
    # (("CEB303", ("ebpCode", "orderNo")), ...). Export only for now: the import joins live in gateway.reconcile.
    refers_to: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # The head fields naming who declares a document of this type (spec §1.1's direction, §4.4's steps): an API key
    # sends, changes or withdraws one only holding one of these codes (gateway.auth.document_declarants) — the payment
    # company its payment, not the platform's order that names it in payCode; reading goes by every party field.
    # Empty: any party's (a customs message posted as a declaration is only recorded).
    declarants: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled as its code (gateway.ingestlink): the registry's one instance on the other side."""
        return (_registered, (self.code,))

    def stored_key(self, values: Sequence[str]) -> tuple[str, str]:
        """The key as documents.key1 / key2 keep it: the first field, and the others joined by :data:`KEY_SEP` (a
        split transport message's copNo and msgSeqNo); ``values`` are the key fields' (trimmed) values in order.
        An integer field (:data:`INTEGER_KEYS`) is kept as the number: a declaration's and a receipt's alike."""
        if not values:
            return ("", "")
        if self.integer_keys:
            values = [integer_key(v) if k in INTEGER_KEYS else v for k, v in zip(self.keys, values, strict=False)]
        return (values[0], KEY_SEP.join(values[1:]))

    @cached_property
    def integer_keys(self) -> bool:
        """Whether a key field is an integer (:data:`INTEGER_KEYS`); known once, as stored_key asks for every
        document."""
        return not INTEGER_KEYS.isdisjoint(self.keys)

    def key_values(self, values: Sequence[str]) -> tuple[str, ...]:
        """The key fields' values, in order, from the stored (key1, key2) or from the fields themselves."""
        if len(self.keys) > 2 and len(values) == 2:
            return (values[0], *values[1].split(KEY_SEP, len(self.keys) - 2))
        return tuple(values)

    @property
    def root(self) -> str:
        return f"{self.code}Message"

    @property
    def tag(self) -> str:
        """Clark-notation tag of the root element."""
        return f"{{{CEB_NS}}}{self.root}"


#: Joins the key fields past the first into documents.key2 (MessageType.stored_key). It cannot occur in XML text,
#: and it is the separator of the store's key locks (gateway.keystate.SEP), so a lock on the stored key and one on
#: the fields are the same.
KEY_SEP = "\x1f"

#: The key fields that are numbers (xs:int): msgSeqNo, the part of a split message, which the schema lets be written
#: "01" as well as "1" (and customs' receipt answers as it pleases). MessageType.stored_key keeps its canonical form.
INTEGER_KEYS = frozenset({"msgSeqNo"})
_INTEGER = re.compile(r"\+?0*([0-9]+)")


def integer_key(value: str) -> str:
    """``value`` as the key keeps an integer field: without a sign or leading zeros ("+01" -> "1"); a value that is
    no non-negative integer (the rules refuse it) as it is."""
    m = _INTEGER.fullmatch(value)
    return m.group(1) if m else value


_D, _R = Direction.DECLARATION, Direction.RECEIPT
#: An inventory and what cancels, returns or summarises it: its declaring agent (or customs broker), and the
#: e-commerce enterprise whose agent that is (the seller, which may send it through the gateway, signed by the agent's
#: key: a JSON declaration).
_AGENT = ("agentCode", "ebcCode")
_X, _XSD = "export", EXPORT_SCHEMA

MESSAGE_TYPES: tuple[MessageType, ...] = (
    # --- import declarations -------------------------------------------------------------
    MessageType("CEB311", "Order", "OrderHead", "OrderList", Kind.ORDER, _D,
                ("ebpCode", "orderNo"), Signature.OPTIONAL, declarants=("ebpCode", "ebcCode")),
    MessageType("CEB411", "Payment", "PaymentHead", None, Kind.PAYMENT, _D,
                ("payCode", "payTransactionId"), Signature.OPTIONAL, declarants=("payCode",)),
    MessageType("CEB511", "Logistics", "LogisticsHead", None, Kind.WAYBILL, _D,
                ("logisticsCode", "logisticsNo"), Signature.OPTIONAL, declarants=("logisticsCode",)),
    MessageType("CEB513", "LogisticsStatus", None, None, Kind.WAYBILL_STATUS, _D,
                ("logisticsCode", "logisticsNo"), Signature.OPTIONAL, declarants=("logisticsCode",)),
    MessageType("CEB621", "Inventory", "InventoryHead", "InventoryList", Kind.INVENTORY, _D,
                ("ebcCode", "orderNo"), Signature.REQUIRED, declarants=_AGENT),
    MessageType("CEB623", "InvtCancel", None, None, Kind.CANCEL, _D,
                ("ebcCode", "orderNo"), Signature.REQUIRED, orders_with="CEB621", declarants=_AGENT),
    MessageType("CEB625", "InvtRefund", "InvtRefundHead", "InvtRefundList", Kind.REFUND, _D,
                ("ebcCode", "orderNo"), Signature.REQUIRED, orders_with="CEB621", declarants=_AGENT),
    MessageType("CEB711", "Delivery", "DeliveryHead", "DeliveryList", Kind.DELIVERY, _D,
                ("operatorCode", "billNo"), Signature.REQUIRED, max_documents=1, declarants=("operatorCode",)),
    # --- import receipts and customs-originated messages ----------------------------------
    MessageType("CEB312", "OrderReturn", None, None, Kind.RECEIPT, _R,
                ("ebpCode", "orderNo"), Signature.NONE, receipt_for="CEB311"),
    MessageType("CEB412", "PaymentReturn", None, None, Kind.RECEIPT, _R,
                ("payCode", "payTransactionId"), Signature.NONE, receipt_for="CEB411"),
    MessageType("CEB512", "LogisticsReturn", None, None, Kind.RECEIPT, _R,
                ("logisticsCode", "logisticsNo"), Signature.NONE, receipt_for="CEB511"),
    MessageType("CEB514", "LogisticsStatusReturn", None, None, Kind.RECEIPT, _R,
                ("logisticsCode", "logisticsNo"), Signature.NONE, receipt_for="CEB513"),
    MessageType("CEB622", "InventoryReturn", None, None, Kind.RECEIPT, _R,
                ("agentCode", "copNo"), Signature.NONE, receipt_for="CEB621"),
    MessageType("CEB624", "InvtCancelReturn", None, None, Kind.RECEIPT, _R,
                ("agentCode", "copNo"), Signature.NONE, receipt_for="CEB623"),
    MessageType("CEB626", "InvtRefundReturn", None, None, Kind.RECEIPT, _R,
                ("agentCode", "copNo"), Signature.NONE, receipt_for="CEB625"),
    MessageType("CEB712", "DeliveryReturn", None, None, Kind.RECEIPT, _R,
                ("operatorCode", "copNo"), Signature.NONE, receipt_for="CEB711"),
    MessageType("CEB816", "Tax", "TaxHeadRd", "TaxListRd", Kind.TAX, _R,
                ("invtNo", "taxNo"), Signature.NONE, max_documents=None),
    MessageType("CEB818", "Tax", "TaxHeadStatus", None, Kind.TAX_STATUS, _R,
                ("invtNo", "taxNo"), Signature.NONE, max_documents=None),
    MessageType("CEB900", "MessageReturn", None, None, Kind.FORMAT_RECEIPT, _R,
                ("oriCopMsgId",), Signature.NONE, max_documents=1),
    # --- export declarations (spec §4, §6.2 "export equivalents"; §2.7: 603 and 605 are signed when declared) --
    MessageType("CEB303", "Order", "OrderHead", "OrderList", Kind.ORDER, _D,
                ("ebpCode", "orderNo"), Signature.OPTIONAL, flow=_X, schema=_XSD, declarants=("ebpCode", "ebcCode")),
    MessageType("CEB403", "Receipts", None, None, Kind.PAYMENT, _D,
                ("ebcCode", "orderNo"), Signature.OPTIONAL, flow=_X, schema=_XSD,
                refers_to=(("CEB303", ("ebcCode", "orderNo")),), declarants=("ebcCode", "payCode")),
    MessageType("CEB505", "Logistics", None, None, Kind.WAYBILL, _D,
                ("logisticsCode", "logisticsNo"), Signature.OPTIONAL, flow=_X, schema=_XSD,
                declarants=("logisticsCode",)),
    MessageType("CEB603", "Inventory", "InventoryHead", "InventoryList", Kind.INVENTORY, _D,
                ("agentCode", "copNo"), Signature.ON_DECLARE, flow=_X, schema=_XSD,
                refers_to=(("CEB303", ("ebpCode", "orderNo")), ("CEB403", ("ebcCode", "orderNo")),
                           ("CEB505", ("logisticsCode", "logisticsNo"))), declarants=_AGENT),
    MessageType("CEB605", "InvtCancel", None, None, Kind.CANCEL, _D,
                ("agentCode", "copNo"), Signature.ON_DECLARE, flow=_X, schema=_XSD,
                refers_to=(("CEB603", ("invtNo",)),), declarants=_AGENT),
    # --- export transport (spec §4.4 step 3, A.20/A.22/A.27): keyed by the sender's code, its copNo and the part
    # (msgSeqNo: a long list goes in parts of one copNo, 1..msgCount), as their receipts (CEB508/510/608, §5.1)
    # answer them; §2.7: 507 and 607 are signed when declared, 509 "required" in the header table (treated as when
    # declared). Their lists name waybills (logisticsNo; 607 also invtNo).
    MessageType("CEB507", "Arrival", "ArrivalHead", "ArrivalList", Kind.ARRIVAL, _D,
                ("operatorCode", "copNo", "msgSeqNo"), Signature.ON_DECLARE, flow=_X, schema=_XSD,
                declarants=("operatorCode",)),
    MessageType("CEB509", "Departure", "DepartureHead", "DepartureList", Kind.DEPARTURE, _D,
                ("logisticsCode", "copNo", "msgSeqNo"), Signature.ON_DECLARE, flow=_X, schema=_XSD,
                declarants=("logisticsCode",)),
    MessageType("CEB607", "WayBill", "WayBillHead", "WayBillList", Kind.MANIFEST, _D,
                ("agentCode", "copNo", "msgSeqNo"), Signature.ON_DECLARE, flow=_X, schema=_XSD,
                declarants=("agentCode",)),
    # --- export receipts (spec §5.1, Appendix A.16, A.18, A.19, A.21, A.23, A.24, A.26, A.28) ---------------
    MessageType("CEB304", "OrderReturn", None, None, Kind.RECEIPT, _R,
                ("ebpCode", "orderNo"), Signature.NONE, receipt_for="CEB303", flow=_X, schema=_XSD),
    MessageType("CEB404", "ReceiptsReturn", None, None, Kind.RECEIPT, _R,
                ("ebcCode", "orderNo"), Signature.NONE, receipt_for="CEB403", flow=_X, schema=_XSD),
    MessageType("CEB506", "LogisticsReturn", None, None, Kind.RECEIPT, _R,
                ("logisticsCode", "logisticsNo"), Signature.NONE, receipt_for="CEB505", flow=_X, schema=_XSD),
    MessageType("CEB604", "InventoryReturn", None, None, Kind.RECEIPT, _R,
                ("agentCode", "copNo"), Signature.NONE, receipt_for="CEB603", flow=_X, schema=_XSD),
    MessageType("CEB606", "InvtCancelReturn", None, None, Kind.RECEIPT, _R,
                ("agentCode", "copNo"), Signature.NONE, receipt_for="CEB605", flow=_X, schema=_XSD),
    MessageType("CEB508", "ArrivalReturn", None, None, Kind.RECEIPT, _R,
                ("operatorCode", "copNo", "msgSeqNo"), Signature.NONE, receipt_for="CEB507", flow=_X, schema=_XSD),
    MessageType("CEB510", "DepartureReturn", None, None, Kind.RECEIPT, _R,
                ("logisticsCode", "copNo", "msgSeqNo"), Signature.NONE, receipt_for="CEB509", flow=_X, schema=_XSD),
    MessageType("CEB608", "WayBillReturn", None, None, Kind.RECEIPT, _R,
                ("agentCode", "copNo", "msgSeqNo"), Signature.NONE, receipt_for="CEB607", flow=_X, schema=_XSD),
    # --- export summary declaration (汇总申报, spec §4.4 step 4, Appendix A.29–A.31) ---------------------------
    # CEB701 names the B-type inventories (statisticsFlag B) to consolidate by their invtNo, one SummaryApplyList
    # each; signed when declared (§2.7). Its key is the agent's copNo and the part, as the export transport
    # messages': a long application goes in parts of one copNo (msgSeqNo 1..msgCount), and CEB702 answers copNo and
    # msgSeqNo (A.30, §5.1). CEB792 comes from customs unasked, like a tax bill: one SummaryResult per customs
    # declaration (declSeqNo) of a summary application (sumNo).
    MessageType("CEB701", "SummaryApply", "SummaryApplyHead", "SummaryApplyList", Kind.SUMMARY, _D,
                ("agentCode", "copNo", "msgSeqNo"), Signature.ON_DECLARE, flow=_X, schema=_XSD,
                declarants=(*_AGENT, "declAgentCode")),
    MessageType("CEB702", "SummaryReturn", None, None, Kind.RECEIPT, _R,
                ("agentCode", "copNo", "msgSeqNo"), Signature.NONE, receipt_for="CEB701", flow=_X, schema=_XSD),
    MessageType("CEB792", "SummaryResult", "SummaryResultHead", "SummaryResultList", Kind.SUMMARY_RESULT, _R,
                ("sumNo", "declSeqNo"), Signature.NONE, flow=_X, schema=_XSD),
    # --- retail export returns (零售出口退货, 公告2020年第44号; spec §4.4 step 5, Appendix A.32–A.35) ------------
    # CEB213 returns goods of an export inventory, which it names by the invtNo customs gave it (as a CEB605 does);
    # keyed by its agentCode and coElNo, as its receipt CEB214 answers it. CEB215 is the supervision site operator's
    # tally of a returned parcel (its waybill), keyed by operatorCode and coElNo as CEB216 answers it; it joins no
    # shipment and waits for no return (the operator tallies what arrives). §2.7: both optionally signed.
    MessageType("CEB213", "InvtRefund", "InvtRefundHead", "InvtRefundList", Kind.REFUND, _D,
                ("agentCode", "coElNo"), Signature.OPTIONAL, flow=_X, schema=_XSD,
                refers_to=(("CEB603", ("invtNo",)),), declarants=_AGENT),
    MessageType("CEB215", "InvtRefundDetail", None, None, Kind.REFUND_TALLY, _D,
                ("operatorCode", "coElNo"), Signature.OPTIONAL, flow=_X, schema=_XSD, declarants=("operatorCode",)),
    MessageType("CEB214", "RefundReturn", None, None, Kind.RECEIPT, _R,
                ("agentCode", "coElNo"), Signature.NONE, receipt_for="CEB213", flow=_X, schema=_XSD),
    MessageType("CEB216", "InvtRefundDetailReturn", None, None, Kind.RECEIPT, _R,
                ("operatorCode", "coElNo"), Signature.NONE, receipt_for="CEB215", flow=_X, schema=_XSD),
)

BY_ROOT: dict[str, MessageType] = {t.root: t for t in MESSAGE_TYPES}
BY_CODE: dict[str, MessageType] = {t.code: t for t in MESSAGE_TYPES}
BY_TAG: dict[str, MessageType] = {t.tag: t for t in MESSAGE_TYPES}

#: The flows of the registry: every message type of either is taken in, reconciled and forwarded (an export shipment
#: is reconciled apart from any import one: gateway.keystate, state.flow_conflict).
FLOWS: frozenset[str] = frozenset(t.flow for t in MESSAGE_TYPES)

#: The four legs of a shipment, in the order the spec lists them: order, payment (收款单 for export), waybill,
#: inventory.
SHIPMENT_KINDS: tuple[Kind, ...] = (Kind.ORDER, Kind.PAYMENT, Kind.WAYBILL, Kind.INVENTORY)

#: The export transport messages' kinds (CEB507/509/607): no legs; their lists name the parcels' waybills.
TRANSPORT_KINDS: tuple[Kind, ...] = (Kind.ARRIVAL, Kind.DEPARTURE, Kind.MANIFEST)
#: The kinds whose lists name parcels' waybills under the head's logisticsCode: the export transport messages and
#: the import supervision site's 入库明细单 (CEB711, spec A.11): the parcels unloaded into the site under one B/L. A
#: shipment shows those naming its waybill; to a key that is no party of one, only the lines naming that waybill.
WAYBILL_LIST_KINDS: tuple[Kind, ...] = (*TRANSPORT_KINDS, Kind.DELIVERY)

#: The message type of each leg per flow (``LEGS["export"][Kind.WAYBILL]`` is "CEB505"): a leg joins only the legs of
#: its own flow (a waybill the inventory naming its logisticsCode and logisticsNo, when both flows share one).
LEGS: dict[str, dict[Kind, str]] = {
    flow: {t.kind: t.code for t in MESSAGE_TYPES if t.flow == flow and t.kind in SHIPMENT_KINDS} for flow in FLOWS
}
assert all(len(legs) == len(SHIPMENT_KINDS) for legs in LEGS.values()), "a flow lacks a leg, or has one twice"


def _registered(code: str) -> MessageType:
    return BY_CODE[code]


def lookup(root_or_code: str) -> MessageType | None:
    """Find a type by root element name (``CEB311Message``), code (``CEB311``) or Clark tag."""
    return BY_ROOT.get(root_or_code) or BY_CODE.get(root_or_code) or BY_TAG.get(root_or_code)
