"""The cluster policy (residency, sources, NetworkPolicy, runtime defaults) and the engine-arg
rules about parallelism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gantry_operator import gpus, manifests, planner
from gantry_operator.catalog import preset
from gantry_operator.cluster_policy import Policy, PolicyViolation, load_policy, parse_policy
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


def test_the_pods_of_a_multi_node_group_may_reach_each_other(spec_dict: dict[str, Any]) -> None:
    """vLLM's group ports and the ephemeral ports NCCL and Gloo pick, between this model's own
    runtime pods only; the serving port stays as the policy says."""
    spec = _spec(spec_dict, model={"preset": "kimi-k2"}, gpu={"type": "H200"})
    plan = planner.plan(spec)
    assert plan.nodes_per_replica > 1
    objects = manifests.build_all(spec, plan, owner=OWNER, network=POLICY.network)
    (netpol,) = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]
    serving, group = netpol["ingress"]
    assert serving["ports"] == [{"port": 8000, "protocol": "TCP"}]
    own = {"podSelector": {"matchLabels": netpol["podSelector"]["matchLabels"]}}
    assert group == {"from": [own], "ports": [{"protocol": "TCP"}]}
    assert netpol["egress"][-1] == {"to": [own], "ports": [{"protocol": "TCP"}]}


def test_with_the_gateway_on_only_gateway_pods_monitoring_and_the_operator_may_call(
    spec_dict: dict[str, Any],
) -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}
    policy = parse_policy(
        {
            "networkPolicy": {
                "enabled": True,
                "gateway": {"enabled": True, "namespace": "gantry-system"},
                "monitoring": [monitoring],
                "operator": [operator],
            }
        }
    )
    spec = _spec(spec_dict)
    objects = manifests.build_all(spec, planner.plan(spec), owner=OWNER, network=policy.network)
    (netpol,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    (ingress,) = netpol["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert ingress["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gantry-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
        },
        monitoring,
        operator,
    ]
    off = parse_policy({"networkPolicy": {"enabled": True, "gateway": {"enabled": False}}})
    assert off.network.gateway_namespace is None


@pytest.mark.parametrize("gateway", [{"enabled": True}, {"enabled": True, "namespace": ""}, "on"])
def test_the_gateway_needs_its_namespace(gateway: Any) -> None:
    with pytest.raises(ValueError, match=r"networkPolicy\.gateway"):
        parse_policy({"networkPolicy": {"enabled": True, "gateway": gateway}})


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
    with pytest.raises(SpecError, match=r"engineArgs\.data-parallel-size: .*protected.*replicas"):
        _spec(spec_dict, serving={"engineArgs": {"data-parallel-size": "2"}})


RESIDENT = parse_policy(
    {
        "residency": {
            "offline": True,
            "allowedRegistries": ["registry.internal", "mirror.example/gantry"],
            "allowedS3Endpoints": ["http://minio.storage.svc:9000"],
            "allowedEgressEndpoints": ["http://otel.monitoring.svc:4317"],
        },
        "runtime": {"image": "registry.internal/gantry-runtime:1"},
    }
)


def _resident(spec_dict: dict[str, Any], **changes: Any) -> Any:
    return parse("m", "ns", {**spec_dict, **changes}, runtime_image=RESIDENT.runtime_image)


def test_policy_violation_is_a_spec_error(spec_dict: dict[str, Any]) -> None:
    with pytest.raises(PolicyViolation) as info:
        POLICY.check(_spec(spec_dict))
    assert isinstance(info.value, SpecError)


@pytest.mark.parametrize(
    ("reference", "allowed"),
    [
        ("registry.internal/gantry-runtime:1", True),
        ("registry.internal/deep/path/x@sha256:" + "a" * 64, True),
        ("mirror.example/gantry/runtime:2", True),
        ("mirror.example/other/runtime:2", False),  # path prefix, not string prefix
        ("mirror.example/gantryx/runtime:2", False),
        ("registry.internal.evil.example/x:1", False),
        ("ghcr.io/gantry-dev/gantry-runtime:0.1.0", False),
        ("vllm/vllm-openai:latest", False),  # docker.io
        ("docker.io/library/busybox", False),
    ],
)
def test_offline_runtime_image_must_come_from_an_allowed_registry(
    spec_dict: dict[str, Any], reference: str, allowed: bool
) -> None:
    spec = _resident(spec_dict, runtime={"image": reference})
    if allowed:
        RESIDENT.check(spec)
        return
    with pytest.raises(PolicyViolation) as info:
        RESIDENT.check(spec)
    assert info.value.field_path == "spec.runtime.image"
    assert "use one of registry.internal, mirror.example/gantry" in str(info.value)


def test_offline_weight_image_must_come_from_an_allowed_registry(
    spec_dict: dict[str, Any],
) -> None:
    good = _resident(spec_dict, source={"image": {"reference": "registry.internal/w:1"}})
    RESIDENT.check(good)
    bad = _resident(spec_dict, source={"image": {"reference": "docker.io/evil/weights:1"}})
    with pytest.raises(PolicyViolation, match=r"^spec\.source\.image\.reference: docker\.io"):
        RESIDENT.check(bad)


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("http://minio.storage.svc:9000", True),
        ("http://MINIO.storage.svc:9000/", True),
        ("https://minio.storage.svc:9000", False),
        ("http://minio.storage.svc:9001", False),
        ("https://s3.amazonaws.com", False),
        ("https://s3.eu-west-1.amazonaws.com", False),
    ],
)
def test_offline_s3_endpoint_must_be_allowed(
    spec_dict: dict[str, Any], endpoint: str, allowed: bool
) -> None:
    spec = _resident(spec_dict, source={"s3": {"endpoint": endpoint, "bucket": "models"}})
    if allowed:
        RESIDENT.check(spec)
        return
    with pytest.raises(PolicyViolation) as info:
        RESIDENT.check(spec)
    assert info.value.field_path == "spec.source.s3.endpoint"
    assert "use one of http://minio.storage.svc:9000" in str(info.value)


def test_online_specs_are_not_held_to_the_offline_lists(spec_dict: dict[str, Any]) -> None:
    online_policy = parse_policy(
        {"residency": {"allowedRegistries": ["registry.internal"], "offline": False}}
    )
    spec = _spec(spec_dict, residency={"offline": False}, runtime={"image": "ghcr.io/x/y:1"})
    online_policy.check(spec)
    with pytest.raises(PolicyViolation, match=r"spec\.runtime\.image"):
        online_policy.check(_spec(spec_dict, runtime={"image": "ghcr.io/x/y:1"}))


def test_egress_flags_are_refused_while_offline_unless_allowed(spec_dict: dict[str, Any]) -> None:
    otlp = {"otlp-traces-endpoint": "http://collector.example.com:4317"}
    with pytest.raises(PolicyViolation) as info:
        Policy().check(_spec(spec_dict, serving={"engineArgs": otlp}))
    assert info.value.field_path == "spec.serving.engineArgs.otlp-traces-endpoint"
    assert "allowed endpoints: none" in str(info.value)
    allowed = {"otlp-traces-endpoint": "http://otel.monitoring.svc:4317"}
    RESIDENT.check(_resident(spec_dict, serving={"engineArgs": allowed}))
    detailed = {**allowed, "collect-detailed-traces": "all"}
    RESIDENT.check(_resident(spec_dict, serving={"engineArgs": detailed}))
    with pytest.raises(PolicyViolation, match=r"engineArgs\.collect-detailed-traces: .*collector"):
        RESIDENT.check(
            _resident(spec_dict, serving={"engineArgs": {**otlp, "collect-detailed-traces": "all"}})
        )
    with pytest.raises(PolicyViolation, match=r"engineArgs\.tool-server: sends data to demo"):
        RESIDENT.check(_resident(spec_dict, serving={"engineArgs": {"tool-server": "demo"}}))
    # Online deployments (in a cluster whose policy allows it) may export traces anywhere.
    Policy().check(_spec(spec_dict, residency={"offline": False}, serving={"engineArgs": otlp}))


def test_the_offline_default_runtime_image_must_be_allowed() -> None:
    with pytest.raises(ValueError, match=r"runtime\.image ghcr\.io/.*allowedRegistries \(registry"):
        parse_policy({"residency": {"offline": True, "allowedRegistries": ["registry.internal"]}})
    with pytest.raises(ValueError, match="allowedS3Endpoints must be a list"):
        parse_policy({"residency": {"allowedS3Endpoints": "http://x"}})


def test_source_kinds_are_defined_once() -> None:
    from gantry_operator import cluster_policy, spec

    assert vars(cluster_policy)["SOURCE_KINDS"] is spec.SOURCE_KINDS  # imported, not a second copy
