"""grpo: Group Relative Policy Optimisation (Shao et al., 2024) of a tiny transformer that reverses digits.

A prompt is a string of `length` random digits followed by "="; the policy (charlm's model
class, its outputs restricted to the ten digits) writes `length` digits, and the reward is the
share of them that spell the prompt reversed. For each prompt it samples group_size answers;
each answer's advantage is its reward against its own group's mean and spread, so no value
network is needed. The update is PPO's clipped objective on those advantages plus a KL penalty
to a frozen copy of the initial policy.

One prompt in ten (chosen by a fixed hash of its digits) is held out: training never samples
it, and evaluate_checkpoint scores greedy answers on exactly those.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import CheckpointEvaluation, Recipe, RecipeResult, RunContext
from .catalog import get_spec
from .charlm import ByteTransformer
from .outputs import completed_stages, save_artifact, stage
from .runtime import (
    autocast,
    inject_nan,
    make_optimizer,
    params_finite,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    start_run,
    step_delay,
)
from .schema import ParamValue

SPEC = get_spec("grpo")
ARCH = ("d_model", "n_layers", "n_heads", "length")
GRAD_CLIP = 1.0
DIGITS = torch.arange(ord("0"), ord("9") + 1)  # the byte of each digit, the policy's only outputs
SEPARATOR = ord("=")
HELD_OUT_BUCKETS = 10  # one prompt in ten is held out
EPS = 1e-6
SAMPLE_PROMPTS = 8  # held-out prompts shown in the samples.json artifact


def held_out(prompts: torch.Tensor) -> torch.Tensor:
    """Return a mask of the prompts (rows of digit values) kept out of training."""
    value = torch.zeros(len(prompts), dtype=torch.int64, device=prompts.device)
    for column in prompts.T:
        value = value * 10 + column
    # Knuth's multiplicative hash scatters neighbouring numbers over the buckets.
    return (value * 2654435761 % 2**32) % HELD_OUT_BUCKETS == 0


def held_out_prompts(length: int) -> torch.Tensor:
    """Return every held-out prompt of length digits, in numeric order (at most the first 1000)."""
    found: list[torch.Tensor] = []
    count = 0
    for start in range(0, 10**length, 100_000):
        values = torch.arange(start, min(start + 100_000, 10**length))
        prompts = torch.stack([values // 10**i % 10 for i in reversed(range(length))], dim=1)
        keep = prompts[held_out(prompts)]
        found.append(keep)
        count += len(keep)
        if count >= 1000:
            break
    return torch.cat(found)[:1000]


def train_prompts(*, count: int, length: int, seed: int, step: int) -> torch.Tensor:
    """Return one step's prompts, never a held-out one: a function of (seed, step), like charlm's batches."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    kept: list[torch.Tensor] = []
    have = 0
    while have < count:
        draw = torch.randint(0, 10, (2 * count, length), generator=gen)
        draw = draw[~held_out(draw)]
        kept.append(draw)
        have += len(draw)
    return torch.cat(kept)[:count]


def reward(prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Return each answer's share of digits equal to its prompt reversed."""
    return (answers == prompts.flip(1)).float().mean(1)


def sequences(prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Return the bytes "<prompt>=<answer>" for rows of digit values."""
    digits = DIGITS.to(prompts.device)
    sep = torch.full((len(prompts), 1), SEPARATOR, dtype=torch.long, device=prompts.device)
    return torch.cat([digits[prompts], sep, digits[answers]], dim=1)


def answer_logits(
    model: nn.Module, prompts: torch.Tensor, answers: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Return float32 logits over the ten digits at each answer position, shape (batch, length, 10)."""
    length = prompts.shape[1]
    seq = sequences(prompts, answers)
    with autocast(device):
        logits = model(seq[:, :-1])
    # Position p predicts byte p+1: the answer's digits are predicted from "=" on.
    return logits[:, length:, DIGITS.to(device)].float()


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: torch.Tensor,
    *,
    temperature: float,
    gen: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """Return answers (digit values) sampled at temperature, or greedy ones when gen is None."""
    model.eval()
    length = prompts.shape[1]
    answers = torch.zeros((len(prompts), 0), dtype=torch.long, device=device)
    digits = DIGITS.to(device)
    for _ in range(length):
        sep = torch.full((len(prompts), 1), SEPARATOR, dtype=torch.long, device=device)
        seq = torch.cat([digits[prompts], sep, digits[answers]], dim=1)
        with autocast(device):
            logits = model(seq)
        last = logits[:, -1, digits].float()
        if gen is None:
            pick = last.argmax(-1)
        else:
            # Uniforms from a CPU generator seeded per step, inverted through the CDF: the same
            # samples on every device and in a resumed run.
            u = torch.rand(len(prompts), generator=gen).to(device)
            cdf = F.softmax(last / temperature, dim=-1).cumsum(-1)
            pick = torch.searchsorted(cdf, u[:, None]).squeeze(1).clamp(max=len(digits) - 1)
        answers = torch.cat([answers, pick[:, None]], dim=1)
    model.train()
    return answers


@dataclass(frozen=True)
class GroupBatch:
    """One step's sampled groups: prompts repeated group_size times, answers, rewards, advantages."""

    prompts: torch.Tensor
    answers: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Return each reward against its group's mean, in units of the group's spread (0 where all agree)."""
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(1, keepdim=True)
    std = grouped.std(1, keepdim=True)
    return ((grouped - mean) / (std + EPS)).flatten()


def sample_groups(
    policy: nn.Module, config: dict[str, ParamValue], *, seed: int, step: int, device: torch.device
) -> GroupBatch:
    """Return the step's prompts, group_size sampled answers each, their rewards and advantages."""
    group_size = int(config["group_size"])
    prompts = train_prompts(count=int(config["prompts"]), length=int(config["length"]), seed=seed, step=step)
    prompts = prompts.repeat_interleave(group_size, dim=0).to(device)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
    answers = generate(policy, prompts, temperature=float(config["temperature"]), gen=gen, device=device)
    rewards = reward(prompts, answers)
    return GroupBatch(prompts, answers, rewards, group_advantages(rewards, group_size))


@dataclass(frozen=True)
class UpdateStats:
    """The figures of one optimiser step on a batch of groups (tensors, not yet synced)."""

    loss: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor


def grpo_loss(
    policy: nn.Module,
    batch: GroupBatch,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    clip: float,
    beta: float,
    temperature: float,
    device: torch.device,
) -> UpdateStats:
    """Return -mean(min(ratio*A, clip(ratio)*A) - beta*KL) over answer digits, with the KL and the entropy."""
    logits = answer_logits(policy, batch.prompts, batch.answers, device) / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, batch.answers[..., None]).squeeze(-1)
    ratio = torch.exp(logp - old_logp)
    advantages = batch.advantages[:, None]
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    # The k3 estimator of KL(π ‖ π_ref) on the sampled digits: unbiased and never negative.
    log_ratio = ref_logp - logp
    kl = torch.exp(log_ratio) - log_ratio - 1
    loss = -(surrogate - beta * kl).mean()
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    return UpdateStats(loss=loss, kl=kl.detach().mean(), entropy=entropy.detach())


@torch.no_grad()
def digit_logprobs(
    model: nn.Module, batch: GroupBatch, temperature: float, device: torch.device
) -> torch.Tensor:
    """Return the log-probability of each answer digit under model, at the sampling temperature."""
    logits = answer_logits(model, batch.prompts, batch.answers, device) / temperature
    return F.log_softmax(logits, dim=-1).gather(-1, batch.answers[..., None]).squeeze(-1)


@torch.no_grad()
def mean_return(model: nn.Module, length: int, device: torch.device) -> float:
    """Return the mean reward of greedy answers to every held-out prompt."""
    prompts = held_out_prompts(length).to(device)
    answers = generate(model, prompts, temperature=1.0, gen=None, device=device)
    return float(reward(prompts, answers).mean())


@torch.no_grad()
def sample_answers(
    model: nn.Module, length: int, device: torch.device, count: int = SAMPLE_PROMPTS
) -> list[dict[str, Any]]:
    """Return the first count held-out prompts with the model's greedy answers and their rewards."""
    prompts = held_out_prompts(length)[:count].to(device)
    answers = generate(model, prompts, temperature=1.0, gen=None, device=device)
    rewards = reward(prompts, answers).tolist()

    def text(row: torch.Tensor) -> str:
        return "".join(str(d) for d in row.tolist())

    return [
        {"prompt": text(p), "answer": text(a), "expected": text(p.flip(0)), "reward": r}
        for p, a, r in zip(prompts, answers, rewards, strict=True)
    ]


def build_model(config: dict[str, Any], device: torch.device) -> ByteTransformer:
    """Return the policy for config: charlm's model with room for "<prompt>=<answer>"."""
    return ByteTransformer(
        d_model=int(config["d_model"]),
        n_layers=int(config["n_layers"]),
        n_heads=int(config["n_heads"]),
        context=2 * int(config["length"]) + 1,
    ).to(device)


class GRPORecipe:
    """Reinforcement learning with GRPO; resumable at any step."""

    name = SPEC.name
    summary = SPEC.summary
    params = SPEC.params

    def train(self, ctx: RunContext, config: dict[str, ParamValue]) -> RecipeResult:
        """Train (or resume) the policy, logging reward_mean/std, kl, entropy, loss each step."""
        config, device, seed = start_run(SPEC, ctx, config)
        done_stages = completed_stages(ctx)
        policy = build_model(config, device)
        reference = copy.deepcopy(policy).requires_grad_(False)
        lr = float(config["lr"])
        optimizer = make_optimizer(policy.parameters(), lr=lr, weight_decay=0.0, device=device)
        arch = {k: config[k] for k in ARCH}
        done = 0

        metrics: dict[str, float] = {}  # the latest value of each metric, kept across attempts
        resumed = resume_checkpoint(
            ctx,
            recipe=self.name,
            arch=arch,
            device=device,
            models={"model": policy, "reference": reference},
            optimizers={"optimizer": optimizer},
            lr=lr,
            weight_decay=0.0,
            metrics=metrics,
        )
        if resumed is not None:
            done = int(resumed["step"])

        def checkpoint() -> None:
            state: dict[str, Any] = {
                "recipe": self.name,
                "arch": arch,
                "model": policy.state_dict(),
                "reference": reference.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": done,
                "rng": rng_state(device),
                "metrics": dict(metrics),
            }
            save_checkpoint(ctx, done, state, policy)

        steps, eval_every = int(config["steps"]), int(config["eval_every"])
        clip, beta = float(config["clip"]), float(config["beta"])
        temperature, length = float(config["temperature"]), int(config["length"])
        stopped = False
        with stage(ctx, "train") as mark:
            while done < steps:
                if ctx.should_stop():
                    stopped = True
                    break
                step = done + 1
                batch = sample_groups(policy, config, seed=seed, step=step, device=device)
                old_logp = digit_logprobs(policy, batch, temperature, device)
                ref_logp = digit_logprobs(reference, batch, temperature, device)
                for _ in range(int(config["ppo_epochs"])):
                    stats = grpo_loss(
                        policy,
                        batch,
                        old_logp,
                        ref_logp,
                        clip=clip,
                        beta=beta,
                        temperature=temperature,
                        device=device,
                    )
                    loss = inject_nan(stats.loss, step, config)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(policy.parameters(), GRAD_CLIP)
                    optimizer.step()
                # One device sync for the step's figures (the last optimiser step's loss, KL and entropy).
                values = torch.stack(
                    [batch.rewards.mean(), batch.rewards.std(), stats.kl, stats.entropy, loss.detach()]
                ).tolist()
                for name, value in zip(
                    ("reward_mean", "reward_std", "kl", "entropy", "loss"), values, strict=True
                ):
                    metrics[name] = value
                    ctx.log(name, step, value)
                done = step
                step_delay(config)
                ctx.progress(done / steps)
                if done % eval_every == 0 or done == steps:
                    metrics["mean_return"] = mean_return(policy, length, device)
                    ctx.log("mean_return", done, metrics["mean_return"])
                    checkpoint()
            if stopped:
                checkpoint()
                mark.abandon()
            elif "train" in done_stages:
                mark.abandon()  # an earlier attempt finished it; this one only resumed past the end
        if not stopped:
            ctx.progress(1.0)
        # NaN weights (a diverged run) answer nothing worth showing: such a run exports nothing.
        if not stopped and "export" not in done_stages and params_finite(policy):
            with stage(ctx, "export"):
                samples = sample_answers(policy, length, device)
                save_artifact(ctx, "samples.json", json.dumps(samples, indent=2), kind="samples")
        return RecipeResult(final_metrics=metrics, steps=done, stopped=stopped)


RECIPE: Recipe = GRPORecipe()  # annotated so that mypy checks the protocol


def evaluate_checkpoint(path: str) -> CheckpointEvaluation:
    """Load a grpo checkpoint; return the mean reward of its greedy answers to the held-out prompts."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("recipe") != SPEC.name:
        raise ValueError(f"checkpoint is from recipe {state.get('recipe')!r}, not {SPEC.name!r}")
    arch = state["arch"]
    device = torch.device("cpu")
    policy = build_model(arch, device)
    policy.load_state_dict(state["model"])
    length = int(arch["length"])
    prompts = held_out_prompts(length)
    answers = generate(policy, prompts, temperature=1.0, gen=None, device=device)
    rewards = reward(prompts, answers)
    metrics = {"mean_return": float(rewards.mean()), "solved": float((rewards == 1.0).float().mean())}
    eval_set = f"grpo held-out reversal prompts of {length} digits ({len(prompts)}, greedy answers)"
    return CheckpointEvaluation(metrics=metrics, eval_set=eval_set)
