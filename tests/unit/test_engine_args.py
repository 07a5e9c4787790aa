"""spec.serving.engineArgs as data: canonical names, known flags, protected flags in every
spelling, values that cannot become a second argument, size caps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gantry_operator import engine_args
from gantry_operator.engine_args import (
    CONSUMED,
    EGRESS,
    MAX_ARGS,
    MAX_VALUE_LENGTH,
    PROTECTED,
    EngineArgError,
    parse_engine_args,
    render,
    table,
)
from gantry_runtime.launchspec import LaunchSpec, vllm_argv


def refused(raw: dict[str, Any]) -> EngineArgError:
    with pytest.raises(EngineArgError) as info:
        parse_engine_args(raw)
    return info.value


def test_the_table_is_the_pinned_vllm() -> None:
    known = table()
    assert known.vllm_version == "0.33.0"
    assert len(known.flags) > 400
    assert known.flags["max-num-seqs"].kind == "value"
    assert known.flags["enable-prefix-caching"].kind == "switch"
    assert known.flags["no-enable-prefix-caching"].kind == "negative"


def test_every_listed_flag_exists() -> None:
    """The protected, egress and consumed lists cannot rot: each names a flag of the table."""
    known = table().flags
    for name in (*PROTECTED, *EGRESS, *CONSUMED):
        assert name in known, name
        assert known[name].canonical == name, name


def test_every_flag_the_launch_spec_sets_is_protected_or_folded() -> None:
    """A flag Gantry itself passes cannot be passed a second time by a tenant."""
    spec = LaunchSpec(
        model="/m",
        served_model_name="m",
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        max_model_len=1024,
        max_num_seqs=1,
        gpu_memory_utilization=0.9,
        shutdown_timeout=1,
        load_format="runai_streamer",
        revision="main",
    )
    ours = {a.removeprefix("--") for a in vllm_argv(spec) if a.startswith("--")}
    folded = {"max-num-seqs", "gpu-memory-utilization", "max-num-batched-tokens", "kv-cache-dtype"}
    harmless = {"disable-uvicorn-access-log"}
    assert ours - set(PROTECTED) - folded - harmless == set()


@pytest.mark.parametrize(
    "key",
    [
        "tensor-parallel-size",
        "tensor_parallel_size",
        "--tensor-parallel-size",
        "--tensor_parallel_size",
        "tensor_parallel-size",
    ],
)
def test_protected_flags_in_every_spelling(key: str) -> None:
    err = refused({key: "4"})
    assert err.field_path == f"spec.serving.engineArgs.{key}"
    assert "protected --tensor-parallel-size" in str(err)
    assert "spec.parallelism.tensor" in str(err)


@pytest.mark.parametrize(
    ("key", "protected"),
    [
        ("no-enable-ssl-refresh", "enable-ssl-refresh"),  # negative form of a protected switch
        ("disable-ssl-refresh", "enable-ssl-refresh"),
        ("data_parallel_size", "data-parallel-size"),
        ("served_model_name", "served-model-name"),
        ("chat-template", "chat-template"),
        ("load_format", "load-format"),
        ("api-key", "api-key"),
        ("port", "port"),
        ("max_model_len", "max-model-len"),
        ("config", "config"),
    ],
)
def test_protected_by_the_setting_not_the_text(key: str, protected: str) -> None:
    assert f"protected --{protected}" in str(refused({key: "x"}))


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("max-num-seq", "max-num-seqs"),
        ("enable-prefix-cache", "enable-prefix-caching"),
        ("tensor-parallel", "tensor-parallel-size"),  # argparse would take the abbreviation
    ],
)
def test_unknown_flags_get_the_nearest_name(key: str, suggestion: str) -> None:
    err = refused({key: "1"})
    assert "is not a flag of vLLM 0.33.0" in str(err)
    assert f"did you mean {suggestion}?" in str(err)


def test_unknown_flag_without_a_close_name() -> None:
    assert "did you mean" not in str(refused({"zzzzzzzz": "1"}))


@pytest.mark.parametrize("key", ["Enforce-Eager", "enforce--eager", "compilation-config.level"])
def test_keys_must_be_flag_names(key: str) -> None:
    assert "is not a vLLM flag name" in str(refused({key: "1"}))


@pytest.mark.parametrize(
    "value",
    [
        "--tensor-parallel-size=4",
        "-tp",
        "1 --port 9",
        "1\n--port",
        "a\tb",
        "x\x00y",
        "x\x1by",
        " 1",
    ],
)
def test_values_cannot_carry_a_second_argument(value: str) -> None:
    err = refused({"seed": value})
    assert err.field_path == "spec.serving.engineArgs.seed"
    assert "second argument" in str(err)


def test_size_caps() -> None:
    assert f"at most {MAX_VALUE_LENGTH}" in str(refused({"seed": "1" * (MAX_VALUE_LENGTH + 1)}))
    parse_engine_args({"seed": "1" * MAX_VALUE_LENGTH})
    too_many = {name: "1" for name in list(table().flags)[: MAX_ARGS + 1]}
    assert f"at most {MAX_ARGS}" in str(refused(too_many))
    assert "at most 64 characters" in str(refused({"a" * 65: "1"}))


def test_canonical_spelling() -> None:
    negative = refused({"no-enable-prefix-caching": "1"})
    assert "write it as enable-prefix-caching with the opposite" in str(negative)
    assert "write gpu-memory-utilization" in str(refused({"device-memory-utilization": "0.8"}))
    err = refused({"max_num_seqs": "8", "max-num-seqs": "8"})
    assert "sets the same flag as" in str(err)
    assert parse_engine_args({"--max_num_seqs": "8"}) == (("max-num-seqs", "8"),)


def test_switches_take_true_or_false_only() -> None:
    assert 'use "true" or "false"' in str(refused({"enforce-eager": "yes"}))
    assert 'use "true" or "false"' in str(refused({"disable-log-stats": "1"}))
    assert parse_engine_args({"enforce-eager": "TRUE", "async-scheduling": False}) == (
        ("async-scheduling", "false"),
        ("enforce-eager", "true"),
    )
    # store_true at its default is dropped rather than rendered as a --no- flag vLLM lacks.
    assert parse_engine_args({"disable-log-stats": "false"}) == ()


def test_choices_are_checked() -> None:
    assert "vLLM's choices" in str(refused({"dtype": "nonsense"}))
    assert "vLLM's choices" in str(refused({"dtype": "None"}))
    assert parse_engine_args({"dtype": "bfloat16"}) == (("dtype", "bfloat16"),)


def test_non_string_values() -> None:
    assert parse_engine_args({"seed": 7, "max-num-seqs": 8}) == (
        ("max-num-seqs", "8"),
        ("seed", "7"),
    )
    assert "must be a string" in str(refused({"seed": ["1"]}))


def test_render() -> None:
    assert render("seed", "7") == ("--seed", "7")
    assert render("enable-prefix-caching", "false") == ("--no-enable-prefix-caching", None)
    assert render("enforce-eager", "true") == ("--enforce-eager", None)
    assert render("disable-log-stats", "true") == ("--disable-log-stats", None)
    assert render("tool-server", "true") == ("--tool-server", "true")


def test_egress() -> None:
    args = parse_engine_args(
        {
            "otlp-traces-endpoint": "http://otel.monitoring.svc:4317",
            "collect-detailed-traces": "all",
            "tool-server": "a.svc:80,b.svc:81",
            "seed": "1",
        }
    )
    assert engine_args.egress(args) == {
        "collect-detailed-traces": (),
        "otlp-traces-endpoint": ("http://otel.monitoring.svc:4317",),
        "tool-server": ("a.svc:80", "b.svc:81"),
    }


def test_the_security_doc_lists_every_protected_and_egress_flag() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    missing = [name for name in (*PROTECTED, *EGRESS) if f"`{name}`" not in doc]
    assert missing == [], "add them to docs/security.md"
