"""In a real browser: a canary short of requests says it waits for traffic and how to send some."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect

from control.canary.models import CanaryRollout, RolloutStatus
from experiments.actors import Actor
from experiments.models import ModelVersion, ServedRequest
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


def test_a_canary_short_of_requests_shows_the_command_that_sends_some(
    page: Page, live_server: Any, ana: User, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "step-1.pt"
    checkpoint.write_bytes(b"listed, never loaded")
    experiment = in_thread(evaluating_digits_experiment, "canary digits", checkpoint)
    in_thread(experiment_transition, experiment_id=experiment.pk, event="promote", actor=SYSTEM)
    candidate = ModelVersion.objects.get(model_name="digits", version=1)
    CanaryRollout.objects.create(
        model_name="digits",
        experiment=experiment,
        candidate=candidate,
        stages=[{"name": "c10", "traffic_pct": 10, "duration_seconds": 60}],
        min_requests=3,
        stage_started_at=timezone.now(),
        status=RolloutStatus.RUNNING,
    )

    log_in(page, live_server.url, "ana", "pw-ana-123", "/registry/digits/")
    notice = page.locator("#waiting-for-traffic")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Waiting for traffic")
    expect(page.locator("#traffic-command")).to_have_text(
        ".venv/bin/python manage.py traffic --model digits --rps 20 --duration 600"
    )
    expect(notice).to_contain_text("DEMO_TRAFFIC=1 make run")
    shot(page, "waiting-for-traffic", "waiting")

    # Requests arrive: the page stops asking for them on its next refresh.
    ServedRequest.objects.bulk_create([ServedRequest(version=candidate, latency_ms=3.0) for _ in range(3)])
    expect(notice).to_be_hidden(timeout=15_000)
    shot(page, "waiting-for-traffic", "served")
