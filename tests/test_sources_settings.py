"""Which sources each tenant collects (O365_SOURCES, an entry's ``sources``) and the Graph sources' settings.

The default is the audit feed alone, exactly as before sources existed: a deployment that sets nothing new
collects the same streams. A registry entry (O365_TENANTS or a table row) overrides O365_SOURCES for its
tenant. Every refusal names the setting or entry and lists the choices.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from azure.data.tables import TableClient

from o365collector.azurite import Azurite
from o365collector.config import Settings
from o365collector.envparse import InvalidSettingsError
from o365collector.errors import ConfigError
from o365collector.models import CONTENT_TYPES
from o365collector.sources.catalog import DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM, SIGNINS_STREAM
from o365collector.sources.settings import GraphSettings
from o365collector.tenants import TableTenantRegistry

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 12, 5, 12, tzinfo=dt.UTC)
A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "bbbbbbbb-0000-4000-8000-000000000002"
C = "cccccccc-0000-4000-8000-000000000004"
APP = "dddddddd-0000-4000-8000-000000000003"
BASE = {
    "O365_CLIENT_ID": APP,
    "O365_CLIENT_SECRET": "shared-app-secret",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "SINK_TYPE": "file",
    "SINK_FILE_DIR": "/tmp/o365",
}
SINGLE = BASE | {"O365_TENANT_ID": A}
CHOICES = "audit, signins, directoryaudits, messagetrace"


def parse(env: dict[str, str]) -> Settings:
    return Settings.from_env(env, now=NOW)


def tenants_env(entries: list[dict[str, object]], **extra: str) -> dict[str, str]:
    return BASE | {"O365_TENANTS": orjson.dumps(entries).decode()} | extra


# --- defaults: nothing set, nothing changed ----------------------------------------------------------------


def test_a_deployment_that_sets_nothing_new_collects_exactly_the_audit_feed() -> None:
    for env in (SINGLE, tenants_env([{"tenantId": A}]), SINGLE | {"O365_SOURCES": "  "}):
        settings = parse(env)
        (tenant,) = settings.tenants
        assert tenant.sources == ("audit",)
        assert tenant.streams == CONTENT_TYPES
        assert settings.graph == GraphSettings()
    chosen = parse(SINGLE | {"O365_CONTENT_TYPES": "Audit.Exchange,DLP.All"}).tenants[0]
    assert chosen.streams == ("Audit.Exchange", "DLP.All"), "O365_CONTENT_TYPES still picks the audit streams"


# --- O365_SOURCES --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "sources", "streams"),
    [
        ("audit", ("audit",), CONTENT_TYPES),
        ("signins", ("signins",), (SIGNINS_STREAM,)),
        (
            " SignIns , audit,directoryaudits ",
            ("signins", "audit", "directoryaudits"),
            (SIGNINS_STREAM, *CONTENT_TYPES, DIRECTORY_AUDITS_STREAM),
        ),
        ("messagetrace,signins", ("messagetrace", "signins"), (MESSAGE_TRACE_STREAM, SIGNINS_STREAM)),
    ],
)
def test_o365_sources_selects_the_streams(value: str, sources: tuple[str, ...], streams: tuple[str, ...]) -> None:
    (tenant,) = parse(SINGLE | {"O365_SOURCES": value}).tenants
    assert tenant.sources == sources
    assert tenant.streams == streams


def test_without_audit_the_content_types_are_not_listed() -> None:
    (tenant,) = parse(SINGLE | {"O365_SOURCES": "directoryaudits", "O365_CONTENT_TYPES": "Audit.Exchange"}).tenants
    assert tenant.streams == (DIRECTORY_AUDITS_STREAM,)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"O365_SOURCES": "audit,signin"}, f"unknown source 'signin' (expected one of {CHOICES})"),
        ({"O365_SOURCES": "signins,audit,SIGNINS"}, "lists 'signins' twice"),
        ({"O365_SOURCES": ",,"}, f"is empty: name at least one source ({CHOICES})"),
        ({"O365_SOURCES": "messagetrace", "O365_CLOUD": "GCCHigh"}, "'messagetrace' is not served in the GCCHigh"),
        ({"O365_SOURCES": "audit,messagetrace", "O365_CLOUD": "DoD"}, "global service only (Enterprise and GCC"),
    ],
)
def test_a_bad_o365_sources_is_refused_naming_the_setting(extra: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(SINGLE | extra)
    assert caught.value.setting == "O365_SOURCES"
    assert fragment in str(caught.value)


def test_message_trace_is_accepted_for_gcc_which_uses_the_global_graph() -> None:
    (tenant,) = parse(SINGLE | {"O365_SOURCES": "messagetrace", "O365_CLOUD": "GCC"}).tenants
    assert tenant.streams == (MESSAGE_TRACE_STREAM,)


def test_o365_sources_is_checked_also_when_tenants_live_in_a_table() -> None:
    with pytest.raises(ConfigError, match=r"O365_SOURCES: unknown source 'nope'"):
        parse(BASE | {"O365_TENANT_TABLE": "o365tenants", "O365_SOURCES": "nope"})


# --- O365_TENANTS entries --------------------------------------------------------------------------------


def test_an_entry_sources_overrides_o365_sources_for_its_tenant_only() -> None:
    entries: list[dict[str, object]] = [
        {"tenantId": A, "sources": ["audit", "signins"]},
        {"tenantId": B, "sources": "directoryaudits"},
        {"tenantId": C, "cloud": "GCCHigh"},
    ]
    settings = parse(tenants_env(entries, O365_SOURCES="audit,directoryaudits"))
    by_id = {t.tenant_id: t for t in settings.tenants}
    assert by_id[A].sources == ("audit", "signins")
    assert by_id[B].streams == (DIRECTORY_AUDITS_STREAM,)
    assert by_id[C].sources == ("audit", "directoryaudits"), "an entry without sources takes O365_SOURCES"


@pytest.mark.parametrize(
    ("entry", "setting", "fragment"),
    [
        ({"tenantId": B, "sources": ["audit", "graph"]}, "O365_TENANTS[1].sources", "unknown source 'graph'"),
        ({"tenantId": B, "sources": []}, "O365_TENANTS[1].sources", f"is empty: name at least one source ({CHOICES})"),
        ({"tenantId": B, "sources": "audit,audit"}, "O365_TENANTS[1].sources", "lists 'audit' twice"),
        ({"tenantId": B, "sources": 7}, "O365_TENANTS[1].sources", "must be a list or a comma-separated string"),
        ({"tenantId": B, "sources": ["audit", 7]}, "O365_TENANTS[1].sources", "must list source names"),
        (
            {"tenantId": B, "cloud": "DoD", "sources": ["messagetrace"]},
            "O365_TENANTS[1].sources",
            "'messagetrace' is not served in the DoD cloud",
        ),
    ],
)
def test_a_bad_entry_sources_is_refused_naming_the_entry(entry: dict[str, object], setting: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(tenants_env([{"tenantId": A}, entry]))
    assert caught.value.setting == setting
    assert fragment in str(caught.value)


def test_a_default_the_entry_cloud_does_not_serve_names_the_setting_and_the_entry() -> None:
    env = tenants_env([{"tenantId": A}, {"tenantId": B, "cloud": "GCCHigh"}], O365_SOURCES="audit,messagetrace")
    with pytest.raises(ConfigError) as caught:
        parse(env)
    assert caught.value.setting == "O365_SOURCES (the default for O365_TENANTS[1], which has no sources of its own)"
    assert "not served in the GCCHigh cloud" in str(caught.value)
    # The fix the message points at: the entry's own sources.
    env = tenants_env(
        [{"tenantId": A}, {"tenantId": B, "cloud": "GCCHigh", "sources": "audit"}], O365_SOURCES="audit,messagetrace"
    )
    assert [t.sources for t in parse(env).tenants] == [("audit", "messagetrace"), ("audit",)]


# --- the table registry (Azurite) --------------------------------------------------------------------------


@pytest.fixture
def registry(azurite: Azurite) -> TableTenantRegistry:
    table = TableClient.from_connection_string(azurite.connection_string, table_name=f"src{uuid.uuid4().hex[:10]}")
    registry = TableTenantRegistry(table)
    registry.ensure_table()
    return registry


def test_a_table_row_sources_column_overrides_o365_sources_and_a_bad_row_is_skipped_alone(
    registry: TableTenantRegistry,
) -> None:
    env = BASE | {"O365_SOURCES": "audit,signins"}
    registry.add({"tenantId": A, "sources": ["messagetrace", "audit"]}, env, sink_names=("file",), now=NOW)
    registry.add({"tenantId": B}, env, sink_names=("file",), now=NOW)
    stored = {e["tenantId"]: e for e in registry.entries()}
    assert stored[A]["sources"] == "messagetrace,audit", "a list is stored as the column's comma string"
    # A row edited by hand (Storage Explorer): refused on its own, naming the row and the column.
    registry._table.upsert_entity({"PartitionKey": "tenant", "RowKey": C, "tenantId": C, "sources": "audit,foo"})
    loaded = registry.load(env, sink_names=("file",), now=NOW)
    by_id = {t.tenant_id: t for t in loaded.tenants}
    assert by_id[A].streams == (MESSAGE_TRACE_STREAM, *CONTENT_TYPES)
    assert by_id[B].sources == ("audit", "signins"), "a row without the column takes O365_SOURCES"
    assert C not in by_id
    (problem,) = loaded.problems
    assert problem.setting == f"O365_TENANT_TABLE[{C}].sources"
    assert f"unknown source 'foo' (expected one of {CHOICES})" in str(problem)


def test_a_table_row_is_refused_before_storing_when_its_sources_are_bad(registry: TableTenantRegistry) -> None:
    with pytest.raises(ConfigError, match=r"tenant\.sources: 'messagetrace' is not served in the GCCHigh cloud"):
        registry.add(
            {"tenantId": A, "cloud": "GCCHigh", "sources": "messagetrace"}, BASE, sink_names=("file",), now=NOW
        )
    assert registry.entries() == []


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "o365collector", *args], env={"PATH": "/usr/bin:/bin", **env}, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_tenants_add_takes_sources_and_tenants_list_shows_each_tenant_sources(azurite: Azurite) -> None:
    env = BASE | {"AzureWebJobsStorage": azurite.connection_string, "O365_TENANT_TABLE": f"src{uuid.uuid4().hex[:8]}"}
    added = run_cli(env, "tenants", "add", A, "--sources", "signins,directoryaudits")
    assert added.returncode == 0, added.stderr
    refused = run_cli(env, "tenants", "add", B, "--sources", "audit,signin")
    assert refused.returncode == 2
    assert "tenant.sources: unknown source 'signin'" in refused.stderr
    assert run_cli(env, "tenants", "add", C).returncode == 0
    listing = run_cli(env, "tenants", "list")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[2:]}
    assert "signins,directoryaudits" in rows[A]
    assert "audit (O365_SOURCES)" in rows[C], "a row without sources shows the default it takes"
    assert B not in rows


def test_tenants_list_shows_the_sources_in_effect_from_the_settings() -> None:
    env = tenants_env([{"tenantId": A, "sources": "audit,messagetrace"}, {"tenantId": B}], O365_SOURCES="signins")
    listing = run_cli(env, "tenants", "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[2:]}
    assert " audit,messagetrace " in rows[A]
    assert " signins " in rows[B]


# --- the Graph sources' settings ---------------------------------------------------------------------------


def test_graph_settings_are_parsed_once_into_settings() -> None:
    settings = parse(
        SINGLE
        | {
            "O365_GRAPH_URL": "https://127.0.0.1:8443",
            "O365_GRAPH_OVERLAP_MINUTES": "0",
            "O365_GRAPH_WINDOW_MINUTES": "1440",
            "O365_MESSAGE_TRACE_DETAILS": "true",
        }
    )
    assert settings.graph == GraphSettings(
        url="https://127.0.0.1:8443",
        overlap=dt.timedelta(0),
        window=dt.timedelta(days=1),
        message_trace_details=True,
    )


def test_bad_graph_settings_are_all_refused_at_once_each_named() -> None:
    env = SINGLE | {
        "O365_GRAPH_URL": "http://graph.example.com",
        "O365_GRAPH_OVERLAP_MINUTES": "1441",
        "O365_GRAPH_WINDOW_MINUTES": "4",
        "O365_MESSAGE_TRACE_DETAILS": "sometimes",
    }
    with pytest.raises(InvalidSettingsError) as caught:
        parse(env)
    assert {e.setting for e in caught.value.errors} == {
        "O365_GRAPH_URL",
        "O365_GRAPH_OVERLAP_MINUTES",
        "O365_GRAPH_WINDOW_MINUTES",
        "O365_MESSAGE_TRACE_DETAILS",
    }
    text = str(caught.value)
    assert "O365_GRAPH_OVERLAP_MINUTES: 1441 is above the maximum 1440" in text
    assert "O365_GRAPH_WINDOW_MINUTES: 4 is below the minimum 5" in text
    with pytest.raises(ConfigError, match="O365_GRAPH_URL: has an invalid port"):
        parse(SINGLE | {"O365_GRAPH_URL": "https://127.0.0.1:99999"})
