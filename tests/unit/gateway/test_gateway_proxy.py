"""The gateway's HTTP front against real simulator servers (in threads): no cluster, the
state filled as the watches would fill it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gantry_gateway.audit import AuditLog
from gantry_gateway.config import GatewayConfig
from gantry_gateway.limits import Limiter
from gantry_gateway.main import loop_factory
from gantry_gateway.metrics import Metrics
from gantry_gateway.proxy import Handler, Services
from gantry_gateway.server import HttpServer
from gantry_gateway.state import State
from gantry_gateway.upstream import UpstreamPool
from gantry_gateway.view import ModelEntry, Replica, Strategy
from gantry_runtime.simulator.testing import SimulatorThread
from tests.unit.gateway.loop_thread import LoopThread

KEY = "sk-unit-0123456789abcdef"
MODEL = "m"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayThread(LoopThread):
    """The gateway's API app on a free port, its event loop in a thread."""

    def __init__(self, state: State, audit: Path) -> None:
        super().__init__()
        self.state = state
        self.metrics = Metrics()
        self.audit_path = audit
        self.port = free_port()
        self.config = GatewayConfig(max_body_bytes=4096, connect_retry_seconds=2.0)

    async def serve(self) -> None:
        self._audit = AuditLog(self.audit_path, include_content=False)
        self._pool = UpstreamPool(self.config.connect_timeout_seconds)
        audit, pool = self._audit, self._pool
        services = Services(
            self.config, self.state, Limiter(), self.metrics, audit, pool, lambda e: None
        )
        self._front = HttpServer(Handler(services, set()), 4096)
        await self._front.start("127.0.0.1", self.port)

    async def close(self) -> None:
        await self._front.shutdown(5)
        self._pool.close()
        self._audit.close()

    def audit(self, count: int = 1) -> list[dict[str, Any]]:
        """The audit lines, once there are ``count`` (written as each response ends)."""
        deadline = time.monotonic() + 5
        while True:
            text = self.audit_path.read_text() if self.audit_path.exists() else ""
            lines = [json.loads(x) for x in text.splitlines()]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines

    def sample(self, name: str, **labels: str) -> float:
        total = 0.0
        exposition = generate_latest(self.metrics.registry).decode()
        for family in text_string_to_metric_families(exposition):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


def tenant_secret(models: str = MODEL, **limits: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "t", "namespace": "g", "labels": {"gantry.dev/tenant": "team"}},
        "stringData": {"apiKey": KEY, "models": models, **limits},
    }


@pytest.fixture(scope="module")
def sims() -> Iterator[list[SimulatorThread]]:
    env = {"GANTRY_SIM_DECODE_TOKENS_PER_S": "400"}
    with SimulatorThread([MODEL], env) as a, SimulatorThread([MODEL], env) as b:
        yield [a, b]


def state_with(ports: list[int]) -> State:
    state = State(upstream_port=8000)
    entry = ModelEntry("ns", "md", MODEL, 1, Strategy.LEAST_OUTSTANDING, 256, "t0")
    state.catalog.set_model(entry)
    state.catalog.replicas[entry.key] = {
        f"pod-{port}": Replica("ns", f"pod-{port}", "md", f"127.0.0.1:{port}") for port in ports
    }
    state.event("Secret", "ADDED", tenant_secret())
    return state


@pytest.fixture
def gateway(sims: list[SimulatorThread], tmp_path: Path) -> Iterator[GatewayThread]:
    with GatewayThread(state_with([s.port for s in sims]), tmp_path / "audit.jsonl") as gw:
        yield gw


def client(gw: GatewayThread, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{gw.port}/v1", api_key=key, max_retries=0, timeout=30
    )


def raw(gw: GatewayThread, body: bytes, key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.port}/v1/chat/completions", data=body, headers=headers
    )
    try:
        with DIRECT.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_streams_through_with_usage_and_an_audit_line(gateway: GatewayThread) -> None:
    with client(gateway) as c:
        chunks = list(
            c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "secret words here"}],
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert len(chunks) > 3
    usage = chunks[-1].usage
    assert usage is not None
    (line,) = gateway.audit()
    assert line["status"] == 200
    assert line["stream"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert line["replica"].startswith("pod-")
    assert "secret words" not in gateway.audit_path.read_text()
    assert gateway.sample("gantry_gateway_tokens_total", kind="completion") == (
        usage.completion_tokens
    )


def test_errors_are_openai_shaped(gateway: GatewayThread) -> None:
    body = json.dumps({"model": MODEL, "messages": []}).encode()
    status, answer = raw(gateway, body, key=None)
    assert (status, answer["error"]["code"]) == (401, "invalid_api_key")
    status, answer = raw(gateway, b"{oops", key=KEY)
    assert (status, answer["error"]["type"]) == (400, "invalid_request_error")
    status, answer = raw(gateway, json.dumps({"model": "nope"}).encode())
    assert (status, answer["error"]["code"]) == (404, "model_not_found")
    status, answer = raw(gateway, b"{" + b" " * 5000 + b"}")
    assert (status, answer["error"]["code"]) == (413, "too_large")
    gateway.call(gateway.state.event, "Secret", "MODIFIED", tenant_secret(models="other"))
    status, answer = raw(gateway, body)
    assert (status, answer["error"]["code"]) == (403, "model_not_allowed")
    assert {line["status"] for line in gateway.audit(5)} == {401, 400, 404, 413, 403}


def test_requests_limit_gives_429_with_retry_after(gateway: GatewayThread) -> None:
    gateway.call(gateway.state.event, "Secret", "MODIFIED", tenant_secret(requestsPerMinute="2"))
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ).encode()
    assert [raw(gateway, body)[0] for _ in range(3)] == [200, 200, 429]
    with client(gateway) as c, pytest.raises(openai.RateLimitError) as limited:
        c.chat.completions.create(model=MODEL, messages=[], max_tokens=2)
    # One request every 30 s; less the time the three requests took.
    assert 20 <= int(limited.value.response.headers["Retry-After"]) <= 30
    assert gateway.sample("gantry_gateway_rate_limited_total", limit="requests") == 2


def test_a_refused_connection_is_retried_on_another_replica(
    sims: list[SimulatorThread], tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens there
    with (
        GatewayThread(state_with([dead, sims[0].port]), tmp_path / "a.jsonl") as gw,
        client(gw) as c,
    ):
        for _ in range(4):
            reply = c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert reply.choices[0].message.content
        assert gw.sample("gantry_gateway_upstream_retries_total") >= 1
        assert {line["replica"] for line in gw.audit(4)} == {f"pod-{sims[0].port}"}


def test_only_refusing_replicas_give_503_after_the_retry_window(tmp_path: Path) -> None:
    with GatewayThread(state_with([free_port()]), tmp_path / "a.jsonl") as gw:
        started = time.monotonic()
        status, answer = raw(gw, json.dumps({"model": MODEL, "messages": []}).encode())
        assert (status, answer["error"]["code"]) == (503, "replica_unreachable")
        assert 2.0 <= time.monotonic() - started < 10


def running(sim: SimulatorThread) -> float:
    with DIRECT.open(f"{sim.base_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vllm:num_requests_running"
    )


def test_a_client_that_disconnects_cancels_the_upstream_request(
    sims: list[SimulatorThread], tmp_path: Path
) -> None:
    with GatewayThread(state_with([sims[0].port]), tmp_path / "a.jsonl") as gw:
        with client(gw) as c:
            stream = c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "go on"}],
                max_tokens=4000,  # 10 s at 400 tokens/s
                stream=True,
            )
            next(iter(stream))
            assert running(sims[0]) == 1
            stream.close()
        deadline = time.monotonic() + 5
        while running(sims[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running(sims[0]) == 0
        (line,) = gw.audit()
        assert line["status"] == 499
        assert gw.sample("gantry_gateway_outstanding_requests") == 0


class OldPod:
    """A replica on its way out: answers one request, keeps that connection open, and closes
    it without answering the next one (a draining server, or one killed mid-reuse)."""

    ANSWER = json.dumps({"object": "chat.completion", "choices": [], "usage": None}).encode()

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        answered = False
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            if answered:
                writer.close()
                await writer.wait_closed()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(self.ANSWER)}\r\n\r\n".encode()
                + self.ANSWER
            )
            answered = True

    def start(self) -> OldPod:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self._loop
        )
        self._server = future.result(5)
        return self

    def stop_listening(self) -> None:
        """Free the port; the accepted connection stays open."""
        assert self._server is not None
        self._loop.call_soon_threadsafe(self._server.close)
        time.sleep(0.2)

    def stop(self) -> None:
        async def shutdown() -> None:
            for writer in self._writers:
                writer.close()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def test_a_new_pod_on_a_deleted_pods_address_gets_fresh_connections(tmp_path: Path) -> None:
    """kwok (like real clusters) hands a deleted pod's IP to a new pod: a connection kept
    alive to the old pod must not carry the new pod's requests (it would fail them)."""
    port = free_port()
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ).encode()
    old = OldPod(port).start()
    with GatewayThread(state_with([port]), tmp_path / "a.jsonl") as gw:
        assert raw(gw, body)[0] == 200  # leaves a kept-alive connection to pod-<port>
        old.stop_listening()
        new = Replica("ns", "pod-new", "md", f"127.0.0.1:{port}")

        def replace() -> None:
            gone = {"metadata": {"name": f"pod-{port}", "namespace": "ns"}}
            gw.state.event("Pod", "DELETED", gone)
            gw.state.catalog.replicas[("ns", "md")]["pod-new"] = new

        with SimulatorThread([MODEL, "--port", str(port)]):
            gw.call(replace)
            statuses = [raw(gw, body)[0] for _ in range(3)]
        old.stop()
        assert statuses == [200, 200, 200]
        assert [line["replica"] for line in gw.audit(4)][1:] == ["pod-new"] * 3


def test_the_gateway_runs_on_uvloop_when_it_is_installed() -> None:
    import uvloop

    factory = loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_unknown_routes_and_wrong_methods_get_openai_shaped_errors(gateway: GatewayThread) -> None:
    base = f"http://127.0.0.1:{gateway.port}"
    for method, path, status, allowed in (
        ("GET", "/v2/nothing", 404, None),
        ("GET", "/v1/chat/completions", 405, "POST"),
        ("POST", "/v1/models", 405, "GET, HEAD"),
    ):
        request = urllib.request.Request(
            base + path, method=method, data=b"" if method == "POST" else None
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            DIRECT.open(request, timeout=5)
        with refused.value as error:
            assert error.code == status
            assert json.loads(error.read())["error"]["message"]
            assert error.headers.get("Allow") == allowed
