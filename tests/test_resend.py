"""``run --resend``: ship a span, then send a sub-span again to a fresh receiver, on the simulator, Azurite
and loopback receivers. Exactly the records of the blobs created in the sub-span arrive, once; the
tenant and sink filters hold; content past retention is reported and not fetched; the ledger is untouched.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from azure.data.tables import TableClient

from o365collector import cli
from o365collector.azurite import Azurite
from o365collector.checkpoints import Ledger
from o365collector.config import Settings
from o365collector.errors import ConfigError
from o365collector.models import FetchTask
from o365collector.resend import request_from_args
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator, TenantSpec
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory

OTHER = TenantSpec(
    tenant_id="e5000000-0000-4000-8000-000000000005",
    client_id="f6000000-0000-4000-8000-000000000006",
    client_secret="other-secret-Zp9!",
    subscribed=("Audit.Exchange", "Audit.SharePoint"),
)
TYPES = ("Audit.Exchange", "Audit.SharePoint")
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
SINCE = NOW - dt.timedelta(hours=8, minutes=30)
UNTIL = NOW - dt.timedelta(hours=4, minutes=30)


@pytest.fixture
def first() -> Iterator[HttpReceiver]:
    with HttpReceiver() as server:
        yield server


@pytest.fixture
def fresh() -> Iterator[HttpReceiver]:
    """The new (or rebuilt) backend the resend goes to."""
    with HttpReceiver() as server:
        yield server


@pytest.fixture
def shipped(
    simulator: Simulator, make_env: EnvFactory, first: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Two tenants' last 12 hours shipped to ``first`` by a normal run; returns the settings used."""
    simulator.add_tenant(OTHER)
    for tenant in (TENANT, OTHER):
        for content_type in TYPES:
            simulator.generate(
                tenant.tenant_id, content_type, NOW - dt.timedelta(hours=12), NOW - dt.timedelta(minutes=10),
                blob_every=dt.timedelta(hours=1),
            )  # fmt: skip
    entries = [
        {"tenantId": t.tenant_id, "clientId": t.client_id, "credential": f"setting:O365_SECRET_{i}"}
        | {"contentTypes": TYPES}
        for i, t in enumerate((TENANT, OTHER))
    ]
    env = make_env(
        SINK_TYPE="http",
        SINK_URL=first.url,
        O365_TENANT_ID="",
        O365_TENANTS=orjson.dumps(entries).decode(),
        O365_SECRET_0=TENANT.client_secret,
        O365_SECRET_1=OTHER.client_secret,
    )
    for key, value in env.items():  # the CLI (and the tenants' secret references) read the process environment
        monkeypatch.setenv(key, value)
    collector = Collector(Settings.from_env(env))
    collector.ensure_resources()
    try:
        assert run_once(collector) == 0
    finally:
        collector.close()
    assert len(first.records) == sum(len(b.records) for t in (TENANT, OTHER) for b in simulator.blobs(t.tenant_id))
    return env


def in_span(sim: Simulator, tenants: tuple[TenantSpec, ...] = (TENANT, OTHER)) -> Counter[str]:
    """Record Ids of the blobs created in [SINCE, UNTIL): what a resend of that span must deliver."""
    return Counter(
        r["Id"] for t in tenants for b in sim.blobs(t.tenant_id) if SINCE <= b.created < UNTIL for r in b.records
    )


def ledger_rows(azurite: Azurite, names: dict[str, str]) -> list[dict[str, Any]]:
    """Every ledger row with its ETag: any write at all would change one."""
    table = TableClient.from_connection_string(azurite.connection_string, names["O365_LEDGER_TABLE"])
    with table:
        rows = [dict(e, etag=e.metadata["etag"]) for e in table.list_entities()]
    return sorted(rows, key=lambda r: (r["PartitionKey"], r["RowKey"]))


def resend(monkeypatch: pytest.MonkeyPatch, *flags: str, **env: str) -> int:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    span = ["--since", SINCE.isoformat(), "--until", UNTIL.isoformat()]
    return cli.main(["run", "--resend", *span, *flags])


def test_a_resent_sub_span_delivers_exactly_its_records_once_and_leaves_the_ledger_unchanged(
    shipped: dict[str, str],
    simulator: Simulator,
    fresh: HttpReceiver,
    azurite: Azurite,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = ledger_rows(azurite, names)
    expected = in_span(simulator)
    assert len(expected) > 20
    assert resend(monkeypatch, SINK_URL=fresh.url) == 0
    assert Counter(r["Id"] for r in fresh.records) == expected, "the span's records, each once, nothing else"
    assert ledger_rows(azurite, names) == before, "the ledger is read, never written"
    blobs = sum(1 for t in (TENANT, OTHER) for b in simulator.blobs(t.tenant_id) if SINCE <= b.created < UNTIL)
    out = capsys.readouterr().out
    assert f"resent {blobs} of {blobs} blobs" in out
    assert f"({sum(expected.values())} records)" in out


def test_tenant_filter_resends_only_that_tenant(
    shipped: dict[str, str], simulator: Simulator, fresh: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resend(monkeypatch, "--tenant", OTHER.tenant_id, SINK_URL=fresh.url) == 0
    assert Counter(r["Id"] for r in fresh.records) == in_span(simulator, (OTHER,))
    assert {r["OrganizationId"] for r in fresh.records} == {OTHER.tenant_id}


def test_an_unknown_tenant_is_refused_naming_it(
    shipped: dict[str, str], fresh: HttpReceiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = "99999999-0000-4000-8000-000000000009"
    assert resend(monkeypatch, "--tenant", stranger, SINK_URL=fresh.url) == 2
    assert stranger in capsys.readouterr().err
    assert fresh.records == []


def test_sink_filter_sends_to_the_named_sink_only(
    shipped: dict[str, str],
    simulator: Simulator,
    fresh: HttpReceiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "rebuilt"
    env = {"SINK_TYPE": "file,http", "SINK_URL": fresh.url, "SINK_FILE_DIR": str(folder)}
    assert resend(monkeypatch, "--sink", "file", **env) == 0
    assert fresh.records == [], "the http sink was not chosen"
    written = Counter(
        orjson.loads(line)["Id"] for path in folder.rglob("*.ndjson") for line in path.read_bytes().splitlines()
    )
    assert written == in_span(simulator)


def test_a_sink_not_in_sink_type_is_refused_naming_it(
    shipped: dict[str, str],
    simulator: Simulator,
    fresh: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fetched = sum(simulator.stats.fetches.values())
    assert resend(monkeypatch, "--sink", "splunk", SINK_URL=fresh.url) == 2
    err = capsys.readouterr().err
    assert "--sink: 'splunk' is not one of SINK_TYPE's sinks (http)" in err
    assert sum(simulator.stats.fetches.values()) == fetched, "nothing was fetched"
    assert fresh.records == []


def test_content_past_retention_is_reported_not_attempted(
    shipped: dict[str, str],
    simulator: Simulator,
    fresh: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Shipped 7 days and an hour ago; the simulator would still serve it, so only the retention rule
    # keeps the resend from asking.
    created = NOW - dt.timedelta(days=7, hours=1)
    old = simulator.add_blob(
        TENANT.tenant_id, "Audit.Exchange", created,
        [{"Id": "old-1", "Operation": "Send", "Workload": "Exchange", "RecordType": 2}],
        expiration=NOW + dt.timedelta(days=1),
    )  # fmt: skip
    collector = Collector(Settings.from_env(shipped))
    try:
        task = FetchTask(TENANT.tenant_id, old.content_type, old.content_id, old.content_uri, created, old.expiration)
        ledger: Ledger = collector.ledger
        ledger.mark_done(ledger.claim(task, "earlier-run", NOW, dt.timedelta(minutes=5)), 1, NOW)
    finally:
        collector.close()
    monkeypatch.setenv("SINK_URL", fresh.url)
    assert cli.main(["run", "--resend", "--since", (NOW - dt.timedelta(days=8)).isoformat()]) == 1
    out, err = capsys.readouterr()
    assert "no longer at the source 1" in out
    assert "NOT RESENT: 1 blobs are no longer at the source" in err
    assert simulator.stats.fetches.get(old.content_id, 0) == 0, "not attempted"
    everything = Counter(r["Id"] for t in (TENANT, OTHER) for b in simulator.blobs(t.tenant_id) for r in b.records)
    del everything["old-1"]
    assert Counter(r["Id"] for r in fresh.records) == everything, "the rest was resent"


def test_dry_run_prints_the_plan_and_sends_nothing(
    shipped: dict[str, str],
    simulator: Simulator,
    fresh: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fetched = sum(simulator.stats.fetches.values())
    assert resend(monkeypatch, "--dry-run", "--tenant", TENANT.tenant_id, SINK_URL=fresh.url) == 0
    out = capsys.readouterr().out
    blobs = [b for b in simulator.blobs(TENANT.tenant_id) if SINCE <= b.created < UNTIL]
    assert f"would resend {len(blobs)} blobs to http" in out
    exchange = [b for b in blobs if b.content_type == "Audit.Exchange"]
    records = sum(len(b.records) for b in exchange)
    assert f"{TENANT.tenant_id} Audit.Exchange: {len(exchange)} blobs shipped in the span ({records} records" in out
    assert fresh.records == []
    assert sum(simulator.stats.fetches.values()) == fetched


def _args(**given: object) -> argparse.Namespace:
    flags: dict[str, object] = {"resend": False, "since": None, "until": None, "sink": None, "tenant": None}
    return argparse.Namespace(**(flags | {"dry_run": False} | given))


@pytest.mark.parametrize(
    ("given", "flag"),
    [
        ({"since": NOW}, "--since"),  # a resend flag without --resend
        ({"dry_run": True}, "--dry-run"),
        ({"resend": True}, "--since"),  # --since is required
        ({"resend": True, "since": NOW, "until": NOW}, "--until"),  # an empty span
    ],
)
def test_flags_that_make_no_resend_are_refused_naming_the_flag(given: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError) as caught:
        request_from_args(_args(**given))
    assert caught.value.setting == flag


def test_run_with_a_resend_flag_but_no_resend_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--once", "--sink", "http"]) == 2
    assert "--sink: is only meaningful with --resend" in capsys.readouterr().err
