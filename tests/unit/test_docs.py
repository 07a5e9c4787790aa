"""The generated tables in the docs match what `gantry plan` prints today."""

from __future__ import annotations

from pathlib import Path

import pytest

from hack import docblocks


@pytest.mark.parametrize("path", docblocks.files(), ids=lambda p: p.name)
def test_generated_blocks_are_current(path: Path) -> None:
    text = path.read_text()
    assert text == docblocks.regenerate(text), (
        f"{path} is out of date with the planner: run `python -m hack.docblocks`"
    )


def test_planner_doc_has_the_worked_tables() -> None:
    text = (docblocks.ROOT / "docs" / "planner.md").read_text()
    blocks = [m.group(2) for m in docblocks.BLOCK.finditer(text)]
    assert "gantry plan gpt-oss-120b --gpu all --context 131072 --markdown" in blocks
    assert "gantry plan gpt-oss-20b --gpu all --context 131072 --markdown" in blocks
    assert "gantry plan all --gpu H100-80GB --markdown" in blocks
    assert "gantry plan all --gpu H200 --markdown" in blocks
