"""Pipelines on the pages: the create form adds dependencies (cycles refused by field); the page draws them."""

from __future__ import annotations

import json
import re
from typing import Any

from django.test import Client
from django.urls import reverse

from experiments.actors import Actor
from experiments.models import Dependency, Experiment
from experiments.pipelines.services import dependency_add
from experiments.services import experiment_create, experiment_transition


def _form(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "student",
        "recipe": "distill",
        "config": json.dumps({"epochs": 5}),
        "priority_class": "batch",
        "priority": 5,
        "gpus": 0,
        "memory_gb": 0,
        "max_attempts": 2,
        "timeout_seconds": 600,
        "depends_after": "succeeded",
        "on_upstream_failure": "hold",
    }
    data.update(overrides)
    return data


def _field_errors(html: str, field: str) -> list[str]:
    block = re.search(rf'<ul class="errorlist field-errors" id="errors-{field}"[^>]*>(.*?)</ul>', html, re.S)
    return re.findall(r"<li>(.*?)</li>", block.group(1)) if block else []


def test_the_form_creates_a_student_that_depends_on_its_teacher(researcher_client: Client) -> None:
    teacher = experiment_create(name="teacher", recipe="digits")
    response = researcher_client.post(reverse("experiments:create"), _form(depends_on=f"#{teacher.pk}"))
    assert response.status_code == 302
    student = Experiment.objects.get(name="student")
    edge = Dependency.objects.get()
    assert (edge.upstream, edge.downstream, edge.after, edge.on_upstream_failure) == (
        teacher,
        student,
        "succeeded",
        "hold",
    )
    assert student.config["teacher_experiment"] == teacher.pk


def test_an_unknown_upstream_is_shown_by_the_field_and_nothing_is_saved(researcher_client: Client) -> None:
    response = researcher_client.post(reverse("experiments:create"), _form(depends_on="4242"))
    assert response.status_code == 400
    assert _field_errors(response.content.decode(), "depends_on") == ["no experiment #4242"]
    assert not Experiment.objects.exists()


def test_a_word_is_not_an_id(researcher_client: Client) -> None:
    response = researcher_client.post(reverse("experiments:create"), _form(depends_on="teacher"))
    assert "is not an experiment id" in _field_errors(response.content.decode(), "depends_on")[0]


def test_the_page_draws_the_pipeline_both_ways_with_states_and_conditions(researcher_client: Client) -> None:
    teacher = experiment_create(name="teacher", recipe="digits")
    student = experiment_create(name="student", recipe="distill")
    judge = experiment_create(name="judge", recipe="digits")
    dependency_add(downstream=student, upstream=teacher, on_upstream_failure="hold")
    dependency_add(downstream=judge, upstream=student, after="finished")
    experiment_transition(experiment_id=student.pk, event="queue", actor=Actor.system("test"))
    html = researcher_client.get(reverse("experiments:detail", args=[student.pk])).content.decode()
    svg = re.search(r'<svg class="pipeline-graph".*?</svg>', html, re.S)
    assert svg is not None
    nodes = dict(re.findall(r'data-experiment-id="(\d+)" data-state="(\w+)"', svg.group(0)))
    assert nodes == {str(teacher.pk): "pending", str(student.pk): "waiting", str(judge.pk): "pending"}
    rows = re.findall(r"<tr data-edge-id=\"\d+\"><td>(.*?)</td>.*?<td>after (\w+)</td><td>(\w+)", html, re.S)
    assert rows == [("waits for", "succeeded", "hold"), ("needed by", "finished", "cancel")]


def test_a_page_without_dependencies_says_so(researcher_client: Client) -> None:
    alone = experiment_create(name="alone", recipe="digits")
    html = researcher_client.get(reverse("experiments:detail", args=[alone.pk])).content.decode()
    assert 'id="pipeline-card"' in html and "No dependencies" in html
