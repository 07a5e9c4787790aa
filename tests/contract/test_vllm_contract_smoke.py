"""Smoke test of the vLLM contract harness: hand-built gpt-oss launch specs against vLLM 0.33.0.

Every command line ``vllm_argv`` builds here must pass vLLM's own parser, its serve-argument
validation and its engine config (with the model's real config.json); and the harness must be
able to fail: an unknown flag and TP=3 are rejected with vLLM's own messages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gantry_runtime.launchspec import LaunchSpec, vllm_argv
from tests.contract.vllm_env import VllmCase, VllmCheck, VllmResult

pytestmark = pytest.mark.contract

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"


def gpt_oss(name: str, tp: int, **overrides: object) -> LaunchSpec:
    spec = LaunchSpec(
        model=f"/models/{name}",
        served_model_name=name,
        tensor_parallel_size=tp,
        pipeline_parallel_size=1,
        max_model_len=131072,
        max_num_seqs=64,
        gpu_memory_utilization=0.9,
        shutdown_timeout=30,
        tool_call_parser="openai",
        reasoning_parser="openai_gptoss",
        max_num_batched_tokens=8192,
    )
    return dataclasses.replace(spec, **overrides)  # type: ignore[arg-type]


def case(case_id: str, spec: LaunchSpec, model: str) -> VllmCase:
    return {
        "id": case_id,
        "argv": vllm_argv(spec)[2:],
        "config_dir": str(MODELS / model),
        "engine": True,
    }


GOOD = {
    **{
        f"gpt-oss-120b/tp{tp}": ("gpt-oss-120b", gpt_oss("gpt-oss-120b", tp)) for tp in (1, 2, 4, 8)
    },
    "gpt-oss-120b/tp4-pp2-fp8kv": (
        "gpt-oss-120b",
        gpt_oss("gpt-oss-120b", 4, pipeline_parallel_size=2, kv_cache_dtype="fp8"),
    ),
    "gpt-oss-20b/tp1": ("gpt-oss-20b", gpt_oss("gpt-oss-20b", 1, max_num_seqs=128)),
}
BAD = {
    "unknown-flag": (
        "gpt-oss-20b",
        gpt_oss("gpt-oss-20b", 1, extra_args=(("--no-such-flag", "1"),)),
    ),
    "tp3": ("gpt-oss-120b", gpt_oss("gpt-oss-120b", 3)),
}


@pytest.fixture(scope="module")
def results(vllm_check: VllmCheck) -> dict[str, VllmResult]:
    cases = [case(case_id, spec, model) for case_id, (model, spec) in {**GOOD, **BAD}.items()]
    return vllm_check(cases)


@pytest.mark.parametrize("case_id", sorted(GOOD))
def test_gpt_oss_command_lines_are_accepted(results: dict[str, VllmResult], case_id: str) -> None:
    result = results[case_id]
    assert result["ok"], f"{result['stage']}: {result['error']}"
    _, spec = GOOD[case_id]
    args = result["args"]
    assert args is not None
    assert args["model"] == spec.model
    assert args["served_model_name"] == [spec.served_model_name]
    assert args["shutdown_timeout"] == spec.shutdown_timeout
    engine = result["engine"]
    assert engine is not None
    assert engine["architecture"] == "GptOssForCausalLM"
    assert engine["max_model_len"] == 131072
    assert engine["tensor_parallel_size"] == spec.tensor_parallel_size
    assert engine["pipeline_parallel_size"] == spec.pipeline_parallel_size
    assert "mxfp4" in str(engine["quantization"])
    assert engine["max_num_seqs"] == spec.max_num_seqs
    assert engine["max_num_batched_tokens"] == spec.max_num_batched_tokens
    assert engine["gpu_memory_utilization"] == spec.gpu_memory_utilization
    assert engine["kv_cache_dtype"] == spec.kv_cache_dtype


def test_an_unknown_flag_is_rejected_by_vllms_parser(
    results: dict[str, VllmResult],
) -> None:
    result = results["unknown-flag"]
    assert not result["ok"]
    assert result["stage"] == "parse"
    assert result["exit_code"] == 2
    assert result["error"] == "vllm: error: unrecognized arguments: --no-such-flag 1"


def test_tp3_is_rejected_by_the_engine_config(results: dict[str, VllmResult]) -> None:
    result = results["tp3"]
    assert not result["ok"]
    assert result["stage"] == "engine"
    assert (
        "Total number of attention heads (64) must be divisible by tensor parallel size (3)"
        in str(result["error"])
    )
