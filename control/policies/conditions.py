"""Policy conditions as data, and the small safe evaluator that checks them (no eval, ever).

A condition is a `ConditionSpec` (kind + a few typed fields); `evaluate_condition` reads
the facts it needs from an `EvaluationContext` and returns a `ConditionResult` that says
what value it saw and whether it passed, so every automated decision can be explained.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

Point = tuple[int, float | None]  # (step, value); None stands for NaN/inf

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

AGGREGATES = ("latest", "best", "mean")
BETTER = ("higher", "lower")


class ConditionKind:
    """The kinds of condition a policy can hold."""

    METRIC = "metric"
    REGRESSION = "regression"
    NOT_FINITE = "not_finite"
    DIVERGENCE = "divergence"
    PLATEAU = "plateau"
    DRIFT = "drift"
    OLDER_THAN = "older_than"
    BUDGET = "budget"
    CONCURRENCY = "concurrency"

    CHOICES = (
        (METRIC, "Metric threshold (latest, best or mean of the last k points)"),
        (REGRESSION, "No regression against the production model (relative)"),
        (NOT_FINITE, "Metric became NaN or infinite"),
        (DIVERGENCE, "Metric diverges (latest > factor x moving average)"),
        (PLATEAU, "Metric plateaued (no improvement over N steps)"),
        (DRIFT, "Drift score of served inputs"),
        (OLDER_THAN, "Time since the last retrain exceeds N hours"),
        (BUDGET, "Today's spend against the daily budget (USD)"),
        (CONCURRENCY, "Number of runs in flight"),
    )


def default_better(metric: str) -> str:
    """Return "lower" for loss/error/latency-like metrics, "higher" otherwise."""
    lowered = metric.lower()
    return (
        "lower" if any(word in lowered for word in ("loss", "error", "latency", "perplexity")) else "higher"
    )


@dataclass(frozen=True)
class ConditionSpec:
    """One condition, as stored in a policy's condition row."""

    kind: str
    metric: str = ""
    aggregate: str = "latest"
    window: int | None = None
    operator: str = ""
    threshold: float | None = None
    better: str = ""

    def describe(self) -> str:
        """Return the condition as a person would write it."""
        k = self.kind
        if k == ConditionKind.METRIC:
            agg = f"mean of last {self.window}" if self.aggregate == "mean" else self.aggregate
            return f"{agg} {self.metric} {self.operator} {_num(self.threshold)}"
        if k == ConditionKind.REGRESSION:
            return f"{self.metric} no worse than production by more than {_pct(self.threshold)}"
        if k == ConditionKind.NOT_FINITE:
            return f"{self.metric} is NaN or infinite"
        if k == ConditionKind.DIVERGENCE:
            return f"{self.metric} > {_num(self.threshold)} x its mean over the previous {self.window} points"
        if k == ConditionKind.PLATEAU:
            return f"{self.metric} has not improved by {_num(self.threshold)} in {self.window} steps"
        if k == ConditionKind.DRIFT:
            return f"drift score {self.operator} {_num(self.threshold)}"
        if k == ConditionKind.OLDER_THAN:
            return f"last retrain older than {_num(self.threshold)} h"
        if k == ConditionKind.BUDGET:
            return f"today's spend + estimate {self.operator} daily budget"
        if k == ConditionKind.CONCURRENCY:
            return f"runs in flight {self.operator} {_num(self.threshold)}"
        return k


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:g}%"


def validate_condition(spec: ConditionSpec) -> dict[str, str]:
    """Return {field: message} for everything wrong with the spec (empty when valid)."""
    errors: dict[str, str] = {}
    kinds = {choice for choice, _ in ConditionKind.CHOICES}
    if spec.kind not in kinds:
        return {"kind": f"unknown condition kind {spec.kind!r} (known: {', '.join(sorted(kinds))})"}
    needs_metric = spec.kind in {
        ConditionKind.METRIC,
        ConditionKind.REGRESSION,
        ConditionKind.NOT_FINITE,
        ConditionKind.DIVERGENCE,
        ConditionKind.PLATEAU,
    }
    if needs_metric and not spec.metric.strip():
        errors["metric"] = "name the metric, e.g. accuracy or loss"
    needs_operator = spec.kind in {
        ConditionKind.METRIC,
        ConditionKind.DRIFT,
        ConditionKind.BUDGET,
        ConditionKind.CONCURRENCY,
    }
    if needs_operator and spec.operator not in OPERATORS:
        errors["operator"] = f"choose one of {' '.join(OPERATORS)}"
    needs_threshold = spec.kind not in {ConditionKind.NOT_FINITE, ConditionKind.BUDGET}
    if needs_threshold:
        if spec.threshold is None:
            errors["threshold"] = "a number is required for this kind of condition"
        elif not math.isfinite(spec.threshold):
            errors["threshold"] = "must be a finite number"
    if spec.kind == ConditionKind.METRIC:
        if spec.aggregate not in AGGREGATES:
            errors["aggregate"] = f"choose one of {', '.join(AGGREGATES)}"
        elif spec.aggregate == "mean" and (spec.window is None or spec.window < 1):
            errors["window"] = "the mean needs the number of last points (at least 1)"
    if spec.kind in {ConditionKind.DIVERGENCE, ConditionKind.PLATEAU} and (
        spec.window is None or spec.window < 1
    ):
        errors["window"] = "give the number of points (divergence) or steps (plateau), at least 1"
    if spec.kind == ConditionKind.DIVERGENCE and spec.threshold is not None and spec.threshold <= 1:
        errors["threshold"] = (
            "the divergence factor must be greater than 1 (e.g. 3 = three times the average)"
        )
    if spec.kind == ConditionKind.REGRESSION and spec.threshold is not None and spec.threshold < 0:
        errors["threshold"] = "the allowed relative regression cannot be negative (0.05 = 5%)"
    if (
        spec.kind in {ConditionKind.OLDER_THAN, ConditionKind.PLATEAU}
        and spec.threshold is not None
        and spec.threshold < 0
    ):
        errors["threshold"] = "cannot be negative"
    if spec.better and spec.better not in BETTER:
        errors["better"] = "choose higher or lower"
    return errors


# What a canary's rollback_on conditions can read: its served traffic in the current stage.
SERVING_METRICS = {
    "error_rate": "share of failed requests (0-1)",
    "error_rate_lower_95": "error rate's 95% lower bound: above a threshold only once the breach is clear",
    "latency_p50_ms": "median latency in ms",
    "latency_p99_ms": "99th percentile latency in ms",
    "accuracy": "share of predictions matching feedback labels (0-1)",
    "accuracy_upper_95": "accuracy's 95% upper bound: below a threshold only once the shortfall is clear",
    "requests": "requests served",
}


def validate_serving_condition(spec: ConditionSpec) -> dict[str, str]:
    """Return errors of a canary rollback_on condition: a metric or regression on served traffic."""
    if spec.kind not in (ConditionKind.METRIC, ConditionKind.REGRESSION):
        return {
            "kind": "a canary rollback condition is a metric threshold or a regression against production"
        }
    if spec.metric not in SERVING_METRICS:
        known = ", ".join(SERVING_METRICS)
        return {"metric": f"canary conditions read served traffic: one of {known}"}
    return {}


@dataclass
class EvaluationContext:
    """The facts conditions are checked against; what a condition needs and lacks fails it."""

    series: Mapping[str, Sequence[Point]] = field(default_factory=dict)
    production_metrics: dict[str, float] | None = None
    drift_score: float | None = None
    last_retrain_at: datetime | None = None
    now: datetime | None = None
    spend_today: float = 0.0
    estimated_cost: float = 0.0
    daily_budget: float | None = None
    runs_in_flight: int = 0


@dataclass(frozen=True)
class ConditionResult:
    """The outcome of one condition: the value it saw, pass/fail, and why in words."""

    description: str
    passed: bool
    value: float | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able form (for trigger snapshots and the dry-run page)."""
        value = self.value if self.value is None or math.isfinite(self.value) else None
        return {"condition": self.description, "passed": self.passed, "value": value, "detail": self.detail}


def _finite(points: Sequence[Point]) -> list[float]:
    return [v for _, v in points if v is not None and math.isfinite(v)]


def _better_of(spec: ConditionSpec) -> str:
    return spec.better or default_better(spec.metric)


def _aggregate(spec: ConditionSpec, points: Sequence[Point]) -> float | None:
    values = _finite(points)
    if not values:
        return None
    if spec.aggregate == "best":
        return min(values) if _better_of(spec) == "lower" else max(values)
    if spec.aggregate == "mean":
        window = values[-(spec.window or 1) :]
        return sum(window) / len(window)
    last = points[-1][1]
    return last if last is not None and math.isfinite(last) else None


def evaluate_condition(spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
    """Check one (valid) condition against the context."""
    desc = spec.describe()
    points = ctx.series.get(spec.metric, ()) if spec.metric else ()
    kind = spec.kind
    if kind == ConditionKind.METRIC:
        value = _aggregate(spec, points)
        if value is None:
            return ConditionResult(desc, False, None, f"no finite {spec.metric} logged yet")
        assert spec.threshold is not None
        passed = OPERATORS[spec.operator](value, spec.threshold)
        return ConditionResult(desc, passed, value, f"{spec.metric} = {value:.6g}")
    if kind == ConditionKind.REGRESSION:
        latest = _aggregate(ConditionSpec(kind, spec.metric, "latest"), points)
        if latest is None:
            return ConditionResult(desc, False, None, f"no finite {spec.metric} logged yet")
        baseline = (ctx.production_metrics or {}).get(spec.metric)
        if baseline is None:
            return ConditionResult(desc, True, latest, "no production model to regress against")
        assert spec.threshold is not None
        lower_is_better = _better_of(spec) == "lower"
        worse_by = (latest - baseline) if lower_is_better else (baseline - latest)
        relative = worse_by / abs(baseline) if baseline else (0.0 if worse_by <= 0 else math.inf)
        passed = relative <= spec.threshold
        return ConditionResult(
            desc,
            passed,
            relative,
            f"{spec.metric} {latest:.6g} vs production {baseline:.6g}: {relative * 100:+.2f}% worse",
        )
    if kind == ConditionKind.NOT_FINITE:
        if not points:
            return ConditionResult(desc, False, None, f"no {spec.metric} logged yet")
        step, last = points[-1]
        bad = last is None or not math.isfinite(last)
        return ConditionResult(
            desc, bad, last, f"{spec.metric} at step {step} is {'not finite' if bad else f'{last:.6g}'}"
        )
    if kind == ConditionKind.DIVERGENCE:
        values = _finite(points)
        window = spec.window or 1
        if len(values) < window + 1:
            return ConditionResult(desc, False, None, f"needs {window + 1} finite points, has {len(values)}")
        assert spec.threshold is not None
        latest, previous = values[-1], values[-window - 1 : -1]
        average = sum(previous) / len(previous)
        ratio = latest / average if average > 0 else math.inf if latest > 0 else 0.0
        return ConditionResult(
            desc,
            ratio > spec.threshold,
            ratio,
            f"latest {latest:.6g} is {ratio:.3g} x the mean {average:.6g}",
        )
    if kind == ConditionKind.PLATEAU:
        finite = [(s, v) for s, v in points if v is not None and math.isfinite(v)]
        if not finite:
            return ConditionResult(desc, False, None, f"no finite {spec.metric} logged yet")
        patience = spec.window or 1
        last_step = finite[-1][0]
        if last_step - finite[0][0] < patience:
            return ConditionResult(
                desc, False, None, f"only {last_step - finite[0][0]} steps logged, patience {patience}"
            )
        lower = _better_of(spec) == "lower"
        min_delta = spec.threshold or 0.0
        before = [v for s, v in finite if s <= last_step - patience]
        recent = [v for s, v in finite if s > last_step - patience]
        best_before = min(before) if lower else max(before)
        best_recent = min(recent) if lower else max(recent)
        improvement = (best_before - best_recent) if lower else (best_recent - best_before)
        return ConditionResult(
            desc,
            improvement < min_delta,
            improvement,
            f"improved by {improvement:.6g} over the last {patience} steps",
        )
    if kind == ConditionKind.DRIFT:
        if ctx.drift_score is None:
            return ConditionResult(desc, False, None, "no drift score measured yet")
        assert spec.threshold is not None
        passed = OPERATORS[spec.operator](ctx.drift_score, spec.threshold)
        return ConditionResult(desc, passed, ctx.drift_score, f"drift score = {ctx.drift_score:.4g}")
    if kind == ConditionKind.OLDER_THAN:
        assert spec.threshold is not None
        if ctx.last_retrain_at is None:
            return ConditionResult(desc, True, None, "never retrained")
        now = ctx.now or datetime.now(tz=ctx.last_retrain_at.tzinfo)
        age_hours = (now - ctx.last_retrain_at) / timedelta(hours=1)
        return ConditionResult(
            desc, age_hours > spec.threshold, age_hours, f"last retrain {age_hours:.1f} h ago"
        )
    if kind == ConditionKind.BUDGET:
        if ctx.daily_budget is None:
            return ConditionResult(desc, True, None, "no daily budget set")
        projected = ctx.spend_today + ctx.estimated_cost
        passed = OPERATORS[spec.operator](projected, ctx.daily_budget)
        return ConditionResult(
            desc,
            passed,
            projected,
            f"${ctx.spend_today:.2f} spent + ${ctx.estimated_cost:.2f} estimated vs ${ctx.daily_budget:.2f}",
        )
    if kind == ConditionKind.CONCURRENCY:
        assert spec.threshold is not None
        passed = OPERATORS[spec.operator](float(ctx.runs_in_flight), spec.threshold)
        return ConditionResult(
            desc, passed, float(ctx.runs_in_flight), f"{ctx.runs_in_flight} runs in flight"
        )
    raise ValueError(f"unknown condition kind {kind!r}")


def evaluate_all(
    specs: Sequence[ConditionSpec], ctx: EvaluationContext
) -> tuple[bool, list[ConditionResult]]:
    """Return (all passed, each result); an empty list of conditions passes."""
    results = [evaluate_condition(spec, ctx) for spec in specs]
    return all(r.passed for r in results), results
