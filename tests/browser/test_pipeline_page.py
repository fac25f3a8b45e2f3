"""In a real browser: the experiment page draws its pipeline, and Start pipeline starts the teacher too."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from experiments.models import Experiment, TransitionLog
from experiments.permissions import researcher_group_ensure
from experiments.pipelines.services import dependency_add
from experiments.services import experiment_create
from tests.browser.helpers import log_in


def _shots(name: str) -> Any:
    from tests.browser.helpers import SHOTS

    (SHOTS / "pipelines").mkdir(parents=True, exist_ok=True)
    return SHOTS / "pipelines" / f"{name}.png"


pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def pipeline(transactional_db: Any) -> tuple[Experiment, Experiment]:
    user = User.objects.create_user("pia", password="pw-pia-123")
    user.groups.add(researcher_group_ensure())
    teacher = experiment_create(name="digits teacher", recipe="digits", owner=user)
    student = experiment_create(name="distilled student", recipe="distill", owner=user)
    dependency_add(downstream=student, upstream=teacher, on_upstream_failure="hold")
    return teacher, student


def test_the_page_shows_the_pipeline_and_starts_it_in_one_press(
    page: Page, live_server: Any, pipeline: tuple[Experiment, Experiment]
) -> None:
    teacher, student = pipeline
    log_in(page, live_server.url, "pia", "pw-pia-123", next_path=f"/experiments/{student.pk}/")
    graph = page.locator("svg.pipeline-graph")
    expect(graph).to_be_visible()
    teacher_node = graph.locator(f'[data-experiment-id="{teacher.pk}"]')
    student_node = graph.locator(f'[data-experiment-id="{student.pk}"]')
    expect(teacher_node).to_have_attribute("data-state", "pending")
    expect(student_node).to_have_attribute("data-state", "pending")
    expect(graph.locator(".pl-edge-label").first).to_have_text("succeeded")
    expect(page.locator("#pipeline-edges")).to_contain_text("hold this one")

    page.get_by_role("button", name="Start pipeline").click()
    expect(page.locator(".messages, [role=status], body").first).to_contain_text("Pipeline started")
    expect(graph.locator(f'[data-experiment-id="{student.pk}"]')).to_have_attribute("data-state", "waiting")
    expect(graph.locator(f'[data-experiment-id="{teacher.pk}"]')).to_have_attribute("data-state", "queued")
    expect(page.locator("#state-badge")).to_have_attribute("data-state", "waiting")
    page.locator("#pipeline-card").screenshot(path=str(_shots("student-waiting")))

    # The teacher's node links to its page, whose pipeline shows the student downstream.
    teacher_node.click()
    expect(page).to_have_url(re.compile(rf"/experiments/{teacher.pk}/$"))
    expect(page.locator(f'svg.pipeline-graph [data-experiment-id="{student.pk}"]')).to_have_attribute(
        "data-state", "waiting"
    )
    assert TransitionLog.objects.filter(experiment=student, event="wait", actor="user:pia").exists()
