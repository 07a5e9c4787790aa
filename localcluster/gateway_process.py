"""``gantry-gateway`` as a real process against the local cluster (tests, benchmark)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from localcluster.cluster import free_ports
from localcluster.polling import wait_for

#: Straight to loopback, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class GatewayProcess:
    """Start and stop a gateway on free loopback ports; its log (stderr) and audit lines
    (``--audit-log``) go to files."""

    def __init__(
        self, kubeconfig: Path, state_dir: Path, *, extra_args: Sequence[str] = ()
    ) -> None:
        self.kubeconfig = kubeconfig
        self.state_dir = state_dir
        self.extra_args = tuple(extra_args)
        self.log_path = state_dir / "gateway.log"
        self.audit_path = state_dir / "audit.jsonl"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.port = self.metrics_port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> GatewayProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port, self.metrics_port = free_ports(2)
        argv = [
            sys.executable,
            "-m",
            "gantry_gateway",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--metrics-port={self.metrics_port}",
            f"--kubeconfig={self.kubeconfig}",
            f"--audit-log={self.audit_path}",
            *self.extra_args,
        ]
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._ready, 60, f"gateway did not become ready; see {self.log_path}")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"gateway exited with {self.process.returncode}: {self.log()}")
        try:
            with _DIRECT.open(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def log(self, tail: int | None = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if tail is None else text[-tail:]

    def metrics(self) -> str:
        with _DIRECT.open(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())
