"""The runtime Deployment: vLLM pods sized, placed and secured according to the plan."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from gantry_operator.engine_args import render
from gantry_operator.manifests.common import COMPONENT_RUNTIME, Owner, metadata, selector_labels
from gantry_operator.planner import Plan
from gantry_operator.spec import MODEL_MOUNT, ModelDeploymentSpec
from gantry_operator.spec_rules import OFFLINE_ENV, PRIVACY_ENV
from gantry_runtime.launchspec import ENV_VAR, PORT, LaunchSpec

CACHE_DIR = "/var/cache/gantry"
RUNTIME_UID = 1000
REGION_LABEL = "topology.kubernetes.io/region"
PROBE_PERIOD_SECONDS = 10


def _model_location(spec: ModelDeploymentSpec) -> tuple[str, str | None, str | None, bool]:
    """(model argument, load format, revision, whether weights are local and checkable)."""
    src = spec.source
    if src.kind in ("pvc", "image"):
        path = f"{MODEL_MOUNT}/{src.path}" if src.path else MODEL_MOUNT
        return path, None, None, True
    if src.kind == "s3":
        uri = f"s3://{src.bucket}/{src.prefix}" if src.prefix else f"s3://{src.bucket}"
        return uri, "runai_streamer", None, False
    return src.repo, None, src.revision, False


def launch_spec(spec: ModelDeploymentSpec, plan: Plan) -> LaunchSpec:
    """What the runtime starts. The engine args were checked by spec parsing (flags the plan
    sets are protected there), so nothing here can contradict the plan."""
    args = dict(spec.serving.engine_args)
    model = spec.model
    tool_parser = args.pop("tool-call-parser", model.tool_call_parser)
    reasoning_parser = args.pop("reasoning-parser", model.reasoning_parser)
    trust = args.pop("trust-remote-code", str(model.trust_remote_code)).lower() == "true"
    location, load_format, revision, local = _model_location(spec)
    return LaunchSpec(
        model=location,
        served_model_name=spec.served_model_name,
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.max_num_seqs,
        gpu_memory_utilization=plan.gpu_memory_utilization,
        shutdown_timeout=spec.serving.shutdown_timeout_seconds,
        enable_expert_parallel=plan.expert_parallel,
        kv_cache_dtype=plan.kv_cache_dtype,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        tool_call_parser=tool_parser or None,
        reasoning_parser=reasoning_parser or None,
        trust_remote_code=trust,
        load_format=load_format,
        revision=revision,
        verify_local_weights=local,
        sha256=dict(spec.source.sha256),
        extra_args=tuple(render(k, v) for k, v in sorted(args.items())),
    )


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def build_env(spec: ModelDeploymentSpec, launch: LaunchSpec) -> list[dict[str, Any]]:
    """Container env: ours, then the user's by name (parsing refused what may not be set)."""
    ours: dict[str, dict[str, Any]] = {}

    def put(name: str, value: str) -> None:
        ours[name] = {"name": name, "value": value}

    put(ENV_VAR, launch.to_json())
    for name, value in {
        "HOME": CACHE_DIR,
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        "XDG_CACHE_HOME": CACHE_DIR,
        "VLLM_CACHE_ROOT": f"{CACHE_DIR}/vllm",
        "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
        **PRIVACY_ENV,
    }.items():
        put(name, value)
    if spec.residency.offline:
        for name, value in OFFLINE_ENV.items():
            put(name, value)
    src = spec.source
    if src.kind == "s3":
        put("AWS_ENDPOINT_URL", src.endpoint)
        put("RUNAI_STREAMER_S3_ENDPOINT", src.endpoint)
        put("AWS_EC2_METADATA_DISABLED", "true")
        if src.region:
            put("AWS_REGION", src.region)
        if src.credentials_secret:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                ours[key] = _secret_env(key, src.credentials_secret, key)
    if src.kind == "huggingFace" and src.token_secret:
        ours["HF_TOKEN"] = _secret_env("HF_TOKEN", src.token_secret, "HF_TOKEN")
    # spec parsing refused GANTRY_* names and any other value for the residency and privacy
    # variables (spec_rules.check_env), so the user's entries can simply win.
    for item in spec.serving.env:
        ours[str(item["name"])] = dict(item)
    return [ours[name] for name in sorted(ours)]


def _node_affinity(spec: ModelDeploymentSpec) -> dict[str, Any]:
    profile = spec.gpu.profile
    ours: list[dict[str, Any]] = [
        {"key": profile.product_label, "operator": "In", "values": list(profile.products)}
    ]
    if spec.residency.regions:
        ours.append(
            {"key": REGION_LABEL, "operator": "In", "values": sorted(spec.residency.regions)}
        )
    user: Mapping[str, Any] = spec.scheduling.affinity or {}
    user_terms = (
        user.get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    # Terms are ORed; our expressions must hold in every one of them, so AND them into each.
    terms = [
        {**term, "matchExpressions": [*term.get("matchExpressions", []), *copy.deepcopy(ours)]}
        for term in user_terms
    ] or [{"matchExpressions": ours}]
    node_affinity: dict[str, Any] = {
        **user.get("nodeAffinity", {}),
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms},
    }
    return {**user, "nodeAffinity": node_affinity}


def _resources(spec: ModelDeploymentSpec, plan: Plan, shm_gib: int) -> dict[str, Any]:
    gpus = plan.gpus_per_replica
    requests = {"cpu": str(2 * gpus + 2), "memory": f"{16 + 8 * gpus}Gi"}
    requests.update(dict(spec.runtime.requests))
    limits: dict[str, str] = {"memory": f"{16 + 8 * gpus + shm_gib}Gi"}
    limits.update(dict(spec.runtime.limits))
    limits[spec.gpu.profile.resource] = str(gpus)
    return {"requests": dict(sorted(requests.items())), "limits": dict(sorted(limits.items()))}


def _probes(plan: Plan) -> dict[str, Any]:
    http = {"path": "/health", "port": "http"}
    # vLLM opens its port only once the weights are loaded: allow three times the estimate.
    startup_budget = max(600, 3 * plan.expected_load_seconds)
    return {
        "startupProbe": {
            "httpGet": dict(http),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(startup_budget / PROBE_PERIOD_SECONDS),
        },
        "readinessProbe": {
            "httpGet": dict(http),
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": dict(http),
            "periodSeconds": 15,
            "timeoutSeconds": 10,
            "failureThreshold": 4,
        },
    }


def _volumes(spec: ModelDeploymentSpec, shm_size: str) -> tuple[list[Any], list[Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "cache", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    src = spec.source
    if src.kind == "pvc":
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": src.claim_name, "readOnly": True},
            }
        )
    elif src.kind == "image":
        volumes.append(
            {"name": "model", "image": {"reference": src.reference, "pullPolicy": src.pull_policy}}
        )
    if src.kind in ("pvc", "image"):
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    return sorted(volumes, key=lambda v: v["name"]), sorted(mounts, key=lambda m: m["name"])


def shm_size(spec: ModelDeploymentSpec, plan: Plan) -> str:
    return spec.runtime.shm_size or f"{max(2, 2 * plan.gpus_per_replica)}Gi"


def build_deployment(spec: ModelDeploymentSpec, plan: Plan, *, owner: Owner) -> dict[str, Any]:
    launch = launch_spec(spec, plan)
    shm = shm_size(spec, plan)
    shm_gib = math.ceil(int(shm[:-2]) / (1 if shm.endswith("Gi") else 1024))
    volumes, mounts = _volumes(spec, shm)
    profile = spec.gpu.profile
    tolerations = [
        {"key": profile.resource, "operator": "Exists", "effect": "NoSchedule"},
        *[dict(t) for t in spec.scheduling.tolerations],
    ]
    container: dict[str, Any] = {
        "name": COMPONENT_RUNTIME,
        "image": spec.runtime.image,
        "imagePullPolicy": spec.runtime.image_pull_policy,
        "args": ["serve"],
        "env": build_env(spec, launch),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "resources": _resources(spec, plan, shm_gib),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
        },
        **_probes(plan),
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": spec.serving.shutdown_timeout_seconds + 30,
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": RUNTIME_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": _node_affinity(spec),
        "tolerations": tolerations,
        "volumes": volumes,
    }
    if spec.scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(spec.scheduling.node_selector)
    if spec.scheduling.priority_class_name:
        pod_spec["priorityClassName"] = spec.scheduling.priority_class_name
    if spec.runtime.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.runtime.image_pull_secrets]
    meta = metadata(spec, owner)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(spec)},
            # Surge one replica and keep every serving one until its successor is ready: a
            # rollout without spare GPUs waits instead of taking the model down.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": max(600, 3 * plan.expected_load_seconds) + 300,
            "template": {
                "metadata": {
                    "labels": dict(meta["labels"]),
                    "annotations": {"kubectl.kubernetes.io/default-container": COMPONENT_RUNTIME},
                },
                "spec": pod_spec,
            },
        },
    }
