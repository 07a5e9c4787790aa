"""``gantry``: the user CLI. ``gantry plan`` sizes a model on a GPU type without a cluster;
``gantry render`` prints the objects a ModelDeployment manifest becomes.

``gantry plan`` builds a ModelDeployment spec from its flags and goes through the same parsing
and planning as the operator, so it refuses what the API server and the operator refuse, with the
same message (field paths shown as the flags that set them)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from gantry_operator import desired, gpus, manifests, planner
from gantry_operator.catalog import presets
from gantry_operator.cluster_policy import MultiNodeSettings, Policy, load_policy
from gantry_operator.config import OperatorConfig
from gantry_operator.gpus import GIB
from gantry_operator.manifests.leaderworkerset import CRD as LWS_CRD
from gantry_operator.spec import KIND, ModelDeploymentSpec, SpecError, parse
from gantry_runtime.launchspec import GroupPosition, vllm_argv

RENDER_UID = "00000000-0000-0000-0000-000000000000"
#: metadata.name and the placeholder source of the ModelDeployment ``gantry plan`` builds.
PLAN_NAME = "plan"
PLAN_SOURCE = {"pvc": {"claimName": "weights"}}

#: ``gantry plan`` flags and the spec fields they set (messages name the flag).
FLAG_FIELDS: dict[str, str] = {
    "--gpus-per-node": "spec.gpu.perNode",
    "--count": "spec.gpu.count",
    "--gpu": "spec.gpu.type",
    "--tp": "spec.parallelism.tensor",
    "--pp": "spec.parallelism.pipeline",
    "--context": "spec.serving.maxContextLength",
    "--concurrency": "spec.serving.targetConcurrency",
    "--utilization": "spec.serving.gpuMemoryUtilization",
    "--kv-cache-dtype": "spec.serving.kvCacheDtype",
    "--max-num-seqs": "spec.serving.maxNumSeqs",
    "--max-num-batched-tokens": "spec.serving.maxNumBatchedTokens",
    "--safety-margin": "spec.serving.safetyMarginGiB",
}


def _table(rows: Sequence[Sequence[str]], out: TextIO, *, markdown: bool = False) -> None:
    if markdown:
        out.write("| " + " | ".join(rows[0]) + " |\n")
        out.write("|" + "---|" * len(rows[0]) + "\n")
        for row in rows[1:]:
            out.write("| " + " | ".join(row) + " |\n")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")


PLAN_HEADER = (
    "MODEL",
    "GPU",
    "GPUS",
    "TP",
    "PP",
    "DP",
    "NODES",
    "LAYOUT",
    "UTIL",
    "CONTEXT",
    "WEIGHTS/GPU",
    "KV/GPU",
    "HEADROOM",
    "KV TOKENS",
    "SEQS@MAX",
    "MAX-SEQS",
)


def plan_row(p: planner.Plan) -> list[str]:
    return [
        p.model, p.gpu_type, str(p.gpus_per_replica), str(p.tensor_parallel_size),
        str(p.pipeline_parallel_size), str(p.data_parallel_size), str(p.nodes_per_replica),
        p.layout, f"{p.gpu_memory_utilization:.2f}",
        str(p.max_model_len), f"{p.weight_bytes_per_gpu / GIB:.1f} GiB",
        f"{p.kv_bytes_per_gpu / GIB:.1f} GiB", f"{p.headroom_bytes_per_gpu / GIB:.1f} GiB",
        f"{p.kv_cache_tokens:,}", f"{p.sequences_at_max_len:.1f}", str(p.max_num_seqs),
    ]  # fmt: skip


def flag_message(message: str) -> str:
    """``message`` with the spec fields ``gantry plan`` sets shown as its flags."""
    for flag, path in sorted(FLAG_FIELDS.items(), key=lambda item: -len(item[1])):
        message = message.replace(path, flag)
    return message


def plan_spec(args: argparse.Namespace, model: str, gpu_type: str) -> dict[str, Any]:
    """The ModelDeployment ``.spec`` the flags describe (unset flags stay unset)."""
    gpu: dict[str, Any] = {"type": gpu_type, "count": args.count, "perNode": args.gpus_per_node}
    parallelism = {"tensor": args.tp, "pipeline": args.pp}
    serving = {
        "maxContextLength": args.context,
        "targetConcurrency": args.concurrency,
        "gpuMemoryUtilization": args.utilization,
        "kvCacheDtype": args.kv_cache_dtype,
        "maxNumSeqs": args.max_num_seqs,
        "maxNumBatchedTokens": args.max_num_batched_tokens,
        "safetyMarginGiB": args.safety_margin,
    }

    def present(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if v is not None}

    return {
        "model": {"preset": model},
        "source": PLAN_SOURCE,
        "gpu": present(gpu),
        "parallelism": present(parallelism),
        "serving": present(serving),
    }


def _plan(args: argparse.Namespace, out: TextIO) -> int:
    if args.list:
        catalog = [["MODEL", "ARCHITECTURE", "PARAMS", "WEIGHTS", "ATTENTION", "MAX CONTEXT"]]
        for m in presets().values():
            catalog.append([
                m.name, m.architecture, f"{m.total_params_b:g}B/{m.active_params_b:g}B",
                f"{m.weight_bytes / GIB:.1f} GiB {m.weight_dtype}", m.attention, str(m.max_context),
            ])  # fmt: skip
        _table(catalog, out)
        out.write("\nGPU types: " + ", ".join(gpus.PROFILES) + "\n")
        return 0
    if not args.model:
        out.write("gantry plan: name a model, or 'all' (gantry plan --list shows the catalog)\n")
        return 2
    if args.model != "all" and args.model not in presets():
        out.write(
            f"gantry plan: unknown model {args.model!r}; gantry plan --list shows the catalog\n"
        )
        return 2
    models = list(presets()) if args.model == "all" else [args.model]
    gpu_types = list(gpus.PROFILES) if args.gpu == "all" else [args.gpu]
    # Flags are checked as the operator checks a spec: the first bad one ends it (exit 2). Only
    # a context beyond one model's maximum, with several models, is that model's problem.
    specs: list[ModelDeploymentSpec] = []
    problems: list[tuple[str, str, int, str]] = []  # model, GPU type, context, message
    for model in models:
        for gpu_type in gpu_types:
            try:
                specs.append(parse(PLAN_NAME, "default", plan_spec(args, model, gpu_type)))
            except SpecError as exc:
                if len(models) > 1 and exc.field_path == "spec.serving.maxContextLength":
                    problems.append((model, gpu_type, args.context, flag_message(str(exc))))
                    continue
                out.write(f"gantry plan: {flag_message(str(exc))}\n")
                return 2
    plans: list[planner.Plan] = []
    for spec in specs:
        try:
            plans.append(planner.plan(spec))
        except planner.DoesNotFitError as exc:
            problem = (spec.model.name, spec.gpu.type, spec.max_context_length, str(exc))
            problems.append((*problem[:3], flag_message(problem[3])))
    if args.output in ("json", "yaml"):
        doc = {
            "plans": [p.to_dict() for p in plans],
            "doesNotFit": [
                {"model": m, "gpuType": g, "message": text} for m, g, _, text in problems
            ],
        }
        _dump(doc, args.output, out)
        return 0 if plans else 1
    rows: list[list[str]] = [list(PLAN_HEADER)]
    rows.extend(plan_row(p) for p in plans)
    if args.markdown:
        for model, gpu_type, context, message in problems:
            row = [model, gpu_type] + ["-"] * (PLAN_HEADER.index("CONTEXT") - 2) + [str(context)]
            row += ["-"] * (len(PLAN_HEADER) - len(row) - 1) + [f"does not fit: {message}"]
            rows.append(row)
    if len(rows) > 1:
        _table(rows, out, markdown=args.markdown)
    notes = [f"{p.model} on {p.gpu_type}: {flag_message(n)}" for p in plans for n in p.notes]
    if notes and not args.markdown:
        out.write("\n" + "\n".join(notes) + "\n")
    groups = [p for p in plans if p.nodes_per_replica > 1]
    if groups and not args.markdown:
        out.write("\n")
        for p in groups:
            out.write(f"{p.model} on {p.gpu_type}: {p.layout} layout, one pod per node:\n")
            out.writelines(f"  {member.describe(p.layout)}\n" for member in p.group)
    if not args.markdown:
        for model, gpu_type, _, message in problems:
            out.write(f"{model} on {gpu_type}: does not fit: {message}\n")
    return 0 if plans else 1


def _dump(doc: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        yaml.safe_dump(doc, out, sort_keys=False)


def _documents(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


#: What ``gantry render --argv`` shows for the leader's address, which LeaderWorkerSet sets,
#: and for the leader pod's own IP (from the pod's status).
LEADER_PLACEHOLDER = "${LWS_LEADER_ADDRESS}"
POD_IP_PLACEHOLDER = "${VLLM_HOST_IP}"


def _argv_lines(spec: ModelDeploymentSpec, plan: planner.Plan) -> list[str]:
    """The ``vllm serve`` command line of each pod of a replica (one line for one node)."""
    launch = manifests.launch_spec(spec, plan)
    if not launch.multi_node:
        return [shlex.join(vllm_argv(launch)) + "\n"]
    lines = []
    for member in plan.group:
        position = GroupPosition(
            LEADER_PLACEHOLDER, plan.nodes_per_replica, member.worker_index, POD_IP_PLACEHOLDER
        )
        lines.append(f"# {member.describe(plan.layout)}\n")
        lines.append(shlex.join(vllm_argv(launch, position=position)) + "\n")
    return lines


def _render(args: argparse.Namespace, out: TextIO) -> int:
    paths = (
        sorted(str(p) for p in Path(args.file).glob("*.yaml"))
        if Path(args.file).is_dir()
        else [args.file]
    )
    # Without a policy file: a cluster with no extra rules, LeaderWorkerSet installed and
    # enabled (multi-node models render as their groups).
    policy = load_policy(args.policy) if args.policy else Policy(multi_node=MultiNodeSettings(True))
    config = OperatorConfig(policy=policy)
    objects: list[dict[str, Any]] = []
    for path in paths:
        for doc in _documents(path):
            if doc.get("kind") != KIND:
                continue
            meta = doc.get("metadata") or {}
            md = {
                "metadata": {
                    "name": meta.get("name", ""),
                    "namespace": meta.get("namespace") or args.namespace,
                    "uid": RENDER_UID,
                    "generation": 1,
                },
                "spec": doc.get("spec") or {},
            }
            # The operator's own decision: spec, cluster policy, fit, multi-node, builders,
            # for a cluster where LeaderWorkerSet is installed (the policy says whether the
            # operator may use it).
            want = desired.intent(md, config, crds=frozenset({LWS_CRD}))
            if want.problem is not None or want.spec is None or want.plan is None:
                problem = want.problem.message if want.problem else "cannot be served"
                out.write(f"gantry render: {path}: {meta.get('name')}: {problem}\n")
                return 1
            spec, plan, children = want.spec, want.plan, [dict(o) for o in want.objects]
            if args.argv:
                out.write(f"# {spec.name}: {plan.summary}\n")
                out.writelines(_argv_lines(spec, plan))
                continue
            objects.extend(children)
    if not objects:
        return 0
    if args.output == "json":
        _dump({"apiVersion": "v1", "kind": "List", "items": objects}, "json", out)
    else:
        yaml.safe_dump_all(objects, out, sort_keys=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gantry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "plan", help="show the sharding plan and fit check for a model on a GPU type"
    )
    p.add_argument("model", nargs="?", help="catalog model (see --list), or 'all'")
    p.add_argument("--list", action="store_true", help="list the catalog models and GPU types")
    p.add_argument("--gpu", default="H100-80GB", help="GPU type, or 'all' for every type")
    # Ranges are the spec's to check (spec.check_bounds), so every message names flag and range.
    integer: Callable[[str], int] = int
    p.add_argument("--context", type=integer, help="max context length (default the model's)")
    p.add_argument("--concurrency", type=integer, help="full-context sequences per replica")
    p.add_argument("--count", type=integer, help="GPUs per replica (default the fewest that fit)")
    p.add_argument(
        "--gpus-per-node",
        "--per-node",
        dest="gpus_per_node",
        type=integer,
        help="GPUs per node of the pool (default 8, 4 for RTX-A4000)",
    )
    p.add_argument("--tp", type=integer, help="tensor-parallel size")
    p.add_argument("--pp", type=integer, help="pipeline-parallel size")
    p.add_argument("--utilization", type=float, help="gpu-memory-utilization (default 0.90)")
    p.add_argument("--kv-cache-dtype", help="KV cache element type: auto or fp8")
    p.add_argument("--max-num-seqs", type=integer, help="vLLM --max-num-seqs")
    p.add_argument("--max-num-batched-tokens", type=integer, help="vLLM --max-num-batched-tokens")
    p.add_argument(
        "--safety-margin",
        type=float,
        help=f"GiB of KV headroom per GPU a plan must leave "
        f"(default {planner.DEFAULT_SAFETY_MARGIN_GIB})",
    )
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("-o", "--output", choices=["json", "yaml"], help="print every figure as data")
    r = sub.add_parser("render", help="print the objects a ModelDeployment manifest becomes")
    r.add_argument("file", help="manifest file or directory ('-' for stdin)")
    r.add_argument(
        "--namespace", "-n", default="default", help="namespace for manifests without one"
    )
    r.add_argument("--argv", action="store_true", help="print the vllm serve command line instead")
    r.add_argument(
        "--policy",
        default=None,
        help="cluster policy file to check against (as the operator); without one, no extra "
        "rules and multi-node replicas as LeaderWorkerSet groups",
    )
    r.add_argument("-o", "--output", choices=["json", "yaml"], default="yaml", help="format")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    stream = sys.stdout if out is None else out
    try:
        if args.command == "plan":
            return _plan(args, stream)
        return _render(args, stream)
    except BrokenPipeError:
        # The reader went away (`gantry render DIR | head`): stop quietly, as cat does. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        if out is None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
