"""Condition kinds that read a metric's series: threshold, regression, NaN, divergence, plateau."""

from __future__ import annotations

import math
from collections.abc import Sequence

from control.policies.conditions.base import (
    AGGREGATES,
    OPERATORS,
    ConditionKind,
    ConditionKindUnit,
    ConditionResult,
    ConditionSpec,
    EvaluationContext,
    Point,
    condition_kind_register,
    default_better,
    fmt_num,
    fmt_pct,
    threshold_shortfall,
)

# Divergence and plateau share the field and, historically, the message.


def _points(spec: ConditionSpec, ctx: EvaluationContext) -> Sequence[Point]:
    return ctx.series.get(spec.metric, ()) if spec.metric else ()


def _finite(points: Sequence[Point]) -> list[float]:
    return [v for _, v in points if v is not None and math.isfinite(v)]


def _better_of(spec: ConditionSpec, ctx: EvaluationContext) -> str:
    # The policy's own choice first, then what the recipe declares (Metric.better), then the name.
    return spec.better or ctx.metric_better.get(spec.metric) or default_better(spec.metric)


def _held_out(spec: ConditionSpec, ctx: EvaluationContext) -> float | None:
    value = (ctx.candidate_metrics or {}).get(spec.metric)
    return value if value is not None and math.isfinite(value) else None


def _aggregate(spec: ConditionSpec, points: Sequence[Point], ctx: EvaluationContext) -> float | None:
    values = _finite(points)
    if not values:
        return None
    if spec.aggregate == "best":
        return min(values) if _better_of(spec, ctx) == "lower" else max(values)
    if spec.aggregate == "mean":
        window = values[-(spec.window or 1) :]
        return sum(window) / len(window)
    last = points[-1][1]
    return last if last is not None and math.isfinite(last) else None


@condition_kind_register
class MetricThreshold(ConditionKindUnit):
    """A metric's latest, best or mean-of-last-k value compared with a threshold."""

    name = ConditionKind.METRIC
    label = "Metric threshold (latest, best or mean of the last k points)"
    help = (
        "Compares the metric's latest, best or mean value (mean: of the last window points) with "
        "the threshold; fails while no finite value is logged. Canary rollback: on served traffic."
    )
    example = {"metric": "accuracy", "aggregate": "latest", "operator": ">", "threshold": 0.9}
    reads_served_traffic = True
    needs_metric = True
    needs_operator = True

    def validate(self, spec: ConditionSpec) -> dict[str, str]:
        """Also check the aggregate, and the window the mean needs."""
        errors = super().validate(spec)
        if spec.aggregate not in AGGREGATES:
            errors["aggregate"] = f"choose one of {', '.join(AGGREGATES)}"
        elif spec.aggregate == "mean" and (spec.window is None or spec.window < 1):
            errors["window"] = "the mean needs the number of last points (at least 1)"
        return errors

    def describe(self, spec: ConditionSpec) -> str:
        """Return e.g. "latest accuracy > 0.9"."""
        agg = f"mean of last {spec.window}" if spec.aggregate == "mean" else spec.aggregate
        return f"{agg} {spec.metric} {spec.operator} {fmt_num(spec.threshold)}"

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Pass when the aggregated value satisfies the comparison (latest: the held-out evaluation first)."""
        desc = self.describe(spec)
        held_out = _held_out(spec, ctx) if spec.aggregate == "latest" else None
        value = held_out if held_out is not None else _aggregate(spec, _points(spec, ctx), ctx)
        if value is None:
            return ConditionResult(desc, False, None, f"no finite {spec.metric} logged yet")
        assert spec.threshold is not None
        passed = OPERATORS[spec.operator](value, spec.threshold)
        where = " (held-out evaluation)" if held_out is not None else ""
        return ConditionResult(desc, passed, value, f"{spec.metric} = {value:.6g}{where}")

    def shortfall(self, spec: ConditionSpec, result: ConditionResult) -> float | None:
        """Return the distance of the value from the threshold, on the failing side."""
        return threshold_shortfall(spec.operator, result.value, spec.threshold)


@condition_kind_register
class Regression(ConditionKindUnit):
    """The latest value no worse than production's by more than a relative margin."""

    name = ConditionKind.REGRESSION
    label = "No regression against the production model (relative)"
    help = (
        "Passes while the candidate is at most threshold worse than the model in production at the "
        "moment of the decision (relative: 0.05 = 5%), both measured on the recipe's held-out set "
        "when they have an evaluation there (else on their runs' last values), and when nothing is "
        "in production; better sets the direction (blank: guessed from the name). Canary rollback: "
        "on served traffic."
    )
    example = {"metric": "loss", "threshold": 0.05}
    reads_served_traffic = True
    needs_metric = True
    negative_threshold_error = "the allowed relative regression cannot be negative (0.05 = 5%)"

    def describe(self, spec: ConditionSpec) -> str:
        """Return e.g. "loss no worse than production by more than 5%"."""
        return f"{spec.metric} no worse than production by more than {fmt_pct(spec.threshold)}"

    def describe_as_rollback(self, spec: ConditionSpec) -> str:
        """Return e.g. "accuracy worse than production by more than 5%".

        As a rollback trigger a regression condition fires when it is broken, so its own wording
        ("no worse than") would say the opposite of what rolls the canary back.
        """
        return f"{spec.metric} worse than production by more than {fmt_pct(spec.threshold)}"

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Pass when the relative regression against production is within the margin."""
        desc = self.describe(spec)
        held_out = _held_out(spec, ctx)
        latest = (
            held_out
            if held_out is not None
            else _aggregate(ConditionSpec(spec.kind, spec.metric, "latest"), _points(spec, ctx), ctx)
        )
        if latest is None:
            return ConditionResult(desc, False, None, f"no finite {spec.metric} logged yet")
        baseline = (ctx.production_metrics or {}).get(spec.metric)
        if baseline is None:
            return ConditionResult(desc, True, latest, "no production model to regress against")
        assert spec.threshold is not None
        lower_is_better = _better_of(spec, ctx) == "lower"
        worse_by = (latest - baseline) if lower_is_better else (baseline - latest)
        relative = worse_by / abs(baseline) if baseline else (0.0 if worse_by <= 0 else math.inf)
        passed = relative <= spec.threshold
        who = f" ({ctx.production_label})" if ctx.production_label else ""
        return ConditionResult(
            desc,
            passed,
            relative,
            f"{spec.metric} {latest:.6g} vs production {baseline:.6g}{who}: {relative * 100:+.2f}% worse",
        )

    def shortfall(self, spec: ConditionSpec, result: ConditionResult) -> float | None:
        """Return how much more relative regression there is than the margin allows."""
        return threshold_shortfall("<=", result.value, spec.threshold)


@condition_kind_register
class NotFinite(ConditionKindUnit):
    """The metric's latest point is NaN or infinite."""

    name = ConditionKind.NOT_FINITE
    label = "Metric became NaN or infinite"
    help = "Holds when the metric's latest logged point is NaN or infinite; no threshold."
    example = {"metric": "loss"}
    needs_metric = True
    needs_threshold = False

    def describe(self, spec: ConditionSpec) -> str:
        """Return e.g. "loss is NaN or infinite"."""
        return f"{spec.metric} is NaN or infinite"

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Hold when the last point is not finite; fail while nothing is logged."""
        desc = self.describe(spec)
        points = _points(spec, ctx)
        if not points:
            return ConditionResult(desc, False, None, f"no {spec.metric} logged yet")
        step, last = points[-1]
        bad = last is None or not math.isfinite(last)
        return ConditionResult(
            desc, bad, last, f"{spec.metric} at step {step} is {'not finite' if bad else f'{last:.6g}'}"
        )


@condition_kind_register
class Divergence(ConditionKindUnit):
    """The latest value exceeds a factor times the moving average before it."""

    name = ConditionKind.DIVERGENCE
    label = "Metric diverges (latest > factor x moving average)"
    help = (
        "Holds when the latest value is more than threshold (a factor above 1) times the mean of "
        "the window points before it; fails until window + 1 finite points are logged."
    )
    example = {"metric": "loss", "window": 20, "threshold": 3}
    needs_metric = True
    needs_window = True

    def validate(self, spec: ConditionSpec) -> dict[str, str]:
        """Also require a factor above 1."""
        errors = super().validate(spec)
        if spec.threshold is not None and spec.threshold <= 1:
            errors["threshold"] = (
                "the divergence factor must be greater than 1 (e.g. 3 = three times the average)"
            )
        return errors

    def describe(self, spec: ConditionSpec) -> str:
        """Return e.g. "loss > 3 x its mean over the previous 20 points"."""
        return f"{spec.metric} > {fmt_num(spec.threshold)} x its mean over the previous {spec.window} points"

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Hold when latest / mean of the previous window points exceeds the factor."""
        desc = self.describe(spec)
        values = _finite(_points(spec, ctx))
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

    def shortfall(self, spec: ConditionSpec, result: ConditionResult) -> float | None:
        """Return how far the ratio is below the factor."""
        return threshold_shortfall(">", result.value, spec.threshold)


@condition_kind_register
class Plateau(ConditionKindUnit):
    """No improvement of at least min delta over the last N steps."""

    name = ConditionKind.PLATEAU
    label = "Metric plateaued (no improvement over N steps)"
    help = (
        "Holds when the best value of the last window steps improved on the best before them by "
        "less than threshold (the minimum improvement); better sets the direction."
    )
    example = {"metric": "val_loss", "window": 200, "threshold": 0.001}
    needs_metric = True
    needs_window = True
    negative_threshold_error = "cannot be negative"

    def describe(self, spec: ConditionSpec) -> str:
        """Return e.g. "val_loss has not improved by 0.001 in 200 steps"."""
        return f"{spec.metric} has not improved by {fmt_num(spec.threshold)} in {spec.window} steps"

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Hold when the recent best beats the earlier best by less than the minimum improvement."""
        desc = self.describe(spec)
        finite = [(s, v) for s, v in _points(spec, ctx) if v is not None and math.isfinite(v)]
        if not finite:
            return ConditionResult(desc, False, None, f"no finite {spec.metric} logged yet")
        patience = spec.window or 1
        last_step = finite[-1][0]
        if last_step - finite[0][0] < patience:
            return ConditionResult(
                desc, False, None, f"only {last_step - finite[0][0]} steps logged, patience {patience}"
            )
        lower = _better_of(spec, ctx) == "lower"
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

    def shortfall(self, spec: ConditionSpec, result: ConditionResult) -> float | None:
        """Return how far the improvement is above the minimum."""
        return threshold_shortfall("<", result.value, spec.threshold)
