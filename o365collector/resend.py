"""Send again what the ledger has as shipped: ``run --resend --since T [--until T] [--sink NAME] [--tenant ID]``.

For a sink that is new, or was rebuilt and lost its data: every blob the ledger has as ``done``, created
in ``[since, until)``, is fetched again from the source and sent to the chosen sink (or every sink).

The command line process does the work itself, one blob after another, instead of putting messages
on the content queue. Queue messages would reach the fetcher, whose ledger claim skips a ``done``
blob (that skip is what makes live delivery exactly once); a resend flag would have to bypass it, be
signed and be trusted by every worker, and the resent blobs would wait behind (and delay) live
traffic. Here the ledger is only read: a resend never changes what live collection believes is shipped.

Content past the source's 7-day retention cannot be fetched: it is counted and reported as no longer
at the source, and not attempted. The records sent are the ones the live path sent: the same
``O365_FILTER_*`` settings apply, and each sink sees the same ``BlobContext`` (a file or blob sink
writes the same names again).

Exit code: 0 when every blob in range was sent again; 1 when any was not (failed, or no longer at the
source: the sink then lacks data the ledger says was shipped, which an operator should know); 2 for
a bad command line or settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from azure.core.exceptions import ResourceNotFoundError

from .checkpoints import NoMemos
from .config import Settings
from .errors import CollectorError, ConfigError, ContentUnavailableError
from .models import BlobContext, FetchTask, utc
from .redaction import describe, printable, redact
from .runtime import Collector
from .sinks.base import Sink, SinkSettings
from .sources.catalog import source_of
from .tenant_config import TenantConfig
from .windows import earliest_listable

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 5.0
# The flags that only mean something with --resend: given without it, the operator meant a resend.
RESEND_ONLY_FLAGS = ("since", "until", "sink", "tenant", "dry_run")


@dataclass(frozen=True, slots=True)
class ResendRequest:
    since: dt.datetime
    until: dt.datetime | None = None
    """None: the collector's clock when the resend starts."""
    sink: str | None = None
    """One of ``SINK_TYPE``'s sinks; None: every sink a tenant ships to."""
    tenants: tuple[str, ...] = ()
    """Empty: every configured tenant."""
    dry_run: bool = False


@dataclass
class ResendResult:
    since: dt.datetime
    until: dt.datetime
    sinks: tuple[str, ...] = ()
    in_range: int = 0
    """Blobs the ledger has as shipped in the span (the tenants and sinks chosen)."""
    resent: int = 0
    records: int = 0
    gone: int = 0
    """No longer at the source: past retention (not attempted) or answered as expired or gone."""
    failed: list[str] = field(default_factory=list)
    """One line per blob that could not be sent again: tenant, content id and why (redacted)."""
    skipped_tenants: list[str] = field(default_factory=list)
    """Tenants whose records do not go to the chosen sink (their registry entry's ``sinks``)."""
    by_stream: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """(tenant, content type) -> [blobs, records as the ledger counted them] (the dry run's plan)."""

    @property
    def ok(self) -> bool:
        return not self.failed and self.gone == 0


def time_arg(text: str) -> dt.datetime:
    """An ISO 8601 instant for ``--since`` / ``--until``; without an offset it is UTC (as the API's times are)."""
    try:
        return utc(dt.datetime.fromisoformat(text.strip()))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (for instance 2024-05-01 or 2024-05-01T06:00:00Z)"
        ) from err


def request_from_args(args: argparse.Namespace) -> ResendRequest:
    """The resend the flags ask for; ``ConfigError`` naming the flag when they do not make one."""
    if not args.resend:
        given = [name for name in RESEND_ONLY_FLAGS if getattr(args, name, None) not in (None, False)]
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(flag, "is only meaningful with --resend")
    if args.since is None:
        raise ConfigError("--since", "is required with --resend (the start of the span to send again)")
    if args.until is not None and args.until <= args.since:
        raise ConfigError("--until", f"{args.until.isoformat()} is not after --since {args.since.isoformat()}")
    tenants = tuple(dict.fromkeys(t.strip() for t in args.tenant or ()))
    return ResendRequest(args.since, args.until, args.sink, tenants, bool(args.dry_run))


def wants_resend(args: argparse.Namespace) -> bool:
    """True when the run command's flags are about a resend (``cmd_run`` hands those to ``cmd_resend``)."""
    return bool(getattr(args, "resend", False)) or any(
        getattr(args, name, None) not in (None, False) for name in RESEND_ONLY_FLAGS
    )


def select_sinks(configured: Sequence[SinkSettings], name: str | None) -> list[SinkSettings]:
    """The sinks to send to: the one named (which must be one of ``SINK_TYPE``'s), or all of them."""
    if name is None:
        return list(configured)
    chosen = [s for s in configured if s.name.lower() == name.strip().lower()]
    if not chosen:
        names = ", ".join(s.name for s in configured)
        raise ConfigError("--sink", f"{printable(name)!r} is not one of SINK_TYPE's sinks ({names})")
    return chosen


def resend(
    collector: Collector, request: ResendRequest, *, progress: Callable[[ResendResult], None] | None = None
) -> ResendResult:
    """Send again every blob the ledger has as shipped in the span; the ledger is read, never written."""
    now = collector.clock()
    until = request.until or now
    tenants = _chosen_tenants(collector, request.tenants)
    result = ResendResult(request.since, until, tuple(s.name for s in collector.sinks))
    for tenant in tenants:
        sinks = collector.sinks_for(tenant.tenant_id)
        if not sinks:
            result.skipped_tenants.append(tenant.tenant_id)
            continue
        try:
            # Read page by page as the blobs are sent: a week of a large tenant is millions of rows.
            for row in collector.ledger.list_done(tenant.tenant_id, request.since, until):
                _resend_row(collector, tenant, sinks, row, now, request.dry_run, result)
                if progress is not None:
                    progress(result)
        except ResourceNotFoundError as err:  # only the query raises it: _resend_row catches its own errors
            table = collector.settings.ledger_table
            raise ConfigError("O365_LEDGER_TABLE", f"table {table!r} does not exist: nothing was shipped yet") from err
    return result


def _chosen_tenants(collector: Collector, wanted: tuple[str, ...]) -> list[TenantConfig]:
    configured = {t.tenant_id.lower(): t for t in collector.tenants()}
    if not wanted:
        return list(configured.values())
    unknown = [t for t in wanted if t.lower() not in configured]
    if unknown:
        raise ConfigError("--tenant", f"tenant {printable(unknown[0])!r} is not configured in this deployment")
    return [configured[t.lower()] for t in wanted]


def _resend_row(
    collector: Collector,
    tenant: TenantConfig,
    sinks: Sequence[Sink],
    row: dict[str, object],
    now: dt.datetime,
    dry_run: bool,
    result: ResendResult,
) -> None:
    # The ledger is our own table, but a row is still checked before its values build a URL: a bad
    # row is reported with its content id and skipped; its neighbours go on.
    content_id, content_type, created = row.get("ContentId"), row.get("ContentType"), row.get("ContentCreated")
    shown = printable(content_id) if isinstance(content_id, str) else "(none)"
    result.in_range += 1
    source = source_of(content_type) if isinstance(content_type, str) else None
    if not isinstance(content_id, str) or source is None or not isinstance(created, dt.datetime):
        result.failed.append(f"{tenant.tenant_id} {shown}: the ledger row lacks a content id, type or creation time")
        return
    content_type = str(content_type)
    counted = row.get("Records")
    stream = result.by_stream.setdefault((tenant.tenant_id, content_type), [0, 0])
    stream[0] += 1
    stream[1] += counted if isinstance(counted, int) else 0
    if utc(created) < earliest_listable(now, source.retention):  # the source no longer serves it
        result.gone += 1
        return
    if dry_run:
        return
    # Rows written before units kept their URI are the audit feed's: its canonical content URI is built.
    stored = row.get("ContentUri")
    uri = (
        stored
        if isinstance(stored, str)
        else (f"{tenant.api_url.rstrip('/')}/api/v1.0/{tenant.tenant_id}/activity/feed/audit/{content_id}")
    )
    created = utc(created)
    # The unit's own expiration (a Graph window's is its start + retention); older rows lack it.
    expiration = row.get("ContentExpiration")
    expires = utc(expiration) if isinstance(expiration, dt.datetime) else created + source.retention
    task = FetchTask(tenant.tenant_id, content_type, content_id, uri, created, expires)
    extra = {"tenant_id": tenant.tenant_id, "content_type": content_type, "content_id": shown}
    try:
        client = collector.client(tenant.tenant_id, content_type)
        problem = client.unit_problem(task)  # the fetcher's own check
        if problem is not None:
            result.failed.append(f"{tenant.tenant_id} {shown}: {redact(problem)}")  # a URI may carry userinfo
            return
        unit = client.fetch_unit(task, NoMemos())  # on its own: no overlap re-read, nothing left for others
        to_ship, _filtered = unit.to_ship(collector.settings.record_filter)
        context = BlobContext(tenant.tenant_id, content_type, content_id, created)
        for sink in sinks:
            sink.send(to_ship, context)
        unit.settle()
    except ContentUnavailableError as err:
        result.gone += 1
        log.warning("resend: content %s is no longer at the source: %s", shown, redact(str(err)), extra=extra)
        return
    except Exception as err:  # one blob's failure (source, sink) never stops its neighbours
        reason = redact(str(err)) if isinstance(err, CollectorError) else describe(err)
        result.failed.append(f"{tenant.tenant_id} {shown}: {reason}")
        log.error("resend: content %s was not sent again: %s", shown, reason, extra=extra)
        return
    result.resent += 1
    result.records += len(to_ship)


class _Progress:
    def __init__(self) -> None:
        self._started = time.monotonic()
        self._last = self._started

    def __call__(self, result: ResendResult) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_SECONDS:
            self._last = now
            log.info(
                "resend: %d of the blobs read so far sent again (%d records), %d no longer at the source, %d failed",
                result.resent,
                result.records,
                result.gone,
                len(result.failed),
            )


def report(result: ResendResult, *, dry_run: bool, seconds: float) -> int:
    span = f"{result.since.isoformat()} .. {result.until.isoformat()}"
    sinks = ", ".join(result.sinks)
    for tenant_id in result.skipped_tenants:
        print(f"{tenant_id}: its records do not go to {sinks} (the tenant's sinks): nothing to resend")
    if dry_run:
        for (tenant_id, content_type), (blobs, records) in sorted(result.by_stream.items()):
            print(f"{tenant_id} {content_type}: {blobs} blobs shipped in the span ({records} records as shipped)")
        attempted = result.in_range - result.gone - len(result.failed)
        print(
            f"dry run, {span}: would resend {attempted} blobs to {sinks}; "
            f"no longer at the source {result.gone}; unreadable ledger rows {len(result.failed)}"
        )
    else:
        print(
            f"resent {result.resent} of {result.in_range} blobs shipped in {span} ({result.records} records) "
            f"to {sinks}; no longer at the source {result.gone}; failed {len(result.failed)}; in {seconds:.1f}s"
        )
    for line in result.failed:
        print(f"FAILED {line}", file=sys.stderr)
    if result.gone:
        print(
            f"NOT RESENT: {result.gone} blobs are no longer at the source (past its retention)",
            file=sys.stderr,
        )
    return 0 if result.ok else 1


def cmd_resend(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    settings = Settings.from_env(os.environ)
    chosen = select_sinks(settings.sinks, request.sink)
    # Only the chosen sinks are built: a resend to one sink must not connect to the others.
    collector = Collector(settings, sinks=[s.create() for s in chosen])
    started = time.monotonic()
    try:
        result = resend(collector, request, progress=_Progress())
    finally:
        collector.close()
    seconds = time.monotonic() - started
    log.info(
        "resend finished: %d of %d blobs sent again, %d records, %d no longer at the source, %d failed",
        result.resent,
        result.in_range,
        result.records,
        result.gone,
        len(result.failed),
    )
    return report(result, dry_run=request.dry_run, seconds=seconds)
