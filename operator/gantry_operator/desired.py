"""Decide, purely: what a ModelDeployment should become and what must be written for it.

``intent`` validates the spec (parsing with every CRD bound, the cluster policy, the fit) before
any builder runs, and builds the children; it depends only on the object's spec and the
configuration, so it is computed once per generation. ``decide`` compares that intent with
the children last seen in the watch and lists exactly what to apply and what to delete:

* apply only what differs (:mod:`gantry_operator.drift`);
* never touch an object of the same name that another owner controls: that is a conflict,
  reported in status, and nothing else is written for the ModelDeployment until it is gone;
* delete only optional children (PDB, NetworkPolicy) that this ModelDeployment controls and
  the spec or policy no longer calls for;
* when a new plan moves the replicas between a Deployment (one node) and a LeaderWorkerSet
  (several nodes), keep the old workload serving until the new one's replicas are all Ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gantry_operator import drift, gpus, manifests, planner
from gantry_operator.cluster_policy import MultiNodeSettings
from gantry_operator.config import OperatorConfig
from gantry_operator.manifests.common import Owner
from gantry_operator.manifests.leaderworkerset import CRD as LWS_CRD
from gantry_operator.planner import DoesNotFitError, Plan
from gantry_operator.spec import ModelDeploymentSpec, SpecError, parse
from gantry_operator.status import Problem
from gantry_operator.store import CHILD_KINDS, WORKLOAD_KINDS, Children, Obj, owned_by

#: Problems that are the operator's final answer for a spec (status.observedGeneration moves
#: on); a child the API server refused or a name conflict leave the spec not applied.
REFUSALS = ("InvalidSpec", "PolicyViolation", "DoesNotFit", "MultiNodeUnavailable")


@dataclass(frozen=True)
class Intent:
    """The validated spec, its plan and the children it calls for (empty with a problem)."""

    generation: int
    spec: ModelDeploymentSpec | None
    plan: Plan | None
    problem: Problem | None
    objects: tuple[Mapping[str, Any], ...] = ()

    @property
    def model(self) -> str:
        return self.spec.model.name if self.spec else ""


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Decision:
    intent: Intent
    #: Stamped objects to server-side apply, in order.
    apply: tuple[Mapping[str, Any], ...] = ()
    #: Owned children to delete (each with its own uid as a precondition).
    delete: tuple[ObjectRef, ...] = ()
    #: Same-named children controlled by someone else: left untouched, reported.
    conflicts: tuple[str, ...] = ()


def intent(
    md: Mapping[str, Any],
    config: OperatorConfig,
    nodes: Sequence[Mapping[str, Any]] = (),
    crds: frozenset[str] = frozenset(),
) -> Intent:
    """``nodes``: the cluster's GPU nodes, for the GPUs per node of the spec's GPU pool
    (``spec.gpu.perNode`` wins; without nodes, the GPU profile's default). ``crds``: the
    optional CRDs established in the cluster (LeaderWorkerSet for multi-node replicas)."""
    meta = md["metadata"]
    generation = int(meta.get("generation") or 0)
    policy = config.policy
    try:
        spec = parse(
            meta["name"],
            meta["namespace"],
            md.get("spec") or {},
            runtime_image=policy.runtime_image,
            image_pull_secrets=policy.image_pull_secrets,
        )
    except SpecError as exc:
        return Intent(generation, None, None, Problem("InvalidSpec", str(exc)))
    try:
        policy.check(spec)
    except SpecError as exc:
        return Intent(generation, spec, None, Problem("PolicyViolation", str(exc)))
    try:
        plan = planner.plan(spec, gpus_per_node=gpus.gpus_per_node(spec.gpu.profile, nodes))
    except DoesNotFitError as exc:
        return Intent(generation, spec, None, Problem("DoesNotFit", str(exc)))
    if plan.nodes_per_replica > 1:
        unavailable = multi_node_unavailable(policy.multi_node, crds)
        if unavailable:
            return Intent(
                generation,
                spec,
                plan,
                Problem("MultiNodeUnavailable", f"{plan.multi_node}; {unavailable}"),
            )
    owner = Owner(name=meta["name"], uid=meta["uid"])
    objects = manifests.build_all(
        spec,
        plan,
        owner=owner,
        network=policy.network,
        multi_node=policy.multi_node,
        inference_pool=policy.inference_pool,
    )
    return Intent(generation, spec, plan, None, tuple(drift.stamp(o) for o in objects))


def multi_node_unavailable(settings: MultiNodeSettings, crds: frozenset[str]) -> str:
    """Why multi-node replicas cannot run here ("" when they can), and what to do."""
    alternative = (
        "or choose a GPU type with more memory (for example H200 or B200) so that a replica "
        "fits one node"
    )
    if not settings.enabled:
        return (
            "multi-node replicas run as LeaderWorkerSet groups, which this operator is not set up "
            "to use: install LeaderWorkerSet (sigs.k8s.io/lws v0.8 or newer) and enable it with "
            "the chart value leaderWorkerSet.enabled=true (cluster policy multiNode.enabled), "
            + alternative
        )
    if LWS_CRD not in crds:
        return (
            f"the cluster policy enables LeaderWorkerSet but its CRD {LWS_CRD} is not installed "
            "(or not yet established): install LeaderWorkerSet (sigs.k8s.io/lws v0.8 or newer), "
            + alternative
        )
    return ""


def _describe_conflict(obj: Mapping[str, Any]) -> str:
    ref = (obj.get("metadata") or {}).get("ownerReferences") or []
    owner = next((f"{r['kind']} {r['name']}" for r in ref if r.get("controller")), None)
    by = f"controlled by {owner}" if owner else "not created by Gantry"
    return f"{obj['kind']} {obj['metadata']['name']} already exists ({by})"


#: Child kinds whose API is a CRD that may or may not be installed: kind -> CRD name. Their
#: objects are built into the intent and written only while the CRD is established.
OPTIONAL_KINDS = {manifests.inference_pool.KIND: manifests.inference_pool.CRD_NAME}


def decide(
    want: Intent, children: Children, uid: str, *, unavailable: frozenset[str] = frozenset()
) -> Decision:
    """``unavailable``: kinds of :data:`OPTIONAL_KINDS` whose CRD is not established now."""
    if want.problem:
        return Decision(want)
    apply: list[Mapping[str, Any]] = []
    conflicts: list[str] = []
    for obj in want.objects:
        if obj["kind"] in unavailable:
            continue
        seen = children.get(obj["kind"])
        if seen is not None and not owned_by(seen, uid):
            conflicts.append(_describe_conflict(seen))
        elif drift.differs(obj, seen):
            apply.append(obj)
    if conflicts:  # nothing half-applied: the conflict is resolved first
        return Decision(want, conflicts=tuple(conflicts))
    wanted = {obj["kind"] for obj in want.objects if obj["kind"] not in unavailable}
    workload = next((k for k in WORKLOAD_KINDS if k in wanted), None)
    if workload is not None and not serving(children.get(workload)):
        wanted |= set(WORKLOAD_KINDS)  # the old workload serves until the new one does
    delete = tuple(
        ObjectRef(
            kind,
            str(seen["metadata"]["namespace"]),
            str(seen["metadata"]["name"]),
            str(seen["metadata"]["uid"]),
        )
        for kind in CHILD_KINDS
        if kind not in wanted and (seen := children.get(kind)) is not None and owned_by(seen, uid)
    )
    return Decision(want, tuple(apply), delete, tuple(conflicts))


def serving(workload: Obj | None) -> bool:
    """Whether a workload (Deployment or LeaderWorkerSet) has all its replicas updated and
    Ready, as last seen."""
    if workload is None:
        return False
    spec: Mapping[str, Any] = workload.get("spec") or {}
    status: Mapping[str, Any] = workload.get("status") or {}
    want = int(spec.get("replicas", 1))
    return (
        int(status.get("readyReplicas") or 0) >= want
        and int(status.get("updatedReplicas") or 0) >= want
    )
