"""``/metrics`` in the Prometheus text format (prometheus_client), and the middleware that feeds it.

Two kinds of figures:

* request-path figures, counted in process by :func:`metrics_middleware` without touching the database:
  HTTP requests by route and status, messages ingested by type and outcome, ingest latency, validation
  failures by error code; and, told by the store, its ingest transactions (messages each, seconds each). They
  are counters since this process started (Prometheus' ``rate()`` and ``increase()`` handle restarts);
* state figures, read from PostgreSQL when Prometheus scrapes (a handful of index-backed queries, one
  scrape at a time): shipments by reconciliation state and by customs status,
  queue depth, due and running jobs, oldest queued age and dead letters per endpoint, circuit states of
  this process's workers, forward / receipt latency quantiles over the last ``window_s`` seconds, the
  documents sent to customs still awaiting a receipt (how many, and the oldest's wait), and the warehouse cancels
  that need a look;
* how long the certificate of the key the gateway signs JSON declarations with is still valid, and the files in each
  folder-transport inbox: waiting to be read, and refused into its ``error/`` folder (read from the file system).

Wire it with :func:`setup_metrics` (adds the route and the middleware as the outermost one). Metrics live
in a registry of the application, not in prometheus_client's global one, so two applications in one
process (tests) do not mix their figures.

Several API processes on one port (``cbec serve --processes N``): a scrape reaches whichever process the
kernel picks, so per-process counters would seem to jump back and forth (Prometheus would read every jump
down as a restart). There the request-path instruments keep their values in files that the processes share
(prometheus_client's multiprocess mode, switched on by ``PROMETHEUS_MULTIPROC_DIR``, which ``cbec serve``
sets to a fresh folder of its data folder before anything imports prometheus_client), and every scrape shows
their sum. The files of a process that died stay, so the sums never go down when one is replaced.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import cbec_queue
import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from adapters.customs import InboxFiles, inbox_files
from gateway import realtime
from gateway.auth import KeyRing
from gateway.config import METRICS_SHARED_DIR_ENV, Role
from gateway.console import queries as q
from gateway.messages import BY_CODE
from gateway.outbox import CANCEL_FLAGS

log = structlog.get_logger("gateway.metrics")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

INGEST_ROUTE = "/v1/messages"
#: Ingest latency buckets (seconds): a message takes milliseconds; seconds mean trouble.
INGEST_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Messages per ingest transaction (the store's batches hold at most 32).
TRANSACTION_SIZES = (1, 2, 4, 8, 16, 32)
#: An ingest transaction's seconds: a few milliseconds; tens mean PostgreSQL is slow or a lock is waited for.
TRANSACTION_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
QUANTILES = ("0.5", "0.9", "0.99")
_MAX_CHILDREN = 4096

_SNIFF_XML = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?(CEB\d{3})Message\b")
_SNIFF_JSON = re.compile(rb'"type"\s*:\s*"(CEB\d{3})"')
#: The request's body as the API's handler read it (gateway.api._read_body), for the figures of a refused message.
RAW_BODY = web.RequestKey("raw_body", bytes)
_CODE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+){1,3}$")


def shared_across_processes() -> bool:
    """Whether the request-path figures are shared by the processes (multiprocess mode is on in this one)."""
    return bool(os.environ.get(METRICS_SHARED_DIR_ENV)) and values.ValueClass is not values.MutexValue


class Metrics:
    """The application's registry, its request-path instruments and the last database snapshot."""

    def __init__(
        self,
        pool_key: web.AppKey[asyncpg.Pool],
        *,
        window_s: float = 300.0,
        keys_key: web.AppKey[KeyRing] | None = None,
        endpoints: Iterable[str] = (),
        webhook_endpoints: Iterable[str] = (),
        signing_valid_until: Callable[[], datetime | None] = lambda: None,
        signing_ukey_up: Callable[[], bool | None] = lambda: None,
        inboxes: Mapping[str, Path] | None = None,
    ) -> None:
        self.pool_key = pool_key
        self.inboxes = dict(inboxes or {})  # the folder-transport endpoints' inboxes, by endpoint
        self.webhook_endpoints = tuple(webhook_endpoints)  # of those, the sellers' webhooks (paused sellers)
        # the notAfter of the certificate the JSON declarations are signed with now (a reload may renew it); None: none
        self.signing_valid_until = signing_valid_until
        self.signing_ukey_up = signing_ukey_up  # whether the UKey holding that key signs; None: not on a UKey
        self.endpoints = tuple(endpoints)  # the configured queue endpoints: their gauges exist even when idle
        self.keys_key = keys_key  # set: /metrics needs an operator/admin key (Bearer or X-API-Key)
        self.window_s = window_s
        self.registry = CollectorRegistry(auto_describe=True)
        self.shared = shared_across_processes()
        # Shared: the instruments write to the files and the scrape reads every process's from there; registered
        # here as well, this process's own values would be counted twice.
        instruments = None if self.shared else self.registry
        if self.shared:
            MultiProcessCollector(self.registry)
        self.requests = Counter(
            "cbec_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=instruments,
        )
        self.ingested = Counter(
            "cbec_ingest_messages",
            "POST /v1/messages by CEB message type and outcome "
            "(accepted, replayed, rejected, conflict, forbidden, unauthorized, refused, error)",
            ["message_type", "outcome"],
            registry=instruments,
        )
        self.ingest_seconds = Histogram(
            "cbec_ingest_duration_seconds",
            "Time to answer POST /v1/messages (parse, validate, store, reconcile), by outcome",
            ["outcome"],
            buckets=INGEST_BUCKETS,
            registry=instruments,
        )
        self.failures = Counter(
            "cbec_validation_failures",
            "Refused messages carrying an error code (each code counted once per message), by code",
            ["code"],
            registry=instruments,
        )
        self.transaction_messages = Histogram(
            "cbec_ingest_transaction_messages",
            "Messages per ingest transaction committed (messages arriving together share one; _count: the "
            "transactions, _sum: their messages)",
            buckets=TRANSACTION_SIZES,
            registry=instruments,
        )
        self.transaction_seconds = Histogram(
            "cbec_ingest_transaction_seconds",
            "Time of an ingest transaction committed, from its first statement to its COMMIT answered",
            buckets=TRANSACTION_BUCKETS,
            registry=instruments,
        )
        self.warehouse_callbacks = Counter(
            "cbec_warehouse_callbacks",
            "Warehouse callbacks stored (POST /v1/warehouse/callbacks; a repeat is not counted), by the status they "
            "report and whether they were linked to the document the gateway made the order from",
            ["status", "linked"],
            registry=instruments,
        )
        # labelled children by instrument and label values: prometheus_client's labels() takes a lock and
        # checks its arguments on every call (~1.5 µs; a cached child's inc ~0.35). Bounded: a client could
        # invent methods (and codes are counted as "other" when they are not ours) without end.
        self._children: dict[tuple[Counter | Histogram, tuple[str, ...]], Any] = {}
        self.snapshot: list[Metric] = []
        self.registry.register(_Snapshot(self))
        self._scrape_lock = asyncio.Lock()

    # --- request path ---

    def _child(self, instrument: Counter | Histogram, *labels: str) -> Any:
        key = (instrument, labels)
        child = self._children.get(key)
        if child is None:
            child = instrument.labels(*labels)
            if len(self._children) < _MAX_CHILDREN:
                self._children[key] = child
        return child

    def observe(self, route: str, method: str, status: int) -> None:
        self._child(self.requests, route, method, str(status)).inc()

    def observe_transaction(self, messages: int, seconds: float) -> None:
        """An ingest transaction committed (the store's ``on_committed``)."""
        self.transaction_messages.observe(messages)
        self.transaction_seconds.observe(seconds)

    def observe_warehouse(self, status: str, linked: bool) -> None:
        """A warehouse callback stored (its status one of the contract's: the labels stay bounded)."""
        self._child(self.warehouse_callbacks, status, "true" if linked else "false").inc()

    async def observe_ingest(self, request: web.Request, response: web.StreamResponse | None, status: int,
                             elapsed: float) -> None:  # fmt: skip
        body = _json_body(response)
        outcome = _outcome(status, response)
        message_type = body.get("message_type") if isinstance(body, dict) else None
        raw = request.get(RAW_BODY)
        if message_type not in BY_CODE and status in (400, 409, 422) and isinstance(raw, bytes):
            # the body as the handler read it (never read here: one that did not arrive would be waited for)
            message_type = _sniff(raw)
        message_type = message_type if message_type in BY_CODE else "unknown"
        self._child(self.ingested, message_type, outcome).inc()
        self._child(self.ingest_seconds, outcome).observe(elapsed)
        if outcome in ("rejected", "conflict"):
            issues = (body.get("error") or {}).get("issues") or [] if isinstance(body, dict) else []
            codes = {str(i["code"]) for i in issues if isinstance(i, dict) and i.get("code")}
            for code in sorted(codes):
                self._child(self.failures, code if _CODE.match(code) else "other").inc()

    # --- scrape ---

    async def scrape(self, pool: asyncpg.Pool) -> list[Metric]:
        """Read the state figures; on a database failure only ``cbec_database_up 0`` (and the counters)."""
        started = time.perf_counter()
        families: list[Metric] = []
        up = 1
        try:
            async with pool.acquire(timeout=5) as conn:
                families.extend(await self._state_families(conn))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("metrics_database_error", error=str(exc))
            families = []
            up = 0
        families.append(GaugeMetricFamily("cbec_database_up", "1 when the last scrape could read PostgreSQL", up))
        if (signing_until := self.signing_valid_until()) is not None:
            families.append(GaugeMetricFamily(
                "cbec_signing_certificate_expiry_seconds",
                "Seconds until the certificate of the key the gateway signs JSON declarations with expires "
                "(negative: expired; it signs nothing then, and JSON declarations it would sign are answered 503)",
                (signing_until - datetime.now(UTC)).total_seconds(),
            ))  # fmt: skip
        if (ukey_up := self.signing_ukey_up()) is not None:
            families.append(GaugeMetricFamily(
                "cbec_signing_ukey_up",
                "1 when the UKey holding the gateway's signing key signs: its client control answered last time and "
                "it refused nothing (0: JSON declarations the gateway signs are answered 503)",
                int(ukey_up),
            ))  # fmt: skip
        if self.inboxes:
            families.extend(await asyncio.to_thread(self._inbox_families))
        families.append(
            GaugeMetricFamily(
                "cbec_metrics_scrape_seconds",
                "Time the last scrape spent reading PostgreSQL",
                time.perf_counter() - started,
            )
        )
        return families

    def _inbox_families(self) -> list[Metric]:
        """The inboxes' files: customs' receipts over the folder transport that wait, and those refused (a receipt
        refused there is customs' word lost unless someone looks: the log says which and why, this says how many)."""
        waiting = GaugeMetricFamily(
            "cbec_inbox_waiting_files",
            "Receipt files in a folder-transport endpoint's inbox not read yet (transfers in progress not counted)",
            labels=["endpoint"],
        )
        refused = GaugeMetricFamily(
            "cbec_inbox_refused_files",
            "Receipt files a folder-transport endpoint's inbox refused into its error/ folder, each beside its reason "
            "(<name>.error.txt), and not cleared: customs' word not applied until an operator deals with them",
            labels=["endpoint"],
        )
        for endpoint, folder in sorted(self.inboxes.items()):
            try:
                files: InboxFiles = inbox_files(folder)
            except OSError as exc:  # unreadable now: no figure rather than a wrong one
                log.warning("metrics_inbox_unreadable", endpoint=endpoint, error=f"{exc.__class__.__name__}: {exc}")
                continue
            waiting.add_metric([endpoint], files.waiting)
            refused.add_metric([endpoint], files.refused)
        return [waiting, refused]

    async def _state_families(self, conn: asyncpg.Connection) -> Iterable[Metric]:
        out: list[Metric] = []
        counts = await q.shipment_counts(conn)
        g = GaugeMetricFamily("cbec_shipments", "Shipments by reconciliation state", labels=["state"])
        for state, n in counts["by_state"].items():
            g.add_metric([state], n)
        out.append(g)
        g = GaugeMetricFamily("cbec_shipments_customs_status", "Shipments by customs status", labels=["status"])
        for status, n in sorted(counts["by_customs_status"].items()):
            g.add_metric([status], n)
        out.append(g)

        stats = await cbec_queue.stats(conn, endpoints=self.endpoints)
        per_endpoint = {
            "cbec_queue_depth": ("Queued jobs (due or scheduled) per endpoint", "queued"),
            "cbec_queue_due": ("Queued jobs whose time has come, per endpoint", "due"),
            "cbec_queue_running": ("Jobs being sent now, per endpoint", "running"),
            "cbec_queue_dead_letters": ("Dead jobs waiting for an operator, per endpoint", "dead"),
            "cbec_queue_oldest_age_seconds": ("Age of the oldest queued job per endpoint (0: none)",
                                              "oldest_queued_age_s"),
        }  # fmt: skip
        for name, (doc, key) in per_endpoint.items():
            g = GaugeMetricFamily(name, doc, labels=["endpoint"])
            for s in stats:
                g.add_metric([s["endpoint"]], float(s.get(key) or 0))
            out.append(g)
        g = GaugeMetricFamily(
            "cbec_queue_circuit_state",
            "Circuit breaker per endpoint, the severest of every worker's (each cbec worker's too): 1 for the current "
            "state",
            labels=["endpoint", "state"],
        )
        for s in stats:
            if s.get("circuit"):
                for state in cbec_queue.CircuitState:
                    g.add_metric([s["endpoint"], state.value], 1.0 if s["circuit"] == state.value else 0.0)
        out.append(g)

        g = GaugeMetricFamily(
            "cbec_webhook_seller_paused_events",
            "Events of a seller whose webhook URL failed again and again, held back untried until it answers (its own "
            "breaker open), per webhook endpoint and seller",
            labels=["endpoint", "seller"],
        )
        for endpoint, sellers in (await q.webhook_sellers_paused(conn, self.webhook_endpoints)).items():
            for p in sellers:
                g.add_metric([endpoint, p["seller"] or ""], float(p["waiting"]))
        out.append(g)

        window = f"over the last {int(self.window_s)} s"
        latency = GaugeMetricFamily(
            "cbec_forward_latency_seconds",
            f"Job created → sent successfully, quantiles {window}, per endpoint",
            labels=["endpoint", "quantile"],
        )
        attempt = GaugeMetricFamily(
            "cbec_forward_attempt_seconds",
            f"Duration of successful send attempts, quantiles {window}, per endpoint",
            labels=["endpoint", "quantile"],
        )
        sent = GaugeMetricFamily(
            "cbec_forwarded_recent", f"Successful send attempts {window}, per endpoint", labels=["endpoint"]
        )
        for r in await conn.fetch(q.FORWARD_LATENCY, float(self.window_s)):
            sent.add_metric([r["endpoint"]], float(r["n"]))
            for quantile, v in zip(QUANTILES, r["latency"] or (), strict=False):
                latency.add_metric([r["endpoint"], quantile], float(v))
            for quantile, v in zip(QUANTILES, r["attempt_ms"] or (), strict=False):
                if v is not None:
                    attempt.add_metric([r["endpoint"], quantile], float(v) / 1000)
        out.extend((latency, attempt, sent))

        r = await conn.fetchrow(q.RECEIPT_LATENCY_WINDOW, float(self.window_s))
        g = GaugeMetricFamily(
            "cbec_receipt_latency_seconds",
            f"Message accepted → customs receipt received, quantiles {window}",
            labels=["quantile"],
        )
        for quantile, v in zip(QUANTILES, r["q"] or (), strict=False):
            g.add_metric([quantile], float(v))
        out.append(g)
        out.append(GaugeMetricFamily("cbec_receipts_recent", f"Receipts received {window}", float(r["n"])))
        g = GaugeMetricFamily("cbec_receipts_unmatched", "Customs receipts kept unmatched and open: no document the "
                              "gateway holds is the one they answer (GET /v1/receipts/unmatched lists them); those an "
                              "operator closed are not counted",
                              labels=["message_type"])  # fmt: skip
        for r in await conn.fetch(q.UNMATCHED_RECEIPTS_BY_TYPE):
            g.add_metric([r["message_type"]], r["n"])
        out.append(g)
        awaited = await q.receipts_awaited(conn)
        out.append(GaugeMetricFamily("cbec_receipts_awaited", "Documents sent to customs and still without any receipt",
                                     float(awaited["count"])))  # fmt: skip
        out.append(GaugeMetricFamily(
            "cbec_receipt_oldest_wait_seconds",
            "How long the oldest document sent to customs and still without a receipt has waited (0: none)",
            float(awaited["oldest_wait_s"]),
        ))  # fmt: skip

        # a parcel customs cancelled that the warehouse may be sending all the same
        g = GaugeMetricFamily(
            "cbec_warehouse_cancels_open",
            "Cancels the gateway asked of a warehouse (a cancelled inventory, a withdrawn or changed delivery or "
            "order) that need a look, neither confirmed by the warehouse (cancelled) nor closed by an operator, by the "
            "gravest reason: progress_after_cancel (the warehouse reported the order going on after the cancel was "
            "asked: the goods may be leaving), refused (it answered the cancel with a refusal), unconfirmed (not "
            "confirmed within forwarding.warehouse_cancel_timeout_s)",
            labels=["why"],
        )
        found = {r["why"]: r["n"] for r in await conn.fetch(q.OPEN_WAREHOUSE_CANCELS)}
        for why in CANCEL_FLAGS:
            g.add_metric([why], float(found.get(why, 0)))
        out.append(g)

        # customs' 179 questions not uploaded: customs expects the upload within minutes of asking (spec §10.1)
        r = await conn.fetchrow(realtime.OPEN_FIGURES)
        g = GaugeMetricFamily(
            "cbec_payment_data_questions",
            "Customs' 179 questions for payment data not uploaded nor closed by an operator: waiting (for the "
            "platform's data or for customs), "
            "given_up (the upload a dead letter: no data, or no answer from customs' endpoint, before its retries "
            "ended, or a UKey that refused), "
            "refused (by customs)",
            labels=["state"],
        )
        for state in ("waiting", "given_up", "refused"):
            g.add_metric([state], float(r[state]))
        out.append(g)
        out.append(GaugeMetricFamily(
            "cbec_payment_data_question_oldest_wait_seconds",
            "How long the longest waiting 179 question has waited for its upload (0: none)",
            float(r["oldest_wait_s"]),
        ))  # fmt: skip
        return out


class _Snapshot:
    """Collector handing prometheus_client the families read by the last scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics.snapshot

    def describe(self) -> list[Metric]:
        return []  # the families are read at each scrape; nothing to pre-register


METRICS = web.AppKey("metrics", Metrics)


def _route(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"  # 404/405: never the raw path, whose values are unbounded
    return str(resource.canonical)


def _json_body(response: web.StreamResponse | None) -> Any:
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return None
    raw = response.body
    if not isinstance(raw, bytes | bytearray) or len(raw) > 1_000_000:
        return None
    try:
        return orjson.loads(raw)  # every ingest answer: ~3 µs for 600 bytes, where json.loads took ~11
    except ValueError:  # orjson.JSONDecodeError is one
        return None


def _outcome(status: int, response: web.StreamResponse | None) -> str:
    if status in (200, 201, 202):
        replay = response is not None and response.headers.get("Idempotent-Replay") == "true"
        return "replayed" if replay else "accepted"
    return {400: "rejected", 413: "rejected", 422: "rejected", 409: "conflict", 403: "forbidden",
            401: "unauthorized"}.get(status, "error" if status >= 500 else "refused")  # fmt: skip


def _sniff(body: bytes) -> str | None:
    head = body[:4096]
    found = _SNIFF_XML.search(head) or _SNIFF_JSON.search(head)
    return found.group(1).decode() if found else None


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts every answer; for POST /v1/messages also type, outcome, latency and error codes. No I/O."""
    metrics = request.app.get(METRICS)
    if metrics is None:
        return await handler(request)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        try:
            route, method = _route(request), request.method
            metrics.observe(route, method, status)
            if route == INGEST_ROUTE and method == "POST":
                await metrics.observe_ingest(request, response, status, elapsed)
        except Exception:  # metrics must never break an answer
            log.exception("metrics_observe_failed")


def _authorised(request: web.Request, metrics: Metrics) -> bool:
    if metrics.keys_key is None:
        return True
    presented = request.headers.get("X-API-Key")
    auth = request.headers.get("Authorization", "")
    if not presented and auth.lower().startswith("bearer "):
        presented = auth[7:].strip()
    principal = request.app[metrics.keys_key].authenticate(presented)
    return principal is not None and principal.role in (Role.OPERATOR, Role.ADMIN)


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    metrics = request.app[METRICS]
    if not _authorised(request, metrics):
        return web.Response(status=401, text="an operator or admin key is needed\n",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    async with metrics._scrape_lock:  # one scrape at a time: the snapshot is shared
        metrics.snapshot = await metrics.scrape(request.app[metrics.pool_key])
        body = encoder(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def setup_metrics(
    app: web.Application,
    *,
    pool_key: web.AppKey[asyncpg.Pool],
    window_s: float = 300.0,
    keys_key: web.AppKey[KeyRing] | None = None,
    path: str = "/metrics",
    endpoints: Iterable[str] = (),
    webhook_endpoints: Iterable[str] = (),
    signing_valid_until: Callable[[], datetime | None] = lambda: None,
    signing_ukey_up: Callable[[], bool | None] = lambda: None,
    inboxes: Mapping[str, Path] | None = None,
) -> Metrics:
    """Add ``GET /metrics`` and the outermost middleware.

    ``keys_key``: when given, a scrape needs an operator or admin API key (``Authorization: Bearer`` or
    ``X-API-Key``); by default the endpoint is open like most exporters (it shows counts, no documents).
    Call it before the application starts (the middleware list freezes then); a second call returns the
    first call's Metrics.
    """
    existing = app.get(METRICS)
    if existing is not None:
        return existing
    metrics = Metrics(pool_key, window_s=window_s, keys_key=keys_key, endpoints=endpoints,
                      webhook_endpoints=webhook_endpoints, signing_valid_until=signing_valid_until,
                      signing_ukey_up=signing_ukey_up, inboxes=inboxes)
    app[METRICS] = metrics
    app.middlewares.insert(0, metrics_middleware)  # outermost: sees the final status of every answer

    app.router.add_get(path, metrics_handler)
    return metrics
