#!/usr/bin/env bash
# Deploy the collector with the az CLI, in the order a first deployment needs:
#   1. build the code zip with scripts/package.sh (or take --zip);
#   2. deploy infra/azuredeploy.json with packageUri empty: the infrastructure, the identity and its roles, no code;
#   3. deploy the zip with `az functionapp deploy`, retrying while the storage role is not yet in effect.
#
# Why step 3 is separate and retried: on Flex Consumption the platform writes the zip to the deployment container
# as the app's managed identity, whose Storage Blob Data Owner role the template created seconds earlier. A new role
# assignment can take minutes to reach the storage service, and until then the upload fails with 403
# (AuthorizationPermissionMismatch, reported by the publish endpoint as BlobUploadFailedException). ARM cannot wait
# for that, so this script does: it retries with backoff for up to DEPLOY_ROLE_WAIT_SECONDS (default 900).
#
# Secure template parameters (clientSecret, sink tokens, ...) given as NAME=VALUE never reach a command line or the
# output: they go to a temporary parameters file (mode 600, deleted on exit), and printed commands show only names.
#
# Usage:
#   scripts/deploy.sh --resource-group RG [--parameters NAME=VALUE|@FILE ...] [--zip PATH] [--dry-run]
#   scripts/deploy.sh --resource-group RG --name APP --code-only [--zip PATH] [--dry-run]   (upgrade or retry the code)
# Options:
#   -g, --resource-group RG   the resource group (it must exist: az group create)
#   -p, --parameters ...      template parameters, as for az deployment group create; repeatable
#   --template-file PATH      default infra/azuredeploy.json
#   --zip PATH                deploy this zip (e.g. a release asset) instead of building one
#   --name APP                with --code-only: the function app to deploy the code to
#   --code-only               skip the template; deploy only the code
#   --dry-run                 print the commands, run nothing (no az, no build)
# Environment: DEPLOY_ROLE_WAIT_SECONDS (900), PYTHON (python3, to read the template), DIST_DIR (as package.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DIST_DIR="${DIST_DIR:-$ROOT/dist}"
ROLE_WAIT_SECONDS="${DEPLOY_ROLE_WAIT_SECONDS:-900}"
FIRST_DELAY=15
MAX_DELAY=120
# What a storage authorization failure looks like through az functionapp deploy; anything else is not retried.
ROLE_NOT_YET='(^|[^0-9])403([^0-9]|$)|Forbidden|AuthorizationPermissionMismatch|AuthorizationFailure|BlobUploadFailedException|not authorized'

die() { echo "deploy.sh: $*" >&2; exit 2; }

resource_group="" template="$ROOT/infra/azuredeploy.json" zip="" app="" code_only=false dry_run=false
params=()
while (($#)); do
  case "$1" in
    -g | --resource-group) (($# >= 2)) || die "$1 needs a value"; resource_group="$2"; shift 2 ;;
    --template-file) (($# >= 2)) || die "$1 needs a value"; template="$2"; shift 2 ;;
    --zip) (($# >= 2)) || die "$1 needs a value"; zip="$2"; shift 2 ;;
    --name) (($# >= 2)) || die "$1 needs a value"; app="$2"; shift 2 ;;
    --code-only) code_only=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    -p | --parameters)
      shift
      if ! (($#)) || [[ "$1" == -* ]]; then die "--parameters needs NAME=VALUE or @FILE"; fi
      # Like az: one --parameters takes every following word up to the next option.
      while (($#)) && [[ "$1" != -* ]]; do params+=("$1"); shift; done ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n "$resource_group" ]] || die "--resource-group is required"
if $code_only; then
  [[ -n "$app" ]] || die "--code-only needs --name (the functionAppName output of the template deployment)"
  ((${#params[@]} == 0)) || die "--code-only deploys no template: --parameters has no effect"
else
  [[ -z "$app" ]] || die "--name is for --code-only; name a new app with --parameters appName=NAME"
  [[ -f "$template" ]] || die "no template at $template"
fi
[[ -z "$zip" || -f "$zip" ]] || die "--zip: no file at $zip"
[[ "$ROLE_WAIT_SECONDS" =~ ^[0-9]+$ ]] || die "DEPLOY_ROLE_WAIT_SECONDS must be a number of seconds"

# Print a command as it runs, one word at a time, quoting only where the shell would need it.
show() {
  local word out="+"
  for word in "$@"; do
    # Placeholders (<...>) stand for what a dry run cannot know: shown as they are.
    if [[ "$word" =~ ^[][A-Za-z0-9_./:=@,+%-]+$ || "$word" =~ ^@?\<[^\>]*\>$ ]]; then
      out+=" $word"
    else
      out+=" $(printf '%q' "$word")"
    fi
  done
  printf '%s\n' "$out"
}

# 1. The code zip.
echo "# 1. Build the code zip (scripts/package.sh)"
if [[ -n "$zip" ]]; then
  echo "# using $zip"
elif $dry_run; then
  show bash "$ROOT/scripts/package.sh"
  version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/o365collector/__init__.py")"
  zip="$DIST_DIR/o365collector-$version.zip"
else
  show bash "$ROOT/scripts/package.sh"
  zip="$(PYTHON="$PYTHON" DIST_DIR="$DIST_DIR" bash "$ROOT/scripts/package.sh" | tail -n 1)"
  [[ -f "$zip" ]] || die "scripts/package.sh built no zip"
fi

$dry_run || command -v az >/dev/null 2>&1 || die "the az CLI is not on PATH (https://aka.ms/azure-cli), or use --dry-run"

# 2. The template, without code.
if ! $code_only; then
  # ARM parameter names are case-insensitive: compare them lower-cased.
  # A command substitution, not a process substitution: if this fails, set -e stops the script before a secret
  # could be taken for a plain parameter.
  secure_names="$("$PYTHON" - "$template" <<'EOF'
import json, sys
parameters = json.load(open(sys.argv[1], encoding="utf-8")).get("parameters", {})
for name, spec in parameters.items():
    if str(spec.get("type", "")).lower() in ("securestring", "secureobject"):
        print(name.lower())
EOF
  )"
  mapfile -t secure <<<"$secure_names"
  is_secure() { local n="${1,,}" s; for s in "${secure[@]}"; do [[ "$n" == "$s" ]] && return 0; done; return 1; }

  plain=() hidden=() hidden_names=()
  for param in "${params[@]}"; do
    if [[ "$param" == @* ]]; then
      plain+=("$param")
    elif [[ "$param" =~ ^([A-Za-z0-9_]+)=(.*)$ ]]; then
      name="${BASH_REMATCH[1]}"
      [[ "${name,,}" != packageuri ]] || die "packageUri: this script deploys the code itself (step 3); leave packageUri out"
      if is_secure "$name"; then hidden+=("$param"); hidden_names+=("$name"); else plain+=("$param"); fi
    else
      die "--parameters: expected NAME=VALUE or @FILE, got '${param%%=*}...'"
    fi
  done

  secure_file_shown=""
  secure_file=""
  if ((${#hidden[@]})); then
    secure_file_shown="@<temporary parameters file: $(IFS=,; echo "${hidden_names[*]}")>"
    if ! $dry_run; then
      secure_file="$(mktemp)"  # mode 600
      trap 'rm -f "$secure_file"' EXIT
      # The values go through a pipe (printf is a builtin), never through a command line.
      # shellcheck disable=SC2016  # Python source: $schema is a JSON key, not a shell variable
      printf '%s\0' "${hidden[@]}" | "$PYTHON" -c '
import json, sys
pairs = [p.split("=", 1) for p in sys.stdin.buffer.read().decode("utf-8").split("\0") if p]
json.dump({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
           "contentVersion": "1.0.0.0", "parameters": {n: {"value": v} for n, v in pairs}}, sys.stdout)
' >"$secure_file"
    fi
  fi

  deploy=(az deployment group create --resource-group "$resource_group" --template-file "$template")
  for param in "${plain[@]}"; do deploy+=(--parameters "$param"); done
  shown=("${deploy[@]}")
  if ((${#hidden[@]})); then
    shown+=(--parameters "$secure_file_shown")
    deploy+=(--parameters "@$secure_file")
  fi
  # Last, so that it wins over a parameters file: the template deploys no code.
  tail_args=(--parameters "packageUri=" --query properties.outputs.functionAppName.value --output tsv)
  deploy+=("${tail_args[@]}")
  shown+=("${tail_args[@]}")

  echo "# 2. Deploy the template: infrastructure, identity and roles, no code (packageUri is empty)"
  show "${shown[@]}"
  if $dry_run; then
    app="<functionAppName>"
    for param in "${plain[@]}"; do [[ "${param,,}" == appname=* ]] && app="${param#*=}"; done
  else
    app="$("${deploy[@]}")"
    app="${app//[$'\r\n']/}"
    [[ -n "$app" ]] || die "the template deployment returned no functionAppName output"
    echo "# deployed the infrastructure of function app $app"
  fi
fi

# 3. The code, retried while the identity's storage role propagates.
code=(az functionapp deploy --resource-group "$resource_group" --name "$app" --src-path "$zip" --type zip)
echo "# 3. Deploy the code. On a first deployment the identity's storage role may not be in effect yet:"
echo "#    a 403 is retried with backoff for up to ${ROLE_WAIT_SECONDS} s."
show "${code[@]}"
if $dry_run; then
  exit 0
fi

waited=0 delay=$FIRST_DELAY
while true; do
  if output="$("${code[@]}" 2>&1)"; then
    [[ -z "$output" ]] || printf '%s\n' "$output"
    break
  fi
  printf '%s\n' "$output" >&2
  if ! grep -Eqi -- "$ROLE_NOT_YET" <<<"$output"; then
    echo "deploy.sh: the code deployment failed, and not for want of the storage role: not retried." >&2
    echo "The infrastructure is deployed. After fixing the cause, deploy the code alone:" >&2
    echo "  scripts/deploy.sh --resource-group $resource_group --name $app --code-only --zip $zip" >&2
    exit 1
  fi
  if ((waited >= ROLE_WAIT_SECONDS)); then
    echo "deploy.sh: the storage role still refuses the app's identity after ${waited} s." >&2
    echo "The infrastructure is deployed; only the code is missing. Check that the identity id-$app has" >&2
    echo "Storage Blob Data Owner on the storage account (docs/deploy.md, 'The first deployment'), wait a few" >&2
    echo "minutes, then deploy the code alone:" >&2
    echo "  scripts/deploy.sh --resource-group $resource_group --name $app --code-only --zip $zip" >&2
    exit 1
  fi
  ((delay <= ROLE_WAIT_SECONDS - waited)) || delay=$((ROLE_WAIT_SECONDS - waited))
  echo "# the app's identity cannot write to its deployment container yet (403): waiting ${delay} s for its new"
  echo "# Storage Blob Data Owner role to take effect (${waited} of ${ROLE_WAIT_SECONDS} s waited so far)"
  sleep "$delay"
  waited=$((waited + delay))
  delay=$((delay * 2 > MAX_DELAY ? MAX_DELAY : delay * 2))
done
echo "# done: the code of $app is deployed. Next: docs/deploy.md, step 6 (sink roles) and step 7 (verify)."
