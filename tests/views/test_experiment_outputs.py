"""The experiment page's stages, held-out evaluation and artifacts, and the artifact download's access."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from experiments.choices import RunStatus
from experiments.models import EvaluationStatus, Experiment, Run, RunEvaluation
from experiments.runs.outputs import run_artifact_store, run_stage_record
from experiments.runs.services import run_create

pytestmark = pytest.mark.django_db

REPORT = '{"metrics": {"accuracy": 0.97}}\n'


@pytest.fixture
def finished(make_experiment: Callable[..., Experiment]) -> tuple[Experiment, Run]:
    """An experiment in evaluating whose run recorded two stages, an artifact and its evaluation."""
    experiment = make_experiment("outputs", state="evaluating")
    run = run_create(experiment=experiment, worker="w1", device="cpu", task_id="")
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED)
    run_stage_record(run_id=run.pk, name="load_data", seconds=0.25)
    run_stage_record(run_id=run.pk, name="train", seconds=12.5)
    run_artifact_store(run=run, name="evaluation_report.json", data=REPORT, kind="report")
    RunEvaluation.objects.create(
        experiment=experiment,
        run=run,
        status=EvaluationStatus.SUCCEEDED,
        checkpoint_sha256="0" * 64,
        eval_set="digits validation split (seed 0, 20%)",
        metrics={"accuracy": 0.97, "ece": 0.031, "auc_ovr": None},
    )
    return experiment, run


def _url(experiment: Experiment, run: Run, name: str) -> str:
    return reverse("experiments:artifact_download", args=[experiment.pk, run.pk, name])


def test_the_page_shows_the_stage_checklist_the_evaluation_and_the_artifacts(
    researcher_client: Client, finished: tuple[Experiment, Run]
) -> None:
    experiment, run = finished
    page = researcher_client.get(experiment.get_absolute_url()).content.decode()
    assert 'data-stage="train" data-done="true"' in page and "12.50 s" in page
    assert 'data-stage="export" data-done="false"' in page
    assert 'data-stage="evaluate" data-done="false"' in page
    assert 'data-metric="eval/accuracy"' in page and "0.9700" in page and "0.0310" in page
    assert 'data-metric="eval/auc_ovr"' in page and "undefined" in page
    assert "digits validation split (seed 0, 20%)" in page
    assert _url(experiment, run, "evaluation_report.json") in page


def test_a_person_who_may_see_the_experiment_downloads_the_artifact(
    researcher_client: Client, finished: tuple[Experiment, Run]
) -> None:
    experiment, run = finished
    response = researcher_client.get(_url(experiment, run, "evaluation_report.json"))
    assert response.status_code == 200
    assert b"".join(response.streaming_content).decode() == REPORT  # type: ignore[attr-defined]
    assert 'attachment; filename="evaluation_report.json"' in response["Content-Disposition"]


def test_someone_who_may_not_see_experiments_gets_404(
    client: Client, make_user: Callable[..., User], finished: tuple[Experiment, Run]
) -> None:
    experiment, run = finished
    client.force_login(make_user("outsider"))
    assert client.get(_url(experiment, run, "evaluation_report.json")).status_code == 404


def test_an_anonymous_visitor_is_sent_to_log_in(client: Client, finished: tuple[Experiment, Run]) -> None:
    experiment, run = finished
    response = client.get(_url(experiment, run, "evaluation_report.json"))
    assert response.status_code == 302 and "/login" in response["Location"]


@pytest.mark.parametrize("name", ["..", ".hidden", "a..b", "%2e%2e%2fsettings.py", "..%2F..%2Fdb.sqlite3"])
def test_names_that_could_leave_the_runs_folder_are_refused(
    researcher_client: Client, finished: tuple[Experiment, Run], name: str
) -> None:
    experiment, run = finished
    url = reverse("experiments:artifact_download", args=[experiment.pk, run.pk, "x"])[: -len("x")] + name
    assert researcher_client.get(url).status_code == 404


def test_an_artifact_is_found_only_under_its_own_experiment(
    researcher_client: Client, make_experiment: Callable[..., Experiment], finished: tuple[Experiment, Run]
) -> None:
    _, run = finished
    other = make_experiment("other")
    assert researcher_client.get(_url(other, run, "evaluation_report.json")).status_code == 404


def test_a_bad_artifact_name_is_refused_before_anything_is_written(finished: tuple[Experiment, Run]) -> None:
    _, run = finished
    with pytest.raises(ValueError, match="artifact name"):
        run_artifact_store(run=run, name="../escape.txt", data="x")
    assert not run.artifacts.filter(name="../escape.txt").exists()
