"""The model catalog: architecture facts of each preset, as data (``models.yaml``).

Every entry carries the numbers from the model's ``config.json`` and its checkpoint index, with
the source. Models outside the catalog are described the same way in
``spec.model.custom`` and go through the same :class:`ModelArch`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

AttentionKind = Literal["gqa", "mla"]
WeightDtype = Literal["mxfp4", "fp8", "bf16"]

#: Bytes per element of the KV cache by ``--kv-cache-dtype``.
KV_DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "fp8": 1}
#: MXFP4 stores 4-bit values plus one 8-bit scale per 32 (OCP MX block): 17 bytes per 32 weights.
MXFP4_BYTES_PER_32_WEIGHTS = 17
#: An FP8 block-quantised matrix holds one float32 scale per block.
FP8_SCALE_BYTES = 4
#: Vocabulary assumed when a custom model does not state its own (large: it sizes the sampler's
#: memory, so guessing high is the safe side).
DEFAULT_VOCAB_SIZE = 262144


@dataclass(frozen=True)
class ModelArch:
    """The facts the planner needs about one model."""

    name: str
    #: Hub repository id the checkpoint comes from (its files are what the runtime checks).
    repo: str
    architecture: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    max_context: int
    #: Bytes of the checkpoint's weights for one replica, summed over ranks. For MXFP4 models the
    #: planner adds the per-GPU re-layout of the expert weights (planner.weight_bytes_per_gpu).
    weight_bytes: int
    weight_dtype: WeightDtype
    attention: AttentionKind = "gqa"
    #: Layers with a sliding window (the rest are full attention and grow with context).
    sliding_layers: int = 0
    sliding_window: int = 0
    #: MLA latent: kv_lora_rank + qk_rope_head_dim elements per token per layer.
    mla_latent_dim: int = 0
    num_experts: int = 0
    experts_per_token: int = 0
    #: Leading layers with a dense MLP instead of routed experts (config.json
    #: ``first_k_dense_replace``); the rest hold ``num_experts`` routed experts each.
    dense_layers: int = 0
    #: Width of one expert's (or the dense MLP's) up projection; FP8 block quantisation needs
    #: each tensor rank's slice to be a whole number of blocks.
    moe_intermediate_size: int = 0
    fp8_block_size: int = 0
    total_params_b: float = 0.0
    active_params_b: float = 0.0
    #: Whether vLLM replicates KV heads when TP exceeds them (gpt-oss's attention does not:
    #: TP 16 would leave ranks without a KV head).
    kv_heads_replicable: bool = True
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    trust_remote_code: bool = False
    min_compute_capability: tuple[int, int] = (8, 0)
    #: config.json vocab_size: vLLM's sampler warm-up holds max-num-seqs x vocabulary logits.
    vocab_size: int = 0
    source: str = ""

    @property
    def full_attention_layers(self) -> int:
        return self.num_layers - self.sliding_layers

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def vocab(self) -> int:
        return self.vocab_size or DEFAULT_VOCAB_SIZE

    @property
    def expert_weight_bytes(self) -> int:
        """Checkpoint bytes of the MXFP4 expert weights (gate, up and down projections of every
        expert of every layer); 0 unless the model is an MXFP4 mixture of experts."""
        if self.weight_dtype != "mxfp4" or not self.is_moe:
            return 0
        weights = 3 * self.num_layers * self.num_experts * self.hidden_size
        return weights * self.moe_intermediate_size * MXFP4_BYTES_PER_32_WEIGHTS // 32

    @property
    def routed_expert_bytes(self) -> int:
        """Checkpoint bytes of the routed experts (gate, up and down projections of every expert
        of every MoE layer), in the checkpoint's format: what expert parallel shards over its
        ranks. FP8 block checkpoints add one float32 scale per block of each matrix."""
        if not self.is_moe:
            return 0
        if self.weight_dtype == "mxfp4":
            return self.expert_weight_bytes
        matrix = self.hidden_size * self.moe_intermediate_size
        if self.weight_dtype == "fp8":
            block = self.fp8_block_size or 1
            scales = -(-self.hidden_size // block) * -(-self.moe_intermediate_size // block)
            per_matrix = matrix + FP8_SCALE_BYTES * scales
        else:
            per_matrix = 2 * matrix
        moe_layers = self.num_layers - self.dense_layers
        return 3 * moe_layers * self.num_experts * per_matrix

    def kv_heads_per_rank(self, tp: int) -> int:
        """KV heads one tensor rank holds: split while TP <= KV heads, replicated beyond."""
        if self.attention == "mla":
            return 1
        return max(1, self.num_kv_heads // tp)

    def kv_bytes_per_token_per_layer(self, tp: int, kv_dtype: str = "auto") -> int:
        """KV-cache bytes one token adds to one attention layer on one GPU."""
        elem = KV_DTYPE_BYTES[kv_dtype]
        if self.attention == "mla":
            return self.mla_latent_dim * elem
        return 2 * self.kv_heads_per_rank(tp) * self.head_dim * elem

    def tp_problem(self, tp: int, *, expert_parallel: bool = False) -> str | None:
        """Why vLLM cannot shard this model ``tp`` ways, or None when it can."""
        if tp < 1:
            return "tensor parallel size must be at least 1"
        if self.num_attention_heads % tp:
            return (
                f"{self.num_attention_heads} attention heads are not divisible by "
                f"tensor parallel size {tp}"
            )
        if self.attention == "gqa":
            kv = self.num_kv_heads
            if tp > kv and not self.kv_heads_replicable:
                return f"{kv} KV heads cannot be shared by {tp} ranks; use at most {kv}"
            if (tp <= kv and kv % tp) or (tp > kv and tp % kv):
                return f"{kv} KV heads cannot be split or replicated evenly over {tp} ranks"
        if self.fp8_block_size and self.moe_intermediate_size and not expert_parallel:
            width = self.moe_intermediate_size
            if width % tp or (width // tp) % self.fp8_block_size:
                return (
                    f"FP8 block quantisation: the MLP width {width} split {tp} ways is not a "
                    f"multiple of the {self.fp8_block_size}-wide blocks (use expert parallel)"
                )
        return None


def arch_from_mapping(data: dict[str, Any]) -> ModelArch:
    """Build a ModelArch from catalog YAML or a ``spec.model.custom`` object (camelCase ok)."""
    known = {f.name: f.name for f in fields(ModelArch)}
    known.update({_camel(name): name for name in list(known)})
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"unknown model field {key!r}")
        values[known[key]] = value
    if "min_compute_capability" in values:
        major, minor = str(values["min_compute_capability"]).split(".")
        values["min_compute_capability"] = (int(major), int(minor))
    return ModelArch(**values)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


@cache
def presets() -> dict[str, ModelArch]:
    text = resources.files(__package__).joinpath("models.yaml").read_text()
    entries: list[dict[str, Any]] = yaml.safe_load(text)["models"]
    return {entry["name"]: arch_from_mapping(entry) for entry in entries}


class UnknownModelError(ValueError):
    pass


def preset(name: str) -> ModelArch:
    try:
        return presets()[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model preset {name!r}: choose one of {', '.join(presets())} "
            "or describe the model in spec.model.custom"
        ) from None
