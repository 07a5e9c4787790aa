"""GPU profiles: memory, compute capability and the node labels that select each type.

Memory is the usable device memory the driver reports (what NVIDIA GPU feature discovery puts
in ``nvidia.com/gpu.memory``, in MiB), not the marketing figure: an "80 GB" H100 reports
81559 MiB. Sources: vendor data sheets and GPU feature discovery labels (docs/planner.md).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024**2
GIB = 1024**3

NVIDIA_PRODUCT_LABEL = "nvidia.com/gpu.product"
AMD_PRODUCT_LABEL = "amd.com/gpu.product-name"


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
    #: GPUs in the usual server of this type; a plan that needs more spans nodes.
    gpus_per_node: int

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB


PROFILES: dict[str, GPUProfile] = {
    p.name: p
    for p in (
        GPUProfile(
            "H100-80GB", "NVIDIA H100 80GB (SXM or PCIe)", 81559, (9, 0), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"),
            8,
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
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-L4",), 4,
        ),
        GPUProfile(
            "A10", "NVIDIA A10 24GB", 23028, (8, 6), "nvidia.com/gpu",
            NVIDIA_PRODUCT_LABEL, ("NVIDIA-A10",), 4,
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
