"""Command line and environment of the simulator.

The simulator takes the argv of ``vllm serve`` (everything after ``vllm serve``). It parses the
flags it uses with vLLM's names and types and ignores every other flag, so a pod spec written
for vLLM runs unchanged. Its own knobs come from ``GANTRY_SIM_*`` environment variables (see
``docs/simulator.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

#: vLLM's default model when none is named.
DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
#: Used when neither ``--max-model-len`` nor a local ``config.json`` gives the context length.
FALLBACK_MAX_MODEL_LEN = 8192
#: vLLM's defaults for the OpenAI server on GPUs below 70 GiB.
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
DEFAULT_BLOCK_SIZE = 16
#: Default KV-cache capacity: this many tokens per sequence slot (at least max-model-len).
DEFAULT_KV_TOKENS_PER_SEQ = 2048

ENV_PREFIX = "GANTRY_SIM_"


class ConfigError(ValueError):
    """A flag or environment variable the simulator cannot use."""


@dataclass(frozen=True)
class SimKnobs:
    """The simulator's own knobs (``GANTRY_SIM_*``); all rates are per second."""

    startup_delay: float = 0.0
    kv_cache_tokens: int | None = None
    prefill_rate: float = 10000.0
    decode_rate: float = 100.0
    batch_penalty: float = 0.005
    output_tokens: int = 256
    seed: int = 0


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator needs, parsed once from argv and the environment."""

    model: str
    served_model_names: tuple[str, ...]
    host: str | None
    port: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    kv_cache_tokens: int
    enable_prefix_caching: bool
    stream_interval: int
    max_num_queued_reqs: int | None
    max_num_queued_tokens: int | None
    api_keys: tuple[str, ...]
    shutdown_timeout: float
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    knobs: SimKnobs
    ignored_args: tuple[str, ...] = ()
    #: vLLM reports ``completion_tokens_details.reasoning_tokens`` in chat usage only when a
    #: reasoning parser is set (the simulator never reasons: always 0).
    reasoning_parser: str | None = None
    #: With a tool parser vLLM registers ``vllm:tool_call_parser_invocations``.
    tool_call_parser: str | None = None
    #: ``--headless``: a multi-node worker; no API server, up until SIGTERM.
    headless: bool = False
    #: The port a multi-node leader also listens on, standing in for torch.distributed's store
    #: (``--master-port`` with ``--nnodes`` > 1) or the data-parallel handshake
    #: (``--data-parallel-rpc-port`` when ranks live on other nodes); None on one node.
    group_port: int | None = None

    @property
    def model_name(self) -> str:
        """The name in metric labels and responses when a request names no model."""
        return self.served_model_names[0]

    @property
    def num_kv_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size


def human_readable_int(value: str) -> int:
    """Parse ``25.6k`` (decimal) or ``128K`` (binary) like vLLM's argument parser."""
    value = value.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if match is None:
        return int(value)
    number, suffix = match.groups()
    if suffix.islower():
        decimal: int = 1000 ** ("kmgt".index(suffix) + 1)
        return int(float(number) * decimal)
    if "." in number:
        raise argparse.ArgumentTypeError(
            f"Decimals are not allowed with binary suffixes like {suffix}. "
            f"Did you mean to use {number}{suffix.lower()} instead?"
        )
    binary: int = 1024 ** ("KMGT".index(suffix) + 1)
    return int(number) * binary


def human_readable_int_or_auto(value: str) -> int:
    if value.strip() == "-1" or value.strip().lower() == "auto":
        return -1
    return human_readable_int(value)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gantry-simulator",
        description="A vLLM-compatible simulator (no GPU); accepts the argv of `vllm serve` "
        "and ignores the flags it does not use.",
        epilog="Knobs (environment): GANTRY_SIM_STARTUP_DELAY_S, GANTRY_SIM_KV_CACHE_TOKENS, "
        "GANTRY_SIM_PREFILL_TOKENS_PER_S, GANTRY_SIM_DECODE_TOKENS_PER_S, "
        "GANTRY_SIM_BATCH_PENALTY, GANTRY_SIM_OUTPUT_TOKENS, GANTRY_SIM_SEED. "
        "See docs/simulator.md.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--model", default=None)
    add("--served-model-name", nargs="+", default=None)
    add("--host", default=None)
    add("--port", type=int, default=8000)
    add("--max-model-len", type=human_readable_int_or_auto, default=None)
    add("--max-num-seqs", type=int, default=None)
    add("--max-num-batched-tokens", type=human_readable_int, default=None)
    add("--block-size", type=int, default=None)
    add("--num-gpu-blocks-override", type=int, default=None)
    add("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    add("--stream-interval", type=int, default=1)
    add("--max-num-queued-reqs", type=int, default=None)
    add("--max-num-queued-tokens", type=int, default=None)
    add("--api-key", nargs="+", default=None)
    add("--shutdown-timeout", type=float, default=0.0)
    add("--tensor-parallel-size", "-tp", type=int, default=1)
    add("--pipeline-parallel-size", "-pp", type=int, default=1)
    add("--gpu-memory-utilization", type=float, default=0.92)
    add("--kv-cache-dtype", default="auto")
    add("--reasoning-parser", default=None)
    add("--tool-call-parser", default=None)
    add("--config", default=None)
    add("--gantry-kv-cache-tokens", type=human_readable_int, default=None)
    # Multi-node (vLLM's names and defaults: ParallelConfig.master_port, data_parallel_rpc_port).
    add("--headless", action="store_true")
    add("--nnodes", "-n", type=int, default=1)
    add("--master-port", type=int, default=29501)
    add("--data-parallel-size", "-dp", type=int, default=1)
    add("--data-parallel-size-local", "-dpl", type=int, default=None)
    add("--data-parallel-rpc-port", "-dpp", type=int, default=29550)
    return parser


def _normalize_flag(arg: str) -> str:
    """``--max_model_len=8`` -> ``--max-model-len=8`` (vLLM accepts both spellings)."""
    if not arg.startswith("--"):
        return arg
    key, sep, value = arg.partition("=")
    return key.replace("_", "-") + sep + value


def _config_file_args(path: str) -> list[str]:
    """Turn a ``--config`` YAML file into flags, the way vLLM reads it."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Could not read --config {path}: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, Mapping):
        raise ConfigError(f"--config {path} must hold a mapping of flag names to values")
    args: list[str] = []
    for key, value in data.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + flag[2:])
        elif isinstance(value, list):
            args += [flag, *(str(item) for item in value)]
        else:
            args += [flag, str(value)]
    return args


def _split_model_tag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take the positional model (``vllm serve [model_tag] [options]``) off the front of argv.

    Only a leading positional counts: the simulator does not know which of vLLM's many flags take
    a value, so a bare word later on belongs to the flag before it.
    """
    if argv and argv[0] == "serve":
        argv = argv[1:]
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, argv


def _env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from exc
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} must be a finite number >= {minimum}")
    return value


def _env_int(env: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = human_readable_int(raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} must be >= {minimum}")
    return value


def knobs_from_env(env: Mapping[str, str]) -> SimKnobs:
    """Read the ``GANTRY_SIM_*`` variables (unset or empty means the default)."""
    defaults = SimKnobs()
    prefill_rate = _env_float(env, "PREFILL_TOKENS_PER_S", defaults.prefill_rate, minimum=0.0)
    decode_rate = _env_float(env, "DECODE_TOKENS_PER_S", defaults.decode_rate, minimum=0.0)
    if prefill_rate <= 0 or decode_rate <= 0:
        raise ConfigError(
            f"{ENV_PREFIX}PREFILL_TOKENS_PER_S and {ENV_PREFIX}DECODE_TOKENS_PER_S must be > 0"
        )
    output_tokens = _env_int(env, "OUTPUT_TOKENS", minimum=1)
    seed = _env_int(env, "SEED", minimum=0)
    return SimKnobs(
        startup_delay=_env_float(env, "STARTUP_DELAY_S", defaults.startup_delay, minimum=0.0),
        kv_cache_tokens=_env_int(env, "KV_CACHE_TOKENS", minimum=1),
        prefill_rate=prefill_rate,
        decode_rate=decode_rate,
        batch_penalty=_env_float(env, "BATCH_PENALTY", defaults.batch_penalty, minimum=0.0),
        output_tokens=defaults.output_tokens if output_tokens is None else output_tokens,
        seed=defaults.seed if seed is None else seed,
    )


def model_context_length(model: str) -> int | None:
    """``max_position_embeddings`` from ``<model>/config.json`` when the model is a local folder."""
    path = Path(model) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for section in (data, data.get("text_config")):
        if isinstance(section, dict):
            value = section.get("max_position_embeddings")
            if isinstance(value, int) and value > 0:
                return value
    return None


def _positive(name: str, value: int | float) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")


def parse_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> SimConfig:
    """Parse ``vllm serve`` argv plus the ``GANTRY_SIM_*`` environment into a ``SimConfig``.

    Raises ``ConfigError`` for values the simulator cannot run with; argparse exits with status 2
    for a malformed flag it uses (as vLLM does).
    """
    environ = os.environ if env is None else env
    args_in = [_normalize_flag(arg) for arg in argv]
    model_tag, rest = _split_model_tag(args_in)
    parser = _build_parser()
    pre, _ = parser.parse_known_args(rest)
    if pre.config:
        rest = _config_file_args(pre.config) + rest
    ns, unknown = parser.parse_known_args(rest)

    knobs = knobs_from_env(environ)
    model: str = model_tag or ns.model or DEFAULT_MODEL
    names = tuple(ns.served_model_name or [model])

    requested_len: int | None = ns.max_model_len
    fit_to_kv_cache = requested_len == -1
    if requested_len is None or requested_len == -1:
        max_model_len = model_context_length(model) or FALLBACK_MAX_MODEL_LEN
    else:
        max_model_len = requested_len
    max_num_seqs: int = ns.max_num_seqs or DEFAULT_MAX_NUM_SEQS
    batched: int = ns.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
    block_size: int = ns.block_size or DEFAULT_BLOCK_SIZE
    for name, value in (
        ("--max-model-len", max_model_len),
        ("--max-num-seqs", max_num_seqs),
        ("--max-num-batched-tokens", batched),
        ("--block-size", block_size),
        ("--stream-interval", ns.stream_interval),
        ("--tensor-parallel-size", ns.tensor_parallel_size),
        ("--pipeline-parallel-size", ns.pipeline_parallel_size),
    ):
        _positive(name, value)
    if not 0 < ns.gpu_memory_utilization <= 1:
        raise ConfigError(
            f"--gpu-memory-utilization must be in (0, 1], got {ns.gpu_memory_utilization}"
        )

    group_port: int | None = None
    local = ns.data_parallel_size_local or ns.data_parallel_size
    if not ns.headless and ns.nnodes > 1:
        group_port = ns.master_port
    elif not ns.headless and local < ns.data_parallel_size:
        group_port = ns.data_parallel_rpc_port

    if ns.gantry_kv_cache_tokens is not None:
        kv_tokens: int = ns.gantry_kv_cache_tokens
    elif knobs.kv_cache_tokens is not None:
        kv_tokens = knobs.kv_cache_tokens
    elif ns.num_gpu_blocks_override is not None:
        kv_tokens = ns.num_gpu_blocks_override * block_size
    else:
        kv_tokens = max(max_model_len, max_num_seqs * DEFAULT_KV_TOKENS_PER_SEQ)
    _positive("the KV-cache capacity", kv_tokens)
    if fit_to_kv_cache:
        # vLLM's `--max-model-len auto` fits the context to the KV cache.
        max_model_len = max(1, min(max_model_len, kv_tokens // block_size * block_size))

    return SimConfig(
        model=model,
        served_model_names=names,
        host=ns.host,
        port=ns.port,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=batched,
        block_size=block_size,
        kv_cache_tokens=kv_tokens,
        enable_prefix_caching=ns.enable_prefix_caching is not False,
        stream_interval=ns.stream_interval,
        max_num_queued_reqs=ns.max_num_queued_reqs,
        max_num_queued_tokens=ns.max_num_queued_tokens,
        api_keys=tuple(ns.api_key or ()),
        shutdown_timeout=max(0.0, ns.shutdown_timeout),
        tensor_parallel_size=ns.tensor_parallel_size,
        pipeline_parallel_size=ns.pipeline_parallel_size,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        kv_cache_dtype=ns.kv_cache_dtype,
        knobs=knobs,
        ignored_args=tuple(unknown),
        reasoning_parser=ns.reasoning_parser or None,
        tool_call_parser=ns.tool_call_parser or None,
        headless=ns.headless,
        group_port=group_port,
    )


def kv_capacity_error(config: SimConfig) -> str | None:
    """vLLM refuses to start when one max-model-len sequence does not fit in the KV cache."""
    usable = config.num_kv_blocks * config.block_size
    if usable >= config.max_model_len:
        return None
    return (
        f"To serve at least one request with the model's max seq len ({config.max_model_len}), "
        f"({config.max_model_len} tokens of KV cache are needed, which is larger than the "
        f"available KV cache ({usable} tokens). Based on the available memory, the estimated "
        f"maximum model length is {usable}. Try increasing `gpu_memory_utilization` or "
        f"decreasing `max_model_len` when initializing the engine."
    )
