"""spiral: an example recipe plug-in for Crucible Control.

A small MLP learns which of three spiral arms a 2-D point lies on. The points are generated from
the config's seed, so the recipe needs no download and the same seed gives the same losses. It
uses only the public recipe API (`experiments.recipes`) and implements the serving protocol
(load_predictor), so its models can be promoted, canaried and rolled back.

torch is imported inside the methods: the web process lists the catalog without loading torch.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments.recipes import Metric, Param, ParamValue, Predictor, RecipeResult, RunContext

if TYPE_CHECKING:
    import torch

N_CLASSES = 3
N_FEATURES = 2


def make_spirals(seed: int, points: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y): `points` 2-D points on three interleaved spiral arms and the arm of each."""
    rng = np.random.default_rng(seed)
    per_arm = points // N_CLASSES
    xs, ys = [], []
    for arm in range(N_CLASSES):
        radius = np.linspace(0.1, 1.0, per_arm)
        angle = radius * 4.0 + arm * 2.0 * math.pi / N_CLASSES + rng.normal(0.0, noise, per_arm)
        xs.append(np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1))
        ys.append(np.full(per_arm, arm))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int64)
    order = rng.permutation(len(y))
    return x[order], y[order]


def split(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return x_train, y_train, x_val, y_val for a config (the last quarter is held out)."""
    x, y = make_spirals(int(config["seed"]), int(config["points"]), float(config["noise"]))
    cut = len(y) * 3 // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]


def build_model(hidden: int) -> torch.nn.Module:
    """Return the MLP: 2 inputs, two hidden layers, 3 logits."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(N_FEATURES, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, N_CLASSES),
    )


class SpiralRecipe:
    """Three-arm spiral classification; checkpoints every epoch and whenever it is asked to stop."""

    name = "spiral"
    summary = "Example plug-in: an MLP tells apart the three arms of a generated spiral (loss, accuracy)."
    params = (
        Param("epochs", int, 30, "Passes over the training points.", 1, 1000),
        Param("points", int, 600, "Points generated (a quarter held out).", 60, 100_000),
        Param("noise", float, 0.15, "Angular noise of the arms.", 0.0, 2.0),
        Param("hidden", int, 32, "Width of the hidden layers.", 2, 1024),
        Param("batch_size", int, 50, "Points per optimiser step.", 1, 10_000),
        Param("lr", float, 0.02, "Adam learning rate.", 1e-6, 1.0),
        Param("seed", int, 0, "Seed of the data and the initial weights.", 0, 2**31 - 1),
        Param("step_delay_ms", float, 0.0, "Pause after each step, to watch a run live.", 0, 5000),
        Param("inject_nan_at_step", int, -1, "Make the loss NaN from this step on (-1: never).", -1, 10**7),
    )
    metrics = (
        Metric("loss", "lower", "Training loss of the last step."),
        Metric("val_loss", "lower", "Loss on the held-out quarter."),
        Metric("accuracy", "higher", "Share of held-out points on the right arm."),
    )

    def train(self, ctx: RunContext, config: dict[str, ParamValue]) -> RecipeResult:
        """Train (or resume from ctx's last checkpoint), logging loss per step and val metrics per epoch."""
        import torch
        from torch.nn import functional as F

        seed = int(config["seed"])
        torch.manual_seed(seed)
        device = torch.device(ctx.device)
        x_train, y_train, x_val, y_val = (torch.from_numpy(a).to(device) for a in split(config))
        hidden, lr, batch = int(config["hidden"]), float(config["lr"]), int(config["batch_size"])
        model = build_model(hidden).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        arch = {
            "hidden": hidden,
            "seed": seed,
            "points": int(config["points"]),
            "noise": float(config["noise"]),
        }
        epoch, step, metrics = 0, 0, {}

        loaded = ctx.load_checkpoint()
        if loaded is not None:
            _, state = loaded
            if state.get("recipe") != self.name or state.get("arch") != arch:
                raise ValueError(f"checkpoint does not fit this config: {state.get('arch')} vs {arch}")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for group in optimizer.param_groups:
                group["lr"] = lr  # an early-stop requeue may have changed it
            epoch, step, metrics = int(state["epoch"]), int(state["step"]), dict(state["metrics"])

        def checkpoint() -> None:
            if all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # keep the last good one
                state = {
                    "recipe": self.name,
                    "arch": arch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "metrics": dict(metrics),
                }
                ctx.save_checkpoint(step, state)

        epochs, n = int(config["epochs"]), x_train.shape[0]
        steps_per_epoch = math.ceil(n / batch)
        nan_at, delay = int(config["inject_nan_at_step"]), float(config["step_delay_ms"]) / 1000
        while epoch < epochs:
            # The order of an epoch follows from (seed, epoch): a resumed epoch replays it exactly.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            first = step - epoch * steps_per_epoch  # batches of this epoch already trained
            model.train()
            for b in range(first, steps_per_epoch):
                if ctx.should_stop():
                    checkpoint()
                    return RecipeResult(final_metrics=metrics, steps=step, stopped=True)
                idx = order[b * batch : (b + 1) * batch].to(device)
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                if 0 <= nan_at <= step:
                    loss = loss * float("nan")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                metrics["loss"] = float(loss.detach())
                ctx.log("loss", step, metrics["loss"])
                ctx.progress(step / (epochs * steps_per_epoch))
                if delay:
                    time.sleep(delay)
            epoch += 1
            model.eval()
            with torch.no_grad():
                logits = model(x_val)
                metrics["val_loss"] = float(F.cross_entropy(logits, y_val))
                metrics["accuracy"] = float((logits.argmax(dim=1) == y_val).float().mean())
            ctx.log("val_loss", step, metrics["val_loss"])
            ctx.log("accuracy", step, metrics["accuracy"])
            checkpoint()
        return RecipeResult(final_metrics=metrics, steps=step)

    def load_predictor(self, state: dict[str, Any]) -> Predictor:
        """Serve a checkpoint: class probabilities for rows of (x, y) points."""
        import torch

        if state.get("recipe") != self.name:
            raise ValueError(f"checkpoint is from recipe {state.get('recipe')!r}, not {self.name!r}")
        arch = state["arch"]
        model = build_model(int(arch["hidden"]))
        model.load_state_dict(state["model"])
        model.eval()

        def predict_proba(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                logits = model(torch.from_numpy(np.asarray(x, dtype=np.float32)))
                return torch.softmax(logits, dim=1).numpy()

        x_train, _, _, _ = split(arch)
        return Predictor(
            n_features=N_FEATURES, n_classes=N_CLASSES, predict_proba=predict_proba, reference=x_train
        )


RECIPE = SpiralRecipe()
