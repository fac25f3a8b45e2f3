"""Sequential tests with stated error rates: when a canary is judged and when an A/B test ends.

Pure Python (no Django, no numpy): the canary judge, the A/B judge and the bench import it.

Two tests, both valid however often the data is looked at (each sweep looks again):

1. `sprt_rate` — Wald's sequential probability ratio test (A. Wald, "Sequential Tests of
   Statistical Hypotheses", Ann. Math. Statist. 16, 1945) on a rate of failures (failed
   requests, wrong answers). H0: p = p0 (the worst acceptable rate), H1: p = p1 = p0 + margin.
   After n observations with k failures the log likelihood ratio is

       llr = k·ln(p1/p0) + (n - k)·ln((1 - p1)/(1 - p0)).

   Under any p <= p0 the ratio exp(llr) is a non-negative supermartingale (one step multiplies
   its mean by p·p1/p0 + (1 - p)(1 - p1)/(1 - p0), which is linear in p and equals 1 at p0),
   so by Ville's inequality P(llr ever >= ln(1/alpha)) <= alpha; symmetrically, under any
   p >= p1, P(llr ever <= ln(beta)) <= beta. Hence: "worse" (reject H0) when
   llr >= ln(1/alpha) is wrong for a version at or below p0 with probability <= alpha, and
   "not worse by more than the margin" (accept H0) when llr <= ln(beta) is wrong for a version
   at or above p1 with probability <= beta — at whatever times the counts are looked at.
   (Wald's own bounds ln((1 - beta)/alpha) and ln(beta/(1 - alpha)) are approximations; these
   are the exact, slightly wider ones.)

2. `paired_comparison` — two versions compared on the same traffic, Wald's reduction for two
   proportions (Sequential Analysis, 1947, ch. 6): pair the i-th observation of A with the
   i-th of B; only discordant pairs (one right, the other wrong) carry information, and among
   them A is the right one with probability q = pA(1 - pB) / (pA(1 - pB) + pB(1 - pA)), which is
   exactly 1/2 when pA = pB whatever the common rate. On the discordant pairs we keep Robbins'
   mixture confidence sequence for q (H. Robbins, "Statistical methods related to the law of
   the iterated logarithm", Ann. Math. Statist. 41, 1970; S. Howard et al., "Time-uniform,
   nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49, 2021): with a
   Beta(a, b) prior over q, the mixture likelihood ratio against a fixed q,

       M(q) = B(a + k, b + d - k) / B(a, b) / (q^k (1 - q)^(d - k)),

   is a martingale under q, so {q : M(q) < 1/alpha} holds the true q at every d at once with
   probability >= 1 - alpha. A winner is declared when 1/2 leaves the set (equal versions:
   probability <= alpha); "no difference that matters" when the whole set, turned into a
   difference of rates (difference = D·(2q - 1), D the share of discordant pairs), lies within
   ± margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Decision = Literal["worse", "not_worse", "continue"]
ABDecision = Literal["a_better", "b_better", "equivalent", "continue"]

# The Beta prior of the mixture: uniform. Any fixed prior keeps the guarantee; this one
# favours no effect size.
PRIOR_A = 1.0
PRIOR_B = 1.0


def _check_level(name: str, value: float) -> None:
    if not 0 < value < 0.5:
        raise ValueError(f"{name} must be between 0 and 0.5, got {value}")


@dataclass(frozen=True)
class RateTest:
    """The state of one SPRT on a failure rate: what was seen and what it says."""

    decision: Decision
    n: int
    failures: int
    p0: float
    p1: float
    llr: float
    reject_at: float
    accept_at: float

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able form (rollout history, trigger snapshots)."""
        out = asdict(self)
        out["llr"] = round(self.llr, 4)
        out["reject_at"] = round(self.reject_at, 4)
        out["accept_at"] = round(self.accept_at, 4)
        return out


def sprt_rate(*, failures: int, n: int, p0: float, p1: float, alpha: float, beta: float) -> RateTest:
    """Return Wald's SPRT of a failure rate p0 (acceptable) against p1 > p0 (bad) after n observations.

    "worse": the rate exceeds p0, wrong for a version at or below p0 with probability <= alpha;
    "not_worse": the rate is below p1, wrong for a version at or above p1 with probability <= beta.
    """
    _check_level("alpha", alpha)
    _check_level("beta", beta)
    if not 0 < p0 < p1 < 1:
        raise ValueError(f"need 0 < p0 < p1 < 1, got p0={p0}, p1={p1}")
    if not 0 <= failures <= n:
        raise ValueError(f"need 0 <= failures <= n, got {failures} of {n}")
    llr = failures * math.log(p1 / p0) + (n - failures) * math.log((1 - p1) / (1 - p0))
    reject_at, accept_at = math.log(1 / alpha), math.log(beta)
    decision: Decision = "worse" if llr >= reject_at else "not_worse" if llr <= accept_at else "continue"
    return RateTest(decision, n, failures, p0, p1, llr, reject_at, accept_at)


def _log_mixture(k: int, d: int, q: float) -> float:
    """Return ln M(q): the Beta-mixture likelihood ratio of k successes in d against a fixed q."""
    log_beta = math.lgamma(PRIOR_A + k) + math.lgamma(PRIOR_B + d - k) - math.lgamma(PRIOR_A + PRIOR_B + d)
    log_prior = math.lgamma(PRIOR_A) + math.lgamma(PRIOR_B) - math.lgamma(PRIOR_A + PRIOR_B)
    return log_beta - log_prior - k * math.log(q) - (d - k) * math.log1p(-q)


def mixture_interval(*, successes: int, n: int, alpha: float) -> tuple[float, float]:
    """Return Robbins' Beta-mixture confidence sequence for a proportion: valid at every n at once.

    The set {q : M(q) < 1/alpha} is an interval (ln M is convex in q); its ends are found by
    bisection on either side of the minimum at successes/n.
    """
    _check_level("alpha", alpha)
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    level = math.log(1 / alpha)
    centre = min(max(successes / n, 1e-12), 1 - 1e-12)

    def outside(q: float) -> bool:
        return _log_mixture(successes, n, q) >= level

    lower = 0.0 if not outside(1e-12) else _bisect(outside, 1e-12, centre)
    upper = 1.0 if not outside(1 - 1e-12) else _bisect(lambda q: not outside(q), centre, 1 - 1e-12)
    return lower, upper


def _bisect(is_out_below: Callable[[float], bool], low: float, high: float) -> float:
    """Return the point in [low, high] where is_out_below switches from True to False."""
    for _ in range(60):
        mid = (low + high) / 2
        if is_out_below(mid):
            low = mid
        else:
            high = mid
    return (low + high) / 2


@dataclass(frozen=True)
class PairedTest:
    """Two versions compared on paired observations: effect, its interval, and the verdict."""

    decision: ABDecision
    pairs: int
    discordant: int
    a_only: int
    effect: float
    low: float
    high: float
    alpha: float
    margin: float

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able form (the A/B trigger's snapshot)."""
        out = asdict(self)
        for key in ("effect", "low", "high"):
            out[key] = round(out[key], 5)
        return out


def paired_comparison(*, a: list[bool], b: list[bool], alpha: float, margin: float) -> PairedTest:
    """Compare two versions' successes (True = right / answered) pair by pair, in the order given.

    The effect is A's rate minus B's over the pairs; its interval is the confidence sequence's
    (valid at every look). "a_better"/"b_better" when the interval excludes 0 (two equal versions
    get one with probability <= alpha); "equivalent" when it lies within +/- margin.
    """
    pairs = min(len(a), len(b))
    a_only = sum(1 for i in range(pairs) if a[i] and not b[i])
    b_only = sum(1 for i in range(pairs) if b[i] and not a[i])
    return paired_test(pairs=pairs, a_only=a_only, b_only=b_only, alpha=alpha, margin=margin)


def paired_test(*, pairs: int, a_only: int, b_only: int, alpha: float, margin: float) -> PairedTest:
    """Return paired_comparison's verdict from the counts: pairs, and the discordant ones of each side."""
    _check_level("alpha", alpha)
    if not 0 < margin < 1:
        raise ValueError(f"margin must be between 0 and 1, got {margin}")
    if a_only < 0 or b_only < 0 or a_only + b_only > pairs:
        raise ValueError(f"need 0 <= a_only + b_only <= pairs, got {a_only} + {b_only} of {pairs}")
    discordant = a_only + b_only
    if pairs == 0:
        return PairedTest("continue", 0, 0, 0, 0.0, -1.0, 1.0, alpha, margin)
    q_low, q_high = mixture_interval(successes=a_only, n=discordant, alpha=alpha)
    share = discordant / pairs
    effect = (a_only - b_only) / pairs
    low, high = share * (2 * q_low - 1), share * (2 * q_high - 1)
    decision: ABDecision = "continue"
    if discordant and q_low > 0.5:
        decision = "a_better"
    elif discordant and q_high < 0.5:
        decision = "b_better"
    elif discordant and -margin < low and high < margin:
        decision = "equivalent"
    return PairedTest(decision, pairs, discordant, a_only, effect, low, high, alpha, margin)
