"""The API creates pipelines: depends_on at creation, edges added and removed, cycles refused (422)."""

from __future__ import annotations

from typing import Any

from django.test import Client

from experiments.models import Dependency
from tests.api.conftest import MakeExperiment, post_json

URL = "/api/experiments"


def _errors(response: Any) -> dict[tuple[str | int, ...], str]:
    assert response.status_code == 422, response.content
    return {tuple(error["loc"]): error["msg"] for error in response.json()["detail"]}


def test_a_distill_experiment_created_with_depends_on_takes_its_teacher(
    api: Client, make_experiment: MakeExperiment
) -> None:
    teacher = make_experiment(name="teacher")
    body = {
        "name": "student",
        "recipe": "distill",
        "depends_on": [{"experiment_id": teacher.pk, "on_upstream_failure": "hold"}],
    }
    response = post_json(api, URL, body)
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["config"]["teacher_experiment"] == teacher.pk
    [edge] = data["pipeline"]["upstream"]
    assert (edge["experiment_id"], edge["after"], edge["on_upstream_failure"], edge["met"]) == (
        teacher.pk,
        "succeeded",
        "hold",
        False,
    )
    teacher_view = api.get(f"{URL}/{teacher.pk}").json()
    assert [e["experiment_id"] for e in teacher_view["pipeline"]["downstream"]] == [data["id"]]


def test_an_unknown_upstream_is_refused_and_nothing_is_created(
    api: Client, make_experiment: MakeExperiment
) -> None:
    response = post_json(api, URL, {"name": "x", "recipe": "digits", "depends_on": [{"experiment_id": 999}]})
    assert _errors(response) == {("body", "depends_on"): "no experiment #999"}
    assert not Dependency.objects.exists()


def test_a_cycle_is_refused_at_depends_on(api: Client, make_experiment: MakeExperiment) -> None:
    a = make_experiment(name="a")
    created = post_json(api, URL, {"name": "b", "recipe": "digits", "depends_on": [{"experiment_id": a.pk}]})
    b_id = created.json()["id"]
    response = post_json(api, f"{URL}/{a.pk}/dependencies", {"experiment_id": b_id})
    errors = _errors(response)
    assert "would close a cycle" in errors[("body", "depends_on")]
    assert Dependency.objects.count() == 1


def test_removing_an_edge_through_the_api(api: Client, make_experiment: MakeExperiment) -> None:
    a, b = make_experiment(name="a"), make_experiment(name="b")
    added = post_json(api, f"{URL}/{b.pk}/dependencies", {"experiment_id": a.pk, "after": "finished"})
    assert added.status_code == 201, added.content
    edge_id = added.json()["pipeline"]["upstream"][0]["edge_id"]
    removed = api.delete(f"{URL}/{b.pk}/dependencies/{edge_id}")
    assert removed.status_code == 200
    assert removed.json()["pipeline"]["upstream"] == []
    assert api.delete(f"{URL}/{b.pk}/dependencies/{edge_id}").status_code == 404


def test_starting_a_pipeline_queues_the_teacher_and_the_student_waits(
    api: Client, make_experiment: MakeExperiment
) -> None:
    teacher = make_experiment(name="teacher")
    created = post_json(
        api, URL, {"name": "student", "recipe": "distill", "depends_on": [{"experiment_id": teacher.pk}]}
    )
    student_id = created.json()["id"]
    response = post_json(api, f"{URL}/{student_id}/pipeline/start")
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "waiting"
    assert api.get(f"{URL}/{teacher.pk}").json()["state"] == "queued"
    again = post_json(api, f"{URL}/{student_id}/pipeline/start")
    assert again.status_code == 409 and "waiting on its dependencies" in again.json()["detail"]
