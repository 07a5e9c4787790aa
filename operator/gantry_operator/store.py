"""The operator's view of the cluster: the latest object of every watched kind, fed by watch
events (never by polling). Reconciles and the autoscaler read it instead of the API server.

Objects are the raw API dicts. Children are found by name (a child is named like its
ModelDeployment) and judged by their controller ownerReference; pods by the
``gantry.dev/model-deployment`` label (their owner is a ReplicaSet). Objects of the child kinds
that Gantry did not label are kept too, slimmed to their metadata, so that a same-named object
of someone else is known without asking the API server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gantry_operator.spec import KIND

Obj = Mapping[str, Any]
Key = tuple[str, str]

MODEL_DEPLOYMENT = KIND
#: The child kinds named like their ModelDeployment (NetworkPolicy only with the policy;
#: LeaderWorkerSet, the workload of multi-node replicas, only with multi-node enabled;
#: InferencePool only with the policy and while its CRD is established).
CHILD_KINDS = (
    "Deployment", "LeaderWorkerSet", "Service", "PodDisruptionBudget", "NetworkPolicy",
    "InferencePool",
)  # fmt: skip
#: The workload kinds: exactly one of them serves a ModelDeployment.
WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet")
POD = "Pod"
#: Pods of the gantry-gateway (label app.kubernetes.io/component=gateway): the autoscaler reads
#: their request metrics to take idle models to zero.
GATEWAY_POD = "GatewayPod"
GATEWAY_LABEL = ("app.kubernetes.io/component", "gateway")
NODE = "Node"
MD_LABEL = "gantry.dev/model-deployment"
MANAGED = ("app.kubernetes.io/managed-by", "gantry")


def _lean(obj: Obj) -> Obj:
    """The object without ``metadata.managedFields`` (often half its size; never read here)."""
    meta = obj.get("metadata") or {}
    if "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def slim(obj: Obj) -> Obj:
    """What is kept of an object Gantry did not make: enough to name it and its owner."""
    if obj["metadata"].get("labels", {}).get(MANAGED[0]) == MANAGED[1]:
        return obj
    meta = obj["metadata"]
    keep = ("name", "namespace", "uid", "resourceVersion", "ownerReferences")
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: meta[k] for k in keep if k in meta},
    }


def key_of(obj: Obj) -> Key:
    meta = obj["metadata"]
    return (str(meta.get("namespace") or ""), str(meta["name"]))


def controller_of(obj: Obj) -> Mapping[str, Any] | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def owned_by(obj: Obj, uid: str) -> bool:
    """True when ``obj``'s controller ownerReference is the object with ``uid``."""
    ref = controller_of(obj)
    return ref is not None and ref.get("uid") == uid


def _newer(old: Obj | None, new: Obj) -> bool:
    """False when ``new`` is an older resourceVersion than what is held (a late apply result)."""
    if old is None:
        return True
    try:
        return int(new["metadata"]["resourceVersion"]) >= int(old["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return True


@dataclass(frozen=True)
class Children:
    """What exists for one ModelDeployment, as last seen."""

    objects: Mapping[str, Obj] = field(default_factory=dict)  # kind -> object
    pods: tuple[Obj, ...] = ()

    def get(self, kind: str) -> Obj | None:
        return self.objects.get(kind)


class Store:
    """Thread-safe: watch handlers write from the event loop, reconciles read from workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, Obj]] = {
            kind: {} for kind in (MODEL_DEPLOYMENT, *CHILD_KINDS, POD, GATEWAY_POD)
        }
        self._pods_by_owner: dict[Key, dict[str, Obj]] = {}
        #: GPU nodes, slimmed to what the planner reads (labels, allocatable), and a counter
        #: that moves only when one of those changes (not on every node heartbeat).
        self._nodes: dict[str, Obj] = {}
        self.pool_version = 0
        #: Names of the watched optional CRDs (LeaderWorkerSet, InferencePool) that are
        #: established now (fed by a CRD watch, see handlers.watch_crds).
        self._crds: frozenset[str] = frozenset()

    def put_crd(self, crd: Obj) -> bool:
        """Record a CRD as listed or changed; True when its established state flipped."""
        name = str(crd["metadata"]["name"])
        conditions = (crd.get("status") or {}).get("conditions") or []
        established = not crd["metadata"].get("deletionTimestamp") and any(
            c.get("type") == "Established" and c.get("status") == "True" for c in conditions
        )
        with self._lock:
            before = self._crds
            self._crds = before | {name} if established else before - {name}
            return self._crds != before

    def remove_crd(self, crd: Obj) -> bool:
        """Forget a deleted CRD; True when it had been established."""
        name = str(crd["metadata"]["name"])
        with self._lock:
            before = self._crds
            self._crds = before - {name}
            return self._crds != before

    def crds(self) -> frozenset[str]:
        """The optional CRDs established in the cluster (an input of every intent)."""
        with self._lock:
            return self._crds

    def crd_established(self, name: str) -> bool:
        """True while the CRD ``name`` exists with condition Established=True, as last seen."""
        return name in self.crds()

    def put_node(self, node: Obj) -> None:
        slim = {
            "metadata": {"labels": dict(node["metadata"].get("labels") or {})},
            "status": {"allocatable": dict((node.get("status") or {}).get("allocatable") or {})},
        }
        name = str(node["metadata"]["name"])
        with self._lock:
            if self._nodes.get(name) != slim:
                self._nodes[name] = slim
                self.pool_version += 1

    def remove_node(self, node: Obj) -> None:
        with self._lock:
            if self._nodes.pop(str(node["metadata"]["name"]), None) is not None:
                self.pool_version += 1

    def nodes(self) -> tuple[int, tuple[Obj, ...]]:
        """(pool version, the nodes)."""
        with self._lock:
            return self.pool_version, tuple(self._nodes.values())

    def put(self, kind: str, obj: Obj) -> None:
        key = key_of(obj)
        obj = _lean(obj)
        with self._lock:
            table = self._objects[kind]
            if not _newer(table.get(key), obj):
                return
            table[key] = obj
            if kind == POD:
                owner = obj["metadata"].get("labels", {}).get(MD_LABEL)
                if owner:
                    self._pods_by_owner.setdefault((key[0], owner), {})[key[1]] = obj

    def remove(self, kind: str, obj: Obj) -> None:
        key = key_of(obj)
        with self._lock:
            self._objects[kind].pop(key, None)
            if kind == POD:
                owner = obj["metadata"].get("labels", {}).get(MD_LABEL)
                pods = self._pods_by_owner.get((key[0], owner or ""))
                if pods is not None:
                    pods.pop(key[1], None)
                    if not pods:
                        del self._pods_by_owner[(key[0], owner or "")]

    def clear(self, kind: str) -> None:
        """Forget every object of ``kind`` (its CRD is gone, and the objects with it: the watch
        may not say so object by object)."""
        with self._lock:
            self._objects[kind].clear()

    def get(self, kind: str, key: Key) -> Obj | None:
        with self._lock:
            return self._objects[kind].get(key)

    def model_deployments(self) -> list[Obj]:
        with self._lock:
            return list(self._objects[MODEL_DEPLOYMENT].values())

    def gateway_pods(self, namespace: str) -> list[tuple[str, str]]:
        """(name, IP) of the running gateway pods in ``namespace``, sorted by name."""
        with self._lock:
            pods = [p for (ns, _), p in self._objects[GATEWAY_POD].items() if ns == namespace]
        running = []
        for pod in pods:
            status = pod.get("status") or {}
            if (
                status.get("phase") == "Running"
                and status.get("podIP")
                and not pod["metadata"].get("deletionTimestamp")
            ):
                running.append((str(pod["metadata"]["name"]), str(status["podIP"])))
        return sorted(running)

    def children(self, key: Key) -> Children:
        """The children named like the ModelDeployment ``key`` (owned or not) and its pods."""
        with self._lock:
            objects = {
                kind: obj
                for kind in CHILD_KINDS
                if (obj := self._objects[kind].get(key)) is not None
            }
            pods = tuple(self._pods_by_owner.get(key, {}).values())
        return Children(objects, tuple(sorted(pods, key=lambda p: str(p["metadata"]["name"]))))

    def sizes(self) -> Iterator[tuple[str, int]]:
        with self._lock:
            for kind, table in self._objects.items():
                yield kind, len(table)


def owner_key(kind: str, obj: Obj) -> Key | None:
    """The ModelDeployment a child event concerns (None for objects that are not ours)."""
    namespace = str(obj["metadata"].get("namespace") or "")
    if kind == POD:
        owner = obj["metadata"].get("labels", {}).get(MD_LABEL)
        return (namespace, owner) if owner else None
    ref = controller_of(obj)
    if ref and ref.get("kind") == KIND:
        return (namespace, str(ref["name"]))
    owner = obj["metadata"].get("labels", {}).get(MD_LABEL)
    return (namespace, owner) if owner else None
