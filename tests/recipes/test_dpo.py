"""The dpo recipe: preference pairs, learning to prefer balanced brackets, exact resume, base runs, evaluation."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.recipes import ConfigError, get_spec
from experiments.recipes.charlm import corpus_split
from experiments.recipes.cli import main
from experiments.recipes.dpo import MISMATCH, evaluate_checkpoint, pair_source
from experiments.recipes.local import LocalRunContext
from experiments.recipes.runtime import CheckpointMismatchError
from tests.recipes.test_recipes import SMALL as OTHERS
from tests.recipes.test_recipes import StopAfter, train

MODEL = {"context": 32, "d_model": 32, "n_layers": 1, "n_heads": 2}
SMALL: dict[str, Any] = {
    **MODEL, "completion": 4, "pretrain_steps": 10, "steps": 30, "batch_size": 8,
    "eval_every": 10, "eval_pairs": 32, "lr": 0.003,
}  # fmt: skip
DPO_FIGURES = ("dpo_loss", "reward_margin", "reward_accuracy", "kl")


def test_a_rejected_completion_is_the_chosen_one_with_its_closing_bracket_mismatched() -> None:
    train_bytes, _ = corpus_split(torch.device("cpu"))
    source = pair_source(train_bytes, context=32, completion=4)
    chosen, rejected = source.fixed(50)
    assert chosen.shape == rejected.shape == (50, 32)
    differs = chosen != rejected
    # exactly one byte differs: the first of the completion, a closer in chosen, the wrong closer in rejected
    assert differs.sum(1).tolist() == [1] * 50 and differs[:, 28].all()
    for right, wrong in zip(chosen[:, 28].tolist(), rejected[:, 28].tolist(), strict=True):
        assert MISMATCH[right] == wrong


def test_dpo_pretrains_then_learns_to_prefer_balanced_brackets_on_held_out_pairs() -> None:
    ctx, result = train("dpo", **SMALL)
    assert {p.name for p in ctx.points} == set(get_spec("dpo").metrics)  # declared, and nothing else
    pre = [p.step for p in ctx.points if p.name == "pretrain_loss"]
    assert pre == list(range(1, 11))
    tuned = [p.step for p in ctx.points if p.name == "dpo_loss"]
    assert tuned == list(range(11, 41))  # one step count across both phases
    accuracy = ctx.values("reward_accuracy")
    # the first step compares the policy with itself: every margin is 0 and no pair is won
    assert accuracy[0] == 0.0 and ctx.values("dpo_loss")[0] == pytest.approx(math.log(2))
    assert sum(accuracy[-10:]) / 10 > 0.7
    assert ctx.values("reward_margin")[-1] > 0
    assert ctx.values("kl")[-1] > ctx.values("kl")[0] == 0.0
    held_out = ctx.values("val_reward_accuracy")
    assert len(held_out) == 3 and held_out[-1] > 0.6
    assert result.final_metrics["val_reward_accuracy"] == held_out[-1]
    assert not result.stopped and result.steps == 40 and ctx.fraction == 1.0


def test_the_same_seed_gives_the_same_dpo_figures() -> None:
    config = {**SMALL, "steps": 10}
    first, _ = train("dpo", **config, seed=3)
    second, _ = train("dpo", **config, seed=3)
    other, _ = train("dpo", **config, seed=4)
    assert first.points == second.points
    assert first.values("dpo_loss") != other.values("dpo_loss")


@pytest.mark.parametrize("stop_after", [6, 10, 23])  # pre-training, its last step, tuning
def test_a_stopped_dpo_run_resumed_from_its_checkpoint_logs_what_an_uninterrupted_run_logs(
    stop_after: int, tmp_path: Path
) -> None:
    whole, whole_result = train("dpo", **SMALL)
    first, first_result = train("dpo", StopAfter(stop_after, checkpoint_dir=tmp_path), **SMALL)
    assert first_result.stopped and first_result.steps == stop_after
    assert first.saved_steps[-1] == stop_after
    second, second_result = train("dpo", LocalRunContext(checkpoint_dir=tmp_path), **SMALL)
    assert min(p.step for p in second.points) == stop_after + 1
    assert first.points + second.points == whole.points
    assert second_result.final_metrics == whole_result.final_metrics


def test_dpo_records_its_stages_and_saves_held_out_pairs_with_their_implicit_rewards(tmp_path: Path) -> None:
    ctx, _ = train("dpo", LocalRunContext(checkpoint_dir=tmp_path), **SMALL)
    assert list(ctx.stages) == ["load_data", "pretrain", "train", "export"]
    assert set(json.loads((tmp_path / "stages.json").read_text())) == set(ctx.stages)
    samples = json.loads((tmp_path / "artifacts" / "samples.json").read_text())
    assert len(samples) == 4
    for pair in samples:
        assert len(pair["chosen"]) == len(pair["rejected"]) == SMALL["completion"]
        # the rejected completion is the chosen one with its closing bracket mismatched
        assert ord(pair["rejected"][0]) == MISMATCH[ord(pair["chosen"][0])]
        assert pair["chosen"][1:] == pair["rejected"][1:]
        assert len(pair["prompt"]) == SMALL["context"] - SMALL["completion"]
    # tuned to prefer balanced brackets: on these held-out pairs the chosen side earns more reward
    margins = [pair["chosen_reward"] - pair["rejected_reward"] for pair in samples]
    assert sum(margins) > 0 and any(m != 0 for m in margins)


def test_a_resumed_dpo_run_skips_the_stages_an_earlier_attempt_completed(tmp_path: Path) -> None:
    first, _ = train("dpo", StopAfter(23, checkpoint_dir=tmp_path), **SMALL)  # stopped while tuning
    assert list(first.stages) == ["load_data", "pretrain"]
    assert not (tmp_path / "artifacts").exists()
    second, result = train("dpo", LocalRunContext(checkpoint_dir=tmp_path), **SMALL)
    assert not result.stopped and second.values("pretrain_loss") == []
    assert list(second.stages) == ["load_data", "pretrain", "train", "export"]
    # load_data and pretrain keep the first attempt's timings: this one did not record them again
    assert second.stages["load_data"] == first.stages["load_data"]
    assert second.stages["pretrain"] == first.stages["pretrain"]
    assert (tmp_path / "artifacts" / "samples.json").is_file()


def _charlm_checkpoint(tmp_path: Path, **config: Any) -> Path:
    charlm = {**OTHERS["charlm"], **MODEL, "steps": 20, "eval_every": 20, **config}
    train("charlm", LocalRunContext(checkpoint_dir=tmp_path), **charlm)
    return tmp_path / "step-000000020.pt"


def test_dpo_starts_from_a_charlm_runs_checkpoint_without_pretraining(tmp_path: Path) -> None:
    base = _charlm_checkpoint(tmp_path / "charlm")
    ctx, result = train(
        "dpo", LocalRunContext(run_checkpoints={7: base}, checkpoint_dir=tmp_path / "dpo"),
        **{**SMALL, "base_run": 7, "steps": 5},
    )  # fmt: skip
    assert ctx.values("pretrain_loss") == []
    assert [p.step for p in ctx.points if p.name == "dpo_loss"] == [1, 2, 3, 4, 5]
    saved = torch.load(tmp_path / "dpo" / "step-000000005.pt", weights_only=True)
    charlm = torch.load(base, weights_only=True)
    # the frozen reference is the charlm model itself; the policy moved away from it
    assert all(torch.equal(saved["reference"][k], v) for k, v in charlm["model"].items())
    assert not torch.equal(saved["model"]["tok.weight"], charlm["model"]["tok.weight"])
    assert result.steps == 5
    assert list(ctx.stages) == ["load_data", "train", "export"]  # no base to pre-train


def test_a_base_run_of_another_shape_or_recipe_or_unknown_to_the_runner_is_refused(tmp_path: Path) -> None:
    wide = _charlm_checkpoint(tmp_path / "wide", d_model=64, n_heads=4)
    with pytest.raises(CheckpointMismatchError, match="d_model: base 64, config 32"):
        train("dpo", LocalRunContext(run_checkpoints={3: wide}), **{**SMALL, "base_run": 3})
    train("digits", LocalRunContext(checkpoint_dir=tmp_path / "digits"), epochs=1, hidden=16)
    digits = next((tmp_path / "digits").iterdir())
    with pytest.raises(CheckpointMismatchError, match="from recipe 'digits'"):
        train("dpo", LocalRunContext(run_checkpoints={4: digits}), **{**SMALL, "base_run": 4})
    with pytest.raises(ValueError, match="run #5: no checkpoint file"):
        train("dpo", LocalRunContext(run_checkpoints={3: wide}), **{**SMALL, "base_run": 5})


def test_evaluate_checkpoint_scores_the_implicit_reward_on_held_out_pairs(tmp_path: Path) -> None:
    train("dpo", StopAfter(5, checkpoint_dir=tmp_path / "early"), **SMALL)
    early = evaluate_checkpoint(str(tmp_path / "early" / "step-000000005.pt"))
    # still pre-training: the policy is its own reference and prefers neither completion
    assert early.metrics["preference_accuracy"] == 0.0 and "pre-training" in early.note

    train("dpo", LocalRunContext(checkpoint_dir=tmp_path / "done"), **SMALL)
    done = evaluate_checkpoint(str(tmp_path / "done" / "step-000000040.pt"))
    assert done.metrics["preference_accuracy"] > 0.6 and done.metrics["reward_margin"] > 0
    assert done.metrics["kl"] > 0 and done.note == ""
    assert done.eval_set == early.eval_set and "validation split" in done.eval_set
    assert get_spec("dpo").evaluate_checkpoint(str(tmp_path / "done" / "step-000000040.pt")) == done


def test_evaluate_checkpoint_refuses_another_recipes_checkpoint(tmp_path: Path) -> None:
    train("digits", LocalRunContext(checkpoint_dir=tmp_path), epochs=1, hidden=16)
    with pytest.raises(ValueError, match="not 'dpo'"):
        evaluate_checkpoint(str(next(tmp_path.iterdir())))


def test_injected_nan_reaches_the_dpo_loss_and_training_carries_on() -> None:
    ctx, result = train("dpo", **{**SMALL, "inject_nan_at_step": 25})
    losses = [p for p in ctx.points if p.name == "dpo_loss"]
    assert all(math.isfinite(p.value) for p in losses if p.step < 25)
    assert all(math.isnan(p.value) for p in losses if p.step >= 25)
    assert result.steps == 40


@pytest.mark.parametrize(
    ("config", "field"),
    [({"completion": 20, "context": 32}, "completion"), ({"beta": 0}, "beta"), ({"n_heads": 3}, "n_heads")],
)
def test_bad_dpo_params_are_refused_by_name(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        get_spec("dpo").clean(config)
    assert set(caught.value.errors) == {field}


def test_the_cli_runs_dpo_from_a_charlm_checkpoint_named_by_run_id(tmp_path: Path) -> None:
    base = _charlm_checkpoint(tmp_path)
    out = io.StringIO()
    argv = ["run", "dpo", "--device", "cpu", "--set", "base_run=9", "--run-checkpoint", f"9={base}"]
    argv += [f"--set={k}={v}" for k, v in {**SMALL, "steps": 3}.items()]
    assert main(argv, out=out) == 0
    *points, last = (json.loads(line) for line in out.getvalue().splitlines())
    assert {p["name"] for p in points} == {
        "dpo_loss",
        "reward_margin",
        "reward_accuracy",
        "kl",
        "val_reward_accuracy",
    }
    assert last["summary"]["steps"] == 3 and last["summary"]["config"]["base_run"] == 9


def test_the_cli_asks_for_the_base_runs_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "dpo", "--set", "base_run=9"]) == 2
    assert "--run-checkpoint 9=PATH" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dpo_trains_on_cuda_in_bf16() -> None:
    ctx, result = train("dpo", LocalRunContext(device="cuda"), pretrain_steps=200, steps=100)
    assert all(math.isfinite(v) for v in ctx.values("dpo_loss"))
    assert result.final_metrics["val_reward_accuracy"] > 0.7
    assert ctx.values("kl")[-1] > 0


def test_a_config_naming_both_a_base_run_and_a_base_experiment_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        get_spec("dpo").clean({"base_run": 3, "base_experiment": 4})
    assert refused.value.errors == {
        "base_experiment": "name one starting model: base_run or base_experiment, not both"
    }
    assert get_spec("dpo").clean({"base_experiment": 4})["base_experiment"] == 4


def test_dpo_starts_from_an_upstream_charlm_experiment_handed_over_by_id(tmp_path: Path) -> None:
    base = tmp_path / "charlm" / "base.pt"
    charlm = LocalRunContext(checkpoint_dir=base.parent, out=io.StringIO())
    get_spec("charlm").load().train(charlm, {**MODEL, "steps": 5, "batch_size": 4, "eval_every": 5})
    base = sorted(base.parent.glob("step-*.pt"))[-1]
    ctx = LocalRunContext(checkpoint_dir=tmp_path / "dpo", out=io.StringIO(), upstreams={12: base})
    get_spec("dpo").load().train(ctx, {**SMALL, "steps": 5, "base_experiment": 12})
    assert not [p for p in ctx.points if p.name == "pretrain_loss"]
    saved = torch.load(sorted((tmp_path / "dpo").glob("step-*.pt"))[-1], weights_only=True)
    reference = torch.load(base, weights_only=True)["model"]
    assert all(torch.equal(saved["reference"][k], reference[k]) for k in reference)
    with pytest.raises(ValueError, match="experiment #9: no checkpoint given"):
        get_spec("dpo").load().train(LocalRunContext(), {**SMALL, "base_experiment": 9})
