"""A script run on a real worker logs through crucible_client with its run token, against a live web server."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings

from experiments.actors import Actor
from experiments.api.tokens import api_token_create
from experiments.choices import RunStatus, State
from experiments.models import Experiment, MetricPoint, Run
from experiments.runs.logs import run_log_path
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WorkerHandle, wait_for
from tests.external.conftest import WebProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "script-run"


def _script(name: str, *args: str) -> Experiment:
    return experiment_create(
        name=name,
        recipe="script",
        config={
            "argv": ["python", "train_with_client.py", *args],
            "workdir": str(EXAMPLE),
            # The client comes from this checkout (a deployment installs it with the project).
            "env": {"PYTHONPATH": str(ROOT)},
            "stop_grace_seconds": 10,
        },
        max_attempts=1,
    )


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def _history(web: WebProcess, token: str, experiment_id: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{web.url}/api/experiments/{experiment_id}/metrics?max_points=5000",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def _log(run: Run) -> str:
    return run_log_path(experiment_id=run.experiment_id, run_id=run.pk).read_text()


@pytest.fixture
def script_roots() -> Iterator[str]:
    with override_settings(SCRIPT_ROOTS=[str(EXAMPLE)]):
        yield str(EXAMPLE)


def test_a_scripts_client_points_arrive_once_and_a_cancel_reaches_should_stop(
    web: WebProcess,
    researcher: User,
    start_celery_worker: Callable[..., WorkerHandle],
    script_roots: str,
) -> None:
    start_celery_worker(SCRIPT_ROOTS=script_roots, CRUCIBLE_API_URL=web.url)
    reader = api_token_create(user=researcher, name="reader")[1]

    done = _script("spirals through the client", "--steps", "120")
    experiment_transition(experiment_id=done.pk, event="queue", actor=Actor.system("test"))
    wait_for(lambda: _state(done) == State.EVALUATING, timeout=120, what="the client's run to complete")

    run = Run.objects.get(experiment=done)
    assert run.status == RunStatus.SUCCEEDED
    series = _history(web, reader, done.pk)["series"]
    assert series["loss"]["steps"] == list(range(1, 121))  # every step, once
    assert series["val_loss"]["steps"] == list(range(10, 121, 10))
    # The script's own points; the worker adds the run's sys/ metrics beside them.
    assert MetricPoint.objects.filter(run=run).exclude(name__startswith="sys/").count() == 120 + 2 * 12
    assert MetricPoint.objects.filter(run=run, name="sys/rss_mb").exists()
    log = _log(run)
    assert f"attached to run {run.pk}" in log and "done" in log.splitlines()

    cancelled = _script("spirals cancelled", "--steps", "100000", "--step-delay", "0.01")
    experiment_transition(experiment_id=cancelled.pk, event="queue", actor=Actor.system("test"))
    wait_for(
        lambda: MetricPoint.objects.filter(experiment=cancelled, name="loss").count() >= 20,
        timeout=120,
        what="the client's first points",
    )
    experiment_transition(experiment_id=cancelled.pk, event="cancel", actor=Actor.system("test"))
    run = wait_for(
        lambda: Run.objects.filter(experiment=cancelled, status=RunStatus.CANCELLED).first(),
        timeout=60,
        what="the run to end cancelled",
    )

    log = _log(run)
    stop_line = next(line for line in log.splitlines() if line.startswith("stopping at step"))
    # The client heard the cancel (whether before or after the worker's SIGTERM), with its reason.
    assert "should_stop=True" in stop_line and "cancel by system:test" in stop_line
    stopped_at = int(stop_line.split()[3].rstrip(":"))
    steps = list(
        MetricPoint.objects.filter(run=run, name="loss").order_by("step").values_list("step", flat=True)
    )
    assert steps == list(range(1, stopped_at + 1))  # delivered up to the stop, each once
    assert _state(cancelled) == State.CANCELLED
