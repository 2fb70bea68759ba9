"""The operator's command line: ``python -m o365collector <command>``.

- ``run --once``   list every tenant/content type, then ship the queue until it is empty; exit 0 only
                   when everything listed was shipped (a summary says what failed otherwise)
- ``run``          the same in a loop, for a VM or a container
- ``run --resend --since T``   send again what the ledger has as shipped in a span (see ``resend``)
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
import copy
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .config import Settings
from .envparse import InvalidSettingsError
from .errors import CollectorError
from .models import CONTENT_TYPES
from .redaction import describe, install_log_redaction, redact
from .running import run_forever, run_once
from .runtime import Collector, quiet_sdk_loggers
from .telemetry import HideSummaryLines

log = logging.getLogger("o365collector")

SUBSCRIPTIONS_START = "python -m o365collector subscriptions start"


def cmd_run(args: argparse.Namespace) -> int:
    from .resend import cmd_resend, wants_resend

    if wants_resend(args):  # its own job: reads the ledger, fetches and sends directly, no queue
        return cmd_resend(args)
    from .webhook_cli import listening

    collector = Collector(Settings.from_env(os.environ))
    try:
        with listening(args, collector):  # push mode on a VM: --webhook-listen
            if args.once:
                return run_once(collector, drain_seconds=args.max_seconds)
            return run_forever(collector, args.interval)
    finally:
        collector.close()


STOP_WARNING = (
    "stopping a subscription loses data: nothing is listed until it is started again, and content from the "
    "stopped period can never be retrieved"
)


def refuse_stop(args: argparse.Namespace, tenants: int) -> int | None:
    """None when the stop may go ahead: ``--yes``, or a yes typed at a terminal. Otherwise the exit code:
    2 without a terminal (a script must say ``--yes``), 1 when the admin answered no."""
    if args.yes:
        return None
    if not sys.stdin.isatty():
        print(f"error: {STOP_WARNING}; pass --yes to stop without a question", file=sys.stderr)
        return 2
    what = ", ".join(args.content_type) if args.content_type else "every configured content type"
    if input(f"{STOP_WARNING}. Stop {what} for {tenants} tenant(s)? [y/N] ").strip().lower() in ("y", "yes"):
        return None
    print("nothing was stopped", file=sys.stderr)
    return 1


def cmd_subscriptions(args: argparse.Namespace) -> int:
    from .webhook_cli import describe_webhook, record_webhooks, webhook_body

    settings = Settings.from_env(os.environ)
    hook = webhook_body(args, os.environ)
    collector = Collector(settings, sinks=[])
    if args.action == "stop":
        refused = refuse_stop(args, len(collector.tenants()))
        if refused is not None:
            return refused
    status = 0
    for tenant in collector.tenants():
        api = collector.api(tenant.tenant_id)
        types = args.content_type or list(tenant.content_types)
        if args.action == "list":
            try:
                listed = api.list_subscriptions()
                current = {str(s.get("contentType")): str(s.get("status")) for s in listed}
                hooks = {str(s.get("contentType")): describe_webhook(s) for s in listed}
                record_webhooks(collector, tenant.tenant_id, listed)
            except CollectorError as err:
                print(f"{tenant.tenant_id}: could not list the subscriptions: {redact(str(err))}", file=sys.stderr)
                status = 1
                continue
            for content_type in [*types, *sorted(set(current) - set(types))]:
                state = current.get(content_type) or "not started"
                note = "" if content_type in tenant.content_types else " (not collected by this deployment)"
                if state != "enabled" and content_type in tenant.content_types:
                    note = f": start it with `{SUBSCRIPTIONS_START} --content-type {content_type}`"
                print(f"{tenant.tenant_id} {content_type}: {state}{hooks.get(content_type, '')}{note}")
            continue
        for content_type in types:
            try:
                if args.action == "start":
                    started = api.start_subscription(content_type, webhook=hook)
                    if started is not None:
                        record_webhooks(collector, tenant.tenant_id, [started])
                    print(f"{tenant.tenant_id} {content_type}: enabled{describe_webhook(started)}")
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


# Left out of the deployment zip (scripts/package.sh): only the simulate and demo commands need them.
LOCAL_ONLY_MODULES = ("o365collector.simulator", "o365collector.demo")


def left_out(err: ModuleNotFoundError) -> bool:
    """Whether ``err`` names a local-only module, missing because this is the deployment package."""
    return err.name is not None and err.name.startswith(LOCAL_ONLY_MODULES)


def cmd_left_out(args: argparse.Namespace) -> int:
    print(
        f"error: '{args.command}' is not part of this install: the deployment package leaves out the simulator "
        "and the demo. Run it from a source checkout or a 'pip install' of the project.",
        file=sys.stderr,
    )
    return 2


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        from .simulator.cli import run
    except ModuleNotFoundError as err:
        if not left_out(err):
            raise
        return cmd_left_out(args)
    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from .demo import run_demo
    except ModuleNotFoundError as err:
        if not left_out(err):
            raise
        return cmd_left_out(args)
    return run_demo(
        days=args.days, output=args.output, keep_running=args.keep_running, push=args.push, auth_mode=args.auth_mode
    )


def shows_default(action: argparse.Action) -> bool:
    """Whether --help should say this option's default: not for a flag's False, an unset value or an empty list."""
    default = action.default
    # `is`, not `in`: a default of 0 or 0.0 equals False and is worth showing.
    if default is None or default is False or default == argparse.SUPPRESS:
        return False
    return not (isinstance(default, list | tuple) and not default)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it or there is none to say."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.option_strings and shows_default(action) and "default" not in (action.help or "").lower():
            action = copy.copy(action)  # the parser's own action keeps its text; only this rendering changes
            action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults; sub-parsers are made of the parent's class, so theirs do too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def describe_commands(parser: argparse.ArgumentParser) -> None:
    """Give each sub-command's own --help the one-line help its parent lists it with (unless it has its own)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and helps.get(name):
                    sub.description = helps[name]
                describe_commands(sub)


def default_prog() -> str:
    # Installed, the console script is `o365collector`; from a checkout or the zip, `python -m o365collector`.
    return "o365collector" if os.path.basename(sys.argv[0]) == "o365collector" else "python -m o365collector"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog or default_prog(),
        description="The operator's command line for the Office 365 audit-log collector: collect, check the "
        "deployment, see its status, manage subscriptions and tenants, try it locally.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="the lowest level logged"
    )
    parser.add_argument(
        "--json-logs",
        action="store_true",
        help="print the JSON summary lines on a terminal too (always printed elsewhere)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="collect: list, queue, fetch, ship")
    run.add_argument("--once", action="store_true", help="one pass: list everything, ship until the queue is empty")
    run.add_argument("--interval", type=float, default=300.0, help="seconds between passes without --once")
    run.add_argument("--max-seconds", type=float, default=None, help="with --once: give up shipping after this long")
    from .resend import time_arg

    resend = run.add_argument_group("resend", "send again what the ledger has as shipped, to a new or rebuilt sink")
    resend.add_argument("--resend", action="store_true", help="fetch and send again the blobs shipped in a span")
    resend.add_argument("--since", type=time_arg, help="required: content created at or after (ISO 8601; UTC)")
    resend.add_argument("--until", type=time_arg, help="content created before (ISO 8601; default: now)")
    resend.add_argument("--sink", help="only this sink of SINK_TYPE (default: every sink)")
    resend.add_argument("--tenant", action="append", help="only this tenant (repeatable; default: all)")
    resend.add_argument("--dry-run", action="store_true", help="print what would be resent, send nothing")
    run.set_defaults(func=cmd_run)

    subs = commands.add_parser("subscriptions", help="list, start or stop the API subscriptions")
    subs.add_argument("action", choices=["list", "start", "stop"])
    subs.add_argument(
        "--content-type", action="append", type=content_type_arg, help="repeatable; default: all configured"
    )
    subs.add_argument("--yes", action="store_true", help="stop without asking (needed without a terminal)")
    from .webhook_cli import add_run_arguments, add_subscription_arguments

    add_subscription_arguments(subs)
    add_run_arguments(run)
    subs.set_defaults(func=cmd_subscriptions)

    from .ops_cli import add_operator_commands

    add_operator_commands(commands)

    try:
        from .simulator.cli import add_arguments
    except ModuleNotFoundError as err:
        if not left_out(err):
            raise
        # The deployment package: the command stays listed, takes any arguments (no option is recognised
        # with a prefix character that never occurs) and says why it cannot run, instead of a usage error.
        simulate = commands.add_parser(
            "simulate", help="not in this install (the deployment package)", prefix_chars="\0", add_help=False
        )
        simulate.add_argument("ignored", nargs="*", help=argparse.SUPPRESS)
    else:
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
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="after the run, print every setting and keep Azurite and the simulator up until Ctrl-C",
    )
    demo.add_argument(
        "--push",
        action="store_true",
        help="then push mode: webhooks on every subscription, fresh blobs notified by the simulator and shipped",
    )
    demo.add_argument(
        "--auth-mode",
        choices=("clientSecret", "certificate", "managedIdentity", "federated"),
        default="clientSecret",
        help="sign in with a client secret, a certificate kept in the simulated Key Vault, or secretless; the "
        "last three through the simulated managed identity endpoint",
    )
    demo.set_defaults(func=cmd_demo)
    describe_commands(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, isatty: Callable[[], bool] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_log_redaction()  # before the first record: every logger's messages pass it
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.json_logs and (isatty or sys.stderr.isatty)():
        # A person at a terminal reads the human lines; the JSON ones are for Application Insights.
        for handler in logging.getLogger().handlers:
            handler.addFilter(HideSummaryLines())
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
