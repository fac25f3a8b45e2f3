"""What follows a lifecycle event, in the order of one table.

The table is composed where every effect is known — the control layer's
`control/lifecycle.py`, installed when Django starts — so that the order of effects (register
the version before the canary starts, the canary before the policies see the event, the
page told last) is written down once instead of following import order. This module keeps
the installed table and runs it; it imports nothing of control.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from django.db import transaction

from experiments.actors import Actor
from experiments.events import MetricPointPayload
from experiments.models import Experiment, Run, RunEvaluation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transitioned:
    """One transition that committed: the experiment as saved, the event, where it came from, who fired it."""

    experiment: Experiment
    event: str
    source: str
    actor: Actor


TransitionEffect = Callable[[Transitioned], None]
# The form of a transition effect that handles many transitions at once (one query, one send).
TransitionBatchEffect = Callable[[list[Transitioned]], None]
RunEndedEffect = Callable[[Run], None]
MetricsEffect = Callable[[int, int, list[MetricPointPayload]], None]
EvaluatedEffect = Callable[[RunEvaluation], None]


@dataclass(frozen=True)
class EffectTable:
    """Effects per lifecycle event, each list run in order.

    transitions: after the transition commits, one on_commit callback per effect.
    run_ended: inside the transaction that gives a run its final status.
    metrics_flushed: after a metric batch commits, in the reporter's flusher thread.
    evaluated: after a run's evaluation job ends (succeeded or failed) and its result commits.
    batched: for a transition effect, its form over many transitions (a scheduler pass starting
    many runs); an effect without one runs once per transition.
    """

    transitions: Mapping[str, tuple[TransitionEffect, ...]] = field(default_factory=dict)
    batched: Mapping[TransitionEffect, TransitionBatchEffect] = field(default_factory=dict)
    run_ended: tuple[RunEndedEffect, ...] = ()
    metrics_flushed: tuple[MetricsEffect, ...] = ()
    evaluated: tuple[EvaluatedEffect, ...] = ()


_installed = EffectTable()


def effects_install(table: EffectTable) -> EffectTable:
    """Make `table` the one in force; return the one it replaces (tests put it back)."""
    global _installed
    previous, _installed = _installed, table
    return previous


def effects_installed() -> EffectTable:
    """Return the table in force."""
    return _installed


def transition_effects_schedule(done: Transitioned) -> None:
    """Queue the event's effects to run, in order, once the caller's transaction commits."""
    for effect in _installed.transitions.get(done.event, ()):
        transaction.on_commit(partial(_run_safely, effect, done))


def transition_effects_schedule_many(dones: list[Transitioned]) -> None:
    """Queue the effects of many transitions to run once the caller's transaction commits.

    Each effect of the table runs once for the whole batch of an event (its batched form, or
    once per transition), in the table's order: every transition still sees its effects in
    that order, and a batch of 64 starts costs one callback per effect, not 64.
    """
    by_event: dict[str, list[Transitioned]] = {}
    for done in dones:
        by_event.setdefault(done.event, []).append(done)
    for event, group in by_event.items():
        for effect in _installed.transitions.get(event, ()):
            transaction.on_commit(partial(_run_batch_safely, effect, group))


def _run_batch_safely(effect: TransitionEffect, group: list[Transitioned]) -> None:
    many = _installed.batched.get(effect)
    if many is None:
        for done in group:
            _run_safely(effect, done)
        return
    try:
        many(group)
    except Exception:
        logger.exception(
            "effect %s of %s on %d experiments failed", _name(effect), group[0].event, len(group)
        )


def _run_safely(effect: TransitionEffect, done: Transitioned) -> None:
    # The transition is committed: an effect that fails is logged, and the ones after it still run.
    try:
        effect(done)
    except Exception:
        logger.exception("effect %s of %s on #%s failed", _name(effect), done.event, done.experiment.pk)


def run_ended_effects_run(run: Run) -> None:
    """Run the effects of a run reaching its final status (inside the caller's transaction)."""
    for effect in _installed.run_ended:
        effect(run)


def metrics_flushed_effects_run(experiment_id: int, run_id: int, points: list[MetricPointPayload]) -> None:
    """Run the effects of a committed metric batch; one that fails does not stop metrics from flowing."""
    for effect in _installed.metrics_flushed:
        try:
            effect(experiment_id, run_id, points)
        except Exception:
            logger.exception("metrics effect %s failed", _name(effect))


def evaluated_effects_schedule(evaluation: RunEvaluation) -> None:
    """Queue the effects of an ended evaluation job to run, in order, once the caller's transaction commits."""
    for effect in _installed.evaluated:
        transaction.on_commit(partial(_run_evaluated_safely, effect, evaluation))


def _run_evaluated_safely(effect: EvaluatedEffect, evaluation: RunEvaluation) -> None:
    try:
        effect(evaluation)
    except Exception:
        logger.exception("effect %s of evaluation %s failed", _name(effect), evaluation.pk)


def _name(effect: Callable[..., None]) -> str:
    return f"{getattr(effect, '__module__', '?')}.{getattr(effect, '__qualname__', repr(effect))}"


def effect_names(effects: tuple[Callable[..., None], ...]) -> list[str]:
    """Return the effects' qualified names, in order (what the table's test pins)."""
    return [_name(e) for e in effects]
