"""What a condition kind is, the registry of kinds, and the evaluator that looks kinds up in it.

A condition is a `ConditionSpec` (kind + a few typed fields). Each kind is one small
`ConditionKindUnit` registered by name in CONDITION_KINDS (metrics.py, retrain.py, capacity.py):
it validates its fields, describes itself, evaluates against an `EvaluationContext` and carries
the label, help and example the policy admin shows. `evaluate_condition` returns a
`ConditionResult` that says what value it saw and whether it passed, so every automated
decision can be explained. Conditions are data: nothing here is ever eval'd.

This module is the pure bottom of the policies package: it imports nothing of Django or control.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

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


def default_better(metric: str) -> str:
    """Return "lower" for loss/error/latency-like metrics, "higher" otherwise."""
    lowered = metric.lower()
    return (
        "lower" if any(word in lowered for word in ("loss", "error", "latency", "perplexity")) else "higher"
    )


def fmt_num(value: float | None) -> str:
    """Return a number as a person writes it (24, not 24.0); "?" when missing."""
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def fmt_pct(value: float | None) -> str:
    """Return a fraction as a percentage (0.05 -> 5%); "?" when missing."""
    return "?" if value is None else f"{value * 100:g}%"


class _RegisteredChoices:
    """ConditionKind.CHOICES: (name, label) of every registered kind, in registration order."""

    def __get__(self, instance: object, owner: type | None = None) -> tuple[tuple[str, str], ...]:
        """Read the registry at access time, so the choices never drift from the units."""
        return tuple((unit.name, unit.label) for unit in CONDITION_KINDS.values())


class ConditionKind:
    """The names of the built-in kinds; CHOICES comes from the registry (the source of truth)."""

    METRIC = "metric"
    REGRESSION = "regression"
    NOT_FINITE = "not_finite"
    DIVERGENCE = "divergence"
    PLATEAU = "plateau"
    DRIFT = "drift"
    OLDER_THAN = "older_than"
    BUDGET = "budget"
    CONCURRENCY = "concurrency"

    CHOICES = _RegisteredChoices()


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
        """Return the condition as a person would write it (the bare kind when it is unknown)."""
        unit = CONDITION_KINDS.get(self.kind)
        return unit.describe(self) if unit is not None else self.kind

    def describe_as_rollback(self) -> str:
        """Return what makes a canary roll back, when this condition is a rollback_on row."""
        unit = CONDITION_KINDS.get(self.kind)
        return unit.describe_as_rollback(self) if unit is not None else self.kind


@dataclass
class EvaluationContext:
    """The facts conditions are checked against; what a condition needs and lacks fails it."""

    series: Mapping[str, Sequence[Point]] = field(default_factory=dict)
    production_metrics: dict[str, float] | None = None
    # Who production is and where its numbers come from, for the explanation.
    production_label: str = ""
    # The candidate's held-out evaluation: "latest" thresholds and the regression read it first.
    candidate_metrics: dict[str, float] | None = None
    drift_score: float | None = None
    last_retrain_at: datetime | None = None
    now: datetime | None = None
    spend_today: float = 0.0
    estimated_cost: float = 0.0
    daily_budget: float | None = None
    runs_in_flight: int = 0
    # Which way is better for each metric, as the experiment's recipe declares it (Metric.better).
    metric_better: Mapping[str, str] = field(default_factory=dict)


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


class ConditionKindUnit:
    """One kind of condition. Subclasses set name, label, help, example and the fields they read."""

    name: ClassVar[str]
    # The kind's choice label (PolicyCondition.kind; a change is a migration).
    label: ClassVar[str]
    # What the kind checks and what its fields mean, for the policy admin.
    help: ClassVar[str]
    # A valid condition of this kind, as a policy holds its fields (without "kind").
    example: ClassVar[Mapping[str, Any]]
    # Whether a canary's rollback_on may use it, read on served traffic (SERVING_METRICS).
    reads_served_traffic: ClassVar[bool] = False
    # The shared fields the kind reads; validate() checks these, subclasses add their own rules.
    needs_metric: ClassVar[bool] = False
    needs_operator: ClassVar[bool] = False
    needs_threshold: ClassVar[bool] = True
    # Kinds that read a window of points or steps (divergence, plateau) need it at least 1.
    needs_window: ClassVar[bool] = False
    # Kinds whose threshold is a size (a margin, an improvement, an age) refuse a negative one
    # with this message; None: any sign is meaningful.
    negative_threshold_error: ClassVar[str | None] = None

    def validate(self, spec: ConditionSpec) -> dict[str, str]:
        """Return {field: message} for the shared fields this kind reads (empty when valid)."""
        errors: dict[str, str] = {}
        if self.needs_metric and not spec.metric.strip():
            errors["metric"] = "name the metric, e.g. accuracy or loss"
        if self.needs_operator and spec.operator not in OPERATORS:
            errors["operator"] = f"choose one of {' '.join(OPERATORS)}"
        if self.needs_threshold:
            if spec.threshold is None:
                errors["threshold"] = "a number is required for this kind of condition"
            elif not math.isfinite(spec.threshold):
                errors["threshold"] = "must be a finite number"
        if self.negative_threshold_error and spec.threshold is not None and spec.threshold < 0:
            errors["threshold"] = self.negative_threshold_error
        if self.needs_window and (spec.window is None or spec.window < 1):
            errors["window"] = "give the number of points (divergence) or steps (plateau), at least 1"
        return errors

    def describe(self, spec: ConditionSpec) -> str:
        """Return the condition as a person would write it."""
        raise NotImplementedError

    def describe_as_rollback(self, spec: ConditionSpec) -> str:
        """Return the condition as a rollback trigger: for most kinds, holding is what triggers."""
        return self.describe(spec)

    def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
        """Check one (valid) condition of this kind against the context."""
        raise NotImplementedError

    def shortfall(self, spec: ConditionSpec, result: ConditionResult) -> float | None:
        """Return how far the result's value is from passing (0 when it passes; None: not measurable).

        The dry-run and backtest show each condition's near miss with it.
        """
        return None

    def example_spec(self) -> ConditionSpec:
        """Return the example as a condition of this kind."""
        return ConditionSpec(kind=self.name, **self.example)

    def example_text(self) -> str:
        """Return the example as the admin shows it: the sentence, then the fields to fill in."""
        fields = ", ".join(f"{key} {value}" for key, value in self.example.items())
        sentence = self.describe(self.example_spec())
        return f"{sentence}: {fields}" if fields else sentence


CONDITION_KINDS: dict[str, ConditionKindUnit] = {}

U = TypeVar("U", bound=type[ConditionKindUnit])


def condition_kind_register(cls: U) -> U:
    """Register a condition kind under its name (a second kind of the same name is a bug)."""
    if cls.name in CONDITION_KINDS:
        raise ValueError(f"condition kind {cls.name!r} is registered twice")
    CONDITION_KINDS[cls.name] = cls()
    return cls


def validate_condition(spec: ConditionSpec) -> dict[str, str]:
    """Return {field: message} for everything wrong with the spec (empty when valid)."""
    unit = CONDITION_KINDS.get(spec.kind)
    if unit is None:
        known = ", ".join(sorted(CONDITION_KINDS))
        return {"kind": f"unknown condition kind {spec.kind!r} (known: {known})"}
    errors = unit.validate(spec)
    # Every kind takes the direction field, checked last so its message comes last.
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
    unit = CONDITION_KINDS.get(spec.kind)
    if unit is None or not unit.reads_served_traffic:
        # The wording names the built-in kinds that set reads_served_traffic (metric, regression).
        return {
            "kind": "a canary rollback condition is a metric threshold or a regression against production"
        }
    if spec.metric not in SERVING_METRICS:
        known = ", ".join(SERVING_METRICS)
        return {"metric": f"canary conditions read served traffic: one of {known}"}
    return {}


def threshold_shortfall(operator_name: str, value: float | None, threshold: float | None) -> float | None:
    """Return how far value is from satisfying `value <operator> threshold` (0 when it does)."""
    if value is None or threshold is None or not math.isfinite(value):
        return None
    if operator_name in (">", ">="):
        return max(0.0, threshold - value) if not OPERATORS[operator_name](value, threshold) else 0.0
    if operator_name in ("<", "<="):
        return max(0.0, value - threshold) if not OPERATORS[operator_name](value, threshold) else 0.0
    if operator_name == "==":
        return abs(value - threshold)
    return 0.0 if value != threshold else None


def condition_shortfall(spec: ConditionSpec, result: ConditionResult) -> float | None:
    """Return how far one condition's result is from passing (None: unknown kind or no value)."""
    unit = CONDITION_KINDS.get(spec.kind)
    return unit.shortfall(spec, result) if unit is not None else None


def validate_metric_declared(spec: ConditionSpec, declared: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Return {"metric": message} when no recipe in scope logs the condition's metric.

    declared maps each recipe in the policy's scope to the metric names it declares; a condition
    on a metric none of them logs could never fire.
    """
    unit = CONDITION_KINDS.get(spec.kind)
    if unit is None or not unit.needs_metric or not spec.metric or not declared:
        return {}
    if any(spec.metric in names for names in declared.values()):
        return {}
    known = sorted({name for names in declared.values() for name in names})
    recipes = ", ".join(sorted(declared))
    return {"metric": f"unknown metric {spec.metric!r}: {recipes} log {', '.join(known)}"}


def evaluate_condition(spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
    """Check one (valid) condition against the context."""
    unit = CONDITION_KINDS.get(spec.kind)
    if unit is None:
        raise ValueError(f"unknown condition kind {spec.kind!r}")
    return unit.evaluate(spec, ctx)


def evaluate_all(
    specs: Sequence[ConditionSpec], ctx: EvaluationContext
) -> tuple[bool, list[ConditionResult]]:
    """Return (all passed, each result); an empty list of conditions passes."""
    results = [evaluate_condition(spec, ctx) for spec in specs]
    return all(r.passed for r in results), results
