"""Scale to zero (``minReplicas: 0``): the policy's arithmetic over the gateway's counters, and
the parsing of a gateway pod's /metrics page as prometheus-client writes it with the metric
names and labels the gateway exports (docs/autoscaling.md)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gantry_gateway.metrics import Metrics
from gantry_operator.autoscaling.loop import (
    GatewayScrape,
    ScrapeError,
    parse_gateway_metrics,
    scrape_gateway,
)
from gantry_operator.autoscaling.policy import (
    GatewayView,
    Idle,
    Load,
    Recommendation,
    decide_with_zero,
    observe_idle,
)
from gantry_operator.config import ScrapeLimits
from gantry_operator.spec import Autoscaling

AUTO = Autoscaling(
    enabled=True,
    min_replicas=0,
    max_replicas=4,
    target=4.0,
    scale_down_delay_seconds=60,
    scale_to_zero_after_seconds=120,
)
NO_LOAD = Load(ready=1, running=0.0, waiting=0.0, kv_usage=0.0)


def view(
    requests: Mapping[str, float] | None = None, held: float = 0.0, outstanding: float = 0.0
) -> GatewayView:
    counters = {"gw-a": 5.0, "gw-b": 7.0} if requests is None else requests
    return GatewayView(True, counters, held, outstanding)


def run(
    views: list[GatewayView], *, current: int, load: Load = NO_LOAD, tick: float = 10.0
) -> list[tuple[int, str]]:
    """Tick the policy over ``views``, applying each decision; (replicas, reason) per tick."""
    idle, out = Idle(), []
    history: list[Recommendation] = []
    for n, seen in enumerate(views):
        decision, history, idle = decide_with_zero(
            AUTO, load, seen, current=current, now=1000.0 + n * tick, history=history, idle=idle
        )
        current = decision.replicas
        out.append((current, decision.reason))
    return out


def test_quiet_for_the_whole_window_goes_to_zero_not_before() -> None:
    # The first view is the baseline of the counters (nothing to compare it with): the quiet
    # stretch starts at the second (t=1010) and the window of 120 s is full at t=1130.
    steps = run([view()] * 15, current=1)
    replicas = [r for r, _ in steps]
    assert replicas[:13] == [1] * 13
    assert replicas[13:] == [0, 0]
    assert "no requests through the gateway for 120s" in steps[13][1]
    assert "no gateway traffic for 110s of scaleToZeroAfterSeconds 120s" in steps[12][1]
    assert "gateway traffic" in steps[0][1]


def test_a_moving_counter_restarts_the_window() -> None:
    views = (
        [view()] * 10 + [view({"gw-a": 6.0, "gw-b": 7.0})] + [view({"gw-a": 6.0, "gw-b": 7.0})] * 12
    )
    replicas = [r for r, _ in run(views, current=1)]
    # The request seen at tick 10 ends the quiet stretch; it starts again at tick 11 (t=1110)
    # and is full at t=1230, tick 23: never reached in these 23 ticks.
    assert replicas == [1] * 23
    replicas = [r for r, _ in run([*views, view({"gw-a": 6.0, "gw-b": 7.0})], current=1)]
    assert replicas[-1] == 0


@pytest.mark.parametrize(
    "busy",
    [
        view(held=1.0),
        view(outstanding=2.0),
        view({"gw-a": 5.0}),  # a gateway pod went away: the set of counters changed
        view({"gw-a": 5.0, "gw-b": 7.0, "gw-c": 0.0}),  # a new gateway pod
    ],
)
def test_held_in_flight_or_a_changed_gateway_set_is_traffic(busy: GatewayView) -> None:
    idle = observe_idle(view(), Idle(), 1000.0)
    idle = observe_idle(view(), idle, 1010.0)
    assert idle.since == 1010.0  # the first view is only the counters' baseline
    assert observe_idle(busy, idle, 1020.0).since is None


@pytest.mark.parametrize(
    "missing",
    [
        GatewayView(False, {}, problem="no gateway pod running in namespace gantry-system"),
        GatewayView(False, {"gw-a": 5.0}, problem="gateway pod gw-b could not be scraped"),
    ],
)
def test_missing_gateway_data_is_never_idle(missing: GatewayView) -> None:
    steps = run([missing] * 30, current=1)
    assert [r for r, _ in steps] == [1] * 30
    assert f"not scaling to zero: {missing.problem}" in steps[-1][1]
    # One gap in an otherwise quiet stretch starts the window again.
    views = [view()] * 11 + [missing] + [view()] * 11
    assert [r for r, _ in run(views, current=1)] == [1] * 23


def test_at_zero_only_held_requests_wake_one_replica() -> None:
    heavy = Load(ready=0, running=0.0, waiting=0.0, kv_usage=0.0)
    steps = run([view(), view(outstanding=3.0), view({})], current=0, load=heavy)
    assert [r for r, _ in steps] == [0, 0, 0]
    missing = GatewayView(False, {}, held=0.0, problem="no gateway pod")
    assert run([missing], current=0) == [(0, "at zero: not scaling to zero: no gateway pod")]
    # Held at an answering pod counts even when another pod failed to answer.
    partial = GatewayView(False, {"gw-a": 5.0}, held=2.0, problem="gateway pod gw-b failed")
    (woken,) = run([partial], current=0)
    assert woken == (1, "2 request(s) held at the gateway: woke from zero")


def test_above_zero_it_scales_on_vllm_load_but_not_below_one_until_idle() -> None:
    busy = Load(ready=1, running=8.0, waiting=4.0, kv_usage=0.5)  # 12 queued, target 4
    steps = run([view(outstanding=12.0)], current=1, load=busy)
    assert steps[0][0] == 3
    # Traffic keeps coming (the counters move every tick) but vLLM reports nothing queued:
    # down one replica per step after scaleDownDelaySeconds, never below one.
    moving = [view({"gw-a": float(n), "gw-b": 0.0}) for n in range(40)]
    quiet = Load(ready=3, running=0.0, waiting=0.0, kv_usage=0.0)
    replicas = [r for r, _ in run(moving, current=3, load=quiet)]
    assert min(replicas) == 1
    assert replicas[-1] == 1
    assert replicas.index(1) > 6  # not before the 60 s window was watched


def test_idle_goes_to_zero_from_several_replicas() -> None:
    replicas = [r for r, _ in run([view()] * 14, current=3)]
    assert replicas[-1] == 0
    assert 0 not in replicas[:13]


# -- the gateway's page ------------------------------------------------------------------------


def gateway_page(
    traffic: Mapping[tuple[str, str, str, str], float], held: Mapping[tuple[str, str], float]
) -> str:
    """A /metrics page with the gateway's families (names and labels of the interface)."""
    registry = CollectorRegistry()
    requests = Counter(
        "gantry_gateway_requests",
        "Requests",
        ("namespace", "model_deployment", "tenant", "code"),
        registry=registry,
    )
    held_gauge = Gauge(
        "gantry_gateway_held_requests", "Held", ("namespace", "model_deployment"), registry=registry
    )
    outstanding = Gauge(
        "gantry_gateway_outstanding_requests",
        "In flight",
        ("namespace", "model_deployment"),
        registry=registry,
    )
    duration = Histogram(
        "gantry_gateway_request_duration_seconds",
        "Duration",
        ("namespace", "model_deployment"),
        registry=registry,
    )
    for labels, value in traffic.items():
        requests.labels(*labels).inc(value)
        duration.labels(*labels[:2]).observe(0.5)
    for model, value in held.items():
        held_gauge.labels(*model).set(value)
        outstanding.labels(*model).set(value + 1)
    return generate_latest(registry).decode()


def test_the_gateway_page_is_summed_per_model() -> None:
    text = gateway_page(
        {
            ("ns1", "chat", "team-a", "200"): 3,
            ("ns1", "chat", "team-b", "429"): 2,
            ("ns2", "chat", "team-a", "200"): 1,
        },
        {("ns1", "chat"): 2},
    )
    parsed = parse_gateway_metrics(text)
    assert parsed == {("ns1", "chat"): (5.0, 2.0, 3.0), ("ns2", "chat"): (1.0, 0.0, 0.0)}


def test_views_over_gateway_pods() -> None:
    page_a = parse_gateway_metrics(gateway_page({("ns", "md", "t", "200"): 4}, {("ns", "md"): 1}))
    page_b = parse_gateway_metrics(gateway_page({}, {}))
    scrape = GatewayScrape("gantry-system", {"gw-a": page_a, "gw-b": page_b}, {})
    assert scrape.view(("ns", "md")) == GatewayView(True, {"gw-a": 4.0, "gw-b": 0.0}, 1.0, 2.0)
    assert scrape.view(("ns", "other")) == GatewayView(True, {"gw-a": 0.0, "gw-b": 0.0})
    failed = GatewayScrape("gantry-system", {"gw-a": page_a}, {"gw-b": "HTTP 500"})
    seen = failed.view(("ns", "md"))
    assert (seen.complete, seen.held) == (False, 1.0)
    assert seen.problem == "gateway pod gw-b could not be scraped (HTTP 500)"
    none = GatewayScrape("gantry-system", {}, {}).view(("ns", "md"))
    assert not none.complete
    assert "no gateway pod" in none.problem
    assert "namespace gantry-system" in none.problem


def test_the_real_gateway_metrics_module_is_read_per_model() -> None:
    """The page the gantry-gateway itself writes (its Metrics class), not only our stand-in."""
    gateway = Metrics()
    gateway.requests.labels("ns", "md", "team-a", "200").inc(7)
    gateway.requests.labels("ns", "md", "team-b", "503").inc()
    gateway.held.labels("ns", "md").set(1)
    gateway.outstanding.labels("ns", "md").set(2)
    gateway.ttft.labels("ns", "md").observe(0.1)
    gateway.rate_limited.labels("team-b", "requests").inc()
    assert parse_gateway_metrics(generate_latest(gateway.registry).decode()) == {
        ("ns", "md"): (8.0, 1.0, 2.0)
    }


def test_a_gateway_pod_is_scraped_within_the_runtime_bounds() -> None:
    """scrape_gateway over real loopback HTTP: the page is read; an endless one is cut at the
    byte limit, as for a runtime pod."""
    page = gateway_page({("ns", "md", "t", "200"): 2}, {("ns", "md"): 1})

    async def good(_request: web.Request) -> web.Response:
        return web.Response(text=page)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while True:
            await response.write(b"gantry_gateway_held_requests 1\n" * 4096)

    async def run(handler: object) -> object:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        app = web.Application()
        app.router.add_get("/metrics", handler)  # type: ignore[arg-type]
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as session:
                limits = ScrapeLimits(max_bytes=64 * 1024, deadline_seconds=2.0)
                try:
                    return await scrape_gateway(session, "127.0.0.1", limits, port=port)
                except ScrapeError as exc:
                    return exc
        finally:
            await runner.cleanup()

    assert asyncio.run(run(good)) == {("ns", "md"): (2.0, 1.0, 2.0)}
    cut = asyncio.run(run(endless))
    assert isinstance(cut, ScrapeError)
    assert cut.kind == "size"
