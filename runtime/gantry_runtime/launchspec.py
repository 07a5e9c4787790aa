"""The launch spec: what the operator writes for the runtime, and the `vllm serve` argv it becomes.

The operator serialises a :class:`LaunchSpec` as JSON into the runtime container's
``GANTRY_LAUNCH_SPEC`` environment variable (so a change rolls the pods). The runtime reads it,
checks the weights, and builds the argv with :func:`vllm_argv`. The operator's ``gantry render``
uses the same function to show the command line a pod will run, and the vLLM contract test feeds
every argv it can produce to vLLM's own parser.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ENV_VAR = "GANTRY_LAUNCH_SPEC"
#: The port vLLM (and the simulator) listens on inside the pod.
PORT = 8000


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the runtime needs to start vLLM for one replica."""

    #: A local directory (pvc / image sources), an ``s3://bucket/prefix`` URI, or a hub repo id.
    model: str
    served_model_name: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    #: Seconds vLLM drains in-flight requests after SIGTERM (``--shutdown-timeout``).
    shutdown_timeout: int
    enable_expert_parallel: bool = False
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: int | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    trust_remote_code: bool = False
    #: ``runai_streamer`` for S3 sources; None lets vLLM pick.
    load_format: str | None = None
    #: Hub revision (huggingFace sources only).
    revision: str | None = None
    #: Weights are read from a local directory and must be checked before vLLM starts.
    verify_local_weights: bool = True
    #: Expected sha256 per weight file, relative to ``model``; empty means presence checks only.
    sha256: dict[str, str] = field(default_factory=dict)
    #: Extra engine flags, already merged and checked against the plan by the operator,
    #: as ``(flag, value)`` pairs; value None means a bare switch.
    extra_args: tuple[tuple[str, str | None], ...] = ()
    port: int = PORT

    def to_json(self) -> str:
        data = asdict(self)
        data["extra_args"] = [list(pair) for pair in self.extra_args]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LaunchSpec:
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ENV_VAR} is not valid JSON: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{ENV_VAR} has unknown keys {unknown}: the operator is newer than this runtime "
                "image; upgrade the runtime image"
            )
        data["extra_args"] = tuple(
            (str(flag), None if value is None else str(value))
            for flag, value in data.get("extra_args", ())
        )
        data["sha256"] = dict(data.get("sha256", {}))
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"{ENV_VAR} is incomplete: {exc}") from exc


def vllm_argv(spec: LaunchSpec, *, host: str = "0.0.0.0") -> list[str]:
    """The full ``vllm serve`` command line for a launch spec (deterministic order)."""
    argv = [
        "vllm", "serve", spec.model,
        "--served-model-name", spec.served_model_name,
        "--host", host,
        "--port", str(spec.port),
        "--tensor-parallel-size", str(spec.tensor_parallel_size),
        "--pipeline-parallel-size", str(spec.pipeline_parallel_size),
        "--max-model-len", str(spec.max_model_len),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--gpu-memory-utilization", f"{spec.gpu_memory_utilization:.2f}",
        "--shutdown-timeout", str(spec.shutdown_timeout),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if spec.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", spec.kv_cache_dtype]
    if spec.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(spec.max_num_batched_tokens)]
    if spec.enable_expert_parallel:
        argv.append("--enable-expert-parallel")
    if spec.tool_call_parser:
        argv += ["--tool-call-parser", spec.tool_call_parser, "--enable-auto-tool-choice"]
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    if spec.trust_remote_code:
        argv.append("--trust-remote-code")
    if spec.load_format:
        argv += ["--load-format", spec.load_format]
    if spec.revision:
        argv += ["--revision", spec.revision]
    for flag, value in spec.extra_args:
        argv += [flag] if value is None else [flag, value]
    return argv
