"""The API's per-publisher request quota: requests counted per ``PublisherIdentifier`` and clock minute.

[REF] §2: the quota key is ``PublisherIdentifier`` ("This parameter is used for throttling the request
rate"), a baseline of 2,000 requests per minute; "All requests received without this parameter will
share the same quota", so those are counted together under the zero GUID (the PublisherId the AF429
message shows for them). Every activity-feed request counts, refused ones included (a client that
hammers through its throttling keeps its minute full), token requests do not (Entra is another service).
Beyond the limit the answer is the documented 403 AF429. Minutes are those of the simulator's clock;
tests may shorten the window so that a "minute" passes in a second or two.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

from .faults import _THROTTLED_METHOD, ZERO_GUID
from .wire import Response, af_error

# Counts older than this many windows are dropped: a long-running simulator keeps bounded memory.
_KEPT_WINDOWS = 1440
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def quota_key(publisher_id: str | None) -> str:
    """The quota a request draws on: its PublisherIdentifier (case-insensitive), or the shared pool."""
    return (publisher_id or "").strip().lower() or ZERO_GUID


def window_start(now: dt.datetime, window: dt.timedelta) -> dt.datetime:
    """The start of the quota window (a clock minute by default) that ``now`` falls in."""
    return now - (now - _EPOCH) % window


class QuotaCounts:
    """Requests per (quota key, window start); thread-safe. ``max_per_minute()`` is what tests assert on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, dt.datetime]] = Counter()

    def count(self, publisher_id: str | None, now: dt.datetime, window: dt.timedelta) -> int:
        """Count one request; returns the number of requests of its key in its window, this one included."""
        key = (quota_key(publisher_id), window_start(now, window))
        with self._lock:
            self._counts[key] += 1
            seen = self._counts[key]
            if len(self._counts) > _KEPT_WINDOWS * 4:
                starts = sorted({start for _, start in self._counts})
                oldest = set(starts[: len(starts) // 2])
                for stale in [k for k in self._counts if k[1] in oldest]:
                    del self._counts[stale]
            return seen

    def per_minute(self, publisher_id: str | None = None) -> dict[tuple[str, dt.datetime], int]:
        """Counts by (quota key, window start), of one key if given."""
        with self._lock:
            items = dict(self._counts)
        if publisher_id is None:
            return items
        wanted = quota_key(publisher_id)
        return {k: n for k, n in items.items() if k[0] == wanted}

    def max_per_minute(self, publisher_id: str | None = None) -> int:
        """The busiest window's request count (of one key if given; 0 before any request)."""
        return max(self.per_minute(publisher_id).values(), default=0)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


def quota_exceeded(route: str, publisher_id: str | None) -> Response:
    """The service's answer beyond the quota: 403 AF429, the same shape as the injected throttle fault."""
    return af_error("AF429", _THROTTLED_METHOD.get(route, "Unknown"), publisher_id or ZERO_GUID)
