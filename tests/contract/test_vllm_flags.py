"""The committed vLLM flag table (catalog/vllm_flags.json) is what the pinned vLLM's own parser
says, and the engine args Gantry lets through are what that parser accepts.

Runs ``hack/vllm_flags.py`` in the pinned vLLM virtualenv and compares its output with the
committed file byte for byte; then feeds checked engine args through vLLM's parser.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gantry_operator import engine_args
from gantry_operator.engine_args import parse_engine_args, render
from gantry_runtime.launchspec import LaunchSpec, vllm_argv
from tests.contract.vllm_env import CHECK_ENV, VllmCase, VllmCheck

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "operator" / "gantry_operator" / "catalog" / "vllm_flags.json"


def test_the_committed_flag_table_is_generated_from_the_pinned_parser(vllm_python: Path) -> None:
    proc = subprocess.run(
        [str(vllm_python), "-m", "hack.vllm_flags", "--print"],
        cwd=ROOT,
        env={**os.environ, **CHECK_ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout == TABLE.read_text(), (
        "catalog/vllm_flags.json is stale: regenerate it with "
        "`~/.cache/gantry/vllm-0.33.0/bin/python -m hack.vllm_flags`"
    )
    assert json.loads(proc.stdout)["vllm_version"] == engine_args.table().vllm_version


def _argv(pairs: tuple[tuple[str, str], ...]) -> list[str]:
    spec = LaunchSpec(
        model="/models/m",
        served_model_name="m",
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        max_model_len=4096,
        max_num_seqs=8,
        gpu_memory_utilization=0.9,
        shutdown_timeout=30,
        extra_args=tuple(render(flag, value) for flag, value in pairs),
    )
    return vllm_argv(spec)[2:]


#: Engine args a tenant may write, one of each kind; vLLM's parser must accept what they become.
ACCEPTED = {
    "switches": {"enable-prefix-caching": "false", "enforce-eager": "true"},
    "store-true": {"disable-log-stats": "true"},
    "values": {"seed": "7", "dtype": "bfloat16", "max-num-batched-tokens": "4096"},
    "json": {"compilation-config": '{"cudagraph_mode":"FULL_DECODE_ONLY"}'},
    "underscores": {"enable_chunked_prefill": "true", "--block_size": "32"},
}


def test_checked_engine_args_parse_in_vllm(vllm_check: VllmCheck) -> None:
    cases: list[VllmCase] = [
        {"id": name, "argv": _argv(parse_engine_args(raw)), "config_dir": None, "engine": False}
        for name, raw in ACCEPTED.items()
    ]
    results = vllm_check(cases)
    for name, result in results.items():
        assert result["ok"], f"{name}: {result['stage']}: {result['error']}"
    args = results["switches"]["args"]
    assert args is not None
    assert args["enable_prefix_caching"] is False
    assert args["enforce_eager"] is True
