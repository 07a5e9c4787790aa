"""The Helm chart's files, without helm: values.yaml and values.schema.json agree and are
documented key by key, the copies of canonical deploy/ files are identical, and the helm-test
script. Everything that runs helm or kube-score is tests/integration/test_chart.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from gantry_operator import metrics
from gantry_operator.cluster_policy import parse_policy, registry_allowed
from hack import chart, sync_chart
from hack.chart import CHART, ROOT


def _object_schemas(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            yield path, schema
        for key, value in schema.items():
            yield from _object_schemas(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _object_schemas(value, f"{path}/{index}")


def test_every_structured_object_in_the_schema_forbids_additional_properties() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    found = list(_object_schemas(schema))
    assert len(found) > 40
    open_ = [path for path, s in found if s.get("additionalProperties") is not False]
    assert open_ == []


def test_values_yaml_and_schema_name_the_same_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(value: Any, node: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, sub in value.items():
            found.add(prefix + key)
            child = node["properties"][key]
            if isinstance(sub, dict) and sub and child.get("additionalProperties") is False:
                found |= keys(sub, child, f"{prefix}{key}.")
        return found

    assert keys(values, schema) >= {"global.imageRegistry", "watch.namespaces", "tests.enabled"}
    assert set(schema["properties"]) == set(values)


#: values.yaml keys whose children are Kubernetes API fields (documented by the API itself).
_API_OBJECTS = re.compile(
    r"^(podSecurityContext|securityContext|resources|livenessProbe|readinessProbe"
    r"|operatorNetworkPolicy\.dns\.to|gateway\.resources)\."
)


def test_values_yaml_documents_every_key() -> None:
    """Each key of the chart's own structure has a comment right above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not match or line.lstrip().startswith("-"):
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if _API_OBJECTS.match(path):
            continue
        above = lines[index - 1].strip() if index else ""
        if not above.startswith("#"):
            undocumented.append(path)
    assert undocumented == []


def test_chart_copies_of_canonical_files_are_identical() -> None:
    assert sync_chart.differences() == [], "run `python -m hack.sync_chart`"
    copied = {copy.relative_to(ROOT).as_posix() for _, copy in sync_chart.pairs()}
    assert "charts/gantry/files/crds/gantry.dev_modeldeployments.yaml" in copied
    assert "operator/gantry_operator/crds/gantry.dev_modeldeployments.yaml" in copied
    assert {
        "charts/gantry/files/monitoring/servicemonitor-operator.yaml",
        "charts/gantry/files/monitoring/podmonitor-runtime.yaml",
        "charts/gantry/files/monitoring/prometheusrule.yaml",
    } <= copied


def test_sync_check_fails_when_a_copy_drifts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_dir, copy_dir = tmp_path / "deploy", tmp_path / "chart"
    source_dir.mkdir()
    copy_dir.mkdir()
    (source_dir / "a.yaml").write_text("a: 1\n")
    (copy_dir / "a.yaml").write_text("a: 2\n")
    (copy_dir / "gone.yaml").write_text("x: 1\n")
    monkeypatch.setattr(sync_chart, "ROOT", tmp_path)
    monkeypatch.setattr(sync_chart, "SOURCES", ((source_dir, "*.yaml", copy_dir),))
    assert sync_chart.main(["--check"]) == 1
    assert sync_chart.differences() == [
        "chart/a.yaml differs from deploy/a.yaml",
        "stray chart/gone.yaml (its canonical file is gone)",
    ]
    sync_chart.sync()
    assert sync_chart.differences() == []
    assert (copy_dir / "a.yaml").read_text() == "a: 1\n"
    assert not (copy_dir / "gone.yaml").exists()


# -- the policy file -------------------------------------------------------------------------------


class _Metrics:
    """Serves ``body`` at /metrics on a free loopback port."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _run_check(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(chart.HELM_TEST_SCRIPT)],
        env={"GANTRY_METRICS_URL": url, "GANTRY_TEST_TIMEOUT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_helm_test_script_passes_on_the_operators_metrics_and_fails_otherwise() -> None:
    assert metrics.reconciles is not None  # the operator's metric families are registered
    operator = _Metrics(prometheus_client.generate_latest(prometheus_client.REGISTRY))
    other = _Metrics(b"# TYPE something_else gauge\nsomething_else 1\n")
    try:
        ok = _run_check(operator.url)
        assert ok.returncode == 0, ok.stderr
        wrong = _run_check(other.url)
        assert wrong.returncode == 1
        assert "gantry_reconcile_total" in wrong.stderr
    finally:
        operator.close()
        other.close()


def test_residency_values_are_a_policy_the_operator_accepts() -> None:
    """values-residency.yaml's residency section, as the policy template passes it through,
    parses, and its registries allow the runtime image and the example weight image."""
    values = yaml.safe_load((CHART / "values-residency.yaml").read_text())
    mirror = values["global"]["imageRegistry"]
    runtime_image = f"{mirror}/gantry-dev/gantry-runtime:0.1.0-vllm0.33.0"
    policy = parse_policy({"residency": values["residency"], "runtime": {"image": runtime_image}})
    assert policy.offline is True
    assert registry_allowed(runtime_image, policy.allowed_registries)
    example = yaml.safe_load((ROOT / "deploy" / "examples" / "gpt-oss-20b.yaml").read_text())
    assert registry_allowed(
        example["spec"]["source"]["image"]["reference"], policy.allowed_registries
    )
    assert not registry_allowed("docker.io/vllm/vllm-openai:latest", policy.allowed_registries)
    assert policy.allowed_s3_endpoints
    assert policy.allowed_egress_endpoints
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["residency"]
    assert defaults["allowedRegistries"] == defaults["allowedS3Endpoints"] == []
    assert defaults["allowedEgressEndpoints"] == []
