"""``gantry``: the user CLI. ``gantry plan`` sizes a model on a GPU type without a cluster;
``gantry render`` prints the objects a ModelDeployment manifest becomes."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from gantry_operator import gpus, manifests, planner
from gantry_operator.catalog import presets
from gantry_operator.gpus import GIB
from gantry_operator.spec import KIND, SpecError, parse
from gantry_runtime.launchspec import vllm_argv

RENDER_UID = "00000000-0000-0000-0000-000000000000"


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
    "NODES",
    "UTIL",
    "CONTEXT",
    "WEIGHTS/GPU",
    "KV/GPU",
    "KV TOKENS",
    "SEQS@MAX",
    "MAX-SEQS",
)


def plan_row(p: planner.Plan) -> list[str]:
    return [
        p.model, p.gpu_type, str(p.gpus_per_replica), str(p.tensor_parallel_size),
        str(p.pipeline_parallel_size), str(p.nodes_per_replica), f"{p.gpu_memory_utilization:.2f}",
        str(p.max_model_len), f"{p.weight_bytes_per_gpu / GIB:.1f} GiB",
        f"{p.kv_bytes_per_gpu / GIB:.1f} GiB", f"{p.kv_cache_tokens:,}",
        f"{p.sequences_at_max_len:.1f}", str(p.max_num_seqs),
    ]  # fmt: skip


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
    models = list(presets().values()) if args.model == "all" else [presets()[args.model]]
    if args.gpu != "all" and args.gpu not in gpus.PROFILES:
        out.write(
            f"gantry plan: unknown GPU type {args.gpu!r}: "
            f"choose one of {', '.join(gpus.PROFILES)}\n"
        )
        return 2
    gpu_types = list(gpus.PROFILES) if args.gpu == "all" else [args.gpu]
    rows: list[list[str]] = [list(PLAN_HEADER)]
    problems: list[str] = []
    for model in models:
        for gpu_type in gpu_types:
            request = planner.Request(
                model=model,
                gpu=gpus.profile(gpu_type),
                max_model_len=args.context or model.max_context,
                target_concurrency=args.concurrency,
                gpus_per_node=args.per_node,
                count=args.count,
                tensor=args.tp,
                pipeline=args.pp,
                gpu_memory_utilization=args.utilization,
                kv_cache_dtype=args.kv_cache_dtype,
            )
            try:
                rows.append(plan_row(planner.plan_request(request)))
            except planner.DoesNotFitError as exc:
                if args.markdown:
                    rows.append(
                        [
                            model.name,
                            gpu_type,
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                            str(request.max_model_len),
                            "-",
                            "-",
                            "-",
                            "-",
                            f"does not fit: {exc}",
                        ]
                    )
                else:
                    problems.append(f"{model.name} on {gpu_type}: does not fit: {exc}")
    if len(rows) > 1:
        _table(rows, out, markdown=args.markdown)
    for problem in problems:
        out.write(problem + "\n")
    return 0 if len(rows) > 1 else 1


def _documents(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _render(args: argparse.Namespace, out: TextIO) -> int:
    paths = (
        sorted(str(p) for p in Path(args.file).glob("*.yaml"))
        if Path(args.file).is_dir()
        else [args.file]
    )
    objects: list[dict[str, Any]] = []
    for path in paths:
        for doc in _documents(path):
            if doc.get("kind") != KIND:
                continue
            meta = doc.get("metadata") or {}
            try:
                spec = parse(
                    meta.get("name", ""),
                    meta.get("namespace") or args.namespace,
                    doc.get("spec") or {},
                )
                plan = planner.plan(spec)
                owner = manifests.Owner(name=spec.name, uid=RENDER_UID)
                children = manifests.build_all(spec, plan, owner=owner)
            except (SpecError, planner.DoesNotFitError) as exc:
                out.write(f"gantry render: {path}: {meta.get('name')}: {exc}\n")
                return 1
            if args.argv:
                out.write(f"# {spec.name}: {plan.summary}\n")
                out.write(shlex.join(vllm_argv(manifests.launch_spec(spec, plan))) + "\n")
                continue
            objects.extend(children)
    if objects:
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
    p.add_argument("--context", type=int, help="max context length (default the model's maximum)")
    p.add_argument("--concurrency", type=int, default=1, help="full-context sequences per replica")
    p.add_argument("--count", type=int, help="GPUs per replica (default the fewest that fit)")
    p.add_argument("--per-node", type=int, help="GPUs per node")
    p.add_argument("--tp", type=int, help="tensor-parallel size")
    p.add_argument("--pp", type=int, help="pipeline-parallel size")
    p.add_argument("--utilization", type=float, help="gpu-memory-utilization")
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    r = sub.add_parser("render", help="print the objects a ModelDeployment manifest becomes")
    r.add_argument("file", help="manifest file or directory ('-' for stdin)")
    r.add_argument(
        "--namespace", "-n", default="default", help="namespace for manifests without one"
    )
    r.add_argument("--argv", action="store_true", help="print the vllm serve command line instead")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "plan":
        return _plan(args, out)
    return _render(args, out)


if __name__ == "__main__":
    raise SystemExit(main())
