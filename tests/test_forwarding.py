"""Forwarding: routing as configuration (pure), the configuration format, and the store's outbox side
(enqueue in the ingest transaction, held inventories, receipts applied) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import cbec_queue
import pytest
import pytest_asyncio

from adapters.dxp import cop_msg_id_for
from gateway import config, samples, taxbills
from gateway import receipts as rc
from gateway.config import ForwardingSettings, RouteSettings, WebhookSettings
from gateway.console.queries import awaited_documents, receipts_awaited
from gateway.forward import (
    HeldVersion,
    LegState,
    Replacement,
    Router,
    inventory_in_force,
    ordering_key,
    settle_held,
    shipment_customs_status,
)
from gateway.outbox import Outbox, order_lock
from gateway.pipeline import Pipeline
from gateway.render import render
from gateway.sandbox.receipts import (
    CHINA_TZ,
    RECEIPT_FOR,
    build_receipt,
    build_receipts,
    build_tax_bills,
    format_receipt,
    new_guid,
    return_time,
)
from gateway.schema import SchemaSet
from gateway.store import Store, quota_reassessor, refusals_restorer
from gateway.tax import ANNUAL_LIMIT, assess, returned_value
from gateway.workers import effective_endpoints
from tests.apiutil import sign_as_agent
from tests.forwardutil import legs, version_of

SANDBOX_KINDS = {"customs": "customs", "inspection": "inspection", "warehouse": "warehouse"}


def router(**changes: object) -> Router:
    fwd = ForwardingSettings(**changes)  # type: ignore[arg-type]
    kinds = dict(SANDBOX_KINDS)
    if fwd.webhooks:
        kinds["webhook"] = "webhook"
    return Router.from_settings(fwd, kinds)


# --- routing ------------------------------------------------------------------------------------------


def test_default_routes() -> None:
    r = router()
    assert r.endpoints_for("CEB311") == ("customs",)
    assert r.endpoints_for("CEB621", {"9610"}) == ("customs",)
    assert r.endpoints_for("CEB621", {"1210"}) == ("customs", "inspection")
    assert r.endpoints_for("CEB621", {"9610", "1210"}) == ("customs", "inspection")
    assert r.endpoints_for("CEB621", {"1239"}) == ("customs", "inspection")  # held to the 1210 rules, inspected too
    assert r.endpoints_for("CEB312") == ()  # receipts are never forwarded
    assert r.on_release == ("warehouse",)


def test_holds_declarations_and_changes_of_inventories_not_withdrawals() -> None:
    r = router()
    assert r.holds("CEB621", {"1"}) and r.holds("CEB621", {"2", "3"})
    assert not r.holds("CEB621", {"3"})
    assert not r.holds("CEB311", {"1"})


def test_routes_to_missing_endpoints_are_dropped() -> None:
    fwd = ForwardingSettings(routes=(RouteSettings(("CEB311",), ("customs", "audit")),))
    r = Router.from_settings(fwd, {"customs": "customs"})
    assert r.endpoints_for("CEB311") == ("customs",)
    assert set(r.dropped) == {"audit", "warehouse"}
    assert r.on_release == ()


def test_the_sandbox_gets_more_deliveries_in_flight_from_a_worker_that_serves_no_api() -> None:
    def in_flight(**kw: Any) -> dict[str, int]:
        return {e.name: e.concurrency for e in effective_endpoints(ForwardingSettings(), **kw)}

    url = "http://127.0.0.1:9"
    shared, dedicated = in_flight(sandbox_url=url), in_flight(sandbox_url=url, dedicated=True)
    assert shared["customs"] < dedicated["customs"]
    assert shared["inspection"] == dedicated["inspection"]  # only customs carries the volume
    # no sandbox, nothing configured: only the sellers' webhook endpoint, there for a reload to add the first seller
    assert set(in_flight(sandbox_url=None, dedicated=True)) == {"webhook"}


def test_message_jobs_keep_guid_and_cop_msg_id_across_resends() -> None:
    r = router()
    first = r.message_jobs(message_id=7, guid="G1", message_type="CEB621", endpoints=("customs", "inspection"))
    assert [j.dedupe_key for j in first] == ["customs:G1", "inspection:G1"]
    assert first[0].payload == {"message_id": 7, "guid": "G1", "message_type": "CEB621",
                                "cop_msg_id": cop_msg_id_for("customs:G1")}  # fmt: skip
    assert "cop_msg_id" not in first[1].payload
    (again,) = r.resend_jobs(message_id=7, guid="G1", message_type="CEB621", customs_endpoint="customs", resend=2,
                             delay_s=5)  # fmt: skip
    assert again.dedupe_key == "customs:G1:resend2" and again.delay_s == 5
    assert again.payload["cop_msg_id"] == first[0].payload["cop_msg_id"]
    assert r.cop_msg_id("G1", ("customs",)) == first[0].payload["cop_msg_id"]
    assert r.cop_msg_id("G1", ("inspection",)) is None


def test_ordering_keys_are_the_documents_business_keys() -> None:
    assert ordering_key("CEB311", (" 4601260E35", "ORD-1 ")) == "CEB311:4601260E35:ORD-1"  # trimmed, as stored
    assert ordering_key("CEB900", ("COP-1", "")) == "CEB900:COP-1"  # a one-field type's stored key2 is no part
    # a cancel or a refund of an inventory is ordered behind that inventory (same ebcCode and orderNo)
    assert ordering_key("CEB623", ("E", "O1")) == ordering_key("CEB625", ("E", "O1")) == "CEB621:E:O1"
    assert ordering_key("CEB623", ("E", "O2")) != ordering_key("CEB621", ("E", "O1"))
    # a split transport message's part: the same key from its fields or from the stored (key1, copNo + msgSeqNo)
    stored = ordering_key("CEB507", ("S1", "YD-1\x1f2"))
    assert ordering_key("CEB507", ("S1", "YD-1", "2")) == stored == "CEB507:S1:YD-1:2"
    assert ordering_key("CEB507", ("S1", "YD-1", "02")) == stored  # msgSeqNo the number, as stored
    r = router()
    jobs = r.message_jobs(message_id=7, guid="G1", message_type="CEB621", endpoints=("customs", "inspection"),
                          ordering_keys=["CEB621:E:O2", "CEB621:E:O1", "CEB621:E:O1"])  # fmt: skip
    assert [j.ordering_keys for j in jobs] == [("CEB621:E:O1", "CEB621:E:O2")] * 2
    (again,) = r.resend_jobs(message_id=7, guid="G1", message_type="CEB621", customs_endpoint="customs", resend=1,
                             delay_s=5, ordering_keys=["CEB621:E:O1"])  # fmt: skip
    assert again.ordering_keys == ("CEB621:E:O1",) and again.delay_s == 5
    # of the deliveries that are no declarations, a warehouse order and its cancel are ordered (the cancel behind it)
    (release,) = r.release_jobs(message_id=3, guid="G", doc_index=1, ebp_code="P", order_no="O")
    (cancel,) = r.cancel_jobs(message_id=3, guid="G", doc_index=1, ebp_code="P", order_no="O", reason="r")
    assert release.ordering_keys == cancel.ordering_keys == ("warehouse:G:1",)
    assert cancel.dedupe_key == "warehouse:G:1:cancel" and cancel.kind == "warehouse.cancel"


def test_webhooks_go_to_sellers_holding_a_party_code() -> None:
    hook = WebhookSettings("seller-a", frozenset({"E1"}), "http://127.0.0.1:1/h", "s3cret")
    r = router(webhooks=(hook,))
    (job,) = r.webhook_jobs(ebp_code="P", order_no="O1", parties=["E1", "X"], previous="declared", status="released",
                            info=None, event_id="e1", leg=None, changed_at="t1")  # fmt: skip
    assert job.endpoint == "webhook" and job.payload["seller"] == "seller-a"
    assert job.payload["data"]["customsStatus"] == "released" and job.dedupe_key == "webhook:seller-a:P:O1:released:e1"
    # each change is its own delivery (a status may come back), delivered in order per seller and shipment
    (again,) = r.webhook_jobs(ebp_code="P", order_no="O1", parties=["E1"], previous="pending", status="released",
                              info=None, event_id="e2", leg=None, changed_at="t2")  # fmt: skip
    assert again.dedupe_key != job.dedupe_key and again.ordering_keys == job.ordering_keys == ("webhook:seller-a:P:O1",)
    assert r.webhook_jobs(ebp_code="P", order_no="O1", parties=["Y"], previous=None, status="released", info=None,
                          event_id="e3", leg=None, changed_at="t3") == []  # fmt: skip
    silent = router()
    assert silent.webhook_jobs(ebp_code="P", order_no="O1", parties=["E1"], previous=None, status="x", info=None,
                               event_id="e4", leg=None, changed_at="t4") == []  # fmt: skip


def test_a_dead_delivery_tells_why_only_to_the_sellers_of_its_document() -> None:
    """Every seller of the shipment hears that a document's delivery died; why (the dead job's error: a URL, an
    answer of customs' channel) only one a party of that document, as the shipment's view shows it that document's
    transmissions and no other's; a recovered delivery says no error."""
    seller, payer = (WebhookSettings("seller", frozenset({"EBC"}), "http://h", "k"),
                     WebhookSettings("payer", frozenset({"PAY"}), "http://h", "k"))  # fmt: skip
    r = router(webhooks=(seller, payer))
    document = {"messageType": "CEB621", "guid": "I-G", "messageGuid": "M-G", "kind": "inventory", "appType": "2",
                "customsStatus": "accepted"}  # fmt: skip
    jobs = r.delivery_webhook_jobs(outcome="failed", ebp_code="EBP", order_no="O1", parties=["EBC", "EBP", "PAY"],
                                   document=document, event_id="e1",
                                   error=("TransientError: HTTP 503 from the relay", ["EBC", "AGENT"]))  # fmt: skip
    told = {j.payload["seller"]: j.payload["data"] for j in jobs}
    assert told["seller"] == {"ebpCode": "EBP", "orderNo": "O1", **document,
                              "error": "TransientError: HTTP 503 from the relay"}
    assert told["payer"] == {**told["seller"], "error": None}
    back = r.delivery_webhook_jobs(outcome="recovered", ebp_code="EBP", order_no="O1", parties=["EBC", "PAY"],
                                   document=document, event_id="e2")  # fmt: skip
    assert all("error" not in j.payload["data"] for j in back) and len(back) == 2


def test_a_reconciliation_change_shows_each_seller_the_findings_as_its_key_would() -> None:
    """Each seller of the shipment hears of it with the values of the documents it is a party of; those of another
    enterprise's document are withheld (gateway.auth.findings_view), the warnings left out. The payment company is a
    party of the order too (its payCode): it sees both values; the seller, not the payment's."""
    seller, payer = (WebhookSettings("seller", frozenset({"EBC"}), "http://h", "k"),
                     WebhookSettings("payer", frozenset({"PAY"}), "http://h", "k"))  # fmt: skip
    r = router(webhooks=(seller, payer))
    assert r.reconciliation_told() == "mismatched" and router().reconciliation_told() is None
    finding = {"code": "recon.amount_paid_mismatch", "field": "acturalPaid", "message": "100.00 != 101.00",
               "blocking": True,
               "left": {"doc": "CEB311", "guid": "O-G", "path": "/o", "value": "100.00"},
               "right": {"doc": "CEB411", "guid": "P-G", "path": "/p", "value": "101.00"}}  # fmt: skip
    warning = {**finding, "code": "recon.freight_mismatch", "blocking": False}
    documents = [{"message_type": "CEB311", "doc_guid": "O-G", "parties": ["EBP", "EBC", "PAY"]},
                 {"message_type": "CEB411", "doc_guid": "P-G", "parties": ["EBP", "PAY"]}]  # fmt: skip
    jobs = r.reconciliation_webhook_jobs(ebp_code="EBP", order_no="O1", parties=["EBC", "EBP", "PAY"],
                                         state="mismatched", previous="incomplete", missing=["inventory"],
                                         findings=[finding, warning], documents=documents, event_id="e1")  # fmt: skip
    by_seller = {j.payload["seller"]: j for j in jobs}
    assert set(by_seller) == {"seller", "payer"}
    for name in ("seller", "payer"):
        job = by_seller[name]
        assert job.dedupe_key == f"webhook:{name}:EBP:O1:reconciliation:mismatched:e1"
        assert job.ordering_keys == (f"webhook:{name}:EBP:O1",)
        data = job.payload["data"]
        assert {k: v for k, v in data.items() if k != "findings"} == {"ebpCode": "EBP", "orderNo": "O1",
                                                                      "state": "mismatched", "previous": "incomplete",
                                                                      "missing": ["inventory"]}  # fmt: skip
        assert len(data["findings"]) == 1  # the warning is no part of it
    [seen] = by_seller["payer"].payload["data"]["findings"]
    assert seen == finding
    [seen] = by_seller["seller"].payload["data"]["findings"]
    assert seen["left"] == finding["left"] and "101.00" not in str(seen)
    assert seen["right"] == {"doc": "CEB411", "guid": None, "path": "/p", "value": None, "withheld": True}
    assert r.reconciliation_webhook_jobs(ebp_code="EBP", order_no="O1", parties=["X"], state="matched",
                                         previous="mismatched", missing=[], findings=[], documents=[],
                                         event_id="e2") == []  # fmt: skip


def test_release_jobs() -> None:
    (job,) = router().release_jobs(message_id=3, guid="G", doc_index=2, ebp_code="P", order_no="O")
    assert job.endpoint == "warehouse" and job.dedupe_key == "warehouse:G:2"
    assert job.payload["direction"] == "outbound" and job.payload["doc_index"] == 2


# --- shipment customs status ------------------------------------------------------------------------------


def leg(kind: str, state: str = "none", status: str | None = None, rank: int | None = None) -> LegState:
    return LegState(kind, state, status, rank, f"info {status}" if status else None)


def test_shipment_customs_status() -> None:
    assert shipment_customs_status([]) == ("pending", None)
    assert shipment_customs_status([leg("order", "queued"), leg("inventory", "held")])[0] == "pending"
    assert shipment_customs_status([leg("order", "sent"), leg("inventory", "held")])[0] == "declared"
    assert shipment_customs_status([leg("order", "receipted", "120", 40), leg("inventory", "sent")])[0] == "declared"
    assert shipment_customs_status([leg("inventory", "receipted", "399", 60)])[0] == "accepted"
    assert shipment_customs_status([leg("inventory", "receipted", "-621004", 40)])[0] == "accepted"
    assert shipment_customs_status([leg("inventory", "receipted", "800", 100)]) == ("released", "info 800")
    assert shipment_customs_status([leg("inventory", "receipted", "899", 110)])[0] == "released"
    status, info = shipment_customs_status(
        [leg("order", "rejected", "100", 80), leg("inventory", "receipted", "800", 100)]
    )
    assert status == "rejected" and info is not None and info.startswith("order 100")
    assert shipment_customs_status([leg("inventory", "receipted", "700", 90)])[0] == "rejected"


def test_a_failed_delivery_fails_the_shipment_until_customs_accepted_its_inventory() -> None:
    status, info = shipment_customs_status([leg("order", "receipted", "2", 20), leg("payment", "failed")])
    assert status == "failed" and info is not None and info.startswith("payment: delivery to customs failed")
    assert shipment_customs_status([leg("order", "failed"), leg("inventory", "held")])[0] == "failed"
    # customs' word comes first: a rejection, and an inventory accepted or released
    assert shipment_customs_status([leg("order", "rejected", "100", 80), leg("payment", "failed")])[0] == "rejected"
    waybill = leg("waybill", "failed")
    assert shipment_customs_status([waybill, leg("inventory", "receipted", "120", 40)])[0] == "accepted"
    assert shipment_customs_status([waybill, leg("inventory", "receipted", "800", 100)])[0] == "released"


def test_the_inventory_version_a_shipment_follows() -> None:
    """The current version, then the ones it replaced: customs' word on the version it holds stands while a change or
    withdrawal is on its way; a release of any of them stands whatever came after; a withdrawal customs took leaves
    no inventory."""
    first = leg("inventory", "receipted", "120", 40)
    change = replace(leg("inventory", "sent"), app_type="2")
    withdrawal = replace(leg("inventory", "queued"), app_type="3", withdrawn=True)
    assert inventory_in_force([first]) == 0
    assert inventory_in_force([replace(leg("inventory", "queued"))]) == 0  # a first declaration on its way
    assert inventory_in_force([change, first]) == 1  # customs holds the first
    assert inventory_in_force([replace(change, forward_state="failed"), first]) == 1
    assert inventory_in_force([replace(change, forward_state="held"), change, first]) == 2
    assert inventory_in_force([replace(change, forward_state="receipted", customs_status="2", customs_rank=20),
                               first]) == 0  # customs' word on the change
    refused = replace(change, forward_state="rejected", customs_status="100", customs_rank=80)
    assert inventory_in_force([refused, first]) == 0
    assert inventory_in_force([change, refused, first]) == 2  # past the change it refused
    assert inventory_in_force([change, replace(first, forward_state="rejected", customs_status="100",
                                               customs_rank=80)]) == 0  # customs refused the first: holds nothing
    released = leg("inventory", "receipted", "800", 100)
    assert inventory_in_force([replace(change, forward_state="receipted", customs_status="2", customs_rank=20),
                               released]) == 1
    assert inventory_in_force([withdrawal, first]) == 1  # a withdrawal on its way
    assert inventory_in_force([replace(withdrawal, forward_state="receipted", customs_status="2", customs_rank=20),
                               first]) is None  # taken: no inventory at customs
    assert inventory_in_force([replace(withdrawal, forward_state="unsent"), leg("inventory", "unsent")]) is None


def held(id: int, message_id: int, app_type: str = "1", state: str = "held", **kw: Any) -> HeldVersion:
    return HeldVersion(id, message_id, app_type, state, **kw)


def test_a_withdrawal_of_what_customs_never_had_drops_its_held_versions_and_goes_nowhere() -> None:
    first, change = held(1, 10), held(2, 20, "2")
    # withdrawn: first declaration held, alone in its message
    settled = settle_held([Replacement(9, "3", (first,))], {10: [first]})
    assert (settled.dropped, settled.concluded) == ({10}, {9})
    # changed, then withdrawn: neither version goes, nor the withdrawal
    settled = settle_held([Replacement(9, "3", (change, first))], {10: [first], 20: [change]})
    assert (settled.dropped, settled.concluded) == ({10, 20}, {9})
    # a version customs has before them: the held change is dropped, the withdrawal goes
    sent = held(1, 10, state="receipted")
    settled = settle_held([Replacement(9, "3", (change, sent))], {20: [change]})
    assert (settled.dropped, settled.concluded) == ({20}, set())


def test_a_change_of_what_customs_never_had_keeps_the_first_declaration_and_drops_the_change_between() -> None:
    first, second = held(1, 10), held(2, 20, "2")
    settled = settle_held([Replacement(9, "2", (first,))], {10: [first]})
    assert (settled.dropped, settled.concluded) == (set(), set())
    settled = settle_held([Replacement(9, "2", (second, first))], {10: [first], 20: [second]})
    assert (settled.dropped, settled.concluded) == ({20}, set())


def test_a_held_version_another_document_of_its_message_needs_goes_and_so_does_its_withdrawal() -> None:
    """A message goes whole: a parcel still to go keeps it, the withdrawn parcel with it, and the withdrawal then
    goes too (customs will have the withdrawn parcel)."""
    a, b = held(1, 10), held(2, 10, is_current=True)
    settled = settle_held([Replacement(9, "3", (a,))], {10: [a, b]})
    assert (settled.dropped, settled.concluded) == (set(), set())
    # the other parcel withdrawn too (its current version a withdrawal): nothing of the message goes
    b_gone = held(2, 10, key_withdrawn=True)
    settled = settle_held([Replacement(9, "3", (a,))], {10: [a, b_gone]})
    assert (settled.dropped, settled.concluded) == ({10}, {9})


# --- configuration ----------------------------------------------------------------------------------------


def test_forwarding_configuration_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "cbec.toml"
    path.write_text(
        """
[forwarding]
sender_id = "DXPENT0000458763"
receipt_timeout_s = 120
warehouse_cancel_timeout_s = 3600
watchdog_repush = true
hold_types = ["CEB621"]
on_release = ["wms"]

[forwarding.endpoints.customs]
kind = "customs"
transport = "folder"
outbox = "/data/dxp/outbox"
inbox = "/data/dxp/inbox"
inbox_min_age_s = 5
export_receiver_id = "DXPENT0000000003"
concurrency = 2
rate_per_s = 5
retry = { base_s = 0.5, max_attempts = 6 }

[forwarding.endpoints.wms]
kind = "warehouse"
url = "http://127.0.0.1:9000/orders"
warehouse_code = "HK01"

[[forwarding.routes]]
message_types = ["CEB311", "CEB411", "CEB511", "CEB621"]
endpoints = ["customs"]
modes = ["*"]

[forwarding.webhooks.seller-a]
codes = ["4601260E35"]
url = "https://seller.example/hooks"
secret = "s3cret"
""",
        encoding="utf-8",
    )
    s = config.load(path, env={"CBEC_FORWARDING_MAX_REPUSHES": "5"})
    f = s.forwarding
    assert f.sender_id == "DXPENT0000458763" and f.receipt_timeout_s == 120 and f.watchdog_repush
    assert f.max_repushes == 5
    assert f.warehouse_cancel_timeout_s == 3600 and config.ForwardingSettings().warehouse_cancel_timeout_s == 86400
    customs, wms = f.endpoints
    assert customs.transport == "folder" and customs.inbox == Path("/data/dxp/inbox") and customs.rate_per_s == 5
    assert customs.inbox_min_age_s == 5 and wms.inbox_min_age_s == 0
    assert customs.retry.base_s == 0.5 and customs.retry.max_attempts == 6 and customs.retry.cap_s == 300
    assert (customs.import_receiver_id, customs.export_receiver_id) == (None, "DXPENT0000000003")
    assert wms.kind == "warehouse" and wms.warehouse_code == "HK01"
    assert f.routes == (RouteSettings(("CEB311", "CEB411", "CEB511", "CEB621"), ("customs",), None),)
    assert f.webhooks[0].codes == frozenset({"4601260E35"})
    r = Router.from_settings(f, {e.name: e.kind for e in f.endpoints})
    assert r.endpoints_for("CEB621", {"1210"}) == ("customs",) and r.on_release == ("wms",)


def test_a_seller_s_webhook_inside_an_allowed_network_is_taken(tmp_path: Path) -> None:
    """forwarding.webhook_allowed_networks names the internal networks a seller's webhook may reach (its endpoint in
    the zone's own network): a URL there is taken, and the worker's webhook adapter allows that network."""
    path = tmp_path / "hooks.toml"
    path.write_text('[forwarding]\nwebhook_allowed_networks = ["10.20.0.0/16", "127.0.0.1"]\n'
                    '[forwarding.webhooks.s]\ncodes = ["X"]\nsecret = "s"\nurl = "http://10.20.3.4:8000/h"\n'
                    '[forwarding.webhooks.t]\ncodes = ["Y"]\nsecret = "t"\nurl = "http://localhost:9/h"\n',
                    encoding="utf-8")  # fmt: skip
    f = config.load(path, env={}).forwarding
    assert f.webhook_allowed_networks == ("10.20.0.0/16", "127.0.0.1")
    assert [w.url for w in f.webhooks] == ["http://10.20.3.4:8000/h", "http://localhost:9/h"]


@pytest.mark.parametrize(
    "text",
    [
        '[forwarding.endpoints.x]\nkind = "telex"\nurl = "http://h"',
        '[forwarding.endpoints.customs]\nkind = "customs"\ntransport = "http"',
        '[forwarding.endpoints.customs]\nkind = "customs"\ntransport = "folder"',
        '[forwarding.endpoints.w]\nkind = "warehouse"',
        '[forwarding.endpoints.c]\nkind = "customs"\nurl = "http://h"\nsurprise = 1',
        '[forwarding]\nsandbox = "maybe"',
        "[forwarding]\nunheard_of = 1",
        '[forwarding.webhooks.s]\nurl = "http://h"',
        '[forwarding.endpoints.c]\nkind = "customs"\ntransport = "folder"\noutbox = "/o"\ninbox_min_age_s = -1',
    ],
)
def test_bad_forwarding_configuration_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError):
        config.load(path, env={})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # a DxpMsg id is 1..16 characters: loaded, every message of the flow would be a dead letter at its send
        ('[forwarding.endpoints.c]\nkind = "customs"\nurl = "http://h"\nimport_receiver_id = "DXPEDCCEB00000002"',
         "import_receiver_id 'DXPEDCCEB00000002' is 17 characters"),
        ('[forwarding.endpoints.c]\nkind = "customs"\nurl = "http://h"\nsender_id = "DXPENT00004587631"',
         "sender_id 'DXPENT00004587631' is 17 characters"),
        ('[forwarding]\nsender_id = "DXPENT00004587631"', "forwarding.sender_id 'DXPENT00004587631'"),
        # read by nothing but a customs endpoint
        ('[forwarding.endpoints.wms]\nkind = "warehouse"\nurl = "http://h"\nexport_receiver_id = "DXPENT0000000008"',
         "export_receiver_id is a customs endpoint's"),
    ],
)
def test_dxp_ids_are_checked_when_the_configuration_loads(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "ids.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(says)):
        config.load(path, env={})


_CUSTOMS = '[forwarding.endpoints.customs]\nkind = "customs"\nurl = "http://127.0.0.1:9/a"\n'


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # what the queue, the worker or a timer cannot run with: refused with the configuration (cbec config check,
        # every command), not met as a traceback when cbec serve builds its worker
        (_CUSTOMS + "retry = { max_attempts = 0 }", "endpoints.customs.retry.max_attempts: must be at least 1"),
        (_CUSTOMS + "retry = { base_s = -1 }", "forwarding.endpoints.customs.retry.base_s: must be at least 0"),
        (_CUSTOMS + "retry = { factor = 0.5 }", "retry.factor: must be at least 1"),
        (_CUSTOMS + "retry = { max_attempts = 2.5 }", "retry.max_attempts: must be an integer; found 2.5"),
        (_CUSTOMS + "timeout_s = -5", "forwarding.endpoints.customs.timeout_s: must be above 0"),
        (_CUSTOMS + "concurrency = 0", "forwarding.endpoints.customs.concurrency: must be at least 1"),
        (_CUSTOMS + "breaker_failures = 0", "breaker_failures: must be at least 1"),
        (_CUSTOMS + "rate_per_s = -1", "rate_per_s: must be above 0"),
        (_CUSTOMS + 'timeout_s = "soon"', "timeout_s: must be a number; found 'soon'"),
        ('[forwarding.endpoints.customs]\nkind = "customs"\nurl = "ftp://x/y"',
         "forwarding.endpoints.customs.url: must be an http:// or https:// address; found 'ftp://x/y'"),
        ('[forwarding.webhooks.s]\ncodes = ["X"]\nsecret = "s"\nurl = "hook.example"',
         "forwarding.webhooks.s.url: must be an http:// or https:// address"),
        # a seller's webhook at an internal address: the gateway's own port, the cloud's metadata service, the intranet
        ('[forwarding.webhooks.s]\ncodes = ["X"]\nsecret = "s"\nurl = "http://127.0.0.1:8080/v1/messages"',
         "forwarding.webhooks.s.url: 127.0.0.1 is a loopback address; a seller's webhook goes to public addresses"),
        ('[forwarding.webhooks.s]\ncodes = ["X"]\nsecret = "s"\nurl = "http://169.254.169.254/latest/meta-data/"',
         "169.254.169.254 is a link-local address"),
        ('[forwarding.webhooks.s]\ncodes = ["X"]\nsecret = "s"\nurl = "http://LocalHost./h"',
         "forwarding.webhooks.s.url: 127.0.0.1 is a loopback address"),
        ('[forwarding.webhooks.s]\ncodes = ["X"]\nsecret = "s"\nurl = "https://[fd00::5]/h"', "fd00::5 is a private"),
        ('[forwarding.webhooks.s]\ncodes = ["X"]\nsecret = "s"\nurl = "http://[64:ff9b::a9fe:a9fe]/latest/"',
         "64:ff9b::a9fe:a9fe (NAT64, to 169.254.169.254) is a link-local address"),
        ('[forwarding]\nwebhook_allowed_networks = ["10.20.0.0/16"]\n'
         '[forwarding.webhooks.s]\ncodes = ["X"]\nsecret = "s"\nurl = "http://10.21.0.1/h"', "10.21.0.1 is a private"),
        ('[forwarding]\nwebhook_allowed_networks = ["intranet"]', "forwarding.webhook_allowed_networks: 'intranet'"),
        # typos that made every delivery a dead letter saying only "invalid url"
        ('[forwarding.endpoints.customs]\nkind = "customs"\nurl = "http://127.0.0.1:18391:/dxp"',
         "forwarding.endpoints.customs.url: has no valid port"),
        ('[forwarding.endpoints.customs]\nkind = "customs"\nurl = "http://127.0.0.1:183910/dxp"', "has no valid port"),
        ('[forwarding.endpoints.customs]\nkind = "customs"\nurl = "http://127.0.0 .1/dxp"',
         "must not hold blanks or control characters"),
        ("[forwarding]\nreceipt_timeout_s = 0", "forwarding.receipt_timeout_s: must be above 0"),
        ("[forwarding]\nwarehouse_cancel_timeout_s = 0", "forwarding.warehouse_cancel_timeout_s: must be above 0"),
        ("[forwarding]\nmax_repushes = -1", "forwarding.max_repushes: must be at least 0"),
        # routes that go nowhere: a type that does not exist, declarations stored and never sent
        ('[[forwarding.routes]]\nmessage_types = ["CEB999"]\nendpoints = ["customs"]',
         "forwarding.routes[0] names message types that do not exist: CEB999"),
        ('[forwarding.endpoints.cust]\nkind = "customs"\nurl = "http://127.0.0.1:9/a"',
         "to 'customs', which is not configured, and nothing else takes them to customs (the customs endpoint "
         "configured is cust: name it customs, or route them to it)"),
        ('[forwarding]\nsandbox = "off"', "no customs endpoint is configured and forwarding.sandbox is off"),
    ],
)
def test_settings_nothing_could_run_with_are_refused_when_the_configuration_loads(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(says)):
        config.load(path, env={})


def test_an_inspection_or_warehouse_endpoint_left_out_and_forwarding_off_load(tmp_path: Path) -> None:
    """What a site may choose: no inspection endpoint (the 1210 inventories still reach customs), forwarding off with
    the sandbox off (nothing sent, by choice)."""
    for text in (_CUSTOMS, '[forwarding]\nenabled = false\nsandbox = "off"'):
        path = tmp_path / "ok.toml"
        path.write_text(text, encoding="utf-8")
        config.load(path, env={})


def test_one_receiver_id_for_both_flows_is_refused_with_what_to_set_instead(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text('[forwarding.endpoints.c]\nkind = "customs"\nurl = "http://h"\nreceiver_id = "DXPENT0000000009"',
                    encoding="utf-8")  # fmt: skip
    with pytest.raises(ValueError, match="import_receiver_id and/or export_receiver_id"):
        config.load(path, env={})


_TWO_CUSTOMS = """
[forwarding.endpoints.customs]
kind = "customs"
url = "http://127.0.0.1:9/a"
[forwarding.endpoints.eport]
kind = "customs"
transport = "folder"
outbox = "/data/out"
[[forwarding.routes]]
message_types = ["CEB311", "CEB621"]
endpoints = ["customs"]
modes = ["9610"]
[[forwarding.routes]]
message_types = ["CEB621"]
endpoints = ["eport", "inspection"]
modes = ["1210"]
"""


def test_a_message_type_routed_to_two_customs_endpoints_is_refused(tmp_path: Path) -> None:
    """Customs takes a declaration once and its receipts name one sending's CopMsgId: two customs endpoints for
    one type are refused at load (modes do not separate them: a message of both modes matches both routes)."""
    path = tmp_path / "two.toml"
    path.write_text(_TWO_CUSTOMS, encoding="utf-8")
    with pytest.raises(ValueError, match=r"CEB621 to 2 customs endpoints \(customs, eport\)"):
        config.load(path, env={})
    # one customs endpoint per type, the other types elsewhere: accepted
    path.write_text(_TWO_CUSTOMS.replace('["CEB621"]', '["CEB411"]'), encoding="utf-8")
    f = config.load(path, env={}).forwarding
    r = Router.from_settings(f, {e.name: e.kind for e in f.endpoints})
    assert r.endpoints_for("CEB621", {"9610", "1210"}) == ("customs",) and r.endpoints_for("CEB411") == ("eport",)


def test_customs_role_needs_no_codes(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[[api_keys]]\nname = "eport"\nkey = "k-123"\nrole = "customs"\n', encoding="utf-8")
    (key,) = config.load(path, env={}).api_keys
    assert key.role is config.Role.CUSTOMS and key.codes == frozenset()


# --- the outbox against PostgreSQL ------------------------------------------------------------------------

_SCHEMAS = SchemaSet()


def xml_of(payload: dict[str, Any]) -> bytes:
    return render(payload, signer=sign_as_agent if payload["type"] == "CEB621" else None)


@dataclass
class Flow:
    pool: asyncpg.Pool
    store: Store
    outbox: Outbox
    pipeline: Pipeline

    async def submit(self, payload: dict[str, Any]) -> dict[str, Any]:
        checked = self.pipeline.check(xml_of(payload))
        result = await self.store.ingest(checked.message, checked.raw, submitter="test")
        return result.body

    async def receipt(self, payload: dict[str, Any], status: str, time_ms: int, **extra: str) -> list[dict[str, Any]]:
        """A receipt for the (single) document of a submitted payload, as customs would write it."""
        xml = build_receipt(RECEIPT_FOR[payload["type"]], return_values(payload, status, time_ms, **extra))
        return await self.post(xml)

    async def post(self, xml: bytes) -> list[dict[str, Any]]:
        intake = rc.read(xml, _SCHEMAS)
        return [r.as_dict() for r in await self.outbox.apply_receipts(intake, source="http", submitter="test")]

    async def sent(self, *payloads: dict[str, Any]) -> None:
        """Held messages as if released and delivered: for tests of receipts that receipt no legs (a receipt for a
        message still held moves nothing, as customs never had it)."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE documents SET forward_state = 'sent', sent_at = now() WHERE forward_state = 'held'"
                " AND message_id IN (SELECT id FROM messages WHERE guid = ANY ($1::text[]))",
                [p["guid"] for p in payloads],
            )

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    async def doc_by_guid(self, guid: str) -> asyncpg.Record:
        (row,) = await self.rows("SELECT * FROM documents WHERE doc_guid = $1", guid)
        return row

    async def doc(self, payload: dict[str, Any]) -> asyncpg.Record:
        (row,) = await self.rows(
            "SELECT d.* FROM documents AS d JOIN messages AS m ON m.id = d.message_id WHERE m.guid = $1",
            payload["guid"],
        )
        return row

    async def awaited(self) -> set[int]:
        """The documents awaiting a receipt (the watchdog's list), checked against the documents themselves: sent,
        and no receipt since — sent, or queued again by the watchdog (its re-send not made yet)."""
        rows = await self.rows("SELECT * FROM receipts_awaited")
        kept = {(r["document_id"], r["sent_at"]) for r in rows}
        sent = await self.rows("SELECT id, sent_at FROM documents WHERE (forward_state IN ('sent', 'queued', 'failed')"
                               " OR (forward_state = 'receipted' AND repushes > 0 AND customs_rank < $1))"
                               " AND sent_at IS NOT NULL AND (last_receipt_at IS NULL OR last_receipt_at < sent_at)",
                               rc.RANKS["3"])  # fmt: skip
        assert kept == {(r["id"], r["sent_at"]) for r in sent}
        assert all(r["awaited_since"] <= r["sent_at"] for r in rows)
        return {document_id for document_id, _ in kept}

    async def jobs(self) -> dict[str, asyncpg.Record]:
        return {r["dedupe_key"]: r for r in await self.rows("SELECT * FROM jobs ORDER BY id")}

    async def shipment(self, s: samples.ShipmentSample) -> asyncpg.Record:
        (row,) = await self.rows(
            "SELECT * FROM shipments WHERE ebp_code = $1 AND order_no = $2",
            s.order_doc["ebpCode"],
            s.order_doc["orderNo"],
        )
        return row


def return_values(payload: dict[str, Any], status: str, time_ms: int, **extra: str) -> dict[str, str]:
    """The return element customs would write for the (single) document of a payload."""
    doc = payload["documents"][0]
    values = {k: str(v) for k, v in doc.items() if isinstance(v, str | int)}
    values.update(guid=str(doc.get("guid") or payload["guid"]), returnStatus=status,
                  returnTime=f"20260101120000{time_ms:03d}", returnInfo=f"status {status}", **extra)  # fmt: skip
    if payload["type"] == "CEB621":
        values.setdefault("copNo", str(doc.get("copNo") or doc["orderNo"])[:20])
        values.setdefault("preNo", "B20260101000000001")
    return values


HOOK = WebhookSettings("seller-a", frozenset({samples.EBC_CODE}), "http://127.0.0.1:9/hook", "secret")


@pytest_asyncio.fixture
async def flow(db_pool: asyncpg.Pool) -> AsyncIterator[Flow]:
    fwd = ForwardingSettings(webhooks=(HOOK,), resend_delay_s=5.0)
    outbox = Outbox(db_pool, Router.from_settings(fwd, {**SANDBOX_KINDS, "webhook": "webhook"}),
                    reassess=quota_reassessor())  # fmt: skip
    store = Store(db_pool, outbox=outbox)
    yield Flow(db_pool, store, outbox, Pipeline(_SCHEMAS, store))
    await store.aclose()


def shipment(seed: int, mode: str = "9610", **kw: Any) -> samples.ShipmentSample:
    return samples.shipment(random.Random(seed), mode=mode, **kw)


def test_order_lock_is_the_stores() -> None:
    from gateway.keystate import LOCK_ORDER
    from gateway.store import _lock_id

    assert order_lock("ORDER-1") == _lock_id((LOCK_ORDER, "ORDER-1"))


def test_buyer_lock_is_the_stores() -> None:
    from gateway.keystate import LOCK_BUYER
    from gateway.outbox import buyer_lock
    from gateway.store import _lock_id

    assert buyer_lock("110101199001011234") == _lock_id((LOCK_BUYER, "110101199001011234"))


@pytest.mark.db
async def test_ingest_enqueues_with_the_message(flow: Flow) -> None:
    s = shipment(1)
    await flow.submit(s.order)
    doc = await flow.doc(s.order)
    key = f"customs:{s.order['guid']}"
    assert doc["forward_state"] == "queued" and doc["cop_msg_id"] == cop_msg_id_for(key)
    job = (await flow.jobs())[key]
    assert job["endpoint"] == "customs" and job["state"] == "queued" and job["kind"] == "CEB311"
    assert job["payload"]["message_id"] == doc["message_id"] and job["payload"]["cop_msg_id"] == doc["cop_msg_id"]
    # the same message again is a replay: no second job
    await flow.submit(s.order)
    assert len(await flow.jobs()) == 1


@pytest.mark.db
async def test_a_wave_of_messages_enqueues_each_job_with_its_own_message(flow: Flow) -> None:
    """The jobs of a wave go with its write statement, which fills in each payload's message id by guid."""
    legs = [leg for i in range(6) for leg in (shipment(100 + i).order, shipment(100 + i).payment)]
    await asyncio.gather(*(flow.submit(leg) for leg in legs))  # together: batched, several to a wave
    waves = await flow.rows("SELECT count(DISTINCT xmin::text) AS n FROM messages")
    assert waves[0]["n"] < len(legs)  # some went in one batch
    jobs = await flow.jobs()
    assert len(jobs) == len(legs)
    for leg in legs:
        doc = await flow.doc(leg)
        job = jobs[f"customs:{leg['guid']}"]
        assert job["payload"]["message_id"] == doc["message_id"] and job["payload"]["guid"] == leg["guid"]
        assert job["payload"]["cop_msg_id"] == doc["cop_msg_id"] and job["state"] == "queued"


@pytest.mark.db
async def test_a_receipt_for_the_first_declaration_moves_it_not_its_later_change(flow: Flow) -> None:
    """Receipts find an order by its key, and which version of it they answer by the guid they echo: the first
    declaration's "4" re-sends the first declaration, its 120 and its rejection are the first one's; the change,
    not yet sent, stays queued until its own receipts."""
    s = shipment(12)
    o = s.order_doc
    await flow.submit(s.order)
    change = version_of(s.order, "2", 60, consignee=o["consignee"] + "甲")
    await flow.submit(change)
    (transient,) = await flow.receipt(s.order, "4", 1)
    first, second = await flow.doc(s.order), await flow.doc(change)
    assert transient["document_ids"] == [first["id"]] and transient["resend"], transient
    jobs = await flow.jobs()
    assert f"customs:{s.order['guid']}:resend1" in jobs and f"customs:{change['guid']}:resend1" not in jobs
    (accepted,) = await flow.receipt(s.order, "120", 2)
    first, second = await flow.doc(s.order), await flow.doc(change)
    assert accepted["document_ids"] == [first["id"]] and first["customs_status"] == "120"
    assert second["customs_status"] is None and second["forward_state"] == "queued"
    (own,) = await flow.receipt(change, "120", 3)
    assert own["document_ids"] == [second["id"]] and (await flow.doc(change))["customs_status"] == "120"
    # a receipt whose guid names no version of the key goes to the current document, as before
    unknown = version_of(change, "2", 0)  # the same key, a guid no version has
    (other,) = await flow.receipt(unknown, "399", 4)
    assert other["document_ids"] == [second["id"]], other


@pytest.mark.db
async def test_a_receipt_for_an_older_change_sent_beside_kept_documents_moves_nothing(flow: Flow) -> None:
    """A message of two orders: a new one, and a change of a stored one that is older than it (ignored_older). The
    message goes to customs whole, so customs answers the ignored change too (-301014): that receipt is known by
    the change's guid and moves nothing — not the key's current version, nor its shipment. The other order's
    receipts and the current version's go where they did."""
    a, b = shipment(31), shipment(32)
    await flow.submit(a.order)
    older = version_of(a.order, "2", -60, consignee=a.order_doc["consignee"] + "乙")
    both = {**b.order, "documents": [b.order["documents"][0], older["documents"][0]]}
    body = await flow.submit(both)
    assert [d["outcome"] for d in body["documents"]] == ["accepted", "ignored_older"], body
    (unkept,) = await flow.rows("SELECT * FROM unkept_documents")
    assert (unkept["doc_guid"], unkept["message_type"], unkept["key1"], unkept["key2"]) == \
        (older["documents"][0]["guid"], "CEB311", a.order_doc["ebpCode"], a.order_doc["orderNo"])  # fmt: skip
    (accepted,) = await flow.receipt(a.order, "120", 1)
    assert accepted["outcome"] == "applied", accepted
    (refused,) = await flow.receipt(older, "-301014", 2)
    assert refused["outcome"] == "ignored_older" and refused["document_ids"] == [], refused
    (carrier,) = await flow.rows("SELECT id FROM messages WHERE guid = $1", both["guid"])
    assert refused["message_id"] == carrier["id"]
    current = await flow.doc(a.order)
    assert current["customs_status"] == "120" and current["forward_state"] == "receipted", dict(current)
    assert (await flow.shipment(a))["customs_status"] != "rejected"
    (row,) = await flow.rows("SELECT outcome, document_id, applied FROM receipts WHERE doc_guid = $1",
                             older["documents"][0]["guid"])  # fmt: skip
    assert (row["outcome"], row["document_id"], row["applied"]) == ("ignored_older", None, False)
    (own,) = await flow.receipt({**b.order, "documents": [b.order["documents"][0]]}, "120", 3)
    assert own["outcome"] == "applied" and own["document_ids"] == [(await flow.doc(b.order))["id"]]
    # the same older change alone: nothing stored, nothing sent, nothing recorded as sent
    alone = version_of(a.order, "2", -30)
    assert (await flow.submit(alone))["documents"][0]["outcome"] == "ignored_older"
    assert len(await flow.rows("SELECT * FROM unkept_documents")) == 1


@pytest.mark.db
async def test_a_waybill_alone_moves_its_own_shipments_customs_status(flow: Flow) -> None:
    """A waybill that comes before its order (any arrival order is normal) has a shipment of its own, ebpCode '';
    customs' receipts of the waybill move that shipment's status as any leg's, and it goes once the order comes."""
    s = shipment(33)
    await flow.submit(s.waybill)
    alone = await flow.rows("SELECT * FROM shipments WHERE ebp_code = '' AND order_no = $1", s.order_doc["orderNo"])
    assert [r["customs_status"] for r in alone] == ["pending"]
    await flow.receipt(s.waybill, "2", 1)
    [row] = await flow.rows("SELECT * FROM shipments WHERE ebp_code = '' AND order_no = $1", s.order_doc["orderNo"])
    assert row["customs_status"] == "declared", dict(row)
    (refused,) = await flow.receipt(s.waybill, "100", 2)
    assert refused["outcome"] == "applied", refused
    [row] = await flow.rows("SELECT * FROM shipments WHERE ebp_code = '' AND order_no = $1", s.order_doc["orderNo"])
    assert row["customs_status"] == "rejected", dict(row)
    await flow.submit(s.order)  # the keyed shipment takes the waybill over, with its rejection
    assert not await flow.rows("SELECT * FROM shipments WHERE ebp_code = '' AND order_no = $1", s.order_doc["orderNo"])
    assert (await flow.shipment(s))["customs_status"] == "rejected"


@pytest.mark.db
async def test_a_transient_receipt_says_resend_only_while_a_resend_is_made(flow: Flow) -> None:
    """Past max_repushes a "4" sends nothing more, and its answer says so."""
    s = shipment(15)
    await flow.submit(s.payment)
    limit = flow.outbox.router.max_repushes if flow.outbox.router else 0
    answers = [(await flow.receipt(s.payment, "4", i))[0]["resend"] for i in range(limit + 2)]
    assert answers == [True] * limit + [False, False]
    resends = [k for k in await flow.jobs() if k.startswith(f"customs:{s.payment['guid']}:resend")]
    assert len(resends) == limit


@pytest.mark.db
async def test_declaration_jobs_are_ordered_by_their_documents_keys(flow: Flow) -> None:
    """Every job of a declaration carries its documents' business keys: at ingest, released from a hold, and
    re-sent; so a change waits for its original."""
    s = shipment(12, mode="1210")
    o, inv = s.order_doc, s.inventory_doc
    order_key = f"CEB311:{o['ebpCode']}:{o['orderNo']}"
    await flow.submit(s.order)
    change = version_of(s.order, "2", 60, consignee=o["consignee"])
    await flow.submit(change)
    jobs = await flow.jobs()
    original_job, change_job = jobs[f"customs:{s.order['guid']}"], jobs[f"customs:{change['guid']}"]
    assert original_job["ordering_keys"] == change_job["ordering_keys"] == [order_key]
    async with flow.pool.acquire() as conn:
        claimed = await cbec_queue.claim(conn, worker_id="w", lease_s=30, limit=10)
    assert [j.id for j in claimed] == [original_job["id"]]  # the change waits for the original

    # a message of several documents carries all their keys
    two = shipment(13)
    both = dict(two.order, guid="A" * 8 + two.order["guid"][8:],
                documents=[two.order_doc, {**shipment(14).order_doc, "ebpCode": two.order_doc["ebpCode"]}])
    await flow.submit(both)
    keys = sorted(f"CEB311:{d['ebpCode']}:{d['orderNo']}" for d in both["documents"])
    assert (await flow.jobs())[f"customs:{both['guid']}"]["ordering_keys"] == keys

    # a held inventory, released by the third receipt: customs and inspection jobs, the inventory's key
    for payload in (s.payment, s.waybill, s.inventory):
        await flow.submit(payload)
    await flow.receipt(change, "2", 1)
    await flow.receipt(s.payment, "2", 1)
    await flow.receipt(s.waybill, "2", 1)
    jobs = await flow.jobs()
    inv_key = [f"CEB621:{inv['ebcCode']}:{inv['orderNo']}"]
    assert jobs[f"customs:{s.inventory['guid']}"]["ordering_keys"] == inv_key
    assert jobs[f"inspection:{s.inventory['guid']}"]["ordering_keys"] == inv_key
    # a transient receipt re-sends the payment with its key
    (res,) = await flow.receipt(s.payment, "4", 2)
    assert res["resend"]
    p = s.payment_doc
    resent = (await flow.jobs())[f"customs:{s.payment['guid']}:resend1"]
    assert resent["ordering_keys"] == [f"CEB411:{p['payCode']}:{p['payTransactionId']}"]


@pytest.mark.db
async def test_a_refused_message_enqueues_nothing_even_in_a_batch(flow: Flow) -> None:
    """Messages ingested together share a transaction; the one refused leaves no job, the others keep theirs."""
    base = [shipment(10 + i) for i in range(6)]
    twin = shipment(10)
    twin.order["guid"] = "0" * 35 + "1"  # same key as base[0]'s order, new guid: a duplicate (409)
    results = await asyncio.gather(
        *(flow.submit(s.order) for s in base), flow.submit(twin.order), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1
    jobs = await flow.jobs()
    assert set(jobs) == {f"customs:{s.order['guid']}" for s in base}


@pytest.mark.db
async def test_inventory_waits_for_matching_and_the_three_receipts(flow: Flow) -> None:
    s = shipment(2, mode="1210")
    for payload in (s.inventory, s.order, s.payment, s.waybill):
        await flow.submit(payload)
    inv_key = f"customs:{s.inventory['guid']}"
    assert (await flow.doc(s.inventory))["forward_state"] == "held"
    assert inv_key not in await flow.jobs()
    assert (await flow.shipment(s))["state"] == "matched"
    # two of three legs receipted: still held; a rejection of the third keeps it held
    await flow.receipt(s.order, "2", 1)
    await flow.receipt(s.payment, "2", 1)
    assert (await flow.doc(s.inventory))["forward_state"] == "held"
    await flow.receipt(s.waybill, "1", 1)  # temporary save is not a declaration
    assert (await flow.doc(s.inventory))["forward_state"] == "held"
    (res,) = await flow.receipt(s.waybill, "2", 2)
    assert res["outcome"] == "applied"
    inv = await flow.doc(s.inventory)
    assert inv["forward_state"] == "queued"
    jobs = await flow.jobs()
    assert jobs[inv_key]["payload"]["cop_msg_id"] == inv["cop_msg_id"]
    assert f"inspection:{s.inventory['guid']}" in jobs  # 1210 goes to inspection too
    # later receipts release nothing twice
    await flow.receipt(s.order, "120", 3)
    assert sum(k.startswith("customs:" + s.inventory["guid"]) for k in await flow.jobs()) == 1


@pytest.mark.db
async def test_a_held_inventory_says_what_it_waits_for(flow: Flow) -> None:
    """A message goes to customs whole (one signature over its documents): a bonded warehouse's CEB621 of two parcels
    waits for both. The shipment view of each says why (held_until): of each parcel not ready — its own first —, the
    shipment and what it waits for; a parcel ready waits for the other's."""
    a, b = shipment(40, mode="1210"), shipment(41, mode="1210")
    both = {**a.inventory, "guid": "6F1D2C3B-4A59-4687-9A0B-1C2D3E4F5A6B",
            "documents": [a.inventory_doc, b.inventory_doc]}  # fmt: skip
    await flow.submit(both)

    async def held_until(s: Any) -> Any:
        found = await flow.store.get_shipment(s.order_doc["ebpCode"], s.order_doc["orderNo"])
        [inv] = [d for d in (await flow.outbox.shipment_forwarding(found))["documents"] if d["kind"] == "inventory"]
        return inv.get("held_until") if inv["forward_state"] == "held" else inv["forward_state"]

    of = lambda s, *waits: {"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"],  # noqa: E731
                            "waiting_for": list(waits)}  # fmt: skip
    everything = ("matched", "order", "payment", "waybill")
    assert await held_until(a) == [of(a, *everything), of(b, *everything)]
    for payload in (a.order, a.payment, a.waybill):
        await flow.submit(payload)
    await flow.receipt(a.order, "2", 1)
    assert await held_until(a) == [of(a, "payment", "waybill"), of(b, *everything)]
    await flow.receipt(a.payment, "2", 1)
    await flow.receipt(a.waybill, "2", 1)
    # a is ready: it waits for b alone, and b's view says the same, its own first
    assert await held_until(a) == [of(b, *everything)]
    assert await held_until(b) == [of(b, *everything)]
    for payload in (b.order, b.payment, b.waybill):
        await flow.submit(payload)
        await flow.receipt(payload, "2", 2)
    assert await held_until(a) == await held_until(b) == "queued"


@pytest.mark.db
async def test_a_receipt_for_a_held_inventory_moves_nothing(flow: Flow) -> None:
    """A held inventory was never sent: a receipt that finds it (its head guid echoed) is kept as not_sent and moves
    neither it nor its shipment — no release to the warehouse, no webhook — and the inventory is released and sent
    once its legs are receipted, as any held one."""
    s = shipment(21)
    for payload in (s.order, s.payment, s.waybill, s.inventory):
        await flow.submit(payload)
    inv = await flow.doc(s.inventory)
    assert inv["forward_state"] == "held"
    for status, t in (("2", 1), ("800", 2)):
        (res,) = await flow.receipt(s.inventory, status, t)
        assert res["outcome"] == "not_sent" and res["document_ids"] == [inv["id"]], res
    inv = await flow.doc(s.inventory)
    assert (inv["forward_state"], inv["customs_status"], inv["last_receipt_at"]) == ("held", None, None)
    assert (await flow.shipment(s))["customs_status"] == "pending"
    jobs = await flow.jobs()
    assert not [k for k in jobs if not k.startswith("customs:")], list(jobs)  # no warehouse order, no webhook
    stored = await flow.rows("SELECT outcome, document_id, applied FROM receipts WHERE message_type = 'CEB622'")
    assert {(r["outcome"], r["document_id"], r["applied"]) for r in stored} == {("not_sent", inv["id"], False)}
    for payload in (s.order, s.payment, s.waybill):
        await flow.receipt(payload, "2", 3)
    assert (await flow.doc(s.inventory))["forward_state"] == "queued"
    assert f"customs:{s.inventory['guid']}" in await flow.jobs()


@pytest.mark.db
async def test_inventory_arriving_last_is_released_in_its_own_transaction(flow: Flow) -> None:
    s = shipment(3)
    for payload in (s.order, s.payment, s.waybill):
        await flow.submit(payload)
        await flow.receipt(payload, "120", 5)
    await flow.submit(s.inventory)
    assert (await flow.doc(s.inventory))["forward_state"] == "queued"
    assert f"customs:{s.inventory['guid']}" in await flow.jobs()
    assert f"inspection:{s.inventory['guid']}" not in await flow.jobs()  # 9610


@pytest.mark.db
async def test_an_ingest_looks_for_releases_only_once_the_order_and_payment_have_receipts(
    flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store tells the outbox which live legs customs took: a matched inventory whose order or payment has no
    receipt yet costs no release statement, and is released all the same once the receipts come."""
    looked: list[set[tuple[str, str]]] = []
    release = Outbox._release

    async def counting(self: Outbox, conn: asyncpg.Connection, shipments: Any, waybills: Any) -> list[int]:
        looked.append(set(shipments))
        return await release(self, conn, shipments, waybills)

    monkeypatch.setattr(Outbox, "_release", counting)
    key = lambda s: (s.order_doc["ebpCode"], s.order_doc["orderNo"])  # noqa: E731

    # nothing receipted: matched, held, and no statement looks for a release at ingest
    a = shipment(30)
    for payload in (a.order, a.payment, a.waybill, a.inventory):
        await flow.submit(payload)
    assert (await flow.shipment(a))["state"] == "matched"
    assert (await flow.doc(a.inventory))["forward_state"] == "held"
    assert looked == []
    for payload in (a.order, a.payment, a.waybill):
        await flow.receipt(payload, "2", 1)
    assert (await flow.doc(a.inventory))["forward_state"] == "queued"  # the receipts release it

    # the order receipted, the payment only saved temporarily (rank below "declaring"): still no statement
    b = shipment(31)
    for payload in (b.order, b.payment, b.waybill):
        await flow.submit(payload)
    await flow.receipt(b.order, "2", 1)
    await flow.receipt(b.payment, "1", 1)
    await flow.receipt(b.waybill, "2", 1)
    looked.clear()  # the receipts looked (they always do)
    await flow.submit(b.inventory)
    assert looked == []
    assert (await flow.doc(b.inventory))["forward_state"] == "held"
    await flow.receipt(b.payment, "2", 2)
    assert (await flow.doc(b.inventory))["forward_state"] == "queued"

    # order and payment receipted, the waybill not yet: looked at in SQL, which finds the waybill missing
    c = shipment(32)
    for payload in (c.order, c.payment, c.waybill):
        await flow.submit(payload)
    await flow.receipt(c.order, "2", 1)
    await flow.receipt(c.payment, "2", 1)
    looked.clear()  # the receipts looked (they always do)
    await flow.submit(c.inventory)
    assert looked == [{key(c)}]
    assert (await flow.doc(c.inventory))["forward_state"] == "held"
    await flow.receipt(c.waybill, "2", 1)
    assert (await flow.doc(c.inventory))["forward_state"] == "queued"


@pytest.mark.db
async def test_a_rejected_leg_keeps_the_inventory_held_and_rejects_the_shipment(flow: Flow) -> None:
    s = shipment(4)
    for payload in (s.order, s.payment, s.waybill, s.inventory):
        await flow.submit(payload)
    await flow.receipt(s.order, "2", 1)
    await flow.receipt(s.order, "100", 2)
    await flow.receipt(s.payment, "120", 2)
    await flow.receipt(s.waybill, "120", 2)
    assert (await flow.doc(s.inventory))["forward_state"] == "held"
    order = await flow.doc(s.order)
    assert order["forward_state"] == "rejected" and order["customs_status"] == "100"
    ship = await flow.shipment(s)
    assert ship["customs_status"] == "rejected" and "100" in ship["customs_info"]
    # a late "2" changes nothing: the state never moves back
    (res,) = await flow.receipt(s.order, "120", 1)
    assert res["outcome"] == "stale"
    assert (await flow.doc(s.order))["customs_status"] == "100"


@pytest.mark.db
async def test_receipts_out_of_order_and_duplicated_end_released(flow: Flow) -> None:
    s = shipment(5)
    for payload in (s.order, s.payment, s.waybill):
        await flow.submit(payload)
        await flow.receipt(payload, "2", 1)
    await flow.submit(s.inventory)
    for status, t in (("800", 4), ("2", 1), ("399", 3), ("800", 4), ("120", 2)):
        await flow.receipt(s.inventory, status, t, invtNo="46012026I000000001")
    inv = await flow.doc(s.inventory)
    assert inv["customs_status"] == "800" and inv["forward_state"] == "receipted"
    assert inv["invt_no"] == "46012026I000000001" and inv["pre_no"] == "B20260101000000001"
    ship = await flow.shipment(s)
    assert ship["customs_status"] == "released"
    stored = await flow.rows("SELECT outcome, count(*) AS n FROM receipts WHERE message_type = 'CEB622' GROUP BY 1")
    assert {r["outcome"]: r["n"] for r in stored} == {"applied": 1, "stale": 3}  # the second 800 was not stored
    jobs = await flow.jobs()
    assert f"warehouse:{s.inventory['guid']}:1" in jobs
    [hook] = [j for key, j in jobs.items()
              if key.startswith(f"webhook:seller-a:{s.order_doc['ebpCode']}:{s.order_doc['orderNo']}:released:")]
    assert hook["payload"]["data"]["customsStatus"] == "released"


@pytest.mark.db
async def test_duplicate_code_counts_as_accepted_and_transient_resends(flow: Flow) -> None:
    s = shipment(6)
    await flow.submit(s.order)
    (res,) = await flow.receipt(s.order, "-301010", 1)
    assert res["outcome"] == "applied"
    order = await flow.doc(s.order)
    assert order["forward_state"] == "receipted" and order["customs_rank"] == rc.RANK_ACCEPTED
    s2 = shipment(7)
    await flow.submit(s2.order)
    (res,) = await flow.receipt(s2.order, "4", 1)
    assert res["outcome"] == "transient" and res["resend"]
    job = (await flow.jobs())[f"customs:{s2.order['guid']}:resend1"]
    assert job["payload"]["cop_msg_id"] == cop_msg_id_for(f"customs:{s2.order['guid']}")
    assert (await flow.doc(s2.order))["repushes"] == 1


@pytest.mark.db
async def test_format_receipt_rejects_every_document_of_the_message(flow: Flow) -> None:
    s = shipment(8)
    await flow.submit(s.order)
    doc = await flow.doc(s.order)
    xml900 = format_receipt(ori_cop_msg_id=doc["cop_msg_id"], ori_message_type="CEB311Message", original=b"<x/>",
                            info="0002 schema")  # fmt: skip
    (res,) = await flow.outbox.apply_receipts(rc.read(xml900, _SCHEMAS), source="http", submitter="t")
    assert res.outcome == "applied" and res.message_id == doc["message_id"]
    assert (await flow.doc(s.order))["forward_state"] == "rejected"


@pytest.mark.db
async def test_unmatched_receipts_are_kept(flow: Flow) -> None:
    values = {"guid": "F" * 36, "payCode": "X", "payTransactionId": "nobody", "returnStatus": "2",
              "returnTime": "20260101120000001", "returnInfo": "?"}  # fmt: skip
    xml = build_receipt("CEB412", values)
    (res,) = await flow.outbox.apply_receipts(rc.read(xml, _SCHEMAS), source="http", submitter="t")
    assert res.outcome == "unmatched"
    (row,) = await flow.rows("SELECT * FROM receipts")
    assert row["outcome"] == "unmatched" and row["document_id"] is None and row["raw_xml"].startswith("<?xml")


@pytest.mark.db
async def test_a_receipt_that_came_before_its_declaration_is_applied_when_it_comes_again(flow: Flow) -> None:
    """Customs re-delivers a receipt it got no answer for; one stored as unmatched (its declaration was not stored
    yet) is tried again then, not swallowed as already stored. An applied one stays a duplicate."""
    s = shipment(12)
    early = build_receipt("CEB312", return_values(s.order, "2", 1))
    (res,) = await flow.post(early)
    assert res["outcome"] == "unmatched"
    await flow.submit(s.order)
    (res,) = await flow.post(early)
    assert res["outcome"] == "applied" and res["document_ids"] == [(await flow.doc(s.order))["id"]]
    assert (await flow.doc(s.order))["customs_status"] == "2"
    (res,) = await flow.post(early)
    assert res["outcome"] == "duplicate"
    (row,) = await flow.rows("SELECT * FROM receipts")  # still one row
    assert row["outcome"] == "applied" and row["raw_xml"].startswith("<?xml")


@pytest.mark.db
async def test_a_return_twice_in_one_message_is_stored_once_and_a_redelivery_keeps_its_own_xml(flow: Flow) -> None:
    """The same return twice in one message: the first applies, the copy is a duplicate (the insert of both was a
    500). A message re-delivering an unmatched return beside a new one keeps its XML on the new one."""
    s, t = shipment(13), shipment(14)
    await flow.submit(s.order)
    twice = build_receipts("CEB312", [return_values(s.order, "2", 1), return_values(s.order, "2", 1)])
    assert [r["outcome"] for r in await flow.post(twice)] == ["applied", "duplicate"]
    lonely = return_values(t.order, "2", 1)
    [first] = await flow.post(build_receipts("CEB312", [lonely], message_guid="M1" + "0" * 34))
    assert first["outcome"] == "unmatched"
    await flow.submit(t.order)
    m2 = build_receipts("CEB312", [lonely, return_values(t.order, "120", 2)], message_guid="M2" + "0" * 34)
    assert [r["outcome"] for r in await flow.post(m2)] == ["applied", "applied"]
    kept = await flow.rows("SELECT raw_xml FROM receipts WHERE raw_xml IS NOT NULL")
    assert sum(1 for r in kept if "M2" + "0" * 34 in r["raw_xml"]) == 1


@pytest.mark.db
async def test_sent_and_watchdog(flow: Flow) -> None:
    s = shipment(9)
    await flow.submit(s.order)
    async with flow.pool.acquire() as conn:
        (job,) = await cbec_queue.claim(conn, worker_id="w1", lease_s=30)
    assert await flow.awaited() == set()
    await flow.outbox.record_sent(job, job.payload["message_id"])
    doc = await flow.doc(s.order)
    assert doc["forward_state"] == "sent" and doc["sent_at"] is not None
    assert await flow.awaited() == {doc["id"]}
    assert (await flow.jobs())[job.dedupe_key]["state"] == "done"
    assert (await flow.shipment(s))["customs_status"] == "declared"
    # nothing overdue yet; then, with a zero timeout, flagged and (repush on) sent again
    assert (await flow.outbox.watchdog(timeout_s=3600, repush=True, max_repushes=2))["overdue"] == []
    report = await flow.outbox.watchdog(timeout_s=0, repush=False, max_repushes=2)
    assert report == {"overdue": [doc["message_id"]], "resent": []}
    assert (await flow.doc(s.order))["receipt_overdue"]
    assert await flow.awaited() == {doc["id"]}  # flagged, still awaited
    assert (await flow.outbox.watchdog(timeout_s=0, repush=False, max_repushes=2))["overdue"] == []  # once
    report = await flow.outbox.watchdog(timeout_s=0, repush=True, max_repushes=2)
    assert report["resent"] == [doc["message_id"]]
    repush = (await flow.jobs())[f"customs:{s.order['guid']}:resend1"]
    assert repush["ordering_keys"] == [f"CEB311:{s.order_doc['ebpCode']}:{s.order_doc['orderNo']}"]
    assert (await flow.doc(s.order))["forward_state"] == "queued"
    assert await flow.awaited() == {doc["id"]}  # queued again, and still waiting for customs' word
    async with flow.pool.acquire() as conn:
        (again,) = await cbec_queue.claim(conn, worker_id="w1", lease_s=30, endpoint="customs")
    await flow.outbox.record_sent(again, again.payload["message_id"])
    assert await flow.awaited() == {doc["id"]}
    assert (await flow.doc(s.order))["sent_at"] > doc["sent_at"]
    # the wait counts from the first send: the operators' oldest wait (and its alert) is not reset by a re-send
    [row] = await flow.rows("SELECT * FROM receipts_awaited")
    assert row["awaited_since"] == doc["sent_at"] < row["sent_at"]
    async with flow.pool.acquire() as conn:
        assert (await receipts_awaited(conn))["oldest_sent_at"] == doc["sent_at"]
        [listed] = (await awaited_documents(conn))["items"]
        assert (listed["first_sent_at"], listed["sent_at"], listed["repushes"]) == (doc["sent_at"], row["sent_at"], 1)
    # a receipt clears the flag and ends the wait
    await flow.receipt(s.order, "2", 1)
    doc = await flow.doc(s.order)
    assert not doc["receipt_overdue"] and doc["last_receipt_at"] is not None
    assert await flow.awaited() == set()
    assert (await flow.outbox.watchdog(timeout_s=0, repush=True, max_repushes=2))["overdue"] == []


@pytest.mark.db
async def test_a_message_sent_again_after_a_4_is_watched_again(flow: Flow) -> None:
    """Customs' 4 (delivery failed) re-sends the message; if that send gets no receipt either, the watchdog sees
    it (it waited only for messages that never had any receipt)."""
    s = shipment(10)
    await flow.submit(s.order)
    async with flow.pool.acquire() as conn:
        (job,) = await cbec_queue.claim(conn, worker_id="w1", lease_s=30)
    await flow.outbox.record_sent(job, job.payload["message_id"])
    [answer] = await flow.receipt(s.order, "4", 1)
    assert answer["resend"] is True and await flow.awaited() == set()
    async with flow.pool.acquire() as conn:
        await conn.execute("UPDATE jobs SET run_after = now() WHERE state = 'queued'")  # the re-send's delay
        (again,) = await cbec_queue.claim(conn, worker_id="w1", lease_s=30, endpoint="customs")
    await flow.outbox.record_sent(again, again.payload["message_id"])
    doc = await flow.doc(s.order)
    assert await flow.awaited() == {doc["id"]}
    report = await flow.outbox.watchdog(timeout_s=0, repush=False, max_repushes=2)
    assert report["overdue"] == [doc["message_id"]]


async def _deliver(flow: Flow, payload: dict[str, Any]) -> None:
    """The queued customs delivery of a message, claimed and recorded sent as the worker's handler does."""
    async with flow.pool.acquire() as conn:
        await conn.execute("UPDATE jobs SET run_after = now() WHERE state = 'queued'")  # a re-send's delay
        jobs = await cbec_queue.claim(conn, worker_id="w1", lease_s=30, endpoint="customs")
    (job,) = [j for j in jobs if j.payload["guid"] == payload["guid"]]
    await flow.outbox.record_sent(job, job.payload["message_id"])


@pytest.mark.db
async def test_a_message_sent_again_after_a_2_and_a_4_is_watched_again(flow: Flow) -> None:
    """E-Port took it (2), then could not deliver it (4): the re-send is awaited as any send, and the watchdog sends
    it again when no receipt comes."""
    s = shipment(19)
    await flow.submit(s.order)
    await _deliver(flow, s.order)
    await flow.receipt(s.order, "2", 1)
    [answer] = await flow.receipt(s.order, "4", 2)
    assert answer["resend"] is True and await flow.awaited() == set()
    await _deliver(flow, s.order)
    doc = await flow.doc(s.order)
    assert doc["forward_state"] == "receipted" and await flow.awaited() == {doc["id"]}
    report = await flow.outbox.watchdog(timeout_s=0, repush=True, max_repushes=3)
    assert report == {"overdue": [doc["message_id"]], "resent": [doc["message_id"]]}
    assert f"customs:{s.order['guid']}:resend2" in await flow.jobs()
    await _deliver(flow, s.order)
    assert await flow.awaited() == {doc["id"]}
    await flow.receipt(s.order, "120", 3)
    assert await flow.awaited() == set() and (await flow.doc(s.order))["forward_state"] == "receipted"


@pytest.mark.db
async def test_a_change_the_watchdog_sent_again_that_customs_calls_older_is_on_file(flow: Flow) -> None:
    """A change whose receipts were lost, sent again by the watchdog with its guid and appTime: customs answers that
    it is older than the stored one (-301014) — it stored this very version the first time. The change is accepted,
    stays current, and its shipment is not rejected; the first version stays superseded."""
    s = shipment(17)
    await flow.submit(s.order)
    await _deliver(flow, s.order)
    await flow.receipt(s.order, "120", 1)
    change = version_of(s.order, "2", 60, consignee=s.order_doc["consignee"] + "丙")
    await flow.submit(change)
    await _deliver(flow, change)
    report = await flow.outbox.watchdog(timeout_s=0, repush=True, max_repushes=2)
    assert report["resent"] == [(await flow.doc(change))["message_id"]]
    await _deliver(flow, change)
    (res,) = await flow.receipt(change, "-301014", 2)
    assert res["outcome"] == "applied", res
    first, second = await flow.doc(s.order), await flow.doc(change)
    assert (second["forward_state"], second["customs_rank"], second["is_current"]) == \
        ("receipted", rc.RANK_ACCEPTED, True)  # fmt: skip
    assert not first["is_current"] and first["customs_status"] == "120"
    assert (await flow.shipment(s))["customs_status"] != "rejected"
    # a change sent once that customs calls older is refused, as before: customs holds the version before
    other = shipment(18)
    await flow.submit(other.order)
    await flow.receipt(other.order, "120", 1)
    late = version_of(other.order, "2", 60, consignee=other.order_doc["consignee"] + "丁")
    await flow.submit(late)
    await flow.receipt(late, "-301014", 2)
    assert (await flow.doc(late))["forward_state"] == "rejected"


def referring_head(inv: dict[str, Any], *, guid: str, invt_no: str, reason: str) -> dict[str, str]:
    """The head of a cancellation (CEB623) or return (CEB625) of the inventory document ``inv`` (a JSON payload's)."""
    fields = ("customsCode", "orderNo", "ebpCode", "ebpName", "ebcCode", "ebcName", "logisticsNo", "logisticsCode",
              "logisticsName", "copNo", "buyerIdType", "buyerIdNumber", "buyerName", "buyerTelephone", "agentCode",
              "agentName")  # fmt: skip
    head = {k: str(inv[k]) for k in fields}
    head.update(guid=guid, appType="1", appStatus="2", appTime=str(inv["appTime"]), invtNo=invt_no, reason=reason)
    return head


async def _quota(flow: Flow, s: samples.ShipmentSample) -> list[str]:
    doc = s.inventory["documents"][0]
    rows = await flow.rows("SELECT amount FROM tax_ledger WHERE ebc_code = $1 AND order_no = $2", doc["ebcCode"],
                           doc["orderNo"])  # fmt: skip
    return [str(r["amount"]) for r in rows]


async def _cancel(
    flow: Flow, inventory: dict[str, Any], guid: str, invt_no: str, pre_no: str, ms: int
) -> Callable[[], Awaitable[None]]:
    """A cancellation (CEB623) of ``inventory`` (a JSON payload's) taken, and customs' CEB624 120 for it (taken for
    processing, at ``ms``); returned: what posts its 399 (concluded, at ``ms`` + 1)."""
    from tests.test_store import message

    head = referring_head(inventory["documents"][0], guid=guid, invt_no=invt_no, reason="买家取消")
    cancel = message("CEB623", head, lines=[])
    assert (await flow.store.ingest(cancel, b"<CEB623Message/>", submitter="test")).http_status == 202
    values = {k: head[k] for k in ("customsCode", "ebpCode", "ebcCode", "agentCode", "copNo", "invtNo", "guid")}
    values.update(preNo=pre_no, returnInfo="ok")
    await flow.post(build_receipt("CEB624", {**values, "returnStatus": "120", "returnTime": f"20260101120000{ms:03d}"}))

    async def conclude() -> None:
        await flow.post(build_receipt("CEB624", {**values, "returnStatus": "399",
                                                 "returnTime": f"20260101120000{ms + 1:03d}"}))  # fmt: skip

    return conclude


@pytest.mark.db
async def test_an_inventory_customs_refused_or_whose_cancellation_it_concluded_frees_the_buyers_quota(
    flow: Flow,
) -> None:
    """The annual quota counts what customs holds (spec §7.1): a first declaration customs rejected, or an
    inventory cancelled (CEB624 399), counts no more; a rejected change leaves it (customs holds the version
    before)."""

    refused, cancelled = shipment(80), shipment(81)
    for s in (refused, cancelled):
        for payload in (s.order, s.payment, s.waybill):
            await flow.submit(payload)
            await flow.receipt(payload, "2", 1)
        await flow.submit(s.inventory)
        assert await _quota(flow, s) != ["0.00000"] and len(await _quota(flow, s)) == 1
    await flow.receipt(refused.inventory, "100", 2)
    assert await _quota(flow, refused) == ["0.00000"]
    # declared anew, it counts again; a late receipt of the refused version changes nothing of that
    anew = version_of(refused.inventory, "1", 60)
    await flow.submit(anew)
    counted = await _quota(flow, refused)
    assert counted != ["0.00000"] and len(counted) == 1
    [late] = await flow.receipt(refused.inventory, "3", 1)
    assert late["outcome"] == "stale" and await _quota(flow, refused) == counted
    # a change sent while the first declaration awaited its receipt: customs refusing the first leaves nothing to
    # change, and the quota goes back all the same
    pending = shipment(82)
    await flow.submit(pending.inventory)
    await flow.sent(pending.inventory)
    await flow.submit(pending_change := version_of(pending.inventory, "2", 60))
    await flow.sent(pending_change)
    assert await _quota(flow, pending) != ["0.00000"]
    await flow.receipt(pending.inventory, "100", 2)
    assert await _quota(flow, pending) == ["0.00000"]

    conclude = await _cancel(flow, cancelled.inventory, "C" * 36, "46012026I000000081", "B20260101000000081", 3)
    assert await _quota(flow, cancelled) != ["0.00000"]  # taken for processing, not concluded
    await conclude()
    assert await _quota(flow, cancelled) == ["0.00000"]


async def _blocked_behind(flow: Flow, a: samples.ShipmentSample, b: samples.ShipmentSample, slack: Decimal) -> None:
    """``a`` declared and counted; ``b`` of the same buyer, its legs receipted, blocked by the annual limit with its
    inventory held: another inventory of the buyer takes the year's quota but ``slack`` less than both need."""
    buyer = a.inventory["documents"][0]["buyerIdNumber"]
    for payload, name in ((b.order, "buyerIdNumber"), (b.payment, "payerIdNumber"), (b.inventory, "buyerIdNumber")):
        payload["documents"][0][name] = buyer
    for s in (a, b):
        for payload in (s.order, s.payment, s.waybill):
            await flow.submit(payload)
            await flow.receipt(payload, "2", 1)
        if s is a:
            await flow.submit(a.inventory)
    (counted,) = await flow.rows("SELECT year, amount FROM tax_ledger WHERE order_no = $1", a.order_doc["orderNo"])
    b_value = assess(flow.pipeline.check(xml_of(b.inventory)).message.documents[0], annual_used=Decimal(0))
    filler = ANNUAL_LIMIT - counted["amount"] - b_value.dutiable_value + slack
    async with flow.pool.acquire() as conn:
        await conn.execute("INSERT INTO tax_ledger (buyer_id_number, year, ebc_code, order_no, amount)"
                           " VALUES ($1, $2, 'OTHER', 'FILL', $3)", buyer, counted["year"], filler)  # fmt: skip
    await flow.submit(b.inventory)
    shipment = await flow.shipment(b)
    assert shipment["state"] == "mismatched"
    assert "tax.annual_limit_exceeded" in {f["code"] for f in shipment["findings"]}
    assert (await flow.doc(b.inventory))["forward_state"] == "held"


async def _reopened(flow: Flow, b: samples.ShipmentSample) -> bool:
    """``b`` matched, its quota counted, and its held inventory on its way to customs."""
    shipment = await flow.shipment(b)
    released = (await flow.doc(b.inventory))["forward_state"] == "queued"
    return shipment["state"] == "matched" and released and f"customs:{b.inventory['guid']}" in await flow.jobs()


@pytest.mark.db
async def test_quota_customs_gives_back_reopens_the_buyers_blocked_shipment_and_releases_its_inventory(
    flow: Flow,
) -> None:
    """A refused first declaration gives its quota back in the receipt's transaction; the buyer's shipment the annual
    limit blocked is assessed again there, matches, and its held inventory goes to customs."""
    a, b = shipment(83), shipment(84)
    await _blocked_behind(flow, a, b, Decimal("0.01"))
    assert not await _reopened(flow, b)
    await flow.receipt(a.inventory, "100", 2)
    assert await _reopened(flow, b)
    (row,) = await flow.rows("SELECT amount, blocked_at FROM tax_ledger WHERE order_no = $1", b.order_doc["orderNo"])
    assert row["amount"] > 0 and row["blocked_at"] is None


@pytest.mark.db
async def test_a_blocked_shipment_that_quota_given_back_reopens_tells_its_sellers_it_is_matched(flow: Flow) -> None:
    """The annual limit blocks a shipment (mismatched, its sellers told so at its inventory's ingest); customs' refusal
    of the buyer's other inventory gives the quota back and matches it in the receipt's transaction: no message of its
    own comes, and its sellers hear it is matched there, before its inventory's customs status moves."""
    a, b = shipment(85), shipment(86)
    await _blocked_behind(flow, a, b, Decimal("0.01"))
    [blocked] = await _seller_events(flow, b, "reconciliation")
    data = blocked["payload"]["data"]
    assert (data["state"], data["previous"]) == ("mismatched", "incomplete")  # its inventory came last
    assert [f["code"] for f in data["findings"]] == ["tax.annual_limit_exceeded"]
    await flow.receipt(a.inventory, "100", 2)
    assert await _reopened(flow, b)
    first, matched = await _seller_events(flow, b, "reconciliation")
    assert first == blocked and matched["id"] > blocked["id"]
    data = matched["payload"]["data"]
    assert (data["state"], data["previous"], data["missing"], data["findings"]) == ("matched", "mismatched", [], [])


@pytest_asyncio.fixture
async def refusing_flow(db_pool: asyncpg.Pool) -> AsyncIterator[Flow]:
    """A flow whose outbox restores what customs refused (gateway.store.restore_refused), its sellers with webhooks."""
    fwd = ForwardingSettings(webhooks=(HOOK,))
    outbox = Outbox(db_pool, Router.from_settings(fwd, {**SANDBOX_KINDS, "webhook": "webhook"}),
                    reassess=quota_reassessor(), restore=refusals_restorer())  # fmt: skip
    store = Store(db_pool, outbox=outbox)
    yield Flow(db_pool, store, outbox, Pipeline(_SCHEMAS, store))
    await store.aclose()


@pytest.mark.db
async def test_a_change_customs_refused_tells_the_sellers_the_shipment_is_as_it_was(refusing_flow: Flow) -> None:
    """A change of the payment naming another payer makes the matched shipment mismatched (told); customs refuses the
    change, so it holds the payment before it, current again here (gateway.store.restore_refused): the shipment is
    matched again, and its sellers hear so in the receipt's transaction."""
    flow = refusing_flow
    s = shipment(76)
    for payload in (s.order, s.payment, s.waybill):
        await flow.submit(payload)
        await flow.receipt(payload, "2", 1)
    assert (await flow.submit(s.inventory))["shipments"][0]["state"] == "matched"
    other = samples.broken(s, "payer_not_buyer").payment_doc
    change = version_of(s.payment, "2", 30, payerName=other["payerName"], payerIdNumber=other["payerIdNumber"])
    assert (await flow.submit(change))["shipments"][0]["state"] == "mismatched"
    [told] = await _seller_events(flow, s, "reconciliation")
    assert (told["payload"]["data"]["state"], told["payload"]["data"]["previous"]) == ("mismatched", "matched")
    await flow.receipt(change, "100", 5)
    assert (await flow.shipment(s))["state"] == "matched"
    first, again = await _seller_events(flow, s, "reconciliation")
    assert first == told and again["id"] > told["id"]
    data = again["payload"]["data"]
    assert (data["state"], data["previous"], data["findings"]) == ("matched", "mismatched", [])


@pytest.mark.db
async def test_a_change_or_withdrawal_customs_refused_is_told_though_no_status_moves(refusing_flow: Flow) -> None:
    """Customs refuses a change of the payment and a withdrawal of the waybill: it holds the versions before, current
    again here, so neither the customs status nor the reconciliation moves — yet the sellers hear of each refusal
    (shipment.change_refused: the refused document, customs' word), once however often customs says it."""
    flow = refusing_flow
    s = shipment(79)
    for payload in (s.order, s.payment, s.waybill):
        await flow.submit(payload)
        await flow.receipt(payload, "2", 1)
    await flow.submit(s.inventory)
    await flow.receipt(s.inventory, "120", 2)
    before = [k for k in await flow.jobs() if k.startswith("webhook:")]
    change = version_of(s.payment, "2", 30)
    withdrawal = version_of(s.waybill, "3", 30)
    for payload in (change, withdrawal):
        await flow.submit(payload)
    for ms in (5, 6):  # the refusals, and once more: told once
        await flow.receipt(change, "-401006", ms)
        await flow.receipt(withdrawal, "100", ms)
    assert (await flow.shipment(s))["customs_status"] == "accepted"
    assert (await flow.doc(s.payment))["is_current"] and (await flow.doc(s.waybill))["is_current"]
    told = [j["payload"] for k, j in (await flow.jobs()).items() if k.startswith("webhook:") and k not in before]
    assert [p["event"] for p in told] == ["shipment.change_refused"] * 2, told
    for payload in told:
        _webhook_body_check(payload)
    by_type = {p["data"]["messageType"]: p["data"] for p in told}
    assert by_type["CEB411"] == {
        "ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"], "kind": "payment",
        "messageType": "CEB411", "guid": change["documents"][0]["guid"], "appType": "2",
        "customs": {"code": "-401006", "name": rc.status_name("-401006"), "info": "status -401006",
                    "time": "20260101120000005"}}  # fmt: skip
    assert (by_type["CEB511"]["kind"], by_type["CEB511"]["appType"], by_type["CEB511"]["customs"]["code"]) == (
        "waybill", "3", "100")


@pytest.mark.db
async def test_a_return_customs_concluded_gives_back_the_returned_goods_and_reopens_blocked_shipments(
    flow: Flow,
) -> None:
    """CEB625 (海关总署公告2018年第194号: the annual total is adjusted for goods returned): on customs' CEB626
    399, not on the return's submission nor its 120, the inventory counts less by the value of the items returned."""
    from tests.test_store import message

    a, b = shipment(85, n_items=2), shipment(86)
    inv = a.inventory["documents"][0]
    item = inv["items"][0]
    returned = [{"gnum": str(item["gnum"]), "gcode": item["gcode"], "gname": item["gname"], "qty": item["qty"],
                 "unit": item["unit"]}]  # fmt: skip
    value = returned_value(flow.pipeline.check(xml_of(a.inventory)).message.documents[0], returned)
    assert value > 0
    await _blocked_behind(flow, a, b, value)  # the first item's return makes room for b
    await flow.receipt(a.inventory, "800", 4)  # a return follows the release (state.inventory_not_released)
    before = await _quota(flow, a)

    head = referring_head(inv, guid="R" * 36, invt_no="46012026I000000085", reason="七天无理由退货")
    refund = message("CEB625", head, lines=returned)
    assert (await flow.store.ingest(refund, b"<CEB625Message/>", submitter="test")).http_status == 202
    assert await _quota(flow, a) == before  # submitted, not accepted
    values = {k: head[k] for k in ("customsCode", "ebpCode", "ebcCode", "agentCode", "copNo", "invtNo", "guid")}
    values.update(preNo="B20260101000000085", returnInfo="ok")
    await flow.post(build_receipt("CEB626", {**values, "returnStatus": "120", "returnTime": "20260101120000003"}))
    assert await _quota(flow, a) == before and not await _reopened(flow, b)
    await flow.post(build_receipt("CEB626", {**values, "returnStatus": "399", "returnTime": "20260101120000004"}))
    assert [Decimal(q) for q in await _quota(flow, a)] == [Decimal(before[0]) - value]
    assert await _reopened(flow, b)


async def _conclude_return(flow: Flow, head: dict[str, str], lines: list[dict[str, str]], n: int) -> None:
    """Submit the return (CEB625) ``head`` with ``lines`` and post customs' CEB626 399 for it."""
    from tests.test_store import message

    refund = message("CEB625", head, lines=lines)
    assert (await flow.store.ingest(refund, b"<CEB625Message/>", submitter="test")).http_status == 202
    values = {k: head[k] for k in ("customsCode", "ebpCode", "ebcCode", "agentCode", "copNo", "invtNo", "guid")}
    values.update(preNo=f"B2026010100000{n:04d}", returnInfo="ok", returnStatus="399",
                  returnTime=f"202601011200{n:05d}")  # fmt: skip
    await flow.post(build_receipt("CEB626", values))


async def _returnable(flow: Flow, a: samples.ShipmentSample) -> tuple[Decimal, list[dict[str, str]], dict[str, str]]:
    """``a`` declared, its legs receipted, its inventory released: what its inventory counts, its items as return
    lines, a return's head."""
    for payload in (a.order, a.payment, a.waybill):
        await flow.submit(payload)
        await flow.receipt(payload, "2", 1)
    await flow.submit(a.inventory)
    await flow.receipt(a.inventory, "800", 4)
    [whole] = await _quota(flow, a)
    inv = a.inventory["documents"][0]
    items = [{"gnum": str(i["gnum"]), "gcode": i["gcode"], "gname": i["gname"], "qty": i["qty"], "unit": i["unit"]}
             for i in inv["items"]]  # fmt: skip
    head = referring_head(inv, guid="S" * 36, invt_no="46012026I000000087", reason="七天无理由退货")
    return Decimal(whole), items, head


@pytest.mark.db
async def test_a_later_leg_does_not_count_again_what_a_concluded_return_gave_back(flow: Flow) -> None:
    """A change of the payment or waybill reassesses the inventory: less what the return gave back (it was counted
    again in full). (The order takes no change once its inventory is declared: state.inventory_declared.)"""
    a = shipment(87, n_items=2)
    whole, items, head = await _returnable(flow, a)
    value = returned_value(flow.pipeline.check(xml_of(a.inventory)).message.documents[0], items[:1])
    assert value > 0
    await _conclude_return(flow, head, items[:1], 1)
    assert [Decimal(q) for q in await _quota(flow, a)] == [whole - value]
    await flow.submit(version_of(a.payment, "2", 60))
    assert [Decimal(q) for q in await _quota(flow, a)] == [whole - value]
    await flow.submit(version_of(a.waybill, "2", 60))
    assert [Decimal(q) for q in await _quota(flow, a)] == [whole - value]


@pytest.mark.db
async def test_a_return_changed_and_concluded_again_gives_back_its_own_value_once(flow: Flow) -> None:
    """A return changed (appType 2) after customs concluded it, concluded again: the latest version's value replaces
    the first one's (it was deducted on top of it) — and one that returns less gives back less."""
    from datetime import datetime, timedelta

    a = shipment(88, n_items=3)
    whole, items, head = await _returnable(flow, a)
    document = flow.pipeline.check(xml_of(a.inventory)).message.documents[0]
    first, two = returned_value(document, items[:1]), returned_value(document, items[:2])
    assert 0 < first < two < whole
    await _conclude_return(flow, head, items[:1], 1)
    assert [Decimal(q) for q in await _quota(flow, a)] == [whole - first]

    def change(seconds: int, guid: str) -> dict[str, str]:
        at = datetime.strptime(head["appTime"], "%Y%m%d%H%M%S") + timedelta(seconds=seconds)
        return {**head, "guid": guid, "appType": "2", "appTime": at.strftime("%Y%m%d%H%M%S")}

    await _conclude_return(flow, change(60, "T" * 36), items[:2], 2)
    assert [Decimal(q) for q in await _quota(flow, a)] == [whole - two]
    await _conclude_return(flow, change(120, "U" * 36), items[1:2], 3)
    assert [Decimal(q) for q in await _quota(flow, a)] == [whole - (two - first)]


@pytest.mark.db
async def test_a_waybill_of_an_order_number_two_platforms_use_moves_neither_shipment(flow: Flow) -> None:
    """orderNo is unique within a platform only (spec §6.2) and a waybill carries no ebpCode: until an inventory
    names it, its rejection is no platform's shipment status (it showed on both, with the other's text)."""
    p1 = shipment(90, order_no="SHARED-ORDER-1")
    p2 = shipment(90, order_no="SHARED-ORDER-1")
    p2.order["guid"] = "B" * 36
    p2.order["documents"][0].update(guid="C" * 36, ebpCode="46012609ZZ")
    await flow.submit(p1.order)
    await flow.submit(p2.order)
    await flow.submit(p1.waybill)
    await flow.receipt(p1.waybill, "100", 1)
    statuses = await flow.rows("SELECT ebp_code, customs_status FROM shipments WHERE order_no = 'SHARED-ORDER-1'"
                               " AND ebp_code <> '' ORDER BY ebp_code")  # fmt: skip
    assert [(r["ebp_code"], r["customs_status"]) for r in statuses] == [("46012609BQ", "pending"),
                                                                         ("46012609ZZ", "pending")]  # fmt: skip


@pytest.mark.db
@pytest.mark.parametrize("status", ["400", "600"])
async def test_a_status_the_spec_lists_answers_the_document(flow: Flow, status: str) -> None:
    """400 (accepted, waiting for the goods) and 600 (suspended) are customs' word (spec §5.2): the document is
    receipted, no longer awaited, and the watchdog sends it no more; a conclusion after it still moves it on."""
    s = shipment(23)
    await flow.submit(s.order)
    await _deliver(flow, s.order)
    (res,) = await flow.receipt(s.order, status, 1)
    assert res["outcome"] == "applied", res
    doc = await flow.doc(s.order)
    assert (doc["forward_state"], doc["customs_status"]) == ("receipted", status)
    assert await flow.awaited() == set()
    assert await flow.outbox.watchdog(timeout_s=0, repush=True, max_repushes=2) == {"overdue": [], "resent": []}
    (res,) = await flow.receipt(s.order, "399", 2)
    assert res["outcome"] == "applied" and (await flow.doc(s.order))["customs_status"] == "399"


@pytest.mark.db
async def test_a_receipt_in_no_table_leaves_the_document_awaited_for_the_watchdog(flow: Flow) -> None:
    """A code that decides nothing (-621041, two meanings in public code; 18 in the official samples) is kept, but
    the document is still waiting for customs' word: the watchdog flags it."""
    s = shipment(11)
    await flow.submit(s.order)
    async with flow.pool.acquire() as conn:
        (job,) = await cbec_queue.claim(conn, worker_id="w1", lease_s=30)
    await flow.outbox.record_sent(job, job.payload["message_id"])
    doc = await flow.doc(s.order)
    [answer] = await flow.receipt(s.order, "18", 1)
    assert answer["outcome"] == "unknown_status" and await flow.awaited() == {doc["id"]}
    assert (await flow.outbox.watchdog(timeout_s=0, repush=False, max_repushes=2))["overdue"] == [doc["message_id"]]
    await flow.receipt(s.order, "2", 2)  # a word that counts
    assert await flow.awaited() == set() and not (await flow.doc(s.order))["receipt_overdue"]


@pytest.mark.db
async def test_a_send_looks_again_only_at_pending_shipments(flow: Flow) -> None:
    """A send can move a shipment only from pending (or failed, or rejected for a leg no longer its own) to declared,
    so record_sent reads the legs of those shipments alone (SHIPMENT_LEGS with their statuses); the statuses come out
    as a full refresh gives them."""
    from gateway.outbox import SHIPMENT_LEGS

    a, b = shipment(40), shipment(41)
    for payload in (a.order, b.order, b.payment):
        await flow.submit(payload)

    async def send(payload: dict[str, Any]) -> None:
        async with flow.pool.acquire() as conn:
            jobs = await cbec_queue.claim(conn, worker_id="w1", lease_s=30, endpoint="customs", limit=10)
        (job,) = [j for j in jobs if j.payload["guid"] == payload["guid"]]
        async with flow.pool.acquire() as conn:
            await cbec_queue.release(conn, [j for j in jobs if j is not job])
        await flow.outbox.record_sent(job, job.payload["message_id"])

    await send(b.order)
    assert (await flow.shipment(b))["customs_status"] == "declared"
    assert (await flow.shipment(a))["customs_status"] == "pending"
    keys = [(s.order_doc["ebpCode"], s.order_doc["orderNo"]) for s in (a, b)]
    args = ([k[0] for k in keys], [k[1] for k in keys])
    async with flow.pool.acquire() as conn:
        assert {r["order_no"] for r in await conn.fetch(SHIPMENT_LEGS, *args, ["pending", "failed", "rejected"])} == {
            keys[0][1]}
        assert {r["order_no"] for r in await conn.fetch(SHIPMENT_LEGS, *args, None)} == {k[1] for k in keys}
    await send(b.payment)  # a declared shipment: not read again, still declared
    await send(a.order)
    assert (await flow.shipment(a))["customs_status"] == "declared"
    assert (await flow.shipment(b))["customs_status"] == "declared"


# --- deliveries that fail for good ---------------------------------------------------------------------------


async def _die(flow: Flow, payload: dict[str, Any]) -> None:
    """The customs delivery of a submitted message becomes a dead letter, as the worker does it."""
    async with flow.pool.acquire() as conn:
        jobs = await cbec_queue.claim(conn, worker_id="w", lease_s=30, endpoint="customs", limit=20)
        (job,) = [j for j in jobs if j.payload["guid"] == payload["guid"]]
        await cbec_queue.release(conn, [j for j in jobs if j is not job])
        assert await cbec_queue.record_dead(conn, job, reason="permanent", error=cbec_queue.PermanentError("no"),
                                            outcome="permanent", on_dead=flow.outbox.deliveries_dead)  # fmt: skip


@pytest.mark.db
async def test_a_failed_leg_changed_withdrawn_or_resent_no_longer_fails_its_shipment(flow: Flow) -> None:
    """The shipment is listed as needing a replay only while its failed leg is the one in force and not on its
    way again: a change or a withdrawal of that leg (at ingest) and a re-send asked by a receipt (4) refresh it."""
    changed, withdrawn, resent = shipment(60), shipment(61), shipment(62)
    for s in (changed, withdrawn, resent):
        await flow.submit(s.order)
        await _die(flow, s.order)
        assert (await flow.shipment(s))["customs_status"] == "failed"
    await flow.submit(version_of(changed.order, "2", 60, consignee=changed.order_doc["consignee"] + "甲"))
    assert (await flow.shipment(changed))["customs_status"] == "pending"
    await flow.submit(version_of(withdrawn.order, "3", 60))
    assert (await flow.shipment(withdrawn))["customs_status"] == "pending"
    # a waybill's shipment is found through its orderNo (or the inventory naming it)
    waybilled = shipment(64)
    await flow.submit(waybilled.order)
    await flow.receipt(waybilled.order, "2", 1)
    await flow.submit(waybilled.waybill)
    await _die(flow, waybilled.waybill)
    assert (await flow.shipment(waybilled))["customs_status"] == "failed"
    await flow.submit(version_of(waybilled.waybill, "2", 60))
    assert (await flow.shipment(waybilled))["customs_status"] == "declared"
    [answer] = await flow.receipt(resent.order, "4", 1)  # customs: delivery failed, send it again
    assert answer["resend"] is True
    assert (await flow.doc(resent.order))["forward_state"] == "queued"
    assert (await flow.shipment(resent))["customs_status"] == "pending"


@pytest.mark.db
async def test_a_rejected_leg_declared_anew_no_longer_rejects_its_shipment(flow: Flow) -> None:
    """Customs refused the inventory (-621018): the shipment is rejected. Declared anew (appType 1), the new version is
    the one in force: the shipment is declared at once (its other legs are at customs), as its webhook says; and when
    the new version's delivery dies, the shipment is failed — not left saying the old refusal."""
    s = shipment(65)
    await _answered(flow, s, "-621018")
    assert (await flow.shipment(s))["customs_status"] == "rejected"
    anew = version_of(s.inventory, "1", 60)
    await flow.submit(anew)
    assert (await flow.doc(anew))["forward_state"] == "queued"  # released from the hold at once: its legs are taken
    shipment_row = await flow.shipment(s)
    assert (shipment_row["customs_status"], shipment_row["customs_info"]) == ("declared", None)
    told = [j["payload"]["data"] for j in await _seller_events(flow, s, "declared")]
    assert [(d["previous"], d["customsStatus"]) for d in told] == [("pending", "declared"), ("rejected", "declared")]
    await _die(flow, anew)
    assert (await flow.shipment(s))["customs_status"] == "failed"


@pytest.mark.db
async def test_a_send_looks_again_at_a_rejected_shipment_whose_refused_leg_is_no_longer_its_own(flow: Flow) -> None:
    """Customs refused the waybill: the shipment is rejected. The carrier sends another waybill of the orderNo (another
    logisticsNo), the shipment's now — no change of the refused one, so nothing at ingest looks again —: once it is
    sent, the shipment is declared, not left rejected until customs answers it."""
    s = shipment(66)
    for payload in (s.order, s.payment, s.waybill):
        await flow.submit(payload)
        await _deliver(flow, payload)
    await flow.receipt(s.waybill, "100", 2)
    assert (await flow.shipment(s))["customs_status"] == "rejected"
    other = version_of(s.waybill, "1", 60, logisticsNo=s.waybill_doc["logisticsNo"] + "X")
    await flow.submit(other)
    await _deliver(flow, other)
    assert (await flow.shipment(s))["customs_status"] == "declared"


async def _answered(flow: Flow, s: samples.ShipmentSample, status: str, **numbers: str) -> None:
    """The legs of ``s`` delivered and taken by customs (2), its inventory delivered and answered ``status``."""
    for payload in (s.order, s.payment, s.waybill):
        await flow.submit(payload)
        await _deliver(flow, payload)
        await flow.receipt(payload, "2", 1)
    await flow.submit(s.inventory)
    await _deliver(flow, s.inventory)
    await flow.receipt(s.inventory, status, 4, **numbers)


async def _accepted(flow: Flow, s: samples.ShipmentSample, **numbers: str) -> None:
    """The legs of ``s`` delivered and taken by customs (2), its inventory delivered and accepted (120)."""
    await _answered(flow, s, "120", **numbers)
    assert (await flow.shipment(s))["customs_status"] == "accepted"


@pytest.mark.db
async def test_a_change_of_an_accepted_inventory_on_its_way_leaves_the_shipment_as_customs_holds_it(flow: Flow) -> None:
    """Customs accepted the inventory; its change is sent. Until customs says a word of the change, the shipment is what
    customs holds, accepted — also when another leg's receipt comes meanwhile and the shipment is looked at again
    (it used to become declared then, and stay accepted otherwise) —; then the change's own word moves it."""
    s = shipment(67)
    await _accepted(flow, s)
    change = version_of(s.inventory, "2", 60)
    await flow.submit(change)
    await _deliver(flow, change)
    assert (await flow.shipment(s))["customs_status"] == "accepted"
    await flow.receipt(s.payment, "120", 5)  # a late receipt of another leg
    assert (await flow.shipment(s))["customs_status"] == "accepted"
    await flow.receipt(change, "2", 6)  # customs takes the change: declared again, until it accepts it
    assert (await flow.shipment(s))["customs_status"] == "declared"
    await flow.receipt(change, "120", 7)
    assert (await flow.shipment(s))["customs_status"] == "accepted"
    told = [j["payload"]["data"]["customsStatus"] for k, j in (await flow.jobs()).items()
            if k.startswith("webhook:") and j["payload"]["event"] == "shipment.customs_status_changed"]  # fmt: skip
    assert told == ["declared", "accepted", "declared", "accepted"], told


@pytest.mark.db
async def test_customs_releasing_the_version_it_holds_releases_the_shipment_though_a_change_was_sent(
    flow: Flow,
) -> None:
    """Customs accepted the inventory, a change of it is sent, and then the release (800) of the version customs holds
    comes: the goods left. The shipment is released at once — the warehouse's order made of the version released —,
    not declared until customs refuses the change (−621043), which then changes nothing more."""
    s = shipment(68, mode="1210")
    await _accepted(flow, s, invtNo="46012026I000000068")
    change = version_of(s.inventory, "2", 60)
    await flow.submit(change)
    await _deliver(flow, change)
    await flow.receipt(s.inventory, "800", 6, invtNo="46012026I000000068")
    assert (await flow.shipment(s))["customs_status"] == "released"
    [order] = [j for k, j in (await flow.jobs()).items() if k.startswith("warehouse:")]
    assert (order["payload"]["guid"], order["payload"]["invtNo"]) == (s.inventory["guid"], "46012026I000000068")
    await flow.receipt(change, "-621043", 7)
    assert (await flow.shipment(s))["customs_status"] == "released"
    assert [k for k in await flow.jobs() if k.startswith("warehouse:")] == [order["dedupe_key"]]


async def _released(flow: Flow, s: samples.ShipmentSample, **numbers: str) -> None:
    """The legs of ``s`` taken by customs (2) and its inventory released (800), with the numbers customs gave it."""
    for payload in (s.order, s.payment, s.waybill):
        await flow.submit(payload)
        await flow.receipt(payload, "2", 1)
    await flow.submit(s.inventory)
    await flow.receipt(s.inventory, "800", 4, **numbers)


@pytest.mark.db
async def test_a_failed_change_leaves_a_released_shipment_released(flow: Flow) -> None:
    """Customs' word stands: a change of a released shipment's leg whose delivery fails does not make the shipment
    failed (nor, once replayed and released again, send the warehouse a second outbound order). Its payment's: the
    released inventory itself takes no change (state.inventory_released), nor its order once the inventory is declared
    (state.inventory_declared)."""
    s = shipment(63)
    await _released(flow, s)
    assert (await flow.shipment(s))["customs_status"] == "released"
    async with flow.pool.acquire() as conn:  # the first declarations went (a change waits behind its original)
        for job in await cbec_queue.claim(conn, worker_id="w", lease_s=30, endpoint="customs", limit=20):
            assert await cbec_queue.record_done(conn, job)
    change = version_of(s.payment, "2", 60)
    await flow.submit(change)
    await flow.receipt(s.order, "120", 2)  # anything that refreshes the shipment while the change waits
    await _die(flow, change)
    assert (await flow.doc(change))["forward_state"] == "failed"
    assert (await flow.shipment(s))["customs_status"] == "released"
    async with flow.pool.acquire() as conn:
        assert await cbec_queue.replay(conn, endpoint="customs", on_replayed=flow.outbox.deliveries_replayed) == 1
    assert (await flow.doc(change))["forward_state"] == "queued"
    assert (await flow.shipment(s))["customs_status"] == "released"
    outbound = [k for k in await flow.jobs() if k.startswith("warehouse:")]
    assert len(outbound) == 1, outbound


@pytest.mark.db
async def test_a_released_shipments_warehouse_order_goes_to_its_consignee(flow: Flow) -> None:
    """The outbound order ships to the 收货人 of the waybill and order (spec §3.1 #26-28, §3.3 #16-18), not to the
    buyer the inventory names."""
    s = shipment(6, mode="1210")  # a gift: the consignee is not the buyer
    order = s.order_doc
    assert order["consignee"] != order["buyerName"]
    await _released(flow, s)
    [job] = [j for k, j in (await flow.jobs()).items() if k.startswith("warehouse:")]
    payload = job["payload"]
    assert payload["consignee"] == {"name": order["consignee"], "telephone": order["consigneeTelephone"],
                                    "address": order["consigneeAddress"]}  # fmt: skip
    assert payload["consigneeFrom"] == "CEB511"


@pytest.mark.db
async def test_a_released_shipments_warehouse_order_carries_the_numbers_customs_gave_its_inventory(flow: Flow) -> None:
    """The inventory's XML as declared has no invtNo (customs numbers it, CEB622): the outbound order carries the
    invtNo and preNo of its receipts, which the zone warehouse writes its account book off by."""
    s = shipment(7, mode="1210")
    for payload in (s.order, s.payment, s.waybill):
        await flow.submit(payload)
        await flow.receipt(payload, "2", 1)
    await flow.submit(s.inventory)
    await flow.receipt(s.inventory, "120", 2, invtNo="46012026I000000007", preNo="B20260101000000007")
    await flow.receipt(s.inventory, "800", 4, invtNo="46012026I000000007", preNo="B20260101000000007")
    [job] = [j for k, j in (await flow.jobs()).items() if k.startswith("warehouse:")]
    assert (job["payload"]["invtNo"], job["payload"]["preNo"]) == ("46012026I000000007", "B20260101000000007")


@pytest.mark.db
async def test_a_released_inventory_cancelled_and_declared_anew_cancels_its_warehouse_order_and_makes_another(
    flow: Flow,
) -> None:
    """A released shipment is final, yet customs may conclude its inventory's cancellation (CEB624 399) and release
    the inventory declared anew: the warehouse gets the cancel of the first order (behind it: its order's key) and
    an order of the new inventory."""

    s = shipment(64, mode="1210")
    await _released(flow, s, invtNo="46012026I000000064")
    first = f"warehouse:{s.inventory['guid']}:1"
    assert [k for k in await flow.jobs() if k.startswith("warehouse:")] == [first]
    conclude = await _cancel(flow, s.inventory, "D" * 36, "46012026I000000064", "B20260101000000064", 5)
    assert f"{first}:cancel" not in await flow.jobs()  # taken for processing: not concluded yet
    await conclude()
    jobs = await flow.jobs()
    cancelled = jobs[f"{first}:cancel"]
    assert cancelled["kind"] == "warehouse.cancel" and cancelled["payload"]["guid"] == s.inventory["guid"]
    assert cancelled["payload"]["reason"] == "CEB623 concluded by customs: 买家取消"
    assert list(cancelled["ordering_keys"]) == list(jobs[first]["ordering_keys"]) == [first]
    # declared anew and released: an order of its own (the shipment was released all along)
    anew = version_of(s.inventory, "1", 60)
    await flow.submit(anew)
    await flow.receipt(anew, "800", 7, invtNo="46012026I000000065")
    assert (await flow.shipment(s))["customs_status"] == "released"
    again = (await flow.jobs())[f"warehouse:{anew['guid']}:1"]
    assert again["kind"] == "warehouse.outbound" and again["payload"]["invtNo"] == "46012026I000000065"
    await flow.receipt(anew, "800", 8, invtNo="46012026I000000065")  # a repeat sets off nothing
    assert len([k for k in await flow.jobs() if k.startswith("warehouse:")]) == 3


async def _seller_events(flow: Flow, s: samples.ShipmentSample, event: str) -> list[dict[str, Any]]:
    """The webhook jobs of seller-a for shipment ``s`` and ``event`` (``inventory_cancelled`` ...), oldest first."""
    stream = f"webhook:seller-a:{s.order_doc['ebpCode']}:{s.order_doc['orderNo']}"
    return [dict(j) for k, j in (await flow.jobs()).items() if k.startswith(f"{stream}:{event}:")]


def _webhook_body_check(payload: Mapping[str, Any]) -> None:
    """A webhook job's event as /openapi.json describes its body."""
    import jsonschema

    from gateway.openapi import OPENAPI

    post = OPENAPI["webhooks"][payload["event"]]["post"]
    body = {"id": "X", "event": payload["event"], "timestamp": 1, "data": payload["data"]}
    jsonschema.Draft202012Validator(post["requestBody"]["content"]["application/json"]["schema"],
                                    format_checker=jsonschema.FormatChecker()).validate(body)  # fmt: skip


@pytest.mark.db
async def test_a_customs_status_change_tells_the_receipt_that_moved_it_and_when(flow: Flow) -> None:
    """A seller orders its shipments' customs status changes by customs' own time: each change says the receipt that
    made it — returnStatus, its meaning, returnInfo, returnTime — and which leg it answers (the inventory accepted and
    released, the order rejected), or none when no receipt made it (declared); and when the gateway recorded it (the
    shipment's customs_updated_at), which orders every change."""
    s, refused = shipment(74), shipment(75)
    await _released(flow, s, invtNo="46012026I000000074")
    stream = f"webhook:seller-a:{s.order_doc['ebpCode']}:{s.order_doc['orderNo']}"
    told = [j["payload"] for k, j in (await flow.jobs()).items()
            if k.startswith(f"{stream}:") and j["payload"]["event"] == "shipment.customs_status_changed"]  # fmt: skip
    for payload in told:
        _webhook_body_check(payload)
    declared, released = (p["data"] for p in told)
    assert [(d["previous"], d["customsStatus"]) for d in (declared, released)] == [("pending", "declared"),
                                                                                 ("declared", "released")]
    assert (declared["customs"], declared["document"]) == (None, None)  # a receipt of a leg: declared by any send
    assert released["customs"] == {"code": "800", "name": rc.status_name("800"), "info": "status 800",
                                   "time": "20260101120000004"}  # fmt: skip
    assert released["document"] == {"kind": "inventory", "messageType": "CEB621", "guid": s.inventory_doc["guid"]}
    row = await flow.shipment(s)
    assert released["changedAt"] == row["customs_updated_at"].isoformat() > declared["changedAt"]

    await flow.submit(refused.order)
    await flow.receipt(refused.order, "2", 1)
    values = {**return_values(refused.order, "-301001", 2), "returnInfo": "订单编号重复"}
    await flow.post(build_receipt(RECEIPT_FOR["CEB311"], values))
    stream = f"webhook:seller-a:{refused.order_doc['ebpCode']}:{refused.order_doc['orderNo']}"
    [*_, rejected] = [j["payload"] for k, j in (await flow.jobs()).items() if k.startswith(f"{stream}:")]
    _webhook_body_check(rejected)
    data = rejected["data"]
    assert (data["previous"], data["customsStatus"]) == ("declared", "rejected")
    assert (data["customs"]["code"], data["customs"]["info"], data["customs"]["time"]) == (
        "-301001", "订单编号重复", "20260101120000002")
    assert data["document"] == {"kind": "order", "messageType": "CEB311", "guid": refused.order_doc["guid"]}


@pytest.mark.db
async def test_sellers_hear_when_a_shipment_becomes_mismatched_and_when_it_is_matched_again(flow: Flow) -> None:
    """The payer is not the buyer (三单对碰 fails): the seller hears the shipment is mismatched, with the blocking
    findings as its own key would see them — the payment it is no party of withheld —, once however many legs
    follow while it stays so (its inventory held), and hears it matched once the payment is put right; each in the
    shipment's stream, in the order it happened."""
    s = shipment(71)
    bad = samples.broken(s, "payer_not_buyer")
    stream = f"webhook:seller-a:{s.order_doc['ebpCode']}:{s.order_doc['orderNo']}"
    await flow.submit(s.order)
    assert await _seller_events(flow, s, "reconciliation") == []  # incomplete: nothing to tell
    body = await flow.submit(bad.payment)
    assert body["shipments"][0]["state"] == "mismatched"
    [told] = await _seller_events(flow, s, "reconciliation")
    assert told["endpoint"] == "webhook" and list(told["ordering_keys"]) == [stream]
    assert told["payload"]["event"] == "shipment.reconciliation_changed" and told["payload"]["seller"] == "seller-a"
    data = told["payload"]["data"]
    assert (data["ebpCode"], data["orderNo"], data["state"], data["previous"]) == (
        s.order_doc["ebpCode"], s.order_doc["orderNo"], "mismatched", "incomplete")
    assert data["missing"] == ["waybill", "inventory"]
    stored = [f for f in (await flow.shipment(s))["findings"] if f["blocking"]]
    assert [f["code"] for f in data["findings"]] == [f["code"] for f in stored] and stored
    payer = bad.payment_doc["payerIdNumber"]
    assert payer in str(stored) and payer not in str(data)  # the payment company's document, not the seller's
    for f in data["findings"]:
        sides = {side["doc"]: side for side in (f["left"], f["right"]) if side}
        assert sides["CEB411"] == {"doc": "CEB411", "guid": None, "path": sides["CEB411"]["path"], "value": None,
                                   "withheld": True}  # fmt: skip
        assert sides["CEB311"]["value"] is not None and sides["CEB311"]["guid"] == s.order_doc["guid"]
    for payload in (s.waybill, s.inventory):  # still mismatched: told nothing more
        assert (await flow.submit(payload))["shipments"][0]["state"] == "mismatched"
    assert len(await _seller_events(flow, s, "reconciliation")) == 1
    assert (await flow.doc(s.inventory))["forward_state"] == "held"

    right = version_of(s.payment, "2", 30)
    assert (await flow.submit(right))["shipments"][0]["state"] == "matched"
    first, again = await _seller_events(flow, s, "reconciliation")
    assert first == told and again["id"] > told["id"] and list(again["ordering_keys"]) == [stream]
    data = again["payload"]["data"]
    assert (data["state"], data["previous"], data["missing"], data["findings"]) == ("matched", "mismatched", [], [])
    assert again["dedupe_key"].startswith(f"{stream}:reconciliation:matched:")


@pytest.mark.db
async def test_warehouse_callbacks_of_one_order_at_once_are_told_one_after_the_other(flow: Flow) -> None:
    """A warehouse posting two steps of an order at once (picked, then shipped before the first was answered): the
    second is judged once the first is stored, so the sellers hear picked, then shipped after picked — not both
    "after accepted", the order seeming to go back when picked arrives second."""
    from adapters.warehouse import order_id, parse_callback
    from tests.forwardutil import wait_for

    s = shipment(78, mode="1210")
    await _released(flow, s, invtNo="46012026I000000078")
    order = order_id(s.inventory["guid"], 1)

    def callback(status: str, at: str) -> Any:
        return parse_callback(json.dumps({
            "schema": "cbec.warehouse-callback.v1", "orderId": order, "warehouseOrderNo": "WO-78",
            "direction": "outbound", "status": status, "occurredAt": at,
            "reference": {"messageType": "CEB621", "guid": s.inventory_doc["guid"]}}).encode())  # fmt: skip

    await flow.outbox.record_warehouse_callback(callback("accepted", "2026-12-07T10:00:00+08:00"), "wh")
    entered, gate = asyncio.Event(), asyncio.Event()
    real = flow.outbox._tell_sellers

    async def held(conn: asyncpg.Connection, cb: Any, *rest: Any) -> None:
        await real(conn, cb, *rest)
        if cb.status == "picked":  # the first callback stored and told, its transaction still open
            entered.set()
            await gate.wait()

    flow.outbox._tell_sellers = held  # type: ignore[method-assign]
    first = asyncio.create_task(flow.outbox.record_warehouse_callback(
        callback("picked", "2026-12-07T10:05:00+08:00"), "wh"))  # fmt: skip
    await entered.wait()
    second = asyncio.create_task(flow.outbox.record_warehouse_callback(
        callback("shipped", "2026-12-07T10:06:00+08:00"), "wh"))  # fmt: skip

    async def settled() -> bool:  # answered already, or waiting for the first to commit
        waiting = await flow.rows("SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                                  " AND wait_event_type = 'Lock' AND wait_event = 'advisory'")  # fmt: skip
        return second.done() or bool(waiting)

    await wait_for(settled, what="the second callback answered or waiting")
    gate.set()
    await asyncio.gather(first, second)
    told = [j["payload"]["data"] for j in await _seller_events(flow, s, "warehouse")]
    assert [(d["previous"], d["status"]) for d in told] == [(None, "accepted"), ("accepted", "picked"),
                                                           ("picked", "shipped")], told  # fmt: skip


@pytest.mark.db
async def test_sellers_hear_when_what_holds_a_mismatched_shipment_changes(flow: Flow) -> None:
    """The payment disagrees with the order twice (its amount, its payer): a seller mending one disagreement and
    leaving the other hears the shipment still mismatched with the findings that hold it now — not when a message
    changes nothing of them (the same payment sent again), nor when what changed is a value withheld from it (another
    payer, in the payment company's document it is no party of) —, and matched once both are mended."""
    s = shipment(76)
    bad = samples.broken(samples.broken(s, "amount_mismatch"), "payer_not_buyer")
    for payload in (s.order, s.waybill, s.inventory):
        await flow.submit(payload)
    assert (await flow.submit(bad.payment))["shipments"][0]["state"] == "mismatched"
    [first] = await _seller_events(flow, s, "reconciliation")
    assert {f["code"] for f in first["payload"]["data"]["findings"]} >= {"recon.amount_paid_mismatch",
                                                                        "recon.buyer_payer_mismatch"}

    payer = {k: bad.payment_doc[k] for k in ("payerName", "payerIdNumber")}
    amount_right = version_of(s.payment, "2", 30, **payer)  # the amount mended, the payer still another person
    assert (await flow.submit(amount_right))["shipments"][0]["state"] == "mismatched"
    told = await _seller_events(flow, s, "reconciliation")
    assert len(told) == 2 and told[0] == first
    data = told[1]["payload"]["data"]
    assert (data["state"], data["previous"], data["missing"]) == ("mismatched", "mismatched", [])
    codes = {f["code"] for f in data["findings"]}
    assert "recon.buyer_payer_mismatch" in codes and "recon.amount_paid_mismatch" not in codes, codes
    stored = [f for f in (await flow.shipment(s))["findings"] if f["blocking"]]
    assert [f["code"] for f in data["findings"]] == [f["code"] for f in stored]
    _webhook_body_check(told[1]["payload"])

    assert (await flow.submit(version_of(amount_right, "2", 40)))["shipments"][0]["state"] == "mismatched"
    another = shipment(77).order_doc  # yet another payer: its value is withheld from the seller
    changed = version_of(amount_right, "2", 50, payerName=another["buyerName"],
                         payerIdNumber=another["buyerIdNumber"])  # fmt: skip
    assert (await flow.submit(changed))["shipments"][0]["state"] == "mismatched"
    assert len(await _seller_events(flow, s, "reconciliation")) == 2  # as the seller sees them, nothing changed

    assert (await flow.submit(version_of(s.payment, "2", 200)))["shipments"][0]["state"] == "matched"
    *_, last = await _seller_events(flow, s, "reconciliation")
    assert len(await _seller_events(flow, s, "reconciliation")) == 3
    assert (last["payload"]["data"]["state"], last["payload"]["data"]["findings"]) == ("matched", [])


@pytest.mark.db
async def test_a_shipment_matched_without_a_mismatch_tells_no_reconciliation(flow: Flow, db_pool: asyncpg.Pool) -> None:
    """Incomplete to matched tells nothing (the customs status changes follow): with a seller's webhook, a message
    that moves no shipment to or from mismatched costs no statement more (the outbox is not even asked); without
    sellers' webhooks a mismatch enqueues nothing and the store does not look: its write returns no change at all."""
    told: list[Any] = []

    def spied(outbox: Outbox) -> None:
        real = outbox.tell_states

        async def tell_states(conn: asyncpg.Connection, changes: Any, shipments: Any) -> None:
            told.append(changes)
            await real(conn, changes, shipments)

        outbox.tell_states = tell_states  # type: ignore[method-assign]

    spied(flow.outbox)
    s = shipment(72)
    for payload in legs(s):
        await flow.submit(payload)
    assert (await flow.shipment(s))["state"] == "matched"
    assert await _seller_events(flow, s, "reconciliation") == [] and told == []

    outbox = Outbox(db_pool, router())  # forwarding, and no seller with a webhook
    store = Store(db_pool, outbox=outbox)
    assert outbox.reconciliation_told() is None
    spied(outbox)
    try:
        bare = Flow(db_pool, store, outbox, Pipeline(_SCHEMAS, store))
        b = samples.broken(shipment(73), "amount_mismatch")
        for payload in legs(b):
            await bare.submit(payload)
        assert (await bare.shipment(b))["state"] == "mismatched"
        # nor looks at what holds it: a mismatched shipment written again keeps no findings to compare with
        assert (await bare.shipment(b))["previous_blocking"] is None
    finally:
        await store.aclose()
    assert told == [] and not [k for k in await bare.jobs() if k.startswith("webhook:")]


@pytest.mark.db
async def test_sellers_hear_of_a_cancellation_customs_concluded_and_of_the_release_of_the_inventory_declared_anew(
    flow: Flow,
) -> None:
    """A released shipment stays released (final), so a cancellation customs concluded moves no customs status and the
    inventory declared anew releases nothing new: the sellers hear of each in an event of its own, in the shipment's
    stream — with the warehouse orders cancelled and made — once."""
    from adapters.warehouse import order_id

    s = shipment(67, mode="1210")
    await _released(flow, s, invtNo="46012026I000000067")
    conclude = await _cancel(flow, s.inventory, "D" * 36, "46012026I000000067", "B20260101000000067", 5)
    assert await _seller_events(flow, s, "inventory_cancelled") == []  # taken for processing: not concluded yet
    await conclude()
    [cancelled] = await _seller_events(flow, s, "inventory_cancelled")
    stream = f"webhook:seller-a:{s.order_doc['ebpCode']}:{s.order_doc['orderNo']}"
    assert cancelled["endpoint"] == "webhook" and list(cancelled["ordering_keys"]) == [stream]
    assert cancelled["payload"]["event"] == "shipment.inventory_cancelled"
    data = cancelled["payload"]["data"]
    assert (data["ebpCode"], data["orderNo"], data["messageType"], data["guid"], data["invtNo"], data["reason"]) == (
        s.order_doc["ebpCode"], s.order_doc["orderNo"], "CEB623", "D" * 36, "46012026I000000067", "买家取消")
    assert (data["customs"]["code"], data["customs"]["time"]) == ("399", "20260101120000006")
    assert data["warehouseOrders"] == [order_id(s.inventory["guid"], 1)]  # the order whose cancel went
    assert (await flow.shipment(s))["customs_status"] == "released"

    anew = version_of(s.inventory, "1", 60)
    await flow.submit(anew)
    await flow.receipt(anew, "120", 7, invtNo="46012026I000000068")
    assert await _seller_events(flow, s, "inventory_released") == []
    await flow.receipt(anew, "800", 8, invtNo="46012026I000000068")
    await flow.receipt(anew, "800", 9, invtNo="46012026I000000068")  # a later 800 sets off nothing
    [released] = await _seller_events(flow, s, "inventory_released")
    assert released["payload"]["event"] == "shipment.inventory_released" and list(released["ordering_keys"]) == [stream]
    data = released["payload"]["data"]
    assert (data["messageType"], data["guid"], data["invtNo"], data["customs"]["code"]) == (
        "CEB621", anew["documents"][0]["guid"], "46012026I000000068", "800")
    assert data["warehouseOrders"] == [order_id(anew["guid"], 1)] and "reason" not in data
    assert released["id"] > cancelled["id"]
    # the first release was told once, as a status change; the second is no status change
    changes = [j["payload"]["data"]["customsStatus"] for k, j in (await flow.jobs()).items()
               if k.startswith(f"{stream}:released:")]  # fmt: skip
    assert changes == ["released"]


@pytest.mark.db
async def test_an_accepted_inventory_cancelled_and_declared_anew_follows_the_new_one(flow: Flow) -> None:
    """Customs accepted the inventory and concluded its cancellation; the inventory declared anew is the one in force
    (customs holds nothing of the one cancelled): the shipment is declared at once, and failed when the new one's
    delivery dies — not left accepted, as customs left the inventory it cancelled."""
    s = shipment(72)
    await _accepted(flow, s, invtNo="46012026I000000072")
    conclude = await _cancel(flow, s.inventory, "K" * 36, "46012026I000000072", "B20260101000000072", 5)
    await conclude()
    async with flow.pool.acquire() as conn:  # the cancellation went (the inventory declared anew waits behind it)
        for job in await cbec_queue.claim(conn, worker_id="w", lease_s=30, endpoint="customs", limit=20):
            assert await cbec_queue.record_done(conn, job)
    anew = version_of(s.inventory, "1", 60)
    await flow.submit(anew)
    assert (await flow.shipment(s))["customs_status"] == "declared"
    await _die(flow, anew)
    assert (await flow.shipment(s))["customs_status"] == "failed"


def _as_posted(job: Mapping[str, Any]) -> dict[str, Any]:
    """A webhook job's payload as the seller's URL gets it (adapters/webhook.py), checked against /openapi.json."""
    import jsonschema

    from gateway.openapi import OPENAPI

    body = {"id": job["dedupe_key"], "event": job["payload"]["event"], "timestamp": 0, "data": job["payload"]["data"]}
    post = OPENAPI["webhooks"][body["event"]]["post"]
    jsonschema.validate(body, post["requestBody"]["content"]["application/json"]["schema"])
    return body


@pytest.mark.db
async def test_a_cancellation_whose_delivery_dies_tells_its_seller_and_so_does_its_replay_delivered(flow: Flow) -> None:
    """A cancellation (CEB623) of a released inventory is no leg: its delivery dying moves no status. Its seller hears
    of it (shipment.delivery_failed, naming the document and the error), once per death — a replay that dies again is
    told again —, and hears when a replay reaches customs (shipment.delivery_recovered), once; customs' answer to it
    follows as any."""
    from tests.test_store import message

    s = shipment(73)
    await _accepted(flow, s, invtNo="46012026I000000073")
    await flow.receipt(s.inventory, "800", 5, invtNo="46012026I000000073")
    head = referring_head(s.inventory_doc, guid="L" * 36, invt_no="46012026I000000073", reason="买家取消")
    cancel = await flow.store.ingest(message("CEB623", head, lines=[]), b"<CEB623Message/>", submitter="test")
    assert cancel.http_status == 202
    payload = {"guid": cancel.guid}
    await _die(flow, payload)
    assert (await flow.shipment(s))["customs_status"] == "released"
    [dead] = [_as_posted(j) for j in await _seller_events(flow, s, "delivery_failed")]
    assert dead["event"] == "shipment.delivery_failed"
    assert dead["data"] == {"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"],
                            "messageType": "CEB623", "guid": "L" * 36, "messageGuid": cancel.guid, "kind": "cancel",
                            "appType": "1", "customsStatus": "released", "error": "PermanentError: no"}, dead["data"]
    async with flow.pool.acquire() as conn:  # replayed, and dead again: told again
        assert await cbec_queue.replay(conn, endpoint="customs", on_replayed=flow.outbox.deliveries_replayed) == 1
    assert await _seller_events(flow, s, "delivery_recovered") == []  # on its way: nothing to tell yet
    await _die(flow, payload)
    assert len(await _seller_events(flow, s, "delivery_failed")) == 2
    async with flow.pool.acquire() as conn:
        assert await cbec_queue.replay(conn, endpoint="customs", on_replayed=flow.outbox.deliveries_replayed) == 1
    await _deliver(flow, payload)
    [back] = [_as_posted(j) for j in await _seller_events(flow, s, "delivery_recovered")]
    assert back["data"] == {k: v for k, v in dead["data"].items() if k != "error"}, back["data"]
    assert (await flow.doc_by_guid("L" * 36))["forward_state"] == "sent"
    assert len(await _seller_events(flow, s, "delivery_failed")) == 2


@pytest.mark.db
async def test_a_change_of_an_accepted_inventory_whose_delivery_dies_tells_its_seller(flow: Flow) -> None:
    """Customs' word on the inventory it holds stands: the shipment stays accepted when a change of it dies — and its
    seller hears the change died. A leg's death that fails its shipment is told both ways: the status, the document."""
    s = shipment(74)
    await _accepted(flow, s)
    change = version_of(s.inventory, "2", 60)
    await flow.submit(change)
    await _die(flow, change)
    assert (await flow.shipment(s))["customs_status"] == "accepted"
    [dead] = [_as_posted(j)["data"] for j in await _seller_events(flow, s, "delivery_failed")]
    assert (dead["messageType"], dead["guid"], dead["appType"], dead["customsStatus"]) == (
        "CEB621", change["documents"][0]["guid"], "2", "accepted")
    t = shipment(75)
    await flow.submit(t.order)
    await _die(flow, t.order)
    told = [j["payload"] for k, j in (await flow.jobs()).items() if k.startswith(
        f"webhook:seller-a:{t.order_doc['ebpCode']}:{t.order_doc['orderNo']}:")]  # fmt: skip
    assert [(p["event"], p["data"]["customsStatus"]) for p in told] == [
        ("shipment.customs_status_changed", "failed"), ("shipment.delivery_failed", "failed")]


@pytest.mark.db
async def test_an_inventory_customs_cancelled_before_its_release_cancels_its_shipment(flow: Flow) -> None:
    """Customs accepted the inventory and then concluded its cancellation (CEB624 399): customs holds no inventory of
    the shipment, which is cancelled — not left accepted —, its sellers told so as a status change (beside
    shipment.inventory_cancelled); the cancellation merely taken (120) changes nothing yet. Declared anew, the
    shipment follows the new inventory to its release."""
    s = shipment(76)
    await _accepted(flow, s, invtNo="46012026I000000076")
    conclude = await _cancel(flow, s.inventory, "M" * 36, "46012026I000000076", "B20260101000000076", 5)
    assert (await flow.shipment(s))["customs_status"] == "accepted"
    await conclude()
    row = await flow.shipment(s)
    assert row["customs_status"] == "cancelled" and row["customs_info"].startswith("cancel 399"), dict(row)
    told = [j["payload"]["data"] for j in await _seller_events(flow, s, "cancelled")]
    assert [(d["previous"], d["customsStatus"]) for d in told] == [("accepted", "cancelled")]
    async with flow.pool.acquire() as conn:  # the cancellation went (the inventory declared anew waits behind it)
        for job in await cbec_queue.claim(conn, worker_id="w", lease_s=30, endpoint="customs", limit=20):
            assert await cbec_queue.record_done(conn, job)
    anew = version_of(s.inventory, "1", 60)
    await flow.submit(anew)
    assert (await flow.shipment(s))["customs_status"] == "declared"
    await flow.receipt(anew, "800", 8, invtNo="46012026I000000077")
    assert (await flow.shipment(s))["customs_status"] == "released"


@pytest.mark.db
async def test_an_export_inventory_declared_anew_under_another_copno_after_its_cancellation_is_followed(
    flow: Flow,
) -> None:
    """An export inventory customs accepted and whose cancellation (CEB605) it concluded: the shipment is cancelled. The
    exporter declares the parcel anew under another copNo (a key of its own: it replaces no version, so the ingest
    looks at nothing): once that inventory is sent the shipment is declared, and failed when its delivery dies — not
    left cancelled, as customs left the inventory it voided."""
    from gateway.render import new_guid

    async def submit(payload: dict[str, Any]) -> None:
        checked = flow.pipeline.check(render(payload, signer=sign_as_agent))
        assert (await flow.store.ingest(checked.message, checked.raw, submitter="test")).http_status == 202

    async def cancelled(seed: int) -> tuple[samples.ExportShipmentSample, dict[str, Any]]:
        s = samples.export_shipment(random.Random(seed))
        inv = s.inventory_doc
        invt_no = f"{inv['customsCode']}2026E0000000{seed}"
        for code in ("CEB303", "CEB403", "CEB505"):
            await submit(s.payloads()[code])
            await _deliver(flow, s.payloads()[code])
            await flow.receipt(s.payloads()[code], "2", 1)
        await submit(s.inventory)
        await _deliver(flow, s.inventory)
        await flow.receipt(s.inventory, "120", 2, invtNo=invt_no, preNo=f"B2026112000000{seed}00")
        assert (await flow.shipment(s))["customs_status"] == "accepted"
        cancel = {"type": "CEB605", "guid": new_guid(), "baseTransfer": s.inventory["baseTransfer"],
                  "documents": [{"guid": new_guid(), "customsCode": inv["customsCode"],
                                 "copNo": f"CANCEL-{inv['copNo']}"[:30], "invtNo": invt_no, "reason": "买家取消订单",
                                 "agentCode": inv["agentCode"], "agentName": inv["agentName"],
                                 "ebcCode": inv["ebcCode"], "ebcName": inv["ebcName"]}]}  # fmt: skip
        await submit(cancel)
        await _deliver(flow, cancel)
        await flow.receipt(cancel, "399", 3, preNo=f"B2026112000000{seed}01")
        assert (await flow.shipment(s))["customs_status"] == "cancelled"
        anew = version_of(s.inventory, "1", 60, copNo=f"R-{inv['copNo']}"[:30])
        await submit(anew)
        return s, anew

    sent, anew = await cancelled(84)
    await _deliver(flow, anew)
    assert (await flow.shipment(sent))["customs_status"] == "declared"
    dead, anew = await cancelled(85)
    await _die(flow, anew)
    assert (await flow.shipment(dead))["customs_status"] == "failed"


@pytest.mark.db
async def test_sellers_hear_what_customs_said_of_cancellations_and_returns(flow: Flow) -> None:
    """A cancellation of an inventory customs accepted but did not release (no warehouse order to cancel: the shipment
    is cancelled), one customs refused, and a return it concluded (the shipments released, as they were): each told
    once."""
    from tests.test_store import message

    accepted, refused, returned = shipment(68), shipment(69), shipment(70)
    for s in (accepted, refused, returned):
        for payload in (s.order, s.payment, s.waybill):
            await flow.submit(payload)
            await flow.receipt(payload, "2", 1)
        await flow.submit(s.inventory)
    await flow.receipt(accepted.inventory, "120", 4, invtNo="46012026I000000068")
    conclude = await _cancel(flow, accepted.inventory, "E" * 36, "46012026I000000068", "B20260101000000068", 5)
    await conclude()
    [event] = await _seller_events(flow, accepted, "inventory_cancelled")
    assert event["payload"]["data"]["warehouseOrders"] == [] and event["payload"]["data"]["customs"]["code"] == "399"
    assert (await flow.shipment(accepted))["customs_status"] == "cancelled"
    # declared anew and released: the shipment's first release, a status change, told as such only
    anew = version_of(accepted.inventory, "1", 60)
    await flow.submit(anew)
    await flow.receipt(anew, "800", 7, invtNo="46012026I000000071")
    assert (await flow.shipment(accepted))["customs_status"] == "released"
    assert await _seller_events(flow, accepted, "released") != []
    assert await _seller_events(flow, accepted, "inventory_released") == []

    await flow.receipt(refused.inventory, "800", 4, invtNo="46012026I000000069")
    head = referring_head(refused.inventory_doc, guid="F" * 36, invt_no="46012026I000000069", reason="买家取消")
    assert (await flow.store.ingest(message("CEB623", head, lines=[]), b"<CEB623Message/>",
                                    submitter="test")).http_status == 202  # fmt: skip
    values = {k: head[k] for k in ("customsCode", "ebpCode", "ebcCode", "agentCode", "copNo", "invtNo", "guid")}
    values.update(preNo="B20260101000000069")
    for status, ms in (("100", 5), ("100", 6)):  # the refusal, and once more: told once
        await flow.post(build_receipt("CEB624", {**values, "returnStatus": status, "returnInfo": "已放行不能撤销",
                                                 "returnTime": f"20260101120000{ms:03d}"}))  # fmt: skip
    [event] = await _seller_events(flow, refused, "inventory_cancellation_refused")
    data = event["payload"]["data"]
    assert event["payload"]["event"] == "shipment.inventory_cancellation_refused"
    assert (data["customs"]["code"], data["customs"]["info"], data["reason"]) == ("100", "已放行不能撤销", "买家取消")
    assert await _seller_events(flow, refused, "inventory_cancelled") == []
    assert (await flow.shipment(refused))["customs_status"] == "released"

    await flow.receipt(returned.inventory, "800", 4, invtNo="46012026I000000070")
    item = returned.inventory_doc["items"][0]
    lines = [{"gnum": str(item["gnum"]), "gcode": item["gcode"], "gname": item["gname"], "qty": item["qty"],
              "unit": item["unit"]}]  # fmt: skip
    head = referring_head(returned.inventory_doc, guid="G" * 36, invt_no="46012026I000000070", reason="七天无理由退货")
    await _conclude_return(flow, head, lines, 70)
    [event] = await _seller_events(flow, returned, "inventory_returned")
    data = event["payload"]["data"]
    assert (event["payload"]["event"], data["messageType"], data["guid"], data["reason"]) == (
        "shipment.inventory_returned", "CEB625", "G" * 36, "七天无理由退货")
    assert data["warehouseOrders"] == [] and (await flow.shipment(returned))["customs_status"] == "released"
    # the return's withdrawal (appType 3) concluded returns nothing: no second event
    withdrawal = {**head, "guid": "H" * 36, "appType": "3", "appTime": str(int(head["appTime"]) + 100)}
    assert (await flow.store.ingest(message("CEB625", withdrawal, lines=lines), b"<CEB625Message/>",
                                    submitter="test")).http_status == 202  # fmt: skip
    values = {k: withdrawal[k] for k in ("customsCode", "ebpCode", "ebcCode", "agentCode", "copNo", "invtNo", "guid")}
    await flow.post(build_receipt("CEB626", {**values, "preNo": "B20260101000000070", "returnStatus": "399",
                                             "returnInfo": "ok", "returnTime": "20260101120000090"}))  # fmt: skip
    assert (await flow.doc_by_guid("H" * 36))["customs_status"] == "399"
    assert len(await _seller_events(flow, returned, "inventory_returned")) == 1


@pytest.mark.db
async def test_a_retail_export_return_customs_concluded_tells_the_inventorys_number(flow: Flow) -> None:
    """A retail export return (CEB213) names its inventory by the invtNo customs gave it; customs' CEB214 echoes that
    number, which is no number of the return's own (gateway.receipts.SHARED_INVT_NO): the sellers' event says the
    inventory's number all the same, as it does of an import return."""
    s = samples.export_shipment(random.Random(79))
    invt_no = f"{s.inventory_doc['customsCode']}2026E000000079"

    async def submit(payload: dict[str, Any]) -> None:
        checked = flow.pipeline.check(render(payload, signer=sign_as_agent))
        assert (await flow.store.ingest(checked.message, checked.raw, submitter="test")).http_status == 202

    for code in ("CEB303", "CEB403", "CEB505"):
        await submit(s.payloads()[code])
        await flow.receipt(s.payloads()[code], "2", 1)
    await submit(s.inventory)
    await flow.receipt(s.inventory, "800", 2, invtNo=invt_no, preNo="B20261120000000079")
    returned = samples.export_return(random.Random(79), s.inventory_doc, invt_no)
    await submit(returned)
    await flow.receipt(returned, "800", 3)
    stream = f"webhook:seller-a:{s.order_doc['ebpCode']}:{s.order_doc['orderNo']}"
    [event] = [j["payload"] for k, j in (await flow.jobs()).items() if k.startswith(f"{stream}:inventory_returned:")]
    _webhook_body_check(event)
    data = event["data"]
    assert (data["messageType"], data["guid"], data["invtNo"]) == ("CEB213", returned["documents"][0]["guid"], invt_no)


# --- receipt messages with many returns -------------------------------------------------------------------


async def _one_transaction(flow: Flow, root_guid: str, doc_ids: list[int]) -> bool:
    """Whether the receipt rows of a message and the documents were last written by one and the same transaction."""
    rows = await flow.rows(
        "SELECT xmin::text AS x FROM receipts WHERE root_guid = $1"
        " UNION SELECT xmin::text FROM documents WHERE id = ANY ($2::bigint[])",
        root_guid, doc_ids,
    )  # fmt: skip
    return len(rows) == 1


@pytest.mark.db
async def test_a_receipt_message_with_many_returns_is_applied_in_one_transaction(flow: Flow) -> None:
    s = [shipment(40 + i) for i in range(6)]
    for x in s:
        await flow.submit(x.order)
    # s[5]'s "2" came alone before: in the big message it is a duplicate
    (first,) = await flow.receipt(s[5].order, "2", 1)
    assert first["outcome"] == "applied"
    nobody = {**return_values(s[0].order, "2", 1), "ebpCode": "NOBODY0001", "orderNo": "NO-SUCH-ORDER"}
    returns = [
        return_values(s[0].order, "2", 1),  # 1 applied
        return_values(s[0].order, "120", 3),  # 2 applied after it, same document, same message
        return_values(s[1].order, "-301010", 2),  # 3 "already there": applied as accepted
        return_values(s[2].order, "4", 2),  # 4 transient: sent again
        return_values(s[3].order, "120", 5),  # 5 applied ...
        return_values(s[3].order, "2", 4),  # 6 ... and the lower one after it is stale
        return_values(s[4].order, "100", 2),  # 7 rejected
        nobody,  # 8 unmatched
        return_values(s[5].order, "2", 1),  # 9 stored already: duplicate
        return_values(s[5].order, "18", 2),  # 10 a status in no table: kept raw
    ]
    got = await flow.post(build_receipts("CEB312", returns, message_guid="M" * 36))
    assert [r["outcome"] for r in got] == ["applied", "applied", "applied", "transient", "applied", "stale",
                                           "applied", "unmatched", "duplicate", "unknown_status"]  # fmt: skip
    assert [r["index"] for r in got] == list(range(1, 11))
    docs = [await flow.doc(x.order) for x in s]
    assert [r["document_ids"] for r in got] == [[docs[0]["id"]], [docs[0]["id"]], [docs[1]["id"]], [docs[2]["id"]],
                                                [docs[3]["id"]], [docs[3]["id"]], [docs[4]["id"]], [], [],
                                                [docs[5]["id"]]]  # fmt: skip
    assert [(d["customs_status"], d["forward_state"]) for d in docs] == [
        ("120", "receipted"), ("-301010", "receipted"), (None, "queued"), ("120", "receipted"), ("100", "rejected"),
        ("2", "receipted"),
    ]
    assert got[3]["resend"] and f"customs:{s[2].order['guid']}:resend1" in await flow.jobs()
    assert (await flow.shipment(s[4]))["customs_status"] == "rejected"
    stored = await flow.rows(
        "SELECT element_index, outcome, document_id, raw_xml FROM receipts WHERE root_guid = $1 ORDER BY element_index",
        "M" * 36,
    )
    assert [r["element_index"] for r in stored] == [1, 2, 3, 4, 5, 6, 7, 8, 10]  # 9 was there before
    assert [r["outcome"] for r in stored] == [r["outcome"] for r in got if r["outcome"] != "duplicate"]
    assert stored[7]["document_id"] is None
    # the message is stored once, on its first return element
    assert stored[0]["raw_xml"].count("<OrderReturn>") == 10 and all(r["raw_xml"] is None for r in stored[1:])
    assert await _one_transaction(flow, "M" * 36, [d["id"] for d in docs])
    # the same message again: every return is "already stored", nothing changes (the unmatched one is tried again)
    again = await flow.post(build_receipts("CEB312", returns))
    assert [r["outcome"] for r in again] == ["duplicate"] * 7 + ["unmatched"] + ["duplicate"] * 2
    assert len(await flow.rows("SELECT id FROM receipts")) == 10
    # a message whose first return is stored already keeps its XML on its first new one
    partial = [returns[0], return_values(s[0].order, "399", 6)]
    assert [r["outcome"] for r in await flow.post(build_receipts("CEB312", partial, message_guid="P" * 36))] == [
        "duplicate", "applied"]  # fmt: skip
    (row,) = await flow.rows("SELECT element_index, raw_xml FROM receipts WHERE root_guid = $1", "P" * 36)
    assert row["element_index"] == 2 and row["raw_xml"].count("<OrderReturn>") == 2


@pytest.mark.db
async def test_every_correlation_path_in_one_message(flow: Flow) -> None:
    """Inventory returns found by guid, copNo, preNo and invtNo, side by side; each only when the document agrees
    with every party the return names."""
    s = [shipment(50 + i) for i in range(5)]
    for x in s:
        for payload in (x.order, x.payment, x.waybill, x.inventory):
            await flow.submit(payload)
        await flow.sent(x.inventory)
    # an earlier receipt taught each inventory its preNo and invtNo
    for i, x in enumerate(s):
        await flow.receipt(x.inventory, "120", 1, preNo=f"B2026010100000001{i}", invtNo=f"46012026I00000001{i}")
    inv = [await flow.doc(x.inventory) for x in s]
    wrong = {"guid": "F" * 36, "copNo": "NO-SUCH-COPNO"}
    returns = [
        return_values(s[0].inventory, "399", 2),  # by the echoed guid
        {**return_values(s[1].inventory, "399", 2), "guid": "F" * 36},  # by copNo
        {**return_values(s[2].inventory, "399", 2), **wrong, "preNo": inv[2]["pre_no"]},  # by preNo
        {**return_values(s[3].inventory, "399", 2), **wrong, "preNo": "B20260101999999999",
         "invtNo": inv[3]["invt_no"]},  # by invtNo
        {**return_values(s[4].inventory, "399", 2), **wrong, "preNo": "B20260101999999999"},  # nothing: unmatched
        # another enterprise's return whose guid, copNo and preNo are s[0]'s: its ebcCode is not s[0]'s
        {**return_values(s[0].inventory, "800", 3), "ebcCode": "OTHER00001", "preNo": inv[0]["pre_no"]},
    ]  # fmt: skip
    got = await flow.post(build_receipts("CEB622", returns))
    assert [r["document_ids"] for r in got] == [[d["id"]] for d in inv[:4]] + [[], []]
    assert [r["outcome"] for r in got] == ["applied"] * 4 + ["unmatched"] * 2
    assert [(await flow.doc(x.inventory))["customs_status"] for x in s] == ["399"] * 4 + ["120"]


@pytest.mark.db
async def test_the_receipts_of_an_inventorys_change_go_to_the_change(flow: Flow) -> None:
    """A change carries the first version's copNo and preNo: its receipts, echoing its guid or not, are the
    change's, not the superseded first version's."""
    s = shipment(72)
    await flow.submit(s.inventory)
    await flow.sent(s.inventory)
    await flow.receipt(s.inventory, "120", 1)  # teaches v1 its preNo
    v1 = await flow.doc(s.inventory)
    change = version_of(s.inventory, "2", 60)
    await flow.submit(change)
    await flow.sent(change)
    v2 = await flow.doc(change)
    [echoing] = await flow.post(build_receipts("CEB622", [return_values(change, "2", 2)]))
    assert echoing["document_ids"] == [v2["id"]]
    own_guid = {**return_values(change, "100", 3), "guid": "E" * 36, "preNo": v1["pre_no"]}
    [eport] = await flow.post(build_receipts("CEB622", [own_guid]))
    assert eport["document_ids"] == [v2["id"]]
    assert [(await flow.doc(p))["customs_status"] for p in (s.inventory, change)] == ["120", "100"]


@pytest.mark.db
async def test_a_receipt_with_e_ports_own_guid_goes_to_the_version_its_return_info_names(flow: Flow) -> None:
    """The receipt guid is E-Port's (spec §5.1) and returnInfo names the declared one in brackets: a first declaration
    and its change both sent, each receipt goes to the version it names, not to the key's current one."""
    s = shipment(24)
    await flow.submit(s.order)
    change = version_of(s.order, "2", 60, consignee=s.order_doc["consignee"] + "戊")
    await flow.submit(change)
    first_guid, change_guid = s.order["documents"][0]["guid"], change["documents"][0]["guid"]
    eport = {"guid": "E" * 36, "returnInfo": f"退单[{first_guid}]"}
    (refused,) = await flow.post(build_receipt("CEB312", {**return_values(s.order, "100", 1), **eport}))
    eport = {"guid": "F" * 36, "returnInfo": f"新增申报成功[{change_guid}]"}
    (taken,) = await flow.post(build_receipt("CEB312", {**return_values(change, "2", 2), **eport}))
    first, second = await flow.doc(s.order), await flow.doc(change)
    assert refused["document_ids"] == [first["id"]] and taken["document_ids"] == [second["id"]]
    assert (first["customs_status"], second["customs_status"]) == ("100", "2")
    assert second["is_current"] and second["forward_state"] == "receipted"


@pytest.mark.db
async def test_two_enterprises_sharing_a_copno_and_a_broker_get_their_own_returns(flow: Flow) -> None:
    """copNo is unique per enterprise only (spec §2.3): a return naming E1 goes to E1's inventory, whatever E2
    declared with the same copNo through the same broker."""
    a, b = shipment(70), shipment(71)
    a.inventory["documents"][0]["copNo"] = b.inventory["documents"][0]["copNo"] = "COP000001"
    b.inventory["documents"][0].update(ebcCode="4601260E99", assureCode="4601260E99")
    for x in (a, b):
        await flow.submit(x.inventory)
        await flow.sent(x.inventory)
    docs = [await flow.doc(x.inventory) for x in (a, b)]
    for_a = {**return_values(a.inventory, "100", 1), "guid": "E" * 36}  # E-Port's own guid: by copNo
    [got] = await flow.post(build_receipts("CEB622", [for_a]))
    assert got["document_ids"] == [docs[0]["id"]]
    assert [(await flow.doc(x.inventory))["forward_state"] for x in (a, b)] == ["rejected", "sent"]
    [got] = await flow.post(build_receipts("CEB622", [{**return_values(b.inventory, "120", 2), "guid": "E" * 36}]))
    assert got["document_ids"] == [docs[1]["id"]]
    assert [(await flow.doc(x.inventory))["customs_status"] for x in (a, b)] == ["100", "120"]


@pytest.mark.db
async def test_returns_of_waybills_and_format_receipts_lock_and_release_their_shipments(flow: Flow) -> None:
    """Waybill returns of several shipments in one message: their held inventories go; a CEB900 answers a whole
    message (it carries one return only)."""
    s = [shipment(60 + i) for i in range(3)]
    for x in s:
        for payload in (x.order, x.payment, x.waybill, x.inventory):
            await flow.submit(payload)
    await flow.post(build_receipts("CEB312", [return_values(x.order, "2", 1) for x in s]))
    await flow.post(build_receipts("CEB412", [return_values(x.payment, "2", 1) for x in s]))
    assert {(await flow.doc(x.inventory))["forward_state"] for x in s} == {"held"}
    got = await flow.post(build_receipts("CEB512", [return_values(x.waybill, "2", 1) for x in s]))
    assert [r["outcome"] for r in got] == ["applied"] * 3
    assert {(await flow.doc(x.inventory))["forward_state"] for x in s} == {"queued"}
    jobs = await flow.jobs()
    assert all(f"customs:{x.inventory['guid']}" in jobs for x in s)
    with pytest.raises(ValueError):
        build_receipts("CEB900", [{}, {}])


# --- record_sent in batches -------------------------------------------------------------------------------


async def _claim_all(flow: Flow, n: int) -> list[cbec_queue.Job]:
    async with flow.pool.acquire() as conn:
        jobs = await cbec_queue.claim(conn, worker_id="w1", lease_s=30, limit=100)
    assert len(jobs) == n
    return jobs


async def _sent_as_handler(flow: Flow, job: cbec_queue.Job) -> set[tuple[int, int, str]]:
    """record_sent as the worker runs a handler: in its own task, with the worker's done-marks."""
    marks: set[tuple[int, int, str]] = set()
    cbec_queue.store.handler_marks.set(marks)  # a gathered coroutine runs in its own task (a context copy)
    await flow.outbox.record_sent(job, job.payload["message_id"])
    return marks


async def _writers(flow: Flow, jobs: list[cbec_queue.Job]) -> dict[int, tuple[str, set[str]]]:
    """Per job: the transaction that last wrote it and those that last wrote its message's documents."""
    rows = await flow.rows(
        "SELECT j.id, j.xmin::text AS job_x, array_agg(DISTINCT d.xmin::text) AS doc_x FROM jobs AS j"
        " JOIN documents AS d ON d.message_id = (j.payload ->> 'message_id')::bigint"
        " WHERE j.id = ANY ($1::bigint[]) GROUP BY j.id, j.xmin::text",
        [j.id for j in jobs],
    )
    return {r["id"]: (r["job_x"], set(r["doc_x"])) for r in rows}


@pytest.mark.db
async def test_concurrent_deliveries_commit_together(flow: Flow) -> None:
    ships = [shipment(40 + i) for i in range(4)]
    for s in ships:
        for payload in (s.order, s.payment, s.waybill):
            await flow.submit(payload)
    jobs = await _claim_all(flow, 12)
    marks = await asyncio.gather(*(_sent_as_handler(flow, j) for j in jobs))
    # every handler learnt that its own transaction marked its job done (the worker writes no outcome again)
    assert [m for m in marks] == [{(j.id, j.attempts, j.locked_by)} for j in jobs]
    writers = await _writers(flow, jobs)
    # the job and its message's sent mark in one transaction; the twelve deliveries in fewer transactions
    assert all(docs == {job_x} for job_x, docs in writers.values())
    assert len({job_x for job_x, _ in writers.values()}) <= 2
    for s in ships:
        for payload in (s.order, s.payment, s.waybill):
            doc = await flow.doc(payload)
            assert doc["forward_state"] == "sent" and doc["sent_at"] is not None
        assert (await flow.shipment(s))["customs_status"] == "declared"
    assert len(await flow.awaited()) == 12
    done = await flow.rows(
        "SELECT j.state, j.locked_by, a.outcome, a.finished_at FROM jobs AS j"
        " JOIN job_attempts AS a ON a.job_id = j.id AND a.attempt = j.attempts WHERE j.id = ANY ($1::bigint[])",
        [j.id for j in jobs],
    )
    assert len(done) == 12
    assert all(r["state"] == "done" and r["locked_by"] is None and r["outcome"] == "ok" and r["finished_at"]
               for r in done)  # fmt: skip


@pytest.mark.db
async def test_a_lost_lease_in_a_batch_fails_alone(flow: Flow) -> None:
    kept, lost = shipment(50), shipment(51)
    for payload in (kept.order, kept.payment, lost.order):
        await flow.submit(payload)
    jobs = await _claim_all(flow, 3)
    (gone,) = [j for j in jobs if j.payload["guid"] == lost.order["guid"]]
    async with flow.pool.acquire() as conn:  # its lease runs out and the reaper takes it back
        await conn.execute("UPDATE jobs SET lease_until = now() - interval '1 s' WHERE id = $1", gone.id)
        assert [r["id"] for r in await cbec_queue.reap_expired(conn)] == [gone.id]
    results = await asyncio.gather(*(_sent_as_handler(flow, j) for j in jobs), return_exceptions=True)
    for job, result in zip(jobs, results, strict=True):
        if job is gone:
            assert isinstance(result, cbec_queue.LeaseLost)
        else:
            assert result == {(job.id, job.attempts, job.locked_by)}
    # the others committed, in one transaction ...
    writers = await _writers(flow, [j for j in jobs if j is not gone])
    assert len({x for x, docs in writers.values() for x in {x, *docs}}) == 1
    assert (await flow.shipment(kept))["customs_status"] == "declared"
    # ... and the lost one wrote nothing, as its own rolled-back transaction would have
    doc = await flow.doc(lost.order)
    assert doc["forward_state"] == "queued" and doc["sent_at"] is None
    assert doc["id"] not in await flow.awaited()
    assert (await flow.shipment(lost))["customs_status"] == "pending"
    (job,) = await flow.rows("SELECT state, attempts FROM jobs WHERE id = $1", gone.id)
    assert job["state"] == "queued" and job["attempts"] == gone.attempts
    outcomes = await flow.rows("SELECT outcome FROM job_attempts WHERE job_id = $1", gone.id)
    assert [r["outcome"] for r in outcomes] == ["lease_expired"]


@pytest.mark.db
async def test_a_failing_batch_runs_one_by_one(flow: Flow) -> None:
    ships = [shipment(60 + i) for i in range(3)]
    for s in ships:
        await flow.submit(s.order)
    jobs = await _claim_all(flow, 3)
    bad = jobs[1]
    async with flow.pool.acquire() as conn:
        # two deadlocks (the batch's, then the first delivery's alone: retried); the database always refuses the
        # sent mark of one message
        await conn.execute(f"""
            CREATE SEQUENCE trips;
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('trips') <= 2 THEN
                    RAISE EXCEPTION 'deadlock' USING ERRCODE = 'deadlock_detected';
                END IF;
                IF NEW.message_id = {int(bad.payload["message_id"])} THEN
                    RAISE EXCEPTION 'refused';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse BEFORE UPDATE OF forward_state ON documents FOR EACH ROW EXECUTE FUNCTION refuse();
        """)  # fmt: skip
    results = await asyncio.gather(*(_sent_as_handler(flow, j) for j in jobs), return_exceptions=True)
    assert isinstance(results[1], asyncpg.RaiseError) and str(results[1]) == "refused"
    for i in (0, 2):
        assert results[i] == {(jobs[i].id, jobs[i].attempts, jobs[i].locked_by)}
        assert (await flow.doc(ships[i].order))["forward_state"] == "sent"
    assert (await flow.doc(ships[1].order))["forward_state"] == "queued"
    states = {r["id"]: r["state"] for r in await flow.rows("SELECT id, state FROM jobs WHERE endpoint = 'customs'")}
    assert states == {jobs[0].id: "done", jobs[1].id: "running", jobs[2].id: "done"}
    assert await flow.rows("SELECT last_value FROM trips") == [(5,)]  # batch, first (twice), second, third


@pytest.mark.db
async def test_message_xml_reads_many_at_once(flow: Flow) -> None:
    ships = [shipment(70 + i) for i in range(3)]
    for s in ships:
        await flow.submit(s.order)
    stored = {r["id"]: r["raw_xml"] for r in await flow.rows("SELECT id, raw_xml FROM messages")}
    ids = sorted(stored)
    asked = [*ids, ids[0], 10**9]
    found = await asyncio.gather(*(flow.outbox.message_xml(i) for i in asked))
    assert found == [*(stored[i] for i in ids), stored[ids[0]], None]
    assert await flow.outbox.message_xml(ids[1]) == stored[ids[1]]  # alone, later: read again


@pytest.mark.db
async def test_the_watchdog_deletes_delivered_jobs_after_the_retention(flow: Flow) -> None:
    """Delivered jobs older than done_job_retention_days go with the watchdog's pass; newer ones, live ones and
    dead letters stay; a retention of 0 keeps everything."""
    from gateway.workers import run_watchdog

    async with flow.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO jobs (endpoint, kind, state, finished_at) VALUES"
            " ('customs', 'k', 'done', now() - interval '3 days'), ('customs', 'k', 'done', now() - interval '2 days'),"
            " ('customs', 'k', 'done', now() - interval '1 hour'), ('customs', 'k', 'dead', now() - interval '9 days'),"
            " ('customs', 'k', 'queued', NULL)"
        )

    async def states() -> list[str]:
        return sorted(r["state"] for r in await flow.pool.fetch("SELECT state FROM jobs"))

    async def one_pass(retention_days: float) -> None:
        stop = asyncio.Event()
        fwd = ForwardingSettings(done_job_retention_days=retention_days, watchdog_interval_s=60)
        task = asyncio.create_task(run_watchdog(flow.outbox, fwd, stop))
        await asyncio.sleep(0.3)  # the first pass runs at once
        stop.set()
        await asyncio.wait_for(task, 5)

    await one_pass(0)
    assert await states() == ["dead", "done", "done", "done", "queued"]
    await one_pass(2.5)
    assert await states() == ["dead", "done", "done", "queued"]
    await one_pass(1)
    assert await states() == ["dead", "done", "queued"]
    assert await flow.outbox.purge_done_jobs(older_than_s=0, batch=1) == 1  # batch by batch, to the end


async def test_a_second_record_sent_transaction_starts_only_for_a_full_batch() -> None:
    """The outbox's Batcher (another_when_full): beside a running record_sent transaction, deliveries wait for
    its next batch until a full batch waits."""
    from gateway.outbox import _Sent

    outbox = Outbox(None, None, max_sent_batch=2, max_sent_parallel=2)  # type: ignore[arg-type]
    gate = asyncio.Event()
    batches: list[int] = []

    async def record(items: list[_Sent], follow: Any) -> dict[_Sent, Exception | None]:
        batches.append(len(items))
        await gate.wait()
        return dict.fromkeys(items)

    outbox._sent._work = record

    def deliver(n: int) -> asyncio.Future[None]:
        return outbox._sent.put(_Sent(None, n))  # type: ignore[arg-type]

    futures = [deliver(1)]
    await asyncio.sleep(0)
    futures.append(deliver(2))
    await asyncio.sleep(0)
    assert outbox._sent.running == 1  # one waits: it goes in the running transaction's next batch
    futures.append(deliver(3))
    await asyncio.sleep(0)
    assert outbox._sent.running == 2  # a full batch waits: a second transaction takes it
    gate.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*futures)
    assert sorted(batches) == [1, 2]
    await outbox.aclose()


async def test_a_tax_bill_is_its_inventorys_whatever_version_its_records_match(flow: Flow) -> None:
    """A refused change echoes the invtNo too: a CEB818 found its version, and the bill was shown twice (one per
    version), the later status beside no amounts; the bill is the inventory's, estimated on the version customs
    holds. (The change went in before the release, whose 800 came for the first declaration: a released inventory
    takes no change.)"""
    from datetime import datetime, timedelta

    now = datetime.now(CHINA_TZ)
    s = shipment(301)
    for payload in (s.order, s.payment, s.waybill):
        await flow.submit(payload)
        await flow.receipt(payload, "2", 1)
    await flow.submit(s.inventory)
    invt_no, tax_no = "46012026I000000301", "4601202600000000301"
    await flow.receipt(s.inventory, "399", 2, invtNo=invt_no)  # customs taught the invtNo
    change = version_of(s.inventory, "2", 60, invtNo=invt_no, preNo="B20260101000000001", note="changed")
    await flow.submit(change)
    await flow.receipt(s.inventory, "800", 3, invtNo=invt_no)  # released: the first declaration
    head = {"guid": new_guid(), "returnTime": return_time(now - timedelta(minutes=30)), "invtNo": invt_no,
            "taxNo": tax_no, "customsTax": "0", "valueAddedTax": "1.00", "consumptionTax": "0", "status": "1"}
    line = {"gnum": "1", "gcode": "3304990099", "taxPrice": "10", "customsTax": "0", "valueAddedTax": "1.00",
            "consumptionTax": "0"}  # fmt: skip
    assert [r["outcome"] for r in await flow.post(build_tax_bills("CEB816", [(head, [line])]))] == ["applied"]
    await flow.receipt(change, "-621043", 3, invtNo=invt_no)  # refused, its receipt echoing the invtNo
    status = {"guid": new_guid(), "returnTime": return_time(now - timedelta(minutes=10)), "invtNo": invt_no,
              "taxNo": tax_no, "status": "2", "entDutyNo": "D-1"}
    assert [r["outcome"] for r in await flow.post(build_tax_bills("CEB818", [(status, [])]))] == ["applied"]
    found = await flow.store.get_shipment(s.order_doc["ebpCode"], s.order_doc["orderNo"])
    view = taxbills.add_to_shipment(await flow.outbox.shipment_forwarding(found))
    assert [(b["taxNo"], b["status"], b["valueAddedTax"], b["entDutyNo"]) for b in view["tax_bills"]] == [
        (tax_no, "2", "1.00", "D-1")
    ]
    first = next(d for d in view["documents"] if d["kind"] == "inventory" and d["app_type"] == "1")
    assert view["tax_bills"][0]["document_id"] == first["id"]  # estimated on the version customs holds

