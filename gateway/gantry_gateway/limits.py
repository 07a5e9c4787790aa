"""Requests and tokens per minute per tenant (pure; time is passed in).

Both limits are token buckets refilled continuously at ``limit / 60`` per second up to one
minute's worth. A request takes one from the requests bucket, or is refused with the seconds
until one is back. Tokens cannot be known before the answer, so the tokens bucket is charged
afterwards with the tokens the response reports (``usage``) and may go below zero; while it is
at or below zero new requests are refused until it refills above zero.

With several gateway processes each bucket holds ``limit / share`` (``share``: the number of
Ready gateway pods, see the ``--peer-selector`` option), so a tenant whose requests the
Service spreads evenly gets its whole limit in total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

REQUESTS = "requests"
TOKENS = "tokens"


@dataclass
class Bucket:
    level: float
    stamp: float

    def refill(self, capacity: float, now: float) -> None:
        rate = capacity / 60.0
        self.level = min(capacity, self.level + max(0.0, now - self.stamp) * rate)
        self.stamp = now


@dataclass(frozen=True)
class Refusal:
    limit: str  # REQUESTS or TOKENS
    retry_after: int  # whole seconds, at least 1
    per_minute: int


def _retry_after(missing: float, capacity: float) -> int:
    return max(1, math.ceil(missing * 60.0 / capacity))


@dataclass
class Limiter:
    requests: dict[str, Bucket] = field(default_factory=dict)
    tokens: dict[str, Bucket] = field(default_factory=dict)

    def admit(
        self, tenant: str, requests_per_minute: int, tokens_per_minute: int, share: int, now: float
    ) -> Refusal | None:
        """Take one request from the tenant's budget, or say why not and for how long."""
        share = max(1, share)
        if tokens_per_minute > 0:
            capacity = tokens_per_minute / share
            bucket = self.tokens.setdefault(tenant, Bucket(capacity, now))
            bucket.refill(capacity, now)
            if bucket.level <= 0:
                wait = _retry_after(-bucket.level + 1e-9, capacity)
                return Refusal(TOKENS, wait, tokens_per_minute)
        if requests_per_minute > 0:
            capacity = max(1.0, requests_per_minute / share)
            bucket = self.requests.setdefault(tenant, Bucket(capacity, now))
            bucket.refill(capacity, now)
            if bucket.level < 1:
                return Refusal(
                    REQUESTS, _retry_after(1 - bucket.level, capacity), requests_per_minute
                )
            bucket.level -= 1
        return None

    def charge(
        self, tenant: str, tokens: int, tokens_per_minute: int, share: int, now: float
    ) -> None:
        """Take the tokens a response used from the tenant's tokens budget."""
        if tokens_per_minute <= 0 or tokens <= 0:
            return
        capacity = tokens_per_minute / max(1, share)
        bucket = self.tokens.setdefault(tenant, Bucket(capacity, now))
        bucket.refill(capacity, now)
        bucket.level -= tokens
