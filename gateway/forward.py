"""Forwarding rules as data: which endpoints a message goes to, what waits, what a job looks like. Pure.

The store asks a :class:`Router` in the ingest transaction what to enqueue for an accepted message (the
transactional outbox); the receipts transaction asks it what a released shipment or a customs status
change sets off. :mod:`gateway.workers` turns the same configuration into adapters and a queue worker.

Identity of a delivery: the queue's dedupe key is ``<endpoint>:<message guid>`` (a re-send adds
``:resend<n>``), and the customs CopMsgId is always ``adapters.dxp.cop_msg_id_for("<endpoint>:<guid>")``,
carried in the job payload, so that every retry and every re-send of a message carries the same guid
and the same CopMsgId.

Order of deliveries: every job of a declaration carries the business keys of its message's documents as
queue ordering keys (:func:`ordering_key`), so that per endpoint a change (appType 2) or a withdrawal (3)
never goes before an earlier message of the same document that is still queued, retrying or running.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.dxp import cop_msg_id_for
from gateway import receipts as rc
from gateway.auth import Principal, findings_view, readable_sides
from gateway.config import DEFAULT_ROUTES, ForwardingSettings, Role, RouteSettings, WebhookSettings
from gateway.messages import lookup

#: documents.forward_state values (gateway/sql/020_forwarding.sql, 130_delivery_failed.sql, 450_unsent_documents.sql).
FORWARD_STATES = ("none", "held", "queued", "sent", "receipted", "rejected", "failed", "unsent")
#: shipments.customs_status values, in the order a shipment normally goes through them, then cancelled (customs
#: concluded the cancellation of its inventory before releasing it: gateway/sql/540_cancelled_shipments.sql), then the
#: two that need someone: customs rejected a leg, or a leg's delivery to customs failed (its job is a dead letter).
SHIPMENT_CUSTOMS_STATUSES = ("pending", "declared", "accepted", "released", "cancelled", "rejected", "failed")

WEBHOOK_EVENT = "shipment.customs_status_changed"
#: A warehouse's order made from one of the shipment's documents went further (POST /v1/warehouse/callbacks).
WAREHOUSE_WEBHOOK_EVENT = "shipment.warehouse_status_changed"
#: What customs said of a cancellation (CEB623, CEB605) or a return (CEB625, CEB213) of the shipment's inventory, and
#: the release of an inventory declared anew after a cancellation: none of them moves a released shipment's customs
#: status (released is final; a cancellation or return is no leg), so without these a seller would hear nothing of
#: them. (A cancellation concluded before the release makes the shipment cancelled: told as that change too.)
INVENTORY_EVENTS = {
    ("cancel", "concluded"): "shipment.inventory_cancelled",
    ("cancel", "refused"): "shipment.inventory_cancellation_refused",
    ("refund", "concluded"): "shipment.inventory_returned",
    ("refund", "refused"): "shipment.inventory_return_refused",
    ("inventory", "released"): "shipment.inventory_released",
}
#: Customs refused a change (appType 2) or withdrawal (appType 3) of one of the shipment's legs, and the version before
#: it is current again (customs holds it, README "Idempotency and changes"): no customs status moves — the refused
#: version is no leg any more —, so without this its sender would believe its change stood.
CHANGE_REFUSED_EVENT = "shipment.change_refused"
#: A delivery to customs of one of the shipment's documents died (a dead letter: refused for good, or out of
#: attempts), or, replayed, reached customs after all. A cancellation, return or withdrawal is no leg and a change of an
#: accepted or released inventory moves no status (customs' word on the version it holds stands): without these the
#: seller of such a document would hear nothing of its death, only operators would see the dead letter.
DELIVERY_EVENTS = {"failed": "shipment.delivery_failed", "recovered": "shipment.delivery_recovered"}
#: The shipment's reconciliation (三单对碰) went to or from RECONCILIATION_TOLD, or stayed there held by other blocking
#: findings. A mismatched shipment's inventory is held and never sent to customs, and no customs status changes while it
#: waits: without this a seller would see "declared" and then nothing.
RECONCILIATION_WEBHOOK_EVENT = "shipment.reconciliation_changed"
#: The state whose changes, to it and from it, the sellers are told of. Not incomplete -> matched: every shipment goes
#: that way once its last leg comes, its inventory then goes to customs and the customs status changes that follow
#: say the rest — an event more per shipment (and per seller), and a cost on every ingest, would tell nothing new.
RECONCILIATION_TOLD = "mismatched"


@dataclass(frozen=True)
class JobSpec:
    """A queue job to enqueue (cbec_queue.enqueue's arguments)."""

    endpoint: str
    kind: str
    payload: dict[str, Any]
    dedupe_key: str
    delay_s: float = 0.0  # run_after = now + delay
    priority: int = 0
    # Queue ordering keys: not claimed while an earlier job of the endpoint sharing one is queued or running.
    ordering_keys: tuple[str, ...] = ()


def ordering_key(message_type: str, keys: Iterable[str]) -> str:
    """The queue ordering key of a document: its message type and business key values (spec §6.2; the fields
    are ``MessageType.keys``), trimmed as the store keeps them (documents.key1, key2), e.g.
    ``CEB311:<ebpCode>:<orderNo>``. Only the type's own key fields count (a stored key2 of '' for a one-field
    type is no part of it). Every version of a document (appType 1, 2, 3) has the same key, and a type that
    ``orders_with`` another keys as that one: the cancel (CEB623) or refund (CEB625) of an inventory waits
    behind the inventory (CEB621) with the same ebcCode and orderNo. An export cancellation (CEB605) names its
    inventory by invtNo instead: its job also carries the key of the inventory the store found (Outbox.plan_wave)."""
    mtype = lookup(message_type)
    values = [k.strip() for k in keys]
    if mtype is not None:
        if mtype.integer_keys:  # a part written "01" is part 1, as stored (MessageType.stored_key)
            values = list(mtype.stored_key(values))
        values = list(mtype.key_values(values))[: len(mtype.keys)]  # the stored (key1, key2) or the fields alike
        message_type = mtype.orders_with or message_type
    return ":".join((message_type, *values))


#: The kind of the job cancelling a warehouse order (Router.order_jobs, Router.cancel_jobs): the gateway records each
#: with the order it cancels (gateway.outbox.record_cancels).
WAREHOUSE_CANCEL = "warehouse.cancel"


@dataclass(frozen=True)
class OrderSource:
    """A document of a declaration routed to a warehouse (:meth:`Router.order_jobs`): its position in the message, its
    appType and ordering key, and the version it changes or withdraws (message id, message guid, position), if any."""

    index: int
    app_type: str
    ordering_key: str
    replaces: tuple[int, str, int] | None = None


@dataclass(frozen=True)
class Route:
    message_types: frozenset[str]
    endpoints: tuple[str, ...]
    modes: frozenset[str] | None = None

    def matches(self, message_type: str, modes: Collection[str]) -> bool:
        if message_type not in self.message_types:
            return False
        return self.modes is None or not modes or not self.modes.isdisjoint(modes)


def _order_payload(
    message_id: int, guid: str, doc_index: int, ebp_code: str, order_no: str, numbers: Mapping[str, str] | None
) -> dict[str, Any]:
    """A warehouse job's payload (its order, or the order's cancel): the document the order is made of, its shipment,
    and the numbers customs gave the inventory (invtNo, preNo)."""
    return {"message_id": message_id, "guid": guid, "doc_index": doc_index, "direction": "outbound",
            "ebpCode": ebp_code, "orderNo": order_no,
            **{k: v for k, v in (numbers or {}).items() if k in ("invtNo", "preNo") and v}}  # fmt: skip


@dataclass(frozen=True)
class Router:
    """Routing of one gateway: routes to the endpoints that exist (name -> kind), holds, webhooks."""

    endpoint_kinds: Mapping[str, str]
    routes: tuple[Route, ...] = ()
    hold_types: frozenset[str] = frozenset({"CEB621", "CEB603"})
    on_release: tuple[str, ...] = ()
    webhooks: tuple[WebhookSettings, ...] = ()
    webhook_endpoint: str | None = None
    max_repushes: int = 3
    resend_delay_s: float = 30.0
    dropped: tuple[str, ...] = field(default=())  # routes' endpoints that are not configured (for the log)

    @classmethod
    def from_settings(cls, fwd: ForwardingSettings, endpoint_kinds: Mapping[str, str]) -> Router:
        """Keep only what points at an existing endpoint; ``dropped`` names the rest."""
        dropped: set[str] = set()
        routes = []
        for r in fwd.routes or DEFAULT_ROUTES:
            kept = tuple(e for e in r.endpoints if e in endpoint_kinds)
            dropped |= set(r.endpoints) - set(kept)
            if kept:
                routes.append(_route(r, kept))
        on_release = tuple(e for e in fwd.on_release if e in endpoint_kinds)
        dropped |= set(fwd.on_release) - set(on_release)
        # the sellers' endpoint, also before any seller has a webhook (a reload may add the first: with_webhooks)
        webhook = fwd.webhook_endpoint if endpoint_kinds.get(fwd.webhook_endpoint) == "webhook" else None
        if fwd.webhooks and webhook is None:
            dropped.add(fwd.webhook_endpoint)
        return cls(
            endpoint_kinds=dict(endpoint_kinds),
            routes=tuple(routes),
            hold_types=frozenset(fwd.hold_types),
            on_release=on_release,
            webhooks=fwd.webhooks if webhook else (),
            webhook_endpoint=webhook,
            max_repushes=fwd.max_repushes,
            resend_delay_s=fwd.resend_delay_s,
            dropped=tuple(sorted(dropped)),
        )

    def with_webhooks(self, webhooks: tuple[WebhookSettings, ...]) -> Router:
        """This routing with these sellers' webhooks (a reload of the configuration); unchanged without a webhook
        endpoint (its name is another kind's endpoint: no worker delivers them)."""
        return replace(self, webhooks=webhooks) if self.webhook_endpoint is not None else self

    # -- what an accepted message sets off ----------------------------------------------------------------

    def endpoints_for(self, message_type: str, modes: Collection[str] = ()) -> tuple[str, ...]:
        """Endpoints of every matching route, in route order, each once."""
        out: dict[str, None] = {}
        for route in self.routes:
            if route.matches(message_type, modes):
                out.update(dict.fromkeys(route.endpoints))
        return tuple(out)

    def holds(self, message_type: str, app_types: Collection[str]) -> bool:
        """Is this message held until its shipments match? Declarations and changes of a held type are;
        a withdrawal (appType 3) alone is sent at once (there is nothing to match any more)."""
        return message_type in self.hold_types and any(t in ("1", "2") for t in app_types)

    def customs_endpoint(self, endpoints: Iterable[str]) -> str | None:
        return next((e for e in endpoints if self.endpoint_kinds.get(e) == "customs"), None)

    def cop_msg_id(self, guid: str, endpoints: Iterable[str]) -> str | None:
        """The CopMsgId the message carries to customs (None when no customs endpoint is routed)."""
        customs = self.customs_endpoint(endpoints)
        return cop_msg_id_for(f"{customs}:{guid}") if customs else None

    def message_jobs(
        self,
        *,
        message_id: int,
        guid: str,
        message_type: str,
        endpoints: Iterable[str],
        ordering_keys: Iterable[str] = (),
        resend: int = 0,
    ) -> list[JobSpec]:
        """One job per endpoint for a whole message; ``resend`` > 0 makes a re-send (new dedupe key,
        same CopMsgId). ``ordering_keys``: the :func:`ordering_key` of each of the message's documents."""
        keys = tuple(sorted(set(ordering_keys)))
        jobs = []
        for endpoint in endpoints:
            base = f"{endpoint}:{guid}"
            payload: dict[str, Any] = {"message_id": message_id, "guid": guid, "message_type": message_type}
            if self.endpoint_kinds.get(endpoint) == "customs":
                payload["cop_msg_id"] = cop_msg_id_for(base)
            key = f"{base}:resend{resend}" if resend else base
            jobs.append(JobSpec(endpoint, message_type, payload, key, ordering_keys=keys))
        return jobs

    def order_jobs(
        self, *, endpoints: Iterable[str], message_id: int, guid: str, message_type: str,
        documents: Sequence[OrderSource],
    ) -> list[JobSpec]:
        """The jobs of a declaration routed to warehouse endpoints (a site's delivery CEB711: inbound; an order CEB311
        for overseas-warehouse fulfilment: outbound): per document, the cancel of the order made from the version a
        change (appType 2) or withdrawal (3) replaces — a withdrawn delivery's parcels were not entered, a withdrawn
        order does not ship, a changed one is the new version's — and an order of each document it declares or changes
        (adapters.warehouse.build_orders of that ``doc_index``: its orderId the same for the same document), each
        behind the document's earlier orders (its ordering key). A withdrawal makes no order."""
        jobs = []
        for endpoint in endpoints:
            for d in documents:
                keys = (d.ordering_key,)
                if d.replaces is not None:
                    old_id, old_guid, old_index = d.replaces
                    what = "withdrawn" if d.app_type == "3" else "changed"
                    payload = {"message_id": old_id, "guid": old_guid, "doc_index": old_index,
                               "message_type": message_type,
                               "reason": f"{message_type} {what} (appType {d.app_type}, message {guid})"}  # fmt: skip
                    jobs.append(JobSpec(endpoint, WAREHOUSE_CANCEL, payload,
                                        f"{endpoint}:{old_guid}:{old_index}:cancel", ordering_keys=keys))  # fmt: skip
                if d.app_type != "3":
                    payload = {"message_id": message_id, "guid": guid, "doc_index": d.index,
                               "message_type": message_type}  # fmt: skip
                    jobs.append(JobSpec(endpoint, message_type, payload, f"{endpoint}:{guid}:{d.index}",
                                        ordering_keys=keys))  # fmt: skip
        return jobs

    def resend_jobs(
        self,
        *,
        message_id: int,
        guid: str,
        message_type: str,
        customs_endpoint: str,
        resend: int,
        delay_s: float,
        ordering_keys: Iterable[str] = (),
    ) -> list[JobSpec]:
        jobs = self.message_jobs(
            message_id=message_id, guid=guid, message_type=message_type, endpoints=[customs_endpoint],
            ordering_keys=ordering_keys, resend=resend,
        )  # fmt: skip
        return [replace(j, delay_s=delay_s) for j in jobs]

    # -- what a customs status change sets off --------------------------------------------------------------

    def release_jobs(
        self, *, message_id: int, guid: str, doc_index: int, ebp_code: str, order_no: str,
        numbers: Mapping[str, str] | None = None, consignee: Mapping[str, str] | None = None,
        consignee_from: str | None = None,
    ) -> list[JobSpec]:
        """Outbound orders for a released shipment (one per on_release endpoint, for its inventory). ``numbers``: the
        invtNo and preNo customs gave the inventory (its receipts), which its XML as declared lacks; ``consignee``
        (name, telephone, address): the 收货人 of the shipment's waybill or order (``consignee_from`` its message
        type), whom the parcel goes to — an inventory names only the buyer."""
        payload = _order_payload(message_id, guid, doc_index, ebp_code, order_no, numbers)
        if consignee is not None:
            payload["consignee"], payload["consigneeFrom"] = dict(consignee), consignee_from
        # the order's key: its cancel waits behind it (cancel_jobs)
        return [JobSpec(endpoint, "warehouse.outbound", dict(payload), f"{endpoint}:{guid}:{doc_index}",
                        ordering_keys=(f"{endpoint}:{guid}:{doc_index}",))
                for endpoint in self.on_release]  # fmt: skip

    def cancel_jobs(
        self, *, message_id: int, guid: str, doc_index: int, ebp_code: str, order_no: str, reason: str,
        numbers: Mapping[str, str] | None = None,
    ) -> list[JobSpec]:
        """The cancel of the outbound orders release_jobs made for an inventory whose cancellation customs concluded
        (one per on_release endpoint), each ordered behind its order: a cancel must not reach the warehouse first."""
        payload = {**_order_payload(message_id, guid, doc_index, ebp_code, order_no, numbers), "reason": reason}
        return [JobSpec(endpoint, WAREHOUSE_CANCEL, dict(payload), f"{endpoint}:{guid}:{doc_index}:cancel",
                        ordering_keys=(f"{endpoint}:{guid}:{doc_index}",))
                for endpoint in self.on_release]  # fmt: skip

    def sellers_of(self, parties: Iterable[str]) -> list[WebhookSettings]:
        codes = set(parties)
        return [w for w in self.webhooks if not w.codes.isdisjoint(codes)]

    def webhook_jobs(
        self,
        *,
        ebp_code: str,
        order_no: str,
        parties: Iterable[str],
        previous: str | None,
        status: str,
        info: str | None,
        event_id: str,
        leg: LegState | None,
        changed_at: str,
    ) -> list[JobSpec]:
        """One job per seller for a change of a shipment's customs status. ``event_id`` makes each change its own
        delivery (a status may come back: failed, replayed, failed again); the per-shipment ordering key delivers
        a seller's events of one shipment in the order they happened. ``leg``: the one whose receipt moved it
        (shipment_customs_word; None: no receipt decides the status) — customs' code, name, info and returnTime, and
        which document, so that a seller orders the changes by customs' own time —; ``changed_at``: when the gateway
        recorded the change (the shipment's customs_updated_at, ISO 8601), which orders them all."""
        data: dict[str, Any] = {"ebpCode": ebp_code, "orderNo": order_no, "customsStatus": status,
                                "previous": previous, "info": info, "changedAt": changed_at}  # fmt: skip
        data |= leg.customs_word() if leg is not None else {"customs": None, "document": None}
        return self._seller_events(WEBHOOK_EVENT, ebp_code, order_no, parties, data, f"{status}:{event_id}")

    def warehouse_webhook_jobs(
        self, *, ebp_code: str, order_no: str, parties: Iterable[str], order: Mapping[str, Any], event_id: str
    ) -> list[JobSpec]:
        """One job per seller when a warehouse order made from one of the shipment's documents went further
        (``order``: orderId, warehouseOrderNo, direction, status, previous, reason, occurredAt), in the same stream as
        the shipment's customs status changes: a seller hears of a shipment's events in the order they happened."""
        data = {"ebpCode": ebp_code, "orderNo": order_no, **order}
        return self._seller_events(WAREHOUSE_WEBHOOK_EVENT, ebp_code, order_no, parties, data,
                                   f"warehouse:{order['orderId']}:{order['status']}:{event_id}")  # fmt: skip

    def inventory_webhook_jobs(
        self, *, kind: str, outcome: str, ebp_code: str, order_no: str, parties: Iterable[str],
        document: Mapping[str, Any],
    ) -> list[JobSpec]:
        """One job per seller when customs concluded or refused a cancellation or return of the shipment's inventory, or
        released an inventory declared anew after a cancellation (``kind`` and ``outcome``: a key of INVENTORY_EVENTS;
        ``document``: messageType, guid, invtNo, customs, warehouseOrders and a reason), in the shipment's stream.
        Once per document and outcome: its guid makes the delivery's id."""
        event = INVENTORY_EVENTS[(kind, outcome)]
        data = {"ebpCode": ebp_code, "orderNo": order_no, **document}
        return self._seller_events(event, ebp_code, order_no, parties, data,
                                   f"{event.removeprefix('shipment.')}:{document['guid']}")  # fmt: skip

    def change_refused_webhook_jobs(
        self, *, ebp_code: str, order_no: str, parties: Iterable[str], document: Mapping[str, Any]
    ) -> list[JobSpec]:
        """One job per seller when customs refused a change or withdrawal of one of the shipment's legs and the version
        before it stands (``document``: kind, messageType, guid, appType of the refused one, and customs' word on it),
        in the shipment's stream; once per document: its guid makes the delivery's id."""
        data = {"ebpCode": ebp_code, "orderNo": order_no, **document}
        return self._seller_events(CHANGE_REFUSED_EVENT, ebp_code, order_no, parties, data,
                                   f"change_refused:{document['guid']}")  # fmt: skip

    def delivery_webhook_jobs(
        self, *, outcome: str, ebp_code: str, order_no: str, parties: Iterable[str], document: Mapping[str, Any],
        event_id: str, error: tuple[str | None, Iterable[str]] | None = None,
    ) -> list[JobSpec]:
        """One job per seller when the delivery to customs of one of the shipment's documents died or, replayed, reached
        customs (``outcome``: a key of DELIVERY_EVENTS; ``document``: messageType, guid, messageGuid, kind, appType,
        customsStatus), in the shipment's stream; dead, the dead job's ``error`` (its text, and the document's parties:
        a seller none of whose codes the document carries is told it died, not why — as the shipment's view shows it
        no transmission of that document). ``event_id`` tells one death of the document from the next (a replay that
        dies again), one delivery after a replay from another."""
        event = DELIVERY_EVENTS[outcome]
        data = {"ebpCode": ebp_code, "orderNo": order_no, **document}
        seen_by = None
        if error is not None:
            text, own = error[0], frozenset(error[1])

            def seen_by(w: WebhookSettings) -> Mapping[str, Any]:
                return {"error": text if w.codes & own else None}

        return self._seller_events(event, ebp_code, order_no, parties, data,
                                   f"delivery_{outcome}:{document['guid']}:{event_id}", seen_by)  # fmt: skip

    def reconciliation_told(self) -> str | None:
        """The state whose changes the store looks for when it writes shipments (RECONCILIATION_TOLD), or None when no
        seller has a webhook: then it looks for none, and a write costs what it did without them."""
        return RECONCILIATION_TOLD if self.webhook_endpoint is not None and self.webhooks else None

    def reconciliation_webhook_jobs(
        self,
        *,
        ebp_code: str,
        order_no: str,
        parties: Iterable[str],
        state: str,
        previous: str | None,
        missing: Iterable[str],
        findings: Iterable[Mapping[str, Any]],
        documents: Iterable[Mapping[str, Any]],
        event_id: str,
        previous_findings: Iterable[Mapping[str, Any]] | None = None,
    ) -> list[JobSpec]:
        """One job per seller when the shipment's reconciliation went to or from mismatched (``previous`` None: a new
        shipment), or stayed mismatched while its blocking findings changed (``previous_findings``: those it had; a
        seller that sees them as it saw them before — a value withheld from it changed, a document sent again — is
        told nothing), in the shipment's stream: its state, the legs still missing, and its blocking findings — what
        holds it — as the seller's API key would see them (gateway.auth.findings_view): the value of a document none
        of whose parties is the seller's (``documents``: message_type, doc_guid and parties of the documents the
        findings name, and those ``previous_findings`` name, gateway.outbox.documents_by_guid) withheld."""
        blocking = [dict(f) for f in findings if f.get("blocking", True)]
        before = None if previous_findings is None else [dict(f) for f in previous_findings if f.get("blocking", True)]
        docs = [dict(d) for d in documents]
        data = {"ebpCode": ebp_code, "orderNo": order_no, "state": state, "previous": previous,
                "missing": list(missing)}  # fmt: skip

        def seen_by(w: WebhookSettings) -> dict[str, Any] | None:
            seller = Principal(w.seller, Role.SUBMITTER, w.codes)
            readable = readable_sides(seller, docs)
            shown = findings_view(seller, blocking, readable) if blocking else []
            if before is not None and _as_told(shown) == _as_told(findings_view(seller, before, readable)):
                return None  # what holds the shipment, as this seller sees it, is what it was told
            return {"findings": shown}

        return self._seller_events(RECONCILIATION_WEBHOOK_EVENT, ebp_code, order_no, parties, data,
                                   f"reconciliation:{state}:{event_id}", seen_by)  # fmt: skip

    def _seller_events(
        self, event: str, ebp_code: str, order_no: str, parties: Iterable[str], data: Mapping[str, Any], suffix: str,
        seen_by: Callable[[WebhookSettings], Mapping[str, Any] | None] | None = None,
    ) -> list[JobSpec]:
        """One job per seller holding one of ``parties``: ``data``, and what ``seen_by`` gives that seller (None: the
        seller is told nothing)."""
        if self.webhook_endpoint is None:
            return []
        jobs = []
        for w in self.sellers_of(parties):
            stream = f"{self.webhook_endpoint}:{w.seller}:{ebp_code}:{order_no}"
            own = seen_by(w) if seen_by is not None else {}
            if own is None:
                continue
            payload = {"seller": w.seller, "event": event, "data": {**data, **own}}
            key = f"{stream}:{suffix}"
            jobs.append(JobSpec(self.webhook_endpoint, "webhook", payload, key, ordering_keys=(stream,)))
        return jobs


def _as_told(findings: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Blocking findings as a seller's event tells them, less the documents' guids: the same disagreement named by a
    newer version of a document is no news."""
    def side(s: Any) -> Any:
        return {k: v for k, v in s.items() if k != "guid"} if isinstance(s, Mapping) else s

    return [{**f, "left": side(f.get("left")), "right": side(f.get("right"))} for f in findings]


# --- versions the gateway holds, replaced before they were sent ---------------------------------------------


def unsent_because(withdrawn: bool, key_withdrawn: bool) -> str:
    """Why a document is unsent (never sent, never to be), as the views say it: ``withdrawn`` — it is a withdrawal,
    or its key was withdrawn — before anything of it went; else ``replaced``: a newer version took its place before
    it was sent (the newer one goes)."""
    return "withdrawn" if withdrawn or key_withdrawn else "replaced"


def unsent_info(withdrawn: bool, because: str) -> str:
    """The plain words the shipment and message views give of an unsent document (``withdrawn``: it is a withdrawal
    itself; ``because``: :func:`unsent_because`)."""
    if withdrawn:
        return ("withdrawal of a document customs never had (the gateway held it, spec §6.7): concluded here, "
                "nothing is sent to customs for it, and what customs says of it changes nothing")  # fmt: skip
    if because == "withdrawn":
        return ("withdrawn before it was sent: the gateway held it until its shipment could be declared (spec §6.7), "
                "so customs never had it; it will never be sent")  # fmt: skip
    return ("replaced before it was sent: the gateway held it (spec §6.7) and a newer version took its place, which "
            "goes instead; this one will never be sent")  # fmt: skip


@dataclass(frozen=True)
class HeldVersion:
    """A stored version of a document as :func:`settle_held` reads it: a version a change or withdrawal replaced (or one
    before that), or another document of such a version's message."""

    id: int
    message_id: int
    app_type: str
    forward_state: str
    is_current: bool = False
    withdrawn: bool = False  # it is a withdrawal (appType 3)
    key_withdrawn: bool = False  # a version of its key after it is a withdrawal (then declared anew, say)
    replaced_state: str | None = None  # the forward_state of the version it replaced; None: it replaced none


@dataclass(frozen=True)
class Replacement:
    """A change (appType 2) or withdrawal (appType 3) just stored that replaced a version the gateway holds.
    ``versions``: the versions before it, the latest first, back through those held or unsent to the first declaration
    (appType 1), or to the first one the gateway sent (the last then is that one)."""

    id: int
    app_type: str
    versions: tuple[HeldVersion, ...]

    @property
    def unseen(self) -> bool:
        """Customs has no version of the declaration it replaces: every one back to the first declaration is held or
        unsent."""
        return (bool(self.versions) and self.versions[-1].app_type == "1"
                and all(v.forward_state in ("held", "unsent") for v in self.versions))  # fmt: skip


@dataclass(frozen=True)
class Settled:
    """What becomes of the held versions replaced (:func:`settle_held`)."""

    dropped: frozenset[int]  # held messages never to be sent: each of their documents is unsent
    concluded: frozenset[int]  # withdrawals concluded here (unsent): customs never had a version of what they withdraw


def settle_held(replacements: Sequence[Replacement], messages: Mapping[int, Sequence[HeldVersion]]) -> Settled:
    """Which held versions replaced before they were sent still go to customs, and which withdrawals need not go.

    A held version replaced is sent no more (spec §6.7 held it: customs never had it) unless something needs it: the
    first declaration of a change still to go (customs takes a change only of a document it holds, −621042), or
    another document of its message (a message goes whole, under one signature) — the current version of a key, a
    first declaration its current change builds on, a withdrawal of something that went. A held message nothing of
    which is needed any more is dropped (never sent). A withdrawal of a declaration customs never had (every version
    back to its first declaration held or unsent) whose held versions are all dropped is concluded here: it is not
    sent. ``messages``: every document of the held versions' messages, read under lock."""
    base_kept: set[int] = set()
    unneeded = {v.id for r in replacements for v in r.versions if v.forward_state == "held"
                and not (r.app_type == "2" and r.unseen and v is r.versions[-1])}  # fmt: skip

    def needed(y: HeldVersion) -> bool:
        if y.forward_state != "held" or (y.id in unneeded and y.id not in base_kept):
            return False
        if y.withdrawn:  # it withdraws a version customs has or will have
            return y.replaced_state not in (None, "unsent")
        if y.is_current:
            return True
        return y.app_type == "1" and not y.key_withdrawn  # what a change still to go builds on

    while True:
        kept = {m for m, docs in messages.items() if any(needed(y) for y in docs)}
        # a change that goes with its message (for another document) needs its first declaration to go before it
        more = {r.versions[-1].id for r in replacements if r.unseen and r.versions[-1].forward_state == "held"
                and any(v.message_id in kept and v.app_type == "2" and v.forward_state == "held"
                        for v in r.versions[:-1])} - base_kept  # fmt: skip
        if not more:
            break
        base_kept |= more
    dropped = frozenset(m for m in messages if m not in kept)
    concluded = frozenset(r.id for r in replacements if r.app_type == "3" and r.unseen
                          and all(v.message_id in dropped for v in r.versions
                                  if v.forward_state == "held"))  # fmt: skip
    return Settled(dropped, concluded)


def _route(r: RouteSettings, endpoints: tuple[str, ...]) -> Route:
    return Route(frozenset(r.message_types), endpoints, frozenset(r.modes) if r.modes else None)


# --- shipment customs status --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegState:
    """A current leg of a shipment as far as customs is concerned."""

    kind: str  # order | payment | waybill | inventory; cancel: a cancellation of the inventory customs concluded
    forward_state: str
    customs_status: str | None = None
    customs_rank: int | None = None
    customs_info: str | None = None
    customs_time: str | None = None  # the returnTime of its receipt in force (yyyyMMddHHmmssSSS, as customs wrote it)
    message_type: str | None = None
    guid: str | None = None  # the document's (its head's guid)
    app_type: str = "1"
    withdrawn: bool = False  # a withdrawal (appType 3)

    def customs_word(self) -> dict[str, Any]:
        """What a seller's webhook says of the receipt in force on this leg and of its document."""
        return {"customs": {"code": self.customs_status, "name": rc.status_name(self.customs_status or ""),
                            "info": self.customs_info, "time": self.customs_time},
                "document": {"kind": self.kind, "messageType": self.message_type, "guid": self.guid}}  # fmt: skip


def inventory_in_force(versions: Sequence[LegState]) -> int | None:
    """Which version of a shipment's inventory its customs status follows: an index into ``versions`` — the current
    version, then each one it replaced, the latest first, back to its first declaration —, or None when that version
    is a withdrawal customs took (the shipment then has no inventory at customs).

    * one customs released (800 and above, not refused): the goods left, whatever a change sent after it says — customs
      refuses a change of a released inventory (−621043), and that refusal makes the released version current again;
    * else the current version once customs said a word of it (a refusal too);
    * else the latest version before it customs took, past those it refused: a change or withdrawal on its way (held,
      queued, sent, its delivery failed) leaves customs the version it holds, and customs' word on that one stands;
    * else the current version (a first declaration, or one declared anew: customs holds nothing before it)."""
    released = next((i for i, v in enumerate(versions)
                     if (v.customs_rank or 0) >= rc.RANK_RELEASED and v.forward_state != "rejected"), None)  # fmt: skip
    if released is not None:
        chosen = released
    elif versions[0].customs_rank is not None:
        chosen = 0
    else:
        chosen = next((i for i, v in enumerate(versions) if v.customs_rank is not None
                       and v.forward_state != "rejected"), 0)  # fmt: skip
    return None if versions[chosen].withdrawn else chosen


def shipment_customs_status(legs: Iterable[LegState]) -> tuple[str, str | None]:
    """(status, info) of a shipment from its current legs: :func:`shipment_customs_word` without the leg."""
    status, info, _ = shipment_customs_word(legs)
    return status, info


def shipment_customs_word(legs: Iterable[LegState]) -> tuple[str, str | None, LegState | None]:
    """(status, info) of a shipment from its current legs — of its inventory, the version :func:`inventory_in_force`
    says —, and the leg whose receipt put it there (the leg rejected, the inventory accepted, released or returned
    700, the cancellation concluded), None for a status no receipt decides (pending; declared: a leg on its way or
    taken; failed: a delivery a dead letter); see gateway/sql/020_forwarding.sql.

    A leg whose delivery failed makes the shipment ``failed`` only while customs has not accepted its inventory:
    customs' own word on the inventory stands (a change of an accepted inventory that fails leaves the shipment as
    customs left it: the inventory in force is the version customs holds). ``released`` is
    final: the outbox never recomputes a released shipment, so a later change, its rejection or its failed delivery
    shows on the document only, and the warehouse's outbound order and the sellers' webhook are never set off
    twice. A cancellation customs concluded of the inventory in force (a leg of kind ``cancel``) makes the shipment
    ``cancelled``: customs holds no inventory of it, whatever it said of that one before."""
    legs = list(legs)
    cancelled = next((leg for leg in legs if leg.kind == "cancel"), None)
    if cancelled is not None:
        name = rc.status_name(cancelled.customs_status) or ""
        info = f"cancel {cancelled.customs_status} {name}: {cancelled.customs_info or ''}".strip(" :")
        return "cancelled", info, cancelled
    inventory = next((leg for leg in legs if leg.kind == "inventory"), None)
    for leg in legs:
        if leg.forward_state == "rejected":
            name = rc.status_name(leg.customs_status) or ""
            return "rejected", f"{leg.kind} {leg.customs_status} {name}: {leg.customs_info or ''}".strip(" :"), leg
    if inventory is not None and inventory.customs_rank is not None:
        if rc.normalise(inventory.customs_status or "") == "700":
            info = f"inventory 700 {rc.status_name('700')}: {inventory.customs_info or ''}".strip(" :")
            return "rejected", info, inventory
        if inventory.customs_rank >= rc.RANK_RELEASED:
            return "released", inventory.customs_info, inventory
        if inventory.customs_rank >= rc.RANK_ACCEPTED:
            return "accepted", inventory.customs_info, inventory
    failed = next((leg for leg in legs if leg.forward_state == "failed"), None)
    if failed is not None:
        info = f"{failed.kind}: delivery to customs failed (a dead letter: replay it once the cause is fixed)"
        return "failed", info, None
    if any(leg.forward_state in ("sent", "receipted") for leg in legs):
        return "declared", None, None
    return "pending", None, None
