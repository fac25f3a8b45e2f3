"""Digits data, an MLP and the resumable epoch loop that the digits and distill recipes share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

from .base import Artifact, CheckpointEvaluation, RunContext
from .evalmetrics import classification_metrics, confusion_matrix_csv, evaluation_report_json
from .runtime import autocast, inject_nan, step_delay
from .schema import ParamValue

NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsData:
    """Standardised digits, split into train and validation, already on the run's device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@lru_cache(maxsize=8)
def raw_split(seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the unscaled digits split by seed (stratified): x_train, y_train, x_val, y_val."""
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, random_state=seed, stratify=y
    )
    return x_train, y_train, x_val, y_val


@lru_cache(maxsize=8)
def digits_scaler(seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and std the model standardises its inputs with (training split only).

    Serving uses the same function, so a checkpoint is always fed inputs scaled as in training.
    """
    x_train = raw_split(seed, val_fraction)[0]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    # Some border pixels are 0 in every training image: leave them unscaled rather than divide
    # by ~0, which would blow a rare non-zero validation pixel up to a huge value.
    std[std < 1e-3] = 1.0
    return mean, std


def _split(seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_train, y_train, x_val, y_val = raw_split(seed, val_fraction)
    # Statistics from the training split only: the validation split stays unseen.
    mean, std = digits_scaler(seed, val_fraction)
    return (x_train - mean) / std, y_train, (x_val - mean) / std, y_val


class ExtraDataError(ValueError):
    """A curated dataset file that cannot be trained on."""


def load_extra_rows(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the raw rows and labels of a curated dataset (.npz with x and y), checked."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"], dtype=np.float32)
            y = np.asarray(data["y"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ExtraDataError(f"extra_data {path!r}: cannot read x and y ({exc})") from None
    if x.ndim != 2 or x.shape[1] != 64:
        raise ExtraDataError(f"extra_data {path!r}: x must have 64 columns, has shape {x.shape}")
    if y.shape != (x.shape[0],) or (y.size and (y.min() < 0 or y.max() >= NUM_CLASSES)):
        raise ExtraDataError(f"extra_data {path!r}: y must be one label 0-9 per row of x")
    return x, y


def training_inputs(seed: int, val_fraction: float, extra_data: str = "") -> np.ndarray:
    """Return the raw inputs a model was trained on (the drift reference): split plus curated rows."""
    x_train = raw_split(seed, val_fraction)[0]
    if extra_data:
        x_train = np.concatenate([x_train, load_extra_rows(extra_data)[0]])
    return x_train


def load_digits_split(
    seed: int, val_fraction: float, device: torch.device, extra_data: str = ""
) -> DigitsData:
    """Return the digits split by seed (stratified), standardised with training statistics.

    Curated rows (extra_data) join the training split, scaled like it; validation is untouched,
    so metrics stay comparable with models trained without them.
    """
    x_train, y_train, x_val, y_val = _split(seed, val_fraction)
    if extra_data:
        mean, std = digits_scaler(seed, val_fraction)
        x_extra, y_extra = load_extra_rows(extra_data)
        x_train = np.concatenate([x_train, (x_extra - mean) / std]).astype(np.float32)
        y_train = np.concatenate([y_train, y_extra])
    return DigitsData(
        x_train=torch.from_numpy(x_train).to(device),
        y_train=torch.from_numpy(y_train).to(device),
        x_val=torch.from_numpy(x_val).to(device),
        y_val=torch.from_numpy(y_val).to(device),
    )


class MLP(nn.Module):
    """Two hidden layers with GELU: enough for 8x8 digits."""

    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, n_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        out: torch.Tensor = self.net(x)
        return out


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Return val_loss, accuracy and macro f1 of model on (x, y)."""
    model.eval()
    with autocast(device):
        logits = model(x)
    model.train()
    logits = logits.float()
    loss = F.cross_entropy(logits, y).item()
    pred = logits.argmax(dim=1).cpu().numpy()
    truth = y.cpu().numpy()
    return {
        "val_loss": loss,
        "accuracy": float((pred == truth).mean()),
        "f1": float(f1_score(truth, pred, average="macro", labels=list(range(NUM_CLASSES)), zero_division=0)),
    }


@dataclass
class Position:
    """Where a loop stands: epochs finished, batches done in the current epoch, global step."""

    epoch: int = 0
    batch: int = 0
    step: int = 0

    def as_state(self) -> dict[str, int]:
        """Return the position for a checkpoint."""
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step}


def epoch_order(n: int, seed: int, salt: int, epoch: int, device: torch.device) -> torch.Tensor:
    """Return the shuffled example order of one epoch, a function of (seed, salt, epoch) only.

    Deriving it instead of drawing from a running generator lets a run resume mid-epoch exactly.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + salt * 10_007 + epoch)
    return torch.randperm(n, generator=gen).to(device)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Return plain cross-entropy against the hard labels (idx unused)."""
    return F.cross_entropy(logits.float(), y)


def run_epochs(
    *,
    ctx: RunContext,
    config: dict[str, ParamValue],
    data: DigitsData,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    epochs: int,
    pos: Position,
    salt: int,
    prefix: str,
    metrics: dict[str, float],
    checkpoint: Callable[[], None],
    progress: Callable[[int], float],
) -> bool:
    """Train model from pos to the end of its epochs; return True when ctx asked to stop.

    Logs `{prefix}loss` every step and `{prefix}val_loss/accuracy/f1` every epoch (also into
    metrics), calls checkpoint() after each epoch and before returning on a stop.
    """
    device = data.x_train.device
    seed = int(config["seed"])
    batch_size = int(config["batch_size"])
    n = data.x_train.shape[0]
    model.train()
    while pos.epoch < epochs:
        batches = epoch_order(n, seed, salt, pos.epoch, device).split(batch_size)
        while pos.batch < len(batches):
            if ctx.should_stop():
                checkpoint()
                return True
            idx = batches[pos.batch]
            x, y = data.x_train[idx], data.y_train[idx]
            with autocast(device):
                logits = model(x)
            loss = inject_nan(loss_fn(logits, y, idx), pos.step + 1, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            pos.step += 1
            pos.batch += 1
            value = loss.item()
            metrics[f"{prefix}loss"] = value
            ctx.log(f"{prefix}loss", pos.step, value)
            step_delay(config)
            ctx.progress(progress(pos.step))
        for name, value in evaluate(model, data.x_val, data.y_val, device).items():
            metrics[f"{prefix}{name}"] = value
            ctx.log(f"{prefix}{name}", pos.step, value)
        pos.epoch += 1
        pos.batch = 0
        checkpoint()
    return False


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Return how many optimiser steps one epoch takes."""
    return -(-n_train // batch_size)


def arch_of(config: dict[str, ParamValue], keys: tuple[str, ...]) -> dict[str, Any]:
    """Return the config values that fix the model's shape (checked when resuming)."""
    return {k: config[k] for k in keys}


# The held-out set every digits classifier (digits, distill) is judged on: the validation split
# of the default seed and fraction, which a model trained with the defaults never saw.
HELD_OUT_SEED = 0
HELD_OUT_FRACTION = 0.2
HELD_OUT_SET = f"digits validation split (seed {HELD_OUT_SEED}, {HELD_OUT_FRACTION:.0%})"


@torch.no_grad()
def evaluate_on_held_out(model: nn.Module, *, seed: int, val_fraction: float) -> CheckpointEvaluation:
    """Return a digits classifier's held-out metrics, confusion matrix and report (on CPU).

    Inputs are scaled with the model's own training statistics (seed, val_fraction), exactly as
    serving does. Metrics: val_loss, accuracy, f1 (as the training loop logs them) and the
    evaluation's accuracy, macro_f1, auc_ovr, ece and recall_class_<c>.
    """
    mean, std = digits_scaler(seed, val_fraction)
    _, _, x_val, y_val = raw_split(HELD_OUT_SEED, HELD_OUT_FRACTION)
    model = model.cpu().eval()
    x = torch.from_numpy(((x_val - mean) / std).astype("float32"))
    logits = model(x).float()
    proba = torch.softmax(logits, dim=1).numpy()
    metrics = evaluate(model, x, torch.from_numpy(y_val), torch.device("cpu"))
    metrics.update(classification_metrics(proba, y_val, NUM_CLASSES))
    note = ""
    if (seed, val_fraction) != (HELD_OUT_SEED, HELD_OUT_FRACTION):
        note = f"trained on another split (seed {seed}, {val_fraction:.0%}): it may have seen some of these examples"
    report = evaluation_report_json(eval_set=HELD_OUT_SET, metrics=metrics, examples=len(y_val), note=note)
    return CheckpointEvaluation(
        metrics=metrics,
        eval_set=HELD_OUT_SET,
        note=note,
        artifacts=(
            Artifact("confusion_matrix.csv", confusion_matrix_csv(proba, y_val, NUM_CLASSES), "table"),
            Artifact("evaluation_report.json", report, "report"),
        ),
    )
