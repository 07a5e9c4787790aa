"""What the process runner changes for a real-vLLM pod (pure parts: no vLLM, no cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gantry_runtime.launchspec import ENV_VAR, LaunchSpec
from localcluster import realvllm, tiny_models, venvs
from localcluster.runner import pod_targets

SPEC = LaunchSpec(
    model="/models/gpt-oss-20b",
    served_model_name="gpt-oss-20b",
    tensor_parallel_size=1,
    pipeline_parallel_size=1,
    max_model_len=65536,
    max_num_seqs=2,
    gpu_memory_utilization=0.9,
    shutdown_timeout=30,
    tool_call_parser="openai",
    reasoning_parser="openai_gptoss",
    sha256={"model-00001-of-00002.safetensors": "ab" * 32},
)
POD_ENV = {
    ENV_VAR: SPEC.to_json(),
    "HOME": "/var/cache/gantry",
    "VLLM_CACHE_ROOT": "/var/cache/gantry/vllm",
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "",
    realvllm.MODE_VAR: realvllm.REAL,
}


def fake_model(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"architectures": ["GptOssForCausalLM"]}')
    (directory / tiny_models.MANIFEST).write_text(f"{'cd' * 32}  config.json\n")
    return directory


def prepare(tmp_path: Path, env: dict[str, str] | None = None) -> realvllm.Prepared:
    return realvllm.prepare(
        pod_env=env or POD_ENV,
        pod_dir=tmp_path / "pods" / "abc",
        models_dir=tmp_path / "models",
        family_of=lambda: pytest.fail("the model folder exists: nothing to stage"),
        host="127.1.0.5",
        vllm_python=Path("/opt/vllm-cpu/bin/python"),
        base_env={"PATH": "/usr/bin"},
    )


def test_the_launch_spec_points_at_the_stand_in_model_with_its_digests(tmp_path: Path) -> None:
    fake_model(tmp_path / "models" / "gpt-oss-20b")
    prepared = prepare(tmp_path)
    spec = LaunchSpec.from_json(prepared.env[ENV_VAR])
    assert spec.model == str(tmp_path / "models" / "gpt-oss-20b")
    assert spec.sha256 == {"config.json": "cd" * 32}
    assert spec.extra_args[-2:] == (
        ("--kv-cache-memory-bytes", str(realvllm.KV_CACHE_BYTES)),
        ("--enforce-eager", None),
    )
    # Everything else is the operator's.
    assert (spec.tool_call_parser, spec.reasoning_parser) == ("openai", "openai_gptoss")
    assert (spec.max_model_len, spec.max_num_seqs, spec.shutdown_timeout) == (65536, 2, 30)
    assert prepared.argv == [sys.executable, "-m", "gantry_runtime", "serve"]


def test_the_environment_is_the_pods_with_each_substitution(tmp_path: Path) -> None:
    fake_model(tmp_path / "models" / "gpt-oss-20b")
    prepared = prepare(tmp_path)
    env = prepared.env
    pod_dir = tmp_path / "pods" / "abc"
    assert env["HOME"] == str(pod_dir / "cache")
    assert env["VLLM_CACHE_ROOT"] == str(pod_dir / "cache" / "vllm")
    assert env["TMPDIR"] == str(pod_dir / "tmp")
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["GANTRY_HOST"] == "127.1.0.5"
    assert env["GANTRY_TERMINATION_LOG"] == str(prepared.termination_log)
    shim = Path(env["PATH"].split(":")[0]) / "vllm"
    assert "/opt/vllm-cpu/bin/python" in shim.read_text()
    assert "vllm.entrypoints.openai.api_server" in shim.read_text()
    notes = "\n".join(prepared.notes)
    for needle in ("model path /models/gpt-oss-20b", "sha256 list", "--kv-cache-memory-bytes",
                   "OMP_NUM_THREADS=1", "removed VLLM_CPU_KVCACHE_SPACE", "`vllm serve` ->",
                   "env HOME=/var/cache/gantry"):  # fmt: skip
        assert needle in notes


def test_a_missing_model_folder_is_staged_from_the_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = fake_model(tmp_path / "cache" / "gpt-oss")
    monkeypatch.setattr(tiny_models, "ensure_tiny_model", lambda family: source)
    asked: list[str] = []

    def family() -> str:
        asked.append("gpt-oss")
        return "gpt-oss"

    prepared = realvllm.prepare(
        pod_env=POD_ENV,
        pod_dir=tmp_path / "pods" / "abc",
        models_dir=tmp_path / "models",
        family_of=family,
        host="127.1.0.5",
        vllm_python=Path("/opt/vllm-cpu/bin/python"),
    )
    staged = tmp_path / "models" / "gpt-oss-20b"
    assert asked == ["gpt-oss"]
    assert (staged / "config.json").resolve() == source / "config.json"
    assert f"staged the tiny gpt-oss model as {staged}" in prepared.notes


def test_sources_other_than_a_volume_cannot_run_real(tmp_path: Path) -> None:
    spec = LaunchSpec.from_json(SPEC.to_json())
    remote = {**POD_ENV, ENV_VAR: json.dumps({**json.loads(spec.to_json()), "model": "s3://b/m"})}
    with pytest.raises(realvllm.RealVllmError, match="only pvc and image sources"):
        prepare(tmp_path, remote)


def test_every_substitution_has_a_reason() -> None:
    assert len(realvllm.SUBSTITUTIONS) >= 5
    assert all(what.strip() and why.strip() for what, why in realvllm.SUBSTITUTIONS)


def test_pods_ask_for_real_vllm_through_their_env() -> None:
    def pod(uid: str, env: list[dict[str, str]]) -> dict[str, object]:
        return {
            "metadata": {"uid": uid, "namespace": "ns", "name": uid,
                         "labels": {"gantry.dev/model-deployment": "md"}},
            "spec": {"nodeName": "n", "containers": [{"name": "runtime", "env": env}]},
            "status": {"phase": "Running", "podIP": "127.1.0.9"},
        }  # fmt: skip

    real = [{"name": realvllm.MODE_VAR, "value": "vllm"}]
    targets = pod_targets([pod("a", real), pod("b", [])], {"n"}, max_grace=60)
    assert targets["a"].real
    assert targets["a"].model_deployment == "md"
    assert not targets["b"].real
    everything = pod_targets([pod("b", [])], {"n"}, max_grace=60, all_real=True)
    assert everything["b"].real


def test_tiny_model_families_by_architecture() -> None:
    assert tiny_models.family_for(["GptOssForCausalLM"]) == "gpt-oss"
    assert tiny_models.family_for(["Qwen3ForCausalLM"]) == "qwen3"
    with pytest.raises(ValueError, match="MLA"):
        tiny_models.family_for(["DeepseekV3ForCausalLM"])


def test_install_log_status(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    assert venvs.log_status(log) is None
    log.write_text("Collecting torch\n")
    assert venvs.log_status(log) is None
    log.write_text("Collecting torch\ndone 0\n")
    assert venvs.log_status(log) == 0
    log.write_text("done 1\n")
    assert venvs.log_status(log) == 1


GROUP_SPEC = LaunchSpec.from_json(
    json.dumps(
        {
            **json.loads(SPEC.to_json()),
            "tensor_parallel_size": 4,
            "pipeline_parallel_size": 2,
            "nnodes": 2,
            "layout": "pipeline",
        }
    )
)


def test_a_multi_node_pod_runs_one_cpu_process_per_stage_compiled_on_loopback(
    tmp_path: Path,
) -> None:
    fake_model(tmp_path / "models" / "gpt-oss-20b")
    env = {
        **POD_ENV,
        ENV_VAR: GROUP_SPEC.to_json(),
        "GLOO_SOCKET_IFNAME": "eth0",
        "NCCL_SOCKET_IFNAME": "eth0",
    }
    prepared = prepare(tmp_path, env)
    spec = LaunchSpec.from_json(prepared.env[ENV_VAR])
    assert (spec.nnodes, spec.tensor_parallel_size, spec.pipeline_parallel_size) == (2, 1, 2)
    assert spec.extra_args[-1] == ("--kv-cache-memory-bytes", str(realvllm.KV_CACHE_BYTES))
    assert ("--enforce-eager", None) not in spec.extra_args
    assert prepared.env["GLOO_SOCKET_IFNAME"] == prepared.env["NCCL_SOCKET_IFNAME"] == "lo"
    notes = "\n".join(prepared.notes)
    assert "--tensor-parallel-size 4 -> 1" in notes
    assert "env GLOO_SOCKET_IFNAME=eth0 -> lo" in notes
    assert f"({realvllm.CLI_MODULE})" in notes


FAKE_PYTHON = """#!/bin/sh
# Runs the shim (its shebang names this file) with a real Python, and prints any other argv.
case "$1" in
  */vllm) exec {python} "$@" ;;
  *) printf '%s\\0' "$@" ;;
esac
"""


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["serve", "/m", "--port", "8000"], "vllm.entrypoints.openai.api_server"),
        (["serve", "/m", "--nnodes", "2", "--node-rank", "1", "--headless"], None),
    ],
)
def test_the_shim_runs_vllms_cli_for_a_group_and_the_api_server_otherwise(
    tmp_path: Path, args: list[str], module: str | None
) -> None:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    shim = realvllm.shim_dir(tmp_path, fake) / "vllm"
    ran = subprocess.run([str(shim), *args], capture_output=True, text=True, check=True)
    argv = ran.stdout.split("\0")[:-1]
    if module is not None:
        assert argv == ["-m", module, "--model", *args[1:]]
    else:
        assert argv[0] == "-c"
        assert "from vllm.entrypoints.cli.main import main" in argv[1]
        assert '+ "+cpu"' in argv[1]
        assert argv[2:] == args
