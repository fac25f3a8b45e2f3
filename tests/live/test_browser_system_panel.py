"""In a real browser: a run's system metrics draw in the System panel, apart from the training curves."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Page, expect

from experiments.runs.reporting import MetricReporter
from experiments.runs.system import CPU_PERCENT, GPU_UTIL, RSS_MB, ProcessTreeSampler, StepSampler
from experiments.services import experiment_create
from tests.browser.helpers import shot
from tests.live.helpers import run_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]


def test_the_system_panel_draws_history_and_live_points_and_the_curves_keep_only_training_metrics(
    page: Page, asgi_server: str, transactional_db: Any
) -> None:
    viewer = User.objects.create_user("sam", password="pw-sam-123")
    viewer.user_permissions.add(
        Permission.objects.get(content_type__app_label="experiments", codename="view_experiment")
    )
    experiment = experiment_create(name="system panel", recipe="digits")
    run = run_for(experiment)
    reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk)
    step = {"now": 0}
    # This test's own process, sampled as a worker samples a run's (no GPU leased).
    sampler = StepSampler(ProcessTreeSampler(device="cpu"), reporter.log, lambda: step["now"])
    for s in range(0, 5):
        step["now"] = s
        reporter.log("loss", s, 1.0 / (s + 1))
        reporter.log("accuracy", s, s / 10)
        sampler.tick()
    reporter.flush()

    page.goto(f"{asgi_server}/login/?next=/experiments/{experiment.pk}/")
    page.get_by_label("Username").fill("sam")
    page.get_by_label("Password").fill("pw-sam-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live-charts")).to_have_attribute("data-live-status", "live", timeout=20_000)

    panel = page.locator("#system-panel")
    expect(panel).to_be_visible()
    expect(panel.get_by_role("heading", name="System")).to_be_visible()
    expect(panel.locator(".live-chart[data-metrics]")).to_have_count(2)
    expect(panel.locator(f'.live-chart[data-metrics="{CPU_PERCENT}"]')).to_be_visible()
    expect(panel.locator(f'.live-chart[data-metrics="{RSS_MB}"]')).to_be_visible()
    # Plotly drew a line in each: the traces hold the stored points.
    expect(panel.locator(".live-chart .main-svg").first).to_be_visible()
    assert page.evaluate(f"crucibleLive.traceLength('{RSS_MB}')") == 5
    # No GPU leased: no GPU series at all, not a flat zero.
    assert page.evaluate(f"crucibleLive.traceLength('{GPU_UTIL}')") in (0, None)

    # The training panels hold only training metrics.
    training = page.locator("#live-charts > .live-chart-grid:not(#system-charts) > .live-chart")
    names = ",".join(training.evaluate_all("els => els.map(e => e.dataset.metrics || '')"))
    assert "loss" in names and "accuracy" in names
    assert "sys/" not in names
    # The toolbar's metric picker offers the training curves only: unticking cannot hide the System panel.
    picker = page.locator("#chart-metrics input[data-metric]")
    expect(picker).to_have_count(2)
    assert sorted(picker.evaluate_all("els => els.map(e => e.dataset.metric)")) == ["accuracy", "loss"]

    # Live: the next samples arrive over the socket into the System panel.
    for s in range(5, 8):
        step["now"] = s
        reporter.log("loss", s, 1.0 / (s + 1))
        sampler.tick()
    reporter.flush()
    page.wait_for_function(f"crucibleLive.traceLength('{RSS_MB}') === 8", timeout=15_000)
    page.wait_for_function(f"crucibleLive.traceLength('{CPU_PERCENT}') === 8", timeout=15_000)
    shot(page, "system-panel", "experiment-with-system-panel")

    # A link that names a system metric among the hidden ones hides the training curve only.
    page.goto(f"{asgi_server}/experiments/{experiment.pk}/?hide={RSS_MB},accuracy")
    expect(page.locator("#live-charts")).to_have_attribute("data-live-status", "live", timeout=20_000)
    expect(page.locator('#chart-metrics input[data-metric="accuracy"]')).not_to_be_checked()
    expect(page.locator("#chart-metrics input[data-metric]")).to_have_count(2)
    expect(panel.locator(f'.live-chart[data-metrics="{RSS_MB}"]')).to_be_visible()
    assert page.evaluate(f"crucibleLive.traceLength('{RSS_MB}')") == 8
