"""The stand-in weight volume the examples mount: a PV pre-bound to a ``models`` PVC."""

from __future__ import annotations

import yaml


def models_volume(namespace: str) -> str:
    """YAML of PV ``models-<namespace>`` and PVC ``<namespace>/models`` bound to each other."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"models-{namespace}"},
        "spec": {
            "capacity": {"storage": "500Gi"},
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "hostPath": {"path": "/models"},
            "claimRef": {"namespace": namespace, "name": "models"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": namespace},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": f"models-{namespace}",
            "resources": {"requests": {"storage": "500Gi"}},
        },
    }
    return yaml.safe_dump_all([pv, pvc])
