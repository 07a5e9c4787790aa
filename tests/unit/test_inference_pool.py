"""InferencePools: the builder (checked against the upstream v1 CRD schema), the policy that
turns them on, the decision that writes them only while their CRD is established, and the
store's "is CRD X established" view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gantry_operator import desired, manifests, planner, schema
from gantry_operator.cluster_policy import parse_policy
from gantry_operator.config import OperatorConfig
from gantry_operator.manifests.inference_pool import CRD_NAME, pool_selector
from gantry_operator.spec import parse
from gantry_operator.store import Children, Store

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_CRD = (
    ROOT / "tests" / "integration" / "fixtures" / "inference.networking.k8s.io_inferencepools.yaml"
)
OWNER = manifests.Owner(name="m", uid="uid-m")
PICKER = {"name": "epp", "port": 9002, "failureMode": "FailOpen"}


def upstream_spec_schema() -> Any:
    crd = yaml.safe_load(UPSTREAM_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def pool(spec_dict: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    spec = parse("m", "ns", spec_dict)
    settings = parse_policy({"inferencePool": policy}).inference_pool
    objects = manifests.build_all(spec, planner.plan(spec), owner=OWNER, inference_pool=settings)
    (found,) = [o for o in objects if o["kind"] == "InferencePool"]
    return found


def test_the_pool_selects_the_serving_runtime_pods_on_port_8000(spec_dict: dict[str, Any]) -> None:
    built = pool(spec_dict, {"enabled": True})
    assert built["apiVersion"] == "inference.networking.k8s.io/v1"
    assert built["metadata"]["name"] == "m"
    assert built["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert built["spec"] == {
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/component": "runtime",
                "gantry.dev/model-deployment": "m",
            }
        },
        "targetPorts": [{"number": 8000}],
    }
    # The Deployment's pods carry every label the pool selects on.
    spec = parse("m", "ns", spec_dict)
    deployment = manifests.build_deployment(spec, planner.plan(spec), owner=OWNER)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pool_selector(spec).items() <= pod_labels.items()
    schema._check(built["spec"], upstream_spec_schema(), "spec")


def test_a_multi_node_pool_selects_the_group_leaders(spec_dict: dict[str, Any]) -> None:
    spec_dict = {**spec_dict, "model": {"preset": "kimi-k2"}, "gpu": {"type": "H200"}}
    spec_dict["serving"] = {**spec_dict.get("serving", {}), "maxContextLength": 131072}
    built = pool(spec_dict, {"enabled": True})
    selector = built["spec"]["selector"]["matchLabels"]
    assert selector["leaderworkerset.sigs.k8s.io/worker-index"] == "0"


def test_an_endpoint_picker_only_when_the_policy_names_one(spec_dict: dict[str, Any]) -> None:
    built = pool(spec_dict, {"enabled": True, "endpointPicker": PICKER})
    assert built["spec"]["endpointPickerRef"] == {
        "kind": "Service",
        "name": "epp",
        "port": {"number": 9002},
        "failureMode": "FailOpen",
    }
    schema._check(built["spec"], upstream_spec_schema(), "spec")
    spec = parse("m", "ns", spec_dict)
    off = parse_policy({"inferencePool": {"enabled": False, "endpointPicker": PICKER}})
    objects = manifests.build_all(
        spec, planner.plan(spec), owner=OWNER, inference_pool=off.inference_pool
    )
    assert "InferencePool" not in [o["kind"] for o in objects]


@pytest.mark.parametrize(
    ("picker", "fragment"),
    [
        ({"port": 9002}, "endpointPicker.name"),
        ({"name": "Bad_Name"}, "endpointPicker.name"),
        ({"name": "epp", "port": 70000}, "endpointPicker.port"),
        ({"name": "epp", "failureMode": "Retry"}, "endpointPicker.failureMode"),
    ],
)
def test_a_bad_endpoint_picker_is_refused(picker: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_policy({"inferencePool": {"enabled": True, "endpointPicker": picker}})


def test_the_pool_is_written_only_while_its_crd_is_established(spec_dict: dict[str, Any]) -> None:
    config = OperatorConfig(policy=parse_policy({"inferencePool": {"enabled": True}}))
    md = {"metadata": {"name": "m", "namespace": "ns", "uid": "uid-m"}, "spec": spec_dict}
    want = desired.intent(md, config)
    kinds = [o["kind"] for o in desired.decide(want, Children(), "uid-m").apply]
    assert "InferencePool" in kinds
    without = desired.decide(want, Children(), "uid-m", unavailable=frozenset({"InferencePool"}))
    assert "InferencePool" not in [o["kind"] for o in without.apply]
    assert without.delete == ()
    # An owned pool that the policy no longer asks for is deleted; another's is not touched.
    (ours,) = [o for o in want.objects if o["kind"] == "InferencePool"]
    seen = {**ours, "metadata": {**ours["metadata"], "uid": "pool-uid", "resourceVersion": "1"}}
    plain = desired.intent(md, OperatorConfig())
    decision = desired.decide(plain, Children({"InferencePool": seen}), "uid-m")
    assert [(r.kind, r.uid) for r in decision.delete] == [("InferencePool", "pool-uid")]
    theirs = {**seen, "metadata": {**seen["metadata"], "ownerReferences": []}}
    conflict = desired.decide(want, Children({"InferencePool": theirs}), "uid-m")
    assert conflict.conflicts == ("InferencePool m already exists (not created by Gantry)",)


def crd(name: str, established: str | None) -> dict[str, Any]:
    conditions = [] if established is None else [{"type": "Established", "status": established}]
    return {"metadata": {"name": name}, "status": {"conditions": conditions}}


def test_the_store_says_whether_a_crd_is_established() -> None:
    store = Store()
    assert not store.crd_established(CRD_NAME)
    assert not store.put_crd(crd(CRD_NAME, None))  # created, not yet established
    assert store.put_crd(crd(CRD_NAME, "True"))  # flipped
    assert store.crd_established(CRD_NAME)
    assert not store.put_crd(crd(CRD_NAME, "True"))  # no change
    assert not store.crd_established("leaderworkersets.leaderworkerset.x-k8s.io")
    terminating = crd(CRD_NAME, "True")
    terminating["metadata"]["deletionTimestamp"] = "2026-12-03T13:00:00Z"
    assert store.put_crd(terminating)
    assert not store.crd_established(CRD_NAME)
    store.put_crd(crd(CRD_NAME, "True"))
    assert store.remove_crd(crd(CRD_NAME, "True"))
    assert not store.crd_established(CRD_NAME)
    assert not store.remove_crd(crd(CRD_NAME, "True"))
