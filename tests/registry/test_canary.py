"""Canary rollouts judged on real served predictions: split, stages, automatic rollback, deploy."""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

import experiments.registry.serving as serving
from control.canary.models import CanaryRollout, RolloutStatus
from control.canary.rollouts import canary_sweep, rollout_evaluate
from control.policies.authoring import policy_create
from control.policies.models import ActionExecution, ExecutionStatus, Policy, PolicyMode, TriggerStatus
from control.policies.triggers import action_execute, trigger_approve, trigger_reject
from experiments.actors import Actor
from experiments.choices import State
from experiments.models import Experiment, ModelStage, ModelVersion, TransitionLog
from experiments.recipes.classify import raw_split
from experiments.registry.services import model_version_promote, model_version_register
from experiments.runs.execution import file_sha256
from tests.registry.conftest import MakeExperiment

pytestmark = pytest.mark.django_db
ALICE = Actor.system("alice")
X_VAL, Y_VAL = raw_split(0, 0.2)[2:]


def canary_policy(mode: str = PolicyMode.AUTO, min_requests: int = 20, **kwargs: Any) -> Policy:
    """The demo's canary: 10% then 50% for a minute each, then full rollout."""
    return policy_create(
        name="canary",
        kind="canary",
        mode=mode,
        canary_min_requests=min_requests,
        stages=[("canary_10pct", 10, 60), ("canary_50pct", 50, 60), ("full_rollout", 100, 0)],
        conditions=[
            {
                "kind": "metric",
                "metric": "error_rate",
                "operator": ">",
                "threshold": 0.05,
                "role": "rollback_on",
            },
            {
                "kind": "metric",
                "metric": "latency_p99_ms",
                "operator": ">",
                "threshold": 500,
                "role": "rollback_on",
            },
            {
                "kind": "metric",
                "metric": "accuracy",
                "operator": "<",
                "threshold": 0.85,
                "role": "rollback_on",
            },
        ],
        **kwargs,
    )


def production(make_experiment: MakeExperiment, name: str = "v1") -> ModelVersion:
    version = model_version_register(experiment_id=make_experiment(name).pk)
    return model_version_promote(version_id=version.pk, actor=ALICE)


def promote(experiment: Experiment, capture: Any) -> CanaryRollout:
    with capture(execute=True):
        from experiments.services import experiment_transition

        experiment_transition(experiment_id=experiment.pk, event="promote", actor=ALICE)
    return CanaryRollout.objects.get(experiment=experiment)


def serve(n: int, *, feedback: bool = True) -> Counter[int]:
    """Send n real single-digit requests (with their true label as feedback); count answers per version."""
    answered: Counter[int] = Counter()
    for i in range(n):
        j = i % len(X_VAL)
        try:
            answer = serving.predict(model_name="digits", payload={"features": X_VAL[j].tolist()})
        except serving.ServingError:
            answered[-1] += 1
            continue
        answered[answer["version"]] += 1
        if feedback:
            serving.feedback(
                model_name="digits", payload={"request_id": answer["request_id"], "label": int(Y_VAL[j])}
            )
    return answered


def serve_until_candidate(rollout: CanaryRollout, requests: int) -> None:
    """Serve until the candidate answered (or failed) at least `requests` in its current stage."""
    for _ in range(100):
        stats = serving.window_stats(rollout.candidate, after_request=rollout.stage_after_request)
        if (stats["requests"] or 0) >= requests:
            return
        serve(40)
    raise AssertionError("the candidate never got its share of traffic")


def serve_until_judged(rollout: CanaryRollout, *, stage_over: bool = False) -> str:
    """Serve batches of labelled requests until the canary's judge decides; return what it said.

    Rate conditions are sequential tests: how many requests they need depends on the draws.
    stage_over: judge as if the stage had lasted its duration (else now: too early to pass).
    """
    for _ in range(150):
        serve(40)
        rollout.refresh_from_db()
        now = rollout.stage_started_at + timedelta(seconds=61) if stage_over else None
        outcome = canary_sweep(now=now)[str(rollout.pk)]
        if outcome != "waiting":
            return outcome
    raise AssertionError("the canary's tests never settled")


def run_pending_actions(rollout: CanaryRollout) -> list[ActionExecution]:
    """Carry out the trigger's actions in order, as the control queue's worker would."""
    executions = list(ActionExecution.objects.filter(trigger=rollout.trigger).order_by("id"))
    for execution in executions:
        action_execute(execution_id=execution.pk)
    return [ActionExecution.objects.get(pk=e.pk) for e in executions]


def test_routing_sends_the_canary_its_traffic_share_and_production_the_rest(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    v1 = production(make_experiment)
    canary_policy()
    rollout = promote(make_experiment("v2"), django_capture_on_commit_callbacks)
    candidate = rollout.candidate
    candidate.refresh_from_db()
    assert (candidate.stage, candidate.traffic_pct, rollout.baseline_id) == (ModelStage.CANARY, 10.0, v1.pk)
    assert serving.route("digits", draw=9.99).pk == candidate.pk
    assert serving.route("digits", draw=10.0).pk == v1.pk

    answered = serve(300, feedback=False)
    share = answered[candidate.version] / 300
    assert 0.03 < share < 0.2, answered  # binomial(300, 0.1): 3 sd either side
    assert answered[-1] == 0


def test_without_a_canary_policy_a_promoted_version_gets_no_traffic(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    v1 = production(make_experiment)
    with django_capture_on_commit_callbacks(execute=True):
        from experiments.services import experiment_transition

        experiment_transition(experiment_id=make_experiment("v2").pk, event="promote", actor=ALICE)
    assert not CanaryRollout.objects.exists()
    assert set(serve(50, feedback=False)) == {v1.version}


def test_a_good_version_passes_every_stage_on_served_traffic_and_is_deployed(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    v1 = production(make_experiment)
    canary_policy()
    rollout = promote(make_experiment("v2"), django_capture_on_commit_callbacks)

    serve_until_candidate(rollout, 20)
    # Enough requests, but the stage has not lasted its minute yet (nor are its tests settled).
    assert rollout_evaluate(rollout_id=rollout.pk) == "waiting"
    assert serve_until_judged(rollout, stage_over=True) == "advanced"
    rollout.refresh_from_db()
    assert (rollout.stage["name"], ModelVersion.objects.get(pk=rollout.candidate_id).traffic_pct) == (
        "canary_50pct",
        50.0,
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert serve_until_judged(rollout, stage_over=True) == "deployed"

    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.DEPLOYED
    assert [h["stage"] for h in rollout.history] == ["canary_10pct", "canary_50pct"]
    assert all(h["result"] == "passed" and h["window"]["requests"] >= 20 for h in rollout.history)
    # Each stage passed because both rate tests said "not worse by the margin", with the
    # policy's alpha split between the 2 judged stages and the 2 rate conditions.
    for stage in rollout.history:
        tests = [c["test"] for c in stage["conditions"] if "test" in c]
        assert [t["decision"] for t in tests] == ["not_worse", "not_worse"]
        assert all(t["llr"] <= t["accept_at"] for t in tests)
    candidate = ModelVersion.objects.get(pk=rollout.candidate_id)
    v1.refresh_from_db()
    assert (candidate.stage, candidate.parent_id, v1.stage) == (
        ModelStage.PRODUCTION,
        v1.pk,
        ModelStage.ARCHIVED,
    )
    assert Experiment.objects.get(pk=rollout.experiment_id).state == State.DEPLOYED
    deploy = TransitionLog.objects.get(experiment_id=rollout.experiment_id, event="deploy")
    assert deploy.actor == "policy:canary"
    assert "canary_10pct, canary_50pct" in deploy.reason
    assert set(serve(30, feedback=False)) == {candidate.version}


def test_a_version_that_fails_requests_is_rolled_back_on_its_own_at_the_first_stage(
    make_experiment: MakeExperiment,
    flaky_digits_checkpoint: tuple[Path, dict[str, float]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    v1 = production(make_experiment)
    canary_policy()
    bad = make_experiment("flaky v2", checkpoint=flaky_digits_checkpoint[0])
    rollout = promote(bad, django_capture_on_commit_callbacks)

    # Judged as soon as its test is sure: a failing canary does not wait out the stage.
    assert serve_until_judged(rollout) == "rolled_back"
    rollout.refresh_from_db()
    candidate = ModelVersion.objects.get(pk=rollout.candidate_id)
    assert rollout.status == RolloutStatus.ROLLED_BACK
    assert candidate.traffic_pct == 0.0
    assert "error_rate" in rollout.outcome and "canary_10pct" in rollout.outcome
    trigger = rollout.trigger
    assert trigger is not None and (trigger.kind, trigger.status) == ("canary", TriggerStatus.FIRED)
    assert trigger.snapshot["window"]["error_rate"] > 0.05

    with django_capture_on_commit_callbacks(execute=True):
        executions = run_pending_actions(rollout)
    assert [(e.kind, e.status) for e in executions] == [("rollback", ExecutionStatus.SUCCEEDED)]
    trigger.refresh_from_db()
    assert trigger.status == TriggerStatus.ACTED
    assert Experiment.objects.get(pk=bad.pk).state == State.ROLLED_BACK
    rollback = TransitionLog.objects.get(experiment=bad, event="rollback")
    assert rollback.actor == "policy:canary" and "error_rate" in rollback.reason
    candidate.refresh_from_db()
    v1.refresh_from_db()
    assert (candidate.stage, v1.stage) == (ModelStage.ARCHIVED, ModelStage.PRODUCTION)
    assert set(serve(30, feedback=False)) == {v1.version}


def test_a_stage_does_not_pass_before_its_minimum_of_requests_even_once_its_tests_settled(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    production(make_experiment)
    policy_create(
        name="canary",
        kind="canary",
        canary_min_requests=1000,
        stages=[("canary_50pct", 50, 60), ("full_rollout", 100, 0)],
        conditions=[
            {
                "kind": "metric",
                "metric": "error_rate",
                "operator": ">",
                "threshold": 0.05,
                "role": "rollback_on",
            }
        ],
    )
    rollout = promote(make_experiment("v2"), django_capture_on_commit_callbacks)
    serve(600)  # about 300 for the candidate: its error-rate test settles within ~100
    stats = serving.window_stats(rollout.candidate, after_request=rollout.stage_after_request)
    assert 150 < (stats["requests"] or 0) < 1000 and stats["errors"] == 0
    assert rollout_evaluate(rollout_id=rollout.pk, now=timezone.now() + timedelta(hours=1)) == "waiting"
    rollout.refresh_from_db()
    assert (rollout.status, rollout.stage_index, rollout.history) == (RolloutStatus.RUNNING, 0, [])


def test_a_failing_version_is_rolled_back_before_the_minimum_once_its_test_is_sure(
    make_experiment: MakeExperiment,
    flaky_digits_checkpoint: tuple[Path, dict[str, float]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    production(make_experiment)
    canary_policy(min_requests=1000)
    rollout = promote(
        make_experiment("flaky", checkpoint=flaky_digits_checkpoint[0]), django_capture_on_commit_callbacks
    )
    assert serve_until_judged(rollout) == "rolled_back"
    rollout.refresh_from_db()
    stats = rollout.history[-1]["window"]
    assert stats["requests"] < 1000
    broken = rollout.history[-1]["conditions"][0]
    assert broken["test"]["decision"] == "worse" and broken["test"]["llr"] >= broken["test"]["reject_at"]


def test_approval_mode_stops_the_canary_traffic_and_follows_the_decision(
    make_experiment: MakeExperiment,
    flaky_digits_checkpoint: tuple[Path, dict[str, float]],
    django_capture_on_commit_callbacks: Any,
    admin_user: Any,
) -> None:
    production(make_experiment)
    canary_policy(mode=PolicyMode.APPROVE)
    rollout = promote(
        make_experiment("flaky", checkpoint=flaky_digits_checkpoint[0]), django_capture_on_commit_callbacks
    )
    assert serve_until_judged(rollout) == "paused"
    rollout.refresh_from_db()
    assert rollout.trigger is not None and rollout.trigger.status == TriggerStatus.PENDING_APPROVAL
    assert ModelVersion.objects.get(pk=rollout.candidate_id).traffic_pct == 0.0

    # Rejected: the stage starts again with its traffic.
    trigger_reject(trigger_id=rollout.trigger.pk, user=admin_user)
    assert canary_sweep() == {str(rollout.pk): "resumed"}
    assert ModelVersion.objects.get(pk=rollout.candidate_id).traffic_pct == 10.0

    # Broken again, and approved this time: the rollback action runs.
    assert serve_until_judged(rollout) == "paused"
    rollout.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        trigger_approve(trigger_id=rollout.trigger.pk, user=admin_user)
    run_pending_actions(rollout)
    assert canary_sweep() == {str(rollout.pk): "rolled_back"}
    assert Experiment.objects.get(pk=rollout.experiment_id).state == State.ROLLED_BACK


def test_dry_run_mode_records_the_breach_once_and_keeps_rolling_out(
    make_experiment: MakeExperiment,
    flaky_digits_checkpoint: tuple[Path, dict[str, float]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    production(make_experiment)
    canary_policy(mode=PolicyMode.DRY_RUN)
    rollout = promote(
        make_experiment("flaky", checkpoint=flaky_digits_checkpoint[0]), django_capture_on_commit_callbacks
    )
    assert serve_until_judged(rollout) == "dry_run"
    assert canary_sweep() == {str(rollout.pk): "waiting"}
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING
    triggers = rollout.experiment.triggers.all()
    assert [(t.kind, t.status) for t in triggers] == [("canary", TriggerStatus.DRY_RUN)]
    assert not ActionExecution.objects.exists()


@pytest.mark.parametrize(
    ("event", "status"), [("rollback", RolloutStatus.ROLLED_BACK), ("cancel", RolloutStatus.CANCELLED)]
)
def test_a_person_rolling_back_or_cancelling_mid_canary_ends_it_and_production_serves_alone(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any, event: str, status: str
) -> None:
    from experiments.services import experiment_transition

    v1 = production(make_experiment)
    canary_policy()
    rollout = promote(make_experiment("v2"), django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(
            experiment_id=rollout.experiment_id, event=event, actor=ALICE, reason="not today"
        )
    rollout.refresh_from_db()
    candidate = ModelVersion.objects.get(pk=rollout.candidate_id)
    assert rollout.status == status and "alice" in rollout.outcome
    assert (candidate.stage, candidate.traffic_pct) == (ModelStage.ARCHIVED, 0.0)
    assert set(serve(30, feedback=False)) == {v1.version}


def test_a_canary_whose_checkpoint_fails_to_load_is_rolled_back_before_any_request(
    make_experiment: MakeExperiment,
    digits_checkpoint: tuple[Path, dict[str, float]],
    django_capture_on_commit_callbacks: Any,
    tmp_path: Path,
) -> None:
    v1 = production(make_experiment)
    canary_policy()
    copy = tmp_path / "copy.pt"
    shutil.copy(digits_checkpoint[0], copy)
    experiment = make_experiment("v2", checkpoint=copy, sha256=file_sha256(digits_checkpoint[0]))
    with copy.open("r+b") as fh:  # the file changes on disk after its run recorded it
        fh.seek(200)
        fh.write(b"corrupt!")

    # The warm-up at the start of the rollout finds it: no stage, no traffic, a reason of its own.
    rollout = promote(experiment, django_capture_on_commit_callbacks)
    assert rollout.status == RolloutStatus.ROLLED_BACK
    assert rollout.outcome.startswith("checkpoint failed to load: ") and "sha256" in rollout.outcome
    assert rollout.warmup_ms is None and rollout.history == []
    candidate = ModelVersion.objects.get(pk=rollout.candidate_id)
    assert candidate.traffic_pct == 0.0 and "sha256" in candidate.serve_error
    trigger = rollout.trigger
    assert trigger is not None and trigger.snapshot["conditions"][0]["detail"].startswith("checkpoint failed")
    assert set(serve(5, feedback=False)) == {v1.version}


def test_a_second_promotion_waits_for_the_canary_under_way_and_starts_when_it_ends(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    from experiments.services import experiment_transition

    v1 = production(make_experiment)
    canary_policy()
    first = promote(make_experiment("v2"), django_capture_on_commit_callbacks)
    second = promote(make_experiment("v3"), django_capture_on_commit_callbacks)
    assert (first.status, second.status) == (RolloutStatus.RUNNING, RolloutStatus.QUEUED)
    assert ModelVersion.objects.get(pk=second.candidate_id).traffic_pct == 0.0
    assert canary_sweep() == {str(first.pk): "waiting"}

    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=first.experiment_id, event="rollback", actor=ALICE)
    assert canary_sweep() == {str(second.pk): "waiting"}  # started, then judged: too few requests yet
    second.refresh_from_db()
    assert (second.status, second.baseline_id) == (RolloutStatus.RUNNING, v1.pk)
    assert ModelVersion.objects.get(pk=second.candidate_id).traffic_pct == 10.0


def test_cancelling_a_queued_promotion_drops_it_from_the_queue(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    from experiments.services import experiment_transition

    production(make_experiment)
    canary_policy()
    promote(make_experiment("v2"), django_capture_on_commit_callbacks)
    queued = promote(make_experiment("v3"), django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=queued.experiment_id, event="cancel", actor=ALICE)
    queued.refresh_from_db()
    assert queued.status == RolloutStatus.CANCELLED
    assert ModelVersion.objects.get(pk=queued.candidate_id).stage == ModelStage.ARCHIVED


def _regression_policy() -> Policy:
    return policy_create(
        name="canary",
        kind="canary",
        canary_min_requests=40,
        stages=[("canary_50pct", 50, 60), ("full_rollout", 100, 0)],
        conditions=[{"kind": "regression", "metric": "accuracy", "threshold": 0.05, "role": "rollback_on"}],
    )


def test_a_less_accurate_version_is_rolled_back_by_comparison_with_production_on_the_same_traffic(
    make_experiment: MakeExperiment,
    weak_digits_checkpoint: tuple[Path, dict[str, float]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    assert weak_digits_checkpoint[1]["accuracy"] < 0.8
    production(make_experiment)
    _regression_policy()
    rollout = promote(
        make_experiment("weak", checkpoint=weak_digits_checkpoint[0]), django_capture_on_commit_callbacks
    )
    assert serve_until_judged(rollout) == "rolled_back"
    rollout.refresh_from_db()
    assert "accuracy worse than production by more than 5%" in rollout.outcome


def test_a_more_accurate_version_is_not_rolled_back_even_below_any_fixed_bar(
    make_experiment: MakeExperiment,
    weak_digits_checkpoint: tuple[Path, dict[str, float]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    # Production is the weak model; the candidate beats it on the same requests.
    version = model_version_register(
        experiment_id=make_experiment("weak", checkpoint=weak_digits_checkpoint[0]).pk
    )
    model_version_promote(version_id=version.pk, actor=ALICE)
    _regression_policy()
    rollout = promote(make_experiment("good v2"), django_capture_on_commit_callbacks)
    serve_until_candidate(rollout, 40)
    assert rollout_evaluate(rollout_id=rollout.pk) == "waiting"
    with django_capture_on_commit_callbacks(execute=True):
        assert serve_until_judged(rollout, stage_over=True) == "deployed"


def test_a_first_canary_with_nothing_in_production_is_not_held_by_a_regression_condition(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    # The demo's canary policy compares accuracy with production; a first model has none to
    # compare with, so that condition cannot hold and must not keep the stage waiting for ever.
    _regression_policy()
    rollout = promote(make_experiment("first"), django_capture_on_commit_callbacks)
    assert rollout.baseline is None
    serve_until_candidate(rollout, 40)
    with django_capture_on_commit_callbacks(execute=True):
        assert serve_until_judged(rollout, stage_over=True) == "deployed"
    rollout.refresh_from_db()
    [stage] = rollout.history
    assert stage["conditions"][0]["detail"] == "no production to compare with"


@pytest.mark.parametrize(
    ("condition", "field"),
    [
        ({"kind": "metric", "metric": "loss", "operator": ">", "threshold": 1}, "metric"),
        ({"kind": "not_finite", "metric": "error_rate"}, "kind"),
    ],
)
def test_a_rollback_condition_must_read_served_traffic(condition: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        policy_create(name="bad", kind="canary", conditions=[{**condition, "role": "rollback_on"}])
    assert field in info.value.message_dict
    assert not Policy.objects.exists()


def test_the_wilson_bounds_keep_a_few_unlucky_requests_from_crossing_a_threshold() -> None:
    low, high = serving.wilson_interval(3, 30)  # 10% observed on 30 requests
    assert low == pytest.approx(0.0346, abs=1e-3) and high == pytest.approx(0.2562, abs=1e-3)
    assert low < 0.05 < 3 / 30
    assert serving.wilson_interval(20, 200)[0] > 0.05  # the same 10%, now clear
    assert serving.wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-3))


def test_a_bound_condition_rolls_back_a_clearly_failing_canary(
    make_experiment: MakeExperiment,
    flaky_digits_checkpoint: tuple[Path, dict[str, float]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    production(make_experiment)
    policy_create(
        name="canary",
        kind="canary",
        canary_min_requests=20,
        stages=[("canary_10pct", 10, 60), ("full_rollout", 100, 0)],
        conditions=[
            {
                "kind": "metric",
                "metric": "error_rate_lower_95",
                "operator": ">",
                "threshold": 0.05,
                "role": "rollback_on",
            }
        ],
    )
    rollout = promote(
        make_experiment("flaky", checkpoint=flaky_digits_checkpoint[0]), django_capture_on_commit_callbacks
    )
    serve_until_candidate(rollout, 20)
    stats = serving.window_stats(rollout.candidate, after_request=rollout.stage_after_request)
    assert stats["error_rate_lower_95"] is not None and stats["error_rate"] is not None
    assert 0.05 < stats["error_rate_lower_95"] < stats["error_rate"]
    assert canary_sweep() == {str(rollout.pk): "rolled_back"}
