"""In a real browser: favicon, dark mode, keyboard shortcuts, friendly 404 pages with DEBUG on,
a readable drift axis for a single check, and one verb for rolling back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, Response, expect

from control.canary.models import CanaryRollout, RolloutStatus
from experiments.actors import Actor
from experiments.models import DriftCheck, Experiment, ModelVersion
from experiments.permissions import researcher_group_ensure
from experiments.services import experiment_transition
from tests.browser.helpers import in_thread, log_in, shot
from tests.digits_models import evaluating_digits_experiment

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SYSTEM = Actor.system("test")


@pytest.fixture
def ana(transactional_db: Any) -> User:
    user = User.objects.create_user("ana", password="pw-ana-123")
    user.groups.add(researcher_group_ensure())
    return user


def _deploy(name: str, checkpoint: Path) -> Experiment:
    experiment = in_thread(evaluating_digits_experiment, name, checkpoint)
    for event in ("promote", "deploy"):
        in_thread(experiment_transition, experiment_id=experiment.pk, event=event, actor=SYSTEM)
    return experiment


def test_favicon_dark_mode_and_keyboard_shortcuts(page: Page, live_server: Any, ana: User) -> None:
    missing: list[str] = []

    def note(response: Response) -> None:
        if response.status == 404:
            missing.append(response.url)

    page.on("response", note)
    log_in(page, live_server.url, "ana", "pw-ana-123")
    icon = page.locator("link[rel=icon]")
    expect(icon).to_have_count(1)
    assert page.request.get(live_server.url + icon.get_attribute("href")).status == 200
    assert page.request.get(live_server.url + "/favicon.ico").status == 200
    assert missing == []

    # Dark mode follows the system setting.
    page.emulate_media(color_scheme="light")
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
    shot(page, "polish", "list-dark")
    assert light == "rgb(245, 246, 248)"
    assert dark == "rgb(15, 20, 27)"
    page.emulate_media(color_scheme="light")

    # ? shows the shortcuts; Escape closes them.
    overlay = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(overlay).to_be_hidden()
    page.keyboard.press("?")
    expect(overlay).to_be_visible()
    expect(overlay).to_contain_text("Fleet")
    shot(page, "polish", "shortcuts")
    page.keyboard.press("Escape")
    expect(overlay).to_be_hidden()

    # g t, g f, g e move between pages; / searches, from any page.
    page.keyboard.press("g")
    page.keyboard.press("t")
    expect(page).to_have_url(re.compile(r"/triggers/$"))
    page.wait_for_load_state()
    page.keyboard.press("g")
    page.keyboard.press("f")
    expect(page).to_have_url(re.compile(r"/fleet/$"))
    page.wait_for_load_state()
    page.keyboard.press("/")
    expect(page).to_have_url(re.compile(r"/#search$"))
    expect(page.get_by_role("searchbox", name="Search by name")).to_be_focused()
    # Typing in a field is typing, not a shortcut.
    page.keyboard.type("g t")
    expect(page.get_by_role("searchbox", name="Search by name")).to_have_value("g t")
    page.get_by_role("searchbox", name="Search by name").blur()
    page.goto(live_server.url + "/fleet/")
    page.wait_for_load_state()
    page.keyboard.press("g")
    page.keyboard.press("e")
    expect(page.get_by_role("heading", name="Experiments")).to_be_visible()


def test_a_missing_page_is_friendly_even_with_debug_on(
    page: Page, live_server: Any, ana: User, settings: Any
) -> None:
    settings.DEBUG = True
    log_in(page, live_server.url, "ana", "pw-ana-123")
    for path in ("/experiments/999999/", "/no/such/page/"):
        response = page.goto(live_server.url + path)
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        expect(page.get_by_role("link", name="Back to the experiments")).to_be_visible()
        expect(page.locator("body")).not_to_contain_text("DEBUG = True")
        expect(page.locator("body")).not_to_contain_text("URLconf")
    shot(page, "polish", "not-found")
    # The API keeps its JSON errors.
    answer = page.request.get(live_server.url + "/api/experiments/999999")
    assert answer.status == 404
    assert "detail" in answer.json()


def test_one_drift_check_reads_in_minutes_and_rolling_back_has_one_name(
    page: Page, live_server: Any, ana: User, tmp_path: Path
) -> None:
    first = tmp_path / "a" / "step-1.pt"
    second = tmp_path / "b" / "step-1.pt"
    for i, path in enumerate((first, second)):
        path.parent.mkdir()
        path.write_bytes(f"checkpoint {i}: listed, never loaded".encode())
    _deploy("digits one", first)
    newer = _deploy("digits two", second)
    version = ModelVersion.objects.get(model_name="digits", version=2)
    DriftCheck.objects.create(version=version, score=0.04, window_rows=500)
    # A rollout that is neither live nor finished (queued behind another) has no finish time to show.
    CanaryRollout.objects.create(
        model_name="digits",
        experiment=newer,
        candidate=version,
        baseline=ModelVersion.objects.get(model_name="digits", version=1),
        stages=[{"name": "c10", "traffic_pct": 10, "duration_seconds": 60}],
        stage_started_at=timezone.now(),
        status=RolloutStatus.QUEUED,
    )

    log_in(page, live_server.url, "ana", "pw-ana-123", "/registry/digits/")
    ticks = page.locator("#chart-drift .xtick text")
    expect(ticks.first).to_be_visible()
    labels = ticks.all_text_contents()
    shot(page, "polish", "deployment")
    assert labels and all(re.fullmatch(r"\d{2}:\d{2}", t) for t in labels), labels
    expect(page.get_by_role("button", name="Roll back…", exact=True)).to_be_visible()
    shown = page.locator("main").inner_text()
    assert "Rollback" not in shown
    assert "The most recent rollout:" in shown
    assert "—:" not in shown

    page.goto(f"{live_server.url}/experiments/{newer.pk}/")
    expect(page.get_by_role("button", name="Roll back…", exact=True)).to_be_visible()
    expect(page.locator("#experiment-actions")).not_to_contain_text("Rollback")
