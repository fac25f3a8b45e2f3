"""Pipeline routes of the API keep to the caller's projects: another project's experiment answers as a missing one."""

from __future__ import annotations

import json

import pytest

from experiments.models import Dependency, Experiment
from experiments.services import experiment_create
from tests.projects.conftest import Side

pytestmark = pytest.mark.django_db


def test_another_projects_experiment_gets_no_dependency_and_no_pipeline_start(
    vision: Side, nlp: Side
) -> None:
    upstream = experiment_create(name="nlp-upstream", recipe="digits", project=nlp.project)
    client = vision.client()
    target = nlp.experiment.pk
    body = json.dumps({"experiment_id": upstream.pk})
    added = client.post(f"/api/experiments/{target}/dependencies", body, content_type="application/json")
    assert added.status_code == 404
    assert (
        client.post(
            f"/api/experiments/{target}/pipeline/start", "{}", content_type="application/json"
        ).status_code
        == 404
    )
    assert Experiment.objects.get(pk=target).state == "pending"
    # Its own member may (the same requests, so only the project told them apart).
    own = nlp.client()
    added = own.post(f"/api/experiments/{target}/dependencies", body, content_type="application/json")
    assert added.status_code == 201, added.content
    edge = Dependency.objects.get(downstream_id=target)
    assert client.delete(f"/api/experiments/{target}/dependencies/{edge.pk}").status_code == 404
    assert Dependency.objects.filter(pk=edge.pk).exists()


def test_the_pipeline_button_and_artifact_download_hide_another_projects_experiment(
    vision: Side, nlp: Side
) -> None:
    client = vision.client()
    target = nlp.experiment.pk
    assert client.post(f"/experiments/{target}/pipeline/start/").status_code == 404
    assert Experiment.objects.get(pk=target).state == "pending"
    download = f"/experiments/{target}/runs/{nlp.run.pk}/artifacts/model.pt"
    missing = f"/experiments/{target + 1000}/runs/{nlp.run.pk}/artifacts/model.pt"
    assert client.get(download).status_code == client.get(missing).status_code == 404
    # The member's own button works (the page redirects back with what it started).
    assert nlp.client().post(f"/experiments/{target}/pipeline/start/").status_code in (200, 302)
    assert Experiment.objects.get(pk=target).state == "queued"
