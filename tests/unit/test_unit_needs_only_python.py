"""tests/unit runs on Python alone: no test here builds or calls helm, kube-score, promtool, a
local cluster or the vLLM virtualenv (those tests live in tests/integration and tests/contract)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
#: Entry points that build or run a binary, or need the vLLM virtualenv.
BINARY_USERS = (
    "ensure_tools",
    "ensure_promtool",
    "chart.helm",
    "chart.template",
    "chart.render",
    "kube_score",
    "localcluster.build",
    "LocalCluster",
    "vllm_python",
    "ensure_vllm_python",
)


@pytest.mark.parametrize("path", sorted(HERE.glob("test_*.py")), ids=lambda p: p.name)
def test_no_binaries(path: Path) -> None:
    text = path.read_text()
    if path.name == Path(__file__).name:
        return
    used = [name for name in BINARY_USERS if name in text]
    assert used == [], f"{path.name} uses {used}: move those tests to tests/integration"
