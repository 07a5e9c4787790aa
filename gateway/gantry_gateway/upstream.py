"""Connections to the runtime pods: HTTP/1.1 on asyncio protocols, responses parsed by
httptools (llhttp), kept alive and pooled per pod.

A pod's connections are keyed by the pod (namespace, name) and its address, so a new pod that
gets a deleted pod's IP never inherits the deleted pod's kept-alive connections. A pooled
connection idle longer than ``idle_seconds`` is closed rather than reused: vLLM's server
(uvicorn) closes idle connections after 5 s, and a request sent as it does so would fail.

When an answer's head arrives, the caller's ``on_head`` (given to ``send``) says where its
body goes: gathered for ``finish``, or handed piece by piece to a sink as it arrives; the
gateway's relay writes a stream to the client from inside this protocol's read callback (no
task wakes up per event), and pauses this connection's reads while the client's buffer is full.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import httptools

#: Pooled connections idle longer than this are closed, not reused (below uvicorn's 5 s).
IDLE_SECONDS = 4.0


class ConnectError(Exception):
    """No connection could be made: nothing was sent (safe to try another replica)."""


class UpstreamError(Exception):
    """The connection failed after the request was sent; ``answered`` says whether any of the
    answer had arrived."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


Key = tuple[str, str, str]  # namespace, pod, address
OnHead = Callable[["UpstreamConnection"], Callable[[bytes], None] | None]


class UpstreamConnection(asyncio.Protocol):
    """One connection to a pod; one request at a time."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._paused = False
        # The exchange in progress.
        self.status = 0
        self.content_type = ""
        self._on_head: OnHead | None = None
        self._end: asyncio.Future[None] | None = None
        self._body: list[bytes] = []
        self._sink: Callable[[bytes], None] | None = None
        self._answered = False
        self._complete = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"malformed answer ({exc})")
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._complete:
            self._fail(f"connection closed ({exc or 'by the pod'})")

    # --- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self._on_head is not None:
            self._sink = self._on_head(self)

    def on_body(self, body: bytes) -> None:
        if self._sink is not None:
            self._sink(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        if not self._parser.should_keep_alive():
            self.abort()
        if self._end is not None and not self._end.done():
            self._end.set_result(None)

    # --- the exchange ------------------------------------------------------------------------

    def send(self, data: bytes, on_head: OnHead) -> None:
        """Send one whole request. When the answer's head arrives, ``on_head`` is called (in
        this protocol's read callback) and returns where the body goes: a sink called with
        each piece as it arrives, or None to gather it for ``finish``."""
        self.status, self.content_type = 0, ""
        self._on_head, self._sink = on_head, None
        self._end = asyncio.get_running_loop().create_future()
        self._body = []
        self._answered = self._complete = False
        assert self.transport is not None
        if self._paused:  # the last answer ended while its client's buffer was full
            self.resume_reading()
        self.transport.write(data)

    async def finish(self) -> bytes:
        """Until the answer has ended; the body when it was gathered (else empty)."""
        assert self._end is not None
        await self._end
        return b"".join(self._body)

    def _fail(self, message: str) -> None:
        if self._end is not None and not self._end.done():
            self._end.set_exception(UpstreamError(message, self._answered))

    @property
    def reusable(self) -> bool:
        return self._complete and not self.closed and self.transport is not None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection (an answer not read to its end cannot be reused)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Kept-alive connections per pod."""

    def __init__(self, connect_timeout: float, idle_seconds: float = IDLE_SECONDS) -> None:
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self._idle: dict[Key, list[UpstreamConnection]] = {}
        self._swept = 0.0

    async def acquire(
        self, key: Key, host: str, port: int, fresh: bool = False
    ) -> UpstreamConnection:
        """A connection to the pod: a pooled one (unless ``fresh``), else a new one; raises
        :class:`ConnectError` when none can be made."""
        now = time.monotonic()
        self._sweep(now)
        idle = self._idle.get(key)
        while idle and not fresh:
            conn = idle.pop()
            if self._usable(conn, now):
                conn.reused = True
                return conn
            conn.abort()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(key), host, port),
                self.connect_timeout,
            )
        except TimeoutError:
            raise ConnectError(f"no connection within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectError(exc.strerror or str(exc)) from None
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Back to the pool when its answer was read to the end, else closed."""
        if not conn.reusable:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)

    def _sweep(self, now: float) -> None:
        """At most once a second: close connections idle too long (pods that went away)."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        for key, conns in list(self._idle.items()):
            keep = []
            for conn in conns:
                if self._usable(conn, now):
                    keep.append(conn)
                else:
                    conn.abort()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def _usable(self, conn: UpstreamConnection, now: float) -> bool:
        return not conn.closed and now - conn.idle_since < self.idle_seconds

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
