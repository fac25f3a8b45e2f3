"""bench/ab.py in --quick mode: the A/B decision rule's three figures, as JSON lines.

--quick runs few simulated tests: it proves the script drives the rule the A/B sweep applies
and prints every figure with the keys `make bench` reads, not that the goals are met.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
FIGURES = ["ab_equal_winner_share", "ab_correct_share", "ab_decision_requests"]
FIGURE_KEYS = {
    "figure", "unit", "median", "min", "max", "repetitions", "baseline", "ratio", "goal", "meets_goal",
    "machine", "date",
}  # fmt: skip


def test_the_ab_bench_prints_its_figures_and_decides_a_clear_gap() -> None:
    from bench.ab import ALPHA, MAX_REQUESTS
    from bench.common import run_bounded

    code, out, err = run_bounded(
        [sys.executable, str(ROOT / "bench" / "ab.py"), "--quick"], timeout=180, env={**os.environ}
    )

    assert code == 0, err[-3000:]
    lines = {line["figure"]: line for line in map(json.loads, out.splitlines()) if line}
    assert list(lines) == FIGURES, err[-2000:]
    for line in lines.values():
        assert set(line) >= FIGURE_KEYS, f"{line['figure']} lacks {FIGURE_KEYS - set(line)}"
        assert line["quick"] is True and line["meets_goal"] is None
        assert line["alpha"] == ALPHA and line["tests_per_scenario"] == 20
    # Every test ended one way or the other (none ran into the cap), and the counts add up.
    for name in ("ab_equal_winner_share", "ab_correct_share"):
        decisions = lines[name]["decisions"]
        assert sum(decisions.values()) == 20 and "undecided" not in decisions
    requests = lines["ab_decision_requests"]
    assert requests["repetitions"] == 20 and 0 < requests["median"] < MAX_REQUESTS
