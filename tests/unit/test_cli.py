"""The `gantry` CLI: `gantry plan` and `gantry render`, called in-process."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import pytest
import yaml

from gantry_operator import gpus, planner
from gantry_operator.catalog import preset, presets
from gantry_operator.cli import PLAN_HEADER, main

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def table(text: str) -> list[dict[str, str]]:
    """Rows of a plan table, by header; columns are separated by two or more spaces."""
    lines = [line for line in text.splitlines() if line.strip()]
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
    assert row["TP"] == str(want.tensor_parallel_size) == "1"
    assert row["KV TOKENS"] == f"{want.kv_cache_tokens:,}"
    assert row["CONTEXT"] == "131072"
    assert row["UTIL"] == "0.90"
    assert row["WEIGHTS/GPU"] == "65.0 GiB"


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
    assert "needs GPU compute capability 8.9 or newer" in text


def test_plan_does_not_fit_exits_1_with_the_reason() -> None:
    code, text = run("plan", "gpt-oss-120b", "--count", "1", "--concurrency", "4")
    assert code == 1
    assert text.startswith("gpt-oss-120b on H100-80GB: does not fit: ")
    assert "needs at least 2 x H100-80GB" in text
    assert "spec.serving.maxContextLength=33792 would fit" in text
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
    assert first[3:] == ["65.0", "GiB", "mxfp4", "gqa", "131072"]
    assert lines[-1] == "GPU types: " + ", ".join(gpus.PROFILES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan"], "gantry plan: name a model"),
        (["plan", "llama-9000"], "gantry plan: unknown model 'llama-9000'"),
        (["plan", "gpt-oss-20b", "--gpu", "RTX-4090"], "gantry plan: unknown GPU type 'RTX-4090'"),
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
        ("Deployment", "gpt-oss-120b"),
        ("Service", "gpt-oss-120b"),
        ("Deployment", "gpt-oss-20b"),
        ("Service", "gpt-oss-20b"),
        ("PodDisruptionBudget", "gpt-oss-20b"),  # the 2-replica example
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"default"}
    limits = docs[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"  # 120b, four full-context sequences: TP 2


def test_render_namespace_option() -> None:
    code, text = run("render", str(EXAMPLES / "gpt-oss-20b.yaml"), "-n", "llm")
    assert code == 0
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(text)} == {"llm"}


def test_render_argv() -> None:
    code, text = run("render", str(EXAMPLES), "--argv")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].startswith("# gpt-oss-120b: TP=2 PP=1 on 2 x H100-80GB")
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert len(commands) == 2
    for argv in commands:
        assert argv[:2] == ["vllm", "serve"]
    big = commands[0]
    assert big[2] == "/models/openai/gpt-oss-120b"
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
            "gpu": {"type": "L4"},
        },
    }
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, text = run("render", str(path))
    assert code == 1
    assert "huge: kimi-k2 at 131072 context does not fit on up to 32 x L4" in text


def test_render_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO((EXAMPLES / "gpt-oss-20b.yaml").read_text()))
    code, text = run("render", "-")
    assert code == 0
    assert [d["kind"] for d in yaml.safe_load_all(text)] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]
