"""The Helm chart (charts/gantry) offline: helm itself, rendering, and the kube-score scan.

Used by the fast static checks (tests/unit/test_chart.py) and by the tests against the local
control plane (tests/integration/test_helm.py). helm and kube-score are the binaries
:mod:`localcluster.build` makes from their Go modules (built on first use, never skipped).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localcluster import build

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "gantry"
RESIDENCY_VALUES = CHART / "values-residency.yaml"
HELM_TEST_SCRIPT = CHART / "files" / "helm-test.py"
KUBE_SCORE_CONFIG = CHART / ".kube-score.yaml"


class HelmError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        command = " ".join(str(a) for a in self.cmd)
        return f"`{command}` exited with {self.returncode}:\n{self.stdout}\n{self.stderr}"


def ensure_tools() -> None:
    """Build helm and kube-score if this machine has not yet (minutes, once)."""
    build.ensure_built(["helm", "kube-score"])


def helm(
    *args: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run helm; without ``env`` it reaches no cluster (KUBECONFIG is /dev/null)."""
    run_env = dict(env) if env is not None else {**os.environ, "KUBECONFIG": os.devnull}
    # Helm's caches and config outside the developer's home.
    for kind in ("CACHE", "CONFIG", "DATA"):
        run_env[f"HELM_{kind}_HOME"] = str(build.cache_dir() / "helm" / kind.lower())
    argv = [str(build.binary("helm")), *args]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=run_env, check=False
    )
    if check and result.returncode != 0:
        raise HelmError(result.returncode, ["helm", *args], result.stdout, result.stderr)
    return result


def template_args(
    *values: str | Path,
    chart: Path = CHART,
    namespace: str = "gantry-system",
    release: str = "gantry",
    sets: Sequence[str] = (),
    include_crds: bool = True,
) -> list[str]:
    args = ["template", release, str(chart), f"--namespace={namespace}"]
    args += [f"--values={v}" for v in values]
    args += [f"--set={s}" for s in sets]
    if include_crds:
        args.append("--include-crds")
    return args


def render(*values: str | Path, **options: Any) -> str:
    """``helm template`` output (crds/ included by default; see :func:`template_args`)."""
    return helm(*template_args(*values, **options)).stdout


def template(*values: str | Path, **options: Any) -> list[dict[str, Any]]:
    """``helm template`` as a list of objects."""
    return documents(render(*values, **options))


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(o) for o in objects if o["kind"] == kind]


def one(objects: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# -- kube-score ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreConfig:
    """charts/gantry/.kube-score.yaml: the checks to run and the exceptions, with reasons."""

    kubernetes_version: str
    all_default_optional: bool
    ignored: Mapping[str, str]  # check id -> reason

    @classmethod
    def load(cls, path: Path = KUBE_SCORE_CONFIG) -> ScoreConfig:
        data = yaml.safe_load(path.read_text())
        return cls(
            kubernetes_version=str(data["kubernetesVersion"]),
            all_default_optional=bool(data.get("allDefaultOptional", False)),
            ignored={str(i["test"]): str(i["reason"]).strip() for i in data.get("ignore") or []},
        )


def kube_score_checks() -> dict[str, str]:
    """Every check kube-score knows: id -> "default" or "optional"."""
    listing = subprocess.run(
        [str(build.binary("kube-score")), "list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    checks = {}
    for line in listing.splitlines():
        fields = line.split(",")
        checks[fields[0]] = fields[-1]
    return checks


def kube_score(manifests: str, config: ScoreConfig, *, ignore: Iterable[str] | None = None) -> str:
    """Scan ``manifests`` with ``config`` (optional checks enabled one by one, since kube-score
    refuses --all-default-optional with --ignore-test); ``ignore`` overrides the config's
    exceptions. Returns the findings, one a line ("" when clean); warnings count."""
    ignored = set(config.ignored if ignore is None else ignore)
    args = [
        str(build.binary("kube-score")),
        "score",
        f"--kubernetes-version={config.kubernetes_version}",
        "--output-format=ci",
        "--exit-one-on-warning",
    ]
    if config.all_default_optional:
        args += [
            f"--enable-optional-test={check}"
            for check, kind in sorted(kube_score_checks().items())
            if kind == "optional" and check not in ignored
        ]
    args += [f"--ignore-test={check}" for check in sorted(ignored)]
    result = subprocess.run(
        [*args, "-"], input=manifests, capture_output=True, text=True, check=False, timeout=120
    )
    findings = [
        line
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith(("[OK]", "[SKIPPED]"))
    ]
    if result.returncode not in (0, 1) or (result.returncode == 1 and not findings):
        raise RuntimeError(f"kube-score failed ({result.returncode}): {result.stderr}")
    return "\n".join(findings)
