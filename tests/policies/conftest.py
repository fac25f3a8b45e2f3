"""Fixtures shared by the A/B test files: a trained digits checkpoint and versions of it to test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import experiments.registry.serving as serving
from experiments.models import ModelStage, ModelVersion
from experiments.registry.services import model_version_register
from tests.digits_models import evaluating_digits_experiment, promote_to_production, train_digits


@pytest.fixture(scope="session")
def ab_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits model trained by the real recipe, for tests that do not judge its accuracy."""
    path, _ = train_digits(tmp_path_factory.mktemp("ab-ckpt"), epochs=2, hidden=16, seed=0)
    return path


@pytest.fixture
def fresh_model_cache() -> Iterator[None]:
    """Empty the served-model cache around a test: row ids are reused after a rollback."""
    serving.clear_cache()
    yield
    serving.clear_cache()


@pytest.fixture
def digits_versions(
    ab_checkpoint: Path, fresh_model_cache: None, django_capture_on_commit_callbacks: Any
) -> tuple[ModelVersion, ModelVersion, ModelVersion]:
    """digits v1 in production; v2 and v3 registered from the same checkpoint and not serving."""
    with django_capture_on_commit_callbacks(execute=True):
        promote_to_production(evaluating_digits_experiment("v1", ab_checkpoint))
    v2 = model_version_register(experiment_id=evaluating_digits_experiment("v2", ab_checkpoint).pk)
    v3 = model_version_register(experiment_id=evaluating_digits_experiment("v3", ab_checkpoint).pk)
    return ModelVersion.objects.get(model_name="digits", stage=ModelStage.PRODUCTION), v2, v3
