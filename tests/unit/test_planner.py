"""The sharding planner's arithmetic, recomputed independently.

Expected numbers here come from the formula documented in ``planner.py`` and ``docs/planner.md``
and from the architecture facts in FACTS.md (cross-checked against the copies of each model's
``config.json`` in ``tests/data/models``), never from the planner's own output. Only two inputs are
taken from the code: each model's weight bytes (checked against their documented derivation) and
the device memory of each GPU profile.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gantry_operator import gpus, planner
from gantry_operator.catalog import ModelArch, arch_from_mapping, preset, presets
from gantry_operator.gpus import Mxfp4Kernel
from gantry_operator.planner import DoesNotFitError, Plan, Request, plan_request
from gantry_operator.spec import parse

REPO = Path(__file__).resolve().parents[2]
KIB, MIB, GIB = 1024, 1024**2, 1024**3

# The documented constants (planner docstring and docs/planner.md), written out independently.
UTILIZATION = 0.90
MARGIN = GIB // 2  # default spec.serving.safetyMarginGiB: 0.5
NON_TORCH = GIB  # allocations outside PyTorch's allocator
COMM = GIB // 2  # NCCL and custom all-reduce when TP x PP > 1
CUDA_GRAPHS = 3 * GIB // 4
ACTIVATION_PER_HIDDEN = 24  # bytes per batched token per hidden unit
ACTIVATION_ELEMENT = 2  # BF16 MoE intermediates
SAMPLER_PER_LOGIT = 36  # bytes per logit of the sampler warm-up
LAYOUT_ALLOWANCE = 0.01  # slack on the modelled MXFP4 layout
BLOCK_TOKENS = 16  # a sliding window holds up to one partial block beyond the window
TYPICAL_REQUEST = 2048
MAX_SEQS_CAP = 256
LOAD_RATE = 500 * MIB  # bytes per second and GPU
ENGINE_INIT = 120
#: vLLM's get_batch_defaults for the OpenAI server: 8192 tokens on >= 70 GiB GPUs but A100.
LARGE_BATCH, SMALL_BATCH = 8192, 2048
#: The MXFP4 MoE kernel family vLLM picks per GPU, and its (expert width, hidden) alignment.
KERNEL = {
    "H100-80GB": "triton", "H100-NVL": "triton", "H200": "triton", "B200": "trtllm",
    "A100-80GB": "marlin", "A100-40GB": "marlin", "L40S": "marlin", "L4": "marlin",
    "A10": "marlin", "RTX-A4000": "marlin", "MI300X": "rocm",
}  # fmt: skip
ALIGN = {"triton": (64, 256), "trtllm": (128, 256), "marlin": (128, 256), "rocm": (256, 256)}


def batched_default(gpu: str) -> int:
    large = gpus.PROFILES[gpu].memory_mib * MIB >= 70 * GIB and not gpu.startswith("A100")
    return LARGE_BATCH if large else SMALL_BATCH


@dataclass(frozen=True)
class Facts:
    """Architecture facts from FACTS.md; ``config`` names the config.json copy, if one exists."""

    layers: int
    sliding_layers: int
    window: int
    hidden: int
    heads: int
    kv_heads: int  # 0 for MLA
    head_dim: int  # 0 for MLA
    mla_latent: int  # kv_lora_rank + qk_rope_head_dim; 0 for GQA
    max_context: int
    config: str | None
    experts: int  # routed experts (0: dense)
    topk: int  # experts per token
    width: int  # expert (or dense MLP) width, config.json moe_intermediate_size
    vocab: int


_DEEPSEEK = Facts(61, 0, 0, 7168, 128, 0, 0, 576, 163840, None, 256, 8, 2048, 129280)
_QWEN3_MOE = Facts(94, 0, 0, 4096, 64, 4, 128, 0, 40960, None, 128, 8, 1536, 151936)
_GLM45 = Facts(92, 0, 0, 5120, 96, 8, 128, 0, 131072, None, 160, 8, 1536, 151552)
_OSS = Facts(36, 18, 128, 2880, 64, 8, 64, 0, 131072, "gpt-oss-120b", 128, 4, 2880, 201088)
FACTS: dict[str, Facts] = {
    "gpt-oss-120b": _OSS,
    "gpt-oss-20b": replace(_OSS, layers=24, sliding_layers=12, config="gpt-oss-20b", experts=32),
    "deepseek-v3": replace(_DEEPSEEK, config="deepseek-v3"),
    "deepseek-r1": replace(_DEEPSEEK, config="deepseek-r1"),
    "kimi-k2": Facts(61, 0, 0, 7168, 64, 0, 0, 576, 131072, "kimi-k2", 384, 8, 2048, 163840),
    "qwen3-235b-a22b": replace(_QWEN3_MOE, config="qwen3-235b-a22b"),
    "qwen3-235b-a22b-fp8": replace(_QWEN3_MOE, config="qwen3-235b-a22b-fp8"),
    "qwen3-32b": Facts(64, 0, 0, 5120, 64, 8, 128, 0, 40960, "qwen3-32b", 0, 0, 25600, 151936),
    "glm-4.5": _GLM45,  # no verbatim config.json (tests/data/models/SOURCES.md)
    "glm-4.5-fp8": _GLM45,
    "glm-4.5-air": replace(
        _GLM45, layers=46, hidden=4096, config="glm-4.5-air", experts=128, width=1408
    ),
}


def per_layer_bytes(f: Facts, tp: int, elem: int = 2) -> int:
    """KV bytes one token adds to one layer on one GPU (FACTS.md "How vLLM counts KV")."""
    if f.mla_latent:
        return f.mla_latent * elem  # replicated on every rank
    heads = f.kv_heads // tp if tp <= f.kv_heads else 1  # split, then replicated
    return 2 * heads * f.head_dim * elem


def weights_per_gpu(model: str, tp: int, pp: int = 1, kernel: str = "triton") -> int:
    """docs/planner.md "Weights": the checkpoint split TP x PP ways; MXFP4 experts (17 bytes per
    32 weights) padded to the kernel's alignment of the rank's expert width and the hidden size,
    plus the 1% layout allowance."""
    m, f = preset(model), FACTS[model]
    if m.weight_dtype != "mxfp4":
        return math.ceil(m.weight_bytes / (tp * pp))
    experts = 3 * f.layers * f.experts * f.hidden * f.width * 17 // 32
    width_align, hidden_align = ALIGN[kernel]
    width = math.ceil(f.width / tp)
    padded_width = math.ceil(width / width_align) * width_align
    padded_hidden = math.ceil(f.hidden / hidden_align) * hidden_align
    factor = padded_width / width * padded_hidden / f.hidden
    return math.ceil(((m.weight_bytes - experts) + experts * factor) * 1.01 / (tp * pp))


@dataclass(frozen=True)
class Expected:
    budget: int
    weights: int
    overhead: int
    sampler: int
    kv: int
    per_token: int
    per_seq: int
    max_num_seqs: int
    #: Independent KV pools per replica (data-parallel ranks).
    ranks: int = 1

    def sequences(self, max_len: int) -> float:
        return self.ranks * max(self.kv, 0) / (max_len * self.per_token + self.per_seq)

    def whole_sequences(self, max_len: int) -> int:
        """A sequence lives in one rank's KV pool: whole sequences per rank, times the ranks."""
        return self.ranks * (max(self.kv, 0) // (max_len * self.per_token + self.per_seq))

    def headroom(self, max_len: int, concurrency: int = 1) -> int:
        per_rank = -(-concurrency // self.ranks)
        return self.kv - per_rank * (max_len * self.per_token + self.per_seq)

    def fits(self, max_len: int, concurrency: int = 1, margin: int = MARGIN) -> bool:
        return self.kv > 0 and self.headroom(max_len, concurrency) >= margin


def expected(
    model: str,
    gpu: str,
    tp: int,
    pp: int,
    max_len: int,
    *,
    elem: int = 2,
    util: float = UTILIZATION,
    batched: int | None = None,
    max_num_seqs: int | None = None,
    concurrency: int = 1,
    kernel: str | None = None,
) -> Expected:
    f = FACTS[model]
    batched = batched or batched_default(gpu)
    budget = int(gpus.PROFILES[gpu].memory_mib * MIB * util)
    weights = weights_per_gpu(model, tp, pp, kernel or KERNEL[gpu])
    width = math.ceil(f.width / tp)
    activations = batched * (
        f.hidden * ACTIVATION_PER_HIDDEN + max(1, f.topk) * (3 * width + f.hidden) * 2
    )
    fixed = NON_TORCH + (COMM if tp * pp > 1 else 0) + activations + CUDA_GRAPHS
    per_layer = per_layer_bytes(f, tp, elem)
    per_token = math.ceil((f.layers - f.sliding_layers) / pp) * per_layer
    before = budget - weights - fixed
    seqs = max_num_seqs or max(
        concurrency, min(MAX_SEQS_CAP, max(before, 0) // per_token // TYPICAL_REQUEST)
    )
    sampler = min(seqs, batched) * f.vocab * SAMPLER_PER_LOGIT
    window_tokens = min(f.window + BLOCK_TOKENS, max_len)
    return Expected(
        budget=budget,
        weights=weights,
        overhead=fixed + sampler,
        sampler=sampler,
        kv=before - sampler,
        per_token=per_token,
        per_seq=math.ceil(f.sliding_layers / pp) * window_tokens * per_layer,
        max_num_seqs=seqs,
    )


#: config.json first_k_dense_replace of the MLA models: leading layers with a dense MLP.
DENSE_LAYERS = {"deepseek-v3": 3, "deepseek-r1": 3, "kimi-k2": 1}
FP8_BLOCK = 128
GATHERED_HIDDEN, GATHERED_LOGIT = 2, 4  # BF16 hidden states, float32 router logits


def routed_expert_bytes(model: str) -> int:
    """FP8 block checkpoints: each of the 3 matrices of every routed expert of every MoE layer is
    hidden x width bytes plus one float32 scale per 128 x 128 block."""
    f = FACTS[model]
    scales = math.ceil(f.hidden / FP8_BLOCK) * math.ceil(f.width / FP8_BLOCK)
    return 3 * (f.layers - DENSE_LAYERS[model]) * f.experts * (f.hidden * f.width + 4 * scales)


def expected_dp(
    model: str,
    gpu: str,
    dp: int,
    max_len: int,
    *,
    batched: int | None = None,
    concurrency: int = 1,
    elem: int = 2,
) -> Expected:
    """docs/planner.md "Multi-node layouts": DP ranks of TP 1, non-expert weights on every rank,
    routed experts split DP ways, the MoE over the tokens of every rank, one KV pool per rank."""
    f, m = FACTS[model], preset(model)
    batched = batched or batched_default(gpu)
    budget = int(gpus.PROFILES[gpu].memory_mib * MIB * UTILIZATION)
    routed = routed_expert_bytes(model)
    weights = m.weight_bytes - routed + math.ceil(routed / dp)
    gathered = f.topk * (3 * f.width + f.hidden) * 2 + f.hidden * GATHERED_HIDDEN
    gathered += f.experts * GATHERED_LOGIT
    activations = batched * f.hidden * ACTIVATION_PER_HIDDEN + dp * batched * gathered
    fixed = NON_TORCH + COMM + activations + CUDA_GRAPHS
    per_token = f.layers * f.mla_latent * elem
    before = budget - weights - fixed
    seqs = max(-(-concurrency // dp), min(MAX_SEQS_CAP, max(before, 0) // per_token // 2048))
    sampler = min(seqs, batched) * f.vocab * SAMPLER_PER_LOGIT
    return Expected(
        budget=budget,
        weights=weights,
        overhead=fixed + sampler,
        sampler=sampler,
        kv=before - sampler,
        per_token=per_token,
        per_seq=0,
        max_num_seqs=seqs,
        ranks=dp,
    )


def valid_tp(model: str, tp: int) -> bool:
    """docs/planner.md "Choosing the layout" rule 2 (FP8 blocks turn on expert parallel)."""
    f = FACTS[model]
    if f.heads % tp:
        return False
    if f.mla_latent:
        return True
    return f.kv_heads % tp == 0 if tp <= f.kv_heads else tp % f.kv_heads == 0


def candidates(model: str, node_gpus: int) -> list[tuple[int, int]]:
    """Rule 3: fewest GPUs first, TP inside a node, PP only at the widest valid TP, <= 8 stages."""
    tps = [t for t in (1, 2, 4, 8, 16) if t <= node_gpus and valid_tp(model, t)]
    widest = max(tps)
    pairs = [(t, 1) for t in tps] + [(widest, p) for p in range(2, 9)]
    return sorted(pairs, key=lambda p: (p[0] * p[1], p[1]))


def node_default(gpu: str) -> int:
    """GPUs per node when nothing else is known: 8, 4 for the RTX A4000 workstation card."""
    return 4 if gpu == "RTX-A4000" else 8


def request(model: str, gpu: str = "H100-80GB", **kwargs: Any) -> Request:
    """A planner request for a preset at its full context unless ``max_model_len`` is given."""
    m = preset(model)
    kwargs.setdefault("max_model_len", m.max_context)
    return Request(model=m, gpu=gpus.profile(gpu), **kwargs)


def assert_plan_matches(
    plan: Plan, model: str, gpu: str, tp: int, pp: int, exp: Expected, *, node: int | None = None
) -> None:
    """Every memory field of ``plan`` equals the independent computation."""
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (tp, pp)
    assert plan.gpus_per_replica == tp * pp
    assert plan.nodes_per_replica == math.ceil(tp * pp / (node or node_default(gpu)))
    assert plan.weight_bytes_per_gpu == exp.weights
    assert plan.overhead_bytes_per_gpu == exp.overhead
    assert plan.overhead.sampler == exp.sampler
    assert plan.kv_bytes_per_gpu == exp.kv
    assert plan.kv_bytes_per_token == exp.per_token
    assert plan.kv_cache_tokens == exp.kv // exp.per_token
    assert plan.max_num_seqs == exp.max_num_seqs
    assert plan.sequences_at_max_len == pytest.approx(exp.sequences(plan.max_model_len), rel=1e-12)
    assert plan.headroom_bytes_per_gpu >= plan.safety_margin_bytes
    expected_load = ENGINE_INIT + preset(model).weight_bytes // (tp * pp * LOAD_RATE)
    assert plan.expected_load_seconds == expected_load


# --- the inputs: facts, config.json copies, weight figures -------------------------------------


@pytest.mark.parametrize("name", sorted(FACTS))
def test_catalog_matches_the_documented_facts(name: str) -> None:
    f, m = FACTS[name], preset(name)
    assert m.num_layers == f.layers
    assert m.sliding_layers == f.sliding_layers
    assert m.sliding_window == f.window
    assert m.hidden_size == f.hidden
    assert m.num_attention_heads == f.heads
    assert m.max_context == f.max_context
    if f.mla_latent:
        assert (m.attention, m.mla_latent_dim) == ("mla", f.mla_latent)
    else:
        assert (m.attention, m.num_kv_heads, m.head_dim) == ("gqa", f.kv_heads, f.head_dim)
    assert (m.num_experts, m.experts_per_token) == (f.experts, f.topk)
    assert (m.moe_intermediate_size, m.vocab_size) == (f.width, f.vocab)


def test_every_preset_has_facts() -> None:
    assert set(presets()) == set(FACTS)


@pytest.mark.parametrize("name", sorted(n for n, f in FACTS.items() if f.config))
def test_facts_match_the_config_json_copies(name: str) -> None:
    f = FACTS[name]
    assert f.config is not None
    config = json.loads((REPO / "tests/data/models" / f.config / "config.json").read_text())
    assert config["num_hidden_layers"] == f.layers
    assert config["hidden_size"] == f.hidden
    assert config["num_attention_heads"] == f.heads
    assert config["max_position_embeddings"] == f.max_context
    if f.mla_latent:
        assert config["kv_lora_rank"] + config["qk_rope_head_dim"] == f.mla_latent
    else:
        assert config["num_key_value_heads"] == f.kv_heads
        assert config["head_dim"] == f.head_dim
    assert config["vocab_size"] == f.vocab
    experts = config.get("num_local_experts") or config.get("n_routed_experts")
    experts = experts or config.get("num_experts") or 0
    assert experts == f.experts
    assert config.get("num_experts_per_tok", 0) == f.topk
    assert config.get("moe_intermediate_size") or config["intermediate_size"] == f.width
    layer_types = config.get("layer_types", [])
    assert layer_types.count("sliding_attention") == f.sliding_layers
    if f.sliding_layers:
        assert config["sliding_window"] == f.window


def test_weight_figures_follow_their_documented_derivation() -> None:
    # gpt-oss: the checkpoints' safetensors index total_size; the planner adds the re-layout.
    assert preset("gpt-oss-120b").weight_bytes == 65_248_815_744
    assert preset("gpt-oss-20b").weight_bytes == 13_761_264_768
    # Their MXFP4 experts: 3 projections x layers x experts x 2880 x 2880 at 17 bytes per 32.
    assert preset("gpt-oss-120b").expert_weight_bytes == 3 * 36 * 128 * 2880 * 2880 * 17 // 32
    assert preset("gpt-oss-20b").expert_weight_bytes == 3 * 24 * 32 * 2880 * 2880 * 17 // 32
    assert preset("deepseek-r1").expert_weight_bytes == 0  # FP8: no MXFP4 re-layout
    # DeepSeek-V3/R1: the 688,574,839,360-byte checkpoint minus the MTP layer vLLM skips.
    for name in ("deepseek-v3", "deepseek-r1"):
        assert preset(name).weight_bytes == 688_574_839_360 - 15_424_227_552


def test_gpu_memory_is_what_the_driver_reports() -> None:
    # MiB that GPU feature discovery puts in nvidia.com/gpu.memory (an "80GB" H100: 81559).
    assert gpus.PROFILES["H100-80GB"].memory_mib == 81559
    assert gpus.PROFILES["H100-NVL"].memory_mib == 95830  # public nvidia-smi output
    assert gpus.PROFILES["H200"].memory_mib == 143771
    assert gpus.PROFILES["A10"].memory_mib == 23028  # A10 and A10G alike
    assert gpus.PROFILES["H100-80GB"].memory_bytes == 81559 * MIB


@pytest.mark.parametrize("gpu", list(gpus.PROFILES))
def test_mxfp4_kernel_follows_the_architecture(gpu: str) -> None:
    assert gpus.PROFILES[gpu].mxfp4_kernel == KERNEL[gpu]


@pytest.mark.parametrize(
    ("model", "kernel", "tp", "gib"),
    [
        # 4.03 GiB BF16 rest + 56.73 GiB experts; Marlin pads 2880 -> 2944 (TP 1), 1440 -> 1536
        # (TP 2), and the hidden size 2880 -> 3072; Triton on Hopper pads the hidden size.
        ("gpt-oss-120b", "marlin", 1, 66.55),
        ("gpt-oss-120b", "marlin", 2, 34.63),
        ("gpt-oss-120b", "triton", 1, 65.20),
        ("gpt-oss-120b", "triton", 2, 33.28),
        ("gpt-oss-20b", "marlin", 1, 13.81),
        ("gpt-oss-20b", "triton", 1, 13.58),
    ],
)
def test_mxfp4_relayout_by_kernel(model: str, kernel: str, tp: int, gib: float) -> None:
    got = planner.weight_bytes_per_gpu(preset(model), tp, 1, kernel)  # type: ignore[arg-type]
    assert got == weights_per_gpu(model, tp, 1, kernel)
    assert got / GIB == pytest.approx(gib, abs=0.005)


# --- KV bytes per token -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "per_token"), [(1, 36 * KIB), (2, 18 * KIB), (4, 9 * KIB), (8, 9 * KIB // 2)]
)
def test_gpt_oss_120b_kv_per_token_divides_by_tp(tp: int, per_token: int) -> None:
    # 18 full-attention layers x 2 (K, V) x 8 KV heads / TP x 64 head dim x 2 bytes.
    assert 18 * 2 * (8 // tp) * 64 * 2 == per_token
    plan = plan_request(request("gpt-oss-120b", tensor=tp, pipeline=1, max_model_len=4096))
    assert plan.kv_bytes_per_token == per_token


def test_gpt_oss_kv_figures_from_facts() -> None:
    m120, m20 = preset("gpt-oss-120b"), preset("gpt-oss-20b")
    assert m120.kv_bytes_per_token_per_layer(1) == 2 * KIB
    assert m120.full_attention_layers * m120.kv_bytes_per_token_per_layer(1) == 36 * KIB
    assert m20.full_attention_layers * m20.kv_bytes_per_token_per_layer(1) == 24 * KIB
    # One 131072-token sequence on 120b: 4.5 GiB.
    assert 131072 * 36 * KIB == 9 * GIB // 2


@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-r1", "kimi-k2"])
@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16])
def test_mla_kv_per_token_is_replicated_whatever_the_tp(name: str, tp: int) -> None:
    m = preset(name)
    assert m.num_layers * m.kv_bytes_per_token_per_layer(tp) == 70_272  # 61 x 576 x 2 B
    assert m.num_layers * m.kv_bytes_per_token_per_layer(tp, "fp8") == 35_136


def test_mla_plan_uses_the_replicated_latent() -> None:
    plan = plan_request(request("deepseek-r1", "H200", tensor=8, pipeline=1))
    assert plan.kv_bytes_per_token == 70_272


def test_gqa_kv_heads_replicate_beyond_their_count() -> None:
    """Qwen3-235B has 4 KV heads: TP 8 and 16 keep one head per rank, as TP 4 does."""
    m = preset("qwen3-235b-a22b")
    assert [m.kv_heads_per_rank(tp) for tp in (1, 2, 4, 8, 16)] == [4, 2, 1, 1, 1]
    assert m.kv_bytes_per_token_per_layer(8) == m.kv_bytes_per_token_per_layer(4) == 512
    plan = plan_request(request("qwen3-235b-a22b", tensor=8, pipeline=1))
    assert plan.kv_bytes_per_token == 192_512 // 4 == 94 * 512  # FACTS: 192,512 total, /TP to 4
    assert m.tp_problem(8) is None
    assert m.tp_problem(16) is None


def test_fp8_kv_cache_halves_kv_bytes() -> None:
    kwargs: dict[str, Any] = {"tensor": 1, "pipeline": 1, "max_model_len": 65536}
    auto = plan_request(request("gpt-oss-120b", **kwargs))
    fp8 = plan_request(request("gpt-oss-120b", kv_cache_dtype="fp8", **kwargs))
    assert auto.kv_bytes_per_token == 36 * KIB
    assert fp8.kv_bytes_per_token == 18 * KIB
    # The same budget, smaller elements: only the sampler differs (more tokens, more seqs).
    assert fp8.kv_bytes_per_gpu + fp8.overhead.sampler == (
        auto.kv_bytes_per_gpu + auto.overhead.sampler
    )
    assert fp8.kv_cache_tokens == fp8.kv_bytes_per_gpu // (18 * KIB)
    assert fp8.kv_cache_dtype == "fp8"
    exp = expected("gpt-oss-120b", "H100-80GB", 1, 1, 65536, elem=1)
    assert_plan_matches(fp8, "gpt-oss-120b", "H100-80GB", 1, 1, exp)


def test_fp8_kv_cache_needs_fewer_gpus_for_the_same_context() -> None:
    # BF16 KV: one H100 cannot hold a full 131072-token sequence with the margin; FP8 KV can.
    assert not expected("gpt-oss-120b", "H100-80GB", 1, 1, 131072).fits(131072)
    assert expected("gpt-oss-120b", "H100-80GB", 1, 1, 131072, elem=1).fits(131072)
    assert plan_request(request("gpt-oss-120b")).gpus_per_replica == 2
    fp8 = plan_request(request("gpt-oss-120b", kv_cache_dtype="fp8"))
    assert fp8.gpus_per_replica == 1


# --- gpt-oss on every GPU profile ---------------------------------------------------------------


@pytest.mark.parametrize("max_len", [131072, 16384])
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("gpu", list(gpus.PROFILES))
@pytest.mark.parametrize("model", ["gpt-oss-120b", "gpt-oss-20b"])
def test_gpt_oss_memory_on_every_gpu(model: str, gpu: str, tp: int, max_len: int) -> None:
    exp = expected(model, gpu, tp, 1, max_len)
    req = request(model, gpu, tensor=tp, pipeline=1, max_model_len=max_len)
    if not exp.fits(max_len):
        with pytest.raises(DoesNotFitError) as info:
            plan_request(req)
        if exp.kv <= 0:
            assert "leaves no room for KV cache" in str(info.value)
        else:
            assert f"{exp.sequences(max_len):.1f} sequences of {max_len} tokens" in str(info.value)
            assert "against a 0.5 GiB safety margin" in str(info.value)
        return
    plan = plan_request(req)
    assert_plan_matches(plan, model, gpu, tp, 1, exp)
    assert plan.max_model_len == max_len
    assert plan.gpu_memory_utilization == UTILIZATION
    assert plan.max_num_batched_tokens == batched_default(gpu)
    assert plan.expert_parallel is False  # MXFP4, no FP8 blocks
    assert plan.headroom_bytes_per_gpu == exp.headroom(max_len) >= MARGIN


@pytest.mark.parametrize("gpu", list(gpus.PROFILES))
@pytest.mark.parametrize("model", ["gpt-oss-120b", "gpt-oss-20b"])
def test_gpt_oss_smallest_plan_on_every_gpu(model: str, gpu: str) -> None:
    node = node_default(gpu)
    assert gpus.PROFILES[gpu].gpus_per_node == node
    order = candidates(model, node)
    fitting = [(tp, pp) for tp, pp in order if expected(model, gpu, tp, pp, 131072).fits(131072)]
    plan = plan_request(request(model, gpu))
    tp, pp = fitting[0]
    assert_plan_matches(plan, model, gpu, tp, pp, expected(model, gpu, tp, pp, 131072))


def test_gpt_oss_120b_on_one_h100_by_hand() -> None:
    """The headline case, worked through: one H100 at 0.90 leaves 3.2 GiB of KV cache, less than
    the 4.5 GiB of one 131072-token sequence plus the margin, so the plan is TP 2."""
    budget = int(81559 * MIB * 0.9)
    # Triton on Hopper: 60.91e9 B of experts with the hidden size padded 2880 -> 3072, the
    # 4.33e9 B BF16 rest as is, 1% allowance.
    experts = 3 * 36 * 128 * 2880 * 2880 * 17 // 32
    weights = math.ceil((65_248_815_744 - experts + experts * 3072 / 2880) * 1.01)
    activations = 8192 * (2880 * 24 + 4 * (3 * 2880 + 2880) * 2)
    fixed = GIB + activations + 3 * GIB // 4  # non-torch, activations, CUDA graphs
    before_sampler = budget - weights - fixed
    max_num_seqs = before_sampler // (36 * KIB) // 2048
    assert max_num_seqs == 49
    sampler = 49 * 201088 * 36
    kv = before_sampler - sampler
    assert kv == 3_410_904_277  # 3.2 GiB
    per_seq = 18 * (128 + 16) * 2 * KIB  # sliding layers hold the window plus a block
    need = 131072 * 36 * KIB + per_seq
    assert kv - need < MARGIN  # short of one full sequence plus the margin
    plan = plan_request(request("gpt-oss-120b"))
    assert (plan.tensor_parallel_size, plan.gpus_per_replica) == (2, 2)
    assert plan.headroom_bytes_per_gpu == plan.kv_bytes_per_gpu - need // 2  # KV heads split
    # The plan says what context one GPU holds: the largest multiple of 1024 with the margin.
    one_gpu = int((kv - MARGIN - per_seq) / (36 * KIB)) // 1024 * 1024
    assert one_gpu == 76800
    assert plan.notes[0] == (
        "1 x H100-80GB (TP=1 PP=1) fits spec.serving.maxContextLength=76800 (not 131072) "
        "with the 0.5 GiB safety margin"
    )
    assert plan.summary.endswith("; " + plan.notes[0])  # status.plan.summary says it too
    single = plan_request(request("gpt-oss-120b", max_model_len=one_gpu))
    assert single.gpus_per_replica == 1
    with pytest.raises(DoesNotFitError):
        plan_request(request("gpt-oss-120b", max_model_len=one_gpu + 1024, count=1))


def test_plan_is_conservative_against_a_public_measurement() -> None:
    """FACTS: one H100 at 0.95 utilization left ~13 GB KV, about 370K tokens, in a public run.
    Gantry's weight and overhead figures are higher than that run's, so it plans fewer tokens,
    but not wildly fewer."""
    plan = plan_request(request("gpt-oss-120b", gpu_memory_utilization=0.95))
    assert plan.gpus_per_replica == 1
    assert 0.5 * 370_000 < plan.kv_cache_tokens < 370_000


# --- calibration against public vLLM figures ----------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One public vLLM start-up: inputs and what vLLM reported (None: not reported)."""

    source: str
    model: str
    gpu: str  # the profile with the same memory and MXFP4 kernel path
    tp: int
    util: float | None
    batched: int | None
    max_num_seqs: int | None
    context: int
    kernel: Mxfp4Kernel  # MXFP4 kernel the log shows
    weights_gib: float | None  # "Model loading took"
    kv_gib: float | None  # "Available KV cache memory"
    outcome: str  # "out of memory", "runs" or "" (only weights reported)


CALIBRATION = [
    Measured(
        "https://github.com/vllm-project/vllm/issues/23278 (vLLM 0.10.1, defaults; the log "
        "shows the Marlin MXFP4 path on H100)",
        "gpt-oss-120b", "H100-80GB", 1, 0.90, 8192, 1024, 131072, "marlin", 65.97, -2.14,
        "out of memory",
    ),
    Measured(
        "https://github.com/vllm-project/vllm/issues/23278 (title: gpt-oss-20b works on the "
        "same H100 at defaults)",
        "gpt-oss-20b", "H100-80GB", 1, 0.90, 8192, 1024, 131072, "marlin", None, None, "runs",
    ),
    Measured(
        "https://github.com/vllm-project/vllm/issues/27508 (--gpu-memory-utilization 0.95 "
        "--max-num-batched-tokens 1024: 1.71 GiB, short of one 131072-token sequence)",
        "gpt-oss-120b", "H100-80GB", 1, 0.95, 1024, 1024, 131072, "triton", None, 1.71,
        "out of memory",
    ),
    Measured(
        "https://github.com/vllm-project/vllm/issues/33155 (vLLM 0.14.1, Triton MXFP4 backend)",
        "gpt-oss-120b", "H100-80GB", 1, None, None, None, 131072, "triton", 64.38, None, "",
    ),
    Measured(
        "https://github.com/vllm-project/recipes/blob/main/OpenAI/GPT-OSS.md (TP 1 on H100 at "
        "default settings runs out of memory; the pinned vLLM's defaults: 0.92, 8192, 1024)",
        "gpt-oss-120b", "H100-80GB", 1, 0.92, 8192, 1024, 131072, "triton", None, None,
        "out of memory",
    ),
    Measured(
        "https://github.com/vllm-project/recipes/blob/main/OpenAI/GPT-OSS.md (8 x H100 "
        "evaluation setup: TP 8, 0.85, 10240 batched tokens, 128 sequences)",
        "gpt-oss-120b", "H100-80GB", 8, 0.85, 10240, 128, 131072, "triton", None, None, "runs",
    ),
    Measured(
        "https://myoceane.fr/index.php/ai-vllm-a100-gemma-4/ (vLLM 0.19.0 on an A100 80GB, "
        "--gpu-memory-utilization 0.65, A100 defaults 2048 tokens and 256 sequences)",
        "gpt-oss-20b", "A100-80GB", 1, 0.65, 2048, 256, 131072, "marlin", 13.72, 36.56, "runs",
    ),
    Measured(
        "https://github.com/vllm-project/vllm/issues/22331 (an RTX 3090, Ampere like the A10: "
        "the Marlin MXFP4 path)",
        "gpt-oss-20b", "A10", 1, None, None, None, 131072, "marlin", 12.88, None, "",
    ),
]  # fmt: skip


def test_calibration_has_enough_rows() -> None:
    assert len(CALIBRATION) >= 8
    assert {row.model for row in CALIBRATION} == {"gpt-oss-120b", "gpt-oss-20b"}


@pytest.mark.parametrize("row", CALIBRATION, ids=lambda r: f"{r.model}-{r.gpu}-tp{r.tp}")
def test_planner_is_conservative_on_every_calibration_row(row: Measured) -> None:
    """Never fewer weights, never more KV than vLLM reported, never a plan where it ran out of
    memory; and the setups that ran are accepted."""
    weights = planner.weight_bytes_per_gpu(preset(row.model), row.tp, 1, row.kernel)
    assert weights == weights_per_gpu(row.model, row.tp, 1, row.kernel)
    if row.weights_gib is not None:
        assert weights / GIB >= row.weights_gib
    if row.util is None:
        return
    req = request(
        row.model,
        row.gpu,
        max_model_len=row.context,
        gpu_memory_utilization=row.util,
        max_num_batched_tokens=row.batched,
        max_num_seqs=row.max_num_seqs,
        mxfp4_kernel=row.kernel,
        tensor=row.tp,
        pipeline=1,
    )
    mem = planner.estimate(req, row.tp, 1)
    exp = expected(
        row.model, row.gpu, row.tp, 1, row.context, util=row.util, batched=row.batched,
        max_num_seqs=row.max_num_seqs, kernel=row.kernel,
    )  # fmt: skip
    assert (mem.kv, mem.weights, mem.overhead.total) == (exp.kv, exp.weights, exp.overhead)
    if row.kv_gib is not None:
        assert mem.kv / GIB <= row.kv_gib
    if row.outcome == "out of memory":
        with pytest.raises(DoesNotFitError):
            plan_request(req)
    if row.outcome == "runs":
        assert plan_request(req).gpus_per_replica == row.tp


# --- every catalog model on H100 and H200 -------------------------------------------------------

# (TP, PP) of the smallest plan at the model's full context and one sequence, worked by hand:
# H100 budget 71.7 GiB, H200 126.4 GiB per GPU (0.90 x device memory); e.g. deepseek on H100:
# 626.9 GiB / 8 = 78.4 GiB does not fit, / 16 = 39.2 GiB leaves 26.9 GiB for 31 layers x
# 1152 B x 163840 tokens = 5.4 GiB. Kimi K2 on H200: 958.5 GiB / 8 = 119.8 GiB + 5 GiB
# overhead leaves 1.6 GiB, less than one 4.4 GiB sequence, hence TP 8 x PP 2 (the recipe's
# 16 GPUs). gpt-oss-120b on one H100 leaves 3.2 GiB, short of 4.5 GiB: TP 2.
SMALLEST: dict[tuple[str, str], tuple[int, int]] = {
    ("gpt-oss-120b", "H100-80GB"): (2, 1),
    ("gpt-oss-20b", "H100-80GB"): (1, 1),
    ("deepseek-v3", "H100-80GB"): (8, 2),
    ("deepseek-r1", "H100-80GB"): (8, 2),
    ("kimi-k2", "H100-80GB"): (8, 2),
    ("qwen3-235b-a22b", "H100-80GB"): (8, 1),
    ("qwen3-235b-a22b-fp8", "H100-80GB"): (4, 1),
    ("qwen3-32b", "H100-80GB"): (2, 1),  # recipe: TP 2
    ("glm-4.5", "H100-80GB"): (8, 2),  # recipe: BF16 needs 16 H100
    ("glm-4.5-fp8", "H100-80GB"): (8, 1),  # recipe: FP8 TP 8 on H100
    ("glm-4.5-air", "H100-80GB"): (4, 1),
    ("gpt-oss-120b", "H200"): (1, 1),
    ("gpt-oss-20b", "H200"): (1, 1),
    ("deepseek-v3", "H200"): (8, 1),  # recipe: 8 x H200
    ("deepseek-r1", "H200"): (8, 1),
    ("kimi-k2", "H200"): (8, 2),
    ("qwen3-235b-a22b", "H200"): (4, 1),  # recipe: TP 4 on H200
    ("qwen3-235b-a22b-fp8", "H200"): (2, 1),
    ("qwen3-32b", "H200"): (1, 1),
    ("glm-4.5", "H200"): (8, 1),  # recipe: or 8 H200
    ("glm-4.5-fp8", "H200"): (4, 1),
    ("glm-4.5-air", "H200"): (2, 1),
}


def test_smallest_table_covers_every_preset() -> None:
    assert {m for m, _ in SMALLEST} == set(presets())


@pytest.mark.parametrize(("model", "gpu"), sorted(SMALLEST))
def test_smallest_plan_for_every_catalog_model(model: str, gpu: str) -> None:
    tp, pp = SMALLEST[(model, gpu)]
    max_len = FACTS[model].max_context
    plan = plan_request(request(model, gpu))
    if plan.layout == "data-parallel":
        # The same GPU count as the pipeline candidate; the layout choice itself is checked by
        # test_multi_node_layout_is_the_one_holding_more_sequences.
        assert plan.gpus_per_replica == tp * pp
        assert_dp_plan_matches(plan, expected_dp(model, gpu, tp * pp, max_len))
        return
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (tp, pp)
    assert plan.gpus_per_replica == tp * pp
    assert plan.nodes_per_replica == (2 if tp * pp == 16 else 1)
    assert plan.expert_parallel is False  # every chosen TP slices FP8 blocks evenly
    exp = expected(model, gpu, tp, pp, max_len)
    assert exp.fits(max_len)
    assert_plan_matches(plan, model, gpu, tp, pp, exp)
    # Every smaller candidate, in the documented order, does not fit.
    order = candidates(model, 8)
    earlier = order[: order.index((tp, pp))]
    for etp, epp in earlier:
        assert not expected(model, gpu, etp, epp, max_len).fits(max_len), (etp, epp)
    # One step down, explicitly requested, is refused by the planner too.
    if earlier:
        etp, epp = earlier[-1]
        with pytest.raises(DoesNotFitError):
            plan_request(request(model, gpu, tensor=etp, pipeline=epp))


def assert_dp_plan_matches(plan: Plan, exp: Expected) -> None:
    assert plan.layout == "data-parallel"
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 1)
    assert plan.data_parallel_size == plan.gpus_per_replica == exp.ranks
    assert plan.data_parallel_size_local == plan.node_gpus
    assert plan.nodes_per_replica == exp.ranks // plan.node_gpus
    assert plan.expert_parallel is True
    assert plan.weight_bytes_per_gpu == exp.weights
    assert plan.overhead_bytes_per_gpu == exp.overhead
    assert plan.kv_bytes_per_gpu == exp.kv
    assert plan.kv_bytes_per_token == exp.per_token
    assert plan.kv_cache_tokens == exp.kv // exp.per_token * exp.ranks
    assert plan.max_num_seqs == exp.max_num_seqs
    assert plan.sequences_at_max_len == pytest.approx(exp.sequences(plan.max_model_len), rel=1e-12)
    # Each rank loads the replicated weights and its share of the experts.
    assert plan.expected_load_seconds == ENGINE_INIT + exp.weights // LOAD_RATE


# --- multi-node layouts --------------------------------------------------------------------------


def test_routed_expert_bytes_follow_the_config() -> None:
    for name in DENSE_LAYERS:
        m = preset(name)
        assert m.dense_layers == DENSE_LAYERS[name]
        assert m.routed_expert_bytes == routed_expert_bytes(name)
        # The rest (attention, embeddings, dense and shared MLPs) is a few percent of the total.
        rest = m.weight_bytes - m.routed_expert_bytes
        assert 0.01 < rest / m.weight_bytes < 0.04, (name, rest)


@pytest.mark.parametrize("name", sorted(DENSE_LAYERS))
def test_dense_layers_match_the_config_json(name: str) -> None:
    config = json.loads((REPO / "tests/data/models" / name / "config.json").read_text())
    assert config["first_k_dense_replace"] == DENSE_LAYERS[name]
    assert config["quantization_config"]["weight_block_size"] == [FP8_BLOCK, FP8_BLOCK]


MULTI_NODE_GPUS = ["H100-80GB", "H100-NVL", "H200", "B200", "L40S", "MI300X"]


@pytest.mark.parametrize("gpu", MULTI_NODE_GPUS)
@pytest.mark.parametrize("model", sorted(DENSE_LAYERS))
@pytest.mark.parametrize("context", [None, 32768])
def test_multi_node_layout_is_the_one_holding_more_sequences(
    model: str, gpu: str, context: int | None
) -> None:
    """Both layouts at the plan's GPU count, recomputed: the plan is the one that fits and holds
    more whole full-context sequences per replica (pipeline on a tie)."""
    max_len = context or FACTS[model].max_context
    try:
        plan = plan_request(request(model, gpu, max_model_len=max_len))
    except DoesNotFitError:
        return
    if plan.nodes_per_replica == 1:
        assert plan.layout == "single-node"
        return
    g = plan.gpus_per_replica
    pipe = expected(model, gpu, 8, g // 8, max_len)
    dp_ok = FACTS[model].experts % g == 0
    data = expected_dp(model, gpu, g, max_len)
    pipe_fits, dp_fits = pipe.fits(max_len), dp_ok and data.fits(max_len)
    assert pipe_fits or dp_fits
    if dp_fits and (not pipe_fits or data.whole_sequences(max_len) > pipe.whole_sequences(max_len)):
        assert_dp_plan_matches(plan, data)
    else:
        assert plan.layout == "pipeline"
        assert_plan_matches(plan, model, gpu, 8, g // 8, pipe)


def test_there_are_plans_of_both_multi_node_layouts() -> None:
    layouts = {
        plan_request(request(model, gpu)).layout
        for model in DENSE_LAYERS
        for gpu in MULTI_NODE_GPUS
    }
    assert {"pipeline", "data-parallel"} <= layouts


def test_kimi_k2_on_h200_runs_data_parallel_by_the_arithmetic() -> None:
    """The recipe's DP 16 + EP across two H200 nodes: TP 8 x PP 2 holds 13 whole sequences of
    131072 tokens per replica; 16 DP ranks hold 2 each (32)."""
    pipe = expected("kimi-k2", "H200", 8, 2, 131072)
    data = expected_dp("kimi-k2", "H200", 16, 131072)
    assert pipe.fits(131072)
    assert data.fits(131072)
    assert data.whole_sequences(131072) > pipe.whole_sequences(131072)
    plan = plan_request(request("kimi-k2", "H200"))
    assert_dp_plan_matches(plan, data)
    assert (plan.data_parallel_size, plan.data_parallel_size_local) == (16, 8)
    assert plan.summary.startswith(
        "DP=16 (8 per node) TP=1 EP on 16 x H200 (2 nodes, data-parallel attention, experts "
        "across nodes)"
    )
    assert plan.to_status()["layout"] == "data-parallel"
    assert plan.to_status()["dataParallelSize"] == 16
    assert "data-parallel attention: 16 DP ranks of TP 1 (8 per pod)" in plan.multi_node


def test_data_parallel_does_not_fit_where_replicated_weights_and_gathered_tokens_do_not() -> None:
    # DeepSeek on 16 H100: non-expert weights on every rank plus the gathered MoE batch leave
    # nothing; the pipeline layout is the plan.
    assert not expected_dp("deepseek-r1", "H100-80GB", 16, 163840).fits(163840)
    assert plan_request(request("deepseek-r1", "H100-80GB")).layout == "pipeline"
    # A smaller batch shrinks the gathered activations: then DP fits at a shorter context.
    small = expected_dp("deepseek-r1", "H100-80GB", 16, 16384, batched=512)
    assert small.fits(16384)


def test_target_concurrency_is_spread_over_the_data_parallel_ranks() -> None:
    # 20 sequences over 16 ranks: every rank must hold ceil(20 / 16) = 2.
    data = expected_dp("kimi-k2", "H200", 16, 65536, concurrency=20)
    plan = plan_request(request("kimi-k2", "H200", max_model_len=65536, target_concurrency=20))
    assert_dp_plan_matches(plan, data)
    assert plan.headroom_bytes_per_gpu == data.headroom(65536, 20)
    assert plan.headroom_bytes_per_gpu == data.kv - 2 * 65536 * data.per_token


@pytest.mark.parametrize(
    "override",
    [{"tensor": 8}, {"pipeline": 2}, {"expert": False}],
)
def test_explicit_parallelism_keeps_the_pipeline_layout(override: dict[str, Any]) -> None:
    plan = plan_request(request("kimi-k2", "H200", **override))
    assert plan.layout == "pipeline"
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 2)


def test_an_explicit_count_may_run_data_parallel() -> None:
    plan = plan_request(request("kimi-k2", "H200", count=16))
    assert_dp_plan_matches(plan, expected_dp("kimi-k2", "H200", 16, 131072))


def test_data_parallel_needs_whole_nodes_and_an_even_expert_split() -> None:
    allowed = planner._data_parallel_allowed
    assert allowed(request("kimi-k2", "H200"), 16)
    assert allowed(request("kimi-k2", "H200"), 24)  # 384 experts / 24 = 16
    assert not allowed(request("deepseek-r1", "H200"), 24)  # 256 experts / 24
    assert not allowed(request("deepseek-r1", "H200"), 8)  # one node: single-node plan
    assert not allowed(request("deepseek-r1", "H200", gpus_per_node=6), 8)  # not whole nodes
    assert not allowed(request("glm-4.5", "H100-80GB"), 16)  # GQA attention


def test_pods_hold_whole_stages() -> None:
    plan = plan_request(request("deepseek-r1", "H200", tensor=4, pipeline=4))
    assert [(m.worker_index, m.first_stage, m.last_stage, m.first_rank, m.last_rank)
            for m in plan.group] == [(0, 0, 1, 0, 7), (1, 2, 3, 8, 15)]  # fmt: skip
    assert plan.group[0].describe(plan.layout) == (
        "worker 0 (leader): API server, 8 GPUs, pipeline stages 0-1 (ranks 0-7)"
    )
    # 12 GPUs over two 8-GPU nodes would put 6 on each, splitting a tensor group of 4.
    with pytest.raises(DoesNotFitError, match=r"TP=4 x PP=3 = 12 GPUs over 2 nodes"):
        plan_request(request("deepseek-r1", "H200", tensor=4, pipeline=3))


def test_multi_node_plan_reports_its_nodes() -> None:
    plan = plan_request(request("kimi-k2", "H100-80GB"))
    assert plan.nodes_per_replica == 2
    assert plan.gpus_per_node == 8
    assert "TP=8 PP=2 on 16 x H100-80GB (2 nodes, pipeline stages across nodes)" in plan.summary
    assert plan.to_status()["nodesPerReplica"] == 2
    assert plan.to_status()["layout"] == "pipeline"


def test_gpus_per_node_override_spreads_stages_over_more_nodes() -> None:
    # Four GPUs per node: TP is capped at 4; 12 GPUs hold 79.9 GiB each (too much), 16 fit.
    assert not expected("kimi-k2", "H100-80GB", 4, 3, 131072).fits(131072)
    assert expected("kimi-k2", "H100-80GB", 4, 4, 131072).fits(131072)
    plan = plan_request(request("kimi-k2", gpus_per_node=4))
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (4, 4)
    assert (plan.nodes_per_replica, plan.gpus_per_node) == (4, 4)


@pytest.mark.parametrize("pp", [2, 3, 4, 5])
def test_pipeline_stages_hold_their_share_of_layers(pp: int) -> None:
    """Each stage holds its layers rounded up: 61 / 4 -> 16 layers, 18 / 4 -> 5 of each kind."""
    plan = plan_request(request("deepseek-r1", "H200", tensor=8, pipeline=pp))
    assert plan.kv_bytes_per_token == math.ceil(61 / pp) * 1152
    assert_plan_matches(
        plan, "deepseek-r1", "H200", 8, pp, expected("deepseek-r1", "H200", 8, pp, 163840)
    )
    oss = plan_request(request("gpt-oss-120b", tensor=1, pipeline=pp))
    assert oss.kv_bytes_per_token == math.ceil(18 / pp) * 2 * KIB
    assert_plan_matches(
        oss,
        "gpt-oss-120b",
        "H100-80GB",
        1,
        pp,
        expected("gpt-oss-120b", "H100-80GB", 1, pp, 131072),
    )


# --- valid tensor sizes -------------------------------------------------------------------------


def test_gpt_oss_tensor_sizes() -> None:
    m = preset("gpt-oss-120b")
    assert [tp for tp in (1, 2, 3, 4, 5, 6, 8) if m.tp_problem(tp) is None] == [1, 2, 4, 8]
    assert m.tp_problem(3) == "64 attention heads are not divisible by tensor parallel size 3"
    assert m.tp_problem(0) is not None


@pytest.mark.parametrize("override", [{"tensor": 3}, {"count": 3}, {"tensor": 3, "pipeline": 1}])
def test_gpt_oss_tp_3_is_refused_naming_the_rule(override: dict[str, Any]) -> None:
    with pytest.raises(DoesNotFitError) as info:
        plan_request(request("gpt-oss-120b", **override))
    assert str(info.value) == (
        "spec.parallelism: gpt-oss-120b: 64 attention heads are not divisible by tensor "
        "parallel size 3"
    )


def _custom(**overrides: object) -> ModelArch:
    base: dict[str, object] = {
        "name": "six-kv",
        "repo": "example/six-kv",
        "architecture": "LlamaForCausalLM",
        "numLayers": 40,
        "hiddenSize": 6144,
        "numAttentionHeads": 48,
        "numKvHeads": 6,
        "headDim": 128,
        "maxContext": 32768,
        "weightBytes": 200 * GIB,
        "weightDtype": "bf16",
    }
    base.update(overrides)
    return arch_from_mapping(base)


def test_gqa_heads_must_split_or_replicate_evenly() -> None:
    m = _custom()
    assert m.tp_problem(2) is None
    assert m.tp_problem(12) is None  # a multiple of 6: each rank holds a replica
    assert m.tp_problem(4) == "6 KV heads cannot be split or replicated evenly over 4 ranks"
    assert m.tp_problem(8) == "6 KV heads cannot be split or replicated evenly over 8 ranks"
    with pytest.raises(DoesNotFitError, match="6 KV heads cannot be split"):
        plan_request(Request(model=m, gpu=gpus.profile("H100-80GB"), max_model_len=8192, tensor=4))


def test_pipeline_stages_use_the_widest_valid_tensor_size() -> None:
    """TP 4 and 8 are invalid for 6 KV heads, so 200 GiB on 80 GB GPUs becomes TP 2 x PP 2."""
    m = _custom()
    plan = plan_request(Request(model=m, gpu=gpus.profile("H100-80GB"), max_model_len=32768))
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 2)
    assert plan.kv_bytes_per_token == 20 * 2 * 3 * 128 * 2  # 20 layers per stage, 3 heads/rank


def test_fp8_blocks_turn_on_expert_parallel() -> None:
    """Qwen3-235B-FP8: expert width 1536 = 12 blocks of 128, so TP 8 slices 1.5 blocks."""
    m = preset("qwen3-235b-a22b-fp8")
    assert m.tp_problem(4) is None  # 384 = 3 blocks
    problem = m.tp_problem(8)
    assert problem is not None
    assert "FP8 block quantisation" in problem
    assert "use expert parallel" in problem
    assert m.tp_problem(8, expert_parallel=True) is None
    assert plan_request(request(m.name, tensor=4)).expert_parallel is False
    assert plan_request(request(m.name, tensor=8)).expert_parallel is True
    # The smallest plan on L40S (48 GB) is TP 8 and turns expert parallel on by itself.
    assert not expected(m.name, "L40S", 4, 1, 40960).fits(40960)
    on_l40s = plan_request(request(m.name, "L40S"))
    assert (on_l40s.tensor_parallel_size, on_l40s.expert_parallel) == (8, True)


def test_fp8_blocks_without_expert_parallel_are_refused() -> None:
    with pytest.raises(DoesNotFitError, match=r"^spec\.parallelism: .*FP8 block quantisation"):
        plan_request(request("qwen3-235b-a22b-fp8", tensor=8, expert=False))


def test_explicit_expert_parallel_is_kept() -> None:
    assert plan_request(request("qwen3-235b-a22b-fp8", tensor=4, expert=True)).expert_parallel
    # A dense model never gets expert parallel on its own.
    assert plan_request(request("qwen3-32b", tensor=8)).expert_parallel is False


@pytest.mark.parametrize("name", ["deepseek-v3", "kimi-k2"])
def test_deepseek_style_fp8_blocks_allow_tp_16(name: str) -> None:
    m = preset(name)
    assert m.tp_problem(16) is None  # 2048 / 16 = 128: one whole block


# --- explicit overrides -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "gpu", "override", "layout"),
    [
        ("gpt-oss-20b", "H100-80GB", {"count": 2}, (2, 1)),
        ("gpt-oss-20b", "H100-80GB", {"count": 8}, (8, 1)),
        ("gpt-oss-120b", "H100-80GB", {"count": 16}, (8, 2)),
        ("gpt-oss-20b", "H100-80GB", {"count": 4, "pipeline": 2}, (2, 2)),
        ("gpt-oss-20b", "H100-80GB", {"count": 4, "tensor": 4}, (4, 1)),
        ("gpt-oss-20b", "H100-80GB", {"tensor": 2}, (2, 1)),
        ("gpt-oss-20b", "H100-80GB", {"pipeline": 2}, (1, 2)),
        ("gpt-oss-20b", "H100-80GB", {"tensor": 2, "pipeline": 2}, (2, 2)),
        ("gpt-oss-120b", "L40S", {"tensor": 1}, (1, 2)),  # 65 GiB > 40.5 GiB: two stages
        ("gpt-oss-20b", "L4", {"count": 8}, (8, 1)),  # 8-GPU L4 servers: one tensor group
        ("gpt-oss-20b", "L4", {"count": 8, "gpus_per_node": 4}, (4, 2)),  # TP within 4 GPUs
    ],
)
def test_explicit_counts_and_sizes(
    model: str, gpu: str, override: dict[str, Any], layout: tuple[int, int]
) -> None:
    plan = plan_request(request(model, gpu, **override))
    tp, pp = layout
    max_len = FACTS[model].max_context
    exp = expected(model, gpu, tp, pp, max_len)
    assert_plan_matches(plan, model, gpu, tp, pp, exp, node=override.get("gpus_per_node"))


def test_tensor_override_adds_stages_only_as_needed() -> None:
    assert not expected("gpt-oss-120b", "L40S", 1, 1, 131072).fits(131072)
    assert expected("gpt-oss-120b", "L40S", 1, 2, 131072).fits(131072)


def test_utilization_and_batch_overrides_change_the_budget() -> None:
    plan = plan_request(
        request(
            "gpt-oss-20b",
            tensor=1,
            gpu_memory_utilization=0.95,
            max_num_batched_tokens=2048,
            max_num_seqs=32,
        )
    )
    exp = expected(
        "gpt-oss-20b", "H100-80GB", 1, 1, 131072, util=0.95, batched=2048, max_num_seqs=32
    )
    assert_plan_matches(plan, "gpt-oss-20b", "H100-80GB", 1, 1, exp)
    assert (plan.gpu_memory_utilization, plan.max_num_batched_tokens) == (0.95, 2048)
    assert plan.max_num_seqs == 32


def test_max_num_seqs_never_drops_below_the_target_concurrency() -> None:
    small = plan_request(request("gpt-oss-20b", max_model_len=1024, target_concurrency=8))
    assert small.max_num_seqs == MAX_SEQS_CAP  # millions of tokens: the cap applies
    large = plan_request(request("gpt-oss-20b", max_model_len=1024, target_concurrency=512))
    assert large.max_num_seqs == 512  # the guarantee wins over the cap


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"count": 12},
            "spec.gpu.count=12 cannot be split into tensor-parallel groups of at most 8 GPUs "
            "per node; use a multiple of 8 or at most 8",
        ),
        (
            {"count": 6, "tensor": 4},
            "spec.gpu.count=6 is not a multiple of spec.parallelism.tensor=4; set count to a "
            "multiple of the tensor size",
        ),
        (
            {"count": 8, "pipeline": 3},
            "spec.gpu.count=8 is not a multiple of spec.parallelism.pipeline=3",
        ),
        (
            {"count": 4, "tensor": 2, "pipeline": 4},
            "spec.gpu.count=4 must equal spec.parallelism.tensor x spec.parallelism.pipeline = 8",
        ),
    ],
)
def test_impossible_counts_are_explained(override: dict[str, Any], message: str) -> None:
    with pytest.raises(DoesNotFitError) as info:
        plan_request(request("gpt-oss-20b", **override))
    assert str(info.value) == message


# --- does-not-fit messages ----------------------------------------------------------------------


def test_too_small_count_names_the_smallest_fit_and_a_context_that_fits() -> None:
    req = request("gpt-oss-120b", count=1, target_concurrency=4)
    exp = expected("gpt-oss-120b", "H100-80GB", 1, 1, 131072, concurrency=4)
    fitting = int(((exp.kv - MARGIN) / 4 - exp.per_seq) / exp.per_token) // 1024 * 1024
    assert fitting == 18432
    with pytest.raises(DoesNotFitError) as info:
        plan_request(req)
    assert str(info.value) == (
        "gpt-oss-120b at 131072 context x 4 concurrent sequences needs at least "
        "2 x H100-80GB; spec.gpu.count=1 leaves "
        f"{exp.kv / GIB:.1f} GiB per GPU for KV cache, {exp.sequences(131072):.1f} sequences "
        f"of 131072 tokens, headroom {exp.headroom(131072, 4) / GIB:.1f} GiB against a 0.5 GiB "
        "safety margin; spec.serving.maxContextLength=18432 would fit"
    )
    # The suggestion is right: 18432 fits, the next 1024 step does not.
    assert plan_request(replace(req, max_model_len=18432)).gpus_per_replica == 1
    with pytest.raises(DoesNotFitError):
        plan_request(replace(req, max_model_len=18432 + 1024))


def test_weights_that_do_not_fit_are_explained() -> None:
    with pytest.raises(DoesNotFitError) as info:
        plan_request(request("gpt-oss-120b", "A100-40GB", count=1))
    # 40960 MiB x 0.9 = 36.0 GiB; Marlin-padded 66.6 GiB + 2.1 GiB overhead is 32.6 GiB too much.
    exp = expected("gpt-oss-120b", "A100-40GB", 1, 1, 131072)
    assert exp.weights / GIB == pytest.approx(66.55, abs=0.01)
    assert exp.overhead / GIB == pytest.approx(2.07, abs=0.01)
    assert str(info.value) == (
        "gpt-oss-120b at 131072 context needs at least 4 x A100-40GB; spec.gpu.count=1 leaves "
        "no room for KV cache: weights 66.6 GiB + overhead 2.1 GiB per GPU exceed 36.0 GiB "
        "(A100-40GB at 0.90 utilization; short by 32.6 GiB)"
    )


def test_a100_40gb_tp_2_cannot_even_load_gpt_oss_120b() -> None:
    """The issue's case: Marlin pads each rank's experts (1440 -> 1536 wide, hidden 3072)."""
    exp = expected("gpt-oss-120b", "A100-40GB", 2, 1, 131072)
    assert exp.kv < 0
    with pytest.raises(DoesNotFitError, match="leaves no room for KV cache"):
        plan_request(request("gpt-oss-120b", "A100-40GB", tensor=2, pipeline=1))


def test_multi_node_smallest_fit_names_its_nodes() -> None:
    with pytest.raises(DoesNotFitError) as info:
        plan_request(request("kimi-k2", count=8))
    assert str(info.value).startswith(
        "kimi-k2 at 131072 context needs at least 16 x H100-80GB (2 nodes); "
        "spec.gpu.count=8 leaves no room for KV cache"
    )


def test_nothing_fits_anywhere_lists_the_fixes() -> None:
    """Kimi K2 on 4-GPU L4 nodes: even 32 GPUs (8 stages of TP 4) hold 30 GiB each."""
    with pytest.raises(DoesNotFitError) as info:
        plan_request(request("kimi-k2", "L4", gpus_per_node=4))
    message = str(info.value)
    assert message.startswith(
        "kimi-k2 at 131072 context does not fit on up to 32 x L4: choose a larger "
        "spec.gpu.type, lower spec.serving.maxContextLength or targetConcurrency, or use "
        "kvCacheDtype fp8; TP x PP=32 leaves no room for KV cache: weights 30.0 GiB"
    )
    with pytest.raises(DoesNotFitError, match=r"^kimi-k2 at 131072 context does not fit on L4 "):
        plan_request(request("kimi-k2", "L4", count=4, gpus_per_node=4))


def test_kv_limited_unconstrained_failure_suggests_a_context() -> None:
    """Two hundred full-context sequences on L4s: even 64 GPUs hold fewer."""
    with pytest.raises(DoesNotFitError) as info:
        plan_request(request("gpt-oss-120b", "L4", target_concurrency=200))
    message = str(info.value)
    assert "does not fit on up to 64 x L4" in message
    assert "TP x PP=64 leaves" in message
    assert "spec.serving.maxContextLength=" in message


#: Compute capability each weight format needs (docs/planner.md rule 1).
NEEDS = {"mxfp4": (8, 0), "bf16": (8, 0), "fp8": (8, 9)}


@pytest.mark.parametrize("name", sorted(presets()))
def test_catalog_compute_capability_follows_the_weight_format(name: str) -> None:
    m = preset(name)
    assert m.min_compute_capability == NEEDS[m.weight_dtype]


@pytest.mark.parametrize(
    "gpu", [g for g, p in gpus.PROFILES.items() if p.compute_capability < (8, 9)]
)
def test_fp8_weights_are_refused_on_older_gpus(gpu: str) -> None:
    have = ".".join(map(str, gpus.PROFILES[gpu].compute_capability))
    with pytest.raises(DoesNotFitError) as info:
        plan_request(request("deepseek-r1", gpu))
    assert str(info.value) == (
        f"deepseek-r1 (fp8 weights) needs GPU compute capability 8.9 or newer; {gpu} is "
        f"{have}: choose another spec.gpu.type"
    )


def test_context_beyond_the_model_is_refused() -> None:
    with pytest.raises(
        DoesNotFitError, match="maxContextLength=262144 exceeds gpt-oss-20b's 131072"
    ):
        plan_request(request("gpt-oss-20b", max_model_len=262144))


# --- the plan as status, and from a parsed spec -------------------------------------------------


def test_plan_status_fields() -> None:
    plan = plan_request(request("gpt-oss-120b", target_concurrency=4))
    status = plan.to_status()
    assert status == {
        "gpuType": "H100-80GB",
        "tensorParallelSize": 2,
        "pipelineParallelSize": 1,
        "expertParallel": False,
        "gpusPerReplica": 2,
        "nodesPerReplica": 1,
        "layout": "single-node",
        "dataParallelSize": 1,
        "dataParallelSizeLocal": 1,
        "gpuMemoryUtilization": "0.90",
        "maxModelLen": 131072,
        "maxNumSeqs": plan.max_num_seqs,
        "maxNumBatchedTokens": 8192,
        "kvCacheDtype": "auto",
        "weightsMiBPerGPU": weights_per_gpu("gpt-oss-120b", 2) // MIB,
        "kvCacheMiBPerGPU": plan.kv_bytes_per_gpu // MIB,
        "kvCacheTokens": plan.kv_cache_tokens,
        "sequencesAtMaxLen": f"{plan.sequences_at_max_len:.1f}",
        "summary": plan.summary,
    }
    assert plan.summary.startswith("TP=2 PP=1 on 2 x H100-80GB (1 node): max-model-len 131072")


def test_plan_from_a_parsed_spec_carries_every_planner_input() -> None:
    spec = parse(
        "p",
        "ns",
        {
            "model": {"preset": "gpt-oss-120b"},
            "source": {"pvc": {"claimName": "m"}},
            "gpu": {"type": "H200", "count": 2, "perNode": 4},
            "parallelism": {"pipeline": 2, "expert": False},
            "serving": {
                "maxContextLength": 65536,
                "targetConcurrency": 3,
                "maxNumSeqs": 16,
                "gpuMemoryUtilization": 0.8,
                "kvCacheDtype": "fp8",
                "maxNumBatchedTokens": 4096,
                "safetyMarginGiB": 1.5,
            },
        },
    )
    req = planner.request_from_spec(spec)
    assert req == Request(
        model=preset("gpt-oss-120b"),
        gpu=gpus.profile("H200"),
        max_model_len=65536,
        target_concurrency=3,
        gpus_per_node=4,
        count=2,
        pipeline=2,
        expert=False,
        gpu_memory_utilization=0.8,
        kv_cache_dtype="fp8",
        max_num_seqs=16,
        max_num_batched_tokens=4096,
        safety_margin_gib=1.5,
    )
    plan = planner.plan(spec)
    exp = expected(
        "gpt-oss-120b", "H200", 1, 2, 65536, elem=1, util=0.8, batched=4096, max_num_seqs=16
    )
    assert_plan_matches(plan, "gpt-oss-120b", "H200", 1, 2, exp, node=4)
    assert plan.safety_margin_bytes == 3 * GIB // 2
    # The node pool's GPUs per node is an input too; spec.gpu.perNode wins over it.
    assert planner.request_from_spec(spec, gpus_per_node=8).gpus_per_node == 4


def _kv_limited() -> list[tuple[str, str, int, int]]:
    """(model, GPU, TP, concurrency) whose KV cache holds some but not all the sequences."""
    cases = []
    for model in ("gpt-oss-120b", "gpt-oss-20b"):
        for gpu in gpus.PROFILES:
            for tp in (1, 2, 4):
                for concurrency in (2, 3, 4, 6, 8, 16, 32, 64):
                    exp = expected(model, gpu, tp, 1, 131072, concurrency=concurrency)
                    room = (exp.kv - MARGIN) / concurrency - exp.per_seq
                    if (
                        exp.kv > 0
                        and not exp.fits(131072, concurrency)
                        and concurrency <= MAX_SEQS_CAP
                        and room >= 1024 * exp.per_token
                    ):
                        cases.append((model, gpu, tp, concurrency))
    return cases


KV_LIMITED = _kv_limited()


def test_there_are_kv_limited_cases() -> None:
    assert len(KV_LIMITED) > 50


@pytest.mark.parametrize(("model", "gpu", "tp", "concurrency"), KV_LIMITED)
def test_suggested_context_is_the_largest_that_fits(
    model: str, gpu: str, tp: int, concurrency: int
) -> None:
    """When a fixed layout runs out of KV cache, the suggested maxContextLength fits it and the
    next multiple of 1024 does not."""
    req = request(model, gpu, tensor=tp, pipeline=1, target_concurrency=concurrency)
    with pytest.raises(DoesNotFitError) as info:
        plan_request(req)
    found = re.search(r"spec\.serving\.maxContextLength=(\d+) would fit", str(info.value))
    assert found is not None
    suggested = int(found.group(1))
    assert plan_request(replace(req, max_model_len=suggested)).sequences_at_max_len >= concurrency
    with pytest.raises(DoesNotFitError):
        plan_request(replace(req, max_model_len=suggested + 1024))


# --- GPU profiles and the node pool -------------------------------------------------------------


def _node(product: str, gpus_allocatable: str | int | None, label: str = gpus.NVIDIA_PRODUCT_LABEL,
          resource: str = "nvidia.com/gpu") -> dict[str, Any]:  # fmt: skip
    allocatable = {} if gpus_allocatable is None else {resource: gpus_allocatable, "cpu": "96"}
    return {
        "metadata": {"name": f"n-{product}", "labels": {label: product}},
        "status": {"allocatable": allocatable},
    }


def test_h100_nvl_is_its_own_profile() -> None:
    nvl, sxm = gpus.PROFILES["H100-NVL"], gpus.PROFILES["H100-80GB"]
    assert nvl.products == ("NVIDIA-H100-NVL",)
    assert "NVIDIA-H100-NVL" not in sxm.products  # the 80 GB profile never selects NVL nodes
    assert nvl.memory_mib == 95830
    assert nvl.compute_capability == (9, 0)
    # 94 GB holds gpt-oss-120b at full context on one GPU, where 80 GB needs two.
    assert expected("gpt-oss-120b", "H100-NVL", 1, 1, 131072).fits(131072)
    assert plan_request(request("gpt-oss-120b", "H100-NVL")).gpus_per_replica == 1
    assert plan_request(request("gpt-oss-120b", "H100-80GB")).gpus_per_replica == 2


def test_every_product_label_selects_one_profile() -> None:
    seen: dict[str, str] = {}
    for name, p in gpus.PROFILES.items():
        for product in p.products:
            assert product not in seen, (product, seen.get(product), name)
            seen[product] = name


def test_gpus_per_node_from_the_node_pool() -> None:
    l4 = gpus.PROFILES["L4"]
    nodes = [
        _node("NVIDIA-L4", "4"),
        _node("NVIDIA-L4", "8"),
        _node("NVIDIA-A10G", "8"),  # another pool
        _node("NVIDIA-L4", None),  # not yet reporting
        _node("NVIDIA-L4", "not-a-number"),
    ]
    assert gpus.gpus_per_node(l4, nodes) == 8  # the largest node of the pool
    assert gpus.gpus_per_node(l4, nodes[:1]) == 4
    assert gpus.gpus_per_node(l4, nodes[2:]) is None
    assert gpus.gpus_per_node(l4, []) is None
    assert gpus.gpus_per_node(gpus.PROFILES["A10"], nodes) == 8  # A10G nodes are A10s
    # H100 NVL nodes are not an H100-80GB pool.
    assert gpus.gpus_per_node(gpus.PROFILES["H100-80GB"], [_node("NVIDIA-H100-NVL", 8)]) is None
    amd = _node("AMD_Instinct_MI300X", 8, gpus.AMD_PRODUCT_LABEL, "amd.com/gpu")
    assert gpus.gpus_per_node(gpus.PROFILES["MI300X"], [amd]) == 8


def test_the_pool_sets_the_tensor_group_size() -> None:
    """gpt-oss-120b on L4: 8-GPU servers take TP 8 in one node; 4-GPU servers need stages."""
    eight = plan_request(request("gpt-oss-120b", "L4", gpus_per_node=8))
    assert (eight.tensor_parallel_size, eight.pipeline_parallel_size) == (8, 1)
    assert (eight.nodes_per_replica, eight.node_gpus) == (1, 8)
    four = plan_request(request("gpt-oss-120b", "L4", gpus_per_node=4))
    assert four.tensor_parallel_size == 4
    assert four.nodes_per_replica > 1
    spec = parse(
        "p", "ns", {
            "model": {"preset": "gpt-oss-120b"}, "source": {"pvc": {"claimName": "m"}},
            "gpu": {"type": "L4"},
        },
    )  # fmt: skip
    assert planner.plan(spec, gpus_per_node=4).nodes_per_replica == four.nodes_per_replica
    assert planner.plan(spec).node_gpus == 8  # nothing known: the profile's default


def test_sixteen_to_twenty_four_gb_class_runs_gpt_oss_20b() -> None:
    """vLLM runs MXFP4 from compute capability 8.0 (Marlin on Ampere/Ada); gpt-oss-20b is
    13.8 GiB there: one 24 GB L4/A10 holds it at full context, a 16 GB RTX A4000 takes two."""
    for gpu in ("L4", "A10"):
        plan = plan_request(request("gpt-oss-20b", gpu))
        assert plan.gpus_per_replica == 1
        assert plan.max_num_batched_tokens == SMALL_BATCH  # vLLM's default below 70 GiB
    assert gpus.PROFILES["RTX-A4000"].compute_capability >= (8, 0)
    assert not expected("gpt-oss-20b", "RTX-A4000", 1, 1, 131072).fits(131072)
    assert plan_request(request("gpt-oss-20b", "RTX-A4000")).gpus_per_replica == 2


# --- the safety margin and headroom -------------------------------------------------------------


def test_the_safety_margin_refuses_plans_that_fit_by_a_sliver() -> None:
    """gpt-oss-20b on one L4 leaves 0.75 GiB of headroom: fine at the default 0.5 GiB margin,
    refused at 1 GiB (the plan takes two GPUs), accepted at 0."""
    exp = expected("gpt-oss-20b", "L4", 1, 1, 131072)
    headroom = exp.headroom(131072)
    assert MARGIN <= headroom < GIB
    default = plan_request(request("gpt-oss-20b", "L4"))
    assert default.gpus_per_replica == 1
    assert default.headroom_bytes_per_gpu == headroom
    assert default.safety_margin_bytes == MARGIN
    assert f"headroom {headroom / GIB:.1f} GiB per GPU (margin 0.5 GiB)" in default.summary
    strict = plan_request(request("gpt-oss-20b", "L4", safety_margin_gib=1.0))
    assert strict.gpus_per_replica == 2
    assert strict.headroom_bytes_per_gpu >= GIB
    with pytest.raises(DoesNotFitError, match=r"against a 1\.0 GiB safety margin"):
        plan_request(request("gpt-oss-20b", "L4", safety_margin_gib=1.0, count=1))
    assert plan_request(request("gpt-oss-20b", "L4", safety_margin_gib=0)).gpus_per_replica == 1


def test_multi_node_plans_say_how_they_are_served() -> None:
    plan = plan_request(request("kimi-k2"))
    assert plan.nodes_per_replica == 2
    assert plan.notes[-1] == (
        "2 nodes per replica (8 GPUs per node): the replica runs as a LeaderWorkerSet group of 2 "
        "pods, one per node; the leader (worker 0) runs vLLM's API server, worker 1 runs "
        "headless (vllm --headless); pipeline stages across nodes: TP 8 inside each pod, 1 stage "
        "of 2 per pod"
    )
    assert plan.to_dict()["notes"] == list(plan.notes)


def test_custom_models_without_a_vocabulary_assume_a_large_one() -> None:
    m = _custom()
    assert m.vocab_size == 0
    assert m.vocab == 262144
    req = Request(model=m, gpu=gpus.profile("H100-80GB"), max_model_len=4096, max_num_seqs=8)
    mem = planner.estimate(req, 4, 1)
    assert mem.overhead.sampler == 8 * 262144 * SAMPLER_PER_LOGIT


def test_more_stages_than_layers_is_refused_naming_the_field() -> None:
    m = _custom(numLayers=4)
    req = Request(model=m, gpu=gpus.profile("H100-80GB"), max_model_len=4096, pipeline=6)
    with pytest.raises(DoesNotFitError) as info:
        plan_request(req)
    assert str(info.value) == (
        "spec.parallelism.pipeline=6 exceeds six-kv's 4 layers: use at most 4 stages"
    )


# --- the worked tables keep the margin ----------------------------------------------------------


@pytest.mark.parametrize("gpu", list(gpus.PROFILES))
@pytest.mark.parametrize("model", sorted(presets()))
def test_no_plan_leaves_less_than_the_margin(model: str, gpu: str) -> None:
    """Every plan the docs' tables show (every catalog model on every GPU type)."""
    try:
        plan = plan_request(request(model, gpu))
    except DoesNotFitError:
        return
    assert plan.headroom_bytes_per_gpu >= plan.safety_margin_bytes == MARGIN
