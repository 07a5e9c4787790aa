"""The simulator's argv/env parsing and its scheduler, stepped by hand (no clock, no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gantry_runtime.simulator.config import (
    ConfigError,
    SimConfig,
    human_readable_int,
    kv_capacity_error,
    parse_config,
)
from gantry_runtime.simulator.engine import Engine, RequestGroup, SimRequest, State
from gantry_runtime.simulator.metrics import SimMetrics, request_tokens_buckets
from gantry_runtime.simulator.tokens import (
    FillerText,
    block_hashes,
    count_text_tokens,
    render_chat,
)

ROOT = Path(__file__).resolve().parents[2]
GPT_OSS_20B = ROOT / "tests" / "data" / "models" / "gpt-oss-20b"

# --- argv and environment ------------------------------------------------------------------


def test_parses_a_typical_vllm_serve_argv_and_ignores_unknown_flags() -> None:
    argv = [
        "openai/gpt-oss-120b",
        "--served-model-name", "gpt-oss-120b", "gpt-oss",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--tensor-parallel-size", "2",
        "--pipeline-parallel-size", "1",
        "--max-model-len", "128K",
        "--max-num-seqs", "64",
        "--gpu-memory-utilization", "0.90",
        "--max-num-batched-tokens", "8k",
        "--kv-cache-dtype", "fp8",
        "--shutdown-timeout", "30",
        "--tool-call-parser", "openai",
        "--enable-auto-tool-choice",
        "--reasoning-parser", "openai_gptoss",
        "--no-enable-prefix-caching",
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    config = parse_config(argv, {})
    assert config.model == "openai/gpt-oss-120b"
    assert config.served_model_names == ("gpt-oss-120b", "gpt-oss")
    assert config.model_name == "gpt-oss-120b"
    assert (config.host, config.port) == ("0.0.0.0", 8000)
    assert config.max_model_len == 131072
    assert config.max_num_batched_tokens == 8000
    assert config.max_num_seqs == 64
    assert config.tensor_parallel_size == 2
    assert config.kv_cache_dtype == "fp8"
    assert config.shutdown_timeout == 30
    assert config.enable_prefix_caching is False
    # The parsers are read (the real server registers metrics for them), other flags ignored.
    assert config.tool_call_parser == "openai"
    assert "--tool-call-parser" not in config.ignored_args
    assert "--enable-auto-tool-choice" in config.ignored_args


def test_model_from_flag_underscores_and_defaults() -> None:
    config = parse_config(["serve", "--model=m", "--max_num_seqs", "3", "--port=9"], {})
    assert config.model == "m"
    assert config.served_model_names == ("m",)
    assert config.max_num_seqs == 3
    assert config.port == 9
    assert config.host is None
    assert config.enable_prefix_caching is True
    assert parse_config([], {}).model == "Qwen/Qwen3-0.6B"


def test_max_model_len_comes_from_a_local_config_json() -> None:
    assert parse_config([str(GPT_OSS_20B)], {}).max_model_len == 131072
    assert parse_config(["no/such/model"], {}).max_model_len == 8192


def test_config_file_is_read_like_vllm(tmp_path: Path) -> None:
    # `--config` holds flags as YAML keys; the command line wins over the file.
    path = tmp_path / "vllm.yaml"
    path.write_text("max-model-len: 4096\nmax_num_seqs: 8\nenable-prefix-caching: false\n")
    config = parse_config(["m", "--config", str(path), "--max-num-seqs", "5"], {})
    assert config.max_model_len == 4096
    assert config.max_num_seqs == 5
    assert config.enable_prefix_caching is False


def test_environment_knobs() -> None:
    env = {
        "GANTRY_SIM_STARTUP_DELAY_S": "2.5",
        "GANTRY_SIM_KV_CACHE_TOKENS": "64k",
        "GANTRY_SIM_PREFILL_TOKENS_PER_S": "5000",
        "GANTRY_SIM_DECODE_TOKENS_PER_S": "50",
        "GANTRY_SIM_BATCH_PENALTY": "0.01",
        "GANTRY_SIM_OUTPUT_TOKENS": "32",
        "GANTRY_SIM_SEED": "7",
    }
    config = parse_config(["m", "--max-model-len", "4096"], env)
    knobs = config.knobs
    assert knobs.startup_delay == 2.5
    assert config.kv_cache_tokens == 64000
    assert (knobs.prefill_rate, knobs.decode_rate, knobs.batch_penalty) == (5000, 50, 0.01)
    assert (knobs.output_tokens, knobs.seed) == (32, 7)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GANTRY_SIM_DECODE_TOKENS_PER_S", "0"),
        ("GANTRY_SIM_PREFILL_TOKENS_PER_S", "fast"),
        ("GANTRY_SIM_STARTUP_DELAY_S", "-1"),
        ("GANTRY_SIM_OUTPUT_TOKENS", "0"),
        ("GANTRY_SIM_KV_CACHE_TOKENS", "1.5"),
    ],
)
def test_bad_environment_knobs_are_rejected(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        parse_config(["m"], {name: value})


def test_malformed_flags_exit_like_argparse() -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_config(["m", "--max-num-seqs", "many"], {})
    assert excinfo.value.code == 2
    with pytest.raises(ConfigError, match="max-num-seqs"):
        parse_config(["m", "--max-num-seqs", "-3"], {})


def test_kv_cache_capacity_precedence() -> None:
    base = ["m", "--max-model-len", "4096", "--max-num-seqs", "8"]
    assert parse_config(base, {}).kv_cache_tokens == 8 * 2048
    assert parse_config([*base, "--num-gpu-blocks-override", "1000"], {}).kv_cache_tokens == 16000
    env = {"GANTRY_SIM_KV_CACHE_TOKENS": "5000"}
    assert parse_config([*base, "--num-gpu-blocks-override", "1000"], env).kv_cache_tokens == 5000
    flag = [*base, "--gantry-kv-cache-tokens", "6000"]
    assert parse_config(flag, env).kv_cache_tokens == 6000


def test_engine_refuses_to_start_when_one_sequence_does_not_fit() -> None:
    small = parse_config(["m", "--max-model-len", "4096", "--gantry-kv-cache-tokens", "4000"], {})
    problem = kv_capacity_error(small)
    assert problem is not None
    assert "max seq len (4096)" in problem
    auto = parse_config(["m", "--max-model-len", "auto", "--gantry-kv-cache-tokens", "4010"], {})
    assert auto.max_model_len == 4000  # fitted to whole 16-token blocks, like vLLM
    assert kv_capacity_error(auto) is None


def test_human_readable_int() -> None:
    assert human_readable_int("25.6k") == 25600
    assert human_readable_int("1K") == 1024
    assert human_readable_int("2M") == 2 * 1024 * 1024
    assert human_readable_int("77") == 77


# --- tokens ----------------------------------------------------------------------------------


def test_token_approximation_and_filler() -> None:
    assert count_text_tokens("") == 0
    assert count_text_tokens("abcd") == 1
    assert count_text_tokens("abcde") == 2
    _, tokens = render_chat([{"role": "user", "content": "abcdefgh"}])
    assert tokens == 3 + 4 + 2
    _, parts = render_chat([{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]}])
    assert parts == tokens
    filler = FillerText(seed=0)
    text = filler.tokens(0, 10)
    assert len(text.split(" ")) == 10
    assert filler.tokens(0, 4) + filler.tokens(4, 10) == text
    assert FillerText(seed=0).tokens(0, 10) == text
    assert count_text_tokens(filler.tokens(1, 101)) == 100


def test_block_hashes_share_a_common_prefix() -> None:
    a = block_hashes("x" * 64 + "a" * 64, 32, 16)
    b = block_hashes("x" * 64 + "b" * 64, 32, 16)
    assert len(a) == 2
    assert a[0] == b[0]
    assert a[1] != b[1]


def test_request_token_buckets_match_vllm_series() -> None:
    assert request_tokens_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert request_tokens_buckets(2048)[-1] == 2000


# --- the scheduler ---------------------------------------------------------------------------


def _config(*argv: str, **env: str) -> SimConfig:
    return parse_config(["m", *argv], {f"GANTRY_SIM_{k.upper()}": v for k, v in env.items()})


def _request(rid: str, prompt: int, target: int, hashes: tuple[int, ...] = ()) -> SimRequest:
    return SimRequest(
        request_id=rid,
        prompt_tokens=prompt,
        target_tokens=target,
        target_reason="length",
        max_tokens_param=target,
        block_hashes=hashes,
        stream=True,
        notify=asyncio.Event(),
        arrival=0.0,
        group=RequestGroup(n_param=1),
    )


def _run_steps(engine: Engine, max_steps: int = 10_000) -> list[tuple[int, int, float]]:
    """Step until idle; return (running, waiting, kv usage) after every step."""
    trace: list[tuple[int, int, float]] = []
    clock = 0.0
    for _ in range(max_steps):
        if not engine.running and not engine.waiting:
            return trace
        scheduled, prefill = engine.schedule(clock)
        assert scheduled, "the engine made no progress"
        clock += engine.step_duration(len(scheduled), prefill)
        engine.complete(scheduled, clock, prefill)
        used = engine.total_blocks - engine.free_blocks
        trace.append((len(engine.running), len(engine.waiting), used / engine.total_blocks))
    raise AssertionError("the engine did not finish")


def _engine(config: SimConfig) -> Engine:
    return Engine(config, SimMetrics(config), clock=lambda: 0.0)


def _sample(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        name, {"model_name": "m", "engine": "0", **labels}
    )
    assert value is not None, name
    return value


def test_cost_model() -> None:
    engine = _engine(_config(prefill_tokens_per_s="1000", decode_tokens_per_s="10"))
    assert engine.step_duration(1, 0) == pytest.approx(0.1)
    assert engine.step_duration(1, 500) == pytest.approx(0.6)
    assert engine.step_duration(101, 0) == pytest.approx(0.1 * (1 + 0.005 * 100))
    assert engine.step_duration(0, 0) == 0.0


def test_at_most_max_num_seqs_run_and_the_queue_is_fifo() -> None:
    engine = _engine(_config("--max-num-seqs", "3", "--no-enable-prefix-caching"))
    requests = [_request(f"r{i}", prompt=10, target=5 + i) for i in range(8)]
    engine.add(requests)
    admitted: list[str] = []
    clock = 0.0
    while engine.running or engine.waiting:
        scheduled, prefill = engine.schedule(clock)
        admitted += [r.request_id for r in scheduled if r.request_id not in admitted]
        assert len(engine.running) <= 3
        clock += engine.step_duration(len(scheduled), prefill)
        engine.complete(scheduled, clock, prefill)
    assert admitted == [f"r{i}" for i in range(8)]
    assert all(r.finished and r.generated == r.target_tokens for r in requests)
    assert _sample(engine, "vllm:request_success_total", finished_reason="length") == 8
    assert _sample(engine, "vllm:generation_tokens_total") == sum(5 + i for i in range(8))
    assert _sample(engine, "vllm:prompt_tokens_total") == 80
    assert _sample(engine, "vllm:time_to_first_token_seconds_count") == 8
    # Every token after the first is one inter-token latency observation.
    assert _sample(engine, "vllm:inter_token_latency_seconds_count") == sum(4 + i for i in range(8))
    assert _sample(engine, "vllm:request_queue_time_seconds_count") == 8
    assert _sample(engine, "vllm:request_queue_time_seconds_sum") > 0
    assert _sample(engine, "vllm:num_requests_running") == 0
    assert _sample(engine, "vllm:kv_cache_usage_perc") == 0


def test_chunked_prefill_respects_the_token_budget() -> None:
    engine = _engine(_config("--max-num-batched-tokens", "100", "--no-enable-prefix-caching"))
    long, short = _request("long", prompt=250, target=2), _request("short", prompt=30, target=2)
    engine.add([long, short])
    scheduled, prefill = engine.schedule(0.0)
    assert [(r.request_id, r.step_tokens) for r in scheduled] == [("long", 100)]
    engine.complete(scheduled, 1.0, prefill)
    assert long.generated == 0
    scheduled, prefill = engine.schedule(1.0)
    assert [(r.request_id, r.step_tokens) for r in scheduled] == [("long", 100)]
    engine.complete(scheduled, 2.0, prefill)
    scheduled, prefill = engine.schedule(2.0)
    assert [(r.request_id, r.step_tokens) for r in scheduled] == [("long", 50), ("short", 30)]
    engine.complete(scheduled, 3.0, prefill)
    assert (long.generated, short.generated) == (1, 1)
    assert long.first_token_ts == 3.0


def test_kv_cache_pressure_waits_then_preempts_and_everything_finishes() -> None:
    # 8 blocks of 16 tokens; each request ends at 40 + 60 = 100 tokens (7 blocks).
    engine = _engine(
        _config(
            "--max-model-len", "128", "--gantry-kv-cache-tokens", "128", "--max-num-seqs", "8",
            "--no-enable-prefix-caching",
        )
    )  # fmt: skip
    requests = [_request(f"r{i}", prompt=40, target=60) for i in range(4)]
    engine.add(requests)
    trace = _run_steps(engine)
    assert all(0.0 <= usage <= 1.0 for _, _, usage in trace)
    assert max(usage for _, _, usage in trace) > 0.8
    # Only two 40-token prompts (3 blocks each) fit at once: the others waited for blocks.
    assert max(running for running, _, _ in trace) <= 2
    assert any(waiting > 0 for _, waiting, _ in trace)
    assert all(r.finished and r.generated == 60 for r in requests)
    preemptions = sum(r.preemptions for r in requests)
    assert preemptions > 0
    assert _sample(engine, "vllm:num_preemptions_total") == preemptions
    assert _sample(engine, "vllm:request_num_preemptions_sum") == preemptions
    assert engine.free_blocks == engine.total_blocks


def test_prefix_cache_hits_for_a_repeated_prompt() -> None:
    engine = _engine(_config())
    text = "You are a helpful assistant. " * 20
    tokens = count_text_tokens(text)
    hashes = block_hashes(text, tokens, 16)
    first = _request("first", tokens, 4, hashes)
    engine.add([first])
    _run_steps(engine)
    second = _request("second", tokens, 4, hashes)
    engine.add([second])
    _run_steps(engine)
    assert second.cached_tokens == len(hashes) * 16 > 0
    assert _sample(engine, "vllm:prefix_cache_queries_total") == 2 * tokens
    assert _sample(engine, "vllm:prefix_cache_hits_total") == second.cached_tokens
    assert _sample(engine, "vllm:prompt_tokens_cached_total") == second.cached_tokens
    assert (
        _sample(engine, "vllm:prompt_tokens_by_source_total", source="local_compute")
        == 2 * tokens - second.cached_tokens
    )


def test_abort_frees_blocks_and_records_no_success() -> None:
    engine = _engine(_config("--max-num-seqs", "1"))
    running, queued = _request("a", 20, 50), _request("b", 20, 50)
    engine.add([running, queued])
    scheduled, prefill = engine.schedule(0.0)
    engine.complete(scheduled, 0.1, prefill)
    engine.abort(running)
    engine.abort(queued)
    assert running.state is State.DONE
    assert running.finish_reason == "abort"
    assert engine.free_blocks == engine.total_blocks
    assert not engine.running
    assert not engine.waiting
    assert _sample(engine, "vllm:request_success_total", finished_reason="abort") == 0


def test_queue_limits_reject_like_vllm() -> None:
    engine = _engine(_config("--max-num-queued-reqs", "2"))
    engine.check_admission(2)
    engine.add([_request("a", 10, 5), _request("b", 10, 5)])
    with pytest.raises(Exception, match="currently busy"):
        engine.check_admission(1)
    labels = {"model_name": "m", "reason": "max_num_queued_reqs"}
    rejected = engine.metrics.registry.get_sample_value("vllm:admission_rejections_total", labels)
    assert rejected == 1
