"""Through a real Celery worker and Redis: a grpo run is evaluated on held-out prompts, and policies may read the result."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from control.policies.models import ActionRole, PolicyKind, TriggerEvent
from experiments.actors import Actor
from experiments.choices import State
from experiments.models import (
    EvaluationStatus,
    Experiment,
    MetricPoint,
    RunArtifact,
    RunEvaluation,
    TransitionLog,
)
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WorkerHandle, wait_for
from tests.policies.helpers import make_policy

TINY = {
    "length": 2, "steps": 6, "prompts": 8, "group_size": 4, "d_model": 16, "n_layers": 1, "n_heads": 2,
    "eval_every": 3,
}  # fmt: skip
RETURN_CONDITION = [{"kind": "metric", "metric": "eval/mean_return", "operator": ">=", "threshold": 0.0}]
PROMOTE_OR_HOLD = [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}]


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


@pytest.mark.django_db
def test_an_auto_promote_condition_on_grpos_held_out_return_is_accepted_and_a_foreign_one_refused() -> None:
    policy = make_policy(
        "promote_on_return",
        PolicyKind.AUTO_PROMOTE,
        RETURN_CONDITION,
        PROMOTE_OR_HOLD,
        scope_recipes=["grpo"],
    )
    assert [c.metric for c in policy.conditions.all()] == ["eval/mean_return"]
    with pytest.raises(ValidationError) as refused:
        # grpo's evaluation measures returns, not a language model's perplexity.
        make_policy(
            "grpo_on_perplexity",
            PolicyKind.AUTO_PROMOTE,
            [{"kind": "metric", "metric": "eval/perplexity", "operator": "<", "threshold": 5.0}],
            PROMOTE_OR_HOLD,
            scope_recipes=["grpo"],
        )
    assert "eval/mean_return" in refused.value.message_dict["metric"][0]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_grpo_run_goes_through_evaluating_and_a_policy_decides_on_its_held_out_return(
    celery_worker: WorkerHandle,
) -> None:
    # grpo's models are compared, never served: here a good held-out return holds the run for review.
    make_policy(
        "hold_on_return",
        PolicyKind.AUTO_PROMOTE,
        RETURN_CONDITION,
        [{"kind": "hold"}],
        scope_recipes=["grpo"],
    )
    experiment = experiment_create(name="grpo evaluated", recipe="grpo", config=TINY)
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))

    settled = (State.PROMOTING, State.DEPLOYED, State.COMPLETED, State.FAILED, State.CANCELLED)
    wait_for(lambda: _state(experiment) in settled, timeout=180, what="the decision")

    log = TransitionLog.objects.filter(experiment=experiment).order_by("pk")
    assert [(t.event, t.target_state) for t in log] == [
        ("queue", State.QUEUED),
        ("start", State.RUNNING),
        ("complete", State.EVALUATING),
        ("hold", State.COMPLETED),
    ]
    assert log.last().actor == "policy:hold_on_return"  # type: ignore[union-attr]
    run = experiment.runs.get()
    evaluation = RunEvaluation.objects.get(run=run)
    assert evaluation.status == EvaluationStatus.SUCCEEDED and evaluation.worker == celery_worker.hostname
    assert set(evaluation.metrics) == {"mean_return", "solved"}
    assert 0.0 <= evaluation.metrics["solved"] <= evaluation.metrics["mean_return"] <= 1.0
    [stored] = MetricPoint.objects.filter(run=run, name="eval/mean_return")
    assert (
        stored.value == pytest.approx(evaluation.metrics["mean_return"]) and stored.step == run.last_step == 6
    )
    # The policy decided on the stored number, after the job's result landed.
    trigger = TriggerEvent.objects.get(experiment=experiment)
    assert evaluation.finished_at is not None
    assert trigger.conditions_passed and trigger.created_at >= evaluation.finished_at
    assert [c["value"] for c in trigger.snapshot["conditions"]] == [pytest.approx(stored.value)]
    assert set(run.stages.values_list("name", flat=True)) == {"train", "export", "evaluate"}
    assert "samples.json" in set(RunArtifact.objects.filter(run=run).values_list("name", flat=True))
