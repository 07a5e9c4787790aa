"""Bounded waiting for tests: poll a predicate, fail with what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    message: str = "condition not met",
    *,
    interval: float = 0.1,
    max_interval: float = 1.0,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Exceptions raised by ``predicate`` count as "not yet" (a NotFound while an object is being
    created, say). After ``timeout`` seconds raise :class:`AssertionError` with ``message`` and
    the last value or exception, so a failing test says what it was looking at.
    """
    deadline = time.monotonic() + timeout
    last: object = "<predicate never returned>"
    while True:
        try:
            value = predicate()
        except Exception as error:  # a transient failure is just another "not yet"
            last = error
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:.0f}s; last value: {last!r})")
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)
