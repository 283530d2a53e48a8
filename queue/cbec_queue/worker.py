"""The async worker: wakes on NOTIFY (timed poll as fallback), claims batches, runs handlers under
per-endpoint limits, records outcomes, extends leases, reaps expired ones, survives database restarts.

Delivery is at least once: a handler may run again when its worker dies or loses its lease before the
outcome is written. Handlers whose effect is a database write get exactly once by writing
`store.mark_done(conn, job)` in the same transaction (it is fenced by the claim).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import structlog

from . import store
from .errors import Deferred, NotReady
from .jobs import CHANNEL, Job, JobsHook
from .limits import BreakerSettings, CircuitBreaker, CircuitState, Rate, TokenBucket, circuits
from .policy import RetryPolicy, classify

log = structlog.get_logger("cbec_queue")

Handler = Callable[[Job], Awaitable[None]]

# Backoff between reconnection attempts and failed loop turns when the database is away.
RECONNECT_POLICY = RetryPolicy(base_s=0.1, factor=2.0, cap_s=5.0, max_attempts=1_000_000, jitter="equal")


#: What the server answers a new connection it will not take — too many clients, a database dropped or renamed, a
#: login refused (a password changed under us): no query failed, the database is away for this process until the
#: operators act, which is a 503 to retry, not a bug. None of them can come from a query on an open connection.
CONNECT_REFUSED: tuple[type[asyncpg.PostgresError], ...] = (
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
)


_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.InternalClientError, *CONNECT_REFUSED,
)  # fmt: skip


def is_db_unavailable(error: BaseException) -> bool:
    """Errors that mean 'the database is unreachable or restarting' rather than a bug."""
    return isinstance(error, _UNAVAILABLE)


@dataclass(eq=False)
class _Endpoint:
    name: str
    handler: Handler
    policy: RetryPolicy
    concurrency: int
    bucket: TokenBucket | None
    breaker: CircuitBreaker
    in_flight: int = 0


@dataclass(eq=False)
class _Running:
    job: Job
    endpoint: _Endpoint
    task: asyncio.Task[None] | None = None
    in_handler: bool = True
    lease_lost_logged: bool = field(default=False)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """Runs the handlers of some endpoints. Several workers (in several processes) may share one database.

    `handlers` maps endpoint -> handler. Limits (concurrency, rate, circuit breaker) are per endpoint and
    per worker. The pool needs at least 2 connections: one is held for LISTEN. `on_dead` is called in the
    transaction that moves jobs to the dead letters (a final failure, or a lease that ran out on the last attempt),
    so that the application's record of them follows in the same commit.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        handlers: Mapping[str, Handler],
        *,
        worker_id: str | None = None,
        policy_by_endpoint: Mapping[str, RetryPolicy] | None = None,
        default_policy: RetryPolicy | None = None,
        concurrency_by_endpoint: Mapping[str, int] | None = None,
        default_concurrency: int = 4,
        rate_by_endpoint: Mapping[str, Rate] | None = None,
        breaker: BreakerSettings | None = None,
        breaker_by_endpoint: Mapping[str, BreakerSettings] | None = None,
        lease_s: float = 30.0,
        poll_interval_s: float = 1.0,
        batch_size: int = 20,
        heartbeat_interval_s: float | None = None,
        reap_interval_s: float | None = None,
        shutdown_grace_s: float = 10.0,
        handler_timeout_s: float | None = None,
        reconnect_policy: RetryPolicy = RECONNECT_POLICY,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_dead: JobsHook | None = None,
    ) -> None:
        if not handlers:
            raise ValueError("a worker needs at least one handler")
        if lease_s <= 0 or poll_interval_s <= 0 or batch_size < 1:
            raise ValueError("lease_s and poll_interval_s must be > 0, batch_size >= 1")
        self.pool = pool
        self.worker_id = worker_id or default_worker_id()
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        # A lease survives two missed heartbeats.
        self.heartbeat_interval_s = heartbeat_interval_s or lease_s / 3
        self.reap_interval_s = reap_interval_s or max(lease_s / 2, 0.05)
        self.shutdown_grace_s = shutdown_grace_s
        self.handler_timeout_s = handler_timeout_s
        self.reconnect_policy = reconnect_policy
        self.on_dead = on_dead
        self._clock = clock
        self._rng = rng or random.Random()
        policies = policy_by_endpoint or {}
        concurrency = concurrency_by_endpoint or {}
        rates = rate_by_endpoint or {}
        breakers = breaker_by_endpoint or {}
        base_policy = default_policy or RetryPolicy()
        self._endpoints: dict[str, _Endpoint] = {}
        for name, handler in handlers.items():
            rate = rates.get(name)
            self._endpoints[name] = _Endpoint(
                name=name,
                handler=handler,
                policy=policies.get(name, base_policy),
                concurrency=max(1, concurrency.get(name, default_concurrency)),
                bucket=None if rate is None else TokenBucket(rate, clock=clock),
                breaker=CircuitBreaker(breakers.get(name, breaker), clock=clock),
            )
        self._running: dict[int, _Running] = {}
        self._writes: set[asyncio.Task[Any]] = set()
        self._to_release: list[Job] = []
        self._releasing = False
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()

    # -- introspection (tests, operators' page) --------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def wait_listening(self) -> None:
        await self._listening.wait()

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        return {name: ep.breaker for name, ep in self._endpoints.items()}

    def in_flight(self, endpoint: str | None = None) -> int:
        if endpoint is None:
            return len(self._running)
        return self._endpoints[endpoint].in_flight

    # -- main loop ------------------------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event) -> None:
        """Process jobs until `stop_event` is set, then finish (or release) in-flight jobs and return."""
        if self.pool.get_max_size() < 2:
            raise ValueError("the pool needs at least 2 connections (one is held for LISTEN)")
        for name, ep in self._endpoints.items():
            circuits.register(self.worker_id, name, ep.breaker)
        log.info("worker_started", worker_id=self.worker_id, endpoints=sorted(self._endpoints))
        background = [
            asyncio.create_task(self._wake_on_stop(stop_event)),
            asyncio.create_task(self._listen_loop(stop_event)),
            asyncio.create_task(self._heartbeat_loop(stop_event)),
            asyncio.create_task(self._reap_loop(stop_event)),
            asyncio.create_task(self._circuits_loop(stop_event)),
        ]
        grace = self.shutdown_grace_s
        try:
            await self._claim_loop(stop_event)
        except asyncio.CancelledError:
            grace = 0.0  # cancelled from outside: release what runs, quickly
            raise
        finally:
            try:
                await self._shutdown(grace)
            finally:
                # They all watch stop_event; let them end by themselves (the listener returns its connection).
                stop_event.set()
                _, pending = await asyncio.wait(background, timeout=5.0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                circuits.unregister_worker(self.worker_id)
                log.info("worker_stopped", worker_id=self.worker_id)

    async def _wake_on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            # Clear before claiming: a notification that arrives during the claim makes the next wait return.
            self._wake.clear()
            try:
                timeout = await self._claim_once()
                failures = 0
            except Exception as e:  # never let the loop die: log, back off, try again
                failures += 1
                delay = self.reconnect_policy.delay(failures, self._rng)
                if is_db_unavailable(e):
                    log.warning("db_unavailable", worker_id=self.worker_id, error=store.short_error(e),
                                retry_in_s=round(delay, 3))  # fmt: skip
                else:
                    log.exception("worker_loop_error", worker_id=self.worker_id, retry_in_s=round(delay, 3))
                await _sleep_unless(stop, delay)
                continue
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def _claim_once(self) -> float:
        """Claim what the limits allow and start it; returns how long to wait before the next turn."""
        wanted: dict[str, int] = {}
        probes: set[str] = set()
        rate_limited: set[str] = set()  # free slots, no token now
        for ep in self._endpoints.values():
            n = min(ep.concurrency - ep.in_flight, self.batch_size)
            if ep.bucket is not None and n > 0:
                n = min(n, int(ep.bucket.tokens + 1e-9))
                if n <= 0:
                    rate_limited.add(ep.name)
            if n <= 0:
                continue
            if ep.breaker.state is not CircuitState.CLOSED:
                before = ep.breaker.state
                if not ep.breaker.allow():
                    continue
                self._log_breaker(ep, before)
                n = 1
                probes.add(ep.name)
            wanted[ep.name] = n
        if not wanted:
            return self._idle_timeout(rate_limited)
        try:
            async with self.pool.acquire() as conn:
                plain = {name: n for name, n in wanted.items() if name not in probes}
                jobs = await store.claim_per_endpoint(
                    conn, worker_id=self.worker_id, lease_s=self.lease_s, wanted=plain
                )
                for name in sorted(probes):  # a fresh job, not the one that keeps failing (q.CLAIM_PROBE)
                    jobs += await store.claim_probe(conn, worker_id=self.worker_id, lease_s=self.lease_s,
                                                    endpoint=name)  # fmt: skip
        except BaseException:
            for name in probes:
                self._endpoints[name].breaker.release_probe()
            raise
        got: dict[str, int] = {}
        for job in jobs:
            got[job.endpoint] = got.get(job.endpoint, 0) + 1
            self._start(job)
        for name in probes - got.keys():
            self._endpoints[name].breaker.release_probe()
        if any(got.get(name, 0) >= n for name, n in wanted.items()):
            return 0.0  # a full batch: there may be more
        starving = {name for name in wanted if got.get(name, 0) < wanted[name]}
        return await self._next_turn_in(starving, rate_limited)

    async def _next_turn_in(self, starving: set[str], rate_limited: set[str]) -> float:
        timeout = self._idle_timeout(rate_limited)
        if starving:
            async with self.pool.acquire() as conn:
                due = await store.next_due_in(conn, sorted(starving))
            if due is not None:
                # Floor: a job due "now" that we did not get is held by another claimer for an instant.
                timeout = min(timeout, max(due, 0.02))
        return timeout

    def _idle_timeout(self, rate_limited: set[str]) -> float:
        timeout = self.poll_interval_s
        for ep in self._endpoints.values():
            if ep.in_flight >= ep.concurrency:
                continue  # a finishing job wakes the loop
            # An endpoint left out of this turn for want of a token comes back when one is due — at once if the
            # bucket refilled while the turn ran (its jobs would otherwise wait for the poll interval).
            if ep.bucket is not None and (ep.name in rate_limited or ep.bucket.tokens < 1):
                timeout = min(timeout, ep.bucket.wait_time(1))
            cooldown_left = ep.breaker.retry_in()
            if cooldown_left > 0:  # 0: the probe is due, but only the bucket or a free slot can start it
                timeout = min(timeout, cooldown_left)
        return max(timeout, 0.001)

    def _start(self, job: Job) -> None:
        ep = self._endpoints[job.endpoint]
        ep.in_flight += 1
        if ep.bucket is not None:
            ep.bucket.try_take(1)
        running = _Running(job=job, endpoint=ep)
        self._running[job.id] = running
        running.task = asyncio.create_task(self._run_job(running), name=f"cbec_queue job {job.id}")
        log.debug("job_claimed", job_id=job.id, endpoint=job.endpoint, kind=job.kind, attempt=job.attempts,
                  worker_id=self.worker_id)  # fmt: skip

    # -- one job ---------------------------------------------------------------------------------------

    async def _run_job(self, running: _Running) -> None:
        job, ep = running.job, running.endpoint
        started = self._clock()
        error: Exception | None = None
        # mark_done inside the handler records its claim here (a task copies the context, not the set).
        marks: set[tuple[int, int, str]] = set()
        store.handler_marks.set(marks)
        try:
            try:
                if self.handler_timeout_s is None:
                    await ep.handler(job)
                else:
                    await asyncio.wait_for(ep.handler(job), self.handler_timeout_s)
            except asyncio.CancelledError:
                if not self._releasing:
                    raise
                self._to_release.append(job)  # released in one statement by _shutdown
                return
            except Exception as e:
                error = e
            running.in_handler = False
            duration_ms = int((self._clock() - started) * 1000)
            if error is None and (job.id, job.attempts, job.locked_by) in marks:
                # The handler returned after its own transaction marked the job done (and committed): writing
                # the outcome again would only find the claim gone and ask who holds it (two round trips).
                ep.breaker.record_success()
                log.info("job_done", job_id=job.id, endpoint=job.endpoint, kind=job.kind, attempt=job.attempts,
                         worker_id=self.worker_id, duration_ms=duration_ms, finished_by="handler")  # fmt: skip
                return
            write = asyncio.ensure_future(self._record_outcome(job, ep, error, duration_ms))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
            # Shielded: a cancellation must not lose the outcome of work that was done.
            await asyncio.shield(write)
        finally:
            ep.in_flight -= 1
            self._running.pop(job.id, None)
            self._wake.set()

    async def _record_outcome(self, job: Job, ep: _Endpoint, error: Exception | None, duration_ms: int) -> None:
        before = ep.breaker.state
        ctx = {"job_id": job.id, "endpoint": job.endpoint, "kind": job.kind, "attempt": job.attempts,
               "worker_id": self.worker_id, "duration_ms": duration_ms}  # fmt: skip
        write: Callable[[asyncpg.Connection], Coroutine[Any, Any, bool]]
        extra: dict[str, Any] = {}
        if error is None:
            ep.breaker.record_success()
            event = "job_done"

            async def write(conn: asyncpg.Connection) -> bool:
                return await store.record_done(conn, job, duration_ms=duration_ms)
        elif isinstance(error, Deferred):
            # Not tried: nothing to say of the endpoint; a probe it used goes to the next job.
            ep.breaker.release_probe()
            event = "job_deferred"
            extra.update(retry_in_s=round(error.delay_s, 3), error=store.short_error(error))
            delay_s, reason = error.delay_s, str(error)

            async def write(conn: asyncpg.Connection) -> bool:
                return await store.record_deferred(conn, job, delay_s=delay_s, reason=reason)
        else:
            outcome = classify(error)
            # A permanent rejection means the endpoint answered: it is healthy as far as the breaker cares. A job not
            # ready says nothing of the endpoint: a probe it used goes to the next job.
            if isinstance(error, NotReady):
                ep.breaker.release_probe()
            elif outcome == "permanent":
                ep.breaker.record_success()
            else:
                ep.breaker.record_failure()
            policy = ep.policy if job.max_attempts is None else replace(ep.policy, max_attempts=job.max_attempts)
            decision = policy.decide(job.attempts, error, rng=self._rng)
            extra.update(reason=decision.reason, error=store.short_error(error))
            if decision.retry:
                event = "job_retry"
                extra["retry_in_s"] = round(decision.delay_s, 3)

                async def write(conn: asyncpg.Connection) -> bool:
                    return await store.record_retry(
                        conn, job, delay_s=decision.delay_s, error=error, outcome=outcome, duration_ms=duration_ms
                    )
            else:
                event = "job_dead"

                async def write(conn: asyncpg.Connection) -> bool:
                    return await store.record_dead(
                        conn, job, reason=decision.reason, error=error, outcome=outcome, duration_ms=duration_ms,
                        on_dead=self.on_dead,
                    )  # fmt: skip

        self._log_breaker(ep, before)
        applied = await self._write_with_retry(write, ctx)
        if applied is None:
            log.error("outcome_lost", **ctx, outcome_event=event)
        elif applied:
            # A deferral is the handler's decision, said once by the handler (not each job's): debug.
            level = {"job_done": log.info, "job_deferred": log.debug}.get(event, log.warning)
            level(event, **ctx, **extra)
        else:
            await self._explain_unapplied(job, ctx, event)

    async def _explain_unapplied(self, job: Job, ctx: dict[str, Any], event: str) -> None:
        try:
            async with self.pool.acquire() as conn:
                row = await store.holder(conn, job.id)
        except Exception:
            row = None
        if row is not None and row["state"] == "done" and row["attempts"] == job.attempts:
            # The handler marked it done in its own transaction (store.mark_done).
            log.info("job_done", **ctx, finished_by="handler")
        else:
            log.warning("lease_lost", **ctx, outcome_event=event,
                        holder=None if row is None else row["locked_by"])  # fmt: skip

    async def _write_with_retry(
        self,
        write: Callable[[asyncpg.Connection], Coroutine[Any, Any, bool]],
        ctx: dict[str, Any],
        give_up_after_s: float | None = None,
    ) -> bool | None:
        """Run an outcome write, retrying while the database is away. None: gave up (by default after one
        lease: by then the reaper re-queues the job anyway)."""
        deadline = self._clock() + (self.lease_s if give_up_after_s is None else give_up_after_s)
        failures = 0
        while True:
            try:
                async with self.pool.acquire() as conn:
                    return await write(conn)
            except Exception as e:
                failures += 1
                delay = self.reconnect_policy.delay(failures, self._rng)
                if self._clock() + delay > deadline:
                    return None
                log.warning("outcome_write_failed", **ctx, error=store.short_error(e), retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)

    def _log_breaker(self, ep: _Endpoint, before: CircuitState) -> None:
        after = ep.breaker.state
        if after is not before:
            log.warning(f"circuit_{after.value}", endpoint=ep.name, worker_id=self.worker_id,
                        failures=ep.breaker.consecutive_failures)  # fmt: skip

    # -- background duties ----------------------------------------------------------------------------

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload in self._endpoints:
            self._wake.set()

    async def _listen_loop(self, stop: asyncio.Event) -> None:
        """Hold one connection LISTENing on the channel; reconnect with backoff when it drops."""
        failures = 0
        # A cut connection is noticed at once (termination listener); the ping catches silent ones.
        check_s = min(5.0, max(1.0, self.poll_interval_s))
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await self.pool.acquire()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._listening.set()
                failures = 0
                log.info("listener_connected", worker_id=self.worker_id)
                self._wake.set()  # notifications sent while we were away are gone: look once
                while not stop.is_set() and not lost.is_set():
                    await _wait_any(stop, lost, check_s)
                    if not stop.is_set() and not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=max(check_s, 1.0))  # is it really alive?
            except Exception as e:
                failures += 1
                log.warning("listener_lost", worker_id=self.worker_id, error=store.short_error(e))
            finally:
                self._listening.clear()
                if conn is not None:
                    await self._drop_listener(conn)
            if lost.is_set() and not stop.is_set():
                failures += 1
                log.warning("listener_lost", worker_id=self.worker_id, error="connection closed")
            if not stop.is_set():
                await _sleep_unless(stop, self.reconnect_policy.delay(max(failures, 1), self._rng))

    async def _drop_listener(self, conn: asyncpg.Connection) -> None:
        try:
            if not conn.is_closed():
                await conn.remove_listener(CHANNEL, self._on_notify)  # UNLISTEN
        except Exception:
            # Maybe still LISTENing: the session ends (closing it frees its pool slot) rather than going back to
            # a pool that may not reset it. A connection the server cut was handed back by asyncpg already.
            with contextlib.suppress(Exception):
                conn.terminate()
            return
        try:
            # Shielded: a connection that never goes back to the pool would block pool.close() forever.
            await asyncio.shield(asyncio.wait_for(self.pool.release(conn), 5.0))
        except Exception:
            conn.terminate()

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_unless(stop, self.heartbeat_interval_s)
            ids = [job_id for job_id, r in self._running.items() if r.in_handler]
            if not ids or stop.is_set():
                continue
            try:
                async with self.pool.acquire() as conn:
                    held = await store.heartbeat(conn, worker_id=self.worker_id, job_ids=ids, lease_s=self.lease_s)
            except Exception as e:
                log.warning("heartbeat_failed", worker_id=self.worker_id, error=store.short_error(e))
                continue
            for job_id in set(ids) - held:
                running = self._running.get(job_id)
                if running is not None and running.in_handler and not running.lease_lost_logged:
                    running.lease_lost_logged = True
                    log.warning("lease_lost", job_id=job_id, endpoint=running.job.endpoint, worker_id=self.worker_id)

    async def _circuits_loop(self, stop: asyncio.Event) -> None:
        """This worker's circuits not closed, written for the stats of every process (store.publish_circuits): at
        each change, and every CIRCUITS_REFRESH_S while one is not closed; none left when the worker stops."""
        written: dict[str, CircuitState] = {}
        at = 0.0
        try:
            while not stop.is_set():
                states: dict[str, CircuitState] = {name: ep.breaker.state for name, ep in self._endpoints.items()
                                                   if ep.breaker.state is not CircuitState.CLOSED}  # fmt: skip
                if states != written or (states and time.monotonic() - at > store.CIRCUITS_REFRESH_S):
                    try:
                        async with self.pool.acquire() as conn:
                            await store.publish_circuits(conn, self.worker_id, states)
                        written, at = states, time.monotonic()
                    except Exception as e:  # the figures wait for the next turn; deliveries go on
                        log.warning("circuits_not_written", worker_id=self.worker_id, error=store.short_error(e))
                await _sleep_unless(stop, min(self.poll_interval_s, 1.0))
        finally:
            if written:
                with contextlib.suppress(Exception):  # a database away: its rows stop counting after a minute
                    async with self.pool.acquire() as conn:
                        await store.publish_circuits(conn, self.worker_id, {})

    async def _reap_loop(self, stop: asyncio.Event) -> None:
        limits = {name: ep.policy.max_attempts for name, ep in self._endpoints.items()}
        while not stop.is_set():  # first pass at once: a worker starting after a crash reaps its leftovers
            try:
                async with self.pool.acquire() as conn:
                    await store.reap_expired(conn, max_attempts_by_endpoint=limits, on_dead=self.on_dead)
            except Exception as e:
                log.warning("reap_failed", worker_id=self.worker_id, error=store.short_error(e))
            # Jitter so that many workers do not reap in lockstep.
            await _sleep_unless(stop, self.reap_interval_s * (0.8 + 0.4 * self._rng.random()))

    # -- shutdown -------------------------------------------------------------------------------------

    async def _shutdown(self, grace: float) -> None:
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        # Whatever still runs its handler is cancelled and released: back to queued, attempt not counted.
        self._releasing = True
        pending = []
        for r in list(self._running.values()):
            if r.task is None:
                continue
            if r.in_handler:
                r.task.cancel()
            pending.append(r.task)
        if pending:
            await asyncio.wait(pending, timeout=max(grace, 1.0))
        if self._to_release:
            jobs, self._to_release = self._to_release, []
            ctx = {"worker_id": self.worker_id, "count": len(jobs)}

            async def write(conn: asyncpg.Connection) -> bool:
                released = await store.release(conn, jobs)
                log.info("job_released", worker_id=self.worker_id, job_ids=released)
                return True

            if await self._write_with_retry(write, ctx, give_up_after_s=max(grace, 2.0)) is None:
                log.error("release_failed", **ctx)  # their leases expire and the reaper re-queues them
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=max(grace, 5.0))


async def _sleep_unless(stop: asyncio.Event, delay: float) -> None:
    """Sleep `delay` seconds, returning early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    tasks = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
