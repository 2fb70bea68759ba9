"""``Simulator``: a local, faithful Office 365 Management Activity API with its token endpoint.

It ties the parts together: ``Store`` (tenants, subscriptions, blobs), ``TokenService`` (Entra),
``ActivityFeed`` (the API), ``FaultInjector`` and ``SimulatorStats``, served by ``HttpsServer`` on
127.0.0.1. Each request goes through one pipeline: classify the route, count it, maybe inject a
fault, add the configured latency, answer, count the answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from .assertions import CertificateAssertions
from .certs import CertFiles, write_certificates
from .data import Record, SimBlob
from .faults import Fault, FaultInjector, fault_response
from .feed import ActivityFeed
from .feed import match as match_feed
from .graph import GraphService
from .graph import match as match_graph
from .graph_data import GraphRecord
from .identity import IdentityService
from .keyvault import KeyVaultService
from .keyvault import match as match_vault
from .options import SimulatorConfig, SimulatorOptions
from .push import Pusher, PushReport
from .quota import quota_exceeded
from .server import LOOPBACK, HttpsServer
from .stats import RequestLog, SimulatorStats
from .store import Store, TenantSpec
from .times import as_utc, system_clock
from .tokens import TokenService
from .tokens import match as match_token
from .wire import FEED_HEADERS, Request, Response, aspnet_message, not_found

logger = logging.getLogger(__name__)

__all__ = ["Fault", "SimBlob", "Simulator", "SimulatorConfig", "SimulatorOptions", "TenantSpec"]


class Simulator:
    """A Management Activity API and Entra token endpoint on ``https://127.0.0.1:PORT``.

    Usable as a context manager (``with Simulator(...).start() as sim``). Ground truth is read with
    ``blobs()``; what the client did is in ``stats``; behaviour is steered with ``faults`` and ``options``.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._clock = self.config.now or system_clock
        self.options = SimulatorOptions()
        self.stats = SimulatorStats()
        self.faults = FaultInjector(self.config.seed)
        self._store = Store(self.config.seed, self.now, self._our_api_url)
        self._tokens = TokenService(self._store, self.now, self.config.token_lifetime)
        # Certificate sign-in (assertions.py) and the Key Vault holding the certificates (keyvault.py).
        self.certificates = self._tokens.certificates = CertificateAssertions(self.now, self._our_api_url)
        self.key_vault = KeyVaultService(self.now, self._our_api_url)
        # The managed identity endpoint and multi-tenant apps' federated credentials (identity.py).
        self.identity = IdentityService(self._tokens, self.now, self.config.token_lifetime)
        self._tokens.federated = self.identity.check_federated
        self.identity.vault_token = self.key_vault.token_for  # the identity's token for the vault
        self._feed = ActivityFeed(self._store, self._tokens, self.config, self.options, self.now, self._our_api_url)
        # Microsoft Graph's sign-ins, directory audits and message trace, on the same origin (graph.py).
        self.graph = GraphService(
            self._store, self._tokens, self.options, self.now, self._our_api_url, self.config.seed
        )
        self._server: HttpsServer | None = None
        self._port: int | None = None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._ca_file: Path | None = None
        self.pusher = Pusher(self._store, self.now, self.options.push, lambda: self.ca_file, self.config.seed)
        self._feed.pusher = self.pusher
        self._push_stop = threading.Event()
        self._push_thread: threading.Thread | None = None
        # The server's certificate and key: a webhook listener may serve with them (the pusher trusts their CA).
        self.cert_files: CertFiles | None = None

    # -- clock ----------------------------------------------------------------------------------

    def now(self) -> dt.datetime:
        """The simulator's current time (aware UTC)."""
        return as_utc(self._clock())

    def set_clock(self, clock: Callable[[], dt.datetime] | None) -> None:
        """Replace the clock (None: the real one); takes effect on the next request."""
        self._clock = clock or system_clock

    # -- tenants, subscriptions, blobs ----------------------------------------------------------

    def add_tenant(self, spec: TenantSpec) -> None:
        self._store.add_tenant(spec)

    def tenants(self) -> list[TenantSpec]:
        return self._store.tenants()

    def generate(
        self,
        tenant_id: str,
        content_type: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        blob_every: dt.timedelta,
        records_per_blob: tuple[int, int] = (1, 20),
        listing_delay: dt.timedelta = dt.timedelta(0),
        expiration: dt.timedelta = dt.timedelta(days=7),
        record_lag: tuple[dt.timedelta, dt.timedelta] = (dt.timedelta(seconds=30), dt.timedelta(minutes=15)),
        duplicate_rate: float = 0.0,
    ) -> list[SimBlob]:
        """Blobs with ``contentCreated`` every ``blob_every`` in ``[start, end)`` (plus <1 s jitter).

        ``listing_delay``: how long after ``contentCreated`` a blob becomes listable and fetchable.
        ``record_lag``: how long before ``contentCreated`` its events happened (their ``CreationTime``).
        ``duplicate_rate``: share of records that repeat an earlier record of this call, same ``Id`` ([TRB]).
        Deterministic: the same seed and calls give the same blobs, ids and records.
        """
        return self._store.generate(
            tenant_id,
            content_type,
            start,
            end,
            blob_every=blob_every,
            records_per_blob=records_per_blob,
            listing_delay=listing_delay,
            expiration=expiration,
            record_lag=record_lag,
            duplicate_rate=duplicate_rate,
        )

    def add_blob(
        self,
        tenant_id: str,
        content_type: str,
        created: dt.datetime,
        records: list[Record] | bytes,
        *,
        available_at: dt.datetime | None = None,
        expiration: dt.datetime | None = None,
        content_id: str | None = None,
        listing_entry: Callable[[dict[str, Any]], object] | None = None,
    ) -> SimBlob:
        """A hand-made blob. ``records`` may be raw bytes, served verbatim (malformed or huge bodies);
        ``listing_entry`` rewrites the blob's entry in listings (a malformed or mislabelled entry)."""
        return self._store.add_blob(
            tenant_id,
            content_type,
            created,
            records,
            available_at=available_at,
            expiration=expiration,
            content_id=content_id,
            listing_entry=listing_entry,
        )

    def blobs(self, tenant_id: str, content_type: str | None = None) -> list[SimBlob]:
        """Every blob of the tenant (optionally of one content type), ordered by ``contentCreated``."""
        return self._store.blobs(tenant_id, content_type)

    def expire(self, content_id: str) -> None:
        """From now on, fetching this blob answers AF20051."""
        self._store.expire(content_id)

    def disable_subscription(self, tenant_id: str, content_type: str, by: str = "a tenant admin") -> None:
        """Listing and fetching answer AF20023 ("disabled by {by}") until ``/start`` re-enables it."""
        self._store.disable_subscription(tenant_id, content_type, by, create=True)

    def subscriptions(self, tenant_id: str) -> list[dict[str, object]]:
        return list(self._store.list_subscriptions(tenant_id))

    def revoke_tokens(self) -> None:
        """Forget every issued token: the next API call with one answers 401."""
        self._tokens.revoke_all()

    # -- Microsoft Graph logs (graph.py, graph_data.py) -----------------------------------------

    def generate_graph(
        self,
        tenant_id: str,
        stream: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        every: dt.timedelta = dt.timedelta(minutes=5),
        lag: tuple[dt.timedelta, dt.timedelta] = (dt.timedelta(seconds=30), dt.timedelta(minutes=5)),
    ) -> list[GraphRecord]:
        """Records of a Graph stream (``Entra.SignIns``, ``Entra.DirectoryAudits``, ``Exchange.MessageTrace``)
        about every ``every`` in ``[start, end)``; each is served from its time + a lag drawn in ``lag``.
        Records older than the stream's retention are kept (ground truth) but never served."""
        return self.graph.records.generate(tenant_id, stream, start, end, every=every, lag=lag)

    def add_graph_record(
        self,
        tenant_id: str,
        stream: str,
        time: dt.datetime,
        *,
        available_at: dt.datetime | None = None,
        record_id: str | None = None,
    ) -> GraphRecord:
        """One hand-made Graph record (served from ``available_at``, default: its time)."""
        return self.graph.records.add(tenant_id, stream, time, available_at=available_at, record_id=record_id)

    def graph_records(self, tenant_id: str, stream: str | None = None) -> list[GraphRecord]:
        """Ground truth: every Graph record generated for the tenant (of one stream if given), by (time, id)."""
        return self.graph.records.records(tenant_id, stream)

    # -- server ---------------------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        cert_dir = self.config.cert_dir
        if cert_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="o365sim-")
            cert_dir = Path(self._tempdir.name)
        try:
            files = write_certificates(cert_dir)
            self._server = HttpsServer(
                self._dispatch,
                cert_file=files.cert_file,
                key_file=files.key_file,
                port=self.config.port,
                date_source=lambda: self.now() + self.options.date_skew,
            )
        except BaseException:
            self.stop()
            raise
        self._port = self._server.port
        self._ca_file = files.ca_file
        self.cert_files = files
        self._server.start()
        logger.info("simulator listening on %s", self.api_url)
        if self.config.push_interval_seconds:
            self._push_stop.clear()
            self._push_thread = threading.Thread(target=self._push_loop, name="simulator-push", daemon=True)
            self._push_thread.start()
        return self

    # -- webhook push ---------------------------------------------------------------------------

    def deliver_notifications(self) -> PushReport:
        """POST every due webhook notification now, synchronously (push.py); tests call it by hand."""
        return self.pusher.deliver()

    def _push_loop(self) -> None:
        while not self._push_stop.wait(self.config.push_interval_seconds):
            try:
                self.pusher.deliver()
            except Exception:  # the background pusher must outlive one bad delivery
                logger.exception("webhook delivery failed")

    def stop(self) -> None:
        if self._push_thread is not None:
            self._push_stop.set()
            self._push_thread.join()
            self._push_thread = None
        self.identity.stop()
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        """Base URL of the API (the collector's O365_API_URL)."""
        return self._our_api_url()

    @property
    def authority_url(self) -> str:
        """Base URL of the token endpoint (the collector's O365_AUTHORITY_HOST): the same server."""
        return self._our_api_url()

    @property
    def key_vault_url(self) -> str:
        """The Key Vault stand-in's URI (the collector's O365_CERTIFICATE_KEY_VAULT_URI): the same server."""
        return self._our_api_url() + "/"

    @property
    def ca_file(self) -> str:
        """PEM file of the CA that signed the server certificate (REQUESTS_CA_BUNDLE)."""
        if self._ca_file is None:
            raise RuntimeError("simulator not started: no certificate yet")
        return str(self._ca_file)

    def _our_api_url(self) -> str:
        if self._port is None:
            raise RuntimeError("simulator not started: the port is chosen by start()")
        return f"https://{LOOPBACK}:{self._port}"

    # -- request pipeline -----------------------------------------------------------------------

    def _dispatch(self, request: Request) -> Response | None:
        arrived = time.monotonic()
        feed_route = match_feed(request.segments)
        graph_route = None if feed_route else match_graph(request.segments)
        token_route = None if feed_route or graph_route else match_token(request.segments)
        vault_route = None if feed_route or graph_route or token_route else match_vault(request.segments)
        tenant: str | None
        if feed_route is not None:
            route, tenant = feed_route.stats_route, feed_route.tenant
        elif graph_route is not None:
            route, tenant = graph_route.name, self.graph.tenant_of(request)
        elif token_route is not None:
            route, tenant = token_route
        elif vault_route is not None:
            route, tenant = "keyvault", None
        else:
            route, tenant = "unknown", None
        publisher = request.query.get("publisheridentifier")

        def log(status: int | None, fault: str | None = None, fetched: str | None = None) -> None:
            entry = RequestLog(route, request.method, request.path, tenant, publisher, status, arrived)
            self.stats.record(entry, fault=fault, fetched=fetched)

        # Every feed request counts against its publisher's quota, refused ones too ([REF] §2).
        used = self.stats.quota.count(publisher, self.now(), self.options.quota_window) if feed_route else 0
        fault = self.faults.pick(route, tenant)
        if fault is None and 0 < self.options.quota_per_minute < used:
            throttled = quota_exceeded(route, publisher)
            throttled.headers.extend(FEED_HEADERS)
            log(throttled.status, "quota")
            return throttled
        if fault is not None:
            if fault.delay_seconds:
                time.sleep(fault.delay_seconds)
            if fault.kind == "drop":
                log(None, fault.kind)
                return None
            if graph_route is not None:
                injected = self.graph.fault(fault, request)
            else:
                injected = fault_response(fault, route, publisher, request.path, request=request)
            if injected is not None:
                if feed_route is not None and injected.content_type and "json" in injected.content_type:
                    injected.headers.extend(FEED_HEADERS)
                log(injected.status, fault.kind)
                return injected

        fetched: str | None = None
        if feed_route is not None:
            if self.config.latency_seconds:
                time.sleep(self.config.latency_seconds)
            response, fetched = self._feed.handle(request, feed_route)
            response.headers.extend(FEED_HEADERS)
        elif graph_route is not None:
            if self.config.latency_seconds:
                time.sleep(self.config.latency_seconds)
            response = self.graph.handle(request, graph_route)
        elif token_route is not None:
            response = self._answer_token(request, route, tenant)
        elif vault_route is not None:
            response = self.key_vault.handle(request, *vault_route)
        else:
            response = not_found(request.path)
        log(response.status, fault.kind if fault is not None else None, fetched)
        return response

    def _answer_token(self, request: Request, route: str, tenant: str | None) -> Response:
        assert tenant is not None
        if route == "openid":
            if request.method != "GET":
                return aspnet_message(405, f"The requested resource does not support http method '{request.method}'.")
            return self._tokens.openid_configuration(self.authority_url, tenant)
        if request.method != "POST":
            return aspnet_message(405, f"The requested resource does not support http method '{request.method}'.")
        response, issued = self._tokens.token(tenant, request.body)
        if issued is not None:
            self.stats.token_issued()
        return response
