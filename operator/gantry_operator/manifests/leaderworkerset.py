"""The runtime of a replica that spans nodes: one LeaderWorkerSet group per replica.

A group holds one pod per node (all of that node's GPUs); worker index 0, the leader, serves the
OpenAI API and the Service selects it alone; the workers run vLLM headless and join the leader.
Every pod gets the same launch spec; ``gantry-runtime`` derives its rank from the env the
LeaderWorkerSet controller injects (``LWS_LEADER_ADDRESS``, ``LWS_GROUP_SIZE``,
``LWS_WORKER_INDEX``).
"""

from __future__ import annotations

from typing import Any

from gantry_operator.cluster_policy import MultiNodeSettings
from gantry_operator.manifests.common import LEADER_LABEL, Owner, metadata
from gantry_operator.manifests.deployment import pod_template
from gantry_operator.manifests.launch import multinode_env
from gantry_operator.planner import Plan
from gantry_operator.spec import ModelDeploymentSpec

API_VERSION = "leaderworkerset.x-k8s.io/v1"
KIND = "LeaderWorkerSet"
PLURAL = "leaderworkersets"
#: The CRD whose presence makes multi-node replicas possible.
CRD = f"{PLURAL}.leaderworkerset.x-k8s.io"
#: Labels the LeaderWorkerSet controller puts on every pod of a group.
SET_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
WORKER_INDEX_LABEL = LEADER_LABEL
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
EXCLUSIVE_TOPOLOGY = "leaderworkerset.sigs.k8s.io/exclusive-topology"
#: Set by the LeaderWorkerSet controller on every pod of a group, one value per group.
GROUP_KEY_LABEL = "leaderworkerset.sigs.k8s.io/group-key"
#: Without a policy's topology key, a group's pods at least share a region: vLLM's collective
#: traffic between the pods of one replica must not cross regions.
DEFAULT_GROUP_TOPOLOGY = "topology.kubernetes.io/region"
#: Pods of this role serve HTTP: the Service, the autoscaler and HPAs select them alone.
LEADER = {WORKER_INDEX_LABEL: "0"}


def build_leader_worker_set(
    spec: ModelDeploymentSpec,
    plan: Plan,
    *,
    owner: Owner,
    settings: MultiNodeSettings,
) -> dict[str, Any]:
    meta = metadata(spec, owner)
    if settings.exclusive_topology_key:
        # One group per topology domain (a rack, an NVLink or InfiniBand block), all its pods in it.
        meta["annotations"] = {EXCLUSIVE_TOPOLOGY: settings.exclusive_topology_key}
    env = tuple(multinode_env(plan))
    labels = dict(meta["labels"])
    together = settings.exclusive_topology_key or DEFAULT_GROUP_TOPOLOGY
    leader = pod_template(spec, plan, labels=labels, extra_env=env)
    worker = pod_template(spec, plan, labels=labels, serves=False, extra_env=env)
    for template in (leader, worker):
        _keep_together(template, spec.name, together)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            # Workers start with the leader: vLLM's leader is Ready only once every worker has
            # joined, so waiting for a Ready leader would never end. gantry-runtime on a worker
            # waits for the leader's address and port instead.
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": plan.nodes_per_replica,
                # A group is one vLLM instance: any pod lost or restarted restarts all of it.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
            # A new group becomes Ready before an old one goes: no update takes a model down.
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxUnavailable": 0, "maxSurge": 1},
            },
            # One headless Service per group, named <name>-<group> (the leader's DNS name is
            # <name>-<group>.<name>-<group>.<namespace>): the shared one would be named like the
            # ModelDeployment and so collide with its serving Service.
            "networkConfig": {"subdomainPolicy": "UniquePerReplica"},
        },
    }


def _keep_together(template: dict[str, Any], name: str, topology_key: str) -> dict[str, Any]:
    """Require every pod of a group in one domain of ``topology_key``: pod affinity to the
    pods of this set with the same group (matchLabelKeys on LeaderWorkerSet's per-group label,
    whose value the pod's own labels give; the first pod of a group matches itself).
    LeaderWorkerSet alone places the pods of a group anywhere."""
    term = {
        "labelSelector": {"matchLabels": {SET_NAME_LABEL: name}},
        "matchLabelKeys": [GROUP_KEY_LABEL],
        "topologyKey": topology_key,
    }
    affinity = template["spec"]["affinity"]
    pod_affinity = dict(affinity.get("podAffinity") or {})
    required = list(pod_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
    pod_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = [*required, term]
    affinity["podAffinity"] = pod_affinity
    return template
