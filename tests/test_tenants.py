"""The tenant registry: JSON setting and Table Storage, validation that names the entry, credential references."""

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
from o365collector.errors import ConfigError
from o365collector.models import CONTENT_TYPES
from o365collector.tenant_config import CertificateCredentialConfig, ClientSecretCredentialConfig
from o365collector.tenants import TableTenantRegistry

NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)

ROOT = Path(__file__).resolve().parents[1]
A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "bbbbbbbb-0000-4000-8000-000000000002"
APP = "cccccccc-0000-4000-8000-000000000003"
BASE = {
    "O365_CLIENT_ID": APP,
    "O365_CLIENT_SECRET": "shared-app-secret",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "SINK_TYPE": "file,http",
    "SINK_FILE_DIR": "/tmp/o365",
    "SINK_URL": "https://127.0.0.1:9/ingest",
}


def parse(entries: object, **extra: str) -> Settings:
    return Settings.from_env(BASE | {"O365_TENANTS": orjson.dumps(entries).decode()} | extra)


def test_json_registry_with_shared_and_per_tenant_credentials() -> None:
    settings = parse(
        [
            {"tenantId": A, "name": "Contoso", "contentTypes": ["Audit.Exchange", "dlp.all"]},
            {
                "tenantId": B,
                "clientId": "dddddddd-0000-4000-8000-000000000004",
                "credential": "setting:O365_SECRET_FABRIKAM",
                "cloud": "gcchigh",
                "sinks": ["http"],
            },
        ],
        O365_SECRET_FABRIKAM="fabrikam-secret",
    )
    contoso, fabrikam = settings.tenants
    assert contoso.credential == ClientSecretCredentialConfig(APP, contoso.credential.client_secret)  # type: ignore[union-attr]
    assert contoso.content_types == ("Audit.Exchange", "DLP.All")
    assert contoso.sinks is None
    assert fabrikam.cloud == "GCCHigh"
    assert fabrikam.api_url == "https://manage.office365.us"
    assert isinstance(fabrikam.credential, ClientSecretCredentialConfig)
    assert fabrikam.credential.client_secret.reveal() == "fabrikam-secret"
    assert fabrikam.sinks == ("http",)
    assert fabrikam.content_types == CONTENT_TYPES


def test_certificate_credentials_and_disabled_entries() -> None:
    settings = parse(
        [{"tenantId": A, "credential": "certificate:/secrets/a.pem"}, {"tenantId": B, "enabled": False}],
        O365_CERTIFICATE_DIR="/secrets",
    )
    (only,) = settings.tenants
    assert only.credential == CertificateCredentialConfig(APP, "/secrets/a.pem", folder="/secrets")


def test_the_single_tenant_settings_are_a_one_entry_registry() -> None:
    settings = Settings.from_env(BASE | {"O365_TENANT_ID": A})
    assert [t.tenant_id for t in settings.tenants] == [A]


@pytest.mark.parametrize(
    ("entries", "setting", "fragment"),
    [
        ([{"tenantId": "contoso"}], "O365_TENANTS[0].tenantId", "not a GUID"),
        ([{"tenantId": A}, {"name": "no id"}], "O365_TENANTS[1].tenantId", "required"),
        ([{"tenantId": A, "cloud": "Mars"}], "O365_TENANTS[0].cloud", "Enterprise, GCC"),
        ([{"tenantId": A, "contentTypes": ["Audit.Foo"]}], "O365_TENANTS[0].contentTypes", "'Audit.Foo'"),
        ([{"tenantId": A, "credential": "setting:O365_SECRET_MISSING"}], "O365_TENANTS[0].credential", "not set"),
        ([{"tenantId": A, "credential": "password"}], "O365_TENANTS[0].credential", "setting:O365_SECRET_<NAME>"),
        ([{"tenantId": A, "sinks": ["splunk"]}], "O365_TENANTS[0].sinks", "not in SINK_TYPE"),
        ([{"tenantId": A, "enabled": "yes"}], "O365_TENANTS[0].enabled", "true or false"),
        ([{"tenantId": A, "secret": "x"}], "O365_TENANTS[0]", "unknown field(s) secret"),
        ([{"tenantId": A}, {"tenantId": A.upper()}], "O365_TENANTS", "listed twice"),
        ([], "O365_TENANTS", "non-empty"),
    ],
)
def test_registry_errors_name_the_entry_and_field(entries: object, setting: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(entries)
    assert caught.value.setting == setting
    assert fragment in str(caught.value)


def test_json_and_table_registries_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="not both"):
        parse([{"tenantId": A}], O365_TENANT_TABLE="o365tenants")


@pytest.fixture
def registry(azurite: Azurite) -> TableTenantRegistry:
    table = TableClient.from_connection_string(azurite.connection_string, table_name=f"tn{uuid.uuid4().hex[:10]}")
    registry = TableTenantRegistry(table)
    registry.ensure_table()
    return registry


def test_table_registry_add_disable_remove(registry: TableTenantRegistry) -> None:
    env = BASE | {"O365_SECRET_FABRIKAM": "s"}
    registry.add({"tenantId": A, "name": "Contoso"}, env, sink_names=("file", "http"), now=NOW)
    registry.add({"tenantId": B, "credential": "setting:O365_SECRET_FABRIKAM", "contentTypes": "Audit.General"}, env,
                 sink_names=("file", "http"), now=NOW)  # fmt: skip
    assert sorted(t.tenant_id for t in registry.load(env, sink_names=("file",), now=NOW).tenants) == [A, B]
    with pytest.raises(ConfigError, match="already registered"):
        registry.add({"tenantId": A}, env, sink_names=("file",), now=NOW)
    registry.set_enabled(A, False)
    assert [t.tenant_id for t in registry.load(env, sink_names=("file",), now=NOW).tenants] == [B]
    assert registry.remove(B)
    assert not registry.remove(B)
    assert registry.load(env, sink_names=("file",), now=NOW).tenants == ()


def test_table_registry_refuses_invalid_input_before_storing(registry: TableTenantRegistry) -> None:
    with pytest.raises(ConfigError, match=r"tenant\.contentTypes"):
        registry.add({"tenantId": A, "contentTypes": "Audit.Nope"}, BASE, sink_names=("file",), now=NOW)
    assert registry.entries() == []


def test_tenants_command_manages_the_table_and_never_prints_secrets(azurite: Azurite) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        **BASE,
        "AzureWebJobsStorage": azurite.connection_string,
        "O365_TENANT_TABLE": f"tn{uuid.uuid4().hex[:10]}",
        "O365_SECRET_FABRIKAM": "do-not-print-me",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "o365collector", *args], env=env, cwd=ROOT, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    assert cli("tenants", "add", A, "--name", "Contoso").returncode == 0
    assert cli("tenants", "add", B, "--credential", "setting:O365_SECRET_FABRIKAM", "--cloud", "GCC").returncode == 0
    bad = cli("tenants", "add", "not-a-guid")
    assert bad.returncode == 2
    assert "tenant.tenantId: 'not-a-guid' is not a GUID" in bad.stderr
    assert cli("tenants", "disable", B).returncode == 0
    listing = cli("tenants", "list")
    assert A in listing.stdout
    assert "setting:O365_SECRET_FABRIKAM" in listing.stdout
    assert "do-not-print-me" not in listing.stdout + listing.stderr
    assert "shared-app-secret" not in listing.stdout + listing.stderr
    assert cli("tenants", "remove", A).returncode == 0
    assert A not in cli("tenants", "list").stdout


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "o365collector", *args], env={"PATH": "/usr/bin:/bin", **env}, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_tenants_list_shows_the_o365_tenants_entries_with_their_source() -> None:
    """No table registry: `tenants list` lists the O365_TENANTS tenants in effect, each named by its entry."""
    entries = [
        {"tenantId": A, "name": "Contoso"},
        {"tenantId": B, "credential": "setting:O365_SECRET_FABRIKAM", "enabled": False},
        {"tenantId": APP.replace("c", "e"), "credential": "setting:O365_SECRET_WINGTIP", "cloud": "GCC"},
    ]
    env = BASE | {"O365_TENANTS": orjson.dumps(entries).decode(), "O365_SECRET_WINGTIP": "do-not-print-me"}
    listing = run_cli(env, "tenants", "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0] == "source: O365_TENANTS"
    contoso = next(line for line in lines if line.startswith(A))
    assert "Contoso" in contoso
    assert "shared" in contoso
    assert contoso.endswith("O365_TENANTS[0]")
    wingtip = next(line for line in lines if line.startswith(APP.replace("c", "e")))
    assert "GCC" in wingtip
    assert "setting:O365_SECRET_WINGTIP" in wingtip
    assert wingtip.endswith("O365_TENANTS[2]")
    assert B not in listing.stdout  # disabled: not in effect
    assert "do-not-print-me" not in listing.stdout + listing.stderr


def test_tenants_list_shows_the_single_tenant_settings() -> None:
    env = BASE | {"O365_TENANT_ID": A}
    listing = run_cli(env, "tenants", "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].startswith("source: the single-tenant settings")
    row = next(line for line in listing.stdout.splitlines() if line.startswith(A))
    assert "secret O365_CLIENT_SECRET" in row
    assert row.endswith("O365_TENANT_ID")
    assert "shared-app-secret" not in listing.stdout + listing.stderr


def test_tenants_add_with_a_setting_reference_needs_no_secret_on_this_machine(azurite: Azurite) -> None:
    """The secret lives in the app's settings: the reference's form is checked, its value is not needed here."""
    env = BASE | {"AzureWebJobsStorage": azurite.connection_string, "O365_TENANT_TABLE": f"tn{uuid.uuid4().hex[:10]}"}
    added = run_cli(env, "tenants", "add", B, "--credential", "setting:O365_SECRET_FABRIKAM")
    assert added.returncode == 0, added.stderr
    assert "O365_SECRET_FABRIKAM" in added.stdout
    assert "not needed on this machine" in added.stdout
    # the form is still checked: a reference to any other app setting is refused before anything is stored
    refused = run_cli(env, "tenants", "add", A, "--credential", "setting:AzureWebJobsStorage")
    assert refused.returncode == 2
    assert "tenant.credential" in refused.stderr
    listing = run_cli(env, "tenants", "list")
    assert listing.returncode == 0, listing.stdout + listing.stderr  # the row is valid: no INVALID line
    assert listing.stdout.splitlines()[0].startswith("source: O365_TENANT_TABLE")
    assert "setting:O365_SECRET_FABRIKAM" in listing.stdout
    assert A not in listing.stdout
