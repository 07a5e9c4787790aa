"""kopf handlers: decorators only. Watch events go to the controller, which keeps the store and
queues the one level-triggered reconcile; nothing here reads or writes the API."""

from __future__ import annotations

from typing import Any

import kopf

from gantry_operator.controller import Controller
from gantry_operator.spec import GROUP, PLURAL, VERSION
from gantry_operator.store import POD

CHILD_LABELS = {"app.kubernetes.io/managed-by": "gantry"}


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


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
async def deployment(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).child_event("Deployment", event["type"], event["object"])


@kopf.on.event("v1", "services", labels=CHILD_LABELS)
async def service(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).child_event("Service", event["type"], event["object"])


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
async def pod_disruption_budget(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).child_event("PodDisruptionBudget", event["type"], event["object"])


async def network_policy(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).child_event("NetworkPolicy", event["type"], event["object"])


async def node(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).node_event(event["type"], event["object"])


def watch_nodes() -> None:
    """GPU nodes (the pool's GPUs per node, for the planner): only when serving the whole
    cluster; a namespace-scoped operator has no cluster-wide access and uses the profiles."""
    kopf.on.event("v1", "nodes")(node)


def watch_network_policies() -> None:
    """NetworkPolicies are watched only when the cluster policy has the operator make them
    (without it the operator needs, and has, no access to them)."""
    kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)(network_policy)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
async def pod(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).child_event(POD, event["type"], event["object"])
