"""The autoscaler loop: scrape ready runtime pods, export the load, decide, scale.

Runs on a timer for every ModelDeployment. The load gauges are exported for all of them (HPA
and KEDA users read them too); decisions are made only where ``spec.autoscaling.enabled``.
The decision goes through the ModelDeployment's scale subresource, so the reconcile propagates
it like any ``kubectl scale``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gantry_operator import autoscaler, k8s, metrics
from gantry_operator.manifests.common import selector_string
from gantry_operator.spec import SpecError, parse
from gantry_runtime.launchspec import PORT

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_SECONDS = 2.0
RUNNING, WAITING, KV = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
)


@dataclass
class Memory:
    """What the loop keeps between ticks for one ModelDeployment (kopf's per-object memo)."""

    history: list[autoscaler.Recommendation] = field(default_factory=list)


def parse_metrics(text: str) -> tuple[float, float, float]:
    """(running, waiting, KV usage) from one pod's /metrics, summed over label sets."""
    values = {RUNNING: 0.0, WAITING: 0.0, KV: 0.0}
    for family in text_string_to_metric_families(text):
        if family.name in values:
            values[family.name] += sum(sample.value for sample in family.samples)
    return values[RUNNING], values[WAITING], values[KV]


def _scrape(ip: str) -> tuple[float, float, float]:
    with urllib.request.urlopen(f"http://{ip}:{PORT}/metrics", timeout=SCRAPE_TIMEOUT_SECONDS) as r:
        return parse_metrics(r.read().decode())


def _ready_ips(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    ips = []
    for pod in pods:
        status = pod.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if (
            conditions.get("Ready") == "True"
            and status.get("podIP")
            and not pod["metadata"].get("deletionTimestamp")
        ):
            ips.append(status["podIP"])
    return sorted(ips)


def observe_load(namespace: str, name: str, ips: Sequence[str]) -> autoscaler.Load:
    started = time.monotonic()
    samples: list[tuple[float, float, float]] = []
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(ips)))) as pool:
        futures = [pool.submit(_scrape, ip) for ip in ips]
        for ip, future in zip(ips, futures, strict=True):
            try:
                samples.append(future.result())
            except (OSError, ValueError) as exc:
                metrics.scrape_errors.labels(namespace, name).inc()
                log.warning(
                    "Could not scrape runtime pod %s of %s/%s: %s", ip, namespace, name, exc
                )
    metrics.scrape_seconds.observe(time.monotonic() - started)
    running = sum(s[0] for s in samples)
    waiting = sum(s[1] for s in samples)
    kv = sum(s[2] for s in samples) / len(samples) if samples else 0.0
    metrics.record_load(namespace, name, running + waiting, waiting, kv)
    return autoscaler.Load(ready=len(samples), running=running, waiting=waiting, kv_usage=kv)


def tick(namespace: str, name: str, memory: Memory, *, now: float | None = None) -> None:
    """One autoscaler step for one ModelDeployment (nothing if it is deleted meanwhile)."""
    with contextlib.suppress(k8s.GoneError):
        _tick(namespace, name, memory, now=now)


def _tick(namespace: str, name: str, memory: Memory, *, now: float | None) -> None:
    body = k8s.get_model_deployment(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    try:
        spec = parse(name, namespace, body.get("spec") or {})
    except SpecError:
        return  # the reconcile reports it
    load = observe_load(
        namespace, name, _ready_ips(k8s.list_pods(namespace, selector_string(spec)))
    )
    if not spec.autoscaling.enabled:
        memory.history.clear()
        return
    decision, memory.history = autoscaler.decide(
        spec.autoscaling,
        load,
        current=spec.replicas,
        now=now or time.monotonic(),
        history=memory.history,
    )
    previous: Mapping[str, Any] = (body.get("status") or {}).get("autoscaler") or {}
    record = {
        "desiredReplicas": decision.replicas,
        "recommendedReplicas": decision.recommended,
        "metric": spec.autoscaling.metric,
        "reason": decision.reason,
    }
    if decision.replicas != spec.replicas:
        k8s.scale(namespace, name, decision.replicas)
        metrics.scale_events.labels(namespace, name, decision.direction).inc()
        record["lastScaleTime"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        k8s.event(
            body,
            reason=f"Scaled{decision.direction.capitalize()}",
            message=(
                f"Scaled from {spec.replicas} to {decision.replicas} replicas: {decision.reason}"
            ),
        )
        log.info(
            "Scaled %s/%s from %d to %d: %s",
            namespace,
            name,
            spec.replicas,
            decision.replicas,
            decision.reason,
        )
    elif "lastScaleTime" in previous:
        record["lastScaleTime"] = previous["lastScaleTime"]
    # Written when the decision changes, not every tick (the reason text carries live numbers).
    changed = any(
        previous.get(k) != record.get(k)
        for k in ("desiredReplicas", "recommendedReplicas", "lastScaleTime")
    )
    if changed:
        k8s.patch_status(namespace, name, {"autoscaler": record})
