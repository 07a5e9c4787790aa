"""`helm test` for Gantry: the operator's metrics Service answers with the operator's metrics.

Run by the chart's test Job (templates/tests/) in the operator image, with GANTRY_METRICS_URL
pointing at the metrics Service. It passes when, within GANTRY_TEST_TIMEOUT seconds, the
Service routes to a ready operator pod (selector, ports, NetworkPolicy and DNS are right) and
that pod serves Gantry's metric families (the operator started with its arguments and
policy). tests/integration/test_helm.py runs this same file against a live operator.
"""

import os
import sys
import time
import urllib.request

FAMILIES = (
    "# TYPE gantry_reconcile_total counter",
    "# TYPE gantry_modeldeployment_ready gauge",
    "# TYPE gantry_modeldeployment_replicas_desired gauge",
)


def check(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode(errors="replace")
    missing = [family for family in FAMILIES if family not in body]
    if missing:
        raise ValueError(f"{url} answered without {missing}")
    return body


def main() -> int:
    url = os.environ["GANTRY_METRICS_URL"]
    deadline = time.monotonic() + float(os.environ.get("GANTRY_TEST_TIMEOUT", "60"))
    while True:
        try:
            check(url)
        except (OSError, ValueError) as error:
            if time.monotonic() > deadline:
                print(f"FAIL: {error}", file=sys.stderr)
                return 1
            time.sleep(2)
        else:
            print(f"OK: {url} serves the Gantry operator's metrics")
            return 0


if __name__ == "__main__":
    sys.exit(main())
