"""Start, recognise and stop the control plane's processes.

Every component runs in its own session (so its process group is its pid and a Ctrl-C at the
terminal does not reach it) with stdout and stderr in a log file. A :class:`ProcessRecord` is
what survives a detached ``up``: the pid plus the kernel's start time of that pid, so a later
``down`` never signals a recycled pid that now belongs to someone else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    log: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            argv=tuple(str(a) for a in data["argv"]),
            log=str(data["log"]),
        )


@dataclass
class ManagedProcess:
    record: ProcessRecord
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def pid(self) -> int:
        return self.record.pid

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return record_alive(self.record)

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(Path(self.record.log), lines)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a pid, or None when there is no such pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is parenthesised and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def record_alive(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (same pid *and* same start time, not a zombie)."""
    stat = _stat(record.pid)
    return stat is not None and stat[1] == record.start_ticks and stat[0] not in ("Z", "X")


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _death_signal_setter() -> Callable[[], None]:
    """A function for between fork and exec: the kernel SIGKILLs the child if its parent dies.

    libc is resolved here, in the parent, so the forked child only makes the system call.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return set_death_signal


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = True,
) -> ManagedProcess:
    """Start ``argv`` in a new session, output appended to ``log``.

    ``die_with_parent`` makes the kernel kill the process if the thread that started it dies
    (a SIGKILLed pytest, say), so nothing is left behind even when no teardown runs. A detached
    cluster (``python -m localcluster up``) turns it off.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_death_signal_setter() if die_with_parent else None,
        )
    stat = _stat(popen.pid)
    start_ticks = stat[1] if stat is not None else 0
    record = ProcessRecord(name, popen.pid, start_ticks, tuple(argv), str(log))
    return ManagedProcess(record, popen)


def _signal_group(process: ManagedProcess, sig: signal.Signals) -> None:
    if not process.alive():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # The process leads its own session, so its group id is its pid.
        os.killpg(process.pid, sig)


def stop_all(
    processes: Sequence[ManagedProcess],
    *,
    grace: float = 10.0,
    on_kill: Callable[[ManagedProcess], None] | None = None,
) -> None:
    """SIGTERM every process group at once, wait up to ``grace`` seconds, then SIGKILL."""
    pending = [p for p in processes if p.alive()]
    for process in pending:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if p.alive()]
        if pending:
            time.sleep(0.05)
    for process in pending:
        if on_kill is not None:
            on_kill(process)
        _signal_group(process, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if p.alive()]
        if pending:
            time.sleep(0.05)
    if pending:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in pending)
        raise RuntimeError(f"processes survived SIGKILL: {names}")
    for process in processes:
        if process.popen is not None:
            process.popen.wait()
