"""Canary and drift end to end: real predictions, sweeps and actions on a real Celery worker and Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import experiments.registry.serving as serving
from control.canary.models import CanaryRollout, RolloutStatus
from control.canary.tasks import canary_sweep_task
from control.policies.authoring import policy_create
from control.policies.models import ActionExecution, ExecutionStatus, TriggerEvent
from control.policies.tasks import drift_sweep_task
from experiments.actors import Actor
from experiments.choices import State
from experiments.models import Experiment, ModelStage, ModelVersion
from experiments.recipes.classify import raw_split
from experiments.registry.drift import shift_inputs
from experiments.registry.services import model_version_promote, model_version_register
from experiments.services import experiment_transition
from tests.conftest import WorkerHandle, wait_for
from tests.registry.conftest import MakeExperiment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]
ALICE = Actor.system("alice")
X_VAL, Y_VAL = raw_split(0, 0.2)[2:]


def _serve_round(n: int = 30, shift: float = 0.0) -> None:
    for j in range(n):
        features = shift_inputs(X_VAL[j : j + 1], shift)[0] if shift else X_VAL[j]
        try:
            answer = serving.predict(model_name="digits", payload={"features": features.tolist()})
        except serving.ServingError:
            continue
        serving.feedback(
            model_name="digits", payload={"request_id": answer["request_id"], "label": int(Y_VAL[j])}
        )


def _serve_and_sweep_until(done: Any, what: str, timeout: float = 60) -> Any:
    """Serve traffic and send the beat's canary sweep to the worker until done() holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _serve_round()
        canary_sweep_task.apply_async(queue="control")
        result = done()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _canary_policy() -> None:
    policy_create(
        name="canary",
        kind="canary",
        canary_min_requests=15,
        # A wide margin: a handful of clean answers passes a stage (the worker path is tested here).
        canary_margin=0.5,
        stages=[("canary_20pct", 20, 1), ("canary_50pct", 50, 1), ("full_rollout", 100, 0)],
        conditions=[
            {
                "kind": "metric",
                "metric": "error_rate",
                "operator": ">",
                "threshold": 0.05,
                "role": "rollback_on",
            },
            {
                "kind": "metric",
                "metric": "accuracy",
                "operator": "<",
                "threshold": 0.85,
                "role": "rollback_on",
            },
        ],
    )


def test_canary_on_the_worker_rolls_back_a_failing_version_and_deploys_a_good_one(
    start_celery_worker: Callable[..., WorkerHandle],
    make_experiment: MakeExperiment,
    flaky_digits_checkpoint: tuple[Path, dict[str, float]],
) -> None:
    # Trained experiments first: a running worker's scheduler would take their queued step over.
    v1 = model_version_promote(
        version_id=model_version_register(experiment_id=make_experiment("v1").pk).pk, actor=ALICE
    )
    bad = make_experiment("flaky", checkpoint=flaky_digits_checkpoint[0])
    good = make_experiment("good")
    _canary_policy()
    start_celery_worker()

    experiment_transition(experiment_id=bad.pk, event="promote", actor=ALICE)
    _serve_and_sweep_until(
        lambda: Experiment.objects.get(pk=bad.pk).state == State.ROLLED_BACK, "the failing canary rolled back"
    )
    rollout = CanaryRollout.objects.get(experiment=bad)
    assert rollout.status == RolloutStatus.ROLLED_BACK and rollout.stage["name"] == "canary_20pct"
    execution = wait_for(
        lambda: ActionExecution.objects.filter(
            trigger=rollout.trigger, status=ExecutionStatus.SUCCEEDED
        ).first(),
        timeout=10,
        what="the rollback action recorded",
    )
    assert execution.kind == "rollback" and execution.actor == "policy:canary"
    assert ModelVersion.objects.get(pk=rollout.candidate_id).stage == ModelStage.ARCHIVED
    assert ModelVersion.objects.get(pk=v1.pk).stage == ModelStage.PRODUCTION

    experiment_transition(experiment_id=good.pk, event="promote", actor=ALICE)
    _serve_and_sweep_until(
        lambda: Experiment.objects.get(pk=good.pk).state == State.DEPLOYED, "the good canary deployed"
    )
    rollout = CanaryRollout.objects.get(experiment=good)
    assert [h["stage"] for h in rollout.history] == ["canary_20pct", "canary_50pct"]
    new = wait_for(
        lambda: ModelVersion.objects.filter(experiment=good, stage=ModelStage.PRODUCTION).first(),
        timeout=10,
        what="the good version in production",
    )
    assert new.parent_id == v1.pk


def test_drift_on_the_worker_curates_then_retrains_in_order(
    start_celery_worker: Callable[..., WorkerHandle], make_experiment: MakeExperiment
) -> None:
    experiment = make_experiment("deployed")
    start_celery_worker()
    for event in ("promote", "deploy"):
        experiment_transition(experiment_id=experiment.pk, event=event, actor=ALICE)
    wait_for(
        lambda: ModelVersion.objects.filter(experiment=experiment, stage=ModelStage.PRODUCTION).exists(),
        timeout=10,
        what="production",
    )
    policy_create(
        name="drift_retrain",
        kind="drift_retrain",
        conditions=[{"kind": "drift", "operator": ">", "threshold": 0.15}],
        actions=[{"kind": "curate_dataset"}, {"kind": "retrain", "params": {"priority_class": "realtime"}}],
    )
    for _ in range(4):
        _serve_round(40, shift=0.25)
    drift_sweep_task.apply_async(queue="control")

    child = wait_for(
        lambda: Experiment.objects.filter(parent=experiment).first(), timeout=30, what="the retrain child"
    )
    assert child.dataset_version is not None and child.dataset_version.row_count > 0
    trigger = TriggerEvent.objects.get(experiment=experiment, kind="drift")
    # The child exists inside the retrain action's transaction, a moment before that action
    # records its end: wait for both ends before reading their order.
    wait_for(
        lambda: trigger.executions.filter(finished_at__isnull=False).count() == 2,
        timeout=10,
        what="both actions finished",
    )
    kinds = list(trigger.executions.order_by("finished_at").values_list("kind", flat=True))
    assert kinds == ["curate_dataset", "retrain"]
