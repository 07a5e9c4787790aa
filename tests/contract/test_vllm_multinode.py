"""The vLLM contract for multi-node replicas: for every catalog model x GPU profile (both KV-cache
types) whose plan spans nodes, the argv of the leader and of every worker of the group, as the
runtime builds it from LeaderWorkerSet's environment, passes vLLM 0.33.0's own parser and
serve-argument validation, and vLLM builds each pod's engine config (``headless`` for workers,
as ``vllm serve --headless`` does) with the plan's sizes and the pod's place in the group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gantry_operator import gpus, manifests, planner
from gantry_operator.catalog import presets
from gantry_operator.spec import parse
from gantry_runtime.launchspec import GroupPosition, LaunchSpec, vllm_argv
from tests.contract.vllm_env import VllmCase, VllmCheck, VllmResult

pytestmark = pytest.mark.contract

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"
#: What LWS_LEADER_ADDRESS holds in a group: <lws name>-<group index>.<subdomain>.<namespace>.
LEADER = "k2-0.k2.models"
#: The leader pod's own IP (VLLM_HOST_IP from the pod's status): where the leader binds.
LEADER_POD_IP = "10.0.0.7"


class Pod:
    """One pod of a multi-node group and what it must run."""

    def __init__(self, plan: planner.Plan, launch: LaunchSpec, member: planner.GroupMember):
        self.plan, self.launch, self.member = plan, launch, member


def _cases() -> tuple[list[VllmCase], dict[str, Pod]]:
    cases: list[VllmCase] = []
    pods: dict[str, Pod] = {}
    for model in presets():
        config = MODELS / model / "config.json"
        for gpu in gpus.PROFILES:
            for kv in ("auto", "fp8"):
                body: dict[str, Any] = {
                    "model": {"preset": model},
                    "source": {"pvc": {"claimName": "models", "path": model}},
                    "gpu": {"type": gpu},
                    "serving": {"kvCacheDtype": kv},
                }
                spec = parse("k2", "models", body)
                try:
                    plan = planner.plan(spec)
                except planner.DoesNotFitError:
                    continue
                if plan.nodes_per_replica == 1:
                    continue
                launch = manifests.launch_spec(spec, plan)
                for member in plan.group:
                    position = GroupPosition(
                        LEADER, plan.nodes_per_replica, member.worker_index, LEADER_POD_IP
                    )
                    case_id = f"{model}/{gpu}/{kv}/{plan.layout}/worker-{member.worker_index}"
                    cases.append(
                        {
                            "id": case_id,
                            "argv": vllm_argv(launch, position=position)[2:],
                            "config_dir": str(config.parent) if config.is_file() else None,
                            "engine": config.is_file(),
                        }
                    )
                    pods[case_id] = Pod(plan, launch, member)
    return cases, pods


CASES, PODS = _cases()


@pytest.fixture(scope="module")
def results(vllm_check: VllmCheck) -> dict[str, VllmResult]:
    return vllm_check(CASES)


def test_the_sweep_covers_both_layouts_on_h100_and_h200() -> None:
    seen = {(p.plan.gpu_type, p.plan.layout) for p in PODS.values()}
    assert ("H100-80GB", "pipeline") in seen
    assert ("H200", "data-parallel") in seen
    # Every pod of every group: a leader and at least one worker per plan.
    for pod in PODS.values():
        assert len(pod.plan.group) == pod.plan.nodes_per_replica > 1
    indexes = {p.member.worker_index for p in PODS.values()}
    assert {0, 1} <= indexes
    assert sum(1 for c in CASES if c.get("engine")) >= 8


def test_vllm_parses_every_pods_argv(results: dict[str, VllmResult]) -> None:
    failed = {
        case_id: f"{r['stage']}: {r['error']}"
        for case_id, r in results.items()
        if not r["ok"] and r["stage"] in ("parse", "validate")
    }
    assert not failed, failed
    for case_id, pod in PODS.items():
        args = results[case_id]["args"] or {}
        assert args["headless"] is (pod.member.worker_index > 0), case_id


def _engine_problems(pod: Pod, engine: dict[str, Any]) -> list[str]:
    plan, launch, index = pod.plan, pod.launch, pod.member.worker_index
    address = LEADER_POD_IP if index == 0 else LEADER
    want: dict[str, Any] = {
        "tensor_parallel_size": plan.tensor_parallel_size,
        "pipeline_parallel_size": plan.pipeline_parallel_size,
        "data_parallel_size": plan.data_parallel_size,
        "max_model_len": plan.max_model_len,
        "enable_expert_parallel": plan.expert_parallel,
    }
    if plan.layout == "data-parallel":
        want |= {
            "data_parallel_size_local": plan.data_parallel_size_local,
            "data_parallel_rank": pod.member.first_rank,
            "data_parallel_master_ip": address,
            "data_parallel_rpc_port": launch.rpc_port,
            # Internal load balancing: the leader's API server serves every DP rank.
            "data_parallel_hybrid_lb": False,
            "data_parallel_external_lb": False,
        }
    else:
        want |= {
            "world_size": plan.gpus_per_replica,
            "nnodes": plan.nodes_per_replica,
            "node_rank": index,
            "node_rank_within_dp": index,
            "master_addr": address,
            "master_port": launch.master_port,
        }
    return [f"{key}: vLLM {engine.get(key)!r}, want {v!r}" for key, v in want.items()
            if engine.get(key) != v]  # fmt: skip


def test_vllm_builds_every_pods_engine_config(results: dict[str, VllmResult]) -> None:
    problems: dict[str, Any] = {}
    for case in CASES:
        if not case.get("engine"):
            continue
        result, pod = results[case["id"]], PODS[case["id"]]
        if not result["ok"]:
            problems[case["id"]] = f"{result['stage']}: {result['error']}"
            continue
        found = _engine_problems(pod, result["engine"] or {})
        if found:
            problems[case["id"]] = found
    assert not problems, problems
