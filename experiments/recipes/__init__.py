"""PyTorch training recipes and the public API for writing one: pure Python + torch, no Django.

`python -m experiments.recipes run digits --device cpu --seed 0` trains one on its own. A recipe
written outside this repository imports what it needs from here (docs/recipes.md):

    from experiments.recipes import Metric, Param, Predictor, RecipeResult, RunContext
"""

from __future__ import annotations

from .base import CheckpointEvaluation, Predictor, Recipe, RecipeResult, RunContext, ServableRecipe
from .catalog import RECIPES, RecipeSpec, get_spec
from .plugins import ENTRY_POINT_GROUP, PluginProblem
from .schema import ConfigError, Metric, Param, ParamValue

__all__ = [
    "ENTRY_POINT_GROUP",
    "RECIPES",
    "CheckpointEvaluation",
    "ConfigError",
    "Metric",
    "Param",
    "ParamValue",
    "PluginProblem",
    "Predictor",
    "Recipe",
    "RecipeResult",
    "RecipeSpec",
    "RunContext",
    "ServableRecipe",
    "get_spec",
]
