"""The API server's own request counters (``apiserver_request_total``), to count what a client
sent without mocking anything."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from localcluster.cluster import LocalCluster

#: (verb, resource, subresource) -> requests since the API server started.
Requests = Counter[tuple[str, str, str]]


def requests(cluster: LocalCluster) -> Requests:
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    counts: Requests = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            labels = sample.labels
            key = (
                labels.get("verb", ""),
                labels.get("resource", ""),
                labels.get("subresource", ""),
            )
            counts[key] += int(sample.value)
    return counts


def delta(before: Requests, after: Requests, resources: set[str], verbs: set[str]) -> Requests:
    """Requests made between two readings, for these resources and verbs."""
    return Counter(
        {
            key: after[key] - before.get(key, 0)
            for key in after
            if key[0] in verbs and key[1] in resources and after[key] > before.get(key, 0)
        }
    )
