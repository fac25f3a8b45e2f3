"""digits: an MLP classifier on scikit-learn's bundled 8x8 digits (loss, val_loss, accuracy, f1)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch

from .base import CheckpointEvaluation, Recipe, RecipeResult, RunContext
from .catalog import get_spec
from .classify import (
    MLP,
    NUM_CLASSES,
    DigitsData,
    Position,
    arch_of,
    cross_entropy_loss,
    digits_scaler,
    evaluate,
    evaluate_on_held_out,
    load_digits_split,
    run_epochs,
    steps_per_epoch,
)
from .outputs import completed_stages, save_artifact, stage
from .runtime import make_optimizer, params_finite, resume_checkpoint, rng_state, save_checkpoint, start_run
from .schema import ParamValue

SPEC = get_spec("digits")
ARCH = ("hidden", "val_fraction", "seed")


class DigitsRecipe:
    """Supervised classification of the digits; resumable at any step."""

    name = SPEC.name
    summary = SPEC.summary
    params = SPEC.params

    def train(self, ctx: RunContext, config: dict[str, ParamValue]) -> RecipeResult:
        """Train (or resume) the classifier, logging through ctx; see the catalog for config."""
        config, device, seed = start_run(SPEC, ctx, config)
        done = completed_stages(ctx)
        dataset_id = int(config["extra_data"])
        # The data lives in memory only: a resumed attempt loads it again (recorded once).
        with stage(ctx, "load_data") as loading:
            extra_path = ctx.dataset_path(dataset_id) if dataset_id else ""
            data = load_digits_split(seed, float(config["val_fraction"]), device, extra_path)
            if "load_data" in done:
                loading.abandon()
        model = MLP(data.x_train.shape[1], int(config["hidden"]), NUM_CLASSES).to(device)
        lr, wd = float(config["lr"]), float(config["weight_decay"])
        optimizer = make_optimizer(model.parameters(), lr=lr, weight_decay=wd, device=device)
        pos = Position()
        arch = arch_of(config, ARCH)

        metrics: dict[str, float] = {}  # the latest value of each metric, kept across attempts
        resumed = resume_checkpoint(
            ctx,
            recipe=self.name,
            arch=arch,
            device=device,
            models={"model": model},
            optimizers={"optimizer": optimizer},
            lr=lr,
            weight_decay=wd,
            metrics=metrics,
        )
        if resumed is not None:
            pos = Position(**resumed["position"])

        epochs = int(config["epochs"])
        total = epochs * steps_per_epoch(data.x_train.shape[0], int(config["batch_size"]))

        def checkpoint() -> None:
            state: dict[str, Any] = {
                "recipe": self.name,
                "arch": arch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "position": pos.as_state(),
                "rng": rng_state(device),
                "metrics": dict(metrics),
                # How the served model behaves: rehearsal faults and the drift reference's data.
                "serving": {
                    "error_rate": float(config["serve_error_rate"]),
                    "delay_ms": float(config["serve_delay_ms"]),
                    # The id, not the file: the serving side resolves it under its own data folder.
                    "extra_data": dataset_id,
                },
            }
            save_checkpoint(ctx, pos.step, state, model)

        stopped = False
        with stage(ctx, "train") as training:
            if "train" in done and resumed is not None:
                training.abandon()  # finished by an earlier attempt: its checkpoint holds the model
            else:
                stopped = self._train(ctx, config, data, model, optimizer, pos, metrics, checkpoint, total)
                if stopped:
                    training.abandon()
        # NaN weights (a diverged run) are not worth exporting; its last good checkpoint remains.
        if not stopped and "export" not in done and params_finite(model):
            with stage(ctx, "export"):
                buffer = io.BytesIO()
                torch.save({"recipe": self.name, "arch": arch, "model": model.state_dict()}, buffer)
                save_artifact(ctx, "model.pt", buffer.getvalue(), kind="model")
        if "val_loss" not in metrics:
            # Resumed at (or stopped before) an epoch end: report the model as it stands.
            metrics.update(evaluate(model, data.x_val, data.y_val, device))
        if not stopped:
            ctx.progress(1.0)
        return RecipeResult(final_metrics=metrics, steps=pos.step, stopped=stopped)

    def _train(
        self,
        ctx: RunContext,
        config: dict[str, ParamValue],
        data: DigitsData,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        pos: Position,
        metrics: dict[str, float],
        checkpoint: Callable[[], None],
        total: int,
    ) -> bool:
        """Run the epochs from pos on; return True when ctx asked to stop."""
        epochs = int(config["epochs"])
        return run_epochs(
            ctx=ctx,
            config=config,
            data=data,
            model=model,
            optimizer=optimizer,
            loss_fn=cross_entropy_loss,
            epochs=epochs,
            pos=pos,
            salt=1,
            prefix="",
            metrics=metrics,
            checkpoint=checkpoint,
            progress=lambda step: min(1.0, step / total),
        )


RECIPE: Recipe = DigitsRecipe()  # annotated so that mypy checks the protocol


def evaluate_checkpoint(path: str) -> CheckpointEvaluation:
    """Load a digits checkpoint and return its metrics on the held-out set (classify.evaluate_on_held_out)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("recipe") != SPEC.name:
        raise ValueError(f"checkpoint is from recipe {state.get('recipe')!r}, not {SPEC.name!r}")
    arch = state["arch"]
    seed, val_fraction = int(arch["seed"]), float(arch["val_fraction"])
    model = MLP(int(digits_scaler(seed, val_fraction)[0].shape[0]), int(arch["hidden"]), NUM_CLASSES)
    model.load_state_dict(state["model"])
    return evaluate_on_held_out(model, seed=seed, val_fraction=val_fraction)
