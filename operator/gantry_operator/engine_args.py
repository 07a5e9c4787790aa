"""spec.serving.engineArgs as data: vLLM flags by their canonical name, checked before use.

A tenant writes extra vLLM flags as a map of flag name to string. This module turns that map
into ``(flag, value)`` pairs that can only ever become ``--flag value`` (or a bare ``--flag`` /
``--no-flag`` switch) on vLLM's command line, and refuses, with a message naming the key and the
fix:

- keys that are not flags of the pinned vLLM's ``vllm serve`` parser (``catalog/vllm_flags.json``,
  generated from that parser by ``hack/vllm_flags.py`` and held true by a contract test), with
  the nearest known flag suggested;
- keys not written in the one canonical spelling (``_`` becomes ``-`` and a leading ``--`` is
  dropped first; aliases and negative forms such as ``no-enable-prefix-caching`` are refused
  with the canonical form to write instead);
- protected flags, in every spelling (they are matched by the setting they change, not by their
  text): what is served and from where, where and how the server listens, the parallel layout
  the plan owns, and flags that read or write files or load code outside the model
  (:data:`PROTECTED`);
- values that could carry a second argument (a leading ``-``, whitespace, control characters),
  values over :data:`MAX_VALUE_LENGTH`, more than :data:`MAX_ARGS` keys;
- switches set to anything but ``true`` / ``false``, and values outside a flag's choices.

Flags that send data out of the cluster (:data:`EGRESS`) pass here; the cluster policy refuses
them while offline unless it allows their endpoint (``policy.Policy.check``).

Pure: no Kubernetes, no kopf, no I/O beyond reading the packaged flag table once.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

FIELD = "spec.serving.engineArgs"
#: Caps the CRD repeats (maxProperties, key and value maxLength).
MAX_ARGS = 16
MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 512
#: A canonical key: lowercase words joined by single dashes.
KEY_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
#: Printable ASCII without spaces, not starting with '-' (it would read as a second flag); the
#: CRD's pattern for engineArgs values is the same.
VALUE_PATTERN = re.compile(r"^([!-,.-~][!-~]*)?$")
#: Keys as the CRD accepts them, before '_' is read as '-'.
CRD_KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

FlagKind = Literal["value", "switch", "store_true", "store_false", "negative"]


@dataclass(frozen=True)
class Flag:
    """One long option string of ``vllm serve``."""

    name: str
    dest: str
    canonical: str
    kind: FlagKind
    choices: tuple[str, ...] = ()

    @property
    def takes_value(self) -> bool:
        return self.kind == "value"


@dataclass(frozen=True)
class FlagTable:
    vllm_version: str
    flags: Mapping[str, Flag]

    def by_dest(self, dest: str) -> Flag:
        return next(f for f in self.flags.values() if f.dest == dest and f.name == f.canonical)


@cache
def table() -> FlagTable:
    """The pinned vLLM's flags, read once from the packaged ``catalog/vllm_flags.json``."""
    text = resources.files("gantry_operator.catalog").joinpath("vllm_flags.json").read_text()
    data: dict[str, Any] = json.loads(text)
    flags = {
        name: Flag(
            name=name,
            dest=str(entry["dest"]),
            canonical=str(entry["canonical"]),
            kind=entry["kind"],
            choices=tuple(entry.get("choices", ())),
        )
        for name, entry in data["flags"].items()
    }
    return FlagTable(vllm_version=str(data["vllm_version"]), flags=flags)


#: Protected flags by canonical name, with the reason or the field to use instead. Refused in
#: every spelling: a key is matched by the vLLM setting (``dest``) it would change.
PROTECTED: dict[str, str] = {
    # What is served, from where.
    "model": "the model comes from spec.source",
    "served-model-name": "use spec.model.servedName",
    "tokenizer": "the tokenizer is read from the model directory spec.source names",
    "revision": "the revision comes from spec.source.huggingFace.revision",
    "tokenizer-revision": "the revision comes from spec.source.huggingFace.revision",
    "code-revision": "the revision comes from spec.source.huggingFace.revision",
    "hf-config-path": "the config is read from the model directory spec.source names",
    "hf-overrides": "it changes the architecture the plan was made for; use spec.model.custom",
    "model-class-overrides": "it changes the architecture the plan was made for",
    "download-dir": "Gantry sets where weights live (spec.source)",
    "load-format": "Gantry sets the load format from spec.source",
    "model-loader-extra-config": "Gantry sets how weights are loaded from spec.source",
    "config": "it reads further flags from a file, past these checks",
    "generation-config": "it reads a file or a hub repository outside the model",
    "hf-token": "it sends a credential to a model hub; use spec.source.huggingFace.tokenSecret",
    "runner": "Gantry serves generative models; the runner is fixed",
    "convert": "Gantry serves generative models; the runner is fixed",
    "speculative-config": "it loads a second model the plan does not size",
    "spec-model": "it loads a second model the plan does not size",
    "spec-method": "it loads a second model the plan does not size",
    "spec-tokens": "it configures a second model the plan does not size",
    "lora-modules": "it loads adapters from paths or a hub outside the model",
    "default-mm-loras": "it loads adapters from paths outside the model",
    # Where and how the server listens (probes, the Service and scraping rely on it).
    "host": "Gantry binds vLLM to the pod's port 8000",
    "port": "Gantry binds vLLM to the pod's port 8000",
    "uds": "Gantry binds vLLM to the pod's port 8000",
    "grpc": "Gantry serves the OpenAI HTTP API",
    "grpc-port": "Gantry serves the OpenAI HTTP API",
    "root-path": "the Service, probes and gateway expect the API at the root",
    "api-server-count": "the process layout is part of the plan",
    "headless": "the process layout is part of the plan",
    "api-key": "authentication belongs to the gateway; a key on the command line leaks",
    "ssl-keyfile": "TLS files are not mounted; terminate TLS at the gateway",
    "ssl-certfile": "TLS files are not mounted; terminate TLS at the gateway",
    "ssl-ca-certs": "TLS files are not mounted; terminate TLS at the gateway",
    "ssl-cert-reqs": "TLS is terminated at the gateway",
    "ssl-ciphers": "TLS is terminated at the gateway",
    "enable-ssl-refresh": "TLS is terminated at the gateway",
    "middleware": "it imports code into the API server",
    "shutdown-timeout": "use spec.serving.shutdownTimeoutSeconds",
    # The parallel layout and context the plan owns.
    "tensor-parallel-size": "use spec.parallelism.tensor",
    "pipeline-parallel-size": "use spec.parallelism.pipeline",
    "max-model-len": "use spec.serving.maxContextLength",
    "data-parallel-size": "it multiplies the GPUs of every replica; scale with spec.replicas",
    "data-parallel-size-local": "data parallelism is spec.replicas",
    "data-parallel-rank": "data parallelism is spec.replicas",
    "data-parallel-start-rank": "data parallelism is spec.replicas",
    "data-parallel-address": "data parallelism is spec.replicas",
    "data-parallel-rpc-port": "data parallelism is spec.replicas",
    "data-parallel-backend": "data parallelism is spec.replicas",
    "data-parallel-hybrid-lb": "data parallelism is spec.replicas",
    "data-parallel-external-lb": "data parallelism is spec.replicas",
    "data-parallel-multi-port-external-lb": "data parallelism is spec.replicas",
    "data-parallel-supervisor-port": "data parallelism is spec.replicas",
    "elastic-ep-max-dp-size": "data parallelism is spec.replicas",
    "prefill-context-parallel-size": "it multiplies the GPUs of every replica",
    "nnodes": "the node layout is part of the plan",
    "node-rank": "the node layout is part of the plan",
    "master-addr": "the node layout is part of the plan",
    "master-port": "the node layout is part of the plan",
    "distributed-executor-backend": "the process layout is part of the plan",
    "device-ids": "the GPUs come from the plan",
    # Files, code and endpoints outside the model.
    "chat-template": "it reads a file outside the model; ship the template in the model's "
    "tokenizer_config.json",
    "log-config-file": "it reads a file outside the model",
    "tool-parser-plugin": "it imports code from a file",
    "reasoning-parser-plugin": "it imports code from a file",
    "io-processor-plugin": "it imports code",
    "worker-cls": "it imports code",
    "worker-extension-cls": "it imports code",
    "scheduler-cls": "it imports code",
    "logits-processors": "it imports code",
    "allowed-local-media-path": "it lets requests read files of the pod",
    "profiler-config": "it writes profiles to files",
    "mm-encoder-fp8-scale-path": "it reads a file outside the model",
    "mm-encoder-fp8-scale-save-path": "it writes a file",
    "kv-transfer-config": "it sends KV cache (prompt content) to other processes or stores",
    "ec-transfer-config": "it sends encoder cache to other processes or stores",
    "kv-events-config": "it publishes KV-cache events to an endpoint",
    "weight-transfer-config": "it receives weights from outside the model",
}

#: Flags that send data to an endpoint outside the pod: allowed while offline only when the
#: cluster policy lists the endpoint (``residency.allowedEgressEndpoints``). Values: how to read
#: the endpoints from the flag's value.
EGRESS: dict[str, str] = {
    "otlp-traces-endpoint": "url",
    "collect-detailed-traces": "needs-otlp",
    "tool-server": "list",
}

#: Engine flags the launch spec consumes itself (see manifests.launch.launch_spec).
CONSUMED = ("tool-call-parser", "reasoning-parser", "trust-remote-code")


class EngineArgError(ValueError):
    """An engineArgs entry refused; ``field_path`` names it, the message says the fix."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path


def normalise_key(raw: str) -> str:
    """vLLM's own equivalences: a leading ``--`` is optional and ``_`` equals ``-``."""
    return raw.removeprefix("--").replace("_", "-")


@cache
def _protected_dests() -> dict[str, str]:
    known = table()
    return {known.flags[name].dest: name for name in PROTECTED if name in known.flags}


@cache
def _egress_dests() -> dict[str, str]:
    known = table()
    return {known.flags[name].dest: name for name in EGRESS if name in known.flags}


def _suggest(key: str) -> str:
    names = [f.canonical for f in table().flags.values() if f.name == f.canonical]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _value(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float | str):
        return str(raw)
    raise TypeError(type(raw).__name__)


def check_value(field_path: str, value: str) -> None:
    """A value that can only be one argv element after its flag."""
    if len(value) > MAX_VALUE_LENGTH:
        raise EngineArgError(
            field_path, f"is {len(value)} characters; values may have at most {MAX_VALUE_LENGTH}"
        )
    if not VALUE_PATTERN.match(value):
        raise EngineArgError(
            field_path,
            f"{value[:40]!r} must be one argument: printable ASCII without spaces, not starting "
            "with '-' (it would become a second argument); write one value, e.g. compact JSON",
        )


def parse_engine_args(
    raw: Mapping[Any, Any] | None, field: str = FIELD
) -> tuple[tuple[str, str], ...]:
    """Checked engine args as ``(canonical flag, value)`` pairs sorted by flag.

    Switch values are ``"true"`` / ``"false"``; a bare flag set to its default (``store_true``
    set to ``false``) is dropped. Raises :class:`EngineArgError` naming the first bad key."""
    if not raw:
        return ()
    if len(raw) > MAX_ARGS:
        raise EngineArgError(field, f"has {len(raw)} keys; at most {MAX_ARGS} are allowed")
    known = table()
    seen: dict[str, str] = {}
    out: dict[str, str] = {}
    for raw_key in sorted(raw, key=str):
        text = str(raw_key)
        where = f"{field}.{text}"
        if len(text) > MAX_KEY_LENGTH:
            raise EngineArgError(
                f"{field}.{text[:MAX_KEY_LENGTH]}...",
                f"keys may have at most {MAX_KEY_LENGTH} characters",
            )
        key = normalise_key(text)
        if not KEY_PATTERN.match(key):
            raise EngineArgError(
                where,
                "is not a vLLM flag name: use lowercase words joined by '-', without leading "
                "dashes (for example max-num-seqs)",
            )
        flag = known.flags.get(key)
        if flag is None:
            raise EngineArgError(
                where, f"is not a flag of vLLM {known.vllm_version}'s `vllm serve`{_suggest(key)}"
            )
        protected = _protected_dests().get(flag.dest)
        if protected is not None:
            raise EngineArgError(
                where,
                f"sets vLLM's protected --{protected}, which ModelDeployments cannot set: "
                f"{PROTECTED[protected]}",
            )
        if flag.kind == "negative":
            raise EngineArgError(
                where,
                f"write it as {flag.canonical} with the opposite value (one spelling per flag)",
            )
        if key != flag.canonical:
            raise EngineArgError(
                where, f"is another spelling of {flag.canonical}; write {flag.canonical}"
            )
        if flag.dest in seen:
            raise EngineArgError(
                where, f"sets the same flag as {field}.{seen[flag.dest]}; keep one of them"
            )
        seen[flag.dest] = text
        try:
            value = _value(raw[raw_key])
        except TypeError as exc:
            raise EngineArgError(where, f"must be a string, not {exc}") from None
        check_value(where, value)
        if flag.kind != "value":
            lowered = value.lower()
            if lowered not in ("true", "false"):
                raise EngineArgError(
                    where, f'{value!r} is not valid: --{key} is a switch, use "true" or "false"'
                )
            default_off = (flag.kind == "store_true" and lowered == "false") or (
                flag.kind == "store_false" and lowered == "true"
            )
            if not default_off:
                out[key] = lowered
            continue
        if flag.choices and value not in flag.choices:
            raise EngineArgError(
                where,
                f"{value!r} is not valid: use one of vLLM's choices {', '.join(flag.choices)}",
            )
        out[key] = value
    return tuple(sorted(out.items()))


def render(flag: str, value: str) -> tuple[str, str | None]:
    """One checked pair as vLLM argv: ``("--flag", value)``, or a bare switch (value None)."""
    entry = table().flags.get(flag)
    if entry is not None and entry.takes_value:
        return (f"--{flag}", value)
    if entry is not None and entry.kind in ("store_true", "store_false"):
        return (f"--{flag}", None)
    # Switches (and, for callers holding pairs from before this table, anything else).
    if value.lower() == "true":
        return (f"--{flag}", None)
    if value.lower() == "false":
        return (f"--no-{flag}", None)
    return (f"--{flag}", value)


def egress(args: tuple[tuple[str, str], ...]) -> dict[str, tuple[str, ...]]:
    """Egress flags among checked ``args``: flag -> endpoints its value names (may be empty)."""
    found: dict[str, tuple[str, ...]] = {}
    for flag, value in args:
        how = EGRESS.get(flag)
        if how is None:
            continue
        if how == "url":
            found[flag] = (value,) if value else ()
        elif how == "list":
            found[flag] = tuple(v for v in value.split(",") if v)
        else:
            found[flag] = ()
    return found


def protected_spellings() -> tuple[str, ...]:
    """Every flag name (aliases and negative forms included) that sets a protected setting: the
    list the CRD's CEL rule refuses (after mapping ``_`` to ``-``)."""
    dests = _protected_dests()
    return tuple(sorted(name for name, flag in table().flags.items() if flag.dest in dests))
