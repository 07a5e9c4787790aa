"""The Helm chart on a real API server: server-side validation, install, `helm test`, the
operator running as the chart's ServiceAccount (cluster-wide and namespace-scoped) with every
RBAC grant proven used by the API server's audit log, HA failover through kopf peering, and
upgrade/uninstall semantics.

Everything runs on this module's own local control plane, started with a metadata-level audit
log (the session cluster's operator, running as admin, would serve these ModelDeployments too).
The tests share it in file order; each cleans up the namespaces it made.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import build, lws, nodes
from localcluster.cluster import METADATA_AUDIT_POLICY, LocalCluster, free_ports
from localcluster.log import sayer
from localcluster.polling import wait_for
from tests.integration.helm import (
    CHART,
    HELM_TEST_SCRIPT,
    OWN_NETWORK_NODES,
    PROMETHEUS_OPERATOR_GROUP,
    RESIDENCY_VALUES,
    ROOT,
    ChartOperator,
    FakeRuntimeMetrics,
    Permission,
    Release,
    audit_mark,
    audit_permissions,
    delete_namespace,
    granted_permissions,
    helm,
    make_namespace,
    rule_permissions,
    template,
    unused,
)

pytestmark = pytest.mark.integration
EXAMPLES = ROOT / "deploy" / "examples"
SETTLE = 90.0
#: Failover bound: the dead peer's keep-alive expires after --peering-lifetime (10 s in these
#: installs), then the standby resumes and reconciles.
TAKEOVER_SECONDS = 45.0
#: What every install here adds to the chart's values: the fake GPU nodes are all tainted
#: (a real cluster has CPU nodes for the operator), a 1 s autoscaler tick and a 10 s peering
#: lifetime so the tests are quick. All of it goes through the chart, none around it.
TEST_VALUES: dict[str, Any] = {
    "tolerations": [dict(nodes.GPU_TOLERATION)],
    "operator": {"env": [{"name": "GANTRY_AUTOSCALE_INTERVAL", "value": "1"}]},
    "peering": {"lifetimeSeconds": 10},
}
NO_PROMETHEUS_OPERATOR = [
    "monitoring.serviceMonitor.enabled=false",
    "monitoring.podMonitor.enabled=false",
    "monitoring.prometheusRule.enabled=false",
]


_say = sayer("gantry-helm")


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local control plane of its own, with the apiserver's audit log on."""
    build.ensure_built()
    state_dir = tmp_path_factory.mktemp("helm-cluster")
    started = time.monotonic()
    with LocalCluster(state_dir, log=_say, audit_policy=METADATA_AUDIT_POLICY) as local:
        nodes.create(local, OWN_NETWORK_NODES)
        _say(f"audited cluster up in {time.monotonic() - started:.1f}s")
        yield local


@pytest.fixture(scope="module")
def test_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("values") / "test-values.yaml"
    path.write_text(yaml.safe_dump(TEST_VALUES))
    return path


def install(
    cluster: LocalCluster, release: str, namespace: str, *values: Path, sets: list[str]
) -> Release:
    args = ["install", release, str(CHART), f"--namespace={namespace}", "--create-namespace"]
    args += [f"--values={v}" for v in values] + [f"--set={s}" for s in sets]
    started = time.monotonic()
    result = helm(*args, "--wait", "--timeout=180s", cluster=cluster, check=False)
    if result.returncode != 0:
        state = cluster.kubectl("get", "all,events", "-n", namespace, "-o", "wide", check=False)
        raise AssertionError(f"helm install {release} failed: {result.stderr}\n{state.stdout}")
    _say(f"helm install {release}: {time.monotonic() - started:.1f}s")
    return Release(release, namespace, cluster)


@pytest.fixture(scope="module")
def cluster_wide(audited: LocalCluster, test_values: Path) -> Release:
    """Release `gantry` in gantry-system with the default values: cluster-wide watch, the
    ModelDeployment CRD, two peered operator replicas (fake pods: kwok runs no containers)."""
    return install(audited, "gantry", "gantry-system", test_values, sets=[])


@pytest.fixture
def fresh_ns(audited: LocalCluster) -> Iterator[list[str]]:
    """Namespaces a test makes (append names); deleted, with their GPUs freed, afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        delete_namespace(audited, name)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))


def apply(cluster: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def md(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "md", name, "-n", namespace))


def ready(cluster: LocalCluster, namespace: str, name: str) -> bool:
    conditions = md(cluster, namespace, name).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def condition(cluster: LocalCluster, namespace: str, name: str, type_: str) -> dict[str, Any]:
    for cond in md(cluster, namespace, name).get("status", {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return {}


def autoscaled(name: str) -> dict[str, Any]:
    """gpt-oss-20b at one replica that may scale to two on queue depth, at once."""
    manifest = example("gpt-oss-20b")
    manifest["metadata"]["name"] = name
    manifest["spec"]["replicas"] = 1
    manifest["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 2,
        "metric": "queueDepth",
        "target": 8,
        "scaleUpDelaySeconds": 0,
    }
    return manifest


def serve_examples(cluster: LocalCluster, namespace: str, operator: ChartOperator) -> None:
    """Apply both examples and an autoscaled model; wait until the examples are Ready and the
    autoscaler has scaled the third through the scale subresource (fake vLLM metrics on its
    pod report a long queue). Between them every kind of call the operator makes happens:
    server-side apply creating and updating, PDB create (two replicas) and delete (scaled to
    one),
    status and scale subresource patches, events, watches, peering keep-alives."""
    apply(cluster, namespace, example("gpt-oss-120b"), example("gpt-oss-20b"), autoscaled("auto"))
    for name in ("gpt-oss-120b", "gpt-oss-20b", "auto"):
        wait_for(
            functools.partial(ready, cluster, namespace, name),
            SETTLE,
            f"{namespace}/{name} Ready; see {operator.log_path}",
        )
    pods = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", "gantry.dev/model-deployment=auto"
    )["items"]
    assert len(pods) == 1
    with FakeRuntimeMetrics(pods[0]["status"]["podIP"], waiting=100):
        wait_for(
            lambda: md(cluster, namespace, "auto")["spec"]["replicas"] == 2,
            SETTLE,
            f"{namespace}/auto scaled to 2 by the autoscaler; see {operator.log_path}",
        )
    assert md(cluster, namespace, "auto")["status"]["autoscaler"]["desiredReplicas"] == 2
    wait_for(lambda: ready(cluster, namespace, "auto"), SETTLE, f"{namespace}/auto Ready at 2")
    # A model scaled from two replicas to one: its PDB (created at two) is deleted.
    solo = example("gpt-oss-20b")
    solo["metadata"]["name"] = "solo"
    apply(cluster, namespace, solo)
    wait_for(lambda: _has_pdb(cluster, namespace, "solo"), SETTLE, f"{namespace}/solo PDB")
    cluster.kubectl("scale", "md/solo", "--replicas=1", "-n", namespace)
    wait_for(
        lambda: not _has_pdb(cluster, namespace, "solo"), SETTLE, f"{namespace}/solo PDB deleted"
    )


def _has_pdb(cluster: LocalCluster, namespace: str, name: str) -> bool:
    found = cluster.kubectl("get", "pdb", name, "-n", namespace, check=False)
    return bool(found.returncode == 0)


def permission_table(title: str, permissions: set[Permission]) -> str:
    lines = [f"{title} ({len(permissions)}):", *(f"  {p}" for p in sorted(permissions))]
    return "\n".join(lines)


# -- rendering validated by the API server -------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "residency"])
def test_rendered_chart_passes_server_side_dry_run(audited: LocalCluster, values: str) -> None:
    objects = template(*([RESIDENCY_VALUES] if values == "residency" else []))
    kopf_crds = [
        o
        for o in objects
        if o["kind"] == "CustomResourceDefinition" and o["spec"]["group"] == "kopf.dev"
    ]
    # The peering object's kind must exist for the server to validate it (Helm installs crds/
    # first for the same reason); the ModelDeployment CRD itself is validated as a dry run.
    audited.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(kopf_crds))
    audited.wait_established(*(c["metadata"]["name"] for c in kopf_crds))
    for namespace in {o["metadata"].get("namespace") for o in objects} - {None}:
        audited.kubectl("create", "namespace", namespace, check=False)
    unserved = [o for o in objects if o["apiVersion"].startswith(PROMETHEUS_OPERATOR_GROUP)]
    served = [o for o in objects if o not in unserved and o not in kopf_crds]
    # Only the Prometheus Operator's kinds are left out (its CRDs are not in this cluster);
    # the monitoring files are tested where they are canonical, deploy/monitoring.
    expected_unserved = ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    assert sorted(o["kind"] for o in unserved) == (expected_unserved if values != "default" else [])
    result = audited.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(served), check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(served), result.stdout
    assert all(line.endswith("(server dry run)") for line in lines), result.stdout
    kinds = {o["kind"] for o in served}
    assert {"Deployment", "ConfigMap", "Service", "NetworkPolicy", "Job"} <= kinds
    assert ("ClusterRole" in kinds) == (values == "default")
    assert ("Role" in kinds) == (values == "residency")


def test_schema_rejects_an_unknown_value_on_install(audited: LocalCluster) -> None:
    result = helm(
        "install",
        "typo",
        str(CHART),
        "--namespace=default",
        "--set=replicaCont=3",
        "--dry-run=server",
        cluster=audited,
        check=False,
    )
    assert result.returncode != 0
    assert "additional properties 'replicaCont' not allowed" in result.stderr


# -- install, helm test ------------------------------------------------------------------------


def test_install_and_helm_test(
    audited: LocalCluster, cluster_wide: Release, tmp_path: Path
) -> None:
    deployment = cluster_wide.deployment()
    assert deployment["status"].get("readyReplicas") == 2
    assert audited.kubectl_json("get", "clusterkopfpeering", "gantry")["metadata"]["name"]
    pdb = audited.kubectl_json("get", "pdb", "gantry-operator", "-n", "gantry-system")
    assert pdb["spec"]["minAvailable"] == 1
    notes = helm("get", "notes", "gantry", "--namespace=gantry-system", cluster=audited).stdout
    assert "Watching: every namespace (ClusterRole)." in notes
    assert "Uninstalling keeps the ModelDeployment CRD" in notes
    result = helm("test", "gantry", "--namespace=gantry-system", "--timeout=180s", cluster=audited)
    assert "TEST SUITE:     gantry-test" in result.stdout
    assert "Phase:          Succeeded" in result.stdout
    # kwok completes Job-owned pods without running them, so the hook's own check is run here
    # against a live operator started from the installed Deployment: it passes on the real
    # metrics endpoint and fails on one where no operator listens.
    operator = ChartOperator(cluster_wide, tmp_path, pod_name="gantry-operator-test").start()
    try:
        ok = subprocess.run(
            [sys.executable, str(HELM_TEST_SCRIPT)],
            env={"GANTRY_METRICS_URL": operator.metrics_url, "GANTRY_TEST_TIMEOUT": "30"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ok.returncode == 0, ok.stderr
        assert "serves the Gantry operator's metrics" in ok.stdout
    finally:
        operator.stop()
    (port,) = free_ports(1)
    dead = subprocess.run(
        [sys.executable, str(HELM_TEST_SCRIPT)],
        env={"GANTRY_METRICS_URL": f"http://127.0.0.1:{port}/metrics", "GANTRY_TEST_TIMEOUT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dead.returncode == 1
    assert "FAIL" in dead.stderr


# -- RBAC: sufficient, and every grant used ----------------------------------------------------


def test_cluster_wide_operator_serves_examples_with_exactly_its_grants(
    audited: LocalCluster, cluster_wide: Release, tmp_path: Path, fresh_ns: list[str]
) -> None:
    namespace = make_namespace(audited, unique("cw"))
    fresh_ns.append(namespace)
    mark = audit_mark(audited.audit_log)
    operator = ChartOperator(cluster_wide, tmp_path, pod_name="gantry-operator-rbac").start()
    try:
        assert operator.argv[0] == "--all-namespaces"
        assert "--peering=gantry" in operator.argv
        serve_examples(audited, namespace, operator)
        assert audited.kubectl_json("get", "pdb", "gpt-oss-20b", "-n", namespace)
        assert (
            audited.kubectl("get", "pdb", "gpt-oss-120b", "-n", namespace, check=False).returncode
            != 0
        )
        nps = audited.kubectl_json("get", "networkpolicies", "-n", namespace)["items"]
        assert nps == [], "networkPolicy.enabled is false by default"
    finally:
        operator.stop()
    assert "Traceback" not in operator.log(None), operator.log()

    used, denied = audit_permissions(audited.audit_log, cluster_wide.username(), mark)
    granted = granted_permissions(audited, "gantry-system", cluster_wide.service_account())
    _say(permission_table("cluster-wide: used by the chart's ServiceAccount", used))
    assert denied == set(), f"the operator was refused: {sorted(denied)}"
    assert {p.namespace for p in granted} == {None}, "cluster-wide grants only"
    assert unused(granted, used) == [], "granted but never used"
    assert not any("*" in (p.group, p.resource, p.verb) for p in granted)
    # The namespaced calls land in the test namespace; the cluster-scoped ones are kopf's
    # all-namespaces watches, the CRD watch and the ClusterKopfPeering.
    assert {p.namespace for p in used} == {None, namespace}


def test_namespace_scoped_operator_serves_only_its_namespaces_with_namespaced_grants(
    audited: LocalCluster,
    cluster_wide: Release,  # owns the ModelDeployment CRD this release leaves out
    test_values: Path,
    tmp_path: Path,
    fresh_ns: list[str],
) -> None:
    watched = [make_namespace(audited, unique("llm")) for _ in range(2)]
    outside = make_namespace(audited, unique("other"))
    fresh_ns.extend([*watched, outside])
    release = install(
        audited,
        "residency",
        "gantry-residency",
        RESIDENCY_VALUES,
        test_values,
        sets=[
            f"watch.namespaces={{{','.join(watched)}}}",
            "crds.enabled=false",
            *NO_PROMETHEUS_OPERATOR,
        ],
    )
    username, account = release.username(), release.service_account()
    notes = helm("get", "notes", "residency", "--namespace=gantry-residency", cluster=audited)
    assert f"namespaces {', '.join(sorted(watched))} (Role per namespace" in notes.stdout
    assert "regions eu-west-1, eu-central-1" in notes.stdout
    try:
        assert not audited.kubectl_json(
            "get", "clusterrolebindings", "-l", "app.kubernetes.io/instance=residency"
        )["items"]
        peering = next(
            a.split("=", 1)[1] for a in release.container()["args"] if a.startswith("--peering=")
        )
        assert peering == "residency-gantry"
        for namespace in watched:
            assert audited.kubectl_json("get", "kopfpeering", peering, "-n", namespace)
        mark = audit_mark(audited.audit_log)
        operator = ChartOperator(release, tmp_path, pod_name="residency-operator-rbac").start()
        try:
            assert operator.argv[:2] == [f"--namespace={n}" for n in sorted(watched)]
            for namespace in watched:
                serve_examples(audited, namespace, operator)
            # The chart's residency policy reached the operator: regions, mirror, NetworkPolicy.
            outside_region = example("gpt-oss-20b")
            outside_region["metadata"]["name"] = "us-model"
            outside_region["spec"]["residency"]["regions"] = ["us-east-1"]
            apply(audited, watched[0], outside_region)
            wait_for(
                lambda: (
                    condition(audited, watched[0], "us-model", "Ready").get("reason")
                    == "PolicyViolation"
                ),
                SETTLE,
                "PolicyViolation for a region outside residency.allowedRegions",
            )
            # Nothing outside the watched namespaces is touched.
            apply(audited, outside, example("gpt-oss-20b"))
            for namespace in watched:
                deployment = audited.kubectl_json(
                    "get", "deployment", "gpt-oss-20b", "-n", namespace
                )
                pod = deployment["spec"]["template"]["spec"]
                assert pod["containers"][0]["image"] == (
                    "registry.internal.example/mirror/gantry-dev/gantry-runtime:0.1.0-vllm0.33.0"
                )
                assert pod["imagePullSecrets"] == [{"name": "registry-mirror"}]
                assert audited.kubectl_json("get", "networkpolicy", "gpt-oss-20b", "-n", namespace)
            time.sleep(3)  # a few reconcile rounds in which `outside` must stay untouched
            assert "status" not in md(audited, outside, "gpt-oss-20b")
            assert (
                audited.kubectl(
                    "get", "deployment", "gpt-oss-20b", "-n", outside, check=False
                ).returncode
                != 0
            )
        finally:
            operator.stop()
        assert "Traceback" not in operator.log(None), operator.log()
        assert "Not enough permissions" not in operator.log(None)
    finally:
        helm("uninstall", "residency", "--namespace=gantry-residency", "--wait", cluster=audited)

    used, denied = audit_permissions(audited.audit_log, username, mark)
    granted = granted_permissions(audited, "gantry-residency", account)
    _say(permission_table("namespace-scoped: used by the chart's ServiceAccount", used))
    assert denied == set(), f"the operator was refused: {sorted(denied)}"
    assert granted == set(), "uninstall removed the Roles and bindings"
    # Roles as rendered, one per watched namespace; checked against the live use.
    rendered = template(
        RESIDENCY_VALUES,
        namespace="gantry-residency",
        release="residency",
        sets=[f"watch.namespaces={{{','.join(watched)}}}", "crds.enabled=false"],
    )
    roles = [o for o in rendered if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    assert not [o for o in rendered if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role_grants = set().union(
        *(rule_permissions(r["rules"], r["metadata"]["namespace"]) for r in roles)
    )
    assert unused(role_grants, used) == [], "granted but never used"
    assert {p.namespace for p in used} == set(watched), "no cluster-wide call, no other namespace"


# -- HA ------------------------------------------------------------------------------------------


def test_one_peer_acts_and_a_standby_takes_over_when_it_dies(
    audited: LocalCluster, cluster_wide: Release, tmp_path: Path, fresh_ns: list[str]
) -> None:
    namespace = make_namespace(audited, unique("ha"), models_pvc=False)
    fresh_ns.append(namespace)

    def single(name: str) -> dict[str, Any]:
        manifest = example("gpt-oss-20b")
        manifest["metadata"]["name"] = name
        manifest["spec"]["replicas"] = 1
        return manifest

    active = ChartOperator(
        cluster_wide,
        tmp_path,
        pod_name="gantry-operator-a",
        extra_args=["--priority=200", "--verbose"],
    ).start()
    standby = ChartOperator(
        cluster_wide,
        tmp_path,
        pod_name="gantry-operator-b",
        extra_args=["--priority=100", "--verbose"],
    ).start()
    try:
        assert "--peering-lifetime=10" in active.argv

        def peers() -> set[str]:
            peering = audited.kubectl_json("get", "clusterkopfpeering", "gantry")
            return set(peering.get("status") or {})

        # Both keep-alives are in the peering object (identities are the pod names, POD_ID).
        wait_for(
            lambda: {"gantry-operator-a", "gantry-operator-b"} <= peers(),
            30,
            "both peers registered",
        )
        assert "Pausing the watch-stream for modeldeployments" in standby.log(None)
        apply(audited, namespace, single("ha-one"))
        wait_for(lambda: ready(audited, namespace, "ha-one"), SETTLE, "ha-one Ready")
        assert f"{namespace}/ha-one" in active.log(None)
        assert namespace not in standby.log(None), "the standby must not act"

        active.kill()
        killed = time.monotonic()
        apply(audited, namespace, single("ha-two"))
        wait_for(
            lambda: ready(audited, namespace, "ha-two"),
            TAKEOVER_SECONDS,
            f"ha-two Ready after the active peer died; standby log: {standby.log()}",
        )
        takeover = time.monotonic() - killed
        _say(f"standby took over and served a new ModelDeployment in {takeover:.1f}s")
        assert f"{namespace}/ha-two" in standby.log(None)
        assert "Resuming operations after the pause" in standby.log(None)
        assert "gantry-operator-b" in peers()
    finally:
        active.kill()
        standby.stop()


# -- upgrade and uninstall -------------------------------------------------------------------------


def test_upgrade_then_uninstall_keeps_the_crd_and_the_models(
    audited: LocalCluster,
    cluster_wide: Release,
    test_values: Path,
    tmp_path: Path,
    fresh_ns: list[str],
) -> None:
    chart = tmp_path / "gantry"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    before = cluster_wide.deployment()
    namespace = make_namespace(audited, unique("keep"), models_pvc=False)
    fresh_ns.append(namespace)
    apply(audited, namespace, example("gpt-oss-20b"))

    helm(
        "upgrade",
        "gantry",
        str(chart),
        "--namespace=gantry-system",
        f"--values={test_values}",
        "--set=replicaCount=3",
        "--set=residency.allowedRegions={eu-west-1}",
        "--wait",
        "--timeout=180s",
        cluster=audited,
    )
    history = json.loads(
        helm("history", "gantry", "--namespace=gantry-system", "-o", "json", cluster=audited).stdout
    )
    assert [(h["revision"], h["chart"], h["status"]) for h in history] == [
        (1, "gantry-0.1.0", "superseded"),
        (2, "gantry-0.1.1", "deployed"),
    ]
    after = cluster_wide.deployment()
    assert after["metadata"]["labels"]["helm.sh/chart"] == "gantry-0.1.1"
    assert after["spec"]["replicas"] == 3
    assert after["status"].get("readyReplicas") == 3
    checksum = "checksum/policy"
    old_checksum = before["spec"]["template"]["metadata"]["annotations"][checksum]
    new_checksum = after["spec"]["template"]["metadata"]["annotations"][checksum]
    assert new_checksum != old_checksum, "a policy change rolls the operator pods"
    policy = yaml.safe_load(cluster_wide.policy_text())
    assert policy["residency"]["allowedRegions"] == ["eu-west-1"]
    crd = audited.kubectl_json("get", "crd", "modeldeployments.gantry.dev")
    assert crd["metadata"]["labels"]["helm.sh/chart"] == "gantry-0.1.1"

    helm("uninstall", "gantry", "--namespace=gantry-system", "--wait", cluster=audited)
    try:
        crd = audited.kubectl_json("get", "crd", "modeldeployments.gantry.dev")
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert md(audited, namespace, "gpt-oss-20b")["spec"]["replicas"] == 2
        for name in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
            assert audited.kubectl_json("get", "crd", name), "kopf's CRDs are never deleted"
        gone = [
            ("deployment", "gantry-operator", "gantry-system"),
            ("serviceaccount", "gantry-operator", "gantry-system"),
            ("configmap", "gantry-operator-policy", "gantry-system"),
            ("clusterrole", "gantry-operator", None),
            ("clusterrolebinding", "gantry-operator", None),
            ("clusterkopfpeering", "gantry", None),
        ]
        for kind, name, where in gone:
            args = ["get", kind, name, *(["-n", where] if where else [])]
            assert audited.kubectl(*args, check=False).returncode != 0, f"{kind} {name} left"
    finally:
        # Reinstalling adopts the kept CRD (its Helm ownership annotations still name the
        # release) and leaves the module's release as the other tests expect it.
        install(audited, "gantry", "gantry-system", test_values, sets=[])
    assert md(audited, namespace, "gpt-oss-20b")["metadata"]["uid"]


# -- InferencePools ------------------------------------------------------------------------------

POOL_CRD = (
    ROOT / "tests" / "integration" / "fixtures" / "inference.networking.k8s.io_inferencepools.yaml"
)
POOL_CRD_NAME = "inferencepools.inference.networking.k8s.io"


def test_inference_pools_with_exactly_their_grants(
    audited: LocalCluster,
    cluster_wide: Release,  # owns the ModelDeployment CRD this release leaves out
    test_values: Path,
    tmp_path: Path,
    fresh_ns: list[str],
) -> None:
    """inferencePool.enabled: the chart's grants on InferencePools are all used (watch, list,
    create and patch by server-side apply) and nothing is refused; off (the other releases),
    no InferencePool grant exists."""
    assert not [
        p for p in granted_permissions(audited, "gantry-system", cluster_wide.service_account())
        if p.group == "inference.networking.k8s.io"
    ]  # fmt: skip
    audited.kubectl("apply", "--server-side", "-f", str(POOL_CRD))
    audited.wait_established(POOL_CRD_NAME)
    namespace = make_namespace(audited, unique("pool"))
    fresh_ns.append(namespace)
    release = install(
        audited,
        "pools",
        "gantry-pools",
        test_values,
        sets=["inferencePool.enabled=true", "crds.enabled=false", *NO_PROMETHEUS_OPERATOR],
    )
    username = release.username()
    try:
        mark = audit_mark(audited.audit_log)
        operator = ChartOperator(release, tmp_path, pod_name="pools-operator-rbac").start()
        try:
            model = example("gpt-oss-20b")
            model["spec"]["replicas"] = 1
            apply(audited, namespace, model)

            def pool() -> dict[str, Any] | None:
                result = audited.kubectl(
                    "get", "inferencepool", "gpt-oss-20b", "-n", namespace, "-o", "json",
                    check=False,
                )  # fmt: skip
                return json.loads(result.stdout) if result.returncode == 0 else None

            first = wait_for(pool, SETTLE, "InferencePool gpt-oss-20b")
            assert first is not None
            assert first["spec"]["targetPorts"] == [{"number": 8000}]
            # A hand edit is repaired (a patch over the existing pool).
            audited.kubectl(
                "patch", "inferencepool", "gpt-oss-20b", "-n", namespace, "--type=merge",
                "-p", '{"spec": {"targetPorts": [{"number": 9000}]}}',
            )  # fmt: skip
            wait_for(
                lambda: (pool() or {}).get("spec", {}).get("targetPorts") == [{"number": 8000}],
                SETTLE,
                "the edited InferencePool repaired",
            )
        finally:
            operator.stop()
        assert "Traceback" not in operator.log(None), operator.log()
    finally:
        helm("uninstall", "pools", "--namespace=gantry-pools", "--wait", cluster=audited)
        audited.kubectl("delete", "crd", POOL_CRD_NAME, "--wait=false", check=False)

    used, denied = audit_permissions(audited.audit_log, username, mark)
    assert denied == set(), f"the operator was refused: {sorted(denied)}"
    pool_used = {p for p in used if p.group == "inference.networking.k8s.io"}
    _say(permission_table("inferencePool.enabled: InferencePool calls", pool_used))
    rendered = template(
        namespace="gantry-pools", release="pools", sets=["inferencePool.enabled=true"]
    )
    (role,) = [o for o in rendered if o["kind"] == "ClusterRole"]
    pool_grants = {
        p for p in rule_permissions(role["rules"], None) if p.group == "inference.networking.k8s.io"
    }
    assert {p.verb for p in pool_grants} == {"list", "watch", "create", "patch"}
    assert unused(pool_grants, used) == [], "granted but never used"


def test_leader_worker_sets_with_exactly_their_grants(
    audited: LocalCluster,
    cluster_wide: Release,  # owns the ModelDeployment CRD this release leaves out
    test_values: Path,
    tmp_path: Path,
    fresh_ns: list[str],
) -> None:
    """leaderWorkerSet.enabled: a model moves from one H200 node (a Deployment) to two H100
    nodes (a LeaderWorkerSet) and back; every LeaderWorkerSet grant and the Deployment delete
    are used and nothing is refused. Only LeaderWorkerSet's CRD is installed here: this test
    writes the group's status as its controller would (Ready), so the Deployment goes."""
    assert not [
        p for p in granted_permissions(audited, "gantry-system", cluster_wide.service_account())
        if p.group == "leaderworkerset.x-k8s.io"
    ]  # fmt: skip
    crd = build.LWS.directory / "config" / "crd" / "bases" / lws.CRD_FILES[0]
    audited.kubectl("apply", "--server-side", "-f", str(crd))
    audited.wait_established(lws.CRD_NAMES[0])
    namespace = make_namespace(audited, unique("groups"))
    fresh_ns.append(namespace)
    release = install(
        audited,
        "groups",
        "gantry-groups",
        test_values,
        sets=["leaderWorkerSet.enabled=true", "crds.enabled=false", *NO_PROMETHEUS_OPERATOR],
    )
    username = release.username()

    def get(kind: str) -> dict[str, Any] | None:
        result = audited.kubectl(
            "get", kind, "deepseek-v3", "-n", namespace, "-o", "json", check=False
        )
        return json.loads(result.stdout) if result.returncode == 0 else None

    try:
        mark = audit_mark(audited.audit_log)
        operator = ChartOperator(release, tmp_path, pod_name="groups-operator-rbac").start()
        try:
            model = example("deepseek-v3-h100")
            model["spec"]["gpu"]["type"] = "H200"  # fits one H200 node: a Deployment
            apply(audited, namespace, model)
            wait_for(
                lambda: (get("deployment") or {}).get("status", {}).get("readyReplicas") == 1,
                SETTLE,
                "the one-node Deployment Ready",
            )
            model["spec"]["gpu"]["type"] = "H100-80GB"  # two H100 nodes: a LeaderWorkerSet
            apply(audited, namespace, model)
            groups = wait_for(lambda: get("leaderworkerset"), SETTLE, "the LeaderWorkerSet")
            assert groups is not None
            assert get("deployment") is not None, "the Deployment serves until the groups do"
            audited.kubectl(
                "patch", "leaderworkerset", "deepseek-v3", "-n", namespace,
                "--subresource=status", "--type=merge",
                "-p", '{"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}}',
            )  # fmt: skip
            wait_for(lambda: get("deployment") is None, SETTLE, "the Deployment deleted")
            model["spec"]["gpu"]["type"] = "H200"  # and back
            apply(audited, namespace, model)
            wait_for(lambda: get("leaderworkerset") is None, SETTLE, "the groups deleted")
        finally:
            operator.stop()
        assert "Traceback" not in operator.log(None), operator.log()
    finally:
        helm("uninstall", "groups", "--namespace=gantry-groups", "--wait", cluster=audited)
        audited.kubectl("delete", "crd", lws.CRD_NAMES[0], "--wait=false", check=False)

    used, denied = audit_permissions(audited.audit_log, username, mark)
    assert denied == set(), f"the operator was refused: {sorted(denied)}"
    ours = {p for p in used if p.group == "leaderworkerset.x-k8s.io"}
    _say(permission_table("leaderWorkerSet.enabled: LeaderWorkerSet calls", ours))
    rendered = template(
        namespace="gantry-groups", release="groups", sets=["leaderWorkerSet.enabled=true"]
    )
    (role,) = [o for o in rendered if o["kind"] == "ClusterRole"]
    grants = {
        p
        for p in rule_permissions(role["rules"], None)
        if p.group == "leaderworkerset.x-k8s.io"
        or (p.resource, p.verb) == ("deployments", "delete")
    }
    assert {p.verb for p in grants if p.group == "leaderworkerset.x-k8s.io"} == {
        "list", "watch", "create", "patch", "delete"
    }  # fmt: skip
    assert unused(grants, used) == [], "granted but never used"
