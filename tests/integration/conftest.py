"""Fixtures for tests against the local control plane (see ``localcluster``).

``cluster`` (session scope) is a running :class:`~localcluster.cluster.LocalCluster` with the
fake GPU nodes of :mod:`localcluster.nodes` created and Ready: use ``cluster.kubeconfig`` and
``cluster.kubectl(*args, input=None, check=True)``. Missing binaries are built first (a long
one-time build), never skipped. ``wait_for(predicate, timeout, message)`` is the bounded poll
to use instead of sleeps.

``lws_cluster`` (session scope) is a second cluster started with ``leaderworkerset=True``:
LeaderWorkerSet's CRDs, manager and webhooks, and the same fake nodes on their own pod network
(127.43.x, :func:`localcluster.nodes.on_pod_network`) so that it can run alongside ``cluster``.

``crd`` installs the ModelDeployment CRD; ``operator`` (session scope, one for every module so
two never fight over the same objects) runs ``gantry-operator`` as a process with
:data:`OPERATOR_ENV`; ``ns`` is a fresh :class:`Namespace` with a bound ``models`` PVC.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from localcluster import build, nodes
from localcluster.cluster import LocalCluster
from localcluster.log import sayer
from localcluster.operator_process import CRD, OperatorProcess
from localcluster.polling import wait_for
from localcluster.volumes import models_volume

__all__ = [
    "OPERATOR_ENV",
    "RESYNC_SECONDS",
    "SETTLE",
    "Namespace",
    "cluster",
    "crd",
    "lws_cluster",
    "ns",
    "operator",
    "wait_for",
]

#: Bounded wait for the operator to converge.
SETTLE = 90.0
#: The autoscaler ticks every second (default 10) so autoscaling tests react quickly; where
#: autoscaling is off it only scrapes and exports the load gauges.
OPERATOR_ENV = {"GANTRY_AUTOSCALE_INTERVAL": "1"}
#: The operator's resync period in tests: drift must be repaired from watch events well
#: before it, and a resync that finds nothing drifted must write nothing.
RESYNC_SECONDS = 20


_say = sayer("gantry-cluster")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    build.ensure_built()
    # A pytest-managed directory rather than a self-deleting one: the component logs of the
    # last few runs stay around (pytest prunes older ones) for post-mortems.
    state_dir = tmp_path_factory.mktemp("cluster")
    started = time.monotonic()
    with LocalCluster(state_dir, log=_say) as local:
        nodes.create(local)
        _say(f"cluster with {len(nodes.NODES)} nodes up in {time.monotonic() - started:.1f}s")
        yield local


@pytest.fixture(scope="session")
def lws_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    build.ensure_built()
    state_dir = tmp_path_factory.mktemp("lws-cluster")
    started = time.monotonic()
    with LocalCluster(state_dir, log=_say, leaderworkerset=True) as local:
        nodes.create(local, nodes.on_pod_network(nodes.NODES, nodes.LWS_POD_NETWORK))
        _say(f"cluster with LeaderWorkerSet up in {time.monotonic() - started:.1f}s")
        yield local


@pytest.fixture(scope="session")
def crd(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.wait_established("modeldeployments.gantry.dev")


@pytest.fixture(scope="session")
def operator(
    cluster: LocalCluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(
        cluster.kubeconfig,
        log,
        env=OPERATOR_ENV,
        extra_args=(f"--resync-seconds={RESYNC_SECONDS}",),
    ).start()
    yield process
    process.stop()


class Namespace:
    """A fresh namespace with a bound ``models`` PVC, and helpers scoped to it."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.cluster, self.name = cluster, name

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl("-n", self.name, *args, input=input, check=check)

    def get(self, kind: str, name: str) -> Any:
        result = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, selector: str) -> list[Any]:
        return list(
            json.loads(self.kubectl("get", kind, "-l", selector, "-o", "json").stdout)["items"]
        )

    def apply(self, manifest: dict[str, Any] | str) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.kubectl("apply", "-f", "-", input=text, check=False)  # type: ignore[no-any-return]

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        md = self.get("md", name) or {}
        for cond in md.get("status", {}).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            cond = self.condition(name, type_)
            ok = cond.get("status") == status and (reason is None or cond.get("reason") == reason)
            return cond if ok else None

        found = wait_for(check, SETTLE, f"{name}: condition {type_}={status} ({reason})")
        return found or {}


@pytest.fixture
def ns(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[Namespace]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    space = Namespace(cluster, name)
    cluster.kubectl("apply", "-f", "-", input=models_volume(name))
    yield space
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    cluster.kubectl("delete", "pv", f"models-{name}", "--wait=false", check=False)
