"""The runtime pods' NetworkPolicy, from the cluster policy (docs: cluster_policy.py)."""

from __future__ import annotations

from typing import Any

from gantry_operator.cluster_policy import NetworkPolicySettings
from gantry_operator.manifests.common import Owner, metadata, selector_labels
from gantry_operator.spec import ModelDeploymentSpec
from gantry_runtime.launchspec import PORT

DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


#: The label of the gantry-gateway's pods (the gateway chart sets it).
GATEWAY_POD_LABELS = {"app.kubernetes.io/component": "gateway"}


def gateway_peer(namespace: str) -> dict[str, Any]:
    """The gantry-gateway's pods: that label, in that namespace only."""
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": dict(GATEWAY_POD_LABELS)},
    }


def build_network_policy(
    spec: ModelDeploymentSpec,
    *,
    owner: Owner,
    settings: NetworkPolicySettings,
    groups: bool = False,
) -> dict[str, Any]:
    """Ingress to the serving port only from allowed peers (with the gateway on: its pods,
    monitoring, the operator and what ``ingress`` adds); egress only to DNS and storage. With
    multi-node ``groups``, also any TCP between this model's own runtime pods: vLLM's group
    ports and the ephemeral ports NCCL and Gloo pick."""
    gateway = [gateway_peer(settings.gateway_namespace)] if settings.gateway_namespace else []
    peers = [
        *gateway,
        *(dict(p) for p in (*settings.ingress, *settings.monitoring, *settings.operator)),
    ]
    egress: list[dict[str, Any]] = [
        {
            "to": [DNS_PEER],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
        },
        *(dict(rule) for rule in settings.storage),
    ]
    ingress = [{"from": peers, "ports": [{"port": PORT, "protocol": "TCP"}]}] if peers else []
    if groups:
        group = {"podSelector": {"matchLabels": selector_labels(spec)}}
        ingress.append({"from": [group], "ports": [{"protocol": "TCP"}]})
        egress.append({"to": [dict(group)], "ports": [{"protocol": "TCP"}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(spec, owner),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }
