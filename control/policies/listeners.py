"""How the policies hear of what happens: a committed metric batch, a committed transition.

Both are effects of the table in control/lifecycle.py.
"""

from __future__ import annotations

import logging
import time

from control.dispatch import task_send
from control.policies.engine import ON_METRICS, engine_on_metrics, engine_on_transition
from control.policies.models import Policy, PolicyKind
from experiments.effects import Transitioned
from experiments.events import MetricPointPayload
from experiments.models import EvaluationStatus, ModelVersion, RunEvaluation
from experiments.recipes import RECIPES
from experiments.registry.evaluation import version_evaluation

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


def policies_evaluate_on_metrics(experiment_id: int, run_id: int, points: list[MetricPointPayload]) -> None:
    """Evaluate early-stop (and custom) policies right where the batch was written.

    This runs in the reporter's flusher thread, after commit: the trigger is recorded
    within milliseconds of the batch, and its actions go to the control queue.
    """
    if not _metric_policies_exist():
        return
    engine_on_metrics(experiment_id=experiment_id)


def policies_evaluate_on_transition(done: Transitioned) -> None:
    """Hand the transition to the engine on the control queue.

    Completion is decided by the auto-promote policies; custom policies see every event.
    """
    policies_evaluate_on_transitions([done])


def policies_evaluate_on_transitions(dones: list[Transitioned]) -> None:
    """Hand each transition to the engine: one look for custom policies for the whole batch."""
    if all(done.event != "complete" for done in dones) and not (
        Policy.objects.filter(enabled=True, kind=PolicyKind.CUSTOM).exists()
    ):
        return
    for done in dones:
        experiment_id, event = done.experiment.pk, done.event
        try:
            task_send("control.engine_on_transition", args=[experiment_id, event], queue="control")
        except Exception:
            # The broker is away: decide here rather than lose the decision.
            logger.warning("control queue unavailable; evaluating %s of #%s inline", event, experiment_id)
            engine_on_transition(experiment_id=experiment_id, event=event)


def policies_decide_on_evaluation(evaluation: RunEvaluation) -> None:
    """A run's evaluation job succeeded: the decision that waited for it is taken now, on the control queue.

    A failed job held its experiment already (experiments.runs.evaluation); nothing is left to decide.
    """
    if evaluation.status != EvaluationStatus.SUCCEEDED:
        return
    experiment_id = evaluation.experiment_id
    try:
        task_send("control.engine_on_transition", args=[experiment_id, "complete"], queue="control")
    except Exception:
        logger.warning("control queue unavailable; deciding on #%s inline", experiment_id)
        engine_on_transition(experiment_id=experiment_id, event="complete")


def evaluation_request_on_promote(done: Transitioned) -> None:
    """A promoted version that no decision evaluated yet (a person promoted it) gets its evaluation job.

    It runs on the control queue, where torch is at home; without a broker it waits for the next
    decision that needs it rather than load a checkpoint in the web process.
    """
    version = ModelVersion.objects.filter(experiment=done.experiment).order_by("-version").first()
    spec = RECIPES.get(done.experiment.recipe)
    if version is None or spec is None or not spec.evaluator or version_evaluation(version=version):
        return
    try:
        task_send("control.evaluate_version", args=[version.pk], queue="control")
    except Exception:
        logger.warning(
            "control queue unavailable; v%s of %s not evaluated yet", version.version, version.model_name
        )
