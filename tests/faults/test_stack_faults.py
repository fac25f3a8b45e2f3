"""Ordinary faults of the stack lose nothing: the web process killed, Redis stopped, `make run` Ctrl-C'd.

Real processes throughout: `python -m crucible_ui.launcher` (what `make run` runs) supervises
a Celery worker (two pool processes, as `make run` has), beat and Daphne against the test
database; a small digits run trains while the fault hits. Each test prints one JSON line with
what the fault cost (points lost, attempts spent, seconds to recover); durations are measured,
never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from crucible_ui.celery import app
from crucible_ui.redis_server import free_port, redis_server_command, wait_for_redis
from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.models import Experiment, MetricPoint, Run, TransitionLog
from experiments.runs.selectors import experiment_metric_series
from experiments.services import experiment_create, experiment_transition
from tests.conftest import wait_for, worker_database_url
from tests.launcher.helpers import Launched, health, launcher_environment, start_launcher

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.fault]

DIGITS_TRAIN_ROWS = 1437


def _steps_per_epoch(batch_size: int) -> int:
    return -(-DIGITS_TRAIN_ROWS // batch_size)


# Quick beats so that a lost or requeued run shows within a test's patience.
STACK_ENV = {
    "CELERY_CONCURRENCY": "2",
    "HEARTBEAT_SECONDS": "0.5",
    "HEARTBEAT_TIMEOUT_SECONDS": "10",
    "WORKER_OFFLINE_SECONDS": "10",
    "SCHEDULER_TICK_SECONDS": "1",
    "WATCHDOG_SECONDS": "1",
    "RETRY_BACKOFF_SECONDS": "0.5",
    "CANCEL_POLL_SECONDS": "0.25",
    "WORKER_CPU_SLOTS": "1",
    "CRUCIBLE_STOP_TIMEOUT_S": "5",
}


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    """Return a launcher environment on free ports, sharing the test database."""
    return launcher_environment(tmp_path, DATABASE_URL=worker_database_url(), **STACK_ENV)


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[Launched]]:
    """Collect the launchers a test starts; kill whatever they left when it ends."""
    started: list[Launched] = []
    yield started
    for launcher in started:
        launcher.kill_everything()


def _launch(env: dict[str, str], tmp_path: Path, started: list[Launched]) -> Launched:
    # The test database is migrated already and needs no demo data.
    launcher = start_launcher(env, tmp_path / f"launcher-{len(started) + 1}.log", "--no-setup")
    started.append(launcher)
    launcher.wait_healthy()
    return launcher


def _queued_digits(name: str, *, epochs: int, batch_size: int, step_delay_ms: float) -> Experiment:
    # Few steps with a pause after each: the run lasts long enough for the fault, yet its
    # length hardly depends on how loaded the machine is.
    experiment = experiment_create(
        name=name,
        recipe="digits",
        config={"epochs": epochs, "batch_size": batch_size, "step_delay_ms": step_delay_ms},
        max_attempts=3,
    )
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))
    return experiment


def _training_past(experiment: Experiment, step: int) -> Run | None:
    run = Run.objects.filter(experiment=experiment, status=RunStatus.RUNNING).order_by("-attempt").first()
    if run is None:
        return None
    return run if MetricPoint.objects.filter(run=run, name="loss", step__gte=step).exists() else None


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def _loss_steps(run: Run) -> list[int]:
    return list(
        MetricPoint.objects.filter(run=run, name="loss").order_by("step").values_list("step", flat=True)
    )


def _report(fault: str, **figures: Any) -> None:
    print(json.dumps({"fault": fault, **figures}))


def test_a_killed_web_process_is_restarted_and_the_run_goes_on_untouched(
    stack_env: dict[str, str], tmp_path: Path, launched: list[Launched]
) -> None:
    epochs, batch_size = 10, 256
    launcher = _launch(stack_env, tmp_path, launched)
    worker_pid = launcher.pid_of("celery -A crucible_ui worker")
    web_pid = launcher.pid_of("daphne")
    assert worker_pid and web_pid
    experiment = _queued_digits("web killed", epochs=epochs, batch_size=batch_size, step_delay_ms=150)
    wait_for(lambda: _training_past(experiment, 3), timeout=90, interval=0.2, what="training to start")

    os.kill(web_pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: "restarted web" in launcher.log(20000), timeout=60, interval=0.2, what="web restarted")
    body = launcher.wait_healthy(timeout=90)
    back_in = time.monotonic() - killed
    assert body["status"] == "ok"
    new_web = launcher.pid_of("daphne")
    assert new_web and new_web != web_pid

    wait_for(lambda: _state(experiment) == State.EVALUATING, timeout=120, interval=0.2, what="the run to end")
    log = launcher.log(200000)
    assert "web (pid" in log and "exited unexpectedly" in log and "restarting it" in log
    assert "crash loop" not in log
    assert launcher.proc.poll() is None, "the launcher stopped"
    assert launcher.pid_of("celery -A crucible_ui worker") == worker_pid, "the worker was restarted"
    run = Run.objects.get(experiment=experiment)  # one attempt: none spent on the fault
    assert run.status == RunStatus.SUCCEEDED and run.attempt == 1
    total = epochs * _steps_per_epoch(batch_size)
    assert _loss_steps(run) == list(range(1, total + 1))
    # One run, and it succeeded: the fault spent no attempt (asserted above).
    _report("web SIGKILL", points_lost=0, runs=1, attempts_spent=0, page_back_after_s=round(back_in, 1))


class ExternalRedis:
    """A redis-server of the test's own (append-only), stopped and started like an external one."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.argv = redis_server_command(port=self.port, data_dir=data_dir, persist=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_redis(self.proc, port=self.port, timeout=30)

    def kill(self) -> None:
        """Stop it the hard way (a crash): only the append-only file keeps what was queued."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def external_redis(tmp_path: Path) -> Iterator[ExternalRedis]:
    server = ExternalRedis(tmp_path / "external-redis")
    server.start()
    yield server
    server.kill()


def test_three_redis_outages_during_a_run_lose_no_point_and_no_queued_task(
    stack_env: dict[str, str], tmp_path: Path, launched: list[Launched], external_redis: ExternalRedis
) -> None:
    epochs, batch_size, outage_s = 20, 256, 15.0
    stack_env["REDIS_URL"] = external_redis.url
    launcher = _launch(stack_env, tmp_path, launched)
    worker_pid, web_pid = launcher.pid_of("celery -A crucible_ui worker"), launcher.pid_of("daphne")
    assert worker_pid and web_pid
    # 120 steps of at least 0.9 s: still training when the third outage starts.
    experiment = _queued_digits("redis outages", epochs=epochs, batch_size=batch_size, step_delay_ms=900)
    wait_for(lambda: _training_past(experiment, 2), timeout=90, interval=0.2, what="training to start")

    # Queued just before Redis crashes, on a queue no worker reads yet: only the append-only
    # file can bring it back. (A message Redis was already handing to a waiting worker can be
    # lost in a crash: kombu pops it before it records it as unacknowledged.)
    task_id, probe_queue = f"fault-{uuid.uuid4().hex}", f"fault-probe-{uuid.uuid4().hex[:8]}"

    def queue_a_task_then_crash_redis() -> None:
        with app.connection_for_write(external_redis.url) as conn:
            app.send_task(
                "control.checkpoints_cleanup",
                task_id=task_id,
                queue=probe_queue,
                connection=conn,
                ignore_result=False,  # its result says it ran
            )
        external_redis.kill()

    recovered_in: list[float] = []
    running_at_outage: list[bool] = []
    for outage in range(3):
        running_at_outage.append(_training_past(experiment, 1) is not None)
        if outage == 0:
            queue_a_task_then_crash_redis()
        else:
            external_redis.kill()
        down_until = time.monotonic() + outage_s
        statuses = set()
        while time.monotonic() < down_until:
            answer = health(launcher.port)
            statuses.add(answer[0] if answer else None)
            time.sleep(0.5)
        assert statuses == {503}, f"/healthz during the outage: {statuses}"
        external_redis.start()
        back = time.monotonic()
        launcher.wait_healthy(timeout=90)  # 200 again: Redis answers and the worker is back
        recovered_in.append(round(time.monotonic() - back, 1))

    wait_for(lambda: _state(experiment) == State.EVALUATING, timeout=180, interval=0.5, what="the run to end")
    log = launcher.log(2_000_000)
    assert "exited unexpectedly" not in log and "Unrecoverable error" not in log, log[-6000:]
    assert launcher.pid_of("celery -A crucible_ui worker") == worker_pid, "the worker was restarted"
    assert launcher.pid_of("daphne") == web_pid, "the web process was restarted"
    assert all(running_at_outage), f"the run ended before an outage: {running_at_outage}"
    run = Run.objects.get(experiment=experiment)
    assert run.status == RunStatus.SUCCEEDED and run.attempt == 1
    total = epochs * _steps_per_epoch(batch_size)
    assert _loss_steps(run) == list(range(1, total + 1))

    client = redis.Redis.from_url(external_redis.url)
    try:
        assert client.llen(probe_queue) == 1, "a task queued before Redis crashed was lost"
        # The very message that survived, moved where the worker reads: it still runs.
        client.lmove(probe_queue, "control", "RIGHT", "LEFT")
        meta = wait_for(
            lambda: client.get(f"celery-task-meta-{task_id}"),
            timeout=60,
            interval=0.5,
            what="the queued task",
        )
        assert json.loads(meta)["status"] == "SUCCESS"
    finally:
        client.close()
    _report(
        "redis stopped 3 x 15 s",
        points_lost=0,
        runs=1,  # one run, and it succeeded: the outages spent no attempt (asserted above)
        attempts_spent=0,
        healthz_200_after_restart_s=recovered_in,
        worker_restarts=0,
    )


def test_ctrl_c_of_make_run_mid_run_then_a_restart_resumes_from_the_checkpoint(
    stack_env: dict[str, str], tmp_path: Path, launched: list[Launched]
) -> None:
    epochs, batch_size = 20, 256
    per_epoch = _steps_per_epoch(batch_size)
    first = _launch(stack_env, tmp_path, launched)
    # 120 steps of at least 0.3 s: the stop lands mid-run whatever the worker does with it.
    experiment = _queued_digits("ctrl-c", epochs=epochs, batch_size=batch_size, step_delay_ms=300)
    # Past the first epoch's checkpoint and into the second.
    wait_for(lambda: _training_past(experiment, per_epoch + 2), timeout=120, interval=0.2, what="epoch 2")
    stopping = time.monotonic()
    assert first.stop(timeout=120) == 0, first.log()
    stopped_in = time.monotonic() - stopping
    assert "stopped; no process left behind" in first.log()

    restarting = time.monotonic()
    second = _launch(stack_env, tmp_path, launched)
    wait_for(lambda: _state(experiment) == State.EVALUATING, timeout=240, interval=0.5, what="the run to end")
    recovered_in = time.monotonic() - restarting
    assert second.proc.poll() is None

    runs = list(Run.objects.filter(experiment=experiment).order_by("attempt"))
    last = runs[-1]
    total = epochs * per_epoch
    assert last.status == RunStatus.SUCCEEDED
    assert len(runs) >= 2 and last.resumed_from_step, "the run did not resume from a checkpoint"
    series = experiment_metric_series(experiment_id=experiment.pk, names=["loss"])["loss"]
    assert [p.step for p in series] == list(range(1, total + 1))
    stored = MetricPoint.objects.filter(experiment=experiment, name="loss").count()
    spent = [r.attempt for r in runs if r.status == RunStatus.FAILED]
    interrupted = [r.interruption for r in runs if r.status == RunStatus.INTERRUPTED]
    events = [e for (e,) in TransitionLog.objects.filter(experiment=experiment).values_list("event")]
    _report(
        "make run Ctrl-C mid-run, then restarted",
        points_stored_twice=stored - total,
        attempts_spent=len(spent),
        stopped_in_s=round(stopped_in, 1),
        completed_after_restart_s=round(recovered_in, 1),
    )
    # The worker checkpoints on SIGTERM and the attempt counts as interrupted (Ctrl-C is not
    # a training fault).
    assert interrupted, "the stopped attempt was not recorded as interrupted"
    assert stored == total, f"{stored - total} steps were trained and stored twice"
    assert not spent, f"attempts spent on a Ctrl-C: {spent}"
    assert "fail" not in events, events
