"""In a real browser: two people in two projects never see each other's experiments, charts or triggers."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Browser, Page, expect

from control.policies.models import Policy, PolicyKind, TriggerEvent, TriggerStatus
from experiments.choices import RunStatus
from experiments.models import Experiment, Membership, Project, Role, Run
from experiments.services import experiment_create
from tests.browser.helpers import log_in
from tests.live.helpers import log_points

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _project_with_member(slug: str, username: str) -> tuple[User, Experiment]:
    project = Project.objects.create(name=slug.capitalize(), slug=slug)
    user = User.objects.create_user(username, password=f"pw-{username}-123")
    Membership.objects.create(user=user, project=project, role=Role.RESEARCHER)
    # The Triggers page is a control page: its own global permission.
    user.user_permissions.add(Permission.objects.get(codename="view_triggerevent"))
    experiment = experiment_create(name=f"{slug} experiment", recipe="digits", project=project)
    run = Run.objects.create(experiment=experiment, attempt=1, status=RunStatus.RUNNING)
    log_points(run, "loss", [(step, 1.0 - step / 10) for step in range(10)])
    policy, _ = Policy.objects.get_or_create(name="watch", defaults={"kind": PolicyKind.CUSTOM})
    TriggerEvent.objects.create(
        policy=policy,
        experiment=experiment,
        kind="metrics",
        conditions_passed=True,
        status=TriggerStatus.FIRED,
    )
    return user, experiment


def _sees_only_own(page: Page, url: str, own: Experiment, other: Experiment) -> None:
    table = page.locator("#experiment-table")
    expect(table.locator(f'tr[data-experiment-id="{own.pk}"]')).to_have_count(1)
    expect(table.locator(f'tr[data-experiment-id="{other.pk}"]')).to_have_count(0)
    # Charts: the page's history request for the other project's experiment is a 404, as for none.
    assert page.request.get(f"{url}/api/experiments/{own.pk}/metrics?names=loss").status == 200
    assert page.request.get(f"{url}/api/experiments/{other.pk}/metrics?names=loss").status == 404
    response = page.goto(f"{url}/experiments/{other.pk}/")
    assert response is not None and response.status == 404
    page.goto(f"{url}/experiments/{own.pk}/")
    expect(page.locator("h1")).to_contain_text(own.name)
    page.goto(f"{url}/triggers/")
    expect(page.locator("body")).to_contain_text(own.name)
    expect(page.locator("body")).not_to_contain_text(other.name)
    page.goto(f"{url}/compare/?ids={own.pk},{other.pk}")
    expect(page.locator("body")).to_contain_text(f"no experiment #{other.pk}")


def test_two_projects_members_never_see_each_others_work(browser: Browser, live_server: Any) -> None:
    alice, vision = _project_with_member("vision", "alice")
    bob, nlp = _project_with_member("nlp", "bob")
    for user, own, other in ((alice, vision, nlp), (bob, nlp, vision)):
        context = browser.new_context()
        page = context.new_page()
        log_in(page, live_server.url, user.username, f"pw-{user.username}-123")
        _sees_only_own(page, live_server.url, own, other)
        context.close()
