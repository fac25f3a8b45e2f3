"""Reads of a model's deployment page: traffic split, canary rollout, traffic and drift series.

Everything the page polls (`deployment_live`) is read in a handful of bounded queries: the
model's versions, its newest rollout, one count, the served rows of the chart window (at most
MAX_WINDOW_ROWS, newest first) and the newest DRIFT_POINTS drift checks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, TypedDict

import numpy as np
from django.db.models import Count, Exists, OuterRef, Prefetch
from django.utils import timezone

import experiments.registry.serving as serving
from control.canary.ab import ab_pair_alpha
from control.canary.models import (
    LIVE_ROLLOUT_STATUSES,
    OPEN_AB_STATUSES,
    ABTest,
    ABTestStatus,
    CanaryRollout,
    RolloutStatus,
)
from control.canary.sequential import paired_comparison
from control.policies.models import Policy
from experiments.choices import RunStatus, State
from experiments.models import DriftCheck, Experiment, ModelStage, ModelVersion, Run, ServedRequest
from experiments.recipes import RECIPES

# The charts show the last WINDOW_SECONDS in buckets of BUCKET_SECONDS.
WINDOW_SECONDS = 15 * 60
BUCKET_SECONDS = 10
# Served rows read per refresh: a flood of traffic must not make the page poll unbounded.
MAX_WINDOW_ROWS = 20_000
DRIFT_POINTS = 200
PAST_ROLLOUTS = 20
CANDIDATES = 20
# Experiments in these states may be promoted: promoting starts the canary.
PROMOTABLE_STATES = (State.EVALUATING, State.COMPLETED)


class SplitPart(TypedDict):
    """One side of the traffic split."""

    version: int
    pct: float


class TrafficSplit(TypedDict):
    """Who answers requests now, as serving.route decides it."""

    production: SplitPart | None
    canary: SplitPart | None


class StageRow(TypedDict):
    """One stage of a rollout's plan, with how it went."""

    index: int
    name: str
    traffic_pct: float
    duration_seconds: int
    current: bool
    result: str
    result_label: str


class RolloutState(TypedDict):
    """A rollout as the page shows it: the live one, or else the most recent one."""

    id: int
    live: bool
    status: str
    status_label: str
    candidate: int
    baseline: int | None
    experiment_id: int
    experiment_name: str
    experiment_state: str
    experiment_url: str
    stage: str
    stage_index: int
    stage_number: int
    stage_count: int
    traffic_pct: float
    stage_requests: int
    min_requests: int
    # Running, and short of the requests its stage is judged on: the page says how to send some.
    waiting_for_traffic: bool
    # Running with its requests and its time, still unjudged: the conditions not yet settled.
    waiting_for_evidence: str
    elapsed_seconds: int
    duration_seconds: int
    stages: list[StageRow]
    outcome: str
    started_at: str
    finished_at: str | None


class VersionSeries(TypedDict):
    """One version's served traffic per bucket (None where a bucket has nothing to measure)."""

    version: int
    stage: str
    label: str
    requests: list[int]
    error_rate: list[float | None]
    p99_ms: list[float | None]


class TrafficSeries(TypedDict):
    """Per-version traffic of the chart window."""

    t: list[str]
    bucket_seconds: int
    window_seconds: int
    truncated: bool
    versions: list[VersionSeries]


class DriftSeries(TypedDict):
    """One version's drift checks, oldest first."""

    version: int
    label: str
    t: list[str]
    score: list[float | None]


class DeploymentLive(TypedDict):
    """The payload of deployments:live, redrawn by the page every poll."""

    type: str
    model: str
    now: str
    timezone: str
    production: int | None
    split: TrafficSplit
    rollout: RolloutState | None
    traffic: TrafficSeries
    drift: list[DriftSeries]


class ABArm(TypedDict):
    """One arm of an A/B test: its share of requests and what it served since the test began."""

    version: int
    version_id: int
    stage: str
    share_pct: float
    requests: int
    judged: int


class ABPair(TypedDict):
    """One pairwise comparison: the effect (a minus b on the metric) and its confidence interval."""

    a: str
    b: str
    decision: str
    effect: float
    low: float
    high: float
    pairs: int


class ABTestState(TypedDict):
    """An A/B test as the deployment page and the admin show it."""

    id: int
    running: bool
    # Running or awaiting approval: it still holds traffic and can be cancelled.
    open: bool
    status: str
    status_label: str
    model_name: str
    metric: str
    policy: str
    min_requests: int
    alpha: float | None
    margin: float | None
    arms: list[ABArm]
    production: SplitPart | None
    pairs: list[ABPair]
    dropped: list[dict[str, Any]]
    winner: int | None
    outcome: str
    started_by: str
    started_at: str
    finished_at: str | None


def _stamp(moment: datetime) -> str:
    """Return a wall-clock time Plotly reads as a date (it ignores offsets: local time, no zone)."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")


def _label(version: ModelVersion) -> str:
    return f"v{version.version} ({version.get_stage_display().lower()})"


def model_versions(*, model_name: str) -> list[ModelVersion]:
    """Return the model's versions, newest first, with their experiment and parent."""
    return list(
        ModelVersion.objects.filter(model_name=model_name)
        .select_related("experiment", "parent")
        .order_by("-version")
    )


def model_exists(*, model_name: str, versions: list[ModelVersion]) -> bool:
    """Return True for a model with versions, or a recipe whose first version may be promoted here."""
    return bool(versions) or model_name in RECIPES


def traffic_split(versions: list[ModelVersion]) -> TrafficSplit:
    """Return the shares serving.route gives production and the canary (a canary alone takes all)."""
    servable = [v for v in versions if not v.serve_error]
    production = next((v for v in servable if v.stage == ModelStage.PRODUCTION), None)
    # route() takes the most recently promoted canary that has a share.
    canaries = sorted(
        (v for v in servable if v.stage == ModelStage.CANARY and v.traffic_pct > 0),
        key=lambda v: (v.promoted_at or v.created_at, v.pk),
        reverse=True,
    )
    canary = canaries[0] if canaries else None
    canary_pct = 0.0
    if canary is not None:
        canary_pct = 100.0 if production is None else min(max(canary.traffic_pct, 0.0), 100.0)
    # Production answers what every canary leaves: during an A/B test the arms take all or most.
    taken = min(sum(min(max(v.traffic_pct, 0.0), 100.0) for v in canaries), 100.0)
    return {
        "production": {"version": production.version, "pct": round(100.0 - taken, 2)} if production else None,
        "canary": {"version": canary.version, "pct": round(canary_pct, 2)} if canary else None,
    }


def live_rollout(*, model_name: str) -> CanaryRollout | None:
    """Return the model's rollout that still decides traffic (running or paused), if any."""
    return (
        CanaryRollout.objects.select_related("candidate", "baseline", "experiment")
        .filter(model_name=model_name, status__in=LIVE_ROLLOUT_STATUSES)
        .first()
    )


def shown_rollout(*, model_name: str) -> CanaryRollout | None:
    """Return the live rollout, or else the most recent one (so its outcome stays in view)."""
    return live_rollout(model_name=model_name) or (
        CanaryRollout.objects.select_related("candidate", "baseline", "experiment")
        .filter(model_name=model_name)
        .first()
    )


def rollout_state(rollout: CanaryRollout, *, now: datetime) -> RolloutState:
    """Return the rollout's stage, its progress (requests served and time spent) and its plan."""
    live = rollout.is_live
    index = min(rollout.stage_index, max(len(rollout.stages) - 1, 0))
    stage: dict[str, Any] = rollout.stages[index] if rollout.stages else {}
    results = {h.get("stage"): str(h.get("result", "")) for h in rollout.history or []}
    stages: list[StageRow] = []
    for i, s in enumerate(rollout.stages or []):
        result = results.get(s.get("name"), "")
        if i == index and live:
            result = "current"
        elif i == index and not result and rollout.status != RolloutStatus.DEPLOYED:
            # Ended by hand (or replaced) during this stage: say so on the stage itself.
            result = rollout.status
        stages.append(
            {
                "index": i,
                "name": str(s.get("name", "")),
                "traffic_pct": float(s.get("traffic_pct", 0)),
                "duration_seconds": int(s.get("duration_seconds", 0)),
                "current": live and i == index,
                "result": result,
                "result_label": result.replace("_", " "),
            }
        )
    stage_requests = (
        ServedRequest.objects.filter(
            version_id=rollout.candidate_id, created_at__gte=rollout.stage_started_at
        ).count()
        if live
        else 0
    )
    end = now if live else (rollout.finished_at or now)
    experiment = rollout.experiment
    waiting_for_traffic = rollout.status == RolloutStatus.RUNNING and stage_requests < rollout.min_requests
    duration = int(stage.get("duration_seconds", 0))
    judging = (
        rollout.status == RolloutStatus.RUNNING
        and not waiting_for_traffic
        and now - rollout.stage_started_at >= timedelta(seconds=duration)
    )
    return {
        "id": rollout.pk,
        "live": live,
        "status": rollout.status,
        "status_label": rollout.get_status_display(),
        "candidate": rollout.candidate.version,
        "baseline": rollout.baseline.version if rollout.baseline else None,
        "experiment_id": experiment.pk,
        "experiment_name": experiment.name,
        "experiment_state": experiment.get_state_display(),
        "experiment_url": experiment.get_absolute_url(),
        "stage": str(stage.get("name", "")),
        "stage_index": index,
        "stage_number": index + 1,
        "stage_count": len(stages),
        "traffic_pct": float(stage.get("traffic_pct", 0)),
        "stage_requests": stage_requests,
        "min_requests": rollout.min_requests,
        "waiting_for_traffic": waiting_for_traffic,
        "waiting_for_evidence": _undecided(rollout, now) if judging else "",
        # A sweep judged "now" a little ahead starts the next stage in the future: show 0, not less.
        "elapsed_seconds": max(0, int((end - rollout.stage_started_at).total_seconds())),
        "duration_seconds": int(stage.get("duration_seconds", 0)),
        "stages": stages,
        "outcome": rollout.outcome,
        "started_at": _stamp(rollout.started_at),
        "finished_at": _stamp(rollout.finished_at) if rollout.finished_at else None,
    }


def _undecided(rollout: CanaryRollout, now: datetime) -> str:
    """Return the rollback conditions the current stage still waits on, in words."""
    # Imported here: the rollout service imports the policy engine, which the page's reads need not load.
    from control.canary.rollouts import rollout_undecided

    return "; ".join(rollout_undecided(rollout=rollout, now=now))


def _bucket_end(now: datetime, bucket_seconds: int) -> datetime:
    """Return the end of now's bucket, so buckets stay put from one poll to the next."""
    epoch = now.timestamp()
    return datetime.fromtimestamp(math.ceil(epoch / bucket_seconds) * bucket_seconds, tz=now.tzinfo)


def traffic_series(
    versions: list[ModelVersion],
    *,
    now: datetime,
    window_seconds: int = WINDOW_SECONDS,
    bucket_seconds: int = BUCKET_SECONDS,
) -> TrafficSeries:
    """Return requests, error rate and latency p99 per version and bucket over the last window.

    Versions appear when they served in the window, or when they serve now (production, canary).
    """
    end = _bucket_end(now, bucket_seconds)
    start = end - timedelta(seconds=window_seconds)
    buckets = window_seconds // bucket_seconds
    by_id = {v.pk: v for v in versions}
    rows = list(
        ServedRequest.objects.filter(version_id__in=list(by_id), created_at__gte=start)
        .order_by("-created_at")
        .values_list("version_id", "created_at", "ok", "latency_ms")[: MAX_WINDOW_ROWS + 1]
    )
    truncated = len(rows) > MAX_WINDOW_ROWS
    counts: dict[int, list[int]] = defaultdict(lambda: [0] * buckets)
    errors: dict[int, list[int]] = defaultdict(lambda: [0] * buckets)
    latencies: dict[int, list[list[float]]] = defaultdict(lambda: [[] for _ in range(buckets)])
    for version_id, created_at, ok, latency_ms in rows[:MAX_WINDOW_ROWS]:
        i = int((created_at - start).total_seconds() // bucket_seconds)
        if not 0 <= i < buckets:
            continue
        counts[version_id][i] += 1
        if ok:
            latencies[version_id][i].append(latency_ms)
        else:
            errors[version_id][i] += 1
    shown = [
        v
        for v in sorted(versions, key=lambda v: v.version)
        if v.pk in counts or v.stage in (ModelStage.PRODUCTION, ModelStage.CANARY)
    ]
    series: list[VersionSeries] = []
    for v in shown:
        n, e, lat = counts[v.pk], errors[v.pk], latencies[v.pk]
        series.append(
            {
                "version": v.version,
                "stage": v.stage,
                "label": _label(v),
                "requests": n,
                "error_rate": [round(e[i] / n[i], 4) if n[i] else None for i in range(buckets)],
                "p99_ms": [
                    round(float(np.percentile(lat[i], 99)), 3) if lat[i] else None for i in range(buckets)
                ],
            }
        )
    return {
        "t": [_stamp(start + timedelta(seconds=i * bucket_seconds)) for i in range(buckets)],
        "bucket_seconds": bucket_seconds,
        "window_seconds": window_seconds,
        "truncated": truncated,
        "versions": series,
    }


def drift_series(versions: list[ModelVersion]) -> list[DriftSeries]:
    """Return the newest DRIFT_POINTS drift checks of the model's versions, per version, oldest first."""
    by_id = {v.pk: v for v in versions}
    checks = list(
        DriftCheck.objects.filter(version_id__in=list(by_id))
        .order_by("-checked_at", "-id")
        .values_list("version_id", "checked_at", "score")[:DRIFT_POINTS]
    )
    per_version: dict[int, DriftSeries] = {}
    for version_id, checked_at, score in reversed(checks):
        v = by_id[version_id]
        entry = per_version.setdefault(v.pk, {"version": v.version, "label": _label(v), "t": [], "score": []})
        entry["t"].append(_stamp(checked_at))
        entry["score"].append(score)
    return sorted(per_version.values(), key=lambda s: s["version"])


def deployment_live(
    *, model_name: str, now: datetime | None = None, versions: list[ModelVersion] | None = None
) -> DeploymentLive:
    """Return what the deployment page redraws: split, rollout, traffic and drift series."""
    now = now or timezone.now()
    if versions is None:
        versions = model_versions(model_name=model_name)
    split = traffic_split(versions)
    rollout = shown_rollout(model_name=model_name)
    production = next((v for v in versions if v.stage == ModelStage.PRODUCTION), None)
    return {
        "type": "deployment.live",
        "model": model_name,
        "now": _stamp(now),
        "timezone": timezone.get_current_timezone_name(),
        "production": production.version if production else None,
        "split": split,
        "rollout": rollout_state(rollout, now=now) if rollout else None,
        "traffic": traffic_series(versions, now=now),
        "drift": drift_series(versions),
    }


def running_ab_test(*, model_name: str) -> ABTest | None:
    """Return the model's open A/B test (running, or its winner awaiting approval), if one is."""
    return (
        ABTest.objects.select_related("policy")
        .filter(model_name=model_name, status__in=OPEN_AB_STATUSES)
        .first()
    )


def _ab_shares(
    arms: list[ModelVersion], production: ModelVersion | None
) -> tuple[dict[int, float], float | None]:
    """Return each arm's share of requests, and production's (None when it is an arm), as serving.route splits them."""
    canaries = [v for v in arms if v.stage == ModelStage.CANARY and v.traffic_pct > 0 and not v.serve_error]
    canary_total = sum(v.traffic_pct for v in canaries)
    rest = max(0.0, 100.0 - canary_total) if production is not None else 0.0
    shares: dict[int, float] = {}
    for v in arms:
        if v in canaries:
            # With no servable production the arms' slices are scaled up to all the traffic.
            shares[v.pk] = v.traffic_pct if production is not None else 100.0 * v.traffic_pct / canary_total
        else:
            shares[v.pk] = rest if production is not None and v.pk == production.pk else 0.0
    production_share = None if production is None or production.pk in shares else rest
    return {pk: round(share, 2) for pk, share in shares.items()}, production_share


def ab_test_state(test: ABTest) -> ABTestState:
    """Return the test's arms (share, requests served in its window) and its pairwise effects.

    A running test's effects are computed now, as the sweep would judge them (read only); a
    finished one shows what its deciding trigger recorded.
    """
    policy: Policy | None = test.policy
    running = test.status == ABTestStatus.RUNNING
    # Awaiting approval, the winner still serves its share: the split is shown, the effects are recorded.
    serving_now = test.is_open
    by_id = {v.pk: v for v in ModelVersion.objects.filter(pk__in=test.arms)}
    arms_in_order = [by_id[pk] for pk in test.arms if pk in by_id]
    production = (
        ModelVersion.objects.filter(model_name=test.model_name, stage=ModelStage.PRODUCTION, serve_error="")
        .only("pk", "version")
        .first()
    )
    shares, production_share = _ab_shares(arms_in_order, production) if serving_now else ({}, None)
    served = dict(
        ServedRequest.objects.filter(version_id__in=list(by_id), id__gt=test.after_request)
        .values("version_id")
        .annotate(n=Count("id"))
        .values_list("version_id", "n")
    )
    outcomes = {
        pk: serving.window_outcomes(v, after_request=test.after_request, metric=test.metric)
        for pk, v in by_id.items()
    }
    arms: list[ABArm] = [
        {
            "version": v.version,
            "version_id": v.pk,
            "stage": v.get_stage_display(),
            "share_pct": shares.get(v.pk, 0.0),
            "requests": served.get(v.pk, 0),
            "judged": len(outcomes[v.pk]),
        }
        for v in arms_in_order
    ]
    alpha = ab_pair_alpha(test=test, policy=policy) if policy is not None else None
    pairs: list[ABPair] = []
    if running and policy is not None and alpha is not None:
        for i, a in enumerate(arms_in_order):
            for b in arms_in_order[i + 1 :]:
                verdict = paired_comparison(
                    a=outcomes[a.pk], b=outcomes[b.pk], alpha=alpha, margin=policy.canary_margin
                )
                pairs.append(
                    {
                        "a": f"v{a.version}",
                        "b": f"v{b.version}",
                        "decision": verdict.decision,
                        "effect": round(verdict.effect, 4),
                        "low": round(verdict.low, 4),
                        "high": round(verdict.high, 4),
                        "pairs": verdict.pairs,
                    }
                )
    elif test.trigger is not None:
        pairs = [
            {
                "a": str(t["a"]),
                "b": str(t["b"]),
                "decision": str(t["decision"]),
                "effect": float(t["effect"]),
                "low": float(t["low"]),
                "high": float(t["high"]),
                "pairs": int(t["pairs"]),
            }
            for t in test.trigger.snapshot.get("tests", [])
        ]
    winner = (
        ModelVersion.objects.filter(pk=test.winner_id).values_list("version", flat=True).first()
        if test.winner_id is not None
        else None
    )
    return {
        "id": test.pk,
        "running": running,
        "open": serving_now,
        "status": test.status,
        "status_label": test.get_status_display(),
        "model_name": test.model_name,
        "metric": test.metric,
        "policy": policy.name if policy is not None else "",
        "min_requests": policy.canary_min_requests if policy is not None else 0,
        "alpha": alpha,
        "margin": policy.canary_margin if policy is not None else None,
        "arms": arms,
        "production": {"version": production.version, "pct": production_share}
        if production is not None and production_share is not None
        else None,
        "pairs": pairs,
        "dropped": list(test.dropped or []),
        "winner": winner,
        "outcome": test.outcome,
        "started_by": test.started_by,
        "started_at": _stamp(test.started_at),
        "finished_at": _stamp(test.finished_at) if test.finished_at else None,
    }


def past_rollouts(*, model_name: str) -> list[CanaryRollout]:
    """Return the model's newest PAST_ROLLOUTS rollouts (live ones included), newest first."""
    return list(
        CanaryRollout.objects.select_related("candidate", "baseline", "experiment", "policy").filter(
            model_name=model_name
        )[:PAST_ROLLOUTS]
    )


def promotion_candidates(*, model_name: str) -> list[dict[str, Any]]:
    """Return experiments of the model's recipe that may be promoted: finished with a checkpoint.

    Each row: the experiment, its last checkpointed run's metrics and its version, if registered.
    """
    checkpointed = Run.objects.filter(status=RunStatus.SUCCEEDED).exclude(checkpoint_path="")
    experiments = (
        Experiment.objects.filter(recipe=model_name, state__in=PROMOTABLE_STATES)
        .filter(Exists(checkpointed.filter(experiment=OuterRef("pk"))))
        .prefetch_related(
            Prefetch("runs", queryset=checkpointed.order_by("-attempt"), to_attr="checkpointed_runs"),
            Prefetch(
                "model_versions",
                queryset=ModelVersion.objects.filter(model_name=model_name).order_by("-version"),
                to_attr="registered",
            ),
        )
        .order_by("-created_at", "-id")[:CANDIDATES]
    )
    return [
        {
            "experiment": e,
            "metrics": dict(e.checkpointed_runs[0].final_metrics or {}) if e.checkpointed_runs else {},
            "version": e.registered[0] if e.registered else None,
        }
        for e in experiments
    ]


def deployment_page(*, model_name: str, now: datetime | None = None) -> dict[str, Any] | None:
    """Return everything the deployment page shows, or None for an unknown model."""
    now = now or timezone.now()
    versions = model_versions(model_name=model_name)
    if not model_exists(model_name=model_name, versions=versions):
        return None
    live = deployment_live(model_name=model_name, now=now, versions=versions)
    production = next((v for v in versions if v.stage == ModelStage.PRODUCTION), None)
    return {
        "model_name": model_name,
        "production": production,
        "versions": [{"v": v, "stats": serving.version_summary(v)} for v in versions],
        "live": live,
        "split": live["split"],
        "rollout": live["rollout"],
        "past_rollouts": past_rollouts(model_name=model_name),
        "candidates": promotion_candidates(model_name=model_name),
        "ab_test": ab_test_state(ab) if (ab := running_ab_test(model_name=model_name)) else None,
        "window_minutes": WINDOW_SECONDS // 60,
        "bucket_seconds": BUCKET_SECONDS,
    }


def promotion_summary(*, experiment: Experiment) -> str:
    """Return what promoting the experiment set going: its canary's first stage, or why none."""
    rollout = (
        CanaryRollout.objects.select_related("candidate")
        .filter(experiment=experiment)
        .order_by("-id")
        .first()
    )
    if rollout is not None and rollout.is_live:
        stage = rollout.stage
        return (
            f"Promoted “{experiment.name}”: v{rollout.candidate.version} is the canary, "
            f"{stage['traffic_pct']:g}% of requests in stage {stage['name']}."
        )
    if rollout is not None:
        return f"Promoted “{experiment.name}”: its canary {rollout.get_status_display().lower()} at once."
    version = ModelVersion.objects.filter(experiment=experiment).order_by("-version").first()
    if version is None:
        return f"Promoted “{experiment.name}”; no model version was registered (see the server log)."
    return (
        f"Promoted “{experiment.name}”: v{version.version} is registered as {version.get_stage_display().lower()} "
        "with no traffic, as no enabled canary policy applies; deploy it from its experiment page."
    )
