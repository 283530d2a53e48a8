"""Warehouse adapter: create overseas / bonded warehouse orders from declared shipments.

The warehouse API is this gateway's own JSON contract (docs/adapters.md):

* **outbound** (pick, pack and ship a parcel to its consignee) from a CEB621 inventory — for 1210 bonded stock
  once customs released it (800) — or from a CEB311 order (overseas warehouse fulfilment); and (pick, pack and
  hand the parcels to the carrier, out of the special zone) from a released 1210 export inventory CEB603, whose
  order names no consignee;
* **inbound** (parcels arriving at the site) from a CEB711 delivery (入库明细单): one order per B/L, with the
  waybills unloaded under it.

One warehouse order per business document (an inventory, an order, a delivery), POSTed one by one. Each has
an ``orderId`` derived from the job's dedupe key and the document's position, sent again on every retry
(also as ``Idempotency-Key``), so a retry after a partial failure re-sends only duplicates the warehouse
recognises.

Job payload: ``{"message": "<CEB XML>", "dedupe_key": "...", "direction": "outbound"|"inbound"}``
(``direction`` optional: inbound for CEB711, outbound otherwise), and optionally ``doc_index`` (the one document
to make an order of), ``invtNo`` / ``preNo`` (the numbers customs gave the inventory, in its reference) and
``consignee`` ``{name, telephone, address}`` (the 收货人 of the shipment's waybill or order; without it an
inventory's order names its buyer).

Request ``POST <url>``::

    {"schema": "cbec.warehouse-order.v1", "orderId": "...", "direction": "outbound",
     "warehouseCode": "WH-HK-01", "callbackUrl": "https://gateway.example/v1/warehouse/callbacks",
     "reference": {"messageType": "CEB621", "guid": "...", "orderNo": "...", "ebcCode": "...", "logisticsNo": "...",
                   ...},
     "consignee": {"name": "...", "telephone": "...", "address": "..."},          # outbound only
     "items": [{"lineNo": "1", "sku": "...", "itemRecordNo": "...", "name": "...", "barCode": "...",
                "qty": "2", "unit": "142"}],                                       # goods lines, may be empty
     "parcels": [{"lineNo": "1", "logisticsNo": "..."}]}                           # inbound (CEB711) only

Reply: 2xx with ``{"warehouseOrderNo": "..."}`` (201 for a new order, 200 for a repeated orderId).

Cancel ``POST <url>/<orderId>/cancel`` (``Idempotency-Key: <orderId>:cancel``) — customs concluded the cancellation
of the inventory the order was made from (CEB624 / CEB606 399), so the parcel must not go (or must come back); or the
delivery (or order) a route made it from was changed or withdrawn (gateway.forward.Router.order_jobs)::

    {"schema": "cbec.warehouse-cancel.v1", "orderId": "...", "warehouseCode": "WH-HK-01",
     "reason": "...", "reference": {...}}                                           # the order's reference

Reply: 2xx (a repeat too); 404 for an orderId the warehouse never took (the gateway keeps it as a dead letter, to be
replayed once the order went); another 4xx, ``{"code": "...", "reason": "..."}``, for a cancel it refuses (the parcel
cannot be stopped: :class:`CancelRefused`). The warehouse then reports ``cancelled`` by callback, once the goods are
back in stock (a shipped parcel stopped or returned). The gateway records each cancel with the order
(gateway.outbox: warehouse_cancels) and flags one the warehouse refuses, does not confirm in time, or reports progress
on the order after (:data:`PROGRESS`).

Callback — the warehouse later POSTs status changes to ``callbackUrl``::

    {"schema": "cbec.warehouse-callback.v1", "orderId": "...", "warehouseOrderNo": "...",
     "direction": "outbound", "status": "shipped", "reason": null,
     "occurredAt": "2026-11-20T10:15:00+08:00", "timestamp": 1795140900, "reference": {...}}

``status`` is one of :data:`CALLBACK_STATUSES`. When a shared secret is configured the callback carries the
same ``X-CBEC-Signature`` / ``X-CBEC-Timestamp`` headers as seller webhooks; :func:`parse_callback` checks
them and the shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import structlog

from adapters import dxp
from adapters.base import AdapterTimeouts, HttpAdapter, PermanentError, SendResult, classify_status
from adapters.customs import payload_message
from adapters.webhook import verify_signature
from gateway.documents import Document, extract
from gateway.errors import MessageRejected
from gateway.render import read_json
from gateway.xmlsafe import parse_message

log = structlog.get_logger("adapters.warehouse")

ORDER_SCHEMA = "cbec.warehouse-order.v1"
CANCEL_SCHEMA = "cbec.warehouse-cancel.v1"
CALLBACK_SCHEMA = "cbec.warehouse-callback.v1"
DIRECTIONS = ("inbound", "outbound")
CALLBACK_STATUSES = ("accepted", "received", "picked", "shipped", "delivered", "rejected", "cancelled")
#: The statuses of an order going on: one of these reported after the gateway asked to cancel the order says the goods
#: may be on their way all the same (rejected and cancelled end it: nothing goes).
PROGRESS = frozenset(CALLBACK_STATUSES) - {"rejected", "cancelled"}
#: The statuses of the goods moving: one of these after a cancel was asked needs a look at once. Not an acceptance of
#: the order, which moves nothing and may come after a cancel queued right behind its order (a change of it, made
#: before the warehouse answered the order).
GOING_ON = PROGRESS - {"accepted"}
CODES = {
    "warehouse.bad_callback": "a warehouse callback (POST /v1/warehouse/callbacks) that is not the contract's: not a "
    "JSON object of schema cbec.warehouse-callback.v1, orderId, warehouseOrderNo, direction, status or occurredAt "
    "missing, a direction or status not in the contract (HTTP 422)",
}

#: How far an order has gone: callbacks may come twice or out of order, and an order's status is its furthest. An
#: order ends rejected or cancelled whatever came before.
STATUS_RANK = {"accepted": 1, "received": 2, "picked": 3, "shipped": 4, "delivered": 5, "rejected": 6, "cancelled": 6}


def furthest(events: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Of one order's callbacks (each with ``status``, in the order they came), the one of the furthest status; of two
    equally far, the later."""
    best: Mapping[str, Any] | None = None
    for event in events:
        if best is None or STATUS_RANK.get(event["status"], 0) >= STATUS_RANK.get(best["status"], 0):
            best = event
    return best

_REFERENCE_FIELDS: dict[str, tuple[str, ...]] = {
    "CEB621": ("guid", "orderNo", "ebpCode", "ebcCode", "logisticsCode", "logisticsNo", "copNo", "preNo", "invtNo",
               "tradeMode", "emsNo", "areaCode", "customsCode"),
    "CEB603": ("guid", "orderNo", "ebpCode", "ebcCode", "logisticsCode", "logisticsNo", "copNo", "preNo", "invtNo",
               "tradeMode", "emsNo", "iacCode", "customsCode", "portCode", "loctNo", "country"),
    "CEB311": ("guid", "orderNo", "ebpCode", "ebcCode", "payTransactionId"),
    "CEB711": ("guid", "billNo", "trafMode", "trafNo", "voyageNo", "logisticsCode", "operatorCode", "copNo",
               "customsCode", "unloadLocation"),
}  # fmt: skip


@dataclass(frozen=True)
class WarehouseConfig:
    url: str
    warehouse_code: str
    callback_url: str | None = None
    timeouts: AdapterTimeouts = field(default_factory=lambda: AdapterTimeouts(total=15.0))
    headers: Mapping[str, str] = field(default_factory=dict)


def order_id(key: str, index: int) -> str:
    """The orderId of the order made from document ``index`` (1-based) of a message, for the job key ``key`` (the
    gateway's: the message's guid): the same on every retry, and how a callback's order is known to be the gateway's
    order for that document."""
    return dxp.cop_msg_id_for(f"warehouse:{key}:{index}")


def _pick(values: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {n: values[n] for n in names if values.get(n)}


def _items(doc: Document) -> list[dict[str, str]]:
    out = []
    for line in doc.lines:
        item = {
            "lineNo": line.get("gnum", ""),
            "sku": line.get("itemNo", ""),
            "itemRecordNo": line.get("itemRecordNo", ""),
            "name": line.get("itemName") or line.get("gname", ""),
            "barCode": line.get("barCode", ""),
            "qty": line.get("qty", ""),
            "unit": line.get("unit", ""),
        }
        out.append({k: v for k, v in item.items() if v})
    return out


def build_orders(job_payload: Mapping[str, Any], config: WarehouseConfig) -> list[dict[str, Any]]:
    """One warehouse order body per business document of the job's message."""
    try:
        root, mtype = parse_message(payload_message(job_payload))
    except MessageRejected as exc:
        raise PermanentError(f"warehouse job payload is not a CEB message: {exc}") from exc
    ref_fields = _REFERENCE_FIELDS.get(mtype.code)
    if ref_fields is None:
        known = ", ".join(_REFERENCE_FIELDS)
        raise PermanentError(f"no warehouse order can be made from a {mtype.code} (only {known})")
    direction = job_payload.get("direction") or ("inbound" if mtype.code == "CEB711" else "outbound")
    if direction not in DIRECTIONS:
        raise PermanentError(f"warehouse direction must be inbound or outbound, not {direction!r}")
    parsed = extract(root, mtype)
    key = job_payload.get("dedupe_key") or parsed.guid
    if not isinstance(key, str) or not key:
        raise PermanentError("warehouse job payload needs a dedupe_key (or a message guid) for stable order ids")
    index = job_payload.get("doc_index") or 0
    documents = [doc for doc in parsed.documents if index in (0, doc.index)]
    if not documents:
        raise PermanentError(f"the message has no document {index}")
    # customs' numbers (CEB622 / CEB604), which the XML as declared lacks: how the zone warehouse ties the release
    # to its account book's write-off
    numbers = {k: v for k in ("invtNo", "preNo") if isinstance(v := job_payload.get(k), str) and v}
    consignee = job_payload.get("consignee")
    orders = []
    for doc in documents:
        body: dict[str, Any] = {
            "schema": ORDER_SCHEMA,
            "orderId": order_id(key, doc.index),
            "direction": direction,
            "warehouseCode": config.warehouse_code,
            "reference": {"messageType": mtype.code, **_pick(doc.head, ref_fields), **numbers},
            "items": [] if mtype.code == "CEB711" else _items(doc),
        }
        if config.callback_url:
            body["callbackUrl"] = config.callback_url
        h = doc.head
        if mtype.code == "CEB711":
            body["parcels"] = [
                {"lineNo": line.get("gnum", ""), "logisticsNo": line.get("logisticsNo", "")} for line in doc.lines
            ]
        elif direction == "outbound" and mtype.flow == "import":  # an export's buyer is abroad: the carrier's
            if isinstance(consignee, Mapping):  # the 收货人 of the shipment's waybill or order
                body["consignee"] = {k: str(consignee.get(k) or "") for k in ("name", "telephone", "address")}
            else:  # none held: an inventory names only the buyer
                name = h.get("consignee") or h.get("buyerName", "")
                phone = h.get("consigneeTelephone") or h.get("buyerTelephone", "")
                body["consignee"] = {"name": name, "telephone": phone, "address": h.get("consigneeAddress", "")}
        orders.append(body)
    return orders


def cancel_url(config: WarehouseConfig, order: str) -> str:
    """Where the cancel of order ``order`` goes: under the orders' URL."""
    return f"{config.url.rstrip('/')}/{quote(order, safe='')}/cancel"


def build_cancel(job_payload: Mapping[str, Any], config: WarehouseConfig) -> dict[str, Any]:
    """The cancel body of the order made from document ``doc_index`` of the job's message (its payload as
    :func:`build_orders`', with ``reason``): its orderId and reference, as the order went."""
    if not job_payload.get("doc_index"):
        raise PermanentError("a warehouse cancel names the document its order was made from (doc_index)")
    [order] = build_orders(job_payload, config)
    reason = job_payload.get("reason")
    return {"schema": CANCEL_SCHEMA, "orderId": order["orderId"], "warehouseCode": config.warehouse_code,
            "reason": reason if isinstance(reason, str) else "", "reference": order["reference"]}  # fmt: skip


class CancelRefused(PermanentError):
    """The warehouse answered a cancel with a refusal — a 4xx no retry changes (404: it never took the order; 409 or
    another: it will not stop the parcel) —: a dead letter, its ``answer`` ``{status, code, reason}`` as the warehouse
    gave them (``code``, ``reason`` from a JSON body, else ``reason`` the body's start)."""

    def __init__(self, message: str, answer: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.answer = dict(answer)


def refusal(status: int, body: bytes, data: Any) -> dict[str, Any]:
    """A refused cancel's answer: its HTTP ``status`` and, from its JSON body (``data``), ``code`` and ``reason`` — or
    the body's first 200 characters as ``reason``."""
    if isinstance(data, Mapping):
        code, why = data.get("code"), data.get("reason")
        return {"status": status, "code": code if isinstance(code, str) else None,
                "reason": why if isinstance(why, str) else None}  # fmt: skip
    text = body[:200].decode("utf-8", "replace").strip()
    return {"status": status, "code": None, "reason": text or None}


class WarehouseAdapter(HttpAdapter):
    name = "warehouse"

    def __init__(self, config: WarehouseConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(timeouts=config.timeouts, headers=config.headers, session=session)
        self.config = config

    async def send(self, job_payload: Mapping[str, Any]) -> SendResult:
        created: list[dict[str, Any]] = []
        orders = build_orders(job_payload, self.config)
        if "consignee" not in job_payload and any("consignee" in o for o in orders):  # no waybill or order held
            log.warning("warehouse_consignee_of_inventory", order_no=job_payload.get("orderNo"),
                        order_ids=[o["orderId"] for o in orders])  # fmt: skip
        for body in orders:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers = {"Idempotency-Key": body["orderId"]}
            reply = await self.post_checked(
                self.config.url, data=data, content_type="application/json", headers=headers
            )
            ack = reply.json()
            number = ack.get("warehouseOrderNo") if isinstance(ack, Mapping) else None
            created.append({"orderId": body["orderId"], "warehouseOrderNo": number, "status": reply.status})
        reference = created[0]["orderId"] if len(created) == 1 else None
        return SendResult(self.name, reference, created[-1]["status"] if created else None, {"orders": created})

    async def cancel(self, job_payload: Mapping[str, Any]) -> SendResult:
        """The cancel of the order :meth:`send` made from document ``doc_index`` of the job's message
        (:func:`build_cancel`), at ``<url>/<orderId>/cancel``. A 4xx no retry changes raises :class:`CancelRefused`
        with the warehouse's answer; ``detail["answer"]`` is its answer to one it took."""
        body = build_cancel(job_payload, self.config)
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        url = cancel_url(self.config, body["orderId"])
        reply = await self.post(url, data=data, content_type="application/json",
                                headers={"Idempotency-Key": f"{body['orderId']}:cancel"})  # fmt: skip
        try:
            classify_status(reply.status, what=f"warehouse cancel of {body['orderId']}", body=reply.body,
                            retry_after=reply.headers.get("Retry-After"))  # fmt: skip
        except PermanentError as exc:
            if 400 <= reply.status < 500:  # the warehouse's word; a redirect is a URL configured wrong
                raise CancelRefused(str(exc), refusal(reply.status, reply.body, reply.json())) from None
            raise
        ack = reply.json()
        number = ack.get("warehouseOrderNo") if isinstance(ack, Mapping) else None
        answer = {"status": reply.status, "warehouseOrderNo": number if isinstance(number, str) else None}
        return SendResult(self.name, body["orderId"], reply.status, {"cancelled": body["orderId"], "answer": answer})


@dataclass(frozen=True)
class WarehouseCallback:
    order_id: str
    warehouse_order_no: str
    direction: str
    status: str
    occurred_at: str
    reason: str | None
    reference: Mapping[str, Any]
    raw: Mapping[str, Any]


def parse_callback(
    body: bytes,
    *,
    secret: str | bytes | None = None,
    signature: str | None = None,
    timestamp: str | None = None,
    tolerance: float | None = 300,
) -> WarehouseCallback:
    """Check (signature when ``secret`` is given, then shape) and read a warehouse callback; ValueError if bad."""
    if secret is not None and not verify_signature(secret, body, signature, timestamp=timestamp, tolerance=tolerance):
        raise ValueError("warehouse callback signature does not verify")
    try:
        read_json(body)  # as strictly as a JSON message: no member twice, no NUL or lone surrogate
        doc = orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))  # as stored (jsonb): numbers as the database takes them
    except ValueError as exc:  # orjson.JSONDecodeError is one
        raise ValueError(f"warehouse callback: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != CALLBACK_SCHEMA:
        raise ValueError(f"warehouse callback must be an object with schema {CALLBACK_SCHEMA!r}")
    for name in ("orderId", "warehouseOrderNo", "direction", "status", "occurredAt"):
        if name not in doc or doc[name] is None:
            raise ValueError(f"warehouse callback lacks {name}")
        if not isinstance(doc[name], str) or not doc[name].strip():
            raise ValueError(f"warehouse callback {name} must be a non-empty string, found {doc[name]!r:.80}")
    if doc["direction"] not in DIRECTIONS:
        raise ValueError(f"warehouse callback direction {doc['direction']!r} is not inbound/outbound")
    if doc["status"] not in CALLBACK_STATUSES:
        raise ValueError(f"warehouse callback status {doc['status']!r} is not one of {', '.join(CALLBACK_STATUSES)}")
    try:  # the warehouse's own time, kept as it wrote it (its offset says where), but a time
        datetime.fromisoformat(doc["occurredAt"])
    except ValueError:
        raise ValueError(f"warehouse callback occurredAt {doc['occurredAt']!r:.80} is not an ISO 8601 time") from None
    reason, ref = doc.get("reason"), doc.get("reference")
    if reason is not None and not isinstance(reason, str):
        raise ValueError("warehouse callback reason must be a string")
    if ref is not None and not isinstance(ref, dict):
        raise ValueError("warehouse callback reference must be an object (the document the order was made from)")
    return WarehouseCallback(
        order_id=doc["orderId"],
        warehouse_order_no=doc["warehouseOrderNo"],
        direction=doc["direction"],
        status=doc["status"],
        occurred_at=doc["occurredAt"],
        reason=reason,
        reference=ref or {},
        raw=doc,
    )
