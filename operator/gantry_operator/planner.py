"""The GPU sharding planner: pure arithmetic from model facts, GPU memory and serving targets.

It models, term by term, how the pinned vLLM sizes its KV cache (``Worker.
determine_available_memory`` in vllm/v1/worker/gpu_worker.py): the KV cache gets
``total memory x gpu-memory-utilization`` minus everything else the worker holds after its
profiling run. Per GPU of a replica with tensor size TP and pipeline size PP::

    budget       = device memory x gpu-memory-utilization
    weights      = (non-expert bytes + expert bytes x re-layout factor) / (TP x PP)
                   (the factor is 1 except for MXFP4 experts, padded per GPU architecture)
    non-torch    = CUDA/cuBLAS/attention-backend allocations outside PyTorch's allocator
    comm         = NCCL and custom all-reduce buffers when TP x PP > 1
    activations  = max-num-batched-tokens x (hidden x 24 B
                   + experts per token x (3 x expert width / TP + hidden) x 2 B)
    sampler      = min(max-num-seqs, max-num-batched-tokens) x vocabulary x 36 B
    cuda graphs  = CUDA graph memory vLLM profiles and subtracts
    kv budget    = budget - weights - non-torch - comm - activations - sampler - cuda graphs
    per token    = full-attention layers of the stage x bytes per token per layer
    per seq      = sliding layers of the stage x (window + 16) tokens x bytes per token per layer
    required     = targetConcurrency x (max-model-len x per token + per seq)
    headroom     = kv budget - required

A plan fits when its headroom is at least the safety margin (spec.serving.safetyMarginGiB, default
below). docs/planner.md cites the source of every constant and has the calibration against
public vLLM logs. Without explicit counts the planner picks the fewest GPUs, tensor parallel inside
a node first, pipeline stages across nodes.

A replica that spans nodes has one of two layouts (docs/planner.md, "Multi-node layouts"):
``pipeline`` (the terms above, TP inside a node, PP = stages across nodes) or, for MLA
mixture-of-experts models, ``data-parallel``: DP = GPUs per replica engines of TP 1 with expert
parallel over all of them. Each DP rank holds the non-expert weights whole and 1/DP of the routed
experts, its own KV pool (the MLA latent is per rank either way), and its MoE layers see the
tokens of every rank (vLLM's default all2all backend all-gathers them)::

    weights      = non-expert bytes + routed expert bytes / DP
    activations  = max-num-batched-tokens x hidden x 24 B
                   + DP x max-num-batched-tokens x (experts per token x (3 x expert width
                     + hidden) x 2 B + hidden x 2 B + experts x 4 B)
    required     = ceil(targetConcurrency / DP) x max-model-len x per token   (per rank)

When both layouts fit at the fewest GPUs, the one that holds more whole full-context sequences per
replica wins (pipeline on a tie).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from gantry_operator.catalog import ModelArch
from gantry_operator.gpus import GIB, MIB, GPUProfile, Mxfp4Kernel
from gantry_operator.spec import ModelDeploymentSpec

DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
#: Headroom a plan must leave beyond the KV cache it needs (spec.serving.safetyMarginGiB).
DEFAULT_SAFETY_MARGIN_GIB = 0.5
#: vLLM's own defaults for the OpenAI server (vllm/engine/arg_utils.py, get_batch_defaults):
#: 8192 batched tokens on GPUs of 70 GiB or more other than A100, 2048 on the others.
LARGE_GPU_BATCHED_TOKENS = 8192
SMALL_GPU_BATCHED_TOKENS = 2048
LARGE_GPU_BYTES = 70 * GIB
#: Allocations outside PyTorch's caching allocator that vLLM counts as consumed (CUDA context
#: growth, cuBLAS/cuDNN workspaces, attention-backend buffers): public logs report 0.20 to
#: 0.35 GiB (vLLM #14447, #13061, #10517); 1 GiB also covers the gap between the driver's total
#: (the profile's MiB) and the total CUDA reports to vLLM.
NON_TORCH_BYTES = GIB
#: NCCL communicators and vLLM's custom all-reduce buffers, when TP x PP > 1.
COMM_BYTES = GIB // 2
#: CUDA graph memory vLLM profiles (gpu_model_runner.profile_cudagraph_memory) and subtracts
#: from the KV budget since v0.21 (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1): public logs
#: report 0.17 to 0.58 GiB per GPU (club-3090#127, gpustack/runner#251, vllm-backport#34).
CUDA_GRAPH_BYTES = 3 * GIB // 4
#: Transient activation peak of the profiling forward pass over max-num-batched-tokens.
ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN = 24
ACTIVATION_ELEMENT_BYTES = 2
#: The sampler warm-up (gpu_model_runner._dummy_sampler_run) holds min(max-num-seqs,
#: max-num-batched-tokens) x vocabulary logits through top-k/top-p: BF16 logits, an FP32 copy,
#: sorted values and int64 indices, softmax, scatter and probabilities (~35 B per logit,
#: topk_topp_sampler.apply_top_k_top_p_pytorch), calibrated against vLLM #27508.
SAMPLER_BYTES_PER_LOGIT = 36
#: Slack on the modelled MXFP4 layout (Marlin at TP 1 models 65.89 GiB; vLLM #23278 logged 65.97).
MXFP4_LAYOUT_ALLOWANCE = 0.01
#: Tokens a typical request holds; sets max-num-seqs beyond the full-context guarantee.
TYPICAL_REQUEST_TOKENS = 2048
MAX_NUM_SEQS_CAP = 256
#: vLLM's KV block size: a sliding window holds up to one partial block beyond the window.
KV_BLOCK_TOKENS = 16
MAX_PIPELINE_STAGES = 8
#: Bytes per gathered token of the data-parallel MoE all-gather beyond the experts' own
#: intermediates: BF16 hidden states (x hidden) and float32 router logits (x experts).
GATHERED_HIDDEN_BYTES = 2
GATHERED_LOGIT_BYTES = 4
#: Weight loading rate assumed for probe budgets (network storage, safetensors mmap).
LOAD_BYTES_PER_SECOND = 500 * MIB
ENGINE_INIT_SECONDS = 120

#: (intermediate, hidden) alignment of MXFP4 expert weights per kernel family (vllm
#: model_executor/layers/fused_moe/oracle/mxfp4.py, mxfp4_round_up_hidden_size_and_intermediate_
#: size). Triton rounds the rank's expert width to 64; its swizzled Hopper layout also holds the
#: hidden size padded to 256 (vLLM #33155: 64.38 GiB at TP 1; modelled 64.55 GiB).
MXFP4_ALIGNMENT: dict[Mxfp4Kernel, tuple[int, int]] = {
    "triton": (64, 256),
    "trtllm": (128, 256),
    "marlin": (128, 256),
    "rocm": (256, 256),
}


class DoesNotFitError(ValueError):
    """No plan serves the request; the message says why and what would fit."""


#: How a replica runs: on one node; pipeline stages across nodes (TP inside each); or
#: data-parallel attention with expert parallel across nodes (MLA mixture-of-experts models).
Layout = Literal["single-node", "pipeline", "data-parallel"]
LAYOUTS: tuple[Layout, ...] = ("single-node", "pipeline", "data-parallel")


@dataclass(frozen=True)
class GroupMember:
    """One pod of a replica: what a node of a multi-node group holds."""

    #: LeaderWorkerSet worker index; 0 is the leader.
    worker_index: int
    gpus: int
    #: Global GPU ranks (TP x PP ranks, or DP ranks in the data-parallel layout), first to last.
    first_rank: int
    last_rank: int
    #: Pipeline stages the pod holds (first, last); (0, 0) in the data-parallel layout.
    first_stage: int
    last_stage: int

    @property
    def role(self) -> str:
        return "leader" if self.worker_index == 0 else "worker"

    def to_dict(self, layout: Layout) -> dict[str, Any]:
        out: dict[str, Any] = {
            "workerIndex": self.worker_index,
            "role": self.role,
            "gpus": self.gpus,
            "apiServer": self.worker_index == 0,
        }
        if layout == "data-parallel":
            out["dataParallelRanks"] = [self.first_rank, self.last_rank]
        else:
            out["ranks"] = [self.first_rank, self.last_rank]
            out["pipelineStages"] = [self.first_stage, self.last_stage]
        return out

    def describe(self, layout: Layout) -> str:
        api = "API server, " if self.worker_index == 0 else "headless, "
        if layout == "data-parallel":
            held = f"DP ranks {_span(self.first_rank, self.last_rank)}"
        else:
            stages = _span(self.first_stage, self.last_stage)
            held = f"pipeline stage{'s' if '-' in stages else ''} {stages} (ranks " + (
                f"{_span(self.first_rank, self.last_rank)})"
            )
        who = "worker 0 (leader)" if self.worker_index == 0 else f"worker {self.worker_index}"
        return f"{who}: {api}{self.gpus} GPUs, {held}"


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


@dataclass(frozen=True)
class Overhead:
    """Per-GPU memory vLLM holds besides weights and KV cache, term by term (bytes)."""

    non_torch: int
    communication: int
    activations: int
    sampler: int
    cuda_graphs: int

    @property
    def total(self) -> int:
        return (
            self.non_torch + self.communication + self.activations + self.sampler
            + self.cuda_graphs
        )  # fmt: skip


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
    overhead: Overhead
    kv_bytes_per_gpu: int
    kv_bytes_per_token: int
    kv_cache_tokens: int
    sequences_at_max_len: float
    #: KV bytes per GPU beyond what targetConcurrency full-context sequences need.
    headroom_bytes_per_gpu: int
    safety_margin_bytes: int
    expected_load_seconds: int
    #: GPUs per node the plan assumed (spec, node pool, or the profile's default).
    node_gpus: int = 8
    #: What the next smaller layout would hold, when the plan needed more GPUs than that.
    smaller_layout: str = ""
    #: How a replica that spans nodes runs, when it does.
    multi_node: str = ""
    layout: Layout = "single-node"
    #: vLLM --data-parallel-size / --data-parallel-size-local (1 outside the data-parallel
    #: layout): engines per replica, and per node.
    data_parallel_size: int = 1
    data_parallel_size_local: int = 1

    @property
    def overhead_bytes_per_gpu(self) -> int:
        return self.overhead.total

    @property
    def gpus_per_node(self) -> int:
        return self.gpus_per_replica // self.nodes_per_replica

    @property
    def group(self) -> tuple[GroupMember, ...]:
        """What each pod of a replica holds, leader first (one member for one node)."""
        nodes, per_node, tp = self.nodes_per_replica, self.gpus_per_node, self.tensor_parallel_size
        members = []
        for index in range(nodes):
            first, last = index * per_node, (index + 1) * per_node - 1
            stages = (0, 0) if self.layout == "data-parallel" else (first // tp, last // tp)
            members.append(GroupMember(index, per_node, first, last, *stages))
        return tuple(members)

    @property
    def notes(self) -> tuple[str, ...]:
        """Remarks for people: what a smaller layout would hold, how multi-node replicas run."""
        return tuple(n for n in (self.smaller_layout, self.multi_node) if n)

    @property
    def summary(self) -> str:
        """One line for status.plan.summary; it says what one size smaller would hold."""
        smaller = f"; {self.smaller_layout}" if self.smaller_layout else ""
        nodes = f"{self.nodes_per_replica} node{'s' if self.nodes_per_replica > 1 else ''}"
        sizes = f"TP={self.tensor_parallel_size} PP={self.pipeline_parallel_size}"
        per_rank = ""
        if self.layout == "pipeline":
            nodes += ", pipeline stages across nodes"
        elif self.layout == "data-parallel":
            sizes = (
                f"DP={self.data_parallel_size} ({self.data_parallel_size_local} per node) "
                f"TP={self.tensor_parallel_size} EP"
            )
            nodes += ", data-parallel attention, experts across nodes"
            per_rank = " per DP rank"
        return (
            f"{sizes} on {self.gpus_per_replica} x {self.gpu_type} ({nodes}): max-model-len "
            f"{self.max_model_len}, KV cache {self.kv_cache_tokens:,} tokens = "
            f"{self.sequences_at_max_len:.1f} sequences at full context, max-num-seqs "
            f"{self.max_num_seqs}{per_rank}, headroom "
            f"{self.headroom_bytes_per_gpu / GIB:.1f} GiB per GPU (margin "
            f"{self.safety_margin_bytes / GIB:.1f} GiB){smaller}"
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
            "layout": self.layout,
            "dataParallelSize": self.data_parallel_size,
            "dataParallelSizeLocal": self.data_parallel_size_local,
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

    def to_dict(self) -> dict[str, Any]:
        """Every figure of the plan, for ``gantry plan -o json|yaml`` (bytes as integers)."""
        return {
            "model": self.model,
            **self.to_status(),
            "nodeGPUs": self.node_gpus,
            "weightBytesPerGPU": self.weight_bytes_per_gpu,
            "overheadBytesPerGPU": {
                "nonTorch": self.overhead.non_torch,
                "communication": self.overhead.communication,
                "activations": self.overhead.activations,
                "sampler": self.overhead.sampler,
                "cudaGraphs": self.overhead.cuda_graphs,
            },
            "kvCacheBytesPerGPU": self.kv_bytes_per_gpu,
            "kvCacheBytesPerToken": self.kv_bytes_per_token,
            "headroomBytesPerGPU": self.headroom_bytes_per_gpu,
            "safetyMarginBytes": self.safety_margin_bytes,
            "group": [member.to_dict(self.layout) for member in self.group],
            "notes": list(self.notes),
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
    safety_margin_gib: float | None = None
    #: The MXFP4 kernel family vLLM uses; default the GPU's (calibration against older logs).
    mxfp4_kernel: Mxfp4Kernel | None = None

    @property
    def node_gpus(self) -> int:
        return self.gpus_per_node or self.gpu.gpus_per_node

    @property
    def utilization(self) -> float:
        return self.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION

    @property
    def batched_tokens(self) -> int:
        return self.max_num_batched_tokens or default_batched_tokens(self.gpu)

    @property
    def margin_bytes(self) -> int:
        gib = self.safety_margin_gib
        return int((DEFAULT_SAFETY_MARGIN_GIB if gib is None else gib) * GIB)

    @property
    def kernel(self) -> Mxfp4Kernel:
        return self.mxfp4_kernel or self.gpu.mxfp4_kernel


def default_batched_tokens(gpu: GPUProfile) -> int:
    """vLLM's default --max-num-batched-tokens for its OpenAI server on this GPU."""
    large = gpu.memory_bytes >= LARGE_GPU_BYTES and not gpu.name.startswith("A100")
    return LARGE_GPU_BATCHED_TOKENS if large else SMALL_GPU_BATCHED_TOKENS


def request_from_spec(spec: ModelDeploymentSpec, *, gpus_per_node: int | None = None) -> Request:
    """``gpus_per_node`` is what the node pool offers (gpus.gpus_per_node); spec.gpu.perNode,
    when set, wins over it."""
    return Request(
        model=spec.model,
        gpu=spec.gpu.profile,
        max_model_len=spec.max_context_length,
        target_concurrency=spec.serving.target_concurrency,
        gpus_per_node=spec.gpu.per_node or gpus_per_node,
        count=spec.gpu.count,
        tensor=spec.parallelism.tensor,
        pipeline=spec.parallelism.pipeline,
        expert=spec.parallelism.expert,
        gpu_memory_utilization=spec.serving.gpu_memory_utilization,
        kv_cache_dtype=spec.serving.kv_cache_dtype,
        max_num_seqs=spec.serving.max_num_seqs,
        max_num_batched_tokens=spec.serving.max_num_batched_tokens,
        safety_margin_gib=spec.serving.safety_margin_gib,
    )


def plan(spec: ModelDeploymentSpec, *, gpus_per_node: int | None = None) -> Plan:
    """The plan for a parsed spec, or DoesNotFitError. ``gpus_per_node``: the node pool's."""
    return plan_request(request_from_spec(spec, gpus_per_node=gpus_per_node))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def weight_bytes_per_gpu(
    model: ModelArch, tp: int, pp: int = 1, kernel: Mxfp4Kernel = "triton"
) -> int:
    """Weight bytes one GPU holds: the checkpoint split TP x PP ways; MXFP4 experts padded to
    the alignment of ``kernel`` (each rank holds expert width / TP, rounded up)."""
    experts = model.expert_weight_bytes
    if not experts:
        return math.ceil(model.weight_bytes / (tp * pp))
    width_align, hidden_align = MXFP4_ALIGNMENT[kernel]
    width = math.ceil(model.moe_intermediate_size / tp)
    factor = (_round_up(width, width_align) / width) * (
        _round_up(model.hidden_size, hidden_align) / model.hidden_size
    )
    held = (model.weight_bytes - experts) + experts * factor
    return math.ceil(held * (1 + MXFP4_LAYOUT_ALLOWANCE) / (tp * pp))


def data_parallel_weight_bytes(model: ModelArch, dp: int) -> int:
    """Weight bytes one rank of the data-parallel layout holds: every non-expert weight (attention,
    embeddings, dense and shared MLPs are replicated on every DP rank) and 1/DP of the routed
    experts (expert parallel shards them over all DP x TP ranks, TP being 1)."""
    routed = model.routed_expert_bytes
    return (model.weight_bytes - routed) + math.ceil(routed / dp)


@dataclass(frozen=True)
class Memory:
    """The planner's estimate for one GPU of a layout (bytes)."""

    budget: int
    weights: int
    overhead: Overhead
    kv: int
    per_token: int
    per_seq: int
    max_num_seqs: int
    #: Independent KV pools per replica (DP ranks); a sequence lives in one of them.
    ranks: int = 1

    def per_rank(self, sequences: int) -> int:
        """Sequences one KV pool must hold for ``sequences`` per replica."""
        return -(-sequences // self.ranks)

    def sequence_bytes(self, max_len: int) -> int:
        return max_len * self.per_token + self.per_seq

    def required(self, max_len: int, sequences: int) -> int:
        return self.per_rank(sequences) * self.sequence_bytes(max_len)

    def sequences(self, max_len: int) -> float:
        """Full-context sequences one replica holds (summed over its KV pools)."""
        return self.ranks * max(self.kv, 0) / self.sequence_bytes(max_len)

    def whole_sequences(self, max_len: int) -> int:
        """Whole full-context sequences one replica holds: a sequence cannot span KV pools."""
        return self.ranks * (max(self.kv, 0) // self.sequence_bytes(max_len))

    def headroom(self, max_len: int, sequences: int) -> int:
        return self.kv - self.required(max_len, sequences)

    def max_len_for(self, sequences: int, margin: int) -> int:
        """Largest context (multiple of 1024) that holds ``sequences`` full sequences and
        leaves ``margin``."""
        tokens = ((self.kv - margin) / self.per_rank(sequences) - self.per_seq) / self.per_token
        return max(0, int(tokens) // 1024 * 1024)


def estimate(req: Request, tp: int, pp: int, dp: int = 1) -> Memory:
    """The memory vLLM would have per GPU for ``req`` at tensor size ``tp``, ``pp`` stages and,
    when ``dp`` > 1, ``dp`` data-parallel ranks with expert parallel over them."""
    model = req.model
    budget = int(req.gpu.memory_bytes * req.utilization)
    if dp > 1:
        weights = data_parallel_weight_bytes(model, dp)
    else:
        weights = weight_bytes_per_gpu(model, tp, pp, req.kernel)
    batched = req.batched_tokens
    moe_width = math.ceil(model.moe_intermediate_size / tp)
    moe_per_token = (
        max(1, model.experts_per_token) * (3 * moe_width + model.hidden_size)
        * ACTIVATION_ELEMENT_BYTES
    )  # fmt: skip
    own = model.hidden_size * ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN
    if dp > 1:
        # Every rank's MoE layers run over the tokens gathered from all DP ranks.
        gathered = (
            moe_per_token + model.hidden_size * GATHERED_HIDDEN_BYTES
            + model.num_experts * GATHERED_LOGIT_BYTES
        )  # fmt: skip
        activations = batched * own + dp * batched * gathered
    else:
        activations = batched * (own + moe_per_token)
    fixed = Overhead(
        non_torch=NON_TORCH_BYTES,
        communication=COMM_BYTES if tp * pp * dp > 1 else 0,
        activations=activations,
        sampler=0,
        cuda_graphs=CUDA_GRAPH_BYTES,
    )
    per_layer = model.kv_bytes_per_token_per_layer(tp, req.kv_cache_dtype)
    full_layers = math.ceil(model.full_attention_layers / pp)
    sliding_layers = math.ceil(model.sliding_layers / pp)
    window = min(model.sliding_window + KV_BLOCK_TOKENS, req.max_model_len)
    per_token = full_layers * per_layer
    before_sampler = budget - weights - fixed.total
    max_num_seqs = req.max_num_seqs or max(
        -(-req.target_concurrency // dp),
        min(MAX_NUM_SEQS_CAP, max(before_sampler, 0) // per_token // TYPICAL_REQUEST_TOKENS),
    )
    sampler = min(max_num_seqs, batched) * model.vocab * SAMPLER_BYTES_PER_LOGIT
    overhead = replace(fixed, sampler=sampler)
    return Memory(
        budget=budget,
        weights=weights,
        overhead=overhead,
        kv=before_sampler - sampler,
        per_token=per_token,
        per_seq=sliding_layers * window * per_layer,
        max_num_seqs=max_num_seqs,
        ranks=dp,
    )


def _layouts(req: Request) -> list[tuple[int, int]]:
    """Candidate (TP, PP) pairs in preference order: fewest GPUs, then fewest stages."""
    node = req.node_gpus
    if req.tensor and req.pipeline:
        if req.count and req.count != req.tensor * req.pipeline:
            return []
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
            f"spec.serving.maxContextLength={req.max_model_len} exceeds {model.name}'s "
            f"{model.max_context} tokens"
        )
    if req.pipeline and req.pipeline > model.num_layers:
        raise DoesNotFitError(
            f"spec.parallelism.pipeline={req.pipeline} exceeds {model.name}'s "
            f"{model.num_layers} layers: use at most {model.num_layers} stages"
        )
    layouts = _layouts(req)
    if not layouts:
        raise DoesNotFitError(_layout_problem(req))
    constrained = bool(req.count or req.tensor or req.pipeline)
    failures: list[tuple[int, int, Memory]] = []
    for tp, pp in layouts:
        problem = model.tp_problem(tp, expert_parallel=_expert_parallel(req, tp))
        if problem:
            raise DoesNotFitError(f"spec.parallelism: {model.name}: {problem}")
        if pp > model.num_layers:
            continue
        split = _node_split_problem(req, tp, pp)
        if split:
            if constrained:
                raise DoesNotFitError(split)
            continue
        mem = estimate(req, tp, pp)
        options: list[tuple[Memory, int]] = []  # (memory, data-parallel size)
        if _fits(req, mem):
            options.append((mem, 1))
        dp = tp * pp
        if _data_parallel_allowed(req, dp):
            dp_mem = estimate(req, 1, 1, dp)
            if _fits(req, dp_mem):
                options.append((dp_mem, dp))
        if options:
            # More whole full-context sequences per replica wins; pipeline (listed first) on a tie.
            best, best_dp = max(options, key=lambda o: o[0].whole_sequences(req.max_model_len))
            if best_dp > 1:
                return _build(req, 1, 1, best, failures, dp=best_dp)
            return _build(req, tp, pp, best, failures)
        failures.append((tp, pp, mem))
    raise DoesNotFitError(_explain(req, failures))


def _node_split_problem(req: Request, tp: int, pp: int) -> str | None:
    """Why ``tp`` x ``pp`` cannot be spread over equal pods of whole pipeline stages, or None.

    vLLM's multi-node launcher gives every node world size / nnodes ranks, TP fastest: every pod
    holds the same number of GPUs, and either whole tensor groups (stages) or a whole share of
    one tensor group that spans pods."""
    gpus = tp * pp
    nodes = math.ceil(gpus / req.node_gpus)
    if nodes == 1:
        return None
    local = gpus // nodes
    if gpus % nodes == 0 and (local % tp == 0 or tp % local == 0):
        return None
    return (
        f"spec.parallelism: TP={tp} x PP={pp} = {gpus} GPUs over {nodes} nodes of "
        f"{req.node_gpus} GPUs cannot give every node the same whole pipeline stages; choose "
        f"spec.parallelism.pipeline as a multiple of {nodes} or a tensor size that fills a node"
    )


def _data_parallel_allowed(req: Request, dp: int) -> bool:
    """Whether the data-parallel layout is a candidate for a replica of ``dp`` GPUs: an MLA
    mixture of experts (data-parallel attention keeps one latent KV per rank instead of one per
    GPU) spanning whole nodes, with the experts split evenly, and no explicit tensor or pipeline
    size or expert-parallel opt-out in the spec."""
    model, node = req.model, req.node_gpus
    return (
        model.attention == "mla"
        and model.is_moe
        and dp > node
        and dp % node == 0
        and model.num_experts % dp == 0
        and not req.tensor
        and not req.pipeline
        and req.expert is not False
    )


def _fits(req: Request, mem: Memory) -> bool:
    headroom = mem.headroom(req.max_model_len, req.target_concurrency)
    return mem.kv > 0 and headroom >= req.margin_bytes


def _build(
    req: Request,
    tp: int,
    pp: int,
    mem: Memory,
    failures: list[tuple[int, int, Memory]],
    *,
    dp: int = 1,
) -> Plan:
    tokens = mem.kv // mem.per_token * dp
    gpus = tp * pp * dp
    nodes = math.ceil(gpus / req.node_gpus)
    # Every GPU loads its share; a data-parallel rank also loads the replicated weights.
    share = mem.weights if dp > 1 else req.model.weight_bytes // gpus
    load = ENGINE_INIT_SECONDS + share // LOAD_BYTES_PER_SECOND
    smaller_layout = multi_node = ""
    if failures:
        ftp, fpp, fmem = failures[-1]
        fitting = fmem.max_len_for(req.target_concurrency, req.margin_bytes)
        smaller = f"{ftp * fpp} x {req.gpu.name}"
        margin = f"the {req.margin_bytes / GIB:.1f} GiB safety margin"
        if req.target_concurrency > 1:
            margin = f"{req.target_concurrency} concurrent sequences and {margin}"
        if fitting >= 1024:
            smaller_layout = (
                f"{smaller} (TP={ftp} PP={fpp}) fits spec.serving.maxContextLength={fitting} "
                f"(not {req.max_model_len}) with {margin}"
            )
        else:
            smaller_layout = (
                f"{smaller} (TP={ftp} PP={fpp}) leaves no room for a {req.model.name} KV cache "
                f"with {margin}"
            )
    layout: Layout = "single-node"
    if nodes > 1:
        per_node = gpus // nodes
        group = (
            f"{nodes} nodes per replica ({per_node} GPUs per node): the replica runs as a "
            f"LeaderWorkerSet group of {nodes} pods, one per node; the leader (worker 0) runs "
            f"vLLM's API server, "
            + ("worker 1 runs" if nodes == 2 else f"workers 1-{nodes - 1} run")
            + " headless (vllm --headless)"
        )
        if dp > 1:
            layout = "data-parallel"
            multi_node = (
                f"{group}; data-parallel attention: {dp} DP ranks of TP 1 ({per_node} per pod), "
                f"experts split over all {dp} (expert parallel), each rank its own KV cache"
            )
        else:
            layout = "pipeline"
            multi_node = (
                f"{group}; pipeline stages across nodes: TP {tp} inside each pod, "
                f"{pp // nodes} stage{'s' if pp // nodes > 1 else ''} of {pp} per pod"
            )
    return Plan(
        model=req.model.name,
        gpu_type=req.gpu.name,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        expert_parallel=True if dp > 1 else _expert_parallel(req, tp),
        gpus_per_replica=gpus,
        nodes_per_replica=nodes,
        gpu_memory_utilization=req.utilization,
        max_model_len=req.max_model_len,
        max_num_seqs=mem.max_num_seqs,
        max_num_batched_tokens=req.batched_tokens,
        kv_cache_dtype=req.kv_cache_dtype,
        weight_bytes_per_gpu=mem.weights,
        overhead=mem.overhead,
        kv_bytes_per_gpu=mem.kv,
        kv_bytes_per_token=mem.per_token,
        kv_cache_tokens=tokens,
        sequences_at_max_len=mem.sequences(req.max_model_len),
        headroom_bytes_per_gpu=mem.headroom(req.max_model_len, req.target_concurrency),
        safety_margin_bytes=req.margin_bytes,
        expected_load_seconds=int(load),
        node_gpus=req.node_gpus,
        smaller_layout=smaller_layout,
        multi_node=multi_node,
        layout=layout,
        data_parallel_size=dp,
        data_parallel_size_local=dp // nodes if dp > 1 else 1,
    )


def _layout_problem(req: Request) -> str:
    if req.count and req.tensor and req.pipeline:
        return (
            f"spec.gpu.count={req.count} must equal spec.parallelism.tensor x "
            f"spec.parallelism.pipeline = {req.tensor * req.pipeline}"
        )
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


def _signed_gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _explain(req: Request, failures: list[tuple[int, int, Memory]]) -> str:
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
    margin = req.margin_bytes
    if mem.kv <= 0:
        need = mem.weights + mem.overhead.total
        detail += (
            f" leaves no room for KV cache: weights {_gib(mem.weights)} + overhead "
            f"{_gib(mem.overhead.total)} per GPU exceed {_gib(mem.budget)} ({gpu.name} at "
            f"{req.utilization:.2f} utilization; short by {_gib(need - mem.budget)})"
        )
    else:
        detail += (
            f" leaves {_gib(mem.kv)} per GPU for KV cache, "
            f"{mem.sequences(req.max_model_len):.1f} sequences of {req.max_model_len} tokens, "
            f"headroom {_signed_gib(mem.headroom(req.max_model_len, req.target_concurrency))} "
            f"against a {margin / GIB:.1f} GiB safety margin"
        )
        fitting = mem.max_len_for(req.target_concurrency, margin)
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
