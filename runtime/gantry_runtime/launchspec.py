"""The launch spec: what the operator writes for the runtime, and the `vllm serve` argv it becomes.

The operator serialises a :class:`LaunchSpec` as JSON into the runtime container's
``GANTRY_LAUNCH_SPEC`` environment variable (so a change rolls the pods). The runtime reads it,
checks the weights, and builds the argv with :func:`vllm_argv`. The operator's ``gantry render``
uses the same function to show the command line a pod will run, and the vLLM contract test feeds
every argv it can produce to vLLM's own parser.

A replica that spans nodes runs as a LeaderWorkerSet group: the same launch spec goes into every
pod of the group, and each pod's argv follows from where LeaderWorkerSet put it (its environment
variables ``LWS_LEADER_ADDRESS``, ``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX``, read by
:func:`group_position`). vLLM's own multi-node launcher (no Ray) runs it:

* ``pipeline``: every pod ``--nnodes N --node-rank R --master-addr LEADER --master-port P``;
  workers (R > 0) add ``--headless``.
* ``data-parallel``: every pod ``--data-parallel-size D --data-parallel-size-local L
  --data-parallel-address LEADER --data-parallel-rpc-port P --enable-expert-parallel``; workers add
  ``--headless --data-parallel-start-rank R x L``.

LEADER is ``LWS_LEADER_ADDRESS`` on the workers; the leader itself uses its own pod IP
(``VLLM_HOST_IP``, set from the pod's status by the operator) when it has one, so that it never
waits for the DNS record of its own name before it binds its ports. The leader passes no start
rank: vLLM takes a
  start rank on a pod with an API server for hybrid load balancing (one API server per node),
  while Gantry's leader serves the whole group (vllm/entrypoints/cli/serve.py,
  vllm/engine/arg_utils.py ``create_engine_config``).

The multi-node fields are written to the JSON only for a group (``nnodes`` > 1), so single-node
launch specs are byte for byte what they were.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ENV_VAR = "GANTRY_LAUNCH_SPEC"
#: The port vLLM (and the simulator) listens on inside the pod.
PORT = 8000
#: vLLM's defaults: torch.distributed's store on the leader (ParallelConfig.master_port) and the
#: data-parallel handshake (ParallelConfig.data_parallel_rpc_port).
MASTER_PORT = 29501
RPC_PORT = 29550
#: Seconds a worker waits for its leader to answer before it gives up (the leader may be pulling
#: its image, verifying weights and importing vLLM).
LEADER_WAIT_SECONDS = 600
#: What LeaderWorkerSet (v0.9.0, api/leaderworkerset/v1: LwsLeaderAddress, LwsGroupSize,
#: LwsWorkerIndex) sets in every container of a group's pods.
LEADER_ADDRESS_VAR = "LWS_LEADER_ADDRESS"
GROUP_SIZE_VAR = "LWS_GROUP_SIZE"
WORKER_INDEX_VAR = "LWS_WORKER_INDEX"
#: The pod's own IP, which the operator sets from the pod's status (vLLM reads it too).
HOST_IP_VAR = "VLLM_HOST_IP"
LAYOUTS = ("single-node", "pipeline", "data-parallel")
#: Fields only a multi-node group writes (and their single-node defaults).
_GROUP_FIELDS = (
    "nnodes", "layout", "master_port", "rpc_port", "data_parallel_size",
    "data_parallel_size_local", "leader_wait_seconds",
)  # fmt: skip


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the runtime needs to start vLLM for one replica."""

    #: A local directory (pvc / image sources), an ``s3://bucket/prefix`` URI, or a hub repo id.
    model: str
    served_model_name: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    #: Seconds vLLM drains in-flight requests after SIGTERM (``--shutdown-timeout``).
    shutdown_timeout: int
    enable_expert_parallel: bool = False
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: int | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    trust_remote_code: bool = False
    #: ``runai_streamer`` for S3 sources; None lets vLLM pick.
    load_format: str | None = None
    #: Hub revision (huggingFace sources only).
    revision: str | None = None
    #: Weights are read from a local directory and must be checked before vLLM starts.
    verify_local_weights: bool = True
    #: Expected sha256 per weight file, relative to ``model``; empty means presence checks only.
    sha256: dict[str, str] = field(default_factory=dict)
    #: Extra engine flags, already merged and checked against the plan by the operator,
    #: as ``(flag, value)`` pairs; value None means a bare switch.
    extra_args: tuple[tuple[str, str | None], ...] = ()
    port: int = PORT
    #: Pods (nodes) per replica: a LeaderWorkerSet group when > 1.
    nnodes: int = 1
    layout: str = "single-node"
    #: The leader's torch.distributed store (pipeline layout).
    master_port: int = MASTER_PORT
    #: The leader's data-parallel handshake port (data-parallel layout).
    rpc_port: int = RPC_PORT
    data_parallel_size: int = 1
    data_parallel_size_local: int = 1
    #: Seconds a worker waits for the leader's port before it exits non-zero.
    leader_wait_seconds: int = LEADER_WAIT_SECONDS

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if (self.nnodes > 1) != (self.layout != "single-node"):
            raise ValueError(
                f"layout {self.layout!r} does not match nnodes={self.nnodes}: a multi-node "
                "layout needs nnodes > 1 and nnodes > 1 needs one"
            )
        if self.layout == "data-parallel" and (
            self.data_parallel_size != self.nnodes * self.data_parallel_size_local
        ):
            raise ValueError(
                f"data_parallel_size={self.data_parallel_size} must be nnodes={self.nnodes} x "
                f"data_parallel_size_local={self.data_parallel_size_local}"
            )

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1

    @property
    def leader_port(self) -> int:
        """The leader's port the workers connect to first."""
        return self.rpc_port if self.layout == "data-parallel" else self.master_port

    def to_json(self) -> str:
        data = asdict(self)
        data["extra_args"] = [list(pair) for pair in self.extra_args]
        if not self.multi_node:
            for name in _GROUP_FIELDS:
                del data[name]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LaunchSpec:
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ENV_VAR} is not valid JSON: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{ENV_VAR} has unknown keys {unknown}: the operator is newer than this runtime "
                "image; upgrade the runtime image"
            )
        data["extra_args"] = tuple(
            (str(flag), None if value is None else str(value))
            for flag, value in data.get("extra_args", ())
        )
        data["sha256"] = dict(data.get("sha256", {}))
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"{ENV_VAR} is incomplete: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}: {exc}") from exc


class GroupError(ValueError):
    """A multi-node launch spec in a pod whose LeaderWorkerSet environment does not fit it."""


@dataclass(frozen=True)
class GroupPosition:
    """Where a pod sits in its LeaderWorkerSet group."""

    leader_address: str
    size: int
    worker_index: int
    #: This pod's own IP (``VLLM_HOST_IP``), when known.
    pod_ip: str | None = None

    @property
    def is_leader(self) -> bool:
        return self.worker_index == 0

    @property
    def group_address(self) -> str:
        """Where this pod reaches the leader's ports: its own IP on the leader (when known),
        the leader's name elsewhere."""
        if self.is_leader and self.pod_ip:
            return self.pod_ip
        return self.leader_address


def _var(env: Mapping[str, str], name: str, nnodes: int) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise GroupError(
            f"{name} is not set: this launch spec is for a {nnodes}-node LeaderWorkerSet group, "
            "whose controller sets it in every pod; run multi-node replicas only as a "
            "LeaderWorkerSet (is its controller installed?)"
        )
    return value


def _int_var(env: Mapping[str, str], name: str, nnodes: int) -> int:
    value = _var(env, name, nnodes)
    try:
        return int(value)
    except ValueError:
        raise GroupError(f"{name}={value!r} is not a whole number") from None


def group_position(spec: LaunchSpec, env: Mapping[str, str]) -> GroupPosition | None:
    """This pod's place in its group, from LeaderWorkerSet's variables; None for one node.

    Raises GroupError naming the variable when one is missing or does not fit the spec."""
    if not spec.multi_node:
        return None
    size = _int_var(env, GROUP_SIZE_VAR, spec.nnodes)
    index = _int_var(env, WORKER_INDEX_VAR, spec.nnodes)
    address = _var(env, LEADER_ADDRESS_VAR, spec.nnodes)
    if size != spec.nnodes:
        raise GroupError(
            f"{GROUP_SIZE_VAR}={size} does not match the launch spec's {spec.nnodes} nodes per "
            "replica: the LeaderWorkerSet's size must be status.plan.nodesPerReplica"
        )
    if not 0 <= index < size:
        raise GroupError(f"{WORKER_INDEX_VAR}={index} is outside the group of {size} pods")
    pod_ip = env.get(HOST_IP_VAR, "").strip() or None
    return GroupPosition(leader_address=address, size=size, worker_index=index, pod_ip=pod_ip)


def group_args(spec: LaunchSpec, position: GroupPosition) -> list[str]:
    """The multi-node flags of one pod of a group (see the module docstring)."""
    address, rank = position.group_address, position.worker_index
    if spec.layout == "data-parallel":
        args = [
            "--data-parallel-size", str(spec.data_parallel_size),
            "--data-parallel-size-local", str(spec.data_parallel_size_local),
            "--data-parallel-address", address,
            "--data-parallel-rpc-port", str(spec.rpc_port),
        ]  # fmt: skip
        if not position.is_leader:
            start = rank * spec.data_parallel_size_local
            args += ["--data-parallel-start-rank", str(start)]
    else:
        args = [
            "--nnodes", str(spec.nnodes),
            "--node-rank", str(rank),
            "--master-addr", address,
            "--master-port", str(spec.master_port),
        ]  # fmt: skip
    if not position.is_leader:
        args.append("--headless")
    return args


def vllm_argv(
    spec: LaunchSpec, *, host: str = "0.0.0.0", position: GroupPosition | None = None
) -> list[str]:
    """The full ``vllm serve`` command line for a launch spec (deterministic order); for a
    multi-node spec, that of the pod at ``position`` in its group (required then)."""
    if spec.multi_node and position is None:
        raise GroupError(
            f"a {spec.nnodes}-node launch spec needs the pod's place in its group "
            f"({LEADER_ADDRESS_VAR}, {GROUP_SIZE_VAR}, {WORKER_INDEX_VAR})"
        )
    argv = [
        "vllm", "serve", spec.model,
        "--served-model-name", spec.served_model_name,
        "--host", host,
        "--port", str(spec.port),
        "--tensor-parallel-size", str(spec.tensor_parallel_size),
        "--pipeline-parallel-size", str(spec.pipeline_parallel_size),
        "--max-model-len", str(spec.max_model_len),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--gpu-memory-utilization", f"{spec.gpu_memory_utilization:.2f}",
        "--shutdown-timeout", str(spec.shutdown_timeout),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if spec.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", spec.kv_cache_dtype]
    if spec.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(spec.max_num_batched_tokens)]
    if spec.enable_expert_parallel or spec.layout == "data-parallel":
        argv.append("--enable-expert-parallel")
    if spec.tool_call_parser:
        argv += ["--tool-call-parser", spec.tool_call_parser, "--enable-auto-tool-choice"]
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    if spec.trust_remote_code:
        argv.append("--trust-remote-code")
    if spec.load_format:
        argv += ["--load-format", spec.load_format]
    if spec.revision:
        argv += ["--revision", spec.revision]
    if position is not None and spec.multi_node:
        argv += group_args(spec, position)
    for flag, value in spec.extra_args:
        argv += [flag] if value is None else [flag, value]
    return argv
