"""Check `vllm serve` command lines with vLLM's own code, in the pinned vLLM virtualenv.

Run by that virtualenv's Python (see vllm_env.py), never by the project's: it imports only the
standard library and vLLM. Input on stdin, a JSON list of cases::

    {"id": "gpt-oss-120b/tp2", "argv": ["/models/x", "--tensor-parallel-size", "2", ...],
     "config_dir": "/path/to/dir/with/config.json" | null, "engine": true}

``argv`` is a ``vllm serve`` command line without the leading ``vllm serve``. Each case goes
through the stages the real CLI runs:

1. ``parse``: the same parser ``vllm serve`` builds (a FlexibleArgumentParser with a ``serve``
   subparser from ``make_arg_parser``), fed ``["serve", *argv]``; argparse's exit (unknown flag,
   bad type or choice) is caught with its message.
2. ``validate``: ``validate_parsed_serve_args``, as ``vllm serve`` runs it before starting.
3. ``engine`` (when ``engine`` is true): ``AsyncEngineArgs.from_cli_args`` with the model
   replaced by ``config_dir``, ``skip_tokenizer_init`` and no reasoning parser, then
   ``create_engine_config`` for the OpenAI server (``headless=True`` for a ``--headless`` argv,
   as vLLM's ``run_headless`` builds it). This is where model-dependent checks run
   (TP must divide the heads, context length, quantization, enum values). It runs on vLLM's
   CPU platform (``VLLM_TARGET_DEVICE=cpu``, ``HF_HUB_OFFLINE=1``; set here when the caller
   did not): the CPU platform adjusts a few settings afterwards (e.g. async scheduling off),
   so the ``engine`` summary is what vLLM accepted, not what a GPU would run.

Output on stdout, one JSON object: ``{"vllm_version", "platform", "import_seconds",
"results": [...]}``; each result has ``id``, ``ok``, ``stage`` (where it failed, or null),
``error`` (argparse's message or ``Type: text``), ``exit_code`` (argparse's), ``args`` (the parsed
namespace), ``engine`` (a summary of the engine config), ``warnings`` (vLLM's warning log lines
during the case) and ``seconds``. Everything else vLLM prints goes to stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import sys
import time
import traceback
from typing import Any


class _Capture:
    """Collects vLLM's warning lines. A log record factory rather than a handler: vLLM re-runs
    dictConfig (replacing the handlers of its logger) when it builds an engine config."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.previous = logging.getLogRecordFactory()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if record.levelno >= logging.WARNING and record.name.startswith("vllm"):
            try:
                self.lines.append(record.getMessage())
            except Exception:  # a malformed log call must not fail the check
                self.lines.append(str(record.msg))
        return record


class Vllm:
    """The handful of vLLM entry points the check uses (vLLM 0.33.0 import paths)."""

    def __init__(self) -> None:
        argparse_utils = importlib.import_module("vllm.utils.argparse_utils")
        cli_args = importlib.import_module("vllm.entrypoints.common.cli_args")
        arg_utils = importlib.import_module("vllm.engine.arg_utils")
        usage_lib = importlib.import_module("vllm.usage.usage_lib")
        platforms = importlib.import_module("vllm.platforms")
        self.version: str = importlib.import_module("vllm").__version__
        self.validate = cli_args.validate_parsed_serve_args
        self.propagate = cli_args.propagate_flash_late_interaction
        self.engine_args = arg_utils.AsyncEngineArgs
        self.usage_context = usage_lib.UsageContext.OPENAI_API_SERVER
        self.platform = str(platforms.current_platform.device_type)
        # As `vllm serve` builds it (vllm/entrypoints/cli/main.py and serve.py).
        self.parser = argparse_utils.FlexibleArgumentParser(prog="vllm")
        subparsers = self.parser.add_subparsers(required=False, dest="subparser")
        serve = subparsers.add_parser("serve", usage="vllm serve [model_tag] [options]")
        cli_args.make_arg_parser(serve)


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def _engine_summary(config: Any) -> dict[str, Any]:
    model, parallel = config.model_config, config.parallel_config
    cache, scheduler = config.cache_config, config.scheduler_config
    return {
        key: _plain(value)
        for key, value in {
            "architecture": model.architecture,
            "max_model_len": model.max_model_len,
            "quantization": model.quantization,
            "dtype": str(model.dtype).removeprefix("torch."),
            "served_model_name": model.served_model_name,
            "tensor_parallel_size": parallel.tensor_parallel_size,
            "pipeline_parallel_size": parallel.pipeline_parallel_size,
            "data_parallel_size": parallel.data_parallel_size,
            "world_size": parallel.world_size,
            "data_parallel_size_local": parallel.data_parallel_size_local,
            "data_parallel_rank": parallel.data_parallel_rank,
            "data_parallel_master_ip": parallel.data_parallel_master_ip,
            "data_parallel_rpc_port": parallel.data_parallel_rpc_port,
            "data_parallel_hybrid_lb": parallel.data_parallel_hybrid_lb,
            "data_parallel_external_lb": parallel.data_parallel_external_lb,
            "nnodes": parallel.nnodes,
            "node_rank": parallel.node_rank,
            "node_rank_within_dp": parallel.node_rank_within_dp,
            "master_addr": parallel.master_addr,
            "master_port": parallel.master_port,
            "enable_expert_parallel": parallel.enable_expert_parallel,
            "distributed_executor_backend": parallel.distributed_executor_backend,
            "kv_cache_dtype": cache.cache_dtype,
            "gpu_memory_utilization": cache.gpu_memory_utilization,
            "enable_prefix_caching": cache.enable_prefix_caching,
            "max_num_seqs": scheduler.max_num_seqs,
            "max_num_batched_tokens": scheduler.max_num_batched_tokens,
        }.items()
    }


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_case(vllm: Vllm, case: dict[str, Any], capture: _Capture) -> dict[str, Any]:
    started = time.monotonic()
    capture.lines.clear()
    result: dict[str, Any] = {
        "id": case["id"],
        "ok": False,
        "stage": "parse",
        "error": None,
        "exit_code": None,
        "args": None,
        "engine": None,
        "warnings": [],
        "seconds": 0.0,
    }
    try:
        messages = io.StringIO()
        try:
            with contextlib.redirect_stderr(messages):
                namespace = vllm.parser.parse_args(["serve", *case["argv"]])
        except SystemExit as exc:  # argparse.error() or --help
            result["exit_code"] = exc.code
            lines = [line for line in messages.getvalue().splitlines() if line.strip()]
            result["error"] = lines[-1] if lines else f"argparse exited {exc.code}"
            return result
        if namespace.model_tag is not None:  # what `vllm serve` does first
            namespace.model = namespace.model_tag
        result["args"] = {key: _plain(value) for key, value in sorted(vars(namespace).items())}
        result["stage"] = "validate"
        vllm.validate(namespace)
        if case.get("engine"):
            result["stage"] = "engine"
            if not case.get("config_dir"):
                raise ValueError("an engine check needs config_dir (a folder with config.json)")
            # The model is replaced before the engine args are built: their __post_init__
            # resolves it (a path that does not exist here would be taken for a hub repo id).
            namespace.model = str(case["config_dir"])
            # Reasoning parsers are built from the tokenizer, which the test data does not ship
            # (config.json only); their names were already checked by the parse stage.
            namespace.reasoning_parser = ""
            engine_args = vllm.engine_args.from_cli_args(namespace)
            vllm.propagate(namespace, engine_args)
            engine_args.skip_tokenizer_init = True
            # A headless pod (a multi-node worker) builds its config as run_headless does.
            config = engine_args.create_engine_config(
                usage_context=vllm.usage_context, headless=bool(namespace.headless)
            )
            result["engine"] = _engine_summary(config)
        result["ok"] = True
        result["stage"] = None
    except Exception as exc:
        result["error"] = _error(exc)
        print(f"[{case['id']}] {result['stage']} failed:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
    finally:
        result["warnings"] = list(capture.lines)
        result["seconds"] = round(time.monotonic() - started, 4)
    return result


def read_cases(text: str) -> list[dict[str, Any]]:
    cases = json.loads(text)
    if not isinstance(cases, list):
        raise ValueError("stdin must hold a JSON list of cases")
    seen: set[str] = set()
    for case in cases:
        if not isinstance(case, dict) or not isinstance(case.get("id"), str):
            raise ValueError(f"each case needs a string id: {case!r}")
        if case["id"] in seen:
            raise ValueError(f"duplicate case id {case['id']!r}")
        seen.add(case["id"])
        argv = case.get("argv")
        if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
            raise ValueError(f"case {case['id']!r}: argv must be a list of strings")
    return cases


def main() -> int:
    # Keep stdout for the JSON answer; whatever else writes to fd 1 (vLLM's log) goes to stderr.
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    cases = read_cases(sys.stdin.read())

    started = time.monotonic()
    vllm = Vllm()
    import_seconds = round(time.monotonic() - started, 2)
    capture = _Capture()
    logging.setLogRecordFactory(capture)

    results = [check_case(vllm, case, capture) for case in cases]
    json.dump(
        {
            "vllm_version": vllm.version,
            "platform": vllm.platform,
            "import_seconds": import_seconds,
            "results": results,
        },
        answer,
    )
    answer.write("\n")
    answer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
