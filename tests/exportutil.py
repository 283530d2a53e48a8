"""Consistent export documents of one shipment (spec §4: CEB303, CEB403, CEB505, CEB603, CEB605), the transport
messages of its parcel (CEB507, 509, 607) and its return (CEB213) with the site's tally (CEB215), as ParsedMessages
for the store; keyword overrides change any head field.
The import counterparts live in tests/test_store.py."""

from __future__ import annotations

from typing import Any

from gateway.documents import ParsedMessage
from tests.test_store import T0, message

EBP, EBC, PAY, LOG, AGENT = "EBP0000001", "EBC0000001", "PAY0000001", "LOG0000001", "AGT0000001"


def order_head(order_no: str, **kw: str) -> dict[str, str]:
    h = {
        "guid": f"EORD-{order_no}", "appType": "1", "appTime": T0, "appStatus": "2", "orderType": "E",
        "orderNo": order_no, "ebpCode": EBP, "ebpName": "Platform", "ebcCode": EBC, "ebcName": "Seller",
        "goodsValue": "100", "freight": "10", "currency": "502",
    }  # fmt: skip
    h.update(kw)
    return h


ORDER_LINES = [
    {"gnum": "1", "itemNo": "SKU1", "itemName": "真丝围巾", "unit": "015", "currency": "502", "qty": "2",
     "price": "50", "totalPrice": "100"},
]  # fmt: skip


def receipt_head(order_no: str, **kw: str) -> dict[str, str]:
    h = {
        "guid": f"ERCP-{order_no}", "appType": "1", "appTime": T0, "appStatus": "2", "ebpCode": EBP,
        "ebpName": "Platform", "ebcCode": EBC, "ebcName": "Seller", "orderNo": order_no, "payCode": PAY,
        "payName": "Pay", "payNo": f"PN-{order_no}", "charge": "110", "currency": "502", "accountingDate": T0,
    }  # fmt: skip
    h.update(kw)
    return h


def waybill_head(order_no: str, **kw: str) -> dict[str, str]:
    """An export waybill names no orderNo: ``order_no`` only makes its logisticsNo."""
    h = {
        "guid": f"EWB-{order_no}", "appType": "1", "appTime": T0, "appStatus": "2", "logisticsCode": LOG,
        "logisticsName": "Carrier", "logisticsNo": f"ELN-{order_no}", "freight": "10", "insuredFee": "0",
        "currency": "502", "grossWeight": "0.5", "packNo": "1", "goodsInfo": "真丝围巾×2",
    }  # fmt: skip
    h.update(kw)
    return h


def inventory_head(order_no: str, **kw: str) -> dict[str, str]:
    h = {
        "guid": f"EINV-{order_no}", "appType": "1", "appTime": T0, "appStatus": "2", "customsCode": "6401",
        "ebpCode": EBP, "ebpName": "Platform", "orderNo": order_no, "logisticsCode": LOG, "logisticsName": "Carrier",
        "logisticsNo": f"ELN-{order_no}", "copNo": f"COP-{order_no}", "ieFlag": "E", "portCode": "6401",
        "ieDate": "20250301", "statisticsFlag": "A", "agentCode": AGENT, "agentName": "Agent", "ebcCode": EBC,
        "ebcName": "Seller", "ownerCode": "OWN0000001", "ownerName": "Maker", "tradeMode": "9610", "trafMode": "5",
        "country": "502", "POD": "LAX", "freight": "10", "fCurrency": "502", "fFlag": "3", "insuredFee": "0",
        "iCurrency": "502", "iFlag": "3", "wrapType": "2", "packNo": "1", "grossWeight": "0.5", "netWeight": "0.4",
    }  # fmt: skip
    h.update(kw)
    return h


def inventory_lines(total: str = "100", qty: str = "2") -> list[dict[str, str]]:
    return [
        {"gnum": "1", "itemNo": "SKU1", "itemName": "真丝围巾", "gcode": "6214100000", "gname": "真丝围巾",
         "gmodel": "180×90cm", "barCode": "无", "country": "502", "currency": "502", "qty": qty, "qty1": qty,
         "unit": "015", "unit1": "015", "price": "50", "totalPrice": total},
    ]  # fmt: skip


def cancel_head(invt_no: str, **kw: str) -> dict[str, str]:
    h = {
        "guid": f"ECAN-{invt_no}", "appType": "1", "appTime": T0, "appStatus": "2", "customsCode": "6401",
        "copNo": f"CAN-{invt_no}", "invtNo": invt_no, "reason": "buyer cancelled", "agentCode": AGENT,
        "agentName": "Agent", "ebcCode": EBC, "ebcName": "Seller",
    }  # fmt: skip
    h.update(kw)
    return h


SITE = "SITE000001"  # the supervision-site operator of the arrivals (operatorCode)


def arrival_head(cop_no: str, **kw: str) -> dict[str, str]:
    """A 运抵单 (CEB507) of the carrier LOG at the site SITE; its lines: :func:`transport_lines`."""
    h = {
        "guid": f"EARR-{cop_no}", "appType": "1", "appTime": T0, "appStatus": "2", "customsCode": "6401",
        "copNo": cop_no, "operatorCode": SITE, "operatorName": "Site", "ieFlag": "E", "trafMode": "5",
        "billNo": "784-00000001", "domesticTrafNo": "琼A·00001", "logisticsCode": LOG, "logisticsName": "Carrier",
        "msgCount": "1", "msgSeqNo": "1",
    }  # fmt: skip
    h.update(kw)
    return h


def departure_head(cop_no: str, **kw: str) -> dict[str, str]:
    """A 离境单 (CEB509) of the carrier LOG."""
    h = {
        "guid": f"EDEP-{cop_no}", "appType": "1", "appTime": T0, "appStatus": "2", "customsCode": "6401",
        "copNo": cop_no, "logisticsCode": LOG, "logisticsName": "Carrier", "trafMode": "5", "trafName": "CZ1046",
        "voyageNo": "20250301", "billNo": "784-00000001", "leaveTime": T0, "msgCount": "1", "msgSeqNo": "1",
    }  # fmt: skip
    h.update(kw)
    return h


def manifest_head(cop_no: str, **kw: str) -> dict[str, str]:
    """A 清单总分单 (CEB607) of the agent AGENT for the carrier LOG."""
    h = {
        "guid": f"EMAN-{cop_no}", "appType": "1", "appTime": T0, "appStatus": "2", "customsCode": "6401",
        "copNo": cop_no, "agentCode": AGENT, "agentName": "Agent", "trafMode": "5", "trafName": "CZ1046",
        "voyageNo": "20250301", "billNo": "784-00000001", "grossWeight": "1.5", "logisticsCode": LOG,
        "logisticsName": "Carrier", "msgCount": "1", "msgSeqNo": "1",
    }  # fmt: skip
    h.update(kw)
    return h


def transport_lines(*order_nos: str, invt_nos: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The lines naming the waybills of the shipments ``order_nos`` (as waybill_head makes their logisticsNo)."""
    lines = []
    for n, order_no in enumerate(order_nos, 1):
        line = {"gnum": str(n), "logisticsNo": f"ELN-{order_no}", "totalPackageNo": "BAG1"}
        if invt_nos and order_no in invt_nos:
            line["invtNo"] = invt_nos[order_no]
        lines.append(line)
    return lines


def refund_head(invt_no: str, order_no: str, **kw: str) -> dict[str, str]:
    """A retail export return (CEB213) of the inventory of shipment ``order_no`` (its waybill), numbered ``invt_no``."""
    h = {
        "guid": f"ERET-{invt_no}", "appType": "1", "appTime": T0, "appStatus": "2", "customsCode": "6401",
        "ebpCode": EBP, "ebpName": "Platform", "ebcCode": EBC, "ebcName": "Seller", "logisticsNo": f"ELN-{order_no}",
        "logisticsCode": LOG, "logisticsName": "Carrier", "coElNo": f"RET-{invt_no}", "invtNo": invt_no,
        "tradeMode": "9661", "agentCode": AGENT, "agentName": "Agent", "billNo": "784-00000009", "ieFlag": "I",
        "trafMode": "5", "trafName": "CZ3096", "portCode": "6401", "reason": "buyer refused", "country": "502",
        "voyageNo": "20250310",
    }  # fmt: skip
    h.update(kw)
    return h


def refund_lines(qty: str = "2", gnum: str = "1") -> list[dict[str, str]]:
    return [{"gnum": gnum, "gcode": "6214100000", "gname": "真丝围巾", "gmodel": "180×90cm", "qty": qty, "qty1": qty,
             "unit": "015", "unit1": "015"}]  # fmt: skip


def tally_head(cop_no: str, order_no: str, **kw: str) -> dict[str, str]:
    """The site SITE's tally (CEB215) of the returned parcel of shipment ``order_no`` (its waybill)."""
    h = {
        "guid": f"ETAL-{cop_no}", "appType": "1", "appTime": T0, "appStatus": "2", "customsCode": "6401",
        "operatorCode": SITE, "operatorName": "Site", "logisticsCode": LOG, "logisticsName": "Carrier",
        "logisticsNo": f"ELN-{order_no}", "coElNo": cop_no, "billNo": "784-00000009", "ieFlag": "I", "trafMode": "5",
        "trafName": "CZ3096", "voyageNo": "20250310",
    }  # fmt: skip
    h.update(kw)
    return h


_LINES: dict[str, Any] = {"CEB303": ORDER_LINES, "CEB603": inventory_lines(), "CEB213": refund_lines()}


def export_message(code: str, *heads: dict[str, str], guid: str | None = None, lines: Any = None) -> ParsedMessage:
    return message(code, *heads, guid=guid, lines=lines if lines is not None else _LINES.get(code, []))


def legs(order_no: str, **inventory: str) -> list[ParsedMessage]:
    """The four legs of one export shipment, order first."""
    return [
        export_message("CEB303", order_head(order_no)),
        export_message("CEB403", receipt_head(order_no)),
        export_message("CEB505", waybill_head(order_no)),
        export_message("CEB603", inventory_head(order_no, **inventory)),
    ]
