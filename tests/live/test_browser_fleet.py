"""In a real browser against Daphne: the Fleet page moves on its own as runs report."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from experiments.actors import Actor
from experiments.events import FLEET_GROUP, experiment_group, send_to_groups
from experiments.permissions import researcher_group_ensure
from experiments.runs.reporting import MetricReporter
from experiments.services import experiment_create, experiment_transition
from tests.live.helpers import log_points, run_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run fn outside Playwright's event loop (channel-layer sends refuse to run inside one)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]


@pytest.fixture
def researcher(transactional_db: Any) -> User:
    """Return a person who may view experiments."""
    user = User.objects.create_user("fay", password="pw-fay-123")
    user.groups.add(researcher_group_ensure())
    return user


def test_the_fleet_page_follows_metrics_progress_and_state_without_reload(
    page: Page, asgi_server: str, researcher: User
) -> None:
    experiment = experiment_create(name="fleet digits", recipe="digits", owner=researcher)
    system = Actor.system("test")
    for event in ("queue", "start"):
        experiment_transition(experiment_id=experiment.pk, event=event, actor=system)
    run = run_for(experiment)
    log_points(run, "loss", [(s, 1.0 / (s + 1)) for s in range(10)])

    page.goto(f"{asgi_server}/login/?next=/fleet/")
    page.get_by_label("Username").fill("fay")
    page.get_by_label("Password").fill("pw-fay-123")
    page.get_by_role("button", name="Log in").click()
    row = page.locator(f"#fleet-row-{experiment.pk}")
    expect(row.locator("svg.sparkline")).to_have_attribute("data-points", "10")
    expect(page.locator("#fleet-status")).to_have_attribute("data-status", "live")
    page.evaluate("window.__sameDocument = true")

    def report() -> None:
        reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk)
        for step in range(10, 15):
            reporter.log("loss", step, 0.01)
        reporter.flush()

    in_thread(report)
    expect(row.locator("svg.sparkline")).to_have_attribute("data-points", "15")
    expect(row.locator(".fleet-last")).to_contain_text("0.0100")

    progress = {"type": "run.progress", "experiment_id": experiment.pk, "run_id": run.pk,
                "progress": 0.5, "eta_seconds": 30.0, "step": 14}  # fmt: skip
    in_thread(send_to_groups, [experiment_group(experiment.pk), FLEET_GROUP], progress)
    expect(row.locator(".fleet-eta")).to_contain_text("50% · ETA 30 s")

    in_thread(experiment_transition, experiment_id=experiment.pk, event="complete", actor=system)
    expect(row.locator(".badge")).to_have_attribute("data-state", "evaluating")
    # Leaving the active set: the row goes once the page takes its rows fresh.
    in_thread(experiment_transition, experiment_id=experiment.pk, event="cancel", actor=system)
    expect(row).to_have_count(0)
    expect(page.get_by_text("Nothing is queued or training right now.")).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True
