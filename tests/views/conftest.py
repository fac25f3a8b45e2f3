"""Fixtures of the page tests: people with and without permissions, experiments in any state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from experiments.actors import Actor
from experiments.models import Experiment
from experiments.permissions import researcher_group_ensure
from experiments.services import experiment_create, experiment_transition

# Events fired to reach each state from pending (by the system: no permission needed).
PATH_TO: dict[str, tuple[str, ...]] = {
    "pending": (),
    "queued": ("queue",),
    "running": ("queue", "start"),
    "evaluating": ("queue", "start", "complete"),
    "completed": ("queue", "start", "complete", "hold"),
    "promoting": ("queue", "start", "complete", "promote"),
    "deployed": ("queue", "start", "complete", "promote", "deploy"),
    "failed": ("queue", "start", "fail"),
    "cancelled": ("cancel",),
    "rolled_back": ("queue", "start", "complete", "promote", "rollback"),
}


@pytest.fixture
def researcher(db: Any) -> User:
    """A person in the Researchers group: may create, start, cancel, promote, roll back, retrain."""
    user = User.objects.create_user("ana", password="pw-ana-123")
    user.groups.add(researcher_group_ensure())
    return user


@pytest.fixture
def viewer(db: Any) -> User:
    """A logged-in person who may look at experiments, and do nothing else."""
    user = User.objects.create_user("vic", password="pw-vic-123")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="experiments", codename="view_experiment")
    )
    return user


@pytest.fixture
def make_user(db: Any) -> Callable[..., User]:
    """Return a function creating a user with exactly the given experiment permissions."""

    def make(username: str, perms: Iterable[str] = ()) -> User:
        user = User.objects.create_user(username, password=f"pw-{username}-123")
        user.user_permissions.add(
            *Permission.objects.filter(content_type__app_label="experiments", codename__in=list(perms))
        )
        return user

    return make


@pytest.fixture
def make_experiment(db: Any) -> Callable[..., Experiment]:
    """Return a function creating an experiment and driving it (as the system) into a state."""

    def make(name: str = "exp", state: str = "pending", **fields: Any) -> Experiment:
        fields.setdefault("recipe", "digits")
        experiment = experiment_create(name=name, **fields)
        for event in PATH_TO[state]:
            experiment_transition(experiment_id=experiment.pk, event=event, actor=Actor.system("test"))
        experiment.refresh_from_db()
        assert experiment.state == state
        return experiment

    return make


@pytest.fixture
def researcher_client(client: Client, researcher: User) -> Client:
    """A browser session logged in as the researcher."""
    client.force_login(researcher)
    return client
