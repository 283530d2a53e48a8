"""Three-document reconciliation (三单对碰): every finding, the state machine, arrival-order independence."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.documents import Document
from gateway.messages import BY_CODE, Kind
from gateway.reconcile import CODES, NON_BLOCKING, Finding, Outcome, Shipment, ShipmentState, Side, reconcile

# --- a realistic, consistent 9610 (direct purchase) shipment -----------------------------------

ORDER_GUID = "4CDE1E4A-7A3C-4B21-9D4F-2C6A1B7E0311"
PAYMENT_GUID = "9B8F3D2E-1C4A-4E6B-8A7D-5F0E2D9C0411"
WAYBILL_GUID = "6A2D4C8E-3B1F-4D7A-9E5C-8B0F1A2D0511"
INVENTORY_GUID = "1F3E5D7C-9A2B-4C6D-8E0F-7A9B3C5D0621"

ORD = "/CEB311Message/Order[1]"
PAY = "/CEB411Message/Payment[1]"
WAY = "/CEB511Message/Logistics[1]"
INV = "/CEB621Message/Inventory[1]"


def _money(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.01")))


def make_shipment(
    lines: list[tuple[Decimal, Decimal]] | None = None,
    *,
    freight: Decimal = Decimal("10.00"),
    insured_fee: Decimal = Decimal("0.00"),
    tax_total: Decimal = Decimal("54.03"),
) -> Shipment:
    """Order, payment, waybill and inventory of one parcel that agree on everything.

    ``lines`` are (price, qty) pairs; the default is a face cream and a tin of milk powder.
    """
    lines = lines or [(Decimal("89.50"), Decimal("2")), (Decimal("121.00"), Decimal("1"))]
    catalogue = [
        ("绵羊油保湿面霜 100g", "3304990099", "面霜", "122", "601"),
        ("婴幼儿配方奶粉 1段 900g", "1901101000", "婴幼儿配方奶粉", "122", "609"),
        ("深海鱼油软胶囊 200粒", "2106909090", "鱼油软胶囊", "142", "502"),
    ]
    order_lines: list[dict[str, str]] = []
    inventory_lines: list[dict[str, str]] = []
    for i, (price, qty) in enumerate(lines):
        name, gcode, gname, unit, country = catalogue[i % len(catalogue)]
        total = _money(price * qty)
        order_lines.append(
            {
                "gnum": str(i + 1), "itemNo": f"SKU-{i + 1:04d}", "itemName": name, "gmodel": f"{name}，规格见包装",
                "unit": unit, "qty": str(qty), "price": str(price), "totalPrice": total, "currency": "142",
                "country": country,
            }
        )  # fmt: skip
        inventory_lines.append(
            {
                "gnum": str(i + 1), "itemNo": f"SKU-{i + 1:04d}", "itemName": name, "gcode": gcode, "gname": gname,
                "gmodel": f"{name}，规格见包装", "country": country, "currency": "142", "qty": str(qty), "unit": unit,
                "qty1": str(qty), "unit1": unit, "price": str(price), "totalPrice": total,
            }
        )  # fmt: skip
    goods_value = sum((Decimal(li["totalPrice"]) for li in order_lines), Decimal(0))
    paid = _money(goods_value + freight + tax_total)
    order = Document(
        type=BY_CODE["CEB311"], index=1, path=ORD,
        head={
            "guid": ORDER_GUID, "appType": "1", "appTime": "20261120101500", "appStatus": "2", "orderType": "I",
            "orderNo": "HT202611200001", "ebpCode": "4601660001", "ebpName": "海淘优选跨境平台",
            "ebcCode": "4601960002", "ebcName": "海南海淘优选贸易有限公司", "goodsValue": _money(goods_value),
            "freight": _money(freight), "discount": "0", "taxTotal": _money(tax_total), "acturalPaid": paid,
            "currency": "142", "buyerRegNo": "ht_zhangxm", "buyerName": "张小明", "buyerTelephone": "13800138000",
            "buyerIdType": "1", "buyerIdNumber": "11010519491231002X", "payCode": "440316T004",
            "payName": "财付通支付科技有限公司", "payTransactionId": "4200001234202611201234567890",
            "consignee": "张小明", "consigneeTelephone": "13800138000",
            "consigneeAddress": "北京市朝阳区建国路88号院3号楼1单元1201室", "consigneeDistrict": "110105",
        },
        lines=order_lines,
    )  # fmt: skip
    payment = Document(
        type=BY_CODE["CEB411"], index=1, path=PAY,
        head={
            "guid": PAYMENT_GUID, "appType": "1", "appTime": "20261120101600", "appStatus": "2",
            "payCode": "440316T004", "payName": "财付通支付科技有限公司",
            "payTransactionId": "4200001234202611201234567890", "orderNo": "HT202611200001",
            "ebpCode": "4601660001", "ebpName": "海淘优选跨境平台", "payerIdType": "1",
            "payerIdNumber": "11010519491231002X", "payerName": "张小明", "telephone": "13800138000",
            "amountPaid": paid, "currency": "142", "payTime": "20261120101530",
        },
    )  # fmt: skip
    waybill = Document(
        type=BY_CODE["CEB511"], index=1, path=WAY,
        head={
            "guid": WAYBILL_GUID, "appType": "1", "appTime": "20261120110000", "appStatus": "2",
            "logisticsCode": "4601980003", "logisticsName": "顺丰速运（海口）有限公司",
            "logisticsNo": "SF1234567890123",
            "billNo": "784-12345675", "orderNo": "HT202611200001", "freight": _money(freight),
            "insuredFee": _money(insured_fee), "currency": "142", "weight": "1.35", "packNo": "1",
            "goodsInfo": "面霜2罐，奶粉1罐", "consignee": "张小明",
            "consigneeAddress": "北京市朝阳区建国路88号院3号楼1单元1201室", "consigneeTelephone": "13800138000",
        },
    )  # fmt: skip
    inventory = Document(
        type=BY_CODE["CEB621"], index=1, path=INV,
        head={
            "guid": INVENTORY_GUID, "appType": "1", "appTime": "20261120120000", "appStatus": "2",
            "orderNo": "HT202611200001", "ebpCode": "4601660001", "ebpName": "海淘优选跨境平台",
            "ebcCode": "4601960002", "ebcName": "海南海淘优选贸易有限公司", "logisticsNo": "SF1234567890123",
            "logisticsCode": "4601980003", "logisticsName": "顺丰速运（海口）有限公司", "copNo": "INV20261120001",
            "assureCode": "4601960002", "ieFlag": "I", "declTime": "20261120", "customsCode": "4601",
            "portCode": "4601", "buyerIdType": "1", "buyerIdNumber": "11010519491231002X", "buyerName": "张小明",
            "buyerTelephone": "13800138000", "consigneeAddress": "北京市朝阳区建国路88号院3号楼1单元1201室",
            "agentCode": "4601980004", "agentName": "海口快捷报关有限公司", "tradeMode": "9610", "trafMode": "5",
            "trafNo": "CA1234", "voyageNo": "20261119", "billNo": "784-12345675", "country": "601",
            "freight": _money(freight), "insuredFee": _money(insured_fee), "currency": "142", "packNo": "1",
            "grossWeight": "1.35", "netWeight": "1.20",
        },
        lines=inventory_lines,
    )  # fmt: skip
    return Shipment(order=order, payment=payment, waybill=waybill, inventory=inventory)


def changed(doc: Document, line: int | None = None, /, **values: str | None) -> Document:
    """A copy of ``doc`` with head (or line ``line``, 0-based) fields set; None removes a field."""
    head, lines = dict(doc.head), [dict(li) for li in doc.lines]
    target = head if line is None else lines[line]
    for name, value in values.items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return dataclasses.replace(doc, head=head, lines=lines)


def with_leg(shipment: Shipment, kind: Kind, doc: Document | None) -> Shipment:
    return dataclasses.replace(shipment, **{str(kind): doc})


def only(outcome: Outcome) -> Finding:
    assert len(outcome.findings) == 1, [f.as_dict() for f in outcome.findings]
    return outcome.findings[0]


# --- the consistent shipment --------------------------------------------------------------------


def test_consistent_shipment_matches() -> None:
    outcome = reconcile(make_shipment())
    assert outcome == Outcome(ShipmentState.MATCHED, (), ())


def test_every_code_is_documented_and_namespaced() -> None:
    assert all(code.startswith("recon.") and text for code, text in CODES.items())
    assert set(CODES) >= NON_BLOCKING


# --- one finding per broken comparison: (leg, line, field, new value) -> code, left, right ------

HEAD, LINE = None, 0
CASES: list[tuple[Kind, int | None, str, str, str, tuple[str, str], tuple[str, str]]] = [
    # keys
    (Kind.PAYMENT, HEAD, "ebpCode", "4601669999", "recon.payment_order_key_mismatch",
     (f"{ORD}/OrderHead/ebpCode", "4601660001"), (f"{PAY}/PaymentHead/ebpCode", "4601669999")),
    (Kind.PAYMENT, HEAD, "orderNo", "HT202611200002", "recon.payment_order_key_mismatch",
     (f"{ORD}/OrderHead/orderNo", "HT202611200001"), (f"{PAY}/PaymentHead/orderNo", "HT202611200002")),
    (Kind.ORDER, HEAD, "payCode", "31222699S7", "recon.payment_reference_mismatch",
     (f"{ORD}/OrderHead/payCode", "31222699S7"), (f"{PAY}/PaymentHead/payCode", "440316T004")),
    (Kind.ORDER, HEAD, "payTransactionId", "4200009999", "recon.payment_reference_mismatch",
     (f"{ORD}/OrderHead/payTransactionId", "4200009999"),
     (f"{PAY}/PaymentHead/payTransactionId", "4200001234202611201234567890")),
    (Kind.WAYBILL, HEAD, "orderNo", "HT202611200009", "recon.waybill_order_key_mismatch",
     (f"{ORD}/OrderHead/orderNo", "HT202611200001"), (f"{WAY}/LogisticsHead/orderNo", "HT202611200009")),
    (Kind.INVENTORY, HEAD, "orderNo", "HT202611200003", "recon.inventory_order_key_mismatch",
     (f"{ORD}/OrderHead/orderNo", "HT202611200001"), (f"{INV}/InventoryHead/orderNo", "HT202611200003")),
    (Kind.INVENTORY, HEAD, "ebpCode", "4601660009", "recon.inventory_order_key_mismatch",
     (f"{ORD}/OrderHead/ebpCode", "4601660001"), (f"{INV}/InventoryHead/ebpCode", "4601660009")),
    (Kind.INVENTORY, HEAD, "ebcCode", "4601960009", "recon.inventory_order_key_mismatch",
     (f"{ORD}/OrderHead/ebcCode", "4601960002"), (f"{INV}/InventoryHead/ebcCode", "4601960009")),
    (Kind.INVENTORY, HEAD, "logisticsCode", "4601980009", "recon.inventory_waybill_key_mismatch",
     (f"{WAY}/LogisticsHead/logisticsCode", "4601980003"), (f"{INV}/InventoryHead/logisticsCode", "4601980009")),
    (Kind.INVENTORY, HEAD, "logisticsNo", "SF1234567890999", "recon.inventory_waybill_key_mismatch",
     (f"{WAY}/LogisticsHead/logisticsNo", "SF1234567890123"), (f"{INV}/InventoryHead/logisticsNo", "SF1234567890999")),
    (Kind.INVENTORY, HEAD, "billNo", "784-99999999", "recon.bill_no_mismatch",
     (f"{WAY}/LogisticsHead/billNo", "784-12345675"), (f"{INV}/InventoryHead/billNo", "784-99999999")),
    # amounts
    (Kind.PAYMENT, HEAD, "amountPaid", "364.02", "recon.amount_paid_mismatch",
     (f"{ORD}/OrderHead/acturalPaid", "364.03"), (f"{PAY}/PaymentHead/amountPaid", "364.02")),
    (Kind.ORDER, HEAD, "goodsValue", "301.00", "recon.goods_value_mismatch",
     (f"{ORD}/OrderHead/goodsValue", "301.00"), (INV, "300.00")),
    (Kind.INVENTORY, HEAD, "freight", "12.00", "recon.freight_mismatch",
     (f"{ORD}/OrderHead/freight", "10.00"), (f"{INV}/InventoryHead/freight", "12.00")),
    (Kind.INVENTORY, HEAD, "insuredFee", "1.50", "recon.insured_fee_mismatch",
     (f"{WAY}/LogisticsHead/insuredFee", "0.00"), (f"{INV}/InventoryHead/insuredFee", "1.50")),
    # parties
    (Kind.WAYBILL, HEAD, "consignee", "张晓明", "recon.consignee_mismatch",
     (f"{ORD}/OrderHead/consignee", "张小明"), (f"{WAY}/LogisticsHead/consignee", "张晓明")),
    (Kind.WAYBILL, HEAD, "consigneeTelephone", "13900139000", "recon.consignee_mismatch",
     (f"{ORD}/OrderHead/consigneeTelephone", "13800138000"),
     (f"{WAY}/LogisticsHead/consigneeTelephone", "13900139000")),
    (Kind.WAYBILL, HEAD, "consigneeAddress", "北京市朝阳区建国路88号", "recon.consignee_mismatch",
     (f"{ORD}/OrderHead/consigneeAddress", "北京市朝阳区建国路88号院3号楼1单元1201室"),
     (f"{WAY}/LogisticsHead/consigneeAddress", "北京市朝阳区建国路88号")),
    (Kind.PAYMENT, HEAD, "payerName", "李华", "recon.buyer_payer_mismatch",
     (f"{ORD}/OrderHead/buyerName", "张小明"), (f"{PAY}/PaymentHead/payerName", "李华")),
    (Kind.PAYMENT, HEAD, "payerIdNumber", "110105199001011232", "recon.buyer_payer_mismatch",
     (f"{ORD}/OrderHead/buyerIdNumber", "11010519491231002X"),
     (f"{PAY}/PaymentHead/payerIdNumber", "110105199001011232")),
    (Kind.INVENTORY, HEAD, "buyerName", "李华", "recon.inventory_buyer_mismatch",
     (f"{ORD}/OrderHead/buyerName", "张小明"), (f"{INV}/InventoryHead/buyerName", "李华")),
    (Kind.INVENTORY, HEAD, "buyerIdNumber", "110105199001011232", "recon.inventory_buyer_mismatch",
     (f"{ORD}/OrderHead/buyerIdNumber", "11010519491231002X"),
     (f"{INV}/InventoryHead/buyerIdNumber", "110105199001011232")),
    (Kind.INVENTORY, HEAD, "buyerTelephone", "13900139000", "recon.inventory_buyer_telephone_mismatch",
     (f"{ORD}/OrderHead/buyerTelephone", "13800138000"), (f"{INV}/InventoryHead/buyerTelephone", "13900139000")),
    # lines (gnum 2 = the second line)
    (Kind.INVENTORY, 1, "qty", "2", "recon.line_qty_mismatch",
     (f"{ORD}/OrderList[2]/qty", "1"), (f"{INV}/InventoryList[2]/qty", "2")),
    (Kind.INVENTORY, 1, "unit", "140", "recon.line_unit_mismatch",
     (f"{ORD}/OrderList[2]/unit", "122"), (f"{INV}/InventoryList[2]/unit", "140")),
    (Kind.INVENTORY, 1, "totalPrice", "120.99", "recon.line_total_price_mismatch",
     (f"{ORD}/OrderList[2]/totalPrice", "121.00"), (f"{INV}/InventoryList[2]/totalPrice", "120.99")),
    (Kind.ORDER, 0, "totalPrice", "179.01", "recon.line_total_price_mismatch",
     (f"{ORD}/OrderList[1]/totalPrice", "179.01"), (f"{INV}/InventoryList[1]/totalPrice", "179.00")),
    (Kind.INVENTORY, 1, "itemName", "婴幼儿配方奶粉 2段 900g", "recon.line_item_name_mismatch",
     (f"{ORD}/OrderList[2]/itemName", "婴幼儿配方奶粉 1段 900g"),
     (f"{INV}/InventoryList[2]/itemName", "婴幼儿配方奶粉 2段 900g")),
    (Kind.INVENTORY, 0, "country", "609", "recon.line_country_mismatch",
     (f"{ORD}/OrderList[1]/country", "601"), (f"{INV}/InventoryList[1]/country", "609")),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "line", "name", "value", "code", "left", "right"), CASES)
def test_each_broken_comparison_gives_exactly_its_finding(
    kind: Kind, line: int | None, name: str, value: str, code: str, left: tuple[str, str], right: tuple[str, str]
) -> None:
    base = make_shipment()
    doc = base.leg(kind)
    assert doc is not None
    before = doc.head.get(name) if line is None else doc.lines[line].get(name)
    outcome = reconcile(with_leg(base, kind, changed(doc, line, **{name: value})))

    finding = only(outcome)
    assert finding.code == code and code in CODES
    assert finding.blocking is (code not in NON_BLOCKING)
    assert finding.left is not None and finding.right is not None
    assert (finding.left.path, finding.left.value) == left
    assert (finding.right.path, finding.right.value) == right
    assert finding.left.doc == left[0][1:7] and finding.right.doc == right[0][1:7]
    assert {finding.left.guid, finding.right.guid} <= {ORDER_GUID, PAYMENT_GUID, WAYBILL_GUID, INVENTORY_GUID}
    assert finding.field == left[0].rsplit("/", 1)[-1] or code == "recon.goods_value_mismatch"
    # the message names both values
    assert left[1] in finding.message and right[1] in finding.message
    assert value in finding.message and str(before) in finding.message
    expected_state = ShipmentState.MATCHED if code in NON_BLOCKING else ShipmentState.MISMATCHED
    assert outcome.state is expected_state and outcome.missing == ()


@pytest.mark.parametrize(
    ("kind", "line", "values"),
    [
        # the order need not carry the payment's identity; when it does not, nothing is compared
        (Kind.ORDER, HEAD, {"payCode": None, "payTransactionId": None}),
        (Kind.ORDER, HEAD, {"payCode": "", "payTransactionId": " "}),
        # surrounding blanks are not a difference
        (Kind.WAYBILL, HEAD, {"consignee": " 张小明 ", "consigneeTelephone": "13800138000 "}),
        (Kind.WAYBILL, HEAD, {"consigneeAddress": "北京市朝阳区建国路88号院3号楼1单元1201室\n"}),
        (Kind.PAYMENT, HEAD, {"ebpCode": "4601660001  "}),
        # the ID check character may be written in either case
        (Kind.PAYMENT, HEAD, {"payerIdNumber": "11010519491231002x"}),
        (Kind.INVENTORY, HEAD, {"buyerIdNumber": "11010519491231002x"}),
        # billNo is compared only when both carry one (1210 bonded shipments have none)
        (Kind.WAYBILL, HEAD, {"billNo": None}),
        (Kind.INVENTORY, HEAD, {"billNo": ""}),
        # money compared at 2 decimals, quantities exactly but numerically
        (Kind.PAYMENT, HEAD, {"amountPaid": "364.03000"}),
        (Kind.PAYMENT, HEAD, {"amountPaid": "364.034"}),
        (Kind.INVENTORY, 0, {"qty": "2.00000"}),
        (Kind.INVENTORY, 0, {"gnum": "01"}),
        (Kind.INVENTORY, 0, {"gnum": "+1"}),  # xs:int allows the sign, and the rules accept it
        # itemName is optional in the inventory; gname is the customs name and is not compared
        (Kind.INVENTORY, 1, {"itemName": None, "gname": "配方奶粉"}),
        # the waybill's insuredFee is optional
        (Kind.WAYBILL, HEAD, {"insuredFee": None, "freight": None}),
    ],
)
def test_equivalent_values_give_no_finding(kind: Kind, line: int | None, values: dict[str, str | None]) -> None:
    base = make_shipment()
    doc = base.leg(kind)
    assert doc is not None
    outcome = reconcile(with_leg(base, kind, changed(doc, line, **values)))
    assert outcome.findings == () and outcome.state is ShipmentState.MATCHED


def test_money_rounds_half_up_to_cents_before_comparing() -> None:
    base = make_shipment()
    assert base.payment is not None
    # acturalPaid is 364.03: 364.025 rounds half up to it, 364.0249 rounds down to 364.02
    assert reconcile(with_leg(base, Kind.PAYMENT, changed(base.payment, amountPaid="364.025"))).findings == ()
    outcome = reconcile(with_leg(base, Kind.PAYMENT, changed(base.payment, amountPaid="364.0249")))
    assert only(outcome).code == "recon.amount_paid_mismatch"


def test_unreadable_amounts_are_compared_as_text() -> None:
    base = make_shipment()
    assert base.payment is not None
    outcome = reconcile(with_leg(base, Kind.PAYMENT, changed(base.payment, amountPaid="364,03")))
    finding = only(outcome)
    assert finding.code == "recon.amount_paid_mismatch" and finding.right is not None
    assert finding.right.value == "364,03"


def test_missing_inventory_line_and_extra_gnum() -> None:
    base = make_shipment()
    assert base.inventory is not None
    outcome = reconcile(with_leg(base, Kind.INVENTORY, changed(base.inventory, 1, gnum="3")))
    assert [f.code for f in outcome.findings] == ["recon.gnum_unmatched", "recon.gnum_unmatched"]
    order_only, inventory_only = outcome.findings
    assert order_only.left is not None and order_only.right is not None
    assert (order_only.left.path, order_only.left.value) == (f"{ORD}/OrderList[2]/gnum", "2")
    assert (order_only.right.doc, order_only.right.path, order_only.right.value) == ("CEB621", INV, None)
    assert inventory_only.left is not None and inventory_only.right is not None
    assert (inventory_only.left.doc, inventory_only.left.path, inventory_only.left.value) == ("CEB311", ORD, None)
    assert (inventory_only.right.path, inventory_only.right.value) == (f"{INV}/InventoryList[2]/gnum", "3")
    assert all(f.blocking for f in outcome.findings) and outcome.state is ShipmentState.MISMATCHED


def test_dropped_inventory_line_and_duplicate_gnum() -> None:
    base = make_shipment()
    assert base.inventory is not None
    dropped = dataclasses.replace(base.inventory, lines=base.inventory.lines[:1])
    finding = only(reconcile(with_leg(base, Kind.INVENTORY, dropped)))
    assert finding.code == "recon.gnum_unmatched" and finding.left is not None
    assert finding.left.path == f"{ORD}/OrderList[2]/gnum"
    # a duplicated gnum pairs the first occurrence and leaves the second unmatched
    lines = [*base.inventory.lines, dict(base.inventory.lines[1])]
    finding = only(reconcile(with_leg(base, Kind.INVENTORY, dataclasses.replace(base.inventory, lines=lines))))
    assert finding.code == "recon.gnum_unmatched" and finding.right is not None
    assert finding.right.path == f"{INV}/InventoryList[3]/gnum"


def test_lines_pair_by_gnum_not_by_position() -> None:
    base = make_shipment()
    assert base.inventory is not None
    swapped = dataclasses.replace(base.inventory, lines=list(reversed(base.inventory.lines)))
    assert reconcile(with_leg(base, Kind.INVENTORY, swapped)).findings == ()


def test_one_wrong_line_price_is_one_finding_not_also_a_goods_value_one() -> None:
    base = make_shipment()
    assert base.inventory is not None
    outcome = reconcile(with_leg(base, Kind.INVENTORY, changed(base.inventory, 0, totalPrice="170.00")))
    assert [f.code for f in outcome.findings] == ["recon.line_total_price_mismatch"]


def test_findings_come_in_a_stable_order() -> None:
    base = make_shipment()
    assert base.payment and base.inventory
    shipment = dataclasses.replace(
        base,
        payment=changed(base.payment, amountPaid="1.00", payerName="李华"),
        inventory=changed(base.inventory, logisticsNo="X", buyerTelephone="1"),
    )
    codes = [f.code for f in reconcile(shipment).findings]
    assert codes == [
        "recon.inventory_waybill_key_mismatch",
        "recon.amount_paid_mismatch",
        "recon.buyer_payer_mismatch",
        "recon.inventory_buyer_telephone_mismatch",
    ]


# --- state machine ------------------------------------------------------------------------------


def test_empty_shipment_is_incomplete_with_all_legs_missing() -> None:
    assert reconcile(Shipment()) == Outcome(
        ShipmentState.INCOMPLETE, (Kind.ORDER, Kind.PAYMENT, Kind.WAYBILL, Kind.INVENTORY), ()
    )


@pytest.mark.parametrize("absent", [Kind.ORDER, Kind.PAYMENT, Kind.WAYBILL, Kind.INVENTORY])
def test_any_missing_leg_makes_it_incomplete(absent: Kind) -> None:
    outcome = reconcile(with_leg(make_shipment(), absent, None))
    assert outcome == Outcome(ShipmentState.INCOMPLETE, (absent,), ())


def test_missing_legs_listed_in_spec_order() -> None:
    base = make_shipment()
    outcome = reconcile(Shipment(payment=base.payment))
    assert outcome.missing == (Kind.ORDER, Kind.WAYBILL, Kind.INVENTORY)


def test_mismatch_among_present_legs_wins_over_incomplete() -> None:
    base = make_shipment()
    assert base.payment is not None
    shipment = Shipment(order=base.order, payment=changed(base.payment, amountPaid="300.00"))
    outcome = reconcile(shipment)
    assert outcome.state is ShipmentState.MISMATCHED
    assert outcome.missing == (Kind.WAYBILL, Kind.INVENTORY)
    assert only(outcome).code == "recon.amount_paid_mismatch"


def test_warnings_do_not_block() -> None:
    base = make_shipment()
    assert base.inventory is not None
    warned = changed(base.inventory, freight="0.00", buyerTelephone="13900139000")
    outcome = reconcile(with_leg(base, Kind.INVENTORY, warned))
    assert outcome.state is ShipmentState.MATCHED
    assert [f.code for f in outcome.findings] == ["recon.freight_mismatch", "recon.inventory_buyer_telephone_mismatch"]
    assert not any(f.blocking for f in outcome.findings)
    outcome = reconcile(dataclasses.replace(base, payment=None, inventory=warned))
    assert outcome.state is ShipmentState.INCOMPLETE and outcome.missing == (Kind.PAYMENT,)
    assert len(outcome.findings) == 2



def test_an_id_number_that_is_no_citizen_id_is_a_warning_on_the_first_leg_carrying_it() -> None:
    """GB 11643: 18 characters, the last the check character of the 17 digits (X in either case). A mistyped number
    is one warning, on the first leg that carries it (the order), however many legs repeat it; a payer's other wrong
    number is its own warning beside the blocking buyer/payer mismatch; the shipment stays matched otherwise."""
    from gateway.reconcile import id_number_problem

    assert id_number_problem("11010519491231002X") is None and id_number_problem("11010519491231002x") is None
    assert "check character X" in (id_number_problem("110105194912310021") or "")
    assert "18-character" in (id_number_problem("1101051949123100") or "")
    assert "18-character" in (id_number_problem("11010519491231002Y") or "")
    base = make_shipment()
    assert base.order is not None and base.payment is not None and base.inventory is not None
    wrong = "110105194912310021"  # the test buyer's number with its check character mistyped
    legs = {"order": changed(base.order, buyerIdNumber=wrong), "payment": changed(base.payment, payerIdNumber=wrong),
            "inventory": changed(base.inventory, buyerIdNumber=wrong)}  # fmt: skip
    outcome = reconcile(dataclasses.replace(base, **legs))
    assert outcome.state is ShipmentState.MATCHED
    finding = only(outcome)
    assert (finding.code, finding.field, finding.blocking) == ("recon.id_number_invalid", "buyerIdNumber", False)
    assert finding.left == Side("CEB311", ORDER_GUID, f"{ORD}/OrderHead/buyerIdNumber", wrong)
    assert "check character X (GB 11643)" in finding.message and "mistyped" in finding.message
    other = "11010519491231002"  # one character short, on the payment alone
    outcome = reconcile(with_leg(base, Kind.PAYMENT, changed(base.payment, payerIdNumber=other)))
    assert outcome.state is ShipmentState.MISMATCHED
    assert sorted((f.code, f.left.doc if f.left else None) for f in outcome.findings) == [
        ("recon.buyer_payer_mismatch", "CEB311"), ("recon.id_number_invalid", "CEB411")]  # fmt: skip

def test_correcting_the_leg_returns_to_matched() -> None:
    base = make_shipment()
    assert base.payment is not None
    broken = with_leg(base, Kind.PAYMENT, changed(base.payment, amountPaid="1.00"))
    assert reconcile(broken).state is ShipmentState.MISMATCHED
    assert reconcile(with_leg(broken, Kind.PAYMENT, base.payment)).state is ShipmentState.MATCHED


@pytest.mark.parametrize(
    ("tolerance", "paid", "state"),
    [
        ("0", "364.02", ShipmentState.MISMATCHED),
        ("0.01", "364.02", ShipmentState.MATCHED),
        ("0.01", "364.04", ShipmentState.MATCHED),
        ("0.01", "364.01", ShipmentState.MISMATCHED),
        ("1", "365.03", ShipmentState.MATCHED),
        ("1", "365.04", ShipmentState.MISMATCHED),
    ],
)
def test_tolerance(tolerance: str, paid: str, state: ShipmentState) -> None:
    base = make_shipment()
    assert base.payment is not None
    shipment = with_leg(base, Kind.PAYMENT, changed(base.payment, amountPaid=paid))
    assert reconcile(shipment, tolerance=Decimal(tolerance)).state is state


def test_negative_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        reconcile(make_shipment(), tolerance=Decimal("-0.01"))


def test_as_dict_round_trip_shape() -> None:
    base = make_shipment()
    assert base.payment is not None
    finding = only(reconcile(with_leg(base, Kind.PAYMENT, changed(base.payment, payerName="李华"))))
    assert finding.as_dict() == {
        "code": "recon.buyer_payer_mismatch",
        "field": "buyerName",
        "message": finding.message,
        "blocking": True,
        "left": {"doc": "CEB311", "guid": ORDER_GUID, "path": f"{ORD}/OrderHead/buyerName", "value": "张小明"},
        "right": {"doc": "CEB411", "guid": PAYMENT_GUID, "path": f"{PAY}/PaymentHead/payerName", "value": "李华"},
    }


# --- property: the outcome does not depend on arrival order ------------------------------------

# Changed versions a leg may be replaced by (each later appTime); some break the match, some do not.
VERSIONS: dict[Kind, list[dict[str, str]]] = {
    Kind.ORDER: [{"consignee": "张晓明"}, {"buyerTelephone": "13800138001"}],
    Kind.PAYMENT: [{"amountPaid": "1.00"}, {"payTime": "20261120101531"}],
    Kind.WAYBILL: [{"consigneeTelephone": "13900139000"}, {"weight": "1.40"}],
    Kind.INVENTORY: [{"freight": "9.00"}, {"ebcCode": "4601960009"}, {"netWeight": "1.10"}],
}


def _arrive(shipment: Shipment, doc: Document) -> Shipment:
    """The store's rule (§6.5, −301014/−401012 ...): a message older than the stored one is ignored."""
    kind = doc.type.kind
    current = shipment.leg(kind)
    if current is not None and current.head["appTime"] >= doc.head["appTime"]:
        return shipment
    return with_leg(shipment, kind, doc)


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[Document], Shipment]:
    """Documents in some arrival order, and the shipment they must end up as (newest per leg)."""
    base = make_shipment()
    docs: list[Document] = []
    final: dict[Kind, Document | None] = {}
    for kind, versions in VERSIONS.items():
        original = base.leg(kind)
        assert original is not None
        chain = [original] if draw(st.booleans()) or kind is Kind.ORDER else []
        picked = draw(st.lists(st.sampled_from(range(len(versions))), max_size=2))
        for n, i in enumerate(picked, start=1):
            app_time = str(int(original.head["appTime"]) + n)
            chain.append(changed(chain[-1] if chain else original, appTime=app_time, **versions[i]))
        docs.extend(chain)
        final[kind] = chain[-1] if chain else None
    order = draw(st.permutations(docs))
    return order, Shipment(**{str(k): v for k, v in final.items()})


@settings(max_examples=150, deadline=None)
@given(arrivals(), st.randoms(use_true_random=False))
def test_outcome_is_independent_of_arrival_order(case: tuple[list[Document], Shipment], rnd: Any) -> None:
    docs, expected_shipment = case
    expected = reconcile(expected_shipment)
    orders = [docs]
    for _ in range(3):  # a few more orders of the same documents
        orders.append(rnd.sample(docs, len(docs)))
    for order in orders:
        shipment = Shipment()
        for doc in order:
            shipment = _arrive(shipment, doc)
            reconcile(shipment)  # intermediate outcomes leave nothing behind
        assert shipment == expected_shipment
        assert reconcile(shipment) == expected


# --- property: a 0.01 change to any compared amount yields exactly its finding ------------------

# (leg, line or None, field, expected code); amounts on both sides of every money comparison
AMOUNTS: list[tuple[Kind, int | None, str, str]] = [
    (Kind.ORDER, None, "acturalPaid", "recon.amount_paid_mismatch"),
    (Kind.PAYMENT, None, "amountPaid", "recon.amount_paid_mismatch"),
    (Kind.ORDER, None, "goodsValue", "recon.goods_value_mismatch"),
    (Kind.ORDER, None, "freight", "recon.freight_mismatch"),
    (Kind.INVENTORY, None, "freight", "recon.freight_mismatch"),
    (Kind.WAYBILL, None, "insuredFee", "recon.insured_fee_mismatch"),
    (Kind.INVENTORY, None, "insuredFee", "recon.insured_fee_mismatch"),
    (Kind.ORDER, 0, "totalPrice", "recon.line_total_price_mismatch"),
    (Kind.INVENTORY, 0, "totalPrice", "recon.line_total_price_mismatch"),
    (Kind.ORDER, 0, "qty", "recon.line_qty_mismatch"),
    (Kind.INVENTORY, 0, "qty", "recon.line_qty_mismatch"),
]

cents = st.integers(min_value=1, max_value=2_000_000).map(lambda n: Decimal(n).scaleb(-2))


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.tuples(cents, st.integers(1, 20).map(Decimal)), min_size=1, max_size=3),
    freight=st.integers(0, 10_000).map(lambda n: Decimal(n).scaleb(-2)),
    insured_fee=st.integers(0, 1_000).map(lambda n: Decimal(n).scaleb(-2)),
    target=st.sampled_from(AMOUNTS),
    line=st.integers(0, 2),
    sign=st.sampled_from((1, -1)),
)
def test_perturbing_a_compared_amount_by_a_cent_gives_exactly_its_finding(
    lines: list[tuple[Decimal, Decimal]],
    freight: Decimal,
    insured_fee: Decimal,
    target: tuple[Kind, int | None, str, str],
    line: int,
    sign: int,
) -> None:
    base = make_shipment(lines, freight=freight, insured_fee=insured_fee, tax_total=Decimal("0"))
    assert reconcile(base).findings == ()
    kind, on_line, name, code = target
    index = None if on_line is None else line % len(lines)
    doc = base.leg(kind)
    assert doc is not None
    before = Decimal(doc.head[name] if index is None else doc.lines[index][name])
    after = str(before + sign * Decimal("0.01"))
    moved = with_leg(base, kind, changed(doc, index, **{name: after}))

    finding = only(reconcile(moved))
    assert finding.code == code
    side = finding.left if finding.left is not None and finding.left.doc == doc.type.code else finding.right
    assert side is not None and side.value == after
    assert side.path == (doc.field_path(name) if index is None else doc.line_path(index, name))
    # a tolerance of one cent absorbs it for money (qty is never rounded nor tolerated)
    tolerant = reconcile(moved, tolerance=Decimal("0.01"))
    assert tolerant.findings == () if name != "qty" else only(tolerant).code == code


def test_an_ambiguous_waybill_is_a_warning_beside_a_missing_waybill_leg() -> None:
    """A waybill of an orderNo two platforms use, named by no inventory, is no shipment's leg (spec §6.2): the
    shipment stays incomplete, told why, and nothing of the waybill is compared."""
    full = make_shipment()
    waybill = changed(full.waybill, consignee="someone else") if full.waybill else None
    assert waybill is not None
    s = dataclasses.replace(full, waybill=None, ambiguous=(waybill,), platforms=("A", "B"))
    outcome = reconcile(s)
    assert outcome.state is ShipmentState.INCOMPLETE and outcome.missing == (Kind.WAYBILL,)
    finding = only(outcome)
    assert finding.code == "recon.waybill_ambiguous" and not finding.blocking and "A, B" in finding.message
    assert finding.left is not None and finding.left.doc == "CEB311" and finding.left.path.endswith("/orderNo")
    assert finding.right is not None and finding.right.doc == "CEB511"
    # the waybill-only shipment that shows it: no keyed leg to point at
    lone = reconcile(Shipment(waybill=waybill, ambiguous=(waybill,), platforms=("A", "B")))
    assert [f.left for f in lone.findings if f.code == "recon.waybill_ambiguous"] == [None]



def test_a_second_live_payment_or_inventory_is_a_blocking_finding_naming_both() -> None:
    """An order has one payment and one inventory (§6.2): another one beside it is not silently passed over."""
    full = make_shipment()
    assert full.payment is not None and full.inventory is not None
    other_payment = changed(full.payment, guid="PAY-2", payCode="4403169D3W", payTransactionId="2026112022001")
    outcome = reconcile(dataclasses.replace(full, others=(other_payment,)))
    finding = only(outcome)
    assert outcome.state is ShipmentState.MISMATCHED and finding.blocking
    assert (finding.code, finding.field) == ("recon.payment_duplicate", "payCode")
    assert finding.left == Side("CEB411", PAYMENT_GUID, full.payment.field_path("payCode"), "440316T004")
    assert finding.right == Side("CEB411", "PAY-2", other_payment.field_path("payCode"), "4403169D3W")
    assert "4403169D3W/2026112022001" in finding.message
    # the same payment company, another transaction: the field that tells them apart
    again = changed(full.payment, payTransactionId="2026112022002")
    assert only(reconcile(dataclasses.replace(full, others=(again,)))).field == "payTransactionId"
    # an inventory under another ebcCode beside the one compared
    other_inventory = changed(full.inventory, guid="INV-2", ebcCode="4601960009")
    finding = only(reconcile(dataclasses.replace(full, others=(other_inventory,))))
    assert (finding.code, finding.field, finding.right and finding.right.value) == (
        "recon.inventory_duplicate", "ebcCode", "4601960009")
    # export: a second 收款单
    d = _export_legs()
    second = changed(d["CEB403"], ebcCode="OTHER-EBC")
    export = reconcile(Shipment(order=d["CEB303"], payment=d["CEB403"], waybill=d["CEB505"], inventory=d["CEB603"],
                                others=(second,)))  # fmt: skip
    assert [f.code for f in export.findings] == ["recon.payment_duplicate"]
    assert export.state is ShipmentState.MISMATCHED

# --- export shipments (spec §4.4, §6.2 export equivalents) -----------------------------------------------------


def _export_legs(**changes: dict[str, str]) -> dict[str, Document]:
    from gateway.messages import BY_CODE
    from tests import exportutil as ex

    heads = {"CEB303": ex.order_head("E1"), "CEB403": ex.receipt_head("E1"), "CEB505": ex.waybill_head("E1"),
             "CEB603": ex.inventory_head("E1")}  # fmt: skip
    lines = {"CEB303": ex.ORDER_LINES, "CEB603": ex.inventory_lines()}
    out = {}
    for code, head in heads.items():
        t = BY_CODE[code]
        head.update(changes.get(code, {}))
        out[code] = Document(t, 1, f"/{t.root}/{t.document}[1]", head, [dict(x) for x in lines.get(code, [])])
    return out


def _export(**changes: dict[str, str]) -> Outcome:
    d = _export_legs(**changes)
    return reconcile(Shipment(order=d["CEB303"], payment=d["CEB403"], waybill=d["CEB505"], inventory=d["CEB603"]))


def test_a_consistent_export_shipment_matches_without_import_rules() -> None:
    # no buyer, payer or consignee on export documents: nothing of the import's parties is asked for
    outcome = _export()
    assert (outcome.state, outcome.findings) == (ShipmentState.MATCHED, ())


def test_export_keys_are_blocking() -> None:
    outcome = _export(CEB403={"ebcCode": "OTHER"}, CEB603={"logisticsNo": "ELN-OTHER"})
    found = {(f.code, f.field, f.blocking) for f in outcome.findings}
    assert ("recon.payment_order_key_mismatch", "ebcCode", True) in found
    assert ("recon.inventory_waybill_key_mismatch", "logisticsNo", True) in found
    assert outcome.state == ShipmentState.MISMATCHED


def test_the_charge_is_a_warning_either_with_or_without_freight() -> None:
    assert _export(CEB403={"charge": "100"}).findings == ()  # goodsValue alone
    assert _export(CEB403={"charge": "110.00"}).findings == ()  # goodsValue + freight
    outcome = _export(CEB403={"charge": "95"})
    [f] = outcome.findings
    assert (f.code, f.field, f.blocking, f.right and f.right.value) == ("recon.charge_mismatch", "charge", False, "95")
    assert outcome.state == ShipmentState.MATCHED
    [f] = _export(CEB403={"currency": "142"}).findings
    assert (f.code, f.field, f.left and f.left.value, f.right and f.right.value) == (
        "recon.charge_mismatch", "currency", "502", "142")


def test_export_freight_is_compared_only_as_a_total_in_the_orders_currency() -> None:
    [f] = _export(CEB603={"freight": "12"}).findings
    assert (f.code, f.blocking) == ("recon.freight_mismatch", False)
    assert _export(CEB603={"freight": "12", "fFlag": "1"}).findings == ()  # a rate is no amount to compare
    assert _export(CEB603={"freight": "12", "fCurrency": "142"}).findings == ()


def test_export_lines_pair_by_gnum_with_their_currency() -> None:
    d = _export_legs()
    inv = d["CEB603"]
    lines = [dict(inv.lines[0], currency="142")]
    outcome = reconcile(Shipment(order=d["CEB303"], payment=d["CEB403"], waybill=d["CEB505"],
                                 inventory=Document(inv.type, 1, inv.path, inv.head, lines)))  # fmt: skip
    assert [(f.code, f.blocking) for f in outcome.findings] == [("recon.line_currency_mismatch", True)]


@pytest.mark.parametrize(("order_type", "mode"), [("E", "9610"), ("B", "9710"), ("W", "9810"), ("E", "1210"),
                                                  ("W", "1210")])  # fmt: skip
def test_an_order_type_its_inventory_s_trade_mode_takes_gives_no_finding(order_type: str, mode: str) -> None:
    outcome = _export(CEB303={"orderType": order_type}, CEB603={"tradeMode": mode})
    assert (outcome.state, outcome.findings) == (ShipmentState.MATCHED, ())


@pytest.mark.parametrize(("order_type", "mode", "takes"), [
    ("B", "9610", "E (B2C order)"), ("W", "9610", "E (B2C order)"), ("E", "9710", "B (B2B order)"),
    ("W", "9710", "B (B2B order)"), ("E", "9810", "W (overseas-warehouse booking)"),
    ("B", "9810", "W (overseas-warehouse booking)"), ("B", "1210", "E (B2C order) or W (overseas-warehouse booking)"),
])  # fmt: skip
def test_an_order_type_its_inventory_s_trade_mode_does_not_take_is_a_warning(order_type: str, mode: str,
                                                                            takes: str) -> None:
    """The export order names its type, the inventory its trade mode (spec §4.1, §4.3): a B2B order under a retail
    mode, a B2C one under 9810 … is a warning on the shipment naming both, which stays matched."""
    outcome = _export(CEB303={"orderType": order_type}, CEB603={"tradeMode": mode})
    [f] = outcome.findings
    assert (f.code, f.field, f.blocking) == ("recon.order_type_trade_mode", "orderType", False)
    assert f.left is not None and f.right is not None
    assert (f.left.doc, f.left.path, f.left.value) == ("CEB303", "/CEB303Message/Order[1]/OrderHead/orderType",
                                                       order_type)  # fmt: skip
    assert (f.right.doc, f.right.value) == ("CEB603", mode)
    assert f.right.path == "/CEB603Message/Inventory[1]/InventoryHead/tradeMode"
    assert f.message.endswith(f"tradeMode {mode} takes {takes}")
    assert outcome.state is ShipmentState.MATCHED


def test_an_order_type_is_not_compared_without_both_legs_or_a_known_mode() -> None:
    d = _export_legs(CEB303={"orderType": "B"})
    assert reconcile(Shipment(order=d["CEB303"], payment=d["CEB403"], waybill=d["CEB505"])).findings == ()
    assert _export(CEB303={"orderType": "B"}, CEB603={"tradeMode": "1239"}).findings == ()  # the rules refuse it
    assert _export(CEB303={"orderType": "I"}).findings == ()  # an import order type: the rules refuse it


@pytest.mark.parametrize("mode", ["9710", "9810"])
def test_a_b2b_export_shipment_is_matched_without_a_receipt_of_payment(mode: str) -> None:
    """9710 (B2B direct export) and 9810 (to an overseas warehouse) need no 收款单 (公告2020年第75号: order or booking
    and waybill): missing nothing, the shipment matches on its other three legs."""
    d = _export_legs(CEB303={"orderType": {"9710": "B", "9810": "W"}[mode]}, CEB603={"tradeMode": mode})
    outcome = reconcile(Shipment(order=d["CEB303"], waybill=d["CEB505"], inventory=d["CEB603"]))
    assert (outcome.state, outcome.missing, outcome.findings) == (ShipmentState.MATCHED, (), ())
    # one given is a leg like any: compared with the order
    outcome = reconcile(Shipment(order=d["CEB303"], payment=dataclasses.replace(
        d["CEB403"], head={**d["CEB403"].head, "ebcCode": "OTHER"}), waybill=d["CEB505"], inventory=d["CEB603"]))
    assert ([f.code for f in outcome.findings], outcome.state) == (["recon.payment_order_key_mismatch"],
                                                                   ShipmentState.MISMATCHED)


@pytest.mark.parametrize(("order_type", "mode", "missing"), [
    ("E", None, (Kind.PAYMENT, Kind.INVENTORY)),  # a B2C order: the 收款单 is awaited
    ("B", None, (Kind.INVENTORY,)), ("W", None, (Kind.INVENTORY,)),  # before the inventory, the order's type says
    ("W", "1210", (Kind.PAYMENT,)),  # its inventory's mode decides: a special-zone export has its 收款单
    ("E", "9610", (Kind.PAYMENT,)), ("E", "9710", ()),
])  # fmt: skip
def test_the_receipt_of_payment_is_awaited_by_the_mode_of_the_export(order_type: str, mode: str | None,
                                                                      missing: tuple[Kind, ...]) -> None:
    d = _export_legs(CEB303={"orderType": order_type}, CEB603={"tradeMode": mode or "9610"})
    outcome = reconcile(Shipment(order=d["CEB303"], waybill=d["CEB505"], inventory=d["CEB603"] if mode else None))
    assert outcome.missing == missing
    assert outcome.state is (ShipmentState.MATCHED if not missing else ShipmentState.INCOMPLETE)


def test_an_import_shipment_always_awaits_its_payment() -> None:
    s = make_shipment()
    assert reconcile(with_leg(s, Kind.PAYMENT, None)).missing == (Kind.PAYMENT,)
