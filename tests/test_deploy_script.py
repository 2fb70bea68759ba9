"""scripts/deploy.sh deploys in the order a first deployment needs: the template with an empty packageUri (the
infrastructure, the identity and its roles), then the code with `az functionapp deploy`, retried with backoff while
the identity's new storage role has not taken effect (403), for a bounded time. Secrets never reach a printed
command, the output or az's command line.

A fake `az` on PATH records each call (and the parameter files it was handed); a fake `sleep` records the waits, so
no test waits for real. The template no longer needs a published release for its defaults.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import o365collector

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "scripts" / "deploy.sh"
TEMPLATE = ROOT / "infra" / "azuredeploy.json"
SECRET = "s3cr3t-Value~with spaces&$HOME"
SINK_TOKEN = "hec-token-5f1d"
APP = "o365col-test"
# What az functionapp deploy prints when the platform cannot write the zip to the deployment container yet.
ROLE_NOT_YET = (
    "ERROR: Deployment failed. Status: 400. BlobUploadFailedException: Failed to upload blob to storage account: "
    "Response status code does not indicate success: 403 (This request is not authorized to perform this "
    "operation using this permission.). AuthorizationPermissionMismatch"
)

FAKE_AZ = """\
#!{python}
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
files = {{}}
for word in argv:
    if word.startswith("@") and Path(word[1:]).is_file():
        files[word[1:]] = Path(word[1:]).read_text()
with open(os.environ["FAKE_AZ_LOG"], "a") as log:
    log.write(json.dumps({{"argv": argv, "files": files}}) + "\\n")
if argv[:3] == ["deployment", "group", "create"]:
    print(os.environ["FAKE_AZ_APP"])
elif argv[:2] == ["functionapp", "deploy"]:
    state = Path(os.environ["FAKE_AZ_LOG"] + ".deploys")
    done = int(state.read_text()) if state.exists() else 0
    state.write_text(str(done + 1))
    if done < int(os.environ.get("FAKE_AZ_FAILURES", "0")):
        print(os.environ["FAKE_AZ_ERROR"], file=sys.stderr)
        sys.exit(1)
    print('{{"status": "RuntimeSuccessful"}}')
else:
    print("fake az: unexpected command", argv, file=sys.stderr)
    sys.exit(3)
"""
FAKE_SLEEP = """\
#!/usr/bin/env bash
echo "$1" >> "$FAKE_SLEEP_LOG"
"""


class Deployer:
    """Runs scripts/deploy.sh with the fake az and sleep first on PATH."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for name, text in {"az": FAKE_AZ.format(python=sys.executable), "sleep": FAKE_SLEEP}.items():
            path = self.bin / name
            path.write_text(text)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        self.az_log = tmp_path / "az.log"
        self.sleep_log = tmp_path / "sleep.log"
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        self.zip = tmp_path / "o365collector-test.zip"
        self.zip.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: the fake az never opens it
        self.dist = tmp_path / "dist"

    def run(self, *args: str, failures: int = 0, error: str = ROLE_NOT_YET, **env: str) -> Result:
        environ = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "TMPDIR": str(self.tmpdir),  # where deploy.sh's mktemp puts the secure parameters file
            "DIST_DIR": str(self.dist),
            "FAKE_AZ_LOG": str(self.az_log),
            "FAKE_AZ_APP": APP,
            "FAKE_AZ_FAILURES": str(failures),
            "FAKE_AZ_ERROR": error,
            "FAKE_SLEEP_LOG": str(self.sleep_log),
            **env,
        }
        completed = subprocess.run(
            ["bash", str(DEPLOY), *args], env=environ, capture_output=True, text=True, timeout=60, check=False
        )
        calls = [json.loads(line) for line in self.az_log.read_text().splitlines()] if self.az_log.exists() else []
        sleeps = [int(s) for s in self.sleep_log.read_text().split()] if self.sleep_log.exists() else []
        return Result(completed.returncode, completed.stdout, completed.stderr, calls, sleeps)


class Result:
    def __init__(self, code: int, stdout: str, stderr: str, calls: list[dict[str, Any]], sleeps: list[int]) -> None:
        self.code, self.stdout, self.stderr, self.calls, self.sleeps = code, stdout, stderr, calls, sleeps

    @property
    def commands(self) -> list[str]:
        """The printed commands, in order (lines starting with '+ ')."""
        return [line[2:] for line in self.stdout.splitlines() if line.startswith("+ ")]

    def kinds(self) -> list[str]:
        return [" ".join(call["argv"][:3]) for call in self.calls]


@pytest.fixture
def deployer(tmp_path: Path) -> Deployer:
    return Deployer(tmp_path)


def parameters_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--parameters"]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


FIRST_DEPLOYMENT = (
    "--resource-group",
    "rg-o365",
    "--parameters",
    f"appName={APP}",
    "clientId=11111111-1111-1111-1111-111111111111",
    f"clientSecret={SECRET}",
    "sinkType=splunk",
    "--parameters",
    f"sinkSplunkToken={SINK_TOKEN}",
)


def test_dry_run_prints_package_then_template_without_code_then_retried_code_deploy(deployer: Deployer) -> None:
    result = deployer.run(*FIRST_DEPLOYMENT, "--dry-run")
    assert result.code == 0, result.stderr
    assert result.calls == []
    assert result.sleeps == []

    build, template, code = result.commands
    assert build == f"bash {ROOT}/scripts/package.sh"
    assert template.startswith(f"az deployment group create --resource-group rg-o365 --template-file {TEMPLATE} ")
    words = template.split(" --parameters ")
    assert words[1:4] == [f"appName={APP}", "clientId=11111111-1111-1111-1111-111111111111", "sinkType=splunk"]
    assert "clientSecret" in words[4]
    assert "sinkSplunkToken" in words[4]
    assert words[-1].startswith("packageUri= ")  # last: nothing the caller passes can add code to the template

    zip_path = deployer.dist / f"o365collector-{o365collector.__version__}.zip"
    assert code == f"az functionapp deploy --resource-group rg-o365 --name {APP} --src-path {zip_path} --type zip"
    between = result.stdout.split(template)[1].split(code)[0]
    assert "403" in between
    assert "retried" in between

    for secret in (SECRET, SINK_TOKEN, "s3cr3t"):
        assert secret not in result.stdout + result.stderr


def test_first_deployment_waits_for_the_storage_role_then_deploys_the_code(deployer: Deployer) -> None:
    result = deployer.run(*FIRST_DEPLOYMENT, "--zip", str(deployer.zip), failures=2)
    assert result.code == 0, result.stderr
    assert result.kinds() == ["deployment group create"] + ["functionapp deploy --resource-group"] * 3

    template = result.calls[0]["argv"]
    assert option(template, "--template-file") == str(TEMPLATE)
    params = parameters_of(template)
    assert params[-1] == "packageUri="
    assert {f"appName={APP}", "sinkType=splunk"} <= set(params)
    # The secrets reach az through a parameters file, never its command line, and the file is gone afterwards.
    (secure_file,) = [p[1:] for p in params if p.startswith("@")]
    handed = json.loads(result.calls[0]["files"][secure_file])["parameters"]
    assert handed == {"clientSecret": {"value": SECRET}, "sinkSplunkToken": {"value": SINK_TOKEN}}
    assert not Path(secure_file).exists()
    assert list(deployer.tmpdir.iterdir()) == []
    assert all(SECRET not in word and SINK_TOKEN not in word for call in result.calls for word in call["argv"])

    code = result.calls[-1]["argv"]
    assert code == ["functionapp", "deploy", "--resource-group", "rg-o365", "--name", APP,
                    "--src-path", str(deployer.zip), "--type", "zip"]  # fmt: skip
    assert result.sleeps == [15, 30]  # backoff, no wait before the first try
    assert result.stdout.count("Storage Blob Data Owner role to take effect") == 2
    for secret in (SECRET, SINK_TOKEN):
        assert secret not in result.stdout + result.stderr


def test_code_deployment_gives_up_after_the_bounded_wait_and_says_what_to_do(deployer: Deployer) -> None:
    result = deployer.run(*FIRST_DEPLOYMENT, "--zip", str(deployer.zip), failures=99, DEPLOY_ROLE_WAIT_SECONDS="100")
    assert result.code == 1
    assert result.sleeps == [15, 30, 55]  # the last wait is cut to the budget
    assert result.kinds().count("functionapp deploy --resource-group") == 4
    assert f"scripts/deploy.sh --resource-group rg-o365 --name {APP} --code-only --zip {deployer.zip}" in result.stderr
    assert "Storage Blob Data Owner" in result.stderr


def test_a_failure_that_is_not_the_storage_role_is_not_retried(deployer: Deployer) -> None:
    error = "ERROR: (ResourceNotFound) The Resource 'Microsoft.Web/sites/o365col-test' was not found."
    result = deployer.run(*FIRST_DEPLOYMENT, "--zip", str(deployer.zip), failures=1, error=error)
    assert result.code == 1
    assert result.sleeps == []
    assert result.kinds().count("functionapp deploy --resource-group") == 1
    assert "not retried" in result.stderr
    assert "--code-only" in result.stderr


def test_code_only_deploys_the_zip_to_a_named_app_without_the_template(deployer: Deployer) -> None:
    result = deployer.run("-g", "rg-o365", "--name", "o365col-other", "--code-only", "--zip", str(deployer.zip))
    assert result.code == 0, result.stderr
    assert [call["argv"] for call in result.calls] == [
        ["functionapp", "deploy", "--resource-group", "rg-o365", "--name", "o365col-other",
         "--src-path", str(deployer.zip), "--type", "zip"]
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ("--dry-run",),  # no resource group
        ("-g", "rg", "--parameters", "packageUri=https://example.invalid/x.zip", "--dry-run"),
        ("-g", "rg", "--parameters", "not-a-parameter", "--dry-run"),
        ("-g", "rg", "--code-only", "--dry-run"),  # no --name
        ("-g", "rg", "--zip", "/no/such/file.zip", "--dry-run"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(deployer: Deployer, args: tuple[str, ...]) -> None:
    result = deployer.run(*args)
    assert result.code == 2
    assert result.stderr.startswith("deploy.sh: ")
    assert result.calls == []


def template() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(TEMPLATE.read_text())
    return loaded


def test_template_defaults_need_no_published_release() -> None:
    """With the defaults ("Deploy to Azure" untouched) the template deploys no code, so nothing can 404."""
    parameters = template()["parameters"]
    assert parameters["packageUri"]["defaultValue"] == ""
    assert "releaseVersion" not in parameters  # it only built the old default URL
    (onedeploy,) = [r for r in template()["resources"] if r["type"] == "Microsoft.Web/sites/extensions"]
    assert onedeploy["condition"] == "[not(empty(parameters('packageUri')))]"


def test_one_template_path_deploys_code_only_after_the_storage_role_exists() -> None:
    (onedeploy,) = [r for r in template()["resources"] if r["type"] == "Microsoft.Web/sites/extensions"]
    role = "[extensionResourceId(variables('storageId'), 'Microsoft.Authorization/roleAssignments', variables('blobRoleAssignmentName'))]"  # noqa: E501
    assert role in onedeploy["dependsOn"]
