"""A worker stopped mid-script: the script checkpoints on SIGTERM, the next attempt resumes from it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.test import override_settings

from experiments.actors import Actor
from experiments.choices import Interruption, RunStatus, State
from experiments.models import Experiment, MetricPoint, Run
from experiments.runs.logs import run_log_path
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WORKER_ENV, WorkerHandle, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.fault]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "script-run"
STEPS = 150
STOP_TIMEOUT_S = float(WORKER_ENV["CRUCIBLE_STOP_TIMEOUT_S"])


@pytest.fixture
def script_roots() -> Iterator[str]:
    with override_settings(SCRIPT_ROOTS=[str(EXAMPLE)]):
        yield str(EXAMPLE)


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def test_a_stopped_worker_s_script_checkpoints_and_the_next_attempt_resumes_from_it(
    start_celery_worker: Callable[..., WorkerHandle], script_roots: str
) -> None:
    first_worker = start_celery_worker(SCRIPT_ROOTS=script_roots)
    # No periodic checkpoint: the only one is what the script saves on SIGTERM.
    argv = [
        "python",
        "train.py",
        "--steps",
        str(STEPS),
        "--step-delay",
        "0.05",
        "--checkpoint-every",
        "100000",
    ]
    experiment = experiment_create(
        name="spirals stopped",
        recipe="script",
        config={"argv": argv, "workdir": str(EXAMPLE)},
        max_attempts=1,
    )
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))
    wait_for(
        lambda: MetricPoint.objects.filter(experiment=experiment, name="loss", step__gte=20).exists(),
        timeout=90,
        what="the script to train past step 20",
    )

    # To the main process only, as the launcher does; the pool process stops the script.
    first_worker.terminate(timeout=STOP_TIMEOUT_S + 15)

    # Interrupted by the shutdown (not lost): the script ended and the run was recorded before the
    # pool process could be killed at the stop timeout.
    first = Run.objects.get(experiment=experiment, attempt=1)
    assert first.status == RunStatus.INTERRUPTED and first.interruption == Interruption.SHUTDOWN
    assert Path(first.checkpoint_path).name.startswith("step-") and first.checkpoint_size
    stopped_at = int(Path(first.checkpoint_path).stem.split("-")[1])
    assert 20 <= stopped_at < STEPS
    assert "on SIGTERM" in run_log_path(experiment_id=experiment.pk, run_id=first.pk).read_text()
    assert _state(experiment) == State.QUEUED
    assert experiment.attempts_spent() == 0

    start_celery_worker(SCRIPT_ROOTS=script_roots)
    wait_for(lambda: _state(experiment) == State.EVALUATING, timeout=120, what="the resumed run to complete")

    second = Run.objects.get(experiment=experiment, attempt=2)
    assert second.status == RunStatus.SUCCEEDED
    log = run_log_path(experiment_id=experiment.pk, run_id=second.pk).read_text()
    assert f"resumed from {first.checkpoint_path} at step {stopped_at + 1}" in log
    # Every step stored once across both attempts: none lost, none trained twice.
    stored = sorted(
        MetricPoint.objects.filter(experiment=experiment, name="loss").values_list("step", flat=True)
    )
    assert stored == list(range(1, STEPS + 1))
