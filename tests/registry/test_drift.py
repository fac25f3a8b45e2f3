"""Drift: served inputs against training data, the drift sweep, curated datasets and the retrain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import experiments.registry.serving as serving
from control.policies.authoring import policy_create
from control.policies.drift import drift_sweep
from control.policies.models import ActionExecution, ExecutionStatus, Policy, TriggerEvent
from control.policies.triggers import action_execute
from experiments.actors import Actor
from experiments.choices import PriorityClass, State
from experiments.models import DatasetVersion, Experiment, ModelVersion
from experiments.recipes.classify import ExtraDataError, raw_split
from experiments.recipes.digits import RECIPE
from experiments.recipes.local import LocalRunContext
from experiments.registry.drift import drift_score, feature_psi, shift_inputs
from experiments.registry.drift_checks import drift_check
from experiments.runs.execution import file_sha256
from experiments.services import experiment_transition
from tests.registry.conftest import MakeExperiment

ALICE = Actor.system("alice")
X_TRAIN, _, X_VAL, Y_VAL = raw_split(0, 0.2)


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5000)
    assert feature_psi(reference, rng.normal(size=2000)) < 0.02
    assert feature_psi(reference, rng.normal(loc=1.0, size=2000)) > 0.5


def test_held_out_digits_do_not_drift_and_shifted_ones_do() -> None:
    unshifted = drift_score(X_TRAIN, X_VAL)
    shifted = drift_score(X_TRAIN, shift_inputs(X_VAL, 0.25))
    assert unshifted.score < 0.05
    assert shifted.score > 1.0
    assert shifted.window_rows == len(X_VAL)
    assert len(shifted.top_features(3)) == 3


def _deployed(make_experiment: MakeExperiment, capture: Any) -> ModelVersion:
    experiment = make_experiment("deployed digits")
    with capture(execute=True):
        for event in ("promote", "deploy"):
            experiment_transition(experiment_id=experiment.pk, event=event, actor=ALICE)
    return ModelVersion.objects.get(experiment=experiment)


def _serve(x: np.ndarray, y: np.ndarray, rounds: int = 1) -> None:
    for _ in range(rounds):
        for features, label in zip(x, y, strict=True):
            answer = serving.predict(model_name="digits", payload={"features": features.tolist()})
            serving.feedback(
                model_name="digits", payload={"request_id": answer["request_id"], "label": int(label)}
            )


def _drift_policy() -> Policy:
    return policy_create(
        name="drift_retrain",
        kind="drift_retrain",
        conditions=[
            {"kind": "drift", "operator": ">", "threshold": 0.15},
            {"kind": "older_than", "threshold": 24},
        ],
        actions=[
            {"kind": "curate_dataset", "params": {"count": 1000, "max_confidence": 0.6}},
            {"kind": "retrain", "params": {"priority_class": "realtime"}},
        ],
    )


@pytest.mark.django_db
def test_drift_needs_enough_served_rows_before_it_scores(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    version = _deployed(make_experiment, django_capture_on_commit_callbacks)
    _serve(X_VAL[:20], Y_VAL[:20])
    check = drift_check(version, min_rows=100)
    assert check.score is None and "20 served rows" in check.detail


@pytest.mark.django_db
def test_unshifted_traffic_scores_low_and_fires_nothing(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    _deployed(make_experiment, django_capture_on_commit_callbacks)
    _drift_policy()
    _serve(X_VAL[:200], Y_VAL[:200])
    [report] = drift_sweep()
    assert report["score"] < 0.15 and report["rows"] == 200
    assert report["triggers"] == []
    assert not TriggerEvent.objects.exists()


@pytest.mark.django_db
def test_shifted_traffic_fires_drift_curates_hard_examples_and_queues_a_retrain_on_them(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    version = _deployed(make_experiment, django_capture_on_commit_callbacks)
    _drift_policy()
    shifted = shift_inputs(X_VAL[:200], 0.25)
    _serve(shifted, Y_VAL[:200])

    [report] = drift_sweep()
    assert report["score"] > 0.15
    trigger = TriggerEvent.objects.get(pk=report["triggers"][0])
    assert (trigger.kind, trigger.experiment_id) == ("drift", version.experiment_id)
    assert version.drift_checks.get().score == pytest.approx(report["score"])

    with django_capture_on_commit_callbacks(execute=True):
        for execution in ActionExecution.objects.filter(trigger=trigger).order_by("id"):
            action_execute(execution_id=execution.pk)
    curate, retrain = ActionExecution.objects.filter(trigger=trigger).order_by("id")
    assert (curate.kind, curate.status) == ("curate_dataset", ExecutionStatus.SUCCEEDED), curate.error
    assert (retrain.kind, retrain.status) == ("retrain", ExecutionStatus.SUCCEEDED), retrain.error

    dataset = DatasetVersion.objects.get()
    assert (dataset.version, dataset.source_version_id, dataset.created_by) == (
        1,
        version.pk,
        "policy:drift_retrain",
    )
    # Stored relative to the data folder and read only from there.
    assert not Path(dataset.path).is_absolute()
    assert file_sha256(dataset.file_path()) == dataset.sha256
    with np.load(dataset.file_path()) as data:
        x, y = data["x"], data["y"]
    assert len(x) == len(y) == dataset.row_count > 0
    # Every curated row was served shifted and is a hard one: wrong, or answered unsure.
    assert x.min() >= 4.0
    assert dataset.summary["wrong"] + dataset.summary["unsure_but_right"] == dataset.row_count

    child = Experiment.objects.get(pk=retrain.result["child_experiment_id"])
    assert (child.parent_id, child.dataset_version_id) == (version.experiment_id, dataset.pk)
    assert (child.state, child.priority_class) == (State.QUEUED, PriorityClass.REALTIME)
    assert child.config["extra_data"] == dataset.pk  # by id, never a path

    # The second sweep finds the policy disarmed (it fires once per drift episode).
    assert drift_sweep()[0]["triggers"] == []


@pytest.mark.django_db
def test_without_labelled_hard_examples_curation_fails_clearly_and_the_retrain_still_runs(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    _deployed(make_experiment, django_capture_on_commit_callbacks)
    _drift_policy()
    for features in shift_inputs(X_VAL[:150], 0.25):  # no feedback labels at all
        serving.predict(model_name="digits", payload={"features": features.tolist()})
    [report] = drift_sweep()
    trigger = TriggerEvent.objects.get(pk=report["triggers"][0])
    with django_capture_on_commit_callbacks(execute=True):
        for execution in ActionExecution.objects.filter(trigger=trigger).order_by("id"):
            action_execute(execution_id=execution.pk)
    curate, retrain = ActionExecution.objects.filter(trigger=trigger).order_by("id")
    assert curate.status == ExecutionStatus.FAILED
    assert "no labelled hard examples" in curate.error
    assert retrain.status == ExecutionStatus.SUCCEEDED
    assert retrain.result["dataset_version_id"] is None


def test_the_digits_recipe_trains_on_curated_rows_and_its_checkpoint_names_them(tmp_path: Path) -> None:
    x = shift_inputs(X_VAL[:100], 0.25)
    path = tmp_path / "curated.npz"
    np.savez(path, x=x, y=Y_VAL[:100])
    ctx = LocalRunContext(checkpoint_dir=tmp_path / "ckpt", keep=1, datasets={7: path})
    result = RECIPE.train(ctx, {"epochs": 2, "hidden": 16, "extra_data": 7})
    assert result.final_metrics["accuracy"] > 0.5
    import torch

    state = torch.load(sorted((tmp_path / "ckpt").glob("step-*.pt"))[-1], weights_only=True)
    assert state["serving"]["extra_data"] == 7  # the id: serving resolves it under its data folder


def test_a_curated_file_that_is_not_digits_is_refused_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((3, 10)), y=np.zeros(3))
    ctx = LocalRunContext(checkpoint_dir=tmp_path / "ckpt", keep=1, datasets={1: path})
    with pytest.raises(ExtraDataError, match="64 columns"):
        RECIPE.train(ctx, {"epochs": 1, "extra_data": 1})


@pytest.mark.django_db
def test_a_deployed_retrain_on_curated_data_counts_as_retrained_so_drift_does_not_loop(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    version = _deployed(make_experiment, django_capture_on_commit_callbacks)
    dataset = DatasetVersion.objects.create(
        model_name="digits", version=1, strategy="hard_examples", path="nowhere.npz", sha256="0" * 64,
        size=1, row_count=1, created_by="policy:drift_retrain",
    )  # fmt: skip
    Experiment.objects.filter(pk=version.experiment_id).update(
        parent=make_experiment("its parent"), dataset_version=dataset
    )
    _drift_policy()  # drift > 0.15 and last retrain older than 24 h
    _serve(shift_inputs(X_VAL[:150], 0.25), Y_VAL[:150])
    [report] = drift_sweep()
    assert report["score"] > 0.15
    assert report["triggers"] == []
