"""The MLflow tracking API in process: MLflow's shapes and errors, search, auth, and the Crucible side of each run."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from experiments.api.tokens import api_token_create
from experiments.choices import Executor, RunStatus, State
from experiments.mlflow.auth import verified_passwords
from experiments.models import Experiment, MetricPoint, MlflowRun
from experiments.permissions import researcher_group_ensure
from experiments.runs.tokens import run_token_mint

PREFIX = "/api/2.0/mlflow"


class Caller:
    """An HTTP client sending one Authorization header with every request."""

    def __init__(self, authorization: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": authorization} if authorization else {}

    def get(self, endpoint: str, **params: Any) -> Any:
        return self.client.get(f"{PREFIX}/{endpoint}", params, headers=self.headers)

    def post(self, endpoint: str, body: dict[str, Any]) -> Any:
        return self.client.post(
            f"{PREFIX}/{endpoint}", json.dumps(body), content_type="application/json", headers=self.headers
        )


def _token_caller(user: User) -> Caller:
    _, raw = api_token_create(user=user, name="mlflow test")
    return Caller(f"Bearer {raw}")


@pytest.fixture
def researcher(db: Any) -> User:
    user = User.objects.create_user("rita")
    user.groups.add(researcher_group_ensure())
    return user


@pytest.fixture
def api(researcher: User) -> Caller:
    return _token_caller(researcher)


def _error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error_code"] == code, body
    return str(body["message"])


def _start_run(api: Caller, experiment_name: str = "mnist", **extra: Any) -> dict[str, Any]:
    found = api.get("experiments/get-by-name", experiment_name=experiment_name)
    if found.status_code == 404:
        experiment_id = api.post("experiments/create", {"name": experiment_name}).json()["experiment_id"]
    else:
        experiment_id = found.json()["experiment"]["experiment_id"]
    response = api.post(
        "runs/create", {"experiment_id": experiment_id, "start_time": 1_700_000_000_000, **extra}
    )
    assert response.status_code == 200, response.content
    return dict(response.json()["run"])


def test_experiments_are_created_found_by_id_and_name_and_refused_twice(api: Caller) -> None:
    created = api.post("experiments/create", {"name": "mnist", "tags": [{"key": "team", "value": "vision"}]})
    assert created.status_code == 200, created.content
    experiment_id = created.json()["experiment_id"]
    by_id = api.get("experiments/get", experiment_id=experiment_id).json()["experiment"]
    by_name = api.get("experiments/get-by-name", experiment_name="mnist").json()["experiment"]
    assert by_id == by_name
    assert by_id["name"] == "mnist" and by_id["lifecycle_stage"] == "active"
    assert by_id["tags"] == [{"key": "team", "value": "vision"}]
    message = _error(api.post("experiments/create", {"name": "mnist"}), 400, "RESOURCE_ALREADY_EXISTS")
    assert "mnist" in message
    _error(api.get("experiments/get-by-name", experiment_name="nope"), 404, "RESOURCE_DOES_NOT_EXIST")
    _error(api.get("experiments/get", experiment_id="999999"), 404, "RESOURCE_DOES_NOT_EXIST")
    assert "'name'" in _error(api.post("experiments/create", {}), 400, "INVALID_PARAMETER_VALUE")


def test_the_default_experiment_exists_for_scripts_that_never_name_one(api: Caller) -> None:
    default = api.get("experiments/get", experiment_id="0").json()["experiment"]
    assert default["name"] == "Default"
    run = api.post("runs/create", {"experiment_id": "0"}).json()["run"]
    assert run["info"]["experiment_id"] == "0"
    names = [e["name"] for e in api.post("experiments/search", {}).json()["experiments"]]
    assert "Default" in names


def test_a_run_is_an_external_crucible_experiment_that_is_running(api: Caller, researcher: User) -> None:
    run = _start_run(api, run_name="lr-sweep-1", tags=[{"key": "mlflow.user", "value": "rita"}])
    info = run["info"]
    assert info["status"] == "RUNNING" and info["run_name"] == "lr-sweep-1"
    assert info["run_id"] == info["run_uuid"] and len(info["run_id"]) == 32
    mlflow_run = MlflowRun.objects.select_related("experiment", "run").get(run_uuid=info["run_id"])
    experiment = mlflow_run.experiment
    assert experiment.executor == Executor.EXTERNAL
    assert experiment.state == State.RUNNING and experiment.owner == researcher
    assert experiment.name == "mnist / lr-sweep-1"
    assert mlflow_run.run.status == RunStatus.RUNNING
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["mlflow.runName"] == "lr-sweep-1" and tags["crucible.experiment_id"] == str(experiment.pk)
    # The audit says who started it.
    actors = list(experiment.transitions.values_list("event", "actor"))
    assert ("queue", "user:rita") in actors


def test_metrics_params_and_tags_are_logged_and_read_back(api: Caller) -> None:
    run_id = _start_run(api)["info"]["run_id"]
    batch = {
        "run_id": run_id,
        "metrics": [
            {"key": "loss", "value": 1.0 / (s + 1), "timestamp": 1_700_000_000_000 + s, "step": s}
            for s in range(50)
        ],
        "params": [{"key": "lr", "value": "0.01"}, {"key": "epochs", "value": "5"}],
        "tags": [{"key": "stage", "value": "dev"}],
    }
    assert api.post("runs/log-batch", batch).status_code == 200
    assert (
        api.post(
            "runs/log-metric", {"run_id": run_id, "key": "acc", "value": 0.5, "timestamp": 1, "step": 3}
        ).status_code
        == 200
    )
    assert api.post("runs/log-parameter", {"run_id": run_id, "key": "seed", "value": "7"}).status_code == 200
    # A retried batch stores nothing twice.
    assert api.post("runs/log-batch", batch).status_code == 200
    assert api.post("runs/set-tag", {"run_id": run_id, "key": "stage", "value": "prod"}).status_code == 200
    assert MetricPoint.objects.filter(run__mlflow_run__run_uuid=run_id, name="loss").count() == 50

    data = api.get("runs/get", run_id=run_id).json()["run"]["data"]
    assert {p["key"]: p["value"] for p in data["params"]} == {"lr": "0.01", "epochs": "5", "seed": "7"}
    assert {t["key"]: t["value"] for t in data["tags"]}["stage"] == "prod"
    latest = {m["key"]: m for m in data["metrics"]}
    assert latest["loss"]["step"] == 49 and latest["loss"]["value"] == pytest.approx(1 / 50)
    assert latest["loss"]["timestamp"] == 1_700_000_000_049

    history = api.get("metrics/get-history", run_id=run_id, metric_key="loss").json()["metrics"]
    assert [m["step"] for m in history] == list(range(50))
    assert history[0] == {"key": "loss", "value": 1.0, "timestamp": 1_700_000_000_000, "step": 0}
    page = api.get("metrics/get-history", run_id=run_id, metric_key="loss", max_results=20).json()
    second = api.get(
        "metrics/get-history",
        run_id=run_id,
        metric_key="loss",
        max_results=20,
        page_token=page["next_page_token"],
    ).json()
    assert [m["step"] for m in second["metrics"]] == list(range(20, 40))


def test_a_param_keeps_its_first_value_as_in_mlflow(api: Caller) -> None:
    run_id = _start_run(api)["info"]["run_id"]
    api.post("runs/log-parameter", {"run_id": run_id, "key": "lr", "value": "0.01"})
    assert api.post("runs/log-parameter", {"run_id": run_id, "key": "lr", "value": "0.01"}).status_code == 200
    message = _error(
        api.post("runs/log-parameter", {"run_id": run_id, "key": "lr", "value": "0.1"}),
        400,
        "INVALID_PARAMETER_VALUE",
    )
    assert "lr" in message and "0.1" in message


def test_bad_metrics_are_refused_naming_the_field_and_nothing_is_stored(api: Caller) -> None:
    run_id = _start_run(api)["info"]["run_id"]
    good = {"key": "loss", "value": 0.5, "timestamp": 1, "step": 1}
    for bad, field in [
        ({"key": "loss", "value": "high", "timestamp": 1, "step": 2}, "metrics[1].value"),
        ({"key": "loss", "value": 0.1, "timestamp": 1, "step": -1}, "metrics[1].step"),
        ({"key": "x" * 300, "value": 0.1, "timestamp": 1, "step": 2}, "metrics[1].name"),
        ({"value": 0.1}, "metrics[1].key"),
    ]:
        message = _error(
            api.post("runs/log-batch", {"run_id": run_id, "metrics": [good, bad]}),
            400,
            "INVALID_PARAMETER_VALUE",
        )
        assert field in message, message
    assert not MetricPoint.objects.filter(run__mlflow_run__run_uuid=run_id).exists()
    _error(
        api.post("runs/log-batch", {"run_id": "f" * 32, "metrics": [good]}), 404, "RESOURCE_DOES_NOT_EXIST"
    )
    _error(
        api.client.post(
            f"{PREFIX}/runs/log-batch", "{", content_type="application/json", headers=api.headers
        ),
        400,
        "BAD_REQUEST",
    )


def test_nan_is_stored_and_read_back_as_nan(api: Caller) -> None:
    run_id = _start_run(api)["info"]["run_id"]
    api.post("runs/log-metric", {"run_id": run_id, "key": "loss", "value": "NaN", "timestamp": 1, "step": 0})
    history = api.get("metrics/get-history", run_id=run_id, metric_key="loss").json()["metrics"]
    assert history[0]["value"] == "NaN"


@pytest.mark.parametrize(
    ("status", "run_status", "state"),
    [
        ("FINISHED", RunStatus.SUCCEEDED, State.EVALUATING),
        ("FAILED", RunStatus.FAILED, State.FAILED),
        ("KILLED", RunStatus.CANCELLED, State.CANCELLED),
    ],
)
def test_ending_a_run_ends_the_crucible_attempt(
    api: Caller, status: str, run_status: str, state: str
) -> None:
    run_id = _start_run(api)["info"]["run_id"]
    answer = api.post("runs/update", {"run_id": run_id, "status": status, "end_time": 1_700_000_100_000})
    assert answer.status_code == 200, answer.content
    info = answer.json()["run_info"]
    assert info["status"] == status and info["end_time"] == 1_700_000_100_000
    mlflow_run = MlflowRun.objects.select_related("run", "experiment").get(run_uuid=run_id)
    assert mlflow_run.run.status == run_status
    assert mlflow_run.experiment.state == state
    _error(api.post("runs/update", {"run_id": run_id, "status": "DONE"}), 400, "INVALID_PARAMETER_VALUE")


def test_a_run_cancelled_in_the_dashboard_reads_killed(api: Caller, researcher: User) -> None:
    from experiments.actors import Actor
    from experiments.services import experiment_transition

    run_id = _start_run(api)["info"]["run_id"]
    experiment = MlflowRun.objects.get(run_uuid=run_id).experiment
    experiment_transition(experiment_id=experiment.pk, event="cancel", actor=Actor.for_user(researcher))
    info = api.get("runs/get", run_id=run_id).json()["run"]["info"]
    assert info["status"] in ("KILLED", "RUNNING")  # the attempt ends when its cancel is processed
    assert Experiment.objects.get(pk=experiment.pk).state == State.CANCELLED


def test_runs_are_searched_by_status_params_metrics_and_ordered(api: Caller) -> None:
    ids = []
    for i, (lr, acc) in enumerate([("0.1", 0.7), ("0.01", 0.9), ("0.001", 0.8)]):
        run_id = _start_run(api, run_name=f"r{i}", start_time=1_700_000_000_000 + i)["info"]["run_id"]
        api.post(
            "runs/log-batch",
            {
                "run_id": run_id,
                "params": [{"key": "lr", "value": lr}],
                "metrics": [{"key": "acc", "value": acc, "timestamp": 1, "step": 1}],
            },
        )
        ids.append(run_id)
    api.post("runs/update", {"run_id": ids[2], "status": "FINISHED"})
    experiment_id = api.get("experiments/get-by-name", experiment_name="mnist").json()["experiment"][
        "experiment_id"
    ]

    def search(**body: Any) -> list[str]:
        response = api.post("runs/search", {"experiment_ids": [experiment_id], **body})
        assert response.status_code == 200, response.content
        return [r["info"]["run_name"] for r in response.json().get("runs", [])]

    assert search() == ["r2", "r1", "r0"]  # newest start first
    assert search(filter="metrics.acc > 0.75") == ["r2", "r1"]
    assert search(filter="params.lr = '0.01'") == ["r1"]
    assert search(filter="attributes.status = 'FINISHED'") == ["r2"]
    assert search(filter="status = 'RUNNING' and metrics.acc >= 0.7", order_by=["metrics.acc DESC"]) == [
        "r1",
        "r0",
    ]
    assert search(filter="tags.`mlflow.runName` LIKE 'r%'", order_by=["params.lr ASC"]) == ["r2", "r1", "r0"]
    assert search(filter="params.lr IN ('0.1', '0.001')", order_by=["attributes.run_name"]) == ["r0", "r2"]
    first = api.post("runs/search", {"experiment_ids": [experiment_id], "max_results": 2}).json()
    rest = api.post(
        "runs/search", {"experiment_ids": [experiment_id], "page_token": first["next_page_token"]}
    ).json()
    assert [r["info"]["run_name"] for r in first["runs"] + rest["runs"]] == ["r2", "r1", "r0"]
    message = _error(
        api.post("runs/search", {"experiment_ids": [experiment_id], "filter": "metrics.acc > 'high'"}),
        400,
        "INVALID_PARAMETER_VALUE",
    )
    assert "metrics.acc" in message
    _error(
        api.post("runs/search", {"experiment_ids": [experiment_id], "filter": "a = 1 or b = 2"}),
        400,
        "INVALID_PARAMETER_VALUE",
    )


def test_experiments_are_searched_by_name(api: Caller) -> None:
    for name in ("vision-a", "vision-b", "text"):
        api.post("experiments/create", {"name": name})
    found = api.post(
        "experiments/search", {"filter": "name LIKE 'vision%'", "order_by": ["name DESC"]}
    ).json()
    assert [e["name"] for e in found["experiments"]] == ["vision-b", "vision-a"]


def test_artifacts_and_other_endpoints_answer_a_clear_error(api: Caller) -> None:
    message = _error(api.get("artifacts/list", run_id="x"), 501, "NOT_IMPLEMENTED")
    assert "Artifacts are not stored" in message
    response = api.client.put(
        "/api/2.0/mlflow-artifacts/artifacts/0/abc/artifacts/model.pkl", b"x", headers=api.headers
    )
    _error(response, 501, "NOT_IMPLEMENTED")
    _error(api.post("runs/delete", {"run_id": "x"}), 404, "ENDPOINT_NOT_FOUND")
    _error(api.post("runs/get", {"run_id": "x"}), 404, "ENDPOINT_NOT_FOUND")


def test_callers_without_credentials_or_permission_are_refused(db: Any, researcher: User) -> None:
    _error(Caller(None).get("experiments/get", experiment_id="0"), 401, "UNAUTHENTICATED")
    _error(Caller("Bearer cru_wrong").get("experiments/get", experiment_id="0"), 401, "UNAUTHENTICATED")
    # A logged-in browser session is not credentials here (these routes skip CSRF).
    session = Caller(None)
    session.client.force_login(researcher)
    _error(session.post("experiments/create", {"name": "by cookie"}), 401, "UNAUTHENTICATED")

    stranger = _token_caller(User.objects.create_user("sam"))
    _error(stranger.get("experiments/get", experiment_id="0"), 403, "PERMISSION_DENIED")
    viewer = User.objects.create_user("vic")
    viewer.user_permissions.add(Permission.objects.get(codename="view_experiment"))
    as_viewer = _token_caller(viewer)
    assert as_viewer.get("experiments/get", experiment_id="0").status_code == 200
    _error(as_viewer.post("runs/create", {"experiment_id": "0"}), 403, "PERMISSION_DENIED")
    assert not Experiment.objects.exists()


def test_a_run_takes_writes_only_from_its_owner(api: Caller) -> None:
    run_id = _start_run(api)["info"]["run_id"]
    other = User.objects.create_user("otto")
    other.groups.add(researcher_group_ensure())
    message = _error(
        _token_caller(other).post(
            "runs/log-metric", {"run_id": run_id, "key": "loss", "value": 1, "timestamp": 1}
        ),
        403,
        "PERMISSION_DENIED",
    )
    assert run_id in message


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_http_basic_logs_in_a_django_user_and_counts_failures(db: Any, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    verified_passwords.clear()
    user = User.objects.create_user("bea", password="correct horse battery")
    user.groups.add(researcher_group_ensure())
    ok = Caller(_basic("bea", "correct horse battery"))
    assert ok.post("experiments/create", {"name": "basic"}).status_code == 200
    assert ok.get("experiments/get-by-name", experiment_name="basic").status_code == 200

    wrong = Caller(_basic("bea", "wrong"))
    for _ in range(2):
        _error(wrong.get("experiments/get", experiment_id="0"), 401, "UNAUTHENTICATED")
    # The third failure locks the user and the address out: 429, even for the right password.
    locked = wrong.get("experiments/get", experiment_id="0")
    assert locked.status_code == 429
    assert locked.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    verified_passwords.clear()
    assert ok.get("experiments/get", experiment_id="0").status_code == 429


def test_a_changed_password_ends_the_remembered_login(db: Any) -> None:
    verified_passwords.clear()
    user = User.objects.create_user("cy", password="first password 1")
    user.groups.add(researcher_group_ensure())
    caller = Caller(_basic("cy", "first password 1"))
    assert caller.get("experiments/get", experiment_id="0").status_code == 200
    user.set_password("second password 2")
    user.save()
    _error(caller.get("experiments/get", experiment_id="0"), 401, "UNAUTHENTICATED")


def test_a_policys_early_stop_shows_on_the_run_as_a_tag(api: Caller) -> None:
    from experiments.runs.external import external_run_request_stop

    run_id = _start_run(api)["info"]["run_id"]
    mlflow_run = MlflowRun.objects.get(run_uuid=run_id)
    external_run_request_stop(experiment_id=mlflow_run.experiment_id, reason="policy:early_stop: loss is NaN")
    run = api.get("runs/get", run_id=run_id).json()["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    # An MLflow client cannot be told to stop: the run stays RUNNING, and says a stop was asked.
    assert run["info"]["status"] == "RUNNING"
    assert tags["crucible.stop_requested"] == "policy:early_stop: loss is NaN"


def test_a_permission_taken_away_stops_writes_once_the_grant_lapses(api: Caller, researcher: User) -> None:
    from experiments.mlflow.services import write_grants

    run_id = _start_run(api)["info"]["run_id"]
    point = {"run_id": run_id, "key": "loss", "value": 1.0, "timestamp": 1, "step": 0}
    assert api.post("runs/log-metric", point).status_code == 200
    researcher.groups.clear()
    # Still a viewer (a caller who may not even see the run is answered as for a missing one).
    researcher.user_permissions.add(Permission.objects.get(codename="view_experiment"))
    # Within the grant (seconds) the running script keeps logging; after it, the check is made again.
    write_grants.clear()
    _error(api.post("runs/log-metric", {**point, "step": 1}), 403, "PERMISSION_DENIED")


def test_a_run_token_is_refused_here_it_would_act_as_its_user(api: Caller, researcher: User) -> None:
    run_id = _start_run(api)["info"]["run_id"]
    attempt = MlflowRun.objects.get(run_uuid=run_id).run
    raw = run_token_mint(run_id=attempt.pk, experiment_id=attempt.experiment_id)
    scoped = Caller(f"Bearer {raw}")
    message = _error(scoped.post("experiments/create", {"name": "by a run token"}), 403, "PERMISSION_DENIED")
    assert "run token" in message
    _error(
        scoped.post("runs/log-metric", {"run_id": run_id, "key": "loss", "value": 1.0, "timestamp": 1}),
        403,
        "PERMISSION_DENIED",
    )


def test_other_paths_under_api_2_0_keep_the_apis_json_errors(api: Caller) -> None:
    response = api.client.get("/api/2.0/preview/mlflow/experiments/list", headers=api.headers)
    assert response.status_code == 404
    assert "detail" in response.json()
