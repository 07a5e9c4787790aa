"""The fake GPU fleet: one table of nodes that tests can reference, and its creation.

Twelve nodes kwok plays the kubelet for, spread over two regions so placement/residency tests
have a real choice to make, and so that one region (eu-west-1) holds four 8-GPU H100 nodes and
two 8-GPU H200 nodes for multi-node (LeaderWorkerSet) replicas:

=================  =======  ===========  ===========  ==================
node               GPUs     region       zone         podCIDR
=================  =======  ===========  ===========  ==================
h100-eu-west-1a    8 H100   eu-west-1    eu-west-1a   127.1.1.0/24
h100-eu-west-1b    8 H100   eu-west-1    eu-west-1b   127.1.2.0/24
h100-us-east-1a    8 H100   us-east-1    us-east-1a   127.1.3.0/24
h100-us-east-1b    8 H100   us-east-1    us-east-1b   127.1.4.0/24
a100-eu-west-1a    8 A100   eu-west-1    eu-west-1a   127.1.5.0/24
a100-eu-west-1b    8 A100   eu-west-1    eu-west-1b   127.1.6.0/24
l4-us-east-1a      4 L4     us-east-1    us-east-1a   127.1.7.0/24
l4-us-east-1b      4 L4     us-east-1    us-east-1b   127.1.8.0/24
h100-eu-west-1c    8 H100   eu-west-1    eu-west-1c   127.1.9.0/24
h100-eu-west-1d    8 H100   eu-west-1    eu-west-1d   127.1.10.0/24
h200-eu-west-1a    8 H200   eu-west-1    eu-west-1a   127.1.11.0/24
h200-eu-west-1b    8 H200   eu-west-1    eu-west-1b   127.1.12.0/24
=================  =======  ===========  ===========  ==================

Labels are the ones NVIDIA GPU feature discovery sets (``nvidia.com/gpu.product`` etc.) plus the
well-known topology and instance-type labels; every node carries the GPU operator's usual taint
``nvidia.com/gpu=present:NoSchedule``. kwok gives each pod the next free address of its node's
podCIDR, so pod IPs are unique 127.1.<node>.<n> addresses a simulator can bind to (the first
pod on a node gets ``.0``: kwok counts from the CIDR's base address). :func:`on_pod_network`
moves a fleet to another 127.<x> pod network, for a second cluster alongside the first;
:func:`on_routed_network` moves it to 198.18.<index>.0/24 podCIDRs, addresses a Service can
route to, usable only while :func:`localcluster.routed.routed_network` has made them local.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from localcluster import cluster as local_cluster
from localcluster import routed, versions

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
#: Tolerates :data:`GPU_TAINT`; for pod specs in tests.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
#: Every fake node carries this label (handy for ``kubectl get nodes -l``).
FAKE_NODE_LABEL = ("type", "kwok")


@dataclass(frozen=True)
class GpuModel:
    """A GPU model as GPU feature discovery labels it, and the machine type it comes in."""

    product: str  # nvidia.com/gpu.product
    memory_mib: int  # nvidia.com/gpu.memory
    family: str  # nvidia.com/gpu.family
    compute: tuple[int, int]  # nvidia.com/gpu.compute.major/minor
    mig_capable: bool
    instance_type: str
    gpus: int
    cpus: int
    memory_gib: int
    ephemeral_gib: int


H100 = GpuModel(
    product="NVIDIA-H100-80GB-HBM3",
    memory_mib=81559,
    family="hopper",
    compute=(9, 0),
    mig_capable=True,
    instance_type="p5.48xlarge",
    gpus=8,
    cpus=192,
    memory_gib=2048,
    ephemeral_gib=3800,
)
A100 = GpuModel(
    product="NVIDIA-A100-SXM4-40GB",
    memory_mib=40960,
    family="ampere",
    compute=(8, 0),
    mig_capable=True,
    instance_type="p4d.24xlarge",
    gpus=8,
    cpus=96,
    memory_gib=1152,
    ephemeral_gib=3800,
)
L4 = GpuModel(
    product="NVIDIA-L4",
    memory_mib=23034,
    family="ada-lovelace",
    compute=(8, 9),
    mig_capable=False,
    instance_type="g6.12xlarge",
    gpus=4,
    cpus=48,
    memory_gib=192,
    ephemeral_gib=940,
)
H200 = GpuModel(
    product="NVIDIA-H200",
    memory_mib=143771,
    family="hopper",
    compute=(9, 0),
    mig_capable=True,
    instance_type="p5e.48xlarge",
    gpus=8,
    cpus=192,
    memory_gib=2048,
    ephemeral_gib=3800,
)
GPU_MODELS = (H100, A100, L4, H200)


@dataclass(frozen=True)
class FakeNode:
    index: int  # 1-based; picks the podCIDR 127.1.<index>.0/24 (or a routed network's <index>th
    # /24) and the node IP 127.2.0.<index>
    name: str
    gpu: GpuModel
    region: str
    zone: str
    #: The second octet of the pod addresses: 127.<pod_network>.<index>.<n>.
    pod_network: int = 1
    #: A /16 of :data:`localcluster.routed.BENCHMARK_BLOCK` whose <index>th /24 is the podCIDR
    #: instead (see :func:`on_routed_network`); None: the loopback pod network.
    routed_network: ipaddress.IPv4Network | None = None

    @property
    def pod_cidr(self) -> str:
        if self.routed_network is not None:
            base = int(self.routed_network.network_address) + (self.index << 8)
            return f"{ipaddress.IPv4Address(base)}/24"
        return f"127.{self.pod_network}.{self.index}.0/24"

    @property
    def internal_ip(self) -> str:
        return f"127.2.0.{self.index}"

    @property
    def labels(self) -> dict[str, str]:
        gpu = self.gpu
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": gpu.instance_type,
            "topology.kubernetes.io/region": self.region,
            "topology.kubernetes.io/zone": self.zone,
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": gpu.product,
            "nvidia.com/gpu.memory": str(gpu.memory_mib),
            "nvidia.com/gpu.count": str(gpu.gpus),
            "nvidia.com/gpu.family": gpu.family,
            "nvidia.com/gpu.compute.major": str(gpu.compute[0]),
            "nvidia.com/gpu.compute.minor": str(gpu.compute[1]),
            "nvidia.com/gpu.replicas": "1",
            "nvidia.com/gpu.sharing-strategy": "none",
            "nvidia.com/mig.capable": str(gpu.mig_capable).lower(),
            FAKE_NODE_LABEL[0]: FAKE_NODE_LABEL[1],
        }

    @property
    def capacity(self) -> dict[str, str]:
        gpu = self.gpu
        return {
            "cpu": str(gpu.cpus),
            "memory": f"{gpu.memory_gib * 1024 * 1024}Ki",
            "ephemeral-storage": f"{gpu.ephemeral_gib}Gi",
            "pods": "110",
            GPU_RESOURCE: str(gpu.gpus),
        }

    @property
    def allocatable(self) -> dict[str, str]:
        """Capacity less what a kubelet would reserve for the system."""
        gpu = self.gpu
        reserved_gib = max(4, gpu.memory_gib // 100)
        return {
            "cpu": f"{gpu.cpus * 1000 - 500}m",
            "memory": f"{(gpu.memory_gib - reserved_gib) * 1024 * 1024}Ki",
            "ephemeral-storage": f"{gpu.ephemeral_gib - 40}Gi",
            "pods": "110",
            GPU_RESOURCE: str(gpu.gpus),
        }


NODES: tuple[FakeNode, ...] = (
    FakeNode(1, "h100-eu-west-1a", H100, "eu-west-1", "eu-west-1a"),
    FakeNode(2, "h100-eu-west-1b", H100, "eu-west-1", "eu-west-1b"),
    FakeNode(3, "h100-us-east-1a", H100, "us-east-1", "us-east-1a"),
    FakeNode(4, "h100-us-east-1b", H100, "us-east-1", "us-east-1b"),
    FakeNode(5, "a100-eu-west-1a", A100, "eu-west-1", "eu-west-1a"),
    FakeNode(6, "a100-eu-west-1b", A100, "eu-west-1", "eu-west-1b"),
    FakeNode(7, "l4-us-east-1a", L4, "us-east-1", "us-east-1a"),
    FakeNode(8, "l4-us-east-1b", L4, "us-east-1", "us-east-1b"),
    FakeNode(9, "h100-eu-west-1c", H100, "eu-west-1", "eu-west-1c"),
    FakeNode(10, "h100-eu-west-1d", H100, "eu-west-1", "eu-west-1d"),
    FakeNode(11, "h200-eu-west-1a", H200, "eu-west-1", "eu-west-1a"),
    FakeNode(12, "h200-eu-west-1b", H200, "eu-west-1", "eu-west-1b"),
)
REGIONS = tuple(sorted({n.region for n in NODES}))


#: The pod network of :func:`on_pod_network` copies for a LeaderWorkerSet cluster (tests).
LWS_POD_NETWORK = 43


def on_pod_network(fleet: Sequence[FakeNode], pod_network: int) -> tuple[FakeNode, ...]:
    """``fleet`` with pod addresses 127.<pod_network>.<index>.<n>: a second cluster that runs
    at the same time as one on the default network (127.1) then never hands out the same pod
    address, so the processes that bind them do not collide."""
    if not 1 <= pod_network <= 255 or pod_network in (2, 3):
        raise ValueError(
            f"pod_network {pod_network}: pick 1..255 other than 2 (node IPs) and 3 (kwok's "
            "fallback range)"
        )
    return tuple(dataclasses.replace(n, pod_network=pod_network) for n in fleet)


def on_routed_network(
    fleet: Sequence[FakeNode], network: ipaddress.IPv4Network = routed.POD_NETWORK
) -> tuple[FakeNode, ...]:
    """``fleet`` with podCIDR <network>.<index>.0/24 for a /16 ``network`` of the RFC 2544
    block (:data:`localcluster.routed.BENCHMARK_BLOCK`): pods a Service can route to. Their
    manifests (and the process runner) accept those addresses only while the network's local
    route is installed (:func:`localcluster.routed.routed_network`)."""
    routed.in_block(network)
    if network.prefixlen != 16:
        raise ValueError(f"routed network {network}: pick a /16 (one /24 per node)")
    return tuple(dataclasses.replace(n, routed_network=network) for n in fleet)


def node(name: str) -> FakeNode:
    for candidate in NODES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def with_gpu(model: GpuModel, region: str | None = None) -> tuple[FakeNode, ...]:
    return tuple(n for n in NODES if n.gpu == model and (region is None or n.region == region))


def manifest(
    fake: FakeNode, *, routed_networks: Collection[ipaddress.IPv4Network] | None = None
) -> dict[str, Any]:
    """The v1 Node object, status included (nodes may set status on create). A node on a routed
    pod network needs its local route among ``routed_networks`` (None: the kernel's)."""
    if fake.routed_network is None:
        local_cluster.loopback_cidr(fake.pod_cidr)
    else:
        routed.routed_cidr(fake.pod_cidr, routed_networks)
    local_cluster.loopback_host(fake.internal_ip)
    annotation_key, annotation_value = local_cluster.KWOK_NODE_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": fake.name,
            "labels": fake.labels,
            "annotations": {
                annotation_key: annotation_value,
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {
            "podCIDR": fake.pod_cidr,
            "podCIDRs": [fake.pod_cidr],
            "taints": [dict(GPU_TAINT)],
        },
        "status": {
            "capacity": fake.capacity,
            "allocatable": fake.allocatable,
            "addresses": [
                {"type": "InternalIP", "address": fake.internal_ip},
                {"type": "Hostname", "address": fake.name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "kwok fake GPU node",
                "kubeletVersion": versions.KUBERNETES,
                "kubeProxyVersion": versions.KUBERNETES,
                "containerRuntimeVersion": f"kwok://{versions.KWOK}",
                "kernelVersion": f"kwok-{versions.KWOK}",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


class Kubectl(Protocol):
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> Any: ...


def create(
    target: Kubectl, nodes: Sequence[FakeNode] = NODES, *, timeout: float = 60.0
) -> list[str]:
    """Create ``nodes`` and wait until kwok reports every one Ready. Returns their names."""
    items = [manifest(n) for n in nodes]
    document = {"apiVersion": "v1", "kind": "List", "items": items}
    target.kubectl("apply", "-f", "-", input=json.dumps(document))
    names = [n.name for n in nodes]
    wait_ready(target, names, timeout=timeout)
    return names


def wait_ready(target: Kubectl, names: Iterable[str], *, timeout: float = 60.0) -> None:
    target.kubectl(
        "wait",
        "--for=condition=Ready",
        f"--timeout={timeout:.0f}s",
        *(f"node/{name}" for name in names),
        timeout=timeout + 30,
    )
