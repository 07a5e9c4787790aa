"""Every PromQL expression of the Grafana dashboards parsed by promtool (Debian's prometheus
package, installed on first use). The pure-Python checks of the dashboards are
tests/unit/test_monitoring_dashboards.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hack import monitoring
from localcluster.prometheus import ensure_promtool

pytestmark = pytest.mark.integration

DASHBOARDS = monitoring.dashboards()
NAMES = sorted(DASHBOARDS)


@pytest.fixture(scope="session")
def promtool() -> Path:
    return ensure_promtool()


@pytest.mark.parametrize("name", NAMES)
def test_every_expression_parses(name: str, promtool: Path, tmp_path: Path) -> None:
    dashboard = DASHBOARDS[name]
    exprs = {f"{q.where}": q.runnable() for q in monitoring.queries(dashboard)}
    assert len(exprs) == len(monitoring.queries(dashboard)), "query names must be unique"
    monitoring.check_parses(promtool, tmp_path, exprs)


def test_parse_check_rejects_a_broken_expression(promtool: Path, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="promtool rejected"):
        monitoring.check_parses(promtool, tmp_path, {"broken": "sum(rate(x[5m])"})
