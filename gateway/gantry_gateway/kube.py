"""The only module that talks to the Kubernetes API: list+watch streams and the scale write.

Each :class:`WatchStream` runs in a thread: it lists (one GET), hands the items over as a
reset, then watches from the list's resourceVersion and hands over every event; on a watch
that expires (410 Gone) or fails it lists again after a short backoff. Nothing is polled.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "gantry.dev", "v1alpha1", "modeldeployments"
FIELD_MANAGER = "gantry-gateway"
WATCH_SECONDS = 300
REQUEST_TIMEOUT = 10.0


def api_client(kubeconfig: Path | None) -> Any:
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig))
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    return client.ApiClient()


@dataclass(frozen=True)
class Source:
    """One list+watch: a collection path and a label selector."""

    kind: str  # "ModelDeployment", "Pod", "Secret", "Peer"
    namespace: str  # "" = every namespace
    selector: str = ""

    @property
    def path(self) -> str:
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        if self.kind == "ModelDeployment":
            return f"/apis/{GROUP}/{VERSION}{scope}/{PLURAL}"
        plural = "secrets" if self.kind == "Secret" else "pods"
        return f"/api/v1{scope}/{plural}"


#: on_reset(source, items) and on_event(source, type, object), called from the watch thread.
ResetFn = Callable[[Source, list[dict[str, Any]]], None]
EventFn = Callable[[Source, str, dict[str, Any]], None]


class WatchStream(threading.Thread):
    def __init__(
        self, api: Any, source: Source, on_reset: ResetFn, on_event: EventFn, stop: threading.Event
    ) -> None:
        super().__init__(name=f"watch-{source.kind}-{source.namespace or 'all'}", daemon=True)
        self.api, self.source, self.stop = api, source, stop
        self.on_reset, self.on_event = on_reset, on_event

    def _get(self, query: Mapping[str, str], stream: bool) -> Any:
        params = {"labelSelector": self.source.selector} if self.source.selector else {}
        params.update(query)
        request = self.api.param_serialize(
            "GET",
            self.source.path,
            query_params=list(params.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        timeout = (REQUEST_TIMEOUT, WATCH_SECONDS + 30) if stream else REQUEST_TIMEOUT
        response = self.api.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            self.api.response_deserialize(response, {})  # raises ApiException
        return response

    def _list(self) -> str:
        response = self._get({}, stream=False)
        response.read()
        body = json.loads(response.data)
        self.on_reset(self.source, list(body.get("items") or ()))
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str | None:
        """Watch from ``version``; returns the last version seen, None to list again."""
        query = {
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        response = self._get(query, stream=True)
        try:
            buffer = b""
            for chunk in response.response.stream(64 * 1024, decode_content=True):
                if self.stop.is_set():
                    return None
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        log.info("Watch of %s ended: %s", self.source.path, obj.get("message"))
                        return None  # 410 Gone and friends: list again
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self.on_event(self.source, kind, obj)
            return version
        finally:
            response.release_conn()

    def run(self) -> None:
        version: str | None = None
        while not self.stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
            except Exception as exc:  # the API server restarted, a network error, ...
                log.warning("Watch of %s failed (%s); listing again", self.source.path, exc)
                version = None
                self.stop.wait(1.0)


def scale_from_zero(api: Any, namespace: str, name: str, resource_version: str) -> bool:
    """Set a ModelDeployment's replicas from 0 to 1 through its scale subresource, on the
    condition that the object is still at ``resource_version`` (the one seen with 0 replicas):
    when someone changed it since, the API server answers 409 and nothing is written. True when
    this call scaled it."""
    body = {"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": 1}}
    request = api.param_serialize(
        "PATCH",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/scale",
        query_params=[("fieldManager", FIELD_MANAGER)],
        header_params={
            "Accept": "application/json",
            "Content-Type": "application/merge-patch+json",
        },
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
    response.read()
    if response.status == 409:  # changed since: the watch brings the new replicas
        return False
    if not 200 <= response.status <= 299:
        try:
            api.response_deserialize(response, {})
        except ApiException as exc:
            raise RuntimeError(
                f"scaling ModelDeployment {namespace}/{name} to 1 failed: {exc.status} {exc.reason}"
            ) from None
    return True
