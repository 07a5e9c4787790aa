"""Cluster policy: what the platform team allows, enforced by the operator on every spec.

Read once at start-up from the YAML file given with ``gantry-operator --policy`` (the Helm chart
renders it from ``values.yaml`` into a ConfigMap). Without a file nothing extra is enforced and
no NetworkPolicy is created. The format (every key optional)::

    residency:
      allowedRegions: [eu-west-1]       # MDs must name regions, all within this list
      offline: true                     # no hub sources; offline env forced in every pod
      allowedSources: [pvc, s3, image]  # weight sources MDs may use
      # While a ModelDeployment runs offline (its spec.residency.offline, the default, or the
      # policy's offline), these lists, when set, are all it may use:
      allowedRegistries: [registry.internal]          # runtime image and `image` weight source
      allowedS3Endpoints: [http://minio.storage.svc:9000]   # `s3` weight source endpoints
      allowedEgressEndpoints: [http://otel.monitoring.svc:4317]  # engine flags that send data
    networkPolicy:
      enabled: true
      gateway:                          # the gantry-gateway is the clients' way in: its pods
        enabled: true                   # (label app.kubernetes.io/component=gateway in this
        namespace: gantry-system        # namespace) may call the runtime pods (port 8000)
      ingress:                          # who else may call them; with the gateway on, leave it
        - namespaceSelector: {matchLabels: {gantry.dev/clients: "true"}}   # empty (or name an
                                        # inference gateway that routes to InferencePools)
      monitoring:                       # Prometheus, also to port 8000 (/metrics)
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
      operator:                         # the operator itself (scrapes /metrics)
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: gantry-system}}
          podSelector: {matchLabels: {app.kubernetes.io/name: gantry}}
      storage:                          # egress besides DNS: in-cluster model storage
        - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: storage}}}]
          ports: [{port: 9000, protocol: TCP}]
    multiNode:                          # replicas larger than one node (LeaderWorkerSet groups)
      enabled: true                     # LeaderWorkerSet is installed and the operator may use it
      exclusiveTopologyKey: network.topology.example.com/block   # one group per domain (optional)
    inferencePool:                      # one InferencePool per ModelDeployment while the CRD
      enabled: true                     # inferencepools.inference.networking.k8s.io exists
      endpointPicker:                   # optional: the endpointPickerRef of every pool (a
        name: epp                       # Service of that name in each model's namespace)
        port: 9002
        failureMode: FailClose          # or FailOpen
    runtime:
      image: registry.internal/gantry/gantry-runtime:0.1.0-vllm0.33.0   # default runtime image
      imagePullSecrets: [registry-mirror]                               # added to every pod
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gantry_operator.engine_args import EGRESS, egress
from gantry_operator.spec import DEFAULT_RUNTIME_IMAGE, SOURCE_KINDS, ModelDeploymentSpec, SpecError
from gantry_operator.spec_rules import LABEL_KEY_PATTERN


class PolicyViolation(SpecError):  # noqa: N818 - named after the status reason
    """A spec the cluster policy refuses (status reason ``PolicyViolation``)."""


def image_repository(reference: str) -> str:
    """``registry/path`` of an image reference without tag or digest, with Docker's defaults
    made explicit (``nginx`` is ``docker.io/library/nginx``)."""
    name = reference.split("@", 1)[0]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first.lower(), rest
    else:
        registry, path = "docker.io", name if slash else f"library/{name}"
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path = path[: len(path) - len(last) + last.index(":")]
    return f"{registry}/{path}"


def registry_allowed(reference: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``reference`` lives under one of ``allowed`` (a registry host, optionally with a
    path: ``registry.internal`` or ``registry.internal/mirror``)."""
    repository = image_repository(reference)
    for entry in allowed:
        prefix = entry.strip().rstrip("/")
        host, slash, path = prefix.partition("/")
        prefix = host.lower() + slash + path
        if repository == prefix or repository.startswith(prefix + "/"):
            return True
    return False


def _endpoint(text: str) -> tuple[str, str, int | None]:
    """(scheme or "", host, port or None) of a URL or a bare ``host[:port]``."""
    parts = urlsplit(text if "://" in text else f"//{text}")
    try:
        port = parts.port
    except ValueError:
        port = -1  # never matches
    scheme = parts.scheme.lower()
    if port is None and scheme in ("http", "https"):
        port = 80 if scheme == "http" else 443
    return scheme, (parts.hostname or "").lower(), port


def endpoint_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``url`` (or ``host:port``) names a host and port ``allowed`` lists. An entry with
    a scheme must match it; an entry without a port allows any port of that host."""
    scheme, host, port = _endpoint(url)
    if not host:
        return False
    for entry in allowed:
        want_scheme, want_host, want_port = _endpoint(entry.strip())
        if want_host != host:
            continue
        if want_scheme and scheme and want_scheme != scheme:
            continue
        explicit_port = urlsplit(entry if "://" in entry else f"//{entry}").netloc.count(":")
        if want_port is not None and (explicit_port or want_scheme) and want_port != port:
            continue
        return True
    return False


@dataclass(frozen=True)
class NetworkPolicySettings:
    enabled: bool = False
    #: The gantry-gateway's namespace when the gateway is on: its pods may call the runtime
    #: pods. None: no gateway.
    gateway_namespace: str | None = None
    ingress: tuple[Mapping[str, Any], ...] = ()
    monitoring: tuple[Mapping[str, Any], ...] = ()
    operator: tuple[Mapping[str, Any], ...] = ()
    storage: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class MultiNodeSettings:
    """Multi-node replicas run as LeaderWorkerSet groups (sigs.k8s.io/lws) when enabled."""

    enabled: bool = False
    #: Node label whose domains each hold one whole group, exclusively ("" = no such placement).
    exclusive_topology_key: str = ""


@dataclass(frozen=True)
class EndpointPicker:
    name: str
    port: int = 9002
    failure_mode: str = "FailClose"


@dataclass(frozen=True)
class InferencePoolSettings:
    enabled: bool = False
    endpoint_picker: EndpointPicker | None = None


@dataclass(frozen=True)
class Policy:
    allowed_regions: tuple[str, ...] = ()
    offline: bool = False
    allowed_sources: tuple[str, ...] = SOURCE_KINDS
    network: NetworkPolicySettings = field(default_factory=NetworkPolicySettings)
    multi_node: MultiNodeSettings = field(default_factory=MultiNodeSettings)
    inference_pool: InferencePoolSettings = field(default_factory=InferencePoolSettings)
    #: Runtime image for ModelDeployments that name none (the cluster's registry mirror).
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    #: Pull secrets added to every runtime pod.
    image_pull_secrets: tuple[str, ...] = ()
    #: While offline: registries (host or host/path) runtime and weight images may come from.
    allowed_registries: tuple[str, ...] = ()
    #: While offline: S3 endpoints (URL or host[:port]) weights may stream from.
    allowed_s3_endpoints: tuple[str, ...] = ()
    #: While offline: endpoints engine flags may send data to (trace exporters, tool servers).
    allowed_egress_endpoints: tuple[str, ...] = ()

    def check(self, spec: ModelDeploymentSpec) -> None:
        """Raise SpecError (naming the field and the fix) when ``spec`` breaks the policy."""
        if self.allowed_regions:
            allowed = ", ".join(self.allowed_regions)
            if not spec.residency.regions:
                raise PolicyViolation(
                    "spec.residency.regions",
                    f"is required by the cluster's residency policy: name one or more of {allowed}",
                )
            outside = sorted(set(spec.residency.regions) - set(self.allowed_regions))
            if outside:
                raise PolicyViolation(
                    "spec.residency.regions",
                    f"{', '.join(outside)} not allowed by the cluster's residency policy; "
                    f"allowed: {allowed}",
                )
        if spec.source.kind not in self.allowed_sources:
            raise PolicyViolation(
                f"spec.source.{spec.source.kind}",
                "is not an allowed weight source in this cluster; use one of "
                + ", ".join(self.allowed_sources),
            )
        if self.offline and not spec.residency.offline:
            raise PolicyViolation(
                "spec.residency.offline",
                "must be true: this cluster runs models offline (no model hub at run time)",
            )
        if self.offline or spec.residency.offline:
            self._check_offline(spec)

    def _check_offline(self, spec: ModelDeploymentSpec) -> None:
        """Images, storage endpoints and engine egress of a spec that runs offline."""
        images = [("spec.runtime.image", spec.runtime.image)]
        if spec.source.kind == "image":
            images.append(("spec.source.image.reference", spec.source.reference))
        if self.allowed_registries:
            for field_path, reference in images:
                if not registry_allowed(reference, self.allowed_registries):
                    raise PolicyViolation(
                        field_path,
                        f"{reference} is not from a registry this offline cluster allows; "
                        f"use one of {', '.join(self.allowed_registries)}",
                    )
        s3_allowed = self.allowed_s3_endpoints
        if (
            spec.source.kind == "s3"
            and s3_allowed
            and not endpoint_allowed(spec.source.endpoint, s3_allowed)
        ):
            raise PolicyViolation(
                "spec.source.s3.endpoint",
                f"{spec.source.endpoint} is not an S3 endpoint this offline cluster allows; "
                f"use one of {', '.join(s3_allowed)}",
            )
        allowed = self.allowed_egress_endpoints
        shown = ", ".join(allowed) or "none (residency.allowedEgressEndpoints is empty)"
        found = egress(spec.serving.engine_args)
        for flag, endpoints in sorted(found.items()):
            field_path = f"spec.serving.engineArgs.{flag}"
            if EGRESS[flag] == "needs-otlp":
                if "otlp-traces-endpoint" not in found:
                    continue  # collects nothing that leaves the pod without an exporter
                endpoints = found["otlp-traces-endpoint"]
            outside = [e for e in endpoints if not endpoint_allowed(e, allowed)]
            if outside or not endpoints:
                raise PolicyViolation(
                    field_path,
                    f"sends data to {', '.join(outside) or 'an endpoint outside the cluster'}, "
                    f"which this offline deployment may not reach; allowed endpoints: {shown}",
                )


def _selectors(value: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"policy {where} must be a list of objects")
    return tuple(value)


def _gateway_namespace(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("policy networkPolicy.gateway must be an object (enabled, namespace)")
    if not value.get("enabled", False):
        return None
    namespace = value.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(
            "policy networkPolicy.gateway.namespace is required with gateway.enabled: name the "
            "namespace the gantry-gateway pods run in"
        )
    return namespace


_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _inference_pool(value: Any) -> InferencePoolSettings:
    if value is None:
        return InferencePoolSettings()
    if not isinstance(value, dict):
        raise ValueError("policy inferencePool must be an object (enabled, endpointPicker)")
    picker: Any = value.get("endpointPicker")
    if picker is None:
        return InferencePoolSettings(enabled=bool(value.get("enabled", False)))
    where = "policy inferencePool.endpointPicker"
    if not isinstance(picker, dict) or not _DNS_LABEL.match(str(picker.get("name") or "")):
        raise ValueError(f"{where}.name must name a Service (a DNS label such as epp)")
    port = picker.get("port", 9002)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"{where}.port must be a port number (1 to 65535)")
    mode = picker.get("failureMode", "FailClose")
    if mode not in ("FailClose", "FailOpen"):
        raise ValueError(f"{where}.failureMode must be FailClose or FailOpen")
    return InferencePoolSettings(
        enabled=bool(value.get("enabled", False)),
        endpoint_picker=EndpointPicker(str(picker["name"]), port, mode),
    )


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"policy residency.{key} must be a list of non-empty strings")
    return tuple(value)


def parse_policy(data: Mapping[str, Any]) -> Policy:
    residency: Mapping[str, Any] = data.get("residency") or {}
    runtime: Mapping[str, Any] = data.get("runtime") or {}
    network: Mapping[str, Any] = data.get("networkPolicy") or {}
    multi_node: Mapping[str, Any] = data.get("multiNode") or {}
    topology_key = multi_node.get("exclusiveTopologyKey") or ""
    if not isinstance(topology_key, str) or not LABEL_KEY_PATTERN.match(topology_key or "a"):
        raise ValueError(
            f"policy multiNode.exclusiveTopologyKey {topology_key!r} is not a node label key "
            "(for example topology.kubernetes.io/zone)"
        )
    sources = tuple(residency.get("allowedSources") or SOURCE_KINDS)
    unknown = sorted(set(sources) - set(SOURCE_KINDS))
    if unknown:
        raise ValueError(f"policy residency.allowedSources: unknown {unknown}; use {SOURCE_KINDS}")
    offline = bool(residency.get("offline", False))
    if offline:
        sources = tuple(s for s in sources if s != "huggingFace")
    policy = Policy(
        allowed_regions=tuple(residency.get("allowedRegions") or ()),
        offline=offline,
        allowed_sources=sources,
        network=NetworkPolicySettings(
            enabled=bool(network.get("enabled", False)),
            gateway_namespace=_gateway_namespace(network.get("gateway")),
            ingress=_selectors(network.get("ingress"), "networkPolicy.ingress"),
            monitoring=_selectors(network.get("monitoring"), "networkPolicy.monitoring"),
            operator=_selectors(network.get("operator"), "networkPolicy.operator"),
            storage=_selectors(network.get("storage"), "networkPolicy.storage"),
        ),
        multi_node=MultiNodeSettings(
            enabled=bool(multi_node.get("enabled", False)), exclusive_topology_key=topology_key
        ),
        inference_pool=_inference_pool(data.get("inferencePool")),
        runtime_image=str(runtime.get("image") or DEFAULT_RUNTIME_IMAGE),
        image_pull_secrets=tuple(str(s) for s in runtime.get("imagePullSecrets") or ()),
        allowed_registries=_strings(residency.get("allowedRegistries"), "allowedRegistries"),
        allowed_s3_endpoints=_strings(residency.get("allowedS3Endpoints"), "allowedS3Endpoints"),
        allowed_egress_endpoints=_strings(
            residency.get("allowedEgressEndpoints"), "allowedEgressEndpoints"
        ),
    )
    if (
        policy.offline
        and policy.allowed_registries
        and not registry_allowed(policy.runtime_image, policy.allowed_registries)
    ):
        raise ValueError(
            f"policy runtime.image {policy.runtime_image} is not from residency."
            f"allowedRegistries ({', '.join(policy.allowed_registries)}); set runtime.image to "
            "the runtime image in your mirror"
        )
    return policy


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return Policy()
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"policy file {path} must hold a YAML mapping")
    return parse_policy(data)
