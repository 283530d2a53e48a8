"""The console's live feed: one polling task per application, fanned out to every Server-Sent Events client.

Why polling and not LISTEN/NOTIFY: the figures come from tables the ingest path writes in its own
transactions. NOTIFY would need triggers on those tables (a cost on every message, paid whether anyone
watches or not) and a connection held out of the pool for LISTEN. One task polling once a second costs one
cheap round trip — a change marker made of index look-ups (newest shipment update and customs status change,
newest tax bill, warehouse callback, summary application and answer to one, customs' 179 question and answer to
its upload, newest receipt kept unmatched, newest message, rejection and attempt ids; and how many 179 questions and
unmatched receipts are open, the few that need a look, which a close lowers) — and runs the counts only when
the marker moved (or every few seconds, which also catches a transaction that committed late with an older
timestamp). It polls only while at least one browser is connected, and its cost does not grow with the number of
browsers.

Each client keeps only the latest value of each event (a slow client never makes memory grow); the list of
changed shipments is merged until the client takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from gateway.console import queries as q

log = structlog.get_logger("gateway.console.feed")

_CHANGED_LIMIT = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: A transaction stamps its rows with its start time and may commit after a later one: changes are read again
#: this far back, and those already announced are left out.
_LATE_COMMIT = timedelta(seconds=5)


def to_json(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, default=json_default, separators=(",", ":"))


def json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    # Decimal, enums and the like: their text is what the page shows
    return str(o)


class Subscriber:
    """One SSE client: the latest payload of each event, and a flag to wake its handler."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] = {}
        self.wake = asyncio.Event()
        self.closed = False

    def put(self, event: str, data: Any) -> None:
        if event == "summary" and "summary" in self.pending:
            # keep the shipments that changed since the client last read, not only the newest few
            older = self.pending["summary"].get("changed", [])
            seen = {(c["ebpCode"], c["orderNo"]) for c in data.get("changed", [])}
            merged = [c for c in older if (c["ebpCode"], c["orderNo"]) not in seen] + data.get("changed", [])
            data = {**data, "changed": merged[-_CHANGED_LIMIT:]}
        self.pending[event] = data
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def next(self, timeout: float) -> list[tuple[str, Any]]:
        """The pending events (empty after `timeout` seconds without any, or when closed)."""
        if not self.pending and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
        self.wake.clear()
        events = list(self.pending.items())
        self.pending.clear()
        return events


#: Where the gateway's own signing key stands now (gateway.signing.Signer.standing), or None without one.
Standing = Callable[[], dict[str, Any] | None]


def no_signer() -> dict[str, Any] | None:
    return None


#: The times among the marker's columns (q.MARKER): the newest is where the next poll's CHANGED reads from.
_MARKER_TIMES = ("shipments_at", "customs_at", "tax_bill_at", "warehouse_at", "warehouse_cancels_at", "summary_at",
                 "summary_answer_at")
#: Those that move when what awaits a summary declaration may have changed (the panel's list): a shipment's state or
#: customs status (a release, a withdrawal, a cancellation), a summary application stored, customs' answer to one.
_AWAITING_TIMES = ("shipments_at", "customs_at", "summary_at", "summary_answer_at")


class Feed:
    """Polls the database while someone listens and publishes ``summary``, ``queue`` and ``status`` events, and
    ``signing`` (where the gateway's signing key stands) when it changes."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval: float = 1.0,
        recount_every: int = 5,
        queue_every: int = 5,
        endpoints: Iterable[str] = (),
        webhook_endpoints: Iterable[str] = (),
        signing: Standing = no_signer,
    ) -> None:
        self.pool = pool
        self.signing = signing
        self.endpoints = tuple(endpoints)  # the configured queue endpoints, listed even when idle
        self.webhook_endpoints = tuple(webhook_endpoints)  # of those, the sellers' webhooks (paused sellers)
        self.interval = interval
        self.recount_every = recount_every
        self.queue_every = queue_every
        self.subscribers: set[Subscriber] = set()
        self.latest: dict[str, Any] = {}  # event -> last payload, handed to new subscribers at once
        self.ticks = 0
        self._marker: tuple[Any, ...] | None = None
        self._changed_since: datetime | None = None
        self._announced: dict[tuple[str, str], datetime] = {}  # shipment -> the change announced last
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._db_ok = True

    # --- subscribers ---

    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        for event, data in self.latest.items():
            sub.put(event, {**data, "changed": []} if event == "summary" else data)
        self.subscribers.add(sub)
        self._listening.set()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers:
            self._listening.clear()

    def publish(self, event: str, data: Any) -> None:
        self.latest[event] = data
        for sub in list(self.subscribers):
            sub.put(event, data)

    def close_subscribers(self) -> None:
        """End every SSE stream (application shutdown): their handlers return and the server can stop."""
        self._closing = True
        for sub in list(self.subscribers):
            sub.close()

    # --- the task ---

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-feed")

    async def stop(self) -> None:
        self.close_subscribers()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._closing:
            await self._listening.wait()
            standing = self.signing()  # renewed by a reload, or a day nearer its end: no database needed
            if standing != self.latest.get("signing"):
                self.publish("signing", standing)
            try:
                await self.tick()
                if not self._db_ok:
                    self._db_ok = True
                    self.publish("status", {"database": "ok"})
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                if self._db_ok:
                    log.warning("console_feed_database_error", error=str(exc))
                    self._db_ok = False
                    self.publish("status", {"database": "unavailable"})
            except Exception:
                log.exception("console_feed_failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        """One poll: the marker; the counts when it moved (or every recount_every ticks); the queue now and then."""
        async with self.pool.acquire(timeout=5) as conn:
            row = await conn.fetchrow(q.MARKER, timeout=5)
            marker = tuple(row or ())
            # the refused messages', the warehouse callbacks' and cancels', the 179 questions', the unmatched receipts'
            # and the awaiting summaries' panels reload when these move
            last_rejection = row["last_rejection"] if row is not None else None
            panels = {name: row[name] if row is not None else None
                      for name in ("last_unlinked_callback", "last_refused_callback", "warehouse_cancels_at",
                                   "open_warehouse_cancels", "last_question", "last_question_answer",
                                   "open_questions", "last_unmatched_receipt", "open_unmatched_receipts")}  # fmt: skip
            awaiting = max((t for t in (row[name] for name in _AWAITING_TIMES) if t is not None), default=None) \
                if row is not None else None  # fmt: skip
            panels["awaiting_at"] = awaiting.isoformat() if awaiting is not None else None
            recount = marker != self._marker or self.ticks % self.recount_every == 0
            if recount:
                summary = await build_summary(conn)
                changed: list[dict[str, Any]] = []
                overflow = False
                if self._marker is not None:  # not on the first poll: everything would count as changed
                    changed, overflow = await self._changed(conn)
                times = (row[name] for name in _MARKER_TIMES) if row is not None else ()
                newest = max((t for t in times if t is not None), default=None)
                self._changed_since = newest or self._changed_since
                previous = self.latest.get("summary")
                if (previous is None or changed or overflow or previous["shipments"] != summary["shipments"]
                        or previous.get("last_rejection") != last_rejection
                        or any(previous.get(name) != value for name, value in panels.items())):
                    # overflow: more changed than one event names; the pages reload what they show
                    self.publish("summary", {**summary, "changed": changed, "changed_overflow": overflow,
                                             "last_rejection": last_rejection, **panels})  # fmt: skip
                self._marker = marker
            if self.ticks % self.queue_every == 0:
                queue = await q.queue_health(conn, endpoints=self.endpoints, webhook_endpoints=self.webhook_endpoints)
                if _queue_moved(self.latest.get("queue", {}), queue):
                    self.publish("queue", {**queue, "as_of": datetime.now().astimezone()})
        self.ticks += 1

    async def _changed(self, conn: asyncpg.Connection) -> tuple[list[dict[str, Any]], bool]:
        """The shipments changed since the last poll (q.CHANGED: reconciliation, customs status, tax bills, warehouse
        callbacks, summary declaration), read from a little
        earlier (a late commit) without those already announced; and whether there were more than one event names."""
        since = (self._changed_since or _EPOCH) - _LATE_COMMIT
        # the rows already announced come back within the look-back: read past them
        rows = await conn.fetch(q.CHANGED, since, _CHANGED_LIMIT + len(self._announced) + 1, timeout=5)
        changed = []
        for r in rows:
            key = (r["ebp_code"], r["order_no"])
            if self._announced.get(key) == r["at"]:
                continue
            changed.append({"ebpCode": key[0], "orderNo": key[1], "state": r["state"], "at": r["at"]})
        overflow = len(changed) > _CHANGED_LIMIT
        changed = changed[:_CHANGED_LIMIT]
        for c in changed:
            self._announced[(c["ebpCode"], c["orderNo"])] = c.pop("at")
        self._announced = {k: at for k, at in self._announced.items() if at > since}
        return changed, overflow


def _queue_moved(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether the queue figures changed (the oldest awaited receipt's wait grows by itself: the page counts it)."""
    def awaited(q: dict[str, Any]) -> tuple[Any, Any]:
        a = q.get("receipts_awaited") or {}
        return a.get("count"), a.get("oldest_sent_at")

    return (
        before.get("endpoints") != now["endpoints"]
        or before.get("dead_newest") != now.get("dead_newest")
        or awaited(before) != awaited(now)
    )


async def build_summary(conn: asyncpg.Connection) -> dict[str, Any]:
    return {
        "shipments": await q.shipment_counts(conn),
        "as_of": datetime.now().astimezone(),
    }
