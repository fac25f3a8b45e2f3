"""Datasets by reference: configs name curated datasets by id; files are read under the data folder only."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client

from experiments.models import (
    DatasetFileError,
    DatasetVersion,
    Experiment,
    ModelVersion,
    Run,
    ServedRequest,
    ServingStats,
)
from experiments.runs.execution import DbRunContext, file_sha256
from experiments.services import experiment_create

URL = "/api/experiments"


def _dataset(path: str, *, sha256: str = "0" * 64) -> DatasetVersion:
    count = DatasetVersion.objects.count()
    return DatasetVersion.objects.create(
        model_name="digits", version=count + 1, strategy="hard_examples", path=path, sha256=sha256,
        size=1, row_count=1, created_by="test",
    )  # fmt: skip


def _creator() -> Client:
    user = User.objects.create_user("cara")
    user.user_permissions.set(Permission.objects.filter(codename__in=["add_experiment", "view_experiment"]))
    client = Client()
    client.force_login(user)
    return client


def _create(client: Client, config: dict[str, Any]) -> Any:
    body = {"name": "curated", "recipe": "digits", "config": config}
    return client.post(URL, body, content_type="application/json")


@pytest.mark.django_db
@pytest.mark.parametrize("ref", ["/etc/passwd", "../../etc/passwd", "curated.npz", 1.5, True])
def test_a_config_naming_a_file_is_a_field_error_and_creates_nothing(ref: Any) -> None:
    response = _create(_creator(), {"extra_data": ref})

    assert response.status_code == 422, response.content
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "config", "extra_data"]
    assert error["msg"].startswith("refer to a curated dataset by id")
    assert not Experiment.objects.exists()


@pytest.mark.django_db
def test_a_dataset_id_that_names_no_dataset_is_a_field_error() -> None:
    response = _create(_creator(), {"extra_data": 99})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"loc": ["body", "config", "extra_data"], "msg": "no curated dataset #99", "type": "value_error"}
    ]
    assert not Experiment.objects.exists()


@pytest.mark.django_db
def test_a_dataset_id_is_accepted_and_recorded_as_the_experiments_dataset() -> None:
    dataset = _dataset("d.npz")
    response = _create(_creator(), {"extra_data": dataset.pk})
    assert response.status_code == 201, response.content
    experiment = Experiment.objects.get()
    assert (experiment.config["extra_data"], experiment.dataset_version_id) == (dataset.pk, dataset.pk)


@pytest.mark.django_db
def test_a_dataset_file_outside_the_data_folder_is_refused(tmp_path: Path) -> None:
    root = Path(settings.DATASETS_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "secret.npz"
    outside.write_bytes(b"not yours")
    link = root / f"link-{os.getpid()}.npz"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    try:
        for path, reason in (
            (str(outside), "relative to the data folder"),
            ("../secret.npz", "relative to the data folder"),
            ("", "relative to the data folder"),
            (link.name, "leads out of the data folder"),
            ("missing.npz", "is missing"),
        ):
            with pytest.raises(DatasetFileError, match=reason):
                _dataset(path).file_path()
    finally:
        link.unlink()


@pytest.mark.django_db
def test_the_worker_resolves_a_dataset_id_to_its_verified_file_under_the_data_folder() -> None:
    root = Path(settings.DATASETS_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"resolve-{os.getpid()}.npz"
    np.savez(path, x=np.zeros((2, 64)), y=np.zeros(2, dtype=np.int64))
    try:
        good = _dataset(path.name, sha256=file_sha256(path))
        tampered = _dataset(path.name)  # registered with another digest
        experiment = experiment_create(name="e", recipe="digits", config={"extra_data": good.pk})
        run = Run.objects.create(experiment=experiment, attempt=1, config=experiment.config)
        ctx = DbRunContext(run=run, reporter=None, timeout_seconds=60)  # type: ignore[arg-type]

        assert ctx.dataset_path(good.pk) == str(path.resolve())
        with pytest.raises(ValueError, match="does not match its registered sha256"):
            ctx.dataset_path(tampered.pk)
        with pytest.raises(ValueError, match="does not exist"):
            ctx.dataset_path(10_000)
    finally:
        path.unlink()


@pytest.mark.django_db
def test_the_migration_names_stored_datasets_by_id_and_stops_counting_unknown_senders() -> None:
    from django.apps import apps

    migration = importlib.import_module("experiments.migrations.0007_feedback_trust_and_dataset_ids")
    root = Path(settings.DATASETS_ROOT).resolve()
    inside = _dataset(str(root / "old.npz"))
    outside = _dataset("/elsewhere/old.npz")
    experiment = experiment_create(name="old", recipe="digits", config={})
    # Rows as an older release stored them (validation then took paths).
    Experiment.objects.filter(pk=experiment.pk).update(config={"epochs": 2, "extra_data": inside.path})
    stray = experiment_create(name="stray", recipe="digits", config={})
    Experiment.objects.filter(pk=stray.pk).update(config={"extra_data": "/etc/passwd"})
    version = ModelVersion.objects.create(
        model_name="digits", version=1, recipe="digits", experiment=experiment, checkpoint_path="c.pt",
        checkpoint_sha256="1" * 64,
    )  # fmt: skip
    ServingStats.objects.create(version=version, feedback_count=1, feedback_correct=1)
    labelled = ServedRequest.objects.create(
        version=version, latency_ms=1.0, predictions=[3], label=3, correct=True
    )

    migration.forwards(apps, None)

    inside.refresh_from_db()
    outside.refresh_from_db()
    assert (inside.path, outside.path) == ("old.npz", "/elsewhere/old.npz")
    assert Experiment.objects.get(pk=experiment.pk).config == {"epochs": 2, "extra_data": inside.pk}
    assert Experiment.objects.get(pk=stray.pk).config == {"extra_data": 0}
    # Nobody knows who sent the labels stored so far: kept, no longer counted.
    labelled.refresh_from_db()
    assert (labelled.label, labelled.label_trusted) == (3, False)
    stats = ServingStats.objects.get(version=version)
    assert (stats.feedback_count, stats.feedback_correct, stats.feedback_untrusted) == (0, 0, 1)
