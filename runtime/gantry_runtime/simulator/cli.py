"""``main(argv)``: run the simulator with the argv of ``vllm serve``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from gantry_runtime.simulator.config import ConfigError, SimConfig, parse_config
from gantry_runtime.simulator.server import serve

log = logging.getLogger("gantry_runtime.simulator")


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(levelname)s %(asctime)s [simulator] %(message)s",
            datefmt="%m-%d %H:%M:%S",
            stream=sys.stderr,
        )


async def _run(config: SimConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await serve(config, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``vllm serve`` argv and the ``GANTRY_SIM_*`` environment, serve until SIGTERM or
    SIGINT, and return the exit status (0 after a clean shutdown, 1 when the engine cannot
    start, 2 for bad arguments)."""
    _setup_logging()
    try:
        config = parse_config(list(sys.argv[1:] if argv is None else argv), os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except SystemExit as exc:  # argparse: a malformed flag, or --help
        return exc.code if isinstance(exc.code, int) else 2
    return asyncio.run(_run(config))
