"""In a real browser, a new user follows only what the pages say: Start a digits experiment, watch it
train on a real worker, Promote it, feed its canary traffic, and see it deployed.

Each step finds its button or link by the text the page shows, and checks that the page says what
happens next. The canary sweep is called as the beat would call it, and the traffic is real
predictions served in-process by the checkpoint the worker trained.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

import experiments.registry.serving as serving
from control.canary.models import CanaryRollout
from control.canary.rollouts import canary_sweep
from experiments.choices import State
from experiments.models import Experiment, ModelStage, ModelVersion
from experiments.permissions import researcher_group_ensure
from tests.browser.helpers import log_in, shot
from tests.digits_models import canary_policy_create, serve_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MIN_REQUESTS = 5
SHOTS = "first-run-journey"


@pytest.fixture
def ana(transactional_db: Any) -> User:
    user = User.objects.create_user("ana", password="pw-ana-123")
    user.groups.add(researcher_group_ensure())
    return user


def _reload_until_state(page: Page, state: str, timeout_s: float = 120) -> None:
    # The live server here has no websocket: look again until the worker has moved it on.
    deadline = time.monotonic() + timeout_s
    while page.locator("#state-badge").get_attribute("data-state") != state:
        now = page.locator("#state-badge").get_attribute("data-state")
        assert time.monotonic() < deadline, f"still {now}, waiting for {state}"
        page.wait_for_timeout(500)
        page.reload()


@pytest.mark.worker
def test_a_new_user_goes_from_a_draft_to_a_model_deployed_through_a_canary(
    page: Page, live_server: Any, ana: User, celery_worker: Any
) -> None:
    serving.clear_cache()
    canary_policy_create(("c50", 50, 60), ("full", 100, 0), min_requests=MIN_REQUESTS)

    log_in(page, live_server.url, "ana", "pw-ana-123", "/")
    expect(page.locator("#first-step")).to_contain_text("press Start")

    page.get_by_role("link", name="+ New experiment").click()
    page.get_by_label("Name").fill("my first digits")
    page.get_by_label("Recipe").select_option("digits")
    page.get_by_label("Parameters (JSON)").fill('{"epochs": 1, "hidden": 16}')
    page.get_by_role("button", name="Create experiment").click()
    next_step = page.locator("#next-step")
    expect(next_step).to_contain_text("Start queues it")
    shot(page, SHOTS, "1-draft")

    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator(".message.success")).to_contain_text("is now queued")
    expect(next_step).to_contain_text(re.compile(r"waits for a free worker slot|training on a worker"))

    _reload_until_state(page, State.EVALUATING)
    expect(next_step).to_contain_text("Promote registers its checkpoint")
    expect(next_step).to_contain_text("canary")
    shot(page, SHOTS, "2-trained")

    page.get_by_role("button", name="Promote").click()
    expect(page.locator("#state-badge")).to_have_attribute("data-state", State.PROMOTING)
    expect(next_step).to_contain_text(
        "each stage is judged once it has lasted its time and served enough requests"
    )
    shot(page, SHOTS, "3-promoting")

    next_step.get_by_role("link", name="the digits deployment page").click()
    waiting = page.locator("#waiting-for-traffic")
    expect(waiting).to_contain_text("Waiting for traffic")
    expect(waiting).to_contain_text("DEMO_TRAFFIC=1 make run")
    expect(page.locator("#rollout-stage")).to_have_text("c50")
    shot(page, SHOTS, "4-waiting-for-traffic")

    experiment = Experiment.objects.get(name="my first digits")
    rollout = CanaryRollout.objects.select_related("candidate").get(experiment=experiment)
    serve_until(rollout.candidate, MIN_REQUESTS)
    expect(waiting).to_be_hidden()

    # The stage has lasted its minute with enough requests (as the beat finds it); the last stage,
    # all traffic for no time, passes at once: the canary is production.
    assert canary_sweep(now=rollout.stage_started_at + timedelta(seconds=61)) == {str(rollout.pk): "deployed"}

    expect(page.locator("#production-version")).to_have_text(f"production v{rollout.candidate.version}")
    expect(page.locator("#rollout-status")).to_have_text("Deployed")
    shot(page, SHOTS, "5-deployed")

    page.locator("#rollout").get_by_role("link", name="my first digits").click()
    expect(page.locator("#state-badge")).to_have_attribute("data-state", State.DEPLOYED)
    expect(next_step).to_contain_text("it is in production")
    assert ModelVersion.objects.get(pk=rollout.candidate_id).stage == ModelStage.PRODUCTION
