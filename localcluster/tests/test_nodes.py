"""The fake GPU fleet's table: what placement and multi-node tests rely on."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from localcluster import nodes


def test_names_indexes_and_pod_networks_are_unique() -> None:
    assert len({n.name for n in nodes.NODES}) == len(nodes.NODES) == 12
    assert len({n.index for n in nodes.NODES}) == len(nodes.NODES)
    networks = [ipaddress.ip_network(n.pod_cidr) for n in nodes.NODES]
    assert all(a == b or not a.overlaps(b) for a in networks for b in networks)
    assert all(net.is_loopback for net in networks)


def test_one_region_holds_four_h100_and_two_h200_nodes_of_eight_gpus() -> None:
    per_region = Counter((n.region, n.gpu.product) for n in nodes.NODES if n.gpu.gpus == 8)
    assert per_region["eu-west-1", nodes.H100.product] >= 4
    assert per_region["eu-west-1", nodes.H200.product] == 2
    # Residency tests rely on H100s in both regions.
    assert {n.region for n in nodes.with_gpu(nodes.H100)} == set(nodes.REGIONS)


def test_h200_is_labelled_as_gpu_feature_discovery_labels_it() -> None:
    labels = nodes.node("h200-eu-west-1a").labels
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert labels["nvidia.com/gpu.memory"] == "143771"
    assert labels["nvidia.com/gpu.family"] == "hopper"
    assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == (
        "9",
        "0",
    )
    assert labels["node.kubernetes.io/instance-type"] == "p5e.48xlarge"
    assert labels["topology.kubernetes.io/zone"] == "eu-west-1a"
    capacity = nodes.node("h200-eu-west-1b").capacity
    assert capacity == {
        "cpu": "192",
        "memory": f"{2048 * 1024 * 1024}Ki",
        "ephemeral-storage": "3800Gi",
        "pods": "110",
        nodes.GPU_RESOURCE: "8",
    }


def test_on_pod_network_moves_pod_addresses_only() -> None:
    moved = nodes.on_pod_network(nodes.NODES, nodes.LWS_POD_NETWORK)
    assert [n.name for n in moved] == [n.name for n in nodes.NODES]
    assert moved[11].pod_cidr == "127.43.12.0/24"
    assert moved[11].internal_ip == nodes.NODES[11].internal_ip
    with pytest.raises(ValueError, match=r"pod_network 2: pick 1\.\.255 other than 2"):
        nodes.on_pod_network(nodes.NODES, 2)
