"""gateway.batching.Batcher on its own: pure asyncio, no database (the store and the outbox use it against one)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.batching import Batcher, Follow


@dataclass(eq=False)
class Item:
    name: str
    future: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Boom(Exception):
    pass


class Transient(Exception):
    pass


class Busy(Exception):
    pass


class Work:
    """The batch function: records each batch, optionally waits at a gate, fails as told, answers NAME."""

    def __init__(self, *, gated: bool = False, fail: dict[str, list[Exception]] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.events: list[tuple[str, list[str]]] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail = fail or {}  # per item name: the errors of its next runs, in order
        self.running = 0
        self.peak = 0

    async def __call__(self, items: list[Item], follow: Follow[Item] | None = None) -> dict[Item, str | Exception]:
        names = [i.name for i in items]
        self.batches.append(names)
        self.events.append(("run", names))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
            for name in names:
                if self.fail.get(name):
                    raise self.fail[name].pop(0)
            return {i: i.name.upper() for i in items}
        finally:
            self.running -= 1


async def settle() -> None:
    """Let every task that can run, run (the batcher never sleeps on a timer)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def call(batcher: Batcher[Item, str], name: str) -> str:
    return await batcher.put(Item(name))


def callers(batcher: Batcher[Item, str], *names: str) -> list[asyncio.Task[str]]:
    return [asyncio.create_task(call(batcher, n)) for n in names]


async def outcomes(tasks: list[asyncio.Task[str]]) -> list[object]:
    async with asyncio.timeout(5):
        return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_the_limits_must_be_at_least_one() -> None:
    for bad in ({"max_batch": 0}, {"max_parallel": 0}, {"attempts": 0}):
        with pytest.raises(ValueError):
            Batcher(Work(), **{"max_batch": 1, "max_parallel": 1, **bad})  # type: ignore[arg-type]


async def test_an_idle_batcher_runs_each_item_alone_at_once() -> None:
    work = Work()
    batcher: Batcher[Item, str] = Batcher(work, max_batch=8, max_parallel=2)
    async with asyncio.timeout(5):
        assert await call(batcher, "a") == "A"
        assert await call(batcher, "b") == "B"
    assert work.batches == [["a"], ["b"]]
    assert batcher.running == 0


async def test_items_arriving_while_a_batch_runs_go_together_in_the_next_batches() -> None:
    work = Work(gated=True)
    batcher: Batcher[Item, str] = Batcher(work, max_batch=3, max_parallel=1)
    first = callers(batcher, "a")
    await settle()
    assert work.batches == [["a"]]  # alone: it started at once
    rest = callers(batcher, *"bcdefgh")
    await settle()
    work.gate.set()
    assert await outcomes(first + rest) == list("ABCDEFGH")
    assert work.batches == [["a"], ["b", "c", "d"], ["e", "f", "g"], ["h"]]  # arrival order, max_batch each


async def test_at_most_max_parallel_batches_run_at_once_and_no_task_per_item() -> None:
    work = Work(gated=True)
    spawned: list[asyncio.Task[None]] = []

    def spawn(coro: object) -> None:
        spawned.append(asyncio.create_task(coro))  # type: ignore[arg-type]

    batcher: Batcher[Item, str] = Batcher(work, max_batch=4, max_parallel=2, spawn=spawn)
    tasks = callers(batcher, *(f"i{n}" for n in range(20)))
    await settle()
    assert work.running == 2 and batcher.running == 2
    assert work.batches == [["i0", "i1", "i2", "i3"], ["i4", "i5", "i6", "i7"]]
    work.gate.set()
    assert await outcomes(tasks) == [f"I{n}" for n in range(20)]
    assert work.peak == 2
    assert len(spawned) == 2  # twenty items, two drains: no task per item
    assert sorted(len(b) for b in work.batches) == [4] * 5
    await settle()
    assert batcher.running == 0


async def test_a_failed_batch_runs_again_one_by_one_so_that_only_the_guilty_item_fails() -> None:
    work = Work(fail={"bad": [Boom("in the batch"), Boom("alone")]})

    @contextmanager
    def hold(batch: list[Item]) -> Iterator[None]:
        work.events.append(("hold", [i.name for i in batch]))
        yield
        work.events.append(("release", [i.name for i in batch]))

    batcher: Batcher[Item, str] = Batcher(work, max_batch=8, max_parallel=1, hold=hold)
    results = await outcomes(callers(batcher, "a", "bad", "c"))
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], Boom) and str(results[1]) == "alone"
    assert work.batches == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]  # Boom is not retryable: one run alone
    assert work.events == [  # the batch taken is held once, around its split runs
        ("hold", ["a", "bad", "c"]),
        *(("run", b) for b in work.batches),
        ("release", ["a", "bad", "c"]),
    ]


async def test_a_single_item_is_retried_while_retryable_at_most_attempts_runs() -> None:
    work = Work(
        fail={
            "x": [Transient(str(n)) for n in range(5)],  # more than the batch's run and three attempts use
            "y": [Transient("once")],
            "z": [Boom("not retryable"), Boom("unused")],
        }
    )
    batcher: Batcher[Item, str] = Batcher(
        work, max_batch=8, max_parallel=1, attempts=3, retryable=lambda e: isinstance(e, Transient)
    )
    results = await outcomes(callers(batcher, "x", "y", "z"))
    assert isinstance(results[0], Transient) and str(results[0]) == "3"  # the last of its three runs alone
    assert results[1] == "Y"
    assert isinstance(results[2], Boom) and str(results[2]) == "not retryable"
    # the batch failed (x's error 0), then one by one: x three times, y twice, z once
    assert work.batches == [["x", "y", "z"], ["x"], ["x"], ["x"], ["y"], ["y"], ["z"]]
    assert len(work.fail["x"]) == 1  # never reached


async def test_outcomes_are_per_item_and_the_last_error_goes_through_failure() -> None:
    class Lost(Exception):
        pass

    async def run(items: list[Item], follow: Follow[Item] | None) -> dict[Item, str | Exception]:
        if any(i.name == "broken" for i in items):
            raise Boom("constraint")
        return {i: Lost(i.name) if i.name.startswith("lost") else i.name.upper() for i in items}

    seen: list[tuple[str, Exception]] = []

    def failure(item: Item, exc: Exception) -> Exception:
        seen.append((item.name, exc))
        return ValueError(f"{item.name}: conflict")

    batcher: Batcher[Item, str] = Batcher(run, max_batch=8, max_parallel=1, failure=failure)
    first = await outcomes(callers(batcher, "a", "lost1", "b"))
    assert first[0] == "A" and first[2] == "B"
    assert isinstance(first[1], Lost) and str(first[1]) == "lost1"  # the outcome of that item, not the batch's
    assert seen == []
    second = await outcomes(callers(batcher, "broken"))
    assert isinstance(second[0], ValueError) and str(second[0]) == "broken: conflict"
    assert [(n, type(e)) for n, e in seen] == [("broken", Boom)]


async def test_an_again_error_runs_the_same_batch_again_neither_split_nor_counted() -> None:
    work = Work(fail={"a": [Busy(), Busy(), Busy()]})
    batcher: Batcher[Item, str] = Batcher(work, max_batch=8, max_parallel=1, attempts=1, again=(Busy,))
    assert await outcomes(callers(batcher, "a", "b")) == ["A", "B"]
    assert work.batches == [["a", "b"]] * 4


async def test_items_whose_caller_went_away_are_skipped_and_not_answered() -> None:
    work = Work(gated=True)
    drains: list[asyncio.Task[None]] = []

    def spawn(coro: object) -> None:
        drains.append(asyncio.create_task(coro))  # type: ignore[arg-type]

    batcher: Batcher[Item, str] = Batcher(work, max_batch=8, max_parallel=1, spawn=spawn)
    a = callers(batcher, "a")
    await settle()
    b, c = callers(batcher, "b", "c")
    await settle()
    b.cancel()  # gone before its batch started: never run
    a[0].cancel()  # gone while its batch runs: the batch goes on, nothing is set on its future
    await settle()
    work.gate.set()
    results = await outcomes([*a, b, c])
    assert isinstance(results[0], asyncio.CancelledError) and isinstance(results[1], asyncio.CancelledError)
    assert results[2] == "C"
    assert work.batches == [["a"], ["c"]]
    await settle()
    assert batcher.running == 0 and not batcher.queue
    assert len(drains) == 1 and drains[0].done() and drains[0].exception() is None  # one drain, never broken


async def test_a_cancelled_batch_cancels_its_items_and_the_waiting_ones_still_run() -> None:
    work = Work(gated=True)
    drains: list[asyncio.Task[None]] = []

    def spawn(coro: object) -> None:
        drains.append(asyncio.create_task(coro))  # type: ignore[arg-type]

    batcher: Batcher[Item, str] = Batcher(work, max_batch=2, max_parallel=1, spawn=spawn)
    running = callers(batcher, "a", "b")
    await settle()
    waiting = callers(batcher, "c")
    await settle()
    assert work.batches == [["a", "b"]] and len(drains) == 1
    drains[0].cancel()
    await settle()
    assert all(t.done() and t.cancelled() for t in running)  # their callers see the cancellation
    assert len(drains) == 2  # the drain's end started another for what still waits
    work.gate.set()
    assert await outcomes(waiting) == ["C"]
    assert work.batches == [["a", "b"], ["c"]]


async def test_the_take_and_ready_hooks_decide_what_starts() -> None:
    """As the store does: an item sharing something with a running batch stays queued and starts no drain."""
    work = Work(gated=True)
    blocked = {"k"}
    taken: list[list[str]] = []
    batcher: Batcher[Item, str]

    def take() -> list[Item]:
        batch = [i for i in batcher.queue if i.name not in blocked]
        kept = [i for i in batcher.queue if i.name in blocked]
        batcher.queue.clear()
        batcher.queue.extend(kept)
        taken.append([i.name for i in batch])
        return batch

    batcher = Batcher(work, max_batch=8, max_parallel=2, take=take, ready=lambda i: i.name not in blocked)
    tasks = callers(batcher, "a")
    await settle()
    tasks += callers(batcher, "k")
    await settle()
    assert batcher.running == 1  # k could not start now: no drain for it
    tasks += callers(batcher, "b")
    await settle()
    assert batcher.running == 2
    assert work.batches == [["a"], ["b"]] and [i.name for i in batcher.queue] == ["k"]
    blocked.clear()
    work.gate.set()
    assert await outcomes(tasks) == ["A", "K", "B"]
    assert sorted(work.batches) == [["a"], ["b"], ["k"]]
    assert taken[:2] == [["a"], ["b"]]


async def test_aclose_waits_for_the_items_handed_over() -> None:
    work = Work(gated=True)
    batcher: Batcher[Item, str] = Batcher(work, max_batch=2, max_parallel=1)
    futures = [batcher.put(Item(n)) for n in "abc"]
    closing = asyncio.create_task(batcher.aclose())
    await settle()
    assert not closing.done()
    work.gate.set()
    async with asyncio.timeout(5):
        await closing
    assert [f.result() for f in futures] == ["A", "B", "C"]


class Following(Work):
    """Work whose runs take the next batch early (as the store does before its COMMIT), after the gate opens;
    a run fails after taking it when its first item's failures say so."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.taken_early: list[list[str] | None] = []  # per run: what follow returned, None without follow
        self.given: list[list[Item]] = []  # the lists the runs were given
        self.followed: list[list[Item]] = []  # the lists follow returned

    async def __call__(self, items: list[Item], follow: Follow[Item] | None = None) -> dict[Item, str | Exception]:
        self.given.append(items)
        self.batches.append([i.name for i in items])
        self.events.append(("run", [i.name for i in items]))
        await self.gate.wait()
        if follow is not None:
            self.followed.append(follow())
        self.taken_early.append([i.name for i in self.followed[-1]] if follow is not None else None)
        for item in items:
            if self.fail.get(item.name):
                raise self.fail[item.name].pop(0)
        return {i: i.name.upper() for i in items}


def recording_hold(work: Work) -> Any:
    @contextmanager
    def hold(batch: list[Item]) -> Iterator[None]:
        work.events.append(("hold", [i.name for i in batch]))
        yield
        work.events.append(("release", [i.name for i in batch]))

    return hold


async def test_a_run_takes_the_next_batch_early_and_the_drain_runs_that_batch_next() -> None:
    work = Following(gated=True)
    batcher: Batcher[Item, str] = Batcher(work, max_batch=2, max_parallel=1, hold=recording_hold(work))
    first = callers(batcher, "a")
    await settle()
    later = callers(batcher, "b", "c", "d")  # they arrive while [a] runs
    await settle()
    work.gate.set()
    assert await outcomes(first + later) == ["A", "B", "C", "D"]
    assert work.batches == [["a"], ["b", "c"], ["d"]]
    assert work.taken_early == [["b", "c"], ["d"], []]  # the last found nothing waiting
    assert work.events == [
        ("hold", ["a"]), ("run", ["a"]),
        ("release", ["a"]), ("hold", ["b", "c"]),  # at follow: a's hold ends, the next batch's begins
        ("run", ["b", "c"]),
        ("release", ["b", "c"]), ("hold", ["d"]),
        ("run", ["d"]),
        ("release", ["d"]),
    ]  # fmt: skip
    # each run taken early is given the very list its predecessor's follow returned
    assert work.given[1] is work.followed[0] and work.given[2] is work.followed[1]


async def test_the_one_by_one_runs_after_a_failure_take_nothing_early() -> None:
    work = Following(fail={"a": [Boom("in the batch")]})
    batcher: Batcher[Item, str] = Batcher(work, max_batch=2, max_parallel=1)
    first = callers(batcher, "a", "b")
    later = callers(batcher, "c")
    assert await outcomes(first + later) == ["A", "B", "C"]
    # [a, b] took [c] early, then failed: a and b again alone, without follow; then the batch taken early
    assert work.batches == [["a", "b"], ["a"], ["b"], ["c"]]
    assert work.taken_early == [["c"], None, None, []]


async def test_a_drain_cancelled_after_taking_early_cancels_the_batch_it_took() -> None:
    work = Following()
    drains: list[asyncio.Task[None]] = []

    def spawn(coro: object) -> None:
        drains.append(asyncio.create_task(coro))  # type: ignore[arg-type]

    stuck = asyncio.Event()  # never set: the run waits after taking the next batch

    async def run(items: list[Item], follow: Follow[Item] | None) -> dict[Item, str | Exception]:
        work.batches.append([i.name for i in items])
        if follow is not None:
            follow()
        await stuck.wait()
        return {}

    batcher: Batcher[Item, str] = Batcher(run, max_batch=1, max_parallel=1, spawn=spawn, hold=recording_hold(work))
    tasks = callers(batcher, "a", "b")
    await settle()
    assert work.batches == [["a"]] and not batcher.queue  # b was taken early
    drains[0].cancel()
    await settle()
    assert all(t.cancelled() for t in tasks)  # b's caller learns it too, rather than waiting forever
    assert work.events == [("hold", ["a"]), ("release", ["a"]), ("hold", ["b"]), ("release", ["b"])]


async def test_with_another_when_full_a_second_drain_starts_only_for_a_full_batch() -> None:
    work = Work(gated=True)
    batcher: Batcher[Item, str] = Batcher(work, max_batch=3, max_parallel=2, another_when_full=True)
    tasks = callers(batcher, "a")
    await settle()
    tasks += callers(batcher, "b", "c")
    await settle()
    assert batcher.running == 1 and work.batches == [["a"]]  # two wait for the running batch
    tasks += callers(batcher, "d")
    await settle()
    assert batcher.running == 2 and work.batches == [["a"], ["b", "c", "d"]]  # a full batch: a second drain
    work.gate.set()
    assert await outcomes(tasks) == ["A", "B", "C", "D"]
