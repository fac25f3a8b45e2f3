"""A person cancels a running A/B test: the service, the admin action and the deployment page's button.

Cancelling ends the test with no decision: traffic goes back to production alone and every arm
the test left in the canary stage returns to the stage it had before. Only holders of
control.change_abtest may do it; a test that is not running is an error that changes nothing.
"""

from __future__ import annotations

import html
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied
from django.test import Client

import experiments.registry.serving as serving
from control.canary.ab import ABTestError, ab_test_cancel, ab_test_start
from control.canary.models import ABTest, ABTestStatus
from control.policies.authoring import policy_create
from control.policies.models import Policy
from experiments.actors import Actor
from experiments.models import ModelStage, ModelVersion
from experiments.registry.services import model_version_set_stage
from tests.digits_models import (
    FEATURES,
    SYSTEM,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_model_cache")]
CHANGELIST = "/admin/control/abtest/"


@pytest.fixture
def digits(digits_versions: tuple[ModelVersion, ...]) -> tuple[ModelVersion, ...]:
    """digits v1 in production; v2 registered (stage none) and v3 in staging, neither serving."""
    v1, v2, v3 = digits_versions
    return v1, v2, model_version_set_stage(version_id=v3.pk, stage=ModelStage.STAGING, actor=SYSTEM)


@pytest.fixture
def running(digits: tuple[ModelVersion, ...]) -> ABTest:
    _v1, v2, v3 = digits
    policy = policy_create(name="digits-ab", kind="ab_test", ab_metric="accuracy", canary_min_requests=20)
    return ab_test_start(model_name="digits", version_ids=[v2.pk, v3.pk], policy=policy, actor=SYSTEM)


def _user(username: str, *perms: str, staff: bool = False) -> User:
    user = User.objects.create_user(username, password=f"pw-{username}-123", is_staff=staff)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return User.objects.get(pk=user.pk)


def _client(user: User) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _serving() -> list[tuple[int, str, float]]:
    return list(ModelVersion.objects.order_by("pk").values_list("pk", "stage", "traffic_pct"))


def _served_versions(n: int = 30) -> set[int]:
    return {serving.predict(model_name="digits", payload=FEATURES)["version"] for _ in range(n)}


def test_cancelling_sends_traffic_back_to_production_and_the_arms_back_to_their_stages(
    digits: tuple[ModelVersion, ...], running: ABTest
) -> None:
    v1, v2, v3 = digits
    assert _served_versions() == {v2.version, v3.version}
    person = _user("cora", "control.change_abtest")

    cancelled = ab_test_cancel(test=running, actor=Actor.for_user(person), reason="wrong arms chosen")

    assert cancelled.status == ABTestStatus.CANCELLED and cancelled.finished_at is not None
    assert cancelled.outcome == "cancelled by user:cora: wrong arms chosen"
    assert _serving() == [
        (v1.pk, ModelStage.PRODUCTION, 0.0),
        (v2.pk, ModelStage.NONE, 0.0),
        (v3.pk, ModelStage.STAGING, 0.0),
    ]
    # Who moved the arms back is on the versions too.
    assert set(ModelVersion.objects.filter(pk__in=[v2.pk, v3.pk]).values_list("promoted_by", flat=True)) == {
        "user:cora"
    }
    assert _served_versions() == {v1.version}


def test_a_test_that_is_not_running_cannot_be_cancelled_and_nothing_changes(
    digits: tuple[ModelVersion, ...], running: ABTest
) -> None:
    ab_test_cancel(test=running, actor=SYSTEM, reason="first")
    before = _serving()
    with pytest.raises(ABTestError) as info:
        ab_test_cancel(test=running, actor=SYSTEM, reason="again")
    assert info.value.field == "status" and "only a running test can be cancelled" in info.value.message
    running.refresh_from_db()
    assert running.outcome == "cancelled by system:test: first"
    assert _serving() == before


def test_a_person_without_the_change_permission_cannot_cancel(
    digits: tuple[ModelVersion, ...], running: ABTest
) -> None:
    viewer = _user("vic", "control.view_abtest")
    with pytest.raises(PermissionDenied):
        ab_test_cancel(test=running, actor=Actor.for_user(viewer), reason="no")
    running.refresh_from_db()
    assert running.status == ABTestStatus.RUNNING


# --- the admin action ---


def _action(client: Client, ids: list[int], **extra: str) -> Any:
    token = client.get(CHANGELIST).context["csrf_token"]
    return client.post(
        CHANGELIST,
        {
            "action": "cancel_selected",
            "_selected_action": [str(i) for i in ids],
            "csrfmiddlewaretoken": token,
            **extra,
        },
    )


def test_the_admin_action_asks_for_a_reason_then_cancels_and_logs_it(
    digits: tuple[ModelVersion, ...], running: ABTest
) -> None:
    client = _client(_user("cora", "control.view_abtest", "control.change_abtest", staff=True))

    asked = _action(client, [running.pk])
    assert asked.status_code == 200 and "Cancel A/B tests" in asked.content.decode()
    running.refresh_from_db()
    assert running.status == ABTestStatus.RUNNING

    blank = _action(client, [running.pk], confirm="yes", reason="  ")
    assert blank.status_code == 200 and "reason" in blank.context["form"].errors
    running.refresh_from_db()
    assert running.status == ABTestStatus.RUNNING

    done = _action(client, [running.pk], confirm="yes", reason="traffic needed for a canary")
    assert done.status_code == 302
    running.refresh_from_db()
    assert running.status == ABTestStatus.CANCELLED
    assert running.outcome == "cancelled by user:cora: traffic needed for a canary"
    entry = LogEntry.objects.get(object_id=str(running.pk))
    assert entry.action_flag == CHANGE and entry.user.username == "cora"
    # The page after the redirect says so; the arms are back.
    page = client.get(done["Location"]).content.decode()
    assert f"A/B test #{running.pk} of digits cancelled" in html.unescape(page)
    assert _served_versions() == {digits[0].version}


def test_the_admin_action_on_a_finished_test_is_an_error_message_and_changes_nothing(
    digits: tuple[ModelVersion, ...], running: ABTest
) -> None:
    ab_test_cancel(test=running, actor=SYSTEM, reason="earlier")
    client = _client(_user("cora", "control.view_abtest", "control.change_abtest", staff=True))
    response = _action(client, [running.pk])
    assert response.status_code == 302
    text = html.unescape(client.get(response["Location"]).content.decode())
    assert f"A/B test #{running.pk} is cancelled: only a running test can be cancelled" in text
    running.refresh_from_db()
    assert running.outcome == "cancelled by system:test: earlier"


def test_without_the_change_permission_the_admin_offers_no_cancel_and_refuses_it(
    digits: tuple[ModelVersion, ...], running: ABTest
) -> None:
    client = _client(_user("vera", "control.view_abtest", staff=True))
    page = client.get(CHANGELIST)
    assert "cancel_selected" not in page.content.decode()
    _action(client, [running.pk], confirm="yes", reason="try")
    running.refresh_from_db()
    assert running.status == ABTestStatus.RUNNING
    # The test's page stays read only for someone who may change tests, too.
    editor = _client(_user("cora", "control.view_abtest", "control.change_abtest", staff=True))
    assert 'name="_save"' not in editor.get(f"{CHANGELIST}{running.pk}/change/").content.decode()


# --- the deployment page ---


def _page_cancel(client: Client, test: ABTest, reason: str) -> Any:
    page = client.get("/registry/digits/")
    assert page.status_code == 200
    return client.post(
        "/registry/digits/ab/cancel",
        {"ab_test_id": test.pk, "reason": reason, "csrfmiddlewaretoken": page.context["csrf_token"]},
    )


def test_the_deployment_page_offers_cancel_to_holders_of_the_permission_and_it_cancels(
    digits: tuple[ModelVersion, ...], running: ABTest
) -> None:
    client = _client(_user("cora", "experiments.view_experiment", "control.change_abtest"))
    page = client.get("/registry/digits/").content.decode()
    assert 'id="ab-test-cancel-open"' in page and f'name="ab_test_id" value="{running.pk}"' in page

    blank = _page_cancel(client, running, "")
    assert blank.status_code == 302
    running.refresh_from_db()
    assert running.status == ABTestStatus.RUNNING

    done = _page_cancel(client, running, "not now")
    assert done.status_code == 302 and done["Location"] == "/registry/digits/"
    running.refresh_from_db()
    assert running.status == ABTestStatus.CANCELLED and running.outcome == "cancelled by user:cora: not now"
    after = html.unescape(client.get("/registry/digits/").content.decode())
    assert f"A/B test #{running.pk} of digits cancelled" in after
    assert 'id="ab-test-cancel-open"' not in after


def test_the_deployment_page_refuses_cancel_without_the_permission(
    digits: tuple[ModelVersion, ...], running: ABTest
) -> None:
    client = _client(_user("vic", "experiments.view_experiment"))
    page = client.get("/registry/digits/").content.decode()
    assert 'id="ab-test-cancel-open"' not in page
    assert _page_cancel(client, running, "try").status_code == 403
    running.refresh_from_db()
    assert running.status == ABTestStatus.RUNNING


def test_cancelling_a_winner_awaiting_approval_dismisses_its_trigger(
    digits: tuple[ModelVersion, ...], running: ABTest
) -> None:
    from control.policies.models import TriggerEvent, TriggerStatus

    # As the sweep leaves an approve-mode test whose winner is found (see test_ab_test_decisions).
    _v1, v2, v3 = digits
    policy = Policy.objects.get(name="digits-ab")
    experiment = ModelVersion.objects.get(pk=v2.pk).experiment
    trigger = TriggerEvent.objects.create(
        policy=policy,
        experiment=experiment,
        kind="ab_test",
        conditions_passed=True,
        status=TriggerStatus.PENDING_APPROVAL,
    )
    ABTest.objects.filter(pk=running.pk).update(
        status=ABTestStatus.AWAITING_APPROVAL,
        winner=v2,
        trigger=trigger,
        arms=[v2.pk],
        dropped=[{"version": f"v{v3.version}", "version_id": v3.pk, "beaten_by": f"v{v2.version}"}],
    )
    ModelVersion.objects.filter(pk=v3.pk).update(traffic_pct=0.0)
    running.refresh_from_db()
    person = _user("cora", "control.change_abtest")

    ab_test_cancel(test=running, actor=Actor.for_user(person), reason="no promotion today")

    trigger.refresh_from_db()
    assert (trigger.status, trigger.decided_by) == (TriggerStatus.DISMISSED, person)
    running.refresh_from_db()
    assert running.status == ABTestStatus.CANCELLED and running.winner_id is None
    # The beaten arm was not archived (nothing was carried out): it goes back to staging too.
    assert ModelVersion.objects.get(pk=v2.pk).stage == ModelStage.NONE
    assert ModelVersion.objects.get(pk=v3.pk).stage == ModelStage.STAGING
    assert _served_versions() == {digits[0].version}
