"""Delivery at run time: adapters and the queue worker built from configuration, the receipt watchdog, the
inbox poller of the folder transport — and :func:`submit_and_wait_released` for benchmarks and smoke runs.

``cbec serve`` runs a :class:`Forwarding` inside the API process (worker, watchdog, pollers); ``cbec worker``
runs one alone. Several processes may share the database: claims are ``FOR UPDATE SKIP LOCKED`` under
leases (cbec_queue), the watchdog updates with ``SKIP LOCKED`` and the inbox poller moves each file once.

Endpoints: the configured ones (``[forwarding.endpoints.*]``); without one of kind ``customs`` (and unless
``forwarding.sandbox = "off"``) the built-in sandbox plays customs (``/dxp``, and ``/ceb2grab/grab/realTimeDataUpload``
for the 179 payment data), the inspection service (``/inspection``) and the warehouse (``/warehouse/orders``) — see
:func:`effective_endpoints`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import asyncpg
import cbec_queue
import structlog
from cbec_queue import BreakerSettings, Deferred, NotReady
from cbec_queue.worker import is_db_unavailable

from adapters.base import AdapterTimeouts, HttpAdapter, PermanentError, TransientError, queue_handler
from adapters.customs import CustomsAdapter, CustomsConfig, run_inbox_poller
from adapters.inspection import InspectionAdapter, InspectionConfig
from adapters.realtime import RealtimeAdapter, RealtimeRefused
from adapters.warehouse import CancelRefused, WarehouseAdapter, WarehouseConfig
from adapters.webhook import SellerNotConfigured, WebhookAdapter, WebhookEndpoint, allowed_networks
from gateway import realtime, receipts, signing
from gateway.config import (
    EndpointSettings,
    ForwardingSettings,
    RealtimeSettings,
    Settings,
    WebhookSettings,
    uses_sandbox,
)
from gateway.forward import WAREHOUSE_CANCEL, Router
from gateway.outbox import Outbox
from gateway.store import prune_payment_data, prune_rejections, read_payment_upload, record_payment_upload
from gateway.ukey import UKeyBridge, UKeyRefused, UKeyRefusedBefore, UKeyUnreachable

log = structlog.get_logger("gateway.workers")

Handler = Callable[[cbec_queue.Job], Awaitable[None]]


# --- configuration -> endpoints, router --------------------------------------------------------------------


#: Customs deliveries in flight per worker when the built-in sandbox plays customs, for the worker inside
#: ``cbec serve`` (it shares the API's event loop). Measured (2 cores, the sandbox in process, 1,000 shipments;
#: runs vary by ±15 %): at 8, record_sent transactions carry ~2 deliveries and row 3c of ``cbec bench`` stays
#: at the unbatched figure (~63 messages/s); at 16 they carry ~5, 3c gives 70–77 and the gateway spends ~15 %
#: less CPU per forwarded message; 32 carries ~9 and gives 66–90, but takes more of the event loop from a
#: concurrent ingest (row 3b 140 against 155–160 at 16). 16 keeps most of the gain at the lower cost. An
#: in-flight delivery holds no connection while it waits on HTTP (the XML reads and the record_sent batches
#: use at most three), so the pool the ingest shares (Settings.pool_max_size, 16) does not bound this.
SANDBOX_CUSTOMS_CONCURRENCY = 16
#: The same for a ``cbec worker`` process, whose event loop serves no API: nothing competes with the deliveries
#: there, and the more finish together, the bigger the claims and the record_sent transactions that carry them
#: (their fixed cost — BEGIN, the locks, each statement's round trip and triggers, COMMIT — is paid per batch).
#: Measured (2 cores, a backlog of 3,000 legs, row 3e): 16 → ~300, 32 → ~390, 64 → 440–500 messages/s, with
#: PostgreSQL's CPU per message 1.8 → 0.9 ms and the worker's 2.1 → 1.3–1.4 ms; 128 and 256 gave no more then.
#: Once a delivery cost a quarter of that, they did (6,000 legs, pairs interleaved in time): 64 → 128 +16 %,
#: 128 → 256 +9 %, 64 → 256 +30 % (~1,640 → ~2,130 messages/s); 512 no more than 256. At most 100 of them are
#: HTTP requests at once (aiohttp's connector limit per adapter; lifting it changed nothing, -1 % in three pairs):
#: the others are being claimed, read or recorded, in the bigger batches that this buys.
SANDBOX_CUSTOMS_CONCURRENCY_DEDICATED = 256


def sandbox_endpoints(base_url: str, *, dedicated: bool = False) -> tuple[EndpointSettings, ...]:
    """The endpoints the customs sandbox plays (gateway.sandbox); ``dedicated``: for a worker process
    whose event loop serves no API (``cbec worker``)."""
    base = base_url.rstrip("/")
    # On this machine and answering at once: more deliveries in flight than a remote endpoint's default (4),
    # which would leave the worker waiting on the sandbox's answers (see SANDBOX_CUSTOMS_CONCURRENCY).
    customs = SANDBOX_CUSTOMS_CONCURRENCY_DEDICATED if dedicated else SANDBOX_CUSTOMS_CONCURRENCY
    return (
        EndpointSettings("customs", "customs", url=f"{base}/dxp", concurrency=customs),
        EndpointSettings("inspection", "inspection", url=f"{base}/inspection", timeout_s=15.0),
        EndpointSettings("warehouse", "warehouse", url=f"{base}/warehouse/orders", timeout_s=15.0),
        EndpointSettings("realtime", "realtime", url=f"{base}/ceb2grab/grab/realTimeDataUpload", timeout_s=15.0),
    )


def effective_endpoints(
    fwd: ForwardingSettings,
    *,
    sandbox_url: str | None = None,
    dedicated: bool = False,
    realtime: RealtimeSettings | None = None,
) -> tuple[EndpointSettings, ...]:
    """The configured endpoints; with no customs endpoint, the sandbox's (at ``sandbox_url``; ``dedicated``: for a
    ``cbec worker`` process, see sandbox_endpoints) for the names not configured — its 179 upload only for the
    platforms of ``realtime`` (none: no such endpoint); the sellers' ``webhook`` endpoint, also with no webhook
    configured yet: a reload that adds the first seller's puts it in force like any other
    (Forwarding.renew_webhooks); an endpoint with no job costs the worker's claims one index probe more."""
    out = list(fwd.endpoints)
    names = {e.name for e in out}
    uploads = realtime is not None and bool(realtime.platforms)
    if uses_sandbox(fwd) and sandbox_url:
        out += [e for e in sandbox_endpoints(sandbox_url, dedicated=dedicated)
                if e.name not in names and (e.kind != "realtime" or uploads)]  # fmt: skip
    if fwd.webhook_endpoint not in {e.name for e in out}:
        out.append(EndpointSettings(fwd.webhook_endpoint, "webhook", timeout_s=10.0))
    return tuple(out)


def default_sandbox_url(fwd: ForwardingSettings) -> str | None:
    """Where a separate ``cbec worker`` finds the sandbox of ``cbec serve`` / ``cbec sandbox``."""
    if not uses_sandbox(fwd) or fwd.sandbox_port == 0:
        return None
    return f"http://127.0.0.1:{fwd.sandbox_port}"


def build_router(fwd: ForwardingSettings, endpoints: Sequence[EndpointSettings]) -> Router:
    router = Router.from_settings(fwd, {e.name: e.kind for e in endpoints})
    if router.dropped:
        log.warning("forwarding_endpoints_missing", endpoints=list(router.dropped),
                    note="routes to these endpoints are ignored")  # fmt: skip
    return router


def routing_router(fwd: ForwardingSettings, realtime: RealtimeSettings | None = None) -> Router | None:
    """The router of a process that routes without delivering (the API, ``cbec replay``): it needs the endpoints'
    names and kinds only, not the sandbox's address (the 179 upload's among them for ``realtime``'s platforms: the
    queue figures list it even when idle). None when forwarding is off."""
    if not fwd.enabled:
        return None
    return build_router(fwd, effective_endpoints(fwd, sandbox_url="http://sandbox", realtime=realtime))


# --- adapters and handlers ---------------------------------------------------------------------------------


def _webhook_table(webhooks: tuple[WebhookSettings, ...]) -> dict[str, WebhookEndpoint]:
    return {w.seller: WebhookEndpoint(w.url, w.secret) for w in webhooks}


#: A 179 platform's key: read from its files, or its UKey's, signing through the E-Port client control.
PlatformKey = signing.SignatureBackend | UKeyBridge


def platform_keys(settings: RealtimeSettings) -> dict[str, PlatformKey]:
    """The keys the platforms' 179 uploads are signed with, by ebpCode, read from their files (OSError, ValueError:
    a process that would upload refuses to start rather than fail each upload); a UKey's is reached when it signs."""
    keys: dict[str, PlatformKey] = {}
    for p in settings.platforms:
        if p.ukey_url is not None:
            keys[p.ebp_code] = UKeyBridge(p.ukey_url, p.ukey_password, method=p.ukey_method)
            continue
        assert p.key_file is not None and p.cert_file is not None  # config: key files, or a UKey
        key_pem, cert_pem = p.key_file.read_bytes(), p.cert_file.read_bytes()
        try:
            keys[p.ebp_code] = (signing.Sm2Sm3Key.from_pem(key_pem, cert_pem) if p.algorithm == "sm2-sm3"
                                else signing.RsaSha1Key.from_pem(key_pem, cert_pem))  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"realtime.platforms.{p.ebp_code}: {exc}") from None
    return keys


class Delivery:
    """One adapter per endpoint and the queue handler around it.

    Customs: the stored message (exact bytes) goes out with the CopMsgId of the job payload; on success the
    message is marked ``sent`` and the job done in one transaction, shared with the deliveries that finish at
    the same time (:meth:`Outbox.record_sent`). The handlers of a claimed batch read their messages' XML in
    one statement (:meth:`Outbox.message_xml`). Inspection,
    warehouse and webhooks: at least once, with their own idempotency keys (docs/adapters.md).
    """

    def __init__(
        self,
        outbox: Outbox,
        fwd: ForwardingSettings,
        endpoints: Sequence[EndpointSettings],
        *,
        signer: Any = None,
        realtime: RealtimeSettings | None = None,
        platform_keys: Mapping[str, PlatformKey] | None = None,
    ) -> None:
        self.outbox = outbox
        self.fwd = fwd
        self.realtime = realtime or RealtimeSettings()
        self.platform_keys = dict(platform_keys or {})
        self._share_refusals()
        # when (the database's clock) the sellers and platforms delivered for were read: None until known (read_at)
        self.configured_at: datetime | None = None
        self._reading: set[asyncio.Task[None]] = set()
        self.endpoints = {e.name: e for e in endpoints}
        self.adapters: dict[str, HttpAdapter] = {}
        self._handlers: dict[str, Handler] = {}
        for ep in endpoints:
            timeouts = AdapterTimeouts.of(ep.timeout_s)
            if ep.kind == "customs":
                customs = CustomsAdapter(
                    CustomsConfig(
                        sender_id=ep.sender_id or fwd.sender_id,
                        transport="folder" if ep.transport == "folder" else "http",
                        url=ep.url or "",
                        outbox=ep.outbox,
                        folder_format="ceb" if ep.folder_format == "ceb" else "dxp",
                        import_receiver_id=ep.import_receiver_id,
                        export_receiver_id=ep.export_receiver_id,
                        signer=signer,
                        timeouts=timeouts,
                        headers=dict(ep.headers),
                    )
                )
                self.adapters[ep.name] = customs
                self._handlers[ep.name] = self._customs_handler(customs)
            elif ep.kind == "inspection":
                inspection = InspectionAdapter(InspectionConfig(ep.url or "", timeouts=timeouts, headers=ep.headers))
                self.adapters[ep.name] = inspection
                self._handlers[ep.name] = self._inspection_handler(inspection)
            elif ep.kind == "warehouse":
                warehouse = WarehouseAdapter(
                    WarehouseConfig(
                        ep.url or "", ep.warehouse_code, ep.callback_url, timeouts=timeouts, headers=ep.headers
                    )
                )
                self.adapters[ep.name] = warehouse
                self._handlers[ep.name] = self._warehouse_handler(warehouse)
            elif ep.kind == "webhook":
                # each seller's URL its own breaker, with the endpoint's settings (adapters/webhook.py)
                breaker = BreakerSettings(ep.breaker_failures, ep.breaker_cooldown_s)
                webhook = WebhookAdapter(_webhook_table(fwd.webhooks), timeouts=timeouts, breaker=breaker,
                                         allowed=allowed_networks(fwd.webhook_allowed_networks))  # fmt: skip
                self.adapters[ep.name] = webhook
                self._handlers[ep.name] = self._webhook_handler(webhook)
            elif ep.kind == "realtime":
                upload = RealtimeAdapter(ep.url or "", timeouts=timeouts, headers=ep.headers)
                self.adapters[ep.name] = upload
                self._handlers[ep.name] = self._realtime_handler(upload)

    def handlers(self) -> dict[str, Handler]:
        return dict(self._handlers)

    def renew_realtime(self, realtime: RealtimeSettings, keys: Mapping[str, PlatformKey]) -> None:
        """The 179 platforms' keys and the signed string's form the next uploads go with (a reload)."""
        self.realtime, self.platform_keys = realtime, dict(keys)
        self._share_refusals()
        self._read_soon()

    async def read_at(self) -> None:
        """Note when (the database's clock, the jobs' own) the configuration delivered with was read: at the start
        and at each reload (:meth:`later_configuration`)."""
        self.configured_at = await self.outbox.pool.fetchval("SELECT now()")

    def _read_soon(self) -> None:
        self.configured_at = None  # meanwhile a job naming what this process does not know waits

        async def read() -> None:
            try:
                await self.read_at()
            except Exception as exc:  # the database away: the jobs it would judge cannot be claimed either
                log.warning("configuration_time_not_read", error=f"{type(exc).__name__}: {exc}")

        with contextlib.suppress(RuntimeError):  # no event loop (not a reload's): read at the next start
            task = asyncio.get_running_loop().create_task(read())
            self._reading.add(task)
            task.add_done_callback(self._reading.discard)

    def later_configuration(self, job: cbec_queue.Job, what: str) -> Deferred | None:
        """A job naming ``what`` this process's configuration does not hold (a seller's webhook, a 179 platform) that
        was made after that configuration was read: another process of the gateway (another host) was reloaded with
        it, and this one not yet. It waits — for this process's reload, or for a process that knows it — instead of
        becoming a dead letter. None for a job made before: what it names was removed (a dead letter, as it was)."""
        if self.configured_at is not None and job.created_at < self.configured_at:
            return None
        if self.configured_at is None and not self._reading:  # a reload's read failed (the database away): again
            self._read_soon()
        return Deferred(f"{what} is not in this process's configuration, read before this job was made: another "
                        "process of the gateway was reloaded with it and this one not yet (SIGHUP every cbec serve "
                        f"and cbec worker); tried again in {LATER_CONFIGURATION_RETRY_S:g} s",
                        delay_s=LATER_CONFIGURATION_RETRY_S)  # fmt: skip

    def _share_refusals(self) -> None:
        """The platforms' UKeys' refusals shared with every process of the gateway, through the database: a card that
        refused is sent no PIN by this worker either (gateway.ukey.CardRefusal)."""
        for key in self.platform_keys.values():
            if isinstance(key, UKeyBridge):
                key.share(self.outbox.pool)

    async def settle(self) -> None:
        """Where this worker stands with each platform's UKey written (at its start, before it takes a job: a refusal
        after that is one its configuration does not get past)."""
        for key in self.platform_keys.values():
            if isinstance(key, UKeyBridge):
                await key.refusal.settle()

    def renew_webhooks(self, webhooks: tuple[WebhookSettings, ...]) -> None:
        """The sellers' URLs and secrets the next webhook deliveries go with (a reload of the configuration)."""
        for adapter in self.adapters.values():
            if isinstance(adapter, WebhookAdapter):
                adapter.use(_webhook_table(webhooks))
        self._read_soon()

    def _webhook_handler(self, adapter: WebhookAdapter) -> Handler:
        handle = queue_handler(adapter)

        async def deliver(job: cbec_queue.Job) -> None:
            try:
                await handle(job)
            except SellerNotConfigured as exc:
                if (later := self.later_configuration(job, f"seller {exc.seller}'s webhook")) is not None:
                    raise later from exc
                raise

        return deliver

    async def close(self) -> None:
        for adapter in self.adapters.values():
            with contextlib.suppress(Exception):
                await adapter.close()
        for key in self.platform_keys.values():
            if isinstance(key, UKeyBridge):
                await key.close()

    async def _message(self, payload: Mapping[str, Any]) -> str:
        try:
            message_id = int(payload["message_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError("job payload has no message_id") from exc
        xml = await self.outbox.message_xml(message_id)
        if xml is None:
            raise PermanentError(f"message {message_id} is not stored")
        return xml

    def _customs_handler(self, adapter: CustomsAdapter) -> Handler:
        async def handle(job: cbec_queue.Job) -> None:
            p = job.payload
            xml = await self._message(p)
            cop = p.get("cop_msg_id")
            if not isinstance(cop, str) or not cop:
                raise PermanentError("customs job payload has no cop_msg_id")
            # the type and guid as stored: the adapter need not parse the message again to learn them
            await adapter.send({"message": xml, "cop_msg_id": cop, "message_type": p.get("message_type"),
                                "guid": p.get("guid")})  # fmt: skip
            await self.outbox.record_sent(job, int(p["message_id"]))

        return handle

    def _inspection_handler(self, adapter: InspectionAdapter) -> Handler:
        async def handle(job: cbec_queue.Job) -> None:
            xml = await self._message(job.payload)
            await adapter.send({"message": xml, "dedupe_key": str(job.payload.get("guid") or job.dedupe_key)})

        return handle

    def _warehouse_handler(self, adapter: WarehouseAdapter) -> Handler:
        async def handle(job: cbec_queue.Job) -> None:
            p = job.payload
            xml = await self._message(p)
            try:
                index = int(p.get("doc_index") or 0)
            except (TypeError, ValueError) as exc:
                raise PermanentError(f"warehouse job payload doc_index {p.get('doc_index')!r} is no number") from exc
            made = {"message": xml, "dedupe_key": str(p.get("guid") or job.dedupe_key), "direction": p.get("direction"),
                    "doc_index": index, "consignee": p.get("consignee"), "invtNo": p.get("invtNo"),
                    "preNo": p.get("preNo")}  # fmt: skip
            if job.kind == WAREHOUSE_CANCEL:  # the order made from that document, cancelled (its orderId)
                try:
                    sent = await adapter.cancel({**made, "reason": p.get("reason")})
                except CancelRefused as exc:  # the warehouse's word, kept with the order: it needs a look
                    await self.outbox.record_cancel_answer(job.endpoint, p, exc.answer, refused=True)
                    raise
                await self.outbox.record_cancel_answer(job.endpoint, p, sent.detail["answer"], refused=False)
                return
            await adapter.send({**made, "orderNo": p.get("orderNo")})  # the order of the document the shipment released

        return handle


    def _realtime_handler(self, adapter: RealtimeAdapter) -> Handler:
        """Customs' question (realtime_requests) answered with its order's payment data, signed with its platform's
        key: customs' answer recorded on the question. Until the platform hands the data over, a transient failure
        (retried with the endpoint's backoff). A question an operator closed is answered with nothing: its job ends."""
        pool = self.outbox.pool

        async def handle(job: cbec_queue.Job) -> None:
            try:
                request_id = int(job.payload["request_id"])
            except (KeyError, TypeError, ValueError) as exc:
                raise PermanentError("realtime job payload has no request_id") from exc
            row = await read_payment_upload(pool, request_id)
            if row is None:
                raise PermanentError(f"customs' question {request_id} is not stored")
            ebp, order_no = row["ebp_code"], row["order_no"]
            if row["closed"]:  # an operator closed it (store.close_payment_question): the job ends, nothing uploaded
                log.info("payment_upload_not_sent", ebp_code=ebp, order_no=order_no, question_id=request_id,
                         reason="the question was closed")  # fmt: skip
                return
            if row["head"] is None:  # not customs' failing: the breaker leaves the other platforms' uploads going
                raise NotReady(f"no payment data of order {order_no} of platform {ebp} yet: the platform hands it "
                               "over with POST /v1/payment-data")  # fmt: skip
            key = self.platform_keys.get(ebp)
            if key is None:
                if (later := self.later_configuration(job, f"179 platform {ebp}")) is not None:
                    raise later
                raise PermanentError(f"platform {ebp} is none of [[realtime.platforms]] here: no key to sign with")
            data = realtime.PaymentData(dict(row["head"]), list(row["lists"]))
            # one guid per question, the same on every retry and replay: customs may dedupe on it
            guid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cbec-gateway:179:{job.dedupe_key or job.id}"))
            unsigned = realtime.unsigned_upload(row["session_id"], data, service_time=int(time.time() * 1000),
                                                variant=cast(realtime.Variant, self.realtime.signing_variant),
                                                guid=guid)  # fmt: skip
            up = unsigned.with_signature(*await _platform_signature(key, unsigned.signed.encode("utf-8")))
            try:
                result = await adapter.send({"body": up.body, "guid": up.guid})
            except RealtimeRefused as exc:
                await record_payment_upload(pool, request_id, state="refused", guid=up.guid,
                                            answer={"code": exc.code, "message": exc.answer})  # fmt: skip
                raise
            await record_payment_upload(pool, request_id, state="uploaded", guid=up.guid, answer=dict(result.detail))
            log.info("payment_data_uploaded", ebp_code=ebp, order_no=order_no, guid=up.guid)

        return handle


#: How often an upload waiting for a platform's card that refused looks whether a reload has asked the card again.
UKEY_REFUSED_RETRY_S = 15.0
#: How often a job naming a seller or platform added by a configuration newer than this process's is tried again.
LATER_CONFIGURATION_RETRY_S = 30.0


async def _platform_signature(key: PlatformKey, data: bytes) -> tuple[bytes, str]:
    """A platform's signature over ``data`` and its certificate's serial. A UKey out of reach is a transient failure
    (the PC or its control will be back); a card's refusal permanent — retried, a wrong PIN would lock the card: a
    dead letter the operators replay once it is mended. Once the card has refused it is asked nothing more, for any
    upload (those waiting for it at that moment too: the bridge judges it one call at a time) by any process of the
    gateway (gateway.ukey.CardRefusal), until a reload of this one (SIGHUP): the other uploads wait (deferred, their
    attempts not counted), and go then."""
    if not isinstance(key, UKeyBridge):
        return key.sign_bytes(data), key.key_name
    try:
        return await key.sign(data)
    except UKeyUnreachable as exc:
        raise TransientError(str(exc)) from exc
    except UKeyRefusedBefore as exc:  # each question's upload would send the wrong PIN again: a few lock the card
        raise Deferred(f"the platform's UKey refused ({exc.why}): it is asked nothing more until a reload (SIGHUP, "
                       "once the PIN or the card is mended)", delay_s=UKEY_REFUSED_RETRY_S) from exc  # fmt: skip
    except UKeyRefused as exc:
        raise PermanentError(str(exc)) from exc


def build_worker(
    pool: asyncpg.Pool,
    delivery: Delivery,
    *,
    lease_s: float = 30.0,
    poll_interval_s: float = 1.0,
    worker_id: str | None = None,
    **kwargs: Any,
) -> cbec_queue.Worker:
    """A cbec_queue.Worker for the endpoints of ``delivery``, with their limits and retry policies."""
    eps = delivery.endpoints
    return cbec_queue.Worker(
        pool,
        delivery.handlers(),
        worker_id=worker_id,
        policy_by_endpoint={
            n: cbec_queue.RetryPolicy(
                base_s=e.retry.base_s, factor=e.retry.factor, cap_s=e.retry.cap_s, max_attempts=e.retry.max_attempts
            )
            for n, e in eps.items()
        },
        concurrency_by_endpoint={n: e.concurrency for n, e in eps.items()},
        rate_by_endpoint={
            n: cbec_queue.Rate(e.rate_per_s, max(1.0, e.rate_burst)) for n, e in eps.items() if e.rate_per_s
        },
        breaker_by_endpoint={
            n: cbec_queue.BreakerSettings(e.breaker_failures, e.breaker_cooldown_s) for n, e in eps.items()
        },
        lease_s=lease_s,
        poll_interval_s=poll_interval_s,
        on_dead=delivery.outbox.deliveries_dead,
        **kwargs,
    )


# --- background duties -------------------------------------------------------------------------------------


async def run_watchdog(outbox: Outbox, fwd: ForwardingSettings, stop: asyncio.Event) -> None:
    """Flag (and, with watchdog_repush, re-send) messages without a receipt after receipt_timeout_s, and the warehouse
    cancels not confirmed after warehouse_cancel_timeout_s; delete the delivered jobs older than
    done_job_retention_days."""
    interval = max(0.05, fwd.watchdog_interval_s)
    while not stop.is_set():
        try:
            await outbox.watchdog(
                timeout_s=fwd.receipt_timeout_s, repush=fwd.watchdog_repush, max_repushes=fwd.max_repushes
            )
            await outbox.flag_overdue_cancels(fwd.warehouse_cancel_timeout_s)
            if fwd.done_job_retention_days > 0:
                purged = await outbox.purge_done_jobs(older_than_s=fwd.done_job_retention_days * 86400)
                if purged:
                    log.info("done_jobs_purged", jobs=purged, retention_days=fwd.done_job_retention_days)
        except Exception as exc:  # the database may be restarting: try again next time
            log.warning("watchdog_failed", error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def run_retention(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event, *,
                        interval_s: float = 3600.0) -> None:  # fmt: skip
    """Delete what is kept for a while only, now and then every ``interval_s``, until ``stop``: the refused messages
    older than rejection_retention_days, the payments' raw data and customs' 179 questions older than
    realtime.payment_data_retention_days (0 days: kept for ever)."""
    rejections, payments = settings.rejection_retention_days, settings.realtime.payment_data_retention_days
    if rejections <= 0 and payments <= 0:
        return
    while not stop.is_set():
        try:
            if rejections > 0 and (pruned := await prune_rejections(pool, older_than_s=rejections * 86400)):
                log.info("rejections_pruned", messages=pruned, retention_days=rejections)
            if payments > 0:
                data, questions = await prune_payment_data(pool, older_than_s=payments * 86400)
                if data or questions:
                    log.info("payment_data_pruned", payments=data, questions=questions, retention_days=payments)
        except Exception as exc:  # the database may be restarting: try again next time
            log.warning("retention_failed", error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def inbox_handler(outbox: Outbox, schemas: Any, endpoint: str) -> Callable[[bytes, Path], Awaitable[None]]:
    """The folder transport's receipts go through the same intake as POST /v1/receipts."""

    async def handle(data: bytes, path: Path) -> None:
        intake = receipts.read(data, schemas)  # MessageRejected: the file goes to error/
        try:
            results = await outbox.apply_receipts(intake, source="inbox", submitter=f"inbox:{endpoint}")
        except Exception as exc:
            if is_db_unavailable(exc) or isinstance(exc, asyncpg.DeadlockDetectedError):
                raise TransientError(f"receipt {path.name} not stored yet: {exc}") from exc  # stays for next pass
            raise
        log.info("receipt_from_inbox", file=path.name, outcomes=[r.outcome for r in results])

    return handle


async def run_inbox(
    outbox: Outbox, schemas: Any, endpoint: EndpointSettings, fwd: ForwardingSettings, stop: asyncio.Event
) -> None:
    assert endpoint.inbox is not None
    handle = inbox_handler(outbox, schemas, endpoint.name)
    while not stop.is_set():
        try:
            await run_inbox_poller(endpoint.inbox, handle, interval=fwd.inbox_poll_s, stop=stop,
                                   min_age=endpoint.inbox_min_age_s)  # fmt: skip
        except Exception as exc:  # a file system hiccup: the poller starts over
            log.warning("inbox_poller_failed", endpoint=endpoint.name, error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), fwd.inbox_poll_s)


@dataclass
class Forwarding:
    """What forwards in one process: a queue worker, the watchdog and the inbox pollers."""

    pool: asyncpg.Pool
    outbox: Outbox
    fwd: ForwardingSettings
    endpoints: tuple[EndpointSettings, ...]
    schemas: Any = None
    worker: bool = True
    watchdog: bool = True
    signer: Any = None
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    platform_keys: Mapping[str, PlatformKey] = field(default_factory=dict)
    worker_options: dict[str, Any] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    delivery: Delivery | None = None
    queue_worker: cbec_queue.Worker | None = None

    async def start(self) -> None:
        self._stop.clear()
        if self.worker and self.endpoints:
            self.delivery = Delivery(self.outbox, self.fwd, self.endpoints, signer=self.signer,
                                     realtime=self.realtime, platform_keys=self.platform_keys)  # fmt: skip
            await self.delivery.settle()
            await self.delivery.read_at()
            options = {"lease_s": self.fwd.worker_lease_s, "poll_interval_s": self.fwd.worker_poll_s,
                       **self.worker_options}  # fmt: skip
            self.queue_worker = build_worker(self.pool, self.delivery, **options)
            self._tasks.append(asyncio.create_task(self.queue_worker.run(self._stop), name="cbec worker"))
        if self.watchdog:
            self._tasks.append(asyncio.create_task(run_watchdog(self.outbox, self.fwd, self._stop)))
        for ep in self.endpoints:
            if ep.kind == "customs" and ep.transport == "folder" and ep.inbox is not None:
                self._tasks.append(asyncio.create_task(run_inbox(self.outbox, self.schemas, ep, self.fwd, self._stop)))
        log.info("forwarding_started", endpoints={e.name: e.kind for e in self.endpoints}, worker=self.worker)

    def renew_webhooks(self, webhooks: tuple[WebhookSettings, ...]) -> bool:
        """The sellers' webhooks read again (a reload of the configuration), in force from the next event on: whom the
        router tells (an event already queued goes as it was made) and the URLs and secrets this process's worker
        delivers with (a queued event of a seller no longer configured fails as permanent, a dead letter). False,
        changing nothing, when there is no webhook endpoint: forwarding off, or the endpoint's name taken by a
        configured endpoint of another kind (the log said so at start)."""
        router = self.outbox.router
        if router is None or router.webhook_endpoint is None:
            return False
        self.outbox.router = router.with_webhooks(webhooks)
        self.fwd = replace(self.fwd, webhooks=webhooks)
        if self.delivery is not None:
            self.delivery.renew_webhooks(webhooks)
        return True

    def renew_realtime(self, realtime: RealtimeSettings, keys: Mapping[str, PlatformKey]) -> None:
        """The 179 platforms read again (a reload): this process's worker signs the next uploads with their keys. The
        routes stay as made at start (an endpoint for the uploads exists iff a platform was configured then)."""
        if self.delivery is not None:
            self.delivery.renew_realtime(realtime, keys)

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.delivery is not None:
            await self.delivery.close()
        await self.outbox.aclose()  # record_sent batches of cancelled handlers finish before the pool closes

    async def __aenter__(self) -> Forwarding:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --- for benchmarks and smoke runs ---------------------------------------------------------------------------


@dataclass
class ReleaseRun:
    """What :func:`submit_and_wait_released` measured."""

    shipments: int
    released: int
    submit_s: float  # until the last message was accepted (202)
    total_s: float  # until the last shipment was released (or the timeout)
    latencies_s: list[float]  # per released shipment: first leg submitted -> released observed/recorded
    not_released: list[tuple[str, str]]

    def percentile(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "shipments": self.shipments,
            "released": self.released,
            "submit_s": round(self.submit_s, 3),
            "total_s": round(self.total_s, 3),
            "released_per_s": round(self.released / self.total_s, 2) if self.total_s else None,
            "latency_p50_s": self.percentile(0.5),
            "latency_p95_s": self.percentile(0.95),
            "latency_max_s": max(self.latencies_s) if self.latencies_s else None,
            "not_released": [list(k) for k in self.not_released[:20]],
        }


#: Of the waiting shipments (ebpCode, orderNo) given, the released ones with the time of their release (epoch
#: seconds, as the gateway recorded it).
ReleaseTimes = Callable[[Sequence[tuple[str, str]]], Awaitable[Mapping[tuple[str, str], float]]]


def shipment_key(s: Any) -> tuple[str, str]:
    """(ebpCode, orderNo) of a :class:`gateway.samples.ShipmentSample`."""
    doc = s.order["documents"][0]
    return (str(doc["ebpCode"]), str(doc["orderNo"]))


async def submit_shipments(
    http: aiohttp.ClientSession,
    base_url: str,
    api_key: str,
    shipments: Sequence[Any],
    *,
    concurrency: int = 16,
    started: Callable[[tuple[str, str]], None] | None = None,
) -> None:
    """Submit every shipment's four legs over HTTP as JSON (the gateway renders and signs the CEB621): legs of one
    shipment in order 311, 411, 511, 621, up to ``concurrency`` shipments at once; ``started`` is told each
    shipment's key as its first leg goes. A non-202 answer raises RuntimeError."""
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    base = base_url.rstrip("/")
    gate = asyncio.Semaphore(max(1, concurrency))

    async def submit(s: Any) -> None:
        async with gate:
            if started is not None:
                started(shipment_key(s))
            for payload in (s.order, s.payment, s.waybill, s.inventory):
                body = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
                async with http.post(f"{base}/v1/messages", data=body, headers=headers) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"{payload['type']} of {shipment_key(s)}: HTTP {resp.status}: "
                                           f"{await resp.text()}")  # fmt: skip
                    await resp.read()

    await asyncio.gather(*(submit(s) for s in shipments))


async def submit_and_wait_released(
    base_url: str,
    api_key: str,
    shipments: Sequence[Any],
    *,
    concurrency: int = 16,
    timeout_s: float = 120.0,
    poll_s: float = 0.1,
    session: aiohttp.ClientSession | None = None,
    release_times: ReleaseTimes | None = None,
) -> ReleaseRun:
    """Submit every shipment's four legs over HTTP (JSON: the gateway renders and signs the CEB621), then wait
    until each shipment's customs_status is ``released``.

    ``shipments`` are :class:`gateway.samples.ShipmentSample` (order, payment, waybill, inventory payloads). Legs
    of one shipment go in order 311, 411, 511, 621; up to ``concurrency`` shipments at once. A non-202 answer
    raises RuntimeError. Release is observed by polling ``GET /v1/shipments/{ebpCode}/{orderNo}`` for a few
    shipments at a time, oldest first (a shipment released out of order is seen a little late) — or, with
    ``release_times``, by asking it every ``poll_s`` about all the waiting ones (a benchmark reads them in SQL:
    exact times, and no polling load on the gateway it measures). Needs a gateway whose forwarding runs
    (``cbec serve`` with the sandbox, or real endpoints that answer).
    """
    own = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    base = base_url.rstrip("/")
    started: dict[tuple[str, str], float] = {}
    started_wall: dict[tuple[str, str], float] = {}
    gate = asyncio.Semaphore(max(1, concurrency))
    t0, t0_wall = time.monotonic(), time.time()

    def note_start(key: tuple[str, str]) -> None:
        started[key], started_wall[key] = time.monotonic(), time.time()

    try:
        await submit_shipments(http, base, api_key, shipments, concurrency=concurrency, started=note_start)
        submit_s = time.monotonic() - t0
        waiting = {shipment_key(s) for s in shipments}
        latencies: list[float] = []
        deadline = t0 + timeout_s
        recorded_end: float | None = None  # the last release as the gateway recorded it (release_times)
        if release_times is not None:
            last_release = t0_wall
            while waiting and time.monotonic() < deadline:
                for k, at in (await release_times(sorted(waiting))).items():
                    if k in waiting:
                        waiting.discard(k)
                        latencies.append(at - started_wall[k])
                        last_release = max(last_release, at)
                if waiting:
                    await asyncio.sleep(poll_s)
            recorded_end = None if waiting else last_release - t0_wall
        else:

            async def released(k: tuple[str, str]) -> bool:
                async with gate, http.get(f"{base}/v1/shipments/{quote(k[0], safe='')}/{quote(k[1], safe='')}",
                                          headers={"X-API-Key": api_key}) as resp:  # fmt: skip
                    if resp.status != 200:
                        return False
                    body = await resp.json()
                    return bool(body.get("customs_status") == "released")

            # Each pass looks at a few shipments only — the oldest waiting (customs answers roughly in order) and
            # a rotating share of the rest (one stuck shipment must not hide the others): polling every waiting
            # shipment would cost the gateway more than the forwarding being measured.
            order = [shipment_key(s) for s in shipments]
            window = max(2, min(concurrency, 8))
            cursor = 0
            while waiting and time.monotonic() < deadline:
                pending = [k for k in order if k in waiting]
                keys = pending[: window // 2]
                rest = pending[window // 2 :]
                if rest:
                    cursor %= len(rest)
                    keys += (rest[cursor:] + rest[:cursor])[: window - len(keys)]
                    cursor += window - window // 2
                done = await asyncio.gather(*(released(k) for k in keys))
                now = time.monotonic()
                for k, ok in zip(keys, done, strict=True):
                    if ok:
                        waiting.discard(k)
                        latencies.append(now - started[k])
                if waiting and not all(done):
                    await asyncio.sleep(poll_s)
        return ReleaseRun(
            shipments=len(shipments),
            released=len(shipments) - len(waiting),
            submit_s=submit_s,
            total_s=recorded_end if recorded_end is not None else time.monotonic() - t0,
            latencies_s=latencies,
            not_released=sorted(waiting),
        )
    finally:
        if own:
            await http.close()


__all__ = [
    "Delivery",
    "Forwarding",
    "ReleaseRun",
    "ReleaseTimes",
    "build_router",
    "build_worker",
    "default_sandbox_url",
    "effective_endpoints",
    "inbox_handler",
    "routing_router",
    "run_watchdog",
    "sandbox_endpoints",
    "shipment_key",
    "submit_and_wait_released",
    "submit_shipments",
    "uses_sandbox",
]
