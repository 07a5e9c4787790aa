"""The operator as a real process (``gantry-operator``) against the local cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from localcluster.cluster import free_ports
from localcluster.polling import wait_for

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "deploy" / "crds" / "gantry.dev_modeldeployments.yaml"


class OperatorProcess:
    """Start, kill (SIGKILL, no clean shutdown) and restart the operator; logs go to a file."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ):
        self.kubeconfig = kubeconfig
        self.env = dict(env or {})
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.health_url = ""
        self.metrics_url = ""
        self.argv: list[str] = []

    def start(self) -> OperatorProcess:
        port, metrics_port = free_ports(2)
        self.health_url = f"http://127.0.0.1:{port}/healthz"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.argv = [
            "--all-namespaces",
            f"--liveness={self.health_url}",
            f"--metrics-address=127.0.0.1:{metrics_port}",
            *self.extra_args,
        ]
        self._launch({**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig)})
        return self

    def _launch(self, env: Mapping[str, str]) -> None:
        """Run ``gantry-operator`` with :attr:`argv` and wait until its liveness probe answers."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gantry_operator.main", *self.argv],
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._healthy, 60, f"operator did not report healthy; see {self.log_path}")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}: {self.log()}")
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, like a node failure."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._close()

    def _close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None

    def log(self, tail: int | None = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if tail is None else text[-tail:]
