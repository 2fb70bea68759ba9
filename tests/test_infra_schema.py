"""Every resource in the ARM templates matches the published schema of its type at its apiVersion.

No Azure or schema download is reachable at test time, so the facts are vendored in
tests/data/arm_schema_facts.json (one entry per type@apiVersion, each citing the published schema, the REST
API spec and the learn.microsoft.com template reference it was written from). The walk covers conditional
resources, nested child resources and inline nested deployments. A property whose value is an expression
(`[...]`) is not descended into, but its name must still be known. Each problem names its JSON path.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = [ROOT / "infra" / "azuredeploy.json", ROOT / "infra" / "logs-ingestion.json"]
FACTS = Path(__file__).resolve().parent / "data" / "arm_schema_facts.json"

# Keys the deployment engine reads itself, whatever the resource type (template syntax, not the type's schema).
ENVELOPE = {"type", "apiVersion", "name", "condition", "dependsOn", "copy", "comments", "scope", "resources"}

Shape = Any  # "scalar" | "any" | {"object"|"array"|"map"|"ref": ...}, as described in the facts file's "about"


@cache
def facts() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FACTS.read_text(encoding="utf-8"))
    return loaded


def is_expression(value: object) -> bool:
    # "[[" escapes a literal string that starts with "[" (ARM template syntax).
    return isinstance(value, str) and value.startswith("[") and value.endswith("]") and not value.startswith("[[")


def resources_of(
    template: dict[str, Any], path: str, parent_type: str = ""
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield (json path, full type, resource) for every resource, nested ones and inline deployments too."""
    raw = template.get("resources", [])
    # languageVersion 2.0 templates keep resources in an object keyed by symbolic name.
    items = list(raw.items()) if isinstance(raw, dict) else list(enumerate(raw))
    for key, resource in items:
        here = f"{path}.resources[{key!r}]" if isinstance(key, str) else f"{path}.resources[{key}]"
        rtype = str(resource.get("type", ""))
        if parent_type and "/" not in rtype:
            rtype = f"{parent_type}/{rtype}"  # a child declared inside its parent uses its short type
        yield here, rtype, resource
        yield from resources_of(resource, here, rtype)
        inner = (
            (resource.get("properties") or {}).get("template") if isinstance(resource.get("properties"), dict) else None
        )
        if rtype == "Microsoft.Resources/deployments" and isinstance(inner, dict):
            yield from resources_of(inner, f"{here}.properties.template")


def name_variant(name: object) -> str:
    """The last literal segment of a resource name, e.g. 'onedeploy' in [format('{0}/{1}', x, 'onedeploy')]."""
    text = str(name)
    if is_expression(text):
        literals = text.split("'")[1::2]
        return literals[-1].rsplit("/", 1)[-1] if literals else ""
    return text.rsplit("/", 1)[-1]


def schema_for(rtype: str, api_version: str, name: object) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """(resource shape, definitions) for a type@apiVersion, or why there are none."""
    known = facts()["types"]
    if rtype not in known:
        return f"unknown resource type {rtype!r}"
    versions = known[rtype]
    if api_version not in versions:
        return (
            f"apiVersion {api_version!r} is not a published version of {rtype} known here (known: {sorted(versions)})"
        )
    entry = versions[api_version]
    if "by_name" in entry:
        variant = name_variant(name)
        if variant not in entry["by_name"]:
            return f"{rtype}@{api_version} has no schema for the name {variant!r} (known: {sorted(entry['by_name'])})"
        entry = entry["by_name"][variant]
    resource = copy.deepcopy(entry["resource"])
    allowances = entry.get("platform_allowances", {}).get("properties", {})
    merge_allowances(resource, allowances)
    return resource, entry.get("definitions", {})


def merge_allowances(resource: dict[str, Any], allowances: dict[str, Any]) -> None:
    for key, shape in allowances.items():
        present = resource["properties"].get(key)
        if isinstance(present, dict) and "object" in present and "object" in shape:
            merge_allowances(present["object"], shape["object"]["properties"])
        else:
            resource["properties"][key] = shape


def check_value(shape: Shape, value: Any, path: str, definitions: dict[str, Any]) -> Iterator[str]:
    if is_expression(value) or value is None or shape == "any":
        return
    if isinstance(shape, dict) and "ref" in shape:
        definition = definitions.get(shape["ref"])
        if definition is None:
            yield f"{path}: facts for definition {shape['ref']!r} are not vendored (add them to {FACTS.name})"
            return
        shape = {"object": definition}
    if shape == "scalar":
        if isinstance(value, (dict, list)):
            yield f"{path}: the schema defines a scalar here, the template sets {type(value).__name__}"
    elif "object" in shape:
        if not isinstance(value, dict):
            yield f"{path}: the schema defines an object here"
            return
        yield from check_object(shape["object"], value, path, definitions)
    elif "array" in shape:
        if not isinstance(value, list):
            yield f"{path}: the schema defines an array here"
            return
        for index, item in enumerate(value):
            yield from check_value(shape["array"], item, f"{path}[{index}]", definitions)
    elif "map" in shape:
        if not isinstance(value, dict):
            yield f"{path}: the schema defines a map here"
            return
        for key, item in value.items():
            yield from check_value(shape["map"], item, f"{path}[{key!r}]", definitions)


def check_object(
    schema: dict[str, Any], value: dict[str, Any], path: str, definitions: dict[str, Any]
) -> Iterator[str]:
    known = schema["properties"]
    for key, item in value.items():
        if key not in known:
            if not schema.get("additionalProperties"):
                yield f"{path}.{key}: unknown property (known: {sorted(known)})"
            continue
        yield from check_value(known[key], item, f"{path}.{key}", definitions)
    for key in schema.get("required", []):
        if key not in value:
            yield f"{path}.{key}: required property is missing"


def problems(template: dict[str, Any], path: str) -> list[str]:
    found: list[str] = []
    for here, rtype, resource in resources_of(template, path):
        looked_up = schema_for(rtype, str(resource.get("apiVersion")), resource.get("name"))
        if isinstance(looked_up, str):
            found.append(f"{here}: {looked_up}")
            continue
        schema, definitions = looked_up
        body = {key: value for key, value in resource.items() if key not in ENVELOPE}
        found.extend(check_object(schema, body, here, definitions))
    return found


def load(template: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(template.read_text(encoding="utf-8"))
    return loaded


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_every_resource_matches_its_published_schema(template: Path) -> None:
    """Types, apiVersions, property names and required properties all agree with the published schemas."""
    assert problems(load(template), template.name) == []


def test_the_walk_reaches_conditional_nested_and_extension_resources() -> None:
    walked = {rtype for template in TEMPLATES for _, rtype, _ in resources_of(load(template), template.name)}
    # One of each kind the check must not skip: conditional (private DNS, one-deploy), child, extension (scope).
    assert {
        "Microsoft.Network/privateDnsZones/virtualNetworkLinks",
        "Microsoft.Web/sites/extensions",
        "Microsoft.Storage/storageAccounts/queueServices/queues",
        "Microsoft.Authorization/roleAssignments",
        "Microsoft.Insights/dataCollectionRules",
    } <= walked


def test_every_fact_cites_its_sources() -> None:
    for rtype, versions in facts()["types"].items():
        for version, entry in versions.items():
            assert entry["sources"], f"{rtype}@{version} cites no source"
            assert all(s.startswith("https://") for s in entry["sources"])


def test_only_onedeploy_is_allowed_beyond_the_published_schema() -> None:
    """Keys the platform reads but the schema omits are named one by one, with their sources."""
    allowed = []
    for rtype, versions in facts()["types"].items():
        for version, entry in versions.items():
            for variant, body in entry.get("by_name", {"": entry}).items():
                if "platform_allowances" in body:
                    assert body["platform_allowances"]["sources"]
                    allowed.append((rtype, version, variant))
    assert allowed == [("Microsoft.Web/sites/extensions", "2022-09-01", "onedeploy")]


# --- the check fails on the mistakes it exists to catch ------------------------------------------------------


def resource(template: dict[str, Any], rtype: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for _, t, r in resources_of(template, "t") if t == rtype)
    return found


def test_a_misspelt_property_is_named_with_its_path() -> None:
    template = load(TEMPLATES[0])
    props = resource(template, "Microsoft.Storage/storageAccounts")["properties"]
    props["allowBlobPublicAcess"] = props.pop("allowBlobPublicAccess")
    assert any(
        ".properties.allowBlobPublicAcess: unknown property" in p for p in problems(template, "azuredeploy.json")
    )


def test_a_property_from_a_newer_api_version_is_rejected() -> None:
    # resolutionPolicy arrived in Microsoft.Network/privateDnsZones/virtualNetworkLinks 2024-06-01.
    template = load(TEMPLATES[0])
    resource(template, "Microsoft.Network/privateDnsZones/virtualNetworkLinks")["properties"]["resolutionPolicy"] = (
        "Default"
    )
    assert any(".properties.resolutionPolicy: unknown property" in p for p in problems(template, "azuredeploy.json"))


def test_a_nested_unknown_property_under_an_expression_free_object_is_rejected() -> None:
    template = load(TEMPLATES[0])
    site = resource(template, "Microsoft.Web/sites")
    site["properties"]["siteConfig"]["minimumTlsVersion"] = "1.2"
    assert any(".properties.siteConfig.minimumTlsVersion: unknown property" in p for p in problems(template, "t"))


def test_an_unknown_api_version_or_type_is_rejected() -> None:
    template = load(TEMPLATES[1])
    resource(template, "Microsoft.Insights/dataCollectionRules")["apiVersion"] = "2099-01-01"
    resource(template, "Microsoft.Insights/dataCollectionEndpoints")["type"] = (
        "Microsoft.Insights/dataCollectionEndpoint"
    )
    found = problems(template, "logs-ingestion.json")
    assert any(
        "apiVersion '2099-01-01' is not a published version of Microsoft.Insights/dataCollectionRules" in p
        for p in found
    )
    assert any("unknown resource type 'Microsoft.Insights/dataCollectionEndpoint'" in p for p in found)


def test_a_missing_required_property_is_rejected() -> None:
    template = load(TEMPLATES[0])
    del resource(template, "Microsoft.Authorization/roleAssignments")["properties"]["principalId"]
    assert any(".properties.principalId: required property is missing" in p for p in problems(template, "t"))


def test_an_expression_value_is_not_descended_but_its_name_is_checked() -> None:
    template = load(TEMPLATES[0])
    site = resource(template, "Microsoft.Web/sites")
    site["properties"]["functionAppConfg"] = "[variables('functionAppConfig')]"
    assert any(".properties.functionAppConfg: unknown property" in p for p in problems(template, "t"))
