"""A real Prometheus for tests, from Debian's package, on loopback only.

:func:`ensure_prometheus` and :func:`ensure_promtool` find the binaries, installing Debian's
``prometheus`` package with apt the first time (about 15 s). The package's own system service
is never left running or enabled: while apt installs, a temporary ``policy-rc.d`` forbids
starting it (where the machine has no policy of its own), and afterwards it is stopped and
disabled. Tests only ever run their own instance:

    with PrometheusServer(jobs=[ScrapeJob("runtime")], rule_files=[rules]) as prom:
        prom.set_targets("runtime", [Target("127.0.0.1:8000", {"pod": "a"})])
        prom.wait_for_targets("runtime", 1)
        prom.query('vllm:num_requests_running{pod="a"}')

:class:`PrometheusServer` writes a config whose scrape jobs read their targets from file_sd
JSON files (so a test adds and removes targets as pods come and go), listens on
``127.0.0.1:<free port>``, keeps its TSDB in a temporary directory, scrapes and evaluates rules
every second, and stops its process group on exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from localcluster import procs
from localcluster.cluster import free_ports, listening_sockets, loopback_host
from localcluster.log import sayer

PACKAGE = "prometheus"
SEARCH_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
INSTALL_LOCK = Path(tempfile.gettempdir()) / "gantry-prometheus-install.lock"
#: What Debian's package wires up to start its own instance (on 0.0.0.0:9090).
SYSTEM_PIDFILE = Path("/run/prometheus/prometheus.pid")
SYSTEMD_WANTS = Path("/etc/systemd/system/multi-user.target.wants/prometheus.service")

Log = Callable[[str], None]


_say = sayer("gantry-prometheus")


class PrometheusError(RuntimeError):
    """Prometheus could not be installed or started, or its API answered with an error."""


class QueryError(PrometheusError):
    """The HTTP API rejected a query (``errorType`` ``bad_data`` for a PromQL parse error)."""

    def __init__(self, expr: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error} (query: {expr})")
        self.expr = expr
        self.error_type = error_type
        self.error = error


# -- installation -------------------------------------------------------------------------------


def _find(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    for directory in SEARCH_DIRS:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_prometheus(log: Log = _say) -> Path:
    """The ``prometheus`` binary, installed from Debian's package if it is missing."""
    return _ensure("prometheus", log)


def ensure_promtool(log: Log = _say) -> Path:
    """The ``promtool`` binary (same package as ``prometheus``)."""
    return _ensure("promtool", log)


def _ensure(name: str, log: Log) -> Path:
    found = _find(name)
    if found is not None:
        return found
    INSTALL_LOCK.touch(exist_ok=True)
    with INSTALL_LOCK.open("r") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time; the others wait for it
        found = _find(name)
        if found is None:
            install_package(log)
            found = _find(name)
    if found is None:
        raise PrometheusError(f"{name} is still missing after installing Debian's {PACKAGE!r}")
    return found


def install_package(log: Log = _say) -> None:
    """``apt-get install prometheus`` without leaving Debian's service running or enabled."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise PrometheusError(
            "prometheus and promtool are not installed and there is no apt-get to install them: "
            "install Prometheus 2.x so that both are on PATH"
        )
    if os.geteuid() != 0:
        raise PrometheusError(
            "prometheus and promtool are not installed; as root run: apt-get update && "
            "apt-get install -y --no-install-recommends prometheus"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    with _no_service_start():
        for argv in (
            [apt, "update"],
            [apt, "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends",
             PACKAGE],
        ):  # fmt: skip
            log("running: " + " ".join(argv))
            result = subprocess.run(
                argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
            )
            if result.returncode != 0:
                raise PrometheusError(
                    f"{' '.join(argv)} failed with exit status {result.returncode}:\n"
                    f"{(result.stdout + result.stderr)[-3000:]}"
                )
    log(f"installed Debian's {PACKAGE} in {time.monotonic() - started:.1f}s")
    quiet_system_service(log)


@contextlib.contextmanager
def _no_service_start() -> Iterator[None]:
    """Forbid maintainer scripts to start the ``prometheus`` service while apt runs.

    ``invoke-rc.d`` and ``deb-systemd-invoke`` ask ``/usr/sbin/policy-rc.d`` first; exit 101
    means "not allowed". A machine that has its own policy (a container image usually denies
    everything) keeps it.
    """
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text(
        "#!/bin/sh\n# Temporary, written by Gantry's test harness while it installs Prometheus.\n"
        f'[ "$1" = "{PACKAGE}" ] && exit 101\nexit 0\n'
    )
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


def _run_quietly(argv: Sequence[str]) -> None:
    subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, check=False)


def _system_instance_pid() -> int | None:
    try:
        pid = int(SYSTEM_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def quiet_system_service(log: Log = _say) -> None:
    """Stop and disable the system instance that Debian's package sets up (0.0.0.0:9090)."""
    systemd_running = Path("/run/systemd/system").is_dir()
    systemctl = shutil.which("systemctl")
    if systemd_running and systemctl:
        _run_quietly([systemctl, "stop", f"{PACKAGE}.service"])
    elif _system_instance_pid() is not None:
        service = shutil.which("service")
        if service:
            _run_quietly([service, PACKAGE, "stop"])
    if systemctl:
        # Works without a running systemd too: it removes the wants/ symlink and, through
        # systemd-sysv-install, the /etc/rc?.d links of the SysV script.
        _run_quietly([systemctl, "disable", f"{PACKAGE}.service"])
    elif shutil.which("update-rc.d"):
        _run_quietly(["update-rc.d", PACKAGE, "disable"])
    pid = _system_instance_pid()
    if pid is not None:
        raise PrometheusError(
            f"Debian's prometheus service still runs (pid {pid}, listening on 0.0.0.0:9090); "
            "stop it with `service prometheus stop` and disable it"
        )
    if SYSTEMD_WANTS.exists():
        raise PrometheusError(f"could not disable Debian's prometheus service ({SYSTEMD_WANTS})")
    log("Debian's prometheus service is stopped and disabled; tests run their own instance")


# -- the server ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One scrape target: a loopback ``host:port`` and the target labels to attach."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"target {self.address!r} is not host:port")
        loopback_host(host.strip("[]"))


@dataclass(frozen=True)
class ScrapeJob:
    """A scrape job whose targets come from a file_sd file that :meth:`set_targets` rewrites."""

    name: str
    metrics_path: str = "/metrics"
    #: Keep the scraped ``namespace``/``pod`` labels on a clash with target labels, as a
    #: ServiceMonitor with ``honorLabels: true`` does.
    honor_labels: bool = False
    #: Prometheus ``metric_relabel_configs`` (snake_case keys), applied to scraped samples.
    metric_relabel_configs: Sequence[Mapping[str, Any]] = ()


#: Prometheus Operator relabelling keys (camelCase) and their Prometheus config names.
_RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "separator": "separator",
    "targetLabel": "target_label",
    "regex": "regex",
    "modulus": "modulus",
    "replacement": "replacement",
    "action": "action",
}


def relabel_config(operator_style: Mapping[str, Any]) -> dict[str, Any]:
    """A Prometheus Operator ``RelabelConfig`` (PodMonitor, ServiceMonitor) as Prometheus
    configuration, so tests scrape the way the monitors make Prometheus scrape."""
    return {_RELABEL_KEYS[key]: value for key, value in operator_style.items()}


def _format_seconds(value: float) -> str:
    return f"{round(value * 1000)}ms"


class PrometheusServer:
    """One Prometheus process with its config, rules and TSDB in ``state_dir``."""

    def __init__(
        self,
        *,
        jobs: Sequence[ScrapeJob] = (),
        rule_files: Sequence[Path] = (),
        scrape_interval: float = 1.0,
        evaluation_interval: float = 1.0,
        state_dir: Path | None = None,
        binary: Path | None = None,
        ready_timeout: float = 60.0,
        log: Log = _say,
    ) -> None:
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate scrape job names: {names}")
        self.jobs = {job.name: job for job in jobs}
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.ready_timeout = ready_timeout
        self._log = log
        self._binary = binary
        self._owns_state_dir = state_dir is None
        self._state_dir = state_dir
        self._process: procs.ManagedProcess | None = None
        self.port = 0
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise PrometheusError("the server has not been started")
        return self._state_dir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "prometheus.log"

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def config(self) -> dict[str, Any]:
        interval = _format_seconds(self.scrape_interval)
        scrape_configs: list[dict[str, Any]] = []
        for job in self.jobs.values():
            scrape: dict[str, Any] = {
                "job_name": job.name,
                "metrics_path": job.metrics_path,
                "honor_labels": job.honor_labels,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "file_sd_configs": [
                    {"files": [str(self._targets_file(job.name))], "refresh_interval": "1s"}
                ],
            }
            if job.metric_relabel_configs:
                scrape["metric_relabel_configs"] = [dict(r) for r in job.metric_relabel_configs]
            scrape_configs.append(scrape)
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": _format_seconds(self.evaluation_interval),
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": scrape_configs,
        }

    def start(self) -> PrometheusServer:
        if self._process is not None:
            raise PrometheusError("the server is already running")
        binary = self._binary or ensure_prometheus(self._log)
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="gantry-prometheus-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for job in self.jobs:
            self.set_targets(job, [])
        config_file = self.state_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        (self.port,) = free_ports(1)
        argv = [
            str(binary),
            f"--config.file={config_file}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.path={self.state_dir / 'data'}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=info",
        ]
        self._process = procs.spawn("prometheus", argv, self.log_file)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._log(f"Prometheus ready at {self.url} (state in {self.state_dir})")
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            process = self._process
            if process is None or not process.alive():
                code = process.exit_code() if process is not None else None
                raise PrometheusError(
                    f"prometheus exited with status {code}:\n{procs.log_tail(self.log_file)}"
                )
            with (
                contextlib.suppress(OSError),
                self._opener.open(self.url + "/-/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"prometheus was not ready within {self.ready_timeout:.0f}s:\n"
                    f"{procs.log_tail(self.log_file)}"
                )
            time.sleep(0.1)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace``; remove a temporary state dir."""
        process, self._process = self._process, None
        if process is not None:
            procs.stop_all([process], grace=grace)
        if self._owns_state_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None

    def listeners(self) -> list[tuple[str, str, int]]:
        """The TCP sockets the Prometheus process listens on, as (name, address, port)."""
        if self._process is None:
            return []
        return listening_sockets({self._process.pid: "prometheus"})

    # -- targets ----------------------------------------------------------------------------

    def _targets_file(self, job: str) -> Path:
        return self.state_dir / f"targets-{job}.json"

    def set_targets(self, job: str, targets: Sequence[Target]) -> None:
        """Replace the targets of ``job`` (Prometheus re-reads the file within a second)."""
        if job not in self.jobs:
            raise KeyError(f"no scrape job {job!r}; jobs: {sorted(self.jobs)}")
        groups = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
        path = self._targets_file(job)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(groups, indent=2, sort_keys=True))
        partial.replace(path)  # atomic: Prometheus never reads half a file

    def active_targets(self, job: str | None = None) -> list[dict[str, Any]]:
        data = self._get("/api/v1/targets", {"state": "active"})
        found: list[dict[str, Any]] = data["activeTargets"]
        if job is not None:
            found = [t for t in found if t["labels"].get("job") == job]
        return found

    def wait_for_targets(self, job: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``job`` has exactly ``count`` active targets, all scraped successfully."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.active_targets(job)
            if len(targets) == count and all(t["health"] == "up" for t in targets):
                return targets
            if time.monotonic() >= deadline:
                seen = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
                raise AssertionError(
                    f"job {job!r}: wanted {count} healthy targets within {timeout:.0f}s, "
                    f"have {seen}"
                )
            time.sleep(0.2)

    # -- HTTP API ---------------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, str] | None = None, expr: str = "") -> Any:
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with self._opener.open(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            # The API answers 400/422/503 with a JSON body that says what went wrong.
            try:
                body = json.load(error)
            except ValueError:
                raise PrometheusError(f"GET {url}: HTTP {error.code}") from error
        if body.get("status") != "success":
            raise QueryError(expr or path, str(body.get("errorType")), str(body.get("error")))
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the ``result`` list (vector: ``metric`` + ``value``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params, expr)
        return _as_list(data)

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        """A range query: the ``result`` list (matrix: ``metric`` + ``values``)."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
        data = self._get("/api/v1/query_range", params, expr)
        return _as_list(data)

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, with ``health`` (``ok``/``err``/``unknown``) and ``lastError``."""
        groups = self._get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return found


def _as_list(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    result = data["result"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": result}]
    return list(result)


def sample_values(result: Sequence[Mapping[str, Any]]) -> list[float]:
    """Every sample value of an instant or range query result, as floats (NaN included)."""
    values: list[float] = []
    for series in result:
        if "value" in series:
            values.append(float(series["value"][1]))
        values.extend(float(v) for _, v in series.get("values", ()))
    return values


def has_finite_sample(result: Sequence[Mapping[str, Any]]) -> bool:
    return any(math.isfinite(v) for v in sample_values(result))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m localcluster.prometheus``: install (if needed) and print both binaries."""
    del argv
    print(ensure_prometheus())
    print(ensure_promtool())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
