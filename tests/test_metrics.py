"""/metrics: Prometheus text that prometheus_client's own parser reads, with figures that follow what happens."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import cbec_queue
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import db, signing
from gateway.api import KEYS, OUTBOX, POOL, create_app
from gateway.metrics import setup_metrics
from tests import apiutil
from tests.apiutil import OPERATOR, PLATFORM_A, sign_as_agent
from tests.consoleutil import (
    Ops,
    legs,
    make_dead_letter,
    make_forwarded,
    new_shipment,
    ops_fixture,  # noqa: F401  (the ops fixture)
    start,
    submit,
    xml_of,
)
from tests.forwardutil import legs as fwd_legs
from tests.forwardutil import running_stack
from tests.forwardutil import shipment as fwd_shipment

pytestmark = pytest.mark.db

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(base: str, headers: dict[str, str] | None = None) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and each family's type."""
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics", headers=headers or {}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_parse_and_name_every_family(ops: Ops) -> None:
    samples, types = await scrape(ops.base)
    assert types["cbec_ingest_messages"] == "counter"
    assert types["cbec_ingest_duration_seconds"] == "histogram"
    assert types["cbec_validation_failures"] == "counter"
    assert types["cbec_shipments"] == "gauge"
    for name in ("cbec_queue_depth", "cbec_queue_oldest_age_seconds", "cbec_queue_dead_letters",
                 "cbec_forward_latency_seconds", "cbec_database_up"):  # fmt: skip
        assert types[name] == "gauge", name
    assert value(samples, "cbec_database_up") == 1
    assert {value(samples, "cbec_shipments", state=s) for s in ("matched", "incomplete", "mismatched")} == {0}


async def test_ingest_counters_move_with_submissions(ops: Ops) -> None:
    before, _ = await scrape(ops.base)
    s = new_shipment(201)
    order = legs(s)["CEB311"]
    assert (await ops.api.post_xml(order)).status == 202
    after, _ = await scrape(ops.base)
    accepted = {"message_type": "CEB311", "outcome": "accepted"}
    assert value(after, "cbec_ingest_messages_total", **accepted) == value(before, "cbec_ingest_messages_total",
                                                                            **accepted) + 1  # fmt: skip
    assert value(after, "cbec_ingest_duration_seconds_count", outcome="accepted") == value(
        before, "cbec_ingest_duration_seconds_count", outcome="accepted") + 1  # fmt: skip
    assert value(after, "cbec_shipments", state="incomplete") == 1

    # the same bytes again: a replay, not a second acceptance
    assert (await ops.api.post_xml(order)).status == 202
    again, _ = await scrape(ops.base)
    assert value(again, "cbec_ingest_messages_total", **accepted) == value(after, "cbec_ingest_messages_total",
                                                                            **accepted)  # fmt: skip
    assert value(again, "cbec_ingest_messages_total", message_type="CEB311", outcome="replayed") == 1

    await submit(ops.api, s, "CEB411", "CEB511", "CEB621")
    done, _ = await scrape(ops.base)
    assert value(done, "cbec_shipments", state="incomplete") == 0
    assert value(done, "cbec_shipments", state="matched") == 1
    assert value(done, "cbec_shipments_customs_status", status="pending") == 1  # no router: nothing forwarded
    assert value(done, "cbec_ingest_messages_total", message_type="CEB621", outcome="accepted") == 1
    assert value(done, "cbec_http_requests_total", route="/v1/messages", method="POST", status="202") == 5


async def test_ingest_transactions_count_their_messages_and_time(ops: Ops) -> None:
    """The store's ingest transactions: each one committed is counted with its messages (messages arriving together
    share one) and its time; a refused message never reaches one."""
    def tally(samples: Samples) -> tuple[float, float, float, float]:
        return (value(samples, "cbec_ingest_transaction_messages_count"),
                value(samples, "cbec_ingest_transaction_messages_sum"),
                value(samples, "cbec_ingest_transaction_seconds_count"),
                value(samples, "cbec_ingest_transaction_seconds_sum"))  # fmt: skip

    before, types = await scrape(ops.base)
    assert types["cbec_ingest_transaction_messages"] == types["cbec_ingest_transaction_seconds"] == "histogram"
    assert (await ops.api.post_xml(legs(new_shipment(205))["CEB311"])).status == 202
    one, _ = await scrape(ops.base)
    assert [a - b for a, b in zip(tally(one)[:3], tally(before)[:3], strict=True)] == [1, 1, 1]
    assert tally(one)[3] > tally(before)[3]
    assert value(one, "cbec_ingest_transaction_messages_bucket", le="1.0") == tally(one)[0]  # each of one message

    orders = [legs(new_shipment(seed))["CEB311"] for seed in range(206, 218)]
    answers = await asyncio.gather(*(ops.api.post_xml(o) for o in orders))
    assert [a.status for a in answers] == [202] * len(orders)
    broken = legs(new_shipment(218))["CEB311"][:-40]  # cut short: refused before any transaction
    assert (await ops.api.post_xml(broken)).status == 400
    burst, _ = await scrape(ops.base)
    transactions, messages, timed, _ = (a - b for a, b in zip(tally(burst), tally(one), strict=True))
    assert messages == len(orders) and 1 <= transactions <= len(orders) and timed == transactions


async def test_the_alerting_rules_name_only_metrics_the_gateway_serves(ops: Ops) -> None:
    """ops/prometheus/cbec-alerts.yml: every rule has its expression, severity and summary, no two share a name, and
    every metric an expression names is a family /metrics serves (a renamed metric would leave a rule silent)."""
    text = (Path(__file__).parent.parent / "ops" / "prometheus" / "cbec-alerts.yml").read_text(encoding="utf-8")
    alerts = re.findall(r"^      - alert: (\w+)$", text, re.M)
    assert len(alerts) >= 10 and len(set(alerts)) == len(alerts), alerts
    for field in ("expr:", "labels: {severity: ", "summary: "):
        assert text.count(field) == len(alerts), field
    named = set(re.findall(r"\bcbec_[a-z_]+", text))
    _, types = await scrape(ops.base)
    # served once a signing key is configured, and on a UKey (their own tests: test_api, test_ukey), and for a
    # folder-transport inbox (test_inbox_files_are_figures)
    signed = {"cbec_signing_certificate_expiry_seconds", "cbec_signing_ukey_up", "cbec_inbox_refused_files"}
    missing = {n for n in named - signed if re.sub(r"_(total|bucket|count|sum)$", "", n) not in types}
    assert not missing, missing
    assert signed <= named


async def test_rejections_count_by_error_code(ops: Ops) -> None:
    before, _ = await scrape(ops.base)
    s = new_shipment(202)
    bad = xml_of(s.order).replace(b"<ceb:currency>142</ceb:currency>", b"<ceb:currency>14</ceb:currency>", 1)
    assert bad != xml_of(s.order)
    reply = await ops.api.post_xml(bad)
    assert reply.status == 422, reply.body
    codes = {i["code"] for i in reply.body["error"]["issues"]}
    after, _ = await scrape(ops.base)
    for code in codes:
        assert value(after, "cbec_validation_failures_total", code=code) == value(
            before, "cbec_validation_failures_total", code=code) + 1, code  # fmt: skip
    assert value(after, "cbec_ingest_messages_total", message_type="CEB311", outcome="rejected") == 1
    assert value(after, "cbec_ingest_duration_seconds_count", outcome="rejected") == 1

    not_xml = await ops.api.post_xml(b"<ceb:CEB311Message")
    assert not_xml.status == 400
    third, _ = await scrape(ops.base)
    parse_codes = {i["code"] for i in not_xml.body["error"]["issues"]}
    assert all(value(third, "cbec_validation_failures_total", code=c) >= 1 for c in parse_codes)
    assert value(third, "cbec_ingest_messages_total", message_type="CEB311", outcome="rejected") == 2

    # a new message that reuses an accepted guid: a conflict with its state code
    assert (await ops.api.post_xml(xml_of(s.order))).status == 202
    clash = copy.deepcopy(s.order)
    clash["documents"][0]["guid"] = str(uuid.uuid4()).upper()
    conflict = await ops.api.post_xml(xml_of(clash))
    assert conflict.status == 409
    fourth, _ = await scrape(ops.base)
    assert value(fourth, "cbec_validation_failures_total", code="state.guid_conflict") == 1
    assert value(fourth, "cbec_ingest_messages_total", message_type="CEB311", outcome="conflict") == 1

    assert (await ops.api.post_xml(xml_of(s.order), key=None)).status == 401
    assert (await ops.api.get("/no/such/path")).status == 404
    fifth, _ = await scrape(ops.base)
    assert value(fifth, "cbec_ingest_messages_total", message_type="unknown", outcome="unauthorized") == 1
    assert value(fifth, "cbec_http_requests_total", route="unmatched", method="GET", status="404") == 1


async def test_queue_and_forwarding_gauges(ops: Ops) -> None:
    await make_dead_letter(ops.pool, endpoint="customs")
    await make_forwarded(ops.pool, endpoint="customs")
    await make_forwarded(ops.pool, endpoint="customs")
    async with ops.pool.acquire() as conn:
        for _ in range(2):
            await cbec_queue.enqueue(conn, endpoint="warehouse", kind="x", payload={})
    samples, _ = await scrape(ops.base)
    assert value(samples, "cbec_queue_dead_letters", endpoint="customs") == 1
    assert value(samples, "cbec_queue_depth", endpoint="warehouse") == 2
    assert value(samples, "cbec_queue_depth", endpoint="customs") == 0
    assert value(samples, "cbec_queue_oldest_age_seconds", endpoint="warehouse") >= 0
    assert value(samples, "cbec_forwarded_recent", endpoint="customs") == 2
    p50 = value(samples, "cbec_forward_latency_seconds", endpoint="customs", quantile="0.5")
    p99 = value(samples, "cbec_forward_latency_seconds", endpoint="customs", quantile="0.99")
    assert 0 <= p50 <= p99 < 60
    assert value(samples, "cbec_forward_attempt_seconds", endpoint="customs", quantile="0.5") == pytest.approx(0.04)


async def test_customs_status_and_receipt_gauges_follow_the_forwarding(db_dsn: str) -> None:
    async with running_stack(db_dsn) as stack:
        s = fwd_shipment(211)
        for payload in fwd_legs(s):
            await stack.submit(payload)
        await stack.wait_status(s, "released")
        await stack.sandbox.wait_idle()
        samples, _ = await scrape(stack.base)
        latencies = await stack.fetch(
            "SELECT EXTRACT(EPOCH FROM r.received_at - m.received_at)::float8 AS s"
            " FROM receipts AS r JOIN messages AS m ON m.id = r.message_id"
        )
    assert value(samples, "cbec_shipments_customs_status", status="released") == 1
    # 2 + 2 + 2 + 4 receipts, the inventory's tax bill and its status change (docs/sandbox.md)
    assert value(samples, "cbec_receipts_recent") == len(latencies) == 12
    p50 = value(samples, "cbec_receipt_latency_seconds", quantile="0.5")
    p99 = value(samples, "cbec_receipt_latency_seconds", quantile="0.99")
    assert min(r["s"] for r in latencies) <= p50 <= p99 <= max(r["s"] for r in latencies)


async def test_protected_metrics_need_an_operator_key(db_pool: Any) -> None:
    app = create_app(apiutil.test_settings(), db_pool, signer=sign_as_agent)
    metrics = setup_metrics(app, pool_key=POOL, keys_key=KEYS)
    metrics.keys_key = KEYS  # also when create_app set metrics up itself (open)
    runner, base = await start(app)
    try:
        async with aiohttp.ClientSession() as s:
            for headers, status in (({}, 401), ({"X-API-Key": PLATFORM_A}, 401),
                                    ({"Authorization": f"Bearer {OPERATOR}"}, 200)):  # fmt: skip
                async with s.get(base + "/metrics", headers=headers) as resp:
                    assert resp.status == status, headers
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)



async def test_the_signing_certificates_expiry_is_a_figure(db_pool: Any) -> None:
    """The seconds until the certificate the gateway signs JSON declarations with expires: an alert can fire a month
    ahead instead of customs refusing every signed inventory the day after. No signer of the gateway's: no figure."""
    signer = signing.throwaway_signer("cbec metrics test")
    app = create_app(apiutil.test_settings(), db_pool, signer=signer)
    runner, base = await start(app)
    try:
        samples, types = await scrape(base)
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)
    assert types["cbec_signing_certificate_expiry_seconds"] == "gauge"
    left = value(samples, "cbec_signing_certificate_expiry_seconds")
    expected = (signer.valid_until - datetime.now(UTC)).total_seconds()
    assert left > 3640 * 86400 and abs(left - expected) < 60  # the test key's ten years, less the day before
    app = create_app(apiutil.test_settings(), db_pool, signer=sign_as_agent)  # a plain function: nothing to say
    runner, base = await start(app)
    try:
        samples, types = await scrape(base)
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)
    assert "cbec_signing_certificate_expiry_seconds" not in types

async def test_inbox_files_are_figures(db_pool: Any, tmp_path: Path) -> None:
    """A customs endpoint over the folder transport: the receipt files its inbox holds unread, and those it refused
    into error/ that no one has cleared, per endpoint (a refused receipt was a log line only)."""
    from gateway.config import EndpointSettings, ForwardingSettings

    inbox = tmp_path / "in"
    (inbox / "error").mkdir(parents=True)
    for name in ("a.xml", "b.xml", "c.xml.part", ".d.xml"):  # two waiting, two transfers in progress
        (inbox / name).write_bytes(b"<CEB312Message/>")
    for name in ("torn.xml", "torn.xml.error.txt"):
        (inbox / "error" / name).write_text("x")
    endpoint = EndpointSettings("cus", "customs", transport="folder", outbox=tmp_path / "out", inbox=inbox)
    settings = dataclasses.replace(apiutil.test_settings(), forwarding=ForwardingSettings(endpoints=(endpoint,)))
    runner, base = await start(create_app(settings, db_pool, signer=sign_as_agent))
    try:
        samples, types = await scrape(base)
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)
    assert types["cbec_inbox_waiting_files"] == types["cbec_inbox_refused_files"] == "gauge"
    assert value(samples, "cbec_inbox_waiting_files", endpoint="cus") == 2
    assert value(samples, "cbec_inbox_refused_files", endpoint="cus") == 1


async def test_database_down_is_a_figure_not_an_error(db_dsn: str) -> None:
    pool = await db.create_pool(db_dsn, min_size=1, max_size=2)
    app = create_app(apiutil.test_settings(), pool, signer=sign_as_agent)
    setup_metrics(app, pool_key=POOL)
    runner, base = await start(app)
    try:
        await pool.close()
        samples, _ = await scrape(base)
        assert value(samples, "cbec_database_up") == 0
        assert ("cbec_shipments", frozenset({("state", "matched")})) not in samples
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)


async def test_setup_is_idempotent_and_the_middleware_is_outermost(db_pool: Any) -> None:
    from gateway.metrics import metrics_middleware

    app = create_app(apiutil.test_settings(), db_pool)
    first = setup_metrics(app, pool_key=POOL)
    assert setup_metrics(app, pool_key=POOL) is first
    assert list(app.middlewares).count(metrics_middleware) == 1 and app.middlewares[0] is metrics_middleware


async def test_receipts_awaited_gauges_count_the_sent_legs_without_a_receipt(db_dsn: str) -> None:
    """A customs that loses its receipts (the sandbox's LOSTRCPT- scenario): the legs wait, and the gauges say how
    many and since when, until a re-send brings the receipts."""
    async with running_stack(db_dsn, forwarding={"receipt_timeout_s": 3600, "watchdog_repush": False}) as stack:
        lost = fwd_shipment(212, prefix="LOSTRCPT-")
        for payload in fwd_legs(lost):
            await stack.submit(payload)
        await stack.wait_sql("SELECT count(*) = 3 FROM receipts_awaited")  # the order, payment and waybill
        await asyncio.sleep(0.2)
        waiting, types = await scrape(stack.base)
        assert types["cbec_receipts_awaited"] == types["cbec_receipt_oldest_wait_seconds"] == "gauge"
        assert value(waiting, "cbec_receipts_awaited") == 3
        oldest = await stack.fetchval("SELECT EXTRACT(EPOCH FROM now() - min(sent_at))::float8 FROM receipts_awaited")
        assert 0.2 <= value(waiting, "cbec_receipt_oldest_wait_seconds") <= oldest
        queue = (await stack.client.get("/v1/queue", key=OPERATOR)).body["receipts_awaited"]
        assert queue["count"] == 3 and queue["oldest_wait_s"] >= 0.2 and queue["oldest_sent_at"]
        stack.sandbox.config.scenarios_off = ["LOSTRCPT"]
        assert len((await stack.app[OUTBOX].watchdog(timeout_s=0, repush=True, max_repushes=3))["resent"]) == 3
        await stack.wait_status(lost, "released")
        released, _ = await scrape(stack.base)
    assert value(released, "cbec_receipts_awaited") == 0
    assert value(released, "cbec_receipt_oldest_wait_seconds") == 0
