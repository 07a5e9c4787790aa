"""``python -m localcluster {build,up,runner,down,status,env}``: the local control plane by hand.

``up`` starts a detached cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok; with ``--lws`` LeaderWorkerSet's controller manager too) with the fake GPU nodes in a
persistent state dir and returns; ``runner`` (or
``up --runner``) starts the process runner, which runs a vLLM simulator for every runtime pod
(see :mod:`localcluster.runner`); ``down`` stops both and removes the state; ``status`` shows
what runs; ``env`` prints shell exports for it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from localcluster import build, nodes, runner
from localcluster.cluster import (
    STATE_FILE,
    ClusterAlreadyRunningError,
    ClusterError,
    LocalCluster,
    looks_like_state_dir,
)
from localcluster.log import sayer


def default_state_dir() -> Path:
    return build.cache_dir() / "clusters" / "default"


_say = sayer("gantry-cluster")


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _attached(state_dir: Path) -> LocalCluster | None:
    if not (state_dir / STATE_FILE).exists():
        return None
    return LocalCluster.attach(state_dir)


def cmd_build(_args: argparse.Namespace) -> int:
    return build.main([])


def cmd_up(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    existing = _attached(state_dir)
    if existing is not None and all(existing.running().values()):
        print(f"already running from {state_dir}")
        if args.lws and not existing.leaderworkerset:
            print("(without LeaderWorkerSet: run `python -m localcluster down`, then `up --lws`)")
        _print_env(existing)
        return 0
    build.ensure_built()
    if runner.stop_detached(state_dir):
        _say("stopped the process runner of the previous cluster")
    started = time.monotonic()
    cluster = LocalCluster(state_dir, detach=True, log=_say, leaderworkerset=args.lws)
    try:
        cluster.start()
        if not args.no_nodes:
            _say(f"creating {len(nodes.NODES)} fake GPU nodes")
            nodes.create(cluster)
    except ClusterAlreadyRunningError as error:
        print(f"{error}; run `python -m localcluster down` first")
        return 1
    except BaseException:
        cluster.stop(remove_state=False)  # keep the logs for a look
        _say(f"start failed; logs kept in {cluster.logs_dir}")
        raise
    _say(f"up in {time.monotonic() - started:.1f}s (state in {state_dir})")
    if args.runner:
        _start_runner(state_dir, cluster, args.knob)
    print(f"kubeconfig: {cluster.kubeconfig}")
    _print_env(cluster)
    return 0


def _start_runner(state_dir: Path, cluster: LocalCluster, knobs: Sequence[tuple[str, str]]) -> None:
    process = runner.start_detached(
        state_dir, cluster.kubeconfig, knobs={**runner.FAST_KNOBS, **dict(knobs)}
    )
    _say(
        f"process runner (pid {process.pid}) runs a simulator for every runtime pod; "
        f"logs in {state_dir / 'logs' / 'runtime'}"
    )


def cmd_runner(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    if args.stop:
        stopped = runner.stop_detached(state_dir)
        print("stopped the process runner" if stopped else "no process runner was running")
        return 0
    cluster = _attached(state_dir)
    if cluster is None or not all(cluster.running().values()):
        print(f"no running cluster in {state_dir}: run `python -m localcluster up` first")
        return 1
    existing = runner.detached(state_dir)
    if existing is not None and existing.alive():
        print(f"the process runner already runs (pid {existing.pid})")
        return 0
    _start_runner(state_dir, cluster, args.knob)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    cluster = _attached(state_dir)
    if cluster is None:
        if looks_like_state_dir(state_dir):
            shutil.rmtree(state_dir)
            print(f"no cluster recorded in {state_dir}; removed its leftovers")
        else:
            print(f"no cluster in {state_dir}")
        return 0
    alive = [name for name, up in cluster.running().items() if up]
    if runner.stop_detached(state_dir):
        alive.insert(0, "process-runner")
    cluster.stop(remove_state=True)
    print(f"stopped {', '.join(alive) or 'nothing (all had exited)'}; removed {state_dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    cluster = _attached(state_dir)
    if cluster is None:
        print(f"not running (no cluster recorded in {state_dir})")
        return 1
    alive = cluster.running()
    for process in cluster.processes:
        state = "running" if alive[process.name] else "DEAD"
        print(f"{process.name:<24} pid {process.pid:<8} {state:<8} {process.record.log}")
    process_runner = runner.detached(state_dir)
    if process_runner is not None:
        state = "running" if process_runner.alive() else "DEAD"
        record = process_runner.record
        print(f"{record.name:<24} pid {record.pid:<8} {state:<8} {record.log}")
    ok, answer = cluster.api_get("/readyz") if any(alive.values()) else (False, "not running")
    print(f"apiserver {cluster.server}: {'ready' if ok else 'NOT READY'} ({answer})")
    print(f"kubeconfig: {cluster.kubeconfig}")
    if ok:
        print(cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product", check=False).stdout)
    return 0 if ok and all(alive.values()) else 1


def _print_env(cluster: LocalCluster) -> None:
    env = cluster.env()
    print(f"export KUBECONFIG={shlex.quote(env['KUBECONFIG'])}")
    bins = [str(build.binary("kubectl").parent), str(build.binary("helm").parent)]
    print(f'export PATH={shlex.quote(":".join(bins))}:"$PATH"')


def cmd_env(args: argparse.Namespace) -> int:
    cluster = _attached(args.state_dir)
    if cluster is None:
        print(f"# no cluster in {args.state_dir}: run `python -m localcluster up`", file=sys.stderr)
        return 1
    _print_env(cluster)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where the cluster keeps its state (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the binaries (once per machine)")
    up = commands.add_parser("up", help="start a detached cluster with the fake GPU nodes")
    up.add_argument("--no-nodes", action="store_true", help="do not create the fake nodes")
    up.add_argument("--runner", action="store_true", help="start the process runner too")
    up.add_argument(
        "--lws",
        "--leaderworkerset",
        action="store_true",
        help="run LeaderWorkerSet's controller manager too (its CRDs, webhooks on 127.0.0.1)",
    )
    run = commands.add_parser(
        "runner", help="start the process runner: a vLLM simulator for every runtime pod"
    )
    run.add_argument("--stop", action="store_true", help="stop the process runner instead")
    for command in (up, run):
        command.add_argument(
            "--knob",
            type=runner.knob,
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="simulator environment default, e.g. GANTRY_SIM_DECODE_TOKENS_PER_S=50 "
            "(repeatable; a pod's own env wins)",
        )
    commands.add_parser("down", help="stop the cluster and remove its state")
    commands.add_parser("status", help="show the cluster's processes and readiness")
    commands.add_parser("env", help="print shell exports (KUBECONFIG, PATH) for the cluster")
    args = parser.parse_args(argv)
    args.state_dir = args.state_dir.expanduser().absolute()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    handlers = {
        "build": cmd_build,
        "up": cmd_up,
        "runner": cmd_runner,
        "down": cmd_down,
        "status": cmd_status,
        "env": cmd_env,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except ClusterError as error:
        _say(str(error))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
