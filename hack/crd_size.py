"""An upper bound on the size of the largest ``.spec`` the ModelDeployment CRD accepts.

    python -m hack.crd_size            # prints the bound in bytes and KiB, by top-level field

The bound is computed from the schema alone: every property present, every list at maxItems,
every map at maxProperties with keys at the length a CEL rule ``k.size() <= N`` allows (6 bytes
a character, 1 when a rule ``k.matches(...)`` restricts them to an ASCII pattern), every string
at maxLength, serialized as compact JSON. A string costs its quotes plus, per character, what
``char_cost`` says its pattern lets through: 1 byte for ASCII classes without '"' and '\\', 2 for
printable ASCII ('"' and '\\' escape to two bytes), 6 otherwise (a control character escaped as
``\\u00XX``; more than the 4 bytes of any UTF-8 character). Integers cost
their widest bound (20 characters without ``maximum``), numbers 24, booleans 5. A field the bound
cannot cover (a string without maxLength or enum, a list without maxItems, a map without
maxProperties or a key-length rule, preserve-unknown-fields) is an error: the unit test
``tests/unit/test_crd_limits.py`` keeps every field bounded and the total under the limit it
documents in docs/security.md.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "deploy" / "crds" / "gantry.dev_modeldeployments.yaml"
KEY_RULE = re.compile(r"k\.size\(\) <= (\d+)")
INT64 = 20
NUMBER = 24


class UnboundedError(ValueError):
    pass


def spec_schema(path: Path = CRD) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _key_bound(node: dict[str, Any], where: str) -> int:
    for rule in node.get("x-kubernetes-validations", ()):
        match = KEY_RULE.search(rule["rule"])
        if match:
            return int(match.group(1))
    raise UnboundedError(f"{where}: a map needs a CEL rule bounding its keys (k.size() <= N)")


def _string(node: dict[str, Any], where: str) -> int:
    if "enum" in node:
        return max(len(json.dumps(value)) for value in node["enum"])
    if "maxLength" not in node:
        raise UnboundedError(f"{where}: a string needs maxLength or enum")
    return 2 + char_cost(node.get("pattern")) * int(node["maxLength"])


def char_cost(pattern: str | None) -> int:
    """Worst JSON bytes per character a pattern lets through: 1 when every character class is
    ASCII without '"' and '\\' (nothing to escape), 2 when a class allows '"' or '\\' (escaped
    as two bytes), 6 otherwise (a wildcard, a negated class, a class with control or non-ASCII
    characters: ``\\u00XX``)."""
    if pattern is None or "[^" in pattern or re.search(r"\\[sSwWdD]", pattern):
        return 6
    classes = re.findall(r"\[(?:\\.|[^\]])*\]", pattern)
    if "." in re.sub(r"\\.", "", re.sub(r"\[(?:\\.|[^\]])*\]", "", pattern)):
        return 6  # a wildcard outside a character class
    cost = 1
    for chars in classes:
        allowed = re.compile(chars)
        if any(allowed.match(c) for c in ("\x00", "\x1f", "\x7f", "\u00e9", "\u2028")):
            return 6
        if allowed.match('"') or allowed.match("\\"):
            cost = 2
    return cost


def _integer(node: dict[str, Any]) -> int:
    if "maximum" in node and "minimum" in node:
        return max(len(str(int(node["maximum"]))), len(str(int(node["minimum"]))))
    return INT64


def max_size(node: dict[str, Any], where: str = ".spec") -> int:
    """Upper bound, in bytes, of ``node`` serialized as compact JSON."""
    if node.get("x-kubernetes-int-or-string"):
        return max(INT64, _string({k: v for k, v in node.items() if k != "anyOf"}, where))
    kind = node.get("type")
    if kind == "string":
        return _string(node, where)
    if kind == "integer":
        return _integer(node)
    if kind == "number":
        return NUMBER
    if kind == "boolean":
        return 5
    if kind == "array":
        if "maxItems" not in node:
            raise UnboundedError(f"{where}: a list needs maxItems")
        count = int(node["maxItems"])
        return 2 + count * max_size(node["items"], f"{where}[]") + max(0, count - 1)
    if kind == "object":
        if node.get("x-kubernetes-preserve-unknown-fields"):
            raise UnboundedError(f"{where}: preserve-unknown-fields has no size bound")
        properties: dict[str, Any] = node.get("properties") or {}
        if properties:
            fields = [
                len(json.dumps(key)) + 1 + max_size(child, f"{where}.{key}")
                for key, child in properties.items()
            ]
            return 2 + sum(fields) + len(fields) - 1
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            if "maxProperties" not in node:
                raise UnboundedError(f"{where}: a map needs maxProperties")
            count = int(node["maxProperties"])
            rules = " ".join(r["rule"] for r in node.get("x-kubernetes-validations", ()))
            key = 2 + (1 if "k.matches(" in rules else 6) * _key_bound(node, where)
            value = max_size(extra, f"{where}.*")
            return 2 + count * (key + 1 + value) + max(0, count - 1)
        return 2
    raise UnboundedError(f"{where}: unknown type {kind!r}")


def breakdown(schema: dict[str, Any]) -> dict[str, int]:
    return {key: max_size(child, f".spec.{key}") for key, child in schema["properties"].items()}


def main() -> int:
    schema = spec_schema()
    for key, size in sorted(breakdown(schema).items(), key=lambda kv: -kv[1]):
        print(f"{key:14} {size:>8,} bytes")
    total = max_size(schema)
    print(f"{'total':14} {total:>8,} bytes = {total / 1024:.1f} KiB (.spec, compact JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- the largest spec itself -----------------------------------------------------------------------


def _candidates(length: int) -> list[str]:
    """Strings of ``length`` characters, the most expensive to serialize first."""
    half = max(1, length // 2)
    return [
        '"' * length,
        "https://" + '"' * (length - 8),
        "a" * (length - 64) + "/" + "a" * 63,
        "a" * half + "/" + "a" * (length - half - 1),
        "1" * (length - 2) + ".1",
        "9" * (length - 2) + "Gi",
        "9" * length,
        "a" * length,
    ]


def _largest_string(node: dict[str, Any], where: str) -> str:
    if "enum" in node:
        return str(max(node["enum"], key=lambda v: len(json.dumps(v))))
    pattern = node.get("pattern")
    for length in range(int(node["maxLength"]), 0, -1):
        for text in _candidates(length):
            if len(text) == length and (pattern is None or re.search(pattern, text)):
                return text
    raise UnboundedError(f"{where}: no string matches {pattern}")


def _unique(text: str, index: int) -> str:
    """``text`` with its last characters replaced by ``index`` (keys and set items)."""
    suffix = f"{index:04d}"
    return text[: len(text) - len(suffix)] + suffix


def _largest(node: dict[str, Any], where: str) -> Any:
    if node.get("x-kubernetes-int-or-string"):
        return _largest_string({k: v for k, v in node.items() if k != "anyOf"}, where)
    kind = node.get("type")
    if kind == "string":
        return _largest_string(node, where)
    if kind == "integer":
        return int(node.get("maximum", 2**63 - 1))
    if kind == "number":
        return float(node.get("maximum", 1.2345678901234567e300))
    if kind == "boolean":
        return False
    if kind == "array":
        item = node["items"]
        values = [_largest(item, f"{where}[]") for _ in range(int(node["maxItems"]))]
        if node.get("x-kubernetes-list-type") == "set":
            values = [_unique(v, i) for i, v in enumerate(values)]
        return values
    properties: dict[str, Any] = node.get("properties") or {}
    if properties:
        return {key: _largest(child, f"{where}.{key}") for key, child in properties.items()}
    extra = node["additionalProperties"]
    limit = _key_bound(node, where)
    rules = [r["rule"] for r in node.get("x-kubernetes-validations", ())]
    match = next((m for r in rules if (m := re.search(r"k\.matches\('(.*?)'\)", r))), None)
    key = _largest_string({"maxLength": limit, "pattern": match.group(1) if match else None}, where)
    return {
        _unique(key.replace('"', "a"), i): _largest(extra, f"{where}.*")
        for i in range(int(node["maxProperties"]))
    }


def largest_spec() -> dict[str, Any]:
    """A spec at (nearly) the bound that the CRD accepts: every field at its maximum, with the
    choices its CEL rules force made (one weight source, a custom model, consistent parallel
    sizes, env entries with a value rather than a valueFrom)."""
    spec: dict[str, Any] = _largest(spec_schema(), ".spec")
    del spec["model"]["preset"]
    custom = spec["model"]["custom"]
    custom["attention"] = "gqa"
    custom["slidingLayers"] = custom["numLayers"] - 1
    custom["numKvHeads"] = custom["numAttentionHeads"]
    source = spec["source"]
    for kind in ("pvc", "image", "huggingFace"):
        del source[kind]
    spec["gpu"]["count"] = spec["parallelism"]["tensor"] * 2
    spec["parallelism"]["pipeline"] = 2
    spec["autoscaling"]["metric"] = "queueDepth"
    spec["autoscaling"]["minReplicas"] = spec["autoscaling"]["maxReplicas"] = spec["replicas"]
    spec["residency"]["offline"] = True
    for index, entry in enumerate(spec["serving"]["env"]):
        del entry["valueFrom"]
        entry["name"] = _unique(entry["name"], index)
    for toleration in spec["scheduling"]["tolerations"]:
        toleration.update(operator="Equal", effect="NoExecute")
    return spec
