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
from dataclasses import replace
from typing import Any

from gantry_operator import desired, k8s, manifests, metrics, status
from gantry_operator.config import OperatorConfig
from gantry_operator.execute import Outcome, execute
from gantry_operator.manifests.common import selector_string
from gantry_operator.manifests.leaderworkerset import KIND as LWS_KIND
from gantry_operator.store import MODEL_DEPLOYMENT, WORKLOAD_KINDS, Children, Key, Store, owned_by

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
        self._intents: dict[str, tuple[tuple[int, frozenset[str]], desired.Intent]] = {}
        #: Multi-node groups: the leaders last seen per ModelDeployment uid (to count group
        #: recreations between reconciles; the count itself lives in status.groupRestarts).
        self._leaders: dict[str, status.Leaders] = {}
        self._lock = threading.Lock()

    def intent(self, md: Mapping[str, Any]) -> desired.Intent:
        """The intent for the object's current generation, node pool and optional CRDs
        (computed once each)."""
        uid, generation = md["metadata"]["uid"], int(md["metadata"].get("generation") or 0)
        version, nodes = self.store.nodes()
        crds = self.store.crds()
        with self._lock:
            cached = self._intents.get(uid)
        if (
            cached is not None
            and cached[0] == (version, crds)
            and cached[1].generation == generation
        ):
            return cached[1]
        fresh = desired.intent(md, self.config, nodes, crds)
        with self._lock:
            self._intents[uid] = ((version, crds), fresh)
        return fresh

    def forget(self, uid: str) -> None:
        with self._lock:
            self._intents.pop(uid, None)
            self._leaders.pop(uid, None)

    def _group_restarts(self, md: Mapping[str, Any], children: Children) -> int | None:
        """status.groupRestarts: what it said, plus the group recreations seen since."""
        groups = children.get(LWS_KIND)
        uid = md["metadata"]["uid"]
        if groups is None or not owned_by(groups, uid):
            return None
        now = status.group_leaders(children.pods)
        with self._lock:
            before = self._leaders.get(uid, {})
            self._leaders[uid] = {**before, **now}
        previous = int((md.get("status") or {}).get("groupRestarts") or 0)
        return previous + status.group_recreations(before, now)

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
        now_children = self.store.children(key)
        observed = _observe(md, want, outcome, now_children)
        if observed.workload:
            observed = replace(observed, group_restarts=self._group_restarts(md, now_children))
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
    workload = _workload(want, children, meta["uid"])
    dep_status: Mapping[str, Any] = (workload or {}).get("status") or {}
    dep_spec: Mapping[str, Any] = (workload or {}).get("spec") or {}
    groups = workload is not None and workload["kind"] == LWS_KIND
    spec = want.spec
    selector = selector_string(spec, leaders_only=groups) if spec else previous.get("selector", "")
    pods = children.pods if workload is not None else ()
    return status.Observed(
        generation=generation,
        observed_generation=generation if applied else int(previous.get("observedGeneration") or 0),
        model=want.model or str((md.get("spec") or {}).get("model", {}).get("preset") or ""),
        problem=problem,
        workload=workload is not None,
        desired=int(dep_spec.get("replicas") or 0),
        replicas=int(dep_status.get("replicas") or 0),
        ready=int(dep_status.get("readyReplicas") or 0),
        updated=int(dep_status.get("updatedReplicas") or 0),
        unschedulable=status.unschedulable(pods),
        failure=status.deployment_failure(workload) or status.pod_failure(pods),
        plan=want.plan.to_status() if want.plan and problem is None else None,
        selector=selector,
        endpoint=manifests.endpoint(spec) if spec else previous.get("endpoint", ""),
        served_model_name=(
            spec.served_model_name if spec else str(previous.get("servedModelName") or "")
        ),
    )


def _workload(want: desired.Intent, children: Children, uid: str) -> Mapping[str, Any] | None:
    """The workload that serves the ModelDeployment: the one the intent calls for once it
    serves, until then the one that still serves (or the intended one, while none does)."""
    owned = [obj for kind in WORKLOAD_KINDS if (obj := children.get(kind)) and owned_by(obj, uid)]
    intended = {obj["kind"] for obj in want.objects}
    wanted = [obj for obj in owned if obj["kind"] in intended]
    if wanted and desired.serving(wanted[0]):
        return wanted[0]
    others = [obj for obj in owned if obj["kind"] not in intended and desired.serving(obj)]
    candidates = others or wanted or owned
    return candidates[0] if candidates else None


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
