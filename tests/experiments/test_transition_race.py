"""Two people pressing the same button at once: exactly one wins, the other is told why."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django_fsm import ConcurrentTransition

from experiments.actors import Actor
from experiments.choices import State
from experiments.models import Experiment, TransitionLog
from experiments.services import TransitionRefused, experiment_create, experiment_transition

SYSTEM = Actor.system("test")


def _evaluating_experiment() -> Experiment:
    experiment = experiment_create(name="race", recipe="digits")
    for event in ("queue", "start", "complete"):
        experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
    return experiment


@pytest.mark.django_db(transaction=True)
def test_a_stale_copy_cannot_overwrite_a_newer_state() -> None:
    experiment = _evaluating_experiment()
    first = Experiment.objects.get(pk=experiment.pk)
    second = Experiment.objects.get(pk=experiment.pk)
    first.promote()
    with transaction.atomic():
        first.save()
    second.hold()
    with pytest.raises(ConcurrentTransition), transaction.atomic():
        second.save()
    assert Experiment.objects.get(pk=experiment.pk).state == State.PROMOTING


@pytest.mark.django_db(transaction=True)
def test_two_connections_racing_promote_give_one_winner() -> None:
    experiment = _evaluating_experiment()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []
    lock = threading.Lock()

    def press_promote(who: str) -> None:
        try:
            barrier.wait(timeout=5)
            experiment_transition(experiment_id=experiment.pk, event="promote", actor=Actor.system(who))
            result = "won"
        except TransitionRefused as exc:
            result = f"refused: {exc.message}"
        finally:
            connection.close()  # each thread has its own connection
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=press_promote, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(o.split(":")[0] for o in outcomes) == ["refused", "won"]
    assert "already promoting" in next(o for o in outcomes if o.startswith("refused"))
    assert Experiment.objects.get(pk=experiment.pk).state == State.PROMOTING
    assert TransitionLog.objects.filter(experiment=experiment, event="promote").count() == 1
