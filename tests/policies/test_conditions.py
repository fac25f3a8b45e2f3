"""The policy condition evaluator: every kind, edge values, NaN, and invalid definitions."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.policies.conditions import (
    ConditionKind,
    ConditionSpec,
    EvaluationContext,
    evaluate_all,
    evaluate_condition,
    validate_condition,
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
