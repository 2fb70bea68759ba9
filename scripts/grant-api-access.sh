#!/usr/bin/env bash
# Grants the collector's identity access to the Office 365 Management APIs: the one step no ARM template can do,
# because it is a Microsoft Graph call.
#
#   Managed identity (same tenant): assign the app roles ActivityFeed.Read (and ActivityFeed.ReadDlp with --dlp)
#   of the Office 365 Management APIs to the identity's service principal; with --sources, also the Microsoft
#   Graph roles those sources need (AuditLog.Read.All: signins, directoryaudits; ExchangeMessageTrace.Read.All:
#   messagetrace, which also needs Microsoft's message trace service principal in the tenant: created here).
#     scripts/grant-api-access.sh --identity <principal object id | user-assigned identity resource id> [--dlp]
#         [--sources audit,signins,directoryaudits,messagetrace]
#
#   Federated credential (MSSP, other tenants): add a federated identity credential to the multi-tenant app
#   registration so the app's managed identity can sign in as the app; then print the admin consent link
#   each customer tenant's admin opens.
#     scripts/grant-api-access.sh --federated --app-id <app client id> --identity <...> [--customer-tenant <id>]
#
# Common options: --cloud Enterprise|GCC|GCCHigh|DoD (the Graph and sign-in hosts), --dry-run (print what would be
# done, change nothing), --sources (as O365_SOURCES; default audit: the Office 365 Management APIs roles only).
# Idempotent: existing role assignments, service principals and credentials are listed first and kept.
# Roles are found by their value on the resource service principal, never by hard-coded ids.
# Needs: az (signed in: az login), python3. The signed-in user needs Privileged Role Administrator (app roles)
# or to own the app registration (federated credential); Application Administrator for messagetrace's service
# principal.
# Environment: PYTHON (python3).
set -euo pipefail

# The Office 365 Management APIs' application (client) id: the same in every tenant.
O365_MANAGEMENT_APP_ID="c5393580-f805-4401-95e8-94b7a6ef2fc2"
# Microsoft Graph's application id: the same in every tenant and cloud.
GRAPH_APP_ID="00000003-0000-0000-c000-000000000000"
# Microsoft's "Transport Data Platform" app: Graph message trace authorises through its service principal in the
# tenant, which Microsoft does not create (the Graph-based message trace API onboarding guide: "provision the
# service principal"); without it the API answers 401 naming this app id.
MESSAGE_TRACE_APP_ID="8bd644d1-64a1-4d4b-ae52-2e0cbf64e373"
PYTHON="${PYTHON:-python3}"

usage() {
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
    echo "grant-api-access.sh: $*" >&2
    exit 2
}

identity=""
app_id=""
customer_tenant=""
cloud="Enterprise"
dlp=false
federated=false
dry_run=false
sources="audit"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --identity) identity="${2:-}"; shift 2 ;;
        --app-id) app_id="${2:-}"; shift 2 ;;
        --customer-tenant) customer_tenant="${2:-}"; shift 2 ;;
        --cloud) cloud="${2:-}"; shift 2 ;;
        --sources) sources="${2:-}"; shift 2 ;;
        --dlp) dlp=true; shift ;;
        --federated) federated=true; shift ;;
        --dry-run) dry_run=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ -n "$identity" ]] || die "--identity is required: the app's managed identity (principal object id, or its resource id from the template output managedIdentityResourceId)"
guid='^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$'
if $federated; then
    [[ "$app_id" =~ $guid ]] || die "--federated needs --app-id <the multi-tenant app registration's client id (a GUID)>"
else
    [[ -z "$app_id" ]] || die "--app-id is only used with --federated"
fi
[[ -z "$customer_tenant" || "$customer_tenant" =~ $guid ]] || die "--customer-tenant must be a tenant id (a GUID)"

case "$cloud" in
    Enterprise | GCC)
        graph="https://graph.microsoft.com" login="https://login.microsoftonline.com" audience="api://AzureADTokenExchange" ;;
    GCCHigh)
        graph="https://graph.microsoft.us" login="https://login.microsoftonline.us" audience="api://AzureADTokenExchangeUSGov" ;;
    DoD)
        graph="https://dod-graph.microsoft.us" login="https://login.microsoftonline.us" audience="api://AzureADTokenExchangeUSGov" ;;
    *) die "--cloud must be Enterprise, GCC, GCCHigh or DoD (got '$cloud')" ;;
esac

# --sources: the names O365_SOURCES takes; each at most once.
want_audit=false want_auditlog=false want_trace=false
IFS=',' read -r -a source_list <<<"$sources"
seen=" "
for source in "${source_list[@]}"; do
    source="${source// /}"
    [[ -n "$source" ]] || continue
    [[ "$seen" != *" $source "* ]] || die "--sources lists '$source' twice"
    seen+="$source "
    case "$source" in
        audit) want_audit=true ;;
        signins | directoryaudits) want_auditlog=true ;;
        messagetrace) want_trace=true ;;
        *) die "--sources: unknown source '$source' (expected audit, signins, directoryaudits, messagetrace)" ;;
    esac
done
[[ "$seen" != " " ]] || die "--sources is empty: name at least one of audit, signins, directoryaudits, messagetrace"
if $want_trace && [[ "$cloud" != Enterprise && "$cloud" != GCC ]]; then
    die "--sources messagetrace: Microsoft Graph serves message trace on its global service only (Enterprise and GCC tenants), not $cloud"
fi
if $dlp && ! $want_audit; then
    die "--dlp grants ActivityFeed.ReadDlp for the audit feed: add audit to --sources"
fi

# json_get EXPRESSION [ARG...]: a Python expression over the JSON document `d` read from stdin; the ARGs are
# `a[0]`, `a[1]`, ... (values are passed as arguments, never pasted into the expression).
json_get() {
    "$PYTHON" -c 'import json, sys; d = json.load(sys.stdin); a = sys.argv[2:]; r = eval(sys.argv[1]); print(r if isinstance(r, str) else json.dumps(r))' "$@"
}

graph_get() {
    az rest --method get --resource "$graph" --url "$graph/v1.0/$1" --output json
}

graph_post() {
    local path="$1" body="$2"
    if $dry_run; then
        echo "would POST $graph/v1.0/$path $body"
        return
    fi
    az rest --method post --resource "$graph" --url "$graph/v1.0/$path" \
        --headers "Content-Type=application/json" --body "$body" --output none
}

# The identity: a principal object id, or a user-assigned identity's resource id resolved to it.
if [[ "$identity" == /subscriptions/* ]]; then
    shown="$(az identity show --ids "$identity" --output json)"
    principal_id="$(json_get 'd["principalId"]' <<<"$shown")"
    identity_tenant="$(json_get 'd["tenantId"]' <<<"$shown")"
elif [[ "$identity" =~ $guid ]]; then
    principal_id="$identity"
    identity_tenant="$(az account show --output json | json_get 'd["tenantId"]')"
else
    die "--identity '$identity' is neither a principal object id (GUID) nor a resource id (/subscriptions/...)"
fi

office_roles=()
if $want_audit; then
    office_roles+=("ActivityFeed.Read")
fi
if $dlp; then
    office_roles+=("ActivityFeed.ReadDlp")
fi
graph_roles=()
if $want_auditlog; then
    graph_roles+=("AuditLog.Read.All")
fi
if $want_trace; then
    graph_roles+=("ExchangeMessageTrace.Read.All")
fi

if $federated; then
    issuer="$login/$identity_tenant/v2.0"
    credentials="$(graph_get "applications(appId='$app_id')/federatedIdentityCredentials")"
    existing="$(json_get "[c['name'] for c in d['value'] if c['issuer'] == a[0] and c['subject'] == a[1] and a[2] in c['audiences']]" "$issuer" "$principal_id" "$audience" <<<"$credentials")"
    if [[ "$existing" != "[]" ]]; then
        echo "federated credential already present on app $app_id: $existing (issuer $issuer, subject $principal_id)"
    else
        name="o365-collector-${principal_id:0:8}"
        body="$("$PYTHON" -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "issuer": sys.argv[2], "subject": sys.argv[3], "audiences": [sys.argv[4]], "description": "Office 365 audit collector: its managed identity signs in as this app"}))' "$name" "$issuer" "$principal_id" "$audience")"
        graph_post "applications(appId='$app_id')/federatedIdentityCredentials" "$body"
        $dry_run || echo "added federated credential $name to app $app_id (issuer $issuer, subject $principal_id, audience $audience)"
    fi
    wanted="$(IFS=,; echo "${office_roles[*]}")"
    [[ -z "$wanted" ]] || echo "The app registration needs the Office 365 Management APIs application permissions: $wanted"
    wanted="$(IFS=,; echo "${graph_roles[*]}")"
    [[ -z "$wanted" ]] || echo "The app registration needs the Microsoft Graph application permissions: $wanted"
    echo "Each customer tenant's admin consents once to the app's API permissions:"
    echo "  $login/${customer_tenant:-<customer tenant id>}/adminconsent?client_id=$app_id"
    if $want_trace; then
        echo "messagetrace: each customer tenant also needs Microsoft's message trace service principal (once, by an Application Administrator of that tenant):"
        echo "  az ad sp create --id $MESSAGE_TRACE_APP_ID"
    fi
    exit 0
fi

# grant_roles APP_ID NAME ROLE...: assign each application role (found by its value on the service principal of
# APP_ID) to the identity, unless it holds it already.
grant_roles() {
    local app="$1" name="$2"
    shift 2
    local resource resource_id role role_id held body
    resource="$(graph_get "servicePrincipals?\$filter=appId%20eq%20'$app'&\$select=id,appId,appRoles")"
    resource_id="$(json_get "d['value'][0]['id'] if d['value'] else ''" <<<"$resource")"
    [[ -n "$resource_id" ]] || die "no $name service principal (appId $app) in tenant $identity_tenant: create it with 'az ad sp create --id $app', then run this again"
    for role in "$@"; do
        role_id="$(json_get "next((r['id'] for r in d['value'][0]['appRoles'] if r['value'] == a[0] and 'Application' in r.get('allowedMemberTypes', [])), '')" "$role" <<<"$resource")"
        [[ -n "$role_id" ]] || die "$name offers no application role '$role' in this tenant"
        held="$(json_get "str(any(x['resourceId'] == a[0] and x['appRoleId'] == a[1] for x in d['value'])).lower()" "$resource_id" "$role_id" <<<"$assignments")"
        if [[ "$held" == "true" ]]; then
            echo "$role: already granted to $principal_id"
            continue
        fi
        body="$("$PYTHON" -c 'import json, sys; print(json.dumps({"principalId": sys.argv[1], "resourceId": sys.argv[2], "appRoleId": sys.argv[3]}))' "$principal_id" "$resource_id" "$role_id")"
        graph_post "servicePrincipals/$principal_id/appRoleAssignments" "$body"
        $dry_run || echo "$role: granted to $principal_id"
    done
}

assignments="$(graph_get "servicePrincipals/$principal_id/appRoleAssignments")"
if ((${#office_roles[@]})); then
    grant_roles "$O365_MANAGEMENT_APP_ID" "Office 365 Management APIs" "${office_roles[@]}"
fi
if ((${#graph_roles[@]})); then
    grant_roles "$GRAPH_APP_ID" "Microsoft Graph" "${graph_roles[@]}"
fi

if $want_trace; then
    found="$(graph_get "servicePrincipals?\$filter=appId%20eq%20'$MESSAGE_TRACE_APP_ID'&\$select=id,appId" | json_get "str(bool(d['value'])).lower()")"
    if [[ "$found" == "true" ]]; then
        echo "messagetrace: Microsoft's message trace service principal (appId $MESSAGE_TRACE_APP_ID) is already in tenant $identity_tenant"
    else
        body="$("$PYTHON" -c 'import json, sys; print(json.dumps({"appId": sys.argv[1]}))' "$MESSAGE_TRACE_APP_ID")"
        graph_post "servicePrincipals" "$body"
        $dry_run || echo "messagetrace: created Microsoft's message trace service principal (appId $MESSAGE_TRACE_APP_ID) in tenant $identity_tenant"
        echo "messagetrace: Microsoft notes provisioning can take several hours: until then message trace answers 401 naming $MESSAGE_TRACE_APP_ID"
    fi
fi
