"""The operator's configuration: parsed once in ``main`` and passed down (never a global)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gantry_operator.cluster_policy import Policy


@dataclass(frozen=True)
class ScrapeLimits:
    """Bounds on every read of a runtime pod's ``/metrics`` (DESIGN.md 4.12)."""

    #: Bytes read from one pod before it is skipped.
    max_bytes: int = 4 * 1024 * 1024
    #: Seconds for the whole exchange (connect, request, body).
    deadline_seconds: float = 2.0
    #: Pods scraped at once, over every ModelDeployment.
    concurrency: int = 32


@dataclass(frozen=True)
class OperatorConfig:
    policy: Policy = field(default_factory=Policy)
    #: Seconds between resyncs: every ModelDeployment is compared in memory with its children
    #: (a safety net; events repair drift at once). Nothing is written when nothing drifted.
    resync_seconds: float = 300.0
    #: Seconds between autoscaler ticks (scrape, export, decide).
    autoscale_seconds: float = 10.0
    #: ModelDeployments reconciled at once (one object is never reconciled twice at once).
    workers: int = 8
    #: Seconds between two reconciles of one object: the burst of events of a rollout
    #: coalesces into one reconcile (and one status write) per interval.
    min_reconcile_interval: float = 0.5
    scrape: ScrapeLimits = field(default_factory=ScrapeLimits)
    #: The namespace of the gantry-gateway pods whose request metrics decide scale to zero
    #: (only there: a labelled pod elsewhere is not trusted). It must be a served namespace.
    gateway_namespace: str = "gantry-system"
