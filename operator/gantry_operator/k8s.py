"""The only module that talks to the Kubernetes API (kubernetes client, server-side apply)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from functools import cache
from typing import Any, cast

from kubernetes import client, config, dynamic
from kubernetes.client.exceptions import ApiException

from gantry_operator.spec import GROUP, KIND, PLURAL, VERSION

FIELD_MANAGER = "gantry-operator"
log = logging.getLogger(__name__)
_lock = threading.Lock()


@cache
def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


@cache
def _dynamic() -> dynamic.DynamicClient:
    with _lock:
        return dynamic.DynamicClient(_api_client())


def _resource(api_version: str, kind: str) -> Any:
    return _dynamic().resources.get(api_version=api_version, kind=kind)


class NamespaceTerminatingError(RuntimeError):
    """The namespace is being deleted: nothing may be created in it any more."""


class GoneError(RuntimeError):
    """The ModelDeployment was deleted between reading it and writing to it."""


def apply(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side apply with Gantry's field manager, taking ownership of conflicting fields."""
    resource = _resource(obj["apiVersion"], obj["kind"])
    try:
        result = resource.server_side_apply(
            body=dict(obj),
            name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
    except ApiException as exc:
        if exc.status == 403 and "NamespaceTerminating" in (exc.body or ""):
            raise NamespaceTerminatingError(obj["metadata"].get("namespace")) from None
        raise
    return cast(dict[str, Any], result.to_dict())


def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = _resource(api_version, kind).get(name=name, namespace=namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return cast(dict[str, Any], obj.to_dict())


def delete(api_version: str, kind: str, namespace: str, name: str) -> bool:
    """Delete if present; True when something was deleted."""
    try:
        _resource(api_version, kind).delete(name=name, namespace=namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = _resource("v1", "Pod").get(namespace=namespace, label_selector=selector)
    return [cast(dict[str, Any], item.to_dict()) for item in pods.items]


def get_model_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    return get(f"{GROUP}/{VERSION}", KIND, namespace, name)


def patch_status(namespace: str, name: str, status_patch: Mapping[str, Any]) -> None:
    """Merge-patch ``status`` through the status subresource."""
    api = client.CustomObjectsApi(_api_client())
    try:
        api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status_patch)},
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )
    except ApiException as exc:
        if exc.status == 404:
            raise GoneError(f"{namespace}/{name}") from None
        raise


def scale(namespace: str, name: str, replicas: int) -> None:
    """Set a ModelDeployment's replicas through its scale subresource."""
    api = client.CustomObjectsApi(_api_client())
    try:
        api.patch_namespaced_custom_object_scale(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"spec": {"replicas": replicas}},
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )
    except ApiException as exc:
        if exc.status == 404:
            raise GoneError(f"{namespace}/{name}") from None
        raise


def event(owner: Mapping[str, Any], *, reason: str, message: str, warning: bool = False) -> None:
    """Record an Event on a ModelDeployment (best effort: events are not state)."""
    meta = owner["metadata"]
    now = dt.datetime.now(dt.UTC)
    body = client.EventsV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}-", namespace=meta["namespace"]),
        event_time=now,
        action=reason,
        reason=reason,
        note=message[:1024],
        type="Warning" if warning else "Normal",
        reporting_controller=f"{GROUP}/{FIELD_MANAGER}",
        reporting_instance=FIELD_MANAGER,
        regarding=client.V1ObjectReference(
            api_version=owner["apiVersion"],
            kind=owner["kind"],
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
        ),
    )
    try:
        client.EventsV1Api(_api_client()).create_namespaced_event(meta["namespace"], body)
    except ApiException as exc:
        log.warning("Could not record event %s on %s: %s", reason, meta["name"], exc.reason)
