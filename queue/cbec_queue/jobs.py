"""The job record handed to handlers."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import asyncpg

JobState = Literal["queued", "running", "done", "dead"]
Outcome = Literal["ok", "transient", "permanent", "lease_expired", "replayed"]

# NOTIFY channel; the payload is the endpoint name.
CHANNEL = "cbec_jobs"


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job. (`id`, `locked_by`, `attempts`) identifies the claim and fences every outcome write."""

    id: int
    endpoint: str
    kind: str
    payload: dict[str, Any]
    dedupe_key: str | None
    priority: int
    # Runs started in this replay round, the current one included (1 on the first run).
    attempts: int
    max_attempts: int | None
    replays: int
    run_after: datetime
    created_at: datetime
    locked_by: str
    lease_until: datetime
    # Keys this job is ordered by within its endpoint (empty: unordered); see queries.CLAIM_PER_ENDPOINT.
    ordering_keys: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Job:
        payload = r["payload"]
        return cls(
            id=r["id"],
            endpoint=r["endpoint"],
            kind=r["kind"],
            payload=json.loads(payload) if isinstance(payload, str) else dict(payload),
            dedupe_key=r["dedupe_key"],
            priority=r["priority"],
            attempts=r["attempts"],
            max_attempts=r["max_attempts"],
            replays=r["replays"],
            run_after=r["run_after"],
            created_at=r["created_at"],
            locked_by=r["locked_by"],
            lease_until=r["lease_until"],
            ordering_keys=tuple(r["ordering_keys"] or ()),
        )


@dataclass(frozen=True, slots=True)
class JobMoved:
    """A job that went to the dead letters (``state`` 'dead') or came back from them ('queued'), as a hook sees it."""

    id: int
    endpoint: str
    kind: str
    payload: dict[str, Any]
    state: JobState
    last_error: str | None = None


#: An application's hook on jobs moving in or out of the dead letters (``Worker(on_dead=...)``,
#: ``replay(on_replayed=...)``): called on the connection and in the transaction that moves them, so that what
#: the application keeps about them commits (or not) with the move itself.
JobsHook = Callable[["asyncpg.Connection", Sequence[JobMoved]], Awaitable[None]]
