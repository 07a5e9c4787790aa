"""kube-proxy (nftables mode) for the local cluster, so a plain Service routes to the fake pods.

The local cluster runs no kube-proxy: its pods' 127.1.x.y addresses are reached directly. For a
benchmark that compares with a plain Kubernetes Service, :class:`KubeProxy` runs the real
kube-proxy (built from ``k8s.io/kubernetes/cmd/kube-proxy`` like the other binaries, see
:mod:`localcluster.build`) against the cluster in nftables mode: it programs the tables
``ip kube-proxy`` / ``ip6 kube-proxy`` of this machine's network namespace, whose rules DNAT
locally generated connections to a ClusterIP (10.96.0.0/16) onto a Ready endpoint. It needs
root (CAP_NET_ADMIN) and the ``nft`` command (Debian's ``nftables`` package);
:func:`unavailable` says why it cannot run, or None. Its tables are deleted when it stops.
Conntrack sysctls are left alone (``--conntrack-*`` = 0).

A Service of pods on the default fleet still routes nowhere: the API server refuses loopback
addresses in EndpointSlices ("may not be in the loopback range"), and those pods have 127.1.x.y
addresses, so the EndpointSlice controller can publish no endpoint. Pods of a fleet on a routed
pod network (:func:`localcluster.nodes.on_routed_network`, while
:func:`localcluster.routed.routed_network` has made 198.18.0.0/16 local) do get endpoints, and
kube-proxy's rules DNAT the ClusterIP to them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import IO

from localcluster import build
from localcluster.cluster import LocalCluster, free_ports
from localcluster.polling import wait_for


def unavailable() -> str | None:
    """Why kube-proxy cannot run here, or None."""
    if os.geteuid() != 0:
        return "kube-proxy programs nftables and needs root (CAP_NET_ADMIN)"
    if shutil.which("nft") is None:
        return "the nft command is missing (install Debian's nftables package)"
    probe = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"nftables is not usable here: {probe.stderr.strip()}"
    return None


class KubeProxy:
    def __init__(self, cluster: LocalCluster, node: str, log_path: Path) -> None:
        self.cluster, self.node, self.log_path = cluster, node, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.healthz = 0

    def start(self) -> KubeProxy:
        build.ensure_built(["kube-proxy"])
        self.healthz, metrics = free_ports(2)
        argv = [
            str(build.binary("kube-proxy")),
            f"--kubeconfig={self.cluster.kubeconfig}",
            "--proxy-mode=nftables",
            f"--hostname-override={self.node}",
            f"--healthz-bind-address=127.0.0.1:{self.healthz}",
            f"--metrics-bind-address=127.0.0.1:{metrics}",
            # No NodePort rules on this machine's own addresses.
            "--nodeport-addresses=127.255.255.254/32",
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--v=1",
        ]
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._synced, 60, f"kube-proxy did not program its rules; see {self.log_path}")
        return self

    def _synced(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"kube-proxy exited with {self.process.returncode}")
        found = subprocess.run(
            ["nft", "list", "table", "ip", "kube-proxy"], capture_output=True, check=False
        )
        return found.returncode == 0 and b"services" in found.stdout

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        for family in ("ip", "ip6"):
            subprocess.run(
                ["nft", "delete", "table", family, "kube-proxy"], capture_output=True, check=False
            )
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> KubeProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
