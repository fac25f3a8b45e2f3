"""The Triggers page, the experiment's trigger panel, and deciding on a trigger (approve/reject/execute)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from control.policies.engine import engine_on_complete
from control.policies.models import (
    ActionExecution,
    ActionRole,
    PolicyKind,
    PolicyMode,
    TriggerEvent,
    TriggerStatus,
)
from experiments.choices import State
from experiments.models import Experiment
from tests.policies.helpers import experiment_through, make_policy, record_run, run_pending_actions

pytestmark = pytest.mark.django_db


def pending_trigger(mode: str = PolicyMode.APPROVE) -> TriggerEvent:
    make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [{"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9}],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
        mode=mode,
    )
    experiment = experiment_through("queue", "start", "complete", name="candidate")
    record_run(experiment, {"accuracy": [0.5, 0.97]})
    [trigger] = engine_on_complete(experiment_id=experiment.pk)
    return trigger


def client_for(*perms: str) -> Client:
    user = User.objects.create_user("rita", password="pw")
    viewing = ("view_triggerevent", "view_experiment")
    user.user_permissions.add(*Permission.objects.filter(codename__in=[*perms, *viewing]))
    client = Client()
    client.force_login(user)
    return client


def test_pages_need_login() -> None:
    trigger = pending_trigger()
    anonymous = Client()
    for url in (reverse("triggers:list"), reverse("triggers:rows")):
        assert anonymous.get(url).status_code == 302
    response = anonymous.post(reverse("triggers:decide", args=[trigger.pk, "approve"]))
    assert response.status_code == 302
    assert TriggerEvent.objects.get().status == TriggerStatus.PENDING_APPROVAL


def test_the_triggers_page_explains_what_fired_and_offers_approval() -> None:
    trigger = pending_trigger()
    page = client_for("change_triggerevent").get(reverse("triggers:list")).content.decode()
    assert "auto_promote" in page and "latest accuracy &gt; 0.9" in page
    assert "Pending approval" in page
    assert f'action="/triggers/{trigger.pk}/approve/"' in page and 'data-decision="reject"' in page


def test_without_the_permission_no_buttons_and_a_post_is_refused() -> None:
    trigger = pending_trigger()
    client = client_for()
    assert 'data-decision="approve"' not in client.get(reverse("triggers:list")).content.decode()
    response = client.post(reverse("triggers:decide", args=[trigger.pk, "approve"]))
    assert response.status_code == 403
    assert TriggerEvent.objects.get().status == TriggerStatus.PENDING_APPROVAL


def test_approving_runs_the_actions_as_the_policy() -> None:
    trigger = pending_trigger()
    experiment_id = trigger.experiment_id
    response = client_for("change_triggerevent").post(
        reverse("triggers:decide", args=[trigger.pk, "approve"]), {"next": f"/experiments/{experiment_id}/"}
    )
    assert response.status_code == 302 and response["Location"] == f"/experiments/{experiment_id}/"
    run_pending_actions()
    trigger.refresh_from_db()
    assert trigger.status == TriggerStatus.ACTED and trigger.decided_by.username == "rita"  # type: ignore[union-attr]
    assert Experiment.objects.get(pk=experiment_id).state == State.DEPLOYED


def test_rejecting_does_nothing_but_record_the_decision() -> None:
    trigger = pending_trigger()
    client_for("change_triggerevent").post(reverse("triggers:decide", args=[trigger.pk, "reject"]))
    trigger.refresh_from_db()
    assert trigger.status == TriggerStatus.DISMISSED
    assert not ActionExecution.objects.exists()
    assert Experiment.objects.get(pk=trigger.experiment_id).state == State.EVALUATING


def test_a_decision_that_no_longer_applies_answers_409() -> None:
    trigger = pending_trigger()
    client = client_for("change_triggerevent")
    client.post(reverse("triggers:decide", args=[trigger.pk, "reject"]))
    response = client.post(
        reverse("triggers:decide", args=[trigger.pk, "approve"]), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 409 and "not pending approval" in response.json()["detail"]
    html = client.post(reverse("triggers:decide", args=[trigger.pk, "approve"]))
    assert html.status_code == 409 and "not pending approval" in html.content.decode()


def test_execute_policy_runs_a_dry_run_trigger_for_real() -> None:
    trigger = pending_trigger(mode=PolicyMode.DRY_RUN)
    client_for("change_triggerevent").post(reverse("triggers:decide", args=[trigger.pk, "execute"]))
    run_pending_actions()
    assert Experiment.objects.get(pk=trigger.experiment_id).state == State.DEPLOYED


def test_decisions_need_csrf() -> None:
    trigger = pending_trigger()
    user = User.objects.create_user("csrf", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="change_triggerevent"))
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post(reverse("triggers:decide", args=[trigger.pk, "approve"])).status_code == 403
    assert TriggerEvent.objects.get().status == TriggerStatus.PENDING_APPROVAL


def test_the_experiment_panel_lists_only_its_triggers() -> None:
    trigger = pending_trigger()
    other = experiment_through(name="other")
    client = client_for("change_triggerevent")
    mine = client.get(reverse("triggers:rows"), {"experiment": str(trigger.experiment_id)}).content.decode()
    assert f'data-trigger-id="{trigger.pk}"' in mine
    theirs = client.get(reverse("triggers:rows"), {"experiment": other.pk}).content.decode()
    assert "No policy has fired for this experiment yet" in theirs
    detail = client.get(reverse("experiments:detail", args=[trigger.experiment_id])).content.decode()
    assert 'id="trigger-panel"' in detail and "js/triggers.js" in detail
