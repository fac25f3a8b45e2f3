"""In a real browser: a policy is created and edited in the admin, then dry-run and backtested."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from control.policies.models import Policy, PolicyCondition
from tests.policies.helpers import experiment_through, record_run

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def admin_user(transactional_db: Any) -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw-root-123")


def _log_in_to_admin(page: Page, base_url: str) -> None:
    page.goto(base_url + "/admin/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("pw-root-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("link", name="Policies")).to_be_visible()


def test_create_edit_dry_run_and_backtest_a_policy(page: Page, live_server: Any, admin_user: User) -> None:
    diverged = experiment_through("queue", "start", name="diverged run")
    record_run(diverged, {"loss": [1.0, 0.9, None]}, status="running")
    healthy = experiment_through("queue", "start", name="healthy run")
    record_run(healthy, {"loss": [1.0, 0.9, 0.8]}, status="running")

    _log_in_to_admin(page, live_server.url)
    page.goto(live_server.url + "/admin/control/policy/add/")
    page.locator("#id_name").fill("nan_guard")
    page.locator("#id_kind").select_option("early_stop")
    page.get_by_text("Add another Policy condition").click()
    row = page.locator("#conditions-0")
    row.locator("select[name$='-kind']").select_option("not_finite")
    row.locator("input[name$='-metric']").fill("loss")
    page.get_by_text("Add another Policy action").click()
    page.locator("#id_actions-0-kind").select_option("requeue")
    page.locator("#id_actions-0-params").fill('{"lr_factor": "half"}')
    page.get_by_role("button", name="Save", exact=True).click()

    # A bad parameter is refused on its field; nothing is saved.
    expect(page.locator(".errorlist")).to_contain_text("lr_factor: must be a number")
    assert not Policy.objects.exists()
    page.locator("#id_actions-0-params").fill('{"lr_factor": 0.5}')
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    policy = Policy.objects.get(name="nan_guard")
    assert policy.conditions.get().kind == "not_finite"

    # Edit: add a threshold condition with a bad operator, then a good one.
    page.get_by_role("link", name="nan_guard").first.click()
    page.get_by_text("Add another Policy condition").click()
    second = page.locator("#conditions-1")
    second.locator("select[name$='-kind']").select_option("metric")
    second.locator("input[name$='-metric']").fill("loss")
    second.locator("input[name$='-threshold']").fill("10")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".errorlist")).to_contain_text("choose one of")
    page.locator("#conditions-1").locator("select[name$='-operator']").select_option(">")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    assert PolicyCondition.objects.filter(policy=policy).count() == 2

    # Edit history: who changed what.
    page.goto(live_server.url + f"/admin/control/policy/{policy.pk}/history/")
    expect(page.locator("#change-history")).to_contain_text("root")

    # Dry-run against the diverged experiment: each condition with its value and result.
    page.goto(live_server.url + f"/admin/control/policy/{policy.pk}/dry-run/")
    page.get_by_label("Experiment").select_option(str(diverged.pk))
    page.get_by_role("button", name="Dry-run").click()
    result = page.locator("#dry-run-result")
    expect(result).to_contain_text("loss is NaN or infinite")
    expect(result.locator("tr.pass")).to_have_count(1)  # NaN: yes
    expect(result.locator("tr.fail")).to_have_count(1)  # latest loss > 10: no finite value

    # Backtest: replays histories, lists where it would have fired.
    page.goto(live_server.url + f"/admin/control/policy/{policy.pk}/backtest/")
    page.get_by_role("button", name="Backtest").click()
    expect(page.locator("h2")).to_contain_text("Would have fired 0 times")
    policy.conditions.filter(kind="metric").delete()
    page.reload()
    expect(page.locator("h2")).to_contain_text("Would have fired 1 time over 2 experiments")
    expect(page.locator("#backtest-result")).to_contain_text("diverged run")
