"""PyTorch training recipes: pure Python + torch, runnable without Django.

`python -m experiments.recipes run digits --device cpu --seed 0` trains one on its own.
"""

from __future__ import annotations

from .catalog import RECIPES, RecipeSpec, get_spec
from .schema import ConfigError, Param

__all__ = ["RECIPES", "ConfigError", "Param", "RecipeSpec", "get_spec"]
