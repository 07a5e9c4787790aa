"""Do exactly what a :class:`~gantry_operator.desired.Decision` says, and nothing else.

Before creating a child that the watch has not seen, the executor reads that one name: an
object there that this ModelDeployment does not control is a conflict, and then nothing is
written. Applies are forced server-side applies (we control every object applied); deletes
carry the object's uid as a precondition. A write the API server refuses ends the execution
and is reported, quoting the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gantry_operator import drift, k8s
from gantry_operator.desired import Decision, describe_conflict
from gantry_operator.store import Store, owned_by

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    applied: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    #: The API server's refusal of a child ("Deployment x: <its message>").
    rejected: str | None = None


def execute(decision: Decision, uid: str, store: Store) -> Outcome:
    conflicts = list(decision.conflicts)
    todo = []
    for obj in decision.apply:
        if obj["kind"] in decision.creates:
            meta = obj["metadata"]
            existing = k8s.get(obj["kind"], meta["namespace"], meta["name"])
            if existing is not None and not owned_by(existing, uid):
                conflicts.append(describe_conflict(existing))
                continue
            if existing is not None:  # ours, not in the watch yet (operator start-up)
                store.put(obj["kind"], existing)
                if not drift.differs(obj, existing):
                    continue
        todo.append(obj)
    if conflicts:
        return Outcome(conflicts=tuple(conflicts))
    applied: list[str] = []
    for obj in todo:
        meta = obj["metadata"]
        try:
            result = k8s.apply(obj)
        except k8s.RejectedError as exc:
            log.warning("The API server refused %s in %s", exc, meta["namespace"])
            return Outcome(tuple(applied), rejected=str(exc))
        store.put(obj["kind"], result)
        applied.append(f"{obj['kind']} {meta['name']}")
        log.info("Applied %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
    deleted: list[str] = []
    for ref in decision.delete:
        if k8s.delete(ref.kind, ref.namespace, ref.name, uid=ref.uid):
            deleted.append(f"{ref.kind} {ref.name}")
            log.info("Deleted %s %s/%s (no longer wanted)", ref.kind, ref.namespace, ref.name)
    return Outcome(tuple(applied), tuple(deleted))
