"""The gateway's Prometheus metrics (served on ``--metrics-port``, never on the API port).

Label ``namespace`` and ``model_deployment`` name the ModelDeployment (empty when the request
named no known model), ``tenant`` the tenant (empty before authentication).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MODEL = ("namespace", "model_deployment")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gantry_gateway_requests_total",
            "Requests answered by the gateway, by HTTP status code.",
            [*MODEL, "tenant", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "gantry_gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gantry_gateway_time_to_first_token_seconds",
            "Streaming requests: time from arrival to the first response byte sent.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.held = Gauge(
            "gantry_gateway_held_requests",
            "Requests waiting for a Ready replica (scale from zero or start-up).",
            MODEL,
            registry=r,
        )
        self.hold_timeouts = Counter(
            "gantry_gateway_hold_timeouts_total",
            "Held requests answered 503 because no replica became Ready in time.",
            MODEL,
            registry=r,
        )
        self.outstanding = Gauge(
            "gantry_gateway_outstanding_requests",
            "Requests in flight to the model's replicas.",
            MODEL,
            registry=r,
        )
        self.tokens = Counter(
            "gantry_gateway_tokens_total",
            "Tokens used, from the responses' usage (estimated when absent).",
            [*MODEL, "tenant", "kind"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gantry_gateway_rate_limited_total",
            "Requests refused with 429, by the limit reached.",
            ["tenant", "limit"],
            registry=r,
        )
        self.retries = Counter(
            "gantry_gateway_upstream_retries_total",
            "Requests sent to another replica after a connection failed before the first byte.",
            MODEL,
            registry=r,
        )
