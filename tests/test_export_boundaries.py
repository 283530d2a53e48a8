"""The boundary between the import and the export flow: an export shipment never takes an import leg (nor the
reverse) in reconciliation, in the SQL views (documents, customs status, held inventories) or in the sandbox, which
plays customs' two systems apart; a 9610 export release sets off no warehouse order, a special-zone (1210) one the
zone warehouse's outbound order; a withdrawn export shipment stays export."""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from lxml import etree

from adapters import dxp
from gateway import samples
from gateway.api import create_app
from gateway.config import ApiKey, Role, Settings
from gateway.db import migration_files
from gateway.messages import BY_CODE
from gateway.render import render
from gateway.sandbox.app import RunningSandbox
from gateway.sandbox.recorder import Recorder
from tests.apiutil import PLATFORM_A, Client, serving, sign_as_agent
from tests.exportapi import NOW, export_ship, import_ship, post_export, post_json, post_receipt, version
from tests.forwardutil import running_stack, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


# --- export release ------------------------------------------------------------------------------


async def _declared(client: Client, seed: int, mode: str) -> tuple[samples.ExportShipmentSample, str]:
    """An export shipment's four legs sent as XML (the inventory signed), each accepted; the shipment and its path."""
    s = samples.export_shipment(random.Random(seed), mode=mode, now=NOW)
    for code in ("CEB303", "CEB403", "CEB505", "CEB603"):
        reply = await client.post_xml(render(s.payloads()[code], signer=sign_as_agent if code == "CEB603" else None))
        assert reply.status == 202, (code, reply.body)
    return s, f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}"


@pytest.mark.db
async def test_a_released_export_shipment_leaves_no_dead_letter(db_dsn: str) -> None:
    async with running_stack(db_dsn) as stack:
        _, path = await _declared(stack.client, 51, "9610")

        async def released() -> bool:
            return (await stack.client.get(path)).body["customs_status"] == "released"

        await wait_for(released, timeout=20, what="released")

        async def settled() -> bool:
            return not await stack.fetchval("SELECT count(*) FROM jobs WHERE state NOT IN ('done', 'dead')")

        await wait_for(settled, timeout=20, what="queue settled")
        dead = await stack.fetch("SELECT j.endpoint, j.kind, a.error FROM jobs AS j"
                                 " LEFT JOIN job_attempts AS a ON a.job_id = j.id WHERE j.state = 'dead'")
        assert dead == [], [dict(d) for d in dead]
        assert await stack.fetchval("SELECT count(*) FROM jobs WHERE endpoint = 'warehouse'") == 0  # the parcel is
        # with its seller or carrier: no warehouse ships it


@pytest.mark.db
async def test_a_released_special_zone_export_is_shipped_out_by_the_zone_warehouse(db_dsn: str) -> None:
    """1210 (特殊区域出口): the goods wait in the zone's warehouse (iacCode); once customs releases the inventory the
    warehouse gets an outbound order made from the CEB603 — its items, the carrier and waybill to hand them to, no
    consignee (the buyer is abroad) — and reports back on it, shown under the inventory."""
    async with running_stack(db_dsn) as stack:
        s, path = await _declared(stack.client, 52, "1210")

        async def shipped() -> bool:
            docs = (await stack.client.get(path)).body["documents"]
            return any(o["status"] == "shipped" for d in docs if d["message_type"] == "CEB603"
                       for o in d["warehouse_orders"])  # fmt: skip

        await wait_for(shipped, timeout=20, what="the zone warehouse's callbacks")
        [order] = stack.sandbox.sandbox.warehouse
        inventory = s.payloads()["CEB603"]["documents"][0]
        assert order["direction"] == "outbound" and "consignee" not in order
        ref = order["reference"]
        assert (ref["messageType"], ref["tradeMode"], ref["orderNo"]) == ("CEB603", "1210", inventory["orderNo"])
        assert (ref["logisticsCode"], ref["logisticsNo"]) == (inventory["logisticsCode"], inventory["logisticsNo"])
        assert ref["iacCode"] == inventory["iacCode"] and ref["emsNo"] == inventory["emsNo"]
        numbered = (await stack.client.get(path)).body["documents"]
        [(invt_no, pre_no)] = [(d["invt_no"], d["pre_no"]) for d in numbered if d["message_type"] == "CEB603"]
        assert invt_no and (ref["invtNo"], ref["preNo"]) == (invt_no, pre_no)  # customs' numbers (CEB604)
        assert [i["sku"] for i in order["items"]] == [i["itemNo"] for i in inventory["items"]]


# --- flow after withdrawal -----------------------------------------------------------------------


@pytest.mark.db
async def test_a_withdrawn_export_shipment_stays_export(api: Client, db_pool: Any) -> None:
    ex = export_ship(11, order_no="WD0001")
    ebp = ex.order_doc["ebpCode"]
    assert (await post_export(api, ex.order)).status == 202
    later = version(ex.order, "3", "20261120160000")
    r = await post_export(api, later)
    assert r.status == 202, r.body
    row = await db_pool.fetchrow("SELECT flow, state, missing FROM shipments WHERE ebp_code = $1 AND order_no = $2",
                                 ebp, "WD0001")
    print(dict(row) if row else None, r.body["documents"][0]["shipment"])
    assert row is None or row["flow"] == "export", dict(row)


# --- flow mixing ---------------------------------------------------------------------------------


@pytest.mark.db
async def test_an_export_shipment_lists_no_import_waybill_of_its_orderno(api: Client, db_pool: Any) -> None:
    ex = export_ship(1, order_no="MIX0001")
    ebp = ex.order_doc["ebpCode"]
    assert (await post_export(api, ex.order)).status == 202
    assert (await post_export(api, ex.receipt)).status == 202
    # an import waybill of the same orderNo (another platform's parcel, its order not in yet): a waybill-only
    # import shipment ('', MIX0001) -- keystate keeps it out of the export shipment
    im = import_ship(2, order_no="MIX0001")
    r = await post_json(api, im.waybill)
    assert r.status == 202, r.body
    path = f"/v1/shipments/{ebp}/MIX0001"
    body = (await api.get(path)).body
    assert body["flow"] == "export"
    # the export shipment's documents list no import (CEB511) waybill
    types = sorted(d["message_type"] for d in body["documents"])
    assert "CEB511" not in types, types


@pytest.mark.db
async def test_an_import_waybills_rejection_leaves_an_export_shipments_customs_status(
    api: Client, db_pool: Any
) -> None:
    ex = export_ship(1, order_no="MIX0003")
    ebp = ex.order_doc["ebpCode"]
    assert (await post_export(api, ex.order)).status == 202
    im = import_ship(2, order_no="MIX0003")
    assert (await post_json(api, im.waybill)).status == 202
    # customs rejects the import waybill: only the import waybill-only shipment is concerned
    w = im.waybill_doc
    r = await post_receipt(api, "CEB512", {"guid": w["guid"], "logisticsCode": w["logisticsCode"],
                                           "logisticsNo": w["logisticsNo"], "returnStatus": "100",
                                           "returnTime": "20261120160000000", "returnInfo": "退单"})
    assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body
    status = await db_pool.fetchval(
        "SELECT customs_status FROM shipments WHERE ebp_code = $1 AND order_no = 'MIX0003'", ebp)
    assert status != "rejected", "the export shipment took the import waybill's rejection"


@pytest.mark.db
async def test_an_export_shipment_of_another_platform_does_not_hide_an_import_shipments_waybill(api: Client,
                                                                                       db_pool: Any) -> None:
    """Import shipment (Q, ORD) with its order, payment and waybill; an export shipment (P, ORD) of another
    platform. keystate (import platforms only) gives Q the waybill; the shipment view and SHIPMENT_LEGS
    (other_platform counts P's export legs) do not."""
    im = import_ship(3, order_no="MIX0002", ebp_code="IMPQ000001")
    for p in (im.order, im.payment, im.waybill):
        r = await post_json(api, p)
        assert r.status == 202, r.body
    ex = export_ship(4, order_no="MIX0002")
    assert ex.order_doc["ebpCode"] != "IMPQ000001"
    assert (await post_export(api, ex.order)).status == 202
    body = (await api.get("/v1/shipments/IMPQ000001/MIX0002")).body
    assert body["flow"] == "import"
    assert "waybill" not in body["missing"]  # keystate: the waybill is Q's leg
    kinds = sorted(d["kind"] for d in body["documents"] if d.get("is_current", True))
    assert "waybill" in kinds, f"the import shipment's waybill leg is not listed: {kinds}"
    # and its rejection shows on the import shipment
    w = im.waybill_doc
    r = await post_receipt(api, "CEB512", {"guid": w["guid"], "logisticsCode": w["logisticsCode"],
                                           "logisticsNo": w["logisticsNo"], "returnStatus": "100",
                                           "returnTime": "20261120160000000", "returnInfo": "退单"})
    assert r.status == 200, r.body
    status = await db_pool.fetchval(
        "SELECT customs_status FROM shipments WHERE ebp_code = 'IMPQ000001' AND order_no = 'MIX0002'")
    assert status == "rejected", f"import shipment's waybill rejection not shown: {status}"


# --- hold cross flow -----------------------------------------------------------------------------


async def state_of(pool: asyncpg.Pool, code: str) -> str:
    return await pool.fetchval("SELECT forward_state FROM documents WHERE message_type = $1 AND is_current", code)


@pytest.mark.db
async def test_an_import_waybills_receipt_does_not_release_an_export_inventory(routed: Client, db_pool: Any) -> None:
    ex = export_ship(31, order_no="HOLD0001")
    for p in (ex.order, ex.receipt, ex.waybill, ex.inventory):
        r = await post_export(routed, p)
        assert r.status == 202, r.body
    assert await state_of(db_pool, "CEB603") == "held"
    o, rc = ex.order_doc, ex.receipt_doc
    for code, values in (("CEB304", {"guid": o["guid"], "ebpCode": o["ebpCode"], "ebcCode": o["ebcCode"],
                                     "orderNo": o["orderNo"]}),
                         ("CEB404", {"guid": rc["guid"], "ebcCode": rc["ebcCode"], "orderNo": rc["orderNo"]})):
        r = await post_receipt(routed, code, {**values, "returnStatus": "120", "returnTime": "20261120160000000",
                                              "returnInfo": "ok"})
        assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body
    assert await state_of(db_pool, "CEB603") == "held"  # the export waybill has no receipt yet
    # an import waybill with the same carrier and number (another flow, its own orderNo), newer
    im = import_ship(32, order_no="IMPHOLD01")
    w = im.waybill_doc
    w["logisticsCode"], w["logisticsNo"] = ex.waybill_doc["logisticsCode"], ex.waybill_doc["logisticsNo"]
    w["appTime"] = "20261120155959"
    r = await post_json(routed, im.waybill)
    assert r.status == 202, r.body
    r = await post_receipt(routed, "CEB512", {"guid": w["guid"], "logisticsCode": w["logisticsCode"],
                                              "logisticsNo": w["logisticsNo"], "returnStatus": "120",
                                              "returnTime": "20261120160001000", "returnInfo": "ok"})
    assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body
    assert await state_of(db_pool, "CEB603") == "held", "released on the import waybill's receipt"


# --- inventory moves -----------------------------------------------------------------------------


@pytest.mark.db
async def test_a_changed_export_inventory_naming_another_order_leaves_its_old_shipment(api: Client,
                                                                                       db_pool: Any) -> None:
    a = export_ship(21, order_no="MOVA0001")
    b = export_ship(21, order_no="MOVB0001")  # same goods, other orderNo
    ebp = a.order_doc["ebpCode"]
    for p in (a.order, a.receipt, a.waybill, a.inventory):
        r = await post_export(api, p)
        assert r.status == 202, r.body
    b.receipt["documents"][0]["guid"] = "B" + b.receipt_doc["guid"][1:]
    for p in (b.order, b.receipt):
        for d in p["documents"]:
            d["guid"] = "C" + d["guid"][1:]
        p["guid"] = "D" + p["guid"][1:]
        r = await post_export(api, p)
        assert r.status == 202, r.body
    assert (await api.get(f"/v1/shipments/{ebp}/MOVA0001")).body["state"] == "matched"
    # the inventory (agentCode, copNo) changed to name order MOVB0001
    moved = version(a.inventory, "2", "20261120160000", orderNo="MOVB0001")
    r = await post_export(api, moved)
    assert r.status == 202, r.body
    print(r.body["documents"][0])
    old = (await api.get(f"/v1/shipments/{ebp}/MOVA0001")).body
    new = (await api.get(f"/v1/shipments/{ebp}/MOVB0001")).body
    print(old["state"], old["missing"], new["state"], new["missing"])
    assert "inventory" in old["missing"], (old["state"], old["missing"])
    assert "inventory" not in new["missing"], (new["state"], new["missing"])


# --- sandbox export ------------------------------------------------------------------------------


pytest_plugins = ["gateway.sandbox.pytest_plugin"]


def cancel(cop_no: str) -> bytes:
    doc = {"guid": str(uuid.uuid4()).upper(), "appType": "1", "appTime": "20261120170000", "appStatus": "2",
           "customsCode": "6401", "copNo": cop_no, "invtNo": "64012026E000000001", "reason": "买家取消",
           "agentCode": "4601980H12", "agentName": "Agent", "ebcCode": "4601260E35", "ebcName": "Seller"}
    payload = {"type": "CEB605", "guid": str(uuid.uuid4()).upper(), "documents": [doc],
               "baseTransfer": {"copCode": "4601980H12", "copName": "Agent", "dxpMode": "DXP",
                                "dxpId": "DXPENT0000000001"}}
    return render(payload, signer=sign_as_agent)


async def test_the_export_cancellation_receipt_echoes_the_declared_cop_no(
    customs_sandbox_local: RunningSandbox, http_recorder: Recorder
) -> None:
    sb = customs_sandbox_local
    sb.config.receipt_url = http_recorder.url + "/v1/receipts"
    cop_no = "CANCEL-2026112017000000000001"  # 29 characters: CEB605/606 copNo is C..30 (spec A.25, A.26)
    assert len(cop_no) <= 30
    env = dxp.wrap(cancel(cop_no), msg_type="CEB605Message", sender_id="DXPENT0000458763",
                   receiver_ids=[dxp.EXPORT_RECEIVER], cop_msg_id=str(uuid.uuid4()).upper(), created=datetime.now())
    async with aiohttp.ClientSession() as client, client.post(sb.url + "/dxp", data=env) as resp:
        ack = await resp.json()
        assert resp.status == 200 and ack["code"] == "0000", ack
    await sb.wait_idle()
    got = []
    for r in http_recorder.requests:
        if r.path != "/v1/receipts":
            continue
        root = etree.fromstring(dxp.unwrap(r.body).data)
        for ret in root:
            got.append({etree.QName(c).localname: c.text or "" for c in ret})
    assert got, "no CEB606"
    assert {g["copNo"] for g in got} == {cop_no}, [g["copNo"] for g in got]


async def test_an_export_inventory_is_not_a_duplicate_of_an_import_one(
    customs_sandbox_local: RunningSandbox, http_recorder: Recorder
) -> None:
    """The sandbox kept import inventories by (ebcCode, orderNo) and export ones by (agentCode, copNo) in one table:
    an enterprise declaring its own export parcel (agentCode = its ebcCode) with copNo = an orderNo it imported
    under got -621004 from the export system, which had never seen that inventory."""
    sb = customs_sandbox_local
    sb.config.receipt_url = http_recorder.url + "/v1/receipts"
    im = samples.shipment(random.Random(61), now=NOW)
    ex = samples.export_shipment(random.Random(62), now=NOW)
    inv = ex.inventory_doc
    inv["agentCode"], inv["copNo"] = im.inventory_doc["ebcCode"], im.inventory_doc["orderNo"]
    imports = samples.render_shipment(im, signer=sign_as_agent)
    exports = samples.render_export_shipment(ex, signer=sign_as_agent)
    async with aiohttp.ClientSession() as client:
        for code, xml, receiver in [*((c, imports[c], dxp.IMPORT_RECEIVER) for c in ("CEB311", "CEB411", "CEB511",
                                                                                     "CEB621")),
                                    *((c, exports[c], dxp.EXPORT_RECEIVER) for c in ("CEB303", "CEB403", "CEB505",
                                                                                     "CEB603"))]:
            env = dxp.wrap(xml, msg_type=f"{code}Message", sender_id="DXPENT0000458763", receiver_ids=[receiver],
                           cop_msg_id=str(uuid.uuid4()).upper(), created=datetime.now())
            async with client.post(sb.url + "/dxp", data=env) as resp:
                assert resp.status == 200, await resp.text()
            if code == "CEB621":
                await sb.wait_idle()
    await sb.wait_idle()
    statuses: dict[str, list[str]] = {}
    for r in http_recorder.requests:
        if r.path != "/v1/receipts":
            continue
        root = etree.fromstring(dxp.unwrap(r.body).data)
        if etree.QName(root).localname in ("CEB816Message", "CEB818Message"):  # the import inventory's tax bill
            continue
        for ret in root:
            f = {etree.QName(c).localname: c.text or "" for c in ret}
            statuses.setdefault(etree.QName(root).localname[:6], []).append(f["returnStatus"])
    assert statuses["CEB622"][-1] == "800", statuses
    assert statuses["CEB604"] == ["2", "120", "399", "800"], statuses


# --- transport messages (CEB507/509/607): through the API, access by their codes, on the shipment's view -----------


@pytest.mark.db
async def test_transport_messages_through_the_api_by_their_senders_keys(db_pool: Any) -> None:
    """A parcel's 清单总分单, arrival and departure as their senders post them (XML signed by the site operator and the
    carrier; the 607 as JSON, signed by the gateway's agent key): each taken by a key holding one of its codes,
    refused to a key holding none (auth.not_your_document), and shown on the export shipment whose waybill it
    lists, with the shipment's own state untouched."""
    s = export_ship(61)
    transport = samples.export_transport([s], random.Random(61))
    inv = s.inventory_doc
    site, carrier, agent = samples.EXPORT_SITE[0], inv["logisticsCode"], inv["agentCode"]
    keys = (ApiKey("admin", "admin-key-000000000000", Role.ADMIN),
            ApiKey("site", "site-key-4444444444444", Role.SUBMITTER, frozenset({site})),
            ApiKey("carrier", "carrier-key-55555555555", Role.SUBMITTER, frozenset({carrier})),
            ApiKey("agent", "agent-key-666666666666", Role.SUBMITTER, frozenset({agent})),
            ApiKey("other", "other-key-777777777777", Role.SUBMITTER, frozenset({"9999999999"})))  # fmt: skip
    app = create_app(Settings(api_keys=keys, max_body_bytes=256 * 1024), db_pool, signer=sign_as_agent)
    async with serving(app) as client:
        for code in ("CEB303", "CEB403", "CEB505", "CEB603"):
            assert (await post_export(client, s.payloads()[code])).status == 202, code
        path = f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}"
        before = (await client.get(path)).body
        arrival = render(transport["CEB507"], signer=sign_as_agent)
        refused = await client.post_xml(arrival, key="other-key-777777777777")
        assert refused.status == 403 and refused.body["error"]["issues"][0]["code"] == "auth.not_your_document"
        reply = await client.post_xml(arrival, key="site-key-4444444444444")
        assert reply.status == 202, reply.body
        assert (reply.body["documents"][0]["kind"], reply.body["documents"][0]["shipment"]) == ("arrival", None)
        departure = render(transport["CEB509"], signer=sign_as_agent)
        assert (await client.post_xml(departure, key="carrier-key-55555555555")).status == 202
        reply = await client.request("POST", "/v1/messages", key="agent-key-666666666666",
                                     json_body=json.loads(json.dumps(transport["CEB607"], default=str)))  # fmt: skip
        assert reply.status == 202, reply.body
        after = (await client.get(path)).body
        shown = {d["message_type"]: d["keys"] for d in after["documents"] if d["kind"] in ("arrival", "departure",
                                                                                           "manifest")}  # fmt: skip
        assert shown == {code: {name: payload["documents"][0][name] for name in BY_CODE[code].keys}
                         for code, payload in transport.items()}
        assert (after["state"], after["missing"], after["updated_at"]) == (before["state"], before["missing"],
                                                                           before["updated_at"])  # fmt: skip
        # the agent, a party of the shipment, sees its own 清单总分单 whole and the others' arrival limited
        seen = {d["message_type"]: d for d in (await client.get(path, key="agent-key-666666666666")).body["documents"]}
        assert "limited" not in seen["CEB607"] and seen["CEB607"]["head"]["agentCode"] == agent
        assert seen["CEB507"]["limited"] is True and "head" not in seen["CEB507"]


@pytest.mark.db
async def test_a_seller_sees_of_a_transport_message_on_its_shipment_only_its_own_parcel(api: Client) -> None:
    """The site operator's arrival and the agent's 清单总分单 list other sellers' parcels too: on the shipment of a
    key that is no party of them (PLATFORM_A holds the platform's and the seller's codes, none of theirs) they show
    what identifies them, customs' word and the line naming this shipment's waybill, nothing of the others (their
    waybills, the 607's invtNos) nor of their senders beyond their keys; an operator sees them whole."""
    s = export_ship(75)
    for code in ("CEB303", "CEB403", "CEB505", "CEB603"):
        assert (await post_export(api, s.payloads()[code])).status == 202
    transport = samples.export_transport([s], random.Random(75))
    arrival, manifest = transport["CEB507"], transport["CEB607"]
    arrival["documents"][0]["items"].append({"gnum": 2, "logisticsNo": "OTHERSELLER00000001"})
    manifest["documents"][0]["items"].append({"gnum": 2, "logisticsNo": "OTHERSELLER00000002",
                                              "invtNo": "51412026E000009999"})  # fmt: skip
    for payload in (arrival, manifest):
        assert (await api.post_xml(render(payload, signer=sign_as_agent))).status == 202
    # the seller may not read the messages themselves ...
    assert (await api.get(f"/v1/messages/{arrival['guid']}", key=PLATFORM_A)).status == 404
    path = f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}"
    receipt = await post_receipt(api, "CEB508", {
        "guid": arrival["documents"][0]["guid"], "operatorCode": arrival["documents"][0]["operatorCode"],
        "logisticsCode": arrival["documents"][0]["logisticsCode"], "copNo": arrival["documents"][0]["copNo"],
        "preNo": "B20261120000000875", "msgSeqNo": "1", "returnStatus": "399", "returnTime": "20261120190000000",
        "returnInfo": "运抵审结"})  # fmt: skip
    assert receipt.status == 200, receipt.body
    # ... and on its shipment sees of them only what concerns its parcel
    seller = {d["message_type"]: d for d in (await api.get(path, key=PLATFORM_A)).body["documents"]
              if d["kind"] in ("arrival", "manifest")}  # fmt: skip
    shown = json.dumps(seller, ensure_ascii=False)
    for hidden in ("OTHERSELLER", "51412026E000009999", arrival["documents"][0]["operatorName"],
                   manifest["documents"][0]["billNo"], manifest["documents"][0]["domesticTrafNo"]):
        assert hidden not in shown, (hidden, shown[:800])
    own = s.inventory_doc["logisticsNo"]
    for code, payload in (("CEB507", arrival), ("CEB607", manifest)):
        d = seller[code]
        assert d["keys"] == {name: payload["documents"][0][name] for name in BY_CODE[code].keys}
        assert [line["logisticsNo"] for line in d["lines"]] == [own] and d["limited"] is True
        assert "head" not in d and "parties" not in d and "transmissions" not in d
    assert seller["CEB507"]["customs"]["code"] == "399"
    assert [r["return_status"] for r in seller["CEB507"]["receipts"]] == ["399"]
    # an operator (here the admin) sees them whole
    full = {d["message_type"]: d for d in (await api.get(path)).body["documents"] if d["kind"] in ("arrival",
                                                                                                  "manifest")}
    assert [line["logisticsNo"] for line in full["CEB507"]["lines"]] == [own, "OTHERSELLER00000001"]
    assert full["CEB607"]["head"]["billNo"] == manifest["documents"][0]["billNo"] and "limited" not in full["CEB607"]


@pytest.mark.db
async def test_a_receipt_answers_the_part_of_a_split_transport_message_it_names(api: Client, db_pool: Any) -> None:
    """The two parts of one departure (copNo, msgCount 2) are answered apart: a CEB510 naming msgSeqNo 2 moves part 2
    only, and teaches it its preNo."""
    s = export_ship(62)
    payload = samples.export_transport([s], random.Random(62))["CEB509"]
    doc = payload["documents"][0]
    doc.update(msgCount="2")
    second = version(payload, "1", doc["appTime"], msgSeqNo="2")
    for p in (payload, second):
        assert (await api.post_xml(render(p, signer=sign_as_agent))).status == 202
    values = {"guid": second["documents"][0]["guid"], "logisticsCode": doc["logisticsCode"], "copNo": doc["copNo"],
              "preNo": "B20261120000000888", "msgSeqNo": "2", "returnStatus": "399",
              "returnTime": "20261120190000000", "returnInfo": "离境审结"}  # fmt: skip
    reply = await post_receipt(api, "CEB510", values)
    assert reply.status == 200, reply.body
    rows = await db_pool.fetch("SELECT head ->> 'msgSeqNo' AS part, customs_status, pre_no FROM documents"
                               " WHERE message_type = 'CEB509' ORDER BY 1")  # fmt: skip
    assert [tuple(r) for r in rows] == [("1", None, None), ("2", "399", "B20261120000000888")]


@pytest.mark.db
async def test_a_retail_export_return_and_its_tally_through_the_api(db_pool: Any) -> None:
    """A parcel's return (CEB213, JSON) is refused with a precise error where it cannot be right — an import
    inventory's number (422 at its invtNo), a number no stored export inventory has (409), an inventory customs
    numbered but has not released (409), another tenant's inventory (403) — and taken by the inventory's agent once
    customs released the inventory (its CEB604 800 posted at /v1/receipts); the site's tally
    (CEB215, XML) by the site's key whether or not a return is held; the export shipment shows both."""
    s = export_ship(62)
    inv = s.inventory_doc
    site, agent = samples.EXPORT_SITE[0], inv["agentCode"]
    keys = (ApiKey("admin", "admin-key-000000000000", Role.ADMIN),
            ApiKey("site", "site-key-4444444444444", Role.SUBMITTER, frozenset({site})),
            ApiKey("agent", "agent-key-666666666666", Role.SUBMITTER, frozenset({agent})),
            ApiKey("other", "other-key-777777777777", Role.SUBMITTER, frozenset({"9999999999"})))  # fmt: skip
    app = create_app(Settings(api_keys=keys, max_body_bytes=256 * 1024), db_pool, signer=sign_as_agent)
    invt_no = f"{inv['customsCode']}2026E000000062"
    rng = random.Random(62)
    refund = json.loads(json.dumps(samples.export_return(rng, inv, invt_no, now=NOW), default=str))
    tally = render(samples.return_tally(rng, samples.export_return(rng, inv, invt_no, now=NOW), now=NOW))

    async def post(payload: dict[str, Any], key: str = "agent-key-666666666666") -> Any:
        return await client.request("POST", "/v1/messages", key=key, json_body=payload)

    def issue(reply: Any) -> tuple[int, str, str]:
        first = reply.body["error"]["issues"][0]
        return reply.status, first["code"], first["path"]

    head = "/CEB213Message/InvtRefund[1]/InvtRefundHead"
    async with serving(app) as client:
        for code in ("CEB303", "CEB403", "CEB505", "CEB603"):
            assert (await post_export(client, s.payloads()[code])).status == 202, code
        imported = json.loads(json.dumps(refund))
        imported["documents"][0]["invtNo"] = invt_no.replace("E", "I")
        assert issue(await post(imported)) == (422, "rule.invt_no_format", f"{head}/invtNo")
        assert issue(await post(refund)) == (409, "state.no_inventory", "/CEB213Message/InvtRefund[1]")
        for i, status in enumerate(("120", "800")):  # customs numbers the inventory, later releases it
            reply = await post_receipt(client, "CEB604", {
                "guid": inv["guid"], "agentCode": agent, "copNo": inv["copNo"], "preNo": "B20261120000000062",
                "invtNo": invt_no, "ebcCode": inv["ebcCode"], "ebpCode": inv["ebpCode"], "orderNo": inv["orderNo"],
                "statisticsFlag": inv["statisticsFlag"], "returnStatus": status,
                "returnTime": f"2026112016000{i}000", "returnInfo": status})  # fmt: skip
            assert [r["outcome"] for r in reply.body["receipts"]] == ["applied"], reply.body
            if status == "120":  # numbered, not released: its goods have not left
                assert issue(await post(refund)) == (409, "state.inventory_not_released", f"{head}/invtNo")
        assert issue(await post(refund, "other-key-777777777777"))[:2] == (403, "auth.not_your_document")
        taken = await post(refund)
        assert taken.status == 202, taken.body
        assert taken.body["documents"][0]["kind"] == "refund"
        # the export shipment it returns goods of, as it stands (a return reconciles nothing), as a leg's 202 shows it
        key = {"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"], "flow": "export"}
        shown = {**key, "state": "matched", "missing": []}
        assert taken.body["documents"][0]["shipment"] == shown, taken.body
        assert [{k: x[k] for k in shown} for x in taken.body["shipments"]] == [shown], taken.body
        cancel = {"type": "CEB605", "guid": str(uuid.uuid4()).upper(), "documents": [{
            "guid": str(uuid.uuid4()).upper(), "appType": "1", "appTime": "20261120170000", "appStatus": "2",
            **{k: inv[k] for k in ("customsCode", "agentCode", "agentName", "ebcCode", "ebcName")},
            "copNo": "CANCEL-62", "invtNo": invt_no, "reason": "买家取消"}],
            "baseTransfer": {"copCode": agent, "copName": inv["agentName"], "dxpMode": "DXP",
                             "dxpId": "DXPENT0000000001"}}  # fmt: skip
        cancelled = await post(cancel)
        assert cancelled.status == 202, cancelled.body
        assert cancelled.body["documents"][0]["shipment"] == shown, cancelled.body
        assert [{k: x[k] for k in shown} for x in cancelled.body["shipments"]] == [shown], cancelled.body
        counted = await client.post_xml(tally, key="site-key-4444444444444")
        assert counted.status == 202, counted.body
        assert (counted.body["documents"][0]["kind"], counted.body["documents"][0]["shipment"]) == ("refund_tally",
                                                                                                    None)
        view = (await client.get(f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}")).body
        assert sorted(d["message_type"] for d in view["documents"] if d["kind"] in ("refund", "refund_tally")) == [
            "CEB213", "CEB215"]


async def test_a_transport_messages_part_is_keyed_by_its_msg_seq_no_as_an_integer(api: Client, db_pool: Any) -> None:
    """msgSeqNo is an xs:int: a departure's part written "01" is part 1, as customs' CEB510 answering msgSeqNo 1
    names it (and a receipt writing "001" too); the same part sent again as "1" is the same document."""
    s = export_ship(76)
    payload = samples.export_transport([s], random.Random(76))["CEB509"]
    doc = payload["documents"][0]
    doc.update(msgSeqNo="01")
    r = await api.post_xml(render(payload, signer=sign_as_agent))
    assert r.status == 202 and r.body["documents"][0]["keys"]["msgSeqNo"] == "1", r.body
    again = await api.post_xml(render(version(payload, "1", doc["appTime"], msgSeqNo="1"), signer=sign_as_agent))
    assert again.status == 409, again.body
    for i, (seq, status) in enumerate((("1", "120"), ("001", "399"))):
        reply = await post_receipt(api, "CEB510", {
            "guid": doc["guid"], "logisticsCode": doc["logisticsCode"], "copNo": doc["copNo"],
            "preNo": "B20261120000000876", "msgSeqNo": seq, "returnStatus": status,
            "returnTime": f"2026112019000{i}000", "returnInfo": "离境审结"})  # fmt: skip
        assert reply.status == 200 and [x["outcome"] for x in reply.body["receipts"]] == ["applied"], reply.body
    row = await db_pool.fetchrow("SELECT head ->> 'msgSeqNo' AS part, customs_status FROM documents"
                                 " WHERE message_type = 'CEB509' AND doc_guid = $1", doc["guid"])  # fmt: skip
    assert tuple(row) == ("01", "399")  # the document as sent; its key the number
    # migration 260 rewrites a key stored as written before
    async with db_pool.acquire() as conn:
        key2 = await conn.fetchval("SELECT key2 FROM documents WHERE doc_guid = $1", doc["guid"])
        await conn.execute("UPDATE documents SET key2 = $2 WHERE doc_guid = $1", doc["guid"],
                           key2.replace("\x1f1", "\x1f+001"))  # fmt: skip
        await conn.execute(dict(migration_files())["260_msg_seq_no_keys.sql"])
        assert await conn.fetchval("SELECT key2 FROM documents WHERE doc_guid = $1", doc["guid"]) == key2
