"""Multi-node replicas: the launch spec, each pod's argv, the env, and the worker's wait for its
leader (against real sockets and real runtime processes on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gantry_operator import planner
from gantry_operator.manifests.launch import launch_spec, multinode_env
from gantry_operator.spec import parse
from gantry_runtime.launchspec import (
    ENV_VAR,
    GroupError,
    GroupPosition,
    LaunchSpec,
    group_position,
    vllm_argv,
)
from gantry_runtime.leader import LeaderTimeoutError, wait_for_leader

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0
#: A name getaddrinfo cannot resolve, refused before any DNS query (a label over 63 bytes).
UNRESOLVABLE = "l" * 64 + ".gantry-test.invalid"


def _spec(model: str, gpu: str, **serving: Any) -> tuple[planner.Plan, LaunchSpec]:
    body = {
        "model": {"preset": model},
        "source": {"pvc": {"claimName": "weights", "path": model}},
        "gpu": {"type": gpu},
        "serving": serving,
    }
    parsed = parse("m", "default", body)
    plan = planner.plan(parsed)
    return plan, launch_spec(parsed, plan)


def _flags(argv: list[str]) -> dict[str, str | None]:
    """``--flag value`` pairs and bare switches of an argv (after ``vllm serve MODEL``)."""
    out: dict[str, str | None] = {}
    rest = argv[3:]
    i = 0
    while i < len(rest):
        flag = rest[i]
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            out[flag] = rest[i + 1]
            i += 2
        else:
            out[flag] = None
            i += 1
    return out


POD_IP = "10.1.2.3"


def _position(spec: LaunchSpec, index: int, address: str = "md-0.md.ns") -> GroupPosition:
    env = {
        "LWS_LEADER_ADDRESS": address,
        "LWS_GROUP_SIZE": str(spec.nnodes),
        "LWS_WORKER_INDEX": str(index),
        "VLLM_HOST_IP": POD_IP,
    }
    position = group_position(spec, env)
    assert position is not None
    return position


# --- the launch spec ------------------------------------------------------------------------------


def test_single_node_launch_specs_carry_no_group_fields() -> None:
    plan, spec = _spec("gpt-oss-120b", "H100-80GB")
    assert plan.nodes_per_replica == 1
    data = json.loads(spec.to_json())
    for key in ("nnodes", "layout", "master_port", "rpc_port", "data_parallel_size"):
        assert key not in data
    assert LaunchSpec.from_json(spec.to_json()) == spec
    assert group_position(spec, {}) is None
    assert "--nnodes" not in vllm_argv(spec)


@pytest.mark.parametrize(("gpu", "layout"), [("H100-80GB", "pipeline"), ("H200", "data-parallel")])
def test_multi_node_launch_specs_follow_the_plan(gpu: str, layout: str) -> None:
    plan, spec = _spec("kimi-k2", gpu)
    assert (plan.layout, spec.layout) == (layout, layout)
    assert spec.nnodes == plan.nodes_per_replica == 2
    assert (spec.data_parallel_size, spec.data_parallel_size_local) == (
        plan.data_parallel_size,
        plan.data_parallel_size_local,
    )
    assert spec.leader_wait_seconds >= max(600, plan.expected_load_seconds)
    assert LaunchSpec.from_json(spec.to_json()) == spec
    with pytest.raises(GroupError, match="LWS_LEADER_ADDRESS, LWS_GROUP_SIZE, LWS_WORKER_INDEX"):
        vllm_argv(spec)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nnodes": 2}, "layout 'single-node' does not match nnodes=2"),
        ({"layout": "pipeline"}, "layout 'pipeline' does not match nnodes=1"),
        ({"nnodes": 2, "layout": "ring"}, "layout 'ring' is not one of"),
        (
            {"nnodes": 2, "layout": "data-parallel", "data_parallel_size": 16},
            "data_parallel_size=16 must be nnodes=2 x data_parallel_size_local=1",
        ),
    ],
)
def test_inconsistent_group_fields_are_refused(fields: dict[str, Any], message: str) -> None:
    _, spec = _spec("gpt-oss-120b", "H100-80GB")
    data = json.loads(spec.to_json())
    data.update(fields)
    with pytest.raises(ValueError, match=message):
        LaunchSpec.from_json(json.dumps(data))


# --- each pod's argv ----------------------------------------------------------------------


def test_pipeline_argv_per_node() -> None:
    plan, spec = _spec("kimi-k2", "H100-80GB")
    for member in plan.group:
        argv = vllm_argv(spec, position=_position(spec, member.worker_index))
        flags = _flags(argv)
        assert flags["--tensor-parallel-size"] == str(plan.tensor_parallel_size)
        assert flags["--pipeline-parallel-size"] == str(plan.pipeline_parallel_size)
        assert flags["--nnodes"] == str(plan.nodes_per_replica)
        assert flags["--node-rank"] == str(member.worker_index)
        # The leader binds on its own pod IP; workers reach it by its name.
        assert flags["--master-addr"] == (POD_IP if member.worker_index == 0 else "md-0.md.ns")
        assert flags["--master-port"] == str(spec.master_port)
        assert ("--headless" in flags) is (member.worker_index > 0)
        assert "--data-parallel-size" not in flags


def test_data_parallel_argv_per_node() -> None:
    plan, spec = _spec("kimi-k2", "H200")
    local = plan.data_parallel_size_local
    for member in plan.group:
        argv = vllm_argv(spec, position=_position(spec, member.worker_index))
        flags = _flags(argv)
        assert (flags["--tensor-parallel-size"], flags["--pipeline-parallel-size"]) == ("1", "1")
        assert flags["--data-parallel-size"] == str(plan.data_parallel_size)
        assert flags["--data-parallel-size-local"] == str(local)
        want = POD_IP if member.worker_index == 0 else "md-0.md.ns"
        assert flags["--data-parallel-address"] == want
        assert flags["--data-parallel-rpc-port"] == str(spec.rpc_port)
        assert "--enable-expert-parallel" in flags
        assert argv.count("--enable-expert-parallel") == 1
        if member.worker_index == 0:
            # A start rank on a pod with an API server would switch vLLM to hybrid load
            # balancing; the leader serves the whole group.
            assert "--data-parallel-start-rank" not in flags
            assert "--headless" not in flags
        else:
            assert flags["--data-parallel-start-rank"] == str(member.first_rank)
            assert member.first_rank == member.worker_index * local
            assert "--headless" in flags
        assert "--nnodes" not in flags


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"}, "LWS_LEADER_ADDRESS is not set"),
        ({"LWS_LEADER_ADDRESS": "a", "LWS_WORKER_INDEX": "1"}, "LWS_GROUP_SIZE is not set"),
        ({"LWS_LEADER_ADDRESS": "a", "LWS_GROUP_SIZE": "2"}, "LWS_WORKER_INDEX is not set"),
        (
            {"LWS_LEADER_ADDRESS": "a", "LWS_GROUP_SIZE": "3", "LWS_WORKER_INDEX": "1"},
            "LWS_GROUP_SIZE=3 does not match the launch spec's 2 nodes per replica",
        ),
        (
            {"LWS_LEADER_ADDRESS": "a", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "2"},
            "LWS_WORKER_INDEX=2 is outside the group of 2 pods",
        ),
        (
            {"LWS_LEADER_ADDRESS": "a", "LWS_GROUP_SIZE": "two", "LWS_WORKER_INDEX": "1"},
            "LWS_GROUP_SIZE='two' is not a whole number",
        ),
    ],
)
def test_group_environment_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    _, spec = _spec("kimi-k2", "H100-80GB")
    with pytest.raises(GroupError, match=message):
        group_position(spec, env)


def test_without_its_pod_ip_the_leader_uses_its_name() -> None:
    _, spec = _spec("kimi-k2", "H100-80GB")
    env = {"LWS_LEADER_ADDRESS": "md-0.md.ns", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "0"}
    position = group_position(spec, env)
    assert position is not None
    assert position.pod_ip is None
    flags = _flags(vllm_argv(spec, position=position))
    assert flags["--master-addr"] == "md-0.md.ns"


def test_multinode_env() -> None:
    single, _ = _spec("gpt-oss-120b", "H100-80GB")
    assert multinode_env(single) == []
    plan, _ = _spec("kimi-k2", "H200")
    env = multinode_env(plan)
    assert [e["name"] for e in env] == sorted(e["name"] for e in env)
    by_name = {e["name"]: e for e in env}
    assert by_name["NCCL_SOCKET_IFNAME"]["value"] == "eth0"
    assert by_name["GLOO_SOCKET_IFNAME"]["value"] == "eth0"
    assert by_name["VLLM_HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


# --- the worker's wait ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _listening(port: int, after: float = 0.0) -> Iterator[None]:
    """A TCP listener on 127.0.0.1:port, opened ``after`` seconds from now."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def open_() -> None:
        sock.bind(("127.0.0.1", port))
        sock.listen()

    timer = threading.Timer(after, open_)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        sock.close()


def test_wait_returns_once_the_leader_port_answers() -> None:
    port = _free_port()
    lines: list[str] = []
    with _listening(port, after=1.5):
        waited = wait_for_leader("localhost", port, timeout=WAIT, log=lines.append, interval=0.5)
    assert 1.0 <= waited < WAIT
    assert lines[0] == (
        f"Waiting up to {WAIT:g} s for the leader: localhost must resolve and accept TCP "
        f"port {port}"
    )
    assert any(
        line.startswith("Still waiting for the leader after") and f"TCP port {port}" in line
        for line in lines
    ), lines
    assert lines[-1].startswith(f"The leader answered at localhost:{port} after ")


def test_wait_times_out_on_a_closed_port() -> None:
    port = _free_port()
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(LeaderTimeoutError) as info:
        wait_for_leader("127.0.0.1", port, timeout=1.5, log=lines.append, interval=0.5)
    assert 1.5 <= time.monotonic() - started < 10
    message = str(info.value)
    assert message.startswith("The leader did not answer within 1.5 s: 127.0.0.1 resolves but")
    assert f"accepts TCP port {port}" in message
    assert "leader pod (worker index 0)" in message
    assert f"NetworkPolicy blocks TCP port {port}" in message


def test_wait_times_out_on_a_name_that_does_not_resolve() -> None:
    with pytest.raises(LeaderTimeoutError, match=f"{UNRESOLVABLE} does not resolve"):
        wait_for_leader(UNRESOLVABLE, 29501, timeout=1.0, log=lambda _: None, interval=0.5)


# --- the runtime as processes: a simulated group ----------------------------------------


def _runtime_env(spec: LaunchSpec, index: int, address: str = "localhost") -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT / "operator")]),
        ENV_VAR: spec.to_json(),
        "GANTRY_HOST": "127.0.0.1",
        "GANTRY_TERMINATION_LOG": "/nonexistent/termination-log",
        "LWS_LEADER_ADDRESS": address,
        "LWS_GROUP_SIZE": str(spec.nnodes),
        "LWS_WORKER_INDEX": str(index),
    }


class _Process:
    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gantry_runtime", "serve", "--simulate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(WAIT)
            self._reader.join(WAIT)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def _until(check: Callable[[], bool], what: str, proc: _Process) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{''.join(proc.lines)}")


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            status: int = response.status
            return status
    except OSError:
        return 0


def _connects(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("layout", ["pipeline", "data-parallel"])
def test_a_simulated_group_leader_serves_and_the_worker_waits_for_it(layout: str) -> None:
    api, group_port, worker_api = _free_port(), _free_port(), _free_port()
    fields: dict[str, Any] = {
        "model": "m",
        "served_model_name": "m",
        "tensor_parallel_size": 1 if layout == "data-parallel" else 2,
        "pipeline_parallel_size": 1 if layout == "data-parallel" else 2,
        "max_model_len": 4096,
        "max_num_seqs": 4,
        "gpu_memory_utilization": 0.9,
        "shutdown_timeout": 0,
        "verify_local_weights": False,
        "nnodes": 2,
        "layout": layout,
        "master_port": group_port,
        "rpc_port": group_port,
        "data_parallel_size": 4 if layout == "data-parallel" else 1,
        "data_parallel_size_local": 2 if layout == "data-parallel" else 1,
        "leader_wait_seconds": int(WAIT),
    }
    leader_spec = LaunchSpec(port=api, **fields)
    worker_spec = LaunchSpec(port=worker_api, **fields)
    # The worker starts first: it must wait for the leader, then stay up without an API.
    worker = _Process(_runtime_env(worker_spec, 1))
    leader: _Process | None = None
    try:
        _until(lambda: worker.saw("Waiting up to"), "the worker to wait", worker)
        assert worker.proc.poll() is None
        leader = _Process(_runtime_env(leader_spec, 0))
        _until(lambda: _health(api) == 200, "the leader's API", leader)
        assert _connects(group_port)
        _until(lambda: worker.saw("The leader answered"), "the worker to see the leader", worker)
        _until(lambda: worker.saw("Headless worker"), "the headless worker", worker)
        assert worker.saw("--headless")
        assert not _connects(worker_api)  # no HTTP API on a worker
        assert worker.proc.poll() is None
    finally:
        worker_status = worker.stop()
        leader_status = leader.stop() if leader is not None else None
    assert worker_status == 0, "".join(worker.lines)
    assert leader_status == 0, "".join(leader.lines if leader else [])
    assert leader is not None
    assert leader.saw(f"Leader of a 2-pod group ({layout} layout)")
    assert leader.saw(f"Listening for the group's workers on 127.0.0.1:{group_port}")


def test_a_worker_without_its_leader_exits_3_saying_what_to_check() -> None:
    spec = LaunchSpec(
        model="m",
        served_model_name="m",
        tensor_parallel_size=1,
        pipeline_parallel_size=2,
        max_model_len=4096,
        max_num_seqs=4,
        gpu_memory_utilization=0.9,
        shutdown_timeout=0,
        verify_local_weights=False,
        nnodes=2,
        layout="pipeline",
        master_port=_free_port(),
        leader_wait_seconds=2,
    )
    worker = _Process(_runtime_env(spec, 1, address=UNRESOLVABLE))
    assert worker.proc.wait(WAIT) == 3
    worker.stop()
    assert worker.saw("The leader did not answer within 2 s")
    assert worker.saw(f"{UNRESOLVABLE} does not resolve")


def test_a_multi_node_spec_outside_a_group_exits_2_naming_the_variable() -> None:
    _, spec = _spec("kimi-k2", "H100-80GB")
    env = _runtime_env(spec, 1)
    del env["LWS_WORKER_INDEX"]
    worker = _Process(env)
    assert worker.proc.wait(WAIT) == 2
    worker.stop()
    assert worker.saw("LWS_WORKER_INDEX is not set")


@pytest.mark.parametrize(
    ("argv", "headless", "group_port"),
    [
        ([], False, None),
        (["--nnodes", "2", "--node-rank", "0", "--master-port", "4321"], False, 4321),
        (["--nnodes", "2", "--node-rank", "1", "--master-port", "4321", "--headless"], True, None),
        (["-dp", "16", "-dpl", "8", "-dpp", "5432"], False, 5432),
        (["--data-parallel-size", "8", "--data-parallel-rpc-port", "5432"], False, None),
        (["-dp", "16", "-dpl", "8", "--headless", "--data-parallel-start-rank", "8"], True, None),
    ],
)
def test_the_simulator_reads_its_place_in_a_group_from_vllms_flags(
    argv: list[str], headless: bool, group_port: int | None
) -> None:
    from gantry_runtime.simulator.config import parse_config

    config = parse_config(["m", *argv], {})
    assert (config.headless, config.group_port) == (headless, group_port)
    assert not {"--nnodes", "--headless", "-dp", "--data-parallel-size"} & set(config.ignored_args)
