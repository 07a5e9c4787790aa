"""Replica choice: least outstanding, and consistent hashing with bounded load."""

from __future__ import annotations

import collections

import pytest

from gantry_gateway import routing

REPLICAS = [f"127.1.0.{i}:8000" for i in range(1, 5)]


def test_least_outstanding_picks_the_idlest() -> None:
    load = {REPLICAS[0]: 3, REPLICAS[1]: 1, REPLICAS[2]: 2, REPLICAS[3]: 5}
    assert routing.least_outstanding(REPLICAS, load, turn=0) == REPLICAS[1]


def test_least_outstanding_spreads_ties_round_robin() -> None:
    picked = [routing.least_outstanding(REPLICAS, {}, turn) for turn in range(8)]
    assert collections.Counter(picked) == {r: 2 for r in REPLICAS}


def test_no_replicas_is_an_error() -> None:
    with pytest.raises(ValueError, match="no replicas"):
        routing.least_outstanding([], {}, 0)
    with pytest.raises(ValueError, match="no replicas"):
        routing.bounded_hash([], {}, 1)


def test_same_prefix_same_replica() -> None:
    body = {"messages": [{"role": "system", "content": "You are terse. " * 40}]}
    chosen = {routing.bounded_hash(REPLICAS, {}, routing.prefix_key(body, 256)) for _ in range(10)}
    assert len(chosen) == 1


def test_prefixes_spread_over_replicas() -> None:
    keys = [routing.prefix_key({"prompt": f"document {i}: ..."}, 256) for i in range(400)]
    counts = collections.Counter(routing.bounded_hash(REPLICAS, {}, k) for k in keys)
    assert set(counts) == set(REPLICAS)
    assert min(counts.values()) > 400 / len(REPLICAS) / 2


def test_a_busy_owner_overflows_to_the_next() -> None:
    key = routing.prefix_key({"prompt": "shared system prompt"}, 256)
    owner = routing.bounded_hash(REPLICAS, {}, key)
    # The owner is well above the bound ceil(1.25 * (total + 1) / 4).
    load = {owner: 10}
    second = routing.bounded_hash(REPLICAS, load, key)
    assert second != owner
    # A load within the bound keeps the affinity.
    assert routing.bounded_hash(REPLICAS, dict.fromkeys(REPLICAS, 1), key) == owner


def test_removing_a_replica_moves_only_its_prefixes() -> None:
    keys = [routing.prefix_key({"prompt": f"p{i}"}, 256) for i in range(300)]
    before = {k: routing.bounded_hash(REPLICAS, {}, k) for k in keys}
    after = {k: routing.bounded_hash(REPLICAS[:3], {}, k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == REPLICAS[3] for k in moved)


def test_prefix_is_the_leading_tokens_only() -> None:
    head = "x" * (16 * routing.BYTES_PER_TOKEN)
    a = routing.prompt_prefix({"prompt": head + "tail one"}, 16)
    b = routing.prompt_prefix({"prompt": head + "other tail"}, 16)
    assert a == b == head.encode()


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"prompt": [1, 2, 3]},
        {"prompt": ["hi", "there"]},
        {"input": "hi"},
        {"input": [{"role": "user", "content": "hi"}]},
    ],
)
def test_prompt_shapes_have_a_prefix(body: dict[str, object]) -> None:
    assert routing.prompt_prefix(body, 16)


def test_chat_prefix_includes_roles() -> None:
    user = routing.prompt_prefix({"messages": [{"role": "user", "content": "hi"}]}, 16)
    system = routing.prompt_prefix({"messages": [{"role": "system", "content": "hi"}]}, 16)
    assert user != system
