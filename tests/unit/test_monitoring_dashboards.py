"""Gantry's Grafana dashboards (deploy/monitoring/dashboards): structure, portability, metric
names against docs/metrics.md. promtool parsing every expression is
tests/integration/test_monitoring_dashboards.py.

That every query returns data from a real Prometheus scraping real simulators is
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from hack import monitoring

DASHBOARDS = monitoring.dashboards()
NAMES = sorted(DASHBOARDS)
#: Series outside the metric contract that dashboards may read: Prometheus' own.
PROMETHEUS_SERIES = ("ALERTS{",)
#: Panel types these dashboards use (all built into Grafana 10/11).
PANEL_TYPES = {"timeseries", "stat", "gauge", "table"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__data", "datasource"}


def _all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_the_two_dashboards_exist() -> None:
    assert NAMES == ["gantry-fleet.json", "gantry-model.json"]
    assert {d["uid"] for d in DASHBOARDS.values()} == {"gantry-fleet", "gantry-model"}


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_schema(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert dashboard["schemaVersion"] == 39
    assert dashboard["id"] is None, "an exported id would clash on import"
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"].startswith("Gantry / ")
    assert "gantry" in dashboard["tags"]
    for key in ("panels", "templating", "time", "annotations", "version", "refresh"):
        assert key in dashboard
    ids = [panel["id"] for panel in _all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("name", NAMES)
def test_datasource_is_a_variable(name: str) -> None:
    dashboard = DASHBOARDS[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource"
    assert source["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == expected
            # The form Grafana's Prometheus variable editor saves: the query as a string.
            assert set(variable["query"]) == {"query", "refId"}
            assert variable["query"]["query"].startswith("label_values(")
    for panel in monitoring.panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_has_queries(name: str) -> None:
    for panel in monitoring.panels(DASHBOARDS[name]):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"], panel["id"]
        assert panel["description"], panel["title"]
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no target"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in targets), panel["title"]


@pytest.mark.parametrize("name", NAMES)
def test_panels_fit_the_grid_without_overlap(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in DASHBOARDS[name]["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] < pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells


@pytest.mark.parametrize("name", NAMES)
def test_no_hard_coded_instances(name: str) -> None:
    """Queries select by variables and Gantry's labels, never by one cluster's names."""
    for query in monitoring.queries(DASHBOARDS[name]):
        for label in ("instance", "pod", "job", "node", "container", "service"):
            assert not re.search(rf"\b{label}\s*=", query.expr), query.where
        assert not re.search(r"\d+\.\d+\.\d+\.\d+|:\d{2,5}\b", query.expr), query.where
        values = re.findall(r'\b(?:namespace|modeldeployment)\s*=~?\s*"([^"]*)"', query.expr)
        assert all(v.startswith("$") for v in values), query.where


@pytest.mark.parametrize("name", NAMES)
def test_variables_used_are_defined(name: str) -> None:
    dashboard = DASHBOARDS[name]
    defined = {v["name"] for v in dashboard["templating"]["list"]} | BUILTIN_VARIABLES
    for query in monitoring.queries(dashboard):
        used = set(re.findall(r"\$\{?(\w+)", query.expr))
        assert used <= defined, f"{query.where}: {sorted(used - defined)}"
        monitoring.substitute(query.expr, monitoring.variable_values(dashboard["uid"]))


def test_substitute_rejects_an_unknown_variable() -> None:
    with pytest.raises(KeyError, match="cluster"):
        monitoring.substitute('up{cluster="$cluster"}', monitoring.variable_values("gantry-model"))
    assert (
        monitoring.substitute("rate(x[$__rate_interval]) ${namespace} [[namespace]]", {
            "__rate_interval": "30s", "namespace": "a",
        })
        == "rate(x[30s]) a a"
    )  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_metric_names_are_in_the_contract(name: str) -> None:
    documented = monitoring.documented_metrics()
    for query in monitoring.queries(DASHBOARDS[name]):
        names = monitoring.metric_names(query.expr)
        assert names or any(s in query.expr for s in PROMETHEUS_SERIES), query.where
        unknown = names - documented
        assert not unknown, f"{query.where}: not in docs/metrics.md: {sorted(unknown)}"


def test_documented_metrics_include_both_sources() -> None:
    documented = monitoring.documented_metrics()
    assert "vllm:time_to_first_token_seconds_bucket" in documented
    assert "vllm:time_to_first_token_seconds" not in documented  # a histogram has no bare series
    assert "gantry_modeldeployment_replicas_max" in documented
    assert "vllm:e2e_request_latency_seconds_bucket" in documented


def _model_exprs() -> list[str]:
    return [q.expr for q in monitoring.queries(DASHBOARDS["gantry-model.json"])]


@pytest.mark.parametrize(
    "histogram",
    [
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
    ],
)
def test_model_dashboard_has_latency_percentiles(histogram: str) -> None:
    exprs = _model_exprs()
    for quantile in ("0.5", "0.9", "0.99"):
        expected = (
            f"histogram_quantile({quantile}, sum by (le) (rate({histogram}_bucket"
            '{namespace="$namespace", modeldeployment="$modeldeployment"}[$__rate_interval])))'
        )
        assert expected in exprs


def test_model_dashboard_variables_chain() -> None:
    variables = {v["name"]: v for v in DASHBOARDS["gantry-model.json"]["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "modeldeployment"]
    assert '{namespace="$namespace"}' in variables["modeldeployment"]["query"]["query"]
    for query in monitoring.queries(DASHBOARDS["gantry-model.json"]):
        if query.where.startswith("panel"):
            assert 'namespace="$namespace", modeldeployment="$modeldeployment"' in query.expr


def test_fleet_dashboard_covers_the_overview() -> None:
    text = " ".join(q.expr for q in monitoring.queries(DASHBOARDS["gantry-fleet.json"]))
    for needed in (
        "gantry_modeldeployment_plan_info",
        "gantry_modeldeployment_replicas_desired",
        "gantry_modeldeployment_replicas_ready",
        "gantry_modeldeployment_gpus",
        "vllm:request_success_total",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        'ALERTS{alertname=~"Gantry.*"',
    ):
        assert needed in text, needed
