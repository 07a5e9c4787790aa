"""The gateway's overhead, throughput and behaviour when a replica goes away, side by side with
requests sent straight to the same simulator pods, in one run.

    python bench/gateway.py                  # the figures in docs/gateway.md
    python bench/gateway.py --clients 200 --seconds 15 --replicas 3

Not a test: a benchmark that prints figures. On the local control plane (localcluster), the
operator runs one gpt-oss-20b ModelDeployment with ``--replicas`` runtime pods, each answered
by a vLLM simulator process on its pod IP (the process runner); one ``gantry-gateway`` process
routes to them (least outstanding). The load generator is aiohttp in this process (on uvloop
when installed, the same client for every path); everything shares the machine's cores, so the
gateway's figures include that contention: each run prints the machine's busy share of its cores
and, through the gateway, the gateway process's CPU time per request.

ttft        ``--clients`` concurrent streaming users for ``--seconds``, each in a loop: a chat
            request of ``max_tokens`` 32 (streamed at 100 tokens/s) then a think time drawn
            from an exponential distribution of mean ``--think`` seconds (each user also starts
            after a random part of one think time), as load generators model independent users.
            Time to first token (the first SSE event with text) at p50 and p99, direct (users
            round-robin over the pod IPs), through the model's plain Kubernetes Service (its
            ClusterIP, which kube-proxy in nftables mode DNATs to a Ready pod: see below),
            through the gateway and, when Debian's nginx is installed, through nginx (one
            worker, least connections, kept-alive upstream connections, no buffering): what a
            proxy written in C adds on the same machine, the floor beside the gateway's
            figures; then the same with ``--low-clients`` users (the gateway's own added
            latency when the cores are not saturated). The paths take turns for ``--rounds``
            runs of ``--seconds`` each, and each path's percentiles are over all of its runs'
            requests (each run's p99 is printed too: on a shared 2-core machine it moves by
            tens of milliseconds from run to run).
bursts      The ``--clients`` users in lockstep instead: all start together and think exactly
            ``--think`` seconds, so every ``--think`` + 0.3 s all of them send within a few
            milliseconds (the worst case for any proxy that takes requests in turn): once per
            path, for the record.
throughput  ``--rps-clients`` concurrent non-streaming clients (``max_tokens`` 1, no think
            time) for ``--seconds``: requests per second answered on each path, and the
            gateway process's CPU time per request (user + system, from /proc), which says
            what one core would carry without the load generator and simulators beside it.
service     The Service path runs when kube-proxy can (root and the nft command, see
            localcluster/kube_proxy.py) and 198.18.0.0/16 can be made local for the run
            (``ip route add local ... dev lo``, removed at the end, see localcluster/routed.py):
            the API server refuses loopback endpoints, so the bed's fake nodes then get podCIDRs
            198.18.<node>.0/24 of the RFC 2544 benchmarking block instead of 127.1.<node>.0/24,
            the EndpointSlice controller publishes the pods and kube-proxy programs the
            ClusterIP. Otherwise every table goes without it and the output says why.
deletion    ``--delete-clients`` clients send non-streaming requests of about a second through
            the gateway; after a third of the run one runtime pod is deleted (grace period 1 s).
            Every request gets exactly one outcome: answered, or failed with an error naming
            the pod; the audit log shows each request id once, and no request sent after the
            watch saw the pod go is routed to it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localcluster import build, kube_proxy, nodes, routed  # noqa: E402
from localcluster.cluster import LocalCluster, free_ports  # noqa: E402
from localcluster.gateway_process import GatewayProcess  # noqa: E402
from localcluster.log import sayer  # noqa: E402
from localcluster.operator_process import CRD, OperatorProcess  # noqa: E402
from localcluster.polling import wait_for  # noqa: E402
from localcluster.runner import ProcessRunner  # noqa: E402

NAMESPACE = "bench"
NAME = "bench-model"
SERVED = "bench-model"
TENANT_NS = "gantry-gateway"
KEY = "sk-bench-" + uuid.uuid4().hex
#: The simulator decodes 100 tokens/s per sequence; 256 sequences fit in one batch.
SIM_ENV = {"GANTRY_SIM_DECODE_TOKENS_PER_S": "100", "GANTRY_SIM_STARTUP_DELAY_S": "0.5"}
MAX_NUM_SEQS = 256

say = sayer("bench-gateway")
T = TypeVar("T")


def manifest(replicas: int) -> dict[str, Any]:
    md: dict[str, Any] = yaml.safe_load((ROOT / "deploy/examples/gpt-oss-20b.yaml").read_text())
    md["metadata"] = {"name": NAME, "namespace": NAMESPACE}
    md["spec"]["replicas"] = replicas
    md["spec"]["model"]["servedName"] = SERVED
    md["spec"]["serving"]["maxNumSeqs"] = MAX_NUM_SEQS
    md["spec"]["serving"]["env"] = [{"name": k, "value": v} for k, v in SIM_ENV.items()]
    return md


def tenant_secret() -> dict[str, Any]:
    data = {"apiKey": KEY, "models": "*"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "bench",
            "namespace": TENANT_NS,
            "labels": {"gantry.dev/tenant": "bench"},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def ready_pods(cluster: LocalCluster) -> dict[str, str]:
    """name -> podIP of the Ready, non-terminating runtime pods."""
    selector = f"gantry.dev/model-deployment={NAME}"
    result = cluster.kubectl("-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "json")
    found = {}
    for pod in json.loads(result.stdout)["items"]:
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
        serving = conditions.get("Ready") == "True" and pod["status"].get("podIP")
        if serving and not pod["metadata"].get("deletionTimestamp"):
            found[pod["metadata"]["name"]] = pod["status"]["podIP"]
    return found


# -- load ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    request_id: str
    ok: bool
    ttft: float | None = None
    error: str = ""
    started: float = 0.0


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    busy: float = float("nan")  # the machine's busy share of its cores during the run
    gateway_cpu: float = 0.0  # CPU seconds the gateway process used during the run

    def ttfts(self) -> list[float]:
        return sorted(o.ttft for o in self.outcomes if o.ok and o.ttft is not None)

    def rate(self) -> float:
        return sum(o.ok for o in self.outcomes) / self.seconds


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run the load generator's coroutine on uvloop when it is installed (a cheaper client
    leaves more of the shared cores to what is measured; both paths get the same client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class Busy:
    """The whole machine's busy share of its cores between ``start()`` and ``stop()``, from
    /proc/stat: what else competed with what is measured."""

    def __init__(self) -> None:
        self.share = float("nan")
        self._start = (0, 0)

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields[:8]), fields[3] + fields[4]  # total, idle + iowait

    def start(self) -> Busy:
        self._start = self._read()
        return self

    def stop(self) -> Busy:
        total, idle = self._read()
        spent = total - self._start[0]
        self.share = 1 - (idle - self._start[1]) / spent if spent else float("nan")
        return self


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def one(
    session: aiohttp.ClientSession, url: str, stream: bool, max_tokens: int, prompt: str
) -> Outcome:
    request_id = uuid.uuid4().hex
    body = {
        "model": SERVED,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {KEY}", "X-Request-Id": request_id}
    started = time.monotonic()
    outcome = Outcome(request_id, ok=False, started=started)
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if not stream:
                data = await response.read()
                outcome.ok = response.status == 200
                if not outcome.ok:
                    outcome.error = f"{response.status} {data[:300]!r}"
                return outcome
            async for line in response.content:
                if line.startswith(b"data: {") and outcome.ttft is None and b'"content"' in line:
                    outcome.ttft = time.monotonic() - started
                if b'"error"' in line:
                    outcome.error = line.decode(errors="replace").strip()[:300]
            outcome.ok = response.status == 200 and not outcome.error
            if response.status != 200:
                outcome.error = f"{response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome.error = f"{exc.__class__.__name__}: {exc}"
    return outcome


async def closed_loop(
    urls: list[str],
    clients: int,
    seconds: float,
    stream: bool,
    max_tokens: int,
    think: float = 0,
    lockstep: bool = False,
) -> Run:
    """``clients`` users each sending one request at a time for ``seconds``: with ``think``,
    independent users (exponential think times of that mean, staggered starts; seeded, so
    every path sees the same sequence) or, with ``lockstep``, users in step (fixed think)."""
    run = Run()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.monotonic() + seconds

        async def client(i: int) -> None:
            draw = random.Random(i)
            n = 0
            if think and not lockstep:
                await asyncio.sleep(draw.uniform(0, think))
            while time.monotonic() < deadline:
                url = urls[(i + n) % len(urls)]
                n += 1
                run.outcomes.append(await one(session, url, stream, max_tokens, f"Hi {i} {n}"))
                if think:
                    await asyncio.sleep(think if lockstep else draw.expovariate(1 / think))

        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(clients)))
        run.seconds = time.monotonic() - started
    return run


# -- the bed ---------------------------------------------------------------------------------


@contextmanager
def bed(
    replicas: int, state: Path, fleet: Sequence[nodes.FakeNode] = nodes.NODES
) -> Iterator[tuple[LocalCluster, GatewayProcess]]:
    build.ensure_built()
    with LocalCluster(state / "cluster", log=say) as cluster:
        nodes.create(cluster, fleet)
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        cluster.wait_established("modeldeployments.gantry.dev")
        for ns in (NAMESPACE, TENANT_NS):
            cluster.kubectl("create", "namespace", ns)
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(tenant_secret()))
        operator = OperatorProcess(cluster.kubeconfig, state / "operator.log").start()
        try:
            with (
                ProcessRunner(cluster.kubeconfig, state / "runtime", namespaces=[NAMESPACE]),
                GatewayProcess(
                    cluster.kubeconfig,
                    state / "gateway",
                    extra_args=(f"--tenant-namespace={TENANT_NS}", "--log-level=WARNING"),
                ) as gateway,
            ):
                cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest(replicas)))
                yield cluster, gateway
        finally:
            operator.stop()


def wait_serving(cluster: LocalCluster, gateway: GatewayProcess, replicas: int) -> dict[str, str]:
    pods = wait_for(
        lambda: (p := ready_pods(cluster)) and len(p) == replicas and p,
        180,
        f"{replicas} Ready runtime pods",
    )

    async def all_answer() -> bool:
        urls = [f"http://{ip}:8000/v1/chat/completions" for ip in pods.values()]
        urls.append(f"{gateway.base_url}/chat/completions")
        async with aiohttp.ClientSession() as session:
            results = [await one(session, u, False, 1, "ping") for u in urls]
        return all(r.ok for r in results)

    wait_for(lambda: run_loop(all_answer()), 120, "every pod and the gateway answer")
    return pods


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_url(cluster: LocalCluster) -> str:
    service = json.loads(
        cluster.kubectl("-n", NAMESPACE, "get", "service", NAME, "-o", "json").stdout
    )
    port = service["spec"]["ports"][0]["port"]
    return f"http://{service['spec']['clusterIP']}:{port}/v1/chat/completions"


NGINX_CONF = """worker_processes 1;
daemon off;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream pods {{ least_conn; {servers} keepalive 512; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://pods;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


@contextmanager
def nginx(pods: dict[str, str], state: Path) -> Iterator[str | None]:
    """nginx (Debian's, when installed) as a reverse proxy to the same pods, one worker, least
    connections, kept-alive upstream connections, no buffering: what a C proxy adds to TTFT on
    this machine, the floor beside the gateway's figures. Yields its URL, or None."""
    binary = shutil.which("nginx")
    if binary is None:
        yield None
        return
    home = state / "nginx"
    home.mkdir()
    (port,) = free_ports(1)
    servers = " ".join(f"server {ip}:8000;" for ip in pods.values())
    conf = home / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=home, servers=servers, port=port))
    log = (home / "out.log").open("w")
    process = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(home)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_for(lambda: run_loop(answers(url)), 30, "nginx answers")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


async def answers(url: str) -> bool:
    async with aiohttp.ClientSession() as session:
        return (await one(session, url, False, 1, "ping")).ok


def endpoints(cluster: LocalCluster) -> set[str]:
    """The addresses of the Service's ready endpoints, from its EndpointSlices."""
    selector = f"kubernetes.io/service-name={NAME}"
    found = cluster.kubectl("-n", NAMESPACE, "get", "endpointslices", "-l", selector, "-o", "json")
    return {
        address
        for piece in json.loads(found.stdout)["items"]
        for endpoint in piece.get("endpoints") or ()
        if (endpoint.get("conditions") or {}).get("ready", True)
        for address in endpoint.get("addresses") or ()
    }


def service_path(cluster: LocalCluster, pods: dict[str, str]) -> str:
    """The Service's URL once its EndpointSlices hold every pod and it answers through
    kube-proxy's rules; raises AssertionError saying what was missing."""
    wait_for(
        lambda: endpoints(cluster) >= set(pods.values()),
        60,
        f"the Service's EndpointSlices list the pods {sorted(pods.values())}",
    )
    url = service_url(cluster)
    wait_for(lambda: run_loop(answers(url)), 30, f"the Service answers at {url}")
    return url


def deletion(
    cluster: LocalCluster, gateway: GatewayProcess, clients: int, seconds: float
) -> dict[str, Any]:
    pods = ready_pods(cluster)
    victim = sorted(pods)[0]
    url = f"{gateway.base_url}/chat/completions"
    deleted_at: list[float] = []

    async def scenario() -> Run:
        load = asyncio.create_task(closed_loop([url], clients, seconds, False, 200))
        await asyncio.sleep(seconds / 3)
        deleted_at.append(time.monotonic())
        await asyncio.to_thread(
            cluster.kubectl, "-n", NAMESPACE, "delete", "pod", victim, "--grace-period=1",
            "--wait=false",
        )  # fmt: skip
        return await load

    audit_before = len(gateway.audit_path.read_text().splitlines())
    run = run_loop(scenario())
    time.sleep(1)
    lines = [json.loads(x) for x in gateway.audit_path.read_text().splitlines()[audit_before:]]
    by_id = Counter(line["request_id"] for line in lines)
    mine = {o.request_id for o in run.outcomes}
    audited = [line for line in lines if line["request_id"] in mine]
    failed = [o for o in run.outcomes if not o.ok]
    failed_ids = {o.request_id for o in failed}
    failed_on_victim = [
        a for a in audited if a["request_id"] in failed_ids and a["replica"] == victim
    ]
    started = {o.request_id: o.started for o in run.outcomes}
    return {
        "victim": victim,
        "issued": len(run.outcomes),
        "answered": sum(o.ok for o in run.outcomes),
        "failed": len(failed),
        "failed_on_victim": len(failed_on_victim),
        "errors": Counter(o.error.split(":")[0][:80] for o in failed).most_common(3),
        "audited": len(audited),
        "duplicates": sum(1 for rid in mine if by_id.get(rid, 0) > 1),
        "missing_from_audit": len(mine - set(by_id)),
        # Sent 2 s after the delete call (the watch has seen the pod terminating by then).
        "to_victim_after": sum(
            1
            for a in audited
            if a["replica"] == victim and started[a["request_id"]] > deleted_at[0] + 2.0
        ),
        "retries": sum(a["retries"] for a in audited),
        "sample_error": failed[0].error if failed else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200, help="streaming users (ttft)")
    parser.add_argument(
        "--think", type=float, default=1.0, help="seconds between a user's requests"
    )
    parser.add_argument(
        "--low-clients", type=int, default=20, help="streaming users (ttft at low load)"
    )
    parser.add_argument("--rps-clients", type=int, default=64, help="clients (throughput)")
    parser.add_argument("--delete-clients", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per run")
    parser.add_argument(
        "--rounds", type=int, default=6, help="ttft runs per path (taking turns, pooled)"
    )
    args = parser.parse_args()
    no_proxy = kube_proxy.unavailable()
    if no_proxy is None and (no_route := routed.unavailable()) is not None:
        no_proxy = (
            "a Service routes only to pod addresses outside 127/8, and the bench cannot give "
            f"its pods routed ones ({routed.POD_NETWORK}, localcluster/routed.py): {no_route}"
        )
    with ExitStack() as network:
        fleet = nodes.NODES
        if no_proxy is None:
            # Pods a Service can route to: the API server refuses loopback endpoints.
            try:
                network.enter_context(routed.routed_network(routed.POD_NETWORK))
                fleet = nodes.on_routed_network(nodes.NODES, routed.POD_NETWORK)
            except routed.RoutedNetworkError as exc:
                no_proxy = f"the routed pod network {routed.POD_NETWORK} was not installed: {exc}"
        return bench(args, fleet, no_proxy)


def bench(args: argparse.Namespace, fleet: Sequence[nodes.FakeNode], no_proxy: str | None) -> int:
    """Run every scenario on a bed of ``fleet`` and print the figures; the Service path only
    when ``no_proxy`` (why it cannot be measured) is None."""
    with (
        tempfile.TemporaryDirectory(prefix="gantry-bench-gw-") as tmp,
        bed(args.replicas, Path(tmp), fleet) as (cluster, gateway),
        ExitStack() as stack,
    ):
        pods = wait_serving(cluster, gateway, args.replicas)
        paths = {"direct": [f"http://{ip}:8000/v1/chat/completions" for ip in pods.values()]}
        proxy = None
        if no_proxy is None:
            proxy = kube_proxy.KubeProxy(cluster, fleet[0].name, Path(tmp) / "kp.log")
            stack.callback(proxy.stop)  # its nftables tables go whatever happens
            try:
                proxy.start()
                paths["service"] = [service_path(cluster, pods)]
            except (AssertionError, RuntimeError) as exc:
                no_proxy = f"kube-proxy or the Service did not work: {exc}"
                proxy.stop()
                proxy = None
        paths["gateway"] = [f"{gateway.base_url}/chat/completions"]
        reference = stack.enter_context(nginx(pods, Path(tmp)))
        if reference is not None:
            paths["nginx"] = [reference]
        assert gateway.process is not None
        gateway_pid = gateway.process.pid

        def measured(
            urls: list[str], clients: int, stream: bool, tokens: int, think: float, lockstep: bool
        ) -> Run:
            busy = Busy().start()
            before = cpu_seconds(gateway_pid)
            load = closed_loop(urls, clients, args.seconds, stream, tokens, think, lockstep)
            run = run_loop(load)
            run.gateway_cpu = cpu_seconds(gateway_pid) - before
            run.busy = busy.stop().share
            return run

        try:
            say("warm-up")
            for urls in paths.values():
                run_loop(closed_loop(urls, 20, 3, True, 16))
            ttft: dict[str, list[Run]] = {label: [] for label in paths}
            low: dict[str, list[Run]] = {label: [] for label in paths}
            bursts: dict[str, list[Run]] = {label: [] for label in paths}
            for _ in range(args.rounds):
                for label, urls in paths.items():
                    say(f"ttft: {args.clients} streaming users, {label}")
                    ttft[label].append(measured(urls, args.clients, True, 32, args.think, False))
                for label, urls in paths.items():
                    say(f"ttft: {args.low_clients} streaming users, {label}")
                    low[label].append(measured(urls, args.low_clients, True, 32, args.think, False))
            for label, urls in paths.items():
                say(f"bursts: {args.clients} streaming users in lockstep, {label}")
                bursts[label].append(measured(urls, args.clients, True, 32, args.think, True))
            rps: dict[str, Run] = {}
            for label, urls in paths.items():
                say(f"throughput: {args.rps_clients} clients, {label}")
                rps[label] = measured(urls, args.rps_clients, False, 1, 0, False)
        finally:
            if proxy is not None:
                proxy.stop()
        say(f"deletion: {args.delete_clients} clients, one pod deleted mid-run")
        gone = deletion(cluster, gateway, args.delete_clients, args.seconds)

    print(f"\ngateway benchmark: {args.replicas} simulator replicas, one gantry-gateway process")

    def ttft_table(runs_by_label: dict[str, list[Run]], clients: int, users: str) -> None:
        rounds = len(next(iter(runs_by_label.values())))
        print(f"  ttft, {clients} streaming users {users}, {args.think:g} s think time, "
              f"{rounds} x {args.seconds:.0f} s per path, paths taking turns")  # fmt: skip
        print("               p50 ms   p99 ms  p99 per run ms  requests  errors  machine busy  "
              "gateway CPU/request")  # fmt: skip
        pooled: dict[str, list[float]] = {}
        for label, runs in runs_by_label.items():
            values = pooled[label] = sorted(t for run in runs for t in run.ttfts())
            outcomes = [o for run in runs for o in run.outcomes]
            errors = sum(not o.ok for o in outcomes)
            each = "/".join(f"{percentile(run.ttfts(), 0.99) * 1000:.0f}" for run in runs)
            busy = statistics.mean(run.busy for run in runs)
            cpu = sum(run.gateway_cpu for run in runs)
            per = f"{cpu / len(outcomes) * 1000:.2f} ms" if label == "gateway" and outcomes else ""
            print(
                f"  {label:8}  {percentile(values, 0.5) * 1000:7.1f}  "
                f"{percentile(values, 0.99) * 1000:7.1f}  {each:>14}  {len(outcomes):8d}  "
                f"{errors:6d}  {busy * 100:11.0f}%  {per:>19}"
            )
        for label in [x for x in pooled if x != "direct"]:
            p50 = (percentile(pooled[label], 0.5) - percentile(pooled["direct"], 0.5)) * 1000
            p99 = (percentile(pooled[label], 0.99) - percentile(pooled["direct"], 0.99)) * 1000
            print(f"  {label} adds to ttft: p50 {p50:+.1f} ms, p99 {p99:+.1f} ms")

    ttft_table(ttft, args.clients, "(independent)")
    print("  (targets for the gateway: <= 2 ms at p50, <= 10 ms at p99)")
    ttft_table(low, args.low_clients, "(independent)")
    ttft_table(bursts, args.clients, "in lockstep (bursts)")
    print(f"  throughput, {args.rps_clients} non-streaming clients, max_tokens 1")
    for label, run in rps.items():
        errors = sum(not o.ok for o in run.outcomes)
        print(f"  {label:8}  {run.rate():8.0f} requests/s  ({errors} errors, "
              f"machine busy {run.busy * 100:.0f}%)")  # fmt: skip
    served = sum(o.ok for o in rps["gateway"].outcomes)
    if served:
        per = rps["gateway"].gateway_cpu / served
        print(f"  gateway CPU per request {per * 1000:.2f} ms: {1 / per:.0f} requests/s per core")
    print("  (target >= 1000 requests/s through one gateway process)")
    if no_proxy is not None:
        print(f"  plain Kubernetes Service: not measured ({no_proxy})")
    print(f"  replica deleted mid-run ({args.delete_clients} clients): {gone['victim']}")
    for k in ("issued", "answered", "failed", "failed_on_victim", "audited", "duplicates",
              "missing_from_audit", "to_victim_after", "retries"):  # fmt: skip
        print(f"    {k:20} {gone[k]}")
    print(f"    errors               {gone['errors']}")
    if gone["sample_error"]:
        print(f"    e.g.                 {gone['sample_error'][:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
