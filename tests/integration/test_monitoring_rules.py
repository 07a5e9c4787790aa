"""Gantry's alerts and autoscaling queries checked by promtool (Debian's prometheus package,
installed on first use): the rule file, its unit tests, mutation checks that the cases notice a
silenced or always-firing alert, and the KEDA / prometheus-adapter queries. The pure-Python
checks of the same files are tests/unit/test_monitoring_rules.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack import monitoring
from localcluster.prometheus import ensure_promtool

pytestmark = pytest.mark.integration

AUTOSCALING = monitoring.MONITORING / "autoscaling"

ALERTS = monitoring.alert_rules()
ALERT_NAMES = [rule["alert"] for rule in ALERTS]
TEST_FILES = sorted(monitoring.RULE_TESTS.glob("*.yaml"))


@pytest.fixture(scope="session")
def promtool() -> Path:
    return ensure_promtool()


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)


def test_promtool_check_rules(promtool: Path) -> None:
    result = _run([str(promtool), "check", "rules", str(monitoring.RULE_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_check_rules_rejects_a_broken_expression(promtool: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "groups:\n- name: g\n  rules:\n  - alert: Broken\n    expr: sum by (namespace (up)\n"
    )
    result = _run([str(promtool), "check", "rules", str(broken)])
    assert result.returncode != 0


# -- promtool unit tests of every alert ---------------------------------------------------------


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    assert len(TEST_FILES) >= 3
    result = _run([str(promtool), "test", "rules", *map(str, TEST_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def _rule_files_with(tmp_path: Path, alert: str, expr: str) -> list[Path]:
    """The promtool test files, in ``tmp_path``, against a rule file where ``alert`` has
    ``expr``."""
    rule = monitoring.prometheus_rule()
    for group in rule["spec"]["groups"]:
        for entry in group["rules"]:
            if entry.get("alert") == alert:
                entry["expr"] = expr
    (tmp_path / "gantry-alerts.yaml").write_text(monitoring.render_rule_file(rule))
    tests = tmp_path / "tests"
    tests.mkdir()
    for path in TEST_FILES:  # only the files that test this alert: the others cannot notice
        if f"alertname: {alert}\n" in path.read_text():
            shutil.copy(path, tests / path.name)
    return sorted(tests.glob("*.yaml"))


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_promtool_cases_notice_a_silenced_alert(
    rule: dict[str, Any], promtool: Path, tmp_path: Path
) -> None:
    """The unit tests really test each alert: one that never fires makes them fail."""
    silenced = f"({rule['expr'].strip()}) unless on () vector(1)\n"
    files = _rule_files_with(tmp_path, rule["alert"], silenced)
    result = _run([str(promtool), "test", "rules", *map(str, files)])
    assert result.returncode != 0
    assert f"alertname: {rule['alert']}" in result.stdout + result.stderr


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_promtool_cases_notice_an_alert_that_always_fires(
    rule: dict[str, Any], promtool: Path, tmp_path: Path
) -> None:
    """...and one that fires on any input (here: whenever any series exists) fails them too."""
    noisy = f'({rule["expr"].strip()}) or (count({{__name__=~".+"}}) > 0)\n'
    files = _rule_files_with(tmp_path, rule["alert"], noisy)
    result = _run([str(promtool), "test", "rules", *map(str, files)])
    assert result.returncode != 0
    assert f"alertname: {rule['alert']}" in result.stdout + result.stderr


# -- scrape manifests against what the operator builds -----------------------------------------


# -- autoscaling examples -----------------------------------------------------------------------


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_keda_queries_the_deployments_waiting_requests(promtool: Path, tmp_path: Path) -> None:
    docs = _docs(AUTOSCALING / "keda-scaledobject.yaml")
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    name = scaled["spec"]["scaleTargetRef"]["name"]
    assert query.startswith("sum(vllm:num_requests_waiting{")
    assert f'modeldeployment="{name}"' in query
    monitoring.check_parses(promtool, tmp_path, {"keda": query})


def test_prometheus_adapter_queries_parse(promtool: Path, tmp_path: Path) -> None:
    adapter = monitoring.load_yaml(AUTOSCALING / "prometheus-adapter-values.yaml")
    exprs: dict[str, str] = {}
    for kind in ("external", "custom"):
        for i, rule in enumerate(adapter["rules"][kind]):
            exprs[f"{kind}_series_{i}"] = rule["seriesQuery"]
            # The adapter's template: <<.LabelMatchers>> is a matcher list, <<.GroupBy>> labels.
            exprs[f"{kind}_query_{i}"] = (
                rule["metricsQuery"]
                .replace("<<.LabelMatchers>>", 'namespace="team-a"')
                .replace("<<.GroupBy>>", "namespace, modeldeployment")
            )
    monitoring.check_parses(promtool, tmp_path, exprs)
