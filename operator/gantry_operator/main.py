"""``gantry-operator``: run the kopf operator (peering, probes and namespaces from flags)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import zlib
from collections.abc import Sequence

import kopf
import prometheus_client

from gantry_operator import handlers, reconcile
from gantry_operator.policy import load_policy


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
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every handler run; Gantry's reconcile logs what it changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    reconcile.configure(load_policy(args.policy))
    host, _, port = args.metrics_address.rpartition(":")
    prometheus_client.start_http_server(int(port), addr=host or "0.0.0.0")
    _ = handlers  # registers the handlers with kopf
    handlers.PEERING_LIFETIME = args.peering_lifetime
    # Named namespaces only (no kopf patterns such as `llm-*`): no cluster-wide reads needed.
    exact = all(not set(name) & set("*?!,") for name in args.namespace)
    handlers.CLUSTER_SCANNING = not (args.namespace and exact)
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
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
