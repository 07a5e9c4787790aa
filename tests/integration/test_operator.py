"""The operator against the real local control plane: apply manifests with the real kubectl,
assert the state of the world with bounded waits."""

from __future__ import annotations

import functools
import ipaddress
import json
from typing import Any

import pytest
import yaml

from localcluster import nodes
from localcluster.operator_process import ROOT, OperatorProcess
from localcluster.polling import wait_for
from tests.integration.conftest import SETTLE, Namespace

pytestmark = pytest.mark.integration
EXAMPLES = ROOT / "deploy" / "examples"


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))


def gone(ns: Namespace, kind: str, name: str) -> bool:
    return ns.get(kind, name) is None


def pod_count_is(ns: Namespace, selector: str, count: int) -> bool:
    return len(ns.items("pods", selector)) == count


def runtime_pods(ns: Namespace, name: str) -> list[Any]:
    return ns.items("pods", f"gantry.dev/model-deployment={name}")


def test_examples_run_on_planned_gpus_in_allowed_region(ns: Namespace) -> None:
    ns.kubectl("apply", "-f", str(EXAMPLES))
    ready = ns.wait_condition("gpt-oss-120b", "Ready", "True", "AllReplicasReady")
    assert "1 of 1 replicas ready" in ready["message"]
    md = ns.get("md", "gpt-oss-120b")
    plan = md["status"]["plan"]
    assert (plan["tensorParallelSize"], plan["gpusPerReplica"], plan["nodesPerReplica"]) == (
        2,
        2,
        1,
    )
    assert md["status"]["endpoint"] == f"http://gpt-oss-120b.{ns.name}.svc:8000/v1"
    assert md["status"]["phase"] == "Ready"
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    pods = runtime_pods(ns, "gpt-oss-120b")
    assert len(pods) == 1
    for pod in pods:
        node = nodes.node(pod["spec"]["nodeName"])
        assert node.region == "eu-west-1"
        assert node.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["status"]["phase"] == "Running"
        assert ipaddress.ip_address(pod["status"]["podIP"]).is_loopback
    ns.wait_condition("gpt-oss-20b", "Ready", "True", "AllReplicasReady")
    assert len(runtime_pods(ns, "gpt-oss-20b")) == 2
    assert ns.get("pdb", "gpt-oss-20b") is not None
    assert ns.get("pdb", "gpt-oss-120b") is None
    service = ns.get("service", "gpt-oss-120b")
    assert service["spec"]["ports"][0]["port"] == 8000
    table = ns.kubectl("get", "md").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "MODEL",
        "GPU",
        "GPUS",
        "TP",
        "NODES",
        "REPLICAS",
        "READY",
        "PHASE",
        "AGE",
    ]
    row = next(line.split() for line in table if line.startswith("gpt-oss-120b "))
    assert row[1:9] == ["gpt-oss-120b", "H100-80GB", "2", "2", "1", "1", "1", "Ready"]


def _bad(**spec_changes: Any) -> dict[str, Any]:
    md = example("gpt-oss-20b")
    md["metadata"]["name"] = "bad"
    md["spec"].update(spec_changes)
    return md


CUSTOM_MODEL = {
    "name": "my-llm", "repo": "example/my-llm", "architecture": "LlamaForCausalLM",
    "numLayers": 32, "hiddenSize": 4096, "numAttentionHeads": 32, "numKvHeads": 8,
    "headDim": 128, "maxContext": 32768, "weightBytes": 16_000_000_000, "weightDtype": "bf16",
}  # fmt: skip

BAD_INPUT = {
    "two-sources": (
        _bad(
            source={
                "pvc": {"claimName": "models"},
                "s3": {"endpoint": "http://s3:9000", "bucket": "models"},
            }
        ),
        "spec.source needs exactly one of pvc, s3, image or huggingFace",
    ),
    "hub-while-offline": (
        _bad(source={"huggingFace": {"repo": "openai/gpt-oss-20b"}}),
        "spec.residency.offline=true (the default) forbids",
    ),
    "min-above-max": (
        _bad(autoscaling={"minReplicas": 4, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas must not exceed maxReplicas",
    ),
    "unknown-gpu": (_bad(gpu={"type": "RTX-4090"}), 'Unsupported value: "RTX-4090"'),
    "dashed-engine-arg": (
        _bad(serving={"engineArgs": {"--max-num-seqs": "8"}}),
        "engineArgs keys are flag names without leading dashes",
    ),
    "gpu-in-resources": (
        _bad(runtime={"resources": {"limits": {"nvidia.com/gpu": "1"}}}),
        "must not name accelerators (GPUs of any vendor, MIG profiles, TPUs, Gaudi, Neuron)",
    ),
    "count-vs-tensor": (
        _bad(gpu={"type": "H100-80GB", "count": 3}, parallelism={"tensor": 2}),
        "spec.gpu.count must be a multiple of spec.parallelism.tensor",
    ),
    "preset-and-custom": (
        _bad(model={"preset": "gpt-oss-20b", "custom": CUSTOM_MODEL}),
        "spec.model needs exactly one of preset",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_api_server_rejects_bad_input_with_the_rule_message(ns: Namespace, case: str) -> None:
    manifest, message = BAD_INPUT[case]
    result = ns.apply(manifest)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr
    assert ns.get("md", "bad") is None


def test_name_too_long_is_rejected(ns: Namespace) -> None:
    md = example("gpt-oss-20b")
    md["metadata"]["name"] = "m" * 53
    result = ns.apply(md)
    assert result.returncode != 0
    assert "must be at most 52 characters" in result.stderr


def test_spec_that_does_not_fit_gets_does_not_fit_and_no_workload(ns: Namespace) -> None:
    md = example("gpt-oss-120b")
    md["spec"]["gpu"]["count"] = 1
    assert ns.apply(md).returncode == 0
    cond = ns.wait_condition("gpt-oss-120b", "Ready", "False", "DoesNotFit")
    assert "needs at least 2 x H100-80GB" in cond["message"]
    assert "spec.gpu.count=1 leaves" in cond["message"]
    assert ns.get("md", "gpt-oss-120b")["status"]["phase"] == "Failed"
    assert ns.get("deployment", "gpt-oss-120b") is None
    assert ns.get("service", "gpt-oss-120b") is None


def test_update_that_does_not_fit_keeps_the_serving_workload(ns: Namespace) -> None:
    assert ns.apply(example("gpt-oss-20b")).returncode == 0
    ns.wait_condition("gpt-oss-20b", "Ready", "True", "AllReplicasReady")
    before = ns.get("deployment", "gpt-oss-20b")
    ns.kubectl(
        "patch",
        "md",
        "gpt-oss-20b",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "gpu": {"type": "H100-80GB", "count": 1},
                    "serving": {"targetConcurrency": 64},
                }
            }
        ),
    )
    cond = ns.wait_condition("gpt-oss-20b", "Degraded", "True", "DoesNotFit")
    assert "The last good workload keeps serving" in cond["message"]
    after = ns.get("deployment", "gpt-oss-20b")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == before["spec"]["template"]
    md = ns.get("md", "gpt-oss-20b")
    assert md["status"]["phase"] == "Degraded"
    assert md["status"]["readyReplicas"] == 2
    assert md["status"]["plan"]["maxModelLen"] == 65536
    ns.kubectl(
        "patch",
        "md",
        "gpt-oss-20b",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"serving": {"targetConcurrency": 8}}}),
    )
    ns.wait_condition("gpt-oss-20b", "Degraded", "False", "AsExpected")


def test_kubectl_scale_goes_through_the_scale_subresource(ns: Namespace) -> None:
    md = example("gpt-oss-20b")
    md["spec"]["replicas"] = 1
    assert ns.apply(md).returncode == 0
    ns.wait_condition("gpt-oss-20b", "Ready", "True", "AllReplicasReady")
    ns.kubectl("scale", "md/gpt-oss-20b", "--replicas=3")
    wait_for(
        lambda: (
            (ns.get("deployment", "gpt-oss-20b") or {}).get("status", {}).get("readyReplicas") == 3
        ),
        SETTLE,
        "3 ready runtime pods",
    )
    assert ns.get("pdb", "gpt-oss-20b")["spec"]["maxUnavailable"] == 1
    scale = json.loads(
        ns.kubectl(
            "get",
            "--raw",
            f"/apis/gantry.dev/v1alpha1/namespaces/{ns.name}/modeldeployments/gpt-oss-20b/scale",
        ).stdout
    )
    assert scale["spec"]["replicas"] == 3
    wait_for(
        lambda: ns.get("md", "gpt-oss-20b")["status"].get("readyReplicas") == 3,
        SETTLE,
        "status.readyReplicas 3",
    )
    assert (
        "gantry.dev/model-deployment=gpt-oss-20b"
        in ns.get("md", "gpt-oss-20b")["status"]["selector"]
    )
    ns.kubectl("scale", "md/gpt-oss-20b", "--replicas=1")
    wait_for(lambda: ns.get("pdb", "gpt-oss-20b") is None, SETTLE, "PDB removed at one replica")


def test_drift_is_repaired_and_deletion_collects_children(ns: Namespace) -> None:
    assert ns.apply(example("gpt-oss-20b")).returncode == 0
    ns.wait_condition("gpt-oss-20b", "Ready", "True", "AllReplicasReady")
    deployment = ns.get("deployment", "gpt-oss-20b")
    ns.kubectl("delete", "deployment", "gpt-oss-20b", "--wait=false")
    wait_for(
        lambda: (
            (ns.get("deployment", "gpt-oss-20b") or deployment)["metadata"]["uid"]
            != deployment["metadata"]["uid"]
        ),
        SETTLE,
        "Deployment recreated",
    )
    ns.kubectl(
        "patch", "deployment", "gpt-oss-20b", "--type=merge", "-p", '{"spec":{"replicas":5}}'
    )
    wait_for(
        lambda: ns.get("deployment", "gpt-oss-20b")["spec"]["replicas"] == 2,
        SETTLE,
        "replicas edit reverted",
    )
    service = ns.get("service", "gpt-oss-20b")
    ns.kubectl("delete", "service", "gpt-oss-20b")
    wait_for(
        lambda: (
            (ns.get("service", "gpt-oss-20b") or service)["metadata"]["uid"]
            != service["metadata"]["uid"]
        ),
        SETTLE,
        "Service recreated",
    )
    ns.kubectl("delete", "md", "gpt-oss-20b")
    for kind in ("deployment", "service", "pdb"):
        wait_for(
            functools.partial(gone, ns, kind, "gpt-oss-20b"),
            SETTLE,
            f"{kind} garbage-collected",
        )
    wait_for(lambda: not runtime_pods(ns, "gpt-oss-20b"), SETTLE, "runtime pods garbage-collected")


def test_operator_killed_midway_converges_without_duplicates(
    ns: Namespace, operator: OperatorProcess
) -> None:
    assert ns.apply(example("gpt-oss-20b")).returncode == 0
    ns.wait_condition("gpt-oss-20b", "Ready", "True", "AllReplicasReady")
    operator.kill()
    try:
        assert ns.apply(example("gpt-oss-120b")).returncode == 0
        ns.kubectl("delete", "service", "gpt-oss-20b")
        ns.kubectl("scale", "md/gpt-oss-20b", "--replicas=3")
    finally:
        operator.start()
    ns.wait_condition("gpt-oss-120b", "Ready", "True", "AllReplicasReady")
    wait_for(
        lambda: ns.get("md", "gpt-oss-20b")["status"].get("readyReplicas") == 3,
        SETTLE,
        "20b scaled to 3 after restart",
    )
    assert ns.get("service", "gpt-oss-20b") is not None
    for name, replicas in (("gpt-oss-20b", 3), ("gpt-oss-120b", 1)):
        selector = f"gantry.dev/model-deployment={name}"
        assert len(ns.items("deployments", selector)) == 1
        assert len(ns.items("replicasets", selector)) == 1
        wait_for(
            functools.partial(pod_count_is, ns, selector, replicas),
            SETTLE,
            f"{name}: {replicas} pods",
        )


def test_regions_without_gpu_nodes_stay_pending_and_never_land_elsewhere(ns: Namespace) -> None:
    md = example("gpt-oss-20b")
    md["spec"]["residency"]["regions"] = ["ap-south-1"]
    assert ns.apply(md).returncode == 0
    cond = ns.wait_condition("gpt-oss-20b", "Ready", "False", "Unschedulable")
    assert "node affinity" in cond["message"]
    assert ns.get("md", "gpt-oss-20b")["status"]["phase"] == "Pending"
    assert all(not pod["spec"].get("nodeName") for pod in runtime_pods(ns, "gpt-oss-20b"))


def test_logs_have_no_tracebacks(operator: OperatorProcess) -> None:
    assert "Traceback" not in operator.log(tail=10**7), operator.log()
