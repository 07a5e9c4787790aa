"""Deciding what to write: only what differs, never another owner's object, deletes only of our
own children. Pure: the observed children are dicts shaped like the API server returns them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gantry_operator import drift
from gantry_operator.cluster_policy import MultiNodeSettings, NetworkPolicySettings, Policy
from gantry_operator.config import OperatorConfig
from gantry_operator.desired import Decision, Intent, decide, intent
from gantry_operator.manifests.leaderworkerset import CRD as LWS_CRD
from gantry_operator.store import Children

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
UID = "0b7c9d2e-1111-4000-8000-000000000001"


def model_deployment(replicas: int = 1, generation: int = 1) -> dict[str, Any]:
    md = yaml.safe_load((EXAMPLES / "gpt-oss-20b.yaml").read_text())
    md["metadata"].update(namespace="llm", uid=UID, generation=generation)
    md["spec"]["replicas"] = replicas
    return dict(md)


def as_served(obj: Any, uid: str = "child-uid") -> dict[str, Any]:
    """What the API server returns for an applied object: defaults around our fields."""
    served = copy.deepcopy(dict(obj))
    served["metadata"].update(uid=uid, resourceVersion="10", managedFields=[{"manager": "x"}])
    served.setdefault("spec", {})["extraDefaulted"] = True
    served["status"] = {"observedGeneration": 1}
    return served


def children(want: Intent, **overrides: Any) -> Children:
    objects = {obj["kind"]: as_served(obj) for obj in want.objects}
    objects.update(overrides)
    return Children({k: v for k, v in objects.items() if v is not None})


def kinds(decision: Decision) -> list[str]:
    return [obj["kind"] for obj in decision.apply]


def test_nothing_exists_everything_is_created_in_order() -> None:
    want = intent(model_deployment(replicas=2), OperatorConfig())
    decision = decide(want, Children(), UID)
    assert kinds(decision) == ["Deployment", "Service", "PodDisruptionBudget"]
    assert not decision.delete
    assert not decision.conflicts


def test_at_rest_nothing_is_written() -> None:
    want = intent(model_deployment(replicas=2), OperatorConfig())
    decision = decide(want, children(want), UID)
    assert decision.apply == ()
    assert decision.delete == ()


def test_a_hand_edit_of_an_owned_field_is_repaired() -> None:
    want = intent(model_deployment(), OperatorConfig())
    edited = as_served(want.objects[0])
    edited["spec"]["replicas"] = 5
    assert kinds(decide(want, children(want, Deployment=edited), UID)) == ["Deployment"]


def test_a_spec_change_rewrites_only_the_children_it_changes() -> None:
    old = intent(model_deployment(), OperatorConfig())
    md = model_deployment(generation=2)
    md["spec"]["serving"]["shutdownTimeoutSeconds"] = 90
    new = intent(md, OperatorConfig())
    decision = decide(new, children(old), UID)
    assert kinds(decision) == ["Deployment"]


def test_someone_elses_object_of_the_same_name_is_left_alone() -> None:
    want = intent(model_deployment(), OperatorConfig())
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "gpt-oss-20b", "namespace": "llm", "uid": "other"},
        "spec": {"selector": {"app": "billing"}},
    }
    decision = decide(want, children(want, Service=theirs, Deployment=None), UID)
    assert decision.apply == ()  # nothing half-applied: not even the missing Deployment
    assert decision.conflicts == ("Service gpt-oss-20b already exists (not created by Gantry)",)


def test_only_owned_children_are_deleted() -> None:
    want = intent(model_deployment(replicas=1), OperatorConfig())
    ours = as_served(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {
                "name": "gpt-oss-20b",
                "namespace": "llm",
                "ownerReferences": [
                    {
                        "kind": "ModelDeployment",
                        "name": "gpt-oss-20b",
                        "uid": UID,
                        "controller": True,
                    }
                ],
            },
        },
        uid="pdb-uid",
    )
    decision = decide(want, children(want, PodDisruptionBudget=ours), UID)
    assert [(r.kind, r.name, r.uid) for r in decision.delete] == [
        ("PodDisruptionBudget", "gpt-oss-20b", "pdb-uid")
    ]
    platform = copy.deepcopy(ours)
    platform["metadata"]["ownerReferences"] = []
    netpol = {**platform, "kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1"}
    decision = decide(want, children(want, PodDisruptionBudget=platform, NetworkPolicy=netpol), UID)
    assert decision.delete == ()
    assert decision.conflicts == ()  # not wanted under that name: not ours to judge


def test_a_problem_writes_nothing_and_keeps_the_last_good_workload() -> None:
    good = intent(model_deployment(), OperatorConfig())
    md = model_deployment(generation=2)
    md["spec"]["gpu"] = {"type": "H100-80GB", "count": 1}
    md["spec"]["serving"]["targetConcurrency"] = 4096
    bad = intent(md, OperatorConfig())
    assert bad.problem is not None
    assert bad.problem.reason == "DoesNotFit"
    decision = decide(bad, children(good), UID)
    assert decision.apply == ()
    assert decision.delete == ()


def test_policy_violation_is_decided_before_any_builder() -> None:
    md = model_deployment()
    config = OperatorConfig(policy=Policy(allowed_regions=("us-east-1",)))
    want = intent(md, config)
    assert want.problem is not None
    assert want.problem.reason == "PolicyViolation"
    assert want.objects == ()


def test_network_policy_comes_and_goes_with_the_cluster_policy() -> None:
    on = OperatorConfig(policy=Policy(network=NetworkPolicySettings(enabled=True)))
    with_netpol = intent(model_deployment(), on)
    assert kinds(decide(with_netpol, Children(), UID))[0] == "NetworkPolicy"
    without = intent(model_deployment(), OperatorConfig())
    decision = decide(without, children(with_netpol), UID)
    assert decision.apply == ()
    assert [r.kind for r in decision.delete] == ["NetworkPolicy"]


@pytest.mark.parametrize(
    ("desired", "observed", "equal"),
    [
        ("500m", "0.5", True),
        ("1Gi", "1073741824", True),
        ("2", "2000m", True),
        ("1G", "1Gi", False),
        ("http", "http", True),
        ("lots", "lots", True),
        ("a", "b", False),
    ],
)
def test_quantities_compare_by_value(desired: str, observed: str, equal: bool) -> None:
    assert drift.contains({"q": observed}, {"q": desired}) is equal


def test_lists_compare_item_by_item_and_by_length() -> None:
    assert drift.contains([{"a": 1, "x": 2}], [{"a": 1}])
    assert not drift.contains([{"a": 1}, {"a": 2}], [{"a": 1}])
    assert not drift.contains({"a": [1]}, {"a": [2]})


def test_the_hash_changes_when_a_field_is_dropped() -> None:
    obj = {"kind": "Service", "metadata": {"name": "x"}, "spec": {"a": 1, "b": 2}}
    stamped = drift.stamp(obj)
    dropped = drift.stamp({**obj, "spec": {"a": 1}})
    # Every field of the new object is still there, but the hash tells that b must go.
    assert drift.contains(stamped, {**dropped, "metadata": {"name": "x"}})
    assert drift.differs(dropped, stamped)
    assert not drift.differs(stamped, as_served(stamped))
    assert drift.stamp(stamped) == stamped


def l4_node(gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"l4-{gpus}", "labels": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def test_gpus_per_node_come_from_the_node_pool() -> None:
    md = model_deployment()
    md["spec"].update(model={"preset": "gpt-oss-120b"}, gpu={"type": "L4"})
    md["spec"]["serving"]["maxContextLength"] = 131072
    four = intent(md, OperatorConfig(), [l4_node(4)])
    assert four.problem is not None
    assert four.problem.reason == "MultiNodeUnavailable"
    eight = intent(md, OperatorConfig(), [l4_node(4), l4_node(8)])
    assert eight.problem is None
    assert eight.plan is not None
    assert (eight.plan.tensor_parallel_size, eight.plan.nodes_per_replica) == (8, 1)


MULTI_NODE = OperatorConfig(policy=Policy(multi_node=MultiNodeSettings(enabled=True)))


def kimi(replicas: int = 1) -> dict[str, Any]:
    md = model_deployment(replicas=replicas)
    md["spec"].update(model={"preset": "kimi-k2"}, gpu={"type": "H200"})
    md["spec"]["serving"]["maxContextLength"] = 131072
    return md


@pytest.mark.parametrize(
    ("config", "crds", "says"),
    [
        (OperatorConfig(), frozenset({LWS_CRD}), "leaderWorkerSet.enabled=true"),
        (MULTI_NODE, frozenset(), f"its CRD {LWS_CRD} is not installed"),
    ],
)
def test_multi_node_without_leader_worker_set_creates_nothing(
    config: OperatorConfig, crds: frozenset[str], says: str
) -> None:
    want = intent(kimi(), config, crds=crds)
    assert want.problem is not None
    assert want.problem.reason == "MultiNodeUnavailable"
    assert says in want.problem.message
    assert "H200 or B200" in want.problem.message or "more memory" in want.problem.message
    assert decide(want, Children(), UID).apply == ()


def test_multi_node_replicas_are_leader_worker_set_groups() -> None:
    want = intent(kimi(replicas=2), MULTI_NODE, crds=frozenset({LWS_CRD}))
    assert want.problem is None
    assert want.plan is not None
    assert kinds(decide(want, Children(), UID)) == [
        "LeaderWorkerSet", "Service", "PodDisruptionBudget"
    ]  # fmt: skip
    lws = next(o for o in want.objects if o["kind"] == "LeaderWorkerSet")
    template = lws["spec"]["leaderWorkerTemplate"]
    assert lws["spec"]["replicas"] == 2
    assert template["size"] == want.plan.nodes_per_replica > 1
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    per_node = str(want.plan.gpus_per_replica // want.plan.nodes_per_replica)
    for role in ("leaderTemplate", "workerTemplate"):
        (container,) = template[role]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == per_node
    (leader,) = template["leaderTemplate"]["spec"]["containers"]
    (worker,) = template["workerTemplate"]["spec"]["containers"]
    assert "readinessProbe" in leader
    assert "readinessProbe" not in worker
    service = next(o for o in want.objects if o["kind"] == "Service")
    assert service["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    # The pods of one group stay in one region (LeaderWorkerSet alone would not keep them so).
    for role in ("leaderTemplate", "workerTemplate"):
        affinity = template[role]["spec"]["affinity"]
        (term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["matchLabelKeys"] == ["leaderworkerset.sigs.k8s.io/group-key"]
        assert term["topologyKey"] == "topology.kubernetes.io/region"
        assert "nodeAffinity" in affinity


def test_exclusive_topology_comes_from_the_cluster_policy() -> None:
    settings = MultiNodeSettings(enabled=True, exclusive_topology_key="example.com/rack")
    config = OperatorConfig(policy=Policy(multi_node=settings))
    want = intent(kimi(), config, crds=frozenset({LWS_CRD}))
    lws = next(o for o in want.objects if o["kind"] == "LeaderWorkerSet")
    annotations = lws["metadata"]["annotations"]
    assert annotations["leaderworkerset.sigs.k8s.io/exclusive-topology"] == "example.com/rack"


def _ready(obj: Any, ready: int) -> dict[str, Any]:
    served = as_served(obj, uid=f"{obj['kind']}-uid")
    served["status"] = {"readyReplicas": ready, "updatedReplicas": ready}
    return served


def test_a_move_to_multi_node_keeps_the_deployment_until_the_groups_serve() -> None:
    single = intent(model_deployment(), OperatorConfig())
    deployment = _ready(next(o for o in single.objects if o["kind"] == "Deployment"), 1)
    want = intent(kimi(), MULTI_NODE, crds=frozenset({LWS_CRD}))
    lws = next(o for o in want.objects if o["kind"] == "LeaderWorkerSet")
    loading = decide(
        want, Children({"Deployment": deployment, "LeaderWorkerSet": _ready(lws, 0)}), UID
    )
    assert loading.delete == ()
    served = decide(
        want, Children({"Deployment": deployment, "LeaderWorkerSet": _ready(lws, 1)}), UID
    )
    assert [ref.kind for ref in served.delete] == ["Deployment"]
