"""kopf handlers: decorators only. Every trigger calls the one level-triggered reconcile."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import kopf

from gantry_operator import metrics, scaling
from gantry_operator.reconcile import reconcile
from gantry_operator.spec import GROUP, PLURAL, VERSION

#: Drift repair and status refresh when no event arrives.
RESYNC_SECONDS = 30.0
#: Seconds between autoscaler ticks (scrape, export, decide).
AUTOSCALE_SECONDS = float(os.environ.get("GANTRY_AUTOSCALE_INTERVAL", "10"))
#: Seconds after which a silent peer counts as dead (set by gantry-operator --peering-lifetime).
PEERING_LIFETIME = 60
#: kopf's cluster-wide scans (list/watch namespaces, watch CRDs). gantry-operator turns them off
#: when it serves only named namespaces, so namespace-scoped RBAC is enough: kopf then takes the
#: names as given and finds the CRDs once, at start, through API discovery.
CLUSTER_SCANNING = True
CHILD_LABELS = {"app.kubernetes.io/managed-by": "gantry"}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's own bookkeeping lives in gantry.dev/ annotations, never in the user-facing status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
    settings.posting.level = 100  # no per-handler events; reconcile posts its own
    settings.watching.server_timeout = 270
    settings.peering.lifetime = PEERING_LIFETIME
    settings.scanning.disabled = not CLUSTER_SCANNING


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def reconcile_model_deployment(name: str, namespace: str | None, **_: Any) -> None:
    if namespace:
        reconcile(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
@kopf.on.event("v1", "services", labels=CHILD_LABELS)
@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
def reconcile_owner(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    owner = labels.get("gantry.dev/model-deployment")
    if owner and namespace:
        reconcile(namespace, owner)


@kopf.timer(GROUP, VERSION, PLURAL, interval=AUTOSCALE_SECONDS, initial_delay=AUTOSCALE_SECONDS)
def autoscale(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    if namespace:
        memory = memo.setdefault("autoscaler", scaling.Memory())
        scaling.tick(namespace, name, memory)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(name: str, namespace: str | None, **_: Any) -> None:
    if namespace:
        metrics.forget(namespace, name)
