"""Generate ``operator/gantry_operator/catalog/vllm_flags.json`` from the pinned vLLM's parser.

Runs in the pinned vLLM virtualenv (it imports vLLM; only the standard library besides)::

    ~/.cache/gantry/vllm-0.33.0/bin/python -m hack.vllm_flags          # rewrite the file
    ~/.cache/gantry/vllm-0.33.0/bin/python -m hack.vllm_flags --print  # print it instead

It builds the parser exactly as ``vllm serve`` does (``FlexibleArgumentParser`` with a ``serve``
subparser filled by ``make_arg_parser``) and records every long option string of that subparser:

- ``dest``: the namespace attribute it sets (every spelling of one setting shares it);
- ``canonical``: the first long option string of its action, without ``--`` (the spelling Gantry
  accepts as an engineArgs key);
- ``kind``: ``value`` (takes a value), ``switch`` (a boolean with a negative form, rendered
  ``--flag`` / ``--no-flag``), ``store_true`` / ``store_false`` (a bare flag), or ``negative``
  (the negative spelling of a switch, such as ``no-enable-prefix-caching``);
- ``choices``: the accepted values, when argparse restricts them.

``tests/contract/test_vllm_flags.py`` regenerates this data in the vLLM virtualenv and fails when
the committed file differs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "operator" / "gantry_operator" / "catalog" / "vllm_flags.json"


def serve_parser() -> argparse.ArgumentParser:
    """The ``serve`` subparser, built as vllm/entrypoints/cli/main.py and serve.py build it."""
    argparse_utils = importlib.import_module("vllm.utils.argparse_utils")
    cli_args = importlib.import_module("vllm.entrypoints.common.cli_args")
    parser = argparse_utils.FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve: argparse.ArgumentParser = subparsers.add_parser(
        "serve", usage="vllm serve [model_tag] [options]"
    )
    cli_args.make_arg_parser(serve)
    return serve


def _kind(action: argparse.Action, option: str) -> str:
    negatives: set[str] = set(getattr(action, "negative_option_strings", ()) or ())
    if isinstance(action, argparse.BooleanOptionalAction):
        if not negatives:  # the standard library's own: --no-X forms
            negatives = {o for o in action.option_strings if o.startswith("--no-")}
        return "negative" if option in negatives else "switch"
    if isinstance(action, argparse._StoreTrueAction):
        return "store_true"
    if isinstance(action, argparse._StoreFalseAction):
        return "store_false"
    if action.nargs == 0:
        return "store_true" if action.const is True else "store_false"
    return "value"


def flags(parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for option, action in parser._option_string_actions.items():
        if not option.startswith("--") or action.dest == "help":
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        positives = [o for o in longs if _kind(action, o) != "negative"]
        entry: dict[str, Any] = {
            "dest": action.dest,
            "canonical": (positives or longs)[0].removeprefix("--"),
            "kind": _kind(action, option),
        }
        if action.choices is not None and entry["kind"] == "value":
            entry["choices"] = sorted({str(c) for c in action.choices if c is not None})
        table[option.removeprefix("--")] = entry
    return dict(sorted(table.items()))


def generate() -> dict[str, Any]:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    version: str = importlib.import_module("vllm").__version__
    return {
        "generator": "python -m hack.vllm_flags (in the pinned vLLM virtualenv)",
        "vllm_version": version,
        "flags": flags(serve_parser()),
    }


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--print", action="store_true", help="print instead of writing the file")
    args = parser.parse_args(argv)
    # vLLM logs to stdout while importing: keep ours clean for --print.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        text = render(generate())
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    if args.print:
        sys.stdout.write(text)
    else:
        OUTPUT.write_text(text)
        print(f"wrote {OUTPUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
