"""The gateway's HTTP/1.1 server (server.py) on uvloop, spoken to over real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gantry_gateway.server import (
    MAX_HEAD_BYTES,
    WRITE_HIGH_WATER,
    HttpConnection,
    HttpServer,
    Request,
)
from tests.unit.gateway.loop_thread import LoopThread

MAX_BODY = 1000


class Served(LoopThread):
    """An HttpServer with a test handler, its loop in a thread."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Request] = []
        self.cancelled = threading.Event()
        self.paused = threading.Event()
        self.resumed = threading.Event()
        self.port = 0

    async def handle(self, request: Request, conn: HttpConnection) -> None:
        self.seen.append(request)
        if request.path == "/fail":
            raise RuntimeError("boom")
        if request.path == "/hang":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.path == "/stream":
            conn.start_stream(200, [("Content-Type", "text/event-stream")])
            for i in range(3):
                conn.write(f"data: {i}\n\n".encode())
                await asyncio.sleep(0.01)
            return conn.end_stream()
        if request.path == "/flood":  # writes until the client's buffer is full
            drained = asyncio.Event()

            def resumed() -> None:
                self.resumed.set()
                drained.set()

            conn.on_pause, conn.on_resume = self.paused.set, resumed
            conn.start_stream(200, [("Content-Type", "application/octet-stream")])
            while not self.paused.is_set():
                conn.write(b"x" * 65536)
                await asyncio.sleep(0)
            await drained.wait()
            return conn.end_stream()
        if request.too_large:
            return conn.respond(413, [], b"too large")
        answer = {"path": request.path, "body": request.body.decode(), "method": request.method}
        conn.respond(200, [("Content-Type", "application/json")], json.dumps(answer).encode())

    async def serve(self) -> None:
        self._server = HttpServer(self.handle, MAX_BODY, keepalive_seconds=2.0)
        self.port = await self._server.start("127.0.0.1", 0)

    async def close(self) -> None:
        await self._server.shutdown(1)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)


@pytest.fixture
def served() -> Iterator[Served]:
    with Served() as s:
        yield s


def read_answer(
    sock: socket.socket, buffer: bytearray, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One answer from the socket (sized, chunked or until close; only its head for a HEAD
    request); ``buffer`` keeps what arrived after it."""

    def fill() -> bool:
        data = sock.recv(65536)
        buffer.extend(data)
        return bool(data)

    while b"\r\n\r\n" not in buffer:
        assert fill(), f"closed before a head: {bytes(buffer)!r}"
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if status == 100 or head_only:
        return status, headers, b""
    if "content-length" in headers:
        size = int(headers["content-length"])
        while len(buffer) < size:
            assert fill()
        body = bytes(buffer[:size])
        del buffer[:size]
        return status, headers, body
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buffer:
                assert fill()
            line, _, _ = bytes(buffer).partition(b"\r\n")
            size = int(line, 16)
            while len(buffer) < len(line) + 2 + size + 2:
                assert fill()
            body += bytes(buffer[len(line) + 2 : len(line) + 2 + size])
            del buffer[: len(line) + 2 + size + 2]
            if size == 0:
                return status, headers, body
    while fill():
        pass
    body = bytes(buffer)
    buffer.clear()
    return status, headers, body


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return True


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


def test_kept_alive_and_pipelined_requests_are_answered_in_order(served: Served) -> None:
    with served.connect() as sock:
        buffer = bytearray()
        sock.sendall(post("/a", b"one"))
        status, headers, body = read_answer(sock, buffer)
        assert status == 200
        assert json.loads(body) == {"path": "/a", "body": "one", "method": "POST"}
        assert "connection" not in headers
        # Two at once on the same connection.
        sock.sendall(post("/b?x=1", b"two") + post("/c", b"three", "Connection: close\r\n"))
        answers = [json.loads(read_answer(sock, buffer)[2]) for _ in range(2)]
        assert [(a["path"], a["body"]) for a in answers] == [("/b", "two"), ("/c", "three")]
        assert closed(sock)


def test_expect_100_continue_and_a_chunked_body(served: Served) -> None:
    with served.connect() as sock:
        buffer = bytearray()
        sock.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")  # fmt: skip
        assert read_answer(sock, buffer)[0] == 100
        sock.sendall(b"hello")
        assert json.loads(read_answer(sock, buffer)[2])["body"] == "hello"
        sock.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")  # fmt: skip
        assert json.loads(read_answer(sock, buffer)[2])["body"] == "abcde"


def test_an_oversized_body_reaches_the_handler_as_too_large_then_the_connection_closes(
    served: Served,
) -> None:
    with served.connect() as sock:
        sock.sendall(post("/big", b"x" * (MAX_BODY + 1)))
        status, headers, _ = read_answer(sock, bytearray())
        assert (status, headers["connection"]) == (413, "close")
        assert closed(sock)
    assert served.seen[-1].too_large
    assert served.seen[-1].body == b""
    # Announced too large with Expect: answered before the body is sent.
    with served.connect() as sock:
        sock.sendall(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                     b"Expect: 100-continue\r\n\r\n")  # fmt: skip
        assert read_answer(sock, bytearray())[0] == 413
        assert closed(sock)


def test_malformed_requests_and_oversized_heads_are_refused(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = read_answer(sock, bytearray())
        assert status == 400
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        assert closed(sock)
    with served.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n")
        assert read_answer(sock, bytearray())[0] == 431
    assert served.seen == []


def test_streams_are_chunked_for_http_11_and_close_delimited_for_http_10(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_answer(sock, bytearray())
        assert (status, headers["transfer-encoding"]) == (200, "chunked")
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    with served.connect() as sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
        status, headers, body = read_answer(sock, bytearray())
        assert "transfer-encoding" not in headers
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_head_requests_get_no_body_and_handler_errors_a_500(served: Served) -> None:
    with served.connect() as sock:
        buffer = bytearray()
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_answer(sock, buffer, head_only=True)
        assert status == 200
        assert int(headers["content-length"]) > 0
        sock.sendall(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        assert buffer == b""  # the HEAD answer had no body
        assert read_answer(sock, buffer)[0] == 500


def test_a_client_that_goes_away_cancels_its_request(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 5
        while not served.seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert served.cancelled.wait(5)


def test_a_client_that_does_not_read_pauses_the_writer_until_it_reads(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        assert served.paused.wait(5)
        assert not served.resumed.is_set()
        received = bytearray()
        while not received.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(1 << 20)
            assert data, "closed before the end of the stream"
            received += data
        assert len(received) > WRITE_HIGH_WATER
        assert served.resumed.is_set()


def test_idle_kept_alive_connections_are_closed(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(post("/a", b""))
        assert read_answer(sock, bytearray())[0] == 200
        sock.settimeout(5)
        started = time.monotonic()
        assert closed(sock)
        assert 1.5 < time.monotonic() - started < 4.5
