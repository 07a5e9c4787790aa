"""The Gateway API Inference Extension's InferencePool for a ModelDeployment (docs:
docs/inference-pool.md): clusters that run an inference gateway (Envoy AI Gateway, kgateway,
Istio) route to the model's runtime pods through it, without the gantry-gateway.

Made only when the cluster policy turns it on and the CRD ``inferencepools.inference.
networking.k8s.io`` (v1) is established; the reconcile decides that (desired.py), this builder
only builds.
"""

from __future__ import annotations

from typing import Any

from gantry_operator.cluster_policy import InferencePoolSettings
from gantry_operator.manifests.common import LEADER_LABEL, Owner, metadata, selector_labels
from gantry_operator.spec import ModelDeploymentSpec
from gantry_runtime.launchspec import PORT

API_VERSION = "inference.networking.k8s.io/v1"
KIND = "InferencePool"
CRD_NAME = "inferencepools.inference.networking.k8s.io"


def pool_selector(spec: ModelDeploymentSpec, *, leaders_only: bool = False) -> dict[str, str]:
    """The pods that serve: this ModelDeployment's runtime pods (every pod of a single-node
    replica; with ``leaders_only``, only the leader of each multi-node group, whose workers do
    not answer HTTP)."""
    selector = selector_labels(spec)
    if leaders_only:
        selector[LEADER_LABEL] = "0"
    return dict(sorted(selector.items()))


def build_inference_pool(
    spec: ModelDeploymentSpec,
    *,
    owner: Owner,
    settings: InferencePoolSettings,
    leaders_only: bool = False,
) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "selector": {"matchLabels": pool_selector(spec, leaders_only=leaders_only)},
        "targetPorts": [{"number": PORT}],
    }
    picker = settings.endpoint_picker
    if picker is not None:
        pool["endpointPickerRef"] = {
            "kind": "Service",
            "name": picker.name,
            "port": {"number": picker.port},
            "failureMode": picker.failure_mode,
        }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata(spec, owner),
        "spec": pool,
    }
