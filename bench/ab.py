"""Figure 10 — A/B decisions: winners declared between equal versions, right calls on a 3-point gap.

What is measured is the decision rule the A/B sweep applies (control/canary/ab.py →
`paired_test` in control/canary/sequential.py: pairs of labelled answers, Robbins' mixture
confidence sequence on the discordant pairs), over many simulated A/B tests: each arm's answers
are right with its accuracy, labels come back for every answer, traffic is split equally at
RATE_RPS, and the sweep looks every SWEEP_SECONDS — as the real sweep does. A test that has not
decided after MAX_REQUESTS counts as undecided. The end-to-end path (real checkpoints, requests
through /serve/, the sweep promoting the winner) is what tests/policies/test_ab_test.py runs;
here the rule's error rates need hundreds of tests of thousands of requests each.

Scenarios: two equal versions (accuracy 0.95 each) — the share that gets a winner declared
(goal: <= alpha); a 3-point gap (0.93 against 0.96) — the share decided for the better one
(goal: >= 0.95); and the requests (both arms) each took to its decision. Policy: alpha 0.05,
margin 0.02 (a difference under 2 points is no difference).
"""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Goal, base_parser, emit, emit_failure, figure, note

FIGURES = ("ab_equal_winner_share", "ab_correct_share", "ab_decision_requests")
ALPHA = 0.05
MARGIN = 0.02
RATE_RPS = 20
SWEEP_SECONDS = 5
MIN_REQUESTS = 50
MAX_REQUESTS = 60_000
EQUAL = (0.95, 0.95)
GAP = (0.93, 0.96)


def run_test(pa: float, pb: float, rng: random.Random) -> tuple[str, int]:
    """Run one simulated A/B test to its decision; return (decision, requests served by both arms)."""
    from control.canary.sequential import paired_test

    per_look = RATE_RPS * SWEEP_SECONDS // 2  # each arm's share of a sweep interval
    pairs = a_only = b_only = 0
    while 2 * pairs < MAX_REQUESTS:
        for _ in range(per_look):
            right_a, right_b = rng.random() < pa, rng.random() < pb
            a_only += right_a and not right_b
            b_only += right_b and not right_a
        pairs += per_look
        if pairs < MIN_REQUESTS:
            continue
        result = paired_test(pairs=pairs, a_only=a_only, b_only=b_only, alpha=ALPHA, margin=MARGIN)
        if result.decision != "continue":
            return result.decision, 2 * pairs
    return "undecided", MAX_REQUESTS


def main() -> None:
    """Run N simulated A/B tests per scenario; print the three figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=None, help="A/B tests per scenario (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.n or (20 if args.quick else 400)
    rng = random.Random(args.seed)
    note(f"ab: {n} simulated A/B tests of equal versions {EQUAL}, {n} with a gap {GAP}")
    equal = [run_test(*EQUAL, rng) for _ in range(n)]
    gap = [run_test(*GAP, rng) for _ in range(n)]
    winners = [d for d, _ in equal if d in ("a_better", "b_better")]
    right = [d for d, _ in gap if d == "b_better"]
    common: dict[str, Any] = {
        "alpha": ALPHA,
        "margin": MARGIN,
        "tests_per_scenario": n,
        "sweep_every_requests": RATE_RPS * SWEEP_SECONDS,
    }
    emit(
        figure(
            name="ab_equal_winner_share",
            unit="share of A/B tests of two equal versions that declared a winner",
            samples=[len(winners) / n],
            goal=Goal(f"<= alpha ({ALPHA})", median_max=ALPHA),
            higher_is_better=False,
            extra={
                **common,
                "accuracies": EQUAL,
                "decisions": {d: sum(1 for x, _ in equal if x == d) for d in sorted({x for x, _ in equal})},
                "median_requests_to_no_winner": statistics.median(r for d, r in equal if d == "equivalent")
                if any(d == "equivalent" for d, _ in equal)
                else None,
            },
        )
    )
    emit(
        figure(
            name="ab_correct_share",
            unit="share of A/B tests with a 3-point accuracy gap that promoted the better version",
            samples=[len(right) / n],
            goal=Goal(">= 0.95", median_min=0.95),
            higher_is_better=True,
            extra={
                **common,
                "accuracies": GAP,
                "decisions": {d: sum(1 for x, _ in gap if x == d) for d in sorted({x for x, _ in gap})},
            },
        )
    )
    emit(
        figure(
            name="ab_decision_requests",
            unit="requests (both arms) until a 3-point gap was decided",
            samples=[r for _, r in gap],
            goal=Goal("reported, not judged"),
            higher_is_better=False,
            extra={**common, "equal_versions_median": statistics.median(r for _, r in equal)},
        )
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure(FIGURES, exc)
        raise
