"""ModelDeployments and pods as the gateway sees them; served-name index; holds."""

from __future__ import annotations

import asyncio
from typing import Any

from gantry_gateway.state import State
from gantry_gateway.view import Strategy, parse_model_deployment, parse_pod


def md(name: str = "m", ns: str = "a", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"model": {"preset": "gpt-oss-20b"}} | spec,
    }


def pod(
    name: str, model: str = "m", ip: str = "127.1.0.1", ready: bool = True, worker: str = ""
) -> dict[str, Any]:
    labels = {"leaderworkerset.sigs.k8s.io/worker-index": worker} if worker else {}
    return {
        "metadata": {
            "name": name,
            "namespace": "a",
            "labels": {"gantry.dev/model-deployment": model} | labels,
        },
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_served_name_from_status_first() -> None:
    obj = md()
    assert parse_model_deployment(obj).served_name == "gpt-oss-20b"
    obj["spec"]["model"]["servedName"] = "chat"
    assert parse_model_deployment(obj).served_name == "chat"
    obj["status"] = {"servedModelName": "from-operator"}
    assert parse_model_deployment(obj).served_name == "from-operator"


def test_routing_fields_and_defaults() -> None:
    entry = parse_model_deployment(md(replicas=0))
    assert (entry.replicas, entry.strategy, entry.prefix_tokens) == (
        0,
        Strategy.LEAST_OUTSTANDING,
        256,
    )
    entry = parse_model_deployment(md(routing={"strategy": "PrefixAffinity", "prefixTokens": 64}))
    assert (entry.strategy, entry.prefix_tokens) == (Strategy.PREFIX_AFFINITY, 64)


def test_pods_that_do_not_serve() -> None:
    assert parse_pod(pod("p"), 8000) is not None
    assert parse_pod(pod("p", ready=False), 8000) is None
    assert parse_pod(pod("p", ip=""), 8000) is None
    assert parse_pod(pod("p", worker="1"), 8000) is None
    leader = pod("p", worker="0")
    assert parse_pod(leader, 8000) is not None
    terminating = pod("p")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert parse_pod(terminating, 8000) is None


def test_older_model_deployment_keeps_a_contested_name() -> None:
    state = State(upstream_port=8000)
    newer = md("newer", "b")
    newer["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    state.reset("ModelDeployment", "", [newer, md("older", "a")])
    entry = state.catalog.lookup("gpt-oss-20b")
    assert entry is not None
    assert entry.key == ("a", "older")


def test_pods_follow_watch_events() -> None:
    state = State(upstream_port=8000)
    state.reset("ModelDeployment", "", [md()])
    state.reset("Pod", "", [pod("p1", ip="127.1.0.1"), pod("p2", ip="127.1.0.2")])
    assert {r.pod for r in state.catalog.ready(("a", "m"))} == {"p1", "p2"}
    state.event("Pod", "MODIFIED", pod("p1", ready=False))
    assert {r.pod for r in state.catalog.ready(("a", "m"))} == {"p2"}
    state.event("Pod", "DELETED", pod("p2"))
    assert state.catalog.ready(("a", "m")) == []


def test_held_request_goes_out_when_a_replica_is_ready() -> None:
    async def scenario() -> tuple[bool, list[str], list[int]]:
        state = State(upstream_port=8000)
        state.reset("ModelDeployment", "", [md(replicas=0)])
        entry = state.catalog.lookup("gpt-oss-20b")
        assert entry is not None
        woken: list[str] = []
        held: list[int] = []
        waiter = asyncio.create_task(
            state.wait_ready(entry, 5.0, lambda e: woken.append(e.name), held.append)
        )
        await asyncio.sleep(0.05)
        state.event("ModelDeployment", "MODIFIED", md(replicas=1))
        state.event("Pod", "ADDED", pod("p1"))
        return await asyncio.wait_for(waiter, 1.0), woken, held

    ok, woken, held = asyncio.run(scenario())
    assert ok
    assert woken == ["m"]
    assert held == [1, 0]


def test_hold_times_out_without_a_replica() -> None:
    async def scenario() -> bool:
        state = State(upstream_port=8000)
        state.reset("ModelDeployment", "", [md(replicas=1)])
        entry = state.catalog.lookup("gpt-oss-20b")
        assert entry is not None
        return await state.wait_ready(entry, 0.2, lambda e: None, lambda n: None)

    assert asyncio.run(scenario()) is False
