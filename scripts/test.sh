#!/usr/bin/env bash
# The test command: installs what is missing, then lint, type-check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy
# pytest exits 5 when it collected no tests: that is a failure here too (set -e).
.venv/bin/python -m pytest "$@"
