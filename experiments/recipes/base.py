"""The recipe interface: a named training loop with declared parameters (no Django imports)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .schema import Param, ParamValue, validate_config

if TYPE_CHECKING:
    import numpy as np


class RunContext(Protocol):
    """What a training loop receives from whoever runs it (a worker, the CLI, a test).

    The recipes call log(), progress() and should_stop() every optimiser step (hundreds a second
    for digits), so all three must be cheap and must not wait on a database or the network.
    `local.LocalRunContext` is the reference implementation.
    """

    device: str  # "cpu", "cuda", "cuda:N" (recipes refuse CUDA where torch sees none)
    seed: int  # informational: recipes seed from config["seed"], which the catalog declares

    def log(self, name: str, step: int, value: float) -> None:
        """Record one metric point; never blocks on I/O."""

    def progress(self, fraction: float) -> None:
        """Report how far the run has come, 0.0 to 1.0."""

    def should_stop(self) -> bool:
        """Return True once the run has been asked to stop (cancel, early stop)."""

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """Persist state (model, optimiser, step, rng) so that a later attempt can resume.

        state references the live model's tensors: serialise it (torch.save) before returning.
        It holds only tensors, numbers, strings, lists, tuples and dicts, so reading it back with
        torch.load(..., weights_only=True, map_location="cpu") works.
        """

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """Return (step, state) of the last checkpoint, or None to start fresh.

        A resumed run continues at step + 1 and logs exactly what an uninterrupted run would have.
        """

    def dataset_path(self, dataset_id: int) -> str:
        """Return the file of a curated dataset version, or raise ValueError if it cannot be used.

        Configs name datasets by id only; where the file lies is the runner's business (a worker
        reads only under its data folder).
        """


class RunOutputs(Protocol):
    """What a run context may offer besides RunContext: stages and artifacts (seed 004's Crucible.Context).

    Optional, so that a context written before them still runs every recipe: recipes reach them
    through experiments.recipes.runtime's `stage`, `stage_completed` and `save_artifact`, which
    do nothing (or say "not completed") on a context without them.

    Stages: a recipe declares its stages on its RecipeSpec (`stages`) and wraps each one in
    `with stage(ctx, "train"):`; the context records the stage and its duration when the block
    ends without an exception. `completed_stages()` names what this attempt and the experiment's
    earlier attempts completed: a resumed attempt skips those (a stage whose result lives only in
    memory, like load_data, runs again and is not recorded twice). A recipe that never records a
    stage still works: the worker marks "train" when the loop returns and the evaluation job marks
    "evaluate".

    Artifacts: `save_artifact(name, data_or_path, kind=...)` stores bytes, text, or a copy of an
    existing file under the run's artifact folder, with its size and sha256. Names are one path
    segment (letters, digits, ".", "_", "-"); a bad name raises ValueError, and saving a name
    again replaces the file.
    """

    def stage_done(self, name: str, seconds: float) -> None:
        """Record that stage name completed in this attempt, after seconds."""

    def completed_stages(self) -> frozenset[str]:
        """Return the stages this attempt or an earlier attempt of the same experiment completed."""

    def save_artifact(self, name: str, data: bytes | str | os.PathLike[str], kind: str = "file") -> None:
        """Store an artifact (bytes, text, or the file at a path) under name."""


@dataclass(frozen=True)
class Artifact:
    """A named file an evaluation hands back to be stored with the run (a confusion matrix, a report)."""

    name: str
    data: bytes | str
    kind: str = "file"


@runtime_checkable
class UpstreamModels(Protocol):
    """What a run context may add for a recipe that starts from another experiment's model.

    The worker's context hands over the final checkpoint of an upstream the experiment depends
    on (verified against its recorded sha256); the CLI's, files given to it by experiment id.
    """

    def upstream_checkpoint(self, experiment_id: int) -> dict[str, Any]:
        """Return the state of experiment `experiment_id`'s final checkpoint, or raise ValueError."""


@dataclass(frozen=True)
class RecipeResult:
    """What a finished (or stopped) training loop hands back."""

    final_metrics: dict[str, float]
    steps: int
    stopped: bool = False


@dataclass(frozen=True)
class CheckpointEvaluation:
    """A checkpoint's metrics on its recipe's held-out set: the number promotions compare."""

    metrics: dict[str, float]
    eval_set: str  # names the data, so that only evaluations on the same set are compared
    note: str = ""  # e.g. the model was trained on another split and may have seen some of it
    # Files worth keeping with the run (stored as its artifacts by the evaluation job).
    artifacts: tuple[Artifact, ...] = ()


class Recipe(Protocol):
    """A training recipe: name, one-line summary, parameters and the loop itself.

    A plug-in may also declare `metrics` (a tuple of Metric: the names its loop logs and which
    way is better); the catalog reads it when present.
    """

    name: str
    summary: str
    params: tuple[Param, ...]

    def train(self, ctx: RunContext, config: dict[str, ParamValue]) -> RecipeResult:
        """Run the training loop described by config, reporting through ctx."""


@dataclass(frozen=True)
class Predictor:
    """A checkpoint made ready to answer requests: rows of n_features numbers in, class probabilities out.

    predict_proba takes a float32 array of shape (batch, n_features) and returns one of shape
    (batch, n_classes) whose rows sum to 1: the served label is the most probable class and its
    probability the confidence. reference, when given, holds inputs the model was trained on:
    the distribution that drift of the served inputs is measured against.
    """

    n_features: int
    n_classes: int
    predict_proba: Callable[[np.ndarray], np.ndarray]
    reference: np.ndarray | None = None


@runtime_checkable
class ServableRecipe(Protocol):
    """A recipe whose checkpoints can be served: promoted, canaried and rolled back.

    state is the checkpoint the run saved last (RunContext.save_checkpoint), read back with
    torch.load(..., weights_only=True, map_location="cpu").
    """

    def load_predictor(self, state: dict[str, Any]) -> Predictor:
        """Build the model from a checkpoint's state; raise ValueError if it is not this recipe's."""


def clean_config(recipe: Recipe, config: dict[str, Any]) -> dict[str, ParamValue]:
    """Return the recipe's config with defaults, or raise ConfigError keyed by parameter."""
    return validate_config(recipe.params, config)
