"""Settings, parsed once from app settings (or the environment) into frozen values.

``Settings.from_env(environ)`` does no I/O. Every error names the setting at fault. Defaults live
here, each with the reason it was chosen. Tenants are a tuple even though this release reads one
tenant from the ``O365_*`` settings: a registry of many tenants (an MSSP deployment) plugs in by
producing more ``TenantConfig`` values (``tenant_config``), and everything downstream already iterates over them.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from .envparse import Environ, Gatherer, Secret, get_bool, get_secret, get_str
from .errors import ConfigError
from .filtering import RecordFilter
from .listing_settings import ListingQueueConfig, listing_queue_from_env
from .push_settings import PushSettings
from .secret_expiry import client_secret_expires_from_env
from .sinks.base import SinkSettings
from .sources.selection import sources_from_env
from .sources.settings import GraphSettings
from .tenant_config import TenantConfig, certificate_dir_from_env, start_time_from_env
from .tenants import tenants_from_env


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
    # The late sweep: content the API lists hours after its contentCreated (no bound is documented;
    # hours are seen) is found by re-listing this far behind, once per late_sweep. 24 h: the API's
    # widest window, so a sweep is usually one listing (zero: no sweep, only the overlap catches late content).
    late_lookback: dt.timedelta = dt.timedelta(hours=24)
    # How often the sweep runs: hourly costs one listing series per stream per hour (not per run),
    # and a late blob waits at most this (plus one timer interval) once listable.
    late_sweep: dt.timedelta = dt.timedelta(minutes=60)
    # How far back the source keeps records (the audit feed: 7 days); each source sets its own
    # (``SourceClient.policy``), and windows never reach behind it.
    retention: dt.timedelta = dt.timedelta(days=7)


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
    # A content blob's body, decompressed, is refused beyond this (a gzip bomb must not fill memory).
    # Blob sizes are undocumented; real ones are far smaller, and the memory bench ships 100 MB blobs.
    max_content_mb: int = 512


@dataclass(frozen=True, slots=True)
class PacingConfig:
    """The API budget shared by every instance on the storage account (``o365collector.pacing``)."""

    # Off unless set, or running in Azure (see from_env): one CLI process paces itself exactly alone.
    enabled: bool = False
    # None: the status table (rows PartitionKey "pacing"), which every deployment already has.
    table: str | None = None
    # Calls claimed per storage update: 25 makes pacing cost at most 2/25 storage transactions per call
    # and loses at most 25 calls per idle instance per minute (of 1,500).
    slice_size: int = 25
    # The pacing window: a minute, like the API's quota. Tests shorten it.
    window_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class QueueRunnerConfig:
    """What the Functions host does for queues, for the command-line runner. Same values as host.json."""

    visibility_timeout: dt.timedelta = dt.timedelta(seconds=30)
    max_dequeue_count: int = 5
    batch_size: int = 16  # messages handled at once
    # The next batch is received when this many or fewer are in flight; None: half of batch_size, the
    # host's own default (host.json says 8 for its 16).
    new_batch_threshold: int | None = None


@dataclass(frozen=True, slots=True)
class DeferralConfig:
    """How a blob rides out a failing sink or API (o365collector.deferral) and when poison is replayed."""

    # The longest wait between two attempts of a deferred blob. An hour keeps a sink's maintenance
    # window of hours to a few dozen attempts per blob, and a recovered sink gets its backlog within the hour.
    backoff_max: dt.timedelta = dt.timedelta(minutes=60)
    # Replay the poison queue by itself once every sink's check() passes again.
    auto_replay: bool = True
    # At most one such try (the sinks' checks, then the replay) per interval, so a flapping sink or a
    # message that fails for a reason no check sees (a permission at the API) does not loop.
    auto_replay_interval: dt.timedelta = dt.timedelta(minutes=30)


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
    # The client secret's expiry as the admin wrote it down (None: unknown or no secret); degraded this
    # long ahead, so a month leaves time for a change request. See secret_expiry.py.
    client_secret_expires: dt.datetime | None = None
    secret_expiry_warning: dt.timedelta = dt.timedelta(days=30)


DEFAULT_QUEUE = "o365-content"
DEFAULT_CHECKPOINT_TABLE = "o365checkpoints"
DEFAULT_LEDGER_TABLE = "o365ledger"
DEFAULT_STATUS_TABLE = "o365status"
DEFAULT_SCHEDULE = "0 */5 * * * *"
# Queue visibility timeouts (and so leases held through them) cannot exceed 7 days: the service refuses more.
QUEUE_MAX_VISIBILITY_SECONDS = 7 * 24 * 3600


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
    pacing: PacingConfig = field(default_factory=PacingConfig)
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
    list_schedule: str = DEFAULT_SCHEDULE
    """The lister timer's NCRONTAB (the Functions host reads the setting itself; checked here so a bad
    one is reported by ``check`` and at start-up instead of the timer silently never firing)."""
    deferral: DeferralConfig = field(default_factory=DeferralConfig)
    message_key: Secret | None = None
    """When set, the lister signs each queue message (HMAC-SHA256) and the fetcher refuses unsigned or
    wrongly signed ones to the poison queue: only holders of the key can have a blob fetched."""
    listing: ListingQueueConfig = field(default_factory=ListingQueueConfig)
    """The listing fan-out through the list queue (o365collector.listing_queue)."""
    push: PushSettings = field(default_factory=PushSettings)
    """Push mode: the webhook receiver's shared secret and arrival table (o365collector.webhook)."""
    graph: GraphSettings = field(default_factory=GraphSettings)
    """The Microsoft Graph sources' root, windows and overlap (o365collector.sources.settings)."""

    @classmethod
    def from_env(cls, env: Environ, *, now: dt.datetime | None = None) -> Settings:
        """Every setting, read independently: all errors are raised together as one
        ``InvalidSettingsError`` (a ``ConfigError``; ``.errors`` lists each, one line per setting).

        ``now`` is the start-up instant: start times after it (beyond ``START_TIME_SKEW``) are refused,
        since nothing would be collected until then. Default: this machine's clock.
        """
        from .sinks.registry import parse_sink_settings  # the sinks import envparse, not config

        now = now if now is not None else dt.datetime.now(dt.UTC)
        g = Gatherer()

        def table(name: str, default: str) -> str:
            return g.read(lambda: _table_name(env, name, default), default)

        sinks = g.read(lambda: parse_sink_settings(env), None)
        # Unknown sinks (their settings failed): tenants' sink lists are not judged against them.
        sink_names = tuple(s.name for s in sinks) if sinks is not None else None
        tenant_table = g.read(lambda: _optional_table_name(env, "O365_TENANT_TABLE"), None)
        g.read(lambda: start_time_from_env(env, "O365_START_TIME", now), None)  # also when tenants are in a table
        g.read(lambda: certificate_dir_from_env(env), None)
        g.read(lambda: sources_from_env(env, cloud=None), None)  # also when tenants are in a table
        settings = cls(
            tenants=g.read(lambda: tenants_from_env(env, sink_names=sink_names, now=now), ()),
            tenant_table=tenant_table,
            list_concurrency=g.get_int(env, "O365_LIST_CONCURRENCY", 8, minimum=1, maximum=64),
            record_filter=g.read(lambda: RecordFilter.from_env(env), RecordFilter()),
            storage=g.read(lambda: storage_from_env(env), StorageConfig(None, None, None, None)),
            sinks=sinks or (),
            content_queue=g.read(lambda: _queue_name(env, "O365_CONTENT_QUEUE", DEFAULT_QUEUE), DEFAULT_QUEUE),
            checkpoint_table=table("O365_CHECKPOINT_TABLE", DEFAULT_CHECKPOINT_TABLE),
            ledger_table=table("O365_LEDGER_TABLE", DEFAULT_LEDGER_TABLE),
            status_table=table("O365_STATUS_TABLE", DEFAULT_STATUS_TABLE),
            health=g.read(lambda: health_from_env(env), HealthPolicy()),
            policy=g.read(lambda: policy_from_env(env), CollectionPolicy()),
            http=HttpPolicy(
                # Up to the 10-minute function timeout: one call may not outlive the run that made it.
                timeout_seconds=g.get_float(env, "O365_HTTP_TIMEOUT_SECONDS", 60.0, minimum=1.0, maximum=600.0),
                max_attempts=g.get_int(env, "O365_RETRY_MAX_ATTEMPTS", 6, minimum=1, maximum=20),
                max_retry_seconds=g.get_float(env, "O365_RETRY_MAX_SECONDS", 120.0, maximum=600.0),
                backoff_seconds=g.get_float(env, "O365_RETRY_BACKOFF_SECONDS", 1.0, maximum=60.0),
                # 2,000/min is the documented quota; large tenants get more, never 100 times more.
                max_requests_per_minute=g.get_float(
                    env, "O365_MAX_REQUESTS_PER_MINUTE", 1500.0, minimum=1.0, maximum=100_000.0
                ),
                max_content_mb=g.get_int(env, "O365_MAX_CONTENT_MB", 512, minimum=1, maximum=4096),
            ),
            pacing=PacingConfig(
                # On by default in Azure (the platform sets WEBSITE_SITE_NAME), where the plan scales out.
                enabled=g.read(
                    lambda: get_bool(env, "O365_SHARED_PACING", bool(get_str(env, "WEBSITE_SITE_NAME"))), False
                ),
                table=g.read(lambda: _optional_table_name(env, "O365_PACING_TABLE"), None),
                # Up to 200: a slice is lost at the minute's end by an instance that goes idle.
                slice_size=g.get_int(env, "O365_PACING_SLICE", 25, minimum=1, maximum=200),
            ),
            queue_runner=QueueRunnerConfig(
                visibility_timeout=dt.timedelta(
                    seconds=g.get_int(
                        env,
                        "O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS",
                        30,
                        minimum=0,
                        maximum=QUEUE_MAX_VISIBILITY_SECONDS,
                    )
                ),
                max_dequeue_count=g.get_int(env, "O365_MAX_DEQUEUE_COUNT", 5, minimum=1, maximum=100),
                # host.json's batchSize (the queue service hands out 32 messages at most per receive).
                batch_size=g.get_int(env, "O365_QUEUE_BATCH_SIZE", 16, minimum=1, maximum=32),
            ),
            list_schedule=g.read(lambda: schedule_from_env(env), DEFAULT_SCHEDULE),
            message_key=g.read(lambda: message_key_from_env(env), None),
            listing=listing_queue_from_env(env, g),
            push=g.read(lambda: PushSettings.from_env(env), PushSettings()),
            graph=g.read(lambda: GraphSettings.from_env(env), GraphSettings()),
            deferral=DeferralConfig(
                # Up to a day: a blob's 7-day retention must leave room for several attempts after recovery.
                backoff_max=dt.timedelta(
                    minutes=g.get_int(env, "O365_SINK_BACKOFF_MAX_MINUTES", 60, minimum=1, maximum=24 * 60)
                ),
                auto_replay=g.read(lambda: get_bool(env, "O365_AUTO_REPLAY_POISON", True), True),
                auto_replay_interval=dt.timedelta(
                    minutes=g.get_int(env, "O365_AUTO_REPLAY_INTERVAL_MINUTES", 30, minimum=1, maximum=24 * 60)
                ),
            ),
        )
        g.raise_if_any()
        return settings


# NCRONTAB fields: name, lowest, highest, names allowed in place of numbers.
_MONTHS = {
    m: i + 1
    for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))
}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)
_TIMESPAN = re.compile(r"\d+(\.\d+)?:\d+(:\d+)?")


# An HMAC key shorter than this could be guessed; a generated key (openssl rand -base64 32) is 44 characters.
MIN_MESSAGE_KEY_CHARS = 32


def message_key_from_env(env: Environ, name: str = "O365_MESSAGE_KEY") -> Secret | None:
    """The optional key that signs queue messages; refused when too short to resist guessing."""
    key = get_secret(env, name)
    if key is not None and len(key.reveal()) < MIN_MESSAGE_KEY_CHARS:
        raise ConfigError(
            name, f"is too short: use at least {MIN_MESSAGE_KEY_CHARS} random characters (openssl rand -base64 32)"
        )
    return key


def schedule_from_env(env: Environ, name: str = "O365_LIST_SCHEDULE") -> str:
    """The lister's NCRONTAB schedule: six fields (second minute hour day month day-of-week).

    A TimeSpan (``00:05:00``) works only on App Service plans; this app runs on Flex Consumption,
    where the timer accepts NCRONTAB only, so a TimeSpan is refused here with that reason.
    """
    text = get_str(env, name, DEFAULT_SCHEDULE) or DEFAULT_SCHEDULE
    if _TIMESPAN.fullmatch(text):
        raise ConfigError(
            name,
            f"{text!r} is a TimeSpan, which works only on App Service plans; on Flex Consumption use an NCRONTAB "
            f"expression (e.g. {DEFAULT_SCHEDULE!r}: every 5 minutes)",
        )
    fields = text.split()
    expected = "six fields: second minute hour day month day-of-week, e.g. " + repr(DEFAULT_SCHEDULE)
    if len(fields) != len(_CRON_FIELDS):
        raise ConfigError(name, f"{text!r} has {len(fields)} field(s); an NCRONTAB expression has {expected}")
    for value, (field_name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        if not _cron_field_ok(value, low, high, names):
            raise ConfigError(
                name, f"{text!r}: the {field_name} field {value!r} is not valid ({low}-{high}, *, a-b, */n, lists)"
            )
    return text


def _cron_field_ok(text: str, low: int, high: int, names: dict[str, int]) -> bool:
    def number(item: str) -> int | None:
        if item.lower() in names:
            return names[item.lower()]
        if re.fullmatch(r"[0-9]{1,2}", item) and low <= int(item) <= high:
            return int(item)
        return None

    for part in text.split(","):
        base, slash, step = part.partition("/")
        if slash and not (re.fullmatch(r"[0-9]{1,2}", step) and 0 < int(step) <= high + 1):
            return False
        if base == "*":
            continue
        first, dash, last = base.partition("-")
        start = number(first)
        if start is None or (dash and ((end := number(last)) is None or end < start)):
            return False
    return True


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
    g = Gatherer()  # every timing setting is checked, and all errors are reported together
    window = g.get_int(env, "O365_WINDOW_MINUTES", 360, minimum=1, maximum=24 * 60)
    policy = CollectionPolicy(
        window=dt.timedelta(minutes=window),
        overlap=dt.timedelta(minutes=g.get_int(env, "O365_OVERLAP_MINUTES", 60, minimum=0, maximum=24 * 60)),
        end_delay=dt.timedelta(minutes=g.get_int(env, "O365_END_DELAY_MINUTES", 5, minimum=0, maximum=24 * 60)),
        # An hour: far beyond any function timeout, and the next run carries on anyway.
        list_budget=dt.timedelta(seconds=g.get_int(env, "O365_LIST_BUDGET_SECONDS", 240, minimum=1, maximum=3600)),
        # The command-line runner holds queue messages invisible for the lease: the queue's 7-day limit.
        claim_lease=dt.timedelta(
            # At least a minute: shorter leases lapse between renewals under a slow storage round trip.
            seconds=g.get_int(env, "O365_CLAIM_LEASE_SECONDS", 600, minimum=60, maximum=QUEUE_MAX_VISIBILITY_SECONDS)
        ),
        late_lookback=dt.timedelta(hours=g.get_int(env, "O365_LATE_LOOKBACK_HOURS", 24, minimum=0, maximum=7 * 24)),
        late_sweep=dt.timedelta(minutes=g.get_int(env, "O365_LATE_SWEEP_MINUTES", 60, minimum=0, maximum=24 * 60)),
    )
    g.raise_if_any()
    return policy


def health_from_env(env: Environ) -> HealthPolicy:
    g = Gatherer()
    policy = HealthPolicy(
        max_listing_age=dt.timedelta(
            minutes=g.get_int(env, "O365_HEALTH_MAX_LISTING_AGE_MINUTES", 30, minimum=1, maximum=7 * 24 * 60)
        ),
        max_throttled=g.get_int(env, "O365_HEALTH_MAX_THROTTLED", 50, minimum=0, maximum=1_000_000),
        # A year: losses older than that are history, not an alert.
        lost_data_lookback=dt.timedelta(
            hours=g.get_int(env, "O365_HEALTH_LOST_DATA_HOURS", 24, minimum=0, maximum=366 * 24)
        ),
        max_poison=g.get_int(env, "O365_HEALTH_MAX_POISON", 0, minimum=0, maximum=1_000_000),
        client_secret_expires=g.read(lambda: client_secret_expires_from_env(env), None),
        # Secrets last at most two years: a longer warning would always be on.
        secret_expiry_warning=dt.timedelta(
            days=g.get_int(env, "O365_HEALTH_SECRET_EXPIRY_DAYS", 30, minimum=0, maximum=730)
        ),
    )
    g.raise_if_any()
    return policy


def _queue_name(env: Environ, name: str, default: str) -> str:
    value = (get_str(env, name) or default).lower()
    # Azure queue names: 3-63 chars, lower-case letters, digits and single hyphens; "-poison" must fit too.
    ok = 3 <= len(value) <= 56 and value.isascii() and value[0].isalnum() and value[-1].isalnum() and "--" not in value
    if not ok or not all(c.isalnum() or c == "-" for c in value):
        raise ConfigError(name, f"{value!r} is not a valid queue name (3-56 lower-case letters, digits, hyphens)")
    return value


def _optional_table_name(env: Environ, name: str) -> str | None:
    value = get_str(env, name)
    return _table_name(env, name, value) if value is not None else None


def _table_name(env: Environ, name: str, default: str) -> str:
    value = get_str(env, name) or default
    # isascii: str.isalnum() accepts any script's letters, Azure only ASCII ones.
    if not (3 <= len(value) <= 63 and value.isascii() and value[0].isalpha() and value.isalnum()):
        raise ConfigError(
            name, f"{value!r} is not a valid table name (3-63 letters and digits, starting with a letter)"
        )
    return value
