"""Generated blocks in the docs: the output of `gantry` commands, kept true by a test.

A block is written as::

    <!-- gantry plan gpt-oss-120b --gpu all --markdown -->
    ...output...
    <!-- end -->

or, for a terminal transcript (the output in a ``console`` fence after the command)::

    <!-- console: gantry plan gpt-oss-120b -->
    ...
    <!-- end -->

``python -m hack.docblocks`` rewrites every block from the current code; the unit test
``tests/unit/test_docs.py`` fails when a block differs from what the command prints now.
"""

from __future__ import annotations

import io
import re
import shlex
import sys
from pathlib import Path

from gantry_operator.cli import main as gantry

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs", ROOT / "README.md")
BLOCK = re.compile(r"(<!-- (?:console: )?(gantry [^>]*?) -->\n)(.*?)(<!-- end -->)", re.DOTALL)
FENCE = "`" * 3


def render(command: str) -> str:
    out = io.StringIO()
    gantry(shlex.split(command)[1:], out=out)
    return out.getvalue()


def _block(match: re.Match[str]) -> str:
    head, command = match.group(1), match.group(2)
    body = render(command)
    if head.startswith("<!-- console: "):
        body = f"{FENCE}console\n$ {command}\n{body}{FENCE}\n"
    return head + body + match.group(4)


def files() -> list[Path]:
    found: list[Path] = []
    for path in DOCS:
        found.extend(sorted(path.glob("*.md")) if path.is_dir() else [path])
    return [p for p in found if p.is_file()]


def regenerate(text: str) -> str:
    return BLOCK.sub(_block, text)


def main() -> int:
    for path in files():
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            path.write_text(new)
            print(f"updated {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
