"""Gantry's autoscaler end to end: runtime pods that answer (the process runner runs a vLLM
simulator on each pod's IP), a burst of real OpenAI-client traffic, the operator scaling the
ModelDeployment up fast and back down slowly, as the API, the processes and /metrics show."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import itertools
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hack import monitoring
from localcluster.cluster import LocalCluster
from localcluster.log import sayer
from localcluster.operator_process import ROOT, OperatorProcess
from localcluster.polling import wait_for
from localcluster.prometheus import (
    PrometheusServer,
    ScrapeJob,
    Target,
    ensure_prometheus,
    relabel_config,
)
from localcluster.runner import ProcessRunner
from tests.integration.conftest import SETTLE, Namespace

pytestmark = pytest.mark.integration

NAME = "gpt-oss-20b"
SELECTOR = f"gantry.dev/model-deployment={NAME}"
MAX_REPLICAS = 4
TARGET = 4  # requests queued or running per replica
WINDOW = 20  # scaleDownDelaySeconds
MAX_NUM_SEQS = 4
#: The simulator decodes 40 tokens/s per sequence: a 100-token answer takes about 2.5 s.
SIM_ENV = {"GANTRY_SIM_DECODE_TOKENS_PER_S": "40", "GANTRY_SIM_STARTUP_DELAY_S": "0.5"}
MAX_TOKENS = 100
#: 16 clients in a closed loop keep 16 requests in flight: 4 replicas' worth at target 4.
CLIENTS = 16
REQUESTS_PER_CLIENT = 8
#: Generous bounds for a loaded 2-core machine; the figures seen are in the report's log.
REACT = 60.0
BURST_LIMIT = 300.0


def manifest() -> dict[str, Any]:
    md: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "examples" / f"{NAME}.yaml").read_text())
    md["spec"]["replicas"] = 1
    md["spec"]["serving"]["maxNumSeqs"] = MAX_NUM_SEQS
    md["spec"]["serving"]["env"] = [{"name": k, "value": v} for k, v in SIM_ENV.items()]
    md["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": MAX_REPLICAS,
        "metric": "queueDepth",
        "target": TARGET,
        "scaleUpDelaySeconds": 0,
        "scaleDownDelaySeconds": WINDOW,
    }
    return md


class Scraper:
    """A real Prometheus scraping the operator and every runtime pod, as the ServiceMonitor and
    PodMonitor make it (targets follow the pods, synced each second from the API)."""

    RUNTIME, OPERATOR = "gantry-runtime", "gantry-operator"

    def __init__(self, ns: Namespace, operator: OperatorProcess, state_dir: Path) -> None:
        self.ns = ns
        relabel = [relabel_config(r) for r in monitoring.runtime_metric_relabelings()]
        self.server = PrometheusServer(
            jobs=[
                ScrapeJob(self.RUNTIME, metric_relabel_configs=relabel),
                ScrapeJob(self.OPERATOR, honor_labels=True),
            ],
            state_dir=state_dir,
        )
        self.operator_address = operator.metrics_url.split("/")[2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sync, daemon=True)

    def _sync(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):  # a failed read is retried next second
                self.server.set_targets(
                    self.RUNTIME,
                    [
                        Target(
                            f"{pod['status']['podIP']}:8000",
                            monitoring.runtime_target_labels(
                                self.ns.name, NAME, pod["metadata"]["name"]
                            ),
                        )
                        for pod in self.ns.items("pods", SELECTOR)
                        if pod["status"].get("podIP")
                    ],
                )

    def __enter__(self) -> Scraper:
        self.server.start()
        self.server.set_targets(self.OPERATOR, [Target(self.operator_address)])
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.server.stop()

    def value(self, expr: str) -> float:
        result = self.server.query(expr)
        return float(result[0]["value"][1]) if result else float("nan")


@pytest.fixture
def prometheus(ns: Namespace, operator: OperatorProcess, tmp_path: Path) -> Iterator[Scraper]:
    ensure_prometheus()
    with Scraper(ns, operator, tmp_path / "prometheus") as scraper:
        yield scraper


@pytest.fixture
def runner(cluster: LocalCluster, ns: Namespace, tmp_path: Path) -> Iterator[ProcessRunner]:
    with ProcessRunner(cluster.kubeconfig, tmp_path / "runtime", namespaces=[ns.name]) as running:
        yield running


# -- the world, read -----------------------------------------------------------------------


say = sayer("autoscaling")


def ready_ips(ns: Namespace) -> list[str]:
    """podIPs of the Ready, non-terminating runtime pods, as the API reports them."""
    ips = []
    for pod in ns.items("pods", SELECTOR):
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
        if (
            conditions.get("Ready") == "True"
            and pod["status"].get("podIP")
            and not pod["metadata"].get("deletionTimestamp")
        ):
            ips.append(pod["status"]["podIP"])
    return sorted(ips)


def replicas(ns: Namespace) -> int:
    return int(ns.get("md", NAME)["spec"]["replicas"])


#: Straight to loopback addresses, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scaled_to(ns: Namespace, count: int) -> bool:
    """True at ``count`` replicas; otherwise raise with what the autoscaler last said."""
    md = ns.get("md", NAME)
    if md["spec"]["replicas"] == count:
        return True
    raise AssertionError(f"replicas {md['spec']['replicas']}: {md['status'].get('autoscaler')}")


def answers(ip: str) -> bool:
    try:
        with DIRECT.open(f"http://{ip}:8000/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def serving(ns: Namespace, runner: ProcessRunner, count: int) -> list[str]:
    """The IPs of ``count`` runtime pods that each have a live simulator answering, or []."""
    ips = ready_ips(ns)
    processes = {p.ip: p for p in runner.processes().values() if p.alive}
    if len(ips) != count or set(ips) != set(processes):
        return []
    return ips if all(answers(ip) for ip in ips) else []


def operator_samples(operator: OperatorProcess, ns: Namespace) -> dict[tuple[str, str], float]:
    """(sample name, direction label or "") -> value, for this ModelDeployment's series."""
    with DIRECT.open(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("namespace") == ns.name and labels.get("modeldeployment") == NAME:
                found[(sample.name, labels.get("direction", ""))] = sample.value
    return found


def events(ns: Namespace) -> list[dict[str, Any]]:
    listed = json.loads(ns.kubectl("get", "events.events.k8s.io", "-o", "json").stdout)
    mine = [
        e
        for e in listed["items"]
        if e.get("regarding", {}).get("kind") == "ModelDeployment"
        and e["regarding"].get("name") == NAME
        and e.get("reason") in ("ScaledUp", "ScaledDown")
    ]
    return sorted(mine, key=lambda e: e["eventTime"])


def event_time(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00"))


SCALED = re.compile(r"^Scaled from (\d+) to (\d+) replicas: ")


# -- the load --------------------------------------------------------------------------------


@dataclass
class Result:
    ip: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Burst:
    results: list[Result] = field(default_factory=list)
    max_queue_depth: float = 0.0
    started: float = 0.0
    ended: float = 0.0


class Pool:
    """OpenAI clients for the runtime pods that answer, re-read from the API every second.

    Services cannot route to loopback pod IPs, so the load goes straight to the pods, round
    robin. A pod joins the rotation once its simulator answers /health.
    """

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.clients: dict[str, openai.AsyncOpenAI] = {}
        self.active: list[str] = []
        self._turn = itertools.count()

    async def refresh(self) -> None:
        listed = await asyncio.to_thread(ready_ips, self.ns)
        active = []
        for ip in listed:
            if ip not in self.clients:
                if not await asyncio.to_thread(answers, ip):
                    continue
                self.clients[ip] = openai.AsyncOpenAI(
                    base_url=f"http://{ip}:8000/v1", api_key="unused", max_retries=0, timeout=120
                )
                say(f"load now also goes to {ip}")
            active.append(ip)
        if active:
            self.active = active

    def pick(self) -> tuple[str, openai.AsyncOpenAI]:
        ip = self.active[next(self._turn) % len(self.active)]
        return ip, self.clients[ip]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


async def _client(pool: Pool, number: int, burst: Burst) -> None:
    for turn in range(REQUESTS_PER_CLIENT):
        ip, client = pool.pick()
        result = Result(ip)
        try:
            response = await client.chat.completions.create(
                model=NAME,
                messages=[{"role": "user", "content": f"Client {number}, request {turn}: hello."}],
                max_tokens=MAX_TOKENS,
            )
        except openai.APIError as error:
            result.error = repr(error)
        else:
            result.finish_reason = response.choices[0].finish_reason
            result.completion_tokens = response.usage.completion_tokens if response.usage else 0
        burst.results.append(result)


async def _watch(pool: Pool, operator: OperatorProcess, burst: Burst, done: asyncio.Event) -> None:
    while not done.is_set():
        await pool.refresh()
        samples = await asyncio.to_thread(operator_samples, operator, pool.ns)
        depth = samples.get(("gantry_modeldeployment_queue_depth", ""), 0.0)
        burst.max_queue_depth = max(burst.max_queue_depth, depth)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.5)


async def _burst(ns: Namespace, operator: OperatorProcess) -> Burst:
    pool, burst, done = Pool(ns), Burst(), asyncio.Event()
    try:
        await pool.refresh()
        assert pool.active, "no runtime pod answers"
        watcher = asyncio.create_task(_watch(pool, operator, burst, done))
        burst.started = time.monotonic()
        await asyncio.gather(*(_client(pool, n, burst) for n in range(CLIENTS)))
        burst.ended = time.monotonic()
        done.set()
        await watcher
    finally:
        await pool.close()
    return burst


# -- the test ------------------------------------------------------------------------------


def test_bursty_load_scales_up_fast_and_back_down_one_replica_at_a_time(
    ns: Namespace, operator: OperatorProcess, runner: ProcessRunner, prometheus: Scraper
) -> None:
    assert ns.apply(manifest()).returncode == 0
    ns.wait_condition(NAME, "Ready", "True", "AllReplicasReady")
    (first,) = wait_for(lambda: serving(ns, runner, 1), SETTLE, "one simulator answers")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loading = pool.submit(asyncio.run, _burst(ns, operator))
        started = time.monotonic()
        wait_for(lambda: replicas(ns) > 1, REACT, "the autoscaler scaled up under load")
        say(f"scaled up {time.monotonic() - started:.1f}s after the burst started")
        md = ns.get("md", NAME)
        autoscaler = md["status"]["autoscaler"]
        assert autoscaler["desiredReplicas"] == md["spec"]["replicas"] > 1
        assert autoscaler["metric"] == "queueDepth"
        assert "scaled up to" in autoscaler["reason"]
        wait_for(lambda: scaled_to(ns, MAX_REPLICAS), REACT, f"{MAX_REPLICAS} replicas")
        wait_for(
            lambda: ns.get("deployment", NAME)["spec"]["replicas"] == MAX_REPLICAS,
            SETTLE,
            "the Deployment follows",
        )
        ips = wait_for(
            lambda: serving(ns, runner, MAX_REPLICAS),
            SETTLE,
            f"{MAX_REPLICAS} runtime pods with a simulator answering",
        )
        say(f"{MAX_REPLICAS} simulators answer {time.monotonic() - started:.1f}s after the start")
        burst = loading.result(timeout=BURST_LIMIT)
    say(
        f"burst of {len(burst.results)} requests took {burst.ended - burst.started:.1f}s; "
        f"peak queue depth {burst.max_queue_depth:g}"
    )

    assert len(burst.results) == CLIENTS * REQUESTS_PER_CLIENT
    failed = [r for r in burst.results if r.error or r.finish_reason != "length"]
    assert not failed, failed[:5]
    assert {r.completion_tokens for r in burst.results} == {MAX_TOKENS}
    # The new replicas took part of the burst.
    used = {r.ip for r in burst.results}
    assert first in used
    assert len(used & set(ips)) > 1, used
    assert burst.max_queue_depth > 0

    # After the load: down to minReplicas, one replica per step, once the window has passed.
    idle = time.monotonic()
    wait_for(lambda: scaled_to(ns, 1), WINDOW + 4 * SETTLE, "scaled back down to 1")
    say(f"back at 1 replica {time.monotonic() - idle:.1f}s after the burst ended")
    (last,) = wait_for(lambda: serving(ns, runner, 1), SETTLE, "one runtime pod left, answering")
    assert len(runner.processes()) == 1
    assert ns.get("deployment", NAME)["spec"]["replicas"] == 1

    scaled = events(ns)
    ups = [e for e in scaled if e["reason"] == "ScaledUp"]
    downs = [e for e in scaled if e["reason"] == "ScaledDown"]
    assert ups
    steps = [tuple(map(int, SCALED.match(e["note"]).groups())) for e in downs]  # type: ignore[union-attr]
    assert steps == [(n, n - 1) for n in range(MAX_REPLICAS, 1, -1)], steps
    assert all(e["type"] == "Normal" for e in scaled)
    # The last step up was recommended then, so no step down could come within the window.
    assert (event_time(downs[0]) - event_time(ups[-1])).total_seconds() > WINDOW - 5
    autoscaler = ns.get("md", NAME)["status"]["autoscaler"]
    assert autoscaler["desiredReplicas"] == 1
    assert "scaled down to 1" in autoscaler["reason"]
    assert autoscaler["lastScaleTime"]

    def settled_metrics() -> dict[tuple[str, str], float] | None:
        samples = operator_samples(operator, ns)
        desired = samples.get(("gantry_modeldeployment_replicas_desired", ""))
        return samples if desired == 1 else None

    samples = wait_for(settled_metrics, SETTLE, "gantry_modeldeployment_replicas_desired 1")
    assert samples is not None
    assert samples[("gantry_autoscaler_scale_events_total", "up")] == len(ups) >= 1
    assert samples[("gantry_autoscaler_scale_events_total", "down")] == len(downs)
    assert samples[("gantry_modeldeployment_replicas_max", "")] == MAX_REPLICAS
    assert samples[("gantry_modeldeployment_queue_depth", "")] == 0
    assert answers(last)
    assert "Traceback" not in operator.log(tail=10**7)

    # Prometheus saw the same story: the queue built up, replicas went to the maximum and back,
    # and more than one runtime pod served requests.
    selector = f'namespace="{ns.name}",modeldeployment="{NAME}"'
    span = f"{int(time.monotonic() - started) + 60}s"
    wait_for(
        lambda: prometheus.value(f"gantry_modeldeployment_replicas_desired{{{selector}}}") == 1,
        SETTLE,
        "Prometheus has the final desired replicas",
    )
    peak = f"max_over_time(gantry_modeldeployment_replicas_desired{{{selector}}}[{span}])"
    assert prometheus.value(peak) == MAX_REPLICAS
    queue = f"max_over_time(gantry_modeldeployment_queue_depth{{{selector}}}[{span}])"
    assert prometheus.value(queue) > TARGET
    waiting = f"max_over_time(sum(vllm:num_requests_waiting{{{selector}}})[{span}:1s])"
    assert prometheus.value(waiting) > 0
    served = prometheus.server.query(
        f"max_over_time(vllm:request_success_total{{{selector}}}[{span}]) > 0"
    )
    assert len({r["metric"]["pod"] for r in served}) > 1, served
