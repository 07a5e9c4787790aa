"""The vLLM launch contract: what the runtime container starts (the launch spec, read by
``gantry-runtime``, which builds the ``vllm serve`` argv) and the environment it starts with."""

from __future__ import annotations

from typing import Any

from gantry_operator.engine_args import render
from gantry_operator.planner import Plan
from gantry_operator.spec import MODEL_MOUNT, ModelDeploymentSpec
from gantry_operator.spec_rules import OFFLINE_ENV, PRIVACY_ENV
from gantry_runtime.launchspec import ENV_VAR, LEADER_WAIT_SECONDS, LaunchSpec

CACHE_DIR = "/var/cache/gantry"
#: The pod network's interface inside a pod (every common CNI names it eth0): NCCL and Gloo
#: must talk over it, not over loopback or a host interface they might pick by themselves.
POD_INTERFACE = "eth0"


def _model_location(spec: ModelDeploymentSpec) -> tuple[str, str | None, str | None, bool]:
    """(model argument, load format, revision, whether weights are local and checkable)."""
    src = spec.source
    if src.kind in ("pvc", "image"):
        path = f"{MODEL_MOUNT}/{src.path}" if src.path else MODEL_MOUNT
        return path, None, None, True
    if src.kind == "s3":
        uri = f"s3://{src.bucket}/{src.prefix}" if src.prefix else f"s3://{src.bucket}"
        return uri, "runai_streamer", None, False
    return src.repo, None, src.revision, False


def launch_spec(spec: ModelDeploymentSpec, plan: Plan) -> LaunchSpec:
    """What the runtime starts. The engine args were checked by spec parsing (flags the plan
    sets are protected there), so nothing here can contradict the plan."""
    args = dict(spec.serving.engine_args)
    model = spec.model
    tool_parser = args.pop("tool-call-parser", model.tool_call_parser)
    reasoning_parser = args.pop("reasoning-parser", model.reasoning_parser)
    trust = args.pop("trust-remote-code", str(model.trust_remote_code)).lower() == "true"
    location, load_format, revision, local = _model_location(spec)
    group: dict[str, Any] = {}
    if plan.nodes_per_replica > 1:
        group = {
            "nnodes": plan.nodes_per_replica,
            "layout": plan.layout,
            "data_parallel_size": plan.data_parallel_size,
            "data_parallel_size_local": plan.data_parallel_size_local,
            # The leader loads its share of the weights before its port answers on some
            # paths: give it at least the plan's expected load time.
            "leader_wait_seconds": max(LEADER_WAIT_SECONDS, plan.expected_load_seconds),
        }
    return LaunchSpec(
        model=location,
        served_model_name=spec.served_model_name,
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.max_num_seqs,
        gpu_memory_utilization=plan.gpu_memory_utilization,
        shutdown_timeout=spec.serving.shutdown_timeout_seconds,
        enable_expert_parallel=plan.expert_parallel,
        kv_cache_dtype=plan.kv_cache_dtype,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        tool_call_parser=tool_parser or None,
        reasoning_parser=reasoning_parser or None,
        trust_remote_code=trust,
        load_format=load_format,
        revision=revision,
        verify_local_weights=local,
        sha256=dict(spec.source.sha256),
        extra_args=tuple(render(k, v) for k, v in sorted(args.items())),
        **group,
    )


def multinode_env(plan: Plan, *, interface: str = POD_INTERFACE) -> list[dict[str, Any]]:
    """Env every container of a multi-node group needs besides :func:`build_env`'s (empty for
    one node), sorted by name: NCCL and Gloo on the pod network's interface, and vLLM's own
    address (``VLLM_HOST_IP``, which vLLM otherwise guesses from the default route) from the
    pod's IP; the leader's runtime also binds the group's ports there (launchspec.group_args).
    LeaderWorkerSet adds LWS_LEADER_ADDRESS, LWS_GROUP_SIZE and LWS_WORKER_INDEX."""
    if plan.nodes_per_replica <= 1:
        return []
    return [
        {"name": "GLOO_SOCKET_IFNAME", "value": interface},
        {"name": "NCCL_SOCKET_IFNAME", "value": interface},
        {"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def build_env(spec: ModelDeploymentSpec, launch: LaunchSpec) -> list[dict[str, Any]]:
    """Container env: ours, then the user's by name (parsing refused what may not be set)."""
    ours: dict[str, dict[str, Any]] = {}

    def put(name: str, value: str) -> None:
        ours[name] = {"name": name, "value": value}

    put(ENV_VAR, launch.to_json())
    for name, value in {
        "HOME": CACHE_DIR,
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        "XDG_CACHE_HOME": CACHE_DIR,
        "VLLM_CACHE_ROOT": f"{CACHE_DIR}/vllm",
        "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
        **PRIVACY_ENV,
    }.items():
        put(name, value)
    if spec.residency.offline:
        for name, value in OFFLINE_ENV.items():
            put(name, value)
    src = spec.source
    if src.kind == "s3":
        put("AWS_ENDPOINT_URL", src.endpoint)
        put("RUNAI_STREAMER_S3_ENDPOINT", src.endpoint)
        put("AWS_EC2_METADATA_DISABLED", "true")
        if src.region:
            put("AWS_REGION", src.region)
        if src.credentials_secret:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                ours[key] = _secret_env(key, src.credentials_secret, key)
    if src.kind == "huggingFace" and src.token_secret:
        ours["HF_TOKEN"] = _secret_env("HF_TOKEN", src.token_secret, "HF_TOKEN")
    # spec parsing refused GANTRY_* names and any other value for the residency and privacy
    # variables (spec_rules.check_env), so the user's entries can simply win.
    for item in spec.serving.env:
        ours[str(item["name"])] = dict(item)
    return [ours[name] for name in sorted(ours)]
