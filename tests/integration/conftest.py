"""Fixtures for tests against the local control plane (see ``tests/cluster``).

``cluster`` (session scope) is a running :class:`~tests.cluster.cluster.LocalCluster` with the
fake GPU nodes of :mod:`tests.cluster.nodes` created and Ready: use ``cluster.kubeconfig`` and
``cluster.kubectl(*args, input=None, check=True)``. Missing binaries are built first (a long
one-time build), never skipped. ``wait_for(predicate, timeout, message)`` is the bounded poll
to use instead of sleeps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from tests.cluster import build, nodes
from tests.cluster.cluster import LocalCluster
from tests.cluster.polling import wait_for

__all__ = ["cluster", "wait_for"]


def _say(message: str) -> None:
    print(f"[gantry-cluster] {message}", file=sys.stderr, flush=True)


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
