"""bench/ab.py in --quick mode: the A/B decision rule's three figures, as JSON lines.

--quick runs few simulated tests: it proves the script drives the rule the A/B sweep applies
and prints every figure with the keys `make bench` reads, not that the goals are met.
"""

from __future__ import annotations

import pytest

from tests.bench.helpers import quick_figures

pytestmark = pytest.mark.bench

FIGURES = ["ab_equal_winner_share", "ab_correct_share", "ab_decision_requests"]


def test_the_ab_bench_prints_its_figures_and_decides_a_clear_gap() -> None:
    from bench.ab import ALPHA, MAX_REQUESTS

    lines = quick_figures("ab.py", FIGURES, timeout=180)
    for line in lines.values():
        assert line["alpha"] == ALPHA and line["tests_per_scenario"] == 20
    # Every test ended one way or the other (none ran into the cap), and the counts add up.
    for name in ("ab_equal_winner_share", "ab_correct_share"):
        decisions = lines[name]["decisions"]
        assert sum(decisions.values()) == 20 and "undecided" not in decisions
    requests = lines["ab_decision_requests"]
    assert requests["repetitions"] == 20 and 0 < requests["median"] < MAX_REQUESTS
