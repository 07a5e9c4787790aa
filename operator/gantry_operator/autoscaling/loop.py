"""The autoscaler loop: scrape our ready runtime pods, export the load, decide, scale.

One asyncio task ticks for every ModelDeployment the watch holds. The load gauges are exported
for all of them (HPA and KEDA users read them too); decisions are made only where
``spec.autoscaling.enabled``. A decision goes through the scale subresource, so the reconcile
propagates it like any ``kubectl scale``; the ``status.autoscaler`` block is the autoscaler's
own (server-side apply, field manager ``gantry-autoscaler``).

Every scrape is bounded (DESIGN.md 4.12): a byte limit, a deadline and a concurrency limit
shared by all pods. Only the serving pods of the workload this ModelDeployment controls are
scraped (of its Deployment's ReplicaSets, or the leaders of its LeaderWorkerSet groups); a pod
past a bound is skipped, counted, reported with an Event (at most one per ModelDeployment and
kind of failure in ten minutes), and retried with a backoff (1, 2, 4 ... ticks, at most a
minute) rather than every tick.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gantry_operator import k8s, metrics
from gantry_operator.autoscaling import policy
from gantry_operator.config import ScrapeLimits
from gantry_operator.manifests.common import LEADER_LABEL
from gantry_operator.manifests.leaderworkerset import KIND as LWS_KIND
from gantry_operator.manifests.leaderworkerset import SET_NAME_LABEL
from gantry_operator.reconcile import Reconciler
from gantry_operator.spec import ModelDeploymentSpec
from gantry_operator.store import Children, Key, Store, controller_of, key_of, owned_by
from gantry_runtime.launchspec import PORT

log = logging.getLogger(__name__)
RUNNING, WAITING, KV = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
)
_WANTED = (RUNNING, WAITING, KV)
#: The classic text format keeps vLLM's `vllm:` names (OpenMetrics 1.0 would rewrite them).
ACCEPT = "text/plain; version=0.0.4"


class ScrapeError(Exception):
    """A pod's /metrics could not be read within the bounds; ``kind`` says which way."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_metrics(text: str) -> tuple[float, float, float]:
    """(running, waiting, KV usage) from one pod's /metrics, summed over label sets.

    Only the lines of the three families are parsed (a vLLM page holds ~40 families)."""
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(_WANTED) or (line.startswith("# ") and any(w in line for w in _WANTED))
    ]
    values = {RUNNING: 0.0, WAITING: 0.0, KV: 0.0}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        if family.name in values:
            values[family.name] += sum(sample.value for sample in family.samples)
    return values[RUNNING], values[WAITING], values[KV]


#: The gantry-gateway's metrics (docs/autoscaling.md): port and the three families read.
GATEWAY_PORT = 9091
GW_REQUESTS, GW_HELD, GW_OUTSTANDING = (
    "gantry_gateway_requests_total",
    "gantry_gateway_held_requests",
    "gantry_gateway_outstanding_requests",
)
_GATEWAY_WANTED = (GW_REQUESTS, GW_HELD, GW_OUTSTANDING)


def _metric_name(line: str) -> str:
    if line.startswith(("# HELP ", "# TYPE ")):
        return line[7:].split(" ", 1)[0]
    return line.split("{", 1)[0].split(" ", 1)[0]


def parse_gateway_metrics(text: str) -> dict[Key, tuple[float, float, float]]:
    """(requests counted, held, in flight) per (namespace, model_deployment) from one gateway
    pod's /metrics, summed over tenants and codes. Only the three families' lines are parsed."""
    lines = [line for line in text.splitlines() if _metric_name(line) in _GATEWAY_WANTED]
    found: dict[Key, list[float]] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name not in _GATEWAY_WANTED:
                continue  # a counter's _created sample
            key = (sample.labels.get("namespace", ""), sample.labels.get("model_deployment", ""))
            values = found.setdefault(key, [0.0, 0.0, 0.0])
            values[_GATEWAY_WANTED.index(sample.name)] += sample.value
    return {key: (v[0], v[1], v[2]) for key, v in found.items()}


async def fetch_metrics(
    session: aiohttp.ClientSession, ip: str, limits: ScrapeLimits, *, port: int = PORT
) -> str:
    """One pod's /metrics text; raises ScrapeError past the byte limit or the deadline."""
    body = bytearray()
    try:
        async with asyncio.timeout(limits.deadline_seconds):
            async with session.get(
                f"http://{ip}:{port}/metrics", headers={"Accept": ACCEPT}
            ) as response:
                if response.status != 200:
                    raise ScrapeError("status", f"HTTP {response.status}")
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > limits.max_bytes:
                        raise ScrapeError(
                            "size", f"/metrics is larger than {limits.max_bytes} bytes"
                        )
    except TimeoutError:
        raise ScrapeError(
            "deadline", f"no complete answer within {limits.deadline_seconds:g} s"
        ) from None
    except aiohttp.ClientError as exc:
        raise ScrapeError("connection", str(exc) or type(exc).__name__) from None
    return body.decode("utf-8", errors="replace")


async def scrape(
    session: aiohttp.ClientSession, ip: str, limits: ScrapeLimits, *, port: int = PORT
) -> tuple[float, float, float]:
    """One runtime pod's load; raises ScrapeError past a bound or on a page it cannot parse."""
    text = await fetch_metrics(session, ip, limits, port=port)
    try:
        return parse_metrics(text)
    except ValueError as exc:
        raise ScrapeError("format", f"unparseable /metrics: {exc}") from None


async def scrape_gateway(
    session: aiohttp.ClientSession, ip: str, limits: ScrapeLimits, *, port: int = GATEWAY_PORT
) -> dict[Key, tuple[float, float, float]]:
    """One gateway pod's per-model counters, within the same bounds as a runtime pod."""
    text = await fetch_metrics(session, ip, limits, port=port)
    try:
        return parse_gateway_metrics(text)
    except ValueError as exc:
        raise ScrapeError("format", f"unparseable /metrics: {exc}") from None


@dataclass(frozen=True)
class GatewayScrape:
    """What every gateway pod answered in one tick (``failed``: pod -> why not)."""

    namespace: str
    answers: Mapping[str, Mapping[Key, tuple[float, float, float]]]
    failed: Mapping[str, str]

    def view(self, key: Key) -> policy.GatewayView:
        held = sum(a.get(key, (0.0, 0.0, 0.0))[1] for a in self.answers.values())
        outstanding = sum(a.get(key, (0.0, 0.0, 0.0))[2] for a in self.answers.values())
        requests = {pod: a.get(key, (0.0, 0.0, 0.0))[0] for pod, a in self.answers.items()}
        problem = ""
        if self.failed:
            pod, why = sorted(self.failed.items())[0]
            problem = f"gateway pod {pod} could not be scraped ({why})"
        elif not self.answers:
            problem = (
                f"no gateway pod (label app.kubernetes.io/component=gateway) running in "
                f"namespace {self.namespace}"
            )
        return policy.GatewayView(not problem, requests, held, outstanding, problem)


def our_ready_pods(children: Children, uid: str) -> list[tuple[str, str]]:
    """(pod name, IP) of the ready serving pods of the workload this ModelDeployment controls.

    A pod counts only if its controller is what that workload makes: for a Deployment the
    ReplicaSet named after it and the pod's template hash; for a LeaderWorkerSet (multi-node
    groups) its leader StatefulSet, named like it, and only the leaders (the workers serve no
    HTTP and hold no metrics of their own)."""
    expected: Callable[[Mapping[str, Any]], tuple[str, str]] | None = None
    deployment = children.get("Deployment")
    groups = children.get(LWS_KIND)
    if deployment is not None and owned_by(deployment, uid):
        name = deployment["metadata"]["name"]

        def expected(labels: Mapping[str, Any]) -> tuple[str, str]:
            return "ReplicaSet", f"{name}-{labels.get('pod-template-hash')}"

    elif groups is not None and owned_by(groups, uid):
        name = groups["metadata"]["name"]

        def expected(labels: Mapping[str, Any]) -> tuple[str, str]:
            leader = labels.get(LEADER_LABEL) == "0" and labels.get(SET_NAME_LABEL) == name
            return ("StatefulSet", name) if leader else ("", "")

    if expected is None:
        return []
    ready = []
    for pod in children.pods:
        meta = pod["metadata"]
        ref = controller_of(pod) or {}
        status = pod.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if (
            (ref.get("kind"), ref.get("name")) == expected(meta.get("labels") or {})
            and conditions.get("Ready") == "True"
            and status.get("podIP")
            and not meta.get("deletionTimestamp")
        ):
            ready.append((str(meta["name"]), str(status["podIP"])))
    return sorted(ready)


#: A pod that keeps failing is retried after 1, 2, 4 ... ticks, at most this many seconds.
MAX_SCRAPE_BACKOFF_SECONDS = 60.0
#: At most one ScrapeFailed event (and log line) per ModelDeployment and kind of failure in
#: this many seconds, however many of its pods fail.
SCRAPE_EVENT_SECONDS = 600.0


@dataclass(frozen=True)
class Failure:
    kind: str
    count: int
    retry_at: float


@dataclass
class Memory:
    """What the loop keeps between ticks for one ModelDeployment."""

    history: list[policy.Recommendation] = field(default_factory=list)
    #: Pods whose last scrape failed: how (an Event when a pod starts failing a new way), and
    #: when to try again (a failing pod is not read every tick).
    failing: dict[str, Failure] = field(default_factory=dict)
    #: When a ScrapeFailed event was last posted, by kind of failure.
    reported: dict[str, float] = field(default_factory=dict)
    #: With minReplicas 0: the gateway traffic seen so far, and when (wall clock, RFC 3339)
    #: the current quiet stretch began.
    idle: policy.Idle = field(default_factory=policy.Idle)
    idle_since: str = ""


@dataclass(frozen=True)
class _Job:
    """One ModelDeployment's work in a tick: the pods due for a scrape, then a decision."""

    md: Mapping[str, Any]
    spec: ModelDeploymentSpec
    memory: Memory
    pods: Sequence[tuple[str, str]]
    started: float


class Autoscaler:
    def __init__(
        self,
        store: Store,
        reconciler: Reconciler,
        *,
        interval: float,
        limits: ScrapeLimits,
        gateway_namespace: str = "gantry-system",
    ) -> None:
        self.store, self.reconciler = store, reconciler
        self.interval, self.limits = interval, limits
        self.gateway_namespace = gateway_namespace
        #: Last failure reported per gateway pod (a warning when a pod starts failing).
        self._gateway_failing: dict[str, str] = {}
        self.memory: dict[Key, Memory] = {}
        self._slots = asyncio.Semaphore(limits.concurrency)

    def forget(self, key: Key) -> None:
        self.memory.pop(key, None)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.limits.concurrency, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                started = time.monotonic()
                await self.tick(session)
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def tick(self, session: aiohttp.ClientSession, *, now: float | None = None) -> None:
        jobs = [job for md in self.store.model_deployments() if (job := self._job(md))]
        to_zero = any(
            j.spec.autoscaling.enabled and j.spec.autoscaling.min_replicas == 0 for j in jobs
        )
        gateway = await self._scrape_gateways(session) if to_zero else None
        await asyncio.gather(*(self._one(session, job, now, gateway) for job in jobs))

    async def _scrape_gateways(self, session: aiohttp.ClientSession) -> GatewayScrape:
        """Every running gateway pod's counters (only when a model may scale to zero)."""
        pods = self.store.gateway_pods(self.gateway_namespace)

        async def one(ip: str) -> dict[Key, tuple[float, float, float]] | ScrapeError:
            async with self._slots:
                try:
                    return await scrape_gateway(session, ip, self.limits)
                except ScrapeError as exc:
                    return exc

        results = await asyncio.gather(*(one(ip) for _, ip in pods))
        answers, failed = {}, {}
        for (pod, ip), result in zip(pods, results, strict=True):
            if isinstance(result, ScrapeError):
                failed[pod] = str(result)
                if self._gateway_failing.get(pod) != result.kind:
                    log.warning("Skipped gateway pod %s (%s) in autoscaling: %s", pod, ip, result)
            else:
                answers[pod] = result
        self._gateway_failing = {
            pod: r.kind
            for (pod, _), r in zip(pods, results, strict=True)
            if isinstance(r, ScrapeError)
        }
        return GatewayScrape(self.gateway_namespace, answers, failed)

    def _job(self, md: Mapping[str, Any]) -> _Job | None:
        """What one ModelDeployment needs this tick; None when that is nothing to await (no
        pod due for a scrape and no autoscaling: the load is recorded right here)."""
        if md["metadata"].get("deletionTimestamp"):
            return None
        spec = self.reconciler.intent(md).spec
        if spec is None:
            return None  # the reconcile reports it
        key = key_of(md)
        memory = self.memory.setdefault(key, Memory())
        started = time.monotonic()
        ready = dict(our_ready_pods(self.store.children(key), md["metadata"]["uid"]))
        memory.failing = {p: f for p, f in memory.failing.items() if p in ready}
        due = [
            (pod, ip)
            for pod, ip in ready.items()
            if pod not in memory.failing or memory.failing[pod].retry_at <= started
        ]
        if not due and not spec.autoscaling.enabled:
            metrics.record_load(key[0], key[1], 0.0, 0.0, 0.0)
            memory.history.clear()
            return None
        return _Job(md, spec, memory, due, started)

    async def _scrape(
        self, session: aiohttp.ClientSession, ip: str
    ) -> tuple[float, float, float] | ScrapeError:
        async with self._slots:
            try:
                return await scrape(session, ip, self.limits)
            except ScrapeError as exc:
                return exc

    async def _one(
        self,
        session: aiohttp.ClientSession,
        job: _Job,
        now: float | None,
        gateway: GatewayScrape | None = None,
    ) -> None:
        md, spec, memory, pods = job.md, job.spec, job.memory, job.pods
        key = key_of(md)
        results = await asyncio.gather(*(self._scrape(session, ip) for _, ip in pods))
        metrics.scrape_seconds.observe(time.monotonic() - job.started)
        samples = [r for r in results if not isinstance(r, ScrapeError)]
        await self._report_failures(md, memory, pods, results, job.started)
        running = sum(s[0] for s in samples)
        waiting = sum(s[1] for s in samples)
        kv = sum(s[2] for s in samples) / len(samples) if samples else 0.0
        metrics.record_load(key[0], key[1], running + waiting, waiting, kv)
        if not spec.autoscaling.enabled:
            memory.history.clear()
            return
        load = policy.Load(ready=len(samples), running=running, waiting=waiting, kv_usage=kv)
        at = now or time.monotonic()
        extra: dict[str, Any] = {}
        if spec.autoscaling.min_replicas == 0 and gateway is not None:
            view = gateway.view(key)
            quiet_before = memory.idle.since is not None
            decision, memory.history, memory.idle = policy.decide_with_zero(
                spec.autoscaling,
                load,
                view,
                current=spec.replicas,
                now=at,
                history=memory.history,
                idle=memory.idle,
            )
            if memory.idle.since is None:
                memory.idle_since = ""
            elif not quiet_before:
                started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=at - memory.idle.since)
                memory.idle_since = started.strftime("%Y-%m-%dT%H:%M:%SZ")
            extra = {"idleSince": memory.idle_since} if memory.idle_since else {}
            if view.held:
                extra["heldRequests"] = int(view.held)
        else:
            memory.idle = policy.Idle()
            decision, memory.history = policy.decide(
                spec.autoscaling, load, current=spec.replicas, now=at, history=memory.history
            )
        await asyncio.to_thread(
            self._act, md, spec.replicas, spec.autoscaling.metric, decision, extra
        )

    async def _report_failures(
        self,
        md: Mapping[str, Any],
        memory: Memory,
        pods: Sequence[tuple[str, str]],
        results: Sequence[object],
        now: float,
    ) -> None:
        key = key_of(md)
        for (pod, ip), result in zip(pods, results, strict=True):
            before = memory.failing.pop(pod, None)
            if not isinstance(result, ScrapeError):
                continue
            count = before.count + 1 if before else 1
            backoff = min(self.interval * 2 ** (count - 1), MAX_SCRAPE_BACKOFF_SECONDS)
            memory.failing[pod] = Failure(result.kind, count, now + backoff - self.interval / 2)
            metrics.scrape_errors.labels(*key).inc()
            new_kind = before is None or before.kind != result.kind
            last = memory.reported.get(result.kind)
            if new_kind and (last is None or now - last >= SCRAPE_EVENT_SECONDS):
                memory.reported[result.kind] = now
                message = f"Skipped runtime pod {pod} ({ip}) in autoscaling: {result}"
                log.warning("%s/%s: %s", key[0], key[1], message)
                await asyncio.to_thread(
                    k8s.event, md, reason="ScrapeFailed", message=message, warning=True
                )

    def _act(
        self,
        md: Mapping[str, Any],
        current: int,
        metric: str,
        decision: policy.Decision,
        extra: Mapping[str, Any],
    ) -> None:
        """Scale when the decision says so; write status.autoscaler when the decision (or, with
        minReplicas 0, the start of the quiet stretch or held requests) changed."""
        namespace, name = key_of(md)
        previous: Mapping[str, Any] = (md.get("status") or {}).get("autoscaler") or {}
        record: dict[str, Any] = {
            "desiredReplicas": decision.replicas,
            "recommendedReplicas": decision.recommended,
            "metric": metric,
            "reason": decision.reason,
            **extra,
        }
        try:
            if decision.replicas != current:
                k8s.scale(namespace, name, decision.replicas)
                metrics.scale_events.labels(namespace, name, decision.direction).inc()
                record["lastScaleTime"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                message = (
                    f"Scaled from {current} to {decision.replicas} replicas: {decision.reason}"
                )
                k8s.event(md, reason=f"Scaled{decision.direction.capitalize()}", message=message)
                log.info("%s/%s: %s", namespace, name, message)
            elif "lastScaleTime" in previous:
                record["lastScaleTime"] = previous["lastScaleTime"]
            # Written when the decision changes, not every tick (the reason has live numbers).
            if any(
                previous.get(k) != record.get(k)
                for k in (
                    "desiredReplicas", "recommendedReplicas", "lastScaleTime", "idleSince",
                    "heldRequests",
                )
            ):  # fmt: skip
                k8s.apply_status(namespace, name, {"autoscaler": record}, manager=k8s.AUTOSCALER)
        except (k8s.GoneError, k8s.NamespaceTerminatingError):
            pass  # deleted meanwhile
