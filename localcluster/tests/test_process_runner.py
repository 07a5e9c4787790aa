"""The process runner of the local cluster harness, fed pod objects by hand: which pods get a
simulator, with what environment, and how processes follow pods (real processes on loopback
addresses no cluster uses; no apiserver)."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gantry_runtime.launchspec import ENV_VAR, LaunchSpec
from localcluster.polling import wait_for
from localcluster.runner import ProcessRunner, child_env, pod_targets

NODE = "h100-test"


def free_address() -> str:
    """A loopback address whose port 8000 is free, outside every range the local cluster hands
    out (pod CIDRs 127.1.x, node IPs 127.2.x, kwok's fallback 127.3.x), so test runs that
    overlap do not meet."""
    rng = random.Random()
    for _ in range(100):
        address = f"127.4.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        with socket.socket() as sock:
            try:
                sock.bind((address, 8000))
            except OSError:
                continue
        return address
    raise RuntimeError("no free loopback address for port 8000")


IP_A = free_address()
IP_B = next(ip for ip in iter(free_address, None) if ip != IP_A)
LAUNCH = LaunchSpec(
    model="/models",
    served_model_name="m",
    tensor_parallel_size=1,
    pipeline_parallel_size=1,
    max_model_len=4096,
    max_num_seqs=4,
    gpu_memory_utilization=0.9,
    shutdown_timeout=0,
)


def pod(uid: str, ip: str | None = IP_A, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"uid": uid, "namespace": "ns", "name": f"pod-{uid}"},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 90,
            "containers": [
                {"name": "sidecar", "env": [{"name": "SIDE", "value": "1"}]},
                {
                    "name": "runtime",
                    "env": [
                        {"name": ENV_VAR, "value": LAUNCH.to_json()},
                        {"name": "GANTRY_SIM_STARTUP_DELAY_S", "value": "0"},
                        {"name": "EMPTY"},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    ],
                },
            ],
        },
        "status": {"phase": "Running", "podIP": ip},
    }
    for path, value in changes.items():
        section, key = path.split("__")
        body[section][key] = value
    return body


def test_only_running_pods_on_fake_nodes_with_a_loopback_ip_are_targets() -> None:
    terminating = pod("t")
    terminating["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    pods = [
        pod("ok"),
        pod("pending", status__phase="Pending"),
        pod("no-ip", ip=None),
        pod("real-node", spec__nodeName="gpu-1"),
        pod("public", ip="10.0.0.5"),
        terminating,
    ]
    targets = pod_targets(pods, {NODE, "other"}, max_grace=10)
    assert list(targets) == ["ok"]
    target = targets["ok"]
    assert (target.namespace, target.name, target.ip, target.grace) == ("ns", "pod-ok", IP_A, 10)
    # The runtime container's literal values; valueFrom is skipped, a missing value is empty.
    assert dict(target.env) == {
        ENV_VAR: LAUNCH.to_json(),
        "GANTRY_SIM_STARTUP_DELAY_S": "0",
        "EMPTY": "",
    }
    short = pod("short", spec__terminationGracePeriodSeconds=3)
    assert pod_targets([short], {NODE}, max_grace=10)["short"].grace == 3


def test_child_env_knobs_yield_to_the_pod_and_the_address_is_the_pods() -> None:
    target = pod_targets([pod("a")], {NODE}, max_grace=10)["a"]
    env = child_env(
        target,
        {"GANTRY_SIM_STARTUP_DELAY_S": "5", "GANTRY_SIM_DECODE_TOKENS_PER_S": "50"},
        base={"PATH": "/bin", "KUBECONFIG": "/secret", "GANTRY_HOST": "0.0.0.0"},
    )
    assert env["PATH"] == "/bin"
    assert "KUBECONFIG" not in env
    assert env["GANTRY_SIM_STARTUP_DELAY_S"] == "0"
    assert env["GANTRY_SIM_DECODE_TOKENS_PER_S"] == "50"
    assert env["GANTRY_HOST"] == IP_A
    assert json.loads(env[ENV_VAR])["max_num_seqs"] == 4


def healthy(ip: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}:8000/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def served_model(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:8000/v1/models", timeout=5) as response:
        return str(json.load(response)["data"][0]["id"])


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[ProcessRunner]:
    # Driven by hand through sync(): no thread, no apiserver.
    process_runner = ProcessRunner(tmp_path / "unused-kubeconfig", tmp_path / "logs", grace=10)
    process_runner.fake_nodes = {NODE}
    yield process_runner
    process_runner.stop()


def sync_until(
    runner: ProcessRunner, pods: list[dict[str, Any]], predicate: Any, what: str
) -> None:
    def step() -> bool:
        runner.sync(pods)
        return bool(predicate())

    wait_for(step, 60, what)


def test_processes_follow_pods_and_a_reused_ip_waits_for_the_old_process(
    runner: ProcessRunner,
) -> None:
    first = pod("first")
    runner.sync([first])
    (process,) = runner.processes().values()
    assert (process.namespace, process.name, process.ip) == ("ns", "pod-first", IP_A)
    wait_for(lambda: healthy(IP_A), 60, "the first pod's simulator answers on its IP")
    assert served_model(IP_A) == "m"
    assert f"Started server on http://{IP_A}:8000" in process.log.read_text()

    # kwok gives the deleted pod's address to a new pod: the old process goes first.
    second = pod("second")
    renamed = dataclasses.replace(LAUNCH, served_model_name="m2")
    second["spec"]["containers"][1]["env"][0]["value"] = renamed.to_json()
    sync_until(
        runner,
        [second],
        lambda: set(runner.processes()) == {"second"},
        "the second pod's process replaces the first",
    )
    wait_for(lambda: healthy(IP_A) and served_model(IP_A) == "m2", 60, "the new simulator serves")
    events = [(what, name) for _t, what, _ns, name, _ip in runner.history]
    assert events == [
        ("started", "pod-first"),
        ("stopped", "pod-first"),
        ("started", "pod-second"),
    ]

    # A pod that starts terminating loses its process; one on another address gets one.
    other = pod("other", ip=IP_B)
    terminating = copy.deepcopy(second)
    terminating["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    sync_until(
        runner,
        [terminating, other],
        lambda: set(runner.processes()) == {"other"} and healthy(IP_B) and not healthy(IP_A),
        "only the other pod's simulator runs",
    )
    pid = runner.processes()["other"].pid
    runner.stop()
    assert runner.processes() == {}
    assert not healthy(IP_B)
    assert not Path(f"/proc/{pid}").exists()


def test_a_crashed_process_is_restarted_with_back_off(runner: ProcessRunner) -> None:
    broken = pod("broken")
    broken["spec"]["containers"][1]["env"][0]["value"] = "{not json"
    sync_until(
        runner,
        [broken],
        lambda: runner.processes()["broken"].restarts >= 1,
        "the process exited and was started again",
    )
    assert [what for _t, what, *_ in runner.history][:3] == ["started", "exited", "started"]
    log = runner.processes()["broken"].log.read_text()
    assert f"{ENV_VAR} is not valid JSON" in log
