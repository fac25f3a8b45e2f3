"""An unchanged training script through a real Celery worker: live points and log, a policy, cancel, complete."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.test import override_settings

from control.policies.models import PolicyKind
from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.events import experiment_group
from experiments.models import Experiment, MetricPoint, Run, RunLog, TransitionLog
from experiments.runs.logs import run_log_path
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WorkerHandle, wait_for
from tests.policies.helpers import make_policy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "script-run"


class GroupListener:
    """Collect every message sent to one experiment's group, from a thread with its own event loop."""

    def __init__(self, experiment_id: int) -> None:
        self.group = experiment_group(experiment_id)
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    async def _listen(self) -> None:
        layer = get_channel_layer()
        assert layer is not None
        channel = await layer.new_channel()
        await layer.group_add(self.group, channel)
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    self.messages.append(await asyncio.wait_for(layer.receive(channel), timeout=0.2))
                except TimeoutError:
                    continue
        finally:
            await layer.group_discard(self.group, channel)

    def __enter__(self) -> GroupListener:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in list(self.messages) if m.get("type") == kind]


@pytest.fixture
def script_roots() -> Iterator[str]:
    with override_settings(SCRIPT_ROOTS=[str(EXAMPLE)]):
        yield str(EXAMPLE)


def _script(name: str, *args: str) -> Experiment:
    return experiment_create(
        name=name,
        recipe="script",
        config={"argv": ["python", "train.py", *args], "workdir": str(EXAMPLE), "stop_grace_seconds": 5},
        max_attempts=1,
    )


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def test_an_unchanged_script_charts_live_is_stopped_by_a_policy_and_another_completes(
    start_celery_worker: Callable[..., WorkerHandle], script_roots: str
) -> None:
    start_celery_worker(SCRIPT_ROOTS=script_roots)  # trains
    start_celery_worker(SCRIPT_ROOTS=script_roots)  # runs the policy's action while the other trains
    make_policy(
        "stop_diverging",
        PolicyKind.EARLY_STOP,
        [{"kind": "metric", "metric": "loss", "operator": ">", "threshold": 100}],
        [{"kind": "cancel"}],
    )

    # A learning rate of 100 makes this script's loss explode within a few steps.
    diverging = _script("spirals lr 100", "--lr", "100", "--steps", "2000", "--step-delay", "0.02")
    with GroupListener(diverging.pk) as live:
        experiment_transition(experiment_id=diverging.pk, event="queue", actor=Actor.system("test"))
        wait_for(lambda: _state(diverging) == State.CANCELLED, timeout=120, what="the policy to cancel it")
        run = wait_for(
            lambda: Run.objects.filter(experiment=diverging, status=RunStatus.CANCELLED).first(),
            timeout=30,
            what="the run to stop",
        )
        wait_for(lambda: any("SIGTERM" in str(m) for m in live.of_type("run.log")), timeout=10, what="log")

    # Live: metric points and log lines reached the experiment's group while it ran.
    live_points = [p for m in live.of_type("metrics.batch") for p in m["points"] if p["name"] == "loss"]
    assert live_points and live_points[0]["step"] == 1
    live_lines = [line["line"] for m in live.of_type("run.log") for line in m["lines"]]
    assert any(line.startswith("training 4482 parameters, lr 100.0") for line in live_lines)
    # The policy saw the loss pass 100 and cancelled; the script got SIGTERM, checkpointed and exited.
    cancel = TransitionLog.objects.get(experiment=diverging, event="cancel")
    assert cancel.actor == "policy:stop_diverging"
    assert MetricPoint.objects.filter(run=run, name="loss", value__gt=100).exists()
    log = run_log_path(experiment_id=diverging.pk, run_id=run.pk).read_text()
    assert "[crucible] running" in log and "stopped at step" in log and "on SIGTERM" in log
    assert "the script ended after SIGTERM" in log
    assert run.checkpoint_path and Path(run.checkpoint_path).is_file() and run.checkpoint_size
    assert run.last_step < 2000
    queued = TransitionLog.objects.get(experiment=diverging, event="queue")
    assert 'script argv=["python", "train.py", "--lr", "100"' in queued.reason

    good = _script("spirals lr 0.01", "--lr", "0.01", "--steps", "60")
    experiment_transition(experiment_id=good.pk, event="queue", actor=Actor.system("test"))
    wait_for(lambda: _state(good) == State.EVALUATING, timeout=120, what="the good run to finish")

    run = Run.objects.get(experiment=good)
    assert run.status == RunStatus.SUCCEEDED
    assert MetricPoint.objects.filter(run=run, name="loss").count() == 60
    assert set(run.final_metrics) == {"loss", "val_loss", "accuracy"}
    assert run.last_step == 60
    record = RunLog.objects.get(run=run)
    assert record.lines >= 3 and record.malformed_lines == 0
    assert "done" in run_log_path(experiment_id=good.pk, run_id=run.pk).read_text().splitlines()


def test_a_failing_script_fails_its_run_with_the_stderr_tail(
    start_celery_worker: Callable[..., WorkerHandle], script_roots: str
) -> None:
    start_celery_worker(SCRIPT_ROOTS=script_roots)
    broken = _script("spirals bad flag", "--no-such-flag")
    experiment_transition(experiment_id=broken.pk, event="queue", actor=Actor.system("test"))
    wait_for(lambda: _state(broken) == State.FAILED, timeout=60, what="the run to fail")

    run = Run.objects.get(experiment=broken)
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("ScriptError: the script exited with status 2; last")
    assert "error: unrecognized arguments: --no-such-flag" in run.error
