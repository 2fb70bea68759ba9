#!/usr/bin/env bash
# The test command: installs what is missing, then lint, type-check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy
# pytest exits 5 when it collected no tests: that is a failure here too (set -e).
# Two workers (O365_TEST_WORKERS), each with its own Azurite; a file's tests stay on one worker. Half the
# wall time on two cores: most tests wait on loopback servers. O365_TEST_WORKERS=0 runs in this process.
.venv/bin/python -m pytest -n "${O365_TEST_WORKERS:-2}" --dist loadfile "$@"
