"""The operator's own metrics (prometheus-client), names as documented in docs/metrics.md."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

MD = ("namespace", "modeldeployment")

replicas_desired = Gauge(
    "gantry_modeldeployment_replicas_desired", "Replicas the operator wants", MD
)
replicas_current = Gauge("gantry_modeldeployment_replicas_current", "Runtime pods that exist", MD)
replicas_ready = Gauge("gantry_modeldeployment_replicas_ready", "Runtime pods that are ready", MD)
replicas_min = Gauge("gantry_modeldeployment_replicas_min", "Autoscaling lower bound", MD)
replicas_max = Gauge("gantry_modeldeployment_replicas_max", "Autoscaling upper bound", MD)
gpus = Gauge("gantry_modeldeployment_gpus", "GPUs in use (current replicas x GPUs per replica)", MD)
ready = Gauge("gantry_modeldeployment_ready", "1 when the Ready condition is True", MD)
queue_depth = Gauge(
    "gantry_modeldeployment_queue_depth", "Waiting + running requests over ready replicas", MD
)
requests_waiting = Gauge(
    "gantry_modeldeployment_requests_waiting", "Waiting requests over ready replicas", MD
)
kv_cache_usage = Gauge(
    "gantry_modeldeployment_kv_cache_usage", "Mean KV-cache usage (0..1) of ready replicas", MD
)
PLAN_LABELS = (
    "model", "gpu_type", "tensor_parallel", "pipeline_parallel", "gpus_per_replica",
    "max_model_len",
)  # fmt: skip
plan_info = Gauge(
    "gantry_modeldeployment_plan_info", "The sharding plan (always 1)", MD + PLAN_LABELS
)
scale_events = Counter(
    "gantry_autoscaler_scale_events", "Scale decisions applied", (*MD, "direction")
)
reconciles = Counter("gantry_reconcile", "Reconciles by result", ("result",))
resyncs = Counter(
    "gantry_resync", "Resync passes (every ModelDeployment compared in memory with its children)"
)
reconcile_seconds = Histogram(
    "gantry_reconcile_duration_seconds", "Reconcile wall time", ("result",),
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip
scrape_errors = Counter("gantry_scrape_errors", "Failed scrapes of runtime pods", MD)
scrape_seconds = Histogram(
    "gantry_scrape_duration_seconds", "Time to scrape all pods of one ModelDeployment",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)  # fmt: skip

_PER_OBJECT = (
    replicas_desired, replicas_current, replicas_ready, replicas_min, replicas_max, gpus, ready,
    queue_depth, requests_waiting, kv_cache_usage,
)  # fmt: skip
_plans: dict[tuple[str, str], tuple[str, ...]] = {}


def record_status(namespace: str, name: str, spec: Any, status: Mapping[str, Any]) -> None:
    """Per-object gauges from the status the reconcile just computed (spec may be None)."""
    key = (namespace, name)
    plan: Mapping[str, Any] = status.get("plan") or {}
    current = int(status.get("replicas") or 0)
    if spec is not None:
        replicas_desired.labels(*key).set(spec.replicas)
        auto = spec.autoscaling
        low, high = (auto.min_replicas, auto.max_replicas) if auto.enabled else (spec.replicas,) * 2
        replicas_min.labels(*key).set(low)
        replicas_max.labels(*key).set(high)
    replicas_current.labels(*key).set(current)
    replicas_ready.labels(*key).set(int(status.get("readyReplicas") or 0))
    gpus.labels(*key).set(current * int(plan.get("gpusPerReplica") or 0))
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    ready.labels(*key).set(1 if conditions.get("Ready") == "True" else 0)
    if plan:
        fields = ("gpuType", "tensorParallelSize", "pipelineParallelSize", "gpusPerReplica")
        values = (
            str(status.get("model", "")),
            *(str(plan[f]) for f in fields),
            str(plan["maxModelLen"]),
        )
        old = _plans.get(key)
        if old != values:
            if old is not None:
                plan_info.remove(*key, *old)
            plan_info.labels(*key, *values).set(1)
            _plans[key] = values


def record_load(namespace: str, name: str, queue: float, waiting: float, kv: float) -> None:
    queue_depth.labels(namespace, name).set(queue)
    requests_waiting.labels(namespace, name).set(waiting)
    kv_cache_usage.labels(namespace, name).set(kv)


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted ModelDeployment."""
    key = (namespace, name)
    with suppress(KeyError):
        for gauge in _PER_OBJECT:
            gauge.remove(*key)
    old = _plans.pop(key, None)
    if old is not None:
        plan_info.remove(*key, *old)
    for direction in ("up", "down"):
        with suppress(KeyError):
            scale_events.remove(*key, direction)
    with suppress(KeyError):
        scrape_errors.remove(*key)
