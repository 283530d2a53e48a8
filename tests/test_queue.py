"""cbec_queue: pure policy/breaker/bucket properties, and the queue against a real PostgreSQL.

Every database test gets its own throwaway database migrated by gateway.db (tests/dbutil.py fixtures).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import cbec_queue
import pytest
from cbec_queue import (
    BreakerSettings,
    CircuitBreaker,
    CircuitState,
    Job,
    LeaseLost,
    PermanentError,
    Rate,
    RetryPolicy,
    TokenBucket,
    TransientError,
    Worker,
)
from cbec_queue import queries as q
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.db import fold_kept_counts
from tests.planutil import full_scans

ROOT = Path(__file__).resolve().parent.parent


# --- pure parts ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


policies = st.builds(
    RetryPolicy,
    base_s=st.floats(0, 100, allow_nan=False),
    factor=st.floats(1, 10, allow_nan=False),
    cap_s=st.floats(0, 3600, allow_nan=False),
    max_attempts=st.integers(1, 50),
    jitter=st.sampled_from(["full", "equal", "none"]),
)


@given(policy=policies, attempts=st.integers(1, 5000), seed=st.integers(0, 2**32))
def test_delay_never_exceeds_cap_or_bound(policy: RetryPolicy, attempts: int, seed: int) -> None:
    rng = random.Random(seed)
    delay = policy.delay(attempts, rng)
    bound = policy.upper_bound(attempts)
    assert 0 <= delay <= bound <= policy.cap_s
    if policy.jitter == "equal":
        assert delay >= bound / 2
    if policy.jitter == "none":
        assert delay == bound


@given(policy=policies, attempts=st.integers(1, 5000))
def test_upper_bound_is_monotone(policy: RetryPolicy, attempts: int) -> None:
    assert policy.upper_bound(attempts) <= policy.upper_bound(attempts + 1)


@given(policy=policies, attempts=st.integers(1, 60), hint=st.floats(0, 10**6), seed=st.integers(0, 2**32))
def test_retry_after_hint_is_honoured_up_to_the_cap(policy: RetryPolicy, attempts: int, hint: float, seed: int) -> None:
    decision = policy.decide(attempts, TransientError("429", retry_after_s=hint), rng=random.Random(seed))
    if decision.retry:
        assert decision.delay_s <= policy.cap_s
        assert decision.delay_s >= min(hint, policy.cap_s)


def test_backoff_table() -> None:
    policy = RetryPolicy(base_s=1, factor=2, cap_s=10, max_attempts=100, jitter="none")
    assert [policy.upper_bound(n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]
    assert policy.upper_bound(10**6) == 10  # no OverflowError


def test_decide_classifies_errors() -> None:
    rng = random.Random(1)
    policy = RetryPolicy(base_s=1, max_attempts=3)
    permanent = policy.decide(1, PermanentError("rejected"), rng=rng)
    assert (permanent.retry, permanent.dead, permanent.reason) == (False, True, "permanent")
    transient = policy.decide(1, TransientError("503"), rng=rng)
    assert (transient.retry, transient.dead, transient.reason) == (True, False, "transient")
    unknown = policy.decide(2, KeyError("bug"), rng=rng)
    assert (unknown.retry, unknown.dead, unknown.reason) == (True, False, "unknown_error")
    exhausted = policy.decide(3, TransientError("503"), rng=rng)
    assert (exhausted.retry, exhausted.dead, exhausted.reason) == (False, True, "max_attempts")
    with pytest.raises(ValueError):
        RetryPolicy(factor=0.5)


def test_breaker_cycle() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=3, cooldown_s=10), clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the consecutive count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow()
    clock.advance(9.9)
    assert not breaker.allow() and breaker.retry_in() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.allow()  # the probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN  # probe failed: open again, new cool-down
    clock.advance(10)
    assert breaker.allow()
    breaker.release_probe()  # unused probe goes back
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED and breaker.consecutive_failures == 0


@settings(max_examples=200)
@given(
    threshold=st.integers(1, 5),
    ops=st.lists(st.sampled_from(["allow", "ok", "fail", "tick", "release"]), max_size=60),
)
def test_breaker_invariants(threshold: int, ops: list[str]) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=threshold, cooldown_s=5), clock=clock)
    probes_out = 0
    streak = 0
    opened_at = float("-inf")
    for op in ops:
        before = breaker.state
        if op == "allow":
            allowed = breaker.allow()
            if before is CircuitState.OPEN and clock() - opened_at < 5:
                assert not allowed
            if breaker.state is CircuitState.HALF_OPEN and allowed:
                probes_out += 1
                assert probes_out == 1, "two probes out at once"
        elif op == "ok":
            breaker.record_success()
            if before is not CircuitState.OPEN:
                assert breaker.state is CircuitState.CLOSED
                probes_out, streak = 0, 0
        elif op == "fail":
            breaker.record_failure()
            if before is CircuitState.CLOSED:
                streak += 1
                assert (breaker.state is CircuitState.OPEN) == (streak >= threshold)
            if before is CircuitState.HALF_OPEN:
                assert breaker.state is CircuitState.OPEN
            if breaker.state is CircuitState.OPEN:
                probes_out, streak = 0, 0
        elif op == "tick":
            clock.advance(3)
        else:
            breaker.release_probe()
            probes_out = 0
        if breaker.state is CircuitState.OPEN and before is not CircuitState.OPEN:
            opened_at = clock()
        if breaker.state is CircuitState.CLOSED:
            assert breaker.consecutive_failures < threshold


@given(
    per_s=st.floats(0.1, 100),
    burst=st.integers(1, 20),
    ops=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 3)), max_size=80),
)
def test_token_bucket_never_exceeds_rate(per_s: float, burst: int, ops: list[tuple[float, int]]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(Rate(per_s=per_s, burst=burst), clock=clock)
    taken = 0
    elapsed = 0.0
    for dt, n in ops:
        clock.advance(dt)
        elapsed += dt
        if bucket.try_take(n):
            taken += n
        assert 0 <= bucket.tokens <= burst
        assert taken <= burst + per_s * elapsed + 1e-6
        wait = bucket.wait_time(1)
        clock.advance(wait)
        elapsed += wait
        assert bucket.try_take(1) if wait != float("inf") else True
        taken += 1


# --- database fixtures ----------------------------------------------------------------------------


@pytest.fixture
def qdsn(db_dsn: str) -> str:
    """A fresh database migrated by gateway.db's runner (010_queue.sql included); see tests/dbutil.py."""
    return db_dsn


@pytest.fixture
async def pool(qdsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(qdsn, min_size=2, max_size=10)
    try:
        yield p
    finally:
        await p.close()


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.wait_listening(), 5)
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0, step: float = 0.02) -> float:
    """Poll `check` until true; returns the time it took. Fails the test on timeout."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)
    return time.monotonic() - start


async def add_jobs(pool: asyncpg.Pool, endpoint: str, n: int, **kw: Any) -> list[int]:
    async with pool.acquire() as conn, conn.transaction():
        ids = [await cbec_queue.enqueue(conn, endpoint=endpoint, kind="k", payload={"n": i}, **kw) for i in range(n)]
    return [i for i in ids if i is not None]


async def count(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(sql, *args))


def holds(pool: asyncpg.Pool, sql: str, *args: Any) -> Callable[[], Awaitable[bool]]:
    """A check for wait_until: the boolean query `sql` is true."""

    async def check() -> bool:
        try:
            async with pool.acquire() as conn:
                return bool(await conn.fetchval(sql, *args))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
            return False  # a connection cut by test_worker_survives_losing_its_connections: ask again

    return check


async def history(pool: asyncpg.Pool, job_id: int) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch(
            "SELECT replay, attempt, outcome, worker_id, started_at, finished_at FROM job_attempts"
            " WHERE job_id = $1 ORDER BY replay, attempt",
            job_id,
        )


# --- enqueue and claim ----------------------------------------------------------------------------


@pytest.mark.db
async def test_enqueue_exists_iff_commit(pool: asyncpg.Pool) -> None:
    seen: list[str] = []

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        seen.append(payload)

    async with pool.acquire() as listener, pool.acquire() as writer:
        await listener.add_listener(cbec_queue.CHANNEL, on_notify)

        tx = writer.transaction()
        await tx.start()
        job_id = await cbec_queue.enqueue(writer, endpoint="customs", kind="CEB311", payload={"orderNo": "A1"})
        assert job_id is not None
        assert await count(pool, "SELECT count(*) FROM jobs") == 0  # not visible before commit
        await tx.rollback()
        await asyncio.sleep(0.1)
        assert await count(pool, "SELECT count(*) FROM jobs") == 0
        assert seen == []  # no wake-up for a job that never existed

        async with writer.transaction():
            for _ in range(3):  # three jobs, one transaction: PostgreSQL folds the notifications
                await cbec_queue.enqueue(writer, endpoint="customs", kind="CEB311", payload={"orderNo": "A2"})
        await wait_until(lambda: asyncio.sleep(0, bool(seen)))  # sleep(0, x) returns x
        await asyncio.sleep(0.05)
        assert seen == ["customs"]
        assert await count(pool, "SELECT count(*) FROM jobs WHERE state = 'queued'") == 3
        await listener.remove_listener(cbec_queue.CHANNEL, on_notify)


@pytest.mark.db
async def test_dedupe_key_only_while_live(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        first = await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={}, dedupe_key="order:A1")
        again = await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={}, dedupe_key="order:A1")
        other = await cbec_queue.enqueue(conn, endpoint="webhook", kind="k", payload={}, dedupe_key="order:A1")
        assert first is not None and again is None and other is not None  # scoped per endpoint
        [job] = await cbec_queue.claim(conn, worker_id="w", lease_s=10, endpoint="customs")
        assert await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={}, dedupe_key="order:A1") is None
        assert await cbec_queue.record_done(conn, job)
        assert await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={}, dedupe_key="order:A1")


@pytest.mark.db
async def test_concurrent_claimers_never_share_a_job(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO jobs (endpoint, kind, payload, priority)"
            " SELECT CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, 'k', '{}', g % 3 FROM generate_series(1, 400) g"
        )
    claimed: dict[str, list[int]] = {"w1": [], "w2": [], "w3": []}

    async def claimer(worker_id: str) -> None:
        async with pool.acquire() as conn:
            while True:
                if worker_id == "w3":
                    jobs = await cbec_queue.claim_per_endpoint(conn, worker_id=worker_id, lease_s=30, wanted={"a": 5})
                else:
                    jobs = await cbec_queue.claim(conn, worker_id=worker_id, lease_s=30, limit=7)
                if not jobs and await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'queued'") == 0:
                    return
                claimed[worker_id].extend(j.id for j in jobs)
                assert all(j.locked_by == worker_id and j.attempts == 1 for j in jobs)

    await asyncio.gather(*(claimer(w) for w in claimed))
    everything = [i for ids in claimed.values() for i in ids]
    assert len(everything) == len(set(everything)) == 400
    assert all(claimed.values())  # everyone got some
    assert await count(pool, "SELECT count(*) FROM job_attempts") == 400
    assert await count(pool, "SELECT count(*) FROM jobs WHERE state = 'running'") == 400


@pytest.mark.db
async def test_claim_order_priority_then_run_after(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        low = await cbec_queue.enqueue(conn, endpoint="e", kind="k", payload={}, priority=0)
        high = await cbec_queue.enqueue(conn, endpoint="e", kind="k", payload={}, priority=5)
        later = await cbec_queue.enqueue(conn, endpoint="e", kind="k", payload={}, priority=0)
        future = await conn.fetchval("SELECT now() + interval '1 hour'")
        await cbec_queue.enqueue(conn, endpoint="e", kind="k", payload={}, priority=9, run_after=future)
        jobs = await cbec_queue.claim(conn, worker_id="w", lease_s=5, limit=10)
    assert [j.id for j in jobs] == [high, low, later]  # the future job is not due


async def history_and_backlog(conn: asyncpg.Connection, *, endpoints: int, done: int, queued: int) -> None:
    """The jobs table of a busy queue: many done jobs spread over endpoints e0… (history), a few queued on e1."""
    await conn.execute(
        "INSERT INTO jobs (endpoint, kind, state, finished_at)"
        " SELECT 'e' || (g % $1), 'k', 'done', now() FROM generate_series(1, $2) g", endpoints, done
    )
    await conn.execute("INSERT INTO jobs (endpoint, kind) SELECT 'e1', 'k' FROM generate_series(1, $1)", queued)
    await conn.execute("ANALYZE jobs")


@pytest.mark.db
async def test_claim_uses_the_partial_indexes(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await history_and_backlog(conn, endpoints=20, done=20000, queued=5)
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + q.CLAIM_PER_ENDPOINT, ["e1"], [5], "w", 5.0)
        assert "jobs_queued_endpoint_idx" in plan
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + q.REAP, [], [], None, 100)
        assert "jobs_running_lease_idx" in plan


# --- the worker -----------------------------------------------------------------------------------


def fast(**kw: Any) -> dict[str, Any]:
    """Worker settings for tests: short intervals."""
    base: dict[str, Any] = {"lease_s": 5.0, "poll_interval_s": 0.5, "shutdown_grace_s": 1.0}
    base.update(kw)
    return base


@pytest.mark.db
async def test_retry_with_backoff_then_success(pool: asyncpg.Pool) -> None:
    calls: list[int] = []

    async def flaky(job: Job) -> None:
        calls.append(job.attempts)
        if job.attempts < 3:
            raise TransientError("503 from customs")

    policy = RetryPolicy(base_s=0.1, factor=2, cap_s=1, max_attempts=5, jitter="equal")
    # A long poll interval: the retry must be picked up at its due time, not by polling.
    worker = Worker(pool, {"customs": flaky}, policy_by_endpoint={"customs": policy}, **fast(poll_interval_s=30))
    with capture_logs() as logs:
        async with running(worker):
            [job_id] = await add_jobs(pool, "customs", 1)
            took = await wait_until(holds(pool, "SELECT count(*) = 1 FROM jobs WHERE state = 'done'"))
    assert calls == [1, 2, 3]
    assert took < 2.0
    rows = await history(pool, job_id)
    assert [r["outcome"] for r in rows] == ["transient", "transient", "ok"]
    # Equal jitter: the n-th retry waits at least half of min(cap, base * factor**(n-1)).
    gaps = [(rows[i + 1]["started_at"] - rows[i]["finished_at"]).total_seconds() for i in range(2)]
    assert gaps[0] >= 0.05 - 0.005 and gaps[1] >= 0.1 - 0.005
    events = [e["event"] for e in logs]
    assert events.count("job_retry") == 2 and events.count("job_done") == 1
    assert "worker_started" in events and "worker_stopped" in events


@pytest.mark.db
async def test_a_job_not_ready_neither_opens_the_circuit_nor_holds_the_others_and_is_hastened(
    pool: asyncpg.Pool,
) -> None:
    """Jobs waiting for what they need (NotReady) retry with backoff without counting as the endpoint's failures: the
    circuit stays closed and the endpoint's other jobs go; once what they wait for has come, hasten makes them due
    now instead of at their next try."""
    ready: set[int] = set()
    sent: list[int] = []

    async def upload(job: Job) -> None:
        if job.payload["n"] not in ready:
            raise cbec_queue.NotReady(f"no data for {job.payload['n']} yet")
        sent.append(job.payload["n"])

    policy = RetryPolicy(base_s=0.05, factor=2, cap_s=60, max_attempts=20, jitter="none")
    worker = Worker(pool, {"realtime": upload}, policy_by_endpoint={"realtime": policy},
                    breaker=BreakerSettings(failure_threshold=2, cooldown_s=60), **fast())  # fmt: skip
    async with running(worker):
        waiting = await add_jobs(pool, "realtime", 3)
        await wait_until(holds(pool, "SELECT bool_and(attempts >= 4) FROM jobs"))
        assert cbec_queue.circuits.states()["realtime"] is CircuitState.CLOSED
        ready.add(99)
        async with pool.acquire() as conn:
            [other] = [await cbec_queue.enqueue(conn, endpoint="realtime", kind="k", payload={"n": 99})]
        await wait_until(holds(pool, "SELECT state = 'done' FROM jobs WHERE id = $1", other))
        # the data comes: their next tries are seconds away (0.05 * 2**5 and more); hastened, they go now
        await wait_until(holds(pool, "SELECT bool_and(run_after > now() + interval '1 second') FROM jobs"
                                     " WHERE id = ANY($1)", waiting))  # fmt: skip
        ready.update((0, 1, 2))
        async with pool.acquire() as conn, conn.transaction():
            assert sorted(await cbec_queue.hasten(conn, [*waiting, other])) == waiting  # the done one is left
        took = await wait_until(holds(pool, "SELECT count(*) = 4 FROM jobs WHERE state = 'done'"))
    assert sorted(sent) == [0, 1, 2, 99] and took < 1.0


@pytest.mark.db
async def test_a_deferred_job_is_put_back_untried_its_attempt_not_counted(pool: asyncpg.Pool) -> None:
    """A handler that knows the job's destination is paused (Deferred) gives it back untried: queued again for the
    delay, with the reason as its last_error, no attempt counted nor kept in its history, the endpoint's circuit
    untouched however often it happens; it goes when it comes due again."""
    paused = {"on": True}
    sent: list[int] = []

    async def deliver(job: Job) -> None:
        if paused["on"] and job.payload["n"] == 0:
            raise cbec_queue.Deferred("seller S1 is paused", delay_s=0.3)
        sent.append(job.payload["n"])

    worker = Worker(pool, {"hook": deliver}, breaker=BreakerSettings(failure_threshold=1, cooldown_s=60), **fast())
    with capture_logs() as logs:
        async with running(worker):
            [held, other] = await add_jobs(pool, "hook", 2)
            await wait_until(holds(pool, "SELECT state = 'done' FROM jobs WHERE id = $1", other))
            await wait_until(holds(pool, "SELECT last_error IS NOT NULL FROM jobs WHERE id = $1", held))
            async with pool.acquire() as conn:
                row = await conn.fetchrow("SELECT state, attempts, last_error, run_after > now() AS later FROM jobs"
                                          " WHERE id = $1", held)  # fmt: skip
            assert row["state"] in ("queued", "running") and row["attempts"] <= 1
            assert row["last_error"] == "Deferred: seller S1 is paused"
            await asyncio.sleep(0.7)  # deferred again and again meanwhile
            assert cbec_queue.circuits.states()["hook"] is CircuitState.CLOSED  # a threshold of 1 and never opened
            paused["on"] = False
            await wait_until(holds(pool, "SELECT state = 'done' FROM jobs WHERE id = $1", held))
    assert sorted(sent) == [0, 1]
    # one attempt each: the untried claims left no trace in the history
    assert [(r["attempt"], r["outcome"]) for r in await history(pool, held)] == [(1, "ok")]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT attempts FROM jobs WHERE id = $1", held) == 1
    # (job_deferred is a debug event: whether capture_logs sees it depends on the level configured before)
    assert not [e for e in logs if e["event"].startswith("circuit_") or e["event"] == "job_retry"]


@pytest.mark.db
async def test_permanent_error_is_dead_at_once(pool: asyncpg.Pool) -> None:
    async def rejecting(job: Job) -> None:
        raise PermanentError("CEB311: orderNo missing")

    worker = Worker(pool, {"customs": rejecting}, **fast())
    async with running(worker):
        [job_id] = await add_jobs(pool, "customs", 1)
        await wait_until(holds(pool, "SELECT count(*) = 1 FROM jobs WHERE state = 'dead'"))
    async with pool.acquire() as conn:
        [dead] = await cbec_queue.dead_letters(conn)
    assert dead["id"] == job_id and dead["dead_reason"] == "permanent" and dead["attempts"] == 1
    assert dead["payload"] == {"n": 0}
    assert "PermanentError: CEB311: orderNo missing" in dead["last_error"]
    assert [h["outcome"] for h in dead["history"]] == ["permanent"]
    assert "orderNo missing" in dead["history"][0]["error"]


@pytest.mark.db
async def test_max_attempts_then_dead_with_full_history(pool: asyncpg.Pool) -> None:
    async def down(job: Job) -> None:
        raise ConnectionRefusedError("customs down")  # an unknown exception counts as transient

    policy = RetryPolicy(base_s=0.01, cap_s=0.02, max_attempts=3)
    worker = Worker(pool, {"customs": down}, policy_by_endpoint={"customs": policy}, **fast())
    async with running(worker):
        [first] = await add_jobs(pool, "customs", 1)
        [capped] = await add_jobs(pool, "customs", 1, max_attempts=2)  # the job's own limit wins
        await wait_until(holds(pool, "SELECT count(*) = 2 FROM jobs WHERE state = 'dead'"))
    async with pool.acquire() as conn:
        dead = {d["id"]: d for d in await cbec_queue.dead_letters(conn, endpoint="customs")}
        assert await cbec_queue.dead_letters(conn, endpoint="elsewhere") == []
    outcomes = [(h["attempt"], h["outcome"]) for h in dead[first]["history"]]
    assert outcomes == [(1, "transient"), (2, "transient"), (3, "transient")]
    assert [h["attempt"] for h in dead[capped]["history"]] == [1, 2]
    assert dead[first]["dead_reason"] == "max_attempts"
    assert "ConnectionRefusedError: customs down" in dead[first]["last_error"]


async def make_dead(pool: asyncpg.Pool, specs: list[tuple[str, str]], **kw: Any) -> list[int]:
    """One dead job per (endpoint, kind), through the real claim/record_dead path."""
    ids = []
    async with pool.acquire() as conn:
        for endpoint, kind in specs:
            job_id = await cbec_queue.enqueue(conn, endpoint=endpoint, kind=kind, payload={}, **kw)
            assert job_id is not None
            [job] = await cbec_queue.claim(conn, worker_id="w0", lease_s=5, endpoint=endpoint)
            assert job.id == job_id
            await cbec_queue.record_dead(conn, job, reason="permanent", error=PermanentError("no"), outcome="permanent")
            ids.append(job_id)
    return ids


@pytest.mark.db
async def test_replay_one_filtered_all_and_delivery(pool: asyncpg.Pool) -> None:
    a_x, a_y, b_x, b_y, c_z = await make_dead(pool, [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "z")])
    queued = "SELECT array_agg(id ORDER BY id) FROM jobs WHERE state = 'queued'"
    async with pool.acquire() as conn:
        with pytest.raises(ValueError):
            await cbec_queue.replay(conn)
        assert await cbec_queue.replay(conn, job_ids=[a_x]) == 1
        assert await conn.fetchval(queued) == [a_x]
        assert await cbec_queue.replay(conn, endpoint="b", kind="x") == 1
        assert await conn.fetchval(queued) == [a_x, b_x]
        assert await cbec_queue.replay(conn, kind="y") == 2
        assert await conn.fetchval(queued) == [a_x, a_y, b_x, b_y]
        assert await cbec_queue.replay(conn, job_ids=[a_x]) == 0  # not dead any more
        assert await cbec_queue.replay(conn, all=True, note="customs back up") == 1
        assert await conn.fetchval(queued) == [a_x, a_y, b_x, b_y, c_z]
        assert await conn.fetchval("SELECT sum(attempts) FROM jobs") == 0

    delivered: list[int] = []

    async def ok(job: Job) -> None:
        delivered.append(job.id)

    worker = Worker(pool, {"a": ok, "b": ok, "c": ok}, **fast())
    async with running(worker):
        await wait_until(holds(pool, "SELECT count(*) = 5 FROM jobs WHERE state = 'done'"))
    assert sorted(delivered) == [a_x, a_y, b_x, b_y, c_z]
    rows = await history(pool, c_z)
    # The first round is kept, the marker opens round 1, then the successful attempt.
    rounds = [(r["replay"], r["attempt"], r["outcome"]) for r in rows]
    assert rounds == [(0, 1, "permanent"), (1, 0, "replayed"), (1, 1, "ok")]
    async with pool.acquire() as conn:
        job = await cbec_queue.get_job(conn, c_z)
    assert job is not None and job["replays"] == 1 and job["attempts"] == 1 and job["state"] == "done"
    assert job["history"][1]["error"] == "customs back up"


@pytest.mark.db
async def test_replay_skips_dead_jobs_superseded_by_a_live_one(pool: asyncpg.Pool) -> None:
    old, older = await make_dead(pool, [("a", "x"), ("a", "x")], dedupe_key="order:A1")
    [other] = await make_dead(pool, [("a", "x")], dedupe_key="order:B2")
    async with pool.acquire() as conn:
        live = await cbec_queue.enqueue(conn, endpoint="a", kind="x", payload={}, dedupe_key="order:A1")
        assert live is not None
        assert await cbec_queue.replay(conn, all=True) == 1  # A1 is live again; B2 comes back
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", other) == "queued"
        states = await conn.fetch("SELECT state FROM jobs WHERE id = ANY($1::bigint[])", [old, older])
        assert [r["state"] for r in states] == ["dead", "dead"]


@pytest.mark.db
async def test_lease_expiry_requeues_and_fences_the_lost_worker(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        job_id = await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={})
        [stale] = await cbec_queue.claim(conn, worker_id="crashed", lease_s=0.3, endpoint="customs")
        assert await cbec_queue.reap_expired(conn) == []  # lease still valid
        assert await cbec_queue.heartbeat(conn, worker_id="crashed", job_ids=[job_id], lease_s=0.3) == {job_id}
        await asyncio.sleep(0.4)
        [reaped] = await cbec_queue.reap_expired(conn, default_max_attempts=5)
        assert reaped == {"id": job_id, "endpoint": "customs", "state": "queued", "attempts": 1, "locked_by": "crashed"}
        # The crashed worker comes back to life: every write of its old claim is refused.
        assert await cbec_queue.heartbeat(conn, worker_id="crashed", job_ids=[job_id], lease_s=5) == set()
        assert not await cbec_queue.record_done(conn, stale)
        with pytest.raises(LeaseLost):
            async with conn.transaction():
                await cbec_queue.mark_done(conn, stale)
        # Even when the same worker (same id) claims it again, the old claim stays fenced out.
        [again] = await cbec_queue.claim(conn, worker_id="crashed", lease_s=5, endpoint="customs")
        assert again.id == job_id and again.attempts == 2
        assert not await cbec_queue.record_done(conn, stale)
        assert await cbec_queue.record_done(conn, again)
    rows = await history(pool, job_id)
    assert [(r["attempt"], r["outcome"]) for r in rows] == [(1, "lease_expired"), (2, "ok")]


@pytest.mark.db
async def test_mark_done_many_fences_each_claim(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        ids = [await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={"n": i}) for i in range(3)]
        jobs = await cbec_queue.claim(conn, worker_id="w1", lease_s=30, endpoint="customs", limit=3)
        assert sorted(j.id for j in jobs) == ids
        # the second claim is lost: reaped and taken by another worker
        await conn.execute("UPDATE jobs SET lease_until = now() - interval '1 s' WHERE id = $1", ids[1])
        await cbec_queue.reap_expired(conn)
        [taken] = await cbec_queue.claim(conn, worker_id="w2", lease_s=5, endpoint="customs")
        marks: set[tuple[int, int, str]] = set()
        cbec_queue.store.handler_marks.set(marks)
        async with conn.transaction():
            assert await cbec_queue.mark_done_many(conn, list(reversed(jobs))) == {ids[0], ids[2]}
        assert marks == set()  # only note_done tells the worker, from the handler's task
        cbec_queue.note_done(jobs[0])
        assert marks == {(jobs[0].id, jobs[0].attempts, "w1")}
        assert await cbec_queue.mark_done_many(conn, []) == set()
        states = await conn.fetch("SELECT id, state, locked_by FROM jobs ORDER BY id")
        assert [tuple(r) for r in states] == [(ids[0], "done", None), (ids[1], "running", "w2"), (ids[2], "done", None)]
        assert await cbec_queue.mark_done_many(conn, [taken]) == {ids[1]}
    for job_id, outcomes in zip(ids, ([(1, "ok")], [(1, "lease_expired"), (2, "ok")], [(1, "ok")]), strict=True):
        assert [(r["attempt"], r["outcome"]) for r in await history(pool, job_id)] == outcomes
    # an attempt finished this way has its duration too (the forward latency metrics and the console show it)
    durations = await pool.fetch("SELECT duration_ms FROM job_attempts WHERE outcome = 'ok'")
    assert len(durations) == 3 and all(r["duration_ms"] is not None and r["duration_ms"] >= 0 for r in durations)


@pytest.mark.db
async def test_lease_expiry_on_the_last_attempt_is_dead(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        job_id = await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={}, max_attempts=1)
        await cbec_queue.claim(conn, worker_id="crashed", lease_s=0.05, endpoint="customs")
        await asyncio.sleep(0.1)
        [reaped] = await cbec_queue.reap_expired(conn)
    assert reaped["id"] == job_id and reaped["state"] == "dead"


class HookLog:
    """An application's hook on dead letters: it writes what it saw in the moving transaction (a table of its own),
    then fails with ``fail`` when one is given."""

    def __init__(self, fail: str | None = None) -> None:
        self.seen: list[tuple[int, str, dict[str, Any], str | None]] = []
        self.fail = fail

    async def __call__(self, conn: asyncpg.Connection, moved: Sequence[cbec_queue.JobMoved]) -> None:
        self.seen += [(m.id, m.state, m.payload, m.last_error) for m in moved]
        await conn.executemany("INSERT INTO hook_log (job_id, state) VALUES ($1, $2)", [(m.id, m.state) for m in moved])
        if self.fail == "bug":
            raise ValueError("a bug in the hook")
        if self.fail == "deadlock":
            await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = 'deadlock_detected'; END $$")

    @staticmethod
    async def rows(conn: asyncpg.Connection) -> list[tuple[int, str]]:
        return [tuple(r) for r in await conn.fetch("SELECT job_id, state FROM hook_log ORDER BY id")]


@pytest.mark.db
async def test_hooks_follow_dead_letters_and_replays_in_their_transaction(pool: asyncpg.Pool) -> None:
    hook = HookLog()
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE hook_log (id serial PRIMARY KEY, job_id bigint, state text)")
        refused = await cbec_queue.enqueue(conn, endpoint="a", kind="k", payload={"n": 1})
        abandoned = await cbec_queue.enqueue(conn, endpoint="b", kind="k", payload={"n": 2}, max_attempts=1)
        again = await cbec_queue.enqueue(conn, endpoint="b", kind="k", payload={"n": 3}, max_attempts=5)

    async def refuse(job: Job) -> None:
        raise PermanentError("customs says no")

    # a handler's final failure
    async with running(Worker(pool, {"a": refuse}, on_dead=hook, **fast())):
        await wait_until(holds(pool, "SELECT state = 'dead' FROM jobs WHERE id = $1", refused))
    assert hook.seen == [(refused, "dead", {"n": 1}, "PermanentError: customs says no")]
    # a lease that ran out on the last attempt; the job with attempts left goes back to the queue, unseen
    async with pool.acquire() as conn:
        await cbec_queue.claim(conn, worker_id="crashed", lease_s=0.05, endpoint="b", limit=2)
        await asyncio.sleep(0.1)
        reaped = await cbec_queue.reap_expired(conn, on_dead=hook)
        assert sorted((r["id"], r["state"]) for r in reaped) == [(abandoned, "dead"), (again, "queued")]
        assert hook.seen[1:] == [(abandoned, "dead", {"n": 2}, "lease expired (worker crashed)")]
        # replayed: the hook sees them queued again
        assert await cbec_queue.replay(conn, all=True, on_replayed=hook) == 2
        assert hook.seen[2:] == [(refused, "queued", {"n": 1}, None), (abandoned, "queued", {"n": 2}, None)]
        assert await HookLog.rows(conn) == [(refused, "dead"), (abandoned, "dead"), (refused, "queued"),
                                            (abandoned, "queued")]  # fmt: skip


@pytest.mark.db
async def test_a_failing_hook_never_stops_the_queue_and_a_deadlock_undoes_the_move(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE hook_log (id serial PRIMARY KEY, job_id bigint, state text)")
        job_id = await cbec_queue.enqueue(conn, endpoint="a", kind="k", payload={})
        [job] = await cbec_queue.claim(conn, worker_id="w", lease_s=5, endpoint="a")
        # a bug in the application's hook: logged, its writes undone, the job dead all the same
        with capture_logs() as logs:
            assert await cbec_queue.record_dead(
                conn, job, reason="permanent", error=PermanentError("no"), outcome="permanent", on_dead=HookLog("bug")
            )
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "dead"
        assert await HookLog.rows(conn) == []
        assert [e["job_ids"] for e in logs if e["event"] == "jobs_hook_failed"] == [[job_id]]
        # a deadlock in the hook: nothing moves (the caller tries the whole again), so the two never disagree
        with pytest.raises(asyncpg.DeadlockDetectedError):
            await cbec_queue.replay(conn, job_ids=[job_id], on_replayed=HookLog("deadlock"))
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "dead"
        assert await HookLog.rows(conn) == []
        assert await cbec_queue.replay(conn, job_ids=[job_id], on_replayed=HookLog()) == 1
        assert await HookLog.rows(conn) == [(job_id, "queued")]


@pytest.mark.db
async def test_worker_reaps_an_abandoned_claim(pool: asyncpg.Pool) -> None:
    done: list[int] = []

    async def ok(job: Job) -> None:
        done.append(job.attempts)

    async with pool.acquire() as conn:
        await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={})
        await cbec_queue.claim(conn, worker_id="ghost", lease_s=0.3, endpoint="customs")
    worker = Worker(pool, {"customs": ok}, **fast(lease_s=0.6, poll_interval_s=0.2))
    async with running(worker):
        await wait_until(lambda: asyncio.sleep(0, bool(done)))
    assert done == [2]


@pytest.mark.db
@pytest.mark.parametrize("timeout", [None, 5.0])
async def test_a_job_the_handler_marked_done_is_not_finished_again(pool: asyncpg.Pool, timeout: float | None) -> None:
    ids = await add_jobs(pool, "customs", 3)
    seen: list[int] = []

    async def commits_itself(job: Job) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await cbec_queue.mark_done(conn, job)
        seen.append(job.id)

    finishes = 0
    real_finish = cbec_queue.store._finish

    async def counting_finish(*args: Any, **kw: Any) -> bool:
        nonlocal finishes
        finishes += 1
        return await real_finish(*args, **kw)

    worker = Worker(pool, {"customs": commits_itself}, handler_timeout_s=timeout, **fast())
    with capture_logs() as logs, pytest.MonkeyPatch.context() as mp:
        mp.setattr(cbec_queue.store, "_finish", counting_finish)
        async with running(worker):
            await wait_until(holds(pool, "SELECT count(*) = 3 FROM jobs WHERE state = 'done'"))
            await wait_until(lambda: asyncio.sleep(0, len(seen) == 3))
    assert sorted(seen) == sorted(ids)
    assert finishes == 3  # the handler's own, none by the worker
    done = [e for e in logs if e["event"] == "job_done"]
    assert sorted(e["job_id"] for e in done) == sorted(ids) and all(e["finished_by"] == "handler" for e in done)
    assert not [e for e in logs if e["event"] == "lease_lost"]
    assert await count(pool, "SELECT count(*) FROM job_attempts WHERE outcome = 'ok'") == 3


KILL_SCRIPT = """
import asyncio, sys
import asyncpg
import cbec_queue

async def main(dsn):
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=8)

    async def slow(job):
        await asyncio.sleep(0.3)
        # The delivery and the completion commit together, fenced by the claim.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO deliveries (job_id, worker_id) VALUES ($1, $2)", job.id, job.locked_by)
            await cbec_queue.mark_done(conn, job)

    worker = cbec_queue.Worker(pool, {"slow": slow}, worker_id="victim", lease_s=1.0, poll_interval_s=0.2,
                               default_concurrency=4)
    await worker.run(asyncio.Event())

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.db
async def test_kill_9_mid_batch_every_job_delivered_exactly_once(pool: asyncpg.Pool, qdsn: str) -> None:
    async with pool.acquire() as conn:
        # Not unique on purpose: a double delivery would show as a second row.
        await conn.execute("CREATE TABLE deliveries (job_id bigint NOT NULL, worker_id text NOT NULL)")
    # 40 jobs of 0.3 s, 4 at a time: about 3 s of work, so the victim is still mid-way when it is killed
    # even if this test's own polling runs late
    ids = await add_jobs(pool, "slow", 40)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILL_SCRIPT, qdsn, cwd=str(ROOT),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        # generous bounds: a fresh interpreter with asyncpg may start slowly on a loaded machine
        await wait_until(holds(pool, "SELECT count(*) >= 5 FROM deliveries"), timeout=30)
        await wait_until(holds(pool, "SELECT count(*) > 0 FROM jobs WHERE state = 'running'"), timeout=10)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    orphans = await count(pool, "SELECT count(*) FROM jobs WHERE state = 'running' AND locked_by = 'victim'")
    assert orphans > 0  # killed mid-batch: it held claims it will never finish

    async def rescue(job: Job) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO deliveries (job_id, worker_id) VALUES ($1, $2)", job.id, job.locked_by)
            await cbec_queue.mark_done(conn, job)

    worker = Worker(pool, {"slow": rescue}, worker_id="rescuer", **fast(lease_s=1.0, poll_interval_s=0.2))
    async with running(worker):
        await wait_until(holds(pool, "SELECT count(*) = 40 FROM jobs WHERE state = 'done'"), timeout=30)
    async with pool.acquire() as conn:
        per_job = await conn.fetch("SELECT job_id, count(*) AS n FROM deliveries GROUP BY job_id")
        expired = await conn.fetchval(
            "SELECT count(*) FROM job_attempts WHERE outcome = 'lease_expired' AND worker_id = 'victim'"
        )
    assert sorted(r["job_id"] for r in per_job) == sorted(ids)
    assert all(r["n"] == 1 for r in per_job)
    assert expired == orphans


@pytest.mark.db
async def test_notify_wakes_an_idle_worker(pool: asyncpg.Pool) -> None:
    handled: list[int] = []
    arrived = asyncio.Event()

    async def ok(job: Job) -> None:
        handled.append(job.id)
        arrived.set()

    async def latency(action: Callable[[asyncpg.Connection], Awaitable[Any]]) -> float:
        await asyncio.sleep(0.2)  # let the worker settle into its (30 s) idle wait
        arrived.clear()
        start = time.monotonic()
        async with pool.acquire() as conn, conn.transaction():
            await action(conn)
        await asyncio.wait_for(arrived.wait(), 5)
        return time.monotonic() - start

    # Poll and reaper far away: only a notification can wake the worker within the test.
    [dead] = await make_dead(pool, [("customs", "k")])
    worker = Worker(pool, {"customs": ok}, **fast(poll_interval_s=30, lease_s=60))
    async with running(worker):
        # 1. enqueue
        assert await latency(lambda c: cbec_queue.enqueue(c, endpoint="customs", kind="k", payload={})) < 1.0
        # 2. replay out of the dead letters
        assert await latency(lambda c: cbec_queue.replay(c, job_ids=[dead])) < 1.0

        # 3. an expired claim of a vanished worker, reaped by someone else (inserted directly: no NOTIFY)
        async with pool.acquire() as conn:
            job_id = await conn.fetchval(
                "INSERT INTO jobs (endpoint, kind, state, attempts, locked_by, lease_until)"
                " VALUES ('customs', 'k', 'running', 1, 'ghost', now() - interval '1 second') RETURNING id"
            )
            await conn.execute("INSERT INTO job_attempts (job_id, attempt, worker_id) VALUES ($1, 1, 'ghost')", job_id)
        assert await latency(lambda c: cbec_queue.reap_expired(c)) < 1.0
    assert handled[-1] == job_id


@pytest.mark.db
async def test_worker_survives_losing_its_connections(pool: asyncpg.Pool, qdsn: str) -> None:
    """What a database restart does to a worker: every server connection is cut, mid-job included."""
    started = asyncio.Event()
    release = asyncio.Event()
    done: list[int] = []

    async def handler(job: Job) -> None:
        if job.payload.get("wait"):
            started.set()
            await release.wait()
        done.append(job.id)

    worker = Worker(pool, {"customs": handler}, **fast(poll_interval_s=0.3))
    async with running(worker):
        async with pool.acquire() as conn:
            in_flight = await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={"wait": True})
        await asyncio.wait_for(started.wait(), 5)
        admin = await asyncpg.connect(qdsn)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed >= 2  # at least the listener and an idle pooled connection
        release.set()  # the outcome is written on a fresh connection
        await wait_until(holds(pool, "SELECT state = 'done' FROM jobs WHERE id = $1", in_flight))
        await wait_until(lambda: asyncio.sleep(0, worker.listening))  # the listener came back
        async with pool.acquire() as conn:
            after = await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={})
        await wait_until(holds(pool, "SELECT state = 'done' FROM jobs WHERE id = $1", after))
    assert done == [in_flight, after]


@pytest.mark.db
async def test_worker_keeps_running_while_the_database_is_unreachable() -> None:
    # A pool pointed at a port where nothing listens: the loop must log and back off, never crash.
    pool = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/none", min_size=0, max_size=2)
    worker = Worker(pool, {"customs": lambda job: asyncio.sleep(0)}, **fast(poll_interval_s=0.1))
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.5)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)
    await pool.close()
    events = {e["event"] for e in logs}
    assert {"db_unavailable", "listener_lost"} <= events


@pytest.mark.db
async def test_graceful_stop_finishes_or_releases(pool: asyncpg.Pool) -> None:
    started: list[str] = []

    async def quick(job: Job) -> None:
        started.append("quick")
        await asyncio.sleep(0.2)

    async def stuck(job: Job) -> None:
        started.append("stuck")
        await asyncio.Event().wait()

    worker = Worker(pool, {"quick": quick, "stuck": stuck}, **fast(shutdown_grace_s=0.5))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await worker.wait_listening()
    [quick_id] = await add_jobs(pool, "quick", 1)
    [stuck_id] = await add_jobs(pool, "stuck", 1)
    await wait_until(lambda: asyncio.sleep(0, len(started) == 2))
    stop.set()
    await asyncio.wait_for(task, 5)
    async with pool.acquire() as conn:
        rows = {r["id"]: r for r in await conn.fetch("SELECT id, state, attempts, locked_by FROM jobs")}
        attempts = await conn.fetch("SELECT job_id, outcome FROM job_attempts ORDER BY job_id")
    assert rows[quick_id]["state"] == "done"
    # Released: queued again, the interrupted attempt not counted and not in the history.
    assert (rows[stuck_id]["state"], rows[stuck_id]["attempts"], rows[stuck_id]["locked_by"]) == ("queued", 0, None)
    assert [(r["job_id"], r["outcome"]) for r in attempts] == [(quick_id, "ok")]
    assert worker.in_flight() == 0


@pytest.mark.db
async def test_concurrency_and_rate_limits(pool: asyncpg.Pool) -> None:
    active = 0
    peak = 0
    starts: list[float] = []

    async def limited(job: Job) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1

    async def metered(job: Job) -> None:
        starts.append(time.monotonic())

    worker = Worker(
        pool,
        {"limited": limited, "metered": metered},
        concurrency_by_endpoint={"limited": 2},
        default_concurrency=8,
        rate_by_endpoint={"metered": Rate(per_s=20, burst=2)},
        **fast(poll_interval_s=5),
    )
    async with running(worker):
        await add_jobs(pool, "limited", 8)
        await add_jobs(pool, "metered", 8)
        await wait_until(holds(pool, "SELECT count(*) = 16 FROM jobs WHERE state = 'done'"))
    assert peak == 2
    # Token bucket: any k consecutive calls span at least (k - burst) / rate seconds (5 ms of timer slack).
    for i in range(len(starts)):
        for j in range(i + 2, len(starts)):
            assert starts[j] - starts[i] >= (j - i + 1 - 2) / 20 - 0.005


def _breaking(pool: asyncpg.Pool, endpoint: Callable[[Job], Awaitable[None]], *, cooldown_s: float,
              max_attempts: int) -> Worker:  # fmt: skip
    """A worker of one customs delivery at a time whose circuit opens after two failures, retrying at once."""
    return Worker(
        pool,
        {"customs": endpoint},
        default_concurrency=1,
        breaker=BreakerSettings(failure_threshold=2, cooldown_s=cooldown_s),
        policy_by_endpoint={"customs": RetryPolicy(base_s=0.01, cap_s=0.01, max_attempts=max_attempts)},
        **fast(poll_interval_s=5),
    )


@pytest.mark.db
async def test_circuit_opens_then_probe_closes_it(pool: asyncpg.Pool) -> None:
    failing = True
    calls: list[float] = []

    async def endpoint(job: Job) -> None:
        calls.append(time.monotonic())
        if failing:
            raise TransientError("customs 503")

    worker = _breaking(pool, endpoint, cooldown_s=0.4, max_attempts=10)
    with capture_logs() as logs:
        async with running(worker):
            await add_jobs(pool, "customs", 4)
            await wait_until(lambda: asyncio.sleep(0, worker.breakers["customs"].state is CircuitState.OPEN))
            await wait_until(holds(pool, "SELECT count(*) = 4 FROM jobs WHERE state = 'queued'"))  # outcome written
            async with pool.acquire() as conn:
                [row] = await cbec_queue.stats(conn)
            assert row["circuit"] == "open" and row["queued"] == 4
            opened = time.monotonic()
            await asyncio.sleep(0.2)
            assert len(calls) == 2  # nothing is sent while open, though jobs are due
            failing = False
            await wait_until(holds(pool, "SELECT count(*) = 4 FROM jobs WHERE state = 'done'"))
            assert calls[2] - opened >= 0.4 * 0.9  # the probe waited for the cool-down
            assert worker.breakers["customs"].state is CircuitState.CLOSED
            async with pool.acquire() as conn:
                [row] = await cbec_queue.stats(conn)
            assert row["circuit"] == "closed"
    events = [e["event"] for e in logs if e["event"].startswith("circuit_")]
    assert events == ["circuit_open", "circuit_half_open", "circuit_closed"]
    async with pool.acquire() as conn:
        [row] = await cbec_queue.stats(conn)
    assert row["circuit"] is None and row["done"] == 4  # the worker stopped: nobody local knows


@pytest.mark.db
async def test_the_probe_is_a_fresh_job_not_the_one_that_keeps_failing(pool: asyncpg.Pool) -> None:
    """Messages the endpoint keeps failing (a 503 for them alone) open the circuit; the probe after the cool-down is
    the least-tried due job, so the other messages go — the failing ones' own retries were first due, and each probe
    with one of them opened the circuit again: ten of them held every other job for ten cool-downs."""
    failing_ids: list[int] = []

    async def endpoint(job: Job) -> None:
        if job.id in failing_ids:
            raise TransientError("customs 503 for this message")

    worker = _breaking(pool, endpoint, cooldown_s=0.2, max_attempts=100)
    failing_ids += await add_jobs(pool, "customs", 10)
    async with running(worker):
        await wait_until(lambda: asyncio.sleep(0, worker.breakers["customs"].state is CircuitState.OPEN))
        await wait_until(holds(pool, "SELECT bool_and(attempts >= 1) FROM jobs WHERE id = ANY ($1)", failing_ids))
        good = await add_jobs(pool, "customs", 3)
        # each good job goes as a probe (the failing ones' retries open the circuit again whenever it closes)
        await wait_until(holds(pool, "SELECT count(*) = 3 FROM jobs WHERE state = 'done' AND id = ANY ($1)", good),
                         timeout=2.0)  # fmt: skip (three cool-downs; before, the first alone took ten)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT state FROM jobs WHERE id = ANY ($1)", failing_ids)
    assert {r["state"] for r in rows} == {"queued"}  # still retried, not given up


@pytest.mark.db
async def test_claim_probe_takes_the_least_tried_due_job(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        tried, fresh, later = [await conn.fetchval(
            "INSERT INTO jobs (endpoint, kind, attempts, run_after) VALUES ('p', 'k', $1, now() + $2::text::interval)"
            " RETURNING id", attempts, delay) for attempts, delay in ((4, "-1 minute"), (0, "-1 second"),
                                                                    (0, "1 hour"))]  # fmt: skip
        [probe] = await cbec_queue.store.claim_probe(conn, worker_id="w", lease_s=5, endpoint="p")
        assert probe.id == fresh  # not the one tried four times, due first; not the one not due
        [then] = await cbec_queue.store.claim_probe(conn, worker_id="w", lease_s=5, endpoint="p")
        assert then.id == tried and later not in (probe.id, then.id)
        assert await cbec_queue.store.claim_probe(conn, worker_id="w", lease_s=5, endpoint="p") == []


@pytest.mark.db
async def test_a_worker_writes_its_open_circuit_for_the_other_processes(pool: asyncpg.Pool) -> None:
    """Open, the circuit is written (for cbec serve's /v1/queue when this is a cbec worker); the worker stopped, its
    row goes."""

    async def endpoint(job: Job) -> None:
        raise TransientError("customs 503")

    worker = _breaking(pool, endpoint, cooldown_s=30, max_attempts=10)
    async with running(worker):
        await add_jobs(pool, "customs", 2)
        await wait_until(holds(pool, "SELECT count(*) = 1 FROM queue_circuits WHERE endpoint = 'customs'"
                                     " AND state = 'open' AND worker_id = $1", worker.worker_id))  # fmt: skip
    assert await count(pool, "SELECT count(*) FROM queue_circuits") == 0


@pytest.mark.db
async def test_stats_show_the_circuits_of_workers_in_other_processes(pool: asyncpg.Pool) -> None:
    """cbec worker serves no /metrics: its circuits not closed are written, and cbec serve's stats (/v1/queue, the
    console, cbec_queue_circuit_state) show them — the severest of every worker's; a killed worker's stop counting
    after a minute."""
    async with pool.acquire() as conn:
        await cbec_queue.store.publish_circuits(conn, "other-1", {"customs": CircuitState.HALF_OPEN,
                                                                  "warehouse": CircuitState.CLOSED})  # fmt: skip
        await cbec_queue.store.publish_circuits(conn, "other-2", {"customs": CircuitState.OPEN})
        rows = {r["endpoint"]: r["circuit"] for r in await cbec_queue.stats(conn, endpoints=("customs", "warehouse"))}
        assert rows == {"customs": "open", "warehouse": None}
        await cbec_queue.store.publish_circuits(conn, "other-2", {})  # closed again
        rows = {r["endpoint"]: r["circuit"] for r in await cbec_queue.stats(conn, endpoints=("customs",))}
        assert rows == {"customs": "half_open"}
        await conn.execute("UPDATE queue_circuits SET seen_at = now() - interval '2 minutes'")  # its worker killed
        rows = {r["endpoint"]: r["circuit"] for r in await cbec_queue.stats(conn, endpoints=("customs",))}
        assert rows == {"customs": None}
        # a worker of this process: its breaker read live, not its row (which lags it by up to a second)
        cbec_queue.circuits.register("local-1", "customs", CircuitBreaker())
        try:
            await cbec_queue.store.publish_circuits(conn, "local-1", {"customs": CircuitState.OPEN})
            rows = {r["endpoint"]: r["circuit"] for r in await cbec_queue.stats(conn, endpoints=("customs",))}
            assert rows == {"customs": "closed"}
        finally:
            cbec_queue.circuits.unregister_worker("local-1")


@pytest.mark.db
async def test_stats(pool: asyncpg.Pool) -> None:
    await make_dead(pool, [("b", "k")])
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO jobs (endpoint, kind, created_at, run_after) VALUES"
            " ('a', 'k', now() - interval '90 seconds', now()),"
            " ('a', 'k', now(), now() + interval '1 hour')"
        )
        await cbec_queue.claim(conn, worker_id="w", lease_s=5, endpoint="a")  # takes the due one
        await conn.execute("INSERT INTO jobs (endpoint, kind, created_at) VALUES ('a', 'k', now() - interval '30 s')")
        rows = {r["endpoint"]: r for r in await cbec_queue.stats(conn)}
        # a configured endpoint without a live job is listed too
        idle = {r["endpoint"]: r for r in await cbec_queue.stats(conn, endpoints=["a", "idle"])}["idle"]
    a, b = rows["a"], rows["b"]
    assert (a["queued"], a["due"], a["running"], a["done"], a["dead"]) == (2, 1, 1, 0, 0)
    assert 29 <= a["oldest_queued_age_s"] < 60
    assert (b["queued"], b["dead"], b["oldest_queued_age_s"]) == (0, 1, None)
    assert (idle["queued"], idle["running"], idle["done"], idle["dead"], idle["oldest_queued_age_s"]) == (
        0, 0, 0, 0, None)  # fmt: skip


@pytest.mark.db
async def test_purge_done_deletes_old_history_oldest_first_and_nothing_live(pool: asyncpg.Pool) -> None:
    [dead] = await make_dead(pool, [("e", "k")])
    async with pool.acquire() as conn:
        old = [r["id"] for r in await conn.fetch(
            "INSERT INTO jobs (endpoint, kind, state, finished_at)"
            " SELECT 'e', 'k', 'done', now() - make_interval(hours => 100 - g) FROM generate_series(1, 10) g"
            " RETURNING id"
        )]  # fmt: skip
        await conn.execute(
            "INSERT INTO job_attempts (job_id, replay, attempt, worker_id, started_at, finished_at, outcome)"
            " SELECT id, 0, 1, 'w', finished_at, finished_at, 'ok' FROM jobs WHERE id = ANY ($1::bigint[])", old
        )
        await conn.execute("INSERT INTO jobs (endpoint, kind, state, finished_at) VALUES ('e', 'k', 'done', now())")
        await conn.execute("UPDATE jobs SET finished_at = now() - interval '1000 hours' WHERE id = $1", dead)
        [live] = await add_jobs(pool, "e", 1)
        purge = q.PURGE_DONE.replace("$1", "3600").replace("$2", "4")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + purge))
        assert "jobs_done_idx" in plan, plan
        assert await cbec_queue.purge_done(conn, older_than_s=3600, limit=4) == 4
        left = {r["id"] for r in await conn.fetch("SELECT id FROM jobs")}
        assert left.isdisjoint(old[:4]) and set(old[4:]) <= left  # the oldest went first
        assert await cbec_queue.purge_done(conn, older_than_s=3600) == 6
        left = {r["id"] for r in await conn.fetch("SELECT id FROM jobs")}
        assert left.isdisjoint(old) and {dead, live} <= left and len(left) == 3  # + the recent done one
        assert await conn.fetchval("SELECT count(*) FROM job_attempts WHERE job_id = ANY ($1::bigint[])", old) == 0


@pytest.mark.db
async def test_stats_read_the_backlog_and_kept_done_counts_never_the_history(pool: asyncpg.Pool) -> None:
    """Done jobs pile up (one per delivery, until purged): the stats read each live state's partial index and the
    done counts the triggers keep (sql/080_kept_counts.sql), never the done rows, so their cost follows the backlog."""
    async with pool.acquire() as conn:
        await history_and_backlog(conn, endpoints=4, done=30000, queued=50)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + q.STATS))
        assert "Seq Scan on jobs" not in plan and "jobs_done_idx" not in plan and "jobs_pkey" not in plan, plan
        rows = await cbec_queue.stats(conn)
    assert [(r["endpoint"], r["queued"], r["done"]) for r in rows] == [
        ("e0", 0, 7500), ("e1", 50, 7500), ("e2", 0, 7500), ("e3", 0, 7500)]  # fmt: skip


@pytest.mark.db
async def test_done_counts_follow_every_path_to_and_from_done(pool: asyncpg.Pool, qdsn: str) -> None:
    """The kept done counts equal a count of the table through deliveries by workers in several sessions, a
    replayed dead letter delivered, purges, and after folding the rows of sessions that ended."""
    done: list[int] = []

    async def deliver(job: Job) -> None:
        done.append(job.id)

    async def counted() -> tuple[dict[str, int], dict[str, int]]:
        async with pool.acquire() as conn:
            kept = {r["endpoint"]: r["done"] for r in await cbec_queue.stats(conn)}
            real = {r["endpoint"]: r["n"] for r in await conn.fetch(
                "SELECT endpoint, count(*) AS n FROM jobs WHERE state = 'done' GROUP BY 1")}  # fmt: skip
        return {e: n for e, n in kept.items() if n}, real

    [dead] = await make_dead(pool, [("b", "k")])
    await add_jobs(pool, "a", 30)
    await add_jobs(pool, "b", 10)
    worker = Worker(pool, {"a": deliver, "b": deliver}, default_concurrency=4, **fast())
    async with running(worker):
        await wait_until(lambda: asyncio.sleep(0, len(done) == 40))
        async with pool.acquire() as conn:
            assert await cbec_queue.replay(conn, job_ids=[dead]) == 1
        await wait_until(lambda: asyncio.sleep(0, len(done) == 41))
    await wait_until(holds(pool, "SELECT count(*) = 41 FROM jobs WHERE state = 'done'"))
    kept, real = await counted()
    assert kept == real == {"a": 30, "b": 11}
    async with pool.acquire() as conn:
        await conn.execute("UPDATE jobs SET finished_at = now() - interval '2 hours' WHERE id IN"
                           " (SELECT id FROM jobs WHERE state = 'done' AND endpoint = 'a' LIMIT 12)")  # fmt: skip
        assert await cbec_queue.purge_done(conn, older_than_s=3600) == 12
    kept, real = await counted()
    assert kept == real == {"a": 18, "b": 11}
    # a session of its own delivers (by hand) the last job and ends; its row folds into slot 0
    [last] = await add_jobs(pool, "a", 1)
    conn = await asyncpg.connect(qdsn)
    try:
        await conn.execute("UPDATE jobs SET state = 'done', finished_at = now() WHERE id = $1", last)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    finally:
        await conn.close()
    await wait_until(holds(pool, f"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {pid}"))
    assert await fold_kept_counts(pool) == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM kept_counts WHERE slot = $1", pid) == 0
        assert await conn.fetchval("SELECT n FROM kept_counts WHERE counter = 'jobs_done' AND slot = 0") == 1
    kept, real = await counted()
    assert kept == real == {"a": 19, "b": 11}


@pytest.mark.db
async def test_with_the_gateway_pool(db_pool: asyncpg.Pool) -> None:
    """gateway.db's pool decodes jsonb to dicts; the queue's statements must work on it too."""
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE name = '010_queue.sql'") == 1
        job_id = await cbec_queue.enqueue(conn, endpoint="e", kind="k", payload={"orderNo": "订单1"})
        assert await conn.fetchval("SELECT payload->>'orderNo' FROM jobs WHERE id = $1", job_id) == "订单1"
        [job] = await cbec_queue.claim(conn, worker_id="w", lease_s=5)
        assert job.payload == {"orderNo": "订单1"}
        await cbec_queue.record_dead(conn, job, reason="permanent", error=PermanentError("x"), outcome="permanent")
        [dead] = await cbec_queue.dead_letters(conn)
        assert dead["payload"] == {"orderNo": "订单1"}


@pytest.mark.db
async def test_two_workers_share_one_database(qdsn: str) -> None:
    pools = [await asyncpg.create_pool(qdsn, min_size=2, max_size=6) for _ in range(2)]
    runs: list[tuple[str, int]] = []

    def handler_for(name: str) -> Callable[[Job], Awaitable[None]]:
        async def handler(job: Job) -> None:
            runs.append((name, job.id))
            await asyncio.sleep(0.005)

        return handler

    try:
        workers = [
            Worker(p, {"customs": handler_for(f"w{i}")}, worker_id=f"w{i}", default_concurrency=4, **fast())
            for i, p in enumerate(pools)
        ]
        async with running(workers[0]), running(workers[1]):
            ids = await add_jobs(pools[0], "customs", 120)
            await wait_until(holds(pools[0], "SELECT count(*) = 120 FROM jobs WHERE state = 'done'"))
    finally:
        for p in pools:
            await p.close()
    assert sorted(job_id for _, job_id in runs) == sorted(ids)  # each job ran once
    assert {name for name, _ in runs} == {"w0", "w1"}  # and both did work


def test_an_endpoint_left_out_for_a_token_comes_back_when_the_token_is_there() -> None:
    """Regression: a turn leaves an endpoint out for want of a token; when the bucket refills while the turn is
    still running, the next turn must come at once, not after the poll interval (jobs and a token both waited)."""
    clock = FakeClock()

    async def noop(job: Job) -> None:
        return None

    worker = Worker(None, {"metered": noop}, rate_by_endpoint={"metered": Rate(per_s=2, burst=1)},  # type: ignore[arg-type]
                    poll_interval_s=5.0, clock=clock)  # fmt: skip
    bucket = worker._endpoints["metered"].bucket
    assert bucket is not None and bucket.try_take(1)  # the last token went to the turn before
    assert worker._idle_timeout({"metered"}) == pytest.approx(0.5)  # the next token is due in 0.5 s
    clock.advance(0.6)  # ... and came while this turn was claiming for other endpoints
    assert worker._idle_timeout({"metered"}) <= 0.001
    assert worker._idle_timeout(set()) == 5.0  # a full bucket of an endpoint with nothing due: just the poll


# --- ordering keys --------------------------------------------------------------------------------


async def keyed(conn: asyncpg.Connection, endpoint: str, *keys: str, **kw: Any) -> int:
    job_id = await cbec_queue.enqueue(conn, endpoint=endpoint, kind="k", payload={}, ordering_keys=keys, **kw)
    assert job_id is not None
    return job_id


async def claim_jobs(conn: asyncpg.Connection, endpoint: str | None = None, limit: int = 10) -> dict[int, Job]:
    jobs = await cbec_queue.claim(conn, worker_id="w", lease_s=30, endpoint=endpoint, limit=limit)
    return {j.id: j for j in jobs}


async def claim_ids(conn: asyncpg.Connection, endpoint: str | None = None, limit: int = 10) -> list[int]:
    return sorted(await claim_jobs(conn, endpoint, limit))


@pytest.mark.db
async def test_a_later_job_of_a_key_waits_while_the_earlier_one_is_queued_retrying_or_running(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        original = await keyed(conn, "customs", "CEB311:E1:O1")
        change = await keyed(conn, "customs", "CEB311:E1:O1")
        other_key = await keyed(conn, "customs", "CEB311:E1:O2")
        unordered = await keyed(conn, "customs")  # no keys: never held back
        other_endpoint = await keyed(conn, "inspection", "CEB311:E1:O1")
        withdrawal = await keyed(conn, "customs", "CEB311:E1:O9", "CEB311:E1:O1")  # any shared key holds it back
        assert await conn.fetchval("SELECT ordering_keys FROM jobs WHERE id = $1", unordered) is None

        # One statement sees the original and its change queued together: it takes the original only.
        jobs = await claim_jobs(conn, "customs")
        assert sorted(jobs) == [original, other_key, unordered]
        assert jobs[original].ordering_keys == ("CEB311:E1:O1",) and jobs[unordered].ordering_keys == ()
        assert await claim_ids(conn, "inspection") == [other_endpoint]  # endpoints are independent
        assert await claim_ids(conn) == []  # the original runs
        assert await cbec_queue.next_due_in(conn, ["customs"]) is None  # nothing claimable: nothing to poll for

        # A transient failure: the original waits for its retry, the change still waits behind it.
        assert await cbec_queue.record_retry(conn, jobs[original], delay_s=60, error=TransientError("503"))
        assert await claim_ids(conn) == []
        due = await cbec_queue.next_due_in(conn, ["customs"])
        assert due is not None and 55 < due <= 60  # the original's retry, not the change that is "due"
        await conn.execute("UPDATE jobs SET run_after = now() WHERE id = $1", original)  # its retry is due
        [retry] = (await claim_jobs(conn, "customs")).values()
        assert (retry.id, retry.attempts) == (original, 2)

        assert await cbec_queue.record_done(conn, retry)
        [running_change] = (await claim_jobs(conn)).values()
        assert running_change.id == change
        assert await claim_ids(conn) == []  # the withdrawal waits for the change
        assert await cbec_queue.record_done(conn, running_change)
        assert await claim_ids(conn) == [withdrawal]


@pytest.mark.db
async def test_a_dead_job_holds_nothing_back_and_its_replay_does_not_wait(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        poison = await keyed(conn, "customs", "K1")
        change = await keyed(conn, "customs", "K1")
        [job] = (await claim_jobs(conn, "customs")).values()
        assert job.id == poison
        assert await cbec_queue.record_dead(conn, job, reason="permanent", error=PermanentError("400"),
                                            outcome="permanent")  # fmt: skip
        [later] = (await claim_jobs(conn, "customs")).values()
        assert later.id == change  # the dead letter let it go
        # Replayed now, the original is the earlier job: it goes at once, beside its change (the order cannot be
        # restored) ...
        assert await cbec_queue.replay(conn, job_ids=[poison]) == 1
        [replayed] = (await claim_jobs(conn)).values()
        assert replayed.id == poison
        # ... and a job enqueued after both waits for both.
        third = await keyed(conn, "customs", "K1")
        assert await claim_ids(conn) == []
        assert await cbec_queue.record_done(conn, later)
        assert await claim_ids(conn) == []
        assert await cbec_queue.record_done(conn, replayed)
        assert await claim_ids(conn) == [third]


@pytest.mark.db
async def test_lease_expiry_and_release_keep_the_order(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        original = await keyed(conn, "customs", "K1")
        change = await keyed(conn, "customs", "K1")
        await cbec_queue.claim(conn, worker_id="crashed", lease_s=0.05, endpoint="customs")
        await asyncio.sleep(0.1)
        [reaped] = await cbec_queue.reap_expired(conn, default_max_attempts=5)
        assert (reaped["id"], reaped["state"]) == (original, "queued")
        [job] = (await claim_jobs(conn, "customs")).values()
        assert job.id == original
        assert await cbec_queue.release(conn, [job]) == [original]  # back to queued at a graceful stop
        assert await claim_ids(conn, "customs") == [original]
        # its lease runs out on its last attempt: dead, and the change may go
        await conn.execute("UPDATE jobs SET max_attempts = 1, lease_until = now() WHERE id = $1", original)
        [reaped] = await cbec_queue.reap_expired(conn)
        assert (reaped["id"], reaped["state"]) == (original, "dead")
        assert await claim_ids(conn, "customs") == [change]


@pytest.mark.db
async def test_concurrent_claimers_never_take_a_later_job_early(pool: asyncpg.Pool) -> None:
    """Chains of versions of 40 keys (some jobs with two keys, two endpoints), claimed by four claimers at once
    that finish jobs as done, dead or retry: a job is never claimed before every earlier job of its endpoint
    sharing a key has ended (done or dead)."""
    rng = random.Random(7)
    specs: list[tuple[str, tuple[str, ...]]] = []
    for _ in range(240):
        endpoint = rng.choice(["a", "b"])
        keys = tuple(sorted({f"K{rng.randrange(40)}" for _ in range(rng.choice([1, 1, 2]))}))
        specs.append((endpoint, keys))
    async with pool.acquire() as conn, conn.transaction():
        ids = [await keyed(conn, endpoint, *keys) for endpoint, keys in specs]
    spec_of = dict(zip(ids, specs, strict=True))
    ending: set[int] = set()  # done or dead, or about to be (before the write that ends it commits)
    holding: set[int] = set()  # claimed and not given back yet
    claims: list[int] = []
    violations: list[tuple[int, int]] = []

    def earlier_live(job_id: int) -> list[int]:
        endpoint, keys = spec_of[job_id]
        return [
            i for i in ids
            if i < job_id and i not in ending and spec_of[i][0] == endpoint and set(spec_of[i][1]) & set(keys)
        ]  # fmt: skip

    async def claimer(name: str) -> None:
        async with pool.acquire() as conn:
            while len(ending) < len(ids):
                if name == "c3":
                    wanted = {"a": 3, "b": 2}
                    jobs = await cbec_queue.claim_per_endpoint(conn, worker_id=name, lease_s=30, wanted=wanted)
                else:
                    jobs = await cbec_queue.claim(conn, worker_id=name, lease_s=30, limit=4)
                for job in jobs:
                    violations.extend((job.id, e) for e in earlier_live(job.id))
                    assert job.id not in holding and job.id not in ending
                    holding.add(job.id)
                    claims.append(job.id)
                await asyncio.sleep(rng.random() * 0.002)
                for job in jobs:
                    holding.discard(job.id)
                    roll = rng.random()
                    if roll < 0.15:
                        assert await cbec_queue.record_retry(conn, job, delay_s=0, error=TransientError("503"))
                    elif roll < 0.25:
                        ending.add(job.id)
                        assert await cbec_queue.record_dead(conn, job, reason="permanent", error=PermanentError("x"),
                                                            outcome="permanent")  # fmt: skip
                    else:
                        ending.add(job.id)
                        assert await cbec_queue.record_done(conn, job)
                if not jobs:
                    await asyncio.sleep(0.001)

    await asyncio.wait_for(asyncio.gather(*(claimer(f"c{i}") for i in range(4))), 60)
    assert violations == []
    assert sorted(set(claims)) == sorted(ids) and len(claims) > len(ids)  # every job, some more than once
    assert await count(pool, "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')") == 0


def counting_next_due(mp: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the worker's turns that found too little to claim (each asks when the next job is due)."""
    turns = 0
    real = cbec_queue.store.next_due_in

    async def next_due_in(*args: Any, **kw: Any) -> float | None:
        nonlocal turns
        turns += 1
        return await real(*args, **kw)

    mp.setattr(cbec_queue.store, "next_due_in", next_due_in)
    return lambda: turns


@pytest.mark.db
async def test_the_end_of_a_job_on_another_worker_wakes_the_held_back_one(pool: asyncpg.Pool) -> None:
    """The original runs elsewhere (another worker process); the worker here holds its change back without polling
    and takes it within moments of the original's end, long before its 30 s poll."""
    started: list[tuple[int, float]] = []

    async def ok(job: Job) -> None:
        started.append((job.id, time.monotonic()))

    worker = Worker(pool, {"customs": ok}, **fast(poll_interval_s=30, lease_s=60))
    async with pool.acquire() as conn:
        await keyed(conn, "customs", "K1")
        [elsewhere] = await cbec_queue.claim(conn, worker_id="elsewhere", lease_s=60, endpoint="customs")
        change = await keyed(conn, "customs", "K1")
    with pytest.MonkeyPatch.context() as mp:
        turns = counting_next_due(mp)
        async with running(worker):
            await asyncio.sleep(0.5)
            assert started == []
            assert turns() <= 2  # the change is due but held back: the worker sleeps
            async with pool.acquire() as conn:
                ended = time.monotonic()
                assert await cbec_queue.record_done(conn, elsewhere)
            await wait_until(lambda: asyncio.sleep(0, bool(started)))
    assert started[0][0] == change
    assert started[0][1] - ended < 1.0


@pytest.mark.db
async def test_a_worker_runs_the_versions_of_a_key_in_order_through_retries(pool: asyncpg.Pool) -> None:
    """One worker, both jobs: the original fails twice (transient), its change is due all along; the worker sleeps
    until the original's retries, and starts the change only after the original is done, and at once."""
    events: list[tuple[str, int, float]] = []

    async def handler(job: Job) -> None:
        events.append(("start", job.id, time.monotonic()))
        if job.payload.get("original") and job.attempts < 3:
            raise TransientError("503 from customs")
        events.append(("done", job.id, time.monotonic()))

    policy = RetryPolicy(base_s=0.2, factor=2, cap_s=0.4, max_attempts=5, jitter="none")
    worker = Worker(pool, {"customs": handler}, policy_by_endpoint={"customs": policy}, **fast(poll_interval_s=30))
    with pytest.MonkeyPatch.context() as mp:
        turns = counting_next_due(mp)
        async with running(worker):
            async with pool.acquire() as conn, conn.transaction():
                original = await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={"original": True},
                                                    ordering_keys=["CEB311:E:O"])  # fmt: skip
                change = await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={},
                                                  ordering_keys=["CEB311:E:O"])  # fmt: skip
            await wait_until(holds(pool, "SELECT count(*) = 2 FROM jobs WHERE state = 'done'"))
        # About ten turns: start, each start and end of a job, the original's retry times, two wake-ups by the
        # ends of keyed jobs. Polling at the 20 ms floor through 0.6 s of retries would add some 30 more.
        assert turns() <= 15
    order = [(e, i) for e, i, _ in events]
    assert order == [("start", original), ("start", original), ("start", original), ("done", original),
                     ("start", change), ("done", change)]  # fmt: skip
    original_done = next(t for e, i, t in events if (e, i) == ("done", original))
    change_start = next(t for e, i, t in events if (e, i) == ("start", change))
    assert change_start - original_done < 0.5


@pytest.mark.db
async def test_ordered_claims_probe_indexes(pool: asyncpg.Pool) -> None:
    """The claim statements, the next-due read and the batched done write stay index probes on a table with many
    jobs, with custom and with generic plans (the worker's prepared statements become generic)."""
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO jobs (endpoint, kind, state, finished_at, ordering_keys)"
            " SELECT 'e' || (g % 4), 'k', 'done', now(), ARRAY['CEB311:E:' || g] FROM generate_series(1, 30000) g"
        )
        await conn.execute(
            "INSERT INTO jobs (endpoint, kind, ordering_keys)"
            " SELECT 'e' || (g % 4), 'k', ARRAY['CEB311:E:' || (g % 500)] FROM generate_series(1, 2000) g"
        )
        await conn.execute("INSERT INTO jobs (endpoint, kind) SELECT 'e1', 'k' FROM generate_series(1, 500)")
        await conn.execute("ANALYZE jobs")
        cases = {
            "CLAIM_PER_ENDPOINT": "ARRAY['e1', 'e2'], ARRAY[5, 5], 'w', 5.0",
            "CLAIM_ANY": "5, 'w', 5.0",
            "NEXT_DUE": "ARRAY['e1', 'e2']",
            "FINISH_DONE_MANY": "ARRAY[1::bigint], ARRAY[1], ARRAY['w']",
        }
        for begin in ("BEGIN", "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan"):
            assert await full_scans(conn, begin=begin, module=q, cases=cases) == {}
            await conn.execute(begin)
            try:
                for name in ("CLAIM_PER_ENDPOINT", "CLAIM_ANY", "NEXT_DUE"):
                    await conn.execute(f"PREPARE plan_check AS {getattr(q, name)}")
                    plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE plan_check({cases[name]})"))
                    await conn.execute("DEALLOCATE plan_check")
                    assert "Bitmap Index Scan on jobs_ordering_live_idx" in plan, (name, plan)
                    assert "Seq Scan" not in plan, (name, plan)
            finally:
                await conn.execute("ROLLBACK")


@pytest.mark.db
async def test_claims_probe_indexes_over_a_backlog_of_keyed_jobs(pool: asyncpg.Pool) -> None:
    """A queue the customs worker meets after a burst: thousands of queued jobs of one endpoint, every one with
    keys of its own, analyzed. Left to the statistics the planner answered "is an earlier job of my keys live?"
    by walking the primary key over every earlier job, or a sequential scan, and flipped the picked jobs with a
    hash join over the whole table (~10 ms per claim at 3,000 jobs); with the claims' own planning it is one
    GIN probe per candidate and one primary-key probe per picked job."""
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO jobs (endpoint, kind, ordering_keys)"
            " SELECT 'customs', 'k', ARRAY['CEB311:E:' || g, 'CEB511:L:' || g] FROM generate_series(1, 3000) g"
        )
        await conn.execute("ANALYZE jobs")
        cases = {
            "CLAIM_PER_ENDPOINT": "ARRAY['customs', 'inspection', 'webhook'], ARRAY[8, 8, 8], 'w', 5.0",
            "CLAIM_ANY": "8, 'w', 5.0",
            "NEXT_DUE": "ARRAY['customs']",
        }
        assert await full_scans(conn, begin=q.BEGIN_PLANNED, module=q, cases=cases) == {}
        await conn.execute(q.BEGIN_PLANNED)
        try:
            for name, args in cases.items():
                await conn.execute(f"PREPARE plan_check AS {getattr(q, name)}")
                plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE plan_check({args})"))
                await conn.execute("DEALLOCATE plan_check")
                assert "Bitmap Index Scan on jobs_ordering_live_idx" in plan, (name, plan)
                assert "Index Scan using jobs_pkey on jobs e" not in plan, (name, plan)
                assert "Hash" not in plan and "Seq Scan" not in plan, (name, plan)
        finally:
            await conn.execute("ROLLBACK")
        # And a claim as the worker makes it takes the due jobs in order and leaves no transaction open.
        jobs = await cbec_queue.claim_per_endpoint(conn, worker_id="w", lease_s=30, wanted={"customs": 8})
        assert [j.id for j in jobs] == sorted(j.id for j in jobs) and len(jobs) == 8
        assert not conn.is_in_transaction()


@pytest.mark.db
async def test_a_claim_inside_the_callers_transaction_stays_in_it(pool: asyncpg.Pool) -> None:
    """The claims set their planning for a transaction; on a connection already in one they must not commit it."""
    async with pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        await cbec_queue.enqueue(conn, endpoint="customs", kind="k", payload={})
        [job] = await cbec_queue.claim(conn, worker_id="w", lease_s=30, endpoint="customs")
        assert conn.is_in_transaction()
        await tr.rollback()
        assert await conn.fetchval("SELECT count(*) FROM jobs WHERE id = $1", job.id) == 0
        assert await conn.fetchval("SHOW enable_seqscan") == "on"  # the settings ended with the transaction
