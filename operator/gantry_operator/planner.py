"""The GPU sharding planner: pure arithmetic from model facts, GPU memory and serving targets.

Per GPU of a replica with tensor size TP and pipeline size PP (docs/planner.md has the worked
tables)::

    budget      = device memory x gpu-memory-utilization
    weights     = weight bytes / (TP x PP)
    overhead    = 1.5 GiB (CUDA context, cuBLAS workspace, CUDA graphs)
                  + max-num-batched-tokens x hidden x 20 B (activation peak vLLM profiles)
                  + 0.5 GiB when TP x PP > 1 (NCCL buffers)
    kv budget   = budget - weights - overhead
    per token   = full-attention layers of the stage x bytes per token per layer, where
                  GQA: 2 x ceil-split KV heads per rank x head dim x dtype bytes (divides by TP
                  while TP <= KV heads); MLA: latent dim x dtype bytes (replicated, no split)
    per seq     = sliding layers of the stage x (window + 16) tokens x bytes per token per layer
    KV tokens   = kv budget / per token
    sequences at max context = kv budget / (max-model-len x per token + per seq)

A plan fits when the weights fit and the KV cache holds ``targetConcurrency`` sequences at the
full context (at least one: vLLM refuses to start otherwise). Without explicit counts the
planner picks the fewest GPUs, tensor parallel inside a node first, pipeline stages across nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from gantry_operator.catalog import ModelArch
from gantry_operator.gpus import GIB, MIB, GPUProfile
from gantry_operator.spec import ModelDeploymentSpec

DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
BASE_OVERHEAD_BYTES = int(1.5 * GIB)
COMM_OVERHEAD_BYTES = GIB // 2
ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN = 20
#: Tokens a typical request holds; sets max-num-seqs beyond the full-context guarantee.
TYPICAL_REQUEST_TOKENS = 2048
MAX_NUM_SEQS_CAP = 256
#: vLLM's KV block size: a sliding window holds up to one partial block beyond the window.
KV_BLOCK_TOKENS = 16
MAX_PIPELINE_STAGES = 8
#: Weight loading rate assumed for probe budgets (network storage, safetensors mmap).
LOAD_BYTES_PER_SECOND = 500 * MIB
ENGINE_INIT_SECONDS = 120


class DoesNotFitError(ValueError):
    """No plan serves the request; the message says why and what would fit."""


@dataclass(frozen=True)
class Plan:
    model: str
    gpu_type: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    expert_parallel: bool
    gpus_per_replica: int
    nodes_per_replica: int
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_dtype: str
    weight_bytes_per_gpu: int
    overhead_bytes_per_gpu: int
    kv_bytes_per_gpu: int
    kv_bytes_per_token: int
    kv_cache_tokens: int
    sequences_at_max_len: float
    expected_load_seconds: int

    @property
    def gpus_per_node(self) -> int:
        return self.gpus_per_replica // self.nodes_per_replica

    @property
    def summary(self) -> str:
        return (
            f"TP={self.tensor_parallel_size} PP={self.pipeline_parallel_size} on "
            f"{self.gpus_per_replica} x {self.gpu_type} ({self.nodes_per_replica} node"
            f"{'s' if self.nodes_per_replica > 1 else ''}): max-model-len {self.max_model_len}, "
            f"KV cache {self.kv_cache_tokens:,} tokens = {self.sequences_at_max_len:.1f} "
            f"sequences at full context, max-num-seqs {self.max_num_seqs}"
        )

    def to_status(self) -> dict[str, Any]:
        """The plan as written to ``status.plan`` (integers, one decimal string for floats)."""
        return {
            "gpuType": self.gpu_type,
            "tensorParallelSize": self.tensor_parallel_size,
            "pipelineParallelSize": self.pipeline_parallel_size,
            "expertParallel": self.expert_parallel,
            "gpusPerReplica": self.gpus_per_replica,
            "nodesPerReplica": self.nodes_per_replica,
            "gpuMemoryUtilization": f"{self.gpu_memory_utilization:.2f}",
            "maxModelLen": self.max_model_len,
            "maxNumSeqs": self.max_num_seqs,
            "maxNumBatchedTokens": self.max_num_batched_tokens,
            "kvCacheDtype": self.kv_cache_dtype,
            "weightsMiBPerGPU": self.weight_bytes_per_gpu // MIB,
            "kvCacheMiBPerGPU": self.kv_bytes_per_gpu // MIB,
            "kvCacheTokens": self.kv_cache_tokens,
            "sequencesAtMaxLen": f"{self.sequences_at_max_len:.1f}",
            "summary": self.summary,
        }


@dataclass(frozen=True)
class Request:
    """What the planner is asked: everything in the spec that affects the plan."""

    model: ModelArch
    gpu: GPUProfile
    max_model_len: int
    target_concurrency: int = 1
    gpus_per_node: int | None = None
    count: int | None = None
    tensor: int | None = None
    pipeline: int | None = None
    expert: bool | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str = "auto"
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None

    @property
    def node_gpus(self) -> int:
        return self.gpus_per_node or self.gpu.gpus_per_node

    @property
    def utilization(self) -> float:
        return self.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION

    @property
    def batched_tokens(self) -> int:
        return self.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS


def request_from_spec(spec: ModelDeploymentSpec) -> Request:
    return Request(
        model=spec.model,
        gpu=spec.gpu.profile,
        max_model_len=spec.max_context_length,
        target_concurrency=spec.serving.target_concurrency,
        gpus_per_node=spec.gpu.per_node,
        count=spec.gpu.count,
        tensor=spec.parallelism.tensor,
        pipeline=spec.parallelism.pipeline,
        expert=spec.parallelism.expert,
        gpu_memory_utilization=spec.serving.gpu_memory_utilization,
        kv_cache_dtype=spec.serving.kv_cache_dtype,
        max_num_seqs=spec.serving.max_num_seqs,
        max_num_batched_tokens=spec.serving.max_num_batched_tokens,
    )


def plan(spec: ModelDeploymentSpec) -> Plan:
    """The plan for a parsed spec, or DoesNotFitError."""
    return plan_request(request_from_spec(spec))


@dataclass(frozen=True)
class _Memory:
    weights: int
    overhead: int
    kv: int
    per_token: int
    per_seq: int

    def sequences(self, max_len: int) -> float:
        return max(self.kv, 0) / (max_len * self.per_token + self.per_seq)

    def max_len_for(self, sequences: int) -> int:
        """Largest context (multiple of 1024) that holds ``sequences`` full sequences."""
        tokens = (max(self.kv, 0) / sequences - self.per_seq) / self.per_token
        return max(0, int(tokens) // 1024 * 1024)


def _memory(req: Request, tp: int, pp: int) -> _Memory:
    model = req.model
    budget = int(req.gpu.memory_bytes * req.utilization)
    weights = math.ceil(model.weight_bytes / (tp * pp))
    overhead = BASE_OVERHEAD_BYTES + req.batched_tokens * model.hidden_size * (
        ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN
    )
    if tp * pp > 1:
        overhead += COMM_OVERHEAD_BYTES
    per_layer = model.kv_bytes_per_token_per_layer(tp, req.kv_cache_dtype)
    full_layers = math.ceil(model.full_attention_layers / pp)
    sliding_layers = math.ceil(model.sliding_layers / pp)
    window = min(model.sliding_window + KV_BLOCK_TOKENS, req.max_model_len)
    return _Memory(
        weights=weights,
        overhead=overhead,
        kv=budget - weights - overhead,
        per_token=full_layers * per_layer,
        per_seq=sliding_layers * window * per_layer,
    )


def _layouts(req: Request) -> list[tuple[int, int]]:
    """Candidate (TP, PP) pairs in preference order: fewest GPUs, then fewest stages."""
    node = req.node_gpus
    if req.tensor and req.pipeline:
        return [(req.tensor, req.pipeline)]
    if req.count:
        if req.tensor:
            return [(req.tensor, req.count // req.tensor)] if req.count % req.tensor == 0 else []
        if req.pipeline:
            pp = req.pipeline
            return [(req.count // pp, pp)] if req.count % pp == 0 else []
        tp = req.count if req.count <= node else node
        return [(tp, req.count // tp)] if req.count % tp == 0 else []
    tps = [req.tensor] if req.tensor else [t for t in (1, 2, 4, 8, 16) if t <= node]
    pps = [req.pipeline] if req.pipeline else list(range(1, MAX_PIPELINE_STAGES + 1))
    # An explicit tensor size is kept even when invalid, so plan_request names the rule it
    # breaks instead of reporting that no size fits.
    valid = tps if req.tensor else [t for t in tps if _tp_ok(req, t)]
    widest = max(valid, default=0)
    pairs = [
        (tp, pp)
        for tp in valid
        for pp in pps
        if pp == 1 or tp == widest or req.pipeline or req.tensor
    ]
    return sorted(pairs, key=lambda p: (p[0] * p[1], p[1]))


def _tp_ok(req: Request, tp: int) -> bool:
    return req.model.tp_problem(tp, expert_parallel=True) is None


def _expert_parallel(req: Request, tp: int) -> bool:
    if req.expert is not None:
        return req.expert
    return req.model.is_moe and req.model.tp_problem(tp) is not None


def plan_request(req: Request) -> Plan:
    model, gpu = req.model, req.gpu
    if gpu.compute_capability < model.min_compute_capability:
        need = ".".join(map(str, model.min_compute_capability))
        have = ".".join(map(str, gpu.compute_capability))
        raise DoesNotFitError(
            f"{model.name} ({model.weight_dtype} weights) needs GPU compute capability {need} or "
            f"newer; {gpu.name} is {have}: choose another spec.gpu.type"
        )
    if req.max_model_len > model.max_context:
        raise DoesNotFitError(
            f"max context {req.max_model_len} exceeds {model.name}'s {model.max_context} tokens"
        )
    layouts = _layouts(req)
    if not layouts:
        raise DoesNotFitError(_layout_problem(req))
    failures: list[tuple[int, int, _Memory]] = []
    for tp, pp in layouts:
        problem = model.tp_problem(tp, expert_parallel=_expert_parallel(req, tp))
        if problem:
            raise DoesNotFitError(f"spec.parallelism: {model.name}: {problem}")
        if pp > model.num_layers:
            continue
        mem = _memory(req, tp, pp)
        if mem.kv > 0 and mem.sequences(req.max_model_len) >= req.target_concurrency:
            return _build(req, tp, pp, mem)
        failures.append((tp, pp, mem))
    raise DoesNotFitError(_explain(req, failures))


def _build(req: Request, tp: int, pp: int, mem: _Memory) -> Plan:
    tokens = mem.kv // mem.per_token
    gpus = tp * pp
    max_num_seqs = req.max_num_seqs or max(
        req.target_concurrency, min(MAX_NUM_SEQS_CAP, tokens // TYPICAL_REQUEST_TOKENS)
    )
    load = ENGINE_INIT_SECONDS + req.model.weight_bytes // (gpus * LOAD_BYTES_PER_SECOND)
    return Plan(
        model=req.model.name,
        gpu_type=req.gpu.name,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        expert_parallel=_expert_parallel(req, tp),
        gpus_per_replica=gpus,
        nodes_per_replica=math.ceil(gpus / req.node_gpus),
        gpu_memory_utilization=req.utilization,
        max_model_len=req.max_model_len,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=req.batched_tokens,
        kv_cache_dtype=req.kv_cache_dtype,
        weight_bytes_per_gpu=mem.weights,
        overhead_bytes_per_gpu=mem.overhead,
        kv_bytes_per_gpu=mem.kv,
        kv_bytes_per_token=mem.per_token,
        kv_cache_tokens=tokens,
        sequences_at_max_len=mem.sequences(req.max_model_len),
        expected_load_seconds=int(load),
    )


def _layout_problem(req: Request) -> str:
    if req.count and req.tensor:
        return (
            f"spec.gpu.count={req.count} is not a multiple of spec.parallelism.tensor="
            f"{req.tensor}; set count to a multiple of the tensor size"
        )
    if req.count and req.pipeline:
        return (
            f"spec.gpu.count={req.count} is not a multiple of spec.parallelism.pipeline="
            f"{req.pipeline}"
        )
    if req.count:
        return (
            f"spec.gpu.count={req.count} cannot be split into tensor-parallel groups of at most "
            f"{req.node_gpus} GPUs per node; use a multiple of {req.node_gpus} or at most "
            f"{req.node_gpus}"
        )
    return f"no tensor-parallel size of {req.model.name} fits a {req.node_gpus}-GPU node"


def _gib(n: float) -> str:
    return f"{max(n, 0) / GIB:.1f} GiB"


def _explain(req: Request, failures: list[tuple[int, int, _Memory]]) -> str:
    model, gpu = req.model, req.gpu
    what = f"{model.name} at {req.max_model_len} context"
    if req.target_concurrency > 1:
        what += f" x {req.target_concurrency} concurrent sequences"
    constrained = bool(req.count or req.tensor or req.pipeline)
    smallest = _smallest_fit(req) if constrained else None
    if smallest is not None:
        head = f"{what} needs at least {smallest.gpus_per_replica} x {gpu.name}"
        if smallest.nodes_per_replica > 1:
            head += f" ({smallest.nodes_per_replica} nodes)"
    elif constrained:
        head = f"{what} does not fit on {gpu.name} with any GPU count"
    else:
        most = max((tp * pp for tp, pp, _ in failures), default=0)
        head = (
            f"{what} does not fit on up to {most} x {gpu.name}: choose a larger spec.gpu.type, "
            "lower spec.serving.maxContextLength or targetConcurrency, or use kvCacheDtype fp8"
        )
    if not failures:
        return head
    tp, pp, mem = failures[0] if constrained else failures[-1]
    where = "spec.gpu.count" if req.count else "TP x PP"
    detail = f"{where}={tp * pp}"
    if mem.kv <= 0:
        need = mem.weights + mem.overhead
        have = int(gpu.memory_bytes * req.utilization)
        detail += (
            f" leaves no room for KV cache: weights {_gib(mem.weights)} + overhead "
            f"{_gib(mem.overhead)} per GPU exceed {_gib(have)} ({gpu.name} at "
            f"{req.utilization:.2f} utilization; short by {_gib(need - have)})"
        )
    else:
        detail += (
            f" leaves {_gib(mem.kv)} per GPU for KV cache, "
            f"{mem.sequences(req.max_model_len):.1f} sequences of {req.max_model_len} tokens"
        )
        fitting = mem.max_len_for(req.target_concurrency)
        if fitting >= 1024:
            detail += f"; spec.serving.maxContextLength={fitting} would fit"
    return f"{head}; {detail}"


def _smallest_fit(req: Request) -> Plan | None:
    """The plan the planner would pick without the user's counts and sizes."""
    free = replace(req, count=None, tensor=None, pipeline=None, expert=None, max_num_seqs=None)
    try:
        return plan_request(free)
    except DoesNotFitError:
        return None
