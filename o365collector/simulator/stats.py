"""Counters a test reads to assert what the collector did over the wire."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field

from .quota import QuotaCounts


@dataclass(frozen=True, slots=True)
class RequestLog:
    route: str
    method: str
    path: str
    tenant_id: str | None
    publisher_id: str | None
    status: int | None  # None: the connection was dropped
    at: float = 0.0
    """``time.monotonic()`` when the request arrived: tests read a client's pace from it."""


@dataclass
class SimulatorStats:
    """Requests per route, responses per status, faults per kind, tokens issued, fetches per content id.

    ``publisher_ids[(route, value)]`` counts the ``PublisherIdentifier`` sent (``None`` if absent), so a
    test can assert it was sent on every call; ``recent`` keeps the last 10,000 requests.
    """

    requests: Counter[str] = field(default_factory=Counter)
    responses: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    fetches: Counter[str] = field(default_factory=Counter)
    publisher_ids: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    tokens_issued: int = 0
    # Feed requests per PublisherIdentifier per quota window (``quota.max_per_minute()``), counted
    # whether or not the simulator enforces a quota.
    quota: QuotaCounts = field(default_factory=QuotaCounts, repr=False)
    recent: deque[RequestLog] = field(default_factory=lambda: deque(maxlen=10_000), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, entry: RequestLog, *, fault: str | None = None, fetched: str | None = None) -> None:
        with self._lock:
            self.requests[entry.route] += 1
            self.publisher_ids[(entry.route, entry.publisher_id)] += 1
            if entry.status is not None:
                self.responses[entry.status] += 1
            if fault is not None:
                self.faults[fault] += 1
            if fetched is not None:
                self.fetches[fetched] += 1
            self.recent.append(entry)

    def token_issued(self) -> None:
        with self._lock:
            self.tokens_issued += 1

    @property
    def requests_by_route(self) -> Counter[str]:
        """Alias of ``requests``."""
        return self.requests

    @property
    def requests_without_publisher(self) -> int:
        """Feed requests that came without a PublisherIdentifier (``missing_publisher()``)."""
        return self.missing_publisher()

    @property
    def faults_injected(self) -> int:
        """Faults injected, all kinds together."""
        with self._lock:
            return sum(self.faults.values())

    def missing_publisher(self, route: str | None = None) -> int:
        """How many feed requests (of ``route``, or of any feed route) came without a PublisherIdentifier."""
        feed = {"list", "fetch", "subscriptions", "resources"}
        with self._lock:
            return sum(
                n
                for (r, pub), n in self.publisher_ids.items()
                if pub is None and (r == route if route is not None else r in feed)
            )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.responses.clear()
            self.faults.clear()
            self.fetches.clear()
            self.publisher_ids.clear()
            self.tokens_issued = 0
            self.recent.clear()
        self.quota.clear()
