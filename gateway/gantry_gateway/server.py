"""The gateway's HTTP/1.1 server: asyncio protocols, requests parsed by httptools (llhttp).

The gateway's hot path is a relay, and aiohttp's server and client cost about 0.65 ms of CPU
per request and 50 us per streamed event here: with 200 streaming users the event loop's queue
added tens of milliseconds to the time to first token (docs/gateway.md, "The hot path"). This
server hands each complete request to the handler, and the handler writes the answer straight
to the connection's transport: a streamed answer's chunks are written from the upstream
connection's read callback (``upstream.py``), with no task, future or copy per event.

What it does, as a proxy's front must: keep-alive with an idle timeout, pipelined requests
answered in order, ``Expect: 100-continue``, chunked or sized request bodies with a size limit
(the handler answers 413, so the refusal is audited), a bound on the request head, HTTP/1.0
clients (no chunked answers: the connection closes after a stream), flow control (a slow client
pauses the upstream read through ``on_pause``/``on_resume``), and a client that goes away
cancels its request's task. Errors the handler does not answer become a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools

from gantry_gateway import errors

log = logging.getLogger(__name__)

#: The request line and headers together.
MAX_HEAD_BYTES = 64 * 1024
#: Idle kept-alive client connections are closed after this long (aiohttp's default).
KEEPALIVE_SECONDS = 75.0
#: Requests read ahead of the one being answered (pipelining) before reading pauses.
MAX_PIPELINED = 8
#: Client write buffer: above it the upstream read pauses (on_pause), below a quarter resumes.
WRITE_HIGH_WATER = 256 * 1024

Headers = Iterable[tuple[str, str]]


@dataclass(slots=True)
class Request:
    method: str
    #: The path without the query string.
    path: str
    #: Lower-case names; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    version: str
    #: The body was over the server's limit (and is not kept): the handler answers 413.
    too_large: bool = False


Handler = Callable[[Request, "HttpConnection"], Awaitable[None]]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class _Date:
    """The Date header's value, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_date = _Date()


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for one at a time, and is the
    handler's way to answer (``respond``, or ``start_stream``/``write``/``end_stream``)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._too_large = False
        self._discarding = False  # the rest of the input is not parsed (the connection closes)
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._reading_paused = False
        # The answer being written.
        self._answering: Request | None = None
        self._started = False
        self._chunked = False
        self._keep_alive = True
        #: Set by a relay: called when the client's write buffer is full, and drained again.
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self.closed = False

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "Protocol upgrades are not supported.")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"Malformed HTTP request: {exc}.")

    def eof_received(self) -> bool | None:
        return None  # the transport closes; a request in progress is cancelled

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        if self.on_pause is not None:
            self.on_pause()

    def resume_writing(self) -> None:
        if self.on_resume is not None:
            self.on_resume()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._url = b""
        self._headers = {}
        self._head_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES and not self._discarding:
            self._refuse(431, f"The request head is larger than {MAX_HEAD_BYTES} bytes.")

    def on_headers_complete(self) -> None:
        if self._discarding:
            return
        length = self._headers.get("content-length", "")
        self._too_large = length.isdigit() and int(length) > self.server.max_body
        if self._headers.get("expect", "").lower() != "100-continue" or not self.transport:
            return
        if self._too_large:  # answered at once, the body never sent; then the connection closes
            self._dispatch()
            self._discarding = True
        else:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        # An oversized body is read and dropped (closing with unread input would reset the
        # connection before the client reads the 413); the connection closes after it.
        if self._discarding or self._too_large:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self.server.max_body:
            self._too_large = True
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._discarding:
            self._dispatch()

    # --- requests -----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        url = self._url
        path = url.split(b"?", 1)[0].decode("latin-1")
        request = Request(
            method=self._parser.get_method().decode("latin-1"),
            path=path,
            headers=self._headers,
            body=b"".join(self._body),
            keep_alive=self._parser.should_keep_alive() and not self._too_large,
            version=self._parser.get_http_version(),
            too_large=self._too_large,
        )
        self._body = []
        self._queue.append(request)
        if len(self._queue) > MAX_PIPELINED and self.transport and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        if self._answering is None:
            self._next()

    def _next(self) -> None:
        if not self._queue or self.closed:
            return
        request = self._queue.popleft()
        if self._reading_paused and self.transport and len(self._queue) <= MAX_PIPELINED // 2:
            self._reading_paused = False
            self.transport.resume_reading()
        self._answering = request
        self._started = False
        self._keep_alive = request.keep_alive
        self._task = asyncio.get_running_loop().create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            await self.server.handler(request, self)
        except asyncio.CancelledError:
            return  # the client went away
        except Exception:
            log.exception("Unhandled error answering %s %s", request.method, request.path)
            if self._started:
                return self._close()  # the client sees a cut answer
        else:
            if self._answering is not request:
                return  # answered
            log.error("No answer to %s %s", request.method, request.path)
            if self._started:
                return self.end_stream()
        self.respond(500, (("Content-Type", "text/plain"),), b"Internal server error")

    def _refuse(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answer it (if nothing is being answered) and
        close the connection, reading nothing more."""
        self._discarding = True
        body = errors.error_body(message, "invalid_request_error", "invalid_request")
        if self._answering is None and self.transport is not None:
            self._keep_alive = False
            self._answering = Request("", "", {}, b"", False, "1.1")
            self.respond(status, (("Content-Type", "application/json"),), body)
        else:
            self._close()

    # --- answers -----------------------------------------------------------------------------

    def _head(self, status: int, headers: Headers, framing: bytes) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        lines.extend(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
        lines.append(b"Date: %s\r\n" % _date())
        lines.append(framing)
        if not self._keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """The whole answer, sized."""
        request = self._answering
        if request is None or self._started:
            raise RuntimeError("respond() outside of an answer, or after start_stream()")
        self._started = True
        head = self._head(status, headers, b"Content-Length: %d\r\n" % len(body))
        if self.transport is not None and not self.closed:
            self.transport.write(head if request.method == "HEAD" else head + body)
        self._done()

    def start_stream(self, status: int, headers: Headers) -> None:
        """The head of an answer whose body follows in ``write`` calls (chunked; for an
        HTTP/1.0 client, delimited by closing the connection)."""
        request = self._answering
        if request is None or self._started:
            raise RuntimeError("start_stream() outside of an answer, or twice")
        self._started = True
        self._chunked = request.version == "1.1"
        if not self._chunked:
            self._keep_alive = False
        framing = b"Transfer-Encoding: chunked\r\n" if self._chunked else b""
        if self.transport is not None and not self.closed:
            self.transport.write(self._head(status, headers, framing))

    def write(self, data: bytes) -> None:
        if not data or self.closed or self.transport is None or self.transport.is_closing():
            return
        if self._chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def end_stream(self) -> None:
        if self._chunked and not self.closed and self.transport and not self.transport.is_closing():
            self.transport.write(b"0\r\n\r\n")
        self._done()

    def _done(self) -> None:
        self._answering = None
        self._started = False
        self._chunked = False
        self.on_pause = self.on_resume = None
        if not self._keep_alive or self._discarding:
            self._close()
            return
        if self._queue:
            self._next()
        else:
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.server.keepalive_seconds, self._close)

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    @property
    def started(self) -> bool:
        """The answer being written has begun (its head is sent)."""
        return self._started

    @property
    def idle(self) -> bool:
        return self._answering is None and not self._queue


class HttpServer:
    """Listens and serves ``handler``; ``shutdown`` stops listening and lets answers in
    progress finish (bounded)."""

    def __init__(
        self, handler: Handler, max_body: int, keepalive_seconds: float = KEEPALIVE_SECONDS
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.keepalive_seconds = keepalive_seconds
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, backlog: int = 1024) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, backlog=backlog, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def shutdown(self, timeout: float) -> None:
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + timeout
        while True:
            for conn in list(self.connections):
                if conn.idle:
                    conn._close()
            if not self.connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)
