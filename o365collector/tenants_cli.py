"""``python -m o365collector tenants list|add|remove|disable|enable``: the Table Storage tenant registry.

Input is validated before anything is stored (GUIDs, cloud, content types, credential reference,
sink names), with errors naming the option. Only references to secrets are stored and printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Any

from .config import Settings
from .envparse import Environ
from .errors import ConfigError
from .redaction import printable, summary
from .storage import StorageClients
from .tenants import TableTenantRegistry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="registered tenants (secrets are never shown, only where they come from)")
    add = actions.add_parser("add", help="register a tenant")
    add.add_argument("tenant_id", help="the tenant's GUID")
    add.add_argument("--name", help="a display name")
    add.add_argument("--cloud", help="Enterprise (default), GCC, GCCHigh or DoD")
    add.add_argument("--client-id", help="its app registration (default: O365_CLIENT_ID, a multi-tenant app)")
    add.add_argument(
        "--credential",
        default="shared",
        help="shared (the multi-tenant app's O365_CLIENT_SECRET), setting:O365_SECRET_<NAME> (an app setting "
        "holding this tenant's secret) or certificate:<file.pem> (in O365_CERTIFICATE_DIR)",
    )
    add.add_argument("--content-types", help="comma list (default: all five)")
    add.add_argument("--start-time", help="ISO-8601 start of collection (default: as far back as the API allows)")
    add.add_argument("--sinks", help="comma list of SINK_TYPE names this tenant's records go to (default: all)")
    add.add_argument("--publisher-id", help="PublisherIdentifier (default: O365_PUBLISHER_ID or the tenant id)")
    add.add_argument("--replace", action="store_true", help="overwrite an existing entry")
    for verb in ("remove", "disable", "enable"):
        actions.add_parser(verb, help=f"{verb} a tenant").add_argument("tenant_id")


def run(args: argparse.Namespace) -> int:
    env = os.environ
    settings = Settings.from_env(env)
    if settings.tenant_table is None:
        raise ConfigError("O365_TENANT_TABLE", "is not set: the tenants command manages a Table Storage registry")
    table = StorageClients(settings.storage).table(settings.tenant_table)
    registry = TableTenantRegistry(table)
    registry.ensure_table()
    sink_names = tuple(s.name for s in settings.sinks)
    if args.action == "list":
        return _list(registry, env, sink_names)
    if args.action == "add":
        entry: dict[str, Any] = {
            "tenantId": args.tenant_id,
            "name": args.name,
            "cloud": args.cloud,
            "clientId": args.client_id,
            "credential": args.credential,
            "contentTypes": args.content_types,
            "startTime": args.start_time,
            "sinks": args.sinks,
            "publisherId": args.publisher_id,
            "enabled": True,
        }
        registry.add(entry, env, sink_names=sink_names, now=dt.datetime.now(dt.UTC), replace=args.replace)
        print(f"added {args.tenant_id}")
        return 0
    if args.action == "remove":
        if not registry.remove(args.tenant_id):
            print(f"{args.tenant_id} is not registered", file=sys.stderr)
            return 1
        print(f"removed {args.tenant_id} (its checkpoints stay, so adding it again resumes where it was)")
        return 0
    registry.set_enabled(args.tenant_id, args.action == "enable")
    print(f"{args.action}d {args.tenant_id}")
    return 0


def _list(registry: TableTenantRegistry, env: Environ, sink_names: tuple[str, ...]) -> int:
    """The rows, then the rows the collector skips as invalid (exit 1 when there are any)."""
    entries = registry.entries()
    if not entries:
        print("no tenants registered")
        return 0
    problems = registry.load(env, sink_names=sink_names, now=dt.datetime.now(dt.UTC)).problems
    print(f"{'tenant':<38} {'name':<20} {'cloud':<10} {'enabled':<8} {'credential':<28} content types")
    for entry in sorted(entries, key=lambda e: str(e.get("tenantId"))):
        cell = {k: printable(str(v)) for k, v in entry.items() if v is not None}  # row text is data: escaped
        print(
            f"{cell.get('tenantId', ''):<38} {cell.get('name') or '':<20} {cell.get('cloud') or 'Enterprise':<10} "
            f"{'yes' if entry.get('enabled', True) is not False else 'no':<8} {cell.get('credential') or 'shared':<28} "
            f"{cell.get('contentTypes') or 'all'}"
        )
    for problem in problems:
        print(f"INVALID {summary(str(problem))} (this row is skipped: fix it with `tenants add --replace`)")
    return 1 if problems else 0
