"""In a real browser: every main page fits a 390 px phone, with a menu button for the navigation,
and the deployment page's Versions table is not clipped on a 1440 px laptop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, ViewportSize, expect

from experiments.actors import Actor
from experiments.models import Experiment
from experiments.permissions import researcher_group_ensure
from experiments.services import experiment_create, experiment_transition
from tests.browser.helpers import in_thread, log_in, shot
from tests.digits_models import evaluating_digits_experiment

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SYSTEM = Actor.system("test")
PHONE: ViewportSize = {"width": 390, "height": 844}


@pytest.fixture
def deployed(transactional_db: Any, tmp_path: Path) -> Experiment:
    """Return a digits experiment whose version is in production, beside one with long config and tags."""
    checkpoint = tmp_path / "step-1.pt"
    checkpoint.write_bytes(b"a checkpoint the pages only list")
    experiment = in_thread(
        evaluating_digits_experiment,
        "a deployed digits classifier with a rather long descriptive name",
        checkpoint,
        metrics={"accuracy": 0.9712, "f1": 0.9703, "val_loss": 0.1021},
    )
    for event in ("promote", "deploy"):
        in_thread(experiment_transition, experiment_id=experiment.pk, event=event, actor=SYSTEM)
    return experiment


@pytest.fixture
def ana(transactional_db: Any) -> User:
    user = User.objects.create_superuser("ana", password="pw-ana-123")
    user.groups.add(researcher_group_ensure())
    return user


def _pages(experiment: Experiment) -> list[str]:
    return [
        "/",
        "/experiments/new/",
        f"/experiments/{experiment.pk}/",
        "/fleet/",
        f"/compare/?ids={experiment.pk}&metric=val_loss",
        "/gpus/",
        "/triggers/",
        "/registry/",
        "/registry/digits/",
    ]


def test_every_main_page_fits_a_phone_and_the_menu_opens_from_a_button(
    page: Page, live_server: Any, ana: User, deployed: Experiment
) -> None:
    in_thread(
        experiment_create,
        name="tagged",
        recipe="digits",
        owner=ana,
        tags=["baseline", "long-running-sweep", "ablation"],
    )
    page.set_viewport_size(PHONE)
    log_in(page, live_server.url, "ana", "pw-ana-123")
    too_wide = {}
    for path in _pages(deployed):
        page.goto(live_server.url + path)
        page.wait_for_load_state("load")
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > PHONE["width"]:
            too_wide[path] = width
        shot(page, "responsive-390", path.strip("/").replace("/", "_").split("?")[0] or "list")
    assert too_wide == {}, f"pages wider than {PHONE['width']} px: {too_wide}"

    # The navigation hides behind a menu button and opens from it.
    page.goto(live_server.url + "/")
    nav = page.get_by_role("navigation", name="Main")
    menu = page.get_by_role("button", name="Menu")
    expect(menu).to_be_visible()
    expect(nav).to_be_hidden()
    expect(menu).to_have_attribute("aria-expanded", "false")
    menu.click()
    expect(nav).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "true")
    nav.get_by_role("link", name="Registry").click()
    expect(page.get_by_role("heading", name="Model registry")).to_be_visible()

    # A wide table scrolls inside its card, not the page.
    page.goto(live_server.url + "/registry/digits/")
    wrap = page.locator("#versions .table-wrap")
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_the_versions_table_is_not_clipped_on_a_laptop(
    page: Page, live_server: Any, ana: User, deployed: Experiment
) -> None:
    page.set_viewport_size({"width": 1440, "height": 900})
    log_in(page, live_server.url, "ana", "pw-ana-123", "/registry/digits/")
    expect(page.get_by_role("button", name="Menu")).to_be_hidden()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    wrap = page.locator("#versions .table-wrap")
    expect(wrap.locator('tr[data-version="1"]')).to_be_visible()
    sizes = wrap.evaluate("el => [el.scrollWidth, el.clientWidth]")
    shot(page, "responsive-1440", "deployment")
    assert sizes[0] <= sizes[1], f"the Versions table is clipped: {sizes[0]} px in a {sizes[1]} px card"
