"""What every recipe's loop shares: seeding, device choice, optimiser, NaN injection, checkpoints."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import RunContext
from .catalog import RecipeSpec
from .schema import ParamValue


class CheckpointMismatchError(ValueError):
    """A checkpoint was taken with a different model shape than the config now asks for."""


def resolve_device(name: str) -> torch.device:
    """Return the torch device for "cpu", "cuda", "cuda:N" or "auto"; refuse CUDA when absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    if device.type not in {"cpu", "cuda"}:
        raise ValueError(f"device {name!r} is not supported (cpu, cuda, auto)")
    return device


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed python, numpy and torch; make CPU kernels deterministic (same seed → same losses)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    # Deterministic kernels are free on CPU. On CUDA they would need CUBLAS_WORKSPACE_CONFIG set
    # before CUDA starts and slow some kernels, so a GPU run asks only for what is cheap. The flag is
    # process-wide, hence set both ways: a CPU run earlier in the same worker must not break a GPU one.
    torch.use_deterministic_algorithms(device.type == "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def start_run(
    spec: RecipeSpec, ctx: RunContext, config: dict[str, ParamValue]
) -> tuple[dict[str, ParamValue], torch.device, int]:
    """Return (clean config, ctx's device, config's seed), every RNG seeded from that seed."""
    config = spec.clean(config)
    device = resolve_device(ctx.device)
    seed = int(config["seed"])
    # Before the caller builds its data and models: their initial weights follow from the seed.
    seed_everything(seed, device)
    return config, device, seed


def rng_state(device: torch.device) -> dict[str, Any]:
    """Return every RNG's state in a form torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Put every RNG back where rng_state() found it."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def make_optimizer(
    params: Iterator[nn.Parameter], *, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """Return AdamW: the fused CUDA kernel on a GPU, the plain one on CPU."""
    if device.type == "cuda":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def set_hyperparams(optimizer: torch.optim.Optimizer, *, lr: float, weight_decay: float) -> None:
    """Apply the config's lr/weight decay after loading an optimiser (a requeue may change them)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Return bf16 autocast on CUDA, a no-op on CPU (CPU runs stay in float32)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inject_nan(loss: torch.Tensor, step: int, config: dict[str, ParamValue]) -> torch.Tensor:
    """Return loss, or NaN from config's inject_nan_at_step on (it flows into the gradients too)."""
    at = int(config["inject_nan_at_step"])
    if 0 <= at <= step:
        return loss * float("nan")
    return loss


def step_delay(config: dict[str, ParamValue]) -> None:
    """Sleep step_delay_ms after an optimiser step, so that a demo run is watchable live."""
    delay = float(config["step_delay_ms"])
    if delay > 0:
        time.sleep(delay / 1000.0)


def params_finite(*models: nn.Module) -> bool:
    """Return True when every parameter of every model is finite."""
    return all(bool(torch.isfinite(p).all()) for model in models for p in model.parameters())


def save_checkpoint(ctx: RunContext, step: int, state: dict[str, Any], *models: nn.Module) -> bool:
    """Save state unless the weights went NaN/inf, so the last checkpoint stays a good one.

    An early-stop policy restarts from the last checkpoint: one holding NaN weights would only
    reproduce the failure. Returns whether a checkpoint was written.
    """
    if not params_finite(*models):
        return False
    ctx.save_checkpoint(step, state)
    return True


def check_checkpoint(state: dict[str, Any], *, recipe: str, arch: dict[str, Any]) -> None:
    """Refuse another recipe's checkpoint, or one whose model shape differs from the config's."""
    if state.get("recipe") != recipe:
        raise CheckpointMismatchError(f"checkpoint is from recipe {state.get('recipe')!r}, not {recipe!r}")
    saved = state["arch"]
    diff = {k: (saved.get(k), v) for k, v in arch.items() if saved.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {old!r}, config {new!r}" for k, (old, new) in diff.items())
        raise CheckpointMismatchError(f"checkpoint does not fit this config ({detail})")


def resume_checkpoint(
    ctx: RunContext,
    *,
    recipe: str,
    arch: dict[str, Any],
    device: torch.device,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    lr: float,
    weight_decay: float,
    metrics: dict[str, float],
) -> dict[str, Any] | None:
    """Load ctx's last checkpoint into models, optimisers, RNGs and metrics; return it, or None."""
    # models and optimizers are keyed as in the saved state; the caller reads its own position
    # (step, phase …) from the state returned.
    loaded = ctx.load_checkpoint()
    if loaded is None:
        return None
    _, state = loaded
    check_checkpoint(state, recipe=recipe, arch=arch)
    for key, model in models.items():
        model.load_state_dict(state[key])
    for key, optimizer in optimizers.items():
        optimizer.load_state_dict(state[key])
        # The checkpoint holds the old lr/weight decay; a requeue may have changed them.
        set_hyperparams(optimizer, lr=lr, weight_decay=weight_decay)
    restore_rng_state(state["rng"], device)
    metrics.update(state["metrics"])
    return state


def finite_or_none(value: float) -> float | None:
    """Return value, or None when it is NaN or infinite (JSON has no NaN)."""
    return value if math.isfinite(value) else None
