"""The simulator answers like Microsoft Graph's log APIs (sign-ins, directory audits, message trace), over real HTTPS.

Each test runs its own simulator on 127.0.0.1 with an injected clock (time moves by assignment). The facts
reproduced, and their sources, are listed in o365collector/simulator/graph.py.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests

from o365collector.simulator import Fault, Simulator, SimulatorConfig, TenantSpec
from o365collector.simulator.cli import add_arguments, build
from o365collector.simulator.graph_data import GraphRecord
from tests.support import Clock

pytestmark = pytest.mark.integration

TENANT = "0f1e2d3c-4b5a-4697-8877-665544332211"
OTHER = "5d4c3b2a-1908-4e7f-a6b5-c4d3e2f1a0b9"
CLIENT = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
SECRET = "s3cret"
NOW = dt.datetime(2024, 5, 20, 12, 0, tzinfo=dt.UTC)
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
SIGNINS, AUDITS, TRACE = "Entra.SignIns", "Entra.DirectoryAudits", "Exchange.MessageTrace"
PATHS = {
    SIGNINS: "auditLogs/signIns",
    AUDITS: "auditLogs/directoryAudits",
    TRACE: "admin/exchange/tracing/messageTraces",
}
FIELDS = {SIGNINS: "createdDateTime", AUDITS: "activityDateTime", TRACE: "receivedDateTime"}
ZERO = (dt.timedelta(0), dt.timedelta(0))


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def sim(clock: Clock) -> Iterator[Simulator]:
    simulator = Simulator(SimulatorConfig(seed=7, now=clock))
    simulator.add_tenant(TenantSpec(TENANT, CLIENT, SECRET))
    # No Graph permission granted, no Entra ID P1/P2 licence.
    simulator.add_tenant(TenantSpec(OTHER, CLIENT, SECRET, graph_roles=(), entra_premium=False))
    with simulator.start():
        yield simulator


def http(sim: Simulator) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = sim.ca_file
    return s


def token(sim: Simulator, scope: str = GRAPH_SCOPE, tenant: str = TENANT) -> str:
    form = {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET, "scope": scope}
    response = http(sim).post(f"{sim.authority_url}/{tenant}/oauth2/v2.0/token", data=form)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def url(sim: Simulator, stream: str, start: dt.datetime | None = None, end: dt.datetime | None = None,
        op: str = "lt", params: dict[str, Any] | None = None) -> str:  # fmt: skip
    query = dict(params or {})
    if start is not None and end is not None:
        field = FIELDS[stream]
        query["$filter"] = f"{field} ge {iso(start)} and {field} {op} {iso(end)}"
    encoded = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
    return f"{sim.api_url}/v1.0/{PATHS[stream]}" + (f"?{encoded}" if encoded else "")


def get(sim: Simulator, address: str, bearer: str, **headers: str) -> requests.Response:
    return http(sim).get(address, headers={"Authorization": f"Bearer {bearer}", **headers})


def read_all(sim: Simulator, address: str, bearer: str) -> tuple[list[dict[str, Any]], int]:
    """Follow @odata.nextLink as given until absent: (records, pages)."""
    records: list[dict[str, Any]] = []
    pages = 0
    next_link: str | None = address
    while next_link is not None and pages < 100:
        response = get(sim, next_link, bearer)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["@odata.context"].startswith(f"{sim.api_url}/v1.0/$metadata#")
        records += body["value"]
        next_link = body.get("@odata.nextLink")
        pages += 1
    return records, pages


def expected(sim: Simulator, stream: str, start: dt.datetime, end: dt.datetime) -> list[str]:
    """Ground truth, newest first: the records Graph has in [start, end) at NOW."""
    rows = [r for r in sim.graph_records(TENANT, stream) if start <= r.time < end and r.available_at <= NOW]
    return [r.id for r in sorted(rows, key=lambda r: r.sort_key, reverse=True)]


def error(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    assert set(body["innerError"]) == {"date", "request-id", "client-request-id"}
    return response.status_code, body["code"], body["message"]


@pytest.mark.parametrize("stream", [SIGNINS, AUDITS, TRACE])
def test_pages_newest_first_through_absolute_next_links_within_the_filter(sim: Simulator, stream: str) -> None:
    sim.generate_graph(TENANT, stream, NOW - dt.timedelta(hours=3), NOW, every=dt.timedelta(minutes=1), lag=ZERO)
    bearer = token(sim)
    start, end = NOW - dt.timedelta(hours=2), NOW - dt.timedelta(minutes=30)
    edge = sim.add_graph_record(TENANT, stream, end)  # on the end bound: in with `le`, out with `lt`
    records, pages = read_all(sim, url(sim, stream, start, end, params={"$top": 25}), bearer)
    ids = [r["id"] for r in records]
    assert ids == expected(sim, stream, start, end)
    assert len(ids) == 90
    assert pages == 4
    assert [r[FIELDS[stream]] for r in records] == sorted((r[FIELDS[stream]] for r in records), reverse=True)
    with_le, _ = read_all(sim, url(sim, stream, start, end, op="le", params={"$top": 1000}), bearer)
    assert [r["id"] for r in with_le] == [edge.id, *ids]
    first = get(sim, url(sim, stream, start, end, params={"$top": 25}), bearer).json()
    assert first["@odata.nextLink"].startswith(f"{sim.api_url}/v1.0/{PATHS[stream]}?")
    assert "$skiptoken=" in first["@odata.nextLink"]


def test_refuses_what_graph_refuses_with_400(sim: Simulator) -> None:
    bearer = token(sim)
    start, end = NOW - dt.timedelta(hours=1), NOW
    bad_filters = [
        "userId ge 2024-05-20T11:00:00Z",  # not the time field
        "createdDateTime ge '2024-05-20T11:00:00Z'",  # quoted
        "createdDateTime ge 2024-05-20T11:00:00",  # no Z
        "createdDateTime ge 2024-05-20",  # a date only
        "createdDateTime ge 2024-05-20T11:00:00Z and createdDateTime ge 2024-05-20T11:10:00Z",
        "createdDateTime ge 2024-05-20T12:00:00Z and createdDateTime lt 2024-05-20T11:00:00Z",  # end before start
        "createdDateTime ge 2024-05-20T11:00:00Z or createdDateTime lt 2024-05-20T12:00:00Z",
    ]
    for text in bad_filters:
        response = get(sim, url(sim, SIGNINS, params={"$filter": text}), bearer)
        assert error(response) == (400, "BadRequest", "Invalid filter clause"), text
    sim.options.graph_strict_filter_operators = True  # the documented operators only: ge, le
    assert get(sim, url(sim, SIGNINS, start, end, op="lt"), bearer).status_code == 400
    assert get(sim, url(sim, SIGNINS, start, end, op="le"), bearer).status_code == 200
    sim.options.graph_strict_filter_operators = False
    for stream, top, status in [(SIGNINS, 1001, 400), (AUDITS, 0, 400), (TRACE, 5001, 400), (TRACE, 5000, 200)]:
        assert get(sim, url(sim, stream, start, end, params={"$top": top}), bearer).status_code == status
    span = get(sim, url(sim, TRACE, NOW - dt.timedelta(days=11), NOW), bearer)  # 10 days per query
    assert span.status_code == 400
    # A skiptoken is opaque and tamper-checked, and bound to its query.
    sim.generate_graph(TENANT, SIGNINS, start, end, every=dt.timedelta(minutes=1), lag=ZERO)
    next_link = get(sim, url(sim, SIGNINS, start, end, params={"$top": 5}), bearer).json()["@odata.nextLink"]
    head, _, rest = next_link.partition("$skiptoken=")
    payload, _, mac = rest.partition(".")  # the resume point, then its MAC: move the point back a year
    moved = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).replace(b"|2024-", b"|2023-")
    forged = head + "$skiptoken=" + base64.urlsafe_b64encode(moved).rstrip(b"=").decode() + "." + mac
    assert error(get(sim, forged, bearer))[:2] == (400, "BadRequest")
    other_query = url(sim, SIGNINS, start, end, params={"$top": 6}) + "&$skiptoken=" + rest
    assert get(sim, other_query, bearer).status_code == 400
    assert get(sim, next_link, bearer).status_code == 200


def test_retention_and_late_records(sim: Simulator, clock: Clock) -> None:
    """30 days for Entra logs, 90 for message trace: older records exist but are not served. A record is
    served only once the clock passes its ``available_at``."""
    bearer = token(sim)
    old_signin = sim.add_graph_record(TENANT, SIGNINS, NOW - dt.timedelta(days=31))
    kept_signin = sim.add_graph_record(TENANT, SIGNINS, NOW - dt.timedelta(days=29))
    old_trace = sim.add_graph_record(TENANT, TRACE, NOW - dt.timedelta(days=91))
    kept_trace = sim.add_graph_record(TENANT, TRACE, NOW - dt.timedelta(days=89))
    assert {old_signin.id, kept_signin.id} <= {r.id for r in sim.graph_records(TENANT, SIGNINS)}
    served, _ = read_all(sim, url(sim, SIGNINS, NOW - dt.timedelta(days=32), NOW), bearer)
    assert [r["id"] for r in served] == [kept_signin.id]

    def traces(start: dt.datetime) -> list[str]:
        return [r["id"] for r in read_all(sim, url(sim, TRACE, start, start + dt.timedelta(days=5)), bearer)[0]]

    assert traces(NOW - dt.timedelta(days=95)) == []
    assert traces(NOW - dt.timedelta(days=90)) == [kept_trace.id]
    assert old_trace.id in {r.id for r in sim.graph_records(TENANT, TRACE)}

    in_five = NOW + dt.timedelta(minutes=5)
    late = sim.add_graph_record(TENANT, AUDITS, NOW - dt.timedelta(minutes=20), available_at=in_five)
    generated = sim.generate_graph(
        TENANT, AUDITS, NOW - dt.timedelta(hours=1), NOW, lag=(dt.timedelta(minutes=1), dt.timedelta(minutes=30))
    )
    assert all(dt.timedelta(minutes=1) <= r.available_at - r.time <= dt.timedelta(minutes=30) for r in generated)
    window = url(sim, AUDITS, NOW - dt.timedelta(hours=1), NOW)
    now_ids = {r["id"] for r in read_all(sim, window, bearer)[0]}
    assert late.id not in now_ids
    assert now_ids == {r.id for r in generated if r.available_at <= NOW}
    clock.now = NOW + dt.timedelta(minutes=31)
    later_ids = {r["id"] for r in read_all(sim, window, token(sim))[0]}
    assert later_ids == {r.id for r in generated} | {late.id}


def test_tokens_permissions_and_licence(sim: Simulator, clock: Clock) -> None:
    start, end = NOW - dt.timedelta(hours=1), NOW
    bearer = token(sim)
    client_request_id = "c0ffee00-0000-4000-8000-000000000001"
    ok = get(sim, url(sim, SIGNINS, start, end), bearer, **{"client-request-id": client_request_id})
    assert ok.status_code == 200
    assert ok.headers["client-request-id"] == client_request_id
    for scope in ("https://graph.microsoft.us/.default", "https://dod-graph.microsoft.us/.default"):
        assert get(sim, url(sim, AUDITS, start, end), token(sim, scope)).status_code == 200
    # An audit-API token is refused by Graph, a Graph token by the audit API.
    audit_token = token(sim, "https://manage.office.com/.default")
    assert error(get(sim, url(sim, SIGNINS, start, end), audit_token))[:2] == (401, "InvalidAuthenticationToken")
    feed = f"{sim.api_url}/api/v1.0/{TENANT}/activity/feed/subscriptions/list"
    assert get(sim, feed, bearer).status_code == 401
    assert get(sim, feed, audit_token).status_code == 200
    missing = http(sim).get(url(sim, SIGNINS, start, end))
    assert error(missing) == (401, "InvalidAuthenticationToken", "Access token is empty.")
    assert error(get(sim, url(sim, SIGNINS, start, end), "not-a-jwt"))[:2] == (401, "InvalidAuthenticationToken")
    # No Graph permission, no P1/P2 licence (tenant OTHER).
    other = token(sim, tenant=OTHER)
    denied = (403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    assert error(get(sim, url(sim, AUDITS, start, end), other)) == denied
    assert error(get(sim, url(sim, SIGNINS, start, end), other)) == denied
    assert error(get(sim, url(sim, TRACE, start, end), other))[:2] == (403, "ErrorAccessDenied")
    sim.add_tenant(TenantSpec("6e5d4c3b-2a19-4f8e-b7a6-d5e4f3a2b1c0", CLIENT, SECRET, entra_premium=False))
    unlicensed = token(sim, tenant="6e5d4c3b-2a19-4f8e-b7a6-d5e4f3a2b1c0")
    assert error(get(sim, url(sim, SIGNINS, start, end), unlicensed)) == (
        403,
        "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
        "Neither tenant is B2C or tenant doesn't have premium license",
    )
    assert get(sim, url(sim, AUDITS, start, end), unlicensed).status_code == 200  # audits need no premium
    clock.now = NOW + dt.timedelta(hours=2)  # past the token's lifetime
    assert error(get(sim, url(sim, SIGNINS, start, end), bearer)) == (
        401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
    )  # fmt: skip


def test_throttling_budget_and_injected_faults(sim: Simulator, clock: Clock) -> None:
    bearer = token(sim)
    address = url(sim, SIGNINS, NOW - dt.timedelta(hours=1), NOW)
    sim.options.graph_requests_per_window = 3
    sim.options.graph_window = dt.timedelta(seconds=10)
    clock.now = NOW + dt.timedelta(seconds=2)
    statuses = [get(sim, address, bearer).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    throttled = get(sim, address, bearer)
    assert error(throttled)[:2] == (429, "TooManyRequests")
    assert throttled.headers["Retry-After"] == "8"
    clock.now = NOW + dt.timedelta(seconds=10)  # the next window
    assert get(sim, address, bearer).status_code == 200
    sim.options.graph_requests_per_window = 0

    sim.faults.add(Fault(kind="http429", route="graph", count=1, retry_after=2.5))
    sim.faults.add(Fault(kind="unavailable", route="directoryaudits", count=1))
    sim.faults.add(Fault(kind="request_timeout", route="messagetrace", count=1))
    sim.faults.add(Fault(kind="drop", route="signins", count=1, tenant_id=TENANT))
    injected = get(sim, address, bearer)
    assert error(injected)[:2] == (429, "TooManyRequests")
    assert injected.headers["Retry-After"] == "3"
    assert error(get(sim, url(sim, AUDITS, NOW - dt.timedelta(hours=1), NOW), bearer))[:2] == (
        503, "serviceNotAvailable"
    )  # fmt: skip
    assert get(sim, url(sim, TRACE, NOW - dt.timedelta(hours=1), NOW), bearer).status_code == 504
    with pytest.raises(requests.ConnectionError):
        get(sim, address, bearer)
    assert get(sim, address, bearer).status_code == 200
    assert sim.stats.requests["signins"] == 9
    assert sim.stats.requests["directoryaudits"] == 1
    assert sim.stats.faults["drop"] == 1
    assert sim.stats.responses[429] == 3


def test_message_trace_details_by_recipient(sim: Simulator) -> None:
    bearer = token(sim)
    (trace,) = [sim.add_graph_record(TENANT, TRACE, NOW - dt.timedelta(hours=1))]
    recipient = trace.body["recipientAddress"]
    base = f"{sim.api_url}/v1.0/admin/exchange/tracing/messageTraces/{trace.id}"
    mine = get(sim, f"{base}/getDetailsByRecipient(recipientAddress='{quote(recipient)}')", bearer)
    assert mine.status_code == 200, mine.text
    details = mine.json()["value"]
    assert details == list(trace.details)
    assert len(details) >= 2
    assert {d["messageId"] for d in details} == {trace.body["messageId"]}
    assert set(details[0]) == {"id", "messageId", "dateTime", "event", "action", "description", "data"}
    other = get(sim, f"{base}/getDetailsByRecipient(recipientAddress='nobody@contoso.com')", bearer)
    assert other.status_code == 200
    assert other.json()["value"] == []
    unknown = f"{sim.api_url}/v1.0/admin/exchange/tracing/messageTraces/{OTHER}"
    assert get(sim, f"{unknown}/getDetailsByRecipient(recipientAddress='a@contoso.com')", bearer).status_code == 404
    assert sim.stats.requests["messagetracedetails"] == 3


def test_records_are_shaped_like_the_documented_resources_and_deterministic(clock: Clock) -> None:
    def make() -> dict[str, list[GraphRecord]]:
        s = Simulator(SimulatorConfig(seed=3, now=clock))
        s.add_tenant(TenantSpec(TENANT, CLIENT, SECRET))
        span = (NOW - dt.timedelta(hours=1), NOW)
        return {stream: s.generate_graph(TENANT, stream, *span) for stream in (SIGNINS, AUDITS, TRACE)}

    first, second = make(), make()
    assert {k: [r.id for r in v] for k, v in first.items()} == {k: [r.id for r in v] for k, v in second.items()}
    signin, audit, trace = first[SIGNINS][0].body, first[AUDITS][0].body, first[TRACE][0].body
    assert {"id", "createdDateTime", "userPrincipalName", "appDisplayName", "ipAddress", "status", "location"} <= set(
        signin
    )
    assert set(signin["status"]) == {"errorCode", "failureReason", "additionalDetails"}
    assert {"id", "activityDateTime", "category", "loggedByService", "operationType", "initiatedBy"} <= set(audit)
    assert set(trace) == {
        "id", "messageId", "receivedDateTime", "senderAddress", "recipientAddress", "subject", "size", "status",
        "fromIP", "toIP",
    }  # fmt: skip
    assert dt.datetime.strptime(signin["createdDateTime"], "%Y-%m-%dT%H:%M:%SZ")


def test_the_simulate_command_generates_graph_logs_for_the_demo() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sim, spec = build(parser.parse_args(["--days", "0.25", "--no-azurite"]), NOW)
    streams = {r.stream for r in sim.graph_records(spec.tenant_id)}
    assert streams == {SIGNINS, AUDITS, TRACE}
