"""Policies act on the dpo and grpo recipes' metrics: a GRPO run whose reward collapses is stopped."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from control.policies.engine import engine_on_metrics
from control.policies.models import PolicyKind, TriggerEvent
from experiments.choices import State
from experiments.models import Experiment, TransitionLog
from tests.policies.helpers import (
    add_points,
    experiment_through,
    make_policy,
    record_run,
    run_pending_actions,
)

pytestmark = pytest.mark.django_db

REWARD_COLLAPSE = [
    # below 0.2 on average over the last 5 steps: the policy has stopped earning any reward
    {
        "kind": "metric",
        "metric": "reward_mean",
        "aggregate": "mean",
        "window": 5,
        "operator": "<",
        "threshold": 0.2,
    }
]


def test_a_reward_collapse_policy_cancels_a_grpo_run_and_states_its_evidence() -> None:
    make_policy(
        "reward_collapse",
        PolicyKind.EARLY_STOP,
        REWARD_COLLAPSE,
        [{"kind": "cancel"}],
        scope_recipes=["grpo"],
    )
    experiment = experiment_through("queue", "start", name="grpo collapse", recipe="grpo")
    # A healthy start: chance level (one digit in ten), then learning.
    run = record_run(experiment, {"reward_mean": [0.1, 0.12, 0.3, 0.5, 0.7, 0.8]}, status="running")
    assert engine_on_metrics(experiment_id=experiment.pk) == []

    # The reward falls away; one bad step is not yet a collapse...
    add_points(run, "reward_mean", [0.05], first_step=7)
    assert engine_on_metrics(experiment_id=experiment.pk) == []
    # ...five in a row are.
    add_points(run, "reward_mean", [0.02, 0.0, 0.0, 0.0], first_step=8)
    [fired] = engine_on_metrics(experiment_id=experiment.pk)
    run_pending_actions()

    assert Experiment.objects.get(pk=experiment.pk).state == State.CANCELLED
    condition = fired.snapshot["conditions"][0]
    assert condition["passed"] and condition["value"] == pytest.approx(0.014)
    log = TransitionLog.objects.filter(experiment=experiment, event="cancel").get()
    assert log.actor == "policy:reward_collapse"
    assert TriggerEvent.objects.count() == 1


def test_a_reward_collapse_policy_leaves_a_learning_grpo_run_and_other_recipes_alone() -> None:
    make_policy(
        "reward_collapse",
        PolicyKind.EARLY_STOP,
        REWARD_COLLAPSE,
        [{"kind": "cancel"}],
        scope_recipes=["grpo"],
    )
    learning = experiment_through("queue", "start", name="grpo learning", recipe="grpo")
    record_run(learning, {"reward_mean": [0.1, 0.1, 0.12, 0.15, 0.2, 0.3, 0.45]}, status="running")
    other = experiment_through("queue", "start", name="digits", recipe="digits")
    record_run(other, {"reward_mean": [0.0] * 6}, status="running")
    assert engine_on_metrics(experiment_id=learning.pk) == []
    assert engine_on_metrics(experiment_id=other.pk) == []
    assert Experiment.objects.get(pk=learning.pk).state == State.RUNNING


@pytest.mark.parametrize(
    ("recipe", "metric"),
    [
        ("grpo", "reward_mean"),
        ("grpo", "entropy"),
        ("grpo", "mean_return"),
        ("dpo", "reward_accuracy"),
        ("dpo", "kl"),
    ],
)
def test_policies_scoped_to_the_new_recipes_may_name_their_metrics(recipe: str, metric: str) -> None:
    make_policy(
        f"{recipe}_{metric}",
        PolicyKind.CUSTOM,
        [{"kind": "metric", "metric": metric, "operator": ">", "threshold": 0.5}],
        [],
        scope_recipes=[recipe],
    )


def test_a_grpo_policy_naming_a_metric_grpo_does_not_log_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        make_policy(
            "grpo_accuracy",
            PolicyKind.CUSTOM,
            [{"kind": "metric", "metric": "reward_accuracy", "operator": ">", "threshold": 0.9}],
            [],
            scope_recipes=["grpo"],
        )
    assert "reward_mean" in refused.value.message_dict["metric"][0]
