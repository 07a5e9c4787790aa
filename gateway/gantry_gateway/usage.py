"""Token usage from responses (pure).

Non-streaming answers carry ``usage`` in their JSON body. A stream carries it in its last data
event only when the client asked for ``stream_options.include_usage``. When a response reports
no usage the gateway estimates it, and says so (``usage_estimated`` in the audit line): prompt
tokens as the request's prompt bytes / 4, completion tokens as the number of stream events that
carried text (vLLM sends about one token per event), 0 for a non-streaming answer without usage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: A stream line longer than this is not scanned for usage (the text still passes through).
MAX_LINE = 1 << 20


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _tokens(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


def estimate_prompt(body: Mapping[str, Any]) -> int:
    size = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                content = message.get("content")
                size += len(json.dumps(content)) if not isinstance(content, str) else len(content)
    for name in ("prompt", "input"):
        value = body.get(name)
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            size += (
                len(value) * 4 if value and isinstance(value[0], int) else len(json.dumps(value))
            )
    return (size + 3) // 4


_DECODER = json.JSONDecoder()


def _usage_object(data: bytes) -> Any:
    """The value of an answer's last ``"usage":`` key, parsed alone (the answer's text is not
    decoded): in JSON text an unescaped ``"usage":`` can only be a key, and OpenAI-shaped
    answers have one, at the top level, after the choices. None when there is none."""
    at = data.rfind(b'"usage":')
    if at < 0:
        return None
    try:
        text = data[at + 8 :].decode()
        return _DECODER.raw_decode(text, len(text) - len(text.lstrip()))[0]
    except ValueError:  # includes UnicodeDecodeError
        return None


def from_body(data: bytes, body: Mapping[str, Any]) -> Usage:
    """Usage of a non-streaming answer."""
    found = _tokens(_usage_object(data))
    if found is None:
        return Usage(estimate_prompt(body), 0, estimated=True)
    return Usage(found[0], found[1], estimated=False)


class StreamScanner:
    """Reads server-sent events as they pass, keeping the usage and the count of text events.

    Only lines holding ``"usage"`` with a value are parsed as JSON; the rest is counted."""

    def __init__(self) -> None:
        self._pending = b""
        self.events = 0
        self.usage: tuple[int, int] | None = None
        self.error: str | None = None
        #: The stream's closing ``data: [DONE]`` event has passed.
        self.done = False

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n") + 1
        self._pending = data[end:] if len(data) - end <= MAX_LINE else b""
        if b"data: [DONE]" in data:
            self.done = True
        if b'"usage":' not in data:  # the common case: count text events, parse nothing
            self.events += data.count(b"data: {", 0, end) + data.count(b"data:{", 0, end)
            return
        for line in data[:end].split(b"\n"):
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload.startswith(b"{"):
            return  # [DONE] or empty
        if b'"usage":' in payload and b'"usage":null' not in payload.replace(b" ", b""):
            try:
                event = json.loads(payload)
            except ValueError:
                return
            if isinstance(event, dict):
                found = _tokens(event.get("usage"))
                if found is not None:
                    self.usage = found
                if not event.get("choices"):
                    return  # the usage-only event carries no text
        self.events += 1

    def result(self, body: Mapping[str, Any]) -> Usage:
        if self.usage is not None:
            return Usage(self.usage[0], self.usage[1], estimated=False)
        return Usage(estimate_prompt(body), self.events, estimated=True)


def asked_for_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
