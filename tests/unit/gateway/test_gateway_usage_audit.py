"""Usage from answers and streams; audit lines never hold text unless asked."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gantry_gateway.audit import AuditLog, AuditRecord, now_rfc3339
from gantry_gateway.usage import StreamScanner, from_body

BODY = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}]}


def test_usage_from_a_body() -> None:
    used = from_body(
        json.dumps({"usage": {"prompt_tokens": 7, "completion_tokens": 5}}).encode(), BODY
    )
    assert (used.prompt_tokens, used.completion_tokens, used.estimated) == (7, 5, False)


def test_usage_is_found_whatever_the_answer_text_says() -> None:
    answer = {
        "choices": [{"message": {"content": 'say "usage": {"prompt_tokens": 99} \u00e9'}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "kv_transfer_params": None,
    }
    for data in (json.dumps(answer).encode(), json.dumps(answer, indent=2).encode()):
        used = from_body(data, BODY)
        assert (used.prompt_tokens, used.completion_tokens, used.estimated) == (3, 4, False)
    broken = from_body(b'{"choices": [], "usage": {"prompt_tokens": 3', BODY)
    assert (broken.prompt_tokens, broken.estimated) == (10, True)
    assert from_body(b'{"usage": null}', BODY).estimated


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


def test_audit_lines_of_one_loop_turn_are_written_together(tmp_path: Path) -> None:
    due: list[Callable[[], None]] = []
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, include_content=False, defer=due.append)
    for i in range(3):
        log.write(AuditRecord(time=now_rfc3339(), request_id=f"r{i}"))
    assert len(due) == 1  # one flush for the turn
    assert path.read_text() == ""
    due.pop()()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["request_id"] for x in lines] == ["r0", "r1", "r2"]
    log.write(AuditRecord(time=now_rfc3339(), request_id="r3"))
    assert len(due) == 1
    log.close()  # writes what is pending
    assert path.read_text().splitlines()[-1].startswith('{"time":')
    assert json.loads(path.read_text().splitlines()[-1])["request_id"] == "r3"


def test_audit_time_is_rfc3339_utc_to_the_millisecond() -> None:
    fixed = dt.datetime(2026, 12, 3, 13, 2, 41, 120500, tzinfo=dt.UTC)
    assert now_rfc3339(fixed) == "2026-12-03T13:02:41.120Z"
    before = dt.datetime.now(dt.UTC)
    stamp = now_rfc3339()
    after = dt.datetime.now(dt.UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    moment = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert before - dt.timedelta(milliseconds=1) <= moment <= after


def test_the_stream_is_done_once_its_closing_event_has_passed() -> None:
    data = stream({"choices": [{"delta": {"content": "[DONE]"}}]})
    scanner = StreamScanner()
    cut = data.index(b"data: [DONE]") + 8
    scanner.feed(data[:cut])
    assert not scanner.done  # a text that says [DONE] and half the closing line are not the end
    scanner.feed(data[cut:])
    assert scanner.done
    line = json.loads(AuditRecord(time="t", request_id="r", delivered=True).line(False))
    assert "delivered" not in line
