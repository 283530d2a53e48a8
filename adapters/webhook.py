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

One webhook endpoint serves every seller, so its circuit breaker would let one seller's dead URL pause every other
seller's webhooks. Each seller's URL has a breaker of its own here instead (the endpoint's settings): its failures
are the job's own (``NotReady``: retried with backoff, not counted by the endpoint's breaker), and while its circuit
is open its jobs are put back untried (``Deferred``: no attempt counted) until the cool-down ends and one probe
tells whether the URL answers again — a probe that fails is put back likewise: a seller's events wait however long its
URL is away, none becomes a dead letter for it.

A seller's URL goes to public addresses only (:func:`refused_address`): its name is the seller's, who may point it at
any address at any time, and a gateway inside the bonded zone's network would POST its events to the cloud's metadata
service, its own port or the zone's intranet. A name is resolved for each connection and connected to only through
the public addresses it resolves to (:class:`PublicResolver`: nothing to rebind between the check and the connection);
an address in a loopback, private, link-local, shared, reserved or multicast range is refused unless one of the
gateway's ``forwarding.webhook_allowed_networks`` holds it — an IPv6 address carrying an IPv4 one (IPv4-mapped, 6to4,
NAT64) judged by the IPv4 address it reaches. Redirects are never followed.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import json
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from cbec_queue import BreakerSettings, CircuitBreaker, CircuitState, Deferred, NotReady
from yarl import URL

from adapters import dxp
from adapters.base import (
    AdapterTimeouts,
    DestinationRefused,
    HttpAdapter,
    PermanentError,
    SendResult,
    TransientError,
)

log = structlog.get_logger("adapters.webhook")

SIGNATURE_HEADER = "X-CBEC-Signature"
TIMESTAMP_HEADER = "X-CBEC-Timestamp"
EVENT_HEADER = "X-CBEC-Event"
DELIVERY_HEADER = "X-CBEC-Delivery"
DEFAULT_TOLERANCE = 300  # seconds a signed request stays acceptable


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """The networks (``10.20.0.0/16``, ``fd00::/8``, an address alone) a seller's webhook may be delivered to besides
    the public addresses; ValueError naming one that is none."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is no network (an address, or one with a prefix: 10.20.0.0/16)") from None
    return tuple(out)


def refused_address(address: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why a webhook may not be delivered to ``address`` (an IP address, as a URL or the resolver gives it), or None
    when it may: a public unicast address, or one of the ``allowed`` networks. Not an address at all: None (a name is
    resolved first, and its addresses judged)."""
    try:
        given = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    ip, how = _embedded_ipv4(given)
    if any(a in n for n in allowed for a in (given, ip)):
        return None
    said = f"{given} ({how}, to {ip})" if how else str(ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip in NAT64_LOCAL:
        return f"{said} is a local-use NAT64 address"  # RFC 8215: a network's own translator, to its own addresses
    for what, hit in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                      ("unspecified", ip.is_unspecified), ("private", ip.is_private)):  # fmt: skip
        if hit:
            return f"{said} is a {what} address"
    return None if ip.is_global and not ip.is_reserved else f"{said} is no public address"


#: NAT64's well-known prefix (RFC 6052): 64:ff9b::a9fe:a9fe is 169.254.169.254 on a network with a NAT64 gateway.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address
                   ) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]:  # fmt: skip
    """The IPv4 address an IPv6 one reaches (IPv4-mapped, 6to4, NAT64's well-known prefix) and how, else ``ip`` itself:
    Python 3.11 calls 64:ff9b::/96 and 2002::/16 global whatever IPv4 address they carry."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip, ""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    return ip, ""


class PublicResolver(AbstractResolver):
    """aiohttp's resolver keeping only the addresses a webhook may go to (:func:`refused_address`): the connection is
    made to those, so a name resolving to an internal address now and a public one when checked (DNS rebinding) gets
    nowhere. A name with none left fails for good (DestinationRefused: the job a dead letter), saying why — retried,
    it would wait for the seller to point it elsewhere, and a seller's failed probes wait untried."""

    def __init__(self, allowed: Sequence[Network] = (), inner: AbstractResolver | None = None) -> None:
        self.allowed = tuple(allowed)
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:  # fmt: skip
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if refused_address(r["host"], self.allowed) is None]
        if not kept:
            why = "; ".join(dict.fromkeys(refused_address(r["host"], self.allowed) or "" for r in found))
            # (errno, strerror): aiohttp's connection error quotes the strerror alone
            raise DestinationRefused(errno.EADDRNOTAVAIL, f"{host} resolves to no public address ({why}): webhooks go "
                                     "to public addresses only, or to forwarding.webhook_allowed_networks")  # fmt: skip
        return kept

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class WebhookEndpoint:
    url: str
    secret: str


EndpointLookup = Mapping[str, WebhookEndpoint] | Callable[[str], WebhookEndpoint | None]

#: The least a paused seller's job waits before it is claimed again (a cool-down of 0, a probe still out): the
#: worker would otherwise claim and put back the same jobs in a loop.
MIN_DEFER_S = 1.0


class SellerUnreachable(NotReady):
    """A seller's URL failed (time-out, 5xx, 429, refused): the job is retried with backoff, and the failure counts
    on that seller's breaker, not on the webhook endpoint's, which every seller shares."""


class SellerNotConfigured(PermanentError):
    """No webhook of ``seller`` in the configuration this adapter delivers with: removed by a reload (the job a dead
    letter), or — several processes, one reloaded before this one — added by a configuration newer than this
    process's, which its caller may wait for (gateway.workers.Delivery)."""

    def __init__(self, seller: str) -> None:
        super().__init__(f"no webhook endpoint configured for seller {seller!r}")
        self.seller = seller


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
        breaker: BreakerSettings | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        allowed: Sequence[Network] | None = None,
    ) -> None:
        """``allowed``: the networks besides the public addresses the sellers' URLs may reach (see the module); None
        checks nothing (a caller's own ``session``, a test's receiver)."""
        super().__init__(timeouts=timeouts, headers={"User-Agent": "cbec-gateway-webhook/1"}, session=session)
        self.allowed = None if allowed is None else tuple(allowed)
        self._endpoints = endpoints
        self._clock = clock
        self.breaker_settings = breaker or BreakerSettings()
        self._monotonic = monotonic
        # One breaker per seller and URL: a URL changed on a reload starts closed.
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._rng = random.Random()

    async def start(self) -> None:
        if self.allowed is None or (self._session is not None and not self._session.closed):
            return await super().start()
        connector = aiohttp.TCPConnector(resolver=PublicResolver(self.allowed))
        self._session = aiohttp.ClientSession(timeout=self.timeouts.client_timeout(), headers=self.headers,
                                              connector=connector)  # fmt: skip
        self._owns_session = True

    def seller_circuits(self) -> dict[str, CircuitState]:
        """The sellers whose URL's circuit is not closed (open: paused; half open: one probe out)."""
        return {seller: b.state for (seller, _), b in self._breakers.items() if b.state is not CircuitState.CLOSED}

    def _breaker(self, seller: str, url: str) -> CircuitBreaker:
        breaker = self._breakers.get((seller, url))
        if breaker is None:
            for key in [k for k in self._breakers if k[0] == seller]:  # the seller's old URL: forgotten
                del self._breakers[key]
            breaker = self._breakers[(seller, url)] = CircuitBreaker(self.breaker_settings, clock=self._monotonic)
        return breaker

    def _paused(self, seller: str, breaker: CircuitBreaker, *, probe: str | None = None) -> Deferred:
        """The job of a seller whose circuit lets nothing through now, put back until the probe may go (open), or for
        a cool-down while the probe is out (half open), spread a little so they do not all come back at once.
        ``probe``: this job was the probe, and failed so."""
        cooldown = self.breaker_settings.cooldown_s
        wait = breaker.retry_in() if breaker.state is CircuitState.OPEN else cooldown
        wait = max(wait, MIN_DEFER_S) + self._rng.uniform(0, min(5.0, max(cooldown, MIN_DEFER_S) / 10))
        done = f"sent as the probe, which failed ({probe})" if probe is not None else "not sent"
        return Deferred(f"seller {seller}'s webhook URL is paused after {self.breaker_settings.failure_threshold} "
                        f"failures in a row (its circuit {breaker.state.value}): {done}, tried again in "
                        f"{wait:.0f} s", delay_s=wait)  # fmt: skip

    @staticmethod
    def _log_change(seller: str, before: CircuitState, breaker: CircuitBreaker) -> None:
        after = breaker.state
        if after is before:
            return
        if after is CircuitState.OPEN:
            log.warning("webhook_seller_paused", seller=seller, failures=breaker.settings.failure_threshold,
                        cooldown_s=breaker.settings.cooldown_s)  # fmt: skip
        elif after is CircuitState.CLOSED:
            log.info("webhook_seller_resumed", seller=seller)

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
            raise SellerNotConfigured(seller)
        if self.allowed is not None:  # an address in the URL is connected to as it is (a name, through the resolver)
            host = URL(ep.url).host or ""
            if (why := refused_address(host, self.allowed)) is not None:
                raise PermanentError(f"seller {seller}'s webhook URL is refused: {why}; webhooks go to public "
                                     "addresses only, or to forwarding.webhook_allowed_networks")  # fmt: skip
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
        breaker = self._breaker(seller, ep.url)
        before = breaker.state
        if not breaker.allow():
            raise self._paused(seller, breaker)
        settled = False
        try:
            reply = await self.post_checked(ep.url, data=body, content_type="application/json", headers=headers)
            breaker.record_success()
            settled = True
        except TransientError as exc:
            breaker.record_failure()
            settled = True
            if before is not CircuitState.CLOSED:
                # The probe of a paused seller: its URL still away is no fault of this event, which waits with the
                # others, its attempt not counted — else a seller away longer than a few probes would find its
                # oldest events dead letters, one after another.
                raise self._paused(seller, breaker, probe=str(exc)) from exc
            raise SellerUnreachable(f"seller {seller}: {exc}", retry_after_s=exc.retry_after_s) from exc
        except PermanentError:
            breaker.record_success()  # the URL answered: the seller's to mend, not a reason to pause its others
            settled = True
            raise
        finally:
            if not settled:  # cancelled, or failed before an answer: the probe (if it was one) goes to the next job
                breaker.release_probe()
            self._log_change(seller, before, breaker)
        return SendResult(self.name, delivery_id, reply.status, {"seller": seller, "event": event})
