"""The gateway's command line, parsed once into a frozen :class:`GatewayConfig` (pure)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 9091
    #: Namespaces whose ModelDeployments are served; empty = every namespace.
    namespaces: tuple[str, ...] = ()
    #: Where the tenant Secrets (label ``gantry.dev/tenant``) live.
    tenant_namespace: str = "default"
    #: Pods of this gateway (label selector in ``peer_namespace``): the Ready ones share the
    #: tenants' limits. Empty: this process enforces the whole limit.
    peer_selector: str = ""
    peer_namespace: str = "default"
    max_held_per_model: int = 256
    hold_timeout_seconds: float = 900.0
    max_body_bytes: int = 8 * 1024 * 1024
    upstream_port: int = 8000
    connect_timeout_seconds: float = 3.0
    #: How long to keep trying when every Ready replica refuses connections.
    connect_retry_seconds: float = 30.0
    audit_log: Path | None = None
    audit_include_content: bool = False
    kubeconfig: Path | None = None
    log_level: str = "INFO"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gantry-gateway",
        description="One OpenAI-compatible endpoint for every ModelDeployment in its scope.",
    )
    d = GatewayConfig()
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_port, default=d.port, help="OpenAI API port (%(default)s)")
    p.add_argument(
        "--metrics-port", type=_port, default=d.metrics_port, help="Prometheus port (%(default)s)"
    )
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="a namespace whose ModelDeployments are served (repeat; none = all namespaces)",
    )
    p.add_argument(
        "--tenant-namespace",
        default=os.environ.get("POD_NAMESPACE", d.tenant_namespace),
        help="namespace of the tenant Secrets (default: $POD_NAMESPACE, else 'default')",
    )
    p.add_argument(
        "--peer-selector",
        default=d.peer_selector,
        help="label selector of this gateway's pods (in --peer-namespace); the Ready ones "
        "split each tenant's limits evenly (default: none, this process enforces whole limits)",
    )
    p.add_argument(
        "--peer-namespace",
        default=os.environ.get("POD_NAMESPACE", d.peer_namespace),
        help="namespace of this gateway's pods (default: $POD_NAMESPACE, else 'default')",
    )
    p.add_argument("--max-held-per-model", type=_positive_int, default=d.max_held_per_model)
    p.add_argument("--hold-timeout-seconds", type=_positive_float, default=d.hold_timeout_seconds)
    p.add_argument("--max-body-bytes", type=_positive_int, default=d.max_body_bytes)
    p.add_argument("--upstream-port", type=_port, default=d.upstream_port)
    p.add_argument(
        "--connect-timeout-seconds", type=_positive_float, default=d.connect_timeout_seconds
    )
    p.add_argument(
        "--connect-retry-seconds",
        type=_positive_float,
        default=d.connect_retry_seconds,
        help="keep trying this long when every Ready replica refuses connections (%(default)s)",
    )
    p.add_argument("--audit-log", type=Path, default=None, help="audit JSON lines (default stdout)")
    p.add_argument(
        "--audit-include-content",
        action="store_true",
        help="put prompt and completion text into audit lines (off by default)",
    )
    p.add_argument("--kubeconfig", type=Path, default=None)
    p.add_argument("--log-level", default=d.log_level, choices=["DEBUG", "INFO", "WARNING"])
    return p


def parse_args(argv: Sequence[str] | None = None) -> GatewayConfig:
    args = parser().parse_args(argv)
    return GatewayConfig(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        namespaces=tuple(dict.fromkeys(args.namespace)),
        tenant_namespace=args.tenant_namespace,
        peer_selector=args.peer_selector,
        peer_namespace=args.peer_namespace,
        max_held_per_model=args.max_held_per_model,
        hold_timeout_seconds=args.hold_timeout_seconds,
        max_body_bytes=args.max_body_bytes,
        upstream_port=args.upstream_port,
        connect_timeout_seconds=args.connect_timeout_seconds,
        connect_retry_seconds=args.connect_retry_seconds,
        audit_log=args.audit_log,
        audit_include_content=args.audit_include_content,
        kubeconfig=args.kubeconfig,
        log_level=args.log_level,
    )
