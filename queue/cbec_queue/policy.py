"""Retry policy: a pure function from (attempts so far, error) to a decision. No I/O, no clock.

Backoff is exponential with a cap and jitter (full or equal), so a customs endpoint recovering from an
outage is not hit by synchronised retries from every worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from .errors import PermanentError, TransientError

Jitter = Literal["full", "equal", "none"]
ErrorClass = Literal["transient", "permanent"]


class Random(Protocol):
    """What the policy needs from a random source (`random.Random` fits); injectable for tests."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay_s: float
    dead: bool
    # Stable code: 'transient' | 'unknown_error' (retry), 'permanent' | 'max_attempts' (dead).
    reason: str


def classify(error: BaseException) -> ErrorClass:
    """PermanentError is permanent; everything else (TransientError or an unknown exception) is transient."""
    return "permanent" if isinstance(error, PermanentError) else "transient"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: the n-th retry waits up to min(cap_s, base_s * factor**(n-1)).

    `max_attempts` counts every run of the job, the first one included.
    """

    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 300.0
    max_attempts: int = 10
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("base_s and cap_s must be >= 0")
        # factor >= 1 keeps the upper bound non-decreasing in the attempt number.
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError(f"unknown jitter {self.jitter!r}")

    def upper_bound(self, attempts: int) -> float:
        """Longest delay after `attempts` failed runs (>= 1); non-decreasing, never above cap_s."""
        exponent = max(attempts, 1) - 1
        try:
            raw = self.base_s * self.factor**exponent
        except OverflowError:  # float power overflows long before attempts are unrealistic
            return self.cap_s
        return min(self.cap_s, raw)

    def delay(self, attempts: int, rng: Random) -> float:
        upper = self.upper_bound(attempts)
        if self.jitter == "full":
            return upper * rng.random()
        if self.jitter == "equal":
            return upper / 2 + (upper / 2) * rng.random()
        return upper

    def decide(self, attempts: int, error: BaseException, *, rng: Random) -> Decision:
        """What to do after the run number `attempts` (1-based) failed with `error`."""
        if classify(error) == "permanent":
            return Decision(retry=False, delay_s=0.0, dead=True, reason="permanent")
        if attempts >= self.max_attempts:
            return Decision(retry=False, delay_s=0.0, dead=True, reason="max_attempts")
        delay = self.delay(attempts, rng)
        hint = error.retry_after_s if isinstance(error, TransientError) else None
        if hint is not None and hint > delay:
            delay = min(self.cap_s, hint)
        reason = "transient" if isinstance(error, TransientError) else "unknown_error"
        return Decision(retry=True, delay_s=delay, dead=False, reason=reason)
