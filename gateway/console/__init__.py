"""Operators' console at ``/ops``: live shipment counts, the mismatch list, shipment timelines, queue health
with dead-letter replay, and charts — HTML, CSS and vanilla JS shipped in ``static/``, JSON under
``/ops/api/...``, live updates by Server-Sent Events. See docs/console.md.

Wire it into an application (before the application starts)::

    from gateway.console import setup_console
    setup_console(app, pool_key=POOL, keys_key=KEYS)
"""

from __future__ import annotations

from gateway.console.app import CONSOLE, STATIC_DIR, Console
from gateway.console.app import setup as setup_console
from gateway.console.session import SessionStore

__all__ = ["CONSOLE", "STATIC_DIR", "Console", "SessionStore", "setup_console"]
