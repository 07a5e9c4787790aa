"""Gantry's alerts and monitoring manifests (deploy/monitoring), without binaries: conventions,
labels, the generated rule file, the PodMonitor/ServiceMonitor shape and the autoscaling
examples. Everything promtool runs is tests/integration/test_monitoring_rules.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gantry_operator.manifests.common import COMPONENT_RUNTIME, MANAGED_BY, MD_LABEL
from gantry_operator.spec import parse
from hack import monitoring

REPO = monitoring.ROOT
AUTOSCALING = monitoring.MONITORING / "autoscaling"
GOLDEN = REPO / "tests" / "unit" / "golden"
MONITORING_DOC = REPO / "docs" / "monitoring.md"

ALERTS = monitoring.alert_rules()
ALERT_NAMES = [rule["alert"] for rule in ALERTS]
TEST_FILES = sorted(monitoring.RULE_TESTS.glob("*.yaml"))


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", duration)
    assert parts, duration
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


# -- the rule file ------------------------------------------------------------------------------


def test_there_are_alerts_for_every_documented_concern() -> None:
    assert ALERT_NAMES == [
        "GantryKVCacheSaturated",
        "GantryRequestQueueGrowing",
        "GantryPreemptionsHigh",
        "GantryReplicasNotReady",
        "GantryModelLoadTooSlow",
        "GantryAutoscalerAtMax",
        "GantryOperatorScrapeErrors",
        "GantryReconcileErrors",
        "GantryOperatorDown",
        "GantryGatewayHoldTimeouts",
        "GantryGateway429Storm",
    ]


def test_rule_file_is_generated_from_the_prometheus_rule() -> None:
    """rules/gantry-alerts.yaml is the PrometheusRule's spec: rerun the generator if not."""
    rule = monitoring.prometheus_rule()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    text = monitoring.RULE_FILE.read_text()
    assert yaml.safe_load(text) == rule["spec"], "run: python -m hack.monitoring"
    assert text == monitoring.render_rule_file(), "run: python -m hack.monitoring"


def test_rule_file_render_follows_the_source(tmp_path: Path) -> None:
    """The generator is not a copy of a fixed text: a changed threshold shows in its output."""
    rule = monitoring.prometheus_rule()
    rule["spec"]["groups"][0]["rules"][0]["expr"] = "vllm:kv_cache_usage_perc > 0.5\n"
    rendered = monitoring.render_rule_file(rule)
    assert yaml.safe_load(rendered) == rule["spec"]
    assert rendered != monitoring.RULE_FILE.read_text()


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_alert_conventions(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Gantry")
    assert _seconds(rule["for"]) >= 60, "alerts wait before firing"
    assert rule["labels"]["severity"] in ("warning", "critical")
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook"}
    assert all(value.strip() for value in annotations.values())
    names = monitoring.metric_names(rule["expr"])
    assert names or "up{" in rule["expr"]
    unknown = names - monitoring.documented_metrics()
    assert not unknown, f"not in docs/metrics.md: {sorted(unknown)}"


#: Alerts about the operator as a whole; every other alert is about one ModelDeployment.
OPERATOR_WIDE = ("GantryReconcileErrors", "GantryOperatorDown")
#: Alerts about one tenant of the gateway (its API key), across models.
PER_TENANT = ("GantryGateway429Storm",)
PER_DEPLOYMENT = [rule for rule in ALERTS if rule["alert"] not in (*OPERATOR_WIDE, *PER_TENANT)]


@pytest.mark.parametrize("rule", PER_DEPLOYMENT, ids=[r["alert"] for r in PER_DEPLOYMENT])
def test_per_deployment_alerts_keep_namespace_and_modeldeployment(rule: dict[str, Any]) -> None:
    """Every alert on a deployment's series names the deployment (for routing and the runbook)."""
    groupings = re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"])
    assert groupings
    for labels in groupings:
        assert {label.strip() for label in labels.split(",")} == {"namespace", "modeldeployment"}
    assert "{{ $labels.namespace }}/{{ $labels.modeldeployment }}" in rule["annotations"]["summary"]


@pytest.mark.parametrize("name", PER_TENANT)
def test_per_tenant_alerts_keep_the_tenant(name: str) -> None:
    (rule,) = [r for r in ALERTS if r["alert"] == name]
    groupings = re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"])
    assert groupings
    assert all(labels.strip() == "tenant" for labels in groupings)
    assert "{{ $labels.tenant }}" in rule["annotations"]["summary"]


# -- promtool unit tests of every alert ---------------------------------------------------------


def _cases() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for path in TEST_FILES:
        data = yaml.safe_load(path.read_text())
        assert data["rule_files"] == ["../gantry-alerts.yaml"], path
        for test in data["tests"]:
            for case in test["alert_rule_test"]:
                found.append((path.name, case))
    return found


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_every_alert_has_firing_and_quiet_cases(rule: dict[str, Any]) -> None:
    cases = [case for _, case in _cases() if case["alertname"] == rule["alert"]]
    firing = [c for c in cases if c["exp_alerts"]]
    assert firing, f"no promtool case where {rule['alert']} fires"
    for case in firing:
        for alert in case["exp_alerts"]:
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
    # A quiet case evaluated after `for:` has passed, so it would have fired if it matched.
    quiet_late = [
        c for c in cases if not c["exp_alerts"] and _seconds(c["eval_time"]) > _seconds(rule["for"])
    ]
    assert quiet_late, f"no promtool case where {rule['alert']} must stay quiet"


# -- scrape manifests against what the operator builds -----------------------------------------


def _runtime_pod_templates() -> list[dict[str, Any]]:
    templates: list[dict[str, Any]] = []
    for path in sorted(GOLDEN.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment":
                templates.append(doc["spec"]["template"])
    return templates


def test_podmonitor_selects_the_runtime_pods_the_operator_builds() -> None:
    podmonitor = monitoring.load_yaml(monitoring.PODMONITOR)
    assert podmonitor["kind"] == "PodMonitor"
    spec = podmonitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    selector = spec["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": COMPONENT_RUNTIME,
    }
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    templates = _runtime_pod_templates()
    assert templates, "no runtime Deployment among the golden files"
    for template in templates:
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items()
        ports = [p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])]
        assert endpoint["port"] in ports
        assert MD_LABEL in labels


def test_podmonitor_relabels_the_deployment_namespace_and_pod() -> None:
    (endpoint,) = monitoring.load_yaml(monitoring.PODMONITOR)["spec"]["podMetricsEndpoints"]
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    # Prometheus exposes pod label gantry.dev/model-deployment as this meta label.
    sanitized = re.sub(r"[^a-zA-Z0-9_]", "_", MD_LABEL)
    assert relabel == {
        "modeldeployment": [f"__meta_kubernetes_pod_label_{sanitized}"],
        "namespace": ["__meta_kubernetes_namespace"],
        "pod": ["__meta_kubernetes_pod_name"],
    }
    assert all(r["action"] == "replace" for r in endpoint["relabelings"])


def test_podmonitor_restores_vllm_names_escaped_by_openmetrics_negotiation() -> None:
    """vLLM's prometheus-client sends ``vllm_x`` for ``vllm:x`` to Prometheus 2.x."""
    (endpoint,) = monitoring.load_yaml(monitoring.PODMONITOR)["spec"]["podMetricsEndpoints"]
    (rule,) = endpoint["metricRelabelings"]
    assert rule["sourceLabels"] == ["__name__"]
    assert rule["targetLabel"] == "__name__"
    pattern = re.compile(rule["regex"])  # Prometheus anchors relabel regexes
    replacement = rule["replacement"].replace("$1", r"\1")
    for name in ("vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_bucket"):
        escaped = name.replace(":", "_")
        match = pattern.fullmatch(escaped)
        assert match is not None
        assert match.expand(replacement) == name
        assert pattern.fullmatch(name) is None  # an unescaped name stays as it is
    assert pattern.fullmatch("process_cpu_seconds_total") is None


def test_servicemonitor_keeps_the_operators_namespace_label() -> None:
    monitor = monitoring.load_yaml(monitoring.SERVICEMONITOR)
    assert monitor["kind"] == "ServiceMonitor"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    # Without it the ModelDeployment's namespace label would become exported_namespace.
    assert endpoint["honorLabels"] is True
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "gantry",
        "app.kubernetes.io/component": "operator",
    }


# -- autoscaling examples -----------------------------------------------------------------------


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("name", ["hpa.yaml", "keda-scaledobject.yaml"])
def test_autoscaling_examples_turn_the_builtin_autoscaler_off(name: str) -> None:
    docs = _docs(AUTOSCALING / name)
    (deployment,) = [d for d in docs if d["kind"] == "ModelDeployment"]
    meta = deployment["metadata"]
    spec = parse(meta["name"], meta["namespace"], deployment["spec"])
    assert spec.autoscaling.enabled is False
    assert deployment["spec"]["autoscaling"]["enabled"] is False
    (scaler,) = [d for d in docs if d["kind"] != "ModelDeployment"]
    assert scaler["metadata"]["namespace"] == meta["namespace"]
    assert scaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "gantry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "name": meta["name"],
    }


def test_hpa_uses_the_adapters_external_metric() -> None:
    (hpa,) = [d for d in _docs(AUTOSCALING / "hpa.yaml") if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    name = metric["external"]["metric"]["name"]
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {
        "modeldeployment": hpa["spec"]["scaleTargetRef"]["name"]
    }
    adapter = monitoring.load_yaml(AUTOSCALING / "prometheus-adapter-values.yaml")
    assert name in [rule["name"]["as"] for rule in adapter["rules"]["external"]]


# -- docs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_alert_is_in_the_docs_table(name: str) -> None:
    rows = [line for line in MONITORING_DOC.read_text().splitlines() if line.startswith("|")]
    assert any(f"`{name}`" in row for row in rows)
