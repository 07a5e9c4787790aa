"""The pinned vLLM, in its own virtualenv, for contract tests against vLLM's own code.

``ensure_vllm_python()`` returns the Python of ``${GANTRY_CACHE:-~/.cache/gantry}/vllm-<ver>/``,
a virtualenv holding exactly ``vllm==<VLLM_VERSION>`` from PyPI (about 9 GB with its CUDA torch,
installed once per machine). A marker file is written only after a successful, verified install,
so an interrupted install is resumed on the next call. ``run_vllm_check()`` feeds cases to
``vllm_check.py`` in that virtualenv.

Command line: ``python -m tests.contract.vllm_env`` ensures the virtualenv and prints the path of
its Python.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NotRequired, TextIO, TypedDict

from gantry_runtime.versions import VLLM_VERSION

CHECK_SCRIPT = Path(__file__).with_name("vllm_check.py")
MARKER = ".gantry-complete"
#: Ends every install log: ``done <pip exit status>``.
DONE_PREFIX = "done "
#: How long to wait for another process's install (pip of 9 GB on a slow link).
WAIT_FOR_OTHER_INSTALL_S = 3600.0
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
    return Path(os.environ.get("GANTRY_CACHE") or Path.home() / ".cache" / "gantry")


def venv_dir(version: str = VLLM_VERSION) -> Path:
    return cache_root() / f"vllm-{version}"


def install_log(version: str = VLLM_VERSION) -> Path:
    """The install log: ``vllm-install.log`` for the current pin (the name first used for it)."""
    name = "vllm-install.log" if version == VLLM_VERSION else f"vllm-{version}-install.log"
    return cache_root() / name


def _say(message: str) -> None:
    print(f"[vllm-env] {message}", flush=True)


def _log_status(log: Path) -> int | None:
    """The pip exit status at the end of an install log, or None if it has not ended."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    last = lines[-1].strip() if lines else ""
    if last.startswith(DONE_PREFIX) and last[len(DONE_PREFIX) :].strip().lstrip("-").isdigit():
        return int(last[len(DONE_PREFIX) :])
    return None


def _installer_running(venv: Path) -> bool:
    """Whether some process is running pip from (or into) this virtualenv."""
    needle = str(venv).encode()
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"pip" in cmdline and b"install" in cmdline:
            return True
    return False


def _vllm_works(python: Path, version: str) -> bool:
    probe = "import vllm, sys; sys.exit(0 if vllm.__version__ == sys.argv[1] else 3)"
    try:
        result = subprocess.run(
            [str(python), "-c", probe, version],
            capture_output=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _write_marker(venv: Path, version: str) -> None:
    (venv / MARKER).write_text(json.dumps({"vllm": version}) + "\n", encoding="utf-8")


@contextmanager
def _install_lock(venv: Path) -> Iterator[None]:
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process installing into {venv}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_for_other_installer(venv: Path, log: Path) -> None:
    deadline = time.monotonic() + WAIT_FOR_OTHER_INSTALL_S
    _say(f"an install into {venv} is running (log {log}); waiting for it to finish")
    while _installer_running(venv):
        if time.monotonic() > deadline:
            raise VllmCheckError(f"the install into {venv} did not finish in time (log {log})")
        time.sleep(10)
    _say("the other install has finished")


def _stream(command: Sequence[str], log: TextIO) -> int:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    with subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            log.flush()
    return proc.returncode


def _install(venv: Path, version: str, log_path: Path) -> None:
    python = venv / "bin" / "python"
    _say(f"installing vllm {version} into {venv} (about 9 GB, once per machine); log {log_path}")
    with open(log_path, "w", encoding="utf-8") as log:
        status = 0
        if not python.exists():
            status = _stream([sys.executable, "-m", "venv", str(venv)], log)
        if status == 0:
            status = _stream(
                [str(python), "-m", "pip", "install", "--progress-bar", "off", f"vllm=={version}"],
                log,
            )
        log.write(f"{DONE_PREFIX}{status}\n")
    if status != 0:
        raise VllmCheckError(
            f"installing vllm {version} into {venv} failed (exit {status}); see {log_path}. "
            "Run again to resume, or delete the folder to start over"
        )


def ensure_vllm_python(version: str = VLLM_VERSION) -> Path:
    """The Python of the pinned vLLM virtualenv, installing it first if needed."""
    venv = venv_dir(version)
    python = venv / "bin" / "python"
    if (venv / MARKER).exists():
        return python
    log = install_log(version)
    with _install_lock(venv):
        if (venv / MARKER).exists():  # another process finished while we waited
            return python
        if _installer_running(venv):  # an install not started by this module
            _wait_for_other_installer(venv, log)
        if _log_status(log) == 0 and python.exists():
            _say(f"checking the existing install in {venv}")
            if _vllm_works(python, version):
                _write_marker(venv, version)
                return python
        _install(venv, version, log)
        if not _vllm_works(python, version):
            raise VllmCheckError(
                f"vllm {version} was installed into {venv} but `import vllm` fails or reports "
                "another version; delete the folder and run again"
            )
        _write_marker(venv, version)
    _say(f"vllm {version} is ready: {python}")
    return python


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
