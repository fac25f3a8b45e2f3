"""Canary rollouts: a promoted version takes a growing share of traffic, stage by stage, and is
rolled back on its own the moment its served traffic breaks a rollback_on condition.

Lifecycle: promote (button or auto-promote policy) → `rollout_start` registers the version as
the canary, loads and warms it (checkpoint verified, one warm-up prediction: a version that
fails to load is rolled back at once, "checkpoint failed to load: …") and only then gives it
the first stage's traffic share (or queues it behind the model's
canary under way: one at a time, in promotion order) → `canary_sweep` (Celery beat, every
CANARY_SWEEP_SECONDS) judges each live rollout on the requests its candidate served in the
current stage → a broken condition fires a "canary" trigger whose rollback action rolls the
experiment back (the registry hook archives the candidate; production never stopped serving);
a stage that lasted its duration with enough requests and no broken condition moves on; after
the last stage the experiment is deployed and the candidate becomes production.

Rate conditions (error_rate above a threshold, accuracy below one, accuracy regressed against
production) are judged by Wald's SPRT (control/canary/sequential.py) with the policy's stated
error rates: a version is rolled back as soon as it is worse than the threshold with confidence
1 - alpha, and a stage passes only once the test says it is not worse by the margin or more
(wrong at most beta of the time). alpha is split between the judged stages and the rate
conditions, so it bounds the chance of rolling back a good version over the whole rollout; a
bad version is deployed only if every stage passed it, so beta bounds that. Other conditions
(latency, on warm requests only) are plain thresholds judged once min_requests are in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from control.canary.ab import ab_sweep
from control.canary.models import (
    LIVE_ROLLOUT_STATUSES,
    UNFINISHED_ROLLOUT_STATUSES,
    CanaryRollout,
    RolloutStatus,
)
from control.canary.sequential import RateTest, sprt_rate
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
from experiments.registry.serving import ServingError, last_request_id, version_warm, window_stats
from experiments.services import TransitionRefused, experiment_transition

logger = logging.getLogger(__name__)


def canary_policy_for(experiment: Experiment) -> Policy | None:
    """Return the first enabled canary policy whose scope holds the experiment."""
    canaries = Policy.objects.filter(
        Q(project_id=experiment.project_id), enabled=True, kind=PolicyKind.CANARY
    )
    for policy in canaries.prefetch_related("stages"):
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
    # Loaded and warmed before it gets a request: no judged request waits for the load, and a
    # checkpoint that cannot load never meets traffic.
    try:
        rollout.warmup_ms = version_warm(rollout.candidate)
    except ServingError:
        rollout.refresh_from_db()  # load_version recorded serve_error on the candidate
        _rollback_unservable(rollout, now)
        return True
    rollout.save(update_fields=["warmup_ms"])
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


@dataclass(frozen=True)
class Verdict:
    """One rollback_on condition judged on the stage's window.

    `result.passed` means "this rollback condition holds". `test` is the SPRT of a rate
    condition (it holds as soon as the test says "worse", whatever the request count; the stage
    passes only once it says "not_worse"); a plain threshold has none and is judged once the
    stage has min_requests.
    """

    result: ConditionResult
    test: RateTest | None = None
    # A rate condition that cannot be tested yet (production has no labelled answer to compare).
    pending: bool = False

    @property
    def sure(self) -> bool:
        """Return True when the condition holds for sure: a test said "worse" (no request minimum)."""
        return self.result.passed and self.test is not None

    @property
    def settled(self) -> bool:
        """Return True when the condition lets the stage pass: its test said "not_worse"."""
        if self.test is not None:
            return self.test.decision == "not_worse"
        return not self.pending

    def as_dict(self) -> dict[str, Any]:
        """Return the condition's result with its test, for the rollout's history."""
        out = self.result.as_dict()
        if self.test is not None:
            out["test"] = self.test.as_dict()
        return out


def judged_stage_count(stages: list[dict[str, Any]]) -> int:
    """Return how many stages are judged: all but a final full rollout with no duration."""
    last = stages[-1] if stages else None
    final_free = last is not None and float(last["traffic_pct"]) >= 100 and int(last["duration_seconds"]) == 0
    return max(1, len(stages) - (1 if final_free else 0))


def _is_rate(spec: ConditionSpec) -> bool:
    """Return True for the conditions the SPRT judges (see _rate_bounds)."""
    return _rate_bounds(spec, {"accuracy": 0.5}, 0.01) is not None


def _rate_bounds(
    spec: ConditionSpec, baseline: dict[str, Any] | None, margin: float
) -> tuple[str, float, float, str] | None:
    """Return (failure count key, p0, p1, wording) when the condition is a rate the SPRT judges.

    p0 is the worst acceptable failure rate the condition states, p1 = p0 + margin the rate
    that is surely bad. error_rate > t: failures are failed requests, p0 = t. accuracy < t:
    failures are wrong answers, p0 = 1 - t. Accuracy regressed by more than x against
    production: p0 = 1 - production's accuracy in the same window x (1 - x).
    """
    if spec.threshold is None:
        return None
    if spec.kind == ConditionKind.METRIC and spec.metric == "error_rate" and spec.operator in (">", ">="):
        key, p0, wording = "errors", spec.threshold, f"error_rate above {spec.threshold:g}"
    elif spec.kind == ConditionKind.METRIC and spec.metric == "accuracy" and spec.operator in ("<", "<="):
        key, p0, wording = "wrong", 1 - spec.threshold, f"accuracy below {spec.threshold:g}"
    elif spec.kind == ConditionKind.REGRESSION and spec.metric == "accuracy":
        production = (baseline or {}).get("accuracy")
        if production is None:
            return None
        key, p0 = "wrong", 1 - production * (1 - spec.threshold)
        wording = (
            f"accuracy worse than production by more than {spec.threshold * 100:g}% "
            f"(production {production:.3f} in the same window)"
        )
    else:
        return None
    if not 0 < p0 < 1:
        return None
    p1 = p0 + margin if p0 + margin < 1 else (p0 + 1) / 2
    return key, p0, p1, wording


def _sequential(
    spec: ConditionSpec,
    bounds: tuple[str, float, float, str],
    stats: dict[str, Any],
    *,
    alpha: float,
    beta: float,
) -> Verdict:
    key, p0, p1, wording = bounds
    n = int(stats["requests"] if key == "errors" else stats["feedback"] or 0)
    failures = int(stats[key] or 0)
    test = sprt_rate(failures=failures, n=n, p0=p0, p1=p1, alpha=alpha, beta=beta)
    rate = failures / n if n else None
    verdict = {
        "worse": "worse with confidence",
        "not_worse": "not worse by the margin",
        "continue": "undecided",
    }
    detail = (
        f"{failures} of {n} ({rate:.3f}); SPRT {p0:.3f} vs {p1:.3f}: {verdict[test.decision]} "
        f"(llr {test.llr:.2f}, worse at {test.reject_at:.2f}, passed at {test.accept_at:.2f}; "
        f"alpha {alpha:.2g}, beta {beta:.2g})"
        if rate is not None
        else f"nothing measured yet; SPRT {p0:.3f} vs {p1:.3f}"
    )
    result = ConditionResult(description=wording, passed=test.decision == "worse", value=rate, detail=detail)
    return Verdict(result, test)


def _judge(
    rollout: CanaryRollout, policy: Policy | None, now: datetime
) -> tuple[dict[str, Any], list[Verdict]]:
    """Return the candidate's stage window and each rollback_on condition's verdict on it.

    A threshold holds when it is crossed; a regression condition (no worse than production by
    more than x) holds when it is *broken*, judged against production's own requests in the
    same window, so that both models are compared on the same traffic (after drift, both may be
    below any fixed bar). Rate conditions go through the SPRT (see the module docstring).
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
    # Production's accuracy is plugged in as the reference: only once it rests on min_requests
    # labels of its own (a handful of lucky answers would make any candidate look worse).
    reference = baseline if baseline and (baseline["feedback"] or 0) >= rollout.min_requests else None
    bounds = [_rate_bounds(spec, reference, policy.canary_margin) for spec in specs]
    # Bonferroni: every (stage, rate condition) test gets its share of the stated alpha.
    rate_conditions = sum(1 for spec in specs if _is_rate(spec))
    tests = judged_stage_count(rollout.stages) * max(1, rate_conditions)
    verdicts = []
    for spec, bound in zip(specs, bounds, strict=True):
        if bound is not None:
            verdicts.append(
                _sequential(spec, bound, stats, alpha=policy.canary_alpha / tests, beta=policy.canary_beta)
            )
        elif spec.kind == ConditionKind.REGRESSION and spec.metric == "accuracy" and rollout.baseline is None:
            # A first canary has no production to regress against (as auto-promote judges it): the
            # condition cannot hold, and waiting on it would hold the stage for ever.
            verdicts.append(
                Verdict(ConditionResult(spec.describe(), False, None, "no production to compare with"))
            )
        elif spec.kind == ConditionKind.REGRESSION and spec.metric == "accuracy":
            # Production has no labelled answer in the window yet: nothing to compare with.
            waiting = ConditionResult(
                spec.describe(), False, None, "production has no labelled answer in the window yet"
            )
            verdicts.append(Verdict(waiting, pending=True))
        else:
            verdicts.append(Verdict(_rollback_holds(spec, evaluate_condition(spec, ctx))))
    return stats, verdicts


def rollout_undecided(*, rollout: CanaryRollout, now: datetime) -> list[str]:
    """Return, in words, the rollback conditions whose test is not yet sure about the current stage.

    A stage with its requests and its time still waits on these: the page says so instead of a
    bare "under way". Reads only.
    """
    _stats, verdicts = _judge(rollout, rollout.policy, now)
    # The SPRT's own numbers (llr, bounds) stay in the rollout's history; the page says the counts.
    return [
        f"{v.result.description}: {v.result.detail.split('; SPRT')[0]}" for v in verdicts if not v.settled
    ]


def _rollback_holds(spec: ConditionSpec, result: ConditionResult) -> ConditionResult:
    if spec.kind != ConditionKind.REGRESSION:
        return result
    # Unmeasured (no feedback yet) is not a regression; a measured one beyond tolerance is.
    regressed = not result.passed and result.value is not None
    return ConditionResult(
        description=spec.describe_as_rollback() if spec.threshold is not None else result.description,
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
        stats, verdicts = _judge(rollout, policy, now)
        enough = (stats["requests"] or 0) >= rollout.min_requests
        # A rate test that says "worse" is already sure; a plain threshold waits for min_requests.
        broken = [v for v in verdicts if v.sure or (v.result.passed and enough)]
        if broken and policy is not None:
            return _on_broken(rollout, policy, stats, broken, now)
        stage = rollout.stage
        undecided = [v for v in verdicts if not v.settled]
        if (
            not enough
            or undecided
            or now - rollout.stage_started_at < timedelta(seconds=int(stage["duration_seconds"]))
        ):
            return "waiting"
        rollout.history = [
            *rollout.history,
            {
                "stage": stage["name"],
                "traffic_pct": stage["traffic_pct"],
                "started_at": rollout.stage_started_at.isoformat(),
                "ended_at": now.isoformat(),
                "window": stats,
                "conditions": [v.as_dict() for v in verdicts],
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
    verdicts: list[Verdict],
    now: datetime,
) -> str:
    broken = [v.result for v in verdicts]
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
            "conditions": [v.as_dict() for v in verdicts],
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
    reason = f"checkpoint failed to load: {candidate.serve_error} (v{candidate.version})"
    if policy is not None:
        result = ConditionResult("checkpoint loads", True, None, reason)
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
    """Start queued rollouts whose turn came, judge every live one and every running A/B test.

    Return {rollout id: what happened, "ab:<test id>": what happened}.
    """
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
    outcomes.update(ab_sweep(now=now))
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
