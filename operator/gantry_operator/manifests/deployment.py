"""The runtime Deployment: vLLM pods sized, placed and secured according to the plan."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from gantry_operator.manifests.common import (
    COMPONENT_RUNTIME,
    Owner,
    metadata,
    selector_labels,
)
from gantry_operator.manifests.launch import CACHE_DIR, build_env, launch_spec
from gantry_operator.planner import Plan
from gantry_operator.spec import MODEL_MOUNT, ModelDeploymentSpec
from gantry_runtime.launchspec import PORT, LaunchSpec

RUNTIME_UID = 1000
REGION_LABEL = "topology.kubernetes.io/region"
PROBE_PERIOD_SECONDS = 10


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


def _resources(spec: ModelDeploymentSpec, gpus: int, shm_gib: int) -> dict[str, Any]:
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


def _env(
    spec: ModelDeploymentSpec, launch: LaunchSpec, extra: tuple[dict[str, Any], ...]
) -> list[dict[str, Any]]:
    """The launch env with ``extra`` (multi-node settings) under it: the user's entries win."""
    env = {str(e["name"]): copy.deepcopy(e) for e in extra}
    env.update({str(e["name"]): e for e in build_env(spec, launch)})
    return [env[name] for name in sorted(env)]


def pod_gpus(plan: Plan) -> int:
    """GPUs one runtime pod holds: the whole replica, or one node's share of a multi-node one."""
    return plan.gpus_per_replica // plan.nodes_per_replica


def shm_size(spec: ModelDeploymentSpec, plan: Plan) -> str:
    return spec.runtime.shm_size or f"{max(2, 2 * pod_gpus(plan))}Gi"


def pod_template(
    spec: ModelDeploymentSpec,
    plan: Plan,
    *,
    labels: dict[str, str],
    serves: bool = True,
    extra_env: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """The runtime pod template. ``serves``: the pod answers HTTP (a single-node replica or a
    multi-node group's leader) and gets the HTTP probes; a headless worker gets none."""
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
        "env": _env(spec, launch, extra_env),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "resources": _resources(spec, pod_gpus(plan), shm_gib),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
        },
        **(_probes(plan) if serves else {}),
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
    return {
        "metadata": {
            "labels": dict(labels),
            "annotations": {"kubectl.kubernetes.io/default-container": COMPONENT_RUNTIME},
        },
        "spec": pod_spec,
    }


def progress_deadline_seconds(plan: Plan) -> int:
    return max(600, 3 * plan.expected_load_seconds) + 300


def build_deployment(spec: ModelDeploymentSpec, plan: Plan, *, owner: Owner) -> dict[str, Any]:
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
            "progressDeadlineSeconds": progress_deadline_seconds(plan),
            "template": pod_template(spec, plan, labels=meta["labels"]),
        },
    }
