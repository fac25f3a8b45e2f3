"""The official MLflow client, unchanged, logs into a live Crucible: the run is on the dashboard's live stream and in its history.

Real parts only: Daphne serving the project on the test database and the session's Redis,
the pinned `mlflow` package in its own venv (tests/mlflow/conftest.py), a websocket watching
the fleet page's stream, and Crucible's own history endpoint.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from bench.common import WebSocketClient
from experiments.api.tokens import api_token_create
from experiments.choices import Executor, RunStatus, State
from experiments.models import MetricPoint, MlflowRun
from experiments.permissions import researcher_group_ensure
from tests.mlflow.conftest import run_mlflow_script

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

POINTS = 10_000
BATCH = 1_000

# What a user's training script does, unchanged but for MLFLOW_TRACKING_URI (and its credentials)
# in the environment; then it reads its run back with the client's own calls.
SCRIPT = (
    textwrap.dedent(
        """
    import json, time
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    mlflow.set_experiment("crucible-official-client")
    with mlflow.start_run(run_name="unchanged-script") as run:
        mlflow.log_params({"lr": 0.01, "epochs": 3, "optimizer": "adam"})
        for step in range(20):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.set_tag("stage", "e2e")
        client = MlflowClient()
        now = int(time.time() * 1000)
        for start in range(0, POINTS, BATCH):
            client.log_batch(
                run.info.run_id,
                metrics=[Metric("batch_loss", 1.0 / (s + 1), now + s, s) for s in range(start, start + BATCH)],
            )
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "batch_loss")
    experiment = client.get_experiment_by_name("crucible-official-client")
    found = client.search_runs(
        [experiment.experiment_id], filter_string="params.optimizer = 'adam' and metrics.loss < 0.1"
    )
    ended = client.get_run(run.info.run_id)
    print(json.dumps({
        "run_id": run.info.run_id,
        "experiment_id": experiment.experiment_id,
        "history_steps": [m.step for m in history],
        "history_values_ok": all(abs(m.value - 1.0 / (m.step + 1)) < 1e-12 for m in history),
        "found": [r.info.run_id for r in found],
        "status": ended.info.status,
        "params": ended.data.params,
        "loss": ended.data.metrics.get("loss"),
        "tags": ended.data.tags,
    }))
    """
    )
    .replace("POINTS", str(POINTS))
    .replace("BATCH", str(BATCH))
)


def _researcher(name: str, password: str | None = None) -> User:
    user = User.objects.create_user(name, password=password)
    user.groups.add(researcher_group_ensure())
    return user


class FleetWatch:
    """A dashboard tab on the fleet page: collects every live metric frame in a background thread."""

    def __init__(self, port: int, cookies: dict[str, str]) -> None:
        self.port = port
        self.cookies = cookies
        self.frames: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._follow()), daemon=True)

    def start(self) -> FleetWatch:
        self._thread.start()
        assert self.connected.wait(30), "the fleet socket did not connect"
        return self

    async def _follow(self) -> None:
        socket = await WebSocketClient.connect(self.port, "/ws/fleet/", cookies=self.cookies)
        self.connected.set()
        while not self._stop.is_set():
            try:
                text = await asyncio.wait_for(socket.recv(), timeout=0.5)
            except TimeoutError:
                continue
            event = json.loads(text)
            if event.get("type") == "metrics.batch":
                self.frames.append(event)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def steps_of(self, experiment_id: int, name: str) -> set[int]:
        return {
            p["step"]
            for f in self.frames
            if f.get("experiment_id") == experiment_id
            for p in f.get("points", [])
            if p["name"] == name
        }


def test_an_unchanged_mlflow_script_streams_into_the_dashboard_and_reads_back(
    mlflow_python: Path, live_server_port: int, tmp_path: Path
) -> None:
    user = _researcher("mila")
    _, token = api_token_create(user=user, name="mlflow")
    browser = Client()
    browser.force_login(user)
    watch = FleetWatch(
        live_server_port, {settings.SESSION_COOKIE_NAME: browser.cookies[settings.SESSION_COOKIE_NAME].value}
    ).start()
    try:
        out = run_mlflow_script(
            mlflow_python,
            SCRIPT,
            env={
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{live_server_port}",
                "MLFLOW_TRACKING_TOKEN": token,
            },
            tmp_path=tmp_path,
        ).result
    finally:
        watch.stop()

    # Read back through the official client: every point once, in step order, the run found by search.
    assert out["history_steps"] == list(range(POINTS))
    assert out["history_values_ok"]
    assert out["found"] == [out["run_id"]]
    assert out["status"] == "FINISHED"
    assert out["params"] == {"lr": "0.01", "epochs": "3", "optimizer": "adam"}
    assert out["loss"] == pytest.approx(1 / 20)
    assert out["tags"]["stage"] == "e2e" and out["tags"]["mlflow.runName"] == "unchanged-script"

    # On Crucible's side: an external experiment, trained and now evaluated like any run.
    mlflow_run = MlflowRun.objects.select_related("experiment", "run").get(run_uuid=out["run_id"])
    experiment = mlflow_run.experiment
    assert experiment.executor == Executor.EXTERNAL
    assert experiment.state == State.EVALUATING
    assert mlflow_run.run.status == RunStatus.SUCCEEDED
    assert mlflow_run.run.params == {"lr": "0.01", "epochs": "3", "optimizer": "adam"}
    assert MetricPoint.objects.filter(run=mlflow_run.run, name="batch_loss").count() == POINTS

    # The points are in Crucible's own history endpoint, every one (no downsampling asked).
    request = urllib.request.Request(
        f"http://127.0.0.1:{live_server_port}/api/experiments/{experiment.pk}/metrics"
        f"?names=batch_loss,loss&max_points={POINTS}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        series = json.loads(response.read())["series"]
    assert series["batch_loss"]["steps"] == list(range(POINTS))
    assert series["batch_loss"]["total_points"] == POINTS
    assert series["loss"]["steps"] == list(range(20))

    # And the dashboard saw them live: the fleet stream carried the run's points as they were logged.
    assert watch.steps_of(experiment.pk, "loss") == set(range(20))
    assert max(watch.steps_of(experiment.pk, "batch_loss")) == POINTS - 1


BASIC_SCRIPT = textwrap.dedent(
    """
    import json
    import mlflow
    from mlflow.tracking import MlflowClient

    with mlflow.start_run() as run:
        mlflow.log_param("seed", 1)
        for step in range(5):
            mlflow.log_metric("acc", step / 10, step=step)
    history = MlflowClient().get_metric_history(run.info.run_id, "acc")
    print(json.dumps({"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                      "steps": [m.step for m in history]}))
    """
)


def test_http_basic_credentials_of_a_django_user_work_with_the_official_client(
    mlflow_python: Path, live_server_port: int, tmp_path: Path
) -> None:
    _researcher("bruno", password="a long enough password 7")
    out = run_mlflow_script(
        mlflow_python,
        BASIC_SCRIPT,
        env={
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{live_server_port}",
            "MLFLOW_TRACKING_USERNAME": "bruno",
            "MLFLOW_TRACKING_PASSWORD": "a long enough password 7",
        },
        tmp_path=tmp_path,
    ).result
    assert out["steps"] == [0, 1, 2, 3, 4]
    assert out["experiment_id"] == "0"  # MLflow's Default experiment, as with its own server
    owner = MlflowRun.objects.get(run_uuid=out["run_id"]).experiment.owner
    assert owner is not None and owner.get_username() == "bruno"


def test_a_wrong_token_fails_the_official_client_with_mlflows_error(
    mlflow_python: Path, live_server_port: int, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        """
        import json
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        try:
            MlflowClient().get_experiment_by_name("anything")
        except MlflowException as exc:
            print(json.dumps({"code": exc.error_code, "message": exc.message}))
        """
    )
    out = run_mlflow_script(
        mlflow_python,
        script,
        env={
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{live_server_port}",
            "MLFLOW_TRACKING_TOKEN": "cru_wrong",
        },
        tmp_path=tmp_path,
    ).result
    assert out["code"] == "UNAUTHENTICATED"
    assert "invalid or revoked API token" in out["message"]


def test_an_artifact_call_of_the_official_client_gets_a_clear_refusal(
    mlflow_python: Path, live_server_port: int, tmp_path: Path
) -> None:
    user = _researcher("ada")
    _, token = api_token_create(user=user, name="mlflow")
    script = textwrap.dedent(
        """
        import json
        import mlflow
        with mlflow.start_run():
            try:
                mlflow.log_text("hello", "notes.txt")
                print(json.dumps({"raised": False}))
            except Exception as exc:  # the client raises requests' HTTPError, quoting our answer
                print(json.dumps({"raised": True, "message": str(exc)}))
        """
    )
    out = run_mlflow_script(
        mlflow_python,
        script,
        env={
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{live_server_port}",
            "MLFLOW_TRACKING_TOKEN": token,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        },
        tmp_path=tmp_path,
    ).result
    assert out["raised"], "the artifact was written somewhere instead of being refused"
    assert "501" in out["message"] and "Artifacts are not stored" in out["message"]
