"""The external-run ingest API: start, batches (idempotent, bounded), control state, finish, run-scoped tokens."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.models import User
from django.test import Client

from experiments.choices import Executor, RunStatus, State
from experiments.models import Experiment, MetricPoint, Run
from experiments.runs.external import external_run_request_stop
from experiments.services import experiment_create
from tests.api.conftest import TokenFor


def _post(client: Client, url: str, body: Any, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(url, json.dumps(body), content_type="application/json", headers=headers)


def _start(operator: User, token_for: TokenFor, **body: Any) -> dict[str, Any]:
    response = _post(Client(), "/api/runs", {"experiment": "notebook", **body}, token_for(operator))
    assert response.status_code == 201, response.content
    return dict(response.json())


def test_a_run_started_by_name_creates_an_external_experiment_and_answers_a_run_token(
    operator: User, token_for: TokenFor
) -> None:
    started = _start(operator, token_for, config={"lr": 0.1}, params={"layers": 4}, tags={"host": "slurm-7"})

    experiment = Experiment.objects.get(pk=started["experiment_id"])
    assert experiment.executor == Executor.EXTERNAL and experiment.state == State.RUNNING
    assert experiment.owner == operator
    assert started["status"] == RunStatus.RUNNING and started["attempt"] == 1
    assert started["config"] == {"lr": 0.1} and started["params"] == {"layers": 4}
    assert started["tags"] == {"host": "slurm-7"}
    assert started["stop"] is False and started["token"].startswith("crr_")


def test_a_second_run_by_name_joins_the_same_experiment_while_it_can_take_one(
    operator: User, token_for: TokenFor
) -> None:
    first = _start(operator, token_for)
    second = _start(operator, token_for)

    assert second["experiment_id"] == first["experiment_id"] and second["attempt"] == 2
    assert Run.objects.get(pk=first["id"]).status == RunStatus.INTERRUPTED


def test_the_config_is_checked_against_the_recipe_naming_each_field(
    operator: User, token_for: TokenFor
) -> None:
    response = _post(
        Client(),
        "/api/runs",
        {"experiment": "digits on a cluster", "recipe": "digits", "config": {"epochs": 0, "colour": "red"}},
        token_for(operator),
    )

    assert response.status_code == 422
    locs = {tuple(e["loc"]) for e in response.json()["detail"]}
    assert locs == {("body", "config", "epochs"), ("body", "config", "colour")}
    assert not Experiment.objects.exists()


def test_a_run_without_an_experiment_is_refused_on_the_field(operator: User, token_for: TokenFor) -> None:
    for body in ({}, {"experiment": ""}, {"experiment": 1.5}):
        response = _post(Client(), "/api/runs", body, token_for(operator))
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][:2] == ["body", "experiment"]


def test_a_run_joins_an_experiment_named_by_id(operator: User, token_for: TokenFor) -> None:
    experiment = experiment_create(name="by id", recipe="", executor=Executor.EXTERNAL)

    response = _post(Client(), "/api/runs", {"experiment": experiment.pk}, token_for(operator))

    assert response.status_code == 201 and response.json()["experiment_id"] == experiment.pk


def test_a_worker_experiment_takes_no_client_run(operator: User, token_for: TokenFor) -> None:
    experiment = experiment_create(name="digits", recipe="digits")

    response = _post(Client(), "/api/runs", {"experiment": experiment.pk}, token_for(operator))

    assert response.status_code == 409 and "executor external" in response.json()["detail"]
    assert not Run.objects.exists()


def test_a_batch_sent_twice_is_stored_once_and_answers_the_control_state(
    operator: User, token_for: TokenFor
) -> None:
    started = _start(operator, token_for)
    url = f"/api/runs/{started['id']}/metrics"
    batch = {"points": [{"name": "loss", "step": s, "value": 1.0 / (s + 1)} for s in range(500)]}

    first = _post(Client(), url, batch, started["token"])
    again = _post(Client(), url, batch, started["token"])

    assert first.status_code == again.status_code == 200
    assert first.json() == {"stop": False, "reason": None}
    assert MetricPoint.objects.filter(run_id=started["id"]).count() == 500
    history = Client()
    history.force_login(operator)
    body = history.get(
        f"/api/experiments/{started['experiment_id']}/metrics?names=loss&max_points=1000"
    ).json()
    assert body["series"]["loss"]["steps"] == list(range(500))
    assert body["series"]["loss"]["total_points"] == 500


def test_a_bad_point_is_a_422_naming_its_index_and_field_and_nothing_is_written(
    operator: User, token_for: TokenFor
) -> None:
    started = _start(operator, token_for)
    points = [{"name": "loss", "step": 0, "value": 1.0}, {"name": "loss", "step": -4, "value": 1.0}]

    response = _post(Client(), f"/api/runs/{started['id']}/metrics", {"points": points}, started["token"])

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "points", 1, "step"]
    assert not MetricPoint.objects.exists()


def test_a_point_under_the_reserved_sys_prefix_is_a_422_naming_its_name_and_nothing_is_written(
    operator: User, token_for: TokenFor
) -> None:
    started = _start(operator, token_for)
    points = [{"name": "loss", "step": 1, "value": 1.0}, {"name": "sys/rss_mb", "step": 1, "value": 9.0}]

    response = _post(Client(), f"/api/runs/{started['id']}/metrics", {"points": points}, started["token"])

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "points", 1, "name"] and "reserved" in error["msg"]
    assert not MetricPoint.objects.exists()


def test_more_than_ten_thousand_points_is_a_413_naming_points(operator: User, token_for: TokenFor) -> None:
    started = _start(operator, token_for)
    points = [{"name": "l", "step": s, "value": 0.0} for s in range(10_001)]

    response = _post(Client(), f"/api/runs/{started['id']}/metrics", {"points": points}, started["token"])

    assert response.status_code == 413 and response.json()["detail"].startswith("points:")
    assert not MetricPoint.objects.exists()


def test_ten_thousand_points_fit_in_one_batch(operator: User, token_for: TokenFor) -> None:
    started = _start(operator, token_for)
    points = [{"name": "validation/cross_entropy_loss", "step": s, "value": 1 / 3} for s in range(10_000)]

    response = _post(Client(), f"/api/runs/{started['id']}/metrics", {"points": points}, started["token"])

    assert response.status_code == 200
    assert MetricPoint.objects.filter(run_id=started["id"]).count() == 10_000


def test_an_early_stop_reaches_the_client_in_the_heartbeat_answer(
    operator: User, token_for: TokenFor
) -> None:
    started = _start(operator, token_for)
    external_run_request_stop(experiment_id=started["experiment_id"], reason="policy plateau: loss is flat")

    response = _post(Client(), f"/api/runs/{started['id']}/heartbeat", {}, started["token"])

    assert response.json() == {"stop": True, "reason": "policy plateau: loss is flat"}


def test_finish_completes_the_run_and_repeating_it_changes_nothing(
    operator: User, token_for: TokenFor
) -> None:
    started = _start(operator, token_for)
    url = f"/api/runs/{started['id']}/finish"
    body = {"status": "completed", "final_metrics": {"accuracy": 0.93}}

    first = _post(Client(), url, body, started["token"])
    again = _post(Client(), url, {"status": "failed"}, token_for(operator))
    # The run's own token ended with the run: it opens nothing any more.
    late = _post(Client(), url, {"status": "failed"}, started["token"])

    assert first.status_code == again.status_code == 200
    assert again.json()["status"] == RunStatus.SUCCEEDED
    assert again.json()["final_metrics"] == {"accuracy": 0.93}
    assert late.status_code == 401
    assert Run.objects.get(pk=started["id"]).status == RunStatus.SUCCEEDED
    assert Experiment.objects.get(pk=started["experiment_id"]).state == State.EVALUATING


def test_an_unknown_finish_status_is_refused_on_the_field(operator: User, token_for: TokenFor) -> None:
    started = _start(operator, token_for)

    response = _post(Client(), f"/api/runs/{started['id']}/finish", {"status": "done"}, started["token"])

    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "status"]


def test_params_and_tags_merge(operator: User, token_for: TokenFor) -> None:
    started = _start(operator, token_for, params={"lr": 0.1})
    base = f"/api/runs/{started['id']}"

    _post(Client(), f"{base}/params", {"params": {"lr": 0.05, "batch": 32}}, started["token"])
    answer = _post(Client(), f"{base}/tags", {"tags": {"git": "abc123"}}, started["token"]).json()

    assert answer["params"] == {"lr": 0.05, "batch": 32} and answer["tags"] == {"git": "abc123"}


def test_a_run_token_writes_to_its_own_run_only(operator: User, token_for: TokenFor) -> None:
    mine = _start(operator, token_for)
    other = _start(operator, token_for, experiment="another notebook")
    batch = {"points": [{"name": "loss", "step": 1, "value": 0.5}]}

    elsewhere = _post(Client(), f"/api/runs/{other['id']}/metrics", batch, mine["token"])
    new_run = _post(Client(), "/api/runs", {"experiment": "sneaky"}, mine["token"])
    listing = Client().get("/api/experiments", headers={"Authorization": f"Bearer {mine['token']}"})
    cancel = _post(Client(), f"/api/experiments/{other['experiment_id']}/actions/cancel", {}, mine["token"])

    assert elsewhere.status_code == 403 and f"run #{mine['id']}" in elsewhere.json()["detail"]
    assert new_run.status_code == listing.status_code == cancel.status_code == 403
    assert not MetricPoint.objects.exists()
    assert Experiment.objects.get(pk=other["experiment_id"]).state == State.RUNNING
    assert _post(Client(), f"/api/runs/{mine['id']}/metrics", batch, mine["token"]).status_code == 200


def test_a_user_without_the_start_permission_cannot_start_or_write(
    viewer: User, operator: User, token_for: TokenFor
) -> None:
    started = _start(operator, token_for)

    refused = _post(Client(), "/api/runs", {"experiment": "x"}, token_for(viewer))
    write = _post(Client(), f"/api/runs/{started['id']}/heartbeat", {}, token_for(viewer))
    anonymous = _post(Client(), f"/api/runs/{started['id']}/heartbeat", {})

    assert refused.status_code == write.status_code == 403
    assert anonymous.status_code == 401


def test_a_session_write_needs_csrf(operator: User, token_for: TokenFor) -> None:
    started = _start(operator, token_for)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(operator)

    response = _post(browser, f"/api/runs/{started['id']}/heartbeat", {})

    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


def test_an_unknown_run_is_a_404(operator: User, token_for: TokenFor) -> None:
    response = _post(Client(), "/api/runs/999999/heartbeat", {}, token_for(operator))

    assert response.status_code == 404


def test_a_metrics_body_over_its_bound_is_a_413_before_it_is_read(
    operator: User, token_for: TokenFor
) -> None:
    started = _start(operator, token_for)
    name = "n" * 64
    points = [
        {"name": name, "step": s, "value": 0.1234567890123, "wall_time": 1764598000.123456}
        for s in range(9_999)
    ]
    body = json.dumps({"points": points, "padding": "x" * 1_200_000})

    response = Client().post(
        f"/api/runs/{started['id']}/metrics",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {started['token']}"},
    )

    assert len(body) > 2_621_440
    assert response.status_code == 413 and response.json()["detail"].startswith("body: at most 2621440 bytes")
    assert not MetricPoint.objects.exists()
