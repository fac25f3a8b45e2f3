"""External runs' service layer: start without a lease, idempotent ingest, control state, finish, the sweep."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied
from django.test import override_settings
from django.utils import timezone

from control.models import Device
from control.policies.engine import engine_on_metrics
from control.policies.models import ExecutionStatus, PolicyKind
from control.scheduling.scheduler import queued_in_order, scheduler_plan, scheduler_tick
from control.scheduling.services import watchdog_sweep
from experiments.actors import Actor
from experiments.choices import Executor, Interruption, RunStatus, State
from experiments.models import Experiment, MetricPoint, Run, TransitionLog
from experiments.recipes import ConfigError
from experiments.runs.external import (
    ExternalRunRefused,
    PointsInvalid,
    external_metrics_ingest,
    external_run_finish,
    external_run_heartbeat,
    external_run_request_stop,
    external_run_start,
    external_runs_sweep,
)
from experiments.runs.selectors import experiment_metric_series
from experiments.services import experiment_create, experiment_transition
from tests.control.helpers import make_worker
from tests.policies.helpers import make_policy, run_pending_actions

pytestmark = pytest.mark.django_db


def _external(name: str = "notebook", recipe: str = "", config: dict | None = None) -> Experiment:
    return experiment_create(name=name, recipe=recipe, config=config or {}, executor=Executor.EXTERNAL)


def _researcher() -> User:
    user = User.objects.create_user("ada", password="x")
    user.user_permissions.add(Permission.objects.get(codename="queue_experiment"))
    return User.objects.get(pk=user.pk)


def test_a_client_start_queues_and_starts_the_experiment_audited_without_a_lease() -> None:
    make_worker("w@host", cpu=1)
    experiment = _external()

    run = external_run_start(experiment=experiment, actor=Actor.for_user(_researcher()), config={"lr": 0.1})

    experiment.refresh_from_db()
    assert experiment.state == State.RUNNING
    assert run.status == RunStatus.RUNNING and run.attempt == 1 and run.config == {"lr": 0.1}
    log = list(TransitionLog.objects.filter(experiment=experiment).values_list("event", "actor"))
    assert log == [("queue", "user:ada"), ("start", "system:external")]
    assert not Device.objects.filter(leased_run__isnull=False).exists()


def test_a_person_who_may_not_start_experiments_cannot_start_a_run() -> None:
    experiment = _external()
    nobody = User.objects.create_user("bob", password="x")

    with pytest.raises(PermissionDenied):
        external_run_start(experiment=experiment, actor=Actor.for_user(nobody))

    experiment.refresh_from_db()
    assert experiment.state == State.PENDING and not experiment.runs.exists()


def test_a_worker_experiment_cannot_be_started_by_a_client() -> None:
    experiment = experiment_create(name="digits", recipe="digits")

    with pytest.raises(ExternalRunRefused, match="executor worker"):
        external_run_start(experiment=experiment, actor=Actor.system("test"))


def test_the_config_is_checked_by_the_recipe_when_the_experiment_names_one() -> None:
    experiment = _external(recipe="digits")

    with pytest.raises(ConfigError) as refused:
        external_run_start(experiment=experiment, actor=Actor.system("test"), config={"epochs": -3})

    assert "epochs" in refused.value.errors
    assert not experiment.runs.exists()


def test_the_scheduler_never_leases_a_device_for_an_external_experiment() -> None:
    make_worker("w@host", cpu=2)
    experiment = _external()
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))

    assert experiment not in queued_in_order()
    assert scheduler_tick() == []
    [decision] = scheduler_plan().decisions
    assert decision.experiment == experiment and not decision.devices
    assert decision.reason.startswith("external: waiting for its client")
    experiment.refresh_from_db()
    assert experiment.state == State.QUEUED


def test_a_batch_is_stored_once_however_often_it_is_sent_and_refreshes_the_heartbeat() -> None:
    run = external_run_start(experiment=_external(), actor=Actor.system("test"))
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    batch = [("loss", step, 1.0 / (step + 1), None) for step in range(100)]

    state = external_metrics_ingest(run=run, points=batch)
    external_metrics_ingest(run=run, points=[*batch, ("loss", 100, float("nan"), 1.5e9)])

    assert state.stop is False
    assert MetricPoint.objects.filter(run=run).count() == 101
    assert MetricPoint.objects.get(run=run, step=100).value is None
    series = experiment_metric_series(experiment_id=run.experiment_id)
    assert [p.step for p in series["loss"]] == list(range(101))
    run.refresh_from_db()
    assert run.last_step == 100
    assert run.heartbeat_at is not None and timezone.now() - run.heartbeat_at < timedelta(seconds=30)


def test_a_malformed_point_refuses_the_whole_batch_naming_the_field() -> None:
    run = external_run_start(experiment=_external(), actor=Actor.system("test"))

    with pytest.raises(PointsInvalid) as refused:
        external_metrics_ingest(
            run=run, points=cast(Any, [("loss", 0, 1.0, None), ("loss", -1, 1.0, None), ("", 2, "x", None)])
        )

    assert {(i, f) for i, f, _ in refused.value.errors} == {(1, "step"), (2, "name"), (2, "value")}
    assert not MetricPoint.objects.filter(run=run).exists()


def test_integer_values_and_times_are_stored_as_numbers_beside_float_ones() -> None:
    run = external_run_start(experiment=_external(), actor=Actor.system("test"))

    external_metrics_ingest(
        run=run,
        points=[("loss", 0, 0.5, None), ("loss", 1, 2, 1_700_000_000), ("acc", 1, float("inf"), None)],
    )

    stored = {(p.name, p.step): p for p in MetricPoint.objects.filter(run=run)}
    assert stored[("loss", 0)].value == 0.5
    assert stored[("loss", 1)].value == 2.0 and stored[("loss", 1)].wall_time == 1_700_000_000.0
    assert stored[("acc", 1)].value is None


def test_a_batch_reaching_an_ended_run_is_stored_and_answers_stop_without_a_heartbeat() -> None:
    run = external_run_start(experiment=_external(), actor=Actor.system("test"))
    external_run_finish(run=run, status="completed")
    run.refresh_from_db()
    beat = run.heartbeat_at

    state = external_metrics_ingest(run=run, points=[("loss", 7, 0.25, None)])

    assert state.stop is True and state.reason and state.reason.startswith("the run has ended (succeeded)")
    assert MetricPoint.objects.filter(run=run, step=7).exists()
    run.refresh_from_db()
    assert run.heartbeat_at == beat


def test_cancel_and_early_stop_reach_the_client_through_its_control_state() -> None:
    run = external_run_start(experiment=_external(), actor=Actor.system("test"))
    assert external_run_heartbeat(run=run).stop is False

    external_run_request_stop(
        experiment_id=run.experiment_id, reason="policy plateau: loss flat for 50 steps"
    )

    state = external_run_heartbeat(run=run)
    assert state.stop is True and state.reason == "policy plateau: loss flat for 50 steps"
    assert Experiment.objects.get(pk=run.experiment_id).state == State.RUNNING

    other = external_run_start(experiment=_external("second"), actor=Actor.system("test"))
    experiment_transition(experiment_id=other.experiment_id, event="cancel", actor=Actor.system("test"))
    state = external_metrics_ingest(run=other, points=[("loss", 1, 0.5, None)])
    assert state.stop is True and state.reason == "the experiment is cancelled: cancel by system:test"


def test_finish_completed_moves_the_experiment_to_evaluation_and_a_repeat_changes_nothing() -> None:
    run = external_run_start(experiment=_external(), actor=Actor.system("test"))
    external_metrics_ingest(run=run, points=[("loss", 7, 0.25, None)])

    done = external_run_finish(run=run, status="completed", final_metrics={"loss": 0.25})
    again = external_run_finish(run=run, status="failed")

    assert done.status == again.status == RunStatus.SUCCEEDED
    assert done.final_metrics == {"loss": 0.25} and done.last_step == 7
    assert Experiment.objects.get(pk=run.experiment_id).state == State.EVALUATING
    assert external_run_heartbeat(run=run).stop is True


def test_finish_failed_spends_an_attempt_and_the_next_start_retries() -> None:
    experiment = _external()
    run = external_run_start(experiment=experiment, actor=Actor.system("test"))

    external_run_finish(run=run, status="failed")
    experiment.refresh_from_db()
    assert experiment.state == State.FAILED and experiment.attempts_spent() == 1

    second = external_run_start(experiment=experiment, actor=Actor.system("test"))
    assert second.attempt == 2
    assert Experiment.objects.get(pk=experiment.pk).state == State.RUNNING


def test_finish_cancelled_cancels_the_experiment() -> None:
    run = external_run_start(experiment=_external(), actor=Actor.system("test"))

    external_run_finish(run=run, status="cancelled")

    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED
    assert Experiment.objects.get(pk=run.experiment_id).state == State.CANCELLED


def test_a_second_start_interrupts_the_live_run_without_spending_an_attempt() -> None:
    experiment = _external()
    first = external_run_start(experiment=experiment, actor=Actor.system("test"))

    second = external_run_start(experiment=experiment, actor=Actor.system("test"))

    first.refresh_from_db()
    assert first.status == RunStatus.INTERRUPTED and first.interruption == Interruption.CLIENT_LOST
    assert second.attempt == 2 and second.status == RunStatus.RUNNING
    assert experiment.attempts_spent() == 0


def test_a_finished_experiment_takes_no_new_run() -> None:
    experiment = _external()
    run = external_run_start(experiment=experiment, actor=Actor.system("test"))
    external_run_finish(run=run, status="completed")

    with pytest.raises(ExternalRunRefused, match="create a new experiment"):
        external_run_start(experiment=experiment, actor=Actor.system("test"))


@override_settings(EXTERNAL_RUN_TIMEOUT=600, HEARTBEAT_TIMEOUT_SECONDS=3)
def test_a_quiet_client_is_lost_after_the_external_timeout_not_the_worker_one() -> None:
    experiment = _external()
    run = external_run_start(experiment=experiment, actor=Actor.system("test"))
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=60))

    report = watchdog_sweep()
    assert report.lost == [] and report.clients_lost == []
    assert Run.objects.get(pk=run.pk).status == RunStatus.RUNNING

    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=601))
    assert external_runs_sweep() == [run.pk]

    run.refresh_from_db()
    assert run.status == RunStatus.INTERRUPTED and run.interruption == Interruption.CLIENT_LOST
    assert "no metric batch or heartbeat from its client for 601 s" in run.error
    experiment.refresh_from_db()
    assert experiment.state == State.QUEUED and experiment.attempts_spent() == 0
    requeue = TransitionLog.objects.filter(experiment=experiment, event="requeue").get()
    assert requeue.actor == "system:watchdog" and "client lost" in requeue.reason


def test_the_experiment_page_says_stop_requested_with_the_policys_reason(client: Any) -> None:
    user = User.objects.create_superuser("root", email="")
    client.force_login(user)
    run = external_run_start(experiment=_external("page"), actor=Actor.system("test"))
    external_run_request_stop(
        experiment_id=run.experiment_id, reason="early stop by policy plateau: loss flat"
    )

    page = client.get(f"/experiments/{run.experiment_id}/").content.decode()

    assert "stop requested" in page and "early stop by policy plateau: loss flat" in page
    assert "External client" in page


def test_a_nan_requeue_policy_stops_an_external_run_and_says_why() -> None:
    make_policy(
        "nan_guard",
        PolicyKind.EARLY_STOP,
        [{"kind": "not_finite", "metric": "loss"}],
        [{"kind": "requeue", "params": {"lr_factor": 0.5}}],
    )
    experiment = _external("diverging", config={"lr": 0.2})
    run = external_run_start(experiment=experiment, actor=Actor.system("test"))

    external_metrics_ingest(run=run, points=[("loss", 1, 0.9, None), ("loss", 2, float("inf"), None)])
    engine_on_metrics(experiment_id=experiment.pk)
    run_pending_actions()

    state = external_run_heartbeat(run=run)
    assert state.stop is True
    assert state.reason and state.reason.startswith("the experiment is queued: requeue by policy:nan_guard")
    experiment.refresh_from_db()
    assert experiment.config == {"lr": 0.1}
    # The client's next start is the next attempt, with the halved learning rate.
    external_run_finish(run=run, status="completed")
    again = external_run_start(experiment=experiment, actor=Actor.system("test"))
    assert again.attempt == 2 and again.config == {"lr": 0.1}


def test_a_stop_run_policy_sets_the_stop_state_naming_the_policy() -> None:
    make_policy(
        "stopper",
        PolicyKind.EARLY_STOP,
        [{"kind": "metric", "metric": "loss", "aggregate": "latest", "operator": "<", "threshold": 0.5}],
        [{"kind": "stop_run", "params": {}}],
    )
    external = external_run_start(experiment=_external("ext"), actor=Actor.system("test"))
    external_metrics_ingest(run=external, points=[("loss", 1, 0.1, None)])

    engine_on_metrics(experiment_id=external.experiment_id)
    [execution] = run_pending_actions()

    assert execution.status == ExecutionStatus.SUCCEEDED
    state = external_run_heartbeat(run=external)
    assert state.stop and state.reason and state.reason.startswith("early stop by policy stopper:")


def test_a_live_external_run_takes_no_concurrency_slot_from_worker_experiments() -> None:
    make_worker("w@host", cpu=1)
    external_run_start(experiment=_external(), actor=Actor.system("test"))
    queued = experiment_create(name="digits", recipe="digits")
    experiment_transition(experiment_id=queued.pk, event="queue", actor=Actor.system("test"))

    [started] = scheduler_tick(max_concurrent=1)

    assert started.experiment_id == queued.pk
