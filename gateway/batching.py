"""Micro-batching: each caller hands over one item and awaits its outcome; items waiting together run as one batch.

Why: a database transaction costs more than its statements. BEGIN, taking its locks, COMMIT — whose WAL
flush waits for the disk — and the pool's reset cost the same for one item as for thirty. Under load the
items pile up while a batch runs, so the next batch is bigger and that cost is paid once per batch instead of
once per item. An idle process runs each item alone at once: a batch never waits for company (no timer).

:class:`Batcher` is that scheduling, shared by gateway.store (the ingest of messages) and gateway.outbox
(record_sent):

* at most ``max_parallel`` batches at once (each holds a pool connection), at most ``max_batch`` items each;
  with ``another_when_full``, a drain beside the running one(s) starts only once a full batch waits: the items
  arriving while a batch runs then make a bigger next batch, which costs less per item than two small ones
  (BEGIN, the locks, the round trips and the commit are paid per batch) — what both the store's ingest and the
  outbox's record_sent measured better (see where they set it);
* a batch of several that fails runs again one item at a time, so that only the guilty one fails;
* a single item is retried while ``retryable`` says so (a deadlock, a serialization failure …), at most
  ``attempts`` runs in all; the last error goes to its caller, through ``failure`` (a unique violation read as
  a conflict …);
* an error of ``again`` runs the same batch again, not counted (the store's locks found busy late);
* the batch's outcome is per item: a result or an exception for that item alone (a lost claim …);
* an item whose caller went away before it started is skipped; a cancelled batch cancels its items' futures.

The store needs more than arrival order: ``take`` picks the batch (it leaves queued the items that share a lock
with a running batch), ``ready`` says whether the newest item could start now (if not, no drain is added for
it while one runs) and ``hold`` is entered around each batch taken, retries and all (the store counts its
running locks there).

A run may take its successor early: ``run(items, follow)``, and ``follow()`` ends the batch's hold, takes the
next batch (holding it) and returns it; the drain runs that batch next, passing the run the same list. The store
calls it just before COMMIT to begin the next transaction in the same round trip. ``follow`` is None for the
one-by-one runs after a failure: those take nothing early.

The hot path runs for every item (about a thousand a second): per item one append, one check and the caller's
own await of its future — no task and no other await; per batch one call of ``take`` and ``hold``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Batcher", "Pending"]


class Pending(Protocol):
    """What the batcher needs of an item: the future its caller awaits (made with the item, in the caller)."""

    @property
    def future(self) -> asyncio.Future[Any]: ...


T = TypeVar("T", bound=Pending)
R = TypeVar("R")

#: What a run is given to take its successor early (see the module docstring).
Follow = Callable[[], list[T]]

_NO_HOLD = contextlib.nullcontext()


def _never(exc: Exception) -> bool:
    return False


def _as_is(item: object, exc: Exception) -> Exception:
    return exc


class Batcher(Generic[T, R]):
    """Items of type ``T`` run in batches by ``run``, which returns each item's result (``R``) or exception.

    ``run`` raising fails the whole batch (see the module's docstring for what follows). ``spawn`` starts the
    drains (default: tasks this batcher keeps for :meth:`aclose`; an owner with its own tasks passes its own).
    """

    def __init__(
        self,
        run: Callable[[list[T], Follow[T] | None], Awaitable[Mapping[T, R | Exception]]],
        *,
        max_batch: int,
        max_parallel: int,
        attempts: int = 1,
        retryable: Callable[[Exception], bool] = _never,
        failure: Callable[[T, Exception], Exception] = _as_is,
        again: tuple[type[Exception], ...] = (),
        take: Callable[[], list[T]] | None = None,
        ready: Callable[[T], bool] | None = None,
        hold: Callable[[list[T]], contextlib.AbstractContextManager[object]] | None = None,
        spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None,
        another_when_full: bool = False,
    ) -> None:
        if max_batch < 1 or max_parallel < 1 or attempts < 1:
            raise ValueError("max_batch, max_parallel and attempts must be at least 1")
        self.max_batch = max_batch
        self.max_parallel = max_parallel
        self.attempts = attempts
        self.queue: collections.deque[T] = collections.deque()  # waiting, in arrival order
        self._work = run
        self._retryable = retryable
        self._failure = failure
        self._again = again
        self._take = take or self.take_in_order
        self._ready = ready
        self.another_when_full = another_when_full
        self._hold = hold or (lambda batch: _NO_HOLD)
        self._spawn = spawn or self._keep_task
        self._workers = 0  # drains running
        self._tasks: set[asyncio.Task[None]] = set()

    def put(self, item: T) -> asyncio.Future[R]:
        """Hand an item over; its outcome comes through the future returned (the item's own)."""
        self.queue.append(item)
        self._start()
        return item.future

    @property
    def running(self) -> int:
        """Drains running (each runs at most one batch at a time)."""
        return self._workers

    async def aclose(self) -> None:
        """Wait for the items already handed over (the drains this batcher started itself)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def take_in_order(self) -> list[T]:
        """The default ``take``: up to max_batch waiting items in arrival order."""
        batch: list[T] = []
        queue = self.queue
        while queue and len(batch) < self.max_batch:
            item = queue.popleft()
            if not item.future.done():  # the caller went away before it started: nothing to do
                batch.append(item)
        return batch

    def _start(self) -> None:
        """One more drain while fewer than max_parallel run and the newest waiting item could start now (beside a
        running drain: with ``another_when_full`` only once a full batch waits)."""
        if (
            self._workers < self.max_parallel
            and self.queue
            and (
                self._workers == 0
                or (
                    (not self.another_when_full or len(self.queue) >= self.max_batch)
                    and (self._ready is None or self._ready(self.queue[-1]))
                )
            )
        ):
            self._workers += 1
            self._spawn(self._drain())

    def _keep_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        """Take a batch, run it; repeat until nothing can start. The run may take the next batch early (follow)."""
        drain = _Lookahead(self)
        try:
            while batch := drain.next():
                await self._run(batch, 1, drain.follow)
        finally:
            for item in drain.close():  # taken early, never run: the drain was cancelled
                item.future.cancel()
            self._workers -= 1
            self._start()  # what this batch held back may start now

    async def _run(self, items: list[T], attempt: int, follow: Follow[T] | None = None) -> None:
        """Run the items as one batch (``attempt``: of a single item) and settle their futures."""
        outcomes: Mapping[T, R | Exception]
        try:
            outcomes = await self._work(items, follow)
        except self._again:
            await self._run(items, attempt, follow)
            return
        except asyncio.CancelledError:
            for item in items:
                item.future.cancel()
            raise
        except Exception as exc:
            if len(items) > 1:
                # One item broke the transaction (or the connection went): one by one, so that only the guilty
                # one fails and each retries on its own.
                for item in items:
                    await self._run([item], 1)
                return
            item = items[0]
            if attempt < self.attempts and self._retryable(exc):
                await self._run(items, attempt + 1)
                return
            outcomes = {item: self._failure(item, exc)}
        for item in items:
            if item.future.done():
                continue
            outcome = outcomes[item]
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)


class _Lookahead(Generic[T]):
    """A drain's batches: the one running, held, and the next one if its run took it early (follow)."""

    def __init__(self, batcher: Batcher[T, Any]) -> None:
        self._batcher = batcher
        self._held = contextlib.ExitStack()  # the hold of the batch running
        self._following: list[T] = []
        self._following_held = contextlib.ExitStack()

    def next(self) -> list[T]:
        """The batch to run now (the one taken early, else a new one), held; its predecessor's hold ends."""
        self._held.close()
        batch, self._following = self._following, []
        self._held, self._following_held = self._following_held, contextlib.ExitStack()
        if not batch:
            batch = self._batcher._take()
            if batch:
                self._held.enter_context(self._batcher._hold(batch))
        return batch

    def follow(self) -> list[T]:
        """Take the next batch now (once): the running batch's hold ends, the next one's begins."""
        if not self._following:
            self._held.close()
            self._following = self._batcher._take()
            if self._following:
                self._following_held.enter_context(self._batcher._hold(self._following))
        return self._following

    def close(self) -> list[T]:
        """End the holds; returns the batch taken early and not run."""
        self._held.close()
        self._following_held.close()
        following, self._following = self._following, []
        return following
