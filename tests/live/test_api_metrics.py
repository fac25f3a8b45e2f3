"""GET /api/experiments/{id}/metrics: the chart's history, downsampled, and its bad parameters."""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import Resolver404, resolve

from experiments.live.api import experiment_metrics
from experiments.models import Experiment
from tests.live.helpers import log_points, run_for

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.live.urls_api")]


@pytest.fixture
def client(viewer: User) -> Client:
    """Return a client logged in as a person who may view experiments."""
    client = Client()
    client.force_login(viewer)
    return client


@pytest.fixture
def trained(experiment: Experiment) -> Experiment:
    """Return an experiment with 1000 steps of loss (one spike at 777) and 10 of val_loss."""
    run = run_for(experiment)
    log_points(run, "loss", [(s, 100.0 if s == 777 else 1.0 / (s + 1)) for s in range(1000)])
    log_points(run, "val_loss", [(s * 100, 0.5 if s != 3 else None) for s in range(10)])
    return experiment


def get(client: Client, experiment_id: int, **params: Any) -> Any:
    """Return the response of the history endpoint."""
    return client.get(f"/api/experiments/{experiment_id}/metrics", params)


def test_the_full_history_of_the_named_metrics_comes_back(client: Client, trained: Experiment) -> None:
    response = get(client, trained.pk, names="loss,val_loss", max_points=5000)
    assert response.status_code == 200
    body = response.json()
    assert body["experiment_id"] == trained.pk
    assert list(body["series"]) == ["loss", "val_loss"]
    loss = body["series"]["loss"]
    assert loss["steps"] == list(range(1000))
    assert loss["downsampled"] is False
    assert loss["total_points"] == 1000
    assert math.isclose(loss["values"][10], 1 / 11)
    assert body["last_step"] == 999


def test_a_logged_nan_comes_back_as_null_a_gap_in_the_chart(client: Client, trained: Experiment) -> None:
    values = get(client, trained.pk, names="val_loss").json()["series"]["val_loss"]["values"]
    assert values[3] is None
    assert values[2] == 0.5


def test_without_names_every_metric_comes_back(client: Client, trained: Experiment) -> None:
    assert sorted(get(client, trained.pk).json()["series"]) == ["loss", "val_loss"]


def test_a_long_series_is_downsampled_to_the_budget_and_keeps_its_spike(
    client: Client, trained: Experiment
) -> None:
    loss = get(client, trained.pk, names="loss", max_points=50).json()["series"]["loss"]
    assert loss["downsampled"] is True
    assert loss["total_points"] == 1000
    assert len(loss["steps"]) <= 50
    assert loss["steps"] == sorted(loss["steps"])
    assert 777 in loss["steps"]
    assert max(loss["values"]) == 100.0
    # The chart still spans the whole run.
    assert loss["steps"][0] == 0
    assert loss["steps"][-1] == 999


def test_since_step_returns_only_the_steps_after_it(client: Client, trained: Experiment) -> None:
    body = get(client, trained.pk, names="loss,val_loss", since_step=990).json()
    assert body["series"]["loss"]["steps"] == list(range(991, 1000))
    assert body["series"]["val_loss"]["steps"] == []
    assert body["last_step"] == 999


def test_nothing_new_since_the_last_step_gives_empty_series(client: Client, trained: Experiment) -> None:
    body = get(client, trained.pk, names="loss", since_step=999).json()
    assert body["series"]["loss"] == {"steps": [], "values": [], "downsampled": False, "total_points": 0}
    assert body["last_step"] is None


def test_a_zoomed_step_range_comes_back_at_full_resolution(client: Client, trained: Experiment) -> None:
    loss = get(client, trained.pk, names="loss", start_step=700, end_step=799, max_points=200).json()[
        "series"
    ]["loss"]
    assert loss["steps"] == list(range(700, 800))
    assert loss["downsampled"] is False


def test_an_unlogged_metric_is_an_empty_series(client: Client, trained: Experiment) -> None:
    series = get(client, trained.pk, names="accuracy").json()["series"]
    assert series == {"accuracy": {"steps": [], "values": [], "downsampled": False, "total_points": 0}}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"max_points": "0"}, "max_points"),
        ({"max_points": "2"}, "max_points"),
        ({"max_points": "many"}, "max_points"),
        ({"max_points": "10000000"}, "max_points"),
        ({"names": ""}, "names"),
        ({"names": " , "}, "names"),
        ({"since_step": "-1"}, "since_step"),
        ({"since_step": "1.5"}, "since_step"),
        ({"start_step": "x"}, "start_step"),
        ({"start_step": "10", "end_step": "5"}, "end_step"),
    ],
)
def test_a_bad_parameter_is_a_400_that_names_it(
    client: Client, trained: Experiment, params: dict[str, str], field: str
) -> None:
    response = get(client, trained.pk, **params)
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == field
    assert field in body["detail"]


def test_an_anonymous_caller_must_log_in(trained: Experiment) -> None:
    assert get(Client(), trained.pk).status_code == 401


def test_a_person_without_the_view_permission_is_answered_as_for_a_missing_experiment(
    stranger: User, trained: Experiment
) -> None:
    client = Client()
    client.force_login(stranger)
    existing, missing = get(client, trained.pk), get(client, trained.pk + 1000)
    assert existing.status_code == missing.status_code == 404
    assert existing.json() == missing.json()


def test_an_unknown_experiment_is_a_404(client: Client) -> None:
    response = get(client, 999999)
    assert response.status_code == 404
    assert "999999" in response.json()["detail"]


@pytest.mark.urls("crucible_ui.urls")
def test_the_history_endpoint_is_part_of_the_api() -> None:
    try:
        match = resolve("/api/experiments/1/metrics")
    except Resolver404:
        pytest.skip("crucible_ui/api.py does not mount experiments.live.api.router yet")
    assert match.url_name == experiment_metrics.__name__


def test_a_full_resolution_answer_holds_every_stored_value_exactly(
    client: Client, experiment: Experiment
) -> None:
    # On PostgreSQL the database writes these arrays itself: each float must survive the trip.
    awkward = [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, None, 1e-05, 123456789.123456789, 2.0]
    run = run_for(experiment)
    log_points(run, "loss", list(enumerate(awkward)))
    body = get(client, experiment.pk, names="loss", max_points=1000).json()
    series = body["series"]["loss"]
    assert series["steps"] == list(range(len(awkward)))
    assert series["values"] == awkward
    assert series["downsampled"] is False and series["total_points"] == len(awkward)
    assert body["last_step"] == len(awkward) - 1
