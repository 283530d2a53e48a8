"""The job record handed to handlers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

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
