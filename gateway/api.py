"""HTTP API (aiohttp): the edge where messages are received and answers are given.

Every answer is JSON. Every error has the shape ``{"error": {"status", "title", "issues": [...]}}``
where each issue is ``{layer, code, path, message}``; nothing raises through to the client as a
stack trace. Handlers stay thin: the pipeline and the store do the work.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import cbec_queue
import orjson
import structlog
from aiohttp import web
from lxml import etree

from adapters import warehouse
from gateway import csvexport, db, realtime, receipts, summary, taxbills
from gateway.auth import (
    KeyRing,
    Principal,
    SharedRates,
    answer_view,
    finding_sides,
    findings_view,
    message_view,
    readable_sides,
    shipment_view,
)
from gateway.config import RealtimeSettings, Role, Settings, key_digest
from gateway.console import setup_console
from gateway.console.queries import (
    DEAD_TOTAL,
    awaited_documents,
    callback_delivery,
    queue_stats,
    read_warehouse_cancels,
    receipts_awaited,
    unmatched_receipts,
    with_deliveries,
)
from gateway.errors import Issue, Layer, MessageRejected
from gateway.forward import SHIPMENT_CUSTOMS_STATUSES, Router
from gateway.ingestlink import IngestUnavailable
from gateway.messages import FLOWS
from gateway.metrics import METRICS, RAW_BODY, setup_metrics
from gateway.openapi import OPENAPI
from gateway.outbox import Outbox, documents_by_guid, read_warehouse_callbacks
from gateway.pipeline import Forbidden, Ingest, Pipeline
from gateway.reconcile import ShipmentState
from gateway.render import read_json, with_pointers
from gateway.schema import SchemaSet
from gateway.signing import Signer, SigningUnavailable, read_certificates
from gateway.store import (
    CloseRefused,
    Conflict,
    PaymentConflict,
    SessionTaken,
    Store,
    close_payment_question,
    close_reason,
    close_unmatched_receipt,
    close_warehouse_cancel,
    payment_data_of_shipment,
    quota_reassessor,
    read_payment_data,
    read_payment_questions,
    read_pending_summaries,
    refusals_restorer,
    store_payment_data,
    take_payment_question,
    withdraw_payment_data,
)
from gateway.turns import Turns
from gateway.ukey import UKeySigner

log = structlog.get_logger("gateway.api")

PIPELINE = web.AppKey("pipeline", Pipeline)
TURNS = web.AppKey("turns", Turns)
STORE = web.AppKey("store", Store)
KEYS = web.AppKey("keys", KeyRing)
POOL = web.AppKey("pool", asyncpg.Pool)
OUTBOX = web.AppKey("outbox", Outbox)
#: Set once the process stops (SIGTERM): /healthz answers 503 "stopping" while what runs finishes (and, for
#: shutdown_drain_s, new requests are still answered), so that a load balancer sends it nothing more.
STOPPING = web.AppKey("stopping", asyncio.Event)

PRINCIPAL = web.RequestKey("principal", Principal)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, default=_default, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def error_response(status: int, title: str, issues: list[Issue] | None = None) -> web.Response:
    return json_response(
        {"error": {"status": status, "title": title, "issues": [i.as_dict() for i in issues or []]}}, status
    )


def _status_for(issues: list[Issue]) -> int:
    if any(i.code == "parse.too_large" for i in issues):
        return 413
    if any(i.code == "parse.body_timeout" for i in issues):
        return 408
    if any(i.layer is Layer.PARSE for i in issues):
        return 400
    return 422




#: The path whose last part is a secret (a 179 platform's token): logged without it.
_SECRET_PATH = "/ceb/platDataOpen/"


def logged_path(path: str) -> str:
    """The path as the log writes it: a platform's token hidden (whoever reads the log must not be able to make the
    gateway upload a platform's payment data)."""
    return _SECRET_PATH + "***" if path.startswith(_SECRET_PATH) else path


#: A client's X-Request-Id the gateway logs and echoes: up to 128 visible ASCII characters (a uuid, a trace id).
_REQUEST_ID = re.compile(r"[!-~]{1,128}")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id", "")
    if not _REQUEST_ID.fullmatch(request_id):  # none, or not one to log and echo: our own, 32 hex digits
        request_id = os.urandom(16).hex()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        query = request.query if request.query_string else None  # most requests have none: no MultiDict
        if "\x00" in request.path or (query and any("\x00" in k or "\x00" in v for k, v in query.items())):
            # PostgreSQL's text holds no NUL: refused here, once, rather than failing in some query
            response = error_response(400, "NUL characters are not allowed in the path or the query")
        else:
            response = await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        response = error_response(413, "body too large", [Issue(Layer.PARSE, "parse.too_large", "/", exc.text or "")])
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.reason)
        if "Allow" in exc.headers:  # a 405 says which methods the path takes
            response.headers["Allow"] = exc.headers["Allow"]
    except ConnectionResetError:
        # the client went away while its request was read or answered: no one to answer, nothing failed here (a 5xx
        # would page the operators); 499, nginx's "client closed request", for the log and the figures
        log.info("client_gone", path=logged_path(request.path))
        response = error_response(499, "the client closed the connection")
    except Exception as exc:
        if db.database_away(exc) or isinstance(exc, IngestUnavailable):
            # nothing was stored (a message is acknowledged only once committed): the client may send it again
            log.warning("database_unavailable", path=logged_path(request.path),
                        error=f"{exc.__class__.__name__}: {exc}")  # fmt: skip
            response = error_response(503, f"the database is unavailable; try again (request id {request_id})")
            response.headers["Retry-After"] = "5"
        else:
            log.exception("unhandled_error", path=logged_path(request.path))
            response = error_response(500, f"internal error (request id {request_id})")
    response.headers["X-Request-Id"] = request_id
    if request.get(CLOSE_AFTER):
        response.force_close()
    log.info(
        "request",
        method=request.method,
        path=logged_path(request.path),
        status=response.status,
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return response


def _principal(request: web.Request) -> Principal:
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:  # every /v1 route goes through auth_middleware; this is a programming error
        raise web.HTTPUnauthorized()
    return principal


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    presented = request.headers.get("X-API-Key")
    auth = request.headers.get("Authorization", "")
    if not presented and auth.lower().startswith("bearer "):
        presented = auth[7:].strip()
    principal = request.app[KEYS].authenticate(presented)
    if principal is None:
        return error_response(401, "missing or unknown API key (send X-API-Key or Authorization: Bearer)")
    request[PRINCIPAL] = principal
    structlog.contextvars.bind_contextvars(principal=principal.name)
    wait = principal.throttled()
    if wait is not None:  # before the body is read: a flood costs the gateway as little as it can
        assert principal.bucket is not None
        rate = principal.bucket.rate
        response = error_response(429, f"too many requests for this API key: {rate.per_s:g} a second, in bursts of "
                                  f"{rate.burst:g}; send again in {wait:.1f} s")  # fmt: skip
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    if principal.role is Role.CUSTOMS and not (request.method == "POST" and request.path == "/v1/receipts"):
        return error_response(403, "a customs key may only post receipts (POST /v1/receipts)")
    if principal.role is Role.WAREHOUSE and not (request.method == "POST" and request.path == WAREHOUSE_CALLBACKS):
        return error_response(403, f"a warehouse key may only post its orders' callbacks (POST {WAREHOUSE_CALLBACKS})")
    return await handler(request)


#: Set on a request whose connection must close once it is answered (its body could not be read to its end).
CLOSE_AFTER = web.RequestKey("close_after", bool)

#: How long a request's body may take to arrive, from the handler's first read: a client that announces a length and
#: stops sending would otherwise hold its handler and connection for good (aiohttp sets no such limit).
BODY_TIMEOUT_S = 60.0


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes, within BODY_TIMEOUT_S (MessageRejected, kept among the refusals like any
    refused message: parse.too_large — told by its Content-Length before it is read, else, chunked or compressed, its
    size unknown until read, found while it is read, never read further —, parse.body_timeout, or
    parse.bad_content_encoding for a gzip / deflate body that does not decode). Kept for /metrics (RAW_BODY)."""
    if request.content_length is not None and request.content_length > limit:
        raise MessageRejected(
            [Issue(Layer.PARSE, "parse.too_large", "/", f"{request.content_length} bytes; the limit is {limit}")]
        )
    try:
        if request.content.is_eof():  # all of it came with the headers (most do): no timer to set and cancel
            body = await _read_within(request, limit)
        else:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                body = await _read_within(request, limit)
    except TimeoutError:
        raise MessageRejected([Issue(Layer.PARSE, "parse.body_timeout", "/", f"the body did not arrive within "
                                     f"{BODY_TIMEOUT_S:g} s")]) from None  # fmt: skip
    except web.RequestPayloadError as exc:  # a body its Content-Encoding does not decode (a client gone: no answer)
        # what is left of it is read no further (aiohttp would, after the answer, fail on it and drop the connection
        # before the answer went out), and the connection closes once the answer is sent
        request.content.feed_eof()
        request[CLOSE_AFTER] = True
        encoding = request.headers.get("Content-Encoding", "")
        raise MessageRejected([Issue(Layer.PARSE, "parse.bad_content_encoding", "/",
                                     f"the body does not decode as its Content-Encoding {encoding!r} says "
                                     f"({exc.__class__.__name__})")]) from None  # fmt: skip
    request[RAW_BODY] = body
    return body


async def _read_within(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and not request.headers.get("Content-Encoding"):
        return await request.read()  # its length known and within the limit (client_max_size is above every limit)
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise MessageRejected([Issue(Layer.PARSE, "parse.too_large", "/",
                                         f"more than {limit} bytes; the limit is {limit}")])  # fmt: skip
    return bytes(body)


#: What an operator's key is answered when it sends what only a company declares (a message, a payment's data).
OPERATOR_DECLARES_NOTHING = ("an operator's key reads and replays; it declares nothing: send declarations with the "
                             "company's submitter key (or an admin's)")  # fmt: skip


async def post_message(request: web.Request) -> web.Response:
    pipeline = request.app[PIPELINE]
    principal = _principal(request)
    if principal.role is Role.OPERATOR:
        # it may read every enterprise's documents, not declare in their name (nor have the agent's key sign for it)
        return error_response(403, OPERATOR_DECLARES_NOTHING)
    store = request.app[STORE]
    ctype = request.content_type
    body = b""
    source = "json" if ctype == "application/json" else "xml"
    try:
        body = await _read_body(request, pipeline.max_bytes)
        # the check takes its turn (gateway.turns): the store's transactions are never queued behind a burst
        if source == "json":
            turns = request.app[TURNS]
            rendered = await turns.run(pipeline.render_json_body, body)
            await pipeline.sign(rendered)  # a UKey's signature, awaited between the turns (gateway.ukey)
            checked = await turns.run(pipeline.check_rendered, rendered)
        elif ctype in ("application/xml", "text/xml", "application/octet-stream", ""):
            if ctype in ("application/octet-stream", "") and body.lstrip()[:1] in (b"{", b"["):
                # read as XML it would be "not well-formed": the sender forgot the header, say so
                return error_response(415, f"a body sent as {ctype or 'no Content-Type'} is read as XML, and this one "
                                      "looks like JSON: send it with Content-Type: application/json")  # fmt: skip
            checked = await request.app[TURNS].run(pipeline.check, body)
        else:
            return error_response(415, f"unsupported Content-Type {ctype}; send application/xml or application/json")
        structlog.contextvars.bind_contextvars(guid=checked.message.guid, message_type=checked.message.type.code)
        result = await pipeline.submit(checked, principal, source=source)
    except MessageRejected as exc:
        status = _status_for(exc.issues)
        issues = with_pointers(exc.message_type, exc.issues) if source == "json" else exc.issues
        await _record_rejection(store, body, principal.name, exc.guid, exc.message_type, issues, status)
        log.info("message_rejected", message_type=exc.message_type, codes=[i.code for i in exc.issues[:10]])
        return error_response(status, "the message was rejected", issues)
    except SigningUnavailable as exc:
        # the gateway's key, not the message: not kept among the refused messages (the sender sends it again once
        # the key is renewed); the operators see it here, in the 5xx share and in the certificate's expiry metric
        log.error("json_declaration_not_signed", code=exc.code, reason=exc.message)
        response = error_response(503, "the gateway cannot sign this declaration now; nothing was stored",
                                  [Issue(Layer.RULE, exc.code, "/", exc.message)])  # fmt: skip
        if exc.code in ("signing.ukey_unreachable", "signing.ukey_busy"):  # passes by itself; the others need people
            response.headers["Retry-After"] = "30" if exc.code == "signing.ukey_unreachable" else "5"
        return response
    except Forbidden as exc:  # kept as well: a seller's key set up without the codes it sends shows here
        guid, code = checked.message.guid, checked.message.type.code
        issues = with_pointers(code, exc.issues) if source == "json" else exc.issues
        await _record_rejection(store, body, principal.name, guid, code, issues, 403)
        return error_response(403, "the API key may not submit these documents", issues)
    except Conflict as exc:
        guid, code = checked.message.guid, checked.message.type.code
        issues = with_pointers(code, exc.issues) if source == "json" else exc.issues
        if any(i.code == "auth.not_your_document" for i in issues):  # another tenant's stored document
            await _record_rejection(store, body, principal.name, guid, code, issues, 403)
            return error_response(403, "the API key may not change these documents", issues)
        await _record_rejection(store, body, principal.name, guid, code, issues, 409)
        return error_response(409, "the message conflicts with what is stored", issues)
    shipments = [f"{s['ebpCode']}/{s['orderNo']}" for s in result.body.get("shipments", [])]
    structlog.contextvars.bind_contextvars(shipment=shipments[0] if len(shipments) == 1 else shipments)
    headers = {"Location": f"/v1/messages/{result.guid}"}
    if result.replay:
        headers["Idempotent-Replay"] = "true"
    findings = [f for s in result.body.get("shipments") or () for f in s.get("findings") or ()]
    answer = answer_view(principal, result.body, await _readable(request, principal, findings, result.sides))
    return json_response(answer, result.http_status, headers)


# --- the 179 real-time payment data (gateway/realtime.py) -----------------------------------------------------


@dataclass
class RealtimeDoor:
    """The platforms whose payment data the gateway uploads when customs asks: each one's ebpCode by the digest of
    its URL token (looked up by digest, as API keys are), and the endpoint the uploads are queued for. Renewed in
    place by a reload (a token rotated, a platform added or removed)."""

    platforms: dict[bytes, str]
    endpoint: str
    previous: frozenset[bytes] = frozenset()  # the digests of the platforms' previous tokens (previous_token)

    @classmethod
    def of(cls, settings: RealtimeSettings) -> RealtimeDoor:
        return cls({key_digest(t): p.ebp_code for p in settings.platforms for t in p.tokens}, settings.endpoint,
                   frozenset(key_digest(p.previous_token) for p in settings.platforms if p.previous_token))  # fmt: skip

    def renew(self, settings: RealtimeSettings) -> None:
        fresh = RealtimeDoor.of(settings)
        self.platforms, self.previous = fresh.platforms, fresh.previous  # no await between: a question sees either

    @property
    def ebp_codes(self) -> frozenset[str]:
        return frozenset(self.platforms.values())


REALTIME = web.AppKey("realtime", RealtimeDoor)
#: customs' question is a small form; anything bigger is not one
_QUESTION_MAX_BYTES = 16 * 1024
#: how long customs' question may take to arrive once its headers have (a few hundred bytes): the URL has no API key,
#: and a body that trickles in would hold its handler and connection for good
QUESTION_TIMEOUT_S = 10.0


def _now_ms() -> int:
    return int(time.time() * 1000)


async def post_payment_data(request: web.Request) -> web.Response:
    """A payment's raw data (spec §10.2) from the platform (a submitter's key holding its ebpCode), committed before
    the 201/200: what the gateway uploads when customs asks about one of its orders."""
    principal = _principal(request)
    if principal.role is Role.OPERATOR:
        return error_response(403, OPERATOR_DECLARES_NOTHING)
    if request.content_type != "application/json":
        return error_response(415, "send the payment data as application/json")
    try:
        body = await _read_body(request, request.app[PIPELINE].max_bytes)
    except MessageRejected as exc:  # larger than max_body_bytes
        return error_response(_status_for(exc.issues), "the payment data was rejected", exc.issues)
    try:
        payload = read_json(body)
    except ValueError as exc:
        return error_response(400, "the body is not JSON", [Issue(Layer.PARSE, "parse.invalid_json", "", str(exc))])
    data, issues = realtime.payment_data(payload)
    if data is None:
        return error_response(422, "the payment data was rejected", issues)
    if not principal.may_touch({data.ebp_code}):
        return error_response(403, f"the API key does not hold the enterprise code {data.ebp_code}")
    if data.ebp_code not in request.app[REALTIME].ebp_codes:
        return error_response(422, "the payment data was rejected", [Issue(
            Layer.RULE, "realtime.not_configured", f"/{realtime.HEAD}/ebpCode",
            f"the gateway uploads no payment data for platform {data.ebp_code}: it is none of [[realtime.platforms]]")])
    try:
        stored = await store_payment_data(request.app[POOL], data, principal.name)
    except PaymentConflict as exc:
        return error_response(409, "the payment data conflicts with what is stored", [Issue(
            Layer.RULE, "realtime.payment_of_another_order", f"/{realtime.LISTS}",
            f"{exc}: hand that payment over again without them, or withdraw it (DELETE "
            f"/v1/payment-data/{data.ebp_code}/{exc.order_nos[0]})")])  # fmt: skip
    log.info("payment_data_stored", ebp_code=data.ebp_code, orders=len(data.order_nos), outcome=stored["outcome"])
    return json_response(stored, 201 if stored["outcome"] == "created" else 200)


async def get_payment_data(request: web.Request) -> web.Response:
    """An order's stored payment data and customs' questions about it (with their uploads' outcome)."""
    principal = _principal(request)
    ebp_code, order_no = request.match_info["ebpCode"], request.match_info["orderNo"]
    if not principal.may_touch({ebp_code}):
        return error_response(404, "no payment data of that order")
    found = await read_payment_data(request.app[POOL], ebp_code, order_no)
    if found["payment"] is None and not found["questions"]:
        return error_response(404, "no payment data of that order")
    return json_response(found)


async def delete_payment_data(request: web.Request) -> web.Response:
    """The payment that paid an order withdrawn whole, by its platform (a key that could hand it over): one handed
    over in error, or an order paid again under another payTransactionId — one payment's order is taken by no other
    (409), and a payment lists one order at least, so without this the order stayed with it for good."""
    principal = _principal(request)
    if principal.role is Role.OPERATOR:  # as its hand-over: the platform's act, not the zone's staff's
        return error_response(403, OPERATOR_DECLARES_NOTHING)
    ebp_code, order_no = request.match_info["ebpCode"], request.match_info["orderNo"]
    if not principal.may_touch({ebp_code}):
        return error_response(404, "no payment data of that order")
    withdrawn = await withdraw_payment_data(request.app[POOL], ebp_code, order_no)
    if withdrawn is None:
        return error_response(404, "no payment data of that order")
    log.info("payment_data_withdrawn", ebp_code=ebp_code, pay_transaction_id=withdrawn["payTransactionId"],
             orders=len(withdrawn["orderNos"]))  # fmt: skip
    return json_response(withdrawn)


async def list_payment_questions(request: web.Request) -> web.Response:
    """Customs' 179 questions, newest first, with what became of each upload: ``state=open`` (the default: asked or
    refused and not closed, those that may need a look), ``closed``, ``asked``, ``refused``, ``uploaded`` or ``any``;
    ``ebpCode`` one platform.
    An operator's key sees every platform's, a submitter's those of the platforms it holds."""
    principal = _principal(request)
    q = request.query
    wanted = q.get("ebpCode") or None
    platforms: list[str] | None = None if principal.sees_everything else sorted(principal.codes)
    if wanted is not None:
        platforms = [wanted] if platforms is None or wanted in platforms else []
    try:
        limit = _limit(q)
        async with request.app[POOL].acquire() as conn:
            page = await read_payment_questions(conn, state=q.get("state", "open"), ebp_codes=platforms, limit=limit,
                                                cursor=q.get("cursor") or None)  # fmt: skip
    except ValueError as exc:
        return error_response(400, f"bad query parameter: {exc}")
    return json_response(page)


async def plat_data_open(request: web.Request) -> web.Response:
    """Customs asks the platform for an order's payment data (``platDataOpen``, spec §10.1) at the URL the platform
    registered: the question and its upload's job are committed, then answered 10000 at once; the upload follows
    through the retry queue (it waits there for payment data not handed over yet). No API key: the URL's token is
    the platform's secret."""
    door = request.app[REALTIME]
    digest = key_digest(request.match_info["token"])
    ebp_code = door.platforms.get(digest)
    if ebp_code is None:
        return error_response(404, "not found")
    # customs still asking at the URL before a rotation: the operators drop previous_token once it no longer does
    via = "previous_token" if digest in door.previous else "token"
    if request.content_length is not None and request.content_length > _QUESTION_MAX_BYTES:
        return json_response(realtime.reply(realtime.FAILURE, "the question is too large", _now_ms()), 413)
    try:
        async with asyncio.timeout(QUESTION_TIMEOUT_S):
            # the limit holds however the body comes: chunked or compressed, no Content-Length tells its size first
            form = await request.clone(client_max_size=_QUESTION_MAX_BYTES).post()
    except web.HTTPRequestEntityTooLarge:
        request[CLOSE_AFTER] = True  # the rest of it is not read
        return json_response(realtime.reply(realtime.FAILURE, "the question is too large", _now_ms()), 413)
    except TimeoutError:
        request[CLOSE_AFTER] = True
        return json_response(realtime.reply(realtime.FAILURE, f"the question did not arrive within "
                                            f"{QUESTION_TIMEOUT_S:g} s", _now_ms()), 408)  # fmt: skip
    except (ValueError, LookupError, web.RequestPayloadError) as exc:  # a broken multipart, an unknown charset
        return json_response(realtime.reply(realtime.FAILURE, f"the form cannot be read: {exc}", _now_ms()), 400)
    raw = form.get("openReq")
    question = realtime.open_request(raw if isinstance(raw, str) else None)
    if isinstance(question, str):
        log.warning("payment_question_refused", ebp_code=ebp_code, reason=question)
        return json_response(realtime.reply(realtime.FAILURE, question, _now_ms()))
    try:
        request_id, new = await take_payment_question(request.app[POOL], ebp_code, question, endpoint=door.endpoint)
    except SessionTaken as exc:  # 10000 would promise an upload that never comes: the session's is the first order's
        log.warning("payment_question_refused", ebp_code=ebp_code, reason=str(exc), order_no=question.order_no,
                    asked_before=exc.order_no)  # fmt: skip
        return json_response(realtime.reply(realtime.FAILURE, f"{exc}: a new question needs a session of its own",
                                            _now_ms()))  # fmt: skip
    except Exception as exc:
        if not db.database_away(exc):
            raise
        log.warning("database_unavailable", path="platDataOpen", error=f"{exc.__class__.__name__}: {exc}")
        return json_response(realtime.reply(realtime.FAILURE, "the platform cannot take the question now; ask again",
                                            _now_ms()), 503)  # fmt: skip
    log.info("payment_question_taken", ebp_code=ebp_code, order_no=question.order_no, request=request_id, new=new,
             via=via)  # fmt: skip
    return json_response(realtime.reply(realtime.SUCCESS, "", _now_ms()))


_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")


def _integer(query: Any, name: str, default: int) -> int:
    """An integer query parameter, ``default`` when absent; ValueError naming it otherwise."""
    raw = query.get(name)
    if raw is None:
        return default
    digits = raw.strip()
    if not _INTEGER.fullmatch(digits):
        raise ValueError(f"{name} must be an integer, found {raw!r}")
    return int(digits)


def _limit(query: Any) -> int:
    """A list's page size: ``limit``, default 50; more than 500 is served as 500, a page's most (ValueError when it
    is no integer, or less than 1)."""
    limit = _integer(query, "limit", 50)
    if limit < 1:
        raise ValueError(f"limit is {limit}; a page holds 1 to 500 items")
    return min(limit, 500)


def _page_query(query: Any) -> tuple[datetime | None, datetime | None, int]:
    """A list's ``since`` (inclusive) and ``until`` (exclusive) times and its ``limit`` (:func:`_limit`); ValueError
    naming the parameter that is none."""
    since = db.utc_time(query["since"], "since") if "since" in query else None
    until = db.utc_time(query["until"], "until") if "until" in query else None
    return since, until, _limit(query)


def _visible(principal: Principal, parties: Any) -> bool:
    return principal.sees_everything or principal.may_touch(parties or ())


async def _readable(
    request: web.Request, principal: Principal, findings: list[Any], known: Sequence[dict[str, Any]] = ()
) -> frozenset[tuple[str, str]]:
    """Of the documents the findings' sides name, those the key may read (gateway.auth.readable_sides): read only for
    a submitter's key and findings that name documents — and not read at all when ``known`` (a fresh answer's
    IngestResult.sides: the legs its findings compared) holds every one of them."""
    guids = finding_sides(findings)
    if principal.sees_everything or not guids:
        return frozenset()
    if guids <= {d["doc_guid"] for d in known}:
        return readable_sides(principal, known)
    return readable_sides(principal, await documents_by_guid(request.app[POOL], guids))


async def _page_view(request: web.Request, principal: Principal, items: list[dict[str, Any]]) -> None:
    """A page of shipments (the list's, the CSV's) as the key may see it: the findings' values of documents it is no
    party of withheld (gateway.auth.findings_view)."""
    findings = [f for item in items for f in item.get("findings") or ()]
    if principal.sees_everything or not findings:
        return
    readable = await _readable(request, principal, findings)
    for item in items:
        if item.get("findings"):
            item["findings"] = findings_view(principal, item["findings"], readable)


async def _record_rejection(
    store: Store, raw: bytes, submitter: str, guid: str | None, message_type: str | None, issues: list[Issue],
    status: int,
) -> None:
    """Keep a refused message for the operators. The sender's answer does not depend on it: should the audit
    write fail (the database is away), the sender still gets the refusal, and the failure is logged."""
    try:
        await store.record_rejection(raw=raw, submitter=submitter, guid=guid, message_type=message_type,
                                     issues=issues, http_status=status)  # fmt: skip
    except Exception:
        log.exception("rejection_not_recorded", message_type=message_type, status=status)


async def get_message(request: web.Request) -> web.Response:
    principal = _principal(request)
    structlog.contextvars.bind_contextvars(guid=request.match_info["guid"])
    found = await request.app[STORE].get_message(request.match_info["guid"])
    parties = {p for d in (found or {}).get("documents", []) for p in d.get("parties") or ()}
    if found is None or not _visible(principal, parties):
        # 404 rather than 403 for other tenants' messages: existence itself is not disclosed.
        return error_response(404, "no such message")
    # as a shipment shows its documents: forward state, customs status, transmissions, receipts, warehouse orders
    full = await request.app[OUTBOX].shipment_forwarding(found)
    response = full.get("response")
    findings = [f for s in (response.get("shipments") or () if isinstance(response, dict) else ())
                for f in s.get("findings") or ()]  # fmt: skip
    return json_response(message_view(principal, full, await _readable(request, principal, findings)))


#: The ebpCode in a shipment's path for a waybill-only shipment, whose ebpCode is empty (an empty path segment
#: matches no route), and in the list's ebpCode filter. No platform code is a lone hyphen.
NO_EBP_CODE = "-"


#: The query parameters of GET /v1/shipments and its CSV: any other is refused (a misspelt filter would list every
#: shipment as if it had been applied).
SHIPMENT_QUERY = frozenset({"state", "customs_status", "ebpCode", "ebcCode", "flow", "mode", "since", "until",
                            "customs_since", "customs_until", "limit", "cursor"})  # fmt: skip


def _shipment_filters(principal: Principal, q: Any) -> tuple[dict[str, Any], int]:
    """The filters of GET /v1/shipments (and of its CSV) as Store.list_shipments takes them, the key's scope
    included, and the page size; ValueError saying which parameter is wrong."""
    unknown = sorted(set(q) - SHIPMENT_QUERY)
    if unknown:
        known = ", ".join(sorted(SHIPMENT_QUERY))
        raise ValueError(f"unknown query parameter {unknown[0]!r}: the parameters are {known}")
    mode = q.get("mode")
    if mode is not None and not (len(mode) == 4 and mode.isascii() and mode.isdigit()):
        raise ValueError(f"mode {mode!r} is no trade mode (4 digits: 9610, 1210, 1239, 9710, 9810)")
    state = q.get("state")
    if state is not None and state not in {s.value for s in ShipmentState}:
        raise ValueError(f"unknown state {state!r}: one of " + ", ".join(s.value for s in ShipmentState))
    customs_status = q.get("customs_status")
    if customs_status is not None and customs_status not in SHIPMENT_CUSTOMS_STATUSES:
        raise ValueError(f"unknown customs_status {customs_status!r}: one of " + ", ".join(SHIPMENT_CUSTOMS_STATUSES))
    flow = q.get("flow")
    if flow is not None and flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}: one of " + ", ".join(sorted(FLOWS)))
    try:
        since, until, limit = _page_query(q)
        # when the customs status last changed (customs_updated_at), not the reconciliation (since, until)
        customs_since = db.utc_time(q["customs_since"], "customs_since") if "customs_since" in q else None
        customs_until = db.utc_time(q["customs_until"], "customs_until") if "customs_until" in q else None
    except ValueError as exc:
        raise ValueError(f"bad query parameter: {exc}") from None
    ebp_code = q.get("ebpCode")
    filters = {"state": state, "customs_status": customs_status,
               "ebp_code": "" if ebp_code == NO_EBP_CODE else ebp_code,
               "ebc_code": q.get("ebcCode"), "flow": flow, "mode": mode, "since": since, "until": until,
               "customs_since": customs_since, "customs_until": customs_until,
               "parties": None if principal.sees_everything else sorted(principal.codes)}  # fmt: skip
    return filters, limit


async def list_shipments(request: web.Request) -> web.Response:
    try:
        filters, limit = _shipment_filters(_principal(request), request.query)
    except ValueError as exc:
        return error_response(400, str(exc))
    try:
        page = await request.app[STORE].list_shipments(**filters, limit=limit, cursor=request.query.get("cursor"))
    except ValueError as exc:  # a cursor that is not one of ours
        return error_response(400, f"bad cursor: {exc}")
    await _page_view(request, _principal(request), page["items"])
    return json_response(page)


#: GET /v1/shipments.csv: what the list gives of each shipment, for a seller's spreadsheet.
SHIPMENT_CSV_COLUMNS = ("updated_at", "ebpCode", "orderNo", "ebcCode", "flow", "mode", "state", "missing",
                        "customs_status", "findings")  # fmt: skip


async def shipments_csv(request: web.Request) -> web.StreamResponse:
    """Every shipment GET /v1/shipments would list with the same filters (all its pages; the key's own for a
    submitter), as CSV for a spreadsheet (gateway.csvexport), newest first."""
    principal = _principal(request)
    try:
        filters, _ = _shipment_filters(principal, request.query)
    except ValueError as exc:
        return error_response(400, str(exc))
    store = request.app[STORE]

    async def pages() -> AsyncIterator[list[list[str]]]:
        cursor = None
        while True:
            page = await store.list_shipments(**filters, limit=csvexport.PAGE, cursor=cursor)
            await _page_view(request, principal, page["items"])
            yield [csvexport.shipment_row(item, SHIPMENT_CSV_COLUMNS) for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return await csvexport.stream(request, f"shipments-{stamp}.csv", SHIPMENT_CSV_COLUMNS, pages())


async def list_rejections(request: web.Request) -> web.Response:
    """Refused messages, newest first, with their issues: a submitter's key sees its own, an operator's every one (or
    one key's, ?submitter=)."""
    principal = _principal(request)
    q = request.query
    try:
        since, until, limit = _page_query(q)
    except ValueError as exc:
        return error_response(400, f"bad query parameter: {exc}")
    try:
        page = await request.app[STORE].list_rejections(
            submitter=q.get("submitter") if principal.sees_everything else principal.name,
            message_type=q.get("message_type"),
            code=q.get("code"),
            since=since,
            until=until,
            limit=limit,
            cursor=q.get("cursor"),
        )
    except ValueError as exc:  # a cursor that is not one of ours
        return error_response(400, f"bad cursor: {exc}")
    return json_response(page)


async def get_rejection(request: web.Request) -> web.Response:
    """One refused message, its issues and the first 64 KiB of what was sent."""
    principal = _principal(request)
    rejection_id = db.row_id(request.match_info["id"])
    found = await request.app[STORE].get_rejection(rejection_id) if rejection_id is not None else None
    if found is None or not (principal.sees_everything or found["submitter"] == principal.name):
        return error_response(404, "no such rejection")  # another key's: not disclosed
    return json_response(found)


async def pending_summaries(request: web.Request) -> web.Response:
    """A consignor's export inventories awaiting their summary declaration (``ebcCode``, one the key holds; any for
    operators and admins, who may leave it out for every consignor's), newest first: what its next summary application
    (CEB701) may name."""
    principal = _principal(request)
    q = request.query
    ebc_code = (q.get("ebcCode") or "").strip() or None
    if ebc_code is None and not principal.sees_everything:
        return error_response(400, "name the consignor: ebcCode (one the API key holds)")
    if not (principal.sees_everything or ebc_code in principal.codes):
        return error_response(403, f"the API key does not hold the enterprise code {ebc_code}")
    try:
        page = await read_pending_summaries(request.app[STORE].pool, ebc_code, limit=_limit(q),
                                           cursor=q.get("cursor") or None)  # fmt: skip
    except ValueError as exc:
        return error_response(400, f"bad query parameter: {exc}")
    return json_response(page)


async def get_summary(request: web.Request) -> web.Response:
    """A summary application (CEB701) with its forwarding, its CEB702 receipts (its preNo, sumNo and status) and
    customs' summary results (CEB792: the declarations and the inventory items that went into each)."""
    principal = _principal(request)
    agent_code, cop_no = request.match_info["agentCode"], request.match_info["copNo"]
    found = await request.app[STORE].get_summary(agent_code, cop_no)
    parties = {p for d in (found or {}).get("documents", []) for p in d.get("parties") or ()}
    if found is None or not _visible(principal, parties):
        return error_response(404, "no such summary application")
    view = await request.app[OUTBOX].shipment_forwarding(found)
    return json_response(summary.add_results(view))


async def get_shipment(request: web.Request) -> web.Response:
    principal = _principal(request)
    structlog.contextvars.bind_contextvars(shipment=f"{request.match_info['ebpCode']}/{request.match_info['orderNo']}")
    ebp_code = request.match_info["ebpCode"]
    found = await request.app[STORE].get_shipment("" if ebp_code == NO_EBP_CODE else ebp_code,
                                                  request.match_info["orderNo"])  # fmt: skip
    if found is None or not _visible(principal, found.get("parties")):
        return error_response(404, "no such shipment")
    # the tax bills are read off the whole shipment (their inventory's receipts, its estimate), then cut to the key
    full = taxbills.add_to_shipment(await request.app[OUTBOX].shipment_forwarding(found), request.app[STORE].tax_rates)
    view = shipment_view(principal, full)
    if view.get("flow") == "import" and principal.may_touch({view.get("ebpCode") or ""}):  # the platform's own
        async with request.app[POOL].acquire() as conn:
            paid = await payment_data_of_shipment(conn, view["ebpCode"], view["orderNo"])
        if paid is not None:
            view["payment_data"] = paid
    return json_response(view)


async def post_receipts(request: web.Request) -> web.Response:
    """Customs receipts (bare CEB312/412/512/514/622/624/626/712/900, export CEB304/404/506/508/510/604/606/608/702/
    214/216, or in a DxpMsg), tax bills (CEB816/818) and summary results (CEB792): stored once, applied."""
    principal = _principal(request)
    if principal.role not in (Role.CUSTOMS, Role.ADMIN):
        return error_response(403, "only customs (and admin) keys may post receipts")
    pipeline = request.app[PIPELINE]
    body = b""
    try:
        if request.content_type not in ("application/xml", "text/xml", "application/octet-stream", ""):
            return error_response(415, f"unsupported Content-Type {request.content_type}; send application/xml")
        body = await _read_body(request, pipeline.max_bytes * 2)  # a DxpMsg carries base64: a third more
        read = functools.partial(receipts.read, max_bytes=pipeline.max_bytes)
        intake = await request.app[TURNS].run(read, body, pipeline.schemas)  # its turn, as a message's check
    except MessageRejected as exc:
        status = _status_for(exc.issues)
        await request.app[STORE].record_rejection(
            raw=body, submitter=principal.name, guid=None, message_type=exc.message_type, issues=exc.issues,
            http_status=status,
        )  # fmt: skip
        log.info("receipt_rejected", codes=[i.code for i in exc.issues[:10]])
        return error_response(status, "the receipt was rejected", exc.issues)
    results = await request.app[OUTBOX].apply_receipts(intake, source="http", submitter=principal.name)
    duplicates = sum(r.outcome == receipts.Outcome.DUPLICATE for r in results)
    log.info("receipt_received", message_type=intake.message_type, outcomes=[r.outcome for r in results])
    return json_response(
        {
            "message_type": intake.message_type,
            "guid": intake.root_guid,
            "cop_msg_id": intake.cop_msg_id,
            "stored": len(results) - duplicates,
            "already_stored": duplicates,
            "receipts": [r.as_dict() for r in results],
        }
    )


#: Where warehouses report on the orders the gateway sent them (adapters/warehouse.py's callback contract).
WAREHOUSE_CALLBACKS = "/v1/warehouse/callbacks"


async def post_warehouse_callback(request: web.Request) -> web.Response:
    """A warehouse's status of an order the gateway sent it: stored once (a repeat answers ``stored`` false), shown
    on the document the order was made from (its reference), the furthest status being the order's."""
    principal = _principal(request)
    if principal.role not in (Role.WAREHOUSE, Role.ADMIN):
        return error_response(403, "only warehouse (and admin) keys may post warehouse callbacks")
    try:
        body = await _read_body(request, 64 * 1024)  # a status line of one order: a few hundred bytes
    except MessageRejected as exc:
        return error_response(_status_for(exc.issues), "the callback was rejected", exc.issues)
    try:
        callback = warehouse.parse_callback(body)
    except ValueError as exc:
        issue = Issue(Layer.SCHEMA, "warehouse.bad_callback", "/", str(exc))
        log.info("warehouse_callback_rejected", reason=str(exc))
        return error_response(422, "the callback was rejected", [issue])
    stored, linked, status = await request.app[OUTBOX].record_warehouse_callback(callback, principal.name)
    log.info("warehouse_callback", order_id=callback.order_id, status=callback.status, stored=stored, linked=linked)
    if stored and (metrics := request.app.get(METRICS)) is not None:
        metrics.observe_warehouse(callback.status, linked)
    if not linked:
        log.warning("warehouse_callback_unlinked", order_id=callback.order_id, reference=dict(callback.reference),
                    note="not an order the gateway made from a document it holds (reference, orderId)")  # fmt: skip
    return json_response({"order_id": callback.order_id, "stored": stored, "linked": linked, "status": status})


#: ?linked= of GET /v1/warehouse/callbacks: both when absent.
_LINKED = {"true": True, "false": False}


async def list_warehouse_callbacks(request: web.Request) -> web.Response:
    """The warehouses' callbacks as they came, newest first, for the operators: ``linked=false`` those placed on no
    document (an order the gateway did not make, a reference it does not hold), which no shipment shows."""
    if (denied := _operator(request)) is not None:
        return denied
    q = request.query
    try:
        since, until, limit = _page_query(q)
        if q.get("linked", "") not in ("", *_LINKED):
            raise ValueError(f"linked must be true or false, found {q['linked']!r}")
        statuses = [x.strip() for x in q.get("status", "").split(",") if x.strip()]
        if unknown := [x for x in statuses if x not in warehouse.CALLBACK_STATUSES]:
            raise ValueError(f"status must be one of {', '.join(warehouse.CALLBACK_STATUSES)} (or several, separated "
                             f"by commas), found {unknown[0]!r}")  # fmt: skip
    except ValueError as exc:
        return error_response(400, f"bad query parameter: {exc}")
    try:
        async with request.app[POOL].acquire() as conn:
            page = await read_warehouse_callbacks(
                conn, linked=_LINKED.get(q.get("linked", "")), submitter=q.get("submitter") or None,
                order_id=q.get("order_id") or None, statuses=statuses or None, since=since, until=until,
                limit=limit, cursor=q.get("cursor") or None,
            )  # fmt: skip
            await with_deliveries(conn, page["items"], callback_delivery)
    except ValueError as exc:  # a cursor that is not one of ours
        return error_response(400, f"bad cursor: {exc}")
    return json_response(page)


#: Where the operators read and close the cancels the gateway asked of warehouses.
WAREHOUSE_CANCELS = "/v1/warehouse/cancels"


async def list_warehouse_cancels(request: web.Request) -> web.Response:
    """The cancels the gateway asked of warehouses, newest first (operator / admin): ``state=open`` (the default)
    those that need a look — the warehouse went on with the order after it, refused it, or did not confirm it within
    forwarding.warehouse_cancel_timeout_s —, ``closed``, ``any``."""
    if (denied := _operator(request)) is not None:
        return denied
    q = request.query
    try:
        limit = _limit(q)
        async with request.app[POOL].acquire() as conn:
            page = await read_warehouse_cancels(conn, state=q.get("state", "open"), limit=limit,
                                                cursor=q.get("cursor") or None)  # fmt: skip
    except ValueError as exc:
        return error_response(400, f"bad query parameter: {exc}")
    return json_response(page)


async def get_unmatched_receipts(request: web.Request) -> web.Response:
    """The customs receipts kept unmatched, newest first (operator / admin): customs' word on documents the gateway
    could not find — declared around it, or keys that differ — which no shipment shows."""
    if (denied := _operator(request)) is not None:
        return denied
    q = request.query
    try:
        limit = _limit(q)
        async with request.app[POOL].acquire() as conn:
            page = await unmatched_receipts(conn, state=q.get("state", "open"),
                                            message_type=q.get("message_type") or None, limit=limit,
                                            cursor=q.get("cursor") or None)  # fmt: skip
    except ValueError as exc:
        return error_response(400, f"bad query parameter: {exc}")
    return json_response(page)


#: A close's body is one short reason: a few kilobytes are plenty.
_CLOSE_BODY_MAX = 4096


async def _close_request(request: web.Request, noun: str) -> tuple[int, str] | web.Response:
    """The id of the ``noun`` in the path and the reason in the body of a close (operator / admin), or the error
    answer."""
    if (denied := _operator(request)) is not None:
        return denied
    row_id = db.row_id(request.match_info["id"])
    if row_id is None:
        return error_response(404, f"no {noun} {request.match_info['id']!r}: its id is a positive integer")
    try:
        reason = close_reason(read_json(await _read_body(request, _CLOSE_BODY_MAX) or b"{}"))
    except MessageRejected as exc:
        return error_response(_status_for(exc.issues), "the body was not read", exc.issues)
    except ValueError as exc:
        return error_response(400, f"bad body: {exc}")
    return row_id, reason


Close = Callable[..., Awaitable[dict[str, Any]]]


def _close_handler(noun: str, close: Close, doc: str) -> Handler:
    """POST .../{id}/close of what an operator closes once it can never be settled here (store.close_*): the closed
    row, or 403 / 404 / 409 (CloseRefused) / 4xx of the body."""

    async def handler(request: web.Request) -> web.Response:
        asked = await _close_request(request, noun)
        if isinstance(asked, web.Response):
            return asked
        row_id, reason = asked
        try:
            closed = await close(request.app[POOL], row_id, by=_principal(request).name, reason=reason)
        except CloseRefused as exc:
            return error_response(exc.status, str(exc))
        return json_response(closed)

    handler.__doc__ = doc
    return handler


post_close_unmatched_receipt = _close_handler(
    "receipt", close_unmatched_receipt, "Close a receipt kept unmatched that no document will ever answer, with a "
    "short reason (operator / admin): it leaves the open list and cbec_receipts_unmatched; linked as any should its "
    "document come after all.")
post_close_payment_question = _close_handler(
    "question", close_payment_question, "Close a 179 question that can never be answered, with a short reason "
    "(operator / admin): it leaves the open list and cbec_payment_data_questions; its upload's job ends without "
    "uploading (store.close_payment_question).")
post_close_warehouse_cancel = _close_handler(
    "warehouse cancel", close_warehouse_cancel, "Close a warehouse cancel that needs a look, once settled with the "
    "warehouse, with a short reason (operator / admin): it leaves the open list and cbec_warehouse_cancels_open "
    "(store.close_warehouse_cancel).")


def _operator(request: web.Request) -> web.Response | None:
    """403 unless the key is an operator's or an admin's (queue pages and replays)."""
    if _principal(request).role not in (Role.OPERATOR, Role.ADMIN):
        return error_response(403, "operator or admin key required")
    return None


def _configured_endpoints(app: web.Application) -> tuple[str, ...]:
    """The queue endpoints this gateway forwards to: the queue figures list them even when idle."""
    router = app[OUTBOX].router
    return tuple(router.endpoint_kinds) if router is not None else ()


def _webhook_endpoints(app: web.Application) -> tuple[str, ...]:
    router = app[OUTBOX].router
    return tuple(n for n, kind in router.endpoint_kinds.items() if kind == "webhook") if router is not None else ()


async def get_queue(request: web.Request) -> web.Response:
    if (denied := _operator(request)) is not None:
        return denied
    async with request.app[POOL].acquire() as conn:
        endpoints = await queue_stats(conn, _configured_endpoints(request.app), _webhook_endpoints(request.app))
        awaited = await receipts_awaited(conn)
    return json_response({"endpoints": endpoints, "receipts_awaited": awaited})


async def get_awaited(request: web.Request) -> web.Response:
    """The documents sent to customs still awaiting any receipt, the longest waiting first (operator / admin)."""
    if (denied := _operator(request)) is not None:
        return denied
    q = request.query
    try:
        async with request.app[POOL].acquire() as conn:
            page = await awaited_documents(conn, limit=_limit(q), cursor=q.get("cursor") or None)
    except ValueError as exc:
        return error_response(400, f"bad query parameter: {exc}")
    return json_response(page)


async def get_dead_letters(request: web.Request) -> web.Response:
    if (denied := _operator(request)) is not None:
        return denied
    q = request.query
    try:
        limit = _limit(q)
        offset = _integer(q, "offset", 0)
    except ValueError as exc:
        return error_response(400, f"bad query parameter: {exc}")
    if not 0 <= offset <= db.MAX_BIGINT:
        return error_response(400, f"offset must be between 0 and {db.MAX_BIGINT}")
    async with request.app[POOL].acquire() as conn:
        if (endpoint := q.get("endpoint")) is not None and (unknown := await request.app[OUTBOX].unknown_endpoint(
                conn, endpoint)) is not None:  # fmt: skip
            return error_response(400, unknown)  # as a replay of it: a mistyped name is not "no dead letters"
        items = await cbec_queue.dead_letters(conn, endpoint=endpoint, limit=limit, offset=offset)
        total = await conn.fetchval(DEAD_TOTAL, endpoint)
    return json_response({"items": items, "limit": limit, "offset": offset, "total": total})



async def post_replay(request: web.Request) -> web.Response:
    """Dead letters back to the queue: {"job_ids": [...]} and / or {"endpoint": "..."} (the dead letters that match
    both), or {"all": true} alone (every one)."""
    if (denied := _operator(request)) is not None:
        return denied
    try:
        spec = read_json(await _read_body(request, 1024 * 1024) or b"{}")  # a list of ids: a megabyte is plenty
    except MessageRejected as exc:
        return error_response(_status_for(exc.issues), "the body was not read", exc.issues)
    except ValueError as exc:
        return error_response(400, "the body must be a JSON object", [Issue(Layer.PARSE, "parse.invalid_json", "",
                                                                            str(exc))])  # fmt: skip
    if not isinstance(spec, dict) or set(spec) - {"job_ids", "endpoint", "all"}:
        return error_response(400, "expected {job_ids?: [int], endpoint?: string, all?: true}")
    job_ids, endpoint, everything = spec.get("job_ids"), spec.get("endpoint"), spec.get("all") is True
    if job_ids is not None and (
        not isinstance(job_ids, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i <= db.MAX_BIGINT for i in job_ids)
    ):
        return error_response(400, "job_ids must be a list of job ids (positive integers)")
    if endpoint is not None and (not isinstance(endpoint, str) or "\x00" in endpoint):
        return error_response(400, "endpoint must be a string (without NUL characters)")
    if job_ids is None and endpoint is None and not everything:
        return error_response(400, "name job_ids, an endpoint, or all: true")
    if everything and (job_ids is not None or endpoint is not None):
        # read as a filter, "all" would add nothing to job_ids or an endpoint; read as "all", it would replay more
        # than was named: neither is a guess to make about dead letters
        return error_response(400, "all: true replays every dead letter and takes no job_ids or endpoint (they "
                                   "narrow a replay): send one or the other")  # fmt: skip
    principal = _principal(request)
    async with request.app[POOL].acquire() as conn:
        try:
            replayed = await request.app[OUTBOX].replay(conn, job_ids=job_ids, endpoint=endpoint,
                                                        everything=everything,
                                                        note=f"replayed by {principal.name} (API)")  # fmt: skip
        except ValueError as exc:  # an endpoint nothing knows
            return error_response(400, str(exc))
        answer: dict[str, Any] = {"replayed": len(replayed), "job_ids": replayed}
        if job_ids is not None:
            # a mistyped id, or one of a job that is not dead (queued, running, done), or a dead letter of another
            # endpoint than the one named: each said, not lost
            others = {r["id"]: r for r in await conn.fetch(JOBS_NOT_REPLAYED, sorted(set(job_ids) - set(replayed)))}
            answer["not_dead"] = sorted(i for i in set(job_ids) - set(replayed)
                                        if i not in others or others[i]["state"] != "dead")  # fmt: skip
            answer["other_endpoint"] = sorted(i for i, r in others.items() if r["state"] == "dead")
    log.info("dead_letters_replayed", count=len(replayed), endpoint=endpoint, job_ids=job_ids, all=everything)
    return json_response(answer)


#: The state and endpoint of jobs ($1 ids) a replay left: why each was not replayed.
JOBS_NOT_REPLAYED = "SELECT id, state, endpoint FROM jobs WHERE id = ANY ($1::bigint[])"


async def livez(request: web.Request) -> web.Response:
    """The process answers, whatever the database does: for a supervisor's liveness probe, which must not restart the
    gateway because PostgreSQL is away (/healthz says that, for readiness: the gateway answers 503 meanwhile)."""
    return json_response({"status": "ok", "process": os.getpid()})


async def healthz(request: web.Request) -> web.Response:
    if request.app[STOPPING].is_set():  # still answering, not for long: a load balancer takes it out now
        return json_response({"status": "stopping", "process": os.getpid()}, 503)
    try:
        async with request.app[POOL].acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:
        # the error's text (paths, hosts) is for the log, not for whoever asks /healthz
        log.debug("healthz_database_unavailable", error=f"{exc.__class__.__name__}: {exc}")  # probed every second
        return json_response({"status": "unavailable", "database": "unavailable"}, 503)
    # the pid tells which process answered when several share the port (cbec serve --processes)
    return json_response({"status": "ok", "database": "ok", "process": os.getpid()})


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


def create_app(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    schemas: SchemaSet | None = None,
    signer: Callable[[etree._Element], None] | UKeySigner | None = None,
    router: Router | None = None,
    ingest: Ingest | None = None,
    key_rates: SharedRates | None = None,
) -> web.Application:
    """Build the API application around an open pool (the caller owns the pool's lifetime).

    ``router`` (gateway.forward) turns forwarding on: accepted messages enqueue their deliveries in their own
    transaction. Without it nothing is enqueued; receipts are still stored and applied. ``ingest``: where accepted
    messages are stored, when not by this app's own store (gateway.ingestlink). ``key_rates``: the keys' rates, counted
    with the other API processes of the gateway (else in this process).
    """
    from gateway.tax import TaxRates

    app = web.Application(
        middlewares=[errors_middleware, auth_middleware],
        # aiohttp refuses larger bodies itself; above the largest limit of the routes' own (a receipt in a DxpMsg: twice
        # max_body_bytes, base64 inflating it), each of which gives the precise error (_read_body)
        client_max_size=2 * settings.max_body_bytes + 1024,
    )
    rates = TaxRates.from_mapping(settings.tax_rates)
    outbox = Outbox(pool, router, reassess=quota_reassessor(rates=rates, tolerance=settings.amount_tolerance),
                    restore=refusals_restorer(rates=rates, tolerance=settings.amount_tolerance))
    store = Store(pool, tax_rates=rates, tolerance=settings.amount_tolerance, outbox=outbox)
    app[POOL] = pool
    app[STORE] = store
    app[OUTBOX] = outbox
    app[STOPPING] = asyncio.Event()
    app[TURNS] = Turns()
    trusted = read_certificates(settings.trusted_certs) if settings.trusted_certs else None
    app[PIPELINE] = Pipeline(schemas or SchemaSet(), store, max_bytes=settings.max_body_bytes, signer=signer,
                             signing_agent_code=settings.signing_agent_code,
                             verify_signatures=settings.verify_signatures, trusted_certs=trusted,
                             ingest=ingest)  # fmt: skip
    app[KEYS] = KeyRing(settings.api_keys, key_rates)
    app[REALTIME] = RealtimeDoor.of(settings.realtime)
    app.router.add_post("/v1/messages", post_message)
    app.router.add_post("/v1/payment-data", post_payment_data)
    app.router.add_get("/v1/payment-data/questions", list_payment_questions)
    app.router.add_post("/v1/payment-data/questions/{id}/close", post_close_payment_question)
    app.router.add_get("/v1/payment-data/{ebpCode}/{orderNo}", get_payment_data)
    app.router.add_delete("/v1/payment-data/{ebpCode}/{orderNo}", delete_payment_data)
    app.router.add_post("/ceb/platDataOpen/{token}", plat_data_open)
    app.router.add_get("/v1/messages/{guid}", get_message)
    app.router.add_get("/v1/shipments", list_shipments)
    app.router.add_get("/v1/shipments.csv", shipments_csv)
    app.router.add_get("/v1/shipments/{ebpCode}/{orderNo}", get_shipment)
    app.router.add_get("/v1/summaries/pending", pending_summaries)
    app.router.add_get("/v1/summaries/{agentCode}/{copNo}", get_summary)
    app.router.add_get("/v1/rejections", list_rejections)
    app.router.add_get("/v1/rejections/{id}", get_rejection)
    app.router.add_post("/v1/receipts", post_receipts)
    app.router.add_get("/v1/receipts/unmatched", get_unmatched_receipts)
    app.router.add_post("/v1/receipts/unmatched/{id}/close", post_close_unmatched_receipt)
    app.router.add_post(WAREHOUSE_CALLBACKS, post_warehouse_callback)
    app.router.add_get(WAREHOUSE_CALLBACKS, list_warehouse_callbacks)
    app.router.add_get(WAREHOUSE_CANCELS, list_warehouse_cancels)
    app.router.add_post(WAREHOUSE_CANCELS + "/{id}/close", post_close_warehouse_cancel)
    app.router.add_get("/v1/queue", get_queue)
    app.router.add_get("/v1/queue/dead", get_dead_letters)
    app.router.add_get("/v1/queue/awaited", get_awaited)
    app.router.add_post("/v1/queue/replay", post_replay)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/openapi.json", openapi)
    # Behind a TLS-terminating proxy the browser's Origin is the public one, not the address the gateway listens on;
    # over https the session cookie must be Secure although the proxy speaks plain HTTP to us.
    public = settings.public_url
    pipeline = app[PIPELINE]

    def signing_valid_until() -> datetime | None:  # the signer in force now: a reload may renew it
        return pipeline.signer.valid_until if isinstance(pipeline.signer, Signer | UKeySigner) else None

    def signing_standing() -> dict[str, Any] | None:
        signer = pipeline.signer
        return signer.standing(datetime.now(UTC)) if isinstance(signer, Signer | UKeySigner) else None

    def signing_ukey_up() -> bool | None:  # None: the key is not on a UKey
        return pipeline.signer.up if isinstance(pipeline.signer, UKeySigner) else None

    setup_console(app, pool_key=POOL, keys_key=KEYS, endpoints=_configured_endpoints(app),
                  webhook_endpoints=_webhook_endpoints(app),
                  on_replayed=outbox.deliveries_replayed, tax_rates=rates,
                  allowed_origins=(public,) if public else (), signing=signing_standing,
                  payment_questions=bool(settings.realtime.platforms),
                  secure_cookie=True if public and public.startswith("https:") else None)  # fmt: skip
    metrics = setup_metrics(app, pool_key=POOL, endpoints=_configured_endpoints(app),
                            webhook_endpoints=_webhook_endpoints(app), signing_valid_until=signing_valid_until,
                            signing_ukey_up=signing_ukey_up,
                            inboxes={e.name: e.inbox for e in settings.forwarding.endpoints if e.inbox})  # fmt: skip
    store.on_committed = metrics.observe_transaction

    async def finish_batches(app: web.Application) -> None:
        # Messages already handed to the store's batcher are committed and answered before the pool closes.
        await store.aclose()

    app.on_cleanup.append(finish_batches)
    return app
