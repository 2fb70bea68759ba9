"""The deployment zip from scripts/package.sh holds what the Functions host needs and nothing else,
and function_app.py imports from it, with only the zip's own dependencies, declaring its functions.
The simulator and the demo are local tools: the zip leaves them out, and its command line says so.

The zip is built once per test session (a few seconds), offline: scripts/bootstrap.sh has put the Linux
wheels it vendors in .venv/wheelhouse, and the build may take them from there only (no package index).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

import o365collector
from o365collector.cli import LOCAL_ONLY_MODULES

ROOT = Path(__file__).resolve().parents[1]
SITE_PACKAGES = ".python_packages/lib/site-packages/"
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"  # filled by scripts/bootstrap.sh
# The runtime the template declares (functionAppConfig.runtime): Linux x86-64, CPython 3.11.
RUNTIME_EXTENSION = re.compile(r"\.(cpython-311-x86_64-linux-gnu|abi3)\.so$")
# o365collector.simulator -> o365collector/simulator (a folder), o365collector.demo -> o365collector/demo.py
LOCAL_ONLY = tuple(name.replace(".", "/") for name in LOCAL_ONLY_MODULES)


def local_only(entry: str) -> bool:
    return any(entry == f"{path}.py" or entry.startswith(f"{path}/") for path in LOCAL_ONLY)


IMPORT_AND_LIST = """
import json, sys
sys.path[:0] = sys.argv[1:]
import azure.functions, function_app
functions = {}
for fn in function_app.app.get_functions():  # may be called once per app
    functions[fn.get_function_name()] = json.loads(fn.get_function_json())["bindings"]
print(json.dumps({
    "functions": functions,
    "function_app": function_app.__file__,
    "azure_functions": azure.functions.__file__,
    "o365collector": sys.modules["o365collector"].__file__,
}))
"""


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.fail(f"no wheels in {WHEELHOUSE}: run scripts/bootstrap.sh (the test command does)")
    dist = tmp_path_factory.mktemp("dist")
    # pip reads PIP_* from the environment: the wheels come from the bootstrap's wheelhouse, never an index.
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE)}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "package.sh")],
        env={**os.environ, **offline, "DIST_DIR": str(dist), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def entries(package: Path) -> list[str]:
    with zipfile.ZipFile(package) as zf:
        assert zf.testzip() is None
        return zf.namelist()


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt must pin every dependency: {line}"
            pins[re.sub(r"[-_.]+", "_", name).lower()] = version
    return pins


def test_zip_is_named_after_the_package_version(package: Path) -> None:
    assert package.name == f"o365collector-{o365collector.__version__}.zip"


def test_zip_holds_the_app_at_its_root(entries: list[str]) -> None:
    names = set(entries)
    assert {"function_app.py", "host.json", "requirements.txt"} <= names
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "o365collector").rglob("*") if p.is_file()}
    sources = {s for s in sources if "__pycache__" not in s and not s.endswith((".pyc", ".pyo"))}
    sources = {s for s in sources if not local_only(s)}
    assert sources <= names, f"missing from the zip: {sorted(sources - names)[:10]}"


def test_zip_vendors_every_pinned_requirement(entries: list[str]) -> None:
    installed = {}
    for name in entries:
        match = re.fullmatch(re.escape(SITE_PACKAGES) + r"([^/]+)-([^/-]+)\.dist-info/METADATA", name)
        if match:
            installed[re.sub(r"[-_.]+", "_", match.group(1)).lower()] = match.group(2)
    for requirement, version in requirement_pins().items():
        assert installed.get(requirement) == version, f"{requirement}=={version} is not vendored"


def test_native_code_is_built_for_the_linux_x86_64_python_311_runtime(package: Path, entries: list[str]) -> None:
    libraries = [n for n in entries if n.endswith((".so", ".pyd", ".dylib", ".dll"))]
    assert libraries, "expected compiled extensions (orjson, cryptography)"
    wrong = [n for n in libraries if not RUNTIME_EXTENSION.search(n)]
    assert wrong == []
    with zipfile.ZipFile(package) as zf:
        for name in entries:
            if name.startswith(SITE_PACKAGES) and name.endswith(".dist-info/WHEEL"):
                tags = re.findall(r"^Tag: (\S+)$", zf.read(name).decode(), re.M)
                for tag in tags:
                    python, abi, plat = tag.split("-")
                    assert plat == "any" or ("manylinux" in plat and plat.endswith("x86_64")), f"{name}: {tag}"
                    assert abi in {"none", "abi3", "cp311"}, f"{name}: {tag}"
                    assert python == "cp311" if abi == "cp311" else python.startswith(("py3", "py2.py3", "cp3"))


def test_zip_leaves_out_tests_environments_local_settings_and_tooling(entries: list[str]) -> None:
    forbidden = re.compile(
        r"^(tests|\.venv[^/]*|node_modules|\.git|infra|docs|scripts|bench|dist|\.ci)/"
        r"|(^|/)local\.settings[^/]*\.json$|^\.python_packages/lib/site-packages/bin/"
    )
    assert [n for n in entries if forbidden.search(n)] == []
    top_level = {n.split("/")[0] for n in entries} - {"__pycache__"}  # function_app.py compiled for 3.11
    assert top_level == {"function_app.py", "host.json", "requirements.txt", "o365collector", ".python_packages"}


def test_zip_leaves_out_the_simulator_and_the_demo(entries: list[str]) -> None:
    assert [n for n in entries if local_only(n)] == []
    assert local_only("o365collector/simulator/server.py")
    assert local_only("o365collector/demo.py")
    assert not local_only("o365collector/demography.py")


@pytest.fixture(scope="session")
def deployed(package: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Like the host: a clean interpreter, and the sys.path entries that put the zip's app and packages first."""
    tmp_path = tmp_path_factory.mktemp("deployed")
    app = tmp_path / "wwwroot"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(app)
    env_dir = tmp_path / "venv"
    runtime_like = sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)
    venv.EnvBuilder(with_pip=not runtime_like).create(env_dir)
    python = env_dir / "bin" / "python"
    paths = [str(app)]
    if runtime_like:
        paths.append(str(app / SITE_PACKAGES))
    else:  # the vendored wheels cannot load here: install the same pins for this platform instead
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(app / "requirements.txt")], check=True
        )
    return python, paths


def test_function_app_imports_from_the_zip_in_a_clean_environment(
    deployed: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """Like the host: the app folder and its vendored site-packages on sys.path, nothing else installed."""
    python, paths = deployed
    app = Path(paths[0])
    runtime_like = len(paths) > 1
    result = subprocess.run(
        [str(python), "-I", "-c", IMPORT_AND_LIST, *paths],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])

    assert Path(loaded["function_app"]).parent == app
    assert Path(loaded["o365collector"]).is_relative_to(app)
    if runtime_like:
        assert Path(loaded["azure_functions"]).is_relative_to(app / SITE_PACKAGES)

    functions = loaded["functions"]
    assert {"list_content", "fetch_content"} <= set(functions) <= {
        "list_content",
        "list_tenant",
        "fetch_content",
        "health",
        "webhook",
    }
    (timer,) = functions["list_content"]
    assert timer["type"] == "timerTrigger"
    assert timer["schedule"] == "%O365_LIST_SCHEDULE%"
    assert timer["runOnStartup"] is False
    (queue,) = functions["fetch_content"]
    assert queue["type"] == "queueTrigger"
    assert queue["queueName"] == "%O365_CONTENT_QUEUE%"
    assert queue["connection"] == "AzureWebJobsStorage"
    if "health" in functions:
        trigger = next(b for b in functions["health"] if b["type"] == "httpTrigger")
        assert trigger["authLevel"] == "FUNCTION"


@pytest.mark.parametrize("command", [["simulate", "--port", "8443", "--days", "1"], ["demo", "--days", "1"]])
def test_local_only_commands_say_they_are_left_out_of_the_zip(
    deployed: tuple[Path, list[str]], tmp_path: Path, command: list[str]
) -> None:
    python, paths = deployed
    result = subprocess.run(
        [str(python), "-s", "-m", "o365collector", *command],
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join(paths), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"'{command[0]}' is not part of this install" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_the_zip_command_line_still_lists_every_command(deployed: tuple[Path, list[str]], tmp_path: Path) -> None:
    python, paths = deployed
    result = subprocess.run(
        [str(python), "-s", "-m", "o365collector", "--help"],
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join(paths), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for command in ("run", "check", "status", "replay-poison", "subscriptions", "tenants", "simulate", "demo"):
        assert re.search(rf"^\s+{re.escape(command)}\s", result.stdout, re.M), command
    assert "not in this install" in result.stdout
