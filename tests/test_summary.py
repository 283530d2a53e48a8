"""The summary declaration (汇总申报, spec §4.4 step 4): a CEB701 names B-type export inventories by invtNo; the
gateway refuses what it knows customs would refuse and warns of what may still come right (gateway.summary)."""

from __future__ import annotations

import random
from typing import Any

import asyncpg
import pytest

from gateway import samples
from tests.apiutil import PLATFORM_A, STRANGER, Client
from tests.exportapi import NOW, export_ship, import_ship, post_export, post_json, post_receipt, version, xml

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def declared(api: Client, seed: int, mode: str = "1210", statuses: tuple[str, ...] = ("120", "399", "800"),
                   **inventory: str) -> tuple[dict[str, Any], str]:
    """An export shipment through the API, its inventory receipted by customs (CEB604) with an invtNo: (its head,
    invtNo)."""
    s = export_ship(seed, mode=mode)
    s.inventory_doc.update(inventory)
    for p in (s.order, s.receipt, s.waybill, s.inventory):
        r = await post_export(api, p)
        assert r.status == 202, r.body
    inv = s.inventory_doc
    invt_no = f"{inv['customsCode']}2026E{seed:09d}"
    for i, status in enumerate(statuses):
        r = await post_receipt(api, "CEB604", {
            "guid": inv["guid"], "agentCode": inv["agentCode"], "copNo": inv["copNo"],
            "preNo": f"B2026112000000{seed:04d}", "invtNo": invt_no, "ebcCode": inv["ebcCode"],
            "ebpCode": inv["ebpCode"], "orderNo": inv["orderNo"],
            "statisticsFlag": inv["statisticsFlag"], "returnStatus": status, "returnTime": f"2026112016000{i}000",
            "returnInfo": "ok"})  # fmt: skip
        assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body
    return inv, invt_no


def application(inventories: list[dict[str, Any]], invt_nos: list[str], seed: int = 1) -> dict[str, Any]:
    return samples.summary_application(random.Random(seed), inventories, invt_nos, now=NOW)


@pytest.mark.db
async def test_a_summary_of_released_b_type_inventories_is_stored(api: Client, db_pool: asyncpg.Pool) -> None:
    a, a_no = await declared(api, 11)
    b, b_no = await declared(api, 12)
    p = application([a, b], [a_no, b_no])
    r = await post_export(api, p)
    assert r.status == 202, r.body
    [doc] = r.body["documents"]
    keys = {"agentCode": a["agentCode"], "copNo": p["documents"][0]["copNo"]}
    assert (doc["kind"], doc["outcome"], doc["keys"]) == ("summary", "accepted", keys)
    assert "warnings" not in r.body
    stored = await db_pool.fetchrow("SELECT kind, is_current, lines FROM documents WHERE message_type = 'CEB701'")
    assert stored["kind"] == "summary" and stored["is_current"]
    got = (await api.get(f"/v1/messages/{p['guid']}")).body
    assert [d["message_type"] for d in got["documents"]] == ["CEB701"]
    # the same key declared again is a duplicate; a change (appType 2, newer) replaces it
    again = application([a], [a_no], seed=2)
    again["documents"][0]["copNo"] = p["documents"][0]["copNo"]
    r = await post_export(api, again)
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "state.duplicate", r.body
    again["documents"][0].update(appType="2", appTime="20261120160000")
    r = await post_export(api, again)
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "replaced", r.body


@pytest.mark.db
async def test_an_a_type_inventory_refuses_the_summary(api: Client, db_pool: asyncpg.Pool) -> None:
    a, a_no = await declared(api, 13, mode="9610")  # the 9610 sample is a simplified declaration (A)
    assert a["statisticsFlag"] == "A"
    b, b_no = await declared(api, 14)
    r = await post_export(api, application([b], [b_no, a_no]))
    assert r.status == 409, r.body
    assert [(i["code"], i["path"]) for i in r.body["error"]["issues"]] == [
        ("summary.inventory_not_b_type", "/CEB701Message/SummaryApply[1]/SummaryApplyList[2]/invtNo")]
    assert a_no in r.body["error"]["issues"][0]["message"]
    assert await db_pool.fetchval("SELECT count(*) FROM documents WHERE message_type = 'CEB701'") == 0


@pytest.mark.db
async def test_another_consignors_inventory_refuses_the_summary(api: Client) -> None:
    _, a_no = await declared(api, 15, ebcCode="4601260E99")
    b, b_no = await declared(api, 16)
    r = await post_export(api, application([b], [a_no, b_no]))
    assert r.status == 409, r.body
    assert [(i["code"], i["path"]) for i in r.body["error"]["issues"]] == [
        ("summary.inventory_other_enterprise", "/CEB701Message/SummaryApply[1]/SummaryApplyList[1]/invtNo")]


@pytest.mark.db
async def test_a_withdrawn_inventory_refuses_the_summary(api: Client) -> None:
    a, a_no = await declared(api, 17)
    r = await post_export(api, version(export_ship(17, mode="1210").inventory, "3", "20261120170000"))
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "withdrawn", r.body
    r = await post_export(api, application([a], [a_no]))
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "summary.inventory_withdrawn", r.body


@pytest.mark.db
async def test_an_import_inventorys_number_refuses_the_summary(api: Client) -> None:
    im = import_ship(18)
    for p in (im.order, im.payment, im.waybill, im.inventory):
        r = await post_json(api, p)
        assert r.status == 202, r.body
    inv = im.inventory_doc
    r = await post_receipt(api, "CEB622", {
        "guid": inv["guid"], "customsCode": inv["customsCode"], "ebpCode": inv["ebpCode"], "ebcCode": inv["ebcCode"],
        "agentCode": inv["agentCode"], "copNo": inv["copNo"], "preNo": "B20261120000000018",
        "invtNo": "460120261000000018", "returnStatus": "120", "returnTime": "20261120160000000", "returnInfo": "ok"})
    assert r.status == 200, r.body
    b, b_no = await declared(api, 19)
    r = await post_export(api, application([b], [b_no, "460120261000000018"]))
    assert r.status == 409, r.body
    assert [i["code"] for i in r.body["error"]["issues"]] == ["summary.inventory_not_export"]


@pytest.mark.db
async def test_unknown_and_unreleased_inventories_are_warnings(api: Client, db_pool: asyncpg.Pool) -> None:
    a, a_no = await declared(api, 20, statuses=("120",))
    r = await post_export(api, application([a], [a_no, "51412026E999999999"]))
    assert r.status == 202, r.body
    assert [(w["code"], w["path"]) for w in r.body["warnings"]] == [
        ("summary.inventory_not_released", "/CEB701Message/SummaryApply[1]/SummaryApplyList[1]/invtNo"),
        ("summary.inventory_unknown", "/CEB701Message/SummaryApply[1]/SummaryApplyList[2]/invtNo"),
    ]
    assert await db_pool.fetchval("SELECT count(*) FROM documents WHERE message_type = 'CEB701'") == 1


@pytest.mark.db
async def test_a_summary_is_its_enterprises_only(api: Client) -> None:
    """Access by enterprise codes, as for every declaration: a key holding none of the application's codes (agentCode,
    ebcCode, declAgentCode) is refused, and does not see a stored one."""
    a, a_no = await declared(api, 21)
    p = application([a], [a_no])
    r = await api.post_xml(xml(p), key=STRANGER)
    assert r.status == 403 and r.body["error"]["issues"][0]["code"] == "auth.not_your_document", r.body
    r = await api.post_xml(xml(p), key=PLATFORM_A)  # holds the consignor's code
    assert r.status == 202, r.body
    assert (await api.get(f"/v1/messages/{p['guid']}", key=STRANGER)).status == 404
    assert (await api.get(f"/v1/messages/{p['guid']}", key=PLATFORM_A)).status == 200


@pytest.mark.db
async def test_a_summary_in_json_is_signed_and_stored(api: Client) -> None:
    a, a_no = await declared(api, 22)
    p = application([a], [a_no])
    r = await post_json(api, p)
    assert r.status == 202 and r.body["documents"][0]["kind"] == "summary", r.body
    raw = (await api.get(f"/v1/messages/{p['guid']}")).body["raw_xml"]
    assert "<ds:Signature" in raw and "<ceb:msgCount>1</ceb:msgCount>" in raw


@pytest.mark.db
async def test_the_read_of_the_named_inventories_probes_indexes(api: Client, db_pool: asyncpg.Pool) -> None:
    from gateway import db, summary
    from tests.planutil import full_scans

    await declared(api, 23)
    async with db_pool.acquire() as conn:
        await conn.execute("ANALYZE documents")
        found = await full_scans(conn, begin=db.BEGIN_SNAPSHOT_PLANNED, module=summary,
                                 cases={"HELD_INVENTORIES": "ARRAY['51412026E000000001'], 60"})  # fmt: skip
    assert found == {}
