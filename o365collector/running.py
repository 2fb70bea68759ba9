"""Running the collector from the command line: listing passes, the queue drain, progress, signals.

``run --once`` and ``run --interval`` do here what the Functions host does with the timer and the queue
trigger, through the same ``Collector``: what they add is what an operator at a terminal or a service
manager needs (progress with an ETA and what the run waits for, a banner and a line per pass, and a clean
stop on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Self

from .errors import CollectorError
from .fetcher import Outcome
from .lister import ListerResult, StreamResult
from .listing_queue import list_through_queue
from .queue_runner import DrainResult, QueueRunner
from .redaction import redact
from .runtime import Collector
from .source_health import records_by_source, source_spec
from .sources.catalog import AUDIT
from .telemetry import ShipTally, log_run_summary

log = logging.getLogger("o365collector")

PROGRESS_EVERY_SECONDS = 5.0
MAX_LISTING_PASSES = 1000  # each pass completes at least one window; a 7-day backfill needs far fewer


class Progress:
    """Progress lines for a person watching: at most every few seconds, and at once when a new error comes.

    The shipping line has totals and an ETA: the blobs the listing enqueued against the blobs the
    queue runner has finished, and the time left at the rate so far. When the runner is idle it says
    what it waits for (messages put back after a failure, and when the first is visible again).
    """

    def __init__(self, out: logging.Logger, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._monotonic = monotonic
        self._started = monotonic()
        self._last = 0.0
        self._last_error: str | None = None
        self._shown: tuple[int, ...] | None = None  # the tally the last shipping line showed
        self.windows = 0
        self.total = 0  # blobs the listing enqueued this pass

    def on_window(self, stream: StreamResult) -> None:
        self.windows += 1
        if self._due():
            self._out.info("listing: %d windows done, %d blobs enqueued so far", self.windows, stream.blobs_enqueued)

    def start_shipping(self, enqueued: int, queued: int = 0) -> None:
        """``enqueued`` by this listing; ``queued``: the queue's (approximate) length, earlier passes' blobs too."""
        self.total = max(enqueued, queued)
        self._started = self._monotonic()

    def on_drain(self, drained: DrainResult) -> None:
        new_error = drained.last_error is not None and drained.last_error != self._last_error
        self._last_error = drained.last_error
        if self._due() or new_error:
            self._show(drained)

    def finish(self, drained: DrainResult) -> None:
        """The drain's last line, unless the last one shown said the same: messages finish one by one on the
        runner's threads, and lines come at most every few seconds, so the end may not have been shown."""
        if self._shown != _tally(drained):
            self._show(drained)

    def _show(self, drained: DrainResult) -> None:
        self._shown = _tally(drained)
        self._out.info("shipping: %s", self.describe(drained))

    def describe(self, drained: DrainResult) -> str:
        elapsed = max(self._monotonic() - self._started, 1e-6)
        done = drained.completed - drained.deferred  # a deferred blob is back on the queue, not done
        total = max(self.total, done)  # the queue may hold blobs an earlier run enqueued
        parts = [f"{done}/{total} blobs ({100 * done // total if total else 100}%)"]
        parts.append(f"{drained.records} records ({drained.records / elapsed:.0f} records/s)")
        if 0 < done < total:
            parts.append(f"ETA {format_seconds((total - done) * elapsed / done)}")
        text = ", ".join(parts)
        if drained.last_error is not None:
            text += f"; {problems(drained)}, last error: {drained.last_error}"
        if drained.waiting:
            text += f"; {plural(drained.waiting, 'message')} in flight"
            if drained.visible_again is not None:
                text += f", visible again at {drained.visible_again.astimezone():%H:%M:%S}"
        return text

    def _due(self) -> bool:
        now = self._monotonic()
        if now - self._last >= PROGRESS_EVERY_SECONDS:
            self._last = now
            return True
        return False


def _tally(drained: DrainResult) -> tuple[int, ...]:
    return (drained.completed, drained.failures, drained.deferred, drained.records, drained.poisoned)


def problems(drained: DrainResult) -> str:
    """What went wrong in a drain ("3 failures, 2 deferred"), for the human lines."""
    parts = [plural(drained.failures, "failure")] if drained.failures else []
    parts += [f"{drained.deferred} deferred"] if drained.deferred else []
    return ", ".join(parts) or "no failures"


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class StopRequest:
    """SIGINT and SIGTERM for ``run``: the first asks to stop after the blobs in flight, the second exits at once.

    The blobs in flight (up to host.json ``batchSize``) are finished, messages received but not begun are
    made visible again, and the summary printed.
    A second signal ends the process without that: a blob being shipped is delivered again later, which
    the ledger makes harmless (at-least-once).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # only there can Python install handlers
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            print(f"signal {signum} received again: exiting now", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(128 + signum)
        self.signum = signum
        log.info("signal %d received: finishing the current step, then stopping (again to exit at once)", signum)


def list_all(
    collector: Collector, progress: Progress, *, should_stop: Callable[[], bool] = lambda: False
) -> ListerResult:
    """Run the lister until no window is left (each pass is bounded by the run budget) or a stop is asked."""
    if collector.settings.listing.fanout:  # the same path as in Azure: through the list queue
        listed = list_through_queue(collector, on_window=progress.on_window, should_stop=should_stop)
        collector.auto_replay()
        return listed
    combined = ListerResult()
    by_stream: dict[tuple[str, str], StreamResult] = {}
    for _ in range(MAX_LISTING_PASSES):
        if should_stop():
            break
        result = collector.lister(on_window=progress.on_window).run()
        collector.record_listing(result)
        for stream in result.streams:
            key = (stream.tenant_id, stream.content_type)
            previous = by_stream.get(key)
            if previous is not None:
                stream.add_earlier(previous)
            by_stream[key] = stream
        if result.windows_left == 0 or all(s.windows == 0 for s in result.streams):
            break
    combined.streams = list(by_stream.values())
    return combined


def queue_runner(collector: Collector, tally: ShipTally) -> QueueRunner:
    """What the host's queue trigger does, for the command line: same handler, same host.json rules."""
    return QueueRunner(
        collector.queue,
        collector.poison_queue,
        # The dequeue count lets the handler defer, not poison, a transient failure on the last delivery.
        tally.wrap(
            lambda body, message_id, count: collector.process_message(
                body, message_id=message_id, dequeue_count=count
            )
        ),
        collector.settings.queue_runner,
        processing_lease=collector.settings.policy.claim_lease,
    )


def run_once(collector: Collector, *, drain_seconds: float | None = None) -> int:
    """One pass. Exit 0 when everything listed was shipped, 1 otherwise, 128 + the signal when stopped."""
    with StopRequest() as stop:
        return _run_once(collector, stop, drain_seconds)


def _run_once(collector: Collector, stop: StopRequest, drain_seconds: float | None) -> int:
    started = time.monotonic()
    progress = Progress(log)
    collector.ensure_resources()
    listed = list_all(collector, progress, should_stop=stop)
    tally = ShipTally()
    runner = queue_runner(collector, tally)
    progress.start_shipping(listed.blobs_enqueued, queued(collector))
    drained = runner.drain(
        max_seconds=drain_seconds, on_progress=progress.on_drain, on_idle=progress.on_drain, should_stop=stop
    )
    progress.finish(drained)
    log_run_summary(listed, tally, time.monotonic() - started)
    code = report(listed, drained, time.monotonic() - started, by_source=records_per_source(listed, tally))
    if stop.signum is not None:
        print(
            f"STOPPED by signal {stop.signum}: {drained.completed} of {listed.blobs_enqueued} blobs handled; "
            "the rest stay on the queue for the next run",
            file=sys.stderr,
        )
        return 128 + stop.signum
    return code


def records_per_source(listed: ListerResult, tally: ShipTally) -> str:
    """Records shipped per source ("Entra ID sign-ins (Microsoft Graph) 1,234 records; ...") when a source
    other than the audit feed was collected; "" otherwise (an audit-only run's lines stay as they were)."""
    streams = {s.content_type for s in listed.streams} | {ct for _, ct in tally.counts}
    if all(source_spec(ct).name == AUDIT for ct in streams):
        return ""
    counts = [(ct, 0) for ct in streams] + [(ct, c["records"]) for (_, ct), c in tally.counts.items()]
    return "; ".join(f"{title} {records:,} records" for title, records in records_by_source(counts))


def report(listed: ListerResult, drained: DrainResult, seconds: float, *, by_source: str = "") -> int:
    failed = [s for s in listed.streams if not s.ok]
    lost = drained.count(Outcome.LOST)
    print(
        f"listed {len(listed.streams)} streams ({len(failed)} failed): "
        f"{sum(s.windows for s in listed.streams)} windows, "
        f"{sum(s.blobs_listed for s in listed.streams)} blobs listed, {listed.blobs_enqueued} enqueued"
    )
    print(
        f"shipped {drained.count(Outcome.SHIPPED)} blobs ({drained.records} records"
        + (f", {drained.filtered} filtered out" if drained.filtered else "")
        + "); "
        f"skipped {drained.count(Outcome.SKIPPED_DONE) + drained.count(Outcome.SKIPPED_BUSY)} already shipped; "
        f"lost at source {lost}; poisoned {drained.poisoned}; in {seconds:.1f}s"
    )
    if by_source:
        print(f"by source: {by_source}")
    if drained.last_error is not None:
        print(f"{problems(drained)}; the last error: {drained.last_error}", file=sys.stderr)
    for stream in failed:
        print(f"FAILED {stream.tenant_id} {stream.content_type}: {redact(stream.error or '')}", file=sys.stderr)
    if drained.timed_out:
        print("FAILED: the queue was not empty when the time limit was reached", file=sys.stderr)
    ok = not failed and lost == 0 and drained.poisoned == 0 and not drained.timed_out and not drained.stopped
    return 0 if ok else 1


def banner(collector: Collector, interval: float) -> str:
    """What the loop will collect, said once at start-up."""
    tenants = collector.tenants()
    names = ", ".join(t.tenant_id for t in tenants[:3]) + (", ..." if len(tenants) > 3 else "")
    content_types = sorted({c for t in tenants for c in t.content_types})
    sinks = ", ".join(s.name for s in collector.sinks) or "none"
    return (
        f"collector starting: {plural(len(tenants), 'tenant')} ({names}); "
        f"content types {', '.join(content_types) or 'none'}; sinks {sinks}; "
        f"a pass every {format_seconds(interval)}; Ctrl-C or SIGTERM stops after the blobs in flight"
    )


def queued(collector: Collector) -> int:
    """The content queue's approximate length (visible or not); 0 when storage does not say."""
    try:
        return collector.queue.get_queue_properties().approximate_message_count or 0
    except Exception as err:  # only a progress figure: never fail a run for it
        log.debug("could not read the queue length: %s", err)
        return 0


def pass_summary(
    number: int,
    listed: ListerResult,
    drained: DrainResult,
    seconds: float,
    next_in: float | None,
    *,
    by_source: str = "",
) -> str:
    """One human line per pass of the loop (the JSON lines are for Application Insights)."""
    failed = [s for s in listed.streams if not s.ok]
    text = (
        f"pass {number} done in {seconds:.1f} s: {plural(len(listed.streams), 'stream')} listed"
        + (f" ({len(failed)} failed)" if failed else "")
        + f", {listed.blobs_enqueued} blobs enqueued; shipped {drained.count(Outcome.SHIPPED)} blobs "
        f"({drained.records} records)"
    )
    if by_source:
        text += f" ({by_source})"
    if drained.last_error is not None:
        text += f", {problems(drained)} (last error: {drained.last_error})"
    for stream in failed:
        text += f"; FAILED {stream.content_type} of {stream.tenant_id}: {redact(stream.error or '')}"
    if next_in is not None:  # None: stopping
        text += f"; next pass in {format_seconds(next_in)}" if next_in > 0 else "; next pass now"
    return text


def run_forever(collector: Collector, interval: float) -> int:
    """Pass after pass until a signal; exit 0 after stopping on one (the normal end of a service)."""
    with StopRequest() as stop:
        return _run_forever(collector, interval, stop)


def _run_forever(collector: Collector, interval: float, stop: StopRequest) -> int:
    collector.ensure_resources()
    log.info("%s", banner(collector, interval))
    tally = ShipTally()
    runner = queue_runner(collector, tally)
    passes = 0
    while not stop():
        cycle_start = time.monotonic()
        passes += 1
        try:
            listed = list_all(collector, Progress(log)) if collector.settings.listing.fanout else collector.run_lister()
            progress = Progress(log)
            progress.start_shipping(listed.blobs_enqueued, queued(collector))
            drained = runner.drain(
                max_seconds=interval, on_progress=progress.on_drain, on_idle=progress.on_drain, should_stop=stop
            )
            log_run_summary(listed, tally, time.monotonic() - cycle_start)
            by_source = records_per_source(listed, tally)
            tally.reset()
            elapsed = time.monotonic() - cycle_start
            healthy = drained.last_error is None and all(s.ok for s in listed.streams)
            level = logging.INFO if healthy else logging.WARNING
            next_in = None if stop() else interval - elapsed
            log.log(level, "%s", pass_summary(passes, listed, drained, elapsed, next_in, by_source=by_source))
        except CollectorError as err:
            log.error("cycle failed: %s", err)
        remaining = interval - (time.monotonic() - cycle_start)
        while remaining > 0 and not stop():
            time.sleep(min(remaining, 1.0))
            remaining = interval - (time.monotonic() - cycle_start)
    return 0
