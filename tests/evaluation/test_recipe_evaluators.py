"""Each built-in evaluator returns the metrics its recipe declares, on data it never trained on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from experiments.recipes import get_spec
from experiments.recipes.local import LocalRunContext


def _trained(name: str, folder: Path, **config: int) -> tuple[LocalRunContext, Path]:
    ctx = LocalRunContext(checkpoint_dir=folder, keep=1)
    get_spec(name).load().train(ctx, dict(config))
    return ctx, sorted(folder.glob("step-*.pt"))[-1]


def test_distill_is_judged_by_its_student_on_the_digits_held_out_set(tmp_path: Path) -> None:
    spec = get_spec("distill")
    ctx, checkpoint = _trained("distill", tmp_path, teacher_epochs=1, epochs=1)
    result = spec.evaluate_checkpoint(str(checkpoint))
    assert set(spec.eval_metrics) <= set(result.metrics)
    assert result.eval_set == "digits validation split (seed 0, 20%)"
    assert {a.name for a in result.artifacts} == {"confusion_matrix.csv", "evaluation_report.json"}
    assert set(ctx.completed_stages()) == {"load_data", "train_teacher", "train_student"}
    # A checkpoint of the teacher phase has no trained student to judge.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["phase"] = "teacher"
    teacher_only = tmp_path / "teacher.pt"
    torch.save(state, teacher_only)
    with pytest.raises(ValueError, match="teacher phase"):
        spec.evaluate_checkpoint(str(teacher_only))


def test_charlm_reports_perplexity_on_held_out_text_and_exports_samples(tmp_path: Path) -> None:
    spec = get_spec("charlm")
    ctx, checkpoint = _trained("charlm", tmp_path, steps=20, eval_every=10)
    result = spec.evaluate_checkpoint(str(checkpoint))
    assert set(result.metrics) == set(spec.eval_metrics) == {"perplexity", "val_loss"}
    assert result.metrics["perplexity"] == pytest.approx(math.exp(result.metrics["val_loss"]))
    # Twenty steps leave a model far better than chance (256 bytes) and far from perfect.
    assert 1.0 < result.metrics["perplexity"] < 256.0
    samples = (tmp_path / "artifacts" / "samples.txt").read_text()
    assert samples.count("--- prompt") == 3
    assert set(ctx.completed_stages()) == {"load_data", "train", "export"}


def test_an_evaluator_refuses_another_recipes_checkpoint(tmp_path: Path) -> None:
    _, checkpoint = _trained("digits", tmp_path, epochs=1)
    with pytest.raises(ValueError, match="not 'charlm'"):
        get_spec("charlm").evaluate_checkpoint(str(checkpoint))
