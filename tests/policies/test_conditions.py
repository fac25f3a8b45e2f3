"""The policy condition evaluator: every kind, edge values, NaN, and invalid definitions."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.policies.conditions import (
    CONDITION_KINDS,
    ConditionKind,
    ConditionKindUnit,
    ConditionResult,
    ConditionSpec,
    EvaluationContext,
    condition_kind_register,
    evaluate_all,
    evaluate_condition,
    validate_condition,
    validate_serving_condition,
)


def series(*values: float | None, start: int = 0) -> list[tuple[int, float | None]]:
    return [(start + i, v) for i, v in enumerate(values)]


def check(spec: ConditionSpec, **ctx: object) -> tuple[bool, float | None]:
    assert validate_condition(spec) == {}
    result = evaluate_condition(spec, EvaluationContext(**ctx))  # type: ignore[arg-type]
    return result.passed, result.value


@pytest.mark.parametrize(
    ("operator", "threshold", "expected"),
    [
        (">", 0.9, True),
        (">", 0.95, False),
        (">=", 0.95, True),
        ("<", 0.95, False),
        ("<=", 0.95, True),
        ("==", 0.95, True),
        ("!=", 0.95, False),
    ],
)
def test_metric_threshold_operators_at_the_edge(operator: str, threshold: float, expected: bool) -> None:
    spec = ConditionSpec(ConditionKind.METRIC, metric="accuracy", operator=operator, threshold=threshold)
    assert check(spec, series={"accuracy": series(0.5, 0.95)}) == (expected, 0.95)


def test_metric_best_follows_the_direction_of_the_metric() -> None:
    loss = ConditionSpec(
        ConditionKind.METRIC, metric="val_loss", aggregate="best", operator="<", threshold=0.2
    )
    assert check(loss, series={"val_loss": series(0.5, 0.1, 0.4)}) == (True, 0.1)
    acc = ConditionSpec(
        ConditionKind.METRIC, metric="accuracy", aggregate="best", operator=">", threshold=0.8
    )
    assert check(acc, series={"accuracy": series(0.5, 0.9, 0.7)}) == (True, 0.9)


def test_metric_mean_of_the_last_k_points() -> None:
    spec = ConditionSpec(
        ConditionKind.METRIC, metric="loss", aggregate="mean", window=2, operator="<", threshold=1.0
    )
    passed, value = check(spec, series={"loss": series(9.0, 1.0, 0.5)})
    assert passed and value == pytest.approx(0.75)


def test_metric_with_nothing_logged_fails_and_says_so() -> None:
    spec = ConditionSpec(ConditionKind.METRIC, metric="accuracy", operator=">", threshold=0.9)
    result = evaluate_condition(spec, EvaluationContext())
    assert not result.passed and "no finite accuracy" in result.detail


def test_latest_nan_does_not_pass_a_threshold() -> None:
    spec = ConditionSpec(ConditionKind.METRIC, metric="loss", operator="<", threshold=1.0)
    assert check(spec, series={"loss": series(0.5, None)}) == (False, None)


def test_regression_against_production_is_relative() -> None:
    spec = ConditionSpec(ConditionKind.REGRESSION, metric="loss", threshold=0.05)
    assert check(spec, series={"loss": series(0.104)}, production_metrics={"loss": 0.1})[0]  # 4% worse
    assert not check(spec, series={"loss": series(0.106)}, production_metrics={"loss": 0.1})[0]  # 6% worse
    acc = ConditionSpec(ConditionKind.REGRESSION, metric="accuracy", threshold=0.05)
    assert not check(acc, series={"accuracy": series(0.85)}, production_metrics={"accuracy": 0.95})[0]
    assert check(acc, series={"accuracy": series(0.99)}, production_metrics={"accuracy": 0.95})[0]


def test_regression_passes_when_there_is_no_production_model() -> None:
    spec = ConditionSpec(ConditionKind.REGRESSION, metric="loss", threshold=0.05)
    result = evaluate_condition(spec, EvaluationContext(series={"loss": series(0.3)}))
    assert result.passed and "no production model" in result.detail


def test_not_finite_fires_on_nan_only() -> None:
    spec = ConditionSpec(ConditionKind.NOT_FINITE, metric="loss")
    assert check(spec, series={"loss": series(0.5, None)})[0]
    assert not check(spec, series={"loss": series(0.5, 0.4)})[0]
    assert not check(spec, series={})[0]


def test_divergence_compares_with_the_moving_average() -> None:
    spec = ConditionSpec(ConditionKind.DIVERGENCE, metric="loss", window=3, threshold=3.0)
    assert check(spec, series={"loss": series(1.0, 1.0, 1.0, 3.5)})[0]
    assert not check(spec, series={"loss": series(1.0, 1.0, 1.0, 2.9)})[0]
    assert not check(spec, series={"loss": series(1.0, 9.0)})[0]  # too few points to judge


def test_plateau_needs_patience_and_min_delta() -> None:
    spec = ConditionSpec(ConditionKind.PLATEAU, metric="val_loss", window=3, threshold=0.01)
    flat = series(1.0, 0.5, 0.5, 0.499, 0.5, 0.5)
    assert check(spec, series={"val_loss": flat})[0]
    improving = series(1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
    assert not check(spec, series={"val_loss": improving})[0]
    assert not check(spec, series={"val_loss": series(1.0, 1.0)})[0]  # not enough steps yet


def test_drift_older_than_budget_and_concurrency() -> None:
    drift = ConditionSpec(ConditionKind.DRIFT, operator=">", threshold=0.15)
    assert check(drift, drift_score=0.2) == (True, 0.2)
    assert not check(drift, drift_score=0.1)[0]
    assert not check(drift)[0]

    now = datetime(2026, 1, 2, tzinfo=UTC)
    older = ConditionSpec(ConditionKind.OLDER_THAN, threshold=24)
    assert check(older, last_retrain_at=now - timedelta(hours=25), now=now)[0]
    assert not check(older, last_retrain_at=now - timedelta(hours=23), now=now)[0]
    assert check(older, now=now)[0]  # never retrained

    budget = ConditionSpec(ConditionKind.BUDGET, operator="<=")
    assert check(budget, spend_today=90.0, estimated_cost=9.0, daily_budget=100.0)[0]
    assert not check(budget, spend_today=95.0, estimated_cost=9.0, daily_budget=100.0)[0]

    runs = ConditionSpec(ConditionKind.CONCURRENCY, operator="<", threshold=3)
    assert check(runs, runs_in_flight=2)[0] and not check(runs, runs_in_flight=3)[0]


def test_all_conditions_must_pass_and_each_is_explained() -> None:
    specs = [
        ConditionSpec(ConditionKind.METRIC, metric="accuracy", operator=">", threshold=0.9),
        ConditionSpec(ConditionKind.METRIC, metric="f1", operator=">", threshold=0.85),
    ]
    ok, results = evaluate_all(specs, EvaluationContext(series={"accuracy": series(0.95), "f1": series(0.8)}))
    assert not ok
    assert [r.passed for r in results] == [True, False]
    assert results[1].as_dict()["condition"] == "latest f1 > 0.85"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (ConditionSpec("teleport"), "kind"),
        (ConditionSpec(ConditionKind.METRIC, metric="", operator=">", threshold=1), "metric"),
        (ConditionSpec(ConditionKind.METRIC, metric="acc", operator="=>", threshold=1), "operator"),
        (ConditionSpec(ConditionKind.METRIC, metric="acc", operator=">", threshold=None), "threshold"),
        (ConditionSpec(ConditionKind.METRIC, metric="acc", operator=">", threshold=math.nan), "threshold"),
        (
            ConditionSpec(ConditionKind.METRIC, metric="acc", aggregate="median", operator=">", threshold=1),
            "aggregate",
        ),
        (
            ConditionSpec(ConditionKind.METRIC, metric="acc", aggregate="mean", operator=">", threshold=1),
            "window",
        ),
        (ConditionSpec(ConditionKind.DIVERGENCE, metric="loss", window=3, threshold=0.5), "threshold"),
        (ConditionSpec(ConditionKind.PLATEAU, metric="loss", threshold=0.1), "window"),
        (ConditionSpec(ConditionKind.REGRESSION, metric="loss", threshold=-0.1), "threshold"),
        (ConditionSpec(ConditionKind.METRIC, metric="acc", operator=">", threshold=1, better="up"), "better"),
    ],
)
def test_invalid_definitions_are_refused_on_the_field(spec: ConditionSpec, field: str) -> None:
    assert field in validate_condition(spec)


@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=50))
def test_the_evaluator_never_crashes_on_any_series(values: list[float | None]) -> None:
    ctx = EvaluationContext(series={"loss": series(*values)}, production_metrics={"loss": 0.0})
    for spec in (
        ConditionSpec(ConditionKind.METRIC, metric="loss", aggregate="best", operator="<", threshold=1),
        ConditionSpec(
            ConditionKind.METRIC, metric="loss", aggregate="mean", window=5, operator="<", threshold=1
        ),
        ConditionSpec(ConditionKind.REGRESSION, metric="loss", threshold=0.05),
        ConditionSpec(ConditionKind.NOT_FINITE, metric="loss"),
        ConditionSpec(ConditionKind.DIVERGENCE, metric="loss", window=3, threshold=3),
        ConditionSpec(ConditionKind.PLATEAU, metric="loss", window=4, threshold=0.0),
    ):
        evaluate_condition(spec, ctx)


BUILT_IN_KINDS = [
    "metric",
    "regression",
    "not_finite",
    "divergence",
    "plateau",
    "drift",
    "older_than",
    "budget",
    "concurrency",
]


def test_every_kind_is_a_registered_unit_with_help_and_a_valid_example() -> None:
    names = {value for key, value in vars(ConditionKind).items() if key.isupper() and isinstance(value, str)}
    assert names == set(CONDITION_KINDS) == set(BUILT_IN_KINDS)
    for name, unit in CONDITION_KINDS.items():
        assert unit.name == name
        assert unit.label.strip() and unit.help.strip() and unit.example, name
        example = unit.example_spec()
        assert example.kind == name
        assert validate_condition(example) == {}, name
        assert unit.example_text().startswith(example.describe()), name
        evaluate_condition(example, EvaluationContext())  # an empty context never crashes


def test_choices_come_from_the_registry_in_the_migrated_order() -> None:
    # PolicyCondition.kind's choices: a new order or label would be a migration.
    assert [name for name, _ in ConditionKind.CHOICES] == BUILT_IN_KINDS
    assert dict(ConditionKind.CHOICES)["metric"] == CONDITION_KINDS["metric"].label


def test_only_served_traffic_kinds_may_be_canary_rollback_conditions() -> None:
    serving = {name for name, unit in CONDITION_KINDS.items() if unit.reads_served_traffic}
    assert serving == {"metric", "regression"}
    drift = ConditionSpec(ConditionKind.DRIFT, operator=">", threshold=0.1)
    assert "kind" in validate_serving_condition(drift)
    assert "metric" in validate_serving_condition(
        ConditionSpec(ConditionKind.METRIC, metric="loss", operator=">", threshold=1)
    )
    rate = ConditionSpec(ConditionKind.METRIC, metric="error_rate", operator=">", threshold=0.05)
    assert validate_serving_condition(rate) == {}


def test_unknown_kinds_name_the_known_ones_and_are_not_evaluated() -> None:
    error = validate_condition(ConditionSpec("teleport"))["kind"]
    assert all(name in error for name in BUILT_IN_KINDS)
    with pytest.raises(ValueError, match="teleport"):
        evaluate_condition(ConditionSpec("teleport"), EvaluationContext())


def test_a_kind_registered_in_one_place_validates_evaluates_and_describes_itself() -> None:
    try:

        @condition_kind_register
        class RunsAtLeast(ConditionKindUnit):
            name = "runs_at_least"
            label = "At least N runs in flight"
            help = "Holds when at least threshold runs are in flight."
            example = {"threshold": 2}

            def describe(self, spec: ConditionSpec) -> str:
                return f"at least {spec.threshold:g} runs in flight"

            def evaluate(self, spec: ConditionSpec, ctx: EvaluationContext) -> ConditionResult:
                assert spec.threshold is not None
                passed = ctx.runs_in_flight >= spec.threshold
                return ConditionResult(self.describe(spec), passed, float(ctx.runs_in_flight), "counted")

        spec = ConditionSpec("runs_at_least", threshold=2)
        assert validate_condition(spec) == {}
        assert "threshold" in validate_condition(ConditionSpec("runs_at_least"))  # shared checks apply
        assert "better" in validate_condition(ConditionSpec("runs_at_least", threshold=2, better="up"))
        ok, results = evaluate_all([spec], EvaluationContext(runs_in_flight=3))
        assert ok and results[0].as_dict()["condition"] == "at least 2 runs in flight"
        assert not evaluate_condition(spec, EvaluationContext(runs_in_flight=1)).passed
        assert ("runs_at_least", "At least N runs in flight") in ConditionKind.CHOICES
        with pytest.raises(ValueError, match="registered twice"):
            condition_kind_register(RunsAtLeast)
    finally:
        CONDITION_KINDS.pop("runs_at_least", None)
    assert "kind" in validate_condition(ConditionSpec("runs_at_least", threshold=2))
    assert [name for name, _ in ConditionKind.CHOICES] == BUILT_IN_KINDS


def test_the_policy_admin_lists_every_kind_from_the_registry() -> None:
    from control.policies.admin import condition_help

    rows = condition_help()
    assert [row["name"] for row in rows] == BUILT_IN_KINDS
    metric = rows[0]
    assert metric["label"] == CONDITION_KINDS["metric"].label
    assert metric["example"] == (
        "latest accuracy > 0.9: metric accuracy, aggregate latest, operator >, threshold 0.9"
    )


@pytest.mark.parametrize(
    ("kind", "fields", "message"),
    [
        (ConditionKind.REGRESSION, {"metric": "loss"}, "the allowed relative regression cannot be negative"),
        (ConditionKind.PLATEAU, {"metric": "val_loss", "window": 10}, "cannot be negative"),
        (ConditionKind.OLDER_THAN, {}, "cannot be negative"),
    ],
)
def test_a_negative_margin_improvement_or_age_is_a_threshold_error(
    kind: str, fields: dict[str, object], message: str
) -> None:
    assert validate_condition(ConditionSpec(kind, threshold=0.0, **fields)) == {}  # type: ignore[arg-type]
    errors = validate_condition(ConditionSpec(kind, threshold=-0.01, **fields))  # type: ignore[arg-type]
    assert list(errors) == ["threshold"] and errors["threshold"].startswith(message)


def test_a_metric_threshold_may_be_negative() -> None:
    spec = ConditionSpec(ConditionKind.METRIC, metric="reward", operator=">", threshold=-5.0)
    assert validate_condition(spec) == {}
