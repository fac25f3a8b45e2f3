"""Experiment admin: transition buttons fire the audited service; filters, search, config validation."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from experiments.actors import Actor
from experiments.models import Experiment, TransitionLog
from experiments.services import experiment_create, experiment_transition
from tests.admin.conftest import change_form_data


def _buttons(html: str) -> set[str]:
    """Return the transitions offered as buttons on an admin change page."""
    return set(re.findall(r'name="_fsm_transition_to"\s+value="(\w+)"', html))


def _change_url(experiment: Experiment) -> str:
    return reverse("admin:experiments_experiment_change", args=[experiment.pk])


@pytest.fixture
def experiment(db: Any) -> Experiment:
    return experiment_create(
        name="digits in admin", recipe="digits", config={"epochs": 3}, tags=["admin-tag"]
    )


def _press(client: Client, experiment: Experiment, event: str) -> Any:
    """Press a transition button the way the browser does: submit the change form with it."""
    page = client.get(_change_url(experiment))
    assert page.status_code == 200
    data = change_form_data(page.content.decode())
    data["_fsm_transition_to"] = event
    return client.post(_change_url(experiment), data, follow=True)


def test_change_page_offers_person_events_only(staff_client: Client, experiment: Experiment) -> None:
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))
    experiment_transition(experiment_id=experiment.pk, event="start", actor=Actor.system("test"))
    html = staff_client.get(_change_url(experiment)).content.decode()
    # complete, fail and requeue belong to the worker and the scheduler.
    assert _buttons(html) == {"cancel"}


def test_admin_transition_button_goes_through_the_audit(
    staff_client: Client, admin_user: User, experiment: Experiment
) -> None:
    assert _buttons(staff_client.get(_change_url(experiment)).content.decode()) == {"queue", "cancel"}
    response = _press(staff_client, experiment, "queue")
    assert response.status_code == 200
    experiment.refresh_from_db()
    assert experiment.state == "queued"
    log = TransitionLog.objects.get(experiment=experiment)
    assert (log.event, log.source_state, log.target_state) == ("queue", "pending", "queued")
    assert log.actor == "user:boss" and log.user == admin_user
    assert "is now queued" in response.content.decode()


def test_admin_button_pressed_after_someone_else_moved_on_shows_the_refusal(
    staff_client: Client, experiment: Experiment
) -> None:
    page = staff_client.get(_change_url(experiment))
    data = change_form_data(page.content.decode())
    # Another person cancels while the admin page is open.
    experiment_transition(experiment_id=experiment.pk, event="cancel", actor=Actor.system("test"))
    data["_fsm_transition_to"] = "queue"
    response = staff_client.post(_change_url(experiment), data, follow=True)
    assert "already cancelled" in response.content.decode()
    experiment.refresh_from_db()
    assert experiment.state == "cancelled"
    assert not TransitionLog.objects.filter(event="queue").exists()


def test_admin_without_the_transition_permission_gets_an_error_and_nothing_changes(
    client: Client, experiment: Experiment
) -> None:
    clerk = User.objects.create_user("clerk", password="pw-clerk-123", is_staff=True)
    clerk.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_experiment", "change_experiment"])
    )
    client.force_login(clerk)
    html = client.get(_change_url(experiment)).content.decode()
    assert _buttons(html) == set()  # no button without the permission
    data = change_form_data(html)
    data["_fsm_transition_to"] = "queue"
    response = client.post(_change_url(experiment), data, follow=True)
    assert "may not start" in response.content.decode()
    experiment.refresh_from_db()
    assert experiment.state == "pending"
    assert not TransitionLog.objects.exists()


def test_changelist_filters_and_searches_name_and_tags(staff_client: Client, experiment: Experiment) -> None:
    experiment_create(name="charlm other", recipe="charlm")
    url = reverse("admin:experiments_experiment_changelist")
    html = staff_client.get(url, {"state__exact": "pending", "recipe": "digits"}).content.decode()
    assert "digits in admin" in html and "charlm other" not in html
    html = staff_client.get(url, {"q": "admin-tag"}).content.decode()
    assert "digits in admin" in html and "charlm other" not in html


def test_admin_add_form_validates_config_against_the_recipe(staff_client: Client) -> None:
    url = reverse("admin:experiments_experiment_add")
    data = change_form_data(staff_client.get(url).content.decode())
    data.update(name="bad config", recipe="digits", config=json.dumps({"epochs": 0, "nope": 1}), tags="[]")
    response = staff_client.post(url, data)
    assert response.status_code == 200
    html = response.content.decode()
    assert "epochs: must be at least 1" in html
    assert "nope: unknown parameter" in html
    assert not Experiment.objects.filter(name="bad config").exists()
    data["config"] = json.dumps({"epochs": 2})
    response = staff_client.post(url, data)
    assert response.status_code == 302
    created = Experiment.objects.get(name="bad config")
    assert created.state == "pending" and created.config["epochs"] == 2
