"""Experiment admin: dependency rows are added through the pipeline service; a cycle is a field error."""

from __future__ import annotations

from typing import Any

from django.test import Client
from django.urls import reverse

from experiments.models import Dependency, Experiment
from experiments.pipelines.services import dependency_add
from experiments.services import experiment_create
from tests.admin.conftest import change_form_data


def _submit_with_dependency(client: Client, downstream: Experiment, upstream: Experiment) -> Any:
    url = reverse("admin:experiments_experiment_change", args=[downstream.pk])
    data = change_form_data(client.get(url).content.decode())
    prefix = "upstream_edges"
    data.update(
        {
            f"{prefix}-TOTAL_FORMS": "1",
            f"{prefix}-0-upstream": str(upstream.pk),
            f"{prefix}-0-after": "succeeded",
            f"{prefix}-0-on_upstream_failure": "hold",
            f"{prefix}-0-downstream": str(downstream.pk),
        }
    )
    return client.post(url, data, follow=True)


def test_an_admin_adds_a_dependency_and_the_teacher_is_wired(staff_client: Client, db: Any) -> None:
    teacher = experiment_create(name="teacher", recipe="digits")
    student = experiment_create(name="student", recipe="distill")
    response = _submit_with_dependency(staff_client, student, teacher)
    assert response.status_code == 200
    edge = Dependency.objects.get()
    assert (edge.upstream, edge.downstream, edge.on_upstream_failure) == (teacher, student, "hold")
    student.refresh_from_db()
    assert student.config["teacher_experiment"] == teacher.pk


def test_a_cycle_is_refused_next_to_the_upstream_field(staff_client: Client, db: Any) -> None:
    a = experiment_create(name="a", recipe="digits")
    b = experiment_create(name="b", recipe="digits")
    dependency_add(downstream=b, upstream=a)
    response = _submit_with_dependency(staff_client, a, b)
    html = response.content.decode()
    assert "would close a cycle" in html
    assert Dependency.objects.count() == 1
