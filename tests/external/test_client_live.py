"""The Python client against a real server: a run streams into the history and the live socket; a policy stops it."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import urllib.request
from typing import Any

import pytest
from django.contrib.auth.models import User

from bench.common import WebSocketClient
from control.policies.models import PolicyKind, TriggerEvent
from crucible_client import Run
from experiments.api.tokens import api_token_create
from experiments.choices import Executor, RunStatus, State
from experiments.models import Experiment, MetricPoint
from experiments.services import experiment_create
from tests.conftest import WorkerHandle, wait_for
from tests.external.conftest import WebProcess, session_cookies
from tests.policies.helpers import make_policy

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = 400


def _history(web: WebProcess, token: str, experiment_id: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{web.url}/api/experiments/{experiment_id}/metrics?max_points=5000",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def test_a_client_run_reaches_the_live_socket_and_the_history_each_point_once(
    web: WebProcess, researcher: User
) -> None:
    experiment = experiment_create(name="notebook", recipe="", executor=Executor.EXTERNAL, owner=researcher)
    token = api_token_create(user=researcher, name="notebook")[1]
    expected = {("loss", s) for s in range(STEPS)} | {("val_loss", s) for s in range(0, STEPS, 10)}
    seen: list[tuple[str, int]] = []
    cookies = session_cookies(researcher)

    async def scenario() -> None:
        ws = await WebSocketClient.connect(web.port, f"/ws/experiments/{experiment.pk}/", cookies=cookies)

        async def watch() -> None:
            while set(seen) != expected:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "metrics.batch":
                    seen.extend((p["name"], p["step"]) for p in frame["points"])

        watcher = asyncio.create_task(watch())

        def train() -> None:
            with Run.start(web.url, token, experiment=experiment.pk, config={"lr": 0.01}) as run:
                for step in range(STEPS):
                    run.log("loss", math.exp(-step / 100), step)
                    if step % 10 == 0:
                        run.log("val_loss", 1.2 * math.exp(-step / 100), step)
                    time.sleep(0.002)

        await asyncio.to_thread(train)
        await asyncio.wait_for(watcher, 30)
        await ws.close()

    asyncio.run(scenario())

    assert set(seen) == expected and len(seen) == len(expected)  # live: every point, once
    series = _history(web, token, experiment.pk)["series"]
    assert series["loss"]["steps"] == list(range(STEPS))
    assert series["val_loss"]["steps"] == list(range(0, STEPS, 10))
    assert MetricPoint.objects.filter(experiment=experiment).count() == len(expected)
    experiment.refresh_from_db()
    assert experiment.state == State.EVALUATING
    run = experiment.runs.get()
    assert run.status == RunStatus.SUCCEEDED and run.config == {"lr": 0.01} and run.last_step == STEPS - 1


@pytest.mark.worker
def test_an_early_stop_policy_stops_a_client_run_at_its_next_should_stop(
    web: WebProcess, researcher: User, celery_worker: WorkerHandle
) -> None:
    make_policy(
        "stop_when_good_enough",
        PolicyKind.EARLY_STOP,
        [{"kind": "metric", "metric": "loss", "aggregate": "latest", "operator": "<", "threshold": 0.5}],
        [{"kind": "stop_run", "params": {}}],
    )
    token = api_token_create(user=researcher, name="notebook")[1]
    run = Run.start(web.url, token, experiment="converges early")
    stopped_at: list[int] = []

    def train() -> None:
        for step in range(100_000):
            run.log("loss", 2.0 * math.exp(-step / 50), step)
            if run.should_stop():
                stopped_at.append(step)
                return
            time.sleep(0.01)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    trainer.join(120)
    if not stopped_at:
        run.finish("cancelled")
    assert stopped_at, f"the run was never told to stop:\n{celery_worker.logs()[-3000:]}"
    # loss < 0.5 from step 70 on; the policy fires on a batch after that, the client sees it in the answer.
    assert stopped_at[0] > 69
    assert run.stop_reason and run.stop_reason.startswith(
        "early stop by policy stop_when_good_enough: latest loss < 0.5"
    )

    experiment = Experiment.objects.get(pk=run.experiment_id)
    assert experiment.state == State.RUNNING  # an early stop is not a cancel: the client finishes
    assert experiment.runs.get().stop_requested_at is not None
    trigger = TriggerEvent.objects.get(experiment=experiment)
    assert trigger.policy.name == "stop_when_good_enough"

    run.finish()
    wait_for(lambda: Experiment.objects.get(pk=experiment.pk).state == State.EVALUATING, what="evaluation")
