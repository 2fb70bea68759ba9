"""checkov finds nothing in the ARM template beyond the short, documented list of accepted findings.

scripts/checkov.sh runs checkov offline from its own virtual environment, which scripts/bootstrap.sh
installs (pinned); the tests never install it. checkov exits 0 when it cannot parse a template, so these
tests read the JSON summary.

checkov scans every resource whatever its ``condition`` and reads ``[if(...)]`` as a plain string (it only
substitutes a value that is a whole ``[parameters('x')]`` or ``[variables('x')]``). So besides the template
as written, the tests scan both configurations of ``privateNetworking`` rendered by
tests/test_infra_network.py: the default one, where the network checks are accepted findings, and the
private one, where they must pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.test_infra_network import configuration

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "checkov.sh"
TEMPLATE = ROOT / "infra" / "azuredeploy.json"
INFRA_README = ROOT / "infra" / "README.md"
CHECK_ID = re.compile(r"^CKV2?_AZURE_\d+$")
RESOURCE_TYPE = re.compile(r"^(\w+\.\w+(?:/\w+)+)\.")
NOT_INSTALLED = 3  # scripts/checkov.sh's exit code when the bootstrap has not installed checkov
# The checks a private-network deployment satisfies; accepted findings of the default deployment only.
NETWORK_CHECKS = {
    "CKV_AZURE_35": "Microsoft.Storage/storageAccounts",
    "CKV_AZURE_59": "Microsoft.Storage/storageAccounts",
    "CKV_AZURE_109": "Microsoft.KeyVault/vaults",
    "CKV_AZURE_189": "Microsoft.KeyVault/vaults",
    "CKV_AZURE_222": "Microsoft.Web/sites",
}
DEFAULT_ONLY = "Default configuration only"  # how infra/README.md marks those rows


def run_checkov(*args: str, template: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if template is not None:
        env["CHECKOV_TEMPLATE"] = str(template)
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    if result.returncode == NOT_INSTALLED:
        pytest.fail(result.stderr.strip())
    assert result.returncode in (0, 1), f"checkov crashed (rc={result.returncode}): {result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    # One framework gives one report object; checkov returns a list when it ran several.
    reports = report if isinstance(report, list) else [report]
    (arm,) = [r for r in reports if r["check_type"] == "arm"]
    return dict(arm)


@cache
def checkov_report() -> dict[str, Any]:
    return run_checkov()


def script_skip_list() -> list[str]:
    text = SCRIPT.read_text()
    block = re.search(r"^SKIP_CHECKS=\(\n(.*?)^\)$", text, re.M | re.S)
    assert block, "SKIP_CHECKS=( ... ) not found in scripts/checkov.sh"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def documented_skips() -> dict[str, str]:
    """Check id → reason, from the table under "Accepted checkov findings" in infra/README.md."""
    section = INFRA_README.read_text().split("## Accepted checkov findings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(CKV2?_AZURE_\d+)\s*\|[^|]*\|\s*(.*?)\s*\|$", section, re.M)
    return dict(rows)


def test_template_has_no_failed_check_and_parses() -> None:
    summary = checkov_report()["summary"]
    failed = [(c["check_id"], c["check_name"]) for c in checkov_report()["results"].get("failed_checks", [])]
    assert summary["parsing_errors"] == 0
    assert summary["failed"] == 0, failed
    assert summary["passed"] >= 15, "checkov ran far fewer checks than expected"
    assert summary["resource_count"] == len(json.loads(TEMPLATE.read_text())["resources"])


def test_skip_list_in_the_script_is_the_documented_one() -> None:
    skips = script_skip_list()
    assert all(CHECK_ID.match(s) for s in skips), skips
    assert len(skips) == len(set(skips)), "a check is skipped twice"
    assert sorted(skips) == sorted(documented_skips())


def test_every_documented_skip_says_why() -> None:
    for check, reason in documented_skips().items():
        assert len(reason.split()) >= 8, f"{check}: give a real reason"


@cache
def scan_without_script_skips(template: Path, skip: frozenset[str]) -> dict[str, Any]:
    """checkov on ``template`` skipping only ``skip``; passed checks are listed too (no --quiet)."""
    checkov_report()  # fails with the script's message when the bootstrap has not installed checkov
    venv_checkov = Path(os.environ.get("CHECKOV_VENV", ROOT / ".venv-checkov")) / "bin" / "checkov"
    command = [str(venv_checkov), "-f", str(template), "--framework", "arm", "--skip-download", "-o", "json"]
    if skip:
        command += ["--skip-check", ",".join(sorted(skip))]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"}, timeout=300, check=False
    )
    assert result.returncode in (0, 1), f"checkov crashed (rc={result.returncode}): {result.stderr[-2000:]}"
    report = dict(json.loads(result.stdout))
    assert report["summary"]["parsing_errors"] == 0
    return report


def findings(report: dict[str, Any], outcome: str) -> set[tuple[str, str]]:
    """(check id, resource type) pairs with that outcome ("passed" or "failed")."""
    found = set()
    for check in report["results"].get(f"{outcome}_checks", []):
        # checkov names a resource "<type>.<name>"; the type has a dot of its own, the name may have many
        kind = RESOURCE_TYPE.match(check["resource"])
        assert kind, check["resource"]
        found.add((check["check_id"], kind.group(1)))
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """Both configurations of privateNetworking, written where checkov can read them."""
    folder = tmp_path_factory.mktemp("configurations")
    paths = {}
    for private in (False, True):
        paths[private] = folder / f"azuredeploy-private-{str(private).lower()}.json"
        paths[private].write_text(json.dumps(configuration(private), indent=2))
    return paths


def default_only_skips() -> set[str]:
    return {check for check, reason in documented_skips().items() if reason.startswith(DEFAULT_ONLY)}


def test_every_skipped_check_still_fails_without_its_skip(rendered: dict[bool, Path]) -> None:
    """A skip that no longer matches a finding hides nothing: remove it from the list.

    Read on the default configuration as deployed: on the template as written checkov sees the
    ``[if(...)]`` strings, and a check that only forbids one value (CKV_AZURE_59) passes on them.
    """
    failed = {check for check, _ in findings(scan_without_script_skips(rendered[False], frozenset()), "failed")}
    assert set(script_skip_list()) - failed == set()


def test_default_configuration_has_no_finding_beyond_the_skip_list(rendered: dict[bool, Path]) -> None:
    report = run_checkov(template=rendered[False])
    failed = [(c["check_id"], c["resource"]) for c in report["results"].get("failed_checks", [])]
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["failed"] == 0, failed
    assert report["summary"]["resource_count"] == len(configuration(False)["resources"])


def test_private_configuration_passes_the_network_checks(rendered: dict[bool, Path]) -> None:
    """With privateNetworking on, only the skips documented for every configuration are needed."""
    skip = frozenset(script_skip_list()) - default_only_skips()
    report = scan_without_script_skips(rendered[True], skip)
    assert report["summary"]["failed"] == 0, sorted(findings(report, "failed"))
    assert set(NETWORK_CHECKS.items()) <= findings(report, "passed")
    assert report["summary"]["resource_count"] == len(configuration(True)["resources"])


def test_the_skips_marked_default_only_are_exactly_the_network_checks(rendered: dict[bool, Path]) -> None:
    """Each of them fails on the default configuration (it is needed) and passes on the private one."""
    assert default_only_skips() == set(NETWORK_CHECKS)
    assert set(NETWORK_CHECKS.items()) <= findings(scan_without_script_skips(rendered[False], frozenset()), "failed")
    still_failing = findings(scan_without_script_skips(rendered[True], frozenset()), "failed")
    assert {check for check, _ in still_failing} == set(script_skip_list()) - default_only_skips()


def test_a_template_checkov_cannot_parse_is_reported(tmp_path: Path) -> None:
    """checkov exits 0 on an unparsable template: the summary is the only signal, and it is read."""
    broken = tmp_path / "azuredeploy.json"
    broken.write_text(TEMPLATE.read_text()[:2000])
    summary = run_checkov(template=broken)["summary"]
    assert summary["parsing_errors"] == 1
    assert summary["resource_count"] == 0


def test_a_scan_never_installs_checkov_it_names_the_bootstrap_instead(tmp_path: Path) -> None:
    empty = tmp_path / "no-checkov"
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "CHECKOV_VENV": str(empty)},
        timeout=60,
        check=False,
    )
    assert result.returncode == NOT_INSTALLED
    assert "run scripts/bootstrap.sh" in result.stderr
    assert not empty.exists()
