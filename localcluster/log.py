"""Progress lines on stderr, one prefix per tool (``[gantry-cluster] cluster ready in 8.1s``)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def sayer(prefix: str) -> Callable[[str], None]:
    """A function that prints ``[prefix] message`` to stderr at once."""

    def say(message: str) -> None:
        print(f"[{prefix}] {message}", file=sys.stderr, flush=True)

    return say
