"""The contract between the backbone and a source: plan windows, list units of work, fetch a unit.

The lister plans windows on a stream's checkpoint (``policy`` bounds them: retention, widest window,
re-list overlap), asks ``list_units`` what to fetch in each, enqueues one message per unit and advances
the checkpoint. The fetcher claims a unit in the ledger by its id, calls ``fetch_unit`` and ships the
records, then marks the unit done. So a unit is shipped at most once per ledger row, whichever source
it comes from.

- The audit feed: a unit is a content blob from a listing; its id is the contentId.
- Microsoft Graph logs: a unit is a time window (``list_units`` makes no API call). A record has a
  stable ``id``; a window re-reads the end of the one before it (late records), and skips the ids that
  window shipped there, which it left in the ``UnitHistory``.

A source's records are parsed JSON objects as served. Errors follow ``o365collector.errors``:
retryable (the message is delivered again or deferred), permanent, ``ContentUnavailableError`` (the
source no longer has the unit: recorded as lost), ``MalformedContentError`` (never shippable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..models import ContentBlob, FetchTask, ListingEntryError, Record, TimeWindow

if TYPE_CHECKING:
    from ..config import CollectionPolicy
    from ..filtering import RecordFilter
    from ..tenant_config import TenantConfig


class ApiCounter(Protocol):
    """What the lister reads from ``counting()``: requests answered with throttling in this thread."""

    throttled: int


class UnitHistory(Protocol):
    """A small keyed store next to the ledger, for what a source carries from one unit to the next
    (a Graph window leaves the ids it shipped near its end for the window after it). Rows are per
    tenant; ``key`` is the source's own (keep it under 200 characters); values are Table Storage
    properties (str, int, float, bool, datetime, bytes ≤ 64 KiB each, ≤ 1 MiB per row)."""

    def get(self, tenant_id: str, key: str) -> Mapping[str, Any] | None: ...

    def put(self, tenant_id: str, key: str, fields: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class FetchedUnit:
    """What ``fetch_unit`` returns: the records to ship."""

    records: Sequence[Record]
    skipped: int = 0
    """Records read but not shipped because an earlier unit had shipped them (the overlap)."""
    filterable: bool = False
    """The ``O365_FILTER_*`` settings apply (they match audit records' Operation, Workload, RecordType; a
    record of another shape would match no include list and be dropped, so they apply to the audit feed only)."""

    def to_ship(self, record_filter: RecordFilter) -> tuple[Sequence[Record], int]:
        """The records to ship and how many the filter dropped."""
        return record_filter.apply(self.records) if self.filterable else (self.records, 0)

    def settle(self) -> None:
        """Wait for a lazy validation of ``records`` (the audit feed's blobs) and raise what it found."""
        settle = getattr(self.records, "settle", None)
        if callable(settle):
            settle()


class SourceClient(Protocol):
    """One tenant's client for one source. Clients are shared by threads and hold no per-call state."""

    tenant: TenantConfig
    source: str
    """The source's name in ``sources.catalog`` (sign-in failures are remembered per tenant and source)."""

    def sign_in(self) -> None:
        """Get (or reuse) a token now, so a credential problem shows before any listing."""

    def counting(self) -> AbstractContextManager[ApiCounter]:
        """Count this thread's requests (throttled ones) while the context is open."""

    def policy(self, base: CollectionPolicy) -> CollectionPolicy:
        """``base`` with this source's bounds (retention, widest window, re-list overlap, late sweep)."""

    def list_units(
        self,
        stream: str,
        window: TimeWindow,
        on_malformed: Callable[[ListingEntryError], None] | None = None,
    ) -> Iterator[ContentBlob]:
        """The units of work of ``stream`` whose time lies in ``window``."""

    def unit_problem(self, task: FetchTask) -> str | None:
        """Why ``task`` is not a unit this client would have listed for its tenant (None if it is).

        Checked before anything is claimed: a forged or misrouted message must not have another URL
        fetched, nor mark a real unit done with an empty answer."""

    def fetch_unit(self, task: FetchTask, history: UnitHistory) -> FetchedUnit:
        """The records of one unit."""
