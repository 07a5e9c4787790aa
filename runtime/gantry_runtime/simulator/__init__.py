"""A vLLM-compatible simulator: ``vllm serve``'s argv, API and metrics, without a GPU.

Run it as ``python -m gantry_runtime.simulator <vllm serve argv>`` or call :func:`main`. See
``docs/simulator.md`` for the cost model and the ``GANTRY_SIM_*`` knobs.
"""

from gantry_runtime.simulator.cli import main

__all__ = ["main"]
