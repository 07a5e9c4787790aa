"""Static checks of the canonical CRD file against the code (names, enums, defaults, status shape).

The CEL rules are exercised against a real API server in the integration tests, not here.

Description rule: every property under ``spec`` and ``status`` has a non-empty description, at
any depth, except the fields of array items that mirror a core Kubernetes type (condition
entries, EnvVar, LocalObjectReference, tolerations): the array itself is described, its items'
fields are documented by Kubernetes. ``apiVersion``/``kind``/``metadata`` at the top are the
usual object header.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from dataclasses import MISSING, fields
from typing import Any

import pytest

from gantry_operator import catalog, gpus, planner, spec, status
from gantry_operator.catalog import ModelArch, presets

#: OpenAPI v3 and Kubernetes extension keywords a property schema may use.
KEYWORDS = {
    "type", "description", "properties", "items", "required", "enum", "default", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "pattern", "additionalProperties", "anyOf", "minItems", "maxItems", "nullable", "maxProperties",
    "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}  # fmt: skip


def walk(
    node: dict[str, Any], path: str, *, in_items: bool = False
) -> Iterator[tuple[str, Any, bool]]:
    """(path, schema, inside array items) for every property below ``node``."""
    for key, child in (node.get("properties") or {}).items():
        child_path = f"{path}.{key}"
        yield child_path, child, in_items
        if isinstance(child, dict):
            yield from walk(child, child_path, in_items=in_items)
            if isinstance(child.get("items"), dict):
                yield from walk(child["items"], child_path + "[]", in_items=True)


def prop(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    """The schema of ``.spec.gpu.type``-style paths."""
    node = schema
    for part in dotted.strip(".").split("."):
        node = node["properties"][part]
    return node


def all_properties(schema: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    return [
        *walk(schema["properties"]["spec"], ".spec"),
        *walk(schema["properties"]["status"], ".status"),
    ]


def test_names(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{spec.PLURAL}.{spec.GROUP}"
    assert crd["spec"]["group"] == spec.GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert names["kind"] == spec.KIND
    assert names["plural"] == spec.PLURAL
    assert names["singular"] == "modeldeployment"
    assert names["listKind"] == "ModelDeploymentList"
    assert names["shortNames"] == ["md", "mdep"]
    assert names["categories"] == ["gantry"]
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (spec.VERSION, True, True)


def test_every_spec_and_status_property_is_described(crd_schema: dict[str, Any]) -> None:
    missing = [
        path
        for path, node, in_items in all_properties(crd_schema)
        if not in_items
        and not (isinstance(node, dict) and str(node.get("description", "")).strip())
    ]
    assert missing == []
    for key in ("spec", "status"):
        assert crd_schema["properties"][key]["description"]
    assert crd_schema["description"]


def test_property_schemas_use_only_known_keywords(crd_schema: dict[str, Any]) -> None:
    """Catches YAML flow-mapping slips: an unquoted ", " in a description starts a new key."""
    bad = {
        path: sorted(set(node) - KEYWORDS) if isinstance(node, dict) else node
        for path, node, _ in all_properties(crd_schema)
        if not isinstance(node, dict) or set(node) - KEYWORDS
    }
    assert bad == {}


def test_descriptions_did_not_swallow_keywords(crd_schema: dict[str, Any]) -> None:
    keyword = re.compile(r", *(" + "|".join(sorted(KEYWORDS)) + r"): ")
    swallowed = [
        path
        for path, node, _ in all_properties(crd_schema)
        if keyword.search(str(node.get("description", "")))
    ]
    assert swallowed == []


def test_every_property_has_a_type(crd_schema: dict[str, Any]) -> None:
    untyped = [
        path
        for path, node, _ in all_properties(crd_schema)
        if "type" not in node
        and not node.get("x-kubernetes-int-or-string")
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert untyped == []


def test_preset_enum_is_the_catalog(crd_schema: dict[str, Any]) -> None:
    assert prop(crd_schema, ".spec.model.preset")["enum"] == list(presets())


def test_gpu_type_enum_is_the_profiles(crd_schema: dict[str, Any]) -> None:
    assert prop(crd_schema, ".spec.gpu.type")["enum"] == list(gpus.PROFILES)


def test_custom_model_fields_are_the_model_arch(crd_schema: dict[str, Any]) -> None:
    custom = prop(crd_schema, ".spec.model.custom")
    camel = {catalog._camel(f.name): f for f in fields(ModelArch)}
    assert set(custom["properties"]) == set(camel)
    required = {
        name for name, f in camel.items() if f.default is MISSING and f.default_factory is MISSING
    }
    assert set(custom["required"]) == required
    assert custom["properties"]["weightDtype"]["enum"] == list(typing.get_args(catalog.WeightDtype))
    assert custom["properties"]["attention"]["enum"] == list(typing.get_args(catalog.AttentionKind))
    assert custom["properties"]["attention"]["default"] == ModelArch.attention


def test_kv_cache_dtypes_are_ones_the_planner_sizes(crd_schema: dict[str, Any]) -> None:
    dtypes = prop(crd_schema, ".spec.serving.kvCacheDtype")["enum"]
    assert set(dtypes) <= set(catalog.KV_DTYPE_BYTES)


def test_autoscaling_metric_enum(crd_schema: dict[str, Any]) -> None:
    metric = prop(crd_schema, ".spec.autoscaling.metric")
    assert metric["enum"] == list(typing.get_args(spec.ScaleMetric))


def test_source_kinds(crd_schema: dict[str, Any]) -> None:
    source = prop(crd_schema, ".spec.source")
    assert set(source["properties"]) == {*typing.get_args(spec.SourceKind), "sha256"}


def test_defaults_agree_with_the_parser(crd_schema: dict[str, Any]) -> None:
    """The API server applies the CRD defaults; the parser must assume the same ones."""
    serving, auto = spec.Serving(), spec.Autoscaling()
    assert prop(crd_schema, ".spec.serving.targetConcurrency")["default"] == (
        serving.target_concurrency
    )
    assert prop(crd_schema, ".spec.serving.kvCacheDtype")["default"] == serving.kv_cache_dtype
    assert prop(crd_schema, ".spec.serving.shutdownTimeoutSeconds")["default"] == (
        serving.shutdown_timeout_seconds
    )
    assert prop(crd_schema, ".spec.replicas")["default"] == 1
    assert prop(crd_schema, ".spec.residency.offline")["default"] is spec.Residency().offline
    assert prop(crd_schema, ".spec.source.huggingFace.revision")["default"] == "main"
    assert prop(crd_schema, ".spec.source.image.pullPolicy")["default"] == "IfNotPresent"
    expected_auto = {
        "enabled": auto.enabled,
        "minReplicas": auto.min_replicas,
        "maxReplicas": auto.max_replicas,
        "metric": auto.metric,
        "target": auto.target,
        "scaleUpDelaySeconds": auto.scale_up_delay_seconds,
        "scaleDownDelaySeconds": auto.scale_down_delay_seconds,
        "scaleToZeroAfterSeconds": auto.scale_to_zero_after_seconds,
    }
    autoscaling = prop(crd_schema, ".spec.autoscaling")
    assert autoscaling["default"] == expected_auto
    for key, value in expected_auto.items():
        assert autoscaling["properties"][key]["default"] == value, key
    routing, expected_routing = prop(crd_schema, ".spec.routing"), spec.Routing()
    assert routing["default"] == {
        "strategy": expected_routing.strategy,
        "prefixTokens": expected_routing.prefix_tokens,
    }
    assert routing["properties"]["strategy"]["default"] == expected_routing.strategy
    assert routing["properties"]["prefixTokens"]["default"] == expected_routing.prefix_tokens


def test_name_length_rule_matches_the_parser(crd_schema: dict[str, Any]) -> None:
    rules = [v["rule"] for v in crd_schema["x-kubernetes-validations"]]
    assert f"self.metadata.name.size() <= {spec.MAX_NAME_LENGTH}" in rules


def test_validation_rules_have_messages(crd_schema: dict[str, Any]) -> None:
    def rules(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield from node.get("x-kubernetes-validations", [])
            for value in node.values():
                yield from rules(value)
        elif isinstance(node, list):
            for value in node:
                yield from rules(value)

    found = list(rules(crd_schema))
    assert len(found) >= 10
    for rule in found:
        assert set(rule) == {"rule", "message"}, rule
        assert rule["message"].startswith(("spec.", "metadata.name")), rule


def test_spec_requires_model_source_and_gpu(crd_schema: dict[str, Any]) -> None:
    assert crd_schema["properties"]["spec"]["required"] == ["model", "source", "gpu"]


def test_status_plan_matches_plan_to_status(crd_schema: dict[str, Any]) -> None:
    """status.plan has no preserve-unknown-fields: a key missing here would be pruned."""
    plan = planner.plan_request(
        planner.Request(
            model=catalog.preset("gpt-oss-20b"), gpu=gpus.profile("H100-80GB"), max_model_len=4096
        )
    )
    written = plan.to_status()
    schema = prop(crd_schema, ".status.plan")["properties"]
    assert set(schema) == set(written)
    python_type = {"string": str, "integer": int, "boolean": bool}
    for key, value in written.items():
        assert type(value) is python_type[schema[key]["type"]], key


def test_status_keys_are_in_the_schema(crd_schema: dict[str, Any]) -> None:
    obs = status.Observed(
        generation=1,
        model="m",
        problem=None,
        workload=True,
        desired=1,
        ready=1,
        updated=1,
        plan={"gpuType": "H100-80GB"},
        selector="a=b",
        endpoint="http://x",
    )
    written = status.compute({}, obs, now="2026-01-01T00:00:00Z")
    status_schema = crd_schema["properties"]["status"]
    assert set(written) <= set(status_schema["properties"])
    condition = status_schema["properties"]["conditions"]["items"]
    for cond in written["conditions"]:
        assert set(cond) <= set(condition["properties"])
        assert set(condition["required"]) <= set(cond)
        assert cond["status"] in condition["properties"]["status"]["enum"]
    assert status_schema["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_subresources(crd: dict[str, Any], crd_schema: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    sub = version["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert prop(crd_schema, ".spec.replicas")["type"] == "integer"
    assert prop(crd_schema, ".status.replicas")["type"] == "integer"
    assert prop(crd_schema, ".status.selector")["type"] == "string"


PRINTER_COLUMNS = [
    ("Model", "string", ".status.model"),
    ("GPU", "string", ".status.plan.gpuType"),
    ("GPUs", "integer", ".status.plan.gpusPerReplica"),
    ("TP", "integer", ".status.plan.tensorParallelSize"),
    ("Nodes", "integer", ".status.plan.nodesPerReplica"),
    ("Replicas", "integer", ".spec.replicas"),
    ("Ready", "integer", ".status.readyReplicas"),
    ("Phase", "string", ".status.phase"),
    ("Age", "date", ".metadata.creationTimestamp"),
    ("Endpoint", "string", ".status.endpoint"),
]


def test_printer_columns(crd: dict[str, Any], crd_schema: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    assert [(c["name"], c["type"], c["jsonPath"]) for c in columns] == PRINTER_COLUMNS
    assert [c["name"] for c in columns if c.get("priority", 0) > 0] == ["Endpoint"]
    for column in columns:
        if column["jsonPath"].startswith(".metadata."):
            continue
        assert column["description"]
        assert prop(crd_schema, column["jsonPath"])["type"] == column["type"]


@pytest.mark.parametrize("path", [".spec.serving", ".spec.autoscaling", ".spec.residency"])
def test_defaulted_objects(crd_schema: dict[str, Any], path: str) -> None:
    """Objects that CEL rules read without has() must exist, so the schema defaults them."""
    assert "default" in prop(crd_schema, path)
