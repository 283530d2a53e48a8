"""The one small interface every outbound adapter implements, and the failure classification they share.

An adapter takes one queue job's payload and delivers it somewhere (customs, an inspection service, a
warehouse, a seller's webhook). It either returns a :class:`SendResult` or raises one of the queue's two
exceptions, and that choice is the whole retry policy from the adapter's side:

* :class:`cbec_queue.TransientError` — try again later: connection refused/reset, DNS failure, timeouts,
  HTTP 5xx, 408, 425 and 429 (``Retry-After`` is reported in the message), DXP system codes 3xxx, a full disk.
* :class:`cbec_queue.PermanentError` — retrying the same payload cannot succeed: other HTTP 4xx, redirects
  (a misconfigured URL), invalid URLs, a destination the resolver refuses (:class:`DestinationRefused`), DXP
  format (0xxx), security (1xxx) and routing (2xxx) codes, a payload the adapter cannot understand.

HTTP adapters own one :class:`aiohttp.ClientSession` with explicit timeouts; ``start()`` opens it (also done
lazily on the first send), ``close()`` releases it; ``async with adapter:`` does both.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import aiohttp
from cbec_queue.errors import PermanentError, TransientError

__all__ = [
    "Adapter",
    "AdapterTimeouts",
    "DestinationRefused",
    "HttpAdapter",
    "HttpReply",
    "PermanentError",
    "SendResult",
    "TransientError",
    "classify_dxp_code",
    "classify_status",
    "parse_retry_after",
    "queue_handler",
    "response_code",
]

class DestinationRefused(OSError):
    """Raised by a connector's resolver for a destination no retry makes deliverable (a seller's webhook URL whose name
    resolves only to addresses webhooks may not go to): :meth:`HttpAdapter.post` makes it a PermanentError. An
    OSError, as aiohttp expects of a resolver (its strerror is what is said)."""


#: Statuses worth retrying besides 5xx: request timeout, too early, rate limited.
RETRYABLE_4XX = frozenset({408, 425, 429})
MAX_REPLY_BYTES = 1024 * 1024  # replies are acks; anything bigger is not worth buffering


@dataclass(frozen=True)
class SendResult:
    """What a successful delivery reports back to the queue (kept with the job for the operator)."""

    adapter: str
    reference: str | None = None  # CopMsgId, remote order id, written file ...
    status: int | None = None  # HTTP status; None for non-HTTP transports
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "reference": self.reference,
            "status": self.status,
            "detail": dict(self.detail),
        }


@runtime_checkable
class Adapter(Protocol):
    name: str

    async def send(self, job_payload: Mapping[str, Any]) -> SendResult:
        """Deliver one job; raise TransientError or PermanentError on failure."""
        ...


@dataclass(frozen=True)
class AdapterTimeouts:
    """Seconds. ``total`` bounds the whole request including reading the reply."""

    total: float = 30.0
    connect: float = 5.0
    sock_read: float = 25.0

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.total, connect=self.connect, sock_read=self.sock_read)

    @classmethod
    def of(cls, value: AdapterTimeouts | float | None) -> AdapterTimeouts:
        if value is None:
            return cls()
        if isinstance(value, AdapterTimeouts):
            return value
        v = float(value)
        return cls(total=v, connect=min(5.0, v), sock_read=v)


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON (parsed once: the DXP code check and the adapter both ask)."""
        return self._json

    @functools.cached_property
    def _json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return text + ("…" if len(body) > limit else "")


def classify_status(status: int, *, what: str, body: bytes = b"", retry_after: str | None = None) -> None:
    """Raise the queue exception an HTTP status calls for; return quietly for 2xx."""
    if 200 <= status < 300:
        return
    detail = f"{what}: HTTP {status}"
    if body:
        detail += f": {_snippet(body)}"
    if status >= 500 or status in RETRYABLE_4XX:
        if retry_after:
            detail += f" (Retry-After: {retry_after})"
        raise TransientError(detail, retry_after_s=parse_retry_after(retry_after))
    raise PermanentError(detail)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def classify_dxp_code(code: str) -> str | None:
    """``"transient"``, ``"permanent"`` or None (success / not an error) for a DXP response code (spec §5.4)."""
    code = code.strip()
    if not code.isdigit() or int(code) == 0:
        return None
    n = int(code)
    if 3000 <= n <= 3999:  # system: database, remote connection, remote timeout
        return "transient"
    # 0001-0999 format, 1000-1999 security, 2000-2999 routing, 4000+ user-defined: resending cannot help.
    return "permanent"


def response_code(reply: HttpReply) -> tuple[str, str] | None:
    """A DXP-style result code in a reply: JSON ``{"code": ..., "reason"|"message": ...}`` or a ``DxpRep``."""
    data = reply.json()
    if isinstance(data, Mapping) and data.get("code") is not None:
        return str(data["code"]), str(data.get("reason") or data.get("message") or "")
    if b"DxpRep" in reply.body[:1024]:
        from gateway.xmlsafe import parse_xml  # local: only DXP replies need it

        try:
            root = parse_xml(reply.body)
        except Exception:  # a garbled reply is reported by status alone
            return None
        for resp in root.iter("{*}Response"):
            code = (resp.findtext("{*}ResponseCode") or "").strip()
            if code:
                return code, (resp.findtext("{*}ResponseInfo") or "").strip()
    return None


def raise_for_dxp_code(reply: HttpReply, *, what: str) -> None:
    found = response_code(reply)
    if found is None:
        return
    code, info = found
    verdict = classify_dxp_code(code)
    if verdict == "transient":
        raise TransientError(f"{what}: DXP code {code}: {info}")
    if verdict == "permanent":
        raise PermanentError(f"{what}: DXP code {code}: {info}")


def queue_handler(adapter: Adapter) -> Callable[[Any], Awaitable[None]]:
    """Wrap an adapter as a ``cbec_queue.Worker`` handler (``async (job) -> None``).

    The job's dedupe key — or, without one, its id — becomes the payload's ``dedupe_key`` unless the payload
    names one (or a ``cop_msg_id``) itself, so the CopMsgId / requestId / delivery id an adapter derives from
    it is the same on every retry and on a replay of the job.
    """

    async def handle(job: Any) -> None:
        payload = dict(job.payload)
        if not payload.get("dedupe_key") and not payload.get("cop_msg_id"):
            payload["dedupe_key"] = job.dedupe_key or f"job:{job.id}"
        await adapter.send(payload)

    return handle


class HttpAdapter:
    """Base of the HTTP adapters: owns the session, maps transport failures to the queue's exceptions."""

    name = "http"

    def __init__(
        self,
        *,
        timeouts: AdapterTimeouts | float | None = None,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.timeouts = AdapterTimeouts.of(timeouts)
        self.headers = dict(headers or {})
        self._session = session
        self._owns_session = session is None

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeouts.client_timeout(), headers=self.headers)
            self._owns_session = True

    async def close(self) -> None:
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def post(
        self, url: str, *, data: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> HttpReply:
        """POST and read the reply; transport failures become Transient/PermanentError, statuses do not."""
        await self.start()
        assert self._session is not None
        hdrs = {"Content-Type": content_type, **(headers or {})}
        what = f"{self.name} POST {_display(url)}"
        try:
            async with self._session.post(url, data=data, headers=hdrs, allow_redirects=False) as resp:
                body = await resp.content.read(MAX_REPLY_BYTES)
                return HttpReply(resp.status, dict(resp.headers), body)
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:  # no retry makes a bad URL good
            raise PermanentError(f"{what}: invalid URL ({exc.__class__.__name__})") from None  # its text has the URL
        except TimeoutError as exc:  # ServerTimeoutError is one too
            raise TransientError(f"{what}: timed out ({exc.__class__.__name__}, limit {self.timeouts.total}s)") from exc
        except aiohttp.ClientError as exc:  # connection refused/reset, DNS, disconnects, broken payloads
            if isinstance(refused := getattr(exc, "os_error", None), DestinationRefused):
                raise PermanentError(f"{what}: {refused.strerror}") from None
            # the error's own text may quote the URL with its credentials: the logs, the jobs and the API show it
            # (not chained either: the stored traceback would quote it)
            detail = str(exc).replace(url, _display(url))
            raise TransientError(f"{what}: {exc.__class__.__name__}: {detail}") from None

    async def post_checked(
        self, url: str, *, data: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> HttpReply:
        """:meth:`post`, then classify the status and any DXP result code in the reply."""
        reply = await self.post(url, data=data, content_type=content_type, headers=headers)
        what = f"{self.name} POST {_display(url)}"
        classify_status(reply.status, what=what, body=reply.body, retry_after=reply.headers.get("Retry-After"))
        raise_for_dxp_code(reply, what=what)
        return reply


@functools.lru_cache(maxsize=256)
def _display(url: str) -> str:
    """The URL without credentials or query (which may carry tokens), for messages and logs. Cached: an adapter
    posts to a few URLs, and parsing one anew for every delivery cost ~4 % of a worker's CPU."""
    try:
        from yarl import URL

        u = URL(url)
        return str(u.with_user(None).with_query(None).with_fragment(None))
    except Exception:
        return "<invalid url>"
