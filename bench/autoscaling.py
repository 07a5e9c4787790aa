"""Replay a bursty request trace against a simulated fleet under Gantry's autoscaling policy
(two configurations) and a plain in-flight-average policy.

    python bench/autoscaling.py --timeline      # the figures in docs/autoscaling.md
    python bench/autoscaling.py --seed 7 --minutes 60

Not a test: a benchmark whose output docs/autoscaling.md quotes. Everything runs in-process on
a virtual clock, deterministic for a seed, in about a minute on two cores (each policy in its
own process).

The fleet
    Each replica is the vLLM simulator's own engine (``gantry_runtime.simulator.engine.Engine``:
    continuous batching, chunked prefill, KV blocks, the step cost model of docs/simulator.md)
    stepped by a discrete-event loop instead of asyncio. A replica that is added spends
    ``--load-time`` seconds (default 60) loading before it takes requests, and costs from the
    moment it is added. A replica that is removed takes no new requests, finishes what it has
    for up to 60 s (vLLM's ``--shutdown-timeout``, Gantry's default), aborts the rest, and costs
    until then. Scale-down removes a loading replica first, else the ready one with the fewest
    requests. Requests go to the ready replica with the fewest unfinished requests (a
    least-load router; vLLM never moves a queued request to another replica).

The trace
    Poisson arrivals: a base rate around what one replica serves at the target, plus bursts
    of 1 to 4 minutes at several times that rate, 3 to 7 minutes apart. Prompt and output
    lengths are log-normal (median 800 and 220 tokens). The engine runs a gpt-oss-120b-like
    replica: 60 tokens/s per sequence, ``--max-num-seqs 32``.

The policies, all deciding every ``--interval`` seconds (the operator's default, 10 s) on
the in-flight requests (waiting + running) of the ready replicas, target 24 per replica,
bounds 1..8:
    gantry     ``gantry_operator.autoscaler.decide`` with the CRD defaults (scale up at once to
               the recommendation, down one replica per tick after a 300 s window, 10 %
               tolerance band, no scale-down while a replica loads).
    gantry 60s the same with ``scaleDownDelaySeconds: 60``.
    average    desired = ceil(moving average of in-flight requests over the last 30 s (three
               ticks) / target), applied at once in both directions (the plain policy of
               KubeAI-style in-flight autoscalers).

Figures
    reaction   per burst: from the queue building up (8 requests, a quarter batch, waiting
               for a batch slot on the ready replicas) to the first scale-up decision (0 if
               the policy scaled up before); the new replica then loads for ``--load-time``
               more seconds. Bursts that queued less or got no scale-up are left out
    events     scale decisions applied (each changes the replica count)
    reversals  scale-ups within 5 minutes of a scale-down: capacity given back and needed
               again, paying the load time twice
    cost       replica-hours: the integral of replicas that exist (loading, ready or
               draining) over the trace plus 5 minutes; multiply by the GPUs per replica
    TTFT       time to first token over all requests, queueing included
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import heapq
import itertools
import math
import os
import random
import statistics
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from gantry_operator.autoscaling.policy import Load, Recommendation, decide
from gantry_operator.spec import Autoscaling
from gantry_runtime.simulator.config import SimConfig, parse_config
from gantry_runtime.simulator.engine import Engine, RequestGroup, SimRequest
from gantry_runtime.simulator.metrics import SimMetrics

TARGET = 24
MIN_REPLICAS, MAX_REPLICAS = 1, 8
SHUTDOWN_TIMEOUT = 60.0
#: A queue has built up when this many requests wait for a batch slot (a quarter of one
#: replica's batch; fewer are mostly requests that arrived during the current engine step).
BUILD_UP = 8
TAIL = 300.0
ENGINE_ARGV = ("gpt-oss-120b", "--max-num-seqs", "32", "--max-model-len", "16384",
               "--no-enable-prefix-caching")  # fmt: skip
ENGINE_ENV = {"GANTRY_SIM_DECODE_TOKENS_PER_S": "60", "GANTRY_SIM_PREFILL_TOKENS_PER_S": "8000"}


# -- the trace -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    start: float
    length: float
    rate: float  # extra requests per second


@dataclass(frozen=True)
class Arrival:
    at: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Trace:
    duration: float
    base_rate: float
    bursts: tuple[Burst, ...]
    arrivals: tuple[Arrival, ...]


def make_trace(seed: int, minutes: float, base_rate: float) -> Trace:
    rng = random.Random(seed)
    duration = minutes * 60.0
    bursts: list[Burst] = []
    start = rng.uniform(120.0, 240.0)
    while start < duration - 240.0:
        burst = Burst(start, rng.uniform(60.0, 240.0), base_rate * rng.uniform(3.0, 6.0))
        bursts.append(burst)
        start += burst.length + rng.uniform(180.0, 420.0)

    def rate(t: float) -> float:
        return base_rate + sum(b.rate for b in bursts if b.start <= t < b.start + b.length)

    peak = base_rate + max((b.rate for b in bursts), default=0.0)
    arrivals: list[Arrival] = []
    t = 0.0
    while True:  # thinning: a Poisson process at the peak rate, kept with rate(t) / peak
        t += rng.expovariate(peak)
        if t >= duration:
            break
        if rng.random() * peak < rate(t):
            prompt = min(8000, max(16, int(rng.lognormvariate(math.log(800), 0.6))))
            output = min(1500, max(8, int(rng.lognormvariate(math.log(220), 0.5))))
            arrivals.append(Arrival(t, prompt, output))
    return Trace(duration, base_rate, tuple(bursts), tuple(arrivals))


# -- policies ------------------------------------------------------------------------------


class Policy:
    name = ""

    def desired(self, now: float, load: Load, current: int) -> int:
        raise NotImplementedError


class GantryPolicy(Policy):
    """The operator's policy, exactly: ``gantry_operator.autoscaler.decide``."""

    def __init__(self, scale_down_delay: int = 300) -> None:
        self.spec = Autoscaling(
            enabled=True,
            min_replicas=MIN_REPLICAS,
            max_replicas=MAX_REPLICAS,
            metric="queueDepth",
            target=float(TARGET),
            scale_up_delay_seconds=0,
            scale_down_delay_seconds=scale_down_delay,
        )
        self.name = "gantry" if scale_down_delay == 300 else f"gantry {scale_down_delay}s"
        self.history: list[Recommendation] = []

    def desired(self, now: float, load: Load, current: int) -> int:
        decision, self.history = decide(
            self.spec, load, current=current, now=now, history=self.history
        )
        return decision.replicas


class AveragePolicy(Policy):
    """ceil(moving average of in-flight requests / target), applied at once both ways."""

    name = "average"

    def __init__(self, interval: float, window: float = 30.0) -> None:
        self.window = window
        self.samples: deque[float] = deque(maxlen=max(1, round(window / interval)))

    def desired(self, now: float, load: Load, current: int) -> int:
        self.samples.append(load.queue)
        average = sum(self.samples) / len(self.samples)
        wanted = math.ceil(average / TARGET - 1e-9)
        return min(MAX_REPLICAS, max(MIN_REPLICAS, wanted))


# -- the fleet -----------------------------------------------------------------------------


class _Null:
    """Stands in for the engine's Prometheus metrics: they do not affect scheduling, and
    skipping them halves the run time."""

    def __getattr__(self, _name: str) -> _Null:
        return self

    def __getitem__(self, _key: str) -> _Null:
        return self

    def __call__(self, *_args: Any, **_kwargs: Any) -> None:
        return None


@dataclass(eq=False)
class Replica:
    number: int
    engine: Engine
    added: float
    ready_at: float
    removed: float | None = None  # when it stopped taking requests
    gone: float | None = None  # when it finished draining
    stepping: bool = False

    def ready(self, now: float) -> bool:
        return self.removed is None and now >= self.ready_at

    @property
    def unfinished(self) -> int:
        return self.engine.num_unfinished


@dataclass
class Run:
    policy: str
    #: time to first token of every request that got one
    ttfts: list[float] = field(default_factory=list)
    ups: list[float] = field(default_factory=list)
    downs: list[float] = field(default_factory=list)
    #: (time, replicas that exist) at every change
    replicas: list[tuple[float, int]] = field(default_factory=list)
    #: (time, requests waiting in the ready replicas' queues) every second
    probes: list[tuple[float, int]] = field(default_factory=list)
    replica_seconds: float = 0.0
    aborted: int = 0
    peak: int = 0


class Fleet:
    """Replicas on a virtual clock, driven by one event heap."""

    def __init__(self, config: SimConfig, load_time: float) -> None:
        self.config = config
        self.load_time = load_time
        self.now = 0.0
        self.replicas: list[Replica] = []
        self._events: list[tuple[float, int, str, Any]] = []
        self._order = itertools.count()
        self._numbers = itertools.count()
        self._event = asyncio.Event()

    def at(self, when: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self._events, (when, next(self._order), kind, payload))

    def pop(self) -> tuple[float, str, Any]:
        when, _, kind, payload = heapq.heappop(self._events)
        return when, kind, payload

    def next_time(self) -> float:
        return self._events[0][0] if self._events else math.inf

    def active(self) -> list[Replica]:
        return [r for r in self.replicas if r.removed is None]

    def add(self, loaded: bool = False) -> None:
        engine = Engine(self.config, cast(SimMetrics, _Null()), clock=lambda: self.now)
        ready_at = self.now if loaded else self.now + self.load_time
        replica = Replica(next(self._numbers), engine, self.now, ready_at)
        self.replicas.append(replica)
        self.at(ready_at, "ready", replica)

    def remove(self) -> None:
        active = self.active()
        loading = [r for r in active if not r.ready(self.now)]
        victim = loading[-1] if loading else min(active, key=lambda r: (r.unfinished, -r.number))
        victim.removed = self.now
        if victim.unfinished == 0:
            victim.gone = self.now
        else:
            self.at(self.now + SHUTDOWN_TIMEOUT, "abort", victim)

    def submit(self, arrival: Arrival) -> SimRequest:
        ready = [r for r in self.replicas if r.ready(self.now)]
        replica = min(ready, key=lambda r: (r.unfinished, r.number))
        request = SimRequest(
            request_id=str(next(self._order)),
            prompt_tokens=arrival.prompt_tokens,
            target_tokens=arrival.output_tokens,
            target_reason="length",
            max_tokens_param=arrival.output_tokens,
            block_hashes=(),
            stream=False,
            notify=self._event,
            arrival=self.now,
            group=RequestGroup(n_param=1),
        )
        replica.engine.add([request])
        self.kick(replica)
        return request

    def kick(self, replica: Replica) -> None:
        """Start the replica's next engine step if it is idle and has work."""
        if replica.stepping or replica.gone is not None or replica.unfinished == 0:
            return
        scheduled, prefill = replica.engine.schedule(self.now)
        if not scheduled:
            return
        end = self.now + replica.engine.step_duration(len(scheduled), prefill)
        replica.stepping = True
        self.at(end, "step", (replica, scheduled, prefill))

    def step_done(self, payload: tuple[Replica, list[SimRequest], int]) -> None:
        replica, scheduled, prefill = payload
        replica.stepping = False
        replica.engine.complete(scheduled, self.now, prefill)
        if replica.removed is not None and replica.unfinished == 0 and replica.gone is None:
            replica.gone = self.now
        self.kick(replica)

    def load(self) -> Load:
        ready = [r for r in self.replicas if r.ready(self.now)]
        running = sum(len(r.engine.running) for r in ready)
        waiting = sum(len(r.engine.waiting) for r in ready)
        kv = (
            sum(1 - r.engine.free_blocks / r.engine.total_blocks for r in ready) / len(ready)
            if ready
            else 0.0
        )
        return Load(ready=len(ready), running=running, waiting=waiting, kv_usage=kv)

    def existing(self) -> int:
        return sum(1 for r in self.replicas if r.gone is None)


def simulate(trace: Trace, policy: Policy, *, interval: float, load_time: float) -> Run:
    config = parse_config(list(ENGINE_ARGV), ENGINE_ENV)
    fleet = Fleet(config, load_time)
    run = Run(policy.name)
    fleet.add(loaded=True)
    horizon = trace.duration + TAIL
    fleet.at(interval, "tick")
    fleet.at(1.0, "probe")
    arrivals = iter(trace.arrivals)
    upcoming = next(arrivals, None)
    desired = 1
    run.replicas.append((0.0, 1))
    requests: list[SimRequest] = []
    while True:
        if upcoming is not None and upcoming.at <= fleet.next_time():
            fleet.now = upcoming.at
            requests.append(fleet.submit(upcoming))
            upcoming = next(arrivals, None)
            continue
        when, kind, payload = fleet.pop()
        if when > horizon:
            break
        fleet.now = when
        if kind == "step":
            fleet.step_done(payload)
        elif kind == "ready":
            fleet.kick(payload)
        elif kind == "abort":
            replica = cast(Replica, payload)
            if replica.gone is None:
                run.aborted += replica.unfinished
                replica.engine.abort_all()
                replica.gone = fleet.now
        elif kind == "probe":
            run.probes.append((fleet.now, int(fleet.load().waiting)))
            fleet.at(fleet.now + 1.0, "probe")
        elif kind == "tick":
            wanted = policy.desired(fleet.now, fleet.load(), desired)
            if wanted > desired:
                run.ups.append(fleet.now)
                for _ in range(wanted - desired):
                    fleet.add()
            elif wanted < desired:
                run.downs.append(fleet.now)
                for _ in range(desired - wanted):
                    fleet.remove()
            desired = wanted
            fleet.at(fleet.now + interval, "tick")
        count = fleet.existing()
        if count != run.replicas[-1][1]:
            run.replicas.append((fleet.now, count))
    for replica in fleet.replicas:
        end = min(horizon, replica.gone if replica.gone is not None else horizon)
        run.replica_seconds += end - replica.added
    run.peak = max(count for _, count in run.replicas)
    run.ttfts = [r.first_token_ts - r.arrival for r in requests if r.first_token_ts > 0]
    return run


# -- figures -------------------------------------------------------------------------------


def reactions(trace: Trace, run: Run) -> list[float]:
    """Per burst: seconds from the queue building up (:data:`BUILD_UP` requests waiting for a
    batch slot) to the first scale-up decision of the burst; 0 when the policy scaled up
    before that. Bursts that queued less, or got no scale-up, are left out."""
    found = []
    for burst in trace.bursts:
        end = burst.start + burst.length
        queued = next(
            (t for t, waiting in run.probes if burst.start <= t < end and waiting >= BUILD_UP),
            None,
        )
        up = next((t for t in run.ups if burst.start <= t < end), None)
        if queued is not None and up is not None:
            found.append(max(0.0, up - queued))
    return found


def reversals(run: Run, within: float = 300.0) -> int:
    """Scale-ups that came within ``within`` seconds of a scale-down (capacity given back, then
    needed again: each one pays the load time)."""
    return sum(1 for up in run.ups if any(0 < up - down <= within for down in run.downs))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def table(trace: Trace, runs: Sequence[Run], gpus_per_replica: int) -> str:
    def row(label: str, cell: Callable[[Run], str]) -> str:
        return f"| {label} | " + " | ".join(cell(run) for run in runs) + " |"

    def reaction(run: Run) -> str:
        found = reactions(trace, run)
        if not found:
            return "no scale-up"
        median = statistics.median(found)
        return f"{median:.0f} s median, {max(found):.0f} s max ({len(found)} bursts)"

    def latency(run: Run, q: float) -> str:
        return f"{percentile(run.ttfts, q):.1f} s"

    lines = [
        "| | " + " | ".join(f"`{run.policy}`" for run in runs) + " |",
        "|---|" + "---|" * len(runs),
        row("reaction: queue build-up to first scale-up", reaction),
        row("scale events (up + down)", lambda r: f"{len(r.ups) + len(r.downs)} "
            f"({len(r.ups)} + {len(r.downs)})"),
        row("scale-ups within 5 min of a scale-down", lambda r: str(reversals(r))),
        row("replica-hours (GPU-hours)", lambda r: f"{r.replica_seconds / 3600:.2f} "
            f"({r.replica_seconds / 3600 * gpus_per_replica:.2f})"),
        row("peak replicas", lambda r: str(r.peak)),
        row("TTFT p50", lambda r: latency(r, 50)),
        row("TTFT p90", lambda r: latency(r, 90)),
        row("TTFT p99", lambda r: latency(r, 99)),
        row("requests aborted by scale-down", lambda r: str(r.aborted)),
    ]  # fmt: skip
    return "\n".join(lines)


def timeline(run: Run, duration: float, label: int, width: int = 72) -> str:
    """Replicas that exist over time, one digit per time slice."""
    cells = []
    for i in range(width):
        t = duration * i / width
        count = next((c for when, c in reversed(run.replicas) if when <= t), 1)
        cells.append(str(min(count, 9)))
    return f"{run.policy:>{label}} " + "".join(cells)


def describe(trace: Trace, args: argparse.Namespace) -> Iterator[str]:
    bursts = trace.bursts
    yield (
        f"trace: seed {args.seed}, {args.minutes:g} min, {len(trace.arrivals)} requests, "
        f"base {trace.base_rate:g} req/s, {len(bursts)} bursts of "
        f"{min(b.length for b in bursts):.0f}-{max(b.length for b in bursts):.0f} s at "
        f"+{min(b.rate for b in bursts):.1f}-{max(b.rate for b in bursts):.1f} req/s"
    )
    yield (
        f"fleet: simulator engine {' '.join(ENGINE_ARGV[1:])}, "
        + ", ".join(f"{k}={v}" for k, v in ENGINE_ENV.items())
        + f"; load time {args.load_time:g} s; decisions every {args.interval:g} s; "
        f"target {TARGET} in flight per replica, {MIN_REPLICAS}..{MAX_REPLICAS} replicas"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--base-rate", type=float, default=2.5, help="requests per second")
    parser.add_argument("--load-time", type=float, default=60.0, help="seconds per new replica")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between decisions")
    parser.add_argument("--gpus-per-replica", type=int, default=2)
    parser.add_argument("--timeline", action="store_true", help="print replicas over time")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    args = parser.parse_args(argv)
    trace = make_trace(args.seed, args.minutes, args.base_rate)
    policies: list[Policy] = [GantryPolicy(), GantryPolicy(60), AveragePolicy(args.interval)]
    one = functools.partial(simulate, trace, interval=args.interval, load_time=args.load_time)
    with concurrent.futures.ProcessPoolExecutor(min(args.jobs, len(policies))) as pool:
        runs = list(pool.map(one, policies))
    for line in describe(trace, args):
        print(line)
    print()
    print(table(trace, runs, args.gpus_per_replica))
    if args.timeline:
        print()
        print(f"replicas over {args.minutes:g} min (one column per {args.minutes * 60 / 72:.0f} s)")
        label = max(len(run.policy) for run in runs)
        for run in runs:
            print(timeline(run, trace.duration, label))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
