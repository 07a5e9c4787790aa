"""The simulator over HTTP, driven by the official OpenAI client.

Servers run in a background thread on 127.0.0.1 with a free port; simulated rates are high so
each test takes well under a second or two. Waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gantry_runtime.simulator.config import parse_config
from gantry_runtime.simulator.server import serve
from gantry_runtime.simulator.testing import SimulatorThread
from gantry_runtime.simulator.tokens import render_chat

ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "GANTRY_SIM_PREFILL_TOKENS_PER_S": "1000000",
    "GANTRY_SIM_DECODE_TOKENS_PER_S": "2000",
    "GANTRY_SIM_OUTPUT_TOKENS": "12",
}
WAIT = 20.0  # upper bound for polls; they normally succeed in milliseconds


def _client(sim: SimulatorThread, api_key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sim.base_url + "/v1", api_key=api_key, max_retries=0, timeout=WAIT
    )


def _get(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def scrape(sim: SimulatorThread) -> list[Sample]:
    status, _, body = _get(sim.base_url + "/metrics")
    assert status == 200
    families = text_string_to_metric_families(body.decode())
    return [sample for family in families for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    argv = ["org/test-model", "--served-model-name", "sim-model", "alias"]
    argv += ["--max-model-len", "512", "--max-num-seqs", "8", "--tool-call-parser", "openai"]
    with SimulatorThread(argv, FAST) as server:
        yield server


@pytest.fixture
def client(sim: SimulatorThread) -> Iterator[openai.OpenAI]:
    with _client(sim) as c:
        yield c


# --- API shapes ------------------------------------------------------------------------------


def test_models_lists_every_served_name(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["sim-model", "alias"]
    first = models[0].to_dict()
    assert first["object"] == "model"
    assert first["owned_by"] == "vllm"
    assert first["root"] == "org/test-model"
    assert first["max_model_len"] == 512


def test_chat_completion(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about KV caches."},
    ]
    response = client.chat.completions.create(model="alias", messages=messages, max_tokens=7)
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == "sim-model"
    assert abs(response.created - time.time()) < 600
    [choice] = response.choices
    assert choice.index == 0
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content is not None
    assert len(choice.message.content.split(" ")) == 7
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens == render_chat(messages)[1]
    assert usage.completion_tokens == 7
    assert usage.total_tokens == usage.prompt_tokens + 7


def test_chat_without_max_tokens_stops_at_the_default_length(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.completion_tokens == 12
    capped = client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=3,
    )
    assert capped.usage is not None
    assert capped.usage.completion_tokens == 3


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Stream, please."}]
    whole = client.chat.completions.create(model="sim-model", messages=messages, max_tokens=9)
    with client.chat.completions.create(
        model="sim-model",
        messages=messages,
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert all(f is None for f in finishes[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 9
    assert usage_chunk.usage.prompt_tokens == render_chat(messages)[1]


def test_chat_streaming_without_usage(client: openai.OpenAI) -> None:
    with client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=4,
        stream=True,
    ) as stream:
        chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completions(client: openai.OpenAI) -> None:
    response = client.completions.create(model="sim-model", prompt="Once upon a", max_tokens=5)
    assert response.id.startswith("cmpl-")
    assert response.object == "text_completion"
    [choice] = response.choices
    assert choice.finish_reason == "length"
    assert len(choice.text.split(" ")) == 5
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (3, 5)
    # Without max_tokens: vLLM's default of 16, and the simulated EOS after 12 tokens comes first.
    default = client.completions.create(model="sim-model", prompt="Once upon a")
    assert default.choices[0].finish_reason == "stop"
    assert default.usage is not None
    assert default.usage.completion_tokens == 12


def test_completions_batch_prompts_n_and_token_ids(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model="sim-model", prompt=["abcd", "abcdefgh"], n=2, max_tokens=3
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert response.usage is not None
    assert response.usage.prompt_tokens == 1 + 2
    assert response.usage.completion_tokens == 12
    ids = client.completions.create(model="sim-model", prompt=[1, 2, 3, 4, 5], max_tokens=2)
    assert ids.usage is not None
    assert ids.usage.prompt_tokens == 5


def test_completions_streaming(client: openai.OpenAI) -> None:
    with client.completions.create(
        model="sim-model",
        prompt="hello",
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(text.split(" ")) == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


# --- errors ----------------------------------------------------------------------------------


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
    assert excinfo.value.status_code == 404
    assert excinfo.value.body == {
        "message": "The model `nope` does not exist. Valid aliases: sim-model, alias.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_prompt_longer_than_the_context_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.completions.create(model="sim-model", prompt="x" * 4 * 600, max_tokens=1)
    assert excinfo.value.status_code == 400
    assert "maximum context length is 512 tokens" in str(excinfo.value)
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1"):
        client.completions.create(model="sim-model", prompt="x", max_tokens=0)


def test_max_tokens_is_capped_by_the_context(client: openai.OpenAI) -> None:
    response = client.completions.create(model="sim-model", prompt="x" * 4 * 500, max_tokens=100)
    assert response.usage is not None
    assert response.usage.prompt_tokens == 500
    assert response.usage.completion_tokens == 12
    assert response.choices[0].finish_reason == "length"


def test_malformed_requests(sim: SimulatorThread) -> None:
    url = sim.base_url + "/v1/chat/completions"
    status, content_type, body = _get(url, "POST", b"{not json")
    assert status == 400
    assert content_type.startswith("application/json")
    assert json.loads(body)["error"]["type"] == "BadRequestError"
    status, _, body = _get(url, "POST", json.dumps({"messages": []}).encode())
    assert status == 400
    assert json.loads(body)["error"]["param"] == "messages"
    status, _, body = _get(sim.base_url + "/v1/nothing-here")
    assert (status, json.loads(body)) == (404, {"detail": "Not Found"})


def test_health_ping_version_and_metrics(sim: SimulatorThread) -> None:
    assert _get(sim.base_url + "/health")[::2] == (200, b"")
    assert _get(sim.base_url + "/ping")[0] == 200
    assert _get(sim.base_url + "/ping", "POST", b"")[0] == 200
    status, _, body = _get(sim.base_url + "/version")
    assert (status, json.loads(body)) == (200, {"version": "0.33.0"})
    status, content_type, _ = _get(sim.base_url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    samples = scrape(sim)
    labels = {"model_name": "sim-model", "engine": "0"}
    assert 0.0 <= value(samples, "vllm:kv_cache_usage_perc", **labels) <= 1.0
    assert value(samples, "vllm:engine_sleep_state", sleep_state="awake") == 1


def test_api_key() -> None:
    with SimulatorThread(["m", "--api-key", "secret"], FAST) as sim:
        with _client(sim, api_key="wrong") as bad, pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with _client(sim, api_key="secret") as good:
            assert [m.id for m in good.models.list().data] == ["m"]
        assert _get(sim.base_url + "/health")[0] == 200


# --- scheduling, metrics, lifecycle ----------------------------------------------------------


def test_max_num_seqs_bounds_the_batch_and_the_rest_wait() -> None:
    # Each request decodes 12 tokens at 20 tokens/s (~0.6 s); 6 requests, 2 at a time.
    env = {**FAST, "GANTRY_SIM_DECODE_TOKENS_PER_S": "20"}
    argv = ["m", "--max-num-seqs", "2", "--max-model-len", "256"]
    labels = {"model_name": "m", "engine": "0"}
    with SimulatorThread(argv, env) as sim, _client(sim) as client:

        def one(i: int) -> int:
            response = client.completions.create(model="m", prompt=f"prompt {i}", max_tokens=12)
            assert response.usage is not None
            return response.usage.completion_tokens

        observed: list[tuple[float, float, float]] = []

        def saw_waiting() -> bool:
            samples = scrape(sim)
            observed.append(
                (
                    value(samples, "vllm:num_requests_running", **labels),
                    value(samples, "vllm:num_requests_waiting", **labels),
                    value(samples, "vllm:kv_cache_usage_perc", **labels),
                )
            )
            return observed[-1][1] > 0

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(one, i) for i in range(6)]
            poll(saw_waiting, "queued requests")
            assert [f.result(timeout=WAIT) for f in futures] == [12] * 6

        assert all(running <= 2 for running, _, _ in observed)
        assert all(0.0 <= usage <= 1.0 for _, _, usage in observed)
        samples = scrape(sim)
        assert value(samples, "vllm:num_requests_running", **labels) == 0
        assert value(samples, "vllm:num_requests_waiting", **labels) == 0
        assert value(samples, "vllm:kv_cache_usage_perc", **labels) == 0
        assert value(samples, "vllm:request_success_total", finished_reason="length") == 6
        assert value(samples, "vllm:generation_tokens_total") == 72
        assert value(samples, "vllm:e2e_request_latency_seconds_count") == 6
        assert value(samples, "vllm:time_to_first_token_seconds_count") == 6
        assert value(samples, "vllm:inter_token_latency_seconds_count") == 6 * 11
        assert value(samples, "vllm:request_generation_tokens_sum") == 72
        assert value(samples, "vllm:request_queue_time_seconds_count") == 6
        assert value(samples, "vllm:request_queue_time_seconds_sum") > 0
        assert value(samples, "vllm:iteration_tokens_total_count") > 0
        assert value(samples, "vllm:e2e_request_latency_seconds_bucket", le="+Inf") == 6


def test_queue_limit_answers_503() -> None:
    env = {**FAST, "GANTRY_SIM_DECODE_TOKENS_PER_S": "50"}
    with (
        SimulatorThread(["m", "--max-num-queued-reqs", "1"], env) as sim,
        _client(sim) as client,
        client.completions.create(model="m", prompt="a", max_tokens=500, stream=True) as stream,
    ):
        next(iter(stream))
        with pytest.raises(openai.InternalServerError) as excinfo:
            client.completions.create(model="m", prompt="b", max_tokens=1)
        assert excinfo.value.status_code == 503
        labels = {"model_name": "m", "reason": "max_num_queued_reqs"}
        assert value(scrape(sim), "vllm:admission_rejections_total", **labels) == 1


def test_client_disconnect_aborts_the_request() -> None:
    env = {**FAST, "GANTRY_SIM_DECODE_TOKENS_PER_S": "50"}
    with SimulatorThread(["m"], env) as sim, _client(sim) as client:
        stream = client.completions.create(model="m", prompt="a", max_tokens=500, stream=True)
        with stream:
            next(iter(stream))
        poll(
            lambda: value(scrape(sim), "vllm:num_requests_running") == 0,
            "the aborted request to leave the batch",
        )
        assert value(scrape(sim), "vllm:request_success_total", finished_reason="length") == 0


def test_shutdown_drains_in_flight_requests() -> None:
    # The request takes 1.5 s; SIGTERM's drain (--shutdown-timeout 30) lets it finish.
    env = {**FAST, "GANTRY_SIM_DECODE_TOKENS_PER_S": "100"}
    sim = SimulatorThread(["m", "--shutdown-timeout", "30"], env).start()
    with _client(sim) as client, ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            client.completions.create, model="m", prompt="a", max_tokens=150, stream=False
        )
        poll(lambda: value(scrape(sim), "vllm:num_requests_running") == 1, "a running request")
        assert sim.stop() == 0
        response = future.result(timeout=WAIT)
    assert response.usage is not None
    assert response.usage.completion_tokens == 150


def test_does_not_start_when_the_kv_cache_is_too_small() -> None:
    config = parse_config(
        ["m", "--max-model-len", "4096", "--gantry-kv-cache-tokens", "1000", "--port", "0"], {}
    )

    async def run() -> int:
        return await serve(config, asyncio.Event())

    assert asyncio.run(run()) == 1


# --- as a process ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _connects(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start_process(
    port: int, delay: str
) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GANTRY_SIM_")},
        **FAST,
        "GANTRY_SIM_STARTUP_DELAY_S": delay,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "gantry_runtime.simulator", "m", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    delaying = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Simulating engine start-up" in line:
                delaying.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, delaying


def _terminate(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_port_stays_closed_during_the_startup_delay() -> None:
    port = _free_port()
    proc, lines, delaying = _start_process(port, delay="600")
    try:
        assert delaying.wait(WAIT), "".join(lines)
        # The engine is "loading": nothing listens yet (vLLM binds only once it is ready).
        assert not _connects(port)
    finally:
        status = _terminate(proc)
    assert status == 0
    assert not any("Started server" in line for line in lines)


def test_runs_as_a_module_and_exits_cleanly_on_sigterm() -> None:
    port = _free_port()
    proc, lines, _ = _start_process(port, delay="0.2")
    try:
        poll(lambda: _get_health(port) == 200, "the simulator to become healthy")
    finally:
        status = _terminate(proc)
    assert status == 0
    assert any(f"Started server on http://127.0.0.1:{port}" in line for line in lines)


def _get_health(port: int) -> int:
    try:
        return _get(f"http://127.0.0.1:{port}/health")[0]
    except OSError:
        return 0
