"""The autoscaling policy (pure: load in, replica count out) and the parsing of what runtime
pods report, on the simulator's real /metrics text."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import generate_latest

from gantry_operator.autoscaling.loop import parse_metrics
from gantry_operator.autoscaling.policy import (
    TOLERANCE,
    Decision,
    Load,
    Recommendation,
    decide,
    recommend,
)
from gantry_operator.spec import Autoscaling
from gantry_runtime.simulator.config import parse_config
from gantry_runtime.simulator.engine import Engine, RequestGroup, SimRequest
from gantry_runtime.simulator.metrics import SimMetrics

TICK = 10.0


def policy(**changes: object) -> Autoscaling:
    values: dict[str, object] = {
        "enabled": True,
        "min_replicas": 1,
        "max_replicas": 8,
        "metric": "queueDepth",
        "target": 4.0,
        "scale_up_delay_seconds": 0,
        "scale_down_delay_seconds": 60,
    }
    values.update(changes)
    return Autoscaling(**values)  # type: ignore[arg-type]


def queue(requests: float, ready: int) -> Load:
    """``requests`` in flight over ``ready`` replicas (half running, half waiting)."""
    return Load(ready=ready, running=requests / 2, waiting=requests / 2, kv_usage=0.0)


def drive(
    auto: Autoscaling,
    load_at: Callable[[int, int], Load],
    *,
    ticks: int,
    current: int = 1,
    start: float = 1000.0,
    history: Sequence[Recommendation] = (),
) -> list[Decision]:
    """Run the policy every TICK seconds, applying each decision as the operator would.

    ``load_at(tick, current replicas)`` gives the load of each tick.
    """
    decisions: list[Decision] = []
    kept = list(history)
    for tick in range(ticks):
        decision, kept = decide(
            auto, load_at(tick, current), current=current, now=start + tick * TICK, history=kept
        )
        decisions.append(decision)
        current = decision.replicas
    return decisions


def replicas(decisions: Sequence[Decision]) -> list[int]:
    return [d.replicas for d in decisions]


# -- recommendation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "current", "expected"),
    [
        (0, 1, 0),
        (1, 1, 1),
        (4, 1, 1),  # exactly at target
        (5, 1, 2),
        (16, 1, 4),
        (17, 4, 4),  # 6 % above target x 4: inside the tolerance band
        (18, 4, 5),  # 12.5 % above: outside
        (15, 4, 4),  # 6 % below: inside
        (14, 4, 4),  # 12.5 % below: ceil(14 / 4) = 4 anyway
        (11, 4, 3),
    ],
)
def test_queue_depth_recommendation(requests: float, current: int, expected: int) -> None:
    assert recommend(policy(), queue(requests, current), current) == expected


def test_loading_replicas_count_as_capacity_on_the_way() -> None:
    # Two of four replicas are still loading: the 16 requests on the ready two ask for four
    # replicas, not for four more.
    assert recommend(policy(), queue(16, ready=2), 4) == 4


# -- scale up fast -------------------------------------------------------------------------


def test_scales_up_at_once_to_the_recommendation() -> None:
    decision, _ = decide(policy(), queue(20, 1), current=1, now=0.0, history=[])
    assert (decision.replicas, decision.direction, decision.recommended) == (5, "up", 5)
    assert "scaled up to 5" in decision.reason
    assert "20 requests queued or running, 20.0 per ready replica (target 4)" in decision.reason


def test_scale_up_is_clamped_to_max_replicas() -> None:
    decision, _ = decide(policy(max_replicas=4), queue(100, 1), current=1, now=0.0, history=[])
    assert (decision.replicas, decision.direction, decision.recommended) == (4, "up", 25)
    decision, _ = decide(policy(max_replicas=4), queue(100, 4), current=4, now=0.0, history=[])
    assert (decision.replicas, decision.direction) == (4, "none")
    assert "at maxReplicas 4" in decision.reason


def test_scale_up_delay_ignores_a_spike_but_follows_sustained_load() -> None:
    auto = policy(scale_up_delay_seconds=30)
    spike = drive(auto, lambda t, c: queue(40 if t == 3 else 4, c), ticks=10)
    assert replicas(spike) == [1] * 10
    sustained = drive(auto, lambda t, c: queue(40 if t >= 3 else 4, c), ticks=10)
    # The lowest recommendation of the last 30 s is the high one from tick 6 on.
    assert replicas(sustained) == [1, 1, 1, 1, 1, 1, 8, 8, 8, 8]


# -- scale down slowly ---------------------------------------------------------------------


def test_scales_down_one_replica_per_tick_only_after_the_window() -> None:
    # Busy (16 requests: 4 replicas) for 10 ticks, then idle.
    decisions = drive(
        policy(scale_down_delay_seconds=60),
        lambda t, c: queue(16 if t < 10 else 0, c),
        ticks=20,
    )
    assert replicas(decisions) == [4] * 16 + [3, 2, 1, 1]
    # The last busy recommendation was at tick 9: tick 16 is the first whose 60 s window
    # holds only idle ones.
    assert [d.direction for d in decisions].count("down") == 3
    assert "scaled down to 3" in decisions[16].reason


def test_scale_down_waits_for_loading_replicas() -> None:
    auto = policy(scale_down_delay_seconds=0)
    decision, _ = decide(auto, queue(0, ready=2), current=3, now=0.0, history=[])
    assert (decision.replicas, decision.direction) == (3, "none")
    assert "waiting for 1 replica(s) to become ready" in decision.reason
    decision, _ = decide(auto, queue(0, ready=3), current=3, now=0.0, history=[])
    assert (decision.replicas, decision.direction) == (2, "down")


def test_a_fresh_history_is_not_a_quiet_window() -> None:
    # A restarted operator sees an idle moment first: it must not read that as 60 idle seconds,
    # nor keep stepping down every tick from there.
    decisions = drive(policy(), lambda t, c: queue(0, c), ticks=10, current=4)
    assert replicas(decisions) == [4, 4, 4, 4, 4, 4, 3, 2, 1, 1]
    assert "holding 4 until the load has been watched" in decisions[0].reason


def test_history_stays_bounded() -> None:
    auto = policy(scale_down_delay_seconds=60)
    kept: list[Recommendation] = []
    for tick in range(500):
        _, kept = decide(auto, queue(4, 1), current=1, now=tick * TICK, history=kept)
    # Six 10 s ticks fit in 60 s, plus the newest before the window and this tick's.
    assert len(kept) == 8
    assert kept[0].at < 499 * TICK - 60 <= kept[1].at


# -- no flapping ---------------------------------------------------------------------------


def test_tolerance_band_holds_steady_on_noisy_load() -> None:
    rng = random.Random(7)
    noise = 0.9 * TOLERANCE
    decisions = drive(
        policy(scale_down_delay_seconds=0),  # no window: only the band keeps it steady
        lambda _t, c: queue(12 * (1 + rng.uniform(-noise, noise)), c),
        ticks=200,
        current=3,
    )
    assert set(replicas(decisions)) == {3}


@pytest.mark.parametrize("seed", range(5))
def test_the_windows_absorb_noise_beyond_the_band(seed: int) -> None:
    # +-40 % noise around 3 replicas' worth: single ticks ask for 2 to 4 (or 5).
    rng = random.Random(seed)
    window = 120
    decisions = drive(
        policy(scale_down_delay_seconds=window),
        lambda _t, c: queue(12 * (1 + rng.uniform(-0.4, 0.4)), c),
        ticks=200,
        current=3,
    )
    raw = [d.recommended for d in decisions]
    assert min(raw) <= 2
    assert max(raw) >= 4
    assert sum(a != b for a, b in itertools.pairwise(raw)) > 80
    events = [(tick, d.direction) for tick, d in enumerate(decisions) if d.direction != "none"]
    assert 1 <= len(events) <= 4, events
    # Every step down comes a full window after the last step up.
    last_up = None
    for tick, direction in events:
        if direction == "up":
            last_up = tick
        else:
            assert last_up is not None
            assert (tick - last_up) * TICK > window, events


# -- bounds --------------------------------------------------------------------------------


def test_scale_down_stops_at_min_replicas() -> None:
    decisions = drive(
        policy(min_replicas=2, scale_down_delay_seconds=0), lambda t, c: queue(0, c), ticks=5
    )
    assert replicas(decisions) == [2, 2, 2, 2, 2]
    assert [d.direction for d in decisions] == ["up", "none", "none", "none", "none"]
    assert "moved within bounds 2..8" in decisions[0].reason
    decisions = drive(
        policy(min_replicas=2, scale_down_delay_seconds=0),
        lambda t, c: queue(0, c),
        ticks=5,
        current=4,
    )
    assert replicas(decisions) == [3, 2, 2, 2, 2]


def test_above_max_replicas_moves_within_bounds() -> None:
    decision, _ = decide(policy(max_replicas=3), queue(24, 5), current=5, now=0.0, history=[])
    assert (decision.replicas, decision.direction) == (3, "down")
    assert "moved within bounds 1..3" in decision.reason


# -- KV-cache usage ------------------------------------------------------------------------


def kv(usage: float, ready: int) -> Load:
    return Load(ready=ready, running=0.0, waiting=0.0, kv_usage=usage)


@pytest.mark.parametrize(
    ("usage", "ready", "current", "expected"),
    [
        (0.9, 2, 2, 3),  # 2 x 0.9 / 0.6 = 3
        (0.62, 2, 2, 2),  # inside the band
        (0.2, 3, 3, 1),
        (0.0, 0, 2, 2),  # nothing ready: no signal, keep what there is
    ],
)
def test_kv_cache_usage_recommendation(
    usage: float, ready: int, current: int, expected: int
) -> None:
    assert recommend(policy(metric="kvCacheUsage", target=0.6), kv(usage, ready), current) == (
        expected
    )


def test_kv_cache_usage_scales_up_and_describes_itself() -> None:
    auto = policy(metric="kvCacheUsage", target=0.6)
    decision, _ = decide(auto, kv(0.95, 2), current=2, now=0.0, history=[])
    assert (decision.replicas, decision.direction) == (4, "up")
    assert decision.reason.startswith("KV cache 95% per replica (target 60%)")


# -- parsing what the simulator reports ----------------------------------------------------


def _busy_simulator_metrics() -> str:
    """The simulator's /metrics text with 4 requests running and 2 waiting (max-num-seqs 4)."""
    config = parse_config(
        ["gpt-oss-20b", "--max-num-seqs", "4", "--gantry-kv-cache-tokens", "4096"], {}
    )
    engine = Engine(config, SimMetrics(config), clock=lambda: 0.0)
    engine.add(
        [
            SimRequest(
                request_id=f"r{i}",
                prompt_tokens=200,
                target_tokens=50,
                target_reason="length",
                max_tokens_param=50,
                block_hashes=(),
                stream=False,
                notify=asyncio.Event(),
                arrival=0.0,
                group=RequestGroup(n_param=1),
            )
            for i in range(6)
        ]
    )
    scheduled, prefill = engine.schedule(0.0)
    engine.complete(scheduled, engine.step_duration(len(scheduled), prefill), prefill)
    return generate_latest(engine.metrics.registry).decode()


def test_parse_metrics_reads_running_waiting_and_kv_usage() -> None:
    text = _busy_simulator_metrics()
    # The families the parser must tell apart from their look-alikes are all there.
    assert 'vllm:num_requests_waiting_by_reason{engine="0",model_name="gpt-oss-20b"' in text
    assert "vllm:kv_cache_usage_perc{" in text
    running, waiting, usage = parse_metrics(text)
    assert (running, waiting) == (4.0, 2.0)
    # 4 sequences x 201 tokens in 16-token blocks (13 each) of 256 blocks.
    assert usage == pytest.approx(4 * 13 / 256)


def test_parse_metrics_of_an_idle_or_foreign_endpoint() -> None:
    config = parse_config(["m"], {})
    idle = generate_latest(SimMetrics(config).registry).decode()
    assert parse_metrics(idle) == (0.0, 0.0, 0.0)
    assert parse_metrics("# nothing here\nother_metric 3\n") == (0.0, 0.0, 0.0)
