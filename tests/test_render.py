"""JSON → CEB XML rendering: round trip through the real parser, order, defaults, decimals, shape errors; the import
declarations and the export ones alike."""

from __future__ import annotations

import copy
import json
import random
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway import api, samples
from gateway import render as render_mod
from gateway.documents import extract
from gateway.errors import Layer, MessageRejected
from gateway.messages import CEB_NS, DS_NS, EXPORT_SCHEMA, IMPORT_SCHEMA, SCHEMA_DIR, MessageType, lookup
from gateway.pipeline import Pipeline, looks_like_json
from gateway.render import CODES, DEFAULTS, FIELD_ORDER, JSON_TYPES, json_object, json_pointer, render, render_root
from gateway.samples import (
    export_return,
    export_shipment,
    export_transport,
    import_cancellation,
    import_return,
    return_tally,
    shipment,
    summary_application,
)
from gateway.schema import SchemaSet
from gateway.xmlsafe import parse_message

XSD_PATH = SCHEMA_DIR / IMPORT_SCHEMA
EXPORT_XSD_PATH = SCHEMA_DIR / EXPORT_SCHEMA
EXPORT_TYPES = ("CEB303", "CEB403", "CEB505", "CEB603", "CEB605", "CEB507", "CEB509", "CEB607", "CEB701", "CEB213",
                "CEB215")
NOW = datetime(2026, 11, 20, 9, 30, 5)  # naive: China time
UUID4_UPPER = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$")


def stub_signature(root: etree._Element) -> None:
    """A structurally valid (not cryptographically meaningful) enveloped ds:Signature."""
    d = f"{{{DS_NS}}}"
    sig = etree.SubElement(root, d + "Signature", nsmap={"ds": DS_NS})
    info = etree.SubElement(sig, d + "SignedInfo")
    etree.SubElement(info, d + "CanonicalizationMethod", Algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315")
    etree.SubElement(info, d + "SignatureMethod", Algorithm="http://www.w3.org/2000/09/xmldsig#rsa-sha1")
    ref = etree.SubElement(info, d + "Reference", URI="")
    transforms = etree.SubElement(ref, d + "Transforms")
    etree.SubElement(transforms, d + "Transform", Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature")
    etree.SubElement(ref, d + "DigestMethod", Algorithm="http://www.w3.org/2000/09/xmldsig#sha1")
    etree.SubElement(ref, d + "DigestValue").text = "AAAA"
    etree.SubElement(sig, d + "SignatureValue").text = "AAAA"


@pytest.fixture(scope="module")
def xsd() -> etree.XMLSchema:
    if not XSD_PATH.exists():
        pytest.skip(f"{XSD_PATH} not there yet")
    return etree.XMLSchema(etree.parse(str(XSD_PATH)))


@pytest.fixture(scope="module")
def export_xsd() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(EXPORT_XSD_PATH)))


@pytest.fixture(scope="module")
def xsds(xsd: etree.XMLSchema, export_xsd: etree.XMLSchema) -> dict[str, etree.XMLSchema]:
    """The schema of each flow."""
    return {"import": xsd, "export": export_xsd}


def sample_payloads(seed: int = 7, mode: str = "9610") -> dict[str, dict[str, Any]]:
    """The four import legs of a sample parcel, a cancellation (CEB623) and a return (CEB625) of its inventory."""
    s = shipment(random.Random(seed), mode=mode, n_items=3, now=NOW)
    invt_no = f"{s.inventory_doc['customsCode']}2026I{seed:09d}"
    return {**s.payloads(), "CEB623": import_cancellation(random.Random(seed), s.inventory_doc, invt_no, now=NOW),
            "CEB625": import_return(random.Random(seed), s.inventory_doc, invt_no, now=NOW, items=[1])}


def export_payloads(seed: int = 7, mode: str = "9610") -> dict[str, dict[str, Any]]:
    """The four export legs of a sample parcel, a cancellation (CEB605) of its inventory, its transport messages
    (CEB607, 507, 509), a summary application (CEB701) naming it, its return (CEB213) and the return's tally
    (CEB215)."""
    s = export_shipment(random.Random(seed), mode=mode, n_items=3, now=NOW)
    inv = s.inventory_doc
    cancel = {"guid": _seeded_guid(seed, 1), "appType": "1", "appTime": "20261120170000", "appStatus": "2",
              "customsCode": inv["customsCode"], "copNo": f"CX{inv['copNo']}"[:30],
              "invtNo": f"{inv['customsCode']}2026E{seed:011d}", "reason": "买家取消订单",
              "agentCode": inv["agentCode"], "agentName": inv["agentName"], "ebcCode": inv["ebcCode"],
              "ebcName": inv["ebcName"]}  # fmt: skip
    ceb605 = {"type": "CEB605", "guid": _seeded_guid(seed, 2), "version": "1.0",
              "baseTransfer": dict(s.inventory["baseTransfer"]), "documents": [cancel]}  # fmt: skip
    ceb701 = summary_application(random.Random(seed), [inv], [cancel["invtNo"]], now=NOW)
    ceb213 = export_return(random.Random(seed), inv, cancel["invtNo"], now=NOW)
    ceb215 = return_tally(random.Random(seed), ceb213, now=NOW)
    return {**s.payloads(), "CEB605": ceb605, "CEB701": ceb701, **export_transport([s], random.Random(seed)),
            "CEB213": ceb213, "CEB215": ceb215}


def _seeded_guid(seed: int, n: int) -> str:
    return str(uuid.UUID(int=random.Random(seed * 100 + n).getrandbits(128), version=4)).upper()


def all_payloads(seed: int = 7, mode: str = "9610") -> dict[str, dict[str, Any]]:
    """A good payload of every JSON type: the import legs of one sample shipment, the export ones of another."""
    return {**sample_payloads(seed, mode), **export_payloads(seed, mode)}


def mtype_of(code: str) -> MessageType:
    mtype = lookup(code)
    assert mtype is not None
    return mtype


def fields_element(mtype: MessageType) -> str:
    return mtype.head or mtype.document


def minimal(code: str) -> dict[str, Any]:
    mtype = mtype_of(code)
    # one field to hold on to: the orderNo, or where a document has none (CEB505, 605) its second business key (the
    # transport messages' copNo: their msgSeqNo has a default)
    key = "orderNo" if "orderNo" in FIELD_ORDER[mtype.flow][fields_element(mtype)] else mtype.keys[1]
    doc: dict[str, Any] = {key: "O-1"}
    if mtype.lines:  # gnum, or a CEB701's invtNo
        doc["items"] = [{FIELD_ORDER[mtype.flow][mtype.lines][0]: 1}]
    return {"type": code, "baseTransfer": {"copCode": "C", "copName": "N", "dxpId": "DXPENT0000000001"},
            "documents": [doc]}  # fmt: skip


def rejected(payload: Any, **kw: Any) -> list[tuple[str, str]]:
    with pytest.raises(MessageRejected) as exc:
        render(payload, **kw)
    assert all(i.layer is Layer.SCHEMA for i in exc.value.issues)
    return [(i.code, i.path) for i in exc.value.issues]


def local(el: etree._Element) -> str:
    return etree.QName(el).localname


# --- round trip -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["9610", "1210"])
@pytest.mark.parametrize("code", JSON_TYPES)
def test_round_trip_through_parser_and_extract(code: str, mode: str) -> None:
    payload = all_payloads(mode=mode)[code]
    xml = render(payload, now=NOW)
    root, mtype = parse_message(xml)
    assert mtype.code == code
    msg = extract(root, mtype)
    assert msg.guid == payload["guid"] and msg.version == "1.0"
    assert msg.base_transfer == payload["baseTransfer"]
    [doc] = msg.documents
    [src] = payload["documents"]
    assert doc.head == {k: str(v) for k, v in src.items() if k != "items"}
    assert doc.lines == [{k: str(v) for k, v in line.items()} for line in src.get("items", [])]


def test_several_documents_keep_their_order() -> None:
    payload = minimal("CEB411")
    payload["documents"] = [{"orderNo": f"O-{i}"} for i in range(1, 6)]
    msg = extract(*parse_message(render(payload)))
    assert [d.head["orderNo"] for d in msg.documents] == ["O-1", "O-2", "O-3", "O-4", "O-5"]
    assert len({d.head["guid"] for d in msg.documents}) == 5  # one fresh guid per document


def test_uses_ceb_prefix_and_declaration() -> None:
    xml = render(minimal("CEB311"))
    assert xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert b"<ceb:CEB311Message" in xml and b'xmlns:ceb="http://www.chinaport.gov.cn/ceb"' in xml
    root = etree.fromstring(xml)
    assert all(el.prefix == "ceb" for el in root.iter())


# --- element order ------------------------------------------------------------------------


def _assert_in_field_order(parent: etree._Element, flow: str, element: str) -> None:
    names = [local(c) for c in parent]
    order = FIELD_ORDER[flow][element]
    assert [order.index(n) for n in names] == sorted(order.index(n) for n in names), (element, names)


@pytest.mark.parametrize("code", JSON_TYPES)
def test_elements_follow_field_order_whatever_the_json_order(code: str) -> None:
    payload = all_payloads()[code]
    scrambled = copy.deepcopy(payload)
    rng = random.Random(3)
    for doc in scrambled["documents"]:
        keys = list(doc)
        rng.shuffle(keys)
        shuffled = {k: doc[k] for k in keys}
        doc.clear()
        doc.update(shuffled)
    assert list(scrambled["documents"][0]) != list(payload["documents"][0])
    xml = render(scrambled)
    assert xml == render(payload)  # JSON member order does not matter at all
    mtype = mtype_of(code)
    flow = mtype.flow
    root = etree.fromstring(xml)
    assert [local(c) for c in root] == [mtype.document, "BaseTransfer"]
    doc_el = root[0]
    if mtype.head is None:  # CEB403, 505, 605: the fields sit in the business element
        _assert_in_field_order(doc_el, flow, mtype.document)
    else:
        n_items = len(payload["documents"][0].get("items", []))
        assert [local(c) for c in doc_el] == [mtype.head] + [mtype.lines] * n_items
        _assert_in_field_order(doc_el[0], flow, mtype.head)
        for line in doc_el[1:]:
            _assert_in_field_order(line, flow, mtype.lines)  # type: ignore[arg-type]
    _assert_in_field_order(root[1], flow, "BaseTransfer")


def test_export_elements_follow_the_export_schema_not_the_import_one() -> None:
    """The two schemas name their elements alike but order them otherwise: an export inventory line lists its
    quantities before its units (spec §4.3), an import one pairs each quantity with its unit."""
    line = etree.fromstring(render(export_payloads()["CEB603"])).find(f".//{{{CEB_NS}}}InventoryList")
    assert line is not None
    names = [local(c) for c in line]
    assert names.index("qty") < names.index("qty1") < names.index("unit") < names.index("unit1")
    import_line = etree.fromstring(render(sample_payloads()["CEB621"])).find(f".//{{{CEB_NS}}}InventoryList")
    assert import_line is not None
    import_names = [local(c) for c in import_line]
    assert import_names.index("qty") < import_names.index("unit") < import_names.index("qty1")
    assert FIELD_ORDER["export"]["OrderHead"] != FIELD_ORDER["import"]["OrderHead"]


#: Values by flow for the optional fields the samples leave out, so that every element of FIELD_ORDER is rendered.
OPTIONAL_VALUES: dict[str, dict[str, dict[str, str]]] = {
    "import": {
        "OrderHead": {"batchNumbers": "BATCH-2026-11", "note": "促销价"},
        "OrderList": {"note": "赠品"},
        "PaymentHead": {"note": "无"},
        "LogisticsHead": {"note": "易碎"},
        "InventoryHead": {"preNo": "B20261120000000001", "invtNo": "460120261000000001", "emsNo": "T4604W000035",
                          "areaCode": "4604640032", "areaName": "示例保税仓", "loctNo": "4601", "licenseNo": "L-1",
                          "wrapType": "2", "note": "无"},
        "InventoryList": {"itemRecordNo": "10001", "tradeCountry": "116", "qty2": "1", "unit2": "035", "note": "无"},
        "InvtCancel": {"copNo": "CX-1", "preNo": "B20261120000000002", "note": "撤销"},
        "InvtRefundHead": {"copNo": "RX-1", "preNo": "B20261120000000003", "note": "退货"},
        "InvtRefundList": {"note": "原包装"},
    },
    "export": {
        "OrderHead": {"note": "海外仓补货"},
        "OrderList": {"note": "赠品"},
        "Receipts": {"note": "无"},
        "Logistics": {"note": "易碎"},
        "InventoryHead": {"preNo": "B20261120000000001", "invtNo": "51412026E000000001", "iacCode": "4604640032",
                          "iacName": "示例综保区仓储有限公司", "emsNo": "T4604W000035", "totalPackageNo": "P-1",
                          "loctNo": "5141", "licenseNo": "L-1", "note": "无"},
        "InventoryList": {"itemRecordNo": "10001", "qty2": "1", "unit2": "035", "note": "无"},
        "InvtCancel": {"preNo": "B20261120000000002", "note": "撤销"},
        "ArrivalHead": {"preNo": "B20261120000000003", "loctNo": "5141W01", "note": "第一车"},
        "ArrivalList": {"note": "外包装完好"},
        "DepartureHead": {"preNo": "B20261120000000004", "note": "已起飞"},
        "DepartureList": {"note": "无"},
        "WayBillHead": {"preNo": "B20261120000000005", "loctNo": "5141W01", "note": "总分单"},
        "WayBillList": {"invtNo": "51412026E000000001", "note": "无"},
        "SummaryApplyHead": {"preNo": "S20261121000000311", "sumNo": "51412026S000000311",
                             "startTime": "20261120000000", "endTime": "20261120235959", "loctNo": "514101",
                             "note": "汇总"},
        "InvtRefundHead": {"loctNo": "5141W01", "preNo": "R20261126000000031", "note": "原包装退回"},
        "InvtRefundList": {"qty2": "1", "unit2": "035", "note": "外包装破损"},
        "InvtRefundDetail": {"preNo": "T20261126000000017", "note": "件数相符"},
    },
}  # fmt: skip


@pytest.mark.parametrize("flow", ["import", "export"])
def test_every_field_rendered_is_schema_valid(xsds: dict[str, etree.XMLSchema], flow: str) -> None:
    payloads = sample_payloads() if flow == "import" else export_payloads()
    first = next(iter(payloads.values()))
    first["baseSubscribe"] = [{"status": "RET", "dxpAddress": "DXPENT0000000002", "note": "copy"}]
    rendered_elements: set[tuple[str, str]] = set()
    for code, payload in payloads.items():
        mtype = mtype_of(code)
        for doc in payload["documents"]:
            for k, v in OPTIONAL_VALUES[flow].get(fields_element(mtype), {}).items():
                doc.setdefault(k, v)
            for line in doc.get("items", []):
                for k, v in OPTIONAL_VALUES[flow].get(mtype.lines or "", {}).items():
                    line.setdefault(k, v)
        payload["baseTransfer"]["note"] = "n"
        root = etree.fromstring(render(payload, signer=stub_signature))
        assert xsds[flow].validate(root), (code, xsds[flow].error_log)
        for el in root.iter(f"{{{CEB_NS}}}*"):
            if len(el) == 0:
                rendered_elements.add((local(el.getparent()), local(el)))
    # the check above covered every element of every sequence in the flow's FIELD_ORDER
    assert rendered_elements == {(parent, name) for parent, names in FIELD_ORDER[flow].items() for name in names}


# --- defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", JSON_TYPES)
def test_defaults_are_applied(code: str) -> None:
    payload = minimal(code)
    msg = extract(*parse_message(render(payload, now=NOW)))
    assert UUID4_UPPER.match(msg.guid) and msg.version == "1.0"
    [doc] = msg.documents
    assert UUID4_UPPER.match(doc.head["guid"]) and doc.head["guid"] != msg.guid
    assert doc.head["appTime"] == "20261120093005"
    assert doc.head["appType"] == "1" and doc.head["appStatus"] == "2"
    assert msg.base_transfer is not None and msg.base_transfer["dxpMode"] == "DXP"
    expected = {
        "CEB311": {"orderType": "I", "buyerIdType": "1", "currency": "142"},
        "CEB411": {"payerIdType": "1", "currency": "142"},
        "CEB511": {"packNo": "1", "currency": "142"},
        "CEB621": {"buyerIdType": "1", "ieFlag": "I", "packNo": "1", "currency": "142"},
        "CEB623": {"buyerIdType": "1"},
        "CEB625": {"buyerIdType": "1"},
        "CEB303": {"orderType": "E"},
        "CEB403": {},
        "CEB505": {},
        "CEB603": {"ieFlag": "E"},
        "CEB605": {},
        "CEB507": {"ieFlag": "E", "msgCount": "1", "msgSeqNo": "1"},
        "CEB509": {"msgCount": "1", "msgSeqNo": "1"},
        "CEB607": {"msgCount": "1", "msgSeqNo": "1"},
        "CEB701": {"msgCount": "1", "msgSeqNo": "1"},  # one message, not split
        "CEB213": {"ieFlag": "I"},  # a return comes back in (A.32)
        "CEB215": {"ieFlag": "I"},
    }[code]
    assert {k: doc.head[k] for k in expected} == expected
    mtype = mtype_of(code)
    # import amounts are in yuan; an export sale's currency is the seller's and is not guessed (spec §4.1)
    priced = mtype.flow == "import" and "currency" in FIELD_ORDER["import"].get(mtype.lines or "", ())
    assert all(line.get("currency") == ("142" if priced else None) for line in doc.lines)
    # nothing else was invented: only the given field, the generated ones and the documented defaults
    given = set(payload["documents"][0]) - {"items"}
    assert set(doc.head) == given | {"guid", "appTime"} | set(DEFAULTS[mtype.flow][fields_element(mtype)])


def test_explicit_values_win_over_defaults() -> None:
    payload = minimal("CEB621")
    doc = payload["documents"][0]
    doc.update({"guid": "g" * 36, "appType": "2", "appTime": "20250101000000", "appStatus": "1", "packNo": 1,
                "currency": "502", "ieFlag": "E"})  # fmt: skip
    doc["items"][0]["currency"] = "110"
    payload.update({"guid": "r" * 36, "version": "v1.0"})
    payload["baseTransfer"]["dxpMode"] = "XYZ"
    msg = extract(*parse_message(render(payload)))
    head = msg.documents[0].head
    assert (head["guid"], head["appType"], head["appTime"], head["appStatus"]) == ("g" * 36, "2", "20250101000000", "1")
    assert (head["packNo"], head["currency"], head["ieFlag"]) == ("1", "502", "E")
    assert msg.documents[0].lines[0]["currency"] == "110"
    assert (msg.guid, msg.version, msg.base_transfer["dxpMode"]) == ("r" * 36, "v1.0", "XYZ")  # type: ignore[index]


def test_null_means_absent() -> None:
    payload = minimal("CEB311")
    payload["documents"][0].update({"currency": None, "note": None, "guid": None})
    head = extract(*parse_message(render(payload))).documents[0].head
    assert head["currency"] == "142" and "note" not in head and UUID4_UPPER.match(head["guid"])


def test_app_time_is_china_time() -> None:
    aware = datetime(2026, 11, 20, 23, 59, 59, tzinfo=UTC)  # 07:59:59 next day in Shanghai
    head = extract(*parse_message(render(minimal("CEB411"), now=aware))).documents[0].head
    assert head["appTime"] == "20261121075959"
    before = datetime.now(render_mod.SHANGHAI).replace(tzinfo=None, microsecond=0)
    head = extract(*parse_message(render(minimal("CEB411")))).documents[0].head
    after = datetime.now(render_mod.SHANGHAI).replace(tzinfo=None)
    assert before <= datetime.strptime(head["appTime"], "%Y%m%d%H%M%S") <= after


# --- numbers ------------------------------------------------------------------------------


def _order_with(**fields: Any) -> dict[str, str]:
    payload = minimal("CEB311")
    payload["documents"][0].update(fields)
    return extract(*parse_message(render(payload))).documents[0].head


def test_decimals_render_exactly() -> None:
    head = _order_with(goodsValue=Decimal("0.1"), freight=Decimal("12.50"), discount=Decimal("1E+2"),
                       taxTotal=3, acturalPaid="7.00005")  # fmt: skip
    assert (head["goodsValue"], head["freight"], head["discount"]) == ("0.1", "12.50", "100")
    assert (head["taxTotal"], head["acturalPaid"]) == ("3", "7.00005")


def test_json_parsed_with_decimal_keeps_every_digit() -> None:
    body = '{"type": "CEB311", "documents": [{"goodsValue": 19.99, "freight": 0.30, "acturalPaid": 1e2, ' \
           '"items": [{"gnum": 1, "qty": 3, "price": 0.1, "totalPrice": 0.30000}]}]}'
    payload = json.loads(body, parse_float=Decimal)
    msg = extract(*parse_message(render(payload)))
    head, line = msg.documents[0].head, msg.documents[0].lines[0]
    assert (head["goodsValue"], head["freight"], head["acturalPaid"]) == ("19.99", "0.30", "100")
    assert (line["gnum"], line["qty"], line["price"], line["totalPrice"]) == ("1", "3", "0.1", "0.30000")


def test_a_number_too_long_to_write_out_is_refused_before_it_is() -> None:
    """1e99999999 is 10 bytes of JSON and a hundred million digits in positional notation: refused as such."""
    for value in ("1e99999999", "1e-99999999", "0e-99999999", "-4.2E+40"):
        with pytest.raises(MessageRejected) as exc:
            render(json.loads('{"type": "CEB311", "documents": [{"goodsValue": ' + value + "}]}", parse_float=Decimal))
        [issue] = exc.value.issues
        assert (issue.code, issue.path) == ("json.number_out_of_range", "/documents/0/goodsValue"), issue
    # the widest the XSD takes is written out, and so is a zero with a few places
    assert _order_with(goodsValue=Decimal("1234567890123456789.12345"))["goodsValue"] == "1234567890123456789.12345"
    assert _order_with(goodsValue=Decimal("0E-3"))["goodsValue"] == "0.000"


def test_binary_float_is_refused_with_a_clear_message() -> None:
    with pytest.raises(MessageRejected) as exc:
        render(json.loads('{"type": "CEB311", "documents": [{"items": [{"price": 0.1}]}]}'))
    [issue] = exc.value.issues
    assert (issue.code, issue.path) == ("json.invalid_type", "/documents/0/items/0/price")
    assert "parse_float" in issue.message and "0.1" in issue.message


@settings(max_examples=200, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=5, min_value=-(10**14), max_value=10**14))
def test_any_decimal_round_trips(value: Decimal) -> None:
    text = _order_with(goodsValue=value)["goodsValue"]
    assert "E" not in text.upper() and Decimal(text) == value


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=60))
def test_any_xml_safe_text_round_trips(value: str) -> None:
    assert _order_with(note=value).get("note", "") == value


# --- shape errors -------------------------------------------------------------------------


def _with_doc(**fields: Any) -> dict[str, Any]:
    p = minimal("CEB311")
    p["documents"][0].update(fields)
    return p


def _with_item(**fields: Any) -> dict[str, Any]:
    p = minimal("CEB311")
    p["documents"][0]["items"] = [{"gnum": 1}, {"gnum": 2}, {"gnum": 3, **fields}]
    return p


@pytest.mark.parametrize(
    ("payload", "code", "path"),
    [
        ([], "json.not_an_object", ""),
        ("<xml/>", "json.not_an_object", ""),
        ({}, "json.missing_field", "/type"),
        ({"type": "CEB312", "documents": []}, "json.unsupported_type", "/type"),
        ({"type": "CEB711", "documents": []}, "json.unsupported_type", "/type"),
        ({"type": 311, "documents": []}, "json.unsupported_type", "/type"),
        ({"type": "CEB311"}, "json.missing_field", "/documents"),
        ({"type": "CEB311", "documents": {}}, "json.not_an_array", "/documents"),
        ({"type": "CEB311", "documents": "Order"}, "json.not_an_array", "/documents"),
        ({"type": "CEB311", "documents": ["x"]}, "json.not_an_object", "/documents/0"),
        ({"type": "CEB311", "documents": [{}], "extra": 1}, "json.unknown_field", "/extra"),
        ({"type": "CEB311", "documents": [{}], "baseTransfer": []}, "json.not_an_object", "/baseTransfer"),
        ({"type": "CEB311", "documents": [{}], "baseTransfer": {"copCode": 1.5}}, "json.invalid_type",
         "/baseTransfer/copCode"),
        ({"type": "CEB311", "documents": [{}], "baseTransfer": {"dxpid": "x"}}, "json.unknown_field",
         "/baseTransfer/dxpid"),
        ({"type": "CEB311", "documents": [{}], "baseSubscribe": {}}, "json.not_an_array", "/baseSubscribe"),
        ({"type": "CEB311", "documents": [{}], "baseSubscribe": [{"status": "ALL"}, 5]}, "json.not_an_object",
         "/baseSubscribe/1"),
        ({"type": "CEB311", "documents": [{}], "guid": {"a": 1}}, "json.invalid_type", "/guid"),
        (_with_doc(orderNumber="1"), "json.unknown_field", "/documents/0/orderNumber"),
        (_with_doc(**{"a/b~c": 1}), "json.unknown_field", "/documents/0/a~1b~0c"),
        (_with_doc(orderNo={"value": "1"}), "json.invalid_type", "/documents/0/orderNo"),
        (_with_doc(orderNo=["1"]), "json.invalid_type", "/documents/0/orderNo"),
        (_with_doc(goodsValue=True), "json.invalid_type", "/documents/0/goodsValue"),
        (_with_doc(goodsValue=Decimal("NaN")), "json.invalid_type", "/documents/0/goodsValue"),
        (_with_doc(goodsValue=Decimal("Infinity")), "json.invalid_type", "/documents/0/goodsValue"),
        (_with_doc(buyerName="张\x01三"), "json.invalid_character", "/documents/0/buyerName"),
        (_with_doc(items={"gnum": 1}), "json.not_an_array", "/documents/0/items"),
        (_with_doc(items=[{"gnum": 1}, [], {"gnum": 3}]), "json.not_an_object", "/documents/0/items/1"),
        (_with_item(price={"amount": "1"}), "json.invalid_type", "/documents/0/items/2/price"),
        (_with_item(price=1.25), "json.invalid_type", "/documents/0/items/2/price"),
        (_with_item(gcode="0101"), "json.unknown_field", "/documents/0/items/2/gcode"),  # a 621 field in a 311
        ({"type": "CEB411", "documents": [{"items": []}]}, "json.unknown_field", "/documents/0/items"),
        ({"type": "CEB511", "documents": [{"gnum": 1}]}, "json.unknown_field", "/documents/0/gnum"),
        # export: each type takes its own schema's fields, not the import namesake's
        ({"type": "CEB303", "documents": [{"buyerName": "x"}]}, "json.unknown_field", "/documents/0/buyerName"),
        ({"type": "CEB403", "documents": [{"items": []}]}, "json.unknown_field", "/documents/0/items"),
        ({"type": "CEB505", "documents": [{"consignee": "x"}]}, "json.unknown_field", "/documents/0/consignee"),
        ({"type": "CEB603Message", "documents": [{"items": [{"gnum": 1, "tradeCountry": "116"}]}]},
         "json.unknown_field", "/documents/0/items/0/tradeCountry"),
        ({"type": "CEB605", "documents": [{"reason": ["买家取消"]}]}, "json.invalid_type", "/documents/0/reason"),
        ({"type": "CEB605", "documents": [{"orderNo": "x"}]}, "json.unknown_field", "/documents/0/orderNo"),
    ],
)
def test_bad_shapes_give_code_and_pointer(payload: Any, code: str, path: str) -> None:
    assert rejected(payload) == [(code, path)]


def test_unknown_field_suggests_the_close_name() -> None:
    with pytest.raises(MessageRejected) as exc:
        render(_with_doc(acturalPayd="1"))
    assert "acturalPaid" in exc.value.issues[0].message


def test_all_shape_problems_reported_at_once() -> None:
    payload = _with_item(price=0.5)
    payload["documents"][0]["ordrNo"] = "x"
    payload["documents"].append("not a document")
    payload["baseTransfer"]["copCode"] = {}
    assert sorted(rejected(payload)) == sorted([
        ("json.unknown_field", "/documents/0/ordrNo"),
        ("json.invalid_type", "/documents/0/items/2/price"),
        ("json.not_an_object", "/documents/1"),
        ("json.invalid_type", "/baseTransfer/copCode"),
    ])  # fmt: skip


def test_a_hostile_payload_gets_a_bounded_answer() -> None:
    payload = {"type": "CEB411", "documents": [{f"x{i}": 1 for i in range(5000)}]}
    with pytest.raises(MessageRejected) as exc:
        render(payload)
    assert 0 < len(exc.value.issues) <= 100


def test_arrays_beyond_what_the_message_takes_are_refused_before_anything_is_rendered() -> None:
    # a 4 MiB body of empty objects was rendered whole (hundreds of megabytes of XML) before the size check
    with pytest.raises(MessageRejected) as exc:
        render({"type": "CEB311", "documents": [{}] * 1_400_000})
    assert [(i.code, i.path) for i in exc.value.issues] == [("json.too_many", "/documents")]
    assert "1,400,000 entries" in exc.value.issues[0].message and "at most 100" in exc.value.issues[0].message
    items = {"type": "CEB311", "documents": [{"orderNo": "A", "items": [{}] * 100}], "baseSubscribe": [{}] * 6}
    with pytest.raises(MessageRejected) as exc:
        render(items)
    codes = {(i.code, i.path) for i in exc.value.issues}
    assert {("json.too_many", "/documents/0/items"), ("json.too_many", "/baseSubscribe")} <= codes


def test_an_empty_array_is_named_at_the_json_not_the_xml() -> None:
    """No document, or a document with no line, is refused at the array that is empty, as too many entries are —
    not by the XSD at the XML it would have become."""
    assert rejected({"type": "CEB311", "documents": []}) == [("json.too_few", "/documents")]
    payload = json.loads(json.dumps(samples.shipment(random.Random(7)).order, default=str))
    payload["documents"][0]["items"] = []
    assert rejected(payload) == [("json.too_few", "/documents/0/items")]
    baseless = json.loads(json.dumps(samples.shipment(random.Random(7)).waybill, default=str))
    baseless["baseSubscribe"] = []  # optional: none is as good as an empty list
    render(baseless)


def test_export_lists_take_what_the_export_schema_takes() -> None:
    """The array limits follow each schema's maxima: an export document takes 100 lines, an import one 99."""
    def items(code: str, n: int) -> dict[str, Any]:
        return {"type": code, "documents": [{"orderNo": "A", "items": [{"gnum": 1}] * n}]}

    assert rejected(items("CEB603", 101)) == [("json.too_many", "/documents/0/items")]
    assert rejected(items("CEB303", 101)) == [("json.too_many", "/documents/0/items")]
    for code in ("CEB603", "CEB303"):
        root = etree.fromstring(render(items(code, 100)))
        assert len(root.findall(f".//{{{CEB_NS}}}{mtype_of(code).lines}")) == 100
    assert rejected(items("CEB621", 100)) == [("json.too_many", "/documents/0/items")]
    with pytest.raises(MessageRejected) as exc:
        render({"type": "CEB505", "documents": [{}] * 101, "baseSubscribe": [{}] * 6})
    assert [(i.code, i.path) for i in exc.value.issues] == [("json.too_many", "/documents")]
    assert "a CEB505 message takes at most 100" in exc.value.issues[0].message
    assert rejected({"type": "CEB605", "documents": [{}], "baseSubscribe": [{}] * 6}) == [("json.too_many",
                                                                                          "/baseSubscribe")]


def test_json_loading_refuses_what_json_is_not_and_names_members_sent_twice() -> None:
    pipeline = Pipeline(SchemaSet())

    def codes(body: bytes) -> list[tuple[str, str]]:
        with pytest.raises(MessageRejected) as exc:
            pipeline.check_json_body(body)
        return [(i.code, i.path) for i in exc.value.issues]

    assert codes(b'{"type": "CEB411", "documents": [{"payCode": NaN}]}')[0][0] == "parse.invalid_json"
    twice = b'{"type": "CEB411", "documents": [{"payCode": "a", "payCode": "b"}], "guid": 1, "guid": 2}'
    assert ("json.duplicate_member", "/documents/0/payCode") in codes(twice)
    assert ("json.duplicate_member", "/guid") in codes(twice)
    huge = b'{"type": "CEB411", "documents": [{"payCode": 1' + b"0" * 5000 + b"}]}"
    assert codes(huge) == [("json.number_out_of_range", "/documents/0/payCode")]  # not Python's 4,300-digit error
    assert codes('{"type": "CEB411"}'.encode("utf-16"))[0][0] == "parse.encoding"  # RFC 8259: UTF-8
    assert codes(b'{"type": "CEB411", "documents": [{"payCode": true}]}')[0] == ("json.invalid_type",
                                                                                  "/documents/0/payCode")  # fmt: skip
    # a lone surrogate in a member name: the pointer shows it escaped (the answer is UTF-8 JSON)
    [(code, path)] = codes(b'{"type": "CEB411", "documents": [{"\\ud800x": 1}]}')
    assert code == "json.unknown_field" and path == "/documents/0/\\ud800x"
    path.encode("utf-8")
    with pytest.raises(MessageRejected) as exc:
        render({"type": "CEB411", "documents": [{}], "version": "1\x01"})
    assert ("json.invalid_character", "/version") in {(i.code, i.path) for i in exc.value.issues}


def test_a_json_inventory_naming_another_agent_than_the_signers_is_refused() -> None:
    """The gateway signs JSON inventories with one agent's key (signing_agent_code says whose): one declared by
    another agent would reach customs signed by the wrong enterprise."""
    inventory = json.loads(json.dumps(shipment(random.Random(3)).inventory, default=str))
    agent = inventory["documents"][0]["agentCode"]
    signer = Pipeline(SchemaSet(), signer=_throwaway_signer(), signing_agent_code=agent)
    assert signer.check_json(inventory).message.type.code == "CEB621"
    other = Pipeline(SchemaSet(), signer=_throwaway_signer(), signing_agent_code="4601999999")
    with pytest.raises(MessageRejected) as exc:
        other.check_json(inventory)
    assert [(i.code, i.path) for i in exc.value.issues] == [("rule.agent_not_signer", "/documents/0/agentCode")]


@pytest.mark.parametrize("mode", ["9610", "1210"])
def test_each_export_type_from_json_passes_the_export_schema_and_the_rules(export_xsd: etree.XMLSchema,
                                                                          mode: str) -> None:
    """Rendered, signed where the gateway signs, and checked as posted XML is: the export XSD and the export rules.
    The declared inventory, cancellation and summary application are signed by the gateway (spec §2.7), the rest
    are not."""
    pipeline = Pipeline(SchemaSet(), signer=_throwaway_signer())
    for code, payload in export_payloads(5, mode).items():
        checked = pipeline.check_json(json.loads(json.dumps(payload, default=str), parse_float=Decimal))
        assert checked.message.type.code == code
        root = etree.fromstring(checked.raw)
        assert export_xsd.validate(root), (code, export_xsd.error_log)
        signed = code in ("CEB603", "CEB605", "CEB507", "CEB509", "CEB607", "CEB701")  # §2.7: signed when declared
        assert checked.message.signed is signed, code
        # spec §2.2: in an export message ds:Signature follows BaseTransfer (and BaseSubscribe), before ExtendMessage
        assert [local(c) for c in root][1:] == ["BaseTransfer"] + ["Signature"] * signed, code


def test_an_export_inventory_or_cancellation_is_signed_when_declared_and_for_its_agent_only() -> None:
    payloads = export_payloads(9)
    agent = payloads["CEB603"]["documents"][0]["agentCode"]
    pipeline = Pipeline(SchemaSet(), signer=_throwaway_signer(), signing_agent_code=agent)
    for code in ("CEB603", "CEB605", "CEB701"):
        declared = copy.deepcopy(payloads[code])
        del declared["documents"][0]["appStatus"]  # the default: declared (2)
        assert pipeline.check_json(declared).message.signed, code
        saved = copy.deepcopy(payloads[code])
        saved["documents"][0]["appStatus"] = "1"  # a temporary save needs no signature (spec §2.7) and gets none
        assert not pipeline.check_json(saved).message.signed, code
        other = copy.deepcopy(payloads[code])
        other["documents"][0]["agentCode"] = "4601999999"
        with pytest.raises(MessageRejected) as exc:
            pipeline.check_json(other)
        assert [(i.code, i.path) for i in exc.value.issues] == [("rule.agent_not_signer", "/documents/0/agentCode")]
    # the order, 收款单 and waybill are the platform's, payer's and carrier's to sign: the gateway signs none of them
    for code in ("CEB303", "CEB403", "CEB505"):
        assert not pipeline.check_json(payloads[code]).message.signed, code


def test_transport_messages_are_signed_by_the_agent_only_where_they_are_the_agents() -> None:
    """A 清单总分单 (CEB607) is the agent's, signed as its CEB603 is; an arrival (507, the site operator's) or a
    departure (509, the carrier's) names no agent, so the agent's key must not sign it: refused when declared,
    a temporary save goes through unsigned."""
    payloads = export_payloads(9)
    agent = payloads["CEB603"]["documents"][0]["agentCode"]
    pipeline = Pipeline(SchemaSet(), signer=_throwaway_signer(), signing_agent_code=agent)
    assert pipeline.check_json(payloads["CEB607"]).message.signed
    other = copy.deepcopy(payloads["CEB607"])
    other["documents"][0]["agentCode"] = "4601999999"
    with pytest.raises(MessageRejected) as exc:
        pipeline.check_json(other)
    assert [(i.code, i.path) for i in exc.value.issues] == [("rule.agent_not_signer", "/documents/0/agentCode")]
    for code in ("CEB507", "CEB509"):
        with pytest.raises(MessageRejected) as exc:
            pipeline.check_json(payloads[code])
        assert [(i.code, i.path) for i in exc.value.issues] == [("rule.agent_not_signer", "/documents/0")], code
        assert "names no agentCode" in exc.value.issues[0].message
        saved = copy.deepcopy(payloads[code])
        saved["documents"][0]["appStatus"] = "1"
        assert not pipeline.check_json(saved).message.signed, code


#: Export declarations written as XML: the schema samples (with BaseSubscribe, ExtendMessage and a signature) and
#: the generated samples of both modes.
_DATA = Path(__file__).parent / "data"
EXPORT_SAMPLE_FILES = [_DATA / "schema" / f"{code}Message.xml" for code in EXPORT_TYPES] + [
    _DATA / "samples" / f"{code}-{mode}.xml" for code in EXPORT_TYPES[:4] for mode in ("9610", "1210")
]


def payload_from_xml(xml: bytes) -> dict[str, Any]:
    """The JSON a seller would send for a CEB declaration written as XML (ExtendMessage and the signature are not
    part of the JSON shape)."""
    root, mtype = parse_message(xml)
    msg = extract(root, mtype)
    documents = [{**d.head, **({"items": d.lines} if mtype.lines else {})} for d in msg.documents]
    payload: dict[str, Any] = {"type": mtype.code, "guid": msg.guid, "version": msg.version,
                               "baseTransfer": msg.base_transfer, "documents": documents}  # fmt: skip
    subscribe = [{local(c): c.text or "" for c in el} for el in root.iterchildren(f"{{{CEB_NS}}}BaseSubscribe")]
    if subscribe:
        payload["baseSubscribe"] = subscribe
    return payload


def canonical(xml: bytes) -> bytes:
    """The document without layout, comments, ExtendMessage or signature, canonicalised."""
    root = etree.fromstring(xml, etree.XMLParser(remove_blank_text=True, remove_comments=True))
    for child in list(root):
        if local(child) in ("Signature", "ExtendMessage"):
            root.remove(child)
    return etree.tostring(root, method="c14n")


@pytest.mark.parametrize("path", EXPORT_SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_json_payload_made_from_an_export_sample_renders_the_same_document(path: Path,
                                                                             export_xsd: etree.XMLSchema) -> None:
    original = path.read_bytes()
    payload = json.loads(json.dumps(payload_from_xml(original)), parse_float=Decimal)
    xml = render(payload, signer=stub_signature)
    assert export_xsd.validate(etree.fromstring(xml)), export_xsd.error_log
    assert canonical(xml) == canonical(original)  # every element, value and position the same
    if path.parent.name == "samples":  # the generated samples are consistent business data: the rules pass too
        Pipeline(SchemaSet(), signer=_throwaway_signer()).check_json(payload)


def _throwaway_signer() -> Any:
    from gateway.signing import throwaway_signer

    return throwaway_signer("test agent")


def test_json_and_xml_are_told_apart_as_the_api_would() -> None:
    assert looks_like_json(b"\xef\xbb\xbf  {}") and looks_like_json(b"\n[]")
    assert not looks_like_json(b"<?xml version='1.0'?><a/>") and not looks_like_json(b"")


def test_every_emitted_code_is_documented() -> None:
    assert all(code.startswith("json.") and text for code, text in CODES.items())
    emitted: set[str] = set()
    payloads: list[Any] = [[], {}, {"type": "X"}, {"type": "CEB311"}, {"type": "CEB311", "documents": {}},
                           {"type": "CEB311", "documents": [1]}, _with_doc(x=1), _with_doc(orderNo=[]),
                           _with_doc(orderNo="\x00"), _with_doc(goodsValue=Decimal("1e99")),
                           {"type": "CEB411", "documents": [{}] * 101}, {"type": "CEB411", "documents": []},
                           {"type": "CEB411", "documents": [json_object([("payCode", "a"), ("payCode", "b")])]},
                           ]  # fmt: skip
    for payload in payloads:
        with pytest.raises(MessageRejected) as exc:
            render(payload)
        emitted |= {i.code for i in exc.value.issues}
    assert emitted == set(CODES)


# --- completeness is the XSD's job, signatures are the signer's --------------------------


def test_missing_required_fields_are_rendered_as_given_and_left_to_the_xsd(xsd: etree.XMLSchema) -> None:
    payload = sample_payloads()["CEB311"]
    del payload["documents"][0]["orderNo"]
    root = etree.fromstring(render(payload))  # no json.* error for a missing field
    assert root.find(f".//{{{CEB_NS}}}orderNo") is None
    assert not xsd.validate(root)
    assert any("orderNo" in e.message or "ebpCode" in e.message for e in xsd.error_log)


def test_signer_is_called_once_on_the_finished_root() -> None:
    calls: list[list[str]] = []

    def signer(root: etree._Element) -> None:
        calls.append([local(c) for c in root])
        stub_signature(root)

    xml = render(sample_payloads()["CEB621"], signer=signer)
    assert calls == [["Inventory", "BaseTransfer"]]
    root, mtype = parse_message(xml)
    assert extract(root, mtype).signed
    assert local(root[-1]) == "Signature"


def test_signer_not_called_when_the_shape_is_wrong() -> None:
    calls: list[etree._Element] = []
    with pytest.raises(MessageRejected):
        render(_with_doc(bogus=1), signer=calls.append)
    assert calls == []


def test_ceb621_needs_the_signature_to_pass_the_xsd(xsd: etree.XMLSchema) -> None:
    payload = sample_payloads()["CEB621"]
    unsigned = etree.fromstring(render(payload))
    assert not extract(unsigned, lookup("CEB621")).signed  # type: ignore[arg-type]
    assert not xsd.validate(unsigned)
    assert "Signature" in str(xsd.error_log)
    assert xsd.validate(etree.fromstring(render(payload, signer=stub_signature)))


@pytest.mark.parametrize("code", ["CEB311", "CEB411", "CEB511"])
def test_unsigned_311_411_511_are_schema_valid(code: str, xsd: etree.XMLSchema) -> None:
    root = etree.fromstring(render(sample_payloads(mode="1210")[code]))
    assert xsd.validate(root), xsd.error_log


# --- the documentation's examples ---------------------------------------------------------

DOCS = SCHEMA_DIR.parent / "docs" / "json-api.md"


def _doc_examples() -> list[dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    return [json.loads(b, parse_float=Decimal) for b in blocks]


def test_documented_examples_render_and_validate() -> None:
    if not DOCS.exists():
        pytest.skip("docs/json-api.md missing")
    examples = {e["type"]: e for e in _doc_examples() if e.get("type") in render_mod.JSON_TYPES}
    assert set(examples) == set(render_mod.JSON_TYPES)
    order = examples["CEB311"]["documents"][0]
    assert order["acturalPaid"] == order["goodsValue"] + order["freight"] + order["taxTotal"] - order["discount"]
    assert order["goodsValue"] == sum(i["totalPrice"] for i in order["items"])
    del examples["CEB621"]["documents"][0]["..."]  # abridged in the docs
    schemas = {flow: etree.XMLSchema(etree.parse(str(path))) for flow, path in (("import", XSD_PATH),
                                                                               ("export", EXPORT_XSD_PATH))}
    for code, payload in examples.items():
        xml = render(payload, signer=stub_signature if code in ("CEB621", "CEB623", "CEB625", *EXPORT_TYPES[3:])
                     else None)  # fmt: skip
        root, mtype = parse_message(xml)
        if code != "CEB621":  # the 621 example is abridged
            assert schemas[mtype.flow].validate(root), (code, schemas[mtype.flow].error_log)
    # the export examples are one consistent parcel: each passes the rules, as the gateway would sign it
    pipeline = Pipeline(SchemaSet(), signer=_throwaway_signer())
    for code in EXPORT_TYPES:
        pipeline.check_json(examples[code])
    head = extract(*parse_message(render(examples["CEB311"]))).documents[0].head
    assert (head["freight"], head["discount"], head["acturalPaid"]) == ("53.00", "10.00", "1013.73")


def test_every_type_taken_as_json_is_named_where_an_unsupported_type_is_explained() -> None:
    """A seller reads which types JSON takes in the code's explanation (docs/errors.md) and in docs/json-api.md's
    table of shape errors: each names every one, the cancellation and return of an import inventory too."""
    row = next(line for line in DOCS.read_text(encoding="utf-8").splitlines()
               if line.startswith("| `json.unsupported_type` |"))  # fmt: skip
    for text in (CODES["json.unsupported_type"], row):
        assert set(re.findall(r"CEB\d{3}", text)) == set(render_mod.JSON_TYPES), text


def test_documented_error_example_matches_the_real_answer() -> None:
    text = DOCS.read_text(encoding="utf-8")
    answer = next(e for e in _doc_examples() if "error" in e)
    with pytest.raises(MessageRejected) as exc:
        render({"type": "CEB311", "documents": [{"ordrNo": "x", "items": [{}, {}, {"price": 0.5}]}]})
    issues = exc.value.issues
    expected = api.error_response(api._status_for(issues), "the message was rejected", issues)
    assert answer == json.loads(expected.body)  # the API's own answer, status and title included
    for code in CODES:
        assert f"`{code}`" in text


# --- the JSON Schema of /openapi.json -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["9610", "1210"])
def test_the_json_schemas_accept_the_payloads_the_gateway_accepts(xsds: dict[str, etree.XMLSchema], mode: str) -> None:
    from jsonschema import Draft202012Validator

    for seed in range(8):
        for code, payload in all_payloads(seed, mode).items():
            Draft202012Validator(render_mod.json_schema(code)).validate(json.loads(json.dumps(payload, default=str)))
            xsd = xsds[mtype_of(code).flow]
            assert xsd.validate(etree.fromstring(render(payload, signer=stub_signature, now=NOW))), code


def test_the_openapi_request_body_takes_each_json_type_by_its_own_schema() -> None:
    """POST /v1/messages's JSON body in /openapi.json: one of the types' schemas, import and export alike."""
    from jsonschema import Draft202012Validator

    from gateway.openapi import OPENAPI

    body = OPENAPI["paths"]["/v1/messages"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**body, "components": OPENAPI["components"]})
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in body["oneOf"]} == {f"{code}Json" for code in JSON_TYPES}
    for payload in all_payloads(4).values():
        validator.validate(json.loads(json.dumps(payload, default=str)))
    inventory = json.loads(json.dumps(export_payloads(4)["CEB603"], default=str))
    inventory["documents"][0]["items"] *= 34  # 102 lines: the export XSD takes 100
    assert not validator.is_valid(inventory)
    inventory["documents"][0]["items"] = inventory["documents"][0]["items"][:100]
    validator.validate(inventory)
    inventory["documents"][0]["buyerName"] = "an import inventory's field"
    assert not validator.is_valid(inventory)


def test_a_field_the_json_schema_requires_is_required_by_the_gateway(xsds: dict[str, etree.XMLSchema]) -> None:
    """Every required field of the published schemas, left out of a good payload: the schema refuses it, and so
    does the gateway (its XSD layer) — the document says what the gateway does."""
    from jsonschema import Draft202012Validator

    for code, payload in all_payloads(3).items():
        xsd = xsds[mtype_of(code).flow]
        schema = render_mod.json_schema(code)
        validator = Draft202012Validator(schema)
        document = schema["properties"]["documents"]["items"]
        cases = [("documents", 0, name) for name in document["required"]]
        cases += [("baseTransfer", name) for name in schema["properties"]["baseTransfer"]["required"]]
        if "items" in document["properties"]:
            line = document["properties"]["items"]["items"]
            cases += [("documents", 0, "items", 0, name) for name in line["required"]]
        assert len(cases) >= 8, code
        for where in cases:
            broken = copy.deepcopy(payload)
            holder: Any = broken
            for step in where[:-1]:
                holder = holder[step]
            del holder[where[-1]]
            assert not validator.is_valid(json.loads(json.dumps(broken, default=str))), (code, where)
            assert not xsd.validate(etree.fromstring(render(broken, signer=stub_signature, now=NOW))), (code, where)
        unknown = copy.deepcopy(payload)
        unknown["documents"][0]["colour"] = "red"
        assert not validator.is_valid(json.loads(json.dumps(unknown, default=str)))
        with pytest.raises(MessageRejected):
            render(unknown, signer=stub_signature, now=NOW)


def test_null_is_absent_in_the_json_schemas_as_in_the_gateway(xsds: dict[str, etree.XMLSchema]) -> None:
    """null for an optional field (a guid and a version included: generated, defaulted) is accepted by both the
    published schema and the gateway; null for a required field is refused by both."""
    from jsonschema import Draft202012Validator

    for code, payload in all_payloads(5).items():
        xsd = xsds[mtype_of(code).flow]
        schema = render_mod.json_schema(code)
        validator = Draft202012Validator(schema)
        document = schema["properties"]["documents"]["items"]
        optional = [n for n in document["properties"] if n not in document["required"] and n != "items"]
        nulls = json.loads(json.dumps(payload, default=str))
        nulls.update(guid=None, version=None)
        for name in optional:
            nulls["documents"][0][name] = None
        validator.validate(nulls)
        assert xsd.validate(etree.fromstring(render(nulls, signer=stub_signature, now=NOW))), code
        required = json.loads(json.dumps(payload, default=str))
        required["documents"][0][document["required"][0]] = None
        assert not validator.is_valid(required), code
        assert not xsd.validate(etree.fromstring(render(required, signer=stub_signature, now=NOW))), code


# --- where an issue is in the JSON posted ---------------------------------------------------------------------------


def _xml_path(mtype: MessageType, el: etree._Element) -> str:
    """The path an issue names an element by, as the schema and rules layers write it: a document, a BaseSubscribe
    and a line with their position among like siblings (Order[1], OrderList[2]), BaseTransfer and a head without."""
    steps = []
    while el is not None:
        parent, step = el.getparent(), local(el)
        if parent is not None and ((parent.getparent() is None and step != "BaseTransfer") or step == mtype.lines):
            step += f"[{sum(1 for s in el.itersiblings(preceding=True) if local(s) == step) + 1}]"
        steps.append(step)
        el = parent
    return "/" + "/".join(reversed(steps))


@pytest.mark.parametrize("code", JSON_TYPES)
def test_every_rendered_field_points_back_at_its_json_member(code: str) -> None:
    """Each element rendered from a member of the JSON is where its issue's pointer says: the XML path of every
    leaf maps back (gateway.render.json_pointer) to a pointer whose member holds the element's text."""
    payload = copy.deepcopy(all_payloads()[code])
    payload["documents"].append(copy.deepcopy(payload["documents"][0]))  # a second document: [2] is /documents/1
    payload["baseSubscribe"] = [{"status": "1", "dxpAddress": "DXPENT0000000009"}, {"status": "2", "dxpAddress": "D2"}]
    root = render_root(payload, now=NOW)
    mtype = mtype_of(code)
    leaves = 0
    for el in root.iter():
        if len(el) or el is root:
            continue
        path = _xml_path(mtype, el)
        pointer = json_pointer(mtype, path)
        assert pointer is not None, path
        value: Any = payload
        for part in pointer.split("/")[1:]:
            value = value[int(part)] if isinstance(value, list) else value.get(part)
        if value is None:  # a default or generated field (appType, guid, dxpMode ...): no member, a place for one
            parent = json_pointer(mtype, path.rsplit("/", 1)[0])
            assert parent is not None and pointer == f"{parent}/{local(el)}", (pointer, parent)
        else:
            assert str(value) == el.text, (pointer, value, el.text)
            leaves += 1
    assert leaves > 10
    assert json_pointer(mtype, f"/{mtype.root}/@guid") == "/guid"
    assert json_pointer(mtype, f"/{mtype.root}/Signature") is None
    assert json_pointer(mtype, "/") == "" and json_pointer(mtype, "/documents/0/x") == "/documents/0/x"
