"""Pipelines: a started experiment waits for its upstreams, then queues; failures cancel or hold it."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from experiments.actors import Actor
from experiments.choices import State
from experiments.models import Dependency, Experiment, TransitionLog
from experiments.pipelines.services import dependency_add, dependency_remove
from experiments.services import experiment_create, experiment_transition

PERSON = Actor.system("test")


def make(name: str, recipe: str = "digits", **config: Any) -> Experiment:
    return experiment_create(name=name, recipe=recipe, config=config)


def fire(experiment: Experiment, *events: str) -> Experiment:
    for event in events:
        experiment_transition(experiment_id=experiment.pk, event=event, actor=PERSON)
    experiment.refresh_from_db()
    return experiment


def state_of(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def last_audit(experiment: Experiment) -> TransitionLog:
    return TransitionLog.objects.filter(experiment=experiment).latest("id")


@pytest.fixture
def effects(django_capture_on_commit_callbacks: Any) -> Any:
    """Run the effect table's after-commit effects (the pipeline's reactions among them) at once."""

    def run(fn: Any, *args: Any) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args)

    return run


@pytest.mark.django_db
def test_start_with_an_unmet_dependency_waits_and_says_for_what(effects: Any) -> None:
    teacher, student = make("teacher"), make("student", "distill")
    dependency_add(downstream=student, upstream=teacher)
    effects(fire, student, "queue")
    assert state_of(student) == State.WAITING
    row = last_audit(student)
    assert (row.event, row.actor) == ("wait", "system:test")
    assert f"waits for #{teacher.pk} 'teacher'" in row.reason


@pytest.mark.django_db
def test_start_with_every_dependency_met_queues_directly(effects: Any) -> None:
    teacher, student = make("teacher"), make("student")
    dependency_add(downstream=student, upstream=teacher, after="finished")
    effects(fire, teacher, "queue", "start", "fail")
    effects(fire, student, "queue")
    assert state_of(student) == State.QUEUED
    assert last_audit(student).event == "queue"


@pytest.mark.django_db
def test_the_dependent_queues_by_itself_when_the_upstream_succeeds(effects: Any) -> None:
    teacher, other, student = make("teacher"), make("other"), make("student")
    dependency_add(downstream=student, upstream=teacher)
    dependency_add(downstream=student, upstream=other, after="finished")
    effects(fire, student, "queue")
    effects(fire, teacher, "queue", "start", "complete")
    assert state_of(student) == State.WAITING  # `other` has not finished yet
    effects(fire, other, "cancel")
    assert state_of(student) == State.QUEUED
    row = last_audit(student)
    assert (row.event, row.actor, row.source_state) == ("release", "system:pipeline", State.WAITING)
    assert f"#{teacher.pk} 'teacher' is evaluating" in row.reason
    assert f"#{other.pk} 'other' is cancelled" in row.reason


@pytest.mark.django_db
def test_a_deployed_condition_is_not_met_by_training_alone(effects: Any) -> None:
    model, consumer = make("model"), make("consumer")
    dependency_add(downstream=consumer, upstream=model, after="deployed")
    effects(fire, consumer, "queue")
    effects(fire, model, "queue", "start", "complete", "hold")
    assert state_of(consumer) == State.WAITING
    effects(fire, model, "promote", "deploy")
    assert state_of(consumer) == State.QUEUED


@pytest.mark.django_db
def test_a_failed_upstream_cancels_its_dependents_down_the_chain(effects: Any) -> None:
    first, second, third = make("first"), make("second"), make("third")
    dependency_add(downstream=second, upstream=first, on_upstream_failure="cancel")
    dependency_add(downstream=third, upstream=second, on_upstream_failure="cancel")
    effects(fire, second, "queue")
    effects(fire, third, "queue")
    effects(fire, first, "queue", "start", "fail")
    assert state_of(second) == State.CANCELLED
    assert state_of(third) == State.CANCELLED
    row = last_audit(second)
    assert (row.event, row.actor) == ("cancel", "system:pipeline")
    assert f"upstream #{first.pk} 'first'" in row.reason and "is failed" in row.reason
    assert f"upstream #{second.pk} 'second'" in last_audit(third).reason


@pytest.mark.django_db
def test_a_held_dependent_keeps_waiting_and_goes_on_after_a_retry(effects: Any) -> None:
    teacher, student = make("teacher"), make("student")
    dependency_add(downstream=student, upstream=teacher, on_upstream_failure="hold")
    effects(fire, student, "queue")
    effects(fire, teacher, "queue", "start", "fail")
    assert state_of(student) == State.WAITING
    row = last_audit(student)
    assert (row.event, row.actor, row.target_state) == ("block", "system:pipeline", State.WAITING)
    assert f"held: upstream #{teacher.pk} 'teacher'" in row.reason and "is failed" in row.reason
    effects(fire, teacher, "retry", "start", "complete")
    assert state_of(student) == State.QUEUED
    assert last_audit(student).event == "release"


@pytest.mark.django_db
def test_starting_after_the_upstream_already_failed_applies_the_edge_at_once(effects: Any) -> None:
    teacher, student = make("teacher"), make("student")
    dependency_add(downstream=student, upstream=teacher, on_upstream_failure="cancel")
    effects(fire, teacher, "cancel")
    effects(fire, student, "queue")
    assert state_of(student) == State.CANCELLED
    assert [r.event for r in TransitionLog.objects.filter(experiment=student)] == ["wait", "cancel"]


@pytest.mark.django_db
def test_removing_the_last_unmet_edge_releases_the_waiting_dependent(effects: Any) -> None:
    teacher, student = make("teacher"), make("student")
    edge = dependency_add(downstream=student, upstream=teacher)
    effects(fire, student, "queue")
    effects(lambda: dependency_remove(edge_id=edge.pk))
    assert state_of(student) == State.QUEUED
    assert last_audit(student).reason == "dependencies met: none left"


@pytest.mark.django_db
def test_a_cycle_is_refused_on_the_upstream_field_and_nothing_changes() -> None:
    a, b, c = make("a"), make("b"), make("c")
    dependency_add(downstream=b, upstream=a)
    dependency_add(downstream=c, upstream=b)
    with pytest.raises(ValidationError) as caught:
        dependency_add(downstream=a, upstream=c)
    assert "cycle" in caught.value.message_dict["upstream"][0]
    assert f"#{a.pk} → #{c.pk} → #{b.pk} → #{a.pk}" in caught.value.message_dict["upstream"][0]
    with pytest.raises(ValidationError) as itself:
        dependency_add(downstream=a, upstream=a)
    assert "itself" in itself.value.message_dict["upstream"][0]
    assert Dependency.objects.count() == 2


@pytest.mark.django_db
def test_only_a_pending_or_waiting_experiment_gets_a_new_dependency(effects: Any) -> None:
    a, b = make("a"), make("b")
    effects(fire, b, "queue")
    with pytest.raises(ValidationError) as caught:
        dependency_add(downstream=b, upstream=a)
    assert "downstream" in caught.value.message_dict


@pytest.mark.django_db
def test_a_distill_dependency_on_digits_names_the_teacher_in_its_config() -> None:
    teacher, student = make("teacher"), make("student", "distill")
    dependency_add(downstream=student, upstream=teacher)
    student.refresh_from_db()
    assert student.config["teacher_experiment"] == teacher.pk
