"""Tenants of one gateway: the platform, the seller, the payment company, the carrier and the declaring agent of a
parcel each send their own leg with a key of their own codes, and each reads of the others' documents no more than
the README's access rule gives it (a submitter reads the documents that carry one of its codes), over real HTTP."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from gateway import samples
from gateway.api import create_app
from gateway.config import ApiKey, Role
from gateway.render import render
from tests import apiutil
from tests.apiutil import ADMIN, OPERATOR, Client, openapi_check, serving, sign_as_agent

pytestmark = pytest.mark.db

PLATFORM = "tenant-platform-key-000000"
SELLER = "tenant-seller-key-11111111"
PAYER = "tenant-payment-key-2222222"
CARRIER = "tenant-carrier-key-3333333"
AGENT = "tenant-agent-key-444444444"
OTHER_SELLER = "tenant-seller-b-key-555555"
OTHER_EBC = "4601260E99"
PAYER_NAME = "付款人甲乙"  # the payment's payerName, another name than the order's buyer: only its parties may read it


def new_shipment(seed: int, **kw: Any) -> samples.ShipmentSample:
    return samples.shipment(random.Random(seed), **kw)


def xml_of(payload: dict[str, Any]) -> bytes:
    return render(payload, signer=sign_as_agent if payload["type"] == "CEB621" else None)


def head(payload: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = payload["documents"][0]
    return doc


@contextlib.asynccontextmanager
async def tenants(db_pool: asyncpg.Pool, s: samples.ShipmentSample) -> AsyncIterator[Client]:
    """The API with a key per company of the shipment ``s`` (each holding its own code only) and another seller's."""
    keys = (
        *apiutil.test_settings().api_keys,
        ApiKey("platform", PLATFORM, Role.SUBMITTER, frozenset({head(s.order)["ebpCode"]})),
        ApiKey("seller", SELLER, Role.SUBMITTER, frozenset({head(s.order)["ebcCode"]})),
        ApiKey("payment", PAYER, Role.SUBMITTER, frozenset({head(s.payment)["payCode"]})),
        ApiKey("carrier", CARRIER, Role.SUBMITTER, frozenset({head(s.waybill)["logisticsCode"]})),
        ApiKey("agent", AGENT, Role.SUBMITTER, frozenset({head(s.inventory)["agentCode"]})),
        ApiKey("seller-b", OTHER_SELLER, Role.SUBMITTER, frozenset({OTHER_EBC})),
    )
    settings = apiutil.test_settings().with_overrides(api_keys=keys)
    async with serving(create_app(settings, db_pool, signer=sign_as_agent)) as api:
        yield api


def by_kind(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in view["documents"]}


def assert_limited(doc: dict[str, Any]) -> None:
    assert doc["limited"] is True, doc
    for hidden in ("head", "lines", "parties", "transmissions", "warehouse_orders"):
        assert hidden not in doc, (hidden, doc)
    assert doc["forward_state"] and doc["keys"]  # what identifies it and where it stands are shown


async def test_a_company_reads_the_other_legs_of_its_shipment_limited(db_pool: asyncpg.Pool) -> None:
    """Each leg sent by its own company: a key reads in full the documents carrying its code, and of the shipment's
    other legs (the payment to the carrier, the waybill to the payment company) only what identifies them and where
    they stand; a finding comparing a document it is no party of withholds that document's value. The payer's name,
    on the payment alone, reaches the payment company (and, through the order naming its payCode, the platform's
    order is the payment company's to read) and never the carrier or the agent: not in the shipment, its list, its
    CSV or the answer to the carrier's own waybill."""
    s = new_shipment(41)
    payment = copy.deepcopy(s.payment)
    head(payment)["payerName"] = PAYER_NAME  # a finding: buyer_payer_mismatch (order ↔ payment)
    async with tenants(db_pool, s) as api:
        assert (await api.post_xml(xml_of(s.order), key=PLATFORM)).status == 202
        assert (await api.post_xml(xml_of(payment), key=PAYER)).status == 202
        waybill = await api.post_xml(xml_of(s.waybill), key=CARRIER)
        assert waybill.status == 202, waybill.body
        assert (await api.post_xml(xml_of(s.inventory), key=AGENT)).status == 202
        path = f"/v1/shipments/{head(s.order)['ebpCode']}/{head(s.order)['orderNo']}"

        full = (await api.get(path, key=OPERATOR)).body
        assert not any(d.get("limited") for d in full["documents"])
        [mismatch] = [f for f in full["findings"]
                      if f["code"] == "recon.buyer_payer_mismatch" and f["field"] == "buyerName"]  # fmt: skip
        assert mismatch["right"]["value"] == PAYER_NAME

        seen = {}
        for name, key, readable in (("carrier", CARRIER, {"waybill", "inventory"}),
                                    ("payment", PAYER, {"order", "payment"}),
                                    ("agent", AGENT, {"inventory"}),
                                    ("seller", SELLER, {"order", "inventory"}),
                                    ("platform", PLATFORM, {"order", "payment", "inventory"})):  # fmt: skip
            reply = await api.get(path, key=key)
            assert reply.status == 200, (name, reply.body)
            openapi_check(reply.body, "Shipment")  # limited documents and withheld values are in the contract too
            docs = by_kind(reply.body)
            assert set(docs) == {"order", "payment", "waybill", "inventory"}
            for kind, doc in docs.items():
                if kind in readable:
                    assert not doc.get("limited") and doc["head"], (name, kind)
                else:
                    assert_limited(doc)
            [finding] = [f for f in reply.body["findings"] if f["code"] == "recon.buyer_payer_mismatch"
                         and f["field"] == "buyerName"]  # fmt: skip
            seen[name] = finding
            assert reply.body["state"] == "mismatched"
            assert (PAYER_NAME in json.dumps(reply.body, ensure_ascii=False)) == ("payment" in readable), name
        assert seen["payment"] == mismatch
        for name in ("carrier", "agent"):  # neither side theirs: the field and the documents, no value
            left, right = seen[name]["left"], seen[name]["right"]
            assert (left["doc"], right["doc"]) == ("CEB311", "CEB411")
            assert left["value"] is right["value"] is None and left["withheld"] and right["withheld"], name
        assert seen["seller"]["left"]["value"] and seen["seller"]["right"]["withheld"]  # its order, not the payment

        # the list, its CSV and the carrier's own 202 answer withhold the same
        for key, shown in ((CARRIER, False), (AGENT, False), (PAYER, True)):
            listed = await api.get("/v1/shipments", key=key)
            assert listed.status == 200 and len(listed.body["items"]) == 1
            assert (PAYER_NAME in json.dumps(listed.body, ensure_ascii=False)) is shown
            table = await api.get("/v1/shipments.csv", key=key)
            assert table.status == 200
            assert (PAYER_NAME in table.body.decode("utf-8-sig")) is shown
        rows = list(csv.DictReader(io.StringIO((await api.get("/v1/shipments.csv", key=CARRIER)).body.decode(
            "utf-8-sig"))))  # fmt: skip
        assert "recon.buyer_payer_mismatch" in rows[0]["findings"]
        assert PAYER_NAME not in json.dumps(waybill.body, ensure_ascii=False)
        [answered] = [f for s_ in waybill.body["shipments"] for f in s_["findings"] if f["field"] == "buyerName"]
        assert answered["right"]["withheld"]
        openapi_check(waybill.body, "Accepted")
        again = await api.get(f"/v1/messages/{waybill.body['guid']}", key=CARRIER)
        openapi_check(again.body, "Message")
        assert again.status == 200 and PAYER_NAME not in json.dumps(again.body, ensure_ascii=False)
        replayed = await api.post_xml(xml_of(s.waybill), key=CARRIER)  # the same bytes: the stored answer, cut again
        assert replayed.headers.get("Idempotent-Replay") == "true"
        assert PAYER_NAME not in json.dumps(replayed.body, ensure_ascii=False)
        assert PAYER_NAME in json.dumps((await api.post_xml(xml_of(s.waybill), key=ADMIN)).body, ensure_ascii=False)


async def test_the_buyer_s_id_number_shows_only_beside_a_document_naming_it(db_pool: asyncpg.Pool) -> None:
    """The shipment's buyer_id_number (its inventory's, else its order's) is shown to a key reading a document that
    names that person, not to the carrier of a shipment with no inventory yet (it reads the waybill alone)."""
    s = new_shipment(44)
    async with tenants(db_pool, s) as api:
        for payload, key in ((s.order, PLATFORM), (s.waybill, CARRIER)):
            assert (await api.post_xml(xml_of(payload), key=key)).status == 202
        path = f"/v1/shipments/{head(s.order)['ebpCode']}/{head(s.order)['orderNo']}"
        buyer = head(s.order)["buyerIdNumber"]
        assert (await api.get(path, key=PLATFORM)).body["buyer_id_number"] == buyer
        carried = (await api.get(path, key=CARRIER)).body
        assert carried["buyer_id_number"] is None
        assert buyer not in json.dumps(carried)


async def test_a_seller_reads_its_own_inventory_of_an_agent_s_message_of_several_sellers(db_pool: asyncpg.Pool) -> None:
    """An agent declares two sellers' inventories in one message: each seller reads the message for its own, the other
    seller's inventory limited and neither the raw XML (it holds the other's buyer) nor the other's outcome in the
    answer; the agent, party of both, reads it whole."""
    first, second = new_shipment(45), new_shipment(46, ebc_code=OTHER_EBC)
    message = copy.deepcopy(first.inventory)
    message["documents"] = [head(first.inventory), {**head(second.inventory), "emsNo": "T4604W000046"}]
    async with tenants(db_pool, first) as api:
        sent = await api.post_xml(xml_of(message), key=AGENT)
        assert sent.status == 202, sent.body
        guid = sent.body["guid"]
        other_buyer = head(second.inventory)["buyerIdNumber"]
        whole = (await api.get(f"/v1/messages/{guid}", key=AGENT)).body
        assert whole["raw_xml"] and not any(d.get("limited") for d in whole["documents"])
        assert len(whole["response"]["documents"]) == 2
        for key, mine, theirs in ((SELLER, first, second), (OTHER_SELLER, second, first)):
            reply = await api.get(f"/v1/messages/{guid}", key=key)
            assert reply.status == 200, reply.body
            own, other = sorted(reply.body["documents"], key=lambda d: d.get("limited", False))
            assert own["head"]["orderNo"] == head(mine.inventory)["orderNo"]
            assert_limited(other)
            assert other["keys"]["orderNo"] == head(theirs.inventory)["orderNo"]
            assert reply.body["raw_xml"] is None and reply.body["raw_xml_withheld"] is True
            openapi_check(reply.body, "Message")
            answered = reply.body["response"]
            assert [d["keys"]["orderNo"] for d in answered["documents"]] == [head(mine.inventory)["orderNo"]]
            assert [s["orderNo"] for s in answered["shipments"]] == [head(mine.inventory)["orderNo"]]
            assert head(theirs.inventory)["buyerIdNumber"] not in json.dumps(reply.body)
            # the warning about the second seller's inventory quotes its emsNo: only that seller reads it
            warnings = [w["code"] for w in answered.get("warnings", [])]
            assert warnings == ([] if key == SELLER else ["rule.mode_field_unexpected"]), (key, warnings)
            assert ("T4604W000046" in json.dumps(reply.body)) is (key == OTHER_SELLER)
        assert other_buyer in json.dumps((await api.get(f"/v1/messages/{guid}", key=OPERATOR)).body)
        [warned] = whole["response"]["warnings"]  # the agent, party of both, reads the warning
        assert warned["code"] == "rule.mode_field_unexpected" and "T4604W000046" in warned["message"]


async def test_an_operator_key_declares_nothing(db_pool: asyncpg.Pool) -> None:
    """An operator reads every enterprise's documents and replays dead letters; it sends no declaration in their name
    (XML or JSON, which the gateway would sign with the agent's key) and no platform's payment data: 403, nothing
    stored. An admin's key still may, and the company's own."""
    s = new_shipment(47)
    async with tenants(db_pool, s) as api:
        refused = await api.post_xml(xml_of(s.order), key=OPERATOR)
        assert refused.status == 403 and "declares nothing" in refused.body["error"]["title"], refused.body
        as_json = json.loads(json.dumps(s.inventory, default=str))
        assert (await api.request("POST", "/v1/messages", key=OPERATOR, json_body=as_json)).status == 403
        data = {"payExchangeInfoHead": {"ebpCode": head(s.order)["ebpCode"]}, "payExchangeInfoLists": []}
        assert (await api.request("POST", "/v1/payment-data", key=OPERATOR, json_body=data)).status == 403
        assert await db_pool.fetchval("SELECT count(*) FROM messages") == 0
        assert (await api.post_xml(xml_of(s.order), key=PLATFORM)).status == 202
        assert (await api.request("POST", "/v1/messages", key=ADMIN, json_body=as_json)).status == 202


async def test_a_refusal_names_nothing_of_another_enterprise_s_document(db_pool: asyncpg.Pool) -> None:
    """What stands in the way may be another enterprise's document: its refusal says what it is, not which message or
    enterprise — another seller's inventory for the order (state.second_inventory), another tenant's message under the
    guid (state.guid_conflict) — while the key whose document it is reads them named."""
    s = new_shipment(48)
    doc = head(s.order)
    theirs = new_shipment(49, ebc_code=OTHER_EBC, order_no=doc["orderNo"])
    async with tenants(db_pool, s) as api:
        order = await api.post_xml(xml_of(s.order), key=PLATFORM)
        inventory = await api.post_xml(xml_of(s.inventory), key=AGENT)
        assert order.status == inventory.status == 202
        second = await api.post_xml(xml_of(theirs.inventory), key=OTHER_SELLER)
        assert second.status == 409, second.body
        [issue] = second.body["error"]["issues"]
        assert issue["code"] == "state.second_inventory" and "another enterprise" in issue["message"]
        assert head(s.inventory)["ebcCode"] not in issue["message"] and inventory.body["guid"] not in issue["message"]
        named = await api.post_xml(xml_of(theirs.inventory), key=ADMIN)  # a party of both: named
        assert named.status == 409 and head(s.inventory)["ebcCode"] in named.body["error"]["issues"][0]["message"]

        reused = copy.deepcopy(theirs.order)
        reused["guid"] = order.body["guid"]  # the platform's message guid, on another seller's order
        head(reused)["ebpCode"] = "4601269999"
        head(reused)["ebcCode"] = OTHER_EBC
        clash = await api.post_xml(xml_of(reused), key=OTHER_SELLER)
        assert clash.status == 409 and clash.body["error"]["issues"][0]["code"] == "state.guid_conflict"
        assert "CEB311" not in clash.body["error"]["issues"][0]["message"]
        mine = copy.deepcopy(s.order)
        mine["guid"] = order.body["guid"]
        head(mine)["note"] = "other bytes"
        own = await api.post_xml(xml_of(mine), key=PLATFORM)
        assert own.status == 409 and "(CEB311)" in own.body["error"]["issues"][0]["message"]


async def test_a_company_declares_only_the_documents_it_is_the_declarant_of(db_pool: asyncpg.Pool) -> None:
    """Reconciliation compares three companies' own documents (三单对碰): the payment company, which the order names in
    payCode and so reads, does not declare the platform's order (nor a new one in its name); the carrier, which the
    inventory names in logisticsCode, neither has the gateway sign an inventory with the agent's key nor cancels the
    seller's inventory by writing itself in as the agent. 403, nothing stored; each company's own leg goes through."""
    s = new_shipment(50)
    async with tenants(db_pool, s) as api:
        forged = await api.post_xml(xml_of(s.order), key=PAYER)
        assert forged.status == 403, forged.body
        [issue] = forged.body["error"]["issues"]
        assert issue["code"] == "auth.not_your_document" and "(ebpCode, ebcCode)" in issue["message"]
        signed = await api.request("POST", "/v1/messages", key=CARRIER,
                                   json_body=json.loads(json.dumps(s.inventory, default=str)))  # fmt: skip
        assert signed.status == 403 and signed.body["error"]["issues"][0]["code"] == "auth.not_your_document"
        assert await db_pool.fetchval("SELECT count(*) FROM messages") == 0

        for payload, key in ((s.order, PLATFORM), (s.payment, PAYER), (s.waybill, CARRIER), (s.inventory, SELLER)):
            reply = await api.request("POST", "/v1/messages", key=key,
                                      json_body=json.loads(json.dumps(payload, default=str)))  # fmt: skip
            assert reply.status == 202, (payload["type"], reply.body)
        path = f"/v1/shipments/{head(s.order)['ebpCode']}/{head(s.order)['orderNo']}"
        assert not by_kind((await api.get(path, key=PAYER)).body)["order"].get("limited")  # it reads the order
        inventory = head(s.inventory)
        cancel = samples.import_cancellation(random.Random(50), inventory, f"{inventory['customsCode']}2026I000000050")
        head(cancel)["agentCode"] = head(s.waybill)["logisticsCode"]  # the carrier as the agent: a code it holds
        refused = await api.request("POST", "/v1/messages", key=CARRIER,
                                    json_body=json.loads(json.dumps(cancel, default=str)))  # fmt: skip
        assert refused.status == 403, refused.body
        assert refused.body["error"]["issues"][0]["code"] == "auth.not_your_document"
        assert "names none of this API key's enterprise codes as its declarant" in refused.body["error"]["issues"][0][
            "message"]  # fmt: skip
        assert await db_pool.fetchval("SELECT count(*) FROM messages WHERE message_type = 'CEB623'") == 0


async def test_a_fresh_answer_is_cut_without_reading_the_documents_again(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 202 answer to a submitter withholds what its findings quote of the other legs, knowing their parties from
    the batch that reconciled them: no query per message on the ingest path (a replay, answered from the stored
    answer, reads them)."""
    from gateway import api as api_module

    read: list[set[str]] = []
    original = api_module.documents_by_guid

    async def counted(conn: Any, guids: Any) -> list[dict[str, Any]]:
        read.append(set(guids))
        return await original(conn, guids)

    monkeypatch.setattr(api_module, "documents_by_guid", counted)
    s = new_shipment(47)
    payment = copy.deepcopy(s.payment)
    head(payment)["payerName"] = PAYER_NAME
    async with tenants(db_pool, s) as api:
        assert (await api.post_xml(xml_of(s.order), key=PLATFORM)).status == 202
        assert (await api.post_xml(xml_of(payment), key=PAYER)).status == 202
        waybill = await api.post_xml(xml_of(s.waybill), key=CARRIER)
        assert waybill.status == 202, waybill.body
        [answered] = [f for s_ in waybill.body["shipments"] for f in s_["findings"] if f["field"] == "buyerName"]
        assert answered["left"]["withheld"] and answered["right"]["withheld"]
        assert PAYER_NAME not in json.dumps(waybill.body, ensure_ascii=False)
        assert read == []
        replayed = await api.post_xml(xml_of(s.waybill), key=CARRIER)
        assert replayed.headers.get("Idempotent-Replay") == "true" and replayed.body == waybill.body
        assert len(read) == 1
