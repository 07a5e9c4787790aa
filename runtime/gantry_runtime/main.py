"""``gantry-runtime``: the runtime container's entrypoint.

Subcommands:

``serve`` (the default)
    Read the launch spec from ``GANTRY_LAUNCH_SPEC``, verify the weights offline, print the
    ``vllm serve`` command line (one line, shell-quoted) and run it as a child process,
    forwarding SIGTERM/SIGINT; exit with vLLM's status. With ``GANTRY_RUNTIME_MODE=simulator``
    or ``--simulate``, run the vLLM simulator in-process instead, with the same arguments
    (no weights are needed, so none are checked).
``check``
    Verify the weights and print the command line; start nothing (a dry run).
``argv``
    Print the command line as a JSON list.

A multi-node launch spec (one pod of a LeaderWorkerSet group) gives each pod its own argv from
``LWS_LEADER_ADDRESS``, ``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX`` (launchspec.group_position).
Every pod verifies its weights; a worker (index > 0) then waits, bounded by the spec's
``leader_wait_seconds``, until the leader's address resolves and its port answers
(gantry_runtime.leader), and only then starts vLLM (or, simulated, the headless simulator).

``GANTRY_HOST`` overrides the bind address (default ``0.0.0.0``; tests bind the simulator to a
loopback address). Exit statuses: vLLM's own when it ran; 1 when the weights check failed; 2 for
a missing or invalid launch spec or mode, or LeaderWorkerSet variables that do not fit it; 3 when
a worker's leader did not answer in time; 127 when the ``vllm`` executable is not on PATH.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from gantry_runtime.launch import run_child
from gantry_runtime.launchspec import (
    ENV_VAR,
    GroupError,
    GroupPosition,
    LaunchSpec,
    group_position,
    vllm_argv,
)
from gantry_runtime.leader import LeaderTimeoutError, wait_for_leader
from gantry_runtime.weights import WeightsError, verify_weights

MODE_VAR = "GANTRY_RUNTIME_MODE"
HOST_VAR = "GANTRY_HOST"
#: Where Kubernetes reads a container's termination message (the pod's terminationMessagePath).
TERMINATION_LOG_VAR = "GANTRY_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
DEFAULT_HOST = "0.0.0.0"
MODES = ("vllm", "simulator")

EXIT_WEIGHTS = 1
EXIT_USAGE = 2
EXIT_LEADER = 3
EXIT_NOT_FOUND = 127


class UsageError(Exception):
    """A problem with the runtime's configuration (environment), not with the weights."""


def log(message: str) -> None:
    print(f"gantry-runtime: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gantry-runtime",
        description="Start vLLM (or the simulator) from the launch spec in $" + ENV_VAR,
    )
    commands = parser.add_subparsers(dest="command", metavar="{serve,check,argv}")
    serve = commands.add_parser("serve", help="verify the weights, then run vLLM (default)")
    serve.add_argument(
        "--simulate",
        action="store_true",
        help=f"run the simulator instead of vLLM (same as {MODE_VAR}=simulator)",
    )
    commands.add_parser("check", help="verify the weights and print the command line")
    commands.add_parser("argv", help="print the command line as JSON")
    return parser


def load_spec() -> LaunchSpec:
    text = os.environ.get(ENV_VAR)
    if not text:
        raise UsageError(
            f"{ENV_VAR} is not set: the operator sets it on the runtime container; to run by "
            "hand, export the JSON that `gantry render` shows for the pod"
        )
    try:
        return LaunchSpec.from_json(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def runtime_mode(simulate_flag: bool) -> str:
    mode = os.environ.get(MODE_VAR, "").strip().lower() or "vllm"
    if mode not in MODES:
        raise UsageError(f"{MODE_VAR}={mode!r} is not one of {', '.join(MODES)}")
    return "simulator" if simulate_flag else mode


def load_position(spec: LaunchSpec) -> GroupPosition | None:
    """This pod's place in its LeaderWorkerSet group (None for a single-node spec)."""
    try:
        return group_position(spec, os.environ)
    except GroupError as exc:
        raise UsageError(str(exc)) from exc


def command_line(spec: LaunchSpec, position: GroupPosition | None = None) -> list[str]:
    if position is None:
        position = load_position(spec)
    return vllm_argv(spec, host=os.environ.get(HOST_VAR) or DEFAULT_HOST, position=position)


def join_group(spec: LaunchSpec, position: GroupPosition | None) -> None:
    """Log this pod's role; a worker waits for its leader (raises LeaderTimeoutError)."""
    if position is None:
        return
    if position.is_leader:
        log(
            f"Leader of a {position.size}-pod group ({spec.layout} layout): workers connect to "
            f"port {spec.leader_port}"
        )
        return
    log(
        f"Worker {position.worker_index} of a {position.size}-pod group ({spec.layout} layout), "
        f"leader {position.leader_address}"
    )
    wait_for_leader(
        position.leader_address, spec.leader_port, timeout=spec.leader_wait_seconds, log=log
    )


def write_termination_message(message: str) -> None:
    """Leave ``message`` where Kubernetes shows it in the pod status, if that file exists."""
    path = Path(os.environ.get(TERMINATION_LOG_VAR) or DEFAULT_TERMINATION_LOG)
    if not path.is_file():
        return
    try:
        # Kubernetes keeps at most 4096 bytes of it.
        path.write_bytes(message.encode("utf-8")[:4096])
    except OSError as exc:
        log(f"Could not write the termination message to {path}: {exc}")


def run_simulator(argv: list[str]) -> int:
    # Imported lazily: the real image never needs it, and it is not part of this module's API.
    module = importlib.import_module("gantry_runtime.simulator")
    entry = cast(Callable[[list[str]], int], module.main)
    return entry(argv)


def serve(simulate: bool) -> int:
    spec = load_spec()
    position = load_position(spec)
    argv = command_line(spec, position)
    if runtime_mode(simulate) == "simulator":
        log("Simulator mode: skipped the weights check (the simulator loads no weights)")
        join_group(spec, position)
        print(shlex.join(argv), flush=True)
        return run_simulator(argv[2:])
    verify_weights(spec, log=log)
    join_group(spec, position)
    print(shlex.join(argv), flush=True)
    try:
        return run_child(argv, shutdown_timeout=spec.shutdown_timeout, log=log)
    except FileNotFoundError:
        log(
            f"{argv[0]!r} was not found on PATH: this image has no vLLM; use the Gantry runtime "
            "image, or set GANTRY_RUNTIME_MODE=simulator for a test without GPUs"
        )
        return EXIT_NOT_FOUND


def check() -> int:
    spec = load_spec()
    verify_weights(spec, log=log)
    print(shlex.join(command_line(spec)), flush=True)
    return 0


def print_argv() -> int:
    print(json.dumps(command_line(load_spec())), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: str = args.command or "serve"
    try:
        if command == "check":
            return check()
        if command == "argv":
            return print_argv()
        return serve(bool(getattr(args, "simulate", False)))
    except UsageError as exc:
        log(str(exc))
        write_termination_message(str(exc))
        return EXIT_USAGE
    except WeightsError as exc:
        log(str(exc))
        write_termination_message(str(exc))
        return EXIT_WEIGHTS
    except LeaderTimeoutError as exc:
        log(str(exc))
        write_termination_message(str(exc))
        return EXIT_LEADER


if __name__ == "__main__":
    sys.exit(main())
