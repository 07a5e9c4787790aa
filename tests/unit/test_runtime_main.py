"""The gantry-runtime command line: check, argv, configuration errors, simulator dispatch."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gantry_runtime.launchspec import ENV_VAR, LaunchSpec, vllm_argv
from gantry_runtime.main import main


def make_spec(model: Path, **overrides: object) -> LaunchSpec:
    fields: dict[str, object] = {
        "model": str(model),
        "served_model_name": "gpt-oss-120b",
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "max_model_len": 131072,
        "max_num_seqs": 64,
        "gpu_memory_utilization": 0.9,
        "shutdown_timeout": 30,
        "tool_call_parser": "openai",
        "reasoning_parser": "openai_gptoss",
        **overrides,
    }
    return LaunchSpec(**fields)  # type: ignore[arg-type]


def make_model_dir(path: Path) -> Path:
    path.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (path / name).write_text("{}")
    (path / "model.safetensors").write_bytes(b"w")
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (ENV_VAR, "GANTRY_RUNTIME_MODE", "GANTRY_HOST"):
        monkeypatch.delenv(var, raising=False)
    # A termination log that exists, so that the runtime writes its message there.
    (tmp_path / "termination-log").write_text("")
    monkeypatch.setenv("GANTRY_TERMINATION_LOG", str(tmp_path / "termination-log"))


def use_spec(monkeypatch: pytest.MonkeyPatch, spec: LaunchSpec) -> None:
    monkeypatch.setenv(ENV_VAR, spec.to_json())


def test_check_verifies_and_prints_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_spec(make_model_dir(tmp_path / "model"))
    use_spec(monkeypatch, spec)
    assert main(["check"]) == 0
    captured = capsys.readouterr()
    assert captured.out == shlex.join(vllm_argv(spec)) + "\n"
    assert f"Verified weights in {spec.model}" in captured.err


def test_check_fails_on_incomplete_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_model_dir(tmp_path / "model")
    (model / "tokenizer_config.json").unlink()
    use_spec(monkeypatch, make_spec(model))
    assert main(["check"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "tokenizer_config.json is missing" in captured.err
    assert "tokenizer_config.json is missing" in (tmp_path / "termination-log").read_text()


def test_argv_prints_json_with_the_host_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_spec(tmp_path / "not-checked")
    use_spec(monkeypatch, spec)
    monkeypatch.setenv("GANTRY_HOST", "127.0.0.7")
    assert main(["argv"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == vllm_argv(spec, host="127.0.0.7")
    assert printed[printed.index("--host") + 1] == "127.0.0.7"


@pytest.mark.parametrize("command", ["serve", "check", "argv"])
def test_missing_launch_spec(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command]) == 2
    assert f"{ENV_VAR} is not set" in capsys.readouterr().err


def test_invalid_launch_spec(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_VAR, '{"model": "/m", "surprise": 1}')
    assert main(["argv"]) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['surprise']" in err
    assert "unknown keys ['surprise']" in (tmp_path / "termination-log").read_text()


def test_unknown_runtime_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    use_spec(monkeypatch, make_spec(tmp_path))
    monkeypatch.setenv("GANTRY_RUNTIME_MODE", "gpu")
    assert main(["serve"]) == 2
    assert "GANTRY_RUNTIME_MODE='gpu' is not one of vllm, simulator" in capsys.readouterr().err


@pytest.fixture
def simulator_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Stand in for gantry_runtime.simulator (owned elsewhere) to test the dispatch alone."""
    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        return 7

    module = types.ModuleType("gantry_runtime.simulator")
    module.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gantry_runtime.simulator", module)
    return calls


@pytest.mark.parametrize(
    ("args", "mode"), [(["serve"], "simulator"), (["serve", "--simulate"], ""), ([], "Simulator")]
)
def test_simulator_gets_the_argv_without_vllm_serve(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    simulator_calls: list[list[str]],
    args: list[str],
    mode: str,
) -> None:
    spec = make_spec(tmp_path / "no-weights-needed")
    use_spec(monkeypatch, spec)
    monkeypatch.setenv("GANTRY_RUNTIME_MODE", mode)
    monkeypatch.setenv("GANTRY_HOST", "127.0.0.9")
    assert main(args) == 7
    expected = vllm_argv(spec, host="127.0.0.9")
    assert simulator_calls == [expected[2:]]
    captured = capsys.readouterr()
    assert captured.out == shlex.join(expected) + "\n"
    assert "Simulator mode: skipped the weights check" in captured.err


def test_console_script(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "m")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gantry-runtime"), "argv"],
        env={"PATH": "/usr/bin:/bin", ENV_VAR: spec.to_json()},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == vllm_argv(spec)
