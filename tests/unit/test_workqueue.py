"""The reconcile queue: bursts coalesce, one key never runs twice at once, failures retry."""

from __future__ import annotations

import asyncio
from collections import Counter

from gantry_operator.workqueue import WorkQueue


def test_a_burst_for_one_key_while_it_runs_leads_to_one_more_run() -> None:
    async def scenario() -> Counter[str]:
        runs: Counter[str] = Counter()
        running: set[str] = set()
        started = asyncio.Event()
        release = asyncio.Event()

        async def process(key: str) -> None:
            assert key not in running, "one key reconciled twice at once"
            running.add(key)
            runs[key] += 1
            started.set()
            await release.wait()
            running.discard(key)

        queue: WorkQueue[str] = WorkQueue(process, workers=4)
        queue.start()
        queue.add("a")
        await started.wait()
        for _ in range(100):  # events arriving while "a" is being reconciled
            queue.add("a")
        for _ in range(50):
            queue.add("b")  # queued, coalesced to one
        release.set()
        while len(queue):
            await asyncio.sleep(0.01)
        await queue.stop()
        return runs

    assert asyncio.run(scenario()) == Counter({"a": 2, "b": 1})


def test_different_keys_run_concurrently_up_to_the_worker_count() -> None:
    async def scenario() -> int:
        active = peak = 0

        async def process(_key: int) -> None:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1

        queue: WorkQueue[int] = WorkQueue(process, workers=3)
        queue.start()
        for key in range(12):
            queue.add(key)
        while len(queue):
            await asyncio.sleep(0.01)
        await queue.stop()
        return peak

    assert asyncio.run(scenario()) == 3


def test_a_failed_key_is_retried_with_backoff() -> None:
    async def scenario() -> int:
        attempts = 0

        async def process(_key: str) -> None:
            nonlocal attempts
            attempts += 1
            if attempts < 3:
                raise RuntimeError("apiserver unavailable")

        queue: WorkQueue[str] = WorkQueue(process, workers=1, base_backoff=0.01)
        queue.start()
        queue.add("a")
        for _ in range(100):
            if attempts >= 3:
                break
            await asyncio.sleep(0.05)
        await queue.stop()
        return attempts

    assert asyncio.run(scenario()) == 3


def test_a_key_runs_at_most_once_per_min_interval() -> None:
    async def scenario() -> list[float]:
        starts: list[float] = []
        loop = asyncio.get_running_loop()

        async def process(_key: str) -> None:
            starts.append(loop.time())

        queue: WorkQueue[str] = WorkQueue(process, workers=2, min_interval=0.3)
        queue.start()
        queue.add("a")
        await asyncio.sleep(0.05)
        for _ in range(20):  # a rollout's events, just after the first reconcile
            queue.add("a")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        await queue.stop()
        return starts

    starts = asyncio.run(scenario())
    assert len(starts) == 2
    assert starts[1] - starts[0] >= 0.3
