"""The local control plane itself: real apiserver, controllers, scheduler, kwok, RBAC."""

from __future__ import annotations

import ipaddress
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from localcluster import build, lws, nodes, versions
from localcluster.cluster import LWS_COMPONENT, LocalCluster
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

H100_NODES = {n.name for n in nodes.with_gpu(nodes.H100)}


def _namespace(cluster: LocalCluster, name: str) -> str:
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: (
            cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode
            == 0
        ),
        30,
        f"default service account in namespace {name}",
    )
    return name


def test_server_and_client_report_pinned_version(cluster: LocalCluster) -> None:
    info = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert info["serverVersion"]["gitVersion"] == versions.KUBERNETES
    assert info["clientVersion"]["gitVersion"] == versions.KUBERNETES


def test_components_listen_on_loopback_only(cluster: LocalCluster) -> None:
    listeners = cluster.listeners()
    components = {name for name, _address, _port in listeners}
    assert components == {p.name for p in cluster.processes}, listeners
    cluster.assert_loopback_only()


def test_default_cluster_has_no_leaderworkerset_api(cluster: LocalCluster) -> None:
    assert LWS_COMPONENT not in cluster.running()
    ok, answer = cluster.api_get(f"/apis/{lws.API_VERSION}")
    assert not ok
    assert answer.startswith("HTTP 404"), answer


def test_fake_gpu_nodes_are_ready_with_gpu_labels_and_capacity(cluster: LocalCluster) -> None:
    listed = cluster.kubectl_json("get", "nodes", "-l", "=".join(nodes.FAKE_NODE_LABEL))
    by_name: dict[str, Any] = {item["metadata"]["name"]: item for item in listed["items"]}
    assert set(by_name) == {n.name for n in nodes.NODES}
    for fake in nodes.NODES:
        node = by_name[fake.name]
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == fake.gpu.product
        assert labels["nvidia.com/gpu.memory"] == str(fake.gpu.memory_mib)
        assert labels["nvidia.com/gpu.count"] == str(fake.gpu.gpus)
        assert labels["nvidia.com/gpu.present"] == "true"
        assert labels["topology.kubernetes.io/region"] == fake.region
        assert labels["topology.kubernetes.io/zone"] == fake.zone
        assert labels["node.kubernetes.io/instance-type"] == fake.gpu.instance_type
        assert node["status"]["allocatable"][nodes.GPU_RESOURCE] == str(fake.gpu.gpus)
        assert node["status"]["capacity"][nodes.GPU_RESOURCE] == str(fake.gpu.gpus)
        assert node["spec"]["podCIDR"] == fake.pod_cidr
        assert nodes.GPU_TAINT in node["spec"]["taints"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready, node["status"]["conditions"]
        assert ready[0]["status"] == "True"
    # Residency tests rely on H100s in both regions.
    assert {n.region for n in nodes.with_gpu(nodes.H100)} == set(nodes.REGIONS)


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": nodes.H100.product},
                    "tolerations": [nodes.GPU_TOLERATION],
                    "containers": [
                        {
                            "name": "engine",
                            "image": "registry.invalid/engine:fake",
                            "resources": {
                                "requests": {nodes.GPU_RESOURCE: "8", "cpu": "16"},
                                "limits": {nodes.GPU_RESOURCE: "8"},
                            },
                        }
                    ],
                },
            },
        },
    }


def test_gpu_deployment_is_scheduled_run_and_garbage_collected(cluster: LocalCluster) -> None:
    ns = _namespace(cluster, "it-scheduling")
    name = "h100-engine"
    replicas = 2
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(_deployment(name, replicas)))

    # The controller-manager turns the Deployment into a ReplicaSet it owns...
    def replica_sets() -> list[Any]:
        items: list[Any] = cluster.kubectl_json(
            "get", "replicasets", "-n", ns, "-l", f"app={name}"
        )["items"]
        return items

    owned = wait_for(replica_sets, 30, "ReplicaSet for the Deployment")
    assert owned[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"

    # ... the scheduler binds its pods to H100 nodes, kwok reports them Running with an IP.
    def running_pods() -> list[Any]:
        pods: list[Any] = cluster.kubectl_json("get", "pods", "-n", ns, "-l", f"app={name}")[
            "items"
        ]
        running = [
            p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")
        ]
        return running if len(running) == replicas else []

    pods = wait_for(running_pods, 60, f"{replicas} Running pods with an IP")
    ips = set()
    hosts = set()
    for pod in pods:
        node_name = pod["spec"]["nodeName"]
        assert node_name in H100_NODES
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip.is_loopback, ip
        assert ip in ipaddress.ip_network(nodes.node(node_name).pod_cidr)
        assert pod["status"]["hostIP"] == nodes.node(node_name).internal_ip
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        ips.add(ip)
        hosts.add(node_name)
    assert len(ips) == replicas, "pod IPs must be unique"
    # Each pod takes all 8 GPUs of a node, so the scheduler must spread them.
    assert len(hosts) == replicas

    # Deleting the Deployment garbage-collects the ReplicaSet and its pods.
    cluster.kubectl("delete", "deployment", name, "-n", ns, "--wait=false")
    wait_for(lambda: not replica_sets(), 60, "ReplicaSet garbage-collected")
    wait_for(
        lambda: not cluster.kubectl_json("get", "pods", "-n", ns, "-l", f"app={name}")["items"],
        60,
        "pods garbage-collected",
    )


def test_pod_needing_more_gpus_than_any_node_stays_pending(cluster: LocalCluster) -> None:
    ns = _namespace(cluster, "it-unschedulable")
    deployment = _deployment("too-big", 1)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {nodes.GPU_RESOURCE: "16"}}
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(deployment))

    def unschedulable() -> bool:
        pods = cluster.kubectl_json("get", "pods", "-n", ns)["items"]
        conditions = [c for p in pods for c in p["status"].get("conditions", [])]
        return any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions
        )

    wait_for(unschedulable, 60, "scheduler marks the 16-GPU pod Unschedulable")


def test_rbac_denies_a_service_account_without_bindings(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    ns = _namespace(cluster, "it-rbac")
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", ns)
    token = cluster.kubectl("create", "token", "nobody", "-n", ns).stdout.strip()
    assert token
    config = cluster.token_kubeconfig(token, tmp_path / "nobody.kubeconfig")
    kubectl = str(build.binary("kubectl"))

    def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl, f"--kubeconfig={config}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=cluster.env(),
            check=False,
        )

    denied = as_nobody("get", "pods", "-n", ns)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr, denied.stderr
    assert f"system:serviceaccount:{ns}:nobody" in denied.stderr, denied.stderr

    # The raw API answers 403 (authenticated, not authorized) rather than 401.
    request = urllib.request.Request(
        f"{cluster.server}/api/v1/namespaces/{ns}/pods",
        headers={"Authorization": f"Bearer {token}"},
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=_ca_only_context(cluster)),
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        opener.open(request, timeout=10)
    with raised.value as error:
        assert error.code == 403

    # The same token works once RBAC grants it something: the 403 came from authorization.
    cluster.kubectl(
        "create", "rolebinding", "nobody-view", "--clusterrole=view",
        f"--serviceaccount={ns}:nobody", "-n", ns,
    )  # fmt: skip
    wait_for(lambda: as_nobody("get", "pods", "-n", ns).returncode == 0, 30, "view binding")


def _ca_only_context(cluster: LocalCluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cluster.pki_dir / "ca.crt"))
