"""Per-publisher API pacing shared by every instance on one storage account (``O365_SHARED_PACING``).

The API's quota is per ``PublisherIdentifier`` per minute (2,000 baseline), not per process: N
instances each pacing themselves at ``O365_MAX_REQUESTS_PER_MINUTE`` would together go N times over
it. So the budget lives in one Table Storage row per publisher (table ``O365_PACING_TABLE``, by default
the status table: PartitionKey ``pacing``, RowKey ``pacing|<publisher id>``; no other reader scans
that RowKey range), holding the current window (a clock minute) and the calls already handed out in it.

An instance claims a *slice* of ``O365_PACING_SLICE`` calls with one ETag-conditional update of that
row, then spends it locally; the row is read again only after another instance changed it (a 412). A
claim costs one storage transaction uncontended, and each collision a failed update and a read more:
1/slice per API call alone, about 3/slice with three instances claiming at once (0.6 per call measured
at slice 5 in tests/test_shared_pacing.py; ``PacingStats.transactions_per_call``). When the window's
budget is handed out, the caller sleeps until the next window (at most one window, never a busy loop;
a little random delay spreads the wake-ups). A slice is valid only in its window: what an idle
instance has not spent is lost at the boundary, at most one slice per instance per minute. Minutes are
this machine's clock's; the margin between the default budget (1,500) and the quota (2,000) absorbs
clock skew between instances and the service.

If the table cannot be reached, pacing degrades to this instance alone (WARNING, at most once a
window) rather than stopping collection: the per-process ``RateLimiter`` still paces, and the
client retries AF429 anyway.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode

if TYPE_CHECKING:
    from .config import Settings
    from .storage import StorageClients

log = logging.getLogger(__name__)

PACING_PARTITION = "pacing"
ROW_PREFIX = "pacing|"
# Conflicts in a row before this instance gives up sharing for one slice: each conflict means another
# instance claimed, so the fleet progresses; this only bounds one caller's storage calls.
MAX_CONFLICTS = 20


@dataclass
class PacingStats:
    """What pacing cost: API calls paced, slices claimed, storage transactions, conflicts, waits."""

    calls: int = 0
    claims: int = 0
    transactions: int = 0
    conflicts: int = 0
    waits: int = 0
    waited_seconds: float = 0.0
    degraded: int = 0

    @property
    def transactions_per_call(self) -> float:
        return self.transactions / self.calls if self.calls else 0.0


def shared_pacing(settings: Settings, storage: StorageClients) -> SharedPacing | None:
    """The deployment's shared pacing, or None when ``O365_SHARED_PACING`` is off."""
    config = settings.pacing
    if not config.enabled:
        return None
    return SharedPacing(
        storage.table(config.table or settings.status_table),
        per_minute=settings.http.max_requests_per_minute,
        slice_size=config.slice_size,
        window_seconds=config.window_seconds,
    )


def fleet_pacing_stats(pacings: Iterable[SharedPacing | None]) -> PacingStats:
    """Several instances' pacing costs added up (``Collector.pacing`` of each; None counts nothing).

    For benchmarks: ``transactions_per_call`` of the sum is the fleet's storage cost per API call. To
    see the same cost on the wire, give the pacing its own ``O365_PACING_TABLE`` and count that table's
    REST calls (``bench.harness.StorageCounter`` groups transactions by table).
    """
    total = PacingStats()
    for pacing in pacings:
        if pacing is None:
            continue
        with pacing._stats_lock:
            for name in ("calls", "claims", "transactions", "conflicts", "waits", "waited_seconds", "degraded"):
                setattr(total, name, getattr(total, name) + getattr(pacing.stats, name))
    return total


class SharedPacing:
    """The pacing rows of one table; ``pacer(publisher_id)`` is what an API client takes a token from.

    ``per_minute`` is the fleet's budget (``O365_MAX_REQUESTS_PER_MINUTE``). ``window_seconds`` is a
    minute except in tests, which shorten it (the budget scales with it). ``clock`` is epoch seconds.
    """

    def __init__(
        self,
        table: TableClient,
        *,
        per_minute: float,
        slice_size: int,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.table = table
        self.window_seconds = window_seconds
        self.budget = max(1, int(per_minute * window_seconds / 60.0))
        self.slice_size = max(1, min(slice_size, self.budget))
        self.clock = clock
        self.sleep = sleep
        self.stats = PacingStats()
        self._stats_lock = threading.Lock()
        self._pacers: dict[str, PublisherPacer] = {}
        self._lock = threading.Lock()

    def pacer(self, publisher_id: str) -> PublisherPacer:
        """The pacer of one publisher: tenants that share a PublisherIdentifier share its quota."""
        key = publisher_id.strip().lower()
        with self._lock:
            pacer = self._pacers.get(key)
            if pacer is None:
                pacer = self._pacers[key] = PublisherPacer(self, key)
            return pacer

    def count(self, **deltas: float) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)


class PublisherPacer:
    """One publisher's slice in this process; ``acquire()`` before each API call."""

    def __init__(self, shared: SharedPacing, publisher_id: str) -> None:
        self._shared = shared
        self._publisher = publisher_id
        self._row_key = ROW_PREFIX + publisher_id
        self._lock = threading.Lock()
        self._window = -1
        self._left = 0
        # The row as this instance last wrote or read it: the next claim updates it under this ETag
        # without reading first, and reads only when another instance changed it meanwhile.
        self._row: tuple[int, int, str] | None = None  # (window, used, etag)
        self._warned_window = -1

    def acquire(self) -> float:
        """Take one call from this instance's slice, claiming a new one (or waiting for the next window)
        when it is spent; returns the seconds waited."""
        shared = self._shared
        waited = 0.0
        with self._lock:
            while True:
                now = shared.clock()
                window = int(now // shared.window_seconds)
                if self._left > 0 and self._window >= window:
                    self._left -= 1
                    shared.count(calls=1)
                    return waited
                claimed = self._claim(window)
                if claimed is not None:
                    self._window, self._left = claimed
                    continue
                # The window's budget is handed out: sleep to its end, plus a little at random so that the
                # instances waiting do not all claim at the same instant (each collision costs two transactions).
                delay = (window + 1) * shared.window_seconds - now + shared.window_seconds * random.uniform(0.001, 0.02)
                shared.count(waits=1, waited_seconds=delay)
                shared.sleep(delay)
                waited += delay

    def _claim(self, window: int) -> tuple[int, int] | None:
        """(window, calls) granted, or None when this window's budget is gone."""
        shared = self._shared
        try:
            for _attempt in range(MAX_CONFLICTS):
                if self._row is None:
                    self._row = self._read()
                    if self._row is None:
                        granted = self._create(window)
                        if granted is not None:
                            return granted
                        continue  # created by another instance just now: read it
                row_window, used, etag = self._row
                if row_window < window:
                    row_window, used = window, 0  # a new minute: the budget is whole again
                take = min(shared.slice_size, shared.budget - used)
                if take <= 0:
                    return None
                try:
                    meta = shared.table.update_entity(
                        self._entity(row_window, used + take),
                        mode=UpdateMode.REPLACE,
                        etag=etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                except (ResourceModifiedError, ResourceNotFoundError):
                    # Another instance claimed (or the row was removed): read it and try again.
                    shared.count(transactions=1, conflicts=1)
                    self._row = None
                    shared.sleep(random.uniform(0.0, 0.005 * (_attempt + 1)))  # de-synchronise the contenders
                    continue
                shared.count(transactions=1, claims=1)
                self._row = (row_window, used + take, str(meta.get("etag", "")))
                return row_window, take
            raise _ContendedError(f"{MAX_CONFLICTS} conflicting claims in a row")
        except (_ContendedError, HttpResponseError, AzureError) as err:
            self._row = None
            return self._degraded(window, err)

    def _read(self) -> tuple[int, int, str] | None:
        shared = self._shared
        shared.count(transactions=1)
        try:
            entity = shared.table.get_entity(PACING_PARTITION, self._row_key)
        except ResourceNotFoundError:
            return None
        try:
            row_window, used = int(entity.get("Window", -1)), int(entity.get("Used", 0))
        except (TypeError, ValueError):
            row_window, used = -1, 0  # a row not written by us: overwrite it at the next minute
        return row_window, used, str(entity.metadata.get("etag", ""))

    def _create(self, window: int) -> tuple[int, int] | None:
        shared = self._shared
        take = shared.slice_size
        for _attempt in range(2):
            shared.count(transactions=1)
            try:
                meta = shared.table.create_entity(self._entity(window, take))
            except ResourceExistsError:
                return None
            except ResourceNotFoundError:
                # A custom O365_PACING_TABLE that nobody created yet: create it once and try again.
                shared.count(transactions=1)
                try:
                    shared.table.create_table()
                except ResourceExistsError:
                    pass
                continue
            shared.count(claims=1)
            self._row = (window, take, str(meta.get("etag", "")))
            return window, take
        raise _ContendedError("the pacing table could not be created")

    def _entity(self, window: int, used: int) -> dict[str, Any]:
        return {"PartitionKey": PACING_PARTITION, "RowKey": self._row_key, "Window": window, "Used": used}

    def _degraded(self, window: int, err: BaseException) -> tuple[int, int]:
        """Pace this instance alone for one slice; warn once a window."""
        shared = self._shared
        shared.count(degraded=1)
        if self._warned_window != window:
            self._warned_window = window
            status = getattr(err, "status_code", None)
            log.warning(
                "shared API pacing unavailable (%s%s) for publisher %s: pacing this instance alone until the "
                "pacing table (O365_PACING_TABLE) answers again",
                type(err).__name__,
                f", HTTP {status}" if status else "",
                self._publisher,
            )
        return window, shared.slice_size


class _ContendedError(Exception):
    """Claims kept conflicting, or the table could not be created: pace locally for one slice."""
