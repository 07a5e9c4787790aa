"""Multi-node replicas as LeaderWorkerSet groups, on the real LeaderWorkerSet controller.

The ``lws_cluster`` runs LeaderWorkerSet's own manager and webhooks (built from
``sigs.k8s.io/lws``) beside the real API server, scheduler and controllers; its fake nodes add
two H100 and two H200 nodes to eu-west-1 (four 8 x H100 nodes there). Gantry's operator runs
with a cluster policy that enables multi-node replicas, and the process runner starts
``gantry-runtime serve --simulate`` for each pod of a group: the leader serves the OpenAI API,
the worker waits for the leader's port as on a GPU node (the runner gives it the leader pod's IP
for LWS_LEADER_ADDRESS, since the local cluster has no DNS).
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gantry_runtime.launchspec import ENV_VAR, LaunchSpec, group_position, vllm_argv
from localcluster.cluster import LocalCluster
from localcluster.operator_process import CRD, OperatorProcess
from localcluster.runner import ProcessRunner
from localcluster.volumes import models_volume

from .conftest import OPERATOR_ENV, RESYNC_SECONDS, SETTLE, Namespace, wait_for

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
MD_LABEL = "gantry.dev/model-deployment"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
REVISION = "leaderworkerset.sigs.k8s.io/template-revision-hash"
GPU = "nvidia.com/gpu"


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return doc


@pytest.fixture(scope="module")
def lws_operator(
    lws_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    lws_cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    lws_cluster.wait_established("modeldeployments.gantry.dev")
    workdir = tmp_path_factory.mktemp("lws-operator")
    policy = workdir / "policy.yaml"
    policy.write_text("multiNode:\n  enabled: true\n")
    process = OperatorProcess(
        lws_cluster.kubeconfig,
        workdir / "operator.log",
        env=OPERATOR_ENV,
        extra_args=(f"--resync-seconds={RESYNC_SECONDS}", f"--policy={policy}"),
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def lws_runner(
    lws_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessRunner]:
    with ProcessRunner(lws_cluster.kubeconfig, tmp_path_factory.mktemp("lws-runtime")) as running:
        yield running


@pytest.fixture
def space(
    lws_cluster: LocalCluster, lws_operator: OperatorProcess, lws_runner: ProcessRunner
) -> Iterator[Namespace]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    lws_cluster.kubectl("create", "namespace", name)
    lws_cluster.kubectl("apply", "-f", "-", input=models_volume(name))
    yield Namespace(lws_cluster, name)
    # The next test needs the GPU nodes back: wait until this one's pods are gone.
    lws_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    wait_for(
        lambda: not pods_of(Namespace(lws_cluster, name), None),
        SETTLE,
        f"pods of namespace {name} gone",
    )
    lws_cluster.kubectl("delete", "pv", f"models-{name}", "--wait=false", check=False)


def pods_of(ns: Namespace, name: str | None) -> list[dict[str, Any]]:
    selector = f"{MD_LABEL}={name}" if name else MD_LABEL
    result = ns.kubectl("get", "pods", "-l", selector, "-o", "json", check=False)
    return list(json.loads(result.stdout)["items"]) if result.returncode == 0 else []


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def groups(ns: Namespace, name: str) -> dict[str, dict[str, dict[str, Any]]]:
    """group index -> worker index -> pod, of the live (not terminating) pods."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for pod in pods_of(ns, name):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        labels = pod["metadata"]["labels"]
        found.setdefault(labels[GROUP_INDEX], {})[labels[WORKER_INDEX]] = pod
    return found


def wait_groups_ready(ns: Namespace, name: str, count: int, size: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = groups(ns, name)
        complete = [
            g for g in found.values() if len(g) == size and all(ready(p) for p in g.values())
        ]
        return found if len(found) == count and len(complete) == count else None

    return wait_for(check, SETTLE, f"{name}: {count} groups of {size} Ready pods") or {}


def logged_argv(runner: ProcessRunner, pod: dict[str, Any]) -> list[str]:
    """The `vllm serve` command line gantry-runtime printed in that pod (the runner's log file
    of the pod, named as ProcessRunner names it)."""
    log_dir = runner.log_dir
    meta = pod["metadata"]
    path = log_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}.log"

    def line() -> str | None:
        if not path.exists():
            return None
        return next((t for t in path.read_text().splitlines() if t.startswith("vllm serve")), None)

    found = wait_for(line, SETTLE, f"argv in {path.name}") or ""
    return shlex.split(found)


def pod_env(pod: dict[str, Any]) -> dict[str, str]:
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


@pytest.mark.parametrize(
    ("example_name", "product"),
    [("deepseek-v3-h100", "NVIDIA-H100-80GB-HBM3"), ("kimi-k2-h200", "NVIDIA-H200")],
)
def test_a_replica_larger_than_a_node_is_one_group_on_distinct_nodes(
    space: Namespace, lws_runner: ProcessRunner, example_name: str, product: str
) -> None:
    md = example(example_name)
    name = md["metadata"]["name"]
    assert space.apply(md).returncode == 0
    space.wait_condition(name, "Ready", "True", "AllReplicasReady")
    status = space.get("md", name)["status"]
    plan = status["plan"]
    size = int(plan["nodesPerReplica"])
    assert size == 2
    (group,) = wait_groups_ready(space, name, 1, size).values()
    leader, worker = group["0"], group["1"]
    # One pod per node, each holding all of that node's GPUs, on the GPU type asked for, the
    # group in one region.
    assert leader["spec"]["nodeName"] != worker["spec"]["nodeName"]
    regions = set()
    per_node = str(int(plan["gpusPerReplica"]) // size)
    for pod in (leader, worker):
        node = json.loads(
            space.cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout
        )
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == product
        regions.add(node["metadata"]["labels"]["topology.kubernetes.io/region"])
        (container,) = pod["spec"]["containers"]
        assert container["resources"]["limits"][GPU] == per_node == "8"
    assert len(regions) == 1
    # The LeaderWorkerSet controller's webhook told each pod its place in the group.
    lws = space.get("leaderworkerset", name)
    assert lws["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert pod_env(worker)["LWS_LEADER_ADDRESS"] == f"{name}-0.{name}-0.{space.name}"
    # LeaderWorkerSet's headless Service for the group's DNS names (one per group, owned by its
    # leader pod) is apart from the ModelDeployment's serving Service.
    headless = space.get("service", f"{name}-0")
    assert headless["spec"]["clusterIP"] == "None"
    (owner,) = headless["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("Pod", f"{name}-0")
    assert pod_env(worker)["LWS_WORKER_INDEX"] == "1"
    assert pod_env(leader)["LWS_GROUP_SIZE"] == "2"
    # Each pod ran the argv the plan calls for at its rank; the worker joined the leader's IP.
    spec = LaunchSpec.from_json(pod_env(leader)[ENV_VAR])
    assert (spec.tensor_parallel_size, spec.pipeline_parallel_size) == (
        plan["tensorParallelSize"],
        plan["pipelineParallelSize"],
    )
    for pod in (leader, worker):
        # As the runner gives it: the leader's IP for its DNS name, fieldRefs resolved.
        env = {
            **pod_env(pod),
            "LWS_LEADER_ADDRESS": leader["status"]["podIP"],
            "VLLM_HOST_IP": pod["status"]["podIP"],
        }
        position = group_position(spec, env)
        want = vllm_argv(spec, host=pod["status"]["podIP"], position=position)
        assert logged_argv(lws_runner, pod) == want
    assert "--headless" in logged_argv(lws_runner, worker)
    assert "--headless" not in logged_argv(lws_runner, leader)
    # Only the leader serves: the Service selects it alone, and so does status.selector.
    service = space.get("service", name)
    assert service["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert service["spec"]["selector"][WORKER_INDEX] == "0"
    # (No EndpointSlice to read: the API server refuses the local cluster's loopback pod IPs.)
    labels = {p["metadata"]["name"]: p["metadata"]["labels"] for p in (leader, worker)}
    chosen = [
        n
        for n, pod_labels in labels.items()
        if service["spec"]["selector"].items() <= pod_labels.items()
    ]
    assert chosen == [leader["metadata"]["name"]]
    assert f"{WORKER_INDEX}=0" in status["selector"]
    assert status["readyReplicas"] == 1
    header, row = (line.split() for line in space.kubectl("get", "md", name).stdout.splitlines())
    assert row[header.index("NODES")] == "2"


def test_a_deleted_worker_restarts_its_group_and_nothing_else(space: Namespace) -> None:
    md = example("deepseek-v3-h100")
    md["spec"]["replicas"] = 2
    name = md["metadata"]["name"]
    assert space.apply(md).returncode == 0
    before = wait_groups_ready(space, name, 2, 2)
    space.wait_condition(name, "Ready", "True", "AllReplicasReady")
    uids = {g: {i: p["metadata"]["uid"] for i, p in pods.items()} for g, pods in before.items()}
    space.kubectl("delete", "pod", before["1"]["1"]["metadata"]["name"], "--wait=false")

    def recreated() -> dict[str, Any] | None:
        now = groups(space, name)
        group = now.get("1", {})
        fresh = len(group) == 2 and all(
            ready(p) and p["metadata"]["uid"] not in uids["1"].values() for p in group.values()
        )
        return now if fresh else None

    after = wait_for(recreated, SETTLE, "group 1 recreated as a whole") or {}
    # Group 0 was not touched.
    assert {i: p["metadata"]["uid"] for i, p in after["0"].items()} == uids["0"]
    wait_for(
        lambda: (space.get("md", name) or {}).get("status", {}).get("groupRestarts") == 1,
        SETTLE,
        "status.groupRestarts counts the recreation",
    )
    space.wait_condition(name, "Ready", "True", "AllReplicasReady")


def test_kubectl_scale_adds_groups_until_nodes_lack(space: Namespace) -> None:
    md = example("deepseek-v3-h100")
    name = md["metadata"]["name"]
    assert space.apply(md).returncode == 0
    wait_groups_ready(space, name, 1, 2)
    space.kubectl("scale", f"md/{name}", "--replicas=2")
    found = wait_groups_ready(space, name, 2, 2)
    nodes = {p["spec"]["nodeName"] for g in found.values() for p in g.values()}
    assert len(nodes) == 4  # the four 8 x H100 nodes of eu-west-1
    space.wait_condition(name, "Ready", "True", "AllReplicasReady")
    assert space.get("leaderworkerset", name)["spec"]["replicas"] == 2
    # A third group needs two more H100 nodes in eu-west-1: it waits, and says why.
    space.kubectl("scale", f"md/{name}", "--replicas=3")
    progressing = space.wait_condition(name, "Progressing", "True", "Unschedulable")
    assert "cannot be scheduled" in progressing["message"]
    assert space.condition(name, "Ready")["reason"] == "PartiallyReady"
    assert space.get("md", name)["status"]["readyReplicas"] == 2


def test_an_engine_args_update_rolls_with_the_old_group_serving(space: Namespace) -> None:
    md = example("deepseek-v3-h100")
    name = md["metadata"]["name"]
    assert space.apply(md).returncode == 0
    (old,) = wait_groups_ready(space, name, 1, 2).values()
    old_revision = old["0"]["metadata"]["labels"][REVISION]
    space.wait_condition(name, "Ready", "True", "AllReplicasReady")
    md["spec"]["serving"]["engineArgs"] = {"enable-prefix-caching": "false"}
    assert space.apply(md).returncode == 0
    # Until the new group is Ready, a Ready leader serves at every moment.
    deadline = time.monotonic() + SETTLE
    samples = 0
    while time.monotonic() < deadline:
        leaders = [
            p for p in pods_of(space, name) if p["metadata"]["labels"].get(WORKER_INDEX) == "0"
        ]
        serving = [p for p in leaders if ready(p) and not p["metadata"].get("deletionTimestamp")]
        names = [p["metadata"]["name"] for p in leaders]
        assert serving, f"no Ready leader during the rollout: {names}"
        samples += 1
        revisions = {p["metadata"]["labels"][REVISION] for p in pods_of(space, name)}
        if old_revision not in revisions and len(serving) == 1:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the rollout did not finish")
    assert samples > 1
    (new,) = wait_groups_ready(space, name, 1, 2).values()
    spec = LaunchSpec.from_json(pod_env(new["0"])[ENV_VAR])
    assert ("--no-enable-prefix-caching", None) in spec.extra_args
    space.wait_condition(name, "Ready", "True", "AllReplicasReady")


def test_without_leader_worker_set_nothing_is_created(ns: Namespace) -> None:
    """The shared cluster has no LeaderWorkerSet and its operator runs without the policy."""
    md = example("deepseek-v3-h100")
    name = md["metadata"]["name"]
    assert ns.apply(md).returncode == 0
    ready_cond = ns.wait_condition(name, "Ready", "False", "MultiNodeUnavailable")
    assert "leaderWorkerSet.enabled=true" in ready_cond["message"]
    assert "install LeaderWorkerSet" in ready_cond["message"]
    assert ns.get("md", name)["status"]["phase"] == "Failed"
    for kind in ("deployment", "service", "pdb"):
        assert ns.get(kind, name) is None
    assert pods_of(ns, name) == []


def blocker(name: str, node: str) -> dict[str, Any]:
    """A pod that holds all eight GPUs of ``node`` (not Gantry's: nothing runs for it)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "hold", "image": "hold", "resources": {"limits": {GPU: "8"}}}],
        },
    }


def test_a_group_never_straddles_regions(space: Namespace) -> None:
    """Free H100 nodes in two regions, one each: LeaderWorkerSet alone would place the group
    across both; Gantry's pod affinity keeps it Pending, saying why, until one region has room."""
    held = ["h100-eu-west-1a", "h100-eu-west-1b", "h100-eu-west-1c", "h100-us-east-1a"]
    for node in held:
        assert space.apply(blocker(f"hold-{node}", node)).returncode == 0
    md = example("deepseek-v3-h100")
    del md["spec"]["residency"]["regions"]
    name = md["metadata"]["name"]
    assert space.apply(md).returncode == 0
    progressing = space.wait_condition(name, "Progressing", "True", "Unschedulable")
    assert "cannot be scheduled" in progressing["message"]
    placed = [p for p in pods_of(space, name) if p["spec"].get("nodeName")]
    assert len(placed) <= 1, [p["spec"]["nodeName"] for p in placed]
    for node in held:
        space.kubectl("delete", "pod", f"hold-{node}", "--wait=false")
    (group,) = wait_groups_ready(space, name, 1, 2).values()
    region_of = {
        n["metadata"]["name"]: n["metadata"]["labels"]["topology.kubernetes.io/region"]
        for n in json.loads(space.cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    }
    assert len({region_of[p["spec"]["nodeName"]] for p in group.values()}) == 1
    space.wait_condition(name, "Ready", "True", "AllReplicasReady")
