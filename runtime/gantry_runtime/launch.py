"""Run vLLM as a child process: pass the environment through, forward SIGTERM/SIGINT, escalate.

The runtime stays the container's main process (PID 1 in a pod) so that it can forward the
kubelet's SIGTERM to vLLM, which then drains in-flight requests for ``--shutdown-timeout``
seconds. If vLLM has not exited ``kill_grace`` seconds after that, its whole process group
(the API server and its engine/worker processes) gets SIGKILL. The runtime exits with vLLM's
exit status, or 128 + the signal number when vLLM was killed by a signal (as a shell reports it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

#: Seconds past the drain timeout before vLLM is killed. vLLM stops its engine and workers
#: after draining; with the CPU build that took ~20 s (tests/integration/test_real_vllm.py),
#: so 25 s, inside the pod's terminationGracePeriodSeconds (drain timeout + 30).
KILL_GRACE_SECONDS = 25.0
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: How often the wait loop wakes to check the kill deadline.
_POLL_SECONDS = 0.2


def _stderr(message: str) -> None:
    print(f"gantry-runtime: {message}", file=sys.stderr, flush=True)


def exit_status(returncode: int) -> int:
    """A ``Popen.returncode`` as a process exit status: a signal N (returncode -N) is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def run_child(
    argv: Sequence[str],
    *,
    shutdown_timeout: float,
    kill_grace: float = KILL_GRACE_SECONDS,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = _stderr,
) -> int:
    """Run ``argv`` until it exits; return its exit status (see :func:`exit_status`).

    Must be called from the main thread (it installs signal handlers, restored on return).
    ``env`` None passes this process's environment through unchanged. Raises OSError (e.g.
    FileNotFoundError) when the program cannot be started.
    """
    received: list[int] = []
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        # Only record and forward here; logging happens in the wait loop (not reentrant-safe).
        received.append(signum)
        if child is not None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        # Own process group: a terminal's Ctrl-C reaches vLLM once (through us), and SIGKILL
        # can take the worker processes along.
        child = subprocess.Popen(
            list(argv), env=None if env is None else dict(env), process_group=0
        )
        for signum in received:  # arrived while the child was being started
            child.send_signal(signum)
        returncode, killed = _wait(child, received, shutdown_timeout, kill_grace, log)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # vLLM's engine and worker processes share its group; orphans would hold GPU memory.
    if _killpg(child.pid) and not killed:
        log(f"Killed processes left in vLLM's process group {child.pid}")
    return exit_status(returncode)


def _wait(
    child: subprocess.Popen[bytes],
    received: list[int],
    shutdown_timeout: float,
    kill_grace: float,
    log: Callable[[str], None],
) -> tuple[int, bool]:
    """Wait for the child; return its returncode and whether it had to be killed."""
    deadline: float | None = None
    logged = 0
    while True:
        try:
            return child.wait(timeout=_POLL_SECONDS), False
        except subprocess.TimeoutExpired:
            pass
        while logged < len(received):
            name = signal.Signals(received[logged]).name
            if deadline is None:
                limit = shutdown_timeout + kill_grace
                deadline = time.monotonic() + limit
                log(
                    f"Forwarded {name} to vLLM (pid {child.pid}); it drains requests for up to "
                    f"{shutdown_timeout:g} s and is killed after {limit:g} s"
                )
            else:
                log(f"Forwarded {name} to vLLM (pid {child.pid}) again")
            logged += 1
        if deadline is not None and time.monotonic() >= deadline:
            log(f"vLLM (pid {child.pid}) did not exit in time; sent SIGKILL to its process group")
            _killpg(child.pid)
            return child.wait(), True


def _killpg(pgid: int) -> bool:
    """SIGKILL a process group; False if it had no process left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True
