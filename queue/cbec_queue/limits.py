"""Per-endpoint protection as pure state machines with an injectable clock: circuit breaker, token bucket.

Both are local to one worker process: with W workers an endpoint sees at most W times the configured rate (a token
bucket can be kept in memory that processes share instead: TokenBucket's ``cells``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, MutableSequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

Clock = Callable[[], float]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.cooldown_s < 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s >= 0")


class CircuitBreaker:
    """closed --N consecutive failures--> open --cooldown--> half_open (one probe) --ok--> closed / --fail--> open.

    In the open state results of calls that started earlier are ignored: only the probe decides.
    """

    def __init__(self, settings: BreakerSettings | None = None, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May one call start now? In half_open this hands out the single probe."""
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.OPEN:
            if self._clock() - self._opened_at < self.settings.cooldown_s:
                return False
            self._state = CircuitState.HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def release_probe(self) -> None:
        """The probe handed out by allow() was not used (nothing to send): let the next allow() have it."""
        if self._state is CircuitState.HALF_OPEN:
            self._probe_in_flight = False

    def retry_in(self) -> float:
        """Seconds until allow() can return True again (0 when it can now or a probe is out)."""
        if self._state is CircuitState.OPEN:
            return max(0.0, self._opened_at + self.settings.cooldown_s - self._clock())
        return 0.0

    def record_success(self) -> None:
        if self._state is CircuitState.OPEN:
            return
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        if self._state is CircuitState.OPEN:
            return
        if self._state is CircuitState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self.settings.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._probe_in_flight = False


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_s` calls a second on average, bursts of up to `burst` calls."""

    per_s: float
    burst: float = 1.0

    def __post_init__(self) -> None:
        if self.per_s <= 0 or self.burst < 1:
            raise ValueError("per_s must be > 0 and burst >= 1")


class TokenBucket:
    """Token bucket holding at most `burst` tokens, refilled at `per_s` tokens a second; starts full.

    Its state is two numbers, the tokens and the time of the last refill: in a list of its own by default, or at
    `offset` in `cells` shared with other processes (a ``multiprocessing`` RawArray of doubles, set to the burst and
    the clock's time by whoever made it) under their `lock`, so that several processes draw on one bucket. The
    clock must then be one they share (time.monotonic is the system's)."""

    def __init__(
        self,
        rate: Rate,
        *,
        clock: Clock = time.monotonic,
        cells: MutableSequence[float] | None = None,
        offset: int = 0,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.rate = rate
        self._clock = clock
        if cells is None:
            cells, offset = [float(rate.burst), clock()], 0
        self._cells = cells
        self._offset = offset  # of the tokens; the time of the last refill follows
        self._lock: AbstractContextManager[Any] = lock if lock is not None else contextlib.nullcontext()

    def _refill(self) -> float:
        """The tokens now (under the lock)."""
        now, cells, i = self._clock(), self._cells, self._offset
        # A clock that goes backwards must not mint tokens.
        elapsed = max(0.0, now - cells[i + 1])
        tokens = min(float(self.rate.burst), cells[i] + elapsed * self.rate.per_s)
        cells[i], cells[i + 1] = tokens, now
        return tokens

    @property
    def tokens(self) -> float:
        with self._lock:
            return self._refill()

    def try_take(self, n: int = 1) -> bool:
        with self._lock:
            tokens = self._refill()
            if tokens + 1e-9 < n:
                return False
            self._cells[self._offset] = max(0.0, tokens - n)
            return True

    def wait_time(self, n: int = 1) -> float:
        """Seconds until `n` tokens are there (inf if n exceeds the burst)."""
        with self._lock:
            tokens = self._refill()
        if n > self.rate.burst:
            return float("inf")
        return max(0.0, (n - tokens) / self.rate.per_s)


_SEVERITY = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def severest(states: Iterable[CircuitState]) -> CircuitState:
    """The state to report of several breakers guarding one endpoint: open, else half open, else closed."""
    return max(states, key=_SEVERITY.__getitem__, default=CircuitState.CLOSED)


class CircuitRegistry:
    """Breakers of the workers running in this process, for stats and the operators' page.

    Several local workers may guard one endpoint; the most severe state is reported.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def register(self, worker_id: str, endpoint: str, breaker: CircuitBreaker) -> None:
        with self._lock:
            self._breakers[(worker_id, endpoint)] = breaker

    def unregister_worker(self, worker_id: str) -> None:
        with self._lock:
            for key in [k for k in self._breakers if k[0] == worker_id]:
                del self._breakers[key]

    def worker_ids(self) -> list[str]:
        with self._lock:
            return sorted({worker_id for worker_id, _ in self._breakers})

    def states(self) -> dict[str, CircuitState]:
        with self._lock:
            items = list(self._breakers.items())
        by_endpoint: dict[str, list[CircuitState]] = {}
        for (_, endpoint), breaker in items:
            by_endpoint.setdefault(endpoint, []).append(breaker.state)
        return {endpoint: severest(states) for endpoint, states in by_endpoint.items()}


circuits = CircuitRegistry()
