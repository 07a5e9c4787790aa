"""``gantry-gateway``: parse the command line once, start the watches, serve the API and the
metrics until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from gantry_gateway import kube
from gantry_gateway.audit import AuditLog
from gantry_gateway.config import GatewayConfig, parse_args
from gantry_gateway.limits import Limiter
from gantry_gateway.metrics import Metrics
from gantry_gateway.proxy import Handler, Services, metrics_app
from gantry_gateway.server import HttpServer
from gantry_gateway.state import State
from gantry_gateway.tenants import TENANT_LABEL
from gantry_gateway.upstream import UpstreamPool
from gantry_gateway.view import RUNTIME_SELECTOR, ModelEntry

log = logging.getLogger("gantry_gateway")

#: How long answers in progress may take to finish after SIGTERM (inside the chart's 60 s grace).
SHUTDOWN_SECONDS = 50.0
#: Audit lines are written together at most this long after their request ended: one write
#: call per batch, not per request (a file write costs the event loop 0.1-0.4 ms here).
AUDIT_FLUSH_SECONDS = 0.1


def sources(config: GatewayConfig) -> list[kube.Source]:
    namespaces = config.namespaces or ("",)
    found = [kube.Source("ModelDeployment", ns) for ns in namespaces]
    found += [kube.Source("Pod", ns, RUNTIME_SELECTOR) for ns in namespaces]
    found.append(kube.Source("Secret", config.tenant_namespace, TENANT_LABEL))
    if config.peer_selector:
        found.append(kube.Source("Peer", config.peer_namespace, config.peer_selector))
    return found


async def serve(config: GatewayConfig) -> None:
    loop = asyncio.get_running_loop()
    api = kube.api_client(config.kubeconfig)
    state = State(upstream_port=config.upstream_port)
    metrics = Metrics()
    audit = AuditLog(
        config.audit_log,
        config.audit_include_content,
        defer=lambda flush: loop.call_later(AUDIT_FLUSH_SECONDS, flush),
    )
    stop = threading.Event()

    def on_reset(source: kube.Source, items: list[dict[str, Any]]) -> None:
        loop.call_soon_threadsafe(state.reset, source.kind, source.namespace, items)

    def on_event(source: kube.Source, type_: str, obj: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(state.event, source.kind, type_, obj)

    def wake(entry: ModelEntry) -> None:
        async def scale() -> None:
            try:
                done = await loop.run_in_executor(
                    None,
                    kube.scale_from_zero,
                    api,
                    entry.namespace,
                    entry.name,
                    entry.resource_version,
                )
            except Exception as exc:
                log.error("Failed to scale %s/%s from zero: %s", entry.namespace, entry.name, exc)
                return
            if done:
                log.info("Scaled ModelDeployment %s/%s from 0 to 1", entry.namespace, entry.name)
            else:
                log.info(
                    "Did not scale ModelDeployment %s/%s: it changed since it was seen at 0",
                    entry.namespace,
                    entry.name,
                )

        tasks.add(task := loop.create_task(scale()))
        task.add_done_callback(tasks.discard)

    tasks: set[asyncio.Task[None]] = set()
    streams = [kube.WatchStream(api, s, on_reset, on_event, stop) for s in sources(config)]
    for stream in streams:
        stream.start()
    pool = UpstreamPool(config.connect_timeout_seconds)
    services = Services(config, state, Limiter(), metrics, audit, pool, wake)
    expected = {f"{s.kind}/{s.namespace}" for s in sources(config)}
    front = HttpServer(Handler(services, expected), config.max_body_bytes)
    await front.start(config.host, config.port)
    metrics_runner = web.AppRunner(metrics_app(metrics), access_log=None)
    await metrics_runner.setup()
    await web.TCPSite(metrics_runner, config.host, config.metrics_port).start()
    log.info(
        "Serving the OpenAI API on %s:%d, metrics on :%d, namespaces %s",
        config.host,
        config.port,
        config.metrics_port,
        ", ".join(config.namespaces) or "(all)",
    )
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    log.info("Stopping: draining requests in flight")
    stop.set()
    await front.shutdown(SHUTDOWN_SECONDS)
    pool.close()
    await metrics_runner.cleanup()
    audit.close()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (a declared dependency; cheaper socket I/O and scheduling) when it
    can be imported, else None (asyncio's own)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(config))
