"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake kubelets), started from the binaries :mod:`localcluster.build`
makes; on request LeaderWorkerSet's controller manager too (:mod:`localcluster.lws`).

Like envtest, the apiserver serves HTTPS on 127.0.0.1 with RBAC and Node authorization and an
admin client certificate (``O=system:masters``); unlike envtest the controller-manager, the
scheduler and kwok run too, so Deployments become ReplicaSets become Pods that get scheduled to
fake GPU nodes and reported Running with an IP from their node's ``spec.podCIDR``.

Every address any component binds or is told to use is in 127.0.0.0/8 (checked by
:func:`loopback_url` / :func:`loopback_host` as each one is built) and every port is picked free
at start time, so several clusters can run side by side.

Usage::

    with LocalCluster() as cluster:          # fresh temporary state dir, removed afterwards
        cluster.kubectl("get", "nodes")

    with LocalCluster(leaderworkerset=True) as cluster:   # + the LeaderWorkerSet API
        ...

    cluster = LocalCluster(state_dir, detach=True).start()   # keeps running after we exit
    LocalCluster.attach(state_dir).stop(remove_state=True)   # later, from another process
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from localcluster import build, lws, pki, procs
from localcluster.polling import wait_for

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
#: Covers the default fleet's ``spec.podCIDR`` values (see :mod:`localcluster.nodes`); a fleet
#: on a routed pod network has its own (:mod:`localcluster.routed`): with
#: ``--allocate-node-cidrs=false`` the controller manager allocates none from this.
CLUSTER_CIDR = "127.1.0.0/16"
#: Pod IPs for a managed node that has no ``spec.podCIDR`` (none of ours).
KWOK_FALLBACK_CIDR = "127.3.0.0/16"
KWOK_NODE_IP = "127.0.0.1"
#: Nodes kwok plays the kubelet for carry this annotation.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
DEFAULT_FEATURE_GATES: Mapping[str, bool] = {"ImageVolume": True}
#: An audit policy that records who did what to which resource (no bodies), once per request.
METADATA_AUDIT_POLICY: Mapping[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}
AUDIT_POLICY_FILE = "audit-policy.yaml"
STATE_FILE = "cluster.json"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
#: The extra component of a cluster started with ``leaderworkerset=True``.
LWS_COMPONENT = "lws-controller-manager"
#: The field manager of what the cluster itself installs (LWS's CRDs and webhooks).
FIELD_MANAGER = "localcluster"


class ClusterError(RuntimeError):
    """The cluster could not be started (the message carries the failing component's log)."""


class ClusterAlreadyRunningError(ClusterError):
    pass


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl run; unlike its base class, the message includes kubectl's stderr."""

    def __str__(self) -> str:
        command = " ".join(str(a) for a in self.cmd)
        return f"`{command}` exited with {self.returncode}:\n{str(self.stderr).strip()}"


def loopback_host(host: str) -> str:
    """Return ``host`` if it is a loopback address (or ``localhost``), else raise."""
    if host == "localhost":
        return host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing non-loopback address {host!r}: the local cluster is 127/8 only")
    return host


def loopback_url(url: str) -> str:
    """Return ``url`` if its host is loopback, else raise."""
    host = urllib.parse.urlsplit(url).hostname
    if host is None:
        raise ValueError(f"URL without a host: {url!r}")
    loopback_host(host)
    return url


def loopback_cidr(cidr: str) -> str:
    network = ipaddress.ip_network(cidr)
    if not network.is_loopback:
        raise ValueError(f"refusing non-loopback CIDR {cidr!r}")
    return cidr


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now (all held open until all are picked)."""
    loopback_host(host)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(*free_ports(6))


def _b64(file: Path) -> str:
    return base64.b64encode(file.read_bytes()).decode()


def _write_kubeconfig(path: Path, server: str, ca: Path, user: str, creds: dict[str, str]) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "gantry-local",
                "cluster": {"server": loopback_url(server), "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [
            {"name": "gantry-local", "context": {"cluster": "gantry-local", "user": user}}
        ],
        "current-context": "gantry-local",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def _cert_creds(pair: pki.KeyPair) -> dict[str, str]:
    return {"client-certificate-data": _b64(pair.cert), "client-key-data": _b64(pair.key)}


def _gates(gates: Mapping[str, bool]) -> list[str]:
    if not gates:
        return []
    return ["--feature-gates=" + ",".join(f"{k}={str(v).lower()}" for k, v in gates.items())]


def _no_proxy_opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _http_ok(
    opener: urllib.request.OpenerDirector, url: str, timeout: float = 2.0
) -> tuple[bool, str]:
    """(status is 200, short description of the answer) for a GET of ``url``."""
    try:
        with opener.open(loopback_url(url), timeout=timeout) as response:
            body = response.read(2048).decode(errors="replace")
            return response.status == 200, f"HTTP {response.status}: {body.strip()[:200]}"
    except urllib.error.HTTPError as error:
        with error:  # an HTTPError holds the open response
            body = error.read(2048).decode(errors="replace")
        return False, f"HTTP {error.code}: {body.strip()[:300]}"
    except (OSError, ssl.SSLError) as error:
        return False, f"{type(error).__name__}: {error}"


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    ``state_dir``: where certificates, kubeconfigs, etcd data and logs go. ``None`` makes a
    temporary directory that :meth:`stop` removes; a given directory is kept unless
    ``stop(remove_state=True)``.

    ``detach``: the processes outlive this Python process (no parent-death signal, and
    ``__exit__`` leaves them running); :meth:`attach` finds them again from ``state_dir``.

    ``audit_policy``: an audit ``Policy`` (e.g. :data:`METADATA_AUDIT_POLICY`); the apiserver
    then writes JSON audit events, one a line, to :attr:`audit_log`. None: no audit log.

    ``leaderworkerset``: also run LeaderWorkerSet's controller manager (see
    :mod:`localcluster.lws`; build it with ``python -m localcluster build``): :meth:`start`
    returns once its CRDs are Established and its webhooks answer the apiserver. Off by
    default: the cluster then has no LeaderWorkerSet API at all.

    After :meth:`start`: ``kubeconfig`` (admin, ``system:masters``), ``server`` (the
    apiserver's https URL), ``ports``, ``processes``, ``startup_seconds``.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        detach: bool = False,
        startup_timeout: float = 120.0,
        feature_gates: Mapping[str, bool] = DEFAULT_FEATURE_GATES,
        log: Callable[[str], None] | None = None,
        audit_policy: Mapping[str, Any] | None = None,
        leaderworkerset: bool = False,
    ) -> None:
        self._temporary = state_dir is None
        self.state_dir = Path(state_dir) if state_dir is not None else Path()
        self.detach = detach
        self.startup_timeout = startup_timeout
        self.feature_gates = dict(feature_gates)
        self.audit_policy = dict(audit_policy) if audit_policy is not None else None
        self.leaderworkerset = leaderworkerset
        #: The LWS manager's webhook, metrics and health ports (with ``leaderworkerset``).
        self.lws_ports: lws.ManagerPorts | None = None
        self._log = log or (lambda _message: None)
        self.processes: list[procs.ManagedProcess] = []
        self.ports: Ports | None = None
        self.startup_seconds: float | None = None
        self._pki: pki.Pki | None = None

    # -- paths ---------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def server(self) -> str:
        if self.ports is None:
            raise ClusterError("the cluster has not been started")
        return loopback_url(f"https://127.0.0.1:{self.ports.apiserver}")

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def audit_log(self) -> Path:
        """The apiserver's audit log (written only with an ``audit_policy``)."""
        return self.logs_dir / "audit.log"

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.detach or exc is not None:
            self.stop()

    def start(self) -> LocalCluster:
        """Start every component and wait until the cluster accepts pods. Returns ``self``."""
        started = time.monotonic()
        self._prepare_state_dir()
        try:
            self._start()
        except BaseException:
            # Ctrl-C, a timeout or a crashed component: leave nothing running.
            self.stop(remove_state=False)
            raise
        self.startup_seconds = time.monotonic() - started
        self._save_state()
        self._log(f"cluster ready in {self.startup_seconds:.1f}s at {self.server}")
        return self

    def stop(self, *, remove_state: bool | None = None, grace: float = 10.0) -> None:
        """Stop every process this cluster started (SIGTERM, then SIGKILL after ``grace``).

        ``remove_state`` defaults to removing temporary state dirs only.
        """
        if self.processes:
            self._log("stopping " + ", ".join(p.name for p in self.processes))
        procs.stop_all(
            list(reversed(self.processes)),
            grace=grace,
            on_kill=lambda p: self._log(f"{p.name} ignored SIGTERM for {grace:.0f}s: killing it"),
        )
        self.processes = []
        if remove_state is None:
            remove_state = self._temporary
        state = self.state_dir / STATE_FILE
        if remove_state:
            if self.state_dir != Path() and self.state_dir.exists():
                shutil.rmtree(self.state_dir, ignore_errors=True)
        elif state.exists():
            state.unlink()

    @classmethod
    def attach(cls, state_dir: Path | str) -> LocalCluster:
        """The cluster recorded in ``state_dir`` by a (detached) :meth:`start`.

        Raises :class:`FileNotFoundError` when no cluster was recorded there.
        """
        directory = Path(state_dir)
        data = json.loads((directory / STATE_FILE).read_text())
        cluster = cls(
            directory,
            detach=bool(data.get("detach", True)),
            leaderworkerset=bool(data.get("leaderworkerset", False)),
        )
        cluster.ports = Ports(**data["ports"])
        if data.get("lws_ports"):
            cluster.lws_ports = lws.ManagerPorts(**data["lws_ports"])
        cluster.startup_seconds = data.get("startup_seconds")
        cluster.processes = [
            procs.ManagedProcess(procs.ProcessRecord.from_json(p)) for p in data["processes"]
        ]
        return cluster

    def running(self) -> dict[str, bool]:
        """Component name -> whether its process is alive."""
        return {p.name: p.alive() for p in self.processes}

    # -- clients -------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """``os.environ`` with KUBECONFIG pointing here and kubectl/helm first on PATH."""
        path_dirs = [str(build.binary("kubectl").parent), str(build.binary("helm").parent)]
        path = os.pathsep.join([*path_dirs, os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster as the admin user.

        With ``check`` a non-zero exit raises :class:`KubectlError` (a
        :class:`subprocess.CalledProcessError` whose message includes kubectl's stderr).
        """
        argv = [str(build.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, ["kubectl", *args], result.stdout, result.stderr)
        return result

    def kubectl_json(self, *args: str) -> Any:
        """``kubectl <args> -o json`` parsed."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        """Wait until every named CRD is Established. (``kubectl wait`` fails at once while a
        large CRD has no status yet, so this polls.)"""

        def established(name: str) -> bool:
            crd = self.kubectl_json("get", f"crd/{name}")
            conditions = crd.get("status", {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        for name in crds:
            wait_for(functools.partial(established, name), timeout, f"{name} not Established")

    def token_kubeconfig(self, token: str, path: Path, user: str = "token-user") -> Path:
        """Write a kubeconfig at ``path`` that authenticates with ``token`` only.

        (Adding ``--token`` to the admin kubeconfig would not do: the client certificate is
        still presented and wins.)
        """
        _write_kubeconfig(path, self.server, self.pki_dir / "ca.crt", user, {"token": token})
        return path

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the apiserver against the cluster CA and presents the admin certificate."""
        context = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        context.load_cert_chain(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        return context

    def api_get(self, path: str) -> tuple[bool, str]:
        """(HTTP 200, description) of an authenticated GET of ``path`` on the apiserver."""
        return _http_ok(_no_proxy_opener(self.ssl_context()), self.server + path)

    def api_post(self, path: str, body: Mapping[str, Any]) -> tuple[bool, str]:
        """(HTTP 200/201, description) of an authenticated POST of ``body`` (JSON) to ``path``."""
        request = urllib.request.Request(
            loopback_url(self.server + path),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        opener = _no_proxy_opener(self.ssl_context())
        try:
            with opener.open(request, timeout=10) as response:
                return response.status in (200, 201), f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            with error:
                text = error.read(2048).decode(errors="replace")
            return False, f"HTTP {error.code}: {text.strip()[:300]}"
        except (OSError, ssl.SSLError) as error:
            return False, f"{type(error).__name__}: {error}"

    def listeners(self) -> list[tuple[str, str, int]]:
        """Every TCP socket our processes listen on, as (component, address, port)."""
        return listening_sockets({p.pid: p.name for p in self.processes})

    def assert_loopback_only(self) -> None:
        outside = [entry for entry in self.listeners() if not _is_loopback_ip(entry[1])]
        if outside:
            raise AssertionError(f"components listen outside 127.0.0.0/8: {outside}")

    # -- internals -----------------------------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        if self._temporary:
            self.state_dir = Path(tempfile.mkdtemp(prefix="gantry-cluster-"))
            return
        state = self.state_dir / STATE_FILE
        if state.exists():
            previous = LocalCluster.attach(self.state_dir)
            alive = [name for name, up in previous.running().items() if up]
            if alive:
                raise ClusterAlreadyRunningError(
                    f"a cluster already runs from {self.state_dir} ({', '.join(alive)})"
                )
            previous.stop(remove_state=False)  # stops nothing: only forgets the stale record
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            if not looks_like_state_dir(self.state_dir):
                raise ClusterError(
                    f"refusing to reuse {self.state_dir}: it holds files that are not a local "
                    "cluster's"
                )
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def _save_state(self) -> None:
        assert self.ports is not None
        data = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "detach": self.detach,
            "startup_seconds": self.startup_seconds,
            "ports": asdict(self.ports),
            "leaderworkerset": self.leaderworkerset,
            "lws_ports": asdict(self.lws_ports) if self.lws_ports is not None else None,
            "processes": [p.record.to_json() for p in self.processes],
        }
        path = self.state_dir / STATE_FILE
        path.write_text(json.dumps(data, indent=2) + "\n")

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        child_env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        child_env.update(env or {})
        process = procs.spawn(
            name,
            argv,
            self.logs_dir / f"{name}.log",
            env=child_env,
            die_with_parent=not self.detach,
        )
        self.processes.append(process)
        # Record pids as soon as they exist, so `down` finds a half-started detached cluster.
        self._save_partial_state()

    def _save_partial_state(self) -> None:
        if self.ports is not None:
            self._save_state()

    def _start(self) -> None:
        wanted = [*build.CLUSTER_COMPONENTS, *([build.LWS] if self.leaderworkerset else [])]
        for component in wanted:
            if not component.built():
                raise ClusterError(
                    f"{component.name} {component.version} is not built: run "
                    "`python -m localcluster build` (or build.ensure_built())"
                )
        phase = time.monotonic()
        self._pki = pki.generate(self.pki_dir)
        self.ports = Ports.pick()
        self._write_kubeconfigs()
        self._log(f"certificates and kubeconfigs written ({time.monotonic() - phase:.1f}s)")

        phase = time.monotonic()
        self._spawn("etcd", self._etcd_args())
        self._spawn("kube-apiserver", self._apiserver_args())
        self._wait("kube-apiserver /readyz", lambda: self.api_get("/readyz"))
        self._log(f"etcd and kube-apiserver ready ({time.monotonic() - phase:.1f}s)")

        phase = time.monotonic()
        kwok_home = self.state_dir / "kwok-home"
        kwok_home.mkdir(exist_ok=True)
        self._spawn("kube-controller-manager", self._controller_manager_args())
        self._spawn("kube-scheduler", self._scheduler_args())
        # HOME is redirected so a developer's ~/.kwok/kwok.yaml cannot change the fake kubelet.
        self._spawn("kwok", self._kwok_args(), env={"HOME": str(kwok_home)})
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # self-signed serving certs, loopback only
        opener = _no_proxy_opener(insecure)
        assert self.ports is not None
        ports = self.ports
        self._wait(
            "kube-controller-manager /healthz",
            lambda: _http_ok(opener, f"https://127.0.0.1:{ports.controller_manager}/healthz"),
        )
        self._wait(
            "kube-scheduler /healthz",
            lambda: _http_ok(opener, f"https://127.0.0.1:{ports.scheduler}/healthz"),
        )
        self._wait(
            "kwok /healthz", lambda: _http_ok(opener, f"http://127.0.0.1:{ports.kwok}/healthz")
        )
        self._wait(
            "the default service account",
            lambda: self.api_get("/api/v1/namespaces/default/serviceaccounts/default"),
        )
        self._log(f"controllers, scheduler and kwok ready ({time.monotonic() - phase:.1f}s)")
        if self.leaderworkerset:
            self._start_lws()

    def _start_lws(self) -> None:
        """LWS's CRDs, its manager as a process, its webhooks on 127.0.0.1 (module doc of
        :mod:`localcluster.lws`); returns once a dry-run LeaderWorkerSet passes the webhooks."""
        assert self._pki is not None
        phase = time.monotonic()
        config_dir = build.LWS.directory / "config"
        self.kubectl(
            "apply", "--server-side", f"--field-manager={FIELD_MANAGER}",
            *(f"--filename={path}" for path in lws.crd_files(config_dir)),
        )  # fmt: skip
        self.wait_established(*lws.CRD_NAMES, timeout=self.startup_timeout)
        certs = pki.generate_lws(self.pki_dir, self._pki.ca)
        kubeconfig = self.state_dir / "kubeconfigs" / f"{LWS_COMPONENT}.yaml"
        _write_kubeconfig(
            kubeconfig, self.server, self._pki.ca.cert, LWS_COMPONENT, _cert_creds(certs.client)
        )
        host = loopback_host("127.0.0.1")
        ports = self.lws_ports = lws.ManagerPorts(*free_ports(3, host))
        config = self.state_dir / "lws" / "config.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(lws.manager_configuration(ports, certs.webhook_dir, host)))
        self._spawn(
            LWS_COMPONENT,
            [
                str(build.LWS.path(build.LWS.binaries[0])),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                "--zap-devel=false",  # JSON lines at info level, like a deployed manager
                "--zap-time-encoding=iso8601",
            ],
        )
        webhooks = lws.webhook_configurations(
            config_dir / "webhook",
            loopback_url(f"https://{host}:{ports.webhook}"),
            self._pki.ca.cert.read_bytes(),
        )
        self.kubectl(
            "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": webhooks}),
        )  # fmt: skip
        opener = _no_proxy_opener(None)
        self._wait(
            f"{LWS_COMPONENT} /healthz",
            lambda: _http_ok(opener, f"http://{host}:{ports.health}/healthz"),
        )
        probe = lws.dry_run_object()
        path = (
            f"/apis/{lws.API_VERSION}/namespaces/{probe['metadata']['namespace']}"
            "/leaderworkersets?dryRun=All"
        )
        self._wait("the LWS webhooks", lambda: self.api_post(path, probe))
        self._log(f"LeaderWorkerSet {build.LWS.version} ready ({time.monotonic() - phase:.1f}s)")

    def _wait(self, what: str, check: Callable[[], tuple[bool, str]]) -> None:
        """Poll ``check`` until it passes; fail fast if a component exits meanwhile."""
        deadline = time.monotonic() + self.startup_timeout
        last = "not checked yet"
        interval = 0.05
        while True:
            for process in self.processes:
                if not process.alive():
                    raise ClusterError(
                        f"{process.name} exited with code {process.exit_code()} while waiting "
                        f"for {what}; last lines of {process.record.log}:\n{process.log_tail()}"
                    )
            ok, last = check()
            if ok:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {p.name} ({p.record.log}):\n{p.log_tail(15)}" for p in self.processes
                )
                raise ClusterError(
                    f"timed out after {self.startup_timeout:.0f}s waiting for {what} "
                    f"(last answer: {last})\n{tails}"
                )
            time.sleep(interval)
            interval = min(interval * 1.5, 0.5)

    def _write_kubeconfigs(self) -> None:
        assert self._pki is not None
        p = self._pki
        _write_kubeconfig(
            self.kubeconfig, self.server, p.ca.cert, "gantry-admin", _cert_creds(p.admin)
        )
        directory = self.state_dir / "kubeconfigs"
        for name, pair in (
            ("kube-controller-manager", p.controller_manager),
            ("kube-scheduler", p.scheduler),
            ("kwok", p.kwok),
        ):
            _write_kubeconfig(
                directory / f"{name}.yaml", self.server, p.ca.cert, name, _cert_creds(pair)
            )

    def _component_kubeconfig(self, name: str) -> str:
        return str(self.state_dir / "kubeconfigs" / f"{name}.yaml")

    def _etcd_args(self) -> list[str]:
        assert self.ports is not None
        client = loopback_url(f"http://127.0.0.1:{self.ports.etcd_client}")
        peer = loopback_url(f"http://127.0.0.1:{self.ports.etcd_peer}")
        return [
            str(build.binary("etcd")),
            "--name=gantry",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=gantry={peer}",
            "--initial-cluster-state=new",
            # Throwaway data: durability buys nothing and fsync dominates on slow disks.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        assert self.ports is not None
        assert self._pki is not None
        p = self._pki
        return [
            str(build.binary("kube-apiserver")),
            f"--etcd-servers={loopback_url(f'http://127.0.0.1:{self.ports.etcd_client}')}",
            f"--bind-address={loopback_host('127.0.0.1')}",
            f"--advertise-address={loopback_host('127.0.0.1')}",
            f"--secure-port={self.ports.apiserver}",
            f"--cert-dir={self.state_dir / 'certs' / 'kube-apiserver'}",
            f"--tls-cert-file={p.serving.cert}",
            f"--tls-private-key-file={p.serving.key}",
            f"--client-ca-file={p.ca.cert}",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={p.service_account_pub}",
            f"--service-account-signing-key-file={p.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # The `kubernetes` Service would get 127.0.0.1 as an endpoint, which the API rejects
            # (endpoints may not be loopback); nothing in-cluster needs to reach the apiserver.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            *_gates(self.feature_gates),
            *self._audit_args(),
        ]

    def _audit_args(self) -> list[str]:
        if self.audit_policy is None:
            return []
        policy = self.state_dir / AUDIT_POLICY_FILE
        policy.write_text(yaml.safe_dump(self.audit_policy, sort_keys=False))
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",  # written as requests finish, not batched
        ]

    def _controller_manager_args(self) -> list[str]:
        assert self.ports is not None
        assert self._pki is not None
        p = self._pki
        return [
            str(build.binary("kube-controller-manager")),
            f"--kubeconfig={self._component_kubeconfig('kube-controller-manager')}",
            f"--bind-address={loopback_host('127.0.0.1')}",
            f"--secure-port={self.ports.controller_manager}",
            f"--cert-dir={self.state_dir / 'certs' / 'kube-controller-manager'}",
            "--leader-elect=false",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.service_account_key}",
            f"--root-ca-file={p.ca.cert}",
            f"--cluster-signing-cert-file={p.ca.cert}",
            f"--cluster-signing-key-file={p.ca.key}",
            "--allocate-node-cidrs=false",  # fake nodes are created with their podCIDR
            f"--cluster-cidr={loopback_cidr(CLUSTER_CIDR)}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--configure-cloud-routes=false",
            # Each controller fetches its own service-account token at start; the default
            # client rate limit (20 qps) alone stretches startup by seconds.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
            *_gates(self.feature_gates),
        ]

    def _scheduler_args(self) -> list[str]:
        assert self.ports is not None
        return [
            str(build.binary("kube-scheduler")),
            f"--kubeconfig={self._component_kubeconfig('kube-scheduler')}",
            f"--bind-address={loopback_host('127.0.0.1')}",
            f"--secure-port={self.ports.scheduler}",
            f"--cert-dir={self.state_dir / 'certs' / 'kube-scheduler'}",
            "--leader-elect=false",
            "--profiling=false",
            *_gates(self.feature_gates),
        ]

    def _kwok_args(self) -> list[str]:
        assert self.ports is not None
        config = self.state_dir / "kwok-home" / "kwok.yaml"
        config.write_text(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n"
        )
        key, value = KWOK_NODE_ANNOTATION
        return [
            str(build.binary("kwok")),
            f"--config={config}",
            f"--kubeconfig={self._component_kubeconfig('kwok')}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            # Renew a Lease per node every 10 s, as kubelets do. Without it (this build's
            # effective default) kwok reports node status only about every 55 s, past the
            # node lifecycle controller's 50 s grace: every node flaps NotReady once a minute and
            # the controller marks its pods NotReady, which kwok never undoes.
            "--node-lease-duration-seconds=40",
            f"--cidr={loopback_cidr(KWOK_FALLBACK_CIDR)}",
            f"--node-ip={loopback_host(KWOK_NODE_IP)}",
            f"--server-address={loopback_host('127.0.0.1')}:{self.ports.kwok}",
        ]


_STATE_ENTRIES = frozenset(
    {
        STATE_FILE, "pki", "kubeconfig", "kubeconfigs", "logs", "etcd", "certs", "kwok-home",
        AUDIT_POLICY_FILE,
        "lws",  # the LeaderWorkerSet manager's configuration
        "runner.json",  # a detached process runner (localcluster.runner)
    }
)  # fmt: skip


def looks_like_state_dir(directory: Path) -> bool:
    """Whether ``directory`` exists and holds nothing but what a LocalCluster writes."""
    if not directory.is_dir():
        return False
    return all(entry.name in _STATE_ENTRIES for entry in directory.iterdir())


def _is_loopback_ip(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _parse_proc_address(text: str) -> tuple[str, int]:
    host_hex, port_hex = text.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(raw[::-1])
    else:
        # /proc/net/tcp6 stores four host-order 32-bit words.
        words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
        address = ipaddress.IPv6Address(b"".join(words))
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    return str(address), int(port_hex, 16)


def listening_sockets(pids: Mapping[int, str]) -> list[tuple[str, str, int]]:
    """TCP listening sockets owned by ``pids``, as (name for the pid, address, port)."""
    owner: dict[str, str] = {}
    for pid, name in pids.items():
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            entries = list(fd_dir.iterdir())
        except (FileNotFoundError, PermissionError):
            continue
        for entry in entries:
            try:
                target = os.readlink(entry)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = name
    found: list[tuple[str, str, int]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            inode = fields[9]
            if inode in owner:
                address, port = _parse_proc_address(fields[1])
                found.append((owner[inode], address, port))
    return sorted(found)
