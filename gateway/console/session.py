"""Console sessions and the cross-site request checks.

Design (docs/console.md, "Sessions and CSRF"):

* An operator signs in once with an API key of role operator or admin; the key itself is never stored.
  The server keeps a session in memory under the SHA-256 of a random 256-bit id and sends the id in a
  cookie: ``HttpOnly`` (scripts cannot read it), ``SameSite=Strict`` (browsers do not send it on requests
  started by another site), ``Path=/ops``, ``Secure`` on HTTPS. Sessions end at sign-out, after
  ``idle_s`` without a request, after ``max_age_s`` in any case, and when the process restarts
  (in-memory on purpose: a restart signs everybody out, and nothing secret is written anywhere).
* Every state-changing request (POST) also needs the session's CSRF token in the ``X-CSRF-Token`` header
  — the page reads it from ``GET /ops/api/session``, which another site cannot read — and an ``Origin``
  (or, without one, a ``Referer``) equal to the console's own origin or one configured as allowed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from gateway.auth import Principal
from gateway.config import Role

COOKIE = "cbec_ops"
CSRF_HEADER = "X-CSRF-Token"
CONSOLE_ROLES = frozenset({Role.OPERATOR, Role.ADMIN})


@dataclass
class Session:
    principal: Principal
    csrf: str
    created: float
    last_seen: float

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def role(self) -> Role:
        return self.principal.role

    @property
    def may_replay(self) -> bool:
        # config.Role: operators watch the queues and replay dead letters; admins may too
        return self.principal.role in (Role.OPERATOR, Role.ADMIN)


@dataclass
class SessionStore:
    """In-memory sessions keyed by the SHA-256 of their id (so the dict never holds a usable cookie)."""

    idle_s: float = 4 * 3600
    max_age_s: float = 12 * 3600
    max_sessions: int = 1000
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _sessions: OrderedDict[bytes, Session] = field(default_factory=OrderedDict, repr=False)

    def _now(self) -> float:
        return self.clock()

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode()).digest()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, principal: Principal) -> tuple[str, Session]:
        if principal.role not in CONSOLE_ROLES:
            raise ValueError(f"role {principal.role} may not use the console")
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)  # the oldest sign-in goes first
        now = self._now()
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), now, now)
        self._sessions[self._key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._now()
        if now - session.last_seen > self.idle_s or now - session.created > self.max_age_s:
            del self._sessions[key]
            return None
        session.last_seen = now
        return session

    def drop(self, session_id: str | None) -> bool:
        if not session_id:
            return False
        return self._sessions.pop(self._key(session_id), None) is not None

    def _expire(self) -> None:
        now = self._now()
        for key in [
            k for k, s in self._sessions.items() if now - s.last_seen > self.idle_s or now - s.created > self.max_age_s
        ]:
            del self._sessions[key]


def own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def origin_allowed(request: web.Request, allowed: Iterable[str], *, required: bool) -> bool:
    """Origin (else Referer's origin) must be the console's own or an allowed one; ``required``: one must be sent."""
    origin = request.headers.get("Origin")
    if origin == "null":
        return False  # sandboxed frames, file:// pages, privacy redirects: never the console itself
    if origin is None:
        referer = request.headers.get("Referer")
        if referer:
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
    if origin is None:
        return not required
    return origin == own_origin(request) or origin in set(allowed)


def csrf_ok(request: web.Request, session: Session) -> bool:
    presented = request.headers.get(CSRF_HEADER, "")
    return bool(presented) and hmac.compare_digest(presented.encode(), session.csrf.encode())
