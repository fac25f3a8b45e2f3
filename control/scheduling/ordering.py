"""Cost-aware ordering of the queue: within a priority class, expected improvement per dollar first.

Active while an enabled cost policy sets `priority_by` (the seed's cost_aware_schedule:
"metric improvement potential desc, estimated cost asc"):
- improvement_per_dollar: expected improvement ÷ estimated cost, highest first;
- expected_improvement: expected improvement, highest first, then the cheaper;
- estimated_cost: the cheaper first.

Expected improvement is read from the recipe's past runs: how much the experiment's primary
metric is expected to beat the best run so far. The prediction is the mean of the most similar
past configs, weighted towards the nearest (similarity: the share of the parameters that vary
which have the same value), made optimistic by the
spread of past results where nothing similar ran yet, so an unexplored config is not ranked as
hopeless. An experiment whose recipe has no finished run has no estimate: it goes first in its
class (cheaper first), because its run is what the estimates of the others will need.
The cost is the estimate budget admission already makes (control/scheduling/cost.py).

The estimators below are pure functions of plain data, so bench/scheduler.py replays them on a
simulated workload.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import control.scheduling.cost as cost
from experiments.choices import PRIORITY_CLASS_RANK, PriorityClass, RunStatus
from experiments.models import Experiment, Run
from experiments.recipes import RECIPES

logger = logging.getLogger(__name__)

NEIGHBOURS = 5  # past configs a prediction is averaged over
HISTORY = 200  # past runs read per recipe
MIN_COST = 1e-4  # USD: a free run (no price set) is not worth infinitely much
# How many spreads of past results an unexplored config may land above its prediction (an
# upper bound of about 95% for results spread normally).
EXPLORATION = 2.0
MODES = ("improvement_per_dollar", "expected_improvement", "estimated_cost")


@dataclass(frozen=True)
class PastRun:
    """A finished run as the estimator reads it: its config and its final primary metric."""

    config: Mapping[str, Any]
    value: float


@dataclass(frozen=True)
class Estimate:
    """What the ordering decided on for one experiment (shown on the queue page and API)."""

    improvement: float | None  # in the metric's own units; None: no past run to judge by
    cost_usd: float
    metric: str
    basis: str  # in words: what the improvement is read from

    @property
    def value_per_dollar(self) -> float | None:
        """Return expected improvement per USD (None without an estimate)."""
        return None if self.improvement is None else self.improvement / max(self.cost_usd, MIN_COST)


def primary_metric(recipe: str) -> tuple[str, str]:
    """Return the metric a recipe's runs are compared on and which way is better ("higher"/"lower")."""
    spec = RECIPES.get(recipe)
    if spec is None or not spec.metrics:
        return "", "lower"
    for preferred in ("accuracy", "val_loss", "loss"):
        if preferred in spec.metrics:
            return preferred, spec.better.get(preferred, "higher" if preferred == "accuracy" else "lower")
    name = spec.metrics[0]
    return name, spec.better.get(name, "lower")


def similarity(a: Mapping[str, Any], b: Mapping[str, Any], keys: Sequence[str]) -> float:
    """Return the share of parameters (keys) with equal values in both configs, 0.0 to 1.0."""
    if not keys:
        return 1.0
    return sum(1 for k in keys if a.get(k) == b.get(k)) / len(keys)


def expected_improvement(
    config: Mapping[str, Any], past: Sequence[PastRun], *, better: str, keys: Sequence[str]
) -> tuple[float | None, str]:
    """Return (expected improvement over the best past value, or None without history; the basis in words)."""
    if not past:
        return None, "no finished run of this recipe yet"
    sign = 1.0 if better == "higher" else -1.0
    values = [p.value for p in past]
    best = max(values) if sign > 0 else min(values)
    # Only parameters that differ somewhere tell configs apart: ten shared defaults would make
    # every config look 90% alike.
    keys = [k for k in keys if len({repr(p.config.get(k)) for p in past} | {repr(config.get(k))}) > 1]
    ranked = sorted(past, key=lambda p: similarity(config, p.config, keys), reverse=True)[:NEIGHBOURS]
    # The nearest configs dominate the prediction (similarity to the 4th power).
    weights = [similarity(config, p.config, keys) ** 4 + 1e-6 for p in ranked]
    predicted = sum(w * p.value for w, p in zip(weights, ranked, strict=True)) / sum(weights)
    closest = similarity(config, ranked[0].config, keys)
    spread = statistics.pstdev(values) if len(values) > 1 else abs(best) * 0.1 or 0.1
    # Optimism in the face of uncertainty: the less alike the nearest past config, the more
    # the result may differ from it, either way; rank by the good side.
    optimistic = predicted + sign * EXPLORATION * spread * (1.0 - closest)
    improvement = max(0.0, sign * (optimistic - best))
    basis = (
        f"{len(ranked)} most similar of {len(past)} past runs (closest {closest:.0%} alike), best {best:.4g}"
    )
    return improvement, basis


class Ranked(Protocol):
    """What ranking reads of a queued experiment."""

    @property
    def pk(self) -> int: ...
    @property
    def priority_class(self) -> str: ...


def rank_key(mode: str, estimate: Estimate, position: int) -> tuple[Any, ...]:
    """Return the sort key within a priority class (lower sorts first); position keeps the old order on ties."""
    unknown = estimate.improvement is None
    if mode == "estimated_cost":
        return (estimate.cost_usd, position)
    if mode == "expected_improvement":
        return (not unknown, -(estimate.improvement or 0.0), estimate.cost_usd, position)
    return (not unknown, estimate.cost_usd if unknown else -(estimate.value_per_dollar or 0.0), position)


def ordering_mode(cache: dict[str, Any] | None = None) -> str:
    """Return the priority_by of the enabled cost policies ("" when none orders the queue)."""
    modes = [p.priority_by for p in cost.cost_policies(cache) if p.priority_by in MODES]
    return modes[0] if modes else ""


def _history(recipe: str, metric: str) -> list[PastRun]:
    rows = (
        Run.objects.filter(experiment__recipe=recipe, status=RunStatus.SUCCEEDED)
        .order_by("-finished_at")
        .values_list("config", "final_metrics")[:HISTORY]
    )
    past = []
    for config, final in rows:
        value = (final or {}).get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            past.append(PastRun(config=config or {}, value=float(value)))
    return past


def estimates_for(queued: Sequence[Any], *, cache: dict[str, Any]) -> dict[int, Estimate]:
    """Return each queued experiment's expected improvement and estimated cost (a few queries per recipe)."""
    configs = dict(Experiment.objects.filter(pk__in=[q.pk for q in queued]).values_list("pk", "config"))
    out: dict[int, Estimate] = {}
    for q in queued:
        metric, better = primary_metric(q.recipe)
        key = f"history:{q.recipe}:{metric}"
        if key not in cache:
            cache[key] = _history(q.recipe, metric) if metric else []
        spec = RECIPES.get(q.recipe)
        keys = [p.name for p in spec.params if p.name != "seed"] if spec else []
        improvement, basis = expected_improvement(
            configs.get(q.pk) or {}, cache[key], better=better, keys=keys
        )
        cost_key = cost.estimate_key(q)
        if cost_key not in cache:
            cache[cost_key] = cost.estimated_cost(q)
        usd: Decimal = cache[cost_key]
        out[q.pk] = Estimate(improvement=improvement, cost_usd=float(usd), metric=metric, basis=basis)
    return out


def queue_rank(queued: list[Any], *, cache: dict[str, Any]) -> tuple[list[Any], dict[int, Estimate], str]:
    """Return the queue re-ranked within each priority class (when a cost policy asks), the estimates, the mode.

    Without such a policy the queue is returned as it came, with no estimates.
    """
    try:
        mode = ordering_mode(cache)
        if not mode or not queued:
            return queued, {}, ""
        estimates = estimates_for(queued, cache=cache)
    except Exception:  # a broken estimate must not stop scheduling: the plain order stands
        logger.exception("cost-aware ordering failed; the queue keeps its plain order")
        return queued, {}, ""
    rank = {cls: i for cls, i in PRIORITY_CLASS_RANK.items()}
    positions = {q.pk: i for i, q in enumerate(queued)}
    ordered = sorted(
        queued,
        key=lambda q: (
            rank.get(PriorityClass(q.priority_class), len(rank)),
            *rank_key(mode, estimates[q.pk], positions[q.pk]),
        ),
    )
    return ordered, estimates, mode
