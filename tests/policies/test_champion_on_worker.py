"""Champion/challenger on a real worker: a worse model must not reach production.

Two digits runs finish while nothing is in production (12 epochs, and 2 epochs: worse on the
held-out set by far more than the policy's 5% margin). Both pass the absolute bars, so both are
decided "promote" before either serves; the later promotion is judged again against the version
serving by then, and held.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from control.policies.models import ActionRole, ExecutionStatus, PolicyKind, TriggerEvent
from experiments.choices import State
from experiments.models import (
    Experiment,
    ModelStage,
    ModelVersion,
    TransitionLog,
    VersionEvaluation,
    VersionEvaluationStatus,
)
from tests.conftest import WorkerHandle, wait_for
from tests.digits_models import evaluating_digits_experiment, train_digits
from tests.policies.helpers import add_points, make_policy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

Trained = tuple[Path, dict[str, float]]


@pytest.fixture(scope="session")
def better_and_worse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trained, Trained]:
    """Two real digits models: 12 epochs, and an under-trained 2 epochs."""
    better = train_digits(tmp_path_factory.mktemp("digits-12-epochs"), epochs=12)
    worse = train_digits(tmp_path_factory.mktemp("digits-2-epochs"), epochs=2)
    return better, worse


def _finished(name: str, trained: Trained) -> Experiment:
    """Return an evaluating experiment whose run left this checkpoint and logged its final metrics."""
    checkpoint, metrics = trained
    experiment = evaluating_digits_experiment(name, checkpoint, metrics=metrics)
    run = experiment.runs.get()
    for metric, value in metrics.items():
        add_points(run, metric, [value], first_step=1)
    return experiment


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def _settled(*experiments: Experiment) -> bool:
    """Every decision made and carried out: no experiment waits for the policy, no action is pending."""
    if any(_state(e) in (State.EVALUATING, State.PROMOTING) for e in experiments):
        return False
    triggers = TriggerEvent.objects.filter(experiment__in=experiments)
    return triggers.count() == len(experiments) and not any(
        x.status in (ExecutionStatus.PENDING, ExecutionStatus.RUNNING)
        for t in triggers
        for x in t.executions.all()
    )


def test_two_candidates_finishing_while_nothing_serves_the_worse_one_never_reaches_production(
    start_celery_worker: Callable[..., WorkerHandle], better_and_worse: tuple[Trained, Trained]
) -> None:
    better_trained, worse_trained = better_and_worse
    make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [
            {"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9},
            {"kind": "metric", "metric": "f1", "operator": ">", "threshold": 0.85},
            {"kind": "regression", "metric": "val_loss", "threshold": 0.05},
        ],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
    )
    # Both finish before the worker is up: their decisions wait on the queue side by side, as
    # when two runs complete at the same moment. The better one finished first.
    better = _finished("digits 12 epochs", better_trained)
    worse = _finished("digits 2 epochs", worse_trained)
    start_celery_worker()

    wait_for(lambda: _settled(better, worse), timeout=180, what="both decisions carried out")

    production = ModelVersion.objects.filter(model_name="digits", stage=ModelStage.PRODUCTION).first()
    versions = list(ModelVersion.objects.values_list("version", "stage", "experiment__name"))
    assert production is not None and production.experiment_id == better.pk, versions
    assert _state(better) == State.DEPLOYED and _state(worse) == State.COMPLETED
    hold = TransitionLog.objects.get(experiment=worse, event="hold")
    assert hold.actor == "policy:auto_promote"
    assert f"v{production.version}" in hold.reason and "held-out evaluation" in hold.reason
    # Both checkpoints were measured by the same evaluation job on the same held-out set.
    evaluations = VersionEvaluation.objects.filter(
        version__experiment__in=[better, worse], status=VersionEvaluationStatus.SUCCEEDED
    )
    assert evaluations.count() == 2 and len({e.eval_set for e in evaluations}) == 1
    by_experiment = {e.version.experiment_id: e.metrics for e in evaluations}
    assert by_experiment[worse.pk]["val_loss"] > by_experiment[better.pk]["val_loss"] * 1.05
    # The trigger shows whom the worse one was compared with (when it fired, or when it ran).
    snapshot = TriggerEvent.objects.get(experiment=worse).snapshot
    judged = snapshot.get("rejudged") or snapshot
    assert judged["passed"] is False and judged["champion"]["version_id"] == production.pk
