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
    """The job failed for a reason of its own, not the endpoint's: what it needs has not come yet, or what it was sent
    to is one of many behind the endpoint (one seller's URL of the webhook endpoint). Retried with backoff like any
    transient failure, but it says nothing of the endpoint's health, so the circuit breaker does not count it.
    Whoever supplies what it waits for may make it due at once (:func:`cbec_queue.hasten`)."""


class Deferred(QueueError):
    """The job was not tried: what it goes to is paused for a reason the handler knows and the endpoint's breaker does
    not (one seller's URL of the webhook endpoint failing, its own breaker open). Back to queued, due after
    ``delay_s``, the attempt not counted, the endpoint's breaker not touched; the message becomes the job's
    ``last_error``, so an operator sees why it waits."""

    def __init__(self, message: str, *, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = max(0.0, delay_s)


class PermanentError(QueueError):
    """Retrying cannot help (the endpoint rejected the message as invalid): dead-letter at once."""


class LeaseLost(QueueError):
    """The job is no longer held by this claim (its lease expired and it was re-queued or re-claimed)."""
