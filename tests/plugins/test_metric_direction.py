"""A recipe's metric declaration (Metric.better) decides which way policies read its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.policies.conditions import ConditionKind, ConditionSpec, EvaluationContext, evaluate_all
from control.policies.gate import recipe_better
from experiments.recipes import RECIPES

from .helpers import write_module

# A name that guesses "higher is better"; the recipe says otherwise.
SERIES = {"wer": [(1, 0.40), (2, 0.20), (3, 0.30)]}


def _best_wer(metric_better: dict[str, str]) -> float | None:
    spec = ConditionSpec(ConditionKind.METRIC, metric="wer", aggregate="best", operator="<", threshold=0.25)
    _, (result,) = evaluate_all([spec], EvaluationContext(series=SERIES, metric_better=metric_better))
    return result.value


def test_the_best_of_a_metric_follows_the_recipes_declared_direction(plugin_dir: Path) -> None:
    write_module(
        plugin_dir,
        "speech",
        """
        from experiments.recipes import Metric

        class Recipe:
            name = "speech"
            summary = "word error rate"
            params = ()
            metrics = (Metric("wer", "lower", "Word error rate."),)
            def train(self, ctx, config): ...

        RECIPE = Recipe()
        """,
    )
    RECIPES.configure("speech:RECIPE")

    assert recipe_better("speech") == {"wer": "lower"}
    assert _best_wer(recipe_better("speech")) == pytest.approx(0.20)
    assert _best_wer({}) == pytest.approx(0.40)  # undeclared: guessed from the name
    assert recipe_better("gone") == {}


def test_built_ins_declare_their_directions() -> None:
    better = recipe_better("digits")
    assert {name: way for name, way in better.items() if not name.startswith("eval/")} == {
        "loss": "lower",
        "val_loss": "lower",
        "accuracy": "higher",
        "f1": "higher",
    }
    # The held-out evaluation's metrics carry their directions too (calibration error: lower).
    assert better["eval/accuracy"] == "higher" and better["eval/ece"] == "lower"
    assert recipe_better("charlm")["tokens_per_s"] == "higher"
