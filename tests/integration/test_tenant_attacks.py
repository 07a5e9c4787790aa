"""Attacks by a tenant who may only manage ModelDeployments in their namespace, against the
operator: each test is the attack, and asserts the state of the world afterwards.

* Confused deputy: a ModelDeployment named like a platform object must not make the operator
  delete, take over or rewrite it (docs/security.md, "Ownership before every write").
* Refusals become status: a spec the CRD accepts but the Deployment API refuses gets a
  ``ChildRejected`` condition quoting the server, and a missing PriorityClass surfaces as
  ``ReplicaFailure`` rather than "Loading" for ever.
* One pod cannot take the operator down: a runtime pod answering /metrics with an endless body
  is skipped at the byte limit while other ModelDeployments keep being reconciled.
* Nothing stuck Terminating: no finalizer, no kopf annotation, deletion needs no operator.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from localcluster.operator_process import ROOT, OperatorProcess
from localcluster.polling import wait_for
from tests.integration.conftest import SETTLE, Namespace

pytestmark = pytest.mark.integration
EXAMPLE = ROOT / "deploy" / "examples" / "gpt-oss-20b.yaml"


def model(name: str, **spec: Any) -> dict[str, Any]:
    md = yaml.safe_load(EXAMPLE.read_text())
    md["metadata"] = {"name": name}
    md["spec"]["replicas"] = 1
    md["spec"].update(copy.deepcopy(spec))
    return dict(md)


class Tenant:
    """``kubectl`` as a ServiceAccount bound to a Role with rights only on ModelDeployments."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        ns.kubectl("create", "serviceaccount", "tenant")
        ns.kubectl(
            "create", "role", "md-author", "--verb=get,list,watch,create,update,patch,delete",
            "--resource=modeldeployments.gantry.dev",
        )  # fmt: skip
        ns.kubectl(
            "create", "rolebinding", "md-author", "--role=md-author",
            f"--serviceaccount={ns.name}:tenant",
        )  # fmt: skip
        self.user = f"system:serviceaccount:{ns.name}:tenant"

    def kubectl(self, *args: str, input: str | None = None) -> Any:
        return self.ns.kubectl(f"--as={self.user}", *args, input=input, check=False)

    def apply(self, manifest: dict[str, Any]) -> None:
        result = self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        assert result.returncode == 0, result.stderr


@pytest.fixture
def tenant(ns: Namespace) -> Tenant:
    return Tenant(ns)


def platform_object(ns: Namespace, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create an object as the platform team (admin) and return it as stored."""
    ns.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    stored = ns.get(manifest["kind"].lower(), manifest["metadata"]["name"])
    assert stored is not None
    return dict(stored)


def test_tenant_cannot_delete_a_platform_network_policy_by_naming_a_model_after_it(
    ns: Namespace, tenant: Tenant
) -> None:
    refused = tenant.kubectl("delete", "networkpolicy", "platform-deny-egress")
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr
    policy = platform_object(
        ns,
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "platform-deny-egress"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
        },
    )
    pdb = platform_object(
        ns,
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "platform-deny-egress"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"tier": "db"}}},
        },
    )
    tenant.apply(model("platform-deny-egress"))  # one replica: no PDB wanted, no NP wanted
    ns.wait_condition("platform-deny-egress", "Ready", "True", "AllReplicasReady")
    time.sleep(2)  # several reconciles have run (status writes, pod events)
    for before in (policy, pdb):
        after = ns.get(before["kind"].lower(), "platform-deny-egress")
        assert after is not None, f"the operator deleted the platform's {before['kind']}"
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_tenant_cannot_take_over_a_service_by_naming_a_model_after_it(
    ns: Namespace, tenant: Tenant
) -> None:
    service = platform_object(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "billing"},
            "spec": {"selector": {"app": "billing"}, "ports": [{"port": 443}]},
        },
    )
    tenant.apply(model("billing"))
    cond = ns.wait_condition("billing", "Ready", "False", "NameConflict")
    assert "Service billing already exists" in cond["message"]
    after = ns.get("service", "billing")
    assert after["metadata"]["resourceVersion"] == service["metadata"]["resourceVersion"]
    assert after["spec"]["selector"] == {"app": "billing"}
    assert not after["metadata"].get("ownerReferences")
    assert ns.get("deployment", "billing") is None, "half-applied: a Deployment was created"
    # Once the platform renames its Service away, the model is served.
    ns.kubectl("delete", "service", "billing")
    ns.wait_condition("billing", "Ready", "True", "AllReplicasReady")


def test_a_child_the_api_server_refuses_becomes_a_condition(
    ns: Namespace, tenant: Tenant, operator: OperatorProcess
) -> None:
    tenant.apply(model("good"))
    ns.wait_condition("good", "Ready", "True", "AllReplicasReady")
    generation = ns.get("md", "good")["metadata"]["generation"]
    # A memory request above the memory limit Gantry sets: the CRD and the spec rules accept
    # it (each value is a fine quantity); the Deployment API refuses the pair.
    tenant.apply(model("good", runtime={"resources": {"requests": {"memory": "4000Gi"}}}))
    cond = ns.wait_condition("good", "Degraded", "True", "ChildRejected")
    assert "Deployment good" in cond["message"]
    assert "must be less than or equal to memory limit" in cond["message"]  # the server's words
    md = ns.get("md", "good")
    # The spec was not applied: observedGeneration stays, the last good workload serves.
    assert md["status"]["observedGeneration"] == generation
    assert md["metadata"]["generation"] == generation + 1
    assert md["status"]["readyReplicas"] == 1
    events = json.loads(ns.kubectl("get", "events", "-o", "json").stdout)["items"]
    assert any(e.get("reason") == "ChildRejected" for e in events)
    assert "Traceback" not in operator.log(tail=10**7)


def test_a_missing_priority_class_shows_as_replica_failure_not_loading(
    ns: Namespace, tenant: Tenant
) -> None:
    tenant.apply(model("gold", scheduling={"priorityClassName": "gold-tier"}))
    cond = ns.wait_condition("gold", "Ready", "False", "ReplicaFailure")
    assert "gold-tier" in cond["message"]


def test_no_finalizer_so_deletion_never_waits_for_the_operator(
    ns: Namespace, tenant: Tenant, operator: OperatorProcess
) -> None:
    tenant.apply(model("short-lived"))
    ns.wait_condition("short-lived", "Ready", "True", "AllReplicasReady")
    md = ns.get("md", "short-lived")
    assert not md["metadata"].get("finalizers")
    assert not [a for a in md["metadata"].get("annotations", {}) if "kopf" in a]
    operator.kill()
    try:
        deleted = tenant.kubectl("delete", "md", "short-lived", "--timeout=20s")
        assert deleted.returncode == 0, deleted.stderr
        assert ns.get("md", "short-lived") is None
    finally:
        operator.start()
    wait_for(lambda: ns.get("deployment", "short-lived") is None, SETTLE, "children collected")


class _Endless(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        line = b"vllm:num_requests_running 1\n" * 8192
        try:
            while True:
                self.wfile.write(line)
        except OSError:
            pass

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def endless_metrics() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def serve(ip: str) -> None:
        server = ThreadingHTTPServer((ip, 8000), _Endless)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_pod_with_an_endless_metrics_body_cannot_take_the_operator_down(
    ns: Namespace, tenant: Tenant, operator: OperatorProcess, endless_metrics: Any
) -> None:
    tenant.apply(model("hostile"))
    ns.wait_condition("hostile", "Ready", "True", "AllReplicasReady")
    (pod,) = ns.items("pods", "gantry.dev/model-deployment=hostile")
    ip = pod["status"]["podIP"]
    with socket.socket() as probe:  # nothing else listens there (no process runner here)
        assert probe.connect_ex((ip, 8000)) != 0
    endless_metrics(ip)
    assert operator.process is not None
    pid = operator.process.pid
    peak = _rss_mb(pid)

    def skipped() -> bool:
        nonlocal peak
        peak = max(peak, _rss_mb(pid))
        events = json.loads(ns.kubectl("get", "events", "-o", "json").stdout)["items"]
        return any(
            e.get("reason") == "ScrapeFailed" and "larger than" in (e.get("message") or "")
            for e in events
        )

    wait_for(skipped, SETTLE, "a ScrapeFailed event for the endless pod")
    # Meanwhile the operator keeps reconciling other ModelDeployments.
    tenant.apply(model("bystander"))
    ns.wait_condition("bystander", "Ready", "True", "AllReplicasReady")
    for _ in range(10):  # several more autoscaler ticks against the endless pod
        peak = max(peak, _rss_mb(pid))
        time.sleep(0.5)
    assert peak < 300, f"operator RSS peaked at {peak:.0f} MB"
