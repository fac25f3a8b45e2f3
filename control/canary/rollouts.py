"""Canary rollouts: a promoted version takes a growing share of traffic, stage by stage, and is
rolled back on its own the moment its served traffic breaks a rollback_on condition.

Lifecycle: promote (button or auto-promote policy) → `rollout_start` registers the version as
the canary and gives it the first stage's traffic share (or queues it behind the model's
canary under way: one at a time, in promotion order) → `canary_sweep` (Celery beat, every
CANARY_SWEEP_SECONDS) judges each live rollout on the requests its candidate served in the
current stage → a broken condition fires a "canary" trigger whose rollback action rolls the
experiment back (the registry hook archives the candidate; production never stopped serving);
a stage that lasted its duration with enough requests and no broken condition moves on; after
the last stage the experiment is deployed and the candidate becomes production.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from control.canary.models import (
    LIVE_ROLLOUT_STATUSES,
    UNFINISHED_ROLLOUT_STATUSES,
    CanaryRollout,
    RolloutStatus,
)
from control.policies.conditions import (
    ConditionKind,
    ConditionResult,
    ConditionSpec,
    EvaluationContext,
    evaluate_condition,
)
from control.policies.engine import Evaluation, arm_allows_firing, policies_in_scope, trigger_fire
from control.policies.gate import promotion_rejudge
from control.policies.models import ConditionRole, Policy, PolicyKind, PolicyMode, TriggerEvent, TriggerStatus
from experiments.actors import Actor
from experiments.choices import State
from experiments.effects import Transitioned
from experiments.models import Experiment, ModelStage, ModelVersion
from experiments.registry.services import RegistryError, model_version_register, model_version_set_stage
from experiments.registry.serving import last_request_id, window_stats
from experiments.services import TransitionRefused, experiment_transition

logger = logging.getLogger(__name__)


def canary_policy_for(experiment: Experiment) -> Policy | None:
    """Return the first enabled canary policy whose scope holds the experiment."""
    for policy in Policy.objects.filter(enabled=True, kind=PolicyKind.CANARY).prefetch_related("stages"):
        if policy.applies_to(recipe=experiment.recipe, tags=list(experiment.tags or [])):
            return policy
    return None


def _set_traffic(version_id: int, pct: float) -> None:
    ModelVersion.objects.filter(pk=version_id).update(traffic_pct=pct)


def rollout_start(
    *, experiment: Experiment, actor: Actor, now: datetime | None = None
) -> CanaryRollout | None:
    """Start the canary rollout of a just-promoted experiment; None when no canary policy applies."""
    policy = canary_policy_for(experiment)
    if policy is None:
        return None
    now = now or timezone.now()
    stages = [
        {"name": s.name, "traffic_pct": s.traffic_pct, "duration_seconds": s.duration_seconds}
        for s in policy.stages.all()
    ]
    try:
        version = model_version_register(experiment_id=experiment.pk)
    except RegistryError as exc:
        logger.warning("canary of experiment %s not started: %s", experiment.pk, exc.message)
        return None
    if version.stage in (ModelStage.NONE, ModelStage.STAGING, ModelStage.ARCHIVED):
        model_version_set_stage(version_id=version.pk, stage=ModelStage.CANARY, actor=actor)
    # One canary at a time per model: a later promotion waits for its turn (the sweep starts it;
    # the one-live-rollout constraint settles two promotions racing for the first turn).
    busy = CanaryRollout.objects.filter(
        model_name=version.model_name, status__in=UNFINISHED_ROLLOUT_STATUSES
    ).exists()
    rollout = CanaryRollout.objects.create(
        model_name=version.model_name,
        policy=policy,
        experiment=experiment,
        candidate=version,
        stages=stages,
        min_requests=policy.canary_min_requests,
        stage_started_at=now,
        status=RolloutStatus.QUEUED,
    )
    if not busy:
        _activate(rollout, now)
    return rollout


def _activate(rollout: CanaryRollout, now: datetime) -> bool:
    """Start a queued rollout against today's production; False when another one got there first."""
    try:
        with transaction.atomic():
            claimed = CanaryRollout.objects.filter(pk=rollout.pk, status=RolloutStatus.QUEUED).update(
                status=RolloutStatus.RUNNING,
                baseline=ModelVersion.objects.filter(
                    model_name=rollout.model_name, stage=ModelStage.PRODUCTION
                ).first(),
            )
    except IntegrityError:
        return False  # the one-live-canary constraint: another rollout of this model is running
    if not claimed:
        return False
    rollout.refresh_from_db()
    if not rollout.stages:
        _deploy(rollout, now, "the canary policy has no stages: deployed at once")
    else:
        _enter_stage(rollout, 0, now)
    return True


def _start_queued(now: datetime) -> list[int]:
    """Start the oldest queued rollout of every model that has no canary under way."""
    started = []
    live_models = set(
        CanaryRollout.objects.filter(status__in=LIVE_ROLLOUT_STATUSES).values_list("model_name", flat=True)
    )
    queued = CanaryRollout.objects.filter(status=RolloutStatus.QUEUED).order_by("started_at", "id")
    for rollout in queued:
        if rollout.model_name in live_models:
            continue
        candidate = ModelVersion.objects.get(pk=rollout.candidate_id)
        if candidate.stage != ModelStage.CANARY:
            _finish(rollout, RolloutStatus.CANCELLED, f"v{candidate.version} left the canary stage", now)
            continue
        if not _still_wins(rollout, now):
            continue
        if _activate(rollout, now):
            started.append(rollout.pk)
        live_models.add(rollout.model_name)
    return started


def _still_wins(rollout: CanaryRollout, now: datetime) -> bool:
    """Judge a queued candidate again against production now; drop it (audited) when it lost.

    Production may have changed while it waited (the canary before it deployed): it is compared
    by the auto-promote policy in its scope, as when it was promoted. Without one, a person
    promoted it and it starts as it is.
    """
    experiment = rollout.experiment
    policies = policies_in_scope(experiment=experiment, kinds=(PolicyKind.AUTO_PROMOTE,))
    if not policies:
        return True
    actor = Actor.policy(policies[0].name)
    with transaction.atomic():
        evaluation = promotion_rejudge(policy=policies[0], experiment=experiment)
        if evaluation.passed:
            return True
        reason = f"lost to production when its canary was to start: {evaluation.failed_reasons()}"
        _finish(rollout, RolloutStatus.CANCELLED, f"dropped, not deployed: {reason}", now)
        _archive_candidate(rollout, actor)
        try:
            experiment_transition(experiment_id=experiment.pk, event="withdraw", actor=actor, reason=reason)
        except TransitionRefused as exc:
            logger.info("queued canary %s dropped; experiment not withdrawn: %s", rollout.pk, exc.message)
    return False


def _enter_stage(rollout: CanaryRollout, index: int, now: datetime) -> None:
    rollout.stage_index = index
    rollout.stage_started_at = now
    rollout.stage_after_request = last_request_id()
    rollout.save(update_fields=["stage_index", "stage_started_at", "stage_after_request"])
    stage = rollout.stages[index]
    _set_traffic(rollout.candidate_id, float(stage["traffic_pct"]))
    logger.info(
        "%s v%s canary: stage %s (%s%%)",
        rollout.model_name,
        rollout.candidate.version,
        stage["name"],
        stage["traffic_pct"],
    )
    if float(stage["traffic_pct"]) >= 100 and int(stage["duration_seconds"]) == 0:
        # A full rollout with no duration is the end state itself.
        _deploy(rollout, now, _passed_reason(rollout))


def _passed_reason(rollout: CanaryRollout) -> str:
    judged = [h["stage"] for h in rollout.history if h.get("result") == "passed"]
    return f"canary passed {len(judged)} stage(s): {', '.join(judged) or 'none needed'}"


def _finish(rollout: CanaryRollout, status: str, outcome: str, now: datetime) -> None:
    rollout.status = status
    rollout.outcome = outcome[:2000]
    rollout.finished_at = now
    rollout.save(update_fields=["status", "outcome", "finished_at", "trigger"])
    _set_traffic(rollout.candidate_id, 0.0)


def _archive_candidate(rollout: CanaryRollout, actor: Actor) -> None:
    candidate = ModelVersion.objects.get(pk=rollout.candidate_id)
    if candidate.stage == ModelStage.CANARY:
        model_version_set_stage(version_id=candidate.pk, stage=ModelStage.ARCHIVED, actor=actor)


def _deploy(rollout: CanaryRollout, now: datetime, reason: str) -> None:
    """All stages passed: the experiment is deployed (its hook makes the candidate production)."""
    actor = Actor.policy(rollout.policy.name) if rollout.policy else Actor.system("canary")
    _finish(rollout, RolloutStatus.DEPLOYED, reason, now)
    try:
        experiment_transition(experiment_id=rollout.experiment_id, event="deploy", actor=actor, reason=reason)
    except TransitionRefused as exc:
        CanaryRollout.objects.filter(pk=rollout.pk).update(
            status=RolloutStatus.CANCELLED, outcome=f"could not deploy: {exc.message}"
        )


def _judge(
    rollout: CanaryRollout, policy: Policy | None, now: datetime
) -> tuple[dict[str, Any], list[ConditionResult]]:
    """Return the candidate's stage window and each rollback_on condition's result on it.

    A result's `passed` means "this rollback condition holds". A threshold holds when it is
    crossed; a regression condition (no worse than production by more than x) holds when it
    is *broken*, judged against production's own requests in the same window, so that both
    models are compared on the same traffic (after drift, both may be below any fixed bar).
    """
    after = rollout.stage_after_request
    stats = window_stats(rollout.candidate, after_request=after)
    baseline = window_stats(rollout.baseline, after_request=after) if rollout.baseline is not None else None
    if policy is None:
        return stats, []
    ctx = EvaluationContext(
        series={k: [(0, v)] for k, v in stats.items() if v is not None},
        production_metrics={k: v for k, v in (baseline or {}).items() if v is not None} or None,
        now=now,
    )
    specs = [c.spec() for c in policy.conditions.all() if c.role == ConditionRole.ROLLBACK_ON]
    return stats, [_rollback_holds(spec, evaluate_condition(spec, ctx)) for spec in specs]


def _rollback_holds(spec: ConditionSpec, result: ConditionResult) -> ConditionResult:
    if spec.kind != ConditionKind.REGRESSION:
        return result
    # Unmeasured (no feedback yet) is not a regression; a measured one beyond tolerance is.
    regressed = not result.passed and result.value is not None
    return ConditionResult(
        description=f"{spec.metric} worse than production by more than {spec.threshold * 100:g}%"
        if spec.threshold is not None
        else result.description,
        passed=regressed,
        value=result.value,
        detail=result.detail,
    )


def _fire_rollback(
    rollout: CanaryRollout,
    policy: Policy,
    stats: dict[str, Any],
    broken: list[ConditionResult],
    now: datetime,
) -> TriggerEvent:
    """Record the canary trigger and, by the policy's mode, roll back, ask, or only note it."""
    evaluation = Evaluation(policy=policy, experiment=rollout.experiment, passed=True, results=broken)
    context = {
        "stage": rollout.stage["name"],
        "traffic_pct": rollout.stage["traffic_pct"],
        "window": stats,
        "version": rollout.candidate.version,
        # Carried out before the policy's own actions, now or once a person approves.
        "builtin": [["rollback", {}]],
    }
    return trigger_fire(evaluation=evaluation, kind="canary", now=now, context=context)


def rollout_evaluate(*, rollout_id: int, now: datetime | None = None) -> str:
    """Judge one live rollout on its current stage; return what happened (for logs and tests)."""
    now = now or timezone.now()
    with transaction.atomic():
        rollout = (
            # of=self: PostgreSQL cannot lock the nullable side (baseline, policy) of the joins.
            CanaryRollout.objects.select_for_update(of=("self",))
            .select_related("candidate", "baseline", "experiment", "policy")
            .filter(pk=rollout_id, status__in=LIVE_ROLLOUT_STATUSES)
            .first()
        )
        if rollout is None:
            return "not live"
        if rollout.status == RolloutStatus.PAUSED:
            return _resolve_pause(rollout, now)
        candidate = rollout.candidate
        if candidate.serve_error:
            return _rollback_unservable(rollout, now)
        if candidate.stage != ModelStage.CANARY:
            _finish(rollout, RolloutStatus.CANCELLED, f"v{candidate.version} left the canary stage", now)
            return "cancelled"
        policy = rollout.policy
        stats, results = _judge(rollout, policy, now)
        enough = (stats["requests"] or 0) >= rollout.min_requests
        broken = [r for r in results if r.passed]
        if enough and broken and policy is not None:
            return _on_broken(rollout, policy, stats, broken, now)
        stage = rollout.stage
        if not enough or now - rollout.stage_started_at < timedelta(seconds=int(stage["duration_seconds"])):
            return "waiting"
        rollout.history = [
            *rollout.history,
            {
                "stage": stage["name"],
                "traffic_pct": stage["traffic_pct"],
                "started_at": rollout.stage_started_at.isoformat(),
                "ended_at": now.isoformat(),
                "window": stats,
                "conditions": [r.as_dict() for r in results],
                "result": "passed",
            },
        ]
        rollout.save(update_fields=["history"])
        if rollout.stage_index + 1 >= len(rollout.stages):
            _deploy(rollout, now, _passed_reason(rollout))
            return "deployed"
        _enter_stage(rollout, rollout.stage_index + 1, now)
        return "deployed" if rollout.status == RolloutStatus.DEPLOYED else "advanced"


def _on_broken(
    rollout: CanaryRollout,
    policy: Policy,
    stats: dict[str, Any],
    broken: list[ConditionResult],
    now: datetime,
) -> str:
    if policy.mode == PolicyMode.DRY_RUN:
        # Record it once per breach (the arm re-arms once the conditions clear), keep rolling out.
        if arm_allows_firing(policy, rollout.experiment, True, now):
            _fire_rollback(rollout, policy, stats, broken, now)
            return "dry_run"
        return "waiting"
    trigger = _fire_rollback(rollout, policy, stats, broken, now)
    rollout.trigger = trigger
    reasons = "; ".join(f"{r.description} ({r.detail})" for r in broken)
    rollout.history = [
        *rollout.history,
        {
            "stage": rollout.stage["name"],
            "traffic_pct": rollout.stage["traffic_pct"],
            "started_at": rollout.stage_started_at.isoformat(),
            "ended_at": now.isoformat(),
            "window": stats,
            "conditions": [r.as_dict() for r in broken],
            "result": "failed",
        },
    ]
    rollout.save(update_fields=["history"])
    if policy.mode == PolicyMode.APPROVE:
        # No more traffic to a version that broke a condition while a person decides.
        rollout.status = RolloutStatus.PAUSED
        rollout.outcome = f"rollback awaiting approval: {reasons}"
        rollout.save(update_fields=["status", "outcome", "trigger"])
        _set_traffic(rollout.candidate_id, 0.0)
        return "paused"
    _finish(rollout, RolloutStatus.ROLLED_BACK, f"at stage {rollout.stage['name']}: {reasons}", now)
    return "rolled_back"


def _resolve_pause(rollout: CanaryRollout, now: datetime) -> str:
    """A paused rollout follows the person's decision on its rollback trigger."""
    trigger = rollout.trigger
    if trigger is None:
        _finish(rollout, RolloutStatus.CANCELLED, "its rollback trigger is gone", now)
        return "cancelled"
    trigger.refresh_from_db(fields=["status"])
    if trigger.status in (TriggerStatus.FIRED, TriggerStatus.ACTED, TriggerStatus.FAILED):
        _finish(rollout, RolloutStatus.ROLLED_BACK, f"rollback approved [trigger #{trigger.pk}]", now)
        return "rolled_back"
    if trigger.status in (TriggerStatus.DISMISSED, TriggerStatus.EXPIRED):
        rollout.status = RolloutStatus.RUNNING
        rollout.outcome = f"rollback {trigger.status}: the stage starts again"
        rollout.save(update_fields=["status", "outcome"])
        _enter_stage(rollout, rollout.stage_index, now)
        return "resumed"
    return "paused"


def _rollback_unservable(rollout: CanaryRollout, now: datetime) -> str:
    candidate = rollout.candidate
    policy = rollout.policy
    reason = f"v{candidate.version} cannot be served: {candidate.serve_error}"
    if policy is not None:
        result = ConditionResult("checkpoint servable", True, None, reason)
        rollout.trigger = _fire_rollback(
            rollout, policy, window_stats(candidate, after_request=rollout.stage_after_request), [result], now
        )
    else:
        experiment_transition(
            experiment_id=rollout.experiment_id, event="rollback", actor=Actor.system("canary"), reason=reason
        )
    _finish(rollout, RolloutStatus.ROLLED_BACK, reason, now)
    return "rolled_back"


def canary_sweep(*, now: datetime | None = None) -> dict[str, str]:
    """Start queued rollouts whose turn came, judge every live one; return {rollout id: what happened}."""
    now = now or timezone.now()
    outcomes = {str(pk): "started" for pk in _start_queued(now)}
    for rollout_id in CanaryRollout.objects.filter(status__in=LIVE_ROLLOUT_STATUSES).values_list(
        "pk", flat=True
    ):
        try:
            outcomes[str(rollout_id)] = rollout_evaluate(rollout_id=rollout_id, now=now)
        except Exception:  # one broken rollout must not stop the others being judged
            logger.exception("judging canary rollout %s failed", rollout_id)
            outcomes[str(rollout_id)] = "error"
    return outcomes


# --- effects of lifecycle events on rollouts (listed in control/lifecycle.py, run after commit) ---


def rollout_start_on_promote(done: Transitioned) -> None:
    """A promoted experiment's canary starts (or queues behind the model's rollout under way)."""
    try:
        rollout_start(experiment=done.experiment, actor=done.actor)
    except Exception:
        logger.exception("starting the canary of experiment %s failed", done.experiment.pk)


def _end_live(experiment: Experiment, status: str, outcome: str, actor: Actor) -> None:
    now = timezone.now()
    with transaction.atomic():
        for rollout in CanaryRollout.objects.select_for_update().filter(
            experiment=experiment, status__in=UNFINISHED_ROLLOUT_STATUSES
        ):
            _finish(rollout, status, outcome, now)
            if status == RolloutStatus.CANCELLED:
                _archive_candidate(rollout, actor)


def rollout_end_on_rollback(done: Transitioned) -> None:
    """A rolled-back experiment's rollout ends as rolled back."""
    _end_live(done.experiment, RolloutStatus.ROLLED_BACK, f"rolled back by {done.actor.label}", done.actor)


def rollout_end_on_cancel(done: Transitioned) -> None:
    """A cancelled experiment's rollout ends; its candidate stops serving."""
    _end_live(done.experiment, RolloutStatus.CANCELLED, f"cancelled by {done.actor.label}", done.actor)


def rollout_end_on_deploy(done: Transitioned) -> None:
    """Deployed before the last stage (by a person): the rollout ends as deployed."""
    if done.experiment.state == State.DEPLOYED:
        _end_live(
            done.experiment,
            RolloutStatus.DEPLOYED,
            f"deployed by {done.actor.label} before the last stage",
            done.actor,
        )
