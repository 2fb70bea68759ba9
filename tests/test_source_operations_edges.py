"""Edges of the per-source operations that the broader tests leave open: which errors count as a Graph
refusal and when one is resolved, the retention-edge headroom, the per-source summary (worst state,
largest lag, catalog order), ``check``'s verdict wording, and the audit feed's labels staying as they were.
Pure functions on hand-built rows: no storage, no network."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
import requests

from o365collector.config import HealthPolicy, Settings
from o365collector.diagnose import Verdict, diagnose
from o365collector.errors import ApiPermanentError, CollectorError
from o365collector.fetcher import FetchResult, Outcome
from o365collector.health import judge
from o365collector.lister import Lister, ListerResult, StreamResult
from o365collector.models import CONTENT_TYPES, BlobContext, FetchTask, TimeWindow
from o365collector.running import StopRequest, _run_forever, records_per_source
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.sinks import elastic_graph, elasticsearch, loganalytics, splunk
from o365collector.sinks.elasticsearch import ElasticsearchSink, ElasticsearchSinkSettings
from o365collector.sinks.splunk import SplunkSink, SplunkSinkSettings
from o365collector.sinks.streams import record_id
from o365collector.source_check import SourceVerdict, probe_source
from o365collector.source_health import retention_phrase, source_lines, source_spec, summarize_sources
from o365collector.sources.base import SourceClient
from o365collector.sources.catalog import SOURCES, StreamLabels, labels_for
from o365collector.status import StreamStatus
from o365collector.status_report import StatusReport, StreamReport
from o365collector.telemetry import ShipTally, log_run_summary
from tests.backends import BulkServer, HecServer
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory, host_queue_runner, now

TID = TENANT.tenant_id
SIGNINS, AUDITS, TRACE = "Entra.SignIns", "Entra.DirectoryAudits", "Exchange.MessageTrace"
AT = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
FRESH = dt.timedelta(minutes=7)
CollectorFactory = Callable[..., Collector]
ES_KEY = "ZWRnZXM6dGVzdC1rZXk="


def judged(stream: str, lag: dt.timedelta = FRESH, **row: Any) -> StreamReport:
    fields: dict[str, Any] = {"last_run_at": AT, "last_success_at": AT, "last_outcome": "ok"} | row
    status = StreamStatus(TID, stream, **fields)
    one = StreamReport(TID, stream, checkpoint=AT - lag, lag_seconds=lag.total_seconds(), status=status)
    judge(StatusReport(AT, HealthPolicy(), "q", "p", streams=[one]), AT)
    return one


def test_a_name_no_source_has_is_judged_and_shown_as_the_audit_feed() -> None:
    assert source_spec("Audit.Unknown").name == "audit"
    assert retention_phrase("Audit.Unknown") == "the API's 7-day retention"
    assert StreamReport(TID, "Audit.Unknown").source == "audit"
    assert StreamReport(TID, TRACE).source == "messagetrace"


@pytest.mark.parametrize(
    ("lag", "degraded"),
    [
        (dt.timedelta(days=28), False),  # two days of headroom left: nothing to say yet
        (dt.timedelta(days=29), False),  # exactly a day before the edge
        (dt.timedelta(days=29, minutes=1), True),
    ],
)
def test_a_graph_stream_is_degraded_only_within_a_day_of_its_retention(lag: dt.timedelta, degraded: bool) -> None:
    stream = judged(SIGNINS, lag)
    assert stream.problems == []
    assert bool(stream.degraded) is degraded, stream.degraded


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        # A listing refusal already followed by a successful listing run is resolved.
        (
            {"last_error_at": AT - dt.timedelta(hours=1), "last_error_code": "Authorization_RequestDenied"},
            None,
        ),
        # ...and one after it is current.
        (
            {
                "last_success_at": AT - dt.timedelta(minutes=5),
                "last_error_at": AT,
                "last_error_code": "Authorization_RequestDenied",
            },
            "(Authorization_RequestDenied)",
        ),
        # Graph's code inside the text of an error stored under another code names that code.
        (
            {
                "fetch_error_at": AT,
                "fetch_error_code": "ApiPermanentError",
                "fetch_error": "HTTP 403 Authorization_RequestDenied: Insufficient privileges",
            },
            "(Authorization_RequestDenied)",
        ),
        # A 403 without a Graph code: the client's text names the permission (its first word).
        (
            {
                "fetch_error_at": AT,
                "fetch_error_code": "ApiPermanentError",
                "fetch_error": "HTTP 403: the app may not read this log (source signins): grant the Microsoft Graph "
                "application permission AuditLog.Read.All to the app and give admin consent",
            },
            "the app lacks AuditLog.Read.All (Microsoft Graph) (ApiPermanentError)",
        ),
        # A sink's error that happens to quote the permission is no Graph refusal.
        (
            {
                "fetch_error_at": AT,
                "fetch_error_code": "SinkPermanentError",
                "fetch_error": "splunk: HTTP 400 in a record: AuditLog.Read.All",
            },
            None,
        ),
    ],
)
def test_only_a_current_graph_refusal_names_the_permission(row: dict[str, Any], problem: str | None) -> None:
    stream = judged(SIGNINS, **row)
    if problem is None:
        assert stream.problems == []
    else:
        assert len(stream.problems) == 1, stream.problems
        assert problem in stream.problems[0]
        assert "AuditLog.Read.All (Microsoft Graph)" in stream.problems[0]


def _row(stream: str, lag: float | None, records: int, problems: list[str] | None = None) -> StreamReport:
    status = StreamStatus(TID, stream, shipped_records=records)
    return StreamReport(TID, stream, lag_seconds=lag, status=status, problems=problems or [])


def test_a_source_summary_has_its_streams_largest_lag_summed_records_and_worst_state_in_catalog_order() -> None:
    rows = [
        _row(TRACE, None, 0),  # listed first, shown last: the catalog's order
        _row("Audit.Exchange", 90.0, 10, problems=["down"]),
        _row("Audit.General", 7200.0, 5),
        _row("Audit.SharePoint", 30.0, 1),
        _row(SIGNINS, 400.0, 1234),
    ]
    summaries = [s.to_dict() for s in summarize_sources(rows)]
    assert [(s["source"], s["streams"], s["lag_seconds"], s["records_shipped"], s["state"]) for s in summaries] == [
        ("audit", 3, 7200.0, 16, "unhealthy"),
        ("signins", 1, 400.0, 1234, "healthy"),
        ("messagetrace", 1, None, 0, "healthy"),
    ]
    assert source_lines(rows) == [
        "sources:",
        "  Office 365 audit feed (Management Activity API): 3 streams, lag 2.0 h, 16 records shipped (unhealthy)",
        "  Entra ID sign-ins (Microsoft Graph): lag 6 min, 1,234 records shipped (healthy)",  # as the table writes ages
        "  Exchange Online message trace (Microsoft Graph): no checkpoint yet, 0 records shipped (healthy)",
    ]
    # Two streams are counted too; one healthy stream cannot hide a degraded one.
    two = [_row("Audit.Exchange", 60.0, 1), _row("Audit.General", 60.0, 1), _row(AUDITS, 60.0, 0)]
    two[1].degraded.append("slow")
    assert source_lines(two)[1].startswith("  Office 365 audit feed (Management Activity API): 2 streams, lag 60 s")
    assert summarize_sources(two)[0].state == "degraded"


# -- the backbone's per-source gates (Azurite and the simulator) --------------------------------------


class RefusedSignIn:
    """A source's client whose token request Entra refuses (consent missing for this audience only)."""

    def __init__(self, client: SourceClient) -> None:
        self._client = client
        self.sign_ins = 0

    def sign_in(self) -> None:
        self.sign_ins += 1
        raise ApiPermanentError("AADSTS65001: The user or administrator has not consented", code="AADSTS65001")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class CountedSignIn:
    def __init__(self, client: SourceClient) -> None:
        self._client = client
        self.sign_ins = 0

    def sign_in(self) -> None:
        self.sign_ins += 1
        self._client.sign_in()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_sign_in_refused_for_one_source_leaves_the_tenants_other_sources_collecting(
    simulator: Simulator, make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    collector = make_collector(
        O365_CONTENT_TYPES="Audit.Exchange,Audit.General",
        O365_SOURCES="audit,signins,directoryaudits",
        O365_GRAPH_URL=simulator.api_url,
    )
    refused = RefusedSignIn(collector.client(TID, SIGNINS))
    audit = CountedSignIn(collector.client(TID, "Audit.Exchange"))

    def client_for(tenant_id: str, stream: str) -> SourceClient:
        if stream == SIGNINS:
            return cast(SourceClient, refused)
        return cast(SourceClient, audit) if stream.startswith("Audit.") else collector.client(tenant_id, stream)

    lister = Lister(
        tenants=collector.tenants(),
        policy=collector.settings.policy,
        client_for=client_for,
        checkpoints=collector.checkpoints,
        queue=collector.queue,
        clock=collector.clock,
    )
    by_stream = {s.content_type: s for s in lister.run().streams}
    assert refused.sign_ins == 1, "the source asks for its own token, whatever the audit feed's sign-in did"
    assert audit.sign_ins == 1, "once per (tenant, source) and run, not per stream"
    assert by_stream[SIGNINS].error_code == "AADSTS65001"
    assert by_stream["Audit.Exchange"].ok, by_stream["Audit.Exchange"].error
    assert by_stream[AUDITS].ok, by_stream[AUDITS].error
    assert by_stream[AUDITS].windows > 0
    assert by_stream[SIGNINS].summary()["source"] == "signins"
    with caplog.at_level(logging.INFO, logger="o365collector"):
        log_run_summary(ListerResult(streams=[by_stream[AUDITS]]), ShipTally(), 1.0)
    assert any('"source":"directoryaudits"' in r.getMessage() for r in caplog.records)


def test_a_graph_unit_for_a_stream_the_tenant_does_not_collect_is_refused_before_any_claim(
    simulator: Simulator, make_collector: CollectorFactory, receiver: HttpReceiver
) -> None:
    """Sign-ins are not among the tenant's sources; a well-formed sign-in window (one its Graph client would
    accept) is poisoned on its first delivery, claims nothing, and asks Graph for nothing."""
    collector = make_collector(
        SINK_TYPE="http", SINK_URL=receiver.url, O365_SOURCES="audit,directoryaudits", O365_GRAPH_URL=simulator.api_url
    )
    client = collector.client(TID, SIGNINS)
    end = now().replace(microsecond=0) - dt.timedelta(hours=1)
    (unit,) = client.list_units(SIGNINS, TimeWindow(end - dt.timedelta(hours=1), end), on_malformed=lambda _e: None)
    task = FetchTask(TID, SIGNINS, unit.content_id, unit.content_uri, unit.content_created, unit.content_expiration)
    assert client.unit_problem(task) is None, "the unit itself is well formed: only the stream check refuses it"
    collector.queue.send_message(task.to_message())

    result = host_queue_runner(collector).drain()

    assert result.count(Outcome.REFUSED) == 1
    assert result.failures == 0
    assert [m.content for m in collector.poison_queue.peek_messages(max_messages=4)] == [task.to_message()]
    assert collector.ledger.get(task) is None, "a refused message claims nothing"
    assert sum(simulator.stats.requests_by_route.values()) == 0
    assert receiver.records == []
    assert collector.refusal(task) is not None
    assert "'Entra.SignIns' is not collected" in (collector.refusal(task) or "")


# -- check's verdicts on stub probes -------------------------------------------------------------------


class Answer:
    def __init__(self, answer: object = None, error: Exception | None = None) -> None:
        self.answer, self.error = answer, error

    def probe(self) -> object:
        if self.error is not None:
            raise self.error
        return self.answer


def checked(client: object, make_env: EnvFactory) -> SourceVerdict:
    tenant = Settings.from_env(make_env(O365_SOURCES="audit,signins")).tenants[0]
    return probe_source(tenant, SOURCES["signins"], lambda _t, _s: client, signed_in=True)


TITLE = "Entra ID sign-ins (Microsoft Graph): "
GRANT = "grant the Microsoft Graph application permission AuditLog.Read.All to the app and give admin consent"


@pytest.mark.parametrize(
    ("client", "verdict", "detail"),
    [
        (Answer("1 record"), "OK", "AuditLog.Read.All (Microsoft Graph) works: the service answered (1 record)"),
        (object(), "SKIP", "this source's client cannot be probed"),
        (Answer(error=CollectorError("O365_GRAPH_URL: not https")), "FAIL", "O365_GRAPH_URL: not https"),
        # The client's text already names the permission: shown as it is, not led by a second hint.
        (
            Answer(error=ApiPermanentError(f"HTTP 403 Authorization_RequestDenied: {GRANT}", status=403,
                                           code="Authorization_RequestDenied")),
            "FAIL",
            f"HTTP 403 Authorization_RequestDenied: {GRANT}",
        ),
        # A bare 403 (no Graph code, no permission named) is still a refusal: the hint names the status.
        (
            Answer(error=ApiPermanentError("HTTP 403: Forbidden", status=403)),
            "FAIL",
            "the app lacks AuditLog.Read.All (Microsoft Graph) (403): in the app registration add it as an "
            "Application permission, grant admin consent, then wait a few minutes for new tokens (HTTP 403: Forbidden)",
        ),
        # Another permanent answer is no permission problem: the client's text alone.
        (
            Answer(error=ApiPermanentError("HTTP 400 BadRequest: bad filter", status=400)),
            "FAIL",
            "HTTP 400 BadRequest: bad filter",
        ),
        # The client's licence text names P1 already: kept as it is.
        (
            Answer(error=ApiPermanentError("HTTP 403: sign-in logs need a Microsoft Entra ID P1 or P2 licence",
                                           status=403, code="Authentication_RequestFromNonPremiumTenantOrB2CTenant")),
            "FAIL",
            "HTTP 403: sign-in logs need a Microsoft Entra ID P1 or P2 licence",
        ),
    ],
)
def test_check_shows_the_clients_own_words_and_adds_the_fix_only_when_they_lack_it(
    make_env: EnvFactory, client: object, verdict: str, detail: str
) -> None:
    result = checked(client, make_env)
    assert (result.verdict, result.detail) == (verdict, TITLE + detail)


def test_only_message_trace_is_refused_outside_the_global_service(make_env: EnvFactory) -> None:
    """Entra ID logs are served by every Graph cloud: a GCC High tenant's sign-ins are probed like any other."""
    base = Settings.from_env(make_env(O365_SOURCES="audit,signins")).tenants[0]
    gcc_high = dataclasses.replace(base, cloud="GCCHigh")
    answer = Answer("ok")
    signins = probe_source(gcc_high, SOURCES["signins"], lambda _t, _s: answer, signed_in=True)
    assert signins.verdict == "OK", signins.detail
    trace = probe_source(gcc_high, SOURCES["messagetrace"], lambda _t, _s: answer, signed_in=True)
    assert trace.verdict == "FAIL"


# -- sink labels: ids and documents of Graph records -----------------------------------------------------


def test_a_records_id_is_its_streams_own_field_and_only_a_usable_one() -> None:
    assert record_id({"id": "a1", "Id": "A1"}, SIGNINS) == "a1"
    assert record_id({"id": "a1", "Id": "A1"}, "Audit.Exchange") == "A1"
    assert record_id({"id": 42}, TRACE) == "42"
    for unusable in (True, False, "", None, 1.5, ["a"]):
        assert record_id({"id": unusable}, SIGNINS) is None, unusable


def test_a_graph_documents_id_is_tenant_scoped_and_dropped_past_elasticsearchs_limit() -> None:
    tenant = "t" * 10
    fits = "x" * (elastic_graph.MAX_ID_BYTES - len(tenant) - 1)
    assert elastic_graph.document_id({"id": fits}, SIGNINS, tenant) == f"{tenant}:{fits}"
    assert elastic_graph.document_id({"id": fits + "x"}, SIGNINS, tenant) is None
    assert elastic_graph.document_id({"id": ""}, SIGNINS, tenant) is None


@pytest.mark.parametrize("preserve", [True, False])
def test_a_message_trace_document_is_tagged_to_keep_the_original_only_when_asked(preserve: bool) -> None:
    record = {"id": "m1", "receivedDateTime": "2026-03-01T11:55:42Z"}
    document = orjson.loads(
        elastic_graph.graph_document(record, orjson.dumps(record), TRACE, "prod", preserve_original=preserve)
    )
    assert ("tags" in document) is preserve
    if preserve:
        assert document["tags"] == [elastic_graph.PRESERVE_ORIGINAL_TAG]
    assert orjson.loads(document["message"]) == record
    assert document["@timestamp"] == "2026-03-01T11:55:42Z"


def test_graph_records_the_bulk_api_throttled_are_resent_to_their_own_data_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A per-item 429 sends the rejected records again: re-encoded as Graph documents, not as audit ones."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    records = [{"id": f"s{i}", "createdDateTime": "2026-03-01T11:58:01Z"} for i in range(3)]
    with BulkServer(api_key=ES_KEY) as es:
        settings = ElasticsearchSinkSettings.from_env(
            {
                "SINK_ELASTICSEARCH_URL": es.base_url,
                "SINK_ELASTICSEARCH_INDEX": "o365-audit",
                "SINK_ELASTICSEARCH_API_KEY": ES_KEY,
                "SINK_ELASTICSEARCH_PIPELINE": "audit-only",
            }
        )
        session = requests.Session()
        session.verify = es.ca_file
        sink = ElasticsearchSink(settings, session=session, sleep=lambda _: None)
        es.throttle_items(2)
        try:
            sink.send(records, BlobContext(TID, SIGNINS, f"{SIGNINS}_20260301T110000Z_20260301T120000Z", AT))
        finally:
            sink.close()
        assert es.docs("o365-audit") == []
        shipped = [d["entra"]["signin"] for d in es.docs("logs-o365collector.entra_signins-default")]
        assert sorted(shipped, key=lambda r: str(r["id"])) == records
        bulks = es.exchanges_to("/_bulk")
        assert len(bulks) >= 2, "the throttled items were sent again"
        assert all(bulk.query == {} for bulk in bulks), "no audit pipeline on a Graph stream's retry"


def test_a_unit_waiting_for_the_one_before_it_is_counted_as_waiting_not_as_a_failure_or_deferral() -> None:
    tally = ShipTally()
    handler = tally.wrap(lambda _body, _id, _count: FetchResult(Outcome.WAITING, reason="the window before"))
    task = FetchTask(TID, SIGNINS, f"{SIGNINS}_20260301T110000Z_20260301T120000Z", "https://graph.example/x", AT, AT)
    assert handler(task.to_message(), "m1", 1).outcome is Outcome.WAITING
    counts = tally.get(TID, SIGNINS)
    assert counts["units_waiting"] == 1
    assert counts["blobs_deferred"] == counts["failures"] == counts["blobs_shipped"] == 0


def test_a_run_that_only_ships_a_graph_stream_listed_earlier_still_counts_it_by_source() -> None:
    """The queue may hold units listed by an earlier run: what was shipped counts, listed now or not."""
    tally = ShipTally()
    handler = tally.wrap(lambda _body, _id, _count: FetchResult(Outcome.SHIPPED, records=5))
    task = FetchTask(TID, SIGNINS, f"{SIGNINS}_20260301T110000Z_20260301T120000Z", "https://graph.example/x", AT, AT)
    handler(task.to_message(), "m1", 1)
    listed = ListerResult(streams=[StreamResult(TID, "Audit.Exchange")])
    assert records_per_source(listed, tally) == (
        "Office 365 audit feed (Management Activity API) 0 records; Entra ID sign-ins (Microsoft Graph) 5 records"
    )


def test_a_graph_event_keeps_the_configured_splunk_index_host_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the sourcetype (and the time field) is the stream's: SINK_SPLUNK_INDEX, _HOST and _SOURCE apply
    to every stream, or Graph events would land in the token's default index."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    token = "0d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a"
    audit = {"Id": "a1", "CreationTime": "2026-03-01T11:59:58"}
    signin = {"id": "s1", "createdDateTime": "2026-03-01T11:58:01Z"}
    with HecServer(token) as hec:
        env = {
            "SINK_SPLUNK_URL": hec.base_url,
            "SINK_SPLUNK_TOKEN": token,
            "SINK_SPLUNK_INDEX": "o365",
            "SINK_SPLUNK_HOST": "collector-01",
            "SINK_SPLUNK_SOURCE": "o365collector",
        }
        session = requests.Session()
        session.verify = hec.ca_file
        sink = SplunkSink(SplunkSinkSettings.from_env(env), session=session, sleep=lambda _: None)
        try:
            sink.send([audit], BlobContext(TID, "Audit.Exchange", "blob-1", AT))
            sink.send([signin], BlobContext(TID, SIGNINS, f"{SIGNINS}_20260301T110000Z_20260301T120000Z", AT))
        finally:
            sink.close()
        audit_event, signin_event = hec.events
    shared = {"index": "o365", "host": "collector-01", "source": "o365collector"}
    assert audit_event == {"time": 1772366398, "sourcetype": "o365:management:activity", "event": audit} | shared
    assert signin_event == {"time": 1772366281, "sourcetype": "azure:aad:signin", "event": signin} | shared


def test_the_catalogs_audit_labels_are_the_audit_feeds_sink_defaults_for_every_audit_name() -> None:
    """Sinks label audit records from their own settings (defaults below); the catalog must say the same,
    for every content type and for a name no source has."""
    audit = StreamLabels(
        splunk_sourcetype=splunk.DEFAULT_SOURCETYPE,
        elastic_dataset=elasticsearch.INTEGRATION_DATASET,
        log_analytics_stream=loganalytics.DEFAULT_STREAM,
    )
    assert audit == StreamLabels("o365:management:activity", "o365.audit", "Custom-O365AuditLogs")
    for name in (*CONTENT_TYPES, "Audit.Unknown"):
        assert labels_for(name) == audit, name


def test_check_skips_the_graph_probes_when_the_tenants_token_step_failed(
    simulator: Simulator, make_env: EnvFactory
) -> None:
    env = make_env(
        O365_SOURCES="audit,signins",
        O365_GRAPH_URL=simulator.api_url,
        O365_CONTENT_TYPES="Audit.Exchange",
        O365_CLIENT_SECRET="copied-the-secret-id",
    )
    steps = {s.name: s for s in diagnose(env)}
    assert steps["token"].verdict is Verdict.FAIL
    assert steps["source signins"].verdict is Verdict.SKIP
    assert steps["source signins"].detail.endswith("needs a token")


class FirstPassLine(logging.Handler):
    """Stops the loop once its first pass line is logged, and keeps that line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("pass 1 done"):
            self.lines.append(record.getMessage())

    def __call__(self) -> bool:
        return bool(self.lines)


def test_a_loop_pass_line_counts_the_records_that_pass_shipped_per_source(
    simulator: Simulator, make_collector: CollectorFactory, receiver: HttpReceiver
) -> None:
    end = now() - dt.timedelta(minutes=10)
    simulator.generate_graph(TID, SIGNINS, end - dt.timedelta(hours=1), end, every=dt.timedelta(minutes=10))
    collector = make_collector(
        O365_CONTENT_TYPES="Audit.Exchange",
        O365_SOURCES="audit,signins",
        O365_GRAPH_URL=simulator.api_url,
        O365_START_TIME=(end - dt.timedelta(hours=2)).isoformat(),
        SINK_TYPE="http",
        SINK_URL=receiver.url,
    )
    line = FirstPassLine()
    logger = logging.getLogger("o365collector")
    level = logger.level
    logger.addHandler(line)
    logger.setLevel(logging.INFO)  # the pass line is INFO
    try:
        assert _run_forever(collector, 600.0, cast(StopRequest, line)) == 0
    finally:
        logger.removeHandler(line)
        logger.setLevel(level)
    (text,) = line.lines
    shipped = sum(1 for r in receiver.records if "createdDateTime" in r)
    assert shipped > 0
    assert f"Entra ID sign-ins (Microsoft Graph) {shipped:,} records" in text


class RevokedWhileListing(CountedSignIn):
    """Signs in, then Entra refuses the token mid-run (a secret revoked): a credential error while listing."""

    def __init__(self, client: SourceClient) -> None:
        super().__init__(client)
        self.listings = 0

    def list_units(self, *_args: Any, **_kwargs: Any) -> Any:
        self.listings += 1
        raise ApiPermanentError("AADSTS7000222: the client secret keys are expired", code="AADSTS7000222")


def test_a_credential_error_while_listing_stops_that_sources_other_streams_of_the_tenant(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange,Audit.General", O365_SOURCES="audit")
    revoked = RevokedWhileListing(collector.client(TID, "Audit.Exchange"))
    lister = Lister(
        tenants=collector.tenants(),
        policy=collector.settings.policy,
        client_for=lambda _tenant, _stream: cast(SourceClient, revoked),
        checkpoints=collector.checkpoints,
        queue=collector.queue,
        clock=collector.clock,
    )
    streams = lister.run().streams
    assert revoked.listings == 1, "the other stream reports the tenant's credential error without asking again"
    assert [s.error_code for s in streams] == ["AADSTS7000222", "AADSTS7000222"]
