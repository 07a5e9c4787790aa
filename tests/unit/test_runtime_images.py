"""The Dockerfiles (which cannot be built here) stay in step with the code: version pin,
entrypoints, non-root users, and sources that exist and pass the .dockerignore allowlist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gantry_runtime.versions import VLLM_VERSION

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_DOCKERFILE = ROOT / "runtime" / "Dockerfile"
OPERATOR_DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def only(path: Path, keyword: str) -> str:
    found = [rest for kw, rest in instructions(path) if kw == keyword]
    assert found, f"{path} has no {keyword}"
    return found[-1]


def base_image(path: Path) -> str:
    """The final stage's base image, with build args (defaults before FROM) substituted."""
    args: dict[str, str] = {}
    image = ""
    for keyword, rest in instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif keyword == "FROM":
            image = rest.split()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], image)


def test_runtime_base_image_is_the_pinned_vllm() -> None:
    assert base_image(RUNTIME_DOCKERFILE) == f"vllm/vllm-openai:v{VLLM_VERSION}"


def test_runtime_image_entrypoint_user_and_cache() -> None:
    assert json.loads(only(RUNTIME_DOCKERFILE, "ENTRYPOINT")) == ["gantry-runtime"]
    assert json.loads(only(RUNTIME_DOCKERFILE, "CMD")) == ["serve"]
    assert only(RUNTIME_DOCKERFILE, "USER") == "1000:0"
    env = only(RUNTIME_DOCKERFILE, "ENV")
    for setting in ("HOME=/var/cache/gantry", "HF_HOME=/var/cache/gantry/", "PYTHONPATH=/opt/"):
        assert setting in env


def test_operator_image() -> None:
    assert base_image(OPERATOR_DOCKERFILE) == "python:3.11-slim"
    assert json.loads(only(OPERATOR_DOCKERFILE, "ENTRYPOINT")) == ["gantry-operator"]
    assert only(OPERATOR_DOCKERFILE, "USER") == "65532:65532"


@pytest.mark.parametrize("dockerfile", [RUNTIME_DOCKERFILE, OPERATOR_DOCKERFILE], ids=str)
def test_copied_sources_exist_and_are_not_docker_ignored(dockerfile: Path) -> None:
    allowed = {
        line[1:].strip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = [
        source
        for keyword, rest in instructions(dockerfile)
        if keyword == "COPY" and "--from=" not in rest
        for source in rest.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile} copies {source}, which does not exist"
        assert source.split("/")[0] in allowed, f".dockerignore leaves out {source}"
