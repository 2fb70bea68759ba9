"""Messages that send the admin the right way: each names the real cause and the setting (or entry) at fault,
in one line, without a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from azure.core.exceptions import AzureError
from azure.identity import CredentialUnavailableError

from o365collector import cli, storage
from o365collector.config import Settings
from o365collector.diagnose import Verdict, diagnose
from o365collector.errors import ConfigError, UnknownTenantError
from o365collector.redaction import summary
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.sinks import blob
from tests.support import TENANT, EnvFactory

ROOT = Path(__file__).resolve().parents[1]
NOT_A_TENANT = "99999999-2222-4333-8444-555555555555"
UNRESOLVED = "@Microsoft.KeyVault(SecretUri=https://kv-o365.vault.azure.net/secrets/o365-client-secret/)"


def set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


# -- Key Vault references -----------------------------------------------------------------------------


def test_an_unresolved_key_vault_reference_is_reported_as_such_not_as_a_wrong_secret(make_env: EnvFactory) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(make_env(O365_CLIENT_SECRET=UNRESOLVED))
    assert info.value.setting == "O365_CLIENT_SECRET"
    assert "Key Vault reference not resolved" in str(info.value)
    assert "Key Vault Secrets User" in str(info.value)
    steps = list(diagnose(make_env(O365_CLIENT_SECRET=UNRESOLVED)))
    assert [s.name for s in steps] == ["settings"]  # never sent to the login host as a secret
    assert steps[0].detail.startswith("O365_CLIENT_SECRET: Key Vault reference not resolved")


def test_a_sink_secret_left_as_a_key_vault_reference_names_the_sink_setting(make_env: EnvFactory) -> None:
    env = make_env(SINK_TYPE="splunk", SINK_SPLUNK_URL="https://127.0.0.1:9", SINK_SPLUNK_TOKEN=UNRESOLVED)
    with pytest.raises(ConfigError, match=r"SINK_SPLUNK_TOKEN: Key Vault reference not resolved"):
        Settings.from_env(env)


# -- storage: sign-in and a malformed connection string -------------------------------------------------


class NobodySignedIn:
    """DefaultAzureCredential on a machine with no `az login` and no managed identity (no network used)."""

    def __init__(self, **_kwargs: Any) -> None:
        pass

    def get_token(self, *_scopes: str, **_kwargs: Any) -> Any:
        raise CredentialUnavailableError(message="AzureCliCredential: Please run az login to set it up\n" * 40)


@pytest.fixture
def identity_storage(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env()
    del env["AzureWebJobsStorage"]
    env |= {
        # https: azure-core sends bearer tokens over TLS only; the token is asked for first, so nothing connects
        "AzureWebJobsStorage__queueServiceUri": "https://127.0.0.1:9",
        "AzureWebJobsStorage__tableServiceUri": "https://127.0.0.1:9",
    }
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    set_env(monkeypatch, env)
    monkeypatch.setattr(storage, "DefaultAzureCredential", NobodySignedIn)


@pytest.mark.parametrize("command", [["status"], ["replay-poison", "--dry-run"]])
def test_no_az_login_is_reported_as_that_in_one_line(
    identity_storage: None, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(command) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert "az login" in captured.err
    assert "AzureWebJobsStorage" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "role" not in captured.err  # not sent looking for missing roles


def test_a_malformed_storage_connection_string_is_named_and_not_echoed(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_env(monkeypatch, make_env(AzureWebJobsStorage="AccountKey-is-secret-value"))
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: AzureWebJobsStorage: is not a valid storage connection string")
    assert "AccountKey-is-secret-value" not in err
    steps = list(diagnose(make_env(AzureWebJobsStorage="DefaultEndpointsProtocol=https;AccountName=a;AccountKey=@@")))
    assert steps[0].verdict is Verdict.FAIL
    assert steps[0].detail == "AzureWebJobsStorage: its AccountKey is not base64: copy the key again from the account"


# -- tenants named by their entry -----------------------------------------------------------------------


def test_an_unknown_tenant_names_o365_tenants_when_the_tenants_come_from_it(make_env: EnvFactory) -> None:
    entries = orjson.dumps([{"tenantId": TENANT.tenant_id}]).decode()
    env = make_env(O365_TENANTS=entries)
    collector = Collector(Settings.from_env(env), sinks=[], environ=env)
    try:
        with pytest.raises(UnknownTenantError) as info:
            collector.api(NOT_A_TENANT)
    finally:
        collector.close()
    assert info.value.setting == "O365_TENANTS"
    assert str(info.value) == f"O365_TENANTS: tenant {NOT_A_TENANT} is not configured in this deployment"


def test_check_names_a_wrong_tenant_by_its_o365_tenants_entry(simulator: Simulator, make_env: EnvFactory) -> None:
    entries = orjson.dumps([{"tenantId": TENANT.tenant_id}, {"tenantId": NOT_A_TENANT}]).decode()
    steps = [s for s in diagnose(make_env(O365_TENANTS=entries)) if s.name == "token"]
    by_tenant = {s.subject: s for s in steps}
    assert by_tenant[TENANT.tenant_id].verdict is Verdict.OK
    wrong = by_tenant[NOT_A_TENANT]
    assert wrong.verdict is Verdict.FAIL
    assert "O365_TENANTS[1].tenantId" in wrong.detail
    assert "O365_TENANT_ID" not in wrong.detail


# -- sinks' sign-in failures cut between words ----------------------------------------------------------


def test_long_sign_in_texts_are_cut_between_words_with_an_ellipsis() -> None:
    clip = summary
    text = "DefaultAzureCredential failed to retrieve a token from the included credentials " * 10
    clipped = clip(text, 120)
    assert len(clipped) <= 120
    assert clipped.endswith("…")
    assert text.startswith(clipped[:-1])
    assert text[len(clipped) - 1] == " "  # the next character was a space: no word was cut
    assert clip("short text", 120) == "short text"


def test_the_blob_sinks_sign_in_failure_is_redacted_then_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    from o365collector.redaction import register_secret

    register_secret("s3cr3t-value-that-is-long")
    err = AzureError("token request echoed client_secret=s3cr3t-value-that-is-long " + "and more words " * 30)
    line = blob._first_line(err)
    assert "s3cr3t" not in line
    assert line.endswith("…")
    assert not line.endswith(" …")


# -- simulate prints every setting, Azurite's included ------------------------------------------------------


@pytest.fixture
def simulate() -> Iterator[dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "o365collector", "simulate", "--days", "0.2", "--output", "sim-out"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert process.stdout is not None
    env: dict[str, str] = {}
    try:
        for line in process.stdout:
            if not line.startswith("export "):
                break
            name, _, value = line.removeprefix("export ").strip().partition("=")
            env[name] = value.strip("'")
            if name == "SINK_FILE_DIR":
                break
        yield env
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


def test_simulate_prints_every_setting_check_needs(
    simulate: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {"O365_TENANT_ID", "O365_CLIENT_SECRET", "REQUESTS_CA_BUNDLE", "AzureWebJobsStorage", "SINK_TYPE"} <= set(
        simulate
    )
    assert "127.0.0.1" in simulate["AzureWebJobsStorage"]
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", simulate["REQUESTS_CA_BUNDLE"])
    env = simulate | {"SINK_FILE_DIR": str(tmp_path)}
    verdicts = {s.name: s.verdict for s in diagnose(env, confirm=lambda _q: False)}
    assert verdicts["settings"] is Verdict.OK
    assert verdicts["token"] is Verdict.OK
    assert verdicts["storage"] is Verdict.OK
