"""The web process is killed while a client streams a run, and started again: no point lost, none twice.

Real parts: Daphne serving the project on the test database (killed with SIGKILL mid-run, as a
host would lose it, and started again on the same port), the Python client (crucible_client) in
a training thread logging every 2 ms with a small memory buffer, so that the outage overflows it
into the spool file. Prints one JSON line with what the fault cost.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time

import pytest
from django.contrib.auth.models import User

from crucible_client import Run
from experiments.api.tokens import api_token_create
from experiments.choices import RunStatus, State
from experiments.models import Experiment, MetricPoint
from tests.external.conftest import WebProcess

pytestmark = [pytest.mark.fault, pytest.mark.django_db(transaction=True)]

OUTAGE_SECONDS = 4.0
STEP_SECONDS = 0.002


def test_killing_the_web_process_mid_run_loses_and_duplicates_no_point(
    web: WebProcess, researcher: User
) -> None:
    token = api_token_create(user=researcher, name="fault test")[1]
    run = Run.start(web.url, token, experiment="through a web restart", max_buffer=300)
    logged: list[int] = []
    stop = threading.Event()

    def train() -> None:
        step = 0
        while not stop.is_set():
            run.log("loss", math.exp(-step / 1000), step)
            logged.append(step)
            step += 1
            time.sleep(STEP_SECONDS)

    trainer = threading.Thread(target=train, daemon=True)
    try:
        trainer.start()
        time.sleep(1.0)
        web.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        web.start()
        outage = time.monotonic() - killed_at
        time.sleep(1.0)
        stop.set()
        trainer.join(10)
        finished = run.finish()
    finally:
        stop.set()
        if run.finished is None:
            run.finish("cancelled")

    steps = list(MetricPoint.objects.filter(run_id=run.id).order_by("step").values_list("step", flat=True))
    lost = len(set(logged) - set(steps))
    duplicated = len(steps) - len(set(steps))
    print(
        json.dumps(
            {
                "fault": "web process SIGKILL mid-run, restarted",
                "outage_s": round(outage, 1),
                "points_logged": len(logged),
                "points_lost": lost,
                "points_duplicated": duplicated,
                "batches": run.stats["batches"],
                "retries": run.stats["retries"],
                "spooled": run.stats["spooled"],
            }
        )
    )
    assert run.stats["retries"] > 0 and run.stats["spooled"] > 0, run.stats  # the fault was felt
    assert lost == 0 and duplicated == 0
    assert steps == logged == list(range(len(logged)))
    assert finished["status"] == RunStatus.SUCCEEDED
    assert Experiment.objects.get(pk=run.experiment_id).state == State.EVALUATING
    assert not run._spool.path.exists()  # everything delivered: the spool file is gone
