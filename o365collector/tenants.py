"""The tenant registry: which Microsoft 365 tenants one deployment collects, with which credentials.

Three sources, one shape (``TenantConfig``):

1. ``O365_TENANTS``: a JSON array of entries, for a handful to a few dozen tenants;
2. ``O365_TENANT_TABLE``: a Table Storage table of entries (managed with ``python -m o365collector
   tenants ...``), read at the start of every run, for hundreds of tenants;
3. neither: the single-tenant ``O365_TENANT_ID`` / ``O365_CLIENT_ID`` / ``O365_CLIENT_SECRET`` settings,
   a one-entry registry.

An entry (JSON keys, or table columns of the same names)::

    {"tenantId": "<guid>", "name": "Contoso", "cloud": "Enterprise",
     "clientId": "<guid>",                      # default: O365_CLIENT_ID (one multi-tenant app)
     "credential": "shared",                    # O365_CLIENT_SECRET / O365_CLIENT_CERTIFICATE_PATH of that app
                 | "setting:O365_SECRET_CONTOSO"  # an app setting holding this tenant's client secret
                                                #   (in Azure: a Key Vault reference)
                 | "certificate:contoso.pem",   # a PEM with private key and certificate, in O365_CERTIFICATE_DIR
                 | "keyvault:contoso-cert",     # a certificate in O365_CERTIFICATE_KEY_VAULT_URI (managed identity)
                 | "managedIdentity"            # the function app's identity itself (AZURE_CLIENT_ID), only
                                                #   for the identity's own tenant; no clientId needed
                 | "federated",                 # the app (clientId) trusting the identity by a federated
                                                #   identity credential; each tenant consents to the app
     "contentTypes": ["Audit.Exchange", "DLP.All"], "startTime": "2026-11-01T00:00:00Z",
     "sinks": ["splunk"], "enabled": true, "publisherId": "<guid>",
     "sources": ["audit", "signins"]}          # default: O365_SOURCES (else the audit feed only)

Secrets are never stored in the registry, only references to where they are. A reference cannot
reach beyond what is meant for it: ``setting:`` names only app settings that start with
``O365_SECRET_`` (never ``AzureWebJobsStorage`` or a sink's key), and ``certificate:`` names only
regular files inside ``O365_CERTIFICATE_DIR`` (checked again, symlinks resolved, when the file is
read, with a size cap).

``O365_TENANTS`` is a setting: any bad entry stops start-up, with every bad entry listed. The table
is data that changes while the collector runs: each row is validated on its own, and a bad row is
skipped and reported (log, ``status``, ``health``, ``check``) without stopping its neighbours.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from .envparse import Environ, Gatherer, get_secret, get_str, parse_guid
from .errors import ConfigError
from .models import CONTENT_TYPES
from .redaction import printable, summary
from .sources.selection import entry_sources
from .tenant_config import (
    CLOUDS,
    MANAGED_IDENTITY,
    SECRET_SETTING_FORM,
    SECRET_SETTING_NAME,
    SECRETLESS_MODES,
    CertificateCredentialConfig,
    ClientSecretCredentialConfig,
    CredentialConfig,
    TenantConfig,
    api_url_from_env,
    auth_mode_from_env,
    certificate_dir_from_env,
    content_types_from_env,
    keyvault_certificate_from_env,
    secretless_credential_from_env,
    start_time_from_env,
    tenant_from_env,
)

log = logging.getLogger(__name__)

ENTRY_KEYS = frozenset(
    {
        "tenantId",
        "name",
        "cloud",
        "clientId",
        "credential",
        "contentTypes",
        "startTime",
        "sinks",
        "enabled",
        "publisherId",
        "sources",
    }
)


def tenants_from_env(
    env: Environ, *, sink_names: tuple[str, ...] | None, now: dt.datetime | None = None
) -> tuple[TenantConfig, ...]:
    """The tenants named by the settings; empty when they live in a table (read at run time).

    ``O365_TENANTS`` is strict: every entry is checked and all bad ones are raised together.
    """
    listed = get_str(env, "O365_TENANTS")
    if listed is not None and get_str(env, "O365_TENANT_TABLE") is not None:
        raise ConfigError("O365_TENANTS", "set either O365_TENANTS or O365_TENANT_TABLE, not both")
    if get_str(env, "O365_TENANT_TABLE") is not None:
        return ()
    if listed is None:
        return (tenant_from_env(env, now=now),)
    try:
        entries = orjson.loads(listed)
    except orjson.JSONDecodeError as err:
        raise ConfigError("O365_TENANTS", f"is not valid JSON: {err}") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError("O365_TENANTS", "must be a non-empty JSON array of tenant entries")
    g = Gatherer()
    tenants: list[TenantConfig] = []
    for i, entry in enumerate(entries):
        try:
            tenants.append(tenant_from_entry(entry, env, f"O365_TENANTS[{i}]", sink_names, now=now))
        except ConfigError as err:
            g.errors.append(err)
    g.read(lambda: _refuse_duplicates(tenants, "O365_TENANTS"), None)
    g.raise_if_any()
    return tuple(t for t in tenants if t.enabled)


def tenant_from_entry(
    entry: Any, env: Environ, where: str, sink_names: tuple[str, ...] | None, *, now: dt.datetime | None
) -> TenantConfig:
    """Validate one registry entry; errors name the entry and field (``O365_TENANTS[2].cloud: ...``).

    ``sink_names`` None: the sinks are unknown (their settings failed), so ``sinks`` is not judged.
    ``now`` None: a future ``startTime`` is not judged (it is whenever the caller knows the time).
    """
    if not isinstance(entry, Mapping):
        raise ConfigError(where, "must be a JSON object")
    unknown = set(entry) - ENTRY_KEYS - {"PartitionKey", "RowKey", "Timestamp", "etag"}
    if unknown:
        raise ConfigError(
            where, f"unknown field(s) {', '.join(sorted(unknown))} (expected {', '.join(sorted(ENTRY_KEYS))})"
        )
    tenant_text = _text(entry, "tenantId", where)
    if tenant_text is None:
        raise ConfigError(f"{where}.tenantId", "is required")
    tenant_id = parse_guid(f"{where}.tenantId", tenant_text)
    cloud_text = _text(entry, "cloud", where) or get_str(env, "O365_CLOUD") or "Enterprise"
    cloud = next((c for c in CLOUDS if c.lower() == cloud_text.lower()), None)
    if cloud is None:
        raise ConfigError(f"{where}.cloud", f"unknown value {cloud_text!r} (expected one of {', '.join(CLOUDS)})")
    credential_text = _text(entry, "credential", where) or "shared"
    client_text = _text(entry, "clientId", where) or get_str(env, "O365_CLIENT_ID")
    own_identity = secretless_kind(credential_text, env) == MANAGED_IDENTITY  # signs in as itself: no app
    if client_text is None and not own_identity:
        raise ConfigError(f"{where}.clientId", "is required (or set O365_CLIENT_ID for a shared multi-tenant app)")
    client_id = parse_guid(f"{where}.clientId", client_text) if client_text else ""
    credential = _credential(credential_text, client_id, env, where, cloud=cloud)
    # Entry fields fall back to the deployment-wide settings.
    if entry.get("contentTypes") is None:
        content_types = content_types_from_env(env)
    else:
        content_types = _content_types(entry.get("contentTypes"), f"{where}.contentTypes")
    start_text = _text(entry, "startTime", where)
    if start_text:
        start_time = start_time_from_env({f"{where}.startTime": start_text}, f"{where}.startTime", now)
    else:
        start_time = start_time_from_env(env, "O365_START_TIME", now)
    sinks = _sinks(entry.get("sinks"), f"{where}.sinks", sink_names)
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled", f"{enabled!r} is not true or false")
    publisher = _text(entry, "publisherId", where) or get_str(env, "O365_PUBLISHER_ID")
    return TenantConfig(
        tenant_id=tenant_id,
        credential=credential,
        cloud=cloud,
        api_url=api_url_from_env(env, "O365_API_URL") or CLOUDS[cloud].api_url,
        authority_host=api_url_from_env(env, "O365_AUTHORITY_HOST") or CLOUDS[cloud].authority_host,
        publisher_id=parse_guid(f"{where}.publisherId", publisher) if publisher else tenant_id,
        content_types=content_types,
        start_time=start_time,
        enabled=enabled,
        sinks=sinks,
        name=_text(entry, "name", where),
        setting_names=_setting_names(entry, where),
        sources=entry_sources(entry.get("sources"), env, where, cloud=cloud),
    )


def _setting_names(entry: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    """Where an entry's values live, in the terms of the single-tenant settings hints are written in.

    Values the entry leaves to the deployment-wide settings (a shared app's O365_CLIENT_ID and secret)
    keep their names: that is where the admin must look for them."""
    names = [("O365_TENANT_ID", f"{where}.tenantId")]
    if entry.get("clientId"):
        names.append(("O365_CLIENT_ID", f"{where}.clientId"))
    kind, _, reference = str(entry.get("credential") or "shared").partition(":")
    if kind == "setting" and reference:
        names.append(("O365_CLIENT_SECRET", f"{reference} (named by {where}.credential)"))
    if entry.get("cloud"):
        names.append(("O365_CLOUD", f"{where}.cloud"))
    return tuple(names)


def _text(entry: Mapping[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}", f"must be a string, not {type(value).__name__}")
    return value.strip()


def secretless_kind(text: str, env: Environ) -> str | None:
    """``managedIdentity`` or ``federated`` when the entry's credential (``shared``: the app's mode) is secretless."""
    if text == "shared":
        try:
            mode = auth_mode_from_env(env)
        except ConfigError:
            return None  # reported with the settings
        return mode if mode in SECRETLESS_MODES else None
    return text if text in SECRETLESS_MODES else None


def _credential(text: str, client_id: str, env: Environ, where: str, *, cloud: str | None = None) -> CredentialConfig:
    kind, _, reference = text.partition(":")
    secretless = secretless_kind(text, env)
    if secretless is not None:
        # managedIdentity: the identity's own tenant only; federated: the entry's app, trusting the identity.
        return secretless_credential_from_env(env, secretless, client_id, cloud)
    if kind == "shared":
        path = get_str(env, "O365_CLIENT_CERTIFICATE_PATH")
        if path:
            return CertificateCredentialConfig(client_id, path)
        if get_str(env, "O365_CERTIFICATE_NAME"):
            return keyvault_certificate_from_env(env, client_id)
        secret = get_secret(env, "O365_CLIENT_SECRET")
        if secret is None:
            raise ConfigError(
                f"{where}.credential",
                "'shared' needs O365_CLIENT_SECRET or O365_CLIENT_CERTIFICATE_PATH (the multi-tenant app's credential)",
            )
        return ClientSecretCredentialConfig(client_id, secret)
    if kind == "setting" and reference:
        if not SECRET_SETTING_NAME.fullmatch(reference):
            # A registry row must not pick any app setting (AzureWebJobsStorage, a sink's key) to send
            # to a login host as a client secret: only settings meant for per-tenant secrets qualify.
            raise ConfigError(
                f"{where}.credential",
                f"app setting {printable(reference[:130])!r} is not allowed: a per-tenant secret must be in an app "
                f"setting named {SECRET_SETTING_FORM} (letters, digits, underscores)",
            )
        secret = get_secret(env, reference)
        if secret is None:
            raise ConfigError(f"{where}.credential", f"app setting {reference!r} holding the client secret is not set")
        return ClientSecretCredentialConfig(client_id, secret)
    if kind == "certificate" and reference:
        folder = certificate_dir_from_env(env)
        return CertificateCredentialConfig(client_id, _certificate_path(reference, folder, where), folder=folder)
    if kind == "keyvault" and reference:
        return keyvault_certificate_from_env(env, client_id, reference, setting=f"{where}.credential")
    raise ConfigError(
        f"{where}.credential",
        f"{printable(text[:200])!r} is not one of 'shared', 'setting:{SECRET_SETTING_FORM}', "
        "'certificate:<file.pem>', 'keyvault:<certificate-name>', 'managedIdentity', 'federated'",
    )


def _certificate_path(reference: str, folder: str, where: str) -> str:
    """The reference as a path inside ``folder`` (relative to it, or absolute within it), by its text alone.

    Whether a symlink leads out of the folder is decided when the file is read (``auth``): here no I/O.
    """
    path = posixpath.normpath(posixpath.join(folder, reference))
    if "\x00" in reference or not path.startswith(folder.rstrip("/") + "/"):
        raise ConfigError(
            f"{where}.credential",
            f"certificate {printable(reference[:200])!r} is outside O365_CERTIFICATE_DIR ({folder}): "
            "registry certificates must be files in that folder",
        )
    return path


def _content_types(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return CONTENT_TYPES
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ConfigError(where, "must be a list or a comma-separated string of content types")
    return content_types_from_env({where: value}, where)


def _sinks(value: Any, where: str, sink_names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, str | list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(where, "must be a list or a comma-separated string of sink names")
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if sink_names is None:
        return tuple(names)
    unknown = [n for n in names if n not in sink_names]
    if unknown:
        shown = ", ".join(printable(n[:40]) for n in unknown)
        raise ConfigError(where, f"sink(s) {shown} not in SINK_TYPE ({', '.join(sink_names)})")
    return tuple(names)


def _refuse_duplicates(tenants: list[TenantConfig], setting: str) -> None:
    seen: set[str] = set()
    for tenant in tenants:
        if tenant.tenant_id in seen:
            raise ConfigError(setting, f"tenant {tenant.tenant_id} is listed twice")
        seen.add(tenant.tenant_id)


@dataclass
class RegistryLoad:
    """One reading of the table: the enabled tenants of the valid rows, and what is wrong with the others."""

    tenants: tuple[TenantConfig, ...] = ()
    problems: list[ConfigError] = field(default_factory=list)
    """One per skipped row; ``setting`` names the row and field (``O365_TENANT_TABLE[<RowKey>].cloud``)."""


class TableTenantRegistry:
    """Tenant entries in a table: PartitionKey ``tenant``, RowKey the tenant id, columns as the JSON keys."""

    PARTITION = "tenant"

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def ensure_table(self) -> None:
        try:
            self._table.create_table()
        except ResourceExistsError:
            pass

    def entries(self) -> list[dict[str, Any]]:
        return [self._as_entry(e) for e in self._table.query_entities(f"PartitionKey eq '{self.PARTITION}'")]

    def load(self, env: Environ, *, sink_names: tuple[str, ...], now: dt.datetime) -> RegistryLoad:
        """Every enabled tenant of the valid rows. Each row is validated on its own: a bad row is
        skipped, logged at ERROR and returned as a problem naming the row and field; its neighbours load."""
        result = RegistryLoad()
        tenants: list[TenantConfig] = []
        seen: dict[str, str] = {}
        for entity in self._table.query_entities(f"PartitionKey eq '{self.PARTITION}'"):
            if entity.get("enabled") is False:
                continue  # disabled on purpose: not collected, so not judged (its secret may be gone already)
            row = f"O365_TENANT_TABLE[{printable(str(entity.get('RowKey', '?'))[:80])}]"
            try:
                tenant = tenant_from_entry(self._as_entry(entity), env, row, sink_names, now=now)
                if tenant.tenant_id in seen:
                    raise ConfigError(f"{row}.tenantId", f"{tenant.tenant_id} is also in {seen[tenant.tenant_id]}")
            except ConfigError as err:
                log.error("tenant registry row skipped: %s", summary(str(err)), extra={"registry_row": row})
                result.problems.append(err)
                continue
            seen[tenant.tenant_id] = row
            tenants.append(tenant)
        result.tenants = tuple(t for t in tenants if t.enabled)
        return result

    def add(
        self,
        entry: dict[str, Any],
        env: Environ,
        *,
        sink_names: tuple[str, ...],
        now: dt.datetime,
        replace: bool = False,
    ) -> None:
        tenant = tenant_from_entry(entry, env, "tenant", sink_names, now=now)  # validate before storing anything
        row = {k: v for k, v in entry.items() if v is not None}
        for key in ("contentTypes", "sinks", "sources"):
            if isinstance(row.get(key), list):
                row[key] = ",".join(row[key])
        row.update({"PartitionKey": self.PARTITION, "RowKey": tenant.tenant_id, "tenantId": tenant.tenant_id})
        if replace:
            self._table.upsert_entity(row, mode=UpdateMode.REPLACE)
            return
        try:
            self._table.create_entity(row)
        except ResourceExistsError:
            raise ConfigError(
                "tenant", f"{tenant.tenant_id} is already registered (use --replace to change it)"
            ) from None

    def set_enabled(self, tenant_id: str, enabled: bool) -> None:
        try:
            self._table.update_entity(
                {"PartitionKey": self.PARTITION, "RowKey": tenant_id, "enabled": enabled}, mode=UpdateMode.MERGE
            )
        except ResourceNotFoundError:
            raise ConfigError("tenant", f"{tenant_id} is not registered") from None

    def remove(self, tenant_id: str) -> bool:
        try:
            self._table.get_entity(self.PARTITION, tenant_id)
        except ResourceNotFoundError:
            return False
        self._table.delete_entity(self.PARTITION, tenant_id)
        return True

    @staticmethod
    def _as_entry(entity: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entity.items() if k in ENTRY_KEYS}
