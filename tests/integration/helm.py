"""The Helm chart against the local control plane: helm, the chart's operator as a process, and
what the API server's audit log says the operator did.

* :func:`helm`: the real helm against a cluster (offline rendering: :mod:`hack.chart`).
* :class:`ChartOperator`: ``gantry-operator`` run exactly as the chart's Deployment runs it
  (its args, env and mounted policy file, read back from the installed objects) but as a local
  process, authenticated only with a token of the chart's ServiceAccount.
* :func:`audit_permissions` / :func:`granted_permissions`: the (namespace, apiGroup, resource,
  verb) a user was allowed by the API server according to its audit log, and what RBAC grants
  a ServiceAccount, in the same terms, so a test can prove every grant is used.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hack import chart
from hack.chart import CHART, HELM_TEST_SCRIPT, RESIDENCY_VALUES, ROOT, template
from localcluster import nodes
from localcluster.cluster import LocalCluster, free_ports
from localcluster.operator_process import OperatorProcess
from localcluster.volumes import models_volume

__all__ = [
    "CHART",
    "HELM_TEST_SCRIPT",
    "PROMETHEUS_OPERATOR_GROUP",
    "RESIDENCY_VALUES",
    "ROOT",
    "ChartOperator",
    "FakeRuntimeMetrics",
    "Permission",
    "Release",
    "audit_mark",
    "audit_permissions",
    "delete_namespace",
    "granted_permissions",
    "helm",
    "make_namespace",
    "rule_permissions",
    "template",
    "unused",
]

#: Kinds the local cluster cannot serve: the Prometheus Operator's CRDs are not installed there.
PROMETHEUS_OPERATOR_GROUP = "monitoring.coreos.com"


def helm(
    *args: str, cluster: LocalCluster | None = None, check: bool = True, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run helm against ``cluster`` (as its admin)."""
    return chart.helm(*args, env=cluster.env() if cluster else None, check=check, timeout=timeout)


# -- the operator as the chart runs it -------------------------------------------------------


def operator_argv(
    container: Mapping[str, Any], *, policy: Path, health_port: int, metrics_port: int
) -> list[str]:
    """The container's args with its listen addresses moved to loopback ports and the mounted
    policy file replaced by a local copy; everything else exactly as the Deployment has it."""
    argv = []
    for arg in container["args"]:
        if arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{health_port}/healthz"
        elif arg.startswith("--metrics-address="):
            arg = f"--metrics-address=127.0.0.1:{metrics_port}"
        elif arg.startswith("--policy="):
            arg = f"--policy={policy}"
        argv.append(arg)
    return argv


def operator_env(container: Mapping[str, Any], pod_name: str) -> dict[str, str]:
    """The container's env: plain values as they are, the pod-name fieldRef as ``pod_name``."""
    env = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
        else:
            raise AssertionError(f"cannot reproduce env var {var} outside the cluster")
    return env


@dataclass(frozen=True)
class Release:
    """An installed release, as the tests need it."""

    name: str
    namespace: str
    cluster: LocalCluster

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        result = self.cluster.kubectl_json("get", kind, name, "-n", namespace or self.namespace)
        return dict(result)

    def deployment(self) -> dict[str, Any]:
        """The release's operator Deployment (found by its labels, not by a guessed name)."""
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"
        items = self.cluster.kubectl_json(
            "get", "deployments", "-n", self.namespace, "-l", selector
        )["items"]
        assert len(items) == 1, f"expected one operator Deployment for {self.name}: {items}"
        return dict(items[0])

    def container(self) -> dict[str, Any]:
        containers = self.deployment()["spec"]["template"]["spec"]["containers"]
        return dict(next(c for c in containers if c["name"] == "operator"))

    def service_account(self) -> str:
        return str(self.deployment()["spec"]["template"]["spec"]["serviceAccountName"])

    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account()}"

    def policy_text(self) -> str:
        """The policy file the Deployment mounts (from its ConfigMap volume)."""
        volumes = self.deployment()["spec"]["template"]["spec"]["volumes"]
        config_map = next(v["configMap"]["name"] for v in volumes if v["name"] == "policy")
        return str(self.get("configmap", config_map)["data"]["policy.yaml"])

    def token_kubeconfig(self, path: Path, duration: str = "2h") -> Path:
        token = self.cluster.kubectl(
            "create",
            "token",
            self.service_account(),
            "-n",
            self.namespace,
            f"--duration={duration}",
        ).stdout.strip()
        return self.cluster.token_kubeconfig(token, path, user=self.username())


class ChartOperator(OperatorProcess):
    """``gantry-operator`` with the installed Deployment's args, env and policy, run locally as
    the chart's ServiceAccount. ``extra_args`` are appended (e.g. ``--priority``)."""

    def __init__(
        self,
        release: Release,
        workdir: Path,
        *,
        pod_name: str = "gantry-operator-0",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            workdir / f"{pod_name}.kubeconfig",
            workdir / f"{pod_name}.log",
            extra_args=tuple(extra_args),
        )
        self.release = release
        self.workdir = workdir
        self.pod_name = pod_name

    def start(self) -> ChartOperator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.release.token_kubeconfig(self.kubeconfig)
        policy = self.workdir / f"{self.pod_name}-policy.yaml"
        policy.write_text(self.release.policy_text())
        container = self.release.container()
        health, metrics = free_ports(2)
        self.health_url = f"http://127.0.0.1:{health}/healthz"
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        self.argv = [
            *operator_argv(container, policy=policy, health_port=health, metrics_port=metrics),
            *self.extra_args,
        ]
        self._launch(
            {
                **{k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")},
                **operator_env(container, self.pod_name),
                "KUBECONFIG": str(self.kubeconfig),
            }
        )
        return self


# -- permissions: granted by RBAC, used according to the audit log -----------------------------


@dataclass(frozen=True)
class Permission:
    """One verb on one resource (``modeldeployments/status`` for a subresource), in one
    namespace (``None``: cluster-wide, i.e. a cluster-scoped resource or an all-namespaces
    list/watch, or a ClusterRole's grant)."""

    namespace: str | None
    group: str
    resource: str
    verb: str

    def __lt__(self, other: Permission) -> bool:
        return self._key() < other._key()

    def _key(self) -> tuple[str, str, str, str]:
        return (self.namespace or "", self.group, self.resource, self.verb)

    def __str__(self) -> str:
        where = self.namespace or "<cluster>"
        return f"{where:<24} {self.group or 'core':<22} {self.resource:<32} {self.verb}"


def audit_mark(path: Path) -> int:
    """Where the audit log ends now: pass it as ``since`` to see only what happens next."""
    return path.stat().st_size if path.exists() else 0


def audit_events(path: Path, since: int = 0) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        lines.seek(since)
        for line in lines:
            if line.strip():
                yield json.loads(line)


def audit_permissions(
    path: Path, username: str, since: int = 0
) -> tuple[set[Permission], set[Permission]]:
    """(allowed, denied) resource permissions ``username`` exercised, from an audit log
    (from byte offset ``since``, see :func:`audit_mark`).

    A server-side apply that created its object (a patch answered 201) was authorized as
    ``create`` too (the API server checks both), so it counts as a use of ``create``.
    """
    allowed: set[Permission] = set()
    denied: set[Permission] = set()
    for event in audit_events(path, since):
        if event.get("user", {}).get("username") != username or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        group = ref.get("apiGroup", "")
        permission = Permission(ref.get("namespace"), group, resource, event["verb"])
        decision = event.get("annotations", {}).get("authorization.k8s.io/decision")
        if decision != "allow":
            denied.add(permission)
            continue
        allowed.add(permission)
        if event["verb"] == "patch" and event.get("responseStatus", {}).get("code") == 201:
            allowed.add(
                Permission(permission.namespace, permission.group, permission.resource, "create")
            )
    return allowed, denied


def rule_permissions(rules: Iterable[Mapping[str, Any]], namespace: str | None) -> set[Permission]:
    granted = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    granted.add(Permission(namespace, group, resource, verb))
    return granted


def granted_permissions(cluster: LocalCluster, namespace: str, account: str) -> set[Permission]:
    """What every (Cluster)RoleBinding naming the ServiceAccount grants it, as permissions."""
    granted: set[Permission] = set()

    def names_account(binding: Mapping[str, Any]) -> bool:
        return any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == account
            and s.get("namespace") == namespace
            for s in binding.get("subjects") or []
        )

    for binding in cluster.kubectl_json("get", "clusterrolebindings")["items"]:
        if names_account(binding):
            role = cluster.kubectl_json("get", "clusterrole", binding["roleRef"]["name"])
            granted |= rule_permissions(role.get("rules") or [], None)
    for binding in cluster.kubectl_json("get", "rolebindings", "--all-namespaces")["items"]:
        if names_account(binding):
            where = binding["metadata"]["namespace"]
            ref = binding["roleRef"]
            kind = "clusterrole" if ref["kind"] == "ClusterRole" else "role"
            role = cluster.kubectl_json("get", kind, ref["name"], "-n", where)
            granted |= rule_permissions(role.get("rules") or [], where)
    return granted


def unused(granted: Iterable[Permission], used: Iterable[Permission]) -> list[Permission]:
    """Grants that no request used. A cluster-wide grant is used by a request in any namespace;
    a namespaced one only by a request in its namespace."""
    used_anywhere = {(p.group, p.resource, p.verb) for p in used}
    used_here = set(used)
    return sorted(
        g
        for g in granted
        if (g.namespace is None and (g.group, g.resource, g.verb) not in used_anywhere)
        or (g.namespace is not None and g not in used_here)
    )


# -- test scaffolding ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnPodNetworkNode(nodes.FakeNode):
    """A fake node whose pods get 127.42.<index>.x addresses instead of 127.1.<index>.x, so a
    fake vLLM bound to one of this cluster's pod IPs never collides with the simulators that
    other local clusters (other test sessions on the machine) bind to theirs."""

    @property
    def pod_cidr(self) -> str:
        return f"127.42.{self.index}.0/24"


OWN_NETWORK_NODES = tuple(
    OwnPodNetworkNode(**{f.name: getattr(n, f.name) for f in fields(n)}) for n in nodes.NODES
)


def make_namespace(cluster: LocalCluster, name: str, *, models_pvc: bool = True) -> str:
    """A namespace, with the bound ``models`` PVC the examples read weights from."""
    cluster.kubectl("create", "namespace", name)
    if models_pvc:
        cluster.kubectl("apply", "-f", "-", input=models_volume(name))
    return name


def delete_namespace(cluster: LocalCluster, name: str) -> None:
    """Delete a test namespace once its pods are gone (their GPUs free for the next test).

    kopf's finalizer stays on ModelDeployments when no operator runs to remove it; as the
    admin, clear it first so the namespace can go.
    """
    found = cluster.kubectl("get", "md", "-n", name, "-o", "name", check=False).stdout.split()
    for md in found:
        cluster.kubectl(
            "patch",
            "-n",
            name,
            md,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
    # Pods hold the GPUs: wait for them (fast), not for the namespace controller (slow).
    cluster.kubectl(
        "delete",
        "md,deployments,pods",
        "--all",
        "-n",
        name,
        "--wait=true",
        "--timeout=120s",
        check=False,
    )
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    cluster.kubectl("delete", "pv", f"models-{name}", "--wait=false", check=False)


class FakeRuntimeMetrics:
    """vLLM's /metrics on a runtime pod's IP and port 8000 (kwok pod IPs are loopback
    addresses), reporting ``waiting`` queued requests so the autoscaler scales up."""

    def __init__(self, ip: str, waiting: int) -> None:
        body = (
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\n'
            "# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{model_name="m"} 0\n'
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((ip, 8000), Handler)

    def __enter__(self) -> FakeRuntimeMetrics:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
