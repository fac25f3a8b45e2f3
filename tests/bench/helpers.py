"""What the bench smoke tests share: where the repository is, and running a script's --quick mode."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The keys `make bench` (bench/report.py) reads from every figure line.
FIGURE_KEYS = {
    "figure", "unit", "median", "min", "max", "repetitions", "baseline", "ratio", "goal", "meets_goal",
    "machine", "date",
}  # fmt: skip


def quick_figures(script: str, figures: list[str], *, timeout: int) -> dict[str, dict[str, Any]]:
    """Run bench/<script> --quick; check it printed exactly these figures, each complete; return them by name.

    --quick proves the script still drives the real path and prints what `make bench` reads;
    its numbers judge no goal (meets_goal is null).
    """
    from bench.common import run_bounded

    code, out, err = run_bounded(
        [sys.executable, str(ROOT / "bench" / script), "--quick"], timeout=timeout, env={**os.environ}
    )
    assert code == 0, err[-3000:]
    lines = {line["figure"]: line for line in map(json.loads, out.splitlines()) if line}
    assert list(lines) == figures, err[-2000:]
    for line in lines.values():
        assert set(line) >= FIGURE_KEYS, f"{line['figure']} lacks {FIGURE_KEYS - set(line)}"
        assert line["quick"] is True and line["meets_goal"] is None
    return lines
