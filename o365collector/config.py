"""Settings, parsed once from app settings (or the environment) into frozen values.

``Settings.from_env(environ)`` does no I/O. Every error names the setting at fault. Defaults live
here, each with the reason it was chosen. Tenants are a tuple even though this release reads one
tenant from the ``O365_*`` settings: a registry of many tenants (an MSSP deployment) plugs in by
producing more ``TenantConfig`` values, and everything downstream already iterates over them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from urllib.parse import urlparse

from .envparse import (
    Environ,
    Secret,
    get_choice,
    get_datetime,
    get_float,
    get_https_url,
    get_int,
    get_list,
    get_secret,
    get_str,
    parse_guid,
    require_str,
)
from .errors import ConfigError
from .filtering import RecordFilter
from .models import CONTENT_TYPES
from .sinks.base import SinkSettings


@dataclass(frozen=True, slots=True)
class Cloud:
    name: str
    api_url: str
    authority_host: str


# API host and login host per Microsoft 365 plan; the token scope is the API host + "/.default".
CLOUDS: dict[str, Cloud] = {
    "Enterprise": Cloud("Enterprise", "https://manage.office.com", "https://login.microsoftonline.com"),
    "GCC": Cloud("GCC", "https://manage-gcc.office.com", "https://login.microsoftonline.com"),
    "GCCHigh": Cloud("GCCHigh", "https://manage.office365.us", "https://login.microsoftonline.us"),
    "DoD": Cloud("DoD", "https://manage.protection.apps.mil", "https://login.microsoftonline.us"),
}

# Login hosts azure-identity knows; any other authority (a proxy, our simulator) needs instance
# discovery turned off, or MSAL asks login.microsoftonline.com to validate it.
KNOWN_AUTHORITY_HOSTS = frozenset(
    {"login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn", "login.windows.net"}
)


@dataclass(frozen=True, slots=True)
class ClientSecretCredentialConfig:
    """App registration with a client secret (the secret itself is a ``Secret``: never printed)."""

    client_id: str
    client_secret: Secret
    kind: str = "client_secret"


@dataclass(frozen=True, slots=True)
class CertificateCredentialConfig:
    """App registration with a certificate: a PEM file holding the private key and the certificate."""

    client_id: str
    certificate_path: str
    kind: str = "certificate"


CredentialConfig = ClientSecretCredentialConfig | CertificateCredentialConfig


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """One Microsoft 365 tenant to collect from."""

    tenant_id: str
    credential: CredentialConfig
    cloud: str
    api_url: str
    authority_host: str
    publisher_id: str
    content_types: tuple[str, ...]
    start_time: dt.datetime | None
    enabled: bool = True
    sinks: tuple[str, ...] | None = None
    """Names of the configured sinks this tenant's records go to (None: all of them)."""
    name: str | None = None

    @property
    def token_scope(self) -> str:
        # The token audience is the API host of the cloud, not an override pointing at a proxy.
        return CLOUDS[self.cloud].api_url + "/.default"

    @property
    def api_host(self) -> str:
        return urlparse(self.api_url).netloc

    @property
    def authority_is_microsoft(self) -> bool:
        return (urlparse(self.authority_host).hostname or "") in KNOWN_AUTHORITY_HOSTS


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """How to reach the storage account: a connection string, or identity-based service URIs.

    Mirrors the Functions host's ``AzureWebJobsStorage`` conventions so one setting serves both.
    """

    connection_string: Secret | None
    queue_service_uri: str | None
    table_service_uri: str | None
    managed_identity_client_id: str | None


@dataclass(frozen=True, slots=True)
class CollectionPolicy:
    """Timing rules for listing windows and for the queue side."""

    # Wider windows mean fewer list calls on a backfill; the checkpoint moves once per window.
    window: dt.timedelta = dt.timedelta(hours=6)
    # Content can become listable well after its contentCreated; re-list this much behind the checkpoint.
    overlap: dt.timedelta = dt.timedelta(hours=1)
    # Windows end this far behind now, so a window is not listed while the service still fills it.
    end_delay: dt.timedelta = dt.timedelta(minutes=5)
    # The lister stops starting new windows after this long, leaving the rest for the next run
    # (well inside the 10-minute function timeout in host.json).
    list_budget: dt.timedelta = dt.timedelta(minutes=4)
    # How long a fetcher's claim on a blob stands before another delivery may take it over;
    # at least the function timeout, so a live worker is never overtaken.
    claim_lease: dt.timedelta = dt.timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """Bounds for calls to the Management Activity API."""

    timeout_seconds: float = 60.0
    max_attempts: int = 6
    max_retry_seconds: float = 120.0
    backoff_seconds: float = 1.0
    # The API allows 2,000 requests per minute per tenant (more for large tenants); keep a margin for
    # other tools of the tenant's that use the same publisher quota.
    max_requests_per_minute: float = 1500.0


@dataclass(frozen=True, slots=True)
class QueueRunnerConfig:
    """What the Functions host does for queues, for the command-line runner. Same values as host.json."""

    visibility_timeout: dt.timedelta = dt.timedelta(seconds=30)
    max_dequeue_count: int = 5
    batch_size: int = 16


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """When the ``health`` function and ``status`` call the collector unhealthy."""

    # Six missed 5-minute timer runs: long enough to ride out a failed run or a host restart, short
    # enough to page someone well inside the API's 7-day retention. Keep it at least 2x the schedule.
    max_listing_age: dt.timedelta = dt.timedelta(minutes=30)
    # Throttled responses in one stream's listing run; retries absorb a few, a steady stream of them
    # means the tenant's quota is shared with another tool and listing falls behind.
    max_throttled: int = 50
    # Content lost at the source within this lookback makes the collector unhealthy (0: never), so an
    # alert fires and clears by itself once the loss is older than the lookback.
    lost_data_lookback: dt.timedelta = dt.timedelta(hours=24)
    # Messages tolerated in the poison queue: each one is content not delivered yet (replay-poison).
    max_poison: int = 0


DEFAULT_QUEUE = "o365-content"
DEFAULT_CHECKPOINT_TABLE = "o365checkpoints"
DEFAULT_LEDGER_TABLE = "o365ledger"
DEFAULT_STATUS_TABLE = "o365status"
DEFAULT_SCHEDULE = "0 */5 * * * *"


@dataclass(frozen=True, slots=True)
class Settings:
    tenants: tuple[TenantConfig, ...]
    storage: StorageConfig
    sinks: tuple[SinkSettings, ...]
    content_queue: str = DEFAULT_QUEUE
    checkpoint_table: str = DEFAULT_CHECKPOINT_TABLE
    ledger_table: str = DEFAULT_LEDGER_TABLE
    policy: CollectionPolicy = field(default_factory=CollectionPolicy)
    http: HttpPolicy = field(default_factory=HttpPolicy)
    queue_runner: QueueRunnerConfig = field(default_factory=QueueRunnerConfig)

    @property
    def poison_queue(self) -> str:
        # The Functions host's naming rule for poison queues.
        return self.content_queue + "-poison"

    record_filter: RecordFilter = field(default_factory=RecordFilter)
    tenant_table: str | None = None
    """When set, tenants are read from this Table Storage registry at run time (large fleets)."""
    list_concurrency: int = 8
    status_table: str = DEFAULT_STATUS_TABLE
    health: HealthPolicy = field(default_factory=HealthPolicy)

    @classmethod
    def from_env(cls, env: Environ) -> Settings:
        from .sinks.registry import parse_sink_settings  # the sinks import envparse, not config
        from .tenants import tenants_from_env

        sinks = parse_sink_settings(env)
        tenant_table = get_str(env, "O365_TENANT_TABLE")
        if tenant_table is not None:
            tenant_table = _table_name(env, "O365_TENANT_TABLE", tenant_table)
        return cls(
            tenants=tenants_from_env(env, sink_names=tuple(s.name for s in sinks)),
            tenant_table=tenant_table,
            list_concurrency=get_int(env, "O365_LIST_CONCURRENCY", 8, minimum=1, maximum=64),
            record_filter=RecordFilter.from_env(env),
            storage=storage_from_env(env),
            sinks=sinks,
            content_queue=_queue_name(env, "O365_CONTENT_QUEUE", DEFAULT_QUEUE),
            checkpoint_table=_table_name(env, "O365_CHECKPOINT_TABLE", DEFAULT_CHECKPOINT_TABLE),
            ledger_table=_table_name(env, "O365_LEDGER_TABLE", DEFAULT_LEDGER_TABLE),
            status_table=_table_name(env, "O365_STATUS_TABLE", DEFAULT_STATUS_TABLE),
            health=health_from_env(env),
            policy=policy_from_env(env),
            http=HttpPolicy(
                timeout_seconds=get_float(env, "O365_HTTP_TIMEOUT_SECONDS", 60.0, minimum=1.0),
                max_attempts=get_int(env, "O365_RETRY_MAX_ATTEMPTS", 6, minimum=1, maximum=20),
                max_retry_seconds=get_float(env, "O365_RETRY_MAX_SECONDS", 120.0),
                backoff_seconds=get_float(env, "O365_RETRY_BACKOFF_SECONDS", 1.0),
                max_requests_per_minute=get_float(env, "O365_MAX_REQUESTS_PER_MINUTE", 1500.0, minimum=1.0),
            ),
            queue_runner=QueueRunnerConfig(
                visibility_timeout=dt.timedelta(
                    seconds=get_int(env, "O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS", 30, minimum=0)
                ),
                max_dequeue_count=get_int(env, "O365_MAX_DEQUEUE_COUNT", 5, minimum=1, maximum=100),
            ),
        )


def tenant_from_env(env: Environ) -> TenantConfig:
    """The single tenant of the ``O365_*`` settings."""
    tenant_id = parse_guid("O365_TENANT_ID", require_str(env, "O365_TENANT_ID", "the Microsoft 365 tenant GUID"))
    client_id = parse_guid(
        "O365_CLIENT_ID", require_str(env, "O365_CLIENT_ID", "the application (client) id of the app registration")
    )
    secret = get_secret(env, "O365_CLIENT_SECRET")
    if secret is None:
        raise ConfigError("O365_CLIENT_SECRET", "is required but not set (the app registration's client secret)")
    cloud = get_choice(env, "O365_CLOUD", "Enterprise", tuple(CLOUDS))
    publisher = get_str(env, "O365_PUBLISHER_ID")
    return TenantConfig(
        tenant_id=tenant_id,
        credential=ClientSecretCredentialConfig(client_id=client_id, client_secret=secret),
        cloud=cloud,
        api_url=get_https_url(env, "O365_API_URL") or CLOUDS[cloud].api_url,
        authority_host=get_https_url(env, "O365_AUTHORITY_HOST") or CLOUDS[cloud].authority_host,
        publisher_id=parse_guid("O365_PUBLISHER_ID", publisher) if publisher else tenant_id,
        content_types=content_types_from_env(env),
        start_time=get_datetime(env, "O365_START_TIME"),
    )


def content_types_from_env(env: Environ, name: str = "O365_CONTENT_TYPES") -> tuple[str, ...]:
    listed = get_list(env, name)
    if not listed:
        return CONTENT_TYPES
    canonical = {ct.lower(): ct for ct in CONTENT_TYPES}
    chosen: list[str] = []
    for item in listed:
        found = canonical.get(item.lower())
        if found is None:
            raise ConfigError(name, f"unknown content type {item!r} (expected one of {', '.join(CONTENT_TYPES)})")
        if found not in chosen:
            chosen.append(found)
    return tuple(chosen)


def storage_from_env(env: Environ, name: str = "AzureWebJobsStorage") -> StorageConfig:
    """Either ``AzureWebJobsStorage`` (a connection string) or identity-based ``AzureWebJobsStorage__*``."""
    conn = get_secret(env, name)
    account = get_str(env, f"{name}__accountName")
    queue_uri = get_str(env, f"{name}__queueServiceUri")
    table_uri = get_str(env, f"{name}__tableServiceUri")
    if account:
        queue_uri = queue_uri or f"https://{account}.queue.core.windows.net"
        table_uri = table_uri or f"https://{account}.table.core.windows.net"
    if conn is None and not (queue_uri and table_uri):
        raise ConfigError(
            name,
            f"is required: a storage connection string, or {name}__accountName "
            f"(or {name}__queueServiceUri and {name}__tableServiceUri) for an identity-based connection",
        )
    return StorageConfig(
        connection_string=conn,
        queue_service_uri=queue_uri,
        table_service_uri=table_uri,
        managed_identity_client_id=get_str(env, f"{name}__clientId"),
    )


def policy_from_env(env: Environ) -> CollectionPolicy:
    window = get_int(env, "O365_WINDOW_MINUTES", 360, minimum=1, maximum=24 * 60)
    return CollectionPolicy(
        window=dt.timedelta(minutes=window),
        overlap=dt.timedelta(minutes=get_int(env, "O365_OVERLAP_MINUTES", 60, minimum=0, maximum=24 * 60)),
        end_delay=dt.timedelta(minutes=get_int(env, "O365_END_DELAY_MINUTES", 5, minimum=0, maximum=24 * 60)),
        list_budget=dt.timedelta(seconds=get_int(env, "O365_LIST_BUDGET_SECONDS", 240, minimum=1)),
        claim_lease=dt.timedelta(seconds=get_int(env, "O365_CLAIM_LEASE_SECONDS", 600, minimum=1)),
    )


def health_from_env(env: Environ) -> HealthPolicy:
    return HealthPolicy(
        max_listing_age=dt.timedelta(
            minutes=get_int(env, "O365_HEALTH_MAX_LISTING_AGE_MINUTES", 30, minimum=1, maximum=7 * 24 * 60)
        ),
        max_throttled=get_int(env, "O365_HEALTH_MAX_THROTTLED", 50, minimum=0),
        lost_data_lookback=dt.timedelta(hours=get_int(env, "O365_HEALTH_LOST_DATA_HOURS", 24, minimum=0)),
        max_poison=get_int(env, "O365_HEALTH_MAX_POISON", 0, minimum=0),
    )


def _queue_name(env: Environ, name: str, default: str) -> str:
    value = (get_str(env, name) or default).lower()
    # Azure queue names: 3-63 chars, lower-case letters, digits and single hyphens; "-poison" must fit too.
    ok = 3 <= len(value) <= 56 and value[0].isalnum() and value[-1].isalnum() and "--" not in value
    if not ok or not all(c.isalnum() or c == "-" for c in value):
        raise ConfigError(name, f"{value!r} is not a valid queue name (3-56 lower-case letters, digits, hyphens)")
    return value


def _table_name(env: Environ, name: str, default: str) -> str:
    value = get_str(env, name) or default
    if not (3 <= len(value) <= 63 and value[0].isalpha() and value.isalnum()):
        raise ConfigError(
            name, f"{value!r} is not a valid table name (3-63 letters and digits, starting with a letter)"
        )
    return value
