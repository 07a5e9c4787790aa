"""Run the simulator in a background thread, for tests that talk to it over HTTP.

    with SimulatorThread(["my-model", "--max-num-seqs", "4"], env={}) as sim:
        client = openai.OpenAI(base_url=sim.base_url + "/v1", api_key="x")

It binds ``127.0.0.1`` on a free port unless argv names ``--host`` or ``--port``, and stops the
server (as SIGTERM would) when the ``with`` block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType

from gantry_runtime.simulator.config import SimConfig, parse_config
from gantry_runtime.simulator.server import serve


class SimulatorThread:
    """The simulator's event loop in a daemon thread."""

    def __init__(
        self,
        argv: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        args = list(argv)
        if not any(a == "--host" or a.startswith("--host=") for a in args):
            args += ["--host", "127.0.0.1"]
        if not any(a == "--port" or a.startswith("--port=") for a in args):
            args += ["--port", "0"]
        self.config: SimConfig = parse_config(args, {} if env is None else env)
        self.timeout = timeout
        self.port = 0
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="gantry-simulator", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _on_ready(self, port: int) -> None:
        self.port = port
        self._ready.set()

    def _run(self) -> None:
        async def main() -> int:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            return await serve(self.config, self._stop, on_ready=self._on_ready)

        try:
            self.exit_code = asyncio.run(main())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
        finally:
            self._done.set()
            self._ready.set()

    def start(self) -> SimulatorThread:
        self._thread.start()
        if not self._ready.wait(self.timeout):
            raise TimeoutError(f"The simulator did not start within {self.timeout} s")
        if self._done.is_set():
            raise RuntimeError(
                f"The simulator exited before serving (status {self.exit_code})"
            ) from self.error
        return self

    def stop(self) -> int | None:
        """Stop like SIGTERM does (drain up to ``--shutdown-timeout``); return the exit status."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not self._done.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"The simulator did not stop within {self.timeout} s")
        if self.error is not None:
            raise RuntimeError("The simulator failed") from self.error
        return self.exit_code

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
