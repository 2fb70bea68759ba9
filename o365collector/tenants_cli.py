"""``python -m o365collector tenants list|add|remove|disable|enable``: the Table Storage tenant registry.

Input is validated before anything is stored (GUIDs, cloud, content types, credential reference,
sink names), with errors naming the option. Only references to secrets are stored and printed.

``list`` shows the tenants in effect whatever their source: the table, ``O365_TENANTS`` or the
single-tenant settings. A ``setting:O365_SECRET_<NAME>`` reference is checked for its form only: the
secret lives in the app's settings (a Key Vault reference), not on the operator's machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from .config import Settings
from .envparse import KEY_VAULT_REFERENCE, Environ, get_str
from .errors import ConfigError
from .redaction import printable, summary
from .storage import StorageClients
from .tenant_config import SECRET_SETTING_NAME, CertificateCredentialConfig, TenantConfig
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
    add.add_argument(
        "--sources",
        help="comma list of audit, signins, directoryaudits, messagetrace (default: O365_SOURCES, else audit)",
    )
    add.add_argument("--start-time", help="ISO-8601 start of collection (default: as far back as the API allows)")
    add.add_argument("--sinks", help="comma list of SINK_TYPE names this tenant's records go to (default: all)")
    add.add_argument("--publisher-id", help="PublisherIdentifier (default: O365_PUBLISHER_ID or the tenant id)")
    add.add_argument("--replace", action="store_true", help="overwrite an existing entry")
    for verb in ("remove", "disable", "enable"):
        actions.add_parser(verb, help=f"{verb} a tenant").add_argument("tenant_id")


def run(args: argparse.Namespace) -> int:
    env: Environ = os.environ
    if args.action == "list":
        # O365_TENANTS entries' secrets live in the app's settings, not on the operator's machine.
        env = _with_stand_ins(env, _json_references(get_str(env, "O365_TENANTS")))
    settings = Settings.from_env(env)
    if settings.tenant_table is None and args.action == "list":
        return _list_settings(settings.tenants, env)
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
            "sources": args.sources,
            "startTime": args.start_time,
            "sinks": args.sinks,
            "publisherId": args.publisher_id,
            "enabled": True,
        }
        reference = _secret_reference(args.credential)
        registry.add(
            entry,
            _with_stand_ins(env, [reference] if reference else []),
            sink_names=sink_names,
            now=dt.datetime.now(dt.UTC),
            replace=args.replace,
        )
        print(f"added {args.tenant_id}")
        if reference and not _set_here(env, reference):
            print(f"note: the collector reads the secret from its app setting {reference}: set it there (in Azure, a "
                  "Key Vault reference); it is not needed on this machine")  # fmt: skip
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
    references = [r for e in entries if (r := _secret_reference(str(e.get("credential") or "")))]
    problems = registry.load(_with_stand_ins(env, references), sink_names=sink_names, now=dt.datetime.now(dt.UTC))
    print(f"source: O365_TENANT_TABLE ({printable(get_str(env, 'O365_TENANT_TABLE') or '')})")
    print(HEADER)
    for entry in sorted(entries, key=lambda e: str(e.get("tenantId"))):
        cell = {k: printable(str(v)) for k, v in entry.items() if v is not None}  # row text is data: escaped
        print(
            _row(
                cell.get("tenantId", ""),
                cell.get("name") or "",
                cell.get("cloud") or "Enterprise",
                entry.get("enabled", True) is not False,
                cell.get("credential") or "shared",
                cell.get("contentTypes") or "all",
                cell.get("sources") or f"{printable(get_str(env, 'O365_SOURCES') or 'audit')} (O365_SOURCES)",
            )
        )
    for problem in problems.problems:
        print(f"INVALID {summary(str(problem))} (this row is skipped: fix it with `tenants add --replace`)")
    return 1 if problems.problems else 0


HEADER = f"{'tenant':<38} {'name':<20} {'cloud':<10} {'enabled':<8} {'credential':<28} {'sources':<30} content types"


def _row(
    tenant_id: str, name: str, cloud: str, enabled: bool, credential: str, content_types: str, sources: str
) -> str:
    enabled_text = "yes" if enabled else "no"
    return f"{tenant_id:<38} {name:<20} {cloud:<10} {enabled_text:<8} {credential:<28} {sources:<30} {content_types}"


def _list_settings(tenants: Iterable[TenantConfig], env: Environ) -> int:
    """The tenants of ``O365_TENANTS`` or of the single-tenant settings, each with the entry it comes from."""
    listed = get_str(env, "O365_TENANTS")
    entries: list[Any] = orjson.loads(listed) if listed else []  # parsed already by Settings: valid JSON
    index = {str(e.get("tenantId", "")).strip().lower(): i for i, e in enumerate(entries) if isinstance(e, dict)}
    print("source: O365_TENANTS" if listed else "source: the single-tenant settings (O365_TENANT_ID, O365_CLIENT_ID)")
    print(HEADER + "  source")
    for tenant in tenants:
        if listed:
            i = index.get(tenant.tenant_id, -1)
            entry = entries[i] if i >= 0 else {}
            where = f"O365_TENANTS[{i}]"
            credential = printable(str(entry.get("credential") or "shared"))
        else:
            where = "O365_TENANT_ID"
            credential = (
                "certificate O365_CLIENT_CERTIFICATE_PATH"
                if isinstance(tenant.credential, CertificateCredentialConfig)
                else "secret O365_CLIENT_SECRET"
            )
        row = _row(
            tenant.tenant_id,
            printable(tenant.name or ""),
            tenant.cloud,
            tenant.enabled,
            credential,
            ",".join(tenant.content_types),
            ",".join(tenant.sources),
        )
        print(f"{row}  {where}")
    return 0


def _secret_reference(credential: str) -> str | None:
    """The app setting a ``setting:O365_SECRET_<NAME>`` credential names (None for any other form)."""
    kind, _, reference = credential.partition(":")
    return reference if kind.strip() == "setting" and SECRET_SETTING_NAME.fullmatch(reference) else None


def _json_references(listed: str | None) -> list[str]:
    """The ``setting:`` references of the ``O365_TENANTS`` entries (none when it is unset or not a JSON array:
    the settings' own parser reports that)."""
    try:
        entries = orjson.loads(listed) if listed else []
    except orjson.JSONDecodeError:
        return []
    found = (_secret_reference(str(e.get("credential") or "")) for e in entries if isinstance(e, dict))
    return [r for r in found if r] if isinstance(entries, list) else []


def _set_here(env: Environ, name: str) -> bool:
    value = get_str(env, name)
    return value is not None and not value.startswith(KEY_VAULT_REFERENCE)


def _with_stand_ins(env: Environ, references: Iterable[str]) -> dict[str, str]:
    """``env`` with a random stand-in for each referenced secret not usable here, so the reference's form is
    validated without the secret itself: it lives in the app's settings, not on the operator's machine."""
    stand_in = secrets.token_urlsafe(24)  # random: the redaction step registers it, and it can match nothing else
    return dict(env) | {name: stand_in for name in references if not _set_here(env, name)}
