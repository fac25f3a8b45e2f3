"""Condition kinds of cost-aware scheduling: the daily budget and the runs in flight."""

from __future__ import annotations

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
class Budget(ConditionKindUnit):
    """Today's spend plus the run's estimate compared with the daily budget."""

    name = ConditionKind.BUDGET
    label = "Today's spend against the daily budget (USD)"
    help = (
        "Compares today's spend plus the run's estimated cost with the policy's daily budget "
        "(USD) using the operator; passes when no budget is set. No threshold."
    )
    example = {"operator": "<="}
    needs_operator = True
    needs_threshold = False

    def describe(self, spec: ConditionSpec) -> str:
        """Return e.g. "today's spend + estimate <= daily budget"."""
        return f"today's spend + estimate {spec.operator} daily budget"

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Pass when the projected spend satisfies the comparison with the budget."""
        desc = self.describe(spec)
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


@condition_kind_register
class Concurrency(ConditionKindUnit):
    """The number of runs in flight compared with a threshold."""

    name = ConditionKind.CONCURRENCY
    label = "Number of runs in flight"
    help = "Compares the number of runs in flight with the threshold using the operator."
    example = {"operator": "<", "threshold": 3}
    needs_operator = True

    def describe(self, spec: ConditionSpec) -> str:
        """Return e.g. "runs in flight < 3"."""
        return f"runs in flight {spec.operator} {fmt_num(spec.threshold)}"

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Pass when the count satisfies the comparison."""
        desc = self.describe(spec)
        assert spec.threshold is not None
        passed = OPERATORS[spec.operator](float(ctx.runs_in_flight), spec.threshold)
        return ConditionResult(
            desc, passed, float(ctx.runs_in_flight), f"{ctx.runs_in_flight} runs in flight"
        )
