"""The MLflow tracking API keeps to the caller's projects: another project's experiments and runs read as missing."""

from __future__ import annotations

from typing import Any

import pytest

from experiments.api.tokens import api_token_create
from experiments.models import MetricPoint, MlflowExperiment, MlflowRun, Role
from tests.mlflow.test_mlflow_api import Caller, _error
from tests.projects.conftest import Side, member


def _caller(user: Any) -> Caller:
    _, raw = api_token_create(user=user, name="mlflow")
    return Caller(f"Bearer {raw}")


def _group_with_run(api: Caller, name: str) -> tuple[str, str]:
    """Create an MLflow experiment and a run with one metric; return their ids."""
    created = api.post("experiments/create", {"name": name})
    assert created.status_code == 200, created.content
    experiment_id = created.json()["experiment_id"]
    run = api.post("runs/create", {"experiment_id": experiment_id, "run_name": "r1"})
    assert run.status_code == 200, run.content
    run_id = run.json()["run"]["info"]["run_id"]
    logged = api.post(
        "runs/log-batch",
        {"run_id": run_id, "metrics": [{"key": "loss", "value": 0.5, "timestamp": 1, "step": 0}]},
    )
    assert logged.status_code == 200, logged.content
    return experiment_id, run_id


@pytest.mark.django_db
def test_created_experiments_and_runs_join_the_callers_project(vision: Side) -> None:
    experiment_id, run_id = _group_with_run(_caller(vision.user), "vision-mlflow")
    assert MlflowExperiment.objects.get(pk=experiment_id).project_id == vision.project.pk
    assert MlflowRun.objects.get(run_uuid=run_id).experiment.project_id == vision.project.pk


@pytest.mark.django_db
def test_another_projects_experiment_answers_as_a_missing_one(vision: Side, nlp: Side) -> None:
    experiment_id, _ = _group_with_run(_caller(vision.user), "vision-mlflow")
    bob = _caller(nlp.user)
    missing = _error(bob.get("experiments/get", experiment_id="999999"), 404, "RESOURCE_DOES_NOT_EXIST")
    hidden = _error(bob.get("experiments/get", experiment_id=experiment_id), 404, "RESOURCE_DOES_NOT_EXIST")
    assert hidden == missing.replace("999999", experiment_id)
    _error(
        bob.get("experiments/get-by-name", experiment_name="vision-mlflow"), 404, "RESOURCE_DOES_NOT_EXIST"
    )
    listed = bob.post("experiments/search", {"view_type": "ALL"}).json()["experiments"]
    assert [e["name"] for e in listed] == ["Default"]
    _error(bob.post("runs/search", {"experiment_ids": [experiment_id]}), 404, "RESOURCE_DOES_NOT_EXIST")
    tagged = bob.post(
        "experiments/set-experiment-tag", {"experiment_id": experiment_id, "key": "k", "value": "v"}
    )
    _error(tagged, 404, "RESOURCE_DOES_NOT_EXIST")
    _error(bob.post("runs/create", {"experiment_id": experiment_id}), 404, "RESOURCE_DOES_NOT_EXIST")
    group = MlflowExperiment.objects.get(pk=experiment_id)
    assert group.tags == {} and group.runs.count() == 1
    # Its own member still sees all of it.
    alice = _caller(vision.user)
    assert {e["name"] for e in alice.post("experiments/search", {}).json()["experiments"]} == {
        "vision-mlflow",
        "Default",
    }


@pytest.mark.django_db
def test_another_projects_run_can_be_neither_read_nor_written(vision: Side, nlp: Side) -> None:
    _, run_id = _group_with_run(_caller(vision.user), "vision-mlflow")
    bob = _caller(nlp.user)
    _error(bob.get("runs/get", run_id=run_id), 404, "RESOURCE_DOES_NOT_EXIST")
    _error(bob.get("metrics/get-history", run_id=run_id, metric_key="loss"), 404, "RESOURCE_DOES_NOT_EXIST")
    point: dict[str, Any] = {"key": "loss", "value": 9.0, "timestamp": 2, "step": 1}
    writes: list[tuple[str, dict[str, Any]]] = [
        ("runs/log-batch", {"run_id": run_id, "metrics": [point]}),
        ("runs/log-metric", {"run_id": run_id, **point}),
        ("runs/log-parameter", {"run_id": run_id, "key": "lr", "value": "1"}),
        ("runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"}),
        ("runs/update", {"run_id": run_id, "status": "KILLED"}),
    ]
    for endpoint, body in writes:
        _error(bob.post(endpoint, body), 404, "RESOURCE_DOES_NOT_EXIST")
    run = MlflowRun.objects.get(run_uuid=run_id).run
    assert list(MetricPoint.objects.filter(run=run).values_list("value", flat=True)) == [0.5]
    assert "lr" not in run.params and "k" not in run.tags and run.status == "running"
    assert _caller(vision.user).get("runs/get", run_id=run_id).status_code == 200


@pytest.mark.django_db
def test_the_shared_default_experiment_lists_only_the_callers_projects_runs(vision: Side, nlp: Side) -> None:
    alice, bob = _caller(vision.user), _caller(nlp.user)
    mine = alice.post("runs/create", {"experiment_id": "0"}).json()["run"]["info"]["run_id"]
    theirs = bob.post("runs/create", {"experiment_id": "0"}).json()["run"]["info"]["run_id"]
    assert MlflowRun.objects.get(run_uuid=theirs).experiment.project_id == nlp.project.pk
    found = alice.post("runs/search", {"experiment_ids": ["0"]}).json()["runs"]
    assert [r["info"]["run_id"] for r in found] == [mine]


@pytest.mark.django_db
def test_a_viewer_reads_their_projects_runs_but_logs_nothing(vision: Side) -> None:
    _, run_id = _group_with_run(_caller(vision.user), "vision-mlflow")
    viewer = _caller(member("vera", vision.project, Role.VIEWER))
    assert viewer.get("runs/get", run_id=run_id).status_code == 200
    point = {"key": "loss", "value": 9.0, "timestamp": 2, "step": 1}
    _error(viewer.post("runs/log-metric", {"run_id": run_id, **point}), 403, "PERMISSION_DENIED")
    _error(viewer.post("runs/create", {"experiment_id": "0"}), 403, "PERMISSION_DENIED")
