"""Schema layer: the XSDs accept realistic messages of every type and reject what customs rejects,
with stable codes, exact paths and messages that show what was found."""

from __future__ import annotations

import base64
import copy
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.errors import Issue, Layer
from gateway.messages import BY_CODE, CEB_NS, DS_NS, DXP_NS, MESSAGE_TYPES, SCHEMA_DIR, MessageType
from gateway.schema import CODES, SchemaLoadError, SchemaSet
from gateway.xmlsafe import parse_message, parse_xml

DATA = Path(__file__).parent / "data" / "schema"
NS = {"ceb": CEB_NS, "ds": DS_NS, "dxp": DXP_NS}


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    return SchemaSet()


def load(code: str) -> tuple[etree._Element, MessageType]:
    root, mtype = parse_message((DATA / f"{code}Message.xml").read_bytes())
    assert mtype.code == code
    return root, mtype


def ceb(name: str) -> str:
    return f"{{{CEB_NS}}}{name}"


def one(issues: list[Issue]) -> Issue:
    assert len(issues) == 1, issues
    assert issues[0].layer is Layer.SCHEMA
    assert issues[0].code in CODES
    return issues[0]


def set_text(root: etree._Element, xpath: str, value: str) -> None:
    found = root.xpath(xpath, namespaces=NS)
    assert found, xpath
    found[0].text = value or None  # as parsed: <x></x> has no text node at all (libxml2 treats "" differently)


def remove(root: etree._Element, xpath: str) -> etree._Element:
    el = root.xpath(xpath, namespaces=NS)[0]
    el.getparent().remove(el)
    return el


# ------------------------------------------------------------------------------------------------
# Valid instances


# ------------------------------------------------------------------------------------------------


def test_there_is_a_fixture_for_every_message_type() -> None:
    assert {p.name.removesuffix("Message.xml") for p in DATA.glob("CEB*Message.xml")} == {t.code for t in MESSAGE_TYPES}


@pytest.mark.parametrize("code", sorted(BY_CODE))
def test_realistic_instance_of_every_type_is_valid(schemas: SchemaSet, code: str) -> None:
    root, mtype = load(code)
    assert schemas.validate(root, mtype) == []
    # the fixtures are meant to be realistic: documents of the right kind, Chinese text, lines
    docs = root.findall(ceb(mtype.document))
    assert docs
    if mtype.lines:  # a CEB701 may name a period (startTime, endTime) instead of inventories (A.29)
        assert all(d.findall(f".//{ceb(mtype.lines)}") or d.find(f".//{ceb('startTime')}") is not None for d in docs)
    if mtype.signature.value == "required":
        assert root.find(f"{{{DS_NS}}}Signature") is not None


def test_fixtures_carry_several_documents_and_lines() -> None:
    root, _ = load("CEB311")
    assert len(root.findall(ceb("Order"))) == 2
    assert [len(o.findall(ceb("OrderList"))) for o in root.findall(ceb("Order"))] == [3, 2]
    assert "浙江省杭州市" in root.findtext(f"{ceb('Order')}/{ceb('OrderHead')}/{ceb('consigneeAddress')}")
    root, _ = load("CEB711")
    assert len(root.findall(f"{ceb('Delivery')}/{ceb('DeliveryList')}")) == 5


def test_optional_elements_may_be_left_out_and_optional_strings_may_be_empty(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    for name in ("payCode", "payName", "payTransactionId", "consigneeDistrict"):
        remove(root, f"ceb:Order[1]/ceb:OrderHead/ceb:{name}")
    remove(root, "ceb:BaseSubscribe")
    remove(root, "ceb:ExtendMessage")
    set_text(root, "ceb:Order[1]/ceb:OrderHead/ceb:note", "")  # the customs XSD gives optional strings no minimum
    assert schemas.validate(root, mtype) == []


def test_signature_is_optional_on_311_but_allowed(schemas: SchemaSet) -> None:
    sig = load("CEB621")[0].find(f"{{{DS_NS}}}Signature")
    root, mtype = load("CEB311")
    root.append(copy.deepcopy(sig))
    assert schemas.validate(root, mtype) == []


def test_limits_that_are_allowed_exactly(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    first = root.find(ceb("Order"))
    line = first.find(ceb("OrderList"))
    for extra in range(99 - len(first.findall(ceb("OrderList")))):
        first.insert(2 + extra, copy.deepcopy(line))  # 99 lines
    order = root.find(ceb("Order"))
    while len(root.findall(ceb("Order"))) < 100:  # 100 documents
        order.addnext(copy.deepcopy(order))
    set_text(root, "ceb:Order[1]/ceb:OrderHead/ceb:orderNo", "订" * 60)  # length counts characters, not bytes
    set_text(root, "ceb:Order[1]/ceb:OrderHead/ceb:goodsValue", "12345678901234.56789")  # 19 digits, 5 after point
    set_text(root, "ceb:Order[1]/ceb:OrderHead/ceb:consigneeAddress", "路" * 200)
    assert schemas.validate(root, mtype) == []


def test_unbounded_lists_of_711_and_816(schemas: SchemaSet) -> None:
    root, mtype = load("CEB711")
    delivery = root.find(ceb("Delivery"))
    template = delivery.find(ceb("DeliveryList"))
    for i in range(500):
        line = copy.deepcopy(template)
        line.find(ceb("gnum")).text = str(6 + i)
        delivery.append(line)
    assert schemas.validate(root, mtype) == []
    root, mtype = load("CEB816")
    tax = root.find(ceb("Tax"))
    for _ in range(149):
        tax.addnext(copy.deepcopy(tax))
    assert schemas.validate(root, mtype) == []


# ------------------------------------------------------------------------------------------------
# Broken instances: code, exact path, message


# ------------------------------------------------------------------------------------------------


def test_missing_required_element(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    remove(root, "ceb:Order[2]/ceb:OrderHead/ceb:acturalPaid")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.missing_element", "/CEB311Message/Order[2]/OrderHead/acturalPaid")
    assert "acturalPaid" in issue.message and "currency" in issue.message  # what is missing, what was found


def test_every_missing_required_element_is_named_at_once(schemas: SchemaSet) -> None:
    """libxml2 stops at the first missing element of a sequence; the sender learns them all in one answer."""
    root, mtype = load("CEB311")
    for name in ("ebpName", "acturalPaid", "buyerName"):
        remove(root, f"ceb:Order[2]/ceb:OrderHead/ceb:{name}")
    remove(root, "ceb:Order[1]/ceb:OrderList[1]/ceb:itemName")
    issues = schemas.validate(root, mtype)
    assert {(i.code, i.path) for i in issues} == {
        ("schema.missing_element", "/CEB311Message/Order[2]/OrderHead/ebpName"),
        ("schema.missing_element", "/CEB311Message/Order[2]/OrderHead/acturalPaid"),
        ("schema.missing_element", "/CEB311Message/Order[2]/OrderHead/buyerName"),
        ("schema.missing_element", "/CEB311Message/Order[1]/OrderList[1]/itemName"),
    }
    assert len(issues) == 4


def test_a_message_of_empty_lines_gets_a_bounded_answer() -> None:
    """100 documents of 99 empty lines are 41 KB of JSON and thousands of missing elements: the answer names the
    first MAX_ISSUES of them (enough to fix it), not megabytes."""
    from gateway.errors import MAX_ISSUES, MessageRejected
    from gateway.pipeline import Pipeline

    payload = {"type": "CEB311", "documents": [{"items": [{}] * 99} for _ in range(100)]}
    with pytest.raises(MessageRejected) as exc:
        Pipeline(SchemaSet()).check_json(payload)
    assert len(exc.value.issues) == MAX_ISSUES
    assert all(i.code.startswith("schema.") for i in exc.value.issues)


def test_missing_element_at_the_end_of_a_head(schemas: SchemaSet) -> None:
    root, mtype = load("CEB511")
    remove(root, "ceb:Logistics[2]/ceb:LogisticsHead/ceb:note")
    remove(root, "ceb:Logistics[2]/ceb:LogisticsHead/ceb:consigneeTelephone")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == (
        "schema.missing_element", "/CEB511Message/Logistics[2]/LogisticsHead/consigneeTelephone")


def test_missing_base_transfer(schemas: SchemaSet) -> None:
    root, mtype = load("CEB411")
    remove(root, "ceb:BaseTransfer")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.missing_element", "/CEB411Message/BaseTransfer")


def test_wrong_order_of_head_fields(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    head = root.find(f"{ceb('Order')}/{ceb('OrderHead')}")
    freight = head.find(ceb("freight"))
    head.find(ceb("goodsValue")).addprevious(freight)  # freight before goodsValue
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.out_of_order", "/CEB311Message/Order[1]/OrderHead/freight")
    assert "goodsValue" in issue.message


def test_wrong_order_of_root_children(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    root.insert(0, root.find(ceb("BaseTransfer")))
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.out_of_order", "/CEB311Message/BaseTransfer")


def test_export_style_signature_before_extend_message_is_rejected_on_import(schemas: SchemaSet) -> None:
    # §2.2: import puts ExtendMessage before ds:Signature; a signer that appends the signature last is fine,
    # an ExtendMessage after the signature is not.
    root, mtype = load("CEB621")
    extend = copy.deepcopy(load("CEB311")[0].find(ceb("ExtendMessage")))
    root.append(extend)
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.out_of_order", "/CEB621Message/ExtendMessage")


def test_too_long_string_counts_characters_and_shows_the_value(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    set_text(root, "ceb:Order[2]/ceb:OrderHead/ceb:consigneeAddress", "路" * 201)
    set_text(root, "ceb:Order[1]/ceb:OrderHead/ceb:orderNo", "TM" + "9" * 59)
    issues = schemas.validate(root, mtype)
    assert [(i.code, i.path) for i in issues] == [
        ("schema.too_long", "/CEB311Message/Order[1]/OrderHead/orderNo"),
        ("schema.too_long", "/CEB311Message/Order[2]/OrderHead/consigneeAddress"),
    ]
    assert "61" in issues[0].message and "60" in issues[0].message and "'TM999" in issues[0].message
    assert "201" in issues[1].message and "200" in issues[1].message
    assert len(issues[1].message) < 200  # long values are shortened


def test_six_fraction_digits(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    set_text(root, "ceb:Order[1]/ceb:OrderList[2]/ceb:price", "198.000001")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.too_many_fraction_digits", "/CEB311Message/Order[1]/OrderList[2]/price")
    assert "'198.000001'" in issue.message and "5" in issue.message


def test_twenty_digits(schemas: SchemaSet) -> None:
    root, mtype = load("CEB411")
    set_text(root, "ceb:Payment[2]/ceb:PaymentHead/ceb:amountPaid", "123456789012345.67891")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.too_many_digits", "/CEB411Message/Payment[2]/PaymentHead/amountPaid")
    assert "19" in issue.message and "123456789012345.67891" in issue.message
    # facets judge the value, not the spelling: a trailing zero is no digit (XSD value space)
    set_text(root, "ceb:Payment[2]/ceb:PaymentHead/ceb:amountPaid", "123456789012345.67890")
    assert schemas.validate(root, mtype) == []


def test_pack_no_has_at_most_nine_digits(schemas: SchemaSet) -> None:
    root, mtype = load("CEB511")
    set_text(root, "ceb:Logistics[1]/ceb:LogisticsHead/ceb:packNo", "1234567890")
    issue = one(schemas.validate(root, mtype))
    assert issue.path == "/CEB511Message/Logistics[1]/LogisticsHead/packNo"
    assert issue.code in ("schema.too_many_digits", "schema.invalid_value")


def test_root_guid_of_35_characters(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    root.set("guid", root.get("guid")[:35])
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.wrong_length", "/CEB311Message/@guid")
    assert "36" in issue.message and "35" in issue.message and root.get("guid") in issue.message


def test_document_guid_of_37_characters(schemas: SchemaSet) -> None:
    root, mtype = load("CEB621")
    set_text(root, "ceb:Inventory/ceb:InventoryHead/ceb:guid", "3D4E5F6A-7B8C-4D9E-8F01-2A3B4C5D6E01X")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.wrong_length", "/CEB621Message/Inventory[1]/InventoryHead/guid")


def test_101_documents(schemas: SchemaSet) -> None:
    root, mtype = load("CEB511")
    logistics = root.find(ceb("Logistics"))
    while len(root.findall(ceb("Logistics"))) < 101:
        logistics.addnext(copy.deepcopy(logistics))
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.too_many_occurrences", "/CEB511Message/Logistics[101]")
    assert "101" in issue.message and "100" in issue.message


def test_100_order_lines(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    order = root.findall(ceb("Order"))[1]
    line = order.find(ceb("OrderList"))
    while len(order.findall(ceb("OrderList"))) < 100:
        line.addnext(copy.deepcopy(line))
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.too_many_occurrences", "/CEB311Message/Order[2]/OrderList[100]")
    assert "99" in issue.message


def test_second_delivery_in_711(schemas: SchemaSet) -> None:
    root, mtype = load("CEB711")
    root.find(ceb("Delivery")).addnext(copy.deepcopy(root.find(ceb("Delivery"))))
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.too_many_occurrences", "/CEB711Message/Delivery[2]")


@pytest.mark.parametrize("code", ["CEB621", "CEB623", "CEB625", "CEB711"])
def test_missing_signature_where_it_is_required(schemas: SchemaSet, code: str) -> None:
    root, mtype = load(code)
    remove(root, "ds:Signature")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.missing_element", f"/{code}Message/Signature")


@pytest.mark.parametrize("code", ["CEB312", "CEB622", "CEB816", "CEB900"])
def test_signature_on_a_receipt(schemas: SchemaSet, code: str) -> None:
    root, mtype = load(code)
    root.append(copy.deepcopy(load("CEB621")[0].find(f"{{{DS_NS}}}Signature")))
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.unexpected_element", f"/{code}Message/Signature")


def test_signature_in_the_wrong_namespace(schemas: SchemaSet) -> None:
    root, mtype = load("CEB621")
    sig = root.find(f"{{{DS_NS}}}Signature")
    sig.tag = ceb("Signature")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.unexpected_element", "/CEB621Message/Signature")
    assert CEB_NS in issue.message


def test_broken_signature_structure(schemas: SchemaSet) -> None:
    root, mtype = load("CEB621")
    remove(root, "ds:Signature/ds:SignatureValue")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.missing_element", "/CEB621Message/Signature/SignatureValue")


def test_empty_required_string(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    set_text(root, "ceb:Order[2]/ceb:OrderHead/ceb:ebpName", "")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.too_short", "/CEB311Message/Order[2]/OrderHead/ebpName")
    assert "empty" in issue.message


def test_currency_is_fixed_to_142(schemas: SchemaSet) -> None:
    root, mtype = load("CEB621")
    set_text(root, "ceb:Inventory/ceb:InventoryList[3]/ceb:currency", "502")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.fixed_value", "/CEB621Message/Inventory[1]/InventoryList[3]/currency")
    assert "142" in issue.message and "'502'" in issue.message


def test_empty_currency_takes_the_fixed_value(schemas: SchemaSet) -> None:
    # XSD rule for fixed values: an empty element gets the fixed value, so <currency/> passes the schema
    # (customs' XSD behaves the same); the rules layer has to insist on a written 142.
    xml = (DATA / "CEB411Message.xml").read_bytes().replace(b"<ceb:currency>142</ceb:currency>", b"<ceb:currency/>", 1)
    root, mtype = parse_message(xml)
    assert root.xpath("ceb:Payment[1]/ceb:PaymentHead/ceb:currency", namespaces=NS)[0].text is None
    assert schemas.validate(root, mtype) == []


def test_missing_and_unexpected_attributes(schemas: SchemaSet) -> None:
    root, mtype = load("CEB412")
    del root.attrib["version"]
    root.set("lang", "zh")
    issues = schemas.validate(root, mtype)
    assert sorted((i.code, i.path) for i in issues) == [
        ("schema.missing_attribute", "/CEB412Message/@version"),
        ("schema.unexpected_attribute", "/CEB412Message/@lang"),
    ]


def test_unknown_and_repeated_elements(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    order_no = root.xpath("ceb:Order[1]/ceb:OrderHead/ceb:orderNo", namespaces=NS)[0]
    order_no.addnext(etree.Element(ceb("orderNo2")))
    line_qty = root.xpath("ceb:Order[2]/ceb:OrderList[1]/ceb:qty", namespaces=NS)[0]
    line_qty.addnext(copy.deepcopy(line_qty))
    issues = schemas.validate(root, mtype)
    assert [(i.code, i.path) for i in issues] == [
        ("schema.unexpected_element", "/CEB311Message/Order[1]/OrderHead/orderNo2"),
        ("schema.too_many_occurrences", "/CEB311Message/Order[2]/OrderList[1]/qty[2]"),
    ]


def test_values_of_the_wrong_type(schemas: SchemaSet) -> None:
    root, mtype = load("CEB621")
    set_text(root, "ceb:Inventory/ceb:InventoryHead/ceb:grossWeight", "3.25kg")
    set_text(root, "ceb:Inventory/ceb:InventoryList[2]/ceb:gnum", "二")
    issues = schemas.validate(root, mtype)
    assert [(i.code, i.path) for i in issues] == [
        ("schema.invalid_value", "/CEB621Message/Inventory[1]/InventoryHead/grossWeight"),
        ("schema.invalid_value", "/CEB621Message/Inventory[1]/InventoryList[2]/gnum"),
    ]
    assert "'3.25kg'" in issues[0].message and "decimal" in issues[0].message
    assert "'二'" in issues[1].message


def test_text_and_elements_where_they_do_not_belong(schemas: SchemaSet) -> None:
    root, mtype = load("CEB513")
    status = root.find(ceb("LogisticsStatus"))
    status.find(ceb("guid")).tail = "stray text"
    status.find(ceb("note")).append(etree.Element(ceb("b")))
    issues = schemas.validate(root, mtype)
    assert [(i.code, i.path) for i in issues] == [
        ("schema.unexpected_text", "/CEB513Message/LogisticsStatus[1]"),
        ("schema.invalid_value", "/CEB513Message/LogisticsStatus[1]/note"),
    ]
    assert "stray text" in issues[0].message


def test_root_of_another_type(schemas: SchemaSet) -> None:
    root, _ = load("CEB312")
    issues = schemas.validate(root, BY_CODE["CEB311"])
    assert issues[0].code == "schema.wrong_root" and issues[0].path == "/CEB312Message"
    assert "CEB311Message" in issues[0].message


def test_every_error_is_returned_not_only_the_first(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    order = root.find(ceb("Order"))
    while len(root.findall(ceb("Order"))) < 40:
        order.addnext(copy.deepcopy(order))
    for i in range(1, 41):
        set_text(root, f"ceb:Order[{i}]/ceb:OrderHead/ceb:appTime", "2024-03-01")
    root.set("guid", "short")
    issues = schemas.validate(root, mtype)
    assert len(issues) == 41
    assert issues[0].path == "/CEB311Message/@guid"
    assert [i.path for i in issues[1:]] == [f"/CEB311Message/Order[{i}]/OrderHead/appTime" for i in range(1, 41)]
    assert {i.code for i in issues} == {"schema.wrong_length"}


# ------------------------------------------------------------------------------------------------
# Path normalisation


# ------------------------------------------------------------------------------------------------


def _as_default_namespace(xml: bytes) -> bytes:
    return xml.replace(b"ceb:", b"").replace(b"xmlns:ceb=", b"xmlns=")


def test_business_element_and_lines_are_always_indexed_heads_are_not(schemas: SchemaSet) -> None:
    root, mtype = load("CEB621")  # one Inventory: libxml2 itself writes no [1] for it
    set_text(root, "ceb:Inventory/ceb:InventoryHead/ceb:customsCode", "29910")
    set_text(root, "ceb:Inventory/ceb:InventoryList[1]/ceb:gcode", "96190011")
    assert [i.path for i in schemas.validate(root, mtype)] == [
        "/CEB621Message/Inventory[1]/InventoryHead/customsCode",
        "/CEB621Message/Inventory[1]/InventoryList[1]/gcode",
    ]


def test_single_line_of_a_single_document_is_indexed(schemas: SchemaSet) -> None:
    root, mtype = load("CEB625")
    remove(root, "ceb:InvtRefund/ceb:InvtRefundList[2]")
    set_text(root, "ceb:InvtRefund/ceb:InvtRefundList/ceb:unit", "1220")
    issue = one(schemas.validate(root, mtype))
    assert issue.path == "/CEB625Message/InvtRefund[1]/InvtRefundList[1]/unit"


def test_documents_without_head_and_receipts(schemas: SchemaSet) -> None:
    root, mtype = load("CEB622")  # receipt in a default namespace, two InventoryReturn
    set_text(root, "ceb:InventoryReturn[2]/ceb:preNo", "B2024030100000012")  # 17 characters
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.wrong_length", "/CEB622Message/InventoryReturn[2]/preNo")
    root, mtype = load("CEB623")  # a single InvtCancel holds its fields directly
    set_text(root, "ceb:InvtCancel/ceb:reason", "")
    assert one(schemas.validate(root, mtype)).path == "/CEB623Message/InvtCancel[1]/reason"


def test_other_repeated_elements_are_indexed_only_when_repeated(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    sub = root.find(ceb("BaseSubscribe"))
    sub.addnext(copy.deepcopy(sub))
    set_text(root, "ceb:BaseSubscribe[2]/ceb:dxpMode", "DXPX")
    set_text(root, "ceb:BaseTransfer/ceb:dxpMode", "DX")
    issues = schemas.validate(root, mtype)
    assert [i.path for i in issues] == [
        "/CEB311Message/BaseTransfer/dxpMode", "/CEB311Message/BaseSubscribe[2]/dxpMode"]


def test_signature_paths_lose_their_prefix(schemas: SchemaSet) -> None:
    root, mtype = load("CEB711")
    set_text(root, "ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", "not base64 ☃")
    issue = one(schemas.validate(root, mtype))
    assert issue.path == "/CEB711Message/Signature/KeyInfo/X509Data/X509Certificate"
    assert issue.code == "schema.invalid_value"


@pytest.mark.parametrize("mutate", ["missing", "too_long", "order", "lines"])
def test_same_paths_whatever_the_prefix(schemas: SchemaSet, mutate: str) -> None:
    """libxml2 writes ``/*/*[2]/*[1]/*[15]`` for a default namespace; our paths must not depend on it."""

    def broken(xml: bytes) -> list[tuple[str, str]]:
        root, mtype = parse_message(xml)
        if mutate == "missing":
            remove(root, "ceb:Order[2]/ceb:OrderHead/ceb:acturalPaid")
        elif mutate == "too_long":
            set_text(root, "ceb:Order[2]/ceb:OrderList[2]/ceb:gmodel", "规" * 511)
        elif mutate == "order":
            head = root.xpath("ceb:Order[1]/ceb:OrderHead", namespaces=NS)[0]
            head.find(ceb("guid")).addprevious(head.find(ceb("appType")))
        else:
            order = root.find(ceb("Order"))
            line = order.find(ceb("OrderList"))
            while len(order.findall(ceb("OrderList"))) < 100:
                line.addnext(copy.deepcopy(line))
        return [(i.code, i.path) for i in schemas.validate(root, mtype)]

    xml = (DATA / "CEB311Message.xml").read_bytes()
    other_prefix = xml.replace(b"ceb:", b"c:").replace(b"xmlns:ceb=", b"xmlns:c=")
    results = [broken(xml), broken(_as_default_namespace(xml)), broken(other_prefix)]
    assert results[0] and results[0] == results[1] == results[2]
    assert all(p.startswith("/CEB311Message/Order[") for _, p in results[0])


# ------------------------------------------------------------------------------------------------
# Properties: lengths in characters and decimal precision behave exactly as the facets say


# ------------------------------------------------------------------------------------------------

_SHARED = SchemaSet()  # hypothesis tests cannot use function-scoped fixtures
_XML_TEXT = st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs"))


@settings(max_examples=60, deadline=None)
@given(value=st.text(alphabet=_XML_TEXT, max_size=70))
def test_order_no_is_valid_exactly_when_1_to_60_characters(value: str) -> None:
    schemas = _SHARED
    root, mtype = load("CEB311")
    set_text(root, "ceb:Order[1]/ceb:OrderHead/ceb:orderNo", value)
    issues = schemas.validate(root, mtype)
    if 1 <= len(value) <= 60:
        assert issues == []
    else:
        assert [(i.code, i.path) for i in issues] == [
            ("schema.too_short" if not value else "schema.too_long", "/CEB311Message/Order[1]/OrderHead/orderNo")]


@settings(max_examples=80, deadline=None)
@given(whole=st.integers(min_value=0, max_value=10**22), frac=st.integers(min_value=0, max_value=10**7),
       negative=st.booleans())
def test_amount_precision_follows_n19_5(whole: int, frac: int, negative: bool) -> None:
    frac_text = str(frac).rstrip("0") if frac else ""
    text = ("-" if negative and (whole or frac_text) else "") + str(whole) + (f".{frac_text}" if frac_text else "")
    n_frac = len(frac_text)
    n_total = len((str(whole) + frac_text).lstrip("0")) or 1  # significant digits; zero counts as one
    root, mtype = load("CEB411")
    set_text(root, "ceb:Payment[1]/ceb:PaymentHead/ceb:amountPaid", text)
    codes = [i.code for i in _SHARED.validate(root, mtype)]
    expected = (["schema.too_many_digits"] if n_total > 19 else []) + (
        ["schema.too_many_fraction_digits"] if n_frac > 5 else [])
    assert codes == expected



# ------------------------------------------------------------------------------------------------
# DXP envelope


# ------------------------------------------------------------------------------------------------


def dxp_msg(receivers: int = 1, ver: str = "1.0", creat_time: str = "2024-03-01T09:30:15",
            add_info: bool = True) -> bytes:
    data = base64.b64encode((DATA / "CEB311Message.xml").read_bytes()).decode()
    ids = "".join(f"<dxp:ReceiverId>DXPEDCCEB000000{i % 10}</dxp:ReceiverId>" for i in range(2, 2 + receivers))
    add = ("<dxp:AddInfo><dxp:FileName>CEB311_20240301093015.xml</dxp:FileName>"
           '<dxp:BizKey><dxp:Key name="DealFlag">1</dxp:Key><dxp:Key name="orderNo">TM20240301000123456</dxp:Key>'
           '</dxp:BizKey><dxp:IsText Encode="UTF-8"/></dxp:AddInfo>') if add_info else ""
    return (f'<dxp:DxpMsg xmlns:dxp="{DXP_NS}" ver="{ver}" Id="msg1">'
            f"<dxp:TransInfo><dxp:CopMsgId>0b7c1f7e-5a55-4c1b-9b7f-2f1d3e5a7c90</dxp:CopMsgId>"
            f"<dxp:SenderId>DXPENT0000458763</dxp:SenderId><dxp:ReceiverIds>{ids}</dxp:ReceiverIds>"
            f"<dxp:CreatTime>{creat_time}</dxp:CreatTime><dxp:MsgType>CEB311Message</dxp:MsgType></dxp:TransInfo>"
            f"<dxp:Data>{data}</dxp:Data>{add}</dxp:DxpMsg>").encode()


DXP_REP = f"""<DxpRep xmlns="{DXP_NS}" ver="1.0">
  <RecevierId>DXPENT0000458763</RecevierId>
  <Response>
    <ResponseCode>0002</ResponseCode>
    <ResponseInfo>报文未通过schema校验</ResponseInfo>
    <Results><Result><RecId>DXPEDCCEB0000002</RecId><Code>0002</Code><Info>schema</Info></Result></Results>
    <NoticeTime>2024-03-01</NoticeTime>
    <OriHead>
      <CopMsgId>0b7c1f7e-5a55-4c1b-9b7f-2f1d3e5a7c90</CopMsgId><SenderId>DXPENT0000458763</SenderId>
      <ReceiverIds><ReceiverId>DXPEDCCEB0000002</ReceiverId></ReceiverIds>
      <CreatTime>2024-03-01T09:30:15</CreatTime><MsgType>CEB311Message</MsgType>
    </OriHead>
  </Response>
</DxpRep>""".encode()


def test_valid_dxp_envelopes(schemas: SchemaSet) -> None:
    assert schemas.validate_dxp(parse_xml(dxp_msg())) == []
    assert schemas.validate_dxp(parse_xml(dxp_msg(receivers=5, add_info=False))) == []
    assert schemas.validate_dxp(parse_xml(DXP_REP)) == []
    signed = parse_xml(dxp_msg())
    signed.append(copy.deepcopy(load("CEB621")[0].find(f"{{{DS_NS}}}Signature")))
    assert schemas.validate_dxp(signed) == []


@pytest.mark.parametrize(("xml", "code", "path"), [
    (dxp_msg(receivers=6), "schema.too_many_occurrences", "/DxpMsg/TransInfo/ReceiverIds/ReceiverId[6]"),
    (dxp_msg(ver="2.0"), "schema.fixed_value", "/DxpMsg/@ver"),
    (dxp_msg(creat_time="20240301093015"), "schema.invalid_value", "/DxpMsg/TransInfo/CreatTime"),
    (dxp_msg().replace(b"<dxp:SenderId>DXPENT0000458763</dxp:SenderId>", b""), "schema.missing_element",
     "/DxpMsg/TransInfo/SenderId"),
    (dxp_msg().replace(b"DXPENT0000458763", b"DXPENT00004587631"), "schema.too_long", "/DxpMsg/TransInfo/SenderId"),
    (DXP_REP.replace(b"<NoticeTime>2024-03-01</NoticeTime>", b""), "schema.missing_element",
     "/DxpRep/Response/NoticeTime"),
])
def test_broken_dxp_envelopes(schemas: SchemaSet, xml: bytes, code: str, path: str) -> None:
    issue = one(schemas.validate_dxp(parse_xml(xml)))
    assert (issue.code, issue.path) == (code, path)


def test_a_ceb_message_is_not_a_dxp_envelope(schemas: SchemaSet) -> None:
    root, _ = load("CEB311")
    issue = one(schemas.validate_dxp(root))
    assert (issue.code, issue.path) == ("schema.wrong_root", "/CEB311Message")


# ------------------------------------------------------------------------------------------------
# Loading, threads, speed


# ------------------------------------------------------------------------------------------------


def test_codes_are_documented() -> None:
    assert CODES and all(c.startswith("schema.") and len(d) > 20 for c, d in CODES.items())
    assert {"schema.missing_element", "schema.unexpected_element", "schema.too_long", "schema.too_short",
            "schema.wrong_length", "schema.too_many_digits", "schema.too_many_fraction_digits",
            "schema.invalid_value", "schema.missing_attribute", "schema.too_many_occurrences",
            "schema.other"} <= set(CODES)


def test_schema_files_have_no_doctype_and_load_without_network() -> None:
    for xsd in SCHEMA_DIR.glob("*.xsd"):
        assert b"<!DOCTYPE" not in xsd.read_bytes(), xsd
    SchemaSet().preload()


def test_missing_schema_folder() -> None:
    with pytest.raises(SchemaLoadError):
        SchemaSet(Path("/nonexistent/schemas"))


def test_imports_outside_the_schema_folder_are_refused(tmp_path: Path) -> None:
    for xsd in SCHEMA_DIR.glob("*.xsd"):
        shutil.copy(xsd, tmp_path)
    text = (tmp_path / "ceb-import-202205.xsd").read_text(encoding="utf-8")
    (tmp_path / "remote.xsd").write_text(
        text.replace('schemaLocation="xmldsig-core-schema.xsd"',
                     'schemaLocation="http://127.0.0.1:9/xmldsig-core-schema-remote.xsd"'), encoding="utf-8")
    root, mtype = load("CEB311")
    local = SchemaSet(tmp_path)
    assert local.validate(root, mtype) == []  # the copy itself works
    with pytest.raises(SchemaLoadError, match=r"127\.0\.0\.1"):
        local.validate(root, replace(mtype, schema="remote.xsd"))


def test_two_threads_construct_and_validate_at_once() -> None:
    shared = SchemaSet()
    good, good_type = load("CEB621")
    bad, bad_type = load("CEB311")
    remove(bad, "ceb:Order[2]/ceb:OrderHead/ceb:acturalPaid")
    expected_bad = [("schema.missing_element", "/CEB311Message/Order[2]/OrderHead/acturalPaid")]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    compiled: list[object] = []

    def work(make: Callable[[], SchemaSet]) -> None:
        try:
            barrier.wait(timeout=10)
            schemas = make()
            good_tree, bad_tree = copy.deepcopy(good), copy.deepcopy(bad)  # trees are per thread too
            for _ in range(300):
                assert schemas.validate(good_tree, good_type) == []
                assert [(i.code, i.path) for i in schemas.validate(bad_tree, bad_type)] == expected_bad
            compiled.append(schemas._schema(good_type.schema))  # white-box: one compiled object per thread
        except BaseException as exc:  # reported by the main thread below
            errors.append(exc)

    for make in (SchemaSet, lambda: shared):
        threads = [threading.Thread(target=work, args=(make,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        barrier.reset()
    assert errors == []
    assert len(compiled) == 4 and compiled[2] is not compiled[3]


def test_validation_is_fast_no_per_call_compilation(schemas: SchemaSet) -> None:
    root, mtype = load("CEB311")
    schemas.validate(root, mtype)
    started = time.perf_counter()
    for _ in range(2000):
        schemas.validate(root, mtype)
    # about 25 µs each here; compiling per call would take over 1.5 ms each
    assert time.perf_counter() - started < 1.0


def test_element_sequences_read_as_xmlschema_reads_the_import_schema() -> None:
    """gateway.schema.element_sequences (what JSON rendering and the sandbox's receipts follow) against an
    independent reader, xmlschema: every complex element of every import message, its children in order."""
    import xmlschema

    from gateway.messages import CEB_NS, IMPORT_SCHEMA, MESSAGE_TYPES, SCHEMA_DIR
    from gateway.render import FIELD_ORDER
    from gateway.sandbox.receipts import RECEIPT_FIELDS
    from gateway.schema import element_sequences

    schema = xmlschema.XMLSchema(str(SCHEMA_DIR / IMPORT_SCHEMA))
    found: dict[str, tuple[str, ...]] = {}

    def walk(el: Any, depth: int = 0) -> None:
        t = getattr(el, "type", None)
        if t is None or t.is_simple() or t.has_simple_content() or depth > 8:
            return
        kids = [c for c in t.content.iter_elements() if getattr(c, "type", None) is not None]
        if el.target_namespace == CEB_NS:  # XML-DSig's choices are not ours to build
            found.setdefault(el.local_name, tuple(c.local_name for c in kids))
        for c in kids:
            walk(c, depth + 1)

    for mtype in MESSAGE_TYPES:
        if mtype.schema == IMPORT_SCHEMA:
            walk(schema.elements[mtype.root])
    sequences = element_sequences()
    # an xs:any (ExtendMessage's Message) has no sequence to follow: () on both sides
    assert {name: sequences.get(name) or () for name in found} == found
    assert FIELD_ORDER["import"]["OrderHead"][:4] == ("guid", "appType", "appTime", "appStatus")
    assert RECEIPT_FIELDS["CEB900"][2] == ("guid", "returnStatus", "returnInfo", "returnTime", "oriCopMsgId",
                                           "oriMessageType", "oriBizMessage")  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Export messages (spec §2.2, §2.6, §4, Appendix A.16–A.26): ceb-export-202205.xsd


# ------------------------------------------------------------------------------------------------

EXPORT_CODES = ("CEB303", "CEB304", "CEB403", "CEB404", "CEB505", "CEB506", "CEB603", "CEB604", "CEB605", "CEB606",
                "CEB507", "CEB508", "CEB509", "CEB510", "CEB607", "CEB608", "CEB701", "CEB702", "CEB792",
                "CEB213", "CEB214", "CEB215", "CEB216")


def test_the_export_types_use_the_export_schema() -> None:
    from gateway.messages import EXPORT_SCHEMA

    assert sorted(t.code for t in MESSAGE_TYPES if t.flow == "export") == sorted(EXPORT_CODES)
    assert all(BY_CODE[c].schema == EXPORT_SCHEMA for c in EXPORT_CODES)
    assert {BY_CODE[c].signature for c in ("CEB603", "CEB605", "CEB507", "CEB509", "CEB607")} == {"on_declare"}
    assert {BY_CODE[c].receipt_for for c in ("CEB508", "CEB510", "CEB608")} == {"CEB507", "CEB509", "CEB607"}
    assert {BY_CODE[c].signature for c in ("CEB303", "CEB403", "CEB505")} == {"optional"}


def test_export_fixtures_carry_several_documents_lines_and_the_export_child_order() -> None:
    root, _ = load("CEB303")
    assert [len(o.findall(ceb("OrderList"))) for o in root.findall(ceb("Order"))] == [3, 2]
    assert [etree.QName(c).localname for c in root][-4:] == ["BaseTransfer", "BaseSubscribe", "Signature",
                                                              "ExtendMessage"]  # fmt: skip
    root, _ = load("CEB603")
    assert len(root.findall(f"{ceb('Inventory')}/{ceb('InventoryList')}")) == 3
    assert root.find(f"{{{DS_NS}}}Signature").getnext().tag == ceb("ExtendMessage")
    assert root.xpath("ceb:Inventory/ceb:InventoryList/ceb:unit2", namespaces=NS)


@pytest.mark.parametrize("code", ["CEB303", "CEB603"])
def test_export_signature_after_extend_message_is_out_of_order(schemas: SchemaSet, code: str) -> None:
    """§2.2: the import order (ExtendMessage, then ds:Signature) is wrong for export — what a signer that always
    appends the signature last produces."""
    root, mtype = load(code)
    root.append(root.find(f"{{{DS_NS}}}Signature"))
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.out_of_order", f"/{code}Message/Signature")


def test_export_signature_is_optional_in_the_schema(schemas: SchemaSet) -> None:
    # 603/605 must be signed when declared (§2.7), but that is the rules layer's word, not the export XSD's
    for code in ("CEB603", "CEB605", "CEB507", "CEB509", "CEB607"):
        root, mtype = load(code)
        remove(root, "ds:Signature")
        assert schemas.validate(root, mtype) == []


@pytest.mark.parametrize("code", ["CEB304", "CEB604", "CEB606", "CEB508", "CEB510", "CEB608"])
def test_signature_on_an_export_receipt(schemas: SchemaSet, code: str) -> None:
    root, mtype = load(code)
    root.append(copy.deepcopy(load("CEB603")[0].find(f"{{{DS_NS}}}Signature")))
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.unexpected_element", f"/{code}Message/Signature")


@pytest.mark.parametrize(("code", "xpath"), [
    ("CEB303", "ceb:Order[1]/ceb:OrderHead/ceb:ebpName"),
    ("CEB303", "ceb:Order[2]/ceb:OrderList[1]/ceb:itemNo"),
    ("CEB403", "ceb:Receipts[1]/ceb:payName"),
    ("CEB505", "ceb:Logistics[1]/ceb:goodsInfo"),
    ("CEB603", "ceb:Inventory/ceb:InventoryHead/ceb:copNo"),
    ("CEB603", "ceb:Inventory/ceb:InventoryList[2]/ceb:gname"),
    ("CEB604", "ceb:InventoryReturn[1]/ceb:invtNo"),
    ("CEB605", "ceb:InvtCancel/ceb:reason"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalHead/ceb:copNo"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalHead/ceb:operatorName"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalHead/ceb:domesticTrafNo"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalList[1]/ceb:logisticsNo"),
    ("CEB508", "ceb:ArrivalReturn[1]/ceb:billNo"),
    ("CEB509", "ceb:Departure[1]/ceb:DepartureHead/ceb:logisticsName"),
    ("CEB509", "ceb:Departure[1]/ceb:DepartureList[2]/ceb:logisticsNo"),
    ("CEB510", "ceb:DepartureReturn[1]/ceb:copNo"),
    ("CEB607", "ceb:WayBill[1]/ceb:WayBillHead/ceb:trafName"),
    ("CEB607", "ceb:WayBill[1]/ceb:WayBillHead/ceb:voyageNo"),
    ("CEB607", "ceb:WayBill[1]/ceb:WayBillHead/ceb:billNo"),
    ("CEB608", "ceb:WayBillReturn[1]/ceb:agentCode"),
    ("CEB701", "ceb:SummaryApply[1]/ceb:SummaryApplyHead/ceb:declAgentName"),
    ("CEB702", "ceb:SummaryReturn[1]/ceb:copNo"),
    ("CEB792", "ceb:SummaryResult/ceb:SummaryResultList[1]/ceb:logisticsNo"),
    ("CEB213", "ceb:InvtRefund[1]/ceb:InvtRefundHead/ceb:country"),
    ("CEB213", "ceb:InvtRefund[1]/ceb:InvtRefundList[1]/ceb:gmodel"),
    ("CEB214", "ceb:RefundReturn[1]/ceb:returnStatus"),
    ("CEB215", "ceb:InvtRefundDetail[1]/ceb:voyageNo"),
])  # fmt: skip
def test_export_schema_lets_empty_starred_strings_pass(schemas: SchemaSet, code: str, xpath: str) -> None:
    """§2.6: the 2022 export XSD dropped minLength=1 on most required strings; the rules layer refuses them."""
    root, mtype = load(code)
    set_text(root, xpath, "")
    assert schemas.validate(root, mtype) == []


@pytest.mark.parametrize("name", ["ebpName", "logisticsName", "agentName", "ebcCode", "ebcName"])
def test_export_required_strings_without_a_star_keep_their_minimum(schemas: SchemaSet, name: str) -> None:
    root, mtype = load("CEB603")
    set_text(root, f"ceb:Inventory/ceb:InventoryHead/ceb:{name}", "")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.too_short", f"/CEB603Message/Inventory[1]/InventoryHead/{name}")


def test_export_currency_is_not_fixed(schemas: SchemaSet) -> None:
    root, mtype = load("CEB303")
    set_text(root, "ceb:Order[1]/ceb:OrderHead/ceb:currency", "502")
    set_text(root, "ceb:Order[1]/ceb:OrderList[1]/ceb:currency", "502")
    assert schemas.validate(root, mtype) == []
    set_text(root, "ceb:Order[1]/ceb:OrderHead/ceb:currency", "5020")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.wrong_length", "/CEB303Message/Order[1]/OrderHead/currency")


def test_export_lists_take_100_lines_not_101(schemas: SchemaSet) -> None:
    root, mtype = load("CEB603")
    inventory = root.find(ceb("Inventory"))
    line = inventory.find(ceb("InventoryList"))
    while len(inventory.findall(ceb("InventoryList"))) < 100:
        line.addnext(copy.deepcopy(line))
    assert schemas.validate(root, mtype) == []
    line.addnext(copy.deepcopy(line))
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.too_many_occurrences", "/CEB603Message/Inventory[1]/InventoryList[101]")
    assert "100" in issue.message


def test_export_documents_100_not_101(schemas: SchemaSet) -> None:
    root, mtype = load("CEB505")
    logistics = root.find(ceb("Logistics"))
    while len(root.findall(ceb("Logistics"))) < 100:
        logistics.addnext(copy.deepcopy(logistics))
    assert schemas.validate(root, mtype) == []
    logistics.addnext(copy.deepcopy(logistics))
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.too_many_occurrences", "/CEB505Message/Logistics[101]")


@pytest.mark.parametrize(("code", "xpath", "value", "expected"), [
    ("CEB505", "ceb:Logistics[1]/ceb:logisticsNo", "SF" + "1" * 31, "schema.too_long"),  # 32 since 2022
    ("CEB603", "ceb:Inventory/ceb:InventoryHead/ceb:logisticsNo", "SF" + "1" * 31, "schema.too_long"),
    ("CEB603", "ceb:Inventory/ceb:InventoryHead/ceb:copNo", "C" * 31, "schema.too_long"),
    ("CEB603", "ceb:Inventory/ceb:InventoryHead/ceb:POD", "LA", "schema.too_short"),
    ("CEB603", "ceb:Inventory/ceb:InventoryHead/ceb:POD", "LAXYZ", "schema.too_long"),
    ("CEB603", "ceb:Inventory/ceb:InventoryList[1]/ceb:itemNo", "I" * 21, "schema.too_long"),
    ("CEB603", "ceb:Inventory/ceb:InventoryList[1]/ceb:gnum", "100000", "schema.too_many_digits"),
    ("CEB603", "ceb:Inventory/ceb:InventoryList[1]/ceb:qty", "1.000001", "schema.too_many_fraction_digits"),
    ("CEB303", "ceb:Order[1]/ceb:OrderList[1]/ceb:itemNo", "I" * 31, "schema.too_long"),
    ("CEB604", "ceb:InventoryReturn[2]/ceb:preNo", "B2026112000000471", "schema.wrong_length"),
    ("CEB604", "ceb:InventoryReturn[1]/ceb:invtNo", "4" * 21, "schema.too_long"),
    ("CEB304", "ceb:OrderReturn[1]/ceb:returnStatus", "", "schema.too_short"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalHead/ceb:customsCode", "51410", "schema.wrong_length"),
    ("CEB507", "ceb:Arrival[2]/ceb:ArrivalHead/ceb:preNo", "B2026112100000051", "schema.wrong_length"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalHead/ceb:loctNo", "5141W012345", "schema.too_long"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalHead/ceb:billNo", "B" * 38, "schema.too_long"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalHead/ceb:domesticTrafNo", "车" * 101, "schema.too_long"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalHead/ceb:msgCount", "1000000000", "schema.too_many_digits"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalHead/ceb:msgSeqNo", "1.5", "schema.invalid_value"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalList[1]/ceb:logisticsNo", "YT" + "1" * 31, "schema.too_long"),
    ("CEB507", "ceb:Arrival[1]/ceb:ArrivalList[1]/ceb:totalPackageNo", "B" * 38, "schema.too_long"),
    ("CEB508", "ceb:ArrivalReturn[1]/ceb:preNo", "", "schema.wrong_length"),
    ("CEB509", "ceb:Departure[1]/ceb:DepartureHead/ceb:leaveTime", "202611211745", "schema.wrong_length"),
    ("CEB509", "ceb:Departure[1]/ceb:DepartureHead/ceb:voyageNo", "V" * 33, "schema.too_long"),
    ("CEB509", "ceb:Departure[1]/ceb:DepartureHead/ceb:trafName", "T" * 101, "schema.too_long"),
    ("CEB510", "ceb:DepartureReturn[1]/ceb:msgSeqNo", "", "schema.invalid_value"),
    ("CEB607", "ceb:WayBill[1]/ceb:WayBillHead/ceb:grossWeight", "1.123456", "schema.too_many_fraction_digits"),
    ("CEB607", "ceb:WayBill[1]/ceb:WayBillHead/ceb:domesticTrafNo", "D" * 101, "schema.too_long"),
    ("CEB607", "ceb:WayBill[1]/ceb:WayBillList[1]/ceb:totalPackageNo", "P" * 61, "schema.too_long"),
    ("CEB607", "ceb:WayBill[1]/ceb:WayBillList[1]/ceb:invtNo", "5" * 21, "schema.too_long"),
    ("CEB608", "ceb:WayBillReturn[1]/ceb:billNo", "B" * 38, "schema.too_long"),
    ("CEB701", "ceb:SummaryApply[1]/ceb:SummaryApplyHead/ceb:itemNameFlag", "", "schema.wrong_length"),  # C1
    ("CEB701", "ceb:SummaryApply[1]/ceb:SummaryApplyHead/ceb:summaryFlag", "12", "schema.wrong_length"),
    ("CEB701", "ceb:SummaryApply[1]/ceb:SummaryApplyHead/ceb:preNo", "S" * 19, "schema.too_long"),  # C..18
    ("CEB701", "ceb:SummaryApply[1]/ceb:SummaryApplyHead/ceb:copNo", "C" * 31, "schema.too_long"),
    ("CEB701", "ceb:SummaryApply[1]/ceb:SummaryApplyHead/ceb:msgCount", "1234567890", "schema.too_many_digits"),
    ("CEB701", "ceb:SummaryApply[1]/ceb:SummaryApplyList[1]/ceb:invtNo", "5" * 21, "schema.too_long"),
    ("CEB702", "ceb:SummaryReturn[2]/ceb:sumNo", "51412026S00000031", "schema.wrong_length"),  # C18
    ("CEB702", "ceb:SummaryReturn[1]/ceb:preNo", "S2026112100000031", "schema.wrong_length"),
    ("CEB792", "ceb:SummaryResult/ceb:SummaryResultHead/ceb:decState", "", "schema.too_short"),  # required, no "*"
    ("CEB792", "ceb:SummaryResult/ceb:SummaryResultHead/ceb:decState", "1000", "schema.too_long"),
    ("CEB792", "ceb:SummaryResult/ceb:SummaryResultHead/ceb:opDate", "20261121103000", "schema.wrong_length"),
    ("CEB792", "ceb:SummaryResult/ceb:SummaryResultList[1]/ceb:gcode", "61091000", "schema.wrong_length"),
    ("CEB213", "ceb:InvtRefund[1]/ceb:InvtRefundHead/ceb:logisticsNo", "Y" * 81, "schema.too_long"),  # C..80
    ("CEB213", "ceb:InvtRefund[1]/ceb:InvtRefundHead/ceb:tradeMode", "966", "schema.wrong_length"),  # C4
    ("CEB213", "ceb:InvtRefund[1]/ceb:InvtRefundHead/ceb:ieFlag", "IE", "schema.too_long"),  # C..1*
    ("CEB213", "ceb:InvtRefund[1]/ceb:InvtRefundHead/ceb:portCode", "64011", "schema.too_long"),  # C..4*
    ("CEB213", "ceb:InvtRefund[1]/ceb:InvtRefundHead/ceb:reason", "退" * 501, "schema.too_long"),  # C..500*
    ("CEB213", "ceb:InvtRefund[1]/ceb:InvtRefundList[1]/ceb:gnum", "10000", "schema.too_many_digits"),  # N4
    ("CEB213", "ceb:InvtRefund[1]/ceb:InvtRefundList[2]/ceb:note", "注" * 501, "schema.too_long"),
    ("CEB214", "ceb:RefundReturn[1]/ceb:coElNo", "T" * 31, "schema.too_long"),
    ("CEB215", "ceb:InvtRefundDetail[1]/ceb:coElNo", "L" * 21, "schema.too_long"),  # C..20 here, C..30 in 216
    ("CEB215", "ceb:InvtRefundDetail[1]/ceb:ieFlag", "", "schema.wrong_length"),  # C1, no "*"
    ("CEB215", "ceb:InvtRefundDetail[1]/ceb:location", "B" * 251, "schema.too_long"),
    ("CEB216", "ceb:InvtRefundDetailReturn[1]/ceb:coElNo", "L" * 31, "schema.too_long"),
    ("CEB216", "ceb:InvtRefundDetailReturn[1]/ceb:returnTime", "20261205120100", "schema.wrong_length"),
])  # fmt: skip
def test_export_lengths_and_numbers(schemas: SchemaSet, code: str, xpath: str, value: str, expected: str) -> None:
    root, mtype = load(code)
    set_text(root, xpath, value)
    issue = one(schemas.validate(root, mtype))
    assert issue.code == expected, issue
    assert issue.path.endswith(xpath.rsplit(":", 1)[-1])


def test_collapsed_strings_count_after_folding_blanks(schemas: SchemaSet) -> None:
    root, mtype = load("CEB603")
    set_text(root, "ceb:Inventory/ceb:InventoryHead/ceb:POD", "  LAX  ")  # ws=collapse: 3 characters
    # 603 characters as written, 243 after folding
    set_text(root, "ceb:Inventory/ceb:InventoryList[1]/ceb:gmodel", " 规格:" + "    大" * 120 + " ")
    assert schemas.validate(root, mtype) == []
    root, mtype = load("CEB505")
    set_text(root, "ceb:Logistics[1]/ceb:goodsInfo", "茶" * 201)
    assert one(schemas.validate(root, mtype)).code == "schema.too_long"


def test_export_inventory_lists_quantities_before_units(schemas: SchemaSet) -> None:
    """603 lines give qty, qty1, qty2 then unit, unit1, unit2 — the import interleaving is out of order here."""
    root, mtype = load("CEB603")
    line = root.xpath("ceb:Inventory/ceb:InventoryList[1]", namespaces=NS)[0]
    line.find(ceb("qty1")).addprevious(line.find(ceb("unit")))  # qty, unit, qty1: the import order
    issue = one(schemas.validate(root, mtype))
    assert issue.code == "schema.out_of_order"
    assert issue.path.startswith("/CEB603Message/Inventory[1]/InventoryList[1]/")


def test_element_sequences_read_as_xmlschema_reads_the_export_schema() -> None:
    """The export schema, read by gateway.schema (what JSON rendering follows for export) and by xmlschema."""
    import xmlschema

    from gateway.messages import EXPORT_SCHEMA
    from gateway.render import FIELD_ORDER
    from gateway.schema import element_sequences

    schema = xmlschema.XMLSchema(str(SCHEMA_DIR / EXPORT_SCHEMA))
    found: dict[str, tuple[str, ...]] = {}

    def walk(el: Any, depth: int = 0) -> None:
        t = getattr(el, "type", None)
        if t is None or t.is_simple() or t.has_simple_content() or depth > 8:
            return
        kids = [c for c in t.content.iter_elements() if getattr(c, "type", None) is not None]
        if el.target_namespace == CEB_NS:
            found.setdefault(el.local_name, tuple(c.local_name for c in kids))
        for c in kids:
            walk(c, depth + 1)

    for code in EXPORT_CODES:
        walk(schema.elements[BY_CODE[code].root])
    sequences = element_sequences(EXPORT_SCHEMA)
    assert {name: sequences.get(name) or () for name in found} == found
    assert found["CEB603Message"] == ("Inventory", "BaseTransfer", "BaseSubscribe", "Signature", "ExtendMessage")
    assert {name: found[name] for name in FIELD_ORDER["export"]} == FIELD_ORDER["export"]


def test_transport_lists_an_arrival_may_be_empty_departure_and_607_not(schemas: SchemaSet) -> None:
    """A.20: ArrivalList 0..n; A.22, A.27: DepartureList and WayBillList 1..n; none of them capped at 100."""
    root, mtype = load("CEB507")
    for line in root.xpath("ceb:Arrival[2]/ceb:ArrivalList", namespaces=NS):
        line.getparent().remove(line)
    assert schemas.validate(root, mtype) == []
    for code, doc, lines in (("CEB509", "Departure", "DepartureList"), ("CEB607", "WayBill", "WayBillList")):
        root, mtype = load(code)
        first = root.find(ceb(doc))
        line = first.find(ceb(lines))
        for _ in range(150):
            line.addnext(copy.deepcopy(line))
        assert schemas.validate(root, mtype) == [], code
        for line in first.findall(ceb(lines)):
            first.remove(line)
        issue = one(schemas.validate(root, mtype))
        assert (issue.code, issue.path) == ("schema.missing_element", f"/{code}Message/{doc}[1]/{lines}"), code


def test_transport_collapsed_and_optional_fields(schemas: SchemaSet) -> None:
    root, mtype = load("CEB607")
    set_text(root, "ceb:WayBill[1]/ceb:WayBillHead/ceb:voyageNo", "  " + "V " * 16 + "  ")  # 31 after folding
    set_text(root, "ceb:WayBill[1]/ceb:WayBillHead/ceb:trafName", "中远海运    " * 10)  # 50 after folding
    assert schemas.validate(root, mtype) == []
    root, mtype = load("CEB509")
    for name in ("trafName", "voyageNo", "billNo", "note"):  # A.22: 0..1
        remove(root, f"ceb:Departure[1]/ceb:DepartureHead/ceb:{name}")
    remove(root, "ceb:Departure[1]/ceb:DepartureList[1]/ceb:totalPackageNo")
    assert schemas.validate(root, mtype) == []
    remove(root, "ceb:Departure[1]/ceb:DepartureHead/ceb:leaveTime")
    issue = one(schemas.validate(root, mtype))
    assert (issue.code, issue.path) == ("schema.missing_element", "/CEB509Message/Departure[1]/DepartureHead/leaveTime")


# ------------------------------------------------------------------------------------------------
# The summary declaration (spec §4.4 step 4, A.29–A.31): CEB701, CEB702, CEB792


# ------------------------------------------------------------------------------------------------


def test_summary_types_and_their_signature_rule() -> None:
    assert (BY_CODE["CEB701"].signature, BY_CODE["CEB702"].receipt_for) == ("on_declare", "CEB701")
    assert (BY_CODE["CEB792"].direction, BY_CODE["CEB792"].receipt_for) == ("receipt", None)


def test_the_official_ceb792_order_gnum_before_gseqno_is_invalid(schemas: SchemaSet) -> None:
    """§12.2: customs' own CEB792 sample puts gnum before gseqno; the XSD's order is gseqno, gnum."""
    root, mtype = load("CEB792")
    line = root.xpath("ceb:SummaryResult/ceb:SummaryResultList[1]", namespaces=NS)[0]
    line.find(ceb("gseqno")).addprevious(line.find(ceb("gnum")))
    issue = one(schemas.validate(root, mtype))
    assert issue.code == "schema.out_of_order"
    assert issue.path.startswith("/CEB792Message/SummaryResult[1]/SummaryResultList[1]/")


def test_summary_lists_may_be_absent_and_are_unbounded(schemas: SchemaSet) -> None:
    root, mtype = load("CEB792")
    for line in root.xpath("ceb:SummaryResult/ceb:SummaryResultList", namespaces=NS):
        line.getparent().remove(line)
    assert schemas.validate(root, mtype) == []
    root, mtype = load("CEB701")
    line = root.xpath("ceb:SummaryApply[1]/ceb:SummaryApplyList[1]", namespaces=NS)[0]
    for _ in range(500):  # a day's B-type parcels of one consignor, no 100 limit here
        line.addnext(copy.deepcopy(line))
    assert schemas.validate(root, mtype) == []


# ------------------------------------------------------------------------------------------------
# Retail export returns (spec §4.4 step 5, A.32–A.35): CEB213, CEB214, CEB215, CEB216


# ------------------------------------------------------------------------------------------------


def test_return_types_and_their_receipts() -> None:
    assert (BY_CODE["CEB213"].signature, BY_CODE["CEB215"].signature) == ("optional", "optional")
    assert (BY_CODE["CEB214"].receipt_for, BY_CODE["CEB216"].receipt_for) == ("CEB213", "CEB215")
    assert BY_CODE["CEB213"].keys == BY_CODE["CEB214"].keys == ("agentCode", "coElNo")
    assert BY_CODE["CEB215"].keys == BY_CODE["CEB216"].keys == ("operatorCode", "coElNo")


def test_a_return_lists_1_to_100_lines_and_its_tally_has_none(schemas: SchemaSet) -> None:
    root, mtype = load("CEB213")
    for line in root.xpath("ceb:InvtRefund[2]/ceb:InvtRefundList", namespaces=NS):
        line.getparent().remove(line)
    assert one(schemas.validate(root, mtype)).code == "schema.missing_element"
    root, mtype = load("CEB213")
    line = root.xpath("ceb:InvtRefund[2]/ceb:InvtRefundList[1]", namespaces=NS)[0]
    for _ in range(100):
        line.addnext(copy.deepcopy(line))
    assert one(schemas.validate(root, mtype)).path.startswith("/CEB213Message/InvtRefund[2]/InvtRefundList[101]")
    root, mtype = load("CEB215")
    remove(root, "ceb:InvtRefundDetail[1]/ceb:invtNo")  # 0..1: the tally may not know the return's number
    assert schemas.validate(root, mtype) == []
