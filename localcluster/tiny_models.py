"""Tiny checkpoints of the catalog's architectures, made offline at first use, for real vLLM.

``ensure_tiny_model(family)`` returns ``$GANTRY_CACHE/tiny-models/<family>-<BUILD>/``, built once
per machine by ``tiny_build.py`` in the CPU vLLM's virtualenv (random weights from torch,
tokenizers from what is installed; nothing downloaded) into a temporary folder that is renamed
into place when complete, under a lock, so concurrent callers wait and an interrupted build leaves
nothing half-made behind. Each checkpoint has a ``config.json``, tokenizer files, sharded
safetensors with ``model.safetensors.index.json`` and a ``SHA256SUMS`` manifest.

:data:`ARCHITECTURES` maps the architecture names in a ``config.json`` (what a ModelDeployment's
weights are) to the family that stands in for them. The MLA MoE family (``DeepseekV3ForCausalLM``,
Kimi K2) has no tiny model: see :data:`NOT_BUILT`.

Command line: ``python -m localcluster.tiny_models [FAMILY...]`` builds them and prints paths.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from localcluster import venvs, vllm_cpu
from localcluster.log import sayer

FAMILIES = ("gpt-oss", "qwen3")
#: Bumped when tiny_build.py changes what it writes (the cache is keyed by it).
BUILD = "v1"
BUILDER = Path(__file__).with_name("tiny_build.py")
MANIFEST = "SHA256SUMS"
#: config.json ``architectures`` -> the tiny family that runs in their place.
ARCHITECTURES: Mapping[str, str] = {
    "GptOssForCausalLM": "gpt-oss",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3",
}
#: Architectures the catalog holds without a tiny stand-in, and why.
NOT_BUILT: Mapping[str, str] = {
    "DeepseekV3ForCausalLM": (
        "MLA + MoE: not built yet (whether vllm-cpu 0.32.0 runs MLA on CPU was not tried)"
    ),
}


class TinyModelError(RuntimeError):
    """A tiny model could not be built (the message holds the builder's output)."""


def root() -> Path:
    return venvs.cache_root() / "tiny-models"


def model_dir(family: str) -> Path:
    return root() / f"{family}-{BUILD}-vllm-cpu-{vllm_cpu.VLLM_CPU_VERSION}"


def read_manifest(directory: Path) -> dict[str, str]:
    """``SHA256SUMS`` as relative path -> hex digest (the launch spec's ``sha256`` shape)."""
    sums: dict[str, str] = {}
    for line in (directory / MANIFEST).read_text(encoding="ascii").splitlines():
        digest, _, name = line.partition("  ")
        if digest and name:
            sums[name] = digest
    return sums


def family_for(architectures: Sequence[str]) -> str:
    """The tiny family for a ``config.json``'s ``architectures``; ValueError if there is none."""
    for arch in architectures:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    reasons = [f"{a}: {NOT_BUILT[a]}" for a in architectures if a in NOT_BUILT]
    raise ValueError(
        f"no tiny model for architectures {list(architectures)}"
        + (f" ({'; '.join(reasons)})" if reasons else "")
    )


_say = sayer("tiny-models")


def ensure_tiny_model(family: str) -> Path:
    """The tiny checkpoint of ``family``, building it (and the CPU vLLM) first if needed."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    final = model_dir(family)
    if (final / MANIFEST).exists():
        return final
    python = vllm_cpu.ensure_vllm_cpu()
    with venvs.install_lock(final, _say):
        if (final / MANIFEST).exists():
            return final
        root().mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root(), prefix=f".{family}-"))
        started = time.monotonic()
        _say(f"building the tiny {family} model in {final} (once per machine)")
        try:
            result = subprocess.run(
                [str(python), str(BUILDER), family, str(staging)],
                capture_output=True,
                text=True,
                timeout=1200,
                check=False,
                env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            )
            if result.returncode != 0:
                raise TinyModelError(
                    f"building the tiny {family} model failed (exit {result.returncode}):\n"
                    + "\n".join((result.stdout + result.stderr).splitlines()[-30:])
                )
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _say(f"built the tiny {family} model in {time.monotonic() - started:.0f}s")
    return final


def describe(directory: Path) -> dict[str, object]:
    config = json.loads((directory / "config.json").read_text())
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return {"dir": str(directory), "architectures": config.get("architectures"), "bytes": size}


def main(argv: Sequence[str] | None = None) -> int:
    families = list(argv if argv is not None else sys.argv[1:]) or list(FAMILIES)
    for family in families:
        print(json.dumps({"family": family, **describe(ensure_tiny_model(family))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
