"""In a real browser against Daphne: the run log panel shows the tail, then follows new lines live."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from experiments.models import Run
from experiments.permissions import researcher_group_ensure
from experiments.runs.logs import RunLogWriter
from experiments.services import experiment_create

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]


@pytest.fixture
def researcher(transactional_db: Any) -> User:
    """Return a person who may view experiments."""
    user = User.objects.create_user("rhea", password="pw-rhea-123")
    user.groups.add(researcher_group_ensure())
    return user


def test_the_run_log_panel_shows_the_tail_then_lines_as_they_are_written(
    page: Page, asgi_server: str, researcher: User
) -> None:
    experiment = experiment_create(name="logged run", recipe="digits", owner=researcher)
    run = Run.objects.create(experiment=experiment, attempt=1)
    writer = RunLogWriter(experiment_id=experiment.pk, run_id=run.pk).start()
    writer.write("stdout", "written before the page opened")

    page.goto(f"{asgi_server}/login/?next=/experiments/{experiment.pk}/")
    page.get_by_label("Username").fill("rhea")
    page.get_by_label("Password").fill("pw-rhea-123")
    page.get_by_role("button", name="Log in").click()
    log = page.locator("#run-log")
    expect(log).to_contain_text("written before the page opened")
    expect(page.locator("#live-charts")).to_have_attribute("data-live-status", "live")

    writer.write("stdout", "epoch 2: loss 0.31")
    writer.write("stderr", "warning: the learning rate is high")
    writer.close()
    expect(log).to_contain_text("epoch 2: loss 0.31")
    expect(log.locator(".log-stderr")).to_have_text("warning: the learning rate is high\n")
    download = page.locator("#run-log-download")
    assert download.get_attribute("href") == f"/experiments/{experiment.pk}/runs/{run.pk}/log/"
    # A reconnect fetches the tail again (the file keeps no stream): the stderr line stays stderr.
    page.evaluate("() => window.crucibleRunLog.reload()")
    expect(log).to_contain_text("written before the page opened")
    expect(log.locator(".log-stderr")).to_have_text("warning: the learning rate is high\n")
    assert log.locator(".log-stdout", has_text="epoch 2: loss 0.31").count() == 1
