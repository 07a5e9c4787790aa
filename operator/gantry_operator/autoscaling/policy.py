"""The autoscaling policy: pure, deterministic, documented (docs/autoscaling.md).

Each tick the operator scrapes the ready runtime pods and calls :func:`decide` with the
aggregate load and the recommendations it made recently. The policy:

* **Recommendation.** ``queueDepth``: ceil(sum of waiting + running requests / target), so
  replicas still loading count as capacity on the way; ``kvCacheUsage``: ceil(ready replicas x
  mean KV-cache usage / target). Within a 10 % tolerance band around the target the current
  count stands (no flapping on noise).
* **Scale up fast.** The lowest recommendation of the last ``scaleUpDelaySeconds`` (0: the
  current one) is applied at once, in whole replicas (a replica is the full multi-GPU unit).
* **Scale down slowly.** The highest recommendation of the last ``scaleDownDelaySeconds``
  is applied, one replica per step, never while a replica is still loading, and only once the
  load has been watched for the whole window (a restarted operator has no history: it waits
  rather than read one quiet tick as a quiet window).
* **Bounds.** The result is clamped to ``minReplicas``..``maxReplicas``.
* **Scale to zero** (``minReplicas: 0``, :func:`decide_with_zero`): the vLLM load cannot say
  a model is unused (there is none at zero, and one idle replica reports none either), so the
  gantry-gateway's own counters decide: no request held, in flight or counted at any gateway
  pod for ``scaleToZeroAfterSeconds`` takes the model to zero; no gateway pod or a failed
  scrape is never read as idle. From zero, only held requests at a gateway scale to one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from gantry_operator.spec import Autoscaling

TOLERANCE = 0.10


@dataclass(frozen=True)
class Load:
    """What the ready replicas reported in one scrape."""

    ready: int
    running: float
    waiting: float
    kv_usage: float

    @property
    def queue(self) -> float:
        return self.running + self.waiting


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class Decision:
    replicas: int
    recommended: int
    reason: str
    direction: str  # "up", "down" or "none"


def recommend(policy: Autoscaling, load: Load, current: int) -> int:
    """Replicas the load asks for right now, before stabilisation and bounds."""
    if policy.metric == "kvCacheUsage":
        if load.ready == 0:
            return current
        if abs(load.kv_usage / policy.target - 1.0) <= TOLERANCE:
            return current
        return math.ceil(load.ready * load.kv_usage / policy.target - 1e-9)
    if current > 0 and abs(load.queue / (policy.target * current) - 1.0) <= TOLERANCE:
        return current
    return math.ceil(load.queue / policy.target - 1e-9)


def decide(
    policy: Autoscaling,
    load: Load,
    *,
    current: int,
    now: float,
    history: Sequence[Recommendation],
) -> tuple[Decision, list[Recommendation]]:
    """The replica count to apply, and the history to keep for the next tick."""
    raw = recommend(policy, load, current)
    window = max(policy.scale_up_delay_seconds, policy.scale_down_delay_seconds)
    # The recommendations inside the window, plus the newest one before it: the oldest kept
    # tells how long the load has been watched, so a window is never judged on part of it.
    before = [r for r in history if now - r.at > window]
    kept = [*before[-1:], *(r for r in history if now - r.at <= window)]
    kept.append(Recommendation(now, raw))
    watched = now - kept[0].at
    up_window = [r.replicas for r in kept if now - r.at <= policy.scale_up_delay_seconds]
    down_window = [r.replicas for r in kept if now - r.at <= policy.scale_down_delay_seconds]
    low, high = policy.min_replicas, policy.max_replicas
    what = _describe(policy, load)
    steady = f"{what}: steady at {current}"
    if min(up_window) > current:
        target = min(min(up_window), high)
        if target > current:
            return Decision(target, raw, f"{what}: scaled up to {target}", "up"), kept
        steady = f"{what}: at maxReplicas {high}"
    elif current > low and max(down_window) < current:
        if watched < policy.scale_down_delay_seconds:
            steady = (
                f"{what}: holding {current} until the load has been watched for "
                f"scaleDownDelaySeconds ({policy.scale_down_delay_seconds}s)"
            )
        elif load.ready < current:
            reason = f"{what}: waiting for {current - load.ready} replica(s) to become ready"
            return Decision(current, raw, reason, "none"), kept
        else:
            target = max(current - 1, low)
            return Decision(target, raw, f"{what}: scaled down to {target}", "down"), kept
    bounded = min(max(current, low), high)
    if bounded != current:
        direction = "up" if bounded > current else "down"
        return Decision(bounded, raw, f"{what}: moved within bounds {low}..{high}", direction), kept
    return Decision(current, raw, steady, "none"), kept


def _describe(policy: Autoscaling, load: Load) -> str:
    if policy.metric == "kvCacheUsage":
        return f"KV cache {load.kv_usage:.0%} per replica (target {policy.target:.0%})"
    per = load.queue / max(load.ready, 1)
    return (
        f"{load.queue:g} requests queued or running, {per:.1f} per ready replica "
        f"(target {policy.target:g})"
    )


# -- scale to zero (minReplicas 0) ---------------------------------------------------------------


@dataclass(frozen=True)
class GatewayView:
    """One tick's view of one model through the gantry-gateway pods.

    ``requests`` holds each gateway pod's ``gantry_gateway_requests_total`` for the model
    (summed over tenants and codes; 0 when the pod has no series for it yet). ``complete`` is
    False when there is no gateway pod or one of them could not be scraped: then nothing is
    known about the model's traffic, and the model is never taken to zero on that."""

    complete: bool
    requests: Mapping[str, float]
    held: float = 0.0
    outstanding: float = 0.0
    #: Why the view is incomplete (for status.autoscaler.reason).
    problem: str = ""


@dataclass(frozen=True)
class Idle:
    """What is remembered of a model's gateway traffic between ticks."""

    #: Start (monotonic seconds) of the current stretch without traffic; None: busy or unknown.
    since: float | None = None
    #: The request counters of the last complete view, per gateway pod.
    requests: Mapping[str, float] = field(default_factory=dict)


def observe_idle(view: GatewayView, before: Idle, now: float) -> Idle:
    """The quiet stretch after this tick's view.

    Traffic is a request held or in flight at any gateway pod, or a request counter that moved
    since the last complete view (a restarted or new gateway pod changes the set of counters,
    which counts as traffic too: only an unchanged set of unchanged counters is quiet). An
    incomplete view ends the stretch: a quiet window must be watched whole."""
    if not view.complete:
        return Idle()
    counters = dict(view.requests)
    if view.held > 0 or view.outstanding > 0 or counters != dict(before.requests):
        return Idle(None, counters)
    return Idle(now if before.since is None else before.since, counters)


def decide_with_zero(
    policy: Autoscaling,
    load: Load,
    view: GatewayView,
    *,
    current: int,
    now: float,
    history: Sequence[Recommendation],
    idle: Idle,
) -> tuple[Decision, list[Recommendation], Idle]:
    """The decision for a model with ``minReplicas: 0``.

    * At zero it stays at zero, except when a gateway pod holds requests for the model: then
      one replica (a safety net to the gateway's own wake-up through the scale subresource).
      Missing gateway data never scales up or down.
    * Above zero it scales on the vLLM load as :func:`decide` does, but not below one replica,
      until the gateway has shown no traffic for ``scaleToZeroAfterSeconds``: then to zero.
    """
    idle = observe_idle(view, idle, now)
    if current == 0:
        if view.held > 0:
            reason = f"{view.held:g} request(s) held at the gateway: woke from zero"
            return Decision(1, 1, reason, "up"), [], idle
        return Decision(0, 0, f"at zero: {_quiet(view, idle, now, policy)}", "none"), [], idle
    window = policy.scale_to_zero_after_seconds
    if idle.since is not None and now - idle.since >= window:
        reason = (
            f"no requests through the gateway for {now - idle.since:.0f}s "
            f"(scaleToZeroAfterSeconds {window}): scaled to zero"
        )
        return Decision(0, 0, reason, "down"), [], idle
    floor = replace(policy, min_replicas=max(1, policy.min_replicas))
    decision, kept = decide(floor, load, current=current, now=now, history=history)
    reason = f"{decision.reason}; {_quiet(view, idle, now, policy)}"
    return replace(decision, reason=reason), kept, idle


def _quiet(view: GatewayView, idle: Idle, now: float, policy: Autoscaling) -> str:
    if not view.complete:
        return f"not scaling to zero: {view.problem or 'gateway metrics incomplete'}"
    if idle.since is None:
        return (
            f"gateway traffic ({view.held:g} held, {view.outstanding:g} in flight, or requests "
            "since the last tick)"
        )
    return (
        f"no gateway traffic for {now - idle.since:.0f}s of "
        f"scaleToZeroAfterSeconds {policy.scale_to_zero_after_seconds}s"
    )
