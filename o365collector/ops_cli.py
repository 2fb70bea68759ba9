"""The operator's commands: ``check``, ``status`` and ``replay-poison`` (registered by ``cli.build_parser``).

Exit codes: ``check`` 0 only when every step passed; ``status`` 0 when healthy, 1 when not;
``replay-poison`` 0 unless it could not run. Settings errors exit 2 like every other command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import orjson

from .config import Settings
from .diagnose import Step, diagnose
from .health import build_report, render_table
from .poison import replay_poison
from .redaction import redact
from .runtime import Collector


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


def cmd_status(args: argparse.Namespace) -> int:
    collector = Collector(Settings.from_env(os.environ), sinks=[])
    report = build_report(collector)
    # The report's texts were redacted when stored and when read; the table is redacted as a whole again
    # (its own line breaks kept) so nothing read from storage reaches the console unchecked.
    text = report.to_json(indent=True).decode() if args.json else render_table(report)
    print(redact(text, keep_newlines=True))
    return 0 if report.healthy else 1


def cmd_replay_poison(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)
    collector = Collector(settings, sinks=[])
    result = replay_poison(collector.poison_queue, collector.queue, collector.ledger, dry_run=args.dry_run)
    if args.json:
        print(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(redact(line) for line in result.lines(settings.content_queue, settings.poison_queue)))
    return 0
