"""The gateway's in-memory view, fed by watch events on the event loop, and the waits for a
Ready replica (holding requests while a model scales from zero or starts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gantry_gateway import routing
from gantry_gateway.tenants import Tenant, TenantError, Tenants, parse_secret
from gantry_gateway.view import (
    Catalog,
    ModelEntry,
    ModelKey,
    Replica,
    Strategy,
    parse_model_deployment,
    parse_pod,
)

log = logging.getLogger(__name__)

#: Seconds between two scale-from-zero writes for one model (a failed write is retried).
WAKE_RETRY_SECONDS = 5.0


def _ready(obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return not meta.get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


@dataclass
class State:
    upstream_port: int
    catalog: Catalog = field(default_factory=Catalog)
    tenants: Tenants = field(default_factory=Tenants)
    #: Ready gateway pods sharing the limits (1 without --peer-selector).
    peers: dict[str, bool] = field(default_factory=dict)
    outstanding: dict[str, int] = field(default_factory=dict)  # by replica address
    held: dict[ModelKey, int] = field(default_factory=dict)
    #: Streams that have listed at least once (the gateway is ready when all have).
    synced: set[str] = field(default_factory=set)
    _arrivals: dict[ModelKey, asyncio.Event] = field(default_factory=dict)
    _woken: dict[ModelKey, float] = field(default_factory=dict)
    _turn: int = 0

    # --- watch events (called on the event loop) -------------------------------------------

    def reset(self, kind: str, namespace: str, items: list[dict[str, Any]]) -> None:
        if kind == "ModelDeployment":
            self.catalog.reset_models(namespace, [parse_model_deployment(o) for o in items])
        elif kind == "Pod":
            replicas = [parse_pod(o, self.upstream_port) for o in items]
            self.catalog.reset_pods(namespace, [r for r in replicas if r is not None])
            for key in list(self.catalog.replicas):
                self._signal(key)
        elif kind == "Secret":
            tenants = [(self._secret_id(o), self._tenant(o)) for o in items]
            self.tenants.reset([(s, t) for s, t in tenants if t is not None])
        elif kind == "Peer":
            self.peers = {o["metadata"]["name"]: _ready(o) for o in items}
        self.synced.add(f"{kind}/{namespace}")

    def event(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        deleted = type_ == "DELETED"
        if kind == "ModelDeployment":
            key = (meta["namespace"], meta["name"])
            if deleted:
                self.catalog.remove_model(key)
            else:
                self.catalog.set_model(parse_model_deployment(obj))
                self._signal(key)
        elif kind == "Pod":
            replica = None if deleted else parse_pod(obj, self.upstream_port)
            changed = self.catalog.set_pod(meta["namespace"], meta["name"], replica)
            if changed is not None:
                self._signal(changed)
        elif kind == "Secret":
            self.tenants.set(self._secret_id(obj), None if deleted else self._tenant(obj))
        elif kind == "Peer":
            if deleted:
                self.peers.pop(meta["name"], None)
            else:
                self.peers[meta["name"]] = _ready(obj)

    @staticmethod
    def _secret_id(obj: dict[str, Any]) -> str:
        return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"

    @staticmethod
    def _tenant(obj: dict[str, Any]) -> Tenant | None:
        try:
            return parse_secret(obj)
        except TenantError as exc:
            log.error("Ignored tenant %s", exc)
            return None

    # --- routing ----------------------------------------------------------------------------

    @property
    def share(self) -> int:
        return max(1, sum(self.peers.values()))

    def pick(
        self, entry: ModelEntry, body: dict[str, Any], exclude: frozenset[str] = frozenset()
    ) -> Replica | None:
        replicas = [r for r in self.catalog.ready(entry.key) if r.address not in exclude]
        if not replicas:
            return None
        by_address = {r.address: r for r in replicas}
        addresses = sorted(by_address)
        if entry.strategy is Strategy.PREFIX_AFFINITY:
            key = routing.prefix_key(body, entry.prefix_tokens)
            chosen = routing.bounded_hash(addresses, self.outstanding, key)
        else:
            self._turn += 1
            chosen = routing.least_outstanding(addresses, self.outstanding, self._turn)
        return by_address[chosen]

    def begin(self, replica: Replica) -> None:
        self.outstanding[replica.address] = self.outstanding.get(replica.address, 0) + 1

    def end(self, replica: Replica) -> None:
        left = self.outstanding.get(replica.address, 1) - 1
        if left <= 0:
            self.outstanding.pop(replica.address, None)
        else:
            self.outstanding[replica.address] = left

    def outstanding_of(self, key: ModelKey) -> int:
        return sum(self.outstanding.get(r.address, 0) for r in self.catalog.ready(key))

    # --- holding ----------------------------------------------------------------------------

    def _signal(self, key: ModelKey) -> None:
        if self.catalog.ready(key):
            event = self._arrivals.pop(key, None)
            if event is not None:
                event.set()

    def needs_wake(self, entry: ModelEntry, now: float) -> bool:
        """True when the model is at zero replicas and no wake was asked for lately."""
        if entry.replicas != 0:
            self._woken.pop(entry.key, None)
            return False
        last = self._woken.get(entry.key)
        if last is not None and now - last < WAKE_RETRY_SECONDS:
            return False
        self._woken[entry.key] = now
        return True

    async def wait_ready(
        self,
        entry: ModelEntry,
        timeout: float,
        wake: Callable[[ModelEntry], None],
        on_held: Callable[[int], None],
    ) -> bool:
        """Wait until the model has a Ready replica (waking it from zero); False on timeout."""
        key = entry.key
        self.held[key] = self.held.get(key, 0) + 1
        on_held(self.held[key])
        deadline = time.monotonic() + timeout
        try:
            while not self.catalog.ready(key):
                current = self.catalog.models.get(key)
                if current is None:
                    return False
                if self.needs_wake(current, time.monotonic()):
                    wake(current)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                event = self._arrivals.setdefault(key, asyncio.Event())
                # Wake at least every few seconds to retry a failed scale write.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, WAKE_RETRY_SECONDS))
            return True
        finally:
            self.held[key] -= 1
            on_held(self.held[key])
            if not self.held[key]:
                del self.held[key]
