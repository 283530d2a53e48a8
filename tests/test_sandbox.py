"""The customs sandbox over real HTTP on 127.0.0.1: receipt sequences, customs-side checks, scenarios, counters."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from lxml import etree

from adapters import dxp
from gateway import rules, taxbills
from gateway.documents import extract
from gateway.messages import BY_CODE, CEB_NS, lookup
from gateway.sandbox import SCENARIOS, RunningSandbox, SandboxConfig, create_sandbox_app, scenario_of, start_sandbox
from gateway.sandbox import receipts as rc
from gateway.sandbox.app import SANDBOX_KEY
from gateway.sandbox.recorder import Recorder
from gateway.schema import SchemaSet
from gateway.xmlsafe import parse_message

pytest_plugins = ["gateway.sandbox.pytest_plugin"]

signing = pytest.importorskip("gateway.signing", reason="gateway.signing is needed to sign CEB621 samples")
samples = pytest.importorskip("gateway.samples", reason="gateway.samples provides the shipments")

SENDER = "DXPENT0000458763"
C = f"{{{CEB_NS}}}"


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    key_pem, cert_pem = signing.generate_test_key("rsa", "sandbox test")
    return signing.RsaSha1Key.from_pem(key_pem, cert_pem)


NOW = datetime(2026, 11, 20, 10, 0, 0)  # samples derive numbers from the time: keep them reproducible


def legs(key: Any, *, order_no: str | None = None, seed: int = 1, defect: str | None = None, **kw: Any) -> dict:
    s = samples.shipment(random.Random(seed), order_no=order_no, now=NOW, **kw)
    if defect:
        s = samples.broken(s, defect)
    return samples.render_shipment(s, signer=lambda root: signing.sign(root, key))


@pytest.fixture
def sandbox(customs_sandbox_local: RunningSandbox, http_recorder: Recorder) -> RunningSandbox:
    customs_sandbox_local.config.receipt_url = http_recorder.url + "/v1/receipts"
    return customs_sandbox_local


@pytest_asyncio.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def post_dxp(
    client: aiohttp.ClientSession,
    base: str,
    ceb: bytes,
    *,
    cop: str | None = None,
    headers: dict[str, str] | None = None,
    receiver: str = dxp.IMPORT_RECEIVER,
    msg_type: str = "CEB311Message",
) -> tuple[int, Any, str]:
    cop = cop or str(uuid.uuid4()).upper()
    root = etree.fromstring(ceb) if ceb.lstrip().startswith(b"<") else None
    if root is not None and isinstance(root.tag, str):
        msg_type = etree.QName(root).localname
    env = dxp.wrap(ceb, msg_type=msg_type, sender_id=SENDER, receiver_ids=[receiver], cop_msg_id=cop,
                   created=datetime.now())  # fmt: skip
    async with client.post(base + "/dxp", data=env, headers=headers or {}) as resp:
        return resp.status, await resp.json(), cop


def receipt(rec_body: bytes) -> list[dict[str, Any]]:
    """The receipts of one received message: envelope fields and each return element's children."""
    env = dxp.unwrap(rec_body)
    root = etree.fromstring(env.data)
    out = []
    for ret in root:
        fields = {etree.QName(c).localname: c.text or "" for c in ret}
        out.append({"env": env, "root": root, "type": etree.QName(root).localname[:6], **fields})
    return out


def receipts(rec: Recorder, where: Callable[[dict[str, Any]], bool] = lambda r: True) -> list[dict[str, Any]]:
    """Every receipt (return element) posted, in the order posted."""
    out = [x for r in rec.requests if r.path == "/v1/receipts" for x in receipt(r.body)]
    return [r for r in out if where(r)]


def assert_from_the_export_system_and_valid(got: list[dict[str, Any]]) -> None:
    """Receipts the sandbox sent as customs' export system (DXPEDCCEB0000003), each schema- and rule-valid."""
    assert got and {r["env"].sender_id for r in got} == {dxp.EXPORT_RECEIVER}
    schemas = SchemaSet()
    for r in got:
        mtype = lookup(r["type"])
        assert mtype is not None and schemas.validate(r["root"], mtype) == [], r["type"]
        assert rules.check(extract(r["root"], mtype), today=datetime.now().date()) == [], r["type"]


def statuses(rec: Recorder, code: str) -> list[str]:
    return [r["returnStatus"] for r in receipts(rec, lambda r: r["type"] == code)]


def tax_bills(rec: Recorder, code: str = "CEB816") -> list[dict[str, Any]]:
    """The head of every tax bill (CEB816 Tax), or of every status change (CEB818), posted, in the order posted, with
    its envelope."""
    out = []
    for r in rec.requests:
        env = dxp.unwrap(r.body) if r.path == "/v1/receipts" else None
        if env is not None and env.msg_type == f"{code}Message":
            for head in etree.fromstring(env.data).iter(f"{C}{BY_CODE[code].head}"):
                out.append({"env": env, **{etree.QName(c).localname: c.text or "" for c in head}})
    return out


async def declare_all(client: aiohttp.ClientSession, sb: RunningSandbox, xmls: dict, codes: tuple = ()) -> None:
    for code in codes or ("CEB311", "CEB411", "CEB511", "CEB621"):
        status, ack, _ = await post_dxp(client, sb.url, xmls[code])
        assert status == 200, ack
        assert ack["code"] == "0000"


# --- receipt sequences -------------------------------------------------------------------------------


async def test_clean_shipment_receipt_sequences(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xmls = legs(rsa_key)
    await declare_all(client, sandbox, xmls)
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB312") == ["2", "120"]
    assert statuses(http_recorder, "CEB412") == ["2", "120"]
    assert statuses(http_recorder, "CEB512") == ["2", "120"]
    assert statuses(http_recorder, "CEB622") == ["2", "120", "399", "800"]

    inv = receipts(http_recorder, lambda r: r["type"] == "CEB622")
    times = [r["returnTime"] for r in inv]
    assert times == sorted(times) and len(set(times)) == 4 and all(len(t) == 17 and t.isdigit() for t in times)
    assert "invtNo" not in inv[0] and len(inv[1]["invtNo"]) == 18 and inv[1]["invtNo"] == inv[3]["invtNo"]
    assert len(inv[0]["preNo"]) == 18 and inv[0]["preNo"].startswith("B")
    # receipts travel in DxpMsg from customs back to our DXP id, one CopMsgId each
    for r in receipts(http_recorder):
        assert r["env"].sender_id == dxp.IMPORT_RECEIVER and r["env"].receiver_ids == (SENDER,)
        assert r["env"].msg_type == etree.QName(r["root"]).localname
    # ten receipt messages, then the released inventory's tax bill in one of its own, then the bill's status change
    assert len({r["env"].cop_msg_id for r in receipts(http_recorder)}) == 12
    assert [r["type"] for r in receipts(http_recorder)[-2:]] == ["CEB816", "CEB818"]
    # receipts echo the declared document's guid
    order_guid = etree.fromstring(xmls["CEB311"]).findtext(f"{C}Order/{C}OrderHead/{C}guid")
    assert {r["guid"] for r in receipts(http_recorder, lambda r: r["type"] == "CEB312")} == {order_guid}

    # the bill is the gateway's estimate of the inventory, named by the invtNo the receipts taught, after the 800
    (bill,) = tax_bills(http_recorder)
    root, mtype = parse_message(xmls["CEB621"])
    estimate = taxbills.estimate(extract(root, mtype).documents[0])
    assert (bill["invtNo"], bill["status"]) == (inv[3]["invtNo"], "1") and bill["returnTime"] > inv[3]["returnTime"]
    assert [Decimal(bill[name]) for name in taxbills.TAXES] == [
        estimate.customs_tax, estimate.value_added_tax, estimate.consumption_tax]  # fmt: skip
    assert bill["env"].sender_id == dxp.IMPORT_RECEIVER and bill["env"].receiver_ids == (SENDER,)
    # the return window over, customs consolidates it into a payment slip: CEB818 status 2, later than the bill
    (settled,) = tax_bills(http_recorder, "CEB818")
    assert {k: settled[k] for k in ("invtNo", "taxNo", "status", "assureCode")} == {
        "invtNo": bill["invtNo"], "taxNo": bill["taxNo"], "status": "2", "assureCode": bill["assureCode"]}  # fmt: skip
    assert settled["entDutyNo"].startswith("D") and settled["returnTime"] > bill["returnTime"]
    assert settled["env"].sender_id == dxp.IMPORT_RECEIVER and settled["env"].receiver_ids == (SENDER,)


async def test_no_tax_bill_when_turned_off(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    async with client.post(sandbox.url + "/sandbox/config", json={"tax_bills": False}) as r:
        assert r.status == 200 and (await r.json())["tax_bills"] is False
    await declare_all(client, sandbox, legs(rsa_key, seed=8))
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB622") == ["2", "120", "399", "800"] and tax_bills(http_recorder) == []
    assert tax_bills(http_recorder, "CEB818") == []


async def test_the_tax_bill_status_change_is_configurable(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """tax_bill_status_delay: how long after the bill its CEB818 comes (the return window); tax_bill_status: whether."""
    async with client.post(sandbox.url + "/sandbox/config", json={"tax_bill_status_delay": 0.4}) as r:
        assert r.status == 200 and (await r.json())["tax_bill_status_delay"] == 0.4
    await declare_all(client, sandbox, legs(rsa_key, seed=9))
    await sandbox.wait_idle()
    (bill,), (settled,) = tax_bills(http_recorder), tax_bills(http_recorder, "CEB818")
    waited = datetime.strptime(settled["returnTime"], "%Y%m%d%H%M%S%f") - datetime.strptime(bill["returnTime"],
                                                                                            "%Y%m%d%H%M%S%f")
    assert waited.total_seconds() == pytest.approx(0.4, abs=0.002)
    records = {r["code"]: r for r in sandbox.sandbox.receipts if r["code"] in ("CEB816", "CEB818")}
    assert records["CEB818"]["status"] == "2" and records["CEB818"]["delivered"] is True
    async with client.post(sandbox.url + "/sandbox/config", json={"tax_bill_status": False}) as r:
        assert r.status == 200
    await declare_all(client, sandbox, legs(rsa_key, seed=10))
    await sandbox.wait_idle()
    assert len(tax_bills(http_recorder)) == 2 and len(tax_bills(http_recorder, "CEB818")) == 1


async def test_receipts_are_schema_valid(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    schema = pytest.importorskip("gateway.schema")
    from gateway.messages import lookup

    sset = schema.SchemaSet()
    xmls = legs(rsa_key, seed=7)
    await declare_all(client, sandbox, xmls)
    bad = xmls["CEB311"].replace(b"<ceb:buyerTelephone>", b"<ceb:buyerPhone>").replace(
        b"</ceb:buyerTelephone>", b"</ceb:buyerPhone>"
    )
    await post_dxp(client, sandbox.url, bad)  # -> CEB900
    await sandbox.wait_idle()
    got = receipts(http_recorder)
    assert {r["type"] for r in got} == {"CEB312", "CEB412", "CEB512", "CEB622", "CEB816", "CEB818", "CEB900"}
    for r in got:
        assert sset.validate(r["root"], lookup(r["type"])) == [], r["type"]
    for req in http_recorder.requests:
        assert sset.validate_dxp(etree.fromstring(req.body)) == []


async def test_receipts_carry_18_character_numbers_whatever_the_declaration_held(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """preNo and invtNo are exactly 18 characters in CEB622/624 (the declarations take up to 18): a shorter
    declared one is not echoed into a receipt the gateway's XSD check would refuse."""
    from gateway.messages import lookup
    from gateway.schema import SchemaSet

    xmls = legs(rsa_key, seed=8)
    await declare_all(client, sandbox, xmls, ("CEB311", "CEB411", "CEB511"))
    inventory = xmls["CEB621"].replace(b"</ceb:copNo>", b"</ceb:copNo><ceb:preNo>B2026</ceb:preNo>", 1)
    assert b"<ceb:preNo>B2026</ceb:preNo>" in inventory
    await post_dxp(client, sandbox.url, inventory)
    cancel = (Path(__file__).parent / "data" / "schema" / "CEB623Message.xml").read_bytes()
    await post_dxp(client, sandbox.url, cancel.replace(b"29912024I000012345</ceb:invtNo>", b"2991I12345</ceb:invtNo>"))
    await sandbox.wait_idle()
    got = [r for r in receipts(http_recorder) if r["type"] in ("CEB622", "CEB624")]
    assert {r["type"] for r in got} == {"CEB622", "CEB624"}
    sset = SchemaSet()
    for r in got:
        assert sset.validate(r["root"], lookup(r["type"])) == [], r
        assert len(r["preNo"]) == 18 and len(r.get("invtNo") or "X" * 18) == 18, r


async def test_inventory_without_its_documents_is_rejected(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xmls = legs(rsa_key, seed=2)
    await declare_all(client, sandbox, xmls, ("CEB311", "CEB621"))  # no payment, no waybill
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB622") == ["2", "100"]
    info = receipts(http_recorder, lambda r: r["type"] == "CEB622")[1]["returnInfo"]
    assert "payment" in info and "waybill" in info


async def test_inconsistent_inventory_is_rejected_with_the_reason(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xmls = legs(rsa_key, seed=3, defect="amount_mismatch")
    await declare_all(client, sandbox, xmls)
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB312") == ["2", "120"]
    assert statuses(http_recorder, "CEB622") == ["2", "100"]
    rejected = receipts(http_recorder, lambda r: r["type"] == "CEB622")[1]
    assert "acturalPaid" in rejected["returnInfo"] or "amountPaid" in rejected["returnInfo"]
    assert "invtNo" not in rejected and tax_bills(http_recorder) == []  # nothing released, nothing taxed
    # A rejected inventory is not on file: after a payment change (appType 2, a later appTime) it is declared anew
    # and passes.
    fixed = legs(rsa_key, seed=3)
    change = fixed["CEB411"].replace(b"<ceb:appType>1</ceb:appType>", b"<ceb:appType>2</ceb:appType>")
    change = re.sub(rb"<ceb:appTime>(\d{14})</ceb:appTime>",
                    lambda m: b"<ceb:appTime>%d</ceb:appTime>" % (int(m.group(1)) + 100), change)  # a minute on
    assert change != fixed["CEB411"]
    await post_dxp(client, sandbox.url, change)
    await sandbox.wait_idle()
    await post_dxp(client, sandbox.url, fixed["CEB621"])
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB412") == ["2", "120", "2", "120"]
    assert statuses(http_recorder, "CEB622") == ["2", "100", "2", "120", "399", "800"]
    released = receipts(http_recorder, lambda r: r["type"] == "CEB622")[-1]
    assert [b["invtNo"] for b in tax_bills(http_recorder)] == [released["invtNo"]]


async def test_duplicates_get_the_spec_codes(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xmls = legs(rsa_key, seed=4)
    await declare_all(client, sandbox, xmls)
    await sandbox.wait_idle()
    await declare_all(client, sandbox, xmls)  # again, new CopMsgIds: a business duplicate, not a re-delivery
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB312") == ["2", "120", "-301010"]
    assert statuses(http_recorder, "CEB412") == ["2", "120", "-401007"]
    assert statuses(http_recorder, "CEB512") == ["2", "120", "-504015"]
    assert statuses(http_recorder, "CEB622") == ["2", "120", "399", "800", "-621004"]
    assert sandbox.stats()["duplicates"] == {}  # every delivery had its own CopMsgId


async def test_a_change_not_newer_than_the_version_held_is_ignored_with_the_spec_code(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """An order or waybill changed (appType 2) with an appTime not after the declared one's is ignored (−301014,
    −505016) and the version held stays; a newer change is taken."""
    xmls = legs(rsa_key, seed=7)
    await declare_all(client, sandbox, xmls, ("CEB311", "CEB511"))

    def changed(xml: bytes, seconds: int) -> bytes:
        root = etree.fromstring(xml)
        root.set("guid", str(uuid.uuid4()).upper())
        head = next(root.iter(f"{C}OrderHead", f"{C}LogisticsHead"))
        at = datetime.strptime(head.findtext(f"{C}appTime") or "", "%Y%m%d%H%M%S") + timedelta(seconds=seconds)
        for name, value in (("guid", str(uuid.uuid4()).upper()), ("appType", "2"),
                            ("appTime", at.strftime("%Y%m%d%H%M%S"))):  # fmt: skip
            el = head.find(f"{C}{name}")
            assert el is not None
            el.text = value
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    for seconds in (0, -60, 60):
        await declare_all(client, sandbox, {c: changed(xmls[c], seconds) for c in ("CEB311", "CEB511")},
                          ("CEB311", "CEB511"))  # fmt: skip
    await sandbox.wait_idle()
    assert sorted(statuses(http_recorder, "CEB312")) == sorted(["2", "120", "-301014", "-301014", "2", "120"])
    assert sorted(statuses(http_recorder, "CEB512")) == sorted(["2", "120", "-505016", "-505016", "2", "120"])


async def test_an_order_takes_no_change_once_its_inventory_is_on_file(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """Customs compares the inventory with the order it holds: once the inventory is declared, a change or deletion of
    the order is refused, -301011 (import and export alike); before it, a change is taken."""
    xmls = legs(rsa_key, seed=9)
    await declare_all(client, sandbox, xmls, ("CEB311",))

    def order_as(xml: bytes, app_type: str, seconds: int) -> bytes:
        root = etree.fromstring(xml)
        root.set("guid", str(uuid.uuid4()).upper())
        head = next(root.iter(f"{C}OrderHead"))
        at = datetime.strptime(head.findtext(f"{C}appTime") or "", "%Y%m%d%H%M%S") + timedelta(seconds=seconds)
        for name, value in (("guid", str(uuid.uuid4()).upper()), ("appType", app_type),
                            ("appTime", at.strftime("%Y%m%d%H%M%S"))):  # fmt: skip
            el = head.find(f"{C}{name}")
            assert el is not None
            el.text = value
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    await sandbox.wait_idle()
    await declare_all(client, sandbox, {"CEB311": order_as(xmls["CEB311"], "2", 60)}, ("CEB311",))
    await sandbox.wait_idle()
    await declare_all(client, sandbox, xmls, ("CEB411", "CEB511", "CEB621"))
    await sandbox.wait_idle()
    for app_type, seconds in (("2", 120), ("3", 180)):
        await declare_all(client, sandbox, {"CEB311": order_as(xmls["CEB311"], app_type, seconds)}, ("CEB311",))
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB312") == ["2", "120", "2", "120", "-301011", "-301011"]
    refused = receipts(http_recorder, lambda r: r["type"] == "CEB312")[-1]
    assert "清单已申报" in refused["returnInfo"] and "inventory was declared" in refused["returnInfo"]
    data = Path(__file__).parent / "data" / "samples"
    export = {code: (data / f"{code}-9610.xml").read_bytes() for code in ("CEB303", "CEB403", "CEB505", "CEB603")}
    for code in ("CEB303", "CEB403", "CEB505", "CEB603"):
        await post_dxp(client, sandbox.url, export[code], receiver=dxp.EXPORT_RECEIVER)
    await sandbox.wait_idle()
    change = export["CEB303"].replace(b"<ceb:appType>1</ceb:appType>", b"<ceb:appType>2</ceb:appType>")
    change = change.replace(b"20261120095730", b"20261120095830")
    assert change.count(b"<ceb:appType>2</ceb:appType>") == 1 and b"20261120095830" in change
    await post_dxp(client, sandbox.url, change, receiver=dxp.EXPORT_RECEIVER)
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB304") == ["2", "399", "-301011"]


async def test_single_transaction_limit(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xmls = legs(rsa_key, seed=5, n_items=2, defect="over_single_limit")
    await declare_all(client, sandbox, xmls)
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB622") == ["-621005"]


async def test_annual_quota_is_per_buyer_and_counts_released_inventories(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    # Two parcels of the same buyer: same seed, different orderNo / payTransactionId / logisticsNo.
    s1 = samples.shipment(random.Random(6), order_no="QUOTA-A", now=NOW)
    s2 = samples.shipment(random.Random(6), order_no="QUOTA-B", now=NOW)
    s2.order_doc["payTransactionId"] = s2.payment_doc["payTransactionId"] = s1.payment_doc["payTransactionId"] + "B"
    s2.waybill_doc["logisticsNo"] = s2.inventory_doc["logisticsNo"] = s1.waybill_doc["logisticsNo"] + "B"
    assert s1.inventory_doc["buyerIdNumber"] == s2.inventory_doc["buyerIdNumber"]
    inv = s1.inventory_doc
    value = sum((Decimal(str(i["totalPrice"])) for i in inv["items"]), Decimal(0)) + Decimal(str(inv["freight"]))
    value += Decimal(str(inv["insuredFee"]))
    limit = str(value * Decimal("1.5"))  # room for one parcel, not for two
    async with client.post(sandbox.url + "/sandbox/config", json={"annual_limit": limit}) as r:
        assert r.status == 200 and (await r.json())["annual_limit"] == limit

    def sign(root: Any) -> None:
        signing.sign(root, rsa_key)

    await declare_all(client, sandbox, samples.render_shipment(s1, signer=sign))
    await sandbox.wait_idle()
    await declare_all(client, sandbox, samples.render_shipment(s2, signer=sign))
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB622") == ["2", "120", "399", "800", "-621018"]


async def test_a_shipment_moved_to_another_buyer_moves_the_amount_between_their_quotas(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """The way to another buyer once the inventory is declared (its order takes no change then, -301011): withdraw the
    inventory before its release (its 800 due four receipt delays after the declaration) — its amount goes back to
    its buyer —, change the order and payment, declare the inventory again: the new buyer's quota takes it."""
    sandbox.config.receipt_delay = 1.0
    s = samples.shipment(random.Random(7), order_no="QUOTA-C", now=NOW)

    def sign(root: Any) -> None:
        signing.sign(root, rsa_key)

    def version(doc: dict[str, Any], app_type: str, minutes: int, **values: str) -> None:
        later = datetime.strptime(doc["appTime"], "%Y%m%d%H%M%S") + timedelta(minutes=minutes)  # not digits + 60
        doc.update({"appType": app_type, "appTime": f"{later:%Y%m%d%H%M%S}", **values})

    await declare_all(client, sandbox, samples.render_shipment(s, signer=sign))
    first = s.inventory_doc["buyerIdNumber"].upper()
    used = dict(sandbox.sandbox.quota_used)
    assert used[first] > 0
    version(s.inventory_doc, "3", 1)
    await post_dxp(client, sandbox.url, samples.render_shipment(s, signer=sign)["CEB621"])
    assert sandbox.sandbox.quota_used[first] == 0
    other = "460100199001010011"  # the order, payment and inventory go to another buyer
    version(s.order_doc, "2", 1, buyerIdNumber=other)
    version(s.payment_doc, "2", 1, payerIdNumber=other)
    version(s.inventory_doc, "1", 1, buyerIdNumber=other)
    xmls = samples.render_shipment(s, signer=sign)
    for code in ("CEB311", "CEB411", "CEB621"):
        await post_dxp(client, sandbox.url, xmls[code])
    await sandbox.wait_idle(timeout=30)
    assert statuses(http_recorder, "CEB312") == ["2", "2", "120", "120"]
    # the first declaration's sequence was scheduled when it was taken; the withdrawal's is 2 -> 120
    assert sorted(statuses(http_recorder, "CEB622")) == sorted(["2", "120", "399", "800"] * 2 + ["2", "120"])
    assert sandbox.sandbox.quota_used[first] == 0
    assert sandbox.sandbox.quota_used[other] == used[first]


async def test_a_released_inventory_takes_no_change_or_withdrawal(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """Once customs released an import inventory (800), a change (appType 2) or deletion (appType 3) of it is refused,
    CEB622 -621043 with the reason in Chinese and English: the way back is a cancellation (CEB623). The inventory and
    its buyer's quota stay as released."""
    s = samples.shipment(random.Random(8), order_no="RELEASED-1", now=NOW)

    def sign(root: Any) -> None:
        signing.sign(root, rsa_key)

    await declare_all(client, sandbox, samples.render_shipment(s, signer=sign))
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB622") == ["2", "120", "399", "800"]
    [record] = sandbox.sandbox.inventories.values()
    used = dict(sandbox.sandbox.quota_used)
    for app_type, minutes in (("2", 1), ("3", 2)):
        s.inventory_doc.update({"appType": app_type, "appTime": f"{NOW + timedelta(minutes=minutes):%Y%m%d%H%M%S}"})
        status, ack, _ = await post_dxp(client, sandbox.url, samples.render_shipment(s, signer=sign)["CEB621"])
        assert (status, ack["code"]) == (200, "0000")
        await sandbox.wait_idle()
        refused = receipts(http_recorder, lambda r: r["type"] == "CEB622")[-1]
        assert refused["returnStatus"] == "-621043", app_type
        assert "已放行" in refused["returnInfo"] and "CEB623" in refused["returnInfo"]
        assert "released" in refused["returnInfo"] and refused["invtNo"] == record.invt_no
    assert statuses(http_recorder, "CEB622") == ["2", "120", "399", "800", "-621043", "-621043"]
    assert list(sandbox.sandbox.inventories.values()) == [record] and sandbox.sandbox.quota_used == used


def _released_invt_no(rec: Recorder) -> str:
    """The invtNo of the last inventory the sandbox released (its CEB622 800)."""
    return receipts(rec, lambda r: r["type"] == "CEB622" and r["returnStatus"] == "800")[-1]["invtNo"]


def _import_reference(code: str, s: Any, invt_no: str, key: Any, **kw: Any) -> bytes:
    """A cancellation (CEB623) or return (CEB625) of the sample shipment ``s``'s inventory, signed as the agent's."""
    from gateway.render import render

    make = samples.import_cancellation if code == "CEB623" else samples.import_return
    return render(make(random.Random(len(invt_no)), s.inventory_doc, invt_no, now=NOW, **kw),
                  signer=lambda root: signing.sign(root, key))  # fmt: skip


async def test_an_import_cancellation_concludes_and_the_inventory_may_be_declared_anew(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """A released inventory's cancellation (CEB623, naming the invtNo customs gave it): CEB624 2 → 120 → 399, and the
    sandbox holds it no more — its buyer's quota given back (an annual limit with room for one parcel takes it again)
    and its key declared anew (appType 1, a new guid) is no duplicate: released with a number of its own. One sent
    with the REJECT scenario is refused (2 → 100) and changes nothing; a second cancellation of it is -623005
    (状态不允许撤销); one naming a number customs never gave 2 → 100."""
    s = samples.shipment(random.Random(9), order_no="CANCEL-1", now=NOW)
    value = dutiable(s.inventory_doc)
    async with client.post(sandbox.url + "/sandbox/config", json={"annual_limit": str(value * 2 - 1)}) as r:
        assert r.status == 200  # room for one parcel, not two

    def sign(root: Any) -> None:
        signing.sign(root, rsa_key)

    await declare_all(client, sandbox, samples.render_shipment(s, signer=sign))
    await sandbox.wait_idle()
    invt_no, buyer = _released_invt_no(http_recorder), s.inventory_doc["buyerIdNumber"].upper()
    assert sandbox.sandbox.quota_used[buyer] == value
    cancel = _import_reference("CEB623", s, invt_no, rsa_key)
    await post_dxp(client, sandbox.url, cancel, headers={"X-Sandbox-Scenario": "REJECT"})  # refused: nothing changes
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB624") == ["2", "100"] and sandbox.sandbox.quota_used[buyer] == value
    await post_dxp(client, sandbox.url, cancel)
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB624")[2:] == ["2", "120", "399"]
    concluded = receipts(http_recorder, lambda r: r["type"] == "CEB624")[-1]
    assert concluded["invtNo"] == invt_no and len(concluded["preNo"]) == 18
    assert sandbox.sandbox.inventories == {} and sandbox.sandbox.quota_used[buyer] == 0

    s.inventory_doc.update(guid=str(uuid.uuid4()).upper(), appTime=f"{NOW + timedelta(minutes=5):%Y%m%d%H%M%S}")
    await post_dxp(client, sandbox.url, samples.render_shipment(s, signer=sign)["CEB621"])
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB622") == ["2", "120", "399", "800"] * 2
    anew = _released_invt_no(http_recorder)
    assert anew != invt_no and sandbox.sandbox.quota_used[buyer] == value

    again = _import_reference("CEB623", s, invt_no, rsa_key)
    unknown = _import_reference("CEB623", s, invt_no[:-9] + "0" * 9, rsa_key)  # serial 0: the sandbox gives none
    for body in (again, unknown):
        await post_dxp(client, sandbox.url, body)
        await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB624")[2:] == ["2", "120", "399", "-623005", "2", "100"]
    assert "不是" in receipts(http_recorder, lambda r: r["type"] == "CEB624")[-1]["returnInfo"]  # not its number
    assert [r.invt_no for r in sandbox.sandbox.inventories.values()] == [anew]
    assert sandbox.sandbox.quota_used[buyer] == value


def dutiable(inv: dict[str, Any]) -> Decimal:
    """Σ totalPrice + freight + insuredFee of a sample inventory document: what the quota counts of it."""
    value = sum((Decimal(str(i["totalPrice"])) for i in inv["items"]), Decimal(0))
    return value + Decimal(str(inv["freight"])) + Decimal(str(inv["insuredFee"]))


async def test_a_cancellation_of_an_inventory_not_yet_released_concludes_after_its_release(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """Cancelled while its release is still due, an inventory's 800 is not overtaken: the CEB624s follow it."""
    sandbox.config.receipt_delay = 0.2
    s = samples.shipment(random.Random(10), order_no="CANCEL-2", now=NOW)
    await declare_all(client, sandbox, samples.render_shipment(s, signer=lambda root: signing.sign(root, rsa_key)))
    [record] = sandbox.sandbox.inventories.values()
    await post_dxp(client, sandbox.url, _import_reference("CEB623", s, record.invt_no, rsa_key))
    assert sandbox.sandbox.inventories == {}
    await sandbox.wait_idle(timeout=20)
    order = [(r["type"], r["returnStatus"]) for r in receipts(http_recorder, lambda r: r["type"] in ("CEB622",
                                                                                                      "CEB624"))]
    assert order == [("CEB622", st) for st in ("2", "120", "399", "800")] + [("CEB624", st) for st in
                                                                               ("2", "120", "399")]  # fmt: skip


async def test_an_import_return_concludes_and_gives_the_returned_goods_back_to_the_quota(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """A return (CEB625) of a released inventory: CEB626 2 → 120 → 399, the returned items' value (as the gateway
    counts it, gateway.tax.returned_value) back in the buyer's quota. Before the release, of an item not the
    inventory's (-625209), a second one, of a cancelled inventory: refused."""
    from gateway import tax

    sandbox.config.receipt_delay = 0.1
    s = samples.shipment(random.Random(11), order_no="RETURN-1", now=NOW, n_items=2)

    def sign(root: Any) -> None:
        signing.sign(root, rsa_key)

    await declare_all(client, sandbox, samples.render_shipment(s, signer=sign))
    [record] = sandbox.sandbox.inventories.values()
    await post_dxp(client, sandbox.url, _import_reference("CEB625", s, record.invt_no, rsa_key, items=[1]))
    await sandbox.wait_idle(timeout=20)
    assert statuses(http_recorder, "CEB626") == ["2", "100"]  # not released when it came
    assert "未放行" in receipts(http_recorder, lambda r: r["type"] == "CEB626")[-1]["returnInfo"]
    buyer = s.inventory_doc["buyerIdNumber"].upper()
    assert sandbox.sandbox.quota_used[buyer] == record.value

    refund = _import_reference("CEB625", s, record.invt_no, rsa_key, items=[1])
    await post_dxp(client, sandbox.url, refund)
    await sandbox.wait_idle(timeout=20)
    assert statuses(http_recorder, "CEB626") == ["2", "100", "2", "120", "399"]
    root, mtype = parse_message(refund)
    given = tax.returned_value(record.doc, extract(root, mtype).documents[0].lines)
    assert 0 < given < record.value and sandbox.sandbox.quota_used[buyer] == record.value - given

    foreign = refund.replace(b"<ceb:gnum>1</ceb:gnum>", b"<ceb:gnum>7</ceb:gnum>")  # a change naming no item
    foreign = foreign.replace(b"<ceb:appType>1</ceb:appType>", b"<ceb:appType>2</ceb:appType>")
    assert foreign.count(b"<ceb:gnum>7</ceb:gnum>") == foreign.count(b"<ceb:appType>2</ceb:appType>") == 1
    for body in (refund, foreign):
        await post_dxp(client, sandbox.url, body)
        await sandbox.wait_idle(timeout=20)
    assert statuses(http_recorder, "CEB626")[5:] == ["2", "100", "-625209"]
    # cancelled, it counts nothing more (less the return's share, given back already); nothing is left to return
    await post_dxp(client, sandbox.url, _import_reference("CEB623", s, record.invt_no, rsa_key))
    await sandbox.wait_idle(timeout=20)
    assert statuses(http_recorder, "CEB624") == ["2", "120", "399"] and sandbox.sandbox.quota_used[buyer] == 0
    await post_dxp(client, sandbox.url, _import_reference("CEB625", s, record.invt_no, rsa_key, items=[2]))
    await sandbox.wait_idle(timeout=20)
    assert statuses(http_recorder, "CEB626")[8:] == ["2", "100"]
    assert "已撤销" in receipts(http_recorder, lambda r: r["type"] == "CEB626")[-1]["returnInfo"]


async def test_a_cancellation_or_a_full_return_voids_a_bill_not_yet_consolidated(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """Within the return window (before the consolidation, CEB818 2), a concluded cancellation (CEB623) or a concluded
    return of every item in full (CEB625) voids the inventory's tax bill: CEB818 3 after the 399, and its consolidation
    is not sent. A return of part of the goods leaves the bill out (corrected), consolidated as due; a bill
    consolidated already is not voided by a later cancellation."""
    sandbox.config.receipt_delay = 0.05
    sandbox.config.tax_bill_status_delay = 1.5

    def sign(root: Any) -> None:
        signing.sign(root, rsa_key)

    shipments = {name: samples.shipment(random.Random(seed), order_no=f"VOID-{name}", now=NOW, n_items=2)
                 for seed, name in enumerate(("cancel", "return", "part"), 30)}  # fmt: skip
    for s in shipments.values():
        await declare_all(client, sandbox, samples.render_shipment(s, signer=sign))
    await asyncio.sleep(0.5)  # released, the bills sent, their window still open
    invt = {name: next(r.invt_no for r in sandbox.sandbox.inventories.values()
                       if r.doc.head["orderNo"] == s.inventory_doc["orderNo"])
            for name, s in shipments.items()}  # fmt: skip
    assert len(tax_bills(http_recorder)) == 3 and tax_bills(http_recorder, "CEB818") == []
    await post_dxp(client, sandbox.url, _import_reference("CEB623", shipments["cancel"], invt["cancel"], rsa_key))
    await post_dxp(client, sandbox.url, _import_reference("CEB625", shipments["return"], invt["return"], rsa_key))
    await post_dxp(client, sandbox.url, _import_reference("CEB625", shipments["part"], invt["part"], rsa_key,
                                                          items=[1]))  # fmt: skip
    await sandbox.wait_idle(timeout=20)
    assert statuses(http_recorder, "CEB624") == ["2", "120", "399"]
    assert sorted(statuses(http_recorder, "CEB626")) == sorted(["2", "120", "399"] * 2)  # the two interleave
    changes = {c["invtNo"]: c for c in tax_bills(http_recorder, "CEB818")}
    assert {n: changes[invt[n]]["status"] for n in invt} == {"cancel": "3", "return": "3", "part": "2"}
    assert len(tax_bills(http_recorder, "CEB818")) == 3  # no consolidation of a voided bill
    assert changes[invt["cancel"]]["taxNo"] == rc.tax_no(invt["cancel"]) and "entDutyNo" not in changes[invt["cancel"]]
    concluded = {r["invtNo"]: r for r in receipts(http_recorder, lambda r: r["type"] in ("CEB624", "CEB626")
                                                  and r["returnStatus"] == "399")}  # fmt: skip
    for name in ("cancel", "return"):
        assert changes[invt[name]]["returnTime"] > concluded[invt[name]]["returnTime"]
    unsent = [r for r in sandbox.sandbox.receipts if r["code"] == "CEB818" and r["status"] == "2"
              and r.get("delivered") is False]  # fmt: skip
    assert sorted(r["invt_no"] for r in unsent) == sorted([invt["cancel"], invt["return"]])
    assert all("voided" in r["error"] for r in unsent)

    # consolidated first: a cancellation afterwards voids nothing
    s = samples.shipment(random.Random(40), order_no="VOID-late", now=NOW)
    sandbox.config.tax_bill_status_delay = 0.05
    await declare_all(client, sandbox, samples.render_shipment(s, signer=sign))
    await sandbox.wait_idle(timeout=20)
    late = _released_invt_no(http_recorder)
    await post_dxp(client, sandbox.url, _import_reference("CEB623", s, late, rsa_key))
    await sandbox.wait_idle(timeout=20)
    assert statuses(http_recorder, "CEB624")[-1] == "399"
    assert [c["status"] for c in tax_bills(http_recorder, "CEB818") if c["invtNo"] == late] == ["2"]


def _return_version(s: Any, invt_no: str, key: Any, items: list[int] | None, *, app_type: str = "1",
                    minutes: int = 0) -> bytes:
    """A return (CEB625) of the sample shipment ``s``'s items ``items`` (all: None) in full: a new one, or (appType
    2 / 3, ``minutes`` later) a change or withdrawal of the one before."""
    from gateway.render import render

    payload = samples.import_return(random.Random(minutes), s.inventory_doc, invt_no, now=NOW, items=items)
    payload["documents"][0].update(appType=app_type, appTime=f"{NOW + timedelta(minutes=minutes):%Y%m%d%H%M%S}")
    return render(payload, signer=lambda root: signing.sign(root, key))


def _bill_records(rec: Recorder) -> list[Any]:
    """Every CEB816/818 posted, as the gateway reads them (gateway.taxbills.records)."""
    out = []
    for r in rec.requests:
        env = dxp.unwrap(r.body) if r.path == "/v1/receipts" else None
        if env is not None and env.msg_type in ("CEB816Message", "CEB818Message"):
            root, mtype = parse_message(env.data)
            out += taxbills.records(root, mtype)
    return out


async def test_a_return_of_part_of_the_goods_within_the_window_corrects_the_bill(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """Within the return window the tax of the goods returned is not levied (the 2018 announcement: 相应税款不予征收):
    a concluded return of part of the goods (CEB626 399) is followed by the bill corrected — a CEB816 of the same
    taxNo, status 1, the taxes of the goods kept (gateway.tax.after_return) — which the window's end consolidates as
    corrected; the return withdrawn gives the whole bill again, and a return of everything then voids it."""
    from gateway import tax

    sandbox.config.receipt_delay = 0.05
    sandbox.config.tax_bill_status_delay = 2.0  # the window stays open while the returns come and go

    def sign(root: Any) -> None:
        signing.sign(root, rsa_key)

    part, back = (samples.shipment(random.Random(seed), order_no=f"PART-{seed}", now=NOW, n_items=2)
                  for seed in (41, 42))  # fmt: skip
    for s in (part, back):
        await declare_all(client, sandbox, samples.render_shipment(s, signer=sign))
    await http_recorder.wait_for(2, where=lambda r: dxp.unwrap(r.body).msg_type == "CEB816Message")
    invt = {"part": _inventory_of(sandbox, part), "back": _inventory_of(sandbox, back)}
    first = {b["invtNo"]: b for b in tax_bills(http_recorder)}

    async def returned(s: Any, name: str, items: list[int] | None, **kw: Any) -> dict[str, Any]:
        """Post the return, wait for its 399 and the bill it changes; that bill's head (CEB816 or CEB818)."""
        body = _return_version(s, invt[name].invt_no, rsa_key, items, **kw)
        known = len(_bill_records(http_recorder))
        await post_dxp(client, sandbox.url, body)
        await http_recorder.wait_for(known + 1, where=lambda r: dxp.unwrap(r.body).msg_type in ("CEB816Message",
                                                                                                 "CEB818Message"))
        got = [b for code in ("CEB816", "CEB818") for b in tax_bills(http_recorder, code)]
        return max(got, key=lambda b: b["returnTime"])

    kept = tax.after_return(invt["part"].doc, [{"gnum": "1", "qty": invt["part"].doc.lines[0]["qty"]}])
    corrected = await returned(part, "part", [1])
    concluded = receipts(http_recorder, lambda r: r["type"] == "CEB626" and r["returnStatus"] == "399")[-1]
    assert corrected["env"].msg_type == "CEB816Message" and corrected["status"] == "1"
    assert corrected["taxNo"] == first[invt["part"].invt_no]["taxNo"]
    assert corrected["returnTime"] > concluded["returnTime"]
    assert [Decimal(corrected[name]) for name in taxbills.TAXES] == [
        sum((getattr(t, attr) for t in kept), Decimal(0))
        for attr in ("customs_tax", "value_added_tax", "consumption_tax")]  # fmt: skip
    assert Decimal(corrected["valueAddedTax"]) < Decimal(first[invt["part"].invt_no]["valueAddedTax"])

    bill = first[invt["back"].invt_no]
    assert (await returned(back, "back", [1]))["status"] == "1"
    whole = await returned(back, "back", [1], app_type="3", minutes=1)  # withdrawn: the whole bill again
    assert whole["env"].msg_type == "CEB816Message" and whole["taxNo"] == bill["taxNo"]
    assert [whole[name] for name in taxbills.TAXES] == [bill[name] for name in taxbills.TAXES]
    void = await returned(back, "back", None, minutes=2)  # everything returned now
    assert (void["env"].msg_type, void["status"], void["taxNo"]) == ("CEB818Message", "3", bill["taxNo"])

    await sandbox.wait_idle(timeout=20)  # the window closes: the corrected bill is consolidated, the void one not
    bills = taxbills.fold(_bill_records(http_recorder))
    assert (bills[corrected["taxNo"]].status, bills[corrected["taxNo"]].amounts) == (
        "2", tuple(Decimal(corrected[name]) for name in taxbills.TAXES))
    assert bills[bill["taxNo"]].status == "3"
    assert [c["status"] for c in tax_bills(http_recorder, "CEB818")] == ["3", "2"]


async def test_a_return_concluded_after_the_window_leaves_the_bill_as_consolidated(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """A return of part of the goods taken just before the window closes but concluded (399) after it: customs
    consolidates the bill as it was and sends no correction — one dated after the consolidation would read as the
    bill generated (1) again, its consolidation undone."""
    sandbox.config.receipt_delay = 0.05
    sandbox.config.tax_bill_status_delay = 0.1  # closes before the return's 399, three receipt delays on
    s = samples.shipment(random.Random(43), order_no="PART-43", now=NOW, n_items=2)
    await declare_all(client, sandbox, samples.render_shipment(s, signer=lambda root: signing.sign(root, rsa_key)))
    await http_recorder.wait_for(1, where=lambda r: dxp.unwrap(r.body).msg_type == "CEB816Message")
    await post_dxp(client, sandbox.url, _return_version(s, _inventory_of(sandbox, s).invt_no, rsa_key, [1]))
    await sandbox.wait_idle(timeout=20)
    assert statuses(http_recorder, "CEB626") == ["2", "120", "399"]
    [bill] = tax_bills(http_recorder)
    assert [c["status"] for c in tax_bills(http_recorder, "CEB818")] == ["2"]
    [folded] = taxbills.fold(_bill_records(http_recorder)).values()
    assert (folded.status, folded.amounts) == ("2", tuple(Decimal(bill[name]) for name in taxbills.TAXES))


async def test_a_waybill_status_is_answered_with_the_statuses_its_receipt_lists(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """CEB513 (waybill status): CEB514 2 → 399 — the XSD lists 399 for the 514 where the PDF has 120 (spec §5.2,
    §13.1), and the XSD is normative where they differ — schema-valid, from the import system."""
    await post_dxp(client, sandbox.url, (Path(__file__).parent / "data" / "schema" / "CEB513Message.xml").read_bytes())
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB514") == ["2", "399"]
    sset = SchemaSet()
    for r in receipts(http_recorder):
        assert r["env"].sender_id == dxp.IMPORT_RECEIVER and sset.validate(r["root"], BY_CODE["CEB514"]) == []


async def test_temp_save_gets_status_1(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xml = legs(rsa_key, seed=8)["CEB311"]
    xml = xml.replace(b"<ceb:appStatus>2</ceb:appStatus>", b"<ceb:appStatus>1</ceb:appStatus>")
    await post_dxp(client, sandbox.url, xml)
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB312") == ["1"]


# --- format errors and envelopes ----------------------------------------------------------------------


async def test_schema_failure_answers_ceb900(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    pytest.importorskip("gateway.schema")
    xml = legs(rsa_key, seed=9)["CEB311"]
    bad = xml.replace(b"<ceb:currency>142</ceb:currency>", b"", 1)
    status, ack, cop = await post_dxp(client, sandbox.url, bad)
    assert status == 200 and ack["format_error"] is True
    await sandbox.wait_idle()
    [r] = receipts(http_recorder)
    assert r["type"] == "CEB900" and r["oriCopMsgId"] == cop and r["oriMessageType"] == "CEB311Message"
    assert r["returnStatus"].startswith("-") and "currency" in r["returnInfo"]
    assert r["oriBizMessage"] == bad.decode()
    assert sandbox.stats()["schema"] == "on"


async def test_unparseable_data_answers_ceb900_unknown(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    status, _, cop = await post_dxp(client, sandbox.url, b"not xml at all", msg_type="CEB311Message")
    assert status == 200
    await sandbox.wait_idle()
    [r] = receipts(http_recorder)
    assert (r["type"], r["oriCopMsgId"], r["oriMessageType"]) == ("CEB900", cop, "Unknown")


async def test_export_declarations_are_answered_by_the_export_system(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """The sandbox plays the CEB export system (DXPEDCCEB0000003) too: the export legs addressed to it get the export
    receipts (CEB304/404/506 2 → 399: spec §5.2 lists no 120 for the 506, and gives the 304 and 404 only 399 in the
    XSD, normative where the PDF differs; CEB604 2 → 120 → 399 → 800 with an export invtNo), sent by that system; an
    export message addressed to the import system is a routing error."""
    data = Path(__file__).parent / "data" / "samples"
    xmls = {code: (data / f"{code}-9610.xml").read_bytes() for code in ("CEB303", "CEB403", "CEB505", "CEB603")}
    status, ack, _ = await post_dxp(client, sandbox.url, xmls["CEB303"])  # to the import system's id
    assert (status, ack["code"]) == (400, "2002")
    for code in ("CEB303", "CEB403", "CEB505", "CEB603"):
        status, ack, _ = await post_dxp(client, sandbox.url, xmls[code], receiver=dxp.EXPORT_RECEIVER)
        assert (status, ack["code"]) == (200, "0000"), ack
    await sandbox.wait_idle()
    for code in ("CEB304", "CEB404", "CEB506"):
        assert statuses(http_recorder, code) == ["2", "399"], code
    assert statuses(http_recorder, "CEB604") == ["2", "120", "399", "800"]
    got = receipts(http_recorder)
    assert_from_the_export_system_and_valid(got)
    [released] = receipts(http_recorder, lambda r: r["type"] == "CEB604" and r["returnStatus"] == "800")
    assert released["invtNo"][8] == "E" and len(released["preNo"]) == 18
    assert released["orderNo"] in xmls["CEB603"].decode()


async def test_the_export_system_takes_no_change_or_withdrawal_of_a_released_inventory(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """An export inventory changed before its release (its 800 due four receipt delays after the declaration) is
    taken; once released, a change (appType 2) or deletion (appType 3) is refused, CEB604 2 → 100 (海关退单) with the
    reason: the way back is a cancellation (CEB605). The inventory stays as released."""
    sandbox.config.receipt_delay = 0.5
    data = Path(__file__).parent / "data" / "samples"
    xmls = {code: (data / f"{code}-9610.xml").read_bytes() for code in ("CEB303", "CEB403", "CEB505", "CEB603")}
    for code in ("CEB303", "CEB403", "CEB505", "CEB603"):
        await post_dxp(client, sandbox.url, xmls[code], receiver=dxp.EXPORT_RECEIVER)

    def app_type(value: str, app_time: str) -> bytes:
        return xmls["CEB603"].replace(b"<ceb:appType>1</ceb:appType>", f"<ceb:appType>{value}</ceb:appType>".encode()
                                      ).replace(b"20261120103306", app_time.encode())  # fmt: skip

    status, ack, _ = await post_dxp(client, sandbox.url, app_type("2", "20261120103307"), receiver=dxp.EXPORT_RECEIVER)
    assert (status, ack["code"]) == (200, "0000")  # before the release: taken
    await sandbox.wait_idle(timeout=30)
    assert statuses(http_recorder, "CEB604") == ["2", "2", "120", "120", "399", "399", "800", "800"]
    [record] = sandbox.sandbox.export_inventories.values()
    for value, app_time in (("2", "20261120103308"), ("3", "20261120103309")):
        status, ack, _ = await post_dxp(client, sandbox.url, app_type(value, app_time), receiver=dxp.EXPORT_RECEIVER)
        assert (status, ack["code"]) == (200, "0000")
        await sandbox.wait_idle()
        refused = receipts(http_recorder, lambda r: r["type"] == "CEB604")[-2:]
        assert [r["returnStatus"] for r in refused] == ["2", "100"], value
        assert "已放行" in refused[1]["returnInfo"] and "CEB605" in refused[1]["returnInfo"]
        assert "released" in refused[1]["returnInfo"]
    assert list(sandbox.sandbox.export_inventories.values()) == [record]
    assert_from_the_export_system_and_valid(receipts(http_recorder))


async def _released_with_its_return(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> tuple[dict[str, Any], etree._Element]:
    """The 9610 export sample parcel released by the export system: its CEB604 800 receipt, and the sample return
    (CEB213) naming the number customs gave the inventory."""
    data = Path(__file__).parent / "data" / "samples"
    for code in ("CEB303", "CEB403", "CEB505", "CEB603"):
        await post_dxp(client, sandbox.url, (data / f"{code}-9610.xml").read_bytes(), receiver=dxp.EXPORT_RECEIVER)
    await sandbox.wait_idle()
    [released] = receipts(http_recorder, lambda r: r["type"] == "CEB604" and r["returnStatus"] == "800")
    refund = etree.fromstring((data / "CEB213-9610.xml").read_bytes())
    refund.find(f".//{C}invtNo").text = released["invtNo"]
    return released, refund


async def test_an_export_cancellation_names_an_inventory_the_export_system_released(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """A CEB605 naming an invtNo the export system gave no inventory of its agent is refused, CEB606 2 → 100 (the
    spec lists no code; it was concluded, 399, and voided nothing); the released inventory's own is concluded."""
    from gateway.render import render

    released, _ = await _released_with_its_return(sandbox, http_recorder, client)
    inventory = etree.fromstring((Path(__file__).parent / "data" / "samples" / "CEB603-9610.xml").read_bytes())
    head = {f: inventory.findtext(f".//{C}InventoryHead/{C}{f}") for f in ("customsCode", "agentCode", "agentName",
                                                                              "ebcCode", "ebcName")}  # fmt: skip
    transfer = {"copCode": head["agentCode"], "copName": head["agentName"], "dxpId": "DXPENT0000458763"}

    def cancel(invt_no: str, cop_no: str) -> bytes:
        return render({"type": "CEB605", "baseTransfer": transfer, "documents": [
            {**head, "copNo": cop_no, "invtNo": invt_no, "reason": "买家取消订单"}]})  # fmt: skip

    none = released["invtNo"][:-9] + "0" * 9  # serial 0: one the export system never gives
    for invt_no, cop_no, expected in ((none, "CX-NONE", ["2", "100"]),
                                      (released["invtNo"], "CX-OWN", ["2", "399"])):  # fmt: skip
        status, ack, _ = await post_dxp(client, sandbox.url, cancel(invt_no, cop_no), receiver=dxp.EXPORT_RECEIVER)
        assert (status, ack["code"]) == (200, "0000")
        await sandbox.wait_idle()
        answered = receipts(http_recorder, lambda r, c=cop_no: r["type"] == "CEB606" and r.get("copNo") == c)
        assert [r["returnStatus"] for r in answered] == expected, invt_no
        assert ("no export inventory" in answered[-1]["returnInfo"]) is (expected[-1] == "100")
    assert sandbox.sandbox.export_inventories == {}  # the released one is gone from customs, the other never was


async def test_export_returns_and_their_tallies_are_answered_by_the_export_system(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """A retail export return (CEB213) of an export inventory the export system released to its agent gets its CEB214
    2 → 120 → 800 (spec §5.2: 214 lists 120 and 800, no 399); one naming a number it never gave, or given to another
    agent, 100; the site's tally (CEB215) its CEB216 2 → 399. Each receipt echoes the coElNo and codes, with a preNo
    of its own, and is schema- and rule-valid."""
    data = Path(__file__).parent / "data" / "samples"
    released, refund = await _released_with_its_return(sandbox, http_recorder, client)
    unknown = copy.deepcopy(refund)
    unknown.find(f".//{C}invtNo").text = released["invtNo"][:-9] + "0" * 9  # serial 0: never given
    unknown.find(f".//{C}coElNo").text = "TH-UNKNOWN"
    theirs = copy.deepcopy(refund)
    theirs.find(f".//{C}agentCode").text = "4601980H99"
    theirs.find(f".//{C}coElNo").text = "TH-THEIRS"
    tally = (data / "CEB215-9610.xml").read_bytes()
    for body in (etree.tostring(refund), etree.tostring(unknown), etree.tostring(theirs), tally):
        status, ack, _ = await post_dxp(client, sandbox.url, body, receiver=dxp.EXPORT_RECEIVER)
        assert (status, ack["code"]) == (200, "0000"), ack
    await sandbox.wait_idle()
    got = receipts(http_recorder, lambda r: r["type"] in ("CEB214", "CEB216"))
    assert_from_the_export_system_and_valid(got)
    by_cop: dict[tuple[str, str], list[str]] = {}
    for r in got:
        by_cop.setdefault((r["type"], r["coElNo"]), []).append(r["returnStatus"])
    mine, counted = refund.findtext(f".//{C}coElNo"), etree.fromstring(tally).findtext(f".//{C}coElNo")
    assert by_cop == {("CEB214", mine): ["2", "120", "800"], ("CEB214", "TH-UNKNOWN"): ["2", "100"],
                      ("CEB214", "TH-THEIRS"): ["2", "100"], ("CEB216", counted): ["2", "399"]}  # fmt: skip
    [back] = receipts(http_recorder, lambda r: r["type"] == "CEB214" and r["returnStatus"] == "800")
    assert (back["invtNo"], back["agentCode"], len(back["preNo"])) == (released["invtNo"], "4601980H12", 18)


def _return_variant(refund: etree._Element, co_el_no: str, *lines: tuple[str, str], app_type: str = "1",
                    later: int = 0) -> bytes:
    """The sample return under another coElNo, its lines (gnum, qty) in place of the sample's; ``app_type`` and
    ``later`` (seconds added to its appTime) make a change or withdrawal of it."""
    doc = copy.deepcopy(refund)
    doc.set("guid", str(uuid.uuid4()).upper())
    head = doc.find(f".//{C}InvtRefundHead")
    head.find(f"{C}guid").text = str(uuid.uuid4()).upper()
    head.find(f"{C}coElNo").text = co_el_no
    head.find(f"{C}appType").text = app_type
    t = head.find(f"{C}appTime")
    t.text = str(int(t.text) + later)
    sample = doc.findall(f".//{C}InvtRefundList")
    for element in sample:
        element.getparent().remove(element)
    parent = doc.find(f".//{C}InvtRefund")
    for gnum, qty in lines:
        line = copy.deepcopy(sample[0])
        line.find(f"{C}gnum").text = gnum
        line.find(f"{C}qty").text = line.find(f"{C}qty1").text = qty
        parent.append(line)
    return etree.tostring(doc)


async def test_the_sandbox_refuses_a_return_of_goods_the_inventory_did_not_declare(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """Customs compares a return's lines with the inventory its invtNo names (A.32): an item (gnum) that is none of
    the inventory's, or more of an item than it declared — alone, or with what the inventory's earlier returns let
    back in (it may come back in parts) — is refused, CEB214 2 → 100 (海关退单) with the reason in returnInfo, and
    takes nothing back. The sample inventory declares item 1 qty 3 and item 2 qty 1. (The gateway refuses such a
    return at ingest: posted to the sandbox directly.)"""
    _, refund = await _released_with_its_return(sandbox, http_recorder, client)
    sent = [_return_variant(refund, "TH-STRANGER", ("1", "1"), ("3", "1")),  # no item 3
            _return_variant(refund, "TH-TOO-MANY", ("1", "4")),  # 4 of the 3 declared
            _return_variant(refund, "TH-PART-1", ("1", "2")),  # 2 of 3: back in
            _return_variant(refund, "TH-PART-2", ("1", "2")),  # 2 more: 4 of 3
            _return_variant(refund, "TH-PART-3", ("01", "1"))]  # the last one (gnum an xs:int)
    got, by_cop = await _returns_answered(sandbox, http_recorder, client, sent)
    assert by_cop == {"TH-STRANGER": ["2", "100"], "TH-TOO-MANY": ["2", "100"], "TH-PART-1": ["2", "120", "800"],
                      "TH-PART-2": ["2", "100"], "TH-PART-3": ["2", "120", "800"]}  # fmt: skip
    info = {r["coElNo"]: r["returnInfo"] for r in got if r["returnStatus"] == "100"}
    assert "商品序号3不是清单商品" in info["TH-STRANGER"] and "商品序号1" not in info["TH-STRANGER"]
    assert "商品序号1退货数量4超过申报数量3" in info["TH-TOO-MANY"]
    assert "商品序号1退货数量2加已退2超过申报数量3" in info["TH-PART-2"]


async def _returns_answered(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, sent: list[bytes], *,
    one_at_a_time: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The returns posted to the sandbox (``one_at_a_time``: each answered before the next goes): its CEB214
    receipts, checked as the export system's, and their statuses by return (coElNo)."""
    for body in sent:
        status, ack, _ = await post_dxp(client, sandbox.url, body, receiver=dxp.EXPORT_RECEIVER)
        assert (status, ack["code"]) == (200, "0000"), ack
        if one_at_a_time:
            await sandbox.wait_idle()
    await sandbox.wait_idle()
    got = receipts(http_recorder, lambda r: r["type"] == "CEB214")
    assert_from_the_export_system_and_valid(got)
    by_cop: dict[str, list[str]] = {}
    for r in got:
        by_cop.setdefault(r["coElNo"], []).append(r["returnStatus"])
    return got, by_cop


async def test_a_changed_return_replaces_its_earlier_version(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """A change (appType 2) of a retail export return replaces the version customs let back in: it is judged with the
    inventory's other returns, not with its own earlier version, and what it returns is what the inventory's next
    return adds to. The sample inventory declares item 1 qty 3: a return of 2, changed to 3 (not 2 + 3), changed to 1;
    then another return of 2 is back in (1 + 2), and a third of 1 more is refused (1 + 2 + 1 of 3)."""
    _, refund = await _released_with_its_return(sandbox, http_recorder, client)
    sent = [_return_variant(refund, "TH-CHANGED", ("1", "2")),
            _return_variant(refund, "TH-CHANGED", ("1", "3"), app_type="2", later=100),
            _return_variant(refund, "TH-CHANGED", ("1", "1"), app_type="2", later=200),
            _return_variant(refund, "TH-OTHER", ("1", "2"), later=300),
            _return_variant(refund, "TH-ONE-MORE", ("1", "1"), later=400)]
    # one at a time: each is judged with what the ones before let back in
    got, by_cop = await _returns_answered(sandbox, http_recorder, client, sent, one_at_a_time=True)
    assert by_cop == {"TH-CHANGED": ["2", "120", "800"] * 3, "TH-OTHER": ["2", "120", "800"],
                      "TH-ONE-MORE": ["2", "100"]}  # fmt: skip
    [refused] = [r for r in got if r["returnStatus"] == "100"]
    assert "商品序号1退货数量1加已退3超过申报数量3" in refused["returnInfo"], refused


async def test_the_sandbox_does_not_release_a_withdrawn_return(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """A withdrawal (appType 3) of a retail export return lets no goods back in: its CEB214 is 2 → 120 (taken into
    customs; the 214 has no 399, spec §5.2), never 800 (released back in), which only the return itself gets."""
    _, refund = await _released_with_its_return(sandbox, http_recorder, client)
    await post_dxp(client, sandbox.url, etree.tostring(refund), receiver=dxp.EXPORT_RECEIVER)
    await sandbox.wait_idle()
    gone = copy.deepcopy(refund)
    gone.set("guid", str(uuid.uuid4()).upper())
    head = gone.find(f".//{C}InvtRefundHead")
    head.find(f"{C}guid").text = str(uuid.uuid4()).upper()
    head.find(f"{C}appType").text = "3"
    t = head.find(f"{C}appTime")
    t.text = str(int(t.text) + 100)
    status, ack, _ = await post_dxp(client, sandbox.url, etree.tostring(gone), receiver=dxp.EXPORT_RECEIVER)
    assert (status, ack["code"]) == (200, "0000"), ack
    await sandbox.wait_idle()
    got = [r["returnStatus"] for r in receipts(http_recorder, lambda r: r["type"] == "CEB214")]
    assert got == ["2", "120", "800", "2", "120"]  # the return itself, then its withdrawal


async def test_export_transport_messages_are_answered_by_the_export_system(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """CEB607, 507 and 509 get their receipts 2 → 399 (spec §5.2: 508/510 list no 120, and for 608 the XSD has 399)
    from DXPEDCCEB0000003, echoing the document's copNo, msgSeqNo, billNo and codes with a preNo of their own, each
    schema- and rule-valid; an arrival naming no B/L gets an empty billNo; a temporary save gets 1. Nothing asks
    whether the parcels were released (the spec prescribes no order)."""
    data = Path(__file__).parent / "data" / "samples"
    xmls = {code: (data / f"{code}-9610.xml").read_bytes() for code in ("CEB607", "CEB507", "CEB509")}
    arrival = etree.fromstring(xmls["CEB507"])
    head = arrival.find(f"{C}Arrival/{C}ArrivalHead")
    assert head is not None
    head.remove(head.find(f"{C}billNo"))
    head.find(f"{C}copNo").text = "YD-NO-BILL"
    saved = etree.fromstring(xmls["CEB509"])
    saved.find(f"{C}Departure/{C}DepartureHead/{C}appStatus").text = "1"
    saved.find(f"{C}Departure/{C}DepartureHead/{C}copNo").text = "LJ-SAVED"
    for body in (*xmls.values(), etree.tostring(arrival), etree.tostring(saved)):
        status, ack, _ = await post_dxp(client, sandbox.url, body, receiver=dxp.EXPORT_RECEIVER)
        assert (status, ack["code"]) == (200, "0000"), ack
    await sandbox.wait_idle()
    got = receipts(http_recorder)
    assert_from_the_export_system_and_valid(got)
    by_cop: dict[str, list[str]] = {}
    for r in got:
        by_cop.setdefault(r["copNo"], []).append(r["returnStatus"])
    declared = {code: etree.fromstring(x).findtext(f".//{C}copNo") for code, x in xmls.items()}
    assert by_cop == {declared["CEB607"]: ["2", "399"], declared["CEB507"]: ["2", "399"],
                      declared["CEB509"]: ["2", "399"], "YD-NO-BILL": ["2", "399"], "LJ-SAVED": ["1"]}  # fmt: skip
    [arrived] = receipts(http_recorder, lambda r: r["type"] == "CEB508" and r["returnStatus"] == "399"
                         and r["copNo"] == declared["CEB507"])  # fmt: skip
    assert (arrived["billNo"], arrived["msgSeqNo"], len(arrived["preNo"])) == (
        etree.fromstring(xmls["CEB507"]).findtext(f".//{C}billNo"), "1", 18)
    assert [r["billNo"] for r in receipts(http_recorder, lambda r: r["copNo"] == "YD-NO-BILL")] == ["", ""]


async def test_bad_envelopes_are_refused_at_once(sandbox: RunningSandbox, client: aiohttp.ClientSession) -> None:
    async with client.post(sandbox.url + "/dxp", data=b"<a/>") as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "0001"
    status, ack, _ = await post_dxp(client, sandbox.url, b"<x/>", receiver="DXPENT0000000009")
    assert status == 400 and ack["code"] == "2001"
    # an import message addressed to the export system (spec §5.4 2002: not the receiver it belongs to)
    status, ack, _ = await post_dxp(client, sandbox.url, b"<x/>", receiver=dxp.EXPORT_RECEIVER)
    assert status == 400 and ack["code"] == "2002" and dxp.IMPORT_RECEIVER in ack["reason"]
    assert sandbox.stats()["received"] == 0


async def test_a_scenario_that_names_none_is_refused(sandbox: RunningSandbox, client: aiohttp.ClientSession) -> None:
    """A typo in the scenario header or in scenarios_off would read as a clean run or a scenario left on: refused,
    naming the scenarios."""
    for path in ("/dxp", "/ceb", "/inspection", "/warehouse/orders"):
        async with client.post(sandbox.url + path, data=b"<x/>", headers={"X-Sandbox-Scenario": "FAIL500"}) as r:
            body = await r.json()
            assert r.status == 400 and "'FAIL500' names no scenario" in body["reason"] and "FAIL5XX" in body["reason"]
    assert sandbox.stats()["received"] == 0
    for wrong in (["NOPE"], "POISON", [1]):
        async with client.post(sandbox.url + "/sandbox/config", json={"scenarios_off": wrong}) as r:
            assert r.status == 400, wrong
    async with client.post(sandbox.url + "/sandbox/config", json={"scenarios_off": ["poison-", "FLAKY"]}) as r:
        assert r.status == 200 and (await r.json())["scenarios_off"] == ["poison-", "FLAKY"]
    assert sandbox.sandbox.active("POISON") is None and sandbox.sandbox.active("FAIL5XX") == "FAIL5XX"


async def test_bare_ceb_endpoint(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xml = legs(rsa_key, seed=10)["CEB311"]
    async with client.post(sandbox.url + "/ceb", data=xml, headers={"X-CopMsgId": "BARE-1"}) as resp:
        assert resp.status == 200 and (await resp.json())["copMsgId"] == "BARE-1"
    async with client.post(sandbox.url + "/ceb", data=b"<<<") as resp:
        assert resp.status == 400
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB312") == ["2", "120"]
    assert receipts(http_recorder)[0]["env"].receiver_ids == (sandbox.config.enterprise_dxp_id,)


# --- counting -----------------------------------------------------------------------------------------


async def test_counts_deliveries_by_cop_msg_id_and_resets(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xmls = legs(rsa_key, seed=11)
    await post_dxp(client, sandbox.url, xmls["CEB311"], cop="COP-A")
    await post_dxp(client, sandbox.url, xmls["CEB411"], cop="COP-B")
    await post_dxp(client, sandbox.url, xmls["CEB311"], cop="COP-A")  # re-delivery of the same envelope
    async with client.get(sandbox.url + "/sandbox/stats") as resp:
        stats = await resp.json()
    assert stats["received"] == 3
    assert stats["by_cop_msg_id"] == {"COP-A": 2, "COP-B": 1}
    assert stats["duplicates"] == {"COP-A": 1}
    assert stats["by_type"] == {"CEB311Message": 2, "CEB411Message": 1}
    async with client.post(sandbox.url + "/sandbox/reset") as resp:
        assert resp.status == 200
    async with client.get(sandbox.url + "/sandbox/stats") as resp:
        stats = await resp.json()
    assert stats["received"] == 0 and stats["by_cop_msg_id"] == {}


async def test_config_endpoint_refuses_unknown_fields(sandbox: RunningSandbox, client: aiohttp.ClientSession) -> None:
    async with client.post(sandbox.url + "/sandbox/config", json={"no_such": 1}) as resp:
        assert resp.status == 400
    async with client.post(sandbox.url + "/sandbox/config", json={"flaky_failures": "3"}) as resp:
        assert resp.status == 200
    assert sandbox.config.flaky_failures == 3


@pytest.mark.parametrize("bad", ["soon", [1], {"s": 1}, True, -1, 1e400, "nan"])
async def test_config_endpoint_refuses_a_delay_that_is_no_finite_number(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, rsa_key: Any, bad: Any
) -> None:
    """Taken, such a delay failed every later message in its timing (a string in float(), inf in round()): 500s."""
    receipt_delay = sandbox.config.receipt_delay
    for name in ("tax_bill_status_delay", "receipt_delay"):
        async with client.post(sandbox.url + "/sandbox/config", json={name: bad}) as resp:
            assert resp.status == 400, (name, bad)
    assert sandbox.config.tax_bill_status_delay is None and sandbox.config.receipt_delay == receipt_delay
    async with client.post(sandbox.url + "/sandbox/config", json={"tax_bill_status_delay": "0.25"}) as resp:
        assert resp.status == 200 and sandbox.config.tax_bill_status_delay == 0.25
    for code, xml in legs(rsa_key, seed=23).items():  # the sandbox still takes messages
        assert (await post_dxp(client, sandbox.url, xml))[0] == 200, code


def test_the_command_line_refuses_a_delay_that_is_no_finite_number() -> None:
    from gateway.sandbox.__main__ import _args

    for bad in ("inf", "nan", "-1", "soon"):
        with pytest.raises(SystemExit):
            _args(["--tax-bill-status-delay", bad])
    assert _args(["--tax-bill-status-delay", "2.5"]).tax_bill_status_delay == 2.5


async def test_config_endpoint_neither_shows_nor_changes_credentials(client: aiohttp.ClientSession) -> None:
    """The receipts' API key and the warehouse secret stay where the sandbox was started: anyone on its port may
    read and change the rest, but a key shown could post receipts, and a receipt_url changed would send it away."""
    from gateway.sandbox.app import start_sandbox

    ask = "http://127.0.0.1:9/ceb/platDataOpen/platform-token-0123456789"  # a 179 platform's URL: its token secret
    sb = await start_sandbox(receipt_url="http://127.0.0.1:9/v1/receipts", receipt_headers={"X-API-Key": "k-secret"},
                             warehouse_callback_secret="w-secret", realtime_ask_urls={"4601230001": ask})  # fmt: skip
    try:
        async with client.get(sb.url + "/sandbox/config") as resp:
            shown = await resp.text()
        assert resp.status == 200 and "k-secret" not in shown and "w-secret" not in shown
        assert "platform-token" not in shown
        assert json.loads(shown)["receipt_headers"] == {"X-API-Key": "(set)"}
        assert json.loads(shown)["realtime_ask_urls"] == {"4601230001": "http://127.0.0.1:9/ceb/platDataOpen/***"}
        for change in ({"receipt_url": "http://evil.example/"}, {"receipt_headers": {}}):
            async with client.post(sb.url + "/sandbox/config", json=change) as resp:
                assert resp.status == 400 and "cannot be changed" in (await resp.json())["reason"]
        assert sb.config.receipt_url == "http://127.0.0.1:9/v1/receipts"
    finally:
        await sb.stop()


async def test_a_sandbox_started_again_gives_no_number_its_earlier_run_gave(
    http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any, tmp_path: Path
) -> None:
    """./ops/run a second time on the same data: the database keeps the first run's inventories, and a sandbox whose
    numbers began at 1 again gave the new inventories their invtNo (and preNo) — two parcels under one customs number,
    receipts and tax bills landing on the wrong one. Its state folder says where the first run's numbers ended, however
    soon it starts again (the clock alone does not: a run that gave numbers faster than ten a second is ahead of it)."""
    for run in range(2):  # one inventory each, released
        running = await start_sandbox(receipt_url=http_recorder.url + "/v1/receipts", receipt_delay=0.01,
                                      tax_bills=False, state_dir=tmp_path / "sandbox")  # fmt: skip
        try:
            await declare_all(client, running, legs(rsa_key, seed=50 + run))
            await running.wait_idle()
        finally:
            await running.stop()
    released = receipts(http_recorder, lambda r: r["type"] == "CEB622" and r["returnStatus"] == "800")
    assert len(released) == 2
    assert len({r["invtNo"] for r in released}) == len({r["preNo"] for r in released}) == 2


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    """One compiled set of XSDs for the sandboxes a test starts and starts again (as cbec serve hands its own)."""
    sset = SchemaSet()
    sset.preload()
    return sset


def _inventory_of(sb: RunningSandbox, s: Any) -> Any:
    return next(r for r in sb.sandbox.inventories.values() if r.doc.head["orderNo"] == s.inventory_doc["orderNo"])


async def test_a_sandbox_started_again_on_its_state_goes_on_from_its_ledgers(
    http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any, tmp_path: Path, schemas: SchemaSet
) -> None:
    """./ops/run stopped and started again on the same ./var (cbec serve keeps its sandbox's state in
    <data_dir>/sandbox): what customs released before is still its own. A return and a cancellation of parcels the
    first run released conclude in the second (399, not 100 "no such inventory"), their quota given back, the bill
    corrected or voided; a warehouse order taken before is cancelled (200, not 404); the numbers go on."""
    config = {"receipt_url": http_recorder.url + "/v1/receipts", "receipt_delay": 0.01, "tax_bill_status": False,
              "schemas": schemas, "state_dir": tmp_path / "sandbox"}  # fmt: skip
    kept, gone = (samples.shipment(random.Random(seed), order_no=f"RESTART-{seed}", now=NOW, n_items=2)
                  for seed in (61, 62))  # fmt: skip
    order = {"schema": "cbec.warehouse-order.v1", "orderId": "O-RESTART", "direction": "outbound",
             "callbackUrl": http_recorder.url + "/cb", "reference": {"orderNo": "RESTART-61"}, "items": []}  # fmt: skip
    def sign(root: Any) -> None:
        signing.sign(root, rsa_key)

    first = await start_sandbox(**config)
    try:
        for s in (kept, gone):
            await declare_all(client, first, samples.render_shipment(s, signer=sign))
        async with client.post(first.url + "/warehouse/orders", json=order) as resp:
            assert resp.status == 201
        await first.wait_idle()
        before = {s.inventory_doc["orderNo"]: _inventory_of(first, s) for s in (kept, gone)}
        quota = dict(first.sandbox.quota_used)
        serial = first.sandbox._serial.last
    finally:
        await first.stop()
    assert (tmp_path / "sandbox" / "state.json").exists()

    second = await start_sandbox(**config)
    try:
        assert dict(second.sandbox.quota_used) == quota and second.sandbox._serial.last >= serial
        assert {s.inventory_doc["orderNo"]: _inventory_of(second, s).invt_no for s in (kept, gone)} == {
            no: r.invt_no for no, r in before.items()}  # fmt: skip
        record, cancelled = before[kept.inventory_doc["orderNo"]], before[gone.inventory_doc["orderNo"]]
        await post_dxp(client, second.url, _return_version(kept, record.invt_no, rsa_key, [1]))
        await post_dxp(client, second.url, _import_reference("CEB623", gone, cancelled.invt_no, rsa_key))
        async with client.post(second.url + "/warehouse/orders/O-RESTART/cancel", json={"reason": "买家取消"}) as resp:
            assert resp.status == 200 and (await resp.json())["duplicate"] is False
        await second.wait_idle()
        assert statuses(http_recorder, "CEB626") == ["2", "120", "399"]
        assert statuses(http_recorder, "CEB624") == ["2", "120", "399"]
        changes = {(b["env"].msg_type, b["invtNo"]): b["status"] for code in ("CEB816", "CEB818")
                   for b in tax_bills(http_recorder, code)}  # fmt: skip
        assert changes[("CEB818Message", cancelled.invt_no)] == "3"
        assert len([b for b in tax_bills(http_recorder) if b["invtNo"] == record.invt_no]) == 2  # and its correction
        given = _inventory_of(second, kept).returned
        assert 0 < given < record.value
        expected = dict(quota)
        expected[kept.inventory_doc["buyerIdNumber"].upper()] -= given
        expected[gone.inventory_doc["buyerIdNumber"].upper()] -= cancelled.value
        assert dict(second.sandbox.quota_used) == expected
        callbacks = [json.loads(r.body)["status"] for r in http_recorder.requests if r.path == "/cb"]
        assert callbacks[-1] == "cancelled"
        # a parcel declared now gets a number of its own
        await declare_all(client, second, legs(rsa_key, seed=63))
        await second.wait_idle()
        assert _released_invt_no(http_recorder) not in {r.invt_no for r in before.values()}
    finally:
        await second.stop()


async def test_a_consolidation_due_when_the_sandbox_stopped_is_sent_once_it_starts_again(
    http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any, tmp_path: Path, schemas: SchemaSet
) -> None:
    """A bill out, its return window (tax_bill_status_delay) still open when the sandbox stops: started again on its
    state, the sandbox consolidates it when the window closes (CEB818 2, the returnTime the first run planned)."""
    config = {"receipt_url": http_recorder.url + "/v1/receipts", "receipt_delay": 0.01, "tax_bill_status_delay": 1.0,
              "schemas": schemas, "state_dir": tmp_path / "sandbox"}  # fmt: skip
    first = await start_sandbox(**config)
    try:
        await declare_all(client, first, legs(rsa_key, seed=64))
        await http_recorder.wait_for(1, where=lambda r: dxp.unwrap(r.body).msg_type == "CEB816Message")
    finally:
        await first.stop()
    assert tax_bills(http_recorder, "CEB818") == []
    second = await start_sandbox(**config)
    try:
        await second.wait_idle()
    finally:
        await second.stop()
    (bill,), (settled,) = tax_bills(http_recorder), tax_bills(http_recorder, "CEB818")
    assert (settled["invtNo"], settled["taxNo"], settled["status"]) == (bill["invtNo"], bill["taxNo"], "2")
    waited = datetime.strptime(settled["returnTime"], "%Y%m%d%H%M%S%f") - datetime.strptime(bill["returnTime"],
                                                                                            "%Y%m%d%H%M%S%f")
    assert waited.total_seconds() == pytest.approx(1.0, abs=0.002) and settled["entDutyNo"].startswith("D")


async def test_a_state_folder_holds_one_sandbox_and_what_it_took_before_a_crash(
    http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any, tmp_path: Path, schemas: SchemaSet
) -> None:
    """The state folder is locked while a sandbox uses it: a second one on it is refused. What a sandbox took is in
    the folder as it answers (its journal), not only when it stops: a copy taken while it runs — what a kill leaves —
    holds the parcel, and a last journal line cut short there is left out."""
    from gateway.sandbox.state import JOURNAL, StateInUse

    config = {"receipt_url": http_recorder.url + "/v1/receipts", "receipt_delay": 0.01, "schemas": schemas}
    running = await start_sandbox(state_dir=tmp_path / "sandbox", **config)
    try:
        with pytest.raises(StateInUse):
            await start_sandbox(state_dir=tmp_path / "sandbox", **config)
        s = samples.shipment(random.Random(65), order_no="CRASH-65", now=NOW)
        await declare_all(client, running, samples.render_shipment(s, signer=lambda root: signing.sign(root, rsa_key)))
        held = _inventory_of(running, s)
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        for name in ("state.json", JOURNAL):
            (crashed / name).write_bytes((tmp_path / "sandbox" / name).read_bytes())
        with (crashed / JOURNAL).open("ab") as journal:
            journal.write(b'[["orders",["x"')  # a line the kill cut short
        await running.wait_idle()
    finally:
        await running.stop()
    again = await start_sandbox(state_dir=crashed, **config)
    try:
        record = _inventory_of(again, s)
        assert (record.invt_no, record.value, record.doc.lines) == (held.invt_no, held.value, held.doc.lines)
        assert ("x",) not in again.sandbox.orders
    finally:
        await again.stop()


def test_the_command_lines_keep_the_sandbox_state_in_the_data_folder(tmp_path: Path) -> None:
    """`cbec sandbox --data-dir D` and `python -m gateway.sandbox --data-dir D` keep the state where `cbec serve
    --data-dir D` keeps its sandbox's: D/sandbox; without it, in memory."""
    from gateway.cli import build_parser
    from gateway.sandbox.__main__ import _args
    from gateway.sandbox.app import sandbox_state_dir

    assert sandbox_state_dir(build_parser().parse_args(["sandbox", "--data-dir", str(tmp_path)]).data_dir) == (
        tmp_path / "sandbox")
    assert sandbox_state_dir(_args(["--data-dir", str(tmp_path)]).data_dir) == tmp_path / "sandbox"
    assert sandbox_state_dir(build_parser().parse_args(["sandbox"]).data_dir) is None
    assert sandbox_state_dir(_args([]).data_dir) is None


async def test_cbec_sandbox_on_a_state_folder_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    """A second sandbox on the data folder of a running one (cbec sandbox --data-dir beside ./ops/run on the same
    ./var) would mix two ledgers: refused at start, in one line that says what to do, exit status 2."""
    running = await start_sandbox(state_dir=tmp_path / "sandbox", validate_schema=False)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "sandbox", "--port", "0", "--data-dir", str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await running.stop()
    assert proc.returncode == 2, (out, err)
    assert err.decode().strip().splitlines() == [
        f"cbec: the customs sandbox's state: another sandbox keeps its state in {tmp_path / 'sandbox'} (stop the "
        "other sandbox, or move the folder away to start it afresh)"]  # fmt: skip


def test_serial_numbers_follow_the_clock_and_never_repeat() -> None:
    """Tenths of a second since the year began, one more than the last when asked faster than that: a second series
    begun later starts above the first's, while the first did not run ahead of the clock."""
    from gateway.sandbox.receipts import SerialNumbers

    moment = [datetime(2026, 3, 1, 8, 0, 0, tzinfo=rc.CHINA_TZ)]
    first = SerialNumbers(lambda: moment[0])
    tenths = int((moment[0] - datetime(2026, 1, 1, tzinfo=rc.CHINA_TZ)).total_seconds() * 10)
    assert [next(first) for _ in range(3)] == [tenths, tenths + 1, tenths + 2]  # a burst runs ahead
    moment[0] += timedelta(seconds=60)
    assert next(first) == tenths + 600  # the clock caught up
    again = SerialNumbers(lambda: moment[0] + timedelta(seconds=1))  # started again a second later
    assert next(again) == tenths + 610 > tenths + 600
    year_end = SerialNumbers(lambda: datetime(2026, 12, 31, 23, 59, 59, 900000, tzinfo=rc.CHINA_TZ))
    assert next(year_end) < 10**9  # within the numbers' nine digits


async def test_the_schemas_are_compiled_before_the_sandbox_answers() -> None:
    app = create_sandbox_app(SandboxConfig())
    assert app[SANDBOX_KEY].stats()["schema"] == "loading"
    running = await start_sandbox()
    try:
        assert running.stats()["schema"] == "on"  # by start-up, not by the first message (whose answer would wait)
    finally:
        await running.stop()
    shared = SchemaSet()  # cbec serve hands its pipeline's over: one set of XSDs per process
    running = await start_sandbox(schemas=shared)
    try:
        assert running.sandbox.schemas is shared and running.stats()["schema"] == "on"
    finally:
        await running.stop()


# --- scenarios ----------------------------------------------------------------------------------------


def test_scenario_selection() -> None:
    assert scenario_of(None, ["ZG123", "FLAKY-1"]) == "FLAKY"
    assert scenario_of("poison", ["FLAKY-1"]) == "POISON"
    assert scenario_of("POISON-", []) == "POISON"
    assert scenario_of("bogus", ["FLAKYX-1", "SLOW"]) is None
    assert set(SCENARIOS) == {"FAIL5XX", "FLAKY", "TIMEOUT", "SLOW", "LOSTRCPT", "DUPRCPT", "OOORCPT", "REJECT",
                              "POISON"}  # fmt: skip


async def test_fail5xx_every_time(sandbox: RunningSandbox, client: aiohttp.ClientSession, rsa_key: Any) -> None:
    xml = legs(rsa_key, order_no="FAIL5XX-0001")["CEB311"]
    for _ in range(3):
        status, _, _ = await post_dxp(client, sandbox.url, xml, cop="C5")
        assert status == 503
    assert sandbox.stats()["attempts_by_cop_msg_id"] == {"C5": 3}
    assert sandbox.stats()["received"] == 0


async def test_flaky_fails_n_times_per_cop_msg_id(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xml = legs(rsa_key, order_no="FLAKY-0001")["CEB311"]
    got = [(await post_dxp(client, sandbox.url, xml, cop="F1"))[0] for _ in range(4)]
    assert got == [503, 503, 200, 200]
    assert (await post_dxp(client, sandbox.url, xml, cop="F2"))[0] == 503  # counted per CopMsgId
    stats = sandbox.stats()
    assert stats["by_cop_msg_id"] == {"F1": 2} and stats["attempts_by_cop_msg_id"] == {"F1": 4, "F2": 1}
    await sandbox.wait_idle()
    assert sorted(statuses(http_recorder, "CEB312")) == ["-301010", "120", "2"]  # the two deliveries interleave


async def test_timeout_never_answers_in_time(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xml = legs(rsa_key, order_no="TIMEOUT-0001")["CEB311"]
    env = dxp.wrap(xml, msg_type="CEB311Message", sender_id=SENDER, receiver_ids=[dxp.IMPORT_RECEIVER],
                   cop_msg_id="T1", created=datetime.now())  # fmt: skip
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        async with client.post(sandbox.url + "/dxp", data=env, timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    assert time.monotonic() - started < 2
    assert sandbox.stats()["attempts"] == 1 and sandbox.stats()["received"] == 0
    assert http_recorder.requests == []


async def test_stopping_ends_held_answers_and_receipt_delays_at_once(
    http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    running = await start_sandbox(receipt_url=http_recorder.url + "/v1/receipts", receipt_delay=60.0,
                                  slow_delay=60.0, validate_schema=False)  # fmt: skip
    try:
        status, _, _ = await post_dxp(client, running.url, legs(rsa_key)["CEB311"])
        assert status == 200  # accepted; its receipts wait a minute
        held = asyncio.create_task(post_dxp(client, running.url, legs(rsa_key, order_no="SLOW-0002")["CEB311"]))
        while running.sandbox.stats()["attempts"] < 2:  # the SLOW- answer is held
            await asyncio.sleep(0.01)
    finally:
        started = time.monotonic()
        await running.stop()
    assert time.monotonic() - started < 5  # neither the held answer nor the receipt delays kept it
    await asyncio.gather(held, return_exceptions=True)
    waited = [r for r in running.sandbox.receipts if r.get("delivered") is not None]
    assert waited and all(r["delivered"] is False and r["error"] == "sandbox shut down" for r in waited)
    assert http_recorder.requests == []


async def test_slow_answers_late_but_normally(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    sandbox.config.slow_delay = 0.2
    xml = legs(rsa_key, order_no="SLOW-0001")["CEB311"]
    started = time.monotonic()
    status, _, _ = await post_dxp(client, sandbox.url, xml)
    assert status == 200 and time.monotonic() - started >= 0.2
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB312") == ["2", "120"]


async def test_lost_receipts(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    status, _, _ = await post_dxp(client, sandbox.url, legs(rsa_key, order_no="LOSTRCPT-0001")["CEB311"])
    assert status == 200
    await sandbox.wait_idle()
    await asyncio.sleep(0.05)
    assert http_recorder.requests == []
    async with client.get(sandbox.url + "/sandbox/receipts") as resp:
        listed = (await resp.json())["receipts"]
    assert [(r["status"], r["lost"], r["delivered"]) for r in listed] == [("2", True, False), ("120", True, False)]
    counted = sandbox.stats()["receipts"]
    assert (counted["lost"], counted["failed"], counted["delivered"]) == (2, 0, 0)  # on purpose: no failure


async def test_duplicate_receipts(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    await post_dxp(client, sandbox.url, legs(rsa_key, order_no="DUPRCPT-0001")["CEB311"])
    await sandbox.wait_idle()
    got = receipts(http_recorder)
    assert [r["returnStatus"] for r in got] == ["2", "2", "120", "120"]
    assert got[0]["env"].cop_msg_id == got[1]["env"].cop_msg_id != got[2]["env"].cop_msg_id
    assert http_recorder.requests[0].body == http_recorder.requests[1].body


async def test_out_of_order_receipts(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xmls = legs(rsa_key, order_no="OOORCPT-0001")
    await declare_all(client, sandbox, xmls)
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB312") == ["120", "2"]
    inv = receipts(http_recorder, lambda r: r["type"] == "CEB622")
    assert [r["returnStatus"] for r in inv] == ["800", "399", "120", "2"]
    times = [r["returnTime"] for r in inv]
    assert times == sorted(times, reverse=True)  # returnTime still tells the true order


async def test_reject_scenario(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xmls = legs(rsa_key, order_no="REJECT-0001")
    await declare_all(client, sandbox, xmls, ("CEB311", "CEB621"))
    await sandbox.wait_idle()
    assert statuses(http_recorder, "CEB312") == ["2", "100"]
    assert statuses(http_recorder, "CEB622") == ["2", "100"]
    assert all("REJECT" in r["returnInfo"] for r in receipts(http_recorder, lambda r: r["returnStatus"] == "100"))


async def test_poison_is_permanent(sandbox: RunningSandbox, client: aiohttp.ClientSession, rsa_key: Any) -> None:
    xml = legs(rsa_key, order_no="POISON-0001")["CEB311"]
    for _ in range(2):
        status, ack, _ = await post_dxp(client, sandbox.url, xml, cop="P1")
        assert status == 400 and ack["code"] == "0001"
    assert sandbox.stats()["received"] == 0


async def test_header_selects_the_scenario(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    xml = legs(rsa_key, seed=12)["CEB311"]
    status, _, _ = await post_dxp(client, sandbox.url, xml, headers={"X-Sandbox-Scenario": "FAIL5XX"})
    assert status == 503
    status, _, _ = await post_dxp(client, sandbox.url, xml)
    assert status == 200


# --- batched receipts ---------------------------------------------------------------------------------


def posted(rec: Recorder) -> list[list[dict[str, Any]]]:
    """The receipt messages posted, each as its list of receipts (return elements)."""
    return [receipt(r.body) for r in rec.requests if r.path == "/v1/receipts"]


def per_document(posts: list[list[dict[str, Any]]]) -> dict[str, list[tuple[int, str, str]]]:
    """orderNo -> (index of the message that carried it, returnStatus, returnTime) in posting order."""
    seen: dict[str, list[tuple[int, str, str]]] = {}
    for n, p in enumerate(posts):
        for r in p:
            seen.setdefault(r["orderNo"], []).append((n, r["returnStatus"], r["returnTime"]))
    return seen


async def test_receipts_due_together_share_a_message_and_keep_each_documents_order(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    sandbox.config.receipt_batch_window = 0.2  # wide: the six declarations' receipts surely meet
    orders = [legs(rsa_key, seed=20 + i)["CEB311"] for i in range(6)]
    await asyncio.gather(*(post_dxp(client, sandbox.url, x) for x in orders))
    await sandbox.wait_idle()
    posts = posted(http_recorder)
    assert [len(p) for p in posts] == [6, 6]  # all the "2"s, then all the "120"s
    for steps in per_document(posts).values():
        assert [s for _, s, _ in steps] == ["2", "120"]
        assert steps[0][0] < steps[1][0] and steps[0][2] < steps[1][2]
    sset = pytest.importorskip("gateway.schema").SchemaSet()
    from gateway.messages import lookup

    for p in posts:
        assert sset.validate(p[0]["root"], lookup("CEB312")) == []
        assert p[0]["env"].msg_type == "CEB312Message" and p[0]["env"].receiver_ids == (SENDER,)
    # one record per receipt, each delivered, naming the message that carried it
    records = sandbox.sandbox.receipts
    assert len(records) == 12 and all(r["delivered"] is True for r in records)
    assert len({r["cop_msg_id"] for r in records}) == 2 and {r["returns"] for r in records} == {6}
    assert {r["cop_msg_id"] for r in records} == {p[0]["env"].cop_msg_id for p in posts}
    assert sandbox.stats()["receipts"]["messages"] == 2


async def test_a_message_carries_at_most_receipt_batch_max_returns(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    sandbox.config.receipt_batch_window = 0.2
    sandbox.config.receipt_batch_max = 4
    orders = [legs(rsa_key, seed=30 + i)["CEB311"] for i in range(6)]
    await asyncio.gather(*(post_dxp(client, sandbox.url, x) for x in orders))
    await sandbox.wait_idle()
    sizes = [len(p) for p in posted(http_recorder)]
    assert sum(sizes) == 12 and sizes[0] == 4 and max(sizes) == 4  # the first one full before its window
    for steps in per_document(posted(http_recorder)).values():
        assert [s for _, s, _ in steps] == ["2", "120"] and steps[0][0] < steps[1][0]


async def test_receipt_batch_max_1_sends_one_receipt_per_message(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    sandbox.config.receipt_batch_max = 1
    orders = [legs(rsa_key, seed=30 + i)["CEB311"] for i in range(3)]
    await asyncio.gather(*(post_dxp(client, sandbox.url, x) for x in orders))
    await sandbox.wait_idle()
    assert [len(p) for p in posted(http_recorder)] == [1] * 6
    assert len({r["cop_msg_id"] for r in sandbox.sandbox.receipts}) == 6


async def test_receipts_wait_for_the_message_in_flight(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, rsa_key: Any
) -> None:
    """Past its window a batch waits while receipt_batch_inflight messages of its kind are being posted."""
    sizes: list[int] = []
    busy = {"now": 0, "max": 0}

    async def slow(request: web.Request) -> web.Response:
        busy["now"] += 1
        busy["max"] = max(busy["max"], busy["now"])
        sizes.append(len(receipt(await request.read())))
        await asyncio.sleep(0.3)
        busy["now"] -= 1
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/receipts", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        sandbox.config.receipt_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/receipts"
        sandbox.config.receipt_batch_window = 0.0
        sandbox.config.receipt_batch_inflight = 1
        orders = [legs(rsa_key, seed=40 + i)["CEB311"] for i in range(6)]
        await post_dxp(client, sandbox.url, orders[0])
        await asyncio.sleep(0.1)  # its "2" is being posted now
        await asyncio.gather(*(post_dxp(client, sandbox.url, x) for x in orders[1:]))
        await sandbox.wait_idle()
    finally:
        await runner.cleanup()
    assert busy["max"] == 1 and sum(sizes) == 12
    assert sizes[:2] == [1, 5]  # the five "2"s that came while the first one was posted went together
    assert all(r["delivered"] is True for r in sandbox.sandbox.receipts)


def test_max_returns_per_receipt_message_is_the_xsds() -> None:
    from gateway.sandbox.receipts import RECEIPT_FIELDS, max_returns

    schemas = Path(__file__).resolve().parent.parent / "schemas"
    xs = "{http://www.w3.org/2001/XMLSchema}"
    for code, (root, element, _) in RECEIPT_FIELDS.items():
        xsd = etree.parse(str(schemas / BY_CODE[code].schema))
        (el,) = xsd.iterfind(f"{xs}element[@name='{root}']//{xs}element[@name='{element}']")
        assert max_returns(code) == int(el.get("maxOccurs", "1")), code
    assert max_returns("CEB900") == 1 and max_returns("CEB622") == 100


# --- inspection and warehouse -------------------------------------------------------------------------


async def test_inspection_endpoint_records_and_dedupes(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    body = {"schema": "cbec.inspection.v1", "requestId": "R1", "declarations": [{"orderNo": "X1", "items": []}]}
    for expected_dup in (False, True):
        async with client.post(sandbox.url + "/inspection", json=body) as resp:
            assert resp.status == 200 and (await resp.json())["duplicate"] is expected_dup
    async with client.post(sandbox.url + "/inspection", json={"nope": 1}) as resp:
        assert resp.status == 400
    body2 = {**body, "requestId": "R2", "declarations": [{"orderNo": "FAIL5XX-9"}]}
    async with client.post(sandbox.url + "/inspection", json=body2) as resp:
        assert resp.status == 503
    async with client.get(sandbox.url + "/sandbox/records") as resp:
        assert [r["requestId"] for r in (await resp.json())["inspection"]] == ["R1", "R1"]


async def test_warehouse_endpoint_calls_back(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    from adapters.warehouse import parse_callback

    sandbox.config.warehouse_callback_secret = "wh-secret"
    order = {"schema": "cbec.warehouse-order.v1", "orderId": "O1", "direction": "outbound",
             "callbackUrl": http_recorder.url + "/cb", "reference": {"orderNo": "ZG1"}, "items": []}  # fmt: skip
    async with client.post(sandbox.url + "/warehouse/orders", json=order) as resp:
        assert resp.status == 201
        number = (await resp.json())["warehouseOrderNo"]
    async with client.post(sandbox.url + "/warehouse/orders", json=order) as resp:
        assert resp.status == 200 and (await resp.json()) == {"warehouseOrderNo": number, "orderId": "O1",
                                                              "duplicate": True}  # fmt: skip
    await sandbox.wait_idle()
    calls = await http_recorder.wait_for(2)
    parsed = [
        parse_callback(c.body, secret="wh-secret", signature=c.headers["X-CBEC-Signature"],
                       timestamp=c.headers["X-CBEC-Timestamp"])
        for c in calls
    ]  # fmt: skip
    assert [(p.status, p.warehouse_order_no, p.reference["orderNo"]) for p in parsed] == [
        ("accepted", number, "ZG1"),
        ("shipped", number, "ZG1"),
    ]
    assert len(http_recorder.requests) == 2  # the repeated order made no new callbacks


async def test_warehouse_answers_a_cancel_as_configured(
    sandbox: RunningSandbox, http_recorder: Recorder, client: aiohttp.ClientSession
) -> None:
    """warehouse_cancel: confirm (200, then cancelled), ship (200, then the order goes on: delivered, an inbound one
    received), refuse (409 cannot_cancel, no callback; a cancel taken after it is the first), ignore (200, nothing
    more); a value of none is refused."""
    from adapters.warehouse import parse_callback

    async def order(order_id: str, direction: str = "outbound") -> None:
        body = {"schema": "cbec.warehouse-order.v1", "orderId": order_id, "direction": direction,
                "callbackUrl": http_recorder.url + "/cb", "reference": {"orderNo": f"ZG-{order_id}"}, "items": []}
        async with client.post(sandbox.url + "/warehouse/orders", json=body) as resp:
            assert resp.status == 201

    async def cancel(order_id: str, answer: str) -> tuple[int, Any]:
        async with client.post(sandbox.url + "/sandbox/config", json={"warehouse_cancel": answer}) as resp:
            assert resp.status == 200 and (await resp.json())["warehouse_cancel"] == answer
        async with client.post(f"{sandbox.url}/warehouse/orders/{order_id}/cancel",
                               json={"orderId": order_id, "reason": "customs cancelled it"}) as resp:
            return resp.status, await resp.json()

    async def called_back(order_id: str) -> list[str]:
        await sandbox.wait_idle()
        return [p.status for p in (parse_callback(c.body) for c in http_recorder.requests) if p.order_id == order_id]

    for oid, direction in (("C1", "outbound"), ("S1", "outbound"), ("S2", "inbound"), ("R1", "outbound"),
                           ("I1", "outbound")):  # fmt: skip
        await order(oid, direction)
    await sandbox.wait_idle()
    assert (await cancel("C1", "confirm"))[0] == 200 and (await called_back("C1"))[-1] == "cancelled"
    assert (await cancel("S1", "ship"))[0] == 200 and (await called_back("S1"))[-1] == "delivered"
    assert (await cancel("S2", "ship"))[0] == 200 and await called_back("S2") == ["accepted", "received", "received"]
    status, body = await cancel("R1", "refuse")
    assert (status, body["code"]) == (409, "cannot_cancel") and await called_back("R1") == ["accepted", "shipped"]
    assert (await cancel("R1", "confirm"))[0] == 200 and (await called_back("R1"))[-1] == "cancelled"
    assert (await cancel("I1", "ignore"))[0] == 200 and await called_back("I1") == ["accepted", "shipped"]
    async with client.post(sandbox.url + "/sandbox/config", json={"warehouse_cancel": "maybe"}) as resp:
        assert resp.status == 400


# --- the pytest plugin --------------------------------------------------------------------------------


def test_plugin_yields_external_url_and_skips_local_only_tests(tmp_path: Path) -> None:
    (tmp_path / "test_ext.py").write_text(
        "pytest_plugins = ['gateway.sandbox.pytest_plugin']\n"
        "def test_url(customs_sandbox):\n"
        "    assert customs_sandbox == 'http://127.0.0.1:9/real'\n"
        "def test_local(customs_sandbox_local):\n"
        "    raise AssertionError('must be skipped')\n"
    )
    env = {**os.environ, "CBEC_CUSTOMS_SANDBOX_URL": "http://127.0.0.1:9/real/"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
         "-o", "asyncio_default_fixture_loop_scope=function", str(tmp_path / "test_ext.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "1 passed, 1 skipped" in proc.stdout, proc.stdout + proc.stderr


def test_stats_json_is_plain(sandbox: RunningSandbox) -> None:
    json.dumps(sandbox.stats())  # no Decimal / Counter surprises for HTTP clients
