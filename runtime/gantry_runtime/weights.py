"""Offline completeness check of a local model directory, run before vLLM starts.

vLLM fails late and obscurely on a half-copied model (a stack trace from safetensors minutes into
the load, or a hub lookup that cannot work offline). This module checks, with ``stat`` calls only,
that a directory holds everything vLLM reads: ``config.json``, the tokenizer files, and every
safetensors shard, and reports *all* problems at once, each naming the file and the fix. Hashing
(sha256, streamed in 8 MiB chunks) runs only when the launch spec lists expected digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gantry_runtime.launchspec import LaunchSpec

CHUNK_SIZE = 8 * 1024 * 1024
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
#: Any one of these holds the tokenizer itself (fast tokenizer, sentencepiece, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model")
TIKTOKEN_SUFFIX = ".tiktoken"
#: Leftovers of an interrupted download (huggingface_hub, curl/wget, rclone and friends).
PARTIAL_SUFFIXES = (".incomplete", ".part", ".partial")
#: Files vLLM reads: empty ones among them are broken; other empty files are only warned about.
LOADED_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".tiktoken", ".jinja", ".txt", ".py")

REDOWNLOAD = "re-download the model into {dir} (e.g. `hf download <repo> --local-dir {dir}`)"


class WeightsError(Exception):
    """The model directory is not ready; ``problems`` lists every issue found."""

    def __init__(self, model_dir: Path | str, problems: Iterable[str]) -> None:
        self.model_dir = str(model_dir)
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(
            f"model directory {self.model_dir} is not ready ({count} {noun}):\n{lines}"
        )


@dataclass(frozen=True)
class WeightsReport:
    """What a successful check saw."""

    model_dir: Path
    #: Safetensors files vLLM will load, and their total size in bytes.
    weight_files: int
    weight_bytes: int
    #: Files whose sha256 was verified.
    hashed_files: int
    #: Things worth a log line that do not stop the launch (e.g. an empty README).
    warnings: tuple[str, ...]
    seconds: float

    def summary(self) -> str:
        gib = self.weight_bytes / 2**30
        hashed = f", sha256 verified for {self.hashed_files} files" if self.hashed_files else ""
        return (
            f"Verified weights in {self.model_dir}: {self.weight_files} safetensors files, "
            f"{gib:.1f} GiB{hashed} ({self.seconds:.1f} s)"
        )


def describe_source(model: str) -> str:
    """A short phrase for where a LaunchSpec's model comes from (for log lines)."""
    if model.startswith("s3://"):
        return "an S3 URI: vLLM streams the weights from object storage"
    if "://" in model:
        return "a URI: vLLM fetches the weights itself"
    if model.startswith(("/", "./", "../", "~")):
        return "a local directory with verification turned off"
    return "a model repo id: vLLM resolves it from the Hugging Face cache"


def verify_weights(spec: LaunchSpec, *, log: Callable[[str], None]) -> WeightsReport | None:
    """Check ``spec.model`` as a local directory, unless the spec turns the check off.

    Returns None when the check was skipped (and logs why); raises :class:`WeightsError`.
    """
    if not spec.verify_local_weights:
        note = " (its sha256 list is ignored)" if spec.sha256 else ""
        log(
            f"Skipped the local weights check{note}: verify_local_weights is false and the model "
            f"{spec.model!r} is {describe_source(spec.model)}"
        )
        return None
    if "://" in spec.model:
        raise WeightsError(
            spec.model,
            [
                f"the model {spec.model!r} is a URI but verify_local_weights is true: the runtime "
                "can only check local directories; set verify_local_weights to false for "
                "streamed sources"
            ],
        )
    report = check_model_dir(Path(spec.model), sha256=spec.sha256)
    for warning in report.warnings:
        log(f"Warning: {warning}")
    log(report.summary())
    return report


def check_model_dir(
    model_dir: Path,
    *,
    sha256: Mapping[str, str] | None = None,
    hash_workers: int | None = None,
) -> WeightsReport:
    """Check that ``model_dir`` holds a complete safetensors checkpoint; raise WeightsError."""
    started = time.monotonic()
    if not model_dir.exists():
        raise WeightsError(
            model_dir,
            [
                f"{model_dir} does not exist: mount the volume that holds the model at this path "
                "(check the pod's volumeMounts and the PersistentVolumeClaim) or fix the model path"
            ],
        )
    if not model_dir.is_dir():
        raise WeightsError(
            model_dir,
            [
                f"{model_dir} is not a directory: point model at the "
                "directory that holds config.json and the weights"
            ],
        )
    checker = _Checker(model_dir)
    checker.check_partial_downloads()
    checker.check_config()
    checker.check_tokenizer()
    weight_files, weight_bytes = checker.check_weights()
    checker.check_empty_files()
    hashed = 0
    if sha256:
        if checker.problems:
            checker.problems.append(
                "sha256 verification was not run because of the problems above; fix them first"
            )
        else:
            hashed = checker.check_sha256(sha256, workers=hash_workers)
    if checker.problems:
        raise WeightsError(model_dir, checker.problems)
    return WeightsReport(
        model_dir=model_dir,
        weight_files=weight_files,
        weight_bytes=weight_bytes,
        hashed_files=hashed,
        warnings=tuple(checker.warnings),
        seconds=time.monotonic() - started,
    )


class _Checker:
    def __init__(self, model_dir: Path) -> None:
        self.dir = model_dir
        self.problems: list[str] = []
        self.warnings: list[str] = []
        #: Files already reported, so that one bad file gives one message.
        self.reported: set[str] = set()
        #: Top-level entries: name -> size in bytes (None for a broken symlink), regular files only.
        self.files: dict[str, int | None] = {}
        with os.scandir(model_dir) as entries:
            for entry in entries:
                try:
                    if not entry.is_file():  # follows symlinks (Hugging Face cache snapshots)
                        if entry.is_symlink() and not entry.is_dir():  # a dangling link
                            self.files[entry.name] = None
                        continue
                    self.files[entry.name] = entry.stat().st_size
                except FileNotFoundError:
                    self.files[entry.name] = None

    @property
    def fix(self) -> str:
        return REDOWNLOAD.format(dir=self.dir)

    def problem(self, name: str, message: str) -> None:
        if name not in self.reported:
            self.reported.add(name)
            self.problems.append(message)

    def path(self, name: str) -> Path:
        return self.dir / name

    def size(self, name: str) -> int | None:
        """Size of a top-level or nested file; None if it is missing or a broken link."""
        if "/" not in name:
            return self.files.get(name)
        try:
            stat = self.path(name).stat()
        except OSError:
            return None
        return stat.st_size if self.path(name).is_file() else None

    def missing_or_empty(self, name: str, what: str) -> bool:
        """Report ``name`` if it is missing, dangling or empty; True when it was reported."""
        path = self.path(name)
        size = self.size(name)
        if size is None:
            if path.is_symlink():
                self.problem(
                    name,
                    f"{what} {path} is a broken symlink (its target is gone): {self.fix}",
                )
            else:
                self.problem(name, f"{what} {path} is missing: {self.fix}")
            return True
        if size == 0:
            self.problem(
                name,
                f"{what} {path} is empty (0 bytes): the download was cut short; {self.fix}",
            )
            return True
        return False

    def read_json(self, name: str, what: str) -> Any:
        """The parsed JSON of a top-level file, or None after reporting why it is unusable."""
        if self.missing_or_empty(name, what):
            return None
        try:
            return json.loads(self.path(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.problem(
                name,
                f"{what} {self.path(name)} is not valid JSON ({exc}): the file is "
                f"damaged or truncated; {self.fix}",
            )
            return None

    def check_partial_downloads(self) -> None:
        for root, dirs, names in os.walk(self.dir):
            dirs.sort()
            for name in sorted(names):
                if name.endswith(PARTIAL_SUFFIXES):
                    path = Path(root, name)
                    rel = path.relative_to(self.dir).as_posix()
                    self.problem(
                        rel,
                        f"{path} is left over from an interrupted download: finish "
                        "the download (re-run it; it resumes) and remove partial "
                        "files",
                    )

    def check_config(self) -> None:
        config = self.read_json(CONFIG_FILE, "the model config")
        if config is not None and not isinstance(config, dict):
            self.problem(
                CONFIG_FILE,
                f"the model config {self.path(CONFIG_FILE)} is not a JSON object: {self.fix}",
            )

    def check_tokenizer(self) -> None:
        present = [name for name in TOKENIZER_FILES if self.files.get(name)]
        present += sorted(n for n in self.files if n.endswith(TIKTOKEN_SUFFIX) and self.files[n])
        if not present:
            for name in (*TOKENIZER_FILES, TOKENIZER_CONFIG):
                if self.files.get(name) == 0:
                    self.missing_or_empty(name, "the tokenizer file")
            looked_for = ", ".join((*TOKENIZER_FILES, f"*{TIKTOKEN_SUFFIX}"))
            self.problem(
                "<tokenizer>",
                f"no tokenizer in {self.dir} (looked for {looked_for}): "
                "copy the tokenizer files of the model repository along "
                "with the weights",
            )
        tokenizer_config = self.read_json(TOKENIZER_CONFIG, "the tokenizer config")
        if tokenizer_config is not None and not isinstance(tokenizer_config, dict):
            self.problem(
                TOKENIZER_CONFIG,
                f"the tokenizer config {self.path(TOKENIZER_CONFIG)} "
                f"is not a JSON object: {self.fix}",
            )

    def check_weights(self) -> tuple[int, int]:
        """Check the safetensors shards; return (file count, total bytes) of those present."""
        if INDEX_FILE in self.files:
            return self._check_indexed_shards()
        shards = sorted(n for n in self.files if n.endswith(".safetensors"))
        present = [n for n in shards if not self.missing_or_empty(n, "the weight file")]
        if not shards:
            self.problem(
                "<weights>",
                f"no *.safetensors weight file in {self.dir} (and no "
                f"{INDEX_FILE}): the weights were not copied; {self.fix}",
            )
        return len(present), sum(self.files[n] or 0 for n in present)

    def _check_indexed_shards(self) -> tuple[int, int]:
        index = self.read_json(INDEX_FILE, "the shard index")
        if index is None:
            return 0, 0
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            self.problem(
                INDEX_FILE,
                f"the shard index {self.path(INDEX_FILE)} has no weight_map: {self.fix}",
            )
            return 0, 0
        shards = sorted({str(shard) for shard in weight_map.values()})
        missing = [s for s in shards if self.missing_or_empty(s, "the weight shard")]
        present = [s for s in shards if s not in missing]
        total = sum(self.size(s) or 0 for s in present)
        metadata = index.get("metadata")
        declared = metadata.get("total_size") if isinstance(metadata, dict) else None
        if (
            not missing
            and isinstance(declared, int | float)
            and not isinstance(declared, bool)
            and total < declared
        ):
            self.problem(
                INDEX_FILE,
                f"the {len(shards)} weight shards in {self.dir} add up to "
                f"{total} bytes, less than the {int(declared)} bytes of "
                f"tensors that {INDEX_FILE} declares (metadata.total_size): "
                f"the download was truncated; {self.fix}",
            )
        return len(present), total

    def check_empty_files(self) -> None:
        for name, size in sorted(self.files.items()):
            if size != 0 or name in self.reported:
                continue
            path = self.path(name)
            if name.endswith(LOADED_SUFFIXES):
                self.problem(
                    name,
                    f"{path} is empty (0 bytes): the download was cut short; {self.fix}",
                )
            elif not name.startswith("."):
                self.warnings.append(f"{path} is empty (0 bytes)")

    def check_sha256(self, expected: Mapping[str, str], *, workers: int | None) -> int:
        """Hash every listed file (in parallel); report each mismatch. Returns files hashed."""
        jobs: list[tuple[str, Path, str]] = []
        for rel, digest in sorted(expected.items()):
            pure = PurePosixPath(rel)
            if pure.is_absolute() or ".." in pure.parts or not pure.parts:
                self.problem(
                    rel,
                    f"the sha256 list names {rel!r}, which is not a path inside the "
                    "model directory: fix the ModelDeployment's sha256 entries",
                )
                continue
            if self.missing_or_empty(rel, "the file listed for sha256 verification"):
                continue
            jobs.append((rel, self.path(rel), digest.strip().lower().removeprefix("sha256:")))
        if not jobs:
            return 0
        count = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="sha256") as pool:
            results = list(pool.map(_hash_file, (path for _, path, _ in jobs)))
        for (rel, path, want), got in zip(jobs, results, strict=True):
            if isinstance(got, OSError):
                self.problem(rel, f"could not read {path} to verify its sha256: {got}")
            elif got != want:
                self.problem(
                    rel,
                    f"sha256 mismatch for {path}: expected {want}, got {got}: the "
                    "file is corrupt or from another revision; re-download it",
                )
        return len(jobs)


def _hash_file(path: Path) -> str | OSError:
    digest = hashlib.sha256()
    try:
        with path.open("rb", buffering=0) as handle:
            buffer = bytearray(CHUNK_SIZE)
            view = memoryview(buffer)
            while read := handle.readinto(view):
                digest.update(view[:read])
    except OSError as exc:
        return exc
    return digest.hexdigest()
