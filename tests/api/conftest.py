"""Fixtures of the API tests: users with and without permissions, clients, experiments in a state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from experiments.api.tokens import api_token_create
from experiments.choices import State
from experiments.models import EVENT_PERMISSIONS, Experiment
from experiments.services import experiment_create

MakeExperiment = Callable[..., Experiment]
TokenFor = Callable[[User], str]
ClientFor = Callable[[User], Client]

OPERATOR_PERMS = {
    "add_experiment",
    "view_experiment",
    *(perm.split(".")[1] for perm in EVENT_PERMISSIONS.values()),
}


@pytest.fixture
def operator(db: Any) -> User:
    """Return a person who may create experiments and fire every event."""
    user = User.objects.create_user("olga")  # no password: hashing one costs ~0.3 s
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="experiments", codename__in=OPERATOR_PERMS)
    )
    return user


@pytest.fixture
def viewer(db: Any) -> User:
    """Return a person who may look at experiments but change nothing."""
    user = User.objects.create_user("vic")
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="experiments", codename="view_experiment")
    )
    return user


@pytest.fixture
def stranger(db: Any) -> User:
    """Return a logged-in person without any experiment permission."""
    return User.objects.create_user("sam")


@pytest.fixture
def client_for() -> ClientFor:
    """Return a factory of session-authenticated clients."""

    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def api(operator: User, client_for: ClientFor) -> Client:
    """Return a client logged in as the operator."""
    return client_for(operator)


@pytest.fixture
def token_for(db: Any) -> TokenFor:
    """Return a factory of raw API tokens."""

    def make(user: User) -> str:
        return api_token_create(user=user, name="tests")[1]

    return make


@pytest.fixture
def make_experiment(db: Any) -> MakeExperiment:
    """Return a factory of digits experiments, put straight into the asked state."""

    def make(*, name: str = "digits baseline", state: str = State.PENDING, **kwargs: Any) -> Experiment:
        experiment = experiment_create(name=name, recipe="digits", config={"epochs": 2}, **kwargs)
        if state != State.PENDING:
            # Test set-up only: skip the lifecycle to reach the state under test.
            Experiment.objects.filter(pk=experiment.pk).update(state=state)
            experiment.refresh_from_db()
        return experiment

    return make


def post_json(client: Client, url: str, data: Any = None, **extra: Any) -> Any:
    """POST data as a JSON body (no body at all when data is None)."""
    if data is None:
        return client.generic("POST", url, b"", content_type="application/json", **extra)
    return client.post(url, data, content_type="application/json", **extra)
