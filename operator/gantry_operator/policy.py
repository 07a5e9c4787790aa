"""Cluster policy: what the platform team allows, enforced by the operator on every spec.

Read once at start-up from the YAML file given with ``gantry-operator --policy`` (the Helm chart
renders it from ``values.yaml`` into a ConfigMap). Without a file nothing extra is enforced and
no NetworkPolicy is created. The format (every key optional)::

    residency:
      allowedRegions: [eu-west-1]       # MDs must name regions, all within this list
      offline: true                     # no hub sources; offline env forced in every pod
      allowedSources: [pvc, s3, image]  # weight sources MDs may use
    networkPolicy:
      enabled: true
      ingress:                          # who may call the runtime pods (port 8000)
        - namespaceSelector: {matchLabels: {gantry.dev/clients: "true"}}
      monitoring:                       # Prometheus, also to port 8000 (/metrics)
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
      operator:                         # the operator itself (scrapes /metrics)
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: gantry-system}}
          podSelector: {matchLabels: {app.kubernetes.io/name: gantry}}
      storage:                          # egress besides DNS: in-cluster model storage
        - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: storage}}}]
          ports: [{port: 9000, protocol: TCP}]
    runtime:
      image: registry.internal/gantry/gantry-runtime:0.1.0-vllm0.33.0   # default runtime image
      imagePullSecrets: [registry-mirror]                               # added to every pod
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gantry_operator.spec import DEFAULT_RUNTIME_IMAGE, ModelDeploymentSpec, SpecError

SOURCE_KINDS = ("pvc", "s3", "image", "huggingFace")


@dataclass(frozen=True)
class NetworkPolicySettings:
    enabled: bool = False
    ingress: tuple[Mapping[str, Any], ...] = ()
    monitoring: tuple[Mapping[str, Any], ...] = ()
    operator: tuple[Mapping[str, Any], ...] = ()
    storage: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Policy:
    allowed_regions: tuple[str, ...] = ()
    offline: bool = False
    allowed_sources: tuple[str, ...] = SOURCE_KINDS
    network: NetworkPolicySettings = field(default_factory=NetworkPolicySettings)
    #: Runtime image for ModelDeployments that name none (the cluster's registry mirror).
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    #: Pull secrets added to every runtime pod.
    image_pull_secrets: tuple[str, ...] = ()

    def check(self, spec: ModelDeploymentSpec) -> None:
        """Raise SpecError (naming the field and the fix) when ``spec`` breaks the policy."""
        if self.allowed_regions:
            allowed = ", ".join(self.allowed_regions)
            if not spec.residency.regions:
                raise SpecError(
                    "spec.residency.regions",
                    f"is required by the cluster's residency policy: name one or more of {allowed}",
                )
            outside = sorted(set(spec.residency.regions) - set(self.allowed_regions))
            if outside:
                raise SpecError(
                    "spec.residency.regions",
                    f"{', '.join(outside)} not allowed by the cluster's residency policy; "
                    f"allowed: {allowed}",
                )
        if spec.source.kind not in self.allowed_sources:
            raise SpecError(
                f"spec.source.{spec.source.kind}",
                "is not an allowed weight source in this cluster; use one of "
                + ", ".join(self.allowed_sources),
            )
        if self.offline and not spec.residency.offline:
            raise SpecError(
                "spec.residency.offline",
                "must be true: this cluster runs models offline (no model hub at run time)",
            )


def _selectors(value: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"policy {where} must be a list of objects")
    return tuple(value)


def parse_policy(data: Mapping[str, Any]) -> Policy:
    residency: Mapping[str, Any] = data.get("residency") or {}
    runtime: Mapping[str, Any] = data.get("runtime") or {}
    network: Mapping[str, Any] = data.get("networkPolicy") or {}
    sources = tuple(residency.get("allowedSources") or SOURCE_KINDS)
    unknown = sorted(set(sources) - set(SOURCE_KINDS))
    if unknown:
        raise ValueError(f"policy residency.allowedSources: unknown {unknown}; use {SOURCE_KINDS}")
    offline = bool(residency.get("offline", False))
    if offline:
        sources = tuple(s for s in sources if s != "huggingFace")
    return Policy(
        allowed_regions=tuple(residency.get("allowedRegions") or ()),
        offline=offline,
        allowed_sources=sources,
        network=NetworkPolicySettings(
            enabled=bool(network.get("enabled", False)),
            ingress=_selectors(network.get("ingress"), "networkPolicy.ingress"),
            monitoring=_selectors(network.get("monitoring"), "networkPolicy.monitoring"),
            operator=_selectors(network.get("operator"), "networkPolicy.operator"),
            storage=_selectors(network.get("storage"), "networkPolicy.storage"),
        ),
        runtime_image=str(runtime.get("image") or DEFAULT_RUNTIME_IMAGE),
        image_pull_secrets=tuple(str(s) for s in runtime.get("imagePullSecrets") or ()),
    )


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return Policy()
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"policy file {path} must hold a YAML mapping")
    return parse_policy(data)
