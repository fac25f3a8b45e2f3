"""Models cross no project boundary: a dpo base run, a pipeline edge, evaluation results and artifacts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client

from experiments.models import Dependency, EvaluationStatus, Experiment, RunEvaluation
from experiments.pipelines.services import dependencies_set
from experiments.runs.outputs import run_artifact_store
from experiments.services import experiment_create
from tests.projects.conftest import Side

FORM = {"priority_class": "batch", "priority": 5, "gpus": 0, "memory_gb": 0, "max_attempts": 3,
        "timeout_seconds": 60}  # fmt: skip


def _api_create(client: Client, body: dict[str, Any]) -> Any:
    return client.post("/api/experiments", json.dumps(body), content_type="application/json")


def test_a_dpo_base_run_of_another_project_is_refused_at_creation_like_a_missing_run(
    vision: Side, nlp: Side
) -> None:
    client = vision.client()
    foreign = nlp.run.pk
    response = _api_create(client, {"name": "leak", "recipe": "dpo", "config": {"base_run": foreign}})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "config", "base_run"],
            "msg": f"no run #{foreign} you can see",
            "type": "value_error",
        }
    ]
    missing = _api_create(client, {"name": "leak", "recipe": "dpo", "config": {"base_run": foreign + 1000}})
    assert missing.json()["detail"][0]["msg"] == f"no run #{foreign + 1000} you can see"
    page = client.post("/experiments/new/", {**FORM, "name": "leak", "recipe": "dpo",
                       "project": vision.project.pk, "config": json.dumps({"base_run": foreign})})  # fmt: skip
    assert page.status_code == 400
    assert page.context["form"].errors["config"] == [f"base_run: no run #{foreign} you can see"]
    with pytest.raises(ValidationError) as refused:
        experiment_create(name="leak", recipe="dpo", config={"base_run": foreign}, project=vision.project)
    assert refused.value.message_dict == {"config": [f"base_run: no run #{foreign} you can see"]}
    assert not Experiment.objects.filter(name="leak").exists()

    own = _api_create(client, {"name": "tuned", "recipe": "dpo", "config": {"base_run": vision.run.pk}})
    assert own.status_code == 201, own.content
    assert Experiment.objects.get(name="tuned").config["base_run"] == vision.run.pk


def test_a_dependency_on_another_projects_experiment_is_refused_like_a_missing_one(
    vision: Side, nlp: Side
) -> None:
    client = vision.client()
    foreign, missing = nlp.experiment.pk, nlp.experiment.pk + 1000
    for upstream in (foreign, missing):
        response = _api_create(
            client, {"name": "after", "recipe": "digits", "depends_on": [{"experiment_id": upstream}]}
        )
        assert response.status_code == 422
        assert response.json()["detail"] == [
            {"loc": ["body", "depends_on"], "msg": f"no experiment #{upstream}", "type": "value_error"}
        ]
        page = client.post("/experiments/new/", {**FORM, "name": "after", "recipe": "digits",
                           "project": vision.project.pk, "depends_on": str(upstream)})  # fmt: skip
        assert page.status_code == 400
        assert page.context["form"].errors["depends_on"] == [f"no experiment #{upstream}"]
        added = client.post(
            f"/api/experiments/{vision.experiment.pk}/dependencies",
            json.dumps({"experiment_id": upstream}), content_type="application/json",
        )  # fmt: skip
        assert added.status_code == 422
        assert added.json()["detail"][0] == {
            "loc": ["body", "depends_on"], "msg": f"no experiment #{upstream}", "type": "value_error"
        }  # fmt: skip
    # The other way round: a downstream the caller cannot see answers 404.
    reverse = client.post(
        f"/api/experiments/{nlp.experiment.pk}/dependencies",
        json.dumps({"experiment_id": vision.experiment.pk}), content_type="application/json",
    )  # fmt: skip
    assert reverse.status_code == 404
    assert not Experiment.objects.filter(name="after").exists()
    assert not Dependency.objects.exists()


def test_no_edge_joins_two_projects_even_for_someone_who_sees_both(vision: Side, nlp: Side) -> None:
    admin = User.objects.create_superuser("root", password="pw-root-123")
    with pytest.raises(ValidationError) as refused:
        dependencies_set(
            downstream=vision.experiment, wanted=[(nlp.experiment.pk, "succeeded", "cancel")], user=admin
        )
    assert refused.value.message_dict == {"depends_on": [f"no experiment #{nlp.experiment.pk}"]}
    # The model's own check, which the admin's dependency rows run.
    with pytest.raises(ValidationError) as on_model:
        Dependency(upstream=nlp.experiment, downstream=vision.experiment).full_clean()
    assert on_model.value.message_dict["upstream"] == [f"no experiment #{nlp.experiment.pk}"]
    same_project = experiment_create(name="vision upstream", recipe="digits", project=vision.project)
    edges = dependencies_set(downstream=vision.experiment, wanted=[(same_project.pk, "succeeded", "cancel")])
    assert [edge.upstream_id for edge in edges] == [same_project.pk]


def test_the_admin_refuses_a_dependency_row_on_another_projects_experiment(vision: Side, nlp: Side) -> None:
    admin = User.objects.create_superuser("root", password="pw-root-123")
    client = Client()
    client.force_login(admin)
    url = f"/admin/experiments/experiment/{vision.experiment.pk}/change/"
    form = client.get(url).context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(
        {"config": json.dumps(vision.experiment.config), "tags": "[]", "name": vision.experiment.name}
    )
    for formset in client.get(url).context["inline_admin_formsets"]:
        prefix = formset.formset.prefix
        data.update({f"{prefix}-TOTAL_FORMS": 0, f"{prefix}-INITIAL_FORMS": 0})
        if formset.formset.model is Dependency:
            data.update({f"{prefix}-TOTAL_FORMS": 1, f"{prefix}-0-upstream": nlp.experiment.pk,
                         f"{prefix}-0-after": "succeeded", f"{prefix}-0-on_upstream_failure": "cancel"})  # fmt: skip
            dependency_prefix = prefix
    response = client.post(url, data)
    assert response.status_code == 200  # the form again, with the error
    rows = [f for f in response.context["inline_admin_formsets"] if f.formset.prefix == dependency_prefix]
    assert rows[0].formset.errors[0]["upstream"] == [f"no experiment #{nlp.experiment.pk}"]
    assert not Dependency.objects.exists()


def test_the_pipeline_graph_and_api_never_name_another_projects_experiment(vision: Side, nlp: Side) -> None:
    # An edge left from before edges across projects were refused (written past the checks).
    Dependency.objects.create(upstream=nlp.experiment, downstream=vision.experiment)
    Dependency.objects.create(upstream=vision.experiment, downstream=nlp.experiment)
    client = vision.client()
    page = client.get(f"/experiments/{vision.experiment.pk}/").content.decode()
    assert nlp.experiment.name not in page
    assert f'data-experiment-id="{nlp.experiment.pk}"' not in page
    pipeline = client.get(f"/api/experiments/{vision.experiment.pk}").json()["pipeline"]
    assert pipeline == {"upstream": [], "downstream": []}
    admin = User.objects.create_superuser("root", password="pw-root-123")
    client.force_login(admin)  # sees both projects: the edges are real and shown
    pipeline = client.get(f"/api/experiments/{vision.experiment.pk}").json()["pipeline"]
    assert [e["experiment_id"] for e in pipeline["upstream"]] == [nlp.experiment.pk]


def test_evaluation_results_and_artifacts_stay_in_their_project(vision: Side, nlp: Side) -> None:
    run_artifact_store(run=vision.run, name="evaluation_report.json", data=b'{"accuracy": 0.97}')
    RunEvaluation.objects.create(
        run=vision.run, experiment=vision.experiment, status=EvaluationStatus.SUCCEEDED,
        metrics={"accuracy": 0.97}, eval_set="digits held-out",
    )  # fmt: skip
    url = f"/experiments/{vision.experiment.pk}/runs/{vision.run.pk}/artifacts/evaluation_report.json"
    own = vision.client()
    download = own.get(url)
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == b'{"accuracy": 0.97}'  # type: ignore[attr-defined]
    page = own.get(f"/experiments/{vision.experiment.pk}/").content.decode()
    assert "evaluation_report.json" in page
    outsider = nlp.client()
    assert outsider.get(url).status_code == 404
    assert outsider.get(f"/experiments/{vision.experiment.pk}/").status_code == 404
    assert outsider.get(f"/api/experiments/{vision.experiment.pk}").status_code == 404
    # Not through the outsider's own experiment either.
    other = f"/experiments/{nlp.experiment.pk}/runs/{vision.run.pk}/artifacts/evaluation_report.json"
    assert outsider.get(other).status_code == 404


def test_starting_a_pipeline_never_starts_or_reveals_another_projects_experiment(
    vision: Side, nlp: Side
) -> None:
    # An edge left from before edges across projects were refused (written past the checks).
    Dependency.objects.create(upstream=nlp.experiment, downstream=vision.experiment)
    outsider = nlp.client().post(
        f"/api/experiments/{vision.experiment.pk}/pipeline/start", "{}", content_type="application/json"
    )
    assert outsider.status_code == 404
    vision.experiment.refresh_from_db()
    assert vision.experiment.state == "pending"
    started = vision.client().post(
        f"/api/experiments/{vision.experiment.pk}/pipeline/start", "{}", content_type="application/json"
    )
    assert started.status_code == 200, started.content
    nlp.experiment.refresh_from_db()
    assert nlp.experiment.state == "pending"  # the other project's upstream was not started
