"""Copy the canonical deploy/ files into the Helm chart (``charts/gantry/files/``) and the CRD
into the operator package (``operator/gantry_operator/crds/``).

The chart renders the ModelDeployment CRD, the ServiceMonitor, PodMonitor, PrometheusRule and
the Grafana dashboards from copies of the one canonical file each (Helm reads only files inside
the chart directory, so it cannot point at ``deploy/``). ``python -m hack.sync_chart``
rewrites the copies and removes copies whose source is gone; ``--check`` only reports the
differences (exit 1), as ``tests/unit/test_chart.py`` does.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "gantry"

#: (canonical directory, glob, copy directory): every match is copied under its own name.
SOURCES: tuple[tuple[Path, str, Path], ...] = (
    (ROOT / "deploy" / "crds", "*.yaml", CHART / "files" / "crds"),
    # The operator package checks specs against the same CRD (gantry_operator/schema.py).
    (ROOT / "deploy" / "crds", "*.yaml", ROOT / "operator" / "gantry_operator" / "crds"),
    (ROOT / "deploy" / "monitoring", "*.yaml", CHART / "files" / "monitoring"),
    (
        ROOT / "deploy" / "monitoring" / "dashboards",
        "*.json",
        CHART / "files" / "monitoring" / "dashboards",
    ),
)


def pairs() -> list[tuple[Path, Path]]:
    """(canonical file, chart copy) for every canonical file, sorted."""
    found = []
    for source_dir, pattern, copy_dir in SOURCES:
        for source in sorted(source_dir.glob(pattern)):
            if source.is_file():
                found.append((source, copy_dir / source.name))
    return found


def strays() -> list[Path]:
    """Copies in the chart whose canonical file no longer exists."""
    wanted = {copy for _, copy in pairs()}
    found = []
    for _, pattern, copy_dir in SOURCES:
        found += [p for p in sorted(copy_dir.glob(pattern)) if p.is_file() and p not in wanted]
    return found


def differences() -> list[str]:
    """What ``sync`` would change, one line each (empty: the chart is in sync)."""
    problems = []
    for source, copy in pairs():
        what, canonical = copy.relative_to(ROOT), source.relative_to(ROOT)
        if not copy.exists():
            problems.append(f"missing {what} (copy of {canonical})")
        elif copy.read_bytes() != source.read_bytes():
            problems.append(f"{what} differs from {canonical}")
    problems += [f"stray {p.relative_to(ROOT)} (its canonical file is gone)" for p in strays()]
    return problems


def sync() -> list[str]:
    """Make the chart's copies identical to the canonical files; returns what changed."""
    changed = differences()
    for source, copy in pairs():
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
    for stray in strays():
        stray.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run `python -m hack.sync_chart` (make sync-chart)", file=sys.stderr)
        return 1 if problems else 0
    for line in sync():
        print(f"synced: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
