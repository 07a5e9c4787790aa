"""The CRD's OpenAPI schema for ``.spec``, enforced again in Python.

The API server checks a ModelDeployment against ``deploy/crds/gantry.dev_modeldeployments.yaml``
before Gantry ever sees it; ``gantry plan`` / ``gantry render`` read manifests from files, and a
spec can reach the operator from an older CRD. This module checks a spec against a packaged,
byte-identical copy of that CRD (``crds/``, kept in sync by ``python -m hack.sync_chart``), so the
CLI and the operator refuse what the API server refuses: types, enums, required fields, unknown
fields, bounds, string lengths and patterns, list and map sizes. The CEL rules are repeated by
hand where they matter for safety (engine_args.py, spec_rules.py).

Pure: no Kubernetes client, no kopf.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import yaml

from gantry_operator import spec_rules

CRD_FILE = "gantry.dev_modeldeployments.yaml"

#: Patterns with a name a person recognises, for the messages.
_PATTERN_NAMES = {
    spec_rules.QUANTITY: "a Kubernetes quantity such as 8, 500m or 64Gi",
    spec_rules.LABEL_KEY: "a label key such as example.com/pool",
    spec_rules.LABEL_VALUE: "a label value (letters, digits, '-', '_', '.')",
    "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$": "a lowercase DNS name",
    "^[!-~]+$": "printable ASCII without spaces",
    "^[ -~]*$": "printable ASCII",
}


_KEY_RULE = re.compile(r"k\.size\(\) <= (\d+) && k\.matches\('(.*)'\)\)$")


class SchemaError(ValueError):
    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path


@cache
def spec_schema() -> Mapping[str, Any]:
    """The ``.spec`` schema of the packaged CRD."""
    text = resources.files("gantry_operator.crds").joinpath(CRD_FILE).read_text()
    crd = yaml.safe_load(text)
    (version,) = crd["spec"]["versions"]
    schema: Mapping[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def validate(spec: Mapping[str, Any]) -> None:
    """Raise SchemaError naming the first field of ``spec`` the CRD schema refuses."""
    _check(spec, spec_schema(), "spec")


def _explain(path: str) -> str:
    dotted = re.sub(r"\[[^\]]*\]", "", path)
    return f"see `kubectl explain md.{dotted}`"


def _type_ok(value: Any, node: Mapping[str, Any]) -> bool:
    if node.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    kind = node.get("type")
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list | tuple)
    if kind == "object":
        return isinstance(value, Mapping)
    return True


def _check(value: Any, node: Mapping[str, Any], path: str) -> None:
    if value is None and node.get("nullable"):
        return
    if not _type_ok(value, node):
        kind = "an integer or a string" if node.get("x-kubernetes-int-or-string") else None
        wanted = kind or {"object": "a mapping", "array": "a list"}.get(
            str(node.get("type")), f"a {node.get('type')}"
        )
        raise SchemaError(path, f"must be {wanted}; {_explain(path)}")
    if "enum" in node and value not in node["enum"]:
        choices = ", ".join(str(v) for v in node["enum"] if v != "")
        raise SchemaError(path, f"{value!r} is not valid: use one of {choices}")
    if isinstance(value, str):
        _check_string(value, node, path)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, node, path)
    elif isinstance(value, list | tuple):
        if "maxItems" in node and len(value) > node["maxItems"]:
            raise SchemaError(path, f"has {len(value)} entries; at most {node['maxItems']}")
        if "minItems" in node and len(value) < node["minItems"]:
            raise SchemaError(path, f"needs at least {node['minItems']} entries")
        for index, item in enumerate(value):
            _check(item, node.get("items", {}), f"{path}[{index}]")
    elif isinstance(value, Mapping):
        _check_object(value, node, path)


def _check_string(value: str, node: Mapping[str, Any], path: str) -> None:
    if "maxLength" in node and len(value) > node["maxLength"]:
        raise SchemaError(path, f"is {len(value)} characters; at most {node['maxLength']}")
    if "minLength" in node and len(value) < node["minLength"]:
        raise SchemaError(path, f"needs at least {node['minLength']} characters")
    pattern = node.get("pattern")
    if pattern and not re.search(pattern, value):
        wanted = _PATTERN_NAMES.get(pattern, f"a value matching {pattern}")
        raise SchemaError(path, f"{value[:64]!r} is not valid: use {wanted}")


def _check_number(value: float, node: Mapping[str, Any], path: str) -> None:
    low, high = node.get("minimum"), node.get("maximum")
    exclusive = bool(node.get("exclusiveMinimum"))
    if low is not None and (value < low or (exclusive and value == low)):
        raise SchemaError(path, f"{value} is below the minimum {low}")
    if high is not None and value > high:
        raise SchemaError(path, f"{value} is above the maximum {high}")


def _check_object(value: Mapping[str, Any], node: Mapping[str, Any], path: str) -> None:
    if "maxProperties" in node and len(value) > node["maxProperties"]:
        raise SchemaError(path, f"has {len(value)} entries; at most {node['maxProperties']}")
    for key in node.get("required", ()):
        if key not in value:
            raise SchemaError(f"{path}.{key}", f"is required; {_explain(path)}")
    for rule in node.get("x-kubernetes-validations", ()):
        # Key rules of maps, written as `self.all(k, k.size() <= N && k.matches('P'))`.
        match = _KEY_RULE.search(rule["rule"])
        if match:
            limit, pattern = int(match.group(1)), match.group(2)
            for key in value:
                if len(key) > limit or not re.search(pattern, key):
                    raise SchemaError(f"{path}.{key}", f"is not a valid key: {rule['message']}")
    properties: Mapping[str, Any] = node.get("properties") or {}
    extra = node.get("additionalProperties")
    for key, child in value.items():
        where = f"{path}.{key}"
        if key in properties:
            _check(child, properties[key], where)
        elif isinstance(extra, Mapping):
            _check(child, extra, where)
        elif not node.get("x-kubernetes-preserve-unknown-fields"):
            known = ", ".join(properties) or "none"
            raise SchemaError(where, f"is not a field here (known: {known}); {_explain(path)}")
