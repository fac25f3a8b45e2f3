"""The experiment lifecycle: every allowed and refused edge, permissions, audit and lineage."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied, ValidationError

from experiments.actors import Actor
from experiments.choices import State
from experiments.models import EVENT_PERMISSIONS, Experiment, TransitionLog
from experiments.services import (
    TransitionRefused,
    experiment_create,
    experiment_retrain,
    experiment_transition,
)

# The lifecycle as DESIGN.md draws it: event -> (sources, target). Retrain leaves the
# parent where it is (None) and creates a child.
EDGES: dict[str, tuple[set[str], str | None]] = {
    "queue": ({State.PENDING}, State.QUEUED),
    "wait": ({State.PENDING}, State.WAITING),
    "release": ({State.WAITING}, State.QUEUED),
    "block": ({State.WAITING}, State.WAITING),
    "start": ({State.QUEUED}, State.RUNNING),
    "complete": ({State.RUNNING}, State.EVALUATING),
    "fail": ({State.RUNNING, State.EVALUATING}, State.FAILED),
    "retry": ({State.FAILED}, State.QUEUED),
    "requeue": ({State.RUNNING}, State.QUEUED),
    "hold": ({State.EVALUATING}, State.COMPLETED),
    "promote": ({State.EVALUATING, State.COMPLETED}, State.PROMOTING),
    "deploy": ({State.PROMOTING}, State.DEPLOYED),
    "rollback": ({State.PROMOTING, State.DEPLOYED}, State.ROLLED_BACK),
    "cancel": (
        {
            State.PENDING,
            State.WAITING,
            State.QUEUED,
            State.RUNNING,
            State.EVALUATING,
            State.COMPLETED,
            State.PROMOTING,
        },
        State.CANCELLED,
    ),
    "retrain": (
        {State.COMPLETED, State.DEPLOYED, State.ROLLED_BACK, State.FAILED, State.CANCELLED, State.RETIRED},
        None,
    ),
    "withdraw": ({State.PROMOTING}, State.COMPLETED),
    "retire": ({State.DEPLOYED}, State.RETIRED),
    "reinstate": ({State.RETIRED}, State.DEPLOYED),
}

# A path of system events from pending to each state.
PATHS: dict[str, list[str]] = {
    State.PENDING: [],
    State.WAITING: ["wait"],
    State.QUEUED: ["queue"],
    State.RUNNING: ["queue", "start"],
    State.EVALUATING: ["queue", "start", "complete"],
    State.COMPLETED: ["queue", "start", "complete", "hold"],
    State.PROMOTING: ["queue", "start", "complete", "promote"],
    State.DEPLOYED: ["queue", "start", "complete", "promote", "deploy"],
    State.FAILED: ["queue", "start", "fail"],
    State.CANCELLED: ["cancel"],
    State.ROLLED_BACK: ["queue", "start", "complete", "promote", "rollback"],
    State.RETIRED: ["queue", "start", "complete", "promote", "deploy", "retire"],
}

SYSTEM = Actor.system("test")


def make_experiment_in(state: str, **kwargs: object) -> Experiment:
    """Return a digits experiment driven through real transitions into `state`."""
    experiment = experiment_create(name=f"exp-{state}", recipe="digits", **kwargs)  # type: ignore[arg-type]
    for event in PATHS[state]:
        experiment = experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
    return experiment


CASES = [(event, state) for event in EDGES for state in State.values]


@pytest.mark.django_db
@pytest.mark.parametrize(("event", "state"), CASES)
def test_each_event_fires_exactly_from_its_source_states(event: str, state: str) -> None:
    sources, target = EDGES[event]
    experiment = make_experiment_in(state)
    audit_before = TransitionLog.objects.filter(experiment=experiment).count()
    if state in sources:
        result = experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM, reason="why")
        result.refresh_from_db()
        assert result.state == (target or state)
        row = TransitionLog.objects.filter(experiment=experiment).latest("id")
        assert (row.event, row.source_state, row.target_state, row.reason) == (
            event,
            state,
            target or state,
            "why",
        )
    else:
        with pytest.raises(TransitionRefused):
            experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
        experiment.refresh_from_db()
        assert experiment.state == state
        assert TransitionLog.objects.filter(experiment=experiment).count() == audit_before


@pytest.mark.django_db
def test_the_state_field_cannot_be_assigned_directly() -> None:
    experiment = make_experiment_in(State.PENDING)
    with pytest.raises(AttributeError):
        experiment.state = State.DEPLOYED


@pytest.mark.django_db
def test_a_refused_transition_says_what_state_it_is_in() -> None:
    experiment = make_experiment_in(State.PROMOTING)
    with pytest.raises(TransitionRefused, match="already promoting"):
        experiment_transition(experiment_id=experiment.pk, event="promote", actor=SYSTEM)


@pytest.mark.django_db
def test_unknown_event_is_a_field_error() -> None:
    experiment = make_experiment_in(State.PENDING)
    with pytest.raises(ValidationError) as exc:
        experiment_transition(experiment_id=experiment.pk, event="explode", actor=SYSTEM)
    assert "event" in exc.value.message_dict


@pytest.mark.django_db
def test_a_person_needs_the_permission_of_the_event() -> None:
    user = User.objects.create_user("ada", password="pw")
    experiment = make_experiment_in(State.PENDING)
    with pytest.raises(PermissionDenied):
        experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.for_user(user))
    experiment.refresh_from_db()
    assert experiment.state == State.PENDING
    assert not TransitionLog.objects.filter(experiment=experiment).exists()

    user.user_permissions.add(Permission.objects.get(codename="queue_experiment"))
    user = User.objects.get(pk=user.pk)  # drop the permission cache
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.for_user(user))
    row = TransitionLog.objects.get(experiment=experiment)
    assert (row.actor, row.user) == ("user:ada", user)


@pytest.mark.django_db
def test_available_events_follow_state_and_permissions() -> None:
    user = User.objects.create_user("bo", password="pw")
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["cancel_experiment", "promote_experiment"])
    )
    user = User.objects.get(pk=user.pk)
    evaluating = make_experiment_in(State.EVALUATING)
    assert evaluating.available_events(user) == ["hold", "promote", "cancel"]
    # Events of the scheduler and workers are never offered to a person without "operate".
    running = make_experiment_in(State.RUNNING)
    assert running.available_events(user) == ["cancel"]
    deployed = make_experiment_in(State.DEPLOYED)
    assert deployed.available_events(user) == []


@pytest.mark.django_db
def test_every_event_has_a_declared_permission() -> None:
    codenames = set(
        Permission.objects.filter(content_type__app_label="experiments").values_list("codename", flat=True)
    )
    for event, perm in EVENT_PERMISSIONS.items():
        assert perm.split(".", 1)[1] in codenames, event


@pytest.mark.django_db
def test_policy_and_system_actors_are_written_to_the_audit() -> None:
    experiment = make_experiment_in(State.EVALUATING)
    experiment_transition(
        experiment_id=experiment.pk,
        event="promote",
        actor=Actor.policy("auto_promote"),
        reason="accuracy 0.97 > 0.9",
    )
    rows = list(TransitionLog.objects.filter(experiment=experiment).values_list("event", "actor"))
    assert rows == [
        ("queue", "system:test"),
        ("start", "system:test"),
        ("complete", "system:test"),
        ("promote", "policy:auto_promote"),
    ]
    assert TransitionLog.objects.get(event="promote", experiment=experiment).reason == "accuracy 0.97 > 0.9"


@pytest.mark.django_db
def test_retrain_creates_a_queued_child_with_lineage_and_overrides() -> None:
    parent = make_experiment_in(State.DEPLOYED, config={"epochs": 5, "lr": 0.01})
    child = experiment_retrain(
        experiment_id=parent.pk, actor=Actor.policy("drift_retrain"), config_overrides={"lr": 0.005}
    )
    parent.refresh_from_db()
    assert parent.state == State.DEPLOYED
    assert child.parent_id == parent.pk
    assert child.state == State.QUEUED
    assert child.config["epochs"] == 5 and child.config["lr"] == 0.005
    assert TransitionLog.objects.filter(
        experiment=parent, event="retrain", actor="policy:drift_retrain"
    ).exists()
    assert TransitionLog.objects.filter(
        experiment=child, event="queue", actor="policy:drift_retrain"
    ).exists()


@pytest.mark.django_db
def test_retrain_with_a_bad_override_changes_nothing() -> None:
    parent = make_experiment_in(State.FAILED)
    with pytest.raises(ValidationError):
        experiment_retrain(experiment_id=parent.pk, actor=SYSTEM, config_overrides={"lr": "fast"})
    assert not parent.children.exists()
    assert not TransitionLog.objects.filter(experiment=parent, event="retrain").exists()
