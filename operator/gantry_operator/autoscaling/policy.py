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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
