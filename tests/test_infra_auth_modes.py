"""The template's ``authMode``: each mode sets exactly the sign-in settings it needs, and the secretless
modes deploy no secret and no Key Vault.

The template is rendered per configuration by a small evaluator of the ARM functions the switches are
written with (``if``, ``equals``, ``not``, ``and``, ``or``, ``empty``, ``contains``, ``createArray``,
``parameters``, ``variables``); anything else (``reference``, ``format``, ...) stays an expression, as it
does for checkov. A resource whose condition the evaluator cannot decide fails the rendering.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.test_infra_checkov import run_checkov
from tests.test_infra_network import split_arguments

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "azuredeploy.json"
APP_CLIENT_ID = "11111111-1111-1111-1111-111111111111"
MODES = ("managedIdentity", "federated", "certificate", "clientSecret")
# The sign-in settings each mode needs (the settings contract shared with the code that reads them).
AUTH_SETTINGS = {
    "managedIdentity": {"O365_AUTH_MODE", "AZURE_CLIENT_ID"},
    "federated": {"O365_AUTH_MODE", "AZURE_CLIENT_ID", "O365_CLIENT_ID", "O365_TOKEN_EXCHANGE_AUDIENCE"},
    "certificate": {
        "O365_AUTH_MODE",
        "AZURE_CLIENT_ID",
        "O365_CLIENT_ID",
        "O365_CERTIFICATE_KEY_VAULT_URI",
        "O365_CERTIFICATE_NAME",
    },
    "clientSecret": {"O365_AUTH_MODE", "O365_CLIENT_ID", "O365_CLIENT_SECRET", "O365_CLIENT_SECRET_EXPIRES"},
}
ALL_AUTH_SETTINGS = set().union(*AUTH_SETTINGS.values())
VAULT = "[take(format('kv-{0}', variables('suffix')), 24)]"  # the vault's name once variables are inlined
KEY_VAULT_TYPES = {"Microsoft.KeyVault/vaults", "Microsoft.KeyVault/vaults/secrets"}
MODE_PARAMETERS = {
    "federated": {"clientId": APP_CLIENT_ID},
    "certificate": {"clientId": APP_CLIENT_ID, "certificateVaultName": "kv-certs", "certificateName": "o365"},
    "clientSecret": {"clientId": APP_CLIENT_ID, "clientSecret": "s3cret", "clientCredentialExpires": "2027-06-30"},
}


# --- rendering ---------------------------------------------------------------------------------------


class Opaque:
    """An expression the evaluator leaves to ARM (its text, without the brackets)."""

    def __init__(self, text: str) -> None:
        self.text = text


class Renderer:
    def __init__(self, arm: dict[str, Any], values: dict[str, Any]) -> None:
        self.arm = arm
        self.values = values

    def parameter(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        default = self.arm["parameters"][name].get("defaultValue", "")
        return self.evaluate(default[1:-1]) if isinstance(default, str) and default.startswith("[") else default

    def variable(self, name: str) -> Any:
        value = self.arm["variables"][name]
        return self.evaluate(value[1:-1]) if isinstance(value, str) and value.startswith("[") else value

    def evaluate(self, text: str) -> Any:
        text = text.strip()
        if re.fullmatch(r"'(?:[^']|'')*'", text):
            return text[1:-1].replace("''", "'")
        if text in ("true", "false"):
            return text == "true"
        call = re.fullmatch(r"(\w+)\((.*)\)", text, re.S)
        if not call:
            return Opaque(text)
        try:
            raw = split_arguments(call.group(2)) if call.group(2).strip() else []
        except ValueError:
            return Opaque(text)  # f(a).g(b): not one call
        name = call.group(1)
        if name == "if":
            condition = self.evaluate(raw[0])
            if not isinstance(condition, bool):
                return Opaque(text)
            return self.evaluate(raw[1] if condition else raw[2])
        args = [self.evaluate(a) for a in raw]
        if any(isinstance(a, Opaque) for a in args):
            return Opaque(text)
        functions = {
            "parameters": lambda: self.parameter(args[0]),
            "variables": lambda: self.variable(args[0]),
            "equals": lambda: args[0] == args[1],
            "not": lambda: not args[0],
            "and": lambda: all(args),
            "or": lambda: any(args),
            "empty": lambda: not args[0],
            "createArray": lambda: list(args),
            "contains": lambda: args[1] in args[0],
        }
        return functions[name]() if name in functions else Opaque(text)

    def value(self, node: Any) -> Any:
        """A JSON value with every expression evaluated as far as it goes."""
        if isinstance(node, str) and node.startswith("[") and not node.startswith("[["):
            result = self.evaluate(node[1:-1])
            return f"[{result.text}]" if isinstance(result, Opaque) else result
        if isinstance(node, dict):
            return {key: self.value(item) for key, item in node.items()}
        if isinstance(node, list):
            return [self.value(item) for item in node]
        return node


def render(auth_mode: str | None = None, **parameters: Any) -> dict[str, Any]:
    """The template as deployed with these parameter values (the others at their defaults)."""
    arm = json.loads(TEMPLATE.read_text())
    values = dict(parameters)
    if auth_mode is not None:
        values["authMode"] = auth_mode
    renderer = Renderer(arm, values)
    kept = []
    for resource in arm["resources"]:
        resource = copy.deepcopy(resource)
        condition = resource.pop("condition", True)
        deployed = renderer.value(condition)
        assert isinstance(deployed, bool), f"cannot decide the condition of {resource['name']}: {condition}"
        if deployed:
            kept.append(renderer.value(resource))
    rendered = {**arm, "resources": kept, "outputs": renderer.value(arm.get("outputs", {}))}
    rendered["parameters"] = {**arm["parameters"]}
    for name, value in values.items():
        if arm["parameters"][name]["type"].lower() != "securestring":
            rendered["parameters"][name] = {**arm["parameters"][name], "defaultValue": value}
    return rendered


def settings_of(arm: dict[str, Any]) -> dict[str, Any]:
    (site,) = [r for r in arm["resources"] if r["type"] == "Microsoft.Web/sites"]
    return {entry["name"]: entry["value"] for entry in site["properties"]["siteConfig"]["appSettings"]}


def set_auth_settings(arm: dict[str, Any]) -> set[str]:
    return {name for name, value in settings_of(arm).items() if name in ALL_AUTH_SETTINGS and value != ""}


def key_vault_resources(arm: dict[str, Any]) -> list[str]:
    found = []
    for resource in arm["resources"]:
        if resource["type"] in KEY_VAULT_TYPES or "Microsoft.KeyVault/vaults" in str(resource.get("scope", "")):
            found.append(resource["name"])
    return found


# --- tests -------------------------------------------------------------------------------------------


def test_the_renderer_resolves_the_switches_it_is_given() -> None:
    """A renderer that got the branches wrong would make every test below meaningless."""
    renderer = Renderer(json.loads(TEMPLATE.read_text()), {"authMode": "federated", "cloud": "GCCHigh"})
    assert renderer.evaluate("if(equals(parameters('authMode'), 'federated'), 'yes', 'no')") == "yes"
    assert renderer.evaluate("variables('tokenExchangeAudience')") == "api://AzureADTokenExchangeUSGov"
    assert isinstance(renderer.evaluate("reference(variables('uamiId'), '2023-01-31').clientId"), Opaque)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_sets_exactly_its_sign_in_settings(mode: str) -> None:
    arm = render(mode, **MODE_PARAMETERS.get(mode, {}))
    assert set_auth_settings(arm) == AUTH_SETTINGS[mode]
    settings = settings_of(arm)
    assert settings["O365_AUTH_MODE"] == mode
    if "AZURE_CLIENT_ID" in AUTH_SETTINGS[mode]:
        assert settings["AZURE_CLIENT_ID"] == "[reference(variables('uamiId'), '2023-01-31').clientId]"
    if "O365_CLIENT_ID" in AUTH_SETTINGS[mode]:
        assert settings["O365_CLIENT_ID"] == APP_CLIENT_ID


@pytest.mark.parametrize("mode", ["managedIdentity", "federated"])
def test_secretless_modes_deploy_no_secret_and_no_key_vault(mode: str) -> None:
    arm = render(mode, **MODE_PARAMETERS.get(mode, {}))
    assert key_vault_resources(arm) == []
    text = json.dumps(arm["resources"])
    assert "@Microsoft.KeyVault(" not in text
    assert "parameters('clientSecret')" not in text
    assert arm["outputs"]["keyVaultName"]["value"] == ""


def test_a_sink_secret_keeps_the_vault_but_not_the_client_secret() -> None:
    arm = render("managedIdentity", sinkType="splunk", sinkSplunkToken="hec-token")
    names = key_vault_resources(arm)
    assert VAULT in names
    assert any("secretNames').sinkSplunkToken" in n for n in names)
    assert not any("secretNames').clientSecret" in n for n in names)
    assert settings_of(arm)["SINK_SPLUNK_TOKEN"].startswith("[format('@Microsoft.KeyVault(")
    assert settings_of(arm)["O365_CLIENT_SECRET"] == ""


def test_client_secret_mode_stores_the_secret_in_the_vault_and_references_it() -> None:
    arm = render("clientSecret", **MODE_PARAMETERS["clientSecret"])
    names = key_vault_resources(arm)
    assert VAULT in names
    assert any("secretNames').clientSecret" in n for n in names)
    settings = settings_of(arm)
    assert settings["O365_CLIENT_SECRET"].startswith("[format('@Microsoft.KeyVault(SecretUri=")
    assert settings["O365_CLIENT_SECRET_EXPIRES"] == "2027-06-30"


def test_every_secret_parameter_keeps_the_vault() -> None:
    """A new secure parameter must be listed in keyVaultNeeded, or its secret would have no vault."""
    arm = json.loads(TEMPLATE.read_text())
    needed = arm["variables"]["keyVaultNeeded"]
    secure = [n for n, p in arm["parameters"].items() if p["type"].lower() == "securestring" and n != "clientSecret"]
    assert secure
    for name in secure:
        assert f"not(empty(parameters('{name}')))" in needed, name
        assert key_vault_resources(render("managedIdentity", **{name: "x"})), name


def test_private_networking_keeps_the_vault_its_private_endpoint_points_at() -> None:
    arm = render("managedIdentity", privateNetworking=True)
    assert VAULT in key_vault_resources(arm)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({}, "managedIdentity"),
        ({"clientId": APP_CLIENT_ID, "clientSecret": "s3cret"}, "clientSecret"),
    ],
)
def test_default_mode_is_secretless_unless_a_client_secret_is_given(parameters: dict[str, str], expected: str) -> None:
    """A deployment from before authMode passes a clientSecret and keeps signing in with it."""
    assert settings_of(render(None, **parameters))["O365_AUTH_MODE"] == expected


@pytest.mark.parametrize(
    ("cloud", "audience"),
    [
        ("Enterprise", "api://AzureADTokenExchange"),
        ("GCC", "api://AzureADTokenExchange"),
        ("GCCHigh", "api://AzureADTokenExchangeUSGov"),
        ("DoD", "api://AzureADTokenExchangeUSGov"),
    ],
)
def test_federated_token_exchange_audience_follows_the_cloud(cloud: str, audience: str) -> None:
    arm = render("federated", cloud=cloud, **MODE_PARAMETERS["federated"])
    assert settings_of(arm)["O365_TOKEN_EXCHANGE_AUDIENCE"] == audience


def certificate_role_assignments(arm: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        r
        for r in arm["resources"]
        if r["type"] == "Microsoft.Authorization/roleAssignments" and "certificateVaultName" in r["scope"]
    ]


def test_certificate_mode_grants_secrets_user_on_the_certificate_vault_in_this_resource_group() -> None:
    arm = render("certificate", **MODE_PARAMETERS["certificate"])
    (assignment,) = certificate_role_assignments(arm)
    assert assignment["scope"] == "[format('Microsoft.KeyVault/vaults/{0}', parameters('certificateVaultName'))]"
    assert "keyVaultSecretsUser" in assignment["properties"]["roleDefinitionId"]
    uri = settings_of(arm)["O365_CERTIFICATE_KEY_VAULT_URI"]
    assert "parameters('certificateVaultName')" in uri
    assert "keyvaultDns" in uri
    assert settings_of(arm)["O365_CERTIFICATE_NAME"] == "o365"
    assert VAULT not in key_vault_resources(arm), "no vault of our own in certificate mode"
    elsewhere = render("certificate", certificateVaultInResourceGroup=False, **MODE_PARAMETERS["certificate"])
    assert certificate_role_assignments(elsewhere) == []
    assert certificate_role_assignments(render("clientSecret", **MODE_PARAMETERS["clientSecret"])) == []


@pytest.mark.parametrize("mode", ["managedIdentity", "certificate", "clientSecret"])
def test_checkov_passes_on_each_mode_as_deployed(mode: str, tmp_path: Path) -> None:
    rendered = tmp_path / f"azuredeploy-{mode}.json"
    arm = render(mode, **MODE_PARAMETERS.get(mode, {}))
    rendered.write_text(json.dumps(arm, indent=2))
    report = run_checkov(template=rendered)
    failed = [(c["check_id"], c["resource"]) for c in report["results"].get("failed_checks", [])]
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["failed"] == 0, failed
    assert report["summary"]["resource_count"] == len(arm["resources"])


def test_the_form_offers_every_mode_and_shows_each_field_only_for_its_modes() -> None:
    ui = json.loads((ROOT / "infra" / "createUiDefinition.json").read_text())["parameters"]
    (auth,) = [step for step in ui["steps"] if step["name"] == "auth"]
    elements = {element["name"]: element for element in auth["elements"]}
    offered = [choice["value"] for choice in elements["authMode"]["constraints"]["allowedValues"]]
    assert offered == json.loads(TEMPLATE.read_text())["parameters"]["authMode"]["allowedValues"]
    assert offered[0] == "managedIdentity", "the secretless mode comes first"
    only = "[equals(steps('auth').authMode, '{}')]"
    app_registration = "[not(equals(steps('auth').authMode, 'managedIdentity'))]"
    expected = {
        "clientId": app_registration,
        "clientSecret": only.format("clientSecret"),
        "clientCredentialExpires": only.format("clientSecret"),
        "certificateVaultName": only.format("certificate"),
        "certificateVaultInResourceGroup": only.format("certificate"),
        "certificateName": only.format("certificate"),
    }
    assert {name: elements[name].get("visible") for name in expected} == expected
    assert ui["outputs"]["authMode"] == "[steps('auth').authMode]"
