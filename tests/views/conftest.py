"""Fixtures of the page tests: people with and without permissions, experiments in any state.

The deployment page's tests also get a really trained digits model in production and canaries of
it (promoted under a canary policy, as the system).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from control.canary.models import CanaryRollout, RolloutStatus
from control.policies.models import Policy
from experiments.actors import Actor
from experiments.models import Experiment, ModelStage, ModelVersion
from experiments.permissions import researcher_group_ensure
from experiments.services import experiment_create, experiment_transition
from tests.digits_models import (
    SYSTEM,
    canary_policy_create,
    evaluating_digits_experiment,
    promote_to_production,
    train_digits,
)

Finished = Callable[[str], Experiment]
StartCanary = Callable[..., CanaryRollout]
OPERATOR_PERMS = ("view_experiment", "promote_experiment", "rollback_experiment")

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


# --- the deployment page: a trained digits model, in production, and its canaries -------------


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """Train a small digits MLP with the real recipe once; return its newest checkpoint and metrics."""
    return train_digits(tmp_path_factory.mktemp("deployment-ckpt"), epochs=4, hidden=16)


@pytest.fixture
def finished(db: Any, digits_checkpoint: tuple[Path, dict[str, float]]) -> Finished:
    """Return a factory of evaluating digits experiments whose run left a real checkpoint."""
    path, metrics = digits_checkpoint

    def make(name: str) -> Experiment:
        return evaluating_digits_experiment(name, path, metrics=metrics)

    return make


@pytest.fixture
def operator(make_user: Callable[..., User]) -> User:
    """A person who may see, promote and roll back."""
    return make_user("olga", OPERATOR_PERMS)


@pytest.fixture
def operator_client(operator: User) -> Client:
    """A browser session logged in as the operator."""
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def in_production(finished: Finished, django_capture_on_commit_callbacks: Any) -> ModelVersion:
    """digits v1 serving every request (promoted and deployed before any canary policy existed)."""
    baseline = finished("baseline")
    with django_capture_on_commit_callbacks(execute=True):
        promote_to_production(baseline)
    return ModelVersion.objects.get(experiment=baseline, stage=ModelStage.PRODUCTION)


@pytest.fixture
def canary_policy(in_production: ModelVersion) -> Policy:
    """The default canary policy (c10, then full), created once digits v1 is in production."""
    return canary_policy_create()


@pytest.fixture
def start_canary(
    in_production: ModelVersion, finished: Finished, django_capture_on_commit_callbacks: Any
) -> StartCanary:
    """Return a function creating a canary policy, then promoting a candidate under it; it returns the rollout."""

    def start(*stages: tuple[str, float, int], min_requests: int = 50) -> CanaryRollout:
        canary_policy_create(*stages, min_requests=min_requests)
        candidate = finished("candidate")
        with django_capture_on_commit_callbacks(execute=True):
            experiment_transition(experiment_id=candidate.pk, event="promote", actor=SYSTEM)
        return CanaryRollout.objects.get(experiment=candidate, status=RolloutStatus.RUNNING)

    return start


@pytest.fixture
def live_canary(start_canary: StartCanary) -> CanaryRollout:
    """A candidate promoted under the default canary policy: its rollout is at stage c10 (10%)."""
    return start_canary()
