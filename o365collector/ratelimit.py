"""A thread-safe pacing limiter: at most ``rate`` acquisitions per second on average, small bursts allowed.

Each tenant's API client has its own, so one tenant's pace never slows another's. It smooths one
process's calls; the budget shared by several instances is ``o365collector.pacing``, taken through
the ``Pacer`` protocol so that the API client needs no storage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Pacer(Protocol):
    """Something to take one call's token from before each API call; returns the seconds waited."""

    def acquire(self) -> float: ...


class RateLimiter:
    def __init__(
        self,
        rate_per_second: float,
        *,
        burst: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_second
        self._capacity = burst if burst is not None else max(1.0, rate_per_second)  # one second's worth
        self._tokens = self._capacity
        self._sleep = sleep
        self._monotonic = monotonic
        self._updated = monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, waiting if none is left; returns the seconds waited."""
        with self._lock:
            now = self._monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            self._tokens -= 1.0
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait
