"""In a real browser: the experiment list shows metric, progress and duration columns, sorts by
them, and sends the ticked experiments to Compare, which charts several metrics and diffs configs."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect

from experiments.choices import RunStatus
from experiments.models import Experiment, Run
from experiments.permissions import researcher_group_ensure
from experiments.services import experiment_create
from tests.browser.helpers import log_in, shot, wait_until
from tests.live.helpers import log_points

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ana(transactional_db: Any) -> User:
    user = User.objects.create_user("ana", password="pw-ana-123")
    user.groups.add(researcher_group_ensure())
    return user


def _trained(name: str, *, lr: float, final_loss: float, accuracy: float, minutes: int) -> Experiment:
    experiment = experiment_create(name=name, recipe="digits", config={"lr": lr})
    started = timezone.now() - timedelta(hours=1)
    run = Run.objects.create(
        experiment=experiment,
        attempt=1,
        status=RunStatus.SUCCEEDED,
        progress=1.0,
        started_at=started,
        finished_at=started + timedelta(minutes=minutes),
    )
    # The loss dips below its final value at step 5: best and last differ.
    log_points(
        run,
        "loss",
        [(step, final_loss - 0.05 if step == 5 else final_loss + (9 - step) * 0.1) for step in range(10)],
    )
    log_points(run, "accuracy", [(step, accuracy * (step + 1) / 10) for step in range(10)])
    return experiment


def test_metric_columns_sort_and_compare_the_ticked_experiments(
    page: Page, live_server: Any, ana: User
) -> None:
    fast = _trained("fast lr", lr=0.01, final_loss=0.30, accuracy=0.95, minutes=3)
    slow = _trained("slow lr", lr=0.001, final_loss=0.60, accuracy=0.90, minutes=12)
    running = experiment_create(name="still running", recipe="digits")
    Run.objects.create(
        experiment=running, attempt=1, status=RunStatus.RUNNING, progress=0.4, started_at=timezone.now()
    )

    log_in(page, live_server.url, "ana", "pw-ana-123")
    table = page.locator("#experiment-table")
    row = table.locator(f'tr[data-experiment-id="{fast.pk}"]')
    headers = [h.lower() for h in table.locator("thead th").all_text_contents()]
    assert any(h.startswith("progress") for h in headers) and any(h.startswith("duration") for h in headers)
    expect(row).to_contain_text("3 min 0 s")
    # loss: last 0.3000, best 0.2500; accuracy: last and best 0.9500.
    expect(row).to_contain_text("0.3000 · 0.2500")
    expect(row).to_contain_text("0.9500 · 0.9500")
    expect(table.locator(f'tr[data-experiment-id="{running.pk}"] [data-run-progress]')).to_contain_text("40%")

    # Sort by the best loss: the lowest first, experiments without any last.
    page.get_by_label("Sort").select_option("best:loss")
    expect(page).to_have_url(re.compile(r"sort=best%3Aloss"))
    page.wait_for_load_state()
    ids = [
        int(i)
        for i in table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.experimentId)")
    ]
    assert ids == [fast.pk, slow.pk, running.pk]
    page.get_by_label("Sort").select_option("duration")
    expect(page).to_have_url(re.compile(r"sort=duration"))
    page.wait_for_load_state()
    ids = [
        int(i)
        for i in table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.experimentId)")
    ]
    assert ids[:2] == [slow.pk, fast.pk]
    shot(page, "list-and-compare", "list")

    # Tick two and compare: one chart per metric column, and their config difference.
    page.get_by_label("Compare fast lr").check()
    page.get_by_label("Compare slow lr").check()
    page.get_by_role("button", name="Compare selected").click()
    expect(page.get_by_role("heading", name="Compare")).to_be_visible()
    expect(page.locator(".compare-card")).to_have_count(2)
    expect(page.locator('.compare-card[data-metric="loss"] .js-plotly-plot')).to_be_visible()
    expect(page.locator('.compare-card[data-metric="accuracy"] .js-plotly-plot')).to_be_visible()
    wait_until(
        page,
        "() => { const d = document.querySelector('.compare-chart[data-metric=accuracy]').data;"
        " return Array.isArray(d) && d.length > 0 && d.every(t => t.x.length === 10); }",
        what="ten accuracy points per experiment",
    )
    diff = page.locator("#config-diff")
    expect(diff.locator('tr[data-param="lr"]')).to_contain_text("0.01")
    expect(diff.locator('tr[data-param="lr"]')).to_contain_text("0.001")
    expect(diff.locator('tr[data-param="epochs"]')).to_have_count(0)
    # The parameters that differ against the first metric's best value, as parallel axes (a
    # table where the browser has no WebGL, as headless Chromium here).
    coordinates = json.loads(page.locator("#compare-coordinates").text_content() or "{}")
    assert [d["label"] for d in coordinates["dimensions"]] == ["lr", "loss (lowest)"]
    axes = [d["values"] for d in coordinates["dimensions"]]
    # Per experiment (in the order chosen): its lr, and its lowest loss.
    assert sorted(zip(*axes, strict=True)) == [(0.001, pytest.approx(0.55)), (0.01, pytest.approx(0.25))]
    wait_until(
        page,
        "() => document.querySelector('#parcoords-table') !== null"
        " || (document.getElementById('parcoords').data || []).length === 1",
        what="the parallel axes or their table",
    )
    if page.locator("#parcoords-table").count():
        expect(page.locator("#parcoords-table")).to_contain_text("0.001")
        expect(page.locator("#parcoords")).not_to_contain_text("WebGL is not supported")
    shot(page, "list-and-compare", "compare")

    # A metric nobody logged says so instead of drawing empty axes.
    page.goto(f"{live_server.url}/compare/?ids={fast.pk},{slow.pk}&metric=loss,perplexity")
    expect(page.locator('.compare-card[data-metric="perplexity"] .unlogged-metric')).to_contain_text(
        "None of these experiments logged a metric named perplexity"
    )
