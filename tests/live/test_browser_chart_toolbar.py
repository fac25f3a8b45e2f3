"""In a real browser against Daphne: the chart toolbar (smoothing, log y, x axis, panels, metrics)
reads its choices from the URL, applies them, and writes changes back to the URL."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from experiments.models import MetricPoint
from experiments.permissions import researcher_group_ensure
from experiments.services import experiment_create
from tests.browser.helpers import log_in, shot
from tests.live.helpers import run_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]

STEPS = 40
START = 1_700_000_000.0


@pytest.fixture
def researcher(transactional_db: Any) -> User:
    user = User.objects.create_user("tom", password="pw-tom-123")
    user.groups.add(researcher_group_ensure())
    return user


def _history(experiment_id: int) -> None:
    run = run_for(experiment_from_id(experiment_id))
    rows = []
    for step in range(STEPS):
        # Noisy curves: smoothing must change them; two seconds per step.
        for name, value in (
            ("loss", 2.0 / (step + 1) + (0.3 if step % 2 else 0.0)),
            ("accuracy", min(0.99, 0.5 + step / 100) - (0.05 if step % 2 else 0.0)),
            ("f1", 0.4 + step / 200),
        ):
            rows.append(
                MetricPoint(
                    run=run, experiment_id=experiment_id, name=name, step=step, value=value,
                    wall_time=START + 2 * step,
                )
            )  # fmt: skip
    MetricPoint.objects.bulk_create(rows)


def experiment_from_id(experiment_id: int) -> Any:
    from experiments.models import Experiment

    return Experiment.objects.get(pk=experiment_id)


def test_the_toolbar_choices_come_from_the_url_and_go_back_to_it(
    page: Page, asgi_server: str, researcher: User
) -> None:
    experiment = experiment_create(name="toolbar", recipe="digits", owner=researcher)
    _history(experiment.pk)
    path = f"/experiments/{experiment.pk}/?smooth=0.8&logy=1&x=relative&hide=f1&panels=metric"
    log_in(page, asgi_server, "tom", "pw-tom-123", path)
    charts = page.locator("#live-charts")
    expect(charts).to_have_attribute("data-live-status", "live", timeout=20_000)
    page.wait_for_function("crucibleLive.traceLength('loss') === 40")

    # The choices in the URL are on the toolbar.
    expect(page.get_by_label("Smoothing")).to_have_value("0.8")
    expect(page.get_by_label("log y")).to_be_checked()
    expect(page.get_by_label("x axis")).to_have_value("relative")
    expect(page.get_by_label("one panel per metric")).to_be_checked()
    expect(page.locator('#chart-metrics input[data-metric="f1"]')).not_to_be_checked()
    expect(page.locator('#chart-metrics input[data-metric="loss"]')).to_be_checked()

    # ... and on the charts: one panel per metric, log y, the raw line faint behind the EMA.
    expect(page.locator(".live-chart")).to_have_count(3)
    page.wait_for_function("document.getElementById('chart-m-f1') !== null")
    loss = "document.getElementById('chart-m-loss')"
    page.wait_for_function(f"{loss}.data.length === 2")
    assert page.evaluate(f"{loss}.layout.yaxis.type") == "log"
    assert page.evaluate(f"{loss}.data[0].opacity") == 0.25
    raw = page.evaluate(f"Array.from({loss}.data[0].y)")
    smooth = page.evaluate(f"Array.from({loss}.data[1].y)")
    assert len(smooth) == len(raw) == STEPS
    assert smooth[0] == pytest.approx(raw[0])  # debiased: the first point is not pulled to 0
    # Smoothing shrinks the step-to-step zigzag.
    zigzag = sum(abs(a - b) for a, b in itertools.pairwise(raw))
    assert sum(abs(a - b) for a, b in itertools.pairwise(smooth)) < zigzag / 2
    assert page.evaluate("document.getElementById('chart-m-f1').data[0].visible") is False
    expect(page.locator("#chart-m-f1")).to_be_hidden()
    # Relative time: two seconds per step, labelled on the step axis.
    page.wait_for_function(f"({loss}.layout.xaxis.ticktext || []).length > 1")
    ticks = page.evaluate(f"{loss}.layout.xaxis.ticktext")
    steps = page.evaluate(f"{loss}.layout.xaxis.tickvals")
    assert ticks[0] == f"{2 * steps[0]} s"
    assert all(re.fullmatch(r"\d+ s|\d+ min \d+ s", t) for t in ticks), ticks
    shot(page, "chart-toolbar", "from-url")

    # Changes go back to the URL (a reload or a shared link shows the same charts).
    page.get_by_label("log y").uncheck()
    page.get_by_label("x axis").select_option("step")
    page.locator('#chart-metrics input[data-metric="f1"]').check()
    page.get_by_label("Smoothing").fill("0")
    expect(page).to_have_url(re.compile(r"\?panels=metric$"))
    page.wait_for_function(f"{loss}.layout.yaxis.type === 'linear'")
    page.wait_for_function(f"{loss}.layout.xaxis.tickmode === 'auto'")
    page.wait_for_function(f"{loss}.data[1].visible === false && {loss}.data[0].opacity === 1")
    assert page.evaluate("document.getElementById('chart-m-f1').data[0].visible") is True
    expect(page.locator("#chart-m-f1")).to_be_visible()
    assert page.evaluate("crucibleLive.traceLength('loss')") == STEPS

    # Panels by group again: loss alone, accuracy and f1 together.
    page.get_by_label("one panel per metric").uncheck()
    expect(page).to_have_url(re.compile(rf"/experiments/{experiment.pk}/$"))
    expect(page.locator(".live-chart")).to_have_count(2, timeout=15_000)
    shot(page, "chart-toolbar", "grouped")
