"""A recipe as the catalog knows it: declared parameters and metrics, the loop imported on demand."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .schema import ConfigError, Metric, Param, ParamValue, validate_config

if TYPE_CHECKING:
    from .base import CheckpointEvaluation, Recipe

# A rule spanning several parameters: returns {param: message} for what it refuses.
Constraint = Callable[[dict[str, ParamValue]], dict[str, str]]

BUILT_IN = "built-in"
# Held-out evaluation metrics are stored (as metric points, and read by policies) under this prefix.
EVAL_PREFIX = "eval/"


class BadReference(ValueError):
    """A "module:OBJECT" reference of the wrong shape, or naming an attribute the module lacks."""


def import_object(ref: str) -> Any:
    """Return the object a "module:attribute" reference names (attribute may be dotted).

    Raise BadReference for a reference of the wrong shape or a missing attribute; whatever the
    module's import raises propagates.
    """
    module_name, sep, attr = ref.strip().partition(":")
    if not sep or not module_name or not attr:
        raise BadReference(f"{ref!r} is not of the form module:OBJECT")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BadReference(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def recipe_instance(obj: Any) -> Any:
    """Return obj, or an instance of it when it is a class (a plug-in may name either)."""
    return obj() if isinstance(obj, type) else obj


def metric_fields(*metrics: Metric) -> dict[str, Any]:
    """Return RecipeSpec's metrics and better fields for a declaration of Metric objects."""
    return {"metrics": tuple(m.name for m in metrics), "better": {m.name: m.better for m in metrics}}


def with_evaluation(fields: dict[str, Any], *metrics: Metric) -> dict[str, Any]:
    """Return metric_fields' result plus the evaluator's metrics (eval_metrics, and "eval/<name>" in better)."""
    better = {**fields.get("better", {}), **{f"{EVAL_PREFIX}{m.name}": m.better for m in metrics}}
    return {**fields, "better": better, "eval_metrics": tuple(m.name for m in metrics)}


@dataclass(frozen=True)
class Resources:
    """What one run of a recipe needs unless its experiment says otherwise."""

    cpu_cores: int = 1
    host_memory_gb: float = 1.0
    gpus: int = 0
    gpu_memory_gb: float = 0.0

    def describe(self) -> str:
        """Return the request in words ("2 CPU cores, 2 GiB host memory")."""
        text = f"{self.cpu_cores} CPU core{'s' if self.cpu_cores != 1 else ''}, {self.host_memory_gb:g} GiB host memory"
        if self.gpus:
            text += f", {self.gpus} GPU{'s' if self.gpus != 1 else ''}"
            text += f" with {self.gpu_memory_gb:g} GiB" if self.gpu_memory_gb else ""
        return text


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
    # Which way is better for each declared metric ("higher" or "lower"); absent: guessed from the name.
    better: dict[str, str] = field(default_factory=dict)
    # Where it comes from: "built-in", "entry point <name> (<distribution>)" or "CRUCIBLE_RECIPES".
    source: str = BUILT_IN
    # Whether its checkpoints can be served (the recipe implements load_predictor).
    servable: bool = False
    # The metrics its evaluator returns, stored and read by policies as "eval/<name>".
    eval_metrics: tuple[str, ...] = ()
    # The stages its loop records (runtime's `stage`), in order; the page shows them as a checklist.
    stages: tuple[str, ...] = ()

    def declared_stages(self) -> tuple[str, ...]:
        """Return the stages a run of it goes through: its own, or train (and evaluate) by default."""
        stages = self.stages or ("train",)
        if self.evaluator and "evaluate" not in stages:
            stages = (*stages, "evaluate")
        return stages

    def eval_metric_names(self) -> tuple[str, ...]:
        """Return the names under which its held-out evaluation is stored: "eval/<metric>"."""
        return tuple(f"{EVAL_PREFIX}{m}" for m in self.eval_metrics)

    # The default resource request of an experiment of this recipe (the form and API may override it).
    resources: Resources = field(default_factory=Resources)

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
        evaluate: Callable[[str], CheckpointEvaluation] = import_object(self.evaluator)
        return evaluate(path)

    def load(self) -> Recipe:
        """Import and return the recipe implementation (this imports torch)."""
        recipe: Recipe = recipe_instance(import_object(self.entry))
        return recipe

    def not_servable_reason(self) -> str:
        """Return why this recipe's models cannot be served, or "" when they can."""
        if self.servable:
            return ""
        return (
            f"recipe {self.name!r} ({self.source}) cannot serve its models: it implements no "
            "load_predictor (load a checkpoint, predict a batch with confidences); it can be trained "
            "and compared, not promoted"
        )
