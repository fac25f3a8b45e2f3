"""In a real browser: a frame lost on the way (the channel layer was unreachable for one flush)
shows as a hole in the next frame, and the page fills it from the history without a reload."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Page, expect

from crucible_ui.redis_server import free_port
from experiments.models import MetricPoint
from experiments.runs.reporting import MetricReporter
from experiments.services import experiment_create
from tests.live.helpers import run_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]


def flush(reporter: MetricReporter, steps: range) -> None:
    for step in steps:
        reporter.log("loss", step, 1.0 / (step + 1))
    reporter.flush()


def test_a_lost_frame_is_back_filled_from_the_history(
    page: Page, asgi_server: str, transactional_db: Any, settings: Any
) -> None:
    viewer = User.objects.create_user("vera", password="pw-vera-123")
    viewer.user_permissions.add(
        Permission.objects.get(content_type__app_label="experiments", codename="view_experiment")
    )
    experiment = experiment_create(name="holes", recipe="digits")
    run = run_for(experiment)
    reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk)
    page.goto(f"{asgi_server}/login/?next=/experiments/{experiment.pk}/")
    page.get_by_label("Username").fill("vera")
    page.get_by_label("Password").fill("pw-vera-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live-charts")).to_have_attribute("data-live-status", "live", timeout=20_000)
    page.evaluate("window.__sameDocument = true")

    flush(reporter, range(0, 10))
    page.wait_for_function("crucibleLive.traceLength('loss') === 10", timeout=15_000)

    # One flush whose publish fails: stored, never sent (as during a Redis outage).
    live_layers = settings.CHANNEL_LAYERS
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "experiments.live.layer.ResyncingPubSubChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    flush(reporter, range(10, 20))
    settings.CHANNEL_LAYERS = live_layers
    assert page.evaluate("crucibleLive.traceLength('loss')") == 10
    assert page.evaluate("crucibleLive.gapsFilled") == 0

    flush(reporter, range(20, 30))
    stored = list(
        MetricPoint.objects.filter(run=run, name="loss").order_by("step").values_list("step", flat=True)
    )
    assert stored == list(range(30))
    expected = json.dumps(stored, separators=(",", ":"))
    page.wait_for_function(
        f"JSON.stringify(crucibleLive.traceSteps('loss')) === {json.dumps(expected)}", timeout=15_000
    )
    assert page.evaluate("crucibleLive.gapsFilled") >= 1
    assert page.evaluate("window.__sameDocument") is True
