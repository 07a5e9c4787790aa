"""The audit trail: one JSON line per request (pure record, plain file or stdout writer).

Fields, in this order: ``time`` (RFC 3339 UTC, when the request arrived), ``request_id``,
``tenant`` (null before authentication), ``model`` (as the client named it), ``namespace`` and
``model_deployment`` (null when the model is unknown), ``replica`` (the pod that answered,
null if none), ``status`` (the HTTP status sent; 499 when the client went away first),
``error`` (the error code, null on success), ``stream``, ``prompt_tokens``,
``completion_tokens``, ``usage_estimated`` (true when the response had no ``usage``),
``ttft_seconds`` (to the first response byte sent, null if none), ``duration_seconds``,
``retries``. With ``--audit-include-content`` also ``prompt`` (the request body's
messages/prompt/input) and ``completion`` (the response text as sent, capped at 1 MiB).
Prompt and completion text never appear otherwise.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

CONTENT_CAP = 1 << 20


@dataclass
class AuditRecord:
    time: str
    request_id: str
    tenant: str | None = None
    model: str | None = None
    namespace: str | None = None
    model_deployment: str | None = None
    replica: str | None = None
    status: int = 0
    error: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    ttft_seconds: float | None = None
    duration_seconds: float = 0.0
    retries: int = 0
    prompt: Any = None
    completion: str | None = None
    #: The client has had the whole answer (not written: it decides 499 on a disconnect).
    delivered: bool = False

    def line(self, include_content: bool) -> str:
        record = dict(self.__dict__)  # flat fields: no deep copy (dataclasses.asdict is slow)
        del record["delivered"]
        if not include_content:
            del record["prompt"], record["completion"]
        elif isinstance(self.completion, str):
            record["completion"] = self.completion[:CONTENT_CAP]
        for name in ("ttft_seconds", "duration_seconds"):
            if record[name] is not None:
                record[name] = round(record[name], 6)
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def now_rfc3339(now: dt.datetime | None = None) -> str:
    if now is not None:
        return now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    stamp = time.time()
    second = int(stamp)
    return f"{_utc_second(second)}.{int((stamp - second) * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    """The date and time of day to the second (formatted once per second, not per request)."""
    return dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def request_content(body: Any) -> Any:
    if not isinstance(body, dict):
        return None
    return {k: body[k] for k in ("messages", "prompt", "input", "instructions") if k in body}


class AuditLog:
    """Appends audit lines to a file (or stdout).

    Without ``defer`` each line is written and flushed at once. With ``defer`` (a function
    that schedules a call on the event loop, e.g. a short ``call_later``) the first line after a
    flush schedules the next flush, and the lines of every request that ends before it runs are
    written and flushed together: one write call for many lines under load, and no line waits
    longer than the deferral."""

    def __init__(
        self,
        path: Path | None,
        include_content: bool,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.include_content = include_content
        self._own = path is not None
        self._stream: TextIO = path.open("a", encoding="utf-8") if path is not None else sys.stdout
        self._defer = defer
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def write(self, record: AuditRecord) -> None:
        text = record.line(self.include_content)
        with self._lock:
            self._pending.append(text)
            if self._defer is not None and len(self._pending) > 1:
                return  # a flush is already due in this turn of the loop
        if self._defer is None:
            self.flush()
        else:
            self._defer(self.flush)

    def flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
            if lines and not self._stream.closed:
                lines.append("")
                self._stream.write("\n".join(lines))
                self._stream.flush()

    def close(self) -> None:
        self.flush()
        if self._own:
            self._stream.close()
