"""A routed pod network: fake pods with addresses a Kubernetes Service can route to.

The local cluster keeps to loopback (:func:`localcluster.cluster.loopback_host`), and its pods
get 127.<x>.<node>.<n> addresses. The API server refuses loopback addresses in EndpointSlices,
so a Service of such pods has no endpoint. For a bench that sends load through a plain
Service (kube-proxy, :mod:`localcluster.kube_proxy`), :func:`routed_network` makes a block of
:data:`BENCHMARK_BLOCK` local to this machine for as long as it is entered::

    ip route add local 198.18.0.0/16 dev lo     # on entry
    ip route del local 198.18.0.0/16 dev lo     # on exit, also on failure

A local route makes every address it covers local (as for 127/8): a simulator binds
198.18.<node>.<n> and clients on this machine connect to it over ``lo``; nothing leaves the
machine. :func:`localcluster.nodes.on_routed_network` gives a fleet whose podCIDRs lie in it,
and the guards that otherwise accept only loopback pod addresses (:func:`pod_host`,
:func:`routed_cidr`) accept an address of that block only while the kernel has a local route
for it: everything else is still refused. It needs root (CAP_NET_ADMIN) and the ``ip``
command; :func:`unavailable` says why it cannot be used here, or None.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from localcluster.cluster import loopback_host

#: RFC 2544's block for benchmarking network devices (RFC 6890 lists it as "Benchmarking",
#: never forwarded on the internet): a local route over part of it shadows no address this
#: machine could otherwise reach, and the API server takes such addresses in EndpointSlices
#: (unlike loopback ones). The only addresses outside 127/8 the local cluster's pods may have.
BENCHMARK_BLOCK = ipaddress.IPv4Network("198.18.0.0/15")
#: The routed pod network of the benches: node ``index`` gets podCIDR 198.18.<index>.0/24.
POD_NETWORK = ipaddress.IPv4Network("198.18.0.0/16")


class RoutedNetworkError(RuntimeError):
    """The local route could not be installed or removed (the message says why)."""


def unavailable() -> str | None:
    """Why a routed pod network cannot be installed here, or None."""
    if os.geteuid() != 0:
        return "installing a local route needs root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "the ip command is missing (install Debian's iproute2 package)"
    return None


def in_block(network: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """Return ``network`` if it lies inside :data:`BENCHMARK_BLOCK`, else raise."""
    if network.version != 4 or not network.subnet_of(BENCHMARK_BLOCK):
        raise ValueError(
            f"refusing routed network {network}: only {BENCHMARK_BLOCK} (RFC 2544, reserved "
            "for benchmarking) may be made local"
        )
    return network


def in_routed_block(host: str) -> bool:
    """Whether ``host`` is an IPv4 address of :data:`BENCHMARK_BLOCK`."""
    try:
        return ipaddress.IPv4Address(host) in BENCHMARK_BLOCK
    except ValueError:
        return False


def installed() -> tuple[ipaddress.IPv4Network, ...]:
    """The local routes on ``lo`` inside :data:`BENCHMARK_BLOCK` the kernel has now."""
    if shutil.which("ip") is None:
        return ()
    found = subprocess.run(
        ["ip", "-json", "-4", "route", "show", "table", "local", "type", "local", "dev", "lo"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        return ()
    return parse_routes(found.stdout)


def parse_routes(ip_json: str) -> tuple[ipaddress.IPv4Network, ...]:
    """The routes inside :data:`BENCHMARK_BLOCK` in ``ip -json route show`` output."""
    networks = []
    for route in json.loads(ip_json or "[]"):
        try:
            network = ipaddress.IPv4Network(str(route.get("dst", "")))
        except ValueError:
            continue
        if network.subnet_of(BENCHMARK_BLOCK):
            networks.append(network)
    return tuple(networks)


def routed_cidr(
    cidr: str, installed_networks: Collection[ipaddress.IPv4Network] | None = None
) -> str:
    """Return ``cidr`` if it lies inside :data:`BENCHMARK_BLOCK` and inside a network whose
    local route is installed (``installed_networks``; None: ask the kernel), else raise."""
    network = ipaddress.ip_network(cidr)
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"refusing routed CIDR {cidr!r}: IPv4 only")
    in_block(network)
    networks = installed() if installed_networks is None else installed_networks
    if not any(network.subnet_of(n) for n in networks):
        raise ValueError(
            f"refusing routed CIDR {cidr!r}: no local route covers it (enter "
            "localcluster.routed.routed_network() first)"
        )
    return cidr


def pod_host(host: str, installed_networks: Collection[ipaddress.IPv4Network] | None = None) -> str:
    """Return ``host`` if it is a loopback address, or an address of a routed pod network that
    is installed (``installed_networks``; None: ask the kernel), else raise."""
    try:
        return loopback_host(host)
    except ValueError:
        pass
    if not in_routed_block(host):
        raise ValueError(
            f"refusing pod address {host!r}: neither loopback nor in the routed block "
            f"{BENCHMARK_BLOCK}"
        )
    routed_cidr(f"{host}/32", installed_networks)
    return host


@contextmanager
def routed_network(
    network: ipaddress.IPv4Network = POD_NETWORK,
) -> Iterator[ipaddress.IPv4Network]:
    """Make every address of ``network`` local to this machine while the block runs.

    Refuses a network outside :data:`BENCHMARK_BLOCK`, and one that overlaps a local route
    already installed (another bench's: removing it at exit would pull it from under them).
    """
    in_block(network)
    reason = unavailable()
    if reason is not None:
        raise RoutedNetworkError(reason)
    held = [n for n in installed() if n.overlaps(network)]
    if held:
        raise RoutedNetworkError(
            f"a local route for {held[0]} is installed already (another run's, or one left "
            f"behind: `ip route del local {held[0]} dev lo` removes it)"
        )
    route = ["local", str(network), "dev", "lo"]
    added = subprocess.run(
        ["ip", "route", "add", *route], capture_output=True, text=True, check=False
    )
    if added.returncode != 0:
        raise RoutedNetworkError(f"ip route add {network}: {added.stderr.strip()}")
    try:
        yield network
    finally:
        removed = subprocess.run(
            ["ip", "route", "del", *route], capture_output=True, text=True, check=False
        )
        if removed.returncode != 0 and network in installed():
            raise RoutedNetworkError(f"ip route del {network}: {removed.stderr.strip()}")
