"""The operator's command line: ``python -m o365collector <command>``.

- ``run --once``   list every tenant/content type, then ship the queue until it is empty; exit 0 only
                   when everything listed was shipped (a summary says what failed otherwise)
- ``run``          the same in a loop, for a VM or a container
- ``subscriptions list|start|stop``   the tenant's Management Activity API subscriptions
- ``check``        diagnose settings, token, permissions, subscriptions, audit logging, clock, storage, sinks
- ``status``       per tenant and content type: checkpoint, lag, last run and error, poisoned and expired blobs
- ``replay-poison``   move poison-queue messages back to the content queue once the cause is fixed
- ``tenants list|add|remove|disable|enable``   the tenant registry of a many-tenant deployment
- ``simulate``     a local Management Activity API (HTTPS) with generated audit data
- ``demo``         Azurite + simulator + collector + file sink, no Azure account needed
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from .config import Settings
from .envparse import InvalidSettingsError
from .errors import CollectorError
from .fetcher import Outcome
from .lister import ListerResult, StreamResult
from .models import CONTENT_TYPES
from .queue_runner import DrainResult, QueueRunner
from .redaction import describe, install_log_redaction, redact
from .runtime import Collector, quiet_sdk_loggers
from .telemetry import ShipTally, log_run_summary

log = logging.getLogger("o365collector")

PROGRESS_EVERY_SECONDS = 5.0
SUBSCRIPTIONS_START = "python -m o365collector subscriptions start"
MAX_LISTING_PASSES = 1000  # each pass completes at least one window; a 7-day backfill needs far fewer


class Progress:
    """Prints progress lines at most every few seconds: windows, blobs, records, rate."""

    def __init__(self, out: logging.Logger) -> None:
        self._out = out
        self._started = time.monotonic()
        self._last = 0.0
        self.windows = 0
        self.enqueued = 0

    def on_window(self, stream: StreamResult) -> None:
        self.windows += 1
        if self._due():
            self._out.info("listing: %d windows done, %d blobs enqueued so far", self.windows, stream.blobs_enqueued)

    def on_drain(self, drained: DrainResult) -> None:
        if self._due():
            elapsed = max(time.monotonic() - self._started, 1e-6)
            self._out.info(
                "shipping: %d blobs shipped, %d records (%.0f records/s), %d failures so far",
                drained.count(Outcome.SHIPPED),
                drained.records,
                drained.records / elapsed,
                drained.failures,
            )

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_SECONDS:
            self._last = now
            return True
        return False


def list_all(collector: Collector, progress: Progress) -> ListerResult:
    """Run the lister until no window is left (each pass is bounded by the run budget)."""
    combined = ListerResult()
    by_stream: dict[tuple[str, str], StreamResult] = {}
    for _ in range(MAX_LISTING_PASSES):
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
        tally.wrap(lambda body, message_id, _count: collector.process_message(body, message_id=message_id)),
        collector.settings.queue_runner,
        processing_lease=collector.settings.policy.claim_lease,
    )


def run_once(collector: Collector, *, drain_seconds: float | None = None) -> int:
    started = time.monotonic()
    progress = Progress(log)
    collector.ensure_resources()
    listed = list_all(collector, progress)
    tally = ShipTally()
    runner = queue_runner(collector, tally)
    drained = runner.drain(max_seconds=drain_seconds, on_progress=progress.on_drain)
    log_run_summary(listed, tally, time.monotonic() - started)
    return report(listed, drained, time.monotonic() - started)


def report(listed: ListerResult, drained: DrainResult, seconds: float) -> int:
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
    for stream in failed:
        print(f"FAILED {stream.tenant_id} {stream.content_type}: {redact(stream.error or '')}", file=sys.stderr)
    if drained.timed_out:
        print("FAILED: the queue was not empty when the time limit was reached", file=sys.stderr)
    ok = not failed and lost == 0 and drained.poisoned == 0 and not drained.timed_out
    return 0 if ok else 1


def run_forever(collector: Collector, interval: float) -> int:
    stop = {"now": False}

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d received: finishing the current step, then stopping", signum)
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    collector.ensure_resources()
    tally = ShipTally()
    runner = queue_runner(collector, tally)
    while not stop["now"]:
        cycle_start = time.monotonic()
        try:
            listed = collector.run_lister()
            runner.drain(max_seconds=interval, should_stop=lambda: stop["now"])
            log_run_summary(listed, tally, time.monotonic() - cycle_start)
            tally.reset()
        except CollectorError as err:
            log.error("cycle failed: %s", err)
        remaining = interval - (time.monotonic() - cycle_start)
        while remaining > 0 and not stop["now"]:
            time.sleep(min(remaining, 1.0))
            remaining = interval - (time.monotonic() - cycle_start)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    collector = Collector(Settings.from_env(os.environ))
    try:
        if args.once:
            return run_once(collector, drain_seconds=args.max_seconds)
        return run_forever(collector, args.interval)
    finally:
        collector.close()


def cmd_subscriptions(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)
    collector = Collector(settings, sinks=[])
    status = 0
    for tenant in collector.tenants():
        api = collector.api(tenant.tenant_id)
        types = args.content_type or list(tenant.content_types)
        if args.action == "list":
            try:
                current = {str(s.get("contentType")): str(s.get("status")) for s in api.list_subscriptions()}
            except CollectorError as err:
                print(f"{tenant.tenant_id}: could not list the subscriptions: {redact(str(err))}", file=sys.stderr)
                status = 1
                continue
            for content_type in [*types, *sorted(set(current) - set(types))]:
                state = current.get(content_type) or "not started"
                note = "" if content_type in tenant.content_types else " (not collected by this deployment)"
                if state != "enabled" and content_type in tenant.content_types:
                    note = f": start it with `{SUBSCRIPTIONS_START} --content-type {content_type}`"
                print(f"{tenant.tenant_id} {content_type}: {state}{note}")
            continue
        for content_type in types:
            try:
                if args.action == "start":
                    api.start_subscription(content_type)
                    print(f"{tenant.tenant_id} {content_type}: enabled")
                else:
                    api.stop_subscription(content_type)
                    print(
                        f"{tenant.tenant_id} {content_type}: stopped; nothing is listed until it is started again, "
                        "and content from the stopped period can never be retrieved"
                    )
            except CollectorError as err:
                print(f"{tenant.tenant_id} {content_type}: {args.action} failed: {redact(str(err))}", file=sys.stderr)
                status = 1
    return status


def content_type_arg(text: str) -> str:
    """A content type, matched case-insensitively (argparse reports anything else with the choices)."""
    for content_type in CONTENT_TYPES:
        if content_type.lower() == text.strip().lower():
            return content_type
    raise argparse.ArgumentTypeError(f"unknown content type {text!r} (expected one of {', '.join(CONTENT_TYPES)})")


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulator.cli import run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(days=args.days, output=args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m o365collector", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="collect: list, queue, fetch, ship")
    run.add_argument("--once", action="store_true", help="one pass: list everything, ship until the queue is empty")
    run.add_argument("--interval", type=float, default=300.0, help="seconds between passes without --once")
    run.add_argument("--max-seconds", type=float, default=None, help="with --once: give up shipping after this long")
    run.set_defaults(func=cmd_run)

    subs = commands.add_parser("subscriptions", help="list, start or stop the API subscriptions")
    subs.add_argument("action", choices=["list", "start", "stop"])
    subs.add_argument(
        "--content-type", action="append", type=content_type_arg, help="repeatable; default: all configured"
    )
    subs.set_defaults(func=cmd_subscriptions)

    from .ops_cli import add_operator_commands

    add_operator_commands(commands)

    from .simulator.cli import add_arguments

    simulate = commands.add_parser("simulate", help="serve a local Management Activity API with generated data")
    add_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)

    from . import tenants_cli

    tenants = commands.add_parser("tenants", help="manage the Table Storage tenant registry (O365_TENANT_TABLE)")
    tenants_cli.add_arguments(tenants)
    tenants.set_defaults(func=tenants_cli.run)

    demo = commands.add_parser("demo", help="a complete local run: Azurite + simulator + collector + file sink")
    demo.add_argument("--days", type=float, default=2.0, help="days of simulated history to collect")
    demo.add_argument("--output", default="demo-output", help="folder for the shipped NDJSON files")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_log_redaction()  # before the first record: every logger's messages pass it
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # asked for DEBUG, the SDKs' records are wanted too (redacted like ours)
        quiet_sdk_loggers()
    try:
        return int(args.func(args))
    except InvalidSettingsError as err:
        for one in err.errors:  # every bad setting at once, one `error: NAME: problem` line each
            print(f"error: {redact(str(one))}", file=sys.stderr)
        return 2
    except CollectorError as err:
        print(f"error: {redact(str(err), keep_newlines=True)}", file=sys.stderr)
        return 2
    except Exception as err:
        # Not the interpreter's raw traceback: a peer's text inside it may echo a credential.
        log.exception("unexpected failure: %s", describe(err))
        return 1
