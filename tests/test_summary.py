"""The summary declaration (汇总申报, spec §4.4 step 4): a CEB701 names B-type export inventories by invtNo; the
gateway refuses what it knows customs would refuse and warns of what may still come right (gateway.summary)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import asyncpg
import pytest
from lxml import etree

from adapters import dxp
from gateway import samples
from gateway.messages import CEB_NS
from gateway.render import new_guid, render
from gateway.sandbox.app import RunningSandbox
from gateway.sandbox.recorder import Recorder
from tests.apiutil import OPERATOR, PLATFORM_A, STRANGER, Client, linked_apps, sign_as_agent
from tests.consoleutil import ConsoleClient, FeedWatch
from tests.exportapi import NOW, export_ship, import_ship, post_export, post_json, post_receipt, version, xml
from tests.forwardutil import Stack, running_stack, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


#: The receipts of an export inventory customs took but has not released: one withdrawn after its 800 is refused
#: (state.inventory_released), customs takes no change or deletion of a released inventory.
UNRELEASED = ("120", "399")


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


async def cancelled(api: Client, a: dict[str, Any], a_no: str) -> dict[str, str]:
    """The inventory ``a`` (numbered ``a_no``) cancelled by its agent (CEB605, accepted): the cancellation's head."""
    cancel = {"guid": new_guid(), "appType": "1", "appTime": "20261120170000", "appStatus": "2",
              "customsCode": a["customsCode"], "copNo": f"C{a['copNo']}"[:30], "invtNo": a_no, "reason": "买家取消订单",
              "agentCode": a["agentCode"], "agentName": a["agentName"], "ebcCode": a["ebcCode"],
              "ebcName": a["ebcName"]}  # fmt: skip
    r = await post_export(api, {"type": "CEB605", "guid": new_guid(), "version": "1.0", "documents": [cancel],
                                "baseTransfer": {"copCode": a["agentCode"], "copName": a["agentName"],
                                                 "dxpMode": "DXP", "dxpId": "DXPENT0000000001"}})  # fmt: skip
    assert r.status == 202, r.body
    return cancel


async def concluded(api: Client, cancel: dict[str, str], pre_no: str) -> None:
    """Customs concludes the cancellation (CEB606 2, then 399): its inventory is void."""
    for i, status in enumerate(("2", "399")):
        r = await post_receipt(api, "CEB606", {
            "guid": cancel["guid"], "agentCode": cancel["agentCode"], "copNo": cancel["copNo"], "preNo": pre_no,
            "invtNo": cancel["invtNo"], "returnStatus": status, "returnTime": f"2026112017100{i}000",
            "returnInfo": "ok"})  # fmt: skip
        assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body


def application(inventories: list[dict[str, Any]], invt_nos: list[str], seed: int = 1) -> dict[str, Any]:
    return samples.summary_application(random.Random(seed), inventories, invt_nos, now=NOW)


async def split_application(api: Client, seed: int) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """One application in two parts (msgCount 2) of one copNo, each naming an inventory of its own (declared with
    ``seed`` and ``seed`` + 1): (part 1, part 2, their invtNos), not yet sent."""
    a, a_no = await declared(api, seed)
    _, b_no = await declared(api, seed + 1)
    p = application([a], [a_no], seed=seed)
    p["documents"][0].update(msgCount="2", msgSeqNo="1")
    return p, version(p, "1", p["documents"][0]["appTime"], msgSeqNo="2", items=[{"invtNo": b_no}]), [a_no, b_no]


@pytest.mark.db
async def test_a_summary_of_released_b_type_inventories_is_stored(api: Client, db_pool: asyncpg.Pool) -> None:
    a, a_no = await declared(api, 11)
    b, b_no = await declared(api, 12)
    p = application([a, b], [a_no, b_no])
    r = await post_export(api, p)
    assert r.status == 202, r.body
    [doc] = r.body["documents"]
    keys = {"agentCode": a["agentCode"], "copNo": p["documents"][0]["copNo"], "msgSeqNo": "1"}
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
async def test_a_split_summary_application_goes_in_parts_of_one_copno(api: Client) -> None:
    """A.29/A.30: msgCount / msgSeqNo split one application, and CEB702 answers copNo + msgSeqNo: the parts share the
    copNo and are keyed by (agentCode, copNo, msgSeqNo), as the export transport messages are. Each part gets its
    own receipts; the view of the copNo shows every part."""
    p, second, _ = await split_application(api, 73)
    assert (await post_export(api, p)).status == 202
    r = await post_export(api, second)
    assert r.status == 202 and r.body["documents"][0]["keys"]["msgSeqNo"] == "2", r.body
    r = await post_export(api, version(second, "1", p["documents"][0]["appTime"]))
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "state.duplicate", r.body
    doc = p["documents"][0]
    for seq, guid in (("1", doc["guid"]), ("2", second["documents"][0]["guid"])):
        r = await post_receipt(api, "CEB702", {
            "guid": guid, "agentCode": doc["agentCode"], "ebcCode": doc["ebcCode"], "copNo": doc["copNo"],
            "preNo": f"S2026112000000007{seq}", "msgSeqNo": seq, "returnStatus": "2",
            "returnTime": f"2026112017000{seq}000", "returnInfo": "ok"})  # fmt: skip
        assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body
    view = (await api.get(f"/v1/summaries/{doc['agentCode']}/{doc['copNo']}")).body
    assert [(d["keys"]["msgSeqNo"], d["pre_no"]) for d in view["documents"]] == [
        ("2", "S20261120000000072"), ("1", "S20261120000000071")], view["documents"]
    assert [(x["msgSeqNo"], x["preNo"]) for x in view["parts"]] == [
        ("1", "S20261120000000071"), ("2", "S20261120000000072")], view["parts"]
    assert view["preNo"] == "S20261120000000071"


@pytest.mark.db
async def test_migration_250_keys_the_stored_applications_by_their_part(api: Client, db_pool: asyncpg.Pool) -> None:
    """Applications stored when a summary was keyed by copNo alone get the part in their key (and their broker among
    their parties): the view and a change find them."""
    from gateway import db

    a, a_no = await declared(api, 26)
    p = application([a], [a_no], seed=26)
    doc = p["documents"][0]
    doc.update(declAgentCode="4601980H99")
    assert (await post_export(api, p)).status == 202
    async with db_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET key2 = split_part(key2, E'\\x1f', 1),"
                           " parties = array_remove(parties, '4601980H99') WHERE message_type = 'CEB701'")
        r = await post_export(api, version(p, "2", "20261120160000"))
        assert r.status == 409, r.body  # its change is keyed by the part: it finds nothing to change
        await conn.execute(dict(db.migration_files())["250_summary_lines.sql"])
        row = await conn.fetchrow("SELECT key2, parties FROM documents WHERE message_type = 'CEB701'")
    assert row["key2"] == f"{doc['copNo']}\x1f1" and "4601980H99" in row["parties"], row
    assert (await api.get(f"/v1/summaries/{doc['agentCode']}/{doc['copNo']}")).status == 200
    r = await post_export(api, version(p, "2", "20261120161000"))
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "replaced", r.body


@pytest.mark.db
async def test_a_retry_of_a_stored_summary_is_answered_as_a_replay(api: Client) -> None:
    """The same guid with the same bytes gets the original answer (README "Idempotency"), even when an inventory it
    names was cancelled since (released, it takes no withdrawal): the application was stored and forwarded, the
    retry changes nothing."""
    a, a_no = await declared(api, 79)
    body = xml(application([a], [a_no], seed=79))
    first = await api.post_xml(body)
    assert first.status == 202, first.body
    await concluded(api, await cancelled(api, a, a_no), "B20261120000000979")
    r = await post_export(api, application([a], [a_no], seed=80))
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "summary.inventory_withdrawn", r.body
    again = await api.post_xml(body)
    assert (again.status, again.headers.get("Idempotent-Replay")) == (202, "true"), (again.status, again.body)
    assert again.body == first.body


@pytest.mark.db
async def test_a_replay_answers_the_first_answer_s_warnings_too(api: Client) -> None:
    """The warnings (inventories the gateway does not hold) are part of the answer: stored with it, and a retry of the
    same message gets them again with the rest."""
    body = (Path(__file__).parent / "data" / "samples" / "CEB701-1210.xml").read_bytes()
    first = await api.post_xml(body)
    assert first.status == 202 and {w["code"] for w in first.body["warnings"]} == {"summary.inventory_unknown"}
    again = await api.post_xml(body)
    assert again.headers.get("Idempotent-Replay") == "true" and again.body == first.body


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
async def test_another_consignors_inventory_answers_as_unknown(api: Client) -> None:
    """Another consignor's inventory is not the applicant's to know of: named, it answers as an invtNo the gateway
    does not hold (a warning; customs decides), its enterprise and keys unsaid."""
    other, a_no = await declared(api, 15, ebcCode="4601260E99")
    b, b_no = await declared(api, 16)
    r = await post_export(api, application([b], [a_no, b_no]))
    assert r.status == 202, r.body
    assert [(w["code"], w["path"]) for w in r.body["warnings"]] == [
        ("summary.inventory_unknown", "/CEB701Message/SummaryApply[1]/SummaryApplyList[1]/invtNo")]
    assert "4601260E99" not in json.dumps(r.body) and other["copNo"] not in json.dumps(r.body)


@pytest.mark.db
async def test_the_refusal_discloses_nothing_of_another_tenants_inventories(api: Client) -> None:
    """A submitter holding only its own code names another enterprise's invtNos in its own application: a withdrawn
    export inventory and an import one it is no party of answer exactly as an invtNo never given (a 202 with
    summary.inventory_unknown), naming none of their enterprises' codes or numbers."""
    a, a_no = await declared(api, 71, statuses=UNRELEASED)  # withdrawn below: released, it could not be
    withdrawal = version(export_ship(71, mode="1210").inventory, "3", "20261120170000")
    assert (await post_export(api, withdrawal)).status == 202
    im = import_ship(70)
    for p in (im.order, im.payment, im.waybill, im.inventory):
        assert (await post_json(api, p)).status == 202
    inv = im.inventory_doc
    r = await post_receipt(api, "CEB622", {
        "guid": inv["guid"], "customsCode": inv["customsCode"], "ebpCode": inv["ebpCode"], "ebcCode": inv["ebcCode"],
        "agentCode": inv["agentCode"], "copNo": inv["copNo"], "preNo": "B20261120000000070",
        "invtNo": "460120261000000070", "returnStatus": "120", "returnTime": "20261120160000000", "returnInfo": "ok"})
    assert r.status == 200, r.body
    answers = []
    for seed, named in enumerate((a_no, "460120261000000070", "51412026E999999970"), start=71):
        p = application([a], [named], seed=seed)
        p["documents"][0].update(agentCode="9999999999", ebcCode="9999999999", declAgentCode="9999999999")
        p["baseTransfer"]["copCode"] = "9999999999"
        r = await api.post_xml(render(p, signer=sign_as_agent), key=STRANGER)
        text = json.dumps(r.body, ensure_ascii=False)
        for secret in (a["copNo"], a["ebcCode"], inv["ebcCode"], inv["orderNo"], inv["copNo"]):
            assert secret not in text, (r.status, text)
        answers.append((r.status, [(w["code"], w["path"]) for w in r.body.get("warnings", [])]))
    unknown = (202, [("summary.inventory_unknown", "/CEB701Message/SummaryApply[1]/SummaryApplyList[1]/invtNo")])
    assert answers == [unknown] * 3, answers
    # naming the consignor in its own application (its own agentCode, the consignor's ebcCode) tells it no more: the
    # inventories judged are those its key may read
    p = application([a], [a_no], seed=74)
    p["documents"][0].update(agentCode="9999999999", declAgentCode="9999999999")
    p["baseTransfer"]["copCode"] = "9999999999"
    r = await api.post_xml(render(p, signer=sign_as_agent), key=STRANGER)
    assert (r.status, [(w["code"], w["path"]) for w in r.body.get("warnings", [])]) == unknown, r.body
    assert a["copNo"] not in json.dumps(r.body, ensure_ascii=False)


@pytest.mark.db
async def test_a_withdrawn_inventory_refuses_the_summary(api: Client) -> None:
    a, a_no = await declared(api, 17, statuses=UNRELEASED)  # withdrawn below: released, it could not be
    r = await post_export(api, version(export_ship(17, mode="1210").inventory, "3", "20261120170000"))
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "withdrawn", r.body
    r = await post_export(api, application([a], [a_no]))
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "summary.inventory_withdrawn", r.body


@pytest.mark.db
async def test_a_cancelled_inventory_refuses_the_summary(api: Client) -> None:
    """An inventory whose cancellation (CEB605) customs concluded (CEB606 399) is void: not to be summarised."""
    a, a_no = await declared(api, 24)
    cancel = await cancelled(api, a, a_no)
    r = await post_export(api, application([a], [a_no]))
    assert r.status == 202, r.body  # not concluded yet: the inventory stands
    shipment = f"/v1/shipments/{a['ebpCode']}/{a['orderNo']}"
    assert (await api.get(shipment)).body["summary"]["state"] == "applied"
    await concluded(api, cancel, "B20261120000000924")
    r = await post_export(api, application([a], [a_no], seed=5))
    assert r.status == 409, r.body
    [issue] = r.body["error"]["issues"]
    assert issue["code"] == "summary.inventory_withdrawn" and "cancelled" in issue["message"], issue
    # the parcel's own view says so: void, not to be summarised — the application naming it is listed, to be
    # withdrawn or changed
    mine = (await api.get(shipment)).body["summary"]
    assert mine["state"] == "cancelled" and [x["copNo"] for x in mine["applications"]] == [
        application([a], [a_no])["documents"][0]["copNo"]], mine


@pytest.mark.db
async def test_a_summary_is_withdrawn_whatever_became_of_its_inventories(api: Client) -> None:
    """A withdrawal (appType 3) summarises nothing: it is not judged by the inventories it names, and an exporter
    whose inventory was cancelled withdraws the application that names it."""
    a, a_no = await declared(api, 72)
    p = application([a], [a_no], seed=72)
    assert (await post_export(api, p)).status == 202
    cancel = await cancelled(api, a, a_no)
    await concluded(api, cancel, "B20261120000000972")
    r = await post_export(api, version(p, "3", "20261120180000"))
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "withdrawn", (r.status, r.body)
    assert "warnings" not in r.body


@pytest.mark.db
async def test_the_number_of_a_declaration_before_its_key_was_declared_anew_names_nothing(api: Client) -> None:
    """An inventory with invtNo N1 is withdrawn and its key declared anew (appType 1); customs gives the new
    declaration N2 and releases it. N1 names nothing live any more: a summary naming it is told so (not judged by the
    key's new declaration, which is N2's)."""
    a, n1 = await declared(api, 80, statuses=UNRELEASED)  # withdrawn below: released, it could not be
    inventory = export_ship(80, mode="1210").inventory
    r = await post_export(api, version(inventory, "3", "20261120170000"))
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "withdrawn", r.body
    anew = version(inventory, "1", "20261120171000")
    assert (await post_export(api, anew)).status == 202
    d = anew["documents"][0]
    n2 = f"{d['customsCode']}2026E{881:09d}"
    for i, status in enumerate(("120", "399", "800")):
        r = await post_receipt(api, "CEB604", {
            "guid": d["guid"], "agentCode": d["agentCode"], "copNo": d["copNo"], "preNo": "B20261120000000881",
            "invtNo": n2, "ebcCode": d["ebcCode"], "ebpCode": d["ebpCode"], "orderNo": d["orderNo"],
            "statisticsFlag": d["statisticsFlag"], "returnStatus": status, "returnTime": f"2026112017200{i}000",
            "returnInfo": "ok"})  # fmt: skip
        assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body
    r = await post_export(api, application([a], [n1, n2], seed=80))
    assert r.status == 202, r.body
    assert [(w["code"], w["path"]) for w in r.body["warnings"]] == [
        ("summary.inventory_unknown", "/CEB701Message/SummaryApply[1]/SummaryApplyList[1]/invtNo")]


@pytest.mark.db
async def test_a_period_summary_is_not_judged_by_the_list_customs_ignores(api: Client) -> None:
    """A.29: with startTime and endTime the list is ignored and the period summarised. An A-type inventory in the list
    of a period application refuses nothing; the declarant is told the list goes unread."""
    _, a_no = await declared(api, 77, mode="9610")  # A-type
    b, _ = await declared(api, 78)
    p = application([b], [a_no], seed=77)
    p["documents"][0].update(startTime="20261101000000", endTime="20261120000000")
    r = await post_export(api, p)
    assert r.status == 202, r.body
    assert [(w["code"], w["path"]) for w in r.body["warnings"]] == [
        ("summary.list_ignored", "/CEB701Message/SummaryApply[1]/SummaryApplyHead/startTime")]


@pytest.mark.db
async def test_an_inventory_is_named_by_one_live_summary_only(api: Client) -> None:
    """One released B-type inventory in two live summary applications of its consignor would be declared twice, its
    VAT refund claimed twice: the second is refused (summary.inventory_summarised). A change of the first (appType 2)
    names it again, and once the first is withdrawn another application may name it."""
    a, a_no = await declared(api, 82)
    b, b_no = await declared(api, 84)
    first = application([a], [a_no], seed=82)
    assert (await post_export(api, first)).status == 202
    r = await post_export(api, application([b, a], [b_no, a_no], seed=83))
    assert r.status == 409, r.body
    [issue] = r.body["error"]["issues"]
    assert (issue["code"], issue["path"]) == (
        "summary.inventory_summarised", "/CEB701Message/SummaryApply[1]/SummaryApplyList[2]/invtNo"), issue
    assert first["documents"][0]["copNo"] in issue["message"]
    r = await post_export(api, version(first, "2", "20261120160000", items=[{"invtNo": a_no}, {"invtNo": b_no}]))
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "replaced", r.body
    assert (await post_export(api, version(first, "3", "20261120170000"))).status == 202
    r = await post_export(api, application([b, a], [b_no, a_no], seed=83))
    assert r.status == 202 and "warnings" not in r.body, r.body


async def summary_receipt(api: Client, version: dict[str, Any], status: str, at: str) -> None:
    """Customs' CEB702 answering one version of a (not split) summary application with ``status``."""
    doc = version["documents"][0]
    r = await post_receipt(api, "CEB702", {
        "guid": doc["guid"], "agentCode": doc["agentCode"], "ebcCode": doc["ebcCode"], "copNo": doc["copNo"],
        "preNo": "S20261120000000081", "msgSeqNo": "1", "returnStatus": status, "returnTime": at,
        "returnInfo": "ok" if status != "100" else "refused"})  # fmt: skip
    assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body


async def sum_numbered(api: Client, doc: dict[str, Any], sum_no: str, pre_no: str, seq: str = "1") -> None:
    """Customs takes an application's part ``seq`` (``doc``; CEB702 2) and gives it its sumNo (399), both applied."""
    for i, (status, extra) in enumerate((("2", {}), ("399", {"sumNo": sum_no}))):
        r = await post_receipt(api, "CEB702", {
            "guid": doc["guid"], "agentCode": doc["agentCode"], "ebcCode": doc["ebcCode"], "copNo": doc["copNo"],
            "preNo": pre_no, "msgSeqNo": seq, "returnStatus": status, "returnTime": f"20261120170{seq}0{i}000",
            "returnInfo": "ok", **extra})  # fmt: skip
        assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body


@pytest.mark.db
async def test_under_a_refused_change_the_version_customs_accepted_stays_live(api: Client) -> None:
    """A change (appType 2) or withdrawal (appType 3) customs refuses (CEB702 100) leaves customs holding the version
    it took before: what that version names stays summarised, what only the refused change names is free."""
    a, a_no = await declared(api, 88)
    b, b_no = await declared(api, 89)
    first = application([a], [a_no], seed=88)
    assert (await post_export(api, first)).status == 202
    await summary_receipt(api, first, "2", "20261120150000000")
    await summary_receipt(api, first, "399", "20261120150100000")
    change = version(first, "2", "20261120160000", items=[{"invtNo": b_no}])
    r = await post_export(api, change)
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "replaced", r.body
    await summary_receipt(api, change, "100", "20261120160100000")
    r = await post_export(api, application([a], [a_no], seed=188))
    assert r.status == 409, r.body
    [issue] = r.body["error"]["issues"]
    assert issue["code"] == "summary.inventory_summarised" and first["documents"][0]["copNo"] in issue["message"], issue
    withdrawal = version(first, "3", "20261120170000")
    assert (await post_export(api, withdrawal)).status == 202
    await summary_receipt(api, withdrawal, "100", "20261120170100000")
    r = await post_export(api, application([a], [a_no], seed=189))
    assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "summary.inventory_summarised", r.body
    r = await post_export(api, application([b], [b_no], seed=190))
    assert r.status == 202 and "warnings" not in r.body, r.body
    # the application is current again, not withdrawn: a change of it is taken (not state.not_found)
    r = await post_export(api, version(first, "2", "20261120180000"))
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "replaced", r.body


@pytest.mark.db
async def test_a_temporary_save_blocks_no_other_application(api: Client) -> None:
    """A temporarily saved application (appStatus 1, 暂存) is stored at E-Port, never declared: customs does not know
    it, so it does not make an inventory it names summarised — another application of the consignor may name it.
    Under a temp-saved change customs still holds the version declared before: what that one names stays taken, what
    only the temporary save names is free."""
    a, a_no = await declared(api, 85)
    b, b_no = await declared(api, 86)
    c, c_no = await declared(api, 87)
    saved = application([a], [a_no], seed=85)
    saved["documents"][0]["appStatus"] = "1"
    assert (await post_export(api, saved)).status == 202
    r = await post_export(api, application([a], [a_no], seed=185))
    assert r.status == 202 and "warnings" not in r.body, r.body
    first = application([b], [b_no], seed=86)
    assert (await post_export(api, first)).status == 202
    r = await post_export(api, version(first, "2", "20261120160000", appStatus="1", items=[{"invtNo": c_no}]))
    assert r.status == 202 and r.body["documents"][0]["outcome"] == "replaced", r.body
    r = await post_export(api, application([b], [b_no], seed=186))
    assert r.status == 409, r.body
    [issue] = r.body["error"]["issues"]
    assert issue["code"] == "summary.inventory_summarised" and first["documents"][0]["copNo"] in issue["message"], issue
    r = await post_export(api, application([c], [c_no], seed=187))
    assert r.status == 202 and "warnings" not in r.body, r.body


@pytest.mark.db
async def test_two_applications_naming_one_inventory_at_once_are_judged_one_after_the_other(api: Client) -> None:
    """Two applications of one consignor naming one inventory, submitted at the same instant: the second is judged
    under the invtNo's lock, after the first committed, and refused as it would be sequentially (one is accepted,
    every round)."""
    for n in range(6):
        a, a_no = await declared(api, 90 + n)
        one, other = application([a], [a_no], seed=900 + n), application([a], [a_no], seed=950 + n)
        answers = await asyncio.gather(post_export(api, one), post_export(api, other))
        assert sorted(r.status for r in answers) == [202, 409], [(r.status, r.body) for r in answers]
        [refused] = [r for r in answers if r.status == 409]
        assert [(i["code"], i["path"]) for i in refused.body["error"]["issues"]] == [
            ("summary.inventory_summarised", "/CEB701Message/SummaryApply[1]/SummaryApplyList[1]/invtNo")], refused.body


@pytest.mark.db
async def test_two_applications_at_once_in_two_api_processes_are_judged_one_after_the_other(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The same, the two sent to two API processes at once (`cbec serve --processes N`): the other process's
    application reaches the first's store over the ingest link with what it read of its inventories, and is judged
    there under the same lock."""
    async with linked_apps(db_pool, tmp_path) as (first, second, _):
        for n in range(6):
            a, a_no = await declared(first, 60 + n)
            one, other = application([a], [a_no], seed=600 + n), application([a], [a_no], seed=650 + n)
            answers = await asyncio.gather(post_export(first, one), post_export(second, other))
            assert sorted(r.status for r in answers) == [202, 409], [(r.status, r.body) for r in answers]


@pytest.mark.db
async def test_two_applications_of_one_message_naming_one_inventory_are_refused(
    api: Client, db_pool: asyncpg.Pool
) -> None:
    """Each application of a message is judged against the applications stored; two of one message naming one
    inventory would both be stored, and customs would refuse the later: the message is refused (409, nothing stored),
    the later application's invtNo pointed at and the earlier named. A temporary save (appStatus 1) blocks nothing
    here either; one application listing an invtNo twice is refused by the rules (422)."""
    a, a_no = await declared(api, 96)
    b, b_no = await declared(api, 97)
    p = application([a], [a_no], seed=96)
    p["documents"].append(application([b, a], [b_no, a_no], seed=97)["documents"][0])
    r = await post_export(api, p)
    assert r.status == 409, r.body
    assert [(i["code"], i["path"]) for i in r.body["error"]["issues"]] == [
        ("summary.inventory_named_twice", "/CEB701Message/SummaryApply[2]/SummaryApplyList[2]/invtNo")], r.body
    assert f"copNo {p['documents'][0]['copNo']}" in r.body["error"]["issues"][0]["message"]
    assert await db_pool.fetchval("SELECT count(*) FROM documents WHERE message_type = 'CEB701'") == 0
    twice = application([a, b], [a_no, b_no, a_no], seed=98)
    r = await post_export(api, twice)
    assert r.status == 422 and [(i["code"], i["path"]) for i in r.body["error"]["issues"]] == [
        ("rule.summary_duplicate_inventory", "/CEB701Message/SummaryApply[1]/SummaryApplyList[3]/invtNo")], r.body
    p["guid"] = new_guid()
    p["documents"][0].update(guid=new_guid(), appStatus="1")
    r = await post_export(api, p)
    assert r.status == 202 and [d["outcome"] for d in r.body["documents"]] == ["accepted", "accepted"], r.body


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
async def test_the_customs_broker_of_a_summary_is_its_party(api: Client) -> None:
    """The customs broker (declAgentCode, 报关单位) files the declaration a summary becomes (A.29, A.31 name it): a key
    holding its code submits and reads the application as the agent and the consignor do; the consignor's
    inventories, of which it is no party, it is told nothing of (they answer as unknown)."""
    a, a_no = await declared(api, 25)
    p = application([a], [a_no], seed=25)
    doc = p["documents"][0]
    doc.update(declAgentCode="9999999999", declAgentName="报关行")
    r = await api.post_xml(xml(p), key=STRANGER)
    assert r.status == 202, r.body
    assert [w["code"] for w in r.body["warnings"]] == ["summary.inventory_unknown"]
    assert (await api.get(f"/v1/messages/{p['guid']}", key=STRANGER)).status == 200
    assert (await api.get(f"/v1/summaries/{doc['agentCode']}/{doc['copNo']}", key=STRANGER)).status == 200


@pytest.mark.db
async def test_a_summary_in_json_is_signed_and_stored(api: Client) -> None:
    a, a_no = await declared(api, 22)
    p = application([a], [a_no])
    r = await post_json(api, p)
    assert r.status == 202 and r.body["documents"][0]["kind"] == "summary", r.body
    raw = (await api.get(f"/v1/messages/{p['guid']}")).body["raw_xml"]
    assert "<ds:Signature" in raw and "<ceb:msgCount>1</ceb:msgCount>" in raw



async def test_an_inventorys_summary_says_where_its_items_were_declared() -> None:
    """gateway.summary.inventory_summary, pure: the state from what is known (a declaration, else an application,
    else released or not); a declaration by its declSeqNo, its status the newest record's, its items this
    inventory's alone as every record listed them (an item listed again once, in gnum order)."""
    from datetime import UTC

    from gateway.summary import inventory_summary

    when = datetime(2026, 12, 6, tzinfo=UTC)

    def record(i: int, decl: str, state: str, items: list[tuple[str, str, str]]) -> dict[str, Any]:
        return {"id": i, "return_status": state, "return_time": f"2026120610000{i}", "return_info": "",
                "received_at": when, "doc_guid": f"g{i}",
                "keys": {"sumNo": "S1", "declSeqNo": decl, "entryId": f"E{decl}",
                         "items": [{"invtNo": no, "gnum": g, "gseqno": q, "logisticsNo": "L"} for no, g, q in items]}}

    app = {"key1": "AGENT", "key2": "COP1\x1f1", "pre_no": "P1", "sum_no": "S1", "forward_state": "receipted",
           "customs_status": "399"}
    assert inventory_summary(None, False, [], [])["state"] == "not_released"
    assert inventory_summary("I1", True, [], [])["state"] == "awaiting"
    assert inventory_summary("I1", True, [], [], cancelled=True)["state"] == "cancelled"
    assert inventory_summary("I1", True, [app], [], cancelled=True)["state"] == "cancelled"
    applied = inventory_summary("I1", True, [app], [])
    assert applied["state"] == "applied" and applied["applications"] == [
        {"agentCode": "AGENT", "copNo": "COP1", "msgSeqNo": "1", "preNo": "P1", "sumNo": "S1",
         "forward_state": "receipted", "customs_status": "399"}]  # fmt: skip
    declared = inventory_summary("I1", True, [app], [
        record(1, "D1", "10", [("I1", "2", "5"), ("I2", "1", "1"), ("I1", "10", "6")]),
        record(2, "D2", "10", [("I1", "1", "1")]),
        record(3, "D1", "20", [("I1", "2", "5"), ("I1", "3", "7")]),  # D1 again: further, one item more
    ])
    assert declared["state"] == "declared" and declared["invtNo"] == "I1"
    d1, d2 = declared["declarations"]
    assert (d1["declSeqNo"], d1["entryId"], d1["decState"], d1["sumNo"]) == ("D1", "ED1", "20", "S1")
    assert [(i["gnum"], i["gseqno"]) for i in d1["items"]] == [("2", "5"), ("3", "7"), ("10", "6")]
    assert [(i["gnum"], i["gseqno"]) for i in d2["items"]] == [("1", "1")]


async def test_an_inventory_awaits_its_summary_as_long_as_an_application_naming_it_would_be_taken_as_it_is() -> None:
    """gateway.summary.pending: B-type, released, neither withdrawn nor cancelled, named by no live application of
    its consignor (one of a period, or of another consignor, names nothing of it)."""
    from gateway.receipts import RANK_RELEASED
    from gateway.summary import HeldInventory, LiveSummary, pending

    inv = HeldInventory(invt_no="I1", message_type="CEB603", ebc_code="E1", parties=frozenset({"E1", "A1"}),
                        statistics_flag="B", withdrawn=False, cancelled=False, customs_rank=RANK_RELEASED,
                        key=("A1", "COP1"))  # fmt: skip

    def live(ebc: str = "E1", period: bool = False) -> LiveSummary:
        return LiveSummary(invt_no="I1", key=("A1", "SUM1\x1f1"), ebc_code=ebc, parties=frozenset({ebc}), period=period)

    assert pending(inv, [])
    assert pending(inv, [live(period=True), live(ebc="E2")])
    assert not pending(inv, [live()])
    for change in ({"statistics_flag": "A"}, {"withdrawn": True}, {"cancelled": True},
                   {"customs_rank": RANK_RELEASED - 1}, {"message_type": "CEB621"}):
        assert not pending(replace(inv, **change), []), change

@pytest.mark.db
async def test_operators_list_every_consignors_inventories_awaiting_their_summary(api: Client) -> None:
    """Without an ebcCode an operator's or admin's key lists what every consignor has left to summarise, newest first,
    a page at a time; a submitter's key must name a consignor it holds; an A-type inventory is never listed."""
    a, a_no = await declared(api, 61)
    _, other_no = await declared(api, 62, ebcCode="4601260E99")
    await declared(api, 63, statisticsFlag="A")
    listed = (await api.get("/v1/summaries/pending")).body
    assert [(i["invtNo"], i["ebcCode"]) for i in listed["items"]] == [(other_no, "4601260E99"), (a_no, a["ebcCode"])]
    assert listed["next_cursor"] is None
    assert (await api.get("/v1/summaries/pending", key=OPERATOR)).body == listed
    first = (await api.get("/v1/summaries/pending?limit=1")).body
    rest = (await api.get(f"/v1/summaries/pending?limit=1&cursor={first['next_cursor']}")).body
    assert first["items"] + rest["items"] == listed["items"]
    assert [i["invtNo"] for i in (await api.get(f"/v1/summaries/pending?ebcCode={a['ebcCode']}")).body["items"]] == [
        a_no]
    refused = await api.get("/v1/summaries/pending", key=PLATFORM_A)
    assert refused.status == 400 and "ebcCode" in refused.body["error"]["title"], refused.body
    # one consignor summarises: the other's stays listed
    r = await post_export(api, application([a], [a_no]))
    assert r.status == 202 and "warnings" not in r.body, r.body
    assert [i["invtNo"] for i in (await api.get("/v1/summaries/pending")).body["items"]] == [other_no]


@pytest.mark.db
async def test_the_read_of_the_named_inventories_probes_indexes(api: Client, db_pool: asyncpg.Pool) -> None:
    from gateway import db, store, summary
    from tests.planutil import full_scans

    await declared(api, 23)
    async with db_pool.acquire() as conn:
        await conn.execute("ANALYZE documents")
        await conn.execute("ANALYZE receipts")
        found = await full_scans(conn, begin=db.BEGIN_SNAPSHOT_PLANNED, module=summary,
                                 cases={"HELD_INVENTORIES": "ARRAY['51412026E000000001'], 60",
                                        "LIVE_SUMMARIES": "ARRAY['51412026E000000001']",
                                        "RESULTS_OF_INVENTORY": "'51412026E000000001'",
                                        "PENDING_CANDIDATES": "9223372036854775807, 51, '4601260E35'",
                                        "PENDING_CANDIDATES_ALL": "9223372036854775807, 51"})  # fmt: skip
        found |= await full_scans(conn, begin=db.BEGIN_SNAPSHOT_PLANNED, module=store,
                                  cases={"SELECT_SUMMARY_DOCUMENTS": "'4601980H12', 'SUM2026112000000001'"})
    assert found == {}


# --- forwarded to customs' export system, answered by CEB702 and CEB792 -------------------------------------------



async def released_b_type(stack: Stack, seeds: tuple[int, ...]) -> tuple[list[Any], list[str]]:
    """B-type export parcels (1210) declared through ``stack`` and released by its sandbox's export system, with the
    invtNos customs gave their inventories."""
    parcels = [samples.export_shipment(random.Random(seed), mode="1210", now=NOW) for seed in seeds]
    for s in parcels:
        for code in ("CEB303", "CEB403", "CEB505", "CEB603"):
            xml_ = render(s.payloads()[code], signer=sign_as_agent if code == "CEB603" else None)
            r = await stack.client.post_xml(xml_)
            assert r.status == 202, (code, r.body)

    async def invt_nos() -> list[str] | None:
        rows = await stack.fetch("SELECT invt_no, customs_rank FROM documents WHERE message_type = 'CEB603'"
                                 " ORDER BY id")  # fmt: skip
        done = all(r["invt_no"] and r["customs_rank"] == 100 for r in rows) and len(rows) == len(parcels)
        return [r["invt_no"] for r in rows] if done else None

    async def released() -> bool:  # and the shipments' customs status followed
        states = [(await stack.shipment(s))["customs_status"] for s in parcels]
        return await invt_nos() is not None and states == ["released"] * len(parcels)

    await wait_for(released, timeout=20, what="the inventories released")
    numbers = await invt_nos()
    assert numbers is not None
    return parcels, numbers


async def summarised(stack: Stack, parcels: list[Any], numbers: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A summary application of the parcels' inventories sent through ``stack`` and answered by its sandbox: the
    application, and its view once customs' result is in."""
    p = samples.summary_application(random.Random(43), [s.inventory_doc for s in parcels], numbers, now=NOW)
    r = await stack.client.post_xml(render(p, signer=sign_as_agent))
    assert r.status == 202 and "warnings" not in r.body, r.body
    doc = p["documents"][0]

    async def declared() -> dict[str, Any] | None:
        view = (await stack.client.get(f"/v1/summaries/{doc['agentCode']}/{doc['copNo']}")).body
        return view if view.get("results") else None

    await wait_for(declared, timeout=20, what="the summary result")
    view = await declared()
    assert view is not None
    return p, view


async def summary_of(stack: Stack, s: Any) -> dict[str, Any]:
    """What the export parcel's shipment view says of its summary declaration."""
    return cast(dict[str, Any], (await stack.shipment(s))["summary"])

@pytest.mark.db
async def test_a_summary_goes_to_customs_and_comes_back_with_its_declaration(db_dsn: str) -> None:
    """The whole way: two B-type parcels released by the sandbox's export system, their summary application
    forwarded to it (DXPEDCCEB0000003), its CEB702 receipts applied (preNo, sumNo, 399) and its CEB792 matched and
    shown with the inventory items that went into the declaration."""
    from gateway.api import OUTBOX, PIPELINE
    from gateway.workers import inbox_handler

    async with running_stack(db_dsn) as stack:
        parcels, numbers = await released_b_type(stack, (41, 42))
        assert [(await summary_of(stack, s))["state"] for s in parcels] == ["awaiting", "awaiting"]
        assert await summary_of(stack, parcels[0]) == {"invtNo": numbers[0], "state": "awaiting", "applications": [],
                                                       "declarations": []}  # fmt: skip
        # the consignor's list of what awaits its summary: both, newest first, a page at a time
        ebc = parcels[0].inventory_doc["ebcCode"]
        assert {s.inventory_doc["ebcCode"] for s in parcels} == {ebc}
        first = (await stack.client.get(f"/v1/summaries/pending?ebcCode={ebc}&limit=1")).body
        rest = (await stack.client.get(f"/v1/summaries/pending?ebcCode={ebc}&limit=1&cursor={first['next_cursor']}"))
        assert [i["invtNo"] for i in first["items"] + rest.body["items"]] == numbers[::-1]
        listed, newest = first["items"][0], parcels[1].inventory_doc
        fields = ("ebcCode", "agentCode", "copNo", "orderNo", "logisticsNo", "ieDate", "customsCode", "portCode",
                  "tradeMode", "country")
        assert [listed[f] for f in fields] == [newest[f] for f in fields] and listed["released_at"]
        assert (await stack.client.get(f"/v1/summaries/pending?ebcCode={ebc}", key=STRANGER)).status == 403
        # the console's panel lists the same for an operator (a page of 20), and says what is missing
        console = ConsoleClient(stack.base)
        try:
            assert (await console.sign_in(OPERATOR)).status == 303
            shown = await console.get_json("/ops/api/summaries/pending", ebcCode=ebc)
            assert shown == (await stack.client.get(f"/v1/summaries/pending?ebcCode={ebc}")).body
            # without one, every consignor's (here the one)
            assert await console.get_json("/ops/api/summaries/pending") == shown
            assert (await console.get("/ops/api/summaries/pending", ebcCode=ebc, cursor="x"))[0] == 400
        finally:
            await console.close()
        p, view = await summarised(stack, parcels, numbers)
        # named by the live application now: nothing awaits
        assert (await stack.client.get(f"/v1/summaries/pending?ebcCode={ebc}")).body == {"items": [],
                                                                                         "next_cursor": None}
        doc = p["documents"][0]
        path = f"/v1/summaries/{doc['agentCode']}/{doc['copNo']}"
        assert view["forward_state"] == "receipted" and view["customs"]["code"] == "399", view
        assert view["sumNo"] and len(view["sumNo"]) == 18 and view["preNo"]
        # the application's documents name its number sum_no (the column keeps it where an inventory's invtNo is)
        assert [(d["sum_no"], d["invt_no"]) for d in view["documents"] if d["is_current"]] == [(view["sumNo"], None)]
        [result] = view["results"]
        assert result["sumNo"] == view["sumNo"] and result["decState"] == "10"
        assert view["declarations"] == [result["entryId"]]
        items = result["items"]
        lines = [(n, li["gnum"]) for s, n in zip(parcels, numbers, strict=True)
                 for li in s.inventory_doc["items"]]  # fmt: skip
        assert [(i["invtNo"], int(i["gnum"])) for i in items] == [(n, int(g)) for n, g in lines]
        assert {i["logisticsNo"] for i in items} == {s.inventory_doc["logisticsNo"] for s in parcels}
        # each parcel's shipment says under which declaration its own items went, and by which application
        for s, n in zip(parcels, numbers, strict=True):
            mine = await summary_of(stack, s)
            assert mine["state"] == "declared" and mine["invtNo"] == n
            [app] = mine["applications"]
            assert (app["agentCode"], app["copNo"], app["sumNo"], app["preNo"]) == (
                doc["agentCode"], doc["copNo"], view["sumNo"], view["preNo"])  # fmt: skip
            [decl] = mine["declarations"]
            assert (decl["entryId"], decl["sumNo"], decl["decState"]) == (result["entryId"], view["sumNo"], "10")
            assert [(int(i["gnum"]), i["logisticsNo"]) for i in decl["items"]] == [
                (int(li["gnum"]), s.inventory_doc["logisticsNo"]) for li in s.inventory_doc["items"]]  # fmt: skip
        receipts = view["documents"][0]["receipts"]
        assert [x["message_type"] for x in receipts] == ["CEB702", "CEB702"]
        assert [x["return_status"] for x in receipts] == ["2", "399"]
        jobs = await stack.fetch("SELECT endpoint FROM jobs WHERE kind = 'CEB701'")
        assert [j["endpoint"] for j in jobs] == ["customs"]
        # the folder transport's inbox takes a result through the same intake: a second declaration of the summary
        handle = inbox_handler(stack.app[OUTBOX], stack.app[PIPELINE].schemas, "customs")
        await handle(result_for(view["sumNo"], p, numbers[:1], same_as=result), Path("result.xml"))
        assert await stack.fetchval("SELECT outcome FROM receipts WHERE source = 'inbox'") == "applied"
        assert len((await stack.client.get(path)).body["results"]) == 2
        # the same declaration reported again (its declSeqNo) with the first parcel's items: one declaration still,
        # each parcel's items as before
        for s in parcels:
            [again] = (await summary_of(stack, s))["declarations"]
            assert len(again["items"]) == len(s.inventory_doc["items"]), again


# --- CEB702 and CEB792 at /v1/receipts ---------------------------------------------------------------------------

def result_for(sum_no: str, app: dict[str, Any], invt_nos: list[str], ebc: str | None = None,
               same_as: dict[str, Any] | None = None) -> bytes:  # fmt: skip
    """A summary result (CEB792) of the application ``app`` listing ``invt_nos``; ``same_as``: a result as the API
    shows it, whose declaration (declSeqNo, entryId) this one reports again."""
    from gateway.documents import extract
    from gateway.render import render
    from gateway.sandbox import receipts as rc
    from gateway.xmlsafe import parse_message

    application = extract(*parse_message(render(app))).documents[0]
    head, lines = rc.summary_result(application, sum_no, [], [], 7)
    head["ebcCode"] = ebc or head["ebcCode"]
    if same_as is not None:
        head.update(declSeqNo=same_as["declSeqNo"], entryId=same_as["entryId"])
    lines = [{"invtNo": no, "logisticsNo": "SF1234567890123CN", "gseqno": "1", "gnum": "1", "gcode": "0902109000"}
             for no in invt_nos]  # fmt: skip
    return rc.build_customs_documents("CEB792", [(head, lines)])


@pytest.mark.db
async def test_a_result_is_matched_by_the_sum_no_its_receipt_gave(api: Client) -> None:
    a, a_no = await declared(api, 31)
    p = application([a], [a_no])
    assert (await post_export(api, p)).status == 202
    doc = p["documents"][0]
    path = f"/v1/summaries/{doc['agentCode']}/{doc['copNo']}"
    sum_no = "51412026S000000031"
    result = result_for(sum_no, p, [a_no])
    # before customs' CEB702 gave the application its sumNo a result finds nothing: kept unmatched
    r = await api.request("POST", "/v1/receipts", data=result, content_type="application/xml")
    assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["unmatched"], r.body
    # another consignor's result of that sumNo, come early too, is not this application's when the sumNo comes
    stranger = result_for(sum_no, p, [a_no], ebc="4601260E99")
    r = await api.request("POST", "/v1/receipts", data=stranger, content_type="application/xml")
    assert [x["outcome"] for x in r.body["receipts"]] == ["unmatched"], r.body
    await sum_numbered(api, doc, sum_no, "S20261120000000031")
    # the receipt giving the sumNo links the result kept before it: customs sends a result once, in no order
    view = (await api.get(path)).body
    assert [(x["sumNo"], [i["invtNo"] for i in x["items"]]) for x in view["results"]] == [(sum_no, [a_no])], view
    # delivered again, it is the same result: stored once; the stranger's is still unmatched
    r = await api.request("POST", "/v1/receipts", data=result, content_type="application/xml")
    assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["duplicate"], r.body
    r = await api.request("POST", "/v1/receipts", data=stranger, content_type="application/xml")
    assert [x["outcome"] for x in r.body["receipts"]] == ["unmatched"], r.body
    view = (await api.get(path)).body
    assert (view["sumNo"], view["preNo"], view["customs"]["code"]) == (sum_no, "S20261120000000031", "399")
    [res] = view["results"]
    assert res["sumNo"] == sum_no and [i["invtNo"] for i in res["items"]] == [a_no]
    assert [x["message_type"] for x in view["documents"][0]["receipts"]] == ["CEB702", "CEB702"]
    # the enterprises' view only
    assert (await api.get(path, key=STRANGER)).status == 404
    assert (await api.get(path, key=PLATFORM_A)).status == 200
    assert (await api.get(f"/v1/summaries/{doc['agentCode']}/NOSUCH")).status == 404


@pytest.mark.db
async def test_the_console_feed_names_the_shipment_whose_summary_declaration_moved(
    api: Client, db_pool: asyncpg.Pool
) -> None:
    """A summary application, customs' receipt of it (CEB702) and its result (CEB792) move nothing of the shipment row:
    an open shipment page showed its summary declaration only once reloaded. The console's feed names the shipment of
    each inventory they name, once each; an application naming only an inventory the gateway does not hold names
    nothing. Each moves the event's awaiting_at (the awaiting-summary panel reads itself again). Its statement probes
    indexes (sql/350's for these)."""
    from gateway.console import queries as console_queries
    from gateway.db import BEGIN_PLANNED
    from tests.planutil import full_scans

    watch = FeedWatch(db_pool)
    changed = watch.changed
    try:
        a, a_no = await declared(api, 41)
        await changed()  # the first poll names nothing, the next the declaration (within the look-back)
        await changed()
        assert await changed() == set()

        def awaiting_at() -> datetime:  # what the console's awaiting-summary panel follows
            return datetime.fromisoformat(watch.last["awaiting_at"])

        released = awaiting_at()
        p = application([a], [a_no], seed=41)
        assert (await post_export(api, p)).status == 202
        assert await changed() == {a["orderNo"]}
        applied = awaiting_at()
        assert applied > released
        assert await changed() == set()
        sum_no = "51412026S000000041"
        await sum_numbered(api, p["documents"][0], sum_no, "S20261120000000041")  # customs' CEB702s
        assert await changed() == {a["orderNo"]}
        assert awaiting_at() > applied
        answered = awaiting_at()
        result = result_for(sum_no, p, [a_no])
        r = await api.request("POST", "/v1/receipts", data=result, content_type="application/xml")
        assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body
        assert await changed() == {a["orderNo"]}
        assert awaiting_at() > answered
        assert await changed() == set()
        # an application naming an invtNo no inventory here has: stored with a warning, names no shipment
        stray = application([a], ["51412026E999999941"], seed=42)
        assert (await post_export(api, stray)).status == 202
        assert await changed() == set()
    finally:
        watch.close()
    async with db_pool.acquire() as conn:
        scans = await full_scans(conn, begin=BEGIN_PLANNED, module=console_queries, cases={"CHANGED": "now(), 100"})
    assert scans == {}


@pytest.mark.db
async def test_a_result_of_a_sum_no_the_parts_share_is_shown_on_every_part(api: Client) -> None:
    """A split application (msgCount 2) whose parts' CEB702 gave them one sumNo is one application to customs: its
    CEB792 names it by that sumNo alone (its own msgSeqNo numbers the result's messages, not the application's parts)
    and the declaration is of the whole application, so the view lists the result on each part, not only on the part
    whose version the record matched; listed once among the application's results."""
    p, second, (a_no, b_no) = await split_application(api, 75)
    assert (await post_export(api, p)).status == 202
    assert (await post_export(api, second)).status == 202
    doc, sum_no = p["documents"][0], "51412026S000000075"
    for seq, part in (("1", doc), ("2", second["documents"][0])):
        await sum_numbered(api, part, sum_no, f"S2026112000000075{seq}", seq)
    r = await api.request("POST", "/v1/receipts", data=result_for(sum_no, p, [a_no, b_no]),
                          content_type="application/xml")  # fmt: skip
    assert r.status == 200 and [x["outcome"] for x in r.body["receipts"]] == ["applied"], r.body
    view = (await api.get(f"/v1/summaries/{doc['agentCode']}/{doc['copNo']}")).body
    [res] = view["results"]
    assert res["sumNo"] == sum_no and [i["invtNo"] for i in res["items"]] == [a_no, b_no]
    assert [(x["msgSeqNo"], x["sumNo"], [(y["declSeqNo"], y["entryId"]) for y in x["results"]])
            for x in view["parts"]] == [("1", sum_no, [(res["declSeqNo"], res["entryId"])]),
                                        ("2", sum_no, [(res["declSeqNo"], res["entryId"])])], view["parts"]
    assert view["declarations"] == [res["entryId"]]


# --- the sandbox's export system ------------------------------------------------------------------------------------

pytest_plugins = ["gateway.sandbox.pytest_plugin"]


async def test_the_sandbox_refuses_a_summary_of_what_it_did_not_release(
    customs_sandbox_local: RunningSandbox, http_recorder: Recorder
) -> None:
    """Customs' export system summarises only B-type inventories it released, of the application's consignor: an
    invtNo it never gave is 退单 (CEB702 100), and no summary result follows."""
    sb = customs_sandbox_local
    sb.config.receipt_url = http_recorder.url + "/v1/receipts"
    inv = export_ship(51, mode="1210").inventory_doc
    p = application([inv], ["51412026E000000999"])
    env = dxp.wrap(xml(p), msg_type="CEB701Message", sender_id="DXPENT0000458763", receiver_ids=[dxp.EXPORT_RECEIVER],
                   cop_msg_id=str(uuid.uuid4()).upper(), created=datetime.now())  # fmt: skip
    async with aiohttp.ClientSession() as client, client.post(sb.url + "/dxp", data=env) as resp:
        assert resp.status == 200, await resp.text()
    await sb.wait_idle()
    got = []
    for r in http_recorder.requests:
        root = etree.fromstring(dxp.unwrap(r.body).data)
        got += [(etree.QName(root).localname, ret.findtext(f"{{{CEB_NS}}}returnStatus"),
                 ret.findtext(f"{{{CEB_NS}}}returnInfo")) for ret in root]  # fmt: skip
    assert [(g[0], g[1]) for g in got] == [("CEB702Message", "2"), ("CEB702Message", "100")], got
    assert "51412026E000000999" in (got[1][2] or "")


def sandbox_with_released(*seeds: int) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """A sandbox whose export system released the B-type inventories of these seeds' shipments: (it, their heads,
    their invtNos)."""
    from decimal import Decimal

    from gateway.documents import extract
    from gateway.sandbox.app import InventoryRecord, Sandbox, SandboxConfig
    from gateway.xmlsafe import parse_message
    from tests.apiutil import sign_as_agent

    sb = Sandbox(SandboxConfig())
    heads, numbers = [], []
    for seed in seeds:
        s = export_ship(seed, mode="1210")
        inv = extract(*parse_message(render(s.inventory, signer=sign_as_agent))).documents[0]
        no = f"51412026E{seed:09d}"
        sb.export_inventories[(inv.head["agentCode"], inv.head["copNo"])] = InventoryRecord(
            inv, f"B20261120{seed:09d}", no, Decimal(0), release_due=NOW.astimezone())
        heads.append(s.inventory_doc)
        numbers.append(no)
    return sb, heads, numbers


def sandbox_answers(sb: Any, payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The sandbox's CEB702 statuses and infos for a CEB701 (one document)."""
    from gateway.documents import extract
    from gateway.messages import BY_CODE
    from gateway.xmlsafe import parse_message

    [plan] = sb.process(BY_CODE["CEB701"], extract(*parse_message(xml(payload))), None)
    return [(st.status, st.info) for st in plan]


async def test_the_sandbox_refuses_an_inventory_a_live_summary_names() -> None:
    """Customs' export system summarises an inventory once: a second application of the consignor naming one a live
    application names is 退单 (100); once that one is withdrawn it may."""
    sb, heads, numbers = sandbox_with_released(61, 62)
    first = application(heads[:1], numbers[:1], seed=61)
    assert [st for st, _ in sandbox_answers(sb, first)] == ["2", "399"]
    second = application(heads, numbers, seed=62)
    answers = sandbox_answers(sb, second)
    assert [st for st, _ in answers] == ["2", "100"] and numbers[0] in answers[-1][1], answers
    assert [st for st, _ in sandbox_answers(sb, version(first, "3", "20261120170000"))] == ["2", "399"]
    assert [st for st, _ in sandbox_answers(sb, version(second, "1", "20261120171000"))] == ["2", "399"]


async def test_the_sandbox_summarises_only_what_it_released() -> None:
    """An inventory whose 800 is still to come (accepted, perhaps to be inspected or cancelled) is not summarised:
    named, the application is 退单 (100) naming it; a period leaves it out, and leaves out what a live application of
    the consignor summarises already (an inventory is declared once)."""
    from datetime import timedelta

    from gateway.sandbox import receipts as rc

    sb, heads, numbers = sandbox_with_released(67, 68, 69)
    now = datetime.now(rc.CHINA_TZ)
    [unreleased] = [r for r in sb.export_inventories.values() if r.invt_no == numbers[2]]
    unreleased.release_due = now + timedelta(hours=1)
    answers = sandbox_answers(sb, application(heads[2:], numbers[2:], seed=67))
    assert [st for st, _ in answers] == ["2", "100"] and numbers[2] in answers[-1][1], answers
    assert [st for st, _ in sandbox_answers(sb, application(heads[:1], numbers[:1], seed=68))] == ["2", "399"]
    sb.export_inventories = {k: replace(r, released=now.strftime("%Y%m%d%H%M%S"))
                             for k, r in sb.export_inventories.items()}  # fmt: skip
    p = application(heads, numbers, seed=69)
    p["documents"][0].update(startTime=f"{now - timedelta(hours=1):%Y%m%d%H%M%S}",
                             endTime=f"{now + timedelta(hours=1):%Y%m%d%H%M%S}", items=[])  # fmt: skip
    assert [st for st, _ in sandbox_answers(sb, p)] == ["2", "399"]
    [record] = [r for k, r in sb.summaries.items() if k[1] == p["documents"][0]["copNo"]]
    assert [r.invt_no for r in record.inventories] == numbers[1:2]


async def test_the_sandbox_declares_a_summary_by_its_flags(
    customs_sandbox_local: RunningSandbox, http_recorder: Recorder
) -> None:
    """A.29: summaryFlag 2 summarises by consignor and producer / seller — a customs declaration (CEB792) per ownerCode,
    each of its own inventories' items and weights —, 1 by consignor alone (one declaration); itemNameFlag 1 merges
    the items of one HS code only under one item name (gseqno), another value (the XSD wants one character) under
    the HS code."""
    from decimal import Decimal

    local, heads, numbers = sandbox_with_released(71, 72, 73)
    sb = customs_sandbox_local
    sb.config.receipt_url = http_recorder.url + "/v1/receipts"
    for r, owner in zip(local.export_inventories.values(), ("4601960K21", "4601960K99", "4601960K21"), strict=True):
        r.doc.head["ownerCode"] = owner  # the second parcel another producer's
        r.doc.lines[0].update(gcode="6404110000", itemName=f"运动鞋 {r.invt_no[-2:]}")  # one HS code, three names
    sb.sandbox.export_inventories.update(local.export_inventories)

    async def send(p: dict[str, Any]) -> None:
        await declared_at_sandbox(sb, p)

    async def declared(flag: str, name_flag: str, seed: int) -> list[tuple[dict[tuple[str, str], str], str]]:
        """The declarations (CEB792) the sandbox makes of the three: each one's gseqno by (invtNo, gnum), and its
        grossWeight. The application is withdrawn after, its inventories free for the next."""
        http_recorder.requests.clear()
        p = application(heads, numbers, seed=seed)
        p["documents"][0].update(summaryFlag=flag, itemNameFlag=name_flag)
        await send(p)
        out = []
        for r in http_recorder.requests:
            for result in etree.fromstring(dxp.unwrap(r.body).data).iter(f"{{{CEB_NS}}}SummaryResult"):
                lines = result.iter(f"{{{CEB_NS}}}SummaryResultList")
                items = {(li.findtext(f"{{{CEB_NS}}}invtNo") or "", li.findtext(f"{{{CEB_NS}}}gnum") or ""):
                         li.findtext(f"{{{CEB_NS}}}gseqno") or "" for li in lines}
                out.append((items, result.findtext(f".//{{{CEB_NS}}}grossWeight") or ""))
        await send(version(p, "3", "20261120180000"))
        return out

    def weight(*nos: str) -> Decimal:
        return sum((Decimal(h["grossWeight"]) for h, n in zip(heads, numbers, strict=True) if n in nos), Decimal(0))

    try:
        by_owner = await declared("2", "0", 74)
        assert [(sorted({no for no, _ in items}), Decimal(w)) for items, w in by_owner] == [
            (sorted([numbers[0], numbers[2]]), weight(numbers[0], numbers[2])), ([numbers[1]], weight(numbers[1]))]
        [(whole, w)] = await declared("1", "0", 75)
        assert {no for no, _ in whole} == set(numbers) and Decimal(w) == weight(*numbers)
        assert len({whole[(no, "1")] for no in numbers}) == 1  # the three first lines: one HS code, one item
        [(named, _)] = await declared("1", "1", 76)
        assert len({named[(no, "1")] for no in numbers}) == 3  # by their names: three
    finally:
        for key in local.export_inventories:
            sb.sandbox.export_inventories.pop(key, None)


async def test_the_sandbox_makes_a_summary_result_after_concluding_its_application(
    customs_sandbox_local: RunningSandbox, http_recorder: Recorder
) -> None:
    """Customs makes the summary result (CEB792) of an application it concluded: its opDate (汇总处理时间) is not
    before the returnTime of the application's 399 (CEB702), as a timeline of the two reads."""
    local, heads, numbers = sandbox_with_released(77)
    sb = customs_sandbox_local
    sb.config.receipt_url = http_recorder.url + "/v1/receipts"
    sb.sandbox.export_inventories.update(local.export_inventories)
    http_recorder.requests.clear()
    try:
        p = application(heads, numbers, seed=77)
        await declared_at_sandbox(sb, p)
        times: dict[str, str] = {}
        for r in http_recorder.requests:
            root = etree.fromstring(dxp.unwrap(r.body).data)
            for ret in root.iter(f"{{{CEB_NS}}}SummaryReturn"):
                times[ret.findtext(f"{{{CEB_NS}}}returnStatus") or ""] = ret.findtext(f"{{{CEB_NS}}}returnTime") or ""
            for head in root.iter(f"{{{CEB_NS}}}SummaryResultHead"):
                times["792"] = head.findtext(f"{{{CEB_NS}}}opDate") or ""
        assert times.keys() == {"2", "399", "792"} and times["2"] < times["399"] <= times["792"], times
    finally:
        for key in local.export_inventories:
            sb.sandbox.export_inventories.pop(key, None)


async def test_the_sandbox_takes_the_parts_of_a_split_summary() -> None:
    """A split application's parts share its copNo (msgSeqNo 1..msgCount): each is a part, not a duplicate."""
    sb, heads, numbers = sandbox_with_released(65, 66)
    p = application(heads[:1], numbers[:1], seed=65)
    p["documents"][0].update(msgCount="2", msgSeqNo="1")
    second = version(p, "1", p["documents"][0]["appTime"], msgSeqNo="2", items=[{"invtNo": numbers[1]}])
    assert [st for st, _ in sandbox_answers(sb, p)] == ["2", "399"]
    assert [st for st, _ in sandbox_answers(sb, second)] == ["2", "399"]
    assert [st for st, _ in sandbox_answers(sb, version(second, "1", "20261120171000"))] == ["2", "100"]


async def test_the_sandbox_summarises_a_period_of_what_it_released_within_it() -> None:
    """A.29: with startTime and endTime the period is summarised: the B-type inventories of the consignor released
    within it, not every one ever released. An application for January 2026 of a November parcel finds nothing (100);
    one for the time the parcel was released summarises it."""
    from datetime import timedelta

    from gateway.sandbox import receipts as rc

    sb, heads, numbers = sandbox_with_released(63)
    p = application(heads, numbers, seed=63)
    p["documents"][0].update(startTime="20260101000000", endTime="20260131235959", items=[])
    assert [st for st, _ in sandbox_answers(sb, p)] == ["2", "100"]
    now = datetime.now(rc.CHINA_TZ)
    released = now.strftime("%Y%m%d%H%M%S")
    sb.export_inventories = {k: replace(r, released=released) for k, r in sb.export_inventories.items()}
    p = application(heads, numbers, seed=64)
    p["documents"][0].update(startTime=f"{now - timedelta(hours=1):%Y%m%d%H%M%S}",
                             endTime=f"{now + timedelta(hours=1):%Y%m%d%H%M%S}", items=[])  # fmt: skip
    assert [st for st, _ in sandbox_answers(sb, p)] == ["2", "399"]
    [record] = [r for k, r in sb.summaries.items() if k[1] == p["documents"][0]["copNo"]]
    assert [r.invt_no for r in record.inventories] == numbers


@pytest.mark.db
async def test_customs_summary_messages_posted_as_messages_are_recorded(api: Client) -> None:
    """A CEB702 or CEB792 sent to /v1/messages is kept as a record, applied to nothing (receipts go to /v1/receipts)."""
    from pathlib import Path

    for code in ("CEB702", "CEB792"):
        body = (Path(__file__).parent / "data" / "schema" / f"{code}Message.xml").read_bytes()
        r = await api.post_xml(body)
        assert r.status == 202, (code, r.body)
        assert {d["outcome"] for d in r.body["documents"]} == {"recorded"}, r.body


async def declared_at_sandbox(sb: RunningSandbox, p: dict[str, Any]) -> None:
    """The summary application ``p`` declared straight to the sandbox ``sb`` (a DxpMsg to its export system), and
    every receipt it makes of it sent."""
    env = dxp.wrap(xml(p), msg_type="CEB701Message", sender_id="DXPENT0000458763", receiver_ids=[dxp.EXPORT_RECEIVER],
                   cop_msg_id=str(uuid.uuid4()).upper(), created=datetime.now())  # fmt: skip
    async with aiohttp.ClientSession() as client, client.post(sb.url + "/dxp", data=env) as resp:
        assert resp.status == 200, await resp.text()
    await sb.wait_idle()
