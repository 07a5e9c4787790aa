"""GPU profiles: memory, compute capability and the node labels that select each type.

Memory is the device memory the driver reports (``nvidia-smi``, and what NVIDIA GPU feature
discovery puts in ``nvidia.com/gpu.memory``, in MiB), not the marketing figure: an "80 GB" H100
reports 81559 MiB, an H100 NVL 95830 MiB. Sources: vendor data sheets, GPU feature discovery
labels and public ``nvidia-smi`` output (docs/planner.md, "GPU profiles").

How many GPUs one node carries is a property of the node pool, not of the GPU type (L4 and A10
servers come with 1, 4 or 8 GPUs): :func:`gpus_per_node` reads it from the nodes' allocatable
resource; ``gpus_per_node`` on a profile is only the fallback when nothing better is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

MIB = 1024**2
GIB = 1024**3

NVIDIA_PRODUCT_LABEL = "nvidia.com/gpu.product"
AMD_PRODUCT_LABEL = "amd.com/gpu.product-name"

#: How vLLM runs MXFP4 MoE weights on a GPU (vllm model_executor/layers/fused_moe/oracle/mxfp4.py,
#: ``_get_priority_backends_for_gpt_oss``): Hopper the OAI Triton kernels, Blackwell FlashInfer
#: TRT-LLM, Ampere/Ada weight-only Marlin, ROCm its own kernels.
Mxfp4Kernel = Literal["triton", "trtllm", "marlin", "rocm"]


@dataclass(frozen=True)
class GPUProfile:
    name: str
    description: str
    memory_mib: int
    #: CUDA compute capability as (major, minor); ROCm devices use (9, 4) for gfx942.
    compute_capability: tuple[int, int]
    #: Extended resource the device plugin exposes.
    resource: str
    #: Node label and its accepted values (any of them selects the node).
    product_label: str
    products: tuple[str, ...]
    #: GPUs per node assumed when neither the spec (spec.gpu.perNode), the CLI
    #: (--gpus-per-node) nor the node pool says otherwise.
    gpus_per_node: int

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def mxfp4_kernel(self) -> Mxfp4Kernel:
        if self.resource != "nvidia.com/gpu":
            return "rocm"
        if self.compute_capability >= (10, 0):
            return "trtllm"
        if self.compute_capability >= (9, 0):
            return "triton"
        return "marlin"


PROFILES: dict[str, GPUProfile] = {
    p.name: p
    for p in (
        GPUProfile(
            "H100-80GB", "NVIDIA H100 80GB (SXM or PCIe)", 81559, (9, 0), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"), 8,
        ),
        GPUProfile(
            "H100-NVL", "NVIDIA H100 NVL 94GB", 95830, (9, 0), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-H100-NVL",), 8,
        ),
        GPUProfile(
            "H200", "NVIDIA H200 141GB", 143771, (9, 0), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-H200", "NVIDIA-H200-NVL"), 8,
        ),
        GPUProfile(
            "B200", "NVIDIA B200 180GB", 183359, (10, 0), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-B200",), 8,
        ),
        GPUProfile(
            "A100-80GB", "NVIDIA A100 80GB", 81920, (8, 0), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"), 8,
        ),
        GPUProfile(
            "A100-40GB", "NVIDIA A100 40GB", 40960, (8, 0), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"), 8,
        ),
        GPUProfile(
            "L40S", "NVIDIA L40S 48GB", 46068, (8, 9), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-L40S",), 8,
        ),
        GPUProfile(
            "L4", "NVIDIA L4 24GB", 23034, (8, 9), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-L4",), 8,
        ),
        GPUProfile(
            "A10", "NVIDIA A10 / A10G 24GB", 23028, (8, 6), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-A10", "NVIDIA-A10G"), 8,
        ),
        GPUProfile(
            "RTX-A4000", "NVIDIA RTX A4000 16GB", 16376, (8, 6), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-RTX-A4000",), 4,
        ),
        GPUProfile(
            "MI300X", "AMD Instinct MI300X 192GB", 196592, (9, 4), "amd.com/gpu",
            AMD_PRODUCT_LABEL, ("AMD_Instinct_MI300X", "AMD_Instinct_MI300X_OAM"), 8,
        ),
    )
}  # fmt: skip


class UnknownGPUError(ValueError):
    pass


def profile(name: str) -> GPUProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownGPUError(
            f"unknown GPU type {name!r}: choose one of {', '.join(PROFILES)}"
        ) from None


def _count(value: Any) -> int:
    """A whole-number resource quantity ("8", 8); 0 for anything else."""
    try:
        count = int(str(value).strip())
    except ValueError:
        return 0
    return max(count, 0)


def gpus_per_node(gpu: GPUProfile, nodes: Iterable[Mapping[str, Any]]) -> int | None:
    """GPUs per node in the pool of ``gpu``-type nodes, or None when no such node is known.

    ``nodes`` are Node objects as mappings (``metadata.labels``, ``status.allocatable``). A node
    belongs to the pool when its product label is one of the profile's products; its GPUs are its
    allocatable count of the profile's resource. The largest count wins: a replica's tensor
    group has to fit on one node, and the scheduler places it on a node that large.
    """
    best = 0
    for node in nodes:
        labels = (node.get("metadata") or {}).get("labels") or {}
        if labels.get(gpu.product_label) not in gpu.products:
            continue
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        best = max(best, _count(allocatable.get(gpu.resource, 0)))
    return best or None
