"""Exceptions adapters raise to tell the queue how a failed delivery should be treated."""

from __future__ import annotations


class QueueError(Exception):
    """Root of the queue's own exceptions."""


class TransientError(QueueError):
    """The endpoint may accept the job later (timeout, 5xx, 429, connection refused): retry with backoff.

    `retry_after_s` carries a server's hint (HTTP Retry-After); the policy waits at least that long,
    but never longer than its cap.
    """

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(TransientError):
    """The job cannot run yet for a reason of its own, not the endpoint's (what it needs has not come yet): retried
    with backoff like any transient failure, but it says nothing of the endpoint's health, so the circuit breaker does
    not count it. Whoever supplies what it waits for may make it due at once (:func:`cbec_queue.hasten`)."""


class PermanentError(QueueError):
    """Retrying cannot help (the endpoint rejected the message as invalid): dead-letter at once."""


class LeaseLost(QueueError):
    """The job is no longer held by this claim (its lease expired and it was re-queued or re-claimed)."""
