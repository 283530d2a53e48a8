"""aiohttp routes of the operators' console under ``/ops`` (see gateway/console/__init__.py and docs/console.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import cbec_queue
import structlog
from aiohttp import web

from gateway import csvexport, db, tax
from gateway.auth import KeyRing
from gateway.console import queries as q
from gateway.console.feed import Feed, Standing, Subscriber, build_summary, no_signer, to_json
from gateway.console.session import (
    CONSOLE_ROLES,
    COOKIE,
    Session,
    SessionStore,
    csrf_ok,
    origin_allowed,
)
from gateway.forward import SHIPMENT_CUSTOMS_STATUSES
from gateway.outbox import read_warehouse_callbacks
from gateway.render import read_json
from gateway.store import (
    CloseRefused,
    close_payment_question,
    close_reason,
    close_unmatched_receipt,
    close_warehouse_cancel,
    payment_data_of_shipment,
    read_payment_questions,
    read_pending_summaries,
    read_rejection,
    read_rejections,
)

log = structlog.get_logger("gateway.console")

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/ops"

#: Headers of every console response: nothing from elsewhere may load, nothing may frame the page.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}

_KEEPALIVE_S = 15.0
_CHECK_S = 1.0
_CHECK_TIMEOUT_S = 5.0  # a database that does not answer at all holds the stream no longer than the feed's poll


@dataclass
class Console:
    """Per-application state of the console."""

    pool_key: web.AppKey[asyncpg.Pool]
    keys_key: web.AppKey[KeyRing]
    sessions: SessionStore
    allowed_origins: frozenset[str]
    secure_cookie: bool | None
    customs_endpoints: str
    poll_interval: float
    endpoints: tuple[str, ...] = ()  # the configured queue endpoints, listed even when idle
    webhook_endpoints: tuple[str, ...] = ()  # of those, the sellers' webhooks (their paused sellers shown)
    on_replayed: cbec_queue.JobsHook | None = None  # what follows a replay in its transaction (gateway.outbox)
    tax_rates: tax.TaxRates = tax.DEFAULT_RATES  # the estimate a tax bill is set beside (the API's rates)
    signing: Standing = no_signer  # where the gateway's own signing key stands now (the banner)
    payment_questions: bool = False  # the gateway answers customs' 179 questions: the page shows them
    feed: Feed | None = None


CONSOLE = web.AppKey("console", Console)
SESSION = web.RequestKey("console_session", Session)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- helpers -----------------------------------------------------------------------------------------


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=to_json(body), status=status, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


def error(status: int, title: str) -> web.Response:
    # the same shape as the API's errors (gateway.api.error_response)
    return json_response({"error": {"status": status, "title": title, "issues": []}}, status)


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def _pool(request: web.Request) -> asyncpg.Pool:
    return request.app[_console(request).pool_key]


async def current_session(request: web.Request) -> Session | None:
    console = _console(request)
    return await console.sessions.get(_pool(request), request.app[console.keys_key], request.cookies.get(COOKIE))


def api(handler: Handler) -> Handler:
    """JSON endpoint: needs a session (401 otherwise); binds the operator's name to the log context."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        session = await current_session(request)
        if session is None:
            return error(401, "sign in at /ops/login first (the session is missing or has expired)")
        request[SESSION] = session
        structlog.contextvars.bind_contextvars(operator=session.name)
        return await handler(request)

    return wrapped


def mutating(handler: Handler) -> Handler:
    """State-changing endpoint: session, then same-origin Origin/Referer, then the CSRF token header."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        session = request[SESSION]
        if not origin_allowed(request, _console(request).allowed_origins, required=True):
            log.warning("console_cross_site_refused", origin=request.headers.get("Origin"), path=request.path)
            return error(403, "cross-site request refused (Origin is not this console)")
        if not csrf_ok(request, session):
            log.warning("console_csrf_refused", path=request.path)
            return error(403, "missing or wrong X-CSRF-Token header")
        return await handler(request)

    return api(wrapped)


def _static_text(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})  # fmt: skip


def _set_cookie(response: web.StreamResponse, request: web.Request, value: str, *, max_age: int | None) -> None:
    secure = _console(request).secure_cookie
    response.set_cookie(
        COOKIE,
        value,
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=request.secure if secure is None else secure,
        max_age=max_age,
    )


# --- pages -------------------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    if await current_session(request) is None:
        raise web.HTTPFound(f"{PREFIX}/login")
    return _html(_static_text("index.html"))


async def slash(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(PREFIX)


_LOGIN_MESSAGES = {
    401: "That key is not known. Paste an operator or admin API key.",
    403: "That key belongs to a submitter; only operator and admin keys may open the console.",
    400: "Paste an API key.",
}


def login_page(message: str | None = None, status: int = 200) -> web.Response:
    text = _static_text("login.html")
    note = f'<p class="login-error" role="alert">{html.escape(message)}</p>' if message else ""
    return _html(text.replace("<!--message-->", note), status)


async def login_form(request: web.Request) -> web.StreamResponse:
    if await current_session(request) is not None:
        raise web.HTTPFound(PREFIX)
    return login_page()


async def login(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    if not origin_allowed(request, console.allowed_origins, required=False):
        return login_page("Cross-site sign-in refused.", 403)
    try:
        form = await request.post()
    except (ValueError, LookupError, web.RequestPayloadError):  # a broken multipart, an unknown charset
        return login_page(_LOGIN_MESSAGES[400], 400)
    key = str(form.get("key") or "").strip()
    if not key:
        return login_page(_LOGIN_MESSAGES[400], 400)
    principal = request.app[console.keys_key].authenticate(key)
    if principal is None:
        log.warning("console_sign_in_refused", reason="unknown key")
        return login_page(_LOGIN_MESSAGES[401], 401)
    if principal.role not in CONSOLE_ROLES:
        log.warning("console_sign_in_refused", reason="role", key_name=principal.name, role=str(principal.role))
        return login_page(_LOGIN_MESSAGES[403], 403)
    pool = _pool(request)
    await console.sessions.drop(pool, request.cookies.get(COOKIE))  # a new sign-in never reuses an old session id
    session_id, session = await console.sessions.create(pool, principal, KeyRing.digest(key))
    log.info("console_signed_in", operator=session.name, role=str(session.role))
    response = web.Response(status=303, headers={"Location": PREFIX, "Cache-Control": "no-store"})
    _set_cookie(response, request, session_id, max_age=int(console.sessions.max_age_s))
    return response


@mutating
async def logout(request: web.Request) -> web.StreamResponse:
    await _console(request).sessions.drop(_pool(request), request.cookies.get(COOKIE))
    log.info("console_signed_out")
    response = json_response({"signed_out": True})
    _set_cookie(response, request, "", max_age=0)
    return response


# --- JSON endpoints ----------------------------------------------------------------------------------


@api
async def session_info(request: web.Request) -> web.StreamResponse:
    session = request[SESSION]
    console = _console(request)
    return json_response(
        {
            "name": session.name,
            "role": str(session.role),
            "csrf": session.csrf,
            "may_replay": session.may_replay,
            "customs_endpoints": console.customs_endpoints,
            "payment_questions": console.payment_questions,
        }
    )


@api
async def summary(request: web.Request) -> web.StreamResponse:
    async with _pool(request).acquire() as conn:
        return json_response(await build_summary(conn))


def _time(value: str | None, name: str) -> datetime | None:
    return db.utc_time(value, name) if value else None


_TEXT_FILTER = re.compile(r"^[\w\-./: ]{1,64}$")


def list_query(query: Any) -> q.ListQuery:
    """ListQuery from the query string; raises ValueError with a readable reason."""
    state = query.get("state", "mismatched")
    if state not in (*q.STATES, "any"):
        raise ValueError(f"unknown state {state!r}")
    texts: dict[str, str | None] = {}
    for param, attr in (
        ("orderNo", "order_no"),
        ("logisticsNo", "logistics_no"),
        ("buyerIdNumber", "buyer_id_number"),
        ("enterprise", "enterprise"),
    ):
        value = (query.get(param) or "").strip()
        if value and not _TEXT_FILTER.match(value):
            raise ValueError(f"{param} has characters no such code contains")
        texts[attr] = value or None
    flow = query.get("flow") or None
    if flow not in (None, "import", "export"):
        raise ValueError(f"unknown flow {flow!r}")
    customs_status = query.get("customs_status") or None
    if customs_status is not None and customs_status not in SHIPMENT_CUSTOMS_STATUSES:
        raise ValueError(f"unknown customs_status {customs_status!r}: one of " + ", ".join(SHIPMENT_CUSTOMS_STATUSES))
    try:
        limit = min(max(int(query.get("limit", "50")), 1), 200)
    except ValueError:
        raise ValueError("limit must be a number") from None
    ql = q.ListQuery(
        state=None if state == "any" else state,
        customs_status=customs_status,
        flow=flow,
        since=_time(query.get("since"), "since"),
        until=_time(query.get("until"), "until"),
        limit=limit,
        cursor=query.get("cursor") or None,
        **texts,
    )
    if ql.cursor:
        q.decode_cursor(ql.cursor)
    return ql


@api
async def shipments(request: web.Request) -> web.StreamResponse:
    try:
        ql = list_query(request.query)
    except ValueError as exc:
        return error(400, str(exc))
    async with _pool(request).acquire() as conn:
        return json_response(await q.list_shipments(conn, ql))


@api
async def shipments_csv(request: web.Request) -> web.StreamResponse:
    """The list as filtered, every page of it, as CSV for a spreadsheet (gateway.csvexport), newest first."""
    try:
        ql = list_query(request.query)
    except ValueError as exc:
        return error(400, str(exc))

    async def pages() -> AsyncIterator[list[list[str]]]:
        query = dataclasses.replace(ql, limit=csvexport.PAGE, cursor=None)
        while True:
            async with _pool(request).acquire() as conn:
                body = await q.list_shipments(conn, query)
            yield [q.csv_row(item) for item in body["items"]]
            if body["next_cursor"] is None:
                return
            query = dataclasses.replace(query, cursor=body["next_cursor"])

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return await csvexport.stream(request, f"shipments-{ql.state or 'any'}-{stamp}.csv", q.CSV_COLUMNS, pages())


@api
async def shipment(request: web.Request) -> web.StreamResponse:
    ebp_code = request.query.get("ebpCode", "")
    order_no = request.query.get("orderNo", "")
    if not order_no:
        return error(400, "orderNo is required (and ebpCode, empty for a shipment known only by its waybill)")
    structlog.contextvars.bind_contextvars(shipment=f"{ebp_code}/{order_no}")
    async with _pool(request).acquire() as conn:
        found = await q.shipment_detail(conn, ebp_code, order_no, _console(request).tax_rates)
        if found is not None and found.get("flow") == "import":
            found["payment_data"] = await payment_data_of_shipment(conn, ebp_code, order_no)
    if found is None:
        return error(404, "no such shipment")
    return json_response(found)


@api
async def message_xml(request: web.Request) -> web.StreamResponse:
    guid = request.match_info["guid"]
    structlog.contextvars.bind_contextvars(guid=guid)
    async with _pool(request).acquire() as conn:
        row = await conn.fetchrow(q.RAW_MESSAGE, guid)
    if row is None:
        return error(404, "no such message")
    return json_response(dict(row))


@api
async def rejections(request: web.Request) -> web.StreamResponse:
    """The newest refused messages with their issues (GET /v1/rejections's page), for the refused panel: of one
    sender (``submitter``, a key's name) or with one issue ``code`` when asked."""
    query = request.query
    try:
        async with _pool(request).acquire() as conn:
            return json_response(await read_rejections(
                conn, limit=20, cursor=query.get("cursor") or None, submitter=query.get("submitter") or None,
                code=query.get("code") or None))  # fmt: skip
    except ValueError as exc:
        return error(400, str(exc))


@api
async def rejection(request: web.Request) -> web.StreamResponse:
    """One refused message with what was sent (its first 64 KiB), for the refused panel's Sent button."""
    rejection_id = db.row_id(request.match_info["id"])
    if rejection_id is None:
        return error(404, "no such refusal")
    async with _pool(request).acquire() as conn:
        found = await read_rejection(conn, rejection_id)
    return json_response(found) if found is not None else error(404, "no such refusal")


@api
async def awaited(request: web.Request) -> web.StreamResponse:
    """The documents awaiting a customs receipt, the longest waiting first (GET /v1/queue/awaited's page of 20), for
    the queue panel."""
    try:
        async with _pool(request).acquire() as conn:
            return json_response(await q.awaited_documents(conn, cursor=request.query.get("cursor") or None))
    except ValueError as exc:
        return error(400, str(exc))


#: The warehouse panel's views: the callbacks placed on no document (no shipment shows them), and those of orders the
#: warehouse refused or cancelled (goods it will not ship), as read_warehouse_callbacks' filters.
WAREHOUSE_VIEWS: dict[str, dict[str, Any]] = {"unlinked": {"linked": False},
                                              "refused": {"statuses": ("rejected", "cancelled")}}  # fmt: skip


@api
async def warehouse_callbacks(request: web.Request) -> web.StreamResponse:
    """A page of 20 warehouse callbacks of one of the panel's views (``view``: WAREHOUSE_VIEWS, default ``unlinked``),
    newest first, as GET /v1/warehouse/callbacks gives them."""
    view = WAREHOUSE_VIEWS.get(request.query.get("view") or "unlinked")
    if view is None:
        return error(400, f"view must be one of {', '.join(WAREHOUSE_VIEWS)}")
    try:
        async with _pool(request).acquire() as conn:
            page = await read_warehouse_callbacks(conn, limit=20, cursor=request.query.get("cursor") or None, **view)
            await q.with_deliveries(conn, page["items"], q.callback_delivery)  # an inbound order's: its delivery
            return json_response(page)
    except ValueError as exc:
        return error(400, str(exc))


#: The warehouse panel's views of the cancels the gateway asked of warehouses, as q.read_warehouse_cancels' states:
#: those that need a look, or those an operator closed.
CANCEL_VIEWS = ("open", "closed")


@api
async def warehouse_cancels(request: web.Request) -> web.StreamResponse:
    """A page of 20 of the warehouse cancels of one of the panel's views (``view``: CANCEL_VIEWS, default ``open``),
    newest first, as GET /v1/warehouse/cancels gives them."""
    view = request.query.get("view") or "open"
    if view not in CANCEL_VIEWS:
        return error(400, f"view must be one of {', '.join(CANCEL_VIEWS)}")
    try:
        async with _pool(request).acquire() as conn:
            cursor = request.query.get("cursor") or None
            return json_response(await q.read_warehouse_cancels(conn, state=view, limit=20, cursor=cursor))
    except ValueError as exc:
        return error(400, str(exc))


#: The 179 panel's views, as read_payment_questions' states: the questions not uploaded (nor closed), those an
#: operator closed, or every one.
QUESTION_VIEWS = ("open", "closed", "any")


@api
async def realtime_questions(request: web.Request) -> web.StreamResponse:
    """A page of 20 of customs' 179 questions of one of the panel's views (``view``: QUESTION_VIEWS, default ``open``),
    newest first, as GET /v1/payment-data/questions gives them."""
    view = request.query.get("view") or "open"
    if view not in QUESTION_VIEWS:
        return error(400, f"view must be one of {', '.join(QUESTION_VIEWS)}")
    try:
        async with _pool(request).acquire() as conn:
            return json_response(await read_payment_questions(conn, state=view, limit=20,
                                                              cursor=request.query.get("cursor") or None))  # fmt: skip
    except ValueError as exc:
        return error(400, str(exc))


#: The unmatched receipts panel's views, as q.unmatched_receipts' states: those open, or those an operator closed.
UNMATCHED_VIEWS = ("open", "closed")


@api
async def unmatched_receipts(request: web.Request) -> web.StreamResponse:
    """A page of 20 of the customs receipts kept unmatched of one of the panel's views (``view``: UNMATCHED_VIEWS,
    default ``open``), newest first, as GET /v1/receipts/unmatched gives them."""
    view = request.query.get("view") or "open"
    if view not in UNMATCHED_VIEWS:
        return error(400, f"view must be one of {', '.join(UNMATCHED_VIEWS)}")
    try:
        async with _pool(request).acquire() as conn:
            return json_response(await q.unmatched_receipts(conn, state=view, limit=20,
                                                            cursor=request.query.get("cursor") or None))  # fmt: skip
    except ValueError as exc:
        return error(400, str(exc))


#: A close's body is one short reason.
_CLOSE_BODY_MAX = 4096

#: What closes what: the console's close routes' functions (gateway.store), by the name of what they close.
_CLOSERS = {"receipt": close_unmatched_receipt, "question": close_payment_question,
            "warehouse_cancel": close_warehouse_cancel}  # fmt: skip


async def _close(request: web.Request, noun: str) -> web.StreamResponse:
    """Close the receipt, question or warehouse cancel (``noun``) of the path with the reason of the body
    ``{"reason": "..."}``, as the API's close does, in the operator's name."""
    session = request[SESSION]
    row_id = db.row_id(request.match_info["id"])
    if row_id is None:
        return error(404, f"no {noun} {request.match_info['id']!r}: its id is a positive integer")
    structlog.contextvars.bind_contextvars(**{f"{noun}_id": row_id})
    if not session.may_replay:
        return error(403, "closing needs an operator or admin key")
    too_large = error(413, f"the body is over {_CLOSE_BODY_MAX} bytes: a reason is one short line")
    if request.content_length is not None and request.content_length > _CLOSE_BODY_MAX:
        return too_large
    try:
        body = await request.read()  # within the application's client_max_size
        if len(body) > _CLOSE_BODY_MAX:
            return too_large
        reason = close_reason(read_json(body or b"{}"))
    except ValueError as exc:
        return error(400, str(exc))
    try:
        closed = await _CLOSERS[noun](_pool(request), row_id, by=session.name, reason=reason)
    except CloseRefused as exc:
        return error(exc.status, str(exc))
    log.info("console_close", what=noun, reason=reason)
    return json_response(closed)


@mutating
async def close_receipt(request: web.Request) -> web.StreamResponse:
    return await _close(request, "receipt")


@mutating
async def close_question(request: web.Request) -> web.StreamResponse:
    return await _close(request, "question")


@mutating
async def close_cancel(request: web.Request) -> web.StreamResponse:
    return await _close(request, "warehouse_cancel")


@api
async def pending_summaries(request: web.Request) -> web.StreamResponse:
    """The export inventories awaiting their summary declaration of one consignor (``ebcCode``) or, without it, of
    every consignor, newest first, as GET /v1/summaries/pending gives them (a page of 20), for the summary panel: what
    an exporter asking the bonded zone is told it still has to summarise, and what the zone's exporters have left."""
    ebc_code = (request.query.get("ebcCode") or "").strip() or None
    try:
        return json_response(await read_pending_summaries(_pool(request), ebc_code, limit=20,
                                                          cursor=request.query.get("cursor") or None))  # fmt: skip
    except ValueError as exc:
        return error(400, str(exc))


@api
async def queue(request: web.Request) -> web.StreamResponse:
    async with _pool(request).acquire() as conn:
        console = request.app[CONSOLE]
        return json_response(await q.queue_health(conn, endpoints=console.endpoints,
                                                  webhook_endpoints=console.webhook_endpoints))  # fmt: skip


@api
async def dead_letters(request: web.Request) -> web.StreamResponse:
    """A page of the dead letters, newest first, of one ``endpoint`` or of every one (``limit`` 1 to 200, default 50,
    from ``offset``), each with the shipments it concerns (q.dead_page), for the dead letters' panel."""
    query = request.query
    endpoint = query.get("endpoint") or None
    if endpoint is not None and not _TEXT_FILTER.match(endpoint):
        return error(400, "endpoint has characters no endpoint's name contains")
    try:
        limit = min(max(int(query.get("limit", "50")), 1), 200)
        offset = int(query.get("offset", "0"))
    except ValueError:
        return error(400, "limit and offset are numbers")
    if not 0 <= offset <= db.MAX_BIGINT:
        return error(400, f"offset must be between 0 and {db.MAX_BIGINT}")
    async with _pool(request).acquire() as conn:
        return json_response(await q.dead_page(conn, endpoint=endpoint, limit=limit, offset=offset))


@mutating
async def replay(request: web.Request) -> web.StreamResponse:
    session = request[SESSION]
    try:
        job_id = int(request.match_info["id"])
    except ValueError:
        return error(400, "the job id is a number")
    if not 0 < job_id <= db.MAX_BIGINT:
        return error(400, "no job has that id")
    structlog.contextvars.bind_contextvars(job_id=job_id)
    if not session.may_replay:
        return error(403, "replaying dead letters needs an operator or admin key")
    async with _pool(request).acquire() as conn:
        count = await cbec_queue.replay(
            conn, job_ids=[job_id], note=f"replayed from the console by {session.name}",
            on_replayed=_console(request).on_replayed,
        )  # fmt: skip
        job = await cbec_queue.get_job(conn, job_id)
    if job is None:
        return error(404, f"no job {job_id}")
    if not count:
        return error(409, f"job {job_id} is not a dead letter (or a live job with its dedupe key exists)")
    log.info("console_replay", replayed=count)
    job["payload"] = q.small_payload(job["payload"])
    return json_response({"replayed": count, "job": job})


@api
async def series(request: web.Request) -> web.StreamResponse:
    try:
        minutes = min(max(int(request.query.get("minutes", "60")), 5), 24 * 60)
    except ValueError:
        return error(400, "minutes must be a number")
    console = _console(request)
    async with _pool(request).acquire() as conn:
        now = await conn.fetchval("SELECT date_trunc('minute', now())")
        since = now - timedelta(minutes=minutes - 1)
        slots = [since + timedelta(minutes=i) for i in range(minutes)]
        index = {t: i for i, t in enumerate(slots)}
        out: dict[str, Any] = {"minutes": slots, "step_s": 60}
        for name in ("accepted", "rejected", "forwarded"):
            out[name] = [0] * minutes
        for r in await conn.fetch(q.SERIES, since, console.customs_endpoints):
            i = index.get(r["t"])
            if i is not None:
                out[r["series"]][i] = int(r["n"])
        p50: list[float | None] = [None] * minutes
        p95: list[float | None] = [None] * minutes
        for r in await conn.fetch(q.RECEIPT_LATENCY_SERIES, since):
            i = index.get(r["t"])
            if i is not None:
                p50[i], p95[i] = r["p50"], r["p95"]
        out["receipt_latency"] = {"p50_s": p50, "p95_s": p95}
    return json_response(out)


@api
async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``summary`` (counts, changed shipments), ``queue``, ``status``; a comment as keep-alive."""
    console = _console(request)
    feed = console.feed
    if feed is None:
        return error(503, "the live feed is not running")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a buffering reverse proxy would hold the events back
        }
    )
    await response.prepare(request)
    sub: Subscriber = feed.subscribe()
    cookie = request.cookies.get(COOKIE)
    try:
        await response.write(b"retry: 2000\n\n")
        quiet_since = time.monotonic()
        database_away = False
        while not sub.closed:
            batch = await sub.next(_CHECK_S)
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the browser went away; noticed within _CHECK_S rather than at the next write
            try:
                async with asyncio.timeout(_CHECK_TIMEOUT_S):
                    live = await console.sessions.get(_pool(request), request.app[console.keys_key], cookie) is not None
            except Exception as exc:
                if not (db.database_away(exc) or isinstance(exc, TimeoutError)):
                    raise
                # the database away: the stream stays open and says so (the browser's reconnect would be answered 503,
                # after which EventSource gives up for good); the session, valid a moment ago, is checked again once
                # the database answers
                live = True
                if not database_away:
                    database_away = True
                    batch = [("status", {"database": "unavailable"}), *batch]
            else:
                if database_away:
                    database_away = False
                    batch = [("status", {"database": "ok"}), *batch]  # the feed's own status, if any, comes after
            if not live:
                await response.write(b"event: signed-out\ndata: {}\n\n")
                break
            if batch:
                chunk = "".join(f"event: {name}\ndata: {to_json(data)}\n\n" for name, data in batch)
                await response.write(chunk.encode())
            elif time.monotonic() - quiet_since < _KEEPALIVE_S:
                continue
            else:
                await response.write(b": keep-alive\n\n")  # proxies close connections that stay silent
            quiet_since = time.monotonic()
    except ConnectionResetError:
        pass  # the browser went away
    finally:
        feed.unsubscribe(sub)
    return response


# --- set-up ------------------------------------------------------------------------------------------


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        ctype = response.headers.get("Content-Type", "")
        if ctype.startswith(("text/", "application/javascript", "image/svg+xml")) and "charset" not in ctype:
            response.headers["Content-Type"] = ctype + "; charset=utf-8"  # the static files are UTF-8


def setup(
    app: web.Application,
    *,
    pool_key: web.AppKey[asyncpg.Pool],
    keys_key: web.AppKey[KeyRing],
    allowed_origins: Iterable[str] = (),
    secure_cookie: bool | None = None,
    customs_endpoints: str = "customs%",
    poll_interval: float = 1.0,
    sessions: SessionStore | None = None,
    endpoints: Iterable[str] = (),
    webhook_endpoints: Iterable[str] = (),
    on_replayed: cbec_queue.JobsHook | None = None,
    tax_rates: tax.TaxRates = tax.DEFAULT_RATES,
    signing: Standing = no_signer,
    payment_questions: bool = False,
) -> None:
    """Add the console's routes, its live feed (started and stopped with the app) and security headers.

    ``pool_key`` / ``keys_key``: where the app keeps its asyncpg pool and its KeyRing (gateway.api's POOL
    and KEYS). ``allowed_origins``: origins besides the request's own that may POST (e.g.
    ``"https://ops.example.com"`` behind a TLS-terminating proxy). ``secure_cookie``: force the cookie's
    Secure flag (None: set it when the request came over HTTPS). ``customs_endpoints``: SQL LIKE pattern of
    the queue endpoints counted as "forwarded" in the charts. ``poll_interval``: seconds between the live
    feed's polls. ``endpoints``: the configured queue endpoints, shown even when idle (``webhook_endpoints``, those
    of the sellers' webhooks: with the sellers paused). ``on_replayed``: the hook
    a replay runs in its transaction (cbec_queue.replay). ``tax_rates``: the rates of the estimate the shipment page
    sets customs' tax bills beside (the configured ones, as the API's). ``signing``: where the gateway's own signing
    key stands now (gateway.signing.Signer.standing; a reload may renew it): the page's banner says when its
    certificate has expired or expires soon. ``payment_questions``: the gateway answers customs' 179 questions for
    configured platforms; the page lists them. Calling it twice on one app does nothing the second time.
    """
    if CONSOLE in app:
        return
    console = Console(
        pool_key=pool_key,
        keys_key=keys_key,
        sessions=sessions or SessionStore(),
        allowed_origins=frozenset(o.rstrip("/") for o in allowed_origins),
        secure_cookie=secure_cookie,
        customs_endpoints=customs_endpoints,
        poll_interval=poll_interval,
        endpoints=tuple(endpoints),
        webhook_endpoints=tuple(webhook_endpoints),
        on_replayed=on_replayed,
        tax_rates=tax_rates,
        signing=signing,
        payment_questions=payment_questions,
    )
    app[CONSOLE] = console

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        console.feed = Feed(app[pool_key], interval=console.poll_interval, endpoints=console.endpoints,
                            webhook_endpoints=console.webhook_endpoints, signing=console.signing)  # fmt: skip
        await console.feed.start()
        yield
        await console.feed.stop()

    async def end_streams(app: web.Application) -> None:
        if console.feed is not None:
            console.feed.close_subscribers()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(end_streams)
    app.on_response_prepare.append(_security_headers)

    r = app.router
    r.add_get(PREFIX, index)
    r.add_get(PREFIX + "/", slash)
    r.add_get(PREFIX + "/login", login_form)
    r.add_post(PREFIX + "/login", login)
    r.add_post(PREFIX + "/logout", logout)
    r.add_get(PREFIX + "/api/session", session_info)
    r.add_get(PREFIX + "/api/summary", summary)
    r.add_get(PREFIX + "/api/shipments", shipments)
    r.add_get(PREFIX + "/api/shipments.csv", shipments_csv)
    r.add_get(PREFIX + "/api/shipment", shipment)
    r.add_get(PREFIX + "/api/messages/{guid}/xml", message_xml)
    r.add_get(PREFIX + "/api/queue", queue)
    r.add_get(PREFIX + "/api/queue/awaited", awaited)
    r.add_get(PREFIX + "/api/queue/dead", dead_letters)
    r.add_get(PREFIX + "/api/rejections", rejections)
    r.add_get(PREFIX + "/api/rejections/{id}", rejection)
    r.add_get(PREFIX + "/api/warehouse-callbacks", warehouse_callbacks)
    r.add_get(PREFIX + "/api/warehouse-cancels", warehouse_cancels)
    r.add_post(PREFIX + "/api/warehouse-cancels/{id}/close", close_cancel)
    r.add_get(PREFIX + "/api/summaries/pending", pending_summaries)
    r.add_get(PREFIX + "/api/payment-questions", realtime_questions)
    r.add_post(PREFIX + "/api/payment-questions/{id}/close", close_question)
    r.add_get(PREFIX + "/api/receipts/unmatched", unmatched_receipts)
    r.add_post(PREFIX + "/api/receipts/unmatched/{id}/close", close_receipt)
    r.add_post(PREFIX + "/api/jobs/{id}/replay", replay)
    r.add_get(PREFIX + "/api/series", series)
    r.add_get(PREFIX + "/api/events", events)
    r.add_static(PREFIX + "/static/", STATIC_DIR, name="console-static")
