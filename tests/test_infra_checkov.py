"""checkov finds nothing in the ARM template beyond the short, documented list of accepted findings.

scripts/checkov.sh runs checkov offline from its own virtual environment, which scripts/bootstrap.sh
installs (pinned); the tests never install it. checkov exits 0 when it cannot parse a template, so these
tests read the JSON summary.
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

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "checkov.sh"
TEMPLATE = ROOT / "infra" / "azuredeploy.json"
INFRA_README = ROOT / "infra" / "README.md"
CHECK_ID = re.compile(r"^CKV2?_AZURE_\d+$")
NOT_INSTALLED = 3  # scripts/checkov.sh's exit code when the bootstrap has not installed checkov


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


def test_every_skipped_check_still_fails_without_its_skip() -> None:
    """A skip that no longer matches a finding hides nothing: remove it from the list."""
    venv_checkov = Path(os.environ.get("CHECKOV_VENV", ROOT / ".venv-checkov")) / "bin" / "checkov"
    checkov_report()  # fails with the script's message when the bootstrap has not installed checkov
    result = subprocess.run(
        [str(venv_checkov), "-f", str(TEMPLATE), "--framework", "arm", "--skip-download", "--quiet", "-o", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        timeout=300,
        check=False,
    )
    failed = {c["check_id"] for c in json.loads(result.stdout)["results"]["failed_checks"]}
    assert set(script_skip_list()) - failed == set()


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
