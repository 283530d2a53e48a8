"""The queue's database operations (asyncpg). Each public function runs one statement unless noted; the claims
and the next-due read run theirs between the planner settings' BEGIN and a COMMIT (see _planned_fetch).

Functions take a connection, not a pool: `enqueue` must run in the caller's transaction, and the
worker decides where the others run.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import traceback
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from . import queries as q
from .errors import LeaseLost
from .jobs import Job, JobMoved, JobsHook, JobState, Outcome
from .limits import CircuitState, circuits, severest

log = structlog.get_logger("cbec_queue")

#: Set by the worker around a handler: the claims (id, attempts, locked_by) the handler marked done in its own
#: transaction (mark_done), so that the worker does not write the outcome a second time.
handler_marks: contextvars.ContextVar[set[tuple[int, int, str]] | None] = contextvars.ContextVar(
    "cbec_queue_handler_marks", default=None
)

# Limits on stored error text: enough for a traceback's useful tail, not a payload dump.
_LAST_ERROR_CHARS = 500
_ERROR_DETAIL_CHARS = 4000


def short_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text[:_LAST_ERROR_CHARS]


def error_detail(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    # Keep the end: the innermost frames and the message matter most.
    return text[-_ERROR_DETAIL_CHARS:]


async def enqueue(
    conn: asyncpg.Connection,
    *,
    endpoint: str,
    kind: str,
    payload: dict[str, Any],
    dedupe_key: str | None = None,
    run_after: datetime | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    ordering_keys: Iterable[str] = (),
) -> int | None:
    """Add a job in the caller's transaction; it exists (and workers are woken) only if that commits.

    Returns the job id, or None when a live (queued or running) job of this endpoint has `dedupe_key`.
    `payload` must be JSON-serialisable (keep it small: ids to look up, not documents). `run_after` must be
    timezone-aware. `priority`: higher runs first. `max_attempts` overrides the worker's policy.
    `ordering_keys`: the job is not claimed while an earlier job of the same endpoint sharing one of these keys
    is queued (due or waiting for a retry) or running; dead and done jobs hold nothing back.
    """
    if isinstance(ordering_keys, str):
        raise TypeError("ordering_keys is a collection of keys, not one string")
    body = json.dumps(payload, ensure_ascii=False)
    keys = sorted(set(ordering_keys))
    row = await conn.fetchrow(
        q.ENQUEUE, endpoint, kind, body, dedupe_key, run_after, priority, max_attempts, keys
    )
    return None if row is None else int(row["id"])


async def claim(
    conn: asyncpg.Connection, *, worker_id: str, lease_s: float, limit: int = 1, endpoint: str | None = None
) -> list[Job]:
    """Claim up to `limit` due jobs (of `endpoint`, or of any endpoint) for `worker_id` under a lease."""
    if endpoint is None:
        rows = await _planned_fetch(conn, q.CLAIM_ANY, limit, worker_id, lease_s)
    else:
        rows = await _planned_fetch(conn, q.CLAIM_PER_ENDPOINT, [endpoint], [limit], worker_id, lease_s)
    return [Job.from_record(r) for r in rows]


async def claim_per_endpoint(
    conn: asyncpg.Connection, *, worker_id: str, lease_s: float, wanted: Mapping[str, int]
) -> list[Job]:
    """Claim up to wanted[endpoint] due jobs for each endpoint, in one statement."""
    endpoints = [e for e, n in wanted.items() if n > 0]
    if not endpoints:
        return []
    counts = [wanted[e] for e in endpoints]
    rows = await _planned_fetch(conn, q.CLAIM_PER_ENDPOINT, endpoints, counts, worker_id, lease_s)
    return [Job.from_record(r) for r in rows]


async def claim_probe(conn: asyncpg.Connection, *, worker_id: str, lease_s: float, endpoint: str) -> list[Job]:
    """Claim the probe of ``endpoint``'s half-open circuit: the least-tried of its first due jobs (q.CLAIM_PROBE)."""
    rows = await _planned_fetch(conn, q.CLAIM_PROBE, endpoint, q.PROBE_WINDOW, worker_id, lease_s)
    return [Job.from_record(r) for r in rows]


async def _planned_fetch(conn: asyncpg.Connection, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run a claim statement with the planner settings of q.BEGIN_PLANNED: in a transaction of its own, or, on a
    connection already in one, for the rest of the caller's transaction (SET LOCAL cannot be undone earlier)."""
    if conn.is_in_transaction():
        await conn.execute(q.BEGIN_PLANNED.removeprefix("BEGIN; "))
        return await conn.fetch(query, *args)
    await conn.execute(q.BEGIN_PLANNED)
    try:
        rows = await conn.fetch(query, *args)
    except BaseException:
        with contextlib.suppress(Exception):  # the connection may be gone; the error that matters is raised
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return rows


async def _finish(
    conn: asyncpg.Connection,
    job: Job,
    *,
    state: str,
    outcome: Outcome,
    delay_s: float = 0.0,
    last_error: str | None = None,
    dead_reason: str | None = None,
    error: str | None = None,
    duration_ms: int | None = None,
) -> bool:
    row = await conn.fetchrow(
        q.FINISH, job.id, job.locked_by, job.attempts, state, float(delay_s),
        last_error, dead_reason, outcome, error, duration_ms,
    )  # fmt: skip
    return row is not None


async def record_done(conn: asyncpg.Connection, job: Job, *, duration_ms: int | None = None) -> bool:
    """Mark the claimed job done. False when this claim no longer holds it (see `holder`)."""
    return await _finish(conn, job, state="done", outcome="ok", duration_ms=duration_ms)


async def record_retry(
    conn: asyncpg.Connection,
    job: Job,
    *,
    delay_s: float,
    error: BaseException,
    outcome: Outcome = "transient",
    duration_ms: int | None = None,
) -> bool:
    """Close the failed attempt and queue the job again after `delay_s`. False when the claim was lost."""
    return await _finish(
        conn, job, state="queued", outcome=outcome, delay_s=delay_s,
        last_error=short_error(error), error=error_detail(error), duration_ms=duration_ms,
    )  # fmt: skip


#: How the last_error of a job put back untried begins (record_deferred): what tells such jobs apart in the queue.
DEFERRED_PREFIX = "Deferred: "


async def record_deferred(conn: asyncpg.Connection, job: Job, *, delay_s: float, reason: str) -> bool:
    """Give the claimed job back untried (Deferred): queued again, due after ``delay_s``, the attempt not counted,
    its last_error DEFERRED_PREFIX and ``reason``. False when the claim was lost."""
    last_error = (DEFERRED_PREFIX + reason)[:_LAST_ERROR_CHARS]
    row = await conn.fetchrow(q.DEFER, job.id, job.locked_by, job.attempts, float(delay_s), last_error)
    return row is not None


async def record_dead(
    conn: asyncpg.Connection,
    job: Job,
    *,
    reason: str,
    error: BaseException,
    outcome: Outcome,
    duration_ms: int | None = None,
    on_dead: JobsHook | None = None,
) -> bool:
    """Close the failed attempt and move the job to the dead letters. False when the claim was lost.

    ``on_dead`` runs in the same transaction once the job is dead (see :func:`_follow`)."""

    async def finish() -> bool:
        return await _finish(
            conn, job, state="dead", outcome=outcome, dead_reason=reason,
            last_error=short_error(error), error=error_detail(error), duration_ms=duration_ms,
        )  # fmt: skip

    if on_dead is None:
        return await finish()
    async with conn.transaction():
        if not await finish():
            return False
        moved = JobMoved(job.id, job.endpoint, job.kind, job.payload, "dead", short_error(error))
        await _follow(conn, on_dead, [moved])
    return True


async def _follow(conn: asyncpg.Connection, hook: JobsHook | None, moved: Sequence[JobMoved]) -> None:
    """Run an application's hook on jobs moved in or out of the dead letters, in the caller's transaction and in a
    savepoint of its own. A hook that fails for want of the database (or in a deadlock) fails the whole move, which
    is then tried again as any write is; a hook that fails otherwise (a bug) is logged and undone alone: the
    queue's own progress never waits on application code."""
    if hook is None or not moved:
        return
    try:
        async with conn.transaction():
            await hook(conn, moved)
    except (
        asyncpg.TransactionRollbackError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError
    ):  # fmt: skip
        raise
    except Exception:
        log.exception("jobs_hook_failed", job_ids=[m.id for m in moved], state=moved[0].state)


async def mark_done(conn: asyncpg.Connection, job: Job, *, duration_ms: int | None = None) -> None:
    """Mark the job done inside the handler's own transaction, next to the handler's writes.

    The write is fenced by the claim, so when the lease was lost (and the job may run elsewhere) this raises
    LeaseLost and the handler's transaction must roll back: its effect then happens exactly once.
    """
    if not await record_done(conn, job, duration_ms=duration_ms):
        raise LeaseLost(f"job {job.id} attempt {job.attempts} is no longer held by {job.locked_by}")
    note_done(job)


async def mark_done_many(conn: asyncpg.Connection, jobs: Sequence[Job]) -> set[int]:
    """`mark_done` for many jobs in one statement, in the caller's transaction; returns the ids whose claim
    still held (and are now done). Raises nothing for the others: the caller applies its writes for the jobs
    returned only and answers the others with LeaseLost, so every job's effect still happens exactly once.

    It may run in another task than the handlers (a batching writer): each handler then calls `note_done`
    itself once the transaction committed.
    """
    claims = sorted(jobs, key=lambda j: j.id)  # one locking order for every caller
    if not claims:
        return set()
    rows = await conn.fetch(
        q.FINISH_DONE_MANY, [j.id for j in claims], [j.attempts for j in claims], [j.locked_by for j in claims]
    )
    return {int(r["id"]) for r in rows}


def note_done(job: Job) -> None:
    """Tell the worker running this handler (the calling task) that the handler's own transaction marked the
    job done, so that it does not write the outcome again."""
    marks = handler_marks.get()
    if marks is not None:
        marks.add((job.id, job.attempts, job.locked_by))


async def holder(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record | None:
    """state, locked_by and attempts of a job now."""
    return await conn.fetchrow(q.JOB_STATE, job_id)


async def heartbeat(conn: asyncpg.Connection, *, worker_id: str, job_ids: Iterable[int], lease_s: float) -> set[int]:
    """Extend the leases of jobs `worker_id` still runs; returns the ids it still holds."""
    ids = list(job_ids)
    if not ids:
        return set()
    rows = await conn.fetch(q.HEARTBEAT, ids, worker_id, lease_s)
    return {int(r["id"]) for r in rows}


async def release(conn: asyncpg.Connection, jobs: Sequence[Job]) -> list[int]:
    """Put claimed jobs back to queued without counting the attempt (graceful shutdown).

    All jobs must belong to one worker. Returns the ids that were released.
    """
    if not jobs:
        return []
    worker_ids = {j.locked_by for j in jobs}
    if len(worker_ids) != 1:
        raise ValueError("release() takes the jobs of one worker")
    rows = await conn.fetch(q.RELEASE, [j.id for j in jobs], [j.attempts for j in jobs], worker_ids.pop())
    return [int(r["id"]) for r in rows]


async def reap_expired(
    conn: asyncpg.Connection,
    *,
    max_attempts_by_endpoint: Mapping[str, int] | None = None,
    default_max_attempts: int | None = None,
    limit: int = 1000,
    on_dead: JobsHook | None = None,
) -> list[dict[str, Any]]:
    """Re-queue jobs whose lease ran out (recording a lease_expired attempt), or dead-letter those that
    used all their attempts (job's max_attempts, else the map, else the default; None = never). ``on_dead`` runs
    in the same transaction for the jobs dead-lettered (see :func:`_follow`).

    Returns one dict per reaped job: id, endpoint, state (queued|dead), attempts, locked_by (the lost owner).
    """
    limits = dict(max_attempts_by_endpoint or {})
    args = (list(limits), list(limits.values()), default_max_attempts, limit)
    if on_dead is None:
        rows = await conn.fetch(q.REAP, *args)
    else:
        async with conn.transaction():
            rows = await conn.fetch(q.REAP, *args)
            await _follow(conn, on_dead, [_moved(r) for r in rows if r["state"] == "dead"])
    reaped = [
        {"id": r["id"], "endpoint": r["endpoint"], "state": r["state"], "attempts": r["attempts"],
         "locked_by": r["locked_by"]}
        for r in rows
    ]  # fmt: skip
    for item in reaped:
        log.warning("lease_expired", job_id=item["id"], endpoint=item["endpoint"], attempts=item["attempts"],
                    lost_worker=item["locked_by"], new_state=item["state"])  # fmt: skip
    return reaped


async def replay(
    conn: asyncpg.Connection,
    *,
    job_ids: Sequence[int] | None = None,
    endpoint: str | None = None,
    kind: str | None = None,
    all: bool = False,
    note: str | None = None,
    on_replayed: JobsHook | None = None,
) -> int:
    """Move dead jobs matching every given filter back to queued with attempts reset; returns the count.

    History is kept and a 'replayed' marker (with `note`) opens a new round. Without any filter `all=True`
    is required, so an empty call cannot replay the whole dead-letter queue by accident. ``on_replayed`` runs in
    the same transaction for the jobs replayed (see :func:`_follow`).
    """
    if job_ids is None and endpoint is None and kind is None and not all:
        raise ValueError("replay() needs job_ids, endpoint, kind or all=True")
    ids = None if job_ids is None else [int(i) for i in job_ids]
    args = (ids, endpoint, kind, note or "replayed")
    if on_replayed is None:
        rows = await conn.fetch(q.REPLAY, *args)
    else:
        async with conn.transaction():
            rows = await conn.fetch(q.REPLAY, *args)
            await _follow(conn, on_replayed, [_moved(r, "queued") for r in rows])
    if rows:
        log.info("jobs_replayed", count=len(rows), endpoint=endpoint, kind=kind)
    return len(rows)


async def hasten(conn: asyncpg.Connection, job_ids: Sequence[int]) -> list[int]:
    """Queued jobs waiting for their next try (a retry's backoff) become due now: what they waited for has come
    (see NotReady). Their workers are woken when the caller's transaction commits. Returns the ids hastened; jobs
    running, done, dead or already due are left as they are."""
    if not job_ids:
        return []
    return [r["id"] for r in await conn.fetch(q.HASTEN, [int(i) for i in job_ids])]


def _moved(r: asyncpg.Record, state: JobState | None = None) -> JobMoved:
    payload = r["payload"]
    return JobMoved(
        id=r["id"], endpoint=r["endpoint"], kind=r["kind"],
        payload=json.loads(payload) if isinstance(payload, str) else dict(payload),
        state=state or r["state"], last_error=r.get("last_error"),
    )  # fmt: skip


async def next_due_in(conn: asyncpg.Connection, endpoints: Sequence[str]) -> float | None:
    """Seconds until the next queued job of `endpoints` is due (<= 0: due now; None: nothing queued). Jobs held
    back by an earlier live job of their ordering keys do not count: their predecessor's end wakes the worker."""
    rows = await _planned_fetch(conn, q.NEXT_DUE, list(endpoints))
    value = rows[0][0] if rows else None
    return None if value is None else float(value)


async def stats(conn: asyncpg.Connection, *, endpoints: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Per endpoint: jobs by state (queued, due, running, done, dead), oldest queued age (s) and the circuit state
    known locally, by endpoint name. ``done`` counts the delivered jobs still kept (``purge_done`` deletes old
    ones), from counts kept by triggers: the cost follows the backlog, not the history. Endpoints named in
    ``endpoints`` (the configured ones) and those a local worker guards are listed even with no job."""
    found = {r["endpoint"]: dict(r) for r in await conn.fetch(q.STATS)}
    local = circuits.states()
    # the other processes' workers (cbec worker): their circuits not closed, as they last wrote them (this process's
    # own rows lag their breakers by up to a second: read live instead)
    shared = {r["endpoint"]: [CircuitState(x) for x in r["states"]]
              for r in await conn.fetch(q.SHARED_CIRCUITS, CIRCUITS_FRESH_S, circuits.worker_ids())}  # fmt: skip
    for endpoint in {*endpoints, *local, *shared} - set(found):
        found[endpoint] = {"endpoint": endpoint, "queued": 0, "due": 0, "running": 0, "done": 0, "dead": 0,
                           "oldest_queued_age_s": None}  # fmt: skip
    out: list[dict[str, Any]] = []
    for endpoint in sorted(found):
        known = [*([local[endpoint]] if endpoint in local else []), *shared.get(endpoint, ())]
        state = severest(known) if known else None
        out.append({**found[endpoint], "circuit": None if state is None else state.value})
    return out


#: How long a worker's circuit row is read after it last wrote it (it writes every CIRCUITS_REFRESH_S while the circuit
#: is not closed): a killed worker's rows stop counting.
CIRCUITS_FRESH_S = 60.0
CIRCUITS_REFRESH_S = 15.0


async def publish_circuits(conn: asyncpg.Connection, worker_id: str, states: Mapping[str, CircuitState]) -> None:
    """A worker's circuits that are not closed (``states``; none: all closed), for stats in every process."""
    open_ = {e: s for e, s in states.items() if s is not CircuitState.CLOSED}
    await conn.execute(q.PUBLISH_CIRCUITS, worker_id, list(open_), [s.value for s in open_.values()])


def _job_dict(r: asyncpg.Record) -> dict[str, Any]:
    item = dict(r)
    item["payload"] = json.loads(item["payload"])
    item["history"] = []
    return item


async def _with_history(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    items = [_job_dict(r) for r in rows]
    if items:
        by_id = {item["id"]: item for item in items}
        for h in await conn.fetch(q.HISTORY, list(by_id)):
            entry = dict(h)
            by_id[entry.pop("job_id")]["history"].append(entry)
    return items


async def dead_letters(
    conn: asyncpg.Connection, *, endpoint: str | None = None, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    """Dead jobs, newest first, each with `history`: every attempt of every round (two statements)."""
    rows = await conn.fetch(q.DEAD_LETTERS, endpoint, limit, offset)
    return await _with_history(conn, rows)


async def get_job(conn: asyncpg.Connection, job_id: int) -> dict[str, Any] | None:
    """One job with its history, or None."""
    row = await conn.fetchrow(q.GET_JOB, job_id)
    if row is None:
        return None
    return (await _with_history(conn, [row]))[0]


async def purge_done(conn: asyncpg.Connection, *, older_than_s: float, limit: int | None = None) -> int:
    """Delete done jobs finished more than `older_than_s` ago, with their history, oldest first and at most
    `limit` of them (None: all); returns the count."""
    return int(await conn.fetchval(q.PURGE_DONE, float(older_than_s), limit))
