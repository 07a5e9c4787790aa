"""Pure status computation: observed world -> ``status`` of a ModelDeployment.

Conditions follow the Kubernetes API conventions: ``Ready``, ``Progressing`` and ``Degraded``
with CamelCase reasons; ``lastTransitionTime`` changes only when a condition's status flips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"


@dataclass(frozen=True)
class Problem:
    """Why the current spec cannot be applied (invalid, does not fit, needs multi-node)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    generation: int
    model: str
    #: The problem with the current spec, or None when it was applied.
    problem: Problem | None
    #: The runtime Deployment exists (the current or the last good one).
    workload: bool
    desired: int = 0
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    #: A scheduler message when runtime pods cannot be placed.
    unschedulable: str | None = None
    plan: Mapping[str, Any] | None = None
    selector: str = ""
    endpoint: str = ""


def _cond(type_: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }


def conditions(obs: Observed) -> list[dict[str, Any]]:
    """The three conditions (without timestamps) for what was observed."""
    problem = obs.problem
    if problem and not obs.workload:
        return [
            _cond(READY, False, problem.reason, problem.message),
            _cond(PROGRESSING, False, problem.reason, "Nothing was created: " + problem.message),
            _cond(DEGRADED, False, problem.reason, "No workload exists yet"),
        ]
    counts = f"{obs.ready} of {obs.desired} replicas ready"
    if obs.desired == 0:
        ready = _cond(READY, False, "ScaledToZero", "spec.replicas is 0")
    elif obs.ready >= obs.desired:
        ready = _cond(READY, True, "AllReplicasReady", counts)
    elif obs.ready > 0:
        ready = _cond(READY, True, "PartiallyReady", counts)
    elif obs.unschedulable:
        ready = _cond(READY, False, "Unschedulable", f"{counts}: {obs.unschedulable}")
    else:
        ready = _cond(READY, False, "Loading", f"{counts}; waiting for vLLM to load the model")
    if obs.unschedulable:
        progressing = _cond(PROGRESSING, True, "Unschedulable", obs.unschedulable)
    elif obs.updated < obs.desired or obs.ready < obs.desired:
        progressing = _cond(
            PROGRESSING,
            True,
            "RollingOut",
            f"{obs.updated} of {obs.desired} replicas updated, {counts}",
        )
    else:
        progressing = _cond(PROGRESSING, False, "RolloutComplete", counts)
    if problem:
        degraded = _cond(
            DEGRADED, True, problem.reason,
            f"The last good workload keeps serving; the new spec was not applied: "
            f"{problem.message}",
        )  # fmt: skip
    else:
        degraded = _cond(DEGRADED, False, "AsExpected", "The current spec is applied")
    return [ready, progressing, degraded]


def phase(conds: Sequence[Mapping[str, Any]], obs: Observed) -> str:
    by_type = {c["type"]: c for c in conds}
    if obs.problem and not obs.workload:
        return "Failed"
    if by_type[DEGRADED]["status"] == "True":
        return "Degraded"
    if by_type[READY]["reason"] == "AllReplicasReady":
        return "Ready"
    if obs.ready == 0 and (obs.unschedulable or obs.desired == 0):
        return "Pending"
    return "Progressing"


def merge_conditions(
    previous: Sequence[Mapping[str, Any]],
    new: Sequence[Mapping[str, Any]],
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Stamp ``observedGeneration`` and keep ``lastTransitionTime`` unless the status flipped."""
    before = {c.get("type"): c for c in previous}
    merged = []
    for cond in new:
        old = before.get(cond["type"])
        flipped = old is None or old.get("status") != cond["status"]
        stamp = (
            now
            if flipped or not old or not old.get("lastTransitionTime")
            else old["lastTransitionTime"]
        )
        merged.append({**cond, "observedGeneration": generation, "lastTransitionTime": stamp})
    return merged


def compute(previous: Mapping[str, Any], obs: Observed, *, now: str) -> dict[str, Any]:
    """The whole status object; ``now`` is used only for conditions that flipped."""
    conds = conditions(obs)
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "phase": phase(conds, obs),
        "model": obs.model,
        "replicas": obs.replicas,
        "readyReplicas": obs.ready,
        "conditions": merge_conditions(
            previous.get("conditions") or [], conds, generation=obs.generation, now=now
        ),
    }
    if obs.selector:
        status["selector"] = obs.selector
    if obs.endpoint and obs.workload:
        status["endpoint"] = obs.endpoint
    plan = obs.plan if obs.plan is not None else previous.get("plan")
    if plan:
        status["plan"] = dict(plan)
    return status


def changes(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns ``previous`` into ``new`` (empty when nothing changed)."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if previous.get(k) != v}
    for key in previous:
        if key not in new and key != "autoscaler":
            patch[key] = None
    return patch
