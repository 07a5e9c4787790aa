"""The one level-triggered reconcile: read the world, compute the desired state, apply, report.

Every trigger (create, update, resume, timer, a child's event) calls :func:`reconcile` with only
the object's namespace and name; it reads everything else itself, so there are no
event-specific branches and a missed event is repaired by the next one.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from gantry_operator import k8s, manifests, metrics, planner, status
from gantry_operator.manifests.common import Owner, selector_string
from gantry_operator.planner import DoesNotFitError, Plan
from gantry_operator.policy import Policy
from gantry_operator.spec import ModelDeploymentSpec, SpecError, parse

log = logging.getLogger(__name__)

_policy = Policy()


def configure(policy: Policy) -> None:
    """Set the cluster policy every reconcile enforces (once, at start-up)."""
    global _policy
    _policy = policy


_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[(namespace, name)]


def reconcile(namespace: str, name: str) -> str | None:
    """Converge one ModelDeployment; returns the phase written, or None if it is gone."""
    with _lock(namespace, name):
        body = k8s.get_model_deployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        started = time.monotonic()
        result = "error"
        try:
            phase, result = _reconcile(body)
            return phase
        except k8s.NamespaceTerminatingError:
            log.info("Skipped %s/%s: its namespace is being deleted", namespace, name)
            result = "skipped"
            return None
        except k8s.GoneError:
            log.info("Skipped %s/%s: it was deleted while being reconciled", namespace, name)
            result = "skipped"
            return None
        finally:
            metrics.reconciles.labels(result).inc()
            metrics.reconcile_seconds.labels(result).observe(time.monotonic() - started)


def _desired(
    body: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], ModelDeploymentSpec | None, Plan | None, status.Problem | None]:
    """(objects, parsed spec, plan, problem) for the current spec; objects empty on a problem."""
    meta = body["metadata"]
    try:
        spec = parse(
            meta["name"],
            meta["namespace"],
            body.get("spec") or {},
            runtime_image=_policy.runtime_image,
            image_pull_secrets=_policy.image_pull_secrets,
        )
    except SpecError as exc:
        return [], None, None, status.Problem("InvalidSpec", str(exc))
    try:
        _policy.check(spec)
    except SpecError as exc:
        return [], spec, None, status.Problem("PolicyViolation", str(exc))
    try:
        plan = planner.plan(spec)
    except DoesNotFitError as exc:
        return [], spec, None, status.Problem("DoesNotFit", str(exc))
    if plan.nodes_per_replica > 1:
        return (
            [],
            spec,
            plan,
            status.Problem(
                "NeedsMultiNode",
                f"the plan needs {plan.nodes_per_replica} nodes per replica ({plan.summary}); "
                "multi-node replicas are not served yet: choose a GPU type with more memory "
                "(for example H200 or B200) or a smaller model",
            ),
        )
    owner = Owner(name=meta["name"], uid=meta["uid"])
    try:
        objects = manifests.build_all(spec, plan, owner=owner, network=_policy.network)
    except SpecError as exc:
        return [], spec, plan, status.Problem("InvalidSpec", str(exc))
    return objects, spec, plan, None


def _unschedulable(namespace: str, selector: str) -> str | None:
    for pod in k8s.list_pods(namespace, selector):
        if pod.get("status", {}).get("phase") != "Pending":
            continue
        for cond in pod["status"].get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return f"pod {pod['metadata']['name']} cannot be scheduled: {cond.get('message')}"
    return None


_RESULTS = {
    None: "applied",
    "InvalidSpec": "invalid",
    "PolicyViolation": "invalid",
    "DoesNotFit": "does_not_fit",
}


def _prune(spec: ModelDeploymentSpec, namespace: str, name: str) -> None:
    """Delete the optional children the current spec and policy no longer call for."""
    if spec.replicas <= 1 and k8s.delete("policy/v1", "PodDisruptionBudget", namespace, name):
        log.info("Deleted PodDisruptionBudget %s/%s (one replica)", namespace, name)
    if not _policy.network.enabled and k8s.delete(
        "networking.k8s.io/v1", "NetworkPolicy", namespace, name
    ):
        log.info("Deleted NetworkPolicy %s/%s (no longer in the cluster policy)", namespace, name)


def _reconcile(body: Mapping[str, Any]) -> tuple[str, str]:
    """Converge and report; returns (phase, result label for the reconcile metrics)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous: Mapping[str, Any] = body.get("status") or {}
    objects, spec, plan, problem = _desired(body)
    for obj in objects:
        k8s.apply(obj)
        log.debug("Applied %s %s/%s", obj["kind"], namespace, name)
    if spec is not None and not problem:
        _prune(spec, namespace, name)
    deployment = k8s.get("apps/v1", "Deployment", namespace, name)
    dep_status: Mapping[str, Any] = (deployment or {}).get("status") or {}
    dep_spec: Mapping[str, Any] = (deployment or {}).get("spec") or {}
    model_name = (
        spec.model.name if spec else (body.get("spec", {}).get("model", {}).get("preset") or "")
    )
    selector = selector_string(spec) if spec else previous.get("selector", "")
    observed = status.Observed(
        generation=int(meta.get("generation", 0)),
        model=model_name,
        problem=problem,
        workload=deployment is not None,
        desired=int(dep_spec.get("replicas") or 0),
        replicas=int(dep_status.get("replicas") or 0),
        ready=int(dep_status.get("readyReplicas") or 0),
        updated=int(dep_status.get("updatedReplicas") or 0),
        unschedulable=_unschedulable(namespace, selector) if deployment and selector else None,
        plan=plan.to_status() if plan and not problem else None,
        selector=selector,
        endpoint=manifests.endpoint(spec) if spec else previous.get("endpoint", ""),
    )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = status.compute(previous, observed, now=now)
    patch = status.changes(previous, new)
    if patch:
        k8s.patch_status(namespace, name, patch)
        _announce(body, previous, new)
    metrics.record_status(namespace, name, spec, new)
    return str(new["phase"]), _RESULTS.get(problem.reason if problem else None, "not_served")


def _announce(body: Mapping[str, Any], previous: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """An Event for every condition that changed reason (users see it in `kubectl describe`)."""
    before = {c["type"]: c for c in previous.get("conditions") or []}
    for cond in new["conditions"]:
        old = before.get(cond["type"])
        if old and old.get("reason") == cond["reason"] and old.get("status") == cond["status"]:
            continue
        if cond["type"] == status.READY or cond["status"] == "True":
            warning = cond["reason"] in (
                "InvalidSpec",
                "PolicyViolation",
                "DoesNotFit",
                "NeedsMultiNode",
                "Unschedulable",
            )
            k8s.event(body, reason=cond["reason"], message=cond["message"], warning=warning)
