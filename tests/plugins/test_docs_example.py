"""The complete recipe in docs/recipes.md works as written: trains, stops, resumes and serves."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from experiments.recipes import RECIPES, get_spec
from experiments.recipes.local import LocalRunContext

from .helpers import ROOT, write_module

DOC = ROOT / "docs" / "recipes.md"


def test_the_documented_recipe_trains_resumes_and_serves(plugin_dir: Path, tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None
    write_module(plugin_dir, "blobs", code.group(1))
    RECIPES.configure("blobs:RECIPE")
    spec = get_spec("blobs")
    assert spec.servable and spec.better == {"loss": "lower", "accuracy": "higher"}
    recipe = spec.load()

    stopping = LocalRunContext(checkpoint_dir=tmp_path)
    stopping.request_stop()
    assert recipe.train(stopping, spec.clean({"steps": 60})).stopped
    ctx = LocalRunContext(checkpoint_dir=tmp_path)
    result = recipe.train(ctx, spec.clean({"steps": 60}))
    assert result.steps == 60 and not result.stopped
    assert result.final_metrics["accuracy"] > 0.9

    loaded = ctx.load_checkpoint()
    assert loaded is not None
    predictor = recipe.load_predictor(loaded[1])  # type: ignore[attr-defined]
    probs = predictor.predict_proba(np.array([[-2.0, -2.0], [2.0, 2.0]], dtype=np.float32))
    assert probs.argmax(axis=1).tolist() == [0, 1]
