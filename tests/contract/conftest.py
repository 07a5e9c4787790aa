"""Fixtures for the vLLM contract tests: the pinned vLLM virtualenv and a batch checker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.contract.vllm_env import (
    VllmCase,
    VllmCheck,
    VllmCheckError,
    VllmResult,
    ensure_vllm_python,
    run_vllm_check,
)

#: Seconds for one vllm_check.py run: importing vLLM takes 10-20 s, the first engine config a
#: few more, each further case about 0.02 s.
CHECK_TIMEOUT_S = 600.0


@pytest.fixture(scope="session")
def vllm_python(request: pytest.FixtureRequest) -> Path:
    """The pinned vLLM's Python; the first run on a machine installs it (about 9 GB)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    try:
        # Let the install's progress reach the terminal: it can take many minutes.
        with capture.global_and_fixture_disabled():
            return ensure_vllm_python()
    except VllmCheckError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def vllm_check(vllm_python: Path) -> VllmCheck:
    """A function that runs vllm_check.py once over a list of cases."""

    def check(cases: Sequence[VllmCase]) -> dict[str, VllmResult]:
        try:
            return run_vllm_check(vllm_python, cases, timeout=CHECK_TIMEOUT_S)
        except VllmCheckError as exc:
            pytest.fail(str(exc), pytrace=False)

    return check
