"""The autoscaler's reads of runtime pods are bounded, and only our own pods are read.

Real HTTP servers on loopback: one answers /metrics like vLLM, one never stops sending, one
never answers; the scraper must return the load of the first and give up on the others within
its bounds, holding at most the byte limit in memory."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gantry_operator.autoscaling.loop import ScrapeError, our_ready_pods, parse_metrics, scrape
from gantry_operator.config import ScrapeLimits
from gantry_operator.store import Children

UID = "md-uid"
VLLM_PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 1234.0
"""


def test_parse_reads_only_the_three_families() -> None:
    assert parse_metrics(VLLM_PAGE) == (3.0, 5.0, 0.25)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def good(_request: web.Request) -> web.Response:
    return web.Response(text=VLLM_PAGE)


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    line = b"vllm:num_requests_running 1\n" * 4096
    while True:
        await response.write(line)


async def silent(_request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.Response()


async def serve(handler: Any) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def scrape_one(handler: Any, limits: ScrapeLimits) -> tuple[float, float, float]:
    async for port in serve(handler):
        async with aiohttp.ClientSession() as session:
            return await scrape(session, "127.0.0.1", limits, port=port)
    raise AssertionError("unreachable")


def test_a_vllm_page_is_read() -> None:
    assert asyncio.run(scrape_one(good, ScrapeLimits())) == (3.0, 5.0, 0.25)


def test_an_endless_body_is_cut_at_the_byte_limit() -> None:
    limits = ScrapeLimits(max_bytes=256 * 1024, deadline_seconds=30)
    with pytest.raises(ScrapeError, match="larger than 262144 bytes"):
        asyncio.run(scrape_one(endless, limits))


def test_a_silent_pod_is_given_up_at_the_deadline() -> None:
    limits = ScrapeLimits(deadline_seconds=0.3)
    with pytest.raises(ScrapeError, match=r"within 0.3 s"):
        asyncio.run(scrape_one(silent, limits))


def test_a_closed_port_is_a_scrape_error() -> None:
    async def closed() -> None:
        async with aiohttp.ClientSession() as session:
            await scrape(session, "127.0.0.1", ScrapeLimits(), port=free_port())

    with pytest.raises(ScrapeError):
        asyncio.run(closed())


def _deployment(uid: str = UID) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "md",
            "ownerReferences": [{"kind": "ModelDeployment", "uid": uid, "controller": True}],
        }
    }


def _pod(name: str, ip: str, *, owner: str = "md-5d9f", ready: str = "True") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"pod-template-hash": "5d9f"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": owner, "controller": True}],
        },
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
    }


def test_only_ready_pods_of_our_replica_sets_are_scraped() -> None:
    pods = (
        _pod("md-5d9f-a", "10.0.0.1"),
        _pod("md-5d9f-b", "10.0.0.2", ready="False"),
        _pod("impostor", "10.0.0.3", owner="someone-else"),  # our labels, not our ReplicaSet
    )
    children = Children({"Deployment": _deployment()}, pods)
    assert our_ready_pods(children, UID) == [("md-5d9f-a", "10.0.0.1")]
    # A Deployment of that name that another owner controls: none of its pods are ours.
    assert our_ready_pods(Children({"Deployment": _deployment("other")}, pods), UID) == []
