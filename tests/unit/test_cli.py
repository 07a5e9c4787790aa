"""The `gantry` CLI: `gantry plan` and `gantry render`, called in-process."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gantry_operator import gpus, planner
from gantry_operator.catalog import preset, presets
from gantry_operator.cli import PLAN_HEADER, build_parser, flag_message, main, plan_spec
from gantry_operator.gpus import GIB
from gantry_operator.spec import SpecError, parse

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def table(text: str) -> list[dict[str, str]]:
    """Rows of a plan table, by header; columns are separated by two or more spaces. The table
    ends at the first blank line (notes follow)."""
    lines = text.split("\n\n")[0].splitlines()
    assert lines[0].split() == " ".join(PLAN_HEADER).split()
    rows = []
    for line in lines[1:]:
        if "does not fit" in line:
            continue
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        assert len(cells) == len(PLAN_HEADER), line
        rows.append(dict(zip(PLAN_HEADER, cells, strict=True)))
    return rows


def test_plan_prints_a_row_with_tp_and_kv_tokens() -> None:
    code, text = run("plan", "gpt-oss-120b", "--gpu", "H100-80GB", "--context", "131072")
    assert code == 0
    (row,) = table(text)
    want = planner.plan_request(
        planner.Request(
            model=preset("gpt-oss-120b"), gpu=gpus.profile("H100-80GB"), max_model_len=131072
        )
    )
    assert row["MODEL"] == "gpt-oss-120b"
    assert row["GPU"] == "H100-80GB"
    assert row["TP"] == str(want.tensor_parallel_size) == "2"
    assert row["KV TOKENS"] == f"{want.kv_cache_tokens:,}"
    assert row["CONTEXT"] == "131072"
    assert row["UTIL"] == "0.90"
    assert row["WEIGHTS/GPU"] == f"{want.weight_bytes_per_gpu / GIB:.1f} GiB" == "33.3 GiB"
    assert row["HEADROOM"] == f"{want.headroom_bytes_per_gpu / GIB:.1f} GiB"
    # The note says what context one GPU holds, with the flag that sets it.
    assert (
        "gpt-oss-120b on H100-80GB: 1 x H100-80GB (TP=1 PP=1) fits --context=76800 (not 131072) "
        "with the 0.5 GiB safety margin"
    ) in text


def test_plan_options_reach_the_planner() -> None:
    code, text = run(
        "plan", "gpt-oss-120b", "--concurrency", "4", "--kv-cache-dtype", "fp8",
        "--utilization", "0.85", "--context", "65536",
    )  # fmt: skip
    assert code == 0
    (row,) = table(text)
    want = planner.plan_request(
        planner.Request(
            model=preset("gpt-oss-120b"),
            gpu=gpus.profile("H100-80GB"),
            max_model_len=65536,
            target_concurrency=4,
            gpu_memory_utilization=0.85,
            kv_cache_dtype="fp8",
        )
    )
    assert (row["TP"], row["GPUS"], row["UTIL"]) == (
        str(want.tensor_parallel_size),
        str(want.gpus_per_replica),
        "0.85",
    )
    assert row["KV TOKENS"] == f"{want.kv_cache_tokens:,}"


def test_plan_with_explicit_layout() -> None:
    code, text = run("plan", "gpt-oss-20b", "--tp", "2", "--pp", "2")
    assert code == 0
    (row,) = table(text)
    assert (row["TP"], row["PP"], row["GPUS"]) == ("2", "2", "4")


def test_plan_multi_node() -> None:
    code, text = run("plan", "kimi-k2", "--gpu", "H100-80GB")
    assert code == 0
    (row,) = table(text)
    assert (row["GPUS"], row["TP"], row["PP"], row["NODES"]) == ("16", "8", "2", "2")
    assert (row["DP"], row["LAYOUT"]) == ("1", "pipeline")
    assert "kimi-k2 on H100-80GB: 2 nodes per replica (8 GPUs per node)" in text
    assert "LeaderWorkerSet group of 2 pods" in text
    assert "does not serve" not in text
    # What each pod of the group holds.
    assert "kimi-k2 on H100-80GB: pipeline layout, one pod per node:" in text
    assert "  worker 0 (leader): API server, 8 GPUs, pipeline stage 0 (ranks 0-7)" in text
    assert "  worker 1: headless, 8 GPUs, pipeline stage 1 (ranks 8-15)" in text


def test_plan_multi_node_data_parallel_group_as_data() -> None:
    code, text = run("plan", "kimi-k2", "--gpu", "H200", "-o", "json")
    assert code == 0
    (plan,) = json.loads(text)["plans"]
    assert (plan["layout"], plan["dataParallelSize"], plan["dataParallelSizeLocal"]) == (
        "data-parallel",
        16,
        8,
    )
    assert plan["group"] == [
        {"workerIndex": 0, "role": "leader", "gpus": 8, "apiServer": True,
         "dataParallelRanks": [0, 7]},
        {"workerIndex": 1, "role": "worker", "gpus": 8, "apiServer": False,
         "dataParallelRanks": [8, 15]},
    ]  # fmt: skip


def test_plan_gpus_per_node() -> None:
    code, text = run("plan", "gpt-oss-120b", "--gpu", "L4", "--gpus-per-node", "4")
    assert code == 0
    (row,) = table(text)
    want = planner.plan_request(
        planner.Request(
            model=preset("gpt-oss-120b"),
            gpu=gpus.profile("L4"),
            max_model_len=131072,
            gpus_per_node=4,
        )
    )
    assert row["NODES"] == str(want.nodes_per_replica) != "1"
    code, text = run("plan", "gpt-oss-120b", "--gpu", "L4")
    (row,) = table(text)
    assert (row["TP"], row["NODES"]) == ("8", "1")  # 8-GPU L4 servers by default


def test_plan_every_gpu() -> None:
    code, text = run("plan", "gpt-oss-20b", "--gpu", "all")
    assert code == 0
    assert [row["GPU"] for row in table(text)] == list(gpus.PROFILES)


def test_plan_every_gpu_with_some_that_do_not_fit() -> None:
    code, text = run("plan", "deepseek-r1", "--gpu", "all")
    assert code == 0  # some GPU types fit
    fitting = [row["GPU"] for row in table(text)]
    assert "H200" in fitting
    assert "A100-80GB" not in fitting
    assert "deepseek-r1 on A100-80GB: does not fit: " in text
    assert "deepseek-r1 on RTX-A4000: does not fit: " in text
    assert "needs GPU compute capability 8.9 or newer" in text


def test_plan_does_not_fit_exits_1_with_the_reason() -> None:
    code, text = run("plan", "gpt-oss-120b", "--count", "1", "--concurrency", "4")
    assert code == 1
    assert text.startswith("gpt-oss-120b on H100-80GB: does not fit: ")
    assert "needs at least 2 x H100-80GB" in text
    assert "--count=1 leaves 3.2 GiB per GPU for KV cache" in text  # the flag, not the field
    assert "--context=18432 would fit" in text
    assert "MODEL" not in text  # no table when nothing fits


def test_plan_list() -> None:
    code, text = run("plan", "--list")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["MODEL", "ARCHITECTURE"]
    listed = [line.split()[0] for line in lines[1 : 1 + len(presets())]]
    assert listed == list(presets())
    first = lines[1].split()
    assert first[:3] == ["gpt-oss-120b", "GptOssForCausalLM", "116.8B/5.1B"]
    assert first[3:] == ["60.8", "GiB", "mxfp4", "gqa", "131072"]  # the checkpoint
    assert lines[-1] == "GPU types: " + ", ".join(gpus.PROFILES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan"], "gantry plan: name a model"),
        (["plan", "llama-9000"], "gantry plan: unknown model 'llama-9000'"),
        (
            ["plan", "gpt-oss-20b", "--gpu", "RTX-4090"],
            "gantry plan: --gpu: 'RTX-4090' is not valid: use one of H100-80GB, H100-NVL,",
        ),
    ],
)
def test_plan_usage_errors_exit_2(argv: list[str], message: str) -> None:
    code, text = run(*argv)
    assert code == 2
    assert text.startswith(message)


def test_render_examples_directory() -> None:
    code, text = run("render", str(EXAMPLES))
    assert code == 0
    docs = list(yaml.safe_load_all(text))
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert kinds == [
        ("LeaderWorkerSet", "deepseek-v3"),  # a replica spans two H100 nodes
        ("Service", "deepseek-v3"),
        ("Deployment", "gpt-oss-120b"),
        ("Service", "gpt-oss-120b"),
        ("Deployment", "gpt-oss-20b"),
        ("Service", "gpt-oss-20b"),
        ("PodDisruptionBudget", "gpt-oss-20b"),  # the 2-replica example
        ("LeaderWorkerSet", "kimi-k2"),
        ("Service", "kimi-k2"),
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"default"}
    limits = docs[2]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"  # 120b, four full-context sequences: TP 2


def test_render_namespace_option() -> None:
    code, text = run("render", str(EXAMPLES / "gpt-oss-20b.yaml"), "-n", "llm")
    assert code == 0
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(text)} == {"llm"}


def test_render_argv() -> None:
    code, text = run("render", str(EXAMPLES), "--argv")
    assert code == 0
    lines = text.splitlines()
    assert any(line.startswith("# gpt-oss-120b: TP=2 PP=1 on 2 x H100-80GB") for line in lines)
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert len(commands) >= 4
    for argv in commands:
        assert argv[:2] == ["vllm", "serve"]
    big = next(argv for argv in commands if argv[2] == "/models/openai/gpt-oss-120b")
    assert big[big.index("--tensor-parallel-size") + 1] == "2"
    assert big[big.index("--max-model-len") + 1] == "131072"
    assert "--no-enable-prefix-caching" in big


def test_render_reports_a_bad_spec(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}},
                {
                    "apiVersion": "gantry.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "metadata": {"name": "bad"},
                    "spec": {
                        "model": {"preset": "gpt-oss-20b"},
                        "source": {"huggingFace": {"repo": "openai/gpt-oss-20b"}},
                        "gpu": {"type": "H100-80GB"},
                    },
                },
            ]
        )
    )
    code, text = run("render", str(bad))
    assert code == 1
    assert text.startswith(f"gantry render: {bad}: bad: spec.source.huggingFace: ")


def test_render_reports_a_spec_that_does_not_fit(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "gantry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "huge"},
        "spec": {
            "model": {"preset": "kimi-k2"},
            "source": {"pvc": {"claimName": "m"}},
            "gpu": {"type": "L4", "perNode": 4},
        },
    }
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, text = run("render", str(path))
    assert code == 1
    assert "huge: kimi-k2 at 131072 context does not fit on up to 32 x L4" in text


def test_render_refuses_multi_node_replicas_as_the_operator_does(tmp_path: Path) -> None:
    """With a cluster policy that does not enable LeaderWorkerSet, as the operator would."""
    doc = {
        "apiVersion": "gantry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "wide"},
        "spec": {
            "model": {"preset": "kimi-k2"},
            "source": {"pvc": {"claimName": "m"}},
            "gpu": {"type": "H100-80GB"},
        },
    }
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(doc))
    policy = tmp_path / "policy.yaml"
    policy.write_text("multiNode: {enabled: false}\n")
    code, text = run("render", str(path), "--policy", str(policy))
    assert code == 1
    assert text.startswith(f"gantry render: {path}: wide: 2 nodes per replica (8 GPUs per node)")
    assert "leaderWorkerSet.enabled=true" in text
    code, text = run("render", str(path))
    assert code == 0
    assert [d["kind"] for d in yaml.safe_load_all(text)] == ["LeaderWorkerSet", "Service"]


def test_render_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO((EXAMPLES / "gpt-oss-20b.yaml").read_text()))
    code, text = run("render", "-")
    assert code == 0
    assert [d["kind"] for d in yaml.safe_load_all(text)] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]


# --- one validation path: the flags go through spec.parse -------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--context", "0"], "--context: 0 is not valid: use an integer of at least 256"),
        (["--context", "-5"], "--context: -5 is not valid: use an integer of at least 256"),
        (["--concurrency", "-1"], "--concurrency: -1 is not valid: use an integer from 1 to 4096"),
        (["--tp", "0"], "--tp: 0 is not valid: use an integer from 1 to 64"),
        (["--count", "0"], "--count: 0 is not valid: use an integer from 1 to 128"),
        (["--count", "-4"], "--count: -4 is not valid: use an integer from 1 to 128"),
        (
            ["--utilization", "1.5"],
            "--utilization: 1.5 is not valid: use a number from 0.5 to 0.98",
        ),
        (["--pp", "100"], "--pp: 100 is not valid: use an integer from 1 to 16"),
        (["--gpus-per-node", "0"], "--gpus-per-node: 0 is not valid: use an integer from 1 to 16"),
        (
            ["--safety-margin", "-1"],
            "--safety-margin: -1.0 is not valid: use a number from 0 to 64",
        ),
        (["--kv-cache-dtype", "fp4"], "--kv-cache-dtype: 'fp4' is not valid: use one of auto, fp8"),
        (
            ["--tp", "8", "--pp", "2", "--count", "4"],
            "--count: 4 must be a multiple of --tp=8",
        ),
        (
            ["--tp", "2", "--pp", "2", "--count", "8"],
            "--count: 8 must equal --tp x --pp = 2 x 2 = 4 (or leave one of them unset)",
        ),
        (
            ["--context", "262144"],
            "--context: 262144 exceeds gpt-oss-120b's maximum context of 131072 tokens",
        ),
    ],
)
def test_bad_plan_flags_exit_2_naming_flag_and_range(flags: list[str], message: str) -> None:
    code, text = run("plan", "gpt-oss-120b", *flags)
    assert code == 2
    assert text.startswith(f"gantry plan: {message}")
    assert "Traceback" not in text


def test_plan_and_the_operator_refuse_with_the_same_message(tmp_path: Path) -> None:
    """The flag's message is the spec field's message, the field shown as the flag."""
    spec = {
        "model": {"preset": "gpt-oss-120b"},
        "source": {"pvc": {"claimName": "m"}},
        "gpu": {"type": "H100-80GB", "count": 4},
        "parallelism": {"tensor": 8, "pipeline": 2},
    }
    with pytest.raises(SpecError) as info:
        parse("md", "ns", spec)
    code, text = run("plan", "gpt-oss-120b", "--tp", "8", "--pp", "2", "--count", "4")
    assert code == 2
    assert text == f"gantry plan: {flag_message(str(info.value))}\n"
    doc = {"apiVersion": "gantry.dev/v1alpha1", "kind": "ModelDeployment"}
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump({**doc, "metadata": {"name": "md"}, "spec": spec}))
    code, text = run("render", str(path))
    assert code == 1
    assert text == f"gantry render: {path}: md: {info.value}\n"


def test_plan_spec_leaves_unset_flags_unset() -> None:
    args = build_parser().parse_args(["plan", "gpt-oss-20b", "--context", "8192"])
    assert plan_spec(args, "gpt-oss-20b", "L4") == {
        "model": {"preset": "gpt-oss-20b"},
        "source": {"pvc": {"claimName": "weights"}},
        "gpu": {"type": "L4"},
        "parallelism": {},
        "serving": {"maxContextLength": 8192},
    }


def test_plan_safety_margin_flag() -> None:
    code, text = run("plan", "gpt-oss-20b", "--gpu", "L4", "--safety-margin", "1")
    assert code == 0
    (row,) = table(text)
    assert row["GPUS"] == "2"  # one L4 leaves 0.75 GiB of headroom, short of 1 GiB
    code, text = run("plan", "gpt-oss-20b", "--gpu", "L4")
    (row,) = table(text)
    assert row["GPUS"] == "1"


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_plan_output_as_data(fmt: str) -> None:
    code, text = run("plan", "gpt-oss-120b", "--gpu", "all", "-o", fmt)
    assert code == 0
    doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    plans = {p["gpuType"]: p for p in doc["plans"]}
    assert list(plans) == list(gpus.PROFILES)
    want = planner.plan_request(
        planner.Request(
            model=preset("gpt-oss-120b"), gpu=gpus.profile("H100-80GB"), max_model_len=131072
        )
    )
    assert plans["H100-80GB"] == json.loads(json.dumps(want.to_dict()))
    assert plans["H100-80GB"]["headroomBytesPerGPU"] == want.headroom_bytes_per_gpu
    assert doc["doesNotFit"] == []


def test_plan_output_lists_what_does_not_fit() -> None:
    code, text = run("plan", "deepseek-r1", "--gpu", "all", "-o", "json")
    assert code == 0
    refused = {d["gpuType"]: d["message"] for d in json.loads(text)["doesNotFit"]}
    assert "needs GPU compute capability 8.9 or newer" in refused["A100-80GB"]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_render_output_formats(fmt: str) -> None:
    code, text = run("render", str(EXAMPLES), "-o", fmt)
    assert code == 0
    if fmt == "json":
        doc = json.loads(text)
        assert (doc["apiVersion"], doc["kind"]) == ("v1", "List")
        items = doc["items"]
    else:
        items = list(yaml.safe_load_all(text))
    assert [i["kind"] for i in items][:4] == [
        "LeaderWorkerSet", "Service", "Deployment", "Service"
    ]  # fmt: skip


def test_a_closed_pipe_ends_quietly() -> None:
    """`gantry render DIR | head`: the reader has gone; no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gantry_operator.cli", "render", str(EXAMPLES)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert done.returncode == 1
    assert done.stderr == ""


class _ClosedPipe(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError


def test_a_closed_pipe_in_process_returns_1() -> None:
    assert main(["plan", "gpt-oss-20b"], out=_ClosedPipe()) == 1


def test_every_model_with_a_context_beyond_some() -> None:
    """With several models, a context beyond one model's maximum is that model's row."""
    code, text = run("plan", "all", "--context", "131072")
    assert code == 0
    assert {row["MODEL"] for row in table(text)} >= {"gpt-oss-120b", "kimi-k2"}
    assert (
        "qwen3-32b on H100-80GB: does not fit: --context: 131072 exceeds qwen3-32b's maximum "
        "context of 40960 tokens"
    ) in text


def test_render_argv_lines_give_each_pod_of_a_group_its_command_line() -> None:
    from gantry_operator.cli import LEADER_PLACEHOLDER, POD_IP_PLACEHOLDER, _argv_lines
    from gantry_operator.spec import parse

    body = {
        "model": {"preset": "kimi-k2"},
        "source": {"pvc": {"claimName": "weights"}},
        "gpu": {"type": "H200"},
    }
    spec = parse("k2", "default", body)
    plan = planner.plan(spec)
    lines = _argv_lines(spec, plan)
    assert [line.split(":")[0] for line in lines[::2]] == ["# worker 0 (leader)", "# worker 1"]
    leader, worker = (shlex.split(line) for line in lines[1::2])
    assert leader[leader.index("--data-parallel-address") + 1] == POD_IP_PLACEHOLDER
    assert worker[worker.index("--data-parallel-address") + 1] == LEADER_PLACEHOLDER
    assert "--headless" not in leader
    assert worker[worker.index("--data-parallel-start-rank") + 1] == "8"
    assert "--headless" in worker
