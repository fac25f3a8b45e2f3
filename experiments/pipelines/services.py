"""Writes of pipelines: add and remove dependency edges; react when an upstream changes state.

An experiment started with unmet dependencies waits (state `waiting`, outside the queue). The
reaction below runs from the effect table after every transition that can meet or break an
edge: it releases a waiting dependent into the queue once every edge is met, or cancels / holds
it when an upstream failed, each decision audited by system:pipeline with the upstream named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F

from experiments.actors import Actor
from experiments.choices import State
from experiments.effects import Transitioned
from experiments.models import After, Dependency, Experiment, OnUpstreamFailure
from experiments.projects import visible_experiments
from experiments.services import TransitionRefused, experiment_transition

logger = logging.getLogger(__name__)

PIPELINE = Actor.system("pipeline")


@dataclass(frozen=True)
class UpstreamInput:
    """A recipe's config parameter that takes a model from an upstream experiment (by its id)."""

    param: str
    recipe: str  # what the upstream must train
    # Parameters naming another starting model: when one is set, the edge wires nothing.
    unless: tuple[str, ...] = ()


# Per downstream recipe: filled in when an edge to an upstream of the right recipe is added.
UPSTREAM_INPUTS: dict[str, UpstreamInput] = {
    "distill": UpstreamInput("teacher_experiment", "digits"),
    "dpo": UpstreamInput("base_experiment", "charlm", unless=("base_run",)),
}


def dependency_add(
    *,
    downstream: Experiment,
    upstream: Experiment,
    after: str = After.SUCCEEDED,
    on_upstream_failure: str = OnUpstreamFailure.CANCEL,
) -> Dependency:
    """Validate and create an edge (cycles refused on `upstream`); wire an upstream model input.

    A distill experiment that depends on a digits experiment takes it as its teacher
    (config teacher_experiment), and a dpo experiment that depends on a charlm experiment takes it
    as its base (config base_experiment), unless its config already names one.
    """
    with transaction.atomic():
        edge = Dependency(
            upstream=upstream, downstream=downstream, after=after, on_upstream_failure=on_upstream_failure
        )
        edge.full_clean()
        edge.save()
        _wire_upstream_input(downstream, upstream)
    if downstream.state == State.WAITING:
        transaction.on_commit(lambda: dependents_react(downstream_ids=[downstream.pk], cause=None))
    return edge


def _wire_upstream_input(downstream: Experiment, upstream: Experiment) -> None:
    wanted = UPSTREAM_INPUTS.get(downstream.recipe)
    if wanted is None or upstream.recipe != wanted.recipe:
        return
    if any(downstream.config.get(param) for param in (wanted.param, *wanted.unless)):
        return
    downstream.config = {**downstream.config, wanted.param: upstream.pk}
    Experiment.objects.filter(pk=downstream.pk).update(config=downstream.config)


def dependency_remove(*, edge_id: int) -> None:
    """Delete an edge; a dependent left with every remaining edge met is released."""
    edge = Dependency.objects.filter(pk=edge_id).first()
    if edge is None:
        return
    downstream_id = edge.downstream_id
    edge.delete()
    transaction.on_commit(lambda: dependents_react(downstream_ids=[downstream_id], cause=None))


def dependencies_set(
    *, downstream: Experiment, wanted: list[tuple[int, str, str]], user: Any = None
) -> list[Dependency]:
    """Add one edge per (upstream id, after, on_upstream_failure); all or none, errors keyed `depends_on`.

    An upstream the user may not see, or of another project than the downstream's, is refused
    exactly as a missing one.
    """
    ids = [upstream_id for upstream_id, _after, _on_failure in wanted]
    candidates = Experiment.objects.filter(project_id=downstream.project_id)
    if user is not None:
        candidates = visible_experiments(user, candidates)
    upstreams = candidates.in_bulk(ids)
    missing = [f"no experiment #{pk}" for pk in ids if pk not in upstreams]
    if missing:
        raise ValidationError({"depends_on": missing})
    edges = []
    with transaction.atomic():
        for upstream_id, after, on_failure in wanted:
            try:
                edges.append(
                    dependency_add(
                        downstream=downstream,
                        upstream=upstreams[upstream_id],
                        after=after,
                        on_upstream_failure=on_failure,
                    )
                )
            except ValidationError as exc:
                messages = [m for ms in exc.message_dict.values() for m in ms]
                raise ValidationError({"depends_on": messages}) from None
    return edges


def dependents_react_on_transition(done: Transitioned) -> None:
    """Effect: after a transition, look again at the waiting experiments it may release or break."""
    ids = list(
        Dependency.objects.filter(
            upstream_id=done.experiment.pk, downstream__state=State.WAITING
        ).values_list("downstream_id", flat=True)
    )
    if done.event == "wait":
        # Started while an upstream had already failed: decide now, not at its next transition.
        ids.append(done.experiment.pk)
    dependents_react(downstream_ids=ids, cause=done)


def dependents_react(*, downstream_ids: list[int], cause: Transitioned | None) -> None:
    """Release, cancel or hold each waiting experiment per its edges (each decision in its own transaction)."""
    for downstream_id in downstream_ids:
        try:
            _react(downstream_id, cause)
        except TransitionRefused as exc:
            # Someone else moved it first (cancelled it, another reaction released it).
            logger.info("pipeline reaction on #%s: %s", downstream_id, exc.message)


def _react(downstream_id: int, cause: Transitioned | None) -> None:
    edges = list(Dependency.objects.filter(downstream_id=downstream_id).select_related("upstream"))
    downstream_state = Experiment.objects.filter(pk=downstream_id).values_list("state", flat=True).first()
    if downstream_state != State.WAITING:
        return
    broken = [edge for edge in edges if edge.is_broken()]
    for edge in broken:
        if edge.on_upstream_failure == OnUpstreamFailure.CANCEL:
            reason = (
                f"upstream {edge.describe()} is {edge.upstream.state}; "
                "this dependency cancels its dependents on failure"
            )
            experiment_transition(experiment_id=downstream_id, event="cancel", actor=PIPELINE, reason=reason)
            return
    caused_by = cause.experiment.pk if cause is not None else None
    held = [e for e in broken if caused_by in (None, e.upstream_id, downstream_id)]
    if held:
        reason = "held: upstream " + ", ".join(f"{e.describe()} is {e.upstream.state}" for e in held)
        reason += "; it waits for the upstream to be retried, or for a person"
        experiment_transition(experiment_id=downstream_id, event="block", actor=PIPELINE, reason=reason)
        return
    if broken or not all(edge.is_met() for edge in edges):
        return
    reason = "dependencies met: " + (
        ", ".join(f"#{e.upstream_id} {e.upstream.name!r} is {e.upstream.state}" for e in edges) or "none left"
    )
    experiment_transition(experiment_id=downstream_id, event="release", actor=PIPELINE, reason=reason)


def pipeline_start(*, experiment_id: int, actor: Actor, reason: str = "") -> list[Experiment]:
    """Start an experiment and every pending experiment it depends on (transitively), upstreams first.

    Each is started by the person's own queue event (their permission, their audit row): an
    upstream with nothing to wait for queues, the others wait and are released in turn. Return
    the experiments started, in order.
    """
    order = _pending_upstreams_first(experiment_id)
    if experiment_id not in order:
        # Already started (or past it): its own Start answers why, like the button would.
        order.append(experiment_id)
    why = reason or f"pipeline of #{experiment_id} started"
    started = []
    with transaction.atomic():
        for pk in order:
            started.append(experiment_transition(experiment_id=pk, event="queue", actor=actor, reason=why))
    return started


def _pending_upstreams_first(experiment_id: int) -> list[int]:
    """Return the pending experiments of the pipeline ending in `experiment_id`, each after its upstreams."""
    order: list[int] = []
    seen: set[int] = set()

    def visit(pk: int) -> None:
        if pk in seen:
            return
        seen.add(pk)
        # An edge across projects (made before they were refused) starts nothing of the other project.
        same_project = Dependency.objects.filter(
            downstream_id=pk, upstream__project_id=F("downstream__project_id")
        )
        for upstream_id in same_project.values_list("upstream_id", flat=True):
            visit(upstream_id)
        if Experiment.objects.filter(pk=pk, state=State.PENDING).exists():
            order.append(pk)

    visit(experiment_id)
    return order


def pipeline_startable(experiment: Experiment) -> bool:
    """Return True when starting the pipeline would start more than this experiment (a pending upstream)."""
    return experiment.state == State.PENDING and len(_pending_upstreams_first(experiment.pk)) > 1
