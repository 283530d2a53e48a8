"""Operators' console at ``/ops``: live shipment counts, the mismatch list, shipment timelines, queue health
with dead-letter replay, and charts — HTML, CSS and vanilla JS shipped in ``static/``, JSON under
``/ops/api/...``, live updates by Server-Sent Events. See docs/console.md.

Wire it into an application (before the application starts)::

    from gateway.console import setup_console
    setup_console(app, pool_key=POOL, keys_key=KEYS)
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg
from aiohttp import web

from gateway.auth import KeyRing
from gateway.console.app import CONSOLE, STATIC_DIR, Console, setup
from gateway.console.session import SessionStore

__all__ = ["CONSOLE", "STATIC_DIR", "Console", "SessionStore", "setup_console"]


def setup_console(
    app: web.Application,
    *,
    pool_key: web.AppKey[asyncpg.Pool],
    keys_key: web.AppKey[KeyRing],
    allowed_origins: Iterable[str] = (),
    secure_cookie: bool | None = None,
    customs_endpoints: str = "customs%",
    poll_interval: float = 1.0,
    sessions: SessionStore | None = None,
) -> None:
    """Add the console's routes, its live feed (started and stopped with the app) and security headers.

    ``pool_key`` / ``keys_key``: where the app keeps its asyncpg pool and its KeyRing (gateway.api's POOL
    and KEYS). ``allowed_origins``: origins besides the request's own that may POST (e.g.
    ``"https://ops.example.com"`` behind a TLS-terminating proxy). ``secure_cookie``: force the cookie's
    Secure flag (None: set it when the request came over HTTPS). ``customs_endpoints``: SQL LIKE pattern of
    the queue endpoints counted as "forwarded" in the charts. ``poll_interval``: seconds between the live
    feed's polls. Calling it twice on one app does nothing the second time.
    """
    setup(
        app,
        pool_key=pool_key,
        keys_key=keys_key,
        allowed_origins=allowed_origins,
        secure_cookie=secure_cookie,
        customs_endpoints=customs_endpoints,
        poll_interval=poll_interval,
        sessions=sessions,
    )
