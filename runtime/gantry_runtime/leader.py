"""A multi-node worker's wait for its leader, before vLLM (or the simulator) starts.

A worker pod of a LeaderWorkerSet group (``LWS_WORKER_INDEX`` > 0) can start before its leader
is reachable: the leader pod may still be scheduled, pulling its image or verifying weights, and
its DNS name (``LWS_LEADER_ADDRESS``, published by the group's headless Service) may not resolve
yet. vLLM's headless workers then fail or hang with little to say why, so the runtime first
waits, with a bound, until the name resolves and the port the workers connect to (the
torch.distributed store or the data-parallel handshake) accepts a TCP connection. It logs what it
waits for about every ``interval`` seconds and the outcome; on timeout it raises
:class:`LeaderTimeoutError` with what to check.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

#: Seconds between the log lines of a wait.
LOG_INTERVAL_SECONDS = 10.0
#: Seconds between two attempts.
POLL_SECONDS = 1.0
#: Seconds one TCP connect may take.
CONNECT_TIMEOUT_SECONDS = 3.0


class LeaderTimeoutError(Exception):
    """The leader did not answer in time; the message says what to check."""


def _attempt(address: str, port: int, connect_timeout: float) -> str | None:
    """None when ``address:port`` accepts a TCP connection, else what stood in the way."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"{address} does not resolve ({exc})"
    problems = []
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(connect_timeout)
                sock.connect(sockaddr)
            return None
        except OSError as exc:
            problems.append(f"{sockaddr[0]}:{port}: {exc.strerror or exc}")
    return f"{address} resolves but no address accepts TCP port {port} ({'; '.join(problems)})"


def wait_for_leader(
    address: str,
    port: int,
    *,
    timeout: float,
    log: Callable[[str], None],
    interval: float = LOG_INTERVAL_SECONDS,
    poll: float = POLL_SECONDS,
) -> float:
    """Block until ``address`` resolves and ``port`` there accepts a TCP connection; return the
    seconds it took. Raises LeaderTimeoutError after ``timeout`` seconds."""
    started = time.monotonic()
    deadline = started + timeout
    log(
        f"Waiting up to {timeout:g} s for the leader: {address} must resolve and accept TCP "
        f"port {port}"
    )
    next_log = started + interval
    while True:
        problem = _attempt(address, port, min(CONNECT_TIMEOUT_SECONDS, max(timeout, 0.1)))
        now = time.monotonic()
        if problem is None:
            waited = now - started
            log(f"The leader answered at {address}:{port} after {waited:.1f} s")
            return waited
        if now >= deadline:
            raise LeaderTimeoutError(
                f"The leader did not answer within {timeout:g} s: {problem}. Check that the "
                "group's leader pod (worker index 0) is running and its log (it may still be "
                "pulling its image or verifying weights), that the LeaderWorkerSet's headless "
                f"Service resolves {address}, and that no NetworkPolicy blocks TCP port {port} "
                "between the group's pods"
            )
        if now >= next_log:
            log(f"Still waiting for the leader after {now - started:.0f} s: {problem}")
            next_log = now + interval
        time.sleep(max(0.0, min(poll, deadline - now)))
