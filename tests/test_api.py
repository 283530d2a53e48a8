"""The HTTP API over a real aiohttp server on 127.0.0.1 with a real PostgreSQL behind it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gzip
import json
import os
import random
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import cbec_queue
import pytest
from lxml import etree

from adapters import warehouse
from gateway import api as api_module
from gateway import db, samples
from gateway.api import SHIPMENT_CSV_COLUMNS, create_app
from gateway.config import ApiKey, Role
from gateway.receipts import RANK_CONCLUDED, RANK_REJECTED, RANK_RELEASED
from gateway.render import render
from gateway.sandbox.receipts import build_receipt
from gateway.signing import RsaSha1Key, Signer, generate_test_key
from tests import apiutil
from tests.apiutil import (
    ADMIN,
    EBC_CODE,
    EBP_CODE,
    OPERATOR,
    PLATFORM_A,
    STRANGER,
    Client,
    serving,
    sign_as_agent,
)
from tests.dbutil import drop_database, fresh_database

pytestmark = pytest.mark.db

def xml_of(payload: dict[str, Any]) -> bytes:
    return render(payload, signer=sign_as_agent if payload["type"] == "CEB621" else None)


def new_shipment(seed: int, mode: str = "9610", **kw: Any) -> samples.ShipmentSample:
    return samples.shipment(random.Random(seed), mode=mode, **kw)


def legs(s: samples.ShipmentSample) -> dict[str, bytes]:
    return {p["type"]: xml_of(p) for p in (s.order, s.payment, s.waybill, s.inventory)}


async def shipment_state(api: Client, s: samples.ShipmentSample) -> dict[str, Any]:
    doc = s.order["documents"][0]
    reply = await api.get(f"/v1/shipments/{doc['ebpCode']}/{doc['orderNo']}")
    assert reply.status == 200, reply.body
    return reply.body


@pytest.mark.parametrize("mode", ["9610", "1210"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_four_legs_in_any_order_end_matched(api: Client, mode: str, seed: int) -> None:
    s = new_shipment(seed, mode)
    order = list(legs(s).items())
    random.Random(seed).shuffle(order)
    states = []
    for code, xml in order:
        reply = await api.post_xml(xml)
        assert reply.status == 202, (code, reply.body)
        assert reply.body["message_type"] == code
        assert reply.body["documents"][0]["outcome"] == "accepted"
        states.append(reply.body["documents"][0]["shipment"]["state"])
    assert states[:-1] == ["incomplete"] * 3
    assert states[-1] == "matched"
    found = await shipment_state(api, s)
    assert found["state"] == "matched"
    assert [f for f in found["findings"] if f["blocking"]] == []
    assert found["missing"] == []


async def test_incomplete_shipment_names_missing_legs(api: Client) -> None:
    s = new_shipment(10)
    reply = await api.post_xml(legs(s)["CEB311"])
    shipment = reply.body["documents"][0]["shipment"]
    assert shipment["state"] == "incomplete"
    assert shipment["missing"] == ["payment", "waybill", "inventory"]


async def test_a_waybill_only_shipment_is_read_with_a_hyphen_for_its_empty_ebp_code(api: Client) -> None:
    s = new_shipment(12)
    reply = await api.post_xml(legs(s)["CEB511"])
    shipment = reply.body["documents"][0]["shipment"]
    assert (shipment["ebpCode"], shipment["orderNo"]) == ("", s.order_doc["orderNo"])
    found = await api.get(f"/v1/shipments/-/{s.order_doc['orderNo']}")
    assert found.status == 200, found.body
    assert [d["kind"] for d in found.body["documents"]] == ["waybill"] and found.body["ebpCode"] == ""
    assert (await api.get(f"/v1/shipments/-/{s.order_doc['orderNo']}", key=STRANGER)).status == 404
    for spelt in ("-", ""):  # the list's filter takes the path's spelling too
        page = await api.get(f"/v1/shipments?ebpCode={spelt}")
        assert page.status == 200, page.body
        assert [(x["ebpCode"], x["orderNo"]) for x in page.body["items"]] == [("", s.order_doc["orderNo"])]


async def test_inconsistent_amounts_make_a_mismatch_with_both_values(api: Client) -> None:
    s = samples.broken(new_shipment(11), "amount_mismatch")
    for xml in legs(s).values():
        assert (await api.post_xml(xml)).status == 202
    found = await shipment_state(api, s)
    assert found["state"] == "mismatched"
    codes = {f["code"] for f in found["findings"]}
    assert "recon.amount_paid_mismatch" in codes, codes
    finding = next(f for f in found["findings"] if f["code"] == "recon.amount_paid_mismatch")
    assert finding["left"]["doc"] == "CEB311" and finding["right"]["doc"] == "CEB411"
    assert finding["left"]["value"] != finding["right"]["value"]


async def test_schema_error_is_422_with_code_and_path(api: Client) -> None:
    s = new_shipment(12)
    p = copy.deepcopy(s.order)
    p["documents"][0]["orderNo"] = "X" * 61  # C..60
    reply = await api.post_xml(xml_of(p))
    assert reply.status == 422
    issue = reply.body["error"]["issues"][0]
    assert issue["layer"] == "schema"
    assert issue["path"] == "/CEB311Message/Order[1]/OrderHead/orderNo"
    assert issue["code"].startswith("schema.")


async def test_rule_error_is_422_with_rule_layer(api: Client) -> None:
    s = new_shipment(13)
    p = copy.deepcopy(s.order)
    p["documents"][0]["buyerIdType"] = "2"  # the spec requires 1 (ID card)
    reply = await api.post_xml(xml_of(p))
    assert reply.status == 422
    issues = reply.body["error"]["issues"]
    assert {"layer": "rule", "path": "/CEB311Message/Order[1]/OrderHead/buyerIdType"}.items() <= issues[0].items()


def _with(payload: dict[str, Any], **fields: str) -> dict[str, Any]:
    """A copy of a sample message whose document carries ``fields`` besides its own."""
    p = json.loads(json.dumps(payload, default=str))
    p["documents"][0].update(fields)
    return p


INVENTORY_HEAD = "/CEB621Message/Inventory[1]/InventoryHead"


async def test_a_rule_warning_is_answered_with_the_202_and_again_by_its_replay(api: Client) -> None:
    """A 9610 inventory naming an account book (bonded only, spec §3.4) is taken: 202, the warning beside the
    answer, stored with it — the replay answers it again, and GET /v1/messages/{guid} shows it in the answer."""
    s = new_shipment(61)
    xml = xml_of(_with(s.inventory, emsNo="T4604W000001"))
    first = await api.post_xml(xml)
    assert first.status == 202, first.body
    assert [d["outcome"] for d in first.body["documents"]] == ["accepted"]
    [warning] = first.body["warnings"]
    assert (warning["layer"], warning["code"], warning["path"]) == (
        "rule", "rule.mode_field_unexpected", f"{INVENTORY_HEAD}/emsNo")
    assert "T4604W000001" in warning["message"] and "9610" in warning["message"]
    import jsonschema

    from gateway.openapi import OPENAPI

    jsonschema.validate(warning, OPENAPI["components"]["schemas"]["Issue"])  # the shape of an error
    again = await api.post_xml(xml)
    assert (again.status, again.headers.get("Idempotent-Replay")) == (202, "true")
    assert again.body == first.body
    stored = await api.get(f"/v1/messages/{first.body['guid']}")
    assert stored.status == 200 and stored.body["response"]["warnings"] == [warning]


async def test_a_rule_warning_of_a_json_message_is_answered_too(api: Client) -> None:
    """The same for JSON (a 1210 inventory naming the flight, direct purchase only): the warning at its XML path,
    as the rules' errors are, and where it is in the JSON posted; and a message without any has no warnings in its
    answer."""
    s = new_shipment(62, mode="1210")
    reply = await api.request("POST", "/v1/messages", json_body=_with(s.inventory, trafNo="CZ3090"))
    assert reply.status == 202, reply.body
    assert [(w["code"], w["path"], w["pointer"]) for w in reply.body["warnings"]] == [
        ("rule.mode_field_unexpected", f"{INVENTORY_HEAD}/trafNo", "/documents/0/trafNo")]
    again = await api.request("POST", "/v1/messages", json_body=_with(s.inventory, trafNo="CZ3090"))
    assert again.headers.get("Idempotent-Replay") == "true" and again.body == reply.body
    clean = await api.request("POST", "/v1/messages", json_body=json.loads(json.dumps(s.order, default=str)))
    assert clean.status == 202 and "warnings" not in clean.body, clean.body


async def test_a_json_message_is_answered_where_in_its_json_each_issue_is(api: Client, db_pool: Any) -> None:
    """A JSON seller is told, beside each issue's XML path, where it is in what it posted (``pointer``): a line's
    total, a head's sum, a field the schema misses, the BaseTransfer — in the 422 and in the refusal kept for the
    operators; a 403 for a document not its key's, and a 409, the same. An XML message's issues have no pointer."""
    s = new_shipment(64)
    order = json.loads(json.dumps(s.order, default=str))
    order["documents"][0]["items"][0]["totalPrice"] = "999999.00"
    reply = await api.request("POST", "/v1/messages", json_body=order)
    assert reply.status == 422, reply.body
    found = {(i["code"], i["path"], i["pointer"]) for i in reply.body["error"]["issues"]}
    assert {("rule.total_price_mismatch", "/CEB311Message/Order[1]/OrderList[1]/totalPrice",
             "/documents/0/items/0/totalPrice"),
            ("rule.goods_value_mismatch", "/CEB311Message/Order[1]/OrderHead/goodsValue",
             "/documents/0/goodsValue")} <= found, found  # fmt: skip
    kept = await db_pool.fetchval("SELECT issues FROM rejected_messages ORDER BY id DESC LIMIT 1")
    assert {(i["code"], i["pointer"]) for i in kept} == {(c, p) for c, _, p in found}
    missing = json.loads(json.dumps(s.order, default=str))
    del missing["documents"][0]["orderNo"], missing["baseTransfer"]["copName"]
    reply = await api.request("POST", "/v1/messages", json_body=missing)
    assert reply.status == 422, reply.body
    assert {(i["code"], i["pointer"]) for i in reply.body["error"]["issues"]} == {
        ("schema.missing_element", "/documents/0/orderNo"), ("schema.missing_element", "/baseTransfer/copName")}
    order = json.loads(json.dumps(s.order, default=str))
    other = await api.request("POST", "/v1/messages", key=STRANGER, json_body=order)
    assert other.status == 403, other.body
    assert [(i["code"], i["pointer"]) for i in other.body["error"]["issues"]] == [
        ("auth.not_your_document", "/documents/0")]
    assert (await api.request("POST", "/v1/messages", json_body=order)).status == 202
    order["guid"] = str(uuid.uuid4()).upper()
    duplicate = await api.request("POST", "/v1/messages", json_body=order)
    assert duplicate.status == 409, duplicate.body
    assert all(i["pointer"] == "/documents/0" for i in duplicate.body["error"]["issues"]), duplicate.body
    xml = await api.post_xml(xml_of(_with(new_shipment(65).order, buyerIdType="2")))
    assert xml.status == 422 and all("pointer" not in i for i in xml.body["error"]["issues"]), xml.body


async def test_a_refused_message_is_answered_its_errors_alone(api: Client) -> None:
    """A 9610 inventory without its billNo (an error) that names an account book too (a warning) is refused for the
    error: the 422 lists what refuses it, not the warning."""
    s = new_shipment(63)
    p = _with(s.inventory, emsNo="T4604W000001")
    del p["documents"][0]["billNo"]
    reply = await api.post_xml(xml_of(p))
    assert reply.status == 422, reply.body
    assert [i["code"] for i in reply.body["error"]["issues"]] == ["rule.mode_field_missing"]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "code"),
    [
        (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>', "application/xml",
         400, "parse.dtd_forbidden"),
        (b"<a><b></a>", "application/xml", 400, "parse.not_well_formed"),
        (b"{not json", "application/json", 400, "parse.invalid_json"),
        (b"[" * 100000, "application/json", 400, "parse.invalid_json"),
        (b'{"type": "CEB999", "documents": []}', "application/json", 422, "json.unsupported_type"),
        (b"<a>" + b"x" * (300 * 1024) + b"</a>", "application/xml", 413, "parse.too_large"),
    ],
)
async def test_bad_bodies_get_precise_errors(api: Client, body: bytes, ctype: str, status: int, code: str) -> None:
    reply = await api.request("POST", "/v1/messages", data=body, content_type=ctype)
    assert reply.status == status, reply.body
    assert reply.body["error"]["issues"][0]["code"] == code


async def test_a_body_too_large_is_refused_alike_however_it_comes_and_kept(api: Client) -> None:
    """Over the limit (256 KiB here) with its Content-Length, chunked, or gzip-compressed (small on the wire, large
    once inflated): the same 413 parse.too_large, kept among the refusals; a body within the limit, chunked or
    compressed, is read whole. A receipt in a DxpMsg may be twice as large (base64)."""
    big = b"<a>" + b"x" * (300 * 1024) + b"</a>"

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 16 * 1024):
            yield data[i:i + 16 * 1024]

    async def post(data: Any, **headers: str) -> tuple[int, Any]:
        headers = {"X-API-Key": apiutil.ADMIN, "Content-Type": "application/xml", **headers}
        async with api.session.post(api.base + "/v1/messages", data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    for how, sent in (("length", await post(big)), ("chunked", await post(chunks(big))),
                      ("gzip", await post(gzip.compress(big), **{"Content-Encoding": "gzip"}))):  # fmt: skip
        status, body = sent
        [issue] = body["error"]["issues"]
        assert (status, issue["code"]) == (413, "parse.too_large"), (how, body)
        assert issue["message"].endswith(f"bytes; the limit is {256 * 1024}"), (how, issue)
    kept = await api.get("/v1/rejections?code=parse.too_large")
    assert [r["http_status"] for r in kept.body["items"]] == [413, 413, 413], kept.body
    legs_xml = legs(new_shipment(44))["CEB311"]
    for data, headers in ((chunks(legs_xml), {}), (gzip.compress(legs_xml), {"Content-Encoding": "gzip"})):
        status, body = await post(data, **headers)
        assert status in (202, 409), body  # the second time the same message: its replay is a 202 as well
    receipt = build_receipt("CEB312", {"guid": "D" * 36, "ebpCode": "E1", "ebcCode": "C1", "orderNo": "O-1",
                                       "returnStatus": "2", "returnTime": "20260101120000001",
                                       "returnInfo": "x" * (300 * 1024)})  # fmt: skip
    async with api.session.post(api.base + "/v1/receipts", data=receipt, headers={
            "X-API-Key": apiutil.ADMIN, "Content-Type": "application/xml"}) as resp:  # fmt: skip
        assert resp.status != 413, await resp.text()


async def test_json_sent_without_its_content_type_is_told_so(api: Client) -> None:
    """A body with no Content-Type (or application/octet-stream, as transfer clients send XML) is read as XML; JSON
    sent so is answered 415 saying what to send, not "not well-formed". XML sent so is taken."""
    order = json.dumps(json.loads(json.dumps(new_shipment(45).order, default=str))).encode()
    for ctype in ("", "application/octet-stream"):
        async with api.session.post(api.base + "/v1/messages", data=order, headers={
                "X-API-Key": apiutil.ADMIN, "Content-Type": ctype}) as resp:  # fmt: skip
            body = await resp.json()
            assert resp.status == 415 and "Content-Type: application/json" in body["error"]["title"], body
    async with api.session.post(api.base + "/v1/messages", data=legs(new_shipment(45))["CEB311"], headers={
            "X-API-Key": apiutil.ADMIN, "Content-Type": "application/octet-stream"}) as resp:  # fmt: skip
        assert resp.status == 202, await resp.text()


async def test_a_method_a_path_does_not_take_says_which_it_does(api: Client) -> None:
    wrong = await api.request("PUT", "/v1/messages", data=b"<a/>", content_type="application/xml")
    assert wrong.status == 405 and wrong.body["error"]["status"] == 405, wrong.body
    assert wrong.headers["Allow"] == "POST", dict(wrong.headers)
    assert "Allow" not in (await api.get("/v1/nowhere")).headers


async def test_a_burst_of_good_and_bad_messages_gets_each_its_own_answer(api: Client) -> None:
    """Many requests at once, each check taking its turn (gateway.turns): every answer is its own request's."""
    shipments = [new_shipment(seed, mode) for seed, mode in ((40, "9610"), (41, "1210"), (42, "9610"))]
    good = [(code, xml) for s in shipments for code, xml in legs(s).items()]
    bad = [(b"<a><b></a>", "application/xml", 400, "parse.not_well_formed"),
           (b"{not json", "application/json", 400, "parse.invalid_json"),
           (b'{"type": "CEB999", "documents": []}', "application/json", 422, "json.unsupported_type")]  # fmt: skip
    calls = [api.post_xml(xml) for _, xml in good]
    calls += [api.request("POST", "/v1/messages", data=body, content_type=ctype) for body, ctype, _, _ in bad]
    calls.insert(5, api.request("POST", "/v1/messages", json_body=json.loads(json.dumps(new_shipment(43).order,
                                                                                    default=str))))  # fmt: skip
    replies = await asyncio.gather(*calls)
    json_reply = replies.pop(5)
    assert json_reply.status == 202 and json_reply.body["message_type"] == "CEB311", json_reply.body
    for (code, _), reply in zip(good, replies, strict=False):
        assert reply.status == 202 and reply.body["message_type"] == code, reply.body
    for (_, _, status, issue), reply in zip(bad, replies[len(good) :], strict=True):
        assert reply.status == status and reply.body["error"]["issues"][0]["code"] == issue, reply.body
    for s in shipments:
        assert (await shipment_state(api, s))["state"] == "matched"


async def test_unsupported_content_type_is_415(api: Client) -> None:
    reply = await api.request("POST", "/v1/messages", data=b"hello", content_type="text/plain")
    assert reply.status == 415


async def test_json_submission_goes_through_the_same_path(api: Client) -> None:
    s = new_shipment(14)
    reply = await api.request("POST", "/v1/messages", json_body=json.loads(json.dumps(s.order, default=str)))
    assert reply.status == 202, reply.body
    guid = reply.body["guid"]
    stored = await api.get(f"/v1/messages/{guid}")
    assert stored.status == 200
    assert "<ceb:CEB311Message" in stored.body["raw_xml"]


async def test_a_json_seller_cancels_and_returns_its_inventory_in_json(api: Client, db_pool: asyncpg.Pool) -> None:
    """A seller whose inventory the gateway signed from JSON cancels and returns it in JSON too (CEB623, CEB625),
    signed by the gateway as the inventory was, and held to the inventory it names (the invtNo customs gave it)."""
    s = new_shipment(44, mode="1210")
    for payload in (s.order, s.payment, s.waybill, s.inventory):
        reply = await api.request("POST", "/v1/messages", json_body=json.loads(json.dumps(payload, default=str)))
        assert reply.status == 202, reply.body
    inv = s.inventory_doc
    invt_no = f"{inv['customsCode']}2026I000000044"
    await db_pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '800', customs_rank = $3,"
                          " invt_no = $2 WHERE message_type = 'CEB621' AND key2 = $1", inv["orderNo"], invt_no,
                          RANK_RELEASED)  # fmt: skip
    rng = random.Random(44)
    wrong = samples.import_return(rng, inv, f"{inv['customsCode']}2026I000000999", items=[1])
    refused = await api.request("POST", "/v1/messages", json_body=json.loads(json.dumps(wrong, default=str)))
    assert refused.status == 409 and refused.body["error"]["issues"][0]["code"] == "state.not_the_inventory"
    returned = samples.import_return(rng, inv, invt_no, items=[1])
    for payload in (returned, samples.import_cancellation(rng, inv, invt_no)):
        reply = await api.request("POST", "/v1/messages", json_body=json.loads(json.dumps(payload, default=str)))
        assert reply.status == 202, reply.body
        stored = await api.get(f"/v1/messages/{reply.body['guid']}")
        assert f"<ceb:{payload['type']}Message" in stored.body["raw_xml"] and "<ds:Signature" in stored.body["raw_xml"]


async def test_a_cancellation_or_return_is_answered_with_its_shipment_as_the_key_may_see_it(
    api: Client, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A return (CEB625) and a cancellation (CEB623) move no leg, yet their sender wants to see where its shipment
    stands: each document's ``shipment`` and the answer's ``shipments`` are the inventory's shipment as stored, as a
    leg's 202 shows it — a finding's value of a document the key is no party of (the carrier's waybill, to the seller)
    withheld, in the answer and in the stored message's ``response`` —, with no read more for the cut (the answer
    knows the parties of the documents the findings name)."""
    s = new_shipment(46)
    s.waybill_doc["insuredFee"] = "3.00"  # the carrier's word beside the inventory's 0.00: a warning, still matched
    for payload in (s.order, s.payment, s.waybill, s.inventory):
        assert (await api.post_xml(xml_of(payload), key=PLATFORM_A if payload is s.inventory else ADMIN)).status == 202
    inv = s.inventory_doc
    invt_no = f"{inv['customsCode']}2026I000000046"
    await db_pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '800', customs_rank = $3,"
                          " invt_no = $2 WHERE message_type = 'CEB621' AND key2 = $1", inv["orderNo"], invt_no,
                          RANK_RELEASED)  # fmt: skip
    read: list[Any] = []
    real = api_module.documents_by_guid

    async def counted(pool: Any, guids: Any) -> Any:
        read.append(guids)
        return await real(pool, guids)

    monkeypatch.setattr(api_module, "documents_by_guid", counted)
    key = (inv["ebpCode"], inv["orderNo"])
    rng = random.Random(46)
    returned, cancelled = samples.import_return(rng, inv, invt_no, items=[1]), samples.import_cancellation(rng, inv,
                                                                                                            invt_no)
    for payload in (returned, cancelled):
        reply = await api.request("POST", "/v1/messages", key=PLATFORM_A,
                                  json_body=json.loads(json.dumps(payload, default=str)))  # fmt: skip
        assert reply.status == 202, reply.body
        assert read == [], read  # cut without a read: the answer knows the parties of what its findings name
        apiutil.openapi_check(reply.body, "Accepted")
        [doc] = reply.body["documents"]
        assert doc["shipment"] == {"ebpCode": key[0], "orderNo": key[1], "flow": "import", "state": "matched",
                                   "missing": []}, doc  # fmt: skip
        [shown] = reply.body["shipments"]
        assert {k: shown[k] for k in doc["shipment"]} == doc["shipment"]
        [finding] = [f for f in shown["findings"] if f["code"] == "recon.insured_fee_mismatch"]
        sides = {side["doc"]: side for side in (finding["left"], finding["right"])}
        assert sides["CEB511"] == {"doc": "CEB511", "guid": None, "path": sides["CEB511"]["path"], "value": None,
                                   "withheld": True}, finding  # fmt: skip
        assert sides["CEB621"]["value"] == "0.00" and sides["CEB621"]["guid"] == inv["guid"]
        assert "3.00" not in json.dumps(reply.body)
        stored = (await api.get(f"/v1/messages/{reply.body['guid']}", key=PLATFORM_A)).body["response"]
        assert stored["shipments"] == reply.body["shipments"]
        whole = (await api.get(f"/v1/messages/{reply.body['guid']}", key=ADMIN)).body["response"]
        assert "3.00" in json.dumps(whole["shipments"])  # an operator's key sees both values
        read.clear()  # a stored message's response reads the parties it cuts by


async def test_a_json_declaration_is_not_signed_with_an_expired_certificate(db_pool: asyncpg.Pool) -> None:
    """The gateway's own signing certificate has expired: a JSON inventory, which it would sign, is a 503 naming
    signing.certificate_expired — not stored, and not among the refused messages (nothing about it is wrong: its
    sender sends it again once the key is renewed) — while what the gateway does not sign goes on: a JSON order, an
    inventory its sender signed as XML. /metrics shows the certificate expired."""
    expired = Signer(RsaSha1Key.from_pem(*generate_test_key("rsa", "expired agent", days=0)))
    async with serving(create_app(apiutil.test_settings(), db_pool, signer=expired)) as api:
        s = new_shipment(31)
        inventory = json.loads(json.dumps(s.inventory, default=str))
        refused = await api.request("POST", "/v1/messages", key=PLATFORM_A, json_body=inventory)
        assert refused.status == 503, refused.body
        [issue] = refused.body["error"]["issues"]
        assert (issue["layer"], issue["code"], issue["path"]) == ("rule", "signing.certificate_expired", "/")
        assert f"({expired.backend.key_name}) expired at {expired.valid_until:%Y-%m-%d}" in issue["message"]
        assert "nothing was stored" in refused.body["error"]["title"]
        assert await db_pool.fetchval("SELECT count(*) FROM messages WHERE message_type = 'CEB621'") == 0
        assert await db_pool.fetchval("SELECT count(*) FROM rejected_messages") == 0
        order = await api.request("POST", "/v1/messages", key=PLATFORM_A,
                                  json_body=json.loads(json.dumps(s.order, default=str)))  # fmt: skip
        assert order.status == 202, order.body
        assert (await api.post_xml(legs(s)["CEB621"], key=PLATFORM_A)).status == 202
        metrics = await api.get("/metrics")
        [expiry] = [line for line in metrics.body.decode().splitlines()
                    if line.startswith("cbec_signing_certificate_expiry_seconds ")]  # fmt: skip
        assert float(expiry.split()[1]) < 0


async def test_a_json_message_sent_again_is_a_replay_whatever_the_gateway_generated(api: Client) -> None:
    """A seller's retry of a JSON message (its root guid kept, document guid and appTime left to the gateway) is
    the same message: the XML rendered from it differs each time, its content does not."""
    order = json.loads(json.dumps(new_shipment(19).order, default=str))
    for field in ("guid", "appTime"):
        order["documents"][0].pop(field, None)
    first = await api.request("POST", "/v1/messages", json_body=order)
    assert first.status == 202, first.body
    again = json.dumps(order, indent=2, sort_keys=True).encode()  # another client's formatting, same content
    second = await api.request("POST", "/v1/messages", data=again, content_type="application/json")
    assert second.status == first.status and second.body == first.body
    assert second.headers.get("Idempotent-Replay") == "true"
    order["documents"][0]["note"] = "another content"
    third = await api.request("POST", "/v1/messages", json_body=order)
    assert third.status == 409 and third.body["error"]["issues"][0]["code"] == "state.guid_conflict"


async def test_a_hostile_json_member_name_is_answered_and_kept(api: Client, db_pool: Any) -> None:
    """A lone surrogate in a member name (valid JSON escapes, no UTF-8 form) was a plain-text 500: the pointer of
    its issue could not be stored, logged or answered."""
    body = b'{"type": "CEB311", "documents": [{"\\ud800x": 1}], "\\udc00": 2}'
    reply = await api.request("POST", "/v1/messages", data=body, content_type="application/json")
    assert reply.status == 422, reply.body
    paths = {i["path"] for i in reply.body["error"]["issues"]}
    assert {"/documents/0/\\ud800x", "/\\udc00"} <= paths
    row = await db_pool.fetchrow("SELECT issues FROM rejected_messages ORDER BY id DESC LIMIT 1")
    assert any(i["path"] == "/\\udc00" for i in row["issues"])


async def test_the_body_limit_is_the_json_as_sent_not_the_xml_rendered_from_it(api: Client) -> None:
    """max_body_bytes is 256 KiB here: a CEB311 of 100 documents whose notes are full of '&' is under it as JSON
    and over it as XML ('&amp;'), and is judged as any other."""
    order = json.loads(json.dumps(new_shipment(18).order, default=str))
    doc = order["documents"][0]
    docs = []
    for i in range(100):
        d = dict(doc, orderNo=f"AMP{i:05d}{doc['orderNo'][8:]}", note="&" * 500)
        docs.append(d)
    order["documents"] = docs
    body = json.dumps(order).encode()
    assert len(body) < 256 * 1024 < len(body.replace(b"&", b"&amp;"))
    reply = await api.request("POST", "/v1/messages", data=body, content_type="application/json")
    assert reply.status != 413 and "parse.too_large" not in json.dumps(reply.body), reply.body


async def test_a_refused_message_with_nul_characters_is_answered_and_kept(api: Client, db_pool: Any) -> None:
    """PostgreSQL's text and jsonb hold no NUL: a refused message quoting one in its issues is still answered
    with its 4xx and kept for the operators, with U+FFFD in the NUL's place."""
    order = json.loads(json.dumps(new_shipment(17).order, default=str))
    order["documents"][0]["consignee"] = "张\x00三"
    order["documents"][0]["odd\x00field"] = "x"
    reply = await api.request("POST", "/v1/messages", json_body=order)
    assert 400 <= reply.status < 500, reply.body
    row = await db_pool.fetchrow("SELECT raw, issues FROM rejected_messages ORDER BY id DESC LIMIT 1")
    stored = row["raw"] + json.dumps(row["issues"], ensure_ascii=False)
    assert "\x00" not in stored and "\ufffd" in json.dumps(row["issues"], ensure_ascii=False), row


async def test_missing_or_unknown_key_is_401(api: Client) -> None:
    s = new_shipment(15)
    assert (await api.post_xml(legs(s)["CEB311"], key=None)).status == 401
    assert (await api.post_xml(legs(s)["CEB311"], key="nope")).status == 401
    assert (await api.get("/v1/shipments", key=None)).status == 401


async def test_a_key_beyond_its_rate_is_answered_429_and_nothing_is_stored(db_pool: asyncpg.Pool) -> None:
    """A key configured with rate_per_s / rate_burst: its burst goes through, the next request is a 429 with
    Retry-After (before its body is read: the message is neither stored nor recorded as rejected), and the other keys,
    or a key without a rate, are not held back by it."""
    limited = "k-limited-" + "l" * 20
    keys = (*apiutil.test_settings().api_keys,
            ApiKey("limited", limited, Role.SUBMITTER, frozenset({EBP_CODE, EBC_CODE}), rate_per_s=0.2, rate_burst=2))
    settings = apiutil.test_settings().with_overrides(api_keys=keys)
    async with serving(create_app(settings, db_pool, signer=sign_as_agent)) as api:
        s = new_shipment(19)
        assert (await api.get("/v1/shipments", key=limited)).status == 200
        assert (await api.post_xml(legs(s)["CEB311"], key=limited)).status == 202
        refused = await api.post_xml(legs(s)["CEB411"], key=limited)
        assert refused.status == 429, refused.body
        assert refused.headers["Retry-After"] == "5"  # one request's token at 0.2 a second
        assert "0.2 a second, in bursts of 2" in refused.body["error"]["title"]
        guid = etree.fromstring(legs(s)["CEB411"]).get("guid")
        assert await db_pool.fetchval("SELECT count(*) FROM messages WHERE guid = $1", guid) == 0
        assert await db_pool.fetchval("SELECT count(*) FROM rejected_messages WHERE guid = $1", guid) == 0
        assert (await api.get("/v1/shipments", key=limited)).status == 429
        # the others go on: a submitter of the same codes without a rate, and an operator
        assert (await api.post_xml(legs(s)["CEB621"], key=PLATFORM_A)).status == 202
        assert (await api.get("/v1/shipments", key=OPERATOR)).status == 200


async def test_refused_messages_are_listed_for_their_sender_and_the_operators(api: Client) -> None:
    """What the gateway refused, and why, is there to read afterwards (the sender's own; the operators' all, to help
    a seller): newest first with their issues, filtered by code, paged; one with the body as it was sent. Another
    key's refusals are not disclosed."""
    s = new_shipment(21)
    garbage = b"<CEB311Message><not-closed>"
    assert (await api.post_xml(garbage, key=PLATFORM_A)).status == 400
    order = json.loads(json.dumps(s.order, default=str))
    order["documents"][0]["acturalPaid"] = "1.00"  # not goodsValue + freight + taxTotal - discount
    refused = await api.request("POST", "/v1/messages", key=PLATFORM_A, json_body=order)
    assert refused.status == 422, refused.body
    assert (await api.post_xml(legs(s)["CEB311"], key=STRANGER)).status == 403  # not its document

    own = await api.get("/v1/rejections", key=PLATFORM_A)
    assert own.status == 200 and own.body["next_cursor"] is None
    newest, oldest = own.body["items"]
    assert (newest["submitter"], newest["http_status"], newest["message_type"]) == ("platform-a", 422, "CEB311")
    assert newest["guid"] == order["guid"]  # the sender finds the refusal of its message by its guid
    assert "rule.actural_paid_mismatch" in {i["code"] for i in newest["issues"]}, newest["issues"]
    assert (oldest["http_status"], oldest["raw_size"], oldest["guid"]) == (400, len(garbage), None)
    assert "raw" not in newest  # the list leaves the bodies out
    coded = await api.get("/v1/rejections?code=rule.actural_paid_mismatch", key=PLATFORM_A)
    assert [r["id"] for r in coded.body["items"]] == [newest["id"]]
    first = await api.get("/v1/rejections?limit=1", key=PLATFORM_A)
    assert [r["id"] for r in first.body["items"]] == [newest["id"]] and first.body["next_cursor"]
    second = await api.get(f"/v1/rejections?limit=1&cursor={first.body['next_cursor']}", key=PLATFORM_A)
    assert [r["id"] for r in second.body["items"]] == [oldest["id"]] and second.body["next_cursor"] is None
    one = await api.get(f"/v1/rejections/{oldest['id']}", key=PLATFORM_A)
    assert one.status == 200 and one.body["raw"] == garbage.decode() and one.body["raw_truncated"] is False

    theirs = await api.get("/v1/rejections", key=STRANGER)
    assert [(r["submitter"], r["http_status"]) for r in theirs.body["items"]] == [("stranger", 403)]
    assert theirs.body["items"][0]["issues"][0]["code"] == "auth.not_your_document"
    assert (await api.get(f"/v1/rejections/{oldest['id']}", key=STRANGER)).status == 404
    assert (await api.get("/v1/rejections?submitter=platform-a", key=STRANGER)).body["items"] == theirs.body["items"]

    every = await api.get("/v1/rejections", key=OPERATOR)
    assert [r["submitter"] for r in every.body["items"]] == ["stranger", "platform-a", "platform-a"]
    assert len((await api.get("/v1/rejections?submitter=platform-a&message_type=CEB311", key=OPERATOR)).body[
        "items"]) == 1  # the garbage had no type
    assert (await api.get(f"/v1/rejections/{oldest['id']}", key=OPERATOR)).status == 200
    for bad in ("/v1/rejections?cursor=x", "/v1/rejections?since=yesterday", "/v1/rejections?limit=many"):
        assert (await api.get(bad, key=OPERATOR)).status == 400, bad
    assert (await api.get("/v1/rejections/x1", key=OPERATOR)).status == 404


async def test_tenants_are_isolated(api: Client) -> None:
    s = new_shipment(16)
    order = legs(s)["CEB311"]
    stranger = await api.post_xml(order, key=STRANGER)
    assert stranger.status == 403
    assert stranger.body["error"]["issues"][0]["code"] == "auth.not_your_document"
    own = await api.post_xml(order, key=PLATFORM_A)
    assert own.status == 202
    doc = s.order["documents"][0]
    path = f"/v1/shipments/{doc['ebpCode']}/{doc['orderNo']}"
    assert (await api.get(path, key=PLATFORM_A)).status == 200
    assert (await api.get(path, key=STRANGER)).status == 404
    assert (await api.get(f"/v1/messages/{own.body['guid']}", key=STRANGER)).status == 404
    assert (await api.get(path, key=OPERATOR)).status == 200
    listed = await api.get("/v1/shipments", key=STRANGER)
    assert listed.status == 200 and listed.body["items"] == []
    listed = await api.get("/v1/shipments", key=PLATFORM_A)
    assert [i["orderNo"] for i in listed.body["items"]] == [doc["orderNo"]]


@pytest.mark.parametrize("app_type", ["1", "2", "3"])
async def test_another_tenant_may_not_change_withdraw_or_redeclare_a_stored_document(
    api: Client, app_type: str
) -> None:
    """A key's own code in one party field does not make another tenant's stored document its own: the key of a
    stored document belongs to its parties, and the refusal shows nothing of the stored message."""
    s = new_shipment(18)
    own = await api.post_xml(legs(s)["CEB311"], key=PLATFORM_A)
    assert own.status == 202, own.body
    forged = copy.deepcopy(s.order)
    forged.pop("guid", None)
    doc = forged["documents"][0]
    doc.pop("guid", None)
    doc.update(appType=app_type, appTime=_later(doc["appTime"], 60), ebcCode="9999999999")  # the stranger's
    reply = await api.request("POST", "/v1/messages", key=STRANGER, json_body=json.loads(json.dumps(forged)))
    assert reply.status == 403, reply.body
    assert [i["code"] for i in reply.body["error"]["issues"]] == ["auth.not_your_document"]
    assert own.body["guid"] not in json.dumps(reply.body)
    path = f"/v1/shipments/{doc['ebpCode']}/{doc['orderNo']}"
    assert (await api.get(path, key=STRANGER)).status == 404
    stored = await api.get(path, key=PLATFORM_A)
    assert [(d["message_guid"], d["withdrawn"]) for d in stored.body["documents"]] == [(own.body["guid"], False)]
    # its owner still may (a second appType 1 being a duplicate, as for anyone)
    doc["ebcCode"] = s.order["documents"][0]["ebcCode"]
    again = await api.request("POST", "/v1/messages", key=PLATFORM_A, json_body=forged)
    assert again.status == (409 if app_type == "1" else 202), again.body


async def test_same_guid_same_bytes_replays_the_original_answer(api: Client) -> None:
    xml = legs(new_shipment(17))["CEB311"]
    first = await api.post_xml(xml)
    again = await api.post_xml(xml)
    assert first.status == again.status == 202
    assert again.body == first.body
    assert again.headers.get("Idempotent-Replay") == "true"


async def test_same_guid_other_bytes_is_a_conflict(api: Client) -> None:
    s = new_shipment(18)
    first = await api.post_xml(xml_of(s.order))
    assert first.status == 202
    other = copy.deepcopy(s.order)
    other["documents"][0]["note"] = "改了"
    reply = await api.post_xml(xml_of(other))  # same root guid (the payload carries it), other bytes
    assert reply.status == 409
    assert reply.body["error"]["issues"][0]["code"] == "state.guid_conflict"


def _resend(payload: dict[str, Any], app_type: str, app_time: str) -> dict[str, Any]:
    p = copy.deepcopy(payload)
    p.pop("guid", None)  # a new message
    d = p["documents"][0]
    d["guid"] = None
    d["appType"] = app_type
    d["appTime"] = app_time
    return p


def _later(app_time: str, seconds: int) -> str:
    """An appTime (YYYYMMDDhhmmss) some seconds later: adding to the digits would make second 60 at :59."""
    moment = datetime.strptime(app_time, "%Y%m%d%H%M%S") + timedelta(seconds=seconds)
    return moment.strftime("%Y%m%d%H%M%S")


async def test_duplicate_change_older_and_withdrawal(api: Client) -> None:
    s = new_shipment(19)
    order = s.order
    t0 = order["documents"][0]["appTime"]
    assert (await api.post_xml(xml_of(order))).status == 202

    dup = await api.post_xml(xml_of(_resend(order, "1", t0)))
    assert dup.status == 409
    assert dup.body["error"]["issues"][0]["code"] == "state.duplicate"

    newer = _later(t0, 1)
    changed = _resend(order, "2", newer)
    changed["documents"][0]["note"] = "地址已更正"
    reply = await api.post_xml(xml_of(changed))
    assert reply.status == 202 and reply.body["documents"][0]["outcome"] == "replaced"

    older = await api.post_xml(xml_of(_resend(order, "2", t0)))
    assert older.status in (200, 202)
    assert older.body["documents"][0]["outcome"] == "ignored_older"

    withdrawn = await api.post_xml(xml_of(_resend(order, "3", _later(t0, 2))))
    assert withdrawn.status == 202 and withdrawn.body["documents"][0]["outcome"] == "withdrawn"
    found = await shipment_state(api, s)
    assert "order" in found["missing"]
    history = [d for d in found["documents"] if d["kind"] == "order"]
    assert len(history) >= 2  # the first version and the change are kept

    nothing = await api.post_xml(xml_of(_resend(new_shipment(20).order, "2", newer)))
    assert nothing.status == 409
    assert nothing.body["error"]["issues"][0]["code"] == "state.not_found"


async def test_list_filters_and_paginates(api: Client) -> None:
    for seed in range(30, 35):
        assert (await api.post_xml(legs(new_shipment(seed))["CEB311"])).status == 202
    seen: list[str] = []
    cursor = None
    while True:
        path = "/v1/shipments?state=incomplete&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(path)).body
        seen += [i["orderNo"] for i in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert len(seen) == 5 == len(set(seen))
    assert (await api.get("/v1/shipments?state=matched")).body["items"] == []
    bogus = await api.get("/v1/shipments?state=bogus")
    assert bogus.status == 400 and "one of incomplete, matched, mismatched" in bogus.body["error"]["title"], bogus.body
    assert (await api.get("/v1/shipments?cursor=not-a-cursor")).status == 400
    for forged in ('["2026-01-01T00:00:00+00:00", 1e400]', '["2026-01-01T00:00:00+00:00", 1.5]',
                   '["2026-01-01T00:00:00+00:00", true]'):  # fmt: skip
        cursor = base64.urlsafe_b64encode(forged.encode()).decode().rstrip("=")
        assert (await api.get(f"/v1/shipments?cursor={cursor}")).status == 400, forged
    # by customs status (nothing is forwarded here: every one is pending)
    pending = (await api.get("/v1/shipments?customs_status=pending&state=incomplete")).body["items"]
    assert sorted(i["orderNo"] for i in pending) == sorted(seen)
    assert all(i["customs_status"] == "pending" and i["customs_updated_at"] is None for i in pending)
    assert (await api.get("/v1/shipments?customs_status=released")).body["items"] == []
    bogus = await api.get("/v1/shipments?customs_status=bogus")
    assert bogus.status == 400 and "released" in bogus.body["error"]["title"]
    # by the inventory's trade mode (bonded operators list their 1210 parcels)
    bonded = new_shipment(36, mode="1210")
    assert (await api.post_xml(legs(bonded)["CEB621"])).status == 202
    listed = (await api.get("/v1/shipments?mode=1210")).body["items"]
    assert [i["orderNo"] for i in listed] == [bonded.order_doc["orderNo"]]
    assert (await api.get("/v1/shipments?mode=9610")).body["items"] == []  # the others have no inventory yet
    assert (await api.get("/v1/shipments?mode=12101")).status == 400
    # a misspelt filter is refused, not ignored (it would list every shipment as if applied)
    typo = await api.get("/v1/shipments?staet=matched")
    assert typo.status == 400 and "unknown query parameter 'staet'" in typo.body["error"]["title"]
    assert (await api.get("/v1/shipments.csv?mdoe=1210")).status == 400


async def test_shipments_are_listed_by_when_their_customs_status_changed(api: Client) -> None:
    """A seller polling for customs' word, or catching up on webhooks it missed, lists the shipments whose customs
    status changed in a window (customs_since, customs_until): a receipt moves no reconciliation, so ``since`` —
    the last reconciliation change — does not find them."""
    from urllib.parse import quote

    from tests.exportapi import import_ship, post_json, post_receipt

    s = import_ship(37)
    for p in (s.order, s.payment, s.waybill, s.inventory):
        assert (await post_json(api, p)).status == 202
    order = s.order_doc
    path = f"/v1/shipments/{order['ebpCode']}/{order['orderNo']}"
    reconciled = (await api.get(path)).body["updated_at"]
    r = await post_receipt(api, "CEB312", {"guid": order["guid"], "ebpCode": order["ebpCode"], "ebcCode":
                                           order["ebcCode"], "orderNo": order["orderNo"], "returnStatus": "120",
                                           "returnTime": "20261120151000000", "returnInfo": "x"})  # fmt: skip
    assert r.status == 200 and r.body["receipts"][0]["outcome"] == "applied", r.body
    shown = (await api.get(path)).body
    assert shown["customs_status"] == "declared" and shown["updated_at"] == reconciled
    changed = shown["customs_updated_at"]
    assert changed > reconciled

    def listed(query: str) -> Any:
        return api.get("/v1/shipments?" + query)

    after = quote(changed)  # its +00:00 escaped
    assert (await listed(f"since={after}")).body["items"] == []  # no reconciliation since
    for query in (f"customs_since={after}", f"customs_since={after}&customs_until=2999-01-01T00:00:00Z",
                  f"customs_since={after}&customs_status=declared"):  # fmt: skip
        page = (await listed(query)).body
        assert [i["orderNo"] for i in page["items"]] == [order["orderNo"]], query
    for query in (f"customs_until={after}", "customs_since=2999-01-01T00:00:00Z"):
        assert (await listed(query)).body["items"] == [], query
    bad = await listed("customs_since=yesterday")
    assert bad.status == 400 and "customs_since" in bad.body["error"]["title"], bad.body
    assert (await api.get("/v1/shipments.csv?customs_since=" + after)).status == 200


async def test_healthz_and_openapi(api: Client) -> None:
    health = await api.get("/healthz", key=None)
    assert health.status == 200 and health.body["database"] == "ok"
    spec = await api.get("/openapi.json", key=None)
    assert spec.status == 200
    assert {"/v1/messages", "/v1/shipments", "/v1/shipments/{ebpCode}/{orderNo}"} <= set(spec.body["paths"])


def test_the_openapi_document_says_what_the_routes_take() -> None:
    """What a client generated from it (or a fuzzer) reads: the lists' limit an integer from 1, the replay body's
    forms, a warehouse callback's fields, customs' question taken without a key, a 503 on every keyed route."""
    import jsonschema

    from gateway.openapi import OPENAPI

    paths = OPENAPI["paths"]
    limit = next(p for p in paths["/v1/shipments"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1}
    assert [p["name"] for p in paths["/v1/shipments.csv"]["get"]["parameters"]] == \
        [p["name"] for p in paths["/v1/shipments"]["get"]["parameters"]][:-2]  # fmt: skip
    replay = paths["/v1/queue/replay"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for good in ({"job_ids": [1]}, {"endpoint": "customs"}, {"job_ids": [1], "endpoint": "customs"}, {"all": True}):
        jsonschema.validate(good, replay)
    for bad in ({}, {"all": False}, {"all": True, "job_ids": [1]}, {"job_ids": [0]}, {"endpoint": ""}, {"x": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, replay)
    callback = paths["/v1/warehouse/callbacks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": "cbec.warehouse-callback.v1"}, callback)
    assert paths["/ceb/platDataOpen/{token}"]["post"]["security"] == []
    closes = [paths[p]["post"]["requestBody"]["content"]["application/json"]["schema"]
              for p in ("/v1/receipts/unmatched/{id}/close", "/v1/payment-data/questions/{id}/close")]
    assert closes[0] == closes[1]
    jsonschema.validate({"reason": "filed by another broker"}, closes[0])
    for bad in ({}, {"reason": ""}, {"reason": "x" * 201}, {"reason": "r", "by": "me"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, closes[0])
    accepted = paths["/v1/messages"]["post"]["responses"]["202"]["content"]["application/json"]["schema"]
    assert accepted == {"$ref": "#/components/schemas/Accepted"}
    schemas = OPENAPI["components"]["schemas"]
    assert schemas["Accepted"]["properties"]["warnings"]["items"] == {"$ref": "#/components/schemas/Issue"}
    # every success body a seller reads has its schema, each schema valid and every reference resolving
    for path, method in (("/v1/messages/{guid}", "get"), ("/v1/shipments", "get"),
                         ("/v1/shipments/{ebpCode}/{orderNo}", "get"), ("/v1/rejections", "get"),
                         ("/v1/rejections/{id}", "get"), ("/v1/receipts/unmatched", "get"),
                         ("/v1/receipts/unmatched/{id}/close", "post"), ("/v1/payment-data/questions", "get"),
                         ("/v1/payment-data/questions/{id}/close", "post")):  # fmt: skip
        ok = paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].removeprefix("#/components/schemas/") in schemas, path
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(OPENAPI)))
    assert refs <= set(schemas), refs - set(schemas)
    keyed = [op for item in paths.values() for op in item.values() if op.get("security") != []]
    assert keyed and all("503" in op["responses"] for op in keyed)


def test_the_openapi_document_describes_each_webhook_a_seller_receives() -> None:
    """A seller generating its receiver from /openapi.json finds every event the gateway sends under ``webhooks``,
    with the body as sent (adapters.webhook.encode_event of the router's jobs) and the signature headers."""
    import jsonschema

    from adapters.webhook import encode_event
    from gateway.config import WebhookSettings
    from gateway.forward import (
        CHANGE_REFUSED_EVENT,
        DELIVERY_EVENTS,
        INVENTORY_EVENTS,
        RECONCILIATION_WEBHOOK_EVENT,
        WAREHOUSE_WEBHOOK_EVENT,
        WEBHOOK_EVENT,
        LegState,
        Router,
    )
    from gateway.openapi import OPENAPI

    hooks = OPENAPI["webhooks"]
    assert set(hooks) == {WEBHOOK_EVENT, WAREHOUSE_WEBHOOK_EVENT, *INVENTORY_EVENTS.values(), *DELIVERY_EVENTS.values(),
                          RECONCILIATION_WEBHOOK_EVENT, CHANGE_REFUSED_EVENT}  # fmt: skip
    assert all({p["name"] for p in h["post"]["parameters"]} == {"X-CBEC-Signature", "X-CBEC-Timestamp",
                                                                "X-CBEC-Event", "X-CBEC-Delivery"}
               for h in hooks.values())  # fmt: skip
    router = Router({"webhook": "webhook"}, webhooks=(WebhookSettings("s", frozenset({"E"}), "http://h", "k"),),
                    webhook_endpoint="webhook")  # fmt: skip
    common = {"ebp_code": "P", "order_no": "O", "parties": ["E"]}
    released = LegState("inventory", "receipted", "800", 100, "放行", "20261207140814519", "CEB621", "G")
    jobs = [*router.webhook_jobs(**common, previous=None, status="declared", info=None, event_id="1", leg=None,
                                 changed_at="2026-12-07T06:08:06.123456+00:00"),
            *router.webhook_jobs(**common, previous="accepted", status="released", info="放行", event_id="4",
                                 leg=released, changed_at="2026-12-07T06:08:15.002+00:00"),
            *router.warehouse_webhook_jobs(**common, event_id="2", order={
                "orderId": "A", "warehouseOrderNo": "W1", "direction": "outbound", "status": "shipped",
                "previous": "accepted", "reason": None, "occurredAt": "2026-12-07T14:08:06+08:00"}),
            *router.change_refused_webhook_jobs(**common, document={
                "kind": "payment", "messageType": "CEB411", "guid": "G", "appType": "2",
                "customs": {"code": "-401006", "name": None, "info": "x", "time": "20261207140814519"}}),
            *router.inventory_webhook_jobs(**common, kind="cancel", outcome="refused", document={
                "messageType": "CEB623", "guid": "G", "invtNo": "51412026I000000002", "reason": "买家取消",
                "customs": {"code": "100", "name": "rejected by customs", "info": "x", "time": "20261207140814519"},
                "warehouseOrders": []}),
            *(job for outcome in DELIVERY_EVENTS for job in router.delivery_webhook_jobs(
                **common, outcome=outcome, event_id="4", document={
                    "messageType": "CEB623", "guid": "G", "messageGuid": "M", "kind": "cancel", "appType": "1",
                    "customsStatus": "released", **({"error": "TransientError: HTTP 503"} if outcome == "failed"
                                                    else {})})),
            *router.reconciliation_webhook_jobs(**common, state="mismatched", previous=None, missing=["waybill"],
                event_id="3", findings=[{"code": "recon.buyer_payer_mismatch", "field": "buyerIdNumber",
                    "message": "x", "blocking": True,
                    "left": {"doc": "CEB311", "guid": "O", "path": "/o", "value": "110105199409168321"},
                    "right": {"doc": "CEB411", "guid": "P", "path": "/p", "value": "110105199409168322"}}],
                documents=[{"message_type": "CEB311", "doc_guid": "O", "parties": ["E"]},
                           {"message_type": "CEB411", "doc_guid": "P", "parties": ["PAY"]}])]  # fmt: skip
    assert jobs[-1].payload["data"]["findings"][0]["right"]["withheld"]  # the other side as the seller sees it
    for job in jobs:
        body = json.loads(encode_event("D", job.payload["event"], job.payload["data"], 1796623682))
        schema = hooks[job.payload["event"]]["post"]["requestBody"]["content"]["application/json"]["schema"]
        jsonschema.validate(body, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**body, "event": "shipment.other"}, schema)


async def test_livez_answers_while_the_database_is_away_and_healthz_says_so(pg_dsn: str) -> None:
    """A supervisor probes /livez for liveness (restarting the gateway would not bring PostgreSQL back) and /healthz
    for readiness: with the database gone, the first still answers 200, the second 503, and the API 503 with
    Retry-After, never a 500."""
    async with fresh_database(pg_dsn) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
        try:
            async with serving(create_app(apiutil.test_settings(), pool, signer=sign_as_agent)) as api:
                for path in ("/livez", "/healthz"):
                    reply = await api.get(path, key=None)
                    assert (reply.status, reply.body["status"]) == (200, "ok"), (path, reply.body)
                assert (await api.get("/livez", key=None)).body["process"] == os.getpid()
                await pool.expire_connections()
                await drop_database(pg_dsn, dsn.rsplit("/", 1)[1])  # the database is gone, and its sessions
                assert (await api.get("/livez", key=None)).status == 200
                health = await api.get("/healthz", key=None)
                assert (health.status, health.body["status"]) == (503, "unavailable"), health.body
                shipments = await api.get("/v1/shipments")
                assert shipments.status == 503 and shipments.headers["Retry-After"] == "5", shipments.body
        finally:
            await pool.close()


async def test_a_database_that_takes_no_connections_is_away_not_a_500(pg_dsn: str) -> None:
    """ALLOW_CONNECTIONS false (a restore, a maintenance): PostgreSQL answers 55000 at connect, which was an unhandled
    error — a 500 a client does not send again — where it is the database away: 503 with Retry-After; nothing stored,
    and the same message taken once the database takes connections again."""
    async with fresh_database(pg_dsn) as dsn:
        name = dsn.rsplit("/", 1)[1]
        pool = await db.create_pool(dsn, min_size=0, max_size=2)
        admin = await asyncpg.connect(pg_dsn)
        xml = legs(new_shipment(61))["CEB311"]
        try:
            async with serving(create_app(apiutil.test_settings(), pool, signer=sign_as_agent)) as api:
                await pool.expire_connections()
                await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
                await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
                refused = await api.post_xml(xml)
                assert refused.status == 503 and refused.headers["Retry-After"] == "5", refused.body
                await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
                assert (await api.post_xml(xml)).status == 202
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            await admin.close()
            await pool.close()


async def test_nul_characters_in_paths_and_queries_are_refused(api: Client) -> None:
    """PostgreSQL text holds no NUL: a path or query carrying one is the client's error (400), not a 500."""
    for path in ("/v1/messages/a%00b", "/v1/shipments/EBP%00/ORDER", "/v1/shipments?ebpCode=a%00b",
                 "/v1/queue/dead?endpoint=%00", "/ops/api/shipment?ebpCode=%00&orderNo=x"):  # fmt: skip
        reply = await api.get(path)
        assert reply.status == 400 and "NUL" in reply.body["error"]["title"], (path, reply)
    replay = await api.request("POST", "/v1/queue/replay", json_body={"endpoint": "customs\x00"})
    assert replay.status == 400


async def _raw_exchange(api: Client, request: bytes) -> bytes:
    host, port = api.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_odd_queries_bodies_and_header_bytes_are_client_errors(api: Client) -> None:
    """Times beyond what PostgreSQL holds, a forged cursor, absurdly nested JSON, header bytes that are not UTF-8:
    each a 4xx with the error shape, never a 500."""
    far_cursor = base64.urlsafe_b64encode(json.dumps(["2024-01-01T00:00:00+00:00", 10**30]).encode()).decode()
    for query in ("since=0001-01-01T00:00:00%2B01:00", "until=9999-12-31T23:59:59-01:00", f"cursor={far_cursor}",
                  "since=yesterday"):  # fmt: skip
        reply = await api.get("/v1/shipments?" + query)  # the console's list: test_console
        assert reply.status == 400 and reply.body["error"]["title"], (query, reply)
    for query in ("limit=abc", "limit=1e3", "limit=" + "9" * 40, "limit=--5", "limit=%2B-3"):
        reply = await api.get("/v1/shipments?" + query)
        assert reply.status == 400 and "limit must be an integer" in reply.body["error"]["title"], (query, reply)
    for query in ("limit=0", "limit=-1"):
        reply = await api.get("/v1/shipments?" + query)
        assert reply.status == 400 and "a page holds 1 to 500 items" in reply.body["error"]["title"], (query, reply)
    assert (await api.get("/v1/queue/dead?offset=-1")).status == 400
    empty = await api.request("POST", "/v1/messages", data=b" ", content_type="application/json")
    assert empty.status == 400 and empty.body["error"]["issues"][0]["code"] == "parse.empty"
    nested = b"[" * 100_000 + b"]" * 100_000
    reply = await api.request("POST", "/v1/queue/replay", data=nested, content_type="application/json")
    assert reply.status == 400, reply
    for header in (b"X-API-Key: \xff\xfe", b"Authorization: Bearer \xff"):
        answer = await _raw_exchange(api, b"GET /v1/shipments HTTP/1.1\r\nHost: x\r\n" + header
                                     + b"\r\nConnection: close\r\n\r\n")  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    for path in (b"/ops/api/summary", b"/ops", b"/ops/login"):
        answer = await _raw_exchange(api, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nCookie: cbec_ops=\xc3\x28abc\r\n"
                                     b"Connection: close\r\n\r\n")  # fmt: skip
        assert not answer.startswith(b"HTTP/1.1 5"), (path, answer[:200])


async def test_every_answer_carries_a_request_id(api: Client) -> None:
    """A new id of 32 hex digits per request unless the client sent its own, which is echoed."""
    ids = [(await api.get("/healthz", key=None)).headers["X-Request-Id"] for _ in range(3)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and len(set(ids)) == 3, ids
    async with api.session.get(api.base + "/v1/shipments", headers={"X-Request-Id": "trace-42"}) as resp:
        assert resp.status == 401 and resp.headers["X-Request-Id"] == "trace-42"


async def test_signatures_are_verified_when_configured_but_not_the_gateways_own(db_pool: Any) -> None:
    """verify_signatures: a signed XML message altered after signing is a 422 naming the signature check; a JSON
    inventory, which the gateway signs itself, is not verified again (its key need not be pinned)."""
    import aiohttp
    from aiohttp import web

    from gateway.api import create_app
    from tests.apiutil import test_settings

    app = create_app(test_settings(verify_signatures=True), db_pool, signer=sign_as_agent)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            api = Client(session, f"http://127.0.0.1:{port}")
            s = new_shipment(40)
            signed = legs(s)["CEB621"]
            tampered = signed.replace(b"</ceb:buyerName>", "甲</ceb:buyerName>".encode(), 1)
            reply = await api.post_xml(tampered)
            assert reply.status == 422, reply.body
            assert [i["code"] for i in reply.body["error"]["issues"]] == ["signature.digest_mismatch"]
            assert (await api.post_xml(signed)).status == 202
            other = new_shipment(41).inventory
            assert (await api.request("POST", "/v1/messages", json_body=json.loads(json.dumps(other, default=str)))
                    ).status == 202  # fmt: skip
    finally:
        await runner.cleanup()


async def test_export_messages_are_taken_in_as_xml_and_their_receipts_applied(api: Client, db_pool: Any) -> None:
    """Export messages (spec §4): the four legs of a 9610 export shipment taken in as XML, reconciled into a shipment
    of flow export; its receipts (CEB304/404/506/604/606) applied at POST /v1/receipts by the keys of spec §5.1; an
    export receipt posted as a message is only recorded."""
    samples_dir = Path(__file__).parent / "data" / "samples"
    xmls = {c: (samples_dir / f"{c}-9610.xml").read_bytes() for c in ("CEB303", "CEB403", "CEB505", "CEB603")}
    for code in ("CEB603", "CEB505", "CEB403", "CEB303"):
        reply = await api.post_xml(xmls[code])
        assert reply.status == 202, (code, reply.body)
    assert reply.body["documents"][0]["shipment"]["flow"] == "export"
    assert reply.body["documents"][0]["shipment"]["state"] == "matched"
    order = reply.body["documents"][0]["keys"]
    path = f"/v1/shipments/{order['ebpCode']}/{order['orderNo']}"
    body = (await api.get(path)).body
    assert (body["flow"], body["state"], body["mode"], body["customs_status"]) == ("export", "matched", "9610",
                                                                                     "pending")  # fmt: skip
    docs = {d["kind"]: d for d in body["documents"]}
    assert [i["orderNo"] for i in (await api.get("/v1/shipments?flow=export")).body["items"]] == [order["orderNo"]]
    assert (await api.get("/v1/shipments?flow=import")).body["items"] == []
    assert (await api.get("/v1/shipments?flow=both")).status == 400
    # the receipts, by their keys: 304 (ebpCode, orderNo), 404 (ebcCode, orderNo), 506 (logisticsCode, logisticsNo)
    heads = {c: docs[k]["head"] for c, k in (("CEB303", "order"), ("CEB403", "payment"), ("CEB505", "waybill"),
                                             ("CEB603", "inventory"))}  # fmt: skip
    when = "20261120160000000"
    answers = [
        ("CEB304", {"guid": heads["CEB303"]["guid"], "ebpCode": order["ebpCode"], "ebcCode": heads["CEB303"]["ebcCode"],
                    "orderNo": order["orderNo"]}),
        ("CEB404", {"guid": heads["CEB403"]["guid"], "ebcCode": heads["CEB403"]["ebcCode"],
                    "orderNo": order["orderNo"]}),
        ("CEB506", {"guid": heads["CEB505"]["guid"], "logisticsCode": heads["CEB505"]["logisticsCode"],
                    "logisticsNo": heads["CEB505"]["logisticsNo"]}),
    ]  # fmt: skip
    for code, values in answers:
        xml = build_receipt(code, {**values, "returnStatus": "120", "returnTime": when, "returnInfo": "ok"})
        reply = await api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
        assert reply.status == 200, (code, reply.body)
        assert [r["outcome"] for r in reply.body["receipts"]] == ["applied"], (code, reply.body)
    body = (await api.get(path)).body
    assert {d["kind"]: d["customs"]["code"] for d in body["documents"] if d["kind"] != "inventory"} == dict.fromkeys(
        ("order", "payment", "waybill"), "120")
    inv = heads["CEB603"]
    xml = build_receipt("CEB604", {
        "guid": inv["guid"], "agentCode": inv["agentCode"], "copNo": inv["copNo"], "preNo": "B20261120000000001",
        "invtNo": "64012026E000000001", "ebcCode": inv["ebcCode"], "ebpCode": inv["ebpCode"],
        "orderNo": inv["orderNo"], "statisticsFlag": inv["statisticsFlag"], "returnStatus": "800",
        "returnTime": when, "returnInfo": "放行"})  # fmt: skip
    reply = await api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
    assert [r["outcome"] for r in reply.body["receipts"]] == ["applied"], reply.body
    body = (await api.get(path)).body
    docs = {d["kind"]: d for d in body["documents"]}
    assert (body["customs_status"], docs["inventory"]["invt_no"]) == ("released", "64012026E000000001")
    # an export cancellation, and its receipt by (agentCode, copNo)
    cancel = export_cancel(inv, "64012026E000000001")
    reply = await api.post_xml(cancel)
    assert reply.status == 202 and reply.body["documents"][0]["kind"] == "cancel", reply.body
    xml = build_receipt("CEB606", {"guid": "C" * 36, "agentCode": inv["agentCode"], "copNo": "CANCEL-1",
                                   "preNo": "B20261120000000002", "invtNo": "64012026E000000001",
                                   "returnStatus": "399", "returnTime": when, "returnInfo": "撤销审结"})  # fmt: skip
    reply = await api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
    assert [r["outcome"] for r in reply.body["receipts"]] == ["applied"], reply.body
    # an export receipt posted as a message is a record, applied to nothing
    reply = await api.post_xml((Path(__file__).parent / "data" / "schema" / "CEB304Message.xml").read_bytes())
    assert reply.status == 202 and reply.body["documents"][0]["outcome"] == "recorded"
    assert await db_pool.fetchval("SELECT count(*) FROM rejected_messages WHERE message_type LIKE 'CEB3%'") == 0


async def test_an_export_shipment_sent_as_json_is_reconciled_matched(api: Client) -> None:
    """A 9610 export parcel with every leg posted as JSON, document guid, appTime, appType and appStatus left to the
    gateway: rendered in the export schema's order, the inventory signed by the gateway, reconciled into a matched
    export shipment like the same legs sent as XML; a retry is a replay; the cancellation is taken as JSON too."""
    s = samples.export_shipment(random.Random(31), mode="9610", n_items=2)
    bodies: dict[str, dict[str, Any]] = {}
    for code, payload in reversed(s.payloads().items()):  # inventory first: the legs come in any order
        body = json.loads(json.dumps(payload, default=str))
        for name in ("guid", "appTime", "appType", "appStatus"):
            del body["documents"][0][name]
        bodies[code] = body
        reply = await api.request("POST", "/v1/messages", json_body=body)
        assert reply.status == 202, (code, reply.body)
        assert (reply.body["message_type"], reply.body["documents"][0]["outcome"]) == (code, "accepted")
    shipment = reply.body["documents"][0]["shipment"]
    assert (shipment["flow"], shipment["state"]) == ("export", "matched"), shipment
    order = s.order_doc
    found = (await api.get(f"/v1/shipments/{order['ebpCode']}/{order['orderNo']}")).body
    assert (found["flow"], found["state"], found["mode"]) == ("export", "matched", "9610")
    assert [f for f in found["findings"] if f["blocking"]] == [] and found["missing"] == []
    raw = (await api.get(f"/v1/messages/{s.inventory['guid']}")).body["raw_xml"]
    # the gateway's signature, where the export schema puts it (spec §2.2); quantities before units (§4.3)
    assert raw.index("</ceb:BaseTransfer>") < raw.index("<ds:Signature") and "ExtendMessage" not in raw
    assert raw.index("<ceb:qty1>") < raw.index("<ceb:unit>")
    again = await api.request("POST", "/v1/messages", json_body=bodies["CEB603"])
    assert again.status == 202 and again.headers.get("Idempotent-Replay") == "true"
    # customs' CEB604 gives the inventory its invtNo; the cancellation that names it comes as JSON
    inv = next(d for d in found["documents"] if d["kind"] == "inventory")["head"]
    invt_no = "51412026E000000031"
    xml = build_receipt("CEB604", {
        "guid": inv["guid"], "agentCode": inv["agentCode"], "copNo": inv["copNo"], "preNo": "B20261120000000031",
        "invtNo": invt_no, "ebcCode": inv["ebcCode"], "ebpCode": inv["ebpCode"], "orderNo": inv["orderNo"],
        "statisticsFlag": inv["statisticsFlag"], "returnStatus": "800", "returnTime": "20261120160000000",
        "returnInfo": "放行"})  # fmt: skip
    reply = await api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
    assert [r["outcome"] for r in reply.body["receipts"]] == ["applied"], reply.body
    cancel = {"type": "CEB605", "baseTransfer": bodies["CEB603"]["baseTransfer"],
              "documents": [{"customsCode": inv["customsCode"], "copNo": "CANCEL-31", "invtNo": invt_no,
                             "reason": "买家取消订单", "agentCode": inv["agentCode"], "agentName": inv["agentName"],
                             "ebcCode": inv["ebcCode"], "ebcName": inv["ebcName"]}]}  # fmt: skip
    reply = await api.request("POST", "/v1/messages", json_body=cancel)
    assert reply.status == 202 and reply.body["documents"][0]["kind"] == "cancel", reply.body
    assert "<ds:Signature" in (await api.get(f"/v1/messages/{reply.body['guid']}")).body["raw_xml"]


async def test_an_export_order_type_its_inventory_s_trade_mode_does_not_take_is_a_shipment_warning(
    api: Client,
) -> None:
    """A B2B order (orderType B) with a 9610 (retail) inventory: both taken, the shipment matched, and the warning
    recon.order_type_trade_mode in the 202 answer's shipment findings (not blocking) and on the shipment."""
    s = samples.export_shipment(random.Random(32), mode="9610")
    payloads = s.payloads()
    order = _with(payloads["CEB303"], orderType="B")
    for body in (order, *(json.loads(json.dumps(p, default=str)) for c, p in payloads.items() if c != "CEB303")):
        reply = await api.request("POST", "/v1/messages", json_body=body)
        assert reply.status == 202 and "warnings" not in reply.body, reply.body  # no rule of one message says it
    [shipment] = reply.body["shipments"]
    assert shipment["state"] == "matched", shipment
    assert [(f["code"], f["blocking"], f["left"]["value"], f["right"]["value"]) for f in shipment["findings"]] == [
        ("recon.order_type_trade_mode", False, "B", "9610")]
    found = (await api.get(f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}")).body
    assert [f["code"] for f in found["findings"]] == ["recon.order_type_trade_mode"]


async def test_an_export_json_message_is_answered_at_json_pointers(api: Client) -> None:
    """Shape errors of an export payload point into the JSON; what the rules find once rendered points at the XML,
    as for import."""
    s = samples.export_shipment(random.Random(32), n_items=2)
    inventory = json.loads(json.dumps(s.inventory, default=str))
    inventory["documents"][0]["items"][1]["tradeCountry"] = "502"  # an import inventory line's field
    inventory["documents"][0]["buyerName"] = "张三"  # nor has an export inventory a buyer
    inventory["documents"][0]["freight"] = True
    reply = await api.request("POST", "/v1/messages", json_body=inventory)
    assert reply.status == 422, reply.body
    assert {(i["code"], i["path"]) for i in reply.body["error"]["issues"]} == {
        ("json.unknown_field", "/documents/0/items/1/tradeCountry"), ("json.unknown_field", "/documents/0/buyerName"),
        ("json.invalid_type", "/documents/0/freight")}  # fmt: skip
    waybill = json.loads(json.dumps(s.waybill, default=str))
    waybill["documents"][0]["items"] = [{"gnum": 1}]  # a waybill has no lines
    reply = await api.request("POST", "/v1/messages", json_body=waybill)
    assert [(i["code"], i["path"]) for i in reply.body["error"]["issues"]] == [("json.unknown_field",
                                                                                 "/documents/0/items")]  # fmt: skip
    inventory = json.loads(json.dumps(s.inventory, default=str))
    inventory["documents"][0]["ieFlag"] = "I"
    reply = await api.request("POST", "/v1/messages", json_body=inventory)
    assert reply.status == 422
    assert [(i["code"], i["path"]) for i in reply.body["error"]["issues"]] == [
        ("rule.ie_flag", "/CEB603Message/Inventory[1]/InventoryHead/ieFlag")]  # fmt: skip


def export_cancel(inventory: dict[str, str], invt_no: str) -> bytes:
    """A CEB605 for an export inventory (spec A.25), written in the export schema's order."""
    doc = {"guid": "D" * 36, "appType": "1", "appTime": "20261120170000", "appStatus": "2", "customsCode": "6401",
           "copNo": "CANCEL-1", "invtNo": invt_no, "reason": "买家取消", "agentCode": inventory["agentCode"],
           "agentName": inventory["agentName"], "ebcCode": inventory["ebcCode"], "ebcName": inventory["ebcName"]}
    payload = {"type": "CEB605", "guid": "E" * 36, "documents": [doc],
               "baseTransfer": {"copCode": inventory["agentCode"], "copName": inventory["agentName"], "dxpMode": "DXP",
                                "dxpId": "DXPENT0000000001"}}  # fmt: skip
    return render(payload, signer=sign_as_agent)




WAREHOUSE_KEY = "warehouse-key-" + "w" * 16


@contextlib.asynccontextmanager
async def _with_a_warehouse(db_pool: asyncpg.Pool, seed: int) -> AsyncIterator[tuple[Client, Any]]:
    """The API with a warehouse's key (WAREHOUSE_KEY, named wms) besides the usual ones, and the four legs of the
    shipment of ``seed`` accepted."""
    settings = apiutil.test_settings()
    settings = settings.with_overrides(api_keys=(*settings.api_keys, ApiKey("wms", WAREHOUSE_KEY, Role.WAREHOUSE)))
    async with serving(create_app(settings, db_pool, signer=sign_as_agent)) as api:
        s = new_shipment(seed)
        for xml in legs(s).values():
            assert (await api.post_xml(xml)).status == 202
        yield api, s


def _warehouse_callback(order_id: str, reference: dict[str, Any], status: str, minute: int, /,
                        **changes: Any) -> dict[str, Any]:  # fmt: skip
    """A callback of adapters/warehouse.py's contract at minute ``minute`` of an hour; ``changes`` replace fields."""
    return {"schema": "cbec.warehouse-callback.v1", "orderId": order_id, "warehouseOrderNo": "WH00000007",
            "direction": "outbound", "status": status, "reason": None, "reference": reference,
            "occurredAt": f"2026-12-06T10:{minute:02d}:00+08:00", "timestamp": 1796000000, **changes}  # fmt: skip


async def test_a_warehouse_reports_its_orders_and_the_shipment_shows_their_furthest_status(
    db_pool: asyncpg.Pool,
) -> None:
    """POST /v1/warehouse/callbacks (adapters/warehouse.py's contract), with a key of role warehouse: each callback is
    stored once and shown on the document its order was made from (the reference's messageType and guid), the order's
    status its furthest whatever order the callbacks came in; a repeat stores nothing; one naming no document the
    gateway holds is kept and says so; a bad one is a 422; a warehouse key does nothing else, and no other key but
    an admin's posts callbacks."""
    warehouse_key = WAREHOUSE_KEY
    async with _with_a_warehouse(db_pool, 41) as (api, s):
        inventory = s.inventory["documents"][0]
        reference = {"messageType": "CEB621", "guid": inventory["guid"], "orderNo": inventory["orderNo"],
                     "ebpCode": inventory["ebpCode"]}  # fmt: skip
        order_id = warehouse.order_id(s.inventory["guid"], 1)  # the gateway's order for the message's document 1

        async def callback(status: str, minute: int, key: str = warehouse_key, **changes: Any) -> apiutil.Reply:
            body = _warehouse_callback(order_id, reference, status, minute, **changes)
            return await api.request("POST", "/v1/warehouse/callbacks", key=key, json_body=body)

        shipped = await callback("shipped", 5)  # before its "accepted": out of order
        assert shipped.status == 200, shipped.body
        assert shipped.body == {"order_id": order_id, "stored": True, "linked": True, "status": "shipped"}
        accepted = await callback("accepted", 1)
        assert accepted.body["stored"] and accepted.body["status"] == "shipped"
        again = await callback("accepted", 1)
        assert (again.status, again.body["stored"], again.body["status"]) == (200, False, "shipped")

        view = await shipment_state(api, s)
        [doc] = [d for d in view["documents"] if d["message_type"] == "CEB621"]
        [order] = doc["warehouse_orders"]
        assert (order["order_id"], order["warehouse_order_no"], order["status"]) == (order_id, "WH00000007", "shipped")
        assert [e["status"] for e in order["events"]] == ["shipped", "accepted"]
        assert all(not d["warehouse_orders"] for d in view["documents"] if d["message_type"] != "CEB621")
        message = await api.get(f"/v1/messages/{s.inventory['guid']}")  # and on the message's own view
        assert [o["status"] for o in message.body["documents"][0]["warehouse_orders"]] == ["shipped"]

        stray = await callback("accepted", 2, orderId="ORDER-X", reference={"messageType": "CEB621", "guid": "nope"})
        assert (stray.status, stray.body["stored"], stray.body["linked"]) == (200, True, False)
        # an order the gateway did not make from that document names it in vain: kept, shown nowhere
        foreign = await callback("delivered", 4, orderId=warehouse.order_id(s.order["guid"], 1))
        assert (foreign.status, foreign.body["stored"], foreign.body["linked"]) == (200, True, False)
        bad = await callback("lost", 3)
        assert bad.status == 422 and bad.body["error"]["issues"][0]["code"] == "warehouse.bad_callback"
        assert "status 'lost'" in bad.body["error"]["issues"][0]["message"]
        assert (await callback("delivered", 9, key=PLATFORM_A)).status == 403
        assert (await callback("delivered", 9, key=OPERATOR)).status == 403
        assert (await api.get("/v1/shipments", key=warehouse_key)).status == 403
        assert (await api.post_xml(legs(s)["CEB311"], key=warehouse_key)).status == 403
        too_big = await api.request("POST", "/v1/warehouse/callbacks", key=warehouse_key, data=b"{" + b" " * 70000,
                                    content_type="application/json")  # fmt: skip
        assert too_big.status == 413
        assert await db_pool.fetchval("SELECT count(*) FROM warehouse_events") == 4
        scraped = (await api.get("/metrics")).body.decode()
        counted = {line.split("{")[1].split("}")[0]: float(line.split()[-1]) for line in scraped.splitlines()
                   if line.startswith("cbec_warehouse_callbacks_total{")}  # fmt: skip
        assert counted == {'linked="true",status="shipped"': 1, 'linked="true",status="accepted"': 1,
                           'linked="false",status="accepted"': 1, 'linked="false",status="delivered"': 1}  # fmt: skip


async def test_operators_list_the_warehouse_callbacks_no_shipment_shows(db_pool: asyncpg.Pool) -> None:
    """GET /v1/warehouse/callbacks (operator and admin keys): every callback as it came, newest first, in keyset pages;
    linked=false those placed on no document, each saying why — its reference names no document the gateway holds, or
    one whose order the gateway gave another orderId; filters by warehouse key, orderId, status and time; a bad filter
    is a 400, and no other key lists them."""
    async with _with_a_warehouse(db_pool, 42) as (api, s):
        ours = warehouse.order_id(s.inventory["guid"], 1)
        held = {"messageType": "CEB621", "guid": s.inventory["documents"][0]["guid"]}
        sent = [
            (ours, held, "accepted", 1),  # linked
            ("ORDER-X", {"messageType": "CEB621", "guid": "nope"}, "accepted", 2),  # a reference the gateway lacks
            (warehouse.order_id(s.order["guid"], 1), held, "delivered", 3),  # a document held, another orderId
            (ours, held, "shipped", 4),  # linked
        ]
        for order_id, reference, status, minute in sent:
            body = _warehouse_callback(order_id, reference, status, minute)
            assert (await api.request("POST", "/v1/warehouse/callbacks", key=WAREHOUSE_KEY, json_body=body)).status \
                == 200

        every = await api.get("/v1/warehouse/callbacks", key=OPERATOR)
        assert every.status == 200, every.body
        assert [(c["order_id"], c["status"], c["linked"]) for c in every.body["items"]] == [
            (ours, "shipped", True), (sent[2][0], "delivered", False), ("ORDER-X", "accepted", False),
            (ours, "accepted", True)]  # fmt: skip
        assert every.body["next_cursor"] is None

        unlinked = (await api.get("/v1/warehouse/callbacks?linked=false", key=OPERATOR)).body["items"]
        assert [(c["order_id"], c["unlinked_because"]) for c in unlinked] == [
            (sent[2][0], "order_id_not_ours"), ("ORDER-X", "unknown_reference")]  # fmt: skip
        assert unlinked[1]["reference"] == {"messageType": "CEB621", "guid": "nope"}
        assert (unlinked[1]["submitter"], unlinked[1]["warehouse_order_no"], unlinked[1]["direction"]) == (
            "wms", "WH00000007", "outbound")  # fmt: skip
        assert unlinked[1]["occurred_at"] == "2026-12-06T10:02:00+08:00"
        linked = (await api.get("/v1/warehouse/callbacks?linked=true", key=ADMIN)).body["items"]
        assert [(c["status"], c["unlinked_because"]) for c in linked] == [("shipped", None), ("accepted", None)]
        # a linked one names the shipment of the document its order was made from; an unlinked one none
        assert {(c["ebpCode"], c["orderNo"]) for c in linked} == {(s.order_doc["ebpCode"], s.order_doc["orderNo"])}
        assert {(c["ebpCode"], c["orderNo"]) for c in unlinked} == {(None, None)}

        first = await api.get("/v1/warehouse/callbacks?limit=3", key=OPERATOR)
        assert len(first.body["items"]) == 3 and first.body["next_cursor"]
        rest = await api.get(f"/v1/warehouse/callbacks?limit=3&cursor={first.body['next_cursor']}", key=OPERATOR)
        assert [c["id"] for c in first.body["items"] + rest.body["items"]] == [c["id"] for c in every.body["items"]]
        for query, expected in (("order_id=ORDER-X", ["ORDER-X"]), ("status=shipped", [ours]),
                                ("status=shipped,delivered", [ours, sent[2][0]]),
                                ("submitter=wms&status=delivered", [sent[2][0]]), ("submitter=other", []),
                                ("since=2999-01-01T00:00:00Z", []), ("until=2999-01-01T00:00:00Z", [c[0] for c in
                                                                                                    sent[::-1]])):
            page = await api.get(f"/v1/warehouse/callbacks?{query}", key=OPERATOR)
            assert [c["order_id"] for c in page.body["items"]] == expected, query

        for query in ("linked=maybe", "status=lost", "status=shipped,lost", "cursor=abc", "since=yesterday", "limit=x"):
            bad = await api.get(f"/v1/warehouse/callbacks?{query}", key=OPERATOR)
            assert bad.status == 400, query
        assert "linked must be true or false" in (await api.get("/v1/warehouse/callbacks?linked=maybe",
                                                                key=OPERATOR)).body["error"]["title"]  # fmt: skip
        for key in (PLATFORM_A, WAREHOUSE_KEY):
            assert (await api.get("/v1/warehouse/callbacks", key=key)).status == 403
        assert (await api.get("/v1/warehouse/callbacks", key=None)).status == 401


async def test_a_seller_downloads_its_shipments_as_csv_with_the_lists_filters(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/shipments.csv: every shipment GET /v1/shipments lists with the same filters and key — all its pages,
    read a page at a time — as a CSV a spreadsheet opens as UTF-8: the list's fields, the findings as code and
    message. Another tenant's key gets the header alone; a bad filter is a 400, no key a 401."""
    import csv
    import io

    from gateway import csvexport

    monkeypatch.setattr(csvexport, "PAGE", 1)  # three shipments: three pages
    matched, broken, lone = new_shipment(61), samples.broken(new_shipment(62), "amount_mismatch"), new_shipment(63)
    for s in (matched, broken):  # the four companies' legs (the platform's key holds its own codes only)
        for xml in legs(s).values():
            assert (await api.post_xml(xml)).status == 202
    assert (await api.post_xml(legs(lone)["CEB311"], key=PLATFORM_A)).status == 202

    async def download(key: str, **params: str) -> tuple[int, bytes, Any]:
        async with api.session.get(api.base + "/v1/shipments.csv", params=params,
                                   headers={"X-API-Key": key}) as resp:  # fmt: skip
            return resp.status, await resp.read(), resp.headers

    status, raw, headers = await download(PLATFORM_A)
    assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
    assert headers["Content-Disposition"].startswith('attachment; filename="shipments-')
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    listed = (await api.get("/v1/shipments", key=PLATFORM_A)).body["items"]
    assert [r["orderNo"] for r in rows] == [i["orderNo"] for i in listed]  # newest first, as the list
    assert len(rows) == 3
    [bad] = [r for r in rows if r["orderNo"] == broken.order_doc["orderNo"]]
    assert bad["state"] == "mismatched" and bad["findings"].startswith("recon.amount_paid_mismatch: ")
    [incomplete] = [r for r in rows if r["orderNo"] == lone.order_doc["orderNo"]]
    assert (incomplete["state"], incomplete["missing"]) == ("incomplete", "payment waybill inventory")
    _, only, _ = await download(PLATFORM_A, state="matched")
    assert [r["orderNo"] for r in csv.DictReader(io.StringIO(only.decode("utf-8-sig")))] == [
        matched.order_doc["orderNo"]]
    status, none, _ = await download(STRANGER)
    assert status == 200 and none.decode("utf-8-sig").splitlines() == [",".join(SHIPMENT_CSV_COLUMNS)]
    assert (await download(PLATFORM_A, state="lost"))[0] == 400
    assert (await api.get("/v1/shipments.csv", key=None)).status == 401


async def test_the_queue_figures_name_the_sellers_whose_webhooks_are_paused(
    routed: Client, db_pool: asyncpg.Pool
) -> None:
    """A seller whose webhook URL keeps failing has its events put back untried (adapters/webhook.py): GET /v1/queue
    names it under the webhook endpoint with how many of its events wait, and /metrics counts them — read off the
    queue, so a dedicated cbec worker's pauses show too. A seller merely failing (not paused) is not named."""
    async with db_pool.acquire() as conn, conn.transaction():
        for n, (seller, error) in enumerate([("S1", "Deferred: seller S1's webhook URL is paused"),
                                             ("S1", "Deferred: seller S1's webhook URL is paused"),
                                             ("S2", "SellerUnreachable: seller S2: 503")]):  # fmt: skip
            job = await cbec_queue.enqueue(conn, endpoint="webhook", kind="webhook",
                                           payload={"seller": seller, "event": "e", "n": n})  # fmt: skip
            await conn.execute("UPDATE jobs SET last_error = $2 WHERE id = $1", job, error)
    queue = await routed.get("/v1/queue", key=OPERATOR)
    [webhook] = [e for e in queue.body["endpoints"] if e["endpoint"] == "webhook"]
    assert webhook["paused_sellers"] == [{"seller": "S1", "waiting": 2}]
    assert all("paused_sellers" not in e for e in queue.body["endpoints"] if e["endpoint"] != "webhook")
    metrics = (await routed.get("/metrics")).body.decode()
    assert 'cbec_webhook_seller_paused_events{endpoint="webhook",seller="S1"} 2.0' in metrics
    assert 'seller="S2"' not in metrics


async def test_receipts_kept_unmatched_are_listed_and_counted_until_they_find_their_document(api: Client) -> None:
    """Customs' word on a document the gateway does not hold was a log line: GET /v1/receipts/unmatched lists it
    (operators: newest first, by type, a page at a time) and /metrics counts it by type, until it finds its document
    (delivered again once the order was declared) and leaves both."""
    from prometheus_client.parser import text_string_to_metric_families

    s = new_shipment(71)
    order = s.order["documents"][0]
    early = build_receipt("CEB312", {"guid": order["guid"], "ebpCode": order["ebpCode"], "ebcCode": order["ebcCode"],
                                     "orderNo": order["orderNo"], "returnStatus": "2",
                                     "returnTime": "20260101120000001", "returnInfo": "申报中"})  # fmt: skip
    stranger = build_receipt("CEB412", {"guid": "F" * 36, "payCode": "X", "payTransactionId": "nobody",
                                        "returnStatus": "2", "returnTime": "20260101120000002", "returnInfo": "?"})
    for xml in (early, stranger):
        reply = await api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
        assert [r["outcome"] for r in reply.body["receipts"]] == ["unmatched"], reply.body

    async def unmatched(query: str = "") -> Any:
        reply = await api.get(f"/v1/receipts/unmatched{query}", key=OPERATOR)
        assert reply.status == 200, reply.body
        return reply.body

    async def counted() -> dict[str, float]:
        async with api.session.get(api.base + "/metrics") as resp:
            text = await resp.text()
        return {s.labels["message_type"]: s.value for f in text_string_to_metric_families(text)
                if f.name == "cbec_receipts_unmatched" for s in f.samples}  # fmt: skip

    page = await unmatched("?limit=1")
    [newest] = page["items"]
    assert (newest["message_type"], newest["keys"]["payTransactionId"], newest["return_info"]) == ("CEB412",
                                                                                                  "nobody", "?")
    rest = await unmatched(f"?limit=1&cursor={page['next_cursor']}")
    assert [r["message_type"] for r in rest["items"]] == ["CEB312"] and rest["next_cursor"] is None
    assert [r["keys"]["orderNo"] for r in (await unmatched("?message_type=CEB312"))["items"]] == [order["orderNo"]]
    assert await counted() == {"CEB312": 1, "CEB412": 1}
    assert (await api.get("/v1/receipts/unmatched", key=PLATFORM_A)).status == 403
    assert (await api.get("/v1/receipts/unmatched?cursor=x", key=OPERATOR)).status == 400

    assert (await api.post_xml(legs(s)["CEB311"])).status == 202
    again = await api.request("POST", "/v1/receipts", data=early, content_type="application/xml")
    assert [r["outcome"] for r in again.body["receipts"]] == ["applied"], again.body
    assert [r["message_type"] for r in (await unmatched())["items"]] == ["CEB412"]
    assert await counted() == {"CEB412": 1}


async def test_an_unmatched_receipt_that_can_never_match_is_closed_and_counted_no_more(
    api: Client, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker keeps customs' word on applications filed elsewhere for good: an operator closes such a receipt with a
    short reason (POST /v1/receipts/unmatched/{id}/close). It leaves the open list and cbec_receipts_unmatched (the
    alert's figure), stays listed as closed with who closed it, when and why, durably and in the log; closing is
    refused for a receipt closed already, or matched, or unknown, a reason missing, empty, too long or of several lines,
    and a key not an operator's. Closed, it still links to its document should that come and customs deliver it
    again."""
    import structlog
    from prometheus_client.parser import text_string_to_metric_families
    from structlog.testing import capture_logs

    from gateway import store

    monkeypatch.setattr(store, "log", structlog.get_logger("gateway.store"))
    s = new_shipment(72)
    order = s.order["documents"][0]
    early = build_receipt("CEB312", {"guid": order["guid"], "ebpCode": order["ebpCode"], "ebcCode": order["ebcCode"],
                                     "orderNo": order["orderNo"], "returnStatus": "2",
                                     "returnTime": "20260101120000001", "returnInfo": "申报中"})  # fmt: skip
    elsewhere = build_receipt("CEB412", {"guid": "E" * 36, "payCode": "X", "payTransactionId": "filed-elsewhere",
                                         "returnStatus": "2", "returnTime": "20260101120000002", "returnInfo": "?"})
    for xml in (early, elsewhere):
        reply = await api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
        assert [r["outcome"] for r in reply.body["receipts"]] == ["unmatched"], reply.body
    ids = {"early" if item["message_type"] == "CEB312" else "elsewhere": item["id"]
           for item in (await api.get("/v1/receipts/unmatched", key=OPERATOR)).body["items"]}

    async def listed(state: str) -> list[int]:
        reply = await api.get(f"/v1/receipts/unmatched?state={state}", key=OPERATOR)
        assert reply.status == 200, reply.body
        apiutil.openapi_check(reply.body, "UnmatchedReceiptPage")
        return [r["id"] for r in reply.body["items"]]

    async def counted() -> dict[str, float]:
        async with api.session.get(api.base + "/metrics") as resp:
            text = await resp.text()
        return {s.labels["message_type"]: s.value for f in text_string_to_metric_families(text)
                if f.name == "cbec_receipts_unmatched" for s in f.samples}  # fmt: skip

    async def close(receipt: int | str, body: Any, key: str = OPERATOR) -> Any:
        return await api.request("POST", f"/v1/receipts/unmatched/{receipt}/close", key=key, json_body=body)

    path = f"/v1/receipts/unmatched/{ids['elsewhere']}/close"
    for bad in ({}, {"reason": ""}, {"reason": "   "}, {"reason": 7}, {"reason": "x" * 201},
                {"reason": "two\nlines"}, {"reason": "ok", "more": 1}, []):
        reply = await close(ids["elsewhere"], bad)
        assert reply.status == 400 and "bad body" in reply.body["error"]["title"], (bad, reply.body)
    reply = await api.request("POST", path, key=OPERATOR, data=b"not json", content_type="application/json")
    assert reply.status == 400, reply.body
    for key in (PLATFORM_A, STRANGER):
        assert (await close(ids["elsewhere"], {"reason": "r"}, key=key)).status == 403
    assert (await close(ids["elsewhere"], {"reason": "r"}, key=None)).status == 401
    assert await listed("closed") == [] and await counted() == {"CEB312": 1, "CEB412": 1}  # nothing above closed it

    with capture_logs() as logged:
        reply = await close(ids["elsewhere"], {"reason": "  a result of an application filed by another broker  "})
    assert reply.status == 200, reply.body
    apiutil.openapi_check(reply.body, "UnmatchedReceipt")
    closed = reply.body
    assert (closed["id"], closed["closed_by"], closed["close_reason"]) == (
        ids["elsewhere"], "operator", "a result of an application filed by another broker")
    assert closed["closed_at"] is not None and closed["keys"]["payTransactionId"] == "filed-elsewhere"
    [line] = [e for e in logged if e["event"] == "unmatched_receipt_closed"]
    assert (line["receipt_id"], line["closed_by"], line["message_type"]) == (ids["elsewhere"], "operator", "CEB412")
    async with db_pool.acquire() as conn:
        row = await conn.fetchrow("SELECT outcome, closed_at, closed_by, close_reason FROM receipts WHERE id = $1",
                                  ids["elsewhere"])  # fmt: skip
    assert row["outcome"] == "unmatched" and row["closed_by"] == "operator" and row["closed_at"] is not None

    assert await listed("open") == [ids["early"]]
    assert await listed("closed") == [ids["elsewhere"]]
    assert await listed("any") == [ids["elsewhere"], ids["early"]]
    [shown] = (await api.get("/v1/receipts/unmatched?state=closed", key=OPERATOR)).body["items"]
    assert shown == closed
    assert await counted() == {"CEB312": 1}  # the alert's figure: the closed one counts no more
    again = await close(ids["elsewhere"], {"reason": "twice"}, key=ADMIN)
    assert again.status == 409 and "by operator" in again.body["error"]["title"], again.body
    assert (await close(987654321, {"reason": "r"})).status == 404
    assert (await close("abc", {"reason": "r"})).status == 404
    assert (await api.get("/v1/receipts/unmatched?state=lost", key=OPERATOR)).status == 400
    # delivered again, still matching nothing: it stays closed
    reply = await api.request("POST", "/v1/receipts", data=elsewhere, content_type="application/xml")
    assert [r["outcome"] for r in reply.body["receipts"]] == ["unmatched"], reply.body
    assert await listed("closed") == [ids["elsewhere"]] and await listed("open") == [ids["early"]]

    # closed, then its document comes after all: customs' delivery again links it, as any unmatched receipt
    assert (await close(ids["early"], {"reason": "declared elsewhere, we think"}, key=ADMIN)).status == 200
    assert await counted() == {}
    assert (await api.post_xml(legs(s)["CEB311"])).status == 202
    linked = await api.request("POST", "/v1/receipts", data=early, content_type="application/xml")
    assert [r["outcome"] for r in linked.body["receipts"]] == ["applied"], linked.body
    assert await listed("any") == [ids["elsewhere"]]
    view = await shipment_state(api, s)
    assert view["documents"][0]["customs"]["code"] == "2", view["documents"][0]
    matched = await close(ids["early"], {"reason": "r"})
    assert matched.status == 409 and "outcome is applied" in matched.body["error"]["title"], matched.body


async def test_the_unmatched_receipts_statements_read_their_own_indexes(db_pool: asyncpg.Pool) -> None:
    """Every receipt ever kept is in one table: the open and the closed unmatched ones are each read through an index
    of their own (sql/470) — the list of either, or of both at once —, never by walking the receipts' ids; a close
    finds its receipt by its id."""
    from gateway import store
    from gateway.console import queries

    async def plan(conn: asyncpg.Connection, sql: str, args: str) -> str:
        await conn.execute(f"PREPARE plan_check AS {sql}")
        lines = [r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE plan_check({args})")]
        await conn.execute("DEALLOCATE plan_check")
        return "\n".join(lines)

    expected = {"open": {"receipts_unmatched_open_idx"}, "closed": {"receipts_unmatched_closed_idx"},
                "any": {"receipts_unmatched_open_idx", "receipts_unmatched_closed_idx"}}
    async with db_pool.acquire() as conn:
        await conn.execute("ANALYZE receipts")
        await conn.execute(db.BEGIN_PLANNED)
        try:
            for state, sql in queries.UNMATCHED_RECEIPTS.items():
                found = await plan(conn, sql, "100, 20, NULL")
                used = set(re.findall(r"Index (?:Only )?Scan(?: Backward)? using (\w+)", found))
                assert used == expected[state] and "Seq Scan" not in found, (state, found)
            found = await plan(conn, store.CLOSE_RECEIPT, "1, 'operator', 'why'")
            assert "Index Cond: (id = $1)" in found and "Seq Scan" not in found, found
        finally:
            await conn.execute("ROLLBACK")


async def test_a_key_claiming_to_be_a_site_learns_no_parcels_status_before_customs_takes_its_delivery(
    api: Client, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any key may declare a CEB711 with its own code as operatorCode and list whatever waybill numbers it likes: the
    gateway cannot tell a supervision site from a key guessing. Until customs has taken the delivery (a receipt that
    accepts it: customs knows the site and its B/L), a parcel of a shipment the key may not read shows neither whether
    the gateway holds its waybill nor its shipment's customs status — every line alike, so that a line the gateway
    holds cannot be told from one it never saw. Once taken, the site reads them; an operator always does."""
    from tests import siteutil

    s = new_shipment(48)
    for payload in (s.order, s.payment, s.waybill, s.inventory):
        assert (await api.post_xml(xml_of(payload), key=PLATFORM_A if payload is s.inventory else ADMIN)).status == 202
    await db_pool.execute("UPDATE shipments SET customs_status = 'released'")
    monkeypatch.setattr(siteutil, "OPERATOR_CODE", "9999999999")  # the stranger's own code: it may declare it
    held, unseen = str(s.waybill_doc["logisticsNo"]), "UNSEEN0000001"
    reply = await api.post_xml(siteutil.delivery_xml(s.waybill_doc["logisticsCode"], [held, unseen]), key=STRANGER)
    assert reply.status == 202, reply.body

    async def parcels(key: str) -> list[tuple[Any, ...]]:
        message = await api.get(f"/v1/messages/{reply.body['guid']}", key=key)
        assert message.status == 200, message.body
        apiutil.openapi_check(message.body, "Message")
        [delivery] = message.body["documents"]
        return [(p["logisticsNo"], p["waybill"], p["customs_status"], p["shipment"]) for p in delivery["parcels"]]

    assert await parcels(STRANGER) == [(held, None, None, None), (unseen, None, None, None)]
    ship = {"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"]}
    assert await parcels(ADMIN) == [(held, True, "released", ship), (unseen, False, None, None)]
    # customs took the delivery (CEB712 399): the site it came from reads each parcel's status, not whose it is
    await db_pool.execute("UPDATE documents SET forward_state = 'receipted', customs_status = '399', customs_rank = $1"
                          " WHERE message_type = 'CEB711'", RANK_CONCLUDED)  # fmt: skip
    assert await parcels(STRANGER) == [(held, True, "released", None), (unseen, False, None, None)]
    # customs refused it (a negative code: no site of its, or not its B/L): withheld again
    await db_pool.execute("UPDATE documents SET forward_state = 'rejected', customs_status = '-800001',"
                          " customs_rank = $1 WHERE message_type = 'CEB711'", RANK_REJECTED)  # fmt: skip
    assert await parcels(STRANGER) == [(held, None, None, None), (unseen, None, None, None)]
