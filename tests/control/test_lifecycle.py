"""The effect table: what follows each lifecycle event, in order, after commit."""

from __future__ import annotations

import pytest
from django.db import transaction

from control.lifecycle import EFFECTS
from experiments.actors import Actor
from experiments.effects import effect_names, effects_install, effects_installed
from experiments.models import EVENT_PERMISSIONS, Experiment
from experiments.services import experiment_create, experiment_transition

POLICIES = "control.policies.listeners.policies_evaluate_on_transition"
PUBLISH = "experiments.services.state_change_publish"
TICK = "control.scheduling.services.scheduler_tick_on_new_work"
STOP_RUNS = "control.scheduling.services.runs_stop_on_cancel"
DEPENDENTS = "experiments.pipelines.services.dependents_react_on_transition"

# The pinned order. Changing it changes what users see happen (a canary that starts before
# its version is registered has nothing to serve): change it here only on purpose.
EXPECTED = {
    "queue": [POLICIES, TICK, PUBLISH],
    "wait": [DEPENDENTS, PUBLISH],
    "release": [POLICIES, TICK, PUBLISH],
    "block": [PUBLISH],
    "start": [POLICIES, PUBLISH],
    # The evaluation job exists before the policies look: their decision waits for its result.
    "complete": [
        "control.scheduling.evaluations.evaluation_request_on_complete",
        POLICIES,
        DEPENDENTS,
        PUBLISH,
    ],
    "fail": [POLICIES, DEPENDENTS, PUBLISH],
    "retry": [POLICIES, TICK, PUBLISH],
    "requeue": [POLICIES, TICK, STOP_RUNS, PUBLISH],
    "hold": [POLICIES, DEPENDENTS, PUBLISH],
    "promote": [
        "experiments.registry.services.version_register_on_promote",
        "control.policies.listeners.evaluation_request_on_promote",
        "control.canary.rollouts.rollout_start_on_promote",
        POLICIES,
        PUBLISH,
    ],
    "deploy": [
        "experiments.registry.services.version_serve_on_deploy",
        "control.canary.rollouts.rollout_end_on_deploy",
        POLICIES,
        DEPENDENTS,
        PUBLISH,
    ],
    "rollback": [
        "experiments.registry.services.version_restore_on_rollback",
        "control.canary.rollouts.rollout_end_on_rollback",
        POLICIES,
        DEPENDENTS,
        PUBLISH,
    ],
    "cancel": ["control.canary.rollouts.rollout_end_on_cancel", POLICIES, STOP_RUNS, DEPENDENTS, PUBLISH],
    "retrain": [POLICIES, PUBLISH],
    "withdraw": ["control.canary.rollouts.rollout_end_on_cancel", POLICIES, PUBLISH],
    "retire": [POLICIES, DEPENDENTS, PUBLISH],
    "reinstate": [POLICIES, DEPENDENTS, PUBLISH],
    "adopt": [POLICIES, DEPENDENTS, PUBLISH],
}


def test_the_effect_table_is_pinned_event_by_event() -> None:
    assert {event: effect_names(effects) for event, effects in EFFECTS.transitions.items()} == EXPECTED
    assert effect_names(EFFECTS.run_ended) == ["control.scheduling.services.leases_release_on_run_end"]
    assert effect_names(EFFECTS.metrics_flushed) == [
        "experiments.runs.reporting.publish_metric_batch",
        "control.policies.listeners.policies_evaluate_on_metrics",
    ]
    assert effect_names(EFFECTS.evaluated) == [
        "control.policies.listeners.policies_decide_on_evaluation",
        "experiments.runs.evaluation.evaluation_publish",
    ]


def test_every_event_has_its_effects_and_ends_by_telling_the_pages() -> None:
    assert set(EFFECTS.transitions) == set(EVENT_PERMISSIONS)
    assert all(effects[-1].__name__ == "state_change_publish" for effects in EFFECTS.transitions.values())


def test_django_start_up_installs_the_control_table() -> None:
    assert effects_installed() is EFFECTS


@pytest.mark.django_db(transaction=True)
def test_effects_run_in_table_order_after_commit_and_a_failing_one_does_not_stop_the_rest() -> None:
    calls: list[str] = []

    def first(done: object) -> None:
        calls.append("first")
        raise RuntimeError("broken effect")

    def second(done: object) -> None:
        calls.append("second")

    experiment = experiment_create(name="effects", recipe="digits")
    table = effects_installed()
    previous = effects_install(type(table)(transitions={"queue": (first, second)}))
    try:
        with transaction.atomic():
            experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system())
            assert calls == []  # nothing before commit
        assert calls == ["first", "second"]
    finally:
        effects_install(previous)
    assert Experiment.objects.get(pk=experiment.pk).state == "queued"
