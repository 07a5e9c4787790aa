"""``gantry-operator``: run the kopf operator (peering, probes and namespaces from flags)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import zlib
from collections.abc import Sequence

import kopf
import prometheus_client

from gantry_operator import handlers
from gantry_operator.cluster_policy import load_policy
from gantry_operator.config import OperatorConfig, ScrapeLimits
from gantry_operator.controller import Controller
from gantry_operator.manifests.inference_pool import CRD_NAME as INFERENCE_POOL_CRD
from gantry_operator.manifests.leaderworkerset import CRD as LWS_CRD
from gantry_operator.spec import GROUP


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gantry-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable)",
    )
    parser.add_argument(
        "--peering", default=None, help="kopf peering object name for HA (standby replicas)"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority (default derived from the pod name, so replicas differ)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds after which a silent peer counts as dead and a standby takes over",
    )
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL"
    )
    parser.add_argument(
        "--metrics-address", default="0.0.0.0:8081", help="host:port of the /metrics endpoint"
    )
    parser.add_argument(
        "--policy", default=None, help="cluster policy file (residency, sources, NetworkPolicy)"
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=300.0,
        help="seconds between in-memory comparisons of every object with its children",
    )
    parser.add_argument(
        "--autoscale-seconds",
        type=float,
        default=float(os.environ.get("GANTRY_AUTOSCALE_INTERVAL", "10")),
        help="seconds between autoscaler ticks (default: $GANTRY_AUTOSCALE_INTERVAL or 10)",
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="ModelDeployments reconciled at once"
    )
    parser.add_argument(
        "--min-reconcile-interval",
        type=float,
        default=0.5,
        help="seconds between two reconciles of one object (bursts of events coalesce)",
    )
    parser.add_argument(
        "--scrape-max-bytes",
        type=int,
        default=ScrapeLimits.max_bytes,
        help="bytes read from one runtime pod's /metrics before it is skipped",
    )
    parser.add_argument(
        "--scrape-deadline",
        type=float,
        default=ScrapeLimits.deadline_seconds,
        help="seconds for one scrape of a runtime pod's /metrics",
    )
    parser.add_argument(
        "--gateway-namespace",
        default=OperatorConfig.gateway_namespace,
        help="namespace of the gantry-gateway pods whose request metrics decide when a model "
        "with minReplicas 0 is idle (must be among the served namespaces)",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every handler run; Gantry's reconcile logs what it changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    config = OperatorConfig(
        policy=load_policy(args.policy),
        resync_seconds=args.resync_seconds,
        autoscale_seconds=args.autoscale_seconds,
        workers=args.workers,
        min_reconcile_interval=args.min_reconcile_interval,
        scrape=ScrapeLimits(max_bytes=args.scrape_max_bytes, deadline_seconds=args.scrape_deadline),
        gateway_namespace=args.gateway_namespace,
    )
    host, _, port = args.metrics_address.rpartition(":")
    prometheus_client.start_http_server(int(port), addr=host or "0.0.0.0")
    if config.policy.network.enabled:
        handlers.watch_network_policies()  # the other handlers register on import
    handlers.watch_gateway_pods(config.gateway_namespace)
    optional_crds = []
    if config.policy.multi_node.enabled:
        handlers.watch_leader_worker_sets()
        optional_crds.append(LWS_CRD)
    if config.policy.inference_pool.enabled:
        if args.namespace:
            parser.error(
                "the policy's inferencePool.enabled needs --all-namespaces: the operator "
                f"watches the CRD {INFERENCE_POOL_CRD} cluster-wide"
            )
        handlers.watch_inference_pools()
        optional_crds.append(INFERENCE_POOL_CRD)
    if optional_crds:
        handlers.watch_crds(optional_crds)
    if not args.namespace:
        handlers.watch_nodes()
    # Named namespaces only (no kopf patterns such as `llm-*`): no cluster-wide reads needed.
    exact = all(not set(name) & set("*?!,") for name in args.namespace)
    # kopf pauses every operator of equal priority; replicas must differ, and a stable hash of
    # the pod name keeps a restarted pod's priority.
    priority = args.priority
    if priority is None:
        priority = zlib.crc32(socket.gethostname().encode()) % 10_000
    asyncio.run(
        kopf.operator(
            priority=priority,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            peering_name=args.peering,
            standalone=args.peering is None,
            liveness_endpoint=args.liveness,
            settings=_settings(args.peering_lifetime, scanning=not (args.namespace and exact)),
            memo=kopf.Memo(controller=Controller(config)),
        )
    )
    return 0


def _settings(peering_lifetime: int, *, scanning: bool) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.posting.level = 100  # no per-handler events; the reconcile posts its own
    settings.watching.server_timeout = 270
    settings.peering.lifetime = peering_lifetime
    # kopf's cluster-wide scans (namespaces, CRDs) are off when only named namespaces are
    # served, so namespace-scoped RBAC is enough: kopf then takes the names as given.
    settings.scanning.disabled = not scanning
    # Only watch-event handlers exist: kopf never writes to the objects. Should that change,
    # its bookkeeping stays under gantry.dev/, never in the user-facing status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
    return settings


if __name__ == "__main__":
    raise SystemExit(main())
