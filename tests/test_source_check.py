"""``check``'s step per Microsoft Graph source: one probe call per tenant and source, OK when the service
answers, FAIL with the permission to grant or the licence to buy when it refuses (against the simulator's
Graph endpoints), SKIP without a token; the verdict logic itself on stub probes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from o365collector.config import Settings
from o365collector.diagnose import Step, Verdict, diagnose
from o365collector.errors import ApiPermanentError, ApiTransientError
from o365collector.simulator import Simulator
from o365collector.source_check import probe_source, source_verdicts
from o365collector.sources.catalog import SOURCES
from o365collector.tenant_config import TenantConfig
from tests.support import TENANT, EnvFactory

OTHER = "22222222-3333-4444-8555-666666666666"
GRAPH = "audit,signins,directoryaudits"


def graph_env(make_env: EnvFactory, simulator: Simulator, tenant_id: str, **overrides: str) -> dict[str, str]:
    return make_env(
        O365_TENANT_ID=tenant_id,
        O365_SOURCES=GRAPH,
        O365_GRAPH_URL=simulator.api_url,  # Graph is served on the same origin
        O365_CONTENT_TYPES="Audit.Exchange",
        **overrides,
    )


def source_steps(env: dict[str, str]) -> dict[str, Step]:
    return {s.name: s for s in diagnose(env) if s.name.startswith("source ")}


def test_each_graph_source_is_probed_with_the_fix_the_admin_acts_on(simulator: Simulator, make_env: EnvFactory) -> None:
    """A tenant granted everything passes; one whose app lacks AuditLog.Read.All fails both Entra sources
    naming it; one without Entra ID P1/P2 fails sign-ins with the licence text while directory audits pass."""
    granted = source_steps(graph_env(make_env, simulator, TENANT.tenant_id))
    assert {name: s.verdict for name, s in granted.items()} == {
        "source signins": Verdict.OK,
        "source directoryaudits": Verdict.OK,
    }
    assert "AuditLog.Read.All (Microsoft Graph) works" in granted["source signins"].detail

    simulator.add_tenant(dataclasses.replace(TENANT, tenant_id=OTHER, graph_roles=()))
    denied = source_steps(graph_env(make_env, simulator, OTHER))
    for name in ("source signins", "source directoryaudits"):
        assert denied[name].verdict is Verdict.FAIL, denied[name]
        assert "AuditLog.Read.All" in denied[name].detail
        assert denied[name].subject == OTHER

    unlicensed_id = "33333333-4444-4555-8666-777777777777"
    simulator.add_tenant(dataclasses.replace(TENANT, tenant_id=unlicensed_id, entra_premium=False))
    unlicensed = source_steps(graph_env(make_env, simulator, unlicensed_id))
    assert unlicensed["source directoryaudits"].verdict is Verdict.OK
    assert unlicensed["source signins"].verdict is Verdict.FAIL
    assert "P1 or P2" in unlicensed["source signins"].detail


def test_message_trace_in_a_gcc_high_tenant_is_refused_naming_the_source(make_env: EnvFactory) -> None:
    steps = list(diagnose(make_env(O365_CLOUD="GCCHigh", O365_SOURCES="audit,messagetrace")))
    assert steps[0].name == "settings"
    assert steps[0].verdict is Verdict.FAIL
    assert "messagetrace" in steps[0].detail
    assert "GCCHigh" in steps[0].detail


def test_an_audit_only_tenant_has_no_source_steps(simulator: Simulator, make_env: EnvFactory) -> None:
    assert source_steps(make_env(O365_CONTENT_TYPES="Audit.Exchange")) == {}


# -- the verdicts on stub probes (pure logic) -----------------------------------------------------------


class StubProbe:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls = 0

    def probe(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


def tenant(make_env: EnvFactory, **changes: Any) -> TenantConfig:
    base = Settings.from_env(make_env(O365_SOURCES=GRAPH + ",messagetrace")).tenants[0]
    return dataclasses.replace(base, **changes)


def _for(probe: StubProbe) -> Callable[[str, str], object]:
    return lambda _tenant, _stream: probe


@pytest.mark.parametrize(
    ("error", "verdict", "words"),
    [
        (None, "OK", ["AuditLog.Read.All (Microsoft Graph) works"]),
        (
            ApiPermanentError(
                "Insufficient privileges to complete the operation.", status=403, code="Authorization_RequestDenied"
            ),
            "FAIL",
            ["the app lacks AuditLog.Read.All (Microsoft Graph)", "admin consent", "Insufficient privileges"],
        ),
        (
            ApiPermanentError(
                "Neither tenant is B2C or tenant doesn't have premium license",
                status=403,
                code="Authentication_RequestFromNonPremiumTenantOrB2CTenant",
            ),
            "FAIL",
            ["no Microsoft Entra ID P1 or P2 licence", "remove signins from its sources"],
        ),
        (ApiTransientError("429 TooManyRequests after 2 attempts"), "FAIL", ["could not verify AuditLog.Read.All"]),
        (RuntimeError("boom"), "FAIL", ["RuntimeError: boom"]),
    ],
)
def test_a_probe_outcome_becomes_one_verdict_with_the_fix(
    make_env: EnvFactory, error: Exception | None, verdict: str, words: list[str]
) -> None:
    result = probe_source(tenant(make_env), SOURCES["signins"], _for(StubProbe(error)), signed_in=True)
    assert (result.name, result.verdict, result.subject) == ("source signins", verdict, TENANT.tenant_id)
    assert result.detail.startswith("Entra ID sign-ins (Microsoft Graph): ")
    for word in words:
        assert word in result.detail


def test_no_probe_without_a_token_nor_for_a_source_the_cloud_does_not_serve(make_env: EnvFactory) -> None:
    probe = StubProbe()
    verdicts = list(source_verdicts(tenant(make_env), _for(probe), signed_in=False))
    assert [(v.name, v.verdict) for v in verdicts] == [
        ("source signins", "SKIP"),
        ("source directoryaudits", "SKIP"),
        ("source messagetrace", "SKIP"),
    ]
    gcc_high = probe_source(tenant(make_env, cloud="GCCHigh"), SOURCES["messagetrace"], _for(probe), signed_in=True)
    assert gcc_high.verdict == "FAIL"
    assert "not in the GCCHigh cloud: remove messagetrace" in gcc_high.detail
    assert probe.calls == 0


def test_the_first_run_step_gives_each_source_its_own_backfill_span(make_env: EnvFactory) -> None:
    """The audit feed backfills 7 days at most, a Graph log up to its own retention: a start time 20 days back
    is cut to 7 days for the content types and kept for sign-ins; unset, sign-ins start 30 days back."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = now - dt.timedelta(days=20)
    env = make_env(O365_START_TIME=start.isoformat(), O365_CONTENT_TYPES="Audit.Exchange", O365_SOURCES="audit,signins")
    step = {s.name: s for s in diagnose(env, clock=lambda: now)}["first run"]
    audit_edge = (now - dt.timedelta(days=7) + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%MZ")
    assert step.detail == (
        f"backfilling Audit.Exchange from {audit_edge} (7 days back, the API's limit; the start time "
        f"{start.strftime('%Y-%m-%dT%H:%MZ')} is older) to now; "
        f"backfilling Entra.SignIns from {start.strftime('%Y-%m-%dT%H:%MZ')} "
        "(the start time set, 20.0 days back) to now"
    )
    unset = {s.name: s for s in diagnose(make_env(O365_START_TIME="", O365_SOURCES="signins"), clock=lambda: now)}
    graph_edge = (now - dt.timedelta(days=30) + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%MZ")
    assert unset["first run"].detail == (
        f"backfilling Entra.SignIns from {graph_edge} (30 days back, the API's limit) to now"
    )
    assert "Graph sources signins" in unset["settings"].detail


def test_a_tenant_collecting_only_graph_sources_skips_the_audit_feeds_steps_and_probes_each_source(
    simulator: Simulator, make_env: EnvFactory
) -> None:
    """Its app need not hold ActivityFeed.Read: `check` passes on the Graph permissions alone, and a bad
    credential still fails, at the Graph probes (each signs in itself)."""
    simulator.add_tenant(dataclasses.replace(TENANT, tenant_id=OTHER, roles=()))  # no audit feed role at all
    env = make_env(O365_TENANT_ID=OTHER, O365_SOURCES="signins,directoryaudits", O365_GRAPH_URL=simulator.api_url)
    steps = list(diagnose(env))
    names = [s.name for s in steps]
    assert "permissions" not in names
    assert "subscriptions" not in names
    skipped = next(s for s in steps if s.name == "audit feed")
    assert skipped.verdict is Verdict.SKIP
    probes = [s for s in steps if s.name.startswith("source ")]
    assert [s.name for s in probes] == ["source signins", "source directoryaudits"]
    assert all(s.verdict is Verdict.OK for s in probes), probes
    wrong = list(diagnose(env | {"O365_CLIENT_SECRET": "not-the-secret"}))
    assert all(s.verdict is Verdict.FAIL for s in wrong if s.name.startswith("source ")), wrong
