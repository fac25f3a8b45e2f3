"""Champion/challenger: a policy's conditions judged against the facts of one moment.

Every promotion decision (the auto-promote gate when training completes, the promote action
when it runs, a queued canary when its turn comes) compares the candidate with the version in
production *at that moment*: both evaluated on the recipe's held-out set by the same code
(experiments.registry.evaluation), so that a later, worse candidate cannot pass just because it
was judged while nothing, or something older, was in production.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from control.policies.conditions import ConditionKind, ConditionResult, EvaluationContext, evaluate_all
from control.policies.models import ConditionRole, Policy, PolicyCondition, PolicyKind
from experiments.choices import RunStatus, State
from experiments.models import Experiment, ModelStage, ModelVersion, Run, VersionEvaluation
from experiments.recipes import RECIPES
from experiments.registry.evaluation import model_version_evaluate, version_evaluation
from experiments.registry.services import RegistryError, model_version_register
from experiments.runs.selectors import experiment_metric_series


@dataclass(frozen=True)
class Evaluation:
    """One policy checked against one experiment: all passed?, each condition's result, and against whom."""

    policy: Policy
    experiment: Experiment
    passed: bool
    results: list[ConditionResult]
    # The production model compared with, and the candidate's own held-out numbers (decisions only).
    champion: dict[str, Any] | None = None
    candidate: dict[str, Any] | None = None

    def snapshot(self) -> dict[str, Any]:
        """Return the JSON snapshot stored on a trigger."""
        data: dict[str, Any] = {"passed": self.passed, "conditions": [r.as_dict() for r in self.results]}
        if self.champion is not None or self.candidate is not None:
            data["champion"] = self.champion
            data["candidate"] = self.candidate
        return data

    def failed_reasons(self) -> str:
        """Return the failed conditions as one sentence (an audit reason)."""
        return "; ".join(f"{r.description} ({r.detail})" for r in self.results if not r.passed)


@dataclass(frozen=True)
class Champion:
    """The version in production at the moment of a decision and the numbers it is judged by."""

    label: str
    run_metrics: dict[str, float]
    evaluation: VersionEvaluation | None
    version_id: int | None

    def as_dict(self, *, compared_on: str) -> dict[str, Any]:
        """Return the JSON form for a trigger snapshot."""
        return {
            "label": self.label,
            "version_id": self.version_id,
            "compared_on": compared_on,
            "metrics": self.evaluation.metrics if self.evaluation is not None else self.run_metrics,
        }


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}


def _stored_or_run(version: ModelVersion, evaluate: bool) -> VersionEvaluation | None:
    if evaluate:
        evaluation = model_version_evaluate(version_id=version.pk)
        return evaluation if evaluation is not None and evaluation.status == "succeeded" else None
    return version_evaluation(version=version)


def champion_now(
    *, recipe: str, exclude_experiment_id: int | None = None, evaluate: bool = False
) -> Champion | None:
    """Return the model in production for this recipe now, or None.

    The deployed experiment decides: its deploy commits before the registry moves its version
    (an effect after commit), and exactly one experiment per model reads deployed.
    """
    deployed_qs = Experiment.objects.filter(recipe=recipe, state=State.DEPLOYED)
    if exclude_experiment_id is not None:
        deployed_qs = deployed_qs.exclude(pk=exclude_experiment_id)
    deployed = deployed_qs.order_by("-state_changed_at", "-id").first()
    version: ModelVersion | None = None
    if deployed is not None:
        version = ModelVersion.objects.filter(experiment=deployed).order_by("-version").first()
    else:
        production = ModelVersion.objects.filter(model_name=recipe, stage=ModelStage.PRODUCTION)
        if exclude_experiment_id is not None:
            production = production.exclude(experiment_id=exclude_experiment_id)
        version = production.first()
    if version is not None:
        return Champion(
            label=f"v{version.version}",
            run_metrics=_numbers(version.metrics),
            evaluation=_stored_or_run(version, evaluate),
            version_id=version.pk,
        )
    if deployed is None:
        return None
    run = deployed.runs.filter(status=RunStatus.SUCCEEDED).order_by("-attempt").first()
    if run is None:
        return None
    return Champion(
        label=f"#{deployed.pk} {deployed.name}",
        run_metrics=_numbers(run.final_metrics),
        evaluation=None,
        version_id=None,
    )


def production_metrics(*, recipe: str, exclude_experiment_id: int | None = None) -> dict[str, float] | None:
    """Return the final metrics of the model now in production for this recipe, if any."""
    champion = champion_now(recipe=recipe, exclude_experiment_id=exclude_experiment_id)
    return champion.run_metrics if champion is not None else None


def _candidate_evaluation(
    experiment: Experiment, evaluate: bool
) -> tuple[ModelVersion | None, VersionEvaluation | None]:
    """Return the candidate's registered version and held-out evaluation (registering it when deciding)."""
    version: ModelVersion | None
    if evaluate:
        try:
            version = model_version_register(experiment_id=experiment.pk)
        except RegistryError:
            return None, None  # no checkpoint: judged on what its run logged
    else:
        version = ModelVersion.objects.filter(experiment=experiment).order_by("-version").first()
        if version is None:
            return None, None
    return version, _stored_or_run(version, evaluate)


def evaluation_context(
    *,
    experiment: Experiment,
    metric_names: Iterable[str],
    now: datetime | None = None,
    drift_score: float | None = None,
    decide: bool = False,
    compare: bool = True,
) -> tuple[EvaluationContext, dict[str, Any] | None, dict[str, Any] | None]:
    """Gather the facts a policy's conditions read for one experiment.

    Returns the context, the champion and the candidate (as snapshot dicts; None when there is
    none). With decide, the candidate's checkpoint is registered and both it and production are
    evaluated on the held-out set when they have not been yet: this runs the evaluation job, so
    only the control queue's decisions pass it. Without compare, production and the candidate's
    evaluation are not looked up (the metric path's early-stop checks read neither).
    """
    names = sorted({n for n in metric_names if n})
    series: dict[str, list[tuple[int, float | None]]] = {}
    if names:
        stitched = experiment_metric_series(experiment_id=experiment.pk, names=names)
        series = {name: [(p.step, p.value) for p in points] for name, points in stitched.items()}
    last_retrain = (
        Experiment.objects.filter(parent=experiment)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if experiment.dataset_version_id is not None and (
        last_retrain is None or experiment.created_at > last_retrain
    ):
        # The experiment is itself a retrain on curated data: its model was retrained when it was
        # created, so once deployed it does not count as "never retrained" and start the loop again.
        last_retrain = experiment.created_at
    champion = (
        champion_now(recipe=experiment.recipe, exclude_experiment_id=experiment.pk, evaluate=decide)
        if compare
        else None
    )
    version, held_out = _candidate_evaluation(experiment, decide) if compare else (None, None)
    candidate_metrics = _numbers(held_out.metrics) if held_out is not None else None
    production: dict[str, float] | None = None
    label = ""
    champion_dict = None
    if champion is not None:
        same_set = (
            held_out is not None
            and champion.evaluation is not None
            and champion.evaluation.eval_set == held_out.eval_set
        )
        if same_set:
            assert champion.evaluation is not None
            production = _numbers(champion.evaluation.metrics)
            compared_on = f"held-out evaluation: {champion.evaluation.eval_set}"
        else:
            production = champion.run_metrics
            # Without a common held-out set the candidate's own run numbers are compared too.
            candidate_metrics = None
            compared_on = "final metrics of the runs (no common held-out evaluation)"
        label = f"{champion.label}, {compared_on}"
        champion_dict = champion.as_dict(compared_on=compared_on)
        if not same_set:
            champion_dict["metrics"] = champion.run_metrics
    candidate_dict = None
    if version is not None:
        candidate_dict = {
            "version_id": version.pk,
            "label": f"v{version.version}",
            "held_out": held_out.metrics if held_out is not None else None,
            "eval_set": held_out.eval_set if held_out is not None else "",
        }
    ctx = EvaluationContext(
        series=series,
        production_metrics=production,
        production_label=label,
        candidate_metrics=candidate_metrics,
        last_retrain_at=last_retrain,
        now=now or timezone.now(),
        runs_in_flight=Run.objects.filter(status__in=[RunStatus.STARTING, RunStatus.RUNNING]).count(),
        drift_score=drift_score,
        metric_better=recipe_better(experiment.recipe),
    )
    return ctx, champion_dict, candidate_dict


def recipe_better(recipe: str) -> dict[str, str]:
    """Return which way is better for each metric the recipe declares ({} for an unknown recipe)."""
    spec = RECIPES.get(recipe)
    return dict(spec.better) if spec is not None else {}


def policy_evaluate(
    *,
    policy: Policy,
    experiment: Experiment,
    now: datetime | None = None,
    drift_score: float | None = None,
    decide: bool = False,
    conditions: list[PolicyCondition] | None = None,
) -> Evaluation:
    """Evaluate the policy's "when" conditions against the experiment.

    Reads only, unless decide (a promotion decision: see evaluation_context). conditions, when
    given, stand in for the stored rows (the preview of an edit not saved yet).
    """
    rows = [
        c
        for c in (policy.conditions.all() if conditions is None else conditions)
        if c.role == ConditionRole.WHEN
    ]
    specs = [row.spec() for row in rows]
    ctx, champion, candidate = evaluation_context(
        experiment=experiment,
        metric_names=[s.metric for s in specs],
        now=now,
        drift_score=drift_score,
        decide=decide,
        # Promotion policies and regression conditions read production; others need not look.
        compare=decide
        or policy.kind == PolicyKind.AUTO_PROMOTE
        or any(s.kind == ConditionKind.REGRESSION for s in specs),
    )
    passed, results = evaluate_all(specs, ctx)
    return Evaluation(
        policy=policy,
        experiment=experiment,
        passed=passed,
        results=results,
        champion=champion,
        candidate=candidate,
    )


def promotion_rejudge(*, policy: Policy, experiment: Experiment) -> Evaluation:
    """Judge a candidate again, now, against today's production (before it is promoted or starts its canary).

    The policy's row is locked for the rest of the caller's transaction, so two of its candidates
    cannot both be judged against the same production and both go live.
    """
    Policy.objects.select_for_update().filter(pk=policy.pk).first()
    return policy_evaluate(policy=policy, experiment=experiment, decide=True)
