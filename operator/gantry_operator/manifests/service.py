"""The ClusterIP Service in front of the runtime pods, and their PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from gantry_operator.manifests.common import Owner, metadata, selector_labels
from gantry_operator.spec import ModelDeploymentSpec
from gantry_runtime.launchspec import PORT


def endpoint(spec: ModelDeploymentSpec) -> str:
    """The in-cluster OpenAI-compatible base URL."""
    return f"http://{spec.name}.{spec.namespace}.svc:{PORT}/v1"


def build_service(spec: ModelDeploymentSpec, *, owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
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
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(spec, owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec)}},
    }
