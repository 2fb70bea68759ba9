"""`pip install .` gives a working install: the console script, its version, and the runtime
dependencies declared with the same pins as requirements.txt (which the Functions deployment installs).

The real install runs offline, in a throwaway virtual environment, as `pip install .` with build
isolation: the build backend (setuptools, pinned in scripts/bootstrap.sh) and the dependencies come from
the wheels bootstrap put in .venv/wheelhouse (Linux x86-64, CPython 3.11, so only on a machine of that kind).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

import o365collector

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"  # filled by scripts/bootstrap.sh


def normalized(requirement: str) -> str:
    """``Azure_Core == 1.41.0`` and ``azure-core==1.41.0`` are the same requirement (PEP 503 names)."""
    name, _, version = requirement.replace(" ", "").partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


def requirements_txt() -> list[str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return sorted(normalized(line) for line in lines if line)


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_dependencies_are_requirements_txt() -> None:
    """One set of pins: what `pip install .` brings is what the function app is deployed with."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert sorted(normalized(d) for d in project["dependencies"]) == requirements_txt()


def test_pyproject_declares_the_console_script_the_version_and_the_license() -> None:
    data = pyproject()
    project = data["project"]
    assert isinstance(project, dict)
    assert project["scripts"] == {"o365collector": "o365collector.cli:main"}
    assert "version" in project["dynamic"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "o365collector.__version__"}  # type: ignore[index]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install .` of a copy of the project (pip would write build/ and *.egg-info into the work tree)."""
    if not (sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)):
        pytest.skip("the wheelhouse holds Linux x86-64 CPython 3.11 wheels only")
    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.fail(f"no wheels in {WHEELHOUSE}: run scripts/bootstrap.sh (the test command does)")
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "o365collector", source / "o365collector", ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    offline = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(WHEELHOUSE),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    result = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        env=offline,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return env_dir


def run(env_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing from this checkout or the dev venv on the path.
    env = {"PATH": f"{env_dir / 'bin'}:{os.environ.get('PATH', '')}", "HOME": str(env_dir)}
    return subprocess.run(list(args), env=env, cwd=env_dir, capture_output=True, text=True, timeout=120, check=False)


def test_console_script_prints_the_version(installed: Path) -> None:
    result = run(installed, "o365collector", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"o365collector {o365collector.__version__}"


def test_console_script_help_lists_the_commands(installed: Path) -> None:
    result = run(installed, "o365collector", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: o365collector ")
    for command in ("run", "check", "status", "replay-poison", "subscriptions", "tenants", "simulate", "demo"):
        assert re.search(rf"^\s+{re.escape(command)}\s", result.stdout, re.M), command
    # pip installs the simulator (only the deployment zip leaves it out): its own help is there.
    simulate = run(installed, "o365collector", "simulate", "--help")
    assert simulate.returncode == 0, simulate.stderr
    assert "--throttle-rate" in simulate.stdout


def test_installed_metadata_requires_exactly_requirements_txt(installed: Path) -> None:
    script = (
        "import importlib.metadata as m, importlib.resources as r, json, o365collector;"
        "print(json.dumps({'requires': m.requires('o365collector'), 'version': m.version('o365collector'),"
        "'module': o365collector.__file__,"
        "'license': any(f.name == 'LICENSE' for f in m.files('o365collector') or []),"
        "'samples': r.files('o365collector.simulator').joinpath('samples.json').is_file()}))"
    )
    result = run(installed, str(installed / "bin" / "python"), "-c", script)
    assert result.returncode == 0, result.stderr
    meta = json.loads(result.stdout)
    assert sorted(normalized(r) for r in meta["requires"]) == requirements_txt()
    assert meta["version"] == o365collector.__version__
    assert Path(meta["module"]).is_relative_to(installed)  # the installed copy, not this checkout
    assert meta["license"], "the LICENSE file travels with the distribution"
    assert meta["samples"], "the simulator's package data is installed"


def test_installed_dependencies_are_consistent(installed: Path) -> None:
    result = run(installed, str(installed / "bin" / "python"), "-m", "pip", "check")
    assert result.returncode == 0, result.stdout + result.stderr
