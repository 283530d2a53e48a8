"""The operators' console (/ops) over a real server on 127.0.0.1 with a real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import copy
import csv
import hashlib
import io
import json
import re
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import cbec_queue
import pytest

from gateway import csvexport, samples
from gateway.auth import KeyRing, Principal
from gateway.config import ApiKey, Role
from gateway.console import CONSOLE
from gateway.console import app as console_app
from gateway.console.queries import CSV_COLUMNS, mask_findings, mask_id_number
from gateway.console.session import SessionStore
from gateway.csvexport import cell as csv_cell
from tests.apiutil import ADMIN, OPERATOR, PLATFORM_A, STRANGER
from tests.consoleutil import (
    ConsoleClient,
    FeedWatch,
    Ops,
    build_app,
    key_of,
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


# --- sessions --------------------------------------------------------------------------------------


async def test_without_a_session_pages_redirect_and_api_answers_401(ops: Ops) -> None:
    client = await ops.console()
    status, body = await client.get("/ops")
    assert status == 302
    status, body = await client.get("/ops/api/summary")
    assert status == 401 and body["error"]["status"] == 401
    for path in ("/ops/api/shipments", "/ops/api/queue", "/ops/api/events", "/ops/api/series", "/ops/api/rejections"):
        assert (await client.get(path))[0] == 401, path
    status, page = await client.get("/ops/login")
    assert status == 200 and 'name="key"' in page


async def test_submitter_and_unknown_keys_are_refused(ops: Ops) -> None:
    client = await ops.console()
    resp = await client.sign_in(PLATFORM_A)
    assert resp.status == 403
    assert "Set-Cookie" not in resp.headers
    resp = await client.sign_in("not-a-key-at-all")
    assert resp.status == 401
    assert (await client.get("/ops/api/session"))[0] == 401


async def test_sign_in_from_another_site_is_refused(ops: Ops) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        for origin in ("https://evil.example", "null"):
            async with s.post(ops.base + "/ops/login", data={"key": ADMIN}, headers={"Origin": origin},
                              allow_redirects=False) as resp:  # fmt: skip
                assert resp.status == 403, origin
                assert "Set-Cookie" not in resp.headers
        # a client that sends no Origin at all (curl, scripts) may sign in
        async with s.post(ops.base + "/ops/login", data={"key": ADMIN}, allow_redirects=False) as resp:
            assert resp.status == 303


@pytest.mark.parametrize("public_url", [None, "https://ops.zone.example"])
async def test_behind_a_tls_proxy_the_public_url_may_sign_in_with_a_secure_cookie(
    db_pool: asyncpg.Pool, public_url: str | None
) -> None:
    """A TLS-terminating proxy speaks plain HTTP to the gateway, while the browser sends the public Origin
    (https://ops.zone.example): without public_url the console refused every sign-in and replay as cross-site, and
    its cookie would not be Secure. With it, that origin signs in and acts (its cookie Secure); any other is refused
    as before."""
    job_id = await make_dead_letter(db_pool)
    runner, base = await start(build_app(db_pool, public_url=public_url))
    proxied = "https://ops.zone.example"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(base + "/ops/login", data={"key": ADMIN}, headers={"Origin": proxied},
                              allow_redirects=False) as resp:  # fmt: skip
                if public_url is None:
                    assert resp.status == 403 and "Set-Cookie" not in resp.headers
                    return
                assert resp.status == 303, await resp.text()
                cookie = resp.cookies[next(iter(resp.cookies))]
                assert cookie["secure"] and cookie["httponly"], cookie.OutputString()
            # the browser sends a Secure cookie over https only: here, as the proxy passes it on
            headers = {"Cookie": f"{cookie.key}={cookie.value}"}
            async with s.get(base + "/ops/api/session", headers=headers) as resp:
                assert resp.status == 200
                csrf = (await resp.json())["csrf"]
            url = f"{base}/ops/api/jobs/{job_id}/replay"
            for origin, status in (("https://evil.example", 403), ("http://ops.zone.example", 403), (proxied, 200)):
                async with s.post(url, headers={**headers, "X-CSRF-Token": csrf, "Origin": origin}) as resp:
                    assert resp.status == status, (origin, await resp.text())
            async with s.post(base + "/ops/login", data={"key": ADMIN}, headers={"Origin": "https://evil.example"},
                              allow_redirects=False) as resp:  # fmt: skip
                assert resp.status == 403
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)


async def test_the_refused_messages_are_listed_with_their_issues_and_the_feed_names_the_newest(ops: Ops) -> None:
    """The refused panel's page: the newest refusals of every key with the issues their senders were answered, 20 to
    a page; the live feed's summary names the newest refusal, so that the panel reloads when another comes."""
    admin = await ops.console(ADMIN)
    assert (await admin.get_json("/ops/api/rejections")) == {"items": [], "next_cursor": None}
    for n in range(21):
        assert (await ops.api.post_xml(b"<CEB311Message><broken-" + str(n).encode(), key=PLATFORM_A)).status == 400
    page = await admin.get_json("/ops/api/rejections")
    assert len(page["items"]) == 20 and page["next_cursor"]
    newest = page["items"][0]
    assert (newest["submitter"], newest["http_status"], newest["issues"][0]["code"]) == ("platform-a", 400,
                                                                                       "parse.not_well_formed")
    assert "raw" not in newest
    rest = await admin.get_json("/ops/api/rejections", cursor=page["next_cursor"])
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert (await admin.get("/ops/api/rejections", cursor="nope"))[0] == 400
    # one sender's, or one issue code's, when asked
    assert (await ops.api.post_xml(b"{not xml", key=STRANGER)).status == 400
    theirs = await admin.get_json("/ops/api/rejections", submitter="stranger")
    assert [(r["submitter"], r["http_status"]) for r in theirs["items"]] == [("stranger", 400)]
    assert len((await admin.get_json("/ops/api/rejections", submitter="platform-a"))["items"]) == 20
    assert (await admin.get_json("/ops/api/rejections", code="rule.actural_paid_mismatch"))["items"] == []
    sent = await admin.get_json(f"/ops/api/rejections/{newest['id']}")
    assert sent["raw"] == "<CEB311Message><broken-20" and sent["raw_truncated"] is False
    for missing in ("999999999", "0", "x", str(2**63)):
        assert (await admin.get(f"/ops/api/rejections/{missing}"))[0] == 404, missing
    feed = ops.app[CONSOLE].feed
    await feed.tick()
    assert feed.latest["summary"]["last_rejection"] == theirs["items"][0]["id"]  # the newest of all


async def test_replay_accepts_a_same_origin_referer_without_origin(ops: Ops) -> None:
    job_id = await make_dead_letter(ops.pool)
    admin = await ops.console(ADMIN)
    url = f"{ops.base}/ops/api/jobs/{job_id}/replay"
    headers = {"X-CSRF-Token": admin.csrf, "Referer": "https://evil.example/ops"}
    async with admin.session.post(url, headers=headers) as resp:
        assert resp.status == 403
    headers["Referer"] = ops.base + "/ops"
    async with admin.session.post(url, headers=headers) as resp:
        assert resp.status == 200
    # an id beyond any bigint is the client's error, not the server's
    async with admin.session.post(f"{ops.base}/ops/api/jobs/{2**63}/replay", headers=headers) as resp:
        assert resp.status == 400


async def test_operator_signs_in_with_a_strict_http_only_cookie(ops: Ops) -> None:
    client = await ops.console()
    resp = await client.sign_in(OPERATOR)
    assert resp.status == 303 and resp.headers["Location"] == "/ops"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ops" in cookie
    assert OPERATOR not in cookie
    info = await client.get_json("/ops/api/session")
    assert info["name"] == "operator" and info["role"] == "operator" and info["may_replay"] is True
    assert len(info["csrf"]) >= 32
    status, page = await client.get("/ops")
    assert status == 200 and "console.js" in page


async def test_console_responses_carry_security_headers(ops: Ops) -> None:
    async with aiohttp.ClientSession() as s, s.get(ops.base + "/ops/login") as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Type"].startswith("text/html") and "utf-8" in resp.headers["Content-Type"]
    async with aiohttp.ClientSession() as s, s.get(ops.base + "/ops/static/console.js") as resp:
        assert resp.status == 200 and "EventSource" in await resp.text()
        assert "Content-Security-Policy" in resp.headers
        assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"


async def test_sign_out_needs_the_token_and_ends_the_session(ops: Ops) -> None:
    client = await ops.console(OPERATOR)
    assert (await client.post("/ops/logout"))[0] == 403  # no token
    status, _ = await client.post("/ops/logout", csrf=client.csrf)
    assert status == 200
    assert (await client.get("/ops/api/session"))[0] == 401


async def test_session_store_expiry_capacity_and_key_changes(db_pool: asyncpg.Pool) -> None:
    now = [1000.0]
    store = SessionStore(idle_s=10, max_age_s=30, max_sessions=2, touch_s=0, clock=lambda: now[0])
    admin_key = ApiKey("a", "admin-key", Role.ADMIN)
    keys = KeyRing([admin_key])
    admin = keys.authenticate("admin-key")
    assert admin is not None
    digest = KeyRing.digest("admin-key")
    sid, _ = await store.create(db_pool, admin, digest)
    now[0] += 9
    assert await store.get(db_pool, keys, sid) is not None  # touched: idle time starts again
    now[0] += 9
    assert await store.get(db_pool, keys, sid) is not None
    now[0] += 13
    assert await store.get(db_pool, keys, sid) is None  # 31 s after sign-in: over max_age even though it was in use
    made = []
    for _ in range(3):
        now[0] += 1
        made.append((await store.create(db_pool, admin, digest))[0])
    a, b, c = made
    assert await store.get(db_pool, keys, a) is None  # the oldest went to make room
    assert await store.get(db_pool, keys, b) is not None and await store.get(db_pool, keys, c) is not None
    assert await store.count(db_pool) == 2
    async with db_pool.acquire() as conn:  # the table holds digests only, never the cookie or the key
        rows = await conn.fetch("SELECT id_sha256, key_sha256 FROM console_sessions")
    assert {bytes(r["id_sha256"]) for r in rows} == {hashlib.sha256(x.encode()).digest() for x in (b, c)}
    assert {bytes(r["key_sha256"]) for r in rows} == {digest}
    # Another process (same table, its own store object) knows the session.
    assert await SessionStore(clock=lambda: now[0]).get(db_pool, keys, c) is not None
    # The key's role changed in the configuration: the session follows at once; removed: the session ends.
    demoted = KeyRing([ApiKey("a", "admin-key", Role.SUBMITTER, frozenset({"X"}))])
    assert await store.get(db_pool, demoted, b) is None
    assert await store.get(db_pool, KeyRing([]), c) is None
    assert await store.count(db_pool) == 0
    assert await store.drop(db_pool, c) is False
    with pytest.raises(ValueError):
        await store.create(db_pool, Principal("s", Role.SUBMITTER, frozenset({"X"})), digest)


async def test_sessions_touch_last_seen_at_most_every_touch_s(db_pool: asyncpg.Pool) -> None:
    now = [1000.0]
    store = SessionStore(idle_s=100, touch_s=60, clock=lambda: now[0])
    keys = KeyRing([ApiKey("o", "op-key", Role.OPERATOR)])
    principal = keys.authenticate("op-key")
    assert principal is not None
    sid, _ = await store.create(db_pool, principal, KeyRing.digest("op-key"))
    seen = []
    for step in (30, 31):
        now[0] += step
        session = await store.get(db_pool, keys, sid)
        assert session is not None
        seen.append(session.last_seen)
    assert seen == [1000.0, 1061.0]  # not written 30 s after the last write, written 61 s after
    now[0] += 101
    assert await store.get(db_pool, keys, sid) is None  # idle past idle_s since the last write


# --- CSRF on replay ----------------------------------------------------------------------------------


async def test_replay_needs_session_token_and_own_origin(ops: Ops) -> None:
    job_id = await make_dead_letter(ops.pool)
    path = f"/ops/api/jobs/{job_id}/replay"
    anonymous = await ops.console()
    assert (await anonymous.post(path, csrf="anything"))[0] == 401
    admin = await ops.console(ADMIN)
    assert (await admin.post(path))[0] == 403  # no token
    assert (await admin.post(path, csrf="wrong" + admin.csrf))[0] == 403
    assert (await admin.post(path, csrf=admin.csrf, origin="https://evil.example"))[0] == 403
    assert (await admin.post(path, csrf=admin.csrf, origin=None))[0] == 403  # neither Origin nor Referer
    async with ops.pool.acquire() as conn:
        assert (await cbec_queue.get_job(conn, job_id))["state"] == "dead"  # nothing above changed it
    operator = await ops.console(OPERATOR)
    status, body = await operator.post(path, csrf=operator.csrf)
    assert status == 200 and body["replayed"] == 1 and body["job"]["state"] == "queued"
    assert body["job"]["history"][-1]["outcome"] == "replayed"
    assert "operator" in body["job"]["history"][-1]["error"]  # the note names who replayed it
    assert (await admin.post(path, csrf=admin.csrf))[0] == 409  # not dead any more
    assert (await admin.post("/ops/api/jobs/abc/replay", csrf=admin.csrf))[0] == 400
    assert (await admin.post("/ops/api/jobs/987654321/replay", csrf=admin.csrf))[0] == 404  # no such job


async def test_an_unmatched_receipt_is_closed_from_the_console_with_the_pages_token(ops: Ops) -> None:
    """The unmatched receipts' panel reads GET /v1/receipts/unmatched's pages (open, closed); its Close takes the
    session, the page's CSRF token and the console's own Origin, as Replay does, and a reason; the feed's marker says
    the open ones changed, so every open console reloads the panel."""
    from gateway.sandbox.receipts import build_receipt

    xml = build_receipt("CEB412", {"guid": "D" * 36, "payCode": "X", "payTransactionId": "filed-elsewhere",
                                   "returnStatus": "2", "returnTime": "20260101120000002", "returnInfo": "?"})
    reply = await ops.api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
    assert [r["outcome"] for r in reply.body["receipts"]] == ["unmatched"], reply.body
    watch = FeedWatch(ops.pool)
    await watch.changed()
    assert watch.last["open_unmatched_receipts"] == 1
    admin = await ops.console(ADMIN)
    [item] = (await admin.get_json("/ops/api/receipts/unmatched"))["items"]
    assert (item["message_type"], item["keys"]["payTransactionId"], item["closed_at"]) == ("CEB412",
                                                                                          "filed-elsewhere", None)
    path = f"/ops/api/receipts/unmatched/{item['id']}/close"
    reason = {"reason": "the result of an application another broker filed"}
    anonymous = await ops.console()
    assert (await anonymous.post(path, csrf="anything", json=reason))[0] == 401
    assert (await admin.post(path, json=reason))[0] == 403  # no token
    assert (await admin.post(path, csrf="wrong" + admin.csrf, json=reason))[0] == 403
    assert (await admin.post(path, csrf=admin.csrf, origin="https://evil.example", json=reason))[0] == 403
    assert (await admin.post(path, csrf=admin.csrf, origin=None, json=reason))[0] == 403
    assert (await admin.post(path, csrf=admin.csrf))[0] == 400  # no reason
    assert (await admin.post(path, csrf=admin.csrf, json={"reason": " "}))[0] == 400
    assert (await admin.get_json("/ops/api/receipts/unmatched", view="closed"))["items"] == []  # none closed it

    operator = await ops.console(OPERATOR)
    status, body = await operator.post(path, csrf=operator.csrf, json=reason)
    assert status == 200, body
    assert (body["closed_by"], body["close_reason"]) == ("operator", reason["reason"]) and body["closed_at"]
    assert (await admin.get_json("/ops/api/receipts/unmatched"))["items"] == []
    [closed] = (await admin.get_json("/ops/api/receipts/unmatched", view="closed"))["items"]
    assert closed["id"] == item["id"] and closed["closed_by"] == "operator"
    status, body = await admin.post(path, csrf=admin.csrf, json=reason)
    assert status == 409 and "by operator" in body["error"]["title"], body
    assert (await admin.post("/ops/api/receipts/unmatched/abc/close", csrf=admin.csrf, json=reason))[0] == 404
    assert (await admin.get("/ops/api/receipts/unmatched", view="any"))[0] == 400  # the panel's views only
    await watch.changed()
    assert watch.last["open_unmatched_receipts"] == 0


async def test_a_179_question_is_closed_from_the_console(ops: Ops) -> None:
    """The 179 panel's Close: the question leaves the open view for the closed one, its closer named; the feed's
    count of open questions moves."""
    from gateway import realtime
    from gateway.store import take_payment_question

    question, _ = await take_payment_question(ops.pool, samples.EBP_CODE, realtime.OpenRequest(
        "ZG-NEVER-PAID-1", "session-never", 1763600000000), endpoint="realtime")  # fmt: skip
    watch = FeedWatch(ops.pool)
    await watch.changed()
    assert watch.last["open_questions"] == 1
    operator = await ops.console(OPERATOR)
    path = f"/ops/api/payment-questions/{question}/close"
    assert (await operator.post(path, json={"reason": "r"}))[0] == 403  # no token
    status, body = await operator.post(path, csrf=operator.csrf, json={"reason": "an order of a test shop"})
    assert status == 200 and body["closed_by"] == "operator", body
    assert (await operator.get_json("/ops/api/payment-questions"))["items"] == []
    [closed] = (await operator.get_json("/ops/api/payment-questions", view="closed"))["items"]
    assert (closed["id"], closed["close_reason"]) == (question, "an order of a test shop")
    assert (await operator.post("/ops/api/payment-questions/987654321/close", csrf=operator.csrf,
                                json={"reason": "r"}))[0] == 404  # fmt: skip
    await watch.changed()
    assert watch.last["open_questions"] == 0


# --- figures ----------------------------------------------------------------------------------------


async def _three_states(ops: Ops) -> dict[str, samples.ShipmentSample]:
    matched1, matched2 = new_shipment(101), new_shipment(102, "1210")
    mismatched = samples.broken(new_shipment(103), "amount_mismatch")
    incomplete = new_shipment(104)
    for s in (matched1, matched2, mismatched):
        await submit(ops.api, s)
    await submit(ops.api, incomplete, "CEB311")
    return {"matched1": matched1, "matched2": matched2, "mismatched": mismatched, "incomplete": incomplete}


async def test_summary_counts_shipments_by_state(ops: Ops) -> None:
    client = await ops.console(OPERATOR)
    empty = await client.get_json("/ops/api/summary")
    assert empty["shipments"]["by_state"] == {"mismatched": 0, "incomplete": 0, "matched": 0}
    await _three_states(ops)
    body = await client.get_json("/ops/api/summary")
    assert body["shipments"]["by_state"] == {"mismatched": 1, "incomplete": 1, "matched": 2}
    assert body["shipments"]["total"] == 4
    assert body["shipments"]["by_customs_status"] == {"pending": 4}  # nothing forwarded without a router


def test_id_numbers_are_never_whole_in_a_list() -> None:
    assert mask_id_number("370202199902280792") == "370202********0792"
    for short in ("E12345678", "H123456(7)", "1234567890", "AB"):
        masked = mask_id_number(short)
        assert masked != short and masked is not None and len(masked) == len(short) and "*" in masked
    finding = {"code": "recon.buyer_payer_mismatch", "field": "buyerIdNumber",
               "message": "order buyerIdNumber is '370202199902280792' but payment payerIdNumber is "
                          "'440106196809279249'",
               "left": {"doc": "CEB311", "value": "370202199902280792", "path": "/x/buyerIdNumber"},
               "right": {"doc": "CEB411", "value": "440106196809279249", "path": "/y/payerIdNumber"}}  # fmt: skip
    [masked] = mask_findings([finding])
    assert "370202199902280792" not in str(masked) and "440106196809279249" not in str(masked)
    assert masked["left"]["value"] == "370202********0792" and "440106********9249" in masked["message"]
    assert finding["left"]["value"] == "370202199902280792"  # the shipment page's copy is untouched


async def test_a_waybill_two_platforms_order_numbers_share_is_listed_on_the_shipment_its_inventory_decides(
    db_pool: asyncpg.Pool,
) -> None:
    """orderNo is unique within a platform only and a waybill names no ebpCode (spec §6.2): the logisticsNo filter and
    the shipment page listed it on both platforms' shipments. Until an inventory names it, it is the orderNo's
    waybill-only shipment's; then that inventory's shipment's only."""
    from gateway.console.queries import ListQuery, list_shipments, shipment_detail
    from gateway.store import Store
    from tests.test_store import EBP, ingest, inventory_head, message, order_head, waybill_head

    other = "46012609ZZ"
    store = Store(db_pool)
    await ingest(store, message("CEB311", order_head("PQ1")))
    await ingest(store, message("CEB311", order_head("PQ1", ebpCode=other, guid="ORD-2")))
    await ingest(store, message("CEB511", waybill_head("PQ1")))

    async def found() -> list[str]:
        async with db_pool.acquire() as conn:
            page = await list_shipments(conn, ListQuery(state=None, logistics_no="LN-PQ1"))
        return sorted(i["ebpCode"] for i in page["items"])

    async def waybills(ebp: str) -> list[str]:
        async with db_pool.acquire() as conn:
            detail = await shipment_detail(conn, ebp, "PQ1")
        assert detail is not None
        return [d["head"]["logisticsNo"] for d in detail["documents"] if d["kind"] == "waybill"]

    assert await found() == [""]
    assert await waybills(EBP) == [] and await waybills(other) == [] and await waybills("") == ["LN-PQ1"]
    await ingest(store, message("CEB621", inventory_head("PQ1")))
    assert await found() == [EBP]
    assert await waybills(EBP) == ["LN-PQ1"] and await waybills(other) == []
    await store.aclose()


async def test_the_console_lists_export_shipments_with_their_flow(db_pool: asyncpg.Pool) -> None:
    """An export shipment (spec §4.4) is listed and shown like an import one, its flow named, and the list filters
    by flow."""
    from gateway.console.app import list_query
    from gateway.console.queries import ListQuery, list_shipments, shipment_detail
    from gateway.store import Store
    from tests import exportutil as ex
    from tests.test_store import full_shipment, ingest

    store = Store(db_pool)
    for m in ex.legs("EXC1"):
        await ingest(store, m)
    await full_shipment(store, "IMC1")
    async with db_pool.acquire() as conn:
        both = await list_shipments(conn, ListQuery(state=None))
        exports = await list_shipments(conn, list_query({"state": "any", "flow": "export"}))
        detail = await shipment_detail(conn, ex.EBP, "EXC1")
    assert sorted((i["orderNo"], i["flow"]) for i in both["items"]) == [("EXC1", "export"), ("IMC1", "import")]
    assert [(i["orderNo"], i["state"]) for i in exports["items"]] == [("EXC1", "matched")]
    assert detail is not None and detail["flow"] == "export"
    assert sorted(d["message_type"] for d in detail["documents"]) == ["CEB303", "CEB403", "CEB505", "CEB603"]
    with pytest.raises(ValueError):
        list_query({"flow": "transit"})
    await store.aclose()


async def test_mismatch_list_shows_field_both_values_and_documents(ops: Ops) -> None:
    made = await _three_states(ops)
    s = made["mismatched"]
    client = await ops.console(OPERATOR)
    body = await client.get_json("/ops/api/shipments")
    assert [i["orderNo"] for i in body["items"]] == [s.order_doc["orderNo"]]
    item = body["items"][0]
    assert item["state"] == "mismatched" and item["buyerName"] == s.order_doc["buyerName"]
    assert item["buyerIdNumber"] == mask_id_number(s.order_doc["buyerIdNumber"]) != s.order_doc["buyerIdNumber"]
    finding = next(f for f in item["findings"] if f["code"] == "recon.amount_paid_mismatch")
    assert finding["field"] == "acturalPaid"
    assert finding["left"]["doc"] == "CEB311" and finding["right"]["doc"] == "CEB411"
    assert Decimal(finding["left"]["value"]) == Decimal(s.order_doc["acturalPaid"])
    assert Decimal(finding["right"]["value"]) == Decimal(s.payment_doc["amountPaid"])
    assert finding["left"]["value"] != finding["right"]["value"]


async def test_list_filters(ops: Ops) -> None:
    made = await _three_states(ops)
    s = made["mismatched"]
    client = await ops.console(OPERATOR)

    async def orders(**params: str) -> list[str]:
        body = await client.get_json("/ops/api/shipments", **params)
        return sorted(i["orderNo"] for i in body["items"])

    mine = [s.order_doc["orderNo"]]
    assert await orders(orderNo=s.order_doc["orderNo"]) == mine
    assert await orders(orderNo=made["matched1"].order_doc["orderNo"]) == []  # matched, not in the mismatch list
    assert await orders(logisticsNo=s.waybill_doc["logisticsNo"]) == mine
    assert await orders(logisticsNo="NO-SUCH-WAYBILL") == []
    assert await orders(buyerIdNumber=s.order_doc["buyerIdNumber"]) == mine
    assert await orders(buyerIdNumber="110101199003074514") == []
    assert await orders(enterprise=s.order_doc["ebpCode"]) == mine
    assert await orders(enterprise=s.payment_doc["payCode"]) == mine
    assert await orders(enterprise="9999999999") == []
    now = datetime.now(UTC)
    assert await orders(since=(now - timedelta(hours=1)).isoformat()) == mine
    assert await orders(since=(now + timedelta(hours=1)).isoformat()) == []
    assert await orders(until=(now - timedelta(hours=1)).isoformat()) == []
    assert await orders(state="matched") == sorted(made[k].order_doc["orderNo"] for k in ("matched1", "matched2"))
    assert await orders(state="incomplete") == [made["incomplete"].order_doc["orderNo"]]
    assert len(await orders(state="any")) == 4
    assert await orders(state="any", orderNo=made["matched2"].order_doc["orderNo"], enterprise="9999999999") == []
    # keyset pages cover every shipment once
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"state": "any", "limit": "1", **({"cursor": cursor} if cursor else {})}
        body = await client.get_json("/ops/api/shipments", **params)
        seen += [i["orderNo"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(m.order_doc["orderNo"] for m in made.values())
    far_cursor = base64.urlsafe_b64encode(json.dumps(["2024-01-01T00:00:00+00:00", 10**30]).encode()).decode()
    for bad in ({"state": "lost"}, {"since": "yesterday"}, {"cursor": "%%%"}, {"orderNo": "x' OR 1=1 --"},
                {"since": "0001-01-01T00:00:00+01:00"}, {"until": "9999-12-31T23:59:59-01:00"},
                {"cursor": far_cursor}):  # fmt: skip
        assert (await client.get("/ops/api/shipments", **bad))[0] == 400, bad



async def test_the_list_filters_by_customs_status(ops: Ops) -> None:
    """The shipments customs rejected, or whose delivery failed, could not be listed (no customs-status filter)."""
    insert = "INSERT INTO shipments (ebp_code, order_no, state, customs_status) VALUES ('46012609BQ', $1, $2, $3)"
    await ops.pool.executemany(insert, [("CR1", "matched", "rejected"), ("CR2", "mismatched", "rejected"),
                                        ("CF1", "incomplete", "failed"), ("CP1", "mismatched", "pending")])  # fmt: skip
    client = await ops.console(OPERATOR)

    async def orders(**params: str) -> list[str]:
        body = await client.get_json("/ops/api/shipments", **params)
        return sorted(i["orderNo"] for i in body["items"])

    assert await orders(state="any", customs_status="rejected") == ["CR1", "CR2"]
    assert await orders(customs_status="rejected") == ["CR2"]  # the mismatched among them
    assert await orders(state="any", customs_status="failed") == ["CF1"]
    assert await orders(state="any", customs_status="released") == []
    status, body = await client.get("/ops/api/shipments", customs_status="lost")
    assert status == 400 and "customs_status" in body["error"]["title"]
    status, text = await client.get("/ops/api/shipments.csv", state="any", customs_status="rejected")
    assert status == 200 and [line.split(",")[2] for line in text.splitlines()[1:]] == ["CR2", "CR1"]


async def test_the_list_downloads_as_csv_every_page_masked_and_safe_for_a_spreadsheet(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list as filtered, every page of it (read a page at a time), as a CSV a spreadsheet opens as UTF-8: the
    columns the list shows, ID numbers masked as there, the findings as code and message; a cell a spreadsheet would
    run as a formula (a seller's text) shown as text. Refused without a session or with a bad filter."""
    monkeypatch.setattr(csvexport, "PAGE", 1)  # four shipments: four pages
    made = await _three_states(ops)
    client = await ops.console(OPERATOR)
    async with client.session.get(client.base + "/ops/api/shipments.csv", params={"state": "any"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert re.fullmatch(r'attachment; filename="shipments-any-\d{8}T\d{6}Z\.csv"',
                            resp.headers["Content-Disposition"])  # fmt: skip
        raw = await resp.read()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert sorted(r["orderNo"] for r in rows) == sorted(m.order_doc["orderNo"] for m in made.values())
    broken = made["mismatched"]
    [row] = [r for r in rows if r["orderNo"] == broken.order_doc["orderNo"]]
    assert row["state"] == "mismatched" and row["findings"].startswith("recon.amount_paid_mismatch: ")
    assert row["buyerName"] == broken.order_doc["buyerName"]  # Chinese, read back as written
    assert row["buyerIdNumber"] == mask_id_number(broken.order_doc["buyerIdNumber"])
    assert broken.order_doc["buyerIdNumber"] not in raw.decode("utf-8-sig")  # in no column, findings included
    [incomplete] = [r for r in rows if r["state"] == "incomplete"]
    assert incomplete["missing"] == "payment waybill inventory"
    # the filters are the list's
    async with client.session.get(client.base + "/ops/api/shipments.csv") as resp:
        only = list(csv.DictReader(io.StringIO((await resp.read()).decode("utf-8-sig"))))
    assert [r["orderNo"] for r in only] == [broken.order_doc["orderNo"]]  # mismatched, as the list opens
    assert (await client.get("/ops/api/shipments.csv", state="lost"))[0] == 400
    other = await ops.console(None)
    assert (await other.get("/ops/api/shipments.csv"))[0] == 401


def test_a_cell_a_spreadsheet_would_run_as_a_formula_stays_text() -> None:
    for text in ("=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("ZG2026112039") == "ZG2026112039"
    assert csv_cell(None) == ""
    assert csv_cell(datetime(2026, 12, 6, 8, 0, tzinfo=UTC)) == "2026-12-06T08:00:00+00:00"


async def test_a_csv_download_the_database_fails_midway_ends_unfinished(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows already sent cannot be taken back: a failure after the first page ends the download without its last
    chunk, so the browser says it failed, instead of a short file that looks complete."""
    monkeypatch.setattr(csvexport, "PAGE", 1)
    await _three_states(ops)
    pages = 0
    real = console_app.q.list_shipments

    async def failing(conn: Any, query: Any) -> Any:
        nonlocal pages
        pages += 1
        if pages == 2:
            raise asyncpg.ConnectionDoesNotExistError("the database went away")
        return await real(conn, query)

    monkeypatch.setattr(console_app.q, "list_shipments", failing)
    client = await ops.console(OPERATOR)
    async with client.session.get(client.base + "/ops/api/shipments.csv", params={"state": "any"}) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()

async def test_shipment_page_has_history_transmissions_and_xml(ops: Ops) -> None:
    s = samples.broken(new_shipment(111), "amount_mismatch")
    await submit(ops.api, s)
    # correct the payment (appType 2, newer appTime): the shipment becomes matched, the old payment is history
    fixed = copy.deepcopy(s)
    fixed.payment["guid"] = str(uuid.uuid4()).upper()
    doc = fixed.payment_doc
    doc["guid"] = str(uuid.uuid4()).upper()
    doc["appType"] = "2"
    later = datetime.strptime(doc["appTime"], "%Y%m%d%H%M%S") + timedelta(minutes=1)
    doc["appTime"] = later.strftime("%Y%m%d%H%M%S")
    doc["amountPaid"] = s.order_doc["acturalPaid"]
    reply = await ops.api.post_xml(xml_of(fixed.payment))
    assert reply.status == 202, reply.body
    order_guid = s.order["guid"]
    dead = await make_dead_letter(ops.pool, guid=order_guid)
    sent = await make_forwarded(ops.pool, endpoint="customs-payment", kind="CEB411", guid=fixed.payment["guid"])
    await make_forwarded(ops.pool, guid="SOMEONE-ELSE")

    client = await ops.console(OPERATOR)
    body = await client.get_json("/ops/api/shipment", **key_of(s))
    assert body["state"] == "matched" and body["buyerIdNumber"] == s.order_doc["buyerIdNumber"]
    payments = [d for d in body["documents"] if d["kind"] == "payment"]
    assert len(payments) == 2
    old, new = payments
    assert old["is_current"] is False and old["superseded_by"] == new["id"] and new["is_current"] is True
    assert new["head"]["amountPaid"] == s.order_doc["acturalPaid"]
    assert {d["kind"] for d in body["documents"]} == {"order", "payment", "waybill", "inventory"}
    assert [d["received_at"] for d in body["documents"]] == sorted(d["received_at"] for d in body["documents"])
    jobs = {j["id"]: j for j in body["transmissions"]}
    assert set(jobs) == {dead, sent}
    assert jobs[dead]["state"] == "dead" and jobs[dead]["history"][0]["outcome"] == "permanent"
    assert jobs[sent]["state"] == "done" and jobs[sent]["history"][0]["outcome"] == "ok"

    xml = await client.get_json(f"/ops/api/messages/{order_guid}/xml")
    assert s.order_doc["orderNo"] in xml["raw_xml"] and s.order_doc["buyerName"] in xml["raw_xml"]
    assert (await client.get("/ops/api/messages/NO-SUCH-GUID/xml"))[0] == 404
    assert (await client.get("/ops/api/shipment", ebpCode="X", orderNo="nothing"))[0] == 404
    assert (await client.get("/ops/api/shipment"))[0] == 400


async def test_dead_letters_page_by_endpoint_each_with_its_shipment(ops: Ops) -> None:
    """The panel showed the newest 50 dead letters and no more: an inspection one beyond them could be neither seen
    nor replayed. Pages of 50 from an offset, one endpoint's, each naming the shipment its message belongs to."""
    s = new_shipment(141)
    await submit(ops.api, s, "CEB621")
    guid = await ops.pool.fetchval("SELECT guid FROM messages WHERE message_type = 'CEB621'")
    inspection = await make_dead_letter(ops.pool, endpoint="inspection", kind="CEB621", guid=guid)
    customs = [await make_dead_letter(ops.pool) for _ in range(55)]
    client = await ops.console(OPERATOR)
    first = await client.get_json("/ops/api/queue/dead")
    assert [j["id"] for j in first["items"]] == customs[::-1][:50]  # newest first
    assert (first["total"], first["next_offset"]) == (56, 50)
    rest = await client.get_json("/ops/api/queue/dead", offset="50")
    assert [j["id"] for j in rest["items"]] == [*customs[::-1][50:], inspection] and rest["next_offset"] is None
    (job,) = (await client.get_json("/ops/api/queue/dead", endpoint="inspection"))["items"]
    assert job["id"] == inspection and job["shipments"] == [key_of(s)]
    assert rest["items"][0]["shipments"] == []  # a job of no message the gateway holds
    assert len((await client.get_json("/ops/api/queue/dead", limit="120"))["items"]) == 56
    for bad in ({"offset": "-1"}, {"offset": "x"}, {"endpoint": "customs'--"}):
        assert (await client.get("/ops/api/queue/dead", **bad))[0] == 400, bad


async def test_queue_health_and_dead_letters(ops: Ops) -> None:
    dead = await make_dead_letter(ops.pool, endpoint="customs")
    async with ops.pool.acquire() as conn:
        for i in range(3):
            await cbec_queue.enqueue(conn, endpoint="customs", kind="CEB311", payload={"n": i})
        await cbec_queue.enqueue(conn, endpoint="warehouse", kind="x", payload={})
    client = await ops.console(OPERATOR)
    body = await client.get_json("/ops/api/queue")
    by = {e["endpoint"]: e for e in body["endpoints"]}
    assert by["customs"]["queued"] == 3 and by["customs"]["dead"] == 1
    assert by["warehouse"]["queued"] == 1 and by["warehouse"]["dead"] == 0
    assert by["customs"]["oldest_queued_age_s"] >= 0
    assert body["dead_total"] == 1
    assert body["receipts_awaited"] == {"count": 0, "oldest_sent_at": None, "oldest_wait_s": 0}
    assert "dead_letters" not in body  # the letters come page by page from /ops/api/queue/dead
    [letter] = (await client.get_json("/ops/api/queue/dead"))["items"]
    assert letter["id"] == dead and letter["dead_reason"] == "permanent"
    assert "POISON" in letter["last_error"]
    assert [h["outcome"] for h in letter["history"]] == ["permanent"]
    assert letter["payload"]["message"].startswith("<") and "characters" in letter["payload"]["message"]


async def test_queue_health_shows_the_receipts_awaited_and_the_feed_sends_them(ops: Ops) -> None:
    client = await ops.console(OPERATOR)
    deadline = time.monotonic() + 15
    async with client.session.get(ops.base + "/ops/api/events") as resp:
        events = _events(resp, deadline)
        async for event, data in events:
            if event == "queue":
                assert data["receipts_awaited"] == {"count": 0, "oldest_sent_at": None, "oldest_wait_s": 0}
                break
        async with ops.pool.acquire() as conn:  # two documents sent, no receipt yet (as MARK_SENT lists them)
            await conn.execute("INSERT INTO receipts_awaited (document_id, sent_at, awaited_since)"
                               " VALUES (1, now() - interval '5 minutes', now() - interval '5 minutes'),"
                               " (2, now(), now())")  # fmt: skip
        async for event, data in events:
            if event == "queue" and data["receipts_awaited"]["count"] == 2:
                oldest = datetime.fromisoformat(data["receipts_awaited"]["oldest_sent_at"])
                assert timedelta(minutes=5) <= datetime.now(UTC) - oldest < timedelta(minutes=6)
                assert 300 <= data["receipts_awaited"]["oldest_wait_s"] < 360
                break
        else:
            pytest.fail("no queue event with the awaited receipts arrived")
    body = await client.get_json("/ops/api/queue")
    assert body["receipts_awaited"]["count"] == 2



async def test_the_documents_awaiting_a_receipt_are_listed_longest_waiting_first(ops: Ops) -> None:
    """GET /v1/queue/awaited and the console's queue panel: the documents sent to customs without any receipt yet,
    the longest waiting first, each with its message, key and shipment (whose page it links) and whether the watchdog
    found its receipt overdue; keyset pages; operators and admins only."""
    from gateway import outbox

    ships = [new_shipment(610 + i) for i in range(3)]
    for s in ships:
        await submit(ops.api, s, "CEB311")
    async with ops.pool.acquire() as conn:
        ids = await conn.fetch("SELECT id, guid FROM messages ORDER BY id DESC LIMIT 3")
        await conn.execute(outbox.MARK_SENT, [r["id"] for r in ids])
        # sent 30, 20 and 10 minutes ago, in the order the shipments were made; the oldest found overdue
        await conn.execute("""
            UPDATE receipts_awaited AS a SET sent_at = now() - make_interval(mins => (10 * (4 - x.n))::int),
                                             awaited_since = now() - make_interval(mins => (10 * (4 - x.n))::int)
              FROM (SELECT d.id, row_number() OVER (ORDER BY d.id) AS n FROM documents AS d
                     WHERE d.message_id = ANY ($1::bigint[])) AS x
             WHERE a.document_id = x.id""", [r["id"] for r in ids])  # fmt: skip
        await conn.execute("UPDATE documents SET receipt_overdue = true, repushes = 1 WHERE id = ("
                           "SELECT document_id FROM receipts_awaited ORDER BY sent_at LIMIT 1)")  # fmt: skip
    first = await ops.api.get("/v1/queue/awaited?limit=2", key=OPERATOR)
    assert first.status == 200, first.body
    rest = await ops.api.get(f"/v1/queue/awaited?limit=2&cursor={first.body['next_cursor']}", key=OPERATOR)
    assert rest.body["next_cursor"] is None
    items = first.body["items"] + rest.body["items"]
    assert [i["orderNo"] for i in items] == [s.order_doc["orderNo"] for s in ships]
    oldest = items[0]
    assert (oldest["message_type"], oldest["kind"]) == ("CEB311", "order")
    assert (oldest["ebpCode"], oldest["message_guid"]) == (ships[0].order_doc["ebpCode"], ships[0].order["guid"])
    assert oldest["keys"] == {"ebpCode": ships[0].order_doc["ebpCode"], "orderNo": ships[0].order_doc["orderNo"]}
    assert (oldest["receipt_overdue"], oldest["repushes"]) == (True, 1)
    assert [i["receipt_overdue"] for i in items[1:]] == [False, False]
    assert 1790 <= oldest["wait_s"] < 1900 and 590 <= items[2]["wait_s"] < 700
    for key in (PLATFORM_A, None):
        assert (await ops.api.get("/v1/queue/awaited", key=key)).status in (401, 403)
    assert (await ops.api.get("/v1/queue/awaited?cursor=nope", key=OPERATOR)).status == 400
    client = await ops.console(OPERATOR)
    page = await client.get_json("/ops/api/queue/awaited")
    assert [i["document_id"] for i in page["items"]] == [i["document_id"] for i in items]

def test_the_feed_publishes_the_queue_when_it_moved_not_as_the_oldest_wait_grows() -> None:
    from gateway.console.feed import _queue_moved

    at = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    before = {"endpoints": [{"endpoint": "customs", "queued": 1}], "dead_total": 0,
              "receipts_awaited": {"count": 2, "oldest_sent_at": at, "oldest_wait_s": 30.0}}  # fmt: skip
    later = {**before, "receipts_awaited": {**before["receipts_awaited"], "oldest_wait_s": 35.0}}
    assert not _queue_moved(before, later)
    assert _queue_moved(before, {**later, "receipts_awaited": {"count": 1, "oldest_sent_at": at, "oldest_wait_s": 5}})
    assert _queue_moved(before, {**later, "endpoints": [{"endpoint": "customs", "queued": 2}]})
    assert _queue_moved({}, later)
    # one dead letter replayed and another dead at once: the count is the same, the newest death is not
    assert _queue_moved({**before, "dead_total": 1, "dead_newest": at},
                        {**later, "dead_total": 1, "dead_newest": at + timedelta(seconds=3)})  # fmt: skip


async def test_series_per_minute(ops: Ops) -> None:
    client = await ops.console(OPERATOR)
    before = await client.get_json("/ops/api/series", minutes="10")
    assert len(before["minutes"]) == 10 and sum(before["accepted"]) == 0
    await submit(ops.api, new_shipment(121))
    broken = xml_of(new_shipment(122).order).replace(b"<ceb:orderNo>", b"<ceb:orderNo>\x01", 1)
    assert (await ops.api.post_xml(broken)).status in (400, 422)
    await make_forwarded(ops.pool, endpoint="customs")
    await make_forwarded(ops.pool, endpoint="warehouse")  # not a customs endpoint
    body = await client.get_json("/ops/api/series", minutes="10")
    assert sum(body["accepted"]) == 4 and body["accepted"][-1] + body["accepted"][-2] == 4
    assert sum(body["rejected"]) == 1
    assert sum(body["forwarded"]) == 1
    assert (await client.get("/ops/api/series", minutes="many"))[0] == 400


# --- live feed ---------------------------------------------------------------------------------------


async def _events(resp: aiohttp.ClientResponse, deadline: float) -> Any:
    """Yield (event, data) from an SSE response until the deadline."""
    event, data = "message", []
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(resp.content.readline(), deadline - time.monotonic())
        if not line:
            return
        text = line.decode().rstrip("\n")
        if text.startswith("event:"):
            event = text[6:].strip()
        elif text.startswith("data:"):
            data.append(text[5:].strip())
        elif text == "" and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


async def test_events_stream_counts_and_changed_shipments(ops: Ops) -> None:
    client = await ops.console(OPERATOR)
    s = samples.broken(new_shipment(131), "amount_mismatch")
    deadline = time.monotonic() + 15
    async with client.session.get(ops.base + "/ops/api/events") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        events = _events(resp, deadline)
        event, first = await anext(events)
        while event != "summary":
            event, first = await anext(events)
        assert first["shipments"]["by_state"]["mismatched"] == 0
        await submit(ops.api, s)
        async for event, data in events:
            if event == "summary" and data["shipments"]["by_state"]["mismatched"] == 1:
                changed = {(c["ebpCode"], c["orderNo"]): c["state"] for c in data["changed"]}
                assert changed[(s.order_doc["ebpCode"], s.order_doc["orderNo"])] == "mismatched"
                break
        else:
            pytest.fail("no summary with the mismatch arrived")
    feed = ops.app[CONSOLE].feed
    assert feed is not None
    for _ in range(40):  # the handler notices the closed connection within a second or so
        if not feed.subscribers:
            break
        await asyncio.sleep(0.1)
    assert not feed.subscribers


async def test_the_feed_names_customs_changes_late_commits_and_says_when_it_cannot_name_them_all(
    db_pool: Any,
) -> None:
    """What an open shipment page reloads on: a customs status change (a receipt moves no updated_at), a change
    whose transaction committed after a later one (stamped earlier), and, beyond what one event names, a flag."""
    from gateway.console.feed import Feed

    feed = Feed(db_pool, recount_every=1)
    sub = feed.subscribe()

    async def changed() -> tuple[set[str], bool]:
        await feed.tick()
        data = dict(sub.pending.get("summary") or {})
        sub.pending.clear()
        return {c["orderNo"] for c in data.get("changed", [])}, bool(data.get("changed_overflow"))

    insert = "INSERT INTO shipments (ebp_code, order_no, state, updated_at) VALUES ('P', $1, 'incomplete', $2)"
    await db_pool.execute(insert, "A", datetime.now(UTC))
    await changed()  # the first poll names nothing
    await db_pool.execute("UPDATE shipments SET customs_status = 'declared', customs_updated_at = now()")
    assert await changed() == ({"A"}, False)
    await db_pool.execute(insert, "B", datetime.now(UTC))
    assert await changed() == ({"B"}, False)
    # committed now, stamped two seconds ago (its transaction began before B's): still named, once
    await db_pool.execute(insert, "LATE", datetime.now(UTC) - timedelta(seconds=2))
    assert await changed() == ({"LATE"}, False)
    assert await changed() == (set(), False)
    await db_pool.executemany(insert, [(f"M{i}", datetime.now(UTC)) for i in range(130)])
    names, overflow = await changed()
    assert overflow and 0 < len(names) <= 100 and all(n.startswith("M") for n in names)  # the pages reload
    # the burst's rest comes next, then nothing more is overflow: a change after it is named at once
    names, overflow = await changed()
    assert not overflow and names and all(n.startswith("M") for n in names)
    await db_pool.execute(insert, "AFTER", datetime.now(UTC))
    assert await changed() == ({"AFTER"}, False)


async def test_feed_is_one_task_for_many_clients_and_stops_with_the_app(db_pool: Any) -> None:
    app = build_app(db_pool, poll_interval=0.1)
    runner, base = await start(app)
    sessions = []
    try:
        console = app[CONSOLE]
        feed = console.feed
        assert feed is not None and feed._task is not None
        for _ in range(3):
            c = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            sessions.append(c)
            async with c.post(base + "/ops/login", data={"key": OPERATOR}, allow_redirects=False) as r:
                assert r.status == 303
        responses = [await c.get(base + "/ops/api/events") for c in sessions]
        for r in responses:
            assert r.status == 200
            assert (await asyncio.wait_for(r.content.readline(), 5)).startswith(b"retry:")
        for _ in range(50):
            if len(feed.subscribers) == 3:
                break
            await asyncio.sleep(0.05)
        assert len(feed.subscribers) == 3
        ticks = feed.ticks
        await asyncio.sleep(0.5)
        assert 1 <= feed.ticks - ticks <= 8  # one poller at ~10 Hz, not one per client
        task = feed._task
        started = time.monotonic()
        await asyncio.wait_for(runner.cleanup(), 10)
        assert time.monotonic() - started < 3  # open streams did not hold the shutdown
        assert task.done() and console.feed is not None and not console.feed.subscribers
        for r in responses:
            r.close()
    finally:
        for c in sessions:
            await c.close()


async def test_receipts_and_customs_status_from_the_forwarding(db_dsn: str) -> None:
    """A shipment forwarded to the sandbox, its receipts back through POST /v1/receipts: the console shows
    the customs status (summary, list, shipment, each document), the receipts and their latency, and the tax bill
    the sandbox sent after the release."""
    async with running_stack(db_dsn) as stack:
        s = fwd_shipment(141)
        for payload in fwd_legs(s):
            await stack.submit(payload)
        await stack.wait_status(s, "released")
        await stack.sandbox.wait_idle()
        client = ConsoleClient(stack.base)
        try:
            assert (await client.sign_in(OPERATOR)).status == 303
            summary = await client.get_json("/ops/api/summary")
            assert summary["shipments"]["by_customs_status"] == {"released": 1}
            [listed] = (await client.get_json("/ops/api/shipments", state="matched"))["items"]
            assert listed["orderNo"] == s.order_doc["orderNo"] and listed["customsStatus"] == "released"

            ship = await client.get_json("/ops/api/shipment", **key_of(s))
            assert ship["customsStatus"] == "released"
            docs = {d["kind"]: d for d in ship["documents"]}
            assert docs.keys() == {"order", "payment", "waybill", "inventory"}
            for kind in ("order", "payment", "waybill"):
                assert (docs[kind]["forward_state"], docs[kind]["customs_status"]) == ("receipted", "120")
            assert (docs["inventory"]["forward_state"], docs["inventory"]["customs_status"]) == ("receipted", "800")
            by_doc: dict[int, list[str]] = {}
            for r in ship["receipts"]:
                assert r["outcome"] == "applied" and r["source"] == "http"
                if r["message_type"] in ("CEB816", "CEB818"):  # the inventory's tax bill after the release, and its
                    # status change (the note of a bill is optional)
                    assert (r["document_id"], r["return_status"]) == (docs["inventory"]["id"],
                                                                      "1" if r["message_type"] == "CEB816" else "2")
                    continue
                assert r["return_info"]
                by_doc.setdefault(r["document_id"], []).append(r["return_status"])
            assert by_doc == {docs[k]["id"]: ["2", "120"] for k in ("order", "payment", "waybill")} | {
                docs["inventory"]["id"]: ["2", "120", "399", "800"]
            }
            # the sandbox's bill is the gateway's estimate: shown beside it, no tax.bill_differs
            invt_no = next(r["keys"]["invtNo"] for r in ship["receipts"] if r["return_status"] == "800")
            (bill,) = ship["tax_bills"]
            assert (bill["invtNo"], bill["status"], bill["findings"]) == (invt_no, "2", [])  # consolidated (CEB818)
            assert bill["total"] == bill["estimate"]["total"] and bill["document_id"] == docs["inventory"]["id"]
            assert "raw_xml" not in ship["receipts"][0]  # the XML stays in the database
            customs_jobs = [j for j in ship["transmissions"] if j["endpoint"] == "customs"]
            assert len(customs_jobs) == 4 and {j["state"] for j in customs_jobs} == {"done"}

            # receipt latency: receipt received − declared message accepted, per minute of the receipt
            accepted = {d["message_id"]: datetime.fromisoformat(d["received_at"]) for d in ship["documents"]}
            expected: dict[datetime, list[float]] = {}
            for r in ship["receipts"]:
                at = datetime.fromisoformat(r["received_at"])
                minute = at.replace(second=0, microsecond=0)
                expected.setdefault(minute, []).append((at - accepted[r["message_id"]]).total_seconds())
            series = await client.get_json("/ops/api/series", minutes="5")
            latency = series["receipt_latency"]
            got = {
                datetime.fromisoformat(t): (p50, p95)
                for t, p50, p95 in zip(series["minutes"], latency["p50_s"], latency["p95_s"], strict=True)
                if p50 is not None
            }
            assert got.keys() == expected.keys()
            for minute, latencies in expected.items():
                p50, p95 = got[minute]
                assert p50 == pytest.approx(statistics.median(latencies), abs=1e-3)
                assert min(latencies) <= p50 <= p95 <= max(latencies) + 1e-3
        finally:
            await client.close()


async def test_receipts_stored_as_documents_join_the_timeline(ops: Ops) -> None:
    from gateway.sandbox.receipts import build_receipt, return_time

    s = new_shipment(151)
    await submit(ops.api, s)
    order, waybill = s.order_doc, s.waybill_doc
    for code, values in (
        ("CEB312", {"guid": order["guid"], "ebpCode": order["ebpCode"], "ebcCode": order["ebcCode"],
                    "orderNo": order["orderNo"], "returnStatus": "120", "returnInfo": "新增申报成功"}),
        ("CEB512", {"guid": waybill["guid"], "logisticsCode": waybill["logisticsCode"],
                    "logisticsNo": waybill["logisticsNo"], "returnStatus": "2", "returnInfo": "电子口岸申报中"}),
        ("CEB312", {"guid": "0B0E1C44-59D1-4F6B-9A36-5E0F4CB2F6A1", "ebpCode": order["ebpCode"],
                    "ebcCode": order["ebcCode"], "orderNo": "SOMEONE-ELSES-ORDER", "returnStatus": "120",
                    "returnInfo": "x"}),
    ):  # fmt: skip
        reply = await ops.api.post_xml(build_receipt(code, {**values, "returnTime": return_time()}))
        assert reply.status == 202, reply.body
    client = await ops.console(OPERATOR)
    body = await client.get_json("/ops/api/shipment", **key_of(s))
    receipts = [(d["message_type"], d["head"]["returnStatus"]) for d in body["documents"] if d["kind"] == "receipt"]
    assert sorted(receipts) == [("CEB312", "120"), ("CEB512", "2")]
    assert body["state"] == "matched"  # receipts never change the reconciliation


async def _inventory_of(api: Any, s: samples.ShipmentSample, serial: int) -> tuple[Any, str, bytes]:
    """The shipment's inventory as a Document, the invtNo customs gives it and the CEB622 that releases it."""
    from gateway.documents import Document
    from gateway.messages import BY_CODE
    from gateway.sandbox.receipts import build_receipt, return_time

    path = f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}"
    (d,) = [d for d in (await api.get(path)).body["documents"] if d["kind"] == "inventory"]
    h, inv = d["head"], Document(BY_CODE["CEB621"], d["index"], d["path"], d["head"], d["lines"])
    invt_no = f"{h['customsCode']}2026I{serial:09d}"
    released = {"guid": h["guid"], "customsCode": h["customsCode"], "ebpCode": h["ebpCode"], "ebcCode": h["ebcCode"],
                "agentCode": h["agentCode"], "copNo": h["copNo"], "preNo": f"B20260101{serial:09d}", "invtNo": invt_no,
                "returnStatus": "800", "returnTime": return_time(), "returnInfo": "放行"}  # fmt: skip
    return inv, invt_no, build_receipt("CEB622", released)


async def test_the_feed_names_a_shipment_whose_inventory_got_a_tax_bill_or_a_bill_status(db_pool: asyncpg.Pool) -> None:
    """A tax bill (CEB816) and a bill's status change (CEB818) move nothing of the shipment row (its reconciliation, its
    customs status): an open shipment page showed a bill that came after it only once reloaded. The feed names the
    shipment of a bill's inventory, once; a bill that matched no inventory names nothing."""
    from gateway.api import create_app
    from gateway.console.feed import _CHANGED_LIMIT
    from gateway.sandbox.receipts import build_tax_bills, new_guid, return_time, tax_bill_of
    from tests.apiutil import Client, sign_as_agent, test_settings

    app = create_app(test_settings(), db_pool, signer=sign_as_agent)
    runner, base = await start(app)
    watch = FeedWatch(db_pool)
    changed = watch.changed

    try:
        async with aiohttp.ClientSession() as session:
            api = Client(session, base)

            async def post(xml: bytes, outcome: str = "applied") -> None:
                reply = await api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
                assert reply.status == 200 and reply.body["receipts"][0]["outcome"] == outcome, reply.body

            s = new_shipment(171)
            order_no = s.order_doc["orderNo"]
            await submit(api, s)
            inv, invt_no, released = await _inventory_of(api, s, 171)
            await post(released)
            await changed()  # the first poll names nothing, the next the release (within the look-back)
            await changed()
            assert await changed() == set()
            await post(tax_bill_of(inv, invt_no, "T-171"))
            assert await changed() == {order_no}
            assert await changed() == set()
            paid = {"guid": new_guid(), "returnTime": return_time(), "invtNo": invt_no, "taxNo": "T-171", "status": "2",
                    "entDutyNo": "D-171"}  # fmt: skip
            await post(build_tax_bills("CEB818", [(paid, [])]))
            assert await changed() == {order_no}
            assert await changed() == set()
            await post(build_tax_bills("CEB818", [({**paid, "guid": new_guid(), "invtNo": "X" + invt_no[1:]}, [])]),
                       "unmatched")  # fmt: skip
            assert await changed() == set()
            # customs sends a withholding agent the bills of every declaration: more that match nothing than one read
            # of the feed takes must not crowd out the next of this shipment's
            others = [({**paid, "guid": new_guid(), "invtNo": f"5100{2026}I{n:09d}", "taxNo": f"OTHER-{n}"}, [])
                      for n in range(_CHANGED_LIMIT + 20)]  # fmt: skip
            await post(build_tax_bills("CEB818", others), "unmatched")
            assert await changed() == set()
            await post(tax_bill_of(inv, invt_no, "T-171-B"))
            assert await changed() == {order_no}
    finally:
        watch.close()
        await asyncio.wait_for(runner.cleanup(), 10)


async def test_the_shipment_page_sets_each_tax_bill_beside_the_estimate_at_the_configured_rates(
    db_pool: asyncpg.Pool,
) -> None:
    """Customs' tax bills on the console's shipment, as the API shows them: each beside the gateway's estimate at the
    configured rates (not the defaults), a tax more than ¥0.01 apart a ``tax.bill_differs`` finding."""
    from gateway.api import create_app
    from gateway.sandbox.receipts import build_tax_bills, new_guid, return_time, tax_bill_of
    from gateway.tax import TaxRates
    from tests.apiutil import Client, sign_as_agent, test_settings

    rates = {"vat": "0.09"}  # not the default 13 %: an estimate at the defaults would differ from customs' bill
    app = create_app(test_settings(tax_rates=rates), db_pool, signer=sign_as_agent)
    runner, base = await start(app)
    client = ConsoleClient(base)
    try:
        async with aiohttp.ClientSession() as session:
            api = Client(session, base)
            s = new_shipment(161)
            await submit(api, s)
            path = f"/v1/shipments/{s.order_doc['ebpCode']}/{s.order_doc['orderNo']}"
            inv, invt_no, released = await _inventory_of(api, s, 161)
            differing = {"guid": new_guid(), "returnTime": return_time(), "invtNo": invt_no, "taxNo": "T-161-B",
                         "customsTax": "0", "valueAddedTax": "999.00", "consumptionTax": "0", "status": "1"}
            line = {"gnum": "1", "gcode": inv.lines[0]["gcode"], "taxPrice": "1", "customsTax": "0",
                    "valueAddedTax": "999.00", "consumptionTax": "0"}  # fmt: skip
            for xml in (released,
                        tax_bill_of(inv, invt_no, "T-161-A", rates=TaxRates.from_mapping(rates)),
                        build_tax_bills("CEB816", [(differing, [line])])):  # fmt: skip
                reply = await api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
                assert reply.status == 200 and reply.body["receipts"][0]["outcome"] == "applied", reply.body
            shown = (await api.get(path)).body

        assert (await client.sign_in(OPERATOR)).status == 303
        ship = await client.get_json("/ops/api/shipment", **key_of(s))
        same, other = ship["tax_bills"]
        assert same == shown["tax_bills"][0] and other["taxNo"] == "T-161-B"
        assert (same["taxNo"], same["status"], same["status_name"], same["invtNo"]) == ("T-161-A", "1", "generated",
                                                                                        invt_no)  # fmt: skip
        assert {k: same[k] for k in ("customsTax", "valueAddedTax", "consumptionTax", "total")} == {
            k: same["estimate"][k] for k in ("customsTax", "valueAddedTax", "consumptionTax", "total")}  # fmt: skip
        assert same["findings"] == []
        (f,) = other["findings"]
        assert (f["code"], f["field"], f["left"]["value"], f["right"]["value"]) == (
            "tax.bill_differs", "valueAddedTax", "999.00", same["estimate"]["valueAddedTax"])  # fmt: skip
        assert f in ship["findings"] and ship["state"] == "matched"  # a warning, not stored with the shipment
        # the bills' records stay in the timeline with the other receipts
        assert sorted(r["message_type"] for r in ship["receipts"]) == ["CEB622", "CEB816", "CEB816"]
    finally:
        await client.close()
        await asyncio.wait_for(runner.cleanup(), 10)
