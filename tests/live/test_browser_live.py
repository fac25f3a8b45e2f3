"""In a real browser against Daphne and a real worker: the chart moves while the run trains,
the badge follows without a reload, and a dropped socket loses no point."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from experiments.models import MetricPoint
from experiments.permissions import researcher_group_ensure
from experiments.services import experiment_create

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]


@pytest.fixture
def researcher(transactional_db: Any) -> User:
    """Return a person who may view and start experiments."""
    user = User.objects.create_user("rhea", password="pw-rhea-123")
    user.groups.add(researcher_group_ensure())
    return user


def test_a_training_run_streams_into_the_chart_and_a_dropped_socket_loses_nothing(
    page: Page, asgi_server: str, celery_worker: Any, researcher: User
) -> None:
    # About 90 steps of ~80 ms: long enough to watch, and to drop the socket mid-run.
    experiment = experiment_create(
        name="live digits", recipe="digits", config={"epochs": 4, "step_delay_ms": 80}, owner=researcher
    )
    page.goto(f"{asgi_server}/login/?next=/experiments/{experiment.pk}/")
    page.get_by_label("Username").fill("rhea")
    page.get_by_label("Password").fill("pw-rhea-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live-charts")).to_have_attribute("data-live-status", "live")
    assert page.evaluate("crucibleLive.traceLength('loss')") == 0

    page.get_by_role("button", name="Start", exact=True).click()
    # The POST redirects back to the page (wait for the new one); from here on nothing reloads it.
    expect(page.locator(".message.success")).to_contain_text("Start")
    expect(page.locator("#live-charts")).to_have_attribute("data-live-status", "live")
    page.wait_for_function("crucibleLive.traceLength('loss') > 0", timeout=90_000)
    page.evaluate("window.__sameDocument = true")
    seen = page.evaluate("crucibleLive.traceLength('loss')")
    page.wait_for_function(f"crucibleLive.traceLength('loss') >= {seen + 5}", timeout=30_000)
    expect(page.locator("#state-badge")).to_have_attribute("data-state", "running")

    # Kill the socket mid-run; the page reconnects and fetches what it missed.
    dropped_at = page.evaluate("crucibleLive.lastStep")
    page.evaluate("crucibleLive.dropSocket()")
    page.wait_for_function(
        "document.getElementById('live-charts').dataset.liveStatus === 'reconnecting'", timeout=5_000
    )
    expect(page.locator("#live-charts")).to_have_attribute("data-live-status", "live", timeout=15_000)

    expect(page.locator("#state-badge")).to_have_attribute("data-state", "evaluating", timeout=90_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    logged = list(
        MetricPoint.objects.filter(experiment=experiment, name="loss")
        .order_by("step")
        .values_list("step", flat=True)
    )
    assert logged[-1] > dropped_at  # the run went on after the drop: there was a gap to fill
    # Every logged step is on the chart, once, in order: the gap was filled, nothing doubled.
    expected = json.dumps(logged, separators=(",", ":"))
    page.wait_for_function(f"JSON.stringify(crucibleLive.traceSteps('loss')) === {json.dumps(expected)}")
    # The buttons followed the state: a person now decides.
    expect(page.get_by_role("button", name="Promote")).to_be_visible()
    expect(page.locator("#run-progress")).to_have_attribute("data-progress", "1")
