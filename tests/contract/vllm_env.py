"""The pinned vLLM, in its own virtualenv, for contract tests against vLLM's own code.

``ensure_vllm_python()`` returns the Python of ``${GANTRY_CACHE:-~/.cache/gantry}/vllm-<ver>/``,
a virtualenv holding exactly ``vllm==<VLLM_VERSION>`` from PyPI (about 9 GB with its CUDA torch,
installed once per machine by :mod:`localcluster.venvs`: locked against concurrent runs, a marker
file written only after a verified install, so an interrupted install resumes on the next call).
``run_vllm_check()`` feeds cases to ``vllm_check.py`` in that virtualenv.

Command line: ``python -m tests.contract.vllm_env`` ensures the virtualenv and prints the path of
its Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from gantry_runtime.versions import VLLM_VERSION
from localcluster import venvs

CHECK_SCRIPT = Path(__file__).with_name("vllm_check.py")
#: What vllm_check.py needs from the environment (no GPU, no network).
CHECK_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu", "VLLM_NO_USAGE_STATS": "1"}


class VllmCase(TypedDict):
    """One command line for vllm_check.py."""

    id: str
    #: A ``vllm serve`` argv without ``vllm serve``.
    argv: list[str]
    #: A folder with the model's config.json, for the engine-config stage.
    config_dir: NotRequired[str | None]
    #: Also build vLLM's engine config (needs config_dir).
    engine: NotRequired[bool]


class VllmResult(TypedDict):
    id: str
    ok: bool
    #: "parse", "validate" or "engine": the stage that failed (None when ok).
    stage: str | None
    error: str | None
    #: argparse's exit status when parsing failed.
    exit_code: int | None
    #: The parsed namespace (None when parsing failed).
    args: dict[str, Any] | None
    #: Summary of the engine config (max_model_len, tensor_parallel_size, quantization, ...).
    engine: dict[str, Any] | None
    #: vLLM's warning log lines during the case (vLLM logs some warnings once per process).
    warnings: list[str]
    seconds: float


#: Checks a batch of cases in one vLLM process; returns the results by case id (the type of the
#: ``vllm_check`` fixture).
VllmCheck = Callable[[Sequence["VllmCase"]], dict[str, "VllmResult"]]


class VllmCheckError(RuntimeError):
    """vllm_check.py itself failed (not a case: those are reported in the results)."""


def cache_root() -> Path:
    return venvs.cache_root()


def venv_dir(version: str = VLLM_VERSION) -> Path:
    return cache_root() / f"vllm-{version}"


def install_log(version: str = VLLM_VERSION) -> Path:
    """The install log: ``vllm-install.log`` for the current pin (the name first used for it)."""
    name = "vllm-install.log" if version == VLLM_VERSION else f"vllm-{version}-install.log"
    return cache_root() / name


_PROBE = "import vllm, sys; sys.exit(0 if vllm.__version__ == sys.argv[1] else 3)"


def environment(version: str = VLLM_VERSION) -> venvs.Venv:
    """The pinned vLLM's virtualenv, as :mod:`localcluster.venvs` installs it."""
    return venvs.Venv(
        directory=venv_dir(version),
        what=f"vllm {version}",
        log=install_log(version),
        steps=(venvs.pip_step(f"vllm=={version}"),),
        probe=venvs.python_probe(_PROBE, version),
        size_hint="about 9 GB",
        tag="vllm-env",
    )


def ensure_vllm_python(version: str = VLLM_VERSION) -> Path:
    """The Python of the pinned vLLM virtualenv, installing it first if needed."""
    try:
        return venvs.ensure(environment(version))
    except venvs.VenvError as exc:
        raise VllmCheckError(str(exc)) from exc


def run_vllm_check(
    python: Path, cases: Sequence[VllmCase], *, timeout: float = 600.0
) -> dict[str, VllmResult]:
    """Run vllm_check.py once for all cases; results by case id. Raises VllmCheckError."""
    ids = [case["id"] for case in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"case ids must be unique: {sorted(i for i in ids if ids.count(i) > 1)}")
    try:
        proc = subprocess.run(
            [str(python), str(CHECK_SCRIPT)],
            input=json.dumps(list(cases)),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **CHECK_ENV},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise VllmCheckError(f"vllm_check.py did not finish in {timeout:g} s") from exc
    tail = "\n".join(proc.stderr.splitlines()[-40:])
    if proc.returncode != 0:
        raise VllmCheckError(f"vllm_check.py exited {proc.returncode}:\n{tail}")
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise VllmCheckError(f"vllm_check.py printed no JSON ({exc}):\n{tail}") from exc
    if answer.get("vllm_version") != VLLM_VERSION:
        raise VllmCheckError(f"the check ran vllm {answer.get('vllm_version')}, not {VLLM_VERSION}")
    results: dict[str, VllmResult] = {result["id"]: result for result in answer["results"]}
    if sorted(results) != sorted(ids):
        raise VllmCheckError(f"vllm_check.py answered for {sorted(results)}, asked {sorted(ids)}")
    return results


def main() -> int:
    try:
        print(ensure_vllm_python())
    except VllmCheckError as exc:
        print(f"[vllm-env] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
