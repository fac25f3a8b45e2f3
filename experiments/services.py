"""Writes of the experiment domain: create, fire transitions (audited), retrain."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django_fsm import ConcurrentTransition, can_proceed, has_transition_perm

from experiments import events
from experiments.actors import Actor
from experiments.choices import Executor, PriorityClass, State
from experiments.effects import Transitioned, transition_effects_schedule, transition_effects_schedule_many
from experiments.models import (
    EVENT_LABELS,
    EVENT_PERMISSIONS,
    Dependency,
    Experiment,
    Project,
    TransitionLog,
    default_project,
    unmet_dependencies,
)
from experiments.models.bulk import case_by_pk
from experiments.recipes import RECIPES
from experiments.recipes.script import SCRIPT_RECIPE

logger = logging.getLogger(__name__)

# Running a script runs arbitrary code on the workers: it takes its own permission, which the
# Researchers group does not hold unless an administrator grants it.
RUN_SCRIPT_PERMISSION = "experiments.run_script"
SCRIPT_REFUSED = (
    "You may not run scripts: it needs the permission 'Can run scripts on the workers' "
    "(experiments.run_script), which an administrator grants."
)
# The events that make a script run (again).
SCRIPT_RUN_EVENTS = frozenset({"queue", "release", "retry", "requeue"})

# Past participles for the answer to a refused transition ("already promoting").
_STATE_PHRASES = {
    State.QUEUED: "already queued",
    State.RUNNING: "already running",
    State.EVALUATING: "already finished training",
    State.COMPLETED: "already held for review",
    State.PROMOTING: "already promoting",
    State.DEPLOYED: "already deployed",
    State.FAILED: "already failed",
    State.CANCELLED: "already cancelled",
    State.ROLLED_BACK: "already rolled back",
    State.RETIRED: "retired (a newer version replaced it)",
    State.PENDING: "still pending",
    State.WAITING: "waiting on its dependencies",
}


class TransitionRefused(Exception):
    """The event cannot fire from the experiment's current state (or lost a race)."""

    def __init__(self, *, experiment: Experiment, event: str, message: str) -> None:
        super().__init__(message)
        self.experiment = experiment
        self.event = event
        self.message = message


class OverrideRequired(Exception):
    """A person promotes what a policy held: they must confirm the override, with a reason."""

    def __init__(self, *, experiment: Experiment, hold: TransitionLog) -> None:
        self.experiment = experiment
        self.policy = hold.policy_name
        self.verdict = hold.reason
        self.message = (
            f"Policy {self.policy} held {experiment.name!r}: {self.verdict or 'no reason recorded'}. "
            "Promoting it overrides the policy: confirm, with a reason."
        )
        super().__init__(self.message)


def experiment_create(
    *,
    name: str,
    recipe: str,
    config: dict[str, Any] | None = None,
    owner: Any = None,
    description: str = "",
    priority_class: str = PriorityClass.BATCH,
    priority: int = 5,
    gpus: int = 0,
    gpu_type: str = "",
    memory_gb: float = 0.0,
    cpu_cores: int | None = None,
    host_memory_gb: float | None = None,
    max_attempts: int = 3,
    timeout_seconds: int = 3600,
    tags: list[str] | None = None,
    parent: Experiment | None = None,
    dataset_version: Any = None,
    executor: str = Executor.WORKER,
    project: Project | None = None,
) -> Experiment:
    """Validate and create a pending experiment; raise ValidationError keyed by field.

    CPU cores and host memory left out (None) take the recipe's default resource request. It joins
    the given project, else its parent's, else the default project (the pages and the API offer only
    the projects where the caller may create).
    """
    defaults = RECIPES[recipe].resources if recipe in RECIPES else None
    if cpu_cores is None:
        cpu_cores = defaults.cpu_cores if defaults else 1
    if host_memory_gb is None:
        host_memory_gb = defaults.host_memory_gb if defaults else 1.0
    if recipe == SCRIPT_RECIPE and owner is not None and not owner.has_perm(RUN_SCRIPT_PERMISSION):
        raise ValidationError({"recipe": SCRIPT_REFUSED})
    if project is None:
        project = parent.project if parent is not None else default_project()
    experiment = Experiment(
        name=name,
        recipe=recipe,
        executor=executor,
        config=config or {},
        owner=owner,
        description=description,
        priority_class=priority_class,
        priority=priority,
        gpus=gpus,
        gpu_type=gpu_type,
        memory_gb=memory_gb,
        cpu_cores=cpu_cores,
        host_memory_gb=host_memory_gb,
        max_attempts=max_attempts,
        timeout_seconds=timeout_seconds,
        tags=tags or [],
        parent=parent,
        dataset_version=dataset_version,
        project=project,
    )
    experiment.full_clean()
    experiment.save()
    return experiment


def experiment_transition(
    *, experiment_id: int, event: str, actor: Actor, reason: str = "", override: bool = False
) -> Experiment:
    """Fire one event on an experiment: transition, save and audit in one transaction.

    Raise TransitionRefused when the current state does not allow it (including losing a
    race to a concurrent transition) and PermissionDenied when the person may not fire it.
    A person promoting what a policy held must pass override=True and a reason (OverrideRequired,
    or a ValidationError on reason, otherwise); the audit says "override of <policy>: <reason>".
    """
    if event not in EVENT_PERMISSIONS:
        raise ValidationError({"event": f"unknown event {event!r} (known: {', '.join(EVENT_PERMISSIONS)})"})
    if event == "retrain":
        child = experiment_retrain(experiment_id=experiment_id, actor=actor, reason=reason)
        assert child.parent is not None
        return child.parent
    try:
        with transaction.atomic():
            experiment = Experiment.objects.get(pk=experiment_id)
            if event == "promote" and actor.is_person:
                reason = _override_reason(experiment, actor, reason, override)
            _fire(experiment, event, actor, reason)
    except ConcurrentTransition:
        # Another request changed the state between our read and our write; the
        # transaction is rolled back, so read what won and say so.
        raise _refusal(Experiment.objects.get(pk=experiment_id), event) from None
    return experiment


def _override_reason(experiment: Experiment, actor: Actor, reason: str, override: bool) -> str:
    """Return the audit reason of a person's promote, refusing an unconfirmed override of a policy."""
    hold = experiment.policy_hold()
    if hold is None:
        return reason
    if not has_transition_perm(experiment.promote, actor.user):
        raise PermissionDenied("You may not promote experiments.")
    if not override:
        raise OverrideRequired(experiment=experiment, hold=hold)
    if not reason.strip():
        raise ValidationError(
            {"reason": f"Say why you override policy {hold.policy_name}; it goes to the audit."}
        )
    return f"override of {hold.policy_name}: {reason.strip()}"


def _refusal(experiment: Experiment, event: str) -> TransitionRefused:
    label = EVENT_LABELS[event]
    phrase = _STATE_PHRASES.get(State(experiment.state), experiment.state)
    return TransitionRefused(
        experiment=experiment,
        event=event,
        message=f"Cannot {label.lower()} {experiment.name!r}: it is {phrase}.",
    )


def experiment_serving_refusal(experiment: Experiment) -> str:
    """Return why the experiment's model cannot be promoted (its recipe cannot serve), or ""."""
    spec = RECIPES.get(experiment.recipe)
    if spec is None:
        return (
            f"Cannot promote {experiment.name!r}: recipe {experiment.recipe!r} is not in the catalog "
            "(a plug-in that is no longer installed or was refused), so its model cannot be served."
        )
    if not spec.servable:
        return f"Cannot promote {experiment.name!r}: {spec.not_servable_reason()}."
    return ""


@dataclass(frozen=True)
class _Fired:
    """A transition applied to an instance, not yet written: the event fired, its source and audit reason."""

    experiment: Experiment
    event: str
    source: str
    reason: str


def _transition_apply(experiment: Experiment, event: str, actor: Actor, reason: str) -> _Fired:
    """Check the rules of firing `event` and apply it to the instance (unsaved).

    The one place of the transition rules: the single and the batch write both go through it.
    """
    method = getattr(experiment, event)
    if not can_proceed(method):
        raise _refusal(experiment, event)
    if actor.is_person and not has_transition_perm(method, actor.user):
        raise PermissionDenied(f"You may not {EVENT_LABELS[event].lower()} experiments.")
    if event == "queue" and (unmet := unmet_dependencies(experiment)):
        # Started with dependencies not met yet: it waits outside the queue, and the pipeline
        # releases it when they are (experiments/pipelines). The person's queue permission held.
        event, method = "wait", experiment.wait
        waits_for = "waits for " + ", ".join(edge.describe() for edge in unmet)
        reason = f"{reason}; {waits_for}" if reason else waits_for
    if event == "promote" and (why := experiment_serving_refusal(experiment)):
        # A person, the API and a policy all land here: nothing is registered or canaried.
        raise TransitionRefused(experiment=experiment, event=event, message=why)
    if experiment.recipe == SCRIPT_RECIPE and event in SCRIPT_RUN_EVENTS:
        if actor.is_person and not actor.user.has_perm(RUN_SCRIPT_PERMISSION):
            raise PermissionDenied(SCRIPT_REFUSED)
        # The audit says exactly what will run: the person (or policy) answers for this argv.
        reason = f"{reason}; {script_audit_text(experiment)}" if reason else script_audit_text(experiment)
    source = experiment.state
    method()
    return _Fired(experiment=experiment, event=event, source=source, reason=reason)


def _audit_row(fired: _Fired, actor: Actor) -> TransitionLog:
    return TransitionLog(
        experiment=fired.experiment,
        event=fired.event,
        source_state=fired.source,
        target_state=fired.experiment.state,
        actor=actor.label,
        user=actor.user,
        reason=fired.reason,
    )


def _transitioned(fired: _Fired, actor: Actor) -> Transitioned:
    return Transitioned(experiment=fired.experiment, event=fired.event, source=fired.source, actor=actor)


def _fire(experiment: Experiment, event: str, actor: Actor, reason: str) -> None:
    """Apply the transition inside the caller's transaction and write the audit row."""
    fired = _transition_apply(experiment, event, actor, reason)
    # ConcurrentTransitionMixin turns this into UPDATE ... WHERE state = <source>: of two
    # racing requests exactly one matches a row, the other raises ConcurrentTransition.
    experiment.save()
    _audit_row(fired, actor).save()
    # What follows (registry, canary, policies, scheduler, the open pages) runs after commit,
    # in the order of the effect table (control/lifecycle.py).
    transition_effects_schedule(_transitioned(fired, actor))


def experiments_transition_many(
    *, experiment_ids: Sequence[int], event: str, actor: Actor, reasons: Mapping[int, str]
) -> tuple[list[Experiment], list[TransitionRefused]]:
    """Fire one event on many experiments in a few statements; return those fired and the refusals.

    The rules are experiment_transition's own (_transition_apply); an experiment they refuse
    (cancelled, or started by someone else, since the caller looked) is left out and its
    refusal returned, one that no longer exists is left out. The writes are batched: one
    conditional UPDATE per source state (WHERE state = <source>, as the single write does),
    one insert of the audit rows, and the effects scheduled as one batch after commit.
    Raise ConcurrentTransition when another writer moved one of them between the read and
    the write: nothing of the batch is then written (the caller may retry one by one).
    PermissionDenied (a person without the permission) also refuses the whole batch.
    """
    if event not in EVENT_PERMISSIONS:
        raise ValidationError({"event": f"unknown event {event!r} (known: {', '.join(EVENT_PERMISSIONS)})"})
    if event == "retrain" or (event == "promote" and actor.is_person):
        # A retrain creates a child, a person's promote may need an override: one at a time.
        raise ValueError(f"{event} is fired one experiment at a time (experiment_transition)")
    fired: list[_Fired] = []
    refused: list[TransitionRefused] = []
    before: dict[int, dict[str, Any]] = {}
    with transaction.atomic():
        found = Experiment.objects.in_bulk(list(experiment_ids))
        for experiment_id in experiment_ids:
            experiment = found.get(experiment_id)
            if experiment is None:
                continue
            before[experiment.pk] = _column_values(experiment)
            try:
                fired.append(_transition_apply(experiment, event, actor, reasons.get(experiment_id, "")))
            except TransitionRefused as refusal:
                refused.append(refusal)
        _write_many(fired, before)
        TransitionLog.objects.bulk_create([_audit_row(f, actor) for f in fired])
        transition_effects_schedule_many([_transitioned(f, actor) for f in fired])
    return [f.experiment for f in fired], refused


def _column_values(experiment: Experiment) -> dict[str, Any]:
    return {f.attname: getattr(experiment, f.attname) for f in Experiment._meta.concrete_fields}


def _write_many(fired: list[_Fired], before: Mapping[int, Mapping[str, Any]]) -> None:
    """Save the applied transitions with one conditional UPDATE per source state and changed columns.

    Only what the transition changed is written (and updated_at); a value that differs from
    row to row (the moment of the change) is a CASE on the primary key, as bulk_update writes it.
    """
    now = timezone.now()
    groups: dict[tuple[str, tuple[str, ...]], list[Experiment]] = defaultdict(list)
    for f in fired:
        old = before[f.experiment.pk]
        changed = tuple(
            sorted(name for name, value in _column_values(f.experiment).items() if value != old[name])
        )
        groups[(f.source, changed)].append(f.experiment)
    for (source, changed), experiments in groups.items():
        values: dict[str, Any] = {"updated_at": now}
        for name in changed:
            if name == "updated_at":
                continue
            per_row = {e.pk: getattr(e, name) for e in experiments}
            first = per_row[experiments[0].pk]
            if all(value == first for value in per_row.values()):
                values[name] = first
            else:
                values[name] = case_by_pk(Experiment, name, per_row)
        won = Experiment.objects.filter(pk__in=[e.pk for e in experiments], state=source).update(**values)
        if won != len(experiments):
            raise ConcurrentTransition(f"{len(experiments) - won} of {len(experiments)} left {source} first")
        for e in experiments:
            e.updated_at = now
            # What a later save() of this instance expects to find in the row (its state guard).
            e._update_initial_state()


def script_audit_text(experiment: Experiment) -> str:
    """Return what a script experiment runs, for its audit rows: argv, folder and extra variables."""
    config = experiment.config or {}
    env_names = sorted((config.get("env") or {}).keys()) if isinstance(config.get("env"), dict) else []
    text = f"script argv={json.dumps(config.get('argv', []))} in {config.get('workdir', '')!r}"
    return text + (f" env={','.join(env_names)}" if env_names else "")


def state_change_publish(done: Transitioned) -> None:
    """Tell every open page about the new state (the live view listens)."""
    _state_changes_publish([done], wait=True)


def state_change_publish_many(dones: list[Transitioned]) -> None:
    """Tell every open page about many new states (a scheduler pass's starts), handed over without waiting.

    The publisher sends them in order behind everything handed over before, as it does the
    metric frames; the pass goes on to send its train tasks meanwhile instead of waiting for
    two channel-layer sends per run. Pages are best effort: one that missed an event catches up.
    """
    _state_changes_publish(dones, wait=False)


def _state_changes_publish(dones: list[Transitioned], *, wait: bool) -> None:
    """One query for the pipelines of them all, one hand-over to the channel layer."""
    ids = [done.experiment.pk for done in dones]
    # The pages of its pipeline neighbours show its state too (one indexed query when none has any).
    # Only neighbours in its project: a page never hears of another project's experiment.
    neighbours: dict[int, set[int]] = defaultdict(set)
    for upstream, downstream in Dependency.objects.filter(
        Q(upstream_id__in=ids) | Q(downstream_id__in=ids),
        upstream__project_id=F("downstream__project_id"),
    ).values_list("upstream_id", "downstream_id"):
        neighbours[upstream].add(downstream)
        neighbours[downstream].add(upstream)
    messages: events.Messages = []
    for done in dones:
        pk, target = done.experiment.pk, str(done.experiment.state)
        messages += events.state_change_messages(
            experiment_id=pk, event=done.event, source=done.source, target=target, actor=done.actor.label
        )
        messages += events.pipeline_change_messages(
            experiment_ids=sorted(neighbours[pk] - {pk}), about=pk, target=target
        )
    events.send_messages(messages, wait=wait)


def experiment_retrain(
    *,
    experiment_id: int,
    actor: Actor,
    reason: str = "",
    config_overrides: dict[str, Any] | None = None,
    priority_class: str | None = None,
    dataset_version: Any = None,
) -> Experiment:
    """Create a child experiment (lineage to this one) with the same recipe, and queue it.

    A dataset version (curated examples) is recorded on the child and named by id in its
    config (extra_data).
    """
    with transaction.atomic():
        parent = Experiment.objects.select_for_update().get(pk=experiment_id)
        _fire(parent, "retrain", actor, reason)
        retrains = parent.children.count()
        child = experiment_create(
            name=f"{parent.name} · retrain {retrains + 1}",
            recipe=parent.recipe,
            config={
                **parent.config,
                **(config_overrides or {}),
                # By id: the worker resolves it to a file under its data folder.
                **({"extra_data": dataset_version.pk} if dataset_version is not None else {}),
            },
            owner=actor.user or parent.owner,
            description=reason or f"Retrain of #{parent.pk}",
            priority_class=priority_class or parent.priority_class,
            priority=parent.priority,
            gpus=parent.gpus,
            gpu_type=parent.gpu_type,
            memory_gb=parent.memory_gb,
            cpu_cores=parent.cpu_cores,
            host_memory_gb=parent.host_memory_gb,
            max_attempts=parent.max_attempts,
            timeout_seconds=parent.timeout_seconds,
            tags=list(parent.tags),
            parent=parent,
            dataset_version=dataset_version,
            executor=parent.executor,
        )
        _fire(child, "queue", actor, reason or f"Retrain of #{parent.pk}")
    return child
