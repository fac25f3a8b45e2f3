"""The history selector: one series per metric, the latest attempt winning where attempts overlap."""

from __future__ import annotations

import pytest

from experiments.live.series import metric_names, metric_series
from experiments.models import Experiment
from tests.live.helpers import log_points, run_for

pytestmark = pytest.mark.django_db


def test_a_resumed_attempt_replaces_the_steps_after_its_checkpoint(experiment: Experiment) -> None:
    first = run_for(experiment, attempt=1)
    log_points(first, "loss", [(s, 1.0) for s in range(0, 80)])
    second = run_for(experiment, attempt=2, resumed_from_step=50)
    log_points(second, "loss", [(s, 2.0) for s in range(50, 60)])
    loss = metric_series(experiment_id=experiment.pk, names=["loss"]).series["loss"]
    assert loss.steps == list(range(0, 60))
    # Step 50 was logged by both attempts: the later one wins; the first attempt's 60..79 are gone.
    assert loss.values == [1.0] * 50 + [2.0] * 10


def test_since_step_and_a_range_apply_to_the_stitched_series(experiment: Experiment) -> None:
    first = run_for(experiment, attempt=1)
    log_points(first, "loss", [(s, 1.0) for s in range(0, 80)])
    second = run_for(experiment, attempt=2, resumed_from_step=50)
    log_points(second, "loss", [(s, 2.0) for s in range(50, 60)])
    assert metric_series(experiment_id=experiment.pk, names=["loss"], since_step=55).series["loss"].steps == [
        56,
        57,
        58,
        59,
    ]
    zoomed = metric_series(experiment_id=experiment.pk, names=["loss"], start_step=48, end_step=51)
    assert zoomed.series["loss"].values == [1.0, 1.0, 2.0, 2.0]


def test_the_last_step_is_the_furthest_any_series_reached(experiment: Experiment) -> None:
    run = run_for(experiment)
    log_points(run, "loss", [(s, 1.0) for s in range(10)])
    log_points(run, "val_loss", [(20, 1.0)])
    result = metric_series(experiment_id=experiment.pk)
    assert result.last_step == 20
    assert list(result.series) == ["loss", "val_loss"]


def test_metric_names_lists_each_logged_metric_once(experiment: Experiment) -> None:
    run = run_for(experiment)
    log_points(run, "val_loss", [(1, 1.0), (2, 1.0)])
    log_points(run, "accuracy", [(1, 0.5)])
    assert metric_names(experiment_id=experiment.pk) == ["accuracy", "val_loss"]


def test_an_experiment_without_runs_has_empty_series(experiment: Experiment) -> None:
    result = metric_series(experiment_id=experiment.pk, names=["loss"])
    assert result.series["loss"].steps == []
    assert result.last_step is None
