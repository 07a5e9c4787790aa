"""Decide, purely: what a ModelDeployment should become and what must be written for it.

``intent`` validates the spec (parsing with every CRD bound, the cluster policy, the fit) before
any builder runs, and builds the children; it depends only on the object's spec and the
configuration, so it is computed once per generation. ``decide`` compares that intent with
the children last seen in the watch and lists exactly what to apply and what to delete:

* apply only what differs (:mod:`gantry_operator.drift`);
* never touch an object of the same name that another owner controls: that is a conflict,
  reported in status, and nothing else is written for the ModelDeployment until it is gone;
* delete only optional children (PDB, NetworkPolicy) that this ModelDeployment controls and
  the spec or policy no longer calls for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gantry_operator import drift, gpus, manifests, planner
from gantry_operator.config import OperatorConfig
from gantry_operator.manifests.common import Owner
from gantry_operator.planner import DoesNotFitError, Plan
from gantry_operator.spec import ModelDeploymentSpec, SpecError, parse
from gantry_operator.status import Problem
from gantry_operator.store import CHILD_KINDS, Children, owned_by

#: Problems that are the operator's final answer for a spec (status.observedGeneration moves
#: on); a child the API server refused or a name conflict leave the spec not applied.
REFUSALS = ("InvalidSpec", "PolicyViolation", "DoesNotFit", "NeedsMultiNode")


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
    md: Mapping[str, Any], config: OperatorConfig, nodes: Sequence[Mapping[str, Any]] = ()
) -> Intent:
    """``nodes``: the cluster's GPU nodes, for the GPUs per node of the spec's GPU pool
    (``spec.gpu.perNode`` wins; without nodes, the GPU profile's default)."""
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
        return Intent(
            generation,
            spec,
            plan,
            Problem(
                "NeedsMultiNode",
                f"{plan.multi_node}; to serve it now choose a GPU type with more memory "
                "(for example H200 or B200) or a smaller model",
            ),
        )
    owner = Owner(name=meta["name"], uid=meta["uid"])
    objects = manifests.build_all(
        spec, plan, owner=owner, network=policy.network, inference_pool=policy.inference_pool
    )
    return Intent(generation, spec, plan, None, tuple(drift.stamp(o) for o in objects))


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
