#!/usr/bin/env bash
# Sets up a fresh checkout with everything the tests use, so no test installs anything on first use:
#   .venv             Python 3.11 with the pinned dependencies (requirements-dev.txt)
#   node_modules      Azurite and the Kusto language service from npm (pinned in package-lock.json)
#   .venv-checkov     checkov, in its own virtual environment (pinned in scripts/checkov.sh)
#   .venv/wheelhouse  the Linux x86-64 CPython 3.11 wheels of requirements.txt that scripts/package.sh vendors
#                     into the deployment zip (tests/test_package.py builds it from here, offline)
# Idempotent: a second run only checks that everything is in place, without asking a registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
if [ ! -x node_modules/.bin/azurite ] || [ ! -f node_modules/@kusto/language-service-next/package.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

PYTHON=.venv/bin/python bash scripts/checkov.sh --install

# The same platform flags as scripts/package.sh: wheels for the Functions runtime, not for this machine.
WHEELHOUSE=.venv/wheelhouse
wheels=(download --quiet --disable-pip-version-check --no-input --dest "$WHEELHOUSE"
  --platform manylinux2014_x86_64 --implementation cp --python-version 3.11 --abi cp311 --only-binary=:all:
  -r requirements.txt)
if ! .venv/bin/python -m pip "${wheels[@]}" --no-index --find-links "$WHEELHOUSE" >/dev/null 2>&1; then
  echo "downloading the deployment zip's wheels into $WHEELHOUSE" >&2
  .venv/bin/python -m pip "${wheels[@]}"
fi
# The build backend pyproject.toml names ([build-system]), so tests/test_install.py runs `pip install .` offline.
backend=(download --quiet --disable-pip-version-check --no-input --dest "$WHEELHOUSE" --only-binary=:all:
  setuptools==84.2.1)
if ! .venv/bin/python -m pip "${backend[@]}" --no-index --find-links "$WHEELHOUSE" >/dev/null 2>&1; then
  .venv/bin/python -m pip "${backend[@]}"
fi
