"""A Microsoft Graph log as a ``sources.base.SourceClient``: a unit is a time window, fetched with the overlap.

One client per (tenant, stream): each Graph source has one stream (``sources.catalog``), so this is also
one per (tenant, source). A tenant's Graph clients share one ``TokenProvider`` (``graph.graph_tokens``)
when the caller passes it. Clients hold no per-call state and are shared by threads.

- ``policy``: the source's retention, ``GraphSettings.window``; the lister's re-list overlap and late sweep
  are off (windows must meet exactly: the overlap happens inside ``fetch_unit``, see ``overlap``).
- ``list_units``: one unit per window, no API call (``graph_units``).
- ``fetch_unit``: a window older than the retention is gone (``ContentUnavailableError``); otherwise the
  overlap algorithm of ``overlap`` around a read of every page.
- ``probe``: one cheap call (``$top=1`` on the last hour) for ``check``; raises the classified error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import requests

from ..auth import TokenProvider
from ..config import CollectionPolicy, HttpPolicy
from ..errors import ConfigError, ContentUnavailableError, MessageFormatError
from ..models import ContentBlob, FetchTask, ListingEntryError, Record, TimeWindow, utc
from ..tenant_config import TenantConfig
from .base import FetchedUnit, UnitHistory
from .catalog import SOURCES
from .entra import DIRECTORY_AUDIT_LOG, SIGN_INS
from .graph import GRAPH_ROOTS, GraphHttp, GraphStats, detail_limiter, graph_root, graph_tokens
from .graph_units import GraphStream, graph_time, parse_unit_id, unit_id, unit_problem, unit_uri
from .message_trace import MESSAGE_TRACE_LOG, attach_details
from .overlap import mark_read, mark_reading, plan_read, select
from .settings import GraphSettings

log = logging.getLogger(__name__)

GRAPH_LOGS: dict[str, GraphStream] = {spec.stream: spec for spec in (SIGN_INS, DIRECTORY_AUDIT_LOG, MESSAGE_TRACE_LOG)}
# Graph's global service: the clouds whose Graph is graph.microsoft.com (message trace exists only there).
_GLOBAL_GRAPH = GRAPH_ROOTS["Enterprise"]


class GraphSource:
    """One tenant's client for one Graph log."""

    def __init__(
        self,
        tenant: TenantConfig,
        spec: GraphStream,
        *,
        settings: GraphSettings,
        http: GraphHttp,
        clock: Callable[[], dt.datetime],
        claim_lease: dt.timedelta,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.tenant = tenant
        self.spec = spec
        self.source = spec.source
        self.retention = SOURCES[spec.source].retention
        self._settings = settings
        self._http = http
        self._clock = clock
        self._claim_lease = claim_lease
        self._details = settings.message_trace_details and spec is MESSAGE_TRACE_LOG
        self._detail_limiter = detail_limiter(sleep)

    @property
    def stats(self) -> GraphStats:
        return self._http.stats

    def sign_in(self) -> None:
        self._http.sign_in()

    def counting(self) -> AbstractContextManager[GraphStats]:
        return self._http.counting()

    def policy(self, base: CollectionPolicy) -> CollectionPolicy:
        zero = dt.timedelta(0)
        return dataclasses.replace(
            base, retention=self.retention, window=self._settings.window, overlap=zero, late_lookback=zero
        )

    def list_units(
        self,
        stream: str,
        window: TimeWindow,
        on_malformed: Callable[[ListingEntryError], None] | None = None,
    ) -> Iterator[ContentBlob]:
        """One unit for ``window`` (the lister plans windows of at most ``GraphSettings.window``)."""
        if stream != self.spec.stream:
            raise ValueError(f"this client reads {self.spec.stream}, not {stream}")
        # The unit is the window its id names, in whole seconds: the next window's id starts at this one's
        # end, so the truncation loses nothing, and the fetcher's check rebuilds exactly these values.
        named = parse_unit_id(stream, unit_id(stream, window))
        yield ContentBlob(
            content_type=stream,
            content_id=unit_id(stream, named),
            content_uri=unit_uri(self._http.root, self.spec, named),
            content_created=named.end,
            content_expiration=named.start + self.retention,
        )

    def unit_problem(self, task: FetchTask) -> str | None:
        return unit_problem(
            task, spec=self.spec, root=self._http.root, tenant_id=self.tenant.tenant_id, retention=self.retention
        )

    def fetch_unit(self, task: FetchTask, history: UnitHistory) -> FetchedUnit:
        try:
            window = parse_unit_id(self.spec.stream, task.content_id)
        except ValueError as err:
            raise MessageFormatError(f"{self.spec.stream} unit: {err}") from err
        what = f"{self.spec.stream} {graph_time(window.start)}..{graph_time(window.end)}"
        now = utc(self._clock())
        earliest = now - self.retention
        if window.start < earliest:
            raise ContentUnavailableError(
                f"{what}: the window starts more than {self.retention.days} days ago, beyond what Microsoft Graph "
                "keeps for this log: its records are gone"
            )
        tenant_id = self.tenant.tenant_id
        overlap = self._settings.overlap
        plan = plan_read(history, tenant_id, self.spec, window, overlap=overlap, now=now, earliest=earliest)
        mark_reading(history, tenant_id, self.spec.stream, window, since=now, until=now + self._claim_lease)
        read: list[Record] = []
        for page in self._http.pages(unit_uri(self._http.root, self.spec, plan.read), what):
            read.extend(page)
        selection = select(read, self.spec, window, plan)
        # Read: the next window may go on now. The details (paced, possibly long) come after, so the reading
        # mark never outlives its lease while this worker is alive (ids shipped later are still this window's).
        mark_read(
            history, tenant_id, self.spec, window, selection.tail, overlap=overlap, now=utc(self._clock()), since=now
        )
        if self._details:
            attach_details(self._http, selection.records, self._detail_limiter, what)
        log.debug(
            "%s: %d records read, %d to ship, %d shipped by the window before",
            what,
            len(read),
            len(selection.records),
            selection.skipped,
            extra={"tenant_id": tenant_id, "content_type": self.spec.stream, "content_id": task.content_id},
        )
        return FetchedUnit(selection.records, skipped=selection.skipped)

    def probe(self) -> None:
        """One request for one record of the last hour: raises what a real read would (permission, licence)."""
        end = utc(self._clock()).replace(microsecond=0)
        window = TimeWindow(end - dt.timedelta(hours=1), end)
        self._http.get_json(unit_uri(self._http.root, self.spec, window, top=1), f"check {self.spec.stream}")


def graph_client(
    tenant: TenantConfig,
    stream: str,
    *,
    settings: GraphSettings,
    session: requests.Session,
    clock: Callable[[], dt.datetime],
    claim_lease: dt.timedelta,
    policy: HttpPolicy | None = None,
    tokens: TokenProvider | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> GraphSource:
    """The client of ``tenant``'s Graph ``stream``. ``claim_lease``: ``CollectionPolicy.claim_lease`` (how long a
    window's "reading" mark holds off the next window). ``policy``: timeouts and retry bounds (the settings'
    ``HttpPolicy``, shared with the audit feed). ``tokens``: the tenant's ``graph_tokens``, to share one token
    cache among its Graph clients (built here when None). ``ConfigError`` for message trace outside the
    global cloud; ``ValueError`` for a stream that is not a Graph log."""
    spec = GRAPH_LOGS.get(stream)
    if spec is None:
        raise ValueError(f"{stream} is not a Microsoft Graph stream (expected one of {', '.join(GRAPH_LOGS)})")
    source = SOURCES[spec.source]
    if source.global_cloud_only and GRAPH_ROOTS[tenant.cloud] != _GLOBAL_GRAPH:
        raise ConfigError(
            "O365_SOURCES",
            tenant.in_own_terms(
                f"{source.title} is served by Microsoft Graph's global service only, not in cloud {tenant.cloud} "
                f"(O365_CLOUD): remove {source.name} from the tenant's sources"
            ),
        )
    http = GraphHttp(
        tenant,
        source=spec.source,
        permission=source.permission.removesuffix(" (Microsoft Graph)"),
        root=graph_root(tenant, settings.url),
        tokens=tokens or graph_tokens(tenant, session=session),
        session=session,
        policy=policy or HttpPolicy(),
        sleep=sleep,
    )
    return GraphSource(tenant, spec, settings=settings, http=http, clock=clock, claim_lease=claim_lease, sleep=sleep)
