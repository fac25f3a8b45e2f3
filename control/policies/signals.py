"""Wiring of the control engine: metric batches and transitions feed it; its tasks get registered."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import control.policies.tasks as policy_tasks
import control.scheduling.cost as cost
from control.policies.engine import ON_METRICS, engine_on_metrics, engine_on_transition
from control.policies.models import Policy, PolicyKind
from control.scheduling.scheduler import admission_check, concurrency_limiter
from experiments.actors import Actor
from experiments.events import MetricPointPayload
from experiments.models import EVENT_PERMISSIONS, Experiment
from experiments.runs.reporting import on_metrics_flushed
from experiments.services import on_transition

logger = logging.getLogger(__name__)

# The flusher calls us up to ten times a second per run: remember for a moment whether
# any metric-driven policy exists at all, so that runs without one pay one query per second.
_CACHE_SECONDS = 1.0
_cache: dict[str, tuple[float, bool]] = {}


def _metric_policies_exist() -> bool:
    now = time.monotonic()
    cached = _cache.get("metrics")
    if cached and now - cached[0] < _CACHE_SECONDS:
        return cached[1]
    exists = Policy.objects.filter(enabled=True, kind__in=list(ON_METRICS)).exists()
    _cache["metrics"] = (now, exists)
    return exists


@on_metrics_flushed
def _evaluate_on_metrics(experiment_id: int, run_id: int, points: list[MetricPointPayload]) -> None:
    """Evaluate early-stop (and custom) policies right where the batch was written.

    This runs in the reporter's flusher thread, after commit: the trigger is recorded
    within milliseconds of the batch, and its actions go to the control queue.
    """
    if not _metric_policies_exist():
        return
    engine_on_metrics(experiment_id=experiment_id)


def _make_transition_hook(event: str) -> None:
    """Register a hook that hands the transition to the engine on the control queue.

    Completion is decided by the auto-promote policies; custom policies see every event.
    """

    @on_transition(event)
    def _hook(experiment: Experiment, actor: Actor) -> None:
        if event != "complete" and not Policy.objects.filter(enabled=True, kind=PolicyKind.CUSTOM).exists():
            return
        try:
            policy_tasks.engine_on_transition_task.apply_async(args=[experiment.pk, event], queue="control")
        except Exception:
            # The broker is away: decide here rather than lose the decision.
            logger.warning("control queue unavailable; evaluating %s of #%s inline", event, experiment.pk)
            engine_on_transition(experiment_id=experiment.pk, event=event)


for _event in EVENT_PERMISSIONS:
    _make_transition_hook(_event)


@concurrency_limiter
def _cost_policy_concurrency() -> int | None:
    """A cost policy's max concurrent runs caps the scheduler."""
    return cost.concurrency_cap()


@admission_check
def _within_daily_budget(experiment: Experiment, now: datetime, cache: dict[str, Any]) -> str:
    """Admission stops when today's spend plus this run's estimate would pass a cost policy's budget."""
    return cost.admission_reason(experiment, now=now, cache=cache)
