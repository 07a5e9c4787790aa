"""The watch-driven core on the real control plane: drift is repaired from the child's own
watch event, and a resync that finds nothing drifted sends nothing to the API server (counted
by the API server itself, not mocked)."""

from __future__ import annotations

import functools
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from localcluster.cluster import LocalCluster
from localcluster.operator_process import ROOT, OperatorProcess
from localcluster.polling import wait_for
from tests.integration.apiserver import delta, requests
from tests.integration.conftest import RESYNC_SECONDS, SETTLE, Namespace

pytestmark = pytest.mark.integration
EXAMPLE = ROOT / "deploy" / "examples" / "gpt-oss-20b.yaml"
CHILDREN = {"deployments", "services", "poddisruptionbudgets", "networkpolicies"}


def example(path: Path = EXAMPLE) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def operator_counter(operator: OperatorProcess, name: str) -> float:
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_a_deleted_child_is_repaired_from_its_watch_event(ns: Namespace) -> None:
    assert ns.apply(example()).returncode == 0
    ns.wait_condition("gpt-oss-20b", "Ready", "True", "AllReplicasReady")
    for kind in ("service", "pdb"):
        before = ns.get(kind, "gpt-oss-20b")
        ns.kubectl("delete", kind, "gpt-oss-20b")
        # Well inside the resync period: only the watch event can have caused the repair.
        wait_for(
            functools.partial(_recreated, ns, kind, before["metadata"]["uid"]),
            RESYNC_SECONDS / 4,
            f"{kind} recreated from its deletion event",
        )


def _recreated(ns: Namespace, kind: str, old_uid: str) -> bool:
    current = ns.get(kind, "gpt-oss-20b")
    return current is not None and current["metadata"]["uid"] != old_uid


def _no_namespace_terminating(cluster: LocalCluster) -> bool:
    spaces = json.loads(cluster.kubectl("get", "namespaces", "-o", "json").stdout)["items"]
    return all(space["status"].get("phase") != "Terminating" for space in spaces)


def test_a_resync_with_nothing_drifted_writes_nothing(
    ns: Namespace, cluster: LocalCluster, operator: OperatorProcess
) -> None:
    assert ns.apply(example()).returncode == 0
    ns.wait_condition("gpt-oss-20b", "Ready", "True", "AllReplicasReady")
    wait_for(lambda: _no_namespace_terminating(cluster), SETTLE, "earlier test namespaces gone")
    time.sleep(2)  # the last status write's own watch event settles
    resyncs = operator_counter(operator, "gantry_resync_total")
    reconciles = operator_counter(operator, "gantry_reconcile_total")
    before = requests(cluster)
    wait_for(
        lambda: operator_counter(operator, "gantry_resync_total") > resyncs,
        RESYNC_SECONDS * 2,
        "a resync pass",
    )
    time.sleep(2)  # the reconciles the resync queued have run
    after = requests(cluster)
    assert operator_counter(operator, "gantry_reconcile_total") > reconciles
    verbs = {"APPLY", "PATCH", "POST", "PUT", "GET"}
    children = delta(before, after, CHILDREN, verbs)
    assert not {k: v for k, v in children.items() if k[2] == ""}, children
    # Reads of ModelDeployments are not counted: the garbage collector GETs owners it has not
    # seen yet, and the counters do not say who asked. Writes of them are all ours.
    assert not delta(before, after, {"modeldeployments"}, verbs - {"GET"}), after
