"""The effect table: for each lifecycle event, what follows it and in which order.

Every effect runs after the event commits (a transition's effects one on_commit callback
each, in this order; one that fails is logged and the rest still run). The order matters:
- promote: the version is registered as the canary before its rollout starts, and both
  before the policies hear of it;
- deploy / rollback: the registry serves (or restores) the right version before the
  rollout is closed;
- cancel / requeue: the rollout ends and the policies are told before the live run is asked
  to stop;
- a transition that meets or breaks a dependency releases, cancels or holds the experiments
  waiting on it (experiments/pipelines) before the open pages are told;
- the open pages are told last, when everything above is in the database.
tests/control/test_lifecycle.py pins this table. ControlConfig.ready() installs it.
"""

from __future__ import annotations

from control.canary.rollouts import (
    rollout_end_on_cancel,
    rollout_end_on_deploy,
    rollout_end_on_rollback,
    rollout_start_on_promote,
)
from control.policies.listeners import (
    evaluation_request_on_promote,
    policies_decide_on_evaluation,
    policies_evaluate_on_metrics,
    policies_evaluate_on_transition,
    policies_evaluate_on_transitions,
)
from control.scheduling.evaluations import evaluation_request_on_complete
from control.scheduling.services import (
    leases_release_on_run_end,
    runs_stop_on_cancel,
    scheduler_tick_on_new_work,
)
from experiments.effects import EffectTable
from experiments.pipelines.services import dependents_react_on_transition
from experiments.registry.services import (
    version_register_on_promote,
    version_restore_on_rollback,
    version_serve_on_deploy,
)
from experiments.runs.evaluation import evaluation_publish
from experiments.runs.reporting import publish_metric_batch
from experiments.services import state_change_publish, state_change_publish_many

EFFECTS = EffectTable(
    transitions={
        "queue": (policies_evaluate_on_transition, scheduler_tick_on_new_work, state_change_publish),
        # Started with unmet dependencies: decide at once when an upstream already failed.
        "wait": (dependents_react_on_transition, state_change_publish),
        "release": (policies_evaluate_on_transition, scheduler_tick_on_new_work, state_change_publish),
        "block": (state_change_publish,),
        "start": (policies_evaluate_on_transition, state_change_publish),
        # The evaluation job is created first: the policies' decision then waits for its result.
        "complete": (
            evaluation_request_on_complete,
            policies_evaluate_on_transition,
            dependents_react_on_transition,
            state_change_publish,
        ),
        "fail": (policies_evaluate_on_transition, dependents_react_on_transition, state_change_publish),
        "retry": (policies_evaluate_on_transition, scheduler_tick_on_new_work, state_change_publish),
        "requeue": (
            policies_evaluate_on_transition,
            scheduler_tick_on_new_work,
            runs_stop_on_cancel,
            state_change_publish,
        ),
        "hold": (policies_evaluate_on_transition, dependents_react_on_transition, state_change_publish),
        "promote": (
            version_register_on_promote,
            evaluation_request_on_promote,
            rollout_start_on_promote,
            policies_evaluate_on_transition,
            state_change_publish,
        ),
        "deploy": (
            version_serve_on_deploy,
            rollout_end_on_deploy,
            policies_evaluate_on_transition,
            dependents_react_on_transition,
            state_change_publish,
        ),
        "rollback": (
            version_restore_on_rollback,
            rollout_end_on_rollback,
            policies_evaluate_on_transition,
            dependents_react_on_transition,
            state_change_publish,
        ),
        "cancel": (
            rollout_end_on_cancel,
            policies_evaluate_on_transition,
            runs_stop_on_cancel,
            dependents_react_on_transition,
            state_change_publish,
        ),
        "retrain": (policies_evaluate_on_transition, state_change_publish),
        # A queued promotion that lost to production: its rollout ends, its candidate stops.
        "withdraw": (rollout_end_on_cancel, policies_evaluate_on_transition, state_change_publish),
        # The registry moved production (the version is already where it belongs).
        "retire": (policies_evaluate_on_transition, dependents_react_on_transition, state_change_publish),
        "reinstate": (policies_evaluate_on_transition, dependents_react_on_transition, state_change_publish),
        "adopt": (policies_evaluate_on_transition, dependents_react_on_transition, state_change_publish),
    },
    # A scheduler pass starting many runs: one policy lookup and one send to the pages for all.
    batched={
        policies_evaluate_on_transition: policies_evaluate_on_transitions,
        state_change_publish: state_change_publish_many,
    },
    # Inside the transaction that ends the run (the scheduler tick itself waits for commit).
    run_ended=(leases_release_on_run_end,),
    # The page first (a live chart is what a person waits for), then the policies.
    metrics_flushed=(publish_metric_batch, policies_evaluate_on_metrics),
    # A run's evaluation job ended: the auto-promote decision that waited for it is taken.
    evaluated=(policies_decide_on_evaluation, evaluation_publish),
)
