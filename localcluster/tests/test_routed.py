"""The routed pod network: which addresses the guards take, the fleet on it, and the local
route itself (installed and removed for real: this test needs root, as CI has)."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket

import pytest

from localcluster import nodes, routed
from localcluster.runner import pod_targets

from .test_process_runner import NODE, pod

NET = routed.POD_NETWORK
#: For the test that installs a route: apart from the benches' 198.18.0.0/16, so it can run
#: while a bench holds that one.
TEST_NET = ipaddress.IPv4Network("198.19.254.0/24")


@pytest.mark.parametrize(
    "network", ["10.0.0.0/16", "127.1.0.0/16", "198.20.0.0/16", "198.16.0.0/12", "0.0.0.0/0"]
)
def test_only_the_rfc_2544_block_may_be_made_local(network: str) -> None:
    with pytest.raises(ValueError, match=r"only 198\.18\.0\.0/15"):
        routed.in_block(ipaddress.IPv4Network(network))
    with (
        pytest.raises(ValueError, match=r"only 198\.18\.0\.0/15"),
        routed.routed_network(ipaddress.IPv4Network(network)),
    ):
        pass


def test_the_block_and_the_benches_network() -> None:
    assert routed.in_block(ipaddress.IPv4Network("198.19.0.0/16"))
    assert NET.subnet_of(routed.BENCHMARK_BLOCK)
    assert not routed.BENCHMARK_BLOCK.is_global  # reserved: never routed on the internet


def test_parse_routes_keeps_the_blocks_routes_only() -> None:
    routes = [
        {"type": "local", "dst": "127.0.0.0/8", "dev": "lo"},
        {"type": "local", "dst": "198.18.0.0/16", "dev": "lo"},
        {"type": "local", "dst": "198.19.1.7", "dev": "lo"},
        {"type": "local", "dst": "192.0.2.2", "dev": "lo"},
        {"type": "local", "dst": "default", "dev": "lo"},
    ]
    assert routed.parse_routes(json.dumps(routes)) == (
        NET,
        ipaddress.IPv4Network("198.19.1.7/32"),
    )
    assert routed.parse_routes("") == ()


def test_routed_cidr_needs_an_installed_route_that_covers_it() -> None:
    assert routed.routed_cidr("198.18.3.0/24", [NET]) == "198.18.3.0/24"
    with pytest.raises(ValueError, match="no local route covers it"):
        routed.routed_cidr("198.18.3.0/24", [])
    with pytest.raises(ValueError, match="no local route covers it"):
        routed.routed_cidr("198.19.3.0/24", [NET])
    with pytest.raises(ValueError, match="no local route covers it"):
        routed.routed_cidr("198.18.0.0/15", [NET])  # wider than what is installed
    # Outside the block: refused whatever the caller claims is installed.
    wide = [ipaddress.IPv4Network("0.0.0.0/0")]
    with pytest.raises(ValueError, match="only 198"):
        routed.routed_cidr("10.1.0.0/24", wide)
    with pytest.raises(ValueError, match="IPv4 only"):
        routed.routed_cidr("fd00::/64", wide)


def test_pod_host_takes_loopback_or_an_installed_routed_address() -> None:
    assert routed.pod_host("127.1.2.3", []) == "127.1.2.3"
    assert routed.pod_host("localhost", []) == "localhost"
    assert routed.pod_host("198.18.1.0", [NET]) == "198.18.1.0"
    with pytest.raises(ValueError, match="no local route covers it"):
        routed.pod_host("198.18.1.0", [])
    for host in ("10.0.0.5", "192.0.2.2", "::1x", "pod.example"):
        with pytest.raises(ValueError, match="neither loopback nor in the routed block"):
            routed.pod_host(host, [ipaddress.IPv4Network("0.0.0.0/0")])


def test_on_routed_network_moves_pod_cidrs_into_the_block() -> None:
    moved = nodes.on_routed_network(nodes.NODES)
    assert [n.name for n in moved] == [n.name for n in nodes.NODES]
    assert [n.pod_cidr for n in moved[:2]] == ["198.18.1.0/24", "198.18.2.0/24"]
    assert moved[11].pod_cidr == "198.18.12.0/24"
    assert moved[11].internal_ip == nodes.NODES[11].internal_ip == "127.2.0.12"
    other = nodes.on_routed_network(nodes.NODES, ipaddress.IPv4Network("198.19.0.0/16"))
    assert other[0].pod_cidr == "198.19.1.0/24"
    with pytest.raises(ValueError, match="only 198"):
        nodes.on_routed_network(nodes.NODES, ipaddress.IPv4Network("10.0.0.0/16"))
    with pytest.raises(ValueError, match="pick a /16"):
        nodes.on_routed_network(nodes.NODES, ipaddress.IPv4Network("198.18.0.0/24"))


def test_a_routed_nodes_manifest_needs_its_route_installed() -> None:
    fake = nodes.on_routed_network(nodes.NODES)[0]
    spec = nodes.manifest(fake, routed_networks=[NET])["spec"]
    assert spec["podCIDR"] == "198.18.1.0/24" == spec["podCIDRs"][0]
    with pytest.raises(ValueError, match="no local route covers it"):
        nodes.manifest(fake, routed_networks=[])
    # The default fleet stays on loopback, the routed networks notwithstanding.
    assert nodes.manifest(nodes.NODES[0], routed_networks=[])["spec"]["podCIDR"] == "127.1.1.0/24"


def test_the_runner_takes_routed_pods_only_while_their_route_is_installed() -> None:
    pods = [pod("routed", ip="198.18.1.0"), pod("public", ip="10.0.0.5")]
    assert list(pod_targets(pods, {NODE}, max_grace=10, routed_networks=[NET])) == ["routed"]
    assert pod_targets(pods, {NODE}, max_grace=10, routed_networks=[]) == {}
    everything = [ipaddress.IPv4Network("0.0.0.0/0")]
    # An address outside the block is refused whatever is installed.
    assert list(pod_targets(pods, {NODE}, max_grace=10, routed_networks=everything)) == ["routed"]


def test_the_local_route_makes_the_network_bindable_until_the_block_ends() -> None:
    assert routed.unavailable() is None, "CI runs as root with iproute2"
    address = str(TEST_NET.network_address + 9)
    assert TEST_NET not in routed.installed()
    with routed.routed_network(TEST_NET) as network:
        assert network == TEST_NET
        assert TEST_NET in routed.installed()
        assert routed.pod_host(address) == address  # the kernel's routes, asked
        with (
            pytest.raises(routed.RoutedNetworkError, match="installed already"),
            routed.routed_network(TEST_NET),
        ):
            pass
        with socket.create_server((address, 0)) as server:
            port = server.getsockname()[1]
            with socket.create_connection((address, port), timeout=5) as client:
                peer, _ = server.accept()
                with peer:
                    client.sendall(b"ping")
                    assert peer.recv(4) == b"ping"
    assert TEST_NET not in routed.installed()
    with pytest.raises(ValueError, match="no local route covers it"):
        routed.pod_host(address)
    with (
        socket.socket() as sock,
        pytest.raises(OSError, match="annot assign requested address") as refused,
    ):
        sock.bind((address, 0))
    assert refused.value.errno == errno.EADDRNOTAVAIL


def test_the_local_route_goes_when_the_block_fails() -> None:
    seen: list[bool] = []

    def fail_inside() -> None:
        with routed.routed_network(TEST_NET):
            seen.append(TEST_NET in routed.installed())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen == [True]
    assert TEST_NET not in routed.installed()
