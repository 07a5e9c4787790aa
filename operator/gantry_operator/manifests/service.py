"""The ClusterIP Service in front of the runtime pods, and their PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from gantry_operator.manifests.common import Owner, metadata, selector_labels
from gantry_operator.manifests.leaderworkerset import LEADER
from gantry_operator.spec import ModelDeploymentSpec
from gantry_runtime.launchspec import PORT


def endpoint(spec: ModelDeploymentSpec) -> str:
    """The in-cluster OpenAI-compatible base URL."""
    return f"http://{spec.name}.{spec.namespace}.svc:{PORT}/v1"


def build_service(
    spec: ModelDeploymentSpec, *, owner: Owner, leaders_only: bool = False
) -> dict[str, Any]:
    """``leaders_only``: of a multi-node group only the leader serves HTTP."""
    selector = selector_labels(spec)
    if leaders_only:
        selector.update(LEADER)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {
                    "name": "http",
                    "port": PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def build_pdb(spec: ModelDeploymentSpec, *, owner: Owner) -> dict[str, Any]:
    """At most one runtime pod evicted at a time: one replica (or one group) down at most."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(spec, owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec)}},
    }
