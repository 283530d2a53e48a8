"""Forwarding: routing as configuration (pure), the configuration format, and the store's outbox side
(enqueue in the ingest transaction, held inventories, receipts applied) against a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.dxp import cop_msg_id_for
from gateway import config
from gateway.config import ForwardingSettings, RouteSettings, WebhookSettings
from gateway.forward import LegState, Router, shipment_customs_status

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


def test_webhooks_go_to_sellers_holding_a_party_code() -> None:
    hook = WebhookSettings("seller-a", frozenset({"E1"}), "http://127.0.0.1:1/h", "s3cret")
    r = router(webhooks=(hook,))
    (job,) = r.webhook_jobs(ebp_code="P", order_no="O1", parties=["E1", "X"], previous="declared", status="released",
                            info=None)  # fmt: skip
    assert job.endpoint == "webhook" and job.payload["seller"] == "seller-a"
    assert job.payload["data"]["customsStatus"] == "released" and job.dedupe_key.endswith(":O1:released")
    assert r.webhook_jobs(ebp_code="P", order_no="O1", parties=["Y"], previous=None, status="released", info=None) == []
    silent = router()
    assert silent.webhook_jobs(ebp_code="P", order_no="O1", parties=["E1"], previous=None, status="x", info=None) == []


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


# --- configuration ----------------------------------------------------------------------------------------


def test_forwarding_configuration_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "cbec.toml"
    path.write_text(
        """
[forwarding]
sender_id = "DXPENT0000458763"
receipt_timeout_s = 120
watchdog_repush = true
hold_types = ["CEB621"]
on_release = ["wms"]

[forwarding.endpoints.customs]
kind = "customs"
transport = "folder"
outbox = "/data/dxp/outbox"
inbox = "/data/dxp/inbox"
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
    customs, wms = f.endpoints
    assert customs.transport == "folder" and customs.inbox == Path("/data/dxp/inbox") and customs.rate_per_s == 5
    assert customs.retry.base_s == 0.5 and customs.retry.max_attempts == 6 and customs.retry.cap_s == 300
    assert wms.kind == "warehouse" and wms.warehouse_code == "HK01"
    assert f.routes == (RouteSettings(("CEB311", "CEB411", "CEB511", "CEB621"), ("customs",), None),)
    assert f.webhooks[0].codes == frozenset({"4601260E35"})
    r = Router.from_settings(f, {e.name: e.kind for e in f.endpoints})
    assert r.endpoints_for("CEB621", {"1210"}) == ("customs",) and r.on_release == ("wms",)


@pytest.mark.parametrize(
    "text",
    [
        '[forwarding.endpoints.x]\nkind = "telex"\nurl = "http://h"',
        '[forwarding.endpoints.customs]\nkind = "customs"\ntransport = "http"',
        '[forwarding.endpoints.customs]\nkind = "customs"\ntransport = "folder"',
        '[forwarding.endpoints.w]\nkind = "warehouse"',
        '[forwarding.endpoints.c]\nkind = "customs"\nurl = "http://h"\nsurprise = 1',
        '[forwarding]\nsandbox = "maybe"',
        '[forwarding]\nunheard_of = 1',
        '[forwarding.webhooks.s]\nurl = "http://h"',
    ],
)
def test_bad_forwarding_configuration_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError):
        config.load(path, env={})


def test_customs_role_needs_no_codes(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[[api_keys]]\nname = "eport"\nkey = "k-123"\nrole = "customs"\n', encoding="utf-8")
    (key,) = config.load(path, env={}).api_keys
    assert key.role is config.Role.CUSTOMS and key.codes == frozenset()
