"""Console sessions and the cross-site request checks.

Design (docs/console.md, "Sessions and CSRF"):

* An operator signs in once with an API key of role operator or admin; the key itself is never stored.
  The session lives in PostgreSQL (``console_sessions``) under the SHA-256 of a random 256-bit id, so that
  every gateway process behind one address (``cbec serve --processes N``) knows it; the id travels in a
  cookie: ``HttpOnly`` (scripts cannot read it), ``SameSite=Strict`` (browsers do not send it on requests
  started by another site), ``Path=/ops``, ``Secure`` on HTTPS. The row remembers the digest of the key
  signed in with, not who it was: each request looks the key up in the current configuration, so a key
  removed (or given another role) ends or changes its sessions at once. Sessions end at sign-out, after
  ``idle_s`` without a request, and after ``max_age_s`` in any case.
* Every state-changing request (POST) also needs the session's CSRF token in the ``X-CSRF-Token`` header
  — the page reads it from ``GET /ops/api/session``, which another site cannot read — and an ``Origin``
  (or, without one, a ``Referer``) equal to the console's own origin or one configured as allowed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from gateway.auth import KeyRing, Principal
from gateway.config import Role

COOKIE = "cbec_ops"
CSRF_HEADER = "X-CSRF-Token"
CONSOLE_ROLES = frozenset({Role.OPERATOR, Role.ADMIN})

#: Before a new session: the expired ones go, then the oldest beyond capacity ($1 now, $2 idle_s, $3 max_age_s,
#: $4 sessions kept besides the new one).
_MAKE_ROOM = """
WITH expired AS (
    DELETE FROM console_sessions WHERE $1 - last_seen > $2 OR $1 - created > $3 RETURNING id_sha256
)
DELETE FROM console_sessions
 WHERE id_sha256 IN (SELECT id_sha256 FROM console_sessions ORDER BY created DESC, id_sha256 OFFSET $4)
   AND id_sha256 NOT IN (SELECT id_sha256 FROM expired)
"""
_INSERT = "INSERT INTO console_sessions (id_sha256, key_sha256, csrf, created, last_seen) VALUES ($1, $2, $3, $4, $4)"
_SELECT = "SELECT key_sha256, csrf, created, last_seen FROM console_sessions WHERE id_sha256 = $1"
_TOUCH = "UPDATE console_sessions SET last_seen = $2 WHERE id_sha256 = $1"
_DELETE = "DELETE FROM console_sessions WHERE id_sha256 = $1"


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
        # config.Role: operators watch the queues, replay dead letters and close what can never be settled (an
        # unmatched receipt, a 179 question); admins may too
        return self.principal.role in (Role.OPERATOR, Role.ADMIN)


@dataclass
class SessionStore:
    """Sessions in PostgreSQL keyed by the SHA-256 of their id (so the table never holds a usable cookie).

    ``clock`` is wall-clock seconds (shared by the processes); ``last_seen`` is written at most every
    ``touch_s`` seconds per session, so a session in use costs one read per request, not a write.
    """

    idle_s: float = 4 * 3600
    max_age_s: float = 12 * 3600
    max_sessions: int = 1000
    touch_s: float = 60.0
    clock: Callable[[], float] = field(default=time.time, repr=False)

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).digest()  # a cookie's bytes, as sent

    def _expired(self, now: float, created: float, last_seen: float) -> bool:
        return now - last_seen > self.idle_s or now - created > self.max_age_s

    async def create(self, pool: asyncpg.Pool, principal: Principal, key_digest: bytes) -> tuple[str, Session]:
        """A new session for the principal who signed in with the key of digest ``key_digest``."""
        if principal.role not in CONSOLE_ROLES:
            raise ValueError(f"role {principal.role} may not use the console")
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), now, now)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_MAKE_ROOM, now, self.idle_s, self.max_age_s, max(0, self.max_sessions - 1))
            await conn.execute(_INSERT, self._key(session_id), key_digest, session.csrf, now)
        return session_id, session

    async def get(self, pool: asyncpg.Pool, keys: KeyRing, session_id: str | None) -> Session | None:
        """The live session of this id, its principal as the configuration now says; None otherwise."""
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        row = await pool.fetchrow(_SELECT, key)
        if row is None:
            return None
        now = self.clock()
        principal = keys.by_digest(bytes(row["key_sha256"]))
        if self._expired(now, row["created"], row["last_seen"]) or principal is None or (
            principal.role not in CONSOLE_ROLES
        ):
            await pool.execute(_DELETE, key)
            return None
        last_seen = row["last_seen"]
        if now - last_seen >= self.touch_s:
            await pool.execute(_TOUCH, key, now)
            last_seen = now
        return Session(principal, row["csrf"], row["created"], last_seen)

    async def drop(self, pool: asyncpg.Pool, session_id: str | None) -> bool:
        if not session_id:
            return False
        return bool(await pool.execute(_DELETE, self._key(session_id)) != "DELETE 0")

    async def count(self, pool: asyncpg.Pool) -> int:
        return int(await pool.fetchval("SELECT count(*) FROM console_sessions"))


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
    return bool(presented) and hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), session.csrf.encode())
