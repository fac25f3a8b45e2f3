"""In a real browser: log in, create an experiment, Start it, Cancel it through the dialog."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from experiments.models import Experiment, TransitionLog
from experiments.permissions import researcher_group_ensure

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ana(transactional_db: Any) -> User:
    user = User.objects.create_user("ana", password="pw-ana-123")
    user.groups.add(researcher_group_ensure())
    return user


def _log_in(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    expect(page).to_have_url(re.compile(r"/login/\?next="))
    page.get_by_label("Username").fill("ana")
    page.get_by_label("Password").fill("pw-ana-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Experiments")).to_be_visible()


def _create_digits(page: Page, name: str, config: str) -> None:
    page.get_by_role("link", name="+ New experiment").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Recipe").select_option("digits")
    expect(page.locator('.recipe-params[data-recipe="digits"]')).to_be_visible()
    expect(page.locator('.recipe-params[data-recipe="charlm"]')).to_be_hidden()
    page.get_by_label("Parameters (JSON)").fill(config)
    page.get_by_role("button", name="Create experiment").click()
    expect(page.locator("#state-badge")).to_have_attribute("data-state", "pending")


def test_create_start_and_cancel_through_the_confirmation_dialog(
    page: Page, live_server: Any, ana: User
) -> None:
    _log_in(page, live_server.url)
    _create_digits(page, "browser digits", '{"epochs": 1}')
    experiment = Experiment.objects.get(name="browser digits")
    assert experiment.owner == ana

    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator(".message.success")).to_contain_text("Start")
    # A worker, if one runs, may already have moved it on: it has left pending.
    expect(page.locator("#state-badge")).not_to_have_attribute("data-state", "pending")
    experiment.refresh_from_db()
    assert experiment.state != "pending"

    page.get_by_role("button", name="Cancel…").click()
    dialog = page.locator(f"#confirm-cancel-{experiment.pk}")
    expect(dialog).to_be_visible()
    # "Keep it" closes the dialog and changes nothing.
    dialog.get_by_role("button", name="Keep it").click()
    expect(dialog).to_be_hidden()
    experiment.refresh_from_db()
    assert experiment.state != "cancelled"

    page.get_by_role("button", name="Cancel…").click()
    dialog.get_by_label("Reason").fill("changed my mind")
    dialog.get_by_role("button", name="Yes, cancel").click()

    expect(page.locator("#state-badge")).to_have_attribute("data-state", "cancelled")
    row = page.locator('#history-table tr[data-event="cancel"]')
    expect(row).to_contain_text("user:ana")
    expect(row).to_contain_text("changed my mind")
    assert TransitionLog.objects.filter(experiment=experiment, event="cancel", actor="user:ana").exists()
    # Nothing left to press but Retrain.
    expect(page.locator("#experiment-actions button[data-event]")).to_have_count(1)


def test_list_page_filters_by_state_chip(page: Page, live_server: Any, ana: User) -> None:
    _log_in(page, live_server.url)
    _create_digits(page, "chip digits", "")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Experiments").click()
    page.locator('.chip[data-state="pending"]').click()
    expect(page.locator("#experiment-table tbody tr")).to_have_count(1)
    page.locator('.chip[data-state="queued"]').click()
    expect(page.get_by_text("No experiment matches")).to_be_visible()


@pytest.mark.worker
def test_start_trains_on_a_real_worker_until_evaluating(
    page: Page, live_server: Any, ana: User, celery_worker: Any
) -> None:
    _log_in(page, live_server.url)
    _create_digits(page, "worker digits", '{"epochs": 1}')
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#state-badge")).not_to_have_attribute("data-state", "pending")

    # The page served here has no websocket, so look again until the worker is done.
    deadline = time.monotonic() + 90
    while page.locator("#state-badge").get_attribute("data-state") != "evaluating":
        assert time.monotonic() < deadline, (
            f"still {page.locator('#state-badge').get_attribute('data-state')}"
        )
        page.wait_for_timeout(500)
        page.reload()
    expect(page.locator('#history-table tr[data-event="complete"]')).to_contain_text("system:worker")
    expect(page.locator("#runs-table")).to_contain_text("Succeeded")
    # Now a person decides: promote, hold for review, or cancel.
    expect(page.get_by_role("button", name="Promote")).to_be_visible()
