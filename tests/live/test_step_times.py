"""GET /api/experiments/{id}/step-times: when each step was logged, for the charts' time axis."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from experiments.live.step_times import step_times
from experiments.models import Experiment, MetricPoint
from tests.live.helpers import log_points, run_for

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.live.urls_api")]


@pytest.fixture
def client(viewer: User) -> Client:
    """Return a client logged in as a person who may view experiments."""
    client = Client()
    client.force_login(viewer)
    return client


def test_it_answers_each_steps_wall_time_for_the_named_metric(client: Client, experiment: Experiment) -> None:
    run = run_for(experiment)
    log_points(run, "loss", [(s, 1.0) for s in range(5)])  # wall_time == step in the helper
    log_points(run, "val_loss", [(10, 0.5)])

    body = client.get(f"/api/experiments/{experiment.pk}/step-times", {"name": "loss"}).json()

    assert body == {
        "experiment_id": experiment.pk,
        "name": "loss",
        "steps": [0, 1, 2, 3, 4],
        "wall_times": [0.0, 1.0, 2.0, 3.0, 4.0],
    }
    # Without a name: the first metric by name.
    assert client.get(f"/api/experiments/{experiment.pk}/step-times").json()["name"] == "loss"


def test_a_step_trained_again_after_a_resume_keeps_its_later_time(experiment: Experiment) -> None:
    first = run_for(experiment)
    log_points(first, "loss", [(s, 1.0) for s in range(3)])
    again = run_for(experiment, attempt=2, resumed_from_step=1)
    MetricPoint.objects.create(
        run=again, experiment=experiment, name="loss", step=2, value=0.9, wall_time=500.0
    )

    assert step_times(experiment_id=experiment.pk, name="loss").wall_times == [0.0, 1.0, 500.0]


def test_a_long_run_is_thinned_evenly_and_keeps_its_last_step(experiment: Experiment) -> None:
    log_points(run_for(experiment), "loss", [(s, 1.0) for s in range(1000)])

    times = step_times(experiment_id=experiment.pk, name="loss", max_points=100)

    assert len(times.steps) == 101
    assert times.steps[:3] == [0, 10, 20]
    assert times.steps[-1] == 999


def test_an_experiment_without_metrics_or_at_all(client: Client, experiment: Experiment) -> None:
    empty = client.get(f"/api/experiments/{experiment.pk}/step-times").json()
    assert (empty["name"], empty["steps"], empty["wall_times"]) == ("", [], [])

    missing = client.get("/api/experiments/999999/step-times")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "No experiment #999999."}
