"""POST /api/experiments/{id}/actions/{event}: fire lifecycle events, audited, one winner per race."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from experiments.models import Experiment, TransitionLog
from tests.api.conftest import ClientFor, MakeExperiment, TokenFor, post_json


def _action(experiment: Experiment, event: str) -> str:
    return f"/api/experiments/{experiment.pk}/actions/{event}"


def test_start_queues_the_experiment_and_audits_who_and_why(
    api: Client, make_experiment: MakeExperiment
) -> None:
    experiment = make_experiment()
    response = post_json(api, _action(experiment, "queue"), {"reason": "baseline run"})
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "queued"
    experiment.refresh_from_db()
    assert experiment.state == "queued"
    log = TransitionLog.objects.get(experiment=experiment)
    assert (log.event, log.source_state, log.target_state, log.actor, log.reason) == (
        "queue",
        "pending",
        "queued",
        "user:olga",
        "baseline run",
    )


def test_the_body_is_optional(api: Client, make_experiment: MakeExperiment) -> None:
    experiment = make_experiment(state="running")
    response = post_json(api, _action(experiment, "cancel"))
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert TransitionLog.objects.get(experiment=experiment).reason == ""


def test_retrain_answers_201_with_the_queued_child(api: Client, make_experiment: MakeExperiment) -> None:
    parent = make_experiment(name="digits v1", state="deployed")
    response = post_json(api, _action(parent, "retrain"), {"reason": "drift"})
    assert response.status_code == 201
    child = response.json()
    assert child["parent_id"] == parent.pk and child["id"] != parent.pk
    assert child["state"] == "queued" and child["config"] == parent.config
    parent.refresh_from_db()
    assert parent.state == "deployed"
    assert api.get(f"/api/experiments/{parent.pk}").json()["children_ids"] == [child["id"]]


def test_a_refused_transition_is_409_with_the_current_state(
    api: Client, make_experiment: MakeExperiment
) -> None:
    experiment = make_experiment(state="promoting")
    response = post_json(api, _action(experiment, "promote"))
    assert response.status_code == 409
    assert response.json() == {"detail": response.json()["detail"], "state": "promoting"}
    assert "already promoting" in response.json()["detail"]
    assert not TransitionLog.objects.exists()


def test_an_unknown_event_is_400_listing_the_known_ones(api: Client, make_experiment: MakeExperiment) -> None:
    experiment = make_experiment()
    response = post_json(api, _action(experiment, "launch"))
    assert response.status_code == 400
    data = response.json()
    assert (
        "launch" in data["detail"] and "queue" in data["known_events"] and "retrain" in data["known_events"]
    )


def test_an_unknown_experiment_is_404(api: Client) -> None:
    response = post_json(api, "/api/experiments/999/actions/cancel")
    assert response.status_code == 404
    assert "999" in response.json()["detail"]


def test_a_bad_reason_is_422_at_its_path(api: Client, make_experiment: MakeExperiment) -> None:
    experiment = make_experiment()
    response = post_json(api, _action(experiment, "queue"), {"reason": 42})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "reason"]
    experiment.refresh_from_db()
    assert experiment.state == "pending"


def test_without_the_transition_permission_it_is_403_and_nothing_changes(
    viewer: User,
    client_for: ClientFor,
    make_experiment: MakeExperiment,
) -> None:
    experiment = make_experiment(state="running")
    response = post_json(client_for(viewer), _action(experiment, "cancel"), {"reason": "mine"})
    assert response.status_code == 403
    assert "cancel" in response.json()["detail"]
    experiment.refresh_from_db()
    assert experiment.state == "running"
    assert not TransitionLog.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_clients_racing_the_same_promote_get_one_200_and_one_409(
    operator: User, token_for: TokenFor, make_experiment: MakeExperiment
) -> None:
    experiment = make_experiment(name="race", state="evaluating")
    url = _action(experiment, "promote")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_for(operator)}"}
    barrier = threading.Barrier(2)
    answers: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def press() -> None:
        try:
            client = Client()
            barrier.wait(timeout=10)
            # Each thread has its own database connection, as two web workers would.
            response = post_json(client, url, {"reason": "looks good"}, **headers)
            with lock:
                answers.append((response.status_code, response.json()))
        finally:
            connection.close()

    threads = [threading.Thread(target=press) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(status for status, _ in answers) == [200, 409]
    refused = next(body for status, body in answers if status == 409)
    assert refused["state"] == "promoting" and "already promoting" in refused["detail"]
    experiment.refresh_from_db()
    assert experiment.state == "promoting"
    assert TransitionLog.objects.filter(experiment=experiment, event="promote").count() == 1
