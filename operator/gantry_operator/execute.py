"""Do exactly what a :class:`~gantry_operator.desired.Decision` says, and nothing else.

Applies are forced server-side applies (the decision applies only objects this ModelDeployment
controls, or that do not exist: the store holds every object of the child kinds, Gantry's or
not); deletes carry the object's uid as a precondition. A write the API server refuses ends
the execution and is reported, quoting the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gantry_operator import k8s
from gantry_operator.desired import OPTIONAL_KINDS, Decision
from gantry_operator.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    conflicts: tuple[str, ...] = ()
    #: The API server's refusal of a child ("Deployment x: <its message>").
    rejected: str | None = None


def execute(decision: Decision, store: Store) -> Outcome:
    if decision.conflicts:
        return Outcome(conflicts=decision.conflicts)
    for obj in decision.apply:
        meta = obj["metadata"]
        try:
            result = k8s.apply(obj)
        except k8s.RejectedError as exc:
            log.warning("The API server refused %s in %s", exc, meta["namespace"])
            return Outcome(rejected=str(exc))
        if obj["kind"] not in OPTIONAL_KINDS:
            # Known at once, so a reconcile before the watch event does not apply it again.
            # Not for a kind whose watch may start only now (its CRD just appeared): an object
            # deleted before that watch's first listing would never be forgotten. Those are
            # known from their watch alone (at worst one more, idempotent, apply).
            store.put(obj["kind"], result)
        log.info("Applied %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
    for ref in decision.delete:
        if k8s.delete(ref.kind, ref.namespace, ref.name, uid=ref.uid):  # owned: see decide
            log.info("Deleted %s %s/%s (no longer wanted)", ref.kind, ref.namespace, ref.name)
    return Outcome()
