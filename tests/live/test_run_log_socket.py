"""The run log's live tail: lines a run writes reach its experiment's page socket, numbered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from experiments.models import Experiment, Run
from experiments.runs.logs import RunLogWriter
from tests.live.conftest import Connect

pytestmark = pytest.mark.django_db(transaction=True)


async def test_lines_a_run_writes_reach_the_experiment_page_in_order(
    connect: Connect, experiment: Experiment, viewer_cookie: str, tmp_path: Path
) -> None:
    communicator = await connect(f"/ws/experiments/{experiment.pk}/", cookie=viewer_cookie)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    run = await sync_to_async(Run.objects.create)(experiment=experiment, attempt=1)

    def write() -> None:
        with override_settings(RUN_LOGS_ROOT=tmp_path):
            writer = RunLogWriter(experiment_id=experiment.pk, run_id=run.pk).start()
            writer.write("stdout", "epoch 1: loss 0.52")
            writer.write("stderr", "warning: slow data loader")
            writer.close()

    await sync_to_async(write)()
    frame: dict[str, Any] = json.loads(await communicator.receive_from(timeout=5))
    assert frame["type"] == "run.log"
    assert (frame["experiment_id"], frame["run_id"], frame["first_line"]) == (experiment.pk, run.pk, 1)
    assert frame["lines"] == [
        {"stream": "stdout", "line": "epoch 1: loss 0.52"},
        {"stream": "stderr", "line": "warning: slow data loader"},
    ]
    assert frame["skipped"] == 0
