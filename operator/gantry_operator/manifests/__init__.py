"""Pure builders: (parsed spec, plan) -> the Kubernetes objects a ModelDeployment becomes.

No I/O, no clock, no context: the same inputs always give the same dicts (sorted env, labels
and args), so golden files pin them and server-side apply sees no spurious changes.
"""

from __future__ import annotations

from typing import Any

from gantry_operator.cluster_policy import (
    InferencePoolSettings,
    MultiNodeSettings,
    NetworkPolicySettings,
)
from gantry_operator.manifests.common import Owner, labels, selector_labels
from gantry_operator.manifests.deployment import build_deployment
from gantry_operator.manifests.inference_pool import build_inference_pool
from gantry_operator.manifests.launch import launch_spec
from gantry_operator.manifests.leaderworkerset import build_leader_worker_set
from gantry_operator.manifests.network import build_network_policy
from gantry_operator.manifests.service import build_pdb, build_service, endpoint
from gantry_operator.planner import Plan
from gantry_operator.spec import ModelDeploymentSpec

__all__ = [
    "Owner",
    "build_all",
    "build_deployment",
    "build_inference_pool",
    "build_leader_worker_set",
    "build_network_policy",
    "build_pdb",
    "build_service",
    "endpoint",
    "labels",
    "launch_spec",
    "selector_labels",
]


def build_all(
    spec: ModelDeploymentSpec,
    plan: Plan,
    *,
    owner: Owner,
    network: NetworkPolicySettings | None = None,
    multi_node: MultiNodeSettings | None = None,
    inference_pool: InferencePoolSettings | None = None,
) -> list[dict[str, Any]]:
    """Every child object, in apply order. The workload is a Deployment when a replica fits
    one node and a LeaderWorkerSet (one group per replica) when it spans nodes. The PDB
    exists only with more than one replica (its one disruption at a time is one replica, or
    one group, down at most), the NetworkPolicy only when the cluster policy asks for it (and
    before the pods exist), the InferencePool only when the policy asks for it (the reconcile
    leaves it out while its CRD is not established)."""
    objects = []
    groups = plan.nodes_per_replica > 1
    if network is not None and network.enabled:
        objects.append(build_network_policy(spec, owner=owner, settings=network, groups=groups))
    if groups:
        settings = multi_node or MultiNodeSettings(enabled=True)
        objects.append(build_leader_worker_set(spec, plan, owner=owner, settings=settings))
    else:
        objects.append(build_deployment(spec, plan, owner=owner))
    objects.append(build_service(spec, owner=owner, leaders_only=groups))
    if spec.replicas > 1:
        objects.append(build_pdb(spec, owner=owner))
    if inference_pool is not None and inference_pool.enabled:
        objects.append(
            build_inference_pool(spec, owner=owner, settings=inference_pool, leaders_only=groups)
        )
    return objects
