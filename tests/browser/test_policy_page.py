"""In a real browser: a person with the policy permissions edits a threshold on the policy page,
previews the unsaved edit on an experiment, and saves it."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Page, expect

from control.policies.models import ActionRole, PolicyCondition, PolicyKind
from tests.browser.helpers import log_in, shot
from tests.browser.test_csp_pages import RECORD_VIOLATIONS
from tests.policies.helpers import experiment_through, make_policy, record_run

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def editor(transactional_db: Any) -> User:
    user = User.objects.create_user("paula", password="pw-paula-123")
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_policy", "change_policy", "view_experiment"])
    )
    return user


def test_edit_a_threshold_preview_it_and_save(page: Page, live_server: Any, editor: User) -> None:
    policy = make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [
            {"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9},
            {"kind": "metric", "metric": "f1", "operator": ">", "threshold": 0.85},
        ],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
        scope_recipes=["digits"],
    )
    candidate = experiment_through("queue", "start", "complete", name="candidate run")
    record_run(candidate, {"accuracy": [0.5, 0.93], "f1": [0.4, 0.88]})

    page.add_init_script(RECORD_VIOLATIONS)
    log_in(page, live_server.url, "paula", "pw-paula-123")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Policies").click()
    row = page.locator("tr[data-policy='auto_promote']")
    expect(row.locator(".policy-summary")).to_contain_text("accuracy > 0.9")
    row.get_by_role("link", name="auto_promote").click()
    page.wait_for_url(f"**/policies/{policy.pk}/edit")
    page.wait_for_load_state("load")  # the page's script listens for the choice below

    # The stored policy passes on the candidate.
    page.locator("#preview-experiment").select_option(str(candidate.pk))
    expect(page.locator(".preview-verdict")).to_contain_text("It would fire: promote")

    # Raise the threshold in the form: the preview follows without saving.
    threshold = page.locator("#id_conditions-0-threshold")
    threshold.fill("0.95")
    verdict = page.locator(".preview-verdict")
    expect(verdict).to_contain_text("It would not fire; fallback: hold")
    first = page.locator("#preview-conditions tr").nth(1)
    expect(first).to_contain_text("0.93")
    expect(first).to_contain_text("short by 0.02")
    expect(page.locator("#policy-summary")).to_contain_text("accuracy > 0.95")
    assert PolicyCondition.objects.get(policy=policy, metric="accuracy").threshold == 0.9
    shot(page, "policy_page", "preview")

    # A row added on the page joins the preview.
    page.get_by_role("button", name="Add a condition").click()
    added = page.locator("#conditions-2")
    added.locator("select[name$='-kind']").select_option("metric")
    added.locator("input[name$='-metric']").fill("loss")
    added.locator("select[name$='-operator']").select_option("<")
    added.locator("input[name$='-threshold']").fill("5")
    expect(page.locator("#preview-conditions tr")).to_have_count(4)
    expect(page.locator("#preview-conditions tr").nth(3)).to_contain_text("loss < 5")
    assert page.evaluate("window.__cspViolations") == []

    # A bad value in a row is refused on its field by the preview and by the save.
    page.locator("#id_conditions-1-operator").select_option("")
    expect(page.locator(".preview-errors")).to_contain_text("conditions 1 operator")
    page.get_by_role("button", name="Save policy").click()
    expect(page.locator("td.has-error[data-field='operator']")).to_contain_text("choose one of")
    assert PolicyCondition.objects.get(policy=policy, metric="accuracy").threshold == 0.9

    page.locator("#id_conditions-1-operator").select_option(">")
    page.get_by_role("button", name="Save policy").click()
    expect(page.locator(".messages, .messagelist, [role=status]").first).to_contain_text(
        "Policy auto_promote saved"
    )
    assert PolicyCondition.objects.get(policy=policy, metric="accuracy").threshold == 0.95
    assert [c.metric for c in policy.conditions.all()] == ["accuracy", "f1", "loss"]
    assert LogEntry.objects.filter(object_id=str(policy.pk), user=editor).exists()
    page.goto(live_server.url + "/policies/")
    expect(page.locator("tr[data-policy='auto_promote'] .policy-summary")).to_contain_text("accuracy > 0.95")
    shot(page, "policy_page", "saved")
