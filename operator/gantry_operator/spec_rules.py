"""Rules on the pod-facing parts of a spec that the CRD's CEL rules and patterns enforce at the
API server, repeated here so the CLI and the operator refuse the same specs with a message naming
the field and the fix (and so builders never have to refuse anything).

Pure: no Kubernetes client, no kopf. Each function raises :class:`RuleError` (spec.py turns it
into a SpecError); the constants are shared with the builders and the tests that compare them
with the CRD.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Environment Gantry sets in every runtime pod: usage reporting off, nothing leaves the cluster.
PRIVACY_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
#: Environment Gantry sets while a ModelDeployment runs offline.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
#: Gantry's own runtime variables (launch spec, runtime mode, bind address, termination log).
RESERVED_ENV_PREFIX = "GANTRY_"
#: Except the simulator's knobs: only the simulator reads them, and only GANTRY_RUNTIME_MODE
#: (reserved) selects the simulator.
SIMULATOR_ENV_PREFIX = "GANTRY_SIM_"
#: Kubernetes' environment variable name rule (any printable ASCII but '=' since 1.34 is more
#: lenient; the conventional form is what vLLM and Python read).
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
MAX_ENV = 12
MAX_ENV_NAME_LENGTH = 128
MAX_ENV_VALUE_LENGTH = 256

#: Resource names that are accelerators: Gantry alone sets them, from the plan. Prefixes cover
#: every vendor's device plugins (NVIDIA full GPUs, MIG profiles such as nvidia.com/mig-1g.10gb,
#: time-sliced nvidia.com/gpu.shared, vGPU; AMD; Intel GPUs (gpu.intel.com/i915, /xe); Habana
#: Gaudi; AWS Neuron; Google TPUs); any name containing "gpu" is refused as well.
ACCELERATOR_PREFIXES = (
    "nvidia.com/",
    "amd.com/",
    "gpu.intel.com/",
    "habana.ai/",
    "aws.amazon.com/neuron",
    "google.com/tpu",
    "cloud-tpus.google.com/",
)
MAX_RESOURCES = 8

#: Kubernetes resource.Quantity, unsigned (requests and limits cannot be negative).
QUANTITY = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY_PATTERN = re.compile(QUANTITY)
SHM_SIZE = r"^[0-9]{1,6}(Mi|Gi)$"

#: A label key: optional DNS-subdomain prefix and '/', then a name of at most 63 characters.
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEY_PATTERN = re.compile(LABEL_KEY)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = re.compile(LABEL_VALUE)
#: Kubernetes allows 316 (253 prefix + '/' + 63 name); the CRD caps keys at 128 to bound specs.
MAX_LABEL_KEY_LENGTH = 128
MAX_NODE_SELECTOR = 16
MAX_TOLERATIONS = 16
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class RuleError(ValueError):
    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path


def is_accelerator(resource: str) -> bool:
    name = resource.lower()
    return "gpu" in name or name.startswith(ACCELERATOR_PREFIXES)


def check_resources(field: str, resources: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """CPU/memory-style requests or limits: no accelerators, every value a quantity."""
    if len(resources) > MAX_RESOURCES:
        raise RuleError(field, f"has {len(resources)} entries; at most {MAX_RESOURCES}")
    out = []
    for name, raw in sorted(resources.items(), key=lambda kv: str(kv[0])):
        where = f"{field}.{name}"
        if is_accelerator(str(name)):
            raise RuleError(
                where,
                "accelerators cannot be requested here; Gantry sets the GPUs from the plan "
                "(use spec.gpu.type and spec.gpu.count)",
            )
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise RuleError(where, "must be a quantity such as 8, 500m or 64Gi")
        value = str(raw)
        if isinstance(raw, int):
            if raw < 0:
                raise RuleError(where, f"{raw} is negative; use a quantity such as 8 or 64Gi")
        elif not QUANTITY_PATTERN.match(value):
            raise RuleError(
                where, f"{value[:40]!r} is not a Kubernetes quantity; use e.g. 8, 500m or 64Gi"
            )
        out.append((str(name), value))
    return tuple(out)


def check_shm_size(field: str, value: str) -> None:
    if not re.match(SHM_SIZE, value):
        raise RuleError(field, f"{value!r} is not valid: use a size in Mi or Gi, e.g. 16Gi")


def check_env(
    field: str, items: Sequence[Mapping[str, Any]], *, offline: bool
) -> tuple[Mapping[str, Any], ...]:
    """User env, sorted by name: never Gantry's own variables, never a residency or privacy
    setting other than Gantry's value."""
    if len(items) > MAX_ENV:
        raise RuleError(field, f"has {len(items)} entries; at most {MAX_ENV}")
    fixed = dict(PRIVACY_ENV)
    if offline:
        fixed |= OFFLINE_ENV
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise RuleError(field, "every entry needs a name (a string)")
        name: str = item["name"]
        where = f"{field}[{name}]"
        if not name or len(name) > MAX_ENV_NAME_LENGTH or not ENV_NAME.match(name):
            raise RuleError(
                where, "is not a valid variable name: letters, digits, '_', '-' and '.'"
            )
        if name in seen:
            raise RuleError(where, "is set twice; keep one entry")
        seen.add(name)
        value = item.get("value")
        if value is not None and (not isinstance(value, str) or len(value) > MAX_ENV_VALUE_LENGTH):
            raise RuleError(where, f"value must be a string of at most {MAX_ENV_VALUE_LENGTH}")
        if name.upper().startswith(RESERVED_ENV_PREFIX) and not name.startswith(
            SIMULATOR_ENV_PREFIX
        ):
            raise RuleError(
                where,
                f"{RESERVED_ENV_PREFIX}* variables are Gantry's own (launch spec, runtime mode); "
                "remove it and use the spec fields instead",
            )
        if name in fixed and (value != fixed[name] or "valueFrom" in item):
            raise RuleError(
                where,
                f"is set to {fixed[name]} by Gantry for the residency policy or privacy "
                "and cannot be overridden; remove it",
            )
    return tuple(sorted(items, key=lambda e: str(e["name"])))


def check_node_selector(field: str, selector: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    if len(selector) > MAX_NODE_SELECTOR:
        raise RuleError(field, f"has {len(selector)} labels; at most {MAX_NODE_SELECTOR}")
    for key, value in selector.items():
        where = f"{field}.{key}"
        if not isinstance(key, str) or len(key) > MAX_LABEL_KEY_LENGTH:
            raise RuleError(where, "is not a label key")
        if not LABEL_KEY_PATTERN.match(key) or len(key.split("/")[0]) > 253:
            raise RuleError(
                where,
                "is not a label key: an optional DNS prefix and '/', then at most 63 letters, "
                "digits, '-', '_' or '.' (e.g. example.com/pool)",
            )
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE_PATTERN.match(value):
            raise RuleError(
                where, "the value is not a label value: at most 63 letters, digits, '-', '_', '.'"
            )
    return tuple(sorted((str(k), str(v)) for k, v in selector.items()))


def check_tolerations(
    field: str, tolerations: Sequence[Mapping[str, Any]]
) -> tuple[Mapping[str, Any], ...]:
    if len(tolerations) > MAX_TOLERATIONS:
        raise RuleError(field, f"has {len(tolerations)} entries; at most {MAX_TOLERATIONS}")
    for index, toleration in enumerate(tolerations):
        where = f"{field}[{index}]"
        if not isinstance(toleration, Mapping):
            raise RuleError(where, "must be a toleration object")
        unknown = sorted(
            set(toleration) - {"key", "operator", "value", "effect", "tolerationSeconds"}
        )
        if unknown:
            raise RuleError(where, f"has unknown fields {unknown}")
        operator = toleration.get("operator", "Equal")
        if operator not in TOLERATION_OPERATORS:
            raise RuleError(f"{where}.operator", f"{operator!r} is not valid: use Exists or Equal")
        effect = toleration.get("effect", "")
        if effect and effect not in TOLERATION_EFFECTS:
            raise RuleError(
                f"{where}.effect",
                f"{effect!r} is not valid: use {', '.join(TOLERATION_EFFECTS)} (or leave it out)",
            )
        key = toleration.get("key", "")
        if key and (not isinstance(key, str) or not LABEL_KEY_PATTERN.match(key)):
            raise RuleError(f"{where}.key", "is not a taint key (a label key)")
        if operator == "Exists" and toleration.get("value"):
            raise RuleError(f"{where}.value", "must be empty when operator is Exists")
        if not key and operator != "Exists":
            raise RuleError(f"{where}.operator", "must be Exists when key is empty")
        value = toleration.get("value", "")
        if value and (not isinstance(value, str) or not LABEL_VALUE_PATTERN.match(value)):
            raise RuleError(f"{where}.value", "is not a taint value (a label value)")
        seconds = toleration.get("tolerationSeconds")
        if seconds is not None and effect != "NoExecute":
            raise RuleError(
                f"{where}.tolerationSeconds", "only applies to effect NoExecute; remove it"
            )
    return tuple(tolerations)
