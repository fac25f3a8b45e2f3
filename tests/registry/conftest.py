"""Fixtures of the registry tests: a really trained digits checkpoint, experiments with runs, users."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from experiments import serving
from experiments.actors import Actor
from experiments.choices import RunStatus
from experiments.execution import file_sha256
from experiments.models import Experiment, Run
from experiments.recipes.digits import RECIPE
from experiments.recipes.local import LocalRunContext
from experiments.services import experiment_create, experiment_transition
from experiments.tokens import api_token_create

SYSTEM = Actor.system("test")
MakeExperiment = Callable[..., Experiment]


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """Train a small digits MLP with the real recipe once; return its newest checkpoint and metrics."""
    folder = tmp_path_factory.mktemp("digits-ckpt")
    ctx = LocalRunContext(checkpoint_dir=folder, keep=1)
    result = RECIPE.train(ctx, {"epochs": 8, "hidden": 32, "seed": 0})
    newest = sorted(folder.glob("step-*.pt"))[-1]
    return newest, dict(result.final_metrics)


@pytest.fixture(scope="session")
def flaky_digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A digits model that trains as well as the good one but fails half the requests it serves."""
    folder = tmp_path_factory.mktemp("digits-flaky")
    ctx = LocalRunContext(checkpoint_dir=folder, keep=1)
    result = RECIPE.train(ctx, {"epochs": 8, "hidden": 32, "seed": 0, "serve_error_rate": 0.5})
    return sorted(folder.glob("step-*.pt"))[-1], dict(result.final_metrics)


@pytest.fixture(scope="session")
def weak_digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """An under-trained digits model (one epoch of a narrow MLP): clearly less accurate."""
    folder = tmp_path_factory.mktemp("digits-weak")
    ctx = LocalRunContext(checkpoint_dir=folder, keep=1)
    result = RECIPE.train(ctx, {"epochs": 1, "hidden": 8, "seed": 0, "lr": 0.0005})
    return sorted(folder.glob("step-*.pt"))[-1], dict(result.final_metrics)


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
        ckpt = checkpoint or path
        experiment = experiment_create(name=name, recipe="digits", config={"hidden": 32, "epochs": 8})
        for event in ("queue", "start", "complete"):
            experiment = experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
        Run.objects.create(
            experiment=experiment,
            attempt=1,
            status=RunStatus.SUCCEEDED,
            checkpoint_path=str(ckpt),
            checkpoint_sha256=sha256 or file_sha256(ckpt),
            checkpoint_size=ckpt.stat().st_size,
            final_metrics=metrics,
        )
        return experiment

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
def token(viewer: User) -> str:
    """A raw API token of the viewer."""
    return api_token_create(user=viewer, name="serving tests")[1]


@pytest.fixture
def token_client(token: str) -> Client:
    """A client that authenticates with the bearer token and enforces CSRF (which must not apply)."""
    return Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {token}")
