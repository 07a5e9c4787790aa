"""Fleet scale: the operator against a bare apply loop, at N ModelDeployments, in one run.

    python bench/fleet.py              # N = 1000
    python bench/fleet.py -n 300 --rest 60

Not a test: a benchmark whose figures docs/architecture.md quotes. On the local control plane
(localcluster, extra fake 8 x H100 nodes so every runtime pod is placed), with gpt-oss-20b
ModelDeployments of one replica in one namespace:

operator   N ModelDeployments are created while the operator is stopped, then the operator
           starts (t = 0, process start included) and runs until every object is converged:
           ``status.observedGeneration`` current and its Deployment and Service present.
floor      the same N objects in a second namespace with no operator running; a bare sequential
           loop reads each object, plans it, server-side-applies the same children and applies
           its status: the least any controller must do. Timed like the operator, from the
           start of its process.
requests   by verb and resource, from the API server's own ``apiserver_request_total``, during
           the operator's convergence and during ``--rest`` seconds at rest afterwards (the
           benchmark's own polling subtracted).
resources  operator CPU (user + system) and RSS at rest (from when every model is Ready).
repair     a child Service deleted by hand: time until the operator has recreated it.
stop       SIGTERM to exit.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gantry_operator import k8s, status  # noqa: E402
from gantry_operator.config import OperatorConfig  # noqa: E402
from gantry_operator.desired import intent  # noqa: E402
from gantry_operator.spec import GROUP, PLURAL, VERSION  # noqa: E402
from localcluster import build, nodes  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402
from localcluster.log import sayer  # noqa: E402
from localcluster.operator_process import CRD, OperatorProcess  # noqa: E402

EXAMPLE = ROOT / "deploy" / "examples" / "gpt-oss-20b.yaml"
RESOURCES = ("modeldeployments", "deployments", "services", "poddisruptionbudgets", "pods")
Requests = Counter[tuple[str, str]]


say = sayer("fleet")


def fleet_nodes(count: int) -> tuple[nodes.FakeNode, ...]:
    """``count`` extra 8 x H100 nodes in eu-west-1 (pod CIDRs 127.1.100+i.0/24)."""
    return tuple(
        nodes.FakeNode(100 + i, f"h100-fleet-{i:03d}", nodes.H100, "eu-west-1", "eu-west-1a")
        for i in range(count)
    )


def manifests(namespace: str, count: int) -> list[dict[str, Any]]:
    base = yaml.safe_load(EXAMPLE.read_text())
    base["spec"]["replicas"] = 1
    items = []
    for i in range(count):
        md = copy.deepcopy(base)
        md["metadata"] = {"name": f"md-{i:04d}", "namespace": namespace}
        items.append(md)
    return items


def create_all(cluster: LocalCluster, namespace: str, count: int) -> None:
    cluster.kubectl("create", "namespace", namespace)
    document = {"apiVersion": "v1", "kind": "List", "items": manifests(namespace, count)}
    cluster.kubectl("create", "-f", "-", input=json.dumps(document), timeout=600)


def requests(cluster: LocalCluster) -> Requests:
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    counts: Requests = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                resource = sample.labels.get("resource", "")
                sub = sample.labels.get("subresource", "")
                key = (sample.labels.get("verb", ""), f"{resource}/{sub}" if sub else resource)
                counts[key] += int(sample.value)
    return counts


def delta(before: Requests, after: Requests) -> Requests:
    return Counter(
        {
            k: after[k] - before.get(k, 0)
            for k in after
            if k[1].split("/")[0] in RESOURCES and after[k] > before.get(k, 0)
        }
    )


class Convergence:
    """Watches (not polls, which would load the API server it measures) ModelDeployments,
    Deployments and Services in a namespace, and notes when all ``count`` converged:
    ``status.observedGeneration`` current and both children present."""

    def __init__(self, kubeconfig: Path, namespace: str, count: int) -> None:
        self.api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.namespace, self.count = namespace, count
        self.sets: dict[str, set[str]] = {"md": set(), "deployment": set(), "service": set()}
        self.ready: set[str] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.all_ready = threading.Event()
        custom = kubernetes.client.CustomObjectsApi(self.api)
        apps = kubernetes.client.AppsV1Api(self.api)
        core = kubernetes.client.CoreV1Api(self.api)
        watches: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
            ("md", custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, PLURAL)),
            ("deployment", apps.list_namespaced_deployment, (namespace,)),
            ("service", core.list_namespaced_service, (namespace,)),
        ]
        for kind, lister, args in watches:
            threading.Thread(target=self._watch, args=(kind, lister, args), daemon=True).start()

    def _watch(self, kind: str, lister: Callable[..., Any], args: tuple[Any, ...]) -> None:
        while not self.all_ready.is_set():
            stream = kubernetes.watch.Watch().stream(lister, *args, timeout_seconds=60)
            for event in stream:
                obj = event["raw_object"]
                name = obj["metadata"]["name"]
                ok, ready = True, False
                if kind == "md":
                    status = obj.get("status") or {}
                    ok = status.get("observedGeneration") == obj["metadata"].get("generation")
                    ready = status.get("phase") == "Ready"
                with self.lock:
                    members = self.sets[kind]
                    if ok and event["type"] != "DELETED":
                        members.add(name)
                    else:
                        members.discard(name)
                    if kind == "md":
                        (self.ready.add if ready else self.ready.discard)(name)
                        if len(self.ready) == self.count:
                            self.all_ready.set()
                    if len(set.intersection(*self.sets.values())) == self.count:
                        self.done.set()
                if self.all_ready.is_set():
                    return

    def wait_ready(self, timeout: float) -> None:
        """Until every ModelDeployment is Ready (its pod placed and ready): the cluster at rest."""
        if not self.all_ready.wait(timeout):
            raise SystemExit(f"not all Ready after {timeout:.0f}s: {len(self.ready)}")

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            with self.lock:
                sizes = {kind: len(members) for kind, members in self.sets.items()}
            raise SystemExit(f"not converged after {timeout:.0f}s: {sizes}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def floor(cluster: LocalCluster, namespace: str, count: int) -> float:
    """Run :func:`floor_loop` in a process of its own, like the operator, and time it the same
    way: from process start to the last write."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, __file__, "--floor", namespace, "-n", str(count)],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        capture_output=True,
        text=True,
        check=True,
    )
    return time.monotonic() - started


def floor_loop(namespace: str, count: int) -> None:
    """The bare loop: read, plan, apply the children, apply status; sequential."""
    config = OperatorConfig()
    kubernetes.config.load_kube_config()
    api = kubernetes.client.CustomObjectsApi()
    for i in range(count):
        md = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, f"md-{i:04d}")
        want = intent(md, config)
        for obj in want.objects:
            k8s.apply(obj)
        observed = status.Observed(
            generation=int(md["metadata"]["generation"]),
            model=want.model,
            problem=want.problem,
            workload=True,
            plan=want.plan.to_status() if want.plan else None,
        )
        new = status.compute({}, observed, now="2026-01-01T00:00:00Z")
        k8s.apply_status(namespace, md["metadata"]["name"], new, manager=k8s.OPERATOR)


def table(title: str, counts: Requests, minutes: float | None = None) -> None:
    print(f"\n{title}")
    total_writes = 0
    for (verb, resource), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rate = f"  {n / minutes:8.1f}/min" if minutes else ""
        print(f"  {verb:7} {resource:34} {n:7d}{rate}")
        if verb not in ("GET", "LIST", "WATCH"):
            total_writes += n
    if not counts:
        print("  (none)")
    print(f"  writes: {total_writes}" + (f" ({total_writes / minutes:.1f}/min)" if minutes else ""))


@contextmanager
def local_cluster(extra_nodes: int) -> Iterator[LocalCluster]:
    build.ensure_built()
    with (
        tempfile.TemporaryDirectory(prefix="gantry-fleet-") as state,
        LocalCluster(Path(state), log=say) as cluster,
    ):
        nodes.create(cluster)
        fleet = fleet_nodes(extra_nodes)
        for start in range(0, len(fleet), 40):
            nodes.create(cluster, fleet[start : start + 40], timeout=180)
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        cluster.wait_established("modeldeployments.gantry.dev")
        yield cluster


def timed(what: str, action: Callable[[], Any]) -> float:
    started = time.monotonic()
    action()
    elapsed = time.monotonic() - started
    say(f"{what}: {elapsed:.1f}s")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--count", type=int, default=1000)
    parser.add_argument("--rest", type=float, default=120.0, help="seconds measured at rest")
    parser.add_argument("--workers", type=int, default=8, help="operator --workers")
    parser.add_argument("--floor", metavar="NAMESPACE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    count = args.count
    if args.floor:  # the floor's own process ($KUBECONFIG set by the parent)
        floor_loop(args.floor, count)
        return 0
    with local_cluster(extra_nodes=(count + 7) // 8 + 2) as cluster:
        timed(f"created {count} ModelDeployments (operator stopped)",
              lambda: create_all(cluster, "fleet", count))  # fmt: skip
        log = Path(tempfile.mkdtemp(prefix="gantry-fleet-op-")) / "operator.log"
        operator = OperatorProcess(
            cluster.kubeconfig, log, extra_args=(f"--workers={args.workers}",)
        )
        watcher = Convergence(cluster.kubeconfig, "fleet", count)
        time.sleep(2)  # the watches have listed what exists
        before = requests(cluster)
        started = time.monotonic()
        operator.start()
        assert operator.process is not None
        pid = operator.process.pid
        watcher.wait(timeout=1800)
        converge = time.monotonic() - started
        converge_cpu = cpu_seconds(pid)
        after = requests(cluster)
        during = delta(before, after)
        say(f"operator converged in {converge:.1f}s; waiting until every model is Ready")
        watcher.wait_ready(timeout=1800)
        say(f"all Ready {time.monotonic() - started:.1f}s after start; {args.rest:.0f}s at rest")
        time.sleep(5)  # the last status writes' own events
        cpu0, rest0 = cpu_seconds(pid), requests(cluster)
        peak_rss = rss_mb(pid)
        rest_started = time.monotonic()
        while time.monotonic() - rest_started < args.rest:
            time.sleep(1)
            peak_rss = max(peak_rss, rss_mb(pid))
        rest_seconds = time.monotonic() - rest_started
        cpu = (cpu_seconds(pid) - cpu0) / rest_seconds
        at_rest = delta(rest0, requests(cluster))
        # Repair: a child Service deleted by hand.
        cluster.kubectl("delete", "service", "md-0007", "-n", "fleet")
        deleted = time.monotonic()
        while cluster.kubectl("get", "service", "md-0007", "-n", "fleet", check=False).returncode:
            time.sleep(0.05)
        repair = time.monotonic() - deleted
        # Stop.
        stop_started = time.monotonic()
        os.killpg(pid, signal.SIGTERM)
        operator.process.wait(60)
        stop = time.monotonic() - stop_started
        # The floor, in a namespace of its own, with no operator running.
        timed(f"created {count} ModelDeployments for the floor",
              lambda: create_all(cluster, "floor", count))  # fmt: skip
        floor_before = requests(cluster)
        floor_seconds = floor(cluster, "floor", count)
        floor_requests = delta(floor_before, requests(cluster))

    print(f"\nfleet benchmark: {count} gpt-oss-20b ModelDeployments, one replica each")
    print(f"  operator converged      {converge:8.1f} s   (--workers {args.workers})")
    print(f"  floor (bare apply loop) {floor_seconds:8.1f} s")
    print(f"  ratio                   {converge / floor_seconds:8.2f}   (target <= 1.3)")
    print(f"  operator CPU converging {converge_cpu / converge * 100:8.1f} % of one core")
    print(f"  operator CPU at rest    {cpu * 100:8.2f} % of one core   (target < 5 %)")
    print(f"  operator RSS (peak)     {peak_rss:8.0f} MB   (target < 300 MB)")
    print(f"  deleted Service repaired{repair:8.2f} s   (target < 5 s)")
    print(f"  SIGTERM to exit         {stop:8.2f} s   (target < 10 s)")
    table("API requests during convergence (all clients; the benchmark only watches)", during)
    table("API requests during the floor loop", floor_requests)
    table(f"API requests at rest ({rest_seconds:.0f} s, all clients)", at_rest, rest_seconds / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
