"""The cluster policy (residency, sources, NetworkPolicy, runtime defaults) and the engine-arg
rules about parallelism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gantry_operator import gpus, manifests, planner
from gantry_operator.catalog import preset
from gantry_operator.policy import Policy, load_policy, parse_policy
from gantry_operator.spec import SpecError, parse

OWNER = manifests.Owner(name="m", uid="u")


def _spec(spec_dict: dict[str, Any], **changes: Any) -> Any:
    return parse("m", "ns", {**spec_dict, **changes})


POLICY = parse_policy(
    {
        "residency": {"allowedRegions": ["eu-west-1"], "offline": True},
        "networkPolicy": {
            "enabled": True,
            "ingress": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
            "monitoring": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            "storage": [{"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}], "ports": [{"port": 9000}]}],
        },
        "runtime": {"image": "mirror.internal/gantry-runtime:1", "imagePullSecrets": ["mirror"]},
    }
)


def test_no_policy_allows_everything(spec_dict: dict[str, Any]) -> None:
    Policy().check(_spec(spec_dict))
    assert load_policy(None) == Policy()


def test_regions_are_required_and_must_be_allowed(spec_dict: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match=r"spec.residency.regions: is required .* eu-west-1"):
        POLICY.check(_spec(spec_dict))
    with pytest.raises(SpecError, match=r"us-east-1 not allowed .* allowed: eu-west-1"):
        POLICY.check(_spec(spec_dict, residency={"regions": ["eu-west-1", "us-east-1"]}))
    POLICY.check(_spec(spec_dict, residency={"regions": ["eu-west-1"]}))


def test_offline_policy_forbids_hub_sources_and_online_specs(spec_dict: dict[str, Any]) -> None:
    online = _spec(
        spec_dict,
        source={"huggingFace": {"repo": "openai/gpt-oss-20b"}},
        residency={"regions": ["eu-west-1"], "offline": False},
    )
    with pytest.raises(
        SpecError, match=r"spec.source.huggingFace: is not an allowed weight source"
    ):
        POLICY.check(online)
    assert "huggingFace" not in POLICY.allowed_sources


def test_unknown_source_kind_in_the_policy_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown"):
        parse_policy({"residency": {"allowedSources": ["nfs"]}})


def test_policy_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("residency:\n  allowedRegions: [eu-west-1]\n")
    assert load_policy(path).allowed_regions == ("eu-west-1",)


def test_runtime_defaults_come_from_the_policy(spec_dict: dict[str, Any]) -> None:
    spec = parse(
        "m",
        "ns",
        spec_dict,
        runtime_image=POLICY.runtime_image,
        image_pull_secrets=POLICY.image_pull_secrets,
    )
    plan = planner.plan(spec)
    pod = manifests.build_deployment(spec, plan, owner=OWNER)["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "mirror.internal/gantry-runtime:1"
    assert pod["imagePullSecrets"] == [{"name": "mirror"}]


def test_network_policy_allows_only_the_configured_peers(spec_dict: dict[str, Any]) -> None:
    spec = _spec(spec_dict, residency={"regions": ["eu-west-1"]})
    objects = manifests.build_all(spec, planner.plan(spec), owner=OWNER, network=POLICY.network)
    assert objects[0]["kind"] == "NetworkPolicy"
    netpol = objects[0]["spec"]
    assert netpol["podSelector"]["matchLabels"]["gantry.dev/model-deployment"] == "m"
    assert netpol["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = netpol["ingress"]
    assert ingress["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert len(ingress["from"]) == 2
    dns, storage = netpol["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert storage["to"] == [{"ipBlock": {"cidr": "10.0.5.0/24"}}]
    without = manifests.build_all(spec, planner.plan(spec), owner=OWNER, network=Policy().network)
    assert "NetworkPolicy" not in [o["kind"] for o in without]


def test_gpt_oss_rejects_tensor_parallel_beyond_its_kv_heads() -> None:
    model = preset("gpt-oss-120b")
    assert model.tp_problem(8) is None
    assert "8 KV heads cannot be shared by 16 ranks" in str(model.tp_problem(16))
    request = planner.Request(
        model=model, gpu=gpus.profile("L4"), max_model_len=8192, tensor=16, pipeline=1
    )
    with pytest.raises(planner.DoesNotFitError, match="cannot be shared by 16 ranks"):
        planner.plan_request(request)


def test_expert_parallel_engine_arg_is_a_planner_input(spec_dict: dict[str, Any]) -> None:
    spec = _spec(spec_dict, serving={"engineArgs": {"enable-expert-parallel": "true"}})
    assert spec.parallelism.expert is True
    assert "enable-expert-parallel" not in dict(spec.serving.engine_args)
    assert manifests.launch_spec(spec, planner.plan(spec)).enable_expert_parallel is True
    with pytest.raises(SpecError, match=r"spec\.parallelism\.expert is False"):
        _spec(
            spec_dict,
            parallelism={"expert": False},
            serving={"engineArgs": {"enable-expert-parallel": "true"}},
        )


def test_data_parallel_engine_arg_is_rejected(spec_dict: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match=r"engineArgs\.data-parallel-size: .* spec\.replicas"):
        _spec(spec_dict, serving={"engineArgs": {"data-parallel-size": "2"}})
