"""`gantry-runtime serve` and run_child with a fake `vllm` executable: real processes, real signals.

The fake vllm (a small Python script put first on PATH) records its argv, pid and one environment
variable, then waits; on SIGTERM/SIGINT it writes the signal's name and exits 0 after a short
"drain" (or, in mode "ignore", keeps running, with a grandchild in its process group).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gantry_runtime.launchspec import ENV_VAR, LaunchSpec, vllm_argv

FAKE_VLLM = """\
#!{python}
import json, os, signal, subprocess, sys, time

record = os.environ["FAKE_VLLM_RECORD"]
mode = os.environ.get("FAKE_VLLM_MODE", "drain")

def on_signal(signum, frame):
    with open(record + ".signal", "a") as out:
        out.write(signal.Signals(signum).name + "\\n")
    if mode != "ignore":
        time.sleep(0.3)  # draining
        sys.exit(0)

signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
grandchild = None
if mode == "ignore":
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]).pid
data = {{"argv": sys.argv[1:], "pid": os.getpid(), "grandchild": grandchild,
         "passthrough": os.environ.get("GANTRY_TEST_PASSTHROUGH")}}
with open(record + ".tmp", "w") as out:
    json.dump(data, out)
os.rename(record + ".tmp", record)
if mode.startswith("exit:"):
    sys.exit(int(mode[5:]))
if mode == "selfkill":
    os.kill(os.getpid(), signal.SIGKILL)
while True:
    time.sleep(0.05)
"""


@dataclass
class Fake:
    bin_dir: Path
    record: Path
    env: dict[str, str]

    def wait_started(self, proc: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.record.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"runtime exited {proc.returncode} early:\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail("the fake vllm did not start")
            time.sleep(0.02)
        data: dict[str, Any] = json.loads(self.record.read_text())
        return data

    def signals(self) -> list[str]:
        path = Path(f"{self.record}.signal")
        return path.read_text().split() if path.exists() else []


def spec_json(model_dir: Path, **overrides: Any) -> str:
    return make_spec(model_dir, **overrides).to_json()


def make_spec(model_dir: Path, **overrides: Any) -> LaunchSpec:
    fields: dict[str, Any] = {
        "model": str(model_dir),
        "served_model_name": "gpt-oss-20b",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "max_model_len": 131072,
        "max_num_seqs": 64,
        "gpu_memory_utilization": 0.9,
        "shutdown_timeout": 2,
        "verify_local_weights": False,
        "extra_args": (("--enable-prompt-tokens-details", None),),
        **overrides,
    }
    return LaunchSpec(**fields)


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "vllm"
    script.write_text(FAKE_VLLM.format(python=sys.executable))
    script.chmod(0o755)
    record = tmp_path / "record.json"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_VLLM_RECORD": str(record),
        "GANTRY_TEST_PASSTHROUGH": "kept",
        ENV_VAR: spec_json(tmp_path / "model"),
    }
    for var in ("GANTRY_RUNTIME_MODE", "GANTRY_HOST", "GANTRY_TERMINATION_LOG"):
        env.pop(var, None)
    return Fake(bin_dir, record, env)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed at the end if the test left them running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes its pipes


def start_runtime(
    fake: Fake, procs: list[subprocess.Popen[str]], *args: str, **env: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gantry_runtime", *args],
        env={**fake.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    return proc


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its new parent counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_vllm_and_forwards_the_signal(
    fake: Fake, procs: list[subprocess.Popen[str]], sig: signal.Signals
) -> None:
    proc = start_runtime(fake, procs, "serve")
    started = fake.wait_started(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=15)

    assert proc.returncode == 0, err
    expected = vllm_argv(LaunchSpec.from_json(fake.env[ENV_VAR]))
    assert started["argv"] == expected[1:]
    assert out.splitlines()[0] == shlex.join(expected)
    assert started["passthrough"] == "kept"
    assert fake.signals() == [sig.name]
    assert gone(started["pid"])
    assert f"Forwarded {sig.name} to vLLM (pid {started['pid']})" in err
    assert "Skipped the local weights check" in err


def test_default_command_is_serve(fake: Fake, procs: list[subprocess.Popen[str]]) -> None:
    proc = start_runtime(fake, procs)
    started = fake.wait_started(proc)
    proc.terminate()
    proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert gone(started["pid"])


@pytest.mark.parametrize(("mode", "status"), [("exit:3", 3), ("exit:0", 0), ("selfkill", 137)])
def test_exit_status_is_vllms(
    fake: Fake, procs: list[subprocess.Popen[str]], mode: str, status: int
) -> None:
    proc = start_runtime(fake, procs, "serve", FAKE_VLLM_MODE=mode)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == status, err
    assert fake.record.exists()


def test_vllm_is_killed_with_its_process_group_after_the_grace(
    fake: Fake, procs: list[subprocess.Popen[str]]
) -> None:
    """vLLM ignoring SIGTERM is SIGKILLed, worker processes too, once drain + grace passed."""
    wrapper = textwrap.dedent(
        """
        import sys
        from gantry_runtime.launch import run_child
        sys.exit(run_child(["vllm", "serve", "x"], shutdown_timeout=0.5, kill_grace=0.5))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper],
        env={**fake.env, "FAKE_VLLM_MODE": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    started = fake.wait_started(proc)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    elapsed = time.monotonic() - signalled

    assert proc.returncode == 128 + signal.SIGKILL, err
    assert 1.0 <= elapsed < 5.0
    assert fake.signals() == ["SIGTERM"]
    assert "did not exit in time; sent SIGKILL to its process group" in err
    assert gone(started["pid"])
    assert wait_gone(started["grandchild"]), "the worker process survived"


def test_a_second_signal_is_forwarded_too(fake: Fake, procs: list[subprocess.Popen[str]]) -> None:
    wrapper = (
        "import sys\nfrom gantry_runtime.launch import run_child\n"
        "sys.exit(run_child(['vllm', 'serve'], shutdown_timeout=0.5, kill_grace=1.5))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper],
        env={**fake.env, "FAKE_VLLM_MODE": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    started = fake.wait_started(proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 137
    assert fake.signals() == ["SIGTERM", "SIGINT"]
    assert "Forwarded SIGINT to vLLM" in err
    assert wait_gone(started["grandchild"])


def test_weights_problem_stops_before_vllm_and_leaves_a_termination_message(
    fake: Fake, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")
    model = tmp_path / "model"
    model.mkdir()
    proc = start_runtime(
        fake,
        procs,
        "serve",
        **{
            ENV_VAR: spec_json(model, verify_local_weights=True),
            "GANTRY_TERMINATION_LOG": str(termination_log),
        },
    )
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert out == ""
    assert f"{model / 'config.json'} is missing" in err
    assert not fake.record.exists()
    assert f"model directory {model} is not ready" in termination_log.read_text()


def test_complete_weights_then_vllm_starts(
    fake: Fake, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name, content in {
        "config.json": "{}",
        "tokenizer.json": "{}",
        "tokenizer_config.json": "{}",
        "model.safetensors": "weights",
    }.items():
        (model / name).write_text(content)
    proc = start_runtime(
        fake, procs, "serve", **{ENV_VAR: spec_json(model, verify_local_weights=True)}
    )
    started = fake.wait_started(proc)
    proc.terminate()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert started["argv"][1] == str(model)
    assert f"Verified weights in {model}: 1 safetensors files" in err


def test_vllm_not_on_path(fake: Fake, procs: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = start_runtime(fake, procs, "serve", PATH=str(empty))
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 127
    assert "'vllm' was not found on PATH" in err
