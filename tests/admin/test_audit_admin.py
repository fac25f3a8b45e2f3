"""Records of what happened (audit log, runs, metrics, tokens) cannot be written through the admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments.actors import Actor
from experiments.models import TransitionLog
from experiments.services import experiment_create, experiment_transition


@pytest.fixture
def log(db: Any) -> TransitionLog:
    experiment = experiment_create(name="audited", recipe="digits")
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.policy("drift"))
    return TransitionLog.objects.get()


def test_audit_log_is_listed_and_viewable(staff_client: Client, log: TransitionLog) -> None:
    html = staff_client.get(reverse("admin:experiments_transitionlog_changelist")).content.decode()
    assert "policy:drift" in html
    page = staff_client.get(reverse("admin:experiments_transitionlog_change", args=[log.pk]))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()


def test_audit_log_cannot_be_added_changed_or_deleted(staff_client: Client, log: TransitionLog) -> None:
    assert staff_client.get(reverse("admin:experiments_transitionlog_add")).status_code == 403
    response = staff_client.post(
        reverse("admin:experiments_transitionlog_change", args=[log.pk]),
        {"actor": "user:forger", "event": "queue", "reason": "rewritten"},
    )
    assert response.status_code == 403
    assert (
        staff_client.post(
            reverse("admin:experiments_transitionlog_delete", args=[log.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    log.refresh_from_db()
    assert log.actor == "policy:drift"
    changelist = staff_client.post(
        reverse("admin:experiments_transitionlog_changelist"),
        {"action": "delete_selected", "_selected_action": [log.pk], "post": "yes"},
    )
    assert changelist.status_code in (200, 302)
    assert TransitionLog.objects.filter(pk=log.pk).exists()


@pytest.mark.parametrize(
    "model",
    [
        "experiments_run",
        "experiments_metricpoint",
        "experiments_apitoken",
        "experiments_modelversion",
        "experiments_datasetversion",
        "experiments_driftcheck",
        "control_canaryrollout",
    ],
)
def test_runs_metrics_and_tokens_cannot_be_added_in_the_admin(staff_client: Client, model: str) -> None:
    assert staff_client.get(reverse(f"admin:{model}_changelist")).status_code == 200
    assert staff_client.get(reverse(f"admin:{model}_add")).status_code == 403
