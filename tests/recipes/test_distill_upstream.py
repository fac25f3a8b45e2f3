"""Distill takes its teacher from an upstream digits experiment's checkpoint when told to."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.recipes import get_spec
from experiments.recipes.local import LocalRunContext
from experiments.recipes.runtime import CheckpointMismatchError


def _digits_checkpoint(folder: Path, *, hidden: int) -> tuple[Path, float]:
    ctx = LocalRunContext(checkpoint_dir=folder)
    result = get_spec("digits").load().train(ctx, {"epochs": 6, "hidden": hidden, "seed": 0})
    newest = sorted(folder.glob("step-*.pt"))[-1]
    return newest, result.final_metrics["accuracy"]


def test_distill_uses_the_upstream_teacher_and_trains_only_the_student(tmp_path: Path) -> None:
    checkpoint, teacher_accuracy = _digits_checkpoint(tmp_path / "teacher", hidden=48)
    ctx = LocalRunContext(upstreams={12: checkpoint})
    result = (
        get_spec("distill")
        .load()
        .train(ctx, {"teacher_experiment": 12, "teacher_hidden": 256, "epochs": 8, "seed": 0})
    )
    # No teacher training: the teacher's shape and weights are the upstream's (hidden 48, not 256).
    assert ctx.values("teacher_loss") == []
    assert result.final_metrics["teacher_accuracy"] == pytest.approx(teacher_accuracy, abs=1e-6)
    assert result.final_metrics["accuracy"] > 0.8


def test_distill_refuses_an_upstream_that_is_not_a_digits_model(tmp_path: Path) -> None:
    ctx = LocalRunContext(checkpoint_dir=tmp_path / "own")
    get_spec("distill").load().train(ctx, {"teacher_epochs": 1, "epochs": 1, "student_hidden": 8})
    foreign = sorted((tmp_path / "own").glob("step-*.pt"))[-1]
    with pytest.raises(CheckpointMismatchError, match="not 'digits'"):
        get_spec("distill").load().train(LocalRunContext(upstreams={5: foreign}), {"teacher_experiment": 5})


def test_distill_without_the_upstream_file_says_which_experiment_is_missing() -> None:
    with pytest.raises(ValueError, match="experiment #9"):
        get_spec("distill").load().train(LocalRunContext(), {"teacher_experiment": 9})
