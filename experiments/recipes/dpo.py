"""dpo: Direct Preference Optimisation of charlm's byte-level transformer (Rafailov et al., 2023).

The preference pairs come from charlm's corpus (Python standard library source): a prompt is the
code before a closing bracket, the chosen completion is the code as written from that bracket
on, and the rejected one is the same bytes with the bracket swapped for a mismatched one
(`)` for `]`, `]` or `}` for `)`), so that its brackets no longer balance. Pairs for training
come from charlm's training split, held-out pairs from its validation split only.

The policy starts from a charlm checkpoint (config base_run: the id of a run, resolved by
whoever runs the recipe, never a file path in the config; or base_experiment: a charlm
experiment this one depends on, whose final checkpoint a pipeline hands over) or, without one,
from a base model pre-trained here first; a frozen copy of that start is the reference the implicit reward
beta * (log p_policy - log p_reference) is measured against.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from .base import CheckpointEvaluation, Recipe, RecipeResult, RunContext, UpstreamModels
from .catalog import get_spec
from .charlm import SPEC as CHARLM_SPEC
from .charlm import ByteTransformer, corpus_split, get_batch
from .charlm import train_step as lm_train_step
from .outputs import completed_stages, save_artifact, stage
from .runtime import (
    CheckpointMismatchError,
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

SPEC = get_spec("dpo")
ARCH = ("d_model", "n_layers", "n_heads", "context", "completion")
MODEL_ARCH = ("d_model", "n_layers", "n_heads", "context")  # what a charlm base must match
GRAD_CLIP = 1.0
PRETRAIN, DPO = "pretrain", "dpo"
# A mismatched closer for each closing bracket: the rejected completion no longer balances.
MISMATCH = {ord(")"): ord("]"), ord("]"): ord(")"), ord("}"): ord(")")}
PAIR_SALT = 7_919  # keeps the pair draws apart from the pre-training batches of the same step
SAMPLE_PAIRS = 4  # held-out pairs shown in the samples.json artifact


@runtime_checkable
class CheckpointHost(Protocol):
    """A runner that can hand over another run's checkpoint (a worker, the CLI with --run-checkpoint)."""

    def run_checkpoint_path(self, run_id: int) -> str:
        """Return the verified checkpoint file of run run_id, or raise ValueError saying why not."""


@dataclass(frozen=True)
class PairSource:
    """Where preference pairs can be cut from one split: every closing bracket with room around it."""

    data: torch.Tensor  # the split's bytes (uint8) on the run's device
    positions: torch.Tensor  # offsets of closing brackets usable as the start of a completion
    prompt: int  # bytes of prompt before each completion
    completion: int

    def pairs(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (chosen, rejected) sequences of prompt+completion bytes, as longs."""
        window = (
            positions[:, None]
            - self.prompt
            + torch.arange(self.prompt + self.completion, device=self.data.device)
        )
        chosen = self.data[window].long()
        rejected = chosen.clone()
        closer = rejected[:, self.prompt]
        swapped = closer.clone()
        for original, wrong in MISMATCH.items():
            swapped[closer == original] = wrong
        rejected[:, self.prompt] = swapped
        return chosen, rejected

    def train_batch(self, *, batch_size: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return one step's pairs: random closers, a function of (seed, step) like charlm's batches."""
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step + PAIR_SALT)
        picks = torch.randint(0, len(self.positions), (batch_size,), generator=gen)
        return self.pairs(self.positions[picks.to(self.positions.device)])

    def fixed(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return count pairs spread evenly over the split (the same for every seed)."""
        picks = torch.linspace(0, len(self.positions) - 1, min(count, len(self.positions))).long()
        return self.pairs(self.positions[picks.to(self.positions.device)])


def pair_source(data: torch.Tensor, *, context: int, completion: int) -> PairSource:
    """Return the pairs one split offers for sequences of context bytes ending in completion bytes."""
    prompt = context - completion
    is_closer = torch.zeros_like(data, dtype=torch.bool)
    for closer in MISMATCH:
        is_closer |= data == closer
    positions = torch.nonzero(is_closer).flatten()
    positions = positions[(positions >= prompt) & (positions + completion <= len(data))]
    if len(positions) == 0:
        raise RuntimeError("the corpus split holds no closing bracket to build preference pairs from")
    return PairSource(data=data, positions=positions, prompt=prompt, completion=completion)


def completion_logprobs(
    model: nn.Module, sequences: torch.Tensor, completion: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (summed log-probability of each completion, log-softmax at its positions), float32."""
    with autocast(device):
        logits = model(sequences[:, :-1])
    logp = F.log_softmax(logits[:, -completion:].float(), dim=-1)
    targets = sequences[:, -completion:]
    return logp.gather(-1, targets[..., None]).squeeze(-1).sum(-1), logp


@dataclass(frozen=True)
class PreferenceStats:
    """One batch's DPO loss and the figures the recipe logs about it (tensors, not yet synced)."""

    loss: torch.Tensor
    reward_margin: torch.Tensor
    reward_accuracy: torch.Tensor
    kl: torch.Tensor


def preference_stats(
    policy: nn.Module,
    reference: nn.Module,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    beta: float,
    completion: int,
    device: torch.device,
) -> PreferenceStats:
    """Return the DPO loss -log sigmoid(beta * (chosen reward - rejected reward)), its margin, accuracy and KL."""
    both = torch.cat([chosen, rejected])
    policy_sum, policy_logp = completion_logprobs(policy, both, completion, device)
    with torch.no_grad():
        ref_sum, ref_logp = completion_logprobs(reference, both, completion, device)
    n = len(chosen)
    # The implicit rewards: how much more likely each completion became than under the reference.
    rewards = beta * (policy_sum - ref_sum)
    margin = rewards[:n] - rewards[n:]
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        # Full-distribution KL(π ‖ π_ref) at each completion byte (256 outcomes: exact, not sampled).
        kl = (policy_logp.exp() * (policy_logp - ref_logp)).sum(-1).mean()
    return PreferenceStats(
        loss=loss,
        reward_margin=margin.detach().mean(),
        # Strictly above: at the start policy and reference agree, every margin is 0 and none wins.
        reward_accuracy=(margin.detach() > 0).float().mean(),
        kl=kl,
    )


@torch.no_grad()
def held_out_stats(
    policy: nn.Module,
    reference: nn.Module,
    pairs: tuple[torch.Tensor, torch.Tensor],
    *,
    beta: float,
    completion: int,
    device: torch.device,
    batch_size: int = 128,
) -> dict[str, float]:
    """Return preference_accuracy, reward_margin and kl over held-out pairs (evaluated in batches)."""
    policy.eval()
    chosen, rejected = pairs
    wins = margin = kl = 0.0
    for start in range(0, len(chosen), batch_size):
        c, r = chosen[start : start + batch_size], rejected[start : start + batch_size]
        stats = preference_stats(policy, reference, c, r, beta=beta, completion=completion, device=device)
        wins += float(stats.reward_accuracy) * len(c)
        margin += float(stats.reward_margin) * len(c)
        kl += float(stats.kl) * len(c)
    policy.train()
    n = len(chosen)
    return {"preference_accuracy": wins / n, "reward_margin": margin / n, "kl": kl / n}


@torch.no_grad()
def sample_pairs(
    policy: nn.Module,
    reference: nn.Module,
    pairs: tuple[torch.Tensor, torch.Tensor],
    *,
    beta: float,
    completion: int,
    device: torch.device,
    count: int = SAMPLE_PAIRS,
) -> list[dict[str, Any]]:
    """Return the first count held-out pairs as text, with each completion's implicit reward."""
    policy.eval()
    chosen, rejected = pairs[0][:count], pairs[1][:count]
    both = torch.cat([chosen, rejected])
    policy_sum, _ = completion_logprobs(policy, both, completion, device)
    ref_sum, _ = completion_logprobs(reference, both, completion, device)
    rewards = (beta * (policy_sum - ref_sum)).tolist()
    policy.train()

    def text(sequence: torch.Tensor) -> str:
        return bytes(sequence.tolist()).decode("utf-8", errors="replace")

    n = len(chosen)
    return [
        {
            "prompt": text(chosen[i, :-completion]),
            "chosen": text(chosen[i, -completion:]),
            "rejected": text(rejected[i, -completion:]),
            "chosen_reward": rewards[i],
            "rejected_reward": rewards[n + i],
        }
        for i in range(n)
    ]


def build_model(config: dict[str, ParamValue], device: torch.device) -> ByteTransformer:
    """Return a charlm-shaped model for config, on device."""
    return ByteTransformer(
        d_model=int(config["d_model"]),
        n_layers=int(config["n_layers"]),
        n_heads=int(config["n_heads"]),
        context=int(config["context"]),
    ).to(device)


def load_base(ctx: RunContext, run_id: int, config: dict[str, ParamValue]) -> dict[str, torch.Tensor]:
    """Return the model weights of charlm run run_id's checkpoint, refusing another recipe or shape."""
    if not isinstance(ctx, CheckpointHost):
        raise ValueError(f"base_run {run_id}: this runner cannot read another run's checkpoint")
    path = ctx.run_checkpoint_path(run_id)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return base_weights(state, f"base_run {run_id}", config)


def load_upstream_base(
    ctx: RunContext, experiment_id: int, config: dict[str, ParamValue]
) -> dict[str, torch.Tensor]:
    """Return the model weights of the final checkpoint of upstream charlm experiment experiment_id."""
    if not isinstance(ctx, UpstreamModels):
        raise ValueError(
            f"base_experiment {experiment_id}: this runner cannot hand over another experiment's model"
        )
    state = ctx.upstream_checkpoint(experiment_id)
    return base_weights(state, f"base_experiment {experiment_id}", config)


def base_weights(state: dict[str, Any], label: str, config: dict[str, ParamValue]) -> dict[str, torch.Tensor]:
    """Return a charlm checkpoint's model weights, refusing another recipe or a shape unlike config's."""
    if state.get("recipe") != CHARLM_SPEC.name:
        raise CheckpointMismatchError(
            f"{label}: its checkpoint is from recipe {state.get('recipe')!r}, not 'charlm'"
        )
    saved = state["arch"]
    diff = [
        f"{k}: base {saved.get(k)!r}, config {config[k]!r}" for k in MODEL_ARCH if saved.get(k) != config[k]
    ]
    if diff:
        raise CheckpointMismatchError(f"{label}: its model does not fit this config ({', '.join(diff)})")
    weights: dict[str, torch.Tensor] = state["model"]
    return weights


class DPORecipe:
    """Preference tuning with DPO; resumable at any step of either phase."""

    name = SPEC.name
    summary = SPEC.summary
    params = SPEC.params

    def train(self, ctx: RunContext, config: dict[str, ParamValue]) -> RecipeResult:
        """Pre-train (or load) the base, then DPO against its frozen copy; see the catalog for config."""
        config, device, seed = start_run(SPEC, ctx, config)
        done_stages = completed_stages(ctx)
        context, completion = int(config["context"]), int(config["completion"])
        # The corpus and its pairs live in memory only: a resumed attempt cuts them again (recorded once).
        with stage(ctx, "load_data") as loading:
            train_bytes, val_bytes = corpus_split(device)
            train_pairs = pair_source(train_bytes, context=context, completion=completion)
            val_pairs = pair_source(val_bytes, context=context, completion=completion).fixed(
                int(config["eval_pairs"])
            )
            if "load_data" in done_stages:
                loading.abandon()
        policy = build_model(config, device)
        reference = copy.deepcopy(policy).requires_grad_(False)
        lr, pretrain_lr = float(config["lr"]), float(config["pretrain_lr"])
        pre_opt = make_optimizer(policy.parameters(), lr=pretrain_lr, weight_decay=0.0, device=device)
        dpo_opt = make_optimizer(policy.parameters(), lr=lr, weight_decay=0.0, device=device)
        base_run, base_experiment = int(config["base_run"]), int(config["base_experiment"])
        pretrain_steps = 0 if base_run or base_experiment else int(config["pretrain_steps"])
        total = pretrain_steps + int(config["steps"])
        arch: dict[str, Any] = {k: config[k] for k in ARCH}
        # A resumed run must start from the same base.
        arch["base_run"], arch["base_experiment"] = base_run, base_experiment
        done = 0  # optimiser steps finished, across phases and attempts
        phase = PRETRAIN if pretrain_steps else DPO

        metrics: dict[str, float] = {}  # the latest value of each metric, kept across attempts
        resumed = resume_checkpoint(
            ctx,
            recipe=self.name,
            arch=arch,
            device=device,
            models={"model": policy, "reference": reference},
            optimizers={"pretrain_optimizer": pre_opt, "optimizer": dpo_opt},
            lr=lr,
            weight_decay=0.0,
            metrics=metrics,
        )
        if resumed is not None:
            done, phase = int(resumed["step"]), str(resumed["phase"])
            # resume_checkpoint gave both optimisers the DPO lr; the pre-training one keeps its own.
            for group in pre_opt.param_groups:
                group["lr"] = pretrain_lr
        elif base_run or base_experiment:
            if base_run:
                base = load_base(ctx, base_run, config)
            else:
                base = load_upstream_base(ctx, base_experiment, config)
            policy.load_state_dict(base)
            reference.load_state_dict(base)

        def checkpoint() -> None:
            state: dict[str, Any] = {
                "recipe": self.name,
                "arch": arch,
                "phase": phase,
                "model": policy.state_dict(),
                "reference": reference.state_dict(),
                "pretrain_optimizer": pre_opt.state_dict(),
                "optimizer": dpo_opt.state_dict(),
                "step": done,
                "rng": rng_state(device),
                "metrics": dict(metrics),
                "beta": float(config["beta"]),
            }
            save_checkpoint(ctx, done, state, policy)

        batch_size, eval_every = int(config["batch_size"]), int(config["eval_every"])
        beta = float(config["beta"])

        def advance(until: int) -> bool:
            """Run optimiser steps up to step until, in whichever phase they fall; return True when asked to stop."""
            nonlocal done, phase
            while done < until:
                if ctx.should_stop():
                    return True
                step = done + 1
                if phase == PRETRAIN:
                    x, y = get_batch(
                        train_bytes, batch_size=batch_size, context=context, seed=seed, step=step
                    )
                    loss = lm_train_step(policy, pre_opt, x, y, device, step=step, config=config)
                    metrics["pretrain_loss"] = float(loss)
                    ctx.log("pretrain_loss", step, metrics["pretrain_loss"])
                else:
                    chosen, rejected = train_pairs.train_batch(batch_size=batch_size, seed=seed, step=step)
                    stats = preference_stats(
                        policy, reference, chosen, rejected, beta=beta, completion=completion, device=device
                    )
                    loss = inject_nan(stats.loss, step, config)
                    dpo_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(policy.parameters(), GRAD_CLIP)
                    dpo_opt.step()
                    # One device sync for the four figures.
                    values = torch.stack(
                        [loss.detach(), stats.reward_margin, stats.reward_accuracy, stats.kl]
                    ).tolist()
                    for name, value in zip(
                        ("dpo_loss", "reward_margin", "reward_accuracy", "kl"), values, strict=True
                    ):
                        metrics[name] = value
                        ctx.log(name, step, value)
                done = step
                step_delay(config)
                ctx.progress(done / total)
                if phase == PRETRAIN and done == pretrain_steps:
                    # The base is ready: freeze a copy of it as the reference, then tune the policy.
                    reference.load_state_dict(policy.state_dict())
                    phase = DPO
                    checkpoint()
                elif phase == DPO and (done % eval_every == 0 or done == total):
                    held_out = held_out_stats(
                        policy, reference, val_pairs, beta=beta, completion=completion, device=device
                    )
                    metrics["val_reward_accuracy"] = held_out["preference_accuracy"]
                    ctx.log("val_reward_accuracy", done, metrics["val_reward_accuracy"])
                    checkpoint()
                elif done % eval_every == 0:
                    checkpoint()
            return False

        stopped = False
        if phase == PRETRAIN:
            # The checkpoint's phase says where a resumed attempt stands: a finished base is skipped.
            with stage(ctx, "pretrain") as pretraining:
                stopped = advance(pretrain_steps)
                if stopped:
                    pretraining.abandon()
        if not stopped:
            with stage(ctx, "train") as tuning:
                stopped = advance(total)
                if stopped or "train" in done_stages:
                    tuning.abandon()  # stopped half-way, or finished by an earlier attempt
        if stopped:
            checkpoint()
        else:
            ctx.progress(1.0)
        # NaN weights (a diverged run) give no rewards worth showing: such a run exports nothing.
        if not stopped and "export" not in done_stages and params_finite(policy):
            with stage(ctx, "export"):
                samples = sample_pairs(
                    policy, reference, val_pairs, beta=beta, completion=completion, device=device
                )
                save_artifact(ctx, "samples.json", json.dumps(samples, indent=2), kind="samples")
        return RecipeResult(final_metrics=metrics, steps=done, stopped=stopped)


RECIPE: Recipe = DPORecipe()  # annotated so that mypy checks the protocol


# The held-out pairs every dpo checkpoint is judged on: evenly spread over charlm's validation
# split (the corpus's last tenth), which no dpo or charlm run trains on.
HELD_OUT_PAIRS = 512
HELD_OUT_SET = f"dpo bracket pairs from charlm's validation split ({HELD_OUT_PAIRS} pairs)"


def evaluate_checkpoint(path: str) -> CheckpointEvaluation:
    """Load a dpo checkpoint; return how often its implicit reward prefers the chosen completion."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("recipe") != SPEC.name:
        raise ValueError(f"checkpoint is from recipe {state.get('recipe')!r}, not {SPEC.name!r}")
    arch = state["arch"]
    device = torch.device("cpu")
    policy, reference = build_model(arch, device), build_model(arch, device)
    policy.load_state_dict(state["model"])
    # While pre-training, the reference is not frozen yet: it will be the policy as it stands.
    reference.load_state_dict(state["reference"] if state["phase"] == DPO else state["model"])
    context, completion = int(arch["context"]), int(arch["completion"])
    _, val_bytes = corpus_split(device)
    pairs = pair_source(val_bytes, context=context, completion=completion).fixed(HELD_OUT_PAIRS)
    metrics = held_out_stats(
        policy, reference, pairs, beta=float(state["beta"]), completion=completion, device=device
    )
    note = ""
    if state["phase"] != DPO:
        note = "saved while pre-training the base: the policy still equals its reference"
    return CheckpointEvaluation(
        metrics=metrics, eval_set=f"{HELD_OUT_SET}, completion {completion} bytes", note=note
    )
