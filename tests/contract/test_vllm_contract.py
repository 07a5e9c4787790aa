"""The vLLM contract, swept: every argv Gantry can build for every catalog model x GPU profile
(each weight source, both KV-cache types) passes vLLM 0.33.0's own parser and serve-argument
validation, and for every model whose config.json the tests ship, vLLM builds its engine config
on CPU for every plan the planner makes, with the plan's parallel sizes and context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gantry_operator import gpus, manifests, planner
from gantry_operator.catalog import presets
from gantry_operator.spec import ModelDeploymentSpec, parse
from gantry_runtime.launchspec import GroupPosition, vllm_argv
from tests.contract.vllm_env import VllmCase, VllmCheck, VllmResult

pytestmark = pytest.mark.contract

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"
SOURCES: dict[str, dict[str, Any]] = {
    "pvc": {"pvc": {"claimName": "models", "path": "org/model"}},
    "s3": {"s3": {"endpoint": "http://minio.storage.svc:9000", "bucket": "models", "prefix": "m"}},
    "image": {"image": {"reference": "registry.internal/models/m:1"}},
    "huggingFace": {"huggingFace": {"repo": "org/model", "revision": "0123abc"}},
}


def _spec(model: str, gpu: str, source: str, kv: str) -> ModelDeploymentSpec:
    body: dict[str, Any] = {
        "model": {"preset": model},
        "source": SOURCES[source],
        "gpu": {"type": gpu},
        "serving": {"kvCacheDtype": kv, "engineArgs": {"enable-prefix-caching": "false"}},
        "residency": {"offline": source != "huggingFace"},
    }
    return parse("m", "default", body)


def _cases() -> tuple[list[VllmCase], dict[str, planner.Plan]]:
    cases: list[VllmCase] = []
    plans: dict[str, planner.Plan] = {}
    for model in presets():
        config = MODELS / model / "config.json"
        for gpu in gpus.PROFILES:
            for kv in ("auto", "fp8"):
                for source in SOURCES:
                    spec = _spec(model, gpu, source, kv)
                    try:
                        plan = planner.plan(spec)
                    except planner.DoesNotFitError:
                        continue
                    case_id = f"{model}/{gpu}/{kv}/{source}"
                    # A multi-node plan: the leader's argv here; test_vllm_multinode.py checks
                    # every pod of the group.
                    leader = GroupPosition("md-0.md.default", plan.nodes_per_replica, 0)
                    position = leader if plan.nodes_per_replica > 1 else None
                    # The engine step needs the real config.json; the path sources use it.
                    engine = source == "pvc" and config.is_file()
                    cases.append(
                        {
                            "id": case_id,
                            "argv": vllm_argv(manifests.launch_spec(spec, plan), position=position)[
                                2:
                            ],
                            "config_dir": str(config.parent) if engine else None,
                            "engine": engine,
                        }
                    )
                    plans[case_id] = plan
    return cases, plans


CASES, PLANS = _cases()


@pytest.fixture(scope="module")
def results(vllm_check: VllmCheck) -> dict[str, VllmResult]:
    return vllm_check(CASES)


def test_the_sweep_covers_every_model_and_gpu_that_fits() -> None:
    models = {case["id"].split("/")[0] for case in CASES}
    assert models == set(presets())
    gpu_types = {case["id"].split("/")[1] for case in CASES}
    assert gpu_types == set(gpus.PROFILES)
    engine_models = {case["id"].split("/")[0] for case in CASES if case.get("engine")}
    shipped = {p.parent.name for p in MODELS.glob("*/config.json")}
    assert engine_models == shipped & set(presets())
    assert len(CASES) > 300


def test_vllm_parses_every_argv(results: dict[str, VllmResult]) -> None:
    failed = {
        case_id: f"{r['stage']}: {r['error']}"
        for case_id, r in results.items()
        if not r["ok"] and r["stage"] in ("parse", "validate")
    }
    assert not failed, failed


def test_vllm_builds_the_engine_config_of_every_plan(results: dict[str, VllmResult]) -> None:
    problems: dict[str, str] = {}
    for case in CASES:
        if not case.get("engine"):
            continue
        result, plan = results[case["id"]], PLANS[case["id"]]
        if not result["ok"]:
            problems[case["id"]] = f"{result['stage']}: {result['error']}"
            continue
        engine = result["engine"] or {}
        seen = (
            engine.get("tensor_parallel_size"),
            engine.get("pipeline_parallel_size"),
            engine.get("max_model_len"),
        )
        planned = (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.max_model_len)
        if seen != planned:
            problems[case["id"]] = f"engine has TP/PP/len {seen}, the plan {planned}"
    assert not problems, problems
