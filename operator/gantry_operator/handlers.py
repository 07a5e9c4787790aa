"""kopf handlers: decorators only. Nothing here reads or writes the API.

Every child kind is fed to the controller's store through a kopf index handler: kopf runs
index handlers for every kind's initial listing before it runs any other handler, so no
reconcile ever starts on a partial view (no child seen as missing at start-up). Event handlers
then forget deleted objects and queue the one level-triggered reconcile.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import kopf

from gantry_operator.controller import Controller
from gantry_operator.spec import GROUP, PLURAL, VERSION
from gantry_operator.store import GATEWAY_LABEL, POD

CHILD_LABELS = {"app.kubernetes.io/managed-by": "gantry"}
#: Child kinds: (group, version, plural) -> kind. All objects are indexed, not only Gantry's:
#: a same-named object of someone else must be known to be left alone.
CHILDREN = {
    ("apps", "v1", "deployments"): "Deployment",
    ("", "v1", "services"): "Service",
    ("policy", "v1", "poddisruptionbudgets"): "PodDisruptionBudget",
}


def _controller(memo: kopf.Memo) -> Controller:
    controller: Controller = memo["controller"]
    return controller


@kopf.on.startup()
async def start(memo: kopf.Memo, **_: Any) -> None:
    await _controller(memo).start()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await _controller(memo).stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_deployment(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).model_deployment_event(event["type"], event["object"])


def _watch_child(group: str, version: str, plural: str, kind: str, **filters: Any) -> None:
    resource = (f"{group}/{version}" if group else version, plural)

    async def seen(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _controller(memo).child_seen(kind, dict(body))

    async def changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        _controller(memo).child_event(kind, event["type"], event["object"])

    kopf.index(*resource, id=f"{plural}-store", **filters)(seen)
    kopf.on.event(*resource, id=f"{plural}-events", **filters)(changed)


for (_group, _version, _plural), _kind in CHILDREN.items():
    _watch_child(_group, _version, _plural, _kind)
_watch_child("", "v1", "pods", POD, labels=CHILD_LABELS)


def watch_network_policies() -> None:
    """NetworkPolicies are watched only when the cluster policy has the operator make them
    (without it the operator needs, and has, no access to them)."""
    _watch_child("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")


def watch_gateway_pods(namespace: str) -> None:
    """The gantry-gateway's pods in ``namespace`` (the autoscaler reads their request metrics
    to scale idle models to zero). Only that namespace: a pod elsewhere that carries the label
    is no gateway, and its numbers must not move anyone's models."""

    def here(body: kopf.Body, **_: Any) -> bool:
        return bool(body.get("metadata", {}).get("namespace") == namespace)

    async def seen(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _controller(memo).gateway_pod_seen(dict(body))

    async def changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        if event["type"] == "DELETED":
            _controller(memo).gateway_pod_deleted(event["object"])

    labels = {GATEWAY_LABEL[0]: GATEWAY_LABEL[1]}
    kopf.index("v1", "pods", id="gateway-pods-store", labels=labels, when=here)(seen)
    kopf.on.event("v1", "pods", id="gateway-pods-events", labels=labels, when=here)(changed)


def watch_crds(names: Collection[str]) -> None:
    """Whether the CRDs ``names`` are established, in the store (``Store.crd_established``).

    An index handler, so the answer is known before the first reconcile; the events after it
    re-queue every ModelDeployment when a CRD is established or deleted, so a CRD installed
    while the operator runs takes effect without a restart. Needs list/watch on
    customresourcedefinitions (cluster-wide)."""
    wanted = frozenset(names)

    def named(body: kopf.Body, **_: Any) -> bool:
        return body.get("metadata", {}).get("name") in wanted

    async def seen(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _controller(memo).crd_seen(dict(body))

    async def changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        if event["type"] == "DELETED":
            _controller(memo).crd_deleted(event["object"])

    resource = ("apiextensions.k8s.io/v1", "customresourcedefinitions")
    kopf.index(*resource, id="crds-store", when=named)(seen)
    kopf.on.event(*resource, id="crds-events", when=named)(changed)


def watch_inference_pools() -> None:
    """InferencePools, only when the cluster policy has the operator make them (RBAC for them
    only then). kopf starts this watch when the CRD appears (cluster-wide CRD scanning)."""
    _watch_child("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool")


async def node_seen(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).node_seen(dict(body))


async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    if event["type"] == "DELETED":
        _controller(memo).node_deleted(event["object"])


def watch_nodes() -> None:
    """Nodes (the pool's GPUs per node, a planner input): only when serving the whole
    cluster; a namespace-scoped operator has no cluster-wide access and uses the profiles."""
    kopf.index("v1", "nodes", id="nodes-store")(node_seen)
    kopf.on.event("v1", "nodes", id="nodes-events")(node_event)


def watch_leader_worker_sets() -> None:
    """LeaderWorkerSets (multi-node replicas): only when the cluster policy enables multi-node
    (the operator then has, and needs, access to them); whether their CRD is installed comes
    from :func:`watch_crds`. kopf starts the watch by itself once the CRD appears."""
    _watch_child("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", "LeaderWorkerSet")
