"""Gantry's dashboards and alerts against a real Prometheus scraping real simulator processes.

No Kubernetes here (this module does not use the ``cluster`` fixture): Prometheus, from
Debian's package (localcluster/prometheus.py), scrapes on loopback

* three vLLM simulators (``python -m gantry_runtime.simulator``) with the target labels the
  PodMonitor's relabelling gives runtime pods: two replicas of team-a/gpt-oss-20b under a steady
  load, and team-c/pressure, one replica with a KV cache too small for its load and a queue
  that keeps growing, so the saturation alerts have something to see;
* a stand-in for the operator's ``gantry_*`` metrics (prometheus-client in this process, names
  and labels as docs/metrics.md gives them) scraped with ``honor_labels`` as the ServiceMonitor
  does; it also reports team-b/gpt-oss-120b, whose replicas never become ready, and keeps
  counting scrape and reconcile errors.
* the gantry-gateway's ``gantry_gateway_*`` metrics, from its own ``Metrics`` class in this
  process (scraped with ``honor_labels``), moved as traffic would move them: traffic to
  team-a/gpt-oss-20b with a few 5xx, team-d/sleepy whose held requests keep timing out, and
  tenant ``noisy`` refused with 429 three times in four.

Then every dashboard query (template variables substituted) and every alert expression must
return data, except the ones in ``NO_DATA_EXPECTED``, which must return none while the metrics
they read exist.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import openai
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from gantry_gateway.metrics import Metrics
from hack import monitoring
from localcluster import procs
from localcluster.cluster import free_ports
from localcluster.log import sayer
from localcluster.polling import wait_for
from localcluster.prometheus import (
    PrometheusServer,
    ScrapeJob,
    Target,
    has_finite_sample,
    relabel_config,
    sample_values,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RUNTIME_JOB = "gantry-runtime"
#: The job name the ServiceMonitor gives the operator (its Service's name); GantryOperatorDown
#: looks for it.
OPERATOR_JOB = "gantry-operator-metrics"
CHURN_JOB = "churn"
SERVED = "gpt-oss-20b"
STEADY = ("team-a", "gpt-oss-20b")  # two replicas, steady load; the per-model dashboard's pick
STUCK = ("team-b", "gpt-oss-120b")  # operator metrics only: 2 desired, none ready
PRESSURE = ("team-c", "pressure")  # one replica, tiny KV cache, a queue that keeps growing
SLEEPY = ("team-d", "sleepy")  # gateway metrics only: requests held, then timing out
GATEWAY_JOB = "gantry-gateway"
NOISY = "noisy"  # the tenant refused with 429 most of the time

#: Alert expressions (and dashboard queries, by (dashboard uid, where)) that must return no
#: data in this setup, and why. Each must still read metrics that exist.
NO_DATA_EXPECTED: dict[tuple[str, str], str] = {
    # The operator stand-in is scraped successfully the whole time, so nothing is absent.
    ("alert", "GantryOperatorDown"): "the operator (stand-in) is up",
}

#: Time to wait for every expected query to have data (scrapes and rules run every second;
#: rate windows need two samples, the queue needs a few seconds to grow past 10).
DATA_TIMEOUT = 120.0
#: Hard bound on the load generators: they stop by themselves after this long.
LOAD_DEADLINE = 300.0


_say = sayer("test-prometheus")


# -- simulators ---------------------------------------------------------------------------------


@dataclass
class Simulator:
    namespace: str
    deployment: str
    pod: str
    port: int
    process: procs.ManagedProcess

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"


def _start_simulator(
    log_dir: Path, namespace: str, deployment: str, pod: str, extra: list[str]
) -> Simulator:
    (port,) = free_ports(1)
    argv = [
        sys.executable, "-m", "gantry_runtime.simulator", "openai/gpt-oss-20b",
        "--served-model-name", SERVED, "--max-num-seqs", "4",
        "--host", "127.0.0.1", "--port", str(port), *extra,
    ]  # fmt: skip
    process = procs.spawn(pod, argv, log_dir / f"{pod}.log", env=dict(os.environ))
    sim = Simulator(namespace, deployment, pod, port, process)

    def healthy() -> bool:
        if not process.alive():
            raise AssertionError(f"simulator {pod} exited:\n{process.log_tail()}")
        with urllib.request.urlopen(sim.base_url + "/health", timeout=2) as response:
            return bool(response.status == 200)

    try:
        wait_for(healthy, 60, f"simulator {pod} healthy")
    except BaseException:
        procs.stop_all([process])
        raise
    return sim


# -- load ---------------------------------------------------------------------------------------


@dataclass
class Load:
    """Client threads sending OpenAI requests until ``stop`` is set (or the deadline)."""

    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    done: int = 0
    threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def spawn(self, sim: Simulator, prompt_words: int, max_tokens: int) -> None:
        client = openai.OpenAI(
            base_url=sim.base_url + "/v1", api_key="unused", max_retries=0, timeout=60
        )
        deadline = time.monotonic() + LOAD_DEADLINE

        def run() -> None:
            while not self.stop.is_set() and time.monotonic() < deadline:
                n = next(self._counter)
                # Distinct prompts: the simulated prefix cache must not make them free.
                content = f"request {n}: " + " ".join(f"w{n % 97}x{i}" for i in range(prompt_words))
                try:
                    if n % 2:
                        stream = client.chat.completions.create(
                            model=SERVED,
                            messages=[{"role": "user", "content": content}],
                            max_completion_tokens=max_tokens,
                            stream=True,
                        )
                        for _ in stream:
                            pass
                    else:
                        client.chat.completions.create(
                            model=SERVED,
                            messages=[{"role": "user", "content": content}],
                            max_completion_tokens=max_tokens,
                        )
                except Exception as error:  # reported by the test, never raised in the thread
                    if not self.stop.is_set():
                        with self._lock:
                            self.errors.append(f"{sim.pod}: {error!r}")
                    return
                with self._lock:
                    self.done += 1

        thread = threading.Thread(target=run, name=f"load-{sim.pod}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout: float = 30.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


# -- operator stand-in --------------------------------------------------------------------------


class OperatorStandIn:
    """The operator's metrics with docs/metrics.md's names and labels, in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        md = ("namespace", "modeldeployment")
        r = self.registry

        def gauge(name: str, labels: tuple[str, ...] = md) -> Gauge:
            return Gauge(name, name, labels, registry=r)

        self.desired = gauge("gantry_modeldeployment_replicas_desired")
        self.current = gauge("gantry_modeldeployment_replicas_current")
        self.ready_replicas = gauge("gantry_modeldeployment_replicas_ready")
        self.min = gauge("gantry_modeldeployment_replicas_min")
        self.max = gauge("gantry_modeldeployment_replicas_max")
        self.gpus = gauge("gantry_modeldeployment_gpus")
        self.queue_depth = gauge("gantry_modeldeployment_queue_depth")
        self.waiting = gauge("gantry_modeldeployment_requests_waiting")
        self.kv = gauge("gantry_modeldeployment_kv_cache_usage")
        self.ready = gauge("gantry_modeldeployment_ready")
        self.plan = gauge(
            "gantry_modeldeployment_plan_info",
            (*md, "model", "gpu_type", "tensor_parallel", "pipeline_parallel",
             "gpus_per_replica", "max_model_len"),
        )  # fmt: skip
        self.scale_events = Counter(
            "gantry_autoscaler_scale_events", "", (*md, "direction"), registry=r
        )
        self.reconciles = Counter("gantry_reconcile", "", ("result",), registry=r)
        self.reconcile_seconds = Histogram(
            "gantry_reconcile_duration_seconds", "", ("result",), registry=r
        )
        self.scrape_errors = Counter("gantry_scrape_errors", "", md, registry=r)
        self.scrape_seconds = Histogram("gantry_scrape_duration_seconds", "", registry=r)
        self.server: WSGIServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    def set_deployment(
        self,
        key: tuple[str, str],
        *,
        desired: int,
        ready: int,
        bounds: tuple[int, int],
        gpus_per_replica: int,
        model: str,
        waiting: float,
        kv: float,
    ) -> None:
        self.desired.labels(*key).set(desired)
        self.current.labels(*key).set(desired)
        self.ready_replicas.labels(*key).set(ready)
        self.min.labels(*key).set(bounds[0])
        self.max.labels(*key).set(bounds[1])
        self.gpus.labels(*key).set(desired * gpus_per_replica)
        self.ready.labels(*key).set(1 if ready else 0)
        self.queue_depth.labels(*key).set(waiting + 4 * ready)
        self.waiting.labels(*key).set(waiting)
        self.kv.labels(*key).set(kv)
        self.plan.labels(
            *key, model, "H100-80GB", str(gpus_per_replica), "1", str(gpus_per_replica), "8192"
        ).set(1)
        for direction in ("up", "down"):
            self.scale_events.labels(*key, direction)
        self.scrape_errors.labels(*key)

    def tick(self) -> None:
        """One reconcile and scrape round: one of them failing, every time."""
        self.reconciles.labels("applied").inc()
        self.reconcile_seconds.labels("applied").observe(0.04)
        self.reconciles.labels("error").inc()
        self.reconcile_seconds.labels("error").observe(0.3)
        self.scrape_errors.labels(*STUCK).inc()  # its pods never answer
        self.scrape_seconds.observe(0.02)

    def start(self) -> None:
        (self.port,) = free_ports(1)
        self.server, self.thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(10)


class GatewayStandIn:
    """The gantry-gateway's own metrics (its ``Metrics`` class, the names and labels it
    exports), in a private registry, moved by :meth:`tick` as traffic would move them."""

    def __init__(self) -> None:
        metrics = Metrics()
        self.registry = metrics.registry
        self.requests, self.held, self.outstanding = (
            metrics.requests, metrics.held, metrics.outstanding,
        )  # fmt: skip
        self.hold_timeouts, self.duration, self.ttft = (
            metrics.hold_timeouts, metrics.duration, metrics.ttft,
        )  # fmt: skip
        self.tokens, self.rate_limited, self.retries = (
            metrics.tokens, metrics.rate_limited, metrics.retries,
        )  # fmt: skip
        self.server: WSGIServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0
        self._n = 0

    def tick(self) -> None:
        """Half a second of traffic."""
        self._n += 1
        self.requests.labels(*STEADY, "team-a", "200").inc(4)
        if self._n % 4 == 0:
            self.requests.labels(*STEADY, "team-a", "502").inc()
            self.retries.labels(*STEADY).inc()
        self.outstanding.labels(*STEADY).set(3)
        for latency in (0.05, 0.08, 0.2):
            self.ttft.labels(*STEADY).observe(latency)
            self.duration.labels(*STEADY).observe(latency * 10)
        self.tokens.labels(*STEADY, "team-a", "prompt").inc(400)
        self.tokens.labels(*STEADY, "team-a", "completion").inc(120)
        self.held.labels(*SLEEPY).set(2)
        self.hold_timeouts.labels(*SLEEPY).inc()
        self.requests.labels(*SLEEPY, "team-a", "503").inc()
        self.rate_limited.labels(NOISY, "requests").inc(3)
        self.requests.labels(*STEADY, NOISY, "429").inc(3)
        self.requests.labels(*STEADY, NOISY, "200").inc()

    def start(self) -> None:
        (self.port,) = free_ports(1)
        self.server, self.thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(10)


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    prom: PrometheusServer
    sims: list[Simulator]
    operator: OperatorStandIn
    gateway: GatewayStandIn
    load: Load
    started: float  # wall-clock time the load started (range queries start here)

    def window(self, expr: str) -> list[dict[str, Any]]:
        return self.prom.query_range(expr, self.started, time.time(), 1.0)


def _ticker(
    operator: OperatorStandIn, gateway: GatewayStandIn, stop: threading.Event
) -> Callable[[], None]:
    def run() -> None:
        deadline = time.monotonic() + LOAD_DEADLINE
        while not stop.wait(0.5) and time.monotonic() < deadline:
            operator.tick()
            gateway.tick()

    return run


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    began = time.monotonic()
    logs = tmp_path_factory.mktemp("prometheus-stack")
    (endpoint,) = monitoring.load_yaml(monitoring.PODMONITOR)["spec"]["podMetricsEndpoints"]
    runtime_relabel = [relabel_config(r) for r in endpoint.get("metricRelabelings", [])]
    jobs = [
        ScrapeJob(RUNTIME_JOB, metric_relabel_configs=runtime_relabel),
        ScrapeJob(OPERATOR_JOB, honor_labels=True),
        ScrapeJob(GATEWAY_JOB, honor_labels=True),
        ScrapeJob(CHURN_JOB),
    ]
    sims: list[Simulator] = []
    operator = OperatorStandIn()
    gateway = GatewayStandIn()
    load = Load()
    ticker_stop = threading.Event()
    helpers: list[threading.Thread] = []
    prom = PrometheusServer(
        jobs=jobs, rule_files=[monitoring.RULE_FILE], state_dir=logs / "prometheus", log=_say
    )
    try:
        prom.start()
        sims.append(_start_simulator(logs, *STEADY, "gpt-oss-20b-0", []))
        sims.append(_start_simulator(logs, *STEADY, "gpt-oss-20b-1", []))
        pressure_args = ["--max-model-len", "1024", "--gantry-kv-cache-tokens", "1024"]
        sims.append(_start_simulator(logs, *PRESSURE, "pressure-0", pressure_args))
        operator.start()
        operator.set_deployment(
            STEADY, desired=2, ready=2, bounds=(1, 2), gpus_per_replica=1,
            model="openai/gpt-oss-20b", waiting=2, kv=0.2,
        )  # fmt: skip
        operator.set_deployment(
            STUCK, desired=2, ready=0, bounds=(2, 2), gpus_per_replica=2,
            model="openai/gpt-oss-120b", waiting=0, kv=0,
        )  # fmt: skip
        operator.set_deployment(
            PRESSURE, desired=1, ready=1, bounds=(1, 1), gpus_per_replica=1,
            model="openai/gpt-oss-20b", waiting=12, kv=0.95,
        )  # fmt: skip
        operator_labels = {"namespace": "gantry-system", "pod": "gantry-operator-0"}
        prom.set_targets(OPERATOR_JOB, [Target(f"127.0.0.1:{operator.port}", operator_labels)])
        gateway.start()
        gateway_labels = {"namespace": "gantry-system", "pod": "gantry-gateway-0"}
        prom.set_targets(GATEWAY_JOB, [Target(f"127.0.0.1:{gateway.port}", gateway_labels)])

        def runtime_targets(count: int) -> list[Target]:
            return [
                Target(
                    s.address, monitoring.runtime_target_labels(s.namespace, s.deployment, s.pod)
                )
                for s in sims[:count]
            ]

        # Targets come and go as pods do: one replica first, then all of them.
        prom.set_targets(RUNTIME_JOB, runtime_targets(1))
        prom.wait_for_targets(RUNTIME_JOB, 1)
        prom.set_targets(RUNTIME_JOB, runtime_targets(len(sims)))
        prom.wait_for_targets(RUNTIME_JOB, len(sims))
        prom.wait_for_targets(OPERATOR_JOB, 1)
        prom.wait_for_targets(GATEWAY_JOB, 1)

        helpers.append(
            threading.Thread(target=_ticker(operator, gateway, ticker_stop), daemon=True)
        )
        helpers[-1].start()
        started = time.time()
        for sim in sims[:2]:
            for _ in range(6):  # 4 run, about 2 wait
                load.spawn(sim, prompt_words=20, max_tokens=24)
        pressure = sims[2]
        for _ in range(10):
            load.spawn(pressure, prompt_words=120, max_tokens=150)

        def ramp() -> None:  # one more client a second: the queue keeps growing
            for _ in range(50):
                if load.stop.wait(1.0):
                    return
                load.spawn(pressure, prompt_words=120, max_tokens=150)

        helpers.append(threading.Thread(target=ramp, daemon=True))
        helpers[-1].start()
        _say(f"stack up in {time.monotonic() - began:.1f}s")
        yield Stack(prom, sims, operator, gateway, load, started)
    finally:
        ticker_stop.set()
        load.stop.set()
        for helper in helpers:
            helper.join(10)
        procs.stop_all([s.process for s in sims])  # aborts in-flight requests
        load.join()
        operator.stop()
        gateway.stop()
        prom.stop()
        _say(f"stack down after {time.monotonic() - began:.1f}s; {load.done} requests served")


# -- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    key: tuple[str, str]  # ("alert", name) or (dashboard uid, where)
    expr: str  # runnable PromQL


def _checks() -> list[Check]:
    checks = [Check(("alert", rule["alert"]), rule["expr"]) for rule in monitoring.alert_rules()]
    for dashboard in monitoring.dashboards().values():
        checks.extend(Check(q.key, q.runnable()) for q in monitoring.queries(dashboard))
    return checks


CHECKS = _checks()


def test_no_data_set_names_real_queries() -> None:
    keys = {check.key for check in CHECKS}
    assert set(NO_DATA_EXPECTED) <= keys
    assert all(reason.strip() for reason in NO_DATA_EXPECTED.values())


def test_prometheus_listens_on_loopback_only(stack: Stack) -> None:
    listeners = stack.prom.listeners()
    assert listeners
    assert all(address == "127.0.0.1" for _, address, _ in listeners), listeners


def test_rules_load_and_evaluate_without_errors(stack: Stack) -> None:
    names = sorted(rule["alert"] for rule in monitoring.alert_rules())

    def evaluated() -> list[dict[str, Any]]:
        rules = stack.prom.rules()
        return rules if all(r["health"] in ("ok", "err") for r in rules) else []

    rules = wait_for(evaluated, 30, "every rule evaluated")
    assert sorted(str(r["name"]) for r in rules) == names
    errors = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not errors, errors


@pytest.fixture(scope="module")
def missing_data(stack: Stack) -> dict[tuple[str, str], str]:
    """Poll until every expected query has data (or DATA_TIMEOUT): what still has none."""
    expected = [c for c in CHECKS if c.key not in NO_DATA_EXPECTED]
    began = time.monotonic()
    while True:
        missing: dict[tuple[str, str], str] = {}
        for check in expected:
            result = stack.window(check.expr)
            if not has_finite_sample(result):
                missing[check.key] = f"{check.expr.strip()} -> {sample_values(result)[:5]}"
        if not missing or time.monotonic() - began > DATA_TIMEOUT:
            break
        time.sleep(2)
    _say(f"{len(expected) - len(missing)}/{len(expected)} queries had data after "
         f"{time.monotonic() - began:.1f}s")  # fmt: skip
    return missing


def test_every_query_returns_data(stack: Stack, missing_data: dict[tuple[str, str], str]) -> None:
    """Every dashboard query and alert expression, save NO_DATA_EXPECTED, has a finite sample."""
    assert not missing_data, "no data:\n" + "\n".join(f"{k}: {v}" for k, v in missing_data.items())
    assert not stack.load.errors, stack.load.errors[:5]


def test_no_data_expected_queries_read_existing_metrics(
    stack: Stack, missing_data: dict[tuple[str, str], str]
) -> None:
    """The NO_DATA_EXPECTED queries stay empty over the window in which all others have data,
    and not because of a misspelt metric: every series they read exists."""
    assert not missing_data
    for check in CHECKS:
        if check.key not in NO_DATA_EXPECTED:
            continue
        result = stack.window(check.expr)
        assert not sample_values(result), f"{check.key} now has data: update NO_DATA_EXPECTED"
        selectors = [f'{{__name__="{name}"}}' for name in monitoring.metric_names(check.expr)]
        if "up{" in check.expr:
            selectors.append(f'up{{job="{OPERATOR_JOB}"}}')
        assert selectors, check.key
        for selector in selectors:
            assert stack.prom.query(f"count({selector})"), f"{check.key}: no series {selector}"


def test_alerts_pend_for_the_right_deployments(stack: Stack) -> None:
    """The alerts the stand-in's and the simulators' state call for are pending (their `for:`
    durations are minutes, longer than this test), for the right deployments."""
    wanted = {
        ("GantryReplicasNotReady", STUCK),
        ("GantryModelLoadTooSlow", STUCK),
        ("GantryOperatorScrapeErrors", STUCK),
        ("GantryAutoscalerAtMax", STEADY),
        ("GantryKVCacheSaturated", PRESSURE),
        ("GantryPreemptionsHigh", PRESSURE),
        ("GantryRequestQueueGrowing", PRESSURE),
        ("GantryGatewayHoldTimeouts", SLEEPY),
        ("GantryGateway429Storm", ("", "")),  # per tenant, not per deployment
    }

    def pending() -> set[tuple[str, tuple[str, str]]]:
        seen = set()
        for alert in stack.prom.alerts():
            labels = alert["labels"]
            key = (labels.get("namespace", ""), labels.get("modeldeployment", ""))
            seen.add((labels["alertname"], key))
        return seen if wanted <= seen else set()

    seen = wait_for(pending, DATA_TIMEOUT, f"pending alerts {sorted(wanted)}")
    deployments = (STEADY, STUCK, PRESSURE, SLEEPY, ("", ""))
    unexpected = {(name, key) for name, key in seen if key in deployments} - wanted
    assert not unexpected, unexpected
    assert all(a["state"] == "pending" for a in stack.prom.alerts())


def test_dashboard_variables_list_the_deployments(stack: Stack) -> None:
    (variable,) = [
        q for q in monitoring.queries(monitoring.dashboards()["gantry-model.json"])
        if q.where == "variable modeldeployment"
    ]  # fmt: skip
    values = {r["metric"]["modeldeployment"] for r in stack.prom.query(variable.runnable())}
    assert values == {STEADY[1]}
    namespaces = {
        r["metric"]["namespace"]
        for r in stack.prom.query("count by (namespace) (gantry_modeldeployment_replicas_desired)")
    }
    assert namespaces == {STEADY[0], STUCK[0], PRESSURE[0]}


def test_histograms_have_observations_from_the_requests(stack: Stack) -> None:
    ns, md = STEADY

    def observed() -> float:
        selector = f'{{namespace="{ns}", modeldeployment="{md}"}}'
        result = stack.prom.query(f"sum(vllm:time_to_first_token_seconds_count{selector})")
        return float(result[0]["value"][1]) if result else 0.0

    count = wait_for(lambda: observed() >= 10, 60, "10 requests observed")
    assert count
    p99 = stack.prom.query(
        "histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket"
        f'{{namespace="{ns}", modeldeployment="{md}"}}[30s])))'
    )
    value = float(p99[0]["value"][1])
    assert math.isfinite(value)
    assert 0 < value < 30


def test_targets_follow_the_file_sd_file(stack: Stack) -> None:
    """Adding and removing targets by rewriting the file (as pods come and go)."""
    address = f"127.0.0.1:{stack.operator.port}"
    stack.prom.set_targets(
        CHURN_JOB, [Target(address, {"pod": "a"}), Target(address, {"pod": "b"})]
    )
    targets = stack.prom.wait_for_targets(CHURN_JOB, 2)
    assert {t["labels"]["pod"] for t in targets} == {"a", "b"}
    stack.prom.set_targets(CHURN_JOB, [Target(address, {"pod": "b"})])
    (target,) = stack.prom.wait_for_targets(CHURN_JOB, 1)
    assert target["labels"]["pod"] == "b"


def test_targets_must_be_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Target("10.0.0.1:8000")
    with pytest.raises(ValueError, match="host:port"):
        Target("127.0.0.1")
