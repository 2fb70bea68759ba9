"""Wires settings to clients once per process, for the Functions triggers and the command line alike.

``Collector`` owns the long-lived objects (storage clients, one API client per tenant with its token
cache, the sinks). ``run_lister`` and ``process_message`` are what ``function_app.py`` calls; the
CLI calls the same two through a ``Collector`` of its own, so both paths run the same code.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Mapping
from functools import partial

from .arrivals import ArrivalStore
from .auth import TokenProvider
from .checkpoints import CheckpointStore, Ledger, StreamLeases, UnitMemos
from .config import Settings
from .deferral import MAX_VISIBILITY, DeferralStore, NamedSink, expiry_message, plan_deferral, waiting_for
from .errors import (
    CollectorError,
    ConfigError,
    PermanentError,
    RefusedMessageError,
    RetryableError,
    UnitNotReadyError,
    UnknownTenantError,
)
from .fetcher import Fetcher, FetchResult, Outcome
from .health import health_response
from .lister import Lister, ListerResult, StreamResult, TaskQueue
from .management_api import ManagementApiClient, shared_session
from .models import FetchTask, sign_message, signature_problem
from .pacing import shared_pacing
from .poison import ReplayResult, auto_replay_poison
from .queue_runner import POISONED_MESSAGE
from .redaction import install_log_redaction, printable, scrub_exception, summary
from .sinks.base import Sink
from .sources.base import SourceClient
from .sources.catalog import is_graph_stream
from .sources.graph import graph_tokens
from .sources.graph_source import graph_client
from .status import StatusStore
from .storage import StorageClients, ensure_queue, ensure_table
from .telemetry import log_fetch_result
from .tenant_config import TenantConfig
from .tenants import TableTenantRegistry
from .webhook import PollMarkingQueue, WebhookReceiver

log = logging.getLogger(__name__)


def quiet_sdk_loggers() -> None:
    """Azure SDK loggers log every request at INFO; keep operators' logs to what the collector says."""
    for name in ("azure", "msal", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _visibility_seconds(delay: dt.timedelta) -> int:
    return min(int(delay.total_seconds()), int(MAX_VISIBILITY.total_seconds()))


class ListingFailedError(CollectorError):
    """At least one tenant/content type could not be listed; the message says which and why."""


class SigningQueue:
    """The content queue as the lister sees it, with every message signed (``O365_MESSAGE_KEY``)."""

    def __init__(self, queue: TaskQueue, key: bytes) -> None:
        self._queue = queue
        self._key = key

    def send_message(self, content: str) -> object:
        return self._queue.send_message(sign_message(content, self._key))


class Collector:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        storage: StorageClients | None = None,
        sinks: list[Sink] | None = None,
        environ: Mapping[str, str] | None = None,
        defer_visibility: Callable[[dt.timedelta], int] | None = None,
    ) -> None:
        """``defer_visibility`` turns a deferral's delay into the copy's visibility timeout in seconds
        (tests make it 0 and move their clock instead of waiting)."""
        self.settings = settings
        # Registry entries may reference app settings (secrets) by name: resolved against these.
        self._environ: Mapping[str, str] = environ if environ is not None else os.environ
        self.clock = clock
        storage = storage or StorageClients(settings.storage)
        self.queue = storage.queue(settings.content_queue)
        self.poison_queue = storage.queue(settings.poison_queue)
        # The listing fan-out (o365collector.listing_queue): list messages, and who lists each stream now.
        self.list_queue = storage.queue(settings.listing.queue)
        self.list_poison_queue = storage.queue(settings.listing.queue + "-poison")
        self._checkpoint_table = storage.table(settings.checkpoint_table)
        self._ledger_table = storage.table(settings.ledger_table)
        self.checkpoints = CheckpointStore(self._checkpoint_table)
        self.stream_leases = StreamLeases(self._checkpoint_table)
        self.ledger = Ledger(self._ledger_table)
        self.unit_memos = UnitMemos(self._ledger_table)
        self._status_table = storage.table(settings.status_table)
        self.status = StatusStore(self._status_table)
        self.deferrals = DeferralStore(self._status_table)
        self.arrivals = ArrivalStore(storage.table(settings.push.arrival_table))  # push mode only
        self._defer_visibility = defer_visibility or _visibility_seconds
        self.sinks: list[Sink] = sinks if sinks is not None else [s.create() for s in settings.sinks]
        self._tenants = {t.tenant_id: t for t in settings.tenants}
        self._registry = TableTenantRegistry(storage.table(settings.tenant_table)) if settings.tenant_table else None
        # The table registry's rows skipped at the last reading (each names the row and field), for
        # ``status``, ``health`` and ``check``: a bad row is reported, never silently left uncollected.
        self.registry_problems: list[ConfigError] = []
        self._apis: dict[str, ManagementApiClient] = {}
        self._graph_clients: dict[tuple[str, str], SourceClient] = {}
        # One Graph token cache per tenant, shared by its Graph streams (one sign-in, not one per stream).
        self._graph_tokens: dict[str, TokenProvider] = {}
        self._lock = threading.Lock()
        # One keep-alive pool for every tenant's API and token calls: hundreds of tenants on the same
        # hosts should not cost hundreds of TLS handshakes per run.
        self._http = shared_session(pool_size=max(8, settings.list_concurrency * 2))
        # The API budget shared with the other instances on this storage account (O365_SHARED_PACING).
        self.pacing = shared_pacing(settings, storage)

    def tenants(self, *, refresh: bool = True) -> tuple[TenantConfig, ...]:
        """The tenants to collect; a table registry is re-read so added or disabled tenants take effect."""
        if self._registry is not None and refresh:
            reading = self._registry.load(
                self._environ, sink_names=tuple(s.name for s in self.settings.sinks), now=self.clock()
            )
            loaded = reading.tenants
            with self._lock:
                self.registry_problems = reading.problems
                for tenant_id in [t for t in self._tenants if t not in {x.tenant_id for x in loaded}]:
                    self._forget_clients(tenant_id)
                for tenant in loaded:
                    if self._tenants.get(tenant.tenant_id) != tenant:
                        self._forget_clients(tenant.tenant_id)  # credentials, cloud or sources changed
                self._tenants = {t.tenant_id: t for t in loaded}
        return tuple(self._tenants.values())

    def _forget_clients(self, tenant_id: str) -> None:
        """Drop a tenant's clients (caller holds the lock): the next call builds them from its new entry."""
        self._apis.pop(tenant_id, None)
        self._graph_tokens.pop(tenant_id, None)
        for key in [k for k in self._graph_clients if k[0] == tenant_id]:
            del self._graph_clients[key]

    def sinks_for(self, tenant_id: str) -> list[Sink]:
        """The sinks a tenant's records go to: all, or the entry's ``sinks`` subset."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None or tenant.sinks is None:
            return self.sinks
        return [sink for sink in self.sinks if sink.name in tenant.sinks]

    def ensure_resources(self) -> None:
        """Create the queues and tables if missing (idempotent; the template creates them in Azure)."""
        ensure_queue(self.queue)
        ensure_queue(self.poison_queue)
        ensure_table(self._checkpoint_table)
        ensure_table(self._ledger_table)
        ensure_table(self._status_table)
        if self.pacing is not None:
            ensure_table(self.pacing.table)
        if self.settings.listing.fanout:
            ensure_queue(self.list_queue)
            ensure_queue(self.list_poison_queue)
        if self.settings.push.enabled:
            self.arrivals.ensure_table()
        if self._registry is not None:
            self._registry.ensure_table()

    def api(self, tenant_id: str) -> ManagementApiClient:
        with self._lock:
            client = self._apis.get(tenant_id)
            if client is not None:
                return client
        if tenant_id not in self._tenants and self._registry is not None:
            self.tenants()  # a tenant added since the last listing run
        with self._lock:
            client = self._apis.get(tenant_id)
            if client is None:
                tenant = self._tenants.get(tenant_id)
                if tenant is None:
                    raise self._unknown_tenant(printable(tenant_id))
                client = ManagementApiClient(
                    tenant,
                    policy=self.settings.http,
                    session=self._http,
                    tokens=TokenProvider(tenant, session=self._http),
                    pacer=self.pacing.pacer(tenant.publisher_id) if self.pacing is not None else None,
                )
                self._apis[tenant_id] = client
            return client

    def client(self, tenant_id: str, stream: str) -> SourceClient:
        """The client of ``stream``'s source for ``tenant_id`` (``sources.base``): what the lister and the
        fetcher call. A stream no source has is answered by the audit feed's client, which refuses it."""
        if not is_graph_stream(stream):
            return self.api(tenant_id)
        with self._lock:
            client = self._graph_clients.get((tenant_id, stream))
            if client is not None:
                return client
        tenant = self._tenant(tenant_id)
        with self._lock:
            client = self._graph_clients.get((tenant_id, stream))
            if client is None:
                tokens = self._graph_tokens.get(tenant_id)
                if tokens is None:
                    tokens = self._graph_tokens[tenant_id] = graph_tokens(tenant, session=self._http)
                client = graph_client(
                    tenant,
                    stream,
                    tokens=tokens,
                    settings=self.settings.graph,
                    session=self._http,
                    clock=self.clock,
                    claim_lease=self.settings.policy.claim_lease,
                    policy=self.settings.http,
                )
                self._graph_clients[(tenant_id, stream)] = client
            return client

    def _tenant(self, tenant_id: str) -> TenantConfig:
        if tenant_id not in self._tenants and self._registry is not None:
            self.tenants()  # a tenant added since the last listing run
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            raise self._unknown_tenant(printable(tenant_id))
        return tenant

    def _unknown_tenant(self, tenant_id: str) -> UnknownTenantError:
        """The error naming the setting that lists this deployment's tenants (not O365_TENANT_ID when
        the tenants come from O365_TENANTS or the table: that setting plays no part then)."""
        err = UnknownTenantError(tenant_id)
        if self.settings.tenant_table:
            source = "O365_TENANT_TABLE"
        elif (self._environ.get("O365_TENANTS") or "").strip():
            source = "O365_TENANTS"
        else:
            return err
        err.setting = source
        err.args = (f"{source}: {err.problem}",)
        return err

    def lister(
        self,
        on_window: Callable[[StreamResult], None] | None = None,
        *,
        tenants: tuple[TenantConfig, ...] | None = None,
        window_budget: int | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> Lister:
        """The lister over every tenant, or over ``tenants`` at most ``window_budget`` windows per stream
        (one list message's share, o365collector.listing_queue), reading ``checkpoints`` (this collector's
        by default; a list message passes the ones it read with its leases)."""
        return Lister(
            tenants=self.tenants() if tenants is None else tenants,
            window_budget=window_budget,
            concurrency=self.settings.list_concurrency,
            policy=self.settings.policy,
            client_for=self.client,
            checkpoints=self.checkpoints if checkpoints is None else checkpoints,
            queue=self._lister_queue(),
            clock=self.clock,
            on_window=on_window,
        )

    def _lister_queue(self) -> TaskQueue:
        """In push mode the lister's messages are recorded as polled (for the push/poll counts)."""
        queue = self._task_queue()
        return PollMarkingQueue(queue, self.arrivals, self.clock) if self.settings.push.enabled else queue

    def webhook_receiver(self) -> WebhookReceiver:
        return WebhookReceiver(
            auth_id=self.settings.push.auth_id,
            tenants=lambda refresh: self.tenants(refresh=refresh),
            queue=self._task_queue(),
            arrivals=self.arrivals,
            clock=self.clock,
        )

    def _task_queue(self) -> TaskQueue:
        key = self.settings.message_key
        return self.queue if key is None else SigningQueue(self.queue, key.reveal().encode())

    def fetcher(self) -> Fetcher:
        return Fetcher(
            ledger=self.ledger,
            # Named, so a deferral can say which sink it waits for.
            sinks_for_tenant=lambda tenant_id: [NamedSink(s) for s in self.sinks_for(tenant_id)],
            client_for=self.client,
            history=self.unit_memos,
            claim_lease=self.settings.policy.claim_lease,
            clock=self.clock,
            record_filter=self.settings.record_filter,
        )

    def run_lister(self) -> ListerResult:
        result = self.lister().run()
        self.record_listing(result)
        return result

    def record_listing(self, result: ListerResult) -> None:
        """After each listing run (timer and command line): one status upsert per stream (for ``status``
        and ``health``), then the automatic replay of the poison queue when it is due; never fails the run."""
        try:
            self.status.record_runs(result.streams, self.clock())
        except Exception as err:  # status is advisory: the listing itself succeeded or failed on its own
            log.warning("could not record the status of this listing run: %s", err)
        self.auto_replay()

    def refusal(self, task: FetchTask) -> str | None:
        """Why the fetcher would refuse ``task`` (forged or misrouted), or None: replay leaves those in poison."""
        try:
            self.fetcher().accepted_client(task)
        except RefusedMessageError as err:
            return err.reason
        return None

    def auto_replay(self) -> ReplayResult | None:
        """Replay the poison queue once every sink's check passes (``O365_AUTO_REPLAY_POISON``)."""
        config = self.settings.deferral
        if not config.auto_replay:
            return None
        try:
            return auto_replay_poison(
                self.poison_queue,
                self.queue,
                self.ledger,
                self.sinks,
                self.deferrals,
                now=self.clock(),
                interval=config.auto_replay_interval,
                refusal=self.refusal,
            )
        except Exception as err:  # the replay is a convenience: the listing run stands on its own
            log.warning("could not replay the poison queue automatically: %s", summary(str(err)))
            return None

    def process_message(self, body: str | bytes, *, message_id: str, dequeue_count: int | None = None) -> FetchResult:
        return self.handle_message(body, message_id=message_id, dequeue_count=dequeue_count)[1]

    def handle_message(
        self, body: str | bytes, *, message_id: str, dequeue_count: int | None = None
    ) -> tuple[FetchTask, FetchResult]:
        """The queue handler: read, check and process one message. A refused message (forged, misrouted,
        a blob that can never ship) is put on the poison queue here and completes (``Outcome.REFUSED``),
        so the queue does not redeliver it ``maxDequeueCount`` times. A blob a sink or the API still fails
        on the last delivery the queue allows (``dequeue_count``) is deferred: a copy goes back on the
        queue with a growing delay and this delivery completes (``Outcome.DEFERRED``; see
        o365collector.deferral), so an outage never poisons."""
        task = FetchTask.from_message(body)
        try:
            key = self.settings.message_key
            problem = None if key is None else signature_problem(body, key.reveal().encode())
            if problem is not None:
                raise RefusedMessageError(problem)
            result = self.process_task(task, message_id=message_id)
        except RefusedMessageError as err:
            result = self._refuse(task, body, message_id, err.reason)
        except UnitNotReadyError as err:
            return task, self._wait_for_previous(task, body, err)
        except RetryableError as err:
            last = dequeue_count is not None and dequeue_count >= self.settings.queue_runner.max_dequeue_count
            deferred = self._defer(task, err, last_delivery=last)
            if deferred is None:
                raise
            return task, deferred
        except PermanentError:
            self._forget_deferral(task)  # on its way to the poison queue: no longer waiting
            raise
        if result.outcome is not Outcome.SKIPPED_BUSY:
            self._forget_deferral(task)
        return task, result

    def _defer(self, task: FetchTask, err: RetryableError, *, last_delivery: bool) -> FetchResult | None:
        """Put a copy of ``task`` back on the queue, invisible for its backoff; None if it is not deferred
        (not a sink or API failure, or the copy could not be written: the host's redelivery then applies)."""
        what = waiting_for(err, last_delivery=last_delivery)
        if what is None:
            return None
        now = self.clock()
        again = task.deferred()
        plan = plan_deferral(again, now, self.settings.deferral.backoff_max, err.retry_after)
        text = again.to_message()
        key = self.settings.message_key
        if key is not None:
            text = sign_message(text, key.reveal().encode())
        fields = {"tenant_id": task.tenant_id, "content_type": task.content_type, "content_id": task.content_id}
        try:
            self.queue.send_message(text, visibility_timeout=self._defer_visibility(plan.delay))
        except Exception as send_err:
            log.warning("could not defer content %s (%s): %s", task.content_id, what, send_err, extra=fields)
            return None
        cause = summary(f"{type(err).__name__}: {err}")
        self._record_status(task, partial(self.deferrals.record, again, plan, what, cause, now))
        minutes = plan.delay.total_seconds() / 60
        if plan.near_expiry:
            # Data loss is coming unless someone fixes the sink: that is what ERROR is for.
            log.error("content %s: %s", task.content_id, expiry_message(plan.expires_in, what, cause), extra=fields)
        elif again.attempt == 1:
            log.warning(
                "content %s deferred %g min while %s is failing: %s",
                *(task.content_id, minutes, what, cause),
                extra=fields,
            )
        else:
            log.debug("content %s deferred again (attempt %d, %g min)", task.content_id, again.attempt, minutes)
        return FetchResult(Outcome.DEFERRED, reason=f"waiting for {what}: {cause}")

    def _wait_for_previous(self, task: FetchTask, body: str | bytes, err: UnitNotReadyError) -> FetchResult:
        """Put the message back as it came, invisible for ``retry_after``: waiting for the unit before it
        is no failure, so it neither counts toward the poison queue nor shows as a deferral."""
        delay = dt.timedelta(seconds=err.retry_after or 30)
        text = body if isinstance(body, str) else body.decode()
        self.queue.send_message(text, visibility_timeout=self._defer_visibility(delay))
        fields = {"tenant_id": task.tenant_id, "content_type": task.content_type, "content_id": task.content_id}
        log.info("content %s waits %g s: %s", task.content_id, delay.total_seconds(), err, extra=fields)
        return FetchResult(Outcome.WAITING, reason=str(err))

    def _forget_deferral(self, task: FetchTask) -> None:
        if task.attempt:  # only a deferred copy has a row: a healthy pipeline writes nothing per blob
            self._record_status(task, partial(self.deferrals.clear, task))

    def _refuse(self, task: FetchTask, body: str | bytes, message_id: str, reason: str) -> FetchResult:
        self.poison_queue.send_message(body if isinstance(body, str) else body.decode("utf-8", "replace"))
        extra = {
            "tenant_id": printable(task.tenant_id),
            "content_type": printable(task.content_type),
            "content_id": printable(task.content_id),
        }
        log.error(
            "%s: message %s refused (content %s of tenant %s): %s",
            POISONED_MESSAGE,
            printable(message_id),
            extra["content_id"],
            extra["tenant_id"],
            reason,
            extra=extra,
        )
        return FetchResult(Outcome.REFUSED, reason=reason)

    def process_task(self, task: FetchTask, *, message_id: str) -> FetchResult:
        """Fetch and ship one blob; fetch failures and losses are also noted in the status table.

        ``RefusedMessageError`` is raised untouched and not noted: a forged message's ids are not to
        be written anywhere (its handler poisons it)."""
        try:
            result = self.fetcher().process(task, delivery_id=message_id)
        except RefusedMessageError:
            raise
        except Exception as err:
            self._record_status(task, partial(self.status.record_fetch_error, task, err, self.clock()))
            raise
        if result.outcome is Outcome.LOST:
            reason = result.reason or "content expired at the source"
            self._record_status(task, partial(self.status.record_lost, task, reason, self.clock()))
        elif result.outcome is Outcome.SHIPPED:  # summed in memory; written at most once a minute per stream
            self._record_status(task, partial(self.status.record_shipped, task, result.records, self.clock()))
        return result

    @staticmethod
    def _record_status(task: FetchTask, write: Callable[[], None]) -> None:
        try:
            write()
        except Exception as err:  # status is advisory: never turn a fetch outcome into a different one
            extra = {"tenant_id": task.tenant_id, "content_type": task.content_type, "content_id": task.content_id}
            log.warning("could not record the status of content %s: %s", task.content_id, err, extra=extra)

    def close(self) -> None:
        try:
            self.status.flush_shipped(self.clock())  # the shipped sums not written yet
        except Exception as err:  # status is advisory
            log.warning("could not record the shipped totals: %s", err)
        for sink in self.sinks:
            sink.close()


_collector: Collector | None = None
_collector_lock = threading.Lock()


def collector(environ: Mapping[str, str] | None = None) -> Collector:
    """The process-wide collector for the Functions host, built on first use from the app settings."""
    global _collector
    install_log_redaction()  # first: even a settings error is logged through it
    with _collector_lock:
        if _collector is None:
            quiet_sdk_loggers()
            env = os.environ if environ is None else environ
            built = Collector(Settings.from_env(env), environ=env)
            built.ensure_resources()
            _collector = built
        return _collector


def reset_collector() -> None:
    """Forget the process-wide collector (tests change settings between cases)."""
    global _collector
    with _collector_lock:
        if _collector is not None:
            _collector.close()
        _collector = None


def run_lister(*, past_due: bool = False) -> ListerResult:
    if past_due:
        log.info("timer is past due: the run lists everything since the checkpoints anyway")
    result = collector().run_lister()
    failed = [s for s in result.streams if not s.ok]
    if failed:
        # The host logs this message as is: redacted here, like everything we log ourselves.
        names = "; ".join(f"{s.tenant_id}/{s.content_type}: {summary(s.error or '')}" for s in failed)
        raise ListingFailedError(f"{len(failed)} of {len(result.streams)} streams failed: {names}")
    return result


def process_message(*, body: str | bytes, message_id: str, dequeue_count: int) -> FetchResult:
    """The queue trigger's work. Raising makes the host redeliver; the last failure is logged as poisoned."""
    active = collector()
    try:
        task, result = active.handle_message(body, message_id=message_id, dequeue_count=dequeue_count)
    except Exception as err:
        if dequeue_count >= active.settings.queue_runner.max_dequeue_count:
            # The host moves the message to the poison queue after this attempt; say so where alerts look.
            log.error("%s: message %s after %d attempts: %s", POISONED_MESSAGE, message_id, dequeue_count, err)
        # The host prints the escaping exception and its causes itself, outside our logging.
        scrub_exception(err)
        raise
    log_fetch_result(task, result)
    return result


def webhook(headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
    """The webhook function's answer to one POST from the Management Activity API (see ``webhook``)."""
    global _receiver
    active = collector()
    with _receiver_lock:
        if _receiver is None or _receiver[0] is not active:
            _receiver = (active, active.webhook_receiver())
        receiver = _receiver[1]
    answer = receiver.handle(headers, body)
    return answer.status, answer.content()


_receiver: tuple[Collector, WebhookReceiver] | None = None
_receiver_lock = threading.Lock()


def health() -> tuple[int, bytes]:
    """The health function's answer: (200 or 503, the status report as JSON)."""
    return health_response(collector)
