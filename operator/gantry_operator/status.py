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
    #: The name OpenAI clients send as ``model`` (the gateway routes by it).
    served_model_name: str = ""
    #: Why replicas fail (ReplicaFailure, ProgressDeadlineExceeded, CrashLoopBackOff, ...).
    failure: Problem | None = None
    #: The generation the operator has acted on (the current one unless the write failed).
    observed_generation: int | None = None
    #: Multi-node replicas: group recreations seen so far (None: not a multi-node workload).
    group_restarts: int | None = None


#: Group recreations after which a multi-node model that is not fully Ready is Degraded with
#: reason GroupRestartLoop (LeaderWorkerSet itself recreates a group without limit).
GROUP_RESTART_BOUND = 3


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
    failure = obs.failure
    if obs.desired == 0:
        ready = _cond(READY, False, "ScaledToZero", "spec.replicas is 0")
    elif obs.ready >= obs.desired:
        ready = _cond(READY, True, "AllReplicasReady", counts)
    elif obs.ready > 0:
        ready = _cond(READY, True, "PartiallyReady", counts)
    elif obs.unschedulable:
        ready = _cond(READY, False, "Unschedulable", f"{counts}: {obs.unschedulable}")
    elif failure:
        ready = _cond(READY, False, failure.reason, f"{counts}: {failure.message}")
    else:
        ready = _cond(READY, False, "Loading", f"{counts}; waiting for vLLM to load the model")
    if obs.unschedulable:
        progressing = _cond(PROGRESSING, True, "Unschedulable", obs.unschedulable)
    elif failure and failure.reason == "ProgressDeadlineExceeded":
        progressing = _cond(PROGRESSING, False, failure.reason, failure.message)
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
    elif restart_loop(obs):
        last = f"; last failure: {failure.message}" if failure else ""
        degraded = _cond(
            DEGRADED, True, "GroupRestartLoop",
            f"multi-node groups were recreated {obs.group_restarts} times (bound "
            f"{GROUP_RESTART_BOUND}) and {counts}: a pod of each group keeps failing or "
            f"disappearing{last}; see `kubectl logs` of the group's pods and their events",
        )  # fmt: skip
    elif failure and obs.desired > 0 and obs.ready < obs.desired:
        degraded = _cond(DEGRADED, True, failure.reason, failure.message)
    else:
        degraded = _cond(DEGRADED, False, "AsExpected", "The current spec is applied")
    return [ready, progressing, degraded]


def restart_loop(obs: Observed) -> bool:
    return (obs.group_restarts or 0) > GROUP_RESTART_BOUND and obs.ready < obs.desired


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
    generation = obs.generation if obs.observed_generation is None else obs.observed_generation
    status: dict[str, Any] = {
        "observedGeneration": generation,
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
    if obs.group_restarts is not None:
        status["groupRestarts"] = obs.group_restarts
    if obs.endpoint and obs.workload:
        status["endpoint"] = obs.endpoint
    if obs.served_model_name:
        status["servedModelName"] = obs.served_model_name
    plan = obs.plan if obs.plan is not None else previous.get("plan")
    if plan:
        status["plan"] = dict(plan)
    return status


#: The status fields the operator writes (``autoscaler`` belongs to the autoscaler).
OPERATOR_FIELDS = (
    "observedGeneration", "phase", "model", "replicas", "readyReplicas", "conditions",
    "selector", "endpoint", "plan", "groupRestarts", "servedModelName",
)  # fmt: skip


def changed(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when the operator's part of the status differs from what the object holds."""
    return any(previous.get(key) != new.get(key) for key in OPERATOR_FIELDS)


_WAITING_FAILURES = (
    "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
)  # fmt: skip


def unschedulable(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The scheduler's message for the first runtime pod it cannot place."""
    for pod in pods:
        pod_status = pod.get("status") or {}
        if pod_status.get("phase") != "Pending":
            continue
        for cond in pod_status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return f"pod {pod['metadata']['name']} cannot be scheduled: {cond.get('message')}"
    return None


def pod_failure(pods: Sequence[Mapping[str, Any]]) -> Problem | None:
    """Why a runtime container fails: image pulls, crash loops, OOM kills (with the message)."""
    for pod in pods:
        name = pod["metadata"]["name"]
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            last = (container.get("lastState") or {}).get("terminated") or {}
            if last.get("reason") == "OOMKilled":
                return Problem(
                    "OOMKilled",
                    f"pod {name} was killed for running out of memory (exit code "
                    f"{last.get('exitCode')}); raise spec.runtime.resources.limits.memory",
                )
            if waiting.get("reason") in _WAITING_FAILURES:
                detail = waiting.get("message") or last.get("message") or ""
                if last.get("message") and last.get("message") not in detail:
                    detail = f"{detail}; last exit: {last['message']}".strip("; ")
                return Problem(str(waiting["reason"]), f"pod {name}: {detail or waiting['reason']}")
    return None


def deployment_failure(deployment: Mapping[str, Any] | None) -> Problem | None:
    """The Deployment's own failure conditions (ReplicaFailure, ProgressDeadlineExceeded)."""
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return Problem("ReplicaFailure", str(cond.get("message") or cond.get("reason")))
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return Problem("ProgressDeadlineExceeded", str(cond.get("message")))
    return None


#: LeaderWorkerSet's pod labels: which group a pod belongs to, its index in the group, and the
#: template revision it was made from.
GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
REVISION = "leaderworkerset.sigs.k8s.io/template-revision-hash"

Leaders = Mapping[str, tuple[str, str]]


def group_leaders(pods: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """group index -> (leader pod uid, template revision) of the leaders present."""
    leaders = {}
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if labels.get(WORKER_INDEX) == "0" and GROUP_INDEX in labels:
            leaders[str(labels[GROUP_INDEX])] = (
                str(pod["metadata"].get("uid")),
                str(labels.get(REVISION, "")),
            )
    return leaders


def group_recreations(before: Leaders, now: Leaders) -> int:
    """Groups whose leader was replaced by one of the same template revision: LeaderWorkerSet
    recreated the group after a failure (an update changes the revision; a scale-down removes
    the group index)."""
    return sum(
        1
        for group, (uid, revision) in now.items()
        if group in before and before[group][0] != uid and before[group][1] == revision
    )
