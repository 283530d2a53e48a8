"""Requests a fuzzer (or a careless client) sends: each gets a precise answer, never a 500 or a hang."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from gateway import api as api_module
from gateway import realtime, samples
from gateway.api import create_app
from gateway.render import read_json
from tests import apiutil
from tests.apiutil import PLATFORM_A, Client, serving
from tests.test_realtime import EBP_CODE, TOKEN, parcel, platforms, settings_with, sign_as_agent

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

CALLBACK = {"schema": "cbec.warehouse-callback.v1", "orderId": "WO-1", "warehouseOrderNo": "W1",
            "direction": "outbound", "status": "shipped", "occurredAt": "2026-11-20T10:15:00+08:00", "timestamp": 1,
            "reference": {}}  # fmt: skip


async def _post(api: Client, path: str, data: bytes, **headers: str) -> tuple[int, Any]:
    headers = {"X-API-Key": apiutil.ADMIN, **headers}
    async with api.session.post(api.base + path, data=data, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw[:1] == b"{" else raw


async def test_ids_and_cursors_are_ascii_digits(api: Client) -> None:
    """'³' and '①' are digits to str.isdigit and no number to int(); '１' (full width) is one to both: neither names a
    row (a 500, and rejection 1 for '１')."""
    for written in ("%C2%B3", "%E2%91%A0", "%EF%BC%91", "%D9%A1"):
        assert (await api.get(f"/v1/rejections/{written}")).status == 404, written
    for path in ("/v1/rejections", "/v1/warehouse/callbacks", "/v1/payment-data/questions"):
        reply = await api.get(f"{path}?cursor=%C2%B3")
        assert reply.status == 400 and "invalid literal" not in reply.body["error"]["title"], (path, reply.body)


async def test_a_body_its_content_encoding_does_not_decode_is_a_400(api: Client) -> None:
    """gzip that is no gzip: 400 parse.bad_content_encoding on every route that reads a body (a message's kept among
    the refusals), where it was a 500."""
    broken = {"Content-Encoding": "gzip"}
    for path, ctype in (("/v1/messages", "application/xml"), ("/v1/receipts", "application/xml"),
                        ("/v1/warehouse/callbacks", "application/json"), ("/v1/queue/replay", "application/json")):
        status, body = await _post(api, path, b"not gzip at all", **broken, **{"Content-Type": ctype})
        assert status == 400 and body["error"]["issues"][0]["code"] == "parse.bad_content_encoding", (path, body)
    kept = await api.get("/v1/rejections?code=parse.bad_content_encoding")
    assert [r["http_status"] for r in kept.body["items"]] == [400, 400], kept.body  # the message's and the receipt's
    fine = json.dumps({"all": True}).encode()
    status, body = await _post(api, "/v1/queue/replay", gzip.compress(fine), **{"Content-Encoding": "gzip"})
    assert status == 200, body


async def test_a_body_that_never_arrives_is_a_408_and_a_client_gone_no_500(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that announces 1,000 bytes and sends 3 held its handler for good; one that then goes away was logged
    as an unhandled error and counted a 500."""
    monkeypatch.setattr(api_module, "BODY_TIMEOUT_S", 0.5)
    where = urlsplit(api.base)
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: {where.netloc}\r\nX-API-Key: {apiutil.ADMIN}\r\n"
            "Content-Type: application/xml\r\nContent-Length: 1000\r\n\r\n<a>").encode()
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    writer.write(head)
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"parse.body_timeout" in answer, answer[:300]
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()  # gone, mid-body
        for _ in range(50):
            if any(e["event"] == "request" for e in logs):
                break
            await asyncio.sleep(0.05)
    events = {e["event"]: e for e in logs}
    assert "unhandled_error" not in events and events["request"]["status"] == 499, logs


async def test_json_bodies_are_read_as_strictly_as_a_json_message(api: Client) -> None:
    """A warehouse callback (and payment data, and a replay) with a member named twice, a NUL or a lone surrogate was
    a silent pick, or a 500 from the database; its fields are checked for what they are."""
    for raw, found in ((b'{"a": 1, "a": 2}', "names 'a' twice"), (b'{"a": "x\\u0000"}', "U+0000"),
                       (b'{"a": ["\\ud800"]}', "/a/0 holds U+D800"), (b'{"a": "\\u0001"}', "U+0001"),
                       (b"NaN", "not JSON")):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(found)):
            read_json(raw)
    assert read_json('\ufeff{"a": "制\\n"}'.encode()) == {"a": "制\n"}
    for changes, found in (({"orderId": "\ud800"}, "U+D800"), ({"orderId": "x\x00"}, "U+0000"),
                           ({"orderId": 7}, "orderId must be a non-empty string"),
                           ({"occurredAt": "99999-11-20T10:15:00+08:00"}, "is not an ISO 8601 time"),
                           ({"reference": [1]}, "reference must be an object"),
                           ({"reason": 5}, "reason must be a string")):  # fmt: skip
        body = json.dumps({**CALLBACK, **changes}).encode()
        status, answer = await _post(api, "/v1/warehouse/callbacks", body, **{"Content-Type": "application/json"})
        assert status == 422 and found in answer["error"]["issues"][0]["message"], (changes, answer)
    twice = json.dumps(CALLBACK).replace('"orderId": "WO-1"', '"orderId": "WO-1", "orderId": "WO-2"').encode()
    status, answer = await _post(api, "/v1/warehouse/callbacks", twice, **{"Content-Type": "application/json"})
    assert status == 422 and "'orderId' twice" in answer["error"]["issues"][0]["message"], answer
    status, answer = await _post(api, "/v1/warehouse/callbacks", json.dumps({**CALLBACK, "timestamp": 1e30}).encode(),
                                 **{"Content-Type": "application/json"})  # fmt: skip
    assert status == 200, answer  # stored as the database takes the number


async def test_a_request_id_is_echoed_only_when_it_is_one(api: Client) -> None:
    async with api.session.get(api.base + "/healthz", headers={"X-Request-Id": "trace-1234"}) as resp:
        assert resp.headers["X-Request-Id"] == "trace-1234"
    for sent in ("x" * 4096, "a b"):
        async with api.session.get(api.base + "/healthz", headers={"X-Request-Id": sent}) as resp:
            echoed = resp.headers["X-Request-Id"]
            assert echoed != sent and len(echoed) == 32 and int(echoed, 16) >= 0, sent


async def test_customs_question_that_cannot_be_read_is_answered_20000(db_pool: asyncpg.Pool) -> None:
    """platDataOpen (no API key): a form that cannot be read, a serviceTime of no number or beyond a bigint, an
    orderNo with a NUL were 500s with the gateway's error body; customs reads 20000 and why."""
    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    url_path = f"/ceb/platDataOpen/{TOKEN}"
    async with serving(app) as api:
        for open_req in ({"orderNo": "ZG1", "sessionID": "s-1", "serviceTime": "³"},
                         {"orderNo": "ZG1", "sessionID": "s-1", "serviceTime": 10**30},
                         {"orderNo": "ZG1\x00", "sessionID": "s-1", "serviceTime": 1},
                         {"orderNo": "ZG1\ud800", "sessionID": "s-1", "serviceTime": 1}):  # fmt: skip
            async with api.session.post(api.base + url_path, data={"openReq": json.dumps(open_req)}) as resp:
                answer = await resp.json(content_type=None)
                assert resp.status == 200 and answer["code"] == realtime.FAILURE, (open_req, answer)
        for headers, data in (({"Content-Type": "multipart/form-data; boundary=b"}, b"garbage"),
                              ({"Content-Type": "application/x-www-form-urlencoded; charset=bogus"}, b"openReq=x")):
            async with api.session.post(api.base + url_path, data=data, headers=headers) as resp:
                answer = await resp.json(content_type=None)
                assert resp.status == 400 and answer["code"] == realtime.FAILURE, (headers, answer)
        async with db_pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM realtime_requests WHERE ebp_code = $1", EBP_CODE) == 0


async def test_customs_question_is_bounded_however_its_body_comes(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """platDataOpen has no API key, and its 16 KiB limit was checked on the Content-Length alone: a chunked body was
    read up to aiohttp's own limit (8 MiB) and parsed, and one announced and never sent held its handler for good.
    Both are answered 20000 now: 413, and 408 once QUESTION_TIMEOUT_S has passed."""
    monkeypatch.setattr(api_module, "QUESTION_TIMEOUT_S", 0.5)
    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    url_path = f"/ceb/platDataOpen/{TOKEN}"

    async def chunks() -> Any:
        yield b"openReq="
        for _ in range(64):
            yield b"a" * 1024

    async with serving(app) as api:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with api.session.post(api.base + url_path, data=chunks(), headers=headers) as resp:
            answer = await resp.json(content_type=None)
            assert resp.status == 413 and answer["code"] == realtime.FAILURE, answer
        where = urlsplit(api.base)
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        writer.write((f"POST {url_path} HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Length: 1000\r\n"
                      "Content-Type: application/x-www-form-urlencoded\r\n\r\nopenReq=").encode())
        raw = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 408") and b'"code":"20000"' in raw, raw[:300]
        async with db_pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM realtime_requests WHERE ebp_code = $1", EBP_CODE) == 0


async def test_payment_data_with_what_no_text_holds_or_no_time_is_refused(db_pool: asyncpg.Pool) -> None:
    """A NUL or a lone surrogate in payment data was a 500 from the database; a tradingTime of 14 digits that make no
    time was taken."""
    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        data = samples.payment_data(parcel(73))
        for value in ("张三\x00", "张三\ud800", "\x01"):
            bad = json.loads(json.dumps(data))
            bad["payExchangeInfoHead"]["note"] = value
            r = await api.request("POST", "/v1/payment-data", data=json.dumps(bad).encode(), key=PLATFORM_A,
                                  content_type="application/json")  # fmt: skip
            assert r.status == 400 and r.body["error"]["issues"][0]["code"] == "parse.invalid_json", (value, r.body)
        bad = json.loads(json.dumps(data))
        bad["payExchangeInfoHead"]["tradingTime"] = "20261131120000"
        r = await api.request("POST", "/v1/payment-data", json_body=bad, key=PLATFORM_A)
        assert r.status == 422 and [i["code"] for i in r.body["error"]["issues"]] == ["realtime.invalid_time"], r.body
        assert (await api.request("POST", "/v1/payment-data", json_body=data, key=PLATFORM_A)).status == 201


async def test_digits_that_are_no_ascii_digits_are_no_numbers() -> None:
    """str.isdigit takes '³' (int() does not) and '１' (int() does): a buyer's ID number with one crashed the
    reconciliation of its shipment; the others read them as numbers where none are."""
    from gateway import db, keystate, receipts, reconcile, summary

    assert reconcile.id_number_problem("46010019900101123³") is not None
    assert reconcile.id_number_problem("４６０１００１９９００１０１１２３４") is not None
    assert db.row_id("³") is None and db.row_id("１") is None and db.row_id("12") == 12
    assert receipts.normalise("-³") == "-³" and receipts.normalise("１２０") == "１２０"
    assert receipts.normalise("0120") == "120"
    assert summary._number("³") == (1 << 31, "³")
    assert keystate.ledger_year({"declTime": "２０２６1120"}) == keystate.ledger_year({})
