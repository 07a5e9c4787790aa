"""The pure builders: golden files for whole objects, plus targeted assertions.

Golden files live in ``tests/unit/golden/<case>.yaml``: a comment header with the plan and the
``vllm serve`` command line, then every object ``build_all`` returns, as YAML documents. The test
compares the text exactly and fails when a golden file is missing. After an intended change,
regenerate them and review the diff::

    GANTRY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_builders.py
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from gantry_operator import manifests, planner
from gantry_operator.cli import _argv_lines as argv_lines
from gantry_operator.manifests import Owner, build_all, build_deployment, launch_spec
from gantry_operator.manifests.common import LEADER_LABEL
from gantry_operator.manifests.launch import build_env
from gantry_operator.planner import Plan
from gantry_operator.spec import ModelDeploymentSpec, SpecError, parse
from gantry_runtime.launchspec import ENV_VAR, LaunchSpec, vllm_argv

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
EXAMPLES = HERE.parents[1] / "deploy" / "examples"
UPDATE = os.environ.get("GANTRY_UPDATE_GOLDEN") == "1"
OWNER = Owner(name="unused", uid="6f1c2d3e-0000-4000-8000-00000000abcd")
NAMESPACE = "llm"

_PVC = {"pvc": {"claimName": "models"}}
_BASE: dict[str, Any] = {
    "model": {"preset": "gpt-oss-20b"},
    "source": _PVC,
    "gpu": {"type": "H100-80GB"},
}


def _with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(_BASE)
    spec.update(copy.deepcopy(changes))
    return spec


#: Golden cases beyond the examples: (metadata.name, spec).
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "pvc-defaults": ("oss-small", _with()),
    "s3-credentials": (
        "oss-s3",
        _with(
            source={
                "s3": {
                    "endpoint": "http://minio.storage.svc:9000",
                    "bucket": "models",
                    "prefix": "openai/gpt-oss-20b",
                    "region": "us-east-1",
                    "credentialsSecret": "minio-creds",
                },
                "sha256": {"config.json": "0" * 64},
            }
        ),
    ),
    "image-source": (
        "oss-image",
        _with(
            source={
                "image": {
                    "reference": "registry.internal/models/gpt-oss-20b:1",
                    "path": "weights",
                    "pullPolicy": "Always",
                }
            },
            runtime={
                "image": "registry.internal/gantry-runtime:0.1.0",
                "imagePullPolicy": "Always",
                "imagePullSecrets": [{"name": "registry-pull"}],
                "shmSize": "512Mi",
                "resources": {"requests": {"cpu": "12"}, "limits": {"cpu": "16"}},
            },
        ),
    ),
    "huggingface-online": (
        "oss-hub",
        _with(
            source={
                "huggingFace": {
                    "repo": "openai/gpt-oss-20b",
                    "revision": "6cee5e81ee83917806bbde320786a8fb61efebee",
                    "tokenSecret": "hf-token",
                }
            },
            residency={"offline": False},
            serving={"env": [{"name": "HF_HUB_ENABLE_HF_TRANSFER", "value": "1"}]},
        ),
    ),
    "user-affinity": (
        "oss-affinity",
        _with(
            residency={"regions": ["eu-west-1", "eu-central-1"]},
            scheduling={
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "pool", "operator": "In", "values": ["llm"]}
                                    ]
                                },
                                {
                                    "matchExpressions": [
                                        {"key": "spot", "operator": "DoesNotExist"}
                                    ],
                                    "matchFields": [
                                        {
                                            "key": "metadata.name",
                                            "operator": "In",
                                            "values": ["gpu-7"],
                                        }
                                    ],
                                },
                            ]
                        },
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 10,
                                "preference": {
                                    "matchExpressions": [
                                        {"key": "rack", "operator": "In", "values": ["r1"]}
                                    ]
                                },
                            }
                        ],
                    },
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {
                                        "matchLabels": {"gantry.dev/model-deployment": "x"}
                                    },
                                },
                            }
                        ]
                    },
                }
            },
        ),
    ),
    "user-tolerations": (
        "oss-tolerations",
        _with(
            scheduling={
                "nodeSelector": {"pool": "llm"},
                "tolerations": [
                    {
                        "key": "dedicated",
                        "operator": "Equal",
                        "value": "llm",
                        "effect": "NoSchedule",
                    },
                    {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
                ],
                "priorityClassName": "llm-critical",
            }
        ),
    ),
    "replicas-3": ("oss-three", _with(replicas=3)),
    "custom-model": (
        "llama",
        _with(
            model={
                "custom": {
                    "name": "my-llama",
                    "repo": "example/my-llama",
                    "architecture": "LlamaForCausalLM",
                    "numLayers": 32,
                    "hiddenSize": 4096,
                    "numAttentionHeads": 32,
                    "numKvHeads": 8,
                    "headDim": 128,
                    "maxContext": 8192,
                    "weightBytes": 16_060_522_496,
                    "weightDtype": "bf16",
                    "toolCallParser": "llama3_json",
                },
                "servedName": "llama-3-8b",
            },
            gpu={"type": "L4"},
        ),
    ),
    "expert-parallel": (
        "qwen3-moe",
        _with(
            model={"preset": "qwen3-235b-a22b-fp8"},
            gpu={"type": "L40S"},
            serving={
                "targetConcurrency": 2,
                "engineArgs": {"max-num-seqs": "32", "enable-prefix-caching": "true"},
                "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
            },
        ),
    ),
    "trust-remote-code-amd": (
        "kimi",
        _with(model={"preset": "kimi-k2"}, gpu={"type": "MI300X"}),
    ),
}


def _example_cases() -> dict[str, tuple[str, dict[str, Any]]]:
    found = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ModelDeployment":
                found[f"example-{path.stem}"] = (doc["metadata"]["name"], doc["spec"])
    return found


ALL_CASES = {**_example_cases(), **CASES}
#: Cases whose replicas span nodes (LeaderWorkerSet groups).
MULTI_NODE_CASES = ("example-deepseek-v3-h100", "example-kimi-k2-h200")


def _build(name: str, spec: dict[str, Any]) -> tuple[ModelDeploymentSpec, Plan]:
    parsed = parse(name, NAMESPACE, spec)
    return parsed, planner.plan(parsed)


def _render(case: str) -> str:
    name, spec = ALL_CASES[case]
    parsed, plan = _build(name, spec)
    objects = build_all(parsed, plan, owner=Owner(name=name, uid=OWNER.uid))
    argv = "".join(f"# argv: {line}" for line in argv_lines(parsed, plan) if line[0] != "#")
    header = (
        f"# Golden file of tests/unit/test_builders.py, case {case}. Regenerate with\n"
        "#   GANTRY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_builders.py\n"
        f"# plan: {plan.summary}\n"
        f"{argv}"
    )
    return header + yaml.safe_dump_all(objects, sort_keys=False, width=100)


def test_the_examples_are_golden_cases() -> None:
    assert {"example-gpt-oss-120b", "example-gpt-oss-20b", *MULTI_NODE_CASES} <= set(ALL_CASES)
    for case in ALL_CASES:
        _, plan = _build(*ALL_CASES[case])
        assert (plan.nodes_per_replica > 1) == (case in MULTI_NODE_CASES), case


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_golden(case: str) -> None:
    text = _render(case)
    path = GOLDEN / f"{case}.yaml"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), (
        f"missing golden file {path.relative_to(HERE.parents[1])}: create it with "
        "GANTRY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_builders.py"
    )
    want = path.read_text()
    if text != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"golden/{case}.yaml",
                tofile="built now",
            )
        )
        pytest.fail(
            f"objects differ from the golden file (GANTRY_UPDATE_GOLDEN=1 updates it):\n{diff}"
        )
    assert list(yaml.safe_load_all(want))  # the golden file is valid YAML


def test_no_stale_golden_files() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == set(ALL_CASES)


# --- targeted assertions ------------------------------------------------------------------------


def _objects(case: str) -> tuple[ModelDeploymentSpec, Plan, list[dict[str, Any]]]:
    name, spec = ALL_CASES[case]
    parsed, plan = _build(name, spec)
    return parsed, plan, build_all(parsed, plan, owner=OWNER)


def _deployment(case: str) -> tuple[ModelDeploymentSpec, Plan, dict[str, Any]]:
    parsed, plan, objects = _objects(case)
    assert objects[0]["kind"] == "Deployment"
    return parsed, plan, objects[0]


def _templates(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod templates of a Deployment, or of a LeaderWorkerSet (leader first)."""
    if workload["kind"] == "LeaderWorkerSet":
        groups = workload["spec"]["leaderWorkerTemplate"]
        return [groups["leaderTemplate"], groups["workerTemplate"]]
    return [workload["spec"]["template"]]


def _container(workload: dict[str, Any], template: int = 0) -> dict[str, Any]:
    (container,) = _templates(workload)[template]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def _env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(deployment)["env"]}


def _launch(deployment: dict[str, Any]) -> LaunchSpec:
    return LaunchSpec.from_json(_env(deployment)[ENV_VAR]["value"])


@pytest.mark.parametrize(
    ("case", "template"),
    [(case, 0) for case in sorted(ALL_CASES)] + [(case, 1) for case in MULTI_NODE_CASES],
)
def test_pod_invariants(case: str, template: int) -> None:
    parsed, plan, objects = _objects(case)
    dep = objects[0]
    pod = _templates(dep)[template]["spec"]
    container = _container(dep, template)
    resource = parsed.gpu.profile.resource
    per_pod = plan.gpus_per_replica // plan.nodes_per_replica
    assert container["resources"]["limits"][resource] == str(per_pod)
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["terminationGracePeriodSeconds"] > parsed.serving.shutdown_timeout_seconds
    if template == 0:  # a serving pod (a headless worker of a group has no HTTP to probe)
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= plan.expected_load_seconds
    else:
        assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(container)
    assert {"key": resource, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # Everything the read-only root would break on is a volume.
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/cache/gantry", "/dev/shm"} <= mounted
    env = _env(dep)
    assert env["VLLM_NO_USAGE_STATS"]["value"] == "1"
    assert env["DO_NOT_TRACK"]["value"] == "1"
    if parsed.residency.offline:
        assert env["HF_HUB_OFFLINE"]["value"] == "1"
        assert env["TRANSFORMERS_OFFLINE"]["value"] == "1"
    launch = _launch(dep)
    assert (launch.tensor_parallel_size, launch.pipeline_parallel_size) == (
        plan.tensor_parallel_size,
        plan.pipeline_parallel_size,
    )
    assert launch.max_model_len == plan.max_model_len
    assert launch.enable_expert_parallel == plan.expert_parallel


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_owner_references_and_labels(case: str) -> None:
    parsed, _, objects = _objects(case)
    selector = {
        "gantry.dev/model-deployment": parsed.name,
        "app.kubernetes.io/component": "runtime",
    }
    for obj in objects:
        meta = obj["metadata"]
        assert (meta["name"], meta["namespace"]) == (parsed.name, NAMESPACE)
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "gantry.dev/v1alpha1",
                "kind": "ModelDeployment",
                "name": OWNER.name,
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "gantry"
        assert meta["labels"]["app.kubernetes.io/instance"] == parsed.name
        assert selector.items() <= meta["labels"].items()
        assert list(meta["labels"]) == sorted(meta["labels"])
    dep, svc = objects[0], objects[1]
    for template in _templates(dep):
        assert selector.items() <= template["metadata"]["labels"].items()
    assert svc["kind"] == "Service"
    if dep["kind"] == "LeaderWorkerSet":  # the group's leader alone serves
        assert svc["spec"]["selector"] == {**selector, LEADER_LABEL: "0"}
    else:
        assert dep["spec"]["selector"]["matchLabels"] == selector
        assert svc["spec"]["selector"] == selector
    assert svc["spec"]["ports"][0]["port"] == 8000


@pytest.mark.parametrize(("replicas", "pdb"), [(0, False), (1, False), (2, True), (3, True)])
def test_pdb_only_with_more_than_one_replica(replicas: int, pdb: bool) -> None:
    parsed, plan = _build("md", _with(replicas=replicas))
    objects = build_all(parsed, plan, owner=OWNER)
    kinds = [o["kind"] for o in objects]
    assert kinds == ["Deployment", "Service"] + (["PodDisruptionBudget"] if pdb else [])
    assert objects[0]["spec"]["replicas"] == replicas
    if pdb:
        assert objects[2]["spec"] == {
            "maxUnavailable": 1,
            "selector": objects[0]["spec"]["selector"],
        }


def test_region_and_gpu_node_affinity() -> None:
    _, _, dep = _deployment("example-gpt-oss-120b")
    terms = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchExpressions": [
                {
                    "key": "nvidia.com/gpu.product",
                    "operator": "In",
                    "values": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"],
                },
                {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["eu-west-1"]},
            ]
        }
    ]


def test_user_node_affinity_terms_are_anded_with_ours() -> None:
    parsed, _, dep = _deployment("user-affinity")
    affinity = dep["spec"]["template"]["spec"]["affinity"]
    user = parsed.scheduling.affinity
    assert user is not None
    ours = [
        {
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"],
        },
        {
            "key": "topology.kubernetes.io/region",
            "operator": "In",
            "values": ["eu-central-1", "eu-west-1"],
        },
    ]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    user_terms = user["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == len(user_terms) == 2
    for term, user_term in zip(terms, user_terms, strict=True):
        assert term["matchExpressions"] == [*user_term["matchExpressions"], *ours]
        assert term.get("matchFields") == user_term.get("matchFields")
    assert (
        affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        == user["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    )
    assert affinity["podAntiAffinity"] == user["podAntiAffinity"]
    # The user's spec is not modified by the merge.
    assert len(user_terms[0]["matchExpressions"]) == 1


def test_user_tolerations_node_selector_and_priority() -> None:
    parsed, _, dep = _deployment("user-tolerations")
    pod = dep["spec"]["template"]["spec"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        *[dict(t) for t in parsed.scheduling.tolerations],
    ]
    assert pod["nodeSelector"] == {"pool": "llm"}
    assert pod["priorityClassName"] == "llm-critical"


def test_amd_gpus_use_their_resource_and_label() -> None:
    _, plan, dep = _deployment("trust-remote-code-amd")
    pod = dep["spec"]["template"]["spec"]
    assert _container(dep)["resources"]["limits"]["amd.com/gpu"] == str(plan.gpus_per_replica)
    assert "nvidia.com/gpu" not in _container(dep)["resources"]["limits"]
    expr = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    assert expr["key"] == "amd.com/gpu.product-name"
    assert pod["tolerations"][0]["key"] == "amd.com/gpu"
    assert _launch(dep).trust_remote_code is True


def test_sources_become_volumes_and_model_arguments() -> None:
    _, _, pvc = _deployment("example-gpt-oss-120b")
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pvc["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in _container(pvc)[
        "volumeMounts"
    ]
    assert (_launch(pvc).model, _launch(pvc).verify_local_weights) == (
        "/models/openai/gpt-oss-120b",
        True,
    )
    _, _, image = _deployment("image-source")
    assert {
        "name": "model",
        "image": {"reference": "registry.internal/models/gpt-oss-20b:1", "pullPolicy": "Always"},
    } in image["spec"]["template"]["spec"]["volumes"]
    assert _launch(image).model == "/models/weights"
    _, _, s3 = _deployment("s3-credentials")
    launch = _launch(s3)
    assert (launch.model, launch.load_format) == (
        "s3://models/openai/gpt-oss-20b",
        "runai_streamer",
    )
    assert launch.verify_local_weights is False
    assert launch.sha256 == {"config.json": "0" * 64}
    assert "model" not in {v["name"] for v in s3["spec"]["template"]["spec"]["volumes"]}
    env = _env(s3)
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
    assert env["AWS_REGION"]["value"] == "us-east-1"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": "minio-creds", "key": key}},
        }
    _, _, hub = _deployment("huggingface-online")
    launch = _launch(hub)
    assert (launch.model, launch.revision) == (
        "openai/gpt-oss-20b",
        "6cee5e81ee83917806bbde320786a8fb61efebee",
    )
    env = _env(hub)
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}
    assert "HF_HUB_OFFLINE" not in env
    assert "TRANSFORMERS_OFFLINE" not in env
    assert env["HF_HUB_ENABLE_HF_TRANSFER"]["value"] == "1"


def test_runtime_overrides() -> None:
    _, plan, dep = _deployment("image-source")
    container = _container(dep)
    pod = dep["spec"]["template"]["spec"]
    assert container["image"] == "registry.internal/gantry-runtime:0.1.0"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["sizeLimit"] == "512Mi"
    assert container["resources"]["requests"]["cpu"] == "12"
    assert container["resources"]["limits"]["cpu"] == "16"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(plan.gpus_per_replica)


def test_startup_probe_covers_a_slow_load() -> None:
    """160 GB on one B200 at 500 MiB/s: 120 + 305 s expected, three times that allowed."""
    spec = _with(
        model={
            "custom": {
                "name": "big",
                "repo": "example/big",
                "architecture": "LlamaForCausalLM",
                "numLayers": 80,
                "hiddenSize": 8192,
                "numAttentionHeads": 64,
                "numKvHeads": 8,
                "headDim": 128,
                "maxContext": 8192,
                "weightBytes": 160_000_000_000,
                "weightDtype": "fp8",
            }
        },
        gpu={"type": "B200", "count": 1},
    )
    parsed, plan = _build("big", spec)
    assert plan.expected_load_seconds == 120 + 160_000_000_000 // (500 * 1024**2) == 425
    container = _container(build_deployment(parsed, plan, owner=OWNER))
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3 * 425 > 600


@pytest.mark.parametrize(
    "flag", ["tensor-parallel-size", "pipeline-parallel-size", "max-model-len"]
)
@pytest.mark.parametrize("planned", [False, True])
def test_engine_args_the_plan_owns_are_refused_at_parse(flag: str, planned: bool) -> None:
    """Even the value the plan would choose: the spec fields exist for these, and a builder
    never has to decide whether engineArgs contradict the plan."""
    value = {"tensor-parallel-size": "1", "pipeline-parallel-size": "1"}.get(flag, "131072")
    with pytest.raises(SpecError) as info:
        _build("md", _with(serving={"engineArgs": {flag: value if planned else "4"}}))
    assert info.value.field_path == f"spec.serving.engineArgs.{flag}"
    assert "protected" in str(info.value)


def test_tensor_parallel_4_in_underscore_spelling_when_the_plan_says_2() -> None:
    name, spec = ALL_CASES["example-gpt-oss-120b"]
    spec = copy.deepcopy(spec)
    spec["serving"]["engineArgs"]["tensor_parallel_size"] = "4"
    with pytest.raises(SpecError) as info:
        _build(name, spec)
    assert info.value.field_path == "spec.serving.engineArgs.tensor_parallel_size"
    assert "spec.parallelism.tensor" in str(info.value)


def test_boolean_engine_args_become_switches() -> None:
    args = {
        "enable-prefix-caching": "false",
        "enforce-eager": "true",
        "async-scheduling": "False",
        "disable-log-stats": "TRUE",  # a bare store_true flag
        "headless": "false",  # protected, even at its default
        "seed": "7",
    }
    with pytest.raises(SpecError, match=r"engineArgs\.headless: .*protected"):
        _build("md", _with(serving={"engineArgs": args}))
    del args["headless"]
    parsed, plan = _build("md", _with(serving={"engineArgs": args}))
    launch = launch_spec(parsed, plan)
    assert launch.extra_args == (
        ("--no-async-scheduling", None),
        ("--disable-log-stats", None),
        ("--no-enable-prefix-caching", None),
        ("--enforce-eager", None),
        ("--seed", "7"),
    )
    argv = vllm_argv(launch)
    assert argv[-6:] == [
        "--no-async-scheduling",
        "--disable-log-stats",
        "--no-enable-prefix-caching",
        "--enforce-eager",
        "--seed",
        "7",
    ]
    # A store_true flag set to false is its default: it is left out, never --no-<flag>.
    parsed, plan = _build("md", _with(serving={"engineArgs": {"disable-log-stats": "false"}}))
    assert launch_spec(parsed, plan).extra_args == ()


def test_engine_arg_values_that_take_a_value_stay_values() -> None:
    """A flag that takes a value keeps "true" as its value instead of becoming a switch."""
    parsed, plan = _build("md", _with(serving={"engineArgs": {"tool-server": "true"}}))
    assert launch_spec(parsed, plan).extra_args == (("--tool-server", "true"),)


def test_engine_args_override_catalog_parsers() -> None:
    parsed, plan = _build(
        "md",
        _with(serving={"engineArgs": {"tool-call-parser": "", "reasoning-parser": "custom"}}),
    )
    launch = launch_spec(parsed, plan)
    assert (launch.tool_call_parser, launch.reasoning_parser) == (None, "custom")
    default = launch_spec(*_build("md", _with()))
    assert (default.tool_call_parser, default.reasoning_parser) == ("openai", "openai_gptoss")


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_user_env_cannot_break_offline_residency(name: str) -> None:
    with pytest.raises(SpecError) as info:
        _build("md", _with(serving={"env": [{"name": name, "value": "0"}]}))
    assert info.value.field_path == f"spec.serving.env[{name}]"
    # Repeating Gantry's own value is harmless.
    parsed, plan = _build("md", _with(serving={"env": [{"name": name, "value": "1"}]}))
    assert _env(build_deployment(parsed, plan, owner=OWNER))[name]["value"] == "1"


@pytest.mark.parametrize(
    "name",
    [
        "VLLM_NO_USAGE_STATS",
        "DO_NOT_TRACK",
        ENV_VAR,
        "GANTRY_RUNTIME_MODE",
        "gantry_host",
        "gantry_sim_x",
    ],
)
def test_user_env_cannot_override_privacy_or_the_launch_spec(name: str) -> None:
    """Refused when the spec is parsed: the builders never refuse anything."""
    online = {"residency": {"offline": False}}
    with pytest.raises(SpecError, match=rf"spec\.serving\.env\[{name}\]"):
        _build("md", _with(serving={"env": [{"name": name, "value": "0"}]}, **online))


def test_simulator_knobs_are_the_only_gantry_env_allowed() -> None:
    env = [{"name": "GANTRY_SIM_DECODE_TOKENS_PER_S", "value": "40"}]
    parsed, plan = _build("md", _with(serving={"env": env}))
    assert _env(build_deployment(parsed, plan, owner=OWNER))[env[0]["name"]] == env[0]


def test_user_env_overrides_the_rest() -> None:
    env = [
        {"name": "HF_HUB_OFFLINE", "value": "0"},  # allowed: not offline
        {"name": "HOME", "value": "/tmp"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    parsed, plan = _build("md", _with(residency={"offline": False}, serving={"env": env}))
    launch = launch_spec(parsed, plan)
    built = {e["name"]: e for e in build_env(parsed, launch)}
    assert built["HF_HUB_OFFLINE"] == {"name": "HF_HUB_OFFLINE", "value": "0"}
    assert built["HOME"] == {"name": "HOME", "value": "/tmp"}
    assert built["POD_IP"] == env[2]


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_builders_are_deterministic_and_sorted(case: str) -> None:
    name, spec = ALL_CASES[case]
    first = build_all(*_build(name, spec), owner=OWNER)
    second = build_all(*_build(name, copy.deepcopy(spec)), owner=OWNER)
    assert first == second
    assert yaml.safe_dump_all(first) == yaml.safe_dump_all(second)
    container = _container(first[0])
    names = [e["name"] for e in container["env"]]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for key in ("requests", "limits"):
        assert list(container["resources"][key]) == sorted(container["resources"][key])
    volumes = [v["name"] for v in _templates(first[0])[0]["spec"]["volumes"]]
    assert volumes == sorted(volumes)
    extra = [flag for flag, _ in _launch(first[0]).extra_args]
    assert extra == sorted(extra, key=lambda f: f.removeprefix("--").removeprefix("no-"))


def test_launch_spec_round_trips_through_the_env() -> None:
    parsed, plan, dep = _deployment("expert-parallel")
    assert _launch(dep) == launch_spec(parsed, plan)
    assert _launch(dep).enable_expert_parallel is True
    assert _launch(dep).max_num_seqs == 32  # folded from engineArgs into the plan


def test_endpoint() -> None:
    parsed, _ = _build("md", _with())
    assert manifests.endpoint(parsed) == "http://md.llm.svc:8000/v1"


def _containers(value: object) -> list[object]:
    if isinstance(value, dict):
        return [value, *[c for v in value.values() for c in _containers(v)]]
    if isinstance(value, list):
        return [value, *[c for v in value for c in _containers(v)]]
    return []


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_objects_share_no_mutable_parts(case: str) -> None:
    """No dict or list appears twice (it would render as a YAML alias and alias mutations)."""
    _, _, objects = _objects(case)
    found = _containers(objects)
    assert len({id(c) for c in found}) == len(found)
    assert "&id0" not in yaml.safe_dump_all(objects)
