"""The one level-triggered reconcile: decide (pure) -> execute -> observe -> report.

Every trigger (a ModelDeployment's event, a child's event, the resync) queues the object's
key; :meth:`Reconciler.reconcile` then reads the object and its children from the watch-fed
:class:`~gantry_operator.store.Store`, never from the API server, so there are no
event-specific branches and a reconcile with nothing to do makes no request at all.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from gantry_operator import desired, k8s, manifests, metrics, status
from gantry_operator.config import OperatorConfig
from gantry_operator.execute import Outcome, execute
from gantry_operator.manifests.common import selector_string
from gantry_operator.store import MODEL_DEPLOYMENT, Children, Key, Store, owned_by

log = logging.getLogger(__name__)

_RESULTS = {
    None: "applied",
    "InvalidSpec": "invalid",
    "PolicyViolation": "invalid",
    "DoesNotFit": "does_not_fit",
}
#: Condition reasons that are Warning events.
WARNINGS = frozenset(
    {
        *desired.REFUSALS, "Unschedulable", "NameConflict", "ChildRejected", "ReplicaFailure",
        "ProgressDeadlineExceeded", "OOMKilled", "ImagePullBackOff", "ErrImagePull",
        "InvalidImageName", "CrashLoopBackOff", "CreateContainerConfigError",
        "CreateContainerError", "RunContainerError",
    }
)  # fmt: skip


class Reconciler:
    """Holds the configuration, the store and the intents computed per generation."""

    def __init__(self, store: Store, config: OperatorConfig) -> None:
        self.store, self.config = store, config
        self._intents: dict[str, tuple[int, desired.Intent]] = {}
        self._lock = threading.Lock()

    def intent(self, md: Mapping[str, Any]) -> desired.Intent:
        """The intent for the object's current generation and node pool (computed once each)."""
        uid, generation = md["metadata"]["uid"], int(md["metadata"].get("generation") or 0)
        pool, nodes = self.store.nodes()
        with self._lock:
            cached = self._intents.get(uid)
        if cached is not None and cached[0] == pool and cached[1].generation == generation:
            return cached[1]
        fresh = desired.intent(md, self.config, nodes)
        with self._lock:
            self._intents[uid] = (pool, fresh)
        return fresh

    def forget(self, uid: str) -> None:
        with self._lock:
            self._intents.pop(uid, None)

    def reconcile(self, key: Key) -> str | None:
        """Converge one ModelDeployment; returns the phase, or None if it is gone."""
        md = self.store.get(MODEL_DEPLOYMENT, key)
        if md is None or md["metadata"].get("deletionTimestamp"):
            return None
        started = time.monotonic()
        result = "error"
        try:
            phase, result = self._reconcile(md)
            return phase
        except k8s.NamespaceTerminatingError:
            log.info("Skipped %s/%s: its namespace is being deleted", *key)
            result = "skipped"
            return None
        except k8s.GoneError:
            log.info("Skipped %s/%s: it was deleted while being reconciled", *key)
            result = "skipped"
            return None
        finally:
            metrics.reconciles.labels(result).inc()
            metrics.reconcile_seconds.labels(result).observe(time.monotonic() - started)

    def _reconcile(self, md: Mapping[str, Any]) -> tuple[str, str]:
        meta = md["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        uid = meta["uid"]
        want = self.intent(md)
        unavailable = frozenset(
            kind
            for kind, crd in desired.OPTIONAL_KINDS.items()
            if not self.store.crd_established(crd)
        )
        decision = desired.decide(want, self.store.children(key), uid, unavailable=unavailable)
        outcome = execute(decision, self.store) if _writes(decision) else Outcome()
        observed = _observe(md, want, outcome, self.store.children(key))
        previous: Mapping[str, Any] = md.get("status") or {}
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        new = status.compute(previous, observed, now=now)
        if status.changed(previous, new):
            # Stored at once: a reconcile before the watch event must not write it again.
            self.store.put(MODEL_DEPLOYMENT, k8s.apply_status(*key, new, manager=k8s.OPERATOR))
            _announce(md, previous, new)
        metrics.record_status(key[0], key[1], want.spec, new)
        problem = observed.problem
        return str(new["phase"]), _RESULTS.get(problem.reason if problem else None, "not_served")


def _writes(decision: desired.Decision) -> bool:
    return bool(decision.apply or decision.delete or decision.conflicts)


def _observe(
    md: Mapping[str, Any], want: desired.Intent, outcome: Outcome, children: Children
) -> status.Observed:
    meta = md["metadata"]
    previous: Mapping[str, Any] = md.get("status") or {}
    generation = int(meta.get("generation") or 0)
    problem = want.problem
    if outcome.conflicts:
        problem = status.Problem(
            "NameConflict",
            "; ".join(outcome.conflicts)
            + ": Gantry leaves objects it does not own untouched; rename the ModelDeployment "
            "or remove the other object",
        )
    elif outcome.rejected:
        problem = status.Problem(
            "ChildRejected",
            f"the API server refused {outcome.rejected}; fix the spec field it names",
        )
    applied = problem is None or problem.reason in desired.REFUSALS
    deployment = children.get("Deployment")
    if deployment is not None and not owned_by(deployment, meta["uid"]):
        deployment = None
    dep_status: Mapping[str, Any] = (deployment or {}).get("status") or {}
    dep_spec: Mapping[str, Any] = (deployment or {}).get("spec") or {}
    spec = want.spec
    selector = selector_string(spec) if spec else previous.get("selector", "")
    pods = children.pods if deployment is not None else ()
    return status.Observed(
        generation=generation,
        observed_generation=generation if applied else int(previous.get("observedGeneration") or 0),
        model=want.model or str((md.get("spec") or {}).get("model", {}).get("preset") or ""),
        problem=problem,
        workload=deployment is not None,
        desired=int(dep_spec.get("replicas") or 0),
        replicas=int(dep_status.get("replicas") or 0),
        ready=int(dep_status.get("readyReplicas") or 0),
        updated=int(dep_status.get("updatedReplicas") or 0),
        unschedulable=status.unschedulable(pods),
        failure=status.deployment_failure(deployment) or status.pod_failure(pods),
        plan=want.plan.to_status() if want.plan and problem is None else None,
        selector=selector,
        endpoint=manifests.endpoint(spec) if spec else previous.get("endpoint", ""),
        served_model_name=(
            spec.served_model_name if spec else str(previous.get("servedModelName") or "")
        ),
    )


def _announce(md: Mapping[str, Any], previous: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """An Event for every condition that changed reason (users see it in `kubectl describe`)."""
    before = {c["type"]: c for c in previous.get("conditions") or []}
    for cond in new["conditions"]:
        old = before.get(cond["type"])
        if old and old.get("reason") == cond["reason"] and old.get("status") == cond["status"]:
            continue
        if cond["type"] == status.READY or cond["status"] == "True":
            warning = cond["reason"] in WARNINGS
            k8s.event(md, reason=cond["reason"], message=cond["message"], warning=warning)
