"""In a real browser: the experiment page's stage checklist, held-out evaluation and artifact download."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from experiments.actors import Actor
from experiments.choices import RunStatus
from experiments.models import EvaluationStatus, Experiment, Run, RunEvaluation
from experiments.permissions import researcher_group_ensure
from experiments.runs.outputs import run_artifact_store, run_stage_record
from experiments.runs.services import run_create
from experiments.services import experiment_create, experiment_transition

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MATRIX = "true\\predicted,0,1\n0,5,1\n1,0,6\n"


@pytest.fixture
def evaluated(transactional_db: Any) -> Experiment:
    """A digits experiment whose run completed its stages, saved artifacts and was evaluated."""
    user = User.objects.create_user("ana", password="pw-ana-123")
    user.groups.add(researcher_group_ensure())
    experiment = experiment_create(name="evaluated digits", recipe="digits", config={"epochs": 1})
    for event in ("queue", "start", "complete"):
        experiment_transition(experiment_id=experiment.pk, event=event, actor=Actor.system("test"))
    run = run_create(experiment=experiment, worker="w1", device="cpu", task_id="")
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED)
    for name, seconds in (("load_data", 0.2), ("train", 8.0), ("export", 0.1), ("evaluate", 0.4)):
        run_stage_record(run_id=run.pk, name=name, seconds=seconds)
    run_artifact_store(run=run, name="confusion_matrix.csv", data=MATRIX, kind="table")
    RunEvaluation.objects.create(
        experiment=experiment,
        run=run,
        status=EvaluationStatus.SUCCEEDED,
        checkpoint_sha256="0" * 64,
        eval_set="digits validation split (seed 0, 20%)",
        metrics={"accuracy": 0.9583, "macro_f1": 0.9571, "ece": 0.0212},
    )
    return experiment


def test_the_page_shows_stages_evaluation_and_downloads_an_artifact(
    page: Page, live_server: Any, evaluated: Experiment, tmp_path: Path
) -> None:
    page.goto(live_server.url + evaluated.get_absolute_url())
    expect(page).to_have_url(re.compile(r"/login/\?next="))
    page.get_by_label("Username").fill("ana")
    page.get_by_label("Password").fill("pw-ana-123")
    page.get_by_role("button", name="Log in").click()

    checklist = page.locator("#stage-checklist li")
    expect(checklist).to_have_count(4)
    expect(checklist.nth(1)).to_contain_text("train")
    expect(checklist.nth(1)).to_contain_text("8.00 s")
    expect(page.locator('#stage-checklist li[data-done="true"]')).to_have_count(4)
    expect(page.locator("#evaluation-status")).to_have_text("Succeeded")
    expect(page.locator('#evaluation-metrics tr[data-metric="eval/accuracy"]')).to_contain_text("0.9583")
    expect(page.locator('#evaluation-metrics tr[data-metric="eval/ece"]')).to_contain_text("0.0212")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="confusion_matrix.csv").click()
    download = download_info.value
    assert download.suggested_filename == "confusion_matrix.csv"
    saved = tmp_path / "matrix.csv"
    download.save_as(saved)
    assert saved.read_text() == MATRIX
