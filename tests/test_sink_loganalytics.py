"""The Logs Ingestion sink against a local HTTPS Logs Ingestion API and Entra token endpoint
(tests/backends_azure.py), through the real azure-monitor-ingestion and azure-identity clients:
wire format, 1 MiB chunking, failure classification, the health check, settings, secrets kept out of
logs, an end-to-end run through an outage, and the optional ARM template (infra/logs-ingestion.json)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import random
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.identity import (
    ClientSecretCredential,
    CredentialUnavailableError,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)

from o365collector.errors import ConfigError, SinkPermanentError, SinkTransientError
from o365collector.models import BlobContext, Record
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.sinks.loganalytics import (
    DEFAULT_STREAM,
    LogAnalyticsSink,
    LogAnalyticsSinkSettings,
    build_credential,
)
from o365collector.sinks.registry import parse_sink_settings
from tests.backends_azure import MAX_CONTENT_LENGTH, LogsIngestionBackend
from tests.receivers import refusing_url
from tests.support import TENANT
from tests.test_infra_template import kusto_language_service, walk_strings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "logs-ingestion.json"

LA_TENANT = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
LA_APP = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
LA_SECRET = "la-secret-Zr4!never-log-me"
DCR_ID = "dcr-4f2a9c0e1b7d4e6f8a3c5b9d0e2f4a6c"
MARKER = "body-marker-9c3e"  # a value inside records: must never reach the logs
CONTEXT = BlobContext(
    tenant_id=TENANT.tenant_id,
    content_type="Audit.Exchange",
    content_id="20260301120000.000000000$20260301120000.000000000$audit_exchange$Audit_Exchange$emea0026",
    content_created=dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC),
)

SinkFactory = Callable[..., LogAnalyticsSink]


def audit_records(count: int, *, start: int = 0, pad: int = 0, seed: int = 7) -> list[Record]:
    noise = random.Random(seed)
    return [
        {
            "CreationTime": "2026-03-01T11:59:58",
            "Id": f"00000000-0000-4000-8000-{index:012d}",
            "Operation": "MailItemsAccessed",
            "RecordType": 50,
            "UserId": "adele.vance@contoso.example",
            "Workload": "Exchange",
            "Note": MARKER,
            # Random hex compresses about as well as real audit text, so gzip does not hide the chunking.
            "Pad": noise.randbytes(pad // 2).hex(),
        }
        for index in range(start, start + count)
    ]


def shipped(records: list[Record]) -> list[Record]:
    """What the sink uploads for ``records``: each one's fields, plus the whole record in ``AuditRecord``."""
    return [{**record, "AuditRecord": record} for record in records]


def sink_env(backend: LogsIngestionBackend, **overrides: str) -> dict[str, str]:
    return {
        "SINK_LOGANALYTICS_ENDPOINT": backend.url,
        "SINK_LOGANALYTICS_DCR_ID": DCR_ID,
        "SINK_LOGANALYTICS_AUTHORITY_HOST": backend.url,
        "SINK_LOGANALYTICS_TENANT_ID": LA_TENANT,
        "SINK_LOGANALYTICS_APP_CLIENT_ID": LA_APP,
        "SINK_LOGANALYTICS_CLIENT_SECRET": LA_SECRET,
        "SINK_LOGANALYTICS_RETRY_BACKOFF_SECONDS": "0.01",
        "SINK_LOGANALYTICS_TIMEOUT_SECONDS": "5",
        **overrides,
    }


@pytest.fixture
def backend() -> Iterator[LogsIngestionBackend]:
    with LogsIngestionBackend(tenant_id=LA_TENANT, client_id=LA_APP, client_secret=LA_SECRET, dcr_id=DCR_ID) as server:
        yield server


@pytest.fixture
def trust_backend(backend: LogsIngestionBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-core and azure-identity (requests underneath) trust the backend's CA via REQUESTS_CA_BUNDLE."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", backend.ca_file)


@pytest.fixture
def make_sink(backend: LogsIngestionBackend, trust_backend: None) -> Iterator[SinkFactory]:
    made: list[LogAnalyticsSink] = []

    def factory(**overrides: str) -> LogAnalyticsSink:
        sink = LogAnalyticsSinkSettings.from_env(sink_env(backend, **overrides)).create()
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


class StaticCredential:
    """A credential that always hands out the same token (no sign-in involved)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        if self.error is not None:
            raise self.error
        return AccessToken("static-token", 2_000_000_000)

    def close(self) -> None:
        pass


# -- wire format


def test_upload_speaks_the_logs_ingestion_protocol_and_sends_records_unchanged_plus_the_whole_record(
    backend: LogsIngestionBackend, make_sink: SinkFactory
) -> None:
    records = audit_records(3)
    before = json.loads(json.dumps(records))
    make_sink().send(records, CONTEXT)

    (upload,) = backend.uploads
    assert upload.status == 204
    assert upload.path == f"/dataCollectionRules/{DCR_ID}/streams/{DEFAULT_STREAM}"
    assert upload.query == {"api-version": ["2023-01-01"]}
    assert upload.headers["content-type"] == "application/json"
    assert upload.headers["content-encoding"] == "gzip"
    assert upload.headers["authorization"].startswith("Bearer ")
    assert "o365collector/" in upload.headers["user-agent"]
    # The JSON array, after undoing gzip: each record's fields unchanged (no TimeGenerated added, the DCR's
    # transformation sets it; nothing renamed), plus the whole record in AuditRecord, the stream's catch-all.
    assert json.loads(upload.body) == shipped(before)
    assert backend.records == shipped(before)
    assert records == before, "the caller's records were modified"
    assert backend.token_requests == 1


def test_a_blob_above_one_mebibyte_is_split_into_calls_of_at_most_one_mebibyte(
    backend: LogsIngestionBackend, make_sink: SinkFactory
) -> None:
    records = audit_records(700, pad=5000)  # ~3.6 MB of JSON
    make_sink().send(records, CONTEXT)

    uploads = backend.uploads
    assert len(uploads) >= 4
    assert all(u.status == 204 for u in uploads)
    for upload in uploads:
        assert upload.content_length <= MAX_CONTENT_LENGTH
        items = upload.records or []
        # The SDK's chunk rule: the items' JSON adds up to at most 1 MiB.
        assert sum(len(json.dumps(item).encode()) for item in items) <= MAX_CONTENT_LENGTH
    assert backend.records == shipped(records)  # every record once, in order


def test_nothing_to_send_makes_no_call(backend: LogsIngestionBackend, make_sink: SinkFactory) -> None:
    make_sink().send([], CONTEXT)
    assert backend.uploads == []


# -- failures


def test_throttling_and_unavailability_are_retried_by_the_sdk_then_succeed(
    backend: LogsIngestionBackend, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    backend.fail_next(1, 429, retry_after=0)
    backend.fail_next(1, 503, retry_after=0)
    records = audit_records(4)
    with caplog.at_level(logging.WARNING, logger="o365collector"):
        make_sink(SINK_LOGANALYTICS_MAX_RETRIES="3").send(records, CONTEXT)
    assert [u.status for u in backend.uploads] == [429, 503, 204]
    assert backend.records == shipped(records)
    (warning,) = [r for r in caplog.records if r.name == "o365collector.sinks.loganalytics"]
    assert "after 2 retried answers" in warning.getMessage()


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_service_that_stays_busy_is_a_transient_failure(
    backend: LogsIngestionBackend, make_sink: SinkFactory, status: int
) -> None:
    backend.fail_next(10, status, retry_after=0)
    with pytest.raises(SinkTransientError) as caught:
        make_sink(SINK_LOGANALYTICS_MAX_RETRIES="2").send(audit_records(2), CONTEXT)
    assert f"answered {status}" in str(caught.value)
    assert caught.value.retry_after == 0.0
    assert len(backend.uploads) == 3, "one call and the SDK's two retries, no retry of ours on top"
    assert backend.records == []


@pytest.mark.parametrize(
    ("arrange", "overrides", "expected"),
    [
        ("revoke_role", {}, "lacks the Monitoring Metrics Publisher role on the data collection rule"),
        ("none", {"SINK_LOGANALYTICS_DCR_ID": "dcr-00000000000000000000000000000000"}, "SINK_LOGANALYTICS_DCR_ID"),
        ("none", {"SINK_LOGANALYTICS_STREAM": "Custom-Elsewhere"}, "SINK_LOGANALYTICS_STREAM"),
        ("revoke_tokens", {}, "the token was refused"),
    ],
    ids=["403-no-role", "404-wrong-dcr", "404-wrong-stream", "401-token"],
)
def test_refusals_are_permanent_with_what_to_fix(
    backend: LogsIngestionBackend, make_sink: SinkFactory, arrange: str, overrides: dict[str, str], expected: str
) -> None:
    sink = make_sink(**overrides)
    if arrange == "revoke_tokens":
        sink.send(audit_records(1), CONTEXT)  # signs in; then the service forgets the token
        backend.revoke_tokens()
    elif arrange == "revoke_role":
        backend.revoke_role()
    before = len(backend.uploads)
    with pytest.raises(SinkPermanentError) as caught:
        sink.send(audit_records(2, start=10), CONTEXT)
    assert expected in str(caught.value)
    assert len(backend.uploads) == before + 1, "a refusal is not retried"


def test_a_record_too_large_for_one_call_is_a_permanent_error_naming_it(
    backend: LogsIngestionBackend, make_sink: SinkFactory
) -> None:
    huge = dict(audit_records(1, start=1)[0], Blob=base64.b64encode(random.Random(3).randbytes(1_600_000)).decode())
    records = [*audit_records(1), huge, *audit_records(1, start=2)]
    with pytest.raises(SinkPermanentError) as caught:
        make_sink().send(records, CONTEXT)
    message = str(caught.value)
    assert "answered 413" in message
    assert f"record 1 of content {CONTEXT.content_id}" in message
    assert [u.status for u in backend.uploads] == [204, 413], "it stops at the refused chunk"


def test_a_dropped_connection_is_transient_and_not_retried_twice(
    backend: LogsIngestionBackend, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    backend.drop_next(1)
    with pytest.raises(SinkTransientError) as caught:
        sink.send(audit_records(2), CONTEXT)
    assert "could not be reached" in str(caught.value)
    assert len(backend.uploads) == 1  # azure-core does not repeat a POST that may have arrived
    sink.send(audit_records(2), CONTEXT)
    assert len(backend.records) == 2


def test_a_refused_connection_is_transient(backend: LogsIngestionBackend, make_sink: SinkFactory) -> None:
    with refusing_url("https") as url:
        sink = make_sink(SINK_LOGANALYTICS_ENDPOINT=url.removesuffix("/ingest"))
        with pytest.raises(SinkTransientError, match="could not be reached"):
            sink.send(audit_records(1), CONTEXT)


def test_an_untrusted_certificate_is_permanent(backend: LogsIngestionBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    settings = LogAnalyticsSinkSettings.from_env(sink_env(backend))
    sink = LogAnalyticsSink(settings, credential=StaticCredential())
    with pytest.raises(SinkPermanentError, match=r"TLS verification .* failed .*REQUESTS_CA_BUNDLE"):
        sink.send(audit_records(1), CONTEXT)
    sink.close()


def test_a_wrong_client_secret_is_permanent_and_never_logged(
    backend: LogsIngestionBackend, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-secret-Qm2!value"
    sink = make_sink(SINK_LOGANALYTICS_CLIENT_SECRET=wrong)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SinkPermanentError) as on_send:
            sink.send(audit_records(2), CONTEXT)
        with pytest.raises(SinkPermanentError) as on_check:
            sink.check()
    for caught in (on_send, on_check):
        assert "AADSTS7000215" in str(caught.value)
        assert "SINK_LOGANALYTICS_CLIENT_SECRET" in str(caught.value)
    assert backend.uploads == []
    text = caplog.text + str(on_send.value) + str(on_check.value) + repr(sink._settings)
    assert wrong not in text
    assert LA_SECRET not in text
    assert MARKER not in text


def test_a_successful_run_logs_no_secret_no_token_and_no_record(
    backend: LogsIngestionBackend, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):  # every logger, the SDKs' included
        sink = make_sink()
        sink.check()
        backend.fail_next(1, 503, retry_after=0)
        sink.send(audit_records(3), CONTEXT)
    token = backend.uploads[-1].headers["authorization"].split()[1]
    assert LA_SECRET not in caplog.text
    assert token not in caplog.text
    assert MARKER not in caplog.text


def test_no_credential_available_is_permanent_and_says_what_to_set(backend: LogsIngestionBackend) -> None:
    settings = LogAnalyticsSinkSettings.from_env(sink_env(backend))
    sink = LogAnalyticsSink(settings, credential=StaticCredential(CredentialUnavailableError("no IMDS endpoint")))
    with pytest.raises(SinkPermanentError, match="SINK_LOGANALYTICS_CLIENT_ID"):
        sink.send(audit_records(1), CONTEXT)
    with pytest.raises(SinkPermanentError, match="no credential"):
        sink.check()
    sink.close()


# -- health check


def test_check_proves_token_dcr_and_role_without_storing_anything(
    backend: LogsIngestionBackend, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="o365collector"):
        make_sink().check()
    (probe,) = backend.uploads
    assert probe.status == 204
    assert probe.body == b"[]"
    assert backend.records == []
    (line,) = [r.getMessage() for r in caplog.records if r.name == "o365collector.sinks.loganalytics"]
    assert "\n" not in line
    assert DCR_ID in line


@pytest.mark.parametrize(
    ("arrange", "error", "expected"),
    [
        ("revoke_role", SinkPermanentError, "Monitoring Metrics Publisher"),
        ("wrong_dcr", SinkPermanentError, "SINK_LOGANALYTICS_DCR_ID"),
        ("busy", SinkTransientError, "answered 503"),
    ],
)
def test_check_fails_in_one_line_saying_what_is_wrong(
    backend: LogsIngestionBackend, make_sink: SinkFactory, arrange: str, error: type[Exception], expected: str
) -> None:
    overrides = {"SINK_LOGANALYTICS_DCR_ID": "dcr-" + "ab" * 16} if arrange == "wrong_dcr" else {}
    if arrange == "revoke_role":
        backend.revoke_role()
    if arrange == "busy":
        backend.fail_next(1, 503)
    with pytest.raises(error) as caught:
        make_sink(**overrides).check()
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
    assert len(backend.uploads) == 1, "the probe is not retried"


# -- settings


def base_env(**overrides: str) -> dict[str, str]:
    return {
        "SINK_LOGANALYTICS_ENDPOINT": "https://dcr-x.westeurope-1.ingest.monitor.azure.com",
        "SINK_LOGANALYTICS_DCR_ID": DCR_ID,
        **overrides,
    }


def test_settings_defaults() -> None:
    settings = LogAnalyticsSinkSettings.from_env(
        base_env(SINK_LOGANALYTICS_ENDPOINT="https://a.b.ingest.monitor.azure.com/")
    )
    assert settings.endpoint == "https://a.b.ingest.monitor.azure.com"
    assert settings.stream == "Custom-O365AuditLogs"
    assert settings.scope == "https://monitor.azure.com/.default"
    assert settings.client_secret_auth is None
    assert settings.managed_identity_client_id is None
    assert settings.max_retries == 3
    assert settings.upload_url.endswith(
        f"/dataCollectionRules/{DCR_ID}/streams/Custom-O365AuditLogs?api-version=2023-01-01"
    )


@pytest.mark.parametrize(
    ("overrides", "setting", "fragment"),
    [
        ({"SINK_LOGANALYTICS_ENDPOINT": ""}, "SINK_LOGANALYTICS_ENDPOINT", "is required"),
        ({"SINK_LOGANALYTICS_ENDPOINT": "http://dce.example"}, "SINK_LOGANALYTICS_ENDPOINT", "https"),
        (
            {"SINK_LOGANALYTICS_ENDPOINT": f"https://x.ingest.monitor.azure.com/dataCollectionRules/{DCR_ID}"},
            "SINK_LOGANALYTICS_ENDPOINT",
            "endpoint alone",
        ),
        ({"SINK_LOGANALYTICS_DCR_ID": ""}, "SINK_LOGANALYTICS_DCR_ID", "is required"),
        ({"SINK_LOGANALYTICS_DCR_ID": "dcr-123"}, "SINK_LOGANALYTICS_DCR_ID", "immutable id"),
        (
            {"SINK_LOGANALYTICS_DCR_ID": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Insights/x"},
            "SINK_LOGANALYTICS_DCR_ID",
            "resource id",
        ),
        ({"SINK_LOGANALYTICS_STREAM": "O365AuditLogs"}, "SINK_LOGANALYTICS_STREAM", "Custom-"),
        ({"SINK_LOGANALYTICS_AUDIENCE": "monitor.azure.com"}, "SINK_LOGANALYTICS_AUDIENCE", "https"),
        ({"SINK_LOGANALYTICS_CLIENT_ID": "not-a-guid"}, "SINK_LOGANALYTICS_CLIENT_ID", "GUID"),
        ({"SINK_LOGANALYTICS_TENANT_ID": LA_TENANT}, "SINK_LOGANALYTICS_APP_CLIENT_ID", "set all three"),
        (
            {"SINK_LOGANALYTICS_APP_CLIENT_ID": LA_APP, "SINK_LOGANALYTICS_CLIENT_SECRET": "s"},
            "SINK_LOGANALYTICS_TENANT_ID",
            "set all three",
        ),
        (
            {
                "SINK_LOGANALYTICS_TENANT_ID": LA_TENANT,
                "SINK_LOGANALYTICS_APP_CLIENT_ID": LA_APP,
                "SINK_LOGANALYTICS_CLIENT_SECRET": "s",
                "SINK_LOGANALYTICS_CLIENT_ID": LA_APP,
            },
            "SINK_LOGANALYTICS_CLIENT_ID",
            "keep one",
        ),
        ({"SINK_LOGANALYTICS_AUTHORITY_HOST": "https://login.example"}, "SINK_LOGANALYTICS_AUTHORITY_HOST", "only"),
        ({"SINK_LOGANALYTICS_MAX_RETRIES": "11"}, "SINK_LOGANALYTICS_MAX_RETRIES", "maximum"),
        ({"SINK_LOGANALYTICS_TIMEOUT_SECONDS": "0"}, "SINK_LOGANALYTICS_TIMEOUT_SECONDS", "minimum"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(overrides: dict[str, str], setting: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LogAnalyticsSinkSettings.from_env(base_env(**overrides))
    assert caught.value.setting == setting
    assert fragment in caught.value.problem


def test_the_secret_is_not_in_the_settings_repr() -> None:
    settings = LogAnalyticsSinkSettings.from_env(
        base_env(
            SINK_LOGANALYTICS_TENANT_ID=LA_TENANT,
            SINK_LOGANALYTICS_APP_CLIENT_ID=LA_APP,
            SINK_LOGANALYTICS_CLIENT_SECRET=LA_SECRET,
        )
    )
    assert LA_SECRET not in repr(settings)
    assert settings.client_secret_auth is not None
    assert settings.client_secret_auth.client_secret.reveal() == LA_SECRET


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        ({}, DefaultAzureCredential),
        ({"SINK_LOGANALYTICS_CLIENT_ID": LA_APP}, ManagedIdentityCredential),
        (
            {
                "SINK_LOGANALYTICS_TENANT_ID": LA_TENANT,
                "SINK_LOGANALYTICS_APP_CLIENT_ID": LA_APP,
                "SINK_LOGANALYTICS_CLIENT_SECRET": LA_SECRET,
            },
            ClientSecretCredential,
        ),
    ],
    ids=["default", "user-assigned-identity", "client-secret"],
)
def test_the_settings_choose_the_credential(overrides: dict[str, str], kind: type) -> None:
    credential = build_credential(LogAnalyticsSinkSettings.from_env(base_env(**overrides)))
    assert isinstance(credential, kind)


def test_the_registry_builds_it_from_sink_type() -> None:
    (settings,) = parse_sink_settings(base_env(SINK_TYPE="loganalytics"))
    assert isinstance(settings, LogAnalyticsSinkSettings)
    assert settings.name == "loganalytics"


# -- end to end


def test_end_to_end_an_outage_of_the_ingestion_endpoint_loses_nothing_and_duplicates_nothing(
    simulator: Simulator,
    backend: LogsIngestionBackend,
    make_collector: Callable[..., Collector],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    now = dt.datetime.now(dt.UTC)
    for content_type in ("Audit.Exchange", "Audit.SharePoint"):
        simulator.generate(
            TENANT.tenant_id,
            content_type,
            now - dt.timedelta(hours=8),
            now - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(hours=1),
            records_per_blob=(1, 8),
        )
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text(Path(simulator.ca_file).read_text() + Path(backend.ca_file).read_text())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    # Down for a while: 503s (each send: one call + one SDK retry) and connections dropped mid-call.
    backend.fail_next(5, 503, retry_after=0)
    backend.drop_next(2)
    collector = make_collector(
        SINK_TYPE="loganalytics",
        O365_CONTENT_TYPES="Audit.Exchange,Audit.SharePoint",
        O365_START_TIME=(now - dt.timedelta(hours=9)).isoformat(),
        O365_MAX_DEQUEUE_COUNT="10",
        SINK_LOGANALYTICS_MAX_RETRIES="1",
        **sink_env(backend),
    )
    assert run_once(collector) == 0
    served = Counter(r["Id"] for b in simulator.blobs(TENANT.tenant_id) if not b.expired for r in b.records)
    assert sum(served.values()) > 10
    assert Counter(r["Id"] for r in backend.records) == served, "each record exactly once"
    failed = [u.status for u in backend.uploads if u.status != 204]
    assert failed.count(503) == 5
    assert failed.count(0) == 2  # the dropped ones
    by_id = {r["Id"]: r for r in backend.records}
    for blob in simulator.blobs(TENANT.tenant_id):
        for record in blob.records:
            assert by_id[record["Id"]] == shipped([record])[0]


# -- the optional ARM template


def template() -> dict[str, Any]:
    return dict(json.loads(TEMPLATE.read_text()))


def resource(kind: str) -> dict[str, Any]:
    (found,) = [r for r in template()["resources"] if r["type"] == kind]
    return dict(found)


def test_template_parameters_and_variables_are_all_defined_and_used() -> None:
    body = template()
    strings = "\n".join(walk_strings(body))
    for kind in ("parameters", "variables"):
        used = set(re.findall(rf"\b{kind}\('([^']+)'\)", strings))
        defined = set(body.get(kind, {}))
        assert used - defined == set(), f"{kind} used but not defined"
        assert defined - used == set(), f"{kind} defined but never used"
    for name, parameter in body["parameters"].items():
        assert parameter.get("metadata", {}).get("description"), f"parameter {name} lacks a description"


def test_template_deploys_table_dcr_and_role_with_the_sink_defaults() -> None:
    body = template()
    assert body["$schema"].endswith("deploymentTemplate.json#")
    assert body["parameters"]["tableName"]["defaultValue"] == "O365OfficeActivity_CL"
    assert body["parameters"]["streamName"]["defaultValue"] == DEFAULT_STREAM
    dcr = resource("Microsoft.Insights/dataCollectionRules")
    assert dcr["kind"] == "Direct"
    # The audit stream's flow (the Microsoft Graph streams' flows are tests/test_sink_labels.py's).
    (flow,) = [f for f in dcr["properties"]["dataFlows"] if "[parameters('streamName')]" in f["streams"]]
    assert flow["streams"] == ["[parameters('streamName')]"]
    assert flow["outputStream"] == "[format('Custom-{0}', parameters('tableName'))]"
    assert "extend TimeGenerated = todatetime(CreationTime)" in body["variables"]["transformKql"]
    assert "[variables('tableId')]" in dcr["dependsOn"], "the DCR validates its output table: create it first"
    role = resource("Microsoft.Authorization/roleAssignments")
    assert body["variables"]["monitoringMetricsPublisher"] == "3913510d-42f4-4e42-8a64-420c390055eb"
    assert (
        role["scope"] == "[format('Microsoft.Insights/dataCollectionRules/{0}', parameters('dataCollectionRuleName'))]"
    )
    assert role["condition"] == "[not(empty(parameters('principalId')))]"
    assert resource("Microsoft.Insights/dataCollectionEndpoints")["condition"] == (
        "[parameters('createDataCollectionEndpoint')]"
    )
    outputs = body["outputs"]
    assert "immutableId" in outputs["dcrImmutableId"]["value"]
    assert "endpoints.logsIngestion" in outputs["logsIngestionEndpoint"]["value"]
    assert "logsIngestion.endpoint" in outputs["logsIngestionEndpoint"]["value"]


KUSTO_TYPES = {"string": "string", "int": "int", "long": "long", "real": "real", "boolean": "bool",
               "datetime": "datetime", "dynamic": "dynamic"}  # fmt: skip
TRANSFORM_CHECK = r"""
const service = process.env.KUSTO_LANGUAGE_SERVICE;
global.Bridge = require(service + "/bridge.js");
require(service + "/Kusto.Language.Bridge.js");
const K = global.Kusto.Language, S = K.Symbols;
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const types = {string: S.ScalarTypes.String, int: S.ScalarTypes.Int, long: S.ScalarTypes.Long,
  real: S.ScalarTypes.Real, bool: S.ScalarTypes.Bool, datetime: S.ScalarTypes.DateTime, dynamic: S.ScalarTypes.Dynamic};
const source = new S.TableSymbol.$ctor4("source", input.columns.map(c => new S.ColumnSymbol(c[0], types[c[1]])));
const globals = K.GlobalState.Default.WithDatabase(new S.DatabaseSymbol.ctor("dcr", [source]));
const out = {};
for (const [name, query] of Object.entries(input.queries)) {
  const code = K.KustoCode.ParseAndAnalyze(query, globals);
  const diagnostics = code.GetDiagnostics(), errors = [], columns = [];
  for (let i = 0; i < diagnostics.Count; i++) {
    const d = diagnostics.getItem(i);
    if (d.Severity === "Error") errors.push(d.Message);
  }
  const result = code.ResultType;
  for (let i = 0; result && result.Columns && i < result.Columns.Count; i++) {
    const c = result.Columns.getItem(i);
    columns.push([c.Name, c.Type.Name]);
  }
  out[name] = {errors, columns};
}
console.log(JSON.stringify(out));
"""


def analyze_transforms(queries: dict[str, str], columns: list[tuple[str, str]]) -> dict[str, Any]:
    """Errors and result columns of each query over a ``source`` table with ``columns`` (name, Kusto type)."""
    result = subprocess.run(
        ["node", "-e", TRANSFORM_CHECK],
        env={**os.environ, "KUSTO_LANGUAGE_SERVICE": str(kusto_language_service())},
        input=json.dumps({"queries": queries, "columns": columns}),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return dict(json.loads(result.stdout))


def test_the_transformation_turns_the_stream_into_exactly_the_table_columns() -> None:
    """Kusto's own analyzer runs the DCR transformation over the stream: its output is the table."""
    body = template()
    stream = [(c["name"], KUSTO_TYPES[c["type"].lower()]) for c in body["variables"]["streamColumns"]]
    table = [(c["name"], KUSTO_TYPES[c["type"].lower()]) for c in body["variables"]["tableColumns"]]
    assert all(c.get("description") for c in body["variables"]["tableColumns"])
    analysis = analyze_transforms(
        {
            "transform": body["variables"]["transformKql"],
            # The checker itself must be able to fail:
            "broken": "source | extend TimeGenerated = todatetime(Nope)",
        },
        stream,
    )
    assert analysis["transform"]["errors"] == []
    assert sorted(map(tuple, analysis["transform"]["columns"])) == sorted(table)
    assert analysis["broken"]["errors"]
    names = {name.lower() for name, _ in table}
    assert not names & {"id", "tenantid", "type", "uniqueid", "title", "_resourceid", "_subscriptionid"}, "reserved"
