"""A supervision site's 入库明细单 (CEB711, spec A.11) for tests: the parcels of import shipments unloaded under one
B/L, signed by the site operator (the tests' key), as XML (the JSON API takes no CEB711)."""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from gateway import samples
from gateway.messages import CEB_NS
from gateway.render import new_guid
from tests.apiutil import sign_as_agent

OPERATOR_CODE = "3301W61234"
OPERATOR_NAME = "杭州空港跨境监管场所运营有限公司"
BILL_NO = "781-20240229001"
APP_TIME = "20240229220000"


def on_one_bill(ships: Sequence[samples.ShipmentSample], bill_no: str = BILL_NO) -> str:
    """Put the 9610 parcels ``ships`` on one carrier's flight under ``bill_no`` (their waybills and inventories, as
    customs reads R10's billNo); the carrier's logisticsCode."""
    first = ships[0].waybill_doc
    for s in ships:
        for doc in (s.waybill_doc, s.inventory_doc):
            doc.update(logisticsCode=first["logisticsCode"], logisticsName=first["logisticsName"], billNo=bill_no)
    return str(first["logisticsCode"])


def waybill_nos(ships: Sequence[samples.ShipmentSample]) -> list[str]:
    return [str(s.waybill_doc["logisticsNo"]) for s in ships]


def delivery_xml(
    logistics_code: str,
    waybills: Sequence[str],
    *,
    bill_no: str = BILL_NO,
    app_type: str = "1",
    app_time: str = APP_TIME,
    cop_no: str | None = "RKD202402290001",
    ie_flag: str = "I",
    guid: str | None = None,
    lines: Sequence[dict[str, str]] | None = None,
) -> bytes:
    """A signed CEB711 of ``waybills`` (gnum 1, 2, 3 …) unloaded under ``bill_no`` from the carrier ``logistics_code``;
    ``lines`` instead gives the list's lines as they are."""
    ns = f"{{{CEB_NS}}}"
    root = etree.Element(ns + "CEB711Message", nsmap={"ceb": CEB_NS})
    root.set("guid", new_guid())
    root.set("version", "1.0")
    delivery = etree.SubElement(root, ns + "Delivery")
    head = etree.SubElement(delivery, ns + "DeliveryHead")
    fields: list[tuple[str, str | None]] = [
        ("guid", guid or new_guid()), ("appType", app_type), ("appTime", app_time), ("appStatus", "2"),
        ("customsCode", "2991"), ("copNo", cop_no), ("operatorCode", OPERATOR_CODE), ("operatorName", OPERATOR_NAME),
        ("ieFlag", ie_flag), ("trafMode", "5"), ("trafNo", "CK261"), ("voyageNo", "CK261/20240229"),
        ("billNo", bill_no), ("logisticsCode", logistics_code), ("logisticsName", "示例物流"),
        ("unloadLocation", "A区3号库位"),
    ]  # fmt: skip
    for name, value in fields:
        if value is not None:
            etree.SubElement(head, ns + name).text = value
    for line in lines if lines is not None else [{"gnum": str(i), "logisticsNo": no}
                                                   for i, no in enumerate(waybills, 1)]:  # fmt: skip
        element = etree.SubElement(delivery, ns + "DeliveryList")
        for name, value in line.items():
            etree.SubElement(element, ns + name).text = value
    transfer = etree.SubElement(root, ns + "BaseTransfer")
    for name, value in (("copCode", OPERATOR_CODE), ("copName", OPERATOR_NAME), ("dxpMode", "DXP"),
                        ("dxpId", "DXPENT0000458763")):  # fmt: skip
        etree.SubElement(transfer, ns + name).text = value
    sign_as_agent(root)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))

