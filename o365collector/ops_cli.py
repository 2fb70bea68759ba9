"""The operator's commands: ``check``, ``status`` and ``replay-poison`` (registered by ``cli.build_parser``).

Exit codes: ``check`` 0 only when every step passed; ``status`` 0 when healthy, 1 when unhealthy, 3 when
degraded (2 is taken: settings errors exit 2 like every other command); ``replay-poison`` 0 unless it
could not run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from .config import Settings
from .diagnose import Step, diagnose
from .health import build_report, filter_report, render_table
from .poison import replay_poison
from .redaction import redact, summary
from .runtime import Collector
from .status_report import DEGRADED, HEALTHY, UNHEALTHY

STATUS_EXIT = {HEALTHY: 0, UNHEALTHY: 1, DEGRADED: 3}


def add_operator_commands(commands: Any) -> None:
    """Add the three commands to ``build_parser``'s sub-parsers."""
    check = commands.add_parser(
        "check", help="diagnose the deployment: one line per step, OK or FAIL with the fix (exit 0 if all pass)"
    )
    check.add_argument(
        "--start-subscriptions",
        action="store_true",
        help="start subscriptions that are not enabled without asking (a terminal is asked otherwise)",
    )
    check.add_argument("--json", action="store_true", help="print the steps as a JSON array")
    check.set_defaults(func=cmd_check)

    status = commands.add_parser(
        "status", help="per tenant and content type: checkpoint, lag, last run and error, poisoned and expired blobs"
    )
    status.add_argument("--json", action="store_true", help="the health endpoint's JSON instead of a table")
    status.add_argument(
        "--tenant",
        action="append",
        default=[],
        metavar="ID_OR_NAME",
        help="only this tenant: its id (or the start of it), short id or registry name; repeat for more",
    )
    status.add_argument(
        "--problems-only", action="store_true", help="only the streams that are unhealthy or degraded"
    )
    status.set_defaults(func=cmd_status)

    replay = commands.add_parser(
        "replay-poison", help="move poison-queue messages back to the content queue (after fixing the cause)"
    )
    replay.add_argument("--dry-run", action="store_true", help="report what would be moved; change nothing")
    replay.add_argument("--json", action="store_true", help="print the result as JSON")
    replay.set_defaults(func=cmd_replay_poison)


def cmd_check(args: argparse.Namespace) -> int:
    # The token step reports sign-in failures itself; azure-identity's own warning would say it twice.
    # (Unless DEBUG was asked for: then the SDK's records are wanted, redacted like every record.)
    if not logging.getLogger("azure").isEnabledFor(logging.DEBUG):
        logging.getLogger("azure").setLevel(logging.ERROR)

    def confirm(question: str) -> bool:
        if args.start_subscriptions:
            return True
        if not sys.stdin.isatty():
            return False
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    steps: list[Step] = []
    for step in diagnose(os.environ, confirm=confirm):
        steps.append(step)
        if not args.json:
            print(step.line(), flush=True)
    passed = all(s.passed for s in steps)
    if args.json:
        print(orjson.dumps([s.to_dict() for s in steps], option=orjson.OPT_INDENT_2).decode())
    else:
        failed = sum(1 for s in steps if not s.passed)
        print("all checks passed" if passed else f"{failed} of {len(steps)} checks did not pass")
    return 0 if passed else 1


def storage_failure(err: Exception) -> str | None:
    """One line for a failure to reach or sign in to the storage account, or None for anything else.

    ``status`` and ``replay-poison`` read only storage: an SDK error here would otherwise surface as a
    traceback a hundred lines long, with the cause on its last line.
    """
    if isinstance(err, ClientAuthenticationError):
        first = str(err.message or err).strip().splitlines()
        return f"sign-in to the storage account failed: {summary(first[0] if first else type(err).__name__)}"
    if isinstance(err, ServiceRequestError):
        reason = summary(str(err), 200)
        return f"cannot reach the storage account: check AzureWebJobsStorage (locally: is Azurite running?) ({reason})"
    return None


def _storage_errors_as_one_line(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ClientAuthenticationError, ServiceRequestError) as err:
            print(f"error: {redact(storage_failure(err) or str(err))}", file=sys.stderr)
            return 2

    wrapped.__doc__ = command.__doc__
    return wrapped


@_storage_errors_as_one_line
def cmd_status(args: argparse.Namespace) -> int:
    collector = Collector(Settings.from_env(os.environ), sinks=[])
    report = build_report(collector)
    if args.tenant or args.problems_only:
        report = filter_report(report, args.tenant, problems_only=args.problems_only)
    # The report's texts were redacted when stored and when read; the table is redacted as a whole again
    # (its own line breaks kept) so nothing read from storage reaches the console unchecked.
    text = report.to_json(indent=True).decode() if args.json else render_table(report)
    print(redact(text, keep_newlines=True))
    return STATUS_EXIT[report.state]


@_storage_errors_as_one_line
def cmd_replay_poison(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)
    collector = Collector(settings, sinks=[])
    result = replay_poison(
        collector.poison_queue, collector.queue, collector.ledger, dry_run=args.dry_run, refusal=collector.refusal
    )
    if args.json:
        print(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        lines = result.lines(settings.content_queue, settings.poison_queue, now=collector.clock())
        print("\n".join(redact(line) for line in lines))
    return 0
