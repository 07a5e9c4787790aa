"""Gantry's monitoring files (deploy/monitoring) as data, for the tests and one generator.

``python -m hack.monitoring`` rewrites ``deploy/monitoring/rules/gantry-alerts.yaml``,
the plain Prometheus rule file, from the ``spec`` of the canonical
``deploy/monitoring/prometheusrule.yaml``; ``tests/unit/test_monitoring_rules.py`` fails when
the two differ.

The dashboard helpers find every PromQL expression of a Grafana dashboard (panel targets and
template variable queries) and substitute Grafana's variables so that Prometheus itself, or
``promtool``, can parse and run them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
RULE_FILE = MONITORING / "rules" / "gantry-alerts.yaml"
RULE_TESTS = MONITORING / "rules" / "tests"
DASHBOARDS = MONITORING / "dashboards"
PODMONITOR = MONITORING / "podmonitor-runtime.yaml"
SERVICEMONITOR = MONITORING / "servicemonitor-operator.yaml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

HEADER = (
    "# GENERATED from deploy/monitoring/prometheusrule.yaml (its spec) by\n"
    "# `python -m hack.monitoring`: edit that file, then rerun the command.\n"
    "# A plain Prometheus rule file, for `promtool check rules` / `promtool test rules` and for\n"
    "# a Prometheus without the Prometheus Operator (rule_files: in prometheus.yml).\n"
)


# -- alert rules --------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def prometheus_rule() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(PROMETHEUS_RULE)
    return data


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, like the source."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def render_rule_file(rule: Mapping[str, Any] | None = None) -> str:
    """The text of rules/gantry-alerts.yaml for a PrometheusRule (default: the canonical one)."""
    spec = (rule if rule is not None else prometheus_rule())["spec"]
    body = yaml.dump(
        spec, Dumper=_BlockDumper, sort_keys=False, width=10_000, allow_unicode=True, indent=2
    )
    return HEADER + body


def alert_rules(rule: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every alerting rule of the PrometheusRule, in file order."""
    spec = (rule if rule is not None else prometheus_rule())["spec"]
    return [r for group in spec["groups"] for r in group["rules"] if "alert" in r]


# -- metric names -------------------------------------------------------------------------------

#: Gantry's and vLLM's metric names; PromQL functions and keywords never look like these.
_METRIC = re.compile(r"\b(vllm:[a-z0-9_:]+|gantry_[a-z0-9_]+)")


def metric_names(expr: str) -> set[str]:
    """The ``vllm:*`` and ``gantry_*`` metric names an expression reads."""
    return set(_METRIC.findall(expr))


def documented_metrics() -> set[str]:
    """Every series name docs/metrics.md documents, as PromQL sees it.

    ``_min`` / ``_max`` written after a name stand for that name with the suffix replaced. The
    documented histograms (the ``*_seconds`` names) are queried as their ``_bucket``, ``_sum``
    and ``_count`` series, never under the bare name.
    """
    text = METRICS_DOC.read_text()
    names: set[str] = set()
    for match in re.finditer(
        r"`((?:vllm:|gantry_)[a-z0-9_:]+)(?:\{[^}`]*\})?`( / `(_[a-z]+)`)?", text
    ):
        names.add(match.group(1))
        if match.group(3):
            names.add(match.group(1).rsplit("_", 1)[0] + match.group(3))
    series: set[str] = set()
    for name in names:
        if name.endswith("_seconds"):
            series.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            series.add(name)
    return series


# -- dashboards ---------------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON in deploy/monitoring/dashboards, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows; rows themselves are skipped."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard: a panel target or a template variable query."""

    dashboard: str  # the dashboard's uid
    where: str  # "panel <id> <title> / <refId>" or "variable <name>"
    expr: str  # as written, with Grafana's variables

    @property
    def key(self) -> tuple[str, str]:
        return (self.dashboard, self.where)

    def runnable(self) -> str:
        """The expression with the test values of its dashboard's variables."""
        return substitute(self.expr, variable_values(self.dashboard))


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<metric>.+),\s*)?(?P<label>\w+)\)$", re.DOTALL)


def variable_query_expr(query: str) -> str:
    """The PromQL behind a Grafana Prometheus variable query.

    ``label_values(metric, label)`` lists the values of ``label`` on ``metric``: the same
    series as ``count by (label) (metric)``.
    """
    match = _LABEL_VALUES.match(query.strip())
    if match is None:
        return query
    metric = match.group("metric") or "up"
    return f"count by ({match.group('label')}) ({metric})"


def queries(dashboard: Mapping[str, Any]) -> list[Query]:
    uid = str(dashboard["uid"])
    found: list[Query] = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, Mapping) else str(query)
        found.append(Query(uid, f"variable {variable['name']}", variable_query_expr(text)))
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            where = (
                f"panel {panel.get('id')} {panel.get('title', '')!s} / {target.get('refId', '')}"
            )
            found.append(Query(uid, where, str(target.get("expr", ""))))
    return found


#: Values for Grafana's variables when a test runs a dashboard query against Prometheus: the
#: per-model dashboard looks at one deployment, the fleet dashboard at "All" namespaces (its
#: multi-value variable's allValue).
TEST_VARIABLES: dict[str, dict[str, str]] = {
    "gantry-model": {"namespace": "team-a", "modeldeployment": "gpt-oss-20b"},
    "gantry-fleet": {"namespace": ".*"},
}
#: Grafana's built-in interval variables, short enough for a test's minute of data.
BUILTIN_VARIABLES: dict[str, str] = {"__rate_interval": "30s", "__interval": "5s", "__range": "5m"}


def variable_values(dashboard_uid: str) -> dict[str, str]:
    return {**BUILTIN_VARIABLES, **TEST_VARIABLES.get(dashboard_uid, {})}


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name``, ``${name}``, ``${name:fmt}`` and ``[[name]]`` with ``values``.

    An unknown variable raises ``KeyError``, so a new dashboard variable cannot slip through
    untested.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"no test value for the dashboard variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def check_parses(promtool: Path, workdir: Path, exprs: Mapping[str, str]) -> None:
    """Fail unless every expression parses: ``promtool check rules`` on them as recording rules
    (named by the keys of ``exprs``)."""
    rules = [{"record": f"parse:{i}", "expr": expr} for i, expr in enumerate(exprs.values())]
    path = workdir / "parse-check.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "parse", "rules": rules}]}))
    result = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        names = "\n".join(f"  parse:{i} = {key}" for i, key in enumerate(exprs))
        raise AssertionError(
            f"promtool rejected an expression:\n{result.stdout}{result.stderr}\nwhere\n{names}"
        )


def main() -> int:
    new = render_rule_file()
    if not RULE_FILE.exists() or RULE_FILE.read_text() != new:
        RULE_FILE.parent.mkdir(parents=True, exist_ok=True)
        RULE_FILE.write_text(new)
        print(f"updated {RULE_FILE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def runtime_target_labels(namespace: str, deployment: str, pod: str) -> dict[str, str]:
    """The target labels podmonitor-runtime.yaml's relabelling gives a runtime pod."""
    (endpoint,) = load_yaml(PODMONITOR)["spec"]["podMetricsEndpoints"]
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_label_gantry_dev_model_deployment": deployment,
    }
    labels: dict[str, str] = {}
    for rule in endpoint["relabelings"]:
        if rule["action"] != "replace":
            raise ValueError(f"unexpected relabelling action in the PodMonitor: {rule}")
        (source,) = rule["sourceLabels"]
        labels[rule["targetLabel"]] = meta[source]
    return labels


def runtime_metric_relabelings() -> list[dict[str, Any]]:
    """The PodMonitor's metricRelabelings (Prometheus Operator style)."""
    (endpoint,) = load_yaml(PODMONITOR)["spec"]["podMetricsEndpoints"]
    return list(endpoint.get("metricRelabelings", []))
