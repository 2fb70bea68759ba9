"""Per-publisher API pacing shared across instances through Table Storage (``o365collector.pacing``).

Three ``Collector`` instances on one Azurite list streams of one tenant as fast as their own pacing lets
them, against a simulator whose quota is counted per publisher per window. Windows are shortened to one
second on both sides (the simulator's quota window and the pacer's), so that "minutes" pass quickly;
budget, quota and the per-process pace scale with them. Without shared pacing the three together go
over the quota and are answered AF429 (the contrasting case that proves the mechanism); with it no
window is over the quota, nothing is throttled, and the storage transactions pacing costs per API call
stay bounded (counted on the wire, at the storage REST calls).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient

from o365collector.azurite import Azurite
from o365collector.config import Settings
from o365collector.envparse import InvalidSettingsError
from o365collector.errors import CollectorError
from o365collector.models import CONTENT_TYPES, TimeWindow
from o365collector.pacing import PACING_PARTITION, ROW_PREFIX, SharedPacing, fleet_pacing_stats
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from tests.support import TENANT, EnvFactory, now

TID = TENANT.tenant_id
INSTANCES = 3
CALLS_EACH = 30
PER_MINUTE = 1200  # per second: 20 calls per instance (RateLimiter), and a 20-call shared budget per 1 s window
QUOTA = 32  # per 1 s window at the simulator: above the shared budget (20), below three instances' pace (60)
SLICE = 5
PUBLISHER = "c0ffee00-aaaa-4bbb-8ccc-dddddddddddd"  # letters: its upper-case form differs


@pytest.fixture
def pacing_table(names: dict[str, str]) -> str:
    return "pacing" + names["O365_STATUS_TABLE"].removeprefix("status")


@dataclasses.dataclass
class TableCalls:
    """Storage REST calls to one table, counted at azure-core's transport (each is a billed transaction)."""

    table: str
    count: int = 0

    @staticmethod
    def table_of(url: str) -> str:
        segments = [s for s in urlsplit(url).path.split("/") if s]
        return segments[1].partition("(")[0] if len(segments) > 1 else ""


@pytest.fixture
def pacing_calls(monkeypatch: pytest.MonkeyPatch, pacing_table: str) -> TableCalls:
    calls = TableCalls(pacing_table)
    original = RequestsTransport.send
    lock = threading.Lock()

    def send(transport: RequestsTransport, request: Any, **kwargs: Any) -> Any:
        if TableCalls.table_of(request.url) == calls.table:
            with lock:
                calls.count += 1
        return original(transport, request, **kwargs)

    monkeypatch.setattr(RequestsTransport, "send", send)
    return calls


def fleet(make_env: EnvFactory, pacing_table: str, *, shared: bool) -> Iterator[Collector]:
    env = make_env(
        O365_MAX_REQUESTS_PER_MINUTE=str(PER_MINUTE),
        O365_SHARED_PACING="true" if shared else "false",
        O365_PACING_TABLE=pacing_table,
        O365_PACING_SLICE=str(SLICE),
    )
    settings = Settings.from_env(env)
    # A one-second "minute": the budget scales with it (PER_MINUTE / 60 calls per window).
    settings = dataclasses.replace(settings, pacing=dataclasses.replace(settings.pacing, window_seconds=1.0))
    for _ in range(INSTANCES):
        collector = Collector(settings)
        collector.ensure_resources()
        yield collector


def list_at_once(collectors: list[Collector]) -> list[BaseException]:
    """Every instance lists CALLS_EACH one-page windows of the tenant's streams, all instances at once."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(collectors))
    end = now() - dt.timedelta(hours=1)

    def work(collector: Collector) -> None:
        api = collector.api(TID)
        api.sign_in()
        start.wait(timeout=30)
        for n in range(CALLS_EACH):
            content_type = CONTENT_TYPES[n % len(CONTENT_TYPES)]
            window = TimeWindow(end - dt.timedelta(minutes=n + 1), end - dt.timedelta(minutes=n))
            try:
                list(api.list_content(content_type, window))
            except CollectorError as err:  # throttled beyond the client's retries (the contrasting case)
                errors.append(err)

    threads = [threading.Thread(target=work, args=(c,)) for c in collectors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a lister did not finish"
    return errors


def test_instances_pacing_alone_together_exceed_the_publisher_quota(
    simulator: Simulator, make_env: EnvFactory, pacing_table: str
) -> None:
    """The contrasting case: each instance within its own pace, the three together over the quota."""
    simulator.options.quota_per_minute = QUOTA
    simulator.options.quota_window = dt.timedelta(seconds=1)
    collectors = list(fleet(make_env, pacing_table, shared=False))
    try:
        list_at_once(collectors)
    finally:
        for collector in collectors:
            collector.close()
    assert simulator.stats.quota.max_per_minute() > QUOTA
    assert simulator.stats.faults["quota"] > 0, "the service answered AF429"


def test_shared_pacing_keeps_every_window_within_the_quota_at_a_bounded_storage_cost(
    simulator: Simulator, make_env: EnvFactory, pacing_table: str, pacing_calls: TableCalls
) -> None:
    simulator.options.quota_per_minute = QUOTA
    simulator.options.quota_window = dt.timedelta(seconds=1)
    collectors = list(fleet(make_env, pacing_table, shared=True))
    before = pacing_calls.count  # the table's creation
    try:
        errors = list_at_once(collectors)
    finally:
        for collector in collectors:
            collector.close()
    assert errors == []
    calls = simulator.stats.requests["list"]
    assert calls == INSTANCES * CALLS_EACH
    assert simulator.stats.faults["quota"] == 0
    assert simulator.stats.responses[403] == 0
    windows = simulator.stats.quota.per_minute()
    assert max(windows.values()) <= QUOTA, sorted(windows.items())
    stats = fleet_pacing_stats(c.pacing for c in collectors)
    assert stats.calls == calls
    assert stats.degraded == 0
    transactions = pacing_calls.count - before
    assert transactions == stats.transactions, "the pacer counts every storage call it makes"
    # One conditional update per slice when alone, a read and a retry more per conflict. Three instances
    # hammering one-second windows collide about once per claim (~0.65 per call measured at slice 5);
    # a bound of one transaction per call still fails if claims stop being amortised over their slice.
    per_call = stats.transactions_per_call
    assert per_call <= 5 / SLICE, (per_call, stats)


def test_a_spent_window_waits_for_the_next_and_an_unspent_slice_expires_with_its_window(
    azurite: Azurite, pacing_table: str
) -> None:
    """Bounded waits (one sleep to the window's end, never a busy loop); a slice is only good in its window."""
    table = TableClient.from_connection_string(azurite.connection_string, pacing_table)
    table.create_table()
    clock = [1000.25]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    a = SharedPacing(table, per_minute=600, slice_size=4, window_seconds=1.0, clock=lambda: clock[0], sleep=sleep)
    b = SharedPacing(table, per_minute=600, slice_size=4, window_seconds=1.0, clock=lambda: clock[0], sleep=sleep)
    pa, pb = a.pacer(PUBLISHER), b.pacer(f" {PUBLISHER.upper()}")  # the publisher id is matched case-insensitively
    # Budget 10 per window: a claims 4+4 (and spends 7), b takes the last 2, then b must wait for the next window.
    assert [pa.acquire() for _ in range(7)] == [0.0] * 7
    assert [pb.acquire() for _ in range(2)] == [0.0, 0.0]
    assert sleeps == []
    waited = pb.acquire()
    assert len(sleeps) == 1, "one sleep to the window's end (plus under 2% of a window at random), no polling"
    assert 0.75 < sleeps[0] <= 0.77
    assert waited == sleeps[0]
    row = table.get_entity(PACING_PARTITION, ROW_PREFIX + PUBLISHER)
    assert (row["Window"], row["Used"]) == (1001, 4)
    # a's unspent call of the old window is gone: it claims anew in this window instead of spending it.
    assert pa.acquire() == 0.0
    assert table.get_entity(PACING_PARTITION, ROW_PREFIX + PUBLISHER)["Used"] == 8
    assert a.stats.claims == 3
    assert b.stats.claims == 2
    assert b.stats.waits == 1


def test_a_slice_larger_than_the_window_budget_is_cut_to_the_budget(azurite: Azurite, pacing_table: str) -> None:
    """O365_PACING_SLICE above a (shortened) window's budget: the first claim must not hand out more than it."""
    table = TableClient.from_connection_string(azurite.connection_string, pacing_table)
    table.create_table()
    clock = [2000.5]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    pacing = SharedPacing(table, per_minute=180, slice_size=25, window_seconds=1.0, clock=lambda: clock[0], sleep=sleep)
    assert (pacing.budget, pacing.slice_size) == (3, 3)
    pacer = pacing.pacer(PUBLISHER)
    assert [pacer.acquire() for _ in range(3)] == [0.0] * 3
    row = table.get_entity(PACING_PARTITION, ROW_PREFIX + PUBLISHER)
    assert (row["Window"], row["Used"]) == (2000, 3)
    assert sleeps == []
    assert pacer.acquire() > 0.0, "the fourth call of the window waits for the next"
    assert len(sleeps) == 1


def test_a_pacing_row_removed_under_a_pacer_is_created_again_without_degrading(
    azurite: Azurite, pacing_table: str
) -> None:
    table = TableClient.from_connection_string(azurite.connection_string, pacing_table)
    table.create_table()
    pacing = SharedPacing(table, per_minute=600, slice_size=2, window_seconds=1.0, clock=lambda: 3000.5)
    pacer = pacing.pacer(PUBLISHER)
    assert [pacer.acquire() for _ in range(2)] == [0.0, 0.0]
    table.delete_entity(PACING_PARTITION, ROW_PREFIX + PUBLISHER)  # an operator cleaning the table, say
    assert pacer.acquire() == 0.0
    assert pacing.stats.degraded == 0
    assert pacing.stats.conflicts == 1
    row = table.get_entity(PACING_PARTITION, ROW_PREFIX + PUBLISHER)
    assert (row["Window"], row["Used"]) == (3000, 2)


def test_a_pacing_table_nobody_created_yet_is_created_by_the_first_claim(azurite: Azurite, pacing_table: str) -> None:
    table = TableClient.from_connection_string(azurite.connection_string, pacing_table)
    pacing = SharedPacing(table, per_minute=600, slice_size=2, window_seconds=1.0, clock=lambda: 4000.5)
    assert pacing.pacer(PUBLISHER).acquire() == 0.0
    assert pacing.stats.degraded == 0
    assert pacing.stats.claims == 1
    assert table.get_entity(PACING_PARTITION, ROW_PREFIX + PUBLISHER)["Used"] == 2


def test_a_pacing_row_not_written_by_a_pacer_is_overwritten_with_a_fresh_window(
    azurite: Azurite, pacing_table: str
) -> None:
    table = TableClient.from_connection_string(azurite.connection_string, pacing_table)
    table.create_table()
    table.create_entity({"PartitionKey": PACING_PARTITION, "RowKey": ROW_PREFIX + PUBLISHER, "Window": "soon"})
    pacing = SharedPacing(table, per_minute=600, slice_size=2, window_seconds=1.0, clock=lambda: 5000.5)
    assert pacing.pacer(PUBLISHER).acquire() == 0.0
    assert pacing.stats.degraded == 0
    row = table.get_entity(PACING_PARTITION, ROW_PREFIX + PUBLISHER)
    assert (row["Window"], row["Used"]) == (5000, 2)


def test_an_unreachable_pacing_table_degrades_to_local_pacing_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = TableClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1",
        "pacing",
        retry_total=0,
    )
    pacing = SharedPacing(table, per_minute=600, slice_size=2, window_seconds=60.0, clock=lambda: 60.0)
    with caplog.at_level(logging.WARNING, logger="o365collector.pacing"):
        assert [pacing.pacer(TID).acquire() for _ in range(5)] == [0.0] * 5
    assert pacing.stats.degraded == 3
    warnings = [r for r in caplog.records if "shared API pacing unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert "O365_PACING_TABLE" in warnings[0].getMessage()


BASE = {
    "O365_TENANT_ID": TID,
    "O365_CLIENT_ID": TENANT.client_id,
    "O365_CLIENT_SECRET": "s",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "SINK_TYPE": "file",
    "SINK_FILE_DIR": "/tmp/o365-out",
}


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),  # the CLI, a single process: its own pacing is exact
        ({"WEBSITE_SITE_NAME": "func-o365"}, True),  # in Azure, where the plan scales out
        ({"WEBSITE_SITE_NAME": "func-o365", "O365_SHARED_PACING": "false"}, False),
        ({"O365_SHARED_PACING": "true"}, True),
    ],
)
def test_shared_pacing_is_on_in_azure_and_off_for_the_cli_unless_set(env: dict[str, str], enabled: bool) -> None:
    settings = Settings.from_env(BASE | env)
    assert settings.pacing.enabled is enabled
    assert (settings.pacing.table, settings.pacing.slice_size) == (None, 25)


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        ("O365_SHARED_PACING", "sometimes", "not a boolean"),
        ("O365_PACING_SLICE", "0", "below the minimum"),
        ("O365_PACING_SLICE", "201", "above the maximum"),
        ("O365_PACING_TABLE", "pacing-table", "not a valid table name"),
    ],
)
def test_bad_pacing_settings_are_refused_naming_the_setting(setting: str, value: str, fragment: str) -> None:
    with pytest.raises(InvalidSettingsError) as caught:
        Settings.from_env(BASE | {setting: value})
    assert any(setting in str(e) and fragment in str(e) for e in caught.value.errors), caught.value.errors


def test_the_pacing_rows_default_to_the_status_table(make_env: EnvFactory, names: dict[str, str]) -> None:
    collector = Collector(Settings.from_env(make_env(O365_SHARED_PACING="true")))
    try:
        assert collector.pacing is not None
        assert collector.pacing.table.table_name == names["O365_STATUS_TABLE"]
        assert collector.pacing.budget == 1500
        assert collector.pacing.slice_size == 25
    finally:
        collector.close()
