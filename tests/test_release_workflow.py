"""The release workflow (.github/workflows/release.yml): on a version tag it runs the tests, builds the zip with
scripts/package.sh (the script tests/test_package.py builds and checks) and attaches it to the release with gh and
the job's GITHUB_TOKEN. Every workflow passes actionlint and zizmor, with no finding silenced.

actionlint and zizmor are pinned in requirements-dev.txt (scripts/bootstrap.sh installs them in .venv).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import o365collector

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
RELEASE = ROOT / ".github" / "workflows" / "release.yml"
BIN = Path(sys.executable).parent
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")

# Deliberately bad workflows: each tool must fail on its own, or a green run would prove nothing.
BROKEN_FOR_ACTIONLINT = """\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ github.event.no_such_context.title }}"
        if: ${{ matrix.undefined }}
"""
BROKEN_FOR_ZIZMOR = """\
on: push
permissions: {}
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.head_commit.message }}"
"""


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/bootstrap.sh (requirements-dev.txt pins {name})")
    return path


def run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    # No GH_TOKEN: zizmor stays offline (--offline too), and nothing here may reach GitHub.
    env = {k: v for k, v in os.environ.items() if k not in {"GH_TOKEN", "GITHUB_TOKEN"}}
    return subprocess.run(
        [str(tool(name)), *map(str, args)], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    return run_tool("actionlint", "-no-color", *files)


def zizmor(*files: Path) -> subprocess.CompletedProcess[str]:
    # --no-config: a zizmor.yml could silence audits; the workflows must pass without one.
    return run_tool("zizmor", "--offline", "--no-config", "--format", "plain", *files)


def release() -> dict[str, Any]:
    workflow: dict[Any, Any] = yaml.safe_load(RELEASE.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean true.
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


def steps() -> list[dict[str, Any]]:
    (job,) = release()["jobs"].values()
    result: list[dict[str, Any]] = job["steps"]
    return result


def step_running(command: str) -> int:
    matches = [i for i, step in enumerate(steps()) if command in step.get("run", "")]
    assert len(matches) == 1, f"expected one step running {command!r}, found {len(matches)}"
    return matches[0]


def test_the_repository_has_a_release_workflow() -> None:
    assert RELEASE in WORKFLOWS


def test_every_workflow_passes_actionlint() -> None:
    assert WORKFLOWS
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_workflow_passes_zizmor_without_silenced_findings() -> None:
    assert WORKFLOWS
    for workflow in WORKFLOWS:
        assert "zizmor: ignore" not in workflow.read_text(), f"{workflow.name} silences a zizmor finding"
    result = zizmor(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("name", "broken"), [("actionlint", BROKEN_FOR_ACTIONLINT), ("zizmor", BROKEN_FOR_ZIZMOR)])
def test_the_linters_reject_a_bad_workflow(name: str, broken: str, tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    bad = workflows / "bad.yml"
    bad.write_text(broken)
    result = actionlint(bad) if name == "actionlint" else zizmor(bad)
    assert result.returncode != 0, result.stdout + result.stderr


def test_release_runs_on_version_tags_only() -> None:
    assert release()["on"] == {"push": {"tags": ["v*"]}}


def test_permissions_are_none_by_default_and_contents_write_only_for_the_release_job() -> None:
    workflow = release()
    assert workflow["permissions"] == {}
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "write"}


def test_actions_are_pinned_by_commit_and_checkout_keeps_no_credentials() -> None:
    uses = [step for step in steps() if "uses" in step]
    assert uses
    for step in uses:
        assert PINNED.match(step["uses"]), f"{step['uses']}: pin actions by a full commit SHA"
        # Only GitHub's own actions: the release is created with the gh CLI, not a third-party action.
        assert step["uses"].startswith("actions/"), step["uses"]
    checkouts = [step for step in uses if step["uses"].startswith("actions/checkout@")]
    assert checkouts
    assert all(step["with"]["persist-credentials"] is False for step in checkouts)


def test_toolchains_match_the_runtime_and_the_tests() -> None:
    by_action = {step["uses"].split("@")[0]: step.get("with", {}) for step in steps() if "uses" in step}
    assert by_action["actions/setup-python"]["python-version"] == "3.11"
    assert "actions/setup-node" in by_action


def test_release_tests_then_packages_with_package_sh_then_attaches_the_zip_with_gh() -> None:
    test_step = step_running("bash scripts/test.sh")
    package_step = step_running("bash scripts/package.sh")
    upload_step = step_running("gh release upload")
    assert test_step < package_step < upload_step
    upload = steps()[upload_step]
    assert upload["env"]["GH_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert upload["env"]["ZIP"] == f"${{{{ steps.{steps()[package_step]['id']}.outputs.zip }}}}"
    assert '"$ZIP"' in upload["run"]
    # The zip the workflow ships is built by the very script the package tests build and inspect.
    assert 'ROOT / "scripts" / "package.sh"' in (ROOT / "tests" / "test_package.py").read_text()


@pytest.mark.parametrize(
    ("tag", "accepted"),
    [(f"v{o365collector.__version__}", True), ("v999.0.0", False), (o365collector.__version__, False)],
)
def test_release_refuses_a_tag_that_does_not_name_the_package_version(tag: str, accepted: bool) -> None:
    """The asset is o365collector-<__version__>.zip: under any other tag its URL would not be the documented one."""
    (check,) = [step for step in steps() if step.get("env", {}).get("TAG") and "__version__" in step.get("run", "")]
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", check["run"]],
        cwd=ROOT,
        env={**os.environ, "TAG": tag},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode == 0) is accepted, result.stdout + result.stderr
