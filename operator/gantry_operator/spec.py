"""Parse a ModelDeployment once into frozen, typed objects with defaults applied.

The CRD schema and its CEL rules reject malformed input at the API server; this module refuses
the same specs again (so ``gantry plan`` / ``gantry render`` and the operator agree): the schema
through ``schema.py``, the CEL rules that matter for safety through ``spec_rules.py`` (env, GPU
resources, tolerations, node selectors) and ``engine_args.py`` (vLLM flags), plus what no schema
can express (catalog lookups, engine-arg conflicts). It raises :class:`SpecError` naming the field
and the fix. Builders and the planner take these objects, never raw dicts, and never refuse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Literal, TypeVar

from gantry_operator import gpus, schema, spec_rules
from gantry_operator.catalog import (
    KV_DTYPE_BYTES,
    ModelArch,
    UnknownModelError,
    arch_from_mapping,
    preset,
)
from gantry_operator.engine_args import EngineArgError, parse_engine_args

GROUP = "gantry.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

#: metadata.name limit so every derived name (Service, Deployment + ReplicaSet hash) stays valid.
MAX_NAME_LENGTH = 52

DEFAULT_RUNTIME_IMAGE = "ghcr.io/gantry-dev/gantry-runtime:0.1.0-vllm0.33.0"
MODEL_MOUNT = "/models"

SourceKind = Literal["pvc", "s3", "image", "huggingFace"]
ScaleMetric = Literal["queueDepth", "kvCacheUsage"]


class SpecError(ValueError):
    """A spec the schema accepted but Gantry cannot serve; the message names field and fix."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    #: pvc
    claim_name: str = ""
    path: str = ""
    #: s3
    endpoint: str = ""
    bucket: str = ""
    prefix: str = ""
    region: str = ""
    credentials_secret: str = ""
    #: image
    reference: str = ""
    pull_policy: str = "IfNotPresent"
    #: huggingFace
    repo: str = ""
    revision: str = ""
    token_secret: str = ""
    #: Expected sha256 per weight file (relative path -> hex digest).
    sha256: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GPURequest:
    type: str
    count: int | None = None
    per_node: int | None = None

    @property
    def profile(self) -> gpus.GPUProfile:
        return gpus.profile(self.type)

    @property
    def gpus_per_node(self) -> int:
        return self.per_node or self.profile.gpus_per_node


@dataclass(frozen=True)
class Parallelism:
    tensor: int | None = None
    pipeline: int | None = None
    expert: bool | None = None


@dataclass(frozen=True)
class Serving:
    max_context_length: int | None = None
    target_concurrency: int = 1
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: int | None = None
    shutdown_timeout_seconds: int = 60
    #: KV headroom per GPU a plan must leave (GiB); None: the planner's default.
    safety_margin_gib: float | None = None
    #: Engine flags as (flag-without-dashes, value) sorted by flag.
    engine_args: tuple[tuple[str, str], ...] = ()
    #: Raw EnvVar objects from the spec, sorted by name.
    env: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Autoscaling:
    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 1
    metric: ScaleMetric = "queueDepth"
    target: float = 8.0
    scale_up_delay_seconds: int = 0
    scale_down_delay_seconds: int = 300
    #: With min_replicas 0: seconds without a request through the gateway before the last
    #: replica goes (the gateway's metrics are the only load signal at one idle replica).
    scale_to_zero_after_seconds: int = 600


RoutingStrategy = Literal["LeastOutstanding", "PrefixAffinity"]


@dataclass(frozen=True)
class Routing:
    """How the gantry-gateway spreads this model's requests over its replicas."""

    strategy: RoutingStrategy = "LeastOutstanding"
    #: With PrefixAffinity: the prompt's leading tokens that are hashed.
    prefix_tokens: int = 256


@dataclass(frozen=True)
class Scheduling:
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str = ""


@dataclass(frozen=True)
class Residency:
    regions: tuple[str, ...] = ()
    offline: bool = True


@dataclass(frozen=True)
class Runtime:
    image: str = DEFAULT_RUNTIME_IMAGE
    image_pull_policy: str = "IfNotPresent"
    requests: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, str], ...] = ()
    shm_size: str | None = None
    image_pull_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelDeploymentSpec:
    """One ModelDeployment, parsed. ``name``/``namespace`` come from metadata."""

    name: str
    namespace: str
    model: ModelArch
    preset: str | None
    served_model_name: str
    source: Source
    gpu: GPURequest
    parallelism: Parallelism = field(default_factory=Parallelism)
    serving: Serving = field(default_factory=Serving)
    replicas: int = 1
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    routing: Routing = field(default_factory=Routing)
    scheduling: Scheduling = field(default_factory=Scheduling)
    residency: Residency = field(default_factory=Residency)
    runtime: Runtime = field(default_factory=Runtime)

    @property
    def max_context_length(self) -> int:
        return self.serving.max_context_length or self.model.max_context


def _get(obj: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    return default if value is None else value


def parse(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    *,
    runtime_image: str = DEFAULT_RUNTIME_IMAGE,
    image_pull_secrets: tuple[str, ...] = (),
) -> ModelDeploymentSpec:
    """Parse ``spec`` (the CR's ``.spec``) or raise SpecError naming the field.

    ``runtime_image`` and ``image_pull_secrets`` are the cluster's defaults (policy file)."""
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(
            "metadata.name", f"is {len(name)} characters; use at most {MAX_NAME_LENGTH}"
        )
    check_bounds(spec)
    model_obj: Mapping[str, Any] = _get(spec, "model", {})
    arch, preset_name = _parse_model(model_obj)
    gpu_obj: Mapping[str, Any] = _get(spec, "gpu", {})
    if not gpu_obj.get("type"):
        raise SpecError("spec.gpu.type", f"is required: one of {', '.join(gpus.PROFILES)}")
    gpu = GPURequest(
        type=gpu_obj["type"], count=gpu_obj.get("count"), per_node=gpu_obj.get("perNode")
    )
    try:
        gpu.profile  # noqa: B018 - validates the type name
    except gpus.UnknownGPUError as exc:
        raise SpecError("spec.gpu.type", str(exc)) from None
    par: Mapping[str, Any] = _get(spec, "parallelism", {})
    auto: Mapping[str, Any] = _get(spec, "autoscaling", {})
    autoscaling = Autoscaling(
        enabled=bool(_get(auto, "enabled", False)),
        min_replicas=int(_get(auto, "minReplicas", 1)),
        max_replicas=int(_get(auto, "maxReplicas", max(1, int(_get(auto, "minReplicas", 1))))),
        metric=_get(auto, "metric", "queueDepth"),
        target=float(_get(auto, "target", 8.0)),
        scale_up_delay_seconds=int(_get(auto, "scaleUpDelaySeconds", 0)),
        scale_down_delay_seconds=int(_get(auto, "scaleDownDelaySeconds", 300)),
        scale_to_zero_after_seconds=int(_get(auto, "scaleToZeroAfterSeconds", 600)),
    )
    routing_obj: Mapping[str, Any] = _get(spec, "routing", {})
    routing = Routing(
        strategy=_get(routing_obj, "strategy", "LeastOutstanding"),
        prefix_tokens=int(_get(routing_obj, "prefixTokens", 256)),
    )
    if autoscaling.min_replicas > autoscaling.max_replicas:
        raise SpecError(
            "spec.autoscaling",
            f"minReplicas {autoscaling.min_replicas} exceeds maxReplicas "
            f"{autoscaling.max_replicas}; lower minReplicas or raise maxReplicas",
        )
    residency_obj: Mapping[str, Any] = _get(spec, "residency", {})
    residency = Residency(
        regions=tuple(_get(residency_obj, "regions", ())),
        offline=bool(_get(residency_obj, "offline", True)),
    )
    source = _parse_source(_get(spec, "source", {}), residency)
    serving = _parse_serving(_get(spec, "serving", {}), arch, offline=residency.offline)
    parallelism, serving = _fold_parallel_args(par, serving)
    margin = _get(spec, "serving", {}).get("safetyMarginGiB")
    serving = replace(serving, safety_margin_gib=None if margin is None else float(margin))
    try:
        # Everything else the CRD schema refuses, refused here too (after the checks above,
        # whose messages say more for the fields they cover).
        schema.validate(spec)
    except schema.SchemaError as exc:
        raise SpecError(exc.field_path, str(exc).removeprefix(f"{exc.field_path}: ")) from None
    return ModelDeploymentSpec(
        name=name,
        namespace=namespace,
        model=arch,
        preset=preset_name,
        served_model_name=_get(model_obj, "servedName", preset_name or name),
        source=source,
        gpu=gpu,
        parallelism=parallelism,
        serving=serving,
        replicas=int(_get(spec, "replicas", 1)),
        autoscaling=autoscaling,
        routing=routing,
        scheduling=_parse_scheduling(_get(spec, "scheduling", {})),
        residency=residency,
        runtime=_parse_runtime(_get(spec, "runtime", {}), runtime_image, image_pull_secrets),
    )


def _fold_parallel_args(par: Mapping[str, Any], serving: Serving) -> tuple[Parallelism, Serving]:
    """Expert parallel is a planner input (data parallel is a protected flag: replicas are
    what it would be for)."""
    args = dict(serving.engine_args)
    expert = par.get("expert")
    if "enable-expert-parallel" in args:
        # parse_engine_args let only "true" or "false" through for this switch.
        raw = args.pop("enable-expert-parallel")
        field_path = "spec.serving.engineArgs.enable-expert-parallel"
        if expert is not None and expert != (raw == "true"):
            raise SpecError(field_path, f"is {raw} but spec.parallelism.expert is {expert}")
        expert = raw == "true"
    parallelism = Parallelism(tensor=par.get("tensor"), pipeline=par.get("pipeline"), expert=expert)
    return parallelism, replace(serving, engine_args=tuple(sorted(args.items())))


def _parse_model(model: Mapping[str, Any]) -> tuple[ModelArch, str | None]:
    has_preset, has_custom = "preset" in model, "custom" in model
    if has_preset == has_custom:
        raise SpecError(
            "spec.model", "set exactly one of preset (a catalog model) or custom (its architecture)"
        )
    if has_preset:
        try:
            return preset(model["preset"]), model["preset"]
        except UnknownModelError as exc:
            raise SpecError("spec.model.preset", str(exc)) from None
    try:
        return arch_from_mapping(dict(model["custom"])), None
    except (TypeError, ValueError) as exc:
        raise SpecError(
            "spec.model.custom", f"{exc}; see `kubectl explain md.spec.model.custom`"
        ) from None


#: Weight source kinds, in the order messages list them (cluster_policy.py uses them too).
SOURCE_KINDS: tuple[SourceKind, ...] = ("pvc", "s3", "image", "huggingFace")


def _parse_source(source: Mapping[str, Any], residency: Residency) -> Source:
    kinds = [k for k in SOURCE_KINDS if k in source]
    if len(kinds) != 1:
        raise SpecError("spec.source", "set exactly one of pvc, s3, image or huggingFace")
    kind = kinds[0]
    body: Mapping[str, Any] = source[kind]
    sha = tuple(sorted(dict(_get(source, "sha256", {})).items()))
    if kind == "huggingFace" and residency.offline:
        raise SpecError(
            "spec.source.huggingFace",
            "downloads from a model hub, which spec.residency.offline=true (the default) forbids; "
            "use a pvc, s3 or image source, or set spec.residency.offline=false",
        )
    if kind == "pvc":
        return Source(
            kind, claim_name=body["claimName"], path=_get(body, "path", "").strip("/"), sha256=sha
        )
    if kind == "s3":
        return Source(
            kind,
            endpoint=body["endpoint"],
            bucket=body["bucket"],
            prefix=_get(body, "prefix", "").strip("/"),
            region=_get(body, "region", ""),
            credentials_secret=_get(body, "credentialsSecret", ""),
            sha256=sha,
        )
    if kind == "image":
        return Source(
            kind,
            reference=body["reference"],
            path=_get(body, "path", "").strip("/"),
            pull_policy=_get(body, "pullPolicy", "IfNotPresent"),
            sha256=sha,
        )
    return Source(
        kind,
        repo=body["repo"],
        revision=_get(body, "revision", "main"),
        token_secret=_get(body, "tokenSecret", ""),
        sha256=sha,
    )


def _in_range(convert: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    """A converter that also enforces the bounds the CRD sets on the matching spec field."""

    def check(raw: str) -> Any:
        value = convert(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value

    return check


def _kv_cache_dtype(raw: str) -> str:
    if raw not in KV_DTYPE_BYTES:
        raise ValueError(raw)
    return raw


#: Engine flags that are planner inputs: (spec.serving field, converter, what is valid).
_PLAN_INPUT_FLAGS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "max-num-seqs": ("maxNumSeqs", _in_range(int, 1, 4096), "an integer from 1 to 4096"),
    "gpu-memory-utilization": (
        "gpuMemoryUtilization",
        _in_range(float, 0.5, 0.98),
        "a number from 0.5 to 0.98",
    ),
    "max-num-batched-tokens": (
        "maxNumBatchedTokens",
        _in_range(int, 256, 2**31 - 1),
        "an integer of at least 256",
    ),
    "kv-cache-dtype": ("kvCacheDtype", _kv_cache_dtype, f"one of {', '.join(KV_DTYPE_BYTES)}"),
}


def _parse_serving(serving: Mapping[str, Any], arch: ModelArch, *, offline: bool) -> Serving:
    max_len = serving.get("maxContextLength")
    if max_len is not None and max_len > arch.max_context:
        raise SpecError(
            "spec.serving.maxContextLength",
            f"{max_len} exceeds {arch.name}'s maximum context of {arch.max_context} tokens; "
            f"set it to {arch.max_context} or less",
        )
    try:
        args = dict(parse_engine_args(_get(serving, "engineArgs", {})))
    except EngineArgError as exc:
        raise SpecError(exc.field_path, str(exc).removeprefix(f"{exc.field_path}: ")) from None
    # Engine flags that are planner inputs are folded into their spec.serving fields, so the
    # plan accounts for them; setting both to different values is a contradiction.
    folded: dict[str, Any] = {}
    for flag, (key, convert, valid) in _PLAN_INPUT_FLAGS.items():
        if flag not in args:
            continue
        raw = args.pop(flag)
        try:
            value = convert(raw)
        except ValueError:
            raise SpecError(
                f"spec.serving.engineArgs.{flag}", f"{raw!r} is not valid: use {valid}"
            ) from None
        if serving.get(key) is not None and serving[key] != value:
            raise SpecError(
                f"spec.serving.engineArgs.{flag}",
                f"is {raw} but spec.serving.{key} is {serving[key]}; set only spec.serving.{key}",
            )
        folded[key] = value
    merged = {**serving, **folded}
    env = _rule(spec_rules.check_env, "spec.serving.env", _get(serving, "env", ()), offline=offline)
    return Serving(
        max_context_length=max_len,
        target_concurrency=int(_get(serving, "targetConcurrency", 1)),
        max_num_seqs=merged.get("maxNumSeqs"),
        gpu_memory_utilization=merged.get("gpuMemoryUtilization"),
        kv_cache_dtype=_get(merged, "kvCacheDtype", "auto"),
        max_num_batched_tokens=merged.get("maxNumBatchedTokens"),
        shutdown_timeout_seconds=int(_get(serving, "shutdownTimeoutSeconds", 60)),
        engine_args=tuple(sorted(args.items())),
        env=env,
    )


_T = TypeVar("_T")


def _rule(check: Callable[..., _T], field_path: str, value: Any, **options: Any) -> _T:
    """Run a spec_rules check, reporting its RuleError as a SpecError."""
    try:
        return check(field_path, value, **options)
    except spec_rules.RuleError as exc:
        raise SpecError(exc.field_path, str(exc).removeprefix(f"{exc.field_path}: ")) from None


def _parse_scheduling(scheduling: Mapping[str, Any]) -> Scheduling:
    where = "spec.scheduling"
    return Scheduling(
        node_selector=_rule(
            spec_rules.check_node_selector,
            f"{where}.nodeSelector",
            dict(_get(scheduling, "nodeSelector", {})),
        ),
        tolerations=_rule(
            spec_rules.check_tolerations,
            f"{where}.tolerations",
            _get(scheduling, "tolerations", ()),
        ),
        affinity=scheduling.get("affinity"),
        priority_class_name=_get(scheduling, "priorityClassName", ""),
    )


def _parse_runtime(
    runtime: Mapping[str, Any], default_image: str, cluster_secrets: tuple[str, ...]
) -> Runtime:
    resources: Mapping[str, Any] = _get(runtime, "resources", {})
    own = tuple(s["name"] for s in _get(runtime, "imagePullSecrets", ()))
    where = "spec.runtime.resources"
    requests = _rule(
        spec_rules.check_resources, f"{where}.requests", _get(resources, "requests", {})
    )
    limits = _rule(spec_rules.check_resources, f"{where}.limits", _get(resources, "limits", {}))
    shm_size = runtime.get("shmSize")
    if shm_size is not None:
        _rule(spec_rules.check_shm_size, "spec.runtime.shmSize", shm_size)
    return Runtime(
        image=_get(runtime, "image", default_image),
        image_pull_policy=_get(runtime, "imagePullPolicy", "IfNotPresent"),
        requests=requests,
        limits=limits,
        shm_size=shm_size,
        image_pull_secrets=tuple(dict.fromkeys((*own, *cluster_secrets))),
    )


# --- The CRD's bounds, enforced again -------------------------------------------------------
# Every minimum, maximum, enum, length and pattern of deploy/crds/gantry.dev_modeldeployments.yaml
# under .spec (read from the packaged copy), and its cross-field (CEL) rules, so a spec that did
# not come through the API server (gantry plan, gantry render) is refused with the same field and
# range, in words that name the range. schema.validate then checks the rest of the schema
# (types, unknown fields, sizes of lists and maps); the engineArgs key rules live in engine_args.


BoundKind = Literal["integer", "number", "string"]


@dataclass(frozen=True)
class Bound:
    kind: BoundKind
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    enum: tuple[str, ...] = ()
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None

    def describe(self) -> str:
        if self.enum:
            return "one of " + ", ".join(self.enum)
        if self.kind == "string":
            parts = []
            if self.min_length is not None:
                parts.append(f"at least {self.min_length}")
            if self.max_length is not None:
                parts.append(f"at most {self.max_length}")
            text = "a string" + (f" of {' and '.join(parts)} characters" if parts else "")
            return text + (f" matching {self.pattern}" if self.pattern else "")
        what = "an integer" if self.kind == "integer" else "a number"
        low, high = _num(self.minimum), _num(self.maximum)
        if self.exclusive_minimum:
            return f"{what} above {low}" + (f" and at most {high}" if high else "")
        if self.minimum is not None and self.maximum is not None:
            return f"{what} from {low} to {high}"
        if self.minimum is not None:
            return f"{what} of at least {low}"
        return f"{what} of at most {high}"

    def accepts(self, value: Any) -> bool:
        if self.kind == "string":
            return isinstance(value, str) and self._string_ok(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "integer" and not (isinstance(value, int) or float(value).is_integer()):
            return False
        if self.minimum is not None and (
            value <= self.minimum if self.exclusive_minimum else value < self.minimum
        ):
            return False
        return self.maximum is None or value <= self.maximum

    def _string_ok(self, value: str) -> bool:
        if self.enum and value not in self.enum:
            return False
        if self.min_length is not None and len(value) < self.min_length:
            return False
        if self.max_length is not None and len(value) > self.max_length:
            return False
        return self.pattern is None or re.search(self.pattern, value) is not None


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


_BOUND_KEYS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "enum",
    "minLength",
    "maxLength",
    "pattern",
)


@cache
def bounds() -> dict[str, Bound]:
    """CRD bounds by field path below ``spec`` (dotted; ``[]`` list items, ``*`` map values),
    read from the packaged copy of the CRD (:mod:`gantry_operator.schema`)."""
    return _bounds(schema.spec_schema(), "")


def _bounds(node: Mapping[str, Any], path: str) -> dict[str, Bound]:
    found: dict[str, Bound] = {}
    kind = node.get("type")
    if kind in ("integer", "number", "string") and any(k in node for k in _BOUND_KEYS):
        found[path] = Bound(
            kind,
            minimum=node.get("minimum"),
            maximum=node.get("maximum"),
            exclusive_minimum=bool(node.get("exclusiveMinimum", False)),
            enum=tuple(node.get("enum") or ()),
            min_length=node.get("minLength"),
            max_length=node.get("maxLength"),
            pattern=node.get("pattern"),
        )
    for key, child in (node.get("properties") or {}).items():
        found |= _bounds(child, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), Mapping):
        found |= _bounds(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        found |= _bounds(node["additionalProperties"], f"{path}.*")
    return found


def _values(obj: Any, parts: list[str], path: str) -> list[tuple[str, Any]]:
    """(field path, value) for every value at ``parts`` below ``obj`` (``*`` map values,
    ``name[]`` list items); absent and null fields yield nothing."""
    if not parts:
        return [] if obj is None else [(path, obj)]
    if not isinstance(obj, Mapping):
        return []
    head, rest = parts[0], parts[1:]
    if head == "*":
        return [v for k, child in obj.items() for v in _values(child, rest, f"{path}.{k}")]
    if head.endswith("[]"):
        items = obj.get(head[:-2])
        if not isinstance(items, list):
            return []
        return [
            v
            for n, item in enumerate(items)
            for v in _values(item, rest, f"{path}.{head[:-2]}[{n}]")
        ]
    return _values(obj.get(head), rest, f"{path}.{head}")


def check_bounds(spec: Mapping[str, Any]) -> None:
    """Raise SpecError for the first value outside the CRD's bounds or rules (field and range)."""
    for dotted, bound in bounds().items():
        for path, value in _values(spec, dotted.split("."), "spec"):
            if not bound.accepts(value):
                raise SpecError(path, f"{value!r} is not valid: use {bound.describe()}")
    _check_rules(spec)


def _check_rules(spec: Mapping[str, Any]) -> None:
    """The CRD's cross-field rules (x-kubernetes-validations) that parse does not repeat."""
    gpu: Mapping[str, Any] = _get(spec, "gpu", {})
    par: Mapping[str, Any] = _get(spec, "parallelism", {})
    count: int | None = gpu.get("count")
    tensor: int | None = par.get("tensor")
    pipeline: int | None = par.get("pipeline")
    if count is not None and tensor is not None and count % tensor:
        raise SpecError(
            "spec.gpu.count",
            f"{count} must be a multiple of spec.parallelism.tensor={tensor}",
        )
    if count is not None and tensor and pipeline and count != tensor * pipeline:
        raise SpecError(
            "spec.gpu.count",
            f"{count} must equal spec.parallelism.tensor x spec.parallelism.pipeline = "
            f"{tensor} x {pipeline} = {tensor * pipeline} (or leave one of them unset)",
        )
    auto: Mapping[str, Any] = _get(spec, "autoscaling", {})
    low, high = _get(auto, "minReplicas", 1), _get(auto, "maxReplicas", 1)
    replicas = _get(spec, "replicas", 1)
    if _get(auto, "enabled", False) and low <= high and not low <= replicas <= high:
        raise SpecError(
            "spec.replicas",
            f"{replicas} must lie within spec.autoscaling.minReplicas..maxReplicas "
            f"({low}..{high}) while autoscaling is enabled",
        )
    if _get(auto, "metric", "queueDepth") == "kvCacheUsage" and _get(auto, "target", 8) > 1:
        raise SpecError(
            "spec.autoscaling.target",
            f"{auto.get('target', 8)!r} is not valid for kvCacheUsage: use a fraction above 0 "
            "and at most 1",
        )
    custom = _get(_get(spec, "model", {}), "custom", {})
    if custom:
        _check_custom_rules(custom)
    resources = _get(_get(spec, "runtime", {}), "resources", {})
    for kind in ("requests", "limits"):
        for key in _get(resources, kind, {}):
            if str(key).endswith("/gpu"):
                raise SpecError(
                    f"spec.runtime.resources.{kind}",
                    f"must not request GPUs ({key}); Gantry sets them from the plan "
                    "(use spec.gpu.count)",
                )


def _check_custom_rules(custom: Mapping[str, Any]) -> None:
    mla = _get(custom, "attention", "gqa") == "mla"
    if mla and not _get(custom, "mlaLatentDim", 0) > 0:
        raise SpecError(
            "spec.model.custom.mlaLatentDim",
            "(kv_lora_rank + qk_rope_head_dim) is required for MLA attention: use an integer "
            "of at least 1",
        )
    layers, sliding = custom.get("numLayers"), custom.get("slidingLayers")
    if layers is not None and sliding is not None and sliding >= layers:
        raise SpecError(
            "spec.model.custom.slidingLayers",
            f"{sliding} must be fewer than numLayers ({layers}): some layers must be full "
            "attention",
        )
    heads, kv = custom.get("numAttentionHeads"), custom.get("numKvHeads")
    if not mla and heads is not None and kv and heads % kv:
        raise SpecError(
            "spec.model.custom.numAttentionHeads",
            f"{heads} must be a multiple of numKvHeads ({kv})",
        )
