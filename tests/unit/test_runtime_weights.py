"""The offline weights check (gantry_runtime.weights) on model directories built in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from gantry_runtime.launchspec import LaunchSpec
from gantry_runtime.weights import (
    CHUNK_SIZE,
    WeightsError,
    WeightsReport,
    check_model_dir,
    verify_weights,
)

SHARDS = {
    "model-00001-of-00002.safetensors": b"\x08" * 300,
    "model-00002-of-00002.safetensors": b"\x09" * 200,
}


def make_model_dir(root: Path, *, indexed: bool = True, total_size: int = 400) -> Path:
    """A small but complete Hugging Face style snapshot (content is not real safetensors)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["GptOssForCausalLM"]}))
    (root / "generation_config.json").write_text("{}")
    (root / "tokenizer.json").write_text('{"version": "1.0"}')
    (root / "tokenizer_config.json").write_text("{}")
    if indexed:
        for name, content in SHARDS.items():
            (root / name).write_bytes(content)
        index = {
            "metadata": {"total_size": total_size},
            "weight_map": {
                "a.weight": "model-00001-of-00002.safetensors",
                "b.weight": "model-00001-of-00002.safetensors",
                "c.weight": "model-00002-of-00002.safetensors",
            },
        }
        (root / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        (root / "model.safetensors").write_bytes(b"\x07" * 100)
    return root


def problems(path: Path, sha256: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(WeightsError) as info:
        check_model_dir(path, sha256=sha256)
    assert str(path) in str(info.value)
    return info.value.problems


def only_problem(path: Path) -> str:
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_complete_indexed_snapshot_passes(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    report = check_model_dir(model)
    assert (report.weight_files, report.weight_bytes, report.hashed_files) == (2, 500, 0)
    assert report.warnings == ()
    assert "2 safetensors files" in report.summary()


def test_single_file_checkpoint_without_index_passes(tmp_path: Path) -> None:
    report = check_model_dir(make_model_dir(tmp_path / "m", indexed=False))
    assert (report.weight_files, report.weight_bytes) == (1, 100)


def test_missing_directory_says_to_mount_the_volume(tmp_path: Path) -> None:
    message = only_problem(tmp_path / "absent")
    assert "does not exist" in message
    assert "volumeMounts" in message


def test_a_file_is_not_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert "is not a directory" in only_problem(tmp_path / "f")


def test_missing_config_is_named_with_the_fix(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "config.json").unlink()
    message = only_problem(model)
    assert f"{model / 'config.json'} is missing" in message
    assert f"--local-dir {model}" in message


@pytest.mark.parametrize(
    ("content", "expected"), [("{not json", "not valid JSON"), ("[1]", "not a JSON object")]
)
def test_config_must_be_a_json_object(tmp_path: Path, content: str, expected: str) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "config.json").write_text(content)
    assert expected in only_problem(model)


def test_missing_tokenizer(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "tokenizer.json").unlink()
    message = only_problem(model)
    assert "no tokenizer" in message
    assert "tokenizer.json, tokenizer.model, tiktoken.model, *.tiktoken" in message


@pytest.mark.parametrize("name", ["tokenizer.model", "tiktoken.model", "qwen.tiktoken"])
def test_other_tokenizer_formats_are_accepted(tmp_path: Path, name: str) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "tokenizer.json").rename(model / name)
    check_model_dir(model)


def test_missing_tokenizer_config(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "tokenizer_config.json").unlink()
    assert "tokenizer_config.json is missing" in only_problem(model)


def test_every_missing_shard_is_named(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    for name in SHARDS:
        (model / name).unlink()
    found = problems(model)
    assert len(found) == 2
    for name in SHARDS:
        assert any(f"{model / name} is missing" in p for p in found), found


def test_empty_shard(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "model-00002-of-00002.safetensors").write_bytes(b"")
    message = only_problem(model)
    assert "model-00002-of-00002.safetensors is empty (0 bytes)" in message


def test_shards_smaller_than_the_declared_total_are_a_truncated_download(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m", total_size=501)
    message = only_problem(model)
    assert "add up to 500 bytes, less than the 501 bytes" in message
    assert "truncated" in message


def test_broken_symlink_shard(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    shard = model / "model-00001-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to(tmp_path / "blobs" / "gone")
    assert "is a broken symlink" in only_problem(model)


def test_symlinked_snapshot_like_the_hub_cache_passes(tmp_path: Path) -> None:
    blobs = make_model_dir(tmp_path / "blobs")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for entry in blobs.iterdir():
        (snapshot / entry.name).symlink_to(entry)
    assert check_model_dir(snapshot).weight_bytes == 500


def test_index_without_weight_map(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "model.safetensors.index.json").write_text('{"metadata": {}}')
    assert "has no weight_map" in only_problem(model)


def test_no_weights_at_all(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m", indexed=False)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"x")
    assert "no *.safetensors weight file" in only_problem(model)


@pytest.mark.parametrize(
    "leftover",
    [
        ".cache/huggingface/download/model-00001-of-00002.safetensors.abc.incomplete",
        "model-00003-of-00003.safetensors.part",
    ],
)
def test_interrupted_download_leftovers_are_flagged(tmp_path: Path, leftover: str) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / leftover).parent.mkdir(parents=True, exist_ok=True)
    (model / leftover).write_bytes(b"partial")
    message = only_problem(model)
    assert str(model / leftover) in message
    assert "interrupted download" in message


def test_empty_loaded_file_is_a_problem_and_empty_other_file_a_warning(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "README.md").write_text("")
    assert check_model_dir(model).warnings == (f"{model / 'README.md'} is empty (0 bytes)",)
    (model / "generation_config.json").write_text("")
    assert "generation_config.json is empty (0 bytes)" in only_problem(model)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "config.json").unlink()
    (model / "tokenizer_config.json").unlink()
    (model / "model-00001-of-00002.safetensors").unlink()
    found = problems(model)
    assert len(found) == 3
    assert str(model) in str(WeightsError(model, found))


def test_stat_only_without_sha256(tmp_path: Path) -> None:
    """A 64 GiB (sparse) shard is checked in well under a second: nothing is read."""
    model = make_model_dir(tmp_path / "m", total_size=64 * 2**30)
    big = model / "model-00002-of-00002.safetensors"
    os.truncate(big, 64 * 2**30)
    started = time.monotonic()
    report = check_model_dir(model)
    assert time.monotonic() - started < 1.0
    assert report.weight_bytes == 64 * 2**30 + 300


def test_sha256_match_hashes_every_listed_file(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    big = b"\x01" * (CHUNK_SIZE + 3)  # more than one chunk
    (model / "model-00002-of-00002.safetensors").write_bytes(big)
    expected = {
        "model-00001-of-00002.safetensors": sha(SHARDS["model-00001-of-00002.safetensors"]),
        "model-00002-of-00002.safetensors": "sha256:" + sha(big).upper(),
        "config.json": sha((model / "config.json").read_bytes()),
    }
    report = check_model_dir(model, sha256=expected)
    assert report.hashed_files == 3


def test_every_sha256_mismatch_is_reported(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    expected = {name: sha(b"something else") for name in SHARDS}
    expected["config.json"] = sha((model / "config.json").read_bytes())
    found = problems(model, sha256=expected)
    assert len(found) == 2
    for name, content in SHARDS.items():
        assert any(
            f"sha256 mismatch for {model / name}: expected {sha(b'something else')}, "
            f"got {sha(content)}" in p
            for p in found
        ), found


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/passwd", ""])
def test_sha256_paths_must_stay_inside_the_model_directory(tmp_path: Path, name: str) -> None:
    model = make_model_dir(tmp_path / "m")
    assert "not a path inside the model directory" in only_problem_sha(model, {name: "00"})


def test_sha256_of_a_missing_file(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    message = only_problem_sha(model, {"extra.safetensors": "00"})
    assert f"{model / 'extra.safetensors'} is missing" in message


def test_sha256_is_not_run_when_the_structure_is_broken(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "config.json").unlink()
    found = problems(model, sha256={name: "00" for name in SHARDS})
    assert len(found) == 2
    assert "sha256 verification was not run" in found[1]


def only_problem_sha(model: Path, expected: dict[str, str]) -> str:
    found = problems(model, sha256=expected)
    assert len(found) == 1, found
    return found[0]


def spec_for(model: str, **overrides: object) -> LaunchSpec:
    fields: dict[str, object] = {
        "model": model,
        "served_model_name": "m",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "max_model_len": 4096,
        "max_num_seqs": 8,
        "gpu_memory_utilization": 0.9,
        "shutdown_timeout": 5,
        **overrides,
    }
    return LaunchSpec(**fields)  # type: ignore[arg-type]


def test_verify_weights_checks_local_models_and_logs_a_summary(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    lines: list[str] = []
    report = verify_weights(spec_for(str(model)), log=lines.append)
    assert isinstance(report, WeightsReport)
    assert lines == [report.summary()]


def test_verify_weights_raises_for_an_incomplete_local_model(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        verify_weights(spec_for(str(tmp_path / "nothing")), log=print)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("s3://bucket/gpt-oss-120b", "streams the weights from object storage"),
        ("openai/gpt-oss-120b", "Hugging Face cache"),
        ("/models/not-there", "verification turned off"),
    ],
)
def test_verify_weights_skips_when_turned_off_and_says_why(model: str, reason: str) -> None:
    lines: list[str] = []
    spec = spec_for(model, verify_local_weights=False, sha256={"a": "00"})
    assert verify_weights(spec, log=lines.append) is None
    assert len(lines) == 1
    assert reason in lines[0]
    assert "sha256 list is ignored" in lines[0]


def test_verify_weights_refuses_a_uri_marked_local() -> None:
    with pytest.raises(WeightsError, match="is a URI but verify_local_weights is true"):
        verify_weights(spec_for("s3://bucket/m"), log=print)
