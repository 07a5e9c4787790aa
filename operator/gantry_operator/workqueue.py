"""A work queue for level-triggered reconciles (client-go's workqueue, in asyncio).

* Bursts coalesce: a key added while it waits is queued once.
* A key added while it is being processed runs once more afterwards, not once per event.
* One key is never processed twice at once; up to ``workers`` different keys run together.
* A key whose processing raised is retried with exponential backoff (1 s doubling to 60 s).
* A key runs at most once per ``min_interval`` seconds: the events of a rollout (the child's
  creation, its status, its pods) arriving within that time lead to one reconcile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 60.0


class WorkQueue(Generic[K]):
    def __init__(
        self,
        process: Callable[[K], Awaitable[None]],
        *,
        workers: int,
        base_backoff: float = 1.0,
        min_interval: float = 0.0,
    ) -> None:
        self._process = process
        self._base_backoff = base_backoff
        self._min_interval = min_interval
        self._last_start: dict[K, float] = {}
        self._workers = workers
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._running: set[K] = set()
        self._dirty: set[K] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._failures: dict[K, int] = {}

    def add(self, key: K) -> None:
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            loop = asyncio.get_running_loop()
            wait = self._last_start.get(key, -self._min_interval) + self._min_interval - loop.time()
            if wait > 0:
                loop.call_later(wait, self._queue.put_nowait, key)
            else:
                self._queue.put_nowait(key)

    def forget(self, key: K) -> None:
        """Drop what is remembered of a key that is gone."""
        self._last_start.pop(key, None)
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._queued) + len(self._running)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"gantry-worker-{i}")
            for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            self._last_start[key] = asyncio.get_running_loop().time()
            try:
                await self._process(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(self._base_backoff * 2.0 ** (failures - 1), MAX_BACKOFF_SECONDS)
                log.exception("Reconcile of %s failed; retrying in %.2g s", key, delay)
                asyncio.get_running_loop().call_later(delay, self.add, key)
            finally:
                self._running.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
