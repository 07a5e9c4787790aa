"""Names, labels and owner references shared by every builder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gantry_operator.spec import API_VERSION, KIND, ModelDeploymentSpec

MANAGED_BY = "gantry"
MD_LABEL = "gantry.dev/model-deployment"
COMPONENT_RUNTIME = "runtime"
#: On the runtime pods that answer requests (every pod of a single-node replica; a multi-node
#: group's leader only): what InferencePools and gateways select.
SERVING_LABEL = "gantry.dev/serving"


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns the children (garbage collection deletes them with it)."""

    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector_labels(spec: ModelDeploymentSpec) -> dict[str, str]:
    return {MD_LABEL: spec.name, "app.kubernetes.io/component": COMPONENT_RUNTIME}


def selector_string(spec: ModelDeploymentSpec) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(spec).items()))


def labels(spec: ModelDeploymentSpec) -> dict[str, str]:
    return dict(
        sorted(
            {
                "app.kubernetes.io/name": "gantry-runtime",
                "app.kubernetes.io/instance": spec.name,
                "app.kubernetes.io/managed-by": MANAGED_BY,
                **selector_labels(spec),
            }.items()
        )
    )


def metadata(spec: ModelDeploymentSpec, owner: Owner, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or spec.name,
        "namespace": spec.namespace,
        "labels": labels(spec),
        "ownerReferences": [owner.reference()],
    }
