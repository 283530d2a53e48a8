"""Seller webhooks: POST a JSON status change to the seller's URL, signed with a shared secret.

Request (documented for sellers in docs/adapters.md)::

    POST <seller url>
    Content-Type: application/json
    X-CBEC-Event: shipment.customs_status_changed
    X-CBEC-Delivery: 6F1C...            # same value on every retry of this event: dedupe on it
    X-CBEC-Timestamp: 1767225600        # Unix seconds when this attempt was signed
    X-CBEC-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>

    {"id": "6F1C...", "event": "shipment.customs_status_changed", "timestamp": 1767225600, "data": {...}}

The HMAC covers the raw body bytes exactly as sent; the body repeats the timestamp, so the timestamp is
signed too. To verify: compute HMAC-SHA256 over the raw body with the shared secret, compare it with the
hex after ``sha256=`` in constant time, check that the header timestamp equals the body's and is within a
few minutes of now (replay protection), then dedupe on ``id``. :func:`verify_signature` does all of it.

Job payload::

    {"seller": "S001", "event": "shipment.customs_status_changed", "data": {...},
     "id": "...optional delivery id...", "dedupe_key": "..."}

The seller's URL and secret are looked up by ``seller`` in the adapter's endpoint table (never stored in the
job, so secrets do not end up in the queue's database).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp

from adapters import dxp
from adapters.base import AdapterTimeouts, HttpAdapter, PermanentError, SendResult

SIGNATURE_HEADER = "X-CBEC-Signature"
TIMESTAMP_HEADER = "X-CBEC-Timestamp"
EVENT_HEADER = "X-CBEC-Event"
DELIVERY_HEADER = "X-CBEC-Delivery"
DEFAULT_TOLERANCE = 300  # seconds a signed request stays acceptable


@dataclass(frozen=True)
class WebhookEndpoint:
    url: str
    secret: str


EndpointLookup = Mapping[str, WebhookEndpoint] | Callable[[str], WebhookEndpoint | None]


def sign_body(secret: str | bytes, body: bytes) -> str:
    """The ``X-CBEC-Signature`` value for ``body``: ``sha256=<hex>``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    body: bytes,
    signature: str | None,
    *,
    timestamp: str | None = None,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True when ``signature`` is the body's HMAC, the body's signed ``timestamp`` is within ``tolerance`` seconds
    of now (None: not checked), and the ``timestamp`` header, when given, is that one.

    The freshness is the body's, never only the header's: a replay with the header left out must not pass."""
    if not signature or not signature.startswith("sha256="):
        return False
    if not hmac.compare_digest(sign_body(secret, body).encode(), signature.strip().encode()):
        return False
    if tolerance is None and timestamp is None:
        return True
    try:
        doc = json.loads(body)
        header = int(timestamp) if timestamp is not None else None
    except (ValueError, UnicodeDecodeError):
        return False
    signed = doc.get("timestamp") if isinstance(doc, Mapping) else None
    if not isinstance(signed, int) or isinstance(signed, bool):
        return False  # no signed time: nothing tells a replay from a delivery
    if header is not None and header != signed:
        return False  # a header timestamp not bound to the signed body proves nothing
    current = time.time() if now is None else now
    return tolerance is None or abs(current - signed) <= tolerance


def _json_default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return str(o)  # money stays exact: sellers get the decimal text
    raise TypeError(f"{o.__class__.__name__} is not JSON serialisable")


def encode_event(delivery_id: str, event: str, data: Any, timestamp: int) -> bytes:
    doc = {"id": delivery_id, "event": event, "timestamp": timestamp, "data": data}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode("utf-8")


def signed_headers(secret: str | bytes, body: bytes, *, timestamp: int, event: str, delivery_id: str) -> dict[str, str]:
    return {
        SIGNATURE_HEADER: sign_body(secret, body),
        TIMESTAMP_HEADER: str(timestamp),
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
    }


class WebhookAdapter(HttpAdapter):
    name = "webhook"

    def __init__(
        self,
        endpoints: EndpointLookup,
        *,
        timeouts: AdapterTimeouts | float | None = 10.0,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(timeouts=timeouts, headers={"User-Agent": "cbec-gateway-webhook/1"}, session=session)
        self._endpoints = endpoints
        self._clock = clock

    def use(self, endpoints: EndpointLookup) -> None:
        """Deliver with these sellers' URLs and secrets from now on (a reload of the configuration): a job of a seller
        no longer among them fails as permanent."""
        self._endpoints = endpoints

    def endpoint(self, seller: str) -> WebhookEndpoint | None:
        if callable(self._endpoints):
            return self._endpoints(seller)
        return self._endpoints.get(seller)

    async def send(self, job_payload: Mapping[str, Any]) -> SendResult:
        seller = job_payload.get("seller")
        event = job_payload.get("event")
        if not isinstance(seller, str) or not seller or not isinstance(event, str) or not event:
            raise PermanentError("webhook job payload needs \"seller\" and \"event\"")
        ep = self.endpoint(seller)
        if ep is None:
            raise PermanentError(f"no webhook endpoint configured for seller {seller!r}")
        delivery_id = job_payload.get("id")
        if not isinstance(delivery_id, str) or not delivery_id:
            key = job_payload.get("dedupe_key")
            if not isinstance(key, str) or not key:
                raise PermanentError("webhook job payload needs \"id\" or \"dedupe_key\" (a stable delivery id)")
            delivery_id = dxp.cop_msg_id_for(f"webhook:{key}")
        ts = int(self._clock())
        try:
            body = encode_event(delivery_id, event, job_payload.get("data"), ts)
        except TypeError as exc:
            raise PermanentError(f"webhook data is not JSON serialisable: {exc}") from exc
        headers = signed_headers(ep.secret, body, timestamp=ts, event=event, delivery_id=delivery_id)
        reply = await self.post_checked(ep.url, data=body, content_type="application/json", headers=headers)
        return SendResult(self.name, delivery_id, reply.status, {"seller": seller, "event": event})
