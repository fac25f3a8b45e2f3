"""In Chromium: every main page works under the Content-Security-Policy, plotly charts included,
with not one violation reported (console or securitypolicyviolation event)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import ConsoleMessage, Page, expect

from experiments.services import experiment_create
from tests.browser.helpers import wait_until
from tests.live.helpers import log_points, run_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "csp-check-passphrase-4"
# Collects violations from the first script of every document on, before any page script runs.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.effectiveDirective + " blocked " + (e.blockedURI || "inline") + " at " + e.sourceFile + ":" + e.lineNumber);
});
"""


@pytest.fixture
def charted(transactional_db: Any) -> list[int]:
    """Return the ids of two experiments with a loss curve each (the charts draw them)."""
    User.objects.create_superuser("cora", password=PASSWORD)
    ids = []
    for name in ("csp one", "csp two"):
        experiment = experiment_create(name=name, recipe="digits", config={"epochs": 1})
        log_points(run_for(experiment), "loss", [(step, 2.0 / (step + 1)) for step in range(40)])
        ids.append(experiment.pk)
    return ids


def violations(page: Page, console: list[str]) -> list[str]:
    found: list[str] = page.evaluate("window.__cspViolations || []")
    return found + [text for text in console if "Content Security Policy" in text]


def test_the_main_pages_and_their_charts_run_with_no_csp_violation(
    page: Page, live_server: Any, charted: list[int]
) -> None:
    console: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        console.append(message.text)

    page.on("console", on_console)
    page.add_init_script(RECORD_VIOLATIONS)
    base = live_server.url

    page.goto(base + "/login/")
    page.get_by_label("Username").fill("cora")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Experiments")).to_be_visible()
    assert violations(page, console) == []

    # The list's Sort select submits itself (a script listener now, not an onchange attribute).
    page.locator("select[name=sort]").select_option(index=1)
    expect(page).to_have_url(re.compile(r"sort="))
    assert violations(page, console) == []

    # The detail page draws the loss curve with plotly.js from its history.
    first, second = charted
    page.goto(f"{base}/experiments/{first}/")
    page.wait_for_function(
        "() => window.crucibleLive && crucibleLive.traceLength('loss') === 40", timeout=30_000
    )
    expect(page.locator("#live-charts .main-svg").first).to_be_visible()
    assert violations(page, console) == []

    page.goto(f"{base}/compare/?ids={first},{second}&metric=loss")
    expect(page.locator("#compare-chart .main-svg").first).to_be_visible(timeout=30_000)
    wait_until(
        page,
        "() => document.querySelectorAll('#compare-chart .scatterlayer .trace').length === 2",
        what="two compared traces",
    )
    assert violations(page, console) == []

    for path in (
        "/experiments/new/",
        "/fleet/",
        "/gpus/",
        "/triggers/",
        "/registry/",
        "/admin/",
        "/admin/control/policy/add/",
        "/admin/control/abtest/",
        "/admin/control/abtest/add/",
        "/api/docs",
    ):
        page.goto(base + path)
        page.wait_for_load_state("load")
        assert violations(page, console) == [], path
    # The API docs (Swagger UI) rendered from their own scripts.
    expect(page.locator(".swagger-ui").first).to_be_visible(timeout=30_000)
    assert violations(page, console) == []

    # The check can fail: an inline script is refused and reported.
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1'; document.body.append(s); }"
    )
    page.wait_for_function("window.__cspViolations.length > 0", timeout=10_000)
    assert page.evaluate("window.__ran === undefined")
