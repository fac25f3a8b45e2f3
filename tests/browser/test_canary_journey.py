"""In a real browser: promote a candidate into a canary, watch its traffic share grow, roll it back.

Predictions are really served (in-process, by the trained digits model) and the canary sweep is
called as the beat would call it; the page follows by polling, without a reload.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Page, expect

import experiments.registry.serving as serving
from control.canary.models import CanaryRollout, RolloutStatus
from control.canary.rollouts import canary_sweep
from experiments.choices import State
from experiments.models import ModelStage, ModelVersion, TransitionLog
from tests.digits_models import (
    FEATURES,
    canary_policy_create,
    evaluating_digits_experiment,
    promote_to_production,
    serve_until,
    train_digits,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MIN_REQUESTS = 5


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train a small digits MLP with the real recipe once; return its newest checkpoint."""
    return train_digits(tmp_path_factory.mktemp("canary-journey-ckpt"), epochs=4, hidden=16)[0]


@pytest.fixture
def olga(transactional_db: Any) -> User:
    """An operator: may see, promote and roll back."""
    user = User.objects.create_user("olga", password="pw-olga-123")
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="experiments",
            codename__in=["view_experiment", "promote_experiment", "rollback_experiment"],
        )
    )
    return user


def _log_in(page: Page, url: str) -> None:
    page.goto(url)
    expect(page).to_have_url(re.compile(r"/login/\?next="))
    page.get_by_label("Username").fill("olga")
    page.get_by_label("Password").fill("pw-olga-123")
    page.get_by_role("button", name="Log in").click()


def test_promote_watch_the_canary_grow_and_roll_it_back(
    page: Page, live_server: Any, olga: User, digits_checkpoint: Path
) -> None:
    serving.clear_cache()
    baseline = evaluating_digits_experiment("baseline", digits_checkpoint)
    promote_to_production(baseline)  # before any canary policy: straight to production
    canary_policy_create(("c10", 10, 60), ("c50", 50, 60), ("full", 100, 0), min_requests=MIN_REQUESTS)
    candidate = evaluating_digits_experiment("candidate", digits_checkpoint)

    _log_in(page, live_server.url + "/registry/digits/")
    expect(page.locator("#production-version")).to_have_text("production v1")
    expect(page.locator("#split-production")).to_have_attribute("data-pct", "100")
    expect(page.locator("#split-canary")).to_be_hidden()

    page.locator(f'#candidates-table tr[data-experiment-id="{candidate.pk}"]').get_by_role(
        "button", name="Promote"
    ).click()

    expect(page.locator(".message.success")).to_contain_text("v2 is the canary, 10% of requests")
    expect(page.locator("#split-canary")).to_have_attribute("data-pct", "10")
    expect(page.locator("#split-production")).to_have_attribute("data-pct", "90")
    expect(page.locator("#rollout-stage")).to_have_text("c10")
    expect(page.locator('#rollout-stages li[aria-current="step"]')).to_have_attribute("data-stage", "c10")
    rollout = CanaryRollout.objects.select_related("candidate").get(experiment=candidate)
    # From here on the page must change by itself: a reload would drop this mark.
    page.evaluate("() => { window.sameDocument = true; }")

    served = serve_until(rollout.candidate, MIN_REQUESTS)
    expect(page.locator('#rollout [data-field="rollout.stage_requests"]').first).to_have_text(
        str(MIN_REQUESTS)
    )
    # One stacked bar series per serving version: production and the canary.
    expect(page.locator("#chart-requests .barlayer .trace")).to_have_count(2)
    assert served[1] > 0

    # The stage has lasted its minute (as the beat finds it) with enough requests: on to c50.
    assert canary_sweep(now=rollout.stage_started_at + timedelta(seconds=61)) == {str(rollout.pk): "advanced"}

    expect(page.locator("#split-canary")).to_have_attribute("data-pct", "50")
    expect(page.locator("#split-production")).to_have_attribute("data-pct", "50")
    expect(page.locator("#rollout-stage")).to_have_text("c50")
    expect(page.locator('#rollout-stages li[data-stage="c10"]')).to_have_class(re.compile(r"result-passed"))
    assert page.evaluate("() => window.sameDocument") is True

    # "Keep it" closes the dialog and changes nothing.
    page.get_by_role("button", name="Roll back canary").click()
    dialog = page.locator("#confirm-canary-rollback-digits")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Keep it").click()
    expect(dialog).to_be_hidden()
    assert CanaryRollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING

    page.get_by_role("button", name="Roll back canary").click()
    dialog.get_by_label("Reason").fill("c50 looks slow")
    dialog.get_by_role("button", name="Yes, roll back the canary").click()

    expect(page.locator(".message.success")).to_contain_text(
        "Canary v2 of digits rolled back: v1 serves every request."
    )
    expect(page.locator("#rollout")).to_have_attribute("data-status", "rolled_back")
    expect(page.locator("#rollout-status")).to_have_text("Rolled back")
    expect(page.locator("#rollout-experiment-state")).to_have_text("Rolled back")
    expect(page.locator("#split-canary")).to_be_hidden()
    expect(page.locator("#split-production")).to_have_attribute("data-pct", "100")
    expect(page.locator(f'#rollouts-table tr[data-rollout-id="{rollout.pk}"]')).to_have_attribute(
        "data-status", "rolled_back"
    )
    expect(page.get_by_role("button", name="Roll back canary")).to_be_hidden()
    expect(page.locator('#rollout-stages li[data-stage="c50"]')).to_contain_text("rolled back")

    candidate.refresh_from_db()
    assert candidate.state == State.ROLLED_BACK
    log = TransitionLog.objects.get(experiment=candidate, event="rollback")
    assert (log.actor, log.reason) == ("user:olga", "c50 looks slow")
    assert ModelVersion.objects.get(pk=rollout.candidate_id).stage == ModelStage.ARCHIVED
    # Production never stopped serving, and now answers every request.
    assert {serving.predict(model_name="digits", payload=FEATURES)["version"] for _ in range(20)} == {1}
