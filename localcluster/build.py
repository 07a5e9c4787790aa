"""Build the local control plane's binaries from their Go modules, once per machine.

Binaries land in ``$GANTRY_CACHE/bin/<component>-<version>/`` (default cache
``~/.cache/gantry``), outside the repository. A component whose binaries already exist is not
rebuilt, so a warm run returns in well under a second. Go's own module and build caches are
left where Go keeps them, so a version bump recompiles only what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster import versions
from localcluster.log import sayer


def cache_dir() -> Path:
    return Path(os.environ.get("GANTRY_CACHE", Path.home() / ".cache" / "gantry"))


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    binaries: tuple[str, ...]
    #: Other files the build puts in :attr:`directory` (paths relative to it).
    data: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}"

    def path(self, binary: str) -> Path:
        return self.directory / binary

    def built(self) -> bool:
        return all(self.path(f).is_file() for f in (*self.binaries, *self.data))


KUBERNETES = Component("kubernetes", versions.KUBERNETES, versions.KUBERNETES_COMMANDS)
ETCD = Component("etcd", versions.ETCD, ("etcd",))
KWOK = Component("kwok", versions.KWOK, ("kwok",))
HELM = Component("helm", versions.HELM, ("helm",))
KUBE_SCORE = Component("kube-score", versions.KUBE_SCORE, ("kube-score",))
#: LeaderWorkerSet's manifests from its module's ``config/`` (see :func:`build_lws`).
LWS_CRDS = (
    "leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    "disaggregatedset.x-k8s.io_disaggregatedsets.yaml",
)
LWS_WEBHOOK_FILES = ("manifests.yaml", "mutating-patch.yaml", "validating-patch.yaml")
LWS_MANIFESTS = (
    *(f"config/crd/bases/{name}" for name in LWS_CRDS),
    *(f"config/webhook/{name}" for name in LWS_WEBHOOK_FILES),
)
LWS = Component("lws", versions.LWS, ("lws-controller-manager",), LWS_MANIFESTS)
#: kube-proxy, apart from the control plane's binaries (only bench/gateway.py runs it, and only
#: where nftables is installed): built on request, so adding it rebuilt nothing else.
KUBE_PROXY = Component("kube-proxy", versions.KUBERNETES, ("kube-proxy",))
COMPONENTS = (KUBERNETES, ETCD, KWOK, HELM, KUBE_SCORE, LWS, KUBE_PROXY)
#: What a LocalCluster runs (LWS only when asked for); the rest are client tools.
CLUSTER_COMPONENTS = (KUBERNETES, ETCD, KWOK)


def binary(name: str) -> Path:
    """Path of a built binary by its command name (``kubectl``, ``etcd``, ...)."""
    for component in COMPONENTS:
        if name in component.binaries:
            return component.path(name)
    raise KeyError(name)


_say = sayer("gantry-cluster")


def _go(args: Sequence[str], cwd: Path, what: str) -> None:
    """Run a go command, printing a heartbeat so a long first build shows progress."""
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            _say(f"  still {what} ({time.monotonic() - started:.0f}s)")

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false -mod=mod"}
    try:
        result = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    finally:
        done.set()
    if result.returncode != 0:
        raise RuntimeError(
            f"`go {' '.join(args)}` failed while {what}:\n{result.stdout}{result.stderr}"
        )


def _module(workdir: Path, name: str, go_mod: str, files: dict[str, str]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "go.mod").write_text(f"module gantry.local/{name}\n\ngo 1.24\n\n{go_mod}")
    for filename, text in files.items():
        (workdir / filename).write_text(text)


def _install(
    component: Component,
    build: Path,
    targets: Sequence[str],
    ldflags: str = "",
    *,
    output: str = "",
    extra: Callable[[Path, Path], None] | None = None,
) -> None:
    """Build ``targets`` into the component's directory (replaced whole, once complete).

    ``output``: the binary's name when there is one target whose directory is not named so.
    ``extra(build, staging)``: puts more files into the staging directory.
    """
    staging = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f".{component.name}-"))
    try:
        _go(["mod", "tidy"], build, f"resolving {component.name} {component.version} modules")
        args = ["build", "-trimpath", "-o", str(staging / output) if output else str(staging) + "/"]
        if ldflags:
            args += ["-ldflags", ldflags]
        _go([*args, *targets], build, f"compiling {component.name} {component.version}")
        if extra is not None:
            extra(build, staging)
        component.directory.parent.mkdir(parents=True, exist_ok=True)
        if component.directory.exists():
            shutil.rmtree(component.directory)
        staging.rename(component.directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _kubernetes_ldflags() -> str:
    major, minor, _ = versions.KUBERNETES.lstrip("v").split(".")
    values = {
        "gitVersion": versions.KUBERNETES,
        "gitMajor": major,
        "gitMinor": minor,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    packages = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    flags = [f"-X {pkg}.{key}={value}" for pkg in packages for key, value in values.items()]
    return " ".join(["-s", "-w", *flags])


def build_kubernetes(work: Path) -> None:
    replaces = "\n".join(
        f"\tk8s.io/{m} => k8s.io/{m} {versions.KUBERNETES_STAGING}"
        for m in versions.STAGING_MODULES
    )
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"' for c in versions.KUBERNETES_COMMANDS)
    _module(
        work,
        "kubernetes",
        f"require k8s.io/kubernetes {versions.KUBERNETES}\n\nreplace (\n{replaces}\n)\n",
        {"tools.go": f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"},
    )
    targets = [f"k8s.io/kubernetes/cmd/{c}" for c in versions.KUBERNETES_COMMANDS]
    _install(KUBERNETES, work, targets, _kubernetes_ldflags())


KUBE_PROXY_PACKAGE = "k8s.io/kubernetes/cmd/kube-proxy"


def build_kube_proxy(work: Path) -> None:
    replaces = "\n".join(
        f"\tk8s.io/{m} => k8s.io/{m} {versions.KUBERNETES_STAGING}"
        for m in versions.STAGING_MODULES
    )
    _module(
        work,
        "kube-proxy",
        f"require k8s.io/kubernetes {versions.KUBERNETES}\n\nreplace (\n{replaces}\n)\n",
        {"tools.go": f'//go:build tools\n\npackage tools\n\nimport _ "{KUBE_PROXY_PACKAGE}"\n'},
    )
    _install(KUBE_PROXY, work, [KUBE_PROXY_PACKAGE], _kubernetes_ldflags())


def build_etcd(work: Path) -> None:
    main = (
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    _module(work, "etcd", f"require go.etcd.io/etcd/server/v3 {versions.ETCD}\n", {"main.go": main})
    _install(ETCD, work, ["."], "-s -w")


def _tool_module(
    work: Path, component: Component, module: str, package: str, ldflags: str = ""
) -> None:
    imports = f'//go:build tools\n\npackage tools\n\nimport _ "{package}"\n'
    _module(work, component.name, f"require {module} {component.version}\n", {"tools.go": imports})
    _install(component, work, [package], f"-s -w {ldflags}".strip())


def build_kwok(work: Path) -> None:
    _tool_module(work, KWOK, "sigs.k8s.io/kwok", "sigs.k8s.io/kwok/cmd/kwok")


def build_helm(work: Path) -> None:
    # Version ldflags as Helm's Makefile sets them: `helm version` reports the release, and
    # offline `helm template`/`lint` assume the Kubernetes minor we run, not v1.20.
    major, minor, _ = versions.KUBERNETES.lstrip("v").split(".")
    flags = [f"-X helm.sh/helm/v3/internal/version.version={versions.HELM}"]
    for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        flags += [f"-X {pkg}.k8sVersionMajor={major}", f"-X {pkg}.k8sVersionMinor={minor}"]
    _tool_module(work, HELM, "helm.sh/helm/v3", "helm.sh/helm/v3/cmd/helm", " ".join(flags))


def build_kube_score(work: Path) -> None:
    # kube-linter's module (golang.stackrox.io/kube-linter) is not served by the module proxy
    # this project builds from; kube-score is the maintained scanner that is.
    package = "github.com/zegl/kube-score/cmd/kube-score"
    flags = f"-X main.version={versions.KUBE_SCORE} -X main.commit=module -X main.date=N/A"
    _tool_module(work, KUBE_SCORE, "github.com/zegl/kube-score", package, flags)


def module_dir(build: Path, module: str) -> Path:
    """Where the Go module cache holds ``module`` at the version ``build``'s go.mod requires."""
    result = subprocess.run(
        ["go", "list", "-m", "-json", module],
        cwd=build,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"`go list -m {module}` failed in {build}:\n{result.stderr}")
    directory = json.loads(result.stdout).get("Dir")
    if not directory:
        raise RuntimeError(f"{module} is not in the Go module cache (run `go mod download`)")
    return Path(directory)


def build_lws(work: Path) -> None:
    # The manager is the module's cmd/main.go (package sigs.k8s.io/lws/cmd, hence `output`).
    # The manifests a LocalCluster installs are copied next to it: the CRDs, and the webhook
    # configurations with the kustomize patches that limit the pod webhooks to LWS's pods.
    flags = " ".join(
        f"-X sigs.k8s.io/lws/pkg/version.{key}={value}"
        for key, value in (("GitVersion", versions.LWS), ("GitCommit", "module"))
    )

    def manifests(build: Path, staging: Path) -> None:
        source = module_dir(build, "sigs.k8s.io/lws")
        for relative in LWS_MANIFESTS:
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, target)

    module = "sigs.k8s.io/lws"
    imports = '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/lws/cmd"\n'
    _module(work, LWS.name, f"require {module} {LWS.version}\n", {"tools.go": imports})
    _install(
        LWS,
        work,
        ["sigs.k8s.io/lws/cmd"],
        f"-s -w {flags}",
        output=LWS.binaries[0],
        extra=manifests,
    )


BUILDERS = {
    "kubernetes": build_kubernetes,
    "etcd": build_etcd,
    "kwok": build_kwok,
    "helm": build_helm,
    "kube-score": build_kube_score,
    "lws": build_lws,
    "kube-proxy": build_kube_proxy,
}


def ensure_built(names: Sequence[str] | None = None) -> None:
    """Build every missing component (all of them by default)."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is not installed: install Go >= 1.24 to build the local cluster")
    default = [c for c in COMPONENTS if c is not KUBE_PROXY]
    wanted = [
        c for c in (default if names is None else COMPONENTS) if names is None or c.name in names
    ]
    missing = [c for c in wanted if not c.built()]
    if not missing:
        return
    cache_dir().mkdir(parents=True, exist_ok=True)
    _say(
        "first build of "
        + ", ".join(f"{c.name} {c.version}" for c in missing)
        + f" into {cache_dir() / 'bin'} (about 20-30 minutes on 2 cores, once per machine)"
    )
    for component in missing:
        started = time.monotonic()
        _say(f"building {component.name} {component.version}")
        work = cache_dir() / "src" / f"{component.name}-{component.version}"
        BUILDERS[component.name](work)
        _say(f"built {component.name} {component.version} in {time.monotonic() - started:.0f}s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("components", nargs="*", help=f"subset of: {', '.join(BUILDERS)}")
    args = parser.parse_args(argv)
    unknown = set(args.components) - set(BUILDERS)
    if unknown:
        parser.error(f"unknown components {sorted(unknown)}; choose from {list(BUILDERS)}")
    ensure_built(args.components or None)
    for component in COMPONENTS:
        state = "ready" if component.built() else "missing"
        print(f"{component.name:<11} {component.version:<9} {state:<8} {component.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
