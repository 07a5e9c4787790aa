"""A server on the gateway's event loop (uvloop) in a thread, for unit tests that talk to it
over real sockets: a subclass starts its server in ``serve`` and stops it in ``close``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Self

from gantry_gateway.main import loop_factory


class LoopThread:
    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def serve(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.serve()
        self._ready.set()
        await self._stop.wait()
        await self.close()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop (its state belongs to it)."""
        assert self._loop is not None
        done = threading.Event()
        result: list[Any] = []

        def run() -> None:
            result.append(fn(*args))
            done.set()

        self._loop.call_soon_threadsafe(run)
        assert done.wait(5)
        return result[0]
