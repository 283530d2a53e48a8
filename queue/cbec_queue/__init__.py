"""Durable retry queue on PostgreSQL (imported as ``cbec_queue``; the folder is ``queue/cbec_queue``).

A transactional outbox: `enqueue` is a plain INSERT in the caller's transaction, `Worker` claims jobs with
FOR UPDATE SKIP LOCKED under leases, retries with capped, jittered backoff and keeps dead letters with
their whole attempt history for `replay`. Jobs with ordering keys go in order per key and endpoint: none is
claimed while an earlier one sharing a key is queued or running. Schema: gateway/sql/010_queue.sql,
060_job_ordering.sql.
"""

from .errors import Deferred, LeaseLost, NotReady, PermanentError, QueueError, TransientError
from .jobs import CHANNEL, Job, JobMoved, JobsHook, JobState, Outcome
from .limits import BreakerSettings, CircuitBreaker, CircuitRegistry, CircuitState, Rate, TokenBucket, circuits
from .policy import Decision, RetryPolicy, classify
from .store import (
    DEFERRED_PREFIX,
    claim,
    claim_per_endpoint,
    dead_letters,
    enqueue,
    get_job,
    hasten,
    heartbeat,
    mark_done,
    mark_done_many,
    next_due_in,
    note_done,
    purge_done,
    reap_expired,
    record_dead,
    record_deferred,
    record_done,
    record_retry,
    release,
    replay,
    stats,
)
from .worker import CONNECT_REFUSED, Handler, Worker

__all__ = [
    "CHANNEL",
    "CONNECT_REFUSED",
    "DEFERRED_PREFIX",
    "BreakerSettings",
    "CircuitBreaker",
    "CircuitRegistry",
    "CircuitState",
    "Decision",
    "Deferred",
    "Handler",
    "Job",
    "JobMoved",
    "JobState",
    "JobsHook",
    "LeaseLost",
    "NotReady",
    "Outcome",
    "PermanentError",
    "QueueError",
    "Rate",
    "RetryPolicy",
    "TokenBucket",
    "TransientError",
    "Worker",
    "circuits",
    "claim",
    "claim_per_endpoint",
    "classify",
    "dead_letters",
    "enqueue",
    "get_job",
    "hasten",
    "heartbeat",
    "mark_done",
    "mark_done_many",
    "next_due_in",
    "note_done",
    "purge_done",
    "reap_expired",
    "record_dead",
    "record_deferred",
    "record_done",
    "record_retry",
    "release",
    "replay",
    "stats",
]
