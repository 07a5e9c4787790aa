"""What the gateway knows of the cluster, built from watch events (pure).

ModelDeployments become :class:`ModelEntry` values, runtime pods :class:`Replica` values;
:class:`Catalog` indexes them by the served model name that clients put in ``model``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MODEL_DEPLOYMENT_LABEL = "gantry.dev/model-deployment"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
#: Label selector of the runtime pods the gateway watches.
RUNTIME_SELECTOR = "app.kubernetes.io/managed-by=gantry,app.kubernetes.io/component=runtime"
DEFAULT_PREFIX_TOKENS = 256

#: (namespace, ModelDeployment name)
ModelKey = tuple[str, str]


class Strategy(enum.Enum):
    LEAST_OUTSTANDING = "LeastOutstanding"
    PREFIX_AFFINITY = "PrefixAffinity"


@dataclass(frozen=True)
class ModelEntry:
    namespace: str
    name: str
    #: The name clients use; None: not routable yet.
    served_name: str | None
    replicas: int
    strategy: Strategy
    prefix_tokens: int
    created: str
    resource_version: str = ""

    @property
    def key(self) -> ModelKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Replica:
    """A Ready runtime pod that serves requests."""

    namespace: str
    pod: str
    model_deployment: str
    address: str  # ip:port

    @property
    def model_key(self) -> ModelKey:
        return (self.namespace, self.model_deployment)

    @property
    def ip(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


def served_name(obj: Mapping[str, Any]) -> str | None:
    """``status.servedModelName`` (the operator writes it), else the name the operator gives
    vLLM's ``--served-model-name``: ``spec.model.servedName``, else the preset, else the
    ModelDeployment's name (the rule of ``gantry_operator.spec``)."""
    status_name = (obj.get("status") or {}).get("servedModelName")
    if isinstance(status_name, str) and status_name:
        return status_name
    model = (obj.get("spec") or {}).get("model") or {}
    for candidate in (model.get("servedName"), model.get("preset")):
        if isinstance(candidate, str) and candidate:
            return candidate
    name = obj.get("metadata", {}).get("name")
    return name if isinstance(name, str) and name else None


def parse_model_deployment(obj: Mapping[str, Any]) -> ModelEntry:
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    routing = spec.get("routing") or {}
    raw_strategy = routing.get("strategy", Strategy.LEAST_OUTSTANDING.value)
    try:
        strategy = Strategy(raw_strategy)
    except ValueError:
        log.warning(
            "ModelDeployment %s/%s: spec.routing.strategy %r is not LeastOutstanding or "
            "PrefixAffinity; routed by LeastOutstanding",
            meta["namespace"],
            meta["name"],
            raw_strategy,
        )
        strategy = Strategy.LEAST_OUTSTANDING
    prefix = routing.get("prefixTokens", DEFAULT_PREFIX_TOKENS)
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 1:
        prefix = DEFAULT_PREFIX_TOKENS
    replicas = spec.get("replicas", 1)
    return ModelEntry(
        namespace=meta["namespace"],
        name=meta["name"],
        served_name=served_name(obj),
        replicas=replicas if isinstance(replicas, int) and replicas >= 0 else 1,
        strategy=strategy,
        prefix_tokens=prefix,
        created=str(meta.get("creationTimestamp", "")),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def parse_pod(obj: Mapping[str, Any], port: int) -> Replica | None:
    """The pod as a replica, or None when it does not serve requests (not Ready, no IP, being
    deleted, not labelled with its ModelDeployment, or a multi-node group's worker)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    md = labels.get(MODEL_DEPLOYMENT_LABEL)
    if not md or meta.get("deletionTimestamp"):
        return None
    if labels.get(WORKER_INDEX_LABEL, "0") != "0":
        return None
    status = obj.get("status") or {}
    ip = status.get("podIP")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    if not ip or not ready:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return Replica(meta["namespace"], meta["name"], md, f"{host}:{port}")


@dataclass
class Catalog:
    """ModelDeployments and their Ready replicas, indexed by served model name.

    When two ModelDeployments claim one served name, the older one (then namespace/name order)
    gets it and the other is not routable: logged once per change."""

    models: dict[ModelKey, ModelEntry] = field(default_factory=dict)
    replicas: dict[ModelKey, dict[str, Replica]] = field(default_factory=dict)
    by_served: dict[str, ModelKey] = field(default_factory=dict)

    def set_model(self, entry: ModelEntry) -> None:
        self.models[entry.key] = entry
        self._index()

    def remove_model(self, key: ModelKey) -> None:
        self.models.pop(key, None)
        self._index()

    def reset_models(self, namespace: str, entries: Iterable[ModelEntry]) -> None:
        """Replace every ModelDeployment of a namespace ("" = all) with a fresh listing."""
        for key in [k for k in self.models if not namespace or k[0] == namespace]:
            del self.models[key]
        for entry in entries:
            self.models[entry.key] = entry
        self._index()

    def set_pod(self, namespace: str, pod: str, replica: Replica | None) -> ModelKey | None:
        """Record a pod's state; returns the model key whose replicas changed, if any."""
        for key, pods in self.replicas.items():
            if key[0] == namespace and pod in pods:
                if replica is not None and replica.model_key == key:
                    if pods[pod] == replica:
                        return None
                    pods[pod] = replica
                    return key
                del pods[pod]
                if replica is None:
                    return key
                break
        if replica is None:
            return None
        self.replicas.setdefault(replica.model_key, {})[pod] = replica
        return replica.model_key

    def reset_pods(self, namespace: str, replicas: Iterable[Replica]) -> None:
        for key in [k for k in self.replicas if not namespace or k[0] == namespace]:
            del self.replicas[key]
        for replica in replicas:
            self.replicas.setdefault(replica.model_key, {})[replica.pod] = replica

    def ready(self, key: ModelKey) -> list[Replica]:
        return list(self.replicas.get(key, {}).values())

    def lookup(self, served: str) -> ModelEntry | None:
        key = self.by_served.get(served)
        return None if key is None else self.models.get(key)

    def _index(self) -> None:
        index: dict[str, ModelKey] = {}
        for entry in sorted(self.models.values(), key=lambda e: (e.created, e.key)):
            if entry.served_name is None:
                continue
            if entry.served_name in index:
                ns, name = index[entry.served_name]
                log.warning(
                    "ModelDeployment %s/%s serves %r like the older %s/%s: not routable",
                    entry.namespace,
                    entry.name,
                    entry.served_name,
                    ns,
                    name,
                )
                continue
            index[entry.served_name] = entry.key
        self.by_served = index
