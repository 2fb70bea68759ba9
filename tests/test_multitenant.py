"""Several tenants in one deployment, on Azurite + the simulator: healthy tenants ship exactly once,
a tenant with a bad secret is reported and skipped, a hard-throttled tenant catches up without starving the others."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterator

import orjson
import pytest

from o365collector.cli import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator, TenantSpec
from tests.receivers import HttpReceiver
from tests.support import TENANT

HEALTHY = ["a1000000-0000-4000-8000-000000000001", "a2000000-0000-4000-8000-000000000002"]
BAD_SECRET = "b3000000-0000-4000-8000-000000000003"
THROTTLED = "c4000000-0000-4000-8000-000000000004"
TYPES = ("Audit.Exchange", "Audit.SharePoint", "Audit.General")


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as server:
        yield server


@pytest.fixture
def fleet(simulator: Simulator) -> Simulator:
    now = dt.datetime.now(dt.UTC)
    for index, tenant_id in enumerate([*HEALTHY, BAD_SECRET, THROTTLED]):
        simulator.add_tenant(
            TenantSpec(
                tenant_id=tenant_id,
                client_id=f"d{index}000000-0000-4000-8000-00000000000{index}",
                client_secret=f"secret-of-{index}",
                subscribed=TYPES,
            )
        )
        for content_type in TYPES:
            simulator.generate(
                tenant_id, content_type, now - dt.timedelta(days=1), now - dt.timedelta(minutes=10),
                blob_every=dt.timedelta(hours=2),
            )  # fmt: skip
    simulator.faults.add(Fault(kind="throttle", route="any", rate=0.5, tenant_id=THROTTLED))
    return simulator


def fleet_settings() -> dict[str, str]:
    entries = []
    secrets = {}
    for index, tenant_id in enumerate([*HEALTHY, BAD_SECRET, THROTTLED]):
        secret = "not-the-secret" if tenant_id == BAD_SECRET else f"secret-of-{index}"
        secrets[f"SECRET_{index}"] = secret
        entries.append(
            {
                "tenantId": tenant_id,
                "clientId": f"d{index}000000-0000-4000-8000-00000000000{index}",
                "credential": f"setting:SECRET_{index}",
                "contentTypes": list(TYPES),
            }
        )
    return {"O365_TENANTS": orjson.dumps(entries).decode(), "O365_LIST_CONCURRENCY": "4", **secrets}


def shipped_by_tenant(receiver: HttpReceiver) -> dict[str, Counter[str]]:
    result: dict[str, Counter[str]] = {}
    for record in receiver.records:
        result.setdefault(record["OrganizationId"], Counter())[record["Id"]] += 1
    return result


def served(sim: Simulator, tenant_id: str) -> Counter[str]:
    return Counter(r["Id"] for b in sim.blobs(tenant_id) for r in b.records)


def test_many_tenants_share_one_deployment_fairly(
    fleet: Simulator,
    receiver: HttpReceiver,
    make_collector: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = fleet_settings()
    for key, value in settings.items():  # registry entries resolve secrets from the process environment
        monkeypatch.setenv(key, value)
    collector = make_collector(
        SINK_TYPE="http", SINK_URL=receiver.url, O365_RETRY_MAX_ATTEMPTS="12", O365_TENANT_ID="", **settings
    )
    with caplog.at_level(logging.INFO):
        assert run_once(collector) == 1, "the tenant with the bad secret fails the run"

    by_tenant = shipped_by_tenant(receiver)
    for tenant_id in [*HEALTHY, THROTTLED]:
        assert by_tenant.get(tenant_id) == served(fleet, tenant_id), tenant_id
    assert BAD_SECRET not in by_tenant
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lister run failed")]
    assert len(failed) == len(TYPES)
    assert all(BAD_SECRET in m and "AADSTS7000215" in m for m in failed)
    # the broken tenant's credentials were tried once, not once per content type
    token_calls = [e for e in fleet.stats.recent if e.route == "token" and e.tenant_id == BAD_SECRET]
    assert len(token_calls) == 1
    assert fleet.stats.faults["throttle"] > 0
    # every queue message carried its tenant, and the one queue served them all
    assert TENANT.tenant_id not in by_tenant
