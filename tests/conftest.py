"""Shared fixtures: Azurite (one per test session), the simulator, and settings wired to both.

Everything listens on 127.0.0.1 only. Each test gets its own queue and table names, so tests share
one Azurite without seeing each other's state.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.data.tables import TableClient

from o365collector.azurite import Azurite, find_azurite, start_azurite
from o365collector.config import Settings
from o365collector.runtime import Collector
from o365collector.simulator import Simulator, SimulatorConfig
from o365collector.simulator.cli import demo_environment
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    if find_azurite() is None:
        pytest.fail("Azurite is not installed: the test command runs `npm ci` first (scripts/bootstrap.sh)")
    instance = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield instance
    instance.stop()


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(SimulatorConfig(seed=42, page_size=7))
    sim.add_tenant(TENANT)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def trust_simulator(simulator: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """requests and azure-identity trust the simulator's self-signed certificate via REQUESTS_CA_BUNDLE."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", simulator.ca_file)


@pytest.fixture
def names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return {
        "O365_CONTENT_QUEUE": f"content-{suffix}",
        "O365_CHECKPOINT_TABLE": f"cp{suffix}",
        "O365_LEDGER_TABLE": f"ledger{suffix}",
        "O365_STATUS_TABLE": f"status{suffix}",
    }


@pytest.fixture
def table(azurite: Azurite) -> TableClient:
    """A fresh, empty table on the session's Azurite."""
    client = TableClient.from_connection_string(azurite.connection_string, table_name=f"t{uuid.uuid4().hex[:12]}")
    client.create_table()
    return client


@pytest.fixture
def make_env(
    simulator: Simulator, azurite: Azurite, names: dict[str, str], tmp_path: Path, trust_simulator: None
) -> EnvFactory:
    """App settings pointing at the simulator, Azurite and a file sink in a temp folder."""

    def factory(**overrides: str) -> dict[str, str]:
        env = (
            demo_environment(simulator, TENANT)
            | names
            | {
                "AzureWebJobsStorage": azurite.connection_string,
                "SINK_TYPE": "file",
                "SINK_FILE_DIR": str(tmp_path / "out"),
                "O365_RETRY_BACKOFF_SECONDS": "0.01",
                "O365_RETRY_MAX_SECONDS": "10",
                "O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "0",
                # Bounded history keeps first runs short; tests that need the 7-day edge override it.
                "O365_START_TIME": (dt.datetime.now(dt.UTC) - dt.timedelta(days=3, hours=1)).isoformat(),
            }
        )
        env.update(overrides)
        return env

    return factory


@pytest.fixture
def make_collector(make_env: EnvFactory) -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def factory(clock: Callable[[], dt.datetime] | None = None, **overrides: str) -> Collector:
        settings = Settings.from_env(make_env(**overrides))
        collector = Collector(settings, clock=clock) if clock else Collector(settings)
        collector.ensure_resources()
        made.append(collector)
        return collector

    yield factory
    for collector in made:
        collector.close()


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    """A loopback HTTP receiver for the http sink (tests that need another receiver define their own)."""
    with HttpReceiver() as server:
        yield server
