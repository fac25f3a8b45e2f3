"""Every recipe's name, summary and declared parameters, importable without torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .schema import ConfigError, DatasetParam, Param, ParamValue, validate_config
from .script import SCRIPT_CONSTRAINTS, SCRIPT_PARAMS

if TYPE_CHECKING:
    from .base import CheckpointEvaluation, Recipe

COMMON_PARAMS: tuple[Param, ...] = (
    Param(
        "seed", int, 0, "Random seed: the same seed on the same device gives the same losses.", 0, 2**31 - 1
    ),
    Param(
        "step_delay_ms",
        float,
        0.0,
        "Pause after each optimiser step, to make a short demo run watchable live.",
        0,
        5000,
    ),
    Param(
        "inject_nan_at_step",
        int,
        -1,
        "Make the loss NaN from this step on (-1: never). Exercises the early-stop policy.",
        -1,
        10_000_000,
    ),
)


# A rule spanning several parameters: returns {param: message} for what it refuses.
Constraint = Callable[[dict[str, ParamValue]], dict[str, str]]


def _heads_divide_width(config: dict[str, ParamValue]) -> dict[str, str]:
    d_model, n_heads = int(config["d_model"]), int(config["n_heads"])
    if d_model % n_heads:
        return {"n_heads": f"must divide d_model ({d_model})"}
    return {}


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe as the catalog knows it: parameters here, the training loop imported on demand."""

    name: str
    summary: str
    params: tuple[Param, ...]
    entry: str  # "module:attribute" of the Recipe implementation
    constraints: tuple[Constraint, ...] = ()
    # The metrics its training loop logs (policy conditions may only name these).
    metrics: tuple[str, ...] = ()
    # "module:function" that evaluates a checkpoint on the recipe's held-out set ("" : none).
    evaluator: str = ""

    def clean(self, config: dict[str, Any]) -> dict[str, ParamValue]:
        """Return config with defaults filled in, or raise ConfigError keyed by parameter."""
        clean = validate_config(self.params, config)
        errors: dict[str, str] = {}
        for constraint in self.constraints:
            errors.update(constraint(clean))
        if errors:
            raise ConfigError(errors)
        return clean

    def param_names(self) -> set[str]:
        """Return the names of the parameters it accepts."""
        return {p.name for p in self.params}

    def evaluate_checkpoint(self, path: str) -> CheckpointEvaluation:
        """Evaluate a checkpoint file on the held-out set (imports torch); ValueError without an evaluator."""
        if not self.evaluator:
            raise ValueError(f"recipe {self.name!r} has no held-out evaluation")
        module_name, attr = self.evaluator.split(":")
        evaluate: Callable[[str], CheckpointEvaluation] = getattr(importlib.import_module(module_name), attr)
        return evaluate(path)

    def load(self) -> Recipe:
        """Import and return the recipe implementation (this imports torch)."""
        module_name, attr = self.entry.split(":")
        module = importlib.import_module(module_name)
        recipe: Recipe = getattr(module, attr)
        return recipe


RECIPES: dict[str, RecipeSpec] = {
    spec.name: spec
    for spec in (
        RecipeSpec(
            name="digits",
            summary="MLP classifier on scikit-learn's bundled 8x8 digits (loss, val_loss, accuracy, f1).",
            params=(
                Param("epochs", int, 30, "Passes over the training split.", 1, 500),
                Param("batch_size", int, 64, "Examples per optimiser step.", 8, 2048),
                Param("lr", float, 0.003, "AdamW learning rate.", 1e-6, 1.0),
                Param("hidden", int, 128, "Width of the hidden layers.", 8, 4096),
                Param("weight_decay", float, 0.0, "AdamW weight decay.", 0.0, 1.0),
                Param("val_fraction", float, 0.2, "Share of the data held out for validation.", 0.05, 0.5),
                DatasetParam(
                    "extra_data",
                    help="Id of a curated dataset version whose rows join the training split (0: none).",
                ),
                Param(
                    "serve_error_rate",
                    float,
                    0.0,
                    "Share of prediction requests the served model fails (to rehearse a canary rollback).",
                    0.0,
                    1.0,
                ),
                Param(
                    "serve_delay_ms",
                    float,
                    0.0,
                    "Extra latency of every served prediction (to rehearse a latency rollback).",
                    0,
                    5000,
                ),
                *COMMON_PARAMS,
            ),
            entry="experiments.recipes.digits:RECIPE",
            metrics=("loss", "val_loss", "accuracy", "f1"),
            evaluator="experiments.recipes.digits:evaluate_checkpoint",
        ),
        RecipeSpec(
            name="charlm",
            summary="Byte-level transformer language model on text shipped with Python (offline).",
            params=(
                Param("steps", int, 300, "Optimiser steps.", 1, 1_000_000),
                Param("batch_size", int, 16, "Sequences per step.", 1, 1024),
                Param("context", int, 64, "Bytes of context per sequence.", 8, 4096),
                Param("d_model", int, 64, "Model width.", 16, 4096),
                Param("n_layers", int, 2, "Transformer blocks.", 1, 64),
                Param("n_heads", int, 4, "Attention heads (must divide d_model).", 1, 64),
                Param("lr", float, 0.003, "AdamW learning rate.", 1e-6, 1.0),
                Param(
                    "eval_every", int, 50, "Steps between validation losses (and checkpoints).", 1, 100_000
                ),
                Param("eval_batches", int, 4, "Validation batches per evaluation.", 1, 1000),
                Param("weight_decay", float, 0.0, "AdamW weight decay.", 0.0, 1.0),
                *COMMON_PARAMS,
            ),
            entry="experiments.recipes.charlm:RECIPE",
            constraints=(_heads_divide_width,),
            metrics=("loss", "val_loss", "tokens_per_s"),
        ),
        RecipeSpec(
            name="distill",
            summary="Knowledge distillation: a small student learns a digits teacher's soft labels.",
            params=(
                Param("teacher_epochs", int, 20, "Epochs to train the teacher first.", 1, 500),
                Param("epochs", int, 30, "Epochs to train the student.", 1, 500),
                Param("teacher_hidden", int, 256, "Teacher hidden width.", 8, 4096),
                Param("student_hidden", int, 32, "Student hidden width.", 4, 4096),
                Param("temperature", float, 4.0, "Softmax temperature of the soft labels.", 0.1, 100.0),
                Param(
                    "alpha", float, 0.7, "Weight of the distillation loss against the hard labels.", 0.0, 1.0
                ),
                Param("batch_size", int, 64, "Examples per optimiser step.", 8, 2048),
                Param("lr", float, 0.003, "AdamW learning rate.", 1e-6, 1.0),
                Param("val_fraction", float, 0.2, "Share of the data held out for validation.", 0.05, 0.5),
                *COMMON_PARAMS,
            ),
            entry="experiments.recipes.distill:RECIPE",
            metrics=(
                "loss",
                "val_loss",
                "accuracy",
                "f1",
                "teacher_loss",
                "teacher_val_loss",
                "teacher_accuracy",
                "teacher_f1",
            ),
        ),
        RecipeSpec(
            name="script",
            summary="Run an existing training script unchanged (argv, a folder under SCRIPT_ROOTS, env).",
            params=SCRIPT_PARAMS,
            entry="experiments.recipes.script:RECIPE",
            constraints=SCRIPT_CONSTRAINTS,
        ),
    )
}


def get_spec(name: str) -> RecipeSpec:
    """Return the catalog entry for a recipe name, or raise ConfigError on the recipe field."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(
            {"recipe": f"unknown recipe {name!r} (known: {', '.join(sorted(RECIPES))})"}
        ) from None
