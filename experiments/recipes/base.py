"""The recipe interface: a named training loop with declared parameters (no Django imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .schema import Param, ParamValue, validate_config


class RunContext(Protocol):
    """What a training loop receives from whoever runs it (a worker, the CLI, a test)."""

    device: str
    seed: int

    def log(self, name: str, step: int, value: float) -> None:
        """Record one metric point; never blocks on I/O."""

    def progress(self, fraction: float) -> None:
        """Report how far the run has come, 0.0 to 1.0."""

    def should_stop(self) -> bool:
        """Return True once the run has been asked to stop (cancel, early stop)."""

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """Persist state (model, optimiser, step, rng) so that a later attempt can resume."""

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """Return (step, state) of the last checkpoint, or None to start fresh."""


@dataclass(frozen=True)
class RecipeResult:
    """What a finished (or stopped) training loop hands back."""

    final_metrics: dict[str, float]
    steps: int
    stopped: bool = False


class Recipe(Protocol):
    """A training recipe: name, one-line summary, parameters and the loop itself."""

    name: str
    summary: str
    params: tuple[Param, ...]

    def train(self, ctx: RunContext, config: dict[str, ParamValue]) -> RecipeResult:
        """Run the training loop described by config, reporting through ctx."""


def clean_config(recipe: Recipe, config: dict[str, Any]) -> dict[str, ParamValue]:
    """Return the recipe's config with defaults, or raise ConfigError keyed by parameter."""
    return validate_config(recipe.params, config)
