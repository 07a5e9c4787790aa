"""`make demo` brings the examples up on a fresh local cluster, and `make demo-down` leaves
nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localcluster.demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _processes_under(state_dir: Path) -> str:
    result = subprocess.run(["pgrep", "-af", str(state_dir)], capture_output=True, text=True)
    return result.stdout.strip()


def test_demo_up_shows_the_examples_ready_and_down_cleans_up(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    try:
        up = _demo("--state-dir", str(state_dir))
        assert up.returncode == 0, up.stderr[-3000:]
        rows: dict[str, list[str]] = {}
        for line in up.stdout.splitlines():  # the first table is `kubectl get md -o wide`
            if line.split() and line.split()[0] not in rows:
                rows[line.split()[0]] = line.split()
        # MODEL GPU GPUS TP NODES REPLICAS READY PHASE
        assert rows["gpt-oss-120b"][1:9] == [
            "gpt-oss-120b",
            "H100-80GB",
            "2",
            "2",
            "1",
            "1",
            "1",
            "Ready",
        ]
        assert rows["gpt-oss-20b"][1:9] == [
            "gpt-oss-20b", "H100-80GB", "1", "1", "1", "2", "2", "Ready"
        ]  # fmt: skip
        assert f"export KUBECONFIG={state_dir}/kubeconfig" in up.stdout
        assert "h100-eu-west-1" in up.stdout
        assert "/v1/chat/completions -> " in up.stdout
        assert "12 completion tokens" in up.stdout
        again = _demo("--state-dir", str(state_dir))
        assert again.returncode == 1
        assert "already runs" in again.stdout
    finally:
        down = _demo("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert not state_dir.exists()
    assert _processes_under(state_dir) == ""
