"""The running operator: watch events fill the store and queue reconciles; workers, the resync
and the autoscaler run as asyncio tasks. kopf delivers the events (handlers.py) and nothing
else: no kopf timers, daemons, finalizers or annotations on the user's objects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gantry_operator import metrics
from gantry_operator.autoscaling.loop import Autoscaler
from gantry_operator.config import OperatorConfig
from gantry_operator.desired import OPTIONAL_KINDS
from gantry_operator.reconcile import Reconciler
from gantry_operator.store import (
    GATEWAY_POD,
    MODEL_DEPLOYMENT,
    POD,
    Key,
    Store,
    key_of,
    owner_key,
    slim,
)
from gantry_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.store = Store()
        self.reconciler = Reconciler(self.store, config)
        self.autoscaler = Autoscaler(
            self.store,
            self.reconciler,
            interval=config.autoscale_seconds,
            limits=config.scrape,
            gateway_namespace=config.gateway_namespace,
        )
        self.queue: WorkQueue[Key] | None = None
        #: Reconciles are synchronous (the kubernetes client); they run on their own threads.
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="gantry-reconcile")
        self._tasks: list[asyncio.Task[None]] = []

    # -- watch events ---------------------------------------------------------------------
    def model_deployment_event(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        key = key_of(obj)
        if event_type == "DELETED":
            self.store.remove(MODEL_DEPLOYMENT, obj)
            self.reconciler.forget(str(obj["metadata"].get("uid")))
            self.autoscaler.forget(key)
            if self.queue is not None:
                self.queue.forget(key)
            metrics.forget(*key)
            return
        self.store.put(MODEL_DEPLOYMENT, obj)
        self._enqueue(key)

    def child_seen(self, kind: str, obj: Mapping[str, Any]) -> None:
        """A child kind's object as listed or changed (kopf index: before any reconcile runs,
        every child kind's initial listing is in the store)."""
        self.store.put(kind, obj if kind == POD else slim(obj))

    def child_event(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """Any event of a child kind: forget the deleted, queue the ModelDeployment concerned
        (its controller, or one of the same name: a conflict may have come or gone)."""
        if event_type == "DELETED":
            self.store.remove(kind, obj)
        keys = {owner_key(kind, obj)} | ({key_of(obj)} if kind != POD else set())
        for owner in keys:
            if owner is not None and self.store.get(MODEL_DEPLOYMENT, owner) is not None:
                self._enqueue(owner)

    def gateway_pod_seen(self, obj: Mapping[str, Any]) -> None:
        """A gantry-gateway pod as listed or changed (the autoscaler scrapes the running ones)."""
        self.store.put(GATEWAY_POD, obj)

    def gateway_pod_deleted(self, obj: Mapping[str, Any]) -> None:
        self.store.remove(GATEWAY_POD, obj)

    def crd_seen(self, obj: Mapping[str, Any]) -> None:
        """A watched CRD as listed or changed: when it became established (or stopped being),
        every ModelDeployment is reconciled (its optional children follow the CRD)."""
        if self.store.put_crd(obj):
            self._crd_changed(obj)

    def crd_deleted(self, obj: Mapping[str, Any]) -> None:
        if self.store.remove_crd(obj):
            self._crd_changed(obj)

    def _crd_changed(self, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        established = self.store.crd_established(name)
        log.info(
            "CustomResourceDefinition %s is %s", name, "established" if established else "gone"
        )
        if not established:
            for kind, crd in OPTIONAL_KINDS.items():
                if crd == name:
                    self.store.clear(kind)
        self._enqueue_all()

    def node_seen(self, obj: Mapping[str, Any]) -> None:
        """A node as listed or changed (kopf index: the pool is known before any reconcile)."""
        self._pool_changed(lambda: self.store.put_node(obj))

    def node_deleted(self, obj: Mapping[str, Any]) -> None:
        self._pool_changed(lambda: self.store.remove_node(obj))

    def _pool_changed(self, change: Callable[[], None]) -> None:
        """Apply ``change``; the node pool is a planner input, so a real change replans all."""
        before = self.store.pool_version
        change()
        if self.store.pool_version != before:
            self._enqueue_all()

    def _enqueue_all(self) -> None:
        for md in self.store.model_deployments():
            self._enqueue(key_of(md))

    def _enqueue(self, key: Key) -> None:
        if self.queue is not None:
            self.queue.add(key)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.queue = WorkQueue(
            self._reconcile,
            workers=self.config.workers,
            min_interval=self.config.min_reconcile_interval,
        )
        self.queue.start()
        self._tasks = [
            asyncio.create_task(self._resync(), name="gantry-resync"),
            asyncio.create_task(self.autoscaler.run(), name="gantry-autoscaler"),
        ]
        for md in self.store.model_deployments():
            self.queue.add(key_of(md))
        log.info(
            "Started %d reconcile workers, resync every %gs, autoscaler every %gs",
            self.config.workers,
            self.config.resync_seconds,
            self.config.autoscale_seconds,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.queue is not None:
            await self.queue.stop()
        # What was in flight is repaired by the next start or leader (level-triggered).
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _reconcile(self, key: Key) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.reconciler.reconcile, key)

    async def _resync(self) -> None:
        """Queue every ModelDeployment now and then: compared in memory, written only on drift."""
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            metrics.resyncs.inc()
            for md in self.store.model_deployments():
                self._enqueue(key_of(md))
