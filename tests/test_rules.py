"""Business rules of one message (gateway.rules): every rule with a good and a bad case."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import rules
from gateway.documents import Document, ParsedMessage, extract
from gateway.errors import Layer
from gateway.messages import BY_CODE, MessageType, Signature
from gateway.rules import CODES, WARNINGS, check, findings, q2
from gateway.xmlsafe import parse_message

TODAY = datetime.date(2026, 11, 20)
APP_TIME = "20261119103000"
ROOT_GUID = "4CDE1B2A-9C1E-4A57-9F0B-6A2C5E7D8F01"

# --------------------------------------------------------------------------------------------
# Builders: realistic documents as plain dicts, wrapped like gateway.documents.extract does
# --------------------------------------------------------------------------------------------


def _guid(n: int) -> str:
    return f"8F3A2C10-5B6D-4E7F-8A9B-{n:012d}"


TRANSFER = {"copCode": "4601630004", "copName": "海南示例报关有限公司", "dxpMode": "DXP", "dxpId": "DXPENT0000458763"}
SUBSCRIBE = {"status": "RET", "dxpMode": "DXP", "dxpAddress": "DXPENT0000461234"}

BUYER = {
    "buyerIdType": "1",
    "buyerIdNumber": "460100199001011234",
    "buyerName": "张三",
    "buyerTelephone": "13800000000",
}
CONSIGNEE = {
    "consignee": "张三",
    "consigneeTelephone": "13800000000",
    "consigneeAddress": "海南省海口市龙华区滨海大道 1 号",
}
PARTIES = {
    "ebpCode": "4601630001",
    "ebpName": "示例跨境平台",
    "ebcCode": "4601630002",
    "ebcName": "示例电商企业",
}
LOGISTICS = {"logisticsCode": "4601630003", "logisticsName": "示例物流", "logisticsNo": "SF1234567890"}


def _document(mtype: MessageType, index: int, head: dict[str, str], lines: list[dict[str, str]]) -> Document:
    return Document(mtype, index, f"/{mtype.root}/{mtype.document}[{index}]", head, lines)


def message(
    code: str,
    heads: list[dict[str, str]],
    lines: list[list[dict[str, str]]] | None = None,
    *,
    signed: bool | None = None,
    mtype: MessageType | None = None,
) -> ParsedMessage:
    t = mtype or BY_CODE[code]
    docs = [_document(t, i + 1, h, (lines or [[]] * len(heads))[i]) for i, h in enumerate(heads)]
    return ParsedMessage(
        type=t,
        guid=ROOT_GUID,
        version="1.0",
        documents=docs,
        base_transfer=dict(TRANSFER) if t.direction == "declaration" else None,
        signed=t.signature is Signature.REQUIRED if signed is None else signed,
    )


def order_head(**kw: str) -> dict[str, str]:
    head = {
        "guid": _guid(311),
        "appType": "1",
        "appTime": APP_TIME,
        "appStatus": "2",
        "orderType": "I",
        "orderNo": "ORD20261119001",
        **PARTIES,
        "goodsValue": "300.00",
        "freight": "10.00",
        "discount": "12.00",
        "taxTotal": "27.30",
        "acturalPaid": "325.30",
        "currency": "142",
        "buyerRegNo": "buyer_001",
        "buyerName": "张三",
        "buyerTelephone": "13800000000",
        "buyerIdType": "1",
        "buyerIdNumber": "460100199001011234",
        "payCode": "4403169D3W",
        "payName": "示例支付",
        "payTransactionId": "PAY20261119001",
        **CONSIGNEE,
        "consigneeDistrict": "460106",
    }
    head.update(kw)
    return head


def order_lines() -> list[dict[str, str]]:
    return [
        {
            "gnum": "1",
            "itemNo": "SKU-001",
            "itemName": "婴儿奶粉",
            "gmodel": "800克/罐 3段",
            "unit": "122",
            "qty": "2",
            "price": "99.50",
            "totalPrice": "199.00",
            "currency": "142",
            "country": "304",
        },
        {
            "gnum": "2",
            "itemName": "面霜",
            "gmodel": "50毫升/瓶",
            "unit": "142",
            "qty": "1",
            "price": "101.00",
            "totalPrice": "101.00",
            "currency": "142",
            "country": "116",
            "note": "促销价\n限时",
        },
    ]


def payment_head(**kw: str) -> dict[str, str]:
    head = {
        "guid": _guid(411),
        "appType": "1",
        "appTime": APP_TIME,
        "appStatus": "2",
        "payCode": "4403169D3W",
        "payName": "示例支付",
        "payTransactionId": "PAY20261119001",
        "orderNo": "ORD20261119001",
        "ebpCode": PARTIES["ebpCode"],
        "ebpName": PARTIES["ebpName"],
        "payerIdType": "1",
        "payerIdNumber": "460100199001011234",
        "payerName": "张三",
        "telephone": "13800000000",
        "amountPaid": "325.30",
        "currency": "142",
        "payTime": "20261119102500",
    }
    head.update(kw)
    return head


def waybill_head(**kw: str) -> dict[str, str]:
    head = {
        "guid": _guid(511),
        "appType": "1",
        "appTime": APP_TIME,
        "appStatus": "2",
        **LOGISTICS,
        "billNo": "MAWB78412345",
        "orderNo": "ORD20261119001",
        "freight": "10",
        "insuredFee": "0",
        "currency": "142",
        "weight": "1.35",
        "packNo": "1",
        "goodsInfo": "奶粉 2 罐; 面霜 1 瓶",
        **CONSIGNEE,
    }
    head.update(kw)
    return head


def status_head(**kw: str) -> dict[str, str]:
    head = {
        "guid": _guid(513),
        "appType": "1",
        "appTime": APP_TIME,
        "appStatus": "2",
        **LOGISTICS,
        "logisticsStatus": "S",
        "logisticsTime": "20261119180000",
    }
    head.update(kw)
    return head


def inventory_head(mode: str = "9610", **kw: str) -> dict[str, str]:
    head = {
        "guid": _guid(621),
        "appType": "1",
        "appTime": APP_TIME,
        "appStatus": "2",
        "orderNo": "ORD20261119001",
        **PARTIES,
        "logisticsNo": LOGISTICS["logisticsNo"],
        "logisticsCode": LOGISTICS["logisticsCode"],
        "logisticsName": LOGISTICS["logisticsName"],
        "copNo": "COP20261119001",
        "preNo": "",
        "assureCode": PARTIES["ebcCode"],
        "invtNo": "",
        "ieFlag": "I",
        "declTime": "20261119",
        "customsCode": "4601",
        "portCode": "4604",
        **BUYER,
        "consigneeAddress": CONSIGNEE["consigneeAddress"],
        "agentCode": "4601630004",
        "agentName": "海南示例报关有限公司",
        "tradeMode": mode,
        "freight": "10.00",
        "insuredFee": "0",
        "currency": "142",
        "packNo": "1",
        "grossWeight": "1.35",
        "netWeight": "1.1",
    }
    if mode == "9610":
        head |= {"ieDate": "20261118", "trafMode": "5", "trafNo": "CZ3090", "voyageNo": "CZ3090",
                 "billNo": "MAWB78412345", "country": "304"}
    else:
        head |= {"emsNo": "T4604W000001", "areaCode": "4604660001", "areaName": "海口综保区示例仓储",
                 "trafMode": "4", "country": "142"}
    head.update(kw)
    return head


def inventory_lines(mode: str = "9610") -> list[dict[str, str]]:
    lines = [
        {
            "gnum": "1",
            "itemNo": "SKU-001",
            "itemName": "婴儿奶粉",
            "gcode": "1901101000",
            "gname": "婴儿配方奶粉",
            "gmodel": "800克/罐 3段",
            "barCode": "无",
            "country": "304",
            "currency": "142",
            "qty": "2",
            "unit": "122",
            "qty1": "1.6",
            "unit1": "035",
            "price": "99.50",
            "totalPrice": "199.00",
        },
        {
            "gnum": "2",
            "itemName": "面霜",
            "gcode": "3304990099",
            "gname": "面霜",
            "gmodel": "50毫升/瓶",
            "country": "116",
            "currency": "142",
            "qty": "1",
            "unit": "142",
            "qty1": "0.05",
            "unit1": "035",
            "qty2": "1",
            "unit2": "142",
            "price": "101.00",
            "totalPrice": "101.00",
        },
    ]
    if mode != "9610":
        for i, line in enumerate(lines):
            line["itemRecordNo"] = f"ITEM{i + 1:06d}"
    return lines


def order_msg() -> ParsedMessage:
    return message("CEB311", [order_head()], [order_lines()])


def payment_msg() -> ParsedMessage:
    return message("CEB411", [payment_head()])


def waybill_msg() -> ParsedMessage:
    return message("CEB511", [waybill_head()])


def status_msg() -> ParsedMessage:
    return message("CEB513", [status_head()])


def inventory_msg(mode: str = "9610") -> ParsedMessage:
    return message("CEB621", [inventory_head(mode)], [inventory_lines(mode)])


def bonded_msg() -> ParsedMessage:
    return inventory_msg("1210")


def cancel_msg() -> ParsedMessage:
    head = {
        "guid": _guid(623), "appType": "1", "appTime": APP_TIME, "appStatus": "2", "customsCode": "4601",
        "orderNo": "ORD20261119001", **PARTIES, **LOGISTICS, "invtNo": "46012026I000000001", **BUYER,
        "agentCode": "4601630004", "agentName": "海南示例报关有限公司", "reason": "顾客取消订单",
    }
    return message("CEB623", [head])


def refund_msg() -> ParsedMessage:
    head = {
        "guid": _guid(625), "appType": "1", "appTime": APP_TIME, "appStatus": "2", "customsCode": "4601",
        "orderNo": "ORD20261119001", **PARTIES, **LOGISTICS, "invtNo": "46012026I000000001", **BUYER,
        "agentCode": "4601630004", "agentName": "海南示例报关有限公司", "reason": "质量问题",
    }
    lines = [{"gnum": "2", "gcode": "3304990099", "gname": "面霜", "qty": "1", "unit": "142"}]
    return message("CEB625", [head], [lines])


def delivery_msg() -> ParsedMessage:
    head = {
        "guid": _guid(711), "appType": "1", "appTime": APP_TIME, "appStatus": "2", "customsCode": "4604",
        "operatorCode": "4604980001", "operatorName": "示例监管场所", "ieFlag": "I", "trafMode": "5",
        "trafNo": "CZ3090", "voyageNo": "CZ3090", "billNo": "MAWB78412345", "logisticsCode": "4601630003",
        "logisticsName": "示例物流",
    }
    lines = [{"gnum": "1", "logisticsNo": "SF1234567890"}, {"gnum": "2", "logisticsNo": "SF1234567891"}]
    return message("CEB711", [head], [lines])


def order_receipt_msg() -> ParsedMessage:
    head = {"guid": _guid(311), "ebpCode": PARTIES["ebpCode"], "ebcCode": PARTIES["ebcCode"],
            "orderNo": "ORD20261119001", "returnStatus": "120", "returnTime": "20261119103501123",
            "returnInfo": f"新增申报成功[{_guid(311)}]"}
    return message("CEB312", [head])


def inventory_receipt_msg() -> ParsedMessage:
    head = {"guid": _guid(621), "customsCode": "4601", "agentCode": "4601630004", "copNo": "COP20261119001",
            "preNo": "B20261119000000001", "invtNo": "46012026I000000001", "returnStatus": "-621005",
            "returnTime": "20261119110000000", "returnInfo": "超过单次限值"}
    return message("CEB622", [head])


def waybill_status_receipt_msg() -> ParsedMessage:
    head = {"guid": _guid(513), **{k: LOGISTICS[k] for k in ("logisticsCode", "logisticsNo")},
            "logisticsStatus": "S", "returnStatus": "2", "returnTime": "20261119180501000", "returnInfo": ""}
    return message("CEB514", [head])


def tax_msg() -> ParsedMessage:
    head = {"guid": _guid(816), "returnTime": "20261120090000000", "invtNo": "46012026I000000001",
            "taxNo": "46012026I00000000101", "customsTax": "0", "valueAddedTax": "24.56",
            "consumptionTax": "0", "status": "1", "customsCode": "4601"}
    lines = [{"gnum": "1", "gcode": "1901101000", "taxPrice": "199.00", "customsTax": "0",
              "valueAddedTax": "16.30", "consumptionTax": "0"}]
    return message("CEB816", [head], [lines])


def tax_status_msg() -> ParsedMessage:
    head = {"guid": _guid(818), "returnTime": "20261120090000000", "invtNo": "46012026I000000001",
            "taxNo": "46012026I00000000101", "status": "2"}
    return message("CEB818", [head])


def format_receipt_msg() -> ParsedMessage:
    head = {"guid": _guid(900), "returnStatus": "-1", "returnInfo": "报文格式错误",
            "returnTime": "20261119103000000", "oriCopMsgId": "COPMSG001", "oriMessageType": "CEB311Message",
            "oriBizMessage": "<ceb:CEB311Message>\n\t…</ceb:CEB311Message>"}
    return message("CEB900", [head])


EXPORT_DATA = Path(__file__).parent / "data" / "schema"


def export(code: str) -> ParsedMessage:
    """An export message as the schema fixtures hold it (spec §4: parsed, not built, as their layouts differ)."""
    root, mtype = parse_message((EXPORT_DATA / f"{code}Message.xml").read_bytes())
    return extract(root, mtype)


FACTORIES: dict[str, Callable[[], ParsedMessage]] = {
    "311": order_msg,
    "411": payment_msg,
    "511": waybill_msg,
    "513": status_msg,
    "621": inventory_msg,
    "621b": bonded_msg,
    "623": cancel_msg,
    "625": refund_msg,
    "711": delivery_msg,
    "312": order_receipt_msg,
    "514": waybill_status_receipt_msg,
    "622": inventory_receipt_msg,
    "816": tax_msg,
    "818": tax_status_msg,
    "900": format_receipt_msg,
    "303": partial(export, "CEB303"),
    "603": partial(export, "CEB603"),
    "604": partial(export, "CEB604"),
    "507": partial(export, "CEB507"),
    "509": partial(export, "CEB509"),
    "607": partial(export, "CEB607"),
    "508": partial(export, "CEB508"),
    "701": partial(export, "CEB701"),
    "702": partial(export, "CEB702"),
    "792": partial(export, "CEB792"),
    "213": partial(export, "CEB213"),
    "215": partial(export, "CEB215"),
}

# --------------------------------------------------------------------------------------------
# Mutations: one-liners used by the good/bad tables
# --------------------------------------------------------------------------------------------

Mutation = Callable[[ParsedMessage], ParsedMessage | None]
_DEL = object()


def _apply(target: dict[str, str], kw: dict[str, Any]) -> None:
    for k, v in kw.items():
        if v is _DEL:
            target.pop(k, None)
        else:
            target[k] = v


def head(**kw: Any) -> Mutation:
    def m(msg: ParsedMessage) -> None:
        _apply(msg.documents[0].head, kw)

    return m


def line(n: int, **kw: Any) -> Mutation:
    """``n`` is 1-based, like the paths."""

    def m(msg: ParsedMessage) -> None:
        _apply(msg.documents[0].lines[n - 1], kw)

    return m


def transfer(**kw: Any) -> Mutation:
    def m(msg: ParsedMessage) -> None:
        assert msg.base_transfer is not None
        _apply(msg.base_transfer, kw)

    return m


def attrs(**kw: Any) -> Mutation:
    return lambda msg: dataclasses.replace(msg, **kw)


def second_document(**kw: Any) -> Mutation:
    """Append a copy of the first document (with ``kw`` applied to its head) as document 2."""

    def m(msg: ParsedMessage) -> ParsedMessage:
        first = msg.documents[0]
        h = dict(first.head)
        _apply(h, kw)
        doc = _document(first.type, 2, h, [dict(li) for li in first.lines])
        return dataclasses.replace(msg, documents=[first, doc])

    return m


def both(*ms: Mutation) -> Mutation:
    def m(msg: ParsedMessage) -> ParsedMessage:
        for one in ms:
            msg = one(msg) or msg
        return msg

    return m


def run(kind: str, mutation: Mutation | None = None) -> list[tuple[str, str]]:
    msg = FACTORIES[kind]()
    if mutation is not None:
        msg = mutation(msg) or msg
    issues, warnings = findings(msg, today=TODAY)
    assert all(i.layer is Layer.RULE and i.code in CODES and i.message for i in issues)
    assert warnings == (), warnings  # the tables' messages fill nothing their mode leaves out (see WARNED)
    assert check(msg, today=TODAY) == issues
    return [(i.code, i.path) for i in issues]


OH = "/CEB311Message/Order[1]/OrderHead/"
P = "/CEB411Message/Payment[1]/PaymentHead/"
W = "/CEB511Message/Logistics[1]/LogisticsHead/"
S = "/CEB513Message/LogisticsStatus[1]/"
INV = "/CEB621Message/Inventory[1]/InventoryHead/"
BT = "/CEB311Message/BaseTransfer/"


def OL(n: int, name: str = "") -> str:
    return f"/CEB311Message/Order[1]/OrderList[{n}]" + (f"/{name}" if name else "")


def IL(n: int, name: str = "") -> str:
    return f"/CEB621Message/Inventory[1]/InventoryList[{n}]" + (f"/{name}" if name else "")


TOMORROW_LATE = (TODAY + datetime.timedelta(days=1)).strftime("%Y%m%d") + "235959"
IN_TWO_DAYS = (TODAY + datetime.timedelta(days=2)).strftime("%Y%m%d") + "000000"

# --------------------------------------------------------------------------------------------
# Valid shipments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_valid_messages_have_no_issues(kind: str) -> None:
    assert run(kind) == []


def test_valid_9610_shipment() -> None:
    for make in (order_msg, payment_msg, waybill_msg, status_msg, inventory_msg):
        msg = make()
        assert check(msg, today=TODAY) == [], msg.type.code
    assert inventory_msg().documents[0].head["tradeMode"] == "9610"


def test_valid_1210_shipment() -> None:
    inv = bonded_msg()
    assert inv.documents[0].head["tradeMode"] == "1210"
    assert "trafNo" not in inv.documents[0].head  # bonded: no cross-border transport ids needed
    waybill = waybill_msg()
    del waybill.documents[0].head["billNo"]  # no master bill for a parcel leaving the bonded zone
    for msg in (order_msg(), payment_msg(), waybill, inv):
        assert check(msg, today=TODAY) == [], msg.type.code


# --------------------------------------------------------------------------------------------
# Good cases: edge values every rule must accept
# --------------------------------------------------------------------------------------------

GOOD: list[tuple[str, str, Mutation]] = [
    ("app_type change", "311", head(appType="2")),
    ("app_type delete", "411", head(appType="3")),
    ("app_status temp-save", "511", head(appStatus="1")),
    ("optional district absent", "311", head(consigneeDistrict=_DEL)),
    ("empty optional element is absent", "621", head(ieDate="", invtNo="", preNo="")),
    ("free text may hold tab and newline", "311", head(note="第一行\n\t第二行")),
    ("ideographic space inside a value", "311", head(consigneeAddress="海南省海口市\u3000滨海大道 1 号")),
    ("amounts without decimals", "311",
     head(goodsValue="300", freight="10", discount="12", taxTotal="27.3", acturalPaid="325.3")),
    ("R1 with 5 decimals rounds half up", "311",
     both(head(taxTotal="27.305", acturalPaid="325.31"))),
    ("zero discount and tax", "311", head(discount="0", taxTotal="0", acturalPaid="310.00")),
    ("gift line at price 0", "311",
     both(line(2, price="0", totalPrice="0"), head(goodsValue="199.00", acturalPaid="224.30"))),
    ("R4 quantised half up", "621",
     both(line(2, price="33.335", qty="3", qty1="0.15", qty2="3", totalPrice="100.01"))),
    ("R4 quantity with decimals", "621",
     line(1, price="12.5", qty="0.4", qty1="1.6", totalPrice="5.00")),
    ("unit == unit1 with equal qty", "621", line(1, unit1="122", qty1="2.00000")),
    ("qty2/unit2 both absent", "621", line(2, qty2=_DEL, unit2=_DEL)),
    ("assureCode = ebpCode", "621", head(assureCode=PARTIES["ebpCode"])),
    ("assureCode = logisticsCode", "621", head(assureCode=LOGISTICS["logisticsCode"])),
    ("netWeight = grossWeight", "621", head(netWeight="1.35000")),
    ("tradeMode 1239 held to bonded rules", "621b", head(tradeMode="1239")),
    ("trafMode letter", "621b", head(trafMode="Y")),
    ("earliest plausible time", "311", head(appTime="20100101000000")),
    ("latest plausible time: tomorrow", "411", head(appTime=TOMORROW_LATE, payTime=TOMORROW_LATE)),
    ("leap day", "621", head(declTime="20240229", ieDate="20240229")),
    ("ieDate ahead: declared before the arrival", "621", head(ieDate="20261204")),
    ("packNo written +1", "511", head(packNo="+1")),
    ("optional waybill amounts absent", "511", head(freight=_DEL, insuredFee=_DEL)),
    ("receipt with unknown status code", "312", head(returnStatus="18")),
    ("receipt with empty returnInfo", "312", head(returnInfo="")),
    ("tax void", "818", head(status="3")),
    ("711 export flag", "711", head(ieFlag="E")),
    ("two distinct documents", "311",
     second_document(guid=_guid(3112), orderNo="ORD20261119002")),
    ("signed 311 is fine too", "311", attrs(signed=True)),
    # a partial return lists the inventory's items it returns by their own gnum (A.9, A.32): 2 alone is no gap
    ("return of item 2 alone", "213", lambda msg: msg.documents[0].lines.__delitem__(0)),
    ("return with no tradeMode", "213", head(tradeMode=_DEL)),
    ("tally without the return's number", "215", head(invtNo=_DEL)),
]


@pytest.mark.parametrize(("kind", "mutation"), [pytest.param(k, m, id=i) for i, k, m in GOOD])
def test_good_cases(kind: str, mutation: Mutation) -> None:
    assert run(kind, mutation) == []


# --------------------------------------------------------------------------------------------
# Bad cases: exact code and path (the full set of issues the mutation causes)
# --------------------------------------------------------------------------------------------

XH = "/CEB603Message/Inventory[1]/InventoryHead/"
SH = "/CEB701Message/SummaryApply[1]/SummaryApplyHead/"
RH = "/CEB213Message/InvtRefund[1]/InvtRefundHead/"
BAD: list[tuple[str, str, Mutation, set[tuple[str, str]]]] = [
    # non-empty / trimmed / control characters
    ("empty required", "311", head(ebpName=""), {("rule.required_empty", OH + "ebpName")}),
    ("blank required", "311", head(buyerName="   "), {("rule.required_empty", OH + "buyerName")}),
    ("empty required line field", "311", line(1, itemName=""), {("rule.required_empty", OL(1, "itemName"))}),
    ("empty reason", "623", head(reason=" "), {("rule.required_empty", "/CEB623Message/InvtCancel[1]/reason")}),
    ("empty receipt key", "312", head(orderNo=""),
     {("rule.required_empty", "/CEB312Message/OrderReturn[1]/orderNo")}),
    ("empty BaseTransfer", "311", transfer(copName=""), {("rule.required_empty", BT + "copName")}),
    ("untrimmed", "311", head(orderNo=" ORD20261119001"), {("rule.untrimmed", OH + "orderNo")}),
    ("untrimmed code is judged trimmed", "311", head(currency="142 "), {("rule.untrimmed", OH + "currency")}),
    ("whitespace-only optional", "311", head(payName="  "), {("rule.untrimmed", OH + "payName")}),
    ("control character", "311", head(consigneeAddress="海口\t龙华"),
     {("rule.control_character", OH + "consigneeAddress")}),
    ("C1 control in free text", "311", head(note="ok\x85"), {("rule.control_character", OH + "note")}),
    ("newline in a name", "621", line(1, gname="婴儿\n奶粉"), {("rule.control_character", IL(1, "gname"))}),
    ("zero-width space in a key", "311", head(orderNo="ORD2026\u200b1119001"),
     {("rule.control_character", OH + "orderNo")}),
    ("direction mark in a name", "311", head(buyerName="张\u202e三"), {("rule.control_character", OH + "buyerName")}),
    ("a joiner in free text is text", "311", head(note="👨\u200d👩 礼物"), set()),
    # guids and duplicates
    ("document guid length", "311", head(guid=_guid(311)[:-1]), {("rule.guid_length", OH + "guid")}),
    ("receipt guid length", "622", head(guid="X" * 37),
     {("rule.guid_length", "/CEB622Message/InventoryReturn[1]/guid")}),
    ("root guid length", "311", attrs(guid="1234"), {("rule.guid_length", "/CEB311Message/@guid")}),
    ("duplicate guid", "311", second_document(orderNo="ORD20261119002"),
     {("rule.duplicate_guid", "/CEB311Message/Order[2]/OrderHead/guid")}),
    ("duplicate business key", "311", second_document(guid=_guid(3112)),
     {("rule.duplicate_document", "/CEB311Message/Order[2]")}),
    # code lists
    ("appType", "311", head(appType="4"), {("rule.app_type", OH + "appType")}),
    ("appType on CEB623", "623", head(appType="2"), {("rule.app_type", "/CEB623Message/InvtCancel[1]/appType")}),
    ("appStatus", "411", head(appStatus="3"), {("rule.app_status", P + "appStatus")}),
    ("orderType", "311", head(orderType="E"), {("rule.order_type", OH + "orderType")}),
    ("buyerIdType", "311", head(buyerIdType="2"), {("rule.id_type", OH + "buyerIdType")}),
    ("payerIdType", "411", head(payerIdType="2"), {("rule.id_type", P + "payerIdType")}),
    ("inventory buyerIdType", "621", head(buyerIdType="2"), {("rule.id_type", INV + "buyerIdType")}),
    ("cancel buyerIdType", "623", head(buyerIdType="2"),
     {("rule.id_type", "/CEB623Message/InvtCancel[1]/buyerIdType")}),
    ("ieFlag", "621", head(ieFlag="E"), {("rule.ie_flag", INV + "ieFlag")}),
    ("711 ieFlag", "711", head(ieFlag="X"), {("rule.ie_flag", "/CEB711Message/Delivery[1]/DeliveryHead/ieFlag")}),
    ("order currency", "311", head(currency="502"), {("rule.currency_not_cny", OH + "currency")}),
    ("order line currency", "311", line(2, currency="116"), {("rule.currency_not_cny", OL(2, "currency"))}),
    ("payment currency", "411", head(currency="CNY"), {("rule.currency_not_cny", P + "currency")}),
    ("waybill currency", "511", head(currency="110"), {("rule.currency_not_cny", W + "currency")}),
    ("inventory currency", "621", head(currency="300"), {("rule.currency_not_cny", INV + "currency")}),
    ("inventory line currency", "621", line(1, currency="502"), {("rule.currency_not_cny", IL(1, "currency"))}),
    ("logisticsStatus", "513", head(logisticsStatus="R"), {("rule.logistics_status", S + "logisticsStatus")}),
    ("receipt logisticsStatus", "514", head(logisticsStatus="D"),
     {("rule.logistics_status", "/CEB514Message/LogisticsStatusReturn[1]/logisticsStatus")}),
    ("tax status", "816", head(status="4"), {("rule.tax_status", "/CEB816Message/Tax[1]/TaxHeadRd/status")}),
    ("tax status 818", "818", head(status="0"),
     {("rule.tax_status", "/CEB818Message/Tax[1]/TaxHeadStatus/status")}),
    ("tradeMode", "621", head(tradeMode="0110"), {("rule.trade_mode", INV + "tradeMode")}),
    ("trafMode", "621", head(trafMode="B"), {("rule.traf_mode", INV + "trafMode")}),
    ("711 trafMode", "711", head(trafMode="10"),
     {("rule.traf_mode", "/CEB711Message/Delivery[1]/DeliveryHead/trafMode")}),
    ("dxpMode", "311", transfer(dxpMode="FTP"), {("rule.dxp_mode", BT + "dxpMode")}),
    ("BaseSubscribe status", "311", attrs(base_subscribes=(SUBSCRIBE, {**SUBSCRIBE, "status": "FOO"})),
     {("rule.subscribe_status", "/CEB311Message/BaseSubscribe[2]/status")}),
    ("BaseSubscribe dxpMode and address", "603", attrs(base_subscribes=({**SUBSCRIBE, "dxpMode": "XYZ",
                                                                        "dxpAddress": ""},)),
     {("rule.dxp_mode", "/CEB603Message/BaseSubscribe[1]/dxpMode"),
      ("rule.required_empty", "/CEB603Message/BaseSubscribe[1]/dxpAddress")}),
    ("returnStatus", "312", head(returnStatus="OK"),
     {("rule.return_status_format", "/CEB312Message/OrderReturn[1]/returnStatus")}),
    ("900 returnStatus", "900", head(returnStatus="-1a"),
     {("rule.return_status_format", "/CEB900Message/MessageReturn[1]/returnStatus")}),
    # code formats
    ("order line country", "311", line(1, country="DE"), {("rule.country_code", OL(1, "country"))}),
    ("inventory head country", "621", head(country="3040"), {("rule.country_code", INV + "country")}),
    ("inventory line country", "621", line(2, country="１１６"), {("rule.country_code", IL(2, "country"))}),
    ("order unit", "311", line(1, unit="罐"), {("rule.unit_code", OL(1, "unit"))}),
    ("unit1", "621", line(1, unit1="35"), {("rule.unit_code", IL(1, "unit1"))}),
    ("unit2", "621", line(2, unit2="KG"), {("rule.unit_code", IL(2, "unit2"))}),
    ("customsCode", "621", head(customsCode="460"), {("rule.customs_code", INV + "customsCode")}),
    ("portCode", "621", head(portCode="46O4"), {("rule.customs_code", INV + "portCode")}),
    ("receipt customsCode", "622", head(customsCode="46011"),
     {("rule.customs_code", "/CEB622Message/InventoryReturn[1]/customsCode")}),
    ("gcode", "621", line(1, gcode="19011010"), {("rule.gcode", IL(1, "gcode"))}),
    ("refund gcode", "625", line(1, gcode="330499009X"),
     {("rule.gcode", "/CEB625Message/InvtRefund[1]/InvtRefundList[1]/gcode")}),
    ("refund lists an item twice", "625", lambda msg: msg.documents[0].lines.append(dict(msg.documents[0].lines[0])),
     {("rule.gnum_duplicate", "/CEB625Message/InvtRefund[1]/InvtRefundList[2]/gnum")}),
    ("consigneeDistrict", "311", head(consigneeDistrict="46010"), {("rule.district_code", OH + "consigneeDistrict")}),
    # dates
    ("appTime layout", "311", head(appTime="2026-11-19 10:30"), {("rule.date_format", OH + "appTime")}),
    ("appTime not a date", "311", head(appTime="20260230103000"), {("rule.date_format", OH + "appTime")}),
    ("appTime hour 24", "411", head(appTime="20261119240000"), {("rule.date_format", P + "appTime")}),
    ("payTime layout", "411", head(payTime="202611191025"), {("rule.date_format", P + "payTime")}),
    ("logisticsTime layout", "513", head(logisticsTime="20261119"), {("rule.date_format", S + "logisticsTime")}),
    ("declTime layout", "621", head(declTime="2026111"), {("rule.date_format", INV + "declTime")}),
    ("ieDate not a date", "621", head(ieDate="20261131"), {("rule.date_format", INV + "ieDate")}),
    ("ieDate more than a month ahead", "621", head(ieDate="20261222"), {("rule.date_implausible", INV + "ieDate")}),
    ("declTime ahead", "621", head(declTime="20261122"), {("rule.date_implausible", INV + "declTime")}),
    ("returnTime layout", "312", head(returnTime="20261119103501"),
     {("rule.date_format", "/CEB312Message/OrderReturn[1]/returnTime")}),
    ("appTime before 2010", "311", head(appTime="20091231235959"), {("rule.date_implausible", OH + "appTime")}),
    ("appTime in two days", "511", head(appTime=IN_TWO_DAYS), {("rule.date_implausible", W + "appTime")}),
    ("payTime year 2099", "411", head(payTime="20990101000000"), {("rule.date_implausible", P + "payTime")}),
    ("declTime in the future", "621", head(declTime=IN_TWO_DAYS[:8]), {("rule.date_implausible", INV + "declTime")}),
    ("returnTime not a time", "816", head(returnTime="20260230000000000"),
     {("rule.date_format", "/CEB816Message/Tax[1]/TaxHeadRd/returnTime")}),
    # numbers
    ("exponent is not xs:decimal", "411", head(amountPaid="3.253e2"), {("rule.decimal_format", P + "amountPaid")}),
    ("qty not a number", "621", line(1, qty="two"), {("rule.decimal_format", IL(1, "qty"))}),
    ("gnum not an integer", "311", line(1, gnum="1.0"), {("rule.integer_format", OL(1, "gnum"))}),
    ("packNo not an integer", "511", head(packNo="one"), {("rule.integer_format", W + "packNo")}),
    ("negative freight", "511", head(freight="-1"), {("rule.negative_amount", W + "freight")}),
    ("negative tax", "816", head(valueAddedTax="-0.01"),
     {("rule.negative_amount", "/CEB816Message/Tax[1]/TaxHeadRd/valueAddedTax")}),
    ("negative discount breaks R1 too", "311", head(discount="-12.00"),
     {("rule.negative_amount", OH + "discount"), ("rule.actural_paid_mismatch", OH + "acturalPaid")}),
    ("inventory price 0", "621", line(2, price="0", totalPrice="0"),
     {("rule.not_positive", IL(2, "price")), ("rule.not_positive", IL(2, "totalPrice"))}),
    ("zero gross weight", "621", head(grossWeight="0", netWeight="0"),
     {("rule.not_positive", INV + "grossWeight"), ("rule.not_positive", INV + "netWeight")}),
    ("waybill weight 0", "511", head(weight="0.00"), {("rule.not_positive", W + "weight")}),
    ("qty2 0", "621", line(2, qty2="0"), {("rule.not_positive", IL(2, "qty2"))}),
    ("refund qty 0", "625", line(1, qty="0"),
     {("rule.not_positive", "/CEB625Message/InvtRefund[1]/InvtRefundList[1]/qty")}),
    ("gnum 0", "711", line(1, gnum="0"),
     {("rule.not_positive", "/CEB711Message/Delivery[1]/DeliveryList[1]/gnum")}),
    # arithmetic
    ("R1 off by a cent", "311", head(acturalPaid="325.31"), {("rule.actural_paid_mismatch", OH + "acturalPaid")}),
    ("R1 discount added instead of subtracted", "311", head(acturalPaid="349.30"),
     {("rule.actural_paid_mismatch", OH + "acturalPaid")}),
    ("R4 order line", "311", both(line(1, totalPrice="199.01"), head(goodsValue="300.01", acturalPaid="325.31")),
     {("rule.total_price_mismatch", OL(1, "totalPrice"))}),
    ("R4 inventory line", "621", line(2, qty="2", qty2="2", totalPrice="101.00"),
     {("rule.total_price_mismatch", IL(2, "totalPrice"))}),
    ("R4 below half a cent is not enough", "621", line(2, price="33.334", qty="3", qty2="3", totalPrice="100.01"),
     {("rule.total_price_mismatch", IL(2, "totalPrice"))}),
    ("goodsValue ≠ Σ totalPrice", "311", head(goodsValue="310.00", acturalPaid="335.30"),
     {("rule.goods_value_mismatch", OH + "goodsValue")}),
    ("line change breaks R4 and goodsValue", "311", line(2, totalPrice="100.00"),
     {("rule.total_price_mismatch", OL(2, "totalPrice")), ("rule.goods_value_mismatch", OH + "goodsValue")}),
    ("netWeight > grossWeight", "621", head(netWeight="1.36"), {("rule.net_weight_exceeds_gross", INV + "netWeight")}),
    ("waybill packNo", "511", head(packNo="2"), {("rule.pack_no", W + "packNo")}),
    ("inventory packNo", "621", head(packNo="6000"), {("rule.pack_no", INV + "packNo")}),
    ("unit == unit1, qty ≠ qty1", "621", line(1, unit1="122"), {("rule.qty1_mismatch", IL(1, "qty1"))}),
    ("qty2 without unit2", "621", line(2, unit2=_DEL), {("rule.qty2_unit2", IL(2, "qty2"))}),
    ("unit2 without qty2", "621", line(2, qty2=_DEL), {("rule.qty2_unit2", IL(2))}),
    ("unit2 with empty qty2", "621", line(2, qty2=""), {("rule.qty2_unit2", IL(2, "qty2"))}),
    # gnum
    ("gnum gap", "621", line(2, gnum="3"), {("rule.gnum_sequence", IL(2, "gnum"))}),
    ("gnum from 0", "311", both(line(1, gnum="0"), line(2, gnum="1")),
     {("rule.not_positive", OL(1, "gnum")), ("rule.gnum_sequence", OL(1, "gnum"))}),
    ("gnum out of order", "311", both(line(1, gnum="2"), line(2, gnum="1")), {("rule.gnum_sequence", OL(1, "gnum"))}),
    ("gnum duplicate", "621", line(2, gnum="1"), {("rule.gnum_duplicate", IL(2, "gnum"))}),
    # R9 / R10
    ("assureCode foreign", "621", head(assureCode="4601630009"), {("rule.assure_code", INV + "assureCode")}),
    ("9610 without billNo", "621", head(billNo=_DEL), {("rule.mode_field_missing", INV[:-1])}),
    ("9610 with empty trafNo", "621", head(trafNo=""), {("rule.mode_field_missing", INV + "trafNo")}),
    ("1210 without emsNo", "621b", head(emsNo=_DEL), {("rule.mode_field_missing", INV[:-1])}),
    ("1210 with empty areaName", "621b", head(areaName=""), {("rule.mode_field_missing", INV + "areaName")}),
    ("1239 without areaCode", "621b", head(tradeMode="1239", areaCode=_DEL), {("rule.mode_field_missing", INV[:-1])}),
    ("1210 line without itemRecordNo", "621b", line(2, itemRecordNo=_DEL), {("rule.mode_field_missing", IL(2))}),
    ("1210 line with empty itemRecordNo", "621b", line(1, itemRecordNo=""),
     {("rule.mode_field_missing", IL(1, "itemRecordNo"))}),
    ("1210 country not 142", "621b", head(country="116"), {("rule.bonded_country", INV + "country")}),
    # signature
    ("unsigned inventory", "621", attrs(signed=False), {("rule.signature_missing", "/CEB621Message")}),
    ("unsigned cancel", "623", attrs(signed=False), {("rule.signature_missing", "/CEB623Message")}),
    ("unsigned delivery", "711", attrs(signed=False), {("rule.signature_missing", "/CEB711Message")}),
    # export (spec §4): the code lists of §3.6 that only export messages carry
    ("export statisticsFlag", "603", head(statisticsFlag="C"), {("rule.statistics_flag", XH + "statisticsFlag")}),
    ("export receipt statisticsFlag", "604", head(statisticsFlag="9"),
     {("rule.statistics_flag", "/CEB604Message/InventoryReturn[1]/statisticsFlag")}),
    ("export fFlag", "603", head(fFlag="4"), {("rule.fee_flag", XH + "fFlag")}),
    ("export currency", "303", head(currency="USD"),
     {("rule.currency_code", "/CEB303Message/Order[1]/OrderHead/currency")}),
    ("export line currency", "603", line(1, currency="99A"),
     {("rule.currency_code", "/CEB603Message/Inventory[1]/InventoryList[1]/currency")}),
    ("export unsigned inventory", "603", attrs(signed=False), {("rule.signature_missing", "/CEB603Message")}),
    # export transport (A.20–A.28): split parts, the list's waybills and inventories
    ("arrival part beyond its count", "507", head(msgCount="2", msgSeqNo="3"),
     {("rule.msg_seq_no", "/CEB507Message/Arrival[1]/ArrivalHead/msgSeqNo")}),
    ("departure lists a waybill twice", "509", line(3, logisticsNo="YT403787576557CN"),
     {("rule.waybill_listed_twice", "/CEB509Message/Departure[1]/DepartureList[3]/logisticsNo")}),
    ("清单总分单 names an import invtNo", "607", line(1, invtNo="51412026I00000471101"),
     {("rule.invt_no_format", "/CEB607Message/WayBill[1]/WayBillList[1]/invtNo")}),
    # the summary declaration (A.29–A.31)
    ("summaryFlag", "701", head(summaryFlag="3"), {("rule.summary_flag", SH + "summaryFlag")}),
    ("msgSeqNo after msgCount", "701", head(msgCount="2", msgSeqNo="3"), {("rule.msg_seq_no", SH + "msgSeqNo")}),
    ("result msgSeqNo after msgCount", "792", head(msgSeqNo="2"),
     {("rule.msg_seq_no", "/CEB792Message/SummaryResult[1]/SummaryResultHead/msgSeqNo")}),
    ("startTime without endTime", "701", head(startTime="20261120000000"), {("rule.summary_period", SH + "startTime")}),
    ("startTime after endTime", "701", head(startTime="20261120120000", endTime="20261120110000"),
     {("rule.summary_period", SH + "startTime")}),
    ("no inventory and no period", "701", lambda msg: msg.documents[0].lines.clear(),
     {("rule.summary_nothing", SH[:-1])}),
    ("invtNo twice", "701", line(3, invtNo="51412026E00000471101"),
     {("rule.summary_duplicate_inventory", "/CEB701Message/SummaryApply[1]/SummaryApplyList[3]/invtNo")}),
    ("unsigned summary application", "701", attrs(signed=False), {("rule.signature_missing", "/CEB701Message")}),
    # retail export returns (A.32–A.35)
    ("return names an import inventory", "213", head(invtNo="51412026I00000471101"),
     {("rule.invt_no_format", RH + "invtNo")}),
    ("return is no export", "213", head(ieFlag="E"), {("rule.ie_flag", RH + "ieFlag")}),
    ("return from China", "213", head(country="142"), {("rule.return_country", RH + "country")}),
    ("return under an export trade mode", "213", head(tradeMode="9610"), {("rule.trade_mode", RH + "tradeMode")}),
    ("return lists an item twice", "213", line(2, gnum="1"),
     {("rule.gnum_duplicate", "/CEB213Message/InvtRefund[1]/InvtRefundList[2]/gnum")}),
    ("return line qty2 without unit2", "213", line(1, unit2=_DEL),
     {("rule.qty2_unit2", "/CEB213Message/InvtRefund[1]/InvtRefundList[1]/qty2")}),
    ("tally names an import inventory", "215", head(invtNo="51412026I00000471101"),
     {("rule.invt_no_format", "/CEB215Message/InvtRefundDetail[1]/invtNo")}),
    ("tally is no export", "215", head(ieFlag="E"), {("rule.ie_flag", "/CEB215Message/InvtRefundDetail[1]/ieFlag")}),
]


@pytest.mark.parametrize(("kind", "mutation", "expected"), [pytest.param(k, m, e, id=i) for i, k, m, e in BAD])
def test_bad_cases(kind: str, mutation: Mutation, expected: set[tuple[str, str]]) -> None:
    found = run(kind, mutation)
    assert set(found) == expected
    assert len(found) == len(expected), found  # no issue reported twice


# --------------------------------------------------------------------------------------------
# Warnings: what the mode leaves out (spec §3.4), taken with a word — the message passes
# --------------------------------------------------------------------------------------------

WARNED: list[tuple[str, str, Mutation, list[tuple[str, str]]]] = [
    ("9610 with emsNo", "621", head(emsNo="T4604W000001"), [("rule.mode_field_unexpected", INV + "emsNo")]),
    ("9610 with areaCode and areaName", "621", head(areaCode="4604660001", areaName="海口综保区示例仓储"),
     [("rule.mode_field_unexpected", INV + "areaCode"), ("rule.mode_field_unexpected", INV + "areaName")]),
    ("9610 line with itemRecordNo", "621", line(2, itemRecordNo="ITEM000002"),
     [("rule.mode_field_unexpected", IL(2, "itemRecordNo"))]),
    ("9610 departing from China", "621", head(country="142"), [("rule.direct_purchase_country", INV + "country")]),
    ("1210 with trafNo", "621b", head(trafNo="CZ3090"), [("rule.mode_field_unexpected", INV + "trafNo")]),
    ("1210 with voyageNo and billNo", "621b", head(voyageNo="CZ3090", billNo="MAWB78412345"),
     [("rule.mode_field_unexpected", INV + "voyageNo"), ("rule.mode_field_unexpected", INV + "billNo")]),
    ("1239 with billNo", "621b", head(tradeMode="1239", billNo="MAWB78412345"),
     [("rule.mode_field_unexpected", INV + "billNo")]),
    ("9610 with everything of 1210", "621",
     both(head(emsNo="T4604W000001", country="142"), line(1, itemRecordNo="ITEM000001")),
     [("rule.mode_field_unexpected", INV + "emsNo"), ("rule.direct_purchase_country", INV + "country"),
      ("rule.mode_field_unexpected", IL(1, "itemRecordNo"))]),
]

#: Empty is as good as absent (the module's convention), and an unknown mode is rule.trade_mode's alone.
NOT_WARNED: list[tuple[str, str, Mutation]] = [
    ("9610 with empty emsNo, areaCode, areaName", "621", head(emsNo="", areaCode=" ", areaName="")),
    ("9610 line with empty itemRecordNo", "621", line(1, itemRecordNo="")),
    ("1210 with empty trafNo, voyageNo, billNo", "621b", head(trafNo="", voyageNo="", billNo="")),
    ("1210 from China", "621b", head(country="142")),
    ("9610 from Germany", "621", head(country="304")),
    ("unknown tradeMode with both modes' fields", "621", head(tradeMode="0110", emsNo="T4604W000001")),
]


def _findings(kind: str, mutation: Mutation) -> rules.Findings:
    msg = FACTORIES[kind]()
    return findings(mutation(msg) or msg, today=TODAY)


@pytest.mark.parametrize(("kind", "mutation", "expected"), [pytest.param(k, m, e, id=i) for i, k, m, e in WARNED])
def test_warnings_do_not_refuse(kind: str, mutation: Mutation, expected: list[tuple[str, str]]) -> None:
    errors, warnings = _findings(kind, mutation)
    assert errors == []  # the message passes: check() finds nothing
    assert [(w.code, w.path) for w in warnings] == expected  # in document order
    assert all(w.layer is Layer.RULE and w.code in WARNINGS and w.message for w in warnings)
    msg = FACTORIES[kind]()
    assert check(mutation(msg) or msg, today=TODAY) == []


@pytest.mark.parametrize(("kind", "mutation"), [pytest.param(k, m, id=i) for i, k, m in NOT_WARNED])
def test_no_warning_for_what_the_mode_takes(kind: str, mutation: Mutation) -> None:
    assert _findings(kind, mutation).warnings == ()


def test_warnings_beside_errors() -> None:
    """A message refused for an error still has its warnings told apart: they are never among the errors."""
    errors, warnings = _findings("621", head(billNo=_DEL, emsNo="T4604W000001"))
    assert [(i.code, i.path) for i in errors] == [("rule.mode_field_missing", INV[:-1])]
    assert [(w.code, w.path) for w in warnings] == [("rule.mode_field_unexpected", INV + "emsNo")]


def test_warning_messages_say_what_was_found() -> None:
    _, warnings = _findings("621b", head(trafNo="CZ3090"))
    assert warnings[0].message == ("trafNo is 'CZ3090', but tradeMode 1210 (bonded) leaves it out: it is for direct "
                                   "purchase (9610) inventories only")  # fmt: skip
    _, warnings = _findings("621", line(2, itemRecordNo="ITEM000002"))
    assert "itemRecordNo is 'ITEM000002'" in warnings[0].message and "bonded (1210/1239)" in warnings[0].message
    _, warnings = _findings("621", head(country="142"))
    assert "142" in warnings[0].message and "direct" in warnings[0].message


def test_every_code_has_a_bad_case() -> None:
    covered = {code for *_, expected in BAD for code, _ in expected}
    warned = {code for *_, expected in WARNED for code, _ in expected}
    assert covered | warned == set(CODES)
    assert warned == WARNINGS and not covered & WARNINGS  # a warning code never refuses


def test_warning_codes_say_they_are_warnings() -> None:
    assert set(CODES) >= WARNINGS
    for code in WARNINGS:
        assert CODES[code].startswith("warning: ")
    for code in set(CODES) - WARNINGS:
        assert not CODES[code].startswith("warning")


def test_codes_are_documented() -> None:
    for code, meaning in CODES.items():
        assert code.startswith("rule.") and code == code.lower() and " " not in code
        assert len(meaning) > 20


# --------------------------------------------------------------------------------------------
# Messages carry the real numbers
# --------------------------------------------------------------------------------------------


def _issues(kind: str, mutation: Mutation) -> list[str]:
    msg = FACTORIES[kind]()
    msg = mutation(msg) or msg
    return [i.message for i in check(msg, today=TODAY)]


def test_actural_paid_message_shows_the_sum() -> None:
    assert _issues("311", head(acturalPaid="298")) == [
        "acturalPaid 298.00 ≠ goodsValue 300.00 + freight 10.00 + taxTotal 27.30 − discount 12.00 = 325.30"
    ]


def test_total_price_message_shows_the_product() -> None:
    (text,) = _issues("621", line(2, price="33.334", qty="3", qty2="3", totalPrice="100.01"))
    assert text == "totalPrice 100.01 ≠ price 33.334 × qty 3 = 100.002 (→ 100.00) (compared at 2 decimals)"


def test_other_messages_say_what_was_found() -> None:
    assert _issues("311", head(goodsValue="310", acturalPaid="335.30")) == [
        "goodsValue 310.00 ≠ Σ OrderList totalPrice 300.00 (2 lines)"
    ]
    assert _issues("621", head(assureCode="X1")) == [
        f"assureCode X1 is none of ebpCode {PARTIES['ebpCode']}, ebcCode {PARTIES['ebcCode']}, "
        f"logisticsCode {LOGISTICS['logisticsCode']}"
    ]
    assert _issues("411", head(currency="502")) == ["currency is '502'; allowed: 142 (CNY)"]
    (text,) = _issues("311", head(appTime=IN_TWO_DAYS))
    assert IN_TWO_DAYS in text and "2026-11-20" in text
    (text,) = _issues("621", both(line(1, gnum="1"), line(2, gnum="3")))
    assert "found 1, 3" in text


# --------------------------------------------------------------------------------------------
# Signature on declare (no such type in the registry yet: build one)
# --------------------------------------------------------------------------------------------


def test_signature_on_declare() -> None:
    mtype = dataclasses.replace(BY_CODE["CEB311"], signature=Signature.ON_DECLARE)
    declared = message("CEB311", [order_head()], [order_lines()], mtype=mtype, signed=False)
    assert [(i.code, i.path) for i in check(declared, today=TODAY)] == [("rule.signature_missing", "/CEB311Message")]
    saved = message("CEB311", [order_head(appStatus="1")], [order_lines()], mtype=mtype, signed=False)
    assert check(saved, today=TODAY) == []
    signed = message("CEB311", [order_head()], [order_lines()], mtype=mtype, signed=True)
    assert check(signed, today=TODAY) == []


# --------------------------------------------------------------------------------------------
# Property: R4 holds for exact totals and fails for any one-cent perturbation
# --------------------------------------------------------------------------------------------

_prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999.99"), places=2) | st.decimals(
    min_value=Decimal("0.00001"), max_value=Decimal("999.99999"), places=5
).filter(lambda d: d > 0)
_qtys = st.integers(min_value=1, max_value=500).map(Decimal) | st.decimals(
    min_value=Decimal("0.001"), max_value=Decimal("100"), places=3
).filter(lambda d: d > 0)


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.tuples(_prices, _qtys), min_size=1, max_size=12),
    which=st.integers(min_value=0),
    delta=st.sampled_from([Decimal("0.01"), Decimal("-0.01")]),
)
def test_total_price_property(lines: list[tuple[Decimal, Decimal]], which: int, delta: Decimal) -> None:
    base = inventory_lines()[0]
    invt_lines = []
    for n, (price, qty) in enumerate(lines, start=1):
        total = q2(price * qty)
        if total == 0:  # a sub-cent line total cannot be declared (> 0 rule); keep the property about R4
            total = Decimal("0.01")
            price, qty = Decimal("0.01"), Decimal(1)
        invt_lines.append(base | {"gnum": str(n), "price": str(price), "qty": str(qty), "qty1": str(qty),
                                  "unit1": base["unit"], "totalPrice": str(total)})
    msg = message("CEB621", [inventory_head()], [invt_lines])
    assert check(msg, today=TODAY) == []

    k = which % len(invt_lines)
    bumped = Decimal(invt_lines[k]["totalPrice"]) + delta
    if bumped <= 0:
        bumped += 2 * Decimal("0.01")  # −0.01 from 0.01 would be 0: go one cent up instead
    invt_lines[k]["totalPrice"] = str(bumped)
    found = [(i.code, i.path) for i in check(msg, today=TODAY)]
    assert found == [("rule.total_price_mismatch", IL(k + 1, "totalPrice"))]


# --------------------------------------------------------------------------------------------
# Through the real parser and extractor (no XSD involved)
# --------------------------------------------------------------------------------------------

_XML = """<?xml version="1.0" encoding="UTF-8"?>
<ceb:CEB411Message guid="{root}" version="1.0" xmlns:ceb="http://www.chinaport.gov.cn/ceb">
  <ceb:Payment>
    <ceb:PaymentHead>
      <ceb:guid>{guid}</ceb:guid><ceb:appType>1</ceb:appType><ceb:appTime>20261119103000</ceb:appTime>
      <ceb:appStatus>2</ceb:appStatus><ceb:payCode>4403169D3W</ceb:payCode><ceb:payName>示例支付</ceb:payName>
      <ceb:payTransactionId>PAY1</ceb:payTransactionId><ceb:orderNo>ORD1</ceb:orderNo>
      <ceb:ebpCode>4601630001</ceb:ebpCode><ceb:ebpName>示例跨境平台</ceb:ebpName>
      <ceb:payerIdType>1</ceb:payerIdType><ceb:payerIdNumber>460100199001011234</ceb:payerIdNumber>
      <ceb:payerName>张三</ceb:payerName><ceb:telephone></ceb:telephone>
      <ceb:amountPaid>{amount}</ceb:amountPaid><ceb:currency>142</ceb:currency>
      <ceb:payTime>20261119102500</ceb:payTime>
    </ceb:PaymentHead>
  </ceb:Payment>
  <ceb:BaseTransfer><ceb:copCode>4403169D3W</ceb:copCode><ceb:copName>示例支付</ceb:copName>
    <ceb:dxpMode>DXP</ceb:dxpMode><ceb:dxpId>DXPENT0000000001</ceb:dxpId></ceb:BaseTransfer>
</ceb:CEB411Message>"""


def _parsed(**kw: str) -> ParsedMessage:
    values = {"root": ROOT_GUID, "guid": _guid(411), "amount": "325.30"} | kw
    root, mtype = parse_message(_XML.format(**values).encode())
    return extract(root, mtype)


def test_parsed_message_passes() -> None:
    assert check(_parsed(), today=TODAY) == []


def test_parsed_message_fails_with_paths() -> None:
    issues = check(_parsed(root="short", amount=" -1 "), today=TODAY)
    assert [(i.code, i.path) for i in issues] == [
        ("rule.guid_length", "/CEB411Message/@guid"),
        ("rule.untrimmed", "/CEB411Message/Payment[1]/PaymentHead/amountPaid"),
        ("rule.negative_amount", "/CEB411Message/Payment[1]/PaymentHead/amountPaid"),
    ]


# --------------------------------------------------------------------------------------------
# Table and helpers
# --------------------------------------------------------------------------------------------


def test_today_defaults_to_the_local_date() -> None:
    now = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    msg = message("CEB411", [payment_head(appTime=now, payTime=now)])
    assert check(msg) == []
    msg = message("CEB411", [payment_head(appTime="20990101000000", payTime=now)])
    assert [i.code for i in check(msg)] == ["rule.date_implausible"]


def test_customs_times_are_taken_whatever_the_clocks_read() -> None:
    """A receipt's returnTime is customs' word: dated years back or days ahead (its clock or ours off) it is taken —
    refused, it took the message's other receipts down with it, which customs sends once."""
    for when in ("20010101000000000", IN_TWO_DAYS + "000", "20990101000000000"):
        assert check(message("CEB312", [{"guid": _guid(312), "ebpCode": "4601630004", "ebcCode": "4601630005",
                                          "orderNo": "ORD1", "returnStatus": "120", "returnTime": when,
                                          "returnInfo": "ok"}])) == [], when  # fmt: skip


def test_rules_table_is_consistent() -> None:
    for code, entries in rules.RULES.items():
        mtype = BY_CODE[code]
        for entry in entries:
            if isinstance(entry, rules.Field | rules.Required) and entry.scope is rules.Scope.LINE:
                assert mtype.lines, f"{code} has no lines but a line rule names {entry.names}"
            if isinstance(entry, rules.Field | rules.Required) and entry.scope is rules.Scope.TRANSFER:
                assert mtype.direction == "declaration"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", Decimal(1)), ("+1.50", Decimal("1.50")), ("-.5", Decimal("-0.5")), ("2.", Decimal(2)),
     ("", None), ("+", None), (".", None), ("1e3", None), ("NaN", None), ("1_000", None), ("١", None),
     ("1.2.3", None)],
)
def test_parse_decimal(text: str, value: Decimal | None) -> None:
    assert rules.parse_decimal(text) == value


def test_many_documents_and_lines() -> None:
    """100 documents × 99 lines check cleanly (and quickly: the check runs on every message)."""
    base = inventory_lines()[0]
    lines = [base | {"gnum": str(n)} for n in range(1, 100)]
    heads = [inventory_head(guid=_guid(10000 + n), orderNo=f"ORD{n:05d}") for n in range(100)]
    msg = message("CEB621", heads, [[dict(li) for li in lines] for _ in heads])
    assert check(msg, today=TODAY) == []
    msg.documents[57].lines[41]["totalPrice"] = "199.01"
    found = [(i.code, i.path) for i in check(msg, today=TODAY)]
    assert found == [("rule.total_price_mismatch", "/CEB621Message/Inventory[58]/InventoryList[42]/totalPrice")]


# --------------------------------------------------------------------------------------------
# Export messages (spec §4): parsed from the schema fixtures, changed one value at a time
# --------------------------------------------------------------------------------------------

def codes_of(msg: ParsedMessage) -> list[tuple[str, str]]:
    return [(i.code, i.path) for i in check(msg, today=TODAY)]


@pytest.mark.parametrize("code", ["CEB303", "CEB304", "CEB403", "CEB404", "CEB505", "CEB506", "CEB603", "CEB604",
                                  "CEB605", "CEB606", "CEB507", "CEB508", "CEB509", "CEB510", "CEB607",
                                  "CEB608", "CEB701", "CEB702", "CEB792", "CEB213", "CEB214", "CEB215",
                                  "CEB216"])  # fmt: skip
def test_export_fixtures_pass(code: str) -> None:
    assert codes_of(export(code)) == []


def test_a_summary_application_of_a_period_lists_nothing() -> None:
    """A.29: with startTime and endTime customs summarises the period; no SummaryApplyList is needed."""
    msg = export("CEB701")
    assert not msg.documents[1].lines and msg.documents[1].head["startTime"]
    assert codes_of(msg) == []


_ORDER_HEAD = "/CEB303Message/Order[1]/OrderHead"
_INVT_HEAD = "/CEB603Message/Inventory[1]/InventoryHead"


@pytest.mark.parametrize(("code", "where", "name", "good", "bad", "rule"), [
    ("CEB303", "head", "orderType", ["E", "B", "W"], ["I", "X"], "rule.order_type"),
    ("CEB303", "head", "appType", ["1", "2", "3"], ["4"], "rule.app_type"),
    ("CEB303", "head", "appStatus", ["1", "2"], ["3"], "rule.app_status"),
    ("CEB303", "head", "currency", ["142", "502", "300", "116", "133", "136"], ["1420", "USD"], "rule.currency_code"),
    ("CEB303", "line", "currency", ["303", "122"], ["30", "３０３"], "rule.currency_code"),
    ("CEB303", "line", "unit", ["011"], ["aaa"], "rule.unit_code"),
    ("CEB403", "head", "currency", ["609"], ["12a"], "rule.currency_code"),
    ("CEB403", "head", "accountingDate", ["20261119235959"], ["20261119246000", "2026111912"], "rule.date_format"),
    ("CEB505", "head", "currency", ["110"], ["11"], "rule.currency_code"),
    ("CEB505", "head", "packNo", ["1", "3"], ["0"], "rule.not_positive"),
    ("CEB603", "head", "ieFlag", ["E"], ["I", "e"], "rule.ie_flag"),
    ("CEB603", "head", "tradeMode", ["1210"], ["1239", "0110"], "rule.trade_mode"),
    ("CEB603", "head", "statisticsFlag", ["A", "B"], ["C", "1"], "rule.statistics_flag"),
    ("CEB603", "head", "fFlag", ["1", "2", "3"], ["0", "4"], "rule.fee_flag"),
    ("CEB603", "head", "iFlag", ["1"], ["9"], "rule.fee_flag"),
    ("CEB603", "head", "fCurrency", ["502"], ["501X"], "rule.currency_code"),
    ("CEB603", "head", "iCurrency", ["142"], ["ABC"], "rule.currency_code"),
    ("CEB603", "head", "ieDate", ["20261120", "20261122", "20261221"], ["20261131", "20261222"], None),
    ("CEB603", "head", "customsCode", ["4601"], ["46O1"], "rule.customs_code"),
    ("CEB603", "head", "packNo", ["2"], ["0"], "rule.not_positive"),  # export packNo is not fixed to 1
    ("CEB603", "head", "trafMode", ["5", "Y"], ["B"], "rule.traf_mode"),
    ("CEB603", "line", "gcode", ["6109100021"], ["610910002X"], "rule.gcode"),
    ("CEB603", "line", "country", ["502"], ["US"], "rule.country_code"),
    ("CEB604", "head", "statisticsFlag", ["A"], ["Z"], "rule.statistics_flag"),
    ("CEB507", "head", "ieFlag", ["E"], ["I", "X"], "rule.ie_flag"),  # an arrival for export
    ("CEB507", "head", "customsCode", ["5141"], ["514"], "rule.customs_code"),
    ("CEB507", "head", "trafMode", ["4", "5", "6"], ["K"], "rule.traf_mode"),
    ("CEB507", "head", "msgCount", ["1", "9"], ["0", "x"], None),
    ("CEB509", "head", "leaveTime", ["20261120235959"], ["20261121246000", "200911201200", "20261123000000"], None),
    ("CEB509", "head", "msgSeqNo", ["1", "2"], ["0", "3"], None),
    ("CEB509", "head", "trafMode", ["2"], ["Q"], "rule.traf_mode"),
    ("CEB607", "head", "grossWeight", ["0.001"], ["0", "-1", "abc"], None),
    ("CEB607", "head", "appStatus", ["1", "2"], ["0"], "rule.app_status"),
    ("CEB607", "line", "invtNo", ["51412026E000004711", "51412026E0000047110", "46012026E00000471101"],
     ["51412026E00000471", "5141202XE000004711", "51412026E00000471101X", "51412026I00000471101"],
     "rule.invt_no_format"),
    ("CEB508", "head", "msgSeqNo", ["1"], ["0"], "rule.not_positive"),
    ("CEB508", "head", "returnTime", ["20261120235959999"], ["2026112023595999"], "rule.date_format"),
    ("CEB701", "head", "summaryFlag", ["1", "2"], ["0", "3"], "rule.summary_flag"),
    ("CEB701", "head", "customsCode", ["4601"], ["46O1"], "rule.customs_code"),
    ("CEB701", "head", "appType", ["1", "2", "3"], ["4"], "rule.app_type"),
    ("CEB701", "head", "msgCount", ["1", "9"], ["0", "x"], None),
    ("CEB701", "head", "copNo", ["SUM1"], [" "], "rule.required_empty"),
    ("CEB701", "line", "invtNo", ["51412026E00000471199"], [""], "rule.required_empty"),
    ("CEB702", "head", "returnTime", ["20261121093100120"], ["2026112109310012X"], "rule.date_format"),
    ("CEB702", "head", "preNo", ["S20261121000000311"], [""], "rule.required_empty"),
    ("CEB792", "head", "opDate", ["20261121103000250"], ["20261121253000250"], "rule.date_format"),
    ("CEB792", "head", "decState", ["10"], [""], "rule.required_empty"),
    ("CEB792", "line", "gcode", ["6109100021"], ["610910002X"], "rule.gcode"),
    ("CEB792", "line", "gseqno", ["1"], ["0"], "rule.not_positive"),
    ("CEB213", "head", "tradeMode", ["9661", "1261"], ["1210", "9610"], "rule.trade_mode"),
    ("CEB213", "head", "appTime", ["20261121101500"], ["20261121251500", "2026112110150"], "rule.date_format"),
    ("CEB213", "head", "portCode", ["6401"], ["64A1"], "rule.customs_code"),
    ("CEB213", "head", "country", ["132", "502"], ["142"], "rule.return_country"),
    ("CEB213", "head", "coElNo", ["TH1"], [" "], "rule.required_empty"),
    ("CEB213", "line", "gnum", ["1"], ["0"], "rule.not_positive"),
    ("CEB213", "line", "qty", ["1", "0.5"], ["0", "-1"], None),
    ("CEB213", "line", "unit", ["011"], ["11"], "rule.unit_code"),
    ("CEB214", "head", "returnTime", ["20261121101600120"], ["20261121101600"], "rule.date_format"),
    ("CEB214", "head", "invtNo", ["51412026E00000471101"], [""], "rule.required_empty"),
    ("CEB215", "head", "trafMode", ["5", "4"], ["Q"], "rule.traf_mode"),
    ("CEB215", "head", "appTime", ["20261121120000"], ["20261305120000"], "rule.date_format"),
    ("CEB215", "head", "trafName", ["CZ3096"], [""], "rule.required_empty"),
    ("CEB216", "head", "logisticsNo", ["YT403787576557CN"], [" "], "rule.required_empty"),
])  # fmt: skip
def test_export_value_rules(
    code: str, where: str, name: str, good: list[str], bad: list[str], rule: str | None
) -> None:
    def with_value(value: str) -> list[tuple[str, str]]:
        msg = export(code)
        doc = msg.documents[0]
        fields = doc.head if where == "head" else doc.lines[0]
        assert name in fields
        fields[name] = value
        return codes_of(msg)

    path = (export(code).documents[0].field_path(name) if where == "head"
            else export(code).documents[0].line_path(0, name))  # fmt: skip
    for value in good:
        assert with_value(value) == [], value
    for value in bad:
        found = with_value(value)
        assert len(found) == 1 and found[0][1] == path, (value, found)
        assert rule is None or found[0][0] == rule, (value, found)


def test_export_trade_modes_of_the_2022_text() -> None:
    for mode in ("9610", "9710", "9810"):
        msg = export("CEB603")
        msg.documents[0].head["tradeMode"] = mode  # no zone fields needed, and the 1210 ones do no harm
        assert codes_of(msg) == [], mode


def test_import_currency_is_still_142_only() -> None:
    msg = message("CEB311", [order_head(currency="502")], [order_lines()])
    assert [i.code for i in check(msg, today=TODAY)] == ["rule.currency_not_cny"]


@pytest.mark.parametrize(("code", "where", "name"), [
    ("CEB303", "head", "ebpName"), ("CEB303", "head", "orderNo"), ("CEB303", "line", "itemNo"),
    ("CEB403", "head", "payName"), ("CEB505", "head", "goodsInfo"), ("CEB505", "head", "logisticsNo"),
    ("CEB603", "head", "copNo"), ("CEB603", "head", "ownerName"), ("CEB603", "line", "gname"),
    ("CEB603", "line", "barCode"), ("CEB604", "head", "invtNo"), ("CEB605", "head", "reason"),
    ("CEB304", "head", "returnStatus"), ("CEB507", "head", "copNo"), ("CEB507", "head", "operatorCode"),
    ("CEB507", "head", "domesticTrafNo"), ("CEB507", "line", "logisticsNo"), ("CEB509", "head", "logisticsCode"),
    ("CEB509", "line", "logisticsNo"), ("CEB607", "head", "trafName"), ("CEB607", "head", "voyageNo"),
    ("CEB607", "head", "billNo"), ("CEB607", "head", "agentCode"), ("CEB608", "head", "billNo"),
    ("CEB510", "head", "copNo"), ("CEB508", "head", "operatorCode"),
])  # fmt: skip
def test_export_required_strings_may_not_be_empty(code: str, where: str, name: str) -> None:
    """The 2022 export XSD lets these through empty (spec §2.6); the rules layer refuses them (§14)."""
    for value in ("", "   "):
        msg = export(code)
        doc = msg.documents[0]
        (doc.head if where == "head" else doc.lines[0])[name] = value
        path = doc.field_path(name) if where == "head" else doc.line_path(0, name)
        assert codes_of(msg) == [("rule.required_empty", path)], (name, value)


def test_export_line_total_price_is_price_times_qty_in_decimal() -> None:
    msg = export("CEB603")
    line = msg.documents[0].lines[1]
    line.update(qty="3", qty1="3", price="0.1", totalPrice="0.30")  # 0.1 × 3 is 0.30000000000000004 as floats
    assert codes_of(msg) == []
    line["totalPrice"] = "0.31"
    assert codes_of(msg) == [("rule.total_price_mismatch", "/CEB603Message/Inventory[1]/InventoryList[2]/totalPrice")]
    order = export("CEB303")
    order.documents[1].lines[0]["totalPrice"] = "1.00"
    assert codes_of(order) == [("rule.total_price_mismatch", "/CEB303Message/Order[2]/OrderList[1]/totalPrice")]


def test_export_gnum_sequence() -> None:
    msg = export("CEB603")
    msg.documents[0].lines[2]["gnum"] = "4"
    assert codes_of(msg) == [("rule.gnum_sequence", "/CEB603Message/Inventory[1]/InventoryList[3]/gnum")]
    msg = export("CEB303")
    msg.documents[0].lines[1]["gnum"] = "1"
    assert codes_of(msg) == [("rule.gnum_duplicate", "/CEB303Message/Order[1]/OrderList[2]/gnum")]


def test_export_net_weight_not_above_gross() -> None:
    msg = export("CEB603")
    head = msg.documents[0].head
    head["netWeight"] = head["grossWeight"]
    assert codes_of(msg) == []
    head["netWeight"] = str(Decimal(head["grossWeight"]) + Decimal("0.001"))
    assert codes_of(msg) == [("rule.net_weight_exceeds_gross", f"{_INVT_HEAD}/netWeight")]


def test_export_qty2_goes_with_unit2() -> None:
    msg = export("CEB603")
    lines = msg.documents[0].lines
    i = next(n for n, li in enumerate(lines) if "unit2" in li)
    del lines[i]["unit2"]
    assert codes_of(msg) == [("rule.qty2_unit2", f"/CEB603Message/Inventory[1]/InventoryList[{i + 1}]/qty2")]
    msg = export("CEB603")
    del msg.documents[0].lines[i]["qty2"]
    assert codes_of(msg) == [("rule.qty2_unit2", f"/CEB603Message/Inventory[1]/InventoryList[{i + 1}]")]


@pytest.mark.parametrize("name", ["iacCode", "emsNo"])
def test_special_zone_export_needs_its_account_book(name: str) -> None:
    msg = export("CEB603")
    assert msg.documents[0].head["tradeMode"] == "1210"
    del msg.documents[0].head[name]
    assert codes_of(msg) == [("rule.mode_field_missing", _INVT_HEAD)]
    msg = export("CEB603")
    msg.documents[0].head[name] = ""  # optional in the XSD: empty is as good as absent, and 1210 needs it
    assert codes_of(msg) == [("rule.mode_field_missing", f"{_INVT_HEAD}/{name}")]
    msg.documents[0].head["tradeMode"] = "9610"  # general export keeps no account book
    assert codes_of(msg) == []


def test_special_zone_export_needs_item_record_numbers() -> None:
    msg = export("CEB603")
    del msg.documents[0].lines[1]["itemRecordNo"]
    assert codes_of(msg) == [("rule.mode_field_missing", "/CEB603Message/Inventory[1]/InventoryList[2]")]
    msg.documents[0].head["tradeMode"] = "9610"
    assert codes_of(msg) == []


@pytest.mark.parametrize("code", ["CEB603", "CEB605", "CEB507", "CEB509", "CEB607"])
def test_export_inventory_and_cancel_are_signed_when_declared(code: str) -> None:
    """§2.7: 603/605, and 507/607 ("appStatus=2 requires signature") and 509 (required in the header table)."""
    msg = dataclasses.replace(export(code), signed=False)
    assert codes_of(msg) == [("rule.signature_missing", f"/{code}Message")]
    for doc in msg.documents:
        doc.head["appStatus"] = "1"  # temp-save: no signature needed (spec §2.7)
    assert codes_of(msg) == []
    assert codes_of(dataclasses.replace(export("CEB303"), signed=False)) == []  # optional on the order


def test_export_duplicate_documents_go_by_the_registry_keys() -> None:
    msg = export("CEB505")
    first, second = msg.documents
    second.head.update(logisticsCode=first.head["logisticsCode"], logisticsNo=first.head["logisticsNo"])
    assert codes_of(msg) == [("rule.duplicate_document", "/CEB505Message/Logistics[2]")]


def test_transport_lists_may_name_many_waybills_or_none() -> None:
    """An arrival's list may be empty (A.20: 0..n); a departure's and a 清单总分单's lines are unbounded, each waybill
    once, gnum 1, 2, 3 …"""
    msg = export("CEB507")
    msg.documents[1].lines.clear()
    assert codes_of(msg) == []
    msg = export("CEB509")
    doc = msg.documents[0]
    doc.lines[:] = [{"gnum": str(n), "logisticsNo": f"YT{n:012d}CN"} for n in range(1, 251)]
    assert codes_of(msg) == []
    doc.lines[100]["gnum"] = "100"
    assert codes_of(msg) == [("rule.gnum_duplicate", "/CEB509Message/Departure[1]/DepartureList[101]/gnum")]


def test_the_same_waybill_in_two_documents_of_one_message_is_not_a_list_mistake() -> None:
    # two arrivals (two trucks) may each carry part of one consignment's bags: only one list naming a waybill twice is
    msg = export("CEB507")
    msg.documents[1].lines[0]["logisticsNo"] = msg.documents[0].lines[0]["logisticsNo"]
    assert codes_of(msg) == []


def test_a_split_message_part_within_its_count() -> None:
    msg = export("CEB509")
    assert (msg.documents[0].head["msgCount"], msg.documents[0].head["msgSeqNo"]) == ("2", "1")
    msg.documents[0].head["msgSeqNo"] = "2"
    assert codes_of(msg) == []
    msg.documents[0].head["msgSeqNo"] = "3"
    assert codes_of(msg) == [("rule.msg_seq_no", "/CEB509Message/Departure[1]/DepartureHead/msgSeqNo")]


def test_base_subscribe_elements_are_read_and_checked() -> None:
    """Spec §2.4: up to five BaseSubscribe after BaseTransfer; customs' XSD takes any text in them, so a subscription
    with no valid status, mode or address would be taken and go nowhere."""
    xml = (Path(__file__).parent / "data" / "samples" / "CEB311-9610.xml").read_text(encoding="utf-8")
    end = xml.index("</ceb:BaseTransfer>") + len("</ceb:BaseTransfer>")

    def subscribe(status: str, mode: str, address: str) -> str:
        return (f"<ceb:BaseSubscribe><ceb:status>{status}</ceb:status><ceb:dxpMode>{mode}</ceb:dxpMode>"
                f"<ceb:dxpAddress>{address}</ceb:dxpAddress></ceb:BaseSubscribe>")  # fmt: skip

    good = subscribe("ALL", "DXP", "DXPENT0000461234") + subscribe("DATA", "DXP", "DXPENT0000461235")
    root, mtype = parse_message((xml[:end] + good + xml[end:]).encode())
    msg = extract(root, mtype)
    assert [s["status"] for s in msg.base_subscribes] == ["ALL", "DATA"]
    assert check(msg, today=TODAY) == []
    root, mtype = parse_message((xml[:end] + good + subscribe("FOO", "XYZ", "") + xml[end:]).encode())
    found = {(i.code, i.path) for i in check(extract(root, mtype), today=TODAY)}
    assert found == {("rule.subscribe_status", "/CEB311Message/BaseSubscribe[3]/status"),
                     ("rule.dxp_mode", "/CEB311Message/BaseSubscribe[3]/dxpMode"),
                     ("rule.required_empty", "/CEB311Message/BaseSubscribe[3]/dxpAddress")}  # fmt: skip


def test_a_message_with_thousands_of_rule_issues_is_answered_with_the_first_hundred() -> None:
    """As the schema layer: 100 documents whose every line breaks a rule must not buy an answer (and a rejection
    record) of megabytes."""
    from gateway.errors import MAX_ISSUES, MessageRejected
    from gateway.pipeline import Pipeline
    from gateway.schema import SchemaSet

    xml = (Path(__file__).parent / "data" / "samples" / "CEB311-9610.xml").read_text(encoding="utf-8")
    start, end = xml.index("<ceb:Order>"), xml.index("</ceb:Order>") + len("</ceb:Order>")
    order = xml[start:end].replace("<ceb:buyerIdType>1</ceb:buyerIdType>", "<ceb:buyerIdType>2</ceb:buyerIdType>")
    body = (xml[:start] + order * 100 + xml[end:]).encode()  # the same order 100 times, each with a bad ID type
    found = check(extract(*parse_message(body)), today=TODAY)
    assert len(found) > MAX_ISSUES
    with pytest.raises(MessageRejected) as refused:
        Pipeline(SchemaSet()).check(body)
    assert refused.value.issues == found[:MAX_ISSUES]
