"""The only module that talks to the Kubernetes API (kubernetes client, server-side apply).

Reads come from watches (kopf, see :mod:`gantry_operator.store`); this module only writes.
Every request has a deadline, so a stopping operator never waits on a hung connection.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from functools import cache
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from gantry_operator.spec import GROUP, KIND, PLURAL, VERSION

OPERATOR = "gantry-operator"
AUTOSCALER = "gantry-autoscaler"
#: Seconds for any one API request.
REQUEST_TIMEOUT = 10.0
log = logging.getLogger(__name__)

#: kind -> (API path prefix, plural) for every kind Gantry writes (no discovery round trips).
_PATHS = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "LeaderWorkerSet": ("/apis/leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
    "InferencePool": ("/apis/inference.networking.k8s.io/v1", "inferencepools"),
    KIND: (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


@cache
def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class NamespaceTerminatingError(RuntimeError):
    """The namespace is being deleted: nothing may be created in it any more."""


class GoneError(RuntimeError):
    """The object was deleted between reading it and writing to it."""


class RejectedError(RuntimeError):
    """The API server refused a write; ``message`` is its own explanation."""

    def __init__(self, kind: str, name: str, status: int, message: str) -> None:
        super().__init__(f"{kind} {name}: {message}")
        self.kind, self.name, self.status, self.message = kind, name, status, message


def _path(kind: str, namespace: str, name: str, subresource: str = "") -> str:
    prefix, plural = _PATHS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}/{name}"
    return f"{path}/{subresource}" if subresource else path


def _call(
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    api = _api_client()
    request = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
    response.read()
    if not 200 <= response.status <= 299:
        api.response_deserialize(response, {})  # raises ApiException with the server's body
    return cast(dict[str, Any], json.loads(response.data or b"{}"))


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def _translate(exc: ApiException, kind: str, namespace: str, name: str) -> Exception:
    body = exc.body or ""
    if exc.status == 403 and "NamespaceTerminating" in body:
        return NamespaceTerminatingError(namespace)
    if exc.status == 404:
        return GoneError(f"{kind} {namespace}/{name}")
    if exc.status in (400, 403, 409, 422):
        return RejectedError(kind, name, int(exc.status), _reason(exc))
    return exc


def apply(obj: Mapping[str, Any], *, manager: str = OPERATOR) -> dict[str, Any]:
    """Server-side apply (forced: call it only for objects this ModelDeployment controls)."""
    meta = obj["metadata"]
    try:
        return _call(
            "PATCH",
            _path(obj["kind"], meta["namespace"], meta["name"]),
            query={"fieldManager": manager, "force": "true"},
            body=dict(obj),
            content_type="application/apply-patch+yaml",
        )
    except ApiException as exc:
        raise _translate(exc, obj["kind"], meta["namespace"], meta["name"]) from None


def delete(kind: str, namespace: str, name: str, *, uid: str) -> bool:
    """Delete the object only if it is still the one with ``uid`` (a precondition)."""
    try:
        _call(
            "DELETE",
            _path(kind, namespace, name),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}},
        )
    except ApiException as exc:
        if exc.status in (404, 409):
            return False
        raise
    return True


def apply_status(
    namespace: str, name: str, status: Mapping[str, Any], *, manager: str
) -> dict[str, Any]:
    """Server-side apply of a ModelDeployment's status block owned by ``manager``; returns the
    object as stored."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "status": dict(status),
    }
    try:
        return _call(
            "PATCH",
            _path(KIND, namespace, name, "status"),
            query={"fieldManager": manager, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )
    except ApiException as exc:
        raise _translate(exc, KIND, namespace, name) from None


def scale(namespace: str, name: str, replicas: int, *, manager: str = AUTOSCALER) -> None:
    """Set a ModelDeployment's replicas through its scale subresource (like `kubectl scale`)."""
    try:
        _call(
            "PATCH",
            _path(KIND, namespace, name, "scale"),
            query={"fieldManager": manager},
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )
    except ApiException as exc:
        raise _translate(exc, KIND, namespace, name) from None


def event(owner: Mapping[str, Any], *, reason: str, message: str, warning: bool = False) -> None:
    """Record an Event on a ModelDeployment (best effort: events are not state)."""
    meta = owner["metadata"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"]},
        "eventTime": now,
        "action": reason,
        "reason": reason,
        "note": message[:1024],
        "type": "Warning" if warning else "Normal",
        "reportingController": f"{GROUP}/{OPERATOR}",
        "reportingInstance": OPERATOR,
        "regarding": {
            "apiVersion": owner.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": owner.get("kind", KIND),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
    }
    try:
        _call("POST", f"/apis/events.k8s.io/v1/namespaces/{meta['namespace']}/events", body=body)
    except ApiException as exc:
        log.warning("Could not record event %s on %s: %s", reason, meta["name"], exc.reason)
