"""The policy page outside the admin: who may see and edit, the rows' validation, the audit, the preview."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from control.policies.demo import demo_policies_ensure
from control.policies.models import ActionRole, Policy, PolicyCondition, PolicyKind
from tests.policies.helpers import experiment_through, make_policy, record_run

pytestmark = pytest.mark.django_db


def client_for(*codenames: str, username: str = "pat") -> Client:
    user = User.objects.create_user(username, password="pw")
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def auto_promote() -> Policy:
    return make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [
            {"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9},
            {"kind": "metric", "metric": "f1", "operator": ">", "threshold": 0.85},
        ],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
        scope_recipes=["digits"],
    )


def form_data(policy: Policy, **changes: Any) -> dict[str, Any]:
    """The edit form as the page posts it, from the stored policy, with some fields changed."""
    data: dict[str, Any] = {
        "name": policy.name,
        "kind": policy.kind,
        "mode": policy.mode,
        "enabled": "on" if policy.enabled else "",
        "order": policy.order,
        "scope_recipes": json_list(policy.scope_recipes),
        "scope_tags": json_list(policy.scope_tags),
        "cooldown_seconds": policy.cooldown_seconds,
        "max_fires_per_hour": policy.max_fires_per_hour,
        "description": policy.description,
    }
    conditions = list(policy.conditions.all())
    data.update({"conditions-TOTAL_FORMS": len(conditions), "conditions-INITIAL_FORMS": len(conditions)})
    for i, c in enumerate(conditions):
        for field in ("role", "kind", "metric", "aggregate", "operator", "better"):
            data[f"conditions-{i}-{field}"] = getattr(c, field)
        data[f"conditions-{i}-window"] = c.window or ""
        data[f"conditions-{i}-threshold"] = "" if c.threshold is None else c.threshold
        data[f"conditions-{i}-id"] = c.pk
        data[f"conditions-{i}-policy"] = policy.pk
    actions = list(policy.actions.all())
    data.update({"actions-TOTAL_FORMS": len(actions), "actions-INITIAL_FORMS": len(actions)})
    for i, a in enumerate(actions):
        data[f"actions-{i}-role"] = a.role
        data[f"actions-{i}-kind"] = a.kind
        data[f"actions-{i}-params"] = json_dict(a.params)
        data[f"actions-{i}-enabled"] = "on" if a.enabled else ""
        data[f"actions-{i}-id"] = a.pk
        data[f"actions-{i}-policy"] = policy.pk
    data.update(changes)
    return data


def json_list(value: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in value) + "]"


def json_dict(value: dict[str, Any]) -> str:
    import json

    return json.dumps(value)


def test_who_may_see_and_edit() -> None:
    policy = auto_promote()
    assert Client().get(reverse("policies:list")).status_code == 302
    assert client_for("view_experiment", username="nobody").get(reverse("policies:list")).status_code == 403
    viewer = client_for("view_policy", username="viewer")
    page = viewer.get(reverse("policies:list"))
    assert page.status_code == 200
    assert "auto_promote" in page.content.decode()
    # A viewer sees no edit link and may not open the form or post it.
    assert reverse("policies:edit", args=[policy.pk]) not in page.content.decode()
    assert viewer.get(reverse("policies:edit", args=[policy.pk])).status_code == 403
    response = viewer.post(
        reverse("policies:edit", args=[policy.pk]), form_data(policy, **{"conditions-0-threshold": 0.5})
    )
    assert response.status_code == 403
    assert PolicyCondition.objects.get(policy=policy, metric="accuracy").threshold == 0.9
    assert viewer.get(reverse("policies:new")).status_code == 403


def test_nav_links_the_page_for_those_who_may_see_it() -> None:
    auto_promote()
    nav_link = f'href="{reverse("policies:list")}"'
    assert (
        nav_link
        in client_for("view_policy", "view_experiment").get(reverse("experiments:list")).content.decode()
    )
    other = client_for("view_experiment", username="other").get(reverse("experiments:list"))
    assert nav_link not in other.content.decode()


def test_a_changed_threshold_is_saved_audited_and_the_summary_follows() -> None:
    policy = auto_promote()
    editor = client_for("view_policy", "change_policy")
    response = editor.post(
        reverse("policies:edit", args=[policy.pk]), form_data(policy, **{"conditions-0-threshold": 0.95})
    )
    assert response.status_code == 302
    assert PolicyCondition.objects.get(policy=policy, metric="accuracy").threshold == 0.95
    listing = editor.get(reverse("policies:list")).content.decode()
    assert "accuracy &gt; 0.95" in listing
    assert "accuracy &gt; 0.9 " not in listing
    entry = LogEntry.objects.get(object_id=str(policy.pk))
    assert entry.action_flag == CHANGE
    assert entry.user.username == "pat"
    assert "Threshold" in entry.get_change_message()


def test_a_bad_row_is_refused_on_its_field_and_nothing_is_saved() -> None:
    policy = auto_promote()
    editor = client_for("view_policy", "change_policy")
    data = form_data(
        policy,
        **{
            "name": "auto_promote_v2",
            "conditions-0-threshold": 0.5,
            "conditions-1-operator": "",
            "actions-0-kind": "requeue",
            "actions-0-params": '{"lr_factor": "half"}',
        },
    )
    response = editor.post(reverse("policies:edit", args=[policy.pk]), data)
    assert response.status_code == 422
    page = response.content.decode()
    assert "choose one of" in page  # the operator of the f1 row
    assert "lr_factor: must be a number" in page
    policy.refresh_from_db()
    assert policy.name == "auto_promote"
    assert PolicyCondition.objects.get(policy=policy, metric="accuracy").threshold == 0.9
    assert not LogEntry.objects.exists()


def test_a_metric_no_recipe_in_scope_logs_is_refused_as_in_the_admin() -> None:
    policy = auto_promote()
    editor = client_for("view_policy", "change_policy")
    data = form_data(policy, **{"conditions-0-metric": "bleu"})
    response = editor.post(reverse("policies:edit", args=[policy.pk]), data)
    assert response.status_code == 422
    assert "bleu" in response.context["conditions"].forms[0].errors.as_text()
    assert PolicyCondition.objects.filter(metric="bleu").count() == 0


def test_a_new_policy_with_rows_is_created_and_audited() -> None:
    creator = client_for("view_policy", "add_policy", "change_policy")
    assert creator.get(reverse("policies:new")).status_code == 200
    data = {
        "name": "nan_guard",
        "kind": PolicyKind.EARLY_STOP,
        "mode": "auto",
        "enabled": "on",
        "order": 5,
        "scope_recipes": "[]",
        "scope_tags": "[]",
        "cooldown_seconds": 30,
        "max_fires_per_hour": 60,
        "description": "",
        "conditions-TOTAL_FORMS": 1,
        "conditions-INITIAL_FORMS": 0,
        "conditions-0-role": "when",
        "conditions-0-kind": "not_finite",
        "conditions-0-metric": "loss",
        "conditions-0-aggregate": "latest",
        "actions-TOTAL_FORMS": 1,
        "actions-INITIAL_FORMS": 0,
        "actions-0-role": "then",
        "actions-0-kind": "requeue",
        "actions-0-params": '{"lr_factor": 0.5}',
        "actions-0-enabled": "on",
    }
    response = creator.post(reverse("policies:new"), data)
    assert response.status_code == 302
    policy = Policy.objects.get(name="nan_guard")
    assert [c.kind for c in policy.conditions.all()] == ["not_finite"]
    assert policy.actions.get().params == {"lr_factor": 0.5}
    assert LogEntry.objects.get(object_id=str(policy.pk)).is_addition()


def test_rows_are_removed_and_keep_their_page_order() -> None:
    policy = auto_promote()
    editor = client_for("view_policy", "change_policy")
    response = editor.post(
        reverse("policies:edit", args=[policy.pk]), form_data(policy, **{"conditions-0-DELETE": "on"})
    )
    assert response.status_code == 302
    [left] = policy.conditions.all()
    assert (left.metric, left.order) == ("f1", 0)


def preview_data(policy: Policy, experiment_id: Any, **changes: Any) -> dict[str, Any]:
    return {**form_data(policy, **changes), "policy": policy.pk, "experiment": experiment_id}


def test_the_preview_judges_the_unsaved_edit_and_saves_nothing() -> None:
    policy = auto_promote()
    candidate = experiment_through("queue", "start", "complete", name="candidate")
    record_run(candidate, {"accuracy": [0.5, 0.93], "f1": [0.4, 0.88]})
    viewer = client_for("view_policy", "view_experiment")
    url = reverse("policies:preview")

    stored = viewer.post(url, preview_data(policy, candidate.pk)).json()
    assert stored["passed"] is True
    assert stored["would_run"] == ["promote"]

    # Raise the bar in the form only: the preview fails it, with the value and a near miss.
    edited = viewer.post(url, preview_data(policy, candidate.pk, **{"conditions-0-threshold": 0.95})).json()
    assert edited["passed"] is False
    accuracy = edited["conditions"][0]
    assert accuracy["value"] == pytest.approx(0.93)
    assert accuracy["passed"] is False
    assert accuracy["near_miss"] is True
    assert accuracy["short_by"] == pytest.approx(0.02)
    assert edited["conditions"][1]["passed"] is True
    assert edited["would_run"] == ["hold"]
    assert "accuracy > 0.95" in edited["summary"]
    assert PolicyCondition.objects.get(policy=policy, metric="accuracy").threshold == 0.9
    assert not LogEntry.objects.exists()


def test_the_preview_answers_bad_input_with_field_errors() -> None:
    policy = auto_promote()
    viewer = client_for("view_policy", "view_experiment")
    url = reverse("policies:preview")
    response = viewer.post(url, preview_data(policy, "", **{"conditions-1-operator": "=~"}))
    assert response.status_code == 422
    detail = response.json()["detail"]
    locs = [tuple(item["loc"]) for item in detail]
    assert ("body", "experiment") in locs
    assert ("body", "conditions", 1, "operator") in locs
    assert all(item["msg"] for item in detail)

    missing = viewer.post(url, preview_data(policy, 999999))
    assert missing.status_code == 422
    assert missing.json()["detail"] == [{"loc": ["body", "experiment"], "msg": "no such experiment"}]

    no_policy = viewer.post(url, {**preview_data(policy, 1), "policy": "nope"})
    assert no_policy.json()["detail"] == [{"loc": ["body", "policy"], "msg": "no such policy"}]


def test_the_preview_needs_csrf_and_the_permission() -> None:
    policy = auto_promote()
    experiment = experiment_through(name="any")
    user = User.objects.create_user("csrf", password="pw")
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_policy", "view_experiment"]))
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post(reverse("policies:preview"), preview_data(policy, experiment.pk)).status_code == 403
    plain = client_for("view_experiment", username="plain")
    assert plain.post(reverse("policies:preview"), preview_data(policy, experiment.pk)).status_code == 403


def test_the_demo_describes_auto_promote_without_a_threshold_that_can_go_stale() -> None:
    [promote, *_] = demo_policies_ensure()
    assert promote.name == "auto_promote"
    assert "0.9" not in promote.description
    assert "accuracy > 0.9" in promote.summary()


@pytest.mark.parametrize("name", ["drift_retrain", "canary_deploy", "cost_aware_schedule"])
def test_the_demo_descriptions_say_why_and_quote_no_number(name: str) -> None:
    demo_policies_ensure()
    description = Policy.objects.get(name=name).description
    assert description
    assert not re.search(r"\d", description), description


def test_an_edited_drift_threshold_shows_in_the_listed_summary_of_the_demo_policy() -> None:
    demo_policies_ensure()
    drift = Policy.objects.get(name="drift_retrain")
    listing = client_for("view_policy").get(reverse("policies:list")).content.decode()
    assert "drift score &gt; 0.15 and last retrain older than 24 h" in listing
    editor = client_for("view_policy", "change_policy", username="editor")
    response = editor.post(
        reverse("policies:edit", args=[drift.pk]), form_data(drift, **{"conditions-0-threshold": 0.3})
    )
    assert response.status_code == 302
    listing = editor.get(reverse("policies:list")).content.decode()
    assert "drift score &gt; 0.3 and last retrain older than 24 h" in listing
    assert "0.15" not in listing


def test_edited_canary_stages_and_cost_limits_show_in_the_listed_summaries() -> None:
    demo_policies_ensure()
    canary = Policy.objects.get(name="canary_deploy")
    cost = Policy.objects.get(name="cost_aware_schedule")
    assert "canary_10pct 10% for 60 s → canary_50pct 50% for 60 s → full_rollout 100%" in canary.summary()
    assert "each judged once it served 30 requests" in canary.summary()
    assert "daily budget $100.00, at most 3 concurrent runs" in cost.summary().lower()

    # As the admin's stage inline and settings fields would change them.
    canary.stages.filter(name="canary_10pct").update(traffic_pct=5, duration_seconds=3600)
    Policy.objects.filter(pk=canary.pk).update(canary_min_requests=200)
    Policy.objects.filter(pk=cost.pk).update(daily_budget_usd=Decimal("250"), max_concurrent_runs=8)

    listing = client_for("view_policy").get(reverse("policies:list")).content.decode()
    assert "canary_10pct 5% for 3600 s → canary_50pct 50% for 60 s" in listing
    assert "each judged once it served 200 requests" in listing
    assert "Daily budget $250.00, at most 8 concurrent runs" in listing
    assert "$100.00" not in listing


def test_the_demo_canary_summary_says_what_rolls_it_back() -> None:
    # A regression row under "roll back when" fires when the candidate IS worse; its own wording
    # ("no worse than production") would tell the reader the opposite.
    demo_policies_ensure()
    canary = Policy.objects.get(name="canary_deploy")
    summary = canary.summary()
    assert "roll back when" in summary
    assert "accuracy worse than production by more than 5%" in summary
    assert "no worse than" not in summary
    listing = client_for("view_policy").get(reverse("policies:list")).content.decode()
    assert "accuracy worse than production by more than 5%" in listing
    assert "accuracy no worse than production" not in listing
