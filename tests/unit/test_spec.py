"""Parsing a ModelDeployment spec: defaults, and every SpecError naming its field."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from gantry_operator.catalog import preset
from gantry_operator.spec import (
    DEFAULT_RUNTIME_IMAGE,
    MAX_NAME_LENGTH,
    Autoscaling,
    Parallelism,
    Residency,
    Routing,
    Runtime,
    Scheduling,
    Serving,
    Source,
    SpecError,
    parse,
)
from tests.unit.conftest import CRD_PATH

CUSTOM = {
    "name": "my-llama",
    "repo": "example/my-llama",
    "architecture": "LlamaForCausalLM",
    "numLayers": 32,
    "hiddenSize": 4096,
    "numAttentionHeads": 32,
    "numKvHeads": 8,
    "headDim": 128,
    "maxContext": 8192,
    "weightBytes": 16_060_522_496,
    "weightDtype": "bf16",
    "slidingLayers": 0,
    "moeIntermediateSize": 14336,
    "fp8BlockSize": 0,
    "totalParamsB": 8.0,
    "toolCallParser": "llama3_json",
    "trustRemoteCode": False,
    "minComputeCapability": "8.6",
}


def spec_error(spec: dict[str, Any], name: str = "md") -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(name, "ns", spec)
    return info.value


def test_defaults(spec_dict: dict[str, Any]) -> None:
    s = parse("md", "ns", spec_dict)
    assert (s.name, s.namespace) == ("md", "ns")
    assert s.model == preset("gpt-oss-20b")
    assert s.preset == "gpt-oss-20b"
    assert s.served_model_name == "gpt-oss-20b"
    assert s.source == Source("pvc", claim_name="models")
    assert (s.gpu.type, s.gpu.count, s.gpu.per_node) == ("H100-80GB", None, None)
    assert s.gpu.gpus_per_node == 8
    assert s.parallelism == Parallelism()
    assert s.serving == Serving()
    assert s.serving.target_concurrency == 1
    assert s.serving.kv_cache_dtype == "auto"
    assert s.serving.shutdown_timeout_seconds == 60
    assert s.max_context_length == 131072  # the model's maximum
    assert s.replicas == 1
    assert s.autoscaling == Autoscaling()
    assert (s.autoscaling.enabled, s.autoscaling.min_replicas, s.autoscaling.max_replicas) == (
        False,
        1,
        1,
    )
    assert s.scheduling == Scheduling()
    assert s.residency == Residency(regions=(), offline=True)
    assert s.runtime == Runtime()
    assert s.runtime.image == DEFAULT_RUNTIME_IMAGE


def test_the_examples_parse(examples: dict[str, dict[str, Any]]) -> None:
    big = parse("gpt-oss-120b", "ns", examples["gpt-oss-120b"]["spec"])
    assert big.source == Source("pvc", claim_name="models", path="openai/gpt-oss-120b")
    assert (big.serving.max_context_length, big.serving.target_concurrency) == (131072, 4)
    assert big.serving.engine_args == (("enable-prefix-caching", "false"),)
    assert big.residency == Residency(regions=("eu-west-1",), offline=True)
    small = parse("gpt-oss-20b", "ns", examples["gpt-oss-20b"]["spec"])
    assert small.source.kind == "image"
    assert small.source.reference == "registry.internal.example/models/gpt-oss-20b:2025-08-05"
    assert small.replicas == 2
    assert small.max_context_length == 65536


def test_name_length_limit(spec_dict: dict[str, Any]) -> None:
    parse("a" * MAX_NAME_LENGTH, "ns", spec_dict)
    err = spec_error(spec_dict, name="a" * (MAX_NAME_LENGTH + 1))
    assert err.field_path == "metadata.name"
    assert str(err) == f"metadata.name: is 53 characters; use at most {MAX_NAME_LENGTH}"


@pytest.mark.parametrize("model", [{}, {"preset": "gpt-oss-20b", "custom": CUSTOM}])
def test_model_needs_exactly_one_of_preset_or_custom(
    spec_dict: dict[str, Any], model: dict[str, Any]
) -> None:
    spec_dict["model"] = model
    err = spec_error(spec_dict)
    assert err.field_path == "spec.model"
    assert "exactly one of preset" in str(err)


def test_unknown_preset(spec_dict: dict[str, Any]) -> None:
    spec_dict["model"] = {"preset": "llama-9000"}
    err = spec_error(spec_dict)
    assert err.field_path == "spec.model.preset"
    assert "'llama-9000' is not valid: use one of gpt-oss-120b, gpt-oss-20b" in str(err)


def test_custom_model_from_camel_case(spec_dict: dict[str, Any]) -> None:
    spec_dict["model"] = {"custom": CUSTOM}
    s = parse("llama", "ns", spec_dict)
    m = s.model
    assert s.preset is None
    assert s.served_model_name == "llama"  # metadata.name for custom models
    assert (m.name, m.repo, m.architecture) == ("my-llama", "example/my-llama", "LlamaForCausalLM")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (32, 4096, 32)
    assert (m.num_kv_heads, m.head_dim, m.max_context) == (8, 128, 8192)
    assert (m.weight_bytes, m.weight_dtype) == (16_060_522_496, "bf16")
    assert (m.moe_intermediate_size, m.fp8_block_size, m.total_params_b) == (14336, 0, 8.0)
    assert (m.tool_call_parser, m.trust_remote_code) == ("llama3_json", False)
    assert m.min_compute_capability == (8, 6)
    assert m.attention == "gqa"  # default
    assert s.max_context_length == 8192


def test_served_name_overrides_the_default(spec_dict: dict[str, Any]) -> None:
    spec_dict["model"]["servedName"] = "openai/gpt-oss-20b"
    assert parse("md", "ns", spec_dict).served_model_name == "openai/gpt-oss-20b"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"numLayerz": 3}, "unknown model field 'numLayerz'"),
        ({"hiddenSize": None}, "hidden_size"),  # None drops it: a required field is missing
    ],
)
def test_bad_custom_model(spec_dict: dict[str, Any], change: dict[str, Any], fragment: str) -> None:
    custom = {**CUSTOM, **change}
    custom = {k: v for k, v in custom.items() if v is not None}
    spec_dict["model"] = {"custom": custom}
    err = spec_error(spec_dict)
    assert err.field_path == "spec.model.custom"
    assert fragment in str(err)
    assert "kubectl explain md.spec.model.custom" in str(err)


@pytest.mark.parametrize("gpu", [{}, {"type": "RTX-4090"}])
def test_gpu_type_required_and_known(spec_dict: dict[str, Any], gpu: dict[str, Any]) -> None:
    spec_dict["gpu"] = gpu
    err = spec_error(spec_dict)
    assert err.field_path == "spec.gpu.type"
    assert "H100-80GB" in str(err)  # lists the choices


def test_gpu_count_and_per_node(spec_dict: dict[str, Any]) -> None:
    spec_dict["gpu"] = {"type": "L4", "count": 4, "perNode": 2}
    s = parse("md", "ns", spec_dict)
    assert (s.gpu.count, s.gpu.per_node, s.gpu.gpus_per_node) == (4, 2, 2)
    spec_dict["gpu"] = {"type": "L4"}
    assert parse("md", "ns", spec_dict).gpu.gpus_per_node == 8  # the profile's default


@pytest.mark.parametrize(
    "source",
    [
        {},
        {"sha256": {"a": "0" * 64}},
        {"pvc": {"claimName": "m"}, "s3": {"endpoint": "http://s3", "bucket": "bkt"}},
    ],
)
def test_source_needs_exactly_one_kind(spec_dict: dict[str, Any], source: dict[str, Any]) -> None:
    spec_dict["source"] = source
    err = spec_error(spec_dict)
    assert err.field_path == "spec.source"
    assert "exactly one of pvc, s3, image or huggingFace" in str(err)


def test_hugging_face_is_forbidden_while_offline(spec_dict: dict[str, Any]) -> None:
    spec_dict["source"] = {"huggingFace": {"repo": "openai/gpt-oss-20b"}}
    err = spec_error(spec_dict)
    assert err.field_path == "spec.source.huggingFace"
    assert "spec.residency.offline=false" in str(err)
    spec_dict["residency"] = {"offline": True}
    assert spec_error(spec_dict).field_path == "spec.source.huggingFace"


def test_hugging_face_online(spec_dict: dict[str, Any]) -> None:
    spec_dict["source"] = {"huggingFace": {"repo": "openai/gpt-oss-20b", "tokenSecret": "hf"}}
    spec_dict["residency"] = {"offline": False}
    s = parse("md", "ns", spec_dict)
    assert s.source == Source(
        "huggingFace", repo="openai/gpt-oss-20b", revision="main", token_secret="hf"
    )
    assert s.residency.offline is False


def test_source_kinds_and_their_defaults(spec_dict: dict[str, Any]) -> None:
    spec_dict["source"] = {
        "s3": {
            "endpoint": "http://minio.storage.svc:9000",
            "bucket": "models",
            "prefix": "/openai/gpt-oss-20b/",
            "credentialsSecret": "s3-creds",
        },
        "sha256": {"model-00001.safetensors": "ab" * 32, "config.json": "cd" * 32},
    }
    s3 = parse("md", "ns", spec_dict).source
    assert (s3.kind, s3.endpoint, s3.bucket) == ("s3", "http://minio.storage.svc:9000", "models")
    assert (s3.prefix, s3.region, s3.credentials_secret) == ("openai/gpt-oss-20b", "", "s3-creds")
    assert s3.sha256 == (("config.json", "cd" * 32), ("model-00001.safetensors", "ab" * 32))
    spec_dict["source"] = {"image": {"reference": "reg/m:1", "path": "/weights/"}}
    image = parse("md", "ns", spec_dict).source
    assert (image.reference, image.path, image.pull_policy) == (
        "reg/m:1",
        "weights",
        "IfNotPresent",
    )
    spec_dict["source"] = {"pvc": {"claimName": "m", "path": "/a/b/"}}
    assert parse("md", "ns", spec_dict).source.path == "a/b"


def test_max_context_above_the_model_maximum(spec_dict: dict[str, Any]) -> None:
    spec_dict["serving"] = {"maxContextLength": 131073}
    err = spec_error(spec_dict)
    assert err.field_path == "spec.serving.maxContextLength"
    assert "131073 exceeds gpt-oss-20b's maximum context of 131072" in str(err)
    spec_dict["serving"] = {"maxContextLength": 131072}
    assert parse("md", "ns", spec_dict).max_context_length == 131072


def test_autoscaling_bounds(spec_dict: dict[str, Any]) -> None:
    spec_dict["autoscaling"] = {"enabled": True, "minReplicas": 3, "maxReplicas": 2}
    err = spec_error(spec_dict)
    assert err.field_path == "spec.autoscaling"
    assert "minReplicas 3 exceeds maxReplicas 2" in str(err)
    spec_dict["autoscaling"] = {"enabled": True, "minReplicas": 2}
    auto = parse("md", "ns", spec_dict).autoscaling
    assert (auto.min_replicas, auto.max_replicas) == (2, 2)  # max defaults to at least min


def test_scale_to_zero_and_routing(spec_dict: dict[str, Any]) -> None:
    spec_dict["replicas"] = 0
    spec_dict["autoscaling"] = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 3,
        "scaleToZeroAfterSeconds": 120,
    }
    spec_dict["routing"] = {"strategy": "PrefixAffinity", "prefixTokens": 512}
    parsed = parse("md", "ns", spec_dict)
    assert (parsed.replicas, parsed.autoscaling.min_replicas) == (0, 0)
    assert parsed.autoscaling.scale_to_zero_after_seconds == 120
    assert parsed.routing == Routing(strategy="PrefixAffinity", prefix_tokens=512)
    spec_dict["routing"] = {"strategy": "RoundRobin"}
    err = spec_error(spec_dict)
    assert err.field_path == "spec.routing.strategy"
    assert "LeastOutstanding" in str(err)
    assert "PrefixAffinity" in str(err)
    spec_dict["routing"] = {}
    spec_dict["autoscaling"]["scaleToZeroAfterSeconds"] = 5
    err = spec_error(spec_dict)
    assert err.field_path == "spec.autoscaling.scaleToZeroAfterSeconds"


@pytest.mark.parametrize(
    ("flag", "raw", "field", "value"),
    [
        ("max-num-seqs", "64", "max_num_seqs", 64),
        ("gpu-memory-utilization", "0.85", "gpu_memory_utilization", 0.85),
        ("max-num-batched-tokens", "4096", "max_num_batched_tokens", 4096),
        ("kv-cache-dtype", "fp8", "kv_cache_dtype", "fp8"),
    ],
)
def test_planner_flags_in_engine_args_are_folded(
    spec_dict: dict[str, Any], flag: str, raw: str, field: str, value: object
) -> None:
    spec_dict["serving"] = {"engineArgs": {flag: raw, "enable-prefix-caching": "false"}}
    serving = parse("md", "ns", spec_dict).serving
    assert getattr(serving, field) == value
    assert serving.engine_args == (("enable-prefix-caching", "false"),)  # folded flag removed


@pytest.mark.parametrize(
    ("flag", "raw", "key", "same", "other"),
    [
        ("max-num-seqs", "64", "maxNumSeqs", 64, 32),
        ("gpu-memory-utilization", "0.85", "gpuMemoryUtilization", 0.85, 0.9),
        ("max-num-batched-tokens", "4096", "maxNumBatchedTokens", 4096, 8192),
        ("kv-cache-dtype", "fp8", "kvCacheDtype", "fp8", "auto"),
    ],
)
def test_engine_args_conflicting_with_serving_fields(
    spec_dict: dict[str, Any], flag: str, raw: str, key: str, same: object, other: object
) -> None:
    spec_dict["serving"] = {"engineArgs": {flag: raw}, key: same}
    parse("md", "ns", spec_dict)  # agreeing values are fine
    spec_dict["serving"][key] = other
    err = spec_error(spec_dict)
    assert err.field_path == f"spec.serving.engineArgs.{flag}"
    assert f"set only spec.serving.{key}" in str(err)


@pytest.mark.parametrize(
    ("flag", "raw"),
    [
        ("max-num-seqs", "lots"),
        ("max-num-seqs", "8.5"),
        ("max-num-seqs", "0"),
        ("gpu-memory-utilization", "most"),
        ("gpu-memory-utilization", "1.5"),
        ("gpu-memory-utilization", "nan"),
        ("max-num-batched-tokens", "16"),
        ("kv-cache-dtype", "int3"),
        ("kv-cache-dtype", "fp8_e5m2"),  # valid for vLLM, but the planner knows no size for it
    ],
)
def test_bad_engine_arg_values(spec_dict: dict[str, Any], flag: str, raw: str) -> None:
    spec_dict["serving"] = {"engineArgs": {flag: raw}}
    err = spec_error(spec_dict)
    assert err.field_path == f"spec.serving.engineArgs.{flag}"
    assert f"{raw!r} is not valid: use " in str(err)


def test_engine_args_and_env_are_sorted(spec_dict: dict[str, Any]) -> None:
    spec_dict["serving"] = {
        "engineArgs": {"enforce_eager": "true", "async-scheduling": "false", "seed": "7"},
        "env": [{"name": "ZED", "value": "1"}, {"name": "ALPHA", "value": "2"}],
    }
    serving = parse("md", "ns", spec_dict).serving
    assert serving.engine_args == (
        ("async-scheduling", "false"),
        ("enforce-eager", "true"),
        ("seed", "7"),
    )
    assert [e["name"] for e in serving.env] == ["ALPHA", "ZED"]


def test_scheduling_and_runtime(spec_dict: dict[str, Any]) -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
    spec_dict["scheduling"] = {
        "nodeSelector": {"zone": "b", "pool": "gpu"},
        "tolerations": [toleration],
        "priorityClassName": "llm-critical",
    }
    spec_dict["runtime"] = {
        "image": "registry.internal/gantry-runtime:1",
        "imagePullPolicy": "Always",
        "imagePullSecrets": [{"name": "pull"}],
        "shmSize": "8Gi",
        "resources": {"requests": {"cpu": 4, "memory": "64Gi"}, "limits": {"cpu": "8"}},
    }
    s = parse("md", "ns", spec_dict)
    assert s.scheduling.node_selector == (("pool", "gpu"), ("zone", "b"))
    assert s.scheduling.tolerations == (toleration,)
    assert s.scheduling.priority_class_name == "llm-critical"
    assert s.runtime == Runtime(
        image="registry.internal/gantry-runtime:1",
        image_pull_policy="Always",
        requests=(("cpu", "4"), ("memory", "64Gi")),
        limits=(("cpu", "8"),),
        shm_size="8Gi",
        image_pull_secrets=("pull",),
    )


def test_parsed_spec_is_frozen(spec_dict: dict[str, Any]) -> None:
    s = parse("md", "ns", spec_dict)
    with pytest.raises(AttributeError):
        s.replicas = 3  # type: ignore[misc]


def test_spec_error_message_starts_with_the_field() -> None:
    err = SpecError("spec.gpu.type", "is required")
    assert (str(err), err.field_path) == ("spec.gpu.type: is required", "spec.gpu.type")
    assert isinstance(err, ValueError)


# --- the CRD's bounds, enforced again -----------------------------------------------------------

#: Keywords of a scalar bound in the CRD schema.
BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "enum", "minLength", "maxLength", "pattern")


def crd_bounds(node: dict[str, Any], path: str = "") -> dict[str, dict[str, Any]]:
    """Every bounded scalar below ``node`` by spec-relative path (``[]`` items, ``*`` values)."""
    found: dict[str, dict[str, Any]] = {}
    if any(k in node for k in BOUND_KEYS) and node.get("type") in ("integer", "number", "string"):
        found[path] = {k: node[k] for k in BOUND_KEYS if k in node} | {"type": node["type"]}
    for key, child in (node.get("properties") or {}).items():
        found |= crd_bounds(child, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        found |= crd_bounds(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found |= crd_bounds(node["additionalProperties"], f"{path}.*")
    return found


@pytest.fixture(scope="module")
def spec_bounds(crd_schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return crd_bounds(crd_schema["properties"]["spec"])


def _violation(crd: dict[str, Any]) -> Any:
    """A value the CRD bound ``crd`` refuses."""
    if "enum" in crd:
        return "bogus"
    if crd["type"] == "integer":
        return crd["minimum"] - 1 if "maximum" not in crd else crd["maximum"] + 1
    if crd["type"] == "number":
        if crd.get("exclusiveMinimum"):
            return crd["minimum"]
        return crd["maximum"] + 0.5 if "maximum" in crd else crd["minimum"] - 1
    if "maxLength" in crd:
        return "a" * (crd["maxLength"] + 1)
    if "minLength" in crd and "pattern" not in crd:
        return ""
    return next(v for v in (".x", "ftp://x", "a b", "9") if not re.search(crd["pattern"], v))


def _with(spec: dict[str, Any], path: str, value: Any) -> tuple[dict[str, Any], str]:
    """``spec`` with ``value`` at ``path`` (containers built on the way) and the concrete path."""
    head = path.split(".")
    if head[0] == "model" and head[1] == "custom":
        spec["model"] = {"custom": dict(CUSTOM)}
    if head[0] == "source" and head[1] not in ("sha256",):
        spec["source"] = {}
    node = spec
    concrete = "spec"
    for i, part in enumerate(head):
        last = i == len(head) - 1
        if part == "*":
            node["f"] = value
            concrete += ".f"
        elif part.endswith("[]"):
            item: dict[str, Any] | Any = {} if not last else value
            node[part[:-2]] = [item]
            concrete += f".{part[:-2]}[0]"
            node = item
        elif last:
            node[part] = value
            concrete += f".{part}"
        else:
            node = node.setdefault(part, {})
            concrete += f".{part}"
    return spec, concrete


def _range_words(crd: dict[str, Any]) -> list[str]:
    """What the message must say of the valid range, from the CRD."""
    words = [f"{crd[k]:g}" for k in ("minimum", "maximum") if k in crd]
    words += [str(crd[k]) for k in ("minLength", "maxLength") if k in crd]
    words += list(crd.get("enum", [])) + ([crd["pattern"]] if "pattern" in crd else [])
    return words


@pytest.mark.parametrize(
    "path", sorted(crd_bounds(yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]
                              ["schema"]["openAPIV3Schema"]["properties"]["spec"]))
)  # fmt: skip
def test_every_crd_bound_is_enforced_naming_field_and_range(
    spec_dict: dict[str, Any], spec_bounds: dict[str, dict[str, Any]], path: str
) -> None:
    crd = spec_bounds[path]
    bad = _violation(crd)
    spec, concrete = _with(spec_dict, path, bad)
    err = spec_error(spec)
    assert err.field_path == concrete
    assert str(err).startswith(f"{concrete}: {bad!r} is not valid: use ")
    for word in _range_words(crd):
        assert word in str(err), (word, str(err))


@pytest.mark.parametrize(
    ("field", "value"),
    [("gpu.count", "4"), ("gpu.count", True), ("serving.gpuMemoryUtilization", "0.9")],
)
def test_wrong_types_are_refused(spec_dict: dict[str, Any], field: str, value: Any) -> None:
    spec, concrete = _with(spec_dict, field, value)
    assert spec_error(spec).field_path == concrete


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        (
            {"gpu": {"type": "H100-80GB", "count": 6}, "parallelism": {"tensor": 4}},
            "spec.gpu.count",
            "6 must be a multiple of spec.parallelism.tensor=4",
        ),
        (
            {"gpu": {"type": "H100-80GB", "count": 4}, "parallelism": {"tensor": 8, "pipeline": 2}},
            "spec.gpu.count",
            "4 must be a multiple of spec.parallelism.tensor=8",
        ),
        (
            {"gpu": {"type": "H100-80GB", "count": 8}, "parallelism": {"tensor": 2, "pipeline": 2}},
            "spec.gpu.count",
            "8 must equal spec.parallelism.tensor x spec.parallelism.pipeline = 2 x 2 = 4",
        ),
        (
            {"replicas": 5, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}},
            "spec.replicas",
            "5 must lie within spec.autoscaling.minReplicas..maxReplicas (1..3)",
        ),
        (
            {"autoscaling": {"metric": "kvCacheUsage", "target": 8}},
            "spec.autoscaling.target",
            "8 is not valid for kvCacheUsage: use a fraction above 0 and at most 1",
        ),
        (
            {"model": {"custom": {**CUSTOM, "attention": "mla"}}},
            "spec.model.custom.mlaLatentDim",
            "required for MLA attention",
        ),
        (
            {"model": {"custom": {**CUSTOM, "slidingLayers": 32}}},
            "spec.model.custom.slidingLayers",
            "32 must be fewer than numLayers (32)",
        ),
        (
            {"model": {"custom": {**CUSTOM, "numKvHeads": 5}}},
            "spec.model.custom.numAttentionHeads",
            "32 must be a multiple of numKvHeads (5)",
        ),
        (
            {"runtime": {"resources": {"limits": {"nvidia.com/gpu": 1}}}},
            "spec.runtime.resources.limits",
            "must not request GPUs (nvidia.com/gpu)",
        ),
    ],
)
def test_cross_field_rules_of_the_crd(
    spec_dict: dict[str, Any], change: dict[str, Any], field: str, fragment: str
) -> None:
    err = spec_error({**spec_dict, **change})
    assert err.field_path == field
    assert fragment in str(err)


def test_rules_that_hold_pass(spec_dict: dict[str, Any]) -> None:
    spec_dict["gpu"] = {"type": "H100-80GB", "count": 4}
    spec_dict["parallelism"] = {"tensor": 2, "pipeline": 2}
    spec_dict["replicas"] = 2
    spec_dict["autoscaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 3}
    s = parse("md", "ns", spec_dict)
    assert (s.gpu.count, s.parallelism.tensor, s.parallelism.pipeline) == (4, 2, 2)


def test_safety_margin(spec_dict: dict[str, Any]) -> None:
    assert parse("md", "ns", spec_dict).serving.safety_margin_gib is None  # planner default
    spec_dict["serving"] = {"safetyMarginGiB": 2}
    assert parse("md", "ns", spec_dict).serving.safety_margin_gib == 2.0
    spec_dict["serving"] = {"safetyMarginGiB": 65}
    err = spec_error(spec_dict)
    assert str(err) == "spec.serving.safetyMarginGiB: 65 is not valid: use a number from 0 to 64"
