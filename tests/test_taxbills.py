"""gateway.taxbills: customs' tax bills (CEB816) and their status (CEB818) read, matched, folded and compared with
the gateway's estimate — pure, no I/O."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway import receipts as rc
from gateway import taxbills
from gateway.documents import Document
from gateway.errors import MessageRejected
from gateway.messages import BY_CODE
from gateway.receipts import ReceiptRecord
from gateway.sandbox import receipts as sandbox
from gateway.sandbox.receipts import build_tax_bills, tax_bill_of
from gateway.schema import SchemaSet

DATA = Path(__file__).resolve().parent / "data"
INVT_NO = "29912024I000012345"
TAX_NO = "29912024T000067890"
CREAM = "3304990099"  # VAT + 15 % consumption tax
MILK = "1901101000"  # VAT only


def inventory(*lines: tuple[str, str], freight: str = "0", **head: str) -> Document:
    """A CEB621 with lines given as (gcode, totalPrice)."""
    return Document(
        BY_CODE["CEB621"], 1, "/CEB621Message/Inventory[1]",
        {"guid": "1F3E5D7C-9A2B-4C6D-8E0F-7A9B3C5D0621", "freight": freight, "insuredFee": "0",
         "ebcCode": "3301960AB8", "assureCode": "3301960AB8", "customsCode": "2991", **head},
        [{"gnum": str(i), "gcode": g, "totalPrice": p} for i, (g, p) in enumerate(lines, start=1)],
    )  # fmt: skip


def bill(status: str, time: str, code: str = "CEB818", **keys: str) -> ReceiptRecord:
    return ReceiptRecord(code, "R", 1, "G", {"invtNo": INVT_NO, "taxNo": TAX_NO, **keys}, status, time, "",
                         f"/{code}Message/Tax[1]")  # fmt: skip


def tax_bill(status: str, time: str, vat: str = "10.00", consumption: str = "0", **keys: str) -> ReceiptRecord:
    return bill(status, time, "CEB816", customsTax="0", valueAddedTax=vat, consumptionTax=consumption, **keys)


# --- reading -----------------------------------------------------------------------------------------------


def test_the_official_bill_reads_as_records_of_its_head() -> None:
    intake = rc.read((DATA / "schema" / "CEB816Message.xml").read_bytes(), SchemaSet())
    (r,) = intake.records
    assert intake.message_type == "CEB816" and r.return_status == "1" and r.return_time == "20240301113500789"
    assert r.keys["taxNo"] == TAX_NO and r.keys["valueAddedTax"] == "37.92" and r.keys["invtNo"] == INVT_NO
    assert not {"guid", "status", "returnTime"} & set(r.keys)
    (s,) = rc.read((DATA / "schema" / "CEB818Message.xml").read_bytes(), SchemaSet()).records
    assert s.message_type == "CEB818" and s.return_status == "2" and s.keys["entDutyNo"] == "299120241000012345"


def test_a_bill_the_rules_refuse_does_not_come_in() -> None:
    body = (DATA / "schema" / "CEB818Message.xml").read_bytes().replace(b"<status>2<", b"<status>4<")
    with pytest.raises(MessageRejected) as err:
        rc.read(body, SchemaSet())
    assert [i.code for i in err.value.issues] == ["rule.tax_status"]


def test_a_bill_is_found_by_invt_no_with_every_party_it_names() -> None:
    (r,) = rc.read((DATA / "schema" / "CEB816Message.xml").read_bytes(), SchemaSet()).records
    c = taxbills.correlation(r)
    assert c.declared_type == "CEB621" and c.invt_no == INVT_NO
    assert c.keys is None and c.guid == "" and c.cop_no is None and c.pre_no is None
    assert dict(c.parties) == {"ebcCode": "3301960AB8", "agentCode": "3301980022", "logisticsCode": "3301980101",
                               "assureCode": "3301960AB8"}  # customsCode is customs' own, not a party  # fmt: skip
    assert taxbills.correlation(bill("2", "20240316080000001")).parties == ()


def test_the_sandbox_writes_bills_the_schema_and_rules_take() -> None:
    inv = inventory((CREAM, "198"), (MILK, "278"), freight="10")
    xml = tax_bill_of(inv, INVT_NO, TAX_NO)
    (r,) = rc.read(xml, SchemaSet()).records
    assert r.return_status == "1" and r.keys["assureCode"] == "3301960AB8" and r.keys["customsCode"] == "2991"
    # computed as the gateway estimates it: no difference
    (b,) = taxbills.fold([r]).values()
    assert taxbills.compare(b, inv, taxbills.estimate(inv)) == []
    status = build_tax_bills("CEB818", [({"guid": "G" * 36, "returnTime": "20260101120000000", "invtNo": INVT_NO,
                                          "taxNo": TAX_NO, "status": "3"}, [])])  # fmt: skip
    assert rc.read(status, SchemaSet()).records[0].return_status == "3"


# --- state -------------------------------------------------------------------------------------------------


def test_status_moves_forward_by_return_time() -> None:
    b = taxbills.fold([tax_bill("1", "20260101120000000"), bill("2", "20260105120000000", entDutyNo="D1")])[TAX_NO]
    assert (b.status, b.status_time, b.ent_duty_no) == ("2", "20260105120000000", "D1")
    late_older = taxbills.apply(b, bill("1", "20260102120000000"))
    assert late_older == b  # a late older CEB818 does not undo a newer one
    assert b.amounts == (Decimal("0"), Decimal("10.00"), Decimal("0")) and b.total == Decimal("10.00")


def test_void_is_final() -> None:
    b = taxbills.fold([tax_bill("1", "20260101120000000"), bill("3", "20260103120000000")])[TAX_NO]
    assert b.void and taxbills.apply(b, bill("2", "20260109120000000")) == b
    # even a void older than the status in force: nothing undoes it
    later = taxbills.fold([bill("2", "20260109120000000"), bill("3", "20260103120000000")])[TAX_NO]
    assert later.status == "3" and later.status_time == "20260103120000000"


def test_the_amounts_are_the_latest_bills_and_a_status_alone_has_none() -> None:
    only_status = taxbills.fold([bill("2", "20260105120000000")])[TAX_NO]
    assert only_status.amounts is None and only_status.total is None
    corrected = taxbills.fold([tax_bill("1", "20260101120000000", vat="12.00"), bill("2", "20260105120000000"),
                               tax_bill("1", "20260102120000000", vat="11.00")])[TAX_NO]  # fmt: skip
    assert corrected.amounts is not None and corrected.amounts[1] == Decimal("11.00") and corrected.status == "2"


def test_any_order_ends_in_the_same_bill() -> None:
    recs = [tax_bill("1", "20260101120000000"), bill("2", "20260105120000000", entDutyNo="D1"),
            tax_bill("1", "20260102120000000", vat="11.00"), bill("1", "20260104120000000"),
            bill("3", "20260106120000000")]  # fmt: skip
    ends = {taxbills.fold(p)[TAX_NO] for p in itertools.permutations(recs)}
    assert len(ends) == 1
    (end,) = ends
    assert end.status == "3" and end.ent_duty_no == "D1"
    assert end.amounts is not None and end.amounts[1] == Decimal("11.00")


def test_bills_are_kept_apart_by_tax_no() -> None:
    bills = taxbills.fold([tax_bill("1", "20260101120000000"), bill("3", "20260102120000000", taxNo="OTHER")])
    assert bills[TAX_NO].status == "1" and bills["OTHER"].status == "3"


# --- comparison with the estimate --------------------------------------------------------------------------


def _billed(inv: Document, **amounts: str) -> taxbills.TaxBill:
    est = taxbills.estimate(inv)
    keys = {"customsTax": str(est.customs_tax), "valueAddedTax": str(est.value_added_tax),
            "consumptionTax": str(est.consumption_tax), **amounts}  # fmt: skip
    return taxbills.fold([bill("1", "20260101120000000", "CEB816", **keys)])[TAX_NO]


def test_a_cent_apart_is_rounding_more_is_a_finding_with_both_values() -> None:
    inv = inventory((CREAM, "198"))  # VAT 198/0.85*0.13*0.7 = 21.20, consumption 198/0.85*0.15*0.7 = 24.46
    est = taxbills.estimate(inv)
    assert (est.value_added_tax, est.consumption_tax) == (Decimal("21.20"), Decimal("24.46"))
    assert taxbills.compare(_billed(inv, valueAddedTax="21.21", consumptionTax="24.45"), inv, est) == []
    (f,) = taxbills.compare(_billed(inv, consumptionTax="24.44"), inv, est)
    assert f.code == "tax.bill_differs" and f.field == "consumptionTax" and not f.blocking
    assert f.left is not None and f.right is not None
    assert (f.left.doc, f.left.value) == ("CEB816", "24.44")
    assert f.left.path == "/CEB816Message/Tax[1]/TaxHeadRd/consumptionTax"
    assert (f.right.doc, f.right.value, f.right.path) == ("CEB621", "24.46", inv.path)
    assert "24.44" in f.message and "24.46" in f.message
    three = taxbills.compare(_billed(inv, customsTax="5", valueAddedTax="0", consumptionTax="0"), inv, est)
    assert [x.field for x in three] == ["customsTax", "valueAddedTax", "consumptionTax"]
    assert taxbills.compare(taxbills.fold([bill("2", "20260101120000000")])[TAX_NO], inv, est) == []


def test_the_estimate_ignores_annual_use_but_not_the_single_item_full_rate() -> None:
    big = inventory((CREAM, "6000"))  # one item over ¥5,000: full rate, as customs released it
    assert taxbills.estimate(big).full_rate and taxbills.estimate(big).consumption_tax == Decimal("1058.82")
    assert not taxbills.estimate(inventory((CREAM, "198"))).full_rate


# --- the shipment view -------------------------------------------------------------------------------------


def _row(r: ReceiptRecord, document_id: int, index: int = 1) -> dict[str, Any]:
    return {"message_type": r.message_type, "element_index": index, "doc_guid": r.guid, "keys": dict(r.keys),
            "return_status": r.return_status, "return_time": r.return_time, "return_info": "",
            "document_id": document_id}  # fmt: skip


def test_the_shipment_shows_its_bills_beside_the_estimate() -> None:
    inv = inventory((CREAM, "198"))
    doc = {"id": 7, "kind": "inventory", "index": 1, "path": inv.path, "head": inv.head, "lines": inv.lines,
           "receipts": [{"message_type": "CEB622", "return_status": "800", "document_id": 7},
                        _row(tax_bill("1", "20260101120000000", vat="21.20", consumption="30.00"), 7),
                        _row(bill("2", "20260102120000000", entDutyNo="D1"), 7)]}  # fmt: skip
    shipment = {"findings": [{"code": "recon.x"}], "documents": [doc, {"id": 8, "kind": "order", "receipts": []}]}
    view = taxbills.add_to_shipment(shipment)
    assert [r["return_status"] for r in doc["receipts"]] == ["800"]  # the bill's records moved to its bill
    (b,) = view["tax_bills"]
    assert b["taxNo"] == TAX_NO and b["status"] == "2" and b["status_name"] == "consolidated"
    assert (b["customsTax"], b["valueAddedTax"], b["consumptionTax"], b["total"]) == ("0.00", "21.20", "30.00", "51.20")
    assert b["estimate"] == {"customsTax": "0.00", "valueAddedTax": "21.20", "consumptionTax": "24.46",
                             "total": "45.66", "full_rate": False, "return": None,
                             "uncounted_return": None}  # fmt: skip
    assert b["entDutyNo"] == "D1" and b["document_id"] == 7
    assert [f["code"] for f in b["findings"]] == ["tax.bill_differs"]
    assert [f["code"] for f in view["findings"]] == ["recon.x", "tax.bill_differs"]
    assert taxbills.add_to_shipment({"findings": [], "documents": [{"id": 1, "kind": "order"}]})["tax_bills"] == []


# --- a return customs concluded ----------------------------------------------------------------------------


def _counted(inv: Document) -> Document:
    """``inv`` with a qty of 1 on each line (the returns below name them)."""
    for line in inv.lines:
        line["qty"] = "1"
    return inv


def _ret(guid: str, concluded_at: str, *lines: tuple[str, str], withdrawn: bool = False) -> taxbills.Return:
    return taxbills.Return(guid, tuple({"gnum": g, "qty": q} for g, q in lines), concluded_at, withdrawn)


def _bill_of(head: dict[str, Any], lines: list[dict[str, str]]) -> ReceiptRecord:
    (r,) = rc.read(build_tax_bills("CEB816", [(head, lines)]), SchemaSet()).records
    return r


def test_the_estimate_after_a_return_is_the_bill_customs_corrects_to() -> None:
    """The estimate of the goods kept is gateway.tax.after_return's, as the sandbox's corrected bill is: a part of an
    item's qty, with freight shared over the lines, is no difference; the whole inventory's bill beside it is."""
    inv = inventory((CREAM, "198"), (MILK, "278"), freight="10")
    inv.lines[0]["qty"], inv.lines[1]["qty"] = "3", "1"
    released = datetime(2026, 1, 1, 12, tzinfo=sandbox.CHINA_TZ)
    head, lines = sandbox.tax_bill(inv, INVT_NO, TAX_NO, moment=released)
    one = _ret("R1", "20260102120000000", ("1", "1"))  # one cream of three
    corrected = _bill_of(*sandbox.corrected_tax_bill(head, inv, one.lines, moment=released + timedelta(days=1)))
    bill = taxbills.fold([_bill_of(head, lines), corrected])[TAX_NO]
    assert bill.amounts is not None and bill.guid == corrected.guid
    est = taxbills.estimate(inv, returned=one)
    assert (est.customs_tax, est.value_added_tax, est.consumption_tax) == bill.amounts and est.returned == one
    assert est.total < taxbills.estimate(inv).total and not est.full_rate
    assert taxbills.compare(bill, inv, est) == []
    (f,) = taxbills.compare(bill, inv, taxbills.estimate(inv))[:1]  # the whole inventory's estimate: the old alarm
    assert f.code == "tax.bill_differs"
    # every item in full: the buyer keeps nothing
    everything = taxbills.estimate(inv, returned=_ret("R2", "20260102120000000", ("1", "3"), ("2", "1")))
    assert everything.total == Decimal("0.00")


def test_the_return_that_counts_is_the_latest_concluded_before_the_consolidation() -> None:
    """Of a return's versions customs concluded (in the order they were declared): the latest counts while the bill is
    not consolidated; once it is, the latest concluded before it — a version concluded at or after the consolidation
    is named, not counted — and a withdrawal leaves no return."""
    first, change = _ret("R1", "20260102120000000", ("1", "1")), _ret("R2", "20260104120000000", ("2", "1"))
    withdrawal = _ret("R3", "20260106120000000", ("2", "1"), withdrawn=True)
    generated = taxbills.fold([tax_bill("1", "20260101120000000")])[TAX_NO]
    assert taxbills.return_for(generated, []) == (None, None)
    assert taxbills.return_for(generated, [first, change]) == (change, None)
    assert taxbills.return_for(generated, [first, change, withdrawal]) == (None, None)
    consolidated = taxbills.apply(generated, bill("2", "20260104120000000", entDutyNo="D1"))
    assert consolidated.consolidated_at == "20260104120000000"
    assert taxbills.return_for(consolidated, [first, change]) == (first, change)  # the very moment: too late
    assert taxbills.return_for(consolidated, [first, change, withdrawal]) == (first, withdrawal)
    assert taxbills.return_for(consolidated, [change]) == (None, change)
    # void after the consolidation: the consolidation's time still tells which return the amounts reflect
    void = taxbills.apply(consolidated, bill("3", "20260105120000000"))
    assert void.void and taxbills.return_for(void, [first, change]) == (first, change)


def test_the_consolidation_is_the_earliest_whatever_order_the_records_come_in() -> None:
    recs = [tax_bill("1", "20260101120000000"), bill("2", "20260105120000000", entDutyNo="D1"),
            bill("2", "20260104120000000", entDutyNo="D1"), bill("3", "20260106120000000")]  # fmt: skip
    ends = {taxbills.fold(p)[TAX_NO].consolidated_at for p in itertools.permutations(recs)}
    assert ends == {"20260104120000000"}
    # a status record that only tells an earlier consolidation moves the bill no more than before (stale at intake)
    settled = taxbills.fold(recs[:2])[TAX_NO]
    earlier = taxbills.apply(settled, recs[2])
    assert earlier == settled and earlier.consolidated_at == "20260104120000000" != settled.consolidated_at
    assert taxbills.fold([tax_bill("1", "20260101120000000"), bill("3", "2026010312000000")])[TAX_NO] \
        .consolidated_at == ""  # fmt: skip


def test_a_void_bill_is_compared_with_nothing() -> None:
    """Customs levies none of a void bill: its amounts (the last CEB816's, a corrected one's after a return of part,
    the whole one's after a cancellation) are set beside nothing, whatever the estimate."""
    inv = _counted(inventory((CREAM, "198"), (MILK, "278")))
    b = taxbills.fold([tax_bill("1", "20260101120000000", vat="1.00"), bill("3", "20260102120000000")])[TAX_NO]
    assert taxbills.compare(b, inv, taxbills.estimate(inv)) == []
    view, findings = taxbills.bill_view(b, inv, returns=[_ret("R1", "20260101130000000", ("1", "1"), ("2", "1"))])
    assert findings == [] and view["findings"] == [] and view["estimate"]["total"] == "0.00"


def test_the_shipment_sets_a_bill_beside_the_goods_its_return_left() -> None:
    """The held inventory version's concluded returns (gateway.outbox.concluded_returns, as JSON) go into its bills'
    estimate: the return counted and a later one not, each named; they leave the document."""
    inv = _counted(inventory((CREAM, "198"), (MILK, "278")))
    returned = [{"gnum": "1", "qty": "1"}]
    kept = taxbills.estimate(inv, returned=_ret("R1", "20260101130000000", ("1", "1")))
    corrected = tax_bill("1", "20260101140000000", vat=str(kept.value_added_tax), consumption=str(kept.consumption_tax))
    doc = {"id": 7, "kind": "inventory", "index": 1, "path": inv.path, "head": inv.head, "lines": inv.lines,
           "receipts": [_row(tax_bill("1", "20260101120000000"), 7), _row(corrected, 7),
                        _row(bill("2", "20260102120000000", entDutyNo="D1"), 7)],
           "concluded_returns": [
               {"guid": "R1", "lines": returned, "withdrawn": False, "concluded_at": "20260101130000000"},
               {"guid": "R2", "lines": [{"gnum": "2", "qty": "1"}], "withdrawn": False,
                "concluded_at": "20260103120000000"}]}  # fmt: skip
    view = taxbills.add_to_shipment({"findings": [], "documents": [doc]})
    (b,) = view["tax_bills"]
    assert b["findings"] == [] and view["findings"] == [] and "concluded_returns" not in doc
    assert b["estimate"]["return"] == {"guid": "R1", "concluded_at": "20260101130000000", "items": returned}
    assert b["estimate"]["uncounted_return"] == {"guid": "R2", "concluded_at": "20260103120000000", "withdrawn": False}
    assert b["estimate"]["valueAddedTax"] == b["valueAddedTax"] == str(kept.value_added_tax)
