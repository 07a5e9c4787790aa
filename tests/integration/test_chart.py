"""The Helm chart (charts/gantry) rendered by helm: lint, schema errors, rendering, RBAC shape,
the policy file the operator will read, monitoring copies, the helm-test hook, and the kube-score
scan. helm and kube-score are built from their Go modules on first use (localcluster/build.py),
so these run with the integration tests; the chart on a real API server is test_helm.py, the
pure-Python checks of the chart files are tests/unit/test_chart.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gantry_operator.cluster_policy import parse_policy
from gantry_operator.spec import DEFAULT_RUNTIME_IMAGE
from hack import chart
from hack.chart import CHART, RESIDENCY_VALUES, ROOT, by_kind, one, template

pytestmark = pytest.mark.integration

CANONICAL_CRD = ROOT / "deploy" / "crds" / "gantry.dev_modeldeployments.yaml"
MONITORING = ROOT / "deploy" / "monitoring"
KUSTOMIZE_RBAC = ROOT / "deploy" / "operator" / "rbac.yaml"
OPERATOR_SELECTOR = {
    "app.kubernetes.io/name": "gantry",
    "app.kubernetes.io/instance": "gantry",
    "app.kubernetes.io/component": "operator",
}
WATCHED = ["llm-b", "llm-a"]
MIRROR = "registry.internal.example/mirror"


@pytest.fixture(scope="module", autouse=True)
def tools() -> None:
    chart.ensure_tools()


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return template()


@pytest.fixture(scope="module")
def residency() -> list[dict[str, Any]]:
    return template(RESIDENCY_VALUES)


def helm_fails(*sets: str) -> str:
    result = chart.helm(*chart.template_args(sets=sets), check=False)
    assert result.returncode != 0, result.stdout[:500]
    return result.stderr


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


# -- lint, schema, sync ----------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [str(RESIDENCY_VALUES)]], ids=["default", "residency"])
def test_helm_lint_passes_strict(values: list[str]) -> None:
    args = [f"--values={v}" for v in values]
    result = chart.helm("lint", str(CHART), "--strict", *args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("replicaCont=3", "at '': additional properties 'replicaCont' not allowed"),
        ("image.tagg=1", "at '/image': additional properties 'tagg' not allowed"),
        (
            "securityContext.runAsRoot=true",
            "at '/securityContext': additional properties 'runAsRoot' not allowed",
        ),
        (
            "networkPolicy.ingress[0].podSelektor.a=b",
            "at '/networkPolicy/ingress/0': additional properties 'podSelektor' not allowed",
        ),
        ("residency.allowedSources={ftp}", "/residency/allowedSources/0"),
        ("watch.namespaces={Not_A_Namespace}", "/watch/namespaces/0"),
    ],
)
def test_schema_rejects_unknown_keys_and_bad_values_with_a_clear_message(
    setting: str, where: str
) -> None:
    stderr = helm_fails(setting)
    assert "values don't meet the specifications of the schema" in stderr
    assert where in stderr


def _object_schemas(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            yield path, schema
        for key, value in schema.items():
            yield from _object_schemas(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _object_schemas(value, f"{path}/{index}")


# -- CRDs ----------------------------------------------------------------------------------------


def test_crd_is_the_canonical_one_kept_on_uninstall(default: list[dict[str, Any]]) -> None:
    canonical = yaml.safe_load(CANONICAL_CRD.read_text())
    rendered = one(default, "CustomResourceDefinition", canonical["metadata"]["name"])
    assert rendered["spec"] == canonical["spec"]
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert canonical["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
    assert rendered["metadata"]["labels"]["helm.sh/chart"] == "gantry-0.1.0"


def test_crd_toggles() -> None:
    names = [
        o["metadata"]["name"]
        for o in by_kind(template(sets=["crds.enabled=false"]), "CustomResourceDefinition")
    ]
    assert names == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    unkept = one(
        template(sets=["crds.keep=false"]),
        "CustomResourceDefinition",
        "modeldeployments.gantry.dev",
    )
    assert "annotations" not in unkept["metadata"]


def test_kopf_peering_crds_follow_kopfs_schema(default: list[dict[str, Any]]) -> None:
    for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")):
        crd = one(default, "CustomResourceDefinition", f"{kind.lower()}s.kopf.dev")
        assert crd["spec"]["group"] == "kopf.dev"
        assert crd["spec"]["scope"] == scope
        assert crd["spec"]["names"]["kind"] == kind
        (version,) = crd["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        assert "subresources" not in version, "kopf merge-patches status on the object itself"
    # crds/ is for Helm to install first; --skip-crds leaves them out.
    without = chart.documents(chart.render(include_crds=False))
    assert not [
        c for c in by_kind(without, "CustomResourceDefinition") if c["spec"]["group"] == "kopf.dev"
    ]


# -- the operator Deployment ---------------------------------------------------------------------


def test_deployment_runs_two_peered_restricted_replicas(default: list[dict[str, Any]]) -> None:
    deployment = one(default, "Deployment")
    assert deployment["metadata"]["name"] == "gantry-operator"
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == OPERATOR_SELECTOR
    pod = deployment["spec"]["template"]
    assert OPERATOR_SELECTOR.items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["serviceAccountName"] == one(default, "ServiceAccount")["metadata"]["name"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    main = container(deployment)
    context = main["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main["args"] == [
        "--all-namespaces",
        "--peering=gantry",
        "--peering-lifetime=60",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--metrics-address=0.0.0.0:8081",
        "--policy=/etc/gantry/policy.yaml",
        "--gateway-namespace=gantry-system",
    ]
    assert main["env"][0] == {
        "name": "POD_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"health": 8080, "metrics": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert main["resources"]["limits"]["memory"] == main["resources"]["requests"]["memory"]
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert mounts == {"/etc/gantry": "policy", "/tmp": "tmp"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == "gantry-operator-policy"
    assert volumes["tmp"]["emptyDir"]["medium"] == "Memory"
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == OPERATOR_SELECTOR
    (spread,) = spec["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["maxSkew"]) == ("kubernetes.io/hostname", 1)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pdb_service_and_peering_object(default: list[dict[str, Any]]) -> None:
    pdb = one(default, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": OPERATOR_SELECTOR}}
    service = one(default, "Service")
    assert service["metadata"]["name"] == "gantry-operator-metrics"
    assert service["spec"]["selector"] == OPERATOR_SELECTOR
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert one(default, "ClusterKopfPeering")["metadata"]["name"] == "gantry"
    assert by_kind(default, "KopfPeering") == []


def test_single_replica_without_peering_and_its_guard() -> None:
    objects = template(sets=["replicaCount=1", "peering.enabled=false"])
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not [a for a in container(deployment)["args"] if a.startswith("--peering")]
    assert by_kind(objects, "PodDisruptionBudget") == []
    assert by_kind(objects, "ClusterKopfPeering") == []
    stderr = helm_fails("peering.enabled=false")
    assert "replicaCount > 1 needs peering.enabled" in stderr


def test_images_come_from_the_mirror_and_a_digest_pins(residency: list[dict[str, Any]]) -> None:
    assert container(one(residency, "Deployment"))["image"] == (
        f"{MIRROR}/gantry-dev/gantry-operator:0.1.0"
    )
    job = one(residency, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"{MIRROR}/gantry-dev/gantry-operator:0.1.0"
    )
    pull = one(residency, "Deployment")["spec"]["template"]["spec"]["imagePullSecrets"]
    assert pull == [{"name": "registry-mirror"}]
    digest = "sha256:" + "a" * 64
    pinned = one(template(sets=[f"image.digest={digest}"]), "Deployment")
    assert container(pinned)["image"] == f"ghcr.io/gantry-dev/gantry-operator@{digest}"


# -- RBAC ------------------------------------------------------------------------------------------


def _rules(objects: list[dict[str, Any]], kind: str) -> list[list[dict[str, Any]]]:
    return [o["rules"] for o in by_kind(objects, kind)]


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


VARIANTS = {
    "default": [],
    "namespaced": [f"watch.namespaces={{{','.join(WATCHED)}}}"],
    "network-policies": ["networkPolicy.enabled=true"],
    "standalone": ["replicaCount=1", "peering.enabled=false"],
    "gateway": ["gateway.enabled=true"],
    "gateway-namespaced": ["gateway.enabled=true", f"gateway.namespaces={{{','.join(WATCHED)}}}"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_has_no_wildcards(variant: str) -> None:
    objects = template(sets=VARIANTS[variant])
    roles = by_kind(objects, "ClusterRole") + by_kind(objects, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (role["metadata"]["name"], rule)
                assert all("*" not in item for item in rule[key])
            assert "resourceNames" not in rule
            assert "nonResourceURLs" not in rule


def test_cluster_wide_rbac() -> None:
    objects = template()
    (rules,) = _rules(objects, "ClusterRole")
    grants = _grants(rules)
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "watch") in grants
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in grants
    # Without networkPolicy.enabled the operator neither watches nor touches NetworkPolicies.
    assert not {g for g in grants if g[1] == "networkpolicies"}
    assert by_kind(objects, "Role") == []
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gantry-operator", "namespace": "gantry-system"}
    ]
    with_policies = _grants(_rules(template(sets=VARIANTS["network-policies"]), "ClusterRole")[0])
    assert with_policies - grants == {
        ("networking.k8s.io", "networkpolicies", verb)
        for verb in ("list", "watch", "create", "patch")
    }


def test_namespace_scoped_watch_has_no_cluster_wide_permission() -> None:
    objects = template(sets=VARIANTS["namespaced"])
    assert by_kind(objects, "ClusterRole") == []
    assert by_kind(objects, "ClusterRoleBinding") == []
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(WATCHED)
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(WATCHED)
    cluster_wide = _grants(_rules(template(), "ClusterRole")[0])
    for role in roles:
        grants = _grants(role["rules"])
        assert grants == (
            cluster_wide
            - {
                ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
                ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
                ("", "nodes", "list"),
                ("", "nodes", "watch"),
                *{("kopf.dev", "clusterkopfpeerings", v) for v in ("list", "watch", "patch")},
            }
        ) | {("kopf.dev", "kopfpeerings", v) for v in ("list", "watch", "patch")}
    peerings = by_kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == sorted(WATCHED)
    deployment = one(objects, "Deployment")
    assert container(deployment)["args"][:2] == [f"--namespace={n}" for n in sorted(WATCHED)]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/crds" in annotations, "CRD changes roll a namespace-scoped operator"
    assert (
        "checksum/crds"
        not in one(template(), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    )


def test_kustomize_base_grants_what_the_chart_grants_a_standalone_operator() -> None:
    base = [d for d in yaml.safe_load_all(KUSTOMIZE_RBAC.read_text()) if d]
    (base_rules,) = [d["rules"] for d in base if d["kind"] == "ClusterRole"]
    chart_rules = _rules(template(sets=VARIANTS["standalone"]), "ClusterRole")[0]
    assert _grants(base_rules) == _grants(chart_rules)


# -- the policy file -------------------------------------------------------------------------------


def _policy(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = one(objects, "ConfigMap", "gantry-operator-policy")
    data: dict[str, Any] = yaml.safe_load(config_map["data"]["policy.yaml"])
    return data


def test_default_policy_is_the_operators_default_with_the_default_runtime_image(
    default: list[dict[str, Any]],
) -> None:
    policy = parse_policy(_policy(default))
    assert policy.runtime_image == DEFAULT_RUNTIME_IMAGE
    assert policy.allowed_regions == ()
    assert policy.offline is False
    assert policy.allowed_sources == ("pvc", "s3", "image", "huggingFace")
    assert policy.network.enabled is False
    assert policy.image_pull_secrets == ()
    assert policy.allowed_registries == policy.allowed_s3_endpoints == ()
    assert policy.allowed_egress_endpoints == ()


def test_residency_policy_reaches_the_operator(residency: list[dict[str, Any]]) -> None:
    policy = parse_policy(_policy(residency))
    assert policy.allowed_regions == ("eu-west-1", "eu-central-1")
    assert policy.offline is True
    assert policy.allowed_sources == ("pvc", "s3", "image")
    assert policy.runtime_image == f"{MIRROR}/gantry-dev/gantry-runtime:0.1.0-vllm0.33.0"
    assert policy.image_pull_secrets == ("registry-mirror",)
    assert policy.allowed_registries == ("registry.internal.example",)
    assert policy.allowed_s3_endpoints == ("http://minio.storage.svc:9000",)
    assert policy.allowed_egress_endpoints == ("http://otel-collector.monitoring.svc:4317",)
    assert policy.network.enabled is True
    assert policy.network.ingress == (
        {"namespaceSelector": {"matchLabels": {"gantry.dev/clients": "true"}}},
    )
    assert policy.network.storage[0]["ports"] == [{"port": 9000, "protocol": "TCP"}]
    # The operator's own pods are allowed to scrape the runtime pods.
    (operator,) = policy.network.operator
    assert operator == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gantry-system"}},
        "podSelector": {"matchLabels": OPERATOR_SELECTOR},
    }
    pod_labels = one(residency, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert operator["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_gateway_and_inference_pool_values_reach_the_operator(
    default: list[dict[str, Any]],
) -> None:
    """The gateway runs in the release namespace: the operator reads its pods' metrics there
    (--gateway-namespace) and, with NetworkPolicies, admits only it to the runtime pods; the
    inferencePool values become the policy's inferencePool section."""
    assert (
        "--gateway-namespace=gantry-system"
        in container(one(default, "Deployment", "gantry-operator"))["args"]
    )
    assert parse_policy(_policy(default)).network.gateway_namespace is None
    assert parse_policy(_policy(default)).inference_pool.enabled is False
    objects = template(
        namespace="llm-gw",
        sets=[
            "gateway.enabled=true",
            "networkPolicy.enabled=true",
            "inferencePool.enabled=true",
            "inferencePool.endpointPicker.name=epp",
        ],
    )
    policy = parse_policy(_policy(objects))
    assert policy.network.gateway_namespace == "llm-gw"
    assert policy.inference_pool.enabled is True
    assert policy.inference_pool.endpoint_picker is not None
    assert (
        policy.inference_pool.endpoint_picker.name,
        policy.inference_pool.endpoint_picker.port,
    ) == ("epp", 9002)
    gateway_pods = [
        d
        for d in by_kind(objects, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"
    ]
    assert gateway_pods, "gateway.enabled renders the gateway Deployment"
    assert all(d["metadata"]["namespace"] == "llm-gw" for d in gateway_pods)
    rules = one(objects, "ClusterRole", "gantry-operator")["rules"]
    assert {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"],
            "verbs": ["list", "watch", "create", "patch"]} in rules  # fmt: skip
    message = helm_fails("inferencePool.enabled=true", "watch.namespaces={a}")
    assert "inferencePool.enabled needs a cluster-wide operator" in message


def test_policy_change_rolls_the_pods(default: list[dict[str, Any]]) -> None:
    changed = template(sets=["residency.offline=true"])

    def checksum(objects: list[dict[str, Any]]) -> str:
        annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/policy"])

    assert checksum(changed) != checksum(default)


# -- NetworkPolicy, monitoring, dashboards -------------------------------------------------------


def test_operator_network_policy(residency: list[dict[str, Any]]) -> None:
    policy = one(residency, "NetworkPolicy", "gantry-operator")
    assert policy["spec"]["podSelector"]["matchLabels"] == OPERATOR_SELECTOR
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    } in (ingress["from"])
    dns, api, runtime = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert api["ports"] == [{"port": 6443, "protocol": "TCP"}]
    assert [t["ipBlock"]["cidr"] for t in api["to"]] == [
        "10.0.0.10/32",
        "10.0.0.11/32",
        "10.0.0.12/32",
    ]
    assert runtime["ports"] == [{"port": 8000, "protocol": "TCP"}]
    namespaces = [
        t["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for t in runtime["to"]
    ]
    assert namespaces == ["llm-prod", "llm-staging"]


def test_monitoring_objects_are_the_canonical_ones(residency: list[dict[str, Any]]) -> None:
    canonical = {
        kind: yaml.safe_load((MONITORING / name).read_text())
        for kind, name in (
            ("ServiceMonitor", "servicemonitor-operator.yaml"),
            ("PodMonitor", "podmonitor-runtime.yaml"),
            ("PrometheusRule", "prometheusrule.yaml"),
        )
    }
    rule = one(residency, "PrometheusRule")
    assert rule["spec"] == canonical["PrometheusRule"]["spec"]
    assert rule["metadata"]["namespace"] == "gantry-system"
    monitor = one(residency, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == canonical["ServiceMonitor"]["spec"]["endpoints"]
    assert monitor["spec"]["selector"] == {"matchLabels": OPERATOR_SELECTOR}
    service = one(residency, "Service")
    assert OPERATOR_SELECTOR.items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["name"] == "gantry-operator-metrics"  # the alerts' job label
    pod_monitor = one(residency, "PodMonitor")
    expected = {
        k: v for k, v in canonical["PodMonitor"]["spec"].items() if k != "namespaceSelector"
    }
    assert {k: v for k, v in pod_monitor["spec"].items() if k != "namespaceSelector"} == expected
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["llm-prod", "llm-staging"]}
    # Renamed releases keep the job label the alerts expect.
    renamed = one(
        template(sets=["fullnameOverride=llm", "monitoring.serviceMonitor.enabled=true"]),
        "ServiceMonitor",
    )
    (endpoint,) = renamed["spec"]["endpoints"]
    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": "gantry-operator-metrics"}
    ]


def test_dashboards_are_labelled_config_maps_of_the_canonical_json(
    default: list[dict[str, Any]],
) -> None:
    files = sorted((MONITORING / "dashboards").glob("*.json"))
    maps = [c for c in by_kind(default, "ConfigMap") if "-dashboard-" in c["metadata"]["name"]]
    assert len(maps) == len(files) >= 1
    for config_map, path in zip(
        sorted(maps, key=lambda c: c["metadata"]["name"]), files, strict=True
    ):
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["data"] == {path.name: path.read_text().rstrip("\n")}
        json.loads(config_map["data"][path.name])
    custom = template(
        sets=[
            "monitoring.dashboards.label=dashboards",
            "monitoring.dashboards.labelValue=gantry",
            "monitoring.dashboards.namespace=grafana",
        ]
    )
    for config_map in [
        c for c in by_kind(custom, "ConfigMap") if "-dashboard-" in c["metadata"]["name"]
    ]:
        assert config_map["metadata"]["labels"]["dashboards"] == "gantry"
        assert config_map["metadata"]["namespace"] == "grafana"
    disabled = by_kind(template(sets=["monitoring.dashboards.enabled=false"]), "ConfigMap")
    assert not [c for c in disabled if "-dashboard-" in c["metadata"]["name"]]


def test_every_namespaced_object_lands_in_the_release_namespace_or_a_watched_one(
    residency: list[dict[str, Any]],
) -> None:
    allowed = {"gantry-system", "llm-prod", "llm-staging"}
    for obj in residency:
        if obj["kind"] in (
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterKopfPeering",
        ):
            assert "namespace" not in obj["metadata"]
            continue
        assert obj["metadata"]["namespace"] in allowed, obj["metadata"]
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "gantry"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


# -- helm test -------------------------------------------------------------------------------------


def test_helm_test_hook_is_a_job_running_the_checked_in_script(
    default: list[dict[str, Any]],
) -> None:
    job = one(default, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (check,) = pod["containers"]
    assert check["command"] == ["python", "-c"]
    assert check["args"] == [chart.HELM_TEST_SCRIPT.read_text()]
    env = {e["name"]: e["value"] for e in check["env"]}
    assert env["GANTRY_METRICS_URL"] == (
        "http://gantry-operator-metrics.gantry-system.svc:8081/metrics"
    )
    assert check["securityContext"]["readOnlyRootFilesystem"] is True
    test_policy = one(default, "NetworkPolicy", "gantry-test")
    assert test_policy["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "test"


# -- the gateway ---------------------------------------------------------------------------------

GATEWAY_SELECTOR = OPERATOR_SELECTOR | {"app.kubernetes.io/component": "gateway"}


def _gateway(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [
        o
        for o in by_kind(objects, kind)
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"
    ]


def test_gateway_is_off_by_default(default: list[dict[str, Any]]) -> None:
    assert [o for o in default if o["metadata"]["name"].startswith("gantry-gateway")] == []


def test_gateway_deployment_service_pdb_hpa_and_restricted_pods() -> None:
    objects = template(sets=["gateway.enabled=true"])
    (deployment,) = _gateway(objects, "Deployment")
    assert deployment["metadata"]["name"] == "gantry-gateway"
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert deployment["spec"]["selector"]["matchLabels"] == GATEWAY_SELECTOR
    pod = deployment["spec"]["template"]
    assert GATEWAY_SELECTOR.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == "gantry-gateway"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    main = container(deployment)
    assert main["command"] == ["gantry-gateway"]
    assert main["image"] == container(deployments(objects)["gantry-operator"])["image"]
    context = main["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert main["args"] == [
        "--port=8080",
        "--metrics-port=9091",
        "--tenant-namespace=gantry-system",
        "--peer-selector=app.kubernetes.io/name=gantry,app.kubernetes.io/instance=gantry,"
        "app.kubernetes.io/component=gateway",
        "--hold-timeout-seconds=900",
        "--max-held-per-model=256",
        "--max-body-bytes=8388608",
    ]
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"http": 8080, "metrics": 9091}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["resources"]["limits"]["memory"] == main["resources"]["requests"]["memory"]
    (hpa,) = _gateway(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gantry-gateway"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (pdb,) = _gateway(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": GATEWAY_SELECTOR}}
    (service,) = _gateway(objects, "Service")
    assert service["spec"]["selector"] == GATEWAY_SELECTOR
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    (policy,) = _gateway(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == GATEWAY_SELECTOR
    assert {"ports": [{"port": 8000, "protocol": "TCP"}]}.items() <= policy["spec"]["egress"][
        2
    ].items()
    sets = [
        "gateway.enabled=true",
        "gateway.autoscaling.enabled=false",
        "gateway.audit.includeContent=true",
    ]
    fixed = one(template(sets=sets), "Deployment", "gantry-gateway")
    assert fixed["spec"]["replicas"] == 2
    assert "--audit-include-content" in container(fixed)["args"]


def deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}


GATEWAY_GRANTS = {
    ("gantry.dev", "modeldeployments", "list"),
    ("gantry.dev", "modeldeployments", "watch"),
    ("gantry.dev", "modeldeployments/scale", "patch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
}


def test_gateway_rbac_is_exactly_what_it_calls() -> None:
    objects = template(sets=["gateway.enabled=true"])
    (cluster_role,) = _gateway(objects, "ClusterRole")
    assert _grants(cluster_role["rules"]) == GATEWAY_GRANTS
    roles = {r["metadata"]["name"]: r for r in _gateway(objects, "Role")}
    assert set(roles) == {"gantry-gateway-tenants", "gantry-gateway-peers"}
    assert _grants(roles["gantry-gateway-tenants"]["rules"]) == {
        ("", "secrets", "list"),
        ("", "secrets", "watch"),
    }
    assert _grants(roles["gantry-gateway-peers"]["rules"]) == {
        ("", "pods", "list"),
        ("", "pods", "watch"),
    }
    for binding in _gateway(objects, "ClusterRoleBinding") + _gateway(objects, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "gantry-gateway", "namespace": "gantry-system"}
        ]
    extra = ["gateway.tenantNamespace=tenants", "gateway.shareLimits=false"]
    scoped = template(sets=VARIANTS["gateway-namespaced"] + extra)
    assert _gateway(scoped, "ClusterRole") == []
    by_namespace = {(r["metadata"]["namespace"], r["metadata"]["name"]): r
                    for r in _gateway(scoped, "Role")}  # fmt: skip
    assert set(by_namespace) == {
        ("llm-a", "gantry-gateway"),
        ("llm-b", "gantry-gateway"),
        ("tenants", "gantry-gateway-tenants"),
    }
    assert _grants(by_namespace[("llm-a", "gantry-gateway")]["rules"]) == GATEWAY_GRANTS
    args = container(one(scoped, "Deployment", "gantry-gateway"))["args"]
    assert "--namespace=llm-a" in args
    assert "--namespace=llm-b" in args
    assert "--tenant-namespace=tenants" in args
    assert not [a for a in args if a.startswith("--peer-selector")]


def test_gateway_values_are_checked_by_the_schema() -> None:
    assert "gateway" in helm_fails("gateway.bogus=1")
    assert "gateway" in helm_fails("gateway.holdTimeoutSeconds=-1")


def test_kube_score_passes_with_the_gateway() -> None:
    config = chart.ScoreConfig.load()
    rendered = chart.render(RESIDENCY_VALUES, sets=["gateway.enabled=true"])
    assert chart.kube_score(rendered, config) == ""


# -- the security scan ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [RESIDENCY_VALUES]], ids=["default", "residency"])
def test_kube_score_finds_nothing_beyond_the_documented_exceptions(values: list[Path]) -> None:
    config = chart.ScoreConfig.load()
    assert config.all_default_optional, "every optional check runs"
    assert all(len(reason) > 40 for reason in config.ignored.values()), "each says why"
    assert chart.kube_score(chart.render(*values), config) == ""


@pytest.mark.parametrize("check", sorted(chart.ScoreConfig.load().ignored))
def test_each_kube_score_exception_is_still_needed(check: str) -> None:
    config = chart.ScoreConfig.load()
    others = set(config.ignored) - {check}
    findings = chart.kube_score(chart.render(), config, ignore=others)
    assert findings, f"{check} passes now: remove its exception from .kube-score.yaml"
