#!/usr/bin/env bash
# The local demo: installs what is missing, then runs Azurite + simulator + collector + file sink.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m o365collector demo "$@"
