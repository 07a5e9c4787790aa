"""InferencePools: the Gateway API Inference Extension's CRD installed while the operator runs
starts one InferencePool per ModelDeployment, without a restart; a deleted pool is repaired.

The CRD is the upstream v1.6.0 file (``fixtures/inference.networking.k8s.io_inferencepools.yaml``,
its origin in its header). The session's operator is restarted with a policy that turns
InferencePools on for this module, and restored afterwards; the CRD is removed again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.cluster import LocalCluster
from localcluster.operator_process import ROOT, OperatorProcess
from localcluster.polling import wait_for
from tests.integration.conftest import RESYNC_SECONDS, SETTLE, Namespace

pytestmark = pytest.mark.integration

CRD_FILE = Path(__file__).parent / "fixtures" / "inference.networking.k8s.io_inferencepools.yaml"
CRD_NAME = "inferencepools.inference.networking.k8s.io"
NAME = "gpt-oss-20b"


@pytest.fixture(scope="module")
def pools_on(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    path: Path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(yaml.safe_dump({"inferencePool": {"enabled": True}}))
    cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found")
    original = operator.extra_args
    operator.stop()
    operator.extra_args = (*original, f"--policy={path}")
    operator.start()
    try:
        yield
    finally:
        operator.stop()
        operator.extra_args = original
        operator.start()
        cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=false")


def manifest() -> dict[str, Any]:
    md: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "examples" / f"{NAME}.yaml").read_text())
    md["spec"]["replicas"] = 1
    return md


def pool(ns: Namespace) -> Any:
    result = ns.kubectl("get", "inferencepools", NAME, "-o", "json", check=False)
    return yaml.safe_load(result.stdout) if result.returncode == 0 else None


@pytest.mark.usefixtures("pools_on")
def test_the_pool_appears_when_its_crd_is_installed_and_is_repaired(
    cluster: LocalCluster, ns: Namespace
) -> None:
    assert ns.apply(manifest()).returncode == 0
    ns.wait_condition(NAME, "Ready", "True", "AllReplicasReady")
    md = ns.get("md", NAME)
    assert cluster.kubectl("get", "crd", CRD_NAME, check=False).returncode != 0
    assert md["status"]["servedModelName"] == "gpt-oss-20b"

    cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    cluster.wait_established(CRD_NAME)
    found = wait_for(lambda: pool(ns), SETTLE, "no InferencePool after the CRD was installed")
    # Deleted at once: the operator's watch on InferencePools may start only now (kopf finds
    # the new resource); the pool must come back however the two race.
    ns.kubectl("delete", "inferencepool", NAME)
    repaired = wait_for(
        lambda: (p := pool(ns)) and p["metadata"]["uid"] != found["metadata"]["uid"] and p,
        SETTLE,
        "the deleted InferencePool was not recreated",
    )
    assert repaired["spec"] == found["spec"]
    assert repaired["apiVersion"] == "inference.networking.k8s.io/v1"
    (owner,) = repaired["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "ModelDeployment",
        NAME,
        md["metadata"]["uid"],
        True,
    )
    assert repaired["spec"]["targetPorts"] == [{"number": 8000}]
    assert "endpointPickerRef" not in repaired["spec"]
    labels = repaired["spec"]["selector"]["matchLabels"]
    assert labels["gantry.dev/model-deployment"] == NAME
    # The selector picks exactly the model's ready runtime pod.
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    (pod,) = ns.items("pods", selector)
    assert pod["metadata"]["labels"]["gantry.dev/model-deployment"] == NAME
    assert pod["status"]["phase"] == "Running"

    # Once the watch runs, a deletion is repaired from its event, well before a resync.
    second = repaired["metadata"]["uid"]
    ns.kubectl("delete", "inferencepool", NAME)
    began = time.monotonic()
    wait_for(
        lambda: (p := pool(ns)) and p["metadata"]["uid"] != second,
        SETTLE,
        "the deleted InferencePool was not recreated the second time",
    )
    assert time.monotonic() - began < RESYNC_SECONDS, "repaired by the resync, not the watch"
