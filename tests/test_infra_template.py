"""The ARM template (infra/azuredeploy.json) is complete and agrees with the code it deploys.

No Bicep compiler, ARM schema or Azure is reachable here, so these tests read the template as data:
references resolve, secrets stay secret, every setting the code reads is set, the bindings' connections
are identity-based, the identity gets exactly the roles it needs, and the alerts watch the log lines
the code really writes (the KQL is checked with Microsoft's Kusto language service from npm).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from o365collector import fetcher, lister, queue_runner

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "azuredeploy.json"
PARAMETERS = ROOT / "infra" / "azuredeploy.parameters.json"
INFRA_README = ROOT / "infra" / "README.md"
DEPLOY_GUIDE = ROOT / "docs" / "deploy.md"
RAW_TEMPLATE_URL = "https://raw.githubusercontent.com/o365-collector/o365-collector/main/infra/azuredeploy.json"

REFERENCE = re.compile(r"\b(parameters|variables)\('([^']+)'\)")
PROPERTY_OF_VARIABLE = re.compile(r"\bvariables\('([^']+)'\)\.(\w+)")
SETTING_NAME = re.compile(r"^(O365|SINK)_[A-Z0-9_]+$")
UAMI = "[variables('uamiId')]"
UAMI_PRINCIPAL = "[reference(variables('uamiId'), '2023-01-31').principalId]"

# Settings only the local Functions host needs; in Azure they are replaced (see infra/README.md).
LOCAL_ONLY_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage"}
# Settings for the platform rather than the collector's code.
PLATFORM_SETTING = re.compile(
    r"^(AzureWebJobsStorage__\w+|APPLICATIONINSIGHTS_CONNECTION_STRING|APPLICATIONINSIGHTS_AUTHENTICATION_STRING)$"
)
# Template values that differ from the local defaults on purpose.
AZURE_SPECIFIC_VALUES = {"SINK_FILE_DIR"}  # the work folder is read-only on Flex; /tmp is writable
SECRET_SETTINGS = {
    "O365_CLIENT_SECRET",
    "SINK_HTTP_BEARER_TOKEN",
    "SINK_HTTP_HEADERS",
    "SINK_SPLUNK_TOKEN",
    "SINK_ELASTICSEARCH_API_KEY",
    "SINK_ELASTICSEARCH_PASSWORD",
    "SINK_LOGANALYTICS_CLIENT_SECRET",
    "SINK_BLOB_CONNECTION_STRING",
    "SINK_EVENTHUB_CONNECTION_STRING",
}
# Sink settings that name the app's managed identity, and the secret that replaces it (the code refuses both).
SINK_IDENTITY_SETTINGS = {
    "SINK_LOGANALYTICS_CLIENT_ID": "sinkLogAnalyticsClientSecret",
    "SINK_BLOB_CLIENT_ID": "sinkBlobConnectionString",
    "SINK_EVENTHUB_CLIENT_ID": "sinkEventHubConnectionString",
}
# App settings and site properties the Flex Consumption plan rejects or ignores (platform deprecation table).
FLEX_FORBIDDEN_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "WEBSITE_VNET_ROUTE_ALL",
    "WEBSITE_CONTENTOVERVNET",
    "WEBSITE_DNS_SERVER",
    "WEBSITE_TIME_ZONE",
    "TZ",
    "APPINSIGHTS_INSTRUMENTATIONKEY",
}
FLEX_FORBIDDEN_SITE_CONFIG = {
    "linuxFxVersion",
    "netFrameworkVersion",
    "javaVersion",
    "powerShellVersion",
    "alwaysOn",
    "use32BitWorkerProcess",
    "ftpsState",
    "functionAppScaleLimit",
    "preWarmedInstanceCount",
    "isXenon",
    "windowsFxVersion",
}
ROLE_NAMES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}


@cache
def template() -> dict[str, Any]:
    return dict(json.loads(TEMPLATE.read_text()))


def walk_strings(node: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included (ARM accepts expressions as object keys)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


def resources(kind: str) -> list[dict[str, Any]]:
    return [r for r in template()["resources"] if r["type"] == kind]


def the_resource(kind: str) -> dict[str, Any]:
    (found,) = resources(kind)
    return found


def site() -> dict[str, Any]:
    return the_resource("Microsoft.Web/sites")


def app_settings() -> dict[str, str]:
    entries = site()["properties"]["siteConfig"]["appSettings"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), "an app setting is listed twice"
    return {entry["name"]: entry["value"] for entry in entries}


def variable(name: str) -> Any:
    return template()["variables"][name]


def sample_settings() -> dict[str, str]:
    return dict(json.loads((ROOT / "local.settings.sample.json").read_text())["Values"])


def settings_read_by_code() -> set[str]:
    """Setting names written as string literals in the package and in function_app.py (``%NAME%`` too)."""
    found: set[str] = set()
    for path in [*sorted((ROOT / "o365collector").rglob("*.py")), ROOT / "function_app.py"]:
        tree = ast.parse(path.read_text())
        exported: set[int] = set()  # __all__ lists Python names, not settings
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                exported.update(id(c) for c in ast.walk(node.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in exported:
                name = node.value.strip("%")
                if SETTING_NAME.match(name):
                    found.add(name)
    return found


def binding_decorators() -> list[tuple[str, dict[str, str]]]:
    """``(decorator name, literal keyword arguments)`` of every ``@app.<x>(...)`` in function_app.py."""
    found = []
    for node in ast.walk(ast.parse((ROOT / "function_app.py").read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute):
                    kwargs = {
                        k.arg: k.value.value
                        for k in deco.keywords
                        if k.arg and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)
                    }
                    found.append((deco.func.attr, kwargs))
    return found


def documented_log_prefixes() -> dict[str, str]:
    """The alert → log message prefix table of infra/README.md."""
    rows = re.findall(r"^\|\s*(offline|poison|content-expired)\s*\|\s*`([^`]+)`", INFRA_README.read_text(), re.M)
    return dict(rows)


def alert(suffix: str) -> dict[str, Any]:
    rules = resources("Microsoft.Insights/scheduledQueryRules")
    matches = [r for r in rules if r["name"] == f"[format('{{0}}-{suffix}', parameters('appName'))]"]
    assert len(matches) == 1, f"expected one alert rule named <app>-{suffix}"
    return matches[0]


def alert_query(suffix: str) -> str:
    """The query text of an alert rule, with variables('alertQueries') resolved."""
    (criterion,) = alert(suffix)["properties"]["criteria"]["allOf"]
    query = str(criterion["query"])
    match = re.fullmatch(r"\[variables\('alertQueries'\)\.(\w+)\]", query)
    return str(variable("alertQueries")[match.group(1)]) if match else query


def offline_query(content_types: str) -> str:
    """The offline rule's query as ARM builds it for a given contentTypes parameter."""
    (criterion,) = alert("offline")["properties"]["criteria"]["allOf"]
    assert criterion["query"] == (
        "[concat('let expected = dynamic(', variables('expectedStreams'), '); let listed = ', "
        "variables('alertQueries').listedStreams, '; ', variables('alertQueries').staleStreams)]"
    )
    assert variable("expectedStreams") == "[string(split(toLower(replace(parameters('contentTypes'), ' ', '')), ','))]"
    expected = json.dumps(content_types.replace(" ", "").lower().split(","), separators=(",", ":"))
    queries = variable("alertQueries")
    return f"let expected = dynamic({expected}); let listed = {queries['listedStreams']}; {queries['staleStreams']}"


# --- shape and references ---------------------------------------------------------------------------


def test_template_is_a_resource_group_deployment_with_valid_top_level_shape() -> None:
    arm = template()
    assert arm["$schema"] == "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
    allowed = {"$schema", "contentVersion", "apiProfile", "parameters", "variables", "functions", "resources"}
    assert set(arm) <= allowed | {"outputs", "metadata"}
    for resource in arm["resources"]:
        assert {"type", "apiVersion", "name"} <= set(resource), resource.get("name")
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", resource["apiVersion"]), resource["type"]
        segments = resource["type"].count("/")
        if not resource["name"].startswith("["):
            assert resource["name"].count("/") == segments - 1, f"{resource['type']}: name has the wrong segment count"


def test_every_parameter_and_variable_used_is_defined_and_every_defined_one_is_used() -> None:
    arm = template()
    used = {(kind, name) for text in walk_strings(arm) for kind, name in REFERENCE.findall(text)}
    defined = {("parameters", n) for n in arm["parameters"]} | {("variables", n) for n in arm["variables"]}
    assert used - defined == set(), "referenced but not defined"
    assert defined - used == set(), "defined but never used"


def test_every_property_of_an_object_variable_exists_and_is_used() -> None:
    arm = template()
    used: dict[str, set[str]] = {}
    for text in walk_strings(arm):
        for name, prop in PROPERTY_OF_VARIABLE.findall(text):
            used.setdefault(name, set()).add(prop)
    for name, props in used.items():
        assert props <= set(variable(name)), f"variables('{name}') has no {props - set(variable(name))}"
    for name, value in arm["variables"].items():
        if isinstance(value, dict):
            assert set(value) == used.get(name, set()), f"variables('{name}') has unused entries"


def test_every_parameter_has_a_description() -> None:
    for name, parameter in template()["parameters"].items():
        assert parameter.get("metadata", {}).get("description"), name


# --- secrets ------------------------------------------------------------------------------------------


def secure_parameters() -> set[str]:
    return {n for n, p in template()["parameters"].items() if p["type"].lower() in {"securestring", "secureobject"}}


def test_secret_parameters_are_securestring_without_a_default() -> None:
    parameters = template()["parameters"]
    secret_like = {n for n in parameters if re.search(r"secret|token|password|headers|key", n, re.I)}
    assert secret_like, "the client secret parameter is missing"
    assert secret_like <= secure_parameters()
    for name in secure_parameters():
        assert parameters[name].get("defaultValue", "") == "", f"{name} must not have a default value"


def test_secret_parameters_only_ever_reach_key_vault_secrets() -> None:
    """A secure parameter may only be a Key Vault secret's value (or be tested for emptiness)."""
    for resource in template()["resources"]:
        for text in walk_strings(resource):
            for name in secure_parameters():
                ref = f"parameters('{name}')"
                remainder = text.replace(f"empty({ref})", "")
                if ref in remainder:
                    assert resource["type"] == "Microsoft.KeyVault/vaults/secrets", (
                        f"{name} leaks into {resource['type']}"
                    )
                    assert resource["properties"]["value"] == f"[{ref}]"
    for output in template().get("outputs", {}).values():
        for text in walk_strings(output):
            assert not any(f"parameters('{n}')" in text for n in secure_parameters())
            assert not re.search(r"\blist\w*\(", text), "outputs must not call list*() (keys, secrets)"


def test_secret_settings_are_key_vault_references_read_with_the_managed_identity() -> None:
    settings = app_settings()
    secret_names = variable("secretNames")
    vault_secrets = {r["name"] for r in resources("Microsoft.KeyVault/vaults/secrets")}
    for setting in SECRET_SETTINGS:
        value = settings[setting]
        assert "@Microsoft.KeyVault(SecretUri=" in value, setting
        (key,) = re.findall(r"variables\('secretNames'\)\.(\w+)", value)
        assert f"[format('{{0}}/{{1}}', variables('keyVaultName'), variables('secretNames').{key})]" in vault_secrets
        assert secret_names[key]
    assert site()["properties"]["keyVaultReferenceIdentity"] == UAMI
    assert variable("keyVaultSecretsUri").endswith(
        "/secrets/', variables('keyVaultName'), environment().suffixes.keyvaultDns)]"
    )


@pytest.mark.parametrize("setting", sorted(SINK_IDENTITY_SETTINGS))
def test_sinks_sign_in_with_the_app_identity_unless_their_secret_is_given(setting: str) -> None:
    """The code refuses a managed identity client id next to the secret that replaces it."""
    secret = SINK_IDENTITY_SETTINGS[setting]
    assert app_settings()[setting] == (
        f"[if(empty(parameters('{secret}')), reference(variables('uamiId'), '2023-01-31').clientId, '')]"
    )
    assert template()["parameters"][secret]["type"] == "securestring"


def test_log_analytics_audience_and_login_host_follow_the_cloud() -> None:
    assert variable("usGovernmentCloud") == "[contains(createArray('GCCHigh', 'DoD'), parameters('cloud'))]"
    assert variable("monitorAudience") == (
        "[if(variables('usGovernmentCloud'), 'https://monitor.azure.us', 'https://monitor.azure.com')]"
    )
    settings = app_settings()
    assert settings["SINK_LOGANALYTICS_AUDIENCE"] == "[variables('monitorAudience')]"
    # The code rejects these three without a client secret, so they are set only with one.
    for name in ("SINK_LOGANALYTICS_TENANT_ID", "SINK_LOGANALYTICS_APP_CLIENT_ID", "SINK_LOGANALYTICS_AUTHORITY_HOST"):
        assert "empty(parameters('sinkLogAnalyticsClientSecret'))" in settings[name], name


def test_outputs_name_the_identity_to_grant_sink_roles_to() -> None:
    outputs = template()["outputs"]
    assert outputs["managedIdentityPrincipalId"]["value"] == UAMI_PRINCIPAL
    assert outputs["managedIdentityClientId"]["value"] == "[reference(variables('uamiId'), '2023-01-31').clientId]"


def test_key_vault_authorises_with_rbac_and_stays_reachable_for_references() -> None:
    vault = the_resource("Microsoft.KeyVault/vaults")["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert "accessPolicies" not in vault
    # Without privateNetworking the platform reaches the vault only over its public endpoint to resolve
    # the references; with it, through the vault's private endpoint (tests/test_infra_network.py).
    assert vault["publicNetworkAccess"] == "[if(parameters('privateNetworking'), 'Disabled', 'Enabled')]"


# --- app settings -------------------------------------------------------------------------------------


def test_every_setting_the_code_reads_is_in_the_sample_catalog() -> None:
    missing = settings_read_by_code() - set(sample_settings())
    assert missing == set(), f"add these to local.settings.sample.json: {sorted(missing)}"


def test_every_setting_the_code_reads_is_set_by_the_template() -> None:
    needed = (settings_read_by_code() | set(sample_settings())) - LOCAL_ONLY_SETTINGS
    missing = needed - set(app_settings())
    assert missing == set(), f"the template does not set {sorted(missing)}"


def test_template_sets_no_setting_the_code_does_not_know() -> None:
    known = settings_read_by_code() | set(sample_settings())
    unknown = {name for name in app_settings() if name not in known and not PLATFORM_SETTING.match(name)}
    assert unknown == set(), f"misspelt or stale settings: {sorted(unknown)}"


def test_fixed_setting_values_match_the_code_defaults() -> None:
    sample = sample_settings()
    for name, value in app_settings().items():
        if name in sample and not value.startswith("[") and name not in AZURE_SPECIFIC_VALUES:
            assert value == sample[name], f"{name}: template {value!r}, local.settings.sample.json {sample[name]!r}"


def test_queue_settings_match_host_json() -> None:
    """The fetcher reports poisoning on the host's last attempt: both must agree on the count."""
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    settings = app_settings()
    assert int(settings["O365_MAX_DEQUEUE_COUNT"]) == queues["maxDequeueCount"]
    hours, minutes, seconds = (int(part) for part in queues["visibilityTimeout"].split(":"))
    assert int(settings["O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS"]) == hours * 3600 + minutes * 60 + seconds


def test_no_setting_or_site_property_that_flex_consumption_rejects() -> None:
    assert FLEX_FORBIDDEN_SETTINGS & set(app_settings()) == set()
    assert FLEX_FORBIDDEN_SITE_CONFIG & set(site()["properties"]["siteConfig"]) == set()


def test_host_storage_is_identity_based_with_the_user_assigned_identity() -> None:
    settings = app_settings()
    assert "AzureWebJobsStorage" not in settings, "a connection string needs shared keys, which are off"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "[reference(variables('uamiId'), '2023-01-31').clientId]"
    for service in ("blob", "queue", "table"):
        assert settings[f"AzureWebJobsStorage__{service}ServiceUri"] == (
            f"[reference(variables('storageId'), '2023-05-01').primaryEndpoints.{service}]"
        )


def test_binding_connections_exist_as_identity_based_settings() -> None:
    settings = app_settings()
    connections = {
        kwargs.get("connection", "AzureWebJobsStorage")
        for name, kwargs in binding_decorators()
        if name.startswith(("queue", "blob", "table"))
    }
    assert connections, "function_app.py declares no storage binding"
    for connection in connections:
        assert settings.get(f"{connection}__credential") == "managedidentity", connection
        assert "variables('uamiId')" in settings.get(f"{connection}__clientId", ""), connection
        assert f"{connection}__queueServiceUri" in settings or f"{connection}__serviceUri" in settings, connection


def test_binding_expressions_name_app_settings() -> None:
    settings = app_settings()
    expressions = {
        match
        for _, kwargs in binding_decorators()
        for value in kwargs.values()
        for match in re.findall(r"%(\w+)%", value)
    }
    assert {"O365_LIST_SCHEDULE", "O365_CONTENT_QUEUE"} <= expressions
    assert expressions <= set(settings)


# --- resources ----------------------------------------------------------------------------------------


def test_function_app_runs_python_311_on_flex_consumption() -> None:
    plan = the_resource("Microsoft.Web/serverfarms")
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True
    app = site()
    assert app["kind"] == "functionapp,linux"
    assert app["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {UAMI: {}}}
    assert app["properties"]["httpsOnly"] is True
    assert app["properties"]["siteConfig"]["minTlsVersion"] == "1.2"
    config = app["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": UAMI}
    assert storage["value"].endswith("variables('deployContainer'))]")
    containers = [r["name"] for r in resources("Microsoft.Storage/storageAccounts/blobServices/containers")]
    assert containers == ["[format('{0}/default/{1}', variables('storageName'), variables('deployContainer'))]"]


def test_scale_out_limit_accepts_what_flex_consumption_accepts() -> None:
    """Flex Consumption takes a maximum instance count from 1 to 1000 (it once had a floor of 40)."""
    limit = template()["parameters"]["maximumInstanceCount"]
    assert (limit["minValue"], limit["maxValue"]) == (1, 1000)
    assert limit["minValue"] <= limit["defaultValue"] <= limit["maxValue"]
    assert "40 is the lowest" not in limit["metadata"]["description"]


def test_package_build_targets_the_runtime_the_template_declares() -> None:
    script = (ROOT / "scripts" / "package.sh").read_text()
    version = site()["properties"]["functionAppConfig"]["runtime"]["version"]
    assert f'TARGET_PYTHON="{version}"' in script


def test_code_is_deployed_with_one_deploy_only_when_a_release_package_is_given() -> None:
    """The default deploys the infrastructure alone (an empty packageUri: no release needs to exist);
    scripts/deploy.sh then deploys the code. A release asset's URL in packageUri deploys both at once."""
    (deploy,) = resources("Microsoft.Web/sites/extensions")
    assert deploy["name"] == "[format('{0}/{1}', parameters('appName'), 'onedeploy')]"
    assert deploy["properties"] == {"packageUri": "[parameters('packageUri')]", "remoteBuild": False}
    assert deploy["condition"] == "[not(empty(parameters('packageUri')))]"
    assert "[resourceId('Microsoft.Web/sites', parameters('appName'))]" in deploy["dependsOn"]
    parameters = template()["parameters"]
    assert "releaseVersion" not in parameters
    assert parameters["packageUri"]["defaultValue"] == ""
    assert 'OUT="$DIST_DIR/o365collector-$VERSION.zip"' in (ROOT / "scripts" / "package.sh").read_text()


def test_storage_account_is_hardened() -> None:
    account = the_resource("Microsoft.Storage/storageAccounts")["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["allowBlobPublicAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["supportsHttpsTrafficOnly"] is True
    for container in resources("Microsoft.Storage/storageAccounts/blobServices/containers"):
        assert container["properties"]["publicAccess"] == "None"


def test_queues_and_tables_are_created_with_the_names_the_settings_give() -> None:
    sample, settings = sample_settings(), app_settings()
    assert variable("contentQueue") == sample["O365_CONTENT_QUEUE"]
    assert variable("poisonQueue") == "[format('{0}-poison', variables('contentQueue'))]"
    assert variable("checkpointTable") == sample["O365_CHECKPOINT_TABLE"]
    assert variable("ledgerTable") == sample["O365_LEDGER_TABLE"]
    assert settings["O365_CONTENT_QUEUE"] == "[variables('contentQueue')]"
    assert settings["O365_CHECKPOINT_TABLE"] == "[variables('checkpointTable')]"
    assert settings["O365_LEDGER_TABLE"] == "[variables('ledgerTable')]"
    assert variable("statusTable") == sample["O365_STATUS_TABLE"]
    assert settings["O365_STATUS_TABLE"] == "[variables('statusTable')]"
    queues = {r["name"] for r in resources("Microsoft.Storage/storageAccounts/queueServices/queues")}
    tables = {r["name"] for r in resources("Microsoft.Storage/storageAccounts/tableServices/tables")}
    child = "[format('{{0}}/default/{{1}}', variables('storageName'), variables('{}'))]"
    assert queues == {child.format(q) for q in ("contentQueue", "poisonQueue", "listQueue", "listPoisonQueue")}
    assert variable("listQueue") == sample["O365_LIST_QUEUE"]
    assert settings["O365_LIST_QUEUE"] == "[variables('listQueue')]"
    assert tables == {child.format("checkpointTable"), child.format("ledgerTable"), child.format("statusTable")}


def test_role_assignments_give_the_managed_identity_exactly_what_it_needs() -> None:
    granted = set()
    for assignment in resources("Microsoft.Authorization/roleAssignments"):
        props = assignment["properties"]
        assert props["principalId"] == UAMI_PRINCIPAL
        assert props["principalType"] == "ServicePrincipal"
        assert assignment["name"].startswith("[variables('") or assignment["name"].startswith("[guid(")
        (role_key,) = re.findall(r"variables\('roles'\)\.(\w+)", props["roleDefinitionId"])
        scope = re.match(r"\[format\('(Microsoft\.[\w.]+/\w+)/\{0\}'", assignment["scope"])
        assert scope, assignment["scope"]
        granted.add((scope.group(1), ROLE_NAMES[variable("roles")[role_key]]))
        assert "[variables('uamiId')]" in assignment["dependsOn"]
    assert granted == {
        ("Microsoft.Storage/storageAccounts", "Storage Blob Data Owner"),
        ("Microsoft.Storage/storageAccounts", "Storage Queue Data Contributor"),
        ("Microsoft.Storage/storageAccounts", "Storage Table Data Contributor"),
        ("Microsoft.KeyVault/vaults", "Key Vault Secrets User"),
        ("Microsoft.Insights/components", "Monitoring Metrics Publisher"),
    }
    for name in [v for v in template()["variables"] if v.endswith("RoleAssignmentName")]:
        assert "variables('uamiId')" in variable(name), f"{name}: the name must be unique per identity"


def test_site_starts_only_after_its_roles_secrets_queues_and_tables_exist() -> None:
    depends = "\n".join(site()["dependsOn"])
    for name in [v for v in template()["variables"] if v.endswith("RoleAssignmentName")]:
        assert f"variables('{name}')" in depends
    for key in variable("secretNames"):
        assert f"variables('secretNames').{key}" in depends
    for name in ("contentQueue", "poisonQueue", "checkpointTable", "ledgerTable", "statusTable", "deployContainer"):
        assert f"variables('{name}')" in depends


def test_application_insights_accepts_only_entra_authenticated_telemetry() -> None:
    component = the_resource("Microsoft.Insights/components")["properties"]
    assert component["DisableLocalAuth"] is True
    assert component["WorkspaceResourceId"]
    assert (
        the_resource("Microsoft.OperationalInsights/workspaces")["properties"]["features"]["disableLocalAuth"] is True
    )
    settings = app_settings()
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "[format('ClientId={0};Authorization=AAD', reference(variables('uamiId'), '2023-01-31').clientId)]"
    )
    assert "ConnectionString" in settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]


# --- alerts -------------------------------------------------------------------------------------------


def test_log_prefixes_are_documented_and_are_the_code_own() -> None:
    assert documented_log_prefixes() == {
        "offline": lister.SUMMARY_MESSAGE,
        "poison": queue_runner.POISONED_MESSAGE,
        "content-expired": fetcher.EXPIRED_MESSAGE,
    }


@pytest.mark.parametrize("suffix", ["offline", "poison", "content-expired"])
def test_alert_rules_watch_the_documented_log_lines_and_notify_the_action_group(suffix: str) -> None:
    prefix = documented_log_prefixes()[suffix]
    query = offline_query("Audit.Exchange") if suffix == "offline" else alert_query(suffix)
    assert f'message startswith "{prefix}"' in query
    rule = alert(suffix)
    assert rule["kind"] == "LogAlert"
    assert rule["properties"]["scopes"] == ["[variables('appInsightsId')]"]
    assert rule["properties"]["actions"]["actionGroups"] == ["[variables('actionGroupId')]"]
    assert rule["properties"]["enabled"] is True


def test_offline_alert_fires_per_content_type_within_the_configured_window() -> None:
    rule = alert("offline")["properties"]
    assert rule["windowSize"] == "[parameters('offlineAlertWindow')]"
    (criterion,) = rule["criteria"]["allOf"]
    assert criterion["operator"] == "GreaterThan"
    assert criterion["threshold"] == 0
    assert [d["name"] for d in criterion["dimensions"]] == ["content_type"]


def test_offline_query_reads_the_content_type_where_the_lister_writes_it() -> None:
    """The query takes the JSON after the prefix (from the first brace) and reads its content_type."""
    listed = variable("alertQueries")["listedStreams"]
    assert 'parse_json(substring(message, indexof(message, "{"))).content_type' in listed
    summary = lister.StreamResult(tenant_id="t", content_type="Audit.Exchange").summary()
    line = f"{lister.SUMMARY_MESSAGE} {json.dumps(summary)}"
    assert json.loads(line[line.index("{") :])["content_type"] == "Audit.Exchange"


def test_poison_alert_also_catches_the_host_moving_the_message() -> None:
    """The host logs this line itself when it moves a message, whatever the code managed to log."""
    query = alert_query("poison")
    assert 'message startswith "Message has reached MaxDequeueCount"' in query
    assert f"'{variable('contentQueue')}-poison'" in query


def test_action_group_mails_the_alert_address() -> None:
    group = the_resource("Microsoft.Insights/actionGroups")
    assert group["location"] == "Global"
    assert len(group["properties"]["groupShortName"]) <= 12
    (receiver,) = group["properties"]["emailReceivers"]
    assert receiver["emailAddress"] == "[parameters('alertEmail')]"


KUSTO_LANGUAGE_SERVICE = "12.4.1"  # the version package.json pins
KQL_CHECK = r"""
const service = process.env.KUSTO_LANGUAGE_SERVICE;
global.Bridge = require(service + "/bridge.js");
require(service + "/Kusto.Language.Bridge.js");
const K = global.Kusto.Language, S = K.Symbols;
const traces = new S.TableSymbol.$ctor4("traces", [
  new S.ColumnSymbol("timestamp", S.ScalarTypes.DateTime),
  new S.ColumnSymbol("message", S.ScalarTypes.String),
  new S.ColumnSymbol("severityLevel", S.ScalarTypes.Int),
  new S.ColumnSymbol("customDimensions", S.ScalarTypes.Dynamic)]);
const globals = K.GlobalState.Default.WithDatabase(new S.DatabaseSymbol.ctor("appinsights", [traces]));
const out = {};
for (const [name, query] of Object.entries(JSON.parse(require("fs").readFileSync(0, "utf8")))) {
  const diagnostics = K.KustoCode.ParseAndAnalyze(query, globals).GetDiagnostics();
  out[name] = [];
  for (let i = 0; i < diagnostics.Count; i++) {
    const d = diagnostics.getItem(i);
    if (d.Severity === "Error") out[name].push(d.Message);
  }
}
console.log(JSON.stringify(out));
"""


def kusto_language_service() -> Path:
    """Microsoft's Kusto parser (a JavaScript build of Kusto.Language), installed by scripts/bootstrap.sh
    from package.json (pinned), so no test installs anything on first use."""
    service = ROOT / "node_modules" / "@kusto" / "language-service-next"
    manifest = service / "package.json"
    if not manifest.exists():
        pytest.fail("the Kusto language service is not installed: run scripts/bootstrap.sh (npm ci)")
    version = json.loads(manifest.read_text())["version"]
    assert version == KUSTO_LANGUAGE_SERVICE, f"node_modules has {version}: run scripts/bootstrap.sh (npm ci)"
    return service


def kql_errors(queries: dict[str, str]) -> dict[str, list[str]]:
    service = kusto_language_service()
    result = subprocess.run(
        ["node", "-e", KQL_CHECK],
        env={**os.environ, "KUSTO_LANGUAGE_SERVICE": str(service)},
        input=json.dumps(queries),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return dict(json.loads(result.stdout))


def test_alert_queries_are_valid_kql_against_the_traces_table() -> None:
    queries = {
        "offline": offline_query("Audit.AzureActiveDirectory, Audit.Exchange,DLP.All"),
        "poison": alert_query("poison"),
        "content-expired": alert_query("content-expired"),
        # The checker itself must be able to fail:
        "misspelt-column": 'traces | where mesage startswith "x"',
    }
    errors = kql_errors(queries)
    assert errors.pop("misspelt-column"), "the KQL checker reported nothing for a broken query"
    assert errors == {"offline": [], "poison": [], "content-expired": []}


# --- parameters file and the deploy guide -------------------------------------------------------------


def test_example_parameters_fit_the_template_and_hold_no_secret() -> None:
    example = json.loads(PARAMETERS.read_text())
    assert example["$schema"] == "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#"
    parameters = template()["parameters"]
    assert set(example["parameters"]) <= set(parameters)
    required = {n for n, p in parameters.items() if "defaultValue" not in p} - secure_parameters()
    assert required <= set(example["parameters"])
    assert secure_parameters() & set(example["parameters"]) == set()
    for name, entry in example["parameters"].items():
        if "allowedValues" in parameters[name]:
            assert entry["value"] in parameters[name]["allowedValues"], name


def test_deploy_guide_button_points_at_the_template() -> None:
    guide = DEPLOY_GUIDE.read_text()
    form = RAW_TEMPLATE_URL.replace("azuredeploy.json", "createUiDefinition.json")
    button = (
        "https://portal.azure.com/#create/Microsoft.Template/uri/"
        + quote(RAW_TEMPLATE_URL, safe="")
        + "/createUIDefinitionUri/"
        + quote(form, safe="")
    )
    assert f"]({button})" in guide
    assert "az deployment group create" in guide
    assert "infra/azuredeploy.json" in guide
