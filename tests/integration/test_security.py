"""Attacks a tenant could try with nothing but the right to manage ModelDeployments in its own
namespace, each refused (issue 8: engine args, env, GPU resources, schema, residency).

The caller is a ServiceAccount ``tenant`` whose Role grants only ModelDeployments in its
namespace; every manifest is applied with ``kubectl --as=system:serviceaccount:<ns>:tenant``.
Refusals at the API server (CRD schema and CEL rules) are asserted on kubectl's error; refusals
by the operator (spec parsing, cluster policy) on the ModelDeployment's Ready condition.
docs/security.md maps each property to its test here.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack import crd_size
from localcluster.operator_process import OperatorProcess
from tests.integration.conftest import SETTLE, Namespace, wait_for

pytestmark = pytest.mark.integration

TENANT_RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {{name: tenant, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: modeldeployments-only, namespace: {ns}}}
rules:
  - apiGroups: [gantry.dev]
    resources: [modeldeployments]
    verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tenant, namespace: {ns}}}
subjects: [{{kind: ServiceAccount, name: tenant, namespace: {ns}}}]
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: modeldeployments-only}}
"""

MIRROR = "registry.internal.example"
POLICY = {
    "residency": {
        "offline": True,
        "allowedRegistries": [MIRROR],
        "allowedS3Endpoints": ["http://minio.storage.svc:9000"],
    },
    "runtime": {"image": f"{MIRROR}/gantry-dev/gantry-runtime:0.1.0-vllm0.33.0"},
}


class Tenant:
    """kubectl as the tenant ServiceAccount, in its namespace."""

    def __init__(self, space: Namespace) -> None:
        self.space = space
        self.user = f"system:serviceaccount:{space.name}:tenant"
        space.cluster.kubectl("apply", "-f", "-", input=TENANT_RBAC.format(ns=space.name))

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = self.space.cluster.kubectl(
            f"--as={self.user}", "-n", self.space.name, *args, input=input, check=False
        )
        return result

    def apply(self, name: str, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        manifest = {
            "apiVersion": "gantry.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"preset": "gpt-oss-20b"},
        "source": {"pvc": {"claimName": "models"}},
        "gpu": {"type": "H100-80GB"},
    }
    spec.update(changes)
    return spec


@pytest.fixture
def tenant(ns: Namespace) -> Tenant:
    return Tenant(ns)


def refused(tenant: Tenant, spec: dict[str, Any], message: str) -> None:
    result = tenant.apply("attack", spec)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert message in result.stderr, result.stderr
    assert tenant.space.get("md", "attack") is None


def test_the_tenant_can_only_manage_modeldeployments(tenant: Tenant) -> None:
    for verb, kind in [
        ("create", "modeldeployments.gantry.dev"),
        ("delete", "modeldeployments.gantry.dev"),
        ("delete", "networkpolicies"),
        ("create", "services"),
        ("create", "deployments"),
        ("get", "secrets"),
    ]:
        answer = tenant.kubectl("auth", "can-i", verb, kind).stdout.strip()
        assert answer == ("yes" if kind.startswith("modeldeployments") else "no"), (verb, kind)


@pytest.mark.parametrize(
    "key",
    [
        "tensor_parallel_size",
        "tensor-parallel-size",
        "tensor_parallel-size",
        "pipeline_parallel_size",
        "max_model_len",
        "data_parallel_size",
        "served_model_name",
        "no-enable-ssl-refresh",
        "chat_template",
        "load-format",
        "api_key",
        "port",
    ],
)
def test_protected_engine_flags_are_refused_in_every_spelling(tenant: Tenant, key: str) -> None:
    refused(
        tenant,
        _spec(serving={"engineArgs": {key: "4"}}),
        "spec.serving.engineArgs sets a protected vLLM flag",
    )


@pytest.mark.parametrize("key", ["--tensor-parallel-size", "Tensor_Parallel_Size", "tp"])
def test_odd_spellings_are_refused(tenant: Tenant, key: str) -> None:
    result = tenant.apply("attack", _spec(serving={"engineArgs": {key: "4"}}))
    if key == "tp":
        # Not a vLLM long flag at all: the API server takes it, the operator refuses it.
        assert result.returncode == 0, result.stderr
        cond = tenant.space.wait_condition("attack", "Ready", "False", "InvalidSpec")
        assert "is not a flag of vLLM 0.33.0" in cond["message"]
        return
    assert result.returncode != 0, result.stdout
    assert "spec.serving.engineArgs keys" in result.stderr


@pytest.mark.parametrize(
    "value", ["1 --tensor-parallel-size=4", "--tensor-parallel-size=4", "1\n--port=9", "1\t2"]
)
def test_an_engine_flag_value_cannot_carry_a_second_argument(tenant: Tenant, value: str) -> None:
    refused(tenant, _spec(serving={"engineArgs": {"seed": value}}), "spec.serving.engineArgs.seed")


def test_unknown_engine_flag_is_refused_with_a_suggestion(tenant: Tenant) -> None:
    result = tenant.apply("attack", _spec(serving={"engineArgs": {"max-num-seq": "8"}}))
    assert result.returncode == 0, result.stderr
    cond = tenant.space.wait_condition("attack", "Ready", "False", "InvalidSpec")
    assert "spec.serving.engineArgs.max-num-seq" in cond["message"]
    assert "did you mean max-num-seqs?" in cond["message"]
    assert tenant.space.get("deployment", "attack") is None


@pytest.mark.parametrize(
    "name", ["GANTRY_LAUNCH_SPEC", "GANTRY_RUNTIME_MODE", "gantry_host", "gantry_sim_x"]
)
def test_gantry_env_is_refused(tenant: Tenant, name: str) -> None:
    refused(
        tenant,
        _spec(serving={"env": [{"name": name, "value": "x"}]}),
        "spec.serving.env cannot set GANTRY_* variables",
    )


def test_offline_and_privacy_env_cannot_be_turned_off(tenant: Tenant) -> None:
    refused(
        tenant,
        _spec(serving={"env": [{"name": "HF_HUB_OFFLINE", "value": "0"}]}),
        "cannot change HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE",
    )
    refused(
        tenant,
        _spec(serving={"env": [{"name": "VLLM_NO_USAGE_STATS", "value": "0"}]}),
        "cannot change VLLM_NO_USAGE_STATS or DO_NOT_TRACK",
    )


@pytest.mark.parametrize(
    "resource",
    [
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.10gb",
        "nvidia.com/gpu.shared",
        "amd.com/gpu",
        "gpu.intel.com/i915",
        "habana.ai/gaudi",
        "aws.amazon.com/neuroncore",
        "google.com/tpu",
    ],
)
def test_accelerators_of_every_vendor_are_refused_in_resources(
    tenant: Tenant, resource: str
) -> None:
    for kind in ("requests", "limits"):
        refused(
            tenant,
            _spec(runtime={"resources": {kind: {resource: "1"}}}),
            f"spec.runtime.resources.{kind} must not name accelerators",
        )


def test_a_bad_quantity_is_refused_by_the_crd(tenant: Tenant) -> None:
    refused(tenant, _spec(runtime={"resources": {"requests": {"cpu": "lots"}}}), "cpu")
    refused(tenant, _spec(runtime={"shmSize": "lots"}), "shmSize")


def test_a_bad_toleration_is_refused_by_the_crd(tenant: Tenant) -> None:
    refused(
        tenant,
        _spec(scheduling={"tolerations": [{"key": "a", "operator": "Bogus"}]}),
        'Unsupported value: "Bogus"',
    )
    refused(
        tenant,
        _spec(scheduling={"tolerations": [{"key": "a", "effect": "Sometimes"}]}),
        'Unsupported value: "Sometimes"',
    )


def test_a_bad_node_selector_key_is_refused_by_the_crd(tenant: Tenant) -> None:
    refused(
        tenant,
        _spec(scheduling={"nodeSelector": {"not a/label/key": "x"}}),
        "spec.scheduling.nodeSelector keys must be label keys",
    )


def test_oversized_engine_args_are_refused_by_the_crd(tenant: Tenant) -> None:
    refused(tenant, _spec(serving={"engineArgs": {"seed": "1" * 513}}), "512")
    many = {f"flag-{i}": "1" for i in range(17)}
    refused(tenant, _spec(serving={"engineArgs": many}), "16")


def test_accepted_spec_from_the_tenant_is_served(tenant: Tenant) -> None:
    """The rules refuse attacks, not ordinary specs."""
    spec = _spec(
        serving={
            "engineArgs": {"enable_prefix_caching": "false", "compilation-config": '{"level":3}'},
            "env": [
                {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"},
                {"name": "GANTRY_SIM_DECODE_TOKENS_PER_S", "value": "40"},
            ],
        },
        runtime={"resources": {"requests": {"cpu": "4", "memory": "16Gi"}}},
        scheduling={"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm"}]},
    )
    result = tenant.apply("fine", spec)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: tenant.space.get("deployment", "fine"), SETTLE, "fine: no Deployment")


# -- residency: images and endpoints, with an offline cluster policy -----------------------------


@pytest.fixture(scope="module")
def offline_policy(
    operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The session's operator restarted with an offline policy listing the allowed registry and
    S3 endpoint, for this module's residency tests; restored afterwards."""
    path: Path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    original = operator.extra_args
    operator.stop()
    operator.extra_args = (*original, f"--policy={path}")
    operator.start()
    try:
        yield
    finally:
        operator.stop()
        operator.extra_args = original
        operator.start()


@pytest.mark.usefixtures("offline_policy")
@pytest.mark.parametrize(
    ("case", "changes", "field"),
    [
        (
            "public-runtime-image",
            {"runtime": {"image": "docker.io/vllm/vllm-openai:latest"}},
            "spec.runtime.image",
        ),
        (
            "public-weight-image",
            {"source": {"image": {"reference": "ghcr.io/someone/gpt-oss-20b:1"}}},
            "spec.source.image.reference",
        ),
        (
            "public-s3",
            {"source": {"s3": {"endpoint": "https://s3.amazonaws.com", "bucket": "models"}}},
            "spec.source.s3.endpoint",
        ),
        (
            "trace-exporter",
            {"serving": {"engineArgs": {"otlp-traces-endpoint": "http://collector.example.com"}}},
            "spec.serving.engineArgs.otlp-traces-endpoint",
        ),
    ],
)
def test_offline_residency_refuses_public_images_and_endpoints(
    tenant: Tenant, case: str, changes: dict[str, Any], field: str
) -> None:
    result = tenant.apply(case, _spec(**changes))
    assert result.returncode == 0, result.stderr
    cond = tenant.space.wait_condition(case, "Ready", "False", "PolicyViolation")
    assert cond["message"].startswith(field), cond["message"]
    assert tenant.space.get("deployment", case) is None


@pytest.mark.usefixtures("offline_policy")
def test_offline_residency_accepts_the_mirror(tenant: Tenant) -> None:
    spec = _spec(
        source={"s3": {"endpoint": "http://minio.storage.svc:9000", "bucket": "models"}},
        runtime={"image": f"{MIRROR}/gantry-dev/gantry-runtime:0.1.0-vllm0.33.0"},
    )
    result = tenant.apply("mirrored", spec)
    assert result.returncode == 0, result.stderr
    deployment = wait_for(
        lambda: tenant.space.get("deployment", "mirrored"), SETTLE, "mirrored: no Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith(f"{MIRROR}/")
    assert json.dumps(deployment).count("amazonaws") == 0


def test_the_largest_spec_the_crd_allows_is_accepted_refused_and_deleted(tenant: Tenant) -> None:
    """Every field at its maximum (hack/crd_size.py): the API server stores it (the CEL rules stay
    within their cost budget), the operator reports why it cannot serve it, and it deletes."""
    spec = crd_size.largest_spec()
    assert len(json.dumps(spec, separators=(",", ":"))) > 90_000
    manifest = {
        "apiVersion": "gantry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "largest"},
        "spec": spec,
    }
    # create, not apply: client-side apply would add a second copy as an annotation.
    result = tenant.kubectl("create", "-f", "-", input=json.dumps(manifest))
    assert result.returncode == 0, result.stderr
    stored = tenant.space.get("md", "largest")
    assert stored is not None
    size = len(json.dumps(stored["spec"], separators=(",", ":")))
    assert size <= crd_size.max_size(crd_size.spec_schema())
    cond = tenant.space.wait_condition("largest", "Ready", "False")
    assert cond["message"].startswith("spec."), cond
    result = tenant.kubectl("delete", "md", "largest", "--timeout=60s")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: tenant.space.get("md", "largest") is None, SETTLE, "largest: not deleted")
