"""Three-document reconciliation (三单对碰) of one import or export shipment — pure, no I/O.

``reconcile(shipment) -> Outcome`` is a pure function of the shipment's current documents, so it
gives the same outcome whatever the arrival order. The store re-runs it whenever any leg
arrives, changes or is withdrawn, and stores state and findings.

State (precedence: mismatched > incomplete > matched)
    * ``mismatched`` — at least one blocking finding, even when legs are still missing: the operator
      has to act (get a leg corrected) and waiting for the missing leg will not fix it.
    * ``incomplete`` — no blocking finding, but order, payment, waybill or inventory is missing
      (:attr:`Outcome.missing`, always in that order). Legs that are present are still compared.
    * ``matched`` — all four legs present and no blocking finding (warnings may remain); a B2B export shipment (9710,
      9810) needs no 收款单 (:func:`needed_legs`).

Every finding has ``left`` = the leg that comes first in (order, payment, waybill, inventory) and
``right`` = the later one. A computed value (a sum over lines) or a line that exists on one side
only points at the document element itself (``/CEB621Message/Inventory[1]``); a missing line has
``value=None``.

What is compared (spec §6.2–6.4; single-document rules such as R1, R4, R10's field presence or
1210 ``country = 142`` belong to the rules layer and are not repeated here):

* which waybill (§6.2, a warning): a waybill names its orderNo but no ebpCode, and an orderNo is unique within a
  platform only. While two platforms' shipments use the orderNo and no inventory of that orderNo names the
  waybill, it is no platform's leg: each of those shipments whose inventory does not give it its waybill lists it in
  :attr:`Shipment.ambiguous` and gets ``recon.waybill_ambiguous`` (not blocking: the inventory naming the waybill's
  logisticsCode and logisticsNo decides, so waiting fixes it; meanwhile the waybill leg is missing).
* one leg of each kind (§6.2: an order has one payment and one inventory; a second inventory of the order is a
  duplicate): a second live payment, or a second live inventory that counts at customs (under another ebcCode; a
  refused or cancelled one does not), is listed in :attr:`Shipment.others` and gets ``recon.payment_duplicate`` or
  ``recon.inventory_duplicate`` (blocking: which one customs pairs with the order is not known, and an operator has
  to get the wrong one withdrawn). The comparisons take the payment the order names (payCode, payTransactionId),
  else the latest, and the latest inventory (the store chooses them: gateway.keystate).
* keys (§6.2, blocking): payment ebpCode + orderNo = order's; order payCode / payTransactionId
  = payment's when the order carries them; waybill orderNo = order's; inventory orderNo, ebpCode,
  ebcCode = order's; inventory logisticsCode + logisticsNo = waybill's; inventory billNo = waybill
  billNo when both carry one (R10 cross-document part; only 9610 shipments carry billNo).
* amounts (money compared after ROUND_HALF_UP to 0.01; they differ when ``|a − b| > tolerance``):
  R2 order acturalPaid = payment amountPaid (blocking); order goodsValue = Σ inventory line
  totalPrice (blocking; checked only when the lines themselves pair up and agree, so one wrong line
  price yields one finding, not two); order freight vs inventory freight and waybill insuredFee vs
  inventory insuredFee are *warnings*: §6.4 rates them medium confidence and the spec defines them
  differently (the order's freight is what the buyer was charged, the inventory's what the carrier
  actually charged).
* parties (trimmed, exact): R3 consignee, consigneeTelephone, consigneeAddress order = waybill
  (blocking); buyer = payer, order buyerName + buyerIdNumber = payment payerName + payerIdNumber
  (§6.4 high, blocking); inventory buyerName + buyerIdNumber = order's (blocking: the annual quota
  is booked against the inventory's buyer); inventory buyerTelephone = order's (warning). ID numbers
  compare case-insensitively (the check character ``X`` is written either way). An ID number (idType 1, 身份证)
  that is no GB 11643 citizen ID number — 18 characters, its check character the one its 17 digits give — is a
  warning ``recon.id_number_invalid`` on the first leg carrying it: customs' identity check (实名认证) cannot pass
  it, and a mistyped digit shows here before customs answers; a warning only, as the spec states no such rule.
* lines (R8): gnum one-to-one between order and inventory (blocking); per gnum qty (exact, no
  rounding), unit, totalPrice (money) and itemName when the inventory carries it (blocking); origin
  country (warning). ``gname`` is the customs goods name and legitimately differs from the
  platform's itemName ("面霜" vs the product title), so it is not compared; classification
  (gname/gcode) is the rules and customs' business, not reconciliation's.

An export shipment (spec §4.4: order CEB303, 收款单 CEB403, waybill CEB505, inventory CEB603; the shipment is
known by the flow of its legs, never mixed with an import one) is compared by :data:`EXPORT_COMPARISONS` instead:

* keys (§6.2 "export equivalents", blocking): 收款单 ebpCode, ebcCode, orderNo = order's; inventory orderNo,
  ebpCode, ebcCode = order's; inventory logisticsCode + logisticsNo = waybill's;
* lines (§4.1 gnum "corresponds to the inventory item numbers", §4.3 "matches the order item numbers"): gnum one
  to one, per gnum qty, unit, currency, totalPrice and itemName (blocking, as R8 for import), order goodsValue =
  Σ inventory totalPrice (blocking, as for import);
* warnings, inferred rather than stated: the 收款单 charge against the order (A.17 defines charge as the payment
  enterprise's order transaction amount without saying whether it includes freight: it agrees when it is
  goodsValue or goodsValue + freight, in the order's currency; ``recon.charge_mismatch``); order freight against
  the inventory's and waybill insuredFee against the inventory's, each only when the inventory gives a total
  (fFlag / iFlag 3) in the other side's currency; the order's orderType against the inventory's tradeMode
  (:data:`EXPORT_ORDER_TYPES`, ``recon.order_type_trade_mode``): the export order names no trade mode and the
  inventory no order type, so only the shipment can set them side by side.

No buyer = payer, consignee or tax rule: an export order names no buyer ID, and the retail-import tax is import's.
A B2B export (9710 direct, 9810 to an overseas warehouse) is complete without a 收款单 (:func:`needed_legs`).

Values that do not parse as decimals are compared as trimmed strings (the rules layer reports the
format itself); an empty or absent value on either side is not compared.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from gateway.documents import Document
from gateway.messages import SHIPMENT_KINDS, Kind

CODES: dict[str, str] = {
    "recon.payment_order_key_mismatch": "payment (CEB411) ebpCode or orderNo, or 收款单 (CEB403) ebpCode, ebcCode or "
    "orderNo, differs from the order's",
    "recon.payment_reference_mismatch": "order payCode or payTransactionId differs from the payment's",
    "recon.waybill_order_key_mismatch": "waybill (CEB511) orderNo differs from the order's",
    "recon.inventory_order_key_mismatch": "inventory (CEB621, CEB603) orderNo, ebpCode or ebcCode differs from the "
    "order's",
    "recon.inventory_waybill_key_mismatch": "inventory logisticsCode or logisticsNo differs from the waybill's",
    "recon.bill_no_mismatch": "inventory billNo differs from the waybill billNo (both given)",
    "recon.amount_paid_mismatch": "order acturalPaid differs from payment amountPaid (R2)",
    "recon.goods_value_mismatch": "order goodsValue differs from the sum of inventory line totalPrice",
    "recon.freight_mismatch": "warning: inventory freight differs from order freight",
    "recon.insured_fee_mismatch": "warning: inventory insuredFee differs from waybill insuredFee",
    "recon.consignee_mismatch": "order consignee, consigneeTelephone or consigneeAddress differs from the waybill (R3)",
    "recon.buyer_payer_mismatch": "order buyerName or buyerIdNumber differs from payment payerName or payerIdNumber",
    "recon.inventory_buyer_mismatch": "inventory buyerName or buyerIdNumber differs from the order's",
    "recon.inventory_buyer_telephone_mismatch": "warning: inventory buyerTelephone differs from the order's",
    "recon.id_number_invalid": (
        "warning: an order's or inventory's buyerIdNumber, or a payment's payerIdNumber, is no citizen ID number by "
        "GB 11643 (18 characters; the check character its 17 digits give): customs' identity check cannot pass it"
    ),
    "recon.gnum_unmatched": "an order or inventory line has no line with the same gnum on the other side (R8)",
    "recon.line_qty_mismatch": "inventory line qty differs from the order line with the same gnum",
    "recon.line_unit_mismatch": "inventory line unit differs from the order line with the same gnum",
    "recon.line_total_price_mismatch": "inventory line totalPrice differs from the order line with the same gnum",
    "recon.line_item_name_mismatch": "inventory line itemName differs from the order line with the same gnum",
    "recon.line_country_mismatch": "warning: inventory line origin country differs from the order line's",
    "recon.line_currency_mismatch": "export: inventory line currency differs from the order line with the same gnum",
    "recon.charge_mismatch": (
        "warning (export): the 收款单 (CEB403) charge is neither the order's goodsValue nor goodsValue + freight, or "
        "is in another currency than the order (spec A.17 leaves open what charge includes)"
    ),
    "recon.order_type_trade_mode": (
        "warning (export): the order's (CEB303) orderType does not fit its inventory's (CEB603) tradeMode: 9610 "
        "(general retail export) takes E (B2C order), 9710 (B2B direct export) B (B2B order), 9810 (export to an "
        "overseas warehouse) W (the warehouse's booking), 1210 (special-zone export, retail) E or W; the spec names "
        "the order types and the modes, public notices which goes with which"
    ),
    "recon.payment_duplicate": (
        "two live payments (CEB411, or 收款单 CEB403) for one shipment: the order is paired with one payment, and "
        "which one customs takes is not known; the shipment is compared with the one the order names (else the latest) "
        "until the other is withdrawn"
    ),
    "recon.inventory_duplicate": (
        "two live inventories (CEB621, CEB603) that count at customs for one shipment (the other under another "
        "ebcCode): an order has one inventory; the shipment is compared with the latest until the other is withdrawn "
        "or cancelled"
    ),
    "recon.waybill_ambiguous": (
        "warning: a waybill (CEB511) carries the shipment's orderNo, which another platform's shipment uses too, and "
        "no inventory of that orderNo names it: it is no platform's leg until an inventory naming its logisticsCode "
        "and logisticsNo decides"
    ),
}

#: Codes whose findings are warnings (``blocking=False``): they never make a shipment mismatched.
NON_BLOCKING: frozenset[str] = frozenset(
    {
        "recon.freight_mismatch",
        "recon.insured_fee_mismatch",
        "recon.inventory_buyer_telephone_mismatch",
        "recon.id_number_invalid",
        "recon.line_country_mismatch",
        "recon.waybill_ambiguous",
        "recon.charge_mismatch",
        "recon.order_type_trade_mode",
    }
)

_CENT = Decimal("0.01")


class ShipmentState(StrEnum):
    INCOMPLETE = "incomplete"  # one or more legs missing (see Outcome.missing)
    MATCHED = "matched"  # all four legs present, no blocking finding
    MISMATCHED = "mismatched"  # at least one blocking finding


@dataclass(frozen=True)
class Side:
    """One side of a finding: which document, which element, what value it holds."""

    doc: str  # message code, e.g. "CEB311"
    guid: str  # the document's head guid
    path: str  # element path inside that document's message
    value: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"doc": self.doc, "guid": self.guid, "path": self.path, "value": self.value}


@dataclass(frozen=True)
class Finding:
    code: str  # stable, documented in docs/errors.md (e.g. "recon.amount_paid_mismatch")
    field: str  # the spec's field name, e.g. "acturalPaid"
    message: str
    left: Side | None
    right: Side | None = None
    blocking: bool = True  # False: informational (e.g. full tax applies under the single-item rule)

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "field": self.field,
            "message": self.message,
            "blocking": self.blocking,
            "left": self.left.as_dict() if self.left else None,
            "right": self.right.as_dict() if self.right else None,
        }


@dataclass(frozen=True)
class Shipment:
    """The current (not withdrawn) document of each leg, or None when it has not arrived; ``ambiguous``: the waybills
    of its orderNo that could be its leg but another platform's as well (see the module's "which waybill"), and
    ``platforms`` the ebpCodes using that orderNo."""

    order: Document | None = None
    payment: Document | None = None
    waybill: Document | None = None
    inventory: Document | None = None
    ambiguous: tuple[Document, ...] = ()
    platforms: tuple[str, ...] = ()
    #: live payments and inventories beside the leg taken (``payment``, ``inventory``), in arrival order
    others: tuple[Document, ...] = ()

    def leg(self, kind: Kind) -> Document | None:
        return {
            Kind.ORDER: self.order,
            Kind.PAYMENT: self.payment,
            Kind.WAYBILL: self.waybill,
            Kind.INVENTORY: self.inventory,
        }[kind]


@dataclass(frozen=True)
class Outcome:
    state: ShipmentState
    missing: tuple[Kind, ...] = ()
    findings: tuple[Finding, ...] = field(default_factory=tuple)


def reconcile(shipment: Shipment, *, tolerance: Decimal = Decimal("0")) -> Outcome:
    """Compare the legs present in ``shipment``; ``tolerance`` bounds money differences (yuan).

    The default is exact equality at 2 decimals (§6.4: no official tolerance exists).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must not be negative, got {tolerance}")
    f = _Findings(tolerance)
    for other in shipment.others:
        _duplicate(shipment, other, f)
    first = shipment.order or shipment.payment or shipment.waybill or shipment.inventory
    if first is not None and first.type.flow == "export":
        _compare_export(shipment, f)
    else:
        _compare_import(shipment, f)
    blocking = any(x.blocking for x in f.items)
    missing = tuple(k for k in needed_legs(shipment) if shipment.leg(k) is None)
    if blocking:
        state = ShipmentState.MISMATCHED
    elif missing:
        state = ShipmentState.INCOMPLETE
    else:
        state = ShipmentState.MATCHED
    return Outcome(state=state, missing=missing, findings=tuple(f.items))


#: The export trade modes whose goods leave with no 收款单 (CEB403) before them (公告2020年第75号): a B2B direct export
#: (9710) is declared on its B2B order and waybill, its payment, settled between enterprises, off any platform or
#: not yet made; goods to an overseas warehouse (9810) are declared on the warehouse's booking (orderType W), and
#: sell abroad only after they left. The public notices and their readers list order (or booking) and waybill for
#: them, and the 收款单 only for retail export (9610) [P]. A 收款单 sent all the same is a leg like any: compared with
#: the order, and waited for before the inventory goes.
EXPORT_MODES_WITHOUT_RECEIPT: frozenset[str] = frozenset({"9710", "9810"})
#: Before its inventory says the mode, the order's type does: a B2B order (B) or a booking (W) is one of those modes'.
_ORDER_TYPES_WITHOUT_RECEIPT = frozenset({"B", "W"})
_WITHOUT_PAYMENT = tuple(k for k in SHIPMENT_KINDS if k is not Kind.PAYMENT)


def needed_legs(shipment: Shipment) -> tuple[Kind, ...]:
    """The legs the shipment is complete with (spec §4.4, §6.7): all four, but no 收款单 for an export shipment of a
    mode in :data:`EXPORT_MODES_WITHOUT_RECEIPT` with none — its inventory's tradeMode, or with no inventory yet its
    order's orderType B or W. One it has is needed like any leg."""
    if shipment.payment is not None:
        return SHIPMENT_KINDS
    inventory, order = shipment.inventory, shipment.order
    if inventory is not None and inventory.type.flow == "export":
        b2b = _text(inventory, "tradeMode") in EXPORT_MODES_WITHOUT_RECEIPT
    elif inventory is None and order is not None and order.type.flow == "export":
        b2b = _text(order, "orderType") in _ORDER_TYPES_WITHOUT_RECEIPT
    else:
        return SHIPMENT_KINDS
    return _WITHOUT_PAYMENT if b2b else SHIPMENT_KINDS


DUPLICATE_CODES = {Kind.PAYMENT: "recon.payment_duplicate", Kind.INVENTORY: "recon.inventory_duplicate"}
#: What ends a second live leg of each kind: a payment is withdrawn; an inventory customs took is cancelled.
_UNDO = {Kind.PAYMENT: "withdraw the wrong one (appType 3)",
         Kind.INVENTORY: "withdraw the wrong one (appType 3), or cancel it if customs took it already"}  # fmt: skip


def _duplicate(shipment: Shipment, other: Document, f: _Findings) -> None:
    """A second live leg of one kind: the one taken on the left, the other on the right, by the key field that tells
    them apart."""
    kind = other.type.kind
    taken = shipment.leg(kind)
    if taken is None or kind not in DUPLICATE_CODES:
        return
    keys = other.type.keys
    name = next((k for k in keys if _text(taken, k) != _text(other, k)), keys[-1])
    shown = "/".join(_text(other, k) for k in keys)
    message = (
        f"another live {kind} ({other.type.code} {shown}) stands beside the one compared here "
        f"({taken.type.code} {'/'.join(_text(taken, k) for k in keys)}): an order has one {kind}, and "
        f"which one customs pairs with it is not known; {_UNDO[kind]}"
    )
    f.add(DUPLICATE_CODES[kind], name, message, _side(taken, name), _side(other, name))


def _compare_import(shipment: Shipment, f: _Findings) -> None:
    order, payment, waybill, inventory = shipment.order, shipment.payment, shipment.waybill, shipment.inventory
    # which waybill (§6.2): a waybill of an orderNo several platforms use, decided by no inventory
    keyed = order or payment or inventory
    for w in shipment.ambiguous:
        right = _side(w, "orderNo")
        message = (
            f"waybill {_text(w, 'logisticsCode')}/{_text(w, 'logisticsNo')} carries orderNo {right.value!r}, which "
            f"platforms {', '.join(shipment.platforms)} all use, and no inventory names it: it is none of theirs "
            "until an inventory naming its logisticsCode and logisticsNo decides"
        )
        f.add("recon.waybill_ambiguous", "orderNo", message, _side(keyed, "orderNo") if keyed else None, right)
    # keys (§6.2)
    if order and payment:
        f.texts("recon.payment_order_key_mismatch", order, payment, ("ebpCode", "orderNo"))
        f.texts(
            "recon.payment_reference_mismatch",
            order,
            payment,
            [n for n in ("payCode", "payTransactionId") if _text(order, n)],
        )
    if order and waybill:
        f.texts("recon.waybill_order_key_mismatch", order, waybill, ("orderNo",))
    if order and inventory:
        f.texts("recon.inventory_order_key_mismatch", order, inventory, ("orderNo", "ebpCode", "ebcCode"))
    if waybill and inventory:
        f.texts("recon.inventory_waybill_key_mismatch", waybill, inventory, ("logisticsCode", "logisticsNo"))
        if _text(waybill, "billNo") and _text(inventory, "billNo"):
            f.texts("recon.bill_no_mismatch", waybill, inventory, ("billNo",))
    # amounts
    if order and payment:
        f.amount("recon.amount_paid_mismatch", order, "acturalPaid", payment, "amountPaid")
    if order and inventory:
        f.amount("recon.freight_mismatch", order, "freight", inventory, "freight")
    if waybill and inventory:
        f.amount("recon.insured_fee_mismatch", waybill, "insuredFee", inventory, "insuredFee")
    # parties
    if order and waybill:
        f.texts("recon.consignee_mismatch", order, waybill, ("consignee", "consigneeTelephone", "consigneeAddress"))
    if order and payment:
        f.text("recon.buyer_payer_mismatch", order, "buyerName", payment, "payerName")
        f.text("recon.buyer_payer_mismatch", order, "buyerIdNumber", payment, "payerIdNumber", fold_case=True)
    _id_numbers(((order, "buyerIdNumber"), (payment, "payerIdNumber"), (inventory, "buyerIdNumber")), f)
    if order and inventory:
        f.text("recon.inventory_buyer_mismatch", order, "buyerName", inventory, "buyerName")
        f.text("recon.inventory_buyer_mismatch", order, "buyerIdNumber", inventory, "buyerIdNumber", fold_case=True)
        f.text("recon.inventory_buyer_telephone_mismatch", order, "buyerTelephone", inventory, "buyerTelephone")
        _compare_lines(order, inventory, f)


#: GB 11643 (公民身份号码): the weights of the 17 digits, and the check character of their weighted sum mod 11.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


@functools.lru_cache(maxsize=4096)  # a shipment is reconciled again as each leg comes, its number with it
def id_number_problem(number: str) -> str | None:
    """What makes ``number`` no citizen ID number by GB 11643 alone (its form and check character), None when nothing
    does: whether such a person exists is customs' identity check to say."""
    n = number.strip()
    if len(n) != 18 or not n.isascii() or not n[:17].isdigit() or not (n[17].isdigit() or n[17] in "xX"):
        return "is not an 18-character citizen ID number (17 digits and a check digit or X)"
    expected = _ID_CHECK[sum(map(operator.mul, map(int, n[:17]), _ID_WEIGHTS)) % 11]
    if n[17].upper() != expected:
        return f"ends in {n[17]}, where its first 17 digits give the check character {expected} (GB 11643)"
    return None


def _id_numbers(fields: Iterable[tuple[Document | None, str]], f: _Findings) -> None:
    """``recon.id_number_invalid`` for each distinct ID number of the legs that is none, on the first leg with it."""
    seen: set[str] = set()
    for doc, name in fields:
        value = (doc.head.get(name) or "").strip() if doc is not None else ""
        if doc is None or not value or value.upper() in seen:
            continue
        seen.add(value.upper())
        if (problem := id_number_problem(value)) is not None:
            f.add("recon.id_number_invalid", name, f"{name} {value} {problem}: customs' identity check cannot pass it "
                  "(mistyped?)", _side(doc, name), None)  # fmt: skip


#: The export comparisons as data: (left leg, right leg, code, fields compared as text on both sides), each applied
#: when both legs are present; keys of spec §6.2's export equivalents.
EXPORT_COMPARISONS: tuple[tuple[Kind, Kind, str, tuple[str, ...]], ...] = (
    (Kind.ORDER, Kind.PAYMENT, "recon.payment_order_key_mismatch", ("ebpCode", "ebcCode", "orderNo")),
    (Kind.ORDER, Kind.INVENTORY, "recon.inventory_order_key_mismatch", ("orderNo", "ebpCode", "ebcCode")),
    (Kind.WAYBILL, Kind.INVENTORY, "recon.inventory_waybill_key_mismatch", ("logisticsCode", "logisticsNo")),
)

#: Export lines per gnum: an export sale is in any currency of the code table, per line (spec §4.1, §4.3), so the
#: line's currency is compared with its amounts; an export order line has no country.
_EXPORT_LINE_CHECKS: tuple[tuple[str, str, str], ...] = (
    ("recon.line_qty_mismatch", "qty", "number"),
    ("recon.line_unit_mismatch", "unit", "text"),
    ("recon.line_currency_mismatch", "currency", "text"),
    ("recon.line_total_price_mismatch", "totalPrice", "money"),
    ("recon.line_item_name_mismatch", "itemName", "text"),
)


def _compare_export(shipment: Shipment, f: _Findings) -> None:
    for left, right, code, names in EXPORT_COMPARISONS:
        ldoc, rdoc = shipment.leg(left), shipment.leg(right)
        if ldoc is not None and rdoc is not None:
            f.texts(code, ldoc, rdoc, names)
    order, payment, waybill, inventory = shipment.order, shipment.payment, shipment.waybill, shipment.inventory
    if order and payment:
        _compare_charge(order, payment, f)
    if order and inventory and _text(inventory, "fFlag") == "3" and _text(inventory, "fCurrency") == _text(
        order, "currency"
    ):
        f.amount("recon.freight_mismatch", order, "freight", inventory, "freight")
    if waybill and inventory and _text(inventory, "iFlag") == "3" and _text(inventory, "iCurrency") == _text(
        waybill, "currency"
    ):
        f.amount("recon.insured_fee_mismatch", waybill, "insuredFee", inventory, "insuredFee")
    if order and inventory:
        _compare_order_type(order, inventory, f)
        _compare_lines(order, inventory, f, _EXPORT_LINE_CHECKS)


#: The export order types (spec §3.6, §4.1, the 2022 text: E B2C export order, B B2B export order, W
#: overseas-warehouse booking 海外仓订仓单) each inventory trade mode (§4.3) takes. 9610 is retail to consumers; 9710
#: and 9810 are the two B2B modes of 公告2020年第75号, whose goods customs knows by the B2B order (9710) or by the
#: overseas warehouse's booking (9810); 1210 is retail from a special zone, a parcel to a buyer or a stock to an
#: overseas warehouse (the zones' 出口海外仓零售) — public notices, not the spec [P]: a warning, holding no shipment.
EXPORT_ORDER_TYPES: dict[str, str] = {"9610": "E", "9710": "B", "9810": "W", "1210": "EW"}
_ORDER_TYPE_NAMES = {"E": "B2C order", "B": "B2B order", "W": "overseas-warehouse booking"}


def _compare_order_type(order: Document, inventory: Document, f: _Findings) -> None:
    """An export order's orderType against its inventory's tradeMode (:data:`EXPORT_ORDER_TYPES`): each side's value
    the rules took; an unknown one is theirs to refuse, nothing to compare."""
    order_type, mode = _text(order, "orderType"), _text(inventory, "tradeMode")
    fits = EXPORT_ORDER_TYPES.get(mode)
    if fits is None or order_type not in _ORDER_TYPE_NAMES or order_type in fits:
        return
    expected = " or ".join(f"{t} ({_ORDER_TYPE_NAMES[t]})" for t in fits)
    f.add("recon.order_type_trade_mode", "orderType",
          f"order orderType is {order_type!r} ({_ORDER_TYPE_NAMES[order_type]}) but the inventory's tradeMode "
          f"{mode} takes {expected}", _side(order, "orderType"), _side(inventory, "tradeMode"))  # fmt: skip


def _compare_charge(order: Document, receipt: Document, f: _Findings) -> None:
    """The 收款单's charge against the order (a warning: spec A.17 does not say whether it includes freight)."""
    currency, charged = _text(order, "currency"), _text(receipt, "currency")
    if currency and charged and currency != charged:
        f.pair("recon.charge_mismatch", "currency", _side(order, "currency"), _side(receipt, "currency"), "order",
               "payment", "currency")  # fmt: skip
        return
    charge, goods = _text(receipt, "charge"), _text(order, "goodsValue")
    if not charge or not goods:
        return
    with_freight = goods
    base, freight = _decimal(goods), _decimal(_text(order, "freight") or "0")
    if base is not None and freight is not None:
        with_freight = str(base + freight)
    if f.differs("money", goods, charge) and f.differs("money", with_freight, charge):
        left, right = _side(order, "goodsValue"), _side(receipt, "charge")
        f.add("recon.charge_mismatch", "charge",
              f"payment charge is {right.value!r} but the order's goodsValue is {left.value!r} and with freight "
              f"{with_freight}", left, right)  # fmt: skip


# --- helpers ---------------------------------------------------------------------------------


def _text(doc: Document, name: str) -> str:
    return (doc.head.get(name) or "").strip()


def _side(doc: Document, name: str) -> Side:
    return Side(doc.type.code, doc.head.get("guid", ""), doc.field_path(name), doc.head.get(name))


def _line_side(doc: Document, index: int, name: str) -> Side:
    return Side(doc.type.code, doc.head.get("guid", ""), doc.line_path(index, name), doc.lines[index].get(name))


def _doc_side(doc: Document, value: str | None) -> Side:
    """A computed value (or the absence of a line) belongs to the document element as a whole."""
    return Side(doc.type.code, doc.head.get("guid", ""), doc.path, value)


def _decimal(raw: str) -> Decimal | None:
    try:
        d = Decimal(raw)
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _cents(raw: str) -> Decimal | None:
    """Money at 2 decimals (ROUND_HALF_UP), or None when ``raw`` is no usable amount."""
    d = _decimal(raw)
    try:
        return None if d is None else d.quantize(_CENT, rounding=ROUND_HALF_UP)
    except InvalidOperation:  # too many digits for the context: the rules layer rejects it anyway
        return None


def _leg(doc: Document) -> str:
    return str(doc.type.kind)


def _describe(left: Side, right: Side, lname: str, rname: str, lleg: str, rleg: str) -> str:
    return f"{lleg} {lname} is {left.value!r} but {rleg} {rname} is {right.value!r}"


class _Findings:
    def __init__(self, tolerance: Decimal) -> None:
        self.tolerance = tolerance
        self.items: list[Finding] = []

    def add(self, code: str, field_name: str, message: str, left: Side | None, right: Side | None) -> None:
        self.items.append(Finding(code, field_name, message, left, right, blocking=code not in NON_BLOCKING))

    def pair(self, code: str, field_name: str, left: Side, right: Side, lleg: str, rleg: str, rname: str) -> None:
        self.add(code, field_name, _describe(left, right, field_name, rname, lleg, rleg), left, right)

    def text(
        self, code: str, ldoc: Document, lname: str, rdoc: Document, rname: str, *, fold_case: bool = False
    ) -> None:
        a, b = (ldoc.head.get(lname) or "").strip(), (rdoc.head.get(rname) or "").strip()  # _text, inlined: hot
        # absent required fields are the rules layer's finding, not a mismatch
        if a and b and a != b and not (fold_case and a.upper() == b.upper()):
            self.pair(code, lname, _side(ldoc, lname), _side(rdoc, rname), _leg(ldoc), _leg(rdoc), rname)

    def texts(self, code: str, ldoc: Document, rdoc: Document, names: Iterable[str]) -> None:
        for name in names:
            self.text(code, ldoc, name, rdoc, name)

    def differs(self, kind: str, a: str, b: str) -> bool:
        """Compare two trimmed, non-empty values as ``money``, ``number`` (exact) or ``text``."""
        if a == b:  # the same text is the same amount or number: most legs agree, and parsing costs
            return False
        if kind == "money":
            ca, cb = _cents(a), _cents(b)
            if ca is not None and cb is not None:
                return abs(ca - cb) > self.tolerance
        elif kind == "number":
            da, db = _decimal(a), _decimal(b)
            if da is not None and db is not None:
                return da != db
        return a != b

    def amount(self, code: str, ldoc: Document, lname: str, rdoc: Document, rname: str) -> None:
        a, b = _text(ldoc, lname), _text(rdoc, rname)
        if a and b and self.differs("money", a, b):
            self.pair(code, lname, _side(ldoc, lname), _side(rdoc, rname), _leg(ldoc), _leg(rdoc), rname)


def gnum_key(raw: str | None) -> str:
    s = (raw or "").strip()
    # "1", "01" and "+1" are the same item number (xs:int); anything else keys on its text
    digits = s[1:] if s[:1] == "+" else s
    return (digits.lstrip("0") or "0") if digits.isascii() and digits.isdigit() else s


def _group(doc: Document) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, line in enumerate(doc.lines):
        groups.setdefault(gnum_key(line.get("gnum")), []).append(i)
    return groups


def _compare_lines(
    order: Document, inventory: Document, f: _Findings, checks: tuple[tuple[str, str, str], ...] | None = None
) -> None:
    """R8: pair lines by gnum (the k-th occurrence with the k-th, so duplicates stay visible)."""
    ogroups, igroups = _group(order), _group(inventory)
    pairs: list[tuple[int, int]] = []
    order_only: list[int] = []
    inventory_only: list[int] = []
    for key, olines in ogroups.items():
        ilines = igroups.get(key, [])
        pairs.extend(zip(olines, ilines, strict=False))
        order_only.extend(olines[len(ilines) :])
        inventory_only.extend(ilines[len(olines) :])
    for key, ilines in igroups.items():
        if key not in ogroups:
            inventory_only.extend(ilines)
    for oi in sorted(order_only):
        left = _line_side(order, oi, "gnum")
        f.add(
            "recon.gnum_unmatched",
            "gnum",
            f"order line gnum {left.value!r} has no inventory line with that gnum",
            left,
            _doc_side(inventory, None),
        )
    for ii in sorted(inventory_only):
        right = _line_side(inventory, ii, "gnum")
        f.add(
            "recon.gnum_unmatched",
            "gnum",
            f"inventory line gnum {right.value!r} has no order line with that gnum",
            _doc_side(order, None),
            right,
        )
    totals_agree = not order_only and not inventory_only
    for oi, ii in pairs:
        gnum = (order.lines[oi].get("gnum") or "").strip()
        for code, name, kind in checks or _LINE_CHECKS:
            a, b = (order.lines[oi].get(name) or "").strip(), (inventory.lines[ii].get(name) or "").strip()
            if not a or not b or not f.differs(kind, a, b):
                continue  # itemName is optional in the inventory: compared only when both carry it
            left, right = _line_side(order, oi, name), _line_side(inventory, ii, name)
            f.add(code, name, f"gnum {gnum}: " + _describe(left, right, name, name, "order", "inventory"), left, right)
            if name == "totalPrice":
                totals_agree = False
    if totals_agree:
        _compare_goods_value(order, inventory, f)


#: Per gnum: (code, field, how to compare). qty is exact (it is no money); the rest as documented.
_LINE_CHECKS: tuple[tuple[str, str, str], ...] = (
    ("recon.line_qty_mismatch", "qty", "number"),
    ("recon.line_unit_mismatch", "unit", "text"),
    ("recon.line_total_price_mismatch", "totalPrice", "money"),
    ("recon.line_item_name_mismatch", "itemName", "text"),
    ("recon.line_country_mismatch", "country", "text"),
)


def _compare_goods_value(order: Document, inventory: Document, f: _Findings) -> None:
    goods_value = _text(order, "goodsValue")
    prices = [_decimal((line.get("totalPrice") or "").strip()) for line in inventory.lines]
    if not goods_value or not prices or any(p is None for p in prices):
        return  # unreadable prices are the rules layer's finding
    total = sum((p for p in prices if p is not None), Decimal(0))
    if f.differs("money", goods_value, str(total)):
        left, right = _side(order, "goodsValue"), _doc_side(inventory, str(total))
        f.add(
            "recon.goods_value_mismatch",
            "goodsValue",
            f"order goodsValue is {left.value!r} but the inventory lines' totalPrice sum to {right.value!r}",
            left,
            right,
        )
