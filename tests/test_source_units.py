"""A Graph unit's id, URL and the checks that refuse a forged or misrouted one (``sources.graph_units``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from o365collector.errors import ApiPermanentError, ApiTransientError
from o365collector.models import FetchTask, TimeWindow
from o365collector.sources.entra import DIRECTORY_AUDIT_LOG, SIGN_INS
from o365collector.sources.graph import classify_graph_response, graph_root, graph_scope
from o365collector.sources.graph_units import parse_unit_id, unit_id, unit_problem, unit_uri
from o365collector.sources.message_trace import MESSAGE_TRACE_LOG, details_uri, trace_key
from o365collector.tenant_config import TenantConfig, tenant_from_env

TENANT_ID = "00000000-0000-0000-0000-0000000000a1"
ROOT = "https://graph.microsoft.com"
START = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
WINDOW = TimeWindow(START, START + dt.timedelta(hours=1))
RETENTION = dt.timedelta(days=30)


def tenant(cloud: str = "Enterprise") -> TenantConfig:
    return tenant_from_env(
        {
            "O365_TENANT_ID": TENANT_ID,
            "O365_CLIENT_ID": "00000000-0000-0000-0000-0000000000b2",
            "O365_CLIENT_SECRET": "not-a-secret",
            "O365_CLOUD": cloud,
        }
    )


def task(**changes: object) -> FetchTask:
    base = FetchTask(
        tenant_id=TENANT_ID,
        content_type=SIGN_INS.stream,
        content_id=unit_id(SIGN_INS.stream, WINDOW),
        content_uri=unit_uri(ROOT, SIGN_INS, WINDOW),
        content_created=WINDOW.end,
        content_expiration=WINDOW.start + RETENTION,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_unit_id_names_the_stream_and_window_and_reads_back() -> None:
    assert unit_id(SIGN_INS.stream, WINDOW) == "Entra.SignIns_20261201T100000Z_20261201T110000Z"
    assert parse_unit_id(SIGN_INS.stream, unit_id(SIGN_INS.stream, WINDOW)) == WINDOW


def test_unit_uri_filters_the_window_on_the_streams_time_field() -> None:
    uri = unit_uri(ROOT, SIGN_INS, WINDOW)
    parts = urlsplit(uri)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://graph.microsoft.com/v1.0/auditLogs/signIns"
    assert "$filter=" in parts.query
    assert " " not in parts.query
    assert parse_qs(parts.query) == {
        "$filter": ["createdDateTime ge 2026-12-01T10:00:00Z and createdDateTime le 2026-12-01T11:00:00Z"]
    }
    audits = parse_qs(urlsplit(unit_uri(ROOT, DIRECTORY_AUDIT_LOG, WINDOW)).query)
    assert audits["$filter"][0].startswith("activityDateTime ge ")


def test_message_trace_uri_uses_le_and_pages_of_5000() -> None:
    """The service documents only ge/le on receivedDateTime, and $top up to 5,000."""
    query = parse_qs(urlsplit(unit_uri(ROOT, MESSAGE_TRACE_LOG, WINDOW)).query)
    assert query["$filter"] == ["receivedDateTime ge 2026-12-01T10:00:00Z and receivedDateTime le 2026-12-01T11:00:00Z"]
    assert query["$top"] == ["5000"]
    assert parse_qs(urlsplit(unit_uri(ROOT, MESSAGE_TRACE_LOG, WINDOW, top=1)).query)["$top"] == ["1"]


def test_a_listed_unit_has_no_problem() -> None:
    assert unit_problem(task(), spec=SIGN_INS, root=ROOT, tenant_id=TENANT_ID, retention=RETENTION) is None


OTHER = TimeWindow(START + dt.timedelta(hours=1), START + dt.timedelta(hours=2))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"tenant_id": "00000000-0000-0000-0000-0000000000ff"}, "tenantId is not this client's tenant"),
        ({"content_type": "Audit.Exchange"}, "contentType is not the stream"),
        ({"content_id": "Entra.SignIns_x"}, "not <stream>_<start>_<end>"),
        ({"content_id": "Entra.SignIns_20261201T110000Z_20261201T100000Z"}, "window is empty"),
        ({"content_id": "Entra.SignIns_20261101T100000Z_20261201T100000Z"}, "wider than"),
        ({"content_id": "Entra.DirectoryAudits_20261201T100000Z_20261201T110000Z"}, "does not start with the stream"),
        ({"content_uri": unit_uri("https://evil.example", SIGN_INS, WINDOW)}, "contentUri is not the Graph URL"),
        ({"content_uri": unit_uri(ROOT, SIGN_INS, OTHER)}, "contentUri is not the Graph URL"),
        ({"content_uri": unit_uri(ROOT, DIRECTORY_AUDIT_LOG, WINDOW)}, "contentUri is not the Graph URL"),
        ({"content_uri": unit_uri(ROOT, SIGN_INS, WINDOW) + "&$select=id"}, "contentUri is not the Graph URL"),
        ({"content_id": unit_id(SIGN_INS.stream, OTHER)}, "contentUri is not the Graph URL"),
        ({"content_created": START}, "contentCreated is not the end"),
        ({"content_expiration": START + dt.timedelta(days=400)}, "contentExpiration"),
    ],
)
def test_a_forged_unit_is_refused_with_the_reason(changes: dict[str, object], why: str) -> None:
    problem = unit_problem(task(**changes), spec=SIGN_INS, root=ROOT, tenant_id=TENANT_ID, retention=RETENTION)
    assert problem is not None
    assert why in problem
    assert "evil" not in problem  # names what is wrong, never echoes the message's values


def test_graph_root_and_scope_per_cloud() -> None:
    """The token audience is the cloud's real Graph even when O365_GRAPH_URL points elsewhere."""
    assert graph_root(tenant()) == "https://graph.microsoft.com"
    assert graph_root(tenant("GCCHigh")) == "https://graph.microsoft.us"
    assert graph_root(tenant("DoD")) == "https://dod-graph.microsoft.us"
    assert graph_root(tenant(), "https://127.0.0.1:8443/") == "https://127.0.0.1:8443"
    assert graph_scope(tenant("GCC")) == "https://graph.microsoft.com/.default"
    assert graph_scope(tenant("DoD")) == "https://dod-graph.microsoft.us/.default"


def test_message_trace_key_and_details_url() -> None:
    row = {"id": "4d3c-a/b", "recipientAddress": "O'Brien@Contoso.com"}
    assert trace_key(row) == "4d3c-a/b|o'brien@contoso.com"  # one trace id per message: one row per recipient
    url = details_uri(ROOT, row)
    assert url == (
        "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces/4d3c-a%2Fb/"
        "getDetailsByRecipient(recipientAddress='O%27%27Brien@Contoso.com')"
    )
    assert details_uri(ROOT, {"id": "x"}) is None


def _error(code: str, message: str = "m") -> bytes:
    return f'{{"error": {{"code": "{code}", "message": "{message}", "innerError": {{}}}}}}'.encode()


ARGS = {"what": "read", "source": "signins", "permission": "AuditLog.Read.All", "graph": ROOT}


def test_throttling_is_transient_with_its_retry_after() -> None:
    error = classify_graph_response(429, _error("TooManyRequests"), {"Retry-After": "7"}, **ARGS)
    assert isinstance(error, ApiTransientError)
    assert error.throttled
    assert error.retry_after == 7
    for status in (503, 504, 500, 408):
        assert isinstance(classify_graph_response(status, b"", {}, **ARGS), ApiTransientError)


@pytest.mark.parametrize(
    ("status", "code", "action"),
    [
        (
            403,
            "Authorization_RequestDenied",
            "grant the Microsoft Graph application permission AuditLog.Read.All to the app and give admin consent",
        ),
        (403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant", "Entra ID P1 or P2"),
        (403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant", "directory audits still work"),
        (401, "InvalidAuthenticationToken", "its audience must be https://graph.microsoft.com"),
        (400, "BadRequest", "Invalid filter (source signins)"),
    ],
)
def test_refusals_say_what_the_admin_must_do(status: int, code: str, action: str) -> None:
    error = classify_graph_response(status, _error(code, "Invalid filter"), {}, **ARGS)
    assert isinstance(error, ApiPermanentError)
    assert error.code == code
    assert error.status == status
    assert action in str(error)
    assert "signins" in str(error)


def test_message_trace_outside_the_global_cloud_is_a_setting_error() -> None:
    """Graph serves message trace in the global service only: GCC High and DoD tenants are told to drop it."""
    from o365collector.errors import ConfigError
    from o365collector.sources.catalog import MESSAGE_TRACE_STREAM
    from o365collector.sources.graph_source import graph_client
    from o365collector.sources.settings import GraphSettings

    def build(cloud: str) -> object:
        return graph_client(
            tenant(cloud),
            MESSAGE_TRACE_STREAM,
            settings=GraphSettings(),
            session=requests.Session(),
            clock=lambda: START,
            claim_lease=dt.timedelta(minutes=10),
        )

    with pytest.raises(ConfigError, match="remove messagetrace"):
        build("GCCHigh")
    build("GCC")  # GCC's Graph is the global service
