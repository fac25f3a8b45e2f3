"""The sequential tests' stated error rates hold on simulated streams (fixed seeds, looked at often)."""

from __future__ import annotations

import random

import pytest

from control.canary.sequential import mixture_interval, paired_comparison, sprt_rate

LOOK_EVERY = 10  # a sweep looks at the counts every few requests, not after each one


def run_sprt(rate: float, *, seed: int, p0: float = 0.05, p1: float = 0.10, alpha: float = 0.05,
             beta: float = 0.05, limit: int = 5000) -> tuple[str, int]:  # fmt: skip
    """Stream Bernoulli(rate) failures into the SPRT, looking every LOOK_EVERY; return (decision, n)."""
    rng = random.Random(seed)
    failures = 0
    for n in range(1, limit + 1):
        failures += rng.random() < rate
        if n % LOOK_EVERY == 0:
            result = sprt_rate(failures=failures, n=n, p0=p0, p1=p1, alpha=alpha, beta=beta)
            if result.decision != "continue":
                return result.decision, n
    return "continue", limit


def test_a_version_at_the_acceptable_rate_is_called_worse_at_most_alpha_of_the_time() -> None:
    decisions = [run_sprt(0.05, seed=seed)[0] for seed in range(400)]
    # alpha = 5%: 20 of 400 expected at most; the bound is one-sided, so allow sampling noise.
    assert decisions.count("worse") <= 30
    assert "continue" not in decisions


def test_a_version_at_the_bad_rate_is_passed_at_most_beta_of_the_time() -> None:
    decisions = [run_sprt(0.10, seed=seed)[0] for seed in range(400)]
    assert decisions.count("not_worse") <= 30


def test_clearly_good_and_clearly_bad_versions_are_decided_right_and_fast() -> None:
    good = [run_sprt(0.01, seed=seed) for seed in range(100)]
    bad = [run_sprt(0.30, seed=seed) for seed in range(100)]
    assert all(decision == "not_worse" for decision, _ in good)
    assert all(decision == "worse" for decision, _ in bad)
    # A 30% failure rate needs a few dozen requests, not hundreds.
    assert sorted(n for _, n in bad)[50] <= 40


def test_sprt_says_continue_while_the_evidence_is_thin() -> None:
    result = sprt_rate(failures=1, n=10, p0=0.05, p1=0.1, alpha=0.01, beta=0.01)
    assert result.decision == "continue"
    assert result.accept_at < result.llr < result.reject_at


@pytest.mark.parametrize(
    "kwargs",
    [
        {"p0": 0.1, "p1": 0.05, "alpha": 0.05, "beta": 0.05},
        {"p0": 0.05, "p1": 0.1, "alpha": 0.0, "beta": 0.05},
        {"p0": 0.05, "p1": 0.1, "alpha": 0.05, "beta": 0.6},
    ],
)
def test_sprt_refuses_parameters_that_state_no_test(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        sprt_rate(failures=0, n=10, **kwargs)


def test_the_mixture_interval_covers_the_true_rate_at_every_look_at_least_1_minus_alpha() -> None:
    misses = 0
    for seed in range(200):
        rng = random.Random(seed)
        successes = 0
        for n in range(1, 1001):
            successes += rng.random() < 0.3
            if n % LOOK_EVERY == 0:
                low, high = mixture_interval(successes=successes, n=n, alpha=0.1)
                if not low < 0.3 < high:
                    misses += 1
                    break
    assert misses <= 20 + 8  # alpha = 10% of 200, over all 100 looks of each stream at once


def test_the_mixture_interval_narrows_as_data_comes() -> None:
    wide = mixture_interval(successes=5, n=10, alpha=0.05)
    narrow = mixture_interval(successes=500, n=1000, alpha=0.05)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


def run_ab(pa: float, pb: float, *, seed: int, limit: int = 20000) -> tuple[str, int]:
    rng = random.Random(seed)
    a: list[bool] = []
    b: list[bool] = []
    while len(a) < limit:
        for _ in range(100):
            a.append(rng.random() < pa)
            b.append(rng.random() < pb)
        result = paired_comparison(a=a, b=b, alpha=0.05, margin=0.02)
        if result.decision != "continue":
            return result.decision, len(a)
    return "continue", limit


def test_equal_versions_get_a_winner_at_most_alpha_of_the_time() -> None:
    decisions = [run_ab(0.9, 0.9, seed=seed)[0] for seed in range(200)]
    assert decisions.count("a_better") + decisions.count("b_better") <= 10 + 6
    assert decisions.count("equivalent") >= 180


def test_a_three_point_difference_picks_the_better_version() -> None:
    decisions = [run_ab(0.93, 0.96, seed=seed)[0] for seed in range(60)]
    assert decisions.count("b_better") >= 57
    assert "a_better" not in decisions


def test_the_paired_effect_is_the_difference_of_rates_on_the_pairs() -> None:
    result = paired_comparison(a=[True] * 8 + [False] * 2, b=[True] * 6 + [False] * 4, alpha=0.05, margin=0.1)
    assert (result.pairs, result.discordant, result.a_only) == (10, 2, 2)
    assert result.effect == pytest.approx(0.2)
    assert result.low < result.effect <= result.high
    assert result.decision == "continue"
