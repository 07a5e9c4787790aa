"""Does a child need writing? Pure comparison of a desired object with the watched one.

Two checks, both needed:

* a hash of the desired object, kept in an annotation, changes when anything we want changes
  (including a field we stopped setting, which server-side apply then removes);
* every field we set must hold the same value in the watched object (the API server adds
  defaults around them), so a hand edit of a field we own is repaired even though the hash
  annotation is untouched. Quantities compare by value (``0.5`` and ``500m`` are equal).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

HASH_ANNOTATION = "gantry.dev/desired-hash"

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18), "Ki": Decimal(2**10), "Mi": Decimal(2**20),
    "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}  # fmt: skip


def quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity string, or None if it is not one."""
    match = _QUANTITY.match(text)
    if not match:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIX[suffix]
    except (InvalidOperation, KeyError):
        return None


def digest(obj: Mapping[str, Any]) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def stamp(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with the hash of its content in the ``gantry.dev/desired-hash`` annotation."""
    meta = obj["metadata"]
    ours = {k: v for k, v in (meta.get("annotations") or {}).items() if k != HASH_ANNOTATION}
    value = digest({**obj, "metadata": {**meta, "annotations": ours}})
    annotations = dict(sorted({**ours, HASH_ANNOTATION: value}.items()))
    return {**obj, "metadata": {**meta, "annotations": annotations}}


def contains(observed: Any, desired: Any) -> bool:
    """Every field of ``desired`` is in ``observed`` with an equal value (lists item by item)."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            key in observed and contains(observed[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(contains(o, d) for o, d in zip(observed, desired, strict=True))
        )
    if desired == observed:
        return True
    if isinstance(desired, str) and isinstance(observed, str):
        want, have = quantity(desired), quantity(observed)
        return want is not None and want == have
    return False


def differs(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """True when ``desired`` (stamped) must be applied over ``observed``."""
    if observed is None:
        return True
    want = desired["metadata"].get("annotations", {}).get(HASH_ANNOTATION)
    have = (observed.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
    return want != have or not contains(observed, desired)
