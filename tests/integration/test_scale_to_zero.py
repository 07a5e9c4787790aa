"""Scale to zero against the real gantry-gateway: a ModelDeployment with ``minReplicas: 0``
stays up while no gateway reports on it (missing data is never idle) and while requests flow
through the gateway, goes to zero replicas once the gateway's metrics show no traffic for
``scaleToZeroAfterSeconds``, and a request at zero is held and served after the wake-up.

The gateway is a Pod in the operator's gateway namespace (``gantry-system``, the default of
``--gateway-namespace``) with the label ``app.kubernetes.io/component=gateway``; kwok gives it a
loopback pod IP, and the real ``gantry-gateway`` process (``python -m gantry_gateway``) listens
there, its metrics on port 9091 as in a cluster. The operator finds the pod through its watch
and scrapes it like any runtime pod. A ProcessRunner runs the simulator for the runtime pods,
so requests through the gateway get real answers.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from localcluster import nodes
from localcluster.cluster import LocalCluster, free_ports
from localcluster.operator_process import ROOT
from localcluster.polling import wait_for
from localcluster.runner import ProcessRunner
from tests.integration.conftest import SETTLE, Namespace

pytestmark = pytest.mark.integration

GATEWAY_NAMESPACE = "gantry-system"
METRICS_PORT = 9091
NAME = "idle"
WINDOW = 10  # scaleToZeroAfterSeconds (the CRD's minimum)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def manifest(served: str) -> dict[str, Any]:
    md: dict[str, Any] = yaml.safe_load(
        (ROOT / "deploy" / "examples" / "gpt-oss-20b.yaml").read_text()
    )
    md["metadata"]["name"] = NAME
    md["spec"]["model"]["servedName"] = served
    md["spec"]["replicas"] = 1
    md["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 1,
        "scaleToZeroAfterSeconds": WINDOW,
    }
    return md


def gateway_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": GATEWAY_NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "gantry-gateway",
                "app.kubernetes.io/component": "gateway",
            },
        },
        "spec": {
            "containers": [{"name": "gateway", "image": "gantry-gateway:test"}],
            "tolerations": [dict(nodes.GPU_TOLERATION)],
        },
    }


class Gateway:
    """The real gantry-gateway process, listening on its pod's IP."""

    def __init__(self, cluster: LocalCluster, ip: str, state_dir: Path, tenants: str) -> None:
        (self.port,) = free_ports(1)
        self.ip = ip
        self.log_path = state_dir / "gateway.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gantry_gateway", f"--host={ip}", f"--port={self.port}",
                f"--metrics-port={METRICS_PORT}", f"--kubeconfig={cluster.kubeconfig}",
                f"--audit-log={state_dir / 'audit.jsonl'}", f"--tenant-namespace={tenants}",
            ],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_for(self.ready, 60, f"gateway did not become ready; see {self.log_path}")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
        try:
            with _DIRECT.open(f"http://{self.ip}:{self.port}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    @property
    def base_url(self) -> str:
        return f"http://{self.ip}:{self.port}/v1"

    def metrics(self) -> str:
        url = f"http://{self.ip}:{METRICS_PORT}/metrics"
        with _DIRECT.open(url, timeout=2) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def tenant_ns(cluster: LocalCluster) -> Iterator[str]:
    name = f"s2z-tenants-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def tenant_key(cluster: LocalCluster, namespace: str, models: str) -> str:
    key = f"sk-s2z-{uuid.uuid4().hex}"
    data = {"apiKey": key, "models": models, "requestsPerMinute": "0", "tokensPerMinute": "0"}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s2z", "namespace": namespace, "labels": {"gantry.dev/tenant": "s2z"}},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))
    return key


@pytest.fixture
def runner(cluster: LocalCluster, ns: Namespace, tmp_path: Path) -> Iterator[ProcessRunner]:
    with ProcessRunner(cluster.kubeconfig, tmp_path / "runtime", namespaces=[ns.name]) as running:
        yield running


@pytest.fixture
def gateway(cluster: LocalCluster, tmp_path: Path, tenant_ns: str) -> Iterator[Gateway]:
    name = f"gantry-gateway-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", GATEWAY_NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(gateway_pod(name)))

    def running() -> str | None:
        pod = cluster.kubectl_json("get", "pod", name, "-n", GATEWAY_NAMESPACE)
        status = pod.get("status") or {}
        return status.get("podIP") if status.get("phase") == "Running" else None

    ip = wait_for(running, SETTLE, f"gateway pod {name} not Running with an IP")
    process = Gateway(cluster, str(ip), tmp_path, tenant_ns)
    try:
        yield process
    finally:
        process.stop()
        cluster.kubectl("delete", "pod", name, "-n", GATEWAY_NAMESPACE, "--wait=false", check=False)


def autoscaler(ns: Namespace) -> dict[str, Any]:
    return dict((ns.get("md", NAME) or {}).get("status", {}).get("autoscaler") or {})


def chat(client: openai.OpenAI, model: str) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )


@pytest.mark.usefixtures("runner")
def test_an_idle_model_goes_to_zero_only_on_the_gateways_word(
    cluster: LocalCluster, ns: Namespace, tenant_ns: str, request: pytest.FixtureRequest
) -> None:
    served = f"idle-{ns.name}"
    assert ns.apply(manifest(served)).returncode == 0
    ns.wait_condition(NAME, "Ready", "True", "AllReplicasReady")

    # No gateway pod: nothing is known about the model's traffic, so it is never idle.
    leftover = cluster.kubectl(
        "get", "pods", "-n", GATEWAY_NAMESPACE, "-l", "app.kubernetes.io/component=gateway",
        "-o", "name", check=False,
    ).stdout.strip()  # fmt: skip
    assert not leftover, f"gateway pods left over in {GATEWAY_NAMESPACE}: {leftover}"
    wait_for(
        lambda: "not scaling to zero: no gateway pod" in autoscaler(ns).get("reason", ""),
        SETTLE,
        "status.autoscaler.reason names the missing gateway",
    )
    time.sleep(WINDOW + 5)
    assert ns.get("md", NAME)["spec"]["replicas"] == 1
    assert "idleSince" not in autoscaler(ns)

    # The real gateway; requests through it for longer than the window keep the model up.
    gateway: Gateway = request.getfixturevalue("gateway")
    assert "gantry_gateway_held_requests" in gateway.metrics()
    client = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=tenant_key(cluster, tenant_ns, served),
        max_retries=0,
        timeout=120,
    )
    with client:
        wait_for(lambda: chat(client, served), SETTLE, f"{served} answers through the gateway")
        busy_until = time.monotonic() + WINDOW + 6
        answered = 0
        while time.monotonic() < busy_until:
            assert chat(client, served).choices
            answered += 1
            time.sleep(0.5)
        assert ns.get("md", NAME)["spec"]["replicas"] == 1, "scaled to zero under traffic"
        assert f'model_deployment="{NAME}"' in gateway.metrics()

        # No more requests: after the window, zero replicas.
        quiet_from = time.monotonic()
        wait_for(lambda: autoscaler(ns).get("idleSince"), SETTLE, "status.autoscaler.idleSince")
        wait_for(lambda: ns.get("md", NAME)["spec"]["replicas"] == 0, SETTLE, "scaled to zero")
        waited = time.monotonic() - quiet_from
        assert waited >= WINDOW, f"went to zero {waited:.1f}s after the last request"
        wait_for(lambda: autoscaler(ns).get("desiredReplicas") == 0, SETTLE, "status written")
        record = autoscaler(ns)
        assert "scaled to zero" in record["reason"]
        assert "no requests through the gateway" in record["reason"]
        wait_for(
            lambda: not ns.items("pods", f"gantry.dev/model-deployment={NAME}"),
            SETTLE,
            "no runtime pod left",
        )
        time.sleep(3)  # at zero, with no request held, it stays there
        assert ns.get("md", NAME)["spec"]["replicas"] == 0
        assert autoscaler(ns)["lastScaleTime"] == record["lastScaleTime"]

        # A request at zero is held, the model wakes, and the request is answered.
        woken = chat(client, served)
        assert woken.choices
        assert ns.get("md", NAME)["spec"]["replicas"] == 1
    assert answered >= WINDOW
