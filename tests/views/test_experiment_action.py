"""Action buttons: POST with CSRF, audited with the person as actor; 409 when the state moved on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from experiments.models import Experiment, TransitionLog


def _action(experiment: Experiment, event: str) -> str:
    return reverse("experiments:action", args=[experiment.pk, event])


def test_start_queues_the_experiment_and_writes_an_audit_row(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment()
    response = researcher_client.post(_action(experiment, "queue"), {"reason": "looks good"})
    assert response.status_code == 302
    assert response["Location"] == experiment.get_absolute_url()
    experiment.refresh_from_db()
    assert experiment.state == "queued"
    log = TransitionLog.objects.get(experiment=experiment)
    assert (log.event, log.source_state, log.target_state) == ("queue", "pending", "queued")
    assert log.actor == "user:ana"
    assert log.user is not None and log.user.username == "ana"
    assert log.reason == "looks good"
    page = researcher_client.get(response["Location"]).content.decode()
    assert "is now queued" in page


def test_action_without_csrf_token_is_refused_and_changes_nothing(
    researcher: User, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment()
    client = Client(enforce_csrf_checks=True)
    client.force_login(researcher)
    response = client.post(_action(experiment, "queue"))
    assert response.status_code == 403
    experiment.refresh_from_db()
    assert experiment.state == "pending"
    assert not TransitionLog.objects.exists()


def test_action_with_the_pages_csrf_token_works(
    researcher: User, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment()
    client = Client(enforce_csrf_checks=True)
    client.force_login(researcher)
    client.get(experiment.get_absolute_url())
    token = client.cookies["csrftoken"].value
    response = client.post(_action(experiment, "queue"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    experiment.refresh_from_db()
    assert experiment.state == "queued"


def test_refused_transition_answers_409_with_an_already_message(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment(state="queued")
    response = researcher_client.post(_action(experiment, "queue"))
    assert response.status_code == 409
    html = response.content.decode()
    assert "already queued" in html
    assert 'id="state-badge"' in html  # the page itself, with the message on it
    assert TransitionLog.objects.filter(experiment=experiment).count() == 1


def test_refused_transition_answers_json_409_to_a_json_client(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment(state="cancelled")
    response = researcher_client.post(_action(experiment, "cancel"), HTTP_ACCEPT="application/json")
    assert response.status_code == 409
    assert "already cancelled" in response.json()["detail"]


def test_second_of_two_identical_presses_gets_409(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment(state="evaluating")
    assert researcher_client.post(_action(experiment, "promote")).status_code == 302
    second = researcher_client.post(_action(experiment, "promote"))
    assert second.status_code == 409
    assert "already promoting" in second.content.decode()
    assert TransitionLog.objects.filter(experiment=experiment, event="promote").count() == 1


def test_json_client_gets_the_new_state(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment()
    response = researcher_client.post(_action(experiment, "queue"), HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["state"] == "queued"


def test_missing_permission_is_403_and_nothing_changes(
    client: Client, make_user: Callable[..., User], make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment("secret-zebra-model", state="evaluating")
    client.force_login(make_user("cat", perms=["view_experiment", "cancel_experiment"]))
    response = client.post(_action(experiment, "promote"))
    assert response.status_code == 403
    page = response.content.decode()
    assert "may not promote" in page
    # The refusal carries no object data: not the experiment's name, owner or history.
    assert experiment.name not in page
    experiment.refresh_from_db()
    assert experiment.state == "evaluating"
    assert not TransitionLog.objects.filter(experiment=experiment, event="promote").exists()


def test_cancel_through_the_dialog_form_records_the_reason(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment(state="running")
    researcher_client.post(_action(experiment, "cancel"), {"reason": "wrong learning rate"})
    experiment.refresh_from_db()
    assert experiment.state == "cancelled"
    assert TransitionLog.objects.get(experiment=experiment, event="cancel").reason == "wrong learning rate"


def test_retrain_opens_the_queued_child(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    parent = make_experiment("base", state="failed")
    response = researcher_client.post(_action(parent, "retrain"))
    child = Experiment.objects.get(parent=parent)
    assert response.status_code == 302
    assert response["Location"] == child.get_absolute_url()
    assert child.state == "queued"
    assert TransitionLog.objects.get(experiment=parent, event="retrain").actor == "user:ana"


@pytest.mark.parametrize("event", ["explode", "get_absolute_url", "save"])
def test_unknown_event_is_404(
    researcher_client: Client, make_experiment: Callable[..., Experiment], event: str
) -> None:
    experiment = make_experiment()
    assert researcher_client.post(_action(experiment, event)).status_code == 404
    experiment.refresh_from_db()
    assert experiment.state == "pending"


def test_action_on_a_missing_experiment_is_404(researcher_client: Client) -> None:
    assert researcher_client.post(reverse("experiments:action", args=[999, "queue"])).status_code == 404


def test_action_by_get_is_not_allowed(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment()
    assert researcher_client.get(_action(experiment, "queue")).status_code == 405
    experiment.refresh_from_db()
    assert experiment.state == "pending"


def test_an_action_on_an_experiment_the_user_may_not_view_answers_404_like_a_missing_one(
    client: Client, make_user: Callable[..., User], make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment("secret-zebra-model")
    client.force_login(make_user("nobody", perms=[]))

    existing = client.post(_action(experiment, "queue"))
    missing = client.post(f"/experiments/{experiment.pk + 1000}/actions/queue/")

    assert existing.status_code == missing.status_code == 404
    assert experiment.name not in existing.content.decode()
    experiment.refresh_from_db()
    assert experiment.state == "pending"
