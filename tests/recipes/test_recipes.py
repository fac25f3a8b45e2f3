"""The training recipes learn, are deterministic, resume exactly, survive NaN, and run from the CLI."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.recipes import ConfigError, get_spec
from experiments.recipes.cli import main
from experiments.recipes.local import LocalRunContext, MetricPoint
from experiments.recipes.runtime import CheckpointMismatchError

ROOT = Path(__file__).resolve().parents[2]

SMALL: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 3, "hidden": 32},
    "distill": {"teacher_epochs": 2, "epochs": 2, "teacher_hidden": 64, "student_hidden": 16},
    "charlm": {
        "steps": 40, "batch_size": 8, "context": 32, "d_model": 32, "n_layers": 1, "n_heads": 2,
        "eval_every": 10, "eval_batches": 2,
    },
}  # fmt: skip


class StopAfter(LocalRunContext):
    """A context whose stop request arrives after `steps` steps (should_stop is asked once a step)."""

    def __init__(self, steps: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = steps
        self.asked = 0

    def should_stop(self) -> bool:
        self.asked += 1
        return self.asked > self.steps


def repeatable(points: list[MetricPoint]) -> list[MetricPoint]:
    """Return the points a seed fixes: all but the wall-clock throughput."""
    return [p for p in points if p.name != "tokens_per_s"]


def without_timing(metrics: dict[str, float]) -> dict[str, float]:
    """Return final metrics without the wall-clock throughput."""
    return {k: v for k, v in metrics.items() if k != "tokens_per_s"}


def train(recipe: str, ctx: LocalRunContext | None = None, **config: Any) -> tuple[LocalRunContext, Any]:
    """Train a recipe on CPU; return its context (with the logged points) and its result."""
    ctx = ctx if ctx is not None else LocalRunContext()
    result = get_spec(recipe).load().train(ctx, config)
    return ctx, result


def test_digits_defaults_reach_val_accuracy_above_0_9_on_cpu() -> None:
    ctx, result = train("digits")
    assert result.final_metrics["accuracy"] > 0.9
    assert result.final_metrics["f1"] > 0.9
    assert not result.stopped
    assert ctx.fraction == 1.0
    # loss every step; val_loss, accuracy, f1 once per epoch
    assert len(ctx.values("loss")) == result.steps
    assert len(ctx.values("accuracy")) == len(ctx.values("val_loss")) == len(ctx.values("f1")) == 30


def test_charlm_loss_falls() -> None:
    ctx, result = train("charlm", **SMALL["charlm"])
    losses = ctx.values("loss")
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    val = ctx.values("val_loss")
    assert len(val) == 4 and val[-1] < val[0]
    assert all(v > 0 for v in ctx.values("tokens_per_s"))
    assert result.final_metrics["tokens_per_s"] > 0


def test_distill_logs_teacher_metrics_and_the_student_learns() -> None:
    ctx, result = train("distill", teacher_epochs=5, epochs=10)
    assert result.final_metrics["teacher_accuracy"] > 0.9
    assert result.final_metrics["accuracy"] > 0.8
    teacher_steps = [p.step for p in ctx.points if p.name == "teacher_loss"]
    student_steps = [p.step for p in ctx.points if p.name == "loss"]
    # one global, monotonic step count: the student continues where the teacher stopped
    assert student_steps[0] == teacher_steps[-1] + 1
    assert len(ctx.values("teacher_accuracy")) == 5 and len(ctx.values("accuracy")) == 10


@pytest.mark.parametrize("recipe", ["digits", "charlm"])
def test_the_same_seed_gives_the_same_losses(recipe: str) -> None:
    first, _ = train(recipe, **SMALL[recipe], seed=7)
    second, _ = train(recipe, **SMALL[recipe], seed=7)
    other, _ = train(recipe, **SMALL[recipe], seed=8)
    assert repeatable(first.points) == repeatable(second.points)
    assert first.values("loss") != other.values("loss")


@pytest.mark.parametrize(
    ("recipe", "stop_after"),
    [
        ("digits", 30),  # mid-epoch (23 steps an epoch)
        ("distill", 10),  # inside the teacher's first epoch
        ("distill", 60),  # inside the student's first epoch
        ("charlm", 15),  # between evaluations
    ],
)
def test_a_stopped_run_resumed_from_its_checkpoint_logs_what_an_uninterrupted_run_logs(
    recipe: str, stop_after: int, tmp_path: Path
) -> None:
    whole, whole_result = train(recipe, **SMALL[recipe])

    first, first_result = train(recipe, StopAfter(stop_after, checkpoint_dir=tmp_path), **SMALL[recipe])
    assert first_result.stopped
    assert first_result.steps == stop_after
    assert first.saved_steps[-1] == stop_after  # checkpoint written on the way out

    second, second_result = train(recipe, LocalRunContext(checkpoint_dir=tmp_path), **SMALL[recipe])
    assert not second_result.stopped
    assert min(p.step for p in second.points) == stop_after + 1
    assert repeatable(first.points + second.points) == repeatable(whole.points)
    assert second_result.steps == whole_result.steps
    assert without_timing(second_result.final_metrics) == without_timing(whole_result.final_metrics)


def test_resuming_with_a_different_model_shape_is_refused(tmp_path: Path) -> None:
    train("digits", StopAfter(5, checkpoint_dir=tmp_path), **SMALL["digits"])
    with pytest.raises(CheckpointMismatchError, match="hidden"):
        train("digits", LocalRunContext(checkpoint_dir=tmp_path), **{**SMALL["digits"], "hidden": 64})


def test_resuming_from_another_recipes_checkpoint_is_refused(tmp_path: Path) -> None:
    train("digits", StopAfter(5, checkpoint_dir=tmp_path), **SMALL["digits"])
    with pytest.raises(CheckpointMismatchError, match="digits"):
        train("distill", LocalRunContext(checkpoint_dir=tmp_path), **SMALL["distill"])


@pytest.mark.parametrize("recipe", ["digits", "charlm"])
def test_injected_nan_is_logged_and_training_carries_on(recipe: str) -> None:
    ctx, result = train(recipe, **SMALL[recipe], inject_nan_at_step=25)
    losses = [p for p in ctx.points if p.name == "loss"]
    assert all(math.isfinite(p.value) for p in losses if p.step < 25)
    assert all(math.isnan(p.value) for p in losses if p.step >= 25)
    assert result.steps == losses[-1].step  # ran to the end
    assert not result.stopped


def test_checkpoints_stop_once_the_weights_are_nan(tmp_path: Path) -> None:
    ctx, _ = train(
        "digits", LocalRunContext(checkpoint_dir=tmp_path), **SMALL["digits"], inject_nan_at_step=30
    )
    # epochs end at steps 23, 46, 69; the NaN from step 30 on poisons the weights
    assert ctx.saved_steps == [23]
    loaded = ctx.load_checkpoint()
    assert loaded is not None and loaded[0] == 23


def test_charlm_refuses_heads_that_do_not_divide_the_width() -> None:
    with pytest.raises(ConfigError) as caught:
        get_spec("charlm").clean({"d_model": 64, "n_heads": 3})
    assert set(caught.value.errors) == {"n_heads"}


def _reject_constant(name: str) -> None:
    raise ValueError(f"not valid JSON: {name}")


def test_the_cli_prints_json_lines_and_a_summary_without_importing_django(tmp_path: Path) -> None:
    proc = subprocess.run(
        # -X importtime lists every module the run imports on stderr
        [sys.executable, "-X", "importtime", "-m", "experiments.recipes", "run", "digits", "--device", "cpu", "--seed", "3",
         "--set", "epochs=2", "--set", "inject_nan_at_step=40", "--checkpoint-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line, parse_constant=_reject_constant) for line in proc.stdout.splitlines()]
    *points, last = lines
    assert {"name", "step", "value"} <= set(points[0])
    assert {p["name"] for p in points} == {"loss", "val_loss", "accuracy", "f1"}
    nan_points = [p for p in points if p["value"] is None]
    assert nan_points and all(p["nonfinite"] == "nan" and p["step"] >= 40 for p in nan_points)
    summary = last["summary"]
    assert summary["recipe"] == "digits" and summary["device"] == "cpu"
    assert summary["steps"] == 46 and summary["config"]["seed"] == 3
    assert set(summary["final_metrics"]) == {"loss", "val_loss", "accuracy", "f1"}
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step-000000023.pt"]
    # The stages it completed are kept beside the checkpoints; the NaN model was not exported.
    assert set(json.loads((tmp_path / "stages.json").read_text())) == {"load_data", "train"}
    assert not (tmp_path / "artifacts").exists()
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "experiments.recipes.classify" in imported  # the training code was imported and checked
    assert not {m for m in imported if m == "django" or m.startswith("django.")}


def test_the_cli_refuses_a_bad_set_with_exit_2_naming_the_key() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.recipes", "run", "digits", "--set", "epoch=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "'epoch'" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "digits", "--set", "lr=fast"], "'lr'"),
        (["run", "digits", "--set", "epochs=0"], "'epochs'"),
        (["run", "digits", "--set", "epochs"], "KEY=VALUE"),
        (["run", "charlm", "--set", "n_heads=3"], "'n_heads'"),
        (["run", "nope"], "unknown recipe"),
        (["run", "digits", "--set", "extra_data=/etc/passwd"], "curated dataset by id"),
        (["run", "digits", "--set", "extra_data=3"], "--dataset 3=PATH"),
        (["run", "digits", "--dataset", "data.npz"], "ID=PATH"),
    ],
)
def test_the_cli_names_what_is_wrong(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_the_cli_lists_every_recipe_with_its_params(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in listed] == ["digits", "charlm", "distill", "dpo", "grpo", "script"]
    assert "inject_nan_at_step" in {p["name"] for p in listed[1]["params"]}


def test_the_cli_bench_compares_charlm_with_a_bare_loop_of_the_same_model() -> None:
    out = io.StringIO()
    argv = ["bench", "--device", "cpu"] + [f"--set={k}={v}" for k, v in SMALL["charlm"].items()]
    assert main(argv, out=out) == 0
    figures = json.loads(out.getvalue())["bench"]
    assert figures["steps"] == 40 and figures["tokens_per_step"] == 8 * 32
    assert figures["recipe_tokens_per_s"] > 0 and figures["bare_tokens_per_s"] > 0
    assert figures["recipe_vs_bare"] > 0


def test_local_checkpoints_keep_only_the_newest_files(tmp_path: Path) -> None:
    ctx, _ = train("digits", LocalRunContext(checkpoint_dir=tmp_path, keep=2), **SMALL["digits"])
    assert ctx.saved_steps == [23, 46, 69]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step-000000046.pt", "step-000000069.pt"]
    assert (tmp_path / "artifacts" / "model.pt").is_file()  # the export stage's model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("recipe", ["digits", "charlm"])
def test_recipes_train_on_cuda(recipe: str) -> None:
    config = {"epochs": 10} if recipe == "digits" else {"steps": 200, "eval_every": 50}
    ctx, result = train(recipe, LocalRunContext(device="cuda"), **config)
    if recipe == "digits":
        assert result.final_metrics["accuracy"] > 0.9
    else:
        losses = ctx.values("loss")
        assert losses[-1] < losses[0] - 1.0
        assert result.final_metrics["tokens_per_s"] > 0
    assert isinstance(ctx.points[0], MetricPoint)
