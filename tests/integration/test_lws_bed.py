"""LeaderWorkerSet on the local cluster: LWS's own manager and webhooks, fake H100 nodes, the
process runner standing in for the kubelet's containers.

One plain LeaderWorkerSet of one group of 2 (leader + 1 worker), each pod asking for a whole
8-GPU H100 node, its pods labelled as Gantry runtime pods so the runner runs a simulator for
each; everything asserted from the API server and from the processes the runner started.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gantry_runtime.launchspec import ENV_VAR, LaunchSpec
from localcluster import lws, nodes
from localcluster.cluster import LWS_COMPONENT, LocalCluster
from localcluster.runner import ProcessRunner, RuntimeProcess
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

NAME = "bed"
SIZE = 2
H100_NODES = {n.name for n in nodes.with_gpu(nodes.H100)}
RUNTIME_LABELS = {
    "app.kubernetes.io/managed-by": "gantry",
    "app.kubernetes.io/component": "runtime",
}
LAUNCH = LaunchSpec(
    model="/models",
    served_model_name="bed",
    tensor_parallel_size=8,
    pipeline_parallel_size=SIZE,
    max_model_len=4096,
    max_num_seqs=4,
    gpu_memory_utilization=0.9,
    shutdown_timeout=0,
)
#: References LWS's injected variable: the kubelet (here the runner) expands it.
LEADER_URL = ("GANTRY_TEST_LEADER_URL", f"http://$({lws.LEADER_ADDRESS_ENV}):8000")


def _template() -> dict[str, Any]:
    return {
        "metadata": {"labels": dict(RUNTIME_LABELS)},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": nodes.H100.product},
            "tolerations": [nodes.GPU_TOLERATION],
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "runtime",
                    "image": "registry.invalid/gantry-runtime:fake",
                    "env": [
                        {"name": ENV_VAR, "value": LAUNCH.to_json()},
                        {"name": LEADER_URL[0], "value": LEADER_URL[1]},
                        {
                            "name": "GANTRY_TEST_POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                    ],
                    "resources": {
                        "requests": {nodes.GPU_RESOURCE: "8", "cpu": "16"},
                        "limits": {nodes.GPU_RESOURCE: "8"},
                    },
                }
            ],
        },
    }


def leader_worker_set() -> dict[str, Any]:
    return {
        "apiVersion": lws.API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": {"name": NAME},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": SIZE,
                "leaderTemplate": _template(),
                "workerTemplate": _template(),
            },
        },
    }


@pytest.fixture(scope="module")
def namespace(lws_cluster: LocalCluster) -> Iterator[str]:
    name = "lws-bed"
    lws_cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: (
            lws_cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0
        ),
        30,
        "the namespace's default service account",
    )
    yield name
    lws_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def runner(
    lws_cluster: LocalCluster, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessRunner]:
    logs = tmp_path_factory.mktemp("lws-runtime")
    with ProcessRunner(lws_cluster.kubeconfig, logs, namespaces=[namespace]) as process_runner:
        yield process_runner


def _pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", f"{lws.NAME_LABEL}={NAME}"
    )["items"]
    return items


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _group(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, Any]]:
    """worker index -> pod, once the group's SIZE pods run with an IP and are not deleting."""
    pods = [
        p
        for p in _pods(cluster, namespace)
        if not p["metadata"].get("deletionTimestamp")
        and p["status"].get("phase") == "Running"
        and p["status"].get("podIP")
    ]
    by_index = {p["metadata"]["labels"][lws.WORKER_INDEX_LABEL]: p for p in pods}
    return by_index if len(by_index) == SIZE and len(pods) == SIZE else {}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def _process_env(process: RuntimeProcess) -> dict[str, str]:
    raw = Path(f"/proc/{process.pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _ready_replicas(cluster: LocalCluster, namespace: str) -> int:
    status = cluster.kubectl_json("get", "leaderworkerset", NAME, "-n", namespace).get("status")
    return int((status or {}).get("readyReplicas") or 0)


def test_manager_listens_on_loopback_and_its_validating_webhook_answers(
    lws_cluster: LocalCluster, namespace: str
) -> None:
    manager = [(a, p) for name, a, p in lws_cluster.listeners() if name == LWS_COMPONENT]
    ports = lws_cluster.lws_ports
    assert ports is not None
    assert sorted(manager) == sorted(
        ("127.0.0.1", port) for port in (ports.webhook, ports.metrics, ports.health)
    )
    lws_cluster.assert_loopback_only()

    # Schema-valid, refused by LWS's validating webhook only.
    invalid = leader_worker_set()
    invalid["metadata"]["name"] = "refused"
    invalid["spec"]["rolloutStrategy"] = {
        "type": "RollingUpdate",
        "rollingUpdateConfiguration": {"maxUnavailable": 0, "maxSurge": 0},
    }
    result = lws_cluster.kubectl(
        "create", "-n", namespace, "--dry-run=server", "-f", "-",
        input=json.dumps(invalid), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert 'admission webhook "vleaderworkerset.kb.io" denied the request' in result.stderr
    assert "must not be 0 when `maxSurge` is 0" in result.stderr


def test_leader_worker_set_group_runs_on_two_h100_nodes_and_is_recreated_whole(
    lws_cluster: LocalCluster, namespace: str, runner: ProcessRunner
) -> None:
    cluster = lws_cluster
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(leader_worker_set()))

    # The mutating webhook defaulted what only it defaults (not the CRD's schema).
    created = cluster.kubectl_json("get", "leaderworkerset", NAME, "-n", namespace)
    assert created["spec"]["networkConfig"] == {"subdomainPolicy": "Shared"}
    rolling = created["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]
    assert rolling == {"maxSurge": 0, "maxUnavailable": 1, "partition": 0}
    assert created["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"

    group = wait_for(lambda: _group(cluster, namespace), 90, f"{SIZE} Running pods of {NAME}")
    leader, worker = group["0"], group["1"]
    assert leader["metadata"]["name"] == f"{NAME}-0"
    assert worker["metadata"]["name"] == f"{NAME}-0-1"

    # The pod webhook injected LWS's env, literal values first, into every container.
    for index, pod in group.items():
        container = pod["spec"]["containers"][0]
        names = [e["name"] for e in container["env"]]
        assert names[:3] == list(lws.INJECTED_ENV)
        env = _env(container)
        assert env[lws.LEADER_ADDRESS_ENV] == f"{NAME}-0.{NAME}.{namespace}"
        assert env[lws.GROUP_SIZE_ENV] == str(SIZE)
        assert env[lws.WORKER_INDEX_ENV] == index
        assert pod["metadata"]["labels"][lws.GROUP_INDEX_LABEL] == "0"
        assert pod["spec"]["subdomain"] == NAME

    # Two distinct H100 nodes, each whole (8 GPUs a pod), pod IPs from their nodes' CIDRs.
    fleet = {n.name: n for n in nodes.on_pod_network(nodes.NODES, nodes.LWS_POD_NETWORK)}
    hosts = {p["spec"]["nodeName"] for p in group.values()}
    assert len(hosts) == SIZE, hosts
    assert hosts <= H100_NODES, hosts
    for pod in group.values():
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip in ipaddress.ip_network(fleet[pod["spec"]["nodeName"]].pod_cidr)

    # The runner runs a process per pod, with the leader's podIP for LWS_LEADER_ADDRESS (no
    # DNS here), references to it expanded and fieldRefs resolved, as a kubelet would.
    def processes() -> dict[str, RuntimeProcess]:
        running = {p.name: p for p in runner.processes().values() if p.alive}
        return (
            running
            if set(running) == {leader["metadata"]["name"], worker["metadata"]["name"]}
            else {}
        )

    running = wait_for(processes, 60, "a runner process for each pod of the group")
    leader_ip = leader["status"]["podIP"]
    for pod in group.values():
        env = _process_env(running[pod["metadata"]["name"]])
        assert env[lws.LEADER_ADDRESS_ENV] == leader_ip
        assert env[LEADER_URL[0]] == f"http://{leader_ip}:8000"
        assert env["GANTRY_TEST_POD_NAME"] == pod["metadata"]["name"]
        assert env["GANTRY_HOST"] == pod["status"]["podIP"]
    note = running[worker["metadata"]["name"]].log.read_text()
    assert f"{lws.LEADER_ADDRESS_ENV}: {NAME}-0.{NAME}.{namespace} -> {leader_ip}" in note

    # Ready pods make a ready group: readyReplicas 1, the scale subresource agrees.
    wait_for(lambda: all(_ready(p) for p in _pods(cluster, namespace)), 60, "pods Ready")
    wait_for(lambda: _ready_replicas(cluster, namespace) == 1, 60, "readyReplicas 1")
    path = f"/apis/{lws.API_VERSION}/namespaces/{namespace}/leaderworkersets/{NAME}/scale"
    scale = json.loads(cluster.kubectl("get", "--raw", path).stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 1
    assert scale["status"]["replicas"] == 1
    assert f"{lws.WORKER_INDEX_LABEL}=0" in scale["status"]["selector"]

    # Deleting the worker makes LWS recreate the whole group: a new leader (new uid).
    cluster.kubectl("delete", "pod", worker["metadata"]["name"], "-n", namespace, "--wait=false")

    def recreated() -> dict[str, dict[str, Any]]:
        pods = _group(cluster, namespace)
        fresh = pods and pods["0"]["metadata"]["uid"] != leader["metadata"]["uid"]
        return pods if fresh and pods["1"]["metadata"]["uid"] != worker["metadata"]["uid"] else {}

    wait_for(recreated, 90, "the group recreated with a new leader")
    wait_for(lambda: _ready_replicas(cluster, namespace) == 1, 60, "readyReplicas 1 again")
    events = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector=reason=RecreateGroup"
    )["items"]
    assert events, "LWS records a RecreateGroup event"
    assert worker["metadata"]["name"] in events[0]["message"]

    # ... and the runner follows: a process per pod of the group as it is now (the group may
    # have been recreated more than once, see the module doc), with its leader's address.
    def settled() -> tuple[dict[str, dict[str, Any]], dict[str, RuntimeProcess]] | None:
        pods = recreated()
        uids = {p["metadata"]["uid"] for p in pods.values()}
        running = {p.name: p for uid, p in runner.processes().items() if uid in uids and p.alive}
        return (pods, running) if pods and len(running) == SIZE else None

    try:
        found = wait_for(settled, 60, "runner processes for the recreated group")
    except AssertionError as error:
        pods = [
            (p["metadata"]["name"], p["metadata"]["uid"][:8], p["status"].get("podIP"))
            for p in _pods(cluster, namespace)
        ]
        raise AssertionError(f"{error}\npods: {pods}\nrunner: {runner.history}") from None
    assert found is not None
    regroup, running = found
    new_ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in regroup.values()}
    for name, process in running.items():
        assert _process_env(process)[lws.LEADER_ADDRESS_ENV] == regroup["0"]["status"]["podIP"]
        assert process.ip == new_ips[name]
    runner.check()
