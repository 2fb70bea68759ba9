"""The table registry validates each row on its own: a bad row is skipped and reported (log, ``status``,
``health``, ``check``), its neighbours are collected. Credential references reach only what is meant for them:
``setting:`` names ``O365_SECRET_*`` settings only, ``certificate:`` regular files inside
``O365_CERTIFICATE_DIR`` (symlinks resolved), read with a size cap."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from azure.data.tables import TableClient

from o365collector.auth import TokenProvider, read_certificate
from o365collector.azurite import Azurite
from o365collector.config import Settings
from o365collector.diagnose import Verdict, diagnose
from o365collector.envparse import InvalidSettingsError
from o365collector.errors import ConfigError
from o365collector.health import build_report, health_response
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.tenant_config import MAX_CERTIFICATE_BYTES, CertificateCredentialConfig
from tests.support import TENANT, EnvFactory

ROOT = Path(__file__).resolve().parents[1]
BAD_CLOUD = "bbbbbbbb-0000-4000-8000-000000000002"
STORAGE_SECRET = "cccccccc-0000-4000-8000-000000000003"
DEV_ZERO = "dddddddd-0000-4000-8000-000000000004"
FUTURE = "eeeeeeee-0000-4000-8000-000000000005"
DISABLED = "ffffffff-0000-4000-8000-000000000006"


def row(tenant_id: str, **fields: Any) -> dict[str, Any]:
    return {"PartitionKey": "tenant", "RowKey": tenant_id, "tenantId": tenant_id, **fields}


@pytest.fixture
def registry_env(make_env: EnvFactory, azurite: Azurite, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A table registry holding one good row (the simulator's tenant) among bad ones, written directly
    (as an operator editing the table in the portal would), so nothing validated them on the way in."""
    table_name = f"tn{uuid.uuid4().hex[:10]}"
    certificates = tmp_path / "certs"
    certificates.mkdir()
    env = make_env(
        O365_TENANT_TABLE=table_name,
        O365_SECRET_MAIN=TENANT.client_secret,
        O365_CERTIFICATE_DIR=str(certificates),
        O365_CONTENT_TYPES="Audit.Exchange",
    )
    for key in ("O365_TENANT_ID", "O365_CLIENT_SECRET"):
        env.pop(key)
    table = TableClient.from_connection_string(azurite.connection_string, table_name=table_name)
    table.create_table()
    for entity in [
        row(TENANT.tenant_id, clientId=TENANT.client_id, credential="setting:O365_SECRET_MAIN"),
        row(BAD_CLOUD, cloud="Mars"),
        row(STORAGE_SECRET, credential="setting:AzureWebJobsStorage"),
        row(DEV_ZERO, credential="certificate:/dev/zero"),
        row(FUTURE, credential="setting:O365_SECRET_MAIN", startTime="2099-01-01T00:00:00Z"),
        row(DISABLED, cloud="Mars", enabled=False),  # disabled on purpose: neither collected nor judged
    ]:
        table.create_entity(entity)
    yield env
    table.delete_table()


BAD_FIELDS = {
    f"O365_TENANT_TABLE[{BAD_CLOUD}].cloud",
    f"O365_TENANT_TABLE[{STORAGE_SECRET}].credential",
    f"O365_TENANT_TABLE[{DEV_ZERO}].credential",
    f"O365_TENANT_TABLE[{FUTURE}].startTime",
}


def test_a_bad_row_is_skipped_and_the_good_tenants_are_still_collected(
    registry_env: dict[str, str], simulator: Simulator, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    now = dt.datetime.now(dt.UTC)
    simulator.generate(
        TENANT.tenant_id, "Audit.Exchange", now - dt.timedelta(hours=3), now - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    collector = Collector(Settings.from_env(registry_env), environ=registry_env)
    try:
        collector.ensure_resources()
        result = collector.run_lister()
    finally:
        collector.close()
    assert [(s.tenant_id, s.content_type, s.ok) for s in result.streams] == [
        (TENANT.tenant_id, "Audit.Exchange", True)
    ]
    assert result.blobs_enqueued > 0
    assert {p.setting for p in collector.registry_problems} == BAD_FIELDS
    problems = "\n".join(str(p) for p in collector.registry_problems)
    for fragment in ("is not allowed", "outside O365_CERTIFICATE_DIR", "is in the future", "'Mars'"):
        assert fragment in problems
    # The storage connection string was never read as a secret, so never shown either.
    assert azurite.connection_string not in problems + caplog.text
    skipped = [r for r in caplog.records if r.levelname == "ERROR" and "tenant registry row skipped" in r.getMessage()]
    assert len(skipped) == len(BAD_FIELDS)


def test_status_health_and_check_report_the_bad_rows(registry_env: dict[str, str]) -> None:
    collector = Collector(Settings.from_env(registry_env), environ=registry_env)
    try:
        collector.ensure_resources()
        report = build_report(collector)
        code, body = health_response(lambda: collector)
    finally:
        collector.close()
    row_problems = [p for p in report.problems if p.startswith("tenant registry row skipped")]
    assert len(row_problems) == len(BAD_FIELDS)
    assert not report.healthy
    assert code == 503
    served = orjson.loads(body)["problems"]
    assert any(f"O365_TENANT_TABLE[{BAD_CLOUD}].cloud" in p for p in served)

    steps = list(diagnose(registry_env))
    failed_rows = {s.subject for s in steps if s.name == "registry row" and s.verdict is Verdict.FAIL}
    assert failed_rows == BAD_FIELDS
    assert any(s.name == "token" and s.subject == TENANT.tenant_id and s.passed for s in steps)

    status = subprocess.run(
        [sys.executable, "-m", "o365collector", "status"], env={"PATH": "/usr/bin:/bin", **registry_env}, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 1, status.stderr
    assert f"O365_TENANT_TABLE[{DEV_ZERO}].credential" in status.stdout


def registry_settings(entries: object, **extra: str) -> Settings:
    env = {
        "O365_CLIENT_ID": TENANT.client_id,
        "O365_CLIENT_SECRET": "shared-app-secret",
        "AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=c2VjcmV0LWtleS12YWx1ZQ==",
        "SINK_TYPE": "file",
        "SINK_FILE_DIR": "/tmp/o365",
        "O365_TENANTS": orjson.dumps(entries).decode(),
    }
    return Settings.from_env(env | extra)


def test_o365_tenants_stays_strict_and_lists_every_bad_entry() -> None:
    with pytest.raises(InvalidSettingsError) as caught:
        registry_settings(
            [
                {"tenantId": TENANT.tenant_id},
                {"tenantId": BAD_CLOUD, "credential": "setting:AzureWebJobsStorage"},
                {"tenantId": DEV_ZERO, "credential": "certificate:/dev/zero"},
                {"tenantId": FUTURE, "credential": "certificate:../../etc/shadow"},
                {"tenantId": DISABLED, "startTime": "2099-01-01T00:00:00Z"},
            ],
            O365_CERTIFICATE_DIR="/etc/o365collector/certificates",
        )
    assert [e.setting for e in caught.value.errors] == [
        "O365_TENANTS[1].credential",
        "O365_TENANTS[2].credential",
        "O365_TENANTS[3].credential",
        "O365_TENANTS[4].startTime",
    ]
    assert "c2VjcmV0LWtleS12YWx1ZQ==" not in str(caught.value)
    assert "O365_SECRET_<NAME>" in str(caught.value.errors[0])


def test_certificate_references_are_resolved_inside_the_folder() -> None:
    settings = registry_settings(
        [{"tenantId": TENANT.tenant_id, "credential": "certificate:contoso/key.pem"}], O365_CERTIFICATE_DIR="/certs/"
    )
    assert settings.tenants[0].credential == CertificateCredentialConfig(
        TENANT.client_id, "/certs/contoso/key.pem", folder="/certs"
    )


def certificate(path: Path, folder: Path | None) -> CertificateCredentialConfig:
    return CertificateCredentialConfig(TENANT.client_id, str(path), folder=str(folder) if folder else None)


def test_a_certificate_is_read_only_from_a_regular_file_inside_the_folder_within_the_cap(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    pem = folder / "contoso.pem"
    pem.write_bytes(b"-----BEGIN PRIVATE KEY-----\n...\n")
    (folder / "current.pem").symlink_to(pem)  # a link that stays inside (how mounted secrets rotate)
    assert read_certificate(certificate(pem, folder), tenant_id=TENANT.tenant_id).startswith(b"-----BEGIN")
    assert read_certificate(certificate(folder / "current.pem", folder), tenant_id=TENANT.tenant_id) == pem.read_bytes()

    (folder / "zero.pem").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="leads outside"):
        read_certificate(certificate(folder / "zero.pem", folder), tenant_id=TENANT.tenant_id)
    outside = tmp_path / "outside.pem"
    outside.write_bytes(b"x")
    (folder / "escape.pem").symlink_to(outside)
    with pytest.raises(ConfigError, match="leads outside"):
        read_certificate(certificate(folder / "escape.pem", folder), tenant_id=TENANT.tenant_id)

    big = folder / "big.pem"
    big.write_bytes(b"A" * (MAX_CERTIFICATE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than 64 KiB"):
        read_certificate(certificate(big, folder), tenant_id=TENANT.tenant_id)
    exactly = folder / "exactly.pem"
    exactly.write_bytes(b"A" * MAX_CERTIFICATE_BYTES)
    assert len(read_certificate(certificate(exactly, folder), tenant_id=TENANT.tenant_id)) == MAX_CERTIFICATE_BYTES

    fifo = folder / "fifo.pem"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever without O_NONBLOCK
    with pytest.raises(ConfigError, match="not a regular file"):
        read_certificate(certificate(fifo, folder), tenant_id=TENANT.tenant_id)


def test_the_operators_own_certificate_path_is_capped_too(tmp_path: Path) -> None:
    """O365_CLIENT_CERTIFICATE_PATH may be anywhere (the operator set it), but it must be a regular, small file:
    azure-identity read /dev/zero whole and the process grew to gigabytes."""
    with pytest.raises(ConfigError, match=r"O365_CLIENT_CERTIFICATE_PATH: .* is not a regular file"):
        read_certificate(certificate(Path("/dev/zero"), None), tenant_id=TENANT.tenant_id)
    settings = registry_settings([{"tenantId": TENANT.tenant_id}], O365_CLIENT_CERTIFICATE_PATH="/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        TokenProvider(settings.tenants[0])  # refused when the credential is built, before any read
