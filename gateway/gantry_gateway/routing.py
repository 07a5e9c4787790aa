"""Which replica takes a request (pure).

Least outstanding: the replica with the fewest requests in flight from this gateway; ties go
round-robin (``turn`` rotates the starting point).

Prefix affinity: consistent hashing with bounded load (Mirrokni, Thorup and Zadimoghaddam,
2016). Each replica has :data:`VNODES` points on a 64-bit ring; a request's prefix hash walks
the ring clockwise to the first replica whose outstanding requests stay within
``ceil(load_factor * (total + 1) / replicas)``. Repeated prompts reach the same replica (and
its prefix cache) until it is that much busier than the average; a replica that leaves moves
only its own share of prefixes.

"Tokens" for the prefix are approximated cheaply without a tokenizer: ``prefix_tokens`` tokens
are the first ``4 * prefix_tokens`` bytes of the UTF-8 prompt text (about 4 bytes per token
for English text with BPE vocabularies), or the first ``prefix_tokens`` ids of a tokenised
prompt. The prompt text of a chat request is each message's role and text content in order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

VNODES = 100
LOAD_FACTOR = 1.25
BYTES_PER_TOKEN = 4


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def least_outstanding(replicas: Sequence[str], outstanding: Mapping[str, int], turn: int) -> str:
    """The replica with the fewest outstanding requests; among equals, the first from ``turn``."""
    if not replicas:
        raise ValueError("no replicas to choose from")
    n = len(replicas)
    best = replicas[turn % n]
    best_load = outstanding.get(best, 0)
    for i in range(1, n):
        candidate = replicas[(turn + i) % n]
        load = outstanding.get(candidate, 0)
        if load < best_load:
            best, best_load = candidate, load
    return best


@functools.lru_cache(maxsize=256)
def ring(replicas: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Sorted ring points and the replica of each (cached per replica set)."""
    points = sorted(
        (_hash64(f"{replica}#{v}".encode()), replica) for replica in replicas for v in range(VNODES)
    )
    return tuple(p for p, _ in points), tuple(r for _, r in points)


def bounded_hash(
    replicas: Sequence[str],
    outstanding: Mapping[str, int],
    key: int,
    load_factor: float = LOAD_FACTOR,
) -> str:
    """Consistent hashing with bounded load: the first replica clockwise from ``key`` whose
    load after this request stays within the bound."""
    if not replicas:
        raise ValueError("no replicas to choose from")
    members = tuple(sorted(set(replicas)))
    points, owners = ring(members)
    total = sum(outstanding.get(r, 0) for r in members)
    bound = math.ceil(load_factor * (total + 1) / len(members))
    start = bisect_left(points, key) % len(points)
    seen: set[str] = set()
    for i in range(len(points)):
        owner = owners[(start + i) % len(points)]
        if owner in seen:
            continue
        if outstanding.get(owner, 0) + 1 <= bound:
            return owner
        seen.add(owner)
        if len(seen) == len(members):
            break
    return least_outstanding(members, outstanding, 0)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def prompt_prefix(body: Mapping[str, Any], prefix_tokens: int) -> bytes:
    """The leading ``prefix_tokens`` "tokens" of a request's prompt, as bytes to hash."""
    limit = prefix_tokens * BYTES_PER_TOKEN
    messages = body.get("messages")
    if isinstance(messages, list):
        out = bytearray()
        for message in messages:
            if not isinstance(message, dict):
                continue
            out += f"{message.get('role', '')}\n{_content_text(message.get('content'))}\n".encode()
            if len(out) >= limit:
                break
        return bytes(out[:limit])
    for name in ("prompt", "input"):  # completions; embeddings and responses
        value = body.get(name)
        if isinstance(value, str):
            return value.encode()[:limit]
        if isinstance(value, list) and value:
            first = value[0]
            if isinstance(first, int):  # token ids
                return json.dumps(value[:prefix_tokens]).encode()
            if isinstance(first, str):
                return first.encode()[:limit]
            if isinstance(first, list):
                return json.dumps(first[:prefix_tokens]).encode()
            if isinstance(first, dict):  # responses API input items
                return prompt_prefix({"messages": value}, prefix_tokens)
    return b""


def prefix_key(body: Mapping[str, Any], prefix_tokens: int) -> int:
    return _hash64(prompt_prefix(body, prefix_tokens))
