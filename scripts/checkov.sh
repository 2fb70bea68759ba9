#!/usr/bin/env bash
# Static checks of the ARM template with checkov, offline.
#
# checkov lives in its own virtual environment (.venv-checkov): it pins boto3, packaging and
# pycep-parser versions that clash with the project's. scripts/bootstrap.sh installs it
# (`scripts/checkov.sh --install`, ~25 s the first time); a scan never installs anything.
#
# --skip-download keeps checkov off the network (without it, it tries to fetch its guideline
# mapping from the vendor's API). Every skipped check is listed, with its reason, in
# infra/README.md ("Accepted checkov findings"); tests/test_infra_checkov.py keeps the two lists equal.
#
# Usage: scripts/checkov.sh [extra checkov arguments]      (CHECKOV_TEMPLATE=path to scan another file)
#        scripts/checkov.sh --install                       (install the pinned checkov if missing; no scan)
# Prints JSON. Note: checkov exits 0 when it cannot parse the template; read summary.parsing_errors
# (the test does).
set -euo pipefail

CHECKOV_VERSION="3.3.30"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHECKOV_VENV:-$ROOT/.venv-checkov}"
PYTHON="${PYTHON:-python3}"

# The five network checks (35, 59, 222, 109, 189) fail only without privateNetworking; the tests scan the
# private configuration without them and require them to pass there.
SKIP_CHECKS=(
  CKV_AZURE_35   # storage: default network action Deny (default configuration only)
  CKV_AZURE_59   # storage: public network access disabled (default configuration only)
  CKV_AZURE_43   # storage: naming rules (checkov cannot evaluate the name expression)
  CKV_AZURE_206  # storage: geo/zone replication
  CKV_AZURE_225  # plan: zone redundancy
  CKV_AZURE_212  # plan: minimum instance count for failover
  CKV_AZURE_222  # function app: public network access disabled (default configuration only)
  CKV_AZURE_78   # function app: FTP disabled (ftpsState)
  CKV_AZURE_17   # function app: incoming client certificates
  CKV_AZURE_213  # function app: health check path
  CKV_AZURE_109  # key vault: firewall default deny (default configuration only)
  CKV_AZURE_189  # key vault: public network access disabled (default configuration only)
  CKV_AZURE_110  # key vault: purge protection
  CKV_AZURE_42   # key vault: recoverable (needs purge protection)
  CKV_AZURE_41   # key vault secrets: expiration date
)

installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null || true)"
if [[ "${1:-}" == "--install" ]]; then
  if [[ "$installed" != "$CHECKOV_VERSION" || ! -x "$VENV/bin/checkov" ]]; then
    echo "installing checkov $CHECKOV_VERSION into $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
  fi
  exit 0
fi
if [[ "$installed" != "$CHECKOV_VERSION" || ! -x "$VENV/bin/checkov" ]]; then
  echo "checkov $CHECKOV_VERSION is not installed in $VENV (found: ${installed:-none}): run scripts/bootstrap.sh" >&2
  exit 3
fi

skip_list="$(IFS=,; echo "${SKIP_CHECKS[*]}")"
cd "$ROOT"
exec env BC_SKIP_MAPPING=TRUE "$VENV/bin/checkov" \
  -f "${CHECKOV_TEMPLATE:-infra/azuredeploy.json}" --framework arm --skip-download --quiet \
  -o json --skip-check "$skip_list" "$@"
