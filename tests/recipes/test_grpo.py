"""The grpo recipe: group advantages, held-out prompts, a rising reward, exact resume, evaluation."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.recipes import ConfigError, get_spec
from experiments.recipes.cli import main
from experiments.recipes.grpo import (
    evaluate_checkpoint,
    group_advantages,
    held_out,
    held_out_prompts,
    train_prompts,
)
from experiments.recipes.local import LocalRunContext
from tests.recipes.test_recipes import StopAfter, train

SMALL: dict[str, Any] = {
    "length": 2, "steps": 40, "prompts": 16, "group_size": 4, "d_model": 32, "n_layers": 1, "n_heads": 2,
    "lr": 0.003, "eval_every": 20,
}  # fmt: skip
FIGURES = ("reward_mean", "reward_std", "kl", "entropy", "loss")


def test_advantages_are_relative_to_each_group_and_zero_where_a_group_agrees() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
    advantages = group_advantages(rewards, 4)
    first, second = advantages[:4], advantages[4:]
    assert first.sum().abs() < 1e-6 and first[0] > first[2] == first[3] > first[1]
    assert first.std().item() == pytest.approx(1.0, abs=1e-4)
    assert second.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_training_never_samples_a_held_out_prompt_and_evaluation_uses_only_those() -> None:
    seen = torch.cat([train_prompts(count=64, length=2, seed=0, step=s) for s in range(1, 200)])
    assert not held_out(seen).any()
    assert len({tuple(p) for p in seen.tolist()}) == 89  # every other two-digit prompt is drawn
    evaluation = held_out_prompts(2)
    assert len(evaluation) == 11 and held_out(evaluation).all()
    assert len(held_out_prompts(4)) == 1000 and held_out(held_out_prompts(4)).all()


def test_grpo_reward_rises_as_the_policy_leaves_its_reference() -> None:
    ctx, result = train("grpo", **SMALL)
    assert {p.name for p in ctx.points} == set(get_spec("grpo").metrics)  # declared, and nothing else
    for name in FIGURES:
        assert [p.step for p in ctx.points if p.name == name] == list(range(1, 41))
    rewards = ctx.values("reward_mean")
    assert rewards[0] < 0.3  # one digit in ten by chance
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.2
    entropy = ctx.values("entropy")
    assert entropy[0] == pytest.approx(math.log(10), abs=0.05) and entropy[-1] < entropy[0]
    # logged after the step's updates: the first step has barely moved the policy from its reference
    kl = ctx.values("kl")
    assert 0 < kl[0] < 0.05 and kl[-1] > kl[0]
    assert len(ctx.values("mean_return")) == 2
    assert not result.stopped and result.steps == 40 and ctx.fraction == 1.0


def test_grpo_records_its_stages_and_saves_greedy_answers_to_held_out_prompts(tmp_path: Path) -> None:
    ctx, _ = train("grpo", LocalRunContext(checkpoint_dir=tmp_path), **SMALL)
    assert list(ctx.stages) == ["train", "export"]
    samples = json.loads((tmp_path / "artifacts" / "samples.json").read_text())
    held = held_out_prompts(SMALL["length"])[:8]
    assert [s["prompt"] for s in samples] == ["".join(map(str, p)) for p in held.tolist()]
    for sample in samples:
        assert sample["expected"] == sample["prompt"][::-1] and len(sample["answer"]) == SMALL["length"]
        right = sum(a == e for a, e in zip(sample["answer"], sample["expected"], strict=True))
        assert sample["reward"] == pytest.approx(right / SMALL["length"])
    # after 40 updates the policy gets some held-out digits right (one in ten by chance)
    assert sum(s["reward"] for s in samples) > 0


def test_a_resumed_grpo_run_records_train_once_it_finishes(tmp_path: Path) -> None:
    first, _ = train("grpo", StopAfter(7, checkpoint_dir=tmp_path), **SMALL)
    assert first.stages == {} and not (tmp_path / "artifacts").exists()
    second, _ = train("grpo", LocalRunContext(checkpoint_dir=tmp_path), **SMALL)
    assert list(second.stages) == ["train", "export"]
    # a third attempt on a finished run trains nothing and records nothing again
    third, result = train("grpo", LocalRunContext(checkpoint_dir=tmp_path), **SMALL)
    assert third.points == [] and result.steps == SMALL["steps"]
    assert third.stages == second.stages


def test_the_same_seed_gives_the_same_grpo_figures() -> None:
    config = {**SMALL, "steps": 8}
    first, _ = train("grpo", **config, seed=5)
    second, _ = train("grpo", **config, seed=5)
    other, _ = train("grpo", **config, seed=6)
    assert first.points == second.points
    assert first.values("reward_mean") != other.values("reward_mean")


@pytest.mark.parametrize("stop_after", [7, 20])  # between evaluations, at one
def test_a_stopped_grpo_run_resumed_from_its_checkpoint_logs_what_an_uninterrupted_run_logs(
    stop_after: int, tmp_path: Path
) -> None:
    whole, whole_result = train("grpo", **SMALL)
    first, first_result = train("grpo", StopAfter(stop_after, checkpoint_dir=tmp_path), **SMALL)
    assert first_result.stopped and first_result.steps == stop_after
    assert first.saved_steps[-1] == stop_after
    second, second_result = train("grpo", LocalRunContext(checkpoint_dir=tmp_path), **SMALL)
    assert min(p.step for p in second.points) == stop_after + 1
    assert first.points + second.points == whole.points
    assert second_result.final_metrics == whole_result.final_metrics


def test_evaluate_checkpoint_scores_greedy_answers_on_held_out_prompts(tmp_path: Path) -> None:
    train("grpo", StopAfter(1, checkpoint_dir=tmp_path / "early"), **SMALL)
    early = evaluate_checkpoint(str(tmp_path / "early" / "step-000000001.pt"))
    ctx, _ = train("grpo", LocalRunContext(checkpoint_dir=tmp_path / "done"), **{**SMALL, "steps": 80})
    done = evaluate_checkpoint(str(tmp_path / "done" / "step-000000080.pt"))
    assert done.metrics["mean_return"] > early.metrics["mean_return"] + 0.3
    assert done.metrics["mean_return"] == ctx.values("mean_return")[-1]
    assert 0.0 <= done.metrics["solved"] <= done.metrics["mean_return"]
    assert done.eval_set == early.eval_set and "held-out" in done.eval_set
    assert get_spec("grpo").evaluate_checkpoint(str(tmp_path / "done" / "step-000000080.pt")) == done


def test_injected_nan_reaches_the_grpo_loss_and_training_carries_on() -> None:
    ctx, result = train("grpo", **{**SMALL, "steps": 12, "inject_nan_at_step": 5})
    losses = [p for p in ctx.points if p.name == "loss"]
    assert all(math.isfinite(p.value) for p in losses if p.step < 5)
    assert all(math.isnan(p.value) for p in losses if p.step >= 5)
    assert result.steps == 12


@pytest.mark.parametrize(
    ("config", "field"),
    [({"group_size": 1}, "group_size"), ({"length": 40}, "length"), ({"d_model": 30}, "n_heads")],
)
def test_bad_grpo_params_are_refused_by_name(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        get_spec("grpo").clean(config)
    assert set(caught.value.errors) == {field}


def test_the_cli_runs_grpo_and_prints_its_figures(tmp_path: Path) -> None:
    out = io.StringIO()
    argv = ["run", "grpo", "--device", "cpu", "--checkpoint-dir", str(tmp_path)]
    argv += [f"--set={k}={v}" for k, v in {**SMALL, "steps": 4, "eval_every": 2}.items()]
    assert main(argv, out=out) == 0
    *points, last = (json.loads(line) for line in out.getvalue().splitlines())
    assert {p["name"] for p in points} == {*FIGURES, "mean_return"}
    assert last["summary"]["steps"] == 4 and set(last["summary"]["final_metrics"]) == {
        *FIGURES,
        "mean_return",
    }
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step-000000002.pt", "step-000000004.pt"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grpo_trains_on_cuda_in_bf16() -> None:
    ctx, result = train("grpo", LocalRunContext(device="cuda"), steps=150)
    rewards = ctx.values("reward_mean")
    assert all(math.isfinite(v) for v in ctx.values("loss"))
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.3
    assert result.final_metrics["mean_return"] > 0.5
