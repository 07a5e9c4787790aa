"""Status computation: conditions, phase, lastTransitionTime and the minimal patch."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from gantry_operator.status import (
    DEGRADED,
    GROUP_RESTART_BOUND,
    PROGRESSING,
    READY,
    Observed,
    Problem,
    changed,
    compute,
    conditions,
    deployment_failure,
    group_leaders,
    group_recreations,
    merge_conditions,
    phase,
    pod_failure,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
PLAN = {"gpuType": "H100-80GB", "tensorParallelSize": 2, "gpusPerReplica": 2}
OLD_PLAN = {"gpuType": "H100-80GB", "tensorParallelSize": 1, "gpusPerReplica": 1}
SELECTOR = "app.kubernetes.io/component=runtime,gantry.dev/model-deployment=md"
ENDPOINT = "http://md.ns.svc:8000/v1"


def observed(**kwargs: Any) -> Observed:
    """A healthy deployment of two replicas, varied by ``kwargs``."""
    base = Observed(
        generation=3,
        model="gpt-oss-120b",
        problem=None,
        workload=True,
        desired=2,
        replicas=2,
        ready=2,
        updated=2,
        plan=PLAN,
        selector=SELECTOR,
        endpoint=ENDPOINT,
    )
    return replace(base, **kwargs)


def by_type(conds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conds}


def test_all_ready() -> None:
    obs = observed()
    status = compute({}, obs, now=T0)
    conds = by_type(status["conditions"])
    assert [c["type"] for c in status["conditions"]] == [READY, PROGRESSING, DEGRADED]
    assert conds[READY] == {
        "type": READY,
        "status": "True",
        "reason": "AllReplicasReady",
        "message": "2 of 2 replicas ready",
        "observedGeneration": 3,
        "lastTransitionTime": T0,
    }
    assert (conds[PROGRESSING]["status"], conds[PROGRESSING]["reason"]) == (
        "False",
        "RolloutComplete",
    )
    assert (conds[DEGRADED]["status"], conds[DEGRADED]["reason"]) == ("False", "AsExpected")
    assert status["phase"] == "Ready"
    assert status["observedGeneration"] == 3
    assert (status["model"], status["replicas"], status["readyReplicas"]) == ("gpt-oss-120b", 2, 2)
    assert (status["selector"], status["endpoint"], status["plan"]) == (SELECTOR, ENDPOINT, PLAN)


def test_served_model_name_is_reported_for_the_gateway() -> None:
    status = compute({}, observed(served_model_name="team-a/gpt"), now=T0)
    assert status["servedModelName"] == "team-a/gpt"
    assert changed({**status, "servedModelName": "other"}, status)


def test_invalid_spec_without_workload_fails() -> None:
    problem = Problem("InvalidSpec", "spec.gpu.type: is required")
    obs = observed(problem=problem, workload=False, desired=0, replicas=0, ready=0, updated=0)
    obs = replace(obs, plan=None, selector="", endpoint="")
    status = compute({}, obs, now=T0)
    conds = by_type(status["conditions"])
    assert conds[READY]["status"] == "False"
    assert conds[READY]["reason"] == "InvalidSpec"
    assert conds[READY]["message"] == "spec.gpu.type: is required"
    assert conds[PROGRESSING]["status"] == "False"
    assert conds[PROGRESSING]["message"] == "Nothing was created: spec.gpu.type: is required"
    assert conds[DEGRADED]["status"] == "False"
    assert status["phase"] == "Failed"
    assert "endpoint" not in status
    assert "plan" not in status
    assert "selector" not in status


def test_does_not_fit_with_a_workload_keeps_the_last_good_plan() -> None:
    problem = Problem("DoesNotFit", "gpt-oss-120b ... needs at least 2 x H100-80GB")
    previous = compute({}, replace(observed(), plan=OLD_PLAN), now=T0)
    obs = observed(problem=problem, plan=None, generation=4)
    status = compute(previous, obs, now=T1)
    conds = by_type(status["conditions"])
    assert conds[DEGRADED]["status"] == "True"
    assert conds[DEGRADED]["reason"] == "DoesNotFit"
    assert conds[DEGRADED]["message"].endswith(problem.message)
    assert "last good workload keeps serving" in conds[DEGRADED]["message"]
    assert conds[DEGRADED]["lastTransitionTime"] == T1  # flipped False -> True
    assert conds[READY]["status"] == "True"  # the old workload still serves
    assert conds[READY]["lastTransitionTime"] == T0  # not flipped
    assert status["plan"] == OLD_PLAN
    assert status["phase"] == "Degraded"
    assert status["endpoint"] == ENDPOINT
    assert {c["observedGeneration"] for c in status["conditions"]} == {4}


def test_does_not_fit_with_an_unready_workload() -> None:
    problem = Problem("DoesNotFit", "too big")
    status = compute({}, observed(problem=problem, ready=0, plan=None), now=T0)
    conds = by_type(status["conditions"])
    assert (conds[READY]["status"], conds[READY]["reason"]) == ("False", "Loading")
    assert conds[DEGRADED]["status"] == "True"
    assert status["phase"] == "Degraded"


def test_partially_ready() -> None:
    status = compute({}, observed(desired=3, replicas=3, ready=1, updated=3), now=T0)
    conds = by_type(status["conditions"])
    assert (conds[READY]["status"], conds[READY]["reason"]) == ("True", "PartiallyReady")
    assert conds[READY]["message"] == "1 of 3 replicas ready"
    assert (conds[PROGRESSING]["status"], conds[PROGRESSING]["reason"]) == ("True", "RollingOut")
    assert conds[PROGRESSING]["message"] == "3 of 3 replicas updated, 1 of 3 replicas ready"
    assert status["phase"] == "Progressing"


def test_rolling_out_a_new_version() -> None:
    status = compute({}, observed(updated=1), now=T0)
    conds = by_type(status["conditions"])
    assert (conds[READY]["status"], conds[READY]["reason"]) == ("True", "AllReplicasReady")
    assert (conds[PROGRESSING]["status"], conds[PROGRESSING]["reason"]) == ("True", "RollingOut")
    assert status["phase"] == "Ready"


def test_loading() -> None:
    status = compute({}, observed(ready=0, updated=2), now=T0)
    conds = by_type(status["conditions"])
    assert (conds[READY]["status"], conds[READY]["reason"]) == ("False", "Loading")
    assert "waiting for vLLM to load the model" in conds[READY]["message"]
    assert status["phase"] == "Progressing"


def test_unschedulable() -> None:
    message = (
        "pod md-abc cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu"
    )
    status = compute({}, observed(ready=0, unschedulable=message), now=T0)
    conds = by_type(status["conditions"])
    assert (conds[READY]["status"], conds[READY]["reason"]) == ("False", "Unschedulable")
    assert conds[READY]["message"] == f"0 of 2 replicas ready: {message}"
    assert (conds[PROGRESSING]["status"], conds[PROGRESSING]["reason"]) == (
        "True",
        "Unschedulable",
    )
    assert conds[PROGRESSING]["message"] == message
    assert status["phase"] == "Pending"


def test_unschedulable_extra_replica_while_others_serve() -> None:
    status = compute({}, observed(desired=3, ready=2, unschedulable="no GPUs"), now=T0)
    conds = by_type(status["conditions"])
    assert (conds[READY]["status"], conds[READY]["reason"]) == ("True", "PartiallyReady")
    assert conds[PROGRESSING]["reason"] == "Unschedulable"
    assert status["phase"] == "Progressing"


def test_scaled_to_zero() -> None:
    status = compute({}, observed(desired=0, replicas=0, ready=0, updated=0), now=T0)
    conds = by_type(status["conditions"])
    assert conds[READY] | {"lastTransitionTime": None} == {
        "type": READY,
        "status": "False",
        "reason": "ScaledToZero",
        "message": "spec.replicas is 0",
        "observedGeneration": 3,
        "lastTransitionTime": None,
    }
    assert (conds[PROGRESSING]["status"], conds[PROGRESSING]["reason"]) == (
        "False",
        "RolloutComplete",
    )
    assert status["phase"] == "Pending"


def test_transition_time_kept_until_a_flip() -> None:
    first = compute({}, observed(), now=T0)
    # Same statuses, different reason and message: no flip, time kept.
    second = compute(first, observed(desired=3, ready=2), now=T1)
    ready = by_type(second["conditions"])[READY]
    assert (ready["status"], ready["reason"]) == ("True", "PartiallyReady")
    assert ready["lastTransitionTime"] == T0
    assert by_type(second["conditions"])[PROGRESSING]["lastTransitionTime"] == T1  # flipped
    # Ready flips to False: the time changes.
    third = compute(second, observed(ready=0), now=T1)
    assert by_type(third["conditions"])[READY]["lastTransitionTime"] == T1


def test_merge_conditions_stamps_missing_times() -> None:
    previous = [{"type": READY, "status": "True", "reason": "X", "message": ""}]
    new = [{"type": READY, "status": "True", "reason": "X", "message": ""}]
    (merged,) = merge_conditions(previous, new, generation=7, now=T1)
    assert merged["lastTransitionTime"] == T1  # no earlier time to keep
    assert merged["observedGeneration"] == 7


def test_conditions_have_camel_case_reasons() -> None:
    cases = [
        observed(),
        observed(ready=1),
        observed(ready=0),
        observed(ready=0, unschedulable="x"),
        observed(desired=0, ready=0),
        observed(problem=Problem("DoesNotFit", "x")),
        observed(problem=Problem("InvalidSpec", "x"), workload=False),
    ]
    for obs in cases:
        for cond in conditions(obs):
            assert re.fullmatch(r"[A-Z][A-Za-z]*", cond["reason"]), cond
            assert cond["status"] in ("True", "False")


@pytest.mark.parametrize(
    "obs",
    [
        observed(),
        observed(ready=1),
        observed(ready=0, unschedulable="x"),
        observed(problem=Problem("DoesNotFit", "x")),
        observed(problem=Problem("InvalidSpec", "x"), workload=False),
    ],
)
def test_nothing_changed_means_no_write(obs: Observed) -> None:
    first = compute({}, obs, now=T0)
    again = compute(first, obs, now=T1)
    assert again == first
    assert not changed(first, again)


def test_changed_looks_only_at_the_operators_fields() -> None:
    first = compute({}, observed(), now=T0)
    assert changed(first, compute(first, observed(ready=1, replicas=1), now=T1))
    # The autoscaler's block (another writer's) never makes the operator write.
    assert not changed({**first, "autoscaler": {"desiredReplicas": 2}}, first)
    # A field the operator no longer sets is a change (server-side apply removes it).
    assert first["endpoint"] == ENDPOINT
    assert changed(first, {k: v for k, v in first.items() if k != "endpoint"})


def pod(name: str, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"phase": "Running", "containerStatuses": [{"name": "runtime", **container}]},
    }


def test_pod_failures_quote_the_underlying_message() -> None:
    pull = pod("p1", state={"waiting": {"reason": "ImagePullBackOff", "message": "no registry"}})
    assert pod_failure([pull]) == Problem("ImagePullBackOff", "pod p1: no registry")
    crash = pod(
        "p2",
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
        lastState={
            "terminated": {"reason": "Error", "message": "missing shard model-2.safetensors"}
        },
    )
    failure = pod_failure([crash])
    assert failure is not None
    assert failure.reason == "CrashLoopBackOff"
    assert "missing shard model-2.safetensors" in failure.message
    oom = pod("p3", lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}})
    failure = pod_failure([oom])
    assert failure is not None
    assert failure.reason == "OOMKilled"
    assert "limits.memory" in failure.message
    assert pod_failure([pod("ok", state={"running": {}})]) is None


def test_deployment_failures_surface_in_conditions() -> None:
    dep = {
        "status": {
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "md-x" is forbidden: no PriorityClass with name gold',
                }
            ]
        }
    }
    failure = deployment_failure(dep)
    assert failure == Problem("ReplicaFailure", dep["status"]["conditions"][0]["message"])
    conds = by_type(conditions(observed(ready=0, failure=failure)))
    assert (conds[READY]["status"], conds[READY]["reason"]) == ("False", "ReplicaFailure")
    assert "PriorityClass" in conds[READY]["message"]
    assert (conds[DEGRADED]["status"], conds[DEGRADED]["reason"]) == ("True", "ReplicaFailure")
    timed_out = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet has timed out",
    }
    stuck = {"status": {"conditions": [timed_out]}}
    failure = deployment_failure(stuck)
    assert failure is not None
    conds = by_type(conditions(observed(ready=0, failure=failure)))
    assert (conds[PROGRESSING]["status"], conds[PROGRESSING]["reason"]) == (
        "False",
        "ProgressDeadlineExceeded",
    )


def test_observed_generation_stays_when_the_spec_was_not_applied() -> None:
    status = compute({}, observed(generation=4, observed_generation=3), now=T0)
    assert status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 4 for c in status["conditions"])


def test_phase_uses_the_conditions() -> None:
    obs = observed()
    conds = conditions(obs)
    assert phase(conds, obs) == "Ready"
    degraded = [{**c, "status": "True"} if c["type"] == DEGRADED else c for c in conds]
    assert phase(degraded, obs) == "Degraded"


def leader(group: int, uid: str, revision: str = "r1") -> dict[str, Any]:
    labels = {
        "leaderworkerset.sigs.k8s.io/worker-index": "0",
        "leaderworkerset.sigs.k8s.io/group-index": str(group),
        "leaderworkerset.sigs.k8s.io/template-revision-hash": revision,
    }
    return {"metadata": {"name": f"m-{group}", "uid": uid, "labels": labels}}


def worker(group: int, uid: str) -> dict[str, Any]:
    pod = leader(group, uid)
    pod["metadata"]["labels"]["leaderworkerset.sigs.k8s.io/worker-index"] = "1"
    return pod


def test_group_recreations_count_new_leaders_of_the_same_revision() -> None:
    before = group_leaders([leader(0, "a"), worker(0, "w"), leader(1, "b")])
    assert before == {"0": ("a", "r1"), "1": ("b", "r1")}
    recreated = group_leaders([leader(0, "a2"), leader(1, "b")])
    assert group_recreations(before, recreated) == 1
    # An update (new revision) and a new group (scale-up) are not restarts.
    assert group_recreations(before, group_leaders([leader(0, "a3", "r2"), leader(2, "c")])) == 0


def test_a_group_restart_loop_degrades_with_the_bound_and_the_last_failure() -> None:
    failing = observed(
        desired=1,
        ready=0,
        group_restarts=GROUP_RESTART_BOUND + 1,
        failure=Problem("CrashLoopBackOff", "pod m-0-1: leader m-0.m did not answer"),
    )
    degraded = by_type(conditions(failing))["Degraded"]
    assert degraded["status"] == "True"
    assert degraded["reason"] == "GroupRestartLoop"
    assert f"{GROUP_RESTART_BOUND + 1} times (bound {GROUP_RESTART_BOUND})" in degraded["message"]
    assert "leader m-0.m did not answer" in degraded["message"]
    status = compute({}, failing, now="2026-12-03T00:00:00Z")
    assert status["groupRestarts"] == GROUP_RESTART_BOUND + 1
    within = replace(failing, group_restarts=GROUP_RESTART_BOUND)
    assert by_type(conditions(within))["Degraded"]["reason"] == "CrashLoopBackOff"
    assert "groupRestarts" not in compute({}, replace(failing, group_restarts=None), now="x")
