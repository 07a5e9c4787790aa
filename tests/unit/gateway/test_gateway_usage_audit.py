"""Usage from answers and streams; audit lines never hold text unless asked."""

from __future__ import annotations

import json
from typing import Any

from gantry_gateway.audit import AuditRecord
from gantry_gateway.usage import StreamScanner, from_body

BODY = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}]}


def test_usage_from_a_body() -> None:
    used = from_body(
        json.dumps({"usage": {"prompt_tokens": 7, "completion_tokens": 5}}).encode(), BODY
    )
    assert (used.prompt_tokens, used.completion_tokens, used.estimated) == (7, 5, False)


def test_missing_usage_is_estimated() -> None:
    used = from_body(b'{"choices": []}', BODY)
    assert (used.prompt_tokens, used.completion_tokens, used.estimated) == (10, 0, True)


def stream(*events: Any) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )


def test_stream_usage_from_the_last_event_across_chunk_boundaries() -> None:
    data = stream(
        {"choices": [{"delta": {"content": "a"}}], "usage": None},
        {"choices": [{"delta": {"content": "b"}}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}},
    )
    scanner = StreamScanner()
    for i in range(0, len(data), 7):
        scanner.feed(data[i : i + 7])
    used = scanner.result(BODY)
    assert (used.prompt_tokens, used.completion_tokens, used.estimated) == (12, 2, False)


def test_stream_without_usage_counts_events() -> None:
    scanner = StreamScanner()
    scanner.feed(stream(*({"choices": [{"delta": {"content": "t"}}]} for _ in range(9))))
    used = scanner.result(BODY)
    assert (used.completion_tokens, used.estimated) == (9, True)


def test_audit_line_has_no_content_by_default() -> None:
    record = AuditRecord(time="t", request_id="r", prompt={"messages": ["secret"]}, completion="x")
    plain = json.loads(record.line(include_content=False))
    assert "prompt" not in plain
    assert "completion" not in plain
    assert "secret" not in record.line(include_content=False)
    full = json.loads(record.line(include_content=True))
    assert full["prompt"] == {"messages": ["secret"]}
