"""A person promoting what a policy held overrides it: the verdict is shown, a reason is required."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from experiments.actors import Actor
from experiments.api.tokens import api_token_create
from experiments.choices import State
from experiments.models import Experiment, TransitionLog
from experiments.services import experiment_create, experiment_transition

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("test")
VERDICT = (
    "val_loss no worse than production by more than 5% (val_loss 0.114 vs production 0.078: +46.15% worse)"
)


def _held(by: Actor) -> Experiment:
    experiment = experiment_create(name="two epochs", recipe="digits")
    for event in ("queue", "start", "complete"):
        experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
    return experiment_transition(experiment_id=experiment.pk, event="hold", actor=by, reason=VERDICT)


@pytest.fixture
def promoter() -> User:
    user = User.objects.create_user("pat")
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_experiment", "promote_experiment"])
    )
    return user


def _client(user: User) -> Client:
    client = Client(enforce_csrf_checks=False)
    client.force_login(user)
    return client


def _state(experiment: Experiment) -> str:
    return str(Experiment.objects.get(pk=experiment.pk).state)


def test_the_promote_button_of_a_held_run_shows_the_verdict_and_asks_for_a_reason(promoter: User) -> None:
    experiment = _held(Actor.policy("auto_promote"))
    page = _client(promoter).get(f"/experiments/{experiment.pk}/").content.decode()
    assert 'data-dialog-open="confirm-promote-' in page
    assert "+46.15% worse" in page and "auto_promote" in page
    assert 'name="override" value="1"' in page
    assert "<script>" not in page.split('id="experiment-actions"')[1].split("</div>")[0]


def test_the_page_refuses_promote_without_the_confirmed_override_and_changes_nothing(promoter: User) -> None:
    experiment = _held(Actor.policy("auto_promote"))
    client = _client(promoter)
    url = f"/experiments/{experiment.pk}/actions/promote/"

    unconfirmed = client.post(url, {"reason": "looks fine"})
    assert unconfirmed.status_code == 409 and "+46.15% worse" in unconfirmed.content.decode()
    no_reason = client.post(url, {"override": "1", "reason": "  "})
    assert no_reason.status_code == 400 and "override policy auto_promote" in no_reason.content.decode()
    assert _state(experiment) == State.COMPLETED
    assert not TransitionLog.objects.filter(experiment=experiment, event="promote").exists()

    confirmed = client.post(url, {"override": "1", "reason": "the held-out set is skewed"})
    assert confirmed.status_code == 302 and _state(experiment) == State.PROMOTING
    promote = TransitionLog.objects.get(experiment=experiment, event="promote")
    assert promote.reason == "override of auto_promote: the held-out set is skewed"
    assert promote.actor == "user:pat"


def test_the_api_answers_409_naming_the_verdict_then_422_without_a_reason(promoter: User) -> None:
    experiment = _held(Actor.policy("auto_promote"))
    raw = api_token_create(user=promoter, name="ci")[1]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    url = f"/api/experiments/{experiment.pk}/actions/promote"

    def post(body: dict[str, object]) -> tuple[int, Any]:
        answer = client.post(url, json.dumps(body), content_type="application/json")
        return answer.status_code, answer.json()

    status, body = post({"reason": "ship it"})
    assert status == 409 and body["override_required"] is True
    assert body["held_by"] == {"policy": "auto_promote", "verdict": VERDICT}
    status, body = post({"override": True})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "reason"]
    assert _state(experiment) == State.COMPLETED

    status, body = post({"override": True, "reason": "accepted by the team"})
    assert status == 200 and body["state"] == State.PROMOTING
    assert (
        TransitionLog.objects.get(experiment=experiment, event="promote").reason
        == "override of auto_promote: accepted by the team"
    )


def test_a_run_a_person_held_is_promoted_without_an_override(promoter: User) -> None:
    experiment = _held(Actor.for_user(promoter))
    page = _client(promoter).get(f"/experiments/{experiment.pk}/").content.decode()
    assert 'name="override"' not in page
    answer = _client(promoter).post(f"/experiments/{experiment.pk}/actions/promote/", {})
    assert answer.status_code == 302 and _state(experiment) == State.PROMOTING
