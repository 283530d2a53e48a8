"""Customs' electronic tax bills (CEB816 电子税单) and their status changes (CEB818), spec A.13/A.14, §3.6, §6.2,
§7 — pure, no I/O.

Customs sends the withholding agent a tax bill per released inventory: the three taxes it assessed (tariff, VAT,
consumption tax) with a taxNo and a status, 1 generated / 2 consolidated (已汇总) / 3 void; CEB818 moves the status
later (and names the payment slip, entDutyNo). They come in at ``POST /v1/receipts`` (and the inbox poller) like
receipts and are stored the same way: one ``receipts`` row per Tax element, once (a re-delivery is a duplicate),
the tax status as its returnStatus and the note as its returnInfo.

* **Matching** (§6.2): a bill belongs to the inventory (CEB621) whose customs invtNo it names — the number customs'
  receipts taught (documents.invt_no) — and that carries every enterprise code the bill names (:data:`PARTY_FIELDS`,
  in the inventory's head by the same names), as a receipt found by anything but its business key must
  (gateway.receipts.Correlation). A bill that matches nothing is kept ``unmatched`` and tried again when it is
  delivered again, as receipts are.
* **State** (:func:`apply`, :func:`fold`): per (inventory, taxNo) the status moves forward by returnTime, and void is
  final: a late older CEB818 does not undo a newer one, and nothing undoes a void. The amounts are the latest
  CEB816's. The state is a maximum over the records, so it is the same whatever order they arrive in.
* **Comparison** (:func:`compare`): each tax of the bill beside the gateway's estimate of the inventory
  (:func:`estimate`); a difference above ¥0.01 in any of the three is a finding ``tax.bill_differs`` with both
  values. The estimate is the one for the inventory as released: a buyer's annual use does not enter (customs
  releases nothing over the annual limit), the single-item full rate does.
* **A return** (CEB625) customs concluded (CEB626 399) within the return window is tax-free (spec §6.5, 海关总署公告
  2018年第194号: 相应税款不予征收): the estimate is then that of the goods kept (gateway.tax.after_return), as a bill
  customs corrected for it would be. Of the return's versions customs concluded (:class:`Return`; a change replaces
  the one before, a withdrawal leaves none), the one that counts is the latest concluded before the bill's
  consolidation (:func:`return_for`): customs settles the bill when the window closes and, as far as the spec says,
  corrects no consolidated bill ([U]: no message for a corrected bill is specified; the sandbox's is a CEB816 of the
  same taxNo). Until the consolidation comes the gateway cannot tell when the window closed (§6.5 [U]): a concluded
  return counts. A void bill levies nothing: it is compared with nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from lxml import etree

from gateway import tax
from gateway.documents import Document, extract
from gateway.messages import BY_CODE, MessageType
from gateway.receipts import Correlation, ReceiptRecord
from gateway.reconcile import Finding, Side

CODES: dict[str, str] = {
    "tax.bill_differs": "warning: customs' tax bill (CEB816) differs from the gateway's estimate of the inventory by "
    "more than ¥0.01 in customsTax, valueAddedTax or consumptionTax (both values shown)",
}

TAX_TYPES = frozenset({"CEB816", "CEB818"})
STATUS_NAMES: dict[str, str] = {"1": "generated", "2": "consolidated", "3": "void"}
CONSOLIDATED = "2"
VOID = "3"
#: The enterprise codes a tax bill may name that its inventory's head carries by the same names: a bill is matched
#: only to an inventory that agrees with every one it names (the receipts' rule, gateway.receipts.PARTY_FIELDS).
PARTY_FIELDS = ("ebcCode", "agentCode", "logisticsCode", "assureCode")
TAXES = ("customsTax", "valueAddedTax", "consumptionTax")
#: Customs and the gateway may round a cent apart (spec §7.2 leaves the rounding open): beyond it is a difference.
TOLERANCE = Decimal("0.01")

_INVENTORY = "CEB621"
_OWN_FIELDS = frozenset({"guid", "returnTime", "status", "note"})  # the record's own columns, not keys


def status_name(status: str | None) -> str | None:
    return None if status is None else STATUS_NAMES.get(status.strip(), "unknown tax status")


# --- reading ---------------------------------------------------------------------------------------------


def records(root: etree._Element, mtype: MessageType) -> list[ReceiptRecord]:
    """Every Tax element of a parsed CEB816/818 as a receipt record: the tax status as its returnStatus, the note
    as its returnInfo, every other head field a key (the amounts too: a corrected bill is another record)."""
    out = []
    for doc in extract(root, mtype).documents:
        head = {name: value.strip() for name, value in doc.head.items()}
        out.append(
            ReceiptRecord(
                message_type=mtype.code,
                root_guid=root.get("guid", ""),
                index=doc.index,
                guid=head.get("guid", ""),
                keys={n: v for n, v in head.items() if n not in _OWN_FIELDS and v},
                return_status=head.get("status", ""),
                return_time=head.get("returnTime", ""),
                return_info=doc.head.get("note", ""),
                path=doc.path,
            )
        )
    return out


def from_row(row: Mapping[str, Any]) -> ReceiptRecord:
    """A stored ``receipts`` row of a tax bill as its record again."""
    code = row["message_type"]
    return ReceiptRecord(
        message_type=code,
        root_guid=row.get("root_guid") or "",
        index=row["element_index"],
        guid=row.get("doc_guid") or "",
        keys=dict(row["keys"] or {}),
        return_status=row["return_status"],
        return_time=row["return_time"],
        return_info=row.get("return_info") or "",
        path=f"/{code}Message/Tax[{row['element_index']}]",
    )


def correlation(record: ReceiptRecord) -> Correlation:
    """How to find the inventory of a bill: its invtNo, with every party it names in agreement (no key, guid or
    copNo: customs made the bill, it echoes nothing of the declaration)."""
    parties = tuple((f, v) for f in PARTY_FIELDS if (v := record.keys.get(f)))
    return Correlation(_INVENTORY, "", parties=parties, invt_no=record.keys.get("invtNo") or None)


# --- state -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaxBill:
    """A tax bill in force: its status (with the returnTime that set it) and the latest CEB816's amounts."""

    invt_no: str
    tax_no: str
    status: str
    status_time: str
    ent_duty_no: str | None = None
    ent_duty_time: str = ""
    amounts: tuple[Decimal, Decimal, Decimal] | None = None  # customsTax, valueAddedTax, consumptionTax
    amounts_time: str = ""
    guid: str = ""  # of the CEB816 whose amounts these are
    path: str = ""  # its TaxHeadRd element in its message
    #: the returnTime of its consolidation (status 2; the earliest, should customs send it twice): the return window
    #: closed then, and a return concluded later changes the bill no more ("" while none came). Not compared: a
    #: status record that sets it alone (a consolidation after the void, or older than the one in force) moves the
    #: bill no more than before — its intake's outcome stays ``stale``
    consolidated_at: str = field(default="", compare=False)

    @property
    def total(self) -> Decimal | None:
        return None if self.amounts is None else sum(self.amounts, Decimal(0))

    @property
    def void(self) -> bool:
        return self.status == VOID


def _status_key(status: str, time: str) -> tuple[bool, str, str]:
    # void above everything (final); then the later returnTime; the higher status breaks a tie
    return (status == VOID, time, status)


def _amounts(keys: Mapping[str, str]) -> tuple[Decimal, Decimal, Decimal] | None:
    try:
        values = tuple(Decimal(keys.get(name) or "0") for name in TAXES)
    except InvalidOperation:  # the schema and the rules let no such bill in
        return None
    return values[0], values[1], values[2]


def apply(bill: TaxBill | None, record: ReceiptRecord) -> TaxBill:
    """The bill after one CEB816/818 record of it (``bill`` None: the first)."""
    keys = record.keys
    status, time = record.return_status.strip(), record.return_time.strip()
    if bill is None:
        bill = TaxBill(keys.get("invtNo", ""), keys.get("taxNo", ""), status, time)
    elif _status_key(status, time) > _status_key(bill.status, bill.status_time):
        bill = _replace(bill, status=status, status_time=time)
    if status == CONSOLIDATED and time and (not bill.consolidated_at or time < bill.consolidated_at):
        bill = _replace(bill, consolidated_at=time)
    duty = keys.get("entDutyNo")
    if duty and (time, duty) > (bill.ent_duty_time, bill.ent_duty_no or ""):
        bill = _replace(bill, ent_duty_no=duty, ent_duty_time=time)
    if record.message_type == "CEB816":
        amounts = _amounts(keys)
        if amounts is not None and (bill.amounts is None or (time, amounts) > (bill.amounts_time, bill.amounts)):
            bill = _replace(bill, amounts=amounts, amounts_time=time, guid=record.guid,
                            path=f"{record.path}/{BY_CODE['CEB816'].head}")  # fmt: skip
    return bill


def _replace(bill: TaxBill, **changes: Any) -> TaxBill:
    return TaxBill(**{**bill.__dict__, **changes})


def fold(recs: Iterable[ReceiptRecord], start: Mapping[str, TaxBill] | None = None) -> dict[str, TaxBill]:
    """The bills (by taxNo) after the records, in any order."""
    bills = dict(start or {})
    for r in recs:
        tax_no = r.keys.get("taxNo", "")
        bills[tax_no] = apply(bills.get(tax_no), r)
    return bills


# --- comparison with the estimate ------------------------------------------------------------------------


@dataclass(frozen=True)
class Return:
    """A version of an inventory's return (CEB625) that customs concluded (CEB626 399 or above): its lines (gnum, qty)
    and the returnTime of the receipt that concluded it; ``withdrawn``: a withdrawal (appType 3), after which no return
    stands."""

    guid: str
    lines: tuple[Mapping[str, str], ...]
    concluded_at: str
    withdrawn: bool = False

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Return:
        """One of the versions gateway.outbox.concluded_returns lists."""
        return cls(str(value.get("guid") or ""), tuple(value.get("lines") or ()), str(value.get("concluded_at") or ""),
                   bool(value.get("withdrawn")))  # fmt: skip


def return_for(bill: TaxBill, returns: Sequence[Return]) -> tuple[Return | None, Return | None]:
    """Of the versions of the inventory's return customs concluded (``returns``, in the order they were declared, as
    gateway.outbox.latest_return orders them), the one the bill is expected to account for — the latest concluded
    before the bill's consolidation, any while it is not consolidated; None when there is none or it is a withdrawal
    — and the latest concluded since that consolidation, which customs does not correct the bill for (None when
    there is none)."""
    before = [r for r in returns if _before(r, bill)]
    after = [r for r in returns if not _before(r, bill)]
    counted = before[-1] if before and not before[-1].withdrawn else None
    return counted, (after[-1] if after else None)


def _before(r: Return, bill: TaxBill) -> bool:
    # strictly: a return concluded at the very moment of the consolidation came too late for it (so the sandbox)
    return not bill.consolidated_at or r.concluded_at < bill.consolidated_at


@dataclass(frozen=True)
class Estimate:
    """The gateway's estimate set beside a bill: the taxes of the goods the buyer keeps (all of them without a
    return), and whether they go at full rate."""

    customs_tax: Decimal
    value_added_tax: Decimal
    consumption_tax: Decimal
    full_rate: bool
    returned: Return | None = None  # the return it accounts for

    @property
    def total(self) -> Decimal:
        return self.customs_tax + self.value_added_tax + self.consumption_tax


def estimate(
    inventory: Document, rates: tax.TaxRates = tax.DEFAULT_RATES, returned: Return | None = None
) -> Estimate:
    """The gateway's estimate of the inventory as customs released it (no annual use: over the annual limit customs
    releases nothing; the single-item full rate applies as it did), less the tax of the goods a concluded return
    (``returned``) took back: gateway.tax.after_return, the bill customs would correct to, rounded per line as a
    CEB816's lines are."""
    whole = tax.assess(inventory, annual_used=Decimal(0), rates=rates)
    lines = whole.lines if returned is None else tax.after_return(inventory, returned.lines, rates=rates)
    zero = Decimal("0.00")
    return Estimate(
        customs_tax=sum((t.customs_tax for t in lines), zero),
        value_added_tax=sum((t.value_added_tax for t in lines), zero),
        consumption_tax=sum((t.consumption_tax for t in lines), zero),
        full_rate=whole.full_rate,
        returned=returned,
    )


def compare(bill: TaxBill, inventory: Document, assessment: Estimate) -> list[Finding]:
    """A finding per tax where the bill and the estimate differ by more than :data:`TOLERANCE`; none for a void bill
    (customs levies none of it: its amounts are the last CEB816's, before it was voided)."""
    if bill.amounts is None or bill.void:
        return []
    estimated = (assessment.customs_tax, assessment.value_added_tax, assessment.consumption_tax)
    returned = assessment.returned
    kept = f" (the goods kept after the return {returned.guid} customs concluded)" if returned else ""
    findings = []
    for name, billed, ours in zip(TAXES, bill.amounts, estimated, strict=True):
        if abs(billed - ours) > TOLERANCE:
            findings.append(
                Finding(
                    "tax.bill_differs",
                    name,
                    f"tax bill {bill.tax_no} {name} is {billed} but the gateway estimated {ours} for inventory "
                    f"{bill.invt_no}{kept}",
                    Side("CEB816", bill.guid, f"{bill.path}/{name}", str(billed)),
                    Side(inventory.type.code, inventory.head.get("guid", ""), inventory.path, str(ours)),
                    blocking=False,
                )
            )
    return findings


# --- the shipment view -----------------------------------------------------------------------------------


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(tax._cents(value))


def bill_view(
    bill: TaxBill, inventory: Document | None, rates: tax.TaxRates = tax.DEFAULT_RATES, returns: Sequence[Return] = ()
) -> tuple[dict[str, Any], list[Finding]]:
    """One bill as the shipment shows it, with the estimate of its inventory beside it — of the goods kept, when a
    return customs concluded counts for the bill (``returns``: its versions, :func:`return_for`) —, and the
    findings."""
    amounts = dict(zip(TAXES, bill.amounts, strict=True)) if bill.amounts is not None else {}
    out: dict[str, Any] = {
        "taxNo": bill.tax_no,
        "invtNo": bill.invt_no,
        "status": bill.status,
        "status_name": status_name(bill.status),
        "status_time": bill.status_time,
        "entDutyNo": bill.ent_duty_no,
        **{name: _money(amounts.get(name)) for name in TAXES},
        "total": _money(bill.total),
        "estimate": None,
        "findings": [],
    }
    if inventory is None:
        return out, []
    counted, late = return_for(bill, returns)
    assessment = estimate(inventory, rates, counted)
    out["estimate"] = {
        "customsTax": _money(assessment.customs_tax),
        "valueAddedTax": _money(assessment.value_added_tax),
        "consumptionTax": _money(assessment.consumption_tax),
        "total": _money(assessment.total),
        "full_rate": assessment.full_rate,
        "return": None if counted is None else {
            "guid": counted.guid, "concluded_at": counted.concluded_at,
            "items": [{"gnum": str(x.get("gnum") or ""), "qty": str(x.get("qty") or "")} for x in counted.lines]},
        "uncounted_return": None if late is None else {
            "guid": late.guid, "concluded_at": late.concluded_at, "withdrawn": late.withdrawn},
    }  # fmt: skip
    findings = compare(bill, inventory, assessment)
    out["findings"] = [f.as_dict() for f in findings]
    return out, findings


def shipment_bills(
    documents: Sequence[Mapping[str, Any]], receipts: Iterable[Mapping[str, Any]],
    rates: tax.TaxRates = tax.DEFAULT_RATES,
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """The tax bills of a shipment from its stored documents (``id``, ``kind``, ``message_type``, ``key1``, ``key2``,
    ``head``, ``lines``, ``path``, ``forward_state``, and of an inventory ``concluded_returns``: the versions of its
    return customs concluded, gateway.outbox.concluded_returns) and the receipts rows matched to them, oldest taxNo
    first. A bill is its inventory's, whichever version its records matched (a refused change echoes the invtNo too):
    folded over every version, and set beside the estimate of the version customs holds (:func:`held_version`), less
    what a return of it customs concluded takes back (:func:`return_for`)."""
    inventories = {d["id"]: d for d in documents if d.get("kind") == "inventory"}
    versions: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for d in inventories.values():
        versions.setdefault((d.get("message_type") or "", d.get("key1") or "", d.get("key2") or ""), []).append(d)
    per_key: dict[tuple[str, str, str], list[ReceiptRecord]] = {}
    for row in receipts:
        of = inventories.get(row.get("document_id"))
        if row.get("message_type") in TAX_TYPES and of is not None:
            key = (of.get("message_type") or "", of.get("key1") or "", of.get("key2") or "")
            per_key.setdefault(key, []).append(from_row(row))
    views: list[tuple[str, str, dict[str, Any]]] = []
    findings: list[Finding] = []
    for key, recs in per_key.items():
        d = held_version(versions[key])
        inv = Document(BY_CODE[_INVENTORY], int(d.get("index") or d.get("doc_index") or 1),
                       d.get("path") or "", dict(d.get("head") or {}), list(d.get("lines") or []))  # fmt: skip
        returns = [Return.from_json(r) for r in d.get("concluded_returns") or ()]
        for bill in fold(recs).values():
            view, found = bill_view(bill, inv, rates, returns)
            views.append((bill.status_time, bill.tax_no, {**view, "document_id": d["id"]}))
            findings += found
    views.sort(key=lambda v: (v[1], v[0]))
    return [v for _, _, v in views], findings


def held_version(versions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The version of an inventory customs holds: the latest it did not refuse (a refused change leaves it the one
    before), else the latest."""
    kept = [d for d in versions if d.get("forward_state") != "rejected"]
    return max(kept or versions, key=lambda d: int(d["id"]))


def add_to_shipment(shipment: dict[str, Any], rates: tax.TaxRates = tax.DEFAULT_RATES) -> dict[str, Any]:
    """The shipment view (gateway.outbox.Outbox.shipment_forwarding) with ``tax_bills``: the CEB816/818 records move
    out of their inventory's ``receipts`` into its bills, and a bill's findings join the shipment's. An inventory's
    ``concluded_returns`` (gateway.store.Store.get_shipment) go into its bills' estimates, out of the document."""
    docs = shipment.get("documents", [])
    rows: list[Mapping[str, Any]] = []
    for d in docs:
        mine = [r for r in d.get("receipts", []) if r.get("message_type") in TAX_TYPES]
        if mine:
            rows += mine
            d["receipts"] = [r for r in d["receipts"] if r.get("message_type") not in TAX_TYPES]
    bills, findings = shipment_bills(docs, rows, rates)
    for d in docs:
        d.pop("concluded_returns", None)
    shipment["tax_bills"] = bills
    if findings:
        shipment["findings"] = [*shipment.get("findings", []), *(f.as_dict() for f in findings)]
    return shipment
