"""Requests and tokens per minute: token buckets on a passed-in clock."""

from __future__ import annotations

from gantry_gateway.limits import REQUESTS, TOKENS, Limiter


def test_requests_per_minute_refuses_then_refills() -> None:
    limiter = Limiter()
    for _ in range(6):
        assert limiter.admit("a", 6, 0, 1, now=0.0) is None
    refusal = limiter.admit("a", 6, 0, 1, now=0.0)
    assert refusal is not None
    assert refusal.limit == REQUESTS
    assert refusal.retry_after == 10  # one request every 10 s at 6/min
    assert limiter.admit("a", 6, 0, 1, now=10.0) is None


def test_tenants_are_independent() -> None:
    limiter = Limiter()
    assert limiter.admit("a", 1, 0, 1, now=0.0) is None
    assert limiter.admit("a", 1, 0, 1, now=0.0) is not None
    assert limiter.admit("b", 1, 0, 1, now=0.0) is None


def test_tokens_are_charged_after_the_answer() -> None:
    limiter = Limiter()
    assert limiter.admit("a", 0, 600, 1, now=0.0) is None
    limiter.charge("a", 900, 600, 1, now=0.0)  # 300 over: the bucket is at -300
    refusal = limiter.admit("a", 0, 600, 1, now=1.0)  # refilled 10 tokens: -290
    assert refusal is not None
    assert refusal.limit == TOKENS
    assert refusal.retry_after == 30  # strictly above zero after 29 s
    assert limiter.admit("a", 0, 600, 1, now=31.0) is None


def test_share_splits_the_limit_between_gateways() -> None:
    limiter = Limiter()
    admitted = sum(limiter.admit("a", 60, 0, 3, now=0.0) is None for _ in range(60))
    assert admitted == 20


def test_no_limit_admits_everything() -> None:
    limiter = Limiter()
    assert all(limiter.admit("a", 0, 0, 1, now=0.0) is None for _ in range(10_000))
    limiter.charge("a", 10**9, 0, 1, now=0.0)
    assert limiter.admit("a", 0, 0, 1, now=0.0) is None
