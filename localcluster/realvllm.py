"""Real vLLM in a fake pod: what the process runner changes, in one place, and why.

For a runtime pod that asks for it (env ``LOCALCLUSTER_RUNTIME=vllm`` in its runtime
container, e.g. from ``spec.serving.env``, or a runner started with ``real=True``), the process
runner runs our real launcher, ``python -m gantry_runtime serve``, with the pod's own env and
args: it verifies the weights offline and execs ``vllm serve`` with the argv the operator built,
which the CPU build of vLLM (:mod:`localcluster.vllm_cpu`) serves from a tiny model of the same
architecture (:mod:`localcluster.tiny_models`).

Every difference from what the pod would run on a GPU node is one of :data:`SUBSTITUTIONS`,
applied by :func:`prepare` and logged, one line each, at the top of the pod's log.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from gantry_runtime.launchspec import ENV_VAR, LaunchSpec
from localcluster import tiny_models, vllm_cpu

#: The pod env that asks the runner for a real vLLM (any other value, or none: the simulator).
#: Not GANTRY_*: spec env may not set Gantry's own variables (docs/security.md).
MODE_VAR = "LOCALCLUSTER_RUNTIME"
REAL = "vllm"
#: The KV cache each real server gets: room for a few 64k-token sequences of a tiny model.
KV_CACHE_BYTES = 64 * 2**20
#: The interface NCCL and Gloo use in a multi-node group's pods here (their IPs are loopback).
LOOPBACK_INTERFACE = "lo"
SOCKET_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
#: Where the model volume (PVC or image) is mounted in runtime pods (the operator's
#: ``gantry_operator.spec.MODEL_MOUNT``).
MODEL_MOUNT = "/models"

#: (what, why): the only ways a real-vLLM pod here differs from one on a GPU node.
SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    (
        "model path: /models/<path> -> <models dir>/<path>, holding the tiny model of the "
        "preset's architecture family",
        "no PVC or image volume exists here and the real weights need GPUs; the runner's models "
        "dir stands in for the volume, so a test can also break a checkpoint there",
    ),
    (
        "launch spec sha256: the tiny model's SHA256SUMS when the spec lists any digests",
        "the spec's digests are the real checkpoint's",
    ),
    (
        f"engine args: + --kv-cache-memory-bytes {KV_CACHE_BYTES} --enforce-eager",
        "the CPU build sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (GiBs per server) unless "
        "told; eager mode skips torch.compile and halves start-up",
    ),
    (
        "CPU threads: OMP_NUM_THREADS=1, VLLM_CPU_OMP_THREADS_BIND=nobind, "
        "VLLM_CPU_KVCACHE_SPACE removed",
        "several servers share 2 cores; binding threads to cores would pin them all to the same "
        "ones; an empty VLLM_CPU_KVCACHE_SPACE crashes the worker",
    ),
    (
        "`vllm serve ARGS` -> `<vllm-cpu python> -m vllm.entrypoints.openai.api_server ARGS` "
        "(a `vllm` shim first on PATH, which also makes vLLM die with gantry-runtime)",
        "the CPU build's distribution is named vllm-cpu, so its `vllm` console script fails "
        "with PackageNotFoundError",
    ),
    (
        "multi-node group (`--nnodes` > 1): `vllm serve` runs vLLM's own CLI "
        "(vllm.entrypoints.cli.main, with importlib.metadata answering `vllm` with vllm-cpu's "
        "version + '+cpu') instead of the API server module",
        "only the CLI's `serve` honours --headless: the API server module ignores it and the "
        "worker's engine then fails ('collective_rpc should not be called on follower node'); "
        "the CLI reads the version of a distribution named vllm, and vLLM's platform detection "
        "needs the '+cpu' its own fallback adds, or the CUDA kernels load and die with SIGILL",
    ),
    (
        "multi-node group: --tensor-parallel-size N -> 1 (the pipeline size, one stage per "
        "pod, stays); no --enforce-eager; GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME -> lo",
        "a fake node has no GPUs, so one CPU process per pod; the CPU model runner makes a "
        "later pipeline stage's buffer for the previous stage's activations only in its "
        "warm-up, which eager mode skips (the first request then fails on rank 1: "
        "AssertionError in sync_and_gather_intermediate_tensors); pod IPs here are loopback "
        "addresses, not on the pod interface the operator names",
    ),
    (
        "emptyDir mounts (the cache, /tmp, /dev/shm) -> folders of the pod's own; env values "
        "under them follow; GANTRY_TERMINATION_LOG -> <pod dir>/termination-log",
        "no kubelet makes the pod's volumes; the runner reads the termination message from there",
    ),
)


class RealVllmError(RuntimeError):
    """The pod cannot run real vLLM here (the message says why)."""


def wants_real(env: Mapping[str, str]) -> bool:
    return env.get(MODE_VAR, "").strip().lower() == REAL


@dataclass(frozen=True)
class Prepared:
    """What the runner runs for one real-vLLM pod."""

    argv: list[str]
    env: dict[str, str]
    #: The file gantry-runtime writes its termination message to.
    termination_log: Path
    #: Log lines (the substitutions as applied) to write at the top of the pod's log.
    notes: list[str]
    #: The model folder vLLM serves (``root`` in its /v1/models): tells our server from another
    #: process on the same address (parallel local clusters share the pod address range).
    model: str


#: What the shim runs for a multi-node group: vLLM's own CLI (see SUBSTITUTIONS).
CLI_MODULE = "vllm.entrypoints.cli.main"

SHIM = """#!{python}
# `vllm serve MODEL ARGS...` for the CPU build (see localcluster/realvllm.py SUBSTITUTIONS).
import ctypes, os, signal, sys
CLI = '''
import importlib.metadata as metadata, sys
real_version = metadata.version
def version(name):
    # The CLI asks for vllm's version; vLLM's platform detection falls back to this too.
    return real_version("vllm-cpu") + "+cpu" if name == "vllm" else real_version(name)
metadata.version = version
sys.argv = ["vllm", *sys.argv[1:]]
from vllm.entrypoints.cli.main import main
main()
'''
# Die with gantry-runtime, as a container's processes do (PR_SET_PDEATHSIG survives exec).
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
args = sys.argv[1:]
if args[:1] != ["serve"]:
    sys.exit("this vllm shim only runs `vllm serve`")
args = args[1:]
if "--nnodes" in args:
    # A multi-node group: vLLM's own CLI, the only one that honours --headless.
    os.execv({python!r}, [{python!r}, "-c", CLI, "serve", *args])
if args and not args[0].startswith("-"):
    args = ["--model", args[0], *args[1:]]
os.execv({python!r}, [{python!r}, "-m", {module!r}, *args])
"""


def shim_dir(base: Path, vllm_python: Path) -> Path:
    """A folder with a ``vllm`` executable that runs the CPU build's server."""
    python = str(vllm_python)
    directory = base / "bin"
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "vllm"
    shim.write_text(SHIM.format(python=python, module=vllm_cpu.SERVER_MODULE))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def stage_model(models_dir: Path, rel: str, family: str) -> Path:
    """``<models_dir>/<rel>``: symlinks to the cached tiny model's files (made if missing)."""
    target = models_dir / rel
    if (target / "config.json").exists():
        return target
    source = tiny_models.ensure_tiny_model(family)
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        (target / path.name).symlink_to(path)
    return target


def copy_model(models_dir: Path, rel: str, family: str) -> Path:
    """Like :func:`stage_model` but with copies of the files, for a test to break."""
    target = models_dir / rel
    source = tiny_models.ensure_tiny_model(family)
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def _rewrite_path(value: str, mounts: Mapping[str, Path]) -> str:
    for mount, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount or value.startswith(mount + "/"):
            return str(local) + value[len(mount) :]
    return value


def prepare(
    *,
    pod_env: Mapping[str, str],
    pod_dir: Path,
    models_dir: Path,
    family_of: Callable[[], str],
    host: str,
    vllm_python: Path,
    python: str = sys.executable,
    base_env: Mapping[str, str] | None = None,
) -> Prepared:
    """The argv and env that run ``gantry-runtime serve`` for real in ``pod_dir``.

    ``family_of`` names the tiny model family for the pod's ModelDeployment (called only when
    the model folder must be made); ``vllm_python`` is the CPU vLLM's interpreter
    (:func:`localcluster.vllm_cpu.ensure_vllm_cpu`).
    """
    text = pod_env.get(ENV_VAR)
    if not text:
        raise RealVllmError(f"the pod has no {ENV_VAR}")
    spec = LaunchSpec.from_json(text)
    notes: list[str] = []
    mounts = {
        "/var/cache/gantry": pod_dir / "cache",
        "/tmp": pod_dir / "tmp",
        "/dev/shm": pod_dir / "shm",
        MODEL_MOUNT: models_dir,
    }
    for mount, local in mounts.items():
        if mount != MODEL_MOUNT:
            local.mkdir(parents=True, exist_ok=True)
    model = spec.model
    if model == MODEL_MOUNT or model.startswith(MODEL_MOUNT + "/"):
        rel = PurePosixPath(model).relative_to(MODEL_MOUNT).as_posix()
        local_model = models_dir / rel if rel != "." else models_dir
        if not local_model.exists() or not any(local_model.iterdir()):
            # Missing or empty: the tiny model of the preset's family. A folder with anything
            # in it is used as it is (a test may have broken it on purpose).
            family = family_of()
            stage_model(models_dir, rel, family)
            notes.append(f"staged the tiny {family} model as {local_model}")
        model = str(local_model)
        notes.append(f"model path {spec.model} -> {model}")
    else:
        raise RealVllmError(
            f"model {spec.model!r} is not under {MODEL_MOUNT}: only pvc and image sources run "
            "real vLLM here"
        )
    sha256 = spec.sha256
    if sha256 and (Path(model) / tiny_models.MANIFEST).exists():
        sha256 = tiny_models.read_manifest(Path(model))
        notes.append(
            f"sha256 list -> the tiny model's {tiny_models.MANIFEST} ({len(sha256)} files)"
        )
    extra: tuple[tuple[str, str | None], ...] = (
        *spec.extra_args,
        ("--kv-cache-memory-bytes", str(KV_CACHE_BYTES)),
    )
    tensor_parallel_size = spec.tensor_parallel_size
    if spec.multi_node:
        # One CPU process per pod; the pipeline's warm-up needs compilation (SUBSTITUTIONS).
        tensor_parallel_size = 1
        notes.append(
            f"multi-node group: --tensor-parallel-size {spec.tensor_parallel_size} -> 1, "
            f"pipeline parallel {spec.pipeline_parallel_size} kept, no --enforce-eager"
        )
    else:
        extra = (*extra, ("--enforce-eager", None))
    added = extra[len(spec.extra_args) :]
    notes.append("engine args + " + " ".join(f if v is None else f"{f} {v}" for f, v in added))
    rewritten = replace(
        spec,
        model=model,
        sha256=sha256,
        extra_args=extra,
        tensor_parallel_size=tensor_parallel_size,
    )

    source = os.environ if base_env is None else base_env
    env = {k: source[k] for k in ("LANG", "LC_ALL", "TZ") if k in source}
    for name, value in pod_env.items():
        env[name] = _rewrite_path(value, mounts)
        if env[name] != value and name != ENV_VAR:
            notes.append(f"env {name}={value} -> {env[name]}")
    env[ENV_VAR] = rewritten.to_json()
    if spec.multi_node:
        for name in SOCKET_IFNAME_VARS:
            if name in env:
                notes.append(f"env {name}={env[name]} -> {LOOPBACK_INTERFACE}")
                env[name] = LOOPBACK_INTERFACE
    bin_dir = shim_dir(pod_dir.parent, vllm_python)
    env["PATH"] = os.pathsep.join([str(bin_dir), source.get("PATH", "/usr/bin:/bin")])
    runs = CLI_MODULE if spec.multi_node else f"python -m {vllm_cpu.SERVER_MODULE}"
    notes.append(f"`vllm serve` -> {bin_dir / 'vllm'} ({runs})")
    threads = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    env.update(threads)
    if env.pop("VLLM_CPU_KVCACHE_SPACE", None) is not None:
        notes.append("removed VLLM_CPU_KVCACHE_SPACE")
    notes.append("CPU threads: " + " ".join(f"{k}={v}" for k, v in threads.items()))
    env["TMPDIR"] = str(mounts["/tmp"])
    env["GANTRY_HOST"] = host
    env["PYTHONUNBUFFERED"] = "1"
    termination_log = pod_dir / "termination-log"
    termination_log.write_text("")
    env["GANTRY_TERMINATION_LOG"] = str(termination_log)
    argv = [python, "-m", "gantry_runtime", "serve"]
    return Prepared(argv=argv, env=env, termination_log=termination_log, notes=notes, model=model)


def describe_substitutions() -> str:
    return "\n".join(f"- {what}: {why}" for what, why in SUBSTITUTIONS)
