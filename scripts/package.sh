#!/usr/bin/env bash
# Build the deployment zip: dist/o365collector-<version>.zip (version from o365collector/__init__.py).
#
# Contents, at the zip root, as the Functions Python worker expects them:
#   function_app.py, host.json, requirements.txt, o365collector/ (no __pycache__ from the work tree,
#   no simulator/ or demo.py: local tools only)
#   .python_packages/lib/site-packages/   the runtime dependencies, vendored
# Nothing else: no tests, no virtual environment, no local.settings*.json, no infra.
#
# The dependencies are wheels for the platform's runtime (Linux x86-64, CPython 3.11), whatever machine
# builds the zip, so the template deploys it with remoteBuild=false. Only PyPI is needed.
#
# Usage: scripts/package.sh            (PYTHON=... to choose the interpreter that runs pip; DIST_DIR=... for the output)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DIST_DIR="${DIST_DIR:-$ROOT/dist}"
# Must match functionAppConfig.runtime in infra/azuredeploy.json.
TARGET_PYTHON="3.11"
TARGET_PLATFORM="manylinux2014_x86_64"

cd "$ROOT"
VERSION="$("$PYTHON" - <<'EOF'
import ast, pathlib
tree = ast.parse(pathlib.Path("o365collector/__init__.py").read_text())
for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
        print(ast.literal_eval(node.value))
        break
else:
    raise SystemExit("o365collector/__init__.py: no __version__")
EOF
)"
OUT="$DIST_DIR/o365collector-$VERSION.zip"

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT

cp function_app.py host.json requirements.txt "$STAGE/"
# The simulator and the demo are for a laptop, not for the platform: no function imports them, and in the
# zip the `simulate` and `demo` commands say they are left out (o365collector/cli.py, LOCAL_ONLY_MODULES).
tar -C "$ROOT" --exclude='__pycache__' --exclude='*.py[co]' \
  --exclude='o365collector/simulator' --exclude='o365collector/demo.py' \
  -cf - o365collector | tar -C "$STAGE" -xf -

SITE="$STAGE/.python_packages/lib/site-packages"
# --platform/--python-version/--abi select wheels for the Azure runtime, not for this machine;
# --only-binary=:all: makes pip refuse any source build (which would compile for this machine).
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore \
  --target "$SITE" \
  --platform "$TARGET_PLATFORM" --implementation cp --python-version "$TARGET_PYTHON" --abi "cp${TARGET_PYTHON/./}" \
  --only-binary=:all: --no-compile \
  -r requirements.txt
# Console scripts carry this machine's interpreter path in their shebang; the app never runs them.
rm -rf "$SITE/bin"

# Byte-compile for a faster cold start (the package is read-only on the platform), but only with a
# CPython of the runtime's minor version: other versions write .pyc files the runtime would ignore.
if "$PYTHON" -c "import sys; raise SystemExit(sys.version_info[:2] != tuple(map(int, '$TARGET_PYTHON'.split('.'))))"; then
  "$PYTHON" -m compileall -q -j 0 "$STAGE" >/dev/null
else
  echo "note: $PYTHON is not Python $TARGET_PYTHON; the zip carries no .pyc files" >&2
fi

mkdir -p "$DIST_DIR"
"$PYTHON" - "$STAGE" "$OUT.tmp" <<'EOF'
import os, sys, zipfile
stage, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
    for folder, dirs, files in os.walk(stage):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            zf.write(path, os.path.relpath(path, stage))
EOF
mv "$OUT.tmp" "$OUT"
echo "$OUT"
