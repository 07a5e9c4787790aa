"""``make demo``: the main job in one command, on a local cluster with fake GPU nodes.

``python -m localcluster.demo`` builds or reuses the binaries, starts a detached local control
plane with the fake GPU nodes, installs the CRD, runs the operator and a process runner that
starts a vLLM simulator at each runtime pod's IP, applies the gpt-oss-120b and gpt-oss-20b
examples and prints what a user would look at, ending with a chat completion from a runtime
pod. Everything keeps running; the kubeconfig path is printed. ``python -m localcluster.demo
down`` (``make demo-down``) stops the runner, the operator and the cluster and removes the
state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import openai
import yaml

from localcluster import build, nodes, procs, realvllm, runner
from localcluster.cluster import LocalCluster, free_ports
from localcluster.log import sayer
from localcluster.polling import wait_for
from localcluster.volumes import models_volume

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "deploy" / "crds" / "gantry.dev_modeldeployments.yaml"
EXAMPLES = ROOT / "deploy" / "examples"
DEMO_FILE = "demo.json"
NAMESPACE = "demo"


def default_state_dir() -> Path:
    return build.cache_dir() / "clusters" / "demo"


_say = sayer("gantry-demo")


def _start_operator(cluster: LocalCluster, state_dir: Path) -> procs.ManagedProcess:
    health, metrics = free_ports(2)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    operator = procs.spawn(
        "gantry-operator",
        [
            sys.executable,
            "-m",
            "gantry_operator.main",
            "--all-namespaces",
            f"--liveness=http://127.0.0.1:{health}/healthz",
            f"--metrics-address=127.0.0.1:{metrics}",
        ],
        state_dir / "logs" / "gantry-operator.log",
        env=env,
        die_with_parent=False,
    )
    (state_dir / DEMO_FILE).write_text(
        json.dumps({"processes": [operator.record.to_json()], "metrics": metrics})
    )
    return operator


def _ready(cluster: LocalCluster, name: str) -> bool:
    result = cluster.kubectl("-n", NAMESPACE, "get", "md", name, "-o", "json", check=False)
    if result.returncode != 0:
        return False
    conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _ask(cluster: LocalCluster, name: str) -> str:
    """One chat completion from a runtime pod (Services cannot route to loopback pod IPs)."""
    pods = cluster.kubectl_json(
        "-n", NAMESPACE, "get", "pods", "-l", f"gantry.dev/model-deployment={name}"
    )["items"]
    ip = pods[0]["status"]["podIP"]
    client = openai.OpenAI(base_url=f"http://{ip}:8000/v1", api_key="demo", max_retries=0)

    def answer() -> str:
        reply = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "Where does this cluster keep its data?"}],
            max_tokens=12,
        )
        usage = reply.usage
        assert usage is not None, "the reply carries no usage"
        tokens = f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
        return f"POST http://{ip}:8000/v1/chat/completions -> {tokens}, finish_reason " + str(
            reply.choices[0].finish_reason
        )

    return str(wait_for(answer, 60, f"{name} answers at {ip}:8000"))


def real_vllm_example() -> str:
    """The gpt-oss-20b example with its pods asking the runner for real vLLM (tiny gpt-oss)."""
    md = yaml.safe_load((EXAMPLES / "gpt-oss-20b.yaml").read_text())
    env = md["spec"]["serving"].setdefault("env", [])
    env.append({"name": realvllm.MODE_VAR, "value": realvllm.REAL})
    return str(yaml.safe_dump(md))


def up(state_dir: Path, *, real_vllm: bool = False) -> int:
    started = time.monotonic()
    build.ensure_built()
    cluster = LocalCluster(state_dir, detach=True, log=_say)
    cluster.start()
    _say(f"creating {len(nodes.NODES)} fake GPU nodes")
    nodes.create(cluster)
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.wait_established("modeldeployments.gantry.dev")
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("apply", "-f", "-", input=models_volume(NAMESPACE))
    _say("starting the operator and the process runner (a vLLM simulator per runtime pod)")
    operator = _start_operator(cluster, state_dir)
    runner.start_detached(state_dir, cluster.kubeconfig, models_dir=state_dir / "models")
    _say("applying deploy/examples/ (gpt-oss-120b, gpt-oss-20b)")
    if real_vllm:
        _say("gpt-oss-20b runs real vLLM (CPU build, tiny gpt-oss): about a minute per pod")
        cluster.kubectl("-n", NAMESPACE, "apply", "-f", str(EXAMPLES / "gpt-oss-120b.yaml"))
        cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=real_vllm_example())
    else:
        cluster.kubectl("-n", NAMESPACE, "apply", "-f", str(EXAMPLES))
    for name in ("gpt-oss-120b", "gpt-oss-20b"):
        wait_for(
            lambda name=name: _ready(cluster, name) or not operator.alive(),  # type: ignore[misc]
            600 if real_vllm else 120,
            f"{name} Ready",
        )
    if not operator.alive():
        _say(f"the operator exited:\n{operator.log_tail()}")
        return 1
    view = [
        ("ModelDeployments", ("get", "md", "-o", "wide")),
        (
            "The plans",
            (
                "get",
                "md",
                "-o",
                "custom-columns=NAME:.metadata.name,PLAN:.status.plan.summary",
            ),
        ),
        (
            "Where the runtime pods landed",
            (
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/managed-by=gantry",
                "-o",
                "custom-columns=POD:.metadata.name,NODE:.spec.nodeName,"
                "GPUS:.spec.containers[0].resources.limits.nvidia\\.com/gpu,"
                "IP:.status.podIP,PHASE:.status.phase",
            ),
        ),
    ]
    for title, args in view:
        print(f"\n$ kubectl -n {NAMESPACE} {' '.join(args)}   # {title}")
        print(cluster.kubectl("-n", NAMESPACE, *args).stdout, end="")
    print("\n$ kubectl get nodes -L nvidia.com/gpu.product,topology.kubernetes.io/region")
    print(
        cluster.kubectl(
            "get", "nodes", "-L", "nvidia.com/gpu.product,topology.kubernetes.io/region"
        ).stdout,
        end="",
    )
    what = "real vLLM, tiny gpt-oss" if real_vllm else "the simulator"
    print(f"\n$ # a chat completion from gpt-oss-20b ({what} at a runtime pod's IP)")
    print(_ask(cluster, "gpt-oss-20b"))
    print(f"\nReady in {time.monotonic() - started:.0f}s. The cluster keeps running:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  export PATH={build.binary('kubectl').parent}:$PATH")
    print(f"  operator log: {operator.record.log}")
    print("Stop it with: make demo-down")
    return 0


def down(state_dir: Path) -> int:
    runner.stop_detached(state_dir)
    demo = state_dir / DEMO_FILE
    if demo.exists():
        records = json.loads(demo.read_text())["processes"]
        procs.stop_all([procs.ManagedProcess(procs.ProcessRecord.from_json(r)) for r in records])
    if (state_dir / "cluster.json").exists():
        LocalCluster.attach(state_dir).stop(remove_state=True)
        print(f"stopped the demo cluster and removed {state_dir}")
    else:
        print(f"no demo cluster in {state_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__)
    parser.add_argument("command", nargs="?", default="up", choices=["up", "down"])
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    parser.add_argument(
        "--real-vllm",
        action="store_true",
        help="gpt-oss-20b's pods run real vLLM (CPU build, tiny gpt-oss) instead of the simulator",
    )
    args = parser.parse_args(argv)
    if args.command == "down":
        return down(args.state_dir)
    if (args.state_dir / DEMO_FILE).exists():
        print(f"a demo already runs from {args.state_dir}; `make demo-down` stops it")
        return 1
    code = 1
    try:
        code = up(args.state_dir, real_vllm=args.real_vllm)
        return code
    finally:
        if code != 0:
            _say("the demo did not come up; stopping what it started")
            down(args.state_dir)


if __name__ == "__main__":
    raise SystemExit(main())
