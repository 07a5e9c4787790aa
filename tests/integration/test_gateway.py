"""gantry-gateway end to end: the operator, runtime pods answered by simulator processes, and
the gateway as a local process with the cluster's kubeconfig; the ``openai`` client calls it.

Each test names its models uniquely (``spec.model.servedName``) because the namespaces of
earlier tests may still be terminating. The gateway here routes by the served name the
operator gives vLLM (spec.model.servedName), read from the spec until the operator writes
``status.servedModelName``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from localcluster.cluster import LocalCluster
from localcluster.gateway_process import GatewayProcess
from localcluster.operator_process import ROOT
from localcluster.polling import wait_for
from localcluster.runner import ProcessRunner
from tests.integration.conftest import SETTLE, Namespace

pytestmark = pytest.mark.integration

HOLD_SECONDS = 120
#: Straight to loopback addresses, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROMPT_MARKER = "zebra-umbrella-7351"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenant_ns(cluster: LocalCluster) -> Iterator[str]:
    name = f"gw-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def gateway(
    cluster: LocalCluster, tenant_ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("gateway"),
        extra_args=(f"--tenant-namespace={tenant_ns}", f"--hold-timeout-seconds={HOLD_SECONDS}"),
    )
    with process:
        yield process


@pytest.fixture
def runner(cluster: LocalCluster, ns: Namespace, tmp_path: Path) -> Iterator[ProcessRunner]:
    with ProcessRunner(cluster.kubeconfig, tmp_path / "runtime", namespaces=[ns.name]) as running:
        yield running


# -- helpers ---------------------------------------------------------------------------------


class Tenants:
    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace

    def create(
        self, name: str, models: str, *, rpm: int = 0, tpm: int = 0, secret: str | None = None
    ) -> str:
        key = f"sk-{name}-{uuid.uuid4().hex}"
        data = {
            "apiKey": key,
            "models": models,
            "requestsPerMinute": str(rpm),
            "tokensPerMinute": str(tpm),
        }
        obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret or name,
                "namespace": self.namespace,
                "labels": {"gantry.dev/tenant": name},
            },
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
        return key

    def delete(self, secret: str) -> None:
        self.cluster.kubectl("-n", self.namespace, "delete", "secret", secret)


@pytest.fixture
def tenants(cluster: LocalCluster, tenant_ns: str) -> Tenants:
    return Tenants(cluster, tenant_ns)


_CLIENTS: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    made = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=120)
    _CLIENTS.append(made)
    return made


def post(gateway: GatewayProcess, path: str, body: Any, key: str | None) -> tuple[int, Any]:
    """A raw request (the openai client refuses to send none or an empty key)."""
    request = urllib.request.Request(
        f"{gateway.base_url}{path}",
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {key}"} if key else {}),
    )
    try:
        with DIRECT.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def deploy(ns: Namespace, name: str, *, replicas: int = 1, **spec: Any) -> str:
    """A gpt-oss-20b ModelDeployment served as ``<name>-<namespace>``; returns that name."""
    md: dict[str, Any] = yaml.safe_load(
        (ROOT / "deploy" / "examples" / "gpt-oss-20b.yaml").read_text()
    )
    served = f"{name}-{ns.name}"
    md["metadata"]["name"] = name
    md["spec"]["model"]["servedName"] = served
    md["spec"]["replicas"] = replicas
    md["spec"].update(spec)
    result = ns.apply(md)
    assert result.returncode == 0, result.stderr
    return served


def chat(c: openai.OpenAI, model: str, text: str = "Hello", **kw: Any) -> Any:
    return c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=8, **kw
    )


def routable(c: openai.OpenAI, model: str) -> Any:
    """Wait until a request for ``model`` succeeds through the gateway."""
    return wait_for(lambda: chat(c, model), SETTLE, f"{model} answers through the gateway")


def audit(gateway: GatewayProcess) -> list[dict[str, Any]]:
    text = gateway.audit_path.read_text() if gateway.audit_path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def audit_of(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any]:
        return next((r for r in audit(gateway) if r["request_id"] == request_id), {})

    return wait_for(find, 10, f"audit line of {request_id}")


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the ``name`` samples in a /metrics ``text`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def samples(gateway: GatewayProcess, name: str, **labels: str) -> float:
    return metric_sum(gateway.metrics(), name, **labels)


def pods_of(ns: Namespace, md: str) -> set[str]:
    return {p["metadata"]["name"] for p in ns.items("pods", f"gantry.dev/model-deployment={md}")}


# -- tests -----------------------------------------------------------------------------------


def test_routes_by_model_and_streams(
    ns: Namespace, runner: ProcessRunner, gateway: GatewayProcess, tenants: Tenants
) -> None:
    alpha, beta = deploy(ns, "alpha"), deploy(ns, "beta")
    key = tenants.create(f"t-{ns.name}", f"{alpha},{beta}")
    only_alpha = tenants.create(f"a-{ns.name}", alpha)
    c = client(gateway, key)
    routable(c, alpha)
    routable(c, beta)

    listed = {m.id for m in c.models.list().data}
    assert {alpha, beta} <= listed
    assert {m.id for m in client(gateway, only_alpha).models.list().data} == {alpha}

    reply = c.chat.completions.with_raw_response.create(
        model=alpha,
        messages=[{"role": "user", "content": f"Say hi {PROMPT_MARKER}"}],
        max_tokens=8,
        extra_headers={"X-Request-Id": f"plain-{ns.name}"},
    )
    answer = reply.parse()
    assert answer.model == alpha
    line = audit_of(gateway, f"plain-{ns.name}")
    assert line["model_deployment"] == "alpha"
    assert line["namespace"] == ns.name
    assert line["replica"] in pods_of(ns, "alpha")
    assert line["status"] == 200
    assert answer.usage is not None
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )

    # Streaming: chunks arrive one by one and the usage chunk is counted.
    chunks = list(
        c.chat.completions.create(
            model=beta,
            messages=[{"role": "user", "content": f"Count {PROMPT_MARKER}"}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Request-Id": f"stream-{ns.name}"},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len(chunks) > 3
    assert text
    usage = chunks[-1].usage
    assert usage is not None
    line = audit_of(gateway, f"stream-{ns.name}")
    assert line["model_deployment"] == "beta"
    assert line["replica"] in pods_of(ns, "beta")
    assert line["stream"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert line["usage_estimated"] is False
    assert 0 < line["ttft_seconds"] <= line["duration_seconds"]

    # Unknown model: 404, OpenAI-shaped.
    with pytest.raises(openai.NotFoundError) as missing:
        chat(c, f"nope-{ns.name}")
    assert missing.value.code == "model_not_found"

    # Audit: one line per request, never the prompt text.
    raw = gateway.audit_path.read_text()
    assert PROMPT_MARKER not in raw
    assert PROMPT_MARKER not in gateway.log(None)
    mine = [
        r for r in audit(gateway) if r["namespace"] == ns.name or r["model"] == f"nope-{ns.name}"
    ]
    assert len({r["request_id"] for r in mine}) == len(mine)
    assert all(r["tenant"] in (f"t-{ns.name}", f"a-{ns.name}") for r in mine)

    # Metrics (on the metrics port, not the API port).
    assert samples(
        gateway, "gantry_gateway_requests_total", model_deployment="alpha", namespace=ns.name,
        code="200",
    ) >= 2  # fmt: skip
    assert samples(
        gateway, "gantry_gateway_tokens_total", model_deployment="beta", kind="completion",
        tenant=f"t-{ns.name}",
    ) >= usage.completion_tokens  # fmt: skip
    assert samples(gateway, "gantry_gateway_time_to_first_token_seconds_count",
                   model_deployment="beta") >= 1  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as not_here:
        DIRECT.open(f"http://127.0.0.1:{gateway.port}/metrics", timeout=5)
    not_here.value.close()
    assert not_here.value.code == 404


def test_keys_missing_wrong_revoked_and_models_not_allowed(
    ns: Namespace, runner: ProcessRunner, gateway: GatewayProcess, tenants: Tenants
) -> None:
    model, other = deploy(ns, "gamma"), deploy(ns, "delta")
    secret = f"k-{ns.name}"
    key = tenants.create(secret, model)
    c = client(gateway, key)
    routable(c, model)

    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    status, answer = post(gateway, "/chat/completions", body, None)
    assert status == 401
    assert answer["error"]["code"] == "invalid_api_key"
    assert "Bearer" in answer["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(client(gateway, "sk-wrong-0123456789abcdef"), model)
    assert refused.value.status_code == 401
    status, answer = post(gateway, "/chat/completions", b"{not json", key)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in answer["error"]["message"]
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        chat(c, other)
    assert "may not use model" in forbidden.value.message

    tenants.delete(secret)

    def revoked() -> bool:
        try:
            chat(c, model)
        except openai.AuthenticationError:
            return True
        return False

    wait_for(revoked, 10, "the deleted Secret's key is refused")


def test_request_and_token_limits(
    ns: Namespace, runner: ProcessRunner, gateway: GatewayProcess, tenants: Tenants
) -> None:
    model = deploy(ns, "eps")
    c = client(gateway, tenants.create(f"r-{ns.name}", model, rpm=3))
    for _ in range(3):
        routable(c, model)
    with pytest.raises(openai.RateLimitError) as limited:
        chat(c, model)
    assert limited.value.code == "rate_limit_requests"
    assert int(limited.value.response.headers["Retry-After"]) >= 1

    # 30 tokens a minute: the first answer uses more than that, so the next is refused.
    t = client(gateway, tenants.create(f"tk-{ns.name}", model, tpm=30))
    first = t.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=40
    )
    assert first.usage is not None
    assert first.usage.total_tokens > 30
    with pytest.raises(openai.RateLimitError) as tokens:
        chat(t, model)
    assert tokens.value.code == "rate_limit_tokens"
    assert samples(gateway, "gantry_gateway_rate_limited_total", tenant=f"tk-{ns.name}",
                   limit="tokens") == 1  # fmt: skip


def test_scale_from_zero_holds_the_request_until_a_replica_is_ready(
    ns: Namespace, runner: ProcessRunner, gateway: GatewayProcess, tenants: Tenants
) -> None:
    model = deploy(ns, "zeta", replicas=0)
    c = client(gateway, tenants.create(f"z-{ns.name}", model))
    wait_for(lambda: model in {m.id for m in c.models.list().data}, 30, "model listed")
    assert pods_of(ns, "zeta") == set()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(chat, c, model) for _ in range(2)]
        wait_for(
            lambda: samples(gateway, "gantry_gateway_held_requests", model_deployment="zeta") == 2,
            30,
            "two requests held",
        )
        replies = [f.result(timeout=SETTLE + HOLD_SECONDS) for f in held]
    assert all(r.choices[0].message.content for r in replies)
    md = json.loads(ns.kubectl("get", "md", "zeta", "-o", "json", "--show-managed-fields").stdout)
    assert md["spec"]["replicas"] == 1
    managers = {f["manager"] for f in md["metadata"]["managedFields"]}
    assert "gantry-gateway" in managers
    assert samples(gateway, "gantry_gateway_held_requests", model_deployment="zeta") == 0


def test_held_requests_time_out_with_503_when_the_model_cannot_start(
    ns: Namespace,
    runner: ProcessRunner,
    cluster: LocalCluster,
    tenant_ns: str,
    tenants: Tenants,
    tmp_path: Path,
) -> None:
    # Pods that no node accepts: the model never gets a Ready replica.
    model = deploy(ns, "eta", scheduling={"nodeSelector": {"example.com/no-such-node": "x"}})
    key = tenants.create(f"h-{ns.name}", model)
    with GatewayProcess(
        cluster.kubeconfig,
        tmp_path / "gateway",
        extra_args=(f"--tenant-namespace={tenant_ns}", "--hold-timeout-seconds=4"),
    ) as short:
        c = client(short, key)
        wait_for(lambda: model in {m.id for m in c.models.list().data}, 30, "model listed")
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as timed_out:
            chat(c, model)
        waited = time.monotonic() - started
        assert timed_out.value.status_code == 503
        assert timed_out.value.code == "hold_timeout"
        assert int(timed_out.value.response.headers["Retry-After"]) >= 1
        assert 4 <= waited < 15
        assert samples(short, "gantry_gateway_hold_timeouts_total", model_deployment="eta") == 1
        assert samples(short, "gantry_gateway_held_requests", model_deployment="eta") == 0
    assert pods_of(ns, "eta")  # the pods exist but are Pending
    assert all(
        p["status"]["phase"] == "Pending"
        for p in ns.items("pods", "gantry.dev/model-deployment=eta")
    )


def test_prefix_affinity_sends_repeated_prompts_to_one_replica(
    ns: Namespace, runner: ProcessRunner, gateway: GatewayProcess, tenants: Tenants
) -> None:
    model = deploy(ns, "theta", replicas=3, routing={"strategy": "PrefixAffinity"})
    spread = deploy(ns, "iota", replicas=3)
    c = client(gateway, tenants.create(f"p-{ns.name}", f"{model},{spread}"))
    md = ns.get("md", "theta")
    assert md["spec"].get("routing", {}).get("strategy") == "PrefixAffinity", (
        "the CRD must have spec.routing (the operator side of the gateway issue)"
    )
    wait_for(lambda: len(pods_of(ns, "theta")) == 3 and len(pods_of(ns, "iota")) == 3, SETTLE,
             "three pods each")  # fmt: skip
    routable(c, model)
    routable(c, spread)
    # Wait until all three replicas of each answer (their simulators start one by one).
    time.sleep(3)

    system = "You are a careful assistant for the shipping desk. " * 40  # > 256 tokens
    for i in range(12):
        for served, tag in ((model, "aff"), (spread, "lo")):
            c.chat.completions.create(
                model=served,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"Question number {i}"},
                ],
                max_tokens=4,
                extra_headers={"X-Request-Id": f"{tag}-{i}-{ns.name}"},
            )
    affinity = {audit_of(gateway, f"aff-{i}-{ns.name}")["replica"] for i in range(12)}
    least = {audit_of(gateway, f"lo-{i}-{ns.name}")["replica"] for i in range(12)}
    assert len(affinity) == 1, affinity
    assert len(least) == 3, least  # one request at a time: least outstanding goes round
