"""Request counters of an API client: per client (the run summary) and per thread (the lister reads the
throttled calls of the stream a thread lists, while several streams of a tenant share one client)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Stats = TypeVar("Stats")


class RequestCounts(Generic[Stats]):
    """``total`` counts every call of the client; ``counting()`` also counts this thread's own share."""

    def __init__(self, factory: Callable[[], Stats]) -> None:
        self._factory = factory
        self.total = factory()
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextmanager
    def counting(self) -> Iterator[Stats]:
        mine = self._factory()
        self._local.stats = mine
        try:
            yield mine
        finally:
            self._local.stats = None

    def count(self, field: str) -> None:
        with self._lock:
            setattr(self.total, field, getattr(self.total, field) + 1)
        mine = getattr(self._local, "stats", None)
        if mine is not None:
            setattr(mine, field, getattr(mine, field) + 1)
