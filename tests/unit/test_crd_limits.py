"""Every field of the CRD is bounded, the largest spec stays far under 256 KiB, and the CRD's
rules and the Python checks (schema.py, spec_rules.py, engine_args.py) agree."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gantry_operator import engine_args, schema, spec_rules
from gantry_operator.spec import SpecError, parse
from hack import crd_size

REPO = Path(__file__).resolve().parents[2]
SECURITY_DOC = REPO / "docs" / "security.md"
#: The annotation limit that once made large specs undeletable (kopf's diff-base annotation).
ANNOTATION_LIMIT = 256 * 1024


def _rules(node: Any) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    if isinstance(node, dict):
        found += node.get("x-kubernetes-validations", [])
        for value in node.values():
            found += _rules(value)
    elif isinstance(node, list):
        for value in node:
            found += _rules(value)
    return found


def _prop(crd_schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = crd_schema["properties"]["spec"]
    for part in dotted.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return dict(node)


def test_every_spec_field_is_bounded_and_the_largest_spec_is_far_under_the_limit() -> None:
    bound = crd_size.max_size(crd_size.spec_schema())  # raises on any unbounded field
    assert bound < ANNOTATION_LIMIT // 2


def test_the_documented_bound_is_the_computed_one() -> None:
    bound = crd_size.max_size(crd_size.spec_schema())
    assert f"{bound:,} bytes" in SECURITY_DOC.read_text(), "update docs/security.md"


def test_an_unbounded_field_is_reported() -> None:
    with pytest.raises(crd_size.UnboundedError, match="needs maxLength"):
        crd_size.max_size({"type": "object", "properties": {"a": {"type": "string"}}})
    with pytest.raises(crd_size.UnboundedError, match="preserve-unknown-fields"):
        crd_size.max_size({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    with pytest.raises(crd_size.UnboundedError, match="maxItems"):
        crd_size.max_size({"type": "array", "items": {"type": "boolean"}})


def test_char_cost() -> None:
    assert crd_size.char_cost(None) == 6
    assert crd_size.char_cost(spec_rules.LABEL_KEY) == 1
    assert crd_size.char_cost(engine_args.VALUE_PATTERN.pattern) == 2
    assert crd_size.char_cost("^[^.][^\\n]*$") == 6
    assert crd_size.char_cost("^a.b$") == 6


def test_the_packaged_crd_is_the_canonical_one() -> None:
    canonical = (REPO / "deploy" / "crds" / schema.CRD_FILE).read_text()
    packaged = REPO / "operator" / "gantry_operator" / "crds" / schema.CRD_FILE
    assert packaged.read_text() == canonical, "run `python -m hack.sync_chart`"


def test_protected_engine_flags_in_the_crd_are_the_python_list(
    crd_schema: dict[str, Any],
) -> None:
    node = _prop(crd_schema, "serving.engineArgs")
    (rule,) = [
        r["rule"] for r in node["x-kubernetes-validations"] if "replace('_', '-')" in r["rule"]
    ]
    listed = re.findall(r"'([a-z0-9-]+)'", rule.split(" in ", 1)[1])
    assert tuple(listed) == engine_args.protected_spellings()
    assert node["maxProperties"] == engine_args.MAX_ARGS
    assert node["additionalProperties"]["maxLength"] == engine_args.MAX_VALUE_LENGTH
    assert node["additionalProperties"]["pattern"] == engine_args.VALUE_PATTERN.pattern
    assert any(engine_args.CRD_KEY_PATTERN in r["rule"] for r in node["x-kubernetes-validations"])
    assert any(f"k.size() <= {engine_args.MAX_KEY_LENGTH}" in r["rule"] for r in _rules(node))


def test_python_constants_match_the_crd(crd_schema: dict[str, Any]) -> None:
    env = _prop(crd_schema, "serving.env")
    assert env["maxItems"] == spec_rules.MAX_ENV
    assert env["items"]["properties"]["value"]["maxLength"] == spec_rules.MAX_ENV_VALUE_LENGTH
    assert env["items"]["properties"]["name"]["maxLength"] == spec_rules.MAX_ENV_NAME_LENGTH
    assert env["items"]["properties"]["name"]["pattern"] == spec_rules.ENV_NAME.pattern
    assert spec_rules.RESERVED_ENV_PREFIX in " ".join(r["rule"] for r in _rules(env))
    tolerations = _prop(crd_schema, "scheduling.tolerations")
    assert tolerations["maxItems"] == spec_rules.MAX_TOLERATIONS
    props = tolerations["items"]["properties"]
    assert tuple(props["operator"]["enum"]) == spec_rules.TOLERATION_OPERATORS
    assert tuple(e for e in props["effect"]["enum"] if e) == spec_rules.TOLERATION_EFFECTS
    selector = _prop(crd_schema, "scheduling.nodeSelector")
    assert selector["maxProperties"] == spec_rules.MAX_NODE_SELECTOR
    assert spec_rules.LABEL_KEY in selector["x-kubernetes-validations"][0]["rule"]
    assert (
        f"k.size() <= {spec_rules.MAX_LABEL_KEY_LENGTH}"
        in (selector["x-kubernetes-validations"][0]["rule"])
    )
    for kind in ("requests", "limits"):
        resources = _prop(crd_schema, f"runtime.resources.{kind}")
        assert resources["maxProperties"] == spec_rules.MAX_RESOURCES
        assert resources["additionalProperties"]["pattern"] == spec_rules.QUANTITY
        rules = " ".join(r["rule"] for r in resources["x-kubernetes-validations"])
        for prefix in spec_rules.ACCELERATOR_PREFIXES:
            assert f"startsWith('{prefix}')" in rules
    assert _prop(crd_schema, "runtime.shmSize")["pattern"] == spec_rules.SHM_SIZE


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"runtime": {"resources": {"requests": {"cpu": "lots"}}}}, "requests.cpu"),
        ({"runtime": {"resources": {"limits": {"memory": "-1Gi"}}}}, "limits.memory"),
        ({"runtime": {"resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}}}, "mig"),
        ({"runtime": {"resources": {"requests": {"amd.com/gpu": 1}}}}, "amd.com/gpu"),
        ({"runtime": {"shmSize": "16G"}}, "spec.runtime.shmSize"),
        ({"runtime": {"image": "a b"}}, "spec.runtime.image"),
        ({"scheduling": {"tolerations": [{"key": "a", "operator": "Bogus"}]}}, "operator"),
        ({"scheduling": {"tolerations": [{"key": "a", "effect": "Sometimes"}]}}, "effect"),
        ({"scheduling": {"tolerations": [{"operator": "Exists", "foo": 1}]}}, "tolerations[0]"),
        ({"scheduling": {"nodeSelector": {"bad key": "x"}}}, "nodeSelector.bad key"),
        ({"scheduling": {"nodeSelector": {"pool": "not ok"}}}, "nodeSelector.pool"),
        ({"scheduling": {"affinity": {"podAffinity": {"x": 1}}}}, "affinity.podAffinity.x"),
        ({"serving": {"env": [{"name": "GANTRY_X", "value": "1"}]}}, "env[GANTRY_X]"),
        ({"serving": {"env": [{"name": "A", "value": "x" * 257}]}}, "env[0].value"),
        ({"serving": {"env": [{"name": f"V{i}", "value": "1"} for i in range(13)]}}, "env"),
        ({"serving": {"engineArgs": {"seed": 7}}}, "engineArgs.seed"),
        ({"source": {"pvc": {"claimName": "m"}, "sha256": {"../x": "a" * 64}}}, "sha256"),
        ({"residency": {"regions": ["eu west"]}}, "spec.residency.regions[0]"),
    ],
)
def test_parse_refuses_what_the_crd_refuses(
    spec_dict: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    spec_dict.update(change)
    with pytest.raises(SpecError) as info:
        parse("md", "ns", spec_dict)
    assert field in str(info.value)


def test_the_largest_spec_fits_the_schema_and_the_bound() -> None:
    spec = crd_size.largest_spec()
    schema.validate(spec)
    size = len(json.dumps(spec, separators=(",", ":")))
    assert 0.75 * crd_size.max_size(crd_size.spec_schema()) < size
    assert size <= crd_size.max_size(crd_size.spec_schema())
