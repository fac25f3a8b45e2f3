"""The evaluation job of a trained run: its final checkpoint measured on the recipe's held-out set.

After training (complete: running → evaluating) a run whose recipe declares an evaluator gets a
RunEvaluation row; the control layer leases it a slot on a worker and sends the job there (the
checkpoint lies in that worker's data folder). The job stores the metrics on the row, as
"eval/<metric>" points at the run's last step (charts and policy conditions read them), and the
evaluator's files as the run's artifacts; then the effects of the table's `evaluated` entry let
the policies decide. A job that fails holds the experiment for review with the reason.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.effects import evaluated_effects_schedule
from experiments.events import MetricPointPayload, publish_evaluation_change
from experiments.models import EVALUATION_PENDING, EvaluationStatus, Experiment, Run, RunEvaluation
from experiments.recipes import RECIPES
from experiments.recipes.spec import EVAL_PREFIX
from experiments.runs.execution import file_sha256
from experiments.runs.outputs import run_artifact_store, run_stage_record
from experiments.runs.reporting import metrics_write
from experiments.services import TransitionRefused, experiment_transition

logger = logging.getLogger(__name__)


def run_evaluation_request(*, run_id: int) -> RunEvaluation | None:
    """Create the queued evaluation job of a succeeded run, or return None when there is nothing to evaluate.

    Nothing to evaluate: the recipe declares no evaluator (it behaves as before evaluation jobs
    existed), or the run left no checkpoint (an external client's run). A second request finds
    the first job.
    """
    run = Run.objects.select_related("experiment").filter(pk=run_id).first()
    if run is None or run.status != RunStatus.SUCCEEDED or not run.checkpoint_path:
        return None
    spec = RECIPES.get(run.experiment.recipe)
    if spec is None or not spec.evaluator:
        return None
    evaluation, _ = RunEvaluation.objects.get_or_create(
        run=run,
        defaults={"experiment_id": run.experiment_id, "checkpoint_sha256": run.checkpoint_sha256},
    )
    return evaluation


def experiment_evaluation(*, experiment: Experiment) -> RunEvaluation | None:
    """Return the evaluation job of the experiment's newest succeeded run, if it has one (a read)."""
    run = experiment.runs.filter(status=RunStatus.SUCCEEDED).order_by("-attempt").first()
    if run is None:
        return None
    return RunEvaluation.objects.filter(run=run).first()


def waiting_evaluations() -> list[RunEvaluation]:
    """Return the queued jobs of experiments still in evaluating, oldest first."""
    return list(
        RunEvaluation.objects.filter(
            status=EvaluationStatus.QUEUED, experiment__state=State.EVALUATING
        ).order_by("created_at", "id")
    )


def run_evaluation_claim(*, evaluation_id: int, worker: str, device: str) -> RunEvaluation | None:
    """Mark a queued job running on this worker; None when another took it or it ended already."""
    claimed = RunEvaluation.objects.filter(pk=evaluation_id, status=EvaluationStatus.QUEUED).update(
        status=EvaluationStatus.RUNNING, worker=worker, device=device, started_at=timezone.now()
    )
    if claimed != 1:
        return None
    return RunEvaluation.objects.select_related("run", "experiment").get(pk=evaluation_id)


def _finite(metrics: dict[str, Any]) -> dict[str, float | None]:
    # JSON (and PostgreSQL's jsonb) has no NaN: an undefined number is stored as null.
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        number = float(value)
        out[str(key)] = number if math.isfinite(number) else None
    return out


def run_evaluation_execute(*, evaluation_id: int, worker: str, device: str = "cpu") -> str:
    """Claim the job and evaluate the run's checkpoint; return the job's final status ("skipped" if not claimed)."""
    evaluation = run_evaluation_claim(evaluation_id=evaluation_id, worker=worker, device=device)
    if evaluation is None:
        return "skipped"
    run = evaluation.run
    started = time.monotonic()
    try:
        spec = RECIPES.get(evaluation.experiment.recipe)
        if spec is None or not spec.evaluator:
            raise ValueError(f"recipe {evaluation.experiment.recipe!r} has no evaluator here")
        path = Path(run.checkpoint_path)
        if not path.is_file():
            raise ValueError(f"checkpoint {path} is missing on {worker}")
        if file_sha256(path) != evaluation.checkpoint_sha256:
            raise ValueError(f"checkpoint {path} does not match its recorded sha256")
        result = spec.evaluate_checkpoint(str(path))
        metrics = _finite(result.metrics)
        for artifact in result.artifacts:
            run_artifact_store(run=run, name=artifact.name, data=artifact.data, kind=artifact.kind)
    except Exception as exc:  # any failure is the job's result: recorded, audited, never a crash
        logger.warning("evaluation %s of run %s failed: %s", evaluation.pk, run.pk, exc)
        run_evaluation_fail(evaluation_id=evaluation.pk, error=f"{type(exc).__name__}: {exc}")
        return EvaluationStatus.FAILED
    seconds = time.monotonic() - started
    now = timezone.now()
    points: list[MetricPointPayload] = [
        {"name": f"{EVAL_PREFIX}{name}", "step": run.last_step, "value": value, "wall_time": now.timestamp()}
        for name, value in metrics.items()
        if value is not None
    ]
    with transaction.atomic():
        updated = RunEvaluation.objects.filter(pk=evaluation.pk, status=EvaluationStatus.RUNNING).update(
            status=EvaluationStatus.SUCCEEDED,
            eval_set=result.eval_set[:200],
            metrics=metrics,
            note=result.note[:300],
            error="",
            finished_at=now,
        )
        if updated != 1:
            return "taken away"
        run_stage_record(run_id=run.pk, name="evaluate", seconds=seconds)
        metrics_write(experiment_id=run.experiment_id, run_id=run.pk, points=points)
        evaluated_effects_schedule(RunEvaluation.objects.get(pk=evaluation.pk))
    return EvaluationStatus.SUCCEEDED


def run_evaluation_fail(*, evaluation_id: int, error: str) -> bool:
    """End a pending job as failed and hold its experiment for review with the reason (audited)."""
    with transaction.atomic():
        updated = RunEvaluation.objects.filter(pk=evaluation_id, status__in=EVALUATION_PENDING).update(
            status=EvaluationStatus.FAILED, error=error[:2000], finished_at=timezone.now()
        )
        if updated != 1:
            return False
        evaluation = RunEvaluation.objects.select_related("run").get(pk=evaluation_id)
        if Experiment.objects.filter(pk=evaluation.experiment_id, state=State.EVALUATING).exists():
            try:
                experiment_transition(
                    experiment_id=evaluation.experiment_id,
                    event="hold",
                    actor=Actor.system("evaluation"),
                    reason=f"evaluation of attempt {evaluation.run.attempt} failed: {error}"[:500],
                )
            except TransitionRefused as exc:  # cancelled or decided at the same moment
                logger.info("evaluation %s failed but %s", evaluation_id, exc.message)
        evaluated_effects_schedule(evaluation)
    return True


def evaluation_publish(evaluation: RunEvaluation) -> None:
    """Tell the experiment's open pages that the job ended (an effect of the table's `evaluated`)."""
    publish_evaluation_change(
        experiment_id=evaluation.experiment_id, run_id=evaluation.run_id, status=str(evaluation.status)
    )
