"""Fixtures of the registry tests: a really trained digits checkpoint, experiments with runs, users."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

import experiments.registry.serving as serving
from experiments.api.tokens import api_token_create
from experiments.models import Experiment
from tests.digits_models import evaluating_digits_experiment, train_digits

MakeExperiment = Callable[..., Experiment]


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """Train a small digits MLP with the real recipe once; return its newest checkpoint and metrics."""
    return train_digits(tmp_path_factory.mktemp("digits-ckpt"), epochs=8, hidden=32, seed=0)


@pytest.fixture(scope="session")
def flaky_digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A digits model that trains as well as the good one but fails half the requests it serves."""
    return train_digits(
        tmp_path_factory.mktemp("digits-flaky"), epochs=8, hidden=32, seed=0, serve_error_rate=0.5
    )


@pytest.fixture(scope="session")
def weak_digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """An under-trained digits model (one epoch of a narrow MLP): clearly less accurate."""
    return train_digits(tmp_path_factory.mktemp("digits-weak"), epochs=1, hidden=8, seed=0, lr=0.0005)


@pytest.fixture(autouse=True)
def _fresh_model_cache() -> Iterator[None]:
    # Row ids are reused after a test's rollback: a cached model must not outlive its row.
    serving.clear_cache()
    yield
    serving.clear_cache()


@pytest.fixture
def make_experiment(digits_checkpoint: tuple[Path, dict[str, float]]) -> MakeExperiment:
    """Return a factory of evaluating digits experiments with a succeeded, checkpointed run."""
    path, metrics = digits_checkpoint

    def make(
        name: str = "digits run", *, checkpoint: Path | None = None, sha256: str | None = None
    ) -> Experiment:
        return evaluating_digits_experiment(
            name,
            checkpoint or path,
            metrics=metrics,
            sha256=sha256,
            config={"hidden": 32, "epochs": 8},
        )

    return make


def _user(name: str, *codenames: str) -> User:
    user = User.objects.create_user(name)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="experiments", codename__in=codenames)
    )
    return user


@pytest.fixture
def viewer(db: Any) -> User:
    """A person who may see experiments and use served models."""
    return _user("vic", "view_experiment")


@pytest.fixture
def operator(db: Any) -> User:
    """A person who may also promote and roll back."""
    return _user("olga", "view_experiment", "promote_experiment", "rollback_experiment")


@pytest.fixture
def labeller(db: Any) -> User:
    """A person who may use served models and label their answers, with labels that count."""
    return _user("lara", "view_experiment", "give_feedback", "give_trusted_feedback")


@pytest.fixture
def token(labeller: User) -> str:
    """A raw API token of the labeller."""
    return api_token_create(user=labeller, name="serving tests")[1]


@pytest.fixture
def token_client(token: str) -> Client:
    """A client that authenticates with the bearer token and enforces CSRF (which must not apply)."""
    return Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {token}")
