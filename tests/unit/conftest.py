"""Shared fixtures of the operator unit tests: repository paths, the CRD, the examples, and a
minimal valid ModelDeployment spec to vary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "deploy" / "crds" / "gantry.dev_modeldeployments.yaml"
EXAMPLES = REPO / "deploy" / "examples"

#: The smallest spec the CRD accepts: a preset, a source and a GPU type.
MINIMAL_SPEC: dict[str, Any] = {
    "model": {"preset": "gpt-oss-20b"},
    "source": {"pvc": {"claimName": "models"}},
    "gpu": {"type": "H100-80GB"},
}


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return data


@pytest.fixture(scope="session")
def crd_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The openAPIV3Schema of the only version."""
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.fixture(scope="session")
def examples() -> dict[str, dict[str, Any]]:
    """Every ModelDeployment in deploy/examples, by metadata.name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ModelDeployment":
                found[doc["metadata"]["name"]] = doc
    return found


@pytest.fixture
def spec_dict() -> dict[str, Any]:
    """A fresh copy of MINIMAL_SPEC for a test to modify."""
    return copy.deepcopy(MINIMAL_SPEC)
