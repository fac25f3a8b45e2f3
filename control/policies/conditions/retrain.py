"""Condition kinds of drift → retrain policies: drift of served inputs, age of the last retrain."""

from __future__ import annotations

from datetime import datetime, timedelta

from control.policies.conditions.base import (
    OPERATORS,
    ConditionKind,
    ConditionKindUnit,
    ConditionResult,
    ConditionSpec,
    EvaluationContext,
    condition_kind_register,
    fmt_num,
)


@condition_kind_register
class Drift(ConditionKindUnit):
    """The deployed model's drift score on served inputs compared with a threshold."""

    name = ConditionKind.DRIFT
    label = "Drift score of served inputs"
    help = (
        "Compares the deployed model's drift score (measured on its served inputs by the drift "
        "sweep) with the threshold; fails until a score is measured."
    )
    example = {"operator": ">", "threshold": 0.15}
    needs_operator = True

    def describe(self, spec: ConditionSpec) -> str:
        """Return e.g. "drift score > 0.15"."""
        return f"drift score {spec.operator} {fmt_num(spec.threshold)}"

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Pass when the measured score satisfies the comparison."""
        desc = self.describe(spec)
        if ctx.drift_score is None:
            return ConditionResult(desc, False, None, "no drift score measured yet")
        assert spec.threshold is not None
        passed = OPERATORS[spec.operator](ctx.drift_score, spec.threshold)
        return ConditionResult(desc, passed, ctx.drift_score, f"drift score = {ctx.drift_score:.4g}")


@condition_kind_register
class OlderThan(ConditionKindUnit):
    """The last retrain is more than N hours ago (or never happened)."""

    name = ConditionKind.OLDER_THAN
    label = "Time since the last retrain exceeds N hours"
    help = "Holds when the last retrain is more than threshold hours ago, or there was none."
    example = {"threshold": 24}
    negative_threshold_error = "cannot be negative"

    def describe(self, spec: ConditionSpec) -> str:
        """Return e.g. "last retrain older than 24 h"."""
        return f"last retrain older than {fmt_num(spec.threshold)} h"

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Hold when the age in hours exceeds the threshold; a model never retrained is old."""
        desc = self.describe(spec)
        assert spec.threshold is not None
        if ctx.last_retrain_at is None:
            return ConditionResult(desc, True, None, "never retrained")
        now = ctx.now or datetime.now(tz=ctx.last_retrain_at.tzinfo)
        age_hours = (now - ctx.last_retrain_at) / timedelta(hours=1)
        return ConditionResult(
            desc, age_hours > spec.threshold, age_hours, f"last retrain {age_hours:.1f} h ago"
        )
