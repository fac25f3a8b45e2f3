"""Actions that move experiments through their lifecycle: the same transitions the buttons fire."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from control.policies.actions.base import ActionContext, ActionFailed, ActionKind, action_kind_register
from experiments.choices import PriorityClass
from experiments.models import DatasetVersion, Experiment
from experiments.recipes import get_spec
from experiments.recipes.schema import Param
from experiments.runs.external import external_run_request_stop
from experiments.services import experiment_create, experiment_retrain, experiment_transition

_PRIORITY = Param(
    "priority_class", str, "", "Scheduling class of the new experiment.", choices=("", *PriorityClass.values)
)


@action_kind_register
class Retrain(ActionKind):
    """Queue a child experiment, on the dataset an earlier curate_dataset of the trigger made."""

    name = "retrain"
    label = "Retrain (child experiment)"
    help = (
        "Queue a child of the experiment with the same recipe (and the dataset an earlier "
        'curate_dataset action made). {"config_overrides": {"epochs": 40}, "priority_class": "realtime"}'
    )
    params = (_PRIORITY,)
    object_params = ("config_overrides",)

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Create and queue the child."""
        experiment = ctx.require_experiment(self.name)
        dataset = None
        if "extra_data" in get_spec(experiment.recipe).param_names():
            curated = ctx.earlier_result("curate_dataset") or {}
            dataset_id = curated.get("dataset_version_id")
            dataset = DatasetVersion.objects.filter(pk=dataset_id).first() if dataset_id else None
        child = experiment_retrain(
            experiment_id=experiment.pk,
            actor=ctx.actor,
            reason=ctx.reason,
            config_overrides=ctx.params.get("config_overrides") or {},
            priority_class=ctx.params.get("priority_class") or None,
            dataset_version=dataset,
        )
        return {"child_experiment_id": child.pk, "dataset_version_id": dataset.pk if dataset else None}


@action_kind_register
class QueueExperiment(ActionKind):
    """Queue a fresh experiment (of the trigger experiment's recipe unless one is named)."""

    name = "queue_experiment"
    label = "Queue a new experiment"
    help = 'Queue a fresh experiment. {"recipe": "digits", "config": {"epochs": 20}, "priority_class": "interactive"}'
    params = (Param("recipe", str, "", "Recipe; blank takes the trigger experiment's."), _PRIORITY)
    object_params = ("config",)

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Create the experiment and queue it."""
        recipe = ctx.params.get("recipe") or (ctx.experiment.recipe if ctx.experiment else "")
        created = experiment_create(
            name=f"{ctx.policy_name}: {recipe}",
            recipe=recipe,
            config=ctx.params.get("config") or {},
            priority_class=ctx.params.get("priority_class") or "batch",
            parent=ctx.experiment,
            description=ctx.reason,
        )
        experiment_transition(experiment_id=created.pk, event="queue", actor=ctx.actor, reason=ctx.reason)
        return {"experiment_id": created.pk}


class _Transition(ActionKind):
    """An action that fires the lifecycle event of the same name."""

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Fire the event on the trigger's experiment."""
        experiment = ctx.require_experiment(self.name)
        experiment_transition(
            experiment_id=experiment.pk, event=self.name, actor=ctx.actor, reason=ctx.reason
        )
        return {"experiment_id": experiment.pk, "event": self.name}


@action_kind_register
class Cancel(_Transition):
    """Cancel the experiment."""

    name = "cancel"
    label = "Cancel"
    help = "Cancel the experiment. No parameters."


@action_kind_register
class Requeue(ActionKind):
    """Stop the run and queue it again from its last good checkpoint with a scaled learning rate."""

    name = "requeue"
    label = "Requeue with changed hyper-parameters"
    help = (
        "Stop the run and queue it again from its last good checkpoint, learning rate scaled. "
        '{"lr_factor": 0.5, "config_overrides": {"inject_nan_at_step": -1}}'
    )
    params = (Param("lr_factor", float, 0.5, "Multiply the learning rate by this.", 0.0001, 10.0),)
    object_params = ("config_overrides",)

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Scale the learning rate and requeue; the next attempt resumes from the last good checkpoint."""
        experiment_id = ctx.require_experiment(self.name).pk
        factor = float(ctx.params.get("lr_factor", 0.5))
        overrides = ctx.params.get("config_overrides") or {}
        with transaction.atomic():
            experiment = Experiment.objects.select_for_update().get(pk=experiment_id)
            old_lr = float(experiment.config.get("lr", 0.0))
            new_lr = old_lr * factor
            config = {**experiment.config, **overrides}
            if experiment.recipe or "lr" in experiment.config:
                config["lr"] = new_lr
            if experiment.recipe:  # an external experiment may declare no recipe: its config is its own
                config = dict(get_spec(experiment.recipe).clean(config))
            Experiment.objects.filter(pk=experiment_id).update(config=config)
            experiment_transition(
                experiment_id=experiment_id,
                event="requeue",
                actor=ctx.actor,
                reason=f"{ctx.reason}; lr {old_lr:g} → {new_lr:g}",
            )
        return {"experiment_id": experiment_id, "lr": [old_lr, new_lr]}


@action_kind_register
class Hold(_Transition):
    """Hold an evaluating experiment for review."""

    name = "hold"
    label = "Hold for review"
    help = "Move an evaluating experiment to completed (held). No parameters."


@action_kind_register
class Promote(ActionKind):
    """Promote; with no canary policy in scope the experiment is deployed at once."""

    name = "promote"
    label = "Promote"
    help = "Promote the experiment; with no canary policy in scope it is deployed at once. No parameters."

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Judge the candidate again against production now; hold it if it lost, else promote (and deploy)."""
        experiment = ctx.require_experiment(self.name)
        with transaction.atomic():
            # Production may have changed since the trigger fired (another candidate went live):
            # the decision that counts is the one against the version serving now.
            lost = ctx.rejudge(experiment)
            if lost is not None:
                experiment_transition(
                    experiment_id=experiment.pk,
                    event="hold",
                    actor=ctx.actor,
                    reason=f"judged again against production when the promotion ran: {lost}",
                )
                return {"experiment_id": experiment.pk, "event": "hold", "reason": lost}
            experiment_transition(
                experiment_id=experiment.pk, event="promote", actor=ctx.actor, reason=ctx.reason
            )
            if not ctx.canary_applies(experiment):
                experiment_transition(
                    experiment_id=experiment.pk,
                    event="deploy",
                    actor=ctx.actor,
                    reason="no canary policy in scope: deployed at once",
                )
                return {"experiment_id": experiment.pk, "event": "promote+deploy"}
        return {"experiment_id": experiment.pk, "event": "promote"}


@action_kind_register
class Rollback(_Transition):
    """Roll the deployment back."""

    name = "rollback"
    label = "Roll back"
    help = "Roll back the deployment and restore the previous production version."


@action_kind_register
class StopRun(ActionKind):
    """Early stop of an external run: its client stops at its next should_stop(); the experiment stays running."""

    name = "stop_run"
    label = "Stop the run (early stop, external runs)"
    help = (
        "Ask the experiment's external run to stop: its client sees it in the answer to its next "
        "metric batch or heartbeat, and finishes the run with what it trained. An MLflow client "
        "cannot be told: the run is marked stop-requested on the dashboard. No parameters."
    )

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Set the stop request on the live external run(s)."""
        experiment = ctx.require_experiment(self.name)
        if not experiment.is_external:
            raise ActionFailed(
                f"stop_run acts on external runs; #{experiment.pk} is trained by a worker "
                "(use requeue or cancel)"
            )
        reason = f"early stop by policy {ctx.policy_name}: {ctx.reason}" if ctx.reason else ctx.policy_name
        runs = external_run_request_stop(experiment_id=experiment.pk, reason=reason)
        return {"experiment_id": experiment.pk, "runs": [r.pk for r in runs]}
