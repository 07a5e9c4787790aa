"""The simulator's ``vllm:*`` metrics match the pinned vLLM package's, so the two cannot drift.

The vLLM side instantiates vLLM's own ``PrometheusStatLogger`` (the class that registers every
engine metric ``vllm serve`` exposes) with a real ``VllmConfig`` built on vLLM's CPU platform for
a tiny model config, in the pinned vLLM virtualenv, calls ``log_engine_initialized()`` as the API
server does (that adds ``vllm:cache_config_info``), and dumps each registered ``vllm:*``
collector: name, type, label names, label children and histogram buckets. The simulator side is
a scrape of a running simulator's ``/metrics``, parsed with prometheus-client's parser. Both use
served model name ``sim`` and max-model-len 2048, so token-count buckets and label values line
up.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gantry_runtime.simulator.testing import SimulatorThread
from gantry_runtime.versions import VLLM_VERSION

pytestmark = pytest.mark.contract

MODEL_NAME = "sim"
MAX_MODEL_LEN = 2048

#: The families the project relies on (docs, autoscaler, dashboards): both sides must have them.
CORE = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram",
    "vllm:request_decode_time_seconds": "histogram",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
}

#: vLLM families the simulator deliberately does not expose (none today).
NOT_SIMULATED: set[str] = set()

#: Info gauges whose label values describe the engine (block counts known only after start-up):
#: their label names must match, their values may not.
VALUES_DIFFER = {"vllm:cache_config_info"}

# Runs in the vLLM virtualenv: standard library, vLLM and its prometheus_client only.
DUMP_SCRIPT = r"""
import json, os, sys
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from prometheus_client import REGISTRY
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.metrics.loggers import PrometheusStatLogger

model_dir, model_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
config = AsyncEngineArgs(
    model=model_dir, served_model_name=[model_name], skip_tokenizer_init=True
).create_engine_config()
# As the API server does once the engine is up: this adds vllm:cache_config_info.
PrometheusStatLogger(config, [0]).log_engine_initialized()
families = {}
for collector in list(REGISTRY._collector_to_names):
    name = getattr(collector, "_name", "")
    if not name.startswith("vllm:"):
        continue
    labelnames = list(collector._labelnames)
    children = [dict(zip(labelnames, values)) for values in collector._metrics]
    if not labelnames:
        children = [{}]
    buckets = None
    if collector._type == "histogram":
        buckets = [float(b) for b in collector._upper_bounds if b != float("inf")]
    families[name] = {
        "type": collector._type,
        "labels": sorted(labelnames),
        "children": sorted(json.dumps(c, sort_keys=True) for c in children),
        "buckets": buckets,
    }
with open(out, "w") as f:
    json.dump(families, f)
"""

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 1024,
    "max_position_embeddings": MAX_MODEL_LEN,
    "rms_norm_eps": 1e-6,
    "torch_dtype": "bfloat16",
}


@dataclass(frozen=True)
class Family:
    type: str
    labels: tuple[str, ...]
    children: frozenset[str]
    buckets: tuple[float, ...] | None


def _family(data: dict[str, Any]) -> Family:
    buckets = data["buckets"]
    return Family(
        type=data["type"],
        labels=tuple(data["labels"]),
        children=frozenset(data["children"]),
        buckets=None if buckets is None else tuple(buckets),
    )


@pytest.fixture(scope="module")
def vllm_families(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Family]:
    python = vllm_python
    work = tmp_path_factory.mktemp("vllm-metrics")
    model = work / "tiny-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_CONFIG))
    out = work / "families.json"
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    env.update({"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run(
        [str(python), "-c", DUMP_SCRIPT, str(model), MODEL_NAME, str(out)],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-2000:]
    data: dict[str, dict[str, Any]] = json.loads(out.read_text())
    return {name: _family(value) for name, value in data.items()}


@pytest.fixture(scope="module")
def simulator_families() -> dict[str, Family]:
    argv = ["tiny-model", "--served-model-name", MODEL_NAME, "--max-model-len", str(MAX_MODEL_LEN)]
    with (
        SimulatorThread(argv, {}) as sim,
        urllib.request.urlopen(sim.base_url + "/metrics", timeout=30) as response,
    ):
        text = response.read().decode()
    parsed = list(text_string_to_metric_families(text))
    names = {f.name for f in parsed}
    families: dict[str, Family] = {}
    for family in parsed:
        if not family.name.startswith("vllm:"):
            continue
        if family.name.endswith("_created") and family.name.removesuffix("_created") in names:
            continue  # prometheus-client's creation timestamps of a counter or histogram
        labels: set[str] = set()
        children: set[str] = set()
        buckets: list[float] = []
        for sample in family.samples:
            child = {k: v for k, v in sample.labels.items() if k != "le"}
            labels.update(child)
            children.add(json.dumps(child, sort_keys=True))
            if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf":
                bound = float(sample.labels["le"])
                if bound not in buckets:
                    buckets.append(bound)
        families[family.name] = Family(
            type=family.type,
            labels=tuple(sorted(labels)),
            children=frozenset(children),
            buckets=tuple(sorted(buckets)) if family.type == "histogram" else None,
        )
    return families


def test_vllm_still_has_the_core_metrics(vllm_families: dict[str, Family]) -> None:
    found = {name: family.type for name, family in vllm_families.items() if name in CORE}
    assert found == CORE, f"vLLM {VLLM_VERSION} changed metrics the project relies on"


def test_simulator_metrics_are_vllm_metrics(
    vllm_families: dict[str, Family], simulator_families: dict[str, Family]
) -> None:
    unknown = sorted(set(simulator_families) - set(vllm_families))
    assert not unknown, f"the simulator exposes families vLLM does not define: {unknown}"
    for name, ours in sorted(simulator_families.items()):
        theirs = vllm_families[name]
        assert ours.type == theirs.type, name
        assert ours.labels == theirs.labels, name
        if name not in VALUES_DIFFER:
            assert ours.children == theirs.children, name
        assert ours.buckets == theirs.buckets, name


def test_simulator_covers_every_vllm_metric(
    vllm_families: dict[str, Family], simulator_families: dict[str, Family]
) -> None:
    missing = sorted(set(vllm_families) - set(simulator_families) - NOT_SIMULATED)
    assert not missing, f"vLLM {VLLM_VERSION} exposes families the simulator lacks: {missing}"
    assert set(CORE) <= set(simulator_families)
