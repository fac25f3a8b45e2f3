"""What an A/B test's decision does to the lifecycle, by the policy's mode, on real served traffic.

auto: the winner becomes production and its experiment reads deployed (adopted by the
registry), the replaced production's experiment is retired, a loser still evaluating is held.
approve: the winner's promotion waits on its trigger; approving carries it out, rejecting ends
the test with no winner and the arms back where they were. dry_run: "would promote vN", nothing
changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User

import experiments.registry.serving as serving
from control.canary.ab import ab_test_start
from control.canary.models import ABTest, ABTestStatus
from control.canary.rollouts import canary_sweep
from control.policies.models import TriggerEvent, TriggerStatus
from control.policies.triggers import trigger_approve, trigger_reject
from experiments.actors import Actor
from experiments.choices import State
from experiments.models import Experiment, ModelVersion, TransitionLog
from experiments.registry.services import registry_rollback
from experiments.services import experiment_transition
from tests.digits_models import SYSTEM, evaluating_digits_experiment, promote_to_production
from tests.policies.ab_helpers import (
    ARCHIVED,
    CANARY,
    NONE,
    PRODUCTION,
    ab_policy,
    deployed,
    deployed_experiments,
    evaluating,
    held,
    serve_labelled,
    stages,
    state,
    sweep_until_decided,
    train_good_and_weak,
    version_of,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_good_and_weak(tmp_path_factory.mktemp("ab-decisions"))


@pytest.fixture(autouse=True)
def _fresh_model_cache() -> Iterator[None]:
    # Row ids are reused after a test's rollback: a cached model must not outlive its row.
    serving.clear_cache()
    yield
    serving.clear_cache()


def _person(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return User.objects.get(pk=user.pk)


def _winner_in(how: str, good: Path, capture: Any) -> tuple[Experiment, Experiment]:
    """Return (the experiment in production now, the good candidate's experiment in state `how`)."""
    # One step at a time, each with its effects, as they happen in service.
    if how == "completed":
        with capture(execute=True):
            current = deployed("v1", good)
        candidate, _ = held("good", good)
    elif how == "retired":
        # The good one served first, and a newer one replaced it.
        with capture(execute=True):
            candidate = deployed("good", good)
        with capture(execute=True):
            current = deployed("newer", good)
    else:
        # The good one was deployed, then rolled back: the one it replaced serves again.
        with capture(execute=True):
            current = deployed("v1", good)
        with capture(execute=True):
            candidate = deployed("good", good)
        with capture(execute=True):
            experiment_transition(
                experiment_id=candidate.pk, event="rollback", actor=SYSTEM, reason="by hand"
            )
    assert state(candidate) == how
    return current, candidate


@pytest.mark.parametrize("how", ["completed", "retired", "rolled_back"])
def test_the_winners_experiment_reads_deployed_and_is_the_only_one(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any, how: str
) -> None:
    current, candidate = _winner_in(how, checkpoints["good"], django_capture_on_commit_callbacks)
    weak, weak_version = evaluating("weak", checkpoints["weak"])
    winner = version_of(candidate)
    test = ab_test_start(
        model_name="digits", version_ids=[winner.pk, weak_version.pk], policy=ab_policy(), actor=SYSTEM
    )

    assert sweep_until_decided(test, django_capture_on_commit_callbacks) == ABTestStatus.DECIDED

    test.refresh_from_db()
    assert test.winner_id == winner.pk
    assert stages(winner, weak_version)[0] == (PRODUCTION, 0.0)
    assert stages(weak_version) == [(ARCHIVED, 0.0)]
    # Exactly one experiment of the model reads deployed: the winner's, moved by the registry.
    assert deployed_experiments() == [candidate.pk]
    adopt = TransitionLog.objects.get(experiment=candidate, event="adopt")
    assert (adopt.source_state, adopt.target_state, adopt.actor) == (how, State.DEPLOYED, "system:registry")
    assert f"v{winner.version} replaced v{version_of(current).version}" in adopt.reason
    # The replaced production's experiment is retired; the loser, still evaluating, is held for review.
    assert state(current) == State.RETIRED
    assert state(weak) == State.COMPLETED
    hold = TransitionLog.objects.get(experiment=weak, event="hold")
    assert hold.actor == "policy:ab" and f"lost A/B test #{test.pk}" in hold.reason
    assert Experiment.objects.get(pk=weak.pk).policy_hold() is not None


def test_a_persons_rollback_after_an_ab_promotion_restores_the_replaced_experiment(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    current, candidate = _winner_in("completed", checkpoints["good"], django_capture_on_commit_callbacks)
    _weak, weak_version = evaluating("weak", checkpoints["weak"])
    test = ab_test_start(
        model_name="digits",
        version_ids=[version_of(candidate).pk, weak_version.pk],
        policy=ab_policy(),
        actor=SYSTEM,
    )
    assert sweep_until_decided(test, django_capture_on_commit_callbacks) == ABTestStatus.DECIDED
    assert deployed_experiments() == [candidate.pk]

    rita = _person("rita", "view_experiment", "rollback_experiment")
    with django_capture_on_commit_callbacks(execute=True):
        restored = registry_rollback(model_name="digits", actor=Actor.for_user(rita), reason="worse answers")

    assert restored.experiment_id == current.pk and restored.stage == PRODUCTION
    assert (state(current), state(candidate)) == (State.DEPLOYED, State.ROLLED_BACK)
    assert deployed_experiments() == [current.pk]
    assert TransitionLog.objects.get(experiment=candidate, event="rollback").actor == "user:rita"
    assert set(serve_labelled(20)) == {version_of(current).version}


def test_a_promoting_arm_that_wins_is_deployed_by_the_registry(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    # Promoted by a person with no canary policy: its version is a canary with no rollout.
    with django_capture_on_commit_callbacks(execute=True):
        current = deployed("v1", checkpoints["good"])
    with django_capture_on_commit_callbacks(execute=True):
        candidate = evaluating_digits_experiment("good", checkpoints["good"])
        experiment_transition(experiment_id=candidate.pk, event="promote", actor=SYSTEM)
    _weak, weak_version = evaluating("weak", checkpoints["weak"])
    test = ab_test_start(
        model_name="digits",
        version_ids=[version_of(candidate).pk, weak_version.pk],
        policy=ab_policy(),
        actor=SYSTEM,
    )
    assert sweep_until_decided(test, django_capture_on_commit_callbacks) == ABTestStatus.DECIDED
    assert deployed_experiments() == [candidate.pk]
    assert TransitionLog.objects.get(experiment=candidate, event="deploy").actor == "system:registry"
    assert state(current) == State.RETIRED


def _approval_test(checkpoints: dict[str, Path], capture: Any) -> tuple[ABTest, dict[str, Any]]:
    with capture(execute=True):
        current = deployed("v1", checkpoints["good"])
    good, good_version = held("good", checkpoints["good"])
    weak, weak_version = evaluating("weak", checkpoints["weak"])
    test = ab_test_start(
        model_name="digits",
        version_ids=[good_version.pk, weak_version.pk],
        policy=ab_policy(mode="approve"),
        actor=SYSTEM,
    )
    assert sweep_until_decided(test, capture) == ABTestStatus.AWAITING_APPROVAL
    test.refresh_from_db()
    # Nothing is promoted yet: the winner keeps its share, the beaten arm serves no more.
    assert test.winner_id == good_version.pk and f"v{good_version.version} won on accuracy" in test.outcome
    assert stages(good_version, weak_version, version_of(current)) == [
        (CANARY, 50.0),
        (CANARY, 0.0),
        (PRODUCTION, 0.0),
    ]
    assert deployed_experiments() == [current.pk]
    trigger = TriggerEvent.objects.get(kind="ab_test")
    assert trigger.pk == test.trigger_id and trigger.status == TriggerStatus.PENDING_APPROVAL
    assert trigger.snapshot["promote"] == {
        "version_id": good_version.pk,
        "version": f"v{good_version.version}",
    }
    # Until a person decides, the sweep waits.
    with capture(execute=True):
        assert canary_sweep()[f"ab:{test.pk}"] == ABTestStatus.AWAITING_APPROVAL
    return test, {
        "current": current,
        "good": good,
        "weak": weak,
        "good_version": good_version,
        "weak_version": weak_version,
        "trigger": trigger,
    }


def test_in_approve_mode_approving_the_trigger_carries_the_promotion_out(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    test, arm = _approval_test(checkpoints, django_capture_on_commit_callbacks)
    ada = _person("ada")
    with django_capture_on_commit_callbacks(execute=True):
        trigger_approve(trigger_id=arm["trigger"].pk, user=ada)
        assert canary_sweep()[f"ab:{test.pk}"] == ABTestStatus.DECIDED

    test.refresh_from_db()
    assert test.status == ABTestStatus.DECIDED and "promotion approved by user:ada" in test.outcome
    assert stages(arm["good_version"], arm["weak_version"]) == [(PRODUCTION, 0.0), (ARCHIVED, 0.0)]
    assert deployed_experiments() == [arm["good"].pk]
    assert (state(arm["current"]), state(arm["weak"])) == (State.RETIRED, State.COMPLETED)
    assert TransitionLog.objects.get(experiment=arm["good"], event="adopt").actor == "system:registry"


def test_in_approve_mode_rejecting_the_trigger_ends_the_test_without_a_winner(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    test, arm = _approval_test(checkpoints, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        trigger_reject(trigger_id=arm["trigger"].pk, user=_person("ada"))
        assert canary_sweep()[f"ab:{test.pk}"] == ABTestStatus.NO_WINNER

    test.refresh_from_db()
    assert test.status == ABTestStatus.NO_WINNER and test.winner_id is None
    assert "its promotion was rejected by user:ada" in test.outcome
    # The arms are back where they were before the test; production serves alone, nothing moved.
    assert stages(arm["good_version"], arm["weak_version"], version_of(arm["current"])) == [
        (NONE, 0.0),
        (NONE, 0.0),
        (PRODUCTION, 0.0),
    ]
    assert deployed_experiments() == [arm["current"].pk]
    assert (state(arm["good"]), state(arm["weak"])) == (State.COMPLETED, State.EVALUATING)
    assert set(serve_labelled(20)) == {version_of(arm["current"]).version}


def test_in_dry_run_mode_the_test_records_what_it_would_promote_and_changes_nothing(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        current = deployed("v1", checkpoints["good"])
    good, good_version = held("good", checkpoints["good"])
    weak, weak_version = evaluating("weak", checkpoints["weak"])
    test = ab_test_start(
        model_name="digits",
        version_ids=[good_version.pk, weak_version.pk],
        policy=ab_policy(mode="dry_run"),
        actor=SYSTEM,
    )

    assert sweep_until_decided(test, django_capture_on_commit_callbacks) == ABTestStatus.DRY_RUN

    test.refresh_from_db()
    assert test.outcome.startswith(f"would promote v{good_version.version} (")
    trigger = TriggerEvent.objects.get(kind="ab_test")
    assert trigger.status == TriggerStatus.DRY_RUN and trigger.snapshot["decision"] == "would_promote"
    assert trigger.snapshot["promote"]["version"] == f"v{good_version.version}"
    assert stages(good_version, weak_version, version_of(current)) == [
        (NONE, 0.0),
        (NONE, 0.0),
        (PRODUCTION, 0.0),
    ]
    assert deployed_experiments() == [current.pk]
    assert (state(good), state(weak)) == (State.COMPLETED, State.EVALUATING)
    assert not ABTest.objects.filter(status__in=["running", "awaiting_approval"]).exists()
    assert set(serve_labelled(20)) == {version_of(current).version}
    assert ModelVersion.objects.filter(stage=PRODUCTION).count() == 1


def test_promote_to_production_helper_keeps_one_deployed_experiment(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    # The ordinary canary-less path is unchanged: the newer deployment retires the older one.
    with django_capture_on_commit_callbacks(execute=True):
        first = deployed("first", checkpoints["good"])
    with django_capture_on_commit_callbacks(execute=True):
        second = evaluating_digits_experiment("second", checkpoints["good"])
        promote_to_production(second)
    assert deployed_experiments() == [second.pk] and state(first) == State.RETIRED
    assert not TransitionLog.objects.filter(event="adopt").exists()


def test_an_arm_whose_experiment_failed_is_refused_and_nothing_starts(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    from control.canary.ab import ABTestError

    with django_capture_on_commit_callbacks(execute=True):
        deployed("v1", checkpoints["good"])
    failed, failed_version = evaluating("failed", checkpoints["good"])
    experiment_transition(experiment_id=failed.pk, event="fail", actor=SYSTEM, reason="marked failed")
    _weak, weak_version = evaluating("weak", checkpoints["weak"])
    with pytest.raises(ABTestError) as info:
        ab_test_start(
            model_name="digits",
            version_ids=[failed_version.pk, weak_version.pk],
            policy=ab_policy(),
            actor=SYSTEM,
        )
    assert info.value.field == "version_ids" and f"experiment #{failed.pk} is failed" in info.value.message
    assert not ABTest.objects.exists()
    assert stages(failed_version, weak_version) == [(NONE, 0.0), (NONE, 0.0)]
